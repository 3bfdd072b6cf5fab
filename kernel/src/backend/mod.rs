//! The hypervisor's own backends, which every domain reaches through an event channel
//! to `DOMID_XEN` (`evtchn::EventChannels::bind_backend`): the xenstore service and the
//! console rings. A guest's `send` on such a port runs the backend at once, in the
//! hypercall; the backend notifies the guest's port when it has produced something.

use ferrovisor::{domain_control::StopTracker, mm::frame_table::DomId};
use ferrovisor_abi::xen::xen::Virq;

use crate::{
    arch::x86_64::irq::IrqMutex,
    domain::{
        lifecycle::{SERVICE_CONSOLE, SERVICE_XENSTORE},
        Domains, DOM0,
    },
};

pub mod console;
pub mod devices;
pub mod disks;
pub mod grant_io;
pub mod switch;
pub mod vbd;
pub mod vif;
pub mod xenstore;

/// Domain `dom` signalled the backend `service`.
pub fn notify(doms: &mut Domains, dom: DomId, service: u32) {
    match service {
        SERVICE_XENSTORE => {
            xenstore::service(doms, dom);
            // The request may have moved a device's frontend on.
            devices::drain(doms);
        }
        SERVICE_CONSOLE => {
            if let Some(d) = doms.get_mut(dom) {
                console::service(d);
            }
        }
        s if s >= devices::SERVICE_DEVICE_BASE => devices::kick(doms, dom, s),
        _ => {}
    }
}

/// The shutdowns and crashes already announced. Lock order: `DOMAINS`, then this.
static STOPS: IrqMutex<StopTracker> = IrqMutex::new(StopTracker::new());

/// Announces the domains that shut down or crashed since the last call, as Xen does:
/// dom0 gets `VIRQ_DOM_EXC` and xenstore fires `@releaseDomain`, so a toolstack learns of
/// it without polling (`fv`'s per-domain monitor watches `@releaseDomain`). Called after
/// a guest's `SCHEDOP_shutdown` and at the start of every control operation (which
/// catches the crashes the hypervisor imposes on a guest).
pub fn announce_stops(doms: &mut Domains) {
    let news = STOPS.lock().update(doms.iter().map(|d| (d.id.0, d.life)));
    if !news {
        return;
    }
    xenstore::domain_exception(doms);
    if let Some(d0) = doms.get_mut(DOM0) {
        d0.send_virq(Virq::DomExc.raw(), 0);
    }
}
