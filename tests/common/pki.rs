//! Certificates made by the tests (rcgen): a test CA and leaves signed by it, for the
//! HTTPS image servers and the API over TLS.

pub struct Pki {
    pub ca_pem: String,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

/// A leaf certificate and its key, PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Pki {
    pub fn new() -> Self {
        Self::named("osx-builder test CA")
    }

    pub fn named(name: &str) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = params.self_signed(&ca_key).unwrap();
        Self {
            ca_pem: ca_cert.pem(),
            ca_cert,
            ca_key,
        }
    }

    pub fn leaf(&self, names: &[&str], expired: bool) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    pub fn local(&self) -> Leaf {
        self.leaf(&["127.0.0.1", "localhost"], false)
    }
}

/// The key type of an [`openssl_self_signed`] certificate.
#[derive(Clone, Copy, Debug)]
pub enum KeyType {
    Rsa,
    Ec,
}

/// Whether the `openssl` command line is installed; says it on stderr when not, for the
/// calling test to skip.
pub fn have_openssl() -> bool {
    let found = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        eprintln!("SKIPPED: `openssl` is not installed");
    }
    found
}

/// A self-signed certificate and its key made by the one-line recipe most people use,
/// `openssl req -x509 -newkey ... -nodes -subj /CN=host -addext subjectAltName=<san>`, as
/// `<dir>/<name>-cert.pem` and `<dir>/<name>-key.pem`; `extra` are more options of
/// `openssl req`. openssl's default configuration marks it `CA:TRUE`, the case these tests
/// are about: checked here, so that a test never passes for a certificate it did not mean.
/// `None` where openssl is missing (see [`have_openssl`]).
pub fn openssl_self_signed(
    dir: &std::path::Path,
    name: &str,
    key: KeyType,
    san: &str,
    extra: &[&str],
) -> Option<Leaf> {
    if !have_openssl() {
        return None;
    }
    let (cert_path, key_path) = (
        dir.join(format!("{name}-cert.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    let new_key: &[&str] = match key {
        KeyType::Rsa => &["-newkey", "rsa:2048"],
        KeyType::Ec => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
    };
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509"])
        .args(new_key)
        .args(["-nodes", "-subj", "/CN=host", "-addext"])
        .arg(format!("subjectAltName={san}"))
        .args(extra)
        .arg("-keyout")
        .arg(&key_path)
        .arg("-out")
        .arg(&cert_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl req -x509: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("CA:TRUE"), "not marked CA:TRUE: {text}");
    Some(Leaf {
        cert: std::fs::read_to_string(&cert_path).unwrap(),
        key: std::fs::read_to_string(&key_path).unwrap(),
    })
}

/// Whether this openssl's `req` takes `-not_before` and `-not_after` (3.4 and later): the
/// only way to make an expired certificate with it.
pub fn openssl_sets_validity() -> bool {
    std::process::Command::new("openssl")
        .args(["req", "-help"])
        .output()
        .is_ok_and(|out| {
            // Help goes to stderr in 3.0, to stdout in later versions.
            [out.stdout, out.stderr]
                .iter()
                .any(|text| String::from_utf8_lossy(text).contains("not_after"))
        })
}

/// What [`openssl_self_signed`] makes, but valid in 2020 only, for an openssl without
/// `-not_after`: self-signed with its own key, marked CA:TRUE, for `names`.
pub fn expired_self_signed(names: &[&str]) -> Leaf {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "host");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    Leaf {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}
