//! A DKIM private key from its PEM file, refused when the file is readable by anyone but
//! the relay's user: a signing key that leaks lets anyone send as the domain.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use crate::config::DkimAlgorithm;

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file cannot be read (missing, no permission).
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Group or others may read the file.
    #[error(
        "{} is readable by group or others (mode {mode:04o}); make it 0600 (chmod 600)",
        path.display()
    )]
    Exposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a PEM private key of the configured algorithm.
    #[error("{}: not a usable {} private key: {reason}", path.display(), algorithm.name())]
    Unparsable {
        /// The key file.
        path: PathBuf,
        /// The configured algorithm.
        algorithm: DkimAlgorithm,
        /// What the parser said.
        reason: KeyParseError,
    },
}

/// What is wrong with the text of a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyParseError {
    /// No PEM private key block at all.
    #[error("no PEM private key ({0})")]
    NoPem(String),
    /// An RSA key ring cannot use.
    #[error("{0} (RSA keys must be 2048 bits or more)")]
    Rsa(String),
    /// An Ed25519 key ring cannot use.
    #[error("{0}")]
    Ed25519(String),
    /// An Ed25519 key in another container than PKCS#8.
    #[error("an Ed25519 key must be PKCS#8 (BEGIN PRIVATE KEY)")]
    Ed25519NotPkcs8,
}

/// Reads the key at `path` for `algorithm`.
///
/// # Errors
/// The file is unreadable, readable by group or others, or not a PEM key of `algorithm`
/// (RSA keys: PKCS#8 or PKCS#1, 2048 bits or more; Ed25519: PKCS#8).
pub fn load(path: &Path, algorithm: DkimAlgorithm) -> Result<DkimKey, KeyError> {
    let unreadable = |source| KeyError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map_err(unreadable)?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    let pem = std::fs::read(path).map_err(unreadable)?;
    parse(&pem, algorithm).map_err(|reason| KeyError::Unparsable {
        path: path.to_path_buf(),
        algorithm,
        reason,
    })
}

/// A key from PEM text.
///
/// # Errors
/// What is wrong with it, in words.
pub fn parse(pem: &[u8], algorithm: DkimAlgorithm) -> Result<DkimKey, KeyParseError> {
    let der =
        PrivateKeyDer::from_pem_slice(pem).map_err(|e| KeyParseError::NoPem(e.to_string()))?;
    match (algorithm, der) {
        (DkimAlgorithm::RsaSha256, der) => RsaKey::<Sha256>::from_key_der(der)
            .map(DkimKey::Rsa)
            // ring signs with RSA keys of 2048 to 8192 bits only.
            .map_err(|e| KeyParseError::Rsa(e.to_string())),
        // OpenSSL writes PKCS#8 v1 (without the public key): "maybe unchecked" takes it.
        (DkimAlgorithm::Ed25519Sha256, PrivateKeyDer::Pkcs8(der)) => {
            Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der())
                .map(DkimKey::Ed25519)
                .map_err(|e| KeyParseError::Ed25519(e.to_string()))
        }
        (DkimAlgorithm::Ed25519Sha256, _) => Err(KeyParseError::Ed25519NotPkcs8),
    }
}
