//! Who gets a session: the port's slots, a reserve for permitted clients, per-address
//! caps and connection rates for everyone else, and the stress signal that shortens
//! timeouts when the slots run low (Postfix's anvil and stress mode).
//!
//! Without these, 200 clients from outside `relay_networks` that trickle a byte a second
//! (or say nothing) fill `max_sessions`, and the MTA the relay serves gets `421`. Clients
//! in `relay_networks` (the MTA in front, a newsletter tool) are not capped per address:
//! they take any free slot, including the `reserved_sessions` nobody else may take.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Clock;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ServerConfig;

/// The window of `max_connection_rate_per_ip`.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// A session table this full (in eighths) puts sessions under stress: shorter timeouts.
const STRESS_EIGHTHS: usize = 7;

/// Why a connection gets `421` instead of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot it may take is in use.
    Full,
    /// Its address has `max_sessions_per_ip` sessions already.
    PerIp,
    /// Its address connected more than `max_connection_rate_per_ip` times this minute.
    Rate,
}

impl Refusal {
    /// The text of the `421` reply.
    pub fn reply_text(self) -> &'static str {
        match self {
            Refusal::Full => "Too many connections, try again later",
            Refusal::PerIp => "Too many connections from your address, try again later",
            Refusal::Rate => "Connection rate limit exceeded for your address, try again later",
        }
    }
}

/// The session table, shared by the accept loop, the sessions and the stop.
#[derive(Clone)]
pub struct Sessions {
    shared: Arc<Shared>,
}

struct Shared {
    max: usize,
    total: Arc<Semaphore>,
    /// Slots clients outside `relay_networks` may take: `max - reserved`.
    outsiders: Arc<Semaphore>,
    per_ip_max: usize,
    rate_max: u32,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Per address: the start of its minute (Unix ms) and its connections in it.
    rates: Mutex<HashMap<IpAddr, (u64, u32)>>,
    clock: Clock,
}

/// A session's slot; dropping it frees the slot and the address's count.
pub struct Admission {
    _total: OwnedSemaphorePermit,
    _outsider: Option<OwnedSemaphorePermit>,
    counted: Option<(Arc<Shared>, IpAddr)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((shared, ip)) = self.counted.take() {
            let mut per_ip = shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

impl Sessions {
    /// The table for `[server]`'s limits.
    pub fn new(config: &ServerConfig) -> Self {
        let max = config.max_sessions;
        let reserved = config.reserved();
        Self {
            shared: Arc::new(Shared {
                max,
                total: Arc::new(Semaphore::new(max)),
                outsiders: Arc::new(Semaphore::new(max - reserved)),
                per_ip_max: config.max_sessions_per_ip,
                rate_max: config.max_connection_rate_per_ip,
                per_ip: Mutex::new(HashMap::new()),
                rates: Mutex::new(HashMap::new()),
                clock: Clock::system(),
            }),
        }
    }

    /// A slot for a client at `ip`; `permitted`: it is in `relay_networks`.
    ///
    /// # Errors
    /// The [`Refusal`] to tell the client.
    pub fn admit(&self, ip: IpAddr, permitted: bool) -> Result<Admission, Refusal> {
        let s = &self.shared;
        if permitted {
            let total = s
                .total
                .clone()
                .try_acquire_owned()
                .map_err(|_| Refusal::Full)?;
            return Ok(Admission {
                _total: total,
                _outsider: None,
                counted: None,
            });
        }
        if !self.within_rate(ip) {
            return Err(Refusal::Rate);
        }
        let mut per_ip = s.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if per_ip.get(&ip).copied().unwrap_or(0) >= s.per_ip_max {
            return Err(Refusal::PerIp);
        }
        let outsider = s
            .outsiders
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Full)?;
        let total = s
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Full)?;
        *per_ip.entry(ip).or_insert(0) += 1;
        Ok(Admission {
            _total: total,
            _outsider: Some(outsider),
            counted: Some((s.clone(), ip)),
        })
    }

    /// Counts a connection from `ip` in its minute; false when over the rate.
    fn within_rate(&self, ip: IpAddr) -> bool {
        let now = self.shared.clock.now_ms();
        let window = RATE_WINDOW.as_millis() as u64;
        let mut rates = self.shared.rates.lock().unwrap_or_else(|e| e.into_inner());
        if rates.len() > 10_000 {
            rates.retain(|_, (start, _)| now.saturating_sub(*start) < window);
        }
        let (start, count) = rates.entry(ip).or_insert((now, 0));
        if now.saturating_sub(*start) >= window {
            *start = now;
            *count = 0;
        }
        *count += 1;
        *count <= self.shared.rate_max
    }

    /// Sessions running now.
    pub fn running(&self) -> usize {
        self.shared.max - self.shared.total.available_permits()
    }

    /// The table is nearly full: sessions use the short stress timeout.
    pub fn under_stress(&self) -> bool {
        self.running() * 8 >= self.shared.max * STRESS_EIGHTHS
    }

    /// Waits until every session has ended.
    pub async fn ended(&self) {
        let _ = self.shared.total.acquire_many(self.shared.max as u32).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(max: usize, reserved: usize, per_ip: usize, rate: u32) -> Sessions {
        Sessions::new(&ServerConfig {
            max_sessions: max,
            reserved_sessions: Some(reserved),
            max_sessions_per_ip: per_ip,
            max_connection_rate_per_ip: rate,
            ..ServerConfig::default()
        })
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn outsiders_never_take_the_reserve() {
        let s = sessions(10, 3, 100, 1000);
        let held: Vec<_> = (0..7).map(|n| s.admit(ip(n), false).unwrap()).collect();
        assert_eq!(s.admit(ip(50), false).err(), Some(Refusal::Full));
        let mine: Vec<_> = (0..3).map(|_| s.admit(ip(200), true).unwrap()).collect();
        assert_eq!(s.admit(ip(200), true).err(), Some(Refusal::Full));
        assert_eq!(s.running(), 10);
        drop(held);
        drop(mine);
        assert_eq!(s.running(), 0);
    }

    #[test]
    fn one_address_is_capped_and_rate_limited() {
        let s = sessions(100, 10, 2, 4);
        let a = s.admit(ip(1), false).unwrap();
        let _b = s.admit(ip(1), false).unwrap();
        assert_eq!(s.admit(ip(1), false).err(), Some(Refusal::PerIp));
        drop(a);
        let _c = s.admit(ip(1), false).unwrap();
        // Four connections this minute: the fifth is over the rate.
        assert_eq!(s.admit(ip(1), false).err(), Some(Refusal::Rate));
        // Others, and permitted clients, are not affected.
        assert!(s.admit(ip(2), false).is_ok());
        for _ in 0..20 {
            drop(s.admit(ip(1), true).unwrap());
        }
    }

    #[test]
    fn stress_begins_near_full() {
        let s = sessions(8, 0, 100, 1000);
        let mut held = Vec::new();
        for n in 0..6 {
            held.push(s.admit(ip(n), false).unwrap());
            assert!(!s.under_stress());
        }
        held.push(s.admit(ip(7), false).unwrap());
        assert!(s.under_stress());
    }
}
