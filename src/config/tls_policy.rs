//! `[tls_policy]` and `[tlsrpt]`: what sidestep does about the TLS requirements that
//! destinations publish (MTA-STS, DANE) and the reports it sends them (TLS-RPT). Plain
//! data; the `tls_policy` module fetches, validates and enforces.

use serde::Deserialize;

use super::HumanDuration;

/// `[tls_policy]`: destinations' published TLS requirements for the outbound hop.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsPolicyConfig {
    /// Look up and obey MTA-STS policies (RFC 8461): `_mta-sts.DOMAIN` TXT, then the
    /// policy over HTTPS. An `enforce` policy makes verified TLS to a listed MX
    /// mandatory; mail that cannot meet it waits.
    pub mta_sts: bool,
    /// Obey DANE TLSA records (RFC 7672) when the MX and TLSA answers validate under
    /// DNSSEC (`[dns] dnssec`).
    pub dane: bool,
    /// The HTTPS port policies are fetched from: 443 (RFC 8461); another only in tests.
    pub https_port: u16,
    /// How long fetching one policy may take (connect, TLS, the whole answer).
    pub fetch_timeout: HumanDuration,
    /// How often a cached policy's `_mta-sts` TXT id (and a domain without one) is
    /// looked at again; a changed id fetches the policy anew.
    pub recheck: HumanDuration,
}

impl Default for TlsPolicyConfig {
    fn default() -> Self {
        Self {
            mta_sts: true,
            dane: true,
            https_port: 443,
            fetch_timeout: HumanDuration::from_secs(20),
            recheck: HumanDuration::from_secs(300),
        }
    }
}

/// `[tlsrpt]`: the daily TLS reports (RFC 8460) to domains that publish a `_smtp._tls`
/// record with a `rua`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsRptConfig {
    /// Send the reports (sessions are counted either way, for `sidestep tls`).
    pub enabled: bool,
    /// The report mail's From: address; default `postmaster@<server.hostname>`.
    pub from: Option<String>,
    /// `organization-name` in the report; default `server.hostname`.
    pub organization: Option<String>,
    /// `contact-info` in the report; default the `from` address.
    pub contact: Option<String>,
    /// A report an `https:` rua did not take is POSTed again this long after, then after
    /// twice as long each time (5, 10, 20, … minutes), kept in the spool meanwhile.
    pub retry_initial: HumanDuration,
    /// How long after its first POST a report is tried: the last try is at this age,
    /// then it is given up (the next day's report is due by then).
    pub retry_for: HumanDuration,
}

impl Default for TlsRptConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            from: None,
            organization: None,
            contact: None,
            retry_initial: HumanDuration::from_secs(5 * 60),
            retry_for: HumanDuration::from_secs(24 * 3600),
        }
    }
}
