//! Query parameters: `wait` and `progress`, whose values need no percent-decoding (the
//! list's filters are in `list_filter`).

use std::time::Duration;

use super::error::ApiError;
use crate::service::long_poll::MAX_WAIT;

/// The raw value of `name` in the URL's query, if present.
pub fn param<'u>(url: &'u str, name: &str) -> Option<&'u str> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or("");
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// `?wait=SECONDS` (decimals allowed); longer than [`MAX_WAIT`] is shortened to it; absent
/// is zero (no wait).
pub fn wait(url: &str) -> Result<Duration, ApiError> {
    let Some(value) = param(url, "wait") else {
        return Ok(Duration::ZERO);
    };
    let invalid = || {
        ApiError::invalid(
            "invalid-wait",
            format!(
                "wait must be a number of seconds from 0 to {} (longer is shortened to it), got {:?}",
                MAX_WAIT.as_secs(),
                value.chars().take(40).collect::<String>()
            ),
        )
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(invalid());
    }
    let seconds: f64 = value.parse().map_err(|_| invalid())?;
    if !seconds.is_finite() {
        return Err(invalid());
    }
    Ok(Duration::from_secs_f64(seconds.min(MAX_WAIT.as_secs_f64())))
}

/// `?name=true|false` (also `1`, `0`, or the bare name for true); absent is false.
pub fn flag(url: &str, name: &str) -> Result<bool, ApiError> {
    flag_or(url, name, "invalid-query")
}

/// As [`flag`], refused with `code`.
pub fn flag_or(url: &str, name: &str, code: &'static str) -> Result<bool, ApiError> {
    match param(url, name) {
        None => Ok(false),
        Some("" | "true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(ApiError::invalid(
            code,
            format!(
                "{name} must be true or false, got {:?}",
                other.chars().take(40).collect::<String>()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_flags() {
        assert_eq!(flag("/vms/x?wait=5", "progress"), Ok(false));
        for on in ["?progress", "?progress=true", "?wait=1&progress=1"] {
            assert_eq!(flag(&format!("/vms/x{on}"), "progress"), Ok(true), "{on}");
        }
        assert_eq!(flag("/vms/x?progress=0", "progress"), Ok(false));
        let err = flag("/vms/x?progress=yes", "progress").unwrap_err();
        assert_eq!(err.code(), "invalid-query");
        assert!(err.message().contains("progress"), "{}", err.message());
        assert_eq!(flag_or("/vms?keep=1", "keep", "invalid-keep"), Ok(true));
        let err = flag_or("/vms?keep=yes", "keep", "invalid-keep").unwrap_err();
        assert_eq!(err.code(), "invalid-keep");
    }

    #[test]
    fn reads_wait() {
        assert_eq!(wait("/vms/x"), Ok(Duration::ZERO));
        assert_eq!(wait("/vms/x?wait=5"), Ok(Duration::from_secs(5)));
        assert_eq!(
            wait("/vms/x?a=1&wait=0.5#f"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(wait("/vms/x?wait=3600"), Ok(MAX_WAIT));
        assert_eq!(wait("/vms/x?waiting=3"), Ok(Duration::ZERO));
        for bad in [
            "?wait=",
            "?wait",
            "?wait=-1",
            "?wait=1e3",
            "?wait=abc",
            "?wait=1.2.3",
        ] {
            let err = wait(&format!("/vms/x{bad}")).unwrap_err();
            assert_eq!(err.code(), "invalid-wait", "{bad}");
        }
    }
}
