//! SPF-aware choice of the way out: before an egress IP is picked, the pool is narrowed
//! to the addresses the sender's SPF authorises (cached per (domain, IP) by TTL, so this
//! is a few map lookups per delivery). Rotation that steps onto an IP outside the
//! sender's SPF turns a reputation save into a DMARC failure, and the receiver's
//! second opinion then counts against that IP for every sender at the site.

use std::net::IpAddr;

use super::DomainDelivery;
use super::client::Outbound;
use super::smarthost::Smarthost;
use crate::authorisation::Authorised;
use crate::config::SpfMode;
use crate::egress::Standing;
use crate::routing::Pool;
use crate::site::Site;

/// What SPF allows for one delivery.
pub(super) enum SpfChoice {
    /// SPF plays no part (mode off, no address to evaluate), or nothing it authorises
    /// is usable and the mode lets the mail go anyway: choose as without it.
    AsBefore,
    /// Only these addresses may be used, besides those the delivery already avoids.
    Avoid(Vec<IpAddr>),
    /// No egress IP that SPF authorises is usable, the fallback smarthost is authorised.
    Smarthost,
    /// Nothing SPF authorises is usable and the mode says wait: the reason.
    Wait(String),
}

impl Outbound {
    /// Narrows `pool` to what the sender's SPF authorises, per `d.spf`.
    pub(super) async fn spf_choice(
        &self,
        d: &DomainDelivery<'_>,
        pool: &Pool,
        fallback: Option<&Smarthost>,
        site: &Site,
    ) -> SpfChoice {
        let auth = self.authorisation();
        if d.spf == SpfMode::Off {
            // SPF plays no part, but what receivers refused for authentication still
            // does: that domain's mail avoids those IPs while another is usable.
            let denied: Vec<IpAddr> = pool
                .egress()
                .iter()
                .filter_map(|e| e.ip.filter(|ip| auth.denied(d.sender, e, *ip)))
                .collect();
            let others = pool.egress().iter().any(|e| {
                e.ip.is_some_and(|ip| !denied.contains(&ip) && !d.avoid.contains(&ip))
                    && self.standing(e, site) != Standing::Hard
            });
            return match denied.is_empty() || !others {
                true => SpfChoice::AsBefore,
                false => SpfChoice::Avoid(denied),
            };
        }
        let mut pass = Vec::new();
        let mut not = Vec::new();
        for e in pool.egress() {
            let Some(ip) = e.ip else {
                continue;
            };
            match auth.authorises(d.sender, e).await {
                Authorised::Yes => pass.push(ip),
                Authorised::Unknown => {}
                other => not.push((ip, other)),
            }
        }
        if pass.is_empty() && not.is_empty() {
            // The kernel picks the source address: there is nothing to evaluate.
            return SpfChoice::AsBefore;
        }
        let usable = |ip: &IpAddr| {
            !d.avoid.contains(ip)
                && pool
                    .egress()
                    .iter()
                    .find(|e| e.ip == Some(*ip))
                    .is_some_and(|e| self.standing(e, site) != Standing::Hard)
        };
        if pass.iter().any(usable) {
            return SpfChoice::Avoid(not.into_iter().map(|(ip, _)| ip).collect());
        }
        let domain = crate::authorisation::domain_of(d.sender, "the HELO name");
        if let Some(smarthost) = fallback
            && self.smarthost_authorised(d, smarthost).await
        {
            tracing::info!(
                sender_domain = domain,
                site = %site,
                smarthost = smarthost.name(),
                "no egress IP that SPF authorises for the sender is usable towards the site; the fallback smarthost is authorised"
            );
            return SpfChoice::Smarthost;
        }
        let why = || {
            format!(
                "no usable egress IP or smarthost is authorised by the SPF of {domain} towards {site}: {}",
                describe(&pass, &not, &usable)
            )
        };
        match d.spf {
            SpfMode::Require => {
                crate::metrics::metrics().spf_waiting.inc();
                let why = why();
                self.reputation.alert(
                    "spf-unauthorised",
                    None,
                    Some(domain.to_string()),
                    format!("{why}; its mail waits (delivery.spf = \"require\"): publish the egress IPs in its SPF record or relax the setting"),
                );
                SpfChoice::Wait(why)
            }
            _ => {
                crate::metrics::metrics().spf_unauthorised.inc();
                if !auth.warn_due(domain) {
                    return SpfChoice::AsBefore;
                }
                tracing::warn!(
                    sender_domain = domain,
                    site = %site,
                    detail = %why(),
                    "sending from an address the sender's SPF does not authorise (delivery.spf = \"prefer\"): DMARC may fail"
                );
                SpfChoice::AsBefore
            }
        }
    }

    /// Whether SPF authorises one of the smarthost's addresses for the sender.
    async fn smarthost_authorised(&self, d: &DomainDelivery<'_>, smarthost: &Smarthost) -> bool {
        let Ok(addrs) = self.resolver().lookup_addresses(smarthost.host()).await else {
            return false;
        };
        let auth = self.authorisation();
        for ip in addrs {
            let outcome = auth
                .spf(
                    crate::authorisation::identity_of(d.sender),
                    ip,
                    smarthost.helo(),
                )
                .await;
            if outcome == crate::authorisation::SpfOutcome::Pass {
                return true;
            }
        }
        false
    }
}

/// Each address with why it may not carry the mail, for the log and the deferral.
fn describe(
    pass: &[IpAddr],
    not: &[(IpAddr, Authorised)],
    usable: &dyn Fn(&IpAddr) -> bool,
) -> String {
    let mut parts: Vec<String> = not
        .iter()
        .map(|(ip, a)| match a {
            Authorised::No(outcome) => format!("{ip}: spf={outcome}"),
            Authorised::Denied => format!("{ip}: refused for authentication by a receiver"),
            Authorised::Yes | Authorised::Unknown => format!("{ip}: -"),
        })
        .collect();
    parts.extend(
        pass.iter()
            .filter(|ip| !usable(ip))
            .map(|ip| format!("{ip}: spf=pass but listed, blocked or already refused")),
    );
    parts.join(" | ")
}
