//! Alerts the operator asked to get by mail (`[alerts] mail`): the alerts module sends
//! them as events, and each becomes a message in the relay's own queue, from
//! `postmaster@<host>` with a null envelope sender (like a DSN, it never bounces).

use super::letter::{Letter, enqueue, record};
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
    use crate::spool::{QueueId, RecipientState};
    let id = QueueId::generate(now * 1000);
    let host = &alert.host;
    let headers = Letter {
        from: &format!("sidestep <postmaster@{host}>"),
        to: &format!("<{to}>"),
        subject: &format!("[sidestep {host}] {}", alert.event),
        message_id: &format!("{id}@{host}"),
        auto_submitted: Some("auto-generated"),
        extra: &[],
        content_type: "text/plain; charset=utf-8",
    }
    .headers(now / 1000);
    let body = format!(
        "{headers}{text}\r\n\r\nevent: {event}\r\nip: {ip}\r\nsubject: {subj}\r\nat: {at}\r\n{report}",
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
    let msg = record(
        id,
        crate::envelope::Sender::Null,
        vec![RecipientState::pending(to.clone())],
        &body,
        now,
        "local (alert)",
    );
    enqueue(spool, queue, &msg, body).await
}

/// Queues every TLS report `events` brings (RFC 8460 §3: from a null envelope sender,
/// like a DSN, so a report never bounces), for as long as reports come.
pub fn spawn_tls_reports(
    mut events: tokio::sync::mpsc::UnboundedReceiver<crate::tls_policy::report::ReportMail>,
    spool: crate::spool::Spool,
    queue: super::QueueHandle,
    clock: crate::clock::Clock,
) {
    tokio::spawn(async move {
        while let Some(report) = events.recv().await {
            if let Err(e) = queue_report(&spool, &queue, report, clock.now_ms()).await {
                tracing::warn!(error = %e, "TLS report mail could not be queued");
            }
        }
    });
}

async fn queue_report(
    spool: &crate::spool::Spool,
    queue: &super::QueueHandle,
    report: crate::tls_policy::report::ReportMail,
    now: u64,
) -> Result<(), crate::spool::SpoolError> {
    use crate::spool::{QueueId, RecipientState};
    let recipients = report
        .to
        .iter()
        .filter_map(|t| crate::envelope::Address::parse(t, false).ok())
        .map(RecipientState::pending)
        .collect::<Vec<_>>();
    if recipients.is_empty() {
        return Ok(());
    }
    let body = report.body;
    let msg = record(
        QueueId::generate(now * 1000),
        crate::envelope::Sender::Null,
        recipients,
        &body,
        now,
        "local (TLS report)",
    );
    enqueue(spool, queue, &msg, body).await
}
