//! Alerts the operator asked to get by mail (`[alerts] mail`): the alerts module sends
//! them as events, and each becomes a message in the relay's own queue, from
//! `postmaster@<host>` with a null envelope sender (like a DSN, it never bounces).

use crate::alerts::Alert;

/// Queues every alert `events` brings as a mail to `to`, for as long as alerts come.
pub fn spawn_alert_mail(
    to: crate::envelope::Address,
    mut events: tokio::sync::mpsc::UnboundedReceiver<Alert>,
    spool: crate::spool::Spool,
    queue: super::QueueHandle,
    clock: crate::clock::Clock,
) {
    tokio::spawn(async move {
        while let Some(alert) = events.recv().await {
            if let Err(e) = queue_alert(&to, &spool, &queue, &alert, clock.now_ms()).await {
                tracing::warn!(error = %e, event = alert.event, "alert mail could not be queued");
            }
        }
    });
}

/// Queues the alert as a mail to `to`, from `postmaster@<host>` with a null envelope
/// sender, like a DSN.
async fn queue_alert(
    to: &crate::envelope::Address,
    spool: &crate::spool::Spool,
    queue: &super::QueueHandle,
    alert: &Alert,
    now: u64,
) -> Result<(), crate::spool::SpoolError> {
    use crate::spool::{QueueId, QueuedMessage, RecipientState};
    let id = QueueId::generate(now * 1000);
    let subject: String = format!("[sidestep {}] {}", alert.host, alert.event);
    let date = time::OffsetDateTime::from_unix_timestamp((now / 1000) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let body = format!(
        "From: sidestep <postmaster@{host}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: <{id}@{host}>\r\nAuto-Submitted: auto-generated\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n\r\nevent: {event}\r\nip: {ip}\r\nsubject: {subj}\r\nat: {at}\r\n{report}",
        host = alert.host,
        text = alert.text.replace(['\r', '\n'], " "),
        report = alert.report.as_deref().map_or_else(String::new, |r| format!(
            "\r\nDelisting report:\r\n{}\r\n",
            r.lines().collect::<Vec<_>>().join("\r\n")
        )),
        event = alert.event,
        ip = alert.ip.as_deref().unwrap_or("-"),
        subj = alert.subject.as_deref().unwrap_or("-"),
        at = alert.at,
    )
    .into_bytes();
    let msg = QueuedMessage {
        id,
        sender: crate::envelope::Sender::Null,
        recipients: vec![RecipientState::pending(to.clone())],
        flags: crate::envelope::BodyFlags {
            eight_bit: !body.is_ascii(),
            smtputf8: false,
        },
        received_at: now / 1000,
        attempts: 0,
        next_attempt_ms: now,
        size: body.len() as u64,
        client: "local (alert)".into(),
        body: None,
        held: false,
        held_reason: None,
        history: Vec::new(),
        user: None,
    };
    spool.store_message(&msg, body).await?;
    queue.enqueued(&msg);
    Ok(())
}
