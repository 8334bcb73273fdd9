//! The one check of a server's certificate for every outgoing HTTPS connection (image
//! downloads, callbacks, the command line client): rustls' own webpki verification, and
//! one thing more, as curl and Go do it. A server certificate that is byte for byte one of
//! the certificates given explicitly as trusted (`--ca-file`, `SSL_CERT_FILE`,
//! `SSL_CERT_DIR`) is accepted although it is marked as a CA, which is how `openssl req
//! -x509` marks the self-signed certificates it makes; webpki alone refuses those with
//! `CaUsedAsEndEntity`. Its host name and validity period are still checked, and the
//! handshake's signature by its key. Certificates of the system store gain nothing.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

#[derive(Debug)]
pub(super) struct Verifier {
    /// `None` when no root could be used: every certificate then has an unknown issuer.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    /// The certificates given explicitly as trusted, each also among the roots.
    explicit: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Verifier {
    pub(super) fn new(
        roots: Vec<CertificateDer<'static>>,
        explicit: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        let mut store = RootCertStore::empty();
        // As ureq did: a certificate webpki cannot use as a root is left out, not fatal.
        store.add_parsable_certificates(roots);
        let algorithms = provider.signature_verification_algorithms;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
            .build()
            .ok();
        Self {
            webpki,
            explicit,
            algorithms,
        }
    }

    fn is_explicit(&self, cert: &CertificateDer<'_>) -> bool {
        self.explicit
            .iter()
            .any(|trusted| trusted.as_ref() == cert.as_ref())
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(webpki) = &self.webpki else {
            return Err(CertificateError::UnknownIssuer.into());
        };
        let refused = match webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(refused) if is_ca_used_as_end_entity(&refused) => refused,
            verdict => return verdict,
        };
        if self.is_explicit(end_entity) {
            // webpki checks an end entity's validity period at `now` before its basic
            // constraints, so a refusal for the CA mark means the period holds (the unit
            // tests pin this order). The name is all that is left to check.
            let parsed = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&parsed, server_name)?;
            return Ok(ServerCertVerified::assertion());
        }
        if is_self_signed(end_entity) {
            // Its issuer is itself, which nothing trusts: said as for any other issuer.
            return Err(CertificateError::UnknownIssuer.into());
        }
        Err(refused)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.webpki.as_ref()?.root_hint_subjects()
    }
}

fn is_ca_used_as_end_entity(error: &Error) -> bool {
    matches!(error, Error::InvalidCertificate(cert) if ca_used_as_end_entity(cert))
}

/// webpki's refusal of a certificate marked as a CA where a server's was expected.
pub(super) fn ca_used_as_end_entity(error: &CertificateError) -> bool {
    match error {
        CertificateError::Other(other) => matches!(
            other.0.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ),
        _ => false,
    }
}

fn is_self_signed(cert: &CertificateDer<'_>) -> bool {
    webpki::EndEntityCert::try_from(cert).is_ok_and(|parsed| parsed.issuer() == parsed.subject())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate marked CA:TRUE for 127.0.0.1 and localhost, as `openssl
    /// req -x509` makes, valid from `from` to `to` (years).
    fn self_signed_ca(from: i32, to: i32) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 1, 1);
        params.self_signed(&key).unwrap().der().clone()
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Jan 1st of `year`, near enough.
    fn in_year(year: u64) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            (year - 1970) * 31_556_952 + 86_400,
        ))
    }

    fn verify(
        verifier: &Verifier,
        cert: &CertificateDer<'_>,
        name: &str,
        year: u64,
    ) -> Result<(), Error> {
        let name = ServerName::try_from(name).unwrap();
        verifier
            .verify_server_cert(cert, &[], &name, &[], in_year(year))
            .map(|_| ())
    }

    #[test]
    fn a_self_signed_ca_certificate_is_accepted_only_when_given_explicitly() {
        let cert = self_signed_ca(2020, 2030);
        let explicit = Verifier::new(vec![cert.clone()], vec![cert.clone()], provider());
        verify(&explicit, &cert, "127.0.0.1", 2025).unwrap();
        verify(&explicit, &cert, "localhost", 2025).unwrap();
        // Among the roots (as the system store's are) but not given explicitly: refused.
        let system = Verifier::new(vec![cert.clone()], Vec::new(), provider());
        assert_eq!(
            verify(&system, &cert, "127.0.0.1", 2025),
            Err(CertificateError::UnknownIssuer.into())
        );
        // Another self-signed certificate than the one given: unknown issuer.
        let other = self_signed_ca(2020, 2030);
        assert_eq!(
            verify(&explicit, &other, "127.0.0.1", 2025),
            Err(CertificateError::UnknownIssuer.into())
        );
        // No root at all.
        let none = Verifier::new(Vec::new(), Vec::new(), provider());
        assert_eq!(
            verify(&none, &cert, "127.0.0.1", 2025),
            Err(CertificateError::UnknownIssuer.into())
        );
    }

    #[test]
    fn name_and_validity_period_are_still_checked() {
        let cert = self_signed_ca(2020, 2030);
        let verifier = Verifier::new(vec![cert.clone()], vec![cert.clone()], provider());
        assert!(matches!(
            verify(&verifier, &cert, "images.example", 2025),
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForNameContext { .. }
            ))
        ));
        // webpki checks the period before the CA mark: this pins the order the verifier
        // relies on, should a new webpki change it.
        assert!(matches!(
            verify(&verifier, &cert, "127.0.0.1", 2031),
            Err(Error::InvalidCertificate(
                CertificateError::ExpiredContext { .. }
            ))
        ));
        assert!(matches!(
            verify(&verifier, &cert, "127.0.0.1", 2019),
            Err(Error::InvalidCertificate(
                CertificateError::NotValidYetContext { .. }
            ))
        ));
    }
}
