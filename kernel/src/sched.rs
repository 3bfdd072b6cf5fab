//! The scheduler: the vCPUs of every domain share the physical CPU round-robin, with
//! block/wake and preemption on the tick.
//!
//! The hypervisor has one stack per physical CPU and no threads of its own: every entry
//! from a guest leaves the guest's registers in a trap frame on that stack, and a context
//! switch is replacing that frame with the next vCPU's saved one, together with the
//! per-vCPU hardware state (page tables, FS/GS bases, FPU registers, CR0.TS, the GDT
//! window), before the normal return path `iretq`s into it. `Domains` records which vCPU
//! each physical CPU runs and each vCPU the CPU it is live on (`Vcpu::on_cpu`), so a
//! vCPU runs on one CPU at a time and any CPU may pick any runnable vCPU. A CPU with
//! nothing to run saves the vCPU it had and idles in the hypervisor's own address space.

use ferrovisor::mm::frame_table::DomId;

use crate::{
    arch::x86_64::{
        cpu, irq, memory, percpu,
        segments::DataSelectors,
        smp,
        trap::{self, TrapFrame},
    },
    clock,
    domain::{self, Domain, Domains},
};

/// Ticks a vCPU runs before another runnable one gets the CPU (30 ms at 100 Hz).
const TIMESLICE_TICKS: u32 = 3;

/// The next vCPU for this CPU after `after` (domain, vCPU), round-robin over (domain,
/// vCPU) ids: runnable, in a domain that may run, and on no other CPU.
fn pick_next(doms: &Domains, after: Option<(DomId, u32)>) -> Option<(DomId, u32)> {
    let cur = after.map_or((0, 0), |(d, v)| (d.0, v));
    let mut first = None;
    for d in doms.iter().filter(|d| d.can_run()) {
        for v in d.vcpus().filter(|v| v.runnable() && v.on_cpu.is_none()) {
            let key = (d.id.0, v.id);
            if after.is_some() && key == cur {
                continue;
            }
            if after.is_none() || key > cur {
                return Some((d.id, v.id));
            }
            first = first.or(Some((d.id, v.id)));
        }
    }
    first
}

/// Saves the live vCPU's state (registers from `frame`, FS/GS bases, FPU) into its slot
/// (`d.cur`, the vCPU this CPU runs).
fn save_running(d: &mut Domain, frame: &TrapFrame) {
    let can_run = d.can_run();
    let v = d.cur_mut();
    v.regs = *frame;
    v.fs_base = cpu::guest_fs_base();
    v.selectors = DataSelectors::read();
    v.saved_gs_base_active = percpu::guest_gs_base();
    cpu::save_fpu(&mut v.fpu);
    v.on_cpu = None;
    let prev_state = if v.blocked {
        domain::RUNSTATE_BLOCKED
    } else if v.online && can_run {
        domain::RUNSTATE_RUNNABLE
    } else {
        domain::RUNSTATE_OFFLINE
    };
    let ran = clock::now_ns().saturating_sub(v.runstate.state_entry_time);
    if v.runstate.state == domain::RUNSTATE_RUNNING {
        d.cpu_time_ns += ran;
    }
    d.set_runstate(prev_state);
}

/// Makes the domain's current vCPU (`d.cur`) live on this CPU: its page tables, segment
/// bases, FPU and descriptor tables; `frame` becomes its registers.
fn load_running(d: &mut Domain, frame: &mut TrapFrame) {
    let v = d.cur_mut();
    v.on_cpu = Some(percpu::cpu());
    v.last_cpu = v.on_cpu;
    // User mode without user page tables runs on the kernel's, as `switch_mode` leaves
    // it: CR3 must never keep the previous vCPU's root, which may be another domain's
    // (freed and reused once that domain is destroyed).
    let l4 = if v.pv.in_kernel {
        v.kernel_l4.as_ref()
    } else {
        v.user_l4.as_ref().or(v.kernel_l4.as_ref())
    };
    if let Some(l4) = l4 {
        crate::arch::x86_64::paging::activate_guest(l4);
    }
    let _ = percpu::set_guest_gs_base(v.saved_gs_base_active);
    cpu::restore_fpu(&v.fpu);
    cpu::set_task_switched(v.fpu_ts);
    let _ = memory::map_guest_gdt(v.gdt.frames());
    let _ = memory::load_guest_ldt(&v.ldt_frames, v.ldt_entries);
    // Its own selectors once its descriptor tables are mapped (never the previous vCPU's),
    // then its FS base, which the FS load replaced.
    let _ = v.selectors.load();
    let _ = cpu::set_guest_fs_base(v.fs_base);
    d.set_runstate(domain::RUNSTATE_RUNNING);
    d.publish_time();
    *frame = d.cur().regs;
}

/// Takes the vCPU this CPU runs off it (its state saved), leaving the CPU idle in the
/// hypervisor's own address space.
fn unload(doms: &mut Domains, frame: &TrapFrame) {
    if let Some(d) = doms.current() {
        save_running(d, frame);
    }
    doms.set_running_here(None);
    memory::enter_idle_address_space();
    memory::clear_guest_windows();
}

/// Puts vCPU `to` on this CPU in place of the running one; `frame` becomes its registers.
fn switch_to(doms: &mut Domains, frame: &mut TrapFrame, (dom, vcpu): (DomId, u32)) {
    if let Some(d) = doms.current() {
        save_running(d, frame);
    }
    doms.set_running_here(Some((dom, vcpu)));
    let Some(d) = doms.get_mut(dom) else {
        doms.set_running_here(None);
        return;
    };
    load_running(d, frame);
    let cpu = percpu::cpu() as usize;
    if let Some(t) = doms.slice_ticks.get_mut(cpu) {
        *t = 0;
    }
}

/// The tick, with the CPU in `frame`: preempt a guest vCPU whose slice is over when
/// another is runnable.
pub fn on_tick(frame: &mut TrapFrame) {
    if frame.cs & 3 != 3 {
        return; // the hypervisor itself was interrupted (idle in `reschedule`)
    }
    let cpu = percpu::cpu() as usize;
    domain::with_domains(|doms| {
        let Some(ticks) = doms.slice_ticks.get_mut(cpu) else {
            return;
        };
        *ticks += 1;
        if *ticks >= TIMESLICE_TICKS {
            *ticks = 0;
            let here = doms.running_here();
            if let Some(next) = pick_next(doms, here) {
                switch_to(doms, frame, next);
            }
        }
    });
}

/// `SCHEDOP_yield`: another runnable vCPU gets the CPU.
pub fn yield_now(frame: &mut TrapFrame) {
    frame.rax = 0;
    domain::with_domains(|doms| {
        let here = doms.running_here();
        if let Some(next) = pick_next(doms, here) {
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
            d.cur_mut().blocked = true;
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
        let ready = d
            .event_words()
            .is_none_or(|w| ferrovisor::evtchn::poll_ready(&w, &p.ports));
        if !ready && p.deadline.is_none_or(|t| t > clock::now_ns()) {
            d.cur_mut().blocked = true;
            d.cur_mut().poll = Some(p);
            d.set_runstate(domain::RUNSTATE_BLOCKED);
        }
    });
    reschedule(frame);
}

/// `VCPUOP_down` of the running vCPU: it stops and another runs (or the CPU idles until
/// one can).
pub fn down_self(frame: &mut TrapFrame) {
    frame.rax = 0;
    domain::with_current(|d| d.cur_mut().online = false);
    reschedule(frame);
}

/// Whether the running vCPU waited and may now go on: an event arrived for a blocked
/// vCPU, or a polled port became pending.
fn wake_running(d: &mut Domain) {
    if !d.cur().blocked {
        return;
    }
    let woken = match &d.cur().poll {
        Some(p) => d
            .event_words()
            .is_none_or(|w| ferrovisor::evtchn::poll_ready(&w, &p.ports)),
        None => d.upcall_pending(),
    };
    if woken {
        d.cur_mut().poll = None;
        d.cur_mut().blocked = false;
    }
}

/// Whether the running vCPU may go on (runnable, in a domain that may run).
pub fn running_can_continue() -> bool {
    domain::with_current(|d| d.can_run() && d.cur().runnable()).unwrap_or(false)
}

/// Called on the way back to a guest: if the running vCPU may not go on (it blocked, went
/// down, or its domain stopped or was paused), put another runnable vCPU on the CPU, or
/// take it off and idle until one is runnable (timer ticks and events wake vCPUs
/// meanwhile).
pub fn reschedule(frame: &mut TrapFrame) {
    loop {
        let done = domain::with_domains(|doms| {
            if let Some(cur) = doms.current() {
                wake_running(cur);
                if cur.can_run() && cur.cur().runnable() {
                    if cur.cur().runstate.state != domain::RUNSTATE_RUNNING {
                        cur.set_runstate(domain::RUNSTATE_RUNNING);
                    }
                    return true;
                }
            }
            let here = doms.running_here();
            match pick_next(doms, here) {
                Some(next) => {
                    switch_to(doms, frame, next);
                    true
                }
                None => {
                    if here.is_some() {
                        unload(doms, frame);
                    }
                    false
                }
            }
        });
        if done {
            return;
        }
        idle_wait();
    }
}

/// Where a CPU other than the boot CPU goes once it is up: it idles until a vCPU is
/// runnable and on no other CPU, and enters it; from then on it runs from traps, like the
/// boot CPU (and comes back to idling in `reschedule`).
pub fn run_idle() -> ! {
    let mut frame = TrapFrame::default();
    loop {
        irq::disable();
        let picked = domain::with_domains(|doms| {
            let next = pick_next(doms, None)?;
            switch_to(doms, &mut frame, next);
            Some(())
        });
        if picked.is_some() {
            crate::guest::before_return(&mut frame);
            // The vCPU's saved ring-3 context; its address space was just loaded by
            // `switch_to` (or by `reschedule`, if `before_return` moved to another vCPU).
            trap::return_to_ring3(&frame)
        }
        idle_wait();
    }
}

/// Halts until an interrupt (a tick, or a kick from a CPU that made a vCPU runnable),
/// marked idle meanwhile; returns with interrupts off.
fn idle_wait() {
    smp::set_idle(true);
    irq::enable_and_wait();
    irq::disable();
    smp::set_idle(false);
}
