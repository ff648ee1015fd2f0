//! Where a delivery goes and from which address: MX lookup (RFC 5321 §5.1), the egress
//! pool rotation, whether the destination site is reachable at all ([`health`]), and
//! how fast it may be sent to ([`shaping`]).

pub mod health;
mod pool;
pub mod shaping;

pub use health::{Admission, DownSite, HealthChange, ProbePace, SiteHealth};
pub use pool::Pool;
pub use shaping::{Pending, Shape, Shaper, SharedSlots};
