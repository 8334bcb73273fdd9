//! One line per event on stderr: `2026-11-24T17:00:00.123Z INFO  vm=<id> what happened`,
//! or with `--log-format json` one JSON object a line (`ts`, `level`, `msg`, and `vm`,
//! `image`, `command`, `code`, `duration_ms` where the event has them), which Loki, Elastic
//! or Vector parse without rules.
//!
//! launchd and journald capture stderr; a line per event keeps it greppable by VM id. With
//! `--log-file` the lines go to that file instead (see [`crate::sys::log_file`]), and only
//! the milestones (start, listening, stop) and a failed start are written to stderr as well.

use std::fmt::Display;
use std::io::Write;

use crate::sys::log_file::{LogFile, Reopened};
use crate::sys::time::rfc3339_now;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Text,
    Json,
}

impl Format {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// Set once at start, before the first thread; read by every line.
static FORMAT: AtomicU8 = AtomicU8::new(0);

pub fn set_format(format: Format) {
    FORMAT.store(format as u8, Ordering::Relaxed);
}

fn format() -> Format {
    if FORMAT.load(Ordering::Relaxed) == Format::Json as u8 {
        Format::Json
    } else {
        Format::Text
    }
}

/// The structured fields of one event. In text the VM id leads the line (`vm=<id>`) as it
/// always did; the others are already in the message's words and appear only in JSON.
#[derive(Debug, Default, Serialize)]
pub struct Fields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl Fields {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty value (a call on no VM) leaves the field out.
    pub fn vm(mut self, id: impl Display) -> Self {
        self.vm = Some(id.to_string()).filter(|s| !s.is_empty());
        self
    }

    pub fn image(mut self, checksum: impl Display) -> Self {
        self.image = Some(checksum.to_string()).filter(|s| !s.is_empty());
        self
    }

    pub fn command(mut self, command: impl Display) -> Self {
        self.command = Some(command.to_string());
        self
    }

    pub fn code(mut self, code: impl Display) -> Self {
        self.code = Some(code.to_string());
        self
    }

    pub fn duration_ms(mut self, millis: impl TryInto<u64>) -> Self {
        self.duration_ms = Some(millis.try_into().unwrap_or(u64::MAX));
        self
    }
}

#[derive(Serialize)]
struct JsonLine<'a> {
    ts: String,
    level: &'static str,
    msg: &'a str,
    #[serde(flatten)]
    fields: &'a Fields,
}

/// Ordered from the most to the least talkative, so `level >= min` says a line is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// What the server does routinely and an operator reads only to chase a problem: every
    /// `vmrun list`, every IP query, each vmrun call as it begins.
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO ",
            Level::Warn => "WARN ",
            Level::Error => "ERROR",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Level::Debug, Level::Info, Level::Warn, Level::Error]
            .into_iter()
            .find(|level| level.name() == name)
    }
}

/// The `--log-file`, once it is open; stderr until then and without it.
static FILE: OnceLock<LogFile> = OnceLock::new();

/// Sends every line from now on to the file at `path` (appended, created 0644). At start,
/// before the first thread; the error names the path and what the OS said.
pub fn open_file(path: &std::path::Path) -> Result<(), String> {
    let file = LogFile::open(path)?;
    FILE.set(file)
        .map_err(|_| "the log file is already open".to_string())
}

/// On SIGHUP: opens the log file again by its path, so that lines go to the file a
/// rotation left there. A failure keeps the old file and is said on it and on stderr.
pub fn reopen_file() {
    let Some(file) = FILE.get() else {
        write(
            Level::Info,
            format_args!("SIGHUP: no --log-file to reopen; the log goes to stderr"),
        );
        return;
    };
    let said = |message: &str| line(Level::Warn, Fields::default(), message);
    match file.reopen(said) {
        Reopened::Yes => write(
            Level::Info,
            format_args!("SIGHUP: reopened the log file {}", file.path().display()),
        ),
        Reopened::Failed(message) => {
            let _ = std::io::stderr()
                .lock()
                .write_all(said(&message).as_bytes());
        }
    }
}

/// The least level written; set once at start. Info until then, so that a usage error
/// before the settings are read is still written.
static MIN_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

pub fn set_level(level: Level) {
    MIN_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether a line of `level` is written; the macros ask before formatting anything.
pub fn enabled(level: Level) -> bool {
    level as u8 >= MIN_LEVEL.load(Ordering::Relaxed)
}

pub fn write(level: Level, message: std::fmt::Arguments<'_>) {
    write_with(level, Fields::default(), message)
}

/// An info line written whatever `--log-level` says: that the server starts (with its
/// settings), where it listens, and that it stops. A log at `warn` still shows when each
/// run began and ended, and what a harness or an operator reads the port from.
/// With `--log-file` it goes to stderr as well: what launchd's StandardErrorPath keeps then
/// is when each run started and stopped and where it listens (a few lines a run, never in
/// need of rotation), and a harness still reads the port there.
pub fn milestone(message: std::fmt::Arguments<'_>) {
    emit(Level::Info, Fields::default(), message, true)
}

/// Why the server could not start, on stderr as well as in the `--log-file`: launchd's
/// StandardErrorPath is where an operator looks when the job keeps restarting.
pub fn fatal(message: std::fmt::Arguments<'_>) {
    emit(Level::Error, Fields::default(), message, true)
}

pub fn write_with(level: Level, fields: Fields, message: std::fmt::Arguments<'_>) {
    if enabled(level) {
        emit(level, fields, message, false)
    }
}

fn line(level: Level, fields: Fields, message: &str) -> String {
    let mut line = render(format(), &rfc3339_now(), level, fields, message);
    line.push('\n');
    line
}

fn emit(level: Level, fields: Fields, message: std::fmt::Arguments<'_>, also_stderr: bool) {
    let line = line(level, fields, &message.to_string());
    let file = FILE.get();
    if let Some(file) = file {
        file.write_line(line.as_bytes());
    }
    if file.is_none() || also_stderr {
        // A closed stderr must not take the server down with it.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

fn render(format: Format, ts: &str, level: Level, mut fields: Fields, message: &str) -> String {
    match format {
        Format::Text => match &fields.vm {
            Some(vm) => format!("{ts} {} vm={vm} {message}", level.label()),
            None => format!("{ts} {} {message}", level.label()),
        },
        Format::Json => {
            // Call sites not yet given fields still name their VM as a `vm=<id>` prefix.
            let mut msg = message;
            if fields.vm.is_none() {
                if let Some((id, rest)) = message
                    .strip_prefix("vm=")
                    .and_then(|rest| rest.split_once(' '))
                {
                    fields.vm = Some(id.to_string());
                    msg = rest;
                }
            }
            let line = JsonLine {
                ts: ts.to_string(),
                level: level.name(),
                msg,
                fields: &fields,
            };
            serde_json::to_string(&line).unwrap_or_else(|_| {
                format!("{{\"ts\":\"{ts}\",\"level\":\"error\",\"msg\":\"unencodable log line\"}}")
            })
        }
    }
}

/// Forwards the records of the `log` crate into this log, in the chosen format. The vendored
/// tiny_http reports through it what its patches keep alive: accept() failing (out of file
/// descriptors) and connections it could not set up. Without a logger those lines vanish.
struct Bridge;

static BRIDGE: Bridge = Bridge;

/// Installs the bridge once; a second call (tests, a library user with its own logger)
/// leaves the first logger in place.
pub fn install_bridge() {
    if ::log::set_logger(&BRIDGE).is_ok() {
        ::log::set_max_level(::log::LevelFilter::Warn);
    }
}

/// The level a record is written at, or `None` for records left out: tiny_http's warnings
/// and errors, and only errors from other crates (rustls warns of every alert a bad client
/// causes, which a scan of the port would turn into a flood).
fn bridged_level(target: &str, level: ::log::Level) -> Option<Level> {
    let ours = target == "tiny_http" || target.starts_with("tiny_http::");
    match level {
        ::log::Level::Error => Some(Level::Error),
        ::log::Level::Warn if ours => Some(Level::Warn),
        _ => None,
    }
}

impl ::log::Log for Bridge {
    fn enabled(&self, metadata: &::log::Metadata<'_>) -> bool {
        bridged_level(metadata.target(), metadata.level()).is_some()
    }

    fn log(&self, record: &::log::Record<'_>) {
        if let Some(level) = bridged_level(record.target(), record.level()) {
            write(
                level,
                format_args!("{}: {}", record.target(), record.args()),
            );
        }
    }

    fn flush(&self) {}
}

/// Writes a panic as one error line. For JSON logs only: Rust's own report spans several
/// lines of text, which a shipper that expects one object a line would drop or mangle.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|panic| {
        let thread = std::thread::current();
        write(
            Level::Error,
            format_args!("thread {:?} {panic}", thread.name().unwrap_or("unnamed")),
        );
    }));
}

/// `debug!("text {x}")`, or with fields first, as [`info!`]. Nothing is formatted unless
/// `--log-level debug` asked for it.
#[macro_export]
macro_rules! debug {
    ($($key:ident = $value:expr),+ ; $($arg:tt)*) => {
        if $crate::sys::log::enabled($crate::sys::log::Level::Debug) {
            $crate::sys::log::write_with(
                $crate::sys::log::Level::Debug,
                $crate::sys::log::Fields::new()$(.$key($value))+,
                format_args!($($arg)*),
            )
        }
    };
    ($($arg:tt)*) => {
        if $crate::sys::log::enabled($crate::sys::log::Level::Debug) {
            $crate::sys::log::write($crate::sys::log::Level::Debug, format_args!($($arg)*))
        }
    };
}

/// `info!("text {x}")`, or with fields first: `info!(vm = id, command = "clone"; "text")`.
/// A field is a method of [`Fields`], so a misspelt one does not compile.
#[macro_export]
macro_rules! info {
    ($($key:ident = $value:expr),+ ; $($arg:tt)*) => {
        $crate::sys::log::write_with(
            $crate::sys::log::Level::Info,
            $crate::sys::log::Fields::new()$(.$key($value))+,
            format_args!($($arg)*),
        )
    };
    ($($arg:tt)*) => { $crate::sys::log::write($crate::sys::log::Level::Info, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! warn {
    ($($key:ident = $value:expr),+ ; $($arg:tt)*) => {
        $crate::sys::log::write_with(
            $crate::sys::log::Level::Warn,
            $crate::sys::log::Fields::new()$(.$key($value))+,
            format_args!($($arg)*),
        )
    };
    ($($arg:tt)*) => { $crate::sys::log::write($crate::sys::log::Level::Warn, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! error {
    ($($key:ident = $value:expr),+ ; $($arg:tt)*) => {
        $crate::sys::log::write_with(
            $crate::sys::log::Level::Error,
            $crate::sys::log::Fields::new()$(.$key($value))+,
            format_args!($($arg)*),
        )
    };
    ($($arg:tt)*) => { $crate::sys::log::write($crate::sys::log::Level::Error, format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_as_before_and_json_with_fields() {
        let ts = "2026-11-24T17:00:00.123Z";
        let fields = || Fields::new().vm("abc").command("clone").duration_ms(12u128);
        assert_eq!(
            render(Format::Text, ts, Level::Info, fields(), "clone x: ok"),
            "2026-11-24T17:00:00.123Z INFO  vm=abc clone x: ok"
        );
        let line = render(
            Format::Json,
            ts,
            Level::Warn,
            fields().code("vmrun-timeout"),
            "a \"q\"",
        );
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"ts": ts, "level": "warn", "msg": "a \"q\"", "vm": "abc",
                "command": "clone", "code": "vmrun-timeout", "duration_ms": 12})
        );
        let lifted = render(
            Format::Json,
            ts,
            Level::Info,
            Fields::new(),
            "vm=abc deleted",
        );
        let value: serde_json::Value = serde_json::from_str(&lifted).unwrap();
        assert_eq!(
            (value["vm"].as_str(), value["msg"].as_str()),
            (Some("abc"), Some("deleted"))
        );
        let plain = render(
            Format::Json,
            ts,
            Level::Error,
            Fields::new().vm(""),
            "stopped",
        );
        assert_eq!(
            plain,
            format!("{{\"ts\":\"{ts}\",\"level\":\"error\",\"msg\":\"stopped\"}}")
        );
    }

    #[test]
    fn levels_parse_by_name_and_order_from_debug_to_error() {
        for name in ["debug", "info", "warn", "error"] {
            assert_eq!(Level::parse(name).map(Level::name), Some(name));
        }
        assert_eq!(Level::parse("INFO"), None);
        assert_eq!(Level::parse("trace"), None);
        assert!(Level::Debug < Level::Info && Level::Warn < Level::Error);
        let ts = "2026-11-24T17:00:00.123Z";
        assert_eq!(
            render(
                Format::Text,
                ts,
                Level::Debug,
                Fields::new(),
                "vmrun list: ok"
            ),
            "2026-11-24T17:00:00.123Z DEBUG vmrun list: ok"
        );
        let json = render(Format::Json, ts, Level::Debug, Fields::new(), "x");
        assert!(json.contains(r#""level":"debug""#), "{json}");
    }

    #[test]
    fn the_bridge_keeps_tiny_http_warnings_and_every_error() {
        use ::log::Level as L;
        assert_eq!(bridged_level("tiny_http", L::Error), Some(Level::Error));
        assert_eq!(bridged_level("tiny_http::util", L::Warn), Some(Level::Warn));
        assert_eq!(bridged_level("tiny_http", L::Debug), None);
        assert_eq!(bridged_level("rustls::common_state", L::Warn), None);
        assert_eq!(bridged_level("rustls::conn", L::Error), Some(Level::Error));
        assert_eq!(bridged_level("tiny_httpx", L::Warn), None);
    }
}
