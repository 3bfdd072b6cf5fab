//! Per-vCPU hypercalls: `vcpu_op` (vcpu_info and runstate placement, timers, up/down)
//! and `set_timer_op`; plus `sched_op`'s blocking.

use ferrovisor::mm::{Mfn, PAGE_SIZE};
use ferrovisor::pv::{bounce, descriptor};
use ferrovisor_abi::xen::sched::SchedPoll;
use ferrovisor_abi::{
    errno::XenErrno,
    xen::{
        vcpu::{
            VcpuOp, VcpuRegisterRunstateMemoryArea, VcpuRegisterVcpuInfo, VcpuSetPeriodicTimer,
            VcpuSetSingleshotTimer, VCPU_SSHOTTMR_FUTURE,
        },
        xen::VcpuInfo,
    },
};
use ferrovisor_abi::{
    layout::{FLAT_RING3_CS64, FLAT_RING3_SS64},
    xen::arch_x86::{
        VcpuGuestContext, VGCF_FAILSAFE_DISABLES_EVENTS, VGCF_IN_KERNEL, VGCF_ONLINE,
        VGCF_SYSCALL_DISABLES_EVENTS,
    },
};
use zerocopy::FromBytes;

use super::Result;
use crate::{arch::x86_64::cpu, clock, domain, domain::FRAME_TABLE};

/// Copies a `T` in from the calling vCPU's memory.
fn read<T: FromBytes + zerocopy::IntoBytes>(arg: u64) -> core::result::Result<T, XenErrno> {
    domain::with_current(|d| super::read_struct(d, arg)).ok_or(XenErrno::Esrch)?
}

/// `vcpu_op(cmd, vcpu, arg)` on vCPU `vcpu` of the calling domain. As in Xen, a vCPU may
/// bring up, take down, place the `vcpu_info` and runstate area of, and set the periodic
/// timer of any of its siblings; the single-shot timer only of itself.
pub fn vcpu_op([cmd, vcpu, arg, ..]: [u64; 5]) -> Result {
    let op = VcpuOp::try_from(cmd as u32).map_err(|_| XenErrno::Enosys)?;
    let vcpu = u32::try_from(vcpu).map_err(|_| XenErrno::Enoent)?;
    let (exists, current) =
        domain::with_current(|d| (d.vcpu_by_id_mut(vcpu).is_some(), d.cur().id))
            .ok_or(XenErrno::Esrch)?;
    if !exists {
        return Err(XenErrno::Enoent);
    }
    // Runs `f` for the target vCPU (it exists: checked above, and vCPUs are never removed).
    let on_target = |f: &mut dyn FnMut(&mut domain::Domain) -> Result| -> Result {
        domain::with_current(|d| d.acting_for(vcpu, |d| f(d)))
            .flatten()
            .ok_or(XenErrno::Esrch)?
    };
    match op {
        VcpuOp::IsUp => on_target(&mut |d| Ok(d.cur().online as u64)),
        VcpuOp::Up => on_target(&mut |d| {
            let v = d.cur_mut();
            if !v.initialised {
                return Err(XenErrno::Einval);
            }
            v.online = true;
            d.kick_vcpus();
            Ok(0)
        }),
        // Taking down the running vCPU switches away from it (`hypercall::dispatch`).
        VcpuOp::Down => on_target(&mut |d| {
            d.cur_mut().online = false;
            d.kick_vcpus();
            Ok(0)
        }),
        VcpuOp::Initialise => initialise(vcpu, arg),
        VcpuOp::RegisterVcpuInfo => {
            let reg: VcpuRegisterVcpuInfo = read(arg)?;
            let size = core::mem::size_of::<VcpuInfo>() as u64;
            if reg.offset as u64 + size > PAGE_SIZE || reg.offset % 64 != 0 {
                return Err(XenErrno::Einval);
            }
            on_target(&mut |d| {
                if d.cur().vcpu_info_frame.is_some() {
                    return Err(XenErrno::Einval);
                }
                // The guest names its frame by machine frame number (a PV guest's view).
                // A general and a `Writable` type reference keep it the domain's, and no
                // page or descriptor table, while the hypervisor writes it (Xen takes
                // the same); the handle holding them is what the hypervisor's view of
                // the frame is made from.
                let frame = FRAME_TABLE
                    .lock()
                    .as_mut()
                    .ok_or(XenErrno::Esrch)?
                    .get_writable(Mfn(reg.mfn), d.id)
                    .map_err(|_| XenErrno::Einval)?;
                let mask = d.upcall_mask();
                let pending = d.upcall_pending();
                let v = d.cur_mut();
                v.vcpu_info_frame = Some(frame);
                v.vcpu_info_offset = reg.offset as usize;
                // The moved structure starts with the old state (Xen copies it).
                d.set_upcall_mask(mask);
                if pending {
                    d.raise_upcall();
                }
                d.publish_time();
                Ok(0)
            })
        }
        VcpuOp::RegisterRunstateMemoryArea => {
            let area: VcpuRegisterRunstateMemoryArea = read(arg)?;
            on_target(&mut |d| {
                d.cur_mut().runstate_area = (area.addr.0 != 0).then_some(area.addr.0);
                // Published now when this vCPU registers its own; a sibling's from its
                // next run-state change (its address space may not exist yet).
                if vcpu == current {
                    d.publish_runstate();
                }
                Ok(0)
            })
        }
        VcpuOp::SetPeriodicTimer => {
            let t: VcpuSetPeriodicTimer = read(arg)?;
            // Xen refuses periods under 1 ms (what it can deliver without a storm).
            if t.period_ns < 1_000_000 {
                return Err(XenErrno::Einval);
            }
            on_target(&mut |d| {
                d.cur_mut().periodic =
                    Some((t.period_ns, clock::now_ns().saturating_add(t.period_ns)));
                Ok(0)
            })
        }
        VcpuOp::StopPeriodicTimer => on_target(&mut |d| {
            d.cur_mut().periodic = None;
            Ok(0)
        }),
        _ if vcpu != current => Err(XenErrno::Einval),
        VcpuOp::SetSingleshotTimer => {
            let t: VcpuSetSingleshotTimer = read(arg)?;
            if t.flags & VCPU_SSHOTTMR_FUTURE != 0 && t.timeout_abs_ns < clock::now_ns() {
                return Err(XenErrno::Etime);
            }
            set_deadline(Some(t.timeout_abs_ns))
        }
        VcpuOp::StopSingleshotTimer => set_deadline(None),
        _ => Err(XenErrno::Enosys),
    }
}

/// `VCPUOP_initialise(vcpu, struct vcpu_guest_context *)`: the starting state of a vCPU
/// that is not running: registers, page tables (`ctrlreg[3]`), kernel stack, trap table,
/// callbacks, GDT and segment bases, checked like the hypercalls that set each.
fn initialise(vcpu: u32, arg: u64) -> Result {
    let ctx = read_context(arg)?;
    domain::with_current(|d| apply_context(d, vcpu, &ctx, false)).ok_or(XenErrno::Esrch)?
}

/// Copies a `vcpu_guest_context` in from the caller.
pub fn read_context(arg: u64) -> core::result::Result<VcpuGuestContext, XenErrno> {
    let size = core::mem::size_of::<VcpuGuestContext>();
    let mut raw = alloc::vec![0u8; size];
    domain::with_current(|d| d.read_guest(arg, &mut raw))
        .ok_or(XenErrno::Esrch)?
        .map_err(|_| XenErrno::Efault)?;
    VcpuGuestContext::read_from_bytes(&raw).map_err(|_| XenErrno::Efault)
}

/// Gives vCPU `vcpu` of `d` the state `ctx` describes, checked like the hypercalls that
/// set each part. `VCPUOP_initialise` only on a vCPU that never started; with `replace`
/// (domain control, on a paused domain) the vCPU's previous page-table root and GDT are
/// released once the new ones are held.
pub fn apply_context(
    d: &mut crate::domain::Domain,
    vcpu: u32,
    ctx: &VcpuGuestContext,
    replace: bool,
) -> Result {
    if ctx.flags & VGCF_IN_KERNEL == 0 {
        return Err(XenErrno::Einval); // starting in guest user mode is not offered
    }
    {
        let dom = d.id;
        let Some(v) = d.vcpu_by_id_mut(vcpu) else {
            return Err(XenErrno::Enoent);
        };
        if !replace && (v.online || v.initialised) {
            return Err(XenErrno::Eexist);
        }
        let old_gdt = v.initialised.then_some(v.gdt);
        let l4 = Mfn(ctx.ctrlreg[3] >> 12);
        let gdt_frames: heapless::Vec<u64, 16> = ctx
            .gdt_frames
            .iter()
            .copied()
            .take(descriptor::gdt_frame_count(ctx.gdt_ents as u32).map_err(|e| e.errno())?)
            .collect();
        let gdt = descriptor::validate_set_gdt(&gdt_frames, ctx.gdt_ents as u32)
            .map_err(|e| e.errno())?;
        let mut trap_table = bounce::TrapTable::new();
        for t in ctx.trap_ctxt.iter().filter(|t| t.address != 0) {
            trap_table
                .set(core::slice::from_ref(t))
                .map_err(|_| XenErrno::Einval)?;
        }
        if !cpu::is_guest_base(ctx.user_regs.rip) || !cpu::is_guest_base(ctx.user_regs.rsp) {
            return Err(XenErrno::Einval);
        }
        for a in [
            ctx.event_callback_eip,
            ctx.failsafe_callback_eip,
            ctx.syscall_callback_eip,
            ctx.kernel_sp,
        ] {
            if a != 0 && !cpu::is_guest_base(a) {
                return Err(XenErrno::Einval);
            }
        }
        {
            let mut guard = FRAME_TABLE.lock();
            let ft = guard.as_mut().ok_or(XenErrno::Esrch)?;
            let mut mem = tables();
            let new_l4 = ft.get_l4_ref(l4, dom, &mut mem).map_err(|e| e.errno())?;
            if let Err(e) = super::desc::take_gdt(ft, dom, &gdt) {
                let _ = ft.put_l4_ref(new_l4, &mut mem);
                return Err(e);
            }
            // The vCPU runs on no CPU (never started, or its domain is paused): its old
            // root and GDT can go once the new ones are held.
            if let Some(old_l4) = v.kernel_l4.replace(new_l4) {
                let _ = ft.put_l4_ref(old_l4, &mut mem);
            }
            if let Some(old_gdt) = old_gdt {
                super::desc::release(ft, &mut mem, old_gdt.frames());
            }
        }
        let r = &ctx.user_regs;
        v.regs = crate::arch::x86_64::trap::TrapFrame {
            r15: r.r15,
            r14: r.r14,
            r13: r.r13,
            r12: r.r12,
            r11: r.r11,
            r10: r.r10,
            r9: r.r9,
            r8: r.r8,
            rbp: r.rbp,
            rdi: r.rdi,
            rsi: r.rsi,
            rdx: r.rdx,
            rcx: r.rcx,
            rbx: r.rbx,
            rax: r.rax,
            vector: 0,
            error_code: 0,
            rip: r.rip,
            cs: FLAT_RING3_CS64 as u64,
            rflags: (r.rflags | 0x200) & !0x3000,
            rsp: r.rsp,
            ss: FLAT_RING3_SS64 as u64,
        };
        // Its data selectors as given (a stale one loads as null when it first runs).
        v.selectors = crate::arch::x86_64::segments::DataSelectors {
            ds: r.ds,
            es: r.es,
            fs: r.fs,
        };
        v.pv = bounce::BounceState::new(ctx.kernel_sp);
        v.pv.trap_table = trap_table;
        v.pv.callbacks.event = ctx.event_callback_eip;
        v.pv.callbacks.failsafe = ctx.failsafe_callback_eip;
        v.pv.callbacks.failsafe_masks_events = ctx.flags & VGCF_FAILSAFE_DISABLES_EVENTS != 0;
        v.pv.callbacks.syscall = ctx.syscall_callback_eip;
        v.pv.callbacks.syscall_masks_events = ctx.flags & VGCF_SYSCALL_DISABLES_EVENTS != 0;
        v.fs_base = if cpu::is_guest_base(ctx.fs_base) {
            ctx.fs_base
        } else {
            0
        };
        v.saved_gs_base_active = if cpu::is_guest_base(ctx.gs_base_kernel) {
            ctx.gs_base_kernel
        } else {
            0
        };
        v.saved_gs_base = if cpu::is_guest_base(ctx.gs_base_user) {
            ctx.gs_base_user
        } else {
            0
        };
        v.gdt = gdt;
        // The virtual I/O privilege level comes in the flags' IOPL field (Xen's reading).
        v.iopl = ((r.rflags >> 12) & 3) as u8;
        v.initialised = true;
        // The new GDT frames may have had writable translations cached.
        crate::arch::x86_64::paging::flush_tlb_local();
        if ctx.flags & VGCF_ONLINE != 0 {
            v.online = true;
        }
    }
    // The vCPU starts with its events masked, as vCPU 0 did.
    d.acting_for(vcpu, |d| d.set_upcall_mask(1));
    Ok(0)
}

fn tables() -> crate::arch::x86_64::paging::GuestTables {
    crate::arch::x86_64::paging::GuestTables::new()
}

fn set_deadline(deadline: Option<u64>) -> Result {
    domain::with_current(|d| {
        d.cur_mut().timer_deadline = deadline;
        Ok(0)
    })
    .ok_or(XenErrno::Esrch)?
}

/// `set_timer_op(timeout)`: the single-shot timer at absolute system time `timeout` (ns);
/// 0 cancels it.
pub fn set_timer_op([timeout, ..]: [u64; 5]) -> Result {
    set_deadline((timeout != 0).then_some(timeout))
}

/// Reads and checks a `SCHEDOP_poll` argument: the ports (each valid in the domain) and
/// the absolute timeout (0 = none).
pub fn read_poll(arg: u64) -> core::result::Result<domain::Poll, XenErrno> {
    let p: SchedPoll = read(arg)?;
    let n = p.nr_ports as usize;
    if n > domain::MAX_POLL_PORTS {
        return Err(XenErrno::Einval);
    }
    let mut raw = [0u8; domain::MAX_POLL_PORTS * 4];
    domain::with_current(|d| d.read_guest(p.ports.0, &mut raw[..n * 4]))
        .ok_or(XenErrno::Esrch)?
        .map_err(|_| XenErrno::Efault)?;
    let mut ports = heapless::Vec::new();
    for c in raw[..n * 4].chunks_exact(4) {
        let _ = ports.push(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    }
    let valid = domain::with_current(|d| ports.iter().all(|&p| d.evtchn.is_valid_port(p)))
        .ok_or(XenErrno::Esrch)?;
    if !valid {
        return Err(XenErrno::Einval);
    }
    Ok(domain::Poll {
        ports,
        deadline: (p.timeout != 0).then_some(p.timeout),
    })
}

/// The state of vCPU `vcpu` of `d` (not running: its domain is paused or stopped) as a
/// `vcpu_guest_context`: what domain control's `GetVcpuContext` returns, and what
/// [`apply_context`] takes back.
pub fn context_of(
    d: &crate::domain::Domain,
    vcpu: u32,
) -> core::result::Result<VcpuGuestContext, XenErrno> {
    use zerocopy::FromZeros;
    let v = d.vcpus().find(|v| v.id == vcpu).ok_or(XenErrno::Enoent)?;
    let mut ctx = VcpuGuestContext::new_zeroed();
    ctx.fpu_ctxt = v.fpu.0;
    ctx.flags = ferrovisor_abi::xen::arch_x86::VGCF_I387_VALID;
    if v.pv.in_kernel {
        ctx.flags |= VGCF_IN_KERNEL;
    }
    if v.online {
        ctx.flags |= VGCF_ONLINE;
    }
    if v.pv.callbacks.failsafe_masks_events {
        ctx.flags |= VGCF_FAILSAFE_DISABLES_EVENTS;
    }
    if v.pv.callbacks.syscall_masks_events {
        ctx.flags |= VGCF_SYSCALL_DISABLES_EVENTS;
    }
    ctx.user_regs = crate::guest::to_regs(&v.regs);
    ctx.user_regs.ds = v.selectors.ds;
    ctx.user_regs.es = v.selectors.es;
    ctx.user_regs.fs = v.selectors.fs;
    for vector in 0..=255u8 {
        if let Some(t) = v.pv.trap_table.get(vector) {
            ctx.trap_ctxt[usize::from(vector)] = *t;
        }
    }
    for (slot, mfn) in ctx.gdt_frames.iter_mut().zip(v.gdt.frames()) {
        *slot = mfn.0;
    }
    ctx.gdt_ents = u64::from(v.gdt.entries());
    ctx.kernel_ss = u64::from(FLAT_RING3_SS64);
    ctx.kernel_sp = v.pv.kernel_sp;
    if v.initialised {
        ctx.ctrlreg[3] = v.kernel_l4.as_ref().map_or(0, |l4| l4.mfn().addr());
    }
    ctx.ctrlreg[1] = v.user_l4.as_ref().map_or(0, |l4| l4.mfn().addr());
    ctx.event_callback_eip = v.pv.callbacks.event;
    ctx.failsafe_callback_eip = v.pv.callbacks.failsafe;
    ctx.syscall_callback_eip = v.pv.callbacks.syscall;
    ctx.vm_assist = u64::from(d.vm_assist);
    ctx.fs_base = v.fs_base;
    // The active GS base belongs to the mode the vCPU is in; the other is put away.
    let (kernel_gs, user_gs) = if v.pv.in_kernel {
        (v.saved_gs_base_active, v.saved_gs_base)
    } else {
        (v.saved_gs_base, v.saved_gs_base_active)
    };
    ctx.gs_base_kernel = kernel_gs;
    ctx.gs_base_user = user_gs;
    Ok(ctx)
}
