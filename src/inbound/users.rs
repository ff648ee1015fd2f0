//! Who may relay by logging in, and the guard against password guessing.
//!
//! Users live in `[auth] users_file`, one per line: `name:hash[:domain,domain…]`, the
//! hash an argon2id PHC string (`sidestep passwd` prints the line). The file is read
//! again whenever its modification time or size changes, so adding a user needs no
//! reload; a file that no longer parses keeps the previous users (and says why).
//!
//! Checking a password costs the same whether the user exists or not (an unknown name
//! is checked against a dummy hash), so timing does not tell who has an account.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use crate::clock::Clock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::config::AuthConfig;

/// One account.
#[derive(Debug, Clone)]
pub struct User {
    /// The login name.
    pub name: String,
    /// The argon2id PHC string.
    hash: String,
    /// Sender domains the user may use in `MAIL FROM`; empty: any.
    pub domains: Vec<String>,
}

impl User {
    /// Whether the user may send as `domain`.
    pub fn may_send_from(&self, domain: &str) -> bool {
        self.domains.is_empty() || self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// Parses a users file; every bad line is reported with its number.
///
/// # Errors
/// The lines that are not `name:argon2-hash[:domains]`.
pub fn parse(text: &str) -> Result<HashMap<String, User>, Vec<String>> {
    let mut users = HashMap::new();
    let mut errors = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, ':');
        let (name, hash) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let domains: Vec<String> = parts
            .next()
            .map(|d| {
                d.split(',')
                    .map(|x| x.trim().to_ascii_lowercase())
                    .filter(|x| !x.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errors.push(format!("line {}: no user name before ':'", n + 1));
            continue;
        }
        match PasswordHash::new(hash) {
            Ok(h) if h.algorithm.as_str().starts_with("argon2") => {}
            _ => {
                errors.push(format!(
                    "line {}: {name}: not an argon2 hash (make one with `sidestep passwd {name}`)",
                    n + 1
                ));
                continue;
            }
        }
        users.insert(
            name.to_string(),
            User {
                name: name.to_string(),
                hash: hash.to_string(),
                domains,
            },
        );
    }
    if errors.is_empty() {
        Ok(users)
    } else {
        Err(errors)
    }
}

/// Reads and parses a users file.
///
/// # Errors
/// It cannot be read, or a line is bad.
pub fn load(path: &Path) -> Result<HashMap<String, User>, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
    parse(&text)
}

/// The password could not be hashed (argon2 refused its input).
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(String);

/// The argon2id line for `name` with `password`: `name:$argon2id$…`.
pub fn hash_line(name: &str, password: &str) -> Result<String, HashError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| HashError(e.to_string()))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| HashError(e.to_string()))?;
    Ok(format!("{name}:{hash}"))
}

/// What an unknown user's password is checked against, so the check costs the same.
static DUMMY: LazyLock<String> = LazyLock::new(|| {
    hash_line("-", &format!("{:x}", rand::random::<u128>()))
        .map(|l| l[2..].to_string())
        .unwrap_or_default()
});

/// The users file, re-read when it changes.
pub struct Users {
    path: PathBuf,
    state: Mutex<Loaded>,
}

struct Loaded {
    /// Modification time and size when last read.
    stamp: Option<(SystemTime, u64)>,
    users: Arc<HashMap<String, User>>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Users {
    /// Loads `path`.
    ///
    /// # Errors
    /// It cannot be read or a line is bad (config validation reports the same).
    pub fn open(path: &Path) -> Result<Self, Vec<String>> {
        let stamp = stamp(path);
        let users = load(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            state: Mutex::new(Loaded {
                stamp,
                users: Arc::new(users),
            }),
        })
    }

    /// The users now, after re-reading the file if it changed.
    fn current(&self) -> Arc<HashMap<String, User>> {
        let now = stamp(&self.path);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now.is_some() && now != state.stamp {
            state.stamp = now;
            match load(&self.path) {
                Ok(users) => {
                    tracing::info!(path = %self.path.display(), users = users.len(), "users file re-read");
                    state.users = Arc::new(users);
                }
                Err(errors) => tracing::error!(
                    path = %self.path.display(),
                    errors = %errors.join("; "),
                    "users file changed but does not parse; keeping the users it had"
                ),
            }
        }
        state.users.clone()
    }

    /// The user if `password` is theirs. Slow on purpose (argon2): call it off the
    /// async threads.
    pub fn verify(&self, name: &str, password: &str) -> Option<User> {
        let users = self.current();
        let user = users.get(name);
        let hash = user.map_or(DUMMY.as_str(), |u| u.hash.as_str());
        let ok = PasswordHash::new(hash).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        });
        user.filter(|_| ok).cloned()
    }
}

/// Failed logins per client address: each failure is answered later than the one
/// before, and too many within the window lock the address out of AUTH.
#[derive(Default)]
pub struct AuthGuard {
    clients: Mutex<HashMap<IpAddr, Failures>>,
    /// Windows and lockouts run on this clock.
    clock: Clock,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    /// Unix ms.
    since: u64,
    /// Unix ms.
    locked_until: Option<u64>,
}

/// A client address locked out of AUTH, for the operator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Lockout {
    /// The client address.
    pub client: IpAddr,
    /// Failed logins counted.
    pub failures: u32,
    /// Seconds until it may try again.
    pub remaining_s: u64,
}

/// At most this many client addresses are tracked: a spray from many addresses cannot
/// grow the table without bound (the oldest are forgotten first).
const MAX_TRACKED: usize = 50_000;

impl AuthGuard {
    /// A guard timed by `clock` (tests: a lockout passes in an instant).
    pub fn with_clock(clock: Clock) -> Self {
        Self {
            clients: Mutex::default(),
            clock,
        }
    }

    /// How long `client` is still locked out, if it is.
    pub fn locked(&self, client: IpAddr) -> Option<Duration> {
        let now = self.clock.now_ms();
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .get(&client)
            .and_then(|f| f.locked_until)
            .filter(|until| *until > now)
            .map(|until| Duration::from_millis(until - now))
    }

    /// Counts a failure; returns how long to wait before answering it and whether the
    /// client is now locked out.
    pub fn failed(&self, client: IpAddr, config: &AuthConfig) -> (Duration, bool) {
        let now = self.clock.now_ms();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= MAX_TRACKED && !clients.contains_key(&client) {
            let window = config.failure_window.get().as_millis() as u64;
            clients.retain(|_, f| {
                now.saturating_sub(f.since) < window || f.locked_until.is_some_and(|u| u > now)
            });
            if clients.len() >= MAX_TRACKED
                && let Some(oldest) = clients
                    .iter()
                    .min_by_key(|(_, f)| f.since)
                    .map(|(ip, _)| *ip)
            {
                clients.remove(&oldest);
            }
        }
        let f = clients.entry(client).or_insert(Failures {
            count: 0,
            since: now,
            locked_until: None,
        });
        if now.saturating_sub(f.since) >= config.failure_window.get().as_millis() as u64 {
            *f = Failures {
                count: 0,
                since: now,
                locked_until: None,
            };
        }
        f.count += 1;
        let delay = config.failure_delay.get() * (1u32 << (f.count - 1).min(4));
        let lock = f.count >= config.max_failures.max(1) && f.locked_until.is_none();
        if lock {
            f.locked_until = Some(now + config.lockout.get().as_millis() as u64);
        }
        (delay, lock)
    }

    /// A successful login clears the client's failures.
    pub fn succeeded(&self, client: IpAddr) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&client);
    }

    /// Every client locked out now.
    pub fn lockouts(&self) -> Vec<Lockout> {
        let now = self.clock.now_ms();
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Lockout> = clients
            .iter()
            .filter_map(|(ip, f)| {
                let until = f.locked_until.filter(|u| *u > now)?;
                Some(Lockout {
                    client: *ip,
                    failures: f.count,
                    remaining_s: (until - now) / 1000,
                })
            })
            .collect();
        out.sort_by_key(|l| l.client);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_lines_and_errors() {
        let line = hash_line("alice", "s3cret").unwrap();
        let text = format!("# users\n\n{line}:example.com, Example.ORG\nbob:plaintext\n:x\n");
        let errors = parse(&text).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("line 4: bob: not an argon2 hash"),
            "{errors:?}"
        );
        assert!(errors[1].starts_with("line 5: no user name"), "{errors:?}");
        let users = parse(&format!("{line}:example.com, Example.ORG\n")).unwrap();
        let alice = &users["alice"];
        assert_eq!(alice.domains, vec!["example.com", "example.org"]);
        assert!(alice.may_send_from("EXAMPLE.com"));
        assert!(!alice.may_send_from("elsewhere.net"));
    }

    #[test]
    fn failures_grow_the_delay_then_lock_out() {
        let config = AuthConfig {
            failure_delay: crate::config::HumanDuration::from_secs(1),
            max_failures: 3,
            ..AuthConfig::default()
        };
        let guard = AuthGuard::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(guard.failed(ip, &config), (Duration::from_secs(1), false));
        assert_eq!(guard.failed(ip, &config), (Duration::from_secs(2), false));
        assert!(guard.locked(ip).is_none());
        assert_eq!(guard.failed(ip, &config), (Duration::from_secs(4), true));
        assert!(guard.locked(ip).is_some());
        assert_eq!(guard.lockouts().len(), 1);
        assert!(guard.locked("192.0.2.2".parse().unwrap()).is_none());
        guard.succeeded(ip);
        assert!(guard.locked(ip).is_none());
    }

    /// Simulated time: failures spread wider than the window never lock; a lockout
    /// lasts its period to the millisecond, then the client may try again.
    #[test]
    fn the_failure_window_and_the_lockout_run_on_the_clock() {
        let clock = Clock::manual(1_800_000_000_000);
        let guard = AuthGuard::with_clock(clock.clone());
        let config = AuthConfig {
            max_failures: 3,
            failure_window: crate::config::HumanDuration::from_secs(600),
            lockout: crate::config::HumanDuration::from_secs(900),
            ..AuthConfig::default()
        };
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        for _ in 0..2 {
            assert!(!guard.failed(ip, &config).1);
        }
        clock.advance(Duration::from_secs(600));
        assert!(
            !guard.failed(ip, &config).1,
            "a new window starts the count again"
        );
        assert!(!guard.failed(ip, &config).1);
        assert!(
            guard.failed(ip, &config).1,
            "the third within the window locks"
        );
        assert_eq!(guard.locked(ip), Some(Duration::from_secs(900)));
        assert_eq!(guard.lockouts()[0].remaining_s, 900);
        clock.advance(Duration::from_secs(899));
        assert_eq!(guard.locked(ip), Some(Duration::from_secs(1)));
        clock.advance(Duration::from_secs(1));
        assert!(guard.locked(ip).is_none(), "the lockout is over");
        assert!(guard.lockouts().is_empty());
    }
}
