//! Alerts: the operator hears it from sidestep first (an IP listed, a block learned). Each
//! event is POSTed as JSON to `[alerts] webhook` and/or mailed to `[alerts] mail` through
//! the relay's own queue, from a task of its own so that no stage waits on it; the same event for the same IP and site is sent at most once per
//! `[alerts] repeat_after`, and at most `[alerts] max_per_hour` go out in all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Clock;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::config::AlertsConfig;

/// One thing the operator should hear about.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// `listed`, `delisted`, `list-broken`, `blocked`, `block-renewed`, `block-lifted`,
    /// `suspended`.
    pub event: &'static str,
    /// The egress IP, when it concerns one.
    pub ip: Option<String>,
    /// The list zone or destination site, when it concerns one.
    pub subject: Option<String>,
    /// What happened, in a sentence, with the evidence (exact reply, removal link).
    pub text: String,
    /// For blocks: the delisting report of the block (since when, exact reply, MX, log
    /// line, removal link), the text a delisting form asks for, ready to paste.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// The relay's host name.
    pub host: String,
    /// When (RFC 3339).
    pub at: String,
}

/// The alerts to mail to `[alerts] mail` and the address: `serve` queues each as a
/// message.
pub type MailEvents = (crate::envelope::Address, mpsc::UnboundedReceiver<Alert>);

/// Cheap handle: stages call [`Alerts::send`]; nothing happens without a webhook.
#[derive(Clone, Default)]
pub struct Alerts {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tx: mpsc::UnboundedSender<Alert>,
    /// Where alerts to be mailed go (`serve` turns them into mail and queues it: alerts
    /// know nothing of the queue).
    mail: Option<mpsc::UnboundedSender<Alert>>,
    clock: Clock,
    host: String,
    repeat_after: Duration,
    max_per_hour: u32,
    sent: Mutex<Sent>,
}

/// What went out lately: per (event, ip, subject) when, and the hour's count.
struct Sent {
    /// Unix ms of each key's last alert.
    last: HashMap<(String, String, String), u64>,
    /// Unix ms.
    hour_start: u64,
    count: u32,
}

impl Alerts {
    /// Starts the sender task when a webhook or a mail address is configured; a no-op
    /// handle otherwise. With `[alerts] mail`, also the alerts to mail, as events:
    /// `serve` queues each as a message once the queue runs.
    pub fn start(config: &AlertsConfig, host: &str, clock: Clock) -> (Self, Option<MailEvents>) {
        let url = config
            .webhook
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .and_then(|u| match Webhook::new(u, config.ca_file.as_deref()) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::error!(webhook = u, error = %e, "alert webhook unusable; alerts go by mail only");
                    None
                }
            });
        let mail_to = config
            .mail
            .as_deref()
            .filter(|m| !m.trim().is_empty())
            .and_then(|m| crate::envelope::Address::parse(m, false).ok());
        if url.is_none() && mail_to.is_none() {
            return (Self::default(), None);
        }
        let (mail, events) = match mail_to {
            Some(to) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some((to, rx)))
            }
            None => (None, None),
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Alert>();
        let inner = Arc::new(Inner {
            tx,
            mail,
            host: host.to_string(),
            repeat_after: config.repeat_after.get(),
            max_per_hour: config.max_per_hour,
            sent: Mutex::new(Sent {
                last: HashMap::new(),
                hour_start: clock.now_ms(),
                count: 0,
            }),
            clock,
        });
        let sender = inner.clone();
        tokio::spawn(async move {
            while let Some(alert) = rx.recv().await {
                if let Some(hook) = &url
                    && let Err(e) = hook.post(&alert).await
                {
                    tracing::warn!(error = %e, event = alert.event, "alert webhook failed");
                }
                if let Some(mail) = &sender.mail {
                    let _ = mail.send(alert);
                }
            }
        });
        (Self { inner: Some(inner) }, events)
    }

    /// Queues an alert, unless the same one went out lately or the hour's budget is spent.
    pub fn send(
        &self,
        event: &'static str,
        ip: Option<String>,
        subject: Option<String>,
        text: String,
    ) {
        self.send_with_report(event, ip, subject, text, None);
    }

    /// [`Alerts::send`] with a delisting report attached.
    pub fn send_with_report(
        &self,
        event: &'static str,
        ip: Option<String>,
        subject: Option<String>,
        text: String,
        report: Option<String>,
    ) {
        let Some(inner) = &self.inner else {
            return;
        };
        let now = inner.clock.now_ms();
        {
            let mut sent = inner.sent.lock().unwrap_or_else(|e| e.into_inner());
            let Sent {
                last,
                hour_start,
                count,
            } = &mut *sent;
            if now.saturating_sub(*hour_start) >= 3_600_000 {
                *hour_start = now;
                *count = 0;
            }
            let key = (
                event.to_string(),
                ip.clone().unwrap_or_default(),
                subject.clone().unwrap_or_default(),
            );
            if last
                .get(&key)
                .is_some_and(|t| now.saturating_sub(*t) < inner.repeat_after.as_millis() as u64)
                || *count >= inner.max_per_hour
            {
                return;
            }
            last.insert(key, now);
            *count += 1;
        }
        let at = crate::clock::rfc3339(now / 1000);
        let _ = inner.tx.send(Alert {
            event,
            ip,
            subject,
            text,
            report,
            host: inner.host.clone(),
            at,
        });
    }
}

/// The checks of `[alerts]` that need this module (config only reads values): the
/// webhook URL parses.
pub fn check_config(config: &AlertsConfig) -> Vec<crate::config::ConfigError> {
    match config.webhook.as_deref().filter(|u| !u.trim().is_empty()) {
        Some(url) => match Webhook::parse(url) {
            Ok(_) => Vec::new(),
            Err(e) => vec![crate::config::ConfigError {
                key: "alerts.webhook".into(),
                problem: format!("{url:?}: {e}"),
            }],
        },
        None => Vec::new(),
    }
}

/// A webhook cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    /// The URL is not `http://` or `https://`.
    #[error("an http:// or https:// URL is needed")]
    Scheme,
    /// The port after the host is not a number.
    #[error("{0:?} is not a port")]
    Port(String),
    /// No host between the scheme and the path.
    #[error("the URL names no host")]
    NoHost,
    /// `[alerts] ca_file` cannot be read.
    #[error("{0}")]
    CaFile(std::io::Error),
    /// No verifying TLS client for an https webhook.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Where alerts are POSTed: an `http://` or `https://` URL, taken apart once.
pub struct Webhook {
    /// `host:port`, to connect to.
    authority: String,
    /// The host alone, for the `Host` header and the certificate's name.
    host: String,
    path: String,
    /// `https://`.
    https: bool,
    /// Set up for `https://` by [`Webhook::new`].
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Webhook {
    /// The URL's parts, without TLS set up (what config validation checks).
    ///
    /// # Errors
    /// Not an `http://` or `https://` URL with a host.
    pub fn parse(url: &str) -> Result<Self, AlertsError> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(AlertsError::Scheme);
        };
        let (authority, path) = rest
            .split_once('/')
            .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
        let host = match authority.rsplit_once(':') {
            // An IPv6 literal's brackets hold colons of their own.
            Some((h, port)) if !port.contains(']') => {
                port.parse::<u16>()
                    .map_err(|_| AlertsError::Port(port.to_string()))?;
                h
            }
            _ => authority,
        };
        if host.is_empty() {
            return Err(AlertsError::NoHost);
        }
        let authority = if host == authority {
            format!("{host}:{}", if https { 443 } else { 80 })
        } else {
            authority.to_string()
        };
        Ok(Self {
            authority,
            host: host.to_string(),
            path,
            https,
            tls: None,
        })
    }

    /// A webhook for `url`; an https one trusts `ca_file` (PEM) or the system's roots.
    ///
    /// # Errors
    /// A bad URL, an unreadable CA file, no usable roots.
    pub fn new(url: &str, ca_file: Option<&std::path::Path>) -> Result<Self, AlertsError> {
        let mut hook = Self::parse(url)?;
        if hook.https {
            let pem = ca_file
                .map(std::fs::read_to_string)
                .transpose()
                .map_err(AlertsError::CaFile)?;
            hook.tls = Some(crate::tls::client(pem.as_deref())?);
        }
        Ok(hook)
    }

    /// POSTs the alert as JSON; a 2xx answer is success.
    async fn post(&self, alert: &Alert) -> std::io::Result<()> {
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(&self.authority),
        )
        .await
        .map_err(|_| std::io::Error::other("connect timeout"))??;
        match &self.tls {
            None => self.exchange(stream, alert).await,
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(
                    self.host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string(),
                )
                .map_err(std::io::Error::other)?;
                let stream =
                    tokio::time::timeout(Duration::from_secs(10), tls.connect(name, stream))
                        .await
                        .map_err(|_| std::io::Error::other("TLS handshake timeout"))??;
                self.exchange(stream, alert).await
            }
        }
    }

    async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        alert: &Alert,
    ) -> std::io::Result<()> {
        let body = serde_json::to_vec(alert).map_err(std::io::Error::other)?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.path,
            self.host,
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.flush().await?;
        let mut reply = Vec::new();
        // A server that closes without a TLS close_notify still answered: keep what came.
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            (&mut stream).take(64 * 1024).read_to_end(&mut reply),
        )
        .await
        .map_err(|_| std::io::Error::other("no answer"))?;
        if reply.is_empty() {
            read?;
        }
        let status = String::from_utf8_lossy(&reply);
        match status.split_whitespace().nth(1) {
            Some(code) if code.starts_with('2') => Ok(()),
            other => Err(std::io::Error::other(format!(
                "webhook answered {}",
                other.unwrap_or("nothing")
            ))),
        }
    }
}
