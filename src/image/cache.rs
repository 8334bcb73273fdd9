//! The gold image cache: one download per image however many VMs ask for it at once.
//!
//! Each download runs on a thread of its own, not on the thread of the VM that asked first:
//! that VM may be deleted while it waits, and the others must not lose the download with
//! it. Waiters block on the flight's condition variable, waking a few times a second to
//! report progress and to notice their own cancellation.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::config;
use crate::image::checksum;
use crate::image::download::{Fetcher, Location};
use crate::image::error::ImageError;
use crate::image::extract::Limits;
use crate::image::gold_host::GoldHost;
use crate::image::guard::MinRate;
use crate::image::layout::{GoldImage, Layout};
use crate::image::pipeline::{self, Job};
use crate::image::progress::{ImagePhase, ImageProgress, ProgressCell};
use crate::image::spec::ImageSpec;
use crate::image::vm_format::VmFormat;
use crate::sys::cancel::Cancel;
use crate::sys::sync::LockUnpoisoned;

/// How often a waiter wakes to check its cancel flag.
const WAKE_INTERVAL: Duration = Duration::from_millis(100);
/// How often a waiter reports progress when the phase does not change.
const REPORT_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
pub struct ImageSettings {
    /// `gold/` and `images/` live under it.
    pub data_dir: PathBuf,
    /// The most an archive may unpack to (decompression bombs).
    pub max_unpacked_bytes: u64,
    pub connect_timeout: Duration,
    /// No byte for this long means the transfer has stalled.
    pub read_timeout: Duration,
    /// Range requests after dropped connections, per download.
    pub max_resumes: u32,
    /// Refuse a gold image whose VMX reaches outside the VM (`--strict-vmx`).
    pub strict_vmx: bool,
    /// The roots https:// image servers are verified against.
    pub trust: crate::tls::ClientTrust,
    /// A transfer slower than this over its window fails `image-timeout`.
    pub min_rate: MinRate,
    /// Downloads that run at once; the others wait their turn (0: no limit).
    pub max_downloads: usize,
    /// What a gold image must hold: the host's hypervisor's kind of VM.
    pub vm_format: VmFormat,
}

impl ImageSettings {
    // The settings' defaults, from their one table.
    pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = config::MAX_UNPACKED_BYTES.bytes();
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = config::DOWNLOAD_CONNECT_TIMEOUT.seconds();
    pub const DEFAULT_READ_TIMEOUT: Duration = config::DOWNLOAD_READ_TIMEOUT.seconds();
    pub const DEFAULT_MAX_RESUMES: u32 = config::DOWNLOAD_MAX_RESUMES.count() as u32;
    pub const DEFAULT_MAX_DOWNLOADS: usize = config::MAX_DOWNLOADS.count() as usize;

    /// The defaults, under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            max_unpacked_bytes: Self::DEFAULT_MAX_UNPACKED_BYTES,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            read_timeout: Self::DEFAULT_READ_TIMEOUT,
            max_resumes: Self::DEFAULT_MAX_RESUMES,
            strict_vmx: false,
            trust: crate::tls::ClientTrust::system(),
            min_rate: MinRate::OFF,
            max_downloads: Self::DEFAULT_MAX_DOWNLOADS,
            vm_format: VmFormat::Vmware,
        }
    }
}

/// Send + Sync: share it as an `Arc`.
pub struct ImageCache {
    shared: Arc<Shared>,
}

struct Shared {
    layout: Layout,
    fetcher: Fetcher,
    limits: Limits,
    strict_vmx: bool,
    min_rate: MinRate,
    slots: Slots,
    /// Downloads in progress, by checksum. An entry is removed only after its result is set
    /// (and, on success, its gold folder published), which is what lets `ensure` decide
    /// under this lock whether to join, use the gold folder, or start a download.
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    /// Told about every finished download (metrics, cache eviction); set once at startup.
    on_download: OnceLock<DownloadHook>,
    /// The hypervisor's part in gold images (OCI pulls, its own copies); set once at
    /// startup.
    host: OnceLock<Arc<dyn GoldHost>>,
}

/// Called on the download thread when a download ends: the checksum, how long it took
/// (download, verification, unpacking and publishing), and whether it was published.
pub type DownloadHook = Box<dyn Fn(&str, Duration, bool) + Send + Sync>;

/// One download and everyone waiting for it.
struct Flight {
    progress: ProgressCell,
    outcome: Mutex<Option<Result<GoldImage, ImageError>>>,
    done: Condvar,
    /// Set when the last waiter gave up or DELETE /images asked: the pipeline stops.
    cancel: Cancel,
    /// Callers of `ensure` blocked on it now.
    waiters: AtomicUsize,
}

/// At most `max` downloads at once; the rest wait here, in phase `QueuedDownload`.
struct Slots {
    max: usize,
    busy: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    /// Blocks until a slot is free; `false` when `cancel` came first.
    fn acquire(&self, cancel: &Cancel) -> bool {
        let mut busy = self.busy.lock_unpoisoned();
        while self.max != 0 && *busy >= self.max {
            if cancel.is_cancelled() {
                return false;
            }
            busy = self
                .freed
                .wait_timeout(busy, WAKE_INTERVAL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *busy += 1;
        true
    }

    fn release(&self) {
        let mut busy = self.busy.lock_unpoisoned();
        *busy = busy.saturating_sub(1);
        self.freed.notify_one();
    }
}

impl ImageCache {
    /// Creates `gold/` and `images/` under the data folder and removes what a process that
    /// died mid-download left there.
    pub fn new(settings: ImageSettings) -> Result<Self, ImageError> {
        let layout = Layout::new(&settings.data_dir, settings.vm_format);
        layout.create()?;
        for path in layout.remove_leftovers()? {
            crate::info!("removed {} left by an interrupted download", path.display());
        }
        Ok(Self {
            shared: Arc::new(Shared {
                layout,
                fetcher: Fetcher::new(
                    settings.connect_timeout,
                    settings.read_timeout,
                    settings.max_resumes,
                    &settings.trust,
                ),
                limits: Limits {
                    max_unpacked_bytes: settings.max_unpacked_bytes,
                    cancel: None,
                    vm: settings.vm_format,
                },
                min_rate: settings.min_rate,
                slots: Slots {
                    max: settings.max_downloads,
                    busy: Mutex::new(0),
                    freed: Condvar::new(),
                },
                strict_vmx: settings.strict_vmx,
                flights: Mutex::new(HashMap::new()),
                on_download: OnceLock::new(),
                host: OnceLock::new(),
            }),
        })
    }

    /// Sets the hook told about every finished download; a second call is ignored.
    pub fn set_download_hook(&self, hook: DownloadHook) {
        let _ = self.shared.on_download.set(hook);
    }

    /// Sets the hypervisor's part in gold images; a second call is ignored.
    pub fn set_gold_host(&self, host: Arc<dyn GoldHost>) {
        let _ = self.shared.host.set(host);
    }

    /// The hypervisor's part in gold images, once set.
    pub fn gold_host(&self) -> Option<&Arc<dyn GoldHost>> {
        self.shared.host.get()
    }

    /// `gold/`: where published gold images live, one folder per checksum.
    pub fn gold_root(&self) -> &std::path::Path {
        self.shared.layout.gold_root()
    }

    /// Checksums of the published gold images: the names of `gold/`'s folders that are hex
    /// digests (staging folders and anything else a person put there are not images).
    pub fn gold_checksums(&self) -> Result<Vec<String>, ImageError> {
        let root = self.shared.layout.gold_root();
        let entries = std::fs::read_dir(root).map_err(|e| ImageError::io(root, e))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io(root, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if checksum::is_any_digest(&name) && entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.push(name);
            }
        }
        found.sort();
        Ok(found)
    }

    /// Downloads in progress, by checksum, with their progress.
    pub fn in_flight(&self) -> Vec<(String, ImageProgress)> {
        let flights = self.shared.flights.lock_unpoisoned();
        let mut list: Vec<_> = flights
            .iter()
            .map(|(checksum, flight)| (checksum.clone(), flight.progress.snapshot()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Cancels the download of `checksum` for everyone waiting for it (they fail
    /// `image-cancelled`); false when none is in progress.
    pub fn cancel_download(&self, checksum: &str) -> bool {
        let flights = self.shared.flights.lock_unpoisoned();
        match flights.get(checksum) {
            Some(flight) => {
                crate::info!("image {checksum}: download cancelled by DELETE /images");
                flight.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Takes a published gold image out of the cache: its folder is renamed to a staging
    /// name in one atomic step (so no half-removed image is ever found as published, and a
    /// crash before the removal finishes leaves a leftover that the next start removes)
    /// and the new path is returned for the caller to remove at leisure. `None` when there
    /// is no such image. Whether clones still depend on it is the caller's business.
    pub fn unpublish(&self, checksum: &str) -> Result<Option<PathBuf>, ImageError> {
        if !checksum::is_any_digest(checksum) {
            return Ok(None);
        }
        // Under the flights lock: `join_or_start` decides between a published folder and a
        // new download under it.
        let _flights = self.shared.flights.lock_unpoisoned();
        let dir = self.shared.layout.gold_dir(checksum);
        if !dir.is_dir() {
            return Ok(None);
        }
        let retired = self.shared.layout.new_staging_dir(checksum);
        std::fs::rename(&dir, &retired).map_err(|e| ImageError::io(&dir, e))?;
        Ok(Some(retired))
    }

    /// The published gold image for `checksum`, if any. An existing gold folder (also one
    /// the original Go server left) is trusted without hashing.
    pub fn lookup(&self, checksum: &str) -> Option<GoldImage> {
        if !checksum::is_any_digest(checksum) {
            return None;
        }
        self.shared.layout.find_gold(checksum).ok().flatten()
    }

    /// Blocks until `gold/<spec.checksum>` is published, or fails.
    ///
    /// Concurrent calls for one checksum share one download and its result; different
    /// checksums download in parallel. Returns `Cancelled` within a fraction of a second of
    /// `cancel` being set (the download goes on for the others and for the cache).
    /// `on_progress` is called on the caller's thread about every 250 ms while it waits, and
    /// soon after each phase change.
    pub fn ensure(
        &self,
        spec: &ImageSpec,
        cancel: &Cancel,
        on_progress: &mut dyn FnMut(&ImageProgress),
    ) -> Result<GoldImage, ImageError> {
        if !checksum::is_valid_digest(&spec.checksum, spec.checksum_type) {
            return Err(ImageError::InvalidChecksum {
                checksum: spec.checksum.clone(),
                checksum_type: spec.checksum_type,
            });
        }
        if cancel.is_cancelled() {
            return Err(ImageError::Cancelled);
        }
        if let Some(gold) = self.shared.layout.find_gold(&spec.checksum)? {
            return Ok(gold);
        }
        let flight = match self.join_or_start(spec)? {
            Joined::Flight(flight) => flight,
            Joined::Published => {
                return self
                    .shared
                    .layout
                    .find_gold(&spec.checksum)?
                    .ok_or_else(|| ImageError::Internal {
                        detail: format!("gold image {} vanished", spec.checksum),
                    })
            }
        };
        let result = wait(&flight, cancel, on_progress);
        // The last waiter to give up takes the download with it: nobody wants it.
        if flight.waiters.fetch_sub(1, Ordering::SeqCst) == 1
            && matches!(result, Err(ImageError::Cancelled))
            && !flight.cancel.is_cancelled()
        {
            crate::info!(
                "image {}: no VM waits for it any more; cancelling its download",
                spec.checksum
            );
            flight.cancel.cancel();
        }
        result
    }

    fn join_or_start(&self, spec: &ImageSpec) -> Result<Joined, ImageError> {
        let mut flights = self.shared.flights.lock_unpoisoned();
        if let Some(flight) = flights.get(&spec.checksum) {
            // A cancelled one is on its way out: this caller wants the image, so it gets a
            // download of its own (`fly` removes only its own entry).
            if !flight.cancel.is_cancelled() {
                flight.waiters.fetch_add(1, Ordering::SeqCst);
                return Ok(Joined::Flight(Arc::clone(flight)));
            }
        }
        // Published between the look above and taking the lock.
        if self.shared.layout.gold_dir(&spec.checksum).is_dir() {
            return Ok(Joined::Published);
        }
        let location = Location::parse(&spec.url)?;
        let flight = Arc::new(Flight {
            progress: ProgressCell::new(),
            outcome: Mutex::new(None),
            done: Condvar::new(),
            cancel: Cancel::new(),
            waiters: AtomicUsize::new(1),
        });
        let thread_name = format!("image-{}", &spec.checksum[..12.min(spec.checksum.len())]);
        let (shared, spec_owned, flown) =
            (Arc::clone(&self.shared), spec.clone(), Arc::clone(&flight));
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || fly(&shared, &spec_owned, &location, &flown))
            .map_err(|e| ImageError::Internal {
                detail: format!("could not start a download thread: {e}"),
            })?;
        flights.insert(spec.checksum.clone(), Arc::clone(&flight));
        Ok(Joined::Flight(flight))
    }
}

enum Joined {
    Flight(Arc<Flight>),
    Published,
}

/// The download thread: runs the pipeline, then hands its result to every waiter.
fn fly(shared: &Shared, spec: &ImageSpec, location: &Location, flight: &Flight) {
    let started = Instant::now();
    let job = Job {
        spec,
        location,
        fetcher: &shared.fetcher,
        layout: &shared.layout,
        strict_vmx: shared.strict_vmx,
        limits: Limits {
            cancel: Some(flight.cancel.clone()),
            ..shared.limits.clone()
        },
        progress: &flight.progress,
        cancel: &flight.cancel,
        min_rate: shared.min_rate,
    };
    let result = if shared.slots.acquire(&flight.cancel) {
        let run = || match location {
            Location::Oci(reference) => {
                crate::image::oci::run(&job, reference, shared.host.get().map(|h| h.as_ref()))
            }
            _ => pipeline::run(&job),
        };
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|_| {
                Err(ImageError::Internal {
                    detail: format!("the download thread for {} panicked", spec.url),
                })
            });
        shared.slots.release();
        result
    } else {
        Err(ImageError::Cancelled)
    };
    let published = result.is_ok();
    // Result first, then out of the map, both under the map's lock: a caller that finds no
    // flight then finds either the gold folder or nothing (and starts a new download).
    let mut flights = shared.flights.lock_unpoisoned();
    *flight.outcome.lock_unpoisoned() = Some(result);
    if flights
        .get(&spec.checksum)
        .is_some_and(|f| std::ptr::eq(Arc::as_ptr(f), flight))
    {
        flights.remove(&spec.checksum);
    }
    drop(flights);
    flight.done.notify_all();
    if let Some(hook) = shared.on_download.get() {
        hook(&spec.checksum, started.elapsed(), published);
    }
}

fn wait(
    flight: &Flight,
    cancel: &Cancel,
    on_progress: &mut dyn FnMut(&ImageProgress),
) -> Result<GoldImage, ImageError> {
    let mut last_phase: Option<ImagePhase> = None;
    let mut last_report = Instant::now();
    loop {
        {
            let outcome = flight.outcome.lock_unpoisoned();
            if let Some(result) = outcome.as_ref() {
                return result.clone();
            }
            let (outcome, _) = flight
                .done
                .wait_timeout(outcome, WAKE_INTERVAL)
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(result) = outcome.as_ref() {
                return result.clone();
            }
        }
        if cancel.is_cancelled() {
            return Err(ImageError::Cancelled);
        }
        let progress = flight.progress.snapshot();
        if last_phase != Some(progress.phase) || last_report.elapsed() >= REPORT_INTERVAL {
            on_progress(&progress);
            last_phase = Some(progress.phase);
            last_report = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUM: &str = "5cf00d380e28d02f30efaceafef7c7c8bdedae33";

    #[test]
    fn lists_and_unpublishes_gold_images_only() {
        let data =
            std::env::temp_dir().join(format!("osxb-cache-unpublish-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let cache = ImageCache::new(ImageSettings::new(&data)).unwrap();
        let gold = cache.gold_root().join(SUM);
        std::fs::create_dir_all(&gold).unwrap();
        std::fs::write(gold.join("gold.vmx"), "x").unwrap();
        std::fs::create_dir_all(cache.gold_root().join("not-a-digest")).unwrap();
        std::fs::write(
            cache.gold_root().join("0".repeat(40)),
            "a file, not a folder",
        )
        .unwrap();
        assert_eq!(cache.gold_checksums().unwrap(), vec![SUM.to_string()]);
        assert!(cache.lookup(SUM).is_some());

        let retired = cache.unpublish(SUM).unwrap().unwrap();
        assert!(!gold.exists());
        assert!(retired.join("gold.vmx").exists());
        assert!(cache.lookup(SUM).is_none());
        assert!(cache.gold_checksums().unwrap().is_empty());
        assert_eq!(cache.unpublish(SUM).unwrap(), None);
        assert_eq!(cache.unpublish("../vms").unwrap(), None);

        // A crash before the retired folder was removed: the next start removes it.
        drop(cache);
        let _cache = ImageCache::new(ImageSettings::new(&data)).unwrap();
        assert!(!retired.exists());
        std::fs::remove_dir_all(&data).unwrap();
    }
}
