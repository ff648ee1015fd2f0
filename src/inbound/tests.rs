//! Session deadlines in simulated time (tokio's paused clock), over an in-memory stream:
//! what the relay tests check through the binary in real seconds, here exactly and fast.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::{Inbound, Session};
use crate::config::{Config, HumanDuration};
use crate::queue::QueueHandle;
use crate::spool::Spool;

/// A session with `idle_timeout` 1 s running on one end of a duplex stream; the other
/// end, for the test to speak on.
async fn session(dir: &std::path::Path) -> DuplexStream {
    let mut config = Config::default();
    config.server.idle_timeout = HumanDuration::from_secs(1);
    config.server.min_data_rate = 1000;
    let (queue, _events) = QueueHandle::for_test();
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let inbound = Arc::new(Inbound::for_test(
        config,
        Spool::open(dir).unwrap(),
        queue,
        stopping,
    ));
    let (client, server) = tokio::io::duplex(64 * 1024);
    let peer = "127.0.0.1:40000".parse().unwrap();
    tokio::spawn(async move {
        let _keep = (_stop, _events);
        let _ = Session::new(server, inbound, peer).run().await;
    });
    client
}

/// Everything the server sent until it closed, or until `within` of simulated time.
async fn replies(client: &mut DuplexStream, within: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, client.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(start_paused = true)]
async fn a_command_trickled_a_byte_at_a_time_gets_no_more_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = session(dir.path()).await;
    let started = tokio::time::Instant::now();
    for b in b"MAIL FROM:<a@sender.test>\r\n" {
        if c.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let text = replies(&mut c, Duration::from_secs(5)).await;
    assert!(text.contains("421 4.4.2"), "{text}");
    assert!(
        !text.contains("250 2.1.0"),
        "the command never completed: {text}"
    );
    // Cut a second after the greeting, not 8 s later when the line would have ended.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_keeps_talking_outlives_the_timeout_then_silence_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = session(dir.path()).await;
    let mut seen = 0;
    let mut buf = vec![0u8; 4096];
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        c.write_all(b"NOOP\r\n").await.unwrap();
        // The greeting, then one 250 per NOOP.
        while seen < 2 {
            let n = c.read(&mut buf).await.unwrap();
            seen += String::from_utf8_lossy(&buf[..n]).matches("\r\n").count();
        }
        seen = 1;
    }
    let silent = tokio::time::Instant::now();
    let text = replies(&mut c, Duration::from_secs(5)).await;
    assert!(text.contains("421 4.4.2"), "{text}");
    let waited = silent.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn message_content_slower_than_the_minimum_rate_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = session(dir.path()).await;
    c.write_all(b"EHLO c.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n")
        .await
        .unwrap();
    // 10 bytes every 100 ms is 100 B/s; 1000 B/s are required.
    for _ in 0..100 {
        if c.write_all(b"0123456789").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = replies(&mut c, Duration::from_secs(5)).await;
    assert!(text.contains("354"), "{text}");
    assert!(text.contains("421 4.4.2"), "{text}");
}
