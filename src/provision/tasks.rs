//! Per-VM coordination between the provisioning worker and DELETE: a cancel flag, and a
//! lock held while anyone runs vmrun against the VM, so that DELETE waits for the worker to
//! let go instead of racing it; except while the worker runs vmrun on the gold VM, which is
//! never killed (a clone killed half way leaves the gold VM locked for every later clone):
//! then DELETE hands the VM's removal to the worker and answers at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::vm::VmId;

use crate::sys::cancel::Cancel;
use crate::sys::sync::LockUnpoisoned;
use crate::vm::guestinfo::GuestInfo;

#[derive(Default)]
pub struct Task {
    pub cancel: Cancel,
    busy: Mutex<()>,
    /// The create's guestinfo until the worker takes it to write the VMX: the only place
    /// its values are kept, never the record. A restart before the VMX edit loses them,
    /// and such a VM is failed as `interrupted` in any case.
    guestinfo: Mutex<Option<GuestInfo>>,
    gold: Mutex<GoldWork>,
}

/// Whether the worker is in a vmrun call on the gold VM, and whether a DELETE came then.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum GoldWork {
    #[default]
    Outside,
    Inside,
    /// A DELETE came while inside: the VM is gone for clients, and the worker removes its
    /// files once the call ends.
    Handed,
}

impl Task {
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.busy.lock_unpoisoned()
    }

    /// The VM, unless a worker or a DELETE holds it now.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, ()>> {
        match self.busy.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    pub fn hold_guestinfo(&self, guestinfo: GuestInfo) {
        *self.guestinfo.lock_unpoisoned() = Some(guestinfo);
    }

    pub fn take_guestinfo(&self) -> Option<GuestInfo> {
        self.guestinfo.lock_unpoisoned().take()
    }

    /// The worker, holding the gold lock: from now on a DELETE hands the removal over
    /// instead of cancelling. False when a DELETE came first (the cancel flag is checked
    /// under the same lock a DELETE's hand-over takes, so one of them wins).
    pub fn enter_gold(&self) -> bool {
        let mut gold = self.gold.lock_unpoisoned();
        if self.cancel.is_cancelled() {
            return false;
        }
        *gold = GoldWork::Inside;
        true
    }

    /// The worker, its gold call over: true when a DELETE handed it the VM's removal.
    pub fn leave_gold(&self) -> bool {
        let mut gold = self.gold.lock_unpoisoned();
        if *gold == GoldWork::Inside {
            *gold = GoldWork::Outside;
        }
        *gold == GoldWork::Handed
    }

    /// True once a DELETE handed the VM's removal to the worker.
    pub fn is_handed(&self) -> bool {
        *self.gold.lock_unpoisoned() == GoldWork::Handed
    }

    /// DELETE, after setting the cancel flag: when the worker is in a gold call, runs
    /// `record` (the durable mark that the VM is deleted) and hands the removal of its
    /// files to the worker; `None` when the worker is elsewhere (DELETE waits for it as
    /// usual). The worker cannot leave the call meanwhile, so it always sees the mark.
    pub fn hand_over<E>(&self, record: impl FnOnce() -> Result<(), E>) -> Option<Result<(), E>> {
        let mut gold = self.gold.lock_unpoisoned();
        if *gold != GoldWork::Inside {
            return None;
        }
        let recorded = record();
        if recorded.is_ok() {
            *gold = GoldWork::Handed;
        }
        Some(recorded)
    }
}

#[derive(Default)]
pub struct Tasks {
    map: Mutex<HashMap<VmId, Arc<Task>>>,
}

impl Tasks {
    pub fn get(&self, id: VmId) -> Arc<Task> {
        let mut map = self.map.lock_unpoisoned();
        map.entry(id).or_default().clone()
    }

    /// True while a worker or a DELETE holds the VM; reconcile leaves such VMs alone, since
    /// their state is changing under its feet.
    pub fn is_busy(&self, id: VmId) -> bool {
        let task = self.get(id);
        let busy = task.busy.try_lock().is_err();
        busy
    }

    pub fn forget(&self, id: VmId) {
        let mut map = self.map.lock_unpoisoned();
        map.remove(&id);
    }
}
