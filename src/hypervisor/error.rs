//! What can go wrong when running the hypervisor's tool, one variant per thing a caller
//! handles differently.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// One invocation of the hypervisor's tool as messages name it: `vmrun start
/// /path/to/vm.vmx`, `tart run osxb-...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `vmrun` or `tart`.
    pub tool: &'static str,
    pub command: &'static str,
    /// The VM the call names as the tool knows it: its VMX (VMware), its name (tart).
    pub vm: Option<PathBuf>,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.vm {
            Some(vm) => write!(f, "{} {} {}", self.tool, self.command, vm.display()),
            None => write!(f, "{} {}", self.tool, self.command),
        }
    }
}

#[derive(Debug)]
pub enum HypervisorError {
    /// The configured tool (`vmrun`, `tart`) is missing or not an executable file.
    NotFound {
        tool: &'static str,
        path: PathBuf,
        problem: String,
    },
    /// vmrun exists but could not be started.
    Spawn {
        call: Call,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The call ran past its deadline; vmrun and its process group were killed.
    Timeout { call: Call, limit: Duration },
    /// The caller cancelled; vmrun and its process group were killed.
    Cancelled { call: Call },
    /// `The file is already in use`: another process (often the VMware GUI, or a stale lock
    /// after a crash) holds the VM's files.
    VmLocked { call: Call, message: String },
    /// `Cannot open VM: ...`: the VMX is missing or VMware cannot read it.
    VmOpenError { call: Call, message: String },
    /// `The virtual machine is not powered on`.
    NotPoweredOn { call: Call, message: String },
    /// `The virtual machine should not be powered on. It is already running.`
    AlreadyRunning { call: Call, message: String },
    /// Any other failure: vmrun's own message, or its exit status when it printed none.
    Failed { call: Call, message: String },
    /// vmrun reported success but printed something this driver does not understand.
    BadOutput {
        call: Call,
        problem: String,
        output: String,
    },
    /// The driver refused to run a call that would do harm (e.g. a linked clone without a
    /// snapshot name, which makes vmrun grow the parent's snapshot chain).
    InvalidArgument { call: Call, problem: String },
    /// The driver's own verdict on a VM or an image, with its code (`snapshot-missing`,
    /// `image-vmx-unsafe`, `clone-exists`, `host-keychain-locked`, ...) and a message
    /// that says what to do.
    Refused { code: &'static str, message: String },
    /// The host runs as many VMs as its hypervisor allows (tart: Apple's two macOS VMs).
    HostLimit { call: Call, message: String },
    /// The request asks for less than the gold image allows (tart: its `config.json`'s
    /// `cpuCountMin`, `memorySizeMin`); refused before the clone. `field` is the request's
    /// (`cpus`, `memory` in MB).
    BelowMinimum {
        field: &'static str,
        minimum: u64,
        requested: u64,
    },
}

impl HypervisorError {
    pub fn code(&self) -> &'static str {
        match self {
            HypervisorError::NotFound { tool: "tart", .. } => "tart-not-found",
            HypervisorError::NotFound { .. } => "vmrun-not-found",
            HypervisorError::Spawn { call, .. } if call.tool == "tart" => "tart-spawn-failed",
            HypervisorError::Timeout { call, .. } if call.tool == "tart" => "tart-timeout",
            HypervisorError::Cancelled { call } if call.tool == "tart" => "tart-cancelled",
            HypervisorError::Failed { call, .. } if call.tool == "tart" => "tart-failed",
            HypervisorError::InvalidArgument { call, .. } if call.tool == "tart" => {
                "tart-invalid-argument"
            }
            HypervisorError::Spawn { .. } => "vmrun-spawn-failed",
            HypervisorError::Timeout { .. } => "vmrun-timeout",
            HypervisorError::Cancelled { .. } => "vmrun-cancelled",
            HypervisorError::VmLocked { .. } => "vm-locked",
            HypervisorError::VmOpenError { .. } => "vm-open-error",
            HypervisorError::NotPoweredOn { .. } => "vm-not-powered-on",
            HypervisorError::AlreadyRunning { .. } => "vm-already-running",
            HypervisorError::Failed { .. } => "vmrun-failed",
            HypervisorError::BadOutput { .. } => "vmrun-bad-output",
            HypervisorError::InvalidArgument { .. } => "vmrun-invalid-argument",
            HypervisorError::Refused { code, .. } => code,
            HypervisorError::HostLimit { .. } => "host-vm-limit",
            // The request's field is what is wrong, as the API's own checks of it say.
            HypervisorError::BelowMinimum { field: "cpus", .. } => "invalid-cpus",
            HypervisorError::BelowMinimum { .. } => "invalid-memory",
        }
    }

    /// The call that failed (`None` for a missing vmrun found before any call).
    pub fn call(&self) -> Option<&Call> {
        match self {
            HypervisorError::NotFound { .. }
            | HypervisorError::Refused { .. }
            | HypervisorError::BelowMinimum { .. } => None,
            HypervisorError::Spawn { call, .. }
            | HypervisorError::Timeout { call, .. }
            | HypervisorError::Cancelled { call }
            | HypervisorError::VmLocked { call, .. }
            | HypervisorError::VmOpenError { call, .. }
            | HypervisorError::NotPoweredOn { call, .. }
            | HypervisorError::AlreadyRunning { call, .. }
            | HypervisorError::Failed { call, .. }
            | HypervisorError::BadOutput { call, .. }
            | HypervisorError::InvalidArgument { call, .. }
            | HypervisorError::HostLimit { call, .. } => Some(call),
        }
    }

    /// vmrun's own error text, for the variants that carry one.
    pub fn vmrun_message(&self) -> Option<&str> {
        match self {
            HypervisorError::VmLocked { message, .. }
            | HypervisorError::VmOpenError { message, .. }
            | HypervisorError::NotPoweredOn { message, .. }
            | HypervisorError::AlreadyRunning { message, .. }
            | HypervisorError::Failed { message, .. }
            | HypervisorError::HostLimit { message, .. } => Some(message),
            _ => None,
        }
    }
}

impl fmt::Display for HypervisorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HypervisorError::NotFound {
                tool: "tart",
                path,
                problem,
            } => write!(
                f,
                "tart not found at {}: {problem}; install it (brew install cirruslabs/cli/tart) or \
                 set --tart-path / OSX_BUILDER_TART_PATH to the full path of the tart executable",
                path.display()
            ),
            HypervisorError::NotFound { path, problem, .. } => write!(
                f,
                "vmrun not found at {}: {problem}; install VMware Fusion (or Workstation) or set \
                 VMWARE_VMRUN_PATH to the full path of its vmrun executable",
                path.display()
            ),
            HypervisorError::Spawn { call, path, source } => write!(
                f,
                "{call}: could not run {}: {source}; check that VMWARE_VMRUN_PATH names vmrun and \
                 that this user may execute it",
                path.display()
            ),
            HypervisorError::Timeout { call, limit } => write!(
                f,
                "{call}: no answer within {}, so {} and its child processes were killed; \
                 {} may be hung: check the VM and retry",
                seconds(*limit),
                call.tool,
                if call.tool == "tart" {
                    "the Virtualization framework"
                } else {
                    "VMware"
                }
            ),
            HypervisorError::Cancelled { call } => write!(
                f,
                "{call}: cancelled; {}, if it had started, was killed with its child processes",
                call.tool
            ),
            HypervisorError::VmLocked { call, message } => write!(
                f,
                "{call}: the VM's files are in use by another process (vmrun: {message:?}); close \
                 the VM in the VMware GUI or stop the process that holds it (after a crash, a \
                 stale .lck folder beside the VMX), then retry"
            ),
            HypervisorError::VmOpenError { call, message } => write!(
                f,
                "{call}: VMware cannot open the VM (vmrun: {message:?}); check that the VMX file \
                 exists and is not corrupt"
            ),
            HypervisorError::NotPoweredOn { call, message } => write!(
                f,
                "{call}: the VM is not powered on (vmrun: {message:?}); start it first"
            ),
            HypervisorError::AlreadyRunning { call, message } => write!(
                f,
                "{call}: the VM is powered on and must be off for this (vmrun: {message:?}); stop \
                 it first"
            ),
            HypervisorError::Failed { call, message } => write!(f, "{call}: failed: {message}"),
            HypervisorError::BadOutput {
                call,
                problem,
                output,
            } => write!(
                f,
                "{call}: printed output this server does not understand ({problem}): {output:?}; \
                 this VMware version may behave differently from the ones it was built for"
            ),
            HypervisorError::InvalidArgument { call, problem } => {
                write!(f, "{call}: not run: {problem}")
            }
            HypervisorError::Refused { message, .. } => write!(f, "{message}"),
            HypervisorError::HostLimit { call, message } => write!(
                f,
                "{call}: the host runs as many VMs as it allows ({}: {message:?}); wait for a VM \
                 to be deleted, or lower --max-vms",
                call.tool
            ),
            HypervisorError::BelowMinimum {
                field,
                minimum,
                requested,
            } => {
                let (what, key) = match *field {
                    "cpus" => ("CPUs", "cpuCountMin"),
                    _ => ("MB of memory", "memorySizeMin"),
                };
                write!(
                    f,
                    "{field} {requested} is below the gold image's minimum of {minimum} {what} \
                     (its config.json's {key}): ask for {field} {minimum} or more, or use an \
                     image made with a lower minimum (tart set --{} on the VM before it is \
                     packed)",
                    if *field == "cpus" { "cpu" } else { "memory" }
                )
            }
        }
    }
}

impl std::error::Error for HypervisorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HypervisorError::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
