//! The server assembled from its settings: every part built and connected, with the
//! hypervisor given from outside so that the binary passes vmrun and unit tests pass the
//! in-memory fake. The binary adds the listener, the data-folder lock and the signals.

use std::sync::{Arc, Mutex};

use crate::api::auth::Auth;
use crate::callback::{self, CallbackSettings};
use crate::config::{Config, HypervisorKind};
use crate::guard::Guard;
use crate::hypervisor::guest_ip::dhcp::LeaseFiles;
use crate::hypervisor::{running, Hypervisor};
use crate::image::gold::{GoldCache, GoldSettings};
use crate::image::gold_locks::GoldLocks;
use crate::image::{ImageCache, ImageSettings};
use crate::provision::{self, tasks::Tasks, BootSettings, ProvisionSettings, Provisioner};
use crate::service::drain::Drain;
use crate::service::long_poll::Waiters;
use crate::service::metrics::Metrics;
use crate::service::pools::spec::PoolSpec;
use crate::service::pools::Pools;
use crate::service::reconcile::{start_reconciler, Reconcile};
use crate::service::{Fleet, Service};
use crate::tls::ClientTrust;
use crate::vm::capacity::Limits;
use crate::vm::VmStore;

pub struct App {
    pub service: Arc<Service>,
    /// The API's token check: HTTP's business, not the service's.
    pub auth: Auth,
    pub gold: Arc<GoldCache>,
    pub guard: Arc<Guard>,
    pub hypervisor: Arc<dyn Hypervisor>,
}

/// The settings that read files, checked before anything starts: a typo in a secret's path
/// must stop the server, not run it open or unsigned.
pub struct Checked {
    auth: Auth,
    guard: Arc<Guard>,
    callback_secret: Option<Arc<[u8]>>,
}

pub fn check(config: &Config) -> Result<Checked, String> {
    let auth = Auth::from_settings(config.token.clone(), config.token_file.clone())
        .map_err(|e| e.to_string())?;
    let guard = Arc::new(Guard::new(
        &config.file_image_dirs,
        config.callback_allow.clone(),
        config.strict_vmx,
    )?);
    let callback_secret = callback::load_secret(
        config.callback_secret.as_deref(),
        config.callback_secret_file.as_deref(),
    )?;
    Ok(Checked {
        auth,
        guard,
        callback_secret,
    })
}

/// Builds every part; starts the provisioning workers and nothing else (see
/// [`App::start_background`]).
pub fn build(
    config: &Config,
    checked: Checked,
    hypervisor: Arc<dyn Hypervisor>,
    trust: ClientTrust,
) -> Result<App, String> {
    let Checked {
        auth,
        guard,
        callback_secret,
    } = checked;
    let images = ImageCache::new(ImageSettings {
        data_dir: config.data_dir.clone(),
        max_unpacked_bytes: config.max_unpacked_bytes,
        connect_timeout: config.download_connect_timeout,
        read_timeout: config.download_read_timeout,
        max_resumes: config.download_max_resumes,
        strict_vmx: config.strict_vmx,
        trust: trust.clone(),
        min_rate: crate::image::guard::MinRate {
            bytes_per_sec: config.download_min_rate,
            window: config.download_min_rate_window,
        },
        max_downloads: config.max_downloads,
        vm_format: crate::image::VmFormat::for_hypervisor(hypervisor.kind()),
    })
    .map_err(|e| format!("cannot open the image cache: {e}"))?;
    images.set_gold_host(Arc::new(crate::image::HypervisorGolds(hypervisor.clone())));
    guard.set_vm_format(crate::image::VmFormat::for_hypervisor(hypervisor.kind()));
    let (store, unloaded) = VmStore::open(&config.data_dir.join("vms"))
        .map_err(|e| format!("cannot open the VM records: {e}"))?;
    // Folders that did not load are adopted or reported by the first reconcile.
    drop(unloaded);
    let store = Arc::new(store);
    let tasks = Arc::new(Tasks::default());
    let images = Arc::new(images);
    let gold_locks = Arc::new(GoldLocks::default());
    let admission = Arc::new(Mutex::new(()));
    let metrics = Arc::new(Metrics::new());
    let gold = Arc::new(GoldCache::new(
        images.clone(),
        store.clone(),
        gold_locks.clone(),
        admission.clone(),
        config.data_dir.clone(),
        GoldSettings {
            budget: config.cache_budget,
            min_free_disk: config.min_free_disk,
        },
    ));
    {
        let (metrics, gold) = (metrics.clone(), gold.clone());
        images.set_download_hook(Box::new(move |checksum, took, published| {
            if published {
                metrics.observe_image_download(took);
            }
            gold.download_finished(checksum, published);
        }));
    }
    let callback = CallbackSettings {
        timeout: config.callback_timeout,
        retries: config.callback_retries,
        secret: callback_secret,
        trust,
    };
    let pools = Arc::new(Pools::load(
        &config.data_dir,
        settings_pools(config, &guard)?,
        callback.clone(),
    ));
    let provisioner = Arc::new(Provisioner {
        store: store.clone(),
        images,
        hypervisor: hypervisor.clone(),
        tasks: tasks.clone(),
        gold_locks,
        settings: ProvisionSettings {
            ip_wait_timeout: config.ip_wait_timeout,
            ip_poll_interval: config.ip_poll_interval,
            leases: LeaseFiles {
                isc: Some(config.dhcp_leases.clone()).filter(|p| !p.as_os_str().is_empty()),
                apple: Some(config.dhcp_leases_apple.clone()).filter(|p| !p.as_os_str().is_empty()),
            },
            callback,
            boot: BootSettings {
                timeout: config.boot_timeout,
                headless_retry_gui: config.headless_retry_gui,
                keep_failed: config.keep_failed,
            },
        },
        metrics: metrics.clone(),
        gold: gold.clone(),
    });
    let jobs = provision::start_pool(provisioner, config.provision_threads);
    let drain = Drain::load(&config.data_dir);
    if let Some(since) = drain.since() {
        crate::warn!("draining since {since}: new VMs are refused until POST /undrain");
    }
    // Each waiter holds an HTTP thread; one is always left for everything else.
    let max_waiters = config
        .max_waiters
        .min(config.http_threads.saturating_sub(1));
    let fleet = Fleet {
        data_dir: config.data_dir.clone(),
        limits: Limits {
            max_vms: config.max_vms,
            min_free_disk: config.min_free_disk,
        },
        default_ttl: config.default_ttl,
        drain,
        metrics,
        gold: gold.clone(),
        waiters: Waiters::new(max_waiters),
        admission,
        guard: guard.clone(),
        max_records: config.max_records,
        pools,
    };
    let service = Arc::new(Service::new(store, hypervisor.clone(), tasks, jobs, fleet));
    Ok(App {
        service,
        auth,
        gold,
        guard,
        hypervisor,
    })
}

/// The pools of `--pool`: each file read and checked as `PUT /pools/:name` checks a body; a
/// bad one stops the server, naming the file, rather than leaving a host cold unseen.
fn settings_pools(config: &Config, guard: &Guard) -> Result<Vec<(String, PoolSpec)>, String> {
    config
        .pools
        .iter()
        .map(|(name, file)| {
            let bad = |why: String| format!("--pool {name}={}: {why}", file.display());
            let body = std::fs::read(file).map_err(|e| bad(format!("cannot read it: {e}")))?;
            let spec = crate::api::pool_body::parse(&body).map_err(|e| bad(e.message()))?;
            guard
                .check_image_url(&spec.image.url)
                .map_err(|e| bad(e.to_string()))?;
            Ok((name.clone(), spec))
        })
        .collect()
}

impl App {
    /// The startup reconcile, then the threads that keep state fresh: the running-set
    /// refresher, the reconciler, the warm pools' keeper, the lease reaper, failed-VM
    /// retention, the cache's housekeeping.
    pub fn start_background(&self, config: &Config) {
        self.gold.recover_after_crash();
        self.service.reconcile(Reconcile::Startup);
        let (hypervisor, service) = (self.hypervisor.clone(), self.service.clone());
        running::start_refresher(
            Arc::new(move || {
                // A failure is logged once by the running set and shown in /healthz.
                if hypervisor.list_running().is_ok() {
                    service.notice_stopped();
                }
            }),
            config.list_interval,
        );
        start_reconciler(self.service.clone(), config.reconcile_interval);
        crate::service::pools::start_keeper(self.service.clone());
        crate::service::reaper::start(self.service.clone());
        if let Some(retention) = config.failed_retention {
            crate::service::retention::start(self.service.clone(), retention);
        }
        self.gold.start_housekeeper(config.reconcile_interval);
        self.gold.request_eviction();
    }
}

/// The driver `--hypervisor` names. Chosen here, in the assembly: below it, nothing knows
/// which hypervisor runs.
pub fn hypervisor(config: &Config) -> Arc<dyn Hypervisor> {
    match config.hypervisor {
        HypervisorKind::Vmware => {
            Arc::new(crate::hypervisor::vmrun::Vmrun::new(vmrun_settings(config)))
        }
        HypervisorKind::Tart => Arc::new(crate::hypervisor::tart::Tart::new(tart_settings(config))),
    }
}

/// How the server runs tart: where it is, its home (this server's own), the bridged
/// interface; the driver's own deadlines.
pub fn tart_settings(config: &Config) -> crate::hypervisor::tart::TartSettings {
    crate::hypervisor::tart::TartSettings {
        path: crate::hypervisor::tart::resolve_path(&config.tart_path),
        home: config.tart_home.clone(),
        vms_dir: config.data_dir.join("vms"),
        bridged_interface: config.tart_bridge_interface.clone(),
        timeouts: crate::hypervisor::tart::TartTimeouts::default(),
    }
}

/// How the server runs vmrun: its path, host type and the deadline of each command. Here,
/// in the assembly, so that the settings and the driver do not import each other.
pub fn vmrun_settings(config: &Config) -> crate::hypervisor::vmrun::VmrunSettings {
    crate::hypervisor::vmrun::VmrunSettings {
        path: config.vmrun_path.clone(),
        host_type: config.vmrun_host_type.clone(),
        timeouts: crate::hypervisor::vmrun::Timeouts {
            clone: config.timeout_clone,
            start: config.timeout_start,
            stop: config.timeout_stop,
            delete: config.timeout_delete,
            list: config.timeout_list,
            ip_query: config.timeout_ip_query,
            snapshot: config.timeout_snapshot,
            ..crate::hypervisor::vmrun::Timeouts::DEFAULT
        },
        strict_vmx: config.strict_vmx,
    }
}

#[cfg(test)]
mod tests {
    use crate::hypervisor::vmrun::VmrunSettings;
    use std::path::PathBuf;
    use std::time::Duration;

    #[test]
    fn default_timeouts_match_the_contract() {
        // What the server runs with when no setting is given, not the constants themselves.
        let parsed = crate::config::parse(&[], &std::collections::HashMap::new()).unwrap();
        let crate::config::Command::Serve(config) = parsed else {
            panic!("no arguments must serve, got {parsed:?}");
        };
        let settings = super::vmrun_settings(&config);
        let t = settings.timeouts;
        let secs = Duration::from_secs;
        // vmrun-contract.md, "Timeouts seen in the field": clone 120 s, start 120-300 s,
        // stop soft 15-60 s, deleteVM 30 s, list 10 s.
        assert_eq!(t.clone, secs(120));
        assert!((secs(120)..=secs(300)).contains(&t.start), "{t:?}");
        assert_eq!(t.start, secs(300));
        assert!((secs(15)..=secs(60)).contains(&t.stop), "{t:?}");
        assert_eq!(t.delete, secs(30));
        assert_eq!(t.list, secs(10));
        // getGuestIPAddress -wait has no deadline of its own: ours must be finite and short
        // beside the IP wait it is one attempt of.
        assert!(t.ip_query > Duration::ZERO && t.ip_query < config.ip_wait_timeout);
        assert_eq!(t.ip_query, secs(15));
        assert_eq!(t.snapshot, secs(60));
        // The contract's host type: none on macOS, `ws` on Linux, and its default path.
        let (host_type, path) = if cfg!(target_os = "macos") {
            (
                None,
                "/Applications/VMware Fusion.app/Contents/Library/vmrun",
            )
        } else {
            (Some("ws"), "/usr/bin/vmrun")
        };
        assert_eq!(settings.host_type.as_deref(), host_type);
        assert_eq!(settings.path, PathBuf::from(path));
        assert_eq!(settings, VmrunSettings::default());
    }
}
