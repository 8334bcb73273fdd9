//! What runs VMs. [`Hypervisor`] is the one interface the service and provisioning use;
//! [`vmrun::Vmrun`] implements it for VMware Fusion and Workstation, and
//! [`fake::FakeHypervisor`] in memory for the service's unit tests. The rest of this folder
//! is what VMware's files say: VMX, disk chains, locks, DHCP leases, `vmware.log`.
//!
//! VMs are named by the path of their VMX, the key `vmrun` itself uses. A backend that keeps
//! its VMs elsewhere (tart keeps them in its own folder, by name) maps that path to its name:
//! the VM's folder under `vms/` is still where the server keeps its record.

pub(crate) mod dependants;
mod error;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod guest_ip;
pub(crate) mod locks;
pub(crate) mod running;
pub mod vmrun;
pub(crate) mod vmware_log;
pub mod vmx;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{Call, HypervisorError};

use crate::sys::cancel::Cancel;
use running::RunningVms;

/// What a query for the guest's IP address answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpAnswer {
    /// One line as the hypervisor printed it: an address (usable or not) or a host name.
    Address(String),
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

    /// Whether the tool is installed and can be run: reported once at start, and checked
    /// before each create so that a missing install fails fast with what to do.
    fn check_available(&self) -> Result<(), HypervisorError>;

    /// Which VMs run, as the last [`Hypervisor::list_running`] and the server's own starts,
    /// stops and deletes since say: read by requests, which never wait for a listing.
    fn running(&self) -> &RunningVms;

    /// The VMX paths of the VMs that run now; refreshes [`Hypervisor::running`].
    fn list_running(&self) -> Result<Vec<PathBuf>, HypervisorError>;

    /// Snapshot names of the gold VM at `vmx`.
    fn list_snapshots(&self, vmx: &Path) -> Result<Vec<String>, HypervisorError>;

    /// Takes the snapshot `name` of the (powered off) gold VM at `vmx`.
    fn snapshot(&self, vmx: &Path, name: &str) -> Result<(), HypervisorError>;

    /// Makes `dst` a linked clone of `src` at its snapshot `snapshot`, named `clone_name`.
    fn clone_linked(
        &self,
        src: &Path,
        dst: &Path,
        snapshot: &str,
        clone_name: &str,
        cancel: &Cancel,
    ) -> Result<(), HypervisorError>;

    /// Powers the VM on; returns when it begins to boot, not when the guest is up.
    fn start(&self, vmx: &Path, headless: bool, cancel: &Cancel) -> Result<(), HypervisorError>;

    /// Powers the VM off (`hard`: without the guest's help). A VM that is off counts as
    /// stopped.
    fn stop(&self, vmx: &Path, hard: bool, cancel: &Cancel) -> Result<(), HypervisorError>;

    /// Reboots the VM (`hard`: without the guest's help).
    fn reset(&self, vmx: &Path, hard: bool, cancel: &Cancel) -> Result<(), HypervisorError>;

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

    /// Sets the running guest's variable `guestinfo.NAME` (`vmrun writeVariable VMX guestVar
    /// NAME VALUE`), which the guest reads with `vmware-rpctool "info-get guestinfo.NAME"`;
    /// it lasts until the VM powers off. `value` is a secret: implementations never log it.
    fn write_variable(&self, vmx: &Path, name: &str, value: &str) -> Result<(), HypervisorError>;

    /// How long a start may take: a restart waits this long for a start still in flight.
    fn start_timeout(&self) -> Duration;

    /// The longest one IP query may take.
    fn ip_query_timeout(&self) -> Duration;

    /// Calls so far by command and outcome, for `/metrics`.
    fn call_counts(&self) -> Vec<(String, String, u64)>;
}
