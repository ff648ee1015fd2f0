//! Certificate checks for the MX sessions a policy governs: the platform's roots plus
//! `[delivery] tls_ca_file` for MTA-STS, the TLSA records for DANE, and a watcher that
//! remembers what went wrong (TLS-RPT's failure type) whether or not it may fail the
//! handshake (`testing` policies deliver anyway and report).

use std::sync::{Arc, Mutex};

use mail_auth::report::tlsrpt::ResultType;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// The first certificate problem a session met, for its report.
pub type Seen = Arc<Mutex<Option<ResultType>>>;

/// Wraps a verifier: notes its verdict in `seen`; passes it on, or (`lenient`) accepts
/// the certificate anyway.
#[derive(Debug)]
pub struct Watched {
    /// The check itself.
    pub inner: Arc<dyn ServerCertVerifier>,
    /// Accept what it refuses (an MTA-STS `testing` policy), noting it.
    pub lenient: bool,
    /// Where the first problem is noted.
    pub seen: Seen,
}

impl ServerCertVerifier for Watched {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(v) => Ok(v),
            Err(e) => {
                let kind = result_type(&e);
                self.seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(kind);
                if self.lenient {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(e)
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// TLS-RPT's name for a certificate error (RFC 8460 §4.3.2.1).
pub fn result_type(e: &rustls::Error) -> ResultType {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                ResultType::CertificateHostMismatch
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                ResultType::CertificateExpired
            }
            CertificateError::UnknownIssuer
            | CertificateError::BadSignature
            | CertificateError::Revoked => ResultType::CertificateNotTrusted,
            _ => ResultType::ValidationFailure,
        },
        _ => ResultType::ValidationFailure,
    }
}

/// A client config for one session: TLS 1.2 and 1.3 (all rustls speaks), ring, `verifier`.
pub fn client_config(verifier: Arc<dyn ServerCertVerifier>) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth()
}

/// The platform's roots plus the PEM certificates in `extra` (a private or test CA).
///
/// # Errors
/// A PEM block is not a certificate, or the platform verifier cannot be set up.
pub fn webpki(extra: Option<&str>) -> Result<Arc<dyn ServerCertVerifier>, crate::tls::TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs = match extra {
        Some(pem) => CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| crate::tls::TlsError::Certificate(e.to_string()))?,
        None => Vec::new(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(certs, provider)
        .map_err(|e| crate::tls::TlsError::Setup(e.to_string()))?;
    Ok(Arc::new(verifier))
}
