//! The scheduler: the vCPUs of every domain share the physical CPU round-robin, with
//! block/wake and preemption on the tick.
//!
//! The hypervisor has one stack per physical CPU and no threads of its own: every entry
//! from a guest leaves the guest's registers in a trap frame on that stack, and a context
//! switch is replacing that frame with the next vCPU's saved one, together with the
//! per-vCPU hardware state (page tables, FS/GS bases, FPU registers, CR0.TS, the GDT
//! window), before the normal return path `iretq`s into it. Each domain keeps the vCPU
//! that last ran in front (`Domain::vcpu`); the current domain's front vCPU is the live
//! one. One physical CPU runs vCPUs for now; the running slot in `Domains` is the only
//! thing SMP has to multiply.

use ferrovisor::mm::frame_table::DomId;

use crate::{
    arch::x86_64::{cpu, irq, percpu, trap::TrapFrame},
    clock,
    domain::{self, Domain, Domains},
    memory,
};

/// Ticks a vCPU runs before another runnable one gets the CPU (30 ms at 100 Hz).
const TIMESLICE_TICKS: u32 = 3;

/// The next runnable vCPU after the running one, round-robin over (domain, vCPU) ids.
fn pick_next(doms: &Domains) -> Option<(DomId, u32)> {
    let cur = (
        doms.current_id().0,
        doms.get(doms.current_id()).map_or(0, |d| d.vcpu.id),
    );
    let mut first = None;
    for d in doms.iter().filter(|d| d.can_run()) {
        for v in d.vcpus().filter(|v| v.runnable()) {
            let key = (d.id.0, v.id);
            if key == cur {
                continue;
            }
            if key > cur {
                return Some((d.id, v.id));
            }
            first = first.or(Some((d.id, v.id)));
        }
    }
    first
}

/// Saves the live vCPU's state (registers from `frame`, FS/GS bases, FPU) into its slot.
fn save_running(d: &mut Domain, frame: &TrapFrame) {
    d.vcpu.regs = *frame;
    d.vcpu.fs_base = cpu::guest_fs_base();
    d.vcpu.saved_gs_base_active = percpu::guest_gs_base();
    cpu::save_fpu(&mut d.vcpu.fpu);
    let prev_state = if d.vcpu.blocked {
        domain::RUNSTATE_BLOCKED
    } else if d.vcpu.online && d.can_run() {
        domain::RUNSTATE_RUNNABLE
    } else {
        domain::RUNSTATE_OFFLINE
    };
    let ran = clock::now_ns().saturating_sub(d.vcpu.runstate.state_entry_time);
    if d.vcpu.runstate.state == domain::RUNSTATE_RUNNING {
        d.cpu_time_ns += ran;
    }
    d.set_runstate(prev_state);
}

/// Makes the domain's front vCPU live: its page tables, segment bases, FPU and
/// descriptor tables; `frame` becomes its registers.
fn load_running(d: &mut Domain, frame: &mut TrapFrame) {
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
    *frame = d.vcpu.regs;
}

/// Puts vCPU `to` on the CPU in place of the running one; `frame` becomes its registers.
fn switch_to(doms: &mut Domains, frame: &mut TrapFrame, (dom, vcpu): (DomId, u32)) {
    if let Some(d) = doms.current() {
        save_running(d, frame);
    }
    let Some(d) = doms.get_mut(dom) else {
        return;
    };
    if d.vcpu.id != vcpu {
        if let Some(i) = d.others.iter().position(|v| v.id == vcpu) {
            core::mem::swap(&mut d.vcpu, &mut d.others[i]);
            // `others` stays in id order.
            d.others.sort_unstable_by_key(|v| v.id);
        }
    }
    load_running(d, frame);
    doms.set_current(dom);
    doms.slice_ticks = 0;
}

/// The tick, with the CPU in `frame`: preempt a guest vCPU whose slice is over when
/// another is runnable.
pub fn on_tick(frame: &mut TrapFrame) {
    if frame.cs & 3 != 3 {
        return; // the hypervisor itself was interrupted (idle in `reschedule`)
    }
    domain::with_domains(|doms| {
        doms.slice_ticks += 1;
        if doms.slice_ticks >= TIMESLICE_TICKS {
            match pick_next(doms) {
                Some(next) => switch_to(doms, frame, next),
                None => doms.slice_ticks = 0,
            }
        }
    });
}

/// `SCHEDOP_yield`: another runnable vCPU gets the CPU.
pub fn yield_now(frame: &mut TrapFrame) {
    frame.rax = 0;
    domain::with_domains(|doms| {
        if let Some(next) = pick_next(doms) {
            switch_to(doms, frame, next);
        }
    });
}

/// `SCHEDOP_block`: unmask the running vCPU's events and wait until one is pending.
/// While it waits, other runnable vCPUs run; with none, the CPU idles (the tick keeps
/// firing timers, which wake vCPUs).
pub fn block(frame: &mut TrapFrame) {
    frame.rax = 0; // what `block` returns, whenever it does
    domain::with_current(|d| {
        d.set_upcall_mask(0);
        if !d.upcall_pending() {
            d.vcpu.blocked = true;
            d.set_runstate(domain::RUNSTATE_BLOCKED);
        }
    });
    reschedule(frame);
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
    domain::with_current(|d| {
        let ready = ferrovisor::evtchn::poll_ready(&d.event_words(), &p.ports);
        if !ready && p.deadline.is_none_or(|t| t > clock::now_ns()) {
            d.vcpu.blocked = true;
            d.vcpu.poll = Some(p);
            d.set_runstate(domain::RUNSTATE_BLOCKED);
        }
    });
    reschedule(frame);
}

/// `VCPUOP_down` of the running vCPU: it stops and another runs (or the CPU idles until
/// one can).
pub fn down_self(frame: &mut TrapFrame) {
    frame.rax = 0;
    domain::with_current(|d| d.vcpu.online = false);
    reschedule(frame);
}

/// Whether the running vCPU waited and may now go on: an event arrived for a blocked
/// vCPU, or a polled port became pending.
fn wake_running(d: &mut Domain) {
    if !d.vcpu.blocked {
        return;
    }
    let woken = match &d.vcpu.poll {
        Some(p) => ferrovisor::evtchn::poll_ready(&d.event_words(), &p.ports),
        None => d.upcall_pending(),
    };
    if woken {
        d.vcpu.poll = None;
        d.vcpu.blocked = false;
    }
}

/// Whether the running vCPU may go on (runnable, in a domain that may run).
pub fn running_can_continue() -> bool {
    domain::with_current(|d| d.can_run() && d.vcpu.runnable()).unwrap_or(false)
}

/// Called on the way back to a guest: if the running vCPU may not go on (it blocked, went
/// down, or its domain stopped or was paused), put another runnable vCPU on the CPU, or
/// idle until one is (timer ticks and events wake vCPUs meanwhile).
pub fn reschedule(frame: &mut TrapFrame) {
    loop {
        let done = domain::with_domains(|doms| {
            let cur = doms.current()?;
            wake_running(cur);
            if cur.can_run() && cur.vcpu.runnable() {
                if cur.vcpu.runstate.state != domain::RUNSTATE_RUNNING {
                    cur.set_runstate(domain::RUNSTATE_RUNNING);
                }
                return Some(());
            }
            let next = pick_next(doms)?;
            switch_to(doms, frame, next);
            Some(())
        });
        if done.is_some() {
            return;
        }
        irq::enable_and_wait();
        irq::disable();
    }
}
