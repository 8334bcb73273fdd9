//! Settings: each is a flag `--some-name` and an environment variable
//! `OSX_BUILDER_SOME_NAME` (the flag wins), except the seed's own two, `PORT` and
//! `VMWARE_VMRUN_PATH`.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Config {
    pub port: u16,
    pub bind: IpAddr,
    pub data_dir: PathBuf,
    pub vmrun_path: PathBuf,
    pub vmrun_host_type: Option<String>,
    pub http_threads: usize,
    pub provision_threads: usize,
    pub ip_wait_timeout: Duration,
    pub ip_poll_interval: Duration,
    /// No Tools and no DHCP lease this long after a start: reset the VM once, then fail it.
    pub boot_timeout: Duration,
    /// The boot watchdog retries a headless VM with a stop and a `start gui` instead.
    pub headless_retry_gui: bool,
    /// How long a VM that failed while running is left running; `None`: stopped at once.
    pub keep_failed: Option<Duration>,
    pub timeout_clone: Duration,
    pub timeout_start: Duration,
    pub timeout_stop: Duration,
    pub timeout_delete: Duration,
    pub timeout_list: Duration,
    pub timeout_ip_query: Duration,
    pub timeout_snapshot: Duration,
    pub max_unpacked_bytes: u64,
    pub download_connect_timeout: Duration,
    pub download_read_timeout: Duration,
    pub download_max_resumes: u32,
    /// Bytes a second an image download must average over each window; 0 for none.
    pub download_min_rate: u64,
    pub download_min_rate_window: Duration,
    /// Image downloads at once; 0 for no limit.
    pub max_downloads: usize,
    pub callback_timeout: Duration,
    pub callback_retries: u32,
    /// ISC-format DHCP leases of VMware's NAT network; empty: none.
    pub dhcp_leases: PathBuf,
    /// Apple's bootpd leases (bridged networks on macOS); empty: none.
    pub dhcp_leases_apple: PathBuf,
    pub reconcile_interval: Duration,
    /// Between the background `vmrun list` calls that keep the running set fresh.
    pub list_interval: Duration,
    /// VMs at once on this host; 0 for no limit.
    pub max_vms: u32,
    /// Bytes that must stay free on the data folder's disk; 0 for no floor.
    pub min_free_disk: u64,
    /// Lease of a VM created without `ttl`; `None` for no lease.
    pub default_ttl: Option<u64>,
    /// Bytes the gold images may use before unused ones are evicted; 0 for no budget.
    pub cache_budget: u64,
    /// Long polls (`GET /vms/:id?wait=`) allowed to wait at once.
    pub max_waiters: usize,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub callback_secret: Option<String>,
    pub callback_secret_file: Option<PathBuf>,
    /// Folders `file://` image URLs may read from; empty: `file://` is off.
    pub file_image_dirs: Vec<PathBuf>,
    /// Networks callbacks may reach; empty: any but this server.
    pub callback_allow: Vec<crate::guard::cidr::Cidr>,
    /// Refuse an image whose VMX reaches outside the VM instead of cleaning each clone.
    pub strict_vmx: bool,
    /// How long a failed VM is kept before it is destroyed; `None`: forever.
    pub failed_retention: Option<Duration>,
    /// VM records at once, of any status; 0 for no limit.
    pub max_records: u64,
    /// Connections at once from one client address; 0 for no limit.
    pub max_connections_per_ip: usize,
    /// PEM bundle trusted for https:// images and callbacks, besides the system store.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain and key: the API is served over HTTPS when both are set.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub log_format: crate::log::Format,
}

/// The longest lease a VM may have: a year. Build VMs live for minutes or hours; a larger
/// number is a typo (milliseconds for seconds, say).
pub const MAX_TTL_SECS: u64 = 365 * 86_400;

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    Serve(Box<Config>),
    Help,
    Version,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (see --help)", self.0)
    }
}

impl std::error::Error for ConfigError {}

struct Setting {
    flag: &'static str,
    env: &'static str,
    default: fn() -> String,
    help: &'static str,
}

macro_rules! setting {
    ($flag:literal, $env:literal, $default:expr, $help:literal) => {
        Setting {
            flag: $flag,
            env: $env,
            default: || String::from($default),
            help: $help,
        }
    };
}

fn default_data_dir() -> String {
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home)
            .join(".osx-builder")
            .to_string_lossy()
            .into_owned(),
        None => ".osx-builder".into(),
    }
}

fn default_vmrun_path() -> String {
    if cfg!(target_os = "macos") {
        "/Applications/VMware Fusion.app/Contents/Library/vmrun".into()
    } else {
        "/usr/bin/vmrun".into()
    }
}

fn default_host_type() -> String {
    // Fusion needs no -T; Workstation on Linux does, as Packer passes it.
    if cfg!(target_os = "macos") {
        String::new()
    } else {
        "ws".into()
    }
}

const SETTINGS: &[Setting] = &[
    setting!("port", "PORT", "12345", "TCP port to listen on"),
    setting!(
        "bind",
        "OSX_BUILDER_BIND",
        "0.0.0.0",
        "address to listen on (all interfaces by default, as the original)"
    ),
    Setting {
        flag: "data-dir",
        env: "OSX_BUILDER_DATA_DIR",
        default: default_data_dir,
        help: "folder holding images/, gold/ and vms/",
    },
    Setting {
        flag: "vmrun-path",
        env: "VMWARE_VMRUN_PATH",
        default: default_vmrun_path,
        help: "path of VMware's vmrun",
    },
    Setting {
        flag: "vmrun-host-type",
        env: "OSX_BUILDER_VMRUN_HOST_TYPE",
        default: default_host_type,
        help: "vmrun -T value (fusion, ws, player); empty for none",
    },
    setting!(
        "http-threads",
        "OSX_BUILDER_HTTP_THREADS",
        "16",
        "threads for HTTP calls that wait on the disk or vmrun (POST, DELETE); GETs use one per core"
    ),
    setting!(
        "provision-threads",
        "OSX_BUILDER_PROVISION_THREADS",
        "4",
        "VMs provisioned at once (download, clone, start, IP wait)"
    ),
    setting!(
        "ip-wait-timeout",
        "OSX_BUILDER_IP_WAIT_TIMEOUT",
        "600",
        "seconds to wait for a started VM's IP address before the callback fires without it"
    ),
    setting!(
        "ip-poll-interval",
        "OSX_BUILDER_IP_POLL_INTERVAL",
        "2",
        "seconds between getGuestIPAddress calls while waiting for the IP"
    ),
    setting!(
        "boot-timeout",
        "OSX_BUILDER_BOOT_TIMEOUT",
        "300",
        "seconds a started VM may go without VMware Tools and without a DHCP lease before it is reset hard once (boot watchdog); as long again after the reset, and it fails boot-timeout"
    ),
    setting!(
        "headless-retry-gui",
        "OSX_BUILDER_HEADLESS_RETRY_GUI",
        "false",
        "the boot watchdog retries a headless VM with vmrun stop hard then start gui (Fusion's headless VMs that never boot) instead of reset hard"
    ),
    setting!(
        "keep-failed",
        "OSX_BUILDER_KEEP_FAILED",
        "0",
        "seconds a VM that failed while running (start, IP wait, boot watchdog) is left running for inspection, then destroyed as by its lease; 0 stops it hard at once (as ?keep=true asks for one VM)"
    ),
    setting!(
        "dhcp-leases",
        "OSX_BUILDER_DHCP_LEASES",
        "/var/db/vmware/vmnet-dhcpd-vmnet8.leases",
        "VMware's DHCP leases (ISC format), read for a VM's address when Tools say nothing; empty for none"
    ),
    setting!(
        "dhcp-leases-apple",
        "OSX_BUILDER_DHCP_LEASES_APPLE",
        "/var/db/dhcpd_leases",
        "macOS's DHCP leases (bridged networks), read likewise; empty for none"
    ),
    setting!(
        "vmrun-timeout-clone",
        "OSX_BUILDER_VMRUN_TIMEOUT_CLONE",
        "120",
        "seconds before a vmrun clone is killed"
    ),
    setting!(
        "vmrun-timeout-start",
        "OSX_BUILDER_VMRUN_TIMEOUT_START",
        "300",
        "seconds before a vmrun start is killed"
    ),
    setting!(
        "vmrun-timeout-stop",
        "OSX_BUILDER_VMRUN_TIMEOUT_STOP",
        "60",
        "seconds before a vmrun stop is killed"
    ),
    setting!(
        "vmrun-timeout-delete",
        "OSX_BUILDER_VMRUN_TIMEOUT_DELETE",
        "30",
        "seconds before a vmrun deleteVM is killed"
    ),
    setting!(
        "vmrun-timeout-list",
        "OSX_BUILDER_VMRUN_TIMEOUT_LIST",
        "10",
        "seconds before a vmrun list is killed"
    ),
    setting!(
        "vmrun-timeout-ip",
        "OSX_BUILDER_VMRUN_TIMEOUT_IP",
        "15",
        "seconds before one vmrun getGuestIPAddress is killed"
    ),
    setting!(
        "vmrun-timeout-snapshot",
        "OSX_BUILDER_VMRUN_TIMEOUT_SNAPSHOT",
        "60",
        "seconds before a vmrun snapshot or listSnapshots is killed"
    ),
    setting!(
        "max-unpacked-bytes",
        "OSX_BUILDER_MAX_UNPACKED_BYTES",
        "512GiB",
        "largest total size an image may unpack to (decompression bomb guard; units as --min-free-disk)"
    ),
    setting!(
        "download-connect-timeout",
        "OSX_BUILDER_DOWNLOAD_CONNECT_TIMEOUT",
        "30",
        "seconds to connect to an image server"
    ),
    setting!(
        "download-read-timeout",
        "OSX_BUILDER_DOWNLOAD_READ_TIMEOUT",
        "60",
        "seconds without a byte before an image download counts as stalled"
    ),
    setting!(
        "download-max-resumes",
        "OSX_BUILDER_DOWNLOAD_MAX_RESUMES",
        "5",
        "times a dropped image download is resumed"
    ),
    setting!(
        "download-min-rate",
        "OSX_BUILDER_DOWNLOAD_MIN_RATE",
        "0",
        "bytes a second (units as --min-free-disk, e.g. 64KiB) an image download must average over each --download-min-rate-window, else it fails image-timeout; 0 for no minimum"
    ),
    setting!(
        "download-min-rate-window",
        "OSX_BUILDER_DOWNLOAD_MIN_RATE_WINDOW",
        "60",
        "seconds over which --download-min-rate is measured"
    ),
    setting!(
        "max-downloads",
        "OSX_BUILDER_MAX_DOWNLOADS",
        "2",
        "image downloads that run at once; the others wait in phase queued-download (0 for no limit)"
    ),
    setting!(
        "callback-timeout",
        "OSX_BUILDER_CALLBACK_TIMEOUT",
        "10",
        "seconds for one callback POST"
    ),
    setting!(
        "callback-retries",
        "OSX_BUILDER_CALLBACK_RETRIES",
        "3",
        "retries of a callback after a connection error or a 5xx"
    ),
    setting!(
        "reconcile-interval",
        "OSX_BUILDER_RECONCILE_INTERVAL",
        "60",
        "seconds between checks of every VM's state against vmrun list and the disk"
    ),
    setting!(
        "list-interval",
        "OSX_BUILDER_LIST_INTERVAL",
        "3",
        "seconds between background vmrun list calls that tell admission, /healthz and /metrics which VMs run (no request runs vmrun)"
    ),
    setting!(
        "max-vms",
        "OSX_BUILDER_MAX_VMS",
        "0",
        "VMs this host runs at once, ours and others vmrun lists; 0 for no limit, as the original had (for macOS guests set 2: Apple's licence allows 2 macOS VMs per Mac)"
    ),
    setting!(
        "min-free-disk",
        "OSX_BUILDER_MIN_FREE_DISK",
        "1GiB",
        "free space to keep on the data folder's disk (bytes, or with KiB/MiB/GiB/TiB); creates are refused and unused gold images evicted below it; 0 for no floor"
    ),
    setting!(
        "default-ttl",
        "OSX_BUILDER_DEFAULT_TTL",
        "0",
        "lease in seconds of a VM created without ttl: it is destroyed when it expires unless renewed; 0 for none"
    ),
    setting!(
        "cache-budget",
        "OSX_BUILDER_CACHE_BUDGET",
        "0",
        "most bytes gold images may take (bytes, or with KiB/MiB/GiB/TiB); least recently used images no VM needs are evicted above it; 0 for no budget"
    ),
    setting!(
        "max-waiters",
        "OSX_BUILDER_MAX_WAITERS",
        "8",
        "long polls (GET /vms/:id?wait=) that may wait at once, each holding an HTTP thread; further ones answer at once; at most --http-threads minus 1 are used"
    ),
    setting!(
        "token",
        "OSX_BUILDER_TOKEN",
        "",
        "bearer token every request but /healthz must carry (Authorization: Bearer <token>); none for a trusted network"
    ),
    setting!(
        "token-file",
        "OSX_BUILDER_TOKEN_FILE",
        "",
        "file whose first line is the bearer token (keeps it out of ps and plists)"
    ),
    setting!(
        "callback-secret",
        "OSX_BUILDER_CALLBACK_SECRET",
        "",
        "secret (at least 16 characters) that signs each callback (HMAC-SHA256 headers X-OSX-Builder-Timestamp and X-OSX-Builder-Signature)"
    ),
    setting!(
        "callback-secret-file",
        "OSX_BUILDER_CALLBACK_SECRET_FILE",
        "",
        "file whose first line is the callback secret"
    ),
    setting!(
        "file-image-dir",
        "OSX_BUILDER_FILE_IMAGE_DIR",
        "",
        "folder file:// image URLs may read from (repeatable; the variable takes a comma-separated list); without it file:// URLs are refused"
    ),
    setting!(
        "callback-allow",
        "OSX_BUILDER_CALLBACK_ALLOW",
        "",
        "network callbacks may reach, as 10.0.0.0/8 (repeatable; the variable takes a comma-separated list); without it any host but this server"
    ),
    setting!(
        "strict-vmx",
        "OSX_BUILDER_STRICT_VMX",
        "false",
        "refuse an image whose VMX names files outside the VM, shared folders, host ports or passthrough devices (image-vmx-unsafe) instead of removing those lines from each clone"
    ),
    setting!(
        "failed-retention",
        "OSX_BUILDER_FAILED_RETENTION",
        "86400",
        "seconds a failed VM is kept for inspection before it is destroyed as a DELETE does; 0 to keep failed VMs until deleted"
    ),
    setting!(
        "max-records",
        "OSX_BUILDER_MAX_RECORDS",
        "1000",
        "VM records this host keeps at once, of any status; creates past it get 503 capacity-exhausted; 0 for no limit"
    ),
    setting!(
        "max-connections-per-ip",
        "OSX_BUILDER_MAX_CONNECTIONS_PER_IP",
        "256",
        "HTTP connections open at once from one client address (of 1024 in all); more are answered 503; 0 for no limit"
    ),
    setting!(
        "ca-file",
        "OSX_BUILDER_CA_FILE",
        "",
        "PEM bundle of CAs trusted for https:// images and callbacks, besides the system store (or SSL_CERT_FILE / SSL_CERT_DIR when set, as curl and OpenSSL use them)"
    ),
    setting!(
        "tls-cert",
        "OSX_BUILDER_TLS_CERT",
        "",
        "PEM certificate chain: with --tls-key, the API is served over HTTPS only"
    ),
    setting!(
        "tls-key",
        "OSX_BUILDER_TLS_KEY",
        "",
        "PEM private key (PKCS#8, RSA or EC, unencrypted) of --tls-cert"
    ),
    setting!(
        "log-format",
        "OSX_BUILDER_LOG_FORMAT",
        "text",
        "text (a line per event) or json (an object per line: ts, level, msg, vm, image, command, code, duration_ms)"
    ),
];

/// Settings that may be given more than once; their variables hold comma-separated lists.
const REPEATABLE: &[&str] = &["file-image-dir", "callback-allow"];

/// Settings that are switches: `--strict-vmx` alone means true.
const SWITCHES: &[&str] = &["strict-vmx", "headless-retry-gui"];

pub fn help_text() -> String {
    let mut text = format!(
        "osx-builder {}\nHTTP API that creates, inspects and destroys VMware Fusion VMs as linked clones of cached gold images.\n\nUsage: osx-builder [serve] [--setting value]...   run the server\n       osx-builder vm|image|drain|undrain|health ...   talk to a running server (osx-builder vm --help)\n\nSettings (flag, environment variable, default):\n",
        env!("CARGO_PKG_VERSION")
    );
    for s in SETTINGS {
        let default = (s.default)();
        let shown = if default.is_empty() {
            "(none)".to_string()
        } else {
            default
        };
        text.push_str(&format!(
            "  --{:<26} {:<38} {}\n      {}\n",
            s.flag, s.env, shown, s.help
        ));
    }
    text.push_str("  --help     print this help\n  --version  print the version\n");
    text
}

/// Parses the command line (without the program name) against the environment.
pub fn parse(args: &[String], env: &HashMap<String, String>) -> Result<Command, ConfigError> {
    let mut flags: HashMap<&'static str, String> = HashMap::new();
    let mut lists: HashMap<&'static str, Vec<String>> = HashMap::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        match arg.as_str() {
            "--help" | "-h" => return Ok(Command::Help),
            "--version" | "-V" => return Ok(Command::Version),
            _ => {}
        }
        let Some(body) = arg.strip_prefix("--") else {
            return Err(ConfigError(format!("unexpected argument {arg:?}")));
        };
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (body, None),
        };
        let setting = SETTINGS
            .iter()
            .find(|s| s.flag == name)
            .ok_or_else(|| ConfigError(format!("unknown setting --{name}")))?;
        let switch_value = args
            .get(i + 1)
            .filter(|v| matches!(v.as_str(), "true" | "false" | "1" | "0"));
        let value = match inline {
            Some(value) => value,
            None if SWITCHES.contains(&setting.flag) => match switch_value {
                Some(v) => {
                    i += 1;
                    v.clone()
                }
                None => "true".into(),
            },
            None => {
                i += 1;
                args.get(i)
                    .cloned()
                    .ok_or_else(|| ConfigError(format!("--{name} needs a value")))?
            }
        };
        if REPEATABLE.contains(&setting.flag) {
            lists.entry(setting.flag).or_default().push(value.clone());
        }
        flags.insert(setting.flag, value);
        i += 1;
    }
    let value = |flag: &str| -> (String, String) {
        let setting = SETTINGS.iter().find(|s| s.flag == flag);
        let Some(setting) = setting else {
            return (String::new(), flag.to_string());
        };
        let v = flags
            .get(setting.flag)
            .cloned()
            .or_else(|| env.get(setting.env).cloned())
            .unwrap_or_else(setting.default);
        (v, format!("--{} / {}", setting.flag, setting.env))
    };
    let seconds = |flag: &str| -> Result<Duration, ConfigError> {
        let (v, name) = value(flag);
        let secs: f64 = v
            .trim()
            .parse()
            .map_err(|_| ConfigError(format!("{name} must be a number of seconds, got {v:?}")))?;
        if !secs.is_finite() || secs <= 0.0 || secs > 30.0 * 86_400.0 {
            return Err(ConfigError(format!(
                "{name} must be between 0 and 2592000 seconds, got {v:?}"
            )));
        }
        Ok(Duration::from_secs_f64(secs))
    };
    fn number<T: std::str::FromStr>(
        (v, name): (String, String),
        what: &str,
    ) -> Result<T, ConfigError> {
        v.trim()
            .parse()
            .map_err(|_| ConfigError(format!("{name} must be {what}, got {v:?}")))
    }
    let positive = |flag: &str| -> Result<usize, ConfigError> {
        let n: usize = number(value(flag), "a whole number from 1 to 1024")?;
        if n == 0 || n > 1024 {
            return Err(ConfigError(format!(
                "{} must be a whole number from 1 to 1024, got {n}",
                value(flag).1
            )));
        }
        Ok(n)
    };
    let host_type = value("vmrun-host-type").0;
    let host_type = host_type.trim();
    let vmrun_host_type = match host_type {
        "" => None,
        "fusion" | "ws" | "player" => Some(host_type.to_string()),
        other => {
            return Err(ConfigError(format!(
                "--vmrun-host-type / OSX_BUILDER_VMRUN_HOST_TYPE must be fusion, ws, player or empty, got {other:?}"
            )))
        }
    };
    // Secrets: unset means none. Set but empty is refused: it is how a failed variable
    // substitution looks, and running without the token then would open the API silently.
    let optional = |flag: &str| -> Result<Option<String>, ConfigError> {
        let (v, name) = value(flag);
        if !v.trim().is_empty() {
            return Ok(Some(v));
        }
        let setting = SETTINGS.iter().find(|s| s.flag == flag);
        let given = setting.is_some_and(|s| flags.contains_key(s.flag) || env.contains_key(s.env));
        if given {
            return Err(ConfigError(format!(
                "{name} is set but empty; give it a value or unset it"
            )));
        }
        Ok(None)
    };
    let default_ttl: u64 = number(value("default-ttl"), "a whole number of seconds")?;
    if default_ttl > MAX_TTL_SECS {
        return Err(ConfigError(format!(
            "--default-ttl / OSX_BUILDER_DEFAULT_TTL must be at most {MAX_TTL_SECS} seconds (a year), got {default_ttl}"
        )));
    }
    // Flags replace the variable's list rather than add to it, as for other settings.
    let list = |flag: &'static str| -> Vec<String> {
        match lists.get(flag) {
            Some(given) => given.clone(),
            None => value(flag)
                .0
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(String::from)
                .collect(),
        }
    };
    let callback_allow = list("callback-allow")
        .iter()
        .map(|v| {
            crate::guard::cidr::Cidr::parse(v).map_err(|e| {
                ConfigError(format!(
                    "--callback-allow / OSX_BUILDER_CALLBACK_ALLOW: {e}"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let switch = |flag: &str| -> Result<bool, ConfigError> {
        let (v, name) = value(flag);
        match v.trim() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" | "" => Ok(false),
            other => Err(ConfigError(format!(
                "{name} must be true or false, got {other:?}"
            ))),
        }
    };
    let strict_vmx = switch("strict-vmx")?;
    let headless_retry_gui = switch("headless-retry-gui")?;
    let keep_failed: f64 = number(value("keep-failed"), "a number of seconds")?;
    if !keep_failed.is_finite() || !(0.0..=MAX_TTL_SECS as f64).contains(&keep_failed) {
        return Err(ConfigError(format!(
            "--keep-failed / OSX_BUILDER_KEEP_FAILED must be from 0 to {MAX_TTL_SECS} seconds, got {keep_failed}"
        )));
    }
    let failed_retention: f64 = number(value("failed-retention"), "a number of seconds")?;
    if !failed_retention.is_finite() || !(0.0..=MAX_TTL_SECS as f64).contains(&failed_retention) {
        return Err(ConfigError(format!(
            "--failed-retention / OSX_BUILDER_FAILED_RETENTION must be from 0 to {MAX_TTL_SECS} seconds, got {failed_retention}"
        )));
    }
    let (log_format, _) = value("log-format");
    let log_format = crate::log::Format::parse(log_format.trim()).ok_or_else(|| {
        ConfigError(format!(
            "--log-format / OSX_BUILDER_LOG_FORMAT must be text or json, got {log_format:?}"
        ))
    })?;
    let data_dir = PathBuf::from(value("data-dir").0);
    if data_dir.as_os_str().is_empty() {
        return Err(ConfigError(
            "--data-dir / OSX_BUILDER_DATA_DIR must not be empty".into(),
        ));
    }
    Ok(Command::Serve(Box::new(Config {
        port: number(value("port"), "a port number from 0 to 65535")?,
        bind: number(value("bind"), "an IP address such as 0.0.0.0 or 127.0.0.1")?,
        data_dir,
        vmrun_path: PathBuf::from(value("vmrun-path").0),
        vmrun_host_type,
        http_threads: positive("http-threads")?,
        provision_threads: positive("provision-threads")?,
        ip_wait_timeout: seconds("ip-wait-timeout")?,
        ip_poll_interval: seconds("ip-poll-interval")?,
        boot_timeout: seconds("boot-timeout")?,
        headless_retry_gui,
        keep_failed: (keep_failed > 0.0).then(|| Duration::from_secs_f64(keep_failed)),
        timeout_clone: seconds("vmrun-timeout-clone")?,
        timeout_start: seconds("vmrun-timeout-start")?,
        timeout_stop: seconds("vmrun-timeout-stop")?,
        timeout_delete: seconds("vmrun-timeout-delete")?,
        timeout_list: seconds("vmrun-timeout-list")?,
        timeout_ip_query: seconds("vmrun-timeout-ip")?,
        timeout_snapshot: seconds("vmrun-timeout-snapshot")?,
        max_unpacked_bytes: bytes(value("max-unpacked-bytes"))?,
        download_connect_timeout: seconds("download-connect-timeout")?,
        download_read_timeout: seconds("download-read-timeout")?,
        download_max_resumes: number(value("download-max-resumes"), "a whole number")?,
        // `64KiB/s` reads as meant.
        download_min_rate: bytes({
            let (v, name) = value("download-min-rate");
            (v.trim().trim_end_matches("/s").to_string(), name)
        })?,
        download_min_rate_window: seconds("download-min-rate-window")?,
        max_downloads: number(value("max-downloads"), "a whole number (0 for no limit)")?,
        callback_timeout: seconds("callback-timeout")?,
        callback_retries: number(value("callback-retries"), "a whole number")?,
        dhcp_leases: PathBuf::from(value("dhcp-leases").0),
        dhcp_leases_apple: PathBuf::from(value("dhcp-leases-apple").0),
        reconcile_interval: seconds("reconcile-interval")?,
        list_interval: seconds("list-interval")?,
        max_vms: number(value("max-vms"), "a whole number (0 for no limit)")?,
        min_free_disk: bytes(value("min-free-disk"))?,
        default_ttl: (default_ttl > 0).then_some(default_ttl),
        cache_budget: bytes(value("cache-budget"))?,
        max_waiters: number(value("max-waiters"), "a whole number")?,
        token: optional("token")?,
        token_file: optional("token-file")?.map(PathBuf::from),
        callback_secret: optional("callback-secret")?,
        callback_secret_file: optional("callback-secret-file")?.map(PathBuf::from),
        file_image_dirs: list("file-image-dir")
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        callback_allow,
        strict_vmx,
        failed_retention: (failed_retention > 0.0)
            .then(|| Duration::from_secs_f64(failed_retention)),
        max_records: number(value("max-records"), "a whole number (0 for no limit)")?,
        max_connections_per_ip: number(
            value("max-connections-per-ip"),
            "a whole number (0 for no limit)",
        )?,
        ca_file: optional("ca-file")?.map(PathBuf::from),
        tls_cert: optional("tls-cert")?.map(PathBuf::from),
        tls_key: optional("tls-key")?.map(PathBuf::from),
        log_format,
    })))
}

/// A size: whole bytes (`10737418240`), or a number with a unit: `KiB`, `MiB`, `GiB`, `TiB`
/// (powers of 1024; `K`, `M`, `G`, `T` mean the same, as in `df -h`) or `KB`, `MB`, `GB`,
/// `TB` (powers of 1000), any case, with or without a space: `10GiB`, `1.5 TB`.
fn bytes((v, name): (String, String)) -> Result<u64, ConfigError> {
    let error = || {
        ConfigError(format!(
            "{name} must be a number of bytes, or a number with KiB, MiB, GiB or TiB (e.g. 10GiB), got {v:?}"
        ))
    };
    let text = v.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let scale: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(error()),
    };
    if scale == 1 {
        return number.parse().map_err(|_| error());
    }
    let amount: f64 = number.parse().map_err(|_| error())?;
    let total = amount * scale as f64;
    // 2^63 and more would not fit once rounded; no disk is that large.
    if !total.is_finite() || !(0.0..9.2e18).contains(&total) {
        return Err(error());
    }
    Ok(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn serve(list: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match parse(&args(list), &env)? {
            Command::Serve(config) => Ok(*config),
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_original() {
        let config = serve(&[], &[("HOME", "/h")]).unwrap();
        assert_eq!(config.port, 12345);
        assert_eq!(config.bind.to_string(), "0.0.0.0");
        assert_eq!(config.ip_wait_timeout, Duration::from_secs(600));
    }

    #[test]
    fn flag_wins_over_environment_and_both_forms_parse() {
        let config = serve(&["--port", "9000", "--bind=127.0.0.1"], &[("PORT", "8000")]).unwrap();
        assert_eq!(config.port, 9000);
        assert_eq!(config.bind.to_string(), "127.0.0.1");
        let config = serve(&[], &[("PORT", "8000"), ("VMWARE_VMRUN_PATH", "/x/vmrun")]).unwrap();
        assert_eq!(config.port, 8000);
        assert_eq!(config.vmrun_path, PathBuf::from("/x/vmrun"));
        let config = serve(&[], &[("OSX_BUILDER_IP_POLL_INTERVAL", "0.05")]).unwrap();
        assert_eq!(config.ip_poll_interval, Duration::from_millis(50));
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (list, needle) in [
            (vec!["--port", "x"], "--port / PORT"),
            (vec!["--bind", "nowhere"], "--bind"),
            (vec!["--provision-threads", "0"], "--provision-threads"),
            (vec!["--ip-wait-timeout", "-1"], "--ip-wait-timeout"),
            (vec!["--vmrun-host-type", "esx"], "--vmrun-host-type"),
            (vec!["--nope", "1"], "unknown setting --nope"),
            (vec!["--port"], "--port needs a value"),
            (vec!["stray"], "unexpected argument"),
            (vec!["--log-format", "xml"], "--log-format"),
        ] {
            let err = serve(&list, &[]).unwrap_err();
            assert!(err.0.contains(needle), "{list:?}: {err}");
        }
    }

    #[test]
    fn fleet_settings_parse_sizes_and_optional_secrets() {
        let config = serve(&[], &[("HOME", "/h")]).unwrap();
        // A host the original ran keeps working after the swap: no VM limit, and a floor
        // only a disk too full to boot a VM is under.
        assert_eq!(config.max_vms, 0);
        assert_eq!(config.min_free_disk, 1 << 30);
        assert_eq!(config.list_interval, Duration::from_secs(3));
        assert_eq!(config.default_ttl, None);
        assert_eq!(config.cache_budget, 0);
        assert_eq!((config.token, config.token_file), (None, None));
        let config = serve(
            &[
                "--min-free-disk",
                "1.5 GiB",
                "--cache-budget=2TB",
                "--max-unpacked-bytes",
                "100MiB",
                "--default-ttl",
                "3600",
                "--token-file",
                "/etc/osxb-token",
            ],
            &[
                ("OSX_BUILDER_MAX_VMS", "0"),
                ("OSX_BUILDER_CALLBACK_SECRET", "s3"),
            ],
        )
        .unwrap();
        assert_eq!(config.min_free_disk, 3 << 29);
        assert_eq!(config.cache_budget, 2_000_000_000_000);
        assert_eq!(config.max_unpacked_bytes, 100 << 20);
        assert_eq!(config.default_ttl, Some(3600));
        assert_eq!(config.max_vms, 0);
        assert_eq!(config.token_file, Some(PathBuf::from("/etc/osxb-token")));
        assert_eq!(config.callback_secret.as_deref(), Some("s3"));
        for (v, want) in [
            ("0", 0),
            ("512", 512),
            ("4k", 4096),
            ("1MiB", 1 << 20),
            ("2 g", 2 << 30),
        ] {
            assert_eq!(
                serve(&["--cache-budget", v], &[]).unwrap().cache_budget,
                want,
                "{v}"
            );
        }
        for bad in ["-1", "10 GiBs", "1.5", "GiB", "1e3", "99999999999 TiB"] {
            let err = serve(&["--min-free-disk", bad], &[]).unwrap_err();
            assert!(err.0.contains("--min-free-disk"), "{bad}: {err}");
        }
        let err = serve(&["--default-ttl", "99999999999"], &[]).unwrap_err();
        assert!(err.0.contains("a year"), "{err}");
        let err = serve(&[], &[("OSX_BUILDER_TOKEN", "")]).unwrap_err();
        assert!(
            err.0.contains("OSX_BUILDER_TOKEN is set but empty"),
            "{err}"
        );
        let err = serve(&["--callback-secret-file", " "], &[]).unwrap_err();
        assert!(err.0.contains("--callback-secret-file"), "{err}");
    }

    #[test]
    fn security_settings_repeat_and_parse() {
        let config = serve(&[], &[("HOME", "/h")]).unwrap();
        assert!(config.file_image_dirs.is_empty() && config.callback_allow.is_empty());
        assert!(!config.strict_vmx);
        assert_eq!(config.failed_retention, Some(Duration::from_secs(86_400)));
        assert_eq!(config.max_records, 1000);
        let config = serve(
            &[
                "--file-image-dir",
                "/a",
                "--strict-vmx",
                "--file-image-dir=/b",
                "--callback-allow",
                "10.0.0.0/8",
                "--failed-retention",
                "0",
            ],
            &[
                ("OSX_BUILDER_FILE_IMAGE_DIR", "/c"),
                ("OSX_BUILDER_CALLBACK_ALLOW", "1.2.3.4,fd00::/8"),
            ],
        )
        .unwrap();
        assert_eq!(
            config.file_image_dirs,
            [PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(config.callback_allow.len(), 1);
        assert!(config.strict_vmx);
        assert_eq!(config.failed_retention, None);
        let config = serve(
            &["--strict-vmx", "false"],
            &[("OSX_BUILDER_CALLBACK_ALLOW", "1.2.3.4, fd00::/8")],
        )
        .unwrap();
        assert!(!config.strict_vmx);
        assert_eq!(config.callback_allow.len(), 2);
        let err = serve(&["--callback-allow", "10.0.0.0/40"], &[]).unwrap_err();
        assert!(err.0.contains("--callback-allow"), "{err}");
    }

    #[test]
    fn boot_watchdog_and_keep_settings() {
        let config = serve(&[], &[("HOME", "/h")]).unwrap();
        assert_eq!(config.boot_timeout, Duration::from_secs(300));
        assert!(!config.headless_retry_gui);
        assert_eq!(config.keep_failed, None);
        let config = serve(
            &["--boot-timeout", "2.5", "--headless-retry-gui"],
            &[("OSX_BUILDER_KEEP_FAILED", "600")],
        )
        .unwrap();
        assert_eq!(config.boot_timeout, Duration::from_millis(2500));
        assert!(config.headless_retry_gui);
        assert_eq!(config.keep_failed, Some(Duration::from_secs(600)));
        let config = serve(
            &["--keep-failed", "0"],
            &[("OSX_BUILDER_HEADLESS_RETRY_GUI", "1")],
        )
        .unwrap();
        assert_eq!(config.keep_failed, None);
        assert!(config.headless_retry_gui);
        for bad in [
            &["--boot-timeout", "0"][..],
            &["--keep-failed", "-1"],
            &["--headless-retry-gui=maybe"],
        ] {
            assert!(serve(bad, &[]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn help_lists_every_setting() {
        let text = help_text();
        for s in SETTINGS {
            assert!(text.contains(&format!("--{}", s.flag)));
            assert!(text.contains(s.env));
        }
    }
}
