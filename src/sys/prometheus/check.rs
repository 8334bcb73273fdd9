//! A strict reader of the Prometheus text format as this crate writes it, for the tests of
//! every `/metrics` family (promtool is not on every machine that runs them).

use std::collections::{HashMap, HashSet};

/// One parsed sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(label, _)| label == name)
            .map(|(_, value)| value.as_str())
    }
}

#[derive(Debug, Default)]
pub struct Exposition {
    pub types: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if text.contains(|c: char| c.is_ascii_alphabetic()) => {
            Err(format!("value {text:?} is not a Prometheus float"))
        }
        _ => text.parse().map_err(|_| format!("bad value {text:?}")),
    }
}

pub type Labels = Vec<(String, String)>;

/// `{a="x",b="y"}` to pairs, undoing the escapes; returns the rest of the line.
fn parse_labels(text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = text.strip_prefix('{').ok_or("labels must start with {")?;
    if let Some(after) = rest.strip_prefix('}') {
        return Ok((labels, after));
    }
    loop {
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling backslash")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    other => return Err(format!("unknown escape \\{other}")),
                },
                (_, '\n') => return Err("raw newline in label value".into()),
                (_, c) => value.push(c),
            }
        };
        if labels.iter().any(|(existing, _)| existing == name) {
            return Err(format!("label {name} repeated"));
        }
        labels.push((name.to_string(), value));
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        rest = rest
            .strip_prefix(',')
            .ok_or("labels must be separated by ,")?;
    }
}

/// A strict reader of the text format, as far as this module writes it: every line is a
/// HELP, a TYPE or a sample; each family's HELP and TYPE come before its samples and the
/// family's lines are contiguous; names and labels are well-formed.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut exposition = Exposition::default();
    let mut helped = HashSet::new();
    let mut finished_families = HashSet::new();
    let mut current_family: Option<String> = None;
    let body = text
        .strip_suffix('\n')
        .ok_or("output must end with a newline")?;
    for (number, line) in body.split('\n').enumerate() {
        let fail = |problem: String| format!("line {}: {problem}: {line:?}", number + 1);
        let mut enter_family = |family: &str| -> Result<(), String> {
            if current_family.as_deref() != Some(family) {
                if let Some(previous) = current_family.take() {
                    finished_families.insert(previous);
                }
                if finished_families.contains(family) {
                    return Err(format!("family {family} is not contiguous"));
                }
                current_family = Some(family.to_string());
            }
            Ok(())
        };
        if let Some(help) = line.strip_prefix("# HELP ") {
            let (name, text) = help
                .split_once(' ')
                .ok_or_else(|| fail("HELP without text".into()))?;
            if !is_metric_name(name) || text.is_empty() {
                return Err(fail("bad HELP".into()));
            }
            enter_family(name).map_err(&fail)?;
            if !helped.insert(name.to_string()) || exposition.types.contains_key(name) {
                return Err(fail("HELP repeated or after TYPE".into()));
            }
        } else if let Some(kind) = line.strip_prefix("# TYPE ") {
            let (name, kind) = kind
                .split_once(' ')
                .ok_or_else(|| fail("TYPE without kind".into()))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(fail(format!("unknown type {kind}")));
            }
            enter_family(name).map_err(&fail)?;
            if !helped.contains(name) {
                return Err(fail("TYPE before HELP".into()));
            }
            if exposition
                .types
                .insert(name.to_string(), kind.to_string())
                .is_some()
            {
                return Err(fail("TYPE repeated".into()));
            }
        } else if line.starts_with('#') || line.is_empty() {
            return Err(fail("unexpected comment or empty line".into()));
        } else {
            let name_end = line
                .find(['{', ' '])
                .ok_or_else(|| fail("no value".into()))?;
            let name = &line[..name_end];
            if !is_metric_name(name) {
                return Err(fail("bad metric name".into()));
            }
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end..]).map_err(&fail)?
            } else {
                (Vec::new(), &line[name_end..])
            };
            let value_text = rest
                .strip_prefix(' ')
                .ok_or_else(|| fail("no space before value".into()))?;
            if value_text.contains(' ') {
                return Err(fail("timestamps or extra fields are not expected".into()));
            }
            let value = parse_value(value_text).map_err(&fail)?;
            let family = family_of(name, &exposition.types);
            if current_family.as_deref() != Some(family.as_str()) {
                return Err(fail(format!(
                    "sample outside its family {family} (no HELP/TYPE?)"
                )));
            }
            if !exposition.types.contains_key(&family) {
                return Err(fail("sample before TYPE".into()));
            }
            exposition.samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
    }
    let mut seen = HashSet::new();
    for sample in &exposition.samples {
        let mut key = sample.labels.clone();
        key.sort();
        if !seen.insert((sample.name.clone(), format!("{key:?}"))) {
            return Err(format!(
                "duplicate series {} {:?}",
                sample.name, sample.labels
            ));
        }
    }
    check_histograms(&exposition)?;
    Ok(exposition)
}

fn family_of(name: &str, types: &HashMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).map(String::as_str) == Some("histogram") {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

/// Buckets in increasing `le`, cumulative, ending in `+Inf` equal to `_count`; `_sum` there.
fn check_histograms(exposition: &Exposition) -> Result<(), String> {
    for (family, kind) in &exposition.types {
        if kind != "histogram" {
            continue;
        }
        let of = |suffix: &str| -> Vec<&Sample> {
            let name = format!("{family}{suffix}");
            exposition
                .samples
                .iter()
                .filter(|s| s.name == name)
                .collect()
        };
        let buckets = of("_bucket");
        let (sums, counts) = (of("_sum"), of("_count"));
        if sums.len() != 1 || counts.len() != 1 {
            return Err(format!("{family}: need one _sum and one _count"));
        }
        let mut previous: Option<(f64, f64)> = None;
        for bucket in &buckets {
            let le = parse_value(
                bucket
                    .label("le")
                    .ok_or(format!("{family}: bucket without le"))?,
            )?;
            if let Some((previous_le, previous_count)) = previous {
                if le <= previous_le {
                    return Err(format!("{family}: le not increasing at {le}"));
                }
                if bucket.value < previous_count {
                    return Err(format!("{family}: buckets not cumulative at le={le}"));
                }
            }
            previous = Some((le, bucket.value));
        }
        match previous {
            Some((le, count)) if le == f64::INFINITY => {
                if count != counts[0].value {
                    return Err(format!(
                        "{family}: +Inf {count} != _count {}",
                        counts[0].value
                    ));
                }
            }
            _ => return Err(format!("{family}: last bucket is not +Inf")),
        }
    }
    Ok(())
}

pub fn value_of(exposition: &Exposition, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition
        .samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.label(k) == Some(v))
        })
        .map(|s| s.value)
}
