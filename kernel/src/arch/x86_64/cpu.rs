//! CPU identification, control registers and the stack switch.

use core::fmt;

use x86::{
    controlregs::{self, Cr4},
    cpuid::CpuId,
};

/// What this CPU can do, read once from CPUID.
#[derive(Clone, Copy, Debug)]
pub struct Features {
    pub vendor: [u8; 12],
    pub brand: [u8; 48],
    pub family: u8,
    pub model: u8,
    pub stepping: u8,
    pub nx: bool,
    pub page_1g: bool,
    pub smep: bool,
    pub smap: bool,
    pub umip: bool,
    pub x2apic: bool,
    pub tsc_deadline: bool,
    pub invariant_tsc: bool,
    pub xsave: bool,
    pub fsgsbase: bool,
    pub pcid: bool,
    pub hypervisor: bool,
}

impl Features {
    pub fn detect() -> Features {
        let cpuid = CpuId::new();
        let mut f = Features {
            vendor: [0; 12],
            brand: [0; 48],
            family: 0,
            model: 0,
            stepping: 0,
            nx: false,
            page_1g: false,
            smep: false,
            smap: false,
            umip: false,
            x2apic: false,
            tsc_deadline: false,
            invariant_tsc: false,
            xsave: false,
            fsgsbase: false,
            pcid: false,
            hypervisor: false,
        };
        if let Some(v) = cpuid.get_vendor_info() {
            copy_str(&mut f.vendor, v.as_str());
        }
        if let Some(b) = cpuid.get_processor_brand_string() {
            copy_str(&mut f.brand, b.as_str().trim());
        }
        if let Some(fi) = cpuid.get_feature_info() {
            f.family = fi.family_id();
            f.model = fi.model_id();
            f.stepping = fi.stepping_id();
            f.x2apic = fi.has_x2apic();
            f.tsc_deadline = fi.has_tsc_deadline();
            f.xsave = fi.has_xsave();
            f.pcid = fi.has_pcid();
            f.hypervisor = fi.has_hypervisor();
        }
        if let Some(e) = cpuid.get_extended_feature_info() {
            f.smep = e.has_smep();
            f.smap = e.has_smap();
            f.umip = e.has_umip();
            f.fsgsbase = e.has_fsgsbase();
        }
        if let Some(p) = cpuid.get_extended_processor_and_feature_identifiers() {
            f.nx = p.has_execute_disable();
            f.page_1g = p.has_1gib_pages();
        }
        if let Some(a) = cpuid.get_advanced_power_mgmt_info() {
            f.invariant_tsc = a.has_invariant_tsc();
        }
        f
    }

    pub fn vendor(&self) -> &str {
        as_str(&self.vendor)
    }

    pub fn brand(&self) -> &str {
        as_str(&self.brand)
    }
}

fn copy_str(dst: &mut [u8], src: &str) {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src.as_bytes()[..n]);
}

fn as_str(b: &[u8]) -> &str {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    core::str::from_utf8(&b[..end]).unwrap_or("?")
}

/// The feature list of the boot banner.
impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = [
            (self.nx, "nx"),
            (self.page_1g, "pdpe1gb"),
            (self.smep, "smep"),
            (self.smap, "smap"),
            (self.umip, "umip"),
            (self.x2apic, "x2apic"),
            (self.tsc_deadline, "tsc-deadline"),
            (self.invariant_tsc, "invariant-tsc"),
            (self.xsave, "xsave"),
            (self.fsgsbase, "fsgsbase"),
            (self.pcid, "pcid"),
            (self.hypervisor, "hypervisor"),
        ];
        let mut first = true;
        for (on, name) in flags {
            if on {
                if !first {
                    f.write_str(" ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// Turns on the supervisor protections the CPU has: SMEP (never execute guest pages),
/// SMAP (never touch guest pages except in the guest-memory copy routines, which will
/// bracket their accesses with `stac`/`clac`) and UMIP (guests cannot read descriptor
/// table registers). Returns what was enabled.
pub fn enable_protections(features: &Features) -> (bool, bool, bool) {
    let mut cr4 = read_cr4();
    if features.smep {
        cr4 |= Cr4::CR4_ENABLE_SMEP;
    }
    if features.smap {
        cr4 |= Cr4::CR4_ENABLE_SMAP;
    }
    if features.umip {
        cr4 |= Cr4::CR4_ENABLE_UMIP;
    }
    // SAFETY: the hypervisor maps nothing user-accessible, so SMEP/SMAP cannot fault its
    // own accesses; UMIP only affects CPL > 0.
    unsafe { controlregs::cr4_write(cr4) };
    (features.smep, features.smap, features.umip)
}

/// Whether SMAP is on (CR4.SMAP).
pub fn smap_enabled() -> bool {
    read_cr4().contains(Cr4::CR4_ENABLE_SMAP)
}

/// Turns SMAP off on this CPU.
pub fn disable_smap() {
    let cr4 = read_cr4() - Cr4::CR4_ENABLE_SMAP;
    // SAFETY: clearing SMAP only removes a check on supervisor accesses to user pages.
    unsafe { controlregs::cr4_write(cr4) };
}

/// Lets guests use the x87 FPU and SSE: CR0.MP and NE on, EM off, CR4.OSFXSR and
/// OSXMMEXCPT on, and a clean FPU state. The hypervisor itself is built soft-float and
/// never touches these registers, so a guest's FPU state survives every trap.
pub fn enable_guest_fpu() {
    use x86::controlregs::{Cr0, Cr4};
    // SAFETY: these bits only change how FPU/SSE instructions behave (the hypervisor runs
    // none); `fninit` resets the x87 state to its defaults.
    unsafe {
        let cr0 = controlregs::cr0();
        controlregs::cr0_write(
            (cr0 | Cr0::CR0_MONITOR_COPROCESSOR | Cr0::CR0_NUMERIC_ERROR)
                & !Cr0::CR0_EMULATE_COPROCESSOR,
        );
        controlregs::cr4_write(read_cr4() | Cr4::CR4_ENABLE_SSE | Cr4::CR4_UNMASKED_SSE);
        core::arch::asm!("fninit", options(nostack));
    }
}

/// Enables global pages (the hypervisor's mappings are the same in every address space).
pub fn enable_global_pages() {
    let cr4 = read_cr4() | Cr4::CR4_ENABLE_GLOBAL_PAGES;
    // SAFETY: enabling PGE keeps every current translation valid.
    unsafe { controlregs::cr4_write(cr4) };
}

pub fn read_cr0() -> u64 {
    // SAFETY: reading CR0 has no side effects.
    unsafe { controlregs::cr0().bits() as u64 }
}

pub fn read_cr2() -> u64 {
    // SAFETY: reading CR2 has no side effects.
    unsafe { controlregs::cr2() as u64 }
}

pub fn read_cr3() -> u64 {
    // SAFETY: reading CR3 has no side effects.
    unsafe { controlregs::cr3() }
}

pub fn read_cr4() -> Cr4 {
    // SAFETY: reading CR4 has no side effects.
    unsafe { controlregs::cr4() }
}

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter (CR4.TSD is never set here).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Calls `entry` on a fresh stack whose top is `stack_top`; never returns.
///
/// # Safety
/// `stack_top` must be the 16-byte aligned top of a mapped, writable stack that nothing
/// else uses, and nothing on the current stack may be needed again.
pub unsafe fn switch_stack(stack_top: u64, entry: extern "C" fn() -> !) -> ! {
    // SAFETY: the caller guarantees the new stack is valid and exclusively ours.
    unsafe {
        core::arch::asm!(
            "mov rsp, {stack}",
            "xor ebp, ebp",
            "call {entry}",
            "ud2",
            stack = in(reg) stack_top,
            entry = in(reg) entry,
            options(noreturn)
        )
    }
}

/// The host's CPUID answer for `leaf`/`subleaf`: `[eax, ebx, ecx, edx]`.
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = x86::cpuid::cpuid!(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Sets or clears CR0.TS (lazy FPU switching: the guest's `fpu_taskswitch`).
pub fn set_task_switched(on: bool) {
    // SAFETY: CR0.TS only makes FPU instructions raise #NM; the hypervisor uses no FPU
    // (the target is soft-float).
    unsafe {
        let cr0 = x86::controlregs::cr0();
        let ts = x86::controlregs::Cr0::CR0_TASK_SWITCHED;
        x86::controlregs::cr0_write(if on { cr0 | ts } else { cr0 & !ts });
    }
}

/// Whether `va` is canonical and outside the hypervisor's range: a base a guest may load.
pub fn is_guest_base(va: u64) -> bool {
    let canonical = (va >> 47) == 0 || (va >> 47) == 0x1_ffff;
    canonical
        && !(ferrovisor_abi::layout::HYPERVISOR_VIRT_START
            ..ferrovisor_abi::layout::HYPERVISOR_VIRT_END)
            .contains(&va)
}

/// The guest's FS base (the hypervisor never uses FS, so it stays loaded).
pub fn set_guest_fs_base(va: u64) -> bool {
    if !is_guest_base(va) {
        return false;
    }
    // SAFETY: IA32_FS_BASE exists on x86-64; the value is canonical (checked) and the
    // hypervisor does not use FS.
    unsafe { super::msr::write(0xc000_0100, va) };
    true
}

/// A vCPU's x87/SSE state in the FXSAVE format (512 bytes, 16-byte aligned).
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub struct FpuState(pub [u8; 512]);

impl FpuState {
    /// The state after `fninit` with SSE exceptions masked: FCW 0x037f, MXCSR 0x1f80.
    pub fn initial() -> FpuState {
        let mut s = [0u8; 512];
        s[0..2].copy_from_slice(&0x037f_u16.to_le_bytes());
        s[24..28].copy_from_slice(&0x1f80_u32.to_le_bytes());
        FpuState(s)
    }
}

impl core::fmt::Debug for FpuState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("FpuState")
    }
}

/// Saves the current x87/SSE registers into `state` (CR0.TS is cleared for the
/// instruction and left clear: the caller sets it for the next vCPU).
pub fn save_fpu(state: &mut FpuState) {
    set_task_switched(false);
    // SAFETY: `state` is a 512-byte, 16-byte-aligned buffer we borrow mutably; with
    // CR0.TS clear and CR4.OSFXSR set (`enable_guest_fpu`), FXSAVE64 only writes it.
    unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) state.0.as_mut_ptr(), options(nostack)) }
}

/// Loads the x87/SSE registers from `state` (CR0.TS cleared, as for `save_fpu`).
pub fn restore_fpu(state: &FpuState) {
    set_task_switched(false);
    // SAFETY: as in `save_fpu`; the buffer came from FXSAVE64 or `FpuState::initial`,
    // whose reserved MXCSR bits are clear, so FXRSTOR64 cannot fault.
    unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) state.0.as_ptr(), options(nostack)) }
}

/// The guest's FS base, as loaded.
pub fn guest_fs_base() -> u64 {
    // SAFETY: reading IA32_FS_BASE has no side effects.
    unsafe { super::msr::read(0xc000_0100) }
}
