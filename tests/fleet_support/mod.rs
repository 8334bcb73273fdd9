//! Helpers of the fleet tests (capacity, leases, long polls, images, operations): HTTP
//! calls that keep the answer's headers, a server with one gold image on loopback, and a
//! callback receiver that keeps headers and raw bodies (for signatures).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::http::FileServer;
use crate::common::{gold_tar_gz, sha1_hex, Server, ServerOptions, TempDir};

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

/// One HTTP/1.1 call (Connection: close); the answer has Content-Length, as the server's
/// always do.
pub fn call(method: &str, url: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Answer {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(authority).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    if let Some(body) = body {
        stream.write_all(body.as_bytes()).unwrap();
    }
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = read_headers(&mut reader);
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    if method != "HEAD" {
        match length {
            Some(n) => {
                body.resize(n, 0);
                reader.read_exact(&mut body).unwrap();
            }
            None => {
                let _ = reader.read_to_end(&mut body);
            }
        }
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn read_headers(reader: &mut impl BufRead) -> Vec<(String, String)> {
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

pub fn options(args: &[&str]) -> ServerOptions {
    ServerOptions {
        env: Vec::new(),
        args: args.iter().map(|s| s.to_string()).collect(),
    }
}

/// A server and an image it can fetch.
pub struct World {
    pub dir: TempDir,
    pub files: FileServer,
    pub server: Server,
    pub url: String,
    pub checksum: String,
}

impl World {
    pub fn start(tag: &str, options: ServerOptions) -> Self {
        let dir = TempDir::new(tag);
        let files = FileServer::start();
        let archive = gold_tar_gz("box");
        let checksum = sha1_hex(&archive);
        let url = files.add("/gold.tar.gz", archive);
        let server = Server::start_with(dir.path(), options);
        Self {
            dir,
            files,
            server,
            url,
            checksum,
        }
    }

    pub fn body(&self) -> Value {
        image_body(&self.url, &self.checksum)
    }

    /// Creates a VM and returns its id; panics unless the answer is 202.
    pub fn create(&self, body: &Value) -> String {
        let (status, vm) = self.server.create(body);
        assert_eq!(status, 202, "{vm}\n{}", self.server.log());
        vm["id"].as_str().unwrap().to_string()
    }

    pub fn vm_count(&self) -> usize {
        let answer = call("GET", &self.server.url("/vms"), None, &[]);
        answer.json().as_array().map_or(0, Vec::len)
    }
}

pub fn image_body(url: &str, checksum: &str) -> Value {
    json!({
        "image": {"url": url, "checksum": checksum, "checksum_type": "sha1"},
        "headless": true
    })
}

/// Polls `check` until it returns `Some`, or panics with `what` after a minute.
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(25));
    }
}

/// A received callback: its headers and the body byte for byte.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Keeps every POST it receives, answering 200.
pub struct RawReceiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl RawReceiver {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/callback", listener.local_addr().unwrap());
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let sink = received.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let sink = sink.clone();
                thread::spawn(move || {
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let headers = read_headers(&mut reader);
                    let length = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    sink.lock().unwrap().push(Received { headers, body });
                    let _ = writer.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                });
            }
        });
        Self { url, received }
    }

    pub fn wait_for(&self, count: usize) -> Vec<Received> {
        eventually("callbacks", || {
            let received = self.received.lock().unwrap().clone();
            (received.len() >= count).then_some(received)
        })
    }
}
