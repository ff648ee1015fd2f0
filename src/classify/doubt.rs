//! When a refusal might be about the sending IP although no rule says so.
//!
//! No rule set knows every receiver's wording: measured on real replies the rules were
//! not written from, about half of the refusals of the sending IP read as `message`,
//! `policy` or `transient`. Bouncing on such a verdict breaks the promise that mail
//! another IP would deliver is never bounced, so these refusals get a second opinion
//! from another egress IP first (see `queue::domain`). Clear recipient problems and
//! domain-reputation verdicts do not: another IP cannot change them.

use std::net::IpAddr;
use std::sync::LazyLock;

use regex::Regex;

use super::Verdict;

/// Words with which receivers say "your address is on a list" or "your IP".
static NAMES_A_LIST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b(black|block|deny|ban|bad|bl)[ -]?list|\bdnsbl|\brbl\b|blocked using|listed (at|in|on|by)\b|spamhaus|spamcop|barracuda|\b(your|sending|sender|client|source|connecting) ip\b|\bip (address )?(reputation|blocked|banned|rejected)",
    )
    .expect("valid pattern")
});

/// Whether a refusal with this code, verdict and text, received from `ip`, should be
/// tried again at once from another egress IP before it is acted on.
pub fn worth_second_opinion(code: u16, verdict: Verdict, text: &str, ip: IpAddr) -> bool {
    // Code 0: no server answered (connection, DNS): nothing was said about the IP.
    let refused = (500..600).contains(&code);
    let deferred = (400..500).contains(&code);
    match verdict {
        // Already acted on as the IP's fault, or not a refusal of anything we can change.
        Verdict::Delivered
        | Verdict::IpReputation
        | Verdict::DomainReputation
        // Asked again only from an IP that SPF authorises (see `queue::domain`), and
        // never turned into a block.
        | Verdict::Authentication
        | Verdict::Throttle
        | Verdict::Greylist => false,
        // What rules call the message or our policy is often the IP in other words.
        Verdict::Message | Verdict::Policy => refused,
        // A recipient or temporary refusal only when it names our IP or a blocklist.
        Verdict::Recipient => refused && names_ip_or_list(text, ip),
        Verdict::Transient => deferred && names_ip_or_list(text, ip),
    }
}

/// Whether the text names `ip` (as a whole address) or speaks of a blocklist.
pub fn names_ip_or_list(text: &str, ip: IpAddr) -> bool {
    let ip = ip.to_string();
    // "192.0.2.1" must not match inside "192.0.2.10" or "10.192.0.2.1"; a full stop
    // ending the sentence after it is fine.
    let part = |c: char| c.is_ascii_alphanumeric() || c == ':';
    let whole = |at: usize| {
        let mut after = text[at + ip.len()..].chars();
        let before_ok = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !part(c) && c != '.');
        let after_ok = match after.next() {
            None => true,
            Some('.') => !after.next().is_some_and(|c| c.is_ascii_digit()),
            Some(c) => !part(c),
        };
        before_ok && after_ok
    };
    text.match_indices(&ip).any(|(at, _)| whole(at)) || NAMES_A_LIST.is_match(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip() -> IpAddr {
        "192.0.2.1".parse().unwrap()
    }

    #[test]
    fn which_refusals_get_a_second_opinion() {
        let cases = [
            (550, Verdict::Policy, "5.7.1 go away", true),
            (554, Verdict::Message, "Transaction failed", true),
            (452, Verdict::Transient, "Message rejected", false),
            (0, Verdict::Message, "does not support SMTPUTF8", false),
            (550, Verdict::Recipient, "5.1.1 user unknown", false),
            (
                550,
                Verdict::Recipient,
                "5.1.0 rejected: 192.0.2.1 listed at bl.example",
                true,
            ),
            (
                421,
                Verdict::Transient,
                "Your IP is temporarily blocked",
                true,
            ),
            (451, Verdict::Transient, "try 192.0.2.1 later", true),
            (451, Verdict::Transient, "try 192.0.2.10 later", false),
            (451, Verdict::Transient, "local error in processing", false),
            (
                550,
                Verdict::DomainReputation,
                "domain on a blacklist",
                false,
            ),
            (421, Verdict::Throttle, "too many connections", false),
            (550, Verdict::IpReputation, "blocked using CSI", false),
        ];
        for (code, verdict, text, want) in cases {
            assert_eq!(
                worth_second_opinion(code, verdict, text, ip()),
                want,
                "{code} {verdict} {text}"
            );
        }
    }
}
