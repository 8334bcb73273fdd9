use crate::connection::Connection;
use crate::limits::{error_body, timed_out, Deadline};
use crate::util::refined_tcp_stream::Stream as RefinedStream;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::error::Error;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

type Tls = rustls::StreamOwned<rustls::ServerConnection, TlsSocket>;

/// A wrapper around an owned Rustls connection and corresponding stream.
///
/// Uses an internal Mutex to permit disparate reader & writer threads to access the stream
/// independently (the connection's thread waits for each answer before it reads on, see
/// `Server::from_listener_with_limits`, so the two never wait on each other).
pub(crate) struct RustlsStream {
    tls: Arc<Mutex<Tls>>,
    /// A second handle on the socket: shutting it down must not wait for the lock.
    socket: Arc<Connection>,
    peer: Option<SocketAddr>,
}

impl RustlsStream {
    fn lock(&self) -> MutexGuard<'_, Tls> {
        self.tls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn peer_addr(&mut self) -> std::io::Result<Option<SocketAddr>> {
        Ok(self.peer)
    }

    pub(crate) fn shutdown(&mut self, how: Shutdown) -> std::io::Result<()> {
        if how != Shutdown::Read {
            // close_notify tells the client that the answer ended here, not by a cut; a
            // reader blocked on the lock would make this wait, so it is best effort.
            if let Ok(mut tls) = self.tls.try_lock() {
                let tls = &mut *tls;
                if tls.conn.is_handshaking() {
                    return self.socket.shutdown(how);
                }
                tls.conn.send_close_notify();
                while tls.conn.wants_write() {
                    if tls.conn.write_tls(&mut tls.sock.conn).is_err() {
                        break;
                    }
                }
            }
        }
        self.socket.shutdown(how)
    }
}

impl Clone for RustlsStream {
    fn clone(&self) -> Self {
        Self {
            tls: self.tls.clone(),
            socket: self.socket.clone(),
            peer: self.peer,
        }
    }
}

impl Read for RustlsStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut tls = self.lock();
        let result = tls.read(buf);
        if !tls.conn.is_handshaking() {
            tls.sock.handshake_by = None;
        }
        result
    }
}

impl Write for RustlsStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.lock().flush()
    }
}

/// The socket under the TLS session. Its reads obey the connection's deadline, as the
/// plain listener's do, and until the handshake is done a deadline of its own: rustls
/// reads as many times as a handshake needs, so a per-read timeout alone would let a
/// client that trickles its handshake hold the thread for ever.
struct TlsSocket {
    conn: Connection,
    deadline: Deadline,
    io_timeout: Duration,
    handshake_by: Option<Instant>,
    /// The receive timeout as last set, to spare a system call per read.
    read_timeout: Option<Duration>,
    /// The first bytes, read to tell a TLS client from a plain HTTP one; handed to rustls
    /// before anything else.
    head: Vec<u8>,
    head_used: usize,
    sniffed: bool,
}

impl TlsSocket {
    fn timeout(&self) -> std::io::Result<Duration> {
        let mut timeout = self
            .deadline
            .remaining()?
            .unwrap_or(self.io_timeout)
            .max(Duration::from_millis(1));
        if let Some(by) = self.handshake_by {
            let left = by.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(1) {
                return Err(timed_out());
            }
            timeout = timeout.min(left);
        }
        Ok(timeout)
    }

    fn read_socket(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let timeout = self.timeout()?;
        let close_enough = self.read_timeout.is_some_and(|set| {
            let gap = if set > timeout {
                set - timeout
            } else {
                timeout - set
            };
            gap < Duration::from_millis(100)
        });
        if !close_enough {
            self.conn.set_read_timeout(Some(timeout))?;
            self.read_timeout = Some(timeout);
        }
        match self.conn.read(buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => Err(timed_out()),
            other => other,
        }
    }

    /// A TLS connection starts with a handshake record (byte 22); a plain HTTP request
    /// with a method name. The latter is answered in plain HTTP, so that whoever typed
    /// `http://` learns what to change instead of seeing the connection drop.
    fn sniff(&mut self) -> std::io::Result<()> {
        self.sniffed = true;
        let mut first = [0u8; 512];
        let n = self.read_socket(&mut first)?;
        self.head.extend_from_slice(&first[..n]);
        if n == 0 || !first[0].is_ascii_alphabetic() {
            return Ok(());
        }
        let body = error_body(
            "https-required",
            "this port serves HTTPS only: use an https:// URL (with curl, --cacert <the server's CA> if its certificate is not in the system's trust store)",
        );
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            body.len(),
            body
        );
        self.conn.write_all(answer.as_bytes()).ok();
        self.conn.shutdown(Shutdown::Write).ok();
        // What the client still sends is read and dropped for a moment: closing with
        // unread data would reset the connection and could destroy the answer.
        self.conn
            .set_read_timeout(Some(Duration::from_millis(500)))
            .ok();
        let mut left = 64 * 1024;
        while left > 0 {
            match self.conn.read(&mut first) {
                Ok(0) | Err(_) => break,
                Ok(n) => left -= n.min(left),
            }
        }
        Err(std::io::Error::new(
            ErrorKind::ConnectionAborted,
            "plain HTTP sent to the TLS port",
        ))
    }
}

impl Read for TlsSocket {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.sniffed {
            self.sniff()?;
        }
        if self.head_used < self.head.len() {
            let rest = &self.head[self.head_used..];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.head_used += n;
            if self.head_used == self.head.len() {
                self.head = Vec::new();
                self.head_used = 0;
            }
            return Ok(n);
        }
        self.read_socket(buf)
    }
}

impl Write for TlsSocket {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.conn.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.conn.flush()
    }
}

pub(crate) struct RustlsContext {
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
}

impl RustlsContext {
    /// The certificate chain and key, PEM-encoded (the key PKCS#8, PKCS#1 or SEC1); an error
    /// says which of them is at fault, or that they do not belong together.
    pub(crate) fn from_pem(
        certificates: Vec<u8>,
        private_key: Zeroizing<Vec<u8>>,
        handshake_timeout: Duration,
    ) -> Result<Self, Box<dyn Error + Send + Sync>> {
        let certificate_chain = CertificateDer::pem_slice_iter(&certificates)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the certificate is not valid PEM: {e}"))?;
        if certificate_chain.is_empty() {
            return Err("the certificate file holds no PEM certificate".into());
        }
        let private_key = PrivateKeyDer::from_pem_slice(&private_key).map_err(|e| {
            format!("the key file holds no usable PEM private key (an encrypted key is not supported): {e}")
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls_conf = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certificate_chain, private_key)
            .map_err(|e| format!("the certificate and key cannot be used together: {e}"))?;
        Ok(Self {
            config: Arc::new(tls_conf),
            handshake_timeout,
        })
    }

    /// Wraps a new connection; the handshake happens on the connection's own thread, at
    /// its first read, within the handshake timeout.
    pub(crate) fn accept(
        &self,
        stream: Connection,
        deadline: Deadline,
        io_timeout: Duration,
    ) -> Result<RustlsStream, Box<dyn Error + Send + Sync + 'static>> {
        let connection = rustls::ServerConnection::new(self.config.clone())?;
        let socket = Arc::new(stream.try_clone()?);
        let peer = match &stream {
            Connection::Tcp(tcp) => tcp.peer_addr().ok(),
            #[cfg(unix)]
            Connection::Unix(_) => None,
        };
        let sock = TlsSocket {
            conn: stream,
            deadline,
            io_timeout,
            handshake_by: Some(Instant::now() + self.handshake_timeout),
            read_timeout: None,
            head: Vec::new(),
            head_used: 0,
            sniffed: false,
        };
        Ok(RustlsStream {
            tls: Arc::new(Mutex::new(rustls::StreamOwned::new(connection, sock))),
            socket,
            peer,
        })
    }
}

impl From<RustlsStream> for RefinedStream {
    fn from(stream: RustlsStream) -> Self {
        Self::Https(stream)
    }
}
