//! One image from its URL to a published gold folder.
//!
//! tar family: body → hasher → (format detected from the first bytes) → decompressor → tar
//! reader → staging folder; then the rest of the body (past the archive's end) through the
//! hasher, compare, rename. zip: body → hasher → part file; compare; unpack the file into a
//! staging folder; rename. Nothing is renamed into `gold/` before the digest matched.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::image::archive::{self, ArchiveFormat, DETECT_LEN};
use crate::image::checksum::HashingReader;
use crate::image::download::{Body, Failure, Fetcher, Location};
use crate::image::error::ImageError;
use crate::image::extract::{self, ExtractError, Limits, Unpacked};
use crate::image::guard::{Guarded, MinRate};
use crate::image::layout::{remove_path, GoldImage, Layout};
use crate::image::progress::{ImagePhase, ProgressCell};
use crate::image::spec::ImageSpec;
use crate::image::vm_format::VmFormat;

/// Bytes moved per read when draining the body or copying a zip to its part file.
const COPY_BUF_LEN: usize = 256 * 1024;
/// What may follow a tar's end: the rest of its last record and the compressor's trailer,
/// with room to spare. More is not part of any archive (a valid tar.gz followed by endless
/// zeros was once read for 16.9 GB).
pub const MAX_TRAILING_BYTES: u64 = 4 << 20;

pub struct Job<'a> {
    pub spec: &'a ImageSpec,
    pub location: &'a Location,
    pub fetcher: &'a Fetcher,
    pub layout: &'a Layout,
    pub limits: Limits,
    pub strict_vmx: bool,
    pub progress: &'a ProgressCell,
    /// Set when nobody waits for the image any more (or DELETE /images asked): the
    /// download, its decompression and its unpacking stop.
    pub cancel: &'a crate::sys::cancel::Cancel,
    pub min_rate: MinRate,
}

/// How an attempt ended short of a gold image.
pub(crate) enum Stop {
    Failed(ImageError),
    /// The server ignored a Range request after a drop: start again from the first byte.
    Restart {
        at: u64,
        status: u16,
    },
}

impl Stop {
    /// The error of a step that never restarts (publishing).
    pub(crate) fn into_error(self) -> ImageError {
        match self {
            Self::Failed(e) => e,
            Self::Restart { at, status } => ImageError::Internal {
                detail: format!("a restart (at byte {at}, HTTP {status}) outside a download"),
            },
        }
    }
}

impl From<ImageError> for Stop {
    fn from(e: ImageError) -> Self {
        Self::Failed(e)
    }
}

/// What one attempt got through, for the closing log line.
#[derive(Default)]
struct Stats {
    bytes: u64,
    resumes: u32,
    format: Option<ArchiveFormat>,
}

/// Downloads, verifies, unpacks and publishes `job.spec`'s image, logging one line when the
/// download starts and one when it ends.
pub fn run(job: &Job) -> Result<GoldImage, ImageError> {
    let started = Instant::now();
    let url = &job.spec.url;
    let mut restarted = false;
    let mut bytes = 0;
    let mut stats;
    let result = loop {
        stats = Stats::default();
        let outcome = attempt(job, &mut stats);
        bytes += stats.bytes;
        match outcome {
            Ok(gold) => break Ok(gold),
            Err(Stop::Restart { at, status }) if !restarted => {
                crate::warn!(
                    "image {url}: the connection dropped at byte {at} and the server answered \
                     the Range request with HTTP {status}, so the download cannot resume; \
                     starting it again from scratch (once)"
                );
                restarted = true;
            }
            Err(Stop::Restart { at, status }) => {
                break Err(ImageError::ResumesExhausted {
                    url: url.clone(),
                    received: at,
                    total: job.progress.snapshot().bytes_total,
                    resumes: stats.resumes,
                    detail: format!(
                        "the server does not support Range requests (HTTP {status}) and the \
                         download had already been restarted once"
                    ),
                });
            }
            Err(Stop::Failed(e)) => break Err(e),
        }
    };
    let elapsed = started.elapsed();
    let restarted = if restarted { ", restarted once" } else { "" };
    match &result {
        Ok(gold) => crate::info!(
            image = &job.spec.checksum, duration_ms = elapsed.as_millis();
            "image download finished: {url} {} {bytes} bytes in {:.1} s ({}), {} resumes\
             {restarted}, gold {}",
            stats.format.map_or("?", ArchiveFormat::as_str),
            elapsed.as_secs_f64(),
            throughput(bytes, elapsed),
            stats.resumes,
            gold.dir.display()
        ),
        Err(e) => crate::warn!(
            image = &job.spec.checksum, code = e.code(), duration_ms = elapsed.as_millis();
            "image download failed: {url} after {bytes} bytes in {:.1} s ({}){restarted}: \
             {}: {e}",
            elapsed.as_secs_f64(),
            throughput(bytes, elapsed),
            e.code()
        ),
    }
    result
}

fn throughput(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return "-".to_owned();
    }
    format!("{:.1} MB/s", bytes as f64 / secs / 1e6)
}

fn attempt(job: &Job, stats: &mut Stats) -> Result<GoldImage, Stop> {
    let spec = job.spec;
    job.progress.set_phase(ImagePhase::Downloading);
    job.progress.set_total(None);
    let body = job.fetcher.open(job.location, &spec.url)?;
    job.progress.set_total(body.total());
    crate::info!(
        image = &spec.checksum;
        "image download started: {} ({}) for {} {}",
        spec.url,
        body.total()
            .map_or_else(|| "size unknown".to_owned(), |t| format!("{t} bytes")),
        spec.checksum_type.as_str(),
        spec.checksum
    );
    let body = Guarded::new(body, job.cancel.clone(), job.min_rate, &spec.url);
    let mut source = HashingReader::new(body, spec.checksum_type, &job.progress.bytes_done);
    let result = fill_and_unpack(job, &mut source, stats);
    stats.bytes = source.get_ref().get_ref().position();
    stats.resumes = source.get_ref().get_ref().resumes();
    let (staging, unpacked) = result?;

    job.progress.set_phase(ImagePhase::Publishing);
    publish(job, staging, &unpacked)
}

type Source<'p> = HashingReader<'p, Guarded<Body>>;

/// Everything up to a verified, unpacked staging folder.
fn fill_and_unpack(
    job: &Job,
    source: &mut Source,
    stats: &mut Stats,
) -> Result<(Staging, Unpacked), Stop> {
    let head = read_head(source).map_err(|e| stream_error(job, source, e))?;
    let format = archive::detect(&head).ok_or_else(|| ImageError::UnsupportedFormat {
        url: job.spec.url.clone(),
        known: archive::unsupported_format_name(&head),
    })?;
    stats.format = Some(format);
    check_free_space(job, format, source.get_ref().get_ref().total())?;

    if format == ArchiveFormat::Zip {
        let part = PartFile::create(job.layout.new_part_file(&job.spec.checksum))?;
        let mut file = &part.file;
        file.write_all(&head)
            .map_err(|e| write_error(&part.path, e))?;
        copy(job, source, &mut file, &part.path)?;
        verify(job, source)?;
        job.progress.set_phase(ImagePhase::Unpacking);
        let staging = Staging::create(job.layout.new_staging_dir(&job.spec.checksum))?;
        // Cancelled mid-unpack, the unpacker's error is only a symptom.
        let unpacked =
            extract::unpack_zip(&part.path, &staging.path, &job.limits).map_err(|e| {
                match job.cancel.is_cancelled() {
                    true => ImageError::Cancelled,
                    false => extract_error(job, e),
                }
            })?;
        drop(part);
        Ok((staging, unpacked))
    } else {
        let staging = Staging::create(job.layout.new_staging_dir(&job.spec.checksum))?;
        let stream = (&head[..]).chain(&mut *source);
        let unpacked =
            extract::unpack_tar(format, stream, &staging.path, &job.limits).map_err(|e| {
                if let Some(why) = guard_stop(job, source) {
                    return why;
                }
                match source.get_ref().get_ref().failure() {
                    Some(failure) => Stop::from_failure(failure),
                    None => extract_error(job, e).into(),
                }
            })?;
        // The hasher must see every byte, including the padding after the tar's end, but
        // only so many of them.
        let mut trailing = (&mut *source).take(MAX_TRAILING_BYTES + 1);
        if drain(job, &mut trailing)? > MAX_TRAILING_BYTES {
            return Err(ImageError::TrailingData {
                url: job.spec.url.clone(),
                limit: MAX_TRAILING_BYTES,
            }
            .into());
        }
        verify(job, source)?;
        Ok((staging, unpacked))
    }
}

/// The archive's first `DETECT_LEN` bytes (fewer only if it is that short).
fn read_head(source: &mut Source) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(DETECT_LEN);
    source
        .by_ref()
        .take(DETECT_LEN as u64)
        .read_to_end(&mut head)?;
    Ok(head)
}

/// Copies the rest of the body into `out`, stopping on the body's failure.
fn copy(job: &Job, source: &mut Source, out: &mut dyn Write, path: &Path) -> Result<(), Stop> {
    let mut buf = vec![0; COPY_BUF_LEN];
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(stream_error(job, source, e)),
        };
        out.write_all(&buf[..n]).map_err(|e| write_error(path, e))?;
    }
}

/// Compares the digest of everything read so far with the expected checksum.
fn verify(job: &Job, source: &Source) -> Result<(), ImageError> {
    job.progress.set_phase(ImagePhase::Verifying);
    let actual = source.hex_digest();
    if actual != job.spec.checksum {
        return Err(ImageError::ChecksumMismatch {
            url: job.spec.url.clone(),
            checksum_type: job.spec.checksum_type,
            expected: job.spec.checksum.clone(),
            actual,
        });
    }
    Ok(())
}

impl Stop {
    fn from_failure(failure: &Failure) -> Self {
        match failure {
            Failure::Fatal(e) => Self::Failed(e.clone()),
            Failure::RangeIgnored { at, status } => Self::Restart {
                at: *at,
                status: *status,
            },
        }
    }
}

/// Reads `reader` to its end; how many bytes it gave.
fn drain(job: &Job, reader: &mut io::Take<&mut Source>) -> Result<u64, Stop> {
    let mut buf = vec![0; COPY_BUF_LEN];
    let mut total = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(stream_error(job, reader.get_ref(), e)),
        };
        total += n as u64;
    }
}

/// The guard's reason, when it stopped the stream (cancelled, too slow): it comes first,
/// whatever error it surfaced as further down.
fn guard_stop(job: &Job, source: &Source) -> Option<Stop> {
    if let Some(why) = source.get_ref().tripped() {
        return Some(Stop::Failed(why.clone()));
    }
    job.cancel
        .is_cancelled()
        .then_some(Stop::Failed(ImageError::Cancelled))
}

/// A read error: the body's own failure (which it always records; the io error is a
/// fallback).
fn stream_error(job: &Job, source: &Source, e: io::Error) -> Stop {
    if let Some(why) = guard_stop(job, source) {
        return why;
    }
    match source.get_ref().get_ref().failure() {
        Some(failure) => Stop::from_failure(failure),
        None => Stop::Failed(ImageError::Connection {
            url: job.spec.url.clone(),
            detail: e.to_string(),
        }),
    }
}

fn extract_error(job: &Job, e: ExtractError) -> ImageError {
    ImageError::Extract {
        url: job.spec.url.clone(),
        source: Arc::new(e),
    }
}

fn write_error(path: &Path, e: io::Error) -> ImageError {
    let disk_full = matches!(e.raw_os_error(), Some(c) if c == libc::ENOSPC || c == libc::EDQUOT);
    if disk_full {
        let dir = path.parent().unwrap_or(path).to_path_buf();
        let available = crate::sys::disk::free_bytes(&dir).unwrap_or(0);
        return ImageError::DiskFull {
            dir,
            needed: None,
            available,
        };
    }
    ImageError::io(path, e)
}

/// Fails at once when the archive cannot fit: a 60 GB download that fails at 59 GB for want
/// of space wastes an hour. Only a floor is known (the unpacked size of a compressed tar is
/// not), so a pass here does not promise success.
fn check_free_space(
    job: &Job,
    format: ArchiveFormat,
    total: Option<u64>,
) -> Result<(), ImageError> {
    let Some(total) = total else {
        return Ok(());
    };
    // A zip is kept whole while it is unpacked next to it, and unpacks to at least its size.
    let needed = if format == ArchiveFormat::Zip {
        total.saturating_mul(2)
    } else {
        total
    };
    let dir = job.layout.gold_root();
    let available = crate::sys::disk::free_bytes(dir).map_err(|e| ImageError::io(dir, e))?;
    if available < needed {
        return Err(ImageError::DiskFull {
            dir: dir.to_path_buf(),
            needed: Some(needed),
            available,
        });
    }
    Ok(())
}

/// Renames the verified staging folder to `gold/<checksum>`.
pub(crate) fn publish(job: &Job, staging: Staging, unpacked: &Unpacked) -> Result<GoldImage, Stop> {
    let gold_dir = job.layout.gold_dir(&job.spec.checksum);
    if job.layout.vm_format() == VmFormat::Vmware {
        check_vmx(job, &staging.path, &staging.path.join(&unpacked.vmx))?;
    }
    crate::sys::fsutil::sync_tree(&staging.path).map_err(|e| ImageError::io(&staging.path, e))?;
    if let Err(e) = fs::rename(&staging.path, &gold_dir) {
        // Another process sharing the data folder may have published the same image.
        if gold_dir.is_dir() {
            crate::warn!(
                "image {}: {} appeared while this copy was unpacked; using it",
                job.spec.url,
                gold_dir.display()
            );
            drop(staging);
            return job
                .layout
                .find_gold(&job.spec.checksum)?
                .ok_or_else(|| ImageError::io(&gold_dir, e).into());
        }
        return Err(ImageError::io(&gold_dir, e).into());
    }
    staging.keep();
    crate::sys::fsutil::sync_dir(job.layout.gold_root())
        .map_err(|e| ImageError::io(job.layout.gold_root(), e))?;
    Ok(GoldImage {
        checksum: job.spec.checksum.clone(),
        config: gold_dir.join(&unpacked.vmx),
        dir: gold_dir,
    })
}

/// The gold VMX against the allow-list, once, before it is published: with
/// `--strict-vmx` a bad image fails here naming every line; without, each clone has the
/// lines removed, and the log says so now.
fn check_vmx(job: &Job, staging: &Path, vmx: &Path) -> Result<(), ImageError> {
    let (_, findings) = crate::hypervisor::vmrun::vmx_policy::inspect_vmx(vmx, staging, None)
        .map_err(|detail| ImageError::VmxUnsafe {
            url: job.spec.url.clone(),
            lines: vec![format!("the VMX cannot be read: {detail}")],
        })?;
    if findings.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = findings.iter().map(|f| f.line()).collect();
    if job.strict_vmx {
        return Err(ImageError::VmxUnsafe {
            url: job.spec.url.clone(),
            lines,
        });
    }
    crate::warn!(
        "image {}: its VMX has {} line(s) that reach outside the VM; they are removed from every clone: {}",
        job.spec.url,
        lines.len(),
        lines.join("; ")
    );
    Ok(())
}

/// A staging folder, removed unless it was published.
pub(crate) struct Staging {
    pub(crate) path: PathBuf,
    keep: bool,
}

impl Staging {
    pub(crate) fn create(path: PathBuf) -> Result<Self, ImageError> {
        fs::create_dir(&path).map_err(|e| ImageError::io(&path, e))?;
        Ok(Self { path, keep: false })
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = remove_path(&self.path, true) {
            crate::warn!("could not remove {}: {e}", self.path.display());
        }
    }
}

/// A zip being downloaded; removed once unpacked or on failure.
struct PartFile {
    path: PathBuf,
    file: File,
}

impl PartFile {
    fn create(path: PathBuf) -> Result<Self, ImageError> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| ImageError::io(&path, e))?;
        Ok(Self { path, file })
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if let Err(e) = remove_path(&self.path, false) {
            crate::warn!("could not remove {}: {e}", self.path.display());
        }
    }
}
