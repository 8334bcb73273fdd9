//! Slow and hostile clients against the real server: a byte a second in the head or the
//! body, clients that never read their answers, pipelining, a flood of connections and
//! running out of file descriptors. The threads that answer requests must stay free, and
//! the server must answer again once the clients are gone.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::http::request;
use common::{Server, ServerOptions, TempDir, SERVER_BIN, SIM_BIN};
use serde_json::{json, Value};

/// Far above what an idle server needs to answer (milliseconds), far below the 20 to 30 s
/// a worker would be held by a slow client.
const PROMPT: Duration = Duration::from_secs(10);

/// How a test starts the server: its plain listener, or its TLS one behind a relay
/// ([`common::tls_relay`]), so that each slow client runs against both.
type Start = fn(&Path, ServerOptions) -> Server;

const PLAIN: Start = Server::start_with;
const TLS: Start = common::tls_relay::start_behind_tls;

fn two_workers(tag: &str, start: Start) -> (TempDir, Server) {
    let dir = TempDir::new(tag);
    let server = start(
        dir.path(),
        ServerOptions {
            args: vec!["--http-threads".into(), "2".into()],
            ..ServerOptions::default()
        },
    );
    (dir, server)
}

fn addr(server: &Server) -> String {
    server.base.strip_prefix("http://").unwrap().to_string()
}

/// GET /vms on a fresh connection; its status and how long it took.
fn timed_list(server: &Server) -> (u16, Duration) {
    let started = Instant::now();
    let (status, _) = request("GET", &server.url("/vms"), None, &[]);
    (status, started.elapsed())
}

fn assert_prompt(server: &Server, what: &str) {
    for _ in 0..3 {
        let (status, took) = timed_list(server);
        assert_eq!(status, 200, "{what}");
        assert!(took < PROMPT, "{what}: GET /vms took {took:?}");
    }
}

/// A client that sends `head` at once, then one byte of `drip` a second until the
/// server answers or closes, and keeps what the server sent.
struct SlowClient {
    stream: TcpStream,
    answer: Arc<Mutex<Vec<u8>>>,
    done: Arc<AtomicBool>,
}

impl SlowClient {
    fn start(addr: &str, head: &[u8], drip: &'static [u8]) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = stream.try_clone().unwrap();
        writer.write_all(head).unwrap();
        let answer = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        {
            let done = done.clone();
            thread::spawn(move || {
                for byte in drip.iter().cycle() {
                    thread::sleep(Duration::from_secs(1));
                    if done.load(Ordering::SeqCst) || writer.write_all(&[*byte]).is_err() {
                        break;
                    }
                }
            });
        }
        {
            let answer = answer.clone();
            let done = done.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => answer.lock().unwrap().extend_from_slice(&buf[..n]),
                    }
                }
                done.store(true, Ordering::SeqCst);
            });
        }
        Self {
            stream,
            answer,
            done,
        }
    }

    /// The status and JSON body of the answer, once the server has closed.
    fn wait_answer(&self, within: Duration) -> (u16, Value) {
        let deadline = Instant::now() + within;
        while !self.done.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "no answer yet: {:?}",
                String::from_utf8_lossy(&self.answer.lock().unwrap())
            );
            thread::sleep(Duration::from_millis(100));
        }
        let answer = self.answer.lock().unwrap().clone();
        parse_answer(&answer)
    }
}

impl Drop for SlowClient {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Status and JSON body of the last answer in `answer` (after any 100 Continue).
fn parse_answer(answer: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(answer);
    let text = match text.strip_prefix("HTTP/1.1 100 Continue\r\n\r\n") {
        Some(rest) => rest,
        None => &text,
    };
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn a_head_sent_a_byte_a_second_holds_no_worker_and_times_out() {
    slow_head(PLAIN, "slow-head");
}

#[test]
fn over_tls_a_head_sent_a_byte_a_second_holds_no_worker() {
    slow_head(TLS, "slow-head-tls");
}

fn slow_head(start: Start, tag: &str) {
    let (_dir, server) = two_workers(tag, start);
    let addr = addr(&server);
    let clients: Vec<SlowClient> = (0..8)
        .map(|_| SlowClient::start(&addr, b"GET /vms HTTP/1.1\r\nX-Slow: ", b"a"))
        .collect();
    thread::sleep(Duration::from_secs(2));
    assert_prompt(&server, "8 slow heads, 2 workers");
    for client in &clients {
        let (status, body) = client.wait_answer(Duration::from_secs(120));
        assert_eq!(
            (status, body["code"].as_str()),
            (408, Some("request-timeout"))
        );
    }
    assert_prompt(&server, "after the slow heads");
}

#[test]
fn a_body_sent_a_byte_a_second_holds_no_worker_and_times_out() {
    slow_body(PLAIN, "slow-body");
}

#[test]
fn over_tls_a_body_sent_a_byte_a_second_holds_no_worker() {
    slow_body(TLS, "slow-body-tls");
}

fn slow_body(start: Start, tag: &str) {
    let (_dir, server) = two_workers(tag, start);
    let addr = addr(&server);
    let post = |extra: &str| {
        format!("POST /vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}\r\n")
            .into_bytes()
    };
    let clients = vec![
        // Over 1024 bytes: the size the published tiny_http left to the handler.
        SlowClient::start(&addr, &post("Content-Length: 3000\r\n"), b" "),
        SlowClient::start(&addr, &post("Content-Length: 3000\r\n"), b" "),
        SlowClient::start(&addr, &post("Content-Length: 60000\r\n"), b" "),
        SlowClient::start(&addr, &post("Content-Length: 500\r\n"), b" "),
        SlowClient::start(
            &addr,
            &post("Content-Length: 3000\r\nExpect: 100-continue\r\n"),
            b" ",
        ),
        SlowClient::start(
            &addr,
            &post("Transfer-Encoding: chunked\r\n"),
            b"1\r\n \r\n",
        ),
        SlowClient::start(
            &addr,
            &post("Transfer-Encoding: chunked\r\n"),
            b"1\r\n \r\n",
        ),
    ];
    thread::sleep(Duration::from_secs(2));
    assert_prompt(&server, "7 slow bodies, 2 workers");
    // A create with a normal body is not held up either.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let body = json!({"image": {"url": format!("http://127.0.0.1:{closed}/x"), "checksum": "5cf00d380e28d02f30efaceafef7c7c8bdedae33", "checksum_type": "sha1"}});
    let started = Instant::now();
    let (status, vm) = server.create(&body);
    assert_eq!(status, 202, "{vm}");
    assert!(
        started.elapsed() < PROMPT,
        "create took {:?}",
        started.elapsed()
    );
    for client in &clients {
        let (status, body) = client.wait_answer(Duration::from_secs(120));
        assert_eq!(
            (status, body["code"].as_str()),
            (408, Some("request-timeout")),
            "{body}"
        );
    }
    assert_prompt(&server, "after the slow bodies");
}

#[test]
fn clients_that_never_read_their_answers_hold_no_worker() {
    never_reading(PLAIN, "no-read");
}

#[test]
fn over_tls_clients_that_never_read_hold_no_worker() {
    never_reading(TLS, "no-read-tls");
}

fn never_reading(start: Start, tag: &str) {
    let (_dir, server) = two_workers(tag, start);
    // Enough VMs (failing at once: nothing listens at their image URL) that the list is
    // bigger than a socket buffer.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let body = json!({"image": {"url": format!("http://127.0.0.1:{closed}/{}", "x".repeat(2000)), "checksum": "5cf00d380e28d02f30efaceafef7c7c8bdedae33", "checksum_type": "sha1"}});
    for _ in 0..40 {
        let (status, vm) = server.create(&body);
        assert_eq!(status, 202, "{vm}");
    }
    let (_, list) = request("GET", &server.url("/vms"), None, &[]);
    assert!(list.to_string().len() > 64 * 1024);

    // Each of these asks for the list 300 times in one go and reads none of it: far more
    // than the socket buffers hold.
    let pipelined = b"GET /vms HTTP/1.1\r\nHost: x\r\n\r\n".repeat(300);
    let hogs: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut stream = TcpStream::connect(addr(&server)).unwrap();
            stream.write_all(&pipelined).unwrap();
            stream
        })
        .collect();
    thread::sleep(Duration::from_secs(3));
    assert_prompt(&server, "6 clients not reading, 2 workers");
    drop(hogs);
    assert_prompt(&server, "after the clients that did not read");
}

#[test]
fn pipelined_requests_are_all_answered_in_order() {
    pipelined(PLAIN, "pipeline");
}

#[test]
fn over_tls_pipelined_requests_are_all_answered_in_order() {
    pipelined(TLS, "pipeline-tls");
}

fn pipelined(start: Start, tag: &str) {
    let dir = TempDir::new(tag);
    let server = start(dir.path(), ServerOptions::default());
    let mut stream = TcpStream::connect(addr(&server)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut requests = Vec::new();
    for n in 0..50 {
        let path = if n % 2 == 0 { "/vms" } else { "/nope" };
        requests.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    }
    requests.extend_from_slice(b"GET /vms HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(&requests).unwrap();
    let mut reader = BufReader::new(stream);
    for n in 0..51 {
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        let want = if n % 2 == 0 { " 200 " } else { " 404 " };
        assert!(status_line.contains(want), "answer {n}: {status_line:?}");
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim_end().is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
    }
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

/// Raises this process's open-file limit so that the test itself can hold `want`
/// connections; returns how many it may hold.
fn allow_open_files(want: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < want + 100 {
            limit.rlim_cur = (want + 100).min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur.saturating_sub(100).min(want)
}

#[test]
fn a_flood_of_connections_gets_errors_then_the_server_answers_again() {
    let dir = TempDir::new("flood");
    let server = Server::start(dir.path());
    let addr = addr(&server);
    let flood = allow_open_files(2000);
    if flood < 2000 {
        eprintln!("this process may open only {flood} files: flooding with {flood} connections");
    }
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..flood {
        match TcpStream::connect(&addr) {
            Ok(stream) => held.push(stream),
            Err(e) => panic!("connect failed after {} connections: {e}", held.len()),
        }
    }
    eprintln!(
        "{} connections opened in {:?}",
        held.len(),
        started.elapsed()
    );

    // Meanwhile, each request gets an answer: the list, or 503 when the server is at its
    // limit of open connections.
    for _ in 0..5 {
        let started = Instant::now();
        let (status, body) = request("GET", &server.url("/vms"), None, &[]);
        assert!(
            status == 200 || (status == 503 && body["code"] == "too-many-connections"),
            "{status} {body}"
        );
        assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    }
    // The connections over the limit were answered 503 and closed, without a request.
    // (Polled: on a busy machine the server may still be working through the backlog.)
    for stream in &held {
        stream.set_nonblocking(true).unwrap();
    }
    let mut answered = vec![false; held.len()];
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while flood >= 1100 && refused == 0 && Instant::now() < deadline {
        for (stream, answered) in held.iter().zip(answered.iter_mut()) {
            let mut buf = [0u8; 512];
            if *answered {
                continue;
            }
            if let Ok(n) = (&*stream).read(&mut buf) {
                *answered = true;
                if n > 0 {
                    let (status, body) = parse_answer(&buf[..n]);
                    assert_eq!(
                        (status, body["code"].as_str()),
                        (503, Some("too-many-connections"))
                    );
                    refused += 1;
                }
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("{refused} connections refused with 503");
    if flood >= 1100 {
        assert!(refused > 0, "no connection over the limit was refused");
    }
    drop(held);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) = request("GET", &server.url("/vms"), None, &[]);
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still {status} after the flood");
        thread::sleep(Duration::from_millis(200));
    }
    assert_prompt(&server, "after the flood");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// The server, with at most `files` open files: a connection flood makes accept() fail.
struct FdLimitedServer {
    child: Child,
    addr: String,
    /// Every line the server wrote to stderr so far, as text lines.
    log: Arc<Mutex<Vec<String>>>,
    /// In a JSON run, what was wrong with each line that broke the format.
    broken: Arc<Mutex<Vec<String>>>,
}

impl FdLimitedServer {
    fn start(root: &std::path::Path, files: u64) -> Self {
        let sim = root.join("sim");
        std::fs::create_dir_all(&sim).unwrap();
        let mut command = Command::new(SERVER_BIN);
        command
            .args(["--port", "0", "--bind", "127.0.0.1", "--http-threads", "2"])
            .arg("--data-dir")
            .arg(root.join("data"))
            .env("VMWARE_VMRUN_PATH", SIM_BIN)
            .env("VMRUN_SIM_STATE", &sim)
            .env("OSX_BUILDER_VMRUN_HOST_TYPE", "ws")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: setrlimit is async-signal-safe; it only lowers this child's own limit.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: files,
                    rlim_max: files,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let broken = Arc::new(Mutex::new(Vec::new()));
        let (lines, problems) = (log.clone(), broken.clone());
        let json = common::log_lines::json_run();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(mut line) = line else { break };
                if json {
                    match common::log_lines::json_to_text(&line) {
                        Ok(text) => line = text,
                        Err(problem) => problems.lock().unwrap().push(problem),
                    }
                }
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server did not start");
        Self {
            child,
            addr,
            log,
            broken,
        }
    }
}

impl Drop for FdLimitedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn running_out_of_file_descriptors_does_not_make_the_server_deaf() {
    let dir = TempDir::new("fd-limit");
    let mut server = FdLimitedServer::start(dir.path(), 64);
    let url = format!("http://{}/vms", server.addr);
    let (status, _) = request("GET", &url, None, &[]);
    assert_eq!(status, 200);

    // More connections than the server has descriptors for (each takes two), fewer than
    // the listen backlog, so that connect() itself does not wait.
    let held: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    thread::sleep(Duration::from_secs(2));
    drop(held);

    let deadline = Instant::now() + Duration::from_secs(60);
    let answered = loop {
        let mut stream = TcpStream::connect(&server.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .write_all(b"GET /vms HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        if answer.starts_with(b"HTTP/1.1 200") {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert!(
        answered,
        "the server stopped answering after running out of descriptors"
    );
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited"
    );
    // tiny_http reports the failed accept() (or the connection it could not set up) through
    // the `log` crate: the server's own log must carry it, not drop it.
    let log = server.log.lock().unwrap().join("\n");
    assert!(
        log.lines().any(|line| line.contains("ERROR")
            && line.contains("tiny_http: Error")
            && line.contains("new client")
            && line.contains("os error 24")),
        "no accept error in the server's log:\n{log}"
    );
    let broken = server.broken.lock().unwrap();
    assert!(
        broken.is_empty(),
        "lines that broke the JSON log format: {broken:?}"
    );
}
