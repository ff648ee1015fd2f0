//! TLS for the relay port: the certificate and key of `[server]`, loaded into an
//! acceptor for STARTTLS and the implicit-TLS listener. A reload loads them again, so a
//! renewed certificate is served without a restart.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::ServerConfig;

/// The certificate and key of `[server]` make no acceptor; the text names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The certificate file cannot be read or parsed.
    #[error("{}: {message}", path.display())]
    Certificate {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key file holds no usable private key.
    #[error("{}: no usable private key: {message}", path.display())]
    Key {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// They do not go together (or rustls refuses them).
    #[error("{message}")]
    Pair {
        /// What is wrong, naming both files.
        message: String,
    },
}

/// The acceptor for `server`'s certificate, `None` when no certificate is configured.
///
/// # Errors
/// A file cannot be read, holds no certificate or key, or they do not match; the text
/// names the file.
pub fn acceptor(server: &ServerConfig) -> Result<Option<TlsAcceptor>, TlsSetupError> {
    let (Some(cert_path), Some(key_path)) = (&server.tls_certificate, &server.tls_key) else {
        return Ok(None);
    };
    let cert_error = |message: String| TlsSetupError::Certificate {
        path: cert_path.clone(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_error("no certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsSetupError::Key {
        path: key_path.clone(),
        message: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    // TLS 1.2 and 1.3 only.
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsSetupError::Pair {
        message: e.to_string(),
    })?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| TlsSetupError::Pair {
        message: format!("{} and {}: {e}", cert_path.display(), key_path.display()),
    })?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// How a session's TLS was negotiated, for the `Received:` header and the log:
/// `TLSv1_3 TLS13_AES_256_GCM_SHA384`.
pub fn describe(conn: &rustls::ServerConnection) -> String {
    format!(
        "{} {}",
        conn.protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_else(|| "TLS".into()),
        conn.negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite()))
            .unwrap_or_default()
    )
    .trim()
    .to_string()
}
