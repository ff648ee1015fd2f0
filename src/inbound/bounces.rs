//! Mail for the bounce domains (`[bounces]`): local, taken from anyone (receivers send
//! their late bounces from wherever they like), never relayed; everything else from a
//! client that may not relay is refused as before. An outsider's transaction is
//! size-limited (`[bounces] max_size`) and each client may start `rate_per_minute` of
//! them a minute. And the suppression list: RCPT of a suppressed address is refused
//! with the reason, so a list manager unsubscribes it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use tokio::io::{AsyncRead, AsyncWrite};

use super::session::Transaction;
use super::{Reply, Session, policy};
use crate::envelope::{Address, Sender};

/// Bounce transactions per client and minute, for outsiders.
#[derive(Default)]
pub struct BounceGate {
    /// Client → (Unix minute, transactions in it).
    counts: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

impl BounceGate {
    /// Whether `client` may start one more bounce transaction in `minute`.
    fn admit(&self, client: IpAddr, minute: u64, per_minute: u32) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.len() > 10_000 {
            // Old minutes only: the map stays bounded under a flood of addresses.
            counts.retain(|_, (m, _)| *m == minute);
        }
        let slot = counts.entry(client).or_insert((minute, 0));
        if slot.0 != minute {
            *slot = (minute, 0);
        }
        if slot.1 >= per_minute {
            return false;
        }
        slot.1 += 1;
        true
    }
}

/// The domain of a raw RCPT path (`<a@b>` without brackets), for the permission check
/// that comes before any parsing.
fn raw_domain(path: &str) -> &str {
    path.rsplit_once('@')
        .map_or("", |(_, d)| d.trim_end_matches('>'))
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Neither logged in nor in `relay_networks`.
    pub(super) fn is_outsider(&self) -> bool {
        self.user.is_none()
            && !policy::may_relay(self.peer.ip(), &self.config.server.relay_networks)
    }

    /// The largest message this session may hand in: an outsider sends bounces only.
    pub(super) fn max_size(&self) -> usize {
        let max = self.config.server.max_message_size.as_u64();
        let max = if self.is_outsider() {
            max.min(self.config.bounces.max_size.as_u64())
        } else {
            max
        };
        max as usize
    }

    /// Whether the raw RCPT path is at a bounce domain.
    pub(super) fn to_bounce_domain(&self, path: &str) -> bool {
        self.config.bounces.is_bounce_domain(raw_domain(path))
    }

    /// An outsider's first bounce recipient of a transaction: within its rate?
    pub(super) fn bounce_admitted(&self, txn: &Transaction) -> Option<Reply> {
        if !self.is_outsider() || !txn.recipients.is_empty() {
            return None;
        }
        let minute = self.inbound.clock.now() / 60;
        if self.inbound.bounce_gate.admit(
            self.peer.ip(),
            minute,
            self.config.bounces.rate_per_minute,
        ) {
            return None;
        }
        tracing::warn!(client = %self.peer.ip(), "bounce refused: over the client's rate");
        Some(Reply::new(
            450,
            "4.7.1",
            "Too many bounces from your address; try again later",
        ))
    }

    /// The refusal of a suppressed recipient, when the list is on.
    pub(super) fn suppressed(&self, sender: &Sender, rcpt: &Address) -> Option<Reply> {
        if !self.config.suppression.active(&self.config.bounces) {
            return None;
        }
        let domain = match sender {
            Sender::Address(a) => Some(a.domain()),
            Sender::Null => None,
        };
        let entry = self.inbound.suppressions.check(domain, &rcpt.to_string())?;
        tracing::info!(client = %self.peer.ip(), rcpt = %rcpt, scope = %entry.scope, "RCPT refused: suppressed");
        Some(Reply::new(550, "5.1.1", entry.refusal()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_counts_per_client_and_minute() {
        let gate = BounceGate::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(gate.admit(a, 10, 2));
        assert!(gate.admit(a, 10, 2));
        assert!(!gate.admit(a, 10, 2), "third in the minute");
        assert!(gate.admit(b, 10, 2), "another client");
        assert!(gate.admit(a, 11, 2), "the next minute");
        assert_eq!(raw_domain("b-x@Bounces.test"), "Bounces.test");
        assert_eq!(raw_domain("nobody"), "");
    }
}
