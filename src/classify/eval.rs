//! Measuring the rules on labelled replies: accuracy, confusion matrix, every miss with
//! the rule that fired. `sidestep classify --eval` prints it; the test suite runs it on
//! `tests/data/eval.jsonl`, replies the rules were not written from, with a floor.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Classifier, Verdict, parse_reply};

/// One labelled reply, one JSON object per line of a corpus file.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Labelled {
    /// The reply as a receiver sent it: code, enhanced code, text.
    pub reply: String,
    /// What it means.
    pub verdict: Verdict,
    /// Where the reply was published (kept for the reader, not used here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The receiver or list operator it comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver: Option<String>,
}

/// A reply the rules got wrong.
#[derive(Debug, Clone, Serialize)]
pub struct Miss {
    /// The reply as labelled.
    pub reply: String,
    /// The verdict it should get.
    pub expected: Verdict,
    /// The verdict the rules gave.
    pub got: Verdict,
    /// The rule that fired (or the code default).
    pub rule: String,
}

/// The rules measured on a corpus.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Evaluation {
    /// Replies measured.
    pub total: usize,
    /// Replies classified as labelled.
    pub correct: usize,
    /// expected verdict → classified verdict → count.
    pub confusion: BTreeMap<String, BTreeMap<String, usize>>,
    /// Every reply classified otherwise, in corpus order.
    pub misses: Vec<Miss>,
}

impl Evaluation {
    /// Share of replies classified as labelled, 0 to 1 (1 for an empty corpus).
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }
}

/// Classifies every reply and compares with its label.
pub fn evaluate<'a>(
    classifier: &Classifier,
    corpus: impl IntoIterator<Item = &'a Labelled>,
) -> Evaluation {
    let mut e = Evaluation::default();
    for row in corpus {
        let r = parse_reply(&row.reply);
        let c = classifier.classify(r.code, &r.enhanced, &r.text);
        e.total += 1;
        *e.confusion
            .entry(row.verdict.name().to_string())
            .or_default()
            .entry(c.verdict.name().to_string())
            .or_default() += 1;
        if c.verdict == row.verdict {
            e.correct += 1;
        } else {
            e.misses.push(Miss {
                reply: row.reply.clone(),
                expected: row.verdict,
                got: c.verdict,
                rule: c.rule,
            });
        }
    }
    e
}

/// Reads a JSONL corpus: one [`Labelled`] per line; blank lines and lines starting with
/// `#` are skipped.
///
/// # Errors
/// A line that is not a labelled reply, with its line number.
pub fn parse_corpus(text: &str) -> Result<Vec<Labelled>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(n, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", n + 1)))
        .collect()
}
