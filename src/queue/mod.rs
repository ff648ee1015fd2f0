//! The queue: one scheduler task owns every due time; attempts run as tasks and report
//! back. Retry math is a pure function; DSNs are built here.

mod attempt;
mod context;
mod domain;
pub mod dsn;
mod error;
mod handle;
pub mod letter;
mod local;
pub mod notice;
pub mod operator;
pub mod retry;
mod scheduler;
mod suppress;
#[cfg(test)]
mod tests;
mod throttle;
mod verp;

pub use context::QueueContext;
pub use error::QueueError;
pub use handle::{Control, ControlOutcome, QueueEvent, QueueHandle};
pub use local::{LocalDelivery, LocalError, LocalFuture, LocalMail};
pub use scheduler::start;
