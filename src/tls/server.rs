//! The API's own TLS identity (`--tls-cert`, `--tls-key`), checked before the server
//! starts: a missing or unreadable file, a file without a PEM certificate or key, or a key
//! that does not belong to the certificate stops it with a message naming the file.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The PEM files for tiny_http, or `None` to serve plain HTTP.
pub fn load_identity(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<tiny_http::SslConfig>, String> {
    let (cert_path, key_path) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err("--tls-cert is set but --tls-key is not; set both to serve HTTPS".into())
        }
        (None, Some(_)) => {
            return Err("--tls-key is set but --tls-cert is not; set both to serve HTTPS".into())
        }
        (Some(cert), Some(key)) => (cert, key),
    };
    let read = |path: &Path, setting: &str| {
        std::fs::read(path)
            .map_err(|e| format!("cannot read the {setting} file {}: {e}", path.display()))
    };
    let certificate = read(cert_path, "--tls-cert / OSX_BUILDER_TLS_CERT")?;
    let private_key = read(key_path, "--tls-key / OSX_BUILDER_TLS_KEY")?;
    let chain = CertificateDer::pem_slice_iter(&certificate)
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|chain| !chain.is_empty())
        .ok_or_else(|| {
            format!(
                "the --tls-cert file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                cert_path.display()
            )
        })?;
    let der = PrivateKeyDer::from_pem_slice(&private_key).map_err(|_| {
        format!(
            "the --tls-key file {} holds no unencrypted PEM private key (PKCS#8, RSA or EC)",
            key_path.display()
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider.key_provider.load_private_key(der).map_err(|e| {
        format!(
            "the --tls-key file {} holds a key this server cannot use: {e}",
            key_path.display()
        )
    })?;
    rustls::sign::CertifiedKey::new(chain, signing_key)
        .keys_match()
        .or_else(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown) => Ok(()),
            e => Err(e),
        })
        .map_err(|e| {
            format!(
                "the key in {} does not belong to the certificate in {} ({e}); give the key the certificate was issued for",
                key_path.display(),
                cert_path.display()
            )
        })?;
    Ok(Some(tiny_http::SslConfig {
        certificate,
        private_key,
    }))
}
