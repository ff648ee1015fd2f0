//! Inbound SMTP: the relay port. `listener` accepts and limits connections, `session`
//! runs the state machine, one file per command group, `policy` decides relay permission.

mod data;
mod ehlo;
mod envelope;
mod listener;
pub mod policy;
mod reply;
mod session;

pub use listener::{Inbound, Sessions, serve};
pub use reply::Reply;
pub use session::Session;
