//! The allow-list a VMX must pass before VMware sees it: an image comes from an API client,
//! and its VMX can name any file of the host (a shared folder on `/`, a serial port
//! writing to `~/.ssh/authorized_keys`, another VM's disk). Each finding names a device or
//! a key; it is removed from the clone, or refuses the image with `--strict-vmx`.

use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::hypervisor::vmrun::vmx::Vmx;

/// What the allow-list did to a VMX.
pub enum VmxVerdict {
    /// Lines removed (empty when the VMX was clean).
    Cleaned(Vec<String>),
    /// `--strict-vmx` and lines that would have been removed.
    Refused(Vec<String>),
}

/// The lines of the VMX at `vmx_path` that the allow-list refuses: files may be under
/// `own` or, for a linked clone, under its gold folder `parent`.
pub fn inspect_vmx(
    vmx_path: &Path,
    own: &Path,
    parent: Option<&Path>,
) -> Result<(Vmx, Vec<Finding>), String> {
    let bytes = std::fs::read(vmx_path).map_err(|e| e.to_string())?;
    let vmx = Vmx::parse(&bytes).map_err(|e| e.to_string())?;
    let dir = vmx_path.parent().unwrap_or(Path::new("/"));
    let findings = check(&vmx, dir, &Allowed { own, parent });
    Ok((vmx, findings))
}

/// Checks a clone's VMX and removes what the allow-list refuses, unless `strict` (then
/// nothing is written).
pub fn enforce_vmx(
    vmx_path: &Path,
    parent: Option<&Path>,
    strict: bool,
) -> Result<VmxVerdict, String> {
    let own = vmx_path.parent().unwrap_or(Path::new("/"));
    let (mut vmx, findings) = inspect_vmx(vmx_path, own, parent)?;
    let lines: Vec<String> = findings.iter().map(Finding::line).collect();
    if findings.is_empty() {
        return Ok(VmxVerdict::Cleaned(lines));
    }
    if strict {
        return Ok(VmxVerdict::Refused(lines));
    }
    remove(&mut vmx, &findings);
    crate::sys::fsutil::write_atomic(vmx_path, &vmx.to_bytes()).map_err(|e| e.to_string())?;
    Ok(VmxVerdict::Cleaned(lines))
}

/// The message of `image-vmx-unsafe`.
pub fn unsafe_vmx_message(lines: &[String]) -> String {
    format!(
        "the image's VMX has {} line(s) that reach outside the VM (refused by --strict-vmx): {}; remove them from the image, or run the server without --strict-vmx to have them removed from each clone",
        lines.len(),
        lines.join("; ")
    )
}

/// One line that may not reach VMware, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The key as spelled in the file.
    pub key: String,
    pub value: String,
    pub why: &'static str,
}

impl Finding {
    /// `key = "value"` (why), cut to a length fit for a message or a log line.
    pub fn line(&self) -> String {
        let value: String = self.value.chars().take(120).collect();
        let more = if value.len() < self.value.len() {
            "…"
        } else {
            ""
        };
        format!("{} = \"{value}{more}\" ({})", self.key, self.why)
    }
}

/// Folders the VMX's files may be in: its own, and for a linked clone its gold image's.
pub struct Allowed<'a> {
    pub own: &'a Path,
    pub parent: Option<&'a Path>,
}

/// The largest disk descriptor read; a bigger `.vmdk` is a disk's data, not a descriptor.
const MAX_DESCRIPTOR: u64 = 64 * 1024;

/// Keys whose value is a host path, besides those ending in `.filename`, `.filepath`.
const PATH_KEYS: &[&str] = &[
    "nvram",
    "extendedconfigfile",
    "workingdir",
    "suspend.directory",
    "checkpoint.vmstate",
    "sched.swap.dir",
    "snapshot.redologdir",
    "log.filename",
    "vmxstats.filename",
];

/// Every line of `vmx` that must go, in file order. `vmx_dir` is the VMX's folder (relative
/// names resolve against it).
pub fn check(vmx: &Vmx, vmx_dir: &Path, allowed: &Allowed<'_>) -> Vec<Finding> {
    let keys: Vec<String> = vmx.keys().map(str::to_string).collect();
    let mut findings = Vec::new();
    // Devices removed whole: their other lines (`present`, `fileType`) go with them.
    let mut devices: Vec<String> = Vec::new();
    for key in &keys {
        let value = vmx.get(key).unwrap_or_default();
        let lower = key.to_ascii_lowercase();
        if let Some(why) = refused_key(&lower, &value) {
            findings.push(finding(key, &value, why));
            continue;
        }
        if let Some(device) = port_device(&lower) {
            let file_type = vmx
                .get(&format!("{device}.fileType"))
                .unwrap_or_default()
                .to_ascii_lowercase();
            let present = vmx
                .get(&format!("{device}.present"))
                .is_none_or(|v| !v.eq_ignore_ascii_case("false"));
            if present && file_type != "thinprint" {
                push_device(&mut devices, device);
                findings.push(finding(key, &value, "host file, pipe or device port"));
                continue;
            }
        }
        if lower.ends_with(".devicetype") && is_passthrough_type(&value) {
            if let Some((device, _)) = lower.rsplit_once('.') {
                push_device(&mut devices, device);
            }
            findings.push(finding(key, &value, "host device passthrough"));
            continue;
        }
        if lower == "filesearchpath" {
            let outside = value
                .split(';')
                .filter(|p| !p.trim().is_empty())
                .any(|p| !inside(&resolve(vmx_dir, p.trim()), allowed));
            if outside {
                findings.push(finding(key, &value, "search path outside the VM's folders"));
            }
            continue;
        }
        if is_path_key(&lower) && is_path_value(&lower, &value) {
            let path = resolve(vmx_dir, &value);
            let why = if !inside(&path, allowed) {
                Some("file outside the VM's folders")
            } else {
                descriptor_escapes(&path, allowed)
            };
            if let Some(why) = why {
                if let Some((device, _)) = lower.rsplit_once('.') {
                    if is_disk_device(device) {
                        push_device(&mut devices, device);
                    }
                }
                findings.push(finding(key, &value, why));
            }
        }
    }
    // The other lines of a removed device, so that no half-device is left behind.
    for key in &keys {
        let lower = key.to_ascii_lowercase();
        let of_device = devices.iter().any(|d| {
            lower
                .strip_prefix(d.as_str())
                .is_some_and(|r| r.starts_with('.'))
        });
        if of_device && !findings.iter().any(|f| f.key == *key) {
            let value = vmx.get(key).unwrap_or_default();
            findings.push(finding(key, &value, "part of a removed device"));
        }
    }
    let order = |k: &str| keys.iter().position(|x| x == k).unwrap_or(usize::MAX);
    findings.sort_by_key(|f| order(&f.key));
    findings
}

/// Removes the lines of `findings` from `vmx`.
pub fn remove(vmx: &mut Vmx, findings: &[Finding]) {
    for f in findings {
        vmx.remove(&f.key);
    }
}

fn finding(key: &str, value: &str, why: &'static str) -> Finding {
    Finding {
        key: key.to_string(),
        value: value.to_string(),
        why,
    }
}

fn push_device(devices: &mut Vec<String>, device: &str) {
    if !devices.iter().any(|d| d == device) {
        devices.push(device.to_string());
    }
}

/// Keys refused whatever their value (lowercase `key`).
fn refused_key(key: &str, value: &str) -> Option<&'static str> {
    if key.starts_with("sharedfolder") {
        return Some("shared folder of the host");
    }
    if key.starts_with("isolation.tools.hgfs") {
        // Turning host-guest file sharing off is what we want anyway.
        let disables = key.ends_with(".disable") && value.eq_ignore_ascii_case("true");
        return (!disables).then_some("host-guest file sharing");
    }
    if key.starts_with("pcipassthru") || key.starts_with("usb.autoconnect.") {
        return Some("host device passthrough");
    }
    if key.starts_with("remotedisplay.") || key.starts_with("debugstub.") {
        return Some("listener on the host");
    }
    None
}

/// `serial0.fileName` → `serial0`: ports whose backing is a host file, pipe or device.
fn port_device(key: &str) -> Option<&str> {
    let (device, _) = key.split_once('.')?;
    let digits = device
        .strip_prefix("serial")
        .or_else(|| device.strip_prefix("parallel"))?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(device)
}

fn is_passthrough_type(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "cdrom-raw" | "atapi-cdrom" | "scsi-passthru" | "rawdisk" | "plaindisk" | "device"
    )
}

/// `scsi0:1`, `sata0:0`, `nvme0:0`, `ide1:0`, `floppy0`: devices backed by a disk file.
fn is_disk_device(device: &str) -> bool {
    ["scsi", "sata", "nvme", "ide", "floppy"]
        .iter()
        .any(|p| device.starts_with(p))
}

fn is_path_key(key: &str) -> bool {
    key.ends_with(".filename") || key.ends_with(".filepath") || PATH_KEYS.contains(&key)
}

/// Values of path keys that name no file: empty ones, and `sound.fileName = "-1"` (the
/// default sound device).
fn is_path_value(key: &str, value: &str) -> bool {
    let value = value.trim();
    !(value.is_empty() || (key.starts_with("sound.") && value == "-1"))
}

/// `value` against `dir`, with `..` and `.` folded and symlinks of the part that exists
/// resolved, so that neither can lead outside a folder that the path seems to be in.
pub fn resolve(dir: &Path, value: &str) -> PathBuf {
    let joined = dir.join(value);
    let mut folded = PathBuf::new();
    for part in joined.components() {
        match part {
            Component::ParentDir => {
                folded.pop();
            }
            Component::CurDir => {}
            other => folded.push(other),
        }
    }
    canonical_prefix(&folded)
}

/// The longest existing ancestor of `path` made canonical, with the rest appended.
fn canonical_prefix(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut head = path.to_path_buf();
    loop {
        if let Ok(real) = fs::canonicalize(&head) {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (head.file_name().map(|n| n.to_os_string()), head.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                head = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

fn inside(path: &Path, allowed: &Allowed<'_>) -> bool {
    let within = |dir: &Path| path.starts_with(canonical_prefix(dir));
    within(allowed.own) || allowed.parent.is_some_and(within)
}

/// A disk descriptor's extents and parent must be inside the allowed folders too: a VMX
/// line inside the folder can name a descriptor whose extent is `/dev/disk0`.
fn descriptor_escapes(path: &Path, allowed: &Allowed<'_>) -> Option<&'static str> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_DESCRIPTOR {
        return None;
    }
    let text = fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&text);
    if !text.starts_with("# Disk DescriptorFile") {
        return None;
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    for line in text.lines().map(str::trim) {
        let named = if let Some(rest) = line.strip_prefix("parentFileNameHint=") {
            Some(rest.trim().trim_matches('"'))
        } else if line.starts_with("RW ")
            || line.starts_with("RDONLY ")
            || line.starts_with("NOACCESS ")
        {
            line.split('"').nth(1)
        } else {
            None
        };
        if let Some(name) = named.filter(|n| !n.is_empty()) {
            if !inside(&resolve(dir, name), allowed) {
                return Some("disk whose descriptor names a file outside the VM's folders");
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(tag: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("osxb-vmx-policy-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("vms/me")).unwrap();
        fs::create_dir_all(dir.join("vms/other")).unwrap();
        fs::create_dir_all(dir.join("gold/abc")).unwrap();
        Scratch(dir)
    }

    /// Kept, removed and refused keys: `None` means the line is kept.
    #[test]
    fn allow_list_table() {
        let s = scratch("table");
        let root = &s.0;
        let own = root.join("vms/me");
        let gold = root.join("gold/abc");
        fs::write(
            own.join("disk-cl1.vmdk"),
            format!(
                "# Disk DescriptorFile\nparentFileNameHint=\"{}\"\nRW 0 SPARSE \"disk-cl1.vmdk\"\n",
                gold.join("disk.vmdk").display()
            ),
        )
        .unwrap();
        fs::write(
            own.join("evil-cl1.vmdk"),
            format!(
                "# Disk DescriptorFile\nparentFileNameHint=\"{}\"\nRW 0 SPARSE \"evil-cl1.vmdk\"\n",
                root.join("vms/other/gold-cl1.vmdk").display()
            ),
        )
        .unwrap();
        fs::write(
            own.join("raw.vmdk"),
            "# Disk DescriptorFile\nRW 100 FLAT \"/dev/disk0\" 0\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc", own.join("link")).unwrap();
        let other = root.join("vms/other/gold-cl1.vmdk");
        let table: &[(&str, &str, Option<&str>)] = &[
            ("displayName", "x", None),
            ("memsize", "2048", None),
            ("guestOS", "darwin21-64", None),
            ("ethernet0.connectionType", "nat", None),
            ("scsi0:0.fileName", "disk-cl1.vmdk", None),
            ("nvram", "me.nvram", None),
            ("sound.fileName", "-1", None),
            ("isolation.tools.hgfs.disable", "TRUE", None),
            ("serial1.fileType", "thinprint", None),
            ("serial1.present", "TRUE", Some("port")),
            ("sharedFolder0.hostPath", "/", Some("shared folder")),
            ("sharedFolder0.writeAccess", "TRUE", Some("shared folder")),
            (
                "isolation.tools.hgfs.disable",
                "FALSE",
                Some("file sharing"),
            ),
            ("serial0.fileType", "file", Some("port")),
            (
                "serial0.fileName",
                "../../.ssh/authorized_keys",
                Some("port"),
            ),
            ("parallel0.fileType", "pipe", Some("port")),
            ("scsi0:1.fileName", other.to_str().unwrap(), Some("outside")),
            (
                "scsi0:2.fileName",
                "../other/gold-cl1.vmdk",
                Some("outside"),
            ),
            ("scsi0:3.fileName", "evil-cl1.vmdk", Some("descriptor")),
            ("scsi0:4.fileName", "raw.vmdk", Some("descriptor")),
            ("scsi0:5.fileName", "link/passwd", Some("outside")),
            ("ide1:0.deviceType", "cdrom-raw", Some("passthrough")),
            ("pciPassthru0.present", "TRUE", Some("passthrough")),
            (
                "usb.autoConnect.device0",
                "0x1234:0x5678",
                Some("passthrough"),
            ),
            ("RemoteDisplay.vnc.enabled", "TRUE", Some("listener")),
            ("nvram", "/etc/passwd", Some("outside")),
            ("fileSearchPath", "/;.", Some("search path")),
            ("fileSearchPath", ".", None),
            ("ide1:0.fileName", "gold-disk.iso", None),
        ];
        for (key, value, want) in table {
            let text = format!(".encoding = \"UTF-8\"\n{key} = \"{value}\"\n");
            let vmx = Vmx::parse(text.as_bytes()).unwrap();
            let allowed = Allowed {
                own: &own,
                parent: Some(&gold),
            };
            let found = check(&vmx, &own, &allowed);
            match want {
                None => assert!(found.is_empty(), "{key} = {value}: {found:?}"),
                Some(why) => {
                    assert_eq!(found.len(), 1, "{key} = {value}: {found:?}");
                    assert!(found[0].why.contains(why), "{key} = {value}: {found:?}");
                    assert!(found[0].line().starts_with(key), "{}", found[0].line());
                }
            }
        }
    }

    #[test]
    fn a_removed_device_takes_all_its_lines() {
        let s = scratch("device");
        let own = s.0.join("vms/me");
        let text = ".encoding = \"UTF-8\"\nserial0.present = \"TRUE\"\nserial0.fileType = \"file\"\nserial0.fileName = \"/tmp/x\"\nscsi0:1.present = \"TRUE\"\nscsi0:1.fileName = \"/x/y.vmdk\"\nscsi0:10.present = \"TRUE\"\nmemsize = \"4096\"\n";
        let mut vmx = Vmx::parse(text.as_bytes()).unwrap();
        let found = check(
            &vmx,
            &own,
            &Allowed {
                own: &own,
                parent: None,
            },
        );
        let keys: Vec<&str> = found.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "serial0.present",
                "serial0.fileType",
                "serial0.fileName",
                "scsi0:1.present",
                "scsi0:1.fileName"
            ]
        );
        remove(&mut vmx, &found);
        let left = String::from_utf8(vmx.to_bytes()).unwrap();
        assert_eq!(
            left,
            ".encoding = \"UTF-8\"\nscsi0:10.present = \"TRUE\"\nmemsize = \"4096\"\n"
        );
    }
}
