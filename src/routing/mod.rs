//! Where a delivery goes and from which address: MX lookup (RFC 5321 §5.1) and the
//! egress pool rotation.

mod pool;

pub use pool::Pool;
