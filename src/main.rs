use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use osx_builder::api::server::HttpServer;
use osx_builder::app;
use osx_builder::config::{self, Command, Config};
use osx_builder::sys::log::{self, Format};
use osx_builder::sys::shutdown;
use osx_builder::{error, info, warn};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let env: HashMap<String, String> = std::env::vars().collect();
    // No subcommand runs the server, as the original (which took no arguments) did.
    if args.first().map(String::as_str) == Some("serve") {
        args.remove(0);
    } else if let Some(client) = osx_builder::cli::client_args(&args) {
        return osx_builder::cli::run(&client, &env);
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
                log::fatal(format_args!("{message}"));
                ExitCode::FAILURE
            }
        },
        Err(err) => {
            match config::requested_log_format(&args, &env) {
                Format::Text => eprintln!("osx-builder: {err}"),
                Format::Json => {
                    log::set_format(Format::Json);
                    error!("{err}");
                }
            }
            ExitCode::from(2)
        }
    }
}

fn serve(config: &Config) -> Result<(), String> {
    shutdown::install_hangup_handler();
    log::set_format(config.log_format);
    log::set_level(config.log_level);
    if let Some(path) = &config.log_file {
        log::open_file(path)?;
    }
    log::install_bridge();
    // So that an operator sees their plist (or flags) was read, and what it changed.
    log::milestone(format_args!(
        "osx-builder {} starting; settings other than the defaults: {}",
        env!("CARGO_PKG_VERSION"),
        if config.changed.is_empty() {
            "none".to_string()
        } else {
            config.changed.join(" ")
        }
    ));
    if config.log_format == Format::Json {
        log::install_panic_hook();
    }
    match osx_builder::sys::fd_limit::raise() {
        Ok(limit) if limit < 1024 => warn!(
            "only {limit} open files allowed; raise the hard limit (ulimit -Hn) for a busy host"
        ),
        Ok(_) => {}
        Err(err) => warn!("cannot raise the open-file limit: {err}"),
    }
    let checked = app::check(config)?;
    let trust = osx_builder::tls::client_trust(config.ca_file.as_deref())?;
    info!("https images and callbacks trust {}", trust.summary());
    let identity = osx_builder::tls::server::load_identity(
        config.tls_cert.as_deref(),
        config.tls_key.as_deref(),
    )?;
    let scheme = if identity.is_some() { "https" } else { "http" };
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "cannot create the data folder {}: {e}; set --data-dir / OSX_BUILDER_DATA_DIR to a writable folder",
            config.data_dir.display()
        )
    })?;
    // Held until the process exits: a second server on this folder refuses to start.
    let _data_lock =
        osx_builder::sys::data_lock::acquire(&config.data_dir).map_err(|e| e.to_string())?;
    let hypervisor = app::hypervisor(config);
    match hypervisor.describe() {
        Ok(about) => log::milestone(format_args!("hypervisor {}: {about}", hypervisor.kind())),
        Err(err) => warn!(
            "hypervisor {}: {err}; every create will fail until {} is there",
            hypervisor.kind(),
            hypervisor.tool()
        ),
    }
    let trust_for_fleet = trust.clone();
    let app = app::build(config, checked, hypervisor, trust)?;
    let service = app.service.clone();

    let addr = SocketAddr::new(config.bind, config.port);
    let listener = HttpServer::bind(addr, identity, config.max_connections_per_ip)?;
    let bound = listener
        .server_addr()
        .to_ip()
        .map(|a| a.to_string())
        .unwrap_or_else(|| addr.to_string());
    if let Some(bound) = listener.server_addr().to_ip() {
        app.guard.set_listening(bound);
    }
    app.start_background(config);
    if app.auth.enabled() {
        info!("requests need a bearer token (Authorization: Bearer ...), except /healthz");
    } else {
        info!("no token set: any client that reaches this port may use the API; fine on a trusted build network only");
    }
    let node = match &config.fleet {
        Some(fleet) => {
            let port = listener
                .server_addr()
                .to_ip()
                .map_or(config.port, |a| a.port());
            let host = if config.bind.is_unspecified() {
                fleet.host_name.clone()
            } else {
                match config.bind {
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    ip => ip.to_string(),
                }
            };
            let url = fleet
                .advertise_url
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{host}:{port}"));
            Some(osx_builder::fleet::Node::join(
                fleet,
                service.clone(),
                url,
                &trust_for_fleet,
            )?)
        }
        None => None,
    };
    shutdown::install_handlers();
    let server = HttpServer::start(
        listener,
        config.http_threads,
        service,
        app.auth.clone(),
        node,
    );
    log::milestone(format_args!(
        "listening on {scheme}://{bound} (data in {})",
        config.data_dir.display()
    ));
    // SIGHUP is acted on here rather than by the next line written: an idle host writes
    // nothing for hours, and the renamed file (which newsyslog may compress and delete)
    // would stay open until then, as would the reply to the signal. This thread wakes every
    // 100 ms for SIGTERM anyway.
    while !shutdown::requested() {
        if shutdown::take_hangup() {
            log::reopen_file();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    log::milestone(format_args!("stopping: finishing requests in flight"));
    server.shutdown();
    log::milestone(format_args!("stopped"));
    Ok(())
}
