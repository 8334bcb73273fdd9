//! The command line for people: the same binary as a client of a running server.
//!
//! `osx-builder vm create ... --wait`, `vm get|list|delete|renew|log`, `image
//! list|prewarm|delete`, `pool list|get|put|delete`, `drain`, `undrain`, `health`. Tables for people, `--json` for
//! scripts. Exit status: 0 done (a VM running with an IP), 1 the server said no or the VM
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
pub const COMMANDS: &[&str] = &["vm", "image", "pool", "drain", "undrain", "health"];

pub fn is_command(word: &str) -> bool {
    COMMANDS.contains(&word)
}

/// Why a command did not succeed; each kind is one exit status.
#[derive(Debug)]
pub enum Failure {
    /// 2: the command line is wrong.
    Usage(String),
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
            Self::Usage(_) => 2,
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
            eprintln!("osx-builder: {message} (osx-builder vm --help lists the commands)")
        }
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

/// `--server`, `--token`, `--ca-file`, each with its environment variable (the flag wins).
pub fn target(args: &Parsed, env: &HashMap<String, String>) -> Result<Target, Failure> {
    let pick = |flag: &str, var: &str| {
        args.value(flag)
            .map(str::to_string)
            .or_else(|| env.get(var).cloned())
    };
    Target::new(
        &pick("server", "OSX_BUILDER_URL").unwrap_or_else(|| DEFAULT_SERVER.to_string()),
        pick("token", "OSX_BUILDER_TOKEN"),
        pick("ca-file", "OSX_BUILDER_CA_FILE").map(PathBuf::from),
    )
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
  vm list [--label k=v]... [--status S]
  vm delete ID
  vm renew ID [--ttl SECONDS]
  vm log ID                     the VM's vmware.log
  image list
  image prewarm --image-url URL --checksum HEX [--checksum-type T] [--wait]
  image delete CHECKSUM
  pool list
  pool get NAME
  pool put NAME (-f pool.json | --image-url URL --checksum HEX [--checksum-type T])
           [--cpus N] [--memory MB] [--network bridged|nat|hostonly] [--headless] [--size N]
                                declares or changes a warm pool (a new image rolls it)
  pool delete NAME              its idle VMs are destroyed; VMs handed out are kept
  drain | undrain               stop or resume taking new VMs (maintenance)
  health                        the server's checks; exit 1 when one fails

Options of every command:
  --server URL    OSX_BUILDER_URL      default {DEFAULT_SERVER}
  --token T       OSX_BUILDER_TOKEN    bearer token, when the server wants one
  --ca-file PEM   OSX_BUILDER_CA_FILE  CA certificates to trust for an https:// server
  --json          the server's JSON instead of a table

--wait shows a progress bar on a terminal (bytes of total, rate, time left, then the phase)
and one line per phase otherwise, on stderr; the result goes to stdout.

Exit status: 0 success (a VM running with an IP), 1 refused or failed (code and message
printed; also a TLS connection that failed: the server's certificate refused, or no TLS
spoken at an https:// URL), 2 usage error, 3 the server could not be reached.
",
        version = env!("CARGO_PKG_VERSION")
    )
}
