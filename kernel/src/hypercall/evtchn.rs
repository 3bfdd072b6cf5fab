//! `event_channel_op`: the 2-level event-channel ABI (`event_channel.h`). The port table
//! and the bit rules are `ferrovisor::evtchn`; this is the guest-facing side. Ports to
//! other domains come with domain control (only the domain itself exists for now).

use ferrovisor::evtchn::{self, SendTarget};
use ferrovisor_abi::{
    errno::XenErrno,
    xen::{
        event_channel::{
            EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindIpi, EvtchnBindVcpu,
            EvtchnBindVirq, EvtchnClose, EvtchnOp, EvtchnReset, EvtchnSend, EvtchnStatus,
            EvtchnUnmask,
        },
        xen::{DOMID_SELF, DOMID_XEN},
    },
};

use super::{read_struct as read, write_struct as write, Result};
use ferrovisor::mm::frame_table::DomId;

use crate::domain::{self, Domain, Domains};

/// Only the calling domain may be named (`DOMID_SELF` or its own id).
fn check_dom(d: &Domain, dom: u16) -> core::result::Result<(), XenErrno> {
    if dom == DOMID_SELF || dom == d.id.0 {
        Ok(())
    } else {
        Err(XenErrno::Esrch)
    }
}

pub fn event_channel_op([cmd, arg, ..]: [u64; 5]) -> Result {
    let op = EvtchnOp::try_from(cmd as u32).map_err(|_| XenErrno::Enosys)?;
    domain::with_domains(|doms| match op {
        EvtchnOp::BindInterdomain => bind_interdomain(doms, arg),
        EvtchnOp::AllocUnbound => alloc_unbound(doms, arg),
        EvtchnOp::Send => send(doms, arg),
        EvtchnOp::Close => close(doms, arg),
        EvtchnOp::Reset => reset(doms, arg),
        _ => one(doms.current().ok_or(XenErrno::Esrch)?, op, arg),
    })
}

/// `EVTCHNOP_alloc_unbound`: a port of `dom` (the caller, or any domain for the
/// privileged one, as a toolstack sets up a guest's channels) that `remote_dom` may bind.
fn alloc_unbound(doms: &mut Domains, arg: u64) -> Result {
    let caller = doms.current().ok_or(XenErrno::Esrch)?;
    let caller_id = caller.id;
    let mut a: EvtchnAllocUnbound = read(caller, arg)?;
    let dom = super::named_domain(caller_id, a.dom)?;
    let remote = if a.remote_dom == DOMID_SELF {
        caller_id.0
    } else {
        a.remote_dom
    };
    a.port = doms
        .get_mut(dom)
        .ok_or(XenErrno::Esrch)?
        .evtchn
        .alloc_unbound(remote)?;
    write(doms.current().ok_or(XenErrno::Esrch)?, arg, &a)?;
    Ok(0)
}

/// `EVTCHNOP_bind_interdomain`: connects a new port of the caller to another domain's
/// unbound port that waits for it. The peer may have signalled already, so the new port
/// starts pending (`event_channel.h`).
fn bind_interdomain(doms: &mut Domains, arg: u64) -> Result {
    let caller = doms.current().ok_or(XenErrno::Esrch)?;
    let caller_id = caller.id;
    let mut b: EvtchnBindInterdomain = read(caller, arg)?;
    // Any domain may be named: the remote port itself says whom it waits for.
    let remote = if b.remote_dom == DOMID_SELF {
        caller_id
    } else {
        DomId(b.remote_dom)
    };
    let port = if remote == caller_id {
        caller.evtchn.bind_loopback(b.remote_port)?
    } else {
        let (local, peer) = doms.pair_mut(caller_id, remote).ok_or(XenErrno::Esrch)?;
        evtchn::bind_interdomain(&mut local.evtchn, &mut peer.evtchn, b.remote_port)?
    };
    let caller = doms.current().ok_or(XenErrno::Esrch)?;
    b.local_port = port;
    caller.notify(port, 0);
    write(caller, arg, &b)?;
    Ok(0)
}

/// `EVTCHNOP_send`: to a port of the same domain, another domain, or one of the
/// hypervisor's backends.
fn send(doms: &mut Domains, arg: u64) -> Result {
    let caller = doms.current().ok_or(XenErrno::Esrch)?;
    let s: EvtchnSend = read(caller, arg)?;
    match caller.evtchn.send(s.port)? {
        // A blocked target vCPU becomes runnable.
        SendTarget::Local { vcpu, port } => caller.notify(port, vcpu),
        SendTarget::Remote { dom, port } if dom == DOMID_XEN => {
            let id = caller.id;
            crate::backend::notify(doms, id, port);
        }
        SendTarget::Remote { dom, port } => {
            if let Some(peer) = doms.get_mut(DomId(dom)) {
                let vcpu = peer.evtchn.notify_vcpu(port).unwrap_or(0);
                peer.notify(port, vcpu);
            }
        }
        SendTarget::Dropped => {}
    }
    Ok(0)
}

/// Closes `port` of `dom`; a peer in another domain sees its end go back to unbound.
fn close_port(doms: &mut Domains, dom: DomId, port: u32) -> core::result::Result<(), XenErrno> {
    let d = doms.get_mut(dom).ok_or(XenErrno::Esrch)?;
    let closed = d.evtchn.close(port)?;
    if let Some(words) = d.event_words() {
        evtchn::clear_pending(&words, closed.port);
    }
    if let Some(peer) = closed.peer.filter(|p| p.dom != DOMID_XEN) {
        if let Some(p) = doms.get_mut(DomId(peer.dom)) {
            p.evtchn.peer_closed(peer.port, dom.0, closed.port);
        }
    }
    Ok(())
}

fn close(doms: &mut Domains, arg: u64) -> Result {
    let caller = doms.current().ok_or(XenErrno::Esrch)?;
    let c: EvtchnClose = read(caller, arg)?;
    let id = caller.id;
    close_port(doms, id, c.port)?;
    Ok(0)
}

/// `EVTCHNOP_reset`: closes every port of the caller (or, for the privileged domain, of
/// any domain).
fn reset(doms: &mut Domains, arg: u64) -> Result {
    let caller = doms.current().ok_or(XenErrno::Esrch)?;
    let r: EvtchnReset = read(caller, arg)?;
    let dom = super::named_domain(caller.id, r.dom)?;
    let d = doms.get_mut(dom).ok_or(XenErrno::Esrch)?;
    let closed = d.evtchn.reset();
    if let Some(words) = d.event_words() {
        for c in &closed {
            evtchn::clear_pending(&words, c.port);
        }
    }
    for c in closed {
        if let Some(peer) = c.peer.filter(|p| p.dom != DOMID_XEN) {
            if let Some(p) = doms.get_mut(DomId(peer.dom)) {
                p.evtchn.peer_closed(peer.port, dom.0, c.port);
            }
        }
    }
    Ok(0)
}

fn one(d: &mut Domain, op: EvtchnOp, arg: u64) -> Result {
    match op {
        EvtchnOp::BindVirq => {
            let mut b: EvtchnBindVirq = read(d, arg)?;
            b.port = d.evtchn.bind_virq(b.virq, b.vcpu)?;
            write(d, arg, &b)?;
        }
        EvtchnOp::BindIpi => {
            let mut b: EvtchnBindIpi = read(d, arg)?;
            b.port = d.evtchn.bind_ipi(b.vcpu)?;
            write(d, arg, &b)?;
        }
        EvtchnOp::BindVcpu => {
            let b: EvtchnBindVcpu = read(d, arg)?;
            d.evtchn.bind_vcpu(b.port, b.vcpu)?;
        }
        EvtchnOp::Unmask => {
            let u: EvtchnUnmask = read(d, arg)?;
            if !d.evtchn.is_valid_port(u.port) {
                return Err(XenErrno::Einval);
            }
            let vcpu = d.evtchn.notify_vcpu(u.port).unwrap_or(0);
            if let Some(words) = d.event_words() {
                let _ = evtchn::unmask(&words, u.port, vcpu);
            }
            d.wake_if_pending(vcpu);
        }
        EvtchnOp::Status => {
            let req: EvtchnStatus = read(d, arg)?;
            check_dom(d, req.dom)?;
            let mut st = d.evtchn.status(req.port)?;
            st.dom = req.dom; // Xen echoes the caller's domain id
            write(d, arg, &st)?;
        }
        // The FIFO ABI is not offered: Linux falls back to 2-level on -ENOSYS.
        EvtchnOp::InitControl | EvtchnOp::ExpandArray | EvtchnOp::SetPriority => {
            return Err(XenErrno::Enosys)
        }
        // Handled with every domain in reach, in `event_channel_op`.
        EvtchnOp::BindInterdomain
        | EvtchnOp::AllocUnbound
        | EvtchnOp::Send
        | EvtchnOp::Close
        | EvtchnOp::Reset => return Err(XenErrno::Einval),
        EvtchnOp::BindPirq => return Err(XenErrno::Eperm),
    }
    Ok(0)
}
