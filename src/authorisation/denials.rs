//! What receivers taught us about authorisation: "this IP is not authorised for this
//! sender domain", learned when a receiver refused a message for SPF/DKIM/DMARC from one
//! IP and accepted it from another that SPF authorises. A fact about (domain, IP), never
//! about the IP's reputation: the IP stays in rotation for every other sender.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// A denial holds this long unless seen again (the sender may fix its DNS meanwhile;
/// SPF-aware routing then needs no denial to avoid the IP anyway).
pub(super) const DENIAL_TTL_SECS: u64 = 7 * 86_400;

/// One (sender domain, IP) pair a receiver refused for authentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// The sender domain (MAIL FROM domain, or HELO name for bounces).
    pub domain: String,
    /// The egress IP the receiver refused for it.
    pub ip: IpAddr,
    /// The destination site that said so.
    pub site: String,
    /// Its exact reply: the evidence.
    pub reply: String,
    /// The address that then got the message accepted (the second opinion).
    pub accepted_via: String,
    /// First and last time seen (Unix seconds).
    pub first_seen: u64,
    /// Last time seen.
    pub last_seen: u64,
    /// How many refusals taught it.
    pub count: u32,
    /// Until when the pair is avoided (Unix seconds).
    pub until: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct Stored {
    denials: Vec<Denial>,
}

/// The denials, in memory and in `authorisation.json` beside the spool.
pub(super) struct Denials {
    map: Mutex<HashMap<(String, IpAddr), Denial>>,
    path: Option<PathBuf>,
}

impl Denials {
    /// Loads the saved denials; a file that cannot be read starts empty (with a log
    /// line): a denial is an optimisation, SPF still steers the choice.
    pub(super) fn open(path: Option<PathBuf>) -> Self {
        let stored: Stored = path
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| match serde_json::from_slice(&bytes) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the saved authentication denials; starting without them");
                    None
                }
            })
            .unwrap_or_default();
        let map = stored
            .denials
            .into_iter()
            .map(|d| ((d.domain.clone(), d.ip), d))
            .collect();
        Self {
            map: Mutex::new(map),
            path,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, IpAddr), Denial>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `ip` is denied for `domain` at `now`.
    pub(super) fn denies(&self, domain: &str, ip: IpAddr, now: u64) -> bool {
        let map = self.lock();
        if map.is_empty() {
            return false;
        }
        map.get(&(domain.to_ascii_lowercase(), ip))
            .is_some_and(|d| d.until > now)
    }

    /// Records a refusal (or another one of a known pair) and saves the lot.
    pub(super) fn record(&self, mut denial: Denial) -> Denial {
        denial.domain = denial.domain.to_ascii_lowercase();
        let stored = {
            let mut map = self.lock();
            let entry = map
                .entry((denial.domain.clone(), denial.ip))
                .and_modify(|d| {
                    d.last_seen = denial.last_seen;
                    d.count += 1;
                    d.until = denial.until;
                    d.reply = denial.reply.clone();
                    d.site = denial.site.clone();
                    d.accepted_via = denial.accepted_via.clone();
                })
                .or_insert(denial);
            entry.clone()
        };
        self.persist();
        stored
    }

    /// The live denials (of `domain`, or all), by domain and IP.
    pub(super) fn list(&self, domain: Option<&str>, now: u64) -> Vec<Denial> {
        let domain = domain.map(str::to_ascii_lowercase);
        let mut out: Vec<Denial> = self
            .lock()
            .values()
            .filter(|d| d.until > now && domain.as_ref().is_none_or(|x| *x == d.domain))
            .cloned()
            .collect();
        out.sort_by(|a, b| (&a.domain, a.ip).cmp(&(&b.domain, b.ip)));
        out
    }

    fn persist(&self) {
        let Some(path) = &self.path else {
            return;
        };
        let stored = Stored {
            denials: self.lock().values().cloned().collect(),
        };
        match serde_json::to_vec_pretty(&stored) {
            Ok(bytes) => {
                if let Err(e) = crate::spool::replace_durably(path, &bytes) {
                    tracing::error!(path = %path.display(), error = %e, "cannot save the authentication denials (they hold in memory)");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode the authentication denials"),
        }
    }
}
