//! Query parameters: `wait` and the flags (`progress`, `keep`), and the percent-decoding
//! of values (the list's filters are in `list_filter`).

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
    let Some(raw) = param(url, "wait") else {
        return Ok(Duration::ZERO);
    };
    // `1e%2B2` is how a client library escapes `1e+2`; `1e+2` typed into curl keeps its `+`
    // (a space is never part of a number).
    let value = decode(raw, false).unwrap_or_default();
    let value = value.as_str();
    let invalid = || {
        ApiError::invalid(
            "invalid-wait",
            format!(
                "wait must be a number of seconds from 0 to {} (longer is shortened to it), got {:?}",
                MAX_WAIT.as_secs(),
                raw.chars().take(40).collect::<String>()
            ),
        )
    };
    // A number as JSON writes it (`0.5`, `1e-3`, `1E2`, `-0`): what a client generated from
    // the document sends. Rust's parser also takes `inf` and `nan`, which no JSON number is.
    if value.is_empty()
        || !value
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return Err(invalid());
    }
    let seconds: f64 = value.parse().map_err(|_| invalid())?;
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(invalid());
    }
    if seconds == 0.0 {
        return Ok(Duration::ZERO);
    }
    Ok(Duration::from_secs_f64(seconds.min(MAX_WAIT.as_secs_f64())))
}

/// Why a query value could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    NotUtf8,
}

/// `%XX` to its byte and, when `plus_is_space` (form encoding, as `curl --data-urlencode -G`
/// and browsers send it), `+` to a space; the result must be UTF-8.
pub fn decode(raw: &str, plus_is_space: bool) -> Result<String, DecodeError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => {
                let digit = |at: usize| bytes.get(at).copied().and_then(crate::sys::hex::digit);
                let (Some(high), Some(low)) = (digit(i + 1), digit(i + 2)) else {
                    return Err(DecodeError::BadEscape);
                };
                out.push(high << 4 | low);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| DecodeError::NotUtf8)
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
    fn decodes_values() {
        assert_eq!(decode("a%3Db+c", true), Ok("a=b c".into()));
        assert_eq!(decode("1e+3%2B", false), Ok("1e+3+".into()));
        assert_eq!(decode("%C3%A9", true), Ok("é".into()));
        assert_eq!(decode("%e", true), Err(DecodeError::BadEscape));
        assert_eq!(decode("%zz", true), Err(DecodeError::BadEscape));
        assert_eq!(decode("%ff", true), Err(DecodeError::NotUtf8));
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
        // JSON's number forms, as a client generated from the OpenAPI document writes them.
        assert_eq!(wait("/vms/x?wait=1e-3"), Ok(Duration::from_millis(1)));
        assert_eq!(wait("/vms/x?wait=1E2"), Ok(MAX_WAIT));
        assert_eq!(wait("/vms/x?wait=2.5e%2B1"), Ok(Duration::from_secs(25)));
        assert_eq!(wait("/vms/x?wait=2.5e+1"), Ok(Duration::from_secs(25)));
        assert_eq!(wait("/vms/x?wait=1.7976931348623157e+308"), Ok(MAX_WAIT));
        assert_eq!(wait("/vms/x?wait=-0"), Ok(Duration::ZERO));
        assert_eq!(wait("/vms/x?wait=5e-324"), Ok(Duration::ZERO));
        for bad in [
            "?wait=",
            "?wait",
            "?wait=-1",
            "?wait=-1e-3",
            "?wait=1e999",
            "?wait=inf",
            "?wait=NaN",
            "?wait=abc",
            "?wait=1.2.3",
            "?wait=1e",
            "?wait=%zz",
            "?wait=1%20",
        ] {
            let err = wait(&format!("/vms/x{bad}")).unwrap_err();
            assert_eq!(err.code(), "invalid-wait", "{bad}");
        }
    }
}
