//! What sidestep knows about the standing of its own egress IPs.
//!
//! - `state`: the cheap [`Reputation`] handle routing reads for every connection, kept in
//!   memory and persisted (`store`) so it survives restarts.
//! - [`dnsbl`]: RFC 5782 queries and the rules for what an answer means (pure).
//! - `listings`: the state per (egress IP, list) and each IP's standing from it.
//! - `monitor`: the task that asks every list about every egress IP on a schedule.
//! - [`blocks`]: refusals learned per (egress IP, site), canaries, expiry.
//! - [`learned`]: refusals a second egress IP got past, which no rule knew.
//! - [`hygiene`]: reverse DNS of our IPs as receivers check it (PTR, FCrDNS, HELO).
//! - [`warmup`]: daily caps per site for new IPs, growing day by day.

pub mod blocks;
mod delisting;
pub mod dnsbl;
pub mod hygiene;
pub mod learned;
mod listings;
mod monitor;
mod removal;
mod state;
mod store;
pub mod warmup;

pub use blocks::{Block, BlockUpdate, Evidence};
pub use hygiene::Hygiene;
pub use learned::LearnedReply;
pub use listings::CheckOutcome;
pub use listings::{CheckError, ListHealth, ListingRecord, ListingState};
pub use monitor::{check_all, spawn_monitor};
pub use removal::find_removal_url;
pub use state::{BlockChange, Reputation, SharedListings};
pub use store::{ReputationReport, StoreError, read_report};
pub use warmup::{Schedule, WarmupStatus, schedules as warmup_schedules};
