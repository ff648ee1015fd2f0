//! The queue: one scheduler task owns every due time; attempts run as tasks and report
//! back. Retry math is a pure function; DSNs are built here.

mod attempt;
mod domain;
pub mod dsn;
pub mod retry;
mod scheduler;

pub use scheduler::{QueueContext, QueueEvent, QueueHandle, start};
