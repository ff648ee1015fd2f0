//! What an operator does to queued messages (the admin API calls these): hold, release,
//! delete quietly or with a DSN. The scheduler is told first, so a message is never
//! changed under an attempt in flight.

use crate::clock::Clock;
use crate::envelope::Sender;
use crate::spool::{QueueId, QueuedMessage, RecipientStatus, RemoteReply, Spool, SpoolError};

use super::dsn;
use super::handle::{Control, QueueHandle};

/// Why an operator's command did nothing.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// No such message in the queue.
    #[error("no message {0} in the queue")]
    NotFound(String),
    /// An attempt is under way: try again in a moment.
    #[error("an attempt of {0} is under way; try again when it ends")]
    Busy(String),
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

async fn load(spool: &Spool, id: &QueueId) -> Result<QueuedMessage, OperatorError> {
    let (spool, lookup) = (spool.clone(), id.clone());
    tokio::task::spawn_blocking(move || spool.load(&lookup))
        .await
        .map_err(SpoolError::ReadTask)??
        .ok_or_else(|| OperatorError::NotFound(id.to_string()))
}

/// Unschedules `id`; refused while an attempt is under way.
async fn forget(queue: &QueueHandle, id: &QueueId) -> Result<(), OperatorError> {
    let outcome = queue.control(Control::Forget(id.clone())).await;
    if outcome.busy.is_empty() {
        Ok(())
    } else {
        Err(OperatorError::Busy(id.to_string()))
    }
}

/// Keeps the message, never attempted, until [`release`].
///
/// # Errors
/// Not in the queue, an attempt under way, or the spool failed.
pub async fn hold(spool: &Spool, queue: &QueueHandle, id: &QueueId) -> Result<(), OperatorError> {
    hold_for(spool, queue, id, None).await
}

/// [`hold`], with the reason when it is not the operator's hand.
///
/// # Errors
/// Not in the queue, an attempt under way, or the spool failed.
pub async fn hold_for(
    spool: &Spool,
    queue: &QueueHandle,
    id: &QueueId,
    reason: Option<String>,
) -> Result<(), OperatorError> {
    let mut msg = load(spool, id).await?;
    forget(queue, id).await?;
    msg.held = true;
    tracing::info!(queue_id = %id, reason = reason.as_deref().unwrap_or("by the operator"), "held");
    msg.held_reason = reason;
    spool.update(&msg).await?;
    Ok(())
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
/// gets one DSN quoting the operator's reason (a null sender gets none, as always).
///
/// # Errors
/// Not in the queue, an attempt under way, or the spool failed.
pub async fn delete(
    spool: &Spool,
    queue: &QueueHandle,
    id: &QueueId,
    bounce: Option<&str>,
    hostname: &str,
    clock: &Clock,
) -> Result<(), OperatorError> {
    let mut msg = load(spool, id).await?;
    forget(queue, id).await?;
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
                    .await
                    .map_err(SpoolError::ReadTask)?
                    .unwrap_or_default()
            };
            let dsn = dsn::build(hostname, &msg, to, &failed, &body);
            spool.store_message(&dsn.message, dsn.body).await?;
            queue.enqueued(&dsn.message);
            tracing::info!(queue_id = %id, dsn_id = %dsn.message.id, to = %to, "DSN queued for a deleted message");
        }
    }
    spool.remove(&msg).await?;
    tracing::warn!(queue_id = %id, bounced = bounce.is_some(), reason = bounce.unwrap_or("-"), "deleted by the operator");
    Ok(())
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
    let records = {
        let spool = spool.clone();
        tokio::task::spawn_blocking(move || spool.recover())
            .await
            .map_err(SpoolError::ReadTask)??
    };
    let mut out = SenderRelease {
        sender: id.to_string(),
        ..SenderRelease::default()
    };
    for m in records {
        if !m.held || m.held_reason.as_deref() != Some(reason.as_str()) {
            continue;
        }
        if bounce {
            let why = format!(
                "held while {id} was suspended for sending what looked like abuse; returned by the postmaster"
            );
            delete(spool, queue, &m.id, Some(&why), hostname, clock).await?;
            out.bounced.push(m.id.to_string());
        } else {
            release(spool, queue, &m.id, clock).await?;
            out.released.push(m.id.to_string());
        }
    }
    tracing::warn!(sender = %id, released = out.released.len(), bounced = out.bounced.len(), "suspended sender released");
    Ok(out)
}
