//! Reply → verdict. The one place that decides what an attempt's result means: the
//! queue and reputation act on the [`Verdict`] and nothing else looks at reply codes.
//!
//! The knowledge of what receivers say lives in data: `config/classify.toml` (built in)
//! plus the operator's `[[classify.rules]]`, compiled into one `RegexSet` so a reply is
//! matched against every pattern in a single pass.

mod doubt;
pub mod eval;
mod normalize;
mod rules;

pub use doubt::{names_ip_or_list, worth_second_opinion};

pub use normalize::{ParsedReply, normalize_text, parse_reply};
pub(crate) use rules::pattern;
pub use rules::{Classification, Classifier, ClassifyError, RuleConfig};

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The classified outcome of one recipient's attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The destination took the message for this recipient.
    Delivered,
    /// A temporary failure: try again later, the same way.
    Transient,
    /// The address or mailbox cannot take mail: bounce.
    Recipient,
    /// Size, format or content: bounce (after a second opinion).
    Message,
    /// The receiver's local policy: bounce (after a second opinion).
    Policy,
    /// SPF, DKIM, DMARC or alignment: a fact about (sender domain, IP), never about the
    /// IP's reputation. Asked again only from an IP that SPF authorises; bounced with a
    /// DSN naming what failed when that is refused too.
    Authentication,
    /// Too fast for this destination: fewer connections, a later retry.
    Throttle,
    /// Greylisting: the receiver wants to see us retry.
    Greylist,
    /// The receiver refuses this sending IP: block it for the site, retry from another.
    IpReputation,
    /// A domain of the message is listed: another IP cannot help, bounce.
    DomainReputation,
}

/// Who an outcome blames: only a verdict that blames the egress IP teaches reputation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// Nothing went wrong (delivered).
    Nobody,
    /// The recipient's address or mailbox.
    Recipient,
    /// This message's size, format or content.
    Message,
    /// Our sending configuration (SPF, DKIM, DMARC, PTR) or the receiver's local policy.
    SenderPolicy,
    /// The destination is unavailable or slow; nothing on our side to change.
    Destination,
    /// The sending IP's reputation at this destination.
    EgressIp,
    /// A domain in the envelope or content.
    SenderDomain,
}

/// Where to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Done (delivered) or never (bounce).
    No,
    /// Later, on the same kind of route.
    Later,
    /// Later, and slower towards this destination.
    LaterSlower,
    /// Now, from another egress IP.
    OtherIp,
}

impl Verdict {
    /// Every verdict, in the order the CLI shows them.
    pub const ALL: [Verdict; 10] = [
        Verdict::Delivered,
        Verdict::Transient,
        Verdict::Recipient,
        Verdict::Message,
        Verdict::Policy,
        Verdict::Authentication,
        Verdict::Throttle,
        Verdict::Greylist,
        Verdict::IpReputation,
        Verdict::DomainReputation,
    ];

    /// The verdict's name as written in rules, logs and JSON (`ip-reputation`).
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Delivered => "delivered",
            Verdict::Transient => "transient",
            Verdict::Recipient => "recipient",
            Verdict::Message => "message",
            Verdict::Policy => "policy",
            Verdict::Authentication => "authentication",
            Verdict::Throttle => "throttle",
            Verdict::Greylist => "greylist",
            Verdict::IpReputation => "ip-reputation",
            Verdict::DomainReputation => "domain-reputation",
        }
    }

    /// Who the outcome blames.
    pub fn blame(self) -> Blame {
        match self {
            Verdict::Delivered => Blame::Nobody,
            Verdict::Transient | Verdict::Throttle | Verdict::Greylist => Blame::Destination,
            Verdict::Recipient => Blame::Recipient,
            Verdict::Message => Blame::Message,
            Verdict::Policy | Verdict::Authentication => Blame::SenderPolicy,
            Verdict::IpReputation => Blame::EgressIp,
            Verdict::DomainReputation => Blame::SenderDomain,
        }
    }

    /// Where, if anywhere, to try again.
    pub fn retry(self) -> Retry {
        match self {
            Verdict::Delivered
            | Verdict::Recipient
            | Verdict::Message
            | Verdict::Policy
            | Verdict::Authentication
            | Verdict::DomainReputation => Retry::No,
            Verdict::Transient | Verdict::Greylist => Retry::Later,
            Verdict::Throttle => Retry::LaterSlower,
            Verdict::IpReputation => Retry::OtherIp,
        }
    }

    /// Whether the recipient is finished with a bounce.
    pub fn is_permanent_failure(self) -> bool {
        self.retry() == Retry::No && self != Verdict::Delivered
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Verdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Verdict::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| format!("unknown verdict {s:?}"))
    }
}

#[cfg(test)]
mod tests;
