//! Outbound SMTP: one transaction per (message, destination domain), from an egress IP of
//! the pool to the domain's MX hosts in preference order.

mod client;

pub use client::{AttemptReport, DomainDelivery, Outbound};
