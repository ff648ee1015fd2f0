use std::process::ExitCode;

use clap::Parser;
use sidestep::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes in a log file break every grep an operator runs on it.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::CheckConfig { path } => cli::check_config(path.as_deref()),
        Command::Serve { config } => run(cli::serve(config.as_deref())),
        Command::Listings { config, json } => report(cli::listings(config.as_deref(), json)),
        Command::Classify {
            config,
            json,
            reply,
        } => report(cli::classify(config.as_deref(), reply.as_deref(), json)),
        Command::Blocks { config, json } => report(cli::blocks(config.as_deref(), json)),
        Command::DelistReport { config, json, ip } => {
            report(cli::delist_report(config.as_deref(), ip, json))
        }
        Command::DnsblCheck { config, json, ips } => {
            run(cli::dnsbl_check(config.as_deref(), &ips, json))
        }
    }
}

fn run(future: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => report(runtime.block_on(future)),
        Err(e) => {
            eprintln!("sidestep: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidestep: {e:#}");
            ExitCode::FAILURE
        }
    }
}
