//! What sidestep knows about the standing of its own egress IPs.
//!
//! - [`dnsbl`]: RFC 5782 queries and the rules for what an answer means (pure).
//! - `listings`: the state per (egress IP, list), shared with routing through the cheap
//!   [`Reputation`] handle, and persisted so it survives restarts.
//! - [`learned`]: refusals a second egress IP got past, which no rule knew.
//! - `monitor`: the task that asks every list about every egress IP on a schedule.

pub mod blocks;
pub mod dnsbl;
pub mod learned;
mod listings;
mod monitor;
mod store;

pub use blocks::{Block, Evidence};
pub use learned::LearnedReply;
pub use listings::{
    BlockUpdate, CheckError, ListHealth, ListingRecord, ListingState, Reputation, ReputationReport,
    Standing,
};
pub use monitor::{CheckOutcome, check_all, spawn_monitor};
pub use store::read_report;
