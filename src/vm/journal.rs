//! `vms/.journal`: the records of new VMs, appended and flushed together, so that creates at
//! once share one `fdatasync` and each answers as soon as the flush that covers it returns.
//! Writing a VM's folder the usual way costs three fsyncs, one after another, each waiting
//! behind the others' on a busy disk.
//!
//! A record stays here only until its VM has a folder: the provisioning job's first step,
//! the VM's first durable change, or the next start writes it. When no record is left only
//! here, the journal is emptied. A VM deleted before it had a folder gets a `forget` line,
//! so that a crash cannot bring it back. On a host so busy that some VM always waits for its
//! folder, the journal is instead rewritten with only the lines still needed once it has
//! grown past [`COMPACT_AT`], so it never grows without bound.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::model::Vm;
use crate::sys::sync::LockUnpoisoned;
use crate::vm::VmId;

pub const JOURNAL_FILE: &str = ".journal";
/// The journal rewritten with the pending lines alone, renamed over it when whole.
const COMPACTING_FILE: &str = ".journal.new";
/// About a thousand creates' lines: rewriting then costs three fsyncs per thousand creates.
pub const COMPACT_AT: u64 = 1 << 20;

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    Create(Box<Vm>),
    Forget(VmId),
}

/// What an appended line changes in the journal's sets.
enum Effect {
    Create(VmId),
    Forget(VmId),
}

pub struct Journal {
    path: PathBuf,
    state: Mutex<State>,
    /// Signalled when a flush ends.
    flushed: Condvar,
}

struct State {
    /// `None` when the data folder is read-only: nothing can be recorded then.
    file: Option<Arc<File>>,
    len: u64,
    /// Lines appended so far, and how many of them a flush has made durable.
    written: u64,
    synced: u64,
    flushing: bool,
    /// A flush failed: what it covered may not be on disk, and after a failed fsync a later
    /// one does not prove otherwise. From then on every append fails and the store writes
    /// folders directly, until the next start.
    broken: bool,
    /// VMs with a create line here and no forget line: a crash would bring back any of them
    /// that has no folder, so a delete of one of them writes its forget line first.
    held: HashSet<VmId>,
    /// The VMs of `held` whose only durable record is their line here, with that line: what
    /// a rewrite keeps.
    pending: HashMap<VmId, Arc<[u8]>>,
    compact_at: u64,
}

impl Journal {
    /// Opens (or creates) `path` and returns the lines it holds; a line that does not parse,
    /// cut short by a crash in its write, was never acknowledged and is left out.
    pub fn open(path: &Path) -> io::Result<(Self, Vec<Line>)> {
        Self::open_compacting_at(path, COMPACT_AT)
    }

    fn open_compacting_at(path: &Path, compact_at: u64) -> io::Result<(Self, Vec<Line>)> {
        // A rewrite that a crash cut short: the journal it was to replace is whole.
        let _ = std::fs::remove_file(path.with_file_name(COMPACTING_FILE));
        let opened = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path);
        let (file, writable) = match opened {
            Ok(file) => (Some(file), true),
            // A read-only data folder: the server still serves what it has (see
            // `VmStore::open`), and creates try their folders, which say why they fail.
            Err(e) if is_read_only(&e) => {
                crate::warn!(
                    "cannot write {}: {e}; new VMs are recorded straight in their folders",
                    path.display()
                );
                (File::open(path).ok(), false)
            }
            Err(e) => return Err(e),
        };
        let mut lines = Vec::new();
        let mut torn = 0;
        if let Some(file) = &file {
            for text in BufReader::new(file).split(b'\n') {
                match serde_json::from_slice::<Line>(&text?) {
                    Ok(line) => lines.push(line),
                    Err(_) => torn += 1,
                }
            }
        }
        if torn > 0 {
            crate::warn!(
                "{}: left out {torn} line(s) cut short by a crash (their creates were never answered)",
                path.display()
            );
        }
        let len = match &file {
            Some(file) => file.metadata()?.len(),
            None => 0,
        };
        let journal = Self {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                file: file.filter(|_| writable).map(Arc::new),
                len,
                written: 0,
                synced: 0,
                flushing: false,
                broken: !writable,
                held: HashSet::new(),
                pending: HashMap::new(),
                compact_at,
            }),
            flushed: Condvar::new(),
        };
        Ok((journal, lines))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a new VM's record; durable when this returns `Ok`.
    pub fn record(&self, id: VmId, json: &[u8]) -> io::Result<()> {
        self.append(&create_line(json), Effect::Create(id))
    }

    /// Before `id` is deleted: if its create line is here, a forget line follows it, durable
    /// when this returns `Ok`.
    pub fn forget(&self, id: VmId) -> io::Result<()> {
        if !self.lock().held.contains(&id) {
            return Ok(());
        }
        let mut line = serde_json::to_vec(&Line::Forget(id)).map_err(io::Error::other)?;
        line.push(b'\n');
        self.append(&line, Effect::Forget(id))?;
        self.empty_if_settled(self.lock());
        Ok(())
    }

    /// At start: `id`'s line (its record `json`) was read from the journal and its folder
    /// could not be written; the line stays until it can.
    pub fn still_pending(&self, id: VmId, json: &[u8]) {
        let mut state = self.lock();
        state.held.insert(id);
        state.pending.insert(id, create_line(json));
    }

    /// `id` has a folder with its record now.
    pub fn settled(&self, id: VmId) {
        let mut state = self.lock();
        state.pending.remove(&id);
        self.empty_if_settled(state);
    }

    /// When every VM with a line here has a folder, no line is needed after a crash; when
    /// some still wait but the journal has grown large, only theirs are.
    fn empty_if_settled(&self, mut state: MutexGuard<'_, State>) {
        if state.len == 0 || state.flushing || state.broken {
            return;
        }
        if !state.pending.is_empty() {
            // Only with every line written flushed: a forget line still waiting for its
            // flush is in neither the old file for sure nor the new one.
            if state.len >= state.compact_at && state.synced == state.written {
                self.compact(&mut state);
            }
            return;
        }
        let Some(file) = state.file.clone() else {
            return;
        };
        match file.set_len(0).and_then(|()| file.sync_data()) {
            Ok(()) => {
                state.len = 0;
                state.held.clear();
            }
            Err(e) => crate::warn!(
                "cannot empty {}: {e}; its lines are replayed (and skipped) at the next start",
                self.path.display()
            ),
        }
    }

    /// Rewrites the journal with the lines of the pending VMs alone and renames it over the
    /// old one: a crash leaves one or the other, whole. Under the lock, with no flush running,
    /// so no line can be written to the old file meanwhile.
    fn compact(&self, state: &mut State) {
        let next = self.path.with_file_name(COMPACTING_FILE);
        let written = (|| {
            let mut file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .truncate(false)
                .open(&next)?;
            file.set_len(0)?;
            let mut len = 0;
            for line in state.pending.values() {
                file.write_all(line)?;
                len += line.len() as u64;
            }
            file.sync_all()?;
            std::fs::rename(&next, &self.path)?;
            if let Some(dir) = self.path.parent() {
                crate::sys::fsutil::sync_dir(dir)?;
            }
            Ok::<_, io::Error>((file, len))
        })();
        match written {
            Ok((file, len)) => {
                state.file = Some(Arc::new(file));
                state.len = len;
                state.held = state.pending.keys().copied().collect();
            }
            Err(e) => {
                let _ = std::fs::remove_file(&next);
                crate::warn!(
                    "cannot rewrite {} ({} bytes) with its {} pending line(s): {e}; it keeps growing until then",
                    self.path.display(),
                    state.len,
                    state.pending.len()
                );
            }
        }
    }

    /// Empties the journal after a start has given every record in it a folder.
    pub fn clear(&self) -> io::Result<()> {
        let mut state = self.lock();
        let file = state.file.clone().ok_or_else(broken)?;
        file.set_len(0)?;
        file.sync_data()?;
        state.len = 0;
        state.held.clear();
        Ok(())
    }

    fn append(&self, line: &[u8], effect: Effect) -> io::Result<()> {
        let mut state = self.lock();
        let file = match &state.file {
            Some(file) if !state.broken => file.clone(),
            _ => return Err(broken()),
        };
        if let Err(e) = (&*file).write_all(line) {
            // No half line for the next append to follow.
            let _ = file.set_len(state.len);
            return Err(e);
        }
        state.len += line.len() as u64;
        state.written += 1;
        // Under the lock that wrote the line: a truncation or a rewrite sees the line and
        // what it means together.
        match effect {
            Effect::Create(id) => {
                state.held.insert(id);
                state.pending.insert(id, Arc::from(line));
            }
            Effect::Forget(id) => {
                state.held.remove(&id);
                state.pending.remove(&id);
            }
        }
        let mine = state.written;
        loop {
            if state.synced >= mine {
                return Ok(());
            }
            if state.broken {
                return Err(broken());
            }
            if state.flushing {
                state = self
                    .flushed
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            // This thread flushes for every line written so far; those who wrote meanwhile
            // wait for it, then the next of them flushes for the lines written during it.
            state.flushing = true;
            let through = state.written;
            drop(state);
            let flushed = file.sync_data();
            state = self.lock();
            state.flushing = false;
            match flushed {
                Ok(()) => state.synced = through,
                Err(e) => {
                    state.broken = true;
                    crate::warn!(
                        "cannot flush {}: {e}; new VMs are recorded in their folders until the next start",
                        self.path.display()
                    );
                }
            }
            self.flushed.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock_unpoisoned()
    }
}

fn create_line(json: &[u8]) -> Arc<[u8]> {
    let mut line = Vec::with_capacity(json.len() + 12);
    line.extend_from_slice(b"{\"create\":");
    line.extend_from_slice(json);
    line.extend_from_slice(b"}\n");
    Arc::from(line)
}

fn broken() -> io::Error {
    io::Error::other("the journal of new VMs cannot be written")
}

fn is_read_only(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::PermissionDenied || err.raw_os_error() == Some(libc::EROFS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::scratch;

    fn vm_json(id: VmId) -> Vec<u8> {
        let vm = Vm {
            id,
            ..crate::vm::model::tests::sample()
        };
        serde_json::to_vec(&vm).unwrap()
    }

    #[test]
    fn lines_survive_a_reopen_and_a_torn_last_line_is_left_out() {
        let dir = scratch::dir("journal-reopen");
        let path = dir.join(JOURNAL_FILE);
        let (a, b) = (VmId::new(), VmId::new());
        {
            let (journal, lines) = Journal::open(&path).unwrap();
            assert!(lines.is_empty());
            journal.record(a, &vm_json(a)).unwrap();
            journal.record(b, &vm_json(b)).unwrap();
            journal.forget(b).unwrap();
            // Not in the journal: nothing to write.
            journal.forget(VmId::new()).unwrap();
        }
        // A crash in the middle of a write.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"create\":{\"id\":").unwrap();
        let (_, lines) = Journal::open(&path).unwrap();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(matches!(&lines[0], Line::Create(vm) if vm.id == a));
        assert!(matches!(&lines[1], Line::Create(vm) if vm.id == b));
        assert!(matches!(lines[2], Line::Forget(id) if id == b));
    }

    #[test]
    fn the_journal_empties_once_every_record_is_settled() {
        let dir = scratch::dir("journal-settle");
        let path = dir.join(JOURNAL_FILE);
        let (journal, _) = Journal::open(&path).unwrap();
        let (a, b) = (VmId::new(), VmId::new());
        journal.record(a, &vm_json(a)).unwrap();
        journal.record(b, &vm_json(b)).unwrap();
        journal.settled(a);
        assert!(std::fs::metadata(&path).unwrap().len() > 0);
        journal.settled(b);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn a_journal_that_never_empties_is_rewritten_with_its_pending_lines() {
        let dir = scratch::dir("journal-compact");
        let path = dir.join(JOURNAL_FILE);
        std::fs::write(dir.join(COMPACTING_FILE), b"a rewrite cut short").unwrap();
        let (journal, _) = Journal::open_compacting_at(&path, 8 << 10).unwrap();
        assert!(!dir.join(COMPACTING_FILE).exists());
        // One VM always waits for its folder, as on a host that never catches up.
        let waiting = VmId::new();
        journal.record(waiting, &vm_json(waiting)).unwrap();
        let deleted = VmId::new();
        journal.record(deleted, &vm_json(deleted)).unwrap();
        journal.forget(deleted).unwrap();
        let mut peak = 0;
        for _ in 0..40 {
            let id = VmId::new();
            journal.record(id, &vm_json(id)).unwrap();
            peak = peak.max(std::fs::metadata(&path).unwrap().len());
            journal.settled(id);
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len < 8 << 10, "{len} bytes, at most {peak} before");
        assert!(
            peak >= 8 << 10,
            "the journal never reached the limit: {peak}"
        );
        // Appends after a rewrite go to the new file.
        let late = VmId::new();
        journal.record(late, &vm_json(late)).unwrap();
        drop(journal);
        let (_, lines) = Journal::open(&path).unwrap();
        let created: Vec<VmId> = lines
            .iter()
            .filter_map(|line| match line {
                Line::Create(vm) => Some(vm.id),
                Line::Forget(_) => None,
            })
            .collect();
        assert!(created.contains(&waiting), "the waiting VM's line was lost");
        assert!(
            created.contains(&late),
            "a line written after the rewrite was lost"
        );
        assert!(!created.contains(&deleted), "a deleted VM's line came back");
    }

    #[test]
    fn appends_at_once_are_all_durable_and_whole() {
        let dir = scratch::dir("journal-burst");
        let path = dir.join(JOURNAL_FILE);
        let (journal, _) = Journal::open(&path).unwrap();
        let journal = Arc::new(journal);
        let ids: Vec<VmId> = (0..32).map(|_| VmId::new()).collect();
        let threads: Vec<_> = ids
            .iter()
            .map(|&id| {
                let journal = journal.clone();
                std::thread::spawn(move || journal.record(id, &vm_json(id)))
            })
            .collect();
        for thread in threads {
            thread.join().unwrap().unwrap();
        }
        let (_, lines) = Journal::open(&path).unwrap();
        let found: HashSet<VmId> = lines
            .iter()
            .map(|line| match line {
                Line::Create(vm) => vm.id,
                Line::Forget(id) => *id,
            })
            .collect();
        assert_eq!(found, ids.into_iter().collect());
    }
}
