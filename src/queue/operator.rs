//! What an operator does to queued messages (the admin API calls these): hold, release,
//! delete quietly or with a DSN. The scheduler is told first, so a message is never
//! changed under an attempt in flight: a hold or delete of a message whose attempt is
//! under way is marked in the scheduler and carried out when the attempt ends (the
//! message is not scheduled again), as Postfix's `postsuper -d` deletes active mail.

use crate::clock::Clock;
use crate::envelope::Sender;
use crate::spool::{
    Departure, QueueId, QueuedMessage, RecipientStatus, RemoteReply, Spool, SpoolError,
};

use super::dsn;
use super::handle::{Control, QueueHandle};

/// Why an operator's command did nothing.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// No such message in the queue.
    #[error("no message {0} in the queue")]
    NotFound(String),
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// A blocking spool task did not finish.
    #[error(transparent)]
    Queue(#[from] super::QueueError),
}

impl From<tokio::task::JoinError> for OperatorError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Queue(e.into())
    }
}

async fn load(spool: &Spool, id: &QueueId) -> Result<QueuedMessage, OperatorError> {
    let (spool, lookup) = (spool.clone(), id.clone());
    tokio::task::spawn_blocking(move || spool.load(&lookup))
        .await??
        .ok_or_else(|| OperatorError::NotFound(id.to_string()))
}

/// When an operator's hold or delete takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Acted {
    /// Done now.
    Now,
    /// An attempt is under way: done when it ends (the message is not attempted again).
    WhenAttemptEnds,
}

/// What the scheduler does with a message once its attempt under way ends, instead of
/// scheduling it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterAttempt {
    /// [`hold_for`] with this reason.
    Hold(Option<String>),
    /// [`delete`], bouncing with this reason when there is one.
    Delete(Option<String>),
}

/// Unschedules `id`. While an attempt is under way, the scheduler keeps `then` and
/// carries it out when the attempt ends.
async fn forget(queue: &QueueHandle, id: &QueueId, then: AfterAttempt) -> Acted {
    let outcome = queue.control(Control::Forget(id.clone(), then)).await;
    if outcome.busy.is_empty() {
        Acted::Now
    } else {
        Acted::WhenAttemptEnds
    }
}

/// Keeps the message, never attempted, until [`release`]; with an attempt under way,
/// from when it ends.
///
/// # Errors
/// Not in the queue, or the spool failed.
pub async fn hold(
    spool: &Spool,
    queue: &QueueHandle,
    id: &QueueId,
) -> Result<Acted, OperatorError> {
    hold_for(spool, queue, id, None).await
}

/// [`hold`], with the reason when it is not the operator's hand.
///
/// # Errors
/// Not in the queue, or the spool failed.
pub async fn hold_for(
    spool: &Spool,
    queue: &QueueHandle,
    id: &QueueId,
    reason: Option<String>,
) -> Result<Acted, OperatorError> {
    load(spool, id).await?;
    if forget(queue, id, AfterAttempt::Hold(reason.clone())).await == Acted::WhenAttemptEnds {
        tracing::info!(queue_id = %id, "to be held when its attempt under way ends");
        return Ok(Acted::WhenAttemptEnds);
    }
    // Read after the scheduler let go of it: the record an attempt that just ended wrote.
    let mut msg = load(spool, id).await?;
    msg.held = true;
    tracing::info!(queue_id = %id, reason = reason.as_deref().unwrap_or("by the operator"), "held");
    msg.held_reason = reason;
    spool.update(&msg).await?;
    Ok(Acted::Now)
}

/// Schedules a held (or any) message for an attempt now.
///
/// # Errors
/// Not in the queue, or the spool failed.
pub async fn release(
    spool: &Spool,
    queue: &QueueHandle,
    id: &QueueId,
    clock: &Clock,
) -> Result<(), OperatorError> {
    let mut msg = load(spool, id).await?;
    if msg.held {
        msg.held = false;
        msg.held_reason = None;
        msg.next_attempt_ms = clock.now_ms();
        spool.update(&msg).await?;
    }
    queue.control(Control::Schedule(id.clone())).await;
    tracing::info!(queue_id = %id, "released by the operator");
    Ok(())
}

/// Removes the message. With `bounce`, its pending recipients fail first and the sender
/// gets one DSN quoting the operator's reason (a null sender gets none, as always). With
/// an attempt under way, when it ends (what it delivered stays delivered).
///
/// # Errors
/// Not in the queue, or the spool failed.
pub async fn delete(
    spool: &Spool,
    queue: &QueueHandle,
    id: &QueueId,
    bounce: Option<&str>,
    hostname: &str,
    clock: &Clock,
) -> Result<Acted, OperatorError> {
    load(spool, id).await?;
    let then = AfterAttempt::Delete(bounce.map(str::to_string));
    if forget(queue, id, then).await == Acted::WhenAttemptEnds {
        tracing::info!(queue_id = %id, bounced = bounce.is_some(), "to be deleted when its attempt under way ends");
        return Ok(Acted::WhenAttemptEnds);
    }
    let mut msg = load(spool, id).await?;
    if let (Some(reason), Sender::Address(to)) = (bounce, &msg.sender) {
        let reply = RemoteReply {
            code: 0,
            enhanced: "5.0.0".into(),
            text: format!("deleted by the postmaster of {hostname}: {reason}"),
            mx: None,
        };
        for r in &mut msg.recipients {
            if !r.status.is_final() {
                r.status = RecipientStatus::Failed {
                    at: clock.now(),
                    reply: reply.clone(),
                    expired: false,
                    earlier: None,
                    explanation: None,
                };
            }
        }
        let failed: Vec<_> = msg
            .recipients
            .iter()
            .filter(
                |r| matches!(&r.status, RecipientStatus::Failed { reply: x, .. } if *x == reply),
            )
            .collect();
        if !failed.is_empty() {
            let body = {
                let (spool, m) = (spool.clone(), msg.clone());
                tokio::task::spawn_blocking(move || spool.load_body(&m))
                    .await?
                    .unwrap_or_default()
            };
            let dsn = dsn::build(clock.now_ms(), hostname, &msg, to, &failed, &body);
            spool.store_message(&dsn.message, dsn.body).await?;
            queue.enqueued(&dsn.message);
            tracing::info!(queue_id = %id, dsn_id = %dsn.message.id, to = %to, "DSN queued for a deleted message");
        }
    }
    let departure = Departure::Deleted {
        bounced: bounce.is_some(),
    };
    spool.remove(&msg, departure, clock.now()).await?;
    tracing::warn!(queue_id = %id, bounced = bounce.is_some(), reason = bounce.unwrap_or("-"), "deleted by the operator");
    Ok(Acted::Now)
}

/// Carries out a hold or delete the operator asked for while `id`'s attempt was under
/// way (the scheduler calls this when it ends). A message the attempt finished is gone
/// already: nothing to do.
pub(super) async fn after_attempt(
    ctx: &super::context::QueueContext,
    queue: &QueueHandle,
    id: &QueueId,
    then: AfterAttempt,
) {
    let done = match &then {
        AfterAttempt::Hold(reason) => hold_for(&ctx.spool, queue, id, reason.clone()).await,
        AfterAttempt::Delete(bounce) => {
            let hostname = &ctx.config.server.hostname;
            delete(
                &ctx.spool,
                queue,
                id,
                bounce.as_deref(),
                hostname,
                &ctx.clock,
            )
            .await
        }
    };
    match done {
        Ok(_) | Err(OperatorError::NotFound(_)) => {}
        Err(e) => {
            tracing::error!(queue_id = %id, error = %e, ?then, "the operator's command failed after the attempt")
        }
    }
}

/// What releasing a suspended sender did with its held mail.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SenderRelease {
    /// The sender released.
    pub sender: String,
    /// Held messages scheduled for delivery now.
    pub released: Vec<String>,
    /// Held messages returned to their senders with a DSN (`--bounce`).
    pub bounced: Vec<String>,
}

/// Ends the suspension of `id` and lets its held mail go, or bounces it (a DSN to each
/// message's sender quoting why).
///
/// # Errors
/// The spool failed while reading the queue.
pub async fn release_sender(
    senders: &crate::senders::Senders,
    spool: &Spool,
    queue: &QueueHandle,
    id: &crate::senders::SenderId,
    bounce: bool,
    hostname: &str,
    clock: &Clock,
) -> Result<SenderRelease, OperatorError> {
    senders.release(id);
    let reason = format!("sender {id} suspended");
    // The held ids only: a deep queue is read one record at a time, never all at once.
    let held = {
        let (spool, reason) = (spool.clone(), reason.clone());
        tokio::task::spawn_blocking(move || {
            let mut ids = Vec::new();
            spool
                .visit(|m| {
                    if m.held && m.held_reason.as_deref() == Some(reason.as_str()) {
                        ids.push(m.id);
                    }
                    true
                })
                .map(|()| ids)
        })
        .await??
    };
    let mut out = SenderRelease {
        sender: id.to_string(),
        ..SenderRelease::default()
    };
    for m_id in held {
        if bounce {
            let why = format!(
                "held while {id} was suspended for sending what looked like abuse; returned by the postmaster"
            );
            let _ = delete(spool, queue, &m_id, Some(&why), hostname, clock).await?;
            out.bounced.push(m_id.to_string());
        } else {
            release(spool, queue, &m_id, clock).await?;
            out.released.push(m_id.to_string());
        }
    }
    tracing::warn!(sender = %id, released = out.released.len(), bounced = out.bounced.len(), "suspended sender released");
    Ok(out)
}
