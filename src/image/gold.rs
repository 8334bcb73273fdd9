//! The gold image cache as an operator sees it: what is cached, how big, which VMs depend
//! on each image and when each was last used; pre-warming before demand; removal; and
//! eviction of the least recently used images no VM needs, when the cache is over its
//! budget or the disk under its floor.
//!
//! Linked clones read their parent's disk for as long as they live: an image is never
//! removed while a VM record names it. The check and the removal happen under the
//! admission lock that creates take, so a create either comes first (its record then
//! protects the image) or after (it finds no image and downloads it again). Where clones
//! are copies (tart), only a VM not cloned yet needs its image, and the hypervisor's own
//! copy of the gold (tart's `osxb-gold-<checksum>`) goes with the image.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, UNIX_EPOCH};

use crate::vm::VmId;
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use crate::hypervisor::vmrun::dependants::{self, Dependant};
use crate::image::gold_locks::GoldLocks;
use crate::image::originals::{self, OriginalArchive};
use crate::image::{is_any_digest, GoldImage, ImageCache, ImageProgress, ImageSpec};
use crate::sys::cancel::Cancel;
use crate::sys::sync::LockUnpoisoned;
use crate::vm::capacity::{self, Limits, Shortage};
use crate::vm::model::{Phase, Status};
use crate::vm::{Vm, VmError, VmStore};

/// `gold/<checksum>/osx-builder-image.json`: where the image came from and when a VM was
/// last cloned from it. Inside the image's folder so that it goes with it.
pub const USAGE_FILE: &str = "osx-builder-image.json";

/// What the gold cache refuses; the service turns each into its own error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoldError {
    ImageNotFound,
    /// VMs depend on the image, or it is being downloaded: why.
    ImageInUse(String),
    /// A pre-warm below the free-disk floor.
    CapacityExhausted(Shortage),
    TooManyPrewarms {
        limit: usize,
    },
    Internal(String),
}

impl std::fmt::Display for GoldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ImageNotFound => write!(f, "no such gold image"),
            Self::ImageInUse(why) | Self::Internal(why) => write!(f, "{why}"),
            Self::CapacityExhausted(shortage) => write!(f, "{shortage}"),
            Self::TooManyPrewarms { limit } => write!(f, "{limit} pre-warm downloads run already"),
        }
    }
}

type Error = GoldError;

/// Pre-warm downloads at once. Each is a thread and a multi-gigabyte transfer; a client
/// asking for dozens is more likely a bug than a plan.
pub const MAX_PREWARMS: usize = 4;

#[derive(Clone, Copy, Debug)]
pub struct GoldSettings {
    /// Bytes the gold images may take; 0 for no budget.
    pub budget: u64,
    /// The free-disk floor, also a reason to evict; 0 for none.
    pub min_free_disk: u64,
}

/// One image as `GET /images` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ImageEntry {
    pub checksum: String,
    /// `ready` (published), `downloading` or `failed` (a pre-warm that did not succeed).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<String>,
    /// Bytes on disk (the unpacked gold VM).
    pub size_bytes: u64,
    /// Regular files in it, when measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_count: Option<u64>,
    /// VMs whose records name this image: on VMware linked clones that depend on it; on
    /// tart copies of it, which need it only until they are cloned.
    pub vms: Vec<VmId>,
    /// Folders under `vms/` whose disks read this image, found from their `.vmdk`
    /// descriptors (VM ids, or the folder for one no id names): what keeps it on disk.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub linked_clones: Vec<String>,
    /// Bytes of the original server's archive of this image in `images/<checksum>/`, never
    /// read again once the gold image exists: removed under the budget or the disk floor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reclaimable_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<ImageProgress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<VmError>,
    /// Set while every clone of this image fails on a file that holds its gold VM (a
    /// lock of a live process, or one whose owner is unknown): a person must act.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<crate::image::gold_locks::Blocked>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Usage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checksum_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_used: Option<String>,
    /// Bytes and regular files of the image, measured once (after its publication, or the
    /// first time it is asked for): walking a million files on every `GET /images` took
    /// seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file_count: Option<u64>,
}

/// A pre-warm that is running or that failed (kept so that `GET /images` can say why).
enum Prewarm {
    Running(ImageSpec),
    Failed(ImageSpec, VmError),
}

/// VMs by the image they were cloned from.
struct Users {
    /// Every record naming each image (`GET /images`' `vms`).
    by_checksum: HashMap<String, Vec<VmId>>,
    /// The records that need each image: all of them when clones read their gold for life,
    /// else the VMs not cloned yet.
    depending: HashMap<String, Vec<VmId>>,
    /// Clones read their gold for as long as they live (VMware's linked clones).
    clones_need_gold: bool,
    /// Records without an image whose disks name no gold image either: their parent is
    /// unknown, so every image may be theirs.
    unknown: Vec<VmId>,
    /// What the disks under `vms/` read, whoever made them.
    on_disk: BTreeMap<String, BTreeSet<Dependant>>,
}

impl Users {
    /// Everything that keeps `checksum` on disk, by name.
    fn dependants(&self, checksum: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .depending
            .get(checksum)
            .into_iter()
            .flatten()
            .chain(&self.unknown)
            .map(VmId::to_string)
            .collect();
        for dependant in self.on_disk.get(checksum).into_iter().flatten() {
            let name = dependant.name();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }
}

pub struct GoldCache {
    images: Arc<ImageCache>,
    store: Arc<VmStore>,
    locks: Arc<GoldLocks>,
    admission: Arc<Mutex<()>>,
    data_dir: PathBuf,
    settings: GoldSettings,
    prewarms: Mutex<HashMap<String, Prewarm>>,
    wake: Sender<()>,
    woken: Receiver<()>,
    /// Images eviction kept for the VMs that need them, reported once each.
    kept: Mutex<HashSet<String>>,
}

/// What a pre-warm request did.
pub enum Prewarmed {
    /// The image is cached already.
    Ready(ImageEntry),
    /// A download runs (started now or before).
    Started(ImageEntry),
}

impl GoldCache {
    pub fn new(
        images: Arc<ImageCache>,
        store: Arc<VmStore>,
        locks: Arc<GoldLocks>,
        admission: Arc<Mutex<()>>,
        data_dir: PathBuf,
        settings: GoldSettings,
    ) -> Self {
        let (wake, woken) = crossbeam_channel::bounded(1);
        Self {
            images,
            store,
            locks,
            admission,
            data_dir,
            settings,
            prewarms: Mutex::new(HashMap::new()),
            wake,
            woken,
            kept: Mutex::new(HashSet::new()),
        }
    }

    /// Every cached image, every download in flight and every failed pre-warm, by checksum.
    pub fn list(&self) -> Vec<ImageEntry> {
        let users = self.users();
        let mut entries: BTreeMap<String, ImageEntry> = BTreeMap::new();
        for checksum in self.published() {
            let entry = self.ready_entry(&checksum, &users);
            entries.insert(checksum, entry);
        }
        for (checksum, progress) in self.images.in_flight() {
            entries
                .entry(checksum.clone())
                .or_insert_with(|| self.downloading_entry(&checksum, progress, &users));
        }
        for (checksum, prewarm) in self.prewarms.lock_unpoisoned().iter() {
            if let Prewarm::Failed(spec, error) = prewarm {
                entries
                    .entry(checksum.clone())
                    .or_insert_with(|| ImageEntry {
                        error: Some(error.clone()),
                        ..blank(checksum, "failed", Some(spec), &users)
                    });
            }
        }
        entries.into_values().collect()
    }

    /// One image, as in [`list`](Self::list).
    pub fn get(&self, checksum: &str) -> Result<ImageEntry, Error> {
        self.list()
            .into_iter()
            .find(|entry| entry.checksum == checksum)
            .ok_or(Error::ImageNotFound)
    }

    /// Gold images that cannot be cloned until a person acts, by checksum.
    pub fn blocked(&self) -> Vec<(String, crate::image::gold_locks::Blocked)> {
        self.locks.blocked()
    }

    /// At start, before any gold is cloned, prepared or pulled, what a crash (a kill, a
    /// power loss) left of the gold images goes: what dead processes left holding a gold VM
    /// (VMware's lock folders; live locks stay), and the hypervisor's own copies of images no
    /// longer published (tart's `osxb-gold-*` VMs). When the published golds cannot be listed
    /// nothing goes: every copy could be one of them.
    pub fn recover_after_crash(&self) {
        let Some(host) = self.images.gold_host() else {
            return;
        };
        let published = match self.images.gold_checksums() {
            Ok(published) => published,
            Err(err) => {
                crate::warn!(
                    "cannot list the gold images, so what a crash left of them (dead locks, the hypervisor's copies of removed ones) stays until a later start: {err}"
                );
                return;
            }
        };
        for checksum in &published {
            let Some(gold) = self.images.lookup(checksum) else {
                continue;
            };
            for (lock, why) in host.remove_dead_locks(&gold) {
                crate::warn!(
                    "gold image {checksum}: lock {} left in place: {why}",
                    lock.display()
                );
            }
        }
        host.remove_stray_golds(&published);
    }

    /// The image published under `checksum`, if it is cached.
    pub fn cached(&self, checksum: &str) -> Option<GoldImage> {
        self.images.lookup(checksum)
    }

    /// Bytes taken by the published gold images.
    pub fn total_bytes(&self) -> u64 {
        self.published()
            .iter()
            .map(|checksum| size_of(&self.images.gold_root().join(checksum)))
            .sum()
    }

    /// Records that a VM is being cloned from `gold` (for least-recently-used eviction) and
    /// where the image came from (for `GET /images`).
    pub fn touch(&self, gold: &GoldImage, spec: &ImageSpec) {
        let written = update_usage(&gold.dir, |usage| {
            usage.url = Some(spec.url.clone());
            usage.checksum_type = Some(spec.checksum_type.as_str().to_string());
            usage.last_used = Some(crate::sys::time::rfc3339_now());
        });
        if let Err(err) = written {
            // Only the eviction order suffers: the folder's time stands in.
            crate::warn!("cannot record the use of {}: {err}", gold.dir.display());
        }
    }

    /// Downloads an image in the background, through the same single flight as creates.
    /// Refused below the free-disk floor, and when [`MAX_PREWARMS`] run already.
    pub fn prewarm(self: &Arc<Self>, spec: ImageSpec) -> Result<Prewarmed, Error> {
        if let Some(gold) = self.images.lookup(&spec.checksum) {
            // Asking for it is a sign it is wanted: it moves to the back of the eviction queue.
            self.touch(&gold, &spec);
            return Ok(Prewarmed::Ready(self.get(&spec.checksum)?));
        }
        capacity::check_disk(self.limits(), &self.data_dir).map_err(Error::CapacityExhausted)?;
        let checksum = spec.checksum.clone();
        {
            let mut prewarms = self.prewarms.lock_unpoisoned();
            let running = prewarms
                .values()
                .filter(|p| matches!(p, Prewarm::Running(_)))
                .count();
            match prewarms.get(&checksum) {
                Some(Prewarm::Running(_)) => {}
                _ if running >= MAX_PREWARMS => {
                    return Err(Error::TooManyPrewarms {
                        limit: MAX_PREWARMS,
                    })
                }
                _ => {
                    let cache = self.clone();
                    let job = spec.clone();
                    thread::Builder::new()
                        .name(format!("prewarm-{}", &checksum[..12.min(checksum.len())]))
                        .spawn(move || cache.run_prewarm(job))
                        .map_err(|e| {
                            Error::Internal(format!("cannot start a download thread: {e}"))
                        })?;
                    prewarms.insert(checksum.clone(), Prewarm::Running(spec.clone()));
                    crate::info!("pre-warming gold image {checksum} from {}", spec.url);
                }
            }
        }
        let users = self.users();
        let progress = self
            .images
            .in_flight()
            .into_iter()
            .find(|(c, _)| *c == checksum)
            .map(|(_, p)| p);
        Ok(Prewarmed::Started(match progress {
            Some(progress) => self.downloading_entry(&checksum, progress, &users),
            None => blank(&checksum, "downloading", Some(&spec), &users),
        }))
    }

    fn run_prewarm(&self, spec: ImageSpec) {
        let result = self.images.ensure(&spec, &Cancel::new(), &mut |_| {});
        let mut prewarms = self.prewarms.lock_unpoisoned();
        match result {
            Ok(gold) => {
                self.touch(&gold, &spec);
                prewarms.remove(&spec.checksum);
                crate::info!("gold image {} pre-warmed", spec.checksum);
            }
            Err(err) => {
                crate::warn!(
                    "pre-warming gold image {} from {} failed: {}: {err}",
                    spec.checksum,
                    spec.url,
                    err.code()
                );
                let error = VmError {
                    code: err.code().to_string(),
                    message: err.to_string(),
                    log_tail: None,
                };
                prewarms.insert(spec.checksum.clone(), Prewarm::Failed(spec, error));
            }
        }
    }

    /// `DELETE /images/:checksum`: refused while any VM depends on the image; a download in
    /// progress is cancelled.
    pub fn remove(&self, checksum: &str) -> Result<(), Error> {
        if !is_any_digest(checksum) {
            return Err(Error::ImageNotFound);
        }
        let retired = {
            let _admission = self.admission.lock_unpoisoned();
            let published = self.images.gold_root().join(checksum).is_dir();
            if !published {
                // A failed pre-warm is forgotten; anything else is unknown.
                let mut prewarms = self.prewarms.lock_unpoisoned();
                return match prewarms.get(checksum) {
                    Some(Prewarm::Failed(..)) => {
                        prewarms.remove(checksum);
                        Ok(())
                    }
                    // Its waiters (VMs, the pre-warm) fail `image-cancelled`.
                    _ if self.images.cancel_download(checksum) => Ok(()),
                    Some(Prewarm::Running(_)) => Err(downloading(checksum)),
                    None => Err(Error::ImageNotFound),
                };
            }
            if self.images.in_flight().iter().any(|(c, _)| c == checksum) {
                return Err(downloading(checksum));
            }
            let users = self.users();
            let dependent = users.dependants(checksum);
            if !dependent.is_empty() {
                return Err(Error::ImageInUse(in_use_message(
                    checksum,
                    &dependent,
                    users.clones_need_gold,
                )));
            }
            self.prewarms.lock_unpoisoned().remove(checksum);
            match self.unpublish(checksum)? {
                Some(retired) => retired,
                None => return Err(Error::ImageNotFound),
            }
        };
        let size = size_of(&retired);
        remove_retired(&retired);
        crate::info!("gold image {checksum} deleted ({size} bytes)");
        Ok(())
    }

    /// Evicts least-recently-used images that no VM needs while the cache is over its
    /// budget or the disk under its floor; returns their checksums.
    pub fn evict(&self) -> Vec<String> {
        let GoldSettings {
            budget,
            min_free_disk: floor,
        } = self.settings;
        if budget == 0 && floor == 0 {
            return Vec::new();
        }
        let mut evicted = Vec::new();
        let mut retired = Vec::new();
        {
            let _admission = self.admission.lock_unpoisoned();
            let users = self.users();
            if !users.unknown.is_empty() {
                crate::warn!(
                    "no gold image is evicted while VMs of unknown image exist ({}): any image may be their parent",
                    ids(&users.unknown)
                );
                return evicted;
            }
            let in_flight: Vec<String> = self
                .images
                .in_flight()
                .into_iter()
                .map(|(c, _)| c)
                .collect();
            let mut images: Vec<(String, u64, i64)> = self
                .published()
                .into_iter()
                .map(|checksum| {
                    let dir = self.images.gold_root().join(&checksum);
                    let last_used = last_used_ms(&dir);
                    (checksum, size_of(&dir), last_used)
                })
                .collect();
            let mut total: u64 = images.iter().map(|(_, size, _)| size).sum();
            let mut freed = self.evict_original_archives(&images, total);
            images.retain(|(checksum, _, _)| {
                !in_flight.contains(checksum) && !self.kept_for_dependants(checksum, &users)
            });
            images.sort_by_key(|(_, _, last_used)| *last_used);
            for (checksum, size, _) in images {
                let Some(reason) = self.over_limit(total, freed, "") else {
                    break;
                };
                match self.unpublish(&checksum) {
                    Ok(Some(path)) => {
                        crate::info!("evicting gold image {checksum} ({size} bytes), needed by no VM: {reason}");
                        retired.push(path);
                        evicted.push(checksum);
                        total = total.saturating_sub(size);
                        freed += size;
                    }
                    Ok(None) => {}
                    Err(err) => crate::warn!("cannot evict gold image {checksum}: {err}"),
                }
            }
        }
        // Outside the lock: removing tens of gigabytes must not hold up creates.
        for path in retired {
            remove_retired(&path);
        }
        evicted
    }

    /// Why the cache must shrink, when it must: `total` bytes held (`counted` says what they
    /// include) over the budget, or the disk (plus `freed`, not yet returned by removals in
    /// flight) under the floor.
    fn over_limit(&self, total: u64, freed: u64, counted: &str) -> Option<String> {
        let GoldSettings {
            budget,
            min_free_disk: floor,
        } = self.settings;
        let free = crate::sys::disk::free_bytes(&self.data_dir).map(|f| f + freed);
        if budget > 0 && total > budget {
            Some(format!(
                "the cache holds {total} bytes{counted}, over its budget of {budget} (--cache-budget)"
            ))
        } else if floor > 0 && free.as_ref().is_ok_and(|free| *free < floor) {
            Some(format!(
                "the disk has {} bytes free, under the floor of {floor} (--min-free-disk)",
                free.unwrap_or(0)
            ))
        } else {
            None
        }
    }

    /// The original server's archives of published images go first: nothing reads them
    /// again. Counted in the budget with the gold images; returns the bytes freed.
    fn evict_original_archives(&self, golds: &[(String, u64, i64)], gold_total: u64) -> u64 {
        let archives: Vec<OriginalArchive> = self
            .original_archives()
            .into_iter()
            .filter(|a| golds.iter().any(|(checksum, _, _)| *checksum == a.checksum))
            .collect();
        let mut total = gold_total + archives.iter().map(|a| a.bytes).sum::<u64>();
        let mut freed = 0;
        for archive in archives {
            let Some(reason) =
                self.over_limit(total, freed, " with the original server's archives")
            else {
                break;
            };
            match std::fs::remove_dir_all(&archive.dir) {
                Ok(()) => {
                    crate::info!(
                        "removed the original server's archive {} ({} bytes; its gold image {} exists, so it is never read again): {reason}",
                        archive.dir.display(),
                        archive.bytes,
                        archive.checksum
                    );
                    total = total.saturating_sub(archive.bytes);
                    freed += archive.bytes;
                }
                Err(err) => crate::warn!("cannot remove {}: {err}", archive.dir.display()),
            }
        }
        freed
    }

    /// True when VMs need `checksum` (by their records or their disks); says so in the log
    /// the first time.
    fn kept_for_dependants(&self, checksum: &str, users: &Users) -> bool {
        let dependants = users.dependants(checksum);
        if dependants.is_empty() {
            self.kept.lock_unpoisoned().remove(checksum);
            return false;
        }
        if self.kept.lock_unpoisoned().insert(checksum.to_string()) {
            let why = if users.clones_need_gold {
                "linked clones read it"
            } else {
                "VMs are still to be cloned from it"
            };
            crate::info!(
                "gold image {checksum} is not evicted: {why} ({})",
                names(&dependants)
            );
        }
        true
    }

    fn original_archives(&self) -> Vec<OriginalArchive> {
        originals::list(&self.data_dir.join("images"))
    }

    /// Told by the image cache when a download ends: a published image replaces any failed
    /// pre-warm of it, and may put the cache over its budget.
    pub fn download_finished(&self, checksum: &str, published: bool) {
        if published {
            // Measured here, on the download thread, once: never again by a request.
            size_of(&self.images.gold_root().join(checksum));
            let mut prewarms = self.prewarms.lock_unpoisoned();
            if matches!(prewarms.get(checksum), Some(Prewarm::Failed(..))) {
                prewarms.remove(checksum);
            }
            drop(prewarms);
            self.request_eviction();
        }
    }

    /// Asks the housekeeper to run an eviction soon (after a download, say).
    pub fn request_eviction(&self) {
        let _ = self.wake.try_send(());
    }

    /// Evicts after each request and every `interval`, on a thread of its own.
    pub fn start_housekeeper(self: &Arc<Self>, interval: Duration) {
        let cache = self.clone();
        let spawned = thread::Builder::new()
            .name("gold-cache".into())
            .spawn(move || loop {
                let _ = cache.woken.recv_timeout(interval);
                cache.evict();
            });
        if let Err(err) = spawned {
            crate::error!("cannot start the gold cache housekeeper: {err}; images are not evicted");
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_vms: 0,
            min_free_disk: self.settings.min_free_disk,
        }
    }

    /// Takes the image out under its gold lock (no clone of it is running then, and the
    /// next one makes the base snapshot afresh on a new download). The hypervisor's own
    /// copy goes first: should its removal fail, the image stays whole.
    fn unpublish(&self, checksum: &str) -> Result<Option<PathBuf>, Error> {
        let gold_lock = self.locks.get(checksum);
        let mut state = gold_lock.lock_unpoisoned();
        let published = self.images.gold_root().join(checksum).is_dir();
        if let Some(host) = self.images.gold_host().filter(|_| published) {
            state.prepared = false;
            host.remove_gold(checksum).map_err(|e| {
                Error::Internal(format!(
                    "cannot remove the hypervisor's copy of gold image {checksum}: {e}"
                ))
            })?;
        }
        let retired = self
            .images
            .unpublish(checksum)
            .map_err(|e| Error::Internal(format!("cannot remove gold image {checksum}: {e}")))?;
        state.prepared = false;
        Ok(retired)
    }

    fn published(&self) -> Vec<String> {
        self.images.gold_checksums().unwrap_or_else(|err| {
            crate::warn!("cannot list the gold images: {err}");
            Vec::new()
        })
    }

    fn users(&self) -> Users {
        let on_disk = dependants::scan(self.store.root(), self.images.gold_root());
        let clones_need_gold = self
            .images
            .gold_host()
            .is_none_or(|host| host.clones_need_gold());
        let mut users = Users {
            by_checksum: HashMap::new(),
            depending: HashMap::new(),
            clones_need_gold,
            unknown: Vec::new(),
            on_disk,
        };
        for vm in self.store.records() {
            let needs = clones_need_gold || not_cloned_yet(&vm);
            match &vm.image {
                Some(image) => {
                    users
                        .by_checksum
                        .entry(image.checksum.clone())
                        .or_default()
                        .push(vm.id);
                    if needs {
                        users
                            .depending
                            .entry(image.checksum.clone())
                            .or_default()
                            .push(vm.id);
                    }
                }
                // A copy of unknown origin needs no image.
                None if clones_need_gold => users.unknown.push(vm.id),
                None => {}
            }
        }
        for list in users
            .by_checksum
            .values_mut()
            .chain(users.depending.values_mut())
        {
            list.sort();
        }
        // A record without an image whose disks name their gold image is known after all.
        let placed: HashSet<VmId> = users
            .on_disk
            .values()
            .flatten()
            .filter_map(|d| d.id)
            .collect();
        users.unknown.retain(|id| !placed.contains(id));
        users
    }

    fn ready_entry(&self, checksum: &str, users: &Users) -> ImageEntry {
        let dir = self.images.gold_root().join(checksum);
        // Measured first: a first measurement writes the file count into the usage file.
        let size_bytes = size_of(&dir);
        let usage = read_usage(&dir);
        let reclaimable = self
            .original_archives()
            .into_iter()
            .find(|a| a.checksum == checksum)
            .map(|a| a.bytes);
        let blocked = self
            .locks
            .blocked()
            .into_iter()
            .find(|(sum, _)| sum == checksum)
            .map(|(_, blocked)| blocked);
        ImageEntry {
            blocked,
            url: usage.url,
            checksum_type: usage.checksum_type,
            size_bytes,
            reclaimable_bytes: reclaimable,
            file_count: usage.file_count,
            last_used: usage.last_used.or_else(|| {
                let ms = last_used_ms(&dir);
                (ms > 0).then(|| crate::sys::time::rfc3339(ms / 1000, (ms % 1000) as u32))
            }),
            ..blank(checksum, "ready", None, users)
        }
    }

    fn downloading_entry(
        &self,
        checksum: &str,
        progress: ImageProgress,
        users: &Users,
    ) -> ImageEntry {
        let spec = match self.prewarms.lock_unpoisoned().get(checksum) {
            Some(Prewarm::Running(spec)) => Some(spec.clone()),
            _ => users.by_checksum.get(checksum).and_then(|ids| {
                ids.iter()
                    .find_map(|id| self.store.get(*id).and_then(|vm| vm.image))
            }),
        };
        ImageEntry {
            progress: Some(progress),
            ..blank(checksum, "downloading", spec.as_ref(), users)
        }
    }
}

fn blank(
    checksum: &str,
    state: &'static str,
    spec: Option<&ImageSpec>,
    users: &Users,
) -> ImageEntry {
    ImageEntry {
        checksum: checksum.to_string(),
        state,
        url: spec.map(|s| s.url.clone()),
        checksum_type: spec.map(|s| s.checksum_type.as_str().to_string()),
        size_bytes: 0,
        file_count: None,
        vms: users.by_checksum.get(checksum).cloned().unwrap_or_default(),
        linked_clones: users
            .on_disk
            .get(checksum)
            .into_iter()
            .flatten()
            .map(Dependant::name)
            .collect(),
        reclaimable_bytes: None,
        last_used: None,
        progress: None,
        error: None,
        blocked: None,
    }
}

fn downloading(checksum: &str) -> Error {
    Error::ImageInUse(format!(
        "gold image {checksum} is being downloaded; delete it once GET /images shows it ready"
    ))
}

fn in_use_message(checksum: &str, dependent: &[String], linked: bool) -> String {
    if linked {
        format!(
            "gold image {checksum} is the parent of {} VM(s) ({}): they are linked clones and would break without it; delete them first",
            dependent.len(),
            names(dependent)
        )
    } else {
        format!(
            "gold image {checksum} is still to be cloned for {} VM(s) ({}); try again once they are past cloning (their copies do not need it), or delete them",
            dependent.len(),
            names(dependent)
        )
    }
}

/// A VM that has not been cloned from its image yet, or whose clone runs: where clones are
/// copies, the only kind that needs it (a VM past cloning has its own copy, and one whose
/// clone runs holds the image's gold lock, which removal waits for).
fn not_cloned_yet(vm: &Vm) -> bool {
    vm.status == Status::Provisioning
        && (vm.progress.phase.precedes_clone() || vm.progress.phase == Phase::Cloning)
}

fn ids(list: &[VmId]) -> String {
    names(&list.iter().map(VmId::to_string).collect::<Vec<_>>())
}

fn names(list: &[String]) -> String {
    let shown: Vec<String> = list.iter().take(10).cloned().collect();
    let more = list.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

fn read_usage(dir: &Path) -> Usage {
    std::fs::read(dir.join(USAGE_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// When a VM was last cloned from the image, in milliseconds since the epoch: from the
/// usage file, else the folder's time (images published by the original server, or not
/// used since). 0 when neither can be read: such an image is evicted first.
fn last_used_ms(dir: &Path) -> i64 {
    if let Some(ms) = read_usage(dir)
        .last_used
        .as_deref()
        .and_then(crate::sys::time::parse_rfc3339_ms)
    {
        return ms;
    }
    std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Changes an image's usage file. Its writers (a clone's `touch`, the first measurement of
/// its size) run on different threads; without the lock one's read-then-write dropped the
/// other's fields (a listing without the image's URL).
fn update_usage(dir: &Path, change: impl FnOnce(&mut Usage)) -> Result<(), String> {
    static USAGE_WRITES: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_writer = USAGE_WRITES.lock_unpoisoned();
    let mut usage = read_usage(dir);
    change(&mut usage);
    let path = dir.join(USAGE_FILE);
    let bytes = serde_json::to_vec(&usage).map_err(|e| e.to_string())?;
    crate::sys::fsutil::write_atomic(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The image's size from its usage file, measured (and kept there) when it is not known.
fn size_of(dir: &Path) -> u64 {
    let usage = read_usage(dir);
    if let Some(size) = usage.size_bytes {
        return size;
    }
    match crate::sys::disk::dir_usage(dir) {
        Ok((bytes, files)) => {
            let written = update_usage(dir, |usage| {
                usage.size_bytes = Some(bytes);
                usage.file_count = Some(files);
            });
            if let Err(err) = written {
                crate::warn!("cannot keep the size of {}: {err}", dir.display());
            }
            bytes
        }
        Err(err) => {
            crate::warn!("{err}");
            0
        }
    }
}

fn remove_retired(path: &Path) {
    if let Err(err) = std::fs::remove_dir_all(path) {
        // The next start removes it (it has a staging name).
        crate::warn!(
            "cannot remove {}: {err}; it is removed at the next start",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageSettings;
    use crate::vm::model::tests::sample;

    const SUMS: [&str; 3] = [
        "1111111111111111111111111111111111111111",
        "2222222222222222222222222222222222222222",
        "3333333333333333333333333333333333333333",
    ];

    fn cache(tag: &str, budget: u64) -> (Arc<GoldCache>, Arc<VmStore>, PathBuf) {
        let data = std::env::temp_dir().join(format!("osxb-gold-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let images = Arc::new(ImageCache::new(ImageSettings::new(&data)).unwrap());
        let (store, _) = VmStore::open(&data.join("vms")).unwrap();
        let store = Arc::new(store);
        let gold = GoldCache::new(
            images,
            store.clone(),
            Arc::default(),
            Arc::default(),
            data.clone(),
            GoldSettings {
                budget,
                min_free_disk: 0,
            },
        );
        (Arc::new(gold), store, data)
    }

    /// A gold folder of 1000 bytes (plus its usage file) last used at `last_used`.
    fn publish(data: &Path, checksum: &str, last_used: &str) {
        let dir = data.join("gold").join(checksum);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("gold.vmx"), vec![b'x'; 1000]).unwrap();
        let usage = format!("{{\"url\":\"http://127.0.0.1/{checksum}\",\"checksum_type\":\"sha1\",\"last_used\":\"{last_used}\"}}");
        std::fs::write(dir.join(USAGE_FILE), usage).unwrap();
    }

    #[test]
    fn evicts_the_least_recently_used_images_no_vm_uses_until_under_budget() {
        let (gold, store, data) = cache("lru", 2500);
        publish(&data, SUMS[0], "2026-01-01T00:00:00.000Z");
        publish(&data, SUMS[1], "2026-02-01T00:00:00.000Z");
        publish(&data, SUMS[2], "2026-03-01T00:00:00.000Z");
        // The oldest is the parent of a VM: never evicted, whatever its age.
        let mut vm = sample();
        vm.id = VmId::new();
        if let Some(image) = vm.image.as_mut() {
            image.checksum = SUMS[0].into();
        }
        store.insert(vm).unwrap();

        assert_eq!(gold.evict(), vec![SUMS[1].to_string()]);
        let left: Vec<String> = gold.list().into_iter().map(|e| e.checksum).collect();
        assert_eq!(left, vec![SUMS[0].to_string(), SUMS[2].to_string()]);
        assert!(
            gold.total_bytes() <= 2500 + 2 * 200,
            "{}",
            gold.total_bytes()
        );
        // Under budget now: nothing more goes.
        assert!(gold.evict().is_empty());
        std::fs::remove_dir_all(&data).unwrap();
    }

    #[test]
    fn a_vm_of_unknown_image_blocks_eviction_and_deletion() {
        let (gold, store, data) = cache("unknown", 1);
        publish(&data, SUMS[0], "2026-01-01T00:00:00.000Z");
        let mut vm = sample();
        vm.id = VmId::new();
        vm.image = None;
        store.insert(vm).unwrap();
        assert!(gold.evict().is_empty());
        let err = gold.remove(SUMS[0]).unwrap_err();
        assert!(matches!(err, GoldError::ImageInUse(_)), "{err:?}");
        assert_eq!(gold.list().len(), 1);
        assert_eq!(gold.remove(SUMS[1]).unwrap_err(), GoldError::ImageNotFound);
        std::fs::remove_dir_all(&data).unwrap();
    }

    /// A hypervisor whose clones are copies, as tart's: it records the golds it removed.
    #[derive(Default)]
    struct CopyClones {
        removed: Mutex<Vec<String>>,
    }

    impl crate::image::GoldHost for CopyClones {
        fn pull_oci(
            &self,
            _: &str,
            _: &str,
            _: &Path,
            _: &Cancel,
        ) -> Result<(), crate::image::ImageError> {
            unreachable!("no pulls here")
        }

        fn clones_need_gold(&self) -> bool {
            false
        }

        fn remove_gold(&self, checksum: &str) -> Result<(), String> {
            self.removed.lock_unpoisoned().push(checksum.to_string());
            Ok(())
        }
    }

    #[test]
    fn where_clones_are_copies_only_a_vm_not_cloned_yet_keeps_its_image() {
        let (gold, store, data) = cache("copies", 1);
        let host = Arc::new(CopyClones::default());
        gold.images.set_gold_host(host.clone());
        publish(&data, SUMS[0], "2026-01-01T00:00:00.000Z");
        publish(&data, SUMS[1], "2026-02-01T00:00:00.000Z");
        let vm_of = |checksum: &str, status: Status, phase: Phase| {
            let mut vm = sample();
            vm.id = VmId::new();
            vm.status = status;
            vm.progress.phase = phase;
            if let Some(image) = vm.image.as_mut() {
                image.checksum = checksum.into();
            }
            store.insert(vm.clone()).unwrap();
            vm.id
        };
        // A running clone of the first, one past its clone, and a VM of unknown image: none
        // keeps anything.
        vm_of(SUMS[0], Status::Running, Phase::Ready);
        vm_of(SUMS[0], Status::Provisioning, Phase::Configuring);
        let mut unknown = sample();
        unknown.id = VmId::new();
        unknown.image = None;
        store.insert(unknown).unwrap();
        // A VM queued for the second is still to be cloned from it.
        let queued = vm_of(SUMS[1], Status::Provisioning, Phase::Queued);

        assert_eq!(gold.evict(), vec![SUMS[0].to_string()]);
        assert_eq!(*host.removed.lock_unpoisoned(), vec![SUMS[0].to_string()]);
        let err = gold.remove(SUMS[1]).unwrap_err();
        let GoldError::ImageInUse(why) = err else {
            panic!("{err:?}")
        };
        assert!(
            why.contains(&queued.to_string())
                && why.contains("still to be cloned")
                && !why.contains("linked"),
            "{why}"
        );
        let entry = gold.get(SUMS[1]).unwrap();
        assert_eq!(entry.vms, vec![queued]);
        store.remove(queued).unwrap();
        gold.remove(SUMS[1]).unwrap();
        assert_eq!(host.removed.lock_unpoisoned().len(), 2);
        assert!(gold.list().is_empty());
        std::fs::remove_dir_all(&data).unwrap();
    }

    #[test]
    fn no_budget_and_no_floor_evicts_nothing() {
        let (gold, _store, data) = cache("none", 0);
        publish(&data, SUMS[0], "2026-01-01T00:00:00.000Z");
        assert!(gold.evict().is_empty());
        let entry = gold.get(SUMS[0]).unwrap();
        assert_eq!(entry.state, "ready");
        assert_eq!(entry.last_used.as_deref(), Some("2026-01-01T00:00:00.000Z"));
        assert_eq!(
            entry.url.as_deref(),
            Some(&*format!("http://127.0.0.1/{}", SUMS[0]))
        );
        assert!(entry.size_bytes > 1000);
        std::fs::remove_dir_all(&data).unwrap();
    }
}
