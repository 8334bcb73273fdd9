//! A condition that persists (vmrun missing, `vmrun list` failing, a gold image wedged, etcd
//! unreachable) is logged when it starts and when it ends, not each time it is seen: a
//! background loop that meets it every few seconds would otherwise fill the disk with one
//! line repeated, and bury the line that says when it began.
//!
//! ```
//! use osx_builder::sys::condition::Condition;
//! use osx_builder::sys::log::Level;
//!
//! let vmrun = Condition::new("vmrun list", Level::Warn);
//! vmrun.holds("vmrun-not-found", "vmrun not found at /x"); // logged: it starts
//! vmrun.holds("vmrun-not-found", "vmrun not found at /x"); // not logged: it goes on
//! vmrun.ended("answers again");                             // logged, with how long it lasted
//! ```

use std::fmt::Display;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sys::log::{self, Fields, Level};
use crate::sys::sync::LockUnpoisoned;

/// One condition of one subject. Cheap to keep per subject (per image, per peer).
#[derive(Debug)]
pub struct Condition {
    /// What the condition is about, leading each of its lines (`vmrun list`, `etcd`).
    subject: &'static str,
    /// The level of the line that says it started; the line that says it ended is info.
    level: Level,
    /// What the condition means while it holds, said once in the line that says it started
    /// (`admission counts VM records alone`).
    meaning: &'static str,
    state: Mutex<Option<Active>>,
}

#[derive(Debug)]
struct Active {
    /// Which kind of trouble it is (an error code): a change of kind is logged again.
    kind: String,
    since: Instant,
    /// The latest description, for the line that says it ended.
    last: String,
}

impl Condition {
    pub const fn new(subject: &'static str, level: Level) -> Self {
        Self {
            subject,
            level,
            meaning: "",
            state: Mutex::new(None),
        }
    }

    /// What the condition means while it holds, added to the line that says it started.
    pub const fn meaning(mut self, meaning: &'static str) -> Self {
        self.meaning = meaning;
        self
    }

    /// The condition holds now, as `kind` (an error code, or any short word) described by
    /// `message`. Logs only when it starts or changes kind; returns whether it logged.
    pub fn holds(&self, kind: &str, message: impl Display) -> bool {
        self.holds_with(Fields::new(), kind, message)
    }

    /// As [`holds`](Self::holds), with the log fields of the subject (`vm`, `image`).
    pub fn holds_with(&self, fields: Fields, kind: &str, message: impl Display) -> bool {
        let message = message.to_string();
        let mut state = self.state.lock_unpoisoned();
        match &mut *state {
            Some(active) if active.kind == kind => {
                active.last = message;
                false
            }
            Some(active) => {
                log::write_with(
                    self.level,
                    fields.code(kind),
                    format_args!(
                        "{}: now {message} (before: {}, for {})",
                        self.subject,
                        active.last,
                        seconds(active.since.elapsed())
                    ),
                );
                active.kind = kind.to_string();
                active.last = message;
                true
            }
            None => {
                log::write_with(
                    self.level,
                    fields.code(kind),
                    format_args!(
                        "{}: {message}{}{} (said once; a line follows when it ends)",
                        self.subject,
                        if self.meaning.is_empty() { "" } else { "; " },
                        self.meaning
                    ),
                );
                *state = Some(Active {
                    kind: kind.to_string(),
                    since: Instant::now(),
                    last: message,
                });
                true
            }
        }
    }

    /// The condition no longer holds: logs that, with how long it lasted and what it last
    /// was, if it held; returns how long it held.
    pub fn ended(&self, message: impl Display) -> Option<Duration> {
        self.ended_with(Fields::new(), message)
    }

    pub fn ended_with(&self, fields: Fields, message: impl Display) -> Option<Duration> {
        let active = self.state.lock_unpoisoned().take()?;
        let lasted = active.since.elapsed();
        log::write_with(
            Level::Info,
            fields,
            format_args!(
                "{}: {message}, after {} of: {}",
                self.subject,
                seconds(lasted),
                active.last
            ),
        );
        Some(lasted)
    }

    /// Since when the condition holds and its latest description, or `None`.
    pub fn active(&self) -> Option<(Duration, String)> {
        self.state
            .lock_unpoisoned()
            .as_ref()
            .map(|active| (active.since.elapsed(), active.last.clone()))
    }
}

fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_start_a_change_of_kind_and_the_end_once_each() {
        let c = Condition::new("vmrun list", Level::Warn);
        assert!(c.ended("answers").is_none(), "nothing held: nothing to end");
        assert!(c.holds("vmrun-not-found", "vmrun not found at /x"));
        for _ in 0..100 {
            assert!(!c.holds("vmrun-not-found", "vmrun not found at /x"));
        }
        assert_eq!(
            c.active().map(|(_, last)| last),
            Some("vmrun not found at /x".to_string())
        );
        assert!(c.holds("vmrun-timeout", "vmrun list timed out"));
        assert!(!c.holds("vmrun-timeout", "vmrun list timed out again"));
        assert!(c.ended("answers again").is_some());
        assert!(c.active().is_none());
        assert!(c.ended("answers again").is_none(), "ended once only");
        assert!(
            c.holds("vmrun-timeout", "vmrun list timed out"),
            "can start anew"
        );
    }
}
