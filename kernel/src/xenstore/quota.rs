//! Per-domain limits on what an unprivileged domain may make the service hold.
//!
//! The defaults are those of a freshly started xenstored; the privileged domain is exempt
//! from all of them, as there. The errors are xenstored's: `ENOSPC` for too many nodes,
//! a too-large node or too many open transactions (`write_node_raw`,
//! `do_transaction_start`), `E2BIG` for too many watches (`do_watch`).

/// The limits, one set for all unprivileged domains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Nodes a domain may own.
    pub nodes: u32,
    /// Largest node record: the value plus the child names (each with its NUL) plus four
    /// bytes per permission entry, xenstored's accounting of a node's size.
    pub node_size: usize,
    /// Watches a domain may have registered.
    pub watches: usize,
    /// Transactions a domain may have open at once.
    pub transactions: usize,
    /// Entries in one node's permission list.
    pub perms_per_node: usize,
    /// Messages queued for a connection (replies and watch events) before the service
    /// stops reading its requests and drops further watch events for it: the ring is the
    /// guest's to drain, and memory spent on a guest that does not must stay bounded
    /// (xenstored bounds it the same way since XSA-326).
    pub queued_messages: usize,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            nodes: 1000,
            node_size: 2048,
            watches: 128,
            transactions: 10,
            perms_per_node: 5,
            queued_messages: 256,
        }
    }
}
