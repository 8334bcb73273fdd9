//! What runs VMs. [`Hypervisor`] is the one interface the service and provisioning use; it
//! speaks of VMs (prepare a gold, clone, configure, start, stop, delete, IP, guest data, the
//! VM's log), never of how a hypervisor keeps them. [`vmrun::Vmrun`] implements it for
//! VMware Fusion and Workstation (with what is VMware's: VMX, snapshots, linked-clone
//! parents, `.lck` folders, `vmware.log`, in this folder), and [`fake::FakeHypervisor`] in
//! memory for the service's unit tests.
//!
//! VMs are named by the path `vms/<id>/<id>.vmx` of the server's data folder, the key `vmrun`
//! itself uses. A backend that keeps its VMs elsewhere (tart keeps them in its own folder, by
//! name) maps that path to its name: the VM's folder under `vms/` is still where the server
//! keeps its record.

pub(crate) mod dependants;
mod error;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod guest_ip;
pub(crate) mod locks;
pub(crate) mod process;
pub(crate) mod running;
pub mod tart;
pub mod vmrun;
pub(crate) mod vmware_log;
pub mod vmx;
pub(crate) mod vmx_policy;

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{Call, HypervisorError};

use crate::sys::cancel::Cancel;
use crate::vm::guestinfo::GuestInfo;
use running::RunningVms;

/// What a fresh clone is set to.
#[derive(Debug, Clone)]
pub struct VmSettings<'a> {
    /// The VM's id, as the hypervisor shows it.
    pub name: &'a str,
    pub cpus: u32,
    pub memory_mb: u32,
    /// `bridged`, `nat` or `hostonly`.
    pub network_type: &'a str,
    pub headless: bool,
    /// Where the VM came from, kept with it where the hypervisor has room for a note.
    pub image: serde_json::Value,
}

/// What configuring a clone found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Configured {
    /// The guest OS the VM's configuration names.
    pub guest_os: String,
    /// Lines of the image's configuration removed because they reach outside the VM.
    pub removed: Vec<String>,
}

/// The last lines of a VM's own log, and where that log is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTail {
    pub path: PathBuf,
    pub lines: Vec<String>,
}

/// How a VM that its hypervisor no longer runs ended, as its own log tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Powered off: by its guest, by a person, or the log does not say otherwise.
    PoweredOff,
    /// It died (a crash of the VM or of what ran it, a process killed): `message` says
    /// what the log shows, `log_tail` is its last lines.
    Died {
        message: String,
        log_tail: Option<LogTail>,
    },
}

/// What a query for the guest's IP address answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpAnswer {
    /// One line as the guest's tools reported it: an address (usable or not) or a host
    /// name.
    Address(String),
    /// An address the hypervisor found in the network's records of the VM (tart: the
    /// DHCP leases, the ARP cache), and which.
    Found(String, guest_ip::IpSource),
    /// Tools run but know no address yet (vmrun's `unknown`).
    NoAddress,
    /// The guest's tools are not running (or, on Workstation, `Unable to get the IP address`).
    NoTools,
}

/// The operations the service, provisioning, the reconciler and the reaper need of whatever
/// runs the VMs. Every call that can hang takes a deadline of the implementation's own and,
/// where it says so, a [`Cancel`] that ends it early. Calls are safe from any thread.
pub trait Hypervisor: Send + Sync + fmt::Debug {
    /// Which hypervisor this is (`vmware`, `tart`): what `/healthz`, the fleet's host
    /// records and the start-up log call it. Nothing outside the drivers branches on it.
    fn kind(&self) -> &'static str;

    /// The command line tool that runs the VMs (`vmrun`, `tart`): how `/healthz` names
    /// its check.
    fn tool(&self) -> &'static str;

    /// What the start-up log says of the hypervisor: the tool's path, its version where
    /// it tells it cheaply, where it keeps VMs. Runs the tool at most once.
    fn describe(&self) -> Result<String, HypervisorError>;

    /// Whether the tool is installed and can be run: reported once at start, and checked
    /// before each create so that a missing install fails fast with what to do.
    fn check_available(&self) -> Result<(), HypervisorError>;

    /// Which VMs run, as the last [`Hypervisor::list_running`] and the server's own starts,
    /// stops and deletes since say: read by requests, which never wait for a listing.
    fn running(&self) -> &RunningVms;

    /// The VMX paths of the VMs that run now; refreshes [`Hypervisor::running`].
    fn list_running(&self) -> Result<Vec<PathBuf>, HypervisorError>;

    /// Makes the gold VM at `gold` (as the image cache published it) ready to be cloned;
    /// run under the gold's lock before its first clone since the server started.
    fn prepare_gold(&self, gold: &Path) -> Result<(), HypervisorError>;

    /// Fetches the OCI image `repository` (`host/path`) pinned to its sha256 `digest` (hex)
    /// and makes it the gold VM of that digest, its files linked into `into` (an empty
    /// folder) for the image cache to publish. A pull that is not of that digest fails
    /// `image-digest-mismatch`. Only tart pulls images.
    fn pull_gold(
        &self,
        repository: &str,
        digest: &str,
        into: &Path,
        cancel: &Cancel,
    ) -> Result<(), HypervisorError> {
        let _ = (digest, into, cancel);
        Err(HypervisorError::Refused {
            code: "image-url-unsupported",
            message: format!(
                "cannot pull the OCI image {repository}: oci:// images are pulled by tart (Apple Silicon Macs), and this host runs {}; give an http://, https:// or file:// archive",
                self.kind()
            ),
        })
    }

    /// Removes what the hypervisor keeps of the gold image `checksum` besides its folder of
    /// the image cache (tart: its VM `osxb-gold-<checksum>`), when the image is evicted or
    /// deleted. VMware keeps nothing else.
    fn remove_gold(&self, checksum: &str) -> Result<(), HypervisorError> {
        let _ = checksum;
        Ok(())
    }

    /// Whether a clone reads its gold image for as long as it lives (VMware's linked
    /// clones): such an image stays while a VM of it exists. A tart clone is a copy.
    fn clones_need_gold(&self) -> bool {
        true
    }

    /// Whether [`Hypervisor::check_fits`] can refuse anything: when not, a create need not
    /// look for its gold image (a walk of its folder) to ask.
    fn golds_have_minimums(&self) -> bool {
        false
    }

    /// Refuses `cpus` and `memory_mb` when the gold VM `gold` cannot run with so little
    /// (tart: its `config.json`'s minimums), before anything is cloned.
    fn check_fits(&self, gold: &Path, cpus: u32, memory_mb: u32) -> Result<(), HypervisorError> {
        let _ = (gold, cpus, memory_mb);
        Ok(())
    }

    /// Makes `vm` a clone of the gold VM `gold`, shown as `name`. Never replaces a VM.
    fn clone_vm(
        &self,
        gold: &Path,
        vm: &Path,
        name: &str,
        cancel: &Cancel,
    ) -> Result<(), HypervisorError>;

    /// Sets a fresh clone's cpus, memory, network and display, and gives it `guestinfo`
    /// (to be read in the guest; values are secrets: never logged). `gold_dir` is the gold
    /// image's folder, the only place outside the VM its configuration may name.
    fn configure(
        &self,
        vm: &Path,
        gold_dir: &Path,
        settings: &VmSettings<'_>,
        guestinfo: &GuestInfo,
    ) -> Result<Configured, HypervisorError>;

    /// Removes what a crash of the host left saying `vm` runs, when no VM in `running`
    /// says so; returns what was removed.
    fn remove_stale_locks(&self, vm: &Path, running: &HashSet<PathBuf>) -> Vec<PathBuf>;

    /// The VM's own log (VMware's `vmware.log`, tart's runner output), opened, with its
    /// length; `None` when it has none.
    fn open_log(&self, vm: &Path) -> std::io::Result<Option<(File, u64)>>;

    /// The last lines of the VM's own log, for a failed VM's record.
    fn log_tail(&self, vm: &Path) -> Option<LogTail>;

    /// How the VM, which the hypervisor no longer lists running though the server did not
    /// stop it, ended: powered off, or died (then its record fails with the log's words).
    fn ended(&self, vm: &Path) -> Ended;

    /// Powers the VM on; returns when it begins to boot, not when the guest is up.
    fn start(&self, vmx: &Path, headless: bool, cancel: &Cancel) -> Result<(), HypervisorError>;

    /// Powers the VM off (`hard`: without the guest's help). A VM that is off counts as
    /// stopped.
    fn stop(&self, vmx: &Path, hard: bool, cancel: &Cancel) -> Result<(), HypervisorError>;

    /// Reboots the VM (`hard`: without the guest's help).
    fn reset(&self, vmx: &Path, hard: bool, cancel: &Cancel) -> Result<(), HypervisorError>;

    /// How the log names a hard [`Hypervisor::reset`].
    fn hard_reset_words(&self) -> String;

    /// How messages name a guest that gives no sign of having booted.
    fn silent_guest_words(&self) -> &'static str;

    /// Deletes the hypervisor's files of a powered-off VM.
    fn delete_vm(&self, vmx: &Path) -> Result<(), HypervisorError>;

    /// What the guest's tools report as its IP address, answering at once.
    fn guest_ip(&self, vmx: &Path, cancel: &Cancel) -> Result<IpAnswer, HypervisorError>;

    /// As [`Hypervisor::guest_ip`], but waiting up to `limit` for an address; running out
    /// of time is `NoTools`, not an error.
    fn guest_ip_wait(
        &self,
        vmx: &Path,
        limit: Duration,
        cancel: &Cancel,
    ) -> Result<IpAnswer, HypervisorError>;

    /// Gives the running guest the value `value` under `name` (VMware: `guestinfo.NAME`
    /// through `vmrun writeVariable`, read with `vmware-rpctool "info-get guestinfo.NAME"`;
    /// tart: a file in the VM's shared folder). `value` is a secret: never logged.
    fn write_guest_data(&self, vm: &Path, name: &str, value: &str) -> Result<(), HypervisorError>;

    /// How long a start may take: a restart waits this long for a start still in flight.
    fn start_timeout(&self) -> Duration;

    /// The longest one IP query may take.
    fn ip_query_timeout(&self) -> Duration;

    /// Calls so far by command and outcome, for `/metrics`.
    fn call_counts(&self) -> Vec<(String, String, u64)>;

    /// At start, before any gold is prepared or pulled: removes what the hypervisor keeps of
    /// gold images whose checksum is not in `published` (the image cache's published
    /// golds), left by a crash amid an image's removal or its pull (tart: `osxb-gold-*` VMs
    /// and import staging folders), logging each with why; returns what it removed. Given
    /// checksums rather than names: only the driver knows how it names a gold. VMware keeps
    /// nothing outside the cache's folders.
    fn remove_stray_golds(&self, published: &[String]) -> Vec<String> {
        let _ = published;
        Vec::new()
    }
}
