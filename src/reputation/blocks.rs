//! Blocks: a destination site refused one of our egress IPs for its reputation (Cloudmark
//! CSI behind Bell/Aliant, Microsoft S3150, Yahoo TSS04…). No public list shows these;
//! they are learned from the replies themselves, per (egress IP, site), with the evidence
//! a delisting form asks for.

use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::config::BlocksConfig;
use crate::routing::Site;

/// What the destination said, exactly, and where and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// The reply as received: code, enhanced code, text.
    pub reply: String,
    /// The classification rule that matched.
    pub rule: String,
    /// Unix seconds.
    pub at: u64,
    pub mx_host: Option<String>,
    pub mx_ip: Option<IpAddr>,
    pub queue_id: String,
    pub recipient: String,
    /// Where to ask for removal, when the reply says (Cloudmark reset form, Microsoft's
    /// sender portal, …).
    pub removal_url: Option<String>,
    /// The attempt's log line, as an operator would paste it into a delisting form.
    pub log_line: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub ip: IpAddr,
    pub site: Site,
    /// Unix seconds of the first refusal in this run of refusals.
    pub first_seen: u64,
    /// Until then the IP is not used for this site; afterwards one canary tries it.
    pub expires_at: u64,
    /// Refusals after the first, each doubling the duration.
    pub strikes: u32,
    /// The refusal that started this block (or renewed it: a refused canary).
    pub evidence: Evidence,
    /// Refusals while the block held, from attempts that started before it (a burst of
    /// connections in flight): more evidence, not more strikes. At most a few.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub later: Vec<Evidence>,
    /// A canary delivery is under way (not persisted: a restart frees it).
    #[serde(skip)]
    pub canary_in_flight: bool,
}

/// How long a block lasts after `strikes` repeats: `duration × 2^strikes`, capped.
pub fn block_duration(config: &BlocksConfig, strikes: u32) -> Duration {
    let base = config.duration.get();
    let factor = 2u32.saturating_pow(strikes.min(30));
    base.saturating_mul(factor).min(config.max_duration.get())
}

static URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"(?i)\bhttps?://[^\s<>"'\])]+"#).expect("valid pattern"));
static BARE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(csi\.cloudmark\.com/\S*|sender\.office\.com/?\S*|delist@microsoft\.com)")
        .expect("valid pattern")
});

/// The removal link in a reply, if it has one: a link that looks like a removal or
/// lookup page first, then any link, then the known bare forms.
pub fn find_removal_url(text: &str) -> Option<String> {
    let urls: Vec<&str> = URL
        .find_iter(text)
        .map(|m| m.as_str().trim_end_matches(['.', ',', ';']))
        .collect();
    const HINTS: [&str; 8] = [
        "reset",
        "delist",
        "remov",
        "sender.office.com",
        "ipcheck",
        "senderguidelines",
        "lookup",
        "query",
    ];
    let hinted = urls.iter().find(|u| {
        let l = u.to_ascii_lowercase();
        HINTS.iter().any(|h| l.contains(h))
    });
    if let Some(u) = hinted.or(urls.first()) {
        return Some(u.to_string());
    }
    BARE.find(text).map(|m| {
        let s = m.as_str().trim_end_matches(['.', ',', ';']);
        if s.contains('@') {
            format!("mailto:{s}")
        } else {
            format!("https://{s}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_double_up_to_the_cap() {
        let c = BlocksConfig::default();
        let hours: Vec<u64> = (0..6)
            .map(|s| block_duration(&c, s).as_secs() / 3600)
            .collect();
        assert_eq!(hours, vec![4, 8, 16, 32, 48, 48]);
        assert_eq!(block_duration(&c, u32::MAX).as_secs(), 48 * 3600);
    }

    #[test]
    fn removal_urls_are_found() {
        let cases = [
            (
                "550 5.7.1 blocked using CSI; https://csi.cloudmark.com/reset-request/?ip=192.0.2.1",
                Some("https://csi.cloudmark.com/reset-request/?ip=192.0.2.1"),
            ),
            (
                "550 5.7.606 Access denied, banned sending IP [192.0.2.1]. To request removal from this list please visit https://sender.office.com/ and follow the directions. For more information please go to http://go.microsoft.com/fwlink/?LinkID=526655",
                Some("https://sender.office.com/"),
            ),
            (
                "550 5.7.511 Access denied, banned sender[192.0.2.1]. To request removal from this list, forward this message to delist@microsoft.com.",
                Some("mailto:delist@microsoft.com"),
            ),
            (
                "554 blocked, see csi.cloudmark.com/reset-request/?ip=192.0.2.1.",
                Some("https://csi.cloudmark.com/reset-request/?ip=192.0.2.1"),
            ),
            (
                "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred; see https://postmaster.yahooinc.com/error-codes",
                Some("https://postmaster.yahooinc.com/error-codes"),
            ),
            ("550 5.7.1 go away", None),
        ];
        for (text, want) in cases {
            assert_eq!(find_removal_url(text).as_deref(), want, "{text}");
        }
    }
}
