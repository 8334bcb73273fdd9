//! Provisioning: a fixed pool of threads fed by a crossbeam channel turns a recorded VM into
//! a running linked clone (gold image, clone, VMX edit, start, IP), then fires the callback.

mod failure;
mod ip_watch;
pub(crate) mod steps;
pub(crate) mod tasks;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::vm::VmId;
use crossbeam_channel::{Receiver, Sender};

use crate::callback::CallbackSettings;
use crate::hypervisor::Hypervisor;
use crate::image::gold::GoldCache;
use crate::image::gold_locks::GoldLocks;
use crate::image::ImageCache;
use crate::service::metrics::Metrics;
use crate::vm::VmStore;
use tasks::Tasks;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// From the start: image, clone, configure, start, IP.
    Provision(VmId),
    /// The VM runs but its IP was not known when the server stopped: watch it again.
    WatchIp(VmId),
}

#[derive(Clone, Debug)]
pub struct ProvisionSettings {
    pub ip_wait_timeout: Duration,
    pub ip_poll_interval: Duration,
    /// Where to look for a VM's DHCP lease when Tools report no address.
    pub leases: crate::hypervisor::guest_ip::dhcp::LeaseFiles,
    pub callback: CallbackSettings,
    pub boot: BootSettings,
}

/// The boot watchdog and what becomes of a VM that fails while it runs.
#[derive(Clone, Debug)]
pub struct BootSettings {
    /// No Tools and no DHCP lease this long after a (re)boot: retry once, then fail.
    pub timeout: Duration,
    /// Retry a headless VM with `stop hard` + `start gui` rather than `reset hard`.
    pub headless_retry_gui: bool,
    /// `--keep-failed`: a VM that fails while running stays running this long.
    pub keep_failed: Option<Duration>,
}

/// Everything a worker needs, shared by all workers.
pub struct Provisioner {
    pub store: Arc<VmStore>,
    pub images: Arc<ImageCache>,
    pub hypervisor: Arc<dyn Hypervisor>,
    pub tasks: Arc<Tasks>,
    /// Shared with the image cache API, which takes a gold image out under its lock.
    pub gold_locks: Arc<GoldLocks>,
    pub settings: ProvisionSettings,
    pub metrics: Arc<Metrics>,
    /// Told when a VM is cloned from a gold image (least-recently-used eviction).
    pub gold: Arc<GoldCache>,
}

/// Starts `threads` workers; jobs sent on the returned channel are run in order of arrival.
pub fn start_pool(provisioner: Arc<Provisioner>, threads: usize) -> Sender<Job> {
    let (sender, receiver) = crossbeam_channel::unbounded::<Job>();
    for n in 0..threads {
        let receiver: Receiver<Job> = receiver.clone();
        let provisioner = provisioner.clone();
        let spawned = thread::Builder::new()
            .name(format!("provision-{n}"))
            .spawn(move || {
                for job in receiver {
                    provisioner.run(job);
                }
            });
        if let Err(err) = spawned {
            crate::error!("cannot start provisioning thread {n}: {err}");
        }
    }
    sender
}
