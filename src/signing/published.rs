//! Whether DNS publishes the public half of each configured key: the record at
//! `selector._domainkey.domain` must verify a signature the private key makes, whatever
//! form (SPKI or PKCS#1 RSA, Ed25519) it was published in.

use mail_auth::common::crypto::Algorithm;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use serde::Serialize;

use super::Key;
use crate::config::DkimAlgorithm;
use crate::dns::Resolver;

/// What DNS says about one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "lowercase")]
pub enum Publication {
    /// A record there verifies the key's signatures.
    Published,
    /// No DKIM record at the name.
    Missing,
    /// A DKIM record is there, for another key (or revoked, or of another type).
    Mismatch(String),
    /// The lookup failed; try again.
    Error(String),
}

/// Looks `key` up through `resolver`.
pub async fn check(resolver: &Resolver, key: &Key) -> Publication {
    let texts = match resolver.lookup_txt(&key.record_name()).await {
        Ok(t) => t,
        Err(e) => return Publication::Error(e.to_string()),
    };
    let records: Vec<&String> = texts
        .iter()
        .filter(|t| t.contains("p=") || t.trim_start().starts_with("v=DKIM1"))
        .collect();
    if records.is_empty() {
        return Publication::Missing;
    }
    let probe = b"sidestep dkim check";
    let signature = match key.sign_bytes(probe) {
        Ok(s) => s,
        Err(e) => return Publication::Error(e.to_string()),
    };
    let algorithm = match key.algorithm {
        DkimAlgorithm::RsaSha256 => Algorithm::RsaSha256,
        DkimAlgorithm::Ed25519Sha256 => Algorithm::Ed25519Sha256,
    };
    let mut why = Vec::new();
    for text in records {
        match DomainKey::parse(text.as_bytes()) {
            Ok(public) => match public.p.verify_bytes(probe, &signature, algorithm) {
                Ok(()) => return Publication::Published,
                Err(_) => why.push("the published key is another key".to_string()),
            },
            Err(e) => why.push(format!("unusable record ({e})")),
        }
    }
    Publication::Mismatch(why.join("; "))
}
