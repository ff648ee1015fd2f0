//! Outbound SMTP: one transaction per (message, destination domain), from an egress IP of
//! the route's pool to the domain's MX hosts in preference order, or to the route's
//! fallback smarthost when no egress IP is clean for the destination site.

mod client;
mod reply;
mod sessions;
mod smarthost;

pub use client::{AttemptReport, DomainDelivery, Outbound, Via};

/// Setting up the outbound side failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("smarthost {name}: cannot read {path}: {source}")]
    File {
        name: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("smarthost {name}: {message}")]
    Tls { name: String, message: String },
}
