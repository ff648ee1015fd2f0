//! Where a delivery goes and from which address: MX lookup (RFC 5321 §5.1) and the
//! egress pool rotation.

mod dns;
mod pool;
mod site;

pub use dns::{DnsError, MxHost, Resolver};
pub use pool::{EgressIp, Pool};
pub use site::Site;
