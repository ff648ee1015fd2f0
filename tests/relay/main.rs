//! Integration tests: sidestep as a real process, speaking real SMTP over loopback to
//! sinks, resolving through a real DNS server on loopback.

mod support;

mod bench;
mod blocks;
mod cli;
mod crash;
mod delivery;
mod disk;
mod inbound;
mod interop;
mod listings;
mod retry;

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
}

pub fn message(subject: &str, body: &str) -> String {
    format!("From: a@sender.test\r\nTo: b@dest.test\r\nSubject: {subject}\r\n\r\n{body}")
}
