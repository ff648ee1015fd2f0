use std::path::Path;

/// `sidestep blocks`: every block learned from destinations' replies, with its evidence.
pub fn blocks(config_path: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    let report = super::load_state(&config)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report.blocks)?);
        return Ok(());
    }
    if report.blocks.is_empty() {
        println!("no blocks: no destination has refused an egress IP");
    }
    for b in &report.blocks {
        print!("{}", b.report("", crate::clock::Clock::system().now()));
    }
    Ok(())
}

pub(super) fn when(unix: u64) -> String {
    crate::clock::rfc3339(unix)
}
