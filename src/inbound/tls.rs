//! TLS for the relay port: the certificate and key of `[server]`, loaded into an
//! acceptor for STARTTLS and the implicit-TLS listener. A reload loads them again, so a
//! renewed certificate is served without a restart.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::ServerConfig;

/// The acceptor for `server`'s certificate, `None` when no certificate is configured.
///
/// # Errors
/// A file cannot be read, holds no certificate or key, or they do not match; the text
/// names the file.
pub fn acceptor(server: &ServerConfig) -> Result<Option<TlsAcceptor>, String> {
    let (Some(cert_path), Some(key_path)) = (&server.tls_certificate, &server.tls_key) else {
        return Ok(None);
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("{}: {e}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("{}: no usable private key: {e}", key_path.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    // TLS 1.2 and 1.3 only.
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("{} and {}: {e}", cert_path.display(), key_path.display()))?;
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
