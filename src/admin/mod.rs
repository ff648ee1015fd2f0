//! The admin HTTP API: what the CLI and the operator ask of a running relay.
//!
//! Off the public internet by default (`[admin] listen = "127.0.0.1:8025"`). A client in
//! `[admin] trusted_networks` (loopback by default) needs no credentials; any other needs
//! `Authorization: Bearer <token>` with the token of `[admin] token_file`, and without a
//! token file it is refused. Wrong
//! tokens get `401`, and an address with too many of them gets `429` for a minute.
//!
//! - [`api`]: the request and response types, shared with the CLI.
//! - `page`: `/`, the status page for people.
//! - `health`: `/healthz` (alive) and `/readyz` (spool writable, queue answering).
//! - `metrics`: `/metrics` in the Prometheus text format.
//! - `queue`: `/api/v1/queue` (summary), `/api/v1/queue/messages` (listing, filters,
//!   paging), `/api/v1/queue/messages/{id}` (one message).
//! - [`control`]: `POST /api/v1/queue/flush`, `POST …/{id}/hold`, `POST …/{id}/release`,
//!   `DELETE …/{id}` (`?bounce=REASON` sends the sender a DSN).
//! - [`blocks`]: `GET /api/v1/blocks`, `POST /api/v1/blocks/suspend?ip=&site=&for=&reason=`,
//!   `POST /api/v1/blocks/lift?ip=&site=`, `GET /api/v1/listings`,
//!   `POST /api/v1/listings/refresh`.
//! - [`auth`]: `GET /api/v1/auth?domain=` (without a domain: the sender domains seen
//!   in the last day).
//! - `GET /api/v1/warmup`, `GET /api/v1/probes`, `GET /api/v1/complaints`,
//!   `GET /api/v1/auth/lockouts`.
//! - `suppressions`: `GET /api/v1/suppressions`, `POST` and `DELETE
//!   /api/v1/suppressions?address=&scope=`.

pub mod api;
pub mod auth;
pub mod blocks;
mod chart;
pub mod control;
mod health;
mod metrics;
mod page;
mod queue;
mod suppressions;
mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::clock::Clock;
use crate::queue::QueueHandle;
use crate::spool::Spool;

/// Wrong tokens from one address within [`FAILURE_WINDOW`] before it gets `429`.
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// `GET /api/v1/warmup`: each warming egress IP, its day, cap and today's counts.
async fn warmup(State(admin): State<Admin>) -> axum::Json<Vec<crate::reputation::WarmupStatus>> {
    axum::Json(admin.reputation.warmup_status())
}

/// `GET /api/v1/probes`: each (egress IP, seed)'s latest probe: sent, arrived (where),
/// missing, refused.
async fn probes(State(admin): State<Admin>) -> axum::Json<Vec<crate::probes::ProbeRecord>> {
    axum::Json(admin.probes.list())
}

/// `GET /api/v1/complaints`: feedback-loop complaints per sender and egress IP, and the
/// latest reports.
async fn complaints(State(admin): State<Admin>) -> axum::Json<crate::complaints::ComplaintsView> {
    axum::Json(admin.complaints.view())
}

/// `GET /api/v1/auth/lockouts`: client addresses locked out of SMTP AUTH now.
async fn lockouts(State(admin): State<Admin>) -> axum::Json<Vec<crate::inbound::users::Lockout>> {
    axum::Json(
        admin
            .guard
            .as_ref()
            .map(|g| g.lockouts())
            .unwrap_or_default(),
    )
}

/// Re-reads the configuration and says what happened.
pub type ReloadFn = Arc<dyn Fn() -> api::ReloadOutcome + Send + Sync>;

/// What the handlers share: a cheap clonable handle.
#[derive(Clone)]
pub struct Admin {
    spool: Spool,
    queue: QueueHandle,
    clock: Clock,
    /// The bearer token for clients not in `trusted`; `None`: they are refused.
    token: Option<Arc<str>>,
    /// Clients that need no token (`[admin] trusted_networks`, loopback by default).
    trusted: Arc<[ipnet::IpNet]>,
    /// The relay's name, for DSNs of deleted messages.
    hostname: Arc<str>,
    /// Blocks and suspensions.
    reputation: crate::reputation::Reputation,
    /// The inbound session table, for the sessions gauge.
    sessions: Option<crate::inbound::Sessions>,
    /// Re-reads the configuration (`POST /api/v1/reload`).
    reload: Option<ReloadFn>,
    /// The configured egress IPs, for the status page.
    egress: Arc<[IpAddr]>,
    /// Some mail leaves from the host's default source address (an egress without `ip`,
    /// or no `[[pools]]` at all): the status page shows it as an egress too.
    default_source: bool,
    /// Failed SMTP logins per client address, for `/api/v1/auth/lockouts`.
    guard: Option<Arc<crate::inbound::users::AuthGuard>>,
    /// Suspended senders.
    senders: crate::senders::Senders,
    probes: crate::probes::Probes,
    complaints: crate::complaints::Complaints,
    cluster: Option<std::sync::Arc<crate::cluster::Status>>,
    /// Destination sites marked down.
    site_health: Arc<crate::routing::SiteHealth>,
    /// What `/api/v1/auth` reports from.
    auth: Option<Arc<auth::AuthDesk>>,
    /// Destinations' TLS policies and session counts (`/api/v1/tls`).
    tls: Option<crate::tls_policy::TlsPolicies>,
    /// Per address: the start of its window (Unix ms, system clock) and its wrong tokens.
    failures: Arc<Mutex<HashMap<IpAddr, (u64, u32)>>>,
    /// The suppression list and its settings (`/api/v1/suppressions`).
    suppressions: (
        crate::suppression::Suppressions,
        crate::config::SuppressionConfig,
    ),
}

impl Admin {
    /// The API over this spool and queue; `token` from `[admin] token_file`, `trusted`
    /// from `[admin] trusted_networks`.
    pub fn new(
        spool: Spool,
        queue: QueueHandle,
        token: Option<String>,
        trusted: Vec<ipnet::IpNet>,
        hostname: &str,
        reputation: crate::reputation::Reputation,
    ) -> Self {
        Self {
            reputation,
            sessions: None,
            guard: None,
            senders: crate::senders::Senders::default(),
            probes: crate::probes::Probes::default(),
            complaints: crate::complaints::Complaints::default(),
            cluster: None,
            site_health: Arc::default(),
            auth: None,
            tls: None,
            reload: None,
            egress: Arc::from(Vec::new()),
            default_source: false,
            hostname: hostname.into(),
            spool,
            queue,
            clock: Clock::system(),
            token: token.map(Arc::from),
            trusted: trusted.into(),
            failures: Arc::new(Mutex::new(HashMap::new())),
            suppressions: Default::default(),
        }
    }

    /// Serves `/api/v1/tls` from these policies.
    pub fn with_tls_policies(mut self, tls: crate::tls_policy::TlsPolicies) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Serves `/api/v1/suppressions` from this list (entries added last `config.ttl`).
    pub fn with_suppressions(
        mut self,
        list: crate::suppression::Suppressions,
        config: crate::config::SuppressionConfig,
    ) -> Self {
        self.suppressions = (list, config);
        self
    }

    /// Lists these egress IPs on the status page (even those no list or site mentions).
    pub fn with_egress(mut self, egress: Vec<IpAddr>) -> Self {
        self.egress = egress.into();
        self
    }

    /// Shows the host's default source address as an egress on the status page (some
    /// mail leaves from it).
    pub fn with_default_source(mut self, used: bool) -> Self {
        self.default_source = used;
        self
    }

    /// Serves `POST /api/v1/reload` with this.
    pub fn with_reload(mut self, reload: ReloadFn) -> Self {
        self.reload = Some(reload);
        self
    }

    /// Counts the inbound sessions of this table in `/metrics`.
    pub fn with_sessions(mut self, sessions: crate::inbound::Sessions) -> Self {
        self.sessions = Some(sessions);
        self
    }

    /// Serves `/api/v1/auth/lockouts` from this guard.
    pub fn with_guard(mut self, guard: Arc<crate::inbound::users::AuthGuard>) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Reports the down sites of this health.
    pub fn with_site_health(mut self, health: Arc<crate::routing::SiteHealth>) -> Self {
        self.site_health = health;
        self
    }

    /// Serves `/api/v1/senders` from these.
    pub fn with_senders(mut self, senders: crate::senders::Senders) -> Self {
        self.senders = senders;
        self
    }

    /// The cluster standing `/readyz` shows.
    pub fn with_cluster(mut self, cluster: Option<std::sync::Arc<crate::cluster::Status>>) -> Self {
        self.cluster = cluster;
        self
    }

    /// The complaint counts `/api/v1/complaints` shows.
    pub fn with_complaints(mut self, complaints: crate::complaints::Complaints) -> Self {
        self.complaints = complaints;
        self
    }

    /// Serves `/api/v1/auth` from this.
    pub fn with_auth(mut self, desk: auth::AuthDesk) -> Self {
        self.auth = Some(Arc::new(desk));
        self
    }

    /// The seed probes `/api/v1/probes` shows.
    pub fn with_probes(mut self, probes: crate::probes::Probes) -> Self {
        self.probes = probes;
        self
    }

    /// Whether `ip` sent too many wrong tokens lately; counts this one when `failed`.
    fn over_failures(&self, ip: IpAddr, failed: bool) -> bool {
        let now = crate::clock::Clock::system().now_ms();
        let window = FAILURE_WINDOW.as_millis() as u64;
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() > 10_000 {
            f.retain(|_, (start, _)| now.saturating_sub(*start) < window);
        }
        let (start, count) = f.entry(ip).or_insert((now, 0));
        if now.saturating_sub(*start) >= window {
            *start = now;
            *count = 0;
        }
        if failed {
            *count += 1;
        }
        *count > MAX_FAILURES
    }
}

/// The routes, behind the access check.
pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/", get(page::status_page))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics_text))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/queue", get(queue::summary))
        .route("/api/v1/queue/messages", get(queue::list))
        .route("/api/v1/queue/flush", post(control::flush))
        .route("/api/v1/blocks", get(blocks::list))
        .route("/api/v1/blocks/suspend", post(blocks::suspend))
        .route("/api/v1/blocks/lift", post(blocks::lift))
        .route("/api/v1/listings", get(blocks::listings))
        .route("/api/v1/auth/lockouts", get(lockouts))
        .route("/api/v1/auth", get(auth::report))
        .route(
            "/api/v1/senders/complaint-rates",
            get(auth::complaint_rates),
        )
        .route("/api/v1/warmup", get(warmup))
        .route("/api/v1/tls", get(tls::describe))
        .route("/api/v1/tls/report", post(tls::report))
        .route("/api/v1/probes", get(probes))
        .route("/api/v1/complaints", get(complaints))
        .route(
            "/api/v1/suppressions",
            get(suppressions::list)
                .post(suppressions::add)
                .delete(suppressions::remove),
        )
        .route("/api/v1/senders", get(control::senders))
        .route("/api/v1/senders/bounce-rates", get(control::bounce_rates))
        .route("/api/v1/senders/release", post(control::release_sender))
        .route("/api/v1/listings/refresh", post(blocks::refresh))
        .route(
            "/api/v1/queue/messages/{id}",
            get(queue::show).delete(control::delete),
        )
        .route("/api/v1/queue/messages/{id}/hold", post(control::hold))
        .route(
            "/api/v1/queue/messages/{id}/release",
            post(control::release),
        )
        .layer(middleware::from_fn_with_state(admin.clone(), access))
        .with_state(admin)
}

/// Serves the API on `listener` until `stopping` turns true.
///
/// # Errors
/// The listener failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    admin: Admin,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(admin).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stopping.wait_for(|s| *s).await;
    })
    .await
}

/// `POST /api/v1/reload`: 200 with the outcome when applied, 422 with every problem when
/// the new configuration was refused.
async fn reload(State(admin): State<Admin>) -> Response {
    let Some(reload) = admin.reload.clone() else {
        return (StatusCode::NOT_IMPLEMENTED, "no reload here\n").into_response();
    };
    match tokio::task::spawn_blocking(move || reload()).await {
        Ok(outcome) if outcome.applied => axum::Json(outcome).into_response(),
        Ok(outcome) => (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(outcome)).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Loopback clients pass; others need the bearer token.
async fn access(
    State(admin): State<Admin>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let ip = peer.ip();
    if crate::inbound::policy::may_relay(ip, &admin.trusted) {
        return next.run(request).await;
    }
    let Some(token) = &admin.token else {
        tracing::warn!(client = %ip, "admin: refused a client not on loopback (no token_file)");
        return (
            StatusCode::FORBIDDEN,
            "the admin API serves trusted_networks only; set [admin] token_file to allow others\n",
        )
            .into_response();
    };
    if admin.over_failures(ip, false) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong tokens; wait a minute\n",
        )
            .into_response();
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    admin.over_failures(ip, true);
    tracing::warn!(client = %ip, "admin: wrong or missing bearer token");
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a valid bearer token is needed\n",
    )
        .into_response()
}

/// Compares without stopping at the first difference, so the time taken does not tell
/// how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcdeg"));
        assert!(!same_secret(b"0123", b"01234"));
    }
}
