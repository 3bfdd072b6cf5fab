//! What the hypervisor does with each vector: the tick, spurious interrupts, the fatal
//! report for exceptions raised by the hypervisor itself, and the hand-off of everything
//! that comes from ring 3 (a guest) to `guest`.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::{
    arch::x86_64::{
        apic, percpu, segments, smp,
        syscall::SYSCALL_VECTOR,
        trap::{self, TrapFrame},
    },
    clock, fatal, guest,
};

const NMI: u64 = 2;

/// NMIs taken (reported by whoever reads it, never from the NMI handler itself).
pub static NMIS: AtomicU64 = AtomicU64::new(0);

pub fn dispatch(frame: &mut TrapFrame) {
    let from_guest = frame.cs & 3 == 3;
    if segments::recover_refused_load(frame) {
        // A vCPU's saved selector the CPU refused to load again: it gets null instead.
        return;
    }
    if trap::recover_failed_return(frame) {
        // The CPU refused to resume the guest with the state it was given: `frame` becomes
        // the guest's entry into its trap-table handler for the fault.
        guest::failed_return(frame);
        return;
    }
    match frame.vector {
        SYSCALL_VECTOR => guest::syscall(frame),
        // Never log here: an NMI can arrive while this CPU holds the console lock.
        NMI => {
            // Another CPU stopped the machine.
            if smp::stopping() {
                crate::arch::x86_64::irq::halt_forever();
            }
            NMIS.fetch_add(1, Ordering::Relaxed);
        }
        v if v < 32 && from_guest => guest::exception(frame),
        v if v < 32 => fatal::exception(frame),
        v if v == apic::TIMER_VECTOR as u64 => {
            apic::on_tick();
            apic::eoi();
            // The boot CPU keeps time, fires the vCPUs' timers and polls the serial line;
            // every CPU preempts what it runs.
            if percpu::cpu() == 0 {
                clock::tick();
                guest::on_tick();
                crate::backend::console::poll_serial();
            }
            crate::sched::on_tick(frame);
            if from_guest {
                guest::interrupted(frame);
            }
        }
        // Another CPU wants this one to look at what it runs: the way back does that.
        v if v == smp::KICK_VECTOR as u64 => apic::eoi(),
        v if v == smp::FLUSH_VECTOR as u64 => {
            smp::serve_flush();
            apic::eoi();
        }
        // A device's MSI-X message: its driver runs (with callbacks), then the EOI.
        v if crate::drivers::irq::is_device_vector(v) => {
            crate::drivers::irq::dispatch(v);
            apic::eoi();
        }
        // A spurious interrupt is not acknowledged (Intel SDM vol. 3, 11.9).
        v if v == apic::SPURIOUS_VECTOR as u64 => {}
        v => {
            log::warn!("unexpected interrupt on vector {v:#x}; ignored");
            apic::eoi();
        }
    }
    // Back to a guest: deliver an event that became pending and is not masked.
    if frame.cs & 3 == 3 {
        guest::before_return(frame);
    }
}
