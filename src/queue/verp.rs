//! The return path of one domain job's attempt: each recipient's VERP address
//! (`[bounces]`), made by [`crate::returnpath`] once outbound knows the egress IP.

use std::net::IpAddr;

use super::domain::DomainJob;
use crate::envelope::{Address, Sender};
use crate::outbound::ReturnPathFor;
use crate::returnpath::{ReturnPath, Token};

/// The recipients of one delivery call, with their indexes in the message.
pub(super) struct Verp<'a> {
    pub rp: &'a ReturnPath,
    pub job: &'a DomainJob,
    pub recipients: &'a [(usize, Address)],
    /// The bounce domain of the job's sender.
    pub domain: &'a str,
}

impl<'a> Verp<'a> {
    /// The return path of `job` when `[bounces]` is on and the sender is not null (a
    /// bounce never bounces), with the sender SPF sees: an address on the bounce domain.
    pub(super) fn of(
        rp: Option<&'a ReturnPath>,
        job: &'a DomainJob,
        recipients: &'a [(usize, Address)],
    ) -> Option<(Self, Sender)> {
        let rp = rp?;
        let domain = rp.domain_for(&job.sender)?;
        let spf_identity = Address::parse(&format!("b@{domain}"), false).ok()?;
        Some((
            Self {
                rp,
                job,
                recipients,
                domain,
            },
            Sender::Address(spf_identity),
        ))
    }
}

impl ReturnPathFor for Verp<'_> {
    fn mail_from(&self, index: usize, egress: Option<IpAddr>) -> Option<String> {
        let (i, rcpt) = self.recipients.get(index)?;
        let token = Token {
            queue_id: self.job.queue_id.to_string(),
            recipient: u16::try_from(*i).ok()?,
            attempt: self.job.attempt as u8,
            egress,
        };
        self.rp.address(&token, &rcpt.to_string(), self.domain)
    }
}
