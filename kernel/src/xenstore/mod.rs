//! The xenstore service (`docs/misc/xenstore.txt`, `io/xs_wire.h`), run inside the
//! hypervisor instead of a dom0 daemon.
//!
//! [`Xenstore`] holds the node tree, the watches, the open transactions and one
//! connection per introduced domain (dom0's exists from the start). It never touches
//! guest memory: the hypervisor feeds it requests from a domain's ring page through
//! [`Xenstore::service_ring`] (over its own [`RingAccess`] implementation), notifies the
//! domain's xenstore event channel when that says so, and flushes the output of every
//! other domain an [`Outcome`] names (watch events) with [`Xenstore::flush_ring`].
//!
//! Every message comes from a possibly hostile guest: each path through
//! [`Xenstore::handle`] validates and answers with an `XS_ERROR` reply, never a panic.

pub mod path;
pub mod perms;
pub mod quota;
pub mod ring;
pub mod transaction;
pub mod tree;
pub mod watch;

use alloc::{
    collections::{BTreeMap, VecDeque},
    format,
    string::String,
    vec::Vec,
};

use ferrovisor_abi::xen::{
    xen::DOMID_FIRST_RESERVED,
    xs_wire::{XsErrorCode, XsType, XsdSockmsg, XENSTORE_PAYLOAD_MAX, XSD_SOCKMSG_SIZE},
    DomId,
};
use zerocopy::{FromBytes, IntoBytes};

use self::{
    path::domain_path,
    perms::PRIVILEGED_DOMID,
    ring::RingState,
    transaction::Transaction,
    tree::{Change, Store, Tree},
    watch::{Event, Watch, Watches, INTRODUCE_DOMAIN, RELEASE_DOMAIN},
};
pub use self::{
    perms::{is_privileged, Access, Perms, HYPERVISOR_DOMID},
    quota::Quota,
    ring::{RingAccess, RingFault},
};

/// An `XS_INTRODUCE` from the privileged domain: the hypervisor must map `gfn` of `dom`
/// as its xenstore page and bind to `port`, then service that ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Introduction {
    pub dom: DomId,
    /// Signed decimal on the wire (xenstore.txt, INTRODUCE).
    pub gfn: i64,
    pub port: u32,
}

/// What the hypervisor must do after a call into the service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Domains whose output queue gained messages: flush their rings and notify them.
    pub wake: Vec<DomId>,
    /// Domains the privileged domain introduced over the wire.
    pub introduced: Vec<Introduction>,
    /// Domains the privileged domain released over the wire: unmap and unbind.
    pub released: Vec<DomId>,
    /// The hypervisor's own watches that fired (path, token), in order: its backends
    /// react to their frontends' nodes.
    pub internal: Vec<(String, String)>,
}

impl Outcome {
    fn wake(&mut self, dom: DomId) {
        if !self.wake.contains(&dom) {
            self.wake.push(dom);
        }
    }

    fn merge(&mut self, other: Outcome) {
        for d in other.wake {
            self.wake(d);
        }
        self.introduced.extend(other.introduced);
        self.released.extend(other.released);
        self.internal.extend(other.internal);
    }
}

/// One domain's connection.
#[derive(Debug, Default)]
struct Connection {
    /// Replies and watch events not yet in the ring.
    out: VecDeque<Vec<u8>>,
    ring: RingState,
}

/// The xenstore service.
#[derive(Debug)]
pub struct Xenstore {
    tree: Tree,
    watches: Watches,
    transactions: BTreeMap<u32, Transaction>,
    next_tx: u32,
    conns: BTreeMap<DomId, Connection>,
    quota: Quota,
}

impl Default for Xenstore {
    fn default() -> Self {
        Self::new()
    }
}

/// A request's reply payload, or the error to answer with.
type Reply = Result<Vec<u8>, XsErrorCode>;

const OK: &[u8] = b"OK\0";

/// Splits a payload of NUL-terminated strings. A payload not ending in NUL is malformed.
fn strings(payload: &[u8]) -> Result<Vec<&[u8]>, XsErrorCode> {
    let body = payload.strip_suffix(&[0]).ok_or(XsErrorCode::Einval)?;
    Ok(body.split(|&b| b == 0).collect())
}

/// Exactly one NUL-terminated string (xenstored's `onearg`).
fn one_arg(payload: &[u8]) -> Result<&[u8], XsErrorCode> {
    match strings(payload)?.as_slice() {
        [one] => Ok(one),
        _ => Err(XsErrorCode::Einval),
    }
}

/// The first `N` strings, refusing fewer (extra trailing strings are reserved fields,
/// ignored as xenstored's `get_strings` does).
fn first_args<const N: usize>(payload: &[u8]) -> Result<[&[u8]; N], XsErrorCode> {
    let all = strings(payload)?;
    let first = all.get(..N).ok_or(XsErrorCode::Einval)?;
    <[&[u8]; N]>::try_from(first).map_err(|_| XsErrorCode::Einval)
}

fn decimal<T: core::str::FromStr>(bytes: &[u8]) -> Result<T, XsErrorCode> {
    core::str::from_utf8(bytes)
        .ok()
        .filter(|s| !s.starts_with('+'))
        .and_then(|s| s.parse().ok())
        .ok_or(XsErrorCode::Einval)
}

fn domid_arg(bytes: &[u8]) -> Result<DomId, XsErrorCode> {
    perms::parse_domid(bytes).ok_or(XsErrorCode::Einval)
}

/// A guest domain id: not dom0, not a special `DOMID_*` value (xenstore.txt, INTRODUCE).
fn guest_domid(bytes: &[u8]) -> Result<DomId, XsErrorCode> {
    let dom = domid_arg(bytes)?;
    if dom == PRIVILEGED_DOMID || dom >= DOMID_FIRST_RESERVED {
        return Err(XsErrorCode::Einval);
    }
    Ok(dom)
}

fn message(ty: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let hdr = XsdSockmsg {
        r#type: ty,
        req_id,
        tx_id,
        // Payloads are capped at XENSTORE_PAYLOAD_MAX before this is called.
        len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
    };
    let mut m = Vec::with_capacity(XSD_SOCKMSG_SIZE + payload.len());
    m.extend_from_slice(hdr.as_bytes());
    m.extend_from_slice(payload);
    m
}

/// An `XS_ERROR` reply: the error's name and a NUL.
fn error_message(req_id: u32, tx_id: u32, err: XsErrorCode) -> Vec<u8> {
    let mut payload = Vec::from(err.name().as_bytes());
    payload.push(0);
    message(XsType::ErrorReply.raw(), req_id, tx_id, &payload)
}

impl Xenstore {
    /// A fresh store, as a just-started xenstored plus the toolstack's skeleton: `/`,
    /// `/local`, `/local/domain`, `/tool` and dom0's home `/local/domain/0`, all owned by
    /// dom0 with no access for others; dom0 connected.
    pub fn new() -> Self {
        Self::with_quota(Quota::default())
    }

    /// A fresh store with other limits.
    pub fn with_quota(quota: Quota) -> Self {
        let mut tree = Tree::new();
        for p in ["/local/domain/0", "/tool"] {
            // Cannot fail: the privileged domain creates below `/`, which it owns.
            let _ = tree::mkdir(&mut tree, PRIVILEGED_DOMID, &quota, p);
        }
        let mut conns = BTreeMap::new();
        conns.insert(PRIVILEGED_DOMID, Connection::default());
        Xenstore {
            tree,
            watches: Watches::new(),
            transactions: BTreeMap::new(),
            next_tx: 1,
            conns,
            quota,
        }
    }

    /// The node tree (read-only), for diagnostics and tests.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Whether `dom` has a connection (INTRODUCE'd and not released; dom0 always).
    pub fn is_introduced(&self, dom: DomId) -> bool {
        self.conns.contains_key(&dom)
    }

    /// Messages queued for `dom`, not yet in its ring.
    pub fn queued(&self, dom: DomId) -> usize {
        self.conns.get(&dom).map_or(0, |c| c.out.len())
    }

    /// Takes the next queued message for `dom` (for a transport other than the ring).
    pub fn pop_output(&mut self, dom: DomId) -> Option<Vec<u8>> {
        self.conns.get_mut(&dom)?.out.pop_front()
    }

    /// Connects `dom`: creates its home `/local/domain/<dom>` (owned by it, no access for
    /// other unprivileged domains; the toolstack may set other permissions later) and
    /// fires `@introduceDomain`. Already connected is `EEXIST`.
    pub fn introduce(&mut self, dom: DomId) -> Result<Outcome, XsErrorCode> {
        if self.conns.contains_key(&dom) {
            return Err(XsErrorCode::Eexist);
        }
        self.conns.insert(dom, Connection::default());
        let mut out = Outcome::default();
        let home = domain_path(dom);
        let mut events = Vec::new();
        if let Ok(Some(change)) = tree::mkdir(&mut self.tree, PRIVILEGED_DOMID, &self.quota, &home)
        {
            events.extend(self.watches.events_for(&change));
        }
        let owner = Perms::owned_by(dom, Access::None);
        if let Ok(change) =
            tree::set_perms(&mut self.tree, PRIVILEGED_DOMID, &self.quota, &home, owner)
        {
            events.extend(self.watches.events_for(&change));
        }
        events.extend(self.watches.special_events(INTRODUCE_DOMAIN));
        self.deliver(events, &mut out);
        Ok(out)
    }

    /// Disconnects `dom`: drops its watches, its open transactions and its queued output,
    /// and fires `@releaseDomain`. Its nodes stay (removing `/local/domain/<dom>` is the
    /// toolstack's job; see [`Self::remove_domain_tree`]). Not connected is `ENOENT`;
    /// dom0 cannot be released (`EINVAL`).
    pub fn release(&mut self, dom: DomId) -> Result<Outcome, XsErrorCode> {
        if dom == PRIVILEGED_DOMID {
            return Err(XsErrorCode::Einval);
        }
        if self.conns.remove(&dom).is_none() {
            return Err(XsErrorCode::Enoent);
        }
        self.watches.remove_domain(dom);
        self.transactions.retain(|_, t| t.owner() != dom);
        let mut out = Outcome::default();
        let events = self.watches.special_events(RELEASE_DOMAIN);
        self.deliver(events, &mut out);
        Ok(out)
    }

    /// A domain shut down or crashed but stays (until the toolstack destroys it): fires
    /// `@releaseDomain`, as Xen's xenstored does on `VIRQ_DOM_EXC`, so a toolstack that
    /// watches it learns without polling. The domain's connection and nodes stay.
    pub fn domain_exception(&mut self) -> Outcome {
        let mut out = Outcome::default();
        let events = self.watches.special_events(RELEASE_DOMAIN);
        self.deliver(events, &mut out);
        out
    }

    /// Removes `/local/domain/<dom>` and everything below it, firing watches.
    pub fn remove_domain_tree(&mut self, dom: DomId) -> Outcome {
        let mut out = Outcome::default();
        if let Ok(Some(change)) = tree::rm(&mut self.tree, PRIVILEGED_DOMID, &domain_path(dom)) {
            let events = self.watches.events_for(&change);
            self.deliver(events, &mut out);
        }
        out
    }

    /// Queues watch events, dropping those for a connection whose queue is over its cap
    /// (see [`Quota::queued_messages`]).
    fn deliver(&mut self, events: Vec<Event>, out: &mut Outcome) {
        for ev in events {
            if ev.dom == HYPERVISOR_DOMID {
                out.internal.push((ev.path, ev.token));
                continue;
            }
            let Some(conn) = self.conns.get_mut(&ev.dom) else {
                continue;
            };
            if !is_privileged(ev.dom) && conn.out.len() >= self.quota.queued_messages {
                continue;
            }
            let mut payload = Vec::from(ev.path.as_bytes());
            payload.push(0);
            payload.extend_from_slice(ev.token.as_bytes());
            payload.push(0);
            if payload.len() > XENSTORE_PAYLOAD_MAX as usize {
                continue;
            }
            conn.out
                .push_back(message(XsType::WatchEvent.raw(), 0, 0, &payload));
            out.wake(ev.dom);
        }
    }

    /// Registers a watch of the hypervisor itself on the absolute `path` (and everything
    /// below it): its events come back in [`Outcome::internal`] instead of a ring. Unlike
    /// a guest's watch it does not fire once at registration. The same path and token
    /// twice is `EEXIST`.
    pub fn watch_internal(&mut self, path: &str, token: &str) -> Result<(), XsErrorCode> {
        if !path::is_valid_absolute(path) {
            return Err(XsErrorCode::Einval);
        }
        self.watches.add(Watch {
            dom: HYPERVISOR_DOMID,
            wpath: String::from(path),
            abs: String::from(path),
            token: String::from(token),
            relative: false,
        })
    }

    /// Removes a watch [`Self::watch_internal`] registered; `ENOENT` if there is none.
    pub fn unwatch_internal(&mut self, path: &str, token: &str) -> Result<(), XsErrorCode> {
        self.watches.remove(HYPERVISOR_DOMID, path, token)
    }

    /// Runs one request (type and payload) on behalf of the hypervisor itself, with the
    /// privileged domain's rights, outside any transaction: the writes the hypervisor
    /// makes as the toolstack (`control/shutdown`, `memory/target`). The reply comes back
    /// here (`Ok(payload)`, or the error) instead of being queued; watch events are queued
    /// as usual.
    pub fn request(
        &mut self,
        kind: XsType,
        payload: &[u8],
    ) -> (Result<Vec<u8>, XsErrorCode>, Outcome) {
        let mut out = Outcome::default();
        let mut events = Vec::new();
        let hdr = XsdSockmsg {
            r#type: kind.raw(),
            req_id: 0,
            tx_id: 0,
            len: payload.len() as u32,
        };
        let result = if payload.len() > XENSTORE_PAYLOAD_MAX as usize {
            Err(XsErrorCode::E2big)
        } else {
            self.dispatch(PRIVILEGED_DOMID, &hdr, payload, &mut events, &mut out)
        };
        self.deliver(events, &mut out);
        (result, out)
    }

    /// Handles one complete message (header and payload) from `from`, queueing the reply
    /// for `from` and any watch events for whoever they concern. A domain without a
    /// connection is ignored.
    pub fn handle(&mut self, from: DomId, msg: &[u8]) -> Outcome {
        let mut out = Outcome::default();
        if !self.conns.contains_key(&from) {
            return out;
        }
        let mut events = Vec::new();
        let reply = match XsdSockmsg::read_from_prefix(msg) {
            Err(_) => error_message(0, 0, XsErrorCode::Einval),
            Ok((hdr, payload)) => {
                let result = if hdr.len as usize != payload.len() || hdr.len > XENSTORE_PAYLOAD_MAX
                {
                    Err(XsErrorCode::Einval)
                } else {
                    self.dispatch(from, &hdr, payload, &mut events, &mut out)
                };
                match result.and_then(|p| {
                    if p.len() > XENSTORE_PAYLOAD_MAX as usize {
                        Err(XsErrorCode::E2big)
                    } else {
                        Ok(p)
                    }
                }) {
                    Ok(p) => message(hdr.r#type, hdr.req_id, hdr.tx_id, &p),
                    Err(e) => error_message(hdr.req_id, hdr.tx_id, e),
                }
            }
        };
        if let Some(conn) = self.conns.get_mut(&from) {
            conn.out.push_back(reply);
            out.wake(from);
        }
        self.deliver(events, &mut out);
        out
    }

    /// Runs a tree operation outside or inside transaction `tx_id`; a change is fired
    /// now, or recorded to fire when the transaction commits.
    fn on_store(
        &mut self,
        from: DomId,
        tx_id: u32,
        events: &mut Vec<Event>,
        op: impl FnOnce(&mut dyn Store, &Quota) -> Result<(Vec<u8>, Option<Change>), XsErrorCode>,
    ) -> Reply {
        if tx_id == 0 {
            let (reply, change) = op(&mut self.tree, &self.quota)?;
            if let Some(c) = change {
                events.extend(self.watches.events_for(&c));
            }
            return Ok(reply);
        }
        let tx = self
            .transactions
            .get_mut(&tx_id)
            .filter(|t| t.owner() == from)
            .ok_or(XsErrorCode::Enoent)?;
        let (reply, change) = op(&mut tx.view(&self.tree), &self.quota)?;
        if let Some(c) = change {
            tx.record(c);
        }
        Ok(reply)
    }

    fn dispatch(
        &mut self,
        from: DomId,
        hdr: &XsdSockmsg,
        payload: &[u8],
        events: &mut Vec<Event>,
        out: &mut Outcome,
    ) -> Reply {
        let Ok(ty) = XsType::try_from(hdr.r#type) else {
            // xenstored answers a type it has no handler for with ENOSYS.
            return Err(XsErrorCode::Enosys);
        };
        let tx = hdr.tx_id;
        let node = |p: &[u8]| path::resolve(from, p, false).map(|r| r.abs);
        match ty {
            XsType::Read => {
                let p = node(one_arg(payload)?)?;
                self.on_store(from, tx, events, |s, _| {
                    Ok((tree::read(s, from, &p)?, None))
                })
            }
            XsType::Write => {
                let nul = payload
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(XsErrorCode::Einval)?;
                let p = node(payload.get(..nul).unwrap_or(&[]))?;
                let value = payload.get(nul + 1..).unwrap_or(&[]);
                self.on_store(from, tx, events, |s, q| {
                    let change = tree::write(s, from, q, &p, value)?;
                    Ok((OK.to_vec(), Some(change)))
                })
            }
            XsType::Mkdir => {
                let p = node(one_arg(payload)?)?;
                self.on_store(from, tx, events, |s, q| {
                    Ok((OK.to_vec(), tree::mkdir(s, from, q, &p)?))
                })
            }
            XsType::Rm => {
                let p = node(one_arg(payload)?)?;
                self.on_store(from, tx, events, |s, _| {
                    Ok((OK.to_vec(), tree::rm(s, from, &p)?))
                })
            }
            XsType::Directory => {
                let p = node(one_arg(payload)?)?;
                self.on_store(from, tx, events, |s, _| {
                    Ok((tree::directory(s, from, &p)?, None))
                })
            }
            XsType::DirectoryPart => {
                let [raw, off] = first_args::<2>(payload)?;
                let p = node(raw)?;
                let offset: usize = decimal(off)?;
                self.on_store(from, tx, events, |s, _| {
                    Ok((tree::directory_part(s, from, &p, offset)?, None))
                })
            }
            XsType::GetPerms => {
                let p = node(one_arg(payload)?)?;
                self.on_store(from, tx, events, |s, _| {
                    Ok((tree::get_perms(s, from, &p)?, None))
                })
            }
            XsType::SetPerms => {
                let args = strings(payload)?;
                let (raw, list) = args.split_first().ok_or(XsErrorCode::Einval)?;
                let p = node(raw)?;
                let perms = Perms::parse(list.iter().copied())?;
                self.on_store(from, tx, events, |s, q| {
                    let change = tree::set_perms(s, from, q, &p, perms)?;
                    Ok((OK.to_vec(), Some(change)))
                })
            }
            XsType::Watch => self.watch(from, payload, events),
            XsType::Unwatch => {
                let [wpath, token] = first_args::<2>(payload)?;
                let wpath = core::str::from_utf8(wpath).map_err(|_| XsErrorCode::Einval)?;
                let token = core::str::from_utf8(token).map_err(|_| XsErrorCode::Einval)?;
                self.watches.remove(from, wpath, token)?;
                Ok(OK.to_vec())
            }
            XsType::TransactionStart => self.transaction_start(from, tx),
            XsType::TransactionEnd => self.transaction_end(from, tx, payload, events),
            XsType::GetDomainPath => {
                let dom = domid_arg(one_arg(payload)?)?;
                let mut p = domain_path(dom).into_bytes();
                p.push(0);
                Ok(p)
            }
            XsType::ResetWatches => {
                self.watches.remove_domain(from);
                self.transactions.retain(|_, t| t.owner() != from);
                Ok(OK.to_vec())
            }
            XsType::Introduce
            | XsType::Release
            | XsType::IsDomainIntroduced
            | XsType::Resume
            | XsType::SetTarget
            | XsType::Control => {
                if !is_privileged(from) {
                    return Err(XsErrorCode::Eacces);
                }
                self.privileged_op(ty, payload, out)
            }
            XsType::WatchEvent | XsType::ErrorReply | XsType::Invalid => Err(XsErrorCode::Enosys),
        }
    }

    fn privileged_op(&mut self, ty: XsType, payload: &[u8], out: &mut Outcome) -> Reply {
        match ty {
            XsType::Introduce => {
                let [dom, gfn, port] = first_args::<3>(payload)?;
                let intro = Introduction {
                    dom: guest_domid(dom)?,
                    gfn: decimal(gfn)?,
                    port: decimal(port)?,
                };
                // Introducing a connected domain again is accepted: xenstored uses it to
                // re-bind the event channel, which the hypervisor does on seeing it.
                if !self.is_introduced(intro.dom) {
                    out.merge(self.introduce(intro.dom)?);
                }
                out.introduced.push(intro);
                Ok(OK.to_vec())
            }
            XsType::Release => {
                let dom = guest_domid(one_arg(payload)?)?;
                out.merge(self.release(dom)?);
                out.released.push(dom);
                Ok(OK.to_vec())
            }
            XsType::IsDomainIntroduced => {
                let dom = domid_arg(one_arg(payload)?)?;
                Ok(if self.is_introduced(dom) {
                    b"T\0"
                } else {
                    b"F\0"
                }
                .to_vec())
            }
            XsType::Resume => {
                let dom = domid_arg(one_arg(payload)?)?;
                if self.is_introduced(dom) {
                    Ok(OK.to_vec())
                } else {
                    Err(XsErrorCode::Enoent)
                }
            }
            XsType::Control => {
                match one_arg(payload).or_else(|_| first_args::<1>(payload).map(|[c]| c))? {
                    b"check" => Ok(OK.to_vec()),
                    b"help" => Ok(b"check\nhelp\n\0".to_vec()),
                    _ => Err(XsErrorCode::Einval),
                }
            }
            // SET_TARGET (device-model stub domains) is not offered.
            _ => Err(XsErrorCode::Enosys),
        }
    }

    fn watch(&mut self, from: DomId, payload: &[u8], events: &mut Vec<Event>) -> Reply {
        let [wpath, token] = first_args::<2>(payload)?;
        let resolved = path::resolve(from, wpath, true)?;
        let wpath = String::from(core::str::from_utf8(wpath).map_err(|_| XsErrorCode::Einval)?);
        let token = String::from(core::str::from_utf8(token).map_err(|_| XsErrorCode::Einval)?);
        if !is_privileged(from) && self.watches.count(from) >= self.quota.watches {
            return Err(XsErrorCode::E2big);
        }
        self.watches.add(Watch {
            dom: from,
            wpath: wpath.clone(),
            abs: resolved.abs,
            token: token.clone(),
            relative: resolved.relative,
        })?;
        // xenstore.txt: "When a watch is first set up it is triggered once straight
        // away, with <path> equal to <wpath>."
        events.push(Event {
            dom: from,
            path: wpath,
            token,
        });
        Ok(OK.to_vec())
    }

    fn transaction_start(&mut self, from: DomId, tx: u32) -> Reply {
        // No nesting (xenstore.txt: "It is not legal to send non-0 tx_id in
        // TRANSACTION_START"); xenstored answers EBUSY.
        if tx != 0 {
            return Err(XsErrorCode::Ebusy);
        }
        let open = self
            .transactions
            .values()
            .filter(|t| t.owner() == from)
            .count();
        if !is_privileged(from) && open >= self.quota.transactions {
            return Err(XsErrorCode::Enospc);
        }
        // Ids are never 0 and never one in use; at most 2^32 - 1 can be open, far more
        // than memory allows, so the search ends.
        let mut id = self.next_tx;
        while id == 0 || self.transactions.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_tx = id.wrapping_add(1);
        self.transactions.insert(id, Transaction::new(from));
        Ok(format!("{id}\0").into_bytes())
    }

    fn transaction_end(
        &mut self,
        from: DomId,
        tx: u32,
        payload: &[u8],
        events: &mut Vec<Event>,
    ) -> Reply {
        let commit = match one_arg(payload)? {
            b"T" => true,
            b"F" => false,
            _ => return Err(XsErrorCode::Einval),
        };
        if self.transactions.get(&tx).map(Transaction::owner) != Some(from) {
            return Err(XsErrorCode::Enoent);
        }
        let Some(t) = self.transactions.remove(&tx) else {
            return Err(XsErrorCode::Enoent);
        };
        if commit {
            for change in t.commit(&mut self.tree)? {
                events.extend(self.watches.events_for(&change));
            }
        }
        Ok(OK.to_vec())
    }

    /// Services `dom`'s ring: writes queued output, then reads and handles requests
    /// while its output queue is under the cap (so a guest that never reads replies
    /// cannot make the service queue without bound), writing replies as it goes.
    /// Returns whether `dom` must be notified and what else to do; a fault shuts the
    /// connection's ring down for good (the caller should then release the domain).
    pub fn service_ring<R: RingAccess>(
        &mut self,
        dom: DomId,
        ring: &mut R,
    ) -> Result<(bool, Outcome), RingFault> {
        let mut notify = self.flush_ring(dom, ring)?;
        let mut out = Outcome::default();
        while let Some(conn) = self.conns.get_mut(&dom) {
            if !is_privileged(dom) && conn.out.len() >= self.quota.queued_messages {
                break;
            }
            let (msg, moved) = conn.ring.read_message(ring)?;
            notify |= moved;
            let Some(msg) = msg else {
                break;
            };
            out.merge(self.handle(dom, &msg));
            notify |= self.flush_ring(dom, ring)?;
        }
        out.wake.retain(|&d| d != dom);
        Ok((notify, out))
    }

    /// Writes `dom`'s queued output into its ring as space allows; true if `rsp_prod`
    /// moved (notify the domain).
    pub fn flush_ring<R: RingAccess>(
        &mut self,
        dom: DomId,
        ring: &mut R,
    ) -> Result<bool, RingFault> {
        match self.conns.get_mut(&dom) {
            Some(conn) => conn.ring.write_messages(ring, &mut conn.out),
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests;
