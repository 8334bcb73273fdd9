//! Keeping records true to the machine: VMs powered off or on behind our back, folders that
//! vanished, folders no record knows (the original Go server's VMs), and VMware lock folders
//! left by a crash.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::vm::VmId;

use crate::hypervisor::vmx::{self, Vmx};
use crate::hypervisor::Hypervisor;
use crate::image::{ChecksumType, ImageSpec};
use crate::vm::{NetworkType, Phase, Progress, Status, Vm};

/// Absolute, symlink-free form, so that `/var/...` and `/private/var/...` (macOS) compare
/// equal whichever vmrun prints.
pub fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// The VMX paths vmrun says are running, canonical; `None` when vmrun cannot tell.
pub fn running_set(hypervisor: &dyn Hypervisor) -> Option<HashSet<PathBuf>> {
    match hypervisor.list_running() {
        Ok(paths) => Some(paths.iter().map(|p| canonical(p)).collect()),
        Err(err) => {
            crate::warn!("cannot tell which VMs run: {err}");
            None
        }
    }
}

/// Before starting a VM: removes lock folders that no running VM can own. VMware leaves
/// them behind when the host or its process dies, and then refuses to start the VM with
/// "The file is already in use".
pub fn remove_stale_locks(hypervisor: &dyn Hypervisor, vmx_path: &Path) {
    if let Some(running) = running_set(hypervisor) {
        if let Some(dir) = vmx_path.parent() {
            remove_locks_in(dir, &running);
        }
    }
}

/// Removes `*.lck` folders directly in `dir` unless a running VM's VMX lives there.
pub fn remove_locks_in(dir: &Path, running: &HashSet<PathBuf>) -> Vec<PathBuf> {
    let dir = canonical(dir);
    if running
        .iter()
        .any(|vmx| vmx.parent() == Some(dir.as_path()))
    {
        return Vec::new();
    }
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let is_lock = path.extension().is_some_and(|ext| ext == "lck")
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_lock {
            continue;
        }
        match fs::remove_dir_all(&path) {
            Ok(()) => {
                crate::warn!(
                    "removed stale VMware lock {} (its VM is not running)",
                    path.display()
                );
                removed.push(path);
            }
            Err(err) => crate::warn!("cannot remove stale lock {}: {err}", path.display()),
        }
    }
    removed
}

/// Builds a record for a VM folder that has a VMX but no record of ours: a VM of the
/// original Go server (its image is base64 JSON in the VMX `annotation`), or one whose
/// record was lost.
pub fn adopt(dir: &Path, running: Option<&HashSet<PathBuf>>) -> Result<Vm, String> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("the folder name is not UTF-8")?;
    let id = VmId::parse(name).ok_or_else(|| "the folder name is not a VM id".to_string())?;
    let vmx_path = dir.join(format!("{id}.vmx"));
    let bytes = fs::read(&vmx_path).map_err(|e| format!("no readable {id}.vmx: {e}"))?;
    let vmx = Vmx::parse(&bytes).map_err(|e| format!("{}: {e}", vmx_path.display()))?;
    let number = |key: &str| vmx.get(key).and_then(|v| v.trim().parse::<u32>().ok());
    let is_running = running.map(|set| set.contains(&canonical(&vmx_path)));
    let now = crate::sys::log::rfc3339_now();
    Ok(Vm {
        id,
        image: vmx::decode_annotation_image(&vmx).and_then(image_from_annotation),
        name: None,
        cpus: number("numvcpus").unwrap_or(1),
        memory: number("memsize").unwrap_or(0),
        network_type: vmx
            .get("ethernet0.connectionType")
            .and_then(|t| NetworkType::parse(&t))
            .unwrap_or_default(),
        headless: false,
        callback_url: None,
        ip_address: String::new(),
        status: match is_running {
            Some(true) => Status::Running,
            _ => Status::Stopped,
        },
        guest_os: vmx.get("guestOS").unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("osxb-reconcile-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn adopts_a_go_server_vm_with_its_annotation() {
        let root = temp("adopt");
        let id = "282ee68a-2e4d-4bd7-9c0e-7f37e12fc489";
        let dir = root.join(id);
        fs::create_dir_all(&dir).unwrap();
        let image = r#"{"url":"http://h/i.tar.gz","checksum":"5CF00D380E28D02F30EFACEAFEF7C7C8BDEDAE33","checksum_type":"sha1"}"#;
        let vmx = format!(
            ".encoding = \"UTF-8\"\ndisplayName = \"{id}\"\nnumvcpus = \"4\"\nmemsize = \"2048\"\nguestOS = \"darwin14-64\"\nethernet0.connectionType = \"bridged\"\nannotation = \"{}\"\n",
            vmx::base64_encode(image.as_bytes())
        );
        fs::write(dir.join(format!("{id}.vmx")), vmx).unwrap();
        let vm = adopt(&dir, Some(&HashSet::new())).unwrap();
        assert_eq!(vm.id.to_string(), id);
        assert_eq!((vm.cpus, vm.memory), (4, 2048));
        assert_eq!(vm.network_type, NetworkType::Bridged);
        assert_eq!(vm.status, Status::Stopped);
        let image = vm.image.unwrap();
        assert_eq!(image.checksum, "5cf00d380e28d02f30efaceafef7c7c8bdedae33");

        let running: HashSet<PathBuf> = [canonical(&dir.join(format!("{id}.vmx")))].into();
        let vm = adopt(&dir, Some(&running)).unwrap();
        assert_eq!(vm.status, Status::Running);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refuses_folders_that_are_not_vms() {
        let root = temp("refuse");
        let dir = root.join("not-an-id");
        fs::create_dir_all(&dir).unwrap();
        assert!(adopt(&dir, None).unwrap_err().contains("not a VM id"));
        let dir = root.join("282ee68a-2e4d-4bd7-9c0e-7f37e12fc489");
        fs::create_dir_all(&dir).unwrap();
        assert!(adopt(&dir, None).unwrap_err().contains("no readable"));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn stale_locks_go_unless_the_vm_runs() {
        let root = temp("locks");
        fs::create_dir_all(root.join("a.vmx.lck")).unwrap();
        fs::write(root.join("a.vmx.lck/M1.lck"), "").unwrap();
        fs::create_dir_all(root.join("disk.vmdk.lck")).unwrap();
        fs::write(root.join("notes.lck"), "a file, not a lock folder").unwrap();
        let running: HashSet<PathBuf> = [canonical(&root).join("a.vmx")].into();
        assert!(remove_locks_in(&root, &running).is_empty());
        assert!(root.join("a.vmx.lck").exists());
        let removed = remove_locks_in(&root, &HashSet::new());
        assert_eq!(removed.len(), 2);
        assert!(!root.join("a.vmx.lck").exists());
        assert!(root.join("notes.lck").exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
