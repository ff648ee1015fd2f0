//! TLS reports an `https:` rua did not take (no answer, TLS failure, not 2xx): POSTed
//! again after `[tlsrpt] retry_initial` (5 minutes), then after twice as long each time,
//! the last try `retry_for` (24 h) after the first, then given up: by then the next
//! day's report is due, and RFC 8460 §5.3 lets a sender drop a report it cannot
//! deliver. Meanwhile they wait in the spool (`tlsrpt-pending.json`, rewritten durably
//! on each change) so a restart keeps trying. Due times come from the [`Clock`], so the
//! schedule is tested by moving a manual clock.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::Clock;

/// One report waiting for its next POST.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPost {
    /// The `https:` rua.
    pub url: String,
    /// The policy domain the report is about.
    pub domain: String,
    /// The report's `report-id`, for the log.
    pub report_id: String,
    /// The gzipped JSON as POSTed (base64 in the file).
    #[serde(with = "base64_bytes")]
    pub gz: Vec<u8>,
    /// When it was first POSTed (Unix milliseconds).
    pub first_ms: u64,
    /// POSTs tried so far.
    pub attempts: u32,
    /// When the next one is due (Unix milliseconds).
    pub next_ms: u64,
    /// Why the last one failed.
    pub error: String,
}

impl PendingPost {
    /// Whether `other` is the same report to the same place (a report for the same
    /// day sent again, with what was counted since, has another first try).
    fn same(&self, other: &PendingPost) -> bool {
        self.url == other.url
            && self.report_id == other.report_id
            && self.first_ms == other.first_ms
    }
}

/// When a report first POSTed at `first_ms` and failed for the `attempts`-th time at
/// `failed_ms` is tried next: `initial` after the first failure, twice as long after
/// each further one, at most `retry_for` after the first try; `None` once that age is
/// reached (given up).
pub fn next_attempt(
    first_ms: u64,
    failed_ms: u64,
    attempts: u32,
    initial: Duration,
    retry_for: Duration,
) -> Option<u64> {
    let last = first_ms.saturating_add(retry_for.as_millis() as u64);
    if failed_ms >= last {
        return None;
    }
    let wait = (initial.as_millis() as u64)
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(40))
        .max(1);
    Some(failed_ms.saturating_add(wait).min(last))
}

/// The reports waiting, in memory and in the spool.
#[derive(Debug)]
pub struct Pending {
    posts: Mutex<Vec<PendingPost>>,
    /// `tlsrpt-pending.json` in the spool; none: memory only.
    path: Option<PathBuf>,
    clock: Clock,
    initial: Duration,
    retry_for: Duration,
    /// Wakes the retry task when a report is added (its next due time may be sooner
    /// than the one it sleeps towards).
    pub(super) added: tokio::sync::Notify,
}

/// The file in the spool.
pub const PENDING_FILE: &str = "tlsrpt-pending.json";

impl Pending {
    /// The reports left waiting in `dir` (the spool) by the last run. A file that
    /// cannot be read is logged and set aside: the reports in it are lost, the relay
    /// starts.
    pub fn load(dir: Option<&Path>, clock: Clock, initial: Duration, retry_for: Duration) -> Self {
        let path = dir.map(|d| d.join(PENDING_FILE));
        let posts = match path.as_deref().map(std::fs::read) {
            Some(Ok(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(error = %e, "{PENDING_FILE} is not readable; the TLS reports in it are not retried");
                Vec::new()
            }),
            _ => Vec::new(),
        };
        Self {
            posts: Mutex::new(posts),
            path,
            clock,
            initial,
            retry_for,
            added: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PendingPost>> {
        self.posts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A POST of `post` failed now with `error`: kept for its next try, or given up.
    /// Returns when the next try is due (Unix milliseconds), none when given up.
    pub fn failed(&self, mut post: PendingPost, error: String) -> Option<u64> {
        let now = self.clock.now_ms();
        post.attempts += 1;
        post.error = error;
        let next = next_attempt(
            post.first_ms,
            now,
            post.attempts,
            self.initial,
            self.retry_for,
        );
        {
            let mut posts = self.lock();
            posts.retain(|p| !p.same(&post));
            match next {
                Some(at) => {
                    tracing::warn!(url = post.url, domain = post.domain, report_id = post.report_id, attempts = post.attempts, error = post.error, next = %crate::clock::rfc3339(at / 1000), "TLS report POST failed; tried again later");
                    post.next_ms = at;
                    posts.push(post);
                }
                None => {
                    tracing::warn!(
                        url = post.url,
                        domain = post.domain,
                        report_id = post.report_id,
                        attempts = post.attempts,
                        error = post.error,
                        "TLS report POST failed; given up"
                    );
                }
            }
        }
        self.save();
        self.added.notify_one();
        next
    }

    /// The reports due now, for the caller to POST; each stays here (and in the file,
    /// so a crash meanwhile retries it) until [`Pending::posted`] or
    /// [`Pending::failed`] says how it went.
    pub fn due(&self) -> Vec<PendingPost> {
        let now = self.clock.now_ms();
        self.lock()
            .iter()
            .filter(|p| p.next_ms <= now)
            .cloned()
            .collect()
    }

    /// `post` went through: off the list and the file.
    pub fn posted(&self, post: &PendingPost) {
        self.lock().retain(|p| !p.same(post));
        self.save();
    }

    /// When the next report is due (Unix milliseconds).
    pub fn next_due(&self) -> Option<u64> {
        self.lock().iter().map(|p| p.next_ms).min()
    }

    /// The reports waiting now.
    pub fn list(&self) -> Vec<PendingPost> {
        self.lock().clone()
    }

    fn save(&self) {
        let Some(path) = &self.path else { return };
        let bytes = serde_json::to_vec_pretty(&*self.lock()).unwrap_or_default();
        if let Err(e) = crate::spool::replace_durably(path, &bytes) {
            tracing::error!(path = %path.display(), error = %e, "pending TLS reports could not be saved (they hold in memory)");
        }
    }
}

/// `Vec<u8>` as a base64 string in JSON.
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn retries_come_after_5_10_20_minutes_and_end_at_24_hours() {
        let (initial, retry_for) = (Duration::from_secs(300), Duration::from_secs(86_400));
        let mut at = 0;
        let mut tries = vec![at];
        let mut attempts = 1;
        while let Some(next) = next_attempt(0, at, attempts, initial, retry_for) {
            tries.push(next);
            at = next;
            attempts += 1;
        }
        let minutes: Vec<u64> = tries.iter().map(|t| t / MIN).collect();
        assert_eq!(
            minutes,
            vec![0, 5, 15, 35, 75, 155, 315, 635, 1275, 1440],
            "each wait twice the last, the last try 24 h after the first"
        );
    }

    fn report(first_ms: u64) -> PendingPost {
        PendingPost {
            url: "https://tlsrpt.dest.test/r".into(),
            domain: "dest.test".into(),
            report_id: "r1".into(),
            gz: vec![0x1f, 0x8b, 0, 255],
            first_ms,
            attempts: 0,
            next_ms: first_ms,
            error: String::new(),
        }
    }

    /// A manual clock moves the due times; the spool file carries them over a restart.
    #[test]
    fn a_failed_post_comes_due_by_the_clock_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_790_000_000_000;
        let clock = Clock::manual(t0);
        let (initial, retry_for) = (Duration::from_secs(300), Duration::from_secs(86_400));
        let pending = Pending::load(Some(dir.path()), clock.clone(), initial, retry_for);
        assert_eq!(
            pending.failed(report(t0), "answered 503".into()),
            Some(t0 + 5 * MIN)
        );
        clock.advance(Duration::from_secs(4 * 60));
        assert!(pending.due().is_empty(), "not due before 5 minutes");
        clock.advance(Duration::from_secs(60));
        let due = pending.due();
        assert_eq!(due.len(), 1);
        // Fails again at 5 min: next at 5 + 10.
        assert_eq!(
            pending.failed(due[0].clone(), "timed out".into()),
            Some(t0 + 15 * MIN)
        );
        // A restart reads it back as it was.
        let again = Pending::load(Some(dir.path()), clock.clone(), initial, retry_for);
        let kept = again.list();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].attempts, 2);
        assert_eq!(kept[0].next_ms, t0 + 15 * MIN);
        assert_eq!(kept[0].gz, vec![0x1f, 0x8b, 0, 255]);
        assert_eq!(kept[0].error, "timed out");
        // Failing at every due time until a day has passed: given up, the file empty.
        let mut tries = 2;
        while let Some(next) = again.next_due() {
            clock.advance(Duration::from_millis(next - clock.now_ms()));
            let due = again.due();
            assert_eq!(due.len(), 1);
            again.failed(due[0].clone(), "answered 503".into());
            tries += 1;
        }
        assert_eq!(tries, 10, "first POST and nine retries");
        assert_eq!(clock.now_ms(), t0 + 24 * 60 * MIN);
        let file = std::fs::read_to_string(dir.path().join(PENDING_FILE)).unwrap();
        assert_eq!(file.trim(), "[]");
        // Going through takes it off the file too.
        again.failed(report(clock.now_ms()), "answered 503".into());
        clock.advance(Duration::from_secs(300));
        let due = again.due();
        assert_eq!(due.len(), 1);
        again.posted(&due[0]);
        let file = std::fs::read_to_string(dir.path().join(PENDING_FILE)).unwrap();
        assert_eq!(file.trim(), "[]");
    }
}
