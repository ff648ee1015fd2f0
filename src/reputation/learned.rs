//! Learned replies: refusals no rule blamed on our IP, which a second egress IP then got
//! past. Each one is a rule the classifier is missing; the operator sees them with
//! `sidestep classify --learned` and can turn them into `[[classify.rules]]`.

use std::net::IpAddr;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::state::Reputation;
use super::store::{self, StoreError};
use crate::classify::Verdict;
use crate::site::Site;

/// One reply wording, with what the rules made of it and how often it was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedReply {
    /// The reply as received the last time: code, enhanced code, text.
    pub reply: String,
    /// What the rules said (so the operator sees which rule to add or correct).
    pub verdict: Verdict,
    /// The rule that fired.
    pub rule: String,
    /// The egress IP that was refused, the last time.
    pub ip: IpAddr,
    /// Where the same mail was then accepted: another egress IP, or `smarthost:NAME`.
    pub accepted_via: String,
    /// The site that refused.
    pub site: Site,
    /// Its MX host that refused.
    pub mx_host: Option<String>,
    /// Unix seconds.
    pub first_seen: u64,
    /// Unix seconds of the latest contradiction.
    pub last_seen: u64,
    /// How many times a second opinion contradicted this wording.
    pub count: u64,
}

static IP_LITERAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b\d{1,3}(\.\d{1,3}){3}\b|\b[0-9a-fA-F]{0,4}(:[0-9a-fA-F]{0,4}){2,7}\b")
        .expect("valid pattern")
});

/// The key a wording is kept under: the reply with address literals masked, so the same
/// refusal of two IPs is one entry.
pub fn wording_key(reply: &str) -> String {
    IP_LITERAL.replace_all(reply, "<ip>").into_owned()
}

/// A `[[classify.rules]]` entry that would have matched this reply: its text with
/// address literals generalised, escaped as a regular expression.
pub fn suggested_rule(reply: &str) -> String {
    let text = crate::classify::parse_reply(reply).text;
    let pattern = IP_LITERAL
        .split(&text.to_ascii_lowercase())
        .map(|part| regex::escape(part.trim()))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(".*");
    format!(
        "[[classify.rules]]\nname = \"learned\"\nverdict = \"ip-reputation\"\npattern = '''{pattern}'''\n"
    )
}

impl Reputation {
    /// A reply the rules did not blame on the IP was contradicted by a second opinion:
    /// remember the wording (and how often), for `sidestep classify --learned`.
    ///
    /// # Errors
    /// The entry could not be persisted (it holds in memory).
    pub fn record_learned(&self, mut learned: LearnedReply) -> Result<(), StoreError> {
        let key = wording_key(&learned.reply);
        let entry = {
            let mut state = self.lock();
            if let Some(old) = state.learned.get(&key) {
                learned.first_seen = old.first_seen;
                learned.count = old.count + 1;
            }
            state.learned.insert(key.clone(), learned.clone());
            learned
        };
        match &self.shared.db {
            Some(db) => store::save_learned(db, &key, &entry),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_masked_and_rules_suggested() {
        assert_eq!(
            wording_key("554 5.7.1 Client 127.0.0.2 refused, see 2001:db8::25"),
            "554 5.7.1 Client <ip> refused, see <ip>"
        );
        let rule = suggested_rule("554 5.7.1 Client 127.0.0.2 refused (local list)");
        assert!(
            rule.contains(r"pattern = '''client.*refused \(local list\)'''"),
            "{rule}"
        );
        let set = crate::classify::Classifier::new(&[crate::classify::RuleConfig {
            name: "learned".into(),
            verdict: Verdict::IpReputation,
            pattern: r"client.*refused \(local list\)".into(),
            codes: vec![],
        }])
        .unwrap();
        assert_eq!(
            set.classify(554, "5.7.1", "Client 192.0.2.9 refused (local list)")
                .verdict,
            Verdict::IpReputation
        );
    }
}
