//! New DKIM keys and the TXT record that publishes each.
//!
//! Ed25519 keys come from ring (as signing uses); RSA keys from the rsa crate, since ring
//! cannot make them. RSA public keys are published as SubjectPublicKeyInfo, the form
//! RFC 6376 §3.6.1 names and every verifier reads.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use mail_auth::common::crypto::Ed25519Key;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

use crate::config::DkimAlgorithm;

/// RSA sizes offered: ring signs with 2048 bits or more, and a 4096-bit key's record is
/// already longer than many DNS control panels take.
pub const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;

/// Why no key was made.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// An RSA size outside [`RSA_BITS`].
    #[error("RSA keys are 2048 to 4096 bits, not {0}")]
    Bits(usize),
    /// The crypto library failed.
    #[error("cannot make the key: {0}")]
    Crypto(String),
}

/// A new key pair.
pub struct NewKey {
    /// The private key, PEM (PKCS#8), for `private_key` in `[[dkim.keys]]`.
    pub pem: String,
    /// The `v=DKIM1; k=…; p=…` text to publish.
    pub record: String,
}

/// Makes a key for `algorithm` (`bits` for RSA).
///
/// # Errors
/// A bad size, or the library failed.
pub fn generate(algorithm: DkimAlgorithm, bits: usize) -> Result<NewKey, KeygenError> {
    let crypto = |e: &dyn std::fmt::Display| KeygenError::Crypto(e.to_string());
    let (pem, public) = match algorithm {
        DkimAlgorithm::RsaSha256 => {
            if !RSA_BITS.contains(&bits) {
                return Err(KeygenError::Bits(bits));
            }
            let secret = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
                .map_err(|e| crypto(&e))?;
            let pem = secret
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| crypto(&e))?;
            let public = secret
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| crypto(&e))?;
            (pem.to_string(), public.as_bytes().to_vec())
        }
        DkimAlgorithm::Ed25519Sha256 => {
            let der = Ed25519Key::generate_pkcs8().map_err(|e| crypto(&e))?;
            // RFC 8463 §4.2: the bare 32-byte public key.
            let public = Ed25519Key::from_pkcs8_der(&der)
                .map_err(|e| crypto(&e))?
                .public_key();
            (pem_block("PRIVATE KEY", &der), public)
        }
    };
    Ok(NewKey {
        pem,
        record: record(algorithm, &public),
    })
}

/// The TXT text publishing `public` (DER SubjectPublicKeyInfo for RSA, the raw key for
/// Ed25519).
pub fn record(algorithm: DkimAlgorithm, public: &[u8]) -> String {
    format!(
        "v=DKIM1; k={}; p={}",
        algorithm.key_type(),
        B64.encode(public)
    )
}

/// The zone-file line for `text` at `name`: strings of at most 255 bytes (RFC 1035
/// §3.3.14), which DNS servers join back into one record.
pub fn zone_line(name: &str, text: &str) -> String {
    let strings: Vec<String> = text
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{name}. IN TXT {}", strings.join(" "))
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_load_and_records_name_their_type() {
        let ed = generate(DkimAlgorithm::Ed25519Sha256, 0).unwrap();
        assert!(
            ed.record.starts_with("v=DKIM1; k=ed25519; p="),
            "{}",
            ed.record
        );
        super::super::key::parse(ed.pem.as_bytes(), DkimAlgorithm::Ed25519Sha256).unwrap();
        // An Ed25519 key is not an RSA key.
        assert!(super::super::key::parse(ed.pem.as_bytes(), DkimAlgorithm::RsaSha256).is_err());
        assert!(matches!(
            generate(DkimAlgorithm::RsaSha256, 1024),
            Err(KeygenError::Bits(1024))
        ));
    }

    #[test]
    fn long_records_are_split_into_strings() {
        let text = "x".repeat(300);
        let line = zone_line("s._domainkey.d.test", &text);
        assert_eq!(
            line,
            format!(
                "s._domainkey.d.test. IN TXT \"{}\" \"{}\"",
                "x".repeat(255),
                "x".repeat(45)
            )
        );
    }
}
