use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written the way operators write them: "90s", "5m", "1h 30m", "5days".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(Duration);

impl HumanDuration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// The duration as `std`'s type.
    pub const fn get(self) -> Duration {
        self.0
    }

    /// Whether it is zero (for validation).
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor)
    }
}

/// Takes a string; a bare number gets an error that shows how to write it (a number of
/// what? "300s" or "5m").
struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = HumanDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration like \"5m\"")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
        humantime::parse_duration(text)
            .map(HumanDuration)
            .map_err(|e| {
                E::custom(format!(
                    "invalid duration {text:?} ({e}); expected a duration like \"5m\""
                ))
            })
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "{n} is a bare number; expected a duration like \"5m\" (a string with a unit: \"{n}s\")"
        )))
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
        self.visit_i64(n as i64)
    }

    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "{n} is a bare number; expected a duration like \"5m\" (a string with a unit)"
        )))
    }
}
