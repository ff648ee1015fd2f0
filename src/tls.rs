//! TLS clients for the connections the relay opens itself (smarthosts, webhooks, IMAP
//! mailboxes, checks of a CA file): a leaf every stage may use, so that a module
//! needing a verifying client does not have to import the outbound SMTP side.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A verifying TLS client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM block is not a usable certificate.
    #[error("bad certificate in the CA file: {0}")]
    Certificate(String),
    /// The PEM text holds no certificate at all.
    #[error("no certificate in the CA file")]
    NoCertificate,
    /// The system's roots cannot be loaded, or the client cannot be built.
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// A TLS client that trusts the certificates in `ca_pem` (PEM) when given, else the
/// system's roots: for smarthosts with a private CA, https webhooks, IMAP mailboxes.
///
/// # Errors
/// The PEM holds no usable certificate, or the system roots cannot be loaded.
pub fn client(ca_pem: Option<&str>) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let Some(pem) = ca_pem else {
        return mail_send::smtp::tls::build_tls_connector(false).map_err(TlsError::Setup);
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| TlsError::Certificate(e.to_string()))?)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        client,
    )))
}
