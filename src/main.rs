use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use osx_builder::api::server::HttpServer;
use osx_builder::callback::CallbackSettings;
use osx_builder::config::{self, Command, Config};
use osx_builder::image::{ImageCache, ImageSettings};
use osx_builder::provision::{
    self, gold_locks::GoldLocks, tasks::Tasks, ProvisionSettings, Provisioner,
};
use osx_builder::service::{start_reconciler, Reconcile, Service};
use osx_builder::vm::VmStore;
use osx_builder::vmrun::{Timeouts, Vmrun, VmrunSettings};
use osx_builder::{error, info, shutdown, warn};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let env: HashMap<String, String> = std::env::vars().collect();
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
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "cannot create the data folder {}: {e}; set --data-dir / OSX_BUILDER_DATA_DIR to a writable folder",
            config.data_dir.display()
        )
    })?;
    let vmrun = Vmrun::new(VmrunSettings {
        path: config.vmrun_path.clone(),
        host_type: config.vmrun_host_type.clone(),
        timeouts: Timeouts {
            clone: config.timeout_clone,
            start: config.timeout_start,
            stop: config.timeout_stop,
            delete: config.timeout_delete,
            list: config.timeout_list,
            ip_query: config.timeout_ip_query,
            snapshot: config.timeout_snapshot,
            ..Timeouts::default()
        },
    });
    if let Err(err) = vmrun.check_available() {
        warn!("{err}; every create will fail until vmrun is there");
    }
    let images = ImageCache::new(ImageSettings {
        data_dir: config.data_dir.clone(),
        max_unpacked_bytes: config.max_unpacked_bytes,
        connect_timeout: config.download_connect_timeout,
        read_timeout: config.download_read_timeout,
        max_resumes: config.download_max_resumes,
    })
    .map_err(|e| format!("cannot open the image cache: {e}"))?;
    let (store, unloaded) = VmStore::open(&config.data_dir.join("vms"))
        .map_err(|e| format!("cannot open the VM records: {e}"))?;
    // Folders that did not load are adopted or reported by the first reconcile.
    drop(unloaded);
    let store = Arc::new(store);
    let tasks = Arc::new(Tasks::default());
    let provisioner = Arc::new(Provisioner {
        store: store.clone(),
        images: Arc::new(images),
        vmrun: vmrun.clone(),
        tasks: tasks.clone(),
        gold_locks: GoldLocks::default(),
        settings: ProvisionSettings {
            ip_wait_timeout: config.ip_wait_timeout,
            ip_poll_interval: config.ip_poll_interval,
            callback: CallbackSettings {
                timeout: config.callback_timeout,
                retries: config.callback_retries,
            },
        },
    });
    let jobs = provision::start_pool(provisioner, config.provision_threads);
    let service = Arc::new(Service::new(store, vmrun, tasks, jobs));

    let addr = SocketAddr::new(config.bind, config.port);
    let listener = HttpServer::bind(addr)?;
    let bound = listener
        .server_addr()
        .to_ip()
        .map(|a| a.to_string())
        .unwrap_or_else(|| addr.to_string());
    service.reconcile(Reconcile::Startup);
    start_reconciler(service.clone(), config.reconcile_interval);
    shutdown::install_handlers();
    let server = HttpServer::start(listener, config.http_threads, service);
    info!(
        "listening on http://{bound} (data in {})",
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
