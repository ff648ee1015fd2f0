//! What a sender's recent mail looks like, and whether it looks like a hacked account's:
//! reputation refusals it draws, unknown recipients it tries, a volume far above its
//! own. Pure: the caller passes time in and acts on the answer.

use serde::{Deserialize, Serialize};

use crate::config::SuspensionConfig;

/// One sender's counts in the current window, and its usual volume.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Recent {
    /// When the current window started (Unix seconds).
    pub since: u64,
    /// Messages accepted from it.
    pub messages: u32,
    /// Delivery attempts of its recipients that got a verdict.
    pub attempts: u32,
    /// Of those, refusals blaming the egress IP's reputation.
    pub reputation_refusals: u32,
    /// Of those, permanent unknown-recipient refusals.
    pub unknown_recipients: u32,
    /// Feedback-loop complaints about its mail that arrived in the window.
    #[serde(default)]
    pub complaints: u32,
    /// Hard bounces of its recipients, in the session and late (by mail to the return
    /// path), in the window.
    #[serde(default)]
    pub hard_bounces: u32,
    /// Of those, the late ones.
    #[serde(default)]
    pub late_bounces: u32,
    /// Messages per window, averaged over past windows (0 until one window passed).
    pub usual: f64,
    /// The latest refusals, as evidence (at most a few).
    pub samples: Vec<String>,
}

/// Refusals kept as evidence per sender.
const SAMPLES: usize = 5;

impl Recent {
    /// Starts a new window when the current one is over; past volume feeds `usual`.
    pub fn roll(&mut self, now: u64, window: u64) {
        if self.since == 0 {
            self.since = now;
            return;
        }
        if now.saturating_sub(self.since) < window.max(1) {
            return;
        }
        let windows = (now - self.since) / window.max(1);
        // Empty windows after the last one count as quiet ones.
        let mut usual = if self.usual == 0.0 {
            f64::from(self.messages)
        } else {
            0.7 * self.usual + 0.3 * f64::from(self.messages)
        };
        for _ in 1..windows.min(16) {
            usual *= 0.7;
        }
        *self = Recent {
            since: now,
            usual,
            ..Recent::default()
        };
    }

    /// Keeps `reply` as evidence.
    pub fn sample(&mut self, reply: String) {
        if self.samples.len() >= SAMPLES {
            self.samples.remove(0);
        }
        self.samples.push(reply);
    }

    /// A feedback-loop complaint, kept as evidence.
    pub fn complaint(&mut self, evidence: String) {
        self.complaints += 1;
        self.sample(evidence);
    }

    /// A hard bounce that came later by mail, kept as evidence.
    pub fn late_bounce(&mut self, evidence: String) {
        self.hard_bounces += 1;
        self.late_bounces += 1;
        self.sample(evidence);
    }

    /// Hard bounces per delivery attempt in the window (0 before any attempt).
    pub fn bounce_rate(&self) -> f64 {
        if self.attempts == 0 {
            return 0.0;
        }
        f64::from(self.hard_bounces) / f64::from(self.attempts)
    }

    /// Why the sender should be suspended now, if it should.
    pub fn verdict(&self, c: &SuspensionConfig) -> Option<String> {
        if !c.enabled {
            return None;
        }
        let share = |n: u32| f64::from(n) / f64::from(self.attempts.max(1));
        if self.reputation_refusals >= c.reputation_refusals.max(1)
            && share(self.reputation_refusals) >= c.reputation_ratio
        {
            return Some(format!(
                "{} of {} delivery attempts refused for the egress IP's reputation",
                self.reputation_refusals, self.attempts
            ));
        }
        if self.unknown_recipients >= c.unknown_recipients.max(1)
            && share(self.unknown_recipients) >= c.unknown_recipient_ratio
        {
            return Some(format!(
                "{} of {} recipients unknown at the destination",
                self.unknown_recipients, self.attempts
            ));
        }
        if self.complaints >= c.complaints.max(1) && share(self.complaints) >= c.complaint_ratio {
            return Some(format!(
                "{} feedback-loop complaints for {} delivery attempts",
                self.complaints, self.attempts
            ));
        }
        if self.hard_bounces >= c.hard_bounces.max(1) && share(self.hard_bounces) >= c.bounce_ratio
        {
            return Some(format!(
                "{} hard bounces ({} late) for {} delivery attempts",
                self.hard_bounces, self.late_bounces, self.attempts
            ));
        }
        if self.usual > 0.0
            && self.messages >= c.spike_messages.max(1)
            && f64::from(self.messages) > c.spike_factor * self.usual
        {
            return Some(format!(
                "{} messages this window, {:.0}x its usual {:.0}",
                self.messages,
                f64::from(self.messages) / self.usual,
                self.usual
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SuspensionConfig {
        SuspensionConfig {
            reputation_refusals: 3,
            reputation_ratio: 0.5,
            unknown_recipients: 4,
            unknown_recipient_ratio: 0.5,
            spike_factor: 5.0,
            spike_messages: 50,
            ..SuspensionConfig::default()
        }
    }

    #[test]
    fn each_threshold_needs_its_count_and_its_share() {
        let c = config();
        let mut r = Recent {
            attempts: 4,
            reputation_refusals: 2,
            ..Recent::default()
        };
        assert_eq!(r.verdict(&c), None, "too few");
        r.reputation_refusals = 3;
        assert_eq!(
            r.verdict(&c).unwrap(),
            "3 of 4 delivery attempts refused for the egress IP's reputation"
        );
        r.attempts = 100;
        assert_eq!(r.verdict(&c), None, "a small share of a big sender's mail");
        let r = Recent {
            attempts: 6,
            unknown_recipients: 4,
            ..Recent::default()
        };
        assert!(r.verdict(&c).unwrap().contains("4 of 6 recipients unknown"));
        let c = SuspensionConfig {
            enabled: false,
            ..c
        };
        assert_eq!(r.verdict(&c), None);
    }

    #[test]
    fn hard_bounces_in_session_and_late_suspend_at_the_bounce_ratio() {
        let c = SuspensionConfig {
            hard_bounces: 3,
            bounce_ratio: 0.25,
            ..config()
        };
        let mut r = Recent {
            attempts: 10,
            hard_bounces: 2,
            late_bounces: 1,
            ..Recent::default()
        };
        assert_eq!(r.verdict(&c), None, "too few");
        assert!((r.bounce_rate() - 0.2).abs() < 1e-9);
        r.hard_bounces = 3;
        r.attempts = 20;
        assert_eq!(r.verdict(&c), None, "15% is under the ratio");
        r.attempts = 12;
        assert_eq!(
            r.verdict(&c).unwrap(),
            "3 hard bounces (1 late) for 12 delivery attempts"
        );
        assert_eq!(Recent::default().bounce_rate(), 0.0);
    }

    #[test]
    fn a_spike_is_measured_against_the_senders_own_usual_volume() {
        let c = config();
        let mut r = Recent::default();
        r.roll(1000, 3600);
        r.messages = 20;
        r.roll(1000 + 3600, 3600);
        assert_eq!(r.usual, 20.0);
        assert_eq!(r.messages, 0);
        r.messages = 60;
        assert_eq!(r.verdict(&c), None, "3x is not a spike");
        r.messages = 101;
        assert!(
            r.verdict(&c)
                .unwrap()
                .starts_with("101 messages this window")
        );
        // A new sender has no usual volume: no spike, however much it sends.
        let fresh = Recent {
            messages: 10_000,
            ..Recent::default()
        };
        assert_eq!(fresh.verdict(&c), None);
    }
}
