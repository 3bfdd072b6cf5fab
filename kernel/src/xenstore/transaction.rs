//! Transactions (xenstore.txt, TRANSACTION_START/TRANSACTION_END).
//!
//! A transaction sees the store as it was when it first touched each node, and its own
//! changes; nobody else sees those until it commits. Instead of copying the whole store
//! at start (what the spec describes), a transaction copies each node the first time it
//! reads or writes it and remembers the generation the node had then (or that it did
//! not exist). Committing checks that every node it touched still has that generation —
//! the "only conflicting writes cause EAGAIN" plan of xenstore.txt, which is what
//! xenstored does today. A node's generation changes with its child list too, so a
//! transaction that listed a directory conflicts with a concurrent create in it.

use alloc::{collections::BTreeMap, string::String, vec::Vec};

use ferrovisor_abi::xen::{xs_wire::XsErrorCode, DomId};

use super::tree::{Change, Node, Store, Tree};

/// One node as a transaction sees it.
#[derive(Clone, Debug)]
struct Entry {
    /// The node's generation in the live tree when the transaction first touched it;
    /// `None` if it did not exist then.
    base: Option<u64>,
    /// The node in the transaction's view; `None` if absent (or removed).
    node: Option<Node>,
    /// Whether the transaction changed it.
    dirty: bool,
}

/// An open transaction.
#[derive(Debug)]
pub struct Transaction {
    owner: DomId,
    entries: BTreeMap<String, Entry>,
    /// Changes to fire as watch events if it commits.
    changes: Vec<Change>,
    /// Change in nodes owned, per domain, relative to the live tree.
    owned_delta: BTreeMap<DomId, i64>,
}

impl Transaction {
    pub fn new(owner: DomId) -> Self {
        Transaction {
            owner,
            entries: BTreeMap::new(),
            changes: Vec::new(),
            owned_delta: BTreeMap::new(),
        }
    }

    /// The domain that started it; nobody else may use its id.
    pub fn owner(&self) -> DomId {
        self.owner
    }

    /// Records a change to fire on commit.
    pub(crate) fn record(&mut self, change: Change) {
        self.changes.push(change);
    }

    /// Number of nodes touched so far.
    pub fn touched(&self) -> usize {
        self.entries.len()
    }

    /// The store view for running operations inside this transaction.
    pub(crate) fn view<'a>(&'a mut self, tree: &'a Tree) -> View<'a> {
        View { tree, tx: self }
    }

    /// Applies the transaction to `tree` if no node it touched changed meanwhile; returns
    /// the changes to fire. A conflict is `EAGAIN` and leaves `tree` untouched.
    pub fn commit(self, tree: &mut Tree) -> Result<Vec<Change>, XsErrorCode> {
        let conflict = self
            .entries
            .iter()
            .any(|(path, e)| tree.get(path).map(|n| n.generation) != e.base);
        if conflict {
            return Err(XsErrorCode::Eagain);
        }
        for (path, e) in self.entries {
            if !e.dirty {
                continue;
            }
            match e.node {
                Some(node) => tree.install(&path, node),
                None => tree.uninstall(&path),
            }
        }
        Ok(self.changes)
    }

    fn adjust(&mut self, dom: DomId, by: i64) {
        *self.owned_delta.entry(dom).or_insert(0) += by;
    }
}

/// A transaction's view of the tree, for [`Store`].
pub(crate) struct View<'a> {
    tree: &'a Tree,
    tx: &'a mut Transaction,
}

impl View<'_> {
    fn entry(&mut self, path: &str) -> &mut Entry {
        let tree = self.tree;
        self.tx
            .entries
            .entry(String::from(path))
            .or_insert_with(|| {
                let node = tree.get(path).cloned();
                Entry {
                    base: node.as_ref().map(|n| n.generation),
                    node,
                    dirty: false,
                }
            })
    }
}

impl Store for View<'_> {
    fn node(&mut self, path: &str) -> Option<&Node> {
        self.entry(path).node.as_ref()
    }

    fn put(&mut self, path: &str, node: Node) {
        let new_owner = node.perms.owner();
        let entry = self.entry(path);
        let old_owner = entry.node.as_ref().map(|n| n.perms.owner());
        entry.node = Some(node);
        entry.dirty = true;
        if old_owner != Some(new_owner) {
            if let Some(old) = old_owner {
                self.tx.adjust(old, -1);
            }
            self.tx.adjust(new_owner, 1);
        }
    }

    fn delete(&mut self, path: &str) {
        let entry = self.entry(path);
        let old_owner = entry.node.take().map(|n| n.perms.owner());
        entry.dirty = true;
        if let Some(old) = old_owner {
            self.tx.adjust(old, -1);
        }
    }

    fn owned(&self, dom: DomId) -> u32 {
        let live = i64::from(self.tree.owned_by(dom));
        let delta = self.tx.owned_delta.get(&dom).copied().unwrap_or(0);
        u32::try_from((live + delta).max(0)).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenstore::{quota::Quota, tree};

    fn q() -> Quota {
        Quota::default()
    }

    #[test]
    fn writes_are_private_until_commit() {
        let mut t = Tree::new();
        let mut tx = Transaction::new(0);
        tree::write(&mut tx.view(&t), 0, &q(), "/a", b"x").unwrap();
        assert!(t.get("/a").is_none());
        assert_eq!(tree::read(&mut tx.view(&t), 0, "/a").unwrap(), b"x");
        tx.commit(&mut t).unwrap();
        assert_eq!(t.get("/a").unwrap().value, b"x");
    }

    #[test]
    fn conflicting_change_is_eagain_and_applies_nothing() {
        let mut t = Tree::new();
        tree::write(&mut t, 0, &q(), "/a", b"1").unwrap();
        let mut tx = Transaction::new(0);
        assert_eq!(tree::read(&mut tx.view(&t), 0, "/a").unwrap(), b"1");
        tree::write(&mut tx.view(&t), 0, &q(), "/b", b"tx").unwrap();
        tree::write(&mut t, 0, &q(), "/a", b"2").unwrap();
        assert_eq!(tx.commit(&mut t), Err(XsErrorCode::Eagain));
        assert!(t.get("/b").is_none());
    }

    #[test]
    fn unrelated_change_does_not_conflict() {
        let mut t = Tree::new();
        tree::write(&mut t, 0, &q(), "/a/x", b"1").unwrap();
        tree::write(&mut t, 0, &q(), "/b", b"1").unwrap();
        let mut tx = Transaction::new(0);
        tree::write(&mut tx.view(&t), 0, &q(), "/a/x", b"2").unwrap();
        tree::write(&mut t, 0, &q(), "/b", b"2").unwrap();
        assert!(tx.commit(&mut t).is_ok());
        assert_eq!(t.get("/a/x").unwrap().value, b"2");
    }

    #[test]
    fn listing_conflicts_with_a_concurrent_create() {
        let mut t = Tree::new();
        tree::write(&mut t, 0, &q(), "/d/a", b"").unwrap();
        let mut tx = Transaction::new(0);
        tree::directory(&mut tx.view(&t), 0, "/d").unwrap();
        tree::write(&mut t, 0, &q(), "/d/b", b"").unwrap();
        assert_eq!(tx.commit(&mut t), Err(XsErrorCode::Eagain));
    }

    #[test]
    fn node_created_meanwhile_conflicts_with_a_read_of_its_absence() {
        let mut t = Tree::new();
        let mut tx = Transaction::new(0);
        assert_eq!(
            tree::read(&mut tx.view(&t), 0, "/n"),
            Err(XsErrorCode::Enoent)
        );
        tree::write(&mut t, 0, &q(), "/n", b"").unwrap();
        assert_eq!(tx.commit(&mut t), Err(XsErrorCode::Eagain));
    }

    #[test]
    fn rm_in_transaction_commits_and_recounts() {
        let mut t = Tree::new();
        tree::write(&mut t, 0, &q(), "/a/b", b"").unwrap();
        let before = t.owned_by(0);
        let mut tx = Transaction::new(0);
        tree::rm(&mut tx.view(&t), 0, "/a").unwrap();
        assert_eq!(tx.view(&t).owned(0), before - 2);
        assert!(t.get("/a/b").is_some());
        tx.commit(&mut t).unwrap();
        assert!(t.get("/a").is_none() && t.get("/a/b").is_none());
        assert_eq!(t.owned_by(0), before - 2);
    }
}
