//! Minimal HTTP/1.1 pieces for the tests: a client call that returns status and JSON, and
//! a file server on loopback that counts its requests.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::Value;

/// Sends a request; returns the status and the body as JSON (`Null` when empty or not JSON).
pub fn request(
    method: &str,
    url: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let (status, bytes) = request_raw(method, url, body.map(str::as_bytes), headers);
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub fn request_raw(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> (u16, Vec<u8>) {
    let answer = call(method, url, body, headers);
    (answer.status, answer.body)
}

/// An answer with its headers.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 call (`Connection: close`), held to the OpenAPI document. A body without
/// a `Content-Type` in `headers` is sent as JSON.
pub fn call(method: &str, url: &str, body: Option<&[u8]>, headers: &[(&str, &str)]) -> Answer {
    let answer =
        try_call(method, url, body, headers).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    // Every answer a test receives from the server is held to the OpenAPI document, and so
    // is the server's verdict on the body the test sent.
    super::contract::check(method, url, &answer);
    super::contract::check_request(method, url, body, headers, &answer);
    answer
}

/// The same call for callers that must survive a server that is not (yet) there, as a
/// benchmark's load loop does: I/O errors and unreadable answers are errors, not panics,
/// and the answer is not checked against the document.
pub fn try_call(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> std::io::Result<Answer> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad(format!("not an http URL: {url}")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    stream.set_nodelay(true)?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    let mut has_type = false;
    for (k, v) in headers {
        has_type |= k.eq_ignore_ascii_case("content-type");
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        if !has_type {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.unwrap_or_default());
    // A server may answer (and close) before reading a body it refuses; the answer is
    // what the test wants, so a failed write is not the end.
    let _ = stream.write_all(&out);
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let headers = read_headers(&mut reader);
    let value = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let length = value("content-length").and_then(|v| v.parse::<usize>().ok());
    let chunked = value("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let mut body = Vec::new();
    if method == "HEAD" {
        // A HEAD answer announces a length but carries no body.
    } else if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad(format!("bad chunk size {size:?}")))?;
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        reader.read_exact(&mut body)?;
    } else {
        // Without a length the answer ends when the server closes, however it closes.
        let _ = reader.read_to_end(&mut body);
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// One HTTP/1.1 call with a JSON text body, keeping the answer's headers.
pub fn call_str(method: &str, url: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Answer {
    call(method, url, body.map(str::as_bytes), headers)
}

/// Header lines up to the blank line that ends them.
pub fn read_headers(reader: &mut impl BufRead) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    headers
}

/// Reads one request from `stream`: its headers and its body.
pub fn read_request(stream: &mut TcpStream) -> Option<super::Received> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).ok()? == 0 {
        return None;
    }
    let headers = read_headers(&mut reader);
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(Some(0), |(_, v)| v.parse::<usize>().ok())?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(super::Received { headers, body })
}

/// Reads one request from `stream` and returns its body.
pub fn read_request_body(stream: &mut TcpStream) -> Option<Vec<u8>> {
    read_request(stream).map(|request| request.body)
}

/// How a file is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Whole,
    /// 4 KiB at a time with this pause between chunks, for tests that must catch a
    /// download in progress.
    Trickle(Duration),
    /// At this many bytes a second, paced against the start so that slow writes do not
    /// slow the rate further: a server far away, for benchmarks.
    Rate(usize),
    /// Announces this Content-Length (a huge image), then sends what it has.
    ClaimLength(u64),
}

type Files = Arc<Mutex<HashMap<String, (Arc<Vec<u8>>, Delivery)>>>;

/// Serves fixed files over HTTP on 127.0.0.1, counting GETs per path.
pub struct FileServer {
    pub base: String,
    files: Files,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    pub total: Arc<AtomicUsize>,
}

impl FileServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let files: Files = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let total = Arc::new(AtomicUsize::new(0));
        let (f, h, t) = (files.clone(), hits.clone(), total.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (f, h, t) = (f.clone(), h.clone(), t.clone());
                thread::spawn(move || serve_file(stream, &f, &h, &t));
            }
        });
        Self {
            base,
            files,
            hits,
            total,
        }
    }

    pub fn add(&self, path: &str, bytes: Vec<u8>) -> String {
        self.add_with(path, bytes, Delivery::Whole)
    }

    pub fn add_with(&self, path: &str, bytes: Vec<u8>, delivery: Delivery) -> String {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), (Arc::new(bytes), delivery));
        format!("{}{path}", self.base)
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn serve_file(
    mut stream: TcpStream,
    files: &Files,
    hits: &Mutex<HashMap<String, usize>>,
    total: &AtomicUsize,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim_end().is_empty() {
            break;
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    total.fetch_add(1, Ordering::SeqCst);
    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let file = files.lock().unwrap().get(&path).cloned();
    match file {
        Some((bytes, delivery)) => {
            let length = match delivery {
                Delivery::ClaimLength(n) => n,
                _ => bytes.len() as u64,
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes());
            match delivery {
                Delivery::Trickle(pause) => {
                    for chunk in bytes.chunks(4096) {
                        if stream.write_all(chunk).is_err() {
                            return;
                        }
                        thread::sleep(pause);
                    }
                }
                Delivery::Rate(bytes_per_sec) => {
                    let started = std::time::Instant::now();
                    for (n, part) in bytes.chunks((bytes_per_sec / 50).max(1)).enumerate() {
                        let due = started + Duration::from_millis(20 * n as u64);
                        thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
                        if stream.write_all(part).is_err() {
                            return;
                        }
                    }
                }
                _ => {
                    let _ = stream.write_all(&bytes);
                }
            }
        }
        None => {
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    }
}
