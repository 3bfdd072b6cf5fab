//! Entering the PV guest kernel ("bouncing") and leaving it through the `iret` hypercall.
//!
//! A 64-bit PV kernel runs in ring 3 like its applications, so the hypervisor, not the
//! CPU, delivers its exceptions, event upcalls, failsafe callbacks and the `syscall`s of
//! its applications: it writes an exception frame on the guest kernel's stack and resumes
//! the vCPU at the handler the guest registered. The guest leaves the handler with the
//! `iret` hypercall, which reads the frame back.
//!
//! Everything here is a pure function over the vCPU's saved registers, a little per-vCPU
//! state ([`BounceState`]) and a guest-memory accessor ([`GuestStack`]); the caller owns
//! the page-table and GS-base switches the results ask for.
//!
//! # Register file
//! The functions take the ABI's [`CpuUserRegs`] (`struct cpu_user_regs`, `xen-x86_64.h`)
//! rather than a private copy: it is the register block of `vcpu_guest_context`, so the
//! same value is what `VCPUOP_initialise`, the toolstack and save/restore exchange, and no
//! conversion sits between the trap entry path and these functions. Its `cs`/`ss` are
//! 16-bit selectors, and its `saved_upcall_mask`, `error_code` and `entry_vector` are not
//! used here (the mask travels in [`BounceState::upcall_mask`]).
//!
//! # The PV exception frame
//! From lowest address (the new stack pointer) to highest, in 8-byte slots:
//!
//! | slot | contents |
//! |---|---|
//! | `rcx` | the interrupted `rcx` |
//! | `r11` | the interrupted `r11` |
//! | `ds`, `es`, `fs`, `gs` | failsafe callback only: the selectors (zero-extended) |
//! | error code | exceptions with one only: the 32-bit code, zero-extended |
//! | `rip` | the interrupted `rip` |
//! | `cs` | bits 0-15 the interrupted `cs` (RPL cleared if the vCPU was in guest-kernel mode), bits 32-39 the upcall mask before delivery |
//! | `rflags` | the interrupted `rflags`, IF = !(upcall mask before delivery), IOPL 0 |
//! | `rsp` | the interrupted `rsp` |
//! | `ss` | the interrupted `ss` |
//!
//! Above `rcx`/`r11` this is the hardware's 64-bit interrupt frame, so the guest's entry
//! stubs pop `rcx` and `r11` and continue as on bare metal (Linux 6.1,
//! `arch/x86/xen/xen-asm.S`: the `xen_pv_trap` stubs and `xen_entry_SYSCALL_64` start with
//! `pop %rcx; pop %r11`; `arch/x86/entry/entry_64.S`'s `xen_failsafe_callback` finds `ds`,
//! `es`, `fs`, `gs` at offsets 0x10-0x28 and the `iret` frame at 0x30). The frame's top is
//! the stack pointer rounded down to 16 bytes. Linux decides "user or kernel" from the
//! frame's `cs` RPL, which is why a frame pushed in guest-kernel mode carries RPL 0 (the
//! `iret` hypercall's description in `xen-x86_64.h` maps RPL 0-2 to kernel mode).
//!
//! # Guest-kernel and guest-user mode
//! Both run in ring 3; the hypervisor tracks the mode ([`BounceState::in_kernel`], Xen's
//! `TF_kernel_mode`). Entering the kernel from user mode switches to the kernel's page
//! tables and stack ([`BounceState::kernel_sp`], set by `stack_switch`) and exchanges the
//! user and kernel GS bases; the `iret` hypercall goes back to user mode exactly when the
//! `cs` it restores has RPL 3. The caller performs the switch: see [`Bounce`] and
//! [`IretOutcome`].

use ferrovisor_abi::xen::arch_x86::{
    CpuUserRegs, IretContext, TrapInfo, FLAT_KERNEL_CS, FLAT_KERNEL_SS, FLAT_USER_CS64,
    FLAT_USER_SS64, HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START, TI_DPL_MASK, TI_IF,
    VGCF_IN_SYSCALL,
};
use zerocopy::{FromZeros, IntoBytes};

// RFLAGS bits (Intel SDM vol. 1, 3.4.3).
const RFLAGS_CF: u64 = 1 << 0;
const RFLAGS_FIXED1: u64 = 1 << 1;
const RFLAGS_PF: u64 = 1 << 2;
const RFLAGS_AF: u64 = 1 << 4;
const RFLAGS_ZF: u64 = 1 << 6;
const RFLAGS_SF: u64 = 1 << 7;
const RFLAGS_TF: u64 = 1 << 8;
/// Interrupt enable: for a PV guest, the complement of its event upcall mask.
pub const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_DF: u64 = 1 << 10;
const RFLAGS_OF: u64 = 1 << 11;
/// I/O privilege level (bits 12-13).
pub const RFLAGS_IOPL: u64 = 3 << 12;
const RFLAGS_NT: u64 = 1 << 14;
const RFLAGS_RF: u64 = 1 << 16;
const RFLAGS_VM: u64 = 1 << 17;
const RFLAGS_AC: u64 = 1 << 18;
const RFLAGS_ID: u64 = 1 << 21;

/// The flags a guest may choose through `iret`: the arithmetic flags, TF, DF, RF, AC and
/// ID. IF is always set in the real RFLAGS (the guest's virtual IF is its upcall mask),
/// IOPL stays 0, VM/NT/VIF/VIP and the reserved bits are dropped.
const IRET_RFLAGS_ALLOWED: u64 = RFLAGS_CF
    | RFLAGS_PF
    | RFLAGS_AF
    | RFLAGS_ZF
    | RFLAGS_SF
    | RFLAGS_TF
    | RFLAGS_DF
    | RFLAGS_OF
    | RFLAGS_RF
    | RFLAGS_AC
    | RFLAGS_ID;

/// Flags cleared on entry to a handler, as the CPU does for an interrupt gate (TF, VM, RF,
/// NT) plus AC, so that alignment checking never fires in the guest kernel.
const ENTRY_RFLAGS_CLEAR: u64 = RFLAGS_TF | RFLAGS_VM | RFLAGS_RF | RFLAGS_NT | RFLAGS_AC;

/// Exception vectors the bounce code treats specially.
pub const VECTOR_UD: u8 = 6;
pub const VECTOR_GP: u8 = 13;
pub const VECTOR_PF: u8 = 14;

/// Page-fault error code bit 2: the access came from user mode. The CPU always sets it for
/// a PV guest (both modes run in ring 3), so it is recomputed from the guest's mode.
pub const PFEC_USER: u32 = 1 << 2;

/// Length of the `syscall` instruction (`0f 05`).
const SYSCALL_INSN_LEN: u64 = 2;

// ---------------------------------------------------------------------------------------
// Addresses.

/// Whether `va` is canonical for 48-bit virtual addresses (bits 63-47 all equal).
pub const fn is_canonical(va: u64) -> bool {
    (((va as i64) << 16) >> 16) as u64 == va
}

/// Whether `va` lies in the range Xen's ABI reserves for the hypervisor in every 64-bit
/// guest address space (`HYPERVISOR_VIRT_START`..`HYPERVISOR_VIRT_END`, `xen-x86_64.h`).
pub const fn in_hypervisor_range(va: u64) -> bool {
    va >= HYPERVISOR_VIRT_START && va < HYPERVISOR_VIRT_END
}

/// Whether the guest may name `va` as a code or stack address: canonical and outside
/// the hypervisor's range.
pub const fn is_guest_address(va: u64) -> bool {
    is_canonical(va) && !in_hypervisor_range(va)
}

/// Whether the byte range `[lo, hi)` (non-empty, `lo < hi`) lies within one canonical half
/// and does not touch the hypervisor's range.
const fn is_guest_range(lo: u64, hi: u64) -> bool {
    let last = hi - 1;
    is_guest_address(lo)
        && is_guest_address(last)
        // Both ends in the same half: nothing between them is non-canonical.
        && (lo >> 63) == (last >> 63)
        // The hypervisor's range sits inside the upper half; a guest range may not
        // straddle it.
        && !(lo < HYPERVISOR_VIRT_START && last >= HYPERVISOR_VIRT_END)
}

// ---------------------------------------------------------------------------------------
// Guest memory.

/// A fault while accessing the guest's stack: `va` is the first address that could not be
/// read or written (not mapped, not writable, not the guest's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub va: u64,
}

/// The guest kernel's memory as the bounce code sees it. The hypervisor implements it by
/// walking the guest kernel's page tables (Xen's `guest_table`, never the user ones: the
/// frame always goes on a kernel stack, even when the vCPU is still in user mode when the
/// function is called) and checking the guest's own access rights. An access may cross
/// page boundaries.
pub trait GuestStack {
    fn write(&mut self, va: u64, bytes: &[u8]) -> Result<(), Fault>;
    fn read(&mut self, va: u64, out: &mut [u8]) -> Result<(), Fault>;
}

// ---------------------------------------------------------------------------------------
// Errors.

/// Why a bounce or an `iret` could not be done. Every one of these means the guest kernel
/// is broken or hostile and cannot be resumed: the caller crashes the domain, as Xen does
/// (`create_bounce_frame` and `do_iret` crash the domain synchronously on each of them).
/// Registers and [`BounceState`] are left untouched when an error is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BounceError {
    /// No handler is registered (trap-table entry or callback address 0).
    NoHandler { vector: Option<u8> },
    /// The registered handler is not a guest address (only possible if the caller stored
    /// an unvalidated address).
    BadHandler { address: u64 },
    /// The frame would not fit below the stack pointer inside the guest's part of the
    /// address space (the stack pointer is non-canonical, in or just above the
    /// hypervisor's range, or too close to 0).
    BadStack { sp: u64 },
    /// Writing the frame or reading the `iret` context faulted.
    StackFault(Fault),
    /// The operation needs the other guest mode: `iret` is a hypercall and only exists in
    /// guest-kernel mode; a `syscall` from guest-kernel mode is a hypercall, not a bounce.
    WrongMode,
    /// The `iret` context asks for a non-canonical or hypervisor `rip` or `rsp`.
    BadIretContext { rip: u64, rsp: u64 },
    /// `iret` to guest-user mode while the guest has no user page tables.
    NoUserPageTables,
}

// ---------------------------------------------------------------------------------------
// Trap table.

/// Vectors in the virtual IDT.
pub const NR_VECTORS: usize = 256;

/// Why `set_trap_table` refused an entry (the hypercall answers `-EINVAL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrapTableError {
    /// Entry `index` of the guest's array names a non-canonical or hypervisor address;
    /// the entries before it were applied.
    BadAddress { index: usize, address: u64 },
}

/// How far `set` got through the guest's array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetProgress {
    /// Entries installed.
    pub applied: usize,
    /// The terminating entry (`address == 0`) was reached; if not, the array goes on
    /// past the slice given and the caller feeds the next part.
    pub terminated: bool,
}

/// The guest's virtual IDT: for each vector, the handler `set_trap_table` installed
/// (`struct trap_info`, `arch-x86/xen.h`). An entry with address 0 has no handler.
#[derive(Clone)]
pub struct TrapTable {
    entries: [TrapInfo; NR_VECTORS],
}

impl core::fmt::Debug for TrapTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut list = f.debug_map();
        for e in self.entries.iter().filter(|e| e.address != 0) {
            list.entry(&e.vector, &format_args!("{:#x}/{:#x}", e.address, e.flags));
        }
        list.finish()
    }
}

impl Default for TrapTable {
    fn default() -> Self {
        Self::new()
    }
}

const EMPTY_TRAP: TrapInfo = TrapInfo {
    vector: 0,
    flags: 0,
    cs: 0,
    _cpad0: 0,
    address: 0,
};

impl TrapTable {
    /// A table with no handlers.
    pub const fn new() -> Self {
        Self {
            entries: [EMPTY_TRAP; NR_VECTORS],
        }
    }

    /// `set_trap_table(NULL)`: forget every handler.
    pub fn clear(&mut self) {
        self.entries = [EMPTY_TRAP; NR_VECTORS];
    }

    /// `set_trap_table(traps)`: install the entries in order, each replacing its vector's
    /// handler and leaving the other vectors alone, up to the first entry whose address
    /// is 0 (`xen.h`: the array ends with such a sentinel). An address that is not
    /// canonical (Xen's check) or lies in the hypervisor's range (ours: a handler there
    /// could never run) stops the call with an error; the entries before it stay.
    ///
    /// The flags keep the DPL (bits 0-1) and the event-mask bit (bit 2, `TI_IF`); other
    /// bits are dropped. `cs` is recorded with its RPL forced to 3 but otherwise unused:
    /// on x86-64 every handler runs on `FLAT_KERNEL_CS`, whatever selector the guest gave
    /// (Linux passes its own `__KERNEL_CS`).
    pub fn set(&mut self, traps: &[TrapInfo]) -> Result<SetProgress, TrapTableError> {
        for (index, t) in traps.iter().enumerate() {
            if t.address == 0 {
                return Ok(SetProgress {
                    applied: index,
                    terminated: true,
                });
            }
            if !is_guest_address(t.address) {
                return Err(TrapTableError::BadAddress {
                    index,
                    address: t.address,
                });
            }
            self.entries[usize::from(t.vector)] = TrapInfo {
                vector: t.vector,
                flags: t.flags & (TI_DPL_MASK | TI_IF),
                cs: t.cs | 3,
                _cpad0: 0,
                address: t.address,
            };
        }
        Ok(SetProgress {
            applied: traps.len(),
            terminated: false,
        })
    }

    /// The handler for `vector`, if one is installed.
    pub fn get(&self, vector: u8) -> Option<&TrapInfo> {
        let e = &self.entries[usize::from(vector)];
        (e.address != 0).then_some(e)
    }

    /// Whether a software `int $vector` may enter the handler (`xen.h`, `trap_info`: DPL 0
    /// nobody, 1 and 2 the guest kernel, 3 everyone). A refused `int` is a #GP with error
    /// code `vector << 3 | 2`, as for a DPL-0 IDT gate.
    pub fn permits_software_int(&self, vector: u8, in_kernel: bool) -> bool {
        self.get(vector).is_some_and(|e| {
            let dpl = e.flags & TI_DPL_MASK;
            if in_kernel {
                dpl >= 1
            } else {
                dpl == 3
            }
        })
    }
}

// ---------------------------------------------------------------------------------------
// Per-vCPU state.

/// The callback addresses of `set_callbacks`/`callback_op` (`callback.h`), 0 when unset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Callbacks {
    /// `CALLBACKTYPE_event`: always entered with events masked.
    pub event: u64,
    /// `CALLBACKTYPE_failsafe`.
    pub failsafe: u64,
    /// Entering the failsafe callback masks events (`CALLBACKF_mask_events`,
    /// `VGCF_failsafe_disables_events`).
    pub failsafe_masks_events: bool,
    /// `CALLBACKTYPE_syscall`: 64-bit guest-user `syscall`.
    pub syscall: u64,
    /// Entering the syscall callback masks events (`CALLBACKF_mask_events`,
    /// `VGCF_syscall_disables_events`).
    pub syscall_masks_events: bool,
}

/// What the bounce code needs to know about a vCPU, and updates.
#[derive(Clone, Debug)]
pub struct BounceState {
    /// The vCPU is in guest-kernel mode (Xen's `TF_kernel_mode`).
    pub in_kernel: bool,
    /// The guest kernel's stack for entries from user mode (`stack_switch`,
    /// `vcpu_guest_context.kernel_sp`).
    pub kernel_sp: u64,
    /// `vcpu_info.evtchn_upcall_mask`: the caller loads it from the guest's `vcpu_info`
    /// before a call and stores it back after (the guest may change it at any time
    /// itself, so this copy is only valid for the duration of the call).
    pub upcall_mask: u8,
    pub trap_table: TrapTable,
    pub callbacks: Callbacks,
    /// The guest has installed user page tables (`MMUEXT_NEW_USER_BASEPTR`); `iret` to
    /// user mode is refused without them.
    pub has_user_page_tables: bool,
}

impl BounceState {
    /// A vCPU at start of day: guest-kernel mode, events masked, nothing registered.
    pub fn new(kernel_sp: u64) -> Self {
        Self {
            in_kernel: true,
            kernel_sp,
            upcall_mask: 1,
            trap_table: TrapTable::new(),
            callbacks: Callbacks::default(),
            has_user_page_tables: false,
        }
    }
}

/// What the caller must do after a successful bounce, before resuming the vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Bounce {
    /// The vCPU was in guest-user mode and is now in guest-kernel mode: load the guest
    /// kernel's L4 (`guest_table`) into CR3 and exchange the active GS base with the
    /// saved one (the user base is put away and the kernel base made active, what
    /// `swapgs` does in a ring-0 kernel; Xen's `toggle_guest_mode`).
    pub entered_kernel: bool,
    /// A page fault's address: store it in `vcpu_info.arch.cr2` (and the vCPU's virtual
    /// CR2) before resuming; the 64-bit frame has no slot for it.
    pub cr2: Option<u64>,
    /// The upcall mask now in force: store it in `vcpu_info.evtchn_upcall_mask` (it is
    /// also in [`BounceState::upcall_mask`]).
    pub upcall_mask: u8,
}

// ---------------------------------------------------------------------------------------
// The frame.

/// The most slots a frame has: rcx, r11, four selectors, error code, five iret slots.
const MAX_FRAME_SLOTS: usize = 12;

/// What goes on the stack besides the interrupted registers.
#[derive(Clone, Copy)]
struct Entry {
    handler: u64,
    vector: Option<u8>,
    error_code: Option<u32>,
    /// The failsafe callback's selector block (ds, es, fs, gs).
    selectors: Option<[u16; 4]>,
    /// Entering masks events (trap gate "interrupt" bit, callback flag).
    masks_events: bool,
}

/// Write the frame for `entry` and point the vCPU at the handler. Nothing is changed
/// unless everything succeeds.
fn create_frame(
    regs: &mut CpuUserRegs,
    state: &mut BounceState,
    stack: &mut impl GuestStack,
    entry: Entry,
) -> Result<Bounce, BounceError> {
    if entry.handler == 0 {
        return Err(BounceError::NoHandler {
            vector: entry.vector,
        });
    }
    if !is_guest_address(entry.handler) {
        return Err(BounceError::BadHandler {
            address: entry.handler,
        });
    }

    // In kernel mode the frame goes below the interrupted stack pointer and its cs has
    // RPL 0, telling the guest it interrupted itself; from user mode it goes on the
    // registered kernel stack.
    let (sp, frame_cs) = if state.in_kernel {
        (regs.rsp, regs.cs & !3)
    } else {
        (state.kernel_sp, regs.cs)
    };
    let top = sp & !0xf;

    let saved_mask = state.upcall_mask;
    let mut frame_rflags = regs.rflags & !(RFLAGS_IF | RFLAGS_IOPL);
    if saved_mask == 0 {
        frame_rflags |= RFLAGS_IF;
    }

    let mut slots = [0u64; MAX_FRAME_SLOTS];
    let mut n = 0;
    let mut push = |v: u64| {
        slots[n] = v;
        n += 1;
    };
    push(regs.rcx);
    push(regs.r11);
    if let Some(sel) = entry.selectors {
        sel.iter().for_each(|&s| push(u64::from(s)));
    }
    if let Some(code) = entry.error_code {
        push(u64::from(code));
    }
    push(regs.rip);
    push(u64::from(frame_cs) | (u64::from(saved_mask) << 32));
    push(frame_rflags);
    push(regs.rsp);
    push(u64::from(regs.ss));

    let size = (n * 8) as u64;
    let new_sp = match top.checked_sub(size) {
        Some(lo) if top != 0 && is_guest_range(lo, top) => lo,
        _ => return Err(BounceError::BadStack { sp }),
    };

    let mut bytes = [0u8; MAX_FRAME_SLOTS * 8];
    for (chunk, v) in bytes.chunks_exact_mut(8).zip(&slots[..n]) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    stack
        .write(new_sp, &bytes[..n * 8])
        .map_err(BounceError::StackFault)?;

    // Committed: the vCPU enters the handler in guest-kernel mode.
    let entered_kernel = !state.in_kernel;
    state.in_kernel = true;
    if entry.masks_events {
        state.upcall_mask |= 1;
    }
    regs.rip = entry.handler;
    regs.cs = FLAT_KERNEL_CS;
    regs.ss = FLAT_KERNEL_SS;
    regs.rsp = new_sp;
    // The real IF stays set (guests always run interruptible) and IOPL stays 0.
    regs.rflags = (regs.rflags & !(ENTRY_RFLAGS_CLEAR | RFLAGS_IOPL)) | RFLAGS_IF | RFLAGS_FIXED1;

    Ok(Bounce {
        entered_kernel,
        cr2: None,
        upcall_mask: state.upcall_mask,
    })
}

/// Deliver exception `vector` to the guest kernel through its trap table.
///
/// `regs` is the interrupted state (a fault's `rip` is the faulting instruction, a trap's
/// the next one; the caller chooses). `error_code` is given for the vectors that have one
/// (#DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP and software-emulated ones); it is 32 bits wide
/// and zero-extended into its slot. For a #PF, `cr2` is the faulting address: it comes
/// back in [`Bounce::cr2`], and the error code's user bit is recomputed from the guest's
/// mode, since the CPU reports every PV access as a user access.
pub fn bounce_exception(
    regs: &mut CpuUserRegs,
    vector: u8,
    error_code: Option<u32>,
    cr2: Option<u64>,
    state: &mut BounceState,
    stack: &mut impl GuestStack,
) -> Result<Bounce, BounceError> {
    let (handler, masks_events) = state
        .trap_table
        .get(vector)
        .map_or((0, false), |t| (t.address, t.flags & TI_IF != 0));
    let error_code = match (vector, error_code) {
        (VECTOR_PF, Some(code)) if state.in_kernel => Some(code & !PFEC_USER),
        (VECTOR_PF, Some(code)) => Some(code | PFEC_USER),
        (_, code) => code,
    };
    let mut bounce = create_frame(
        regs,
        state,
        stack,
        Entry {
            handler,
            vector: Some(vector),
            error_code,
            selectors: None,
            masks_events,
        },
    )?;
    if vector == VECTOR_PF {
        bounce.cr2 = cr2;
    }
    Ok(bounce)
}

/// Bounce a `syscall` made in guest-user mode to the guest kernel's syscall callback.
///
/// `regs` holds the registers as the `syscall` instruction left them: `rcx` is the return
/// address and `r11` the user's RFLAGS; `rsp` the user stack pointer. The frame records
/// `rip = rcx`, `rflags = r11`, `cs = FLAT_USER_CS64`, `ss = FLAT_USER_SS64` (what Xen's
/// syscall entry reconstructs; Linux's `xen_entry_SYSCALL_64` replaces the `cs`/`ss`
/// slots with its own user selectors). DF is cleared on entry, the only flag the ABI's
/// fixed SYSCALL mask clears besides IF (which is the upcall mask here).
///
/// With no syscall callback registered, the guest gets a #UD at the `syscall`
/// instruction instead, through its trap table (what Xen does since 4.13).
pub fn deliver_syscall_from_user(
    regs: &mut CpuUserRegs,
    state: &mut BounceState,
    stack: &mut impl GuestStack,
) -> Result<Bounce, BounceError> {
    if state.in_kernel {
        return Err(BounceError::WrongMode);
    }
    let mut at_syscall = *regs;
    at_syscall.rip = regs.rcx;
    at_syscall.rflags = regs.r11;
    at_syscall.cs = FLAT_USER_CS64;
    at_syscall.ss = FLAT_USER_SS64;

    if state.callbacks.syscall == 0 {
        at_syscall.rip = at_syscall.rip.wrapping_sub(SYSCALL_INSN_LEN);
        let bounce = bounce_exception(&mut at_syscall, VECTOR_UD, None, None, state, stack)?;
        *regs = at_syscall;
        return Ok(bounce);
    }

    let bounce = create_frame(
        &mut at_syscall,
        state,
        stack,
        Entry {
            handler: state.callbacks.syscall,
            vector: None,
            error_code: None,
            selectors: None,
            masks_events: state.callbacks.syscall_masks_events,
        },
    )?;
    at_syscall.rflags &= !RFLAGS_DF;
    *regs = at_syscall;
    Ok(bounce)
}

/// Whether an event upcall is due on the way back to the guest: an upcall is pending
/// (`vcpu_info.evtchn_upcall_pending`) and events are not masked.
pub const fn upcall_due(upcall_pending: u8, upcall_mask: u8) -> bool {
    upcall_pending != 0 && upcall_mask == 0
}

/// Enter the guest kernel's event callback (`CALLBACKTYPE_event`), called on the way
/// back to the guest when [`upcall_due`]. The frame has no error code; events are masked
/// on entry whatever flags the guest registered the callback with (`callback.h`).
pub fn deliver_event_upcall(
    regs: &mut CpuUserRegs,
    state: &mut BounceState,
    stack: &mut impl GuestStack,
) -> Result<Bounce, BounceError> {
    create_frame(
        regs,
        state,
        stack,
        Entry {
            handler: state.callbacks.event,
            vector: None,
            error_code: None,
            selectors: None,
            masks_events: true,
        },
    )
}

/// Enter the guest kernel's failsafe callback (`CALLBACKTYPE_failsafe`): the guest's state
/// could not be restored (a segment selector failed to load, or the return itself
/// faulted). `regs` is the state the hypervisor tried to return to, its `ds`, `es`, `fs`
/// and `gs` the selectors the guest asked for; the frame carries them between `r11` and
/// `rip`. The caller loads the null selector into any segment register that failed, so
/// the guest can tell a bad selector (saved and current values differ) from a failed
/// return (they match), as Linux's `xen_failsafe_callback` does.
pub fn deliver_failsafe(
    regs: &mut CpuUserRegs,
    state: &mut BounceState,
    stack: &mut impl GuestStack,
) -> Result<Bounce, BounceError> {
    create_frame(
        regs,
        state,
        stack,
        Entry {
            handler: state.callbacks.failsafe,
            vector: None,
            error_code: None,
            selectors: Some([regs.ds, regs.es, regs.fs, regs.gs]),
            masks_events: state.callbacks.failsafe_masks_events,
        },
    )
}

// ---------------------------------------------------------------------------------------
// The iret hypercall.

/// What the caller must do after a successful `iret`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct IretOutcome {
    /// The vCPU returns to guest-user mode: load the guest's user L4
    /// (`guest_table_user`) into CR3 and exchange the active GS base with the saved one
    /// (the kernel base is put away, the user base made active).
    pub to_user: bool,
    /// The restored `rax`, already in `regs.rax`: the hypercall's return path must leave
    /// it there (Xen returns it as the hypercall's result).
    pub rax: u64,
    /// The upcall mask now in force (from the restored IF): store it in
    /// `vcpu_info.evtchn_upcall_mask`, then check [`upcall_due`].
    pub upcall_mask: u8,
}

/// The `iret` hypercall (`HYPERVISOR_iret`, `xen-x86_64.h`): restore the state in the
/// `struct iret_context` at the guest kernel's `rsp` (`rax`, `r11`, `rcx`, `flags`,
/// `rip`, `cs`, `rflags`, `rsp`, `ss` upwards; Linux's `xen_iret` pushes `flags` 0, `rcx`,
/// `r11`, `rax` onto a hardware-shaped `iret` frame).
///
/// * Mode: `cs` with RPL 3 returns to guest-user mode (which needs user page tables),
///   RPL 0-2 stays in guest-kernel mode (Xen's rule, `do_iret`); `cs` and `ss` are then
///   forced to RPL 3, since both modes run in ring 3.
/// * `rflags`: IOPL 0, VM and NT cleared, reserved bits dropped, the real IF set; the
///   guest's IF becomes the upcall mask (mask = !IF). RF is kept (the guest needs it to
///   resume past an instruction breakpoint).
/// * `rip` and `rsp` must be canonical and outside the hypervisor's range (stricter than
///   Xen, which lets the return fault and bounces the #GP to the guest).
/// * `VGCF_in_syscall` in `flags`: return as `sysret` would: `rcx` and `r11` take `rip`
///   and `rflags`, `cs`/`ss` the flat 64-bit user selectors (the header: "Restore RAX,
///   RIP, RFLAGS, RSP. Discard R11, RCX, CS, SS"). Otherwise `r11` and `rcx` come from
///   the context.
///
/// Only a guest-kernel-mode vCPU can make the hypercall. Other registers are as they were
/// at the hypercall.
pub fn do_iret(
    regs: &mut CpuUserRegs,
    state: &mut BounceState,
    stack: &mut impl GuestStack,
) -> Result<IretOutcome, BounceError> {
    if !state.in_kernel {
        return Err(BounceError::WrongMode);
    }
    let mut ctx = IretContext::new_zeroed();
    stack
        .read(regs.rsp, ctx.as_mut_bytes())
        .map_err(BounceError::StackFault)?;

    if !is_guest_address(ctx.rip) || !is_guest_address(ctx.rsp) {
        return Err(BounceError::BadIretContext {
            rip: ctx.rip,
            rsp: ctx.rsp,
        });
    }
    // Selectors are 16 bits; the upper bits of the `cs` slot may still hold the upcall
    // mask a bounce frame stored there.
    let cs = ctx.cs as u16;
    let to_user = cs & 3 == 3;
    if to_user && !state.has_user_page_tables {
        return Err(BounceError::NoUserPageTables);
    }

    let rflags = (ctx.rflags & IRET_RFLAGS_ALLOWED) | RFLAGS_IF | RFLAGS_FIXED1;
    regs.rax = ctx.rax;
    regs.rip = ctx.rip;
    regs.rsp = ctx.rsp;
    regs.rflags = rflags;
    if ctx.flags & VGCF_IN_SYSCALL != 0 {
        regs.cs = FLAT_USER_CS64;
        regs.ss = FLAT_USER_SS64;
        regs.rcx = ctx.rip;
        regs.r11 = rflags;
    } else {
        regs.cs = cs | 3;
        regs.ss = ctx.ss as u16 | 3;
        regs.rcx = ctx.rcx;
        regs.r11 = ctx.r11;
    }
    state.upcall_mask = u8::from(ctx.rflags & RFLAGS_IF == 0);
    if to_user {
        state.in_kernel = false;
    }
    Ok(IretOutcome {
        to_user,
        rax: ctx.rax,
        upcall_mask: state.upcall_mask,
    })
}

#[cfg(test)]
mod tests {
    use alloc::{vec, vec::Vec};

    use zerocopy::FromZeros;

    use super::*;

    /// A window of guest memory `[base, base + len)`; everything else faults.
    struct Window {
        base: u64,
        mem: Vec<u8>,
        writes: usize,
    }

    impl Window {
        fn new(base: u64, len: usize) -> Self {
            Self {
                base,
                mem: vec![0xcc; len],
                writes: 0,
            }
        }

        fn range(&self, va: u64, len: usize) -> Result<core::ops::Range<usize>, Fault> {
            let off = va.checked_sub(self.base).ok_or(Fault { va })? as usize;
            let end = off.checked_add(len).ok_or(Fault { va })?;
            if end > self.mem.len() {
                return Err(Fault {
                    va: self.base + self.mem.len() as u64,
                });
            }
            Ok(off..end)
        }

        fn words(&self, va: u64, n: usize) -> Vec<u64> {
            let r = self.range(va, n * 8).unwrap();
            self.mem[r]
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        }

        fn put_words(&mut self, va: u64, words: &[u64]) {
            let r = self.range(va, words.len() * 8).unwrap();
            for (c, w) in self.mem[r].chunks_exact_mut(8).zip(words) {
                c.copy_from_slice(&w.to_le_bytes());
            }
        }
    }

    impl GuestStack for Window {
        fn write(&mut self, va: u64, bytes: &[u8]) -> Result<(), Fault> {
            let r = self.range(va, bytes.len())?;
            self.mem[r].copy_from_slice(bytes);
            self.writes += 1;
            Ok(())
        }

        fn read(&mut self, va: u64, out: &mut [u8]) -> Result<(), Fault> {
            let r = self.range(va, out.len())?;
            out.copy_from_slice(&self.mem[r]);
            Ok(())
        }
    }

    const KSTACK_BASE: u64 = 0xffff_c900_0000_0000;
    const KSTACK_TOP: u64 = KSTACK_BASE + 0x1000;
    const PF_HANDLER: u64 = 0xffff_ffff_8100_1000;
    const GP_HANDLER: u64 = 0xffff_ffff_8100_2000;
    const UD_HANDLER: u64 = 0xffff_ffff_8100_3000;
    const BP_HANDLER: u64 = 0xffff_ffff_8100_4000;
    const EVENT_CB: u64 = 0xffff_ffff_8100_5000;
    const FAILSAFE_CB: u64 = 0xffff_ffff_8100_6000;
    const SYSCALL_CB: u64 = 0xffff_ffff_8100_7000;
    /// Linux's user selectors (its own GDT, RPL 3).
    const USER_CS: u16 = 0x33;
    const USER_SS: u16 = 0x2b;

    fn trap(vector: u8, flags: u8, address: u64) -> TrapInfo {
        TrapInfo {
            vector,
            flags,
            cs: 0xe030,
            _cpad0: 0,
            address,
        }
    }

    fn state() -> BounceState {
        let mut st = BounceState::new(KSTACK_TOP);
        let progress = st
            .trap_table
            .set(&[
                trap(VECTOR_PF, TI_IF, PF_HANDLER),
                trap(VECTOR_GP, 0, GP_HANDLER),
                trap(VECTOR_UD, 0, UD_HANDLER),
                trap(3, 3, BP_HANDLER),
                trap(0, 0, 0),
            ])
            .unwrap();
        assert_eq!(
            progress,
            SetProgress {
                applied: 4,
                terminated: true
            }
        );
        st.callbacks = Callbacks {
            event: EVENT_CB,
            failsafe: FAILSAFE_CB,
            failsafe_masks_events: true,
            syscall: SYSCALL_CB,
            syscall_masks_events: true,
        };
        st.upcall_mask = 0;
        st.has_user_page_tables = true;
        st
    }

    fn kernel_regs(rsp: u64) -> CpuUserRegs {
        let mut r = CpuUserRegs::new_zeroed();
        r.rip = 0xffff_ffff_8123_4567;
        r.cs = FLAT_KERNEL_CS;
        r.ss = FLAT_KERNEL_SS;
        r.rsp = rsp;
        r.rflags = RFLAGS_FIXED1 | RFLAGS_IF | RFLAGS_ZF | RFLAGS_TF | RFLAGS_AC;
        r.rax = 0xaaaa;
        r.rcx = 0x1111;
        r.r11 = 0x2222;
        r.rdi = 0xd1d1;
        r
    }

    fn user_regs() -> CpuUserRegs {
        let mut r = CpuUserRegs::new_zeroed();
        r.rip = 0x40_1000;
        r.cs = USER_CS;
        r.ss = USER_SS;
        r.rsp = 0x7fff_ffff_e008;
        r.rflags = RFLAGS_FIXED1 | RFLAGS_IF | RFLAGS_CF;
        r.rax = 0x77;
        r.rcx = 0x3333;
        r.r11 = 0x4444;
        r.rbx = 0xb0b0;
        r
    }

    #[test]
    fn page_fault_in_kernel_mode_frame_is_byte_exact() {
        let mut st = state();
        let mut mem = Window::new(KSTACK_BASE, 0x1000);
        // Unaligned stack pointer: the frame's top is rounded down to 16.
        let rsp = KSTACK_BASE + 0x808;
        let mut regs = kernel_regs(rsp);
        let before = regs;
        let b = bounce_exception(
            &mut regs,
            VECTOR_PF,
            Some(0x7),
            Some(0xdead_b000),
            &mut st,
            &mut mem,
        )
        .unwrap();
        assert_eq!(
            b,
            Bounce {
                entered_kernel: false,
                cr2: Some(0xdead_b000),
                upcall_mask: 1
            }
        );
        let new_sp = KSTACK_BASE + 0x800 - 8 * 8;
        assert_eq!(regs.rsp, new_sp);
        assert_eq!(
            mem.words(new_sp, 8),
            vec![
                0x1111,                                                        // rcx
                0x2222,                                                        // r11
                0x3,                   // error code: user bit cleared (kernel mode)
                0xffff_ffff_8123_4567, // rip
                0xe030,                // cs with RPL 0, saved mask 0
                RFLAGS_FIXED1 | RFLAGS_IF | RFLAGS_ZF | RFLAGS_TF | RFLAGS_AC, // IF = !0
                rsp,                   // rsp
                u64::from(FLAT_KERNEL_SS), // ss
            ]
        );
        // The slot above the frame is untouched.
        assert_eq!(
            mem.words(KSTACK_BASE + 0x800, 1),
            vec![0xcccc_cccc_cccc_cccc]
        );
        assert_eq!(regs.rip, PF_HANDLER);
        assert_eq!(regs.cs, FLAT_KERNEL_CS);
        assert_eq!(regs.ss, FLAT_KERNEL_SS);
        assert_eq!(regs.rflags, RFLAGS_FIXED1 | RFLAGS_IF | RFLAGS_ZF);
        assert_eq!(st.upcall_mask, 1, "TI_IF entry masks events");
        assert!(st.in_kernel);
        // General registers are untouched.
        assert_eq!(
            (regs.rax, regs.rcx, regs.r11, regs.rdi),
            (before.rax, before.rcx, before.r11, before.rdi)
        );
    }

    #[test]
    fn user_mode_exception_switches_to_kernel_stack() {
        let mut st = state();
        st.in_kernel = false;
        st.kernel_sp = KSTACK_TOP - 0x8; // rounded down to KSTACK_TOP - 0x10
        let mut mem = Window::new(KSTACK_BASE, 0x1000);
        let mut regs = user_regs();
        let b = bounce_exception(
            &mut regs,
            VECTOR_GP,
            Some(0x1234_5678),
            None,
            &mut st,
            &mut mem,
        )
        .unwrap();
        assert!(b.entered_kernel);
        assert_eq!(b.cr2, None);
        assert_eq!(b.upcall_mask, 0, "trap gate without TI_IF leaves events on");
        let top = KSTACK_TOP - 0x10;
        let new_sp = top - 8 * 8;
        assert_eq!(regs.rsp, new_sp);
        assert_eq!(
            mem.words(new_sp, 8),
            vec![
                0x3333,
                0x4444,
                0x1234_5678,
                0x40_1000,
                u64::from(USER_CS), // RPL 3 kept: user mode was interrupted
                RFLAGS_FIXED1 | RFLAGS_IF | RFLAGS_CF,
                0x7fff_ffff_e008,
                u64::from(USER_SS),
            ]
        );
        assert!(st.in_kernel);
        assert_eq!(regs.rip, GP_HANDLER);
    }

    #[test]
    fn user_page_fault_sets_user_bit_and_returns_cr2() {
        let mut st = state();
        st.in_kernel = false;
        let mut mem = Window::new(KSTACK_BASE, 0x1000);
        let mut regs = user_regs();
        let b = bounce_exception(
            &mut regs,
            VECTOR_PF,
            Some(0x2),
            Some(0x1000),
            &mut st,
            &mut mem,
        )
        .unwrap();
        assert_eq!(b.cr2, Some(0x1000));
        assert_eq!(mem.words(regs.rsp + 16, 1), vec![0x6]);
    }

    #[test]
    fn masked_events_are_saved_in_cs_and_clear_if() {
        let mut st = state();
        st.upcall_mask = 1;
        let mut mem = Window::new(KSTACK_BASE, 0x1000);
        let mut regs = kernel_regs(KSTACK_BASE + 0x800);
        let _ = bounce_exception(&mut regs, 3, None, None, &mut st, &mut mem).unwrap();
        // No error code: rcx, r11, rip, cs, rflags, rsp, ss.
        let w = mem.words(regs.rsp, 7);
        assert_eq!(w[3], 0xe030 | (1 << 32));
        assert_eq!(w[4] & RFLAGS_IF, 0);
        assert_eq!(st.upcall_mask, 1);
    }

    #[test]
    fn iopl_never_reaches_the_frame_or_the_vcpu() {
        let mut st = state();
        let mut mem = Window::new(KSTACK_BASE, 0x1000);
        let mut regs = kernel_regs(KSTACK_BASE + 0x800);
        regs.rflags |= RFLAGS_IOPL;
        let _ = bounce_exception(&mut regs, 3, None, None, &mut st, &mut mem).unwrap();
        assert_eq!(mem.words(regs.rsp, 7)[4] & RFLAGS_IOPL, 0);
        assert_eq!(regs.rflags & RFLAGS_IOPL, 0);
    }

    #[test]
    fn missing_handler_is_refused_without_side_effects() {
        let mut st = state();
        let mut mem = Window::new(KSTACK_BASE, 0x1000);
        let mut regs = kernel_regs(KSTACK_BASE + 0x800);
        let before = regs;
        assert_eq!(
            bounce_exception(&mut regs, 0, None, None, &mut st, &mut mem),
            Err(BounceError::NoHandler { vector: Some(0) })
        );
        assert_eq!(regs.rip, before.rip);
        assert_eq!(mem.writes, 0);
        st.callbacks.event = 0;
        assert_eq!(
            deliver_event_upcall(&mut regs, &mut st, &mut mem),
            Err(BounceError::NoHandler { vector: None })
        );
    }

    #[test]
    fn bad_stacks_are_refused_before_writing() {
        for sp in [
            0,
            0x20,                           // frame would wrap below 0
            HYPERVISOR_VIRT_START + 0x1000, // inside the hypervisor
            HYPERVISOR_VIRT_END + 0x10,     // frame would reach into it
            0x0000_8000_0000_0040,          // non-canonical
            0x0000_8000_0000_0000 + 0x10,   // non-canonical
            0xffff_8000_0000_0020,          // frame below would be non-canonical... or hypervisor
        ] {
            let mut st = state();
            let mut mem = Window::new(KSTACK_BASE, 0x1000);
            let mut regs = kernel_regs(sp);
            let before = regs;
            assert_eq!(
                bounce_exception(&mut regs, VECTOR_GP, Some(0), None, &mut st, &mut mem),
                Err(BounceError::BadStack { sp }),
                "sp {sp:#x}"
            );
            assert_eq!(mem.writes, 0);
            assert_eq!(regs.rsp, before.rsp);
            assert_eq!(st.upcall_mask, 0);
        }
        // A frame just above the hypervisor's range, and one just below the canonical
        // hole, are fine as far as the range checks go (they fault in this window).
        for sp in [HYPERVISOR_VIRT_END + 0x100, 0x0000_7fff_ffff_fff0] {
            let mut st = state();
            let mut mem = Window::new(KSTACK_BASE, 0x1000);
            let mut regs = kernel_regs(sp);
            assert!(matches!(
                bounce_exception(&mut regs, VECTOR_GP, Some(0), None, &mut st, &mut mem),
                Err(BounceError::StackFault(_))
            ));
        }
    }

    #[test]
    fn stack_fault_leaves_state_untouched() {
        let mut st = state();
        st.in_kernel = false;
        st.kernel_sp = KSTACK_BASE + 0x20; // frame would start below the window
        let mut mem = Window::new(KSTACK_BASE, 0x1000);
        let mut regs = user_regs();
        let before = regs;
        let err = bounce_exception(&mut regs, VECTOR_GP, Some(0), None, &mut st, &mut mem);
        assert!(matches!(err, Err(BounceError::StackFault(_))));
        assert!(!st.in_kernel);
        assert_eq!(regs.rip, before.rip);
        assert_eq!(regs.rsp, before.rsp);
    }

    #[test]
    fn syscall_from_user_builds_the_callback_frame() {
        let mut st = state();
        st.in_kernel = false;
        let mut mem = Window::new(KSTACK_BASE, 0x1000);
        let mut regs = user_regs();
        // As the syscall instruction leaves them: rcx = return rip, r11 = rflags.
        regs.rcx = 0x40_2002;
        regs.r11 = RFLAGS_FIXED1 | RFLAGS_IF | RFLAGS_DF | RFLAGS_SF;
        regs.rflags = RFLAGS_FIXED1; // whatever the CPU masked it to
        regs.rip = 0xdead; // not used: rcx is the truth
        let b = deliver_syscall_from_user(&mut regs, &mut st, &mut mem).unwrap();
        assert!(b.entered_kernel);
        assert_eq!(b.upcall_mask, 1);
        let new_sp = KSTACK_TOP - 7 * 8;
        assert_eq!(regs.rsp, new_sp);
        assert_eq!(
            mem.words(new_sp, 7),
            vec![
                0x40_2002,
                RFLAGS_FIXED1 | RFLAGS_IF | RFLAGS_DF | RFLAGS_SF,
                0x40_2002,
                u64::from(FLAT_USER_CS64),
                RFLAGS_FIXED1 | RFLAGS_IF | RFLAGS_DF | RFLAGS_SF,
                0x7fff_ffff_e008,
                u64::from(FLAT_USER_SS64),
            ]
        );
        assert_eq!(regs.rip, SYSCALL_CB);
        assert_eq!(regs.rflags & RFLAGS_DF, 0, "DF cleared on entry");
        assert_eq!(regs.rax, 0x77, "syscall number preserved");
    }

    #[test]
    fn syscall_without_callback_is_a_ud_at_the_instruction() {
        let mut st = state();
        st.in_kernel = false;
        st.callbacks.syscall = 0;
        let mut mem = Window::new(KSTACK_BASE, 0x1000);
        let mut regs = user_regs();
        regs.rcx = 0x40_2002;
        regs.r11 = RFLAGS_FIXED1 | RFLAGS_IF | RFLAGS_DF;
        let _ = deliver_syscall_from_user(&mut regs, &mut st, &mut mem).unwrap();
        assert_eq!(regs.rip, UD_HANDLER);
        let w = mem.words(regs.rsp, 7);
        assert_eq!(w[2], 0x40_2000);
        assert_ne!(regs.rflags & RFLAGS_DF, 0, "DF kept on the #UD path");
        assert_eq!(st.upcall_mask, 0);
    }

    #[test]
    fn syscall_in_kernel_mode_is_not_a_bounce() {
        let mut st = state();
        let mut mem = Window::new(KSTACK_BASE, 0x1000);
        let mut regs = kernel_regs(KSTACK_BASE + 0x800);
        assert_eq!(
            deliver_syscall_from_user(&mut regs, &mut st, &mut mem),
            Err(BounceError::WrongMode)
        );
    }

    #[test]
    fn event_upcall_masks_events_and_has_no_error_code() {
        assert!(upcall_due(1, 0));
        assert!(!upcall_due(1, 1));
        assert!(!upcall_due(0, 0));
        let mut st = state();
        st.in_kernel = false;
        let mut mem = Window::new(KSTACK_BASE, 0x1000);
        let mut regs = user_regs();
        let b = deliver_event_upcall(&mut regs, &mut st, &mut mem).unwrap();
        assert!(b.entered_kernel);
        assert_eq!(b.upcall_mask, 1);
        assert_eq!(regs.rip, EVENT_CB);
        assert_eq!(regs.rsp, KSTACK_TOP - 7 * 8);
        let w = mem.words(regs.rsp, 7);
        assert_eq!(w[2], 0x40_1000);
        assert_eq!(w[3], u64::from(USER_CS));
        assert_ne!(w[4] & RFLAGS_IF, 0, "events were on when interrupted");
    }

    #[test]
    fn failsafe_frame_carries_the_selectors() {
        let mut st = state();
        let mut mem = Window::new(KSTACK_BASE, 0x1000);
        let mut regs = kernel_regs(KSTACK_BASE + 0x800);
        regs.ds = 0x2b;
        regs.es = 0x2b;
        regs.fs = 0;
        regs.gs = 0x63;
        let _ = deliver_failsafe(&mut regs, &mut st, &mut mem).unwrap();
        assert_eq!(regs.rip, FAILSAFE_CB);
        assert_eq!(regs.rsp, KSTACK_BASE + 0x800 - 11 * 8);
        // Linux's xen_failsafe_callback: ds at 0x10 .. gs at 0x28, iret frame at 0x30.
        assert_eq!(
            mem.words(regs.rsp, 11),
            vec![
                0x1111,
                0x2222,
                0x2b,
                0x2b,
                0,
                0x63,
                0xffff_ffff_8123_4567,
                0xe030,
                RFLAGS_FIXED1 | RFLAGS_IF | RFLAGS_ZF | RFLAGS_TF | RFLAGS_AC,
                KSTACK_BASE + 0x800,
                u64::from(FLAT_KERNEL_SS),
            ]
        );
        assert_eq!(st.upcall_mask, 1);
    }

    /// What Linux does after a bounce: pop rcx and r11, drop the error code, run, then
    /// `xen_iret`: push flags 0, rcx, r11, rax below the hardware-shaped frame and make
    /// the hypercall with rsp pointing at rax.
    fn linux_return(regs: &mut CpuUserRegs, mem: &mut Window, has_error_code: bool) {
        let w = mem.words(regs.rsp, 2);
        regs.rcx = w[0];
        regs.r11 = w[1];
        let iret_frame = regs.rsp + 16 + if has_error_code { 8 } else { 0 };
        regs.rax = 0x5a5a; // clobbered by the handler
        regs.rsp = iret_frame - 32;
        mem.put_words(regs.rsp, &[regs.rax, regs.r11, regs.rcx, 0]);
    }

    #[test]
    fn bounce_then_iret_restores_user_state() {
        let mut st = state();
        st.in_kernel = false;
        let mut mem = Window::new(KSTACK_BASE, 0x1000);
        let mut regs = user_regs();
        let orig = regs;
        let b =
            bounce_exception(&mut regs, VECTOR_PF, Some(4), Some(0x8), &mut st, &mut mem).unwrap();
        assert!(b.entered_kernel);
        assert_eq!(st.upcall_mask, 1);
        linux_return(&mut regs, &mut mem, true);
        // The handler's rax is what the hypercall sees; the context's rax is the user's.
        mem.put_words(regs.rsp, &[orig.rax]);
        let out = do_iret(&mut regs, &mut st, &mut mem).unwrap();
        assert!(out.to_user);
        assert!(!st.in_kernel);
        assert_eq!(out.upcall_mask, 0, "IF was set in the frame");
        assert_eq!(out.rax, orig.rax);
        assert_eq!(
            (regs.rip, regs.cs, regs.rflags, regs.rsp, regs.ss),
            (orig.rip, orig.cs, orig.rflags, orig.rsp, orig.ss)
        );
        assert_eq!(
            (regs.rax, regs.rcx, regs.r11, regs.rbx),
            (orig.rax, orig.rcx, orig.r11, orig.rbx)
        );
    }

    #[test]
    fn bounce_then_iret_in_kernel_mode_stays_in_kernel() {
        let mut st = state();
        st.upcall_mask = 1;
        let mut mem = Window::new(KSTACK_BASE, 0x1000);
        let mut regs = kernel_regs(KSTACK_BASE + 0x900);
        let orig = regs;
        let _ = deliver_event_upcall(&mut regs, &mut st, &mut mem).unwrap();
        linux_return(&mut regs, &mut mem, false);
        mem.put_words(regs.rsp, &[orig.rax]);
        let out = do_iret(&mut regs, &mut st, &mut mem).unwrap();
        assert!(!out.to_user, "cs RPL 0 in the frame means kernel mode");
        assert!(st.in_kernel);
        assert_eq!(out.upcall_mask, 1, "mask restored from the frame's IF");
        assert_eq!(regs.cs, FLAT_KERNEL_CS, "RPL forced back to 3");
        assert_eq!(regs.rip, orig.rip);
        assert_eq!(regs.rsp, orig.rsp);
        // TF and AC were cleared on entry; the frame kept them and iret restores them.
        assert_eq!(regs.rflags, orig.rflags);
    }

    fn iret_with(
        ctx: IretContext,
        st: &mut BounceState,
    ) -> (Result<IretOutcome, BounceError>, CpuUserRegs) {
        let mut mem = Window::new(KSTACK_BASE, 0x1000);
        let mut regs = kernel_regs(KSTACK_BASE + 0x800);
        mem.write(regs.rsp, ctx.as_bytes()).unwrap();
        let r = do_iret(&mut regs, st, &mut mem);
        (r, regs)
    }

    fn user_ctx() -> IretContext {
        IretContext {
            rax: 1,
            r11: 2,
            rcx: 3,
            flags: 0,
            rip: 0x40_0000,
            cs: u64::from(USER_CS),
            rflags: RFLAGS_FIXED1 | RFLAGS_IF,
            rsp: 0x7fff_0000,
            ss: u64::from(USER_SS),
        }
    }

    #[test]
    fn iret_sanitises_rflags_and_selectors() {
        let mut st = state();
        let mut ctx = user_ctx();
        ctx.rflags = !RFLAGS_IF; // every bit but IF, IOPL 3 included
        ctx.cs = 0xe030 | (1 << 32); // RPL 0 with a saved mask in the upper bits
        ctx.ss = 0xe028;
        let (r, regs) = iret_with(ctx, &mut st);
        let out = r.unwrap();
        assert!(!out.to_user);
        assert_eq!(out.upcall_mask, 1);
        assert_eq!(regs.rflags & RFLAGS_IOPL, 0);
        assert_eq!(regs.rflags & (RFLAGS_VM | RFLAGS_NT), 0);
        assert_ne!(regs.rflags & RFLAGS_IF, 0, "the real IF is always on");
        assert_ne!(regs.rflags & RFLAGS_RF, 0, "RF kept");
        assert_eq!(
            regs.rflags & !(IRET_RFLAGS_ALLOWED | RFLAGS_IF | RFLAGS_FIXED1),
            0
        );
        assert_eq!(regs.cs, 0xe033);
        assert_eq!(regs.ss, 0xe02b);
    }

    #[test]
    fn iret_refuses_hostile_addresses() {
        for (rip, rsp) in [
            (0x0000_8000_0000_0000, 0x7fff_0000),
            (0xffff_7fff_ffff_ffff, 0x7fff_0000),
            (HYPERVISOR_VIRT_START, 0x7fff_0000),
            (HYPERVISOR_VIRT_END - 1, 0x7fff_0000),
            (0x40_0000, 0x1234_0000_0000_0000),
            (0x40_0000, 0xffff_8200_0000_0000),
        ] {
            let mut st = state();
            let mut ctx = user_ctx();
            ctx.rip = rip;
            ctx.rsp = rsp;
            let (r, regs) = iret_with(ctx, &mut st);
            assert_eq!(r, Err(BounceError::BadIretContext { rip, rsp }));
            assert!(st.in_kernel);
            assert_eq!(regs.rip, kernel_regs(0).rip);
        }
    }

    #[test]
    fn iret_mode_and_preconditions() {
        let mut st = state();
        st.has_user_page_tables = false;
        assert_eq!(
            iret_with(user_ctx(), &mut st).0,
            Err(BounceError::NoUserPageTables)
        );
        assert!(st.in_kernel);

        let mut st = state();
        st.in_kernel = false;
        assert_eq!(
            iret_with(user_ctx(), &mut st).0,
            Err(BounceError::WrongMode)
        );

        let mut st = state();
        let mut mem = Window::new(KSTACK_BASE, 0x1000);
        let mut regs = kernel_regs(KSTACK_TOP - 16); // context runs off the window
        assert!(matches!(
            do_iret(&mut regs, &mut st, &mut mem),
            Err(BounceError::StackFault(_))
        ));
    }

    #[test]
    fn iret_in_syscall_returns_like_sysret() {
        let mut st = state();
        let mut ctx = user_ctx();
        ctx.flags = VGCF_IN_SYSCALL;
        ctx.cs = 0x33;
        ctx.ss = 0x2b;
        let (r, regs) = iret_with(ctx, &mut st);
        let out = r.unwrap();
        assert!(out.to_user);
        assert_eq!(regs.rcx, ctx.rip);
        assert_eq!(regs.r11, regs.rflags);
        assert_eq!(regs.cs, FLAT_USER_CS64);
        assert_eq!(regs.ss, FLAT_USER_SS64);
        assert_eq!(regs.rax, 1);

        let mut st = state();
        let (r, regs) = iret_with(user_ctx(), &mut st);
        assert!(r.unwrap().to_user);
        assert_eq!((regs.r11, regs.rcx), (2, 3));
        assert_eq!((regs.cs, regs.ss), (USER_CS, USER_SS));
    }

    #[test]
    fn trap_table_set_semantics() {
        let mut t = TrapTable::new();
        // No terminator in this slice: the caller feeds more.
        assert_eq!(
            t.set(&[trap(14, 0xff, PF_HANDLER)]),
            Ok(SetProgress {
                applied: 1,
                terminated: false
            })
        );
        let e = *t.get(14).unwrap();
        assert_eq!(e.flags, TI_DPL_MASK | TI_IF, "unknown flag bits dropped");
        assert_eq!(e.cs, 0xe033, "RPL forced to 3");
        // A later call replaces only the vectors it names.
        t.set(&[trap(13, 0, GP_HANDLER), trap(0, 0, 0), trap(14, 0, 0x1)])
            .unwrap();
        assert_eq!(
            t.get(14).unwrap().address,
            PF_HANDLER,
            "stopped at the sentinel"
        );
        assert_eq!(t.get(13).unwrap().address, GP_HANDLER);
        // A bad address stops the call; earlier entries stay.
        for bad in [0x0000_8000_0000_0000, HYPERVISOR_VIRT_START + 0x10] {
            assert_eq!(
                t.set(&[trap(3, 3, BP_HANDLER), trap(4, 3, bad)]),
                Err(TrapTableError::BadAddress {
                    index: 1,
                    address: bad
                })
            );
            assert_eq!(t.get(3).unwrap().address, BP_HANDLER);
            assert!(t.get(4).is_none());
        }
        t.clear();
        assert!(t.get(13).is_none() && t.get(14).is_none() && t.get(3).is_none());
    }

    #[test]
    fn software_int_dpl() {
        let mut t = TrapTable::new();
        t.set(&[
            trap(0x80, 3, 0x1000),
            trap(0x81, 1, 0x1000),
            trap(0x82, 2, 0x1000),
            trap(0x83, 0, 0x1000),
        ])
        .unwrap();
        assert!(t.permits_software_int(0x80, false));
        assert!(t.permits_software_int(0x80, true));
        assert!(!t.permits_software_int(0x81, false));
        assert!(t.permits_software_int(0x81, true));
        assert!(t.permits_software_int(0x82, true));
        assert!(!t.permits_software_int(0x83, true));
        assert!(!t.permits_software_int(0x84, true), "no handler");
    }

    #[test]
    fn address_predicates() {
        assert!(is_canonical(0));
        assert!(is_canonical(0x0000_7fff_ffff_ffff));
        assert!(!is_canonical(0x0000_8000_0000_0000));
        assert!(is_canonical(0xffff_8000_0000_0000));
        assert!(!is_guest_address(0xffff_8000_0000_0000));
        assert!(!is_guest_address(0xffff_87ff_ffff_ffff));
        assert!(is_guest_address(0xffff_8800_0000_0000));
        assert!(!is_guest_range(
            0x0000_7fff_ffff_fff8,
            0x0000_8000_0000_0008
        ));
        assert!(is_guest_range(0xffff_8800_0000_0000, 0xffff_8800_0000_0040));
        assert!(!is_guest_range(
            0xffff_87ff_ffff_fff8,
            0xffff_8800_0000_0008
        ));
    }
}
