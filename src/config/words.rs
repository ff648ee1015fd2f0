//! serde's messages in an operator's words: `expected usize` becomes "expected a whole
//! number", and an unknown key gets the known key it is closest to ("did you mean").

/// `message` (one of serde's, from the TOML parser) in plain words.
pub(super) fn plain(message: &str) -> String {
    let mut out = message.to_string();
    for (rust, words) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected i64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
    ] {
        if let Some(rest) = out.strip_suffix(rust) {
            out = format!("{rest}{words}");
        }
    }
    if let Some(suggestion) = did_you_mean(&out) {
        out.push_str(&format!("; did you mean `{suggestion}`?"));
    }
    out
}

/// For "unknown field `x`, expected one of `a`, `b`": the known field closest to `x`,
/// when it is close (a typo, not another word).
fn did_you_mean(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest
        .strip_prefix(", expected one of ")
        .or_else(|| rest.strip_prefix(", expected "))?;
    expected
        .split(", ")
        .flat_map(|p| p.split(" or "))
        .filter_map(|k| k.trim().strip_prefix('`')?.strip_suffix('`'))
        .map(|k| (distance(unknown, k), k))
        .filter(|(d, k)| *d <= (k.len().max(unknown.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Edit distance counting a swap of two neighbours as one edit (optimal string
/// alignment), on bytes: keys are ASCII. `prot` is one edit from `port`.
fn distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_type_names_become_words() {
        assert_eq!(
            plain("invalid type: string \"many\", expected usize"),
            "invalid type: string \"many\", expected a whole number"
        );
        assert_eq!(
            plain("invalid type: string \"x\", expected f64"),
            "invalid type: string \"x\", expected a number"
        );
    }

    #[test]
    fn a_typo_gets_the_closest_key_and_another_word_gets_none() {
        assert_eq!(
            plain(
                "unknown field `max_sesions`, expected one of `listen`, `max_sessions`, `hostname`"
            ),
            "unknown field `max_sesions`, expected one of `listen`, `max_sessions`, `hostname`; did you mean `max_sessions`?"
        );
        assert_eq!(
            plain("unknown field `colour`, expected one of `retry_initial`, `retry_max`"),
            "unknown field `colour`, expected one of `retry_initial`, `retry_max`"
        );
        assert_eq!(
            plain("unknown field `prot`, expected `port` or `host`"),
            "unknown field `prot`, expected `port` or `host`; did you mean `port`?"
        );
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
