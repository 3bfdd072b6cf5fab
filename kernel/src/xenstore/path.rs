//! Xenstore path rules (`docs/misc/xenstore.txt`, "Paths are /-separated..."): which byte
//! strings name a node, how a domain's relative paths become absolute, and the
//! parent/child relations watches and removal use.

use alloc::{format, string::String};

use ferrovisor_abi::xen::{
    xs_wire::{XsErrorCode, XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX},
    DomId,
};

/// The directory under which every domain has its home (`/local/domain/<domid>`), the base
/// of its relative paths.
pub const DOMAIN_DIR: &str = "/local/domain";

/// A domain's home directory: `/local/domain/<domid>`.
pub fn domain_path(dom: DomId) -> String {
    format!("{DOMAIN_DIR}/{dom}")
}

/// Bytes allowed in a path: ASCII alphanumerics and `-/_@` (xenstore.txt).
fn allowed_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@')
}

/// Whether `path` is a well-formed absolute node path: `/` itself, or `/`-separated
/// non-empty components with no doubled or trailing slash, made of allowed bytes and no
/// longer than `XENSTORE_ABS_PATH_MAX`.
pub fn is_valid_absolute(path: &str) -> bool {
    if path == "/" {
        return true;
    }
    path.len() <= XENSTORE_ABS_PATH_MAX
        && path.starts_with('/')
        && !path.ends_with('/')
        && !path.contains("//")
        && path.bytes().all(allowed_byte)
}

/// Whether `path` names a special watch path (`@introduceDomain`, `@releaseDomain`, ...):
/// `@` followed by allowed bytes. xenstore.txt lets `<wspecial>` have any syntax; keeping
/// to the node alphabet costs clients nothing and keeps events printable.
pub fn is_special(path: &str) -> bool {
    path.starts_with('@') && path.len() <= XENSTORE_ABS_PATH_MAX && path.bytes().all(allowed_byte)
}

/// A path as a client sent it, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The absolute path (or the special path as given).
    pub abs: String,
    /// Whether the client gave it relative to its home directory; watch events then report
    /// paths relative to it too (xenstore.txt, WATCH_EVENT).
    pub relative: bool,
}

/// Turns the path bytes `raw` sent by `dom` into an absolute path: a path not starting
/// with `/` is relative to `/local/domain/<dom>` (xenstore.txt, `<path>`). Special `@`
/// paths are accepted only when `allow_special` (watches). Every malformed path is
/// `EINVAL`, which is what xenstored answers for a name that fails its checks.
pub fn resolve(dom: DomId, raw: &[u8], allow_special: bool) -> Result<Resolved, XsErrorCode> {
    let text = core::str::from_utf8(raw).map_err(|_| XsErrorCode::Einval)?;
    if text.is_empty() {
        return Err(XsErrorCode::Einval);
    }
    if text.starts_with('@') {
        return if allow_special && is_special(text) {
            Ok(Resolved {
                abs: String::from(text),
                relative: false,
            })
        } else {
            Err(XsErrorCode::Einval)
        };
    }
    let (abs, relative) = if text.starts_with('/') {
        (String::from(text), false)
    } else {
        if text.len() > XENSTORE_REL_PATH_MAX {
            return Err(XsErrorCode::Einval);
        }
        (format!("{}/{text}", domain_path(dom)), true)
    };
    if is_valid_absolute(&abs) {
        Ok(Resolved { abs, relative })
    } else {
        Err(XsErrorCode::Einval)
    }
}

/// The parent of an absolute path; `None` for `/`.
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => path.get(..i),
        None => None,
    }
}

/// The last component of an absolute path (empty for `/`).
pub fn basename(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => path.get(i + 1..).unwrap_or(""),
        None => path,
    }
}

/// `parent/name` for an absolute `parent`.
pub fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Whether `child` is `ancestor` or lies below it, in xenstore.txt's sense of <child> and
/// <parent>: identical, or `ancestor` is `/`, or `ancestor/` is a prefix of `child`.
/// (Special paths only ever match themselves and their own `@x/...` extensions.)
pub fn is_under(child: &str, ancestor: &str) -> bool {
    if child == ancestor {
        return true;
    }
    if ancestor == "/" {
        return child.starts_with('/');
    }
    child
        .strip_prefix(ancestor)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// `path` as `dom` would have written it relatively, if it lies below `dom`'s home
/// directory: what a watch registered with a relative path reports.
pub fn relative_to(dom: DomId, path: &str) -> Option<String> {
    let home = domain_path(dom);
    path.strip_prefix(home.as_str())
        .and_then(|rest| rest.strip_prefix('/'))
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;

    fn abs(dom: DomId, raw: &str) -> Result<String, XsErrorCode> {
        resolve(dom, raw.as_bytes(), false).map(|r| r.abs)
    }

    #[test]
    fn absolute_paths_pass_through() {
        assert_eq!(
            abs(3, "/local/domain/3/x").as_deref(),
            Ok("/local/domain/3/x")
        );
        assert_eq!(abs(3, "/").as_deref(), Ok("/"));
        assert_eq!(abs(0, "/a-b_c@d/9").as_deref(), Ok("/a-b_c@d/9"));
    }

    #[test]
    fn relative_paths_are_under_the_domain_home() {
        let r = resolve(3, b"x/y", false).unwrap();
        assert_eq!(r.abs, "/local/domain/3/x/y");
        assert!(r.relative);
        assert_eq!(abs(0, "device").as_deref(), Ok("/local/domain/0/device"));
    }

    #[test]
    fn malformed_paths_are_einval() {
        for bad in [
            "", "/a/", "/a//b", "//", "a/", "a//b", "/a b", "/a\0b", "/é", "/a.b", "/a:b",
        ] {
            assert_eq!(abs(1, bad), Err(XsErrorCode::Einval), "{bad:?}");
        }
        assert_eq!(resolve(1, &[b'/', 0xff], false), Err(XsErrorCode::Einval));
    }

    #[test]
    fn length_limits() {
        let ok = format!("/{}", "a".repeat(XENSTORE_ABS_PATH_MAX - 1));
        assert!(abs(0, &ok).is_ok());
        let long = format!("/{}", "a".repeat(XENSTORE_ABS_PATH_MAX));
        assert_eq!(abs(0, &long), Err(XsErrorCode::Einval));
        let rel = "a".repeat(XENSTORE_REL_PATH_MAX);
        assert!(abs(0, &rel).is_ok());
        let rel_long = "a".repeat(XENSTORE_REL_PATH_MAX + 1);
        assert_eq!(abs(0, &rel_long), Err(XsErrorCode::Einval));
    }

    #[test]
    fn special_paths_only_where_allowed() {
        assert_eq!(abs(0, "@releaseDomain"), Err(XsErrorCode::Einval));
        let r = resolve(5, b"@releaseDomain", true).unwrap();
        assert_eq!(r.abs, "@releaseDomain");
        assert!(!r.relative);
        assert_eq!(resolve(5, b"@bad path", true), Err(XsErrorCode::Einval));
    }

    #[test]
    fn parent_basename_join() {
        assert_eq!(parent("/"), None);
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/a/b/c"), Some("/a/b"));
        assert_eq!(basename("/a/b/c"), "c");
        assert_eq!(basename("/"), "");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
    }

    #[test]
    fn under_relation() {
        let yes = vec![("/a/b", "/a"), ("/a", "/a"), ("/a", "/"), ("/", "/")];
        for (c, a) in yes {
            assert!(is_under(c, a), "{c} under {a}");
        }
        let no = vec![("/ab", "/a"), ("/a", "/a/b"), ("@x", "/")];
        for (c, a) in no {
            assert!(!is_under(c, a), "{c} not under {a}");
        }
    }

    #[test]
    fn relative_reporting() {
        assert_eq!(
            relative_to(3, "/local/domain/3/x/y").as_deref(),
            Some("x/y")
        );
        assert_eq!(relative_to(3, "/local/domain/3"), None);
        assert_eq!(relative_to(3, "/local/domain/30/x"), None);
    }
}
