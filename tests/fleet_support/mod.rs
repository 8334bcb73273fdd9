//! Helpers of the fleet tests (capacity, leases, long polls, images, operations): HTTP
//! calls that keep the answer's headers, a server with one gold image on loopback, and a
//! callback receiver that keeps headers and raw bodies (for signatures).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::ServerOptions;

pub use crate::common::http::{read_headers, Answer};

/// One HTTP/1.1 call with a JSON body, keeping the answer's headers.
pub fn call(method: &str, url: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Answer {
    crate::common::http::call(method, url, body.map(str::as_bytes), headers)
}

pub fn options(args: &[&str]) -> ServerOptions {
    ServerOptions {
        env: Vec::new(),
        args: args.iter().map(|s| s.to_string()).collect(),
    }
}

// Not every fleet test uses both.
#[allow(unused_imports)]
pub use crate::common::{image_body, World};

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
