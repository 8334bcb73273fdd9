//! What the fleet layer reads of this host to describe it to the others: its limits, its
//! gold images, its warm pools, its VMs. Read from memory; nothing here runs vmrun.

use crate::vm::Vm;

use super::Service;

/// A warm pool as the fleet sees it: its spec and its idle VMs ready to hand out.
pub struct PoolFacts {
    pub name: String,
    pub spec: super::pools::spec::PoolSpec,
    pub ready: u64,
}

impl Service {
    pub fn hypervisor_kind(&self) -> &'static str {
        self.hypervisor.kind()
    }

    /// `--max-vms`; 0 for no limit.
    pub fn max_vms(&self) -> u32 {
        self.fleet.limits.max_vms
    }

    /// Every VM record here, pool VMs included.
    pub fn vm_records(&self) -> Vec<Vm> {
        self.store.records()
    }

    /// Checksums of the gold images ready to clone.
    pub fn ready_images(&self) -> Vec<String> {
        let mut sums: Vec<String> = self
            .fleet
            .gold
            .list()
            .into_iter()
            .filter(|image| image.state == "ready")
            .map(|image| image.checksum)
            .collect();
        sums.sort();
        sums
    }

    pub fn pool_facts(&self) -> Vec<PoolFacts> {
        self.pools()
            .into_iter()
            .map(|view| PoolFacts {
                name: view.name,
                spec: view.spec,
                ready: view.ready,
            })
            .collect()
    }

    /// Bytes a gold image download may still take on the data folder's disk before it
    /// reaches `--min-free-disk`, rounded down to whole GiB: the fleet record is rewritten
    /// when this changes, so not for every byte a VM writes. `None` when the disk's free
    /// space cannot be read.
    pub fn disk_room(&self) -> Option<u64> {
        const GIB: u64 = 1 << 30;
        let free = crate::sys::disk::free_bytes(&self.fleet.data_dir).ok()?;
        let room = free.saturating_sub(self.fleet.limits.min_free_disk);
        Some(room / GIB * GIB)
    }

    pub fn is_draining(&self) -> bool {
        self.fleet.drain.is_draining()
    }
}
