//! The simulator's failures. Most carry the exact text the real vmrun prints, because the
//! server under test matches on those texts.

use std::fmt;
use std::path::Path;

#[derive(Debug)]
pub enum SimError {
    /// The VMX argument names no file.
    NotFound(String),
    /// The VMX exists but does not parse (BOM, bad line, duplicate key).
    Corrupt(String),
    /// A lock held elsewhere: a foreign `.lck` folder or a clone of the same parent running.
    InUse,
    NotPoweredOn(String),
    /// deleteVM or clone of a VM that runs.
    PoweredOn,
    ToolsNotRunning(String),
    SnapshotExists,
    InvalidSnapshot(String),
    DestinationExists,
    DiskMissing(String),
    UnrecognizedCommand(String),
    InvalidArguments(String),
    /// A `fail` fault rule fired.
    Injected(String),
    /// `VMRUN_SIM_STATE` is missing: the simulator has nowhere to keep its state.
    NoStateDir,
    /// The simulator itself is misused or its state folder is broken: never a vmrun text.
    Sim(String),
}

impl SimError {
    pub fn io(what: &str, path: &Path, err: std::io::Error) -> SimError {
        SimError::Sim(format!("cannot {what} {}: {err}", path.display()))
    }
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::NotFound(vmx) => {
                write!(
                    f,
                    "Cannot open VM: {vmx}, The virtual machine cannot be found"
                )
            }
            SimError::Corrupt(vmx) => write!(
                f,
                "Cannot open VM: {vmx}, Cannot read the virtual machine configuration file"
            ),
            SimError::InUse => f.write_str("The file is already in use"),
            SimError::NotPoweredOn(vmx) => {
                write!(f, "The virtual machine is not powered on: {vmx}")
            }
            SimError::PoweredOn => {
                f.write_str("The virtual machine should not be powered on. It is already running.")
            }
            SimError::ToolsNotRunning(vmx) => write!(
                f,
                "The VMware Tools are not running in the virtual machine: {vmx}"
            ),
            SimError::SnapshotExists => f.write_str("A snapshot with the name already exists"),
            SimError::InvalidSnapshot(name) => write!(f, "Invalid snapshot name '{name}'"),
            SimError::DestinationExists => f.write_str(
                "The virtual machine cannot be cloned because the destination already exists",
            ),
            SimError::DiskMissing(disk) => write!(
                f,
                "Cannot open the disk '{disk}' or one of the snapshot disks it depends on."
            ),
            SimError::UnrecognizedCommand(cmd) => write!(f, "Unrecognized command: {cmd}"),
            SimError::InvalidArguments(why) => write!(f, "Invalid argument: {why}"),
            SimError::Injected(message) => f.write_str(message),
            SimError::NoStateDir => f.write_str("VMRUN_SIM_STATE is not set"),
            SimError::Sim(message) => write!(f, "vmrun-sim: {message}"),
        }
    }
}

impl std::error::Error for SimError {}
