use std::fmt::Write as _;
use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;

use crate::classify::eval::{Evaluation, evaluate, parse_corpus};
use crate::classify::{Classifier, Verdict, parse_reply};
use crate::reputation::learned::suggested_rule;

/// What `sidestep classify` is asked to do.
pub enum ClassifyMode<'a> {
    /// One reply, or each line of standard input.
    Replies(Option<&'a str>),
    /// The replies a second egress IP got past (from the relay's state).
    Learned,
    /// Measure the rules on a labelled JSONL corpus; fail below `floor` percent.
    Eval {
        /// The corpus.
        file: &'a Path,
        /// The least accuracy (percent) accepted.
        floor: Option<f64>,
    },
}

#[derive(Serialize)]
struct Line<'a> {
    verdict: &'a str,
    rule: &'a str,
    code: u16,
    enhanced: &'a str,
    reply: &'a str,
}

/// `sidestep classify`: the verdict for a reply and the rule that matched; the learned
/// replies; or the rules measured on a corpus.
pub fn classify(
    config_path: Option<&Path>,
    mode: ClassifyMode<'_>,
    json: bool,
) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    match mode {
        ClassifyMode::Replies(reply) => {
            let classifier = Classifier::new(&config.classify.rules)?;
            replies(&classifier, reply, json)
        }
        ClassifyMode::Learned => {
            let report = super::load_state(&config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report.learned)?);
            } else if report.learned.is_empty() {
                println!("no learned replies: no second opinion has contradicted the rules");
            } else {
                for l in &report.learned {
                    let _ = print_learned(l);
                }
            }
            Ok(())
        }
        ClassifyMode::Eval { file, floor } => {
            let classifier = Classifier::new(&config.classify.rules)?;
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let corpus =
                parse_corpus(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let e = evaluate(&classifier, &corpus);
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print!("{}", render_eval(&e));
            }
            match floor {
                Some(f) if e.accuracy() * 100.0 < f => anyhow::bail!(
                    "accuracy {:.1}% is below the floor of {f}%",
                    e.accuracy() * 100.0
                ),
                _ => Ok(()),
            }
        }
    }
}

fn replies(classifier: &Classifier, reply: Option<&str>, json: bool) -> anyhow::Result<()> {
    let show = |raw: &str| {
        let r = parse_reply(raw);
        let c = classifier.classify(r.code, &r.enhanced, &r.text);
        if json {
            let line = Line {
                verdict: c.verdict.name(),
                rule: &c.rule,
                code: r.code,
                enhanced: &r.enhanced,
                reply: raw,
            };
            println!("{}", serde_json::to_string(&line).expect("serializes"));
        } else {
            println!("{}\t{}", c.verdict, c.rule);
        }
    };
    match reply {
        Some(r) => show(r),
        None => {
            for line in std::io::stdin().lock().lines() {
                let line = line?;
                if !line.trim().is_empty() {
                    show(&line);
                }
            }
        }
    }
    Ok(())
}

fn print_learned(l: &crate::reputation::LearnedReply) -> std::fmt::Result {
    let when = |t: u64| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t));
    let mut s = String::new();
    writeln!(s, "{}", l.reply)?;
    writeln!(
        s,
        "  rules said:  {} ({}) — a second IP got past it {} time(s)",
        l.verdict, l.rule, l.count
    )?;
    writeln!(
        s,
        "  refused:     {} at site {} (mx {}), accepted via {}",
        l.ip,
        l.site,
        l.mx_host.as_deref().unwrap_or("-"),
        l.accepted_via
    )?;
    writeln!(
        s,
        "  seen:        {} to {}",
        when(l.first_seen),
        when(l.last_seen)
    )?;
    writeln!(s, "  as a rule (sidestep.toml):")?;
    for line in suggested_rule(&l.reply).lines() {
        writeln!(s, "    {line}")?;
    }
    println!("{s}");
    Ok(())
}

fn render_eval(e: &Evaluation) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "accuracy: {:.1}% ({} of {} replies)\n",
        e.accuracy() * 100.0,
        e.correct,
        e.total
    );
    let _ = writeln!(s, "confusion matrix (rows: expected, columns: classified):");
    let short = |v: &Verdict| match v {
        Verdict::IpReputation => "ip-rep".to_string(),
        Verdict::DomainReputation => "dom-rep".to_string(),
        other => other.name().chars().take(7).collect(),
    };
    let _ = write!(s, "{:<18}", "");
    for v in &Verdict::ALL {
        let _ = write!(s, "{:>8}", short(v));
    }
    let _ = writeln!(s);
    for expected in &Verdict::ALL {
        let Some(row) = e.confusion.get(expected.name()) else {
            continue;
        };
        let _ = write!(s, "{:<18}", expected.name());
        for got in &Verdict::ALL {
            match row.get(got.name()) {
                Some(n) => {
                    let _ = write!(s, "{n:>8}");
                }
                None => {
                    let _ = write!(s, "{:>8}", ".");
                }
            }
        }
        let _ = writeln!(s);
    }
    if !e.misses.is_empty() {
        let _ = writeln!(s, "\nmisses ({}):", e.misses.len());
        for m in &e.misses {
            let _ = writeln!(
                s,
                "  expected {}, got {} by {}: {}",
                m.expected, m.got, m.rule, m.reply
            );
        }
    }
    s
}
