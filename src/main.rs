use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use osx_builder::api::auth::Auth;
use osx_builder::api::server::HttpServer;
use osx_builder::callback::{self, CallbackSettings};
use osx_builder::config::{self, Command, Config};
use osx_builder::guard::Guard;
use osx_builder::hypervisor::running;
use osx_builder::hypervisor::vmrun::Vmrun;
use osx_builder::image::gold::{GoldCache, GoldSettings};
use osx_builder::image::gold_locks::GoldLocks;
use osx_builder::image::{ImageCache, ImageSettings};
use osx_builder::provision::{self, tasks::Tasks, ProvisionSettings, Provisioner};
use osx_builder::service::capacity::Limits;
use osx_builder::service::drain::Drain;
use osx_builder::service::long_poll::Waiters;
use osx_builder::service::metrics::Metrics;
use osx_builder::service::{start_reconciler, Fleet, Reconcile, Service};
use osx_builder::sys::shutdown;
use osx_builder::vm::VmStore;
use osx_builder::{error, info, warn};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let env: HashMap<String, String> = std::env::vars().collect();
    // No subcommand runs the server, as the original (which took no arguments) did.
    match args.first().map(String::as_str) {
        Some("serve") => {
            args.remove(0);
        }
        Some(command) if osx_builder::cli::is_command(command) => {
            return osx_builder::cli::run(&args, &env);
        }
        _ => {}
    }
    match config::parse(&args, &env) {
        Ok(Command::Help) => {
            print!("{}", config::help_text());
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("osx-builder {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Command::Serve(config)) => match serve(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                error!("{message}");
                ExitCode::FAILURE
            }
        },
        Err(err) => {
            eprintln!("osx-builder: {err}");
            ExitCode::from(2)
        }
    }
}

fn serve(config: &Config) -> Result<(), String> {
    osx_builder::sys::log::set_format(config.log_format);
    osx_builder::sys::log::install_bridge();
    match osx_builder::sys::fd_limit::raise() {
        Ok(limit) if limit < 1024 => warn!(
            "only {limit} open files allowed; raise the hard limit (ulimit -Hn) for a busy host"
        ),
        Ok(_) => {}
        Err(err) => warn!("cannot raise the open-file limit: {err}"),
    }
    // Settings that read files are checked before anything starts: a typo in a secret's
    // path must stop the server, not run it open or unsigned.
    let auth = Auth::from_settings(config.token.clone(), config.token_file.clone())
        .map_err(|e| e.to_string())?;
    let guard = Arc::new(Guard::new(
        &config.file_image_dirs,
        config.callback_allow.clone(),
        config.strict_vmx,
    )?);
    let trust = osx_builder::tls::client_trust(config.ca_file.as_deref())?;
    info!("https images and callbacks trust {}", trust.summary());
    let identity = osx_builder::tls::server::load_identity(
        config.tls_cert.as_deref(),
        config.tls_key.as_deref(),
    )?;
    let scheme = if identity.is_some() { "https" } else { "http" };
    let callback_secret = callback::load_secret(
        config.callback_secret.as_deref(),
        config.callback_secret_file.as_deref(),
    )?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "cannot create the data folder {}: {e}; set --data-dir / OSX_BUILDER_DATA_DIR to a writable folder",
            config.data_dir.display()
        )
    })?;
    // Held until the process exits: a second server on this folder refuses to start.
    let _data_lock =
        osx_builder::sys::data_lock::acquire(&config.data_dir).map_err(|e| e.to_string())?;
    let vmrun = Vmrun::new(config.vmrun_settings());
    if let Err(err) = vmrun.check_available() {
        warn!("{err}; every create will fail until vmrun is there");
    }
    let images = ImageCache::new(ImageSettings {
        data_dir: config.data_dir.clone(),
        max_unpacked_bytes: config.max_unpacked_bytes,
        connect_timeout: config.download_connect_timeout,
        read_timeout: config.download_read_timeout,
        max_resumes: config.download_max_resumes,
        strict_vmx: config.strict_vmx,
        trust: trust.clone(),
        min_rate: osx_builder::image::guard::MinRate {
            bytes_per_sec: config.download_min_rate,
            window: config.download_min_rate_window,
        },
        max_downloads: config.max_downloads,
    })
    .map_err(|e| format!("cannot open the image cache: {e}"))?;
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
    let provisioner = Arc::new(Provisioner {
        store: store.clone(),
        images,
        vmrun: vmrun.clone(),
        tasks: tasks.clone(),
        gold_locks,
        settings: ProvisionSettings {
            ip_wait_timeout: config.ip_wait_timeout,
            ip_poll_interval: config.ip_poll_interval,
            leases: osx_builder::hypervisor::guest_ip::dhcp::LeaseFiles {
                isc: Some(config.dhcp_leases.clone()).filter(|p| !p.as_os_str().is_empty()),
                apple: Some(config.dhcp_leases_apple.clone()).filter(|p| !p.as_os_str().is_empty()),
            },
            callback: CallbackSettings {
                timeout: config.callback_timeout,
                retries: config.callback_retries,
                secret: callback_secret,
                trust,
            },
            strict_vmx: config.strict_vmx,
            boot: osx_builder::provision::BootSettings {
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
        warn!("draining since {since}: new VMs are refused until POST /undrain");
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
        auth,
        metrics,
        gold: gold.clone(),
        waiters: Waiters::new(max_waiters),
        admission,
        guard: guard.clone(),
        max_records: config.max_records,
    };
    let vmrun_for_list = vmrun.clone();
    let service = Arc::new(Service::new(store, vmrun, tasks, jobs, fleet));

    let addr = SocketAddr::new(config.bind, config.port);
    let listener = HttpServer::bind(addr, identity, config.max_connections_per_ip)?;
    let bound = listener
        .server_addr()
        .to_ip()
        .map(|a| a.to_string())
        .unwrap_or_else(|| addr.to_string());
    if let Some(bound) = listener.server_addr().to_ip() {
        guard.set_listening(bound);
    }
    service.reconcile(Reconcile::Startup);
    {
        let vmrun = vmrun_for_list.clone();
        running::start_refresher(
            Arc::new(move || {
                // A failure is logged once by the running set and shown in /healthz.
                let _ = vmrun.list();
            }),
            config.list_interval,
        );
    }
    start_reconciler(service.clone(), config.reconcile_interval);
    osx_builder::service::leases::start_reaper(service.clone());
    if let Some(retention) = config.failed_retention {
        osx_builder::service::retention::start(service.clone(), retention);
    }
    gold.start_housekeeper(config.reconcile_interval);
    gold.request_eviction();
    if service.fleet().auth.enabled() {
        info!("requests need a bearer token (Authorization: Bearer ...), except /healthz");
    } else {
        info!("no token set: any client that reaches this port may use the API; fine on a trusted build network only");
    }
    shutdown::install_handlers();
    let server = HttpServer::start(listener, config.http_threads, service);
    info!(
        "listening on {scheme}://{bound} (data in {})",
        config.data_dir.display()
    );
    while !shutdown::requested() {
        std::thread::sleep(Duration::from_millis(100));
    }
    info!("stopping: finishing requests in flight");
    server.shutdown();
    info!("stopped");
    Ok(())
}
