//! Rules: loading, compiling, matching.

use regex::Regex;
use serde::Deserialize;

use super::Verdict;
use super::normalize::normalize_text;

/// The rules shipped with sidestep.
const BUILTIN: &str = include_str!("../../config/classify.toml");

/// One rule as written in TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Shown by `sidestep classify` and in logs, so an operator sees why.
    pub name: String,
    /// What a matching reply means.
    pub verdict: Verdict,
    /// Regular expression, matched case-insensitively against the normalised text.
    pub pattern: String,
    /// Prefixes of the reply code ("4", "55", "550") or enhanced code ("5.7.") the rule
    /// applies to; empty means any.
    #[serde(default)]
    pub codes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    rules: Vec<RuleConfig>,
}

#[derive(Debug, thiserror::Error)]
/// The rules cannot be used.
pub enum ClassifyError {
    #[error("rules file: {0}")]
    /// The built-in rules file is not valid TOML.
    Parse(String),
    #[error("rule {name:?}: invalid pattern: {message}")]
    /// A rule's pattern does not compile.
    Pattern {
        /// The rule.
        name: String,
        /// Why not.
        message: String,
    },
}

/// What [`Classifier::classify`] decided and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// What the reply means.
    pub verdict: Verdict,
    /// The matching rule's name, or `default:…` when only the codes decided.
    pub rule: String,
}

/// Compiled rules, cheap to share behind an `Arc`.
///
/// Rules are tried one by one, in order, against the lower-cased reply, stopping at the
/// first match. Measured on the 91 real replies of tests/data/replies.toml: about 2 µs
/// per reply, where one `RegexSet` over all patterns took 150–250 µs (its lazy DFA gives
/// up on that many overlapping patterns and falls back to the NFA simulation).
#[derive(Debug)]
pub struct Classifier {
    rules: Vec<(RuleConfig, Regex)>,
}

impl Classifier {
    /// The built-in rules only.
    ///
    /// # Errors
    /// Never for the shipped file (a test checks it); the signature covers operator rules.
    pub fn builtin() -> Result<Self, ClassifyError> {
        Self::new(&[])
    }

    /// Operator rules first, then the built-in ones.
    ///
    /// # Errors
    /// A pattern does not compile.
    pub fn new(operator: &[RuleConfig]) -> Result<Self, ClassifyError> {
        let builtin: RulesFile =
            toml::from_str(BUILTIN).map_err(|e| ClassifyError::Parse(e.to_string()))?;
        let rules = operator
            .iter()
            .cloned()
            .chain(builtin.rules)
            .map(|r| {
                let re = Regex::new(&pattern(&r.pattern)).map_err(|e| ClassifyError::Pattern {
                    name: r.name.clone(),
                    message: e.to_string(),
                })?;
                Ok((r, re))
            })
            .collect::<Result<Vec<_>, ClassifyError>>()?;
        Ok(Self { rules })
    }

    /// Classifies a reply: code, enhanced code, text. Code 0 means no server answered
    /// (connection failure, DNS): only the enhanced code speaks then.
    pub fn classify(&self, code: u16, enhanced: &str, text: &str) -> Classification {
        if (200..300).contains(&code) {
            return Classification {
                verdict: Verdict::Delivered,
                rule: "default:2xx".into(),
            };
        }
        if code != 0 {
            let text = normalize_text(text).to_ascii_lowercase();
            let code_s = code.to_string();
            for (r, re) in &self.rules {
                let applies = r.codes.is_empty()
                    || r.codes.iter().any(|p| {
                        if p.contains('.') {
                            enhanced.starts_with(p.as_str())
                        } else {
                            code_s.starts_with(p.as_str())
                        }
                    });
                if applies && re.is_match(&text) {
                    return Classification {
                        verdict: r.verdict,
                        rule: r.name.clone(),
                    };
                }
            }
        }
        fallback(code, enhanced)
    }
}

/// Replies are matched lower-cased, so a pattern written in lower case is compiled as is
/// (its literals then feed the regex engine's fast prefilters); one with an upper-case
/// letter outside an escape (`\S`, `\D`, `\B`…) gets `(?i)` so an operator's rule still
/// matches.
pub(crate) fn pattern(p: &str) -> String {
    let mut escaped = false;
    let upper = p.chars().any(|c| {
        let hit = !escaped && c.is_uppercase();
        escaped = !escaped && c == '\\';
        hit
    });
    if upper {
        format!("(?i){p}")
    } else {
        p.to_string()
    }
}

/// No rule matched: the codes decide (RFC 3463 subjects for permanent failures).
fn fallback(code: u16, enhanced: &str) -> Classification {
    let permanent = (500..600).contains(&code) || (code == 0 && enhanced.starts_with('5'));
    let (verdict, rule) = if !permanent {
        (Verdict::Transient, "default:temporary")
    } else {
        match enhanced.get(1..).unwrap_or("") {
            e if e.starts_with(".1.") || e.starts_with(".2.") || e.starts_with(".4.") => {
                if e == ".2.3" {
                    (Verdict::Message, "default:5.2.3")
                } else {
                    (Verdict::Recipient, "default:address")
                }
            }
            e if e.starts_with(".7.") => (Verdict::Policy, "default:5.7.x"),
            _ => (Verdict::Message, "default:permanent"),
        }
    };
    Classification {
        verdict,
        rule: rule.into(),
    }
}
