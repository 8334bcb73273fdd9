//! Settings: each is a flag `--some-name` and an environment variable
//! `OSX_BUILDER_SOME_NAME` (the flag wins), except the seed's own two, `PORT` and
//! `VMWARE_VMRUN_PATH`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub mod setting;

use setting::{ConfigError, Setting, Typed};

#[derive(Clone, Debug)]
pub struct Config {
    pub port: u16,
    pub bind: IpAddr,
    pub data_dir: PathBuf,
    /// What runs the VMs.
    pub hypervisor: HypervisorKind,
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
    /// tart's path as given: a bare name is looked for on the PATH, then in Homebrew's
    /// places, by the assembly (the settings do not know the driver).
    pub tart_path: PathBuf,
    /// Given to tart as `TART_HOME`: this server's tart VMs, never a person's `~/.tart`.
    pub tart_home: PathBuf,
    /// The host interface of `network_type: bridged` on tart.
    pub tart_bridge_interface: String,
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
    pub log_format: crate::sys::log::Format,
    /// The least level written: `info` writes a VM's life and what needs a person, `debug`
    /// every routine vmrun call as well.
    pub log_level: crate::sys::log::Level,
    /// The file the log is appended to, reopened on SIGHUP; `None`: stderr.
    pub log_file: Option<PathBuf>,
    /// The settings given that differ from their defaults, as `--flag=value`, for the start-up
    /// line that shows the operator their plist was read. Secrets show as `(set)`.
    pub changed: Vec<String>,
    /// Warm pools of the settings: each name and the file of its spec.
    pub pools: Vec<(String, PathBuf)>,
    /// The fleet this host joins (`--etcd`); `None`: it runs alone.
    pub fleet: Option<crate::fleet::settings::FleetConfig>,
}

/// Which hypervisor runs the VMs (`--hypervisor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypervisorKind {
    /// VMware Fusion or Workstation, through `vmrun`.
    Vmware,
    /// Apple's Virtualization.framework on Apple Silicon Macs, through Cirrus Labs' `tart`.
    Tart,
}

/// tart refuses a third macOS VM (Apple's licence: two per Mac); a host that runs tart and
/// does not say otherwise takes no more creates than that.
pub const TART_DEFAULT_MAX_VMS: u32 = 2;

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

pub const PORT: Setting = Setting {
    flag: "port",
    env: "PORT",
    default: Typed::Count(12345),
    help: "TCP port to listen on",
};

pub const BIND: Setting = Setting {
    flag: "bind",
    env: "OSX_BUILDER_BIND",
    default: Typed::Text("0.0.0.0"),
    help: "address to listen on (all interfaces by default, as the original)",
};

pub const DATA_DIR: Setting = Setting {
    flag: "data-dir",
    env: "OSX_BUILDER_DATA_DIR",
    default: Typed::Home(".osx-builder"),
    help: "folder holding images/, gold/ and vms/",
};

pub const VMRUN_PATH: Setting = Setting {
    flag: "vmrun-path",
    env: "VMWARE_VMRUN_PATH",
    default: Typed::Platform {
        macos: "/Applications/VMware Fusion.app/Contents/Library/vmrun",
        other: "/usr/bin/vmrun",
    },
    help: "path of VMware's vmrun",
};

pub const HYPERVISOR: Setting = Setting {
    flag: "hypervisor",
    env: "OSX_BUILDER_HYPERVISOR",
    default: Typed::Text("vmware"),
    help: "what runs the VMs: vmware (VMware Fusion or Workstation, through vmrun) or tart (Apple Silicon Macs, through Cirrus Labs' tart)",
};

pub const TART_PATH: Setting = Setting {
    flag: "tart-path",
    env: "OSX_BUILDER_TART_PATH",
    default: Typed::Text("tart"),
    help: "path of tart (--hypervisor tart); a bare name is looked for on the PATH, then as /opt/homebrew/bin/tart and /usr/local/bin/tart",
};

pub const TART_HOME: Setting = Setting {
    flag: "tart-home",
    env: "OSX_BUILDER_TART_HOME",
    default: Typed::Text(""),
    help: "folder tart keeps this server's VMs and gold images in (given to tart as TART_HOME); empty: tart/ in the data folder. Never a person's ~/.tart",
};

pub const TART_BRIDGE_INTERFACE: Setting = Setting {
    flag: "tart-bridge-interface",
    env: "OSX_BUILDER_TART_BRIDGE_INTERFACE",
    default: Typed::Text("en0"),
    help: "host interface that network_type bridged joins on tart (tart run --net-bridged=IF)",
};

pub const VMRUN_HOST_TYPE: Setting = Setting {
    flag: "vmrun-host-type",
    env: "OSX_BUILDER_VMRUN_HOST_TYPE",
    default: Typed::Platform {
        macos: "",
        other: "ws",
    },
    help: "vmrun -T value (fusion, ws, player); empty for none",
};

pub const HTTP_THREADS: Setting = Setting {
    flag: "http-threads",
    env: "OSX_BUILDER_HTTP_THREADS",
    default: Typed::Count(16),
    help: "threads for HTTP calls that wait on the disk or vmrun (POST, DELETE); GETs use one per core",
};

pub const PROVISION_THREADS: Setting = Setting {
    flag: "provision-threads",
    env: "OSX_BUILDER_PROVISION_THREADS",
    default: Typed::Count(4),
    help: "VMs provisioned at once (download, clone, start, IP wait)",
};

pub const IP_WAIT_TIMEOUT: Setting = Setting {
    flag: "ip-wait-timeout",
    env: "OSX_BUILDER_IP_WAIT_TIMEOUT",
    default: Typed::Seconds(600),
    help: "seconds to wait for a started VM's IP address before the callback fires without it",
};

pub const IP_POLL_INTERVAL: Setting = Setting {
    flag: "ip-poll-interval",
    env: "OSX_BUILDER_IP_POLL_INTERVAL",
    default: Typed::Seconds(2),
    help: "seconds between getGuestIPAddress calls while waiting for the IP",
};

pub const BOOT_TIMEOUT: Setting = Setting {
    flag: "boot-timeout",
    env: "OSX_BUILDER_BOOT_TIMEOUT",
    default: Typed::Seconds(300),
    help: "seconds a started VM may go without VMware Tools and without a DHCP lease before it is reset hard once (boot watchdog); as long again after the reset, and it fails boot-timeout",
};

pub const HEADLESS_RETRY_GUI: Setting = Setting {
    flag: "headless-retry-gui",
    env: "OSX_BUILDER_HEADLESS_RETRY_GUI",
    default: Typed::Switch(false),
    help: "the boot watchdog retries a headless VM with vmrun stop hard then start gui (Fusion's headless VMs that never boot) instead of reset hard",
};

pub const KEEP_FAILED: Setting = Setting {
    flag: "keep-failed",
    env: "OSX_BUILDER_KEEP_FAILED",
    default: Typed::Seconds(0),
    help: "seconds a VM that failed while running (start, IP wait, boot watchdog) is left running for inspection, then destroyed as by its lease; 0 stops it hard at once (as ?keep=true asks for one VM)",
};

pub const DHCP_LEASES: Setting = Setting {
    flag: "dhcp-leases",
    env: "OSX_BUILDER_DHCP_LEASES",
    default: Typed::Text("/var/db/vmware/vmnet-dhcpd-vmnet8.leases"),
    help: "VMware's DHCP leases (ISC format), read for a VM's address when Tools say nothing; empty for none",
};

pub const DHCP_LEASES_APPLE: Setting = Setting {
    flag: "dhcp-leases-apple",
    env: "OSX_BUILDER_DHCP_LEASES_APPLE",
    default: Typed::Text("/var/db/dhcpd_leases"),
    help: "macOS's DHCP leases (bridged networks), read likewise; empty for none",
};

pub const VMRUN_TIMEOUT_CLONE: Setting = Setting {
    flag: "vmrun-timeout-clone",
    env: "OSX_BUILDER_VMRUN_TIMEOUT_CLONE",
    default: Typed::Seconds(120),
    help: "seconds before a vmrun clone is killed",
};

pub const VMRUN_TIMEOUT_START: Setting = Setting {
    flag: "vmrun-timeout-start",
    env: "OSX_BUILDER_VMRUN_TIMEOUT_START",
    default: Typed::Seconds(300),
    help: "seconds before a vmrun start is killed",
};

pub const VMRUN_TIMEOUT_STOP: Setting = Setting {
    flag: "vmrun-timeout-stop",
    env: "OSX_BUILDER_VMRUN_TIMEOUT_STOP",
    default: Typed::Seconds(60),
    help: "seconds before a vmrun stop is killed",
};

pub const VMRUN_TIMEOUT_DELETE: Setting = Setting {
    flag: "vmrun-timeout-delete",
    env: "OSX_BUILDER_VMRUN_TIMEOUT_DELETE",
    default: Typed::Seconds(30),
    help: "seconds before a vmrun deleteVM is killed",
};

pub const VMRUN_TIMEOUT_LIST: Setting = Setting {
    flag: "vmrun-timeout-list",
    env: "OSX_BUILDER_VMRUN_TIMEOUT_LIST",
    default: Typed::Seconds(10),
    help: "seconds before a vmrun list is killed",
};

pub const VMRUN_TIMEOUT_IP: Setting = Setting {
    flag: "vmrun-timeout-ip",
    env: "OSX_BUILDER_VMRUN_TIMEOUT_IP",
    default: Typed::Seconds(15),
    help: "seconds before one vmrun getGuestIPAddress is killed",
};

pub const VMRUN_TIMEOUT_SNAPSHOT: Setting = Setting {
    flag: "vmrun-timeout-snapshot",
    env: "OSX_BUILDER_VMRUN_TIMEOUT_SNAPSHOT",
    default: Typed::Seconds(60),
    help: "seconds before a vmrun snapshot or listSnapshots is killed",
};

pub const MAX_UNPACKED_BYTES: Setting = Setting {
    flag: "max-unpacked-bytes",
    env: "OSX_BUILDER_MAX_UNPACKED_BYTES",
    default: Typed::Bytes(512 << 30),
    help: "largest total size an image may unpack to (decompression bomb guard; units as --min-free-disk)",
};

pub const DOWNLOAD_CONNECT_TIMEOUT: Setting = Setting {
    flag: "download-connect-timeout",
    env: "OSX_BUILDER_DOWNLOAD_CONNECT_TIMEOUT",
    default: Typed::Seconds(30),
    help: "seconds to connect to an image server",
};

pub const DOWNLOAD_READ_TIMEOUT: Setting = Setting {
    flag: "download-read-timeout",
    env: "OSX_BUILDER_DOWNLOAD_READ_TIMEOUT",
    default: Typed::Seconds(60),
    help: "seconds without a byte before an image download counts as stalled",
};

pub const DOWNLOAD_MAX_RESUMES: Setting = Setting {
    flag: "download-max-resumes",
    env: "OSX_BUILDER_DOWNLOAD_MAX_RESUMES",
    default: Typed::Count(5),
    help: "times a dropped image download is resumed",
};

pub const DOWNLOAD_MIN_RATE: Setting = Setting {
    flag: "download-min-rate",
    env: "OSX_BUILDER_DOWNLOAD_MIN_RATE",
    default: Typed::Bytes(0),
    help: "bytes a second (units as --min-free-disk, e.g. 64KiB) an image download must average over each --download-min-rate-window, else it fails image-timeout; 0 for no minimum",
};

pub const DOWNLOAD_MIN_RATE_WINDOW: Setting = Setting {
    flag: "download-min-rate-window",
    env: "OSX_BUILDER_DOWNLOAD_MIN_RATE_WINDOW",
    default: Typed::Seconds(60),
    help: "seconds over which --download-min-rate is measured",
};

pub const MAX_DOWNLOADS: Setting = Setting {
    flag: "max-downloads",
    env: "OSX_BUILDER_MAX_DOWNLOADS",
    default: Typed::Count(2),
    help: "image downloads that run at once; the others wait in phase queued-download (0 for no limit)",
};

pub const CALLBACK_TIMEOUT: Setting = Setting {
    flag: "callback-timeout",
    env: "OSX_BUILDER_CALLBACK_TIMEOUT",
    default: Typed::Seconds(10),
    help: "seconds for one callback POST",
};

pub const CALLBACK_RETRIES: Setting = Setting {
    flag: "callback-retries",
    env: "OSX_BUILDER_CALLBACK_RETRIES",
    default: Typed::Count(3),
    help: "retries of a callback after a connection error or a 5xx",
};

pub const RECONCILE_INTERVAL: Setting = Setting {
    flag: "reconcile-interval",
    env: "OSX_BUILDER_RECONCILE_INTERVAL",
    default: Typed::Seconds(60),
    help: "seconds between checks of every VM's state against vmrun list and the disk",
};

pub const LIST_INTERVAL: Setting = Setting {
    flag: "list-interval",
    env: "OSX_BUILDER_LIST_INTERVAL",
    default: Typed::Seconds(3),
    help: "seconds between background vmrun list calls that tell admission, /healthz and /metrics which VMs run (no request runs vmrun)",
};

pub const MAX_VMS: Setting = Setting {
    flag: "max-vms",
    env: "OSX_BUILDER_MAX_VMS",
    default: Typed::Count(0),
    help: "VMs this host runs at once, ours and others vmrun lists; 0 for no limit, as the original had (for macOS guests set 2: Apple's licence allows 2 macOS VMs per Mac); with --hypervisor tart and none given: 2",
};

pub const MIN_FREE_DISK: Setting = Setting {
    flag: "min-free-disk",
    env: "OSX_BUILDER_MIN_FREE_DISK",
    default: Typed::Bytes(1 << 30),
    help: "free space to keep on the data folder's disk (bytes, or with KiB/MiB/GiB/TiB); creates are refused and unused gold images evicted below it; 0 for no floor",
};

pub const DEFAULT_TTL: Setting = Setting {
    flag: "default-ttl",
    env: "OSX_BUILDER_DEFAULT_TTL",
    default: Typed::Seconds(0),
    help: "lease in seconds of a VM created without ttl: it is destroyed when it expires unless renewed; 0 for none",
};

pub const CACHE_BUDGET: Setting = Setting {
    flag: "cache-budget",
    env: "OSX_BUILDER_CACHE_BUDGET",
    default: Typed::Bytes(0),
    help: "most bytes gold images may take (bytes, or with KiB/MiB/GiB/TiB); least recently used images no VM needs are evicted above it; 0 for no budget",
};

pub const MAX_WAITERS: Setting = Setting {
    flag: "max-waiters",
    env: "OSX_BUILDER_MAX_WAITERS",
    default: Typed::Count(8),
    help: "long polls (GET /vms/:id?wait=) that may wait at once, each holding an HTTP thread; further ones answer at once; at most --http-threads minus 1 are used",
};

pub const TOKEN: Setting = Setting {
    flag: "token",
    env: "OSX_BUILDER_TOKEN",
    default: Typed::Unset,
    help: "bearer token every request but /healthz must carry (Authorization: Bearer <token>); none for a trusted network",
};

pub const TOKEN_FILE: Setting = Setting {
    flag: "token-file",
    env: "OSX_BUILDER_TOKEN_FILE",
    default: Typed::Unset,
    help: "file whose first line is the bearer token (keeps it out of ps and plists)",
};

pub const CALLBACK_SECRET: Setting = Setting {
    flag: "callback-secret",
    env: "OSX_BUILDER_CALLBACK_SECRET",
    default: Typed::Unset,
    help: "secret (at least 16 characters) that signs each callback (HMAC-SHA256 headers X-OSX-Builder-Timestamp and X-OSX-Builder-Signature)",
};

pub const CALLBACK_SECRET_FILE: Setting = Setting {
    flag: "callback-secret-file",
    env: "OSX_BUILDER_CALLBACK_SECRET_FILE",
    default: Typed::Unset,
    help: "file whose first line is the callback secret",
};

pub const FILE_IMAGE_DIR: Setting = Setting {
    flag: "file-image-dir",
    env: "OSX_BUILDER_FILE_IMAGE_DIR",
    default: Typed::List,
    help: "folder file:// image URLs may read from (repeatable; the variable takes a comma-separated list); without it file:// URLs are refused",
};

pub const CALLBACK_ALLOW: Setting = Setting {
    flag: "callback-allow",
    env: "OSX_BUILDER_CALLBACK_ALLOW",
    default: Typed::List,
    help: "network callbacks may reach, as 10.0.0.0/8 (repeatable; the variable takes a comma-separated list); without it any host but this server",
};

pub const STRICT_VMX: Setting = Setting {
    flag: "strict-vmx",
    env: "OSX_BUILDER_STRICT_VMX",
    default: Typed::Switch(false),
    help: "refuse an image whose VMX names files outside the VM, shared folders, host ports or passthrough devices (image-vmx-unsafe) instead of removing those lines from each clone",
};

pub const FAILED_RETENTION: Setting = Setting {
    flag: "failed-retention",
    env: "OSX_BUILDER_FAILED_RETENTION",
    default: Typed::Seconds(86400),
    help: "seconds a failed VM is kept for inspection before it is destroyed as a DELETE does; 0 to keep failed VMs until deleted",
};

pub const MAX_RECORDS: Setting = Setting {
    flag: "max-records",
    env: "OSX_BUILDER_MAX_RECORDS",
    default: Typed::Count(1000),
    help: "VM records this host keeps at once, of any status; creates past it get 503 capacity-exhausted; 0 for no limit",
};

pub const MAX_CONNECTIONS_PER_IP: Setting = Setting {
    flag: "max-connections-per-ip",
    env: "OSX_BUILDER_MAX_CONNECTIONS_PER_IP",
    default: Typed::Count(256),
    help: "HTTP connections open at once from one client address (of 1024 in all); more are answered 503; 0 for no limit",
};

pub const CA_FILE: Setting = Setting {
    flag: "ca-file",
    env: "OSX_BUILDER_CA_FILE",
    default: Typed::Unset,
    help: "PEM bundle of CAs trusted for https:// images and callbacks, besides the system store (or SSL_CERT_FILE / SSL_CERT_DIR when set, as curl and OpenSSL use them)",
};

pub const TLS_CERT: Setting = Setting {
    flag: "tls-cert",
    env: "OSX_BUILDER_TLS_CERT",
    default: Typed::Unset,
    help: "PEM certificate chain: with --tls-key, the API is served over HTTPS only",
};

pub const TLS_KEY: Setting = Setting {
    flag: "tls-key",
    env: "OSX_BUILDER_TLS_KEY",
    default: Typed::Unset,
    help: "PEM private key (PKCS#8, RSA or EC, unencrypted) of --tls-cert",
};

pub const LOG_FORMAT: Setting = Setting {
    flag: "log-format",
    env: "OSX_BUILDER_LOG_FORMAT",
    default: Typed::Text("text"),
    help: "text (a line per event) or json (an object per line: ts, level, msg, vm, image, command, code, duration_ms)",
};

pub const LOG_LEVEL: Setting = Setting {
    flag: "log-level",
    env: "OSX_BUILDER_LOG_LEVEL",
    default: Typed::Text("info"),
    help: "error, warn, info (a VM's life, and what needs a person; an idle host writes nothing) or debug (every vmrun call as well)",
};

pub const LOG_FILE: Setting = Setting {
    flag: "log-file",
    env: "OSX_BUILDER_LOG_FILE",
    default: Typed::Unset,
    help: "file the log is appended to (created 0644) instead of stderr, reopened on SIGHUP so that newsyslog can rotate it; the start, where the server listens and its stop are written to stderr as well",
};

pub const POOL: Setting = Setting {
    flag: "pool",
    env: "OSX_BUILDER_POOL",
    default: Typed::List,
    help: "warm pool NAME=FILE, FILE holding its spec as PUT /pools/NAME takes it (repeatable; the variable takes a comma-separated list); such a pool cannot be changed or deleted through the API",
};

/// Every setting, in the order `--help` and the README list them.
pub const SETTINGS: &[Setting] = &[
    PORT,
    BIND,
    DATA_DIR,
    HYPERVISOR,
    VMRUN_PATH,
    VMRUN_HOST_TYPE,
    TART_PATH,
    TART_HOME,
    TART_BRIDGE_INTERFACE,
    HTTP_THREADS,
    PROVISION_THREADS,
    IP_WAIT_TIMEOUT,
    IP_POLL_INTERVAL,
    BOOT_TIMEOUT,
    HEADLESS_RETRY_GUI,
    KEEP_FAILED,
    DHCP_LEASES,
    DHCP_LEASES_APPLE,
    VMRUN_TIMEOUT_CLONE,
    VMRUN_TIMEOUT_START,
    VMRUN_TIMEOUT_STOP,
    VMRUN_TIMEOUT_DELETE,
    VMRUN_TIMEOUT_LIST,
    VMRUN_TIMEOUT_IP,
    VMRUN_TIMEOUT_SNAPSHOT,
    MAX_UNPACKED_BYTES,
    DOWNLOAD_CONNECT_TIMEOUT,
    DOWNLOAD_READ_TIMEOUT,
    DOWNLOAD_MAX_RESUMES,
    DOWNLOAD_MIN_RATE,
    DOWNLOAD_MIN_RATE_WINDOW,
    MAX_DOWNLOADS,
    CALLBACK_TIMEOUT,
    CALLBACK_RETRIES,
    RECONCILE_INTERVAL,
    LIST_INTERVAL,
    MAX_VMS,
    MIN_FREE_DISK,
    DEFAULT_TTL,
    CACHE_BUDGET,
    MAX_WAITERS,
    TOKEN,
    TOKEN_FILE,
    CALLBACK_SECRET,
    CALLBACK_SECRET_FILE,
    FILE_IMAGE_DIR,
    CALLBACK_ALLOW,
    STRICT_VMX,
    FAILED_RETENTION,
    MAX_RECORDS,
    MAX_CONNECTIONS_PER_IP,
    CA_FILE,
    TLS_CERT,
    TLS_KEY,
    LOG_FORMAT,
    LOG_LEVEL,
    LOG_FILE,
    POOL,
    crate::fleet::settings::ETCD,
    crate::fleet::settings::ETCD_CA_FILE,
    crate::fleet::settings::ETCD_CERT,
    crate::fleet::settings::ETCD_KEY,
    crate::fleet::settings::ETCD_PREFIX,
    crate::fleet::settings::HOST_NAME,
    crate::fleet::settings::ADVERTISE_URL,
    crate::fleet::settings::FLEET_TTL,
    crate::fleet::settings::FLEET_OPTIONAL,
];

/// Settings whose values are never written to the log.
const SECRETS: &[Setting] = &[TOKEN, CALLBACK_SECRET];

pub fn help_text() -> String {
    let mut text = format!(
        "osx-builder {}\nHTTP API that creates, inspects and destroys VMware Fusion VMs as linked clones of cached gold images.\n\nUsage: osx-builder [serve] [--setting value]...   run the server\n       osx-builder vm|image|pool|host|drain|undrain|health|help ...   talk to a running server (osx-builder help)\n\nSettings (flag, environment variable, default):\n",
        env!("CARGO_PKG_VERSION")
    );
    for s in SETTINGS {
        let default = s.default_text();
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

/// The log format `args` and `env` ask for, read on its own: a usage error in another
/// setting is still written the way the log shipper expects. Text when unset or invalid.
pub fn requested_log_format(
    args: &[String],
    env: &HashMap<String, String>,
) -> crate::sys::log::Format {
    let flag = format!("--{}", LOG_FORMAT.flag);
    let mut given = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if *arg == flag {
            given = rest.next().cloned();
        } else if let Some(value) = arg.strip_prefix(&flag).and_then(|v| v.strip_prefix('=')) {
            given = Some(value.to_string());
        }
    }
    given
        .or_else(|| env.get(LOG_FORMAT.env).cloned())
        .and_then(|v| crate::sys::log::Format::parse(v.trim()))
        .unwrap_or_default()
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
            None if matches!(setting.default, Typed::Switch(_)) => match switch_value {
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
        if setting.default == Typed::List {
            lists.entry(setting.flag).or_default().push(value.clone());
        }
        flags.insert(setting.flag, value);
        i += 1;
    }
    let value = |setting: &Setting| -> (String, String) {
        let v = flags
            .get(setting.flag)
            .cloned()
            .or_else(|| env.get(setting.env).cloned())
            .unwrap_or_else(|| setting.default_text());
        (v, setting.name())
    };
    let seconds = |setting: &Setting| -> Result<Duration, ConfigError> {
        let (v, name) = value(setting);
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
    let positive = |setting: &Setting| -> Result<usize, ConfigError> {
        let n: usize = number(value(setting), "a whole number from 1 to 1024")?;
        if n == 0 || n > 1024 {
            return Err(ConfigError(format!(
                "{} must be a whole number from 1 to 1024, got {n}",
                setting.name()
            )));
        }
        Ok(n)
    };
    let host_type = value(&VMRUN_HOST_TYPE).0;
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
    let optional = |setting: &Setting| -> Result<Option<String>, ConfigError> {
        let (v, name) = value(setting);
        if !v.trim().is_empty() {
            return Ok(Some(v));
        }
        let given = flags.contains_key(setting.flag) || env.contains_key(setting.env);
        if given {
            return Err(ConfigError(format!(
                "{name} is set but empty; give it a value or unset it"
            )));
        }
        Ok(None)
    };
    let default_ttl: u64 = number(value(&DEFAULT_TTL), "a whole number of seconds")?;
    if default_ttl > MAX_TTL_SECS {
        return Err(ConfigError(format!(
            "--default-ttl / OSX_BUILDER_DEFAULT_TTL must be at most {MAX_TTL_SECS} seconds (a year), got {default_ttl}"
        )));
    }
    // Flags replace the variable's list rather than add to it, as for other settings.
    let list = |setting: &Setting| -> Vec<String> {
        match lists.get(setting.flag) {
            Some(given) => given.clone(),
            None => value(setting)
                .0
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(String::from)
                .collect(),
        }
    };
    let callback_allow = list(&CALLBACK_ALLOW)
        .iter()
        .map(|v| {
            crate::guard::cidr::Cidr::parse(v).map_err(|e| {
                ConfigError(format!(
                    "--callback-allow / OSX_BUILDER_CALLBACK_ALLOW: {e}"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let switch = |setting: &Setting| -> Result<bool, ConfigError> {
        let (v, name) = value(setting);
        match v.trim() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" | "" => Ok(false),
            other => Err(ConfigError(format!(
                "{name} must be true or false, got {other:?}"
            ))),
        }
    };
    let strict_vmx = switch(&STRICT_VMX)?;
    let headless_retry_gui = switch(&HEADLESS_RETRY_GUI)?;
    let keep_failed: f64 = number(value(&KEEP_FAILED), "a number of seconds")?;
    if !keep_failed.is_finite() || !(0.0..=MAX_TTL_SECS as f64).contains(&keep_failed) {
        return Err(ConfigError(format!(
            "--keep-failed / OSX_BUILDER_KEEP_FAILED must be from 0 to {MAX_TTL_SECS} seconds, got {keep_failed}"
        )));
    }
    let failed_retention: f64 = number(value(&FAILED_RETENTION), "a number of seconds")?;
    if !failed_retention.is_finite() || !(0.0..=MAX_TTL_SECS as f64).contains(&failed_retention) {
        return Err(ConfigError(format!(
            "--failed-retention / OSX_BUILDER_FAILED_RETENTION must be from 0 to {MAX_TTL_SECS} seconds, got {failed_retention}"
        )));
    }
    let (log_format, _) = value(&LOG_FORMAT);
    let log_format = crate::sys::log::Format::parse(log_format.trim()).ok_or_else(|| {
        ConfigError(format!(
            "--log-format / OSX_BUILDER_LOG_FORMAT must be text or json, got {log_format:?}"
        ))
    })?;
    let (log_level, _) = value(&LOG_LEVEL);
    let log_level = crate::sys::log::Level::parse(log_level.trim()).ok_or_else(|| {
        ConfigError(format!(
            "--log-level / OSX_BUILDER_LOG_LEVEL must be error, warn, info or debug, got {log_level:?}"
        ))
    })?;
    let changed = SETTINGS
        .iter()
        .filter_map(|setting| {
            let given = if setting.default == Typed::List {
                list(setting).join(",")
            } else {
                value(setting).0
            };
            if given.trim() == setting.default_text() {
                return None;
            }
            let shown = if SECRETS.contains(setting) {
                "(set)".to_string()
            } else {
                given
            };
            Some(format!("--{}={shown}", setting.flag))
        })
        .collect();
    let mut pools: Vec<(String, PathBuf)> = Vec::new();
    for given in list(&POOL) {
        let bad = |why: String| ConfigError(format!("--pool / OSX_BUILDER_POOL {given:?}: {why}"));
        let (name, file) = given
            .split_once('=')
            .ok_or_else(|| bad("give NAME=FILE, FILE holding the pool's spec".into()))?;
        crate::service::pools::spec::check_name(name).map_err(bad)?;
        if file.trim().is_empty() {
            return Err(bad("the spec's file is missing after '='".into()));
        }
        if pools.iter().any(|(other, _)| other == name) {
            return Err(bad(format!("the pool {name} is given twice")));
        }
        pools.push((name.to_string(), PathBuf::from(file)));
    }
    let fleet = crate::fleet::settings::parse(&setting::Reader {
        value: &value,
        optional: &optional,
        switch: &switch,
    })?;
    let data_dir = PathBuf::from(value(&DATA_DIR).0);
    if data_dir.as_os_str().is_empty() {
        return Err(ConfigError(
            "--data-dir / OSX_BUILDER_DATA_DIR must not be empty".into(),
        ));
    }
    let hypervisor = match value(&HYPERVISOR).0.trim() {
        "vmware" => HypervisorKind::Vmware,
        "tart" => HypervisorKind::Tart,
        other => {
            return Err(ConfigError(format!(
                "--hypervisor / OSX_BUILDER_HYPERVISOR must be vmware or tart, got {other:?}"
            )))
        }
    };
    let tart_path = value(&TART_PATH).0.trim().to_string();
    if tart_path.is_empty() {
        return Err(ConfigError(
            "--tart-path / OSX_BUILDER_TART_PATH must not be empty; leave it unset to look for tart on the PATH".into(),
        ));
    }
    let tart_home = tart_home(&value(&TART_HOME).0, &data_dir, env)?;
    let tart_bridge_interface = value(&TART_BRIDGE_INTERFACE).0.trim().to_string();
    if tart_bridge_interface.is_empty()
        || !tart_bridge_interface
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(ConfigError(format!(
            "--tart-bridge-interface / OSX_BUILDER_TART_BRIDGE_INTERFACE must name a network interface such as en0, got {tart_bridge_interface:?}"
        )));
    }
    let max_vms_given = flags.contains_key(MAX_VMS.flag) || env.contains_key(MAX_VMS.env);
    let max_vms = if hypervisor == HypervisorKind::Tart && !max_vms_given {
        TART_DEFAULT_MAX_VMS
    } else {
        number(value(&MAX_VMS), "a whole number (0 for no limit)")?
    };
    Ok(Command::Serve(Box::new(Config {
        port: number(value(&PORT), "a port number from 0 to 65535")?,
        bind: number(value(&BIND), "an IP address such as 0.0.0.0 or 127.0.0.1")?,
        data_dir,
        hypervisor,
        vmrun_path: PathBuf::from(value(&VMRUN_PATH).0),
        vmrun_host_type,
        http_threads: positive(&HTTP_THREADS)?,
        provision_threads: positive(&PROVISION_THREADS)?,
        ip_wait_timeout: seconds(&IP_WAIT_TIMEOUT)?,
        ip_poll_interval: seconds(&IP_POLL_INTERVAL)?,
        boot_timeout: seconds(&BOOT_TIMEOUT)?,
        headless_retry_gui,
        keep_failed: (keep_failed > 0.0).then(|| Duration::from_secs_f64(keep_failed)),
        timeout_clone: seconds(&VMRUN_TIMEOUT_CLONE)?,
        timeout_start: seconds(&VMRUN_TIMEOUT_START)?,
        timeout_stop: seconds(&VMRUN_TIMEOUT_STOP)?,
        timeout_delete: seconds(&VMRUN_TIMEOUT_DELETE)?,
        timeout_list: seconds(&VMRUN_TIMEOUT_LIST)?,
        timeout_ip_query: seconds(&VMRUN_TIMEOUT_IP)?,
        timeout_snapshot: seconds(&VMRUN_TIMEOUT_SNAPSHOT)?,
        tart_path: PathBuf::from(tart_path),
        tart_home,
        tart_bridge_interface,
        max_unpacked_bytes: bytes(value(&MAX_UNPACKED_BYTES))?,
        download_connect_timeout: seconds(&DOWNLOAD_CONNECT_TIMEOUT)?,
        download_read_timeout: seconds(&DOWNLOAD_READ_TIMEOUT)?,
        download_max_resumes: number(value(&DOWNLOAD_MAX_RESUMES), "a whole number")?,
        // `64KiB/s` reads as meant.
        download_min_rate: bytes({
            let (v, name) = value(&DOWNLOAD_MIN_RATE);
            (v.trim().trim_end_matches("/s").to_string(), name)
        })?,
        download_min_rate_window: seconds(&DOWNLOAD_MIN_RATE_WINDOW)?,
        max_downloads: number(value(&MAX_DOWNLOADS), "a whole number (0 for no limit)")?,
        callback_timeout: seconds(&CALLBACK_TIMEOUT)?,
        callback_retries: number(value(&CALLBACK_RETRIES), "a whole number")?,
        dhcp_leases: PathBuf::from(value(&DHCP_LEASES).0),
        dhcp_leases_apple: PathBuf::from(value(&DHCP_LEASES_APPLE).0),
        reconcile_interval: seconds(&RECONCILE_INTERVAL)?,
        list_interval: seconds(&LIST_INTERVAL)?,
        max_vms,
        min_free_disk: bytes(value(&MIN_FREE_DISK))?,
        default_ttl: (default_ttl > 0).then_some(default_ttl),
        cache_budget: bytes(value(&CACHE_BUDGET))?,
        max_waiters: number(value(&MAX_WAITERS), "a whole number")?,
        token: optional(&TOKEN)?,
        token_file: optional(&TOKEN_FILE)?.map(PathBuf::from),
        callback_secret: optional(&CALLBACK_SECRET)?,
        callback_secret_file: optional(&CALLBACK_SECRET_FILE)?.map(PathBuf::from),
        file_image_dirs: list(&FILE_IMAGE_DIR)
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        callback_allow,
        strict_vmx,
        failed_retention: (failed_retention > 0.0)
            .then(|| Duration::from_secs_f64(failed_retention)),
        max_records: number(value(&MAX_RECORDS), "a whole number (0 for no limit)")?,
        max_connections_per_ip: number(
            value(&MAX_CONNECTIONS_PER_IP),
            "a whole number (0 for no limit)",
        )?,
        ca_file: optional(&CA_FILE)?.map(PathBuf::from),
        tls_cert: optional(&TLS_CERT)?.map(PathBuf::from),
        tls_key: optional(&TLS_KEY)?.map(PathBuf::from),
        log_format,
        log_level,
        log_file: optional(&LOG_FILE)?.map(PathBuf::from),
        changed,
        pools,
        fleet,
    })))
}

/// `--tart-home`: empty is `tart/` in the data folder. A person's own `~/.tart` is refused:
/// the server deletes VMs there by name, and its VMs must never mix with theirs.
fn tart_home(
    given: &str,
    data_dir: &std::path::Path,
    env: &HashMap<String, String>,
) -> Result<PathBuf, ConfigError> {
    let given = given.trim();
    if given.is_empty() {
        return Ok(data_dir.join("tart"));
    }
    let path = PathBuf::from(given);
    let personal = env
        .get("HOME")
        .map(|home| PathBuf::from(home).join(".tart"));
    let trimmed: PathBuf = path.components().collect();
    if personal.is_some_and(|p| p.components().collect::<PathBuf>() == trimmed) {
        return Err(ConfigError(format!(
            "--tart-home / OSX_BUILDER_TART_HOME must not be {given}: that is where a person's own tart VMs live; leave it unset (tart/ in the data folder) or name a folder of the server's own"
        )));
    }
    Ok(path)
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
    fn the_log_format_is_read_even_when_another_setting_is_wrong() {
        use crate::sys::log::Format;
        let env = |v: &str| HashMap::from([(LOG_FORMAT.env.to_string(), v.to_string())]);
        let none = HashMap::new();
        assert_eq!(
            requested_log_format(&args(&["--port", "x"]), &none),
            Format::Text
        );
        assert_eq!(
            requested_log_format(&args(&["--port", "x"]), &env("json")),
            Format::Json
        );
        assert_eq!(
            requested_log_format(&args(&["--log-format=json", "--port", "x"]), &none),
            Format::Json
        );
        assert_eq!(
            requested_log_format(&args(&["--log-format", "text"]), &env("json")),
            Format::Text
        );
        assert_eq!(
            requested_log_format(&args(&["--log-format"]), &none),
            Format::Text
        );
        assert_eq!(requested_log_format(&[], &env("xml")), Format::Text);
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
    fn help_lists_every_setting() {
        let text = help_text();
        for s in SETTINGS {
            assert!(text.contains(&format!("--{}", s.flag)));
            assert!(text.contains(s.env));
        }
    }

    #[test]
    fn pools_repeat_and_name_a_file() {
        assert!(serve(&[], &[("HOME", "/h")]).unwrap().pools.is_empty());
        let config = serve(
            &[
                "--pool",
                "macos-13=/etc/osxb/m13.json",
                "--pool=linux=/l.json",
            ],
            &[("OSX_BUILDER_POOL", "ignored=/x.json")],
        )
        .unwrap();
        assert_eq!(
            config.pools,
            [
                ("macos-13".to_string(), PathBuf::from("/etc/osxb/m13.json")),
                ("linux".to_string(), PathBuf::from("/l.json")),
            ]
        );
        let config = serve(&[], &[("OSX_BUILDER_POOL", "a=/a.json, b=/b.json")]).unwrap();
        assert_eq!(config.pools.len(), 2);
        for bad in [
            &["--pool", "nofile"][..],
            &["--pool", "a/b=/x.json"],
            &["--pool", "a="],
            &["--pool", "a=/x", "--pool", "a=/y"],
        ] {
            let err = serve(bad, &[]).unwrap_err();
            assert!(err.0.contains("--pool"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_hypervisor_and_tart_settings() {
        let config = serve(&[], &[("HOME", "/h")]).unwrap();
        assert_eq!(config.hypervisor, HypervisorKind::Vmware);
        assert_eq!(config.max_vms, 0);
        assert_eq!(config.tart_path, PathBuf::from("tart"));
        assert_eq!(config.tart_home, config.data_dir.join("tart"));
        assert_eq!(config.tart_bridge_interface, "en0");
        // tart refuses a third macOS VM: 2 unless the operator says otherwise.
        let config = serve(&["--hypervisor", "tart"], &[("HOME", "/h")]).unwrap();
        assert_eq!(config.hypervisor, HypervisorKind::Tart);
        assert_eq!(config.max_vms, TART_DEFAULT_MAX_VMS);
        assert!(config.changed.contains(&"--hypervisor=tart".to_string()));
        let config = serve(
            &["--max-vms", "0", "--tart-path=/opt/t/tart"],
            &[
                ("OSX_BUILDER_HYPERVISOR", "tart"),
                ("OSX_BUILDER_TART_HOME", "/srv/tart"),
                ("OSX_BUILDER_TART_BRIDGE_INTERFACE", "bridge100"),
            ],
        )
        .unwrap();
        assert_eq!(config.max_vms, 0);
        assert_eq!(config.tart_path, PathBuf::from("/opt/t/tart"));
        assert_eq!(config.tart_home, PathBuf::from("/srv/tart"));
        assert_eq!(config.tart_bridge_interface, "bridge100");
        let config = serve(
            &[],
            &[
                ("OSX_BUILDER_HYPERVISOR", "tart"),
                ("OSX_BUILDER_MAX_VMS", "5"),
            ],
        )
        .unwrap();
        assert_eq!(config.max_vms, 5);
        for (list, env, needle) in [
            (&["--hypervisor", "parallels"][..], &[][..], "--hypervisor"),
            (&["--tart-path", " "], &[], "--tart-path"),
            (
                &["--tart-bridge-interface", "en0; rm"],
                &[],
                "--tart-bridge-interface",
            ),
            (
                &["--tart-home", "/h/.tart/"],
                &[("HOME", "/h")],
                "a person's own",
            ),
        ] {
            let err = serve(list, env).unwrap_err();
            assert!(err.0.contains(needle), "{list:?}: {err}");
        }
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
}
