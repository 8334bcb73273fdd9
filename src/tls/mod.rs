//! TLS for the server's own HTTPS requests (image downloads, callbacks) and the command
//! line client's: which roots they trust, how a server's certificate is checked, and a TLS
//! failure told in plain words.
//!
//! Trust is the operating system's store as rustls-native-certs reads it (the macOS
//! keychains, with their trust settings, on a Mac; the system CA bundle on Linux), or, as
//! curl and OpenSSL do, `SSL_CERT_FILE` / `SSL_CERT_DIR` instead of it when set; plus the PEM
//! bundle of `--ca-file`. Every connection verifies with rustls' own (webpki) verifier, so a
//! failure has the same reasons on a Mac and on Linux; a certificate given explicitly is
//! also accepted as the server's own certificate (see [`verifier`]).

mod connector;
mod failure;
pub mod server;
mod verifier;

pub use failure::{failure, failure_reason, io_failure, FailureKind, TlsFailure};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// The roots every outgoing HTTPS connection trusts and the one verifier that checks
/// them; cheap to clone.
#[derive(Clone)]
pub struct ClientTrust {
    config: Arc<rustls::ClientConfig>,
    /// The roots and the explicit ones, kept to build the same trust with a client
    /// certificate (etcd's `--client-cert-auth`).
    roots: Arc<(Vec<CertificateDer<'static>>, Vec<CertificateDer<'static>>)>,
    /// Where the roots came from, for the startup log.
    summary: String,
}

impl std::fmt::Debug for ClientTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary)
    }
}

impl ClientTrust {
    /// An HTTP agent with `config`'s settings whose HTTPS connections are checked against
    /// these roots. Every agent that may speak HTTPS is made here.
    pub fn agent(&self, config: ureq::config::Config) -> ureq::Agent {
        ureq::Agent::with_parts(
            config,
            connector::chain(self.config.clone()),
            ureq::unversioned::resolver::DefaultResolver::default(),
        )
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
            Self::from_roots(Vec::new(), Vec::new(), "no trusted roots".to_owned())
        })
    }

    /// Only the certificates of `ca_file` (tests, and hosts that trust nothing else).
    pub fn from_ca_file_only(ca_file: &Path) -> Result<Self, String> {
        let extra = read_ca_file(ca_file)?;
        let summary = format!("{} roots from {}", extra.len(), ca_file.display());
        Ok(Self::from_roots(extra.clone(), extra, summary))
    }

    /// `explicit` are the roots given by name (`--ca-file`, `SSL_CERT_FILE`,
    /// `SSL_CERT_DIR`), each also in `roots`.
    fn from_roots(
        roots: Vec<CertificateDer<'static>>,
        explicit: Vec<CertificateDer<'static>>,
        summary: String,
    ) -> Self {
        let roots = Arc::new((roots, explicit));
        let config = Self::builder(&roots).with_no_client_auth();
        Self {
            config: Arc::new(config),
            roots,
            summary,
        }
    }

    fn builder(
        roots: &(Vec<CertificateDer<'static>>, Vec<CertificateDer<'static>>),
    ) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = verifier::Verifier::new(roots.0.clone(), roots.1.clone(), provider.clone());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::ALL_VERSIONS)
            // Only when ring lacks every version rustls knows: a broken build, not a setting.
            .expect("ring supports TLS 1.2 and 1.3")
            // Not dangerous here: the verifier is webpki's, with one addition (see verifier.rs).
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
    }

    /// The same roots, presenting the certificate chain of `cert` with the key of `key`
    /// (PEM files) to servers that ask for one (etcd's `--client-cert-auth`).
    pub fn with_client_identity(&self, cert: &Path, key: &Path) -> Result<Self, String> {
        use rustls_pki_types::PrivateKeyDer;
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{} is not valid PEM: {e}", cert.display()))?;
        if chain.is_empty() {
            return Err(format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                cert.display()
            ));
        }
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            format!(
                "{} holds no usable private key (PKCS#8, RSA or EC, unencrypted): {e}",
                key.display()
            )
        })?;
        let config = Self::builder(&self.roots)
            .with_client_auth_cert(chain, private)
            .map_err(|e| {
                format!(
                    "{} and {} do not go together: {e}",
                    cert.display(),
                    key.display()
                )
            })?;
        Ok(Self {
            config: Arc::new(config),
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
    // Named by the operator, unlike the system store's: these may be a server's own.
    let mut explicit = if from_env.is_empty() {
        Vec::new()
    } else {
        roots.clone()
    };
    if let Some(path) = ca_file {
        let extra = read_ca_file(path)?;
        summary.push_str(&format!(" + {} from {}", extra.len(), path.display()));
        explicit.extend(extra.iter().cloned());
        roots.extend(extra);
    }
    if roots.is_empty() {
        return Err(format!(
            "no trusted root certificate found ({summary}): HTTPS images and callbacks would all fail; \
             set --ca-file / OSX_BUILDER_CA_FILE to a PEM bundle"
        ));
    }
    Ok(ClientTrust::from_roots(roots, explicit, summary))
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

#[cfg(test)]
mod tests {
    use super::*;

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
