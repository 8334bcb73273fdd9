//! Which VMs run, as vmrun last said, kept in memory so that no request ever waits for a
//! `vmrun list`: admission, `/healthz` and `/metrics` read it; every `vmrun list` (the
//! reconciler's, the background refresher's, provisioning's) refreshes it; the server's own
//! starts, stops and deletes change it at once.
//!
//! A list that began before one of our own starts can end after it, without that VM: each
//! change is numbered, and a list's answer is applied only with the changes made since it
//! began laid over it (and not at all if a later-begun list has answered already).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::hypervisor::{Hypervisor, VmRef};
use crate::sys::condition::Condition;
use crate::sys::log::Level;
use crate::sys::sync::LockUnpoisoned;

#[derive(Debug)]
pub struct RunningVms {
    state: Mutex<State>,
    /// A failing `vmrun list` (`tart list`) is logged when it starts failing and when it
    /// answers again: the refresher meets it every `--list-interval`.
    trouble: Condition,
    /// How the log names the listing: `vmrun list`, `tart list`.
    listing: &'static str,
    /// The hypervisor refused a start for the host's own limit (tart: Apple's two macOS
    /// VMs): its words, when, and how many VMs ran then.
    full: Mutex<Option<HostFull>>,
}

#[derive(Debug)]
struct HostFull {
    message: String,
    at: Instant,
    running: Option<usize>,
}

/// How long a refusal for the host's limit counts without news: VMs the server does not
/// see (a person's own, in another tart home) may have stopped meanwhile.
const HOST_FULL_FOR: Duration = Duration::from_secs(60);

impl Default for RunningVms {
    fn default() -> Self {
        Self::listed_by("vmrun list")
    }
}

#[derive(Debug, Default)]
struct State {
    /// Canonical VMX paths; `None` before the first answer and while `vmrun list` fails.
    set: Option<HashSet<PathBuf>>,
    /// Numbers both list starts and our own changes, so that they can be ordered.
    seq: u64,
    /// The start number of the list whose answer `set` holds.
    applied: u64,
    /// Our own changes not yet known to be seen by an applied list: (number, VMX, runs).
    changes: Vec<(u64, PathBuf, bool)>,
    answered_at: Option<Instant>,
    /// Why the last list failed, and since when it has failed.
    failure: Option<(String, Instant)>,
}

/// What `/healthz` says of vmrun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListState {
    /// No `vmrun list` has answered yet.
    Unknown,
    Answered {
        running: usize,
        age: Duration,
    },
    Failing {
        error: String,
        since: Duration,
    },
}

/// Returned by [`RunningVms::begin`], handed back with the answer.
#[derive(Debug, Clone, Copy)]
pub struct ListTicket(u64);

impl RunningVms {
    pub fn new() -> Self {
        Self::default()
    }

    /// The running set of a hypervisor whose listing the log calls `listing`
    /// (`tart list`).
    pub fn listed_by(listing: &'static str) -> Self {
        Self {
            state: Mutex::default(),
            trouble: Condition::new(listing, Level::Warn).meaning(
                "admission counts VM records alone (VMs started outside osx-builder are not \
                 counted) until it answers",
            ),
            listing,
            full: Mutex::default(),
        }
    }

    /// The hypervisor refused to start a VM because the host runs as many as it allows:
    /// until one of the VMs that ran then stops (or [`HOST_FULL_FOR`] passes), admission
    /// refuses creates with `message`.
    pub fn note_host_full(&self, message: &str) {
        let running = self.lock().set.as_ref().map(HashSet::len);
        *self.full.lock_unpoisoned() = Some(HostFull {
            message: message.to_string(),
            at: Instant::now(),
            running,
        });
    }

    /// The hypervisor's words while the host counts as full.
    pub fn host_full(&self) -> Option<String> {
        let mut full = self.full.lock_unpoisoned();
        if full
            .as_ref()
            .is_some_and(|f| f.at.elapsed() >= HOST_FULL_FOR)
        {
            *full = None;
        }
        full.as_ref().map(|f| f.message.clone())
    }

    /// A VM stopped, or a listing shows `now` VMs: a slot may be free again.
    fn slot_freed(&self, now: Option<usize>) {
        let mut full = self.full.lock_unpoisoned();
        let freed = match (&*full, now) {
            (Some(f), Some(now)) => f.running.is_none_or(|then| now < then),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if freed {
            *full = None;
        }
    }

    /// How the log and `/healthz` name the listing (`vmrun list`, `tart list`).
    pub fn listing(&self) -> &'static str {
        self.listing
    }

    /// A `vmrun list` is about to run.
    pub fn begin(&self) -> ListTicket {
        let mut state = self.lock();
        state.seq += 1;
        ListTicket(state.seq)
    }

    /// The list begun with `ticket` answered `paths`.
    pub fn listed(&self, ticket: ListTicket, paths: &[PathBuf]) {
        let set: HashSet<PathBuf> = paths.iter().map(|p| canonical(p)).collect();
        let mut state = self.lock();
        if ticket.0 < state.applied {
            return;
        }
        let mut set = set;
        for (number, vmx, runs) in &state.changes {
            if *number > ticket.0 {
                apply(&mut set, vmx, *runs);
            }
        }
        state.changes.retain(|(number, _, _)| *number > ticket.0);
        state.set = Some(set);
        state.applied = ticket.0;
        state.answered_at = Some(Instant::now());
        let running = state.set.as_ref().map(HashSet::len);
        if state.failure.take().is_some() {
            self.trouble
                .ended("answers again; admission counts running VMs again");
        }
        drop(state);
        self.slot_freed(running);
    }

    /// The list begun with `ticket` failed with `code` (the error's code) and `error`:
    /// admission counts records alone until one answers.
    pub fn failed(&self, ticket: ListTicket, code: &str, error: &str) {
        let mut state = self.lock();
        if ticket.0 < state.applied {
            return;
        }
        state.applied = ticket.0;
        state.set = None;
        state.changes.clear();
        match &mut state.failure {
            Some((last, _)) => *last = error.to_string(),
            None => state.failure = Some((error.to_string(), Instant::now())),
        }
        // The error names the call already (`vmrun list: failed: ...`).
        let error = error
            .strip_prefix(self.listing)
            .and_then(|rest| rest.strip_prefix(": "))
            .unwrap_or(error);
        self.trouble.holds(code, error);
    }

    /// We powered the VM at `vmx` on (`true`) or off.
    pub fn changed(&self, vmx: &Path, runs: bool) {
        let vmx = canonical(vmx);
        let mut state = self.lock();
        state.seq += 1;
        let number = state.seq;
        if let Some(set) = &mut state.set {
            apply(set, &vmx, runs);
        }
        state.changes.push((number, vmx, runs));
        drop(state);
        if !runs {
            self.slot_freed(None);
        }
    }

    /// The running VMs' canonical VMX paths; `None` when vmrun cannot tell.
    pub fn snapshot(&self) -> Option<HashSet<PathBuf>> {
        self.lock().set.clone()
    }

    /// Whether the set holds `path` ([`VmRef::dir`] for the server's VMs).
    pub fn contains(&self, path: &Path) -> Option<bool> {
        let path = canonical(path);
        self.lock().set.as_ref().map(|set| set.contains(&path))
    }

    pub fn state(&self) -> ListState {
        let state = self.lock();
        if let Some((error, since)) = &state.failure {
            return ListState::Failing {
                error: error.clone(),
                since: since.elapsed(),
            };
        }
        match (&state.set, state.answered_at) {
            (Some(set), Some(at)) => ListState::Answered {
                running: set.len(),
                age: at.elapsed(),
            },
            _ => ListState::Unknown,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock_unpoisoned()
    }
}

/// Absolute, symlink-free form, so that `/var/...` and `/private/var/...` (macOS) compare
/// equal whichever the hypervisor prints.
pub fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// What a listing made now says runs, canonical; `None` when the hypervisor cannot tell.
pub fn running_set(hypervisor: &dyn Hypervisor) -> Option<HashSet<PathBuf>> {
    match hypervisor.list_running() {
        Ok(paths) => Some(paths.iter().map(|p| canonical(p)).collect()),
        // A failing listing is logged by the running set, once until it answers again.
        Err(err) => {
            crate::debug!("cannot tell which VMs run: {err}");
            None
        }
    }
}

/// Whether `vm` runs, as a listing made now says; `None` when the hypervisor cannot tell.
pub fn runs_now(hypervisor: &dyn Hypervisor, vm: &VmRef) -> Option<bool> {
    running_set(hypervisor).map(|set| set.contains(&canonical(&vm.dir)))
}

fn apply(set: &mut HashSet<PathBuf>, vmx: &Path, runs: bool) {
    if runs {
        set.insert(vmx.to_path_buf());
    } else {
        set.remove(vmx);
    }
}

/// Runs `list` every `interval` on a thread of its own, so that what requests read is never
/// older than that (plus one call's time).
pub fn start_refresher(list: Arc<dyn Fn() + Send + Sync>, interval: Duration) {
    let spawned = thread::Builder::new()
        .name("vmrun-list".into())
        .spawn(move || loop {
            thread::sleep(interval);
            list();
        });
    if let Err(err) = spawned {
        crate::error!(
            "cannot start the vmrun list thread: {err}; running VMs are seen at each reconcile only"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> PathBuf {
        PathBuf::from(format!("/nonexistent-osxb/{name}.vmx"))
    }

    #[test]
    fn our_changes_outlive_a_list_that_began_before_them() {
        let running = RunningVms::new();
        assert_eq!(running.snapshot(), None);
        assert_eq!(running.state(), ListState::Unknown);
        let first = running.begin();
        running.listed(first, &[p("a")]);
        let slow = running.begin();
        running.changed(&p("b"), true);
        running.changed(&p("a"), false);
        // The slow list saw neither change.
        running.listed(slow, &[p("a")]);
        let set = running.snapshot().unwrap();
        assert_eq!(set, [p("b")].into());
        // A list begun after the changes is the truth again.
        let fresh = running.begin();
        running.listed(fresh, &[p("c")]);
        assert_eq!(running.snapshot().unwrap(), [p("c")].into());
        assert!(matches!(
            running.state(),
            ListState::Answered { running: 1, .. }
        ));
    }

    #[test]
    fn an_older_answer_never_replaces_a_newer_one() {
        let running = RunningVms::new();
        let old = running.begin();
        let new = running.begin();
        running.listed(new, &[p("new")]);
        running.listed(old, &[p("old")]);
        assert_eq!(running.snapshot().unwrap(), [p("new")].into());
        running.failed(old, "vmrun-failed", "too late to matter");
        assert_eq!(running.contains(&p("new")), Some(true));
    }

    #[test]
    fn a_failing_list_makes_the_set_unknown_until_one_answers() {
        let running = RunningVms::new();
        let t = running.begin();
        running.listed(t, &[p("a")]);
        let t = running.begin();
        running.failed(t, "vmrun-failed", "Error: Unknown error");
        assert_eq!(running.snapshot(), None);
        assert!(
            matches!(running.state(), ListState::Failing { ref error, .. } if error.contains("Unknown"))
        );
        running.changed(&p("b"), true);
        let t = running.begin();
        running.listed(t, &[p("a"), p("b")]);
        assert_eq!(running.snapshot().unwrap().len(), 2);
        assert!(matches!(running.state(), ListState::Answered { .. }));
    }
}
