//! Outbound SMTP: one transaction per (message, destination domain), from an egress IP of
//! the route's pool to the domain's MX hosts in preference order, or to the route's
//! fallback smarthost when no egress IP is clean for the destination site.

mod authorised;
mod client;
mod protocol;
mod reply;
mod sessions;
mod smarthost;

pub use client::Outbound;

use std::net::IpAddr;

use crate::egress::EgressIp;
use crate::envelope::{Address, BodyFlags, Sender};
use crate::site::Site;
use crate::spool::RemoteReply;

/// What is being sent in one transaction.
pub struct DomainDelivery<'a> {
    /// The recipient domain.
    pub domain: &'a str,
    /// The envelope sender (MAIL FROM).
    pub sender: &'a Sender,
    /// The recipients of this domain still pending.
    pub recipients: &'a [Address],
    /// 8BITMIME and SMTPUTF8, as the client declared them.
    pub flags: BodyFlags,
    /// The spooled body, CRLF line endings, not dot-stuffed.
    pub body: &'a [u8],
    /// Connections to the destination this delivery may have open, its own included
    /// (idle sessions kept for reuse count): the domain's connection limit.
    pub max_connections: usize,
    /// Egress IPs not to use for this delivery, whatever their standing: a second
    /// opinion must come from another address than the one that was refused.
    pub avoid: &'a [IpAddr],
    /// How the sender's SPF narrows the choice of egress IP and smarthost: the
    /// configured `[delivery] spf`, or `Require` for a second opinion after an
    /// authentication refusal (only an authorised address may be asked).
    pub spf: crate::config::SpfMode,
    /// Each recipient's own MAIL FROM, made once the egress IP is known (VERP return
    /// paths, `[bounces]`): the recipients then go in one transaction each, on the same
    /// session. None: `sender` for all, in one transaction.
    pub return_path: Option<&'a dyn ReturnPathFor>,
}

/// Makes the envelope sender of one recipient's transaction (the return-path token names
/// the egress IP, known only once the route is chosen).
pub trait ReturnPathFor: Sync {
    /// The reverse path for `recipients[index]` sent from `egress` (none through a
    /// smarthost); none: the delivery's `sender`.
    fn mail_from(&self, index: usize, egress: Option<IpAddr>) -> Option<String>;
}

/// How the mail left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// To the destination's MX from one of our egress IPs.
    Direct,
    /// Handed to this smarthost because no egress IP was clean for the site.
    Smarthost(String),
}

/// What happened: one reply per recipient (same order as `recipients`), plus where the
/// attempt went, for the log line, the DSN and reputation.
#[derive(Debug, Clone)]
pub struct AttemptReport {
    /// The egress IP the session was opened from (none through a smarthost).
    pub egress: Option<EgressIp>,
    /// The MX host that answered (or the smarthost).
    pub mx: Option<String>,
    /// The MX address connected to.
    pub mx_ip: Option<IpAddr>,
    /// The destination site, once the MX lookup succeeded.
    pub site: Option<Site>,
    /// Directly or through a smarthost.
    pub via: Via,
    /// With `no_egress`: when the first block of the site expires (Unix seconds), the
    /// earliest time an IP could be usable again.
    pub retry_at: Option<u64>,
    /// One reply per recipient.
    pub replies: Vec<RemoteReply>,
    /// Nothing was sent because no egress IP of the pool may be used (all listed): the
    /// queue retries as soon as the listing state improves.
    pub no_egress: bool,
    /// The transaction ran on a session kept from an earlier message.
    pub reused: bool,
    /// The site is down (nothing was tried, or this was its probe and no server
    /// answered): the next probe is due then (Unix ms).
    pub site_down: Option<u64>,
    /// Nothing was tried: the site is down and this was not its probe.
    pub skipped: bool,
    /// No server of the site answered (refused, timed out, dropped).
    pub unreachable: bool,
    /// The site was down and a server answered this delivery (its probe): the site's
    /// parked mail may go.
    pub site_recovered: bool,
    /// Nothing was sent: no usable address is authorised by the sender's SPF and the
    /// delivery required one.
    pub unauthorised: bool,
}

impl AttemptReport {
    /// A report of `replies` through `via`, with nothing else known yet: callers set what
    /// they learned (egress, MX, site) on it.
    fn new(via: Via, replies: Vec<RemoteReply>) -> Self {
        Self {
            egress: None,
            mx: None,
            mx_ip: None,
            site: None,
            via,
            retry_at: None,
            replies,
            no_egress: false,
            reused: false,
            site_down: None,
            skipped: false,
            unreachable: false,
            site_recovered: false,
            unauthorised: false,
        }
    }
}

/// Setting up the outbound side failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("smarthost {name}: cannot read {path}: {source}")]
    /// A smarthost's password or CA file cannot be read.
    File {
        /// The smarthost.
        name: String,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error("smarthost {name}: {message}")]
    /// A smarthost's TLS setup failed (no certificate in the CA file).
    Tls {
        /// The smarthost.
        name: String,
        /// What is wrong.
        message: String,
    },
}
