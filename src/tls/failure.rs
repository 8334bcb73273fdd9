//! A failed TLS connection told in plain words, with what kind of failure it was, so that
//! each caller can add what to do about it.

use rustls::{AlertDescription, CertificateError, Error, InvalidMessage};

/// What went wrong, for the advice that goes with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The server's certificate was refused: a CA to trust (`--ca-file`) or a certificate
    /// to fix.
    Certificate,
    /// The server answered, but not in TLS: a plain HTTP server at an `https://` URL.
    NotTls,
    /// Anything else in the handshake or the TLS setup.
    Handshake,
}

/// Why a TLS connection failed.
#[derive(Clone, Debug)]
pub struct TlsFailure {
    pub kind: FailureKind,
    /// In plain words, e.g. `its certificate has expired`.
    pub reason: String,
}

/// The TLS failure `error` is, if it is one.
pub fn failure(error: &ureq::Error) -> Option<TlsFailure> {
    match error {
        ureq::Error::Rustls(e) => Some(rustls_failure(e)),
        ureq::Error::Tls(detail) => Some(TlsFailure {
            kind: FailureKind::Handshake,
            reason: format!("TLS setup failed ({detail})"),
        }),
        ureq::Error::Io(io) => io_failure(io),
        _ => None,
    }
}

/// Why a TLS connection failed, in plain words, when `error` is a TLS failure.
pub fn failure_reason(error: &ureq::Error) -> Option<String> {
    failure(error).map(|failure| failure.reason)
}

/// The same for an io error that may wrap a rustls one (rustls reports through `io::Error`).
pub fn io_failure(io: &std::io::Error) -> Option<TlsFailure> {
    let inner = io.get_ref()?;
    if let Some(e) = inner.downcast_ref::<Error>() {
        return Some(rustls_failure(e));
    }
    if let Some(e) = inner.downcast_ref::<ureq::Error>() {
        return failure(e);
    }
    inner
        .is::<super::connector::HandshakeEof>()
        .then(|| TlsFailure {
            kind: FailureKind::Handshake,
            reason: format!(
                "{inner} (a plain HTTP server may do that, or one that accepts none of this \
             client's TLS versions)"
            ),
        })
}

fn rustls_failure(error: &Error) -> TlsFailure {
    let (kind, reason) = match error {
        Error::InvalidCertificate(cert) => (FailureKind::Certificate, certificate_reason(cert)),
        // The first bytes back were no TLS record: most likely an HTTP answer.
        Error::InvalidMessage(
            InvalidMessage::InvalidContentType | InvalidMessage::UnknownProtocolVersion,
        ) => (
            FailureKind::NotTls,
            "the server does not speak TLS (it answered with something else, such as plain \
             HTTP)"
                .to_owned(),
        ),
        Error::AlertReceived(AlertDescription::UnknownCA) => (
            FailureKind::Handshake,
            "the handshake failed: the server refused this client (unknown CA)".to_owned(),
        ),
        Error::AlertReceived(alert) => (
            FailureKind::Handshake,
            format!("the handshake failed: the server sent the alert {alert:?}"),
        ),
        other => (
            FailureKind::Handshake,
            format!("the handshake failed ({other})"),
        ),
    };
    TlsFailure { kind, reason }
}

fn certificate_reason(error: &CertificateError) -> String {
    match error {
        CertificateError::UnknownIssuer => "its certificate has an unknown issuer (neither \
             signed by a trusted CA nor itself given as trusted)"
            .to_owned(),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "its certificate has expired".to_owned()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "its certificate is not valid yet (check this Mac's clock)".to_owned()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "its certificate is not valid for this name".to_owned()
        }
        CertificateError::Revoked => "its certificate has been revoked".to_owned(),
        CertificateError::BadSignature => "its certificate has a bad signature".to_owned(),
        other if super::verifier::ca_used_as_end_entity(other) => {
            "its certificate is a CA's certificate, not a server's (one is accepted as the \
             server's own only when that very certificate is given as trusted)"
                .to_owned()
        }
        other => format!("its certificate was refused ({other:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(e: CertificateError) -> String {
        rustls_failure(&Error::InvalidCertificate(e)).reason
    }

    #[test]
    fn reasons_are_plain_words() {
        assert!(reason(CertificateError::UnknownIssuer).contains("unknown issuer"));
        assert!(reason(CertificateError::Expired).contains("expired"));
        assert!(reason(CertificateError::NotValidForName).contains("not valid for this name"));
        let ca = CertificateError::Other(rustls::OtherError(std::sync::Arc::new(
            webpki::Error::CaUsedAsEndEntity,
        )));
        assert!(reason(ca).contains("a CA's certificate, not a server's"));
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let failure = io_failure(&io).unwrap();
        assert_eq!(failure.kind, FailureKind::Certificate);
        assert!(failure.reason.contains("unknown issuer"));
        assert!(io_failure(&std::io::Error::other("x")).is_none());
        let eof = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            super::super::connector::HandshakeEof,
        );
        assert!(io_failure(&eof)
            .unwrap()
            .reason
            .contains("during the TLS handshake"));
        let handshake = rustls_failure(&Error::DecryptError);
        assert_eq!(handshake.kind, FailureKind::Handshake);
        assert!(handshake.reason.contains("handshake failed"));
        let plain = rustls_failure(&Error::InvalidMessage(InvalidMessage::InvalidContentType));
        assert_eq!(plain.kind, FailureKind::NotTls);
        assert!(plain.reason.contains("does not speak TLS"));
    }
}
