//! `vms/.journal`: the records of new VMs, appended and flushed together, so that creates at
//! once share one `fdatasync` and each answers as soon as the flush that covers it returns.
//! Writing a VM's folder the usual way costs three fsyncs, one after another, each waiting
//! behind the others' on a busy disk.
//!
//! A record stays here only until its VM has a folder: the provisioning job's first step,
//! the VM's first durable change, or the next start writes it. When no record is left only
//! here, the journal is emptied. A VM deleted before it had a folder gets a `forget` line,
//! so that a crash cannot bring it back.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::model::Vm;
use crate::sys::sync::LockUnpoisoned;
use crate::vm::VmId;

pub const JOURNAL_FILE: &str = ".journal";

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    Create(Box<Vm>),
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
    /// The VMs of `held` whose only durable record is their line here.
    pending: HashSet<VmId>,
}

impl Journal {
    /// Opens (or creates) `path` and returns the lines it holds; a line that does not parse,
    /// cut short by a crash in its write, was never acknowledged and is left out.
    pub fn open(path: &Path) -> io::Result<(Self, Vec<Line>)> {
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
                pending: HashSet::new(),
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
        let mut line = Vec::with_capacity(json.len() + 12);
        line.extend_from_slice(b"{\"create\":");
        line.extend_from_slice(json);
        line.extend_from_slice(b"}\n");
        self.append(&line, Some(id))
    }

    /// Before `id` is deleted: if its create line is here, a forget line follows it, durable
    /// when this returns `Ok`.
    pub fn forget(&self, id: VmId) -> io::Result<()> {
        if !self.lock().held.contains(&id) {
            return Ok(());
        }
        let mut line = serde_json::to_vec(&Line::Forget(id)).map_err(io::Error::other)?;
        line.push(b'\n');
        self.append(&line, None)?;
        let mut state = self.lock();
        state.held.remove(&id);
        state.pending.remove(&id);
        self.empty_if_settled(state);
        Ok(())
    }

    /// At start: `id`'s line was read from the journal and its folder could not be written;
    /// the line stays until it can.
    pub fn still_pending(&self, id: VmId) {
        let mut state = self.lock();
        state.held.insert(id);
        state.pending.insert(id);
    }

    /// `id` has a folder with its record now.
    pub fn settled(&self, id: VmId) {
        let mut state = self.lock();
        state.pending.remove(&id);
        self.empty_if_settled(state);
    }

    /// When every VM with a line here has a folder, no line is needed after a crash.
    fn empty_if_settled(&self, mut state: MutexGuard<'_, State>) {
        if !state.pending.is_empty() || state.len == 0 || state.flushing || state.broken {
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

    fn append(&self, line: &[u8], pending: Option<VmId>) -> io::Result<()> {
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
        if let Some(id) = pending {
            state.held.insert(id);
            state.pending.insert(id);
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
