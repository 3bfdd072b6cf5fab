//! What CPUID tells a PV guest.
//!
//! A PV kernel asks through the forced-emulation prefix (`ud2; .ascii "xen"; cpuid`,
//! Linux's `xen_cpuid`), which traps with #UD; the hypervisor answers from
//! [`guest_cpuid`]. A plain `cpuid` in ring 3 is not intercepted unless the CPU supports
//! CPUID faulting, so guest user space (and the guest kernel's `native_cpuid`) still sees
//! the real CPU; the enlightened view is the one that decides what the guest kernel uses.
//!
//! # The policy
//!
//! - **Hypervisor leaves** at `XEN_CPUID_FIRST_LEAF` (0x40000000), laid out as
//!   `arch-x86/cpuid.h` says: signature and largest leaf, version, hypercall page and MSR
//!   base, TSC parameters, (HVM leaf: empty for PV), PV parameters. Xen moves them to
//!   0x40000100 only when Viridian occupies the first base; Ferrovisor never does, so
//!   everything else in 0x40000000..=0x4fffffff reads as zeros.
//! - **Feature bits** are an allow-list: a bit reaches the guest only when the host has it
//!   and it is in one of the `*_ALLOWED` masks below. Those are the bits Xen 4.17's
//!   `arch-x86/cpufeatureset.h` marks `A` (offered to every guest, PV included, by
//!   default), minus the ones Ferrovisor does not back yet, each listed with its reason
//!   next to the mask. Bits the header does not know (features newer than the policy)
//!   are never passed through.
//! - **Dependent features** follow their base: no XSAVE means no AVX and no XSAVE leaf; no
//!   AVX (or no YMM state allowed in XCR0) hides everything AVX-encoded; no AVX-512 state
//!   hides the AVX-512 family (Xen's "deep dependencies", reduced to what the masks allow).
//! - **Topology**: each vCPU looks like its own single-core, single-thread package, with
//!   its vCPU id as initial APIC id. PV guests schedule on vCPUs whose placement on
//!   physical cores changes all the time, so host topology would only mislead them (Xen
//!   zeroes the APIC id for PV; Ferrovisor gives each vCPU a distinct one so Linux does
//!   not take all of them for hyperthreads of one core).
//! - **Leaf ranges** are clamped: basic leaves up to 0xd, extended up to 0x80000008. Out of
//!   range leaves read as zeros (Xen follows AMD's model here).
//!
//! # OSXSAVE
//!
//! `OSXSAVE` mirrors a CR4 bit, so it is per vCPU: architecturally it is set once the
//! guest set its (virtual) CR4.OSXSAVE. Xen's PV ABI adds a non-architectural rule that
//! Linux relies on (`xen_check_xsave` reads CPUID before it ever writes CR4): the
//! enlightened CPUID issued from guest kernel mode reports OSXSAVE whenever XSAVE is
//! offered and the hypervisor itself runs with CR4.OSXSAVE. [`CpuidPolicy::enlightened_kernel`]
//! selects that view.

use ferrovisor_abi::{
    version::XEN_VERSION,
    xen::cpuid::{
        XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD, XEN_CPUID_FIRST_LEAF, XEN_CPUID_LEAF_BASE,
        XEN_CPUID_LEAF_HVM, XEN_CPUID_LEAF_HYPERCALL, XEN_CPUID_LEAF_PV, XEN_CPUID_LEAF_TIME,
        XEN_CPUID_LEAF_VERSION, XEN_CPUID_MACHINE_ADDRESS_WIDTH_MASK, XEN_CPUID_MAX_NUM_LEAVES,
        XEN_CPUID_SIGNATURE_EBX, XEN_CPUID_SIGNATURE_ECX, XEN_CPUID_SIGNATURE_EDX,
    },
};

use crate::time::scale::TscScale;

/// One CPUID answer: eax, ebx, ecx, edx.
pub type CpuidRegs = [u32; 4];

const EAX: usize = 0;
const EBX: usize = 1;
const ECX: usize = 2;
const EDX: usize = 3;

const ZERO: CpuidRegs = [0; 4];

/// The MSR whose write installs the hypercall page (CPUID 0x40000002 ebx, "base address of
/// Xen-specific MSRs"); the MSR policy handles the write.
pub const HYPERCALL_PAGE_MSR: u32 = 0x4000_0000;

/// Highest basic leaf a guest sees: the XSAVE leaf. Later leaves (RDT, processor trace,
/// TSC/crystal ratio, frequencies, V2 topology) describe hardware the guest does not own.
pub const MAX_BASIC_LEAF: u32 = 0xd;
/// Highest extended leaf a guest sees: address sizes. Later AMD leaves describe SVM,
/// topology extensions, IBS, memory encryption and QoS, none of which a PV guest gets.
pub const MAX_EXTENDED_LEAF: u32 = 0x8000_0008;
/// Highest sub-leaf of leaf 7 a guest sees.
pub const MAX_LEAF7_SUBLEAF: u32 = 2;

/// `tsc_mode` in CPUID 0x40000003 ebx: 2 = the TSC is never emulated (Xen's
/// `TSC_MODE_NEVER_EMULATE`); PV guests execute `rdtsc` natively.
pub const TSC_MODE_NEVER_EMULATE: u32 = 2;

/// XCR0 state components.
pub mod xcr0 {
    pub const X87: u64 = 1 << 0;
    pub const SSE: u64 = 1 << 1;
    pub const YMM: u64 = 1 << 2;
    pub const BNDREGS: u64 = 1 << 3;
    pub const BNDCSR: u64 = 1 << 4;
    pub const OPMASK: u64 = 1 << 5;
    pub const ZMM_HI256: u64 = 1 << 6;
    pub const HI16_ZMM: u64 = 1 << 7;
    pub const PKRU: u64 = 1 << 9;
    /// The three AVX-512 components, which go together.
    pub const AVX512: u64 = OPMASK | ZMM_HI256 | HI16_ZMM;
}

/// The legacy XSAVE area plus the header: the size of an area holding only x87 and SSE.
const XSAVE_LEGACY_AND_HEADER: u32 = 512 + 64;

/// Per-domain and per-vCPU inputs to the guest's CPUID view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidPolicy {
    /// The asking vCPU's id: the initial APIC id in leaf 1 ebx[31:24] (low 8 bits).
    pub vcpu_id: u32,
    /// The hypervisor runs guests with CR4.OSXSAVE set, context-switches XCR0 and the
    /// extended state, and emulates `xsetbv`. Without it, XSAVE and everything that needs
    /// it is hidden.
    pub xsave: bool,
    /// State components a guest may enable in XCR0 (x87 and SSE are always allowed).
    pub xcr0_allowed: u64,
    /// The vCPU's current XCR0 (sizes reported in leaf 0xd depend on it); 0 reads as
    /// x87 | SSE, the value at reset.
    pub guest_xcr0: u64,
    /// The vCPU's virtual CR4.OSXSAVE.
    pub guest_cr4_osxsave: bool,
    /// This request is the forced-emulation CPUID from guest kernel mode (see the module
    /// documentation on OSXSAVE); false for a CPUID that faulted through CPUID faulting or
    /// came from guest user mode.
    pub enlightened_kernel: bool,
    /// The hypervisor keeps CR4.FSGSBASE set while guests run and saves and restores the
    /// FS/GS bases on every switch, so `rdfsbase` and friends work in the guest.
    pub fsgsbase: bool,
    /// The hypervisor keeps IA32_TSC_AUX per vCPU (loaded on switch, written through the
    /// MSR policy), so `rdtscp` and `rdpid` return the guest's value.
    pub tsc_aux: bool,
    /// Expose the invariant TSC. Only for domains that never migrate: the next host's TSC
    /// may run at another rate (Xen masks it by default for the same reason).
    pub invariant_tsc: bool,
    /// The scale published in `vcpu_time_info` and its frequency, for leaf 0x40000003.
    pub tsc_scale: TscScale,
    pub tsc_khz: u32,
    /// The TSC is invariant on this host (leaf 0x40000003 eax bit 1, "reliable").
    pub host_tsc_reliable: bool,
    /// Times the domain was migrated or restored (leaf 0x40000003 edx).
    pub tsc_incarnation: u32,
    /// Bits needed to address every machine frame the domain may ever see, memory hotplug
    /// included (leaf 0x40000005 ebx[7:0]).
    pub machine_address_bits: u8,
}

impl CpuidPolicy {
    /// A policy with every optional feature off, for vCPU `vcpu_id`.
    pub const fn minimal(vcpu_id: u32) -> Self {
        Self {
            vcpu_id,
            xsave: false,
            xcr0_allowed: xcr0::X87 | xcr0::SSE,
            guest_xcr0: 0,
            guest_cr4_osxsave: false,
            enlightened_kernel: true,
            fsgsbase: false,
            tsc_aux: false,
            invariant_tsc: false,
            tsc_scale: TscScale { mul: 0, shift: 0 },
            tsc_khz: 0,
            host_tsc_reliable: false,
            tsc_incarnation: 0,
            machine_address_bits: 52,
        }
    }

    /// The XCR0 components the guest may use: what it is allowed, what the host offers.
    fn xcr0_offered(&self, host_xcr0: u64) -> u64 {
        if !self.xsave {
            return 0;
        }
        (self.xcr0_allowed | xcr0::X87 | xcr0::SSE) & host_xcr0
    }
}

const fn bit(n: u32) -> u32 {
    1 << n
}

/// CPUID.1:EDX offered: FPU(0), DE(2), TSC(4), MSR(5), PAE(6), CX8(8), CMOV(15), PAT(16),
/// CLFLUSH(19), MMX(23), FXSR(24), SSE(25), SSE2(26), SS(27).
///
/// Hidden, with the reason:
/// - VME(1), PSE(3), PSE36(17), PGE(13): paging and v8086 features of a ring-0 kernel; a
///   PV kernel runs in ring 3 on 4 KiB pages under the hypervisor's CR4 (Linux's
///   `xen_write_cr4` drops PGE/PSE itself). Xen: `S` (HVM only).
/// - MCE(7), MCA(14): machine checks belong to the hypervisor, which owns the hardware;
///   there is no virtual MCE bank for a guest, so Linux must not read MCG_CAP and banks.
///   (Xen offers them with its vMCE emulation.)
/// - APIC(9): a PV guest has no local APIC; interrupts are event channels and Linux's PV
///   APIC driver is a stub ("the APIC CPUID bit is disabled" on PV, `xen/apic.c`). Xen
///   leaves it visible to its hardware domain, which drives the IO-APICs; here the
///   hypervisor owns the interrupt controllers, so dom0 does not see it either.
/// - SEP(11): 64-bit PV guests make system calls with SYSCALL; the hypervisor does not
///   program IA32_SYSENTER_*, so a guest SYSENTER would not reach the guest.
/// - MTRR(12): PV guests cannot use MTRRs (Linux clears it itself; Xen hides it).
/// - DS(21), TM1(29), PBE(31): debug store and thermal monitoring are not virtualised.
/// - ACPI(22): thermal-control MSRs belong to the hypervisor (Linux clears it for domUs;
///   Xen offers it).
/// - HTT(28): topology, one thread per package.
pub const LEAF1_EDX_ALLOWED: u32 = bit(0)
    | bit(2)
    | bit(4)
    | bit(5)
    | bit(6)
    | bit(8)
    | bit(15)
    | bit(16)
    | bit(19)
    | bit(23)
    | bit(24)
    | bit(25)
    | bit(26)
    | bit(27);

/// CPUID.1:ECX offered: SSE3(0), PCLMULQDQ(1), SSSE3(9), FMA(12, AVX), CX16(13),
/// SSE4.1(19), SSE4.2(20), MOVBE(22), POPCNT(23), AESNI(25), XSAVE(26, policy),
/// AVX(28, XSAVE + YMM), F16C(29, AVX), RDRAND(30); OSXSAVE(27) and HYPERVISOR(31) are
/// computed.
///
/// Hidden, with the reason:
/// - DTES64(2), DSCPL(4), PDCM(15): debug store and perfmon capabilities; no vPMU.
/// - MONITOR(3): MONITOR/MWAIT are privileged and idling is the hypervisor's job (a PV
///   guest blocks with `sched_op`).
/// - VMX(5), SMX(6): no nested virtualisation, no TXT.
/// - EIST(7), TM2(8): power management belongs to the hypervisor.
/// - XTPR(14), X2APIC(21), TSC_DEADLINE(24): local-APIC features; no APIC (see APIC).
/// - PCID(17): the PV MMU does not manage PCIDs (Linux clears it for PV too).
/// - DCA(18): direct cache access is a platform feature.
pub const LEAF1_ECX_ALLOWED: u32 = bit(0)
    | bit(1)
    | bit(9)
    | bit(12)
    | bit(13)
    | bit(19)
    | bit(20)
    | bit(22)
    | bit(23)
    | bit(25)
    | bit(26)
    | bit(28)
    | bit(29)
    | bit(30);

const LEAF1_ECX_FMA: u32 = bit(12);
const LEAF1_ECX_XSAVE: u32 = bit(26);
const LEAF1_ECX_OSXSAVE: u32 = bit(27);
const LEAF1_ECX_AVX: u32 = bit(28);
const LEAF1_ECX_F16C: u32 = bit(29);
const LEAF1_ECX_HYPERVISOR: u32 = bit(31);

/// CPUID.7.0:EBX offered: FSGSBASE(0, policy), BMI1(3), AVX2(5, AVX), BMI2(8), ERMS(9),
/// AVX512F(16), AVX512DQ(17), RDSEED(18), ADX(19), AVX512_IFMA(21), CLFLUSHOPT(23),
/// CLWB(24), AVX512PF(26), AVX512ER(27), AVX512CD(28), SHA(29), AVX512BW(30),
/// AVX512VL(31) (AVX-512 ones: AVX2 + the AVX-512 XCR0 components). FDP_EXCP_ONLY(6) and
/// NO_FPU_SEL(13) describe the host FPU and pass through as they are.
///
/// Hidden, with the reason:
/// - TSC_ADJUST(1): the MSR is not virtualised.
/// - SGX(2), PQM(12), PQE(15), PROC_TRACE(25), MPX(14): platform and tracing features
///   not virtualised (MPX is also gone from current compilers and kernels).
/// - HLE(4), RTM(11): TSX is disabled by microcode on most parts after TAA; a guest seeing
///   it would expect MSR_TSX_CTRL handling, and it does not survive migration to a host
///   without it.
/// - SMEP(7), SMAP(20): a PV kernel runs in ring 3 with user-mode pages, so supervisor
///   protections cannot apply to it (Xen: `S`).
/// - INVPCID(10): privileged and PCID-related; the PV MMU does the flushing.
pub const LEAF7_EBX_ALLOWED: u32 = bit(0)
    | bit(3)
    | bit(5)
    | bit(8)
    | bit(9)
    | bit(16)
    | bit(17)
    | bit(18)
    | bit(19)
    | bit(21)
    | bit(23)
    | bit(24)
    | bit(26)
    | bit(27)
    | bit(28)
    | bit(29)
    | bit(30)
    | bit(31);
const LEAF7_EBX_HOST_PASSTHROUGH: u32 = bit(6) | bit(13);
const LEAF7_EBX_FSGSBASE: u32 = bit(0);
const LEAF7_EBX_AVX2: u32 = bit(5);
const LEAF7_EBX_AVX512F: u32 = bit(16);
/// AVX2 and everything that needs AVX2's 256-bit state.
const LEAF7_EBX_AVX: u32 = LEAF7_EBX_AVX2;
/// The AVX-512 family in 7.0:EBX, AVX512F included.
const LEAF7_EBX_AVX512: u32 =
    bit(16) | bit(17) | bit(21) | bit(26) | bit(27) | bit(28) | bit(30) | bit(31);

/// CPUID.7.0:ECX offered: PREFETCHWT1(0), AVX512_VBMI(1), AVX512_VBMI2(6), GFNI(8),
/// VAES(9, AVX), VPCLMULQDQ(10, AVX), AVX512_VNNI(11), AVX512_BITALG(12),
/// AVX512_VPOPCNTDQ(14), RDPID(22, policy `tsc_aux`), CLDEMOTE(25).
///
/// Hidden, with the reason:
/// - UMIP(2): the hypervisor's CR4 decides; a ring-3 kernel cannot use it (Xen: `S`).
/// - PKU(3), OSPKE(4): protection keys apply to user pages, which is every page of a PV
///   kernel; the PV MMU does not manage PKRU (Xen: `H`).
/// - CET_SS(7): shadow stacks need supervisor support from the hypervisor.
/// - LA57(16): PV guests use 4-level paging; the ABI's hypervisor hole is in the 4-level
///   layout.
/// - MOVDIRI(27), MOVDIR64B(28), ENQCMD(29): opt-in in Xen (`a`) or not offered; ENQCMD
///   needs PASID MSRs.
pub const LEAF7_ECX_ALLOWED: u32 = bit(0)
    | bit(1)
    | bit(6)
    | bit(8)
    | bit(9)
    | bit(10)
    | bit(11)
    | bit(12)
    | bit(14)
    | bit(22)
    | bit(25);
const LEAF7_ECX_RDPID: u32 = bit(22);
const LEAF7_ECX_AVX: u32 = bit(9) | bit(10);
const LEAF7_ECX_AVX512: u32 = bit(1) | bit(6) | bit(11) | bit(12) | bit(14);

/// CPUID.7.0:EDX offered: AVX512_4VNNIW(2), AVX512_4FMAPS(3), FSRM(4), MD_CLEAR(10),
/// SERIALIZE(14).
///
/// Hidden, with the reason:
/// - IBRSB(26), STIBP(27), SSBD(31), and L1D_FLUSH(28): they announce MSR_SPEC_CTRL,
///   MSR_PRED_CMD and MSR_FLUSH_CMD, which the MSR policy does not virtualise yet; Linux
///   then uses its software mitigations (retpolines and friends).
/// - ARCH_CAPS(29), CORE_CAPS(30): their MSRs are not emulated yet; Linux then assumes the
///   CPU is affected by everything and mitigates.
/// - RTM_ALWAYS_ABORT(11), TSX_FORCE_ABORT(13): describe RTM, which is hidden.
/// - SRBDS_CTRL(9), HYBRID(15), CET_IBT(20), AVX512_VP2INTERSECT(8), TSXLDTRK(16),
///   AVX512_FP16(23) and the AMX bits: not offered by Xen's default PV policy either
///   (control MSRs, host topology, supervisor CET, opt-in or unknown to the policy).
pub const LEAF7_EDX_ALLOWED: u32 = bit(2) | bit(3) | bit(4) | bit(10) | bit(14);
const LEAF7_EDX_AVX512: u32 = bit(2) | bit(3);

/// CPUID.7.1:EAX offered: AVX_VNNI(4, AVX), AVX512_BF16(5), FZRM(10), FSRS(11),
/// FSRCS(12). Others (LAM, FRED, AMX-FP16, ...) are not in the policy.
pub const LEAF7_1_EAX_ALLOWED: u32 = bit(4) | bit(5) | bit(10) | bit(11) | bit(12);
const LEAF7_1_EAX_AVX: u32 = bit(4);
const LEAF7_1_EAX_AVX512: u32 = bit(5);

/// CPUID.7.2:EDX offered: MCDT_NO(5). Hidden: PSFD(0), IPRED_CTRL(1), RRSBA_CTRL(2),
/// BHI_CTRL(4): bits of MSR_SPEC_CTRL, not virtualised yet.
pub const LEAF7_2_EDX_ALLOWED: u32 = bit(5);

/// CPUID.0xD.1:EAX offered: XSAVEOPT(0), XSAVEC(1), XGETBV1(2). Hidden: XSAVES(3), which
/// needs IA32_XSS and supervisor state management (Xen never offers it to PV guests).
pub const LEAFD_1_EAX_ALLOWED: u32 = bit(0) | bit(1) | bit(2);
const LEAFD_1_EAX_XSAVEC: u32 = bit(1);
/// Leaf 0xd sub-leaf n ecx bit 1: the component is 64-byte aligned in the compacted form.
const LEAFD_N_ECX_ALIGN64: u32 = bit(1);

/// CPUID.0x80000001:EDX offered: SYSCALL(11), NX(20), MMXEXT(22), FFXSR(25),
/// RDTSCP(27, policy `tsc_aux`), LM(29), 3DNOWEXT(30), 3DNOW(31), plus, on AMD, the copies
/// of leaf 1 EDX bits (`COMMON_1D`) as filtered there.
///
/// Hidden: PAGE1GB(26): PV guests cannot map superpages (the PV MMU accepts 4 KiB L1
/// mappings only).
pub const EXT1_EDX_ALLOWED: u32 =
    bit(11) | bit(20) | bit(22) | bit(25) | bit(27) | bit(29) | bit(30) | bit(31);
const EXT1_EDX_RDTSCP: u32 = bit(27);
/// Leaf 1 EDX bits AMD repeats in 0x80000001 EDX (FPU..APIC, MTRR..PSE36, MMX, FXSR).
const COMMON_1D: u32 = 0x0183_f3ff;

/// CPUID.0x80000001:ECX offered: LAHF_LM(0), ABM(5), SSE4A(6), MISALIGNSSE(7),
/// 3DNOWPREFETCH(8), XOP(11, AVX), FMA4(16, AVX), TBM(21).
///
/// Hidden, with the reason:
/// - CMP_LEGACY(1), TOPOEXT(22), NODEID_MSR(19), EXTAPIC(3): topology and APIC, see above.
/// - SVM(2), SKINIT(12): no nested virtualisation, no secure launch.
/// - CR8_LEGACY(4): a ring-0 feature.
/// - OSVW(9), IBS(10), WDT(13), LWP(15), MONITORX(29): MSR-backed or idle features not
///   virtualised.
/// - DBEXT(26): its address-mask MSRs are not emulated.
pub const EXT1_ECX_ALLOWED: u32 =
    bit(0) | bit(5) | bit(6) | bit(7) | bit(8) | bit(11) | bit(16) | bit(21);
const EXT1_ECX_AVX: u32 = bit(11) | bit(16);

/// CPUID.0x80000007:EDX: only ITSC(8), by policy. The rest is power management.
const EXT7_EDX_ITSC: u32 = bit(8);

/// CPUID.0x80000008:EBX offered: CLZERO(0), RSTR_FP_ERR_PTRS(2), SSB_NO(26), BTC_NO(29).
/// Hidden: IBPB(12), IBPB_RET(30) (MSR_PRED_CMD not virtualised), the SPEC_CTRL bits
/// (IBRS, STIBP, SSBD, PSFD...), WBNOINVD(9, privileged), AMD_PPIN(23).
pub const EXT8_EBX_ALLOWED: u32 = bit(0) | bit(2) | bit(26) | bit(29);

/// The CPUID a PV guest sees for `leaf`/`subleaf`, computed from the real CPU's answers
/// (`host`) and the guest's policy. Never panics, whatever the leaf.
pub fn guest_cpuid(
    leaf: u32,
    subleaf: u32,
    host: impl Fn(u32, u32) -> CpuidRegs,
    policy: &CpuidPolicy,
) -> CpuidRegs {
    match leaf {
        0..=MAX_BASIC_LEAF => basic_leaf(leaf, subleaf, &host, policy),
        0x4000_0000..=0x4fff_ffff => hypervisor_leaf(leaf, subleaf, policy),
        0x8000_0000..=MAX_EXTENDED_LEAF => extended_leaf(leaf, &host, policy),
        _ => ZERO,
    }
}

/// The feature set, reduced by the dependencies between features, as derived once per
/// request from the host's and the policy's inputs.
struct Features {
    xsave: bool,
    avx: bool,
    avx2: bool,
    avx512: bool,
    xcr0: u64,
}

impl Features {
    fn compute(host: &impl Fn(u32, u32) -> CpuidRegs, policy: &CpuidPolicy) -> Self {
        let host_max = host(0, 0)[EAX];
        let leaf1 = host(1, 0);
        let xsave = policy.xsave && host_max >= 0xd && leaf1[ECX] & LEAF1_ECX_XSAVE != 0;
        let host_xcr0 = if xsave {
            let d = host(0xd, 0);
            u64::from(d[EAX]) | (u64::from(d[EDX]) << 32)
        } else {
            0
        };
        let xcr0 = policy.xcr0_offered(host_xcr0);
        let avx = xsave && xcr0 & xcr0::YMM != 0 && leaf1[ECX] & LEAF1_ECX_AVX != 0;
        let leaf7 = if host_max >= 7 { host(7, 0) } else { ZERO };
        let avx2 = avx && leaf7[EBX] & LEAF7_EBX_AVX2 != 0;
        let avx512 =
            avx2 && xcr0 & xcr0::AVX512 == xcr0::AVX512 && leaf7[EBX] & LEAF7_EBX_AVX512F != 0;
        Self {
            xsave,
            avx,
            avx2,
            avx512,
            // Components only make sense with the features that use them.
            xcr0: xcr0
                & (xcr0::X87
                    | xcr0::SSE
                    | if avx { xcr0::YMM } else { 0 }
                    | if avx512 { xcr0::AVX512 } else { 0 }),
        }
    }
}

fn basic_leaf(
    leaf: u32,
    subleaf: u32,
    host: &impl Fn(u32, u32) -> CpuidRegs,
    policy: &CpuidPolicy,
) -> CpuidRegs {
    let host_max = host(0, 0)[EAX];
    if leaf > host_max {
        return ZERO;
    }
    let f = Features::compute(host, policy);
    match leaf {
        0 => {
            let mut r = host(0, 0);
            r[EAX] = host_max.min(MAX_BASIC_LEAF);
            r
        }
        1 => {
            let h = host(1, 0);
            let mut ecx = h[ECX] & LEAF1_ECX_ALLOWED;
            if !f.xsave {
                ecx &= !LEAF1_ECX_XSAVE;
            }
            if !f.avx {
                ecx &= !(LEAF1_ECX_AVX | LEAF1_ECX_FMA | LEAF1_ECX_F16C);
            }
            if f.xsave && (policy.guest_cr4_osxsave || policy.enlightened_kernel) {
                ecx |= LEAF1_ECX_OSXSAVE;
            }
            ecx |= LEAF1_ECX_HYPERVISOR;
            // ebx: brand index and CLFLUSH line size stay; one logical processor per
            // package; the vCPU id as initial APIC id.
            let ebx = (h[EBX] & 0x0000_ffff) | (1 << 16) | ((policy.vcpu_id & 0xff) << 24);
            // eax: family/model/stepping, without Intel's processor-type field.
            [h[EAX] & 0x0fff_0fff, ebx, ecx, h[EDX] & LEAF1_EDX_ALLOWED]
        }
        // Cache and TLB descriptors describe the real caches; they stay.
        2 => host(2, 0),
        4 => {
            let h = host(4, subleaf);
            // Cache type 0 ends the list; reserved or unknown types end it too.
            if !(1..=3).contains(&(h[EAX] & 0x1f)) {
                return ZERO;
            }
            // Keep type, level, self-init and fully-associative (bits 0..=9); zero the
            // sharing counts (bits 14..=31): one core, one thread per package. edx keeps
            // its three defined bits.
            [h[EAX] & 0x3ff, h[EBX], h[ECX], h[EDX] & 0x7]
        }
        7 => leaf7(subleaf, host, policy, &f),
        0xd => xsave_leaf(subleaf, host, policy, &f),
        // 3: processor serial number; 5: MONITOR/MWAIT; 6: thermal and power; 8: reserved;
        // 9: DCA; 0xa: perfmon (no vPMU); 0xb: extended topology (one package per vCPU;
        // Linux masks it on PV anyway); 0xc: reserved.
        _ => ZERO,
    }
}

fn leaf7(
    subleaf: u32,
    host: &impl Fn(u32, u32) -> CpuidRegs,
    policy: &CpuidPolicy,
    f: &Features,
) -> CpuidRegs {
    let host_max_sub = host(7, 0)[EAX];
    let max_sub = host_max_sub.min(MAX_LEAF7_SUBLEAF);
    if subleaf > max_sub {
        return ZERO;
    }
    let h = host(7, subleaf);
    match subleaf {
        0 => {
            let mut ebx = h[EBX] & LEAF7_EBX_ALLOWED;
            if !policy.fsgsbase {
                ebx &= !LEAF7_EBX_FSGSBASE;
            }
            if !f.avx2 {
                ebx &= !LEAF7_EBX_AVX;
            }
            if !f.avx512 {
                ebx &= !LEAF7_EBX_AVX512;
            }
            ebx |= h[EBX] & LEAF7_EBX_HOST_PASSTHROUGH;
            let mut ecx = h[ECX] & LEAF7_ECX_ALLOWED;
            if !policy.tsc_aux {
                ecx &= !LEAF7_ECX_RDPID;
            }
            if !f.avx {
                ecx &= !LEAF7_ECX_AVX;
            }
            if !f.avx512 {
                ecx &= !LEAF7_ECX_AVX512;
            }
            let mut edx = h[EDX] & LEAF7_EDX_ALLOWED;
            if !f.avx512 {
                edx &= !LEAF7_EDX_AVX512;
            }
            [max_sub, ebx, ecx, edx]
        }
        1 => {
            let mut eax = h[EAX] & LEAF7_1_EAX_ALLOWED;
            if !f.avx {
                eax &= !LEAF7_1_EAX_AVX;
            }
            if !f.avx512 {
                eax &= !LEAF7_1_EAX_AVX512;
            }
            [eax, 0, 0, 0]
        }
        _ => [0, 0, 0, h[EDX] & LEAF7_2_EDX_ALLOWED],
    }
}

/// The XSAVE area size, standard form, for the components in `xcr0` (from the host's
/// per-component offsets and sizes).
fn xsave_size_standard(xcr0: u64, host: &impl Fn(u32, u32) -> CpuidRegs) -> u32 {
    (2..63)
        .filter(|i| xcr0 & (1 << i) != 0)
        .map(|i| {
            let c = host(0xd, i);
            c[EBX].saturating_add(c[EAX])
        })
        .fold(XSAVE_LEGACY_AND_HEADER, u32::max)
}

/// The XSAVE area size, compacted form (XSAVEC), for the components in `xcr0`.
fn xsave_size_compacted(xcr0: u64, host: &impl Fn(u32, u32) -> CpuidRegs) -> u32 {
    (2..63)
        .filter(|i| xcr0 & (1 << i) != 0)
        .fold(XSAVE_LEGACY_AND_HEADER, |size, i| {
            let c = host(0xd, i);
            let start = if c[ECX] & LEAFD_N_ECX_ALIGN64 != 0 {
                size.saturating_add(63) & !63
            } else {
                size
            };
            start.saturating_add(c[EAX])
        })
}

fn xsave_leaf(
    subleaf: u32,
    host: &impl Fn(u32, u32) -> CpuidRegs,
    policy: &CpuidPolicy,
    f: &Features,
) -> CpuidRegs {
    if !f.xsave {
        return ZERO;
    }
    let guest_xcr0 = if policy.guest_xcr0 == 0 {
        xcr0::X87 | xcr0::SSE
    } else {
        policy.guest_xcr0 & f.xcr0
    };
    match subleaf {
        0 => [
            f.xcr0 as u32,
            xsave_size_standard(guest_xcr0, host),
            xsave_size_standard(f.xcr0, host),
            (f.xcr0 >> 32) as u32,
        ],
        1 => {
            let eax = host(0xd, 1)[EAX] & LEAFD_1_EAX_ALLOWED;
            // Linux (5.19+) sizes its XSAVEC buffer from ebx, so with XSAVEC it must hold
            // the compacted size for the current XCR0 (no XSS state: XSAVES is hidden).
            let ebx = if eax & LEAFD_1_EAX_XSAVEC != 0 {
                xsave_size_compacted(guest_xcr0, host)
            } else {
                0
            };
            [eax, ebx, 0, 0]
        }
        2..=62 if f.xcr0 & (1 << subleaf) != 0 => {
            let h = host(0xd, subleaf);
            let xsavec = host(0xd, 1)[EAX] & LEAFD_1_EAX_ALLOWED & LEAFD_1_EAX_XSAVEC != 0;
            // ecx: bit 0 (supervisor state) is never set for XCR0 components; the
            // alignment bit only means something with XSAVEC.
            let ecx = if xsavec {
                h[ECX] & LEAFD_N_ECX_ALIGN64
            } else {
                0
            };
            [h[EAX], h[EBX], ecx, 0]
        }
        _ => ZERO,
    }
}

fn hypervisor_leaf(leaf: u32, subleaf: u32, policy: &CpuidPolicy) -> CpuidRegs {
    let Some(index) = leaf.checked_sub(XEN_CPUID_FIRST_LEAF) else {
        return ZERO;
    };
    match index {
        XEN_CPUID_LEAF_BASE => [
            XEN_CPUID_FIRST_LEAF + XEN_CPUID_MAX_NUM_LEAVES,
            XEN_CPUID_SIGNATURE_EBX,
            XEN_CPUID_SIGNATURE_ECX,
            XEN_CPUID_SIGNATURE_EDX,
        ],
        XEN_CPUID_LEAF_VERSION => [XEN_VERSION, 0, 0, 0],
        // One hypercall page, installed by writing its frame to the MSR in ebx. The PV MMU
        // implements MMU_PT_UPDATE_PRESERVE_AD (Linux requires it).
        XEN_CPUID_LEAF_HYPERCALL => [
            1,
            HYPERCALL_PAGE_MSR,
            XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD,
            0,
        ],
        XEN_CPUID_LEAF_TIME => match subleaf {
            // eax: bit 0 TSC emulated (never), bit 1 host TSC reliable, bit 2 RDTSCP
            // available; ebx: TSC mode; ecx: guest TSC kHz; edx: incarnation.
            0 => [
                (u32::from(policy.host_tsc_reliable) << 1) | (u32::from(policy.tsc_aux) << 2),
                TSC_MODE_NEVER_EMULATE,
                policy.tsc_khz,
                policy.tsc_incarnation,
            ],
            // The TSC offset (none: guests see the host TSC) and the ns scale, its shift
            // sign-extended to 32 bits.
            1 => [
                0,
                0,
                policy.tsc_scale.mul,
                i32::from(policy.tsc_scale.shift) as u32,
            ],
            // The host TSC frequency: the same TSC.
            2 => [policy.tsc_khz, 0, 0, 0],
            _ => ZERO,
        },
        // HVM features: nothing applies to a PV guest.
        XEN_CPUID_LEAF_HVM => ZERO,
        // PV parameters: eax = largest sub-leaf (0), ebx = machine address width.
        XEN_CPUID_LEAF_PV if subleaf == 0 => [
            0,
            u32::from(policy.machine_address_bits) & XEN_CPUID_MACHINE_ADDRESS_WIDTH_MASK,
            0,
            0,
        ],
        _ => ZERO,
    }
}

fn extended_leaf(
    leaf: u32,
    host: &impl Fn(u32, u32) -> CpuidRegs,
    policy: &CpuidPolicy,
) -> CpuidRegs {
    let host_max = host(0x8000_0000, 0)[EAX];
    if !(0x8000_0000..=0x8000_ffff).contains(&host_max) || leaf > host_max {
        return ZERO;
    }
    match leaf {
        0x8000_0000 => {
            let mut r = host(0x8000_0000, 0);
            r[EAX] = host_max.min(MAX_EXTENDED_LEAF);
            r
        }
        0x8000_0001 => {
            let f = Features::compute(host, policy);
            let h = host(0x8000_0001, 0);
            let mut ecx = h[ECX] & EXT1_ECX_ALLOWED;
            if !f.avx {
                ecx &= !EXT1_ECX_AVX;
            }
            let mut edx = h[EDX] & EXT1_EDX_ALLOWED;
            if !policy.tsc_aux {
                edx &= !EXT1_EDX_RDTSCP;
            }
            // AMD repeats leaf 1's common bits here; they follow leaf 1's filtering. On
            // Intel the host has none of them set, so nothing is added.
            let leaf1_edx = basic_leaf(1, 0, host, policy)[EDX];
            edx |= leaf1_edx & COMMON_1D & h[EDX];
            // ebx: AMD brand id; bits 16..=23 are reserved.
            [h[EAX], h[EBX] & 0xff00_ffff, ecx, edx]
        }
        // Brand string, L1 and L2/L3 cache descriptions: the real ones.
        0x8000_0002..=0x8000_0006 => host(leaf, 0),
        0x8000_0007 => {
            let itsc = host(leaf, 0)[EDX] & EXT7_EDX_ITSC;
            [0, 0, 0, if policy.invariant_tsc { itsc } else { 0 }]
        }
        0x8000_0008 => {
            let h = host(leaf, 0);
            // eax: physical and linear address bits (GuestMaxPhysAddr, bits 16..=23,
            // is an SVM detail); ecx: core count and APIC id size, zero for one core per
            // package.
            [h[EAX] & 0xffff, h[EBX] & EXT8_EBX_ALLOWED, 0, 0]
        }
        _ => ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that has every feature bit set, with XSAVE component geometry like a recent
    /// Intel part, 0xd basic leaves as the maximum reported beyond our clamp.
    fn rich_host(leaf: u32, subleaf: u32) -> CpuidRegs {
        match (leaf, subleaf) {
            (0, _) => [0x20, 0x756e_6547, 0x6c65_746e, 0x4965_6e69], // "GenuineIntel"
            (1, _) => [0xf00f_06a1, 0xff22_1234, u32::MAX, u32::MAX],
            (2, _) => [0x00fe_ff01, 0, 0, 0x00c3_0000],
            (4, 0) => [0xfc00_4121, 0x01c0_003f, 0x3f, 0xffff_fff1],
            (4, 1) => [0xfc00_4122, 0x01c0_003f, 0x3f, 0],
            (4, _) => [0, 0, 0, 0],
            (7, 0) => [3, u32::MAX, u32::MAX, u32::MAX],
            (7, _) => [u32::MAX, u32::MAX, u32::MAX, u32::MAX],
            (0xd, 0) => [0x2e7, 0x440, 0xa88, 0],
            (0xd, 1) => [0xf, 0x9a0, 0x1900, 0],
            (0xd, 2) => [256, 576, 0, 0],
            (0xd, 5) => [64, 1088, 2, 0],
            (0xd, 6) => [512, 1152, 2, 0],
            (0xd, 7) => [1024, 1664, 2, 0],
            (0xd, 9) => [8, 2688, 0, 0],
            (0xd, _) => [0, 0, 0, 0],
            (0x8000_0000, _) => [0x8000_0021, 0, 0, 0],
            (0x8000_0004, _) => [0x6e49_2029, 0x2052_4554, 0, 0],
            (0x8000_0008, _) => [0x0030_3027, u32::MAX, 0x0000_7007, u32::MAX],
            (l, _) if l >= 0x8000_0000 => [u32::MAX; 4],
            _ => [0x1111_1111, 0x2222_2222, 0x3333_3333, 0x4444_4444],
        }
    }

    fn policy() -> CpuidPolicy {
        CpuidPolicy {
            xsave: true,
            xcr0_allowed: xcr0::X87 | xcr0::SSE | xcr0::YMM | xcr0::AVX512,
            tsc_scale: TscScale::from_hz(2_500_000_000),
            tsc_khz: 2_500_000,
            host_tsc_reliable: true,
            tsc_incarnation: 3,
            machine_address_bits: 40,
            ..CpuidPolicy::minimal(5)
        }
    }

    fn ask(leaf: u32, subleaf: u32, p: &CpuidPolicy) -> CpuidRegs {
        guest_cpuid(leaf, subleaf, rich_host, p)
    }

    #[test]
    fn leaf0_clamps_the_maximum_and_keeps_the_vendor() {
        let r = ask(0, 0, &policy());
        assert_eq!(r, [MAX_BASIC_LEAF, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]);
        let small = |l: u32, s: u32| {
            if l == 0 {
                [7, 1, 2, 3]
            } else {
                rich_host(l, s)
            }
        };
        assert_eq!(guest_cpuid(0, 0, small, &policy())[EAX], 7);
        assert_eq!(guest_cpuid(0xd, 0, small, &policy()), ZERO);
    }

    #[test]
    fn leaf1_masks_and_topology() {
        let r = ask(1, 0, &policy());
        assert_eq!(r[EAX], 0x000f_06a1, "processor type dropped");
        assert_eq!(r[EBX], 0x0501_1234, "APIC id = vCPU, one logical CPU");
        assert_eq!(r[EDX], LEAF1_EDX_ALLOWED);
        for hidden in [1, 3, 7, 9, 11, 12, 13, 14, 17, 21, 22, 28, 29, 31] {
            assert_eq!(r[EDX] & bit(hidden), 0, "edx bit {hidden}");
        }
        assert_eq!(
            r[ECX],
            LEAF1_ECX_ALLOWED | LEAF1_ECX_OSXSAVE | LEAF1_ECX_HYPERVISOR
        );
        for hidden in [2, 3, 4, 5, 6, 7, 8, 14, 15, 17, 18, 21, 24] {
            assert_eq!(r[ECX] & bit(hidden), 0, "ecx bit {hidden}");
        }
        let r = ask(1, 0, &CpuidPolicy::minimal(300));
        assert_eq!(r[EBX] >> 24, 300 & 0xff);
    }

    #[test]
    fn hypervisor_bit_is_set_even_on_bare_hosts() {
        let bare = |l: u32, _s: u32| if l == 0 { [1, 0, 0, 0] } else { ZERO };
        let r = guest_cpuid(1, 0, bare, &CpuidPolicy::minimal(0));
        assert_eq!(r[ECX], LEAF1_ECX_HYPERVISOR);
        assert_eq!(r[EDX], 0);
    }

    #[test]
    fn osxsave_follows_the_pv_rule() {
        let mut p = policy();
        p.enlightened_kernel = false;
        assert_eq!(ask(1, 0, &p)[ECX] & LEAF1_ECX_OSXSAVE, 0, "user, CR4 clear");
        p.guest_cr4_osxsave = true;
        assert_ne!(ask(1, 0, &p)[ECX] & LEAF1_ECX_OSXSAVE, 0, "CR4 set");
        p.guest_cr4_osxsave = false;
        p.enlightened_kernel = true;
        assert_ne!(
            ask(1, 0, &p)[ECX] & LEAF1_ECX_OSXSAVE,
            0,
            "enlightened kernel"
        );
        p.xsave = false;
        p.guest_cr4_osxsave = true;
        let r = ask(1, 0, &p);
        assert_eq!(
            r[ECX] & (LEAF1_ECX_OSXSAVE | LEAF1_ECX_XSAVE),
            0,
            "no XSAVE"
        );
    }

    #[test]
    fn no_xsave_hides_the_avx_family_and_leaf_d() {
        let p = CpuidPolicy::minimal(0);
        let r1 = ask(1, 0, &p);
        assert_eq!(
            r1[ECX] & (LEAF1_ECX_XSAVE | LEAF1_ECX_AVX | LEAF1_ECX_FMA | LEAF1_ECX_F16C),
            0
        );
        let r7 = ask(7, 0, &p);
        assert_eq!(r7[EBX] & (LEAF7_EBX_AVX | LEAF7_EBX_AVX512), 0);
        assert_eq!(r7[ECX] & (LEAF7_ECX_AVX | LEAF7_ECX_AVX512), 0);
        assert_eq!(r7[EDX] & LEAF7_EDX_AVX512, 0);
        assert_eq!(
            ask(7, 1, &p)[EAX] & (LEAF7_1_EAX_AVX | LEAF7_1_EAX_AVX512),
            0
        );
        assert_eq!(ask(0x8000_0001, 0, &p)[ECX] & EXT1_ECX_AVX, 0);
        for sub in 0..4 {
            assert_eq!(ask(0xd, sub, &p), ZERO);
        }
        // The SSE family stays.
        assert_ne!(r1[ECX] & bit(20), 0);
    }

    #[test]
    fn avx512_needs_its_xcr0_components() {
        let mut p = policy();
        p.xcr0_allowed = xcr0::X87 | xcr0::SSE | xcr0::YMM;
        let r7 = ask(7, 0, &p);
        assert_ne!(r7[EBX] & LEAF7_EBX_AVX2, 0);
        assert_eq!(r7[EBX] & LEAF7_EBX_AVX512, 0);
        assert_eq!(r7[ECX] & LEAF7_ECX_AVX512, 0);
        assert_ne!(r7[ECX] & LEAF7_ECX_AVX, 0);
        assert_eq!(ask(0xd, 0, &p)[EAX], 0x7);
        assert_eq!(ask(0xd, 5, &p), ZERO);
    }

    #[test]
    fn leaf4_is_one_core_one_thread() {
        let p = policy();
        let r = ask(4, 0, &p);
        assert_eq!(r, [0x121, 0x01c0_003f, 0x3f, 0x1]);
        assert_eq!(ask(4, 1, &p)[EAX], 0x122);
        assert_eq!(ask(4, 2, &p), ZERO);
        assert_eq!(ask(4, 1000, &p), ZERO);
    }

    #[test]
    fn leaf7_masks() {
        let p = policy();
        let r = ask(7, 0, &p);
        assert_eq!(r[EAX], MAX_LEAF7_SUBLEAF);
        assert_eq!(
            r[EBX],
            (LEAF7_EBX_ALLOWED & !LEAF7_EBX_FSGSBASE) | LEAF7_EBX_HOST_PASSTHROUGH
        );
        for hidden in [0, 1, 2, 4, 7, 10, 11, 12, 14, 15, 20, 25] {
            assert_eq!(r[EBX] & bit(hidden), 0, "7.0 ebx bit {hidden}");
        }
        assert_eq!(r[ECX], LEAF7_ECX_ALLOWED & !LEAF7_ECX_RDPID);
        for hidden in [2, 3, 4, 7, 16, 22, 27, 28, 29, 30] {
            assert_eq!(r[ECX] & bit(hidden), 0, "7.0 ecx bit {hidden}");
        }
        assert_eq!(r[EDX], LEAF7_EDX_ALLOWED);
        for hidden in [8, 9, 11, 13, 15, 16, 20, 26, 27, 28, 29, 30, 31] {
            assert_eq!(r[EDX] & bit(hidden), 0, "7.0 edx bit {hidden}");
        }
        assert_eq!(ask(7, 1, &p), [LEAF7_1_EAX_ALLOWED, 0, 0, 0]);
        assert_eq!(ask(7, 2, &p), [0, 0, 0, LEAF7_2_EDX_ALLOWED]);
        assert_eq!(ask(7, 3, &p), ZERO);

        let mut opt_in = p;
        opt_in.fsgsbase = true;
        opt_in.tsc_aux = true;
        let r = ask(7, 0, &opt_in);
        assert_ne!(r[EBX] & LEAF7_EBX_FSGSBASE, 0);
        assert_ne!(r[ECX] & LEAF7_ECX_RDPID, 0);
    }

    #[test]
    fn xsave_leaf_sizes() {
        let mut p = policy();
        // Offered: x87, SSE, YMM, AVX-512 (host also has PKRU, which is not offered).
        let r = ask(0xd, 0, &p);
        assert_eq!(r[EAX], 0xe7);
        assert_eq!(r[EDX], 0);
        assert_eq!(r[EBX], 576, "XCR0 at reset: x87 | SSE");
        assert_eq!(r[ECX], 1664 + 1024, "end of Hi16_ZMM");
        p.guest_xcr0 = xcr0::X87 | xcr0::SSE | xcr0::YMM;
        assert_eq!(ask(0xd, 0, &p)[EBX], 576 + 256);
        // A guest XCR0 with bits it was not offered counts only the offered ones.
        p.guest_xcr0 = xcr0::X87 | xcr0::SSE | xcr0::YMM | xcr0::PKRU;
        assert_eq!(ask(0xd, 0, &p)[EBX], 576 + 256);

        // Sub-leaf 1: no XSAVES; compacted size for the current XCR0.
        p.guest_xcr0 = xcr0::X87 | xcr0::SSE | xcr0::YMM | xcr0::AVX512;
        let r = ask(0xd, 1, &p);
        assert_eq!(r[EAX], LEAFD_1_EAX_ALLOWED);
        // 576 + 256 (YMM) = 832, opmask aligned to 64 -> 832 + 64 = 896, ZMM_Hi256 at 896
        // -> 1408, Hi16_ZMM at 1408 -> 2432.
        assert_eq!(r[EBX], 2432);
        assert_eq!((r[ECX], r[EDX]), (0, 0));

        assert_eq!(ask(0xd, 2, &p), [256, 576, 0, 0]);
        assert_eq!(ask(0xd, 5, &p), [64, 1088, 2, 0]);
        assert_eq!(ask(0xd, 9, &p), ZERO, "PKRU not offered");
        assert_eq!(ask(0xd, 63, &p), ZERO);
        assert_eq!(ask(0xd, u32::MAX, &p), ZERO);
    }

    #[test]
    fn hidden_basic_leaves_are_zero() {
        let p = policy();
        for leaf in [3, 5, 6, 8, 9, 0xa, 0xb, 0xc, 0xe, 0x14, 0x15, 0x1f] {
            assert_eq!(ask(leaf, 0, &p), ZERO, "leaf {leaf:#x}");
        }
        assert_eq!(ask(2, 0, &p), rich_host(2, 0));
    }

    #[test]
    fn hypervisor_leaves() {
        let p = policy();
        let r = ask(0x4000_0000, 0, &p);
        assert_eq!(r[EAX], 0x4000_0005);
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&r[EBX].to_le_bytes());
        sig[4..8].copy_from_slice(&r[ECX].to_le_bytes());
        sig[8..].copy_from_slice(&r[EDX].to_le_bytes());
        assert_eq!(&sig, b"XenVMMXenVMM");

        assert_eq!(ask(0x4000_0001, 0, &p), [0x0004_0011, 0, 0, 0]);
        assert_eq!(
            ask(0x4000_0002, 0, &p),
            [1, 0x4000_0000, XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD, 0]
        );
        assert_eq!(
            ask(0x4000_0003, 0, &p),
            [0b010, TSC_MODE_NEVER_EMULATE, 2_500_000, 3]
        );
        let scale = TscScale::from_hz(2_500_000_000);
        let r = ask(0x4000_0003, 1, &p);
        assert_eq!(r, [0, 0, scale.mul, i32::from(scale.shift) as u32]);
        assert_eq!(ask(0x4000_0003, 2, &p), [2_500_000, 0, 0, 0]);
        assert_eq!(ask(0x4000_0003, 3, &p), ZERO);
        assert_eq!(ask(0x4000_0004, 0, &p), ZERO, "HVM leaf is empty for PV");
        assert_eq!(ask(0x4000_0005, 0, &p), [0, 40, 0, 0]);
        assert_eq!(ask(0x4000_0005, 1, &p), ZERO);
        for leaf in [
            0x4000_0006,
            0x4000_00ff,
            0x4000_0100,
            0x4000_0101,
            0x4fff_ffff,
        ] {
            assert_eq!(ask(leaf, 0, &p), ZERO, "leaf {leaf:#x}");
        }
    }

    #[test]
    fn negative_tsc_shift_is_sign_extended() {
        let mut p = policy();
        p.tsc_scale = TscScale::from_hz(10_000_000_000);
        assert_eq!(ask(0x4000_0003, 1, &p)[EDX], (-3i32) as u32);
    }

    #[test]
    fn extended_leaves() {
        let p = policy();
        assert_eq!(ask(0x8000_0000, 0, &p)[EAX], MAX_EXTENDED_LEAF);
        let r = ask(0x8000_0001, 0, &p);
        assert_eq!(r[ECX], EXT1_ECX_ALLOWED);
        for hidden in [1, 2, 3, 4, 9, 10, 12, 13, 15, 19, 22, 26, 29] {
            assert_eq!(r[ECX] & bit(hidden), 0, "ext1 ecx bit {hidden}");
        }
        // The host sets every edx bit (as AMD would in the common positions): they follow
        // leaf 1's filtering; PAGE1GB and RDTSCP (no TSC_AUX) are hidden.
        assert_eq!(
            r[EDX],
            (EXT1_EDX_ALLOWED & !EXT1_EDX_RDTSCP) | (LEAF1_EDX_ALLOWED & COMMON_1D)
        );
        assert_eq!(r[EDX] & bit(26), 0);
        assert_eq!(r[EDX] & bit(9), 0, "no APIC in the AMD copy either");
        assert_eq!(r[EBX], 0xff00_ffff);

        let mut with_aux = p;
        with_aux.tsc_aux = true;
        assert_ne!(ask(0x8000_0001, 0, &with_aux)[EDX] & EXT1_EDX_RDTSCP, 0);

        assert_eq!(ask(0x8000_0004, 0, &p), rich_host(0x8000_0004, 0));
        assert_eq!(ask(0x8000_0007, 0, &p), ZERO);
        let mut itsc = p;
        itsc.invariant_tsc = true;
        assert_eq!(ask(0x8000_0007, 0, &itsc), [0, 0, 0, EXT7_EDX_ITSC]);
        assert_eq!(ask(0x8000_0008, 0, &p), [0x3027, EXT8_EBX_ALLOWED, 0, 0]);
        for leaf in [
            0x8000_0009,
            0x8000_000a,
            0x8000_001e,
            0x8000_0021,
            0x8fff_ffff,
        ] {
            assert_eq!(ask(leaf, 0, &p), ZERO, "leaf {leaf:#x}");
        }
    }

    #[test]
    fn intel_style_extended_leaf_adds_no_common_bits() {
        let intel = |l: u32, s: u32| match l {
            0x8000_0001 => [0, 0, 0x121, 0x2c10_0800],
            _ => rich_host(l, s),
        };
        let r = guest_cpuid(0x8000_0001, 0, intel, &policy());
        // LAHF_LM, ABM, PREFETCHW; SYSCALL, NX, LM; RDTSCP and PAGE1GB hidden.
        assert_eq!(r, [0, 0, 0x121, 0x2010_0800]);
    }

    #[test]
    fn hosts_without_extended_leaves() {
        let old = |l: u32, s: u32| {
            if l >= 0x8000_0000 {
                [0, 0, 0, 0]
            } else {
                rich_host(l, s)
            }
        };
        for leaf in [0x8000_0000, 0x8000_0001, 0x8000_0008] {
            assert_eq!(guest_cpuid(leaf, 0, old, &policy()), ZERO);
        }
    }

    #[test]
    fn never_panics_on_any_leaf() {
        let p = policy();
        for leaf in (0..=u32::MAX).step_by(0x0fff_fff1) {
            for sub in [0, 1, 63, 64, u32::MAX] {
                let _ = ask(leaf, sub, &p);
            }
        }
        let garbage = |_: u32, _: u32| [u32::MAX; 4];
        for leaf in [0, 1, 4, 7, 0xd, 0x8000_0000, 0x8000_0001, 0x8000_0008] {
            for sub in [0, 1, 2, 62, 63] {
                let _ = guest_cpuid(leaf, sub, garbage, &p);
            }
        }
    }
}
