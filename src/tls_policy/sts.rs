//! MTA-STS (RFC 8461) as text: the `_mta-sts` TXT record, the policy file, and which MX
//! hosts a policy allows. Pure functions; fetching and caching live beside.

use serde::{Deserialize, Serialize};

/// What a policy asks of senders (RFC 8461 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StsMode {
    /// Only listed MX hosts, only over TLS with a certificate valid for the MX name.
    Enforce,
    /// Deliver as without a policy, and report what would have failed.
    Testing,
    /// The domain withdrew its policy.
    None,
}

impl std::fmt::Display for StsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Enforce => "enforce",
            Self::Testing => "testing",
            Self::None => "none",
        })
    }
}

/// A parsed policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsPolicy {
    /// `mode`.
    pub mode: StsMode,
    /// `mx` patterns, lower case: `mail.example.com` or `*.example.net`.
    pub mx: Vec<String>,
    /// `max_age` in seconds: how long the policy may be cached and applied.
    pub max_age: u64,
}

/// The longest `max_age` a policy may state (RFC 8461 §3.2: about a year).
const MAX_AGE_LIMIT: u64 = 31_557_600;

/// Why a policy file or TXT record is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StsError {
    /// `version: STSv1` missing or another version.
    #[error("no \"version: STSv1\"")]
    Version,
    /// `mode` missing or unknown.
    #[error("no valid mode (enforce, testing, none)")]
    Mode,
    /// `max_age` missing or not a number of seconds.
    #[error("no valid max_age")]
    MaxAge,
    /// `enforce`/`testing` without any `mx`.
    #[error("no mx patterns")]
    NoMx,
    /// The TXT record is not `v=STSv1; id=...`.
    #[error("TXT record: {0}")]
    Txt(&'static str),
}

impl StsPolicy {
    /// Reads a policy file (RFC 8461 §3.2): `key: value` lines, LF or CRLF, unknown keys
    /// ignored.
    ///
    /// # Errors
    /// A required field is missing or malformed.
    pub fn parse(text: &str) -> Result<Self, StsError> {
        let (mut version, mut mode, mut max_age, mut mx) = (false, None, None, Vec::new());
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key.trim() {
                "version" => version = value == "STSv1",
                "mode" => {
                    mode = match value {
                        "enforce" => Some(StsMode::Enforce),
                        "testing" => Some(StsMode::Testing),
                        "none" => Some(StsMode::None),
                        _ => return Err(StsError::Mode),
                    }
                }
                "max_age" => {
                    max_age = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| StsError::MaxAge)?
                            .min(MAX_AGE_LIMIT),
                    )
                }
                "mx" if !value.is_empty() => {
                    mx.push(value.trim_end_matches('.').to_ascii_lowercase())
                }
                _ => {}
            }
        }
        if !version {
            return Err(StsError::Version);
        }
        let mode = mode.ok_or(StsError::Mode)?;
        let max_age = max_age.ok_or(StsError::MaxAge)?;
        if mode != StsMode::None && mx.is_empty() {
            return Err(StsError::NoMx);
        }
        Ok(Self { mode, mx, max_age })
    }

    /// Whether `host` is one of the policy's MX hosts (RFC 8461 §4.1): a pattern is the
    /// name itself, or `*.` and exactly one more label on the left.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(parent) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => *p == host,
        })
    }

    /// The policy as TLS-RPT's `policy-string` lists it: one line per field.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec!["version: STSv1".to_string(), format!("mode: {}", self.mode)];
        lines.extend(self.mx.iter().map(|m| format!("mx: {m}")));
        lines.push(format!("max_age: {}", self.max_age));
        lines
    }
}

/// The `id` of a domain's `_mta-sts` TXT records (RFC 8461 §3.1): exactly one record
/// starting `v=STSv1`, with an `id` of 1 to 32 letters and digits. Other records at the
/// name are ignored.
///
/// # Errors
/// Several STS records, or one without a valid id.
pub fn txt_id(records: &[String]) -> Result<Option<String>, StsError> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| r.trim_start().starts_with("v=STSv1"))
        .collect();
    match sts.as_slice() {
        [] => Ok(None),
        [one] => {
            let id = one
                .split(';')
                .filter_map(|f| f.trim().split_once('='))
                .find(|(k, _)| k.trim() == "id")
                .map(|(_, v)| v.trim().to_string())
                .ok_or(StsError::Txt("no id"))?;
            if id.is_empty() || id.len() > 32 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(StsError::Txt("bad id"));
            }
            Ok(Some(id))
        }
        _ => Err(StsError::Txt("more than one v=STSv1 record")),
    }
}

/// The `rua` addresses of a domain's `_smtp._tls` TXT record (RFC 8460 §3): `mailto:`
/// and `https:` URIs; none when there is no single `v=TLSRPTv1` record.
pub fn tlsrpt_rua(records: &[String]) -> Vec<String> {
    let rpt: Vec<&String> = records
        .iter()
        .filter(|r| r.trim_start().starts_with("v=TLSRPTv1"))
        .collect();
    let [one] = rpt.as_slice() else {
        return Vec::new();
    };
    one.split(';')
        .filter_map(|f| f.trim().split_once('='))
        .find(|(k, _)| k.trim() == "rua")
        .map(|(_, v)| {
            v.split(',')
                .map(|u| u.trim().to_string())
                .filter(|u| u.starts_with("mailto:") || u.starts_with("https://"))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_file_reads_with_its_patterns() {
        let p = StsPolicy::parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET\r\nmax_age: 604800\r\n",
        )
        .unwrap();
        assert_eq!(
            p,
            StsPolicy {
                mode: StsMode::Enforce,
                mx: vec!["mail.example.com".into(), "*.example.net".into()],
                max_age: 604800
            }
        );
        let allowed: Vec<bool> = [
            "mail.example.com",
            "MAIL.example.com.",
            "a.example.net",
            "example.net",
            "a.b.example.net",
            "other.example.com",
        ]
        .iter()
        .map(|h| p.allows(h))
        .collect();
        assert_eq!(allowed, vec![true, true, true, false, false, false]);
    }

    #[test]
    fn broken_policies_say_why() {
        assert_eq!(
            StsPolicy::parse("mode: enforce\nmx: a\nmax_age: 1\n"),
            Err(StsError::Version)
        );
        assert_eq!(
            StsPolicy::parse("version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n"),
            Err(StsError::Mode)
        );
        assert_eq!(
            StsPolicy::parse("version: STSv1\nmode: enforce\nmax_age: 1\n"),
            Err(StsError::NoMx)
        );
        assert_eq!(
            StsPolicy::parse("version: STSv1\nmode: none\nmax_age: 99999999999\n")
                .unwrap()
                .max_age,
            MAX_AGE_LIMIT
        );
    }

    #[test]
    fn txt_records_give_the_id_and_the_report_addresses() {
        let txt = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            txt_id(&txt(&["v=STSv1; id=20160831085700Z;", "other"])),
            Ok(Some("20160831085700Z".into()))
        );
        assert_eq!(txt_id(&txt(&["spf"])), Ok(None));
        assert!(txt_id(&txt(&["v=STSv1; id=a", "v=STSv1; id=b"])).is_err());
        assert!(txt_id(&txt(&["v=STSv1; id=bad-id"])).is_err());
        assert_eq!(
            tlsrpt_rua(&txt(&[
                "v=TLSRPTv1; rua=mailto:tls@example.com,https://r.example.com/v1,ftp://x"
            ])),
            vec!["mailto:tls@example.com", "https://r.example.com/v1"]
        );
    }
}
