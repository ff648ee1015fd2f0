//! In-session recipient failures feed the suppression list (and the bounce counts) the
//! same way late bounces do: a hard one at once, soft ones after `soft_limit`.

use super::context::QueueContext;
use super::domain::DomainJob;
use crate::classify::Verdict;
use crate::envelope::{Address, Sender};
use crate::site::Site;
use crate::spool::RemoteReply;
use crate::suppression::{Failure, Reason, failure_kind};

/// Feeds one recipient's reply: counted when it is a bounce, suppressed when the list is
/// on. The file write runs on a blocking thread; the attempt does not wait for it.
pub(super) fn feed(
    ctx: &QueueContext,
    job: &DomainJob,
    rcpt: &Address,
    reply: &RemoteReply,
    verdict: Verdict,
    site: Option<&Site>,
) {
    let Some(kind) = failure_kind(verdict, reply.code, &reply.enhanced, &reply.text) else {
        return;
    };
    let sender_domain = match &job.sender {
        Sender::Address(a) => Some(a.domain().to_ascii_lowercase()),
        Sender::Null => None,
    };
    crate::metrics::metrics().bounce(
        sender_domain
            .as_deref()
            .map(|d| format!("domain:{d}"))
            .as_deref(),
        site.map(Site::as_str),
        false,
        kind.kind(),
    );
    if !ctx.config.suppression.active(&ctx.config.bounces) {
        return;
    }
    let list = ctx.suppressions.clone();
    let config = ctx.config.suppression.clone();
    let address = rcpt.to_string();
    let site = site.map(ToString::to_string);
    let text = reply.to_string();
    let queue_id = job.queue_id.to_string();
    tokio::task::spawn_blocking(move || {
        let f = Failure {
            sender_domain: sender_domain.as_deref(),
            address: &address,
            site: site.as_deref(),
            reply: &text,
            late: false,
            queue_id: Some(&queue_id),
        };
        let result = match kind {
            Reason::Soft => list.soft(&config, &f).map(|_| ()),
            _ => list.hard(&config, &f).map(|_| ()),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot write the suppression list");
        }
    });
}
