//! What the index stores about each message.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use super::SpoolError;
use crate::envelope::{Address, BodyFlags, Sender};

/// Queue id: time-ordered and unique within this host. It names the body file, appears
/// in the `250` reply and in every log line, so an operator can follow one message.
///
/// Kept inline (no heap allocation) when it fits, which every generated id does: the
/// scheduler holds several copies of each queued message's id, and with a million queued
/// a `String` each was a tenth of the process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueId(Repr);

/// The id's text: inline up to [`INLINE`] bytes, else on the heap. Always the inline
/// form when it fits, so equal ids are equal representations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

/// Bytes of an id kept inline.
const INLINE: usize = 23;

impl QueueId {
    /// A fresh id: `micros` (the time of acceptance, Unix µs, from the caller's
    /// `Clock`), a per-process counter and a random part (so two processes sharing a
    /// spool by mistake still do not collide).
    pub fn generate(micros: u64) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xfff;
        let r: u16 = rand::random::<u16>() & 0xfff;
        Self::from(format!("{micros:014X}{n:03X}{r:03X}").as_str())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)])
                .expect("an inline id is a whole str's bytes"),
            Repr::Heap(s) => s,
        }
    }

    /// When the message was accepted (Unix seconds), read from the id's time prefix.
    pub fn accepted_at(&self) -> Option<u64> {
        let micros = u64::from_str_radix(self.as_str().get(..14)?, 16).ok()?;
        Some(micros / 1_000_000)
    }
}

/// Ordered as the text (the spool's keys are, and generated ids sort by time).
impl Ord for QueueId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for QueueId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl From<&str> for QueueId {
    fn from(s: &str) -> Self {
        if s.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Self(Repr::Inline {
                len: s.len() as u8,
                bytes,
            })
        } else {
            Self(Repr::Heap(s.into()))
        }
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for QueueId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for QueueId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Self::from(s.as_ref()))
    }
}

#[cfg(test)]
mod queue_id_tests {
    use super::QueueId;

    #[test]
    fn ids_are_their_text_whatever_their_length() {
        let id = QueueId::generate(crate::clock::Clock::system().now_us());
        assert_eq!(id.as_str().len(), 20);
        assert_eq!(QueueId::from(id.as_str()), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<QueueId>(&json).unwrap(), id);
        let long = "an-id-typed-by-an-operator-that-is-long";
        assert_eq!(QueueId::from(long).as_str(), long);
        assert_eq!(QueueId::from("é").as_str(), "é");
        assert!(QueueId::from("AA") < QueueId::from("B"), "ordered as text");
        assert!(std::mem::size_of::<QueueId>() <= 32);
    }
}

/// A reply from a remote server (or our description of why there was none), kept whole
/// because DSNs and delisting forms quote it exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteReply {
    /// SMTP reply code; 0 when no server answered (connection or DNS failure).
    pub code: u16,
    /// Enhanced status code (RFC 3463), e.g. `5.7.1`.
    pub enhanced: String,
    /// Reply text as received, lines joined with a space.
    pub text: String,
    /// The MX host that answered, if any.
    pub mx: Option<String>,
}

impl fmt::Display for RemoteReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.code == 0 {
            write!(f, "{}", self.text)
        } else {
            write!(f, "{} {} {}", self.code, self.enhanced, self.text)
        }
    }
}

/// Where one recipient stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientStatus {
    /// Not delivered yet; `last` is the latest temporary failure, quoted in the expiry DSN.
    Pending {
        /// The latest temporary failure.
        last: Option<RemoteReply>,
    },
    /// Accepted by the destination.
    Delivered {
        /// Unix seconds.
        at: u64,
        /// The destination's reply.
        reply: RemoteReply,
    },
    /// Permanently failed, or still failing when the queue lifetime ran out (`expired`);
    /// a DSN goes (or went) to the sender.
    Failed {
        /// Unix seconds.
        at: u64,
        /// The refusal, or the last temporary failure.
        reply: RemoteReply,
        #[serde(default)]
        /// The queue lifetime ran out while it still failed temporarily.
        expired: bool,
        /// The refusal from the first egress IP, when another IP was asked before
        /// bouncing and refused too (the second opinion): the DSN quotes both.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        earlier: Option<RemoteReply>,
        /// What the sender must fix, when the refusal says more than its text (an
        /// authentication failure: which check failed for which address); the DSN
        /// quotes it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        explanation: Option<String>,
    },
}

impl RecipientStatus {
    /// Whether the recipient is done with (delivered or failed).
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Pending { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// One recipient of a queued message.
pub struct RecipientState {
    /// The address.
    pub address: Address,
    /// Where it stands.
    pub status: RecipientStatus,
    /// Set once this failure has been reported in a DSN, so a restart does not send a
    /// second one.
    #[serde(default)]
    pub notified: bool,
    /// Where the latest attempt went, so the queue can be counted, listed and flushed by
    /// destination site and by egress IP without a DNS lookup: unknown until tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<LastRoute>,
}

impl RecipientState {
    /// A recipient not tried yet.
    pub fn pending(address: Address) -> Self {
        Self {
            address,
            status: RecipientStatus::Pending { last: None },
            notified: false,
            route: None,
        }
    }
}

/// Where a recipient's latest attempt went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRoute {
    /// The destination site (its MX set), when the MX lookup succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The egress IP, `smarthost:NAME`, or `-` when nothing could be sent.
    pub egress: String,
}

/// One recipient's delivery attempt, kept with the message so `sidestep queue show` can
/// tell the whole story of a deferred message (which IP, which MX, what each said),
/// not only the last reply. Bounded by [`HISTORY_MAX`], the oldest dropped first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Unix seconds.
    pub at: u64,
    /// The recipient.
    pub rcpt: String,
    /// The egress IP, `smarthost:NAME`, or `-`.
    pub egress: String,
    /// The destination site, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The reply, exact (or why there was none).
    pub reply: String,
    /// The classifier's verdict.
    pub verdict: crate::classify::Verdict,
    /// `sent`, `deferred` or `bounced`: what became of the recipient.
    pub status: String,
}

impl AttemptRecord {
    /// Where this attempt went.
    pub fn route(&self) -> LastRoute {
        LastRoute {
            site: self.site.clone(),
            egress: self.egress.clone(),
        }
    }
}

/// How many attempts a message keeps in its history: enough for a day of retries of a
/// handful of recipients, small enough that a record stays a few KiB.
pub const HISTORY_MAX: usize = 40;

/// One message in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// The queue id.
    pub id: QueueId,
    /// The envelope sender.
    pub sender: Sender,
    /// Every recipient with its state.
    pub recipients: Vec<RecipientState>,
    /// 8BITMIME and SMTPUTF8, as the client declared them.
    pub flags: BodyFlags,
    /// Unix seconds when the `250` was sent: the queue lifetime counts from here.
    pub received_at: u64,
    /// Delivery attempts made so far; drives the backoff.
    pub attempts: u32,
    /// Unix milliseconds of the next attempt.
    pub next_attempt_ms: u64,
    /// Body size in bytes, for `SIZE=` on the way out.
    pub size: u64,
    /// The client that handed it to us, for the operator.
    pub client: String,
    /// Where the body is: set by the spool when it stores the message.
    #[serde(default)]
    pub body: Option<BodyRef>,
    /// Held by the operator: kept, never attempted, until released.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// Why it is held, when not by the operator's hand (its sender is suspended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_reason: Option<String>,
    /// The latest attempts, oldest first (at most [`HISTORY_MAX`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<AttemptRecord>,
    /// The user that handed it over logged in (AUTH): quotas and suspensions are theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A body's place in the spool: messages accepted together share one file (one fsync
/// for the whole batch), each at its own offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyRef {
    /// File name under msg/.
    pub file: String,
    pub offset: u64,
    pub len: u64,
}

impl QueuedMessage {
    /// The recipients not yet final.
    pub fn pending(&self) -> impl Iterator<Item = &RecipientState> {
        self.recipients.iter().filter(|r| !r.status.is_final())
    }

    /// Whether every recipient is final.
    pub fn is_done(&self) -> bool {
        self.recipients.iter().all(|r| r.status.is_final())
    }

    /// Adds attempts to the history, dropping the oldest beyond [`HISTORY_MAX`].
    pub fn remember(&mut self, attempts: impl IntoIterator<Item = AttemptRecord>) {
        self.history.extend(attempts);
        let excess = self.history.len().saturating_sub(HISTORY_MAX);
        self.history.drain(..excess);
    }
}

pub(super) fn encode(msg: &QueuedMessage) -> Vec<u8> {
    serde_json::to_vec(msg).expect("queue records always serialize")
}

pub(super) fn decode(id: &str, bytes: &[u8]) -> Result<QueuedMessage, SpoolError> {
    serde_json::from_slice(bytes).map_err(|e| SpoolError::Corrupt {
        id: id.to_string(),
        message: e.to_string(),
    })
}
