//! tart's failures: the text on stderr and the exit code.

pub struct TartError {
    pub code: u8,
    pub text: String,
}

pub const USAGE: &str =
    "USAGE: tart <subcommand>\n\nSee 'tart help <subcommand>' for detailed help.";

impl TartError {
    /// tart's own error, without a prefix, exit 1.
    pub fn one(text: impl Into<String>) -> Self {
        Self {
            code: 1,
            text: text.into(),
        }
    }

    pub fn missing(name: &str) -> Self {
        Self {
            code: 2,
            text: format!("the specified VM \"{name}\" does not exist"),
        }
    }

    pub fn not_running(name: &str) -> Self {
        Self {
            code: 2,
            text: format!("VM \"{name}\" is not running"),
        }
    }

    /// An argument error: `Error:`, a usage block, exit 64.
    pub fn usage(message: &str) -> Self {
        Self {
            code: 64,
            text: format!("Error: {message}\n{USAGE}"),
        }
    }

    /// The simulator's own trouble (its files), exit 1.
    pub fn io(what: &str, path: &std::path::Path, e: std::io::Error) -> Self {
        Self::one(format!("tart-sim: {what} {}: {e}", path.display()))
    }
}
