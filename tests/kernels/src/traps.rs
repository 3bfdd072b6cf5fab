//! Exceptions and callbacks: the kernel's virtual IDT (`set_trap_table`), the event,
//! failsafe and syscall callbacks, and probes that run one access expected to fault.
//!
//! A 64-bit PV kernel runs in ring 3, so the hypervisor delivers its exceptions: it writes
//! Xen's x86-64 PV exception frame on the kernel stack (from `rsp` upwards: `rcx`, `r11`,
//! the error code for the vectors that have one, then the hardware frame `rip`, `cs`,
//! `rflags`, `rsp`, `ss`; the failsafe callback has `ds`, `es`, `fs`, `gs` between `r11`
//! and `rip`) and resumes at the handler. Every stub here pops `rcx` and `r11`, pushes a
//! placeholder error code where the vector has none, pushes the vector and the general
//! registers, and calls [`dispatch`] with the whole [`ExceptionFrame`]. The return is
//! Linux 6.1's `xen_iret` (`arch/x86/xen/xen-asm.S`): drop vector and error code, push
//! `flags` 0 above the hardware frame, push `rcx`, `r11`, `rax` (the `iret_context` of
//! `xen-x86_64.h`) and make hypercall 23 with `syscall`.
//!
//! What happens to an exception, in order: a probe in progress ([`probe_read`] and
//! friends) records it and resumes after the probed instruction; else the kernel's
//! handler ([`set_handler`]) decides; else (or if it declines) the kernel fails with the
//! frame in the reason. The event callback goes to the kernel's event handler
//! ([`set_event_handler`], which kernels that unmask events install) and fails the kernel
//! without one; the failsafe callback always fails it: a failsafe entry means the
//! hypervisor could not return to the kernel.

use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use ferrovisor_abi::xen::{
    arch_x86::{TrapInfo, FLAT_KERNEL_CS},
    callback::{CallbackType, CALLBACKF_MASK_EVENTS},
};

use crate::{hypercall, println, shared_info};

/// Pseudo-vectors of the callbacks, above the 256 real ones.
pub const VECTOR_SYSCALL: u64 = 256;
pub const VECTOR_EVENT: u64 = 257;
pub const VECTOR_FAILSAFE: u64 = 258;

/// Exception vectors (Intel SDM vol. 3, 6.3.1).
pub mod vector {
    pub const DE: u8 = 0;
    pub const DB: u8 = 1;
    pub const NMI: u8 = 2;
    pub const BP: u8 = 3;
    pub const OF: u8 = 4;
    pub const BR: u8 = 5;
    pub const UD: u8 = 6;
    pub const NM: u8 = 7;
    pub const DF: u8 = 8;
    pub const TS: u8 = 10;
    pub const NP: u8 = 11;
    pub const SS: u8 = 12;
    pub const GP: u8 = 13;
    pub const PF: u8 = 14;
    pub const MF: u8 = 16;
    pub const AC: u8 = 17;
    pub const MC: u8 = 18;
    pub const XM: u8 = 19;
}

/// Page-fault error code bits (Intel SDM vol. 3, 4.7).
pub mod pfec {
    pub const PRESENT: u64 = 1 << 0;
    pub const WRITE: u64 = 1 << 1;
    pub const USER: u64 = 1 << 2;
    pub const RESERVED: u64 = 1 << 3;
    pub const INSN_FETCH: u64 = 1 << 4;
}

/// What a handler finds on its stack: the general registers [`dispatch`]'s stub saved,
/// then the vector, the error code (0 for a vector without one), and the hardware-shaped
/// part of the PV frame. Changing a field changes what the `iret` restores.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct ExceptionFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// 0..=255, or one of the `VECTOR_*` callback pseudo-vectors.
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    /// Bits 0-15 the selector (RPL 0 when the kernel interrupted itself, 3 from user mode),
    /// bits 32-39 the event upcall mask before delivery.
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl ExceptionFrame {
    /// The `cs` selector alone.
    pub fn cs_selector(&self) -> u16 {
        self.cs as u16
    }

    /// The upcall mask the hypervisor saved in `cs` bits 32-39.
    pub fn saved_upcall_mask(&self) -> u8 {
        (self.cs >> 32) as u8
    }

    /// The exception came from guest user mode (the frame's `cs` has RPL 3).
    pub fn from_user(&self) -> bool {
        self.cs & 3 == 3
    }
}

/// An exception being handled: the frame, and for a page fault the address from
/// `vcpu_info.arch.cr2` (when shared_info is mapped, see [`shared_info::map`]).
#[derive(Debug)]
pub struct Trap<'a> {
    pub frame: &'a mut ExceptionFrame,
    pub cr2: Option<u64>,
}

/// A kernel's exception handler: `true` when it handled the exception (the frame is then
/// returned to, as the handler left it); `false` fails the kernel.
pub type Handler = fn(&mut Trap<'_>) -> bool;

/// The vectors the trap table covers: every architectural exception but NMI (a
/// callback), the reserved 9 and 15, and those with no use in a PV guest.
const TRAP_VECTORS: [u8; 17] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19];

/// The kernel's handler, a `Handler` as a pointer (null: none).
static HANDLER: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
/// Handlers running (a fault inside a handler nests).
static DEPTH: AtomicU32 = AtomicU32::new(0);
/// Deeper than this, something is looping: stop without printing more.
const MAX_DEPTH: u32 = 3;

/// Installs `handler` as the kernel's exception and syscall handler.
pub fn set_handler(handler: Handler) {
    HANDLER.store(handler as *mut (), Ordering::SeqCst);
}

/// A kernel's event-upcall handler: it runs with events masked and returns through the
/// frame's `iret`, whose saved IF restores the upcall mask.
pub type EventHandler = fn(&mut ExceptionFrame);

/// The kernel's event handler, an `EventHandler` as a pointer (null: none).
static EVENT_HANDLER: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// Installs `handler` for the event callback (`CALLBACKTYPE_event`).
pub fn set_event_handler(handler: EventHandler) {
    EVENT_HANDLER.store(handler as *mut (), Ordering::SeqCst);
}

fn event_handler() -> Option<EventHandler> {
    let raw = EVENT_HANDLER.load(Ordering::SeqCst);
    if raw.is_null() {
        return None;
    }
    // SAFETY: only `set_event_handler` stores here, and it stores an `EventHandler`.
    Some(unsafe { core::mem::transmute::<*mut (), EventHandler>(raw) })
}

fn handler() -> Option<Handler> {
    let raw = HANDLER.load(Ordering::SeqCst);
    if raw.is_null() {
        return None;
    }
    // SAFETY: only `set_handler` stores here, and it stores a `Handler`; a function
    // pointer survives the round trip through a data pointer on x86-64.
    Some(unsafe { core::mem::transmute::<*mut (), Handler>(raw) })
}

/// The trap table and callbacks were accepted; which hypercall registered the callbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbacksVia {
    CallbackOp,
    SetCallbacks,
}

/// Why [`install`] failed: the hypercall and its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstallError {
    pub what: &'static str,
    pub ret: i64,
}

impl core::fmt::Display for InstallError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} returned {}", self.what, self.ret)
    }
}

/// Installs the trap table (#BP and #OF with DPL 3, so user mode may `int3`; the others
/// DPL 0) and the event, failsafe and syscall callbacks (`callback_op`, falling back to
/// `set_callbacks` when that is `-ENOSYS`).
pub fn install() -> Result<CallbacksVia, InstallError> {
    let mut table = [TrapInfo {
        vector: 0,
        flags: 0,
        cs: 0,
        _cpad0: 0,
        address: 0,
    }; TRAP_VECTORS.len() + 1];
    for (slot, &v) in table.iter_mut().zip(TRAP_VECTORS.iter()) {
        *slot = TrapInfo {
            vector: v,
            flags: if v == vector::BP || v == vector::OF {
                3
            } else {
                0
            },
            cs: FLAT_KERNEL_CS,
            _cpad0: 0,
            address: stubs::trap(v),
        };
    }
    // SAFETY: every address is a stub below, which handles the PV exception frame of its
    // vector; the table ends with the zero entry.
    let ret = unsafe { hypercall::set_trap_table(&table) };
    if ret != 0 {
        return Err(InstallError {
            what: "set_trap_table",
            ret,
        });
    }
    let callbacks = [
        (CallbackType::Event, stubs::event(), 0),
        (
            CallbackType::Failsafe,
            stubs::failsafe(),
            CALLBACKF_MASK_EVENTS,
        ),
        (
            CallbackType::Syscall,
            stubs::syscall(),
            CALLBACKF_MASK_EVENTS,
        ),
    ];
    let mut via = CallbacksVia::CallbackOp;
    for (ty, address, flags) in callbacks {
        // SAFETY: each stub handles its callback's frame.
        let ret = unsafe { hypercall::callback_register(ty, flags, address) };
        if ret == ferrovisor_abi::errno::XenErrno::Enosys.to_hypercall_ret() {
            via = CallbacksVia::SetCallbacks;
            break;
        }
        if ret != 0 {
            return Err(InstallError {
                what: "callback_op(CALLBACKOP_register)",
                ret,
            });
        }
    }
    if via == CallbacksVia::SetCallbacks {
        // SAFETY: as above.
        let ret = unsafe {
            hypercall::set_callbacks(stubs::event(), stubs::failsafe(), stubs::syscall())
        };
        if ret != 0 {
            return Err(InstallError {
                what: "set_callbacks",
                ret,
            });
        }
    }
    Ok(via)
}

/// A fault a probe caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub vector: u8,
    pub error_code: u64,
    /// The faulting instruction (or, for a trap, the next one).
    pub rip: u64,
    /// The frame's `cs` (selector and saved upcall mask).
    pub cs: u64,
    /// `vcpu_info.arch.cr2` for a page fault (when shared_info is mapped).
    pub cr2: Option<u64>,
}

impl core::fmt::Display for Fault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "vector {} error code {:#x} at rip {:#x}",
            self.vector, self.error_code, self.rip
        )?;
        if let Some(cr2) = self.cr2 {
            write!(f, " cr2 {cr2:#x}")?;
        }
        Ok(())
    }
}

/// While a probe runs: where to resume (0: no probe) and with which `rsp`.
#[no_mangle]
static PVRT_PROBE_RESUME: AtomicU64 = AtomicU64::new(0);
#[no_mangle]
static PVRT_PROBE_RSP: AtomicU64 = AtomicU64::new(0);
/// The fault the last probe caught (vector `u64::MAX`: none).
static CAUGHT_VECTOR: AtomicU64 = AtomicU64::new(u64::MAX);
static CAUGHT_ERROR: AtomicU64 = AtomicU64::new(0);
static CAUGHT_RIP: AtomicU64 = AtomicU64::new(0);
static CAUGHT_CS: AtomicU64 = AtomicU64::new(0);
/// `u64::MAX`: no CR2 known.
static CAUGHT_CR2: AtomicU64 = AtomicU64::new(u64::MAX);

fn take_caught() -> Option<Fault> {
    let vector = CAUGHT_VECTOR.swap(u64::MAX, Ordering::SeqCst);
    if vector == u64::MAX {
        return None;
    }
    let cr2 = CAUGHT_CR2.swap(u64::MAX, Ordering::SeqCst);
    Some(Fault {
        vector: vector as u8,
        error_code: CAUGHT_ERROR.load(Ordering::SeqCst),
        rip: CAUGHT_RIP.load(Ordering::SeqCst),
        cs: CAUGHT_CS.load(Ordering::SeqCst),
        cr2: (cr2 != u64::MAX).then_some(cr2),
    })
}

/// Called by the common stub with the frame it built on the stack.
#[cfg(target_os = "none")]
#[no_mangle]
extern "C" fn pvrt_trap_dispatch(frame: &mut ExceptionFrame) {
    dispatch(frame);
}

/// Handles one exception or callback entry; see the module documentation.
pub fn dispatch(frame: &mut ExceptionFrame) {
    let depth = DEPTH.fetch_add(1, Ordering::SeqCst);
    if depth >= MAX_DEPTH {
        // Reporting faulted again and again: stop with one fixed line.
        let _ = hypercall::console_write(b"pv-test: exceptions nested too deep; crashing\n");
        let _ = hypercall::sched_shutdown(ferrovisor_abi::xen::sched::ShutdownReason::Crash);
    }
    let cr2 = (frame.vector == u64::from(vector::PF))
        .then(shared_info::cr2)
        .flatten();
    match frame.vector {
        VECTOR_EVENT => {
            let Some(h) = event_handler() else {
                crate::fail!(
                    "event upcall at rip {:#x} but the kernel has no event handler",
                    frame.rip
                );
            };
            h(frame);
            DEPTH.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        VECTOR_FAILSAFE => crate::fail!(
            "failsafe callback: the hypervisor could not return to rip {:#x} cs {:#x} rsp {:#x}",
            frame.rip,
            frame.cs,
            frame.rsp
        ),
        _ => {}
    }
    let resume = PVRT_PROBE_RESUME.swap(0, Ordering::SeqCst);
    if resume != 0 && frame.vector < 256 {
        CAUGHT_ERROR.store(frame.error_code, Ordering::SeqCst);
        CAUGHT_RIP.store(frame.rip, Ordering::SeqCst);
        CAUGHT_CS.store(frame.cs, Ordering::SeqCst);
        CAUGHT_CR2.store(cr2.unwrap_or(u64::MAX), Ordering::SeqCst);
        CAUGHT_VECTOR.store(frame.vector, Ordering::SeqCst);
        frame.rip = resume;
        frame.rsp = PVRT_PROBE_RSP.load(Ordering::SeqCst);
    } else {
        let handled = handler().is_some_and(|h| h(&mut Trap { frame, cr2 }));
        if !handled {
            let what = match frame.vector {
                VECTOR_SYSCALL => "syscall from user mode",
                _ => "exception",
            };
            crate::fail!(
                "unexpected {what} (vector {}) error code {:#x} at rip {:#x} cs {:#x} rflags {:#x} \
                 rsp {:#x} cr2 {}",
                frame.vector,
                frame.error_code,
                frame.rip,
                frame.cs,
                frame.rflags,
                frame.rsp,
                Cr2(cr2)
            );
        }
    }
    DEPTH.fetch_sub(1, Ordering::SeqCst);
}

struct Cr2(Option<u64>);

impl core::fmt::Display for Cr2 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(cr2) => write!(f, "{cr2:#x}"),
            None => f.write_str("unknown"),
        }
    }
}

/// Arms a probe: the next exception resumes at the address the probe's asm stores.
fn probe_begin() {
    CAUGHT_VECTOR.store(u64::MAX, Ordering::SeqCst);
    CAUGHT_CR2.store(u64::MAX, Ordering::SeqCst);
}

fn probe_end() -> Option<Fault> {
    PVRT_PROBE_RESUME.store(0, Ordering::SeqCst);
    take_caught()
}

// Each probe stores the resume address (the label after the probed instruction) and its
// stack pointer, runs the instruction, and disarms. A probed fault resumes at the label
// with that stack pointer, every register the asm declares clobbered.

/// Reads the u64 at `addr`, catching the fault. Needs [`install`].
pub fn probe_read(addr: u64) -> Result<u64, Fault> {
    probe_begin();
    #[cfg(target_os = "none")]
    let value: u64;
    // SAFETY: a read of `addr` either succeeds (the kernel accepts any value) or faults;
    // the fault resumes at label 2 with this `rsp` (the trap table is the caller's
    // contract, without it the hypervisor crashes the domain). Nothing else is touched.
    #[cfg(target_os = "none")]
    unsafe {
        core::arch::asm!(
            "lea {tmp}, [rip + 2f]",
            "mov [rip + PVRT_PROBE_RSP], rsp",
            "mov [rip + PVRT_PROBE_RESUME], {tmp}",
            "mov {value}, [{addr}]",
            "2:",
            tmp = out(reg) _,
            value = lateout(reg) value,
            addr = in(reg) addr,
        );
    }
    #[cfg(not(target_os = "none"))]
    let value: u64 = host_only(addr);
    probe_end().map_or(Ok(value), Err)
}

/// Writes `value` to `addr`, catching the fault. Needs [`install`].
///
/// # Safety
/// If the write succeeds it changes memory: `addr` must be memory the kernel may change.
pub unsafe fn probe_write(addr: u64, value: u64) -> Result<(), Fault> {
    probe_begin();
    // SAFETY: the caller's contract for a successful write; a fault resumes at label 2.
    #[cfg(target_os = "none")]
    unsafe {
        core::arch::asm!(
            "lea {tmp}, [rip + 2f]",
            "mov [rip + PVRT_PROBE_RSP], rsp",
            "mov [rip + PVRT_PROBE_RESUME], {tmp}",
            "mov [{addr}], {value}",
            "2:",
            tmp = out(reg) _,
            value = in(reg) value,
            addr = in(reg) addr,
        );
    }
    #[cfg(not(target_os = "none"))]
    host_only::<_, ()>((addr, value));
    probe_end().map_or(Ok(()), Err)
}

/// Calls `target`, catching the fault of fetching or running it. Needs [`install`].
///
/// # Safety
/// If `target` is code the kernel can run, it is run as an `extern "C" fn()`.
pub unsafe fn probe_call(target: u64) -> Result<(), Fault> {
    probe_begin();
    // SAFETY: the caller's contract for a target that runs; a fault resumes at label 2
    // with the stack pointer from before the `call` (dropping its return address). The
    // call may clobber every caller-saved register.
    #[cfg(target_os = "none")]
    unsafe {
        core::arch::asm!(
            "lea rax, [rip + 2f]",
            "mov [rip + PVRT_PROBE_RSP], rsp",
            "mov [rip + PVRT_PROBE_RESUME], rax",
            "call {target}",
            "2:",
            target = in(reg) target,
            out("rax") _,
            clobber_abi("C"),
        );
    }
    #[cfg(not(target_os = "none"))]
    host_only::<_, ()>(target);
    probe_end().map_or(Ok(()), Err)
}

/// Runs `rdmsr` for `msr`, catching the #GP. Needs [`install`].
pub fn probe_rdmsr(msr: u32) -> Result<u64, Fault> {
    probe_begin();
    #[cfg(target_os = "none")]
    let (lo, hi): (u32, u32);
    // SAFETY: in ring 3 `rdmsr` faults; the hypervisor either emulates it (writing only
    // eax and edx) or injects #GP, which resumes at label 2.
    #[cfg(target_os = "none")]
    unsafe {
        core::arch::asm!(
            "lea {tmp}, [rip + 2f]",
            "mov [rip + PVRT_PROBE_RSP], rsp",
            "mov [rip + PVRT_PROBE_RESUME], {tmp}",
            "xor eax, eax",
            "xor edx, edx",
            "rdmsr",
            "2:",
            tmp = out(reg) _,
            in("ecx") msr,
            out("eax") lo,
            out("edx") hi,
        );
    }
    #[cfg(not(target_os = "none"))]
    let (lo, hi): (u32, u32) = host_only(msr);
    probe_end().map_or(Ok(u64::from(hi) << 32 | u64::from(lo)), Err)
}

/// Runs `wrmsr` of `value` to `msr`, catching the #GP. Needs [`install`].
///
/// # Safety
/// A write the hypervisor carries out changes the vCPU's state (segment bases, ...).
pub unsafe fn probe_wrmsr(msr: u32, value: u64) -> Result<(), Fault> {
    probe_begin();
    // SAFETY: the caller's contract; a #GP resumes at label 2.
    #[cfg(target_os = "none")]
    unsafe {
        core::arch::asm!(
            "lea {tmp}, [rip + 2f]",
            "mov [rip + PVRT_PROBE_RSP], rsp",
            "mov [rip + PVRT_PROBE_RESUME], {tmp}",
            "wrmsr",
            "2:",
            tmp = out(reg) _,
            in("ecx") msr,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
        );
    }
    #[cfg(not(target_os = "none"))]
    host_only::<_, ()>((msr, value));
    probe_end().map_or(Ok(()), Err)
}

/// Runs `mov %reg, %cr0` with `value`, catching the #GP. Needs [`install`].
///
/// # Safety
/// A write the hypervisor accepts changes the vCPU's CR0 (its TS bit).
pub unsafe fn probe_mov_to_cr0(value: u64) -> Result<(), Fault> {
    probe_begin();
    // SAFETY: the caller's contract; a #GP resumes at label 2.
    #[cfg(target_os = "none")]
    unsafe {
        core::arch::asm!(
            "lea {tmp}, [rip + 2f]",
            "mov [rip + PVRT_PROBE_RSP], rsp",
            "mov [rip + PVRT_PROBE_RESUME], {tmp}",
            "mov cr0, {v}",
            "2:",
            tmp = out(reg) _,
            v = in(reg) value,
        );
    }
    #[cfg(not(target_os = "none"))]
    host_only::<_, ()>(value);
    probe_end().map_or(Ok(()), Err)
}

/// CPUID through Xen's forced-emulation prefix (`ud2; .ascii "xen"; cpuid`,
/// `XEN_EMULATE_PREFIX`): the hypervisor's view of `leaf`/`subleaf` as `[eax, ebx, ecx,
/// edx]`, or the #UD when it does not emulate it. Needs [`install`].
pub fn probe_forced_cpuid(leaf: u32, subleaf: u32) -> Result<[u32; 4], Fault> {
    probe_begin();
    #[cfg(target_os = "none")]
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: the prefixed `cpuid` writes only eax, ebx, ecx and edx (rbx is saved around
    // it, LLVM reserves it); a #UD resumes at label 2.
    #[cfg(target_os = "none")]
    unsafe {
        core::arch::asm!(
            "lea {tmp}, [rip + 2f]",
            "mov [rip + PVRT_PROBE_RSP], rsp",
            "mov [rip + PVRT_PROBE_RESUME], {tmp}",
            "mov {rbx_save}, rbx",
            "ud2",
            ".ascii \"xen\"",
            "cpuid",
            "mov {ebx_out:e}, ebx",
            "mov rbx, {rbx_save}",
            "2:",
            tmp = out(reg) _,
            rbx_save = out(reg) _,
            ebx_out = out(reg) b,
            inout("eax") leaf => a,
            inout("ecx") subleaf => c,
            out("edx") d,
        );
    }
    #[cfg(not(target_os = "none"))]
    let (a, b, c, d): (u32, u32, u32, u32) = host_only((leaf, subleaf));
    probe_end().map_or(Ok([a, b, c, d]), Err)
}

#[cfg(not(target_os = "none"))]
fn host_only<T: core::fmt::Debug, R>(what: T) -> R {
    panic!("pvrt probe {what:?}: only inside a PV guest")
}

/// Enters guest user mode at `rip` with stack `rsp` through the `iret` hypercall (a frame
/// with `cs` = `FLAT_USER_CS64`, RPL 3: `xen-x86_64.h`'s `iret` returns to user mode
/// exactly then), with events masked (IF clear). Returns when a handler sends the vCPU
/// back with [`return_from_user`]. The callee-saved registers are kept; the kernel stack
/// pointer is remembered for the way back.
///
/// # Safety
/// User page tables must be installed (`MMUEXT_NEW_USER_BASEPTR`) mapping `rip` and `rsp`,
/// the kernel's stack for entries from user mode registered (`stack_switch`), and the
/// trap table and syscall callback installed with a handler that eventually calls
/// [`return_from_user`].
pub unsafe fn enter_user(rip: u64, rsp: u64) {
    // SAFETY: the caller's contract; the asm keeps callee-saved registers across the user
    // excursion by saving them on this stack, which `pvrt_user_return` restores.
    #[cfg(target_os = "none")]
    unsafe {
        core::arch::asm!(
            "call pvrt_enter_user",
            in("rdi") rip,
            in("rsi") rsp,
            clobber_abi("C"),
        );
    }
    #[cfg(not(target_os = "none"))]
    host_only::<_, ()>((rip, rsp));
}

/// The kernel `rsp` [`enter_user`] left from (0: not in user mode).
#[no_mangle]
static PVRT_USER_KERNEL_RSP: AtomicU64 = AtomicU64::new(0);

/// From a handler of an entry from user mode: makes the handler's `iret` resume the
/// kernel after its [`enter_user`] call instead of returning to user mode. `false` if no
/// [`enter_user`] is outstanding.
pub fn return_from_user(frame: &mut ExceptionFrame) -> bool {
    let rsp = PVRT_USER_KERNEL_RSP.swap(0, Ordering::SeqCst);
    if rsp == 0 {
        return false;
    }
    frame.rip = stubs::user_return();
    frame.rsp = rsp;
    // RPL 0: the `iret` stays in guest-kernel mode (`do_iret`).
    frame.cs = u64::from(FLAT_KERNEL_CS & !3);
    frame.ss = u64::from(ferrovisor_abi::xen::arch_x86::FLAT_KERNEL_SS & !3);
    frame.rflags = 0x2;
    true
}

/// The runtime's entry stubs (the global assembly below), by symbol.
#[cfg(target_os = "none")]
pub(crate) mod stubs {
    use core::arch::global_asm;

    macro_rules! addr_of_stub {
        ($sym:ident) => {{
            extern "C" {
                fn $sym();
            }
            $sym as unsafe extern "C" fn() as usize as u64
        }};
    }

    pub fn trap(vector: u8) -> u64 {
        match vector {
            0 => addr_of_stub!(pvrt_trap_0),
            1 => addr_of_stub!(pvrt_trap_1),
            3 => addr_of_stub!(pvrt_trap_3),
            4 => addr_of_stub!(pvrt_trap_4),
            5 => addr_of_stub!(pvrt_trap_5),
            6 => addr_of_stub!(pvrt_trap_6),
            7 => addr_of_stub!(pvrt_trap_7),
            8 => addr_of_stub!(pvrt_trap_8),
            10 => addr_of_stub!(pvrt_trap_10),
            11 => addr_of_stub!(pvrt_trap_11),
            12 => addr_of_stub!(pvrt_trap_12),
            13 => addr_of_stub!(pvrt_trap_13),
            14 => addr_of_stub!(pvrt_trap_14),
            16 => addr_of_stub!(pvrt_trap_16),
            17 => addr_of_stub!(pvrt_trap_17),
            18 => addr_of_stub!(pvrt_trap_18),
            19 => addr_of_stub!(pvrt_trap_19),
            _ => 0,
        }
    }

    pub fn event() -> u64 {
        addr_of_stub!(pvrt_event_callback)
    }

    pub fn failsafe() -> u64 {
        addr_of_stub!(pvrt_failsafe_callback)
    }

    pub fn syscall() -> u64 {
        addr_of_stub!(pvrt_syscall_callback)
    }

    pub fn user_return() -> u64 {
        addr_of_stub!(pvrt_user_return)
    }

    // The entry stubs and the common path. `has_err` says whether the hypervisor pushed
    // an error code; without one a 0 takes its place so that every frame has one shape.
    // The dispatch call runs on a 16-byte aligned stack (rbx keeps the frame address).
    global_asm!(
        r#"
        .pushsection .text.pvrt_traps, "ax", @progbits

        .macro pvrt_entry name, vec, has_err
        .global \name
        .type \name, @function
    \name:
        pop rcx
        pop r11
        .if \has_err == 0
        push 0
        .endif
        push \vec
        jmp pvrt_trap_common
        .size \name, . - \name
        .endm

        pvrt_entry pvrt_trap_0, 0, 0
        pvrt_entry pvrt_trap_1, 1, 0
        pvrt_entry pvrt_trap_3, 3, 0
        pvrt_entry pvrt_trap_4, 4, 0
        pvrt_entry pvrt_trap_5, 5, 0
        pvrt_entry pvrt_trap_6, 6, 0
        pvrt_entry pvrt_trap_7, 7, 0
        pvrt_entry pvrt_trap_8, 8, 1
        pvrt_entry pvrt_trap_10, 10, 1
        pvrt_entry pvrt_trap_11, 11, 1
        pvrt_entry pvrt_trap_12, 12, 1
        pvrt_entry pvrt_trap_13, 13, 1
        pvrt_entry pvrt_trap_14, 14, 1
        pvrt_entry pvrt_trap_16, 16, 0
        pvrt_entry pvrt_trap_17, 17, 1
        pvrt_entry pvrt_trap_18, 18, 0
        pvrt_entry pvrt_trap_19, 19, 0
        pvrt_entry pvrt_syscall_callback, 256, 0
        pvrt_entry pvrt_event_callback, 257, 0
        .purgem pvrt_entry

        // Failsafe: ds, es, fs, gs sit between r11 and rip; the kernel only reports it.
        .global pvrt_failsafe_callback
        .type pvrt_failsafe_callback, @function
    pvrt_failsafe_callback:
        pop rcx
        pop r11
        add rsp, 32
        push 0
        push 258
        jmp pvrt_trap_common
        .size pvrt_failsafe_callback, . - pvrt_failsafe_callback

    pvrt_trap_common:
        push rax
        push rbx
        push rcx
        push rdx
        push rsi
        push rdi
        push rbp
        push r8
        push r9
        push r10
        push r11
        push r12
        push r13
        push r14
        push r15
        mov rbx, rsp
        mov rdi, rsp
        and rsp, -16
        cld
        call pvrt_trap_dispatch
        mov rsp, rbx
        pop r15
        pop r14
        pop r13
        pop r12
        pop r11
        pop r10
        pop r9
        pop r8
        pop rbp
        pop rdi
        pop rsi
        pop rdx
        pop rcx
        pop rbx
        pop rax
        add rsp, 16
        // xen_iret: flags 0 above the hardware frame, then rcx, r11, rax.
        push 0
        push rcx
        push r11
        push rax
        mov eax, 23
        syscall
        ud2

        // pvrt_enter_user(rip = rdi, rsp = rsi): keep the callee-saved registers on this
        // stack, remember it, and iret to user mode: ss, rsp, rflags (IF clear: events
        // stay masked), cs (FLAT_USER_CS64, RPL 3), rip, flags 0, then rcx, r11, rax.
        .global pvrt_enter_user
        .type pvrt_enter_user, @function
    pvrt_enter_user:
        push rbx
        push rbp
        push r12
        push r13
        push r14
        push r15
        mov [rip + PVRT_USER_KERNEL_RSP], rsp
        push 0xe02b
        push rsi
        push 0x2
        push 0xe033
        push rdi
        push 0
        xor ecx, ecx
        xor r11d, r11d
        xor eax, eax
        push rcx
        push r11
        push rax
        mov eax, 23
        syscall
        ud2
        .size pvrt_enter_user, . - pvrt_enter_user

        // Where return_from_user sends the vCPU: the stack is pvrt_enter_user's.
        .global pvrt_user_return
        .type pvrt_user_return, @function
    pvrt_user_return:
        pop r15
        pop r14
        pop r13
        pop r12
        pop rbp
        pop rbx
        ret
        .size pvrt_user_return, . - pvrt_user_return

        .popsection
        "#
    );
}

#[cfg(not(target_os = "none"))]
pub(crate) mod stubs {
    pub fn trap(_: u8) -> u64 {
        0
    }
    pub fn event() -> u64 {
        0
    }
    pub fn failsafe() -> u64 {
        0
    }
    pub fn syscall() -> u64 {
        0
    }
    pub fn user_return() -> u64 {
        0
    }
}

/// Prints what a frame holds, for the findings.
pub fn describe(frame: &ExceptionFrame) {
    println!(
        "{} {}: frame vector {} error {:#x} rip {:#x} cs {:#x} rflags {:#x} rsp {:#x} ss {:#x}",
        crate::contract::VERDICT_PREFIX,
        crate::name(),
        frame.vector,
        frame.error_code,
        frame.rip,
        frame.cs,
        frame.rflags,
        frame.rsp,
        frame.ss
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout_matches_the_stub() {
        // 15 registers pushed by the common stub, then vector and error code, then the
        // five-slot hardware frame.
        assert_eq!(core::mem::size_of::<ExceptionFrame>(), 22 * 8);
        assert_eq!(core::mem::offset_of!(ExceptionFrame, rax), 14 * 8);
        assert_eq!(core::mem::offset_of!(ExceptionFrame, vector), 15 * 8);
        assert_eq!(core::mem::offset_of!(ExceptionFrame, rip), 17 * 8);
        assert_eq!(core::mem::offset_of!(ExceptionFrame, ss), 21 * 8);
    }

    #[test]
    fn every_trap_vector_has_a_stub_slot() {
        // NMI (a callback) and the reserved vectors 9 and 15 have none.
        for v in [2u8, 9, 15] {
            assert!(!TRAP_VECTORS.contains(&v));
        }
        assert!(TRAP_VECTORS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn frame_mode_and_mask() {
        let f = ExceptionFrame {
            cs: 0xe033 | (1 << 32),
            ..ExceptionFrame::default()
        };
        assert!(f.from_user());
        assert_eq!(f.saved_upcall_mask(), 1);
        assert_eq!(f.cs_selector(), 0xe033);
    }
}
