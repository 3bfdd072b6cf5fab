//! What the hypervisor does with each vector: the tick, spurious interrupts, and the
//! fatal report for exceptions raised by the hypervisor itself.

use crate::{
    arch::x86_64::{apic, trap::TrapFrame},
    clock, fatal,
};

const NMI: u64 = 2;

pub fn dispatch(frame: &mut TrapFrame) {
    match frame.vector {
        NMI => log::warn!("NMI received at rip={:#x}; continuing", frame.rip),
        v if v < 32 => fatal::exception(frame),
        v if v == apic::TIMER_VECTOR as u64 => {
            clock::tick();
            apic::on_tick();
            apic::eoi();
        }
        // A spurious interrupt is not acknowledged (Intel SDM vol. 3, 11.9).
        v if v == apic::SPURIOUS_VECTOR as u64 => {}
        v => {
            log::warn!("unexpected interrupt on vector {v:#x}; ignored");
            apic::eoi();
        }
    }
}
