//! `--many-files N`: an image of N small files (default 1,000,000) through the real server.
//!
//! The archive is generated here, streaming (tar builder → gzip → hasher → file; nothing of
//! it is held in memory), and cached under target/tmp/image-bench/. The release binary is
//! started against the vmrun simulator and asked to pre-warm the image from the loopback
//! HTTP server (`POST /images`, the path a create takes too); the row is the time from the
//! POST to `state: ready` and the server's peak RSS (`VmHWM` of its /proc status), against
//! GNU `tar -xzf` of the same file in the same run. Then `GET /images` and `GET /metrics` are
//! timed, since their cost must not grow with what the images hold.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::common::{self, Bench};
use crate::{append_file as append, HashingWriter};

/// Files per folder: a VM bundle's deepest folders hold thousands.
const PER_DIR: u64 = 1000;
/// The goal of issue 17.
const RSS_TARGET_KIB: u64 = 64 * 1024;

pub fn run(dir: &Path, base: &str, files: u64, keep: bool) -> io::Result<()> {
    common::print_machine();
    let archive = dir.join(format!("files-{files}.tar.gz"));
    let checksum = build(&archive, files)?;
    let compressed = fs::metadata(&archive)?.len();
    println!(
        "\n{files} files in {} folders, tar.gz {:.0} MiB",
        files.div_ceil(PER_DIR),
        compressed as f64 / (1 << 20) as f64
    );

    let tar = reference(dir, &archive, keep)?;
    let root = dir.join("many-files-ours");
    let _ = fs::remove_dir_all(&root);
    let (data, sim) = (root.join("data"), root.join("sim"));
    let server = common::start_server(&data, &sim, &[], &[]);
    let (_, idle_hwm) = server.rss_kib();
    let url = format!(
        "{base}/{}",
        archive.file_name().and_then(|n| n.to_str()).unwrap_or("")
    );
    let body = format!(r#"{{"url":"{url}","checksum":"{checksum}","checksum_type":"sha256"}}"#);
    let ours = crate::prewarm(server.addr, &body, &checksum, Duration::from_millis(250))?;
    let path = format!("/images/{checksum}");
    let (_, hwm) = server.rss_kib();
    println!(
        "  ours:  {ours:.1} s from POST /images to ready (download, sha256, unpack, fsync, \
         measure, publish), server peak RSS {} (idle {})",
        common::mib(hwm),
        common::mib(idle_hwm)
    );
    println!(
        "  tar:   {:.1} s  (`tar -xzf` of the file, no download, hash or fsync), peak RSS {}",
        tar.0,
        common::mib(tar.1)
    );
    println!("  ratio ours/tar: {:.2}", ours / tar.0);
    let (_, entry) = common::get(server.addr, &path)?;
    let entry: serde_json::Value = serde_json::from_slice(&entry).unwrap_or_default();
    println!(
        "  GET /images: size_bytes {}, file_count {}",
        entry["size_bytes"], entry["file_count"]
    );
    for path in ["/images", "/metrics"] {
        let mut times: Vec<Duration> = (0..20)
            .map(|_| {
                let at = Instant::now();
                let _ = common::get(server.addr, path);
                at.elapsed()
            })
            .collect();
        times.sort();
        println!(
            "  GET {path}: median {}, slowest {} (20 calls)",
            common::fmt_duration(times[times.len() / 2]),
            common::fmt_duration(times[times.len() - 1])
        );
    }
    println!(
        "  target: peak RSS <= 64 MiB {}",
        if hwm <= RSS_TARGET_KIB {
            "met"
        } else {
            "MISSED"
        }
    );
    drop(server);
    if !keep {
        fs::remove_dir_all(&root)?;
    }
    Ok(())
}

/// `tar -xzf` of the archive into a fresh folder: seconds and the child's peak RSS.
fn reference(dir: &Path, archive: &Path, keep: bool) -> io::Result<(f64, u64)> {
    let out = dir.join("many-files-tar");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    unsafe { libc::sync() };
    let started = Instant::now();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .current_dir(&out)
        .status()?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(io::Error::other(format!("tar -xzf failed: {status}")));
    }
    // SAFETY: getrusage writes only into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    if !keep {
        fs::remove_dir_all(&out)?;
    }
    Ok((seconds, usage.ru_maxrss as u64))
}

/// Writes the archive (once; reused while it and its checksum exist) and returns its sha256.
fn build(archive: &Path, files: u64) -> io::Result<String> {
    let sum_file = archive.with_extension("sha256");
    if let (true, Ok(sum)) = (archive.is_file(), fs::read_to_string(&sum_file)) {
        return Ok(sum.trim().to_owned());
    }
    println!("building {} ({files} files), once...", archive.display());
    let started = Instant::now();
    let partial = archive.with_extension("partial");
    let mut hashed = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, File::create(&partial)?),
        hasher: Sha256::new(),
    };
    {
        let gz = flate2::write::GzEncoder::new(&mut hashed, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let vmx = b".encoding = \"UTF-8\"\nguestOS = \"darwin19-64\"\n";
        append(&mut tar, "vm/macOS.vmx", vmx)?;
        let mut data = Vec::with_capacity(128);
        for n in 0..files {
            let folder = n / PER_DIR;
            if n % PER_DIR == 0 {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                tar.append_data(&mut header, format!("vm/d{folder:04}/"), io::empty())?;
            }
            data.clear();
            writeln!(
                data,
                "file {n} of {files}: small, as a bundle's plists and logs are"
            )?;
            append(
                &mut tar,
                &format!("vm/d{folder:04}/f{:04}.txt", n % PER_DIR),
                &data,
            )?;
        }
        tar.into_inner()?.finish()?;
    }
    let digest = hashed.publish(&partial, archive)?;
    println!("  built in {:.0} s", started.elapsed().as_secs_f64());
    Ok(digest)
}
