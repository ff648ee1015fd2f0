//! When to try again. Pure functions of the configuration, so the whole schedule can be
//! asserted in a test.

use std::time::Duration;

use crate::config::QueueConfig;

/// Delay after the `attempt`-th failed attempt (1-based): `retry_initial` times
/// `retry_factor` to the power `attempt - 1`, capped at `retry_max`.
pub fn retry_delay(config: &QueueConfig, attempt: u32) -> Duration {
    config.retry_delay(attempt)
}

/// The delays of the first `n` retries.
pub fn retry_schedule(config: &QueueConfig, n: u32) -> Vec<Duration> {
    (1..=n).map(|a| retry_delay(config, a)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_doubles_from_five_minutes_to_an_hour() {
        let mins: Vec<u64> = retry_schedule(&QueueConfig::default(), 8)
            .iter()
            .map(|d| d.as_secs() / 60)
            .collect();
        assert_eq!(mins, vec![5, 10, 20, 40, 60, 60, 60, 60]);
    }

    #[test]
    fn huge_attempt_counts_stay_capped() {
        let c = QueueConfig::default();
        assert_eq!(retry_delay(&c, u32::MAX), Duration::from_secs(3600));
    }
}
