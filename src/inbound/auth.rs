//! STARTTLS and AUTH: letting senders in from anywhere, safely.
//!
//! AUTH (PLAIN and LOGIN, RFC 4954) is offered only under TLS, or in the clear to
//! loopback clients when `[auth] allow_plaintext_loopback` says so, and only when a users
//! file is configured. A failed login is answered late, later for each failure of the
//! same client address, and too many lock the address out of AUTH for a while
//! ([`super::users::AuthGuard`]).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};
use tokio::io::{AsyncRead, AsyncWrite};

use super::session::State;
use super::{Reply, Session};

/// Where an AUTH exchange stands: what the next line from the client is.
pub(crate) enum Sasl {
    /// The PLAIN response (`authzid NUL authcid NUL password`).
    Plain,
    /// The LOGIN user name.
    LoginUser,
    /// The LOGIN password for this user.
    LoginPassword(String),
}

/// `334` with a base64 challenge.
fn challenge(text: &str) -> Reply {
    Reply::new(334, "", B64.encode(text))
}

fn decode(line: &str) -> Option<String> {
    let line = line.trim();
    if line == "=" {
        return Some(String::new());
    }
    String::from_utf8(B64.decode(line).ok()?).ok()
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Whether STARTTLS may be offered: a certificate is configured and the session is
    /// not under TLS yet.
    pub(super) fn tls_offered(&self) -> bool {
        self.tls.is_none() && self.inbound.security().tls.is_some()
    }

    /// Whether AUTH may be offered: users exist, and the session is under TLS (or on
    /// loopback where plaintext is allowed).
    pub(super) fn auth_offered(&self) -> bool {
        self.inbound.security().users.is_some()
            && (self.tls.is_some()
                || (self.config.auth.allow_plaintext_loopback
                    && super::policy::is_loopback(self.peer.ip())))
    }

    pub(super) fn start_tls(&mut self) -> Reply {
        if !self.tls_offered() {
            return Reply::new(502, "5.5.1", "STARTTLS not available");
        }
        if self.txn.is_some() {
            return Reply::new(
                503,
                "5.5.1",
                "STARTTLS not allowed during a mail transaction",
            );
        }
        self.starttls = true;
        Reply::new(220, "2.0.0", "Ready to start TLS")
    }

    pub(super) async fn auth(&mut self, mechanism: u64, initial: &str) -> Reply {
        if self.helo.is_none() {
            return Reply::new(503, "5.5.1", "Send EHLO first");
        }
        if self.user.is_some() {
            return Reply::new(503, "5.5.1", "Already authenticated");
        }
        if self.txn.is_some() {
            return Reply::new(503, "5.5.1", "AUTH not allowed during a mail transaction");
        }
        if !self.auth_offered() {
            return if self.inbound.security().users.is_some() && self.tls_offered() {
                Reply::new(538, "5.7.11", "Encryption required: STARTTLS first")
            } else {
                Reply::new(502, "5.5.1", "AUTH not available")
            };
        }
        if let Some(left) = self.inbound.guard.locked(self.peer.ip()) {
            return self.locked_out(left);
        }
        let initial = (!initial.is_empty()).then_some(initial);
        match mechanism {
            AUTH_PLAIN => match initial {
                None => {
                    self.state = State::Sasl(Sasl::Plain);
                    Reply::new(334, "", "")
                }
                Some(line) => self.plain(line).await,
            },
            AUTH_LOGIN => match initial.map(decode) {
                None => {
                    self.state = State::Sasl(Sasl::LoginUser);
                    challenge("Username:")
                }
                Some(Some(user)) => {
                    self.state = State::Sasl(Sasl::LoginPassword(user));
                    challenge("Password:")
                }
                Some(None) => Reply::new(501, "5.5.2", "Cannot decode the response"),
            },
            _ => Reply::new(
                504,
                "5.5.4",
                "Unrecognized authentication type; use PLAIN or LOGIN",
            ),
        }
    }

    /// The client's answer to a `334`.
    pub(super) async fn sasl_line(&mut self, line: &[u8]) -> Reply {
        let State::Sasl(step) = std::mem::replace(&mut self.state, State::Command) else {
            return Reply::new(503, "5.5.1", "No authentication under way");
        };
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches(['\r', '\n']);
        if line == "*" {
            return Reply::new(501, "5.0.0", "Authentication cancelled");
        }
        match step {
            Sasl::Plain => self.plain(line).await,
            Sasl::LoginUser => match decode(line) {
                Some(user) => {
                    self.state = State::Sasl(Sasl::LoginPassword(user));
                    challenge("Password:")
                }
                None => Reply::new(501, "5.5.2", "Cannot decode the response"),
            },
            Sasl::LoginPassword(user) => match decode(line) {
                Some(password) => self.check(user, password).await,
                None => Reply::new(501, "5.5.2", "Cannot decode the response"),
            },
        }
    }

    async fn plain(&mut self, line: &str) -> Reply {
        let Some(text) = decode(line) else {
            return Reply::new(501, "5.5.2", "Cannot decode the response");
        };
        let mut parts = text.split('\0');
        let (Some(authz), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Reply::new(501, "5.5.2", "Malformed PLAIN response");
        };
        if !authz.is_empty() && authz != user {
            // Acting for another user is not offered: a failure like a wrong password.
            return self.check(user.to_string(), String::new()).await;
        }
        self.check(user.to_string(), password.to_string()).await
    }

    /// Checks the password (off the async threads: argon2 is slow on purpose), then
    /// answers `235`, or `535` after the failure delay.
    async fn check(&mut self, user: String, password: String) -> Reply {
        let Some(users) = self.inbound.security().users.clone() else {
            return Reply::new(454, "4.7.0", "Temporary authentication failure");
        };
        let name = user.clone();
        let found = tokio::task::spawn_blocking(move || users.verify(&name, &password))
            .await
            .ok()
            .flatten();
        let client = self.peer.ip();
        let shown: String = user.chars().filter(|c| !c.is_control()).take(64).collect();
        match found {
            Some(u) => {
                self.inbound.guard.succeeded(client);
                tracing::info!(client = %client, user = %u.name, tls = self.tls.as_deref().unwrap_or("none"), "authenticated");
                self.user = Some(u);
                Reply::new(235, "2.7.0", "Authentication successful")
            }
            None => {
                let (delay, locked) = self.inbound.guard.failed(client, &self.config.auth);
                crate::metrics::metrics().auth_failures.inc();
                if locked {
                    crate::metrics::metrics().auth_lockouts.inc();
                }
                tracing::warn!(client = %client, user = %shown, "authentication failed");
                if locked {
                    tracing::warn!(
                        client = %client,
                        lockout = %humantime::format_duration(self.config.auth.lockout.get()),
                        "AUTH lockout: too many failed logins from this address"
                    );
                }
                tokio::time::sleep(delay).await;
                Reply::new(535, "5.7.8", "Authentication credentials invalid")
            }
        }
    }

    fn locked_out(&self, left: std::time::Duration) -> Reply {
        tracing::info!(client = %self.peer.ip(), "AUTH refused: address locked out");
        Reply::new(
            454,
            "4.7.0",
            format!(
                "Too many failed logins from your address; try again in {} s",
                left.as_secs().max(1)
            ),
        )
    }
}
