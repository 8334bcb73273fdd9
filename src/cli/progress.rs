//! What `--wait` shows on stderr while it follows a VM: on a terminal, one line redrawn in
//! place (a bar with bytes of total, rate and time left while the image downloads, then the
//! phase); otherwise one line per phase, which reads well in a CI log.

use std::io::Write;
use std::time::{Duration, Instant};

pub struct Display {
    terminal: bool,
    label: String,
    phase: String,
    /// Where the download's rate is measured from: the first sample of this download.
    start: Option<(Instant, u64)>,
    drawn: bool,
}

impl Display {
    pub fn new(label: &str) -> Self {
        // SAFETY: isatty only reads the descriptor's state.
        let terminal = unsafe { libc::isatty(libc::STDERR_FILENO) } == 1;
        Self::with_terminal(label, terminal)
    }

    pub fn with_terminal(label: &str, terminal: bool) -> Self {
        Self {
            terminal,
            label: label.to_string(),
            phase: String::new(),
            start: None,
            drawn: false,
        }
    }

    pub fn update(&mut self, phase: &str, done: u64, total: Option<u64>) {
        let now = Instant::now();
        let changed = phase != self.phase;
        if changed {
            self.phase = phase.to_string();
            self.start = None;
        }
        if phase == "downloading" && self.start.is_none_or(|(_, from)| done < from) {
            self.start = Some((now, done));
        }
        if self.terminal {
            let line = self.line(now, done, total);
            self.write(&format!("\r\x1b[K{line}"));
            self.drawn = true;
        } else if changed {
            let size = match (phase, total) {
                ("downloading", Some(total)) => format!(" ({})", super::output::bytes(total)),
                _ => String::new(),
            };
            self.write(&format!("{}: {phase}{size}\n", self.label));
        }
    }

    /// The last word: `ready 10.0.0.5` or `failed: code`.
    pub fn finish(&mut self, outcome: &str) {
        let text = if self.terminal {
            format!("\r\x1b[K{}: {outcome}\n", self.label)
        } else {
            format!("{}: {outcome}\n", self.label)
        };
        self.write(&text);
        self.drawn = false;
    }

    /// Ends a redrawn line without a verdict (an error follows on its own line).
    pub fn abandon(&mut self) {
        if self.drawn {
            self.write("\n");
            self.drawn = false;
        }
    }

    fn line(&self, now: Instant, done: u64, total: Option<u64>) -> String {
        let bytes = super::output::bytes;
        if self.phase != "downloading" {
            return format!("{}: {}", self.label, self.phase);
        }
        let rate = self.start.and_then(|(at, from)| {
            let secs = now.duration_since(at).as_secs_f64();
            (secs >= 0.2 && done > from).then(|| (done - from) as f64 / secs)
        });
        let rate_text = rate.map_or_else(|| "-".to_string(), |r| format!("{}/s", bytes(r as u64)));
        match total {
            Some(total) if total > 0 => {
                let fraction = (done as f64 / total as f64).clamp(0.0, 1.0);
                let eta = rate.map_or_else(
                    || "-".to_string(),
                    |r| {
                        clock(Duration::from_secs_f64(
                            total.saturating_sub(done) as f64 / r,
                        ))
                    },
                );
                format!(
                    "{}: downloading [{}] {} of {} {:>3.0}%  {rate_text}  ETA {eta}",
                    self.label,
                    bar(fraction, 24),
                    bytes(done),
                    bytes(total),
                    fraction * 100.0
                )
            }
            _ => format!("{}: downloading {}  {rate_text}", self.label, bytes(done)),
        }
    }

    fn write(&self, text: &str) {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(text.as_bytes());
        let _ = err.flush();
    }
}

fn bar(fraction: f64, width: usize) -> String {
    let filled = ((fraction * width as f64).round() as usize).min(width);
    format!("{}{}", "#".repeat(filled), "-".repeat(width - filled))
}

/// `1:05` or `2:03:04`.
fn clock(d: Duration) -> String {
    let s = d.as_secs().min(99 * 3600);
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_download_line_has_bytes_of_total_rate_and_time_left() {
        let mut d = Display::with_terminal("vm x", true);
        let t0 = Instant::now();
        d.phase = "downloading".into();
        d.start = Some((t0, 0));
        let line = d.line(t0 + Duration::from_secs(2), 2 << 20, Some(8 << 20));
        assert_eq!(
            line,
            "vm x: downloading [######------------------] 2.0 MiB of 8.0 MiB  25%  1.0 MiB/s  ETA 0:06"
        );
        assert_eq!(bar(1.0, 4), "####");
        assert_eq!(clock(Duration::from_secs(7384)), "2:03:04");
        d.phase = "cloning".into();
        assert_eq!(d.line(t0, 0, None), "vm x: cloning");
    }
}
