//! Inbound SMTP: the relay port. `listener` accepts and limits connections, `session`
//! runs the state machine, one file per command group, `policy` decides relay permission.

mod auth;
mod bounces;
mod content;
mod data;
mod ehlo;
mod envelope;
pub mod limits;
mod listener;
pub mod policy;
#[cfg(test)]
mod proptests;
mod reply;
mod session;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod users;

pub use bounces::BounceGate;
pub use limits::Sessions;

/// The checks of the inbound side's settings that build something (config only reads
/// values): the TLS certificate and key make an acceptor, the users file loads.
pub fn check_config(config: &crate::config::Config) -> Vec<crate::config::ConfigError> {
    let mut errors = Vec::new();
    let s = &config.server;
    if s.tls_certificate.is_some()
        && s.tls_key.is_some()
        && let Err(e) = tls::acceptor(s)
    {
        errors.push(crate::config::ConfigError {
            key: "server.tls_certificate".into(),
            problem: e.to_string(),
        });
    }
    if let Some(path) = &config.auth.users_file
        && let Err(problems) = users::load(path)
    {
        errors.extend(problems.into_iter().map(|p| crate::config::ConfigError {
            key: "auth.users_file".into(),
            problem: format!("{}: {p}", path.display()),
        }));
    }
    errors
}
pub use listener::{Port, serve};
pub use reply::Reply;
pub use session::{Ending, Session};

use std::sync::Arc;

use crate::config::Config;
use crate::queue::QueueHandle;
use crate::spool::Spool;

impl Inbound {
    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts `config` (and its certificate and users) in force for sessions that start
    /// from now on.
    pub fn reconfigure(&self, config: Arc<Config>, security: Security) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
        *self.security.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(security);
    }

    /// The certificate and users in force now.
    pub fn security(&self) -> Arc<Security> {
        self.security
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
impl Inbound {
    /// Sessions' shared state for unit tests: no TLS, no users, no alerts.
    pub(crate) fn for_test(
        config: Config,
        spool: Spool,
        queue: QueueHandle,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            sessions: Sessions::new(&config.server),
            config: std::sync::RwLock::new(Arc::new(config)),
            spool,
            queue,
            stopping,
            alerts: crate::alerts::Alerts::default(),
            security: Default::default(),
            guard: Default::default(),
            senders: Default::default(),
            suppressions: Default::default(),
            bounce_gate: Default::default(),
            clock: crate::clock::Clock::system(),
        }
    }
}

/// What sessions build from files the config names: the TLS certificate and the users
/// who may log in (which let senders in from anywhere), and the DKIM keys.
#[derive(Default)]
pub struct Security {
    /// STARTTLS and the implicit-TLS listener; `None` without a certificate.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// `[auth] users_file`; `None`: AUTH is not offered.
    pub users: Option<Arc<users::Users>>,
    /// `[[dkim.keys]]`, loaded.
    pub signer: Arc<crate::signing::Signer>,
}

impl Security {
    /// Loads the certificate, the users file and the DKIM keys of `config`.
    ///
    /// # Errors
    /// Every file that cannot be read or parsed (or, for a key, is readable by others),
    /// with why.
    pub fn load(config: &Config) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let tls = tls::acceptor(&config.server).unwrap_or_else(|e| {
            errors.push(e.to_string());
            None
        });
        let users = match &config.auth.users_file {
            Some(path) => match users::Users::open(path) {
                Ok(u) => Some(Arc::new(u)),
                Err(e) => {
                    errors.extend(e);
                    None
                }
            },
            None => None,
        };
        let signer = crate::signing::Signer::load(&config.dkim).unwrap_or_else(|problems| {
            errors.extend(problems.iter().map(ToString::to_string));
            Default::default()
        });
        if errors.is_empty() {
            Ok(Self {
                tls,
                users,
                signer: Arc::new(signer),
            })
        } else {
            Err(errors)
        }
    }
}

/// What every inbound session shares.
pub struct Inbound {
    /// The configuration sessions start with (`[server]` mostly); a reload swaps it,
    /// sessions under way keep theirs.
    pub config: std::sync::RwLock<Arc<Config>>,
    /// Where accepted messages are made durable before `250`.
    pub spool: Spool,
    /// Tells the scheduler about each accepted message.
    pub queue: QueueHandle,
    /// Becomes `true` when the relay stops: sessions finish their transaction, then say
    /// `421`.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// The session table: slots, per-address caps, stress.
    pub sessions: Sessions,
    /// Where a full spool is announced.
    pub alerts: crate::alerts::Alerts,
    /// The certificate and users; a reload swaps them.
    pub security: std::sync::RwLock<Arc<Security>>,
    /// Failed logins per client address (shared with the admin API).
    pub guard: Arc<users::AuthGuard>,
    /// Quotas and suspensions of senders.
    pub senders: crate::senders::Senders,
    /// Addresses refused at RCPT (`[suppression]`).
    pub suppressions: crate::suppression::Suppressions,
    /// Outsiders' bounce transactions per minute.
    pub bounce_gate: bounces::BounceGate,
    /// Stamps accepted mail (queue id, `Received:` date, acceptance time).
    pub clock: crate::clock::Clock,
}
