//! Time, in the two forms the relay keeps: Unix seconds in stored records (blocks,
//! listings, queue records, DSN dates) and Unix milliseconds for due times.
//!
//! A [`Clock`] is handed to the stages that keep timestamps (reputation's blocks and
//! canaries, site health, quotas, alerts' pacing, acceptance stamps), so their tests
//! move time by hand instead of sleeping. Nothing outside this file reads the system's
//! wall clock. `Instant` (monotonic) stays where a step of the wall clock must not
//! count: latency in logs and metrics, deadlines of I/O in progress (the committer's
//! linger, session timeouts on tokio's clock, Redis retry), connection-reuse idle
//! limits, and the expiry of DNS answers by their TTL (resolver, SPF, TLS policy
//! caches): an NTP step must neither expire nor extend a cached answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, from the system clock: the one place the relay
/// reads it (everything else asks a [`Clock`]).
fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Unix seconds as RFC 3339 (`2026-11-25T16:22:49Z`): how stored times are shown to
/// operators.
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// The system clock, or (in tests) a clock that moves only when told, or with tokio's.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    source: Source,
}

#[derive(Debug, Clone, Default)]
enum Source {
    #[default]
    System,
    /// Unix milliseconds, moved by [`Clock::advance`].
    Manual(Arc<AtomicU64>),
    /// Unix milliseconds at `start`, then tokio's clock: under a paused runtime, timers
    /// and this clock move together, so a scheduler's hour passes in an instant.
    Tokio {
        base_ms: u64,
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock standing at `unix_ms` until [`Clock::advance`] moves it.
    pub fn manual(unix_ms: u64) -> Self {
        Self {
            source: Source::Manual(Arc::new(AtomicU64::new(unix_ms))),
        }
    }

    /// The system time now, moving on with tokio's clock (paused in tests).
    pub fn following_tokio() -> Self {
        Self {
            source: Source::Tokio {
                base_ms: unix_now_ms(),
                start: tokio::time::Instant::now(),
            },
        }
    }

    /// Unix seconds now.
    pub fn now(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// Unix milliseconds now.
    pub fn now_ms(&self) -> u64 {
        match &self.source {
            Source::System => unix_now_ms(),
            Source::Manual(t) => t.load(Ordering::Relaxed),
            Source::Tokio { base_ms, start } => base_ms + start.elapsed().as_millis() as u64,
        }
    }

    /// Unix microseconds now: queue ids sort by acceptance within a millisecond.
    pub fn now_us(&self) -> u64 {
        match &self.source {
            Source::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros() as u64,
            Source::Manual(t) => t.load(Ordering::Relaxed) * 1000,
            Source::Tokio { base_ms, start } => base_ms * 1000 + start.elapsed().as_micros() as u64,
        }
    }

    /// Moves a manual clock forward (the others move by themselves; this does nothing).
    pub fn advance(&self, by: Duration) {
        if let Source::Manual(t) = &self.source {
            t.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = Clock::manual(1_000_000);
        assert_eq!((c.now(), c.now_ms()), (1000, 1_000_000));
        c.advance(Duration::from_millis(2500));
        assert_eq!((c.now(), c.now_ms()), (1002, 1_002_500));
        let system = Clock::system();
        assert!(system.now() >= 1_700_000_000);
    }
}
