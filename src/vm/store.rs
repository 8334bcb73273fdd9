//! The persistent VM store: `vms/<id>/osx-builder.json` on disk is the truth, the map in
//! memory is the cache that answers polls. A new VM's record is first a line of
//! [`vms/.journal`](super::journal), flushed together with the creates of the same moment,
//! and gets its folder when provisioning starts.
//!
//! Each VM's JSON is serialised once per change and shared (`Arc<[u8]>`), so a GET copies a
//! pointer under two short read locks and never waits on a disk write: durable writes hold
//! only that VM's record lock.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use crate::hypervisor::VmRef;
use crate::vm::VmId;

use super::journal::{Journal, Line, JOURNAL_FILE};
use super::model::{Phase, Status, Vm};
use crate::sys::fsutil;
use crate::sys::sync::{LockUnpoisoned, RwLockUnpoisoned};

pub const RECORD_FILE: &str = "osx-builder.json";
/// `vms/.creating-<id>`: a new VM's folder until its record is in it.
const CREATING_PREFIX: &str = ".creating-";
/// `vms/.deleting-<id>`: a deleted VM's folder while it is removed.
const DELETING_PREFIX: &str = ".deleting-";
/// `vms/.deleted-<id>`: a file, the durable mark of a VM deleted while vmrun still worked
/// on its gold image for it. Its folder goes when that call ends; until then (and after a
/// restart, where a vmrun that outlived the server may still write the folder) the folder
/// is never loaded or adopted as a VM, and is removed wherever it is found.
const BURIED_PREFIX: &str = ".deleted-";
/// A mark outlives any vmrun call that may still write the folder: then it goes.
const BURIED_KEEP: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub enum StoreError {
    Io { path: PathBuf, source: io::Error },
    Encode(serde_json::Error),
}

impl StoreError {
    fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Io { source, .. } if fsutil::is_disk_full(source) => "disk-full",
            _ => "store-error",
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(
                f,
                "cannot write the VM record {}: {source}; check that the data folder is writable and has free space",
                path.display()
            ),
            Self::Encode(err) => write!(f, "cannot encode the VM record: {err}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Whether a change must reach the disk before it is visible. Download byte counts change
/// several times a second and are worthless after a crash; everything else is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    Disk,
    MemoryOnly,
}

struct Slot {
    /// Held across the record's disk write, so that writes reach the disk in order; readers
    /// that only need the JSON or the creation time never take it.
    record: Mutex<Vm>,
    /// The VM's only durable record is its journal line: it has no folder yet. Changed
    /// under `record`.
    journaled: AtomicBool,
    json: RwLock<Visible>,
    /// Never changes; kept outside `record` so that `GET /vms` does not wait on a write.
    created_at: String,
}

/// A VM as reads see it: changed once its record is written.
struct Visible {
    json: Arc<[u8]>,
    /// The hash of what a long poll waits for ([`crate::service::long_poll::state_of`]), computed
    /// once per change rather than on every GET.
    state: u64,
    /// What admission counts.
    status: Status,
    phase: Phase,
    /// The idempotency key: set at create, or at a warm pool's hand-out.
    name: Option<Arc<str>>,
    /// The warm pool the VM waits in, idle.
    pool: Option<Arc<str>>,
}

impl Visible {
    fn of(vm: &Vm, json: Arc<[u8]>) -> Self {
        Self {
            json,
            state: crate::service::long_poll::state_of(vm),
            status: vm.status,
            phase: vm.progress.phase,
            name: vm.name.as_deref().map(Arc::from),
            pool: vm.pool.as_deref().map(Arc::from),
        }
    }
}

pub struct VmStore {
    root: PathBuf,
    /// `root` with symlinks resolved, once: admission compares VMX paths with those vmrun
    /// lists without a `realpath` per VM.
    canonical_root: PathBuf,
    slots: RwLock<HashMap<VmId, Arc<Slot>>>,
    /// Counts visible changes (insert, update, remove), so that long polls can sleep on
    /// `changed` instead of re-reading records in a loop.
    generation: Mutex<u64>,
    changed: Condvar,
    journal: Journal,
}

/// A new VM's record, durable: in the journal, or (when the journal could not be written)
/// in its folder already.
pub struct Recorded {
    pub json: Arc<[u8]>,
    journaled: bool,
}

/// A folder in `vms/` that did not load as a record, for the caller to adopt or report.
#[derive(Debug)]
pub struct Unloaded {
    pub dir: PathBuf,
    pub reason: String,
}

impl VmStore {
    /// Loads every record under `root` (`<data>/vms`), creating the folder if needed.
    pub fn open(root: &Path) -> Result<(Self, Vec<Unloaded>), StoreError> {
        fs::create_dir_all(root).map_err(|e| StoreError::io(root, e))?;
        let mut slots = HashMap::new();
        let mut unloaded = Vec::new();
        let buried = buried_in(root);
        let entries = fs::read_dir(root).map_err(|e| StoreError::io(root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(root, e))?;
            let dir = entry.path();
            if !dir.is_dir() {
                continue;
            }
            let name = entry.file_name();
            if let Some(id) = name.to_str().and_then(VmId::parse) {
                if buried.contains(&id) {
                    remove_buried_folder(root, id);
                    continue;
                }
            }
            if is_transient(&entry.file_name()) {
                // A folder write or delete that a crash cut short: a create's record is
                // still in the journal (replayed below), a delete was acknowledged only
                // after its rename, its commit point.
                // On a read-only folder it stays for a later start rather than keeping
                // this one from serving the VMs it can read.
                match fs::remove_dir_all(&dir) {
                    Ok(()) => crate::info!(
                        "removed {} left by an interrupted create or delete",
                        dir.display()
                    ),
                    Err(e) => crate::warn!("left for a later start: {} ({e})", dir.display()),
                }
                continue;
            }
            match load_record(&dir) {
                Ok(vm) => {
                    let json = encode(&vm)?;
                    slots.insert(vm.id, Arc::new(Slot::new(vm, json)));
                }
                Err(reason) => unloaded.push(Unloaded { dir, reason }),
            }
        }
        let journal_path = root.join(JOURNAL_FILE);
        let (journal, lines) =
            Journal::open(&journal_path).map_err(|e| StoreError::io(&journal_path, e))?;
        if !lines.is_empty() && replay(root, lines, &buried, &mut slots, &journal) {
            if let Err(e) = journal.clear() {
                crate::warn!(
                    "cannot empty {}: {e}; its lines are replayed (and skipped) at the next start",
                    journal_path.display()
                );
            }
        }
        let store = Self {
            root: root.to_path_buf(),
            canonical_root: root.canonicalize().unwrap_or_else(|_| root.to_path_buf()),
            slots: RwLock::new(slots),
            generation: Mutex::new(0),
            changed: Condvar::new(),
            journal,
        };
        Ok((store, unloaded))
    }

    /// `<data>/vms`
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn vm_dir(&self, id: VmId) -> PathBuf {
        self.root.join(id.to_string())
    }

    /// How hypervisor calls name the VM: its id and its folder.
    pub fn vm_ref(&self, id: VmId) -> VmRef {
        VmRef {
            id: id.to_string(),
            dir: self.vm_dir(id),
        }
    }

    /// Writes a VM's record in its folder and makes it visible: for a folder that is
    /// already there (the original server's VM, adopted) and for the tests. The record is on
    /// disk before this returns.
    pub fn insert(&self, vm: Vm) -> Result<Arc<[u8]>, StoreError> {
        let dir = self.vm_dir(vm.id);
        let json = encode(&vm)?;
        if dir.is_dir() {
            let path = dir.join(RECORD_FILE);
            fsutil::write_atomic(&path, &json).map_err(|e| StoreError::io(&path, e))?;
            fsutil::sync_dir(&self.root).map_err(|e| StoreError::io(&self.root, e))?;
        } else {
            write_folder(&self.root, vm.id, &json)?;
        }
        self.publish(
            vm,
            Recorded {
                json: json.clone(),
                journaled: false,
            },
        );
        Ok(json)
    }

    /// The disk half of recording a new VM: the record is durable when this returns, so a
    /// 202 is never sent for a VM that a crash could lose, and nothing in memory knows the
    /// VM yet. Takes no lock of the store's, so that creates at once share a journal flush.
    pub fn persist(&self, vm: &Vm) -> Result<Recorded, StoreError> {
        let json = encode(vm)?;
        if self.journal.record(vm.id, &json).is_ok() {
            return Ok(Recorded {
                json,
                journaled: true,
            });
        }
        // The journal failed (it says why, once): the folder the slow way.
        match write_folder(&self.root, vm.id, &json) {
            Ok(()) => {
                self.journal.settled(vm.id);
                Ok(Recorded {
                    json,
                    journaled: false,
                })
            }
            Err(err) => {
                // Refused: a line of it that did reach the journal must not bring it back.
                let _ = self.journal.forget(vm.id);
                Err(err)
            }
        }
    }

    /// The memory half of recording a new VM, for one that [`persist`](Self::persist)
    /// recorded: from now on reads see it.
    pub fn publish(&self, vm: Vm, recorded: Recorded) {
        let id = vm.id;
        let slot = Slot::new(vm, recorded.json);
        slot.journaled.store(recorded.journaled, Ordering::Relaxed);
        self.write_slots().insert(id, Arc::new(slot));
        self.bump();
    }

    /// Gives a VM recorded only in the journal its folder, before anything else is written
    /// there: provisioning's first step.
    pub fn settle(&self, id: VmId) -> Result<(), StoreError> {
        let Some(slot) = self.slot(id) else {
            return Ok(());
        };
        // Under the record lock the visible JSON is the record's own encoding.
        let _record = slot.record.lock_unpoisoned();
        if slot.journaled.load(Ordering::Relaxed) {
            let json = slot.json.read_unpoisoned().json.clone();
            self.write_first_folder(&slot, id, &json)?;
        }
        Ok(())
    }

    /// The folder of a VM that had only its journal line; under the VM's record lock.
    fn write_first_folder(&self, slot: &Slot, id: VmId, json: &[u8]) -> Result<(), StoreError> {
        write_folder(&self.root, id, json)?;
        slot.journaled.store(false, Ordering::Relaxed);
        self.journal.settled(id);
        Ok(())
    }

    /// Applies `change` to the VM's record; returns the new record, or `None` when the VM is
    /// unknown (deleted meanwhile).
    pub fn update(
        &self,
        id: VmId,
        durability: Durability,
        change: impl FnOnce(&mut Vm),
    ) -> Result<Option<Vm>, StoreError> {
        let Some(slot) = self.slot(id) else {
            return Ok(None);
        };
        let mut record = slot.record.lock_unpoisoned();
        let mut next = record.clone();
        change(&mut next);
        if next == *record {
            return Ok(Some(next));
        }
        next.updated_at = crate::sys::time::rfc3339_now();
        let json = encode(&next)?;
        if durability == Durability::Disk {
            if slot.journaled.load(Ordering::Relaxed) {
                self.write_first_folder(&slot, id, &json)?;
            } else {
                let path = self.vm_dir(id).join(RECORD_FILE);
                fsutil::write_atomic(&path, &json).map_err(|e| StoreError::io(&path, e))?;
            }
        }
        *record = next.clone();
        *slot.json.write_unpoisoned() = Visible::of(&next, json);
        drop(record);
        self.bump();
        Ok(Some(next))
    }

    /// Forgets the VM and removes its folder (the record with it). The caller has already
    /// asked vmrun to delete VMware's files.
    pub fn remove(&self, id: VmId) -> Result<(), StoreError> {
        if let Some(slot) = self.slot(id) {
            // Under the record lock: a `settle` at the same moment either made the folder
            // first or finds nothing left to make.
            let _record = slot.record.lock_unpoisoned();
            let path = self.journal.path();
            self.journal
                .forget(id)
                .map_err(|e| StoreError::io(path, e))?;
            slot.journaled.store(false, Ordering::Relaxed);
        }
        let dir = self.vm_dir(id);
        // One rename takes the folder away whole, record and all; a crash in the removal
        // after it leaves only a `.deleting-` folder, which `open` removes.
        let trash = self.root.join(format!("{DELETING_PREFIX}{id}"));
        remove_if_there(&trash)?;
        match fs::rename(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(&dir, e)),
        }
        fsutil::sync_dir(&self.root).map_err(|e| StoreError::io(&self.root, e))?;
        // The files go before the VM leaves the map: whoever reads a 404 finds no folder.
        if let Err(err) = remove_if_there(&trash) {
            crate::warn!("vm={id} is deleted but {err}; it is removed at the next start");
        }
        self.write_slots().remove(&id);
        self.bump();
        let mark = buried_mark(&self.root, id);
        match fs::remove_file(&mark) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                crate::warn!(
                    "vm={id} is deleted but its mark {} stays: {e}",
                    mark.display()
                )
            }
            _ => {}
        }
        Ok(())
    }

    /// Deletes the VM for every reader while vmrun still works on its gold image for it:
    /// a durable mark first (a restart removes the folder and never brings the VM back),
    /// then the VM leaves the map. The folder stays for [`remove`](Self::remove), once the
    /// call is over.
    pub fn bury(&self, id: VmId) -> Result<(), StoreError> {
        let mark = buried_mark(&self.root, id);
        fsutil::write_atomic(&mark, id.to_string().as_bytes())
            .map_err(|e| StoreError::io(&mark, e))?;
        fsutil::sync_dir(&self.root).map_err(|e| StoreError::io(&self.root, e))?;
        if let Some(slot) = self.slot(id) {
            let _record = slot.record.lock_unpoisoned();
            if let Err(err) = self.journal.forget(id) {
                // The mark keeps a replayed line from bringing it back.
                crate::warn!("vm={id} {}: {err}", self.journal.path().display());
            }
            slot.journaled.store(false, Ordering::Relaxed);
        }
        self.write_slots().remove(&id);
        self.bump();
        Ok(())
    }

    /// True while the VM is deleted but a vmrun call may still write its folder: such a
    /// folder is removed, never adopted.
    pub fn is_buried(&self, id: VmId) -> bool {
        buried_mark(&self.root, id).exists()
    }

    /// Removes the folder of a buried VM that reappeared (a vmrun that outlived the server
    /// finished its clone), and the marks whose folders are gone and that are old enough
    /// that no vmrun call can still write them.
    pub fn sweep_buried(&self) {
        for id in buried_in(&self.root) {
            if self.vm_dir(id).exists() {
                remove_buried_folder(&self.root, id);
                continue;
            }
            let mark = buried_mark(&self.root, id);
            let old = fs::metadata(&mark)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > BURIED_KEEP);
            if old {
                let _ = fs::remove_file(&mark);
            }
        }
    }

    /// The number of visible changes so far. Read it before reading a record, then
    /// [`wait_for_change`](Self::wait_for_change) past it: a change in between is not missed.
    pub fn generation(&self) -> u64 {
        *self.lock_generation()
    }

    /// Blocks until a change after generation `seen`, or until `timeout` passes; returns
    /// the generation then. Any VM's change wakes every waiter: a waiter re-reads its one
    /// record, which costs a pointer copy.
    pub fn wait_for_change(&self, seen: u64, timeout: Duration) -> u64 {
        let generation = self.lock_generation();
        let (generation, _) = self
            .changed
            .wait_timeout_while(generation, timeout, |now| *now == seen)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *generation
    }

    fn bump(&self) {
        *self.lock_generation() += 1;
        self.changed.notify_all();
    }

    fn lock_generation(&self) -> MutexGuard<'_, u64> {
        self.generation.lock_unpoisoned()
    }

    pub fn json(&self, id: VmId) -> Option<Arc<[u8]>> {
        let slot = self.slot(id)?;
        let json = slot.json.read_unpoisoned();
        Some(json.json.clone())
    }

    /// The JSON and its long-poll state hash, read together.
    pub fn json_with_state(&self, id: VmId) -> Option<(Arc<[u8]>, u64)> {
        let slot = self.slot(id)?;
        let json = slot.json.read_unpoisoned();
        Some((json.json.clone(), json.state))
    }

    pub fn get(&self, id: VmId) -> Option<Vm> {
        let slot = self.slot(id)?;
        let record = slot.record.lock_unpoisoned();
        Some(record.clone())
    }

    /// A copy of every record, each read under its own lock: one VM's change does not wait
    /// for a walk over all of them.
    pub fn records(&self) -> Vec<Vm> {
        self.ids()
            .into_iter()
            .filter_map(|id| self.get(id))
            .collect()
    }

    pub fn ids(&self) -> Vec<VmId> {
        self.read_slots().keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.read_slots().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every VM's JSON, oldest first, for `GET /vms`.
    pub fn all_json(&self) -> Vec<Arc<[u8]>> {
        let slots: Vec<Arc<Slot>> = self.read_slots().values().cloned().collect();
        let mut rows: Vec<(String, Arc<[u8]>)> = slots
            .iter()
            .map(|slot| {
                let json = slot.json.read_unpoisoned().json.clone();
                (slot.created_at.clone(), json)
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.into_iter().map(|(_, json)| json).collect()
    }

    /// Each VM's canonical folder (how the running set knows it), status and phase as reads
    /// see them: what admission counts, without waiting on a record's disk write or copying
    /// a record.
    pub fn for_each_state(&self, mut visit: impl FnMut(&Path, Status, Phase)) {
        for (id, slot) in self.read_slots().iter() {
            let (status, phase) = {
                let visible = slot.json.read_unpoisoned();
                (visible.status, visible.phase)
            };
            visit(&self.canonical_root.join(id.to_string()), status, phase);
        }
    }

    /// The VMs whose visible status is `status` and that are not being deleted.
    pub fn ids_with_status(&self, status: Status) -> Vec<VmId> {
        self.read_slots()
            .iter()
            .filter(|(_, slot)| {
                let visible = slot.json.read_unpoisoned();
                visible.status == status && visible.phase != Phase::Deleting
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// The VM that carries idempotency key `name` and is not being deleted.
    pub fn find_by_name(&self, name: &str) -> Option<Vm> {
        let id = self.read_slots().iter().find_map(|(id, slot)| {
            let visible = slot.json.read_unpoisoned();
            (visible.name.as_deref() == Some(name) && visible.phase != Phase::Deleting)
                .then_some(*id)
        })?;
        self.get(id)
    }

    /// Each VM that waits in a warm pool, with its pool, status and phase as reads see
    /// them: what a hand-out chooses from, without copying a record.
    pub fn for_each_pooled(&self, mut visit: impl FnMut(VmId, &str, Status, Phase)) {
        for (id, slot) in self.read_slots().iter() {
            let visible = slot.json.read_unpoisoned();
            if let Some(pool) = &visible.pool {
                visit(*id, pool, visible.status, visible.phase);
            }
        }
    }

    fn slot(&self, id: VmId) -> Option<Arc<Slot>> {
        self.read_slots().get(&id).cloned()
    }

    fn read_slots(&self) -> std::sync::RwLockReadGuard<'_, HashMap<VmId, Arc<Slot>>> {
        self.slots.read_unpoisoned()
    }

    fn write_slots(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<VmId, Arc<Slot>>> {
        self.slots.write_unpoisoned()
    }
}

impl Slot {
    fn new(vm: Vm, json: Arc<[u8]>) -> Self {
        Self {
            json: RwLock::new(Visible::of(&vm, json)),
            created_at: vm.created_at.clone(),
            record: Mutex::new(vm),
            journaled: AtomicBool::new(false),
        }
    }
}

/// Makes `vms/<id>` with its record in it, durably. The folder appears with its record, in
/// one rename: a crash cannot leave a VM folder without a record.
fn write_folder(root: &Path, id: VmId, json: &[u8]) -> Result<(), StoreError> {
    let dir = root.join(id.to_string());
    let staging = root.join(format!("{CREATING_PREFIX}{id}"));
    remove_if_there(&staging)?;
    fs::create_dir_all(&staging).map_err(|e| StoreError::io(&staging, e))?;
    let path = staging.join(RECORD_FILE);
    let made = fsutil::write_atomic(&path, json)
        .map_err(|e| StoreError::io(&path, e))
        .and_then(|()| fs::rename(&staging, &dir).map_err(|e| StoreError::io(&dir, e)));
    if let Err(err) = made {
        // On a full disk nothing of the refused VM is left to fill it further.
        let _ = fs::remove_dir_all(&staging);
        return Err(err);
    }
    fsutil::sync_dir(root).map_err(|e| StoreError::io(root, e))
}

/// At start: the VMs whose creates were answered but whose folders a crash kept from being
/// written get them now. A VM with a folder (its record there is newer) or a forget line
/// (deleted) is left as it is. True when every line is settled and the journal can go; a
/// folder that cannot be written (a read-only data folder) leaves its VM served from its
/// line, which stays.
fn replay(
    root: &Path,
    lines: Vec<Line>,
    buried: &HashSet<VmId>,
    slots: &mut HashMap<VmId, Arc<Slot>>,
    journal: &Journal,
) -> bool {
    let mut forgotten: HashSet<VmId> = lines
        .iter()
        .filter_map(|line| match line {
            Line::Forget(id) => Some(*id),
            Line::Create(_) => None,
        })
        .collect();
    forgotten.extend(buried);
    let mut recovered = 0;
    let mut settled = true;
    for line in lines {
        let Line::Create(vm) = line else { continue };
        let id = vm.id;
        if forgotten.contains(&id) || slots.contains_key(&id) || root.join(id.to_string()).exists()
        {
            continue;
        }
        let Ok(json) = encode(&vm) else { continue };
        let slot = Slot::new(*vm, json.clone());
        if let Err(err) = write_folder(root, id, &json) {
            crate::warn!(
                "vm={id} is served from the journal until its folder can be written: {err}"
            );
            slot.journaled.store(true, Ordering::Relaxed);
            journal.still_pending(id, &json);
            settled = false;
        }
        slots.insert(id, Arc::new(slot));
        recovered += 1;
    }
    if recovered > 0 {
        crate::info!(
            "recovered {recovered} VM record(s) from {}: created just before the server stopped",
            root.join(JOURNAL_FILE).display()
        );
    }
    settled
}

fn buried_mark(root: &Path, id: VmId) -> PathBuf {
    root.join(format!("{BURIED_PREFIX}{id}"))
}

/// The VMs marked deleted while a gold call ran for them.
fn buried_in(root: &Path) -> HashSet<VmId> {
    let Ok(entries) = fs::read_dir(root) else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            VmId::parse(name.to_str()?.strip_prefix(BURIED_PREFIX)?)
        })
        .collect()
}

/// The folder of a VM deleted during a gold call, with whatever the call wrote into it.
fn remove_buried_folder(root: &Path, id: VmId) {
    let dir = root.join(id.to_string());
    let trash = root.join(format!("{DELETING_PREFIX}{id}"));
    let removed = remove_if_there(&trash)
        .and_then(|()| fs::rename(&dir, &trash).map_err(|e| StoreError::io(&dir, e)))
        .and_then(|()| remove_if_there(&trash));
    match removed {
        Ok(()) => crate::info!(
            "vm={id} removed {}: the VM was deleted while the hypervisor worked on its gold image",
            dir.display()
        ),
        Err(err) => crate::warn!("vm={id} was deleted, but {err}; tried again later"),
    }
}

/// Names of the folders a create or delete uses on its way (never a VM id).
pub fn is_transient(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.starts_with(CREATING_PREFIX) || n.starts_with(DELETING_PREFIX))
}

fn remove_if_there(dir: &Path) -> Result<(), StoreError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(dir, e)),
    }
}

fn encode(vm: &Vm) -> Result<Arc<[u8]>, StoreError> {
    serde_json::to_vec(vm)
        .map(Arc::from)
        .map_err(StoreError::Encode)
}

fn load_record(dir: &Path) -> Result<Vm, String> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| "the folder name is not UTF-8".to_string())?;
    let id = VmId::parse(name).ok_or_else(|| "the folder name is not a VM id".to_string())?;
    let path = dir.join(RECORD_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!("no {RECORD_FILE} in the folder"))
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let vm: Vm = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a valid VM record: {e}", path.display()))?;
    if vm.id != id {
        return Err(format!(
            "{} holds the record of VM {}, not {id}",
            path.display(),
            vm.id
        ));
    }
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::model::tests::sample;
    use std::time::Instant;

    fn vm(id: VmId) -> Vm {
        Vm { id, ..sample() }
    }

    /// The folder's entries but the journal, which is always there.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != JOURNAL_FILE)
            .collect();
        names.sort();
        names
    }

    /// A new VM's record as a create writes it: a journal line, then its folder.
    fn record_new(store: &VmStore, id: VmId) {
        let vm = vm(id);
        let recorded = store.persist(&vm).unwrap();
        store.publish(vm, recorded);
    }

    #[test]
    fn a_new_vm_is_a_journal_line_until_it_settles_and_a_crash_loses_neither() {
        let root = crate::sys::scratch::dir("store-journal");
        let (kept, settled, updated) = (VmId::new(), VmId::new(), VmId::new());
        {
            let (store, _) = VmStore::open(&root).unwrap();
            for id in [kept, settled, updated] {
                record_new(&store, id);
            }
            assert!(names(&root).is_empty(), "no folder before provisioning");
            assert!(store.get(kept).is_some());
            store.settle(settled).unwrap();
            store
                .update(updated, Durability::Disk, |vm| vm.cpus = 7)
                .unwrap();
            let on_disk = names(&root);
            let mut want = vec![settled.to_string(), updated.to_string()];
            want.sort();
            assert_eq!(on_disk, want);
            assert!(fs::metadata(root.join(JOURNAL_FILE)).unwrap().len() > 0);
            // The store is dropped without a word: a crash.
        }
        let (store, unloaded) = VmStore::open(&root).unwrap();
        assert!(unloaded.is_empty(), "{unloaded:?}");
        for id in [kept, settled, updated] {
            assert!(store.get(id).is_some(), "{id} lost");
            assert!(root.join(id.to_string()).join(RECORD_FILE).is_file());
        }
        assert_eq!(
            store.get(updated).unwrap().cpus,
            7,
            "the folder's record is newer"
        );
        assert_eq!(fs::metadata(root.join(JOURNAL_FILE)).unwrap().len(), 0);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_vm_deleted_while_its_journal_line_is_there_stays_deleted_after_a_crash() {
        let root = crate::sys::scratch::dir("store-journal-forget");
        let (unsettled, settled, alive) = (VmId::new(), VmId::new(), VmId::new());
        {
            let (store, _) = VmStore::open(&root).unwrap();
            for id in [unsettled, settled, alive] {
                record_new(&store, id);
            }
            store.settle(settled).unwrap();
            store.remove(unsettled).unwrap();
            store.remove(settled).unwrap();
        }
        let (store, _) = VmStore::open(&root).unwrap();
        assert!(store.get(unsettled).is_none());
        assert!(store.get(settled).is_none());
        assert!(store.get(alive).is_some());
        assert_eq!(names(&root), vec![alive.to_string()]);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_journal_empties_once_every_new_vm_has_its_folder() {
        let root = crate::sys::scratch::dir("store-journal-empty");
        let (store, _) = VmStore::open(&root).unwrap();
        let (a, b) = (VmId::new(), VmId::new());
        record_new(&store, a);
        record_new(&store, b);
        store.settle(a).unwrap();
        assert!(fs::metadata(root.join(JOURNAL_FILE)).unwrap().len() > 0);
        store.remove(b).unwrap();
        assert_eq!(fs::metadata(root.join(JOURNAL_FILE)).unwrap().len(), 0);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn insert_and_remove_leave_only_whole_vm_folders() {
        let root = crate::sys::scratch::dir("store-whole");
        let (store, _) = VmStore::open(&root).unwrap();
        let id = VmId::new();
        store.insert(vm(id)).unwrap();
        assert_eq!(names(&root), vec![id.to_string()]);
        assert!(root.join(id.to_string()).join(RECORD_FILE).is_file());
        fs::write(root.join(id.to_string()).join("disk.vmdk"), "x").unwrap();
        store.remove(id).unwrap();
        assert!(names(&root).is_empty());
        assert!(store.get(id).is_none());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn open_removes_what_an_interrupted_create_or_delete_left() {
        let root = crate::sys::scratch::dir("store-leftovers");
        let kept = VmId::new();
        {
            let (store, _) = VmStore::open(&root).unwrap();
            store.insert(vm(kept)).unwrap();
        }
        // A create cut short before its rename, a delete cut short after its rename.
        let creating = root.join(format!("{CREATING_PREFIX}{}", VmId::new()));
        let deleting = root.join(format!("{DELETING_PREFIX}{}", VmId::new()));
        for dir in [&creating, &deleting] {
            fs::create_dir_all(dir).unwrap();
            fs::write(dir.join(RECORD_FILE), "{}").unwrap();
        }
        let (store, unloaded) = VmStore::open(&root).unwrap();
        assert!(unloaded.is_empty(), "{unloaded:?}");
        assert_eq!(store.ids(), vec![kept]);
        assert_eq!(names(&root), vec![kept.to_string()]);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn adopting_writes_the_record_into_the_existing_folder() {
        let root = crate::sys::scratch::dir("store-adopt");
        let (store, _) = VmStore::open(&root).unwrap();
        let id = VmId::new();
        let dir = root.join(id.to_string());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("{id}.vmx")), ".encoding = \"UTF-8\"\n").unwrap();
        store.insert(vm(id)).unwrap();
        assert!(dir.join(RECORD_FILE).is_file());
        assert!(dir.join(format!("{id}.vmx")).is_file());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_change_wakes_a_waiter_and_none_times_out() {
        let root = std::env::temp_dir().join(format!("osxb-store-wait-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let (store, _) = VmStore::open(&root).unwrap();
        let store = Arc::new(store);
        let mut vm = sample();
        vm.id = VmId::new();
        let id = vm.id;
        store.insert(vm).unwrap();

        let seen = store.generation();
        let started = Instant::now();
        assert_eq!(store.wait_for_change(seen, Duration::from_millis(50)), seen);
        assert!(started.elapsed() >= Duration::from_millis(50));

        // An update that changes nothing is not a change.
        store
            .update(id, Durability::MemoryOnly, |_| {})
            .unwrap()
            .unwrap();
        assert_eq!(store.generation(), seen);

        let waiter = {
            let store = store.clone();
            std::thread::spawn(move || store.wait_for_change(seen, Duration::from_secs(60)))
        };
        store
            .update(id, Durability::MemoryOnly, |vm| {
                vm.ip_address = "172.16.0.9".into()
            })
            .unwrap();
        assert!(waiter.join().unwrap() > seen);
        // Already past: returns at once.
        let started = Instant::now();
        store.wait_for_change(seen, Duration::from_secs(60));
        assert!(started.elapsed() < Duration::from_secs(30));
        fs::remove_dir_all(&root).unwrap();
    }
}
