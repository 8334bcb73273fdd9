//! Per-VM coordination between the provisioning worker and DELETE: a cancel flag, and a
//! lock held while anyone runs vmrun against the VM, so that DELETE waits for the worker to
//! let go instead of racing it.

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
}

impl Task {
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.busy.lock_unpoisoned()
    }

    pub fn hold_guestinfo(&self, guestinfo: GuestInfo) {
        *self.guestinfo.lock_unpoisoned() = Some(guestinfo);
    }

    pub fn take_guestinfo(&self) -> Option<GuestInfo> {
        self.guestinfo.lock_unpoisoned().take()
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
