//! Secondary vCPUs (`vcpu.h`): a vCPU other than 0 starts from a `vcpu_guest_context`
//! given to `VCPUOP_initialise`, and runs once `VCPUOP_up` makes it runnable. What the
//! context holds follows Linux 6.1's `cpu_initialize_context` (`arch/x86/xen/smp_pv.c`):
//! `VGCF_in_kernel`, the entry `rip`/`rsp` (and here `rdi`/`rsi` as arguments), the flat
//! kernel selectors, the kernel stack for entries from user mode, the same L4 as vCPU 0
//! (`ctrlreg[3]`, `xen_pfn_to_cr3` of its machine frame), the trap table (indexed by vector,
//! like Linux's `xen_copy_trap_info`) and the callbacks, and the kernel GS base. Unlike
//! Linux it brings no GDT of its own (`gdt_ents` 0: the flat selectors live in the
//! hypervisor's part of every GDT) and no FPU image (without `VGCF_I387_VALID` the vCPU
//! starts with the default state, MXCSR 0x1f80). `VGCF_online` is left clear, as Linux
//! does: the vCPU stays down until `VCPUOP_up` (Xen's `arch_set_info_guest`).
//!
//! Every vCPU below [`XEN_LEGACY_MAX_VCPUS`] has its `vcpu_info` in shared_info
//! ([`vcpu_info`]) until it registers another; the runtime's own event and time helpers
//! read vCPU 0's, so code that runs on another vCPU reads its own through this module.

use core::ffi::c_void;

use ferrovisor_abi::xen::{
    arch_x86::{
        xen_pfn_to_cr3, SegBase, TrapInfo, VcpuGuestContext, FLAT_KERNEL_CS, FLAT_KERNEL_SS,
        VGCF_FAILSAFE_DISABLES_EVENTS, VGCF_IN_KERNEL, VGCF_SYSCALL_DISABLES_EVENTS,
        XEN_LEGACY_MAX_VCPUS,
    },
    hypercall::Hypercall,
    vcpu::VcpuOp,
    xen::VcpuInfo,
};

use crate::{hypercall, shared_info, time, traps::stubs};

/// The vectors `traps::install` puts in the trap table (every architectural exception but
/// NMI, the reserved 9 and 15, and those with no use in a PV guest), with the DPL each has.
const TRAP_VECTORS: [u8; 17] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19];
/// `int3` and `into` may be raised from any ring.
const DPL3_VECTORS: [u8; 2] = [3, 4];

/// RFLAGS bit 1, always set. IF is clear, as in Linux's context (which passes only IOPL
/// 1): events are masked by `vcpu_info.evtchn_upcall_mask`, and the hypervisor sets the
/// real IF itself (Xen's `arch_set_info_guest`: "Ensure real hardware interrupts are
/// enabled").
pub const START_RFLAGS: u64 = 0x2;

/// Where and how a secondary vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// First instruction.
    pub rip: u64,
    /// Initial stack pointer, also the kernel stack for entries from user mode
    /// (`kernel_sp`).
    pub rsp: u64,
    /// `rdi` and `rsi` at `rip`.
    pub args: [u64; 2],
    /// The machine frame of the L4 to run on (vCPU 0's: `region::mfn_of(si, si.pt_base)`).
    pub l4_mfn: u64,
    pub fs_base: u64,
    pub gs_base_kernel: u64,
}

/// The context for `start`: in guest-kernel mode on the flat selectors, with the trap table
/// and callbacks `traps::install` gives vCPU 0 (so the runtime's exception and event
/// handling works on the new vCPU from its first instruction).
pub fn kernel_context(start: &Start) -> VcpuGuestContext {
    // SAFETY: `VcpuGuestContext` is plain integers and arrays of them (it derives zerocopy's
    // `FromBytes`): all zeros is a valid value, and what `kzalloc` gives Linux.
    let mut ctx: VcpuGuestContext = unsafe { core::mem::zeroed() };
    ctx.flags = VGCF_IN_KERNEL | VGCF_FAILSAFE_DISABLES_EVENTS | VGCF_SYSCALL_DISABLES_EVENTS;
    ctx.user_regs.rip = start.rip;
    ctx.user_regs.rsp = start.rsp;
    ctx.user_regs.rdi = start.args[0];
    ctx.user_regs.rsi = start.args[1];
    ctx.user_regs.rflags = START_RFLAGS;
    ctx.user_regs.cs = FLAT_KERNEL_CS;
    ctx.user_regs.ss = FLAT_KERNEL_SS;
    ctx.trap_ctxt = trap_table();
    ctx.kernel_ss = u64::from(FLAT_KERNEL_SS);
    ctx.kernel_sp = start.rsp;
    ctx.ctrlreg[3] = xen_pfn_to_cr3(start.l4_mfn);
    ctx.event_callback_eip = stubs::event();
    ctx.failsafe_callback_eip = stubs::failsafe();
    ctx.syscall_callback_eip = stubs::syscall();
    ctx.fs_base = start.fs_base;
    ctx.gs_base_kernel = start.gs_base_kernel;
    ctx
}

/// The runtime's trap table as `vcpu_guest_context.trap_ctxt`: entry `v` is vector `v`
/// (Xen copies the array as the vCPU's virtual IDT), unused vectors all zero.
pub fn trap_table() -> [TrapInfo; 256] {
    let mut table = [TrapInfo {
        vector: 0,
        flags: 0,
        cs: 0,
        _cpad0: 0,
        address: 0,
    }; 256];
    for v in TRAP_VECTORS {
        table[usize::from(v)] = TrapInfo {
            vector: v,
            flags: if DPL3_VECTORS.contains(&v) { 3 } else { 0 },
            cs: FLAT_KERNEL_CS,
            _cpad0: 0,
            address: stubs::trap(v),
        };
    }
    table
}

fn vcpu_op_no_arg(cmd: VcpuOp, vcpu: u32) -> i64 {
    // SAFETY: a null argument for a command that takes none; bringing a vCPU up or down
    // changes only which of the kernel's vCPUs run.
    unsafe { hypercall::vcpu_op(cmd, vcpu, core::ptr::null_mut()) }
}

/// `VCPUOP_initialise(vcpu, ctx)`.
///
/// # Safety
/// Once the vCPU is up it runs `ctx`'s entry on `ctx`'s stack and page tables: they must
/// be code and memory the kernel gives that vCPU, and the trap table and callbacks must
/// handle their PV frames.
pub unsafe fn initialise(vcpu: u32, ctx: &VcpuGuestContext) -> i64 {
    // SAFETY: the caller's contract; the hypervisor reads the 5168-byte context.
    unsafe {
        hypercall::vcpu_op(
            VcpuOp::Initialise,
            vcpu,
            core::ptr::from_ref(ctx).cast_mut().cast::<c_void>(),
        )
    }
}

/// `VCPUOP_up(vcpu)`: makes an initialised vCPU runnable (0), `-EINVAL` before
/// `VCPUOP_initialise`.
pub fn up(vcpu: u32) -> i64 {
    vcpu_op_no_arg(VcpuOp::Up, vcpu)
}

/// `VCPUOP_down(vcpu)`: stops it. On the calling vCPU itself it returns (0) only once
/// another vCPU brings it up again, as Linux's `xen_pv_play_dead` expects.
pub fn down(vcpu: u32) -> i64 {
    vcpu_op_no_arg(VcpuOp::Down, vcpu)
}

/// `VCPUOP_is_up(vcpu)`: 1 up, 0 down, `-ENOENT` for a vCPU the domain does not have.
pub fn is_up(vcpu: u32) -> i64 {
    vcpu_op_no_arg(VcpuOp::IsUp, vcpu)
}

/// vCPU `vcpu`'s `vcpu_info` in shared_info (needs [`shared_info::map`]).
pub fn vcpu_info(vcpu: u32) -> *mut VcpuInfo {
    let Some(si) = shared_info::get() else {
        crate::fail!("vCPU {vcpu}'s vcpu_info: shared_info is not mapped");
    };
    if vcpu as usize >= XEN_LEGACY_MAX_VCPUS {
        crate::fail!("vCPU {vcpu} has no vcpu_info in shared_info");
    }
    // SAFETY: only the address of the field is taken, inside the mapped page.
    unsafe { (&raw const (*si).vcpu_info[vcpu as usize]).cast_mut() }
}

/// Reads vCPU `vcpu`'s own `vcpu_time_info` (which the hypervisor keeps up to date for
/// each vCPU, as Linux's per-CPU clocksource reads it).
pub fn read_time(vcpu: u32) -> time::Reading {
    let vi = vcpu_info(vcpu);
    // SAFETY: `vi` is a vcpu_info in the mapped shared_info; `time` is its
    // `vcpu_time_info`.
    unsafe { time::read_at(&raw const (*vi).time) }
}

/// `set_segment_base(which, base)` for the calling vCPU.
///
/// # Safety
/// Nothing running on this vCPU may depend on the segment's old base.
pub unsafe fn set_segment_base(which: SegBase, base: u64) -> i64 {
    // SAFETY: the caller's contract; no memory argument.
    unsafe {
        hypercall::hypercall2(
            Hypercall::SetSegmentBase.raw(),
            u64::from(which.raw()),
            base,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_layout_of_a_start() {
        let ctx = kernel_context(&Start {
            rip: 0xffff_ffff_8020_1000,
            rsp: 0xffff_ffff_8050_0000,
            args: [1, 2],
            l4_mfn: 0x1234,
            fs_base: 0x10,
            gs_base_kernel: 0x20,
        });
        assert_eq!(ctx.flags & VGCF_IN_KERNEL, VGCF_IN_KERNEL);
        assert_eq!(ctx.flags & ferrovisor_abi::xen::arch_x86::VGCF_ONLINE, 0);
        assert_eq!(ctx.ctrlreg[3], 0x1234 << 12);
        assert_eq!((ctx.user_regs.rdi, ctx.user_regs.rsi), (1, 2));
        assert_eq!(ctx.kernel_sp, ctx.user_regs.rsp);
        assert_eq!(ctx.gdt_ents, 0);
        // Indexed by vector; #BP user-callable, #PF not; NMI and the reserved 9 empty.
        assert_eq!(ctx.trap_ctxt[3].vector, 3);
        assert_eq!(ctx.trap_ctxt[3].dpl(), 3);
        assert_eq!(ctx.trap_ctxt[14].vector, 14);
        assert_eq!(ctx.trap_ctxt[14].dpl(), 0);
        assert_eq!(ctx.trap_ctxt[14].cs, FLAT_KERNEL_CS);
        assert_eq!(ctx.trap_ctxt[2].cs, 0);
        assert_eq!(ctx.trap_ctxt[9].cs, 0);
    }
}
