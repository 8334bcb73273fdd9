//! Stops a download that nobody wants or that crawls: a reader around the body that fails
//! once its download is cancelled, or once a whole window went by slower than the minimum
//! rate (a server dribbling a byte now and then never trips the read timeout). The reason
//! is kept for the pipeline, which reports it instead of the io error it surfaces as.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use crate::image::error::ImageError;
use crate::sys::cancel::Cancel;

/// `--download-min-rate` over `--download-min-rate-window`; a rate of 0 is off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MinRate {
    pub bytes_per_sec: u64,
    pub window: Duration,
}

impl MinRate {
    pub const OFF: Self = Self {
        bytes_per_sec: 0,
        window: crate::config::DOWNLOAD_MIN_RATE_WINDOW.seconds(),
    };
}

pub struct Guarded<R> {
    inner: R,
    cancel: Cancel,
    min_rate: MinRate,
    url: String,
    window_start: Instant,
    window_bytes: u64,
    received: u64,
    tripped: Option<ImageError>,
}

impl<R: Read> Guarded<R> {
    pub fn new(inner: R, cancel: Cancel, min_rate: MinRate, url: &str) -> Self {
        Self {
            inner,
            cancel,
            min_rate,
            url: url.to_string(),
            window_start: Instant::now(),
            window_bytes: 0,
            received: 0,
            tripped: None,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Why reads fail, when the guard stopped them.
    pub fn tripped(&self) -> Option<&ImageError> {
        self.tripped.as_ref()
    }

    fn trip(&mut self, why: ImageError) -> io::Error {
        let error = io::Error::other(why.to_string());
        self.tripped = Some(why);
        error
    }

    fn check_rate(&mut self) -> Option<ImageError> {
        let MinRate {
            bytes_per_sec,
            window,
        } = self.min_rate;
        let elapsed = self.window_start.elapsed();
        if bytes_per_sec == 0 || elapsed < window || window.is_zero() {
            return None;
        }
        let rate = (self.window_bytes as f64 / elapsed.as_secs_f64()) as u64;
        self.window_start = Instant::now();
        self.window_bytes = 0;
        (rate < bytes_per_sec).then(|| ImageError::TooSlow {
            url: self.url.clone(),
            min_rate: bytes_per_sec,
            rate,
            window,
            received: self.received,
        })
    }
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(why) = &self.tripped {
            return Err(io::Error::other(why.to_string()));
        }
        if self.cancel.is_cancelled() {
            return Err(self.trip(ImageError::Cancelled));
        }
        let n = self.inner.read(buf)?;
        self.window_bytes += n as u64;
        self.received += n as u64;
        if self.cancel.is_cancelled() {
            return Err(self.trip(ImageError::Cancelled));
        }
        if let Some(why) = self.check_rate() {
            return Err(self.trip(why));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives `chunk` bytes a read, `pause` apart.
    struct Dribble {
        chunk: usize,
        pause: Duration,
    }

    impl Read for Dribble {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            std::thread::sleep(self.pause);
            let n = self.chunk.min(buf.len());
            buf[..n].fill(7);
            Ok(n)
        }
    }

    #[test]
    fn a_dribble_below_the_minimum_rate_trips_after_one_window() {
        let slow = Dribble {
            chunk: 10,
            pause: Duration::from_millis(20),
        };
        let rate = MinRate {
            bytes_per_sec: 10_000,
            window: Duration::from_millis(200),
        };
        let mut guarded = Guarded::new(slow, Cancel::new(), rate, "http://h/i.tar");
        let started = Instant::now();
        let err = io::copy(&mut guarded, &mut io::sink()).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{err}");
        assert_eq!(guarded.tripped().unwrap().code(), "image-timeout");
    }

    #[test]
    fn a_fast_source_passes_and_a_cancel_stops_it() {
        let fast = Dribble {
            chunk: 64 * 1024,
            pause: Duration::from_millis(1),
        };
        let rate = MinRate {
            bytes_per_sec: 1024,
            window: Duration::from_millis(50),
        };
        let cancel = Cancel::new();
        let mut guarded = Guarded::new(fast, cancel.clone(), rate, "u");
        let mut buf = vec![0; 64 * 1024];
        for _ in 0..100 {
            assert!(guarded.read(&mut buf).unwrap() > 0);
        }
        cancel.cancel();
        assert!(guarded.read(&mut buf).is_err());
        assert_eq!(guarded.tripped().unwrap().code(), "image-cancelled");
    }
}
