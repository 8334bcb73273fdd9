//! `tart-sim`: a stand-in for Cirrus Labs' `tart` (release 2.32), so that the server's tart
//! driver can be tested where there is no Mac. It speaks tart's command line as the project's
//! tart contract (`tart-contract.md`) describes it, keeps its VMs in `TART_HOME` in tart's own
//! layout, and runs a VM exactly while a `run` process holds an fcntl write lock on the VM's
//! `config.json`, as tart does: no daemon, and a killed runner leaves nothing stale.
//!
//! # Command line
//!
//! `--version`; `clone SRC NAME`; `set NAME [--cpu N] [--memory MB] [--disk-size GB]
//! [--random-mac] [--random-serial]`; `run [--no-graphics] [--dir=[NAME:]PATH[:ro]]...
//! [--net-bridged=IF | --net-softnet | --net-host] NAME`; `ip NAME [--wait N] [--resolver
//! dhcp|arp|agent]`; `stop NAME [--timeout N]`; `delete NAME...`; `list [--format
//! text|json] [--source local|oci] [-q]`; `get NAME [--format text|json]`; `pull REF`.
//! `delete` takes OCI references (`host/path@sha256:<hex>`, `host/path:tag`) too.
//!
//! tart's own errors are one line on stderr without a prefix (exit 2 for a missing VM, "not
//! running" and "already running!", else 1); argument errors print `Error: MESSAGE` and a
//! usage line, exit 64; `run` of a missing VM prints `Error: the specified VM "x" does not
//! exist`, exit 1.
//!
//! # Environment (switches, read by the invocation that needs them)
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `TART_HOME` | where VMs (`vms/<name>/`), OCI images (`cache/OCIs/`) and scratch (`tmp/`) live; the simulator's own bookkeeping is in `.sim/` there | `~/.tart` |
//! | `TART_SIM_REGISTRY` | the pretend OCI registry: `<host>/<path>/manifests/sha256:<hex>/` (a VM folder, with the `manifest.json` it serves: a registry that serves one whose sha256 is not `<hex>` misbehaves) and `<host>/<path>/tags/<tag>` (a file holding `sha256:<hex>`) | none: every pull fails |
//! | `TART_SIM_BOOT_MS` | how long after `run` the guest's DHCP lease appears (`ip` answers) | 0 |
//! | `TART_SIM_DEAD_BOOTS` | the first N runs of each VM never get a DHCP lease (a guest that hangs at boot: `ip` finds nothing) | 0 |
//! | `TART_SIM_BOOT_JITTER_MS` | read by `run`: each start's boot takes a random 0 to this many ms more, kept as `jitter_ms` in its lease | 0 |
//! | `TART_SIM_LEASE_MS` | how long a lease lasts, counted from the VM's start | 86400000 (a day, as macOS) |
//! | `TART_SIM_IP_POLL_MS` | `ip`'s polling interval (tart polls once a second) | 1000 |
//! | `TART_SIM_VM_LIMIT` | concurrent macOS VMs the pretend Mac allows | 2 |
//! | `TART_SIM_KEYCHAIN_LOCKED` | `1`: every `run` fails as on a headless macOS 15 Mac with a locked login keychain | off |
//! | `TART_SIM_GC_FAIL` | `1`: every command prints `Failed to perform garbage collection: ...` on stderr first, then goes on | off |
//! | `TART_SIM_RUN_EXIT_AFTER_MS` | `run` ends by itself this long after starting, as `TART_SIM_RUN_EXIT` says | never |
//! | `TART_SIM_RUN_EXIT` | `shutdown` (the guest powers off: `guest has stopped the virtual machine`, exit 0) or `crash` (a framework error, exit 1) | `shutdown` |
//! | `TART_SIM_IGNORE_SIGINT` | `1`: `run` ignores SIGINT (a hung VM: `stop` must SIGKILL it) | off |
//! | `TART_SIM_PRUNE` | `1`: after a `pull` or an OCI `clone`, every other cached OCI image is deleted unless `TART_NO_AUTO_PRUNE` is set (a Mac short of disk) | off |
//! | `TART_SIM_FAULTS` | fault rules (below), separated by `;` or newlines | none |
//!
//! # Bookkeeping in `$TART_HOME/.sim/`
//!
//! - `calls.log`: one JSON line per finished invocation: `{"t_start_ms", "t_end_ms", "pid",
//!   "args", "exit", "no_auto_prune"}` (a `run` writes its line when it ends; a killed one
//!   writes none).
//! - `runs/<name>.json`: written by `run` once the VM runs: `{"pid", "args", "dirs": [{"name",
//!   "path", "read_only"}], "net", "graphics", "started_at_ms", "mac"}`: what the guest sees.
//! - `leases/<mac>.json`: the pretend DHCP server's lease of a MAC: `{"mac", "name", "net",
//!   "started_at_ms", "jitter_ms"}` (`ip` finds it from `TART_SIM_BOOT_MS` + `jitter_ms`
//!   after `started_at_ms`).
//! - `boots/<name>`: how many times the VM was run (see `TART_SIM_DEAD_BOOTS`).
//! - `control/<name>`: a test writes `shutdown` or `crash` here and the VM's runner acts on it
//!   within 20 ms (a guest that powers off, a VM that dies, behind the server's back).
//! - `faults`: fault rules, re-read by every invocation; `faults-once/` their `once` markers;
//!   `hang.pids`: `<simulator pid> <child pid>` per hung call.
//!
//! # Fault rules
//!
//! One rule a line, `COMMAND[@NAME] [once] ACTION [ARGS]` (`*` for every command; `@NAME`
//! limits it to calls naming that VM or reference): `delay MS` (then go on), `hang` (never
//! return, with a child holding stdout open: only killing the process group ends it), `fail
//! CODE TEXT...` (TEXT on stderr, exit CODE), `gc-fail` (the garbage-collection warning, then
//! go on).
//!
//! The guest's address is `192.168.64.N` on the shared (NAT) network and `192.168.1.N`
//! bridged, N in 2..=253 derived from the VM's MAC address.

mod clone;
mod error;
mod faults;
mod home;
mod ip;
mod listing;
mod lock;
mod run;

use error::TartError;
use home::Home;
use std::io::Write;
use std::process::ExitCode;

pub const VERSION: &str = "2.32.1";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if argv.len() == 1 && argv[0] == faults::SLEEP_FOREVER_ARG {
        faults::sleep_forever();
    }
    let t_start_ms = home::now_ms();
    let home = match Home::from_env() {
        Ok(home) => home,
        Err(e) => return finish(&e),
    };
    let exit = match dispatch(&home, &argv) {
        Ok(()) => 0,
        Err(e) => {
            let _ = std::io::stdout().flush();
            finish(&e);
            e.code
        }
    };
    home.append_call(&serde_json::json!({
        "t_start_ms": t_start_ms,
        "t_end_ms": home::now_ms(),
        "pid": std::process::id(),
        "args": argv,
        "exit": exit,
        "no_auto_prune": std::env::var_os("TART_NO_AUTO_PRUNE").is_some(),
    }));
    ExitCode::from(exit)
}

fn finish(e: &TartError) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "{}", e.text);
    ExitCode::from(e.code)
}

fn dispatch(home: &Home, argv: &[String]) -> Result<(), TartError> {
    let Some((command, args)) = argv.split_first() else {
        return Err(TartError::usage("Missing expected argument '<subcommand>'"));
    };
    if command == "--version" {
        println!("{VERSION}");
        return Ok(());
    }
    let target = args.iter().find(|a| !a.starts_with('-')).cloned();
    faults::apply(home, command, target.as_deref())?;
    if std::env::var("TART_SIM_GC_FAIL").is_ok_and(|v| v == "1") {
        eprintln!("Failed to perform garbage collection: Permission denied");
    }
    match command.as_str() {
        "clone" => clone::clone(home, args),
        "pull" => clone::pull_command(home, args),
        "set" => home::set(home, args),
        "run" => run::run(home, args),
        "ip" => ip::ip(home, args),
        "stop" => run::stop(home, args),
        "delete" => home::delete(home, args),
        "list" => listing::list(home, args),
        "get" => listing::get(home, args),
        other => Err(TartError::usage(&format!("Unexpected argument '{other}'"))),
    }
}
