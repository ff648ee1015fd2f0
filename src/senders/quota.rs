//! Per-hour quotas as token buckets: a sender may hand in up to its hourly limit at
//! once, and earns it back evenly over the hour. Pure: time is passed in.

use std::collections::HashMap;
use std::time::Instant;

/// One sender's allowance of one kind (messages or recipients).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets by key; a bucket that has filled up again is the same as none, so the table
/// only holds senders active within the last hour.
#[derive(Debug, Default)]
pub struct Buckets {
    buckets: HashMap<String, Bucket>,
}

/// Keys kept before full buckets are swept out.
const SWEEP_AT: usize = 100_000;

impl Buckets {
    /// Tokens `key` has now under a limit of `per_hour`.
    fn level(&self, key: &str, per_hour: u32, now: Instant) -> f64 {
        let cap = f64::from(per_hour);
        self.buckets.get(key).map_or(cap, |b| {
            let earned = now.saturating_duration_since(b.at).as_secs_f64() * cap / 3600.0;
            (b.tokens + earned).min(cap)
        })
    }

    /// Whether `n` more fit under `per_hour` now (`0`: no limit).
    pub fn allows(&self, key: &str, per_hour: u32, n: u32, now: Instant) -> bool {
        per_hour == 0 || self.level(key, per_hour, now) >= f64::from(n)
    }

    /// Takes `n` (never below zero: a sender admitted just before the limit does not go
    /// into debt).
    pub fn take(&mut self, key: &str, per_hour: u32, n: u32, now: Instant) {
        if per_hour == 0 {
            return;
        }
        let tokens = (self.level(key, per_hour, now) - f64::from(n)).max(0.0);
        if self.buckets.len() >= SWEEP_AT && !self.buckets.contains_key(key) {
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.at).as_secs() < 3600);
        }
        self.buckets
            .insert(key.to_string(), Bucket { tokens, at: now });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_limit_at_once_then_earned_back_over_the_hour() {
        let mut b = Buckets::default();
        let t0 = Instant::now();
        assert!(b.allows("alice", 2, 2, t0));
        b.take("alice", 2, 1, t0);
        b.take("alice", 2, 1, t0);
        assert!(!b.allows("alice", 2, 1, t0));
        assert!(b.allows("bob", 2, 1, t0), "each sender has its own");
        assert!(!b.allows("alice", 2, 1, t0 + Duration::from_secs(1700)));
        assert!(b.allows("alice", 2, 1, t0 + Duration::from_secs(1800)));
        assert!(b.allows("alice", 0, 1_000_000, t0), "0 is no limit");
    }
}
