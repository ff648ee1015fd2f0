use std::process::ExitCode;

use clap::Parser;
use sidestep::cli::{self, Cli, Command};
use tracing_subscriber::fmt::MakeWriter;

/// jemalloc instead of glibc's malloc: on the realistic benchmark glibc's allocator took
/// 8% of the relay's CPU (buffers allocated on one tokio worker and freed on another,
/// arena locks, consolidation before each large body buffer). jemalloc: CPU per message
/// 0.87x, peak RSS 0.93x, alternated runs. mimalloc cut as much CPU but doubled the RSS.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = match start_logs(&cli.command) {
        Ok(logs) => logs,
        Err(code) => return code,
    };
    let result = run(cli.command);
    // Everything logged is out before the error, if any, is printed.
    drop(logs);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sidestep: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts logging. The relay logs lines per message: batched (the writer is returned and
/// flushed when dropped). The one-shot commands write theirs at once, between their own
/// output.
fn start_logs(command: &Command) -> Result<Option<cli::BatchedStderr>, ExitCode> {
    let logs = match command {
        Command::Serve { .. } => match cli::BatchedStderr::start() {
            Ok(logs) => Some(logs),
            Err(e) => {
                eprintln!("sidestep: cannot start the log writer: {e}");
                return Err(ExitCode::FAILURE);
            }
        },
        _ => None,
    };
    // The relay's log format comes from its config; a config that does not load is
    // reported by `serve` itself, in the default format.
    let json = match command {
        Command::Serve { config: Some(path) } => sidestep::config::Config::load(path)
            .is_ok_and(|c| c.log.format == sidestep::config::LogFormat::Json),
        _ => false,
    };
    match &logs {
        Some(logs) => init_logs(logs.make_writer(), json),
        None => init_logs(std::io::stderr, json),
    }
    Ok(logs)
}

/// Runs one command.
fn run(command: Command) -> anyhow::Result<ExitCode> {
    let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    match command {
        Command::CheckConfig { config, path } => Ok(cli::check_config(config.or(path).as_deref())),
        Command::Serve { config } => done(run_to_end(cli::serve(config.as_deref()))),
        Command::Listings { config, json } => done(cli::listings(config.as_deref(), json)),
        Command::Classify {
            config,
            json,
            learned,
            eval,
            floor,
            reply,
        } => {
            let mode = match (&eval, learned) {
                (Some(file), _) => cli::ClassifyMode::Eval { file, floor },
                (None, true) => cli::ClassifyMode::Learned,
                (None, false) => cli::ClassifyMode::Replies(reply.as_deref()),
            };
            done(cli::classify(config.as_deref(), mode, json))
        }
        Command::Blocks { config, json } => done(cli::blocks(config.as_deref(), json)),
        Command::DelistReport { config, json, ip } => {
            done(cli::delist_report(config.as_deref(), ip, json))
        }
        Command::Queue {
            config,
            json,
            action,
        } => done(run_to_end(cli::queue(
            config.as_deref(),
            queue_view(action.as_ref()),
            json,
        ))),
        Command::Flush {
            config,
            json,
            domain,
            site,
            egress,
            id,
        } => {
            let c = cli::QueueCommand::Flush {
                id: id.as_deref(),
                filter: cli::QueueFilter {
                    domain: domain.as_deref(),
                    site: site.as_deref(),
                    egress: egress.as_deref(),
                },
            };
            done(run_to_end(cli::queue_command(config.as_deref(), c, json)))
        }
        Command::Hold { config, json, id } => done(run_to_end(cli::queue_command(
            config.as_deref(),
            cli::QueueCommand::Hold(&id),
            json,
        ))),
        Command::Release { config, json, id } => done(run_to_end(cli::queue_command(
            config.as_deref(),
            cli::QueueCommand::Release(&id),
            json,
        ))),
        Command::Delete {
            config,
            json,
            bounce,
            id,
        } => done(run_to_end(cli::queue_command(
            config.as_deref(),
            cli::QueueCommand::Delete {
                id: &id,
                bounce: bounce.as_deref(),
            },
            json,
        ))),
        Command::Suspend {
            config,
            json,
            site,
            period,
            reason,
            ip,
        } => done(run_to_end(cli::suspension(
            config.as_deref(),
            ip,
            site.as_deref(),
            Some((&period, &reason)),
            json,
        ))),
        Command::Lift {
            config,
            json,
            site,
            ip,
        } => done(run_to_end(cli::suspension(
            config.as_deref(),
            ip,
            site.as_deref(),
            None,
            json,
        ))),
        Command::Reload { config, json } => done(run_to_end(cli::reload(config.as_deref(), json))),
        Command::Senders {
            config,
            json,
            action,
        } => {
            let release = action
                .as_ref()
                .map(|cli::SendersAction::Release { name, bounce }| (name.as_str(), *bounce));
            done(run_to_end(cli::senders(config.as_deref(), release, json)))
        }
        Command::Tls {
            domain,
            report,
            config,
            json,
        } => done(run_to_end(cli::tls(
            config.as_deref(),
            domain.as_deref(),
            report.as_deref(),
            json,
        ))),
        Command::Warmup { config, json } => done(run_to_end(cli::warmup(config.as_deref(), json))),
        Command::Probes { config, json } => done(run_to_end(cli::probes(config.as_deref(), json))),
        Command::Complaints { config, json } => {
            done(run_to_end(cli::complaints(config.as_deref(), json)))
        }
        Command::Suppressions {
            config,
            json,
            action,
        } => done(run_to_end(cli::suppressions(
            config.as_deref(),
            action,
            json,
        ))),
        Command::Auth {
            domain,
            config,
            json,
        } => done(run_to_end(cli::auth(config.as_deref(), &domain, json))),
        Command::Passwd { name, domains } => done(cli::passwd(&name, &domains)),
        Command::Dkim { action } => done(dkim(action)),
        Command::DnsblCheck { config, json, ips } => {
            done(run_to_end(cli::dnsbl_check(config.as_deref(), &ips, json)))
        }
    }
}

/// What `sidestep queue [list|show]` shows.
fn queue_view(action: Option<&cli::QueueAction>) -> cli::QueueView<'_> {
    match action {
        None => cli::QueueView::Summary,
        Some(cli::QueueAction::List {
            domain,
            site,
            egress,
            state,
            limit,
        }) => cli::QueueView::List {
            filter: cli::QueueFilter {
                domain: domain.as_deref(),
                site: site.as_deref(),
                egress: egress.as_deref(),
            },
            state: state.as_deref(),
            limit: *limit,
        },
        Some(cli::QueueAction::Show { id }) => cli::QueueView::Show { id },
    }
}

/// `sidestep dkim keygen|check`.
fn dkim(action: cli::DkimAction) -> anyhow::Result<()> {
    match action {
        cli::DkimAction::Keygen {
            domain,
            selector,
            algorithm,
            bits,
            out,
        } => cli::dkim_keygen(&domain, &selector, algorithm.into(), bits, &out),
        cli::DkimAction::Check { config, json } => {
            run_to_end(cli::dkim_check(config.as_deref(), json))
        }
    }
}

fn init_logs<W: for<'a> MakeWriter<'a> + Send + Sync + 'static>(writer: W, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if json {
        builder.json().with_current_span(false).init();
    } else {
        // Colour codes in a log file break every grep an operator runs on it.
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn run_to_end(future: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e}"))?;
    let result = runtime.block_on(future);
    // Tasks still running (sessions, deliveries) are dropped where they wait; what they
    // had spooled stays spooled. Bounded, so that a stuck blocking call cannot hold up
    // the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}
