//! `sidestep suppressions`: the suppression list through the running relay's admin API
//! — list, add, remove, and CSV import/export (`address,scope,reason,at,expires,site,reply`;
//! import reads the address and the scope, `*` or empty for everyone).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use super::admin_client::{self, encode};
use crate::suppression::Entry;

/// What `sidestep suppressions` does.
#[derive(Debug, clap::Subcommand)]
pub enum SuppressionsAction {
    /// Every suppressed address (the default).
    List,
    /// Suppress an address by hand.
    Add {
        /// The address.
        address: String,
        /// The sender domain it is refused to; default: everyone.
        #[arg(long)]
        scope: Option<String>,
    },
    /// Let an address through again (every scope unless `--scope`).
    Remove {
        /// The address.
        address: String,
        /// Only this scope (a sender domain, or `*`).
        #[arg(long)]
        scope: Option<String>,
    },
    /// Suppress every address of a CSV file (`address[,scope]` per line; a header line
    /// starting with `address` is skipped).
    Import {
        /// The CSV file.
        file: std::path::PathBuf,
    },
    /// The list as CSV on standard output.
    Export,
}

/// Runs `action` against the relay's admin API.
pub async fn suppressions(
    config_path: Option<&Path>,
    action: Option<SuppressionsAction>,
    json: bool,
) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    let path = "/api/v1/suppressions";
    let query = |address: &str, scope: Option<&str>| {
        let mut q = format!("{path}?address={}", encode(address));
        if let Some(s) = scope.filter(|s| !s.is_empty()) {
            let _ = write!(q, "&scope={}", encode(s));
        }
        q
    };
    match action.unwrap_or(SuppressionsAction::List) {
        SuppressionsAction::List => {
            let body = admin_client::get(&config, path).await?;
            if json {
                println!("{}", String::from_utf8_lossy(&body).trim_end());
                return Ok(());
            }
            let entries: Vec<Entry> = serde_json::from_slice(&body)?;
            if entries.is_empty() {
                println!("no address suppressed");
            }
            for e in entries {
                println!(
                    "{}  scope {}  {}{} at {} from {} until {}: {}",
                    e.address,
                    e.scope,
                    e.reason.word(),
                    if e.late { " (late)" } else { "" },
                    crate::clock::rfc3339(e.at),
                    e.site.as_deref().unwrap_or("-"),
                    crate::clock::rfc3339(e.expires),
                    e.reply
                );
            }
        }
        SuppressionsAction::Add { address, scope } => {
            let body =
                admin_client::request(&config, "POST", &query(&address, scope.as_deref())).await?;
            if json {
                println!("{}", String::from_utf8_lossy(&body).trim_end());
            } else {
                println!("{address} suppressed");
            }
        }
        SuppressionsAction::Remove { address, scope } => {
            let body = admin_client::request(&config, "DELETE", &query(&address, scope.as_deref()))
                .await?;
            if json {
                println!("{}", String::from_utf8_lossy(&body).trim_end());
            } else {
                println!("{address} no longer suppressed");
            }
        }
        SuppressionsAction::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let mut added = 0;
            for line in text.lines() {
                let mut fields = line.split(',').map(|f| f.trim().trim_matches('"'));
                let address = fields.next().unwrap_or("");
                if address.is_empty() || address.eq_ignore_ascii_case("address") {
                    continue;
                }
                let scope = fields.next().filter(|s| *s != "*");
                admin_client::request(&config, "POST", &query(address, scope)).await?;
                added += 1;
            }
            println!("{added} address(es) suppressed");
        }
        SuppressionsAction::Export => {
            let body = admin_client::get(&config, path).await?;
            let entries: Vec<Entry> = serde_json::from_slice(&body)?;
            let mut out = String::from("address,scope,reason,at,expires,site,reply\n");
            for e in entries {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},\"{}\"",
                    e.address,
                    e.scope,
                    e.reason.kind(),
                    crate::clock::rfc3339(e.at),
                    crate::clock::rfc3339(e.expires),
                    e.site.as_deref().unwrap_or(""),
                    e.reply.replace('"', "\"\"")
                );
            }
            print!("{out}");
        }
    }
    Ok(())
}
