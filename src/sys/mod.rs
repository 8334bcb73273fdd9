//! What the rest of the crate needs from the operating system and nothing of the domain:
//! logging (and conditions logged when they start and end), time, files written crash-safely, free disk, locks, signals, cancellation.

pub mod cancel;
pub mod condition;
pub mod data_lock;
pub(crate) mod disk;
pub mod fd_limit;
pub(crate) mod fsutil;
pub(crate) mod hex;
pub mod log;
pub mod log_file;
pub(crate) mod prometheus;
#[cfg(test)]
pub(crate) mod scratch;
pub mod shutdown;
pub(crate) mod sync;
pub mod time;
