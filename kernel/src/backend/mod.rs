//! The hypervisor's own backends, which every domain reaches through an event channel
//! to `DOMID_XEN` (`evtchn::EventChannels::bind_backend`): the xenstore service and the
//! console rings. A guest's `send` on such a port runs the backend at once, in the
//! hypercall; the backend notifies the guest's port when it has produced something.

use ferrovisor::mm::frame_table::DomId;

use crate::domain::{
    lifecycle::{SERVICE_CONSOLE, SERVICE_XENSTORE},
    Domains,
};

pub mod console;
pub mod xenstore;

/// Domain `dom` signalled the backend `service`.
pub fn notify(doms: &mut Domains, dom: DomId, service: u32) {
    match service {
        SERVICE_XENSTORE => xenstore::service(doms, dom),
        SERVICE_CONSOLE => {
            if let Some(d) = doms.get_mut(dom) {
                console::service(d);
            }
        }
        _ => {}
    }
}
