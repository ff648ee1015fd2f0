//! The Redis connection: the client `[cluster]` describes, a connection kept for the next
//! command with a backoff after a failure, and the few commands every concern shares.

use std::path::PathBuf;
use std::time::Duration;

use redis::{AsyncCommands, IntoConnectionInfo};

use crate::config::ClusterConfig;

/// What can go wrong making the Redis client of `[cluster]`.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `cluster.redis` does not parse as a Redis URL.
    #[error("{url}: {error}")]
    Url {
        /// The URL as configured.
        url: String,
        /// What redis says of it.
        error: redis::RedisError,
    },
    /// `cluster.password_file` cannot be read.
    #[error("{}: {error}", path.display())]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        error: std::io::Error,
    },
    /// `cluster.ca_file` cannot be read.
    #[error("{}: {error}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        error: std::io::Error,
    },
    /// redis refuses to make a client of the settings (a CA file without certificates).
    #[error("{0}")]
    Client(redis::RedisError),
}

/// The Redis client for `[cluster]`, with the password from its file.
///
/// # Errors
/// The URL does not parse or the password file cannot be read.
pub fn client(config: &ClusterConfig) -> Result<Option<redis::Client>, ClusterError> {
    let Some(url) = config.redis.as_deref().filter(|u| !u.trim().is_empty()) else {
        return Ok(None);
    };
    let mut info: redis::ConnectionInfo =
        url.into_connection_info()
            .map_err(|error| ClusterError::Url {
                url: url.to_string(),
                error,
            })?;
    if let Some(path) = &config.password_file {
        let text = std::fs::read_to_string(path).map_err(|error| ClusterError::PasswordFile {
            path: path.clone(),
            error,
        })?;
        info.redis.password = Some(text.lines().next().unwrap_or_default().to_string());
    }
    match &config.ca_file {
        // rediss:// with a private CA; without one, the system's roots.
        Some(path) if url.starts_with("rediss://") => {
            let pem = std::fs::read(path).map_err(|error| ClusterError::CaFile {
                path: path.clone(),
                error,
            })?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
        _ => redis::Client::open(info),
    }
    .map(Some)
    .map_err(ClusterError::Client)
}

/// How long connecting to Redis or a command may take on the delivery path: past it,
/// the node counts alone (degraded) rather than delay mail.
pub(super) const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failure, the next connection attempt waits this long.
const REDIS_RETRY: Duration = Duration::from_secs(1);

/// A connection kept for the next command, made again after a failure.
pub(super) struct Conn {
    pub(super) client: redis::Client,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// After a failure, no new attempt before this: a Redis that does not answer must
    /// not cost every delivery a connection timeout (a monotonic deadline, not a time of
    /// day).
    retry_after: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Conn {
    pub(super) fn new(client: redis::Client) -> Self {
        Self {
            client,
            conn: tokio::sync::Mutex::new(None),
            retry_after: std::sync::Mutex::new(None),
        }
    }

    /// The kept connection, or a new one; `None` while Redis is unreachable (at once
    /// within [`REDIS_RETRY`] of a failure).
    pub(super) async fn get(&self) -> Option<redis::aio::MultiplexedConnection> {
        let waiting = self
            .retry_after
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| std::time::Instant::now() < t);
        if waiting {
            return None;
        }
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            *conn = connect(&self.client).await.ok();
            if conn.is_none() {
                self.failed();
            }
        }
        conn.clone()
    }

    /// A command failed: the next one connects again, after [`REDIS_RETRY`].
    pub(super) async fn reset(&self) {
        *self.conn.lock().await = None;
        self.failed();
    }

    fn failed(&self) {
        *self.retry_after.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(std::time::Instant::now() + REDIS_RETRY);
    }
}

/// A connection that gives up within [`REDIS_TIMEOUT`] (connecting and per command).
pub(super) async fn connect(
    client: &redis::Client,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(REDIS_TIMEOUT)
        .set_response_timeout(REDIS_TIMEOUT);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Publishes `message` on `channel` (news only: lost while Redis is away).
pub(super) async fn announce(conn: &Conn, channel: &str, message: serde_json::Result<String>) {
    let (Some(mut c), Ok(message)) = (conn.get().await, message) else {
        return;
    };
    let sent: redis::RedisResult<()> = c.publish(channel, message).await;
    if sent.is_err() {
        conn.reset().await;
    }
}

/// The keys under `prefix`, by SCAN.
pub(super) async fn keys(
    c: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(500)
            .query_async(c)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rediss_with_a_ca_file_trusts_that_ca_and_a_bad_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let config = ClusterConfig {
            redis: Some("rediss://127.0.0.1:6380/0".into()),
            ca_file: Some(ca),
            ..ClusterConfig::default()
        };
        // Nothing parses as a certificate: no roots at all, which redis refuses.
        let plain = ClusterConfig {
            redis: Some("redis://127.0.0.1:6379/0".into()),
            ..ClusterConfig::default()
        };
        assert!(client(&plain).unwrap().is_some());
        let tls = client(&config);
        if let Ok(Some(c)) = &tls {
            let addr = format!("{:?}", c.get_connection_info().addr);
            assert!(addr.contains("tls_params: Some"), "{addr}");
        }
    }
}
