//! The persistent VM store: `vms/<id>/osx-builder.json` on disk is the truth, the map in
//! memory is the cache that answers polls.
//!
//! Each VM's JSON is serialised once per change and shared (`Arc<[u8]>`), so a GET copies a
//! pointer under two short read locks and never waits on a disk write: durable writes hold
//! only that VM's record lock.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use crate::vm::VmId;

use super::model::{Phase, Status, Vm};
use crate::sys::fsutil;
use crate::sys::sync::{LockUnpoisoned, RwLockUnpoisoned};

pub const RECORD_FILE: &str = "osx-builder.json";
/// `vms/.creating-<id>`: a new VM's folder until its record is in it.
const CREATING_PREFIX: &str = ".creating-";
/// `vms/.deleting-<id>`: a deleted VM's folder while it is removed.
const DELETING_PREFIX: &str = ".deleting-";

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
        let entries = fs::read_dir(root).map_err(|e| StoreError::io(root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(root, e))?;
            let dir = entry.path();
            if !dir.is_dir() {
                continue;
            }
            if is_transient(&entry.file_name()) {
                // A create or delete that a crash cut short: the create was never
                // acknowledged, the delete was (the rename is its commit point).
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
        let store = Self {
            root: root.to_path_buf(),
            canonical_root: root.canonicalize().unwrap_or_else(|_| root.to_path_buf()),
            slots: RwLock::new(slots),
            generation: Mutex::new(0),
            changed: Condvar::new(),
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

    /// `vms/<id>/<id>.vmx`, the original's layout.
    pub fn vmx_path(&self, id: VmId) -> PathBuf {
        self.vm_dir(id).join(format!("{id}.vmx"))
    }

    /// Persists a new VM and makes it visible. The record is on disk before this returns, so
    /// a 202 is never sent for a VM that a crash could lose.
    pub fn insert(&self, vm: Vm) -> Result<Arc<[u8]>, StoreError> {
        let json = self.persist(&vm)?;
        self.publish(vm, json.clone());
        Ok(json)
    }

    /// The disk half of [`insert`](Self::insert): the record is durable when this returns,
    /// and nothing in memory knows the VM yet. Takes no lock of the store's, so that
    /// creates at once wait on their fsyncs side by side, not one after another.
    pub fn persist(&self, vm: &Vm) -> Result<Arc<[u8]>, StoreError> {
        let dir = self.vm_dir(vm.id);
        let json = encode(vm)?;
        if dir.is_dir() {
            // Adopting a folder that is already there (the original server's VM).
            let path = dir.join(RECORD_FILE);
            fsutil::write_atomic(&path, &json).map_err(|e| StoreError::io(&path, e))?;
        } else {
            // The folder appears with its record in it, in one rename: a crash cannot leave
            // a VM folder without a record.
            let staging = self.root.join(format!("{CREATING_PREFIX}{}", vm.id));
            remove_if_there(&staging)?;
            fs::create_dir_all(&staging).map_err(|e| StoreError::io(&staging, e))?;
            let path = staging.join(RECORD_FILE);
            let made = fsutil::write_atomic(&path, &json)
                .map_err(|e| StoreError::io(&path, e))
                .and_then(|()| fs::rename(&staging, &dir).map_err(|e| StoreError::io(&dir, e)));
            if let Err(err) = made {
                // On a full disk nothing of the refused VM is left to fill it further.
                let _ = fs::remove_dir_all(&staging);
                return Err(err);
            }
        }
        fsutil::sync_dir(&self.root).map_err(|e| StoreError::io(&self.root, e))?;
        Ok(json)
    }

    /// The memory half of [`insert`](Self::insert), for a VM that [`persist`](Self::persist)
    /// recorded: from now on reads see it.
    pub fn publish(&self, vm: Vm, json: Arc<[u8]>) {
        self.write_slots()
            .insert(vm.id, Arc::new(Slot::new(vm, json)));
        self.bump();
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
            let path = self.vm_dir(id).join(RECORD_FILE);
            fsutil::write_atomic(&path, &json).map_err(|e| StoreError::io(&path, e))?;
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
        Ok(())
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

    /// Each VM's canonical VMX path, status and phase as reads see them: what admission
    /// counts, without waiting on a record's disk write or copying a record.
    pub fn for_each_state(&self, mut visit: impl FnMut(&Path, Status, Phase)) {
        for (id, slot) in self.read_slots().iter() {
            let (status, phase) = {
                let visible = slot.json.read_unpoisoned();
                (visible.status, visible.phase)
            };
            visit(&self.canonical_vmx(*id), status, phase);
        }
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

    /// [`vmx_path`](Self::vmx_path) with the data folder's symlinks resolved, as
    /// [`crate::hypervisor::locks::canonical`] gives it for the VMX of a VM folder that is no link.
    fn canonical_vmx(&self, id: VmId) -> PathBuf {
        self.canonical_root
            .join(id.to_string())
            .join(format!("{id}.vmx"))
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
        }
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

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
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
