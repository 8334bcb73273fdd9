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

    pub fn is_draining(&self) -> bool {
        self.fleet.drain.is_draining()
    }
}
