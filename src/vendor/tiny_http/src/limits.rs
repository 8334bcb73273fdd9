//! Bounds on what one client can cost the server (added for osx-builder; see PATCHES.md).
//!
//! tiny_http 0.12.0 reads request heads of any size, waits forever for slow or silent
//! clients and spawns a thread for every connection. With these limits a client that
//! misbehaves gets an error answer or a closed connection, and the threads answering
//! requests never wait on a client's socket for longer than `io_timeout`.

use std::convert::TryFrom;
use std::io::{Error as IoError, ErrorKind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest request line (method, target and version); longer is answered 414.
    pub max_request_line: usize,
    /// Largest request head (request line and header fields); larger is answered 431.
    pub max_head_bytes: usize,
    /// Most header fields in one request; more is answered 431.
    pub max_headers: usize,
    /// Time a whole request head may take from its first byte; slower is answered 408.
    pub head_timeout: Duration,
    /// Time a kept-alive connection may wait for the first byte of its next request
    /// before it is closed (without an answer: nothing was asked).
    pub idle_timeout: Duration,
    /// Request bodies up to this many bytes, chunked ones included, are read by the
    /// connection's own thread before the request is handed out, so that the threads
    /// calling `Server::recv` never wait on a slow client for them. A chunked body over
    /// the limit is answered 413 by the connection itself; a larger declared
    /// Content-Length is left to the handler, as before.
    pub max_buffered_body: usize,
    /// Time to receive a body read by the connection's thread; slower is answered 408.
    pub body_timeout: Duration,
    /// Longest wait of any other single read or write on a client's socket.
    pub io_timeout: Duration,
    /// Bytes of a body the handler left unread that are read and thrown away so that
    /// the connection can serve another request; with more, the connection is closed.
    pub max_drain: usize,
    /// Connections open at once; more are answered 503 and closed at once.
    pub max_connections: usize,
    /// Time a new connection has for its first complete request head, from its accept;
    /// slower (silent ones included) is closed.
    pub first_request_timeout: Duration,
    /// Connections open at once from one client address (0: no limit); more are answered
    /// 503 and closed at once, so that one client cannot take every place.
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: 8 * 1024,
            max_head_bytes: 32 * 1024,
            max_headers: 100,
            head_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_buffered_body: 64 * 1024,
            body_timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(30),
            max_drain: 64 * 1024,
            max_connections: 1024,
            first_request_timeout: Duration::from_secs(60),
            max_connections_per_ip: 0,
        }
    }
}

/// A point in time after which reads on one connection fail with `TimedOut`. Shared by
/// the connection's thread, which sets it, and the socket's reader, which obeys it. Kept
/// as nanoseconds since the first deadline of the process (0: none), without a lock: it
/// is read on every socket read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Deadline(Arc<AtomicU64>);

fn since_start() -> Duration {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Deadline {
    pub(crate) fn set(&self, after: Duration) {
        let at = nanos(since_start()).saturating_add(nanos(after)).max(1);
        self.0.store(at, Ordering::Relaxed);
    }

    pub(crate) fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Time left, `None` without a deadline, an error once it has passed.
    pub(crate) fn remaining(&self) -> Result<Option<Duration>, IoError> {
        let at = self.0.load(Ordering::Relaxed);
        if at == 0 {
            return Ok(None);
        }
        let left = Duration::from_nanos(at.saturating_sub(nanos(since_start())));
        if left < Duration::from_millis(1) {
            Err(timed_out())
        } else {
            Ok(Some(left))
        }
    }
}

pub(crate) fn timed_out() -> IoError {
    IoError::new(ErrorKind::TimedOut, "the client was too slow")
}

/// What the connection's thread must know of a request it handed out: whether it has been
/// dropped yet, and how many bytes of its body the handler left unread (to be skipped
/// before the next request).
#[derive(Debug)]
pub(crate) struct BodyState {
    unread: AtomicUsize,
    dropped: AtomicBool,
    /// The connection's thread, woken when the request is dropped.
    waiter: Thread,
}

impl BodyState {
    pub(crate) fn new(unread: usize) -> Arc<Self> {
        Arc::new(BodyState {
            unread: AtomicUsize::new(unread),
            dropped: AtomicBool::new(false),
            waiter: thread::current(),
        })
    }

    pub(crate) fn set(&self, unread: usize) {
        self.unread.store(unread, Ordering::SeqCst);
    }

    pub(crate) fn unread(&self) -> usize {
        self.unread.load(Ordering::SeqCst)
    }

    pub(crate) fn mark_dropped(&self) {
        self.dropped.store(true, Ordering::SeqCst);
        self.waiter.unpark();
    }

    /// Waits until the request is dropped (at once when it already is: no system call).
    pub(crate) fn wait_dropped(&self) {
        while !self.dropped.load(Ordering::SeqCst) {
            thread::park();
        }
    }
}

/// Counts open connections; dropping one of these closes the count for its connection.
#[derive(Debug)]
pub(crate) struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    pub(crate) fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        let mut now = open.load(Ordering::SeqCst);
        loop {
            if now >= max {
                return None;
            }
            match open.compare_exchange(now, now + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Some(ConnectionSlot(open.clone())),
                Err(actual) => now = actual,
            }
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts open connections per client address; dropping one of these gives its place back.
#[derive(Debug)]
pub(crate) struct PeerSlot {
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PeerSlot {
    pub(crate) fn take(
        peers: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        ip: IpAddr,
        max: usize,
    ) -> Option<Self> {
        let mut map = peers.lock().unwrap_or_else(|p| p.into_inner());
        let open = map.entry(ip).or_insert(0);
        if max > 0 && *open >= max {
            return None;
        }
        *open += 1;
        Some(PeerSlot {
            peers: peers.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = map.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// A small JSON error answer written by the connection layer itself, in the same shape
/// as osx-builder's own errors: `{"code": "...", "message": "..."}`.
pub(crate) fn error_body(code: &str, message: &str) -> String {
    format!(
        "{{\"code\":\"{}\",\"message\":\"{}\"}}",
        json_escape(code),
        json_escape(message)
    )
}

fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_json() {
        assert_eq!(
            error_body("bad", "a \"q\" \\ \n"),
            r#"{"code":"bad","message":"a \"q\" \\ \u000a"}"#
        );
    }

    #[test]
    fn deadline_passes() {
        let d = Deadline::default();
        assert!(d.remaining().unwrap().is_none());
        d.set(Duration::from_secs(60));
        assert!(d.remaining().unwrap().unwrap() > Duration::from_secs(59));
        d.set(Duration::ZERO);
        assert_eq!(d.remaining().unwrap_err().kind(), ErrorKind::TimedOut);
        d.clear();
        assert!(d.remaining().unwrap().is_none());
    }

    #[test]
    fn dropped_wakes_the_waiter() {
        let state = BodyState::new(0);
        let other = state.clone();
        let marker = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            other.mark_dropped();
        });
        state.wait_dropped();
        marker.join().unwrap();
        state.wait_dropped();
    }

    #[test]
    fn slots_are_bounded_and_returned() {
        let open = Arc::new(AtomicUsize::new(0));
        let a = ConnectionSlot::take(&open, 2).unwrap();
        let _b = ConnectionSlot::take(&open, 2).unwrap();
        assert!(ConnectionSlot::take(&open, 2).is_none());
        drop(a);
        assert!(ConnectionSlot::take(&open, 2).is_some());
    }
}
