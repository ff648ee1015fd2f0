//! Per-hour quotas as token buckets: a sender may hand in up to its hourly limit at
//! once, and earns it back evenly over the hour. Pure: time (Unix ms, from the caller's
//! `Clock`) is passed in.

use std::collections::HashMap;

/// One sender's allowance of one kind (messages or recipients).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// Unix ms.
    at: u64,
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
    fn level(&self, key: &str, per_hour: u32, now: u64) -> f64 {
        let cap = f64::from(per_hour);
        self.buckets.get(key).map_or(cap, |b| {
            let earned = now.saturating_sub(b.at) as f64 / 1000.0 * cap / 3600.0;
            (b.tokens + earned).min(cap)
        })
    }

    /// Whether `n` more fit under `per_hour` now (`0`: no limit).
    pub fn allows(&self, key: &str, per_hour: u32, n: u32, now: u64) -> bool {
        per_hour == 0 || self.level(key, per_hour, now) >= f64::from(n)
    }

    /// Takes `n` (never below zero: a sender admitted just before the limit does not go
    /// into debt).
    pub fn take(&mut self, key: &str, per_hour: u32, n: u32, now: u64) {
        if per_hour == 0 {
            return;
        }
        let tokens = (self.level(key, per_hour, now) - f64::from(n)).max(0.0);
        if self.buckets.len() >= SWEEP_AT && !self.buckets.contains_key(key) {
            self.buckets
                .retain(|_, b| now.saturating_sub(b.at) < 3_600_000);
        }
        self.buckets
            .insert(key.to_string(), Bucket { tokens, at: now });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_at_once_then_earned_back_over_the_hour() {
        let mut b = Buckets::default();
        let t0 = 1_800_000_000_000;
        assert!(b.allows("alice", 2, 2, t0));
        b.take("alice", 2, 1, t0);
        b.take("alice", 2, 1, t0);
        assert!(!b.allows("alice", 2, 1, t0));
        assert!(b.allows("bob", 2, 1, t0), "each sender has its own");
        assert!(!b.allows("alice", 2, 1, t0 + 1_700_000));
        assert!(b.allows("alice", 2, 1, t0 + 1_800_000));
        assert!(b.allows("alice", 0, 1_000_000, t0), "0 is no limit");
    }
}
