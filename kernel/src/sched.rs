//! The scheduler: vCPUs share the physical CPU round-robin, with block/wake and
//! preemption on the tick.
//!
//! The hypervisor has one stack per physical CPU and no threads of its own: every entry
//! from a guest leaves the guest's registers in a trap frame on that stack, and a context
//! switch is replacing that frame with the next vCPU's saved one, together with the
//! per-vCPU hardware state (page tables, FS/GS bases, FPU registers, CR0.TS, the GDT
//! window), before the normal return path `iretq`s into it. One physical CPU runs vCPUs
//! for now; the state that would be per-CPU (`Domain::vcpu`, the running slot) is the only
//! thing SMP has to multiply.

use crate::{
    arch::x86_64::{cpu, irq, percpu, trap::TrapFrame},
    domain::{self, Domain},
    memory,
};

/// Ticks a vCPU runs before another runnable one gets the CPU (30 ms at 100 Hz).
const TIMESLICE_TICKS: u32 = 3;

/// The next runnable vCPU after the running one, round-robin by id.
fn pick_next(d: &Domain) -> Option<usize> {
    let cur = d.vcpu.id;
    let after = d.others.iter().position(|v| v.id > cur && v.runnable());
    after.or_else(|| d.others.iter().position(|v| v.runnable()))
}

/// Puts `d.others[next]` on the CPU in place of the running vCPU; `frame` becomes its
/// registers.
pub fn switch_to(d: &mut Domain, frame: &mut TrapFrame, next: usize) {
    // Save the running vCPU's live state.
    d.vcpu.regs = *frame;
    d.vcpu.fs_base = cpu::guest_fs_base();
    let active_gs = percpu::guest_gs_base();
    cpu::save_fpu(&mut d.vcpu.fpu);
    let prev_state = if d.vcpu.blocked {
        domain::RUNSTATE_BLOCKED
    } else if d.vcpu.online {
        domain::RUNSTATE_RUNNABLE
    } else {
        domain::RUNSTATE_OFFLINE
    };
    d.set_runstate(prev_state);
    // The running vCPU's active GS base goes with it; it comes back through `saved` on the
    // way in (see below).
    let prev_gs = active_gs;

    core::mem::swap(&mut d.vcpu, &mut d.others[next]);
    // `others` stays in id order: the vCPU just parked sits where the new one was.
    d.others[next].saved_gs_base_active = prev_gs;
    d.others.sort_unstable_by_key(|v| v.id);

    // Load the new one.
    let l4 = if d.vcpu.pv.in_kernel {
        Some(d.vcpu.kernel_l4)
    } else {
        d.vcpu.user_l4
    };
    if let Some(l4) = l4 {
        // SAFETY: a validated L4 of the domain (typed by the frame table while it is a
        // vCPU's base pointer), whose hypervisor slots map the hypervisor.
        unsafe { crate::arch::x86_64::paging::activate(l4) };
    }
    let _ = cpu::set_guest_fs_base(d.vcpu.fs_base);
    let _ = percpu::set_guest_gs_base(d.vcpu.saved_gs_base_active);
    cpu::restore_fpu(&d.vcpu.fpu);
    cpu::set_task_switched(d.vcpu.fpu_ts);
    let _ = memory::map_guest_gdt(d.vcpu.gdt.frames());
    let _ = memory::load_guest_ldt(&d.vcpu.ldt_frames, d.vcpu.ldt_entries);
    d.set_runstate(domain::RUNSTATE_RUNNING);
    d.publish_time();
    d.slice_ticks = 0;
    *frame = d.vcpu.regs;
}

/// The tick, with the CPU in `frame`: preempt a guest vCPU whose slice is over when
/// another is runnable.
pub fn on_tick(frame: &mut TrapFrame) {
    if frame.cs & 3 != 3 {
        return; // the hypervisor itself was interrupted (idle in `block`)
    }
    domain::with_current(|d| {
        d.slice_ticks += 1;
        if d.slice_ticks >= TIMESLICE_TICKS {
            if let Some(next) = pick_next(d) {
                switch_to(d, frame, next);
            } else {
                d.slice_ticks = 0;
            }
        }
    });
}

/// `SCHEDOP_yield`: another runnable vCPU gets the CPU.
pub fn yield_now(frame: &mut TrapFrame) {
    frame.rax = 0;
    domain::with_current(|d| {
        if let Some(next) = pick_next(d) {
            switch_to(d, frame, next);
        }
    });
}

/// `SCHEDOP_block`: unmask the running vCPU's events and wait until one is pending. While
/// it waits, other runnable vCPUs run; with none, the CPU idles (the tick keeps firing
/// timers, which wake vCPUs).
pub fn block(frame: &mut TrapFrame) {
    frame.rax = 0; // what `block` returns, whenever it does
    let switched = domain::with_current(|d| {
        d.set_upcall_mask(0);
        if d.upcall_pending() {
            return true; // nothing to wait for
        }
        d.vcpu.blocked = true;
        d.set_runstate(domain::RUNSTATE_BLOCKED);
        switch_away(d, frame)
    });
    if switched != Some(false) {
        return;
    }
    // Nobody else to run: idle until some vCPU has an event.
    idle_until(frame, |d| d.upcall_pending());
}

/// `SCHEDOP_poll`: wait until one of the given ports is pending or the timeout passes,
/// events staying masked. Like `block`, other vCPUs run meanwhile; `Domain::notify` and
/// the timer wake the poller.
pub fn poll(frame: &mut TrapFrame) {
    let p = match crate::hypercall::vcpu::read_poll(frame.rsi) {
        Ok(p) => p,
        Err(e) => {
            frame.rax = e.to_hypercall_ret() as u64;
            return;
        }
    };
    frame.rax = 0;
    let ready = |d: &Domain, ports: &[u32]| ferrovisor::evtchn::poll_ready(&d.event_words(), ports);
    let switched = domain::with_current(|d| {
        if ready(d, &p.ports) || p.deadline.is_some_and(|t| t <= crate::clock::now_ns()) {
            return true;
        }
        d.vcpu.blocked = true;
        d.vcpu.poll = Some(p.clone());
        d.set_runstate(domain::RUNSTATE_BLOCKED);
        switch_away(d, frame)
    });
    if switched != Some(false) {
        return;
    }
    idle_until(frame, |d| {
        let still_waiting = match &d.vcpu.poll {
            Some(p) => !ready(d, &p.ports),
            None => false, // woken by `notify` or the timeout
        };
        if !still_waiting {
            d.vcpu.poll = None;
        }
        !still_waiting
    });
}

/// Switches from the running vCPU to the next runnable one; false when there is none.
fn switch_away(d: &mut Domain, frame: &mut TrapFrame) -> bool {
    match pick_next(d) {
        Some(next) => {
            switch_to(d, frame, next);
            true
        }
        None => false,
    }
}

/// The running vCPU waits with nothing else runnable: idle until `woken` says it may go
/// on (it is then running again) or another vCPU became runnable (it is switched to).
fn idle_until(frame: &mut TrapFrame, mut woken: impl FnMut(&mut Domain) -> bool) {
    loop {
        irq::enable_and_wait();
        irq::disable();
        let done = domain::with_current(|d| {
            if woken(d) {
                d.vcpu.blocked = false;
                d.set_runstate(domain::RUNSTATE_RUNNING);
                return true;
            }
            switch_away(d, frame)
        });
        if done != Some(false) {
            return;
        }
    }
}

/// `VCPUOP_down` of the running vCPU: it stops and another runs (or the CPU idles until
/// one can).
pub fn down_self(frame: &mut TrapFrame) {
    frame.rax = 0;
    domain::with_current(|d| d.vcpu.online = false);
    loop {
        let done = domain::with_current(|d| switch_away(d, frame));
        if done != Some(false) {
            return;
        }
        irq::enable_and_wait();
        irq::disable();
    }
}
