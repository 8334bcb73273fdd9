//! Splitting a command's arguments: the VMX first, then what the command allows.

use crate::error::SimError;

/// The VMX argument and the rest, or the error vmrun gives for a missing one.
pub fn vmx_and_rest<'a>(
    command: &str,
    args: &'a [String],
) -> Result<(&'a str, &'a [String]), SimError> {
    match args.split_first() {
        Some((vmx, rest)) => Ok((vmx.as_str(), rest)),
        None => Err(SimError::InvalidArguments(format!(
            "'{command}' needs the path of a .vmx file"
        ))),
    }
}

/// An optional single word among `allowed` (e.g. `hard`, `soft`).
pub fn optional_word<'a>(
    command: &str,
    rest: &'a [String],
    allowed: &[&'a str],
) -> Result<Option<&'a str>, SimError> {
    match rest {
        [] => Ok(None),
        [word] => allowed
            .iter()
            .find(|a| **a == word.as_str())
            .copied()
            .map(Some)
            .ok_or_else(|| {
                SimError::InvalidArguments(format!(
                    "'{command}' accepts {} here, not '{word}'",
                    allowed.join(" or ")
                ))
            }),
        _ => Err(too_many(command)),
    }
}

pub fn too_many(command: &str) -> SimError {
    SimError::InvalidArguments(format!("too many arguments for '{command}'"))
}
