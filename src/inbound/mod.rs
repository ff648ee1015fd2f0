//! Inbound SMTP: the relay port. `listener` accepts and limits connections, `session`
//! runs the state machine, one file per command group, `policy` decides relay permission.

mod data;
mod ehlo;
mod envelope;
pub mod limits;
mod listener;
pub mod policy;
mod reply;
mod session;

pub use limits::Sessions;
pub use listener::{Inbound, serve};
pub use reply::Reply;
pub use session::Session;
