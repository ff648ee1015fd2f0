//! Lists of client networks (`relay_networks`, `trusted_networks`), each entry parsed on
//! its own so that an error names the entry, not just the key.

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// `["10.0.0.0/8", "192.0.2.1/32"]`.
pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let entries = Vec::<String>::deserialize(d)?;
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            entry.trim().parse::<IpNet>().map_err(|e| {
                serde::de::Error::custom(format!(
                    "entry [{i}] {entry:?}: {e}; expected a network like \"10.0.0.0/8\" (one address: \"192.0.2.1/32\")"
                ))
            })
        })
        .collect()
}
