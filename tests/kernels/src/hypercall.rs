//! Hypercalls with Xen's x86-64 PV convention (`arch-x86/xen-x86_64.h`): the number in
//! `rax`, arguments in `rdi`, `rsi`, `rdx`, `r10`, `r8`, the result in `rax` (a negative
//! errno on failure). The guest kernel makes them with `syscall`, which clobbers `rcx` and
//! `r11`; or, in a kernel that asked for a hypercall page, with `call hypercall_page +
//! nr * 32`, the stub the builder wrote there.
//!
//! Xen's debug builds deliberately corrupt the argument registers a hypercall does not use,
//! so every argument register is treated as clobbered, as Linux does.
//!
//! The raw `hypercallN` functions are `unsafe`: the hypervisor reads and writes whatever
//! guest memory the arguments name. The typed wrappers are safe where the types pin the
//! memory down (a slice, a reference) and `unsafe` where the call changes the kernel's own
//! address space or control flow.

use core::{
    ffi::c_void,
    sync::atomic::{AtomicU64, Ordering},
};

use ferrovisor_abi::xen::{
    arch_x86::TrapInfo,
    callback::{CallbackOp, CallbackRegister, CallbackType},
    hypercall::Hypercall,
    memory::MemoryOp,
    sched::{SchedOp, SchedShutdown, ShutdownReason},
    vcpu::VcpuOp,
    version::{XenExtraversion, XenVersionOp, XEN_EXTRAVERSION_LEN},
    xen::{ConsoleIoCmd, MmuUpdate, MmuextOp, VmAssistCmd, VmAssistType},
    DomId,
};

/// Address of the hypercall page in use, or 0: direct `syscall`.
static HYPERCALL_PAGE: AtomicU64 = AtomicU64::new(0);

/// Stubs in one page: numbers from here up have no stub and always use `syscall`.
#[cfg(target_os = "none")]
const STUBS_PER_PAGE: u64 = 4096 / STUB_SIZE;
#[cfg(target_os = "none")]
const STUB_SIZE: u64 = ferrovisor_abi::xen::hypercall::HYPERCALL_STUB_SIZE as u64;

/// Make every later hypercall through the page at `page` (filled by the domain builder
/// because the kernel's HYPERCALL_PAGE note named it).
///
/// # Safety
/// `page` must be the address of the kernel's hypercall page, already filled with the
/// hypervisor's stubs.
pub unsafe fn use_hypercall_page(page: u64) {
    HYPERCALL_PAGE.store(page, Ordering::Relaxed);
}

/// The hypercall page in use, if any.
pub fn hypercall_page() -> Option<u64> {
    match HYPERCALL_PAGE.load(Ordering::Relaxed) {
        0 => None,
        page => Some(page),
    }
}

#[cfg(target_os = "none")]
#[inline(always)]
unsafe fn raw(nr: u64, a: [u64; 5]) -> i64 {
    let ret: u64;
    let page = HYPERCALL_PAGE.load(Ordering::Relaxed);
    if page == 0 || nr >= STUBS_PER_PAGE {
        // SAFETY: a `syscall` from the guest kernel enters the hypervisor, which returns
        // with only rax (result), rcx, r11 and the argument registers changed, all
        // declared here. What the hypercall does to memory is the caller's contract.
        unsafe {
            core::arch::asm!(
                "syscall",
                inlateout("rax") nr => ret,
                inlateout("rdi") a[0] => _,
                inlateout("rsi") a[1] => _,
                inlateout("rdx") a[2] => _,
                inlateout("r10") a[3] => _,
                inlateout("r8") a[4] => _,
                lateout("r9") _,
                lateout("rcx") _,
                lateout("r11") _,
            );
        }
    } else {
        let stub = page + nr * STUB_SIZE;
        // SAFETY: `use_hypercall_page`'s contract: `stub` is a stub the hypervisor wrote,
        // which makes the hypercall and returns with the registers above changed at most.
        // `call` pushes onto the stack; the target has no red zone.
        unsafe {
            core::arch::asm!(
                "call {stub}",
                stub = in(reg) stub,
                inlateout("rax") nr => ret,
                inlateout("rdi") a[0] => _,
                inlateout("rsi") a[1] => _,
                inlateout("rdx") a[2] => _,
                inlateout("r10") a[3] => _,
                inlateout("r8") a[4] => _,
                lateout("r9") _,
                lateout("rcx") _,
                lateout("r11") _,
            );
        }
    }
    ret as i64
}

#[cfg(not(target_os = "none"))]
unsafe fn raw(nr: u64, _: [u64; 5]) -> i64 {
    panic!("hypercall {nr}: pvrt's hypercalls only run inside a PV guest")
}

macro_rules! raw_hypercalls {
    ($($name:ident($($arg:ident),*) => [$($slot:expr),*];)+) => {$(
        /// A raw hypercall with this many arguments; returns `rax`.
        ///
        /// # Safety
        /// The arguments must be valid for hypercall `nr`: any guest memory they name is
        /// read or written by the hypervisor, and some hypercalls change the address space
        /// or where control goes.
        #[inline]
        pub unsafe fn $name(nr: u64 $(, $arg: u64)*) -> i64 {
            // SAFETY: the caller's contract.
            unsafe { raw(nr, [$($slot),*]) }
        }
    )+};
}

raw_hypercalls! {
    hypercall0() => [0, 0, 0, 0, 0];
    hypercall1(a1) => [a1, 0, 0, 0, 0];
    hypercall2(a1, a2) => [a1, a2, 0, 0, 0];
    hypercall3(a1, a2, a3) => [a1, a2, a3, 0, 0];
    hypercall4(a1, a2, a3, a4) => [a1, a2, a3, a4, 0];
    hypercall5(a1, a2, a3, a4, a5) => [a1, a2, a3, a4, a5];
}

const fn nr(h: Hypercall) -> u64 {
    h.raw()
}

fn addr<T: ?Sized>(p: *const T) -> u64 {
    p.cast::<u8>() as u64
}

/// `console_io(CONSOLEIO_write, len, buf)`: writes `buf` to the hypervisor's console.
pub fn console_write(buf: &[u8]) -> i64 {
    // SAFETY: the hypervisor only reads `buf.len()` bytes of `buf`.
    unsafe {
        hypercall3(
            nr(Hypercall::ConsoleIo),
            u64::from(ConsoleIoCmd::Write.raw()),
            buf.len() as u64,
            addr(buf.as_ptr()),
        )
    }
}

/// `console_io(CONSOLEIO_read, len, buf)`: console input waiting for the domain, up to
/// `buf.len()` bytes; returns how many (or the error).
pub fn console_read(buf: &mut [u8]) -> i64 {
    // SAFETY: the hypervisor writes at most `buf.len()` bytes into `buf`.
    unsafe {
        hypercall3(
            nr(Hypercall::ConsoleIo),
            u64::from(ConsoleIoCmd::Read.raw()),
            buf.len() as u64,
            buf.as_mut_ptr() as u64,
        )
    }
}

/// `xen_version(cmd, NULL)`, for the commands without an argument (`XENVER_version`:
/// `major << 16 | minor`; `XENVER_pagesize`).
pub fn xen_version(cmd: XenVersionOp) -> i64 {
    // SAFETY: a null argument: the hypervisor writes nothing (or fails with -EFAULT for a
    // command that needs a buffer).
    unsafe { hypercall2(nr(Hypercall::XenVersion), u64::from(cmd.raw()), 0) }
}

/// `xen_version(cmd, arg)` with a buffer.
///
/// # Safety
/// `arg` must point to writable memory of the size `cmd`'s answer has (`version.h`).
pub unsafe fn xen_version_with(cmd: XenVersionOp, arg: *mut c_void) -> i64 {
    // SAFETY: the caller's contract.
    unsafe { hypercall2(nr(Hypercall::XenVersion), u64::from(cmd.raw()), addr(arg)) }
}

/// Whether the hypervisor is Ferrovisor rather than real Xen (`cargo xtask test --on-xen`
/// boots the same kernels on Xen 4.17): Ferrovisor's `XENVER_extraversion` contains
/// "ferrovisor". Only for the few checks where Ferrovisor deliberately differs from Xen;
/// the kernel says which rule it applies.
pub fn on_ferrovisor() -> bool {
    let mut extra: XenExtraversion = [0; XEN_EXTRAVERSION_LEN];
    // SAFETY: `extra` is a writable `xen_extraversion_t`, what `XENVER_extraversion` fills.
    let ret = unsafe { xen_version_with(XenVersionOp::Extraversion, extra.as_mut_ptr().cast()) };
    ret >= 0
        && extra
            .windows(b"ferrovisor".len())
            .any(|w| w == b"ferrovisor")
}

/// `sched_op(SCHEDOP_shutdown, &{reason})`: normally does not return.
pub fn sched_shutdown(reason: ShutdownReason) -> i64 {
    let arg = SchedShutdown {
        reason: reason.raw(),
    };
    // SAFETY: the hypervisor reads the 4-byte `sched_shutdown` on this stack.
    unsafe {
        hypercall2(
            nr(Hypercall::SchedOp),
            u64::from(SchedOp::Shutdown.raw()),
            addr(&arg),
        )
    }
}

/// `sched_op(SCHEDOP_yield, NULL)`.
pub fn sched_yield() -> i64 {
    // SAFETY: no memory argument.
    unsafe { hypercall2(nr(Hypercall::SchedOp), u64::from(SchedOp::Yield.raw()), 0) }
}

/// `sched_op(SCHEDOP_block, NULL)`: unmasks events and sleeps until one is pending.
pub fn sched_block() -> i64 {
    // SAFETY: no memory argument; an event is delivered only to a registered callback.
    unsafe { hypercall2(nr(Hypercall::SchedOp), u64::from(SchedOp::Block.raw()), 0) }
}

/// `sched_op(SCHEDOP_poll)` on one port: sleeps until it is pending (events stay
/// masked), or until system time `timeout` ns (0: no timeout).
pub fn sched_poll(port: u32, timeout: u64) -> i64 {
    let ports = [port];
    let poll = ferrovisor_abi::xen::sched::SchedPoll {
        ports: ferrovisor_abi::xen::GuestHandle(ports.as_ptr() as u64),
        nr_ports: 1,
        _cpad0: 0,
        timeout,
    };
    // SAFETY: the hypervisor reads the argument and the one-port list on this stack.
    unsafe {
        hypercall2(
            nr(Hypercall::SchedOp),
            u64::from(SchedOp::Poll.raw()),
            (&raw const poll) as u64,
        )
    }
}

/// `vm_assist(cmd, type)`.
pub fn vm_assist(cmd: VmAssistCmd, ty: VmAssistType) -> i64 {
    // SAFETY: no memory argument. Enabling writable page tables only makes the hypervisor
    // emulate page-table writes that would otherwise fault.
    unsafe {
        hypercall2(
            nr(Hypercall::VmAssist),
            u64::from(cmd.raw()),
            u64::from(ty.raw()),
        )
    }
}

/// `set_trap_table(table)`. `table` must end with an entry whose `address` is 0 (the
/// hypervisor reads up to it); a table without one is refused here with `-EINVAL`.
///
/// # Safety
/// Every handler address must be code that handles Xen's PV exception frame.
pub unsafe fn set_trap_table(table: &[TrapInfo]) -> i64 {
    if table.last().is_none_or(|t| t.address != 0) {
        return ferrovisor_abi::errno::XenErrno::Einval.to_hypercall_ret();
    }
    // SAFETY: the caller's contract; the hypervisor reads the table up to its terminator.
    unsafe { hypercall1(nr(Hypercall::SetTrapTable), addr(table.as_ptr())) }
}

/// `set_callbacks(event, failsafe, syscall)` (x86-64: three code addresses).
///
/// # Safety
/// Each address must be code that handles the corresponding PV callback frame.
pub unsafe fn set_callbacks(event: u64, failsafe: u64, syscall: u64) -> i64 {
    // SAFETY: the caller's contract.
    unsafe { hypercall3(nr(Hypercall::SetCallbacks), event, failsafe, syscall) }
}

/// `callback_op(CALLBACKOP_register, &{type, flags, address})`.
///
/// # Safety
/// `address` must be code that handles the callback's PV frame.
pub unsafe fn callback_register(ty: CallbackType, flags: u16, address: u64) -> i64 {
    let arg = CallbackRegister {
        r#type: ty.raw(),
        flags,
        _cpad0: 0,
        address,
    };
    // SAFETY: the caller's contract; the hypervisor reads the 16-byte structure.
    unsafe {
        hypercall2(
            nr(Hypercall::CallbackOp),
            u64::from(CallbackOp::Register.raw()),
            addr(&arg),
        )
    }
}

/// `stack_switch(ss, sp)`: the kernel stack the hypervisor writes the frame on when it
/// enters the kernel from user mode.
///
/// # Safety
/// `sp` must be the top of a stack the kernel does not use for anything else while user
/// mode can enter it.
pub unsafe fn stack_switch(ss: u16, sp: u64) -> i64 {
    // SAFETY: the caller's contract.
    unsafe { hypercall2(nr(Hypercall::StackSwitch), u64::from(ss), sp) }
}

/// `mmu_update(reqs, count, done, foreigndom)`; `done` receives how many succeeded.
///
/// # Safety
/// The updates change page tables: the kernel must not depend on a mapping they remove
/// or alias.
pub unsafe fn mmu_update(reqs: &[MmuUpdate], done: Option<&mut u32>, foreigndom: DomId) -> i64 {
    let done = done.map_or(0, |d| addr(d));
    // SAFETY: the caller's contract; the hypervisor reads `reqs` and writes `done`.
    unsafe {
        hypercall4(
            nr(Hypercall::MmuUpdate),
            addr(reqs.as_ptr()),
            reqs.len() as u64,
            done,
            u64::from(foreigndom),
        )
    }
}

/// `mmuext_op(ops, count, done, foreigndom)`.
///
/// # Safety
/// As [`mmu_update`]: pins, base-pointer switches and flushes change the address space.
pub unsafe fn mmuext_op(ops: &[MmuextOp], done: Option<&mut u32>, foreigndom: DomId) -> i64 {
    let done = done.map_or(0, |d| addr(d));
    // SAFETY: the caller's contract; the hypervisor reads `ops` and writes `done`.
    unsafe {
        hypercall4(
            nr(Hypercall::MmuextOp),
            addr(ops.as_ptr()),
            ops.len() as u64,
            done,
            u64::from(foreigndom),
        )
    }
}

/// `update_va_mapping(va, pte, flags)` (`UVMF_*` flags).
///
/// # Safety
/// As [`mmu_update`].
pub unsafe fn update_va_mapping(va: u64, pte: u64, flags: u64) -> i64 {
    // SAFETY: the caller's contract.
    unsafe { hypercall3(nr(Hypercall::UpdateVaMapping), va, pte, flags) }
}

/// `memory_op(cmd, arg)`.
///
/// # Safety
/// `arg` must point to the structure `cmd` takes (`memory.h`), with every guest handle
/// in it valid for what the hypervisor writes there.
pub unsafe fn memory_op(cmd: MemoryOp, arg: *mut c_void) -> i64 {
    // SAFETY: the caller's contract.
    unsafe { hypercall2(nr(Hypercall::MemoryOp), u64::from(cmd.raw()), addr(arg)) }
}

/// `vcpu_op(cmd, vcpu, arg)`.
///
/// # Safety
/// `arg` must point to the structure `cmd` takes (`vcpu.h`); areas it registers must stay
/// valid for as long as the hypervisor writes them.
pub unsafe fn vcpu_op(cmd: VcpuOp, vcpu: u32, arg: *mut c_void) -> i64 {
    // SAFETY: the caller's contract.
    unsafe {
        hypercall3(
            nr(Hypercall::VcpuOp),
            u64::from(cmd.raw()),
            u64::from(vcpu),
            addr(arg),
        )
    }
}
