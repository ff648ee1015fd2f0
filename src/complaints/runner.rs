//! The complaint reader: every interval, the report mailbox's recent messages are read,
//! each new ARF report is matched to its sender and egress IP, counted, logged, and fed
//! to the sender suspension.

use std::sync::Arc;
use std::time::Duration;

use super::{Complaint, Complaints, arf};
use crate::probes::ImapUrl;
use crate::probes::mailbox::{Mailbox, MailboxError};
use crate::probes::poll::{self, Labels, Reader};
use crate::queue::QueueContext;
use crate::senders::SenderId;

/// Reports read per folder and pass at most (the newest).
const PER_PASS: usize = 2000;

/// Starts the reader when `[complaints]` is enabled with a mailbox; `None` otherwise.
pub fn spawn(
    ctx: Arc<QueueContext>,
    complaints: Complaints,
) -> Option<tokio::task::JoinHandle<()>> {
    let cfg = &ctx.config.complaints;
    if !cfg.enabled {
        return None;
    }
    let (imap, _, _) = cfg.mailbox(&ctx.config.probes);
    let url = ImapUrl::parse(imap?).ok()?;
    tracing::info!(mailbox = %format!("{}@{}:{}", url.user, url.host, url.port), interval = %cfg.interval, "complaint reports: reading");
    let reader = ComplaintReader {
        ctx,
        complaints,
        url,
    };
    Some(tokio::spawn(poll::run(reader, LABELS)))
}

const LABELS: Labels = Labels {
    name: "complaint reports",
    cannot_open: "cannot read the password",
    while_failing: "",
};

/// The complaints' side of the polling loop: the recent messages, counted.
struct ComplaintReader {
    ctx: Arc<QueueContext>,
    complaints: Complaints,
    url: ImapUrl,
}

impl Reader for ComplaintReader {
    type Read = Vec<Vec<u8>>;

    fn open(&self) -> Result<Mailbox, MailboxError> {
        let ctx = &self.ctx;
        let cfg = &ctx.config.complaints;
        let (_, password_file, ca_file) = cfg.mailbox(&ctx.config.probes);
        Mailbox::open(
            self.url.clone(),
            password_file,
            ca_file,
            cfg.folders.clone(),
            Duration::from_secs(60),
        )
    }

    /// The messages since `[complaints] since` ago.
    async fn read(&self, mailbox: &Mailbox) -> Option<Result<Self::Read, MailboxError>> {
        let since = self
            .ctx
            .clock
            .now()
            .saturating_sub(self.ctx.config.complaints.since.get().as_secs());
        Some(mailbox.fetch_since(since, PER_PASS).await)
    }

    async fn handle(&self, messages: Self::Read) {
        count_reports(&self.ctx, &self.complaints, messages);
    }

    fn interval(&self) -> Duration {
        self.ctx.config.complaints.interval.get()
    }
}

/// Counts each new ARF report among `messages` and feeds it to the sender suspension
/// (the IMAP reader's reports, and those sent to a bounce domain).
pub fn count_reports(ctx: &QueueContext, complaints: &Complaints, messages: Vec<Vec<u8>>) {
    let ours = ctx.config.egress_ips();
    for raw in messages {
        let Some(report) = arf::parse(&raw) else {
            continue;
        };
        if complaints.seen(&report.report_id) {
            continue;
        }
        let sender = match (&report.user, &report.mail_from) {
            (Some(user), _) => Some(SenderId::User(user.clone())),
            (None, Some(from)) => from
                .rsplit_once('@')
                .map(|(_, d)| SenderId::Domain(d.to_ascii_lowercase())),
            (None, None) => None,
        };
        // The report's Source-IP when it is ours, else the first of ours the original
        // passed through.
        let ip = report.source_ip.filter(|ip| ours.contains(ip)).or_else(|| {
            report
                .received_ips
                .iter()
                .copied()
                .find(|ip| ours.contains(ip))
        });
        let complaint = Complaint {
            report_id: report.report_id.clone(),
            at: ctx.clock.now(),
            feedback_type: report.feedback_type.clone(),
            reporter: report.reporter.clone(),
            sender: sender.as_ref().map(ToString::to_string),
            ip,
            queue_id: report.queue_id.clone(),
            message_id: report.message_id.clone(),
            arrival: report.arrival.clone(),
        };
        if !complaints.add(complaint) {
            continue;
        }
        tracing::warn!(
            report = %report.report_id,
            feedback_type = %report.feedback_type,
            reporter = report.reporter.as_deref().unwrap_or("-"),
            sender = sender.as_ref().map_or_else(|| "-".to_string(), ToString::to_string),
            ip = ip.map_or_else(|| "-".to_string(), |ip| ip.to_string()),
            queue_id = report.queue_id.as_deref().unwrap_or("-"),
            message_id = report.message_id.as_deref().unwrap_or("-"),
            "complaint (feedback loop)"
        );
        if let Some(id) = &sender {
            let evidence = format!(
                "{} report {} from {} about {} (queue id {}, via {})",
                report.feedback_type,
                report.report_id,
                report.reporter.as_deref().unwrap_or("a feedback loop"),
                report.message_id.as_deref().unwrap_or("a message"),
                report.queue_id.as_deref().unwrap_or("-"),
                ip.map_or_else(|| "-".to_string(), |ip| ip.to_string())
            );
            ctx.senders.complaint(id, evidence, &ctx.config.suspension);
        }
    }
}
