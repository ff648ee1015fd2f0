//! Throttle lanes: a destination that said "too fast" gets one connection at a time for
//! a while. Timed by a [`Clock`], so the lane's life is tested without waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::clock::Clock;

/// Per destination domain: until when (Unix seconds) it throttles us, and its lane.
pub(super) struct ThrottleLanes {
    clock: Clock,
    lanes: Mutex<HashMap<String, (u64, Arc<Semaphore>)>>,
}

impl ThrottleLanes {
    pub(super) fn new(clock: Clock) -> Self {
        Self {
            clock,
            lanes: Mutex::new(HashMap::new()),
        }
    }

    /// `domain` said "too fast": one connection at a time to it for `period` (at least a
    /// second); a repeat extends the same lane.
    pub(super) fn throttle(&self, domain: &str, period: Duration) {
        let now = self.clock.now();
        let until = now + period.as_secs().max(1);
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        lanes.retain(|_, (t, _)| *t > now);
        let entry = lanes
            .entry(domain.to_string())
            .or_insert_with(|| (until, Arc::new(Semaphore::new(1))));
        entry.0 = until;
        tracing::info!(
            domain,
            until,
            "destination throttles us; one connection at a time"
        );
    }

    /// The one-connection lane of `domain`, while it throttles us.
    pub(super) fn lane(&self, domain: &str) -> Option<Arc<Semaphore>> {
        let now = self.clock.now();
        self.lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(domain)
            .filter(|(until, _)| *until > now)
            .map(|(_, lane)| lane.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_lasts_its_period_and_a_repeat_extends_it() {
        let clock = Clock::manual(1_700_000_000_000);
        let lanes = ThrottleLanes::new(clock.clone());
        assert!(lanes.lane("slow.test").is_none());
        lanes.throttle("slow.test", Duration::from_secs(60));
        let lane = lanes.lane("slow.test").expect("throttled");
        assert_eq!(lane.available_permits(), 1);
        assert!(lanes.lane("other.test").is_none());
        clock.advance(Duration::from_secs(59));
        assert!(lanes.lane("slow.test").is_some());
        lanes.throttle("slow.test", Duration::from_secs(60));
        clock.advance(Duration::from_secs(59));
        let again = lanes.lane("slow.test").expect("extended");
        assert!(Arc::ptr_eq(&lane, &again), "the same one-connection lane");
        clock.advance(Duration::from_secs(2));
        assert!(lanes.lane("slow.test").is_none(), "over after its period");
    }
}
