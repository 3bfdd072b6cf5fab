//! The xenstore service (`ferrovisor::xenstore`) on each domain's store ring
//! (`start_info.store_mfn` / `store_evtchn`, the `xs_wire.h` page). Requests are handled
//! when the domain signals its store port; replies and watch events go back into its
//! ring, and into the rings of other domains whose watches fired.

use alloc::{collections::VecDeque, string::String, vec::Vec};

use ferrovisor::{
    mm::frame_table::DomId,
    xenstore::{Outcome, RingAccess, Xenstore},
};
use ferrovisor_abi::xen::xs_wire::{
    XenstoreDomainInterface, XsErrorCode, XsType, XENSTORE_ERROR_OFFSET, XENSTORE_REQ_CONS_OFFSET,
    XENSTORE_REQ_PROD_OFFSET, XENSTORE_RSP_CONS_OFFSET, XENSTORE_RSP_PROD_OFFSET,
    XENSTORE_SERVER_FEATURES_OFFSET, XENSTORE_SERVER_FEATURE_ERROR,
};

const REQ: usize = core::mem::offset_of!(XenstoreDomainInterface, req);
const RSP: usize = core::mem::offset_of!(XenstoreDomainInterface, rsp);

use crate::{
    arch::x86_64::{irq::IrqMutex, phys::SharedFrame},
    domain::{Domain, Domains},
};

/// The service. Lock order: `DOMAINS`, then this.
static XENSTORE: IrqMutex<Option<Xenstore>> = IrqMutex::new(None);

/// Starts the service (dom0 is connected from the start).
pub fn init() {
    *XENSTORE.lock() = Some(Xenstore::new());
}

/// A domain's store page.
struct StorePage<'a>(SharedFrame<'a>);

impl RingAccess for StorePage<'_> {
    fn req_cons(&self) -> u32 {
        self.0.read_u32(XENSTORE_REQ_CONS_OFFSET)
    }
    fn req_prod(&self) -> u32 {
        self.0.load_acquire_u32(XENSTORE_REQ_PROD_OFFSET)
    }
    fn set_req_cons(&mut self, idx: u32) {
        self.0.store_release_u32(XENSTORE_REQ_CONS_OFFSET, idx);
    }
    fn rsp_cons(&self) -> u32 {
        self.0.load_acquire_u32(XENSTORE_RSP_CONS_OFFSET)
    }
    fn rsp_prod(&self) -> u32 {
        self.0.read_u32(XENSTORE_RSP_PROD_OFFSET)
    }
    fn set_rsp_prod(&mut self, idx: u32) {
        self.0.store_release_u32(XENSTORE_RSP_PROD_OFFSET, idx);
    }
    fn read_req(&self, offset: usize, buf: &mut [u8]) {
        self.0.read_bytes(REQ + offset, buf);
    }
    fn write_rsp(&mut self, offset: usize, data: &[u8]) {
        self.0.write_bytes(RSP + offset, data);
    }
    fn set_error(&mut self, error: u32) {
        self.0.write_u32(XENSTORE_ERROR_OFFSET, error);
    }
}

fn page(d: &Domain) -> Option<(StorePage<'_>, u32)> {
    // The store ring frame is held writable (`build::hold_ring`: never a page or
    // descriptor table) from the build until the domain is destroyed.
    let (frame, port) = d.store_ring.as_ref()?;
    Some((StorePage(SharedFrame::new(frame)), *port))
}

/// Prepares a new domain's store page (the service offers the `error` field) and connects
/// the domain to the service (`/local/domain/<id>`, `@introduceDomain`).
pub fn introduce(doms: &mut Domains, dom: DomId) {
    if let Some((p, _)) = doms.get(dom).and_then(page) {
        p.0.write_u32(
            XENSTORE_SERVER_FEATURES_OFFSET,
            XENSTORE_SERVER_FEATURE_ERROR,
        );
    }
    if dom != crate::domain::DOM0 {
        // dom0 is connected from the start.
        let outcome = match XENSTORE.lock().as_mut().map(|xs| xs.introduce(dom.0)) {
            Some(Ok(o)) => o,
            Some(Err(e)) => {
                log::warn!("xenstore: introducing d{}: {e:?}", dom.0);
                return;
            }
            None => return,
        };
        deliver(doms, &outcome);
    }
    write_domain_keys(doms, dom);
}

/// The keys a toolstack writes for every domain it starts (Xen's `xl` does the same):
/// its name and id, each vCPU's `availability` (Linux reads them at boot to know which
/// vCPUs to bring up) and the balloon target (`memory/target`, KiB).
fn write_domain_keys(doms: &mut Domains, dom: DomId) {
    let Some(d) = doms.get(dom) else {
        return;
    };
    let home = alloc::format!("/local/domain/{}", dom.0);
    let mut keys: Vec<(alloc::string::String, alloc::string::String)> = alloc::vec![
        (alloc::format!("{home}/name"), d.name.clone()),
        (alloc::format!("{home}/domid"), alloc::format!("{}", dom.0)),
        (
            alloc::format!("{home}/memory/target"),
            alloc::format!("{}", d.target_pages * 4),
        ),
    ];
    for v in d.vcpus() {
        keys.push((
            alloc::format!("{home}/cpu/{}/availability", v.id),
            alloc::string::String::from("online"),
        ));
    }
    for (path, value) in keys {
        if let Err(e) = write(doms, &path, &value) {
            log::warn!("xenstore: writing {path}: {e:?}");
        }
    }
}

/// Disconnects a dying domain and removes its `/local/domain/<id>` tree
/// (`@releaseDomain` fires).
pub fn release(doms: &mut Domains, dom: DomId) {
    let outcomes: Vec<Outcome> = {
        let mut xs = XENSTORE.lock();
        let Some(xs) = xs.as_mut() else {
            return;
        };
        let mut v = Vec::new();
        if let Ok(o) = xs.release(dom.0) {
            v.push(o);
        }
        v.push(xs.remove_domain_tree(dom.0));
        v
    };
    for o in &outcomes {
        deliver(doms, o);
    }
}

/// A domain shut down or crashed: `@releaseDomain` fires (the domain stays connected).
pub fn domain_exception(doms: &mut Domains) {
    let outcome = XENSTORE.lock().as_mut().map(Xenstore::domain_exception);
    if let Some(o) = outcome {
        deliver(doms, &o);
    }
}

/// Domain `dom` signalled its store port: handle its requests.
pub fn service(doms: &mut Domains, dom: DomId) {
    let Some((mut p, port)) = doms.get(dom).and_then(page) else {
        return;
    };
    let result = XENSTORE
        .lock()
        .as_mut()
        .map(|xs| xs.service_ring(dom.0, &mut p));
    match result {
        Some(Ok((notify, outcome))) => {
            if notify {
                signal(doms, dom, port);
            }
            deliver(doms, &outcome);
        }
        Some(Err(fault)) => {
            crate::guest_log::warn(
                dom,
                format_args!("xenstore ring fault ({fault:?}); ring closed"),
            );
            p.set_error(fault.error_code());
        }
        None => {}
    }
}

/// Runs a request with the privileged domain's rights on behalf of the hypervisor (its
/// toolstack duties: `control/shutdown`, `memory/target`), delivering the watch events it
/// fires.
pub fn request(doms: &mut Domains, kind: XsType, payload: &[u8]) -> Result<Vec<u8>, XsErrorCode> {
    let (result, outcome) = XENSTORE
        .lock()
        .as_mut()
        .map(|xs| xs.request(kind, payload))
        .ok_or(XsErrorCode::Eio)?;
    deliver(doms, &outcome);
    result
}

/// The hypervisor's own watches that fired and are not handled yet, oldest first. They
/// are queued here, never handled inside a xenstore call, so that a backend reacting to
/// one may use the store itself: [`crate::backend::devices::drain`] takes them after the
/// call that fired them. A leaf lock.
static INTERNAL_EVENTS: IrqMutex<VecDeque<(String, String)>> = IrqMutex::new(VecDeque::new());

/// The oldest of the hypervisor's fired watches, `(path, token)`.
pub fn next_internal_event() -> Option<(String, String)> {
    INTERNAL_EVENTS.lock().pop_front()
}

/// Registers the hypervisor's own watch on `path` (and below), reported under `token`.
pub fn watch(path: &str, token: &str) -> Result<(), XsErrorCode> {
    XENSTORE
        .lock()
        .as_mut()
        .ok_or(XsErrorCode::Eio)?
        .watch_internal(path, token)
}

/// Removes a watch [`watch`] registered.
pub fn unwatch(path: &str, token: &str) {
    if let Some(xs) = XENSTORE.lock().as_mut() {
        let _ = xs.unwatch_internal(path, token);
    }
}

/// A request's payload: `path` and its NUL, then `rest` (each xs_wire argument after the
/// path NUL-terminated by the caller where the request needs it).
fn payload(path: &str, rest: &[&[u8]]) -> Vec<u8> {
    let mut p = Vec::from(path.as_bytes());
    p.push(0);
    for r in rest {
        p.extend_from_slice(r);
    }
    p
}

/// Reads node `path` as the hypervisor (the privileged domain's rights).
pub fn read(doms: &mut Domains, path: &str) -> Option<Vec<u8>> {
    request(doms, XsType::Read, &payload(path, &[])).ok()
}

/// Writes `value` to node `path` as the hypervisor, creating the path.
pub fn write(doms: &mut Domains, path: &str, value: &str) -> Result<(), XsErrorCode> {
    request(doms, XsType::Write, &payload(path, &[value.as_bytes()])).map(|_| ())
}

/// Sets the permission list of `path` (`n0`, `r5`: the first entry names the owner).
pub fn set_perms(doms: &mut Domains, path: &str, perms: &[String]) -> Result<(), XsErrorCode> {
    let mut list = Vec::new();
    for p in perms {
        list.extend_from_slice(p.as_bytes());
        list.push(0);
    }
    request(doms, XsType::SetPerms, &payload(path, &[&list])).map(|_| ())
}

/// Creates directory `path` (no error if it exists).
pub fn mkdir(doms: &mut Domains, path: &str) -> Result<(), XsErrorCode> {
    request(doms, XsType::Mkdir, &payload(path, &[])).map(|_| ())
}

/// Removes `path` and everything below it (no error if it is gone).
pub fn remove(doms: &mut Domains, path: &str) {
    let _ = request(doms, XsType::Rm, &payload(path, &[]));
}

/// Writes queued output (watch events) into the rings of the domains `outcome` names,
/// and queues the hypervisor's own fired watches.
fn deliver(doms: &mut Domains, outcome: &Outcome) {
    if !outcome.internal.is_empty() {
        INTERNAL_EVENTS
            .lock()
            .extend(outcome.internal.iter().cloned());
    }
    for &w in &outcome.wake {
        let dom = DomId(w);
        let Some((mut p, port)) = doms.get(dom).and_then(page) else {
            continue;
        };
        let moved = XENSTORE.lock().as_mut().map(|xs| xs.flush_ring(w, &mut p));
        if let Some(Ok(true)) = moved {
            signal(doms, dom, port);
        }
    }
}

fn signal(doms: &mut Domains, dom: DomId, port: u32) {
    if let Some(d) = doms.get_mut(dom) {
        let vcpu = d.evtchn.notify_vcpu(port).unwrap_or(0);
        d.notify(port, vcpu);
    }
}
