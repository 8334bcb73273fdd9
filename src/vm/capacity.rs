//! Admission: how many VMs this host runs and how much disk it has left, checked before a
//! create is accepted, so that a refused create costs nothing (no record, no download, no
//! clone).

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::vm::{Phase, Status, VmStore};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// VMs at once; 0 for no limit.
    pub max_vms: u32,
    /// Bytes to keep free on the data folder's disk; 0 for no floor.
    pub min_free_disk: u64,
}

/// Why a create was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shortage {
    Vms {
        used: u64,
        limit: u64,
    },
    Disk {
        free: u64,
        floor: u64,
    },
    /// VM records of any status (failed ones included) at `--max-records`.
    Records {
        count: u64,
        limit: u64,
    },
    /// The hypervisor refused a start for the host's own limit (tart: Apple's licence,
    /// two macOS VMs per Mac, counting VMs the server does not see), in its words.
    Hypervisor {
        message: String,
    },
}

impl fmt::Display for Shortage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vms { used, limit } => write!(
                f,
                "this host has {used} VMs in use and its limit is {limit} (--max-vms; Apple's licence allows 2 macOS VMs per Mac)"
            ),
            Self::Disk { free, floor } => write!(
                f,
                "the data folder's disk has {free} bytes ({}) free, below the floor of {floor} bytes ({}) (--min-free-disk); unused gold images are being evicted, delete VMs or images to make room",
                gib(*free),
                gib(*floor)
            ),
            Self::Hypervisor { message } => write!(
                f,
                "the hypervisor refused to start another VM on this host ({message}): it runs as many as the host allows, some perhaps not this server's; the VM that was refused starts once a VM stops"
            ),
            Self::Records { count, limit } => write!(
                f,
                "this host keeps {count} VM records, failed and stopped ones included, and its limit is {limit} (--max-records); delete VMs you no longer need (failed ones go by themselves after --failed-retention)"
            ),
        }
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Whether one of our records holds a place: a VM being provisioned (it is about to run)
/// or running. Stopped and failed VMs do not, unless vmrun lists them as running, which
/// [`used`] adds; a VM being destroyed frees its place as soon as vmrun stops listing it.
fn holds_a_place(status: Status, phase: Phase) -> bool {
    matches!(status, Status::Provisioning | Status::Running) && phase != Phase::Deleting
}

/// VMs in use. With `running` (what vmrun lists, ours or not: a failed VM of ours still
/// running, a VM someone started by hand in Fusion, a VM of ours that runs again), those
/// plus our VMs being provisioned that it does not list: a record that says running but
/// that vmrun no longer lists was stopped behind our back and holds no place. Without it
/// (vmrun cannot tell), the records that hold a place.
pub fn used(store: &VmStore, running: Option<&HashSet<PathBuf>>) -> u64 {
    let mut used = running.map_or(0, |set| set.len() as u64);
    store.for_each_state(|dir, status, phase| {
        let counts = match running {
            Some(set) => {
                status == Status::Provisioning && phase != Phase::Deleting && !set.contains(dir)
            }
            None => holds_a_place(status, phase),
        };
        used += u64::from(counts);
    });
    used
}

/// Checks both limits for one more VM; returns the VMs in use. Runs no process: which VMs
/// run comes from [`Vmrun::running`], kept fresh in the background. `recording`: creates
/// admitted whose records are still being written, which no record shows yet and each of
/// which holds a place.
pub fn check(
    limits: Limits,
    store: &VmStore,
    running: Option<&HashSet<PathBuf>>,
    data_dir: &Path,
    recording: u64,
) -> Result<u64, Shortage> {
    check_disk(limits, data_dir)?;
    let used = used(store, running) + recording;
    if limits.max_vms == 0 {
        return Ok(used);
    }
    let limit = u64::from(limits.max_vms);
    if used >= limit {
        return Err(Shortage::Vms { used, limit });
    }
    Ok(used)
}

/// The free-disk floor alone. A disk whose free space cannot be read passes: `/healthz`
/// reports that, and refusing every create over it would turn a monitoring gap into an
/// outage.
pub fn check_disk(limits: Limits, data_dir: &Path) -> Result<(), Shortage> {
    if limits.min_free_disk == 0 {
        return Ok(());
    }
    match crate::sys::disk::free_bytes(data_dir) {
        Ok(free) if free < limits.min_free_disk => Err(Shortage::Disk {
            free,
            floor: limits.min_free_disk,
        }),
        Ok(_) => Ok(()),
        Err(err) => {
            crate::warn!("{err}; the free-disk floor is not checked");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::model::tests::sample;
    use crate::vm::VmId;

    #[test]
    fn counts_places_from_records_and_running_vms() {
        let root = std::env::temp_dir().join(format!("osxb-capacity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (store, _) = VmStore::open(&root).unwrap();
        let mut ids = Vec::new();
        for (status, phase) in [
            (Status::Provisioning, Phase::Downloading),
            (Status::Running, Phase::Ready),
            (Status::Stopped, Phase::Ready),
            (Status::Failed, Phase::Failed),
            (Status::Running, Phase::Deleting),
        ] {
            let mut vm = sample();
            vm.id = VmId::new();
            vm.status = status;
            vm.progress.phase = phase;
            ids.push(vm.id);
            store.insert(vm).unwrap();
        }
        assert_eq!(used(&store, None), 2);
        // The running VM of ours is not counted twice; the failed one that still runs and
        // a stranger's VM are.
        let running: HashSet<PathBuf> = [
            crate::hypervisor::running::canonical(&store.vm_dir(ids[1])),
            crate::hypervisor::running::canonical(&store.vm_dir(ids[3])),
            PathBuf::from("/Users/someone/Virtual Machines/other.vmx"),
        ]
        .into();
        assert_eq!(used(&store, Some(&running)), 4);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_disk_floor_refuses_with_the_numbers() {
        let dir = std::env::temp_dir();
        let no_floor = Limits {
            max_vms: 2,
            min_free_disk: 0,
        };
        assert_eq!(check_disk(no_floor, &dir), Ok(()));
        let huge = Limits {
            max_vms: 2,
            min_free_disk: u64::MAX,
        };
        match check_disk(huge, &dir) {
            Err(shortage @ Shortage::Disk { .. }) => {
                assert!(
                    shortage.to_string().contains("--min-free-disk"),
                    "{shortage}"
                )
            }
            other => panic!("expected a disk shortage, got {other:?}"),
        }
        let text = Shortage::Vms { used: 2, limit: 2 }.to_string();
        assert!(
            text.contains("2 VMs in use") && text.contains("limit is 2"),
            "{text}"
        );
    }
}
