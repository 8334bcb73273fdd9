//! The API over TLS for the raw-socket tests: a plain-TCP front on 127.0.0.1 whose every
//! connection is one TLS connection to the server. A byte a test writes reaches the
//! server inside TLS when the test writes it, and a byte back likewise; a client that stops
//! reading stops the relay reading from the server. So hostile requests, slow heads and
//! bodies, clients that never read and pipelining run unchanged against the TLS listener.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::pki::Pki;
use super::{Server, ServerOptions};

/// What the relay holds for a side that is slower than the other, at most.
const WINDOW: usize = 64 * 1024;

/// Starts the server with its API over TLS (a certificate of a fresh test CA, written
/// into `root`) and answers with it as seen through a relay: `base` is the relay's plain
/// `http://` address, and every request a test makes goes through TLS.
pub fn start_behind_tls(root: &Path, mut options: ServerOptions) -> Server {
    let pki = Pki::new();
    let leaf = pki.local();
    let (cert, key) = (root.join("api-cert.pem"), root.join("api-key.pem"));
    std::fs::write(&cert, &leaf.cert).unwrap();
    std::fs::write(&key, &leaf.key).unwrap();
    options.args.extend([
        "--tls-cert".to_string(),
        cert.display().to_string(),
        "--tls-key".to_string(),
        key.display().to_string(),
    ]);
    let mut server = Server::start_with(root, options);
    let target = server
        .base
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("the API is not over TLS: {}", server.base))
        .to_string();
    let relay = relay(&target, client_config(&pki.ca_pem));
    server.base = format!("http://{relay}");
    server
}

fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Listens on a free loopback port for the life of the test process; returns its address.
fn relay(target: &str, config: Arc<rustls::ClientConfig>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let target = target.to_string();
    thread::spawn(move || {
        for plain in listener.incoming().flatten() {
            let (target, config) = (target.clone(), config.clone());
            thread::spawn(move || {
                // A relay that fails closes both sides, as a dropped connection would.
                let _ = pump(plain, &target, config);
            });
        }
    });
    addr
}

fn pump(plain: TcpStream, target: &str, config: Arc<rustls::ClientConfig>) -> io::Result<()> {
    let mut tls = TcpStream::connect(target)?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1")
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
    let mut plain = plain;
    plain.set_nonblocking(true)?;
    tls.set_nonblocking(true)?;
    let mut to_server: Vec<u8> = Vec::new();
    let mut to_client: Vec<u8> = Vec::new();
    let mut client_open = true;
    let mut server_open = true;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut moved = false;
        if client_open && to_server.is_empty() {
            match plain.read(&mut buf) {
                Ok(0) => {
                    client_open = false;
                    conn.send_close_notify();
                }
                Ok(n) => {
                    to_server.extend_from_slice(&buf[..n]);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Ok(()),
            }
        }
        if !to_server.is_empty() {
            let n = conn.writer().write(&to_server)?;
            to_server.drain(..n);
            moved |= n > 0;
        }
        while conn.wants_write() {
            match conn.write_tls(&mut tls) {
                Ok(0) => break,
                Ok(_) => moved = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Ok(()),
            }
        }
        if server_open && to_client.len() < WINDOW {
            match conn.read_tls(&mut tls) {
                Ok(0) => server_open = false,
                Ok(_) => {
                    conn.process_new_packets().map_err(io::Error::other)?;
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => server_open = false,
            }
            loop {
                match conn.reader().read(&mut buf) {
                    Ok(0) => {
                        server_open = false;
                        break;
                    }
                    Ok(n) => to_client.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        server_open = false;
                        break;
                    }
                }
            }
        }
        if !to_client.is_empty() {
            match plain.write(&to_client) {
                Ok(n) => {
                    to_client.drain(..n);
                    moved |= n > 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Ok(()),
            }
        }
        if !server_open && to_client.is_empty() {
            // The server closed: so does the relay, toward the client.
            let _ = plain.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        if !moved {
            thread::sleep(Duration::from_millis(1));
        }
    }
}
