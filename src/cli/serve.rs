use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::classify::Classifier;
use crate::inbound::{self, Inbound};
use crate::outbound::Outbound;
use crate::queue::{self, QueueContext};
use crate::reputation::{self, Reputation};
use crate::routing::Resolver;
use crate::spool::Spool;

/// `sidestep serve`: wires the pipeline together and runs until killed.
///
/// Prints `sidestep listening on ADDR` on stdout once the port is open, so scripts and
/// tests that asked for port 0 learn the port.
pub async fn serve(config_path: Option<&Path>) -> anyhow::Result<()> {
    let config = Arc::new(super::load_config(config_path)?);
    let spool = Spool::open(&config.spool.directory)
        .with_context(|| format!("opening spool {}", config.spool.directory.display()))?;
    let resolver = Resolver::new(&config.dns).context("setting up DNS")?;
    let reputation = Reputation::open(config.blocklists.clone(), &config.spool.directory)
        .context("loading listing state")?;
    reputation::spawn_monitor(
        reputation.clone(),
        resolver.clone(),
        config.egress_ips(),
        config.listings.clone(),
    );
    let outbound =
        Outbound::new(&config, resolver, reputation.clone()).context("setting up delivery")?;
    let ctx = Arc::new(QueueContext::new(
        config.clone(),
        spool.clone(),
        outbound,
        reputation,
        Arc::new(Classifier::new(&config.classify.rules).context("loading classification rules")?),
    ));
    let queue = queue::start(ctx).context("recovering the queue")?;

    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("listening on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    println!("sidestep listening on {addr}");
    // On a worker, not in `block_on`: the main thread would otherwise be woken for every
    // connection only to hand the session over to a worker.
    let accept = tokio::spawn(inbound::serve(
        listener,
        Arc::new(Inbound {
            config,
            spool,
            queue,
        }),
    ));
    tokio::select! {
        stopped = accept => stopped.context("the accept loop stopped")?,
        signal = stop_signal() => {
            let signal = signal.context("waiting for signals")?;
            // What is spooled stays spooled: messages not yet answered `250` were never
            // acknowledged, deliveries cut short are retried after the restart.
            tracing::info!(signal, "stopping");
        }
    }
    Ok(())
}

/// SIGTERM (service managers) or SIGINT (Ctrl-C): the caller returns, so that `main`
/// writes out pending log lines before the process exits.
async fn stop_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
