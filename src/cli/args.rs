//! The client's command line: positionals, `--name value` / `--name=value` options (some
//! repeatable) and `--flag`s, checked against what each command takes. Hand-written: the
//! grammar is this small, and a crate would add more code than it saves.

use std::collections::HashMap;

use super::Failure;

/// What a command accepts besides the options every command has (see [`GLOBAL_VALUES`]).
pub struct Spec {
    pub values: &'static [&'static str],
    pub flags: &'static [&'static str],
}

/// Options every client command takes.
pub const GLOBAL_VALUES: &[&str] = &["server", "token", "token-file", "ca-file"];
pub const GLOBAL_FLAGS: &[&str] = &["json", "help"];

#[derive(Debug, Default)]
pub struct Parsed {
    pub positionals: Vec<String>,
    values: HashMap<String, Vec<String>>,
    flags: Vec<String>,
}

impl Parsed {
    /// The last value given (a later one wins, as with the server's flags).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    pub fn all(&self, name: &str) -> &[String] {
        self.values.get(name).map_or(&[], Vec::as_slice)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    /// A value that must be a whole number.
    pub fn number(&self, name: &str) -> Result<Option<u64>, Failure> {
        self.value(name)
            .map(|v| {
                v.trim().parse().map_err(|_| {
                    Failure::Usage(format!("--{name} must be a whole number, got {v:?}"))
                })
            })
            .transpose()
    }
}

pub fn parse(args: &[String], spec: &Spec) -> Result<Parsed, Failure> {
    let mut parsed = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "-h" {
            parsed.flags.push("help".into());
            continue;
        }
        // `vm list -q | xargs ...`, as `docker ps -q`.
        if arg == "-q" && spec.flags.contains(&"quiet") {
            parsed.flags.push("quiet".into());
            continue;
        }
        // `-f create.json`, as with curl's `-d@create.json` habit of short options.
        let arg = if arg == "-f" { "--file" } else { arg.as_str() };
        let Some(body) = arg.strip_prefix("--").filter(|b| !b.is_empty()) else {
            parsed.positionals.push(arg.to_string());
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (body, None),
        };
        let takes_value = GLOBAL_VALUES.contains(&name) || spec.values.contains(&name);
        let is_flag = GLOBAL_FLAGS.contains(&name) || spec.flags.contains(&name);
        if is_flag {
            if inline.is_some() {
                return Err(Failure::Usage(format!("--{name} takes no value")));
            }
            parsed.flags.push(name.to_string());
        } else if takes_value {
            let value = match inline {
                Some(value) => value,
                None => {
                    let value = args
                        .get(i)
                        .cloned()
                        .ok_or_else(|| Failure::Usage(format!("--{name} needs a value")))?;
                    i += 1;
                    value
                }
            };
            parsed
                .values
                .entry(name.to_string())
                .or_default()
                .push(value);
        } else {
            return Err(Failure::Usage(format!("unknown option --{name}")));
        }
    }
    Ok(parsed)
}

/// `k=v` pairs of a repeatable option, such as `--label team=go`.
pub fn pairs(parsed: &Parsed, name: &str) -> Result<Vec<(String, String)>, Failure> {
    parsed
        .all(name)
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(Failure::Usage(format!(
                "--{name} wants key=value, got {pair:?}"
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const SPEC: Spec = Spec {
        values: &["cpus", "label"],
        flags: &["wait"],
    };

    #[test]
    fn parses_options_anywhere() {
        let p = parse(
            &args(&[
                "--server=http://h:1",
                "ID",
                "--cpus",
                "4",
                "--wait",
                "--label",
                "a=1",
                "--label=b=2",
                "-h",
            ]),
            &SPEC,
        )
        .unwrap();
        assert_eq!(p.positionals, ["ID"]);
        assert_eq!(p.value("server"), Some("http://h:1"));
        assert_eq!(p.number("cpus").unwrap(), Some(4));
        assert!(p.flag("wait") && p.flag("help") && !p.flag("json"));
        assert_eq!(
            pairs(&p, "label").unwrap(),
            [("a".into(), "1".into()), ("b".into(), "2".into())]
        );
    }

    #[test]
    fn refuses_what_the_command_does_not_take() {
        for (list, needle) in [
            (vec!["--nope"], "unknown option --nope"),
            (vec!["--cpus"], "--cpus needs a value"),
            (vec!["--wait=1"], "--wait takes no value"),
        ] {
            match parse(&args(&list), &SPEC) {
                Err(Failure::Usage(m)) => assert!(m.contains(needle), "{m}"),
                other => panic!("{list:?}: {other:?}"),
            }
        }
        let p = parse(&args(&["--cpus", "x", "--label", "novalue"]), &SPEC).unwrap();
        assert!(matches!(p.number("cpus"), Err(Failure::Usage(_))));
        assert!(matches!(pairs(&p, "label"), Err(Failure::Usage(_))));
    }
}
