//! Watches (xenstore.txt, WATCH/UNWATCH/WATCH_EVENT).
//!
//! A watch on `<wpath>` fires for a change to `<wpath>` or any node below it; the event
//! carries the changed path and the watch's token. When a removal takes away a node above
//! a watched path, the watch fires with its own `<wpath>` ("<epath> is a child of
//! <wpath>, regardless"). A watch registered with a relative path reports relative
//! paths. A domain hears only about nodes it may read.

use alloc::{string::String, vec::Vec};

use ferrovisor_abi::xen::{xs_wire::XsErrorCode, DomId};

use super::{
    path::{is_under, relative_to},
    perms::Perms,
    tree::Change,
};

/// Special path fired when a domain is introduced.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// Special path fired when a domain is released.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// One registered watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    pub dom: DomId,
    /// The path as the domain gave it.
    pub wpath: String,
    /// The absolute (or special) path it watches.
    pub abs: String,
    pub token: String,
    /// Whether `wpath` was relative.
    pub relative: bool,
}

/// An event to deliver: `dom` gets `XS_WATCH_EVENT` with `path\0token\0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub dom: DomId,
    pub path: String,
    pub token: String,
}

/// Every watch of every domain, in registration order (so events go out in the order
/// their watches were set up).
#[derive(Debug, Default)]
pub struct Watches {
    list: Vec<Watch>,
}

impl Watches {
    pub fn new() -> Self {
        Self::default()
    }

    /// Watches `dom` has registered.
    pub fn count(&self, dom: DomId) -> usize {
        self.list.iter().filter(|w| w.dom == dom).count()
    }

    /// Registers a watch; the same path and token twice is `EEXIST` (xenstored's
    /// duplicate check compares the path as given, and the token).
    pub fn add(&mut self, watch: Watch) -> Result<(), XsErrorCode> {
        let dup = self
            .list
            .iter()
            .any(|w| w.dom == watch.dom && w.wpath == watch.wpath && w.token == watch.token);
        if dup {
            return Err(XsErrorCode::Eexist);
        }
        self.list.push(watch);
        Ok(())
    }

    /// Removes the watch `dom` registered with this path and token; `ENOENT` if none.
    pub fn remove(&mut self, dom: DomId, wpath: &str, token: &str) -> Result<(), XsErrorCode> {
        let at = self
            .list
            .iter()
            .position(|w| w.dom == dom && w.wpath == wpath && w.token == token)
            .ok_or(XsErrorCode::Enoent)?;
        self.list.remove(at);
        Ok(())
    }

    /// Drops every watch of `dom` (RESET_WATCHES, release).
    pub fn remove_domain(&mut self, dom: DomId) {
        self.list.retain(|w| w.dom != dom);
    }

    /// The path a watch reports for a change at absolute `path`.
    fn reported(w: &Watch, path: &str) -> String {
        if w.relative {
            relative_to(w.dom, path).unwrap_or_else(|| String::from(path))
        } else {
            String::from(path)
        }
    }

    fn event(w: &Watch, path: String) -> Event {
        Event {
            dom: w.dom,
            path,
            token: w.token.clone(),
        }
    }

    /// The events a committed change raises.
    pub fn events_for(&self, change: &Change) -> Vec<Event> {
        let mut out = Vec::new();
        match change {
            Change::Modified { path, perms } => {
                self.modified(path, perms, &mut out);
            }
            Change::Removed { path, removed } => {
                let Some((_, root_perms)) = removed.first() else {
                    return out;
                };
                self.modified(path, root_perms, &mut out);
                // Watches strictly below the removed node fire with their own path,
                // if their domain could read the node that was there (or, for a watch
                // on a path that did not exist, the removed node itself).
                for w in &self.list {
                    if w.abs == *path || !is_under(&w.abs, path) {
                        continue;
                    }
                    let perms = removed
                        .iter()
                        .find(|(p, _)| *p == w.abs)
                        .map_or(root_perms, |(_, perms)| perms);
                    if perms.can_read(w.dom) {
                        out.push(Self::event(w, w.wpath.clone()));
                    }
                }
            }
        }
        out
    }

    fn modified(&self, path: &str, perms: &Perms, out: &mut Vec<Event>) {
        for w in &self.list {
            if is_under(path, &w.abs) && perms.can_read(w.dom) {
                out.push(Self::event(w, Self::reported(w, path)));
            }
        }
    }

    /// The events a special path (`@introduceDomain`, `@releaseDomain`) raises: every
    /// watch on it, whatever the domain. (Xen's xenstored restricts these to domains it
    /// grants read access on the special node; Ferrovisor lets every domain hear them —
    /// they name no data, and no guest can cause them.)
    pub fn special_events(&self, special: &str) -> Vec<Event> {
        self.list
            .iter()
            .filter(|w| w.abs == special)
            .map(|w| Self::event(w, String::from(special)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenstore::perms::Access;

    fn watch(dom: DomId, wpath: &str, abs: &str, token: &str) -> Watch {
        Watch {
            dom,
            wpath: String::from(wpath),
            abs: String::from(abs),
            token: String::from(token),
            relative: !wpath.starts_with('/') && !wpath.starts_with('@'),
        }
    }

    fn modified(path: &str, perms: Perms) -> Change {
        Change::Modified {
            path: String::from(path),
            perms,
        }
    }

    #[test]
    fn fires_on_node_and_descendants_only() {
        let mut w = Watches::new();
        w.add(watch(0, "/a", "/a", "t")).unwrap();
        let open = Perms::owned_by(0, Access::Both);
        assert_eq!(w.events_for(&modified("/a/b", open.clone())).len(), 1);
        assert_eq!(w.events_for(&modified("/a", open.clone())).len(), 1);
        assert!(w.events_for(&modified("/ab", open.clone())).is_empty());
        assert!(w.events_for(&modified("/", open)).is_empty());
    }

    #[test]
    fn only_readers_hear() {
        let mut w = Watches::new();
        w.add(watch(5, "/a", "/a", "t")).unwrap();
        w.add(watch(6, "/a", "/a", "t")).unwrap();
        let perms = Perms::parse([&b"n5"[..], b"r6"]).unwrap();
        let ev = w.events_for(&modified("/a/x", perms));
        assert_eq!(ev.len(), 2);
        let perms = Perms::parse([&b"n0"[..], b"r6"]).unwrap();
        let ev = w.events_for(&modified("/a/x", perms));
        assert_eq!(ev.iter().map(|e| e.dom).collect::<Vec<_>>(), [6]);
    }

    #[test]
    fn relative_watch_reports_relative_paths() {
        let mut w = Watches::new();
        w.add(watch(3, "dev", "/local/domain/3/dev", "t")).unwrap();
        let ev = w.events_for(&modified(
            "/local/domain/3/dev/x",
            Perms::owned_by(3, Access::None),
        ));
        assert_eq!(ev[0].path, "dev/x");
    }

    #[test]
    fn removal_fires_watches_below_with_their_own_path() {
        let mut w = Watches::new();
        w.add(watch(0, "/a/b/c", "/a/b/c", "deep")).unwrap();
        w.add(watch(0, "/", "/", "root")).unwrap();
        let perms = Perms::owned_by(0, Access::None);
        let change = Change::Removed {
            path: String::from("/a"),
            removed: alloc::vec![
                (String::from("/a"), perms.clone()),
                (String::from("/a/b"), perms)
            ],
        };
        let ev = w.events_for(&change);
        assert_eq!(ev.len(), 2);
        assert!(ev.iter().any(|e| e.token == "root" && e.path == "/a"));
        assert!(ev.iter().any(|e| e.token == "deep" && e.path == "/a/b/c"));
    }

    #[test]
    fn duplicates_and_unknown_unwatch() {
        let mut w = Watches::new();
        w.add(watch(1, "/a", "/a", "t")).unwrap();
        assert_eq!(w.add(watch(1, "/a", "/a", "t")), Err(XsErrorCode::Eexist));
        assert!(w.add(watch(1, "/a", "/a", "u")).is_ok());
        assert!(w.add(watch(2, "/a", "/a", "t")).is_ok());
        assert_eq!(w.count(1), 2);
        assert_eq!(w.remove(1, "/a", "zz"), Err(XsErrorCode::Enoent));
        w.remove(1, "/a", "t").unwrap();
        w.remove_domain(1);
        assert_eq!(w.count(1), 0);
        assert_eq!(w.count(2), 1);
    }

    #[test]
    fn special_events_go_to_all_watchers_of_that_path() {
        let mut w = Watches::new();
        w.add(watch(7, "@releaseDomain", "@releaseDomain", "r"))
            .unwrap();
        w.add(watch(0, "@introduceDomain", "@introduceDomain", "i"))
            .unwrap();
        w.add(watch(7, "/", "/", "root")).unwrap();
        let ev = w.special_events(RELEASE_DOMAIN);
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0].dom, ev[0].token.as_str()), (7, "r"));
    }
}
