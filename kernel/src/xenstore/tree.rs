//! The node tree and the operations on it (xenstore.txt, "Database read, write and
//! permissions operations").
//!
//! Every node has a value (bytes), a permission list, the names of its children and a
//! generation number: a counter global to the store, bumped and copied into every node
//! a change writes (its value, permissions or child list). Transactions detect conflicts
//! and DIRECTORY_PART detects a changed child list by comparing generations.
//!
//! The operations are written once, over [`Store`], and run either directly on the
//! [`Tree`] or on a transaction's private view of it.

use alloc::{
    collections::{BTreeMap, BTreeSet},
    format,
    string::String,
    vec::Vec,
};

use ferrovisor_abi::xen::{
    xs_wire::{XsErrorCode, XENSTORE_PAYLOAD_MAX},
    DomId,
};

use super::{
    path::{basename, is_under, join, parent},
    perms::{is_privileged, Access, Perms, PRIVILEGED_DOMID},
    quota::Quota,
};

/// One node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub value: Vec<u8>,
    pub perms: Perms,
    /// Names (last components) of the children, sorted, so DIRECTORY_PART offsets are
    /// stable for a given generation.
    pub children: BTreeSet<String>,
    /// The store's generation when the node last changed.
    pub generation: u64,
}

impl Node {
    fn new(value: Vec<u8>, perms: Perms) -> Self {
        Node {
            value,
            perms,
            children: BTreeSet::new(),
            generation: 0,
        }
    }

    /// The size the node-size quota measures (see [`Quota::node_size`]).
    pub fn accounted_size(&self) -> usize {
        let names: usize = self.children.iter().map(|c| c.len() + 1).sum();
        self.value.len() + names + 4 * self.perms.entries().len()
    }

    /// The DIRECTORY payload: each child name followed by a NUL.
    pub fn child_list(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for c in &self.children {
            out.extend_from_slice(c.as_bytes());
            out.push(0);
        }
        out
    }
}

/// What a successful change did, for firing watches (xenstore.txt, WATCH: "when a <path>
/// is modified (including path creation, removal, contents change or permissions change)
/// this generates an event on the changed <path>").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The node at `path` was created or modified; `perms` are its permissions now, which
    /// decide who may see the event.
    Modified { path: String, perms: Perms },
    /// The node at `path` and everything below it were removed; `removed` lists every
    /// removed node with the permissions it had, `path` first.
    Removed {
        path: String,
        removed: Vec<(String, Perms)>,
    },
}

/// Storage the operations run on: the live tree, or a transaction's view of it.
pub(crate) trait Store {
    /// The node at an absolute path.
    fn node(&mut self, path: &str) -> Option<&Node>;
    /// Creates or replaces the node at `path` (its parent's child list is the caller's).
    fn put(&mut self, path: &str, node: Node);
    /// Removes the node at `path` alone.
    fn delete(&mut self, path: &str);
    /// Nodes `dom` owns, as this store sees them.
    fn owned(&self, dom: DomId) -> u32;
}

/// The live tree.
#[derive(Debug)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
    generation: u64,
    /// Nodes owned per domain, for the node quota.
    owned: BTreeMap<DomId, u32>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// A tree holding only `/`, owned by the privileged domain with no access for others.
    pub fn new() -> Self {
        let mut tree = Tree {
            nodes: BTreeMap::new(),
            generation: 0,
            owned: BTreeMap::new(),
        };
        tree.put(
            "/",
            Node::new(Vec::new(), Perms::owned_by(PRIVILEGED_DOMID, Access::None)),
        );
        tree
    }

    /// The node at an absolute path.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// The store's generation counter: the generation of the latest change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree is empty (never: `/` always exists).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Nodes owned by `dom`.
    pub fn owned_by(&self, dom: DomId) -> u32 {
        self.owned.get(&dom).copied().unwrap_or(0)
    }

    /// Every path at or below `root`, in order.
    pub fn paths_under<'a>(&'a self, root: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.nodes
            .range::<str, _>((
                core::ops::Bound::Included(root),
                core::ops::Bound::Unbounded,
            ))
            .map(|(p, _)| p.as_str())
            .take_while(move |p| p.starts_with(root))
            .filter(move |p| is_under(p, root))
    }

    fn charge(&mut self, dom: DomId, add: bool) {
        let count = self.owned.entry(dom).or_insert(0);
        *count = if add {
            count.saturating_add(1)
        } else {
            count.saturating_sub(1)
        };
        if *count == 0 {
            self.owned.remove(&dom);
        }
    }

    /// Stores `node` at `path` with a fresh generation. Used directly by [`Store::put`]
    /// and by a transaction's commit.
    pub(crate) fn install(&mut self, path: &str, mut node: Node) {
        self.generation += 1;
        node.generation = self.generation;
        let new_owner = node.perms.owner();
        match self.nodes.insert(String::from(path), node) {
            Some(old) if old.perms.owner() == new_owner => {}
            Some(old) => {
                self.charge(old.perms.owner(), false);
                self.charge(new_owner, true);
            }
            None => self.charge(new_owner, true),
        }
    }

    pub(crate) fn uninstall(&mut self, path: &str) {
        if let Some(old) = self.nodes.remove(path) {
            self.generation += 1;
            self.charge(old.perms.owner(), false);
        }
    }
}

impl Store for Tree {
    fn node(&mut self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    fn put(&mut self, path: &str, node: Node) {
        self.install(path, node);
    }

    fn delete(&mut self, path: &str) {
        self.uninstall(path);
    }

    fn owned(&self, dom: DomId) -> u32 {
        self.owned_by(dom)
    }
}

fn check_size(node: &Node, dom: DomId, quota: &Quota) -> Result<(), XsErrorCode> {
    if !is_privileged(dom) && node.accounted_size() > quota.node_size {
        return Err(XsErrorCode::Enospc);
    }
    Ok(())
}

/// READ: the node's value. Needs read access.
pub(crate) fn read(
    s: &mut (impl Store + ?Sized),
    dom: DomId,
    path: &str,
) -> Result<Vec<u8>, XsErrorCode> {
    let node = s.node(path).ok_or(XsErrorCode::Enoent)?;
    if !node.perms.can_read(dom) {
        return Err(XsErrorCode::Eacces);
    }
    Ok(node.value.clone())
}

/// Creates `path` and any missing parents (xenstore.txt, WRITE and MKDIR), the new leaf
/// holding `value` and new parents empty. The nearest existing ancestor must be writable
/// by `dom`; every new node inherits that ancestor's permissions (see
/// [`Perms::inherited_by`]).
fn create(
    s: &mut (impl Store + ?Sized),
    dom: DomId,
    quota: &Quota,
    path: &str,
    value: Vec<u8>,
) -> Result<Perms, XsErrorCode> {
    // Missing nodes from `path` upwards, and the existing ancestor they hang from.
    let mut missing: Vec<&str> = alloc::vec![path];
    let mut base = parent(path).ok_or(XsErrorCode::Einval)?;
    while s.node(base).is_none() {
        missing.push(base);
        base = parent(base).ok_or(XsErrorCode::Einval)?;
    }
    let mut base_node = s.node(base).cloned().ok_or(XsErrorCode::Enoent)?;
    if !base_node.perms.can_write(dom) {
        return Err(XsErrorCode::Eacces);
    }
    let perms = base_node.perms.inherited_by(dom);
    if !is_privileged(dom) {
        let wanted = u32::try_from(missing.len()).unwrap_or(u32::MAX);
        if s.owned(dom).saturating_add(wanted) > quota.nodes {
            return Err(XsErrorCode::Enospc);
        }
    }
    let leaf = Node::new(value, perms.clone());
    check_size(&leaf, dom, quota)?;
    // Build top-down: every new node but the leaf has the next one as its only child.
    let mut new_nodes = Vec::with_capacity(missing.len());
    for pair in missing.windows(2) {
        let (child, node_path) = (pair[0], pair[1]);
        let mut node = Node::new(Vec::new(), perms.clone());
        node.children.insert(String::from(basename(child)));
        new_nodes.push((node_path, node));
    }
    let topmost = missing.last().copied().unwrap_or(path);
    base_node.children.insert(String::from(basename(topmost)));
    check_size(&base_node, dom, quota)?;
    s.put(base, base_node);
    for (p, n) in new_nodes.into_iter().rev() {
        s.put(p, n);
    }
    s.put(path, leaf);
    Ok(perms)
}

/// WRITE: sets the value, creating the node and missing parents.
pub(crate) fn write(
    s: &mut (impl Store + ?Sized),
    dom: DomId,
    quota: &Quota,
    path: &str,
    value: &[u8],
) -> Result<Change, XsErrorCode> {
    let perms = match s.node(path).cloned() {
        Some(mut node) => {
            if !node.perms.can_write(dom) {
                return Err(XsErrorCode::Eacces);
            }
            node.value = value.to_vec();
            check_size(&node, dom, quota)?;
            let perms = node.perms.clone();
            s.put(path, node);
            perms
        }
        None => create(s, dom, quota, path, value.to_vec())?,
    };
    Ok(Change::Modified {
        path: String::from(path),
        perms,
    })
}

/// MKDIR: makes sure the node exists; an existing node is left alone (but must be
/// writable, as xenstored checks before finding it exists). `None`: nothing changed.
pub(crate) fn mkdir(
    s: &mut (impl Store + ?Sized),
    dom: DomId,
    quota: &Quota,
    path: &str,
) -> Result<Option<Change>, XsErrorCode> {
    if let Some(node) = s.node(path) {
        return if node.perms.can_write(dom) {
            Ok(None)
        } else {
            Err(XsErrorCode::Eacces)
        };
    }
    let perms = create(s, dom, quota, path, Vec::new())?;
    Ok(Some(Change::Modified {
        path: String::from(path),
        perms,
    }))
}

/// RM: removes the node and everything below it. A missing node whose parent exists is
/// fine; a missing parent is `ENOENT`; `/` cannot be removed (xenstore.txt, RM).
pub(crate) fn rm(
    s: &mut (impl Store + ?Sized),
    dom: DomId,
    path: &str,
) -> Result<Option<Change>, XsErrorCode> {
    let parent_path = parent(path).ok_or(XsErrorCode::Einval)?;
    let Some(node) = s.node(path) else {
        return match s.node(parent_path) {
            Some(_) => Ok(None),
            None => Err(XsErrorCode::Enoent),
        };
    };
    if !node.perms.can_write(dom) {
        return Err(XsErrorCode::Eacces);
    }
    // Depth-first, collecting before deleting so `removed` lists `path` first.
    let mut removed = Vec::new();
    let mut stack = alloc::vec![String::from(path)];
    while let Some(p) = stack.pop() {
        if let Some(n) = s.node(&p) {
            stack.extend(n.children.iter().rev().map(|c| join(&p, c)));
            let perms = n.perms.clone();
            removed.push((p, perms));
        }
    }
    for (p, _) in &removed {
        s.delete(p);
    }
    if let Some(mut up) = s.node(parent_path).cloned() {
        up.children.remove(basename(path));
        s.put(parent_path, up);
    }
    Ok(Some(Change::Removed {
        path: String::from(path),
        removed,
    }))
}

fn readable<'s>(
    s: &'s mut (impl Store + ?Sized),
    dom: DomId,
    path: &str,
) -> Result<&'s Node, XsErrorCode> {
    let node = s.node(path).ok_or(XsErrorCode::Enoent)?;
    if node.perms.can_read(dom) {
        Ok(node)
    } else {
        Err(XsErrorCode::Eacces)
    }
}

/// DIRECTORY: the children's names, each followed by a NUL.
pub(crate) fn directory(
    s: &mut (impl Store + ?Sized),
    dom: DomId,
    path: &str,
) -> Result<Vec<u8>, XsErrorCode> {
    Ok(readable(s, dom, path)?.child_list())
}

/// DIRECTORY_PART (xenstore.txt): `<gencnt>|` then the child list from byte `offset`,
/// as many whole names as fit in a payload. The end of the list is marked by an empty
/// name (one more NUL), so a client knows when to stop; an offset past the end is
/// `EINVAL`.
pub(crate) fn directory_part(
    s: &mut (impl Store + ?Sized),
    dom: DomId,
    path: &str,
    offset: usize,
) -> Result<Vec<u8>, XsErrorCode> {
    let node = readable(s, dom, path)?;
    let list = node.child_list();
    let mut out = format!("{}", node.generation).into_bytes();
    out.push(0);
    let rest = list.get(offset..).ok_or(XsErrorCode::Einval)?;
    let room = (XENSTORE_PAYLOAD_MAX as usize).saturating_sub(out.len() + 1);
    let mut taken = 0;
    for name in rest.split_inclusive(|&b| b == 0) {
        if taken + name.len() > room {
            break;
        }
        taken += name.len();
    }
    out.extend_from_slice(rest.get(..taken).unwrap_or(&[]));
    if taken == rest.len() {
        out.push(0);
    }
    Ok(out)
}

/// GET_PERMS: the permission list as strings. Needs read access.
pub(crate) fn get_perms(
    s: &mut (impl Store + ?Sized),
    dom: DomId,
    path: &str,
) -> Result<Vec<u8>, XsErrorCode> {
    Ok(readable(s, dom, path)?.perms.to_wire())
}

/// SET_PERMS: only the owner or a privileged domain may; only a privileged domain may
/// give the node another owner (`EPERM`, as xenstored's `do_set_perms`).
pub(crate) fn set_perms(
    s: &mut (impl Store + ?Sized),
    dom: DomId,
    quota: &Quota,
    path: &str,
    perms: Perms,
) -> Result<Change, XsErrorCode> {
    let mut node = s.node(path).cloned().ok_or(XsErrorCode::Enoent)?;
    if !node.perms.can_set(dom) {
        return Err(XsErrorCode::Eacces);
    }
    if !is_privileged(dom) {
        if perms.owner() != node.perms.owner() {
            return Err(XsErrorCode::Eperm);
        }
        if perms.entries().len() > quota.perms_per_node {
            return Err(XsErrorCode::Enospc);
        }
    }
    node.perms = perms.clone();
    check_size(&node, dom, quota)?;
    s.put(path, node);
    Ok(Change::Modified {
        path: String::from(path),
        perms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Quota = Quota {
        nodes: 1000,
        node_size: 2048,
        watches: 128,
        transactions: 10,
        perms_per_node: 5,
        queued_messages: 256,
    };

    fn open_tree() -> Tree {
        let mut t = Tree::new();
        let perms = Perms::parse([&b"b0"[..]]).unwrap();
        set_perms(&mut t, 0, &Q, "/", perms).unwrap();
        t
    }

    #[test]
    fn write_creates_parents_with_inherited_perms() {
        let mut t = open_tree();
        write(&mut t, 4, &Q, "/a/b/c", b"v").unwrap();
        for p in ["/a", "/a/b", "/a/b/c"] {
            assert_eq!(t.get(p).unwrap().perms.owner(), 4, "{p}");
        }
        assert_eq!(t.get("/a/b").unwrap().value, b"");
        assert_eq!(t.get("/a/b/c").unwrap().value, b"v");
        assert_eq!(t.owned_by(4), 3);
        assert!(t.get("/").unwrap().children.contains("a"));
    }

    #[test]
    fn generations_increase_on_change_and_parent_child_list() {
        let mut t = Tree::new();
        write(&mut t, 0, &Q, "/a", b"1").unwrap();
        let g_root = t.get("/").unwrap().generation;
        let g_a = t.get("/a").unwrap().generation;
        write(&mut t, 0, &Q, "/a", b"2").unwrap();
        assert!(t.get("/a").unwrap().generation > g_a);
        assert_eq!(t.get("/").unwrap().generation, g_root);
        write(&mut t, 0, &Q, "/b", b"").unwrap();
        assert!(t.get("/").unwrap().generation > g_root);
    }

    #[test]
    fn rm_lists_the_subtree_and_updates_counts() {
        let mut t = open_tree();
        write(&mut t, 4, &Q, "/a/b/c", b"v").unwrap();
        write(&mut t, 4, &Q, "/a/d", b"v").unwrap();
        let change = rm(&mut t, 4, "/a").unwrap().unwrap();
        let Change::Removed { path, removed } = change else {
            panic!("not a removal");
        };
        assert_eq!(path, "/a");
        let names: Vec<&str> = removed.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["/a", "/a/b", "/a/b/c", "/a/d"]);
        assert_eq!(t.owned_by(4), 0);
        assert_eq!(t.len(), 1);
        assert!(t.get("/").unwrap().children.is_empty());
    }

    #[test]
    fn paths_under_stops_at_siblings_sharing_a_prefix() {
        let mut t = Tree::new();
        write(&mut t, 0, &Q, "/a/b", b"").unwrap();
        write(&mut t, 0, &Q, "/ab", b"").unwrap();
        let under: Vec<&str> = t.paths_under("/a").collect();
        assert_eq!(under, ["/a", "/a/b"]);
    }

    #[test]
    fn directory_part_pages_and_marks_the_end() {
        let mut t = Tree::new();
        for i in 0..600 {
            write(&mut t, 0, &Q, &format!("/d/child{i:04}"), b"").unwrap();
        }
        let gen = t.get("/d").unwrap().generation;
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            let part = directory_part(&mut t, 0, "/d", offset).unwrap();
            assert!(part.len() <= XENSTORE_PAYLOAD_MAX as usize);
            let prefix = format!("{gen}\0");
            let body = part.strip_prefix(prefix.as_bytes()).unwrap();
            if let Some(last) = body.strip_suffix(b"\0\0") {
                all.extend_from_slice(last);
                all.push(0);
                break;
            }
            if body == b"\0" {
                break;
            }
            offset += body.len();
            all.extend_from_slice(body);
        }
        assert_eq!(all, t.get("/d").unwrap().child_list());
        assert_eq!(
            directory_part(&mut t, 0, "/d", 1 << 20),
            Err(XsErrorCode::Einval)
        );
    }
}
