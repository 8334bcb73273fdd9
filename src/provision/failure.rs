//! What becomes of a VM that fails: a VM that was started is stopped hard before the record
//! says `failed` (a failed VM that runs would hold a place under `--max-vms` unseen), unless
//! the operator asked to keep it (`?keep=true`, `--keep-failed`); and a VM whose clone
//! exists carries the tail of its `vmware.log`, which is what an operator reads first.

use crate::sys::cancel::Cancel;
use crate::vm::{Phase, Status, VmId};

use super::Provisioner;

/// Why a failed VM is left running, if it is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kept {
    /// `?keep=true` on create: until its own lease or `--failed-retention` ends it.
    Asked,
    /// `--keep-failed`: with a lease of that length from the failure.
    BySetting(std::time::Duration),
}

impl Provisioner {
    pub(super) fn fail_vm(&self, id: VmId, code: &str, message: String) {
        let Some(vm) = self.store.get(id) else {
            return;
        };
        let vm_ref = self.store.vm_ref(id);
        let was_started = vm.status == Status::Running
            || matches!(vm.progress.phase, Phase::Starting | Phase::WaitingForIp);
        let kept = match (was_started, vm.keep, self.settings.boot.keep_failed) {
            (false, _, _) => None,
            (true, true, _) => Some(Kept::Asked),
            (true, false, Some(length)) => Some(Kept::BySetting(length)),
            (true, false, None) => None,
        };
        match kept {
            None if was_started => self.stop_failed(id, &vm_ref),
            None => {}
            Some(Kept::Asked) => crate::warn!(
                "vm={id} failed but is left running for inspection (keep=true); DELETE it when done"
            ),
            Some(Kept::BySetting(length)) => crate::warn!(
                "vm={id} failed but is left running for inspection for {} s (--keep-failed)",
                length.as_secs()
            ),
        }
        // Read after the stop: the hypervisor writes the power-off to the log too.
        let tail = self.hypervisor.log_tail(&vm_ref);
        if let Some(tail) = &tail {
            let file = tail
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            crate::warn!(
                vm = id, code = code;
                "{} last {} lines of {}:",
                code,
                tail.lines.len(),
                tail.path.display()
            );
            for line in &tail.lines {
                crate::warn!(vm = id, code = code; "{file}| {line}");
            }
        }
        let log_tail = tail.map(|t| t.lines);
        let lease_end = match kept {
            Some(Kept::BySetting(length)) => {
                let ms = i64::try_from(length.as_millis()).unwrap_or(i64::MAX);
                Some(crate::sys::time::now_ms().saturating_add(ms))
            }
            _ => None,
        };
        self.record(id, |vm| {
            vm.fail(code, message);
            if let Some(error) = vm.error.as_mut() {
                error.log_tail = log_tail;
            }
            if kept.is_some() {
                vm.keep = true;
            }
            if let (Some(Kept::BySetting(length)), None) = (kept, vm.ttl) {
                // A lease has a length: a renew without its own ttl extends by this much.
                vm.ttl = Some(length.as_secs_f64().ceil().max(1.0) as u64);
            }
            if let Some(end) = lease_end {
                // A shorter lease the VM already had still ends it first.
                let current = vm
                    .expires_at
                    .as_deref()
                    .and_then(crate::sys::time::parse_rfc3339_ms);
                if current.is_none_or(|at| end < at) {
                    vm.expires_at = Some(crate::sys::time::rfc3339(
                        end.div_euclid(1000),
                        end.rem_euclid(1000) as u32,
                    ));
                }
            }
        });
    }

    /// Hard, since a guest that failed may have no Tools; a fresh cancel flag, since a
    /// failed VM must stop whatever else is going on.
    fn stop_failed(&self, id: VmId, vm: &crate::hypervisor::VmRef) {
        match self.hypervisor.stop(vm, true, &Cancel::new()) {
            Ok(()) => crate::info!("vm={id} stopped hard: a failed VM holds no place"),
            Err(err) => crate::warn!(
                "vm={id} failed, and stopping it hard failed too: {err}; the reconcile tries again"
            ),
        }
    }
}
