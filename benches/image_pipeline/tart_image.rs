//! `--tart`: a tart gold image through the real server on a tart host (issue 26): a VM
//! folder whose `disk.img` is 8 GiB apparent and `--tart-data-mib` (default 512) of data,
//! archived as the README tells operators to (`tar --sparse -czf`, GNU tar), served over
//! loopback HTTP and pre-warmed (`POST /images`, the path a create takes too) by the release binary
//! running `--hypervisor tart` against the tart simulator.
//!
//! Printed: the time from the POST to `ready` and the server's peak RSS (`VmHWM`), the
//! published `disk.img`'s blocks on disk against its data and its apparent size; and, in
//! the same run, the reference: GNU tar unpacking the same download while `sha256sum` reads
//! it (`curl -s URL | tee >(sha256sum) | tar -xzf -`), its time and its `disk.img` on disk. The
//! archive is built once and kept under target/tmp/image-bench/.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::common::{self, Bench, Hv};
use crate::{disk_block, Rng, BLOCK, MIB};

const APPARENT: u64 = 8 << 30;
/// The data comes in runs of this size spread over the disk, as a file system's extents.
const RUN: u64 = MIB;
const RSS_TARGET_KIB: u64 = 64 * 1024;
const VM: &str = "macos.tartvm";

pub fn run(dir: &Path, base: &str, data_mib: u64, keep: bool) -> io::Result<()> {
    common::print_machine();
    let archive = dir.join(format!("tart-8g-{data_mib}m.tar.gz"));
    let checksum = build(dir, &archive, data_mib)?;
    let data = data_mib * MIB;
    println!(
        "\ntart VM folder: disk.img {} GiB apparent, {data_mib} MiB of data written in 1 MiB \
         runs (disk-like: 45% of its 64 KiB blocks zero); `tar --sparse -czf` {:.0} MiB",
        APPARENT >> 30,
        fs::metadata(&archive)?.len() as f64 / MIB as f64
    );

    let url = format!(
        "{base}/{}",
        archive.file_name().and_then(|n| n.to_str()).unwrap_or("")
    );
    let (tar_secs, tar_disk) = reference(dir, &url, keep)?;
    let root = dir.join("tart-ours");
    let _ = fs::remove_dir_all(&root);
    let server = common::start_server_on(Hv::Tart, &root, &[], &[]);
    let (_, idle_hwm) = server.rss_kib();
    let body = format!(r#"{{"url":"{url}","checksum":"{checksum}","checksum_type":"sha256"}}"#);
    let ours = crate::prewarm(server.addr, &body, &checksum, Duration::from_millis(100))?;
    let (_, hwm) = server.rss_kib();
    let disk = root
        .join("data/gold")
        .join(&checksum)
        .join(VM)
        .join("disk.img");
    let meta = fs::metadata(&disk)?;
    let ours_disk = meta.blocks() * 512;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "  ours:  {ours:.1} s from POST /images to ready (download, sha256, unpack, fsync, \
         publish), server peak RSS {} (idle {})",
        common::mib(hwm),
        common::mib(idle_hwm)
    );
    println!(
        "         disk.img {:.2} GiB on disk for {:.2} GiB of data ({:.2}x), {:.0} GiB apparent",
        gib(ours_disk),
        gib(data),
        ours_disk as f64 / data as f64,
        gib(meta.len())
    );
    println!(
        "  tar:   {tar_secs:.1} s  (`curl -s URL | tee >(sha256sum) | tar -xzf -`, no fsync), \
         disk.img {:.2} GiB on disk ({:.2}x the data)",
        gib(tar_disk),
        tar_disk as f64 / data as f64
    );
    println!(
        "  ratios ours/tar: time {:.2}, on disk {:.2}",
        ours / tar_secs,
        ours_disk as f64 / tar_disk as f64
    );
    let close = ours_disk <= data + data / 10 + 16 * MIB;
    println!(
        "  targets: peak RSS < 64 MiB {}, disk.img on disk within 10% of its data {}",
        if hwm < RSS_TARGET_KIB {
            "met"
        } else {
            "MISSED"
        },
        if close { "met" } else { "MISSED" }
    );
    drop(server);
    if !keep {
        fs::remove_dir_all(&root)?;
    }
    Ok(())
}

/// `curl -s URL | tee >(sha256sum >/dev/null) | tar -xzf -` (GNU tar): seconds, and the
/// blocks of its `disk.img`.
fn reference(dir: &Path, url: &str, keep: bool) -> io::Result<(f64, u64)> {
    let seconds = crate::run_shell(dir, url, "-xzf", true, None)?;
    let out = dir.join("shell");
    let blocks = fs::metadata(out.join(VM).join("disk.img"))?.blocks() * 512;
    if !keep {
        fs::remove_dir_all(&out)?;
    }
    Ok((seconds, blocks))
}

/// Writes the VM folder and archives it with GNU tar (once; reused while it and its
/// checksum exist); returns the archive's sha256.
fn build(dir: &Path, archive: &Path, data_mib: u64) -> io::Result<String> {
    let sum_file = archive.with_extension("sha256");
    if let (true, Ok(sum)) = (archive.is_file(), fs::read_to_string(&sum_file)) {
        return Ok(sum.trim().to_owned());
    }
    println!(
        "building {} ({data_mib} MiB of data), once...",
        archive.display()
    );
    let started = Instant::now();
    let src = dir.join("tart-src");
    let _ = fs::remove_dir_all(&src);
    let vm = src.join(VM);
    fs::create_dir_all(&vm)?;
    fs::write(
        vm.join("config.json"),
        r#"{"version": 1, "os": "darwin", "arch": "arm64", "cpuCount": 4, "cpuCountMin": 2,
 "memorySize": 8589934592, "memorySizeMin": 4294967296, "macAddress": "aa:bb:cc:00:00:01",
 "display": {"width": 1024, "height": 768}, "diskFormat": "raw"}"#,
    )?;
    fs::write(vm.join("nvram.bin"), vec![7u8; 128 << 10])?;
    let disk = File::create(vm.join("disk.img"))?;
    disk.set_len(APPARENT)?;
    let runs = (data_mib * MIB).div_ceil(RUN);
    let stride = APPARENT / runs.max(1);
    let mut rng = Rng(0x7a27_5eed_0bad_cafe);
    let mut run = vec![0u8; RUN as usize];
    for n in 0..runs {
        for block in run.chunks_mut(BLOCK) {
            disk_block(&mut rng, block);
        }
        // A run of data never ends in zeros the archive would make a hole of.
        run[RUN as usize - 1] = 1;
        disk.write_all_at(&run, n * stride)?;
    }
    drop(disk);
    let partial = archive.with_extension("partial");
    let status = Command::new("tar")
        .args(["--sparse", "-czf"])
        .arg(&partial)
        .arg(VM)
        .current_dir(&src)
        .status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "tar --sparse -czf failed: {status}"
        )));
    }
    fs::remove_dir_all(&src)?;
    let mut hasher = Sha256::new();
    let mut file = File::open(&partial)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    fs::rename(&partial, archive)?;
    fs::write(&sum_file, format!("{digest}\n"))?;
    println!("  built in {:.0} s", started.elapsed().as_secs_f64());
    Ok(digest)
}
