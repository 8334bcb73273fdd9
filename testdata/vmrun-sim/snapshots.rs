//! Snapshots, kept in `<vmx stem>.vmsd` beside the VMX in VMware's key = "value" shape.
//! Only names and ids are simulated: no memory files, no delta disks.

use crate::args::{too_many, vmx_and_rest};
use crate::error::SimError;
use crate::paths::VmPath;
use crate::state::{write_atomic, StateDir};
use crate::vmx::{self, Vmx};
use std::collections::BTreeMap;
use std::io::ErrorKind;

pub struct Snapshot {
    uid: u64,
    pub name: String,
}

pub struct Vmsd {
    last_uid: u64,
    pub snapshots: Vec<Snapshot>,
}

impl Vmsd {
    pub fn load(vm: &VmPath) -> Result<Vmsd, SimError> {
        let path = vm.sibling("vmsd");
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Ok(Vmsd {
                    last_uid: 0,
                    snapshots: Vec::new(),
                })
            }
            Err(e) => return Err(SimError::io("read", &path, e)),
        };
        let file = vmx::parse(&bytes).map_err(|_| SimError::Corrupt(vm.given.clone()))?;
        let mut last_uid = 0;
        // Keyed by the index in `snapshotN.*`, which orders snapshots as VMware lists them.
        let mut by_index: BTreeMap<u64, Snapshot> = BTreeMap::new();
        for (key, value) in file.entries() {
            let key = key.to_ascii_lowercase();
            if key == "snapshot.lastuid" {
                last_uid = value.parse().unwrap_or(0);
                continue;
            }
            let Some((index, field)) = key
                .strip_prefix("snapshot")
                .and_then(|rest| rest.split_once('.'))
            else {
                continue;
            };
            let Ok(index) = index.parse::<u64>() else {
                continue;
            };
            let entry = by_index.entry(index).or_insert(Snapshot {
                uid: 0,
                name: String::new(),
            });
            match field {
                "uid" => entry.uid = value.parse().unwrap_or(0),
                "displayname" => entry.name = value.to_string(),
                _ => {}
            }
        }
        let snapshots: Vec<Snapshot> = by_index.into_values().collect();
        let highest = snapshots.iter().map(|s| s.uid).max().unwrap_or(0);
        Ok(Vmsd {
            last_uid: last_uid.max(highest),
            snapshots,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.snapshots.iter().any(|s| s.name == name)
    }

    /// Appends a snapshot whose parent is the newest one, as taking a snapshot of the current
    /// state does.
    pub fn add(&mut self, name: &str) {
        self.last_uid += 1;
        self.snapshots.push(Snapshot {
            uid: self.last_uid,
            name: name.to_string(),
        });
    }

    pub fn save(&self, vm: &VmPath) -> Result<(), SimError> {
        let mut file = Vmx::new();
        file.set(".encoding", "UTF-8");
        file.set("snapshot.lastUID", &self.last_uid.to_string());
        if let Some(newest) = self.snapshots.last() {
            file.set("snapshot.current", &newest.uid.to_string());
        }
        file.set("snapshot.numSnapshots", &self.snapshots.len().to_string());
        let stem = vm.stem();
        let mut parent = None;
        for (index, snapshot) in self.snapshots.iter().enumerate() {
            let prefix = format!("snapshot{index}");
            file.set(&format!("{prefix}.uid"), &snapshot.uid.to_string());
            file.set(
                &format!("{prefix}.filename"),
                &format!("{stem}-Snapshot{}.vmsn", snapshot.uid),
            );
            file.set(&format!("{prefix}.displayName"), &snapshot.name);
            if let Some(parent_uid) = parent {
                file.set(&format!("{prefix}.parent"), &format!("{parent_uid}"));
            }
            file.set(&format!("{prefix}.type"), "1");
            parent = Some(snapshot.uid);
        }
        write_atomic(&vm.sibling("vmsd"), &file.to_bytes())
    }
}

pub fn snapshot(state: &StateDir, args: &[String]) -> Result<String, SimError> {
    let (vmx_arg, rest) = vmx_and_rest("snapshot", args)?;
    let name = match rest {
        [name] if !name.is_empty() => name,
        [] | [_] => {
            return Err(SimError::InvalidArguments(
                "'snapshot' needs a snapshot name".into(),
            ))
        }
        _ => return Err(too_many("snapshot")),
    };
    let vm = VmPath::new(vmx_arg)?;
    vmx::load(&vm)?;
    let _guard = state.lock_vm(&vm)?;
    let mut vmsd = Vmsd::load(&vm)?;
    if vmsd.contains(name) {
        return Err(SimError::SnapshotExists);
    }
    vmsd.add(name);
    vmsd.save(&vm)?;
    Ok(String::new())
}

pub fn list_snapshots(_state: &StateDir, args: &[String]) -> Result<String, SimError> {
    let (vmx_arg, rest) = vmx_and_rest("listSnapshots", args)?;
    if !rest.is_empty() {
        return Err(too_many("listSnapshots"));
    }
    let vm = VmPath::new(vmx_arg)?;
    vmx::load(&vm)?;
    let vmsd = Vmsd::load(&vm)?;
    let mut out = format!("Total snapshots: {}\n", vmsd.snapshots.len());
    for snapshot in &vmsd.snapshots {
        out.push_str(&snapshot.name);
        out.push('\n');
    }
    Ok(out)
}
