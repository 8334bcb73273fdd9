//! An OCI image reference, `oci://REGISTRY/PATH[:TAG][@sha256:DIGEST]`, checked to be a
//! plain registry name.
//!
//! The reference is handed to tart as one argument and names a host it will connect to, so
//! it is held to the OCI distribution grammar: a DNS host (and port), lowercase path
//! components, a tag or a sha256 digest; no credentials (tart has its own: `tart login`, or
//! `TART_REGISTRY_USERNAME`/`_PASSWORD` in the server's environment), no query, nothing a
//! shell or a flag parser could read differently.

const SCHEME: &str = "oci://";
const MAX_REFERENCE_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciReference {
    /// `host[:port]/path`: the repository as tart names it.
    pub repository: String,
    pub tag: Option<String>,
    /// The sha256 digest (hex) the URL pins, when it names one.
    pub digest: Option<String>,
}

impl OciReference {
    /// `oci://host[:port]/path[:tag][@sha256:<hex>]`; the error says what is wrong.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .get(..SCHEME.len())
            .filter(|s| s.eq_ignore_ascii_case(SCHEME))
            .map(|_| &url[SCHEME.len()..])
            .ok_or("it does not start with oci://")?;
        if rest.len() > MAX_REFERENCE_LEN {
            return Err(format!(
                "the reference is longer than {MAX_REFERENCE_LEN} characters"
            ));
        }
        let (host, path) = rest.split_once('/').ok_or(
            "it names no repository: write oci://REGISTRY/PATH[:TAG], as oci://ghcr.io/cirruslabs/macos-sequoia-base:latest",
        )?;
        if host.contains('@') {
            return Err("it holds credentials: never put them in an image URL; log in on the Mac with `tart login REGISTRY` as the server's user, or give TART_REGISTRY_USERNAME and TART_REGISTRY_PASSWORD in the server's environment".to_owned());
        }
        check_host(host)?;
        let (path, digest) = match path.split_once('@') {
            Some((path, digest)) => (path, Some(parse_digest(digest)?)),
            None => (path, None),
        };
        let (path, tag) = match path.rsplit_once(':') {
            Some((path, tag)) => (path, Some(check_tag(tag)?)),
            None => (path, None),
        };
        for component in path.split('/') {
            check_component(component)?;
        }
        Ok(Self {
            repository: format!("{host}/{path}"),
            tag,
            digest,
        })
    }
}

fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "the registry host {host:?} is not a host name: use lowercase letters, digits, dots and dashes (and :PORT)"
        ));
    }
    if let Some(port) = port {
        let valid =
            port.parse::<u16>().is_ok_and(|p| p > 0) && port.bytes().all(|b| b.is_ascii_digit());
        if !valid {
            return Err(format!("the registry port {port:?} is not a port number"));
        }
    }
    Ok(())
}

/// A path component: `[a-z0-9]+` runs joined by `.`, `_`, `__` or dashes.
fn check_component(component: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "the repository path component {component:?} is not valid: use lowercase letters and digits, joined by one '.', '_', '__' or dashes"
        )
    };
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(bad());
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let dashes = separator.bytes().all(|b| b == b'-');
        if !(matches!(separator, "." | "_" | "__") || dashes) {
            return Err(bad());
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<String, String> {
    let first_ok = tag
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    let valid = first_ok
        && tag.len() <= MAX_TAG_LEN
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !valid {
        return Err(format!(
            "the tag {tag:?} is not valid: up to {MAX_TAG_LEN} letters, digits, '_', '.' and '-', not starting with '.' or '-'"
        ));
    }
    Ok(tag.to_owned())
}

fn parse_digest(digest: &str) -> Result<String, String> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .ok_or_else(|| {
            format!("the digest {digest:?} is not sha256: and 64 lowercase hex digits")
        })?;
    Ok(hex.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn registry_names_tags_and_digests() {
        let r = OciReference::parse("oci://ghcr.io/cirruslabs/macos-sequoia-base:latest").unwrap();
        assert_eq!(r.repository, "ghcr.io/cirruslabs/macos-sequoia-base");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.digest, None);
        let r = OciReference::parse(&format!(
            "OCI://registry.local:5000/a/b_c/d__e/f--g@sha256:{HEX}"
        ))
        .unwrap();
        assert_eq!(r.repository, "registry.local:5000/a/b_c/d__e/f--g");
        assert_eq!(r.digest.as_deref(), Some(HEX));
        let r = OciReference::parse(&format!("oci://ghcr.io/org/img:15.1@sha256:{HEX}")).unwrap();
        assert_eq!(
            (r.tag.as_deref(), r.digest.as_deref()),
            (Some("15.1"), Some(HEX))
        );
    }

    #[test]
    fn anything_else_is_refused_saying_why() {
        for (url, why) in [
            ("oci://ghcr.io", "names no repository"),
            ("oci://user:pw@ghcr.io/org/img:1", "credentials"),
            ("oci://token@ghcr.io/org/img", "credentials"),
            ("oci://GHCR.io/org/img", "not a host name"),
            ("oci://-x.io/org/img", "not a host name"),
            ("oci://ghcr.io:99999/org/img", "not a port"),
            ("oci://[::1]/org/img", "not a host name"),
            ("oci://ghcr.io/Org/img", "path component"),
            ("oci://ghcr.io/org/../img", "path component"),
            ("oci://ghcr.io//img", "path component"),
            ("oci://ghcr.io/org/img?x=1", "path component"),
            ("oci://ghcr.io/org/img:-tag", "tag"),
            ("oci://ghcr.io/org/img:a b", "tag"),
            ("oci://ghcr.io/org/img@sha256:abc", "digest"),
            ("oci://ghcr.io/org/img@md5:abc", "digest"),
            ("http://ghcr.io/org/img", "oci://"),
        ] {
            let err = OciReference::parse(url).unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
        }
    }
}
