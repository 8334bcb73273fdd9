//! Runs one child process (vmrun, tart) with a deadline, in its own process group so that a
//! hung call can be killed together with everything it started.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::sys::cancel::Cancel;
use crate::sys::sync::LockUnpoisoned;

/// How often a running call is checked for exit, cancellation and its deadline: often at
/// first, as most vmrun calls (`getGuestIPAddress`, `list`) end within milliseconds and a
/// fixed 10 ms poll added up to 10 ms to each, then no more than this.
const POLL_FIRST: Duration = Duration::from_micros(500);
const POLL_MAX: Duration = Duration::from_millis(10);
/// After the child exits, how long to wait for its pipes to close. A process it left behind
/// can hold them open for ever; output written before the exit is already in the pipe.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// vmrun prints a few lines; anything past this is kept from filling memory, and still read
/// so that the writer never blocks on a full pipe.
const OUTPUT_CAP: usize = 1 << 20;

#[derive(Debug)]
pub(crate) struct Finished {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// False when a pipe was still open after the grace period (output may be cut short).
    pub output_complete: bool,
}

#[derive(Debug)]
pub(crate) enum RunError {
    Spawn(std::io::Error),
    Wait(std::io::Error),
    TimedOut,
    Cancelled,
}

pub(crate) fn run(
    program: &Path,
    args: &[OsString],
    timeout: Duration,
    cancel: Option<&Cancel>,
) -> Result<Finished, RunError> {
    run_with_env(program, args, &[], timeout, cancel)
}

/// As [`run`], with these environment variables set for the child.
pub(crate) fn run_with_env(
    program: &Path,
    args: &[OsString],
    env: &[(&str, &std::ffi::OsStr)],
    timeout: Duration,
    cancel: Option<&Cancel>,
) -> Result<Finished, RunError> {
    if cancel.is_some_and(Cancel::is_cancelled) {
        return Err(RunError::Cancelled);
    }
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(RunError::Spawn)?;
    let stdout = Collector::start(child.stdout.take());
    let stderr = Collector::start(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut poll = POLL_FIRST;

    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                kill_group(&mut child);
                return Err(RunError::Wait(e));
            }
        }
        if cancel.is_some_and(Cancel::is_cancelled) {
            kill_group(&mut child);
            return Err(RunError::Cancelled);
        }
        if Instant::now() >= deadline {
            kill_group(&mut child);
            return Err(RunError::TimedOut);
        }
        thread::sleep(poll);
        poll = (poll * 2).min(POLL_MAX);
    };

    let grace_end = Instant::now() + OUTPUT_GRACE;
    let (stdout, stdout_complete) = stdout.finish(grace_end);
    let (stderr, stderr_complete) = stderr.finish(grace_end);
    Ok(Finished {
        code: status.code(),
        signal: status.signal(),
        stdout,
        stderr,
        output_complete: stdout_complete && stderr_complete,
    })
}

/// Kills the child's whole process group (the child leads it: `process_group(0)`), then
/// reaps the child so no zombie is left.
fn kill_group(child: &mut Child) {
    match libc::pid_t::try_from(child.id()) {
        Ok(pgid) if pgid > 0 => {
            // SAFETY: kill(2) with a negative pid signals that process group and touches no
            // memory of ours; the group is the one this child leads, and it still exists
            // because the child has not been reaped yet.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        _ => {
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}

/// Reads one pipe to its end on a thread, so a chatty child never blocks on a full pipe.
struct Collector {
    buffer: Arc<Mutex<Vec<u8>>>,
    /// Disconnected when the reader thread ends (or never started): the pipe reached its end.
    done: Receiver<()>,
}

enum Pipe {
    Out(ChildStdout),
    Err(ChildStderr),
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Pipe::Out(p) => p.read(buf),
            Pipe::Err(p) => p.read(buf),
        }
    }
}

impl From<ChildStdout> for Pipe {
    fn from(p: ChildStdout) -> Self {
        Pipe::Out(p)
    }
}

impl From<ChildStderr> for Pipe {
    fn from(p: ChildStderr) -> Self {
        Pipe::Err(p)
    }
}

impl Collector {
    fn start<P: Into<Pipe>>(pipe: Option<P>) -> Collector {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let (done_tx, done) = mpsc::channel::<()>();
        let Some(pipe) = pipe else {
            return Collector { buffer, done };
        };
        let mut pipe: Pipe = pipe.into();
        let thread_buffer = Arc::clone(&buffer);
        let spawned = thread::Builder::new()
            .name("hypervisor-output".into())
            .spawn(move || {
                // Dropped when this thread ends, whichever way: that is the signal.
                let _done = done_tx;
                let mut chunk = [0u8; 8192];
                loop {
                    match pipe.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => {
                            if let Ok(mut buf) = thread_buffer.lock() {
                                let room = OUTPUT_CAP.saturating_sub(buf.len());
                                buf.extend_from_slice(&chunk[..n.min(room)]);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            });
        // Without a reader (spawn failed) the output is lost, but the call itself can still
        // be judged by its exit status; the dropped pipe makes a writing child get EPIPE,
        // not hang, and the dropped sender reads as done.
        drop(spawned);
        Collector { buffer, done }
    }

    /// Waits until the pipe reached its end or `until` passes; returns what was read and
    /// whether it was all of it.
    fn finish(self, until: Instant) -> (Vec<u8>, bool) {
        let left = until.saturating_duration_since(Instant::now());
        let complete = matches!(
            self.done.recv_timeout(left),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
        let bytes = self.buffer.lock_unpoisoned().clone();
        (bytes, complete)
    }
}
