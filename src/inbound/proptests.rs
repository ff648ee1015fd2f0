//! Property tests of the session state machine: whatever bytes arrive, in whatever
//! pieces, the session never panics, never hangs, answers only well-formed replies, and
//! a valid transaction split anywhere is accepted exactly once. Driven over an
//! in-memory stream (the client closes after its input, so no case waits for a
//! deadline), a bounded number of cases per run; lines longer than `max_line_length`
//! and content beyond `max_message_size` are among the inputs.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Inbound, Session};
use crate::config::{Config, HumanDuration};
use crate::queue::QueueHandle;
use crate::spool::Spool;

/// What a session did with some input.
struct Run {
    replies: String,
    /// The session task ended without panicking.
    clean_end: bool,
    spool: Spool,
    _dir: tempfile::TempDir,
}

/// Feeds `chunks` to a fresh session one write each, then closes the client's side and
/// collects every reply.
fn run(chunks: Vec<Vec<u8>>) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let (replies, clean_end) = runtime.block_on(async {
        let mut config = Config::default();
        config.server.idle_timeout = HumanDuration::from_secs(5);
        config.server.max_line_length = 512;
        config.server.max_message_size = bytesize::ByteSize::kib(64);
        let (queue, events) = QueueHandle::for_test();
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let inbound = Arc::new(Inbound::for_test(config, spool.clone(), queue, stopping));
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let peer = "127.0.0.1:40000".parse().unwrap();
        let task = tokio::spawn(async move {
            let _keep = (stop, events);
            Session::new(server, inbound, peer).run().await.map(|_| ())
        });
        let (mut r, mut w) = tokio::io::split(&mut client);
        let reader = async {
            let mut out = Vec::new();
            let _ = r.read_to_end(&mut out).await;
            out
        };
        let writer = async {
            for c in chunks {
                if w.write_all(&c).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let _ = w.shutdown().await;
        };
        let (out, ()) = tokio::join!(
            async {
                tokio::time::timeout(Duration::from_secs(20), reader)
                    .await
                    .expect("the session never ended")
            },
            writer
        );
        let ended = task.await;
        (
            String::from_utf8_lossy(&out).into_owned(),
            !matches!(ended, Err(e) if e.is_panic()),
        )
    });
    Run {
        replies,
        clean_end,
        spool,
        _dir: dir,
    }
}

/// Every reply line: three digits, then a space or a dash, printable ASCII, CRLF.
fn well_formed(replies: &str) -> Result<(), TestCaseError> {
    if !replies.is_empty() && !replies.ends_with("\r\n") {
        return Err(TestCaseError::fail(format!(
            "unterminated reply: {replies:?}"
        )));
    }
    for line in replies.split_terminator("\r\n") {
        let b = line.as_bytes();
        let ok = b.len() >= 4
            && b[..3].iter().all(u8::is_ascii_digit)
            && (b[3] == b' ' || b[3] == b'-')
            && (b'2'..=b'5').contains(&b[0])
            && b.iter().all(|c| (0x20..0x7f).contains(c));
        if !ok {
            return Err(TestCaseError::fail(format!(
                "malformed reply line {line:?}"
            )));
        }
    }
    Ok(())
}

/// Bytes a client might send: commands, fragments of them, separators, junk.
fn noise() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"EHLO c.test\r\n".to_vec()),
        Just(b"HELO c.test\r\n".to_vec()),
        Just(b"MAIL FROM:<a@sender.test>\r\n".to_vec()),
        Just(b"MAIL FROM:<> SIZE=99999999999\r\n".to_vec()),
        Just(b"RCPT TO:<b@dest.test>\r\n".to_vec()),
        Just(b"RCPT TO:<\xff\xfe@x>\r\n".to_vec()),
        Just(b"DATA\r\n".to_vec()),
        Just(b"BDAT 5\r\n".to_vec()),
        Just(b"BDAT 3 LAST\r\n".to_vec()),
        Just(b"AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n".to_vec()),
        Just(b"AUTH LOGIN\r\n".to_vec()),
        Just(b"STARTTLS\r\n".to_vec()),
        Just(b"RSET\r\n".to_vec()),
        Just(b".\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"NOOP\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..700),
        "[ -~]{0,80}\r\n".prop_map(String::into_bytes),
    ]
}

const TRANSACTION: &str =
    "EHLO client.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n";
const BODY: &str = "Subject: split\r\n\r\nline one\r\n..a dot-stuffed line\r\nlast line\r\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_input_gets_well_formed_replies_and_an_end(chunks in proptest::collection::vec(noise(), 0..40)) {
        let r = run(chunks);
        prop_assert!(r.clean_end, "the session panicked");
        well_formed(&r.replies)?;
        prop_assert!(r.replies.starts_with("220 "), "{}", r.replies);
    }

    #[test]
    fn a_valid_transaction_split_anywhere_is_accepted_once(
        cuts in proptest::collection::btree_set(0usize..(TRANSACTION.len() + BODY.len() + 9), 0..12)
    ) {
        let input = format!("{TRANSACTION}{BODY}.\r\nQUIT\r\n").into_bytes();
        let mut chunks = Vec::new();
        let mut at = 0;
        for cut in cuts.into_iter().filter(|c| *c > 0 && *c < input.len()) {
            chunks.push(input[at..cut].to_vec());
            at = cut;
        }
        chunks.push(input[at..].to_vec());
        let r = run(chunks);
        prop_assert!(r.clean_end);
        well_formed(&r.replies)?;
        prop_assert_eq!(r.replies.matches("250 2.0.0 Ok: queued as").count(), 1, "{}", r.replies);
        prop_assert!(r.replies.ends_with("221 2.0.0 Bye\r\n"), "{}", r.replies);
        let stored = r.spool.recover().unwrap();
        prop_assert_eq!(stored.len(), 1);
        let body = r.spool.load_body(&stored[0]).unwrap();
        let text = String::from_utf8(body).unwrap();
        prop_assert!(text.starts_with("Received: "), "{}", text);
        prop_assert!(
            text.ends_with("Subject: split\r\n\r\nline one\r\n.a dot-stuffed line\r\nlast line\r\n"),
            "{}",
            text
        );
    }
}
