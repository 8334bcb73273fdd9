//! `clone SRC DST full|linked [-snapshot=NAME] [-cloneName=NAME]`, with the real tool's traps:
//! a linked clone without `-snapshot` adds a snapshot named `Clone` to SRC every time, and two
//! clones of one parent at once collide on `The file is already in use`.

use crate::error::SimError;
use crate::paths::VmPath;
use crate::snapshots::Vmsd;
use crate::state::{env_flag, env_ms, FileLock, StateDir};
use crate::vmx;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const CLONE_MS_ENV: &str = "VMRUN_SIM_CLONE_MS";
/// `1`: the first clone of each SRC that names a snapshot answers `Invalid snapshot name`
/// although SRC has (and lists) it.
pub const MISSES_SNAPSHOT_ENV: &str = "VMRUN_SIM_CLONE_MISSES_SNAPSHOT";
/// Beside SRC while a clone of it runs: `<SRC>.sim-clone-lock`.
pub const CLONE_LOCK_SUFFIX: &str = ".sim-clone-lock";

struct CloneArgs<'a> {
    src: &'a str,
    dst: &'a str,
    linked: bool,
    snapshot: Option<&'a str>,
    clone_name: Option<&'a str>,
}

fn parse(args: &[String]) -> Result<CloneArgs<'_>, SimError> {
    let (src, dst, kind, mut options) = match args {
        [src, dst, kind, options @ ..] => (src, dst, kind, options),
        _ => {
            return Err(SimError::InvalidArguments(
                "'clone' needs SRC.vmx DST.vmx full|linked".into(),
            ))
        }
    };
    let linked = match kind.as_str() {
        "linked" => true,
        "full" => false,
        other => {
            return Err(SimError::InvalidArguments(format!(
                "clone type must be full or linked, not '{other}'"
            )))
        }
    };
    let mut parsed = CloneArgs {
        src,
        dst,
        linked,
        snapshot: None,
        clone_name: None,
    };
    while let Some((option, rest)) = options.split_first() {
        let (name, value, rest) = match option.split_once('=') {
            Some((name, value)) => (name, value, rest),
            None => match rest.split_first() {
                Some((value, rest)) => (option.as_str(), value.as_str(), rest),
                None => {
                    return Err(SimError::InvalidArguments(format!(
                        "'{option}' needs a value"
                    )))
                }
            },
        };
        match name {
            "-snapshot" => parsed.snapshot = Some(value),
            "-cloneName" => parsed.clone_name = Some(value),
            _ => {
                return Err(SimError::InvalidArguments(format!(
                    "unknown clone option '{option}'"
                )))
            }
        }
        options = rest;
    }
    Ok(parsed)
}

pub fn clone(state: &StateDir, args: &[String]) -> Result<String, SimError> {
    let request = parse(args)?;
    let src = VmPath::new(request.src)?;
    let mut config = vmx::load(&src)?;
    if state.load(&src)?.is_some_and(|s| s.running) {
        return Err(SimError::PoweredOn);
    }
    let dst = VmPath::new(request.dst)?;
    if dst.abs.exists() {
        return Err(SimError::DestinationExists);
    }
    let mut lock_name = src.abs.clone().into_os_string();
    lock_name.push(CLONE_LOCK_SUFFIX);
    let _clone_lock = FileLock::try_take(Path::new(&lock_name))?.ok_or(SimError::InUse)?;

    if let Some(name) = request.snapshot {
        if !Vmsd::load(&src)?.contains(name) || misses_snapshot(state, &src)? {
            return Err(SimError::InvalidSnapshot(name.to_string()));
        }
    }
    std::thread::sleep(Duration::from_millis(env_ms(CLONE_MS_ENV, 0)?));

    let src_dir = src.dir();
    let mut disks = Vec::new();
    for (key, value) in config.disks() {
        let disk = vmx::resolve(&src_dir, &value);
        if !disk.is_file() {
            return Err(SimError::DiskMissing(disk.display().to_string()));
        }
        disks.push((key, disk));
    }
    if request.linked && request.snapshot.is_none() {
        let _guard = state.lock_vm(&src)?;
        let mut vmsd = Vmsd::load(&src)?;
        vmsd.add("Clone");
        vmsd.save(&src)?;
    }

    let dst_dir = dst.dir();
    fs::create_dir_all(&dst_dir).map_err(|e| SimError::io("create", &dst_dir, e))?;
    // Claim DST first so that two clones to one destination cannot both write it.
    let mut dst_file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&dst.abs)
    {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Err(SimError::DestinationExists),
        Err(e) => return Err(SimError::io("create", &dst.abs, e)),
    };
    let written = write_disks(&disks, request.linked, &dst_dir).and_then(|names| {
        for ((key, _), name) in disks.iter().zip(&names) {
            config.set(key, name);
        }
        let display_name = match request.clone_name {
            Some(name) => name.to_string(),
            None => format!("Clone of {}", src.given),
        };
        config.set("displayName", &vmx::escape_value(&display_name));
        dst_file
            .write_all(&config.to_bytes())
            .map_err(|e| SimError::io("write", &dst.abs, e))
    });
    if written.is_err() {
        let _ = fs::remove_file(&dst.abs);
    }
    written.map(|()| String::new())
}

/// With [`MISSES_SNAPSHOT_ENV`] on, true for the first such clone of SRC across all
/// processes (a marker per SRC in the state folder, made with `create_new`).
fn misses_snapshot(state: &StateDir, src: &VmPath) -> Result<bool, SimError> {
    if !env_flag(MISSES_SNAPSHOT_ENV) {
        return Ok(false);
    }
    let dir = state.path("snapshot-missed");
    fs::create_dir_all(&dir).map_err(|e| SimError::io("create", &dir, e))?;
    let marker = dir.join(&src.key);
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(SimError::io("create", &marker, e)),
    }
}

/// `<stem>-cl1.vmdk` in DST's folder per disk: a delta naming its parent for a linked clone,
/// a copy for a full one. Returns the new file names, as the clone's VMX refers to them.
fn write_disks(
    disks: &[(String, PathBuf)],
    linked: bool,
    dst_dir: &Path,
) -> Result<Vec<String>, SimError> {
    let mut names = Vec::new();
    for (_, disk) in disks {
        let stem = disk
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = format!("{stem}-cl1.vmdk");
        let target = dst_dir.join(&name);
        if linked {
            let descriptor = format!(
                "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\n\
                 parentCID=fffffffe\ncreateType=\"monolithicSparse\"\n\
                 parentFileNameHint=\"{}\"\n\n# Extent description\nRW 0 SPARSE \"{name}\"\n",
                disk.display()
            );
            fs::write(&target, descriptor).map_err(|e| SimError::io("write", &target, e))?;
        } else {
            fs::copy(disk, &target).map_err(|e| SimError::io("copy", disk, e))?;
        }
        names.push(name);
    }
    Ok(names)
}
