use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::dns::Resolver;
use crate::reputation::{Reputation, check_all};

/// `sidestep dnsbl-check IP…`: asks the configured lists about arbitrary addresses once,
/// now, without touching the relay's state.
pub async fn dnsbl_check(
    config_path: Option<&Path>,
    ips: &[IpAddr],
    json: bool,
) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    if config.blocklists.is_empty() {
        anyhow::bail!("no [[blocklists]] configured");
    }
    let resolver = Resolver::new(&config.dns).context("setting up DNS")?;
    let outcome = check_all(&resolver, &config.blocklists, ips, Duration::ZERO).await;
    let reputation = Reputation::in_memory(config.blocklists.clone());
    reputation.apply(outcome)?;
    // Reverse DNS too, against the HELO the IP announces if it is one of ours.
    let helos = config.egress_helos();
    let egress: Vec<(IpAddr, String)> = ips
        .iter()
        .map(|ip| {
            let helo = helos
                .iter()
                .find(|(e, _)| e == ip)
                .map_or_else(|| config.server.hostname.clone(), |(_, h)| h.clone());
            (*ip, helo)
        })
        .collect();
    reputation.set_hygiene(
        crate::reputation::hygiene::check_all(
            &resolver,
            &egress,
            crate::clock::Clock::system().now(),
        )
        .await,
        false,
    );
    print!(
        "{}",
        super::listings::render(&config, ips, &reputation.report(), json)
    );
    Ok(())
}
