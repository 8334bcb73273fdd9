//! No work that nobody wants: a download whose VMs are all gone stops (connection closed,
//! staging removed), DELETE /images of a download in progress cancels it for its waiters,
//! a dribbling server trips the minimum rate, bytes after the archive's end are bounded,
//! a decompression bomb (tar.gz, tar.bz2, zip) stops with its last VM, a pre-warm that is
//! the only waiter is cancelled by DELETE /images too, and downloads queue past --max-downloads.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::http::{call, read_headers, FileServer};
use common::{gold_tar_gz, gold_tar_gz_padded, options, sha1_hex, Server, TempDir};
use serde_json::Value;

/// Serves one body, `chunk` bytes every `pause`, and notices when the client hangs up.
struct Dribble {
    url: String,
    open: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Dribble {
    fn start(body: Vec<u8>, chunk: usize, pause: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/image.tar.gz", listener.local_addr().unwrap());
        let open = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let body = Arc::new(body);
        let (o, s, st) = (open.clone(), served.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let (open, served, stop, body) = (o.clone(), s.clone(), st.clone(), body.clone());
                open.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    let _ = reader.read_line(&mut line);
                    read_headers(&mut reader);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                        body.len()
                    );
                    let mut ok = stream.write_all(head.as_bytes()).is_ok();
                    for piece in body.chunks(chunk) {
                        if !ok || stop.load(Ordering::SeqCst) {
                            break;
                        }
                        ok = stream.write_all(piece).is_ok();
                        served.fetch_add(piece.len(), Ordering::SeqCst);
                        thread::sleep(pause);
                    }
                    // A peer that hung up makes the writes fail: the connection is over.
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            url,
            open,
            served,
            stop,
        }
    }
}

impl Drop for Dribble {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn create(server: &Server, url: &str, checksum: &str) -> String {
    let (status, vm) = server.create(&common::image_body(url, checksum));
    assert_eq!(status, 202, "{vm}");
    vm["id"].as_str().unwrap().to_string()
}

fn until(what: &str, server: &Server, limit: Duration, done: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < limit,
            "not within {limit:?}: {what}\n{}",
            server.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

fn staging_left(data: &Path) -> Vec<String> {
    let mut left = Vec::new();
    for sub in ["gold", "images"] {
        if let Ok(entries) = std::fs::read_dir(data.join(sub)) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(".staging") || name.ends_with(".part") {
                    left.push(name);
                }
            }
        }
    }
    left
}

fn phase(server: &Server, id: &str) -> String {
    server.get_vm(id).1["progress"]["phase"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_download_that_no_vm_waits_for_is_cancelled_within_seconds() {
    let dir = TempDir::new("nobody");
    let archive = gold_tar_gz_padded("box", 4 << 20);
    let checksum = sha1_hex(&archive);
    let dribble = Dribble::start(archive, 4096, Duration::from_millis(20));
    let server = Server::start(dir.path());
    let a = create(&server, &dribble.url, &checksum);
    let b = create(&server, &dribble.url, &checksum);
    until(
        "both waiting on the download",
        &server,
        Duration::from_secs(20),
        || {
            [&a, &b].iter().all(|id| {
                server.get_vm(id).1["progress"]["bytes_downloaded"]
                    .as_u64()
                    .unwrap_or(0)
                    > 0
            })
        },
    );
    // One waiter gone: the other still wants it.
    assert_eq!(server.delete_vm(&a).0, 204);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(dribble.open.load(Ordering::SeqCst), 1, "{}", server.log());
    assert_eq!(server.delete_vm(&b).0, 204);
    let took = until(
        "the connection closed and the staging removed",
        &server,
        Duration::from_secs(5),
        || dribble.open.load(Ordering::SeqCst) == 0 && staging_left(&server.data_dir).is_empty(),
    );
    println!("cancelled {took:?} after the last DELETE");
    assert!(
        server.wait_log("no VM waits for it any more"),
        "{}",
        server.log()
    );
    // A later VM for the same image starts a fresh download.
    let served = dribble.served.load(Ordering::SeqCst);
    let c = create(&server, &dribble.url, &checksum);
    until("a new download", &server, Duration::from_secs(10), || {
        dribble.served.load(Ordering::SeqCst) > served
    });
    assert_eq!(server.delete_vm(&c).0, 204);
}

#[test]
fn delete_image_cancels_a_download_for_every_waiter() {
    let dir = TempDir::new("delimg");
    let archive = gold_tar_gz_padded("box", 4 << 20);
    let checksum = sha1_hex(&archive);
    let dribble = Dribble::start(archive, 4096, Duration::from_millis(20));
    let server = Server::start(dir.path());
    let ids: Vec<String> = (0..2)
        .map(|_| create(&server, &dribble.url, &checksum))
        .collect();
    // Both have joined the download once both report its bytes.
    until(
        "both waiting on the download",
        &server,
        Duration::from_secs(20),
        || {
            ids.iter().all(|id| {
                server.get_vm(id).1["progress"]["bytes_downloaded"]
                    .as_u64()
                    .unwrap_or(0)
                    > 0
            })
        },
    );
    let answer = call(
        "DELETE",
        &server.url(&format!("/images/{checksum}")),
        None,
        &[],
    );
    assert_eq!(answer.status, 204, "{}", answer.text());
    for id in &ids {
        let vm = server.wait_failed(id);
        assert_eq!(vm["error"]["code"], "image-cancelled", "{vm}");
    }
    until(
        "connection closed, staging gone",
        &server,
        Duration::from_secs(5),
        || dribble.open.load(Ordering::SeqCst) == 0 && staging_left(&server.data_dir).is_empty(),
    );
    let answer = call(
        "DELETE",
        &server.url(&format!("/images/{checksum}")),
        None,
        &[],
    );
    assert_eq!(answer.status, 404, "{}", answer.text());
}

#[test]
fn a_dribbling_server_fails_the_minimum_rate() {
    let dir = TempDir::new("minrate");
    let archive = gold_tar_gz_padded("box", 1 << 20);
    let checksum = sha1_hex(&archive);
    // 1 KiB every 100 ms: 10 KiB/s, always some byte well within the read timeout.
    let dribble = Dribble::start(archive, 1024, Duration::from_millis(100));
    let server = Server::start_with(
        dir.path(),
        options(&[
            "--download-min-rate",
            "64KiB/s",
            "--download-min-rate-window",
            "1",
        ]),
    );
    let id = create(&server, &dribble.url, &checksum);
    let vm = server.wait_failed(&id);
    assert_eq!(vm["error"]["code"], "image-timeout", "{vm}");
    let message = vm["error"]["message"].as_str().unwrap();
    assert!(message.contains("--download-min-rate"), "{message}");
    until(
        "connection closed, staging gone",
        &server,
        Duration::from_secs(5),
        || dribble.open.load(Ordering::SeqCst) == 0 && staging_left(&server.data_dir).is_empty(),
    );
}

#[test]
fn bytes_after_the_archive_end_are_bounded() {
    let dir = TempDir::new("trailing");
    let files = FileServer::start();
    let mut archive = gold_tar_gz("box");
    archive.extend(std::iter::repeat_n(0u8, 64 << 20));
    let checksum = sha1_hex(&archive);
    let url = files.add("/tail.tar.gz", archive);
    let server = Server::start(dir.path());
    let id = create(&server, &url, &checksum);
    let vm = server.wait_failed(&id);
    assert_eq!(vm["error"]["code"], "archive-trailing-data", "{vm}");
    assert!(staging_left(&server.data_dir).is_empty());
    // A little padding (as tar and gzip tools leave) is fine.
    let mut archive = gold_tar_gz("box");
    archive.extend(std::iter::repeat_n(0u8, 64 << 10));
    let checksum = sha1_hex(&archive);
    let url = files.add("/padded.tar.gz", archive);
    let id = create(&server, &url, &checksum);
    server.wait_ready(&id);
}

/// A tar whose one entry unpacks to `gib` GiB of zeros, compressed as members of a
/// multi-member stream (gzip or bzip2): the header, then one member of 16 MiB of zeros,
/// compressed once and repeated.
fn tar_bomb(gib: u64, member: fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let size = gib << 30;
    let mut header = tar::Header::new_gnu();
    header.set_path("bomb/zeros.bin").unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    let piece = 16u64 << 20;
    let mut out = member(header.as_bytes());
    let zeros = member(&vec![0u8; piece as usize]);
    for _ in 0..size / piece {
        out.extend_from_slice(&zeros);
    }
    out
}

fn gzip_member(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn bzip2_member(bytes: &[u8]) -> Vec<u8> {
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
    bz.write_all(bytes).unwrap();
    bz.finish().unwrap()
}

/// A zip (zip64) of one deflated entry of `gib` GiB of zeros. A raw deflate stream is a
/// sequence of blocks: 16 MiB of zeros compressed with a sync flush ends byte-aligned and not
/// final, and its back-references (to zeros) mean the same after more zeros, so it is
/// repeated, then closed by an empty final block. The CRC is the real one.
fn zip_bomb(gib: u64) -> Vec<u8> {
    use flate2::{Compress, Compression, Crc, FlushCompress};
    let piece = 16usize << 20;
    let zeros = vec![0u8; piece];
    let mut chunk = Vec::with_capacity(4 << 20);
    let mut deflate = Compress::new(Compression::best(), false);
    deflate
        .compress_vec(&zeros, &mut chunk, FlushCompress::Sync)
        .unwrap();
    assert_eq!(
        deflate.total_in(),
        piece as u64,
        "one call compresses the piece"
    );
    let mut last = Vec::with_capacity(64);
    Compress::new(Compression::best(), false)
        .compress_vec(&[], &mut last, FlushCompress::Finish)
        .unwrap();
    let mut piece_crc = Crc::new();
    piece_crc.update(&zeros);
    let pieces = (gib << 30) / piece as u64;
    let mut crc = Crc::new();
    let mut data = Vec::with_capacity(chunk.len() * pieces as usize + last.len());
    for _ in 0..pieces {
        data.extend_from_slice(&chunk);
        crc.combine(&piece_crc);
    }
    data.extend_from_slice(&last);
    let (size, packed, crc) = (gib << 30, data.len() as u64, crc.sum());
    let name = b"bomb/zeros.bin";
    let u16le = |v: u16| v.to_le_bytes();
    let u32le = |v: u32| v.to_le_bytes();
    let u64le = |v: u64| v.to_le_bytes();
    // What the local and the central header share: version 4.5 (zip64), deflate, the CRC,
    // sizes deferred to the zip64 field, the name's length and that field's (20).
    let entry_fields = |zip: &mut Vec<u8>| {
        for v in [45u16, 0, 8, 0, 0x5821] {
            zip.extend(u16le(v));
        }
        zip.extend(u32le(crc));
        zip.extend(u32le(u32::MAX));
        zip.extend(u32le(u32::MAX));
        zip.extend(u16le(name.len() as u16));
        zip.extend(u16le(20));
    };
    let zip64_sizes = |zip: &mut Vec<u8>| {
        zip.extend(u16le(1));
        zip.extend(u16le(16));
        zip.extend(u64le(size));
        zip.extend(u64le(packed));
    };
    let mut zip = Vec::with_capacity(data.len() + 512);
    // Local header: sizes in the zip64 extra field.
    zip.extend(u32le(0x0403_4b50));
    entry_fields(&mut zip);
    zip.extend_from_slice(name);
    zip64_sizes(&mut zip);
    zip.extend_from_slice(&data);
    let central_at = zip.len() as u64;
    zip.extend(u32le(0x0201_4b50));
    zip.extend(u16le((3 << 8) | 45));
    entry_fields(&mut zip);
    zip.extend(u16le(0));
    zip.extend(u16le(0));
    zip.extend(u16le(0));
    zip.extend(u32le(0o100644 << 16));
    zip.extend(u32le(0));
    zip.extend_from_slice(name);
    zip64_sizes(&mut zip);
    let central_len = zip.len() as u64 - central_at;
    let end64_at = zip.len() as u64;
    zip.extend(u32le(0x0606_4b50));
    zip.extend(u64le(44));
    zip.extend(u16le(45));
    zip.extend(u16le(45));
    zip.extend(u32le(0));
    zip.extend(u32le(0));
    zip.extend(u64le(1));
    zip.extend(u64le(1));
    zip.extend(u64le(central_len));
    zip.extend(u64le(central_at));
    zip.extend(u32le(0x0706_4b50));
    zip.extend(u32le(0));
    zip.extend(u64le(end64_at));
    zip.extend(u32le(1));
    zip.extend(u32le(0x0605_4b50));
    zip.extend(u16le(0));
    zip.extend(u16le(0));
    zip.extend(u16le(1));
    zip.extend(u16le(1));
    zip.extend(u32le(central_len as u32));
    zip.extend(u32le(u32::MAX));
    zip.extend(u16le(0));
    zip
}

/// utime + stime of the process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Creates a VM of `bomb`, waits until its image is in `phase` (the decompression is
/// running), deletes the VM, and checks that the server's CPU is back to idle within
/// seconds, the download failed `image-cancelled`, and no staging or part file is left.
fn a_bomb_stops_with_its_last_vm(tag: &str, name: &str, bomb: Vec<u8>, phase_running: &str) {
    let dir = TempDir::new(tag);
    let files = FileServer::start();
    let checksum = sha1_hex(&bomb);
    let url = files.add(name, bomb);
    let server = Server::start(dir.path());
    let id = create(&server, &url, &checksum);
    until(
        "the bomb decompressing",
        &server,
        Duration::from_secs(30),
        || phase(&server, &id) == phase_running,
    );
    thread::sleep(Duration::from_millis(500));
    // Busy before the DELETE (5% of a core at least: the machine may be loaded), so that
    // idle after it means something.
    let busy = cpu_ticks(server.pid());
    thread::sleep(Duration::from_secs(1));
    assert_eq!(server.delete_vm(&id).0, 204);
    let Some(busy) = busy else {
        println!("skipped the CPU check: no /proc");
        return;
    };
    assert!(
        cpu_ticks(server.pid()).unwrap() - busy >= 5,
        "the bomb was not decompressing before the DELETE\n{}",
        server.log()
    );
    // Idle within seconds: less than 10% of a core over a second.
    let idle = until(
        "the server's CPU idle",
        &server,
        Duration::from_secs(10),
        || {
            let before = cpu_ticks(server.pid()).unwrap();
            thread::sleep(Duration::from_secs(1));
            cpu_ticks(server.pid()).unwrap() - before < 10
        },
    );
    println!("{name}: idle {idle:?} after the DELETE");
    until("staging gone", &server, Duration::from_secs(5), || {
        staging_left(&server.data_dir).is_empty()
    });
    until(
        "the download's end logged",
        &server,
        Duration::from_secs(5),
        || {
            server
                .log()
                .lines()
                .any(|l| l.contains("image download failed") && l.contains("image-cancelled"))
        },
    );
}

#[test]
fn a_decompression_bomb_stops_with_its_last_vm() {
    a_bomb_stops_with_its_last_vm(
        "bomb",
        "/bomb.tar.gz",
        tar_bomb(64, gzip_member),
        "downloading",
    );
}

#[test]
fn a_bzip2_bomb_stops_with_its_last_vm() {
    // 157 KB of bzip2 once unpacked to 200 GiB of zeros and burnt a core for half an hour.
    a_bomb_stops_with_its_last_vm(
        "bomb-bz2",
        "/bomb.tar.bz2",
        tar_bomb(64, bzip2_member),
        "downloading",
    );
}

#[test]
fn a_zip_bomb_stops_with_its_last_vm() {
    // A zip is unpacked from its file after the download: no download read is left to
    // notice the cancellation, so the unpacker itself must.
    a_bomb_stops_with_its_last_vm("bomb-zip", "/bomb.zip", zip_bomb(64), "unpacking");
}

/// The one waiter is a pre-warm: `DELETE /images/:checksum` cancels the download, the
/// pre-warm fails `image-cancelled` (shown in `GET /images` until deleted again), and the
/// connection and the staging folder go.
#[test]
fn delete_image_cancels_a_download_only_a_prewarm_waits_for() {
    let dir = TempDir::new("delprewarm");
    let archive = gold_tar_gz_padded("box", 4 << 20);
    let checksum = sha1_hex(&archive);
    let dribble = Dribble::start(archive, 4096, Duration::from_millis(20));
    let server = Server::start(dir.path());
    let body = format!(
        r#"{{"url":"{}","checksum":"{checksum}","checksum_type":"sha1"}}"#,
        dribble.url
    );
    let answer = call("POST", &server.url("/images"), Some(body.as_bytes()), &[]);
    assert_eq!(answer.status, 202, "{}", answer.text());
    let image = server.url(&format!("/images/{checksum}"));
    until(
        "the pre-warm downloading",
        &server,
        Duration::from_secs(20),
        || {
            call("GET", &image, None, &[]).json()["progress"]["bytes_done"]
                .as_u64()
                .unwrap_or(0)
                > 0
        },
    );
    let answer = call("DELETE", &image, None, &[]);
    assert_eq!(answer.status, 204, "{}", answer.text());
    until(
        "the pre-warm failed image-cancelled",
        &server,
        Duration::from_secs(5),
        || {
            let entry = call("GET", &image, None, &[]).json();
            entry["state"] == "failed" && entry["error"]["code"] == "image-cancelled"
        },
    );
    until(
        "connection closed, staging gone",
        &server,
        Duration::from_secs(5),
        || dribble.open.load(Ordering::SeqCst) == 0 && staging_left(&server.data_dir).is_empty(),
    );
    // The failed pre-warm is forgotten by the next DELETE; then nothing is left.
    assert_eq!(call("DELETE", &image, None, &[]).status, 204);
    assert_eq!(call("GET", &image, None, &[]).status, 404);
    assert_eq!(call("DELETE", &image, None, &[]).status, 404);
}

#[test]
fn downloads_past_max_downloads_wait_their_turn() {
    let dir = TempDir::new("queue");
    // About 5 s each at 400 KiB/s: the first holds its slot long enough to be seen.
    let first = gold_tar_gz_padded("one", 2 << 20);
    let second = gold_tar_gz_padded("two", 2 << 20);
    let (c1, c2) = (sha1_hex(&first), sha1_hex(&second));
    let d1 = Dribble::start(first, 4096, Duration::from_millis(10));
    let d2 = Dribble::start(second, 4096, Duration::from_millis(10));
    let server = Server::start_with(dir.path(), options(&["--max-downloads", "1"]));
    let a = create(&server, &d1.url, &c1);
    until("a downloading", &server, Duration::from_secs(20), || {
        phase(&server, &a) == "downloading"
    });
    let b = create(&server, &d2.url, &c2);
    // Until its download holds a slot, a VM is queued, never "downloading": a coordinator
    // (and this test's wait for `a` above) must be able to trust that word.
    until("b queued", &server, Duration::from_secs(20), || {
        let now = phase(&server, &b);
        assert!(
            now != "downloading" || d2.open.load(Ordering::SeqCst) > 0,
            "b reads downloading while a holds the only slot\n{}",
            server.log()
        );
        now == "queued-download"
    });
    assert_eq!(
        d2.open.load(Ordering::SeqCst),
        0,
        "b connected before its turn"
    );
    server.wait_ready(&a);
    server.wait_ready(&b);
    let _: Value = server.get_vm(&b).1;
}
