//! The MSRs a PV guest may read and write.
//!
//! A guest kernel runs in ring 3, so `rdmsr`/`wrmsr` raise #GP; the hypervisor decodes the
//! instruction and asks [`read`] or [`write`] what to do. Everything not listed here is
//! refused with [`MsrError::Gp`], which the caller injects as #GP(0) (Xen does the same for
//! unknown MSRs since 4.15). Linux copes: it reaches MSRs through its paravirt hooks, which
//! use the `_safe` variants on Xen PV by default (`CONFIG_XEN_PV_MSR_SAFE`), and the few
//! `native_` accesses have exception-table fixups.
//!
//! The policy matches the CPUID policy (`super::cpuid`): an MSR whose feature bit is hidden
//! (MCE banks, MTRRs beyond their capability register, SPEC_CTRL, ARCH_CAPABILITIES,
//! x2APIC, TSC_DEADLINE, TSC_ADJUST, XSS, the PMU) is refused.
//!
//! | MSR | read | write |
//! |---|---|---|
//! | TSC (0x10) | the host TSC (PV guests see it unoffset) | #GP |
//! | PLATFORM_ID (0x17), Intel | 0: guests never load microcode | #GP |
//! | APIC_BASE (0x1b) | the xAPIC address with the global enable clear (BSP flag on vCPU 0): no APIC, as CPUID says | #GP |
//! | FEATURE_CONTROL (0x3a), Intel | locked, nothing enabled (no VMX/SMX/SGX), as Xen | #GP |
//! | UCODE_REV / PATCH_LEVEL (0x8b) | the host's revision | Intel: 0 ignored (Linux writes 0 before reading the revision); else #GP |
//! | MTRRcap (0xfe) | 0: no variable or fixed ranges, no WC | #GP |
//! | SYSENTER_CS/ESP/EIP (0x174..=0x176) | 0 | ignored (64-bit guests use SYSCALL; Linux ignores these writes itself) |
//! | MISC_ENABLE (0x1a0), Intel | the host value with perf monitoring and MONITOR hidden, BTS/PEBS unavailable and xTPR disabled (Xen's guest view) | ignored (Xen: same) |
//! | PAT (0x277) | the PAT guests run under | the same value ignored; else #GP (the PAT is the hypervisor's) |
//! | MTRRdefType (0x2ff) | 0 | #GP |
//! | EFER (0xc0000080) | SCE, LME, LMA, NXE when the host uses NX | the same value ignored; else #GP |
//! | STAR, LSTAR, CSTAR, SFMASK (0xc0000081..=0xc0000084) | the guest's view from the context | **ignored**: a PV guest registers its SYSCALL entry with `callback_op`; the real MSRs belong to the hypervisor |
//! | FS_BASE, GS_BASE, KERNEL_GS_BASE (0xc0000100..=0xc0000102) | the vCPU's bases | [`WriteEffect::SetSegmentBase`] (as `set_segment_base` would); non-canonical: #GP |
//! | TSC_AUX (0xc0000103) | the vCPU's value, when TSC_AUX is virtualised | [`WriteEffect::SetTscAux`] (32 bits), when virtualised |
//! | HWCR (0xc0010015), AMD | TscFreqSel: the TSC runs at a fixed rate | ignored |
//! | DE_CFG (0xc0011029), AMD | LFENCE-serialising when the host set it | ignored |
//! | hypercall page (0x40000000) | #GP | [`WriteEffect::InstallHypercallPage`] (CPUID 0x40000002 names it) |

use ferrovisor_abi::xen::arch_x86::SegBase;

use super::cpuid::HYPERCALL_PAGE_MSR;

/// MSR numbers.
pub mod index {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_PLATFORM_ID: u32 = 0x17;
    pub const IA32_APIC_BASE: u32 = 0x1b;
    pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
    pub const IA32_SPEC_CTRL: u32 = 0x48;
    pub const IA32_PRED_CMD: u32 = 0x49;
    /// IA32_BIOS_SIGN_ID on Intel, PATCH_LEVEL on AMD.
    pub const IA32_UCODE_REV: u32 = 0x8b;
    pub const PLATFORM_INFO: u32 = 0xce;
    pub const MTRR_CAP: u32 = 0xfe;
    pub const IA32_ARCH_CAPABILITIES: u32 = 0x10a;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_MCG_CAP: u32 = 0x179;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const IA32_PAT: u32 = 0x277;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const IA32_TSC_DEADLINE: u32 = 0x6e0;
    pub const X2APIC_FIRST: u32 = 0x800;
    pub const IA32_XSS: u32 = 0xda0;
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const TSC_AUX: u32 = 0xc000_0103;
    pub const AMD_HWCR: u32 = 0xc001_0015;
    pub const AMD_DE_CFG: u32 = 0xc001_1029;
}

/// EFER bits.
pub mod efer {
    pub const SCE: u64 = 1 << 0;
    pub const LME: u64 = 1 << 8;
    pub const LMA: u64 = 1 << 10;
    pub const NXE: u64 = 1 << 11;
}

/// IA32_MISC_ENABLE bits.
pub mod misc_enable {
    /// Performance monitoring available.
    pub const PERF_AVAIL: u64 = 1 << 7;
    pub const BTS_UNAVAIL: u64 = 1 << 11;
    pub const PEBS_UNAVAIL: u64 = 1 << 12;
    /// MONITOR/MWAIT enabled.
    pub const MONITOR_ENABLE: u64 = 1 << 18;
    pub const XTPR_DISABLE: u64 = 1 << 23;
}

/// The xAPIC's default base address.
const APIC_DEFAULT_BASE: u64 = 0xfee0_0000;
/// IA32_APIC_BASE: this is the bootstrap processor.
const APIC_BASE_BSP: u64 = 1 << 8;
/// IA32_FEATURE_CONTROL: locked.
const FEATURE_CONTROL_LOCK: u64 = 1 << 0;
/// AMD HWCR: the TSC counts at the P0 frequency whatever the P-state.
const AMD_HWCR_TSC_FREQ_SEL: u64 = 1 << 24;
/// AMD DE_CFG: LFENCE is dispatch-serialising.
const AMD_DE_CFG_LFENCE_SERIALIZE: u64 = 1 << 1;

/// The host CPU's vendor, for vendor-specific MSRs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    /// AMD and Hygon.
    Amd,
    Other,
}

/// The guest's view of the SYSCALL MSRs (writes never change them; see the module
/// documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallMsrs {
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
}

/// The state the answers come from: the vCPU's, the domain's and the host's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrContext {
    pub vendor: Vendor,
    pub vcpu_id: u32,
    /// The TSC now.
    pub tsc: u64,
    pub fs_base: u64,
    /// The GS base while the guest kernel runs (`SEGBASE_GS_KERNEL`, MSR GS_BASE).
    pub gs_base_kernel: u64,
    /// The GS base user mode gets after `swapgs` (`SEGBASE_GS_USER`, MSR KERNEL_GS_BASE).
    pub gs_base_user: u64,
    pub syscall: SyscallMsrs,
    /// The host runs with EFER.NXE (the guest may use NX in its page tables).
    pub nx: bool,
    /// The PAT guests run under: the meaning of PAT/PCD/PWT in their page tables.
    pub pat: u64,
    /// The host's IA32_MISC_ENABLE.
    pub host_misc_enable: u64,
    /// The host's IA32_UCODE_REV / PATCH_LEVEL.
    pub ucode_rev: u64,
    /// The vCPU's IA32_TSC_AUX, `None` when the hypervisor does not keep one per vCPU
    /// (then RDTSCP and RDPID are hidden and the MSR is refused).
    pub tsc_aux: Option<u32>,
    /// The host set DE_CFG.LFENCE_SERIALIZE (AMD).
    pub lfence_serialising: bool,
}

/// Why an MSR access is refused: inject #GP(0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrError {
    Gp,
}

/// What an accepted write asks the caller to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteEffect {
    /// Nothing changes.
    Ignored,
    /// Set a segment base of the vCPU, as the `set_segment_base` hypercall would.
    SetSegmentBase(SegBase, u64),
    /// Set the vCPU's IA32_TSC_AUX (loaded into the MSR while it runs).
    SetTscAux(u32),
    /// Fill the guest frame `frame` with the hypercall page (the write's bits 63:12; a PV
    /// guest's frame numbers are machine frames it owns, which the caller checks).
    InstallHypercallPage { frame: u64 },
}

/// Whether `addr` is canonical with 48-bit linear addresses.
pub const fn is_canonical(addr: u64) -> bool {
    let top = (addr as i64) >> 47;
    top == 0 || top == -1
}

/// The guest's EFER.
pub const fn guest_efer(ctx: &MsrContext) -> u64 {
    efer::SCE | efer::LME | efer::LMA | if ctx.nx { efer::NXE } else { 0 }
}

/// The guest's IA32_MISC_ENABLE: features it cannot use are off or unavailable.
pub const fn guest_misc_enable(host: u64) -> u64 {
    (host & !(misc_enable::PERF_AVAIL | misc_enable::MONITOR_ENABLE))
        | misc_enable::BTS_UNAVAIL
        | misc_enable::PEBS_UNAVAIL
        | misc_enable::XTPR_DISABLE
}

/// The value a guest reads from `msr`.
pub fn read(msr: u32, ctx: &MsrContext) -> Result<u64, MsrError> {
    use index::*;
    let intel = ctx.vendor == Vendor::Intel;
    let amd = ctx.vendor == Vendor::Amd;
    Ok(match msr {
        IA32_TSC => ctx.tsc,
        IA32_PLATFORM_ID if intel => 0,
        IA32_APIC_BASE => APIC_DEFAULT_BASE | if ctx.vcpu_id == 0 { APIC_BASE_BSP } else { 0 },
        IA32_FEATURE_CONTROL if intel => FEATURE_CONTROL_LOCK,
        IA32_UCODE_REV if intel || amd => ctx.ucode_rev,
        MTRR_CAP | MTRR_DEF_TYPE => 0,
        IA32_SYSENTER_CS | IA32_SYSENTER_ESP | IA32_SYSENTER_EIP => 0,
        IA32_MISC_ENABLE if intel => guest_misc_enable(ctx.host_misc_enable),
        IA32_PAT => ctx.pat,
        EFER => guest_efer(ctx),
        STAR => ctx.syscall.star,
        LSTAR => ctx.syscall.lstar,
        CSTAR => ctx.syscall.cstar,
        SFMASK => ctx.syscall.sfmask,
        FS_BASE => ctx.fs_base,
        GS_BASE => ctx.gs_base_kernel,
        KERNEL_GS_BASE => ctx.gs_base_user,
        TSC_AUX => u64::from(ctx.tsc_aux.ok_or(MsrError::Gp)?),
        AMD_HWCR if amd => AMD_HWCR_TSC_FREQ_SEL,
        AMD_DE_CFG if amd => {
            if ctx.lfence_serialising {
                AMD_DE_CFG_LFENCE_SERIALIZE
            } else {
                0
            }
        }
        _ => return Err(MsrError::Gp),
    })
}

/// What writing `value` to `msr` does.
pub fn write(msr: u32, value: u64, ctx: &MsrContext) -> Result<WriteEffect, MsrError> {
    use index::*;
    let intel = ctx.vendor == Vendor::Intel;
    let amd = ctx.vendor == Vendor::Amd;
    let unchanged = |current: u64| {
        if value == current {
            Ok(WriteEffect::Ignored)
        } else {
            Err(MsrError::Gp)
        }
    };
    let base = |which: SegBase| {
        if is_canonical(value) {
            Ok(WriteEffect::SetSegmentBase(which, value))
        } else {
            Err(MsrError::Gp)
        }
    };
    match msr {
        IA32_UCODE_REV if intel => unchanged(0),
        IA32_SYSENTER_CS | IA32_SYSENTER_ESP | IA32_SYSENTER_EIP => Ok(WriteEffect::Ignored),
        STAR | LSTAR | CSTAR | SFMASK => Ok(WriteEffect::Ignored),
        IA32_MISC_ENABLE if intel => Ok(WriteEffect::Ignored),
        IA32_PAT => unchanged(ctx.pat),
        EFER => unchanged(guest_efer(ctx)),
        FS_BASE => base(SegBase::Fs),
        GS_BASE => base(SegBase::GsKernel),
        KERNEL_GS_BASE => base(SegBase::GsUser),
        TSC_AUX => match (ctx.tsc_aux, u32::try_from(value)) {
            (Some(_), Ok(aux)) => Ok(WriteEffect::SetTscAux(aux)),
            _ => Err(MsrError::Gp),
        },
        AMD_HWCR | AMD_DE_CFG if amd => Ok(WriteEffect::Ignored),
        HYPERCALL_PAGE_MSR => {
            // Bits 11:0 select the page among the hypercall pages; there is one.
            if value & 0xfff != 0 {
                Err(MsrError::Gp)
            } else {
                Ok(WriteEffect::InstallHypercallPage { frame: value >> 12 })
            }
        }
        _ => Err(MsrError::Gp),
    }
}

#[cfg(test)]
mod tests {
    use super::{index::*, *};

    fn ctx(vendor: Vendor) -> MsrContext {
        MsrContext {
            vendor,
            vcpu_id: 0,
            tsc: 0x1234_5678,
            fs_base: 0x7f00_0000_1000,
            gs_base_kernel: 0xffff_8880_0001_0000,
            gs_base_user: 0x7f00_0000_2000,
            syscall: SyscallMsrs {
                star: 0x0023_e008_0000_0000,
                lstar: 0xffff_ffff_8100_0000,
                cstar: 0,
                sfmask: 0x4_7700,
            },
            nx: true,
            pat: 0x0005_0100_0704_0406,
            host_misc_enable: 0x0085_0089,
            ucode_rev: 0x0000_00f0_0000_0000,
            tsc_aux: None,
            lfence_serialising: true,
        }
    }

    #[test]
    fn reads_from_the_context() {
        let c = ctx(Vendor::Intel);
        assert_eq!(read(IA32_TSC, &c), Ok(0x1234_5678));
        assert_eq!(read(FS_BASE, &c), Ok(c.fs_base));
        assert_eq!(read(GS_BASE, &c), Ok(c.gs_base_kernel));
        assert_eq!(read(KERNEL_GS_BASE, &c), Ok(c.gs_base_user));
        assert_eq!(read(STAR, &c), Ok(c.syscall.star));
        assert_eq!(read(LSTAR, &c), Ok(c.syscall.lstar));
        assert_eq!(read(CSTAR, &c), Ok(0));
        assert_eq!(read(SFMASK, &c), Ok(c.syscall.sfmask));
        assert_eq!(read(IA32_PAT, &c), Ok(c.pat));
        assert_eq!(read(IA32_UCODE_REV, &c), Ok(c.ucode_rev));
    }

    #[test]
    fn efer_view() {
        let mut c = ctx(Vendor::Amd);
        assert_eq!(read(EFER, &c), Ok(0xd01));
        c.nx = false;
        assert_eq!(read(EFER, &c), Ok(0x501));
        assert_eq!(write(EFER, 0x501, &c), Ok(WriteEffect::Ignored));
        assert_eq!(write(EFER, 0xd01, &c), Err(MsrError::Gp), "enabling NX");
        assert_eq!(write(EFER, 0x500, &c), Err(MsrError::Gp), "clearing SCE");
    }

    #[test]
    fn apic_base_says_disabled() {
        let mut c = ctx(Vendor::Intel);
        let v = read(IA32_APIC_BASE, &c).unwrap();
        assert_eq!(v, 0xfee0_0100);
        assert_eq!(v & (1 << 11), 0, "global enable clear");
        assert_eq!(v & (1 << 10), 0, "x2APIC clear");
        c.vcpu_id = 3;
        assert_eq!(read(IA32_APIC_BASE, &c), Ok(0xfee0_0000));
        assert_eq!(write(IA32_APIC_BASE, v, &c), Err(MsrError::Gp));
    }

    #[test]
    fn intel_only_and_amd_only_msrs() {
        let intel = ctx(Vendor::Intel);
        let amd = ctx(Vendor::Amd);
        assert_eq!(read(IA32_FEATURE_CONTROL, &intel), Ok(1));
        assert_eq!(read(IA32_FEATURE_CONTROL, &amd), Err(MsrError::Gp));
        assert_eq!(write(IA32_FEATURE_CONTROL, 1, &intel), Err(MsrError::Gp));
        assert_eq!(read(IA32_PLATFORM_ID, &intel), Ok(0));
        assert_eq!(read(IA32_PLATFORM_ID, &amd), Err(MsrError::Gp));
        assert_eq!(read(AMD_HWCR, &amd), Ok(1 << 24));
        assert_eq!(read(AMD_HWCR, &intel), Err(MsrError::Gp));
        assert_eq!(write(AMD_HWCR, 0, &amd), Ok(WriteEffect::Ignored));
        assert_eq!(read(AMD_DE_CFG, &amd), Ok(2));
        let mut no_lfence = amd;
        no_lfence.lfence_serialising = false;
        assert_eq!(read(AMD_DE_CFG, &no_lfence), Ok(0));
        assert_eq!(read(AMD_DE_CFG, &intel), Err(MsrError::Gp));
        assert_eq!(read(IA32_MISC_ENABLE, &amd), Err(MsrError::Gp));
        assert_eq!(read(IA32_UCODE_REV, &ctx(Vendor::Other)), Err(MsrError::Gp));
    }

    #[test]
    fn misc_enable_view() {
        let c = ctx(Vendor::Intel);
        // Host: fast strings (0), perf (7), EIST (16), MONITOR (18), bit 23 clear.
        let v = read(IA32_MISC_ENABLE, &c).unwrap();
        assert_eq!(v & misc_enable::PERF_AVAIL, 0);
        assert_eq!(v & misc_enable::MONITOR_ENABLE, 0);
        assert_ne!(v & misc_enable::BTS_UNAVAIL, 0);
        assert_ne!(v & misc_enable::PEBS_UNAVAIL, 0);
        assert_ne!(v & misc_enable::XTPR_DISABLE, 0);
        assert_ne!(v & 1, 0, "fast strings stay");
        assert_eq!(write(IA32_MISC_ENABLE, 0, &c), Ok(WriteEffect::Ignored));
    }

    #[test]
    fn microcode_revision_protocol() {
        let c = ctx(Vendor::Intel);
        assert_eq!(write(IA32_UCODE_REV, 0, &c), Ok(WriteEffect::Ignored));
        assert_eq!(write(IA32_UCODE_REV, 1, &c), Err(MsrError::Gp));
        assert_eq!(
            write(IA32_UCODE_REV, 0, &ctx(Vendor::Amd)),
            Err(MsrError::Gp)
        );
    }

    #[test]
    fn syscall_msr_writes_are_ignored() {
        let c = ctx(Vendor::Intel);
        for msr in [
            STAR,
            LSTAR,
            CSTAR,
            SFMASK,
            IA32_SYSENTER_CS,
            IA32_SYSENTER_ESP,
            IA32_SYSENTER_EIP,
        ] {
            assert_eq!(
                write(msr, 0xdead_beef, &c),
                Ok(WriteEffect::Ignored),
                "{msr:#x}"
            );
        }
        assert_eq!(read(IA32_SYSENTER_EIP, &c), Ok(0));
    }

    #[test]
    fn segment_base_writes() {
        let c = ctx(Vendor::Intel);
        assert_eq!(
            write(FS_BASE, 0x7fff_ffff_f000, &c),
            Ok(WriteEffect::SetSegmentBase(SegBase::Fs, 0x7fff_ffff_f000))
        );
        assert_eq!(
            write(GS_BASE, 0xffff_8880_0000_0000, &c),
            Ok(WriteEffect::SetSegmentBase(
                SegBase::GsKernel,
                0xffff_8880_0000_0000
            ))
        );
        assert_eq!(
            write(KERNEL_GS_BASE, 0, &c),
            Ok(WriteEffect::SetSegmentBase(SegBase::GsUser, 0))
        );
        for bad in [
            0x0000_8000_0000_0000,
            0x8000_0000_0000_0000,
            0xffff_7fff_ffff_ffff,
        ] {
            assert_eq!(write(FS_BASE, bad, &c), Err(MsrError::Gp), "{bad:#x}");
            assert_eq!(write(GS_BASE, bad, &c), Err(MsrError::Gp), "{bad:#x}");
            assert_eq!(
                write(KERNEL_GS_BASE, bad, &c),
                Err(MsrError::Gp),
                "{bad:#x}"
            );
        }
    }

    #[test]
    fn pat_is_fixed() {
        let c = ctx(Vendor::Intel);
        assert_eq!(write(IA32_PAT, c.pat, &c), Ok(WriteEffect::Ignored));
        assert_eq!(
            write(IA32_PAT, 0x0007_0406_0007_0406, &c),
            Err(MsrError::Gp)
        );
    }

    #[test]
    fn tsc_aux_only_when_virtualised() {
        let mut c = ctx(Vendor::Intel);
        assert_eq!(read(TSC_AUX, &c), Err(MsrError::Gp));
        assert_eq!(write(TSC_AUX, 1, &c), Err(MsrError::Gp));
        c.tsc_aux = Some(7);
        assert_eq!(read(TSC_AUX, &c), Ok(7));
        assert_eq!(write(TSC_AUX, 9, &c), Ok(WriteEffect::SetTscAux(9)));
        assert_eq!(write(TSC_AUX, 1 << 32, &c), Err(MsrError::Gp));
    }

    #[test]
    fn hypercall_page_msr() {
        let c = ctx(Vendor::Intel);
        assert_eq!(
            write(HYPERCALL_PAGE_MSR, 0x1234_5000, &c),
            Ok(WriteEffect::InstallHypercallPage { frame: 0x12345 })
        );
        assert_eq!(
            write(HYPERCALL_PAGE_MSR, 0x1234_5001, &c),
            Err(MsrError::Gp)
        );
        assert_eq!(read(HYPERCALL_PAGE_MSR, &c), Err(MsrError::Gp));
    }

    #[test]
    fn mtrrs_read_as_absent() {
        let c = ctx(Vendor::Intel);
        assert_eq!(read(MTRR_CAP, &c), Ok(0));
        assert_eq!(read(MTRR_DEF_TYPE, &c), Ok(0));
        assert_eq!(write(MTRR_DEF_TYPE, 0xc06, &c), Err(MsrError::Gp));
    }

    #[test]
    fn everything_else_is_gp() {
        let mut c = ctx(Vendor::Intel);
        c.tsc_aux = Some(0);
        for msr in [
            IA32_SPEC_CTRL,
            IA32_PRED_CMD,
            PLATFORM_INFO,
            IA32_ARCH_CAPABILITIES,
            IA32_MCG_CAP,
            IA32_TSC_DEADLINE,
            X2APIC_FIRST,
            X2APIC_FIRST + 0x30,
            IA32_XSS,
            0x4000_0001,
            0xc001_0010,
            0xffff_ffff,
        ] {
            assert_eq!(read(msr, &c), Err(MsrError::Gp), "read {msr:#x}");
            assert_eq!(write(msr, 0, &c), Err(MsrError::Gp), "write {msr:#x}");
        }
        assert_eq!(write(IA32_TSC, 0, &c), Err(MsrError::Gp));
    }

    #[test]
    fn canonical_addresses() {
        assert!(is_canonical(0));
        assert!(is_canonical(0x0000_7fff_ffff_ffff));
        assert!(is_canonical(0xffff_8000_0000_0000));
        assert!(is_canonical(u64::MAX));
        assert!(!is_canonical(0x0000_8000_0000_0000));
        assert!(!is_canonical(0xfff7_ffff_ffff_ffff));
    }
}
