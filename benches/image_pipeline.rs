//! The image pipeline against the shell pipeline it replaces.
//!
//! `cargo bench --bench image_pipeline` builds a 1 GiB VM image compressible like a disk
//! image (zero runs, incompressible blocks, text-like blocks; deterministic) as tar.gz and
//! tar.bz2 (cached under target/, built once), serves them from a loopback HTTP server, and
//! times, from the same server to the same disk:
//!
//! - ours: `ImageCache::ensure` to a published gold folder (download, sha256, unpack, fsync,
//!   rename), in a child process so that its peak RSS is its own;
//! - the shell: `curl -s URL | tee >(sha256sum >/dev/null) | tar -xzf -` (`-xjf` for bzip2).
//!
//! Options (after `--`): `--runs N` (default 3), `--size-mib N` (default 1024), `--bz2-size-mib N`
//! (default 256: bzip2 compresses at a few MB/s, so a full GiB would take many minutes to
//! build), `--only gz|bz2`, `--keep` (leave the unpacked trees for inspection).
//!
//! The tar.gz case has an HTTPS row too: the same image from a loopback rustls server with a
//! certificate of a CA made for the run, against `curl -s --cacert ca.pem https://...`; it
//! prints the cipher suite the connections used. `--no-https` skips it.
//!
//! `--many-files N` runs only the many-small-files case instead (see `many_files.rs`): an
//! image of N files (1000000 for issue 17's target) through the real server, its time and the
//! server's peak RSS against `tar -xzf`, then the time of `GET /images` and `GET /metrics`.
//!
//! `--tart` runs only the tart case instead (see `tart_image.rs`): a tart VM folder with a
//! sparse 8 GiB `disk.img` (`--tart-data-mib N` of data, default 512) archived by `tar
//! --sparse`, served over loopback and pre-warmed through the real server on a tart host:
//! time, peak RSS and the disk's blocks on disk against curl piped into GNU tar.
//!
//! Re-executed as `image_pipeline --child <url> <sha256> <data dir> [<CA file>]` it runs our
//! pipeline once and prints `<seconds> <peak RSS KiB>`.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

// The benchmarks' shared server harness; this one uses the server, not the temp folders.
#[allow(unused_imports)]
mod common;
#[path = "image_pipeline/many_files.rs"]
mod many_files;
#[path = "image_pipeline/tart_image.rs"]
mod tart_image;

use osx_builder::image::{ChecksumType, ImageCache, ImageSettings, ImageSpec};
use osx_builder::sys::cancel::Cancel;
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
/// Disk images are mostly made of blocks of this size that are all zero, or full of
/// compressed/encrypted data, or file-system metadata and text.
const BLOCK: usize = 64 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(&args[2..]);
        return;
    }
    let options = Options::parse(&args[1..]);
    if let Err(e) = run(&options) {
        eprintln!("benchmark failed: {e}");
        std::process::exit(1);
    }
}

struct Options {
    runs: usize,
    size_mib: u64,
    bz2_size_mib: u64,
    only: Option<String>,
    keep: bool,
    https: bool,
    many_files: Option<u64>,
    tart_data_mib: Option<u64>,
}

impl Options {
    fn parse(args: &[String]) -> Self {
        let mut options = Options {
            runs: 3,
            size_mib: 1024,
            bz2_size_mib: 256,
            only: None,
            keep: false,
            https: true,
            many_files: None,
            tart_data_mib: None,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut number = |what: &str| -> u64 {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{what} needs a number"))
            };
            match arg.as_str() {
                "--runs" => options.runs = number("--runs") as usize,
                "--size-mib" => options.size_mib = number("--size-mib"),
                "--bz2-size-mib" => options.bz2_size_mib = number("--bz2-size-mib"),
                "--only" => options.only = args.next().cloned(),
                "--keep" => options.keep = true,
                "--no-https" => options.https = false,
                "--many-files" => options.many_files = Some(number("--many-files")),
                "--tart" => options.tart_data_mib = options.tart_data_mib.or(Some(512)),
                "--tart-data-mib" => options.tart_data_mib = Some(number("--tart-data-mib")),
                // cargo bench passes --bench; libtest-style filters are ignored.
                _ => {}
            }
        }
        options
    }
}

struct Case {
    name: &'static str,
    file: PathBuf,
    tar_flag: &'static str,
    size_mib: u64,
}

fn run(options: &Options) -> io::Result<()> {
    // OSXB_IMAGE_BENCH_DIR (a tmpfs, say) when the disk itself would be what is measured:
    // removing a million files runs at a few hundred a second on a busy overlay disk.
    let dir = std::env::var_os("OSXB_IMAGE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
        .join("image-bench");
    fs::create_dir_all(&dir)?;
    if let Some(files) = options.many_files {
        return many_files::run(&dir, &serve(&dir)?, files, options.keep);
    }
    if let Some(data_mib) = options.tart_data_mib {
        return tart_image::run(&dir, &serve(&dir)?, data_mib, options.keep);
    }
    let mut cases = Vec::new();
    if options.only.as_deref() != Some("bz2") {
        cases.push(Case {
            name: "tar.gz",
            file: dir.join(format!("image-{}m.tar.gz", options.size_mib)),
            tar_flag: "-xzf",
            size_mib: options.size_mib,
        });
    }
    if options.only.as_deref() != Some("gz") {
        cases.push(Case {
            name: "tar.bz2",
            file: dir.join(format!("image-{}m.tar.bz2", options.bz2_size_mib)),
            tar_flag: "-xjf",
            size_mib: options.bz2_size_mib,
        });
    }
    for case in &cases {
        build_image(case)?;
    }
    let base = serve(&dir)?;
    let tls = if options.https {
        Some(tls::serve(&dir)?)
    } else {
        None
    };
    let have_shell = ["bash", "curl", "tee", "sha256sum", "tar"]
        .iter()
        .all(|tool| have(tool));
    if !have_shell {
        println!("bash, curl, tee, sha256sum or tar is missing: no shell baseline");
    }
    println!(
        "{} run(s) each; wall-clock seconds from the first request to the unpacked tree \
         (ours also fsyncs the tree before publishing it; the shell leaves its writes in the \
         page cache)",
        options.runs
    );
    for case in &cases {
        let name = case.file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let url = format!("{base}/{name}");
        let checksum = fs::read_to_string(case.file.with_extension("sha256"))?
            .trim()
            .to_owned();
        let compressed = fs::metadata(&case.file)?.len();
        println!(
            "\n{}: {} MiB unpacked, {:.0} MiB compressed{}",
            case.name,
            case.size_mib,
            compressed as f64 / MIB as f64,
            if case.name == "tar.bz2" && case.size_mib < options.size_mib {
                " (smaller than tar.gz: bzip2 is slow to build and to unpack)"
            } else {
                ""
            }
        );
        row(
            &dir, case, options, &url, &checksum, compressed, have_shell, None,
        )?;
        if let (Some((tls_base, ca)), "tar.gz") = (&tls, case.name) {
            let url = format!("{tls_base}/{name}");
            println!("  over HTTPS ({url}):");
            row(
                &dir,
                case,
                options,
                &url,
                &checksum,
                compressed,
                have_shell,
                Some(ca),
            )?;
            println!("  cipher suite: {}", tls::cipher_suites());
        }
    }
    Ok(())
}

/// One row: our pipeline and the shell's, `options.runs` times each, and their figures.
#[allow(clippy::too_many_arguments)]
fn row(
    dir: &Path,
    case: &Case,
    options: &Options,
    url: &str,
    checksum: &str,
    compressed: u64,
    have_shell: bool,
    ca: Option<&Path>,
) -> io::Result<()> {
    {
        let mut ours = Vec::new();
        let mut shell = Vec::new();
        let mut rss = 0;
        for run in 0..options.runs {
            let (seconds, peak_kib) = run_ours(dir, url, checksum, options.keep, ca)?;
            println!(
                "  run {}: ours {seconds:.2} s (peak RSS {} MiB)",
                run + 1,
                peak_kib / 1024
            );
            ours.push(seconds);
            rss = rss.max(peak_kib);
            if have_shell {
                let seconds = run_shell(dir, url, case.tar_flag, options.keep, ca)?;
                println!("  run {}: shell {seconds:.2} s", run + 1);
                shell.push(seconds);
            }
        }
        let ours_median = median(&mut ours);
        println!(
            "  ours:  {ours_median:.2} s median ({:.0} MB/s of archive, {:.0} MB/s unpacked), \
             peak RSS {:.1} MiB",
            compressed as f64 / ours_median / 1e6,
            (case.size_mib * MIB) as f64 / ours_median / 1e6,
            rss as f64 / 1024.0
        );
        if have_shell {
            let shell_median = median(&mut shell);
            println!(
                "  shell: {shell_median:.2} s median  (`curl -s {}URL | tee >(sha256sum >/dev/null) \
                 | tar {} -`)",
                if ca.is_some() { "--cacert ca.pem " } else { "" },
                case.tar_flag
            );
            let ratio = ours_median / shell_median;
            println!("  ratio ours/shell: {ratio:.2}");
            if case.name == "tar.gz" {
                println!(
                    "  targets: ratio <= 1.15 {}, peak RSS < 64 MiB {}",
                    if ratio <= 1.15 { "met" } else { "MISSED" },
                    if rss < 64 * 1024 { "met" } else { "MISSED" }
                );
            }
        }
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// Writes back what earlier runs left dirty, so that one run's writeback does not land in the
/// next one's time.
fn settle() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Runs `script` with bash in `cwd` after a [`settle`]; its seconds.
fn timed_bash(script: &str, cwd: &Path) -> io::Result<f64> {
    settle();
    let started = Instant::now();
    let status = Command::new("bash")
        .args(["-c", script])
        .current_dir(cwd)
        .status()?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(io::Error::other(format!("`{script}` failed: {status}")));
    }
    Ok(seconds)
}

/// Pre-warms the image of `body` (a `POST /images` body) through the server at `addr` and
/// polls `GET /images/<checksum>` every `poll` until it is ready; the seconds from the POST.
fn prewarm(
    addr: std::net::SocketAddr,
    body: &str,
    checksum: &str,
    poll: Duration,
) -> io::Result<f64> {
    settle();
    let started = Instant::now();
    let (status, answer) = common::request(addr, "POST", "/images", Some(body.as_bytes()))?;
    if status != 202 {
        return Err(io::Error::other(format!(
            "POST /images answered {status}: {}",
            String::from_utf8_lossy(&answer)
        )));
    }
    let path = format!("/images/{checksum}");
    loop {
        let (_, entry) = common::get(addr, &path)?;
        let entry: serde_json::Value = serde_json::from_slice(&entry).unwrap_or_default();
        match entry["state"].as_str() {
            Some("ready") => return Ok(started.elapsed().as_secs_f64()),
            Some("failed") => return Err(io::Error::other(format!("pre-warm failed: {entry}"))),
            _ => thread::sleep(poll),
        }
    }
}

fn run_ours(
    dir: &Path,
    url: &str,
    checksum: &str,
    keep: bool,
    ca: Option<&Path>,
) -> io::Result<(f64, u64)> {
    let data_dir = dir.join("ours");
    let _ = fs::remove_dir_all(&data_dir);
    settle();
    let started = Instant::now();
    let output = Command::new(std::env::current_exe()?)
        .args(["--child", url, checksum])
        .arg(&data_dir)
        .args(ca)
        .output()?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "our pipeline failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let peak_kib = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if !keep {
        fs::remove_dir_all(&data_dir)?;
    }
    Ok((seconds, peak_kib))
}

fn run_shell(
    dir: &Path,
    url: &str,
    tar_flag: &str,
    keep: bool,
    ca: Option<&Path>,
) -> io::Result<f64> {
    let out = dir.join("shell");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    let cacert = ca.map_or_else(String::new, |ca| format!("--cacert '{}' ", ca.display()));
    let seconds = timed_bash(
        &format!("curl -s {cacert}'{url}' | tee >(sha256sum >/dev/null) | tar {tar_flag} -"),
        &out,
    )?;
    if !keep {
        fs::remove_dir_all(&out)?;
    }
    Ok(seconds)
}

/// Our pipeline, once, in this (child) process.
fn child(args: &[String]) {
    let (url, checksum, data_dir, ca) = match args {
        [url, checksum, data_dir] => (url, checksum, data_dir, None),
        [url, checksum, data_dir, ca] => (url, checksum, data_dir, Some(ca)),
        _ => {
            eprintln!("usage: image_pipeline --child <url> <sha256> <data dir> [<CA file>]");
            std::process::exit(2);
        }
    };
    let mut settings = ImageSettings::new(data_dir);
    if let Some(ca) = ca {
        match osx_builder::tls::ClientTrust::from_ca_file_only(Path::new(ca)) {
            Ok(trust) => settings.trust = trust,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    }
    let started = Instant::now();
    let result = ImageCache::new(settings).and_then(|cache| {
        let spec = ImageSpec {
            url: url.clone(),
            checksum: checksum.clone(),
            checksum_type: ChecksumType::Sha256,
        };
        cache.ensure(&spec, &Cancel::new(), &mut |_| {})
    });
    match result {
        Ok(gold) if gold.config.is_file() => {
            println!("{} {}", started.elapsed().as_secs_f64(), peak_rss_kib());
        }
        Ok(gold) => {
            eprintln!("{} is missing", gold.config.display());
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("{}: {e}", e.code());
            std::process::exit(1);
        }
    }
}

/// This process's peak resident set size.
fn peak_rss_kib() -> u64 {
    let from_proc = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        });
    from_proc.unwrap_or_else(|| {
        // SAFETY: getrusage writes only into the zeroed struct we own.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        // Kilobytes on Linux, bytes on macOS.
        let max = usage.ru_maxrss as u64;
        if cfg!(target_os = "macos") {
            max / 1024
        } else {
            max
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The test image

/// xorshift64: fast, deterministic, incompressible enough.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// One 64 KiB block of the disk: 45% zero (free space), 30% random (compressed files,
/// binaries), 25% text-like (file-system metadata, logs, plists).
fn disk_block(rng: &mut Rng, block: &mut [u8]) {
    const WORDS: [&[u8]; 12] = [
        b"<key>",
        b"</string>",
        b"CFBundle",
        b"com.apple.",
        b"/System/Library/",
        b"0x0000",
        b"inode ",
        b"\n",
        b"Version",
        b"<dict>",
        b"kernel ",
        b"private ",
    ];
    match rng.next() % 100 {
        0..=44 => block.fill(0),
        45..=74 => rng.fill(block),
        _ => {
            let mut at = 0;
            while at < block.len() {
                let word = WORDS[(rng.next() % WORDS.len() as u64) as usize];
                let n = word.len().min(block.len() - at);
                block[at..at + n].copy_from_slice(&word[..n]);
                at += n;
                if at < block.len() && rng.next().is_multiple_of(4) {
                    block[at] = b'0' + (rng.next() % 10) as u8;
                    at += 1;
                }
            }
        }
    }
}

/// Writes a tar of one VM folder (a .vmx, an nvram and a `size_mib` disk) to `out`.
fn write_tar(out: impl Write, size_mib: u64) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    let files: [(&str, Vec<u8>); 2] = [
        (
            "macOS.vmwarevm/macOS.vmx",
            b".encoding = \"UTF-8\"\nguestOS = \"darwin19-64\"\n".to_vec(),
        ),
        ("macOS.vmwarevm/macOS.nvram", vec![7; 8192]),
    ];
    for (name, data) in files {
        append_file(&mut builder, name, &data)?;
    }
    let size = size_mib * MIB;
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    let disk = DiskReader {
        rng: Rng(0x5eed_1234_abcd_ef01),
        block: vec![0; BLOCK],
        used: BLOCK,
        left: size,
    };
    builder.append_data(&mut header, "macOS.vmwarevm/macOS-disk1.vmdk", disk)?;
    builder.into_inner()?.flush()
}

/// One regular file (mode 0644) into a tar being built.
fn append_file<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, name, data)
}

struct DiskReader {
    rng: Rng,
    block: Vec<u8>,
    used: usize,
    left: u64,
}

impl Read for DiskReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        if self.used == self.block.len() {
            disk_block(&mut self.rng, &mut self.block);
            self.used = 0;
        }
        let n = buf
            .len()
            .min(self.block.len() - self.used)
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.block[self.used..self.used + n]);
        self.used += n;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Hashes what passes through, so that the archive's checksum costs no second read.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> HashingWriter<W> {
    /// Moves the finished `partial` to `file` and writes its sha256 beside it (as
    /// `<file>.sha256`); returns the digest.
    fn publish(mut self, partial: &Path, file: &Path) -> io::Result<String> {
        self.flush()?;
        let digest: String = self
            .hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        fs::rename(partial, file)?;
        fs::write(file.with_extension("sha256"), format!("{digest}\n"))?;
        Ok(digest)
    }
}

/// Builds `case.file` and its `.sha256` unless both exist.
fn build_image(case: &Case) -> io::Result<()> {
    let sum_file = case.file.with_extension("sha256");
    if case.file.is_file() && sum_file.is_file() {
        return Ok(());
    }
    println!(
        "building {} ({} MiB unpacked), once...",
        case.file.display(),
        case.size_mib
    );
    let started = Instant::now();
    let partial = case.file.with_extension("partial");
    let mut hashed = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, File::create(&partial)?),
        hasher: Sha256::new(),
    };
    if case.name == "tar.gz" {
        let mut enc = flate2::write::GzEncoder::new(&mut hashed, flate2::Compression::new(6));
        write_tar(&mut enc, case.size_mib)?;
        enc.finish()?;
    } else {
        let mut enc = bzip2::write::BzEncoder::new(&mut hashed, bzip2::Compression::new(9));
        write_tar(&mut enc, case.size_mib)?;
        enc.finish()?;
    }
    hashed.publish(&partial, &case.file)?;
    println!("  built in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The loopback server

/// Serves the files of `dir` over HTTP/1.1 on 127.0.0.1; returns the base URL.
fn serve(dir: &Path) -> io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    let dir = dir.to_path_buf();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let dir = dir.clone();
            thread::spawn(move || {
                if let Err(e) = answer(stream, &dir) {
                    eprintln!("bench server: {e}");
                }
            });
        }
    });
    Ok(base)
}

fn answer(mut stream: TcpStream, dir: &Path) -> io::Result<()> {
    let mut request = Vec::new();
    let mut byte = [0; 1];
    while !request.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Ok(());
        }
        request.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&request);
    let name = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/');
    if name.contains('/') || name.contains("..") {
        stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
        return Ok(());
    }
    let mut file = match File::open(dir.join(name)) {
        Ok(file) => file,
        Err(_) => {
            stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            return Ok(());
        }
    };
    let len = file.metadata()?.len();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n\
         Connection: close\r\n\r\n"
    )?;
    // std turns this into sendfile on Linux: the server costs both pipelines next to nothing.
    io::copy(&mut file, &mut stream)?;
    stream.flush()?;
    // Give the client time to read the end before the socket goes.
    stream.shutdown(std::net::Shutdown::Write)?;
    thread::sleep(Duration::from_millis(10));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The loopback HTTPS server

mod tls {
    use std::fs::File;
    use std::io::{self, BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};
    use std::thread;

    use rustls_pki_types::pem::PemObject;

    static SUITES: Mutex<Vec<String>> = Mutex::new(Vec::new());

    /// The cipher suites the benchmark's HTTPS connections negotiated.
    pub fn cipher_suites() -> String {
        let mut suites = SUITES.lock().map(|s| s.clone()).unwrap_or_default();
        suites.sort();
        suites.dedup();
        suites.join(", ")
    }

    /// Serves `dir` over HTTPS with a certificate for 127.0.0.1 from a CA made for this run;
    /// returns the base URL and the CA's PEM file.
    pub fn serve(dir: &Path) -> io::Result<(String, PathBuf)> {
        let bad = |e: rcgen::Error| io::Error::other(e.to_string());
        let ca_key = rcgen::KeyPair::generate().map_err(bad)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "image_pipeline bench CA");
        let ca = params.self_signed(&ca_key).map_err(bad)?;
        let key = rcgen::KeyPair::generate().map_err(bad)?;
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .map_err(bad)?
            .signed_by(&key, &ca, &ca_key)
            .map_err(bad)?;
        let ca_file = dir.join("bench-ca.pem");
        std::fs::write(&ca_file, ca.pem())?;
        let chain = vec![leaf.der().clone()];
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
            .map_err(|e| io::Error::other(e.to_string()))?;
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(io::Error::other)?,
        );
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let base = format!("https://{}", listener.local_addr()?);
        let dir = dir.to_path_buf();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (dir, config) = (dir.clone(), config.clone());
                thread::spawn(move || {
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, stream));
                    if let Err(e) = answer(&mut tls, &dir) {
                        eprintln!("bench https server: {e}");
                    }
                });
            }
        });
        Ok((base, ca_file))
    }

    fn answer(
        tls: &mut BufReader<rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>>,
        dir: &Path,
    ) -> io::Result<()> {
        let mut line = String::new();
        tls.read_line(&mut line)?;
        let name = line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .trim_start_matches('/')
            .to_string();
        loop {
            let mut header = String::new();
            if tls.read_line(&mut header)? == 0 || header.trim().is_empty() {
                break;
            }
        }
        let stream = tls.get_mut();
        if let Some(suite) = stream.conn.negotiated_cipher_suite() {
            if let Ok(mut suites) = SUITES.lock() {
                suites.push(format!(
                    "{:?} ({:?})",
                    suite.suite(),
                    suite.version().version
                ));
            }
        }
        let file = if name.contains('/') || name.contains("..") {
            None
        } else {
            File::open(dir.join(&name)).ok()
        };
        let Some(mut file) = file else {
            stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            return Ok(());
        };
        let len = file.metadata()?.len();
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n\
             Connection: close\r\n\r\n"
        )?;
        io::copy(&mut file, stream)?;
        stream.conn.send_close_notify();
        stream.flush()?;
        Ok(())
    }
}
