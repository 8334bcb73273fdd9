//! The Prometheus text exposition format (version 0.0.4), written by hand: HELP and TYPE
//! lines, samples with escaped labels, and histograms with fixed buckets. Every `/metrics`
//! family of the crate (the host's and the fleet's) is written with these.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(test)]
pub mod check;

#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket, not cumulative; one more than `bounds` for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, seconds: f64) {
        let index = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[index] += 1;
        self.sum += seconds;
    }
}

/// A counter family over one label with a fixed set of values, each shown from the start
/// (at 0): a dashboard's rate of `failed` needs the series before the first failure, and a
/// closed set keeps anything outside the process from creating series.
#[derive(Debug)]
pub struct Counters {
    label: &'static str,
    values: &'static [&'static str],
    counts: Box<[AtomicU64]>,
}

impl Counters {
    pub fn new(label: &'static str, values: &'static [&'static str]) -> Self {
        Counters {
            label,
            values,
            counts: values.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Counts one of `value`, which must be one of the declared values (else it is a bug
    /// of the caller, and not counted).
    pub fn add(&self, value: &str) {
        let index = self.values.iter().position(|v| *v == value);
        debug_assert!(index.is_some(), "{value} is not a value of {}", self.label);
        if let Some(index) = index {
            self.counts[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self, value: &str) -> u64 {
        self.values
            .iter()
            .position(|v| *v == value)
            .map_or(0, |index| self.counts[index].load(Ordering::Relaxed))
    }

    /// The family's HELP, TYPE and one sample per value.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "counter", help);
        for (value, count) in self.values.iter().zip(self.counts.iter()) {
            sample(
                out,
                name,
                &[(self.label, value)],
                count.load(Ordering::Relaxed),
            );
        }
    }
}

pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub fn sample(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    value: impl std::fmt::Display,
) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (index, (label, value)) in labels.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label_value(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

pub fn render_histogram(out: &mut String, name: &str, histogram: &Histogram) {
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0u64;
    for (bound, count) in histogram.bounds.iter().zip(&histogram.counts) {
        cumulative += count;
        sample(out, &bucket, &[("le", &format_float(*bound))], cumulative);
    }
    // `_count` is derived from the same numbers, so `+Inf` and `_count` cannot disagree.
    cumulative += histogram.counts[histogram.bounds.len()];
    sample(out, &bucket, &[("le", "+Inf")], cumulative);
    sample(
        out,
        &format!("{name}_sum"),
        &[],
        format_float(histogram.sum),
    );
    sample(out, &format!("{name}_count"), &[], cumulative);
}

/// Rust writes infinity as `inf`; Prometheus wants `+Inf`, `-Inf` and `NaN`.
fn format_float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value == f64::INFINITY {
        "+Inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        value.to_string()
    }
}

/// Label values escape backslash, double quote and line feed (the format's whole list).
fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// HELP text escapes only backslash and line feed.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}
