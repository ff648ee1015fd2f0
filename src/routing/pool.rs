//! Egress pools: the local addresses mail leaves from, used in turn.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::PoolConfig;
use crate::egress::{EgressIp, Standing};

/// A named group of egress IPs. Each new connection takes the next one (round-robin), so
/// a listing of one address touches only its share of the mail.
#[derive(Clone)]
pub struct Pool {
    /// The pool's name in `[[pools]]`.
    pub name: String,
    egress: Arc<[EgressIp]>,
    next: Arc<AtomicUsize>,
}

impl Pool {
    /// The pool of `config`; egress IPs without a HELO name of their own use `default_helo`.
    pub fn from_config(config: &PoolConfig, default_helo: &str) -> Self {
        let egress: Vec<EgressIp> = config
            .egress
            .iter()
            .map(|e| EgressIp {
                ip: e.ip,
                helo: e.helo.as_deref().unwrap_or(default_helo).into(),
            })
            .collect();
        Self {
            name: config.name.clone(),
            egress: egress.into(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The next egress IP in turn that can reach `dest` and is clean by `standing`; if
    /// none is clean, the next merely soft-listed one; `None` when every address is
    /// hard-listed or of the wrong family.
    pub fn next_for(
        &self,
        dest: IpAddr,
        standing: impl Fn(&EgressIp) -> Standing,
    ) -> Option<EgressIp> {
        let n = self.egress.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut fallback = None;
        for k in 0..n {
            let e = &self.egress[(start + k) % n];
            if !e.can_reach(dest) {
                continue;
            }
            match standing(e) {
                Standing::Clean => {
                    // Continue the rotation after the address actually used.
                    if k > 0 {
                        self.next.fetch_add(k, Ordering::Relaxed);
                    }
                    return Some(e.clone());
                }
                Standing::Soft if fallback.is_none() => fallback = Some(e.clone()),
                Standing::Soft | Standing::Hard => {}
            }
        }
        fallback
    }

    /// Its egress IPs, in rotation order.
    pub fn egress(&self) -> &[EgressIp] {
        &self.egress
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EgressConfig;

    fn pool(ips: &[&str]) -> Pool {
        Pool::from_config(
            &PoolConfig {
                name: "p".into(),
                egress: ips
                    .iter()
                    .map(|ip| EgressConfig {
                        ip: Some(ip.parse().unwrap()),
                        helo: None,
                        warmup: Vec::new(),
                        warmup_start: None,
                    })
                    .collect(),
            },
            "relay.test",
        )
    }

    fn standing_of(hard: &'static [&str], soft: &'static [&str]) -> impl Fn(&EgressIp) -> Standing {
        move |e: &EgressIp| {
            let ip = e.to_string();
            if hard.contains(&ip.as_str()) {
                Standing::Hard
            } else if soft.contains(&ip.as_str()) {
                Standing::Soft
            } else {
                Standing::Clean
            }
        }
    }

    #[test]
    fn listed_addresses_are_skipped_soft_ones_kept_as_last_resort() {
        let p = pool(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
        let dest: IpAddr = "127.0.0.9".parse().unwrap();
        let s = standing_of(&["127.0.0.3"], &[]);
        let picks: Vec<String> = (0..4)
            .map(|_| p.next_for(dest, &s).unwrap().to_string())
            .collect();
        assert_eq!(picks, ["127.0.0.2", "127.0.0.4", "127.0.0.2", "127.0.0.4"]);
        let s = standing_of(&["127.0.0.2", "127.0.0.4"], &["127.0.0.3"]);
        assert_eq!(p.next_for(dest, &s).unwrap().to_string(), "127.0.0.3");
        let s = standing_of(&["127.0.0.2", "127.0.0.3", "127.0.0.4"], &[]);
        assert_eq!(p.next_for(dest, &s), None);
    }

    #[test]
    fn rotates_and_skips_wrong_family() {
        let pool = Pool::from_config(
            &PoolConfig {
                name: "p".into(),
                egress: vec![
                    EgressConfig {
                        ip: Some("127.0.0.2".parse().unwrap()),
                        helo: None,
                        warmup: Vec::new(),
                        warmup_start: None,
                    },
                    EgressConfig {
                        ip: Some("::1".parse().unwrap()),
                        helo: Some("six.test".into()),
                        warmup: Vec::new(),
                        warmup_start: None,
                    },
                    EgressConfig {
                        ip: Some("127.0.0.3".parse().unwrap()),
                        helo: None,
                        warmup: Vec::new(),
                        warmup_start: None,
                    },
                ],
            },
            "relay.test",
        );
        let v4: IpAddr = "127.0.0.9".parse().unwrap();
        let clean = |_: &EgressIp| Standing::Clean;
        let picks: Vec<String> = (0..4)
            .map(|_| pool.next_for(v4, clean).unwrap().to_string())
            .collect();
        assert_eq!(picks, ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]);
        let six = pool.next_for("::1".parse().unwrap(), clean).unwrap();
        assert_eq!(
            (six.to_string(), &*six.helo),
            ("::1".to_string(), "six.test")
        );
    }
}
