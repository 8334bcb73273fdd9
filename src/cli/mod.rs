//! The command line for people: the same binary as a client of a running server.
//!
//! `osx-builder vm create ... --wait`, `vm get|list|delete|renew|log`, `image
//! list|prewarm|delete`, `pool list|get|put|delete`, `host list`, `drain`, `undrain`, `health`,
//! `help [COMMAND]`. Tables for people, `--json` for scripts. The options every command takes
//! (`--server`, `--token`, `--token-file`, `--ca-file`, `--json`) go before or after the
//! command. Exit status: 0 done (a VM running with an IP), 1 the server said no or the VM
//! failed (or its TLS connection failed: a certificate refused, no TLS spoken), 2 usage
//! error, 3 the server could not be reached.

pub(crate) mod args;
pub(crate) mod client;
mod commands;
pub(crate) mod output;
pub(crate) mod progress;
mod wait;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::Value;

use args::Parsed;
use client::{Client, Target, DEFAULT_SERVER};

/// The first words that make the binary a client.
pub const COMMANDS: &[&str] = &[
    "vm", "image", "pool", "host", "drain", "undrain", "health", "help",
];

pub fn is_command(word: &str) -> bool {
    COMMANDS.contains(&word)
}

/// The arguments of a client command, when `args` is one: a command word first, or the
/// options every command takes and then a command word (`--server URL vm list`), which are
/// moved after the command. `None` for the server's own command line (`--token T --port 1`
/// runs a server: no command word follows the client's options).
pub fn client_args(args: &[String]) -> Option<Vec<String>> {
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        if is_command(arg) {
            let mut reordered = args[i..].to_vec();
            reordered.extend_from_slice(&args[..i]);
            return Some(reordered);
        }
        let name = arg.strip_prefix("--")?;
        let (name, inline) = match name.split_once('=') {
            Some((name, _)) => (name, true),
            None => (name, false),
        };
        if args::GLOBAL_FLAGS.contains(&name) && name != "help" && !inline {
            i += 1;
        } else if args::GLOBAL_VALUES.contains(&name) {
            i += if inline { 1 } else { 2 };
        } else {
            return None;
        }
    }
    None
}

/// Why a command did not succeed; each kind is one exit status.
#[derive(Debug)]
pub enum Failure {
    /// 2: the command line is wrong.
    Usage(String),
    /// 2: a command group without its command (`osx-builder vm`): its usage, as it is.
    UsageText(String),
    /// 3: no answer from the server.
    Unreachable(String),
    /// 1: the server answered, but the TLS connection failed (its certificate was
    /// refused, or it does not speak TLS).
    Tls(String),
    /// 1: the server refused (`{code, message}` and the body as it came).
    Api {
        status: u16,
        code: String,
        message: String,
        body: Value,
    },
    /// 1: the VM (or image) ended failed; the object is printed already.
    Failed { code: String, message: String },
    /// 1: the server answered something this client cannot read.
    Protocol(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::UsageText(_) => 2,
            Self::Unreachable(_) => 3,
            Self::Api { .. } | Self::Failed { .. } | Self::Protocol(_) | Self::Tls(_) => 1,
        }
    }
}

/// What every command gets: the client, output mode and the parsed line.
pub struct Context {
    pub client: Client,
    pub json: bool,
    pub args: Parsed,
}

pub fn run(args: &[String], env: &HashMap<String, String>) -> ExitCode {
    let json = args.iter().any(|a| a == "--json");
    match commands::dispatch(args, env) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            report(&failure, json);
            ExitCode::from(failure.exit_code())
        }
    }
}

fn report(failure: &Failure, json: bool) {
    match failure {
        Failure::Usage(message) => {
            eprintln!("osx-builder: {message} (osx-builder help lists the commands)")
        }
        Failure::UsageText(usage) => eprint!("{usage}"),
        Failure::Unreachable(message) | Failure::Protocol(message) | Failure::Tls(message) => {
            eprintln!("osx-builder: {message}")
        }
        Failure::Api {
            status,
            code,
            message,
            body,
        } => {
            if json && body.is_object() {
                println!("{body}");
            }
            eprintln!("osx-builder: {status} {code}: {message}");
        }
        Failure::Failed { code, message } => eprintln!("osx-builder: failed: {code}: {message}"),
    }
}

/// `--server`, `--token` or `--token-file`, `--ca-file`, each with its environment variable
/// (a flag wins over every variable).
pub fn target(args: &Parsed, env: &HashMap<String, String>) -> Result<Target, Failure> {
    let pick = |flag: &str, var: &str| {
        args.value(flag)
            .map(str::to_string)
            .or_else(|| env.get(var).cloned())
    };
    Target::new(
        &pick("server", "OSX_BUILDER_URL").unwrap_or_else(|| DEFAULT_SERVER.to_string()),
        token(args, env)?,
        pick("ca-file", "OSX_BUILDER_CA_FILE").map(PathBuf::from),
    )
}

/// The token, from `--token` or `--token-file` (a file whose first line is the token, as
/// the server's own setting: a token never needs the command line), else from
/// `OSX_BUILDER_TOKEN` or `OSX_BUILDER_TOKEN_FILE`. Both at one level is a usage error.
fn token(args: &Parsed, env: &HashMap<String, String>) -> Result<Option<String>, Failure> {
    let from_flags = (
        args.value("token").map(str::to_string),
        args.value("token-file").map(str::to_string),
    );
    let given = match from_flags {
        (None, None) => (
            env.get("OSX_BUILDER_TOKEN").cloned(),
            env.get("OSX_BUILDER_TOKEN_FILE").cloned(),
        ),
        flags => flags,
    };
    match given {
        (Some(_), Some(_)) => Err(Failure::Usage(
            "give the token or its file (--token / OSX_BUILDER_TOKEN or --token-file / \
             OSX_BUILDER_TOKEN_FILE), not both"
                .into(),
        )),
        (token, None) => Ok(token),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Failure::Usage(format!("--token-file / OSX_BUILDER_TOKEN_FILE {path}: {e}"))
            })?;
            let first = text.lines().next().unwrap_or("").trim();
            if first.is_empty() {
                return Err(Failure::Usage(format!(
                    "the token file {path} has an empty first line; put the token on its first line"
                )));
            }
            Ok(Some(first.to_string()))
        }
    }
}

/// The usage of one command group (`vm`, `image`, `pool`, `host`): its lines of the help, and the
/// options every command takes.
pub fn group_usage(group: &str) -> String {
    let help = help_text();
    let mut out = format!("Usage: osx-builder {group} COMMAND [options]\n\n");
    let mut keep = false;
    let (commands, options) = help
        .split_once("\nOptions of every command")
        .unwrap_or((help.as_str(), ""));
    for line in commands.lines() {
        // A command's line is indented by two; its continuation lines by more.
        if let Some(rest) = line.strip_prefix("  ") {
            if !rest.starts_with(' ') {
                keep = rest.starts_with(&format!("{group} "));
            }
            if keep {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let options = options.split("\n\n").next().unwrap_or("");
    out.push_str(&format!("\nOptions of every command{options}\n"));
    out
}

pub fn help_text() -> String {
    format!(
        "osx-builder {version}: client commands (the server runs with no command, or `serve`)

Usage: osx-builder COMMAND [options]

  vm create (-f create.json | --image-url URL --checksum HEX [--checksum-type md5|sha1|sha256|sha512])
            [--cpus N] [--memory MB] [--network bridged|nat|hostonly] [--headless]
            [--ttl SECONDS] [--label k=v]... [--guestinfo k=v]... [--callback-url URL]
            [--idempotency-key KEY] [--wait]
  vm get ID [--wait]            the VM; --wait follows it until it runs with an IP or fails
  vm list [--label k=v]... [--status S]... [--pool NAME] [-q]
                                a table with POOL and LABELS; -q prints ids only (for xargs)
  vm delete ID
  vm renew ID [--ttl SECONDS]
  vm log ID                     the VM's vmware.log
  image list
  image prewarm --image-url URL --checksum HEX [--checksum-type T] [--wait | --hosts N|all]
                                --hosts: in a fleet, on N hosts (those that hold it count)
                                or on all; a line per host asked
  image delete CHECKSUM
  pool list
  pool get NAME
  pool put NAME (-f pool.json | --image-url URL --checksum HEX [--checksum-type T])
           [--cpus N] [--memory MB] [--network bridged|nat|hostonly] [--headless] [--size N]
                                declares or changes a warm pool (a new image rolls it)
  pool delete NAME              its idle VMs are destroyed; VMs handed out are kept
  host list [-q]                the fleet's hosts (a server with --etcd): slots, images, idle
                                pool VMs, disk room; -q prints names only
  drain | undrain               stop or resume taking new VMs (maintenance)
  health                        the server's checks; exit 1 when one fails
  help [COMMAND]                this help, or one command group's

Options of every command, before or after it:
  --server URL       OSX_BUILDER_URL         default {DEFAULT_SERVER}
  --token-file FILE  OSX_BUILDER_TOKEN_FILE  file whose first line is the bearer token
  --token T          OSX_BUILDER_TOKEN       the bearer token itself (visible to ps)
  --ca-file PEM      OSX_BUILDER_CA_FILE     CA certificates to trust for an https:// server
  --json             the server's JSON instead of a table

--wait shows a progress bar on a terminal (bytes of total, rate, time left, then the phase)
and one line per phase otherwise, on stderr; the result goes to stdout.

Exit status: 0 success (a VM running with an IP), 1 refused or failed (code and message
printed; also a TLS connection that failed: the server's certificate refused, or no TLS
spoken at an https:// URL), 2 usage error, 3 the server could not be reached.
",
        version = env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::client_args;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn client_options_may_come_before_the_command() {
        let moved = |line: &str| client_args(&words(line)).map(|a| a.join(" "));
        assert_eq!(moved("vm list").as_deref(), Some("vm list"));
        assert_eq!(
            moved("--server http://h:1 --json vm list -q").as_deref(),
            Some("vm list -q --server http://h:1 --json")
        );
        assert_eq!(
            moved("--token-file=/t help vm").as_deref(),
            Some("help vm --token-file=/t")
        );
        // The server's own command lines stay the server's.
        for server in [
            "",
            "--token t --port 1",
            "--token t",
            "--help",
            "--port 1 vm",
        ] {
            assert_eq!(moved(server), None, "{server}");
        }
    }
}
