//! DKIM signing (RFC 6376, Ed25519: RFC 8463) at acceptance: a message whose From:
//! domain has keys gets one signature per key before it is spooled, so the signature
//! travels in the spooled content and no attempt ever signs again.
//!
//! What is signed follows what receivers check and what mailing lists break least:
//! relaxed/relaxed canonicalization, no `l=` (a body length lets anyone append to the
//! message), the fields of [`SIGNED_FIELDS`] that are present, and `From` once more than
//! present, so that a second From: added on the way breaks the signature (RFC 6376
//! §8.15) instead of riding on it.
//!
//! The cryptography is mail-auth's (with ring); [`key`] reads the key files,
//! [`keygen`] makes new ones, [`published`] compares them with what DNS serves.

pub mod key;
pub mod keygen;
pub mod published;

use std::sync::{Arc, LazyLock};

use mail_auth::common::crypto::{Algorithm, DkimKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};
use mail_parser::HeaderName;

use crate::config::{DkimAlgorithm, DkimConfig};
use crate::content::Headers;

pub use key::KeyError;

/// The fields signed when present (Gmail's and M3AAWG's recommendation for bulk mail,
/// the one-click unsubscribe fields included: a receiver acts on them only when signed).
pub const SIGNED_FIELDS: [&str; 13] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
];

/// A key that cannot be used, with the config key naming its entry.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {error}")]
pub struct LoadProblem {
    /// `dkim.keys[N].private_key`.
    pub key: String,
    /// What is wrong with the file.
    pub error: KeyError,
}

/// A signature could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The crypto library refused (it should not with a key that loaded).
    #[error("signing for {domain} with selector {selector}: {reason}")]
    Failed {
        /// `d=`.
        domain: String,
        /// `s=`.
        selector: String,
        /// What the library said.
        reason: String,
    },
}

/// One configured key, loaded.
pub struct Key {
    /// `d=`, lower case, without a final dot.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// The configured algorithm.
    pub algorithm: DkimAlgorithm,
    /// Also for subdomains of `domain`.
    pub subdomains: bool,
    /// The private key.
    secret: SharedKey,
}

impl Key {
    /// The DNS name the public key is published at.
    pub fn record_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// A signature of `data` (for comparing with a published key).
    ///
    /// # Errors
    /// The crypto library refused.
    pub fn sign_bytes(&self, data: &[u8]) -> Result<Vec<u8>, SigningError> {
        self.secret.sign(data).map_err(|e| self.failed(e))
    }

    fn failed(&self, e: mail_auth::Error) -> SigningError {
        SigningError::Failed {
            domain: self.domain.clone(),
            selector: self.selector.clone(),
            reason: e.to_string(),
        }
    }
}

/// Every configured key, by signing domain. Cheap to share: sessions hold it in an `Arc`.
#[derive(Default)]
pub struct Signer {
    keys: Vec<Arc<Key>>,
}

impl Signer {
    /// Reads every key of `config`.
    ///
    /// # Errors
    /// Every key that cannot be used (unreadable, readable by group or others, not a key
    /// of its algorithm), each named by its entry.
    pub fn load(config: &DkimConfig) -> Result<Self, Vec<LoadProblem>> {
        let mut keys = Vec::new();
        let mut problems = Vec::new();
        for (i, k) in config.keys.iter().enumerate() {
            match key::load(&k.private_key, k.algorithm) {
                Ok(secret) => keys.push(Arc::new(Key {
                    domain: k.domain.trim_end_matches('.').to_ascii_lowercase(),
                    selector: k.selector.clone(),
                    algorithm: k.algorithm,
                    subdomains: k.subdomains,
                    secret: SharedKey(Arc::new(secret)),
                })),
                Err(error) => problems.push(LoadProblem {
                    key: format!("dkim.keys[{i}].private_key"),
                    error,
                }),
            }
        }
        if problems.is_empty() {
            Ok(Self { keys })
        } else {
            Err(problems)
        }
    }

    /// The loaded keys, in config order.
    pub fn keys(&self) -> &[Arc<Key>] {
        &self.keys
    }

    /// The keys for mail from `domain`: those of the domain itself, else those of its
    /// nearest parent that covers subdomains.
    pub fn keys_for(&self, domain: &str) -> Vec<Arc<Key>> {
        let exact: Vec<_> = self
            .keys
            .iter()
            .filter(|k| k.domain == domain)
            .cloned()
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        let mut parent = domain;
        while let Some((_, up)) = parent.split_once('.') {
            let found: Vec<_> = self
                .keys
                .iter()
                .filter(|k| k.subdomains && k.domain == up)
                .cloned()
                .collect();
            if !found.is_empty() {
                return found;
            }
            parent = up;
        }
        Vec::new()
    }

    /// What signing a message with `headers` takes: its From: domain's keys, minus
    /// those whose `d=` and `s=` already signed it. `None`: nothing to sign with.
    pub fn plan(&self, headers: &Headers) -> Option<Plan> {
        let domain = headers.from_domain.as_deref()?;
        let keys: Vec<_> = self
            .keys_for(domain)
            .into_iter()
            .filter(|k| {
                !headers
                    .signatures
                    .iter()
                    .any(|(d, s)| *d == k.domain && s.eq_ignore_ascii_case(&k.selector))
            })
            .collect();
        if keys.is_empty() {
            return None;
        }
        let mut fields = Vec::with_capacity(SIGNED_FIELDS.len() + 1);
        static NAMES: LazyLock<Vec<HeaderName<'static>>> = LazyLock::new(|| {
            SIGNED_FIELDS
                .iter()
                .map(|n| HeaderName::parse(*n).unwrap_or(HeaderName::Other((*n).into())))
                .collect()
        });
        for (field, name) in SIGNED_FIELDS.into_iter().zip(NAMES.iter()) {
            if headers.count(name) > 0 {
                fields.push(field);
            }
        }
        // mail-auth signs every instance of a listed name; a name listed once more than
        // found is signed as absent: From's over-signing.
        fields.push("From");
        Some(Plan { keys, fields })
    }
}

/// The signatures to make for one message: built at the end of DATA, run off the
/// session's task (RSA and hashing a large body take milliseconds).
pub struct Plan {
    keys: Vec<Arc<Key>>,
    fields: Vec<&'static str>,
}

impl Plan {
    /// The keys' `selector._domainkey.domain` names, for the log.
    pub fn key_names(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.record_name()).collect()
    }

    /// One `DKIM-Signature:` field (CRLF-terminated) per key, over `message`.
    ///
    /// # Errors
    /// A key could not sign; no signatures then.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<String>, SigningError> {
        self.keys
            .iter()
            .map(|k| {
                DkimSigner::from_key(k.secret.clone())
                    .domain(k.domain.clone())
                    .selector(k.selector.clone())
                    .headers(self.fields.iter().copied())
                    .header_canonicalization(Canonicalization::Relaxed)
                    .body_canonicalization(Canonicalization::Relaxed)
                    .sign(message)
                    .map(|s| s.to_header())
                    .map_err(|e| k.failed(e))
            })
            .collect()
    }
}

/// A loaded key shared by every signer made from it (mail-auth's signer owns its key).
#[derive(Clone)]
struct SharedKey(Arc<DkimKey>);

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(domain: &str, selector: &str, subdomains: bool) -> Arc<Key> {
        let new = keygen::generate(DkimAlgorithm::Ed25519Sha256, 0).unwrap();
        let secret = key::parse(new.pem.as_bytes(), DkimAlgorithm::Ed25519Sha256).unwrap();
        Arc::new(Key {
            domain: domain.into(),
            selector: selector.into(),
            algorithm: DkimAlgorithm::Ed25519Sha256,
            subdomains,
            secret: SharedKey(Arc::new(secret)),
        })
    }

    fn names(keys: &[Arc<Key>]) -> Vec<String> {
        keys.iter().map(|k| k.record_name()).collect()
    }

    #[test]
    fn the_from_domain_picks_its_keys_else_the_nearest_parent_covering_subdomains() {
        let signer = Signer {
            keys: vec![
                key("example.net", "a", false),
                key("example.net", "b", false),
                key("news.example.net", "n", false),
                key("example.org", "o", true),
            ],
        };
        assert_eq!(
            names(&signer.keys_for("example.net")),
            ["a._domainkey.example.net", "b._domainkey.example.net"]
        );
        assert_eq!(
            names(&signer.keys_for("news.example.net")),
            ["n._domainkey.news.example.net"]
        );
        assert!(
            signer.keys_for("other.example.net").is_empty(),
            "no subdomains"
        );
        assert_eq!(
            names(&signer.keys_for("a.b.example.org")),
            ["o._domainkey.example.org"]
        );
        assert!(signer.keys_for("example.com").is_empty());
    }

    #[test]
    fn a_plan_signs_present_fields_over_signs_from_and_skips_existing_signers() {
        let signer = Signer {
            keys: vec![
                key("example.net", "a", false),
                key("example.net", "b", false),
            ],
        };
        let message = "DKIM-Signature: v=1; a=rsa-sha256; d=example.net; s=A; h=from; bh=AA; b=AA\r\n\
                       From: x@Example.net\r\nTo: y@d.test\r\nSubject: s\r\nX-Other: 1\r\n\
                       Feedback-ID: 1:2\r\n\r\nbody\r\n";
        let headers = Headers::parse(message.as_bytes());
        let plan = signer.plan(&headers).unwrap();
        assert_eq!(plan.key_names(), ["b._domainkey.example.net"]);
        assert_eq!(
            plan.fields,
            ["From", "To", "Subject", "Feedback-ID", "From"]
        );
        let signed = plan.sign(message.as_bytes()).unwrap();
        assert_eq!(signed.len(), 1);
        let text = &signed[0];
        assert!(
            text.starts_with(
                "DKIM-Signature: v=1; a=ed25519-sha256; s=b; d=example.net; c=relaxed/relaxed;"
            ),
            "{text}"
        );
        let h = text.replace("\r\n\t", "");
        assert!(h.ends_with("\r\n") && !h.contains("; l="), "{text}");
        assert!(h.contains("h=Feedback-ID:Subject:To:From:From;"), "{text}");

        assert!(
            signer
                .plan(&Headers::parse(b"To: y@d.test\r\n\r\nx\r\n"))
                .is_none()
        );
    }
}
