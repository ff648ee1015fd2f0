//! The status page's last-hour chart: recipients delivered, deferred and bounced per
//! minute, as inline SVG (no external assets) with axes, a scale and a legend, so that
//! a reader can tell which line is which and how many they stand for.

use std::fmt::Write as _;

use crate::metrics::MinuteCounts;

/// What one series counts in a minute.
type Pick = fn(&MinuteCounts) -> u32;

/// The series: label, colour, and what they count.
const SERIES: [(&str, &str, Pick); 3] = [
    ("delivered", "#070", |m| m.delivered),
    ("deferred", "#c80", |m| m.deferred),
    ("bounced", "#b00", |m| m.bounced),
];

const LEFT: usize = 48;
const WIDTH: usize = 580;
const TOP: usize = 10;
const HEIGHT: usize = 120;

/// The smallest of 1, 2, 5, 10, 20, 50… at or above `n`: a scale a reader can read.
fn nice_ceiling(n: u32) -> u32 {
    let mut step = 1u32;
    loop {
        for m in [1, 2, 5] {
            let v = step.saturating_mul(m);
            if v >= n {
                return v;
            }
        }
        step = step.saturating_mul(10);
    }
}

/// `hour`: one entry per minute, oldest first (60 of them).
pub(super) fn last_hour(hour: &[MinuteCounts]) -> String {
    let peak = hour
        .iter()
        .flat_map(|m| SERIES.iter().map(move |(_, _, pick)| pick(m)))
        .max()
        .unwrap_or(0);
    let top = nice_ceiling(peak.max(1));
    let steps = hour.len().saturating_sub(1).max(1);
    let x = |i: usize| LEFT + i * WIDTH / steps;
    let y = |v: u32| TOP + HEIGHT - (v as usize * HEIGHT / top as usize);
    let mut s = String::with_capacity(4096);
    let _ = write!(
        s,
        "<svg id=\"chart\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" \
         aria-label=\"recipients delivered, deferred and bounced per minute over the last hour\" \
         font-size=\"11\" font-family=\"system-ui,sans-serif\">",
        w = LEFT + WIDTH + 20,
        h = TOP + HEIGHT + 50
    );
    // Axes, with the scale on the left (recipients per minute) and time below.
    let bottom = TOP + HEIGHT;
    let _ = write!(
        s,
        "<g class=\"axes\" stroke=\"#888\"><line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{bottom}\"/>\
         <line x1=\"{LEFT}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\"/></g>",
        right = LEFT + WIDTH
    );
    for v in [0, top / 2, top] {
        if v == top / 2 && top < 2 {
            continue;
        }
        let _ = write!(
            s,
            "<line x1=\"{a}\" y1=\"{yv}\" x2=\"{LEFT}\" y2=\"{yv}\" stroke=\"#888\"/>\
             <text class=\"scale\" x=\"{t}\" y=\"{ty}\" text-anchor=\"end\">{v}</text>",
            a = LEFT - 4,
            yv = y(v),
            t = LEFT - 6,
            ty = y(v) + 4
        );
    }
    let _ = write!(
        s,
        "<text x=\"4\" y=\"{}\" transform=\"rotate(-90 10 {mid})\" text-anchor=\"middle\">per minute</text>",
        TOP + HEIGHT / 2,
        mid = TOP + HEIGHT / 2
    );
    for (minute, label) in [(0, "60 min ago"), (30, "30 min ago"), (59, "now")] {
        let anchor = match minute {
            0 => "start",
            59 => "end",
            _ => "middle",
        };
        let _ = write!(
            s,
            "<text class=\"time\" x=\"{}\" y=\"{}\" text-anchor=\"{anchor}\">{label}</text>",
            x(minute.min(steps)),
            bottom + 14
        );
    }
    // The lines, then the legend with each series' total.
    for (label, colour, pick) in SERIES {
        let points: Vec<String> = hour
            .iter()
            .enumerate()
            .map(|(i, m)| format!("{},{}", x(i), y(pick(m))))
            .collect();
        let _ = write!(
            s,
            "<polyline class=\"{label}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
    }
    for (k, (label, colour, pick)) in SERIES.iter().enumerate() {
        let total: u32 = hour.iter().map(pick).sum();
        let lx = LEFT + k * 160;
        let ly = bottom + 34;
        let _ = write!(
            s,
            "<g class=\"legend\"><rect x=\"{lx}\" y=\"{ry}\" width=\"14\" height=\"4\" fill=\"{colour}\"/>\
             <text x=\"{tx}\" y=\"{ly}\">{label} ({total})</text></g>",
            ry = ly - 5,
            tx = lx + 18
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_is_a_round_number_at_or_above_the_peak() {
        let got: Vec<u32> = [0, 1, 2, 3, 6, 11, 49, 51, 999]
            .into_iter()
            .map(nice_ceiling)
            .collect();
        assert_eq!(got, vec![1, 1, 2, 5, 10, 20, 50, 100, 1000]);
    }

    #[test]
    fn the_chart_has_axes_a_scale_and_a_legend_with_totals() {
        let mut hour = vec![MinuteCounts::default(); 60];
        hour[59].delivered = 3;
        hour[58].bounced = 4;
        hour[10].deferred = 1;
        let svg = last_hour(&hour);
        assert!(svg.contains("class=\"axes\""), "{svg}");
        // Peak 4: the scale reads 0, 2 and 5.
        for tick in [">0</text>", ">2</text>", ">5</text>"] {
            assert!(svg.contains(tick), "{tick}: {svg}");
        }
        for legend in ["delivered (3)", "deferred (1)", "bounced (4)"] {
            assert!(svg.contains(legend), "{legend}: {svg}");
        }
        assert!(svg.contains("60 min ago") && svg.contains(">now<"), "{svg}");
    }
}
