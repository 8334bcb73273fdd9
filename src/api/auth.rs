//! Optional bearer token: with none configured every request passes (a trusted build network,
//! as the original server); with one, a request must send `Authorization: Bearer <token>`.

use crate::callback::signing::constant_time_eq;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};

/// The `WWW-Authenticate` value a 401 answer carries (RFC 6750), so that clients know which
/// scheme to use.
pub const CHALLENGE: &str = "Bearer realm=\"osx-builder\"";

#[derive(Clone)]
pub struct Auth {
    /// SHA-256 of the token, not the token: comparing two fixed-length digests takes the same
    /// time whatever the length of the token a client sends, so timing reveals neither the
    /// token's bytes nor its length.
    expected_digest: Option<[u8; 32]>,
}

// By hand, so that a stray `{:?}` in a log line never prints anything derived from the token.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.enabled())
            .finish()
    }
}

#[derive(Debug)]
pub enum AuthError {
    /// Both `--token` and `--token-file` were given: which one wins would be a guess.
    TokenAndFile,
    /// The token setting is empty or only whitespace.
    EmptyToken,
    /// The token holds a character that cannot travel in an HTTP header as one bearer token.
    InvalidToken { source_name: String },
    TokenFileUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The token file's first line is empty.
    TokenFileEmpty { path: PathBuf },
    /// The request has no `Authorization` header.
    MissingCredentials,
    /// The `Authorization` header is not `Bearer <token>`.
    MalformedCredentials,
    /// A bearer token was sent, but not the configured one.
    WrongToken,
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::TokenAndFile => "token-and-token-file",
            AuthError::EmptyToken => "token-empty",
            AuthError::InvalidToken { .. } => "token-invalid",
            AuthError::TokenFileUnreadable { .. } => "token-file-unreadable",
            AuthError::TokenFileEmpty { .. } => "token-file-empty",
            AuthError::MissingCredentials => "unauthorized",
            AuthError::MalformedCredentials => "unauthorized-malformed",
            AuthError::WrongToken => "unauthorized-wrong-token",
        }
    }

    /// True for errors in a request (answer 401), false for errors in the settings (refuse
    /// to start).
    pub fn is_request_error(&self) -> bool {
        matches!(
            self,
            AuthError::MissingCredentials | AuthError::MalformedCredentials | AuthError::WrongToken
        )
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::TokenAndFile => write!(
                f,
                "both a token (--token / OSX_BUILDER_TOKEN) and a token file (--token-file / \
                 OSX_BUILDER_TOKEN_FILE) are set; keep one"
            ),
            AuthError::EmptyToken => write!(
                f,
                "the token (--token / OSX_BUILDER_TOKEN) is empty; set a token or unset it to \
                 run without authentication"
            ),
            AuthError::InvalidToken { source_name } => write!(
                f,
                "the token from {source_name} contains a space, a control character or a \
                 non-ASCII character; use printable ASCII only (e.g. `openssl rand -hex 32`)"
            ),
            AuthError::TokenFileUnreadable { path, source } => write!(
                f,
                "cannot read the token file {}: {source}; check the path and that this user \
                 may read it",
                path.display()
            ),
            AuthError::TokenFileEmpty { path } => write!(
                f,
                "the token file {} has an empty first line; put the token on its first line",
                path.display()
            ),
            AuthError::MissingCredentials => write!(
                f,
                "this server needs a token: send `Authorization: Bearer <token>`"
            ),
            AuthError::MalformedCredentials => write!(
                f,
                "the Authorization header is not `Bearer <token>`; send \
                 `Authorization: Bearer <token>`"
            ),
            AuthError::WrongToken => write!(
                f,
                "the bearer token is not this server's token; check the token the client uses"
            ),
        }
    }
}

impl std::error::Error for AuthError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuthError::TokenFileUnreadable { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Auth {
    /// No token: every request passes.
    pub fn disabled() -> Self {
        Auth {
            expected_digest: None,
        }
    }

    /// From the settings: a token, or a file whose first line (trimmed) is the token. A file
    /// keeps the token out of `ps` output and launchd plists.
    pub fn from_settings(
        token: Option<String>,
        token_file: Option<PathBuf>,
    ) -> Result<Auth, AuthError> {
        let token = match (token, token_file) {
            (None, None) => return Ok(Auth::disabled()),
            (Some(_), Some(_)) => return Err(AuthError::TokenAndFile),
            (Some(token), None) => {
                let token = token.trim().to_string();
                if token.is_empty() {
                    return Err(AuthError::EmptyToken);
                }
                validate(&token, "the token setting")?;
                token
            }
            (None, Some(path)) => read_token_file(&path)?,
        };
        Ok(Auth {
            expected_digest: Some(Sha256::digest(token.as_bytes()).into()),
        })
    }

    pub fn enabled(&self) -> bool {
        self.expected_digest.is_some()
    }

    /// Checks a request's `Authorization` header (None when absent).
    pub fn check(&self, authorization_header: Option<&str>) -> Result<(), AuthError> {
        let Some(expected) = &self.expected_digest else {
            return Ok(());
        };
        let header = authorization_header.ok_or(AuthError::MissingCredentials)?;
        let presented = bearer_token(header).ok_or(AuthError::MalformedCredentials)?;
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if constant_time_eq(&presented, expected) {
            Ok(())
        } else {
            Err(AuthError::WrongToken)
        }
    }
}

fn read_token_file(path: &Path) -> Result<String, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::TokenFileUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(AuthError::TokenFileEmpty {
            path: path.to_path_buf(),
        });
    }
    validate(&token, &format!("the token file {}", path.display()))?;
    Ok(token)
}

/// A token clients could not send as one header value would lock everyone out silently.
fn validate(token: &str, source_name: &str) -> Result<(), AuthError> {
    if token.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(AuthError::InvalidToken {
            source_name: source_name.to_string(),
        })
    }
}

/// `Bearer <token>`: the scheme is case-insensitive (RFC 7235) and may be followed by more
/// than one space; the token is the rest, which must be one word.
fn bearer_token(header: &str) -> Option<&str> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() || token.contains(char::is_whitespace) {
        return None;
    }
    Some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempFile(PathBuf);

    impl TempFile {
        fn with(tag: &str, contents: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("osx-builder-auth-{tag}-{}", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn with_token(token: &str) -> Auth {
        Auth::from_settings(Some(token.to_string()), None).unwrap()
    }

    #[test]
    fn no_token_lets_everything_through() {
        let auth = Auth::from_settings(None, None).unwrap();
        assert!(!auth.enabled());
        assert!(auth.check(None).is_ok());
        assert!(auth.check(Some("Bearer anything")).is_ok());
        assert!(auth.check(Some("garbage")).is_ok());
    }

    #[test]
    fn the_right_bearer_token_passes() {
        let auth = with_token("abc123");
        assert!(auth.enabled());
        for header in [
            "Bearer abc123",
            "bearer abc123",
            "BEARER abc123",
            "Bearer   abc123",
            " Bearer abc123 ",
        ] {
            assert!(auth.check(Some(header)).is_ok(), "{header:?}");
        }
    }

    #[test]
    fn missing_malformed_and_wrong_tokens_are_refused() {
        let auth = with_token("abc123");
        let code = |header: Option<&str>| auth.check(header).unwrap_err().code();
        assert_eq!(code(None), "unauthorized");
        for header in [
            "",
            "abc123",
            "Basic abc123",
            "Bearer",
            "Bearer ",
            "Bearerabc123",
            "Bearer abc 123",
            "Token abc123",
        ] {
            assert_eq!(code(Some(header)), "unauthorized-malformed", "{header:?}");
        }
        for header in [
            "Bearer abc12",
            "Bearer abc1234",
            "Bearer ABC123",
            "Bearer xbc123",
            "Bearer abc123abc123",
        ] {
            assert_eq!(code(Some(header)), "unauthorized-wrong-token", "{header:?}");
        }
        assert!(auth
            .check(Some("Bearer abc"))
            .unwrap_err()
            .is_request_error());
    }

    #[test]
    fn the_token_setting_is_trimmed_and_must_not_be_empty() {
        assert!(with_token("  abc123\n")
            .check(Some("Bearer abc123"))
            .is_ok());
        for empty in ["", "   ", "\n"] {
            let err = Auth::from_settings(Some(empty.to_string()), None).unwrap_err();
            assert_eq!(err.code(), "token-empty");
            assert!(!err.is_request_error());
        }
        let err = Auth::from_settings(Some("two words".to_string()), None).unwrap_err();
        assert_eq!(err.code(), "token-invalid");
    }

    #[test]
    fn the_token_file_gives_its_first_line_trimmed() {
        let file = TempFile::with("first-line", "  tok-from-file  \nsecond line ignored\n");
        let auth = Auth::from_settings(None, Some(file.0.clone())).unwrap();
        assert!(auth.check(Some("Bearer tok-from-file")).is_ok());
        assert_eq!(
            auth.check(Some("Bearer second")).unwrap_err().code(),
            "unauthorized-wrong-token"
        );
    }

    #[test]
    fn an_empty_token_file_is_an_error_naming_it() {
        for (tag, contents) in [("empty", ""), ("blank-first", "   \ntoken-on-line-two\n")] {
            let file = TempFile::with(tag, contents);
            let err = Auth::from_settings(None, Some(file.0.clone())).unwrap_err();
            assert_eq!(err.code(), "token-file-empty", "{contents:?}");
            assert!(
                err.to_string().contains(&file.0.display().to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn an_unreadable_token_file_is_an_error_naming_it() {
        let missing =
            std::env::temp_dir().join(format!("osx-builder-auth-missing-{}", std::process::id()));
        let err = Auth::from_settings(None, Some(missing.clone())).unwrap_err();
        assert_eq!(err.code(), "token-file-unreadable");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn token_and_file_together_are_refused() {
        let file = TempFile::with("both", "x\n");
        let err = Auth::from_settings(Some("y".to_string()), Some(file.0.clone())).unwrap_err();
        assert_eq!(err.code(), "token-and-token-file");
    }

    #[test]
    fn debug_output_does_not_reveal_the_token() {
        let auth = with_token("very-secret-token");
        let debug = format!("{auth:?}");
        assert_eq!(debug, "Auth { enabled: true }");
    }
}
