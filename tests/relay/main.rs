//! Integration tests: sidestep as a real process, speaking real SMTP over loopback to
//! sinks, resolving through a real DNS server on loopback.

mod support;

mod admin;
mod alerts;
mod authentication;
mod bench;
mod blocks;
mod bounces;
mod bulk;
mod chunking;
mod cli;
mod cluster;
mod complaints;
mod crash;
mod dane;
mod delivery;
mod disk;
mod dkim;
mod inbound;
mod interop;
mod listings;
mod page;
mod probes;
mod replies;
mod retry;
mod reuse;
mod second_opinion;
mod senders;
mod shaping;
mod stop;
mod submission;
mod suppression;
mod tls_policy;
mod warmup;

use support::relay::Setup;
use support::sink::Sink;

/// The usual world: `dest.test` (MX → sink 0) and `sender.test` (MX → sink 1, where
/// DSNs arrive).
pub struct World {
    pub setup: Setup,
    pub dest: Sink,
    pub sender: Sink,
}

impl World {
    pub async fn new() -> World {
        let sinks = Sink::start_many(2).await;
        let setup = Setup::new(sinks[0].addr.port()).await;
        setup.dns.add_mx("dest.test", 10, "mx.dest.test").await;
        setup.dns.add_a("mx.dest.test", sinks[0].addr.ip()).await;
        setup.dns.add_mx("sender.test", 10, "mx.sender.test").await;
        setup.dns.add_a("mx.sender.test", sinks[1].addr.ip()).await;
        World {
            dest: sinks[0].clone(),
            sender: sinks[1].clone(),
            setup,
        }
    }

    /// Sends `n` messages to `b@dest.test`, one after the other, each once the relay has
    /// finished with the previous one: the order at the sink is the order sent, and a
    /// session the relay keeps is back in its cache before the next message is due.
    pub async fn send_in_a_row(&self, relay: &support::relay::Relay, n: usize) {
        self.send_each(relay, &vec!["b@dest.test"; n]).await;
    }

    /// Sends one message to each of `rcpts` in turn (`b@dest.test` or `b@sender.test`),
    /// each once the relay has finished with the one before, as [`World::send_in_a_row`].
    pub async fn send_each(&self, relay: &support::relay::Relay, rcpts: &[&str]) {
        for (i, rcpt) in rcpts.iter().enumerate() {
            let sink = if rcpt.ends_with("@dest.test") {
                &self.dest
            } else {
                &self.sender
            };
            let before = sink.messages().len();
            let done = relay.log().matches("every recipient is final").count();
            let mut c = support::client::ready(relay.addr).await;
            c.send_mail(
                "a@sender.test",
                &[rcpt],
                &message(&format!("m{i}"), "x\r\n"),
            )
            .await;
            sink.wait_for(before + 1).await;
            support::eventually(
                || relay.log().matches("every recipient is final").count() == done + 1,
                || relay.log(),
            )
            .await;
        }
    }
}

/// A retry schedule no test outlives: what arrives went out in its first attempt, or
/// because the operator said so.
pub const NO_RETRY_SOON: &str = "retry_initial = \"1h\"\nretry_max = \"1h\"\nmax_lifetime = \"2h\"";

pub fn message(subject: &str, body: &str) -> String {
    format!("From: a@sender.test\r\nTo: b@dest.test\r\nSubject: {subject}\r\n\r\n{body}")
}
