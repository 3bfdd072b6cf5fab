//! The console backend: each domain's console ring (`io/console.h`, the page and port
//! `start_info.console.domU` names) is drained into the domain's console history
//! (`ferrovisor::guest_console`), mirrored to the hypervisor's log with a `(d<id>)`
//! prefix (a domU's only with `guest_console_mirror=on`, and rate-limited: `guest_log`),
//! and fed with input the privileged domain writes (`domctl ConsoleWrite`).

use ferrovisor::{
    guest_console::{
        switch::{InputSwitch, InputTarget, Routed},
        ConsoleRing,
    },
    mm::frame_table::DomId,
};
use ferrovisor_abi::xen::console::{
    XenconsRingIdx, XENCONS_IN_CONS_OFFSET, XENCONS_IN_OFFSET, XENCONS_IN_PROD_OFFSET,
    XENCONS_OUT_CONS_OFFSET, XENCONS_OUT_OFFSET, XENCONS_OUT_PROD_OFFSET,
};

use crate::{
    arch::x86_64::{irq::IrqMutex, phys::SharedFrame},
    domain::{self, Domain, DOM0},
};

/// Where serial input goes: the hypervisor, dom0, or a domU's console; three Ctrl-A in
/// a row move it on (Xen's convention). Lock order: after `DOMAINS`.
static SWITCH: IrqMutex<InputSwitch> = IrqMutex::new(InputSwitch::new());

/// `VIRQ_CONSOLE`: dom0's console has input to read (`console_io` read).
const VIRQ_CONSOLE: u32 = 2;

/// `dom` has a console that can take serial input.
pub fn attach(dom: DomId) {
    let mut sw = SWITCH.lock();
    sw.add_domain(dom.0);
    if dom == DOM0 {
        // Boot is done: input goes to dom0, as Xen hands it over.
        sw.set_target(InputTarget::Domain(dom.0));
        log::info!("*** serial input to d0 (type Ctrl-A three times to switch)");
    }
}

/// `dom` is gone: input that went to it goes to dom0.
pub fn detach(dom: DomId) {
    crate::guest_log::forget(dom);
    if let Some(t) = SWITCH.lock().remove_domain(dom.0) {
        log::info!("*** serial input to {}", name(t));
    }
}

fn name(t: InputTarget) -> alloc::string::String {
    match t {
        InputTarget::Hypervisor => "the hypervisor".into(),
        InputTarget::Domain(id) => alloc::format!("d{id}"),
    }
}

/// Takes what arrived on the serial line (called on the tick) and routes it.
pub fn poll_serial() {
    let mut buf = [0u8; 64];
    let n = crate::console::read_serial(&mut buf);
    for &b in &buf[..n] {
        let routed = SWITCH.lock().receive(b);
        match routed {
            Routed::Held => {}
            Routed::Switched(t) => {
                log::info!(
                    "*** serial input to {} (type Ctrl-A three times to switch)",
                    name(t)
                );
            }
            Routed::Deliver {
                target: InputTarget::Domain(id),
                bytes,
            } => {
                domain::with_domain(DomId(id), |d| {
                    d.console.queue_input(bytes.as_slice());
                    // A domU reads its ring; dom0 may read either, and uses the ring
                    // once it writes to it (Linux's `hvc_xen` does at once).
                    if d.console_ring.is_some() && (d.id != DOM0 || d.console_ring_used) {
                        service(d);
                    } else {
                        d.send_virq(VIRQ_CONSOLE, 0);
                    }
                });
            }
            // The hypervisor has no key handlers yet.
            Routed::Deliver {
                target: InputTarget::Hypervisor,
                ..
            } => {}
        }
    }
}

/// A domain's console page.
struct ConsolePage<'a>(SharedFrame<'a>);

impl ConsoleRing for ConsolePage<'_> {
    fn out_prod(&self) -> XenconsRingIdx {
        self.0.load_acquire_u32(XENCONS_OUT_PROD_OFFSET)
    }
    fn out_cons(&self) -> XenconsRingIdx {
        self.0.read_u32(XENCONS_OUT_CONS_OFFSET)
    }
    fn read_out(&self, offset: usize, dst: &mut [u8]) {
        self.0.read_bytes(XENCONS_OUT_OFFSET + offset, dst);
    }
    fn set_out_cons(&self, cons: XenconsRingIdx) {
        self.0.store_release_u32(XENCONS_OUT_CONS_OFFSET, cons);
    }
    fn in_cons(&self) -> XenconsRingIdx {
        self.0.load_acquire_u32(XENCONS_IN_CONS_OFFSET)
    }
    fn in_prod(&self) -> XenconsRingIdx {
        self.0.read_u32(XENCONS_IN_PROD_OFFSET)
    }
    fn write_in(&self, offset: usize, src: &[u8]) {
        self.0.write_bytes(XENCONS_IN_OFFSET + offset, src);
    }
    fn set_in_prod(&self, prod: XenconsRingIdx) {
        self.0.store_release_u32(XENCONS_IN_PROD_OFFSET, prod);
    }
}

/// Moves output out of and queued input into the domain's console ring, and signals its
/// port if anything moved.
pub fn service(d: &mut Domain) {
    // The console ring frame is held writable (`build::hold_ring`: never a page or
    // descriptor table) from the build until the domain is destroyed.
    let Some((frame, port)) = d.console_ring.as_ref() else {
        return;
    };
    let port = *port;
    let page = ConsolePage(SharedFrame::new(frame));
    let (id, raw) = (d.id, d.id == DOM0);
    let done = d.console.service(&page, &mut |text| {
        if raw {
            crate::console::write_raw(text);
        } else {
            crate::guest_log::console_line(id, text);
        }
    });
    if done.consumed > 0 {
        d.console_ring_used = true;
    }
    if let Some(e) = done.error {
        crate::guest_log::warn(
            id,
            format_args!("console ring is broken ({e:?}); ignoring it"),
        );
    }
    if done.notify() {
        let vcpu = d.evtchn.notify_vcpu(port).unwrap_or(0);
        d.notify(port, vcpu);
    }
}
