//! Fault rules from `$TART_HOME/.sim/faults` (re-read by every call, so a test can change them
//! while the server runs) and `TART_SIM_FAULTS`; the syntax is at the top of main.rs.

use crate::error::TartError;
use crate::home::Home;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Internal: the child a `hang` leaves behind runs the simulator with this single argument.
pub const SLEEP_FOREVER_ARG: &str = "--tart-sim-sleep-forever";

enum Action {
    Delay(u64),
    Hang,
    Fail(u8, String),
    GcFail,
}

struct Rule {
    text: String,
    command: String,
    target: Option<String>,
    once: bool,
    action: Action,
}

fn parse(line: &str) -> Result<Option<Rule>, TartError> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let bad = |why: &str| TartError::one(format!("tart-sim: bad fault rule '{line}': {why}"));
    let mut tokens = line.split_whitespace().peekable();
    let selector = tokens.next().ok_or_else(|| bad("empty"))?;
    let (command, target) = match selector.split_once('@') {
        Some((command, target)) => (command, Some(target.to_string())),
        None => (selector, None),
    };
    let once = tokens.next_if_eq(&"once").is_some();
    let action = match tokens.next() {
        Some("delay") => Action::Delay(
            tokens
                .next()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| bad("delay needs milliseconds"))?,
        ),
        Some("hang") => Action::Hang,
        Some("gc-fail") => Action::GcFail,
        Some("fail") => {
            let code = tokens
                .next()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| bad("fail needs an exit code"))?;
            Action::Fail(code, tokens.collect::<Vec<_>>().join(" "))
        }
        other => return Err(bad(&format!("unknown action {other:?}"))),
    };
    Ok(Some(Rule {
        text: line.to_string(),
        command: command.to_string(),
        target,
        once,
        action,
    }))
}

fn load(home: &Home) -> Result<Vec<Rule>, TartError> {
    let mut rules = Vec::new();
    let file = home.sim("faults");
    match fs::read_to_string(&file) {
        Ok(text) => {
            for line in text.lines() {
                rules.extend(parse(line)?);
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(TartError::io("read", &file, e)),
    }
    if let Ok(text) = std::env::var("TART_SIM_FAULTS") {
        for line in text.split([';', '\n']) {
            rules.extend(parse(line)?);
        }
    }
    Ok(rules)
}

/// Applies the matching rules in order; a `fail` ends the call with its error.
pub fn apply(home: &Home, command: &str, target: Option<&str>) -> Result<(), TartError> {
    for rule in load(home)? {
        let matches = (rule.command == "*" || rule.command == command)
            && rule.target.as_deref().is_none_or(|t| Some(t) == target);
        if !matches || (rule.once && !first_use(home, &rule)) {
            continue;
        }
        match rule.action {
            Action::Delay(ms) => std::thread::sleep(Duration::from_millis(ms)),
            Action::GcFail => {
                eprintln!("Failed to perform garbage collection: Permission denied")
            }
            Action::Fail(code, text) => return Err(TartError { code, text }),
            Action::Hang => hang(home),
        }
    }
    Ok(())
}

/// Exactly one process wins `create_new` on the rule's marker, however many run at once.
fn first_use(home: &Home, rule: &Rule) -> bool {
    let dir = home.sim("faults-once");
    let _ = fs::create_dir_all(&dir);
    let marker = dir.join(format!("{:x}", fnv(rule.text.as_bytes())));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(marker)
        .is_ok()
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Never returns; leaves a sleeping child holding stdout, so that only killing the whole
/// process group ends the call.
fn hang(home: &Home) -> ! {
    let child = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .arg(SLEEP_FOREVER_ARG)
            .stdin(Stdio::null())
            .spawn()
    });
    let child_pid = child.map(|c| c.id().to_string()).unwrap_or_default();
    let line = format!("{} {child_pid}\n", std::process::id());
    if let Ok(mut file) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.sim("hang.pids"))
    {
        let _ = file.write_all(line.as_bytes());
    }
    sleep_forever()
}

pub fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
