//! Adoption: a folder under `vms/` with a VM and no record of ours (a VM of the original Go
//! server, whose image the VM keeps as JSON, or one whose record was lost) becomes a record,
//! so it is listed, counted and deletable like any other.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::Service;
use crate::hypervisor::running::canonical;
use crate::hypervisor::{Hypervisor, VmRef};
use crate::image::{ChecksumType, ImageSpec};
use crate::provision::Job;
use crate::sys::sync::LockUnpoisoned;
use crate::vm::store::RECORD_FILE;
use crate::vm::{NetworkType, Phase, Progress, Status, Vm, VmId};

/// Builds a record for a VM folder that has a VM but no record of ours, from what the VM's
/// own files tell.
pub fn adopt(
    hypervisor: &dyn Hypervisor,
    dir: &Path,
    running: Option<&HashSet<PathBuf>>,
) -> Result<Vm, String> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("the folder name is not UTF-8")?;
    let id = VmId::parse(name).ok_or_else(|| "the folder name is not a VM id".to_string())?;
    let found = hypervisor.find_vm(&VmRef {
        id: id.to_string(),
        dir: dir.to_path_buf(),
    })?;
    let is_running = running.map(|set| set.contains(&canonical(dir)));
    let now = crate::sys::time::rfc3339_now();
    Ok(Vm {
        id,
        image: found.image.and_then(image_from_annotation),
        name: None,
        cpus: found.cpus.unwrap_or(1),
        memory: found.memory_mb.unwrap_or(0),
        network_type: found
            .network_type
            .as_deref()
            .and_then(NetworkType::parse)
            .unwrap_or_default(),
        headless: false,
        callback_url: None,
        ip_address: String::new(),
        status: match is_running {
            Some(true) => Status::Running,
            _ => Status::Stopped,
        },
        guest_os: found.guest_os,
        error: None,
        progress: Progress {
            phase: if is_running == Some(true) {
                Phase::WaitingForIp
            } else {
                Phase::Ready
            },
            ..Progress::default()
        },
        created_at: now.clone(),
        updated_at: now,
        ttl: None,
        expires_at: None,
        vmx_removed: Vec::new(),
        // Never given by a client of ours, and the original had no guestinfo to report.
        labels: Default::default(),
        guestinfo_keys: Vec::new(),
        keep: false,
        ip_source: None,
        // A folder without a record was never one of a pool's: its spec is unknown.
        pool: None,
    })
}

fn image_from_annotation(value: serde_json::Value) -> Option<ImageSpec> {
    let field = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let checksum_type = ChecksumType::parse(&field("checksum_type")?)?;
    Some(ImageSpec {
        url: field("url")?,
        checksum: field("checksum")?.to_ascii_lowercase(),
        checksum_type,
    })
}

impl Service {
    /// Folders in `vms/` without a record: adopted when they hold a VM, otherwise
    /// reported once. Never deleted: they may be someone's work.
    pub(super) fn adopt_orphans(&self, running: Option<&HashSet<PathBuf>>) {
        let Ok(entries) = std::fs::read_dir(self.store.root()) else {
            return;
        };
        // A create's folder appears before its map entry: under this lock such a folder's
        // VM is in `recording` until the store has it.
        let _creating = self.lock_creating();
        self.store.sweep_buried();
        for entry in entries.flatten() {
            let dir = entry.path();
            // A delete on its way out (creates hold `creating`, as this does).
            if !dir.is_dir() || crate::vm::store::is_transient(&entry.file_name()) {
                continue;
            }
            let id = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(VmId::parse);
            // Deleted while vmrun worked on its gold image: never a VM again.
            if id.is_some_and(|id| self.store.is_buried(id)) {
                continue;
            }
            // Checked now, not from a list taken before: a create may have just added it.
            if id.is_some_and(|id| {
                self.store.get(id).is_some() || self.recording().contains_key(&id)
            }) {
                continue;
            }
            if dir.join(RECORD_FILE).exists() {
                if !self.already_reported(&dir) {
                    crate::warn!(
                        "left alone: {} (its {RECORD_FILE} is not a valid record); fix or remove it by hand",
                        dir.display()
                    );
                }
                continue;
            }
            match adopt(self.hypervisor.as_ref(), &dir, running) {
                Ok(vm) => {
                    let id = vm.id;
                    let watch = vm.progress.phase == Phase::WaitingForIp;
                    match self.store.insert(vm) {
                        Ok(_) => {
                            crate::info!("vm={id} adopted from {}", dir.display());
                            if watch {
                                let _ = self.jobs.send(Job::WatchIp(id));
                            }
                        }
                        Err(err) => crate::error!("vm={id} cannot adopt: {err}"),
                    }
                }
                Err(reason) => {
                    if !self.already_reported(&dir) {
                        crate::warn!(
                            "left alone: {} ({reason}); remove it by hand if it is not a VM you need",
                            dir.display()
                        );
                    }
                }
            }
        }
    }

    /// True if `dir` was reported before; remembers it otherwise.
    fn already_reported(&self, dir: &Path) -> bool {
        let mut reported = self.reported.lock_unpoisoned();
        !reported.insert(dir.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::fake::FakeHypervisor;
    use crate::hypervisor::vmrun::vmx;
    use std::fs;

    #[test]
    fn adopts_a_go_server_vm_with_its_annotation() {
        let root = crate::sys::scratch::dir("adopt-adopt");
        let id = "282ee68a-2e4d-4bd7-9c0e-7f37e12fc489";
        let dir = root.join(id);
        fs::create_dir_all(&dir).unwrap();
        let image = r#"{"url":"http://h/i.tar.gz","checksum":"5CF00D380E28D02F30EFACEAFEF7C7C8BDEDAE33","checksum_type":"sha1"}"#;
        let vmx = format!(
            ".encoding = \"UTF-8\"\ndisplayName = \"{id}\"\nnumvcpus = \"4\"\nmemsize = \"2048\"\nguestOS = \"darwin14-64\"\nethernet0.connectionType = \"bridged\"\nannotation = \"{}\"\n",
            vmx::base64_encode(image.as_bytes())
        );
        fs::write(dir.join(format!("{id}.vmx")), vmx).unwrap();
        let vm = adopt(&FakeHypervisor::new(), &dir, Some(&HashSet::new())).unwrap();
        assert_eq!(vm.id.to_string(), id);
        assert_eq!((vm.cpus, vm.memory), (4, 2048));
        assert_eq!(vm.network_type, NetworkType::Bridged);
        assert_eq!(vm.status, Status::Stopped);
        let image = vm.image.unwrap();
        assert_eq!(image.checksum, "5cf00d380e28d02f30efaceafef7c7c8bdedae33");

        let running: HashSet<PathBuf> = [canonical(&dir)].into();
        let vm = adopt(&FakeHypervisor::new(), &dir, Some(&running)).unwrap();
        assert_eq!(vm.status, Status::Running);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refuses_folders_that_are_not_vms() {
        let root = crate::sys::scratch::dir("adopt-refuse");
        let dir = root.join("not-an-id");
        fs::create_dir_all(&dir).unwrap();
        assert!(adopt(&FakeHypervisor::new(), &dir, None)
            .unwrap_err()
            .contains("not a VM id"));
        let dir = root.join("282ee68a-2e4d-4bd7-9c0e-7f37e12fc489");
        fs::create_dir_all(&dir).unwrap();
        assert!(adopt(&FakeHypervisor::new(), &dir, None)
            .unwrap_err()
            .contains("no readable"));
        fs::remove_dir_all(&root).unwrap();
    }
}
