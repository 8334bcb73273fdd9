//! The bytes of an image archive, from an http(s):// URL or a local file, as one `Read` that
//! resumes a dropped connection with a Range request where it left off.
//!
//! Resuming inside the reader keeps everything above it (hasher, decompressor, tar reader)
//! unaware that the connection changed: they see one continuous stream. What cannot be
//! hidden (a server that ignores Range, a stall, resumes used up) ends the stream with an
//! error and is kept in `Body::failure` for the pipeline to act on, whatever the layers above
//! made of the io error on its way up.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::time::Duration;

use crate::image::error::ImageError;

/// Where an image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Http(String),
    File(PathBuf),
    /// An OCI image, pulled by the hypervisor (tart), never by this server.
    Oci(crate::image::oci_reference::OciReference),
}

impl Location {
    /// `http://...`, `file:///absolute/path` or a plain absolute path.
    pub fn parse(url: &str) -> Result<Self, ImageError> {
        let unsupported = |reason: &str| ImageError::UnsupportedUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if starts_with_ignore_case(url, "http://") || starts_with_ignore_case(url, "https://") {
            return Ok(Self::Http(url.to_owned()));
        }
        if starts_with_ignore_case(url, "file://") {
            let rest = &url["file://".len()..];
            // RFC 8089 allows an empty host or `localhost`; anything else names another
            // machine, which a local read cannot honour.
            let path = if rest.starts_with('/') {
                rest
            } else if starts_with_ignore_case(rest, "localhost/") {
                &rest["localhost".len()..]
            } else {
                return Err(unsupported(
                    "a file URL must name an absolute local path, as in file:///images/macos.tar.gz",
                ));
            };
            return Ok(Self::File(PathBuf::from(percent_decode(path))));
        }
        if url.starts_with('/') {
            return Ok(Self::File(PathBuf::from(url)));
        }
        if starts_with_ignore_case(url, "oci://") {
            return crate::image::oci_reference::OciReference::parse(url)
                .map(Self::Oci)
                .map_err(|why| unsupported(&format!("the OCI reference is not valid: {why}")));
        }
        Err(unsupported(
            "only http://, https://, file:// and absolute paths are supported",
        ))
    }
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// `%20` and friends in a file URL; a `%` not followed by two hex digits is kept as is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (
                crate::sys::hex::digit(bytes[i + 1]),
                crate::sys::hex::digit(bytes[i + 2]),
            ) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the HTTP client needs to know; one per cache, shared by its downloads.
#[derive(Clone, Debug)]
pub struct Fetcher {
    agent: ureq::Agent,
    read_timeout: Duration,
    max_resumes: u32,
}

/// Redirects followed for one request; a mirror or a presigned-URL service needs one or
/// two, a loop is cut short.
const MAX_REDIRECTS: usize = 5;

impl Fetcher {
    pub fn new(
        connect_timeout: Duration,
        read_timeout: Duration,
        max_resumes: u32,
        trust: &crate::tls::ClientTrust,
    ) -> Self {
        let config = ureq::Agent::config_builder()
            // Followed by `get`, which refuses a downgrade to http or another scheme.
            .max_redirects(0)
            .timeout_connect(Some(connect_timeout))
            // Name lookups block without a bound of their own.
            .timeout_resolve(Some(connect_timeout))
            // Per read, not for the whole body: a 60 GB image may take hours, but no byte
            // for this long means the transfer is stuck.
            .timeout_per_read(Some(read_timeout))
            // Statuses are reported by us, with the URL.
            .http_status_as_error(false)
            .user_agent(concat!("osx-builder/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = trust.agent(config);
        Self {
            agent,
            read_timeout,
            max_resumes,
        }
    }

    /// Starts reading the archive from its first byte.
    pub fn open(&self, location: &Location, url: &str) -> Result<Body, ImageError> {
        match location {
            Location::Oci(_) => Err(ImageError::UnsupportedUrl {
                url: url.to_owned(),
                reason: "an OCI image is pulled by the hypervisor, not downloaded".to_owned(),
            }),
            Location::File(path) => {
                let unreadable = |source: io::Error| {
                    crate::warn!("local image {}: {source}", path.display());
                    ImageError::FileUnreadable {
                        url: url.to_owned(),
                        path: path.clone(),
                        source: source.into(),
                    }
                };
                let file = File::open(path).map_err(unreadable)?;
                let meta = file.metadata().map_err(unreadable)?;
                if !meta.is_file() {
                    return Err(unreadable(io::Error::other("not a regular file")));
                }
                Ok(Body {
                    url: url.to_owned(),
                    source: Source::File {
                        file,
                        path: path.clone(),
                    },
                    position: 0,
                    total: Some(meta.len()),
                    resumes: 0,
                    failure: None,
                })
            }
            Location::Http(http_url) => {
                let response = self.get(http_url, None)?;
                let status = response.status().as_u16();
                if status != 200 {
                    return Err(ImageError::HttpStatus {
                        url: url.to_owned(),
                        status,
                    });
                }
                let total = header(&response, "content-length").and_then(|v| v.parse().ok());
                let validator = validator(&response);
                Ok(Body {
                    url: url.to_owned(),
                    source: Source::Http {
                        fetcher: self.clone(),
                        url: http_url.clone(),
                        reader: Some(Box::new(response.into_body().into_reader())),
                        validator,
                    },
                    position: 0,
                    total,
                    resumes: 0,
                    failure: None,
                })
            }
        }
    }

    /// One GET; `range` asks for the bytes from an offset, conditional on the archive being
    /// the same one (`If-Range`) so that a changed file is never stitched onto the old one.
    fn get(
        &self,
        url: &str,
        range: Option<(u64, &Option<(&'static str, String)>)>,
    ) -> Result<ureq::http::Response<ureq::Body>, ImageError> {
        let mut current = url.to_owned();
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.agent.get(&current);
            if let Some((from, validator)) = range {
                request = request.header("Range", format!("bytes={from}-"));
                if let Some((_, value)) = validator {
                    request = request.header("If-Range", value.as_str());
                }
            }
            let response = request.call().map_err(|e| self.call_error(&current, e))?;
            if !response.status().is_redirection() || response.status().as_u16() == 304 {
                return Ok(response);
            }
            let Some(location) = header(&response, "location") else {
                return Ok(response);
            };
            current = redirect_target(&current, &location).map_err(|reason| {
                ImageError::UnsupportedUrl {
                    url: url.to_owned(),
                    reason,
                }
            })?;
        }
        Err(ImageError::UnsupportedUrl {
            url: url.to_owned(),
            reason: format!("it redirects more than {MAX_REDIRECTS} times"),
        })
    }

    fn call_error(&self, url: &str, e: ureq::Error) -> ImageError {
        if let Some(reason) = crate::tls::failure_reason(&e) {
            return ImageError::Tls {
                url: url.to_owned(),
                host: host_of(url).to_owned(),
                reason,
            };
        }
        match e {
            ureq::Error::Timeout(ureq::Timeout::Connect) => ImageError::Connection {
                url: url.to_owned(),
                detail: "no connection within the connect timeout".to_owned(),
            },
            ureq::Error::Timeout(_) => ImageError::Timeout {
                url: url.to_owned(),
                after: self.read_timeout,
                received: 0,
            },
            ureq::Error::HostNotFound => ImageError::Connection {
                url: url.to_owned(),
                detail: "the host name does not resolve".to_owned(),
            },
            ureq::Error::BadUri(detail) => ImageError::UnsupportedUrl {
                url: url.to_owned(),
                reason: format!("the URL is malformed ({detail})"),
            },
            other => ImageError::Connection {
                url: url.to_owned(),
                detail: other.to_string(),
            },
        }
    }
}

/// Where a redirect from `from` to `location` leads, if it may be followed: http(s) only,
/// and never from https down to http (the image would then travel in the clear, and
/// anyone on the path could swap it for another of the same checksum type but not digest,
/// or stall it).
pub fn redirect_target(from: &str, location: &str) -> Result<String, String> {
    let location = location.trim();
    let (scheme, rest) = from.split_once("://").unwrap_or(("http", from));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let origin = format!("{scheme}://{}", &rest[..authority_end]);
    let target = if location.contains("://") {
        location.to_owned()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{origin}{location}")
    } else if location.contains(':') && !location.contains('/') || has_scheme(location) {
        location.to_owned()
    } else {
        let path = &rest[authority_end..];
        let path = path.split(['?', '#']).next().unwrap_or("");
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        let dir = if dir.is_empty() { "/" } else { dir };
        format!("{origin}{dir}{location}")
    };
    let https = starts_with_ignore_case(&target, "https://");
    if !https && !starts_with_ignore_case(&target, "http://") {
        return Err(format!(
            "it redirects to {target}, and only http:// and https:// redirects are followed"
        ));
    }
    if !https && starts_with_ignore_case(from, "https://") {
        return Err(format!(
            "it redirects from https to plain http ({target}), which is refused; serve the \
             image over https or give its http:// URL in the create request"
        ));
    }
    Ok(target)
}

fn has_scheme(location: &str) -> bool {
    match location.split_once(':') {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        }
        None => false,
    }
}

/// The host of an http(s) URL, without user, port or path.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(v6) = host_port.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    host_port.split(':').next().unwrap_or(host_port)
}

fn header(response: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
}

/// The strongest identity of the archive the server gave: a strong ETag, else its
/// Last-Modified date (weak ETags are not allowed in If-Range).
fn validator(response: &ureq::http::Response<ureq::Body>) -> Option<(&'static str, String)> {
    match header(response, "etag") {
        Some(etag) if !etag.starts_with("W/") => Some(("etag", etag)),
        _ => header(response, "last-modified").map(|date| ("last-modified", date)),
    }
}

/// Why the stream of archive bytes ended early.
#[derive(Clone, Debug)]
pub enum Failure {
    /// Cannot go on; report this.
    Fatal(ImageError),
    /// The connection dropped and the server answered the Range request with the whole
    /// archive (or a different one): the bytes already consumed cannot be continued, so the
    /// download has to start again from scratch.
    RangeIgnored { at: u64, status: u16 },
}

enum Source {
    File {
        file: File,
        path: PathBuf,
    },
    Http {
        fetcher: Fetcher,
        url: String,
        reader: Option<Box<ureq::BodyReader<'static>>>,
        validator: Option<(&'static str, String)>,
    },
}

/// The archive's bytes in order, however many connections that took.
pub struct Body {
    url: String,
    source: Source,
    position: u64,
    total: Option<u64>,
    resumes: u32,
    failure: Option<Failure>,
}

impl Body {
    /// The archive's size, when the server said.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// Bytes delivered so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// How many times a dropped connection was resumed.
    pub fn resumes(&self) -> u32 {
        self.resumes
    }

    /// Why the stream failed, if it did; sticky, so later reads fail the same way.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    fn fail(&mut self, failure: Failure) -> io::Error {
        let text = match &failure {
            Failure::Fatal(e) => e.to_string(),
            Failure::RangeIgnored { at, status } => {
                format!("the server ignored a Range request at byte {at} (HTTP {status})")
            }
        };
        self.failure = Some(failure);
        io::Error::other(text)
    }

    /// Reconnects after a drop at `self.position`, trying until the resumes allowed run out.
    fn resume(&mut self, why: String) -> Result<(), io::Error> {
        let Source::Http {
            fetcher,
            url,
            reader,
            validator,
        } = &mut self.source
        else {
            return Err(io::Error::other("a local file cannot resume"));
        };
        *reader = None;
        let mut last_error = why;
        let mut failed_reconnects: u64 = 0;
        loop {
            if self.resumes >= fetcher.max_resumes {
                let fatal = ImageError::ResumesExhausted {
                    url: self.url.clone(),
                    received: self.position,
                    total: self.total,
                    resumes: self.resumes,
                    detail: last_error,
                };
                return Err(self.fail(Failure::Fatal(fatal)));
            }
            // The first reconnect is immediate (a dropped connection is usually a one-off);
            // a server that refuses new connections gets a growing pause.
            if failed_reconnects > 0 {
                std::thread::sleep(Duration::from_secs(failed_reconnects.min(10)));
            }
            self.resumes += 1;
            crate::warn!(
                "image download from {} dropped at byte {} of {} ({last_error}); resuming \
                 with a Range request ({} of {})",
                self.url,
                self.position,
                self.total.map_or_else(|| "?".to_owned(), |t| t.to_string()),
                self.resumes,
                fetcher.max_resumes
            );
            let response = match fetcher.get(url, Some((self.position, validator))) {
                Ok(response) => response,
                Err(ImageError::Connection { detail, .. }) => {
                    last_error = detail;
                    failed_reconnects += 1;
                    continue;
                }
                Err(ImageError::Timeout { after, .. }) => {
                    let stall = ImageError::Timeout {
                        url: self.url.clone(),
                        after,
                        received: self.position,
                    };
                    return Err(self.fail(Failure::Fatal(stall)));
                }
                Err(other) => return Err(self.fail(Failure::Fatal(other))),
            };
            let status = response.status().as_u16();
            match status {
                206 => {
                    let range = header(&response, "content-range");
                    if range.as_deref().and_then(range_start) != Some(self.position) {
                        let at = self.position;
                        return Err(self.fail(Failure::RangeIgnored { at, status }));
                    }
                    *reader = Some(Box::new(response.into_body().into_reader()));
                    return Ok(());
                }
                200 => {
                    let at = self.position;
                    return Err(self.fail(Failure::RangeIgnored { at, status }));
                }
                _ => {
                    let fatal = ImageError::HttpStatus {
                        url: self.url.clone(),
                        status,
                    };
                    return Err(self.fail(Failure::Fatal(fatal)));
                }
            }
        }
    }
}

/// The first byte of `bytes <first>-<last>/<total>`.
fn range_start(content_range: &str) -> Option<u64> {
    let spec = content_range.trim().strip_prefix("bytes")?.trim_start();
    let (first, _) = spec.split_once('-')?;
    first.trim().parse().ok()
}

/// A read error that means the transfer is stuck rather than cut.
fn is_stall(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::TimedOut {
        return true;
    }
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<ureq::Error>())
    {
        Some(ureq::Error::Timeout(_)) => true,
        Some(ureq::Error::Io(inner)) => inner.kind() == io::ErrorKind::TimedOut,
        _ => false,
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(failure) = &self.failure {
            return Err(io::Error::other(match failure {
                Failure::Fatal(e) => e.to_string(),
                Failure::RangeIgnored { .. } => "the download must restart".to_owned(),
            }));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let result = match &mut self.source {
                Source::File { file, path } => match file.read(buf) {
                    Err(e) if e.kind() != io::ErrorKind::Interrupted => {
                        let fatal = ImageError::FileUnreadable {
                            url: self.url.clone(),
                            path: path.clone(),
                            source: e.into(),
                        };
                        return Err(self.fail(Failure::Fatal(fatal)));
                    }
                    other => other,
                },
                Source::Http { reader, .. } => match reader {
                    Some(reader) => reader.read(buf),
                    None => Err(io::Error::new(io::ErrorKind::NotConnected, "not connected")),
                },
            };
            match result {
                Ok(0) => match self.total {
                    Some(total)
                        if self.position < total && matches!(self.source, Source::Http { .. }) =>
                    {
                        self.resume("the server closed the connection early".to_owned())?;
                    }
                    _ => return Ok(0),
                },
                Ok(n) => {
                    self.position += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_stall(&e) => {
                    let Source::Http { fetcher, .. } = &self.source else {
                        return Err(e);
                    };
                    let stall = ImageError::Timeout {
                        url: self.url.clone(),
                        after: fetcher.read_timeout,
                        received: self.position,
                    };
                    return Err(self.fail(Failure::Fatal(stall)));
                }
                Err(e) => self.resume(e.to_string())?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("http://mirror:8080/a.tar.gz").unwrap(),
            Location::Http("http://mirror:8080/a.tar.gz".into())
        );
        assert_eq!(
            Location::parse("HTTP://mirror/a").unwrap(),
            Location::Http("HTTP://mirror/a".into())
        );
        assert_eq!(
            Location::parse("file:///images/mac%20os.tar").unwrap(),
            Location::File("/images/mac os.tar".into())
        );
        assert_eq!(
            Location::parse("file://localhost/images/a.zip").unwrap(),
            Location::File("/images/a.zip".into())
        );
        assert_eq!(
            Location::parse("/images/a.zip").unwrap(),
            Location::File("/images/a.zip".into())
        );
        assert_eq!(
            Location::parse("https://mirror/a").unwrap(),
            Location::Http("https://mirror/a".into())
        );
        for bad in [
            "file://otherhost/a",
            "file:relative",
            "ftp://x/a",
            "relative/path",
            "",
        ] {
            let e = Location::parse(bad).unwrap_err();
            assert_eq!(e.code(), "image-url-unsupported", "{bad}");
        }
    }

    #[test]
    fn redirects_stay_on_http_and_never_downgrade() {
        let ok = |from: &str, to: &str| redirect_target(from, to).unwrap();
        assert_eq!(ok("https://a/x/y.tar", "/z.tar"), "https://a/z.tar");
        assert_eq!(
            ok("https://a:8443/x/y.tar", "z.tar"),
            "https://a:8443/x/z.tar"
        );
        assert_eq!(ok("https://a/y.tar?q=1", "//b/c.tar"), "https://b/c.tar");
        assert_eq!(ok("http://a/y", "https://b/c"), "https://b/c");
        assert_eq!(ok("http://a/y", "http://b/c"), "http://b/c");
        for (from, to, needle) in [
            ("https://a/y", "http://b/c", "from https to plain http"),
            ("https://a/y", "HTTP://b/c", "from https to plain http"),
            (
                "http://a/y",
                "file:///etc/passwd",
                "only http:// and https://",
            ),
            ("https://a/y", "ftp://b/c", "only http:// and https://"),
            (
                "https://a/y",
                "javascript:alert(1)",
                "only http:// and https://",
            ),
        ] {
            let err = redirect_target(from, to).unwrap_err();
            assert!(err.contains(needle), "{from} -> {to}: {err}");
        }
        assert_eq!(
            host_of("https://user@mirror.example:8443/a"),
            "mirror.example"
        );
        assert_eq!(host_of("https://[::1]:8443/a"), "::1");
    }

    #[test]
    fn percent_decoding_keeps_stray_percents() {
        assert_eq!(percent_decode("/a%2Fb%zz%4"), "/a/b%zz%4");
        assert_eq!(percent_decode("/100%"), "/100%");
        assert_eq!(percent_decode("/%41"), "/A");
    }

    #[test]
    fn content_range_start() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes 0-0/*"), Some(0));
        assert_eq!(range_start("bytes */200"), None);
        assert_eq!(range_start("items 1-2/3"), None);
    }
}
