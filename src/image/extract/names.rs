//! Entry names and link targets, checked as text before anything touches the disk.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Why a name cannot be used as a path below the staging folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BadName {
    Empty,
    Absolute,
    ParentDir,
    Nul,
}

impl BadName {
    /// A predicate to complete "the name ..." or "the target ...".
    pub(super) fn reason(self) -> &'static str {
        match self {
            Self::Empty => "is empty",
            Self::Absolute => "is an absolute path",
            Self::ParentDir => "has a `..` component",
            Self::Nul => "contains a NUL byte",
        }
    }
}

/// The relative path an entry name stands for: `.` and empty components dropped, anything
/// that could leave the folder rejected rather than rewritten, so that an archive means
/// exactly what it says or is refused. `Ok(None)` is the folder itself (`./`).
///
/// Zip archives made on Windows sometimes separate with `\`; tar names never do.
pub(super) fn relative_path(
    name: &[u8],
    backslash_separates: bool,
) -> Result<Option<PathBuf>, BadName> {
    if name.is_empty() {
        return Err(BadName::Empty);
    }
    if name.contains(&0) {
        return Err(BadName::Nul);
    }
    let is_separator = |b: &u8| *b == b'/' || (backslash_separates && *b == b'\\');
    if is_separator(&name[0]) {
        return Err(BadName::Absolute);
    }
    let mut path = PathBuf::new();
    for part in name.split(is_separator) {
        match part {
            b"" | b"." => {}
            b".." => return Err(BadName::ParentDir),
            _ => path.push(OsStr::from_bytes(part)),
        }
    }
    Ok((!path.as_os_str().is_empty()).then_some(path))
}

/// Why a symlink's target is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum BadTarget {
    Empty,
    Absolute,
    Nul,
    Escapes,
    ThroughSymlink(PathBuf),
}

impl std::fmt::Display for BadTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("the target is empty"),
            Self::Absolute => f.write_str("the target is an absolute path"),
            Self::Nul => f.write_str("the target contains a NUL byte"),
            Self::Escapes => f.write_str("the target climbs out of the image folder"),
            Self::ThroughSymlink(link) => write!(
                f,
                "the target passes through another symlink (`{}`), so where it lands cannot be \
                 told from its text",
                link.display()
            ),
        }
    }
}

/// Where a symlink at `link` (relative to the staging folder) pointing at `target` lands,
/// walked lexically from the link's folder.
///
/// Lexical walking equals what the kernel does only while no component on the way is itself
/// a symlink (`l1 -> .` makes `l1/..` the folder's parent), so passing through one is refused;
/// `is_symlink` says whether a relative path is a symlink of this archive.
pub(super) fn resolve_symlink(
    link: &Path,
    target: &[u8],
    is_symlink: impl Fn(&Path) -> bool,
) -> Result<PathBuf, BadTarget> {
    if target.is_empty() {
        return Err(BadTarget::Empty);
    }
    if target.contains(&0) {
        return Err(BadTarget::Nul);
    }
    if target[0] == b'/' {
        return Err(BadTarget::Absolute);
    }
    let mut at: PathBuf = link.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut parts = target
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .peekable();
    while let Some(part) = parts.next() {
        if part == b".." {
            if !at.pop() {
                return Err(BadTarget::Escapes);
            }
        } else {
            at.push(OsStr::from_bytes(part));
        }
        if parts.peek().is_some() && is_symlink(&at) {
            return Err(BadTarget::ThroughSymlink(at));
        }
    }
    Ok(at)
}

/// True when `path` names the folder itself or one below it without `..` or a root: a check
/// for paths that came out of `relative_path` or `resolve_symlink`.
#[cfg(test)]
fn is_plain_relative(path: &Path) -> bool {
    path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// The last component, for matching on file names.
pub(super) fn file_name_bytes(path: &Path) -> &[u8] {
    match path.components().next_back() {
        Some(Component::Normal(name)) => name.as_bytes(),
        _ => b"",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(name: &str) -> Result<Option<PathBuf>, BadName> {
        relative_path(name.as_bytes(), false)
    }

    #[test]
    fn plain_names_pass() {
        assert_eq!(rel("a.vmx"), Ok(Some(PathBuf::from("a.vmx"))));
        assert_eq!(rel("./vm/a.vmx"), Ok(Some(PathBuf::from("vm/a.vmx"))));
        assert_eq!(
            rel("vm//disk.vmdk"),
            Ok(Some(PathBuf::from("vm/disk.vmdk")))
        );
        assert_eq!(rel("vm/"), Ok(Some(PathBuf::from("vm"))));
        assert_eq!(rel("..."), Ok(Some(PathBuf::from("..."))));
        assert_eq!(rel("a..b/..c"), Ok(Some(PathBuf::from("a..b/..c"))));
        assert_eq!(rel("./"), Ok(None));
        assert_eq!(rel("."), Ok(None));
    }

    #[test]
    fn escaping_names_are_refused_not_rewritten() {
        assert_eq!(rel("../evil"), Err(BadName::ParentDir));
        assert_eq!(rel("vm/../../evil"), Err(BadName::ParentDir));
        assert_eq!(rel("vm/.."), Err(BadName::ParentDir));
        assert_eq!(rel("/abs/evil"), Err(BadName::Absolute));
        assert_eq!(rel("//abs"), Err(BadName::Absolute));
        assert_eq!(rel(""), Err(BadName::Empty));
        assert_eq!(relative_path(b"a\0b", false), Err(BadName::Nul));
    }

    #[test]
    fn backslashes_separate_only_when_asked() {
        assert_eq!(
            relative_path(b"..\\evil", false),
            Ok(Some(PathBuf::from("..\\evil")))
        );
        assert_eq!(relative_path(b"..\\evil", true), Err(BadName::ParentDir));
        assert_eq!(relative_path(b"\\evil", true), Err(BadName::Absolute));
        assert_eq!(
            relative_path(b"vm\\a.vmx", true),
            Ok(Some(PathBuf::from("vm/a.vmx")))
        );
    }

    fn resolve(link: &str, target: &str) -> Result<PathBuf, BadTarget> {
        resolve_symlink(Path::new(link), target.as_bytes(), |p| p == Path::new("l1"))
    }

    #[test]
    fn targets_inside_resolve() {
        assert_eq!(
            resolve("vm/cur", "disk.vmdk"),
            Ok(PathBuf::from("vm/disk.vmdk"))
        );
        assert_eq!(
            resolve("vm/cur", "../other/x"),
            Ok(PathBuf::from("other/x"))
        );
        assert_eq!(resolve("vm/cur", ".."), Ok(PathBuf::new()));
        assert_eq!(resolve("top", "."), Ok(PathBuf::new()));
        assert_eq!(
            resolve("top", "l1"),
            Ok(PathBuf::from("l1")),
            "a link to a link is fine"
        );
    }

    #[test]
    fn escaping_targets_are_refused() {
        assert_eq!(resolve("link", "../../.."), Err(BadTarget::Escapes));
        assert_eq!(resolve("vm/link", "../../x"), Err(BadTarget::Escapes));
        assert_eq!(resolve("link", "/etc"), Err(BadTarget::Absolute));
        assert_eq!(resolve("link", ""), Err(BadTarget::Empty));
        assert_eq!(
            resolve_symlink(Path::new("l"), b"a\0", |_| false),
            Err(BadTarget::Nul)
        );
    }

    #[test]
    fn walking_through_a_symlink_is_refused() {
        assert_eq!(
            resolve("l2", "l1/../x"),
            Err(BadTarget::ThroughSymlink(PathBuf::from("l1")))
        );
        assert_eq!(
            resolve("l2", "l1/x"),
            Err(BadTarget::ThroughSymlink(PathBuf::from("l1")))
        );
    }

    #[test]
    fn resolved_paths_are_plain() {
        for (link, target) in [("a/b", "../c"), ("a", "b/./c"), ("a/b/c", "../../d/e")] {
            let resolved = resolve(link, target).expect("inside");
            assert!(is_plain_relative(&resolved), "{resolved:?}");
        }
    }

    #[test]
    fn file_names() {
        assert_eq!(file_name_bytes(Path::new("vm/a.vmx")), b"a.vmx");
        assert_eq!(file_name_bytes(Path::new("")), b"");
    }
}
