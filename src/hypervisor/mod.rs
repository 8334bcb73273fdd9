//! What runs VMs. [`Hypervisor`] is the one interface the service and provisioning use; it
//! speaks of VMs (prepare a gold, clone, configure, start, stop, delete, IP, guest data, the
//! VM's log), never of how a hypervisor keeps them. [`vmrun::Vmrun`] implements it for
//! VMware Fusion and Workstation (with what is VMware's: VMX, snapshots, linked-clone
//! parents, `.lck` folders, `vmware.log`, in this folder), and [`fake::FakeHypervisor`] in
//! memory for the service's unit tests.
//!
//! Every call names one of the server's VMs by a [`VmRef`] (its id and its folder `vms/<id>/`
//! of the data folder, where the server keeps its record) and a gold image by a [`GoldVm`];
//! how the hypervisor itself knows them (VMware: the VMX file in that folder; tart: a VM of
//! its own home, by name) is the driver's business alone.

mod error;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod guest_ip;
pub(crate) mod process;
pub(crate) mod running;
pub mod tart;
pub(crate) mod vm_log;
pub mod vmrun;

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{Call, HypervisorError};

use crate::sys::cancel::Cancel;
use crate::vm::guestinfo::GuestInfo;
use running::RunningVms;

/// One of the server's VMs, as every call names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRef {
    /// The VM's id: the name the hypervisor shows it by.
    pub id: String,
    /// `vms/<id>/` of the data folder: where the server keeps the VM's record, and where a
    /// hypervisor may keep the VM's files. The running set knows the VM by this folder.
    pub dir: PathBuf,
}

/// A gold image as the image cache published it.
#[derive(Debug, Clone, Copy)]
pub struct GoldVm<'a> {
    /// The image's checksum: its name in the cache.
    pub checksum: &'a str,
    /// `gold/<checksum>/`: the only place outside a clone that the clone's configuration may
    /// name (VMware's linked clones read their parent's disks there).
    pub dir: &'a Path,
    /// The file that describes the gold VM, somewhere in `dir`: its .vmx (VMware), its
    /// `config.json` (tart).
    pub config: &'a Path,
}

/// What a fresh clone is set to.
#[derive(Debug, Clone)]
pub struct VmSettings<'a> {
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

/// What a VM's own files tell of it, for a folder of `vms/` that has no record: one of the
/// original Go server's VMs, or one whose record was lost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FoundVm {
    pub cpus: Option<u32>,
    pub memory_mb: Option<u32>,
    /// `bridged`, `nat` or `hostonly`, as the VM is set.
    pub network_type: Option<String>,
    pub guest_os: String,
    /// Where the VM came from, as kept with it ([`VmSettings::image`]; the original kept
    /// the same JSON).
    pub image: Option<serde_json::Value>,
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

    /// The VMs that run now, each by a path: the folder ([`VmRef::dir`]) of each of the
    /// server's VMs, and a path of the hypervisor's own for any other VM (admission counts
    /// those too). Refreshes [`Hypervisor::running`].
    fn list_running(&self) -> Result<Vec<PathBuf>, HypervisorError>;

    /// Makes the gold VM ready to be cloned (VMware: its base snapshot; tart: its import as
    /// a local VM); run under the gold's lock before its first clone since the server
    /// started.
    fn prepare_gold(&self, gold: GoldVm<'_>) -> Result<(), HypervisorError>;

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

    /// Refuses `cpus` and `memory_mb` when the gold VM cannot run with so little (tart:
    /// its `config.json`'s minimums), before anything is cloned.
    fn check_fits(
        &self,
        gold: GoldVm<'_>,
        cpus: u32,
        memory_mb: u32,
    ) -> Result<(), HypervisorError> {
        let _ = (gold, cpus, memory_mb);
        Ok(())
    }

    /// Makes `vm` a clone of the gold VM. Never replaces a VM.
    fn clone_vm(
        &self,
        gold: GoldVm<'_>,
        vm: &VmRef,
        cancel: &Cancel,
    ) -> Result<(), HypervisorError>;

    /// What holds the gold VM when a clone of it failed `vm-locked`, for `/images` and
    /// `/healthz` to name until a clone goes through: the file to look at and what to do.
    /// Removes what is left of processes that died holding it.
    fn gold_holder(&self, gold: GoldVm<'_>, err: &HypervisorError) -> (PathBuf, String) {
        (
            gold.config.to_path_buf(),
            format!("every clone of this image fails ({err}); the next create tries again"),
        )
    }

    /// The file whose presence says that the VM exists (VMware: its VMX; tart: the mark
    /// of a clone the server began): what a message names when it is gone.
    fn vm_file(&self, vm: &VmRef) -> PathBuf;

    /// Removes what processes that died left holding the gold VM (VMware's lock folders
    /// beside it, made by a vmrun killed with the host); returns each lock left in place, a
    /// live one, with why. Run at start, before any clone.
    fn remove_dead_gold_locks(&self, gold: GoldVm<'_>) -> Vec<(PathBuf, String)> {
        let _ = gold;
        Vec::new()
    }

    /// Whether the VM's files exist: it was cloned and not deleted since.
    fn vm_exists(&self, vm: &VmRef) -> bool {
        self.vm_file(vm).is_file()
    }

    /// What the VM's own files tell of it, for a folder of `vms/` without a record; an
    /// error says why the folder is not a VM this hypervisor can take.
    fn find_vm(&self, vm: &VmRef) -> Result<FoundVm, String>;

    /// Sets a fresh clone's cpus, memory, network and display, and gives it `guestinfo`
    /// (to be read in the guest; values are secrets: never logged).
    fn configure(
        &self,
        vm: &VmRef,
        gold: GoldVm<'_>,
        settings: &VmSettings<'_>,
        guestinfo: &GuestInfo,
    ) -> Result<Configured, HypervisorError>;

    /// Removes what a crash of the host left saying `vm` runs (VMware's lock folders), when
    /// `running` (as [`Hypervisor::list_running`] gives it) does not list it; returns what
    /// was removed.
    fn remove_stale_locks(&self, vm: &VmRef, running: &HashSet<PathBuf>) -> Vec<PathBuf>;

    /// The VM's own log (VMware's `vmware.log`, tart's runner output), opened, with its
    /// length; `None` when it has none.
    fn open_log(&self, vm: &VmRef) -> std::io::Result<Option<(File, u64)>>;

    /// The last lines of the VM's own log, for a failed VM's record.
    fn log_tail(&self, vm: &VmRef) -> Option<LogTail>;

    /// How the VM, which the hypervisor no longer lists running though the server did not
    /// stop it, ended: powered off, or died (then its record fails with the log's words).
    fn ended(&self, vm: &VmRef) -> Ended;

    /// Powers the VM on; returns when it begins to boot, not when the guest is up.
    fn start(&self, vm: &VmRef, headless: bool, cancel: &Cancel) -> Result<(), HypervisorError>;

    /// Powers the VM off (`hard`: without the guest's help). A VM that is off counts as
    /// stopped.
    fn stop(&self, vm: &VmRef, hard: bool, cancel: &Cancel) -> Result<(), HypervisorError>;

    /// Reboots the VM (`hard`: without the guest's help).
    fn reset(&self, vm: &VmRef, hard: bool, cancel: &Cancel) -> Result<(), HypervisorError>;

    /// How the log names a hard [`Hypervisor::reset`].
    fn hard_reset_words(&self) -> String;

    /// How messages name a guest that gives no sign of having booted.
    fn silent_guest_words(&self) -> &'static str;

    /// Deletes the hypervisor's files of a powered-off VM.
    fn delete_vm(&self, vm: &VmRef) -> Result<(), HypervisorError>;

    /// What the guest's tools report as its IP address, answering at once.
    fn guest_ip(&self, vm: &VmRef, cancel: &Cancel) -> Result<IpAnswer, HypervisorError>;

    /// The MAC address of the VM's first network card once it has one, for the host's
    /// DHCP leases when the guest's tools say nothing; `None` where [`Hypervisor::guest_ip`]
    /// consults the leases itself (tart).
    fn mac_address(&self, vm: &VmRef) -> Option<String> {
        let _ = vm;
        None
    }

    /// As [`Hypervisor::guest_ip`], but waiting up to `limit` for an address; running out
    /// of time is `NoTools`, not an error.
    fn guest_ip_wait(
        &self,
        vm: &VmRef,
        limit: Duration,
        cancel: &Cancel,
    ) -> Result<IpAnswer, HypervisorError>;

    /// Gives the running guest the value `value` under `name` (VMware: `guestinfo.NAME`
    /// through `vmrun writeVariable`, read with `vmware-rpctool "info-get guestinfo.NAME"`;
    /// tart: a file in the VM's shared folder). `value` is a secret: never logged.
    fn write_guest_data(&self, vm: &VmRef, name: &str, value: &str) -> Result<(), HypervisorError>;

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
