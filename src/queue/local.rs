//! Mail the relay keeps for itself: messages to a bounce domain are handed to the
//! bounce reader (`[bounces]`) instead of an MX. They were spooled like any mail before
//! their `250`, and leave the spool only once the reader has made their effects durable
//! (a block, a suppression, a forwarded DSN): a crash in between reads them again.

use std::future::Future;
use std::pin::Pin;

use super::context::QueueContext;
use super::domain::{DomainJob, DomainOutcome, RecipientResult};
use crate::classify::Verdict;
use crate::envelope::{Address, Sender};
use crate::spool::{LastRoute, QueueId, RemoteReply, SpoolError};

/// One message for local recipients.
pub struct LocalMail<'a> {
    /// Its queue id.
    pub queue_id: &'a QueueId,
    /// Its envelope sender.
    pub sender: &'a Sender,
    /// Its recipients at the local domain.
    pub recipients: Vec<Address>,
    /// The message.
    pub body: &'a [u8],
}

/// Why a local message could not be read yet; any of them leaves it queued, so the
/// queue only needs to tell them apart in its log, not to know the reader's internals.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The spool (the message's record, a DSN to store) failed.
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    /// The reader is not wired yet (the queue it forwards to is not running).
    #[error("not ready: {0}")]
    NotReady(&'static str),
    /// The reader's own store failed (its error type lives above the queue).
    #[error(transparent)]
    Reader(Box<dyn std::error::Error + Send + Sync>),
}

/// A boxed future, as a trait object's method returns it.
pub type LocalFuture<'a> = Pin<Box<dyn Future<Output = Result<(), LocalError>> + Send + 'a>>;

/// Who takes mail for local domains (the bounce reader); wired by `serve`, so the queue
/// needs nothing of the modules above it.
pub trait LocalDelivery: Send + Sync {
    /// Whether mail to `domain` is for this reader.
    fn is_local(&self, domain: &str) -> bool;
    /// Reads one message; `Err` (why) leaves it queued for the next attempt.
    fn deliver<'a>(&'a self, ctx: &'a QueueContext, mail: LocalMail<'a>) -> LocalFuture<'a>;
}

/// Hands the job to the local reader; every recipient gets its result.
pub(super) async fn deliver(
    ctx: &QueueContext,
    local: &dyn LocalDelivery,
    job: DomainJob,
) -> DomainOutcome {
    let result = local
        .deliver(
            ctx,
            LocalMail {
                queue_id: &job.queue_id,
                sender: &job.sender,
                recipients: job.recipients.iter().map(|(_, a)| a.clone()).collect(),
                body: &job.body,
            },
        )
        .await;
    let (reply, verdict) = match result {
        Ok(()) => (
            RemoteReply {
                code: 250,
                enhanced: "2.0.0".into(),
                text: "read by the bounce reader".into(),
                mx: None,
            },
            Verdict::Delivered,
        ),
        Err(why) => {
            tracing::warn!(queue_id = %job.queue_id, error = %why, "bounce not read yet; kept for the next attempt");
            (
                RemoteReply {
                    code: 0,
                    enhanced: "4.3.0".into(),
                    text: why.to_string(),
                    mx: None,
                },
                Verdict::Transient,
            )
        }
    };
    let mut outcome = DomainOutcome::empty(job.domain.clone());
    for (i, _) in &job.recipients {
        outcome.results.insert(
            *i,
            RecipientResult {
                reply: reply.clone(),
                verdict,
                earlier: None,
                explanation: None,
                route: LastRoute {
                    site: None,
                    egress: "local".into(),
                },
            },
        );
    }
    outcome
}
