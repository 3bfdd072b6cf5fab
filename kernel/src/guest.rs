//! Entries from ring 3, where PV guests run (and the ring-3 selftest, which takes
//! precedence while it runs): hypercalls, guest-user system calls, exceptions (emulated
//! when they are a privileged instruction the guest kernel may use, otherwise bounced to
//! the guest kernel's trap table) and interrupted execution.

use ferrovisor::mm::Mfn;
use ferrovisor::pv::{
    bounce::{self, Bounce, BounceError, BounceState, Fault, GuestStack},
    cpuid::{self, CpuidPolicy},
    descriptor,
    emulate::{self, InsnKind},
    msr::{self, MsrContext, SyscallMsrs, Vendor, WriteEffect},
    ptwr,
};
use ferrovisor_abi::xen::{
    arch_x86::{CpuUserRegs, SegBase},
    xen::VMASST_TYPE_WRITABLE_PAGETABLES,
};

use crate::{
    arch::x86_64::{
        cpu,
        guest_memory::GuestSpace,
        paging::{self as hw_paging, GuestTables},
        percpu,
        trap::{self, TrapFrame},
    },
    clock,
    domain::{self, Domain, DomainFrames},
    fatal, hypercall, sched, selftest,
};

/// A SYSCALL from ring 3: from the guest kernel a hypercall, from guest user space a
/// system call for the guest kernel.
pub fn syscall(frame: &mut TrapFrame) {
    if selftest::ring3_syscall(frame) {
        return;
    }
    match domain::with_current(|d| d.cur_mut().pv.in_kernel) {
        None => fatal::exception(frame),
        Some(true) => hypercall::dispatch(frame),
        Some(false) => {
            domain::with_current(|d| {
                deliver(d, frame, &"a system call", |regs, state, stack| {
                    bounce::deliver_syscall_from_user(regs, state, stack)
                })
            });
        }
    }
}

/// A CPU exception raised in ring 3.
pub fn exception(frame: &mut TrapFrame) {
    if selftest::ring3_exception(frame) {
        return;
    }
    if domain::with_current(|d| handle_exception(d, frame)).is_none() {
        fatal::exception(frame);
    }
}

/// Ring 3 was interrupted (by the tick); `frame` is where it resumes.
pub fn interrupted(frame: &mut TrapFrame) {
    selftest::ring3_interrupted(frame);
}

/// The return to the guest faulted (`frame` is the fault in the exit path): the guest
/// gave a state the CPU will not resume (a selector it may not load, a non-canonical
/// address). As Xen does, the fault is bounced to the guest kernel's trap table as if the
/// guest had raised it at the refused state (for a bad `cs`: a #GP with the selector as
/// error code, at the `rip` it asked for); `frame` is rewritten into that entry. A domain
/// whose trap table has no handler for it is crashed.
pub fn failed_return(frame: &mut TrapFrame) {
    let [rip, cs, rflags, rsp, ss] = trap::refused_return(frame);
    let vector = frame.vector;
    let error_code = has_error_code(vector).then_some(frame.error_code as u32);
    let mut refused = TrapFrame {
        rip,
        cs,
        rflags,
        rsp,
        ss,
        ..*frame
    };
    let what = "the exception the CPU raised on the return to it";
    let entered = domain::with_current(|d| {
        crate::guest_log::debug(
            d.id,
            format_args!(
                "the CPU refused to resume the guest at rip={rip:#x} cs={cs:#x} rsp={rsp:#x} \
                 (exception {vector}, error code {:#x}): bouncing it to the guest",
                frame.error_code
            ),
        );
        deliver(d, &mut refused, &what, |regs, state, stack| {
            bounce::bounce_exception(regs, vector as u8, error_code, None, state, stack)
        })
    });
    if entered.is_none() {
        fatal::exception(frame);
    }
    *frame = refused;
}

/// The tick: every domain's vCPU timers.
pub fn on_tick() {
    let now = clock::now_ns();
    domain::with_domains(|doms| {
        for d in doms.iter_mut() {
            d.check_timers(now);
        }
        crate::backend::devices::on_tick(doms);
    });
}

/// The last step before returning to a guest: an event upcall, if one is due.
pub fn before_return(frame: &mut TrapFrame) {
    if selftest::ring3_running() {
        return;
    }
    // The running vCPU may have blocked, gone down, or its domain stopped.
    if !sched::running_can_continue() {
        sched::reschedule(frame);
    }
    domain::with_current(|d| {
        if d.cur().time_stale {
            d.publish_time();
        }
        if d.upcall_due() {
            deliver(d, frame, &"an event upcall", |regs, state, stack| {
                bounce::deliver_event_upcall(regs, state, stack)
            });
        }
    });
}

pub fn to_regs(f: &TrapFrame) -> CpuUserRegs {
    CpuUserRegs {
        r15: f.r15,
        r14: f.r14,
        r13: f.r13,
        r12: f.r12,
        rbp: f.rbp,
        rbx: f.rbx,
        r11: f.r11,
        r10: f.r10,
        r9: f.r9,
        r8: f.r8,
        rax: f.rax,
        rcx: f.rcx,
        rdx: f.rdx,
        rsi: f.rsi,
        rdi: f.rdi,
        error_code: f.error_code as u32,
        entry_vector: f.vector as u32,
        rip: f.rip,
        cs: f.cs as u16,
        rflags: f.rflags,
        rsp: f.rsp,
        ss: f.ss as u16,
        ..zerocopy::FromZeros::new_zeroed()
    }
}

/// Copies `r` back into the frame the CPU will resume. Whatever the guest asked for, the
/// real RFLAGS keep interrupts on and IOPL 0, and the selectors stay ring 3.
pub fn apply_regs(r: &CpuUserRegs, f: &mut TrapFrame) {
    f.r15 = r.r15;
    f.r14 = r.r14;
    f.r13 = r.r13;
    f.r12 = r.r12;
    f.rbp = r.rbp;
    f.rbx = r.rbx;
    f.r11 = r.r11;
    f.r10 = r.r10;
    f.r9 = r.r9;
    f.r8 = r.r8;
    f.rax = r.rax;
    f.rcx = r.rcx;
    f.rdx = r.rdx;
    f.rsi = r.rsi;
    f.rdi = r.rdi;
    f.rip = r.rip;
    f.cs = r.cs as u64 | 3;
    f.rflags = (r.rflags | 0x200) & !0x3000;
    f.rsp = r.rsp;
    f.ss = r.ss as u64 | 3;
}

/// The guest kernel's memory, for bounce frames and `iret` contexts.
pub struct KernelStack<'a> {
    space: Option<GuestSpace<'a, DomainFrames>>,
}

impl GuestStack for KernelStack<'_> {
    fn write(&mut self, va: u64, bytes: &[u8]) -> Result<(), Fault> {
        let space = self.space.as_ref().ok_or(Fault { va })?;
        space.write(va, bytes).map_err(|_| Fault { va })
    }
    fn read(&mut self, va: u64, out: &mut [u8]) -> Result<(), Fault> {
        let space = self.space.as_ref().ok_or(Fault { va })?;
        space.read(va, out).map_err(|_| Fault { va })
    }
}

/// Runs a bounce (or `iret`-like) step on the vCPU and applies its result; a failure
/// crashes the domain, as in Xen.
pub fn deliver(
    d: &mut Domain,
    frame: &mut TrapFrame,
    what: &dyn core::fmt::Display,
    step: impl FnOnce(
        &mut CpuUserRegs,
        &mut BounceState,
        &mut KernelStack,
    ) -> Result<Bounce, BounceError>,
) {
    let mut regs = to_regs(frame);
    let (id, upcall_mask) = (d.id, d.upcall_mask());
    let cur = d.cur;
    let v = &mut d.vcpus[cur];
    v.pv.upcall_mask = upcall_mask;
    // The kernel's held root and the bounce state are separate parts of the vCPU.
    let mut stack = KernelStack {
        space: v
            .kernel_l4
            .as_ref()
            .map(|l4| GuestSpace::new(l4, DomainFrames(id))),
    };
    let result = step(&mut regs, &mut v.pv, &mut stack);
    match result {
        Ok(b) => {
            apply_regs(&regs, frame);
            if b.entered_kernel {
                d.switch_mode(true);
            }
            if let Some(cr2) = b.cr2 {
                d.set_cr2(cr2);
                d.cur_mut().cr2 = cr2;
            }
            d.set_upcall_mask(b.upcall_mask);
        }
        Err(e) => d.crash(format_args!(
            "cannot deliver {what} at rip={:#x} (rsp={:#x}): {e:?}",
            frame.rip, frame.rsp
        )),
    }
}

const UD: u64 = 6;
const GP: u64 = 13;
const PF: u64 = 14;

fn has_error_code(vector: u64) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// An exception as a crash message names it (formatted only if delivery fails).
struct ExceptionName {
    vector: u64,
    error_code: u64,
    cr2: Option<u64>,
}

impl core::fmt::Display for ExceptionName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "exception {} (error code {:#x}",
            self.vector, self.error_code
        )?;
        if let Some(cr2) = self.cr2 {
            write!(f, ", cr2 {cr2:#x}")?;
        }
        f.write_str(")")
    }
}

/// #PF error-code bits: present, write, user, reserved bit, instruction fetch.
const PFEC_CHECKED: u64 = 0b1_1111;
const PFEC_PRESENT_READ_SUPERVISOR: u64 = 0b0_0001;

fn handle_exception(d: &mut Domain, frame: &mut TrapFrame) {
    let vector = frame.vector;
    // A read of a present page, as a supervisor access, from ring 3: only an implicit
    // supervisor access to a user page under SMAP does that. QEMU's TCG performs IRET's
    // stack reads as supervisor accesses, so a guest kernel's native `iretq` (Linux's
    // `sync_core`) faults on its own stack; real CPUs read it at CPL 3. SMAP goes off and
    // the instruction is retried.
    if vector == PF
        && frame.error_code & PFEC_CHECKED == PFEC_PRESENT_READ_SUPERVISOR
        && cpu::smap_enabled()
    {
        // Said once: every CPU meets it (each turns SMAP off for itself).
        static SAID: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
        if !SAID.swap(true, core::sync::atomic::Ordering::Relaxed) {
            log::warn!(
                "the guest's instruction at rip {:#x} read {:#x} as a supervisor access under \
                 SMAP (QEMU TCG's IRET does so): SMAP turned off",
                frame.rip,
                cpu::read_cr2()
            );
        }
        cpu::disable_smap();
        return;
    }
    if vector == PF
        && frame.error_code & 0b11 == 0b11
        && d.cur_mut().pv.in_kernel
        && writable_pt_write(d, frame)
    {
        return;
    }
    if d.cur_mut().pv.in_kernel
        && ((vector == GP && frame.error_code == 0) || vector == UD)
        && emulate(d, frame)
    {
        return;
    }
    // `int n` to a gate ring 3 may not use faults with #GP(n * 8 + 2): if the guest's trap
    // table lets its current mode raise vector n, deliver n after the 2-byte instruction.
    if vector == GP && frame.error_code & 0b11 == 0b10 {
        let n = (frame.error_code >> 3) as u8;
        if d.cur()
            .pv
            .trap_table
            .permits_software_int(n, d.cur().pv.in_kernel)
        {
            frame.rip = frame.rip.wrapping_add(2);
            deliver(d, frame, &"a software interrupt", |regs, state, stack| {
                bounce::bounce_exception(regs, n, None, None, state, stack)
            });
            return;
        }
    }
    let error_code = has_error_code(vector).then_some(frame.error_code as u32);
    let cr2 = (vector == PF).then(cpu::read_cr2);
    let what = ExceptionName {
        vector,
        error_code: frame.error_code,
        cr2,
    };
    deliver(d, frame, &what, |regs, state, stack| {
        bounce::bounce_exception(regs, vector as u8, error_code, cr2, state, stack)
    });
}

/// Reads up to 15 instruction bytes at the guest's `rip` (fewer at an unmapped page).
fn instruction_bytes(d: &Domain, rip: u64) -> ([u8; 15], usize) {
    let mut bytes = [0u8; 15];
    let mut n = 0;
    while n < bytes.len()
        && d.read_guest(rip.wrapping_add(n as u64), &mut bytes[n..n + 1])
            .is_ok()
    {
        n += 1;
    }
    (bytes, n)
}

/// The writable-page-tables assist (`VMASST_TYPE_writable_pagetables`): a guest-kernel
/// write that faulted on a read-only mapping of one of its validated page tables is
/// decoded, the new entry is validated like an `mmu_update`, and the write is done for
/// it. False when this is not such a write (or the entry is refused): the #PF then goes
/// to the guest, as under Xen.
fn writable_pt_write(d: &mut Domain, frame: &mut TrapFrame) -> bool {
    if d.vm_assist & (1 << VMASST_TYPE_WRITABLE_PAGETABLES) == 0 {
        return false;
    }
    let cr2 = cpu::read_cr2();
    // The frame the faulting address maps, through the guest's own tables.
    let Some((l1, index)) = d.l1_slot(cr2) else {
        return false;
    };
    let mut tables = GuestTables::new();
    // The L1 entry behind the fault, and the entry the write is aimed at, are read only
    // through the frame table, once it has found both frames to be this domain's tables.
    let entry = {
        let ft = domain::FRAME_TABLE.lock();
        let Some(Ok(entry)) = ft.as_ref().map(|t| t.read_entry(l1, index, d.id, &tables)) else {
            return false;
        };
        entry
    };
    if entry & 1 == 0 {
        return false;
    }
    let target = Mfn::containing(entry & 0x000f_ffff_ffff_f000);
    let (bytes, n) = instruction_bytes(d, frame.rip);
    let Ok(w) = ptwr::decode_pte_write(&bytes[..n]) else {
        return false;
    };
    let mut regs = to_regs(frame);
    let ea = w.effective_address(&regs);
    if ea & !7 != cr2 & !7 {
        return false;
    }
    let slot = ((ea & 0xfff) / 8) as usize;
    let old = {
        let ft = domain::FRAME_TABLE.lock();
        let Some(Ok(old)) = ft
            .as_ref()
            .map(|t| t.read_entry(target, slot, d.id, &tables))
        else {
            return false;
        };
        old
    };
    let Ok(r) = w.apply(old, &regs, (ea & 7) as u8) else {
        return false;
    };
    if r.write {
        let mut ft = domain::FRAME_TABLE.lock();
        let Some(ft) = ft.as_mut() else { return false };
        if ft
            .update_entry(target, slot, r.new, d.id, &mut tables)
            .is_err()
        {
            return false;
        }
        hw_paging::flush_tlb_local();
        if old & 1 != 0 {
            d.flush_other_cpus();
        }
    }
    r.commit(&mut regs);
    regs.rip = regs.rip.wrapping_add(w.len as u64);
    apply_regs(&regs, frame);
    true
}

/// Emulates the privileged instruction at the guest kernel's `rip`, if it is one the PV
/// ABI lets it use (CPUID through the forced-emulation prefix or plainly, RDMSR/WRMSR
/// under the MSR policy). Returns false when the exception is the guest's to handle.
fn emulate(d: &mut Domain, frame: &mut TrapFrame) -> bool {
    let (bytes, n) = instruction_bytes(d, frame.rip);
    let Ok(insn) = emulate::decode(&bytes[..n]) else {
        return false;
    };
    match (frame.vector, insn.kind) {
        (UD, InsnKind::ForcedCpuid) | (GP, InsnKind::Cpuid) => {
            let mut policy = CpuidPolicy::minimal(d.cur().id);
            policy.enlightened_kernel = frame.vector == UD;
            policy.tsc_khz = (clock::tsc_hz() / 1000) as u32;
            let [a, b, c, dx] =
                cpuid::guest_cpuid(frame.rax as u32, frame.rcx as u32, cpu::cpuid, &policy);
            frame.rax = a as u64;
            frame.rbx = b as u64;
            frame.rcx = c as u64;
            frame.rdx = dx as u64;
        }
        // Lazy FPU: the guest kernel clears its TS after a #NM.
        (GP, InsnKind::Clts) => {
            d.cur_mut().fpu_ts = false;
            cpu::set_task_switched(false);
        }
        (GP, InsnKind::MovFromCr { cr, reg }) => {
            let Some(value) = guest_cr(d, cr) else {
                return false;
            };
            let mut regs = to_regs(frame);
            match emulate::gpr_mut(&mut regs, reg) {
                Some(r) => *r = value,
                None => return false,
            }
            apply_regs(&regs, frame);
        }
        (GP, InsnKind::MovToCr { cr, reg }) => {
            let Some(value) = emulate::gpr(&to_regs(frame), reg) else {
                return false;
            };
            if !set_guest_cr(d, cr, value) {
                return false;
            }
        }
        (GP, InsnKind::Rdmsr) => match msr::read(frame.rcx as u32, &msr_context(d)) {
            Ok(v) => {
                frame.rax = v & 0xffff_ffff;
                frame.rdx = v >> 32;
            }
            Err(_) => return false,
        },
        (GP, InsnKind::Wrmsr) => {
            let value = (frame.rdx << 32) | (frame.rax & 0xffff_ffff);
            match msr::write(frame.rcx as u32, value, &msr_context(d)) {
                Ok(WriteEffect::Ignored) => {}
                Ok(WriteEffect::SetSegmentBase(which, base)) => {
                    if !set_segment_base(d, which, base) {
                        return false;
                    }
                }
                // TSC_AUX and the hypercall-page MSR are not offered yet.
                Ok(_) | Err(_) => return false,
            }
        }
        // With a virtual IOPL that allows it (Linux asks for 1 with `set_iopl` at once),
        // port I/O is emulated. No domain is given I/O ports (the hypervisor keeps the
        // machine): as Xen does for the ports a PV kernel may not use, a read sees all
        // ones and a write is dropped. Linux probes legacy devices (PCI configuration at
        // 0xcf8) this way early and relies on that, not on a fault.
        (GP, InsnKind::Io { dir, size, .. }) if iopl_ok(d) => {
            if dir == emulate::IoDir::In {
                frame.rax = emulate::io_in_result(frame.rax, size, u32::MAX);
            }
        }
        // `cli`/`sti` under a sufficient virtual IOPL do nothing, as in Xen: the guest's
        // event mask is what masks its interrupts, and a `popf` could not be trapped to
        // undo a virtual `cli` anyway.
        (GP, InsnKind::Cli | InsnKind::Sti) if iopl_ok(d) => {}
        _ => return false,
    }
    frame.rip = frame.rip.wrapping_add(insn.len as u64);
    true
}

/// Whether the running vCPU's virtual IOPL covers its current mode: a 64-bit PV kernel
/// counts as ring 1 (Xen's rule without the `architectural_iopl` assist), user mode as 3.
fn iopl_ok(d: &Domain) -> bool {
    let ring = if d.cur().pv.in_kernel { 1 } else { 3 };
    d.cur().iopl >= ring
}

/// The guest's view of a control register (Xen's PV rules): CR0 with its own TS, its
/// last page-fault address, its current page-table root, the CR4 bits it may rely on.
fn guest_cr(d: &Domain, cr: u8) -> Option<u64> {
    const CR0_TS: u64 = 1 << 3;
    const CR4_GUEST: u64 = (1 << 5) | (1 << 9) | (1 << 10); // PAE, OSFXSR, OSXMMEXCPT
    match cr {
        0 => Some((cpu::read_cr0() & !CR0_TS) | if d.cur().fpu_ts { CR0_TS } else { 0 }),
        2 => Some(d.cur().cr2),
        3 => {
            let l4 = if d.cur().pv.in_kernel {
                d.cur().kernel_l4.as_ref()
            } else {
                d.cur().user_l4.as_ref()
            };
            Some(l4.map_or(0, |l4| l4.mfn().addr()))
        }
        4 => Some(CR4_GUEST),
        _ => None,
    }
}

/// A guest write to a control register: CR0 may only change TS, CR3 loads a new root
/// (as `MMUEXT_NEW_BASEPTR`), CR4 writes are ignored (the guest cannot change paging
/// modes); anything else is refused (#GP).
fn set_guest_cr(d: &mut Domain, cr: u8, value: u64) -> bool {
    const CR0_TS: u64 = 1 << 3;
    match cr {
        0 => {
            let current = guest_cr(d, 0).unwrap_or(0);
            if (value ^ current) & !CR0_TS != 0 {
                return false;
            }
            d.cur_mut().fpu_ts = value & CR0_TS != 0;
            cpu::set_task_switched(d.cur().fpu_ts);
            true
        }
        3 => crate::hypercall::mmu::new_baseptr(d, Mfn::containing(value)).is_ok(),
        4 => true,
        _ => false,
    }
}

fn msr_context(d: &Domain) -> MsrContext {
    let vendor = match cpu::cpuid(0, 0) {
        [_, 0x756e_6547, _, _] => Vendor::Intel, // "Genu"
        [_, 0x6874_7541, _, _] | [_, 0x6f67_7948, _, _] => Vendor::Amd, // "Auth", "Hygo"
        _ => Vendor::Other,
    };
    let (kernel_gs, user_gs) = if d.cur().pv.in_kernel {
        (percpu::guest_gs_base(), d.cur().saved_gs_base)
    } else {
        (d.cur().saved_gs_base, percpu::guest_gs_base())
    };
    MsrContext {
        vendor,
        vcpu_id: d.cur().id,
        tsc: cpu::rdtsc(),
        fs_base: cpu::guest_fs_base(),
        gs_base_kernel: kernel_gs,
        gs_base_user: user_gs,
        syscall: SyscallMsrs {
            star: 0,
            lstar: d.cur().pv.callbacks.syscall,
            cstar: 0,
            sfmask: 0,
        },
        nx: crate::arch::x86_64::msr::nx_enabled(),
        pat: 0x0007_0406_0007_0406,
        host_misc_enable: 0,
        ucode_rev: 0,
        tsc_aux: None,
        lfence_serialising: true,
    }
}

/// `set_segment_base` and the equivalent MSR writes; false for a bad base.
pub fn set_segment_base(d: &mut Domain, which: SegBase, base: u64) -> bool {
    match which {
        SegBase::Fs => cpu::set_guest_fs_base(base),
        SegBase::GsKernel if d.cur().pv.in_kernel => percpu::set_guest_gs_base(base),
        SegBase::GsUser if d.cur().pv.in_kernel => {
            if !cpu::is_guest_base(base) {
                return false;
            }
            d.cur_mut().saved_gs_base = base;
            true
        }
        SegBase::GsKernel => {
            if !cpu::is_guest_base(base) {
                return false;
            }
            d.cur_mut().saved_gs_base = base;
            true
        }
        SegBase::GsUser => percpu::set_guest_gs_base(base),
        SegBase::GsUserSel => match user_selector_base(d, base as u16) {
            Some(b) => set_segment_base(d, SegBase::GsUser, u64::from(b)),
            None => {
                // Xen loads the null selector then and fails the call.
                let _ = set_segment_base(d, SegBase::GsUser, 0);
                false
            }
        },
    }
}

/// The base the user `%gs` gets from selector `sel` (`SEGBASE_GS_USER_SEL`: Linux's
/// `load_gs_index`): 0 for a null selector or one of the hypervisor's flat selectors, the
/// descriptor's base for one of the guest's GDT or LDT entries; `None` for a selector
/// that does not name a loadable segment.
fn user_selector_base(d: &Domain, sel: u16) -> Option<u32> {
    const TI_LDT: u16 = 1 << 2;
    let index = usize::from(sel >> 3);
    if sel & !3 == 0 {
        return Some(0);
    }
    let (frames, entries): (&[Mfn], usize) = if sel & TI_LDT != 0 {
        (&d.cur().ldt_frames, d.cur().ldt_entries as usize)
    } else {
        let gdt = &d.cur().gdt;
        if index >= gdt.entries() as usize {
            // The hypervisor's reserved GDT entries hold flat segments (base 0).
            return (index >= ferrovisor_abi::xen::arch_x86::FIRST_RESERVED_GDT_ENTRY).then_some(0);
        }
        (gdt.frames(), gdt.entries() as usize)
    };
    if index >= entries {
        return None;
    }
    let mfn = *frames.get(index / descriptor::ENTRIES_PER_PAGE)?;
    // A descriptor-table frame of the running vCPU, typed `SegDesc` while it is installed:
    // read through the frame table, which checks that it still is.
    let raw = domain::FRAME_TABLE.lock().as_ref().and_then(|ft| {
        ft.read_descriptor(
            mfn,
            d.id,
            index % descriptor::ENTRIES_PER_PAGE,
            &GuestTables::new(),
        )
        .ok()
    })?;
    descriptor::segment_base(raw)
}
