//! The DNSBL monitor: on start and then every `listings.refresh`, ask every list about
//! every egress IP. A list that cannot be reached keeps its last known state; DNS trouble
//! never stops delivery.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use rand::Rng;
use tokio::task::JoinSet;

use super::Reputation;
use super::dnsbl::{Finding, check_test_points, interpret, query_name};
use super::listings::{CheckOutcome, FindingResult};
use crate::config::{BlocklistConfig, ListingsConfig};
use crate::dns::Resolver;

/// Checks every IP against every list once. Lists are asked in parallel; each query
/// starts after a random delay up to `jitter`.
pub async fn check_all(
    resolver: &Resolver,
    lists: &[BlocklistConfig],
    ips: &[IpAddr],
    jitter: Duration,
) -> CheckOutcome {
    let mut tasks = JoinSet::new();
    for list in lists {
        tasks.spawn(check_list(
            resolver.clone(),
            list.clone(),
            ips.to_vec(),
            jitter,
        ));
    }
    let mut outcome = CheckOutcome::default();
    while let Some(done) = tasks.join_next().await {
        if let Ok((health, findings)) = done {
            outcome.health.push(health);
            outcome.findings.extend(findings);
        }
    }
    outcome
}

async fn check_list(
    resolver: Resolver,
    list: BlocklistConfig,
    ips: Vec<IpAddr>,
    jitter: Duration,
) -> (
    (String, Result<Option<String>, String>),
    Vec<(IpAddr, String, FindingResult)>,
) {
    let health = if list.test_points {
        let ask = |ip: Ipv4Addr| {
            let resolver = resolver.clone();
            let name = query_name(IpAddr::V4(ip), &list.zone);
            async move { resolver.lookup_dnsbl(&name).await }
        };
        let (positive, negative) =
            tokio::join!(ask(Ipv4Addr::new(127, 0, 0, 2)), ask(Ipv4Addr::LOCALHOST));
        match (positive, negative) {
            (Ok(p), Ok(n)) => Ok(check_test_points(
                p.as_ref().map(|(c, _)| c.as_slice()),
                n.as_ref().map(|(c, _)| c.as_slice()),
                &list,
            )),
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
        }
    } else {
        Ok(None)
    };
    // A broken list is ignored: its answers about our IPs mean nothing.
    if matches!(health, Ok(Some(_))) {
        return ((list.zone.clone(), health), Vec::new());
    }
    let mut tasks = JoinSet::new();
    for ip in ips {
        let resolver = resolver.clone();
        let list = list.clone();
        let delay = if jitter.is_zero() {
            Duration::ZERO
        } else {
            rand::rng().random_range(Duration::ZERO..jitter)
        };
        tasks.spawn(async move {
            tokio::time::sleep(delay).await;
            let name = query_name(ip, &list.zone);
            let result = match resolver.lookup_dnsbl(&name).await {
                Ok(answer) => {
                    let finding = interpret(answer.as_ref().map(|(c, _)| c.as_slice()), &list);
                    let reason = match &finding {
                        Finding::Listed { .. } => resolver
                            .lookup_txt(&name)
                            .await
                            .ok()
                            .filter(|t| !t.is_empty())
                            .map(|t| t.join(" ")),
                        _ => None,
                    };
                    Ok((finding, reason))
                }
                Err(e) => Err(e.to_string()),
            };
            (ip, list.zone.clone(), result)
        });
    }
    let mut findings = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(f) = done {
            findings.push(f);
        }
    }
    ((list.zone.clone(), health), findings)
}

/// Runs the monitor for the life of the process.
pub fn spawn_monitor(
    reputation: Reputation,
    resolver: Resolver,
    egress: Vec<(IpAddr, String)>,
    config: ListingsConfig,
    require_fcrdns: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if egress.is_empty() {
            return;
        }
        let ips: Vec<IpAddr> = egress.iter().map(|(ip, _)| *ip).collect();
        let mut asked = false;
        loop {
            // Reverse DNS first: a missing PTR takes an IP out (with require_fcrdns)
            // before the lists are asked.
            let hygiene =
                super::hygiene::check_all(&resolver, &egress, reputation.clock().now()).await;
            reputation.set_hygiene(hygiene, require_fcrdns);
            let lists = reputation.lists();
            // In a cluster one node asks the lists per refresh (the operator's request
            // is always this node's own).
            let shared = reputation.shared.shared_listings.get().cloned();
            if let Some(shared) = &shared
                && !asked
                && !shared.elect(config.refresh.get()).await
            {
                tracing::debug!("another node asks the blocklists this refresh");
                asked = wait_for_refresh(&reputation, &config).await;
                continue;
            }
            let outcome = check_all(&resolver, &lists, &ips, config.jitter.get()).await;
            if let Some(shared) = &shared {
                shared.publish(&outcome);
            }
            let queries = outcome.findings.len();
            let apply = {
                let reputation = reputation.clone();
                tokio::task::spawn_blocking(move || reputation.apply(outcome)).await
            };
            match apply {
                Ok(Ok(())) => tracing::debug!(queries, "blocklist refresh done"),
                Ok(Err(e)) => tracing::error!(error = %e, "cannot persist listing state"),
                Err(e) => tracing::error!(error = %e, "listing refresh panicked"),
            }
            asked = wait_for_refresh(&reputation, &config).await;
        }
    })
}

/// The next refresh at its time, or at once when the operator asks (`POST
/// /api/v1/listings/refresh`): `true` then.
async fn wait_for_refresh(reputation: &Reputation, config: &ListingsConfig) -> bool {
    tokio::select! {
        () = tokio::time::sleep(config.refresh.get()) => false,
        () = reputation.refresh_requested() => {
            tracing::info!("blocklist refresh requested by the operator");
            true
        }
    }
}
