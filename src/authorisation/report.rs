//! `sidestep auth DOMAIN`: everything a receiver checks about a sender domain's mail
//! from this relay, each item pass/fail with the reason: SPF for every egress IP and
//! smarthost, DKIM keys and their DNS records, DMARC policy and alignment, reverse DNS
//! of the egress IPs, TLS, and the bulk-sender rules (one-click unsubscribe, complaints
//! under 0.3%). With return paths on (`[bounces]`), also the SPF of each bounce domain:
//! the VERP MAIL FROM is on it, so receivers check its SPF, not the sender's, and that
//! record is the relay's to publish.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Authorisation, Denial, Identity, SpfOutcome};
use crate::dns::Resolver;

/// Gmail's and Yahoo's bulk-sender limit for spam complaints.
pub const COMPLAINT_LIMIT: f64 = 0.003;

/// An address mail may leave from, and what the domain's SPF says of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddressAuth {
    /// `egress` or `smarthost NAME`.
    pub kind: String,
    /// The address.
    pub ip: IpAddr,
    /// The SPF result for the domain.
    pub spf: SpfOutcome,
    /// A receiver refused it for this domain (authentication) and took the mail elsewhere.
    pub denied: bool,
}

/// A DKIM key configured for the domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DkimKeyAuth {
    /// The selector.
    pub selector: String,
    /// `rsa-sha256` or `ed25519-sha256`.
    pub algorithm: String,
    /// Whether `SELECTOR._domainkey.DOMAIN` publishes a key (`p=`).
    pub published: bool,
}

/// The domain's DMARC record, as far as a relay can judge it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DmarcAuth {
    /// The TXT record found (at the domain, else at its parent).
    pub record: String,
    /// `p=`.
    pub policy: String,
    /// `adkim=` (`r` relaxed unless `s`).
    pub adkim: String,
    /// `aspf=`.
    pub aspf: String,
}

/// Reverse DNS of one egress IP (from the hygiene check).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PtrAuth {
    /// The egress IP.
    pub ip: IpAddr,
    /// Its PTR names (none: no reverse DNS).
    pub ptr: Vec<String>,
    /// A PTR name resolves back to the IP.
    pub fcrdns: bool,
    /// The lookups failed: nothing is concluded.
    pub unknown: bool,
}

/// One item of the bulk-sender checklist.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckItem {
    /// What is checked.
    pub item: String,
    /// Whether it holds.
    pub pass: bool,
    /// Why, in a sentence.
    pub reason: String,
}

/// What `GET /api/v1/auth?domain=` returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthReport {
    /// The sender domain.
    pub domain: String,
    /// Its SPF record, if it publishes one.
    pub spf_record: Option<String>,
    /// Every address mail may leave from, with its SPF result.
    pub addresses: Vec<AddressAuth>,
    /// What receivers taught: (domain, IP) pairs refused for authentication.
    pub denials: Vec<Denial>,
    /// DKIM keys configured for it.
    pub dkim: Vec<DkimKeyAuth>,
    /// Its DMARC record.
    pub dmarc: Option<DmarcAuth>,
    /// Reverse DNS of each egress IP.
    pub ptr: Vec<PtrAuth>,
    /// Complaints over messages sent in the last day, when known.
    pub complaint_rate: Option<f64>,
    /// The bulk-sender checklist.
    pub checklist: Vec<CheckItem>,
    /// Each bounce domain (`[bounces]`) and what its SPF says of every address.
    #[serde(default)]
    pub return_paths: Vec<ReturnPathAuth>,
}

/// A bounce domain: each attempt's MAIL FROM is on it, so its SPF must authorise every
/// address mail may leave from, or the mail fails SPF wherever it goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReturnPathAuth {
    /// The bounce domain (`[bounces] domain` or a `[[bounces.domains]]` one).
    pub domain: String,
    /// Its SPF record, if it publishes one.
    pub spf_record: Option<String>,
    /// Every address mail may leave from, with the domain's SPF result.
    pub addresses: Vec<AddressAuth>,
    /// Every one of them passes.
    pub pass: bool,
}

/// One sender domain's complaint rate over the last day, against the 0.3% limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComplaintRate {
    /// The sender domain.
    pub domain: String,
    /// Deliveries of its mail in the day's count.
    pub messages: u64,
    /// Complaints counted for it (`domain:NAME` in `[complaints]`).
    pub complaints: u64,
    /// complaints / messages.
    pub rate: f64,
    /// At or above [`COMPLAINT_LIMIT`].
    pub over_limit: bool,
}

impl Authorisation {
    /// The complaint rate of every sender domain seen in the last day; `complaints`
    /// gives a domain's complaint count.
    pub fn complaint_rates(&self, complaints: impl Fn(&str) -> u64) -> Vec<ComplaintRate> {
        self.recent_senders()
            .into_iter()
            .map(|domain| {
                let messages = self.sent(&domain);
                let complaints = complaints(&domain);
                let rate = if messages == 0 {
                    0.0
                } else {
                    complaints as f64 / messages as f64
                };
                ComplaintRate {
                    domain,
                    messages,
                    complaints,
                    rate,
                    over_limit: rate >= COMPLAINT_LIMIT,
                }
            })
            .collect()
    }
}

/// What the relay knows that the report needs, besides DNS.
pub struct ReportInputs {
    /// Egress IPs and the HELO names they announce.
    pub egress: Vec<(IpAddr, String)>,
    /// Smarthosts: name, host, HELO.
    pub smarthosts: Vec<(String, String, String)>,
    /// DKIM keys configured for the domain: selector, algorithm.
    pub dkim: Vec<(String, String)>,
    /// Reverse-DNS checks of the egress IPs.
    pub hygiene: Vec<PtrAuth>,
    /// Complaints counted for the domain.
    pub complaints: u64,
    /// Outbound STARTTLS is on.
    pub starttls: bool,
    /// Bulk mail without one-click unsubscribe is refused or counted.
    pub one_click_checked: bool,
    /// The bounce domains (`[bounces]`), lowercase; none when return paths are off.
    pub bounce_domains: Vec<String>,
}

/// An address mail may leave from: its kind (`egress`, `smarthost NAME`), the address and
/// the HELO name it announces.
struct Source {
    kind: String,
    ip: IpAddr,
    helo: String,
}

impl Authorisation {
    /// The whole picture for `domain`; DNS is asked through `resolver`.
    pub async fn report(
        &self,
        resolver: &Resolver,
        domain: &str,
        inputs: ReportInputs,
    ) -> AuthReport {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let spf_record = lookup_spf(resolver, &domain).await;
        let sources = sources(resolver, &inputs).await;
        let addresses = self.addresses(&domain, &sources).await;
        let mut return_paths = Vec::new();
        for bounce_domain in &inputs.bounce_domains {
            let addresses = self.addresses(bounce_domain, &sources).await;
            return_paths.push(ReturnPathAuth {
                domain: bounce_domain.clone(),
                spf_record: lookup_spf(resolver, bounce_domain).await,
                pass: spf_verdict(&addresses).0,
                addresses,
            });
        }
        let mut dkim = Vec::new();
        for (selector, algorithm) in &inputs.dkim {
            let published = resolver
                .lookup_txt(&format!("{selector}._domainkey.{domain}"))
                .await
                .is_ok_and(|t| t.iter().any(|r| r.replace(' ', "").contains("p=")));
            dkim.push(DkimKeyAuth {
                selector: selector.clone(),
                algorithm: algorithm.clone(),
                published,
            });
        }
        let dmarc = lookup_dmarc(resolver, &domain).await;
        let sent = self.sent(&domain);
        let complaint_rate = (sent > 0).then(|| inputs.complaints as f64 / sent as f64);
        let denials = self.denials(Some(&domain));
        let mut checklist = checklist(&addresses, &dkim, dmarc.as_ref(), &inputs, complaint_rate);
        // Right after the sender's own SPF: the other half of what SPF sees.
        let at = checklist
            .iter()
            .position(|c| c.item == "spf")
            .map_or(0, |i| i + 1);
        checklist.splice(
            at..at,
            return_paths.iter().map(|r| {
                let (pass, reason) = spf_verdict(&r.addresses);
                CheckItem {
                    item: format!("return-path {}", r.domain),
                    pass,
                    reason,
                }
            }),
        );
        AuthReport {
            domain,
            spf_record,
            addresses,
            denials,
            dkim,
            dmarc,
            ptr: inputs.hygiene,
            complaint_rate,
            checklist,
            return_paths,
        }
    }

    /// What `domain`'s SPF says of each source; an egress IP a receiver refused for the
    /// domain is marked `denied`.
    async fn addresses(&self, domain: &str, sources: &[Source]) -> Vec<AddressAuth> {
        let mut out = Vec::with_capacity(sources.len());
        for s in sources {
            let spf = self.spf(Identity::MailFrom(domain), s.ip, &s.helo).await;
            let denied = s.kind == "egress"
                && self
                    .shared
                    .denials
                    .denies(domain, s.ip, self.shared.clock.now());
            out.push(AddressAuth {
                kind: s.kind.clone(),
                ip: s.ip,
                spf,
                denied,
            });
        }
        out
    }
}

/// Every address mail may leave from: the egress IPs, and each smarthost's addresses
/// (asked once, whatever the number of domains checked).
async fn sources(resolver: &Resolver, inputs: &ReportInputs) -> Vec<Source> {
    let mut out: Vec<Source> = inputs
        .egress
        .iter()
        .map(|(ip, helo)| Source {
            kind: "egress".into(),
            ip: *ip,
            helo: helo.clone(),
        })
        .collect();
    for (name, host, helo) in &inputs.smarthosts {
        for ip in resolver.lookup_addresses(host).await.unwrap_or_default() {
            out.push(Source {
                kind: format!("smarthost {name}"),
                ip,
                helo: helo.clone(),
            });
        }
    }
    out
}

/// The domain's SPF record, if it publishes one.
async fn lookup_spf(resolver: &Resolver, domain: &str) -> Option<String> {
    resolver.lookup_txt(domain).await.ok().and_then(|t| {
        t.into_iter()
            .find(|r| r.to_ascii_lowercase().starts_with("v=spf1"))
    })
}

/// Whether SPF passes for every address (and there is one to check), and why, naming
/// each address it does not authorise.
fn spf_verdict(addresses: &[AddressAuth]) -> (bool, String) {
    let failing: Vec<String> = addresses
        .iter()
        .filter(|a| a.spf != SpfOutcome::Pass)
        .map(|a| format!("{} ({}): {}", a.ip, a.kind, a.spf))
        .collect();
    if addresses.is_empty() {
        (
            false,
            "no address to check: mail leaves from the host's default address".into(),
        )
    } else if failing.is_empty() {
        (
            true,
            format!(
                "every address mail may leave from ({}) passes",
                addresses.len()
            ),
        )
    } else {
        (false, format!("not authorised: {}", failing.join(", ")))
    }
}

/// `_dmarc.DOMAIN`, else `_dmarc.` of its parent (the organisational domain, roughly).
async fn lookup_dmarc(resolver: &Resolver, domain: &str) -> Option<DmarcAuth> {
    let mut candidates = vec![domain.to_string()];
    if let Some((_, parent)) = domain.split_once('.')
        && parent.contains('.')
    {
        candidates.push(parent.to_string());
    }
    for d in candidates {
        let Ok(txt) = resolver.lookup_txt(&format!("_dmarc.{d}")).await else {
            continue;
        };
        if let Some(record) = txt
            .into_iter()
            .find(|r| r.to_ascii_lowercase().starts_with("v=dmarc1"))
        {
            let tag = |name: &str, default: &str| {
                record
                    .split(';')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                    .map_or(default.to_string(), |(_, v)| v.trim().to_ascii_lowercase())
            };
            return Some(DmarcAuth {
                policy: tag("p", "none"),
                adkim: tag("adkim", "r"),
                aspf: tag("aspf", "r"),
                record,
            });
        }
    }
    None
}

fn checklist(
    addresses: &[AddressAuth],
    dkim: &[DkimKeyAuth],
    dmarc: Option<&DmarcAuth>,
    inputs: &ReportInputs,
    complaint_rate: Option<f64>,
) -> Vec<CheckItem> {
    let item = |item: &str, pass: bool, reason: String| CheckItem {
        item: item.into(),
        pass,
        reason,
    };
    let (spf_passes, spf_reason) = spf_verdict(addresses);
    let mut out = vec![item("spf", spf_passes, spf_reason)];
    let published = dkim.iter().filter(|k| k.published).count();
    out.push(item(
        "dkim",
        published > 0,
        match (dkim.len(), published) {
            (0, _) => "no DKIM key configured for the domain ([[dkim]])".into(),
            (n, 0) => format!("{n} key(s) configured, none published in DNS"),
            (n, p) => format!("{p} of {n} key(s) published"),
        },
    ));
    out.push(match dmarc {
        Some(d) => item(
            "dmarc",
            true,
            format!("p={} (adkim={}, aspf={})", d.policy, d.adkim, d.aspf),
        ),
        None => item(
            "dmarc",
            false,
            "no DMARC record (p=none at least is required of bulk senders)".into(),
        ),
    });
    // Alignment: SPF aligns when the MAIL FROM domain is the From: domain (sidestep keeps
    // the sender's envelope), DKIM when the signing domain is: a published key of the
    // domain itself.
    let spf_aligned = spf_passes;
    out.push(item(
        "alignment",
        spf_aligned || published > 0,
        match (spf_aligned, published > 0) {
            (true, true) => "SPF and DKIM both align with the From: domain".into(),
            (true, false) => "SPF aligns (MAIL FROM is the domain); DKIM does not sign".into(),
            (false, true) => "DKIM aligns; SPF does not pass from every address".into(),
            (false, false) => "neither SPF nor DKIM aligns: DMARC fails".into(),
        },
    ));
    let no_ptr: Vec<String> = inputs
        .hygiene
        .iter()
        .filter(|h| !h.unknown && (h.ptr.is_empty() || !h.fcrdns))
        .map(|h| h.ip.to_string())
        .collect();
    out.push(item(
        "ptr",
        no_ptr.is_empty(),
        if no_ptr.is_empty() {
            "every egress IP has forward-confirmed reverse DNS".into()
        } else {
            format!("no forward-confirmed PTR: {}", no_ptr.join(", "))
        },
    ));
    out.push(item(
        "tls",
        inputs.starttls,
        if inputs.starttls {
            "STARTTLS is used when the receiver offers it".into()
        } else {
            "delivery.starttls = false: mail goes in plain text".into()
        },
    ));
    out.push(item(
        "one-click",
        inputs.one_click_checked,
        if inputs.one_click_checked {
            "bulk mail without one-click unsubscribe (RFC 8058) is counted or refused".into()
        } else {
            "bulk mail is not checked for one-click unsubscribe".into()
        },
    ));
    out.push(match complaint_rate {
        Some(r) => item(
            "complaints",
            r < COMPLAINT_LIMIT,
            format!("{:.3}% of the last day's messages (limit 0.3%)", r * 100.0),
        ),
        None => item("complaints", true, "no messages sent lately".into()),
    });
    out
}
