//! The gold image cache end to end: archives made here (by the Rust crates and, when present,
//! by the system's tar and zip) are served by a small HTTP/1.1 server on 127.0.0.1 that can
//! fail in the ways real mirrors do (error statuses, dropped connections, no Range support,
//! stalls), and `ImageCache::ensure` must publish exactly the verified image or nothing.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::archives::{archive, Format, FORMATS};
use common::TempDir;
use osx_builder::image::{
    ChecksumType, GoldImage, ImageCache, ImageError, ImagePhase, ImageProgress, ImageSettings,
    ImageSpec,
};
use osx_builder::sys::cancel::Cancel;
use sha2::Digest;

/// Long enough for a loaded 2-core machine; tests poll for conditions and only fail when a
/// deadline this long passes.
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Scratch data folders

struct Scratch {
    root: TempDir,
}

impl Scratch {
    fn new(tag: &str) -> Self {
        Scratch {
            root: TempDir::new(&format!("cache-{tag}")),
        }
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn settings(&self) -> ImageSettings {
        let mut settings = ImageSettings::new(self.data());
        settings.read_timeout = Duration::from_secs(20);
        settings.connect_timeout = Duration::from_secs(10);
        settings
    }

    fn cache(&self) -> ImageCache {
        ImageCache::new(self.settings()).unwrap()
    }

    /// Everything under gold/ and images/, to show that a failure left nothing behind.
    fn leftovers(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for dir in ["gold", "images"] {
            if let Ok(entries) = fs::read_dir(self.data().join(dir)) {
                found.extend(entries.map(|e| e.unwrap().path()));
            }
        }
        found
    }
}

// ---------------------------------------------------------------------------------------------
// Archives

/// A small VM folder: the .vmx, a "disk" of incompressible and compressible parts (large
/// enough that a transfer spans many reads and decompressor buffers) and an nvram file.
fn vm_files(top: Option<&str>) -> Vec<(String, Vec<u8>)> {
    let prefix = top.map_or_else(String::new, |t| format!("{t}/"));
    let mut disk = common::noise(700 * 1024, 7);
    disk.extend(std::iter::repeat_n(0u8, 300 * 1024));
    vec![
        (
            format!("{prefix}macOS.vmx"),
            b".encoding = \"UTF-8\"\nguestOS = \"darwin19-64\"\n".to_vec(),
        ),
        (format!("{prefix}macOS-disk1.vmdk"), disk),
        (format!("{prefix}macOS.nvram"), common::noise(8 * 1024, 3)),
    ]
}

const CHECKSUM_TYPES: [ChecksumType; 4] = [
    ChecksumType::Md5,
    ChecksumType::Sha1,
    ChecksumType::Sha256,
    ChecksumType::Sha512,
];

fn digest(kind: ChecksumType, data: &[u8]) -> String {
    let bytes: Vec<u8> = match kind {
        ChecksumType::Md5 => md5::Md5::digest(data).to_vec(),
        ChecksumType::Sha1 => sha1::Sha1::digest(data).to_vec(),
        ChecksumType::Sha256 => sha2::Sha256::digest(data).to_vec(),
        ChecksumType::Sha512 => sha2::Sha512::digest(data).to_vec(),
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn spec(url: String, kind: ChecksumType, data: &[u8]) -> ImageSpec {
    ImageSpec {
        url,
        checksum: digest(kind, data),
        checksum_type: kind,
    }
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// Checks that `gold` is the published, complete image of `files`.
fn assert_published(scratch: &Scratch, gold: &GoldImage, files: &[(String, Vec<u8>)]) {
    assert_eq!(gold.dir, scratch.data().join("gold").join(&gold.checksum));
    assert!(gold.config.is_absolute(), "{}", gold.config.display());
    assert!(gold.config.starts_with(&gold.dir));
    assert_eq!(
        gold.config.extension().and_then(|e| e.to_str()),
        Some("vmx"),
        "{}",
        gold.config.display()
    );
    for (name, data) in files {
        let on_disk = fs::read(gold.dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(on_disk == *data, "{name} differs");
    }
    // Only the gold folder itself: no staging folder, no partial download.
    assert_eq!(scratch.leftovers(), vec![gold.dir.clone()]);
}

fn ensure(cache: &ImageCache, spec: &ImageSpec) -> Result<GoldImage, ImageError> {
    cache.ensure(spec, &Cancel::new(), &mut |_| {})
}

// ---------------------------------------------------------------------------------------------
// The test HTTP server

/// How one path is served.
#[derive(Clone)]
struct Route {
    body: Arc<Vec<u8>>,
    status: u16,
    /// Answer `Range: bytes=N-` with 206.
    ranges: bool,
    /// Send Content-Length (else the body ends when the connection closes).
    content_length: bool,
    /// Overrides the Content-Length sent (a server lying about the size).
    claimed_length: Option<u64>,
    /// Close the connection after this many body bytes, for the first `drops` responses.
    drop_after: Option<usize>,
    drops: Arc<AtomicUsize>,
    /// Stop sending after this many body bytes and keep the connection open.
    stall_after: Option<usize>,
    /// Send this many body bytes, then wait for the gate to open before sending the rest
    /// (or, for an error status, before answering at all).
    gate: Option<(usize, Arc<Gate>)>,
    /// Close the connection without answering these requests (0 is the first).
    hang_up_on: Vec<usize>,
    served: Arc<AtomicUsize>,
}

impl Route {
    fn ok(body: Vec<u8>) -> Self {
        Route {
            body: Arc::new(body),
            status: 200,
            ranges: true,
            content_length: true,
            claimed_length: None,
            drop_after: None,
            drops: Arc::new(AtomicUsize::new(0)),
            stall_after: None,
            gate: None,
            hang_up_on: Vec::new(),
            served: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn status(status: u16) -> Self {
        Route {
            status,
            ..Route::ok(b"no such image here".to_vec())
        }
    }

    fn dropping(mut self, after: usize, times: usize) -> Self {
        self.drop_after = Some(after);
        self.drops = Arc::new(AtomicUsize::new(times));
        self
    }

    fn gated(mut self, after: usize, gate: &Arc<Gate>) -> Self {
        self.gate = Some((after, Arc::clone(gate)));
        self
    }
}

#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }
}

#[derive(Clone, Debug)]
struct Seen {
    path: String,
    range: Option<String>,
}

struct Server {
    base: String,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = Server {
            base,
            routes: Arc::default(),
            seen: Arc::default(),
            stop: Arc::default(),
        };
        let (routes, seen, stop) = (
            Arc::clone(&server.routes),
            Arc::clone(&server.seen),
            Arc::clone(&server.stop),
        );
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (routes, seen, stop) =
                    (Arc::clone(&routes), Arc::clone(&seen), Arc::clone(&stop));
                thread::spawn(move || serve(stream, &routes, &seen, &stop));
            }
        });
        server
    }

    /// Serves `route` at `path`; returns its URL.
    fn route(&self, path: &str, route: Route) -> String {
        self.routes.lock().unwrap().insert(path.to_owned(), route);
        format!("{}{path}", self.base)
    }

    fn requests(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Lets stalled connections go.
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(
    stream: TcpStream,
    routes: &Mutex<HashMap<String, Route>>,
    seen: &Mutex<Vec<Seen>>,
    stop: &AtomicBool,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_owned());
            }
        }
    }
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });
    let route = routes.lock().unwrap().get(&path).cloned();
    let mut out = stream;
    let Some(route) = route else {
        let _ = out
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let nth = route.served.fetch_add(1, Ordering::SeqCst);
    if route.hang_up_on.contains(&nth) {
        let _ = out.shutdown(Shutdown::Both);
        return;
    }
    if route.status != 200 {
        if let Some((_, gate)) = &route.gate {
            gate.wait();
        }
        let _ = write!(
            out,
            "HTTP/1.1 {} Oops\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            route.status,
            route.body.len()
        );
        let _ = out.write_all(&route.body);
        return;
    }
    let total = route.body.len();
    let start = match (&range, route.ranges) {
        (Some(r), true) => r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0),
        _ => 0,
    };
    let mut head = if start > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{total}\r\n",
            total - 1
        )
    } else {
        "HTTP/1.1 200 OK\r\n".to_owned()
    };
    if route.ranges {
        head.push_str("Accept-Ranges: bytes\r\n");
    }
    if route.content_length {
        let length = route.claimed_length.unwrap_or((total - start) as u64);
        head.push_str(&format!("Content-Length: {length}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    let body = &route.body[start..];
    let dropping = route.drop_after.is_some()
        && route
            .drops
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    let mut end = body.len();
    if dropping {
        end = end.min(route.drop_after.unwrap_or(end));
    }
    if let Some(stall) = route.stall_after {
        end = end.min(stall);
    }
    let mut sent = 0;
    if let Some((gate_at, gate)) = &route.gate {
        let first = (*gate_at).min(end);
        if out.write_all(&body[..first]).is_err() || out.flush().is_err() {
            return;
        }
        sent = first;
        gate.wait();
    }
    for chunk in body[sent..end].chunks(64 * 1024) {
        if out.write_all(chunk).is_err() {
            return;
        }
    }
    let _ = out.flush();
    if route.stall_after.is_some() && end < body.len() {
        let until = Instant::now() + DEADLINE;
        while !stop.load(Ordering::SeqCst) && Instant::now() < until {
            thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = out.shutdown(Shutdown::Both);
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// Every format and checksum type

#[test]
fn every_format_and_checksum_type_publishes_the_gold_image() {
    let server = Server::start();
    for (i, format) in FORMATS.into_iter().enumerate() {
        for (j, kind) in CHECKSUM_TYPES.into_iter().enumerate() {
            let scratch = Scratch::new("formats");
            let cache = scratch.cache();
            // Half with a top folder, half with the VM's files at the archive's root.
            let top = ((i + j) % 2 == 0).then_some("macOS.vmwarevm");
            let files = vm_files(top);
            let data = archive(format, &files);
            let url = server.route(&format!("/{format:?}-{kind:?}"), Route::ok(data.clone()));
            let spec = spec(url, kind, &data);
            let mut phases = Vec::new();
            let gold = cache
                .ensure(&spec, &Cancel::new(), &mut |p: &ImageProgress| {
                    phases.push(p.phase)
                })
                .unwrap_or_else(|e| panic!("{format:?} {kind:?}: {e}"));
            assert_eq!(gold.checksum, spec.checksum);
            assert_eq!(
                gold.config,
                gold.dir.join(&files[0].0),
                "{format:?} {kind:?}"
            );
            assert_published(&scratch, &gold, &files);
            assert!(phases.iter().all(|p| *p != ImagePhase::Unpacking) || format == Format::Zip);
            assert_eq!(cache.lookup(&spec.checksum), Some(gold));
        }
    }
}

#[test]
fn archives_made_by_the_system_tools_publish() {
    let scratch = Scratch::new("tools");
    let source = scratch.root.path().join("src");
    let files = vm_files(Some("Big Sur.vmwarevm"));
    for (name, data) in &files {
        let path = source.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }
    let mut made = Vec::new();
    if have("tar") {
        for (flag, name) in [
            ("-cf", "gnu.tar"),
            ("-czf", "gnu.tar.gz"),
            ("-cjf", "gnu.tar.bz2"),
        ] {
            if flag == "-cjf" && !have("bzip2") {
                continue;
            }
            let out = scratch.root.path().join(name);
            let status = Command::new("tar")
                .arg(flag)
                .arg(&out)
                .arg("-C")
                .arg(&source)
                .arg("Big Sur.vmwarevm")
                .status()
                .unwrap();
            assert!(status.success());
            made.push(out);
        }
    }
    if have("zip") {
        let out = scratch.root.path().join("info.zip");
        let status = Command::new("zip")
            .arg("-qr")
            .arg(&out)
            .arg("Big Sur.vmwarevm")
            .current_dir(&source)
            .status()
            .unwrap();
        assert!(status.success());
        made.push(out);
    }
    if made.is_empty() {
        eprintln!("neither tar nor zip is installed: nothing to test");
        return;
    }
    let server = Server::start();
    let cache = scratch.cache();
    for path in made {
        let data = fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        let url = server.route(&format!("/{name}"), Route::ok(data.clone()));
        let gold = ensure(&cache, &spec(url, ChecksumType::Sha256, &data))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            gold.config,
            gold.dir.join("Big Sur.vmwarevm/macOS.vmx"),
            "{name}"
        );
        for (file, content) in &files {
            assert!(
                fs::read(gold.dir.join(file)).unwrap() == *content,
                "{name}: {file}"
            );
        }
    }
    assert!(
        fs::read_dir(scratch.data().join("images"))
            .unwrap()
            .next()
            .is_none(),
        "a zip's download file was left behind"
    );
}

#[test]
fn local_files_go_through_the_same_pipeline() {
    let scratch = Scratch::new("file-url");
    let cache = scratch.cache();
    for format in [Format::TarGz, Format::Zip] {
        let files = vm_files(Some("vm"));
        let data = archive(format, &files);
        let path = scratch.root.path().join(format!("image {format:?}.bin"));
        fs::write(&path, &data).unwrap();
        let url = format!("file://{}", path.display().to_string().replace(' ', "%20"));
        let gold = ensure(&cache, &spec(url, ChecksumType::Md5, &data)).unwrap();
        assert_eq!(gold.config, gold.dir.join("vm/macOS.vmx"));
        fs::remove_dir_all(&gold.dir).unwrap();
        // A plain absolute path too.
        let gold = ensure(
            &cache,
            &spec(path.display().to_string(), ChecksumType::Md5, &data),
        )
        .unwrap();
        assert_eq!(gold.config, gold.dir.join("vm/macOS.vmx"));
    }
    let e = ensure(
        &cache,
        &spec(
            format!("file://{}/missing.tar", scratch.root.path().display()),
            ChecksumType::Md5,
            b"x",
        ),
    )
    .unwrap_err();
    assert_eq!(e.code(), "image-download-failed", "{e}");
    assert!(e.to_string().contains("missing.tar"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Failures leave nothing behind

#[test]
fn checksum_mismatch_publishes_nothing_and_names_both_digests() {
    let server = Server::start();
    for format in [Format::TarGz, Format::Zip] {
        let scratch = Scratch::new("mismatch");
        let cache = scratch.cache();
        let data = archive(format, &vm_files(None));
        let url = server.route(&format!("/{format:?}"), Route::ok(data.clone()));
        let mut wrong = spec(url, ChecksumType::Sha256, &data);
        let actual = wrong.checksum.clone();
        wrong.checksum = digest(ChecksumType::Sha256, b"another image");
        let e = ensure(&cache, &wrong).unwrap_err();
        assert_eq!(e.code(), "checksum-mismatch", "{e}");
        let text = e.to_string();
        assert!(text.contains(&actual), "{text}");
        assert!(text.contains(&wrong.checksum), "{text}");
        assert!(text.contains("sha256"), "{text}");
        assert_eq!(scratch.leftovers(), Vec::<PathBuf>::new(), "{format:?}");
        assert_eq!(cache.lookup(&wrong.checksum), None);
    }
}

#[test]
fn a_truncated_archive_is_reported_as_corrupt() {
    let server = Server::start();
    let scratch = Scratch::new("truncated");
    let cache = scratch.cache();
    for format in [Format::Tar, Format::TarGz, Format::TarBz2] {
        let mut data = archive(format, &vm_files(None));
        data.truncate(data.len() * 2 / 3);
        // Served honestly (its Content-Length matches), and without any length at all.
        for content_length in [true, false] {
            let route = Route {
                content_length,
                ..Route::ok(data.clone())
            };
            let url = server.route(&format!("/{format:?}-{content_length}"), route);
            let e = ensure(&cache, &spec(url, ChecksumType::Sha1, &data)).unwrap_err();
            assert_eq!(e.code(), "archive-corrupt", "{format:?}: {e}");
            assert_eq!(scratch.leftovers(), Vec::<PathBuf>::new());
        }
    }
}

#[test]
fn http_errors_name_the_status_and_url() {
    let server = Server::start();
    let scratch = Scratch::new("status");
    let cache = scratch.cache();
    for status in [404, 500] {
        let url = server.route(&format!("/gone-{status}"), Route::status(status));
        let e = ensure(&cache, &spec(url.clone(), ChecksumType::Md5, b"x")).unwrap_err();
        assert_eq!(e.code(), "image-download-failed");
        let text = e.to_string();
        assert!(text.contains(&status.to_string()), "{text}");
        assert!(text.contains(&url), "{text}");
    }
    assert_eq!(scratch.leftovers(), Vec::<PathBuf>::new());
}

#[test]
fn a_refused_connection_is_a_download_error() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let scratch = Scratch::new("refused");
    let url = format!("http://127.0.0.1:{port}/image.tar");
    let e = ensure(
        &scratch.cache(),
        &spec(url.clone(), ChecksumType::Md5, b"x"),
    )
    .unwrap_err();
    assert_eq!(e.code(), "image-download-failed", "{e}");
    assert!(e.to_string().contains(&url), "{e}");
}

#[test]
fn not_an_archive_says_which_formats_are_accepted() {
    let server = Server::start();
    let scratch = Scratch::new("not-archive");
    let cache = scratch.cache();
    let html = b"<html><body>Please log in</body></html>".repeat(40);
    let url = server.route("/login", Route::ok(html.clone()));
    let e = ensure(&cache, &spec(url, ChecksumType::Md5, &html)).unwrap_err();
    assert_eq!(e.code(), "image-unsupported-format");
    let text = e.to_string();
    assert!(text.contains("tar.gz") && text.contains("zip"), "{text}");

    let xz = [&b"\xfd7zXZ\x00"[..], &[0u8; 600]].concat();
    let url = server.route("/image.tar.xz", Route::ok(xz.clone()));
    let e = ensure(&cache, &spec(url, ChecksumType::Md5, &xz)).unwrap_err();
    assert!(e.to_string().contains("xz"), "{e}");

    let tiny = b"x".to_vec();
    let url = server.route("/tiny", Route::ok(tiny.clone()));
    let e = ensure(&cache, &spec(url, ChecksumType::Md5, &tiny)).unwrap_err();
    assert_eq!(e.code(), "image-unsupported-format");
    assert_eq!(scratch.leftovers(), Vec::<PathBuf>::new());
}

#[test]
fn extraction_errors_keep_their_codes() {
    let server = Server::start();
    let scratch = Scratch::new("extract-codes");
    let cache = scratch.cache();
    let no_vmx = vec![("vm/disk.vmdk".to_owned(), vec![1u8; 100])];
    let two_vmx = vec![
        ("a/a.vmx".to_owned(), b"a".to_vec()),
        ("b/b.vmx".to_owned(), b"b".to_vec()),
    ];
    for (name, files, code) in [("none", no_vmx, "no-vmx"), ("two", two_vmx, "many-vmx")] {
        for format in [Format::TarGz, Format::Zip] {
            let data = archive(format, &files);
            let url = server.route(&format!("/{name}-{format:?}"), Route::ok(data.clone()));
            let e = ensure(&cache, &spec(url, ChecksumType::Sha256, &data)).unwrap_err();
            assert_eq!(e.code(), code, "{format:?}: {e}");
        }
    }
    assert_eq!(scratch.leftovers(), Vec::<PathBuf>::new());

    let mut settings = scratch.settings();
    settings.max_unpacked_bytes = 100 * 1024;
    let small = ImageCache::new(settings).unwrap();
    let data = archive(Format::TarGz, &vm_files(None));
    let url = server.route("/bomb", Route::ok(data.clone()));
    let e = ensure(&small, &spec(url, ChecksumType::Sha256, &data)).unwrap_err();
    assert_eq!(e.code(), "unpack-limit", "{e}");
    assert_eq!(scratch.leftovers(), Vec::<PathBuf>::new());
}

#[test]
fn a_checksum_that_is_not_a_digest_never_reaches_the_disk_or_the_network() {
    let server = Server::start();
    let scratch = Scratch::new("bad-checksum");
    let cache = scratch.cache();
    let url = server.route("/x", Route::ok(b"x".to_vec()));
    for checksum in [
        "../../etc",
        "ABCDEF",
        "",
        "d41d8cd98f00b204e9800998ecf8427e00",
    ] {
        let bad = ImageSpec {
            url: url.clone(),
            checksum: checksum.to_owned(),
            checksum_type: ChecksumType::Md5,
        };
        let e = ensure(&cache, &bad).unwrap_err();
        assert_eq!(e.code(), "invalid-checksum", "{checksum}");
        assert_eq!(cache.lookup(checksum), None);
    }
    assert!(server.requests("/x").is_empty());
}

#[test]
fn not_enough_free_space_fails_before_writing() {
    let server = Server::start();
    let scratch = Scratch::new("disk-full");
    let cache = scratch.cache();
    let data = archive(Format::TarGz, &vm_files(None));
    // A server that announces a petabyte: the check runs as soon as the format is known.
    let route = Route {
        claimed_length: Some(1 << 50),
        ..Route::ok(data.clone())
    };
    let url = server.route("/huge", route);
    let e = ensure(&cache, &spec(url, ChecksumType::Sha256, &data)).unwrap_err();
    assert_eq!(e.code(), "disk-full", "{e}");
    assert!(e.to_string().contains(&(1u64 << 50).to_string()), "{e}");
    assert_eq!(scratch.leftovers(), Vec::<PathBuf>::new());
}

// ---------------------------------------------------------------------------------------------
// Dropped and stalled connections

#[test]
fn a_dropped_connection_resumes_with_a_range_request() {
    let server = Server::start();
    for format in [Format::TarGz, Format::TarBz2, Format::Zip] {
        let scratch = Scratch::new("resume");
        let cache = scratch.cache();
        let files = vm_files(Some("vm"));
        let data = archive(format, &files);
        let cut = data.len() * 2 / 5;
        let path = format!("/{format:?}");
        let url = server.route(&path, Route::ok(data.clone()).dropping(cut, 2));
        let gold = ensure(&cache, &spec(url, ChecksumType::Sha512, &data))
            .unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_published(&scratch, &gold, &files);
        let seen = server.requests(&path);
        // The first response dropped at `cut`, the first resume dropped `cut` bytes later,
        // the second resume finished the body.
        let ranges: Vec<Option<String>> = seen.iter().map(|s| s.range.clone()).collect();
        assert_eq!(
            ranges,
            vec![
                None,
                Some(format!("bytes={cut}-")),
                Some(format!("bytes={}-", 2 * cut))
            ],
            "{format:?}"
        );
    }
}

#[test]
fn a_refused_reconnect_is_retried() {
    let server = Server::start();
    let scratch = Scratch::new("reconnect");
    let cache = scratch.cache();
    let files = vm_files(None);
    let data = archive(Format::TarGz, &files);
    let cut = data.len() / 2;
    let route = Route {
        hang_up_on: vec![1],
        ..Route::ok(data.clone()).dropping(cut, 1)
    };
    let url = server.route("/img", route);
    let gold = ensure(&cache, &spec(url, ChecksumType::Md5, &data)).unwrap();
    assert_published(&scratch, &gold, &files);
    let ranges: Vec<Option<String>> = server
        .requests("/img")
        .iter()
        .map(|s| s.range.clone())
        .collect();
    let resume = Some(format!("bytes={cut}-"));
    assert_eq!(ranges, vec![None, resume.clone(), resume]);
}

#[test]
fn a_server_without_range_support_gets_one_restart() {
    let server = Server::start();
    for format in [Format::TarGz, Format::Zip] {
        let scratch = Scratch::new("no-range");
        let cache = scratch.cache();
        let files = vm_files(None);
        let data = archive(format, &files);
        let path = format!("/{format:?}");
        let route = Route {
            ranges: false,
            ..Route::ok(data.clone()).dropping(data.len() / 2, 1)
        };
        let url = server.route(&path, route);
        let gold = ensure(&cache, &spec(url, ChecksumType::Sha1, &data))
            .unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_published(&scratch, &gold, &files);
        // The drop, the ignored Range request, the restart from scratch.
        assert_eq!(server.requests(&path).len(), 3, "{format:?}");

        // Dropping again after the restart cannot be helped.
        let scratch = Scratch::new("no-range-again");
        let path = format!("/{format:?}-always");
        let route = Route {
            ranges: false,
            ..Route::ok(data.clone()).dropping(data.len() / 2, usize::MAX)
        };
        let url = server.route(&path, route);
        let e = ensure(&scratch.cache(), &spec(url, ChecksumType::Sha1, &data)).unwrap_err();
        assert_eq!(e.code(), "image-download-failed", "{e}");
        assert!(e.to_string().contains("Range"), "{e}");
        assert_eq!(scratch.leftovers(), Vec::<PathBuf>::new());
    }
}

#[test]
fn resumes_are_bounded() {
    let server = Server::start();
    let scratch = Scratch::new("resumes-bounded");
    let mut settings = scratch.settings();
    settings.max_resumes = 2;
    let cache = ImageCache::new(settings).unwrap();
    let data = archive(Format::TarGz, &vm_files(None));
    let url = server.route(
        "/flaky",
        Route::ok(data.clone()).dropping(data.len() / 5, usize::MAX),
    );
    let e = ensure(&cache, &spec(url.clone(), ChecksumType::Md5, &data)).unwrap_err();
    assert_eq!(e.code(), "image-download-failed", "{e}");
    let text = e.to_string();
    assert!(text.contains("2 resumes") && text.contains(&url), "{text}");
    assert_eq!(server.requests("/flaky").len(), 3);
    assert_eq!(scratch.leftovers(), Vec::<PathBuf>::new());
}

#[test]
fn a_stalled_server_times_out() {
    let server = Server::start();
    let scratch = Scratch::new("stall");
    let mut settings = scratch.settings();
    settings.read_timeout = Duration::from_secs(1);
    let cache = ImageCache::new(settings).unwrap();
    for format in [Format::TarGz, Format::Zip] {
        let data = archive(format, &vm_files(None));
        let route = Route {
            stall_after: Some(data.len() / 3),
            ..Route::ok(data.clone())
        };
        let url = server.route(&format!("/{format:?}"), route);
        let started = Instant::now();
        let e = ensure(&cache, &spec(url.clone(), ChecksumType::Sha256, &data)).unwrap_err();
        assert_eq!(e.code(), "image-timeout", "{e}");
        assert!(e.to_string().contains(&url), "{e}");
        // 1 s of silence; far less than the server's own stall.
        assert!(started.elapsed() < DEADLINE / 2, "{:?}", started.elapsed());
        assert_eq!(scratch.leftovers(), Vec::<PathBuf>::new());
    }
}

// ---------------------------------------------------------------------------------------------
// One download per image

/// Runs `n` threads asking for `spec` once the test releases them, and returns each one's
/// result after opening `gate` only when all of them are waiting.
fn ensure_from_threads(
    cache: &Arc<ImageCache>,
    spec: &ImageSpec,
    n: usize,
    gate: &Arc<Gate>,
) -> Vec<Result<GoldImage, ImageError>> {
    let waiting = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (cache, spec, waiting) = (Arc::clone(cache), spec.clone(), Arc::clone(&waiting));
            thread::spawn(move || {
                let mut counted = false;
                cache.ensure(&spec, &Cancel::new(), &mut |_| {
                    if !counted {
                        counted = true;
                        waiting.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
        })
        .collect();
    wait_until("every thread waits", || waiting.load(Ordering::SeqCst) == n);
    gate.open();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn eight_threads_share_one_download() {
    let server = Server::start();
    let scratch = Scratch::new("single-flight");
    let cache = Arc::new(scratch.cache());
    let files = vm_files(Some("vm"));
    let data = archive(Format::TarGz, &files);
    let gate = Arc::new(Gate::default());
    let url = server.route("/shared", Route::ok(data.clone()).gated(4096, &gate));
    let spec = spec(url, ChecksumType::Sha256, &data);
    let results = ensure_from_threads(&cache, &spec, 8, &gate);
    assert_eq!(server.requests("/shared").len(), 1);
    let first = results[0].as_ref().unwrap().clone();
    for result in &results {
        assert_eq!(result.as_ref().unwrap(), &first);
    }
    assert_published(&scratch, &first, &files);

    // And later callers use the published folder.
    assert_eq!(ensure(&cache, &spec).unwrap(), first);
    assert_eq!(server.requests("/shared").len(), 1);
}

#[test]
fn eight_threads_share_one_failure() {
    let server = Server::start();
    let scratch = Scratch::new("single-failure");
    let cache = Arc::new(scratch.cache());
    let gate = Arc::new(Gate::default());
    let url = server.route("/broken", Route::status(500).gated(0, &gate));
    let spec = spec(url, ChecksumType::Sha256, b"x");
    let results = ensure_from_threads(&cache, &spec, 8, &gate);
    assert_eq!(server.requests("/broken").len(), 1);
    let first = results[0].as_ref().unwrap_err().to_string();
    for result in &results {
        let e = result.as_ref().unwrap_err();
        assert_eq!(e.code(), "image-download-failed");
        assert_eq!(e.to_string(), first);
    }
    // A failure is not remembered: the next request tries again.
    assert!(ensure(&cache, &spec).is_err());
    assert_eq!(server.requests("/broken").len(), 2);
}

#[test]
fn different_images_download_in_parallel() {
    let server = Server::start();
    let scratch = Scratch::new("parallel");
    let cache = Arc::new(scratch.cache());
    // The first image is held back until the second is published: with one download at a
    // time the second would never start.
    let gate = Arc::new(Gate::default());
    let slow_data = archive(Format::TarGz, &vm_files(Some("slow")));
    let slow = spec(
        server.route("/slow", Route::ok(slow_data.clone()).gated(1000, &gate)),
        ChecksumType::Md5,
        &slow_data,
    );
    let fast_data = archive(Format::Tar, &vm_files(Some("fast")));
    let fast = spec(
        server.route("/fast", Route::ok(fast_data.clone())),
        ChecksumType::Md5,
        &fast_data,
    );
    let slow_thread = {
        let (cache, slow) = (Arc::clone(&cache), slow.clone());
        thread::spawn(move || ensure(&cache, &slow))
    };
    wait_until("the slow download started", || {
        !server.requests("/slow").is_empty()
    });
    let fast_gold = ensure(&cache, &fast).unwrap();
    assert_eq!(fast_gold.config, fast_gold.dir.join("fast/macOS.vmx"));
    gate.open();
    let slow_gold = slow_thread.join().unwrap().unwrap();
    assert_eq!(slow_gold.config, slow_gold.dir.join("slow/macOS.vmx"));
}

#[test]
fn a_cancelled_waiter_leaves_while_the_others_get_the_image() {
    let server = Server::start();
    let scratch = Scratch::new("cancel");
    let cache = Arc::new(scratch.cache());
    let files = vm_files(None);
    let data = archive(Format::TarBz2, &files);
    let gate = Arc::new(Gate::default());
    let url = server.route("/img", Route::ok(data.clone()).gated(2048, &gate));
    let spec = spec(url, ChecksumType::Sha256, &data);

    let reports = Arc::new(Mutex::new(Vec::<ImageProgress>::new()));
    let cancels: Vec<Cancel> = (0..3).map(|_| Cancel::new()).collect();
    let handles: Vec<_> = cancels
        .iter()
        .map(|cancel| {
            let (cache, spec, cancel, reports) = (
                Arc::clone(&cache),
                spec.clone(),
                cancel.clone(),
                Arc::clone(&reports),
            );
            thread::spawn(move || {
                cache.ensure(&spec, &cancel, &mut |p| reports.lock().unwrap().push(*p))
            })
        })
        .collect();
    // Progress while the server holds the rest of the body: the first bytes and the total.
    wait_until("progress shows the first bytes", || {
        reports.lock().unwrap().iter().any(|p| {
            p.phase == ImagePhase::Downloading
                && p.bytes_done >= 2048
                && p.bytes_total == Some(data.len() as u64)
        })
    });
    let mut handles = handles.into_iter();
    cancels[0].cancel();
    let cancelled = handles.next().unwrap().join().unwrap();
    assert_eq!(cancelled.unwrap_err().code(), "image-cancelled");
    assert!(cache.lookup(&spec.checksum).is_none());

    gate.open();
    for handle in handles {
        let gold = handle.join().unwrap().unwrap();
        assert_published(&scratch, &gold, &files);
    }
    assert_eq!(server.requests("/img").len(), 1);
}

#[test]
fn a_waiter_cancelled_before_it_asks_gets_nothing_started() {
    let server = Server::start();
    let scratch = Scratch::new("cancel-first");
    let url = server.route("/x", Route::ok(b"x".to_vec()));
    let cancel = Cancel::new();
    cancel.cancel();
    let e = scratch
        .cache()
        .ensure(&spec(url, ChecksumType::Md5, b"x"), &cancel, &mut |_| {})
        .unwrap_err();
    assert_eq!(e.code(), "image-cancelled");
    assert!(server.requests("/x").is_empty());
}

// ---------------------------------------------------------------------------------------------
// What is on disk already

#[test]
fn an_existing_gold_folder_is_used_without_downloading() {
    let server = Server::start();
    let scratch = Scratch::new("existing");
    let cache = scratch.cache();
    let url = server.route("/never", Route::ok(b"x".to_vec()));
    let image = spec(url, ChecksumType::Sha1, b"the Go server downloaded this");
    // As the original server left it: gold/<checksum>/ with the VM inside.
    let gold_dir = scratch.data().join("gold").join(&image.checksum);
    fs::create_dir_all(gold_dir.join("Catalina.vmwarevm")).unwrap();
    fs::write(gold_dir.join("Catalina.vmwarevm/Catalina.vmx"), "x").unwrap();
    fs::write(gold_dir.join("Catalina.vmwarevm/disk.vmdk"), "x").unwrap();

    let gold = ensure(&cache, &image).unwrap();
    assert_eq!(gold.config, gold_dir.join("Catalina.vmwarevm/Catalina.vmx"));
    assert_eq!(cache.lookup(&image.checksum), Some(gold));
    assert!(server.requests("/never").is_empty());

    // A gold folder without a .vmx is reported, not silently downloaded over.
    let broken = spec(
        server.route("/never2", Route::ok(b"x".to_vec())),
        ChecksumType::Sha1,
        b"broken",
    );
    fs::create_dir_all(scratch.data().join("gold").join(&broken.checksum)).unwrap();
    let e = ensure(&cache, &broken).unwrap_err();
    assert_eq!(e.code(), "gold-invalid", "{e}");
    assert!(cache.lookup(&broken.checksum).is_none());
    assert!(server.requests("/never2").is_empty());
}

#[test]
fn new_removes_what_an_interrupted_download_left() {
    let scratch = Scratch::new("leftovers");
    let data = scratch.data();
    let checksum = digest(ChecksumType::Md5, b"x");
    let staging = data
        .join("gold")
        .join(format!(".staging-{checksum}-1234-0"));
    fs::create_dir_all(staging.join("vm")).unwrap();
    fs::write(staging.join("vm/half.vmdk"), "x").unwrap();
    fs::create_dir_all(data.join("images")).unwrap();
    let part = data.join("images").join(format!("{checksum}-1234-1.part"));
    fs::write(&part, "x").unwrap();
    let published = data.join("gold").join(&checksum);
    fs::create_dir_all(&published).unwrap();
    fs::write(published.join("a.vmx"), "x").unwrap();
    // An archive the original server kept is not ours to delete.
    let old_archive = data.join("images").join("catalina.tar.gz");
    fs::write(&old_archive, "x").unwrap();

    let cache = scratch.cache();
    assert!(!staging.exists());
    assert!(!part.exists());
    assert!(old_archive.exists());
    assert!(cache.lookup(&checksum).is_some());
}

#[test]
fn new_creates_the_data_folders() {
    let scratch = Scratch::new("create");
    let _cache = scratch.cache();
    assert!(scratch.data().join("gold").is_dir());
    assert!(scratch.data().join("images").is_dir());
    assert_eq!(scratch.leftovers(), Vec::<PathBuf>::new());
}

#[test]
fn the_cache_can_be_shared_between_threads() {
    fn check<T: Send + Sync>() {}
    check::<ImageCache>();
    check::<ImageError>();
}
