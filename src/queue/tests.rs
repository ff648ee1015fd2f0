//! The scheduler's retry schedule in simulated time: tokio's paused clock moves the
//! queue's clock too, so an hour of backoff takes milliseconds and the times are exact.

use std::sync::Arc;
use std::time::Duration;

use super::{QueueContext, start};
use crate::classify::Classifier;
use crate::clock::Clock;
use crate::config::{Config, HumanDuration};
use crate::dns::Resolver;
use crate::envelope::{Address, BodyFlags, Sender};
use crate::outbound::Outbound;
use crate::reputation::Reputation;
use crate::spool::{QueueId, QueuedMessage, RecipientState, RecipientStatus, Spool};

/// The record of `id` once `done` holds for it. Busy-yields instead of sleeping: the
/// spool and the resolver work in real time, and a sleeping test would let the paused
/// clock jump past them.
async fn record_when(
    spool: &Spool,
    id: &QueueId,
    done: impl Fn(&QueuedMessage) -> bool,
) -> QueuedMessage {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(m) = spool.load(id).unwrap().filter(|m| done(m)) {
            return m;
        }
        assert!(std::time::Instant::now() < deadline, "gave up waiting");
        tokio::task::yield_now().await;
    }
}

/// A UDP name server on loopback that answers every query with SERVFAIL.
async fn servfail_server() -> std::net::SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            if n < 12 {
                continue;
            }
            let mut reply = buf[..n].to_vec();
            reply[2] |= 0x80; // a response
            reply[3] = (reply[3] & 0xf0) | 2; // RCODE 2: SERVFAIL
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    addr
}

#[tokio::test(start_paused = true)]
async fn a_deferred_message_is_retried_on_the_backoff_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.queue.retry_initial = HumanDuration::from_secs(60);
    config.queue.retry_max = HumanDuration::from_secs(600);
    config.queue.max_lifetime = HumanDuration::from_secs(86_400);
    config.queue.retry_jitter = 0.0;
    // A name server that answers every query SERVFAIL, at once: every attempt ends in a
    // temporary DNS failure, without waiting on a timer.
    config.dns.nameservers = vec![servfail_server().await];
    config.dns.timeout = HumanDuration::from_secs(1);
    let config = Arc::new(config);
    let spool = Spool::open(dir.path()).unwrap();
    let reputation = Reputation::in_memory(vec![]);
    let resolver = Resolver::new(&config.dns).unwrap();
    let authorisation =
        crate::authorisation::Authorisation::new(&resolver, "relay.test", None, Clock::system());
    let outbound = Outbound::new(&config, resolver, reputation.clone(), authorisation).unwrap();
    let clock = Clock::following_tokio();
    let ctx = QueueContext::new(
        config.clone(),
        spool.clone(),
        outbound,
        reputation,
        Arc::new(Classifier::builtin().unwrap()),
    )
    .with_clock(clock.clone());
    let msg = QueuedMessage {
        id: QueueId::generate(crate::clock::Clock::system().now_us()),
        sender: Sender::Null,
        recipients: vec![RecipientState::pending(
            Address::parse("b@dest.test", false).unwrap(),
        )],
        flags: BodyFlags::default(),
        received_at: clock.now(),
        attempts: 0,
        next_attempt_ms: clock.now_ms(),
        size: 3,
        client: "test".into(),
        body: None,
        held: false,
        held_reason: None,
        history: Vec::new(),
        user: None,
    };
    spool.store_message(&msg, b"x\r\n".to_vec()).await.unwrap();
    let _queue = start(Arc::new(ctx)).unwrap();

    // The first attempt runs at once; each failure sets the next one the schedule's
    // delay later (60, 120, 240, 480, then the 600 s cap), and the queue starts it when
    // its time comes, not before.
    let mut stored = record_when(&spool, &msg.id, |m| m.attempts == 1).await;
    let mut delays = Vec::new();
    for n in 2..=7 {
        let due_in = stored.next_attempt_ms - clock.now_ms();
        delays.push(due_in / 1000);
        tokio::time::advance(Duration::from_millis(due_in - 1)).await;
        assert_eq!(
            spool.load(&msg.id).unwrap().unwrap().attempts,
            n - 1,
            "early"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        stored = record_when(&spool, &msg.id, |m| m.attempts == n).await;
    }
    assert_eq!(delays, vec![60, 120, 240, 480, 600, 600]);
    assert!(matches!(
        &stored.recipients[0].status,
        RecipientStatus::Pending { last: Some(r) } if r.enhanced == "4.4.3"
    ));
}
