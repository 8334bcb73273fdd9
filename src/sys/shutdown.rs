//! SIGTERM and SIGINT ask for a graceful stop, SIGHUP for the log file to be reopened: the
//! main thread polls flags that the signal handlers set (the only thing a handler may
//! safely do).

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static HANGUP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

extern "C" fn on_hangup(_signal: libc::c_int) {
    HANGUP.store(true, Ordering::SeqCst);
}

pub fn install_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
    }
}

/// At the very start of the server: SIGHUP's default action ends the process, and newsyslog
/// may signal the pid in the lock file at any moment of a start.
pub fn install_hangup_handler() {
    let handler = on_hangup as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGHUP, handler);
    }
}

pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Whether SIGHUP came since the last call.
pub fn take_hangup() -> bool {
    HANGUP.swap(false, Ordering::SeqCst)
}
