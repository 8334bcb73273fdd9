//! HTTPS images and callbacks, and the API over TLS, through the real binary. Every
//! certificate is made here (rcgen): a test CA, a server certificate for 127.0.0.1 and
//! localhost, an expired one and one for another name.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::pki::{
    expired_self_signed, openssl_self_signed, openssl_sets_validity, KeyType, Leaf, Pki,
};
use common::{image_body, sha1_hex, CallbackReceiver, Server, ServerOptions, TempDir};
use serde_json::Value;

fn server_config(leaf: &Leaf) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

#[derive(Clone)]
enum Entry {
    /// The bytes; `range` honours Range requests; `drop_at` cuts the first answer there.
    File {
        bytes: Arc<Vec<u8>>,
        range: bool,
        drop_at: Option<usize>,
    },
    Redirect(String),
}

/// A request as the HTTPS server saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// An HTTPS server on 127.0.0.1: files (with or without Range), redirects, and POSTs
/// recorded and answered 200.
struct HttpsServer {
    base: String,
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl HttpsServer {
    fn start(leaf: &Leaf) -> Self {
        let config = server_config(leaf);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("https://{}", listener.local_addr().unwrap());
        let entries: Arc<Mutex<HashMap<String, Entry>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (e, s) = (entries.clone(), seen.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (config, e, s) = (config.clone(), e.clone(), s.clone());
                thread::spawn(move || serve(stream, config, &e, &s));
            }
        });
        Self {
            base,
            entries,
            seen,
        }
    }

    fn add(&self, path: &str, entry: Entry) -> String {
        self.entries.lock().unwrap().insert(path.into(), entry);
        format!("{}{path}", self.base)
    }

    fn file(&self, path: &str, bytes: Vec<u8>) -> String {
        self.add(
            path,
            Entry::File {
                bytes: Arc::new(bytes),
                range: true,
                drop_at: None,
            },
        )
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|s| s.path == path).cloned().collect()
    }
}

fn serve(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    entries: &Mutex<HashMap<String, Entry>>,
    seen: &Mutex<Vec<Seen>>,
) {
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut reader = BufReader::new(rustls::StreamOwned::new(conn, stream));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let headers: HashMap<String, String> = common::http::read_headers(&mut reader)
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let mut body = Vec::new();
    if method == "POST" {
        let n: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        body.resize(n, 0);
        if reader.read_exact(&mut body).is_err() {
            return;
        }
    }
    let range_from: Option<usize> = headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse().ok());
    let earlier = {
        let mut seen = seen.lock().unwrap();
        let earlier = seen.iter().filter(|s| s.path == path).count();
        seen.push(Seen {
            path: path.clone(),
            headers,
            body,
        });
        earlier
    };
    let stream = reader.get_mut();
    let entry = entries.lock().unwrap().get(&path).cloned();
    let write = |stream: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
                 head: String,
                 body: &[u8]| {
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
        let _ = stream.flush();
    };
    match (method.as_str(), entry) {
        ("POST", _) => write(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
            b"",
        ),
        (_, Some(Entry::Redirect(to))) => write(
            stream,
            format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            b"",
        ),
        (
            _,
            Some(Entry::File {
                bytes,
                range,
                drop_at,
            }),
        ) => {
            let total = bytes.len();
            match range_from.filter(|_| range) {
                Some(from) if from < total => write(
                    stream,
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{total}\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n",
                        total - from,
                        total - 1
                    ),
                    &bytes[from..],
                ),
                _ => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nETag: \"v1\"\r\nAccept-Ranges: {}\r\nConnection: close\r\n\r\n",
                        if range { "bytes" } else { "none" }
                    );
                    match drop_at.filter(|_| earlier == 0) {
                        // The connection is cut (no close_notify) part way.
                        Some(at) => {
                            let _ = stream.write_all(head.as_bytes());
                            let _ = stream.write_all(&bytes[..at]);
                            let _ = stream.flush();
                            let _ = stream.sock.shutdown(std::net::Shutdown::Both);
                        }
                        None => write(stream, head, &bytes),
                    }
                }
            }
        }
        (_, None) => write(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
            b"",
        ),
    }
}

/// The test's folder, with the CA's PEM written to `ca.pem`.
fn folder(tag: &str, pki: &Pki) -> (TempDir, PathBuf) {
    let dir = TempDir::new(tag);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    (dir, ca)
}

fn with_ca_file(ca: &std::path::Path) -> ServerOptions {
    ServerOptions {
        args: vec!["--ca-file".into(), ca.display().to_string()],
        env: Vec::new(),
    }
}

fn create(server: &Server, body: &Value) -> String {
    let (status, vm) = server.create(body);
    assert_eq!(status, 202, "{vm}\n{}", server.log());
    vm["id"].as_str().unwrap().to_string()
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, body) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, *body).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gold_files() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("box/gold.vmx", common::GOLD_VMX.as_bytes()),
        ("box/disk.vmdk", common::DISK_DESCRIPTOR.as_bytes()),
    ]
}

#[test]
fn every_archive_format_over_https_reaches_running() {
    let pki = Pki::new();
    let (dir, ca) = folder("tls-formats", &pki);
    let images = HttpsServer::start(&pki.local());
    let tar = tar_of(&gold_files());
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    };
    let bz2 = {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    };
    let zip = {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, body) in gold_files() {
            zip.start_file(name, options).unwrap();
            zip.write_all(body).unwrap();
        }
        zip.finish().unwrap().into_inner()
    };
    let server = Server::start_with(dir.path(), with_ca_file(&ca));
    let mut ids = Vec::new();
    for (name, bytes) in [
        ("/a.tar", tar),
        ("/a.tar.gz", gz),
        ("/a.tar.bz2", bz2),
        ("/a.zip", zip),
    ] {
        let checksum = sha1_hex(&bytes);
        let url = images.file(name, bytes);
        ids.push((name, create(&server, &image_body(&url, &checksum))));
    }
    for (name, id) in ids {
        let vm = server.wait_ready(&id);
        assert_eq!(vm["status"], "running", "{name}: {vm}");
    }
}

#[test]
fn ssl_cert_file_is_trusted_like_curl_does() {
    let pki = Pki::new();
    let (dir, ca) = folder("tls-sslcertfile", &pki);
    let images = HttpsServer::start(&pki.local());
    let archive = common::gold_tar_gz("box");
    let checksum = sha1_hex(&archive);
    let url = images.file("/gold.tar.gz", archive);
    let server = Server::start_with(
        dir.path(),
        ServerOptions {
            env: vec![("SSL_CERT_FILE".into(), ca.display().to_string())],
            ..ServerOptions::default()
        },
    );
    let id = create(&server, &image_body(&url, &checksum));
    server.wait_ready(&id);
    assert!(server.log().contains("SSL_CERT_FILE"), "{}", server.log());
}

/// The failed VM's error for an image served with `leaf`, the server trusting the PEM
/// certificates `trusted` (given with `--ca-file`) or, when `None`, an unrelated CA only.
fn tls_failure(tag: &str, leaf: &Leaf, trusted: Option<&str>, host: &str) -> Value {
    let dir = TempDir::new(tag);
    let ca = dir.path().join("ca.pem");
    let images = HttpsServer::start(leaf);
    let archive = common::gold_tar_gz("box");
    let checksum = sha1_hex(&archive);
    let url = images
        .file("/gold.tar.gz", archive)
        .replace("127.0.0.1", host);
    let options = match trusted {
        Some(pem) => {
            std::fs::write(&ca, pem).unwrap();
            with_ca_file(&ca)
        }
        // Some root must be there for the server to start: an unrelated CA, in place of
        // whatever the system store holds.
        None => {
            std::fs::write(&ca, Pki::named("another CA").ca_pem).unwrap();
            ServerOptions {
                env: vec![
                    ("SSL_CERT_FILE".into(), ca.display().to_string()),
                    ("SSL_CERT_DIR".into(), "/nonexistent".into()),
                ],
                ..ServerOptions::default()
            }
        }
    };
    let server = Server::start_with(dir.path(), options);
    let id = create(&server, &image_body(&url, &checksum));
    let vm = server.wait_failed(&id);
    assert_eq!(vm["error"]["code"], "image-tls-error", "{vm}");
    let message = vm["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains(host), "{message}");
    assert!(message.contains("--ca-file"), "{message}");
    vm
}

fn error_message(vm: &Value) -> &str {
    vm["error"]["message"].as_str().unwrap_or_default()
}

#[test]
fn untrusted_expired_and_wrong_name_certificates_each_say_why() {
    let pki = Pki::new();
    let vm = tls_failure("tls-unknown", &pki.local(), None, "127.0.0.1");
    assert!(error_message(&vm).contains("unknown issuer"), "{vm}");
    let vm = tls_failure(
        "tls-expired",
        &pki.leaf(&["127.0.0.1", "localhost"], true),
        Some(&pki.ca_pem),
        "127.0.0.1",
    );
    assert!(error_message(&vm).contains("expired"), "{vm}");
    let vm = tls_failure(
        "tls-name",
        &pki.leaf(&["images.example"], false),
        Some(&pki.ca_pem),
        "localhost",
    );
    assert!(
        error_message(&vm).contains("not valid for this name"),
        "{vm}"
    );
}

/// The subjectAltName of the recipe, for a server on this machine.
const LOCAL_SAN: &str = "IP:127.0.0.1,DNS:localhost";

/// A server started in `root` with `options` makes a VM of an image served over https with
/// `leaf`: waits for it to run.
fn runs_from_https(root: &std::path::Path, leaf: &Leaf, options: ServerOptions) {
    let images = HttpsServer::start(leaf);
    let archive = common::gold_tar_gz("box");
    let checksum = sha1_hex(&archive);
    let url = images.file("/gold.tar.gz", archive);
    let server = Server::start_with(root, options);
    let id = create(&server, &image_body(&url, &checksum));
    server.wait_ready(&id);
}

#[test]
fn self_signed_openssl_certificates_given_as_trusted_serve_images_and_receive_callbacks() {
    let dir = TempDir::new("tls-self-signed");
    let Some(rsa) = openssl_self_signed(dir.path(), "rsa", KeyType::Rsa, LOCAL_SAN, &[]) else {
        return;
    };
    let Some(ec) = openssl_self_signed(dir.path(), "ec", KeyType::Ec, LOCAL_SAN, &[]) else {
        return;
    };
    let (rsa_pem, ec_pem) = (
        dir.path().join("rsa-cert.pem"),
        dir.path().join("ec-cert.pem"),
    );

    // --ca-file naming the RSA certificate: the image and the callback receiver use it.
    let images = HttpsServer::start(&rsa);
    let archive = common::gold_tar_gz("box");
    let checksum = sha1_hex(&archive);
    let url = images.file("/gold.tar.gz", archive);
    let receiver = HttpsServer::start(&rsa);
    let server = Server::start_with(&dir.path().join("ca-file"), with_ca_file(&rsa_pem));
    let mut body = image_body(&url, &checksum);
    body["callback_url"] = Value::String(format!("{}/callback", receiver.base));
    let id = create(&server, &body);
    server.wait_ready(&id);
    let seen = common::eventually("the callback over https", || {
        Some(receiver.seen("/callback")).filter(|seen| !seen.is_empty())
    });
    let posted: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(posted["id"], id.as_str(), "{}", server.log());
    drop(server);

    // SSL_CERT_FILE, then SSL_CERT_DIR, holding the EC certificate.
    let env = |name: &str, value: &std::path::Path| ServerOptions {
        env: vec![(name.into(), value.display().to_string())],
        ..ServerOptions::default()
    };
    runs_from_https(&dir.path().join("file"), &ec, env("SSL_CERT_FILE", &ec_pem));
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&ec_pem, certs.join("ec.pem")).unwrap();
    runs_from_https(&dir.path().join("dir"), &ec, env("SSL_CERT_DIR", &certs));
}

#[test]
fn self_signed_certificates_untrusted_for_another_name_or_expired_are_refused() {
    let dir = TempDir::new("tls-self-signed-refused");
    let Some(local) = openssl_self_signed(dir.path(), "local", KeyType::Ec, LOCAL_SAN, &[]) else {
        return;
    };
    // Not given as trusted: its issuer is itself, which nothing trusts.
    let vm = tls_failure("tls-ss-untrusted", &local, None, "127.0.0.1");
    assert!(error_message(&vm).contains("unknown issuer"), "{vm}");
    // Given as trusted, but for another name than the URL's.
    let other =
        openssl_self_signed(dir.path(), "other", KeyType::Rsa, "DNS:images.example", &[]).unwrap();
    let vm = tls_failure("tls-ss-name", &other, Some(&other.cert), "127.0.0.1");
    assert!(
        error_message(&vm).contains("not valid for this name"),
        "{vm}"
    );
    let vm = tls_failure("tls-ss-name-dns", &other, Some(&other.cert), "localhost");
    assert!(
        error_message(&vm).contains("not valid for this name"),
        "{vm}"
    );
    // Given as trusted, but expired.
    let expired = if openssl_sets_validity() {
        let window = [
            "-not_before",
            "20200101000000Z",
            "-not_after",
            "20210101000000Z",
        ];
        openssl_self_signed(dir.path(), "expired", KeyType::Ec, LOCAL_SAN, &window).unwrap()
    } else {
        expired_self_signed(&["127.0.0.1", "localhost"])
    };
    let vm = tls_failure("tls-ss-expired", &expired, Some(&expired.cert), "127.0.0.1");
    assert!(error_message(&vm).contains("expired"), "{vm}");
}

/// An image whose first answer is cut half way, served with or without Range support;
/// the VM must reach running. Returns the requests the image server saw.
fn cut_download(tag: &str, range: bool) -> Vec<Seen> {
    let pki = Pki::new();
    let (dir, ca) = folder(tag, &pki);
    let images = HttpsServer::start(&pki.local());
    let archive = common::gold_tar_gz_padded("box", 256 * 1024);
    let checksum = sha1_hex(&archive);
    let at = archive.len() / 2;
    let url = images.add(
        "/gold.tar.gz",
        Entry::File {
            bytes: Arc::new(archive),
            range,
            drop_at: Some(at),
        },
    );
    let server = Server::start_with(dir.path(), with_ca_file(&ca));
    let id = create(&server, &image_body(&url, &checksum));
    server.wait_ready(&id);
    images.seen("/gold.tar.gz")
}

#[test]
fn a_drop_mid_download_over_https_resumes_with_range() {
    let seen = cut_download("tls-resume", true);
    assert_eq!(seen.len(), 2, "{seen:?}");
    let range = seen[1].headers.get("range").cloned().unwrap_or_default();
    let from: usize = range
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap_or(0);
    assert!(range.starts_with("bytes=") && from > 0, "{seen:?}");
}

#[test]
fn a_drop_without_range_support_restarts_over_https() {
    let seen = cut_download("tls-norange", false);
    // The cut answer, the Range request answered 200, the restart (which may be that one).
    assert!(seen.len() >= 2, "{seen:?}");
}

#[test]
fn an_https_to_http_redirect_is_refused() {
    let pki = Pki::new();
    let (dir, ca) = folder("tls-redirect", &pki);
    let images = HttpsServer::start(&pki.local());
    let plain = common::http::FileServer::start();
    let archive = common::gold_tar_gz("box");
    let checksum = sha1_hex(&archive);
    let http_url = plain.add("/gold.tar.gz", archive.clone());
    let url = images.add("/moved.tar.gz", Entry::Redirect(http_url));
    // An https -> https redirect, relative, is followed.
    images.file("/gold.tar.gz", archive);
    let followed = images.add("/same.tar.gz", Entry::Redirect("/gold.tar.gz".into()));
    let server = Server::start_with(dir.path(), with_ca_file(&ca));
    let id = create(&server, &image_body(&url, &checksum));
    let vm = server.wait_failed(&id);
    assert_eq!(vm["error"]["code"], "image-url-unsupported", "{vm}");
    assert!(
        vm["error"]["message"]
            .as_str()
            .unwrap()
            .contains("from https to plain http"),
        "{vm}"
    );
    assert_eq!(plain.hits("/gold.tar.gz"), 0);
    let id = create(&server, &image_body(&followed, &checksum));
    server.wait_ready(&id);
}

#[test]
fn callbacks_over_https_are_delivered_signed_and_untrusted_receivers_logged() {
    let pki = Pki::new();
    let (dir, ca) = folder("tls-callback", &pki);
    let images = HttpsServer::start(&pki.local());
    let archive = common::gold_tar_gz("box");
    let checksum = sha1_hex(&archive);
    let url = images.file("/gold.tar.gz", archive);
    let receiver = HttpsServer::start(&pki.local());
    let callback = format!("{}/callback", receiver.base);
    // A receiver whose CA the server does not know.
    let stranger = Pki::named("a stranger's CA");
    let untrusted = HttpsServer::start(&stranger.local());
    let untrusted_url = format!("{}/callback", untrusted.base);
    let mut options = with_ca_file(&ca);
    options.args.extend([
        "--callback-secret".to_string(),
        "0123456789abcdef0123".to_string(),
    ]);
    let server = Server::start_with(dir.path(), options);
    let mut body = image_body(&url, &checksum);
    body["callback_url"] = Value::String(callback.clone());
    let id = create(&server, &body);
    server.wait_ready(&id);
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.seen("/callback").is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(25));
    }
    let seen = receiver.seen("/callback");
    assert_eq!(seen.len(), 1, "{}", server.log());
    let posted: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(posted["id"], id.as_str());
    assert!(
        seen[0].headers.contains_key("x-osx-builder-signature"),
        "{:?}",
        seen[0].headers
    );

    body["callback_url"] = Value::String(untrusted_url.clone());
    let id = create(&server, &body);
    server.wait_ready(&id);
    assert!(
        server.wait_log("unknown issuer"),
        "no TLS reason logged:\n{}",
        server.log()
    );
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&untrusted_url)).collect();
    assert_eq!(lines.len(), 1, "one attempt, not retried: {lines:?}");
    assert!(lines[0].contains("not retried"), "{lines:?}");
}

#[test]
fn callbacks_never_follow_redirects() {
    let dir = TempDir::new("tls-callback-redirect");
    let files = common::http::FileServer::start();
    let archive = common::gold_tar_gz("box");
    let checksum = sha1_hex(&archive);
    let url = files.add("/gold.tar.gz", archive);
    let target = CallbackReceiver::start();
    // A receiver that answers every POST with a redirect to the real one.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let redirector = format!("http://{}/cb", listener.local_addr().unwrap());
    let to = target.url.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = common::http::read_request_body(&mut stream);
            let _ = stream.write_all(
                format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
            );
        }
    });
    let server = Server::start(dir.path());
    let mut body = image_body(&url, &checksum);
    body["callback_url"] = Value::String(redirector.clone());
    let id = create(&server, &body);
    server.wait_ready(&id);
    assert!(
        server.wait_log("redirects are not followed"),
        "{}",
        server.log()
    );
    thread::sleep(Duration::from_millis(300));
    assert_eq!(target.attempts.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// The server with its API over TLS, and an agent that trusts the test CA.
fn tls_api(tag: &str) -> (TempDir, Server, ureq::Agent, Pki) {
    let pki = Pki::new();
    let (dir, ca) = folder(tag, &pki);
    let leaf = pki.local();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &leaf.cert).unwrap();
    std::fs::write(&key, &leaf.key).unwrap();
    let server = Server::start_with(
        dir.path(),
        ServerOptions {
            args: vec![
                // As the slow-client tests run the plain listener: few workers.
                "--http-threads".into(),
                "2".into(),
                "--tls-cert".into(),
                cert.display().to_string(),
                "--ca-file".into(),
                ca.display().to_string(),
            ],
            env: vec![("OSX_BUILDER_TLS_KEY".into(), key.display().to_string())],
        },
    );
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let trust = osx_builder::tls::ClientTrust::from_ca_file_only(&ca).unwrap();
    let agent = trust.agent(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    (dir, server, agent, pki)
}

fn json(response: ureq::http::Response<ureq::Body>) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[test]
fn the_api_over_tls_creates_polls_and_deletes() {
    let (_dir, server, agent, pki) = tls_api("tls-api");
    let images = HttpsServer::start(&pki.local());
    let archive = common::gold_tar_gz("box");
    let checksum = sha1_hex(&archive);
    let url = images.file("/gold.tar.gz", archive);
    let (status, vm) = json(
        agent
            .post(&server.url("/vms"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(image_body(&url, &checksum).to_string())
            .unwrap(),
    );
    assert_eq!(status, 202, "{vm}");
    let id = vm["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, vm) = json(
            agent
                .get(&server.url(&format!("/vms/{id}")))
                .call()
                .unwrap(),
        );
        assert_eq!(status, 200);
        if vm["status"] == "running" && vm["ip_address"] != "" {
            break;
        }
        assert_ne!(vm["status"], "failed", "{vm}");
        assert!(Instant::now() < deadline, "{vm}");
        thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = json(
        agent
            .delete(&server.url(&format!("/vms/{id}")))
            .call()
            .unwrap(),
    );
    assert_eq!(status, 204);
    let (status, vm) = json(
        agent
            .get(&server.url(&format!("/vms/{id}")))
            .call()
            .unwrap(),
    );
    assert_eq!(status, 404, "{vm}");
}

#[test]
fn plain_http_to_the_tls_port_is_refused_cleanly() {
    let (_dir, server, agent, _pki) = tls_api("tls-plain");
    let addr = server.base.trim_start_matches("https://").to_string();
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(format!("GET /vms HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let answer = String::from_utf8_lossy(&common::read_all(&mut stream)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("https-required"), "{answer}");
    // The listener is fine afterwards.
    let (status, _) = json(agent.get(&server.url("/vms")).call().unwrap());
    assert_eq!(status, 200);
}

#[test]
fn a_stalled_handshake_does_not_hold_the_server() {
    let (_dir, server, agent, _pki) = tls_api("tls-stall");
    let addr = server.base.trim_start_matches("https://").to_string();
    // The first bytes of a TLS record, then nothing: the handshake never completes.
    let mut stalled: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80]).unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    let (status, _) = json(agent.get(&server.url("/vms")).call().unwrap());
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    // The server closes them once the handshake time (the head timeout, 20 s) is up.
    let s = &mut stalled[0];
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let begun = Instant::now();
    let mut buf = [0u8; 64];
    let ended = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    };
    assert!(ended, "the stalled connection was not closed");
    assert!(
        begun.elapsed() < Duration::from_secs(35),
        "{:?}",
        begun.elapsed()
    );
}

#[test]
fn bad_tls_files_stop_the_server_naming_them() {
    let pki = Pki::new();
    let dir = TempDir::new("tls-badfiles");
    let leaf = pki.local();
    let other = pki.local();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let wrong_key = dir.path().join("other-key.pem");
    std::fs::write(&cert, &leaf.cert).unwrap();
    std::fs::write(&key, &leaf.key).unwrap();
    std::fs::write(&wrong_key, &other.key).unwrap();
    let missing = dir.path().join("missing.pem");
    for (cert, key, needle) in [
        (&missing, &key, "missing.pem"),
        (&cert, &missing, "missing.pem"),
        (&key, &key, "holds no PEM certificate"),
        (&cert, &cert, "holds no unencrypted PEM private key"),
        (&cert, &wrong_key, "does not belong to the certificate"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_osx-builder"))
            .args(["--port", "0", "--bind", "127.0.0.1", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        let text = common::log_lines::stderr_text(&out.stderr, common::log_lines::json_run());
        assert!(!out.status.success(), "{text}");
        assert!(text.contains(needle), "{needle}: {text}");
    }
}

/// A TLS client for the API that finishes its handshake, then sends `head` and one byte a
/// second of a header that never ends; returns the status and JSON of what it got back.
fn slow_tls_head(addr: &str, ca: &std::path::Path) -> (u16, Value) {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(900)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET /vms HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .unwrap();
    let mut answer = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if tls.write_all(b"a").is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn a_tls_head_sent_a_byte_a_second_holds_no_worker_and_times_out() {
    let (dir, server, agent, _pki) = tls_api("tls-slow-head");
    let addr = server.base.trim_start_matches("https://").to_string();
    let ca = dir.path().join("ca.pem");
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (addr, ca) = (addr.clone(), ca.clone());
            thread::spawn(move || slow_tls_head(&addr, &ca))
        })
        .collect();
    thread::sleep(Duration::from_secs(2));
    for _ in 0..3 {
        let started = Instant::now();
        let (status, _) = json(agent.get(&server.url("/vms")).call().unwrap());
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
    for client in clients {
        let (status, body) = client.join().unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (408, Some("request-timeout")),
            "{body}"
        );
    }
}

#[test]
fn the_command_line_client_speaks_to_the_api_over_tls_with_the_ca_it_is_given() {
    let (dir, server, _agent, _pki) = tls_api("tls-cli");
    let ca = dir.path().join("ca.pem");
    let client = |ca: Option<&std::path::Path>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_osx-builder"));
        command
            .args(["vm", "list", "--json", "--server", &server.base])
            .env_remove("OSX_BUILDER_CA_FILE")
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR");
        if let Some(ca) = ca {
            command.arg("--ca-file").arg(ca);
        }
        command.output().unwrap()
    };
    let trusted = client(Some(&ca));
    let said = String::from_utf8_lossy(&trusted.stderr).into_owned();
    assert_eq!(trusted.status.code(), Some(0), "{said}");
    let listed: Value = serde_json::from_slice(&trusted.stdout).unwrap();
    assert_eq!(listed, Value::Array(Vec::new()));
    // Without the test CA the server's certificate has an unknown issuer: said, not hidden.
    let untrusted = client(None);
    let said = String::from_utf8_lossy(&untrusted.stderr).to_lowercase();
    assert_ne!(untrusted.status.code(), Some(0), "{said}");
    assert!(
        said.contains("issuer") || said.contains("certificate"),
        "{said}"
    );
}

#[test]
fn the_command_line_client_trusts_a_self_signed_certificate_it_is_given_and_says_why_tls_fails() {
    let dir = TempDir::new("tls-cli-self-signed");
    if openssl_self_signed(dir.path(), "api", KeyType::Ec, LOCAL_SAN, &[]).is_none() {
        return;
    }
    let (cert, key) = (
        dir.path().join("api-cert.pem"),
        dir.path().join("api-key.pem"),
    );
    let server = Server::start_with(
        &dir.path().join("tls"),
        ServerOptions {
            args: vec![
                "--tls-cert".into(),
                cert.display().to_string(),
                "--tls-key".into(),
                key.display().to_string(),
            ],
            env: Vec::new(),
        },
    );
    // An unrelated CA in place of the system store, whatever this machine's holds.
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, Pki::named("another CA").ca_pem).unwrap();
    let health = |server: &str, ca: Option<&std::path::Path>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_osx-builder"));
        command
            .args(["health", "--server", server])
            .env_remove("OSX_BUILDER_CA_FILE")
            .env_remove("SSL_CERT_DIR")
            .env("SSL_CERT_FILE", &other);
        if let Some(ca) = ca {
            command.arg("--ca-file").arg(ca);
        }
        let out = command.output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), said)
    };
    for base in [
        server.base.clone(),
        server.base.replace("127.0.0.1", "localhost"),
    ] {
        let (code, said) = health(&base, Some(&cert));
        assert_eq!(code, Some(0), "{base}: {said}");
    }

    // Not given: an unknown issuer, said with what to do; the server was reached (not 3).
    let (code, said) = health(&server.base, None);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("unknown issuer") && said.contains("--ca-file"),
        "{said}"
    );
    assert!(!said.contains("is it running"), "{said}");

    // A plain HTTP server at an https:// URL.
    let plain = Server::start(&dir.path().join("plain"));
    let (code, said) = health(&plain.base.replace("http://", "https://"), Some(&cert));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("does not speak TLS"), "{said}");
    assert!(!said.contains("is it running"), "{said}");
}
