//! DANE for SMTP (RFC 7672 §3): a certificate verifier that checks the server's chain
//! against the MX host's TLSA records instead of the Web PKI.
//!
//! - DANE-EE(3): the leaf certificate (selector 0) or its public key (1) matches; no
//!   name or expiry check (§3.1.1: the DNS binds the key to the host).
//! - DANE-TA(2): a certificate of the presented chain matches and is the trust anchor;
//!   the chain up to it is verified, with the MX host name checked (§3.1.2).
//! - PKIX-TA(0) / PKIX-EE(1) are "unusable" for SMTP (§3.1.3): ignored; a TLSA RRset of
//!   only those still makes TLS mandatory, without authentication.

use std::sync::Arc;

use hickory_resolver::proto::rr::rdata::TLSA;
use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// The usable TLSA records of one MX host, as a rustls verifier.
#[derive(Debug)]
pub struct DaneVerifier {
    /// The secure TLSA RRset of `_25._tcp.MX`.
    pub records: Arc<Vec<TLSA>>,
    /// The MX host name, checked for DANE-TA(2) chains.
    pub mx: String,
    /// Signature checks of the handshake itself.
    pub algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

/// Whether a TLSA record is usable for SMTP (RFC 7672 §3.1.3): DANE-TA or DANE-EE with
/// a known selector and matching type.
pub fn usable(r: &TLSA) -> bool {
    matches!(r.cert_usage, CertUsage::DaneTa | CertUsage::DaneEe)
        && matches!(r.selector, Selector::Full | Selector::Spki)
        && matches!(
            r.matching,
            Matching::Raw | Matching::Sha256 | Matching::Sha512
        )
}

/// Whether `cert` matches `r`'s selector, matching type and data.
pub fn matches(r: &TLSA, cert: &CertificateDer<'_>) -> bool {
    let selected: Vec<u8> = match r.selector {
        Selector::Full => cert.to_vec(),
        Selector::Spki => match x509_parser::parse_x509_certificate(cert) {
            Ok((_, c)) => c.tbs_certificate.subject_pki.raw.to_vec(),
            Err(_) => return false,
        },
        _ => return false,
    };
    let digest = match r.matching {
        Matching::Raw => selected,
        Matching::Sha256 => ring::digest::digest(&ring::digest::SHA256, &selected)
            .as_ref()
            .to_vec(),
        Matching::Sha512 => ring::digest::digest(&ring::digest::SHA512, &selected)
            .as_ref()
            .to_vec(),
        _ => return false,
    };
    digest == r.cert_data
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let usable: Vec<&TLSA> = self.records.iter().filter(|r| usable(r)).collect();
        if usable.is_empty() {
            // Only unusable records: TLS is mandatory, authentication impossible.
            return Ok(ServerCertVerified::assertion());
        }
        if usable
            .iter()
            .any(|r| r.cert_usage == CertUsage::DaneEe && matches(r, end_entity))
        {
            return Ok(ServerCertVerified::assertion());
        }
        // DANE-TA: a matching certificate of the chain (the leaf's issuers) anchors it.
        for anchor in intermediates {
            if !usable
                .iter()
                .any(|r| r.cert_usage == CertUsage::DaneTa && matches(r, anchor))
            {
                continue;
            }
            let mut roots = rustls::RootCertStore::empty();
            if roots.add(anchor.clone().into_owned()).is_err() {
                continue;
            }
            let Ok(verifier) = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(rustls::crypto::ring::default_provider()),
            )
            .build() else {
                continue;
            };
            let name = ServerName::try_from(self.mx.clone()).map_err(|_| {
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
            })?;
            return verifier
                .verify_server_cert(end_entity, intermediates, &name, &[], now)
                .map(|_| ServerCertVerified::assertion());
        }
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(records: Vec<TLSA>, chain: &[CertificateDer<'static>]) -> bool {
        let v = DaneVerifier {
            records: Arc::new(records),
            mx: "mx.dest.test".into(),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        };
        v.verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from("whatever.test").unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
    }

    fn sha256(b: &[u8]) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, b)
            .as_ref()
            .to_vec()
    }

    #[test]
    fn dane_ee_matches_the_leaf_key_or_certificate_whatever_its_name() {
        let key = rcgen::generate_simple_self_signed(vec!["other-name.test".into()]).unwrap();
        let cert = key.cert.der().clone();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key.signing_key);
        let ee = |s, m, data| TLSA::new(CertUsage::DaneEe, s, m, data);
        assert!(verify(
            vec![ee(Selector::Spki, Matching::Sha256, sha256(&spki))],
            std::slice::from_ref(&cert)
        ));
        assert!(verify(
            vec![ee(Selector::Full, Matching::Sha256, sha256(&cert))],
            std::slice::from_ref(&cert)
        ));
        assert!(verify(
            vec![ee(Selector::Full, Matching::Raw, cert.to_vec())],
            std::slice::from_ref(&cert)
        ));
        assert!(!verify(
            vec![ee(Selector::Spki, Matching::Sha256, vec![0; 32])],
            std::slice::from_ref(&cert)
        ));
        // Only PKIX usages: unusable for SMTP, TLS without authentication.
        let pkix = TLSA::new(
            CertUsage::PkixEe,
            Selector::Spki,
            Matching::Sha256,
            vec![0; 32],
        );
        assert!(verify(vec![pkix], &[cert]));
    }

    #[test]
    fn dane_ta_anchors_the_chain_and_checks_the_mx_name() {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        let leaf_for = |name: &str| {
            let k = KeyPair::generate().unwrap();
            CertificateParams::new(vec![name.to_string()])
                .unwrap()
                .signed_by(&k, &ca)
                .unwrap()
                .der()
                .clone()
        };
        let ta = TLSA::new(
            CertUsage::DaneTa,
            Selector::Full,
            Matching::Sha256,
            sha256(ca.der()),
        );
        assert!(verify(
            vec![ta.clone()],
            &[leaf_for("mx.dest.test"), ca.der().clone()]
        ));
        assert!(!verify(
            vec![ta],
            &[leaf_for("wrong.test"), ca.der().clone()]
        ));
    }
}
