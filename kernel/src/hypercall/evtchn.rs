//! `event_channel_op`: the 2-level event-channel ABI (`event_channel.h`). The port table
//! and the bit rules are `ferrovisor::evtchn`; this is the guest-facing side. Ports to
//! other domains come with domain control (only the domain itself exists for now).

use ferrovisor::evtchn::{self, SendTarget};
use ferrovisor_abi::{
    errno::XenErrno,
    xen::{
        event_channel::{
            EvtchnAllocUnbound, EvtchnBindIpi, EvtchnBindVcpu, EvtchnBindVirq, EvtchnClose,
            EvtchnOp, EvtchnSend, EvtchnStatus, EvtchnUnmask,
        },
        xen::DOMID_SELF,
    },
};
use zerocopy::{FromBytes, IntoBytes};

use super::Result;
use crate::domain::{self, Domain};

fn read<T: FromBytes>(d: &Domain, arg: u64) -> core::result::Result<T, XenErrno> {
    let mut buf = [0u8; 32];
    let len = core::mem::size_of::<T>();
    d.read_guest(arg, &mut buf[..len])
        .map_err(|_| XenErrno::Efault)?;
    T::read_from_bytes(&buf[..len]).map_err(|_| XenErrno::Efault)
}

fn write<T: IntoBytes + zerocopy::Immutable>(
    d: &Domain,
    arg: u64,
    v: &T,
) -> core::result::Result<(), XenErrno> {
    d.write_guest(arg, v.as_bytes())
        .map_err(|_| XenErrno::Efault)
}

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
    domain::with_current(|d| one(d, op, arg)).ok_or(XenErrno::Esrch)?
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
        EvtchnOp::AllocUnbound => {
            let mut a: EvtchnAllocUnbound = read(d, arg)?;
            check_dom(d, a.dom)?;
            let remote = if a.remote_dom == DOMID_SELF {
                d.id.0
            } else {
                a.remote_dom
            };
            a.port = d.evtchn.alloc_unbound(remote)?;
            write(d, arg, &a)?;
        }
        EvtchnOp::BindVcpu => {
            let b: EvtchnBindVcpu = read(d, arg)?;
            d.evtchn.bind_vcpu(b.port, b.vcpu)?;
        }
        EvtchnOp::Close => {
            let c: EvtchnClose = read(d, arg)?;
            let closed = d.evtchn.close(c.port)?;
            evtchn::clear_pending(&d.event_words(), closed.port);
            // A peer in another domain: none exist yet.
        }
        EvtchnOp::Send => {
            let s: EvtchnSend = read(d, arg)?;
            match d.evtchn.send(s.port)? {
                // A blocked target vCPU becomes runnable.
                SendTarget::Local { vcpu, port } => d.notify(port, vcpu),
                SendTarget::Remote { .. } | SendTarget::Dropped => {}
            }
        }
        EvtchnOp::Unmask => {
            let u: EvtchnUnmask = read(d, arg)?;
            if !d.evtchn.is_valid_port(u.port) {
                return Err(XenErrno::Einval);
            }
            let vcpu = d.evtchn.notify_vcpu(u.port).unwrap_or(0);
            let _ = evtchn::unmask(&d.event_words(), u.port, vcpu);
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
        EvtchnOp::BindInterdomain | EvtchnOp::Reset => return Err(XenErrno::Enosys),
        EvtchnOp::BindPirq => return Err(XenErrno::Eperm),
    }
    Ok(0)
}
