//! Fault injection: rules read from `$VMRUN_SIM_STATE/faults` (on every call, so a test can
//! change them while the server runs) and from `VMRUN_SIM_FAULTS`. The syntax is documented at
//! the top of main.rs.

use crate::error::SimError;
use crate::paths::fnv64;
use crate::state::{now_ms, StateDir};
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

pub const FAULTS_ENV: &str = "VMRUN_SIM_FAULTS";
/// Internal: the child a `hang` leaves behind runs the simulator with this single argument.
pub const SLEEP_FOREVER_ARG: &str = "--vmrun-sim-sleep-forever";

pub const NOISE_STDOUT: &str = "Warning: program compiled against libxml 212 using older 209";
pub const NOISE_STDERR: &str = "[AppLoader] Use shipped Linux kernel AIO access library.";
/// The line Fusion's vmrun was seen to print before its answer or its `Error:` line.
pub const NOISE_STAMP: &str = "2017-11-29T00:22:40.719| ServiceImpl_Opener: PID 77422";

enum Action {
    Fail(String),
    FailExit0(String),
    Hang,
    Noise,
    Delay(u64),
    Garbage,
    /// Fusion's timestamped noise line on stdout, then go on.
    Stamp,
    /// A line on stderr, then go on.
    Stderr(String),
    /// Print this text (`\\n` for a line break) on stdout and exit with this code.
    Print(u8, String),
    /// Run the command for real, then print `Error: MESSAGE` and exit 255 (a start that
    /// went through although vmrun said it failed).
    AfterFail(String),
}

pub struct Rule {
    /// Normalised text: names the rule's `once` marker.
    text: String,
    command: String,
    vmx_contains: Option<String>,
    once: bool,
    action: Action,
}

pub fn load(state: &StateDir) -> Result<Vec<Rule>, SimError> {
    let file = state.path("faults");
    let mut rules = Vec::new();
    match fs::read_to_string(&file) {
        Ok(text) => {
            for line in text.lines() {
                rules.extend(parse_rule(line)?);
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(SimError::io("read", &file, e)),
    }
    if let Ok(text) = std::env::var(FAULTS_ENV) {
        for line in text.split([';', '\n']) {
            rules.extend(parse_rule(line)?);
        }
    }
    Ok(rules)
}

fn parse_rule(line: &str) -> Result<Option<Rule>, SimError> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let bad = |why: &str| SimError::Sim(format!("bad fault rule '{line}': {why}"));
    let mut tokens = line.split_whitespace().peekable();
    let selector = tokens.next().ok_or_else(|| bad("empty"))?;
    let (command, vmx_contains) = match selector.split_once('@') {
        Some((_, "")) => return Err(bad("nothing after '@'")),
        Some((command, needle)) => (command, Some(needle.to_string())),
        None => (selector, None),
    };
    if command.is_empty() {
        return Err(bad("no command before '@'"));
    }
    let once = tokens.next_if_eq(&"once").is_some();
    let action_name = tokens.next().ok_or_else(|| bad("no action"))?;
    let rest: Vec<&str> = tokens.collect();
    let message = rest.join(" ");
    let action = match action_name {
        "fail" | "fail-exit0" if message.is_empty() => return Err(bad("no message")),
        "fail" => Action::Fail(message),
        "fail-exit0" => Action::FailExit0(message),
        "after-fail" if message.is_empty() => return Err(bad("no message")),
        "after-fail" => Action::AfterFail(message),
        "stamp" => Action::Stamp,
        "stderr" if message.is_empty() => return Err(bad("no text")),
        "stderr" => Action::Stderr(message),
        "print" => match rest.split_first() {
            Some((code, text)) => Action::Print(
                code.parse()
                    .map_err(|_| bad("print wants an exit code, then text"))?,
                text.join(" ").replace("\\n", "\n"),
            ),
            None => return Err(bad("print wants an exit code, then text")),
        },
        "hang" => Action::Hang,
        "noise" => Action::Noise,
        "garbage" => Action::Garbage,
        "delay" => match rest.as_slice() {
            [ms] => Action::Delay(ms.parse().map_err(|_| bad("delay wants milliseconds"))?),
            _ => return Err(bad("delay wants one number of milliseconds")),
        },
        _ => return Err(bad("unknown action")),
    };
    if !matches!(
        action,
        Action::Fail(_)
            | Action::FailExit0(_)
            | Action::Delay(_)
            | Action::AfterFail(_)
            | Action::Stderr(_)
            | Action::Print(..)
    ) && !rest.is_empty()
    {
        return Err(bad("unexpected words after the action"));
    }
    Ok(Some(Rule {
        text: line.split_whitespace().collect::<Vec<_>>().join(" "),
        command: command.to_string(),
        vmx_contains,
        once,
        action,
    }))
}

/// What the matching rules decided.
pub enum Verdict {
    /// Run the command.
    Run,
    /// Run the command, then fail with this message whatever it did.
    RunThenFail(String),
    /// Print this text, exit with this code, skip the command.
    Answer(u8, String),
}

/// Applies the matching rules in order: `noise`, `stamp`, `stderr` and `delay` then let the
/// call go on, the first matching `fail`, `fail-exit0`, `garbage`, `print`, `after-fail` or
/// `hang` ends the rule list. Noise lines go to `stdout`.
pub fn apply(
    rules: &[Rule],
    state: &StateDir,
    command: &str,
    targets: &[&str],
    stdout: &mut String,
) -> Result<Verdict, SimError> {
    for rule in rules {
        let command_matches = rule.command == "*" || rule.command == command;
        let target_matches = match &rule.vmx_contains {
            Some(needle) => targets.iter().any(|t| t.contains(needle.as_str())),
            None => true,
        };
        if !command_matches || !target_matches || (rule.once && !first_use(state, rule)?) {
            continue;
        }
        match &rule.action {
            Action::Fail(message) => return Err(SimError::Injected(message.clone())),
            Action::FailExit0(message) => {
                return Ok(Verdict::Answer(0, format!("Error: {message}\n")))
            }
            Action::Garbage => return Ok(Verdict::Answer(0, garbage())),
            Action::Print(code, text) => return Ok(Verdict::Answer(*code, format!("{text}\n"))),
            Action::AfterFail(message) => return Ok(Verdict::RunThenFail(message.clone())),
            Action::Stamp => {
                stdout.push_str(NOISE_STAMP);
                stdout.push('\n');
            }
            Action::Stderr(text) => {
                let _ = writeln!(std::io::stderr(), "{text}");
            }
            Action::Hang => hang(state),
            Action::Noise => {
                stdout.push_str(NOISE_STDOUT);
                stdout.push('\n');
                let _ = writeln!(std::io::stderr(), "{NOISE_STDERR}");
            }
            Action::Delay(ms) => std::thread::sleep(Duration::from_millis(*ms)),
        }
    }
    Ok(Verdict::Run)
}

/// Exactly one process wins `create_new` on the rule's marker, however many run at once.
fn first_use(state: &StateDir, rule: &Rule) -> Result<bool, SimError> {
    let dir = state.path("faults-once");
    fs::create_dir_all(&dir).map_err(|e| SimError::io("create", &dir, e))?;
    let marker = dir.join(format!("{:016x}", fnv64(rule.text.as_bytes())));
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
    {
        Ok(mut file) => {
            let _ = writeln!(file, "{}", rule.text);
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(SimError::io("create", &marker, e)),
    }
}

fn garbage() -> String {
    let noise = fnv64(format!("{}/{}", std::process::id(), now_ms()).as_bytes());
    format!(
        "\u{1b}[0m%%#{noise:016x} <<~ vmx:: ?? {:08x} ||>>\n0x{:04x} ;; ~ \u{fffd}\u{fffd} ;;\n",
        noise >> 32,
        noise & 0xffff
    )
}

/// Never returns. Leaves a sleeping child in the process group (and holding stdout), as a hung
/// vmrun with helpers would, so a test can prove the caller kills the whole group.
fn hang(state: &StateDir) -> ! {
    let child = std::env::current_exe()
        .and_then(|exe| {
            Command::new(exe)
                .arg(SLEEP_FOREVER_ARG)
                .stdin(Stdio::null())
                .spawn()
        })
        .or_else(|_| {
            Command::new("sleep")
                .arg("2147483647")
                .stdin(Stdio::null())
                .spawn()
        });
    let child_pid = child.map(|c| c.id().to_string()).unwrap_or_default();
    let line = format!("{} {child_pid}\n", std::process::id());
    let pids = state.path("hang.pids");
    if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(pids) {
        let _ = file.write_all(line.as_bytes());
    }
    sleep_forever()
}

pub fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
