//! One row of the settings table (its flag, variable, typed default and help line), the
//! error a wrong value gives, and what the parser lends a layer that reads its own rows.
//! Here rather than in `config` so that such a layer (the fleet's settings) and the table
//! that lists its rows do not import each other.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (see --help)", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// One setting: its flag (`--flag`), its environment variable, its default with the kind of
/// value it takes, and the line `--help` prints. The parser, `--help`, the defaults the
/// library's own settings types start from, and (through a test) the README's table all read
/// these rows, so a default is written once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    pub flag: &'static str,
    pub env: &'static str,
    pub default: Typed,
    pub help: &'static str,
}

/// A setting's default, and with it the kind of value the setting takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Typed {
    /// Seconds; the setting may take decimals (`0.5`).
    Seconds(u64),
    /// Bytes; the setting may take units (`10GiB`, `1.5 TB`).
    Bytes(u64),
    /// A whole number.
    Count(u64),
    /// `true` or `false`; the flag alone means true.
    Switch(bool),
    /// Text (an address, a path, a name).
    Text(&'static str),
    /// Text whose default depends on the platform: macOS, and the others (Linux).
    Platform {
        macos: &'static str,
        other: &'static str,
    },
    /// A path below `$HOME` (the path itself when `HOME` is unset).
    Home(&'static str),
    /// Text with no default (a secret or a file); set but empty is refused.
    Unset,
    /// Repeatable; the variable takes a comma-separated list. None by default.
    List,
}

impl Setting {
    /// The default as `--help` shows it and the parser reads it when nothing is given.
    pub fn default_text(&self) -> String {
        match self.default {
            Typed::Seconds(n) | Typed::Count(n) => n.to_string(),
            Typed::Bytes(n) => bytes_text(n),
            Typed::Switch(on) => on.to_string(),
            Typed::Text(text) => text.to_string(),
            Typed::Platform { macos, other } => if cfg!(target_os = "macos") {
                macos
            } else {
                other
            }
            .to_string(),
            Typed::Home(path) => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home)
                    .join(path)
                    .to_string_lossy()
                    .into_owned(),
                None => path.to_string(),
            },
            Typed::Unset | Typed::List => String::new(),
        }
    }

    /// The default of a duration setting; not one is a mistake caught where it is used
    /// in a constant, at compile time.
    pub const fn seconds(&self) -> Duration {
        match self.default {
            Typed::Seconds(n) => Duration::from_secs(n),
            _ => panic!("not a setting in seconds"),
        }
    }

    pub const fn bytes(&self) -> u64 {
        match self.default {
            Typed::Bytes(n) => n,
            _ => panic!("not a setting in bytes"),
        }
    }

    pub const fn count(&self) -> u64 {
        match self.default {
            Typed::Count(n) => n,
            _ => panic!("not a count"),
        }
    }

    /// A platform default; empty is none.
    pub const fn platform(&self) -> Option<&'static str> {
        let text = match self.default {
            Typed::Platform { macos, other } => {
                if cfg!(target_os = "macos") {
                    macos
                } else {
                    other
                }
            }
            _ => panic!("not a platform setting"),
        };
        if text.is_empty() {
            None
        } else {
            Some(text)
        }
    }

    /// How errors name it: `--flag / ENV`.
    pub(super) fn name(&self) -> String {
        format!("--{} / {}", self.flag, self.env)
    }
}

/// Sizes as `--help` shows them: the largest binary unit that divides them (`512GiB`).
fn bytes_text(n: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n != 0 && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// What the config parser lends: a setting's value (given, or its default) with its name,
/// a secret-like setting's value (`None` when unset, an error when set but empty), and a
/// switch.
pub struct Reader<'a> {
    pub value: &'a dyn Fn(&Setting) -> (String, String),
    pub optional: &'a dyn Fn(&Setting) -> Result<Option<String>, ConfigError>,
    pub switch: &'a dyn Fn(&Setting) -> Result<bool, ConfigError>,
}
