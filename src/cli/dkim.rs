use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::config::DkimAlgorithm;
use crate::dns::Resolver;
use crate::signing::published::{self, Publication};
use crate::signing::{Signer, keygen};

/// `sidestep dkim keygen`: writes a new private key to `out` (mode 0600, never over an
/// existing file) and prints the TXT record to publish.
pub fn dkim_keygen(
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
    bits: usize,
    out: &Path,
) -> anyhow::Result<()> {
    let key = keygen::generate(algorithm, bits)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "cannot create {} (an existing key is never replaced)",
                out.display()
            )
        })?;
    file.write_all(key.pem.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", out.display()))?;
    let name = format!("{selector}._domainkey.{}", domain.trim_end_matches('.'));
    println!("{}", keygen::zone_line(&name, &key.record));
    eprintln!(
        "key written to {}; publish the record above, then add to the config:\n\n\
         [[dkim.keys]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nprivate_key = \"{}\"\nalgorithm = \"{}\"",
        out.display(),
        out.display(),
        algorithm.name()
    );
    Ok(())
}

/// One key's line of `sidestep dkim check`.
#[derive(Serialize)]
struct KeyReport {
    domain: String,
    selector: String,
    algorithm: &'static str,
    name: String,
    #[serde(flatten)]
    publication: Publication,
}

/// `sidestep dkim check`: asks the configured resolver for each configured key's record
/// and says whether it publishes that key. Fails when any is not published.
pub async fn dkim_check(config_path: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    let signer = Signer::load(&config.dkim).map_err(|problems| {
        anyhow::anyhow!(
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    if signer.keys().is_empty() {
        anyhow::bail!("no [[dkim.keys]] configured");
    }
    let resolver = Resolver::new(&config.dns).context("setting up DNS")?;
    let mut reports = Vec::new();
    for key in signer.keys() {
        reports.push(KeyReport {
            domain: key.domain.clone(),
            selector: key.selector.clone(),
            algorithm: key.algorithm.name(),
            name: key.record_name(),
            publication: published::check(&resolver, key).await,
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            let state = match &r.publication {
                Publication::Published => "published".to_string(),
                Publication::Missing => "missing: no DKIM record".to_string(),
                Publication::Mismatch(why) => format!("mismatch: {why}"),
                Publication::Error(why) => format!("error: {why}"),
            };
            println!("{} ({}): {state}", r.name, r.algorithm);
        }
    }
    let bad = reports
        .iter()
        .filter(|r| r.publication != Publication::Published)
        .count();
    if bad > 0 {
        anyhow::bail!("{bad} of {} key(s) not published", reports.len());
    }
    Ok(())
}
