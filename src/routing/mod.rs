//! Where a delivery goes and from which address: MX lookup (RFC 5321 §5.1), the egress
//! pool rotation, and whether the destination site is reachable at all ([`health`]).

pub mod health;
mod pool;

pub use health::{Admission, DownSite, SiteHealth};
pub use pool::Pool;
