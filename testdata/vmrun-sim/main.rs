//! `vmrun-sim`: a stand-in for VMware's `vmrun`, so that the server's real process-spawning
//! driver can be tested where there is no VMware. It speaks vmrun's command line and output as
//! described in the project's vmrun contract, and keeps the state of its pretend VMs in a
//! folder, so that separate invocations (many at once) see one world.
//!
//! # Command line
//!
//! `vmrun-sim [-T fusion|ws|player|server|server1|esx|vc] [-gu USER] [-gp PASS] [-vp PASS]
//! COMMAND [VMX] [ARGS...]`. The leading flags are accepted and ignored. Commands:
//! `list`, `start VMX [gui|nogui]`, `stop VMX [hard|soft]`, `reset VMX [hard|soft]`,
//! `suspend VMX [hard|soft]`, `deleteVM VMX`,
//! `clone SRC DST full|linked [-snapshot=NAME | -snapshot NAME] [-cloneName=NAME | -cloneName NAME]`,
//! `snapshot VMX NAME`, `listSnapshots VMX`, `getGuestIPAddress VMX [-wait]`,
//! `checkToolsState VMX`, `readVariable VMX guestVar|runtimeConfig|guestEnv NAME`,
//! `writeVariable VMX guestVar|runtimeConfig|guestEnv NAME VALUE` (a running VM's
//! `guestVar`s begin as its VMX's `guestinfo.*` at power-on). Command names are case-sensitive. Anything else answers
//! `Error: Unrecognized command: X`.
//!
//! Success prints nothing unless the command has output, exit 0. Failure prints ONE line
//! `Error: <message>` on stdout (stderr stays empty) and exits 255. Errors of the simulator
//! itself (bad switches, broken state folder) look the same with a message starting
//! `vmrun-sim:`.
//!
//! # Environment
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `VMRUN_SIM_STATE` | folder holding the simulator's state (required; else `Error: VMRUN_SIM_STATE is not set`) | — |
//! | `VMRUN_SIM_TOOLS_DELAY_MS` | after `start`/`reset`, `getGuestIPAddress` answers `Error: The VMware Tools are not running in the virtual machine: VMX` and `checkToolsState` answers `installed` for this long | 0 |
//! | `VMRUN_SIM_IP_DELAY_MS` | after `start`/`reset` (counted from the start, not from Tools), `getGuestIPAddress` answers `unknown` until this long has passed (once Tools run) | 0 |
//! | `VMRUN_SIM_CLONE_MS` | how long `clone` takes while it holds SRC's clone lock | 0 |
//! | `VMRUN_SIM_CLONE_MISSES_SNAPSHOT` | `1`: the first `clone` of each SRC that names a snapshot answers `Error: Invalid snapshot name 'NAME'` although SRC has it and `listSnapshots` lists it (then `snapshot` of that name answers `A snapshot with the name already exists`); later clones see it. Marked per SRC in `snapshot-missed/` of the state folder | off |
//! | `VMRUN_SIM_FAULTS` | fault rules (syntax below), separated by `;` or newlines | none |
//! | `VMRUN_SIM_IP_NEEDS_WAIT` | `1`: Fusion's quirk: after `start nogui`, `getGuestIPAddress` without `-wait` keeps answering that Tools are not running; `-wait` gets the address | off |
//! | `VMRUN_SIM_DEAD_BOOTS` | the first N boots (`start` or `reset`) of each VM never start VMware Tools (a guest that hangs at boot) | 0 |
//! | `VMRUN_SIM_NOGUI_NEVER_BOOTS` | `1`: a VM powered on `nogui` never starts VMware Tools, reset or not (Fusion's headless VMs that never boot); started `gui`, it boots | off |
//! | `VMRUN_SIM_POWEROFF_LAG_MS` | for this long after `stop`, `deleteVM` answers `The virtual machine should not be powered on. It is already running.` | 0 |
//! | `VMRUN_SIM_LIST_REMOVED` | `1`: `list` goes on listing a running VM whose VMX was removed, as the real vmrun does | off |
//!
//! Delays are read by the invocation that needs them, so they are the caller's environment at
//! that call. The guest's IP is `172.16.X.Y`, X and Y derived from the VMX path (Y is never 0,
//! 1 or 255): the same VM always gets the same address.
//!
//! # The state folder
//!
//! - `vms/<hash>.json`: `{"vmx", "running", "started_at_ms", "mode", "locks", "guest_vars",
//!   "writes", ...}` per VM (`writes`: each `writeVariable` since power-on, in order), keyed
//!   by a hash of the canonical VMX path, replaced atomically (temp + rename).
//! - `calls.log`: one JSON line per finished invocation,
//!   `{"t_start_ms":…,"t_end_ms":…,"pid":…,"args":[…all arguments…],"exit":…}`, appended in
//!   one write. A hung call (see `hang`) writes none.
//! - `faults`: fault rules, re-read by every invocation (missing file: no faults).
//! - `faults-once/`: one marker file per `once` rule that has fired; delete it to re-arm them.
//! - `hang.pids`: one line `<simulator pid> <child pid>` per `hang`.
//! - `snapshot-missed/`: one marker per SRC whose first clone missed its snapshot (see
//!   `VMRUN_SIM_CLONE_MISSES_SNAPSHOT`).
//!
//! # On-disk effects beside the VMs
//!
//! - `start` writes `ethernet0.addressType = "generated"` and `ethernet0.generatedAddress =
//!   "00:0c:29:XX:YY:ZZ"` (stable per VM) into a VMX that has `ethernet0.present` and no
//!   address yet, and `start`/`reset` append 60 lines to `vmware.log` beside the VMX, in
//!   Fusion's shape (`2024-05-01T10:00:00.123Z| vmx| I005: …`, one millisecond apart, a
//!   `VMX_PowerOn: boot N (start|reset, gui|nogui)` line among them); `stop`/`suspend` append
//!   `Stopping VCPU threads...` and `VMX exit (0).`.
//! - `start` makes `<vmx>.lck/M<pid>.lck` and `<disk>.lck/M<pid>.lck` for each disk of the VMX
//!   (keys ending in `.fileName` whose value ends in `.vmdk`, relative to the VMX's folder);
//!   `stop`/`suspend` remove them. An existing `.lck` folder of a VM that is not running (a
//!   lock of another process, or left by a crash) makes `start` answer
//!   `Error: The file is already in use`, and `deleteVM` too for `<vmx>.lck`. With a file
//!   `start-boot-ms` (a number) in the state folder, `start` holds its locks that many
//!   milliseconds before the VM is listed as running (a slow boot, as after a host crash).
//! - Snapshots live in `<vmx stem>.vmsd` in VMware's shape (`snapshot.lastUID`,
//!   `snapshot.numSnapshots`, `snapshotN.uid`, `snapshotN.displayName`, …).
//! - `clone` holds `<SRC>.sim-clone-lock` (created exclusively, holding the simulator's pid
//!   and a newline) for its whole run: a second clone of the same SRC meanwhile answers
//!   `Error: The file is already in use`. A clone killed mid-way leaves the lock behind, as
//!   VMware leaves its `.lck` folders, and the simulator never removes it: whoever drives
//!   it tells a stale lock by its pid, as VMware tells its own by the process id in each
//!   `.lck` member file. The clone's
//!   disks are `<diskstem>-cl1.vmdk` in DST's folder: a text descriptor with
//!   `parentFileNameHint="<absolute parent disk>"` for `linked`, a byte copy for `full`.
//!   A `linked` clone without `-snapshot` appends a snapshot named `Clone` to SRC every time.
//! - `deleteVM` removes the VMX, `<stem>.vmxf/.vmsd/.nvram/.vmss/.vmem`, the files named by
//!   `nvram` and `extendedConfigFile`, each disk and its `-cl1` delta beside it, `vmware*.log`
//!   and the `.lck` folders; never other files, nor the folder.
//! - A VMX is corrupt (`Error: Cannot open VM: VMX, Cannot read the virtual machine
//!   configuration file`) with a UTF-8 BOM, a non-comment line that is not `key = "value"`, or
//!   two keys equal but for case. `stop` does not read the VMX, so a VM can always be stopped.
//!
//! # Fault rules
//!
//! One rule a line (`#` starts a comment line): `SELECTOR [once] ACTION [ARGS]`.
//!
//! - SELECTOR: a command name (`start`, `clone`, …) or `*` for every command, optionally
//!   followed by `@SUBSTRING`: the rule then applies only when the VMX argument (for `clone`,
//!   SRC or DST) contains SUBSTRING (which cannot contain spaces). `list` has no VMX.
//! - `once`: the rule fires for the first matching invocation only, across all processes.
//! - ACTION:
//!   - `fail MESSAGE…`: print `Error: MESSAGE`, exit 255.
//!   - `fail-exit0 MESSAGE…`: print `Error: MESSAGE`, exit 0.
//!   - `hang`: never return; first start a child process (the simulator sleeping) that keeps
//!     stdout open, so that only killing the whole process group ends the call.
//!   - `noise`: print `Warning: program compiled against libxml 212 using older 209` on stdout
//!     and `[AppLoader] Use shipped Linux kernel AIO access library.` on stderr, then go on.
//!   - `delay MS`: sleep MS milliseconds, then go on.
//!   - `garbage`: print text that is not vmrun's protocol, exit 0.
//!   - `stamp`: print Fusion's timestamped noise line
//!     `2017-11-29T00:22:40.719| ServiceImpl_Opener: PID 77422` on stdout, then go on.
//!   - `stderr TEXT…`: print TEXT on stderr, then go on.
//!   - `print CODE TEXT…`: print TEXT on stdout (`\n` in it is a line break), exit CODE,
//!     skip the command (multi-line errors such as `Unable to connect to host.\nError: …`).
//!   - `after-fail MESSAGE…`: run the command for real, then print `Error: MESSAGE` and
//!     exit 255 (a `start` that answers `Cannot connect to the virtual machine` but runs).
//!
//! Rules from the `faults` file come first, then those of `VMRUN_SIM_FAULTS`. All matching
//! rules apply in order: `noise`, `stamp`, `stderr` and `delay` let the call go on, the
//! first matching `fail`, `fail-exit0`, `hang`, `garbage`, `print` or `after-fail` decides it. A malformed rule fails every call with
//! `Error: vmrun-sim: bad fault rule '…': …`. Example file:
//!
//! ```text
//! # the first start of any VM fails, clones of gold VMs are slow, lists are noisy
//! start once fail Unknown error
//! clone@/gold/ delay 500
//! list noise
//! ```

mod args;
mod boot;
mod clone;
mod delete;
mod error;
mod faults;
mod guest;
mod paths;
mod power;
mod snapshots;
mod state;
mod variables;
mod vmx;

use error::SimError;
use state::{now_ms, StateDir};
use std::io::Write;
use std::process::ExitCode;

const EXIT_ERROR: u8 = 255;

type Command = fn(&StateDir, &[String]) -> Result<String, SimError>;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if argv.len() == 1 && argv[0] == faults::SLEEP_FOREVER_ARG {
        faults::sleep_forever();
    }
    let t_start_ms = now_ms();
    let state = match StateDir::from_env() {
        Ok(state) => state,
        Err(e) => return finish(&format!("Error: {e}\n"), EXIT_ERROR),
    };
    let mut stdout = String::new();
    let exit = match run(&state, &argv, &mut stdout) {
        Ok(exit) => exit,
        Err(e) => {
            stdout.push_str(&format!("Error: {e}\n"));
            EXIT_ERROR
        }
    };
    let record = serde_json::json!({
        "t_start_ms": t_start_ms,
        "t_end_ms": now_ms(),
        "pid": std::process::id(),
        "args": argv,
        "exit": exit,
    });
    if let Err(e) = state.append_call(&record) {
        stdout = format!("Error: {e}\n");
        return finish(&stdout, EXIT_ERROR);
    }
    finish(&stdout, exit)
}

fn finish(stdout: &str, exit: u8) -> ExitCode {
    let mut out = std::io::stdout().lock();
    // A caller that closed the pipe has lost interest; nothing useful is left to do.
    let _ = out.write_all(stdout.as_bytes());
    let _ = out.flush();
    ExitCode::from(exit)
}

/// Runs one invocation, appending its output to `stdout`; returns the exit code.
fn run(state: &StateDir, argv: &[String], stdout: &mut String) -> Result<u8, SimError> {
    let rest = skip_global_flags(argv)?;
    let Some((command, args)) = rest.split_first() else {
        return Err(SimError::InvalidArguments("no command given".into()));
    };
    let targets: Vec<&str> = match command.as_str() {
        "list" => Vec::new(),
        "clone" => args.iter().take(2).map(String::as_str).collect(),
        _ => args.iter().take(1).map(String::as_str).collect(),
    };
    let rules = faults::load(state)?;
    let then_fail = match faults::apply(&rules, state, command, &targets, stdout)? {
        faults::Verdict::Answer(code, text) => {
            stdout.push_str(&text);
            return Ok(code);
        }
        faults::Verdict::RunThenFail(message) => Some(message),
        faults::Verdict::Run => None,
    };
    let handler: Command = match command.as_str() {
        "list" => power::list,
        "start" => power::start,
        "stop" => power::stop,
        "reset" => power::reset,
        "suspend" => power::suspend,
        "deleteVM" => delete::delete_vm,
        "clone" => clone::clone,
        "snapshot" => snapshots::snapshot,
        "listSnapshots" => snapshots::list_snapshots,
        "getGuestIPAddress" => guest::get_guest_ip_address,
        "checkToolsState" => guest::check_tools_state,
        "readVariable" => variables::read_variable,
        "writeVariable" => variables::write_variable,
        other => return Err(SimError::UnrecognizedCommand(other.to_string())),
    };
    let answer = handler(state, args);
    if let Some(message) = then_fail {
        return Err(SimError::Injected(message));
    }
    stdout.push_str(&answer?);
    Ok(0)
}

/// `-T TYPE`, `-gu USER`, `-gp PASS`, `-vp PASS` before the command: checked, then ignored.
fn skip_global_flags(argv: &[String]) -> Result<&[String], SimError> {
    let mut rest = argv;
    while let Some((flag, after)) = rest.split_first() {
        if !matches!(flag.as_str(), "-T" | "-gu" | "-gp" | "-vp") {
            break;
        }
        let Some((value, after)) = after.split_first() else {
            return Err(SimError::InvalidArguments(format!(
                "'{flag}' needs a value"
            )));
        };
        if flag == "-T"
            && !matches!(
                value.as_str(),
                "fusion" | "ws" | "player" | "server" | "server1" | "esx" | "vc"
            )
        {
            return Err(SimError::InvalidArguments(format!(
                "unknown host type '{value}' for -T"
            )));
        }
        rest = after;
    }
    Ok(rest)
}
