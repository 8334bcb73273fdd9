//! TLS for the server's own HTTPS requests (image downloads, callbacks): which roots they
//! trust, and a TLS failure told in plain words.
//!
//! Trust is the operating system's store as rustls-native-certs reads it (the macOS
//! keychains, with their trust settings, on a Mac; the system CA bundle on Linux), or, as
//! curl and OpenSSL do, `SSL_CERT_FILE` / `SSL_CERT_DIR` instead of it when set; plus the PEM
//! bundle of `--ca-file`. Every connection verifies with rustls' own (webpki) verifier, so a
//! failure has the same reasons on a Mac and on Linux.

pub mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// The roots every outgoing HTTPS connection trusts; cheap to clone.
#[derive(Clone)]
pub struct ClientTrust {
    config: TlsConfig,
    /// Kept to build the same trust with a client certificate (etcd's `--client-cert-auth`).
    roots: Arc<Vec<Certificate<'static>>>,
    /// Where the roots came from, for the startup log.
    summary: String,
}

impl std::fmt::Debug for ClientTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary)
    }
}

impl ClientTrust {
    /// The ureq TLS settings: rustls with ring, these roots.
    pub fn tls_config(&self) -> TlsConfig {
        self.config.clone()
    }

    /// Where the roots came from, e.g. `148 roots from the system store + 1 from ca.pem`.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// The system store alone (or `SSL_CERT_FILE`); no roots at all when it cannot be read,
    /// so that every HTTPS request then fails with an unknown issuer instead of a panic.
    pub fn system() -> Self {
        client_trust(None).unwrap_or_else(|e| {
            crate::warn!("{e}");
            Self::from_roots(Vec::new(), "no trusted roots".to_owned())
        })
    }

    /// Only the certificates of `ca_file` (tests, and hosts that trust nothing else).
    pub fn from_ca_file_only(ca_file: &Path) -> Result<Self, String> {
        let extra = read_ca_file(ca_file)?;
        let summary = format!("{} roots from {}", extra.len(), ca_file.display());
        Ok(Self::from_roots(extra, summary))
    }

    fn from_roots(roots: Vec<CertificateDer<'static>>, summary: String) -> Self {
        let roots: Vec<Certificate<'static>> = roots
            .iter()
            .map(|der| Certificate::from_der(der.as_ref()).to_owned())
            .collect();
        let roots = Arc::new(roots);
        let config = Self::builder(&roots).build();
        Self {
            config,
            roots,
            summary,
        }
    }

    fn builder(roots: &Arc<Vec<Certificate<'static>>>) -> ureq::tls::TlsConfigBuilder {
        TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::Specific(roots.clone()))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
    }

    /// The same roots, presenting the certificate chain of `cert` with the key of `key`
    /// (PEM files) to servers that ask for one.
    pub fn with_client_identity(&self, cert: &Path, key: &Path) -> Result<Self, String> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let chain = ureq::tls::parse_pem(&cert_pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{} is not valid PEM: {e}", cert.display()))?;
        if chain.is_empty() {
            return Err(format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                cert.display()
            ));
        }
        let private = ureq::tls::PrivateKey::from_pem(&key_pem).map_err(|e| {
            format!(
                "{} holds no usable private key (PKCS#8, RSA or EC, unencrypted): {e}",
                key.display()
            )
        })?;
        let config = Self::builder(&self.roots)
            .client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, private)))
            .build();
        Ok(Self {
            config,
            roots: self.roots.clone(),
            summary: format!("{}, client certificate {}", self.summary, cert.display()),
        })
    }
}

/// Builds the trust of the settings: the system store (or `SSL_CERT_FILE` / `SSL_CERT_DIR`
/// in its place) plus `ca_file`. An unreadable or empty `ca_file` is an error (a typo must
/// not leave an internal CA untrusted in silence); a system store that cannot be read is
/// not, as long as some root is left.
pub fn client_trust(ca_file: Option<&Path>) -> Result<ClientTrust, String> {
    let native = rustls_native_certs::load_native_certs();
    let from_env = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
        .iter()
        .filter(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
        .copied()
        .collect::<Vec<_>>();
    let source = if from_env.is_empty() {
        "the system store".to_owned()
    } else {
        from_env.join(" and ")
    };
    for error in &native.errors {
        crate::warn!("reading trusted roots from {source}: {error}");
    }
    let mut roots = native.certs;
    let mut summary = format!("{} roots from {source}", roots.len());
    if let Some(path) = ca_file {
        let extra = read_ca_file(path)?;
        summary.push_str(&format!(" + {} from {}", extra.len(), path.display()));
        roots.extend(extra);
    }
    if roots.is_empty() {
        return Err(format!(
            "no trusted root certificate found ({summary}): HTTPS images and callbacks would all fail; \
             set --ca-file / OSX_BUILDER_CA_FILE to a PEM bundle"
        ));
    }
    Ok(ClientTrust::from_roots(roots, summary))
}

fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = || PathBuf::from(path).display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read the CA file {} (--ca-file / OSX_BUILDER_CA_FILE): {e}",
            shown()
        )
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the CA file {} is not valid PEM: {e}", shown()))?;
    if certs.is_empty() {
        return Err(format!(
            "the CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            shown()
        ));
    }
    Ok(certs)
}

/// Why a TLS connection failed, in plain words, when `error` is a TLS failure.
pub fn failure_reason(error: &ureq::Error) -> Option<String> {
    match error {
        ureq::Error::Rustls(e) => Some(rustls_reason(e)),
        ureq::Error::Tls(detail) => Some(format!("TLS setup failed ({detail})")),
        ureq::Error::Io(io) => io_reason(io),
        _ => None,
    }
}

/// The same for an io error that may wrap a rustls one (rustls reports through `io::Error`).
pub fn io_reason(io: &std::io::Error) -> Option<String> {
    let inner = io.get_ref()?;
    if let Some(e) = inner.downcast_ref::<rustls::Error>() {
        return Some(rustls_reason(e));
    }
    if let Some(e) = inner.downcast_ref::<ureq::Error>() {
        return failure_reason(e);
    }
    None
}

fn rustls_reason(error: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    match error {
        Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => {
                "its certificate has an unknown issuer (not signed by a CA this server trusts)"
                    .to_owned()
            }
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
            other => format!("its certificate was refused ({other:?})"),
        },
        Error::AlertReceived(AlertDescription::UnknownCA) => {
            "the handshake failed: the server refused this client (unknown CA)".to_owned()
        }
        Error::AlertReceived(alert) => {
            format!("the handshake failed: the server sent the alert {alert:?}")
        }
        other => format!("the handshake failed ({other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_plain_words() {
        use rustls::{CertificateError, Error};
        let reason = |e: CertificateError| rustls_reason(&Error::InvalidCertificate(e));
        assert!(reason(CertificateError::UnknownIssuer).contains("unknown issuer"));
        assert!(reason(CertificateError::Expired).contains("expired"));
        assert!(reason(CertificateError::NotValidForName).contains("not valid for this name"));
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert!(io_reason(&io).unwrap().contains("unknown issuer"));
        assert!(io_reason(&std::io::Error::other("x")).is_none());
        assert!(rustls_reason(&Error::DecryptError).contains("handshake failed"));
    }

    #[test]
    fn a_bad_ca_file_names_itself() {
        let dir = std::env::temp_dir().join(format!("osxb-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        assert!(client_trust(Some(&missing))
            .unwrap_err()
            .contains("missing.pem"));
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(ClientTrust::from_ca_file_only(&empty)
            .unwrap_err()
            .contains("holds no PEM certificate"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
