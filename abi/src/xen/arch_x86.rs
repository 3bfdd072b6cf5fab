//! The x86-64 part of the ABI (`arch-x86/xen.h`, `arch-x86/xen-x86_64.h`): the fixed
//! virtual layout, flat selectors, trap table entries, the register frame, the full vCPU
//! context, the arch parts of `vcpu_info`/`shared_info`, `iret` and `set_segment_base`,
//! plus the page-table entry bits the PV MMU validates (layout given in `xen.h`'s
//! `mmu_update` description, the x86 architectural bits).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{XenPfn, XenUlong};

// ---------------------------------------------------------------------------------------
// Virtual layout (`xen-x86_64.h`).

/// Start of the range reserved for the hypervisor in every 64-bit guest address space
/// (PML4 slot 256).
pub const HYPERVISOR_VIRT_START: u64 = 0xFFFF_8000_0000_0000;
/// End (exclusive) of the reserved range (PML4 slot 272).
pub const HYPERVISOR_VIRT_END: u64 = 0xFFFF_8800_0000_0000;
/// The read-only machine-to-phys table guests may read (one `u64` PFN per MFN).
pub const MACH2PHYS_VIRT_START: u64 = 0xFFFF_8000_0000_0000;
pub const MACH2PHYS_VIRT_END: u64 = 0xFFFF_8040_0000_0000;
/// Entries of the machine-to-phys table.
pub const MACH2PHYS_NR_ENTRIES: u64 = (MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START) >> 3;

/// The page-table base a guest gives (cr3 format) for a frame (`xen_pfn_to_cr3`).
pub const fn xen_pfn_to_cr3(pfn: XenPfn) -> u64 {
    pfn << 12
}

/// The frame of a cr3 value (`xen_cr3_to_pfn`).
pub const fn xen_cr3_to_pfn(cr3: u64) -> XenPfn {
    cr3 >> 12
}

// ---------------------------------------------------------------------------------------
// Segment selectors (`xen-x86_64.h`): flat segments in the hypervisor's part of every GDT.
// Guest kernels run in ring 3, so kernel and user selectors are the same.

/// GDT entry 260.
pub const FLAT_RING3_CS32: u16 = 0xe023;
/// GDT entry 262.
pub const FLAT_RING3_CS64: u16 = 0xe033;
/// GDT entry 261.
pub const FLAT_RING3_DS32: u16 = 0xe02b;
/// The null selector.
pub const FLAT_RING3_DS64: u16 = 0x0000;
pub const FLAT_RING3_SS32: u16 = 0xe02b;
pub const FLAT_RING3_SS64: u16 = 0xe02b;

pub const FLAT_KERNEL_DS64: u16 = FLAT_RING3_DS64;
pub const FLAT_KERNEL_DS32: u16 = FLAT_RING3_DS32;
pub const FLAT_KERNEL_DS: u16 = FLAT_KERNEL_DS64;
pub const FLAT_KERNEL_CS64: u16 = FLAT_RING3_CS64;
pub const FLAT_KERNEL_CS32: u16 = FLAT_RING3_CS32;
pub const FLAT_KERNEL_CS: u16 = FLAT_KERNEL_CS64;
pub const FLAT_KERNEL_SS64: u16 = FLAT_RING3_SS64;
pub const FLAT_KERNEL_SS32: u16 = FLAT_RING3_SS32;
pub const FLAT_KERNEL_SS: u16 = FLAT_KERNEL_SS64;
pub const FLAT_USER_DS64: u16 = FLAT_RING3_DS64;
pub const FLAT_USER_DS32: u16 = FLAT_RING3_DS32;
pub const FLAT_USER_DS: u16 = FLAT_USER_DS64;
pub const FLAT_USER_CS64: u16 = FLAT_RING3_CS64;
pub const FLAT_USER_CS32: u16 = FLAT_RING3_CS32;
pub const FLAT_USER_CS: u16 = FLAT_USER_CS64;
pub const FLAT_USER_SS64: u16 = FLAT_RING3_SS64;
pub const FLAT_USER_SS32: u16 = FLAT_RING3_SS32;
pub const FLAT_USER_SS: u16 = FLAT_USER_SS64;

/// First GDT page reserved for the hypervisor (`arch-x86/xen.h`); guests own the pages
/// (and entries) below it.
pub const FIRST_RESERVED_GDT_PAGE: usize = 14;
pub const FIRST_RESERVED_GDT_BYTE: usize = FIRST_RESERVED_GDT_PAGE * 4096;
pub const FIRST_RESERVED_GDT_ENTRY: usize = FIRST_RESERVED_GDT_BYTE / 8;

/// vCPUs with a `vcpu_info` slot in `shared_info` (`XEN_LEGACY_MAX_VCPUS`).
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;

/// `ud2; .ascii "xen"`: prefixed to an instruction (CPUID), asks the hypervisor to emulate
/// it (`XEN_EMULATE_PREFIX`, `arch-x86/xen.h`). PV kernels use it for CPUID.
pub const XEN_EMULATE_PREFIX: [u8; 5] = [0x0f, 0x0b, 0x78, 0x65, 0x6e];

// ---------------------------------------------------------------------------------------
// set_segment_base (`xen-x86_64.h`).

xen_enum! {
    /// `set_segment_base(which, base)` targets (`SEGBASE_*`).
    pub enum SegBase: u32 {
        Fs = 0,
        GsUser = 1,
        GsKernel = 2,
        /// Load the user `%gs` selector from `base[15:0]`.
        GsUserSel = 3,
    }
}

// ---------------------------------------------------------------------------------------
// vcpu_guest_context.flags (`arch-x86/xen.h`) and iret flags (`xen-x86_64.h`).

/// `fpu_ctxt` holds valid state.
pub const VGCF_I387_VALID: u64 = 1 << 0;
/// The vCPU is in guest-kernel mode.
pub const VGCF_IN_KERNEL: u64 = 1 << 2;
/// Entering the failsafe callback masks events.
pub const VGCF_FAILSAFE_DISABLES_EVENTS: u64 = 1 << 3;
/// Entering the syscall callback masks events.
pub const VGCF_SYSCALL_DISABLES_EVENTS: u64 = 1 << 4;
/// The vCPU is online.
pub const VGCF_ONLINE: u64 = 1 << 5;
/// `iret_context.flags`: return as from SYSCALL (restore rax, rip, rflags, rsp only; discard
/// r11, rcx, cs, ss).
pub const VGCF_IN_SYSCALL: u64 = 1 << 8;

// ---------------------------------------------------------------------------------------
// Trap table (`arch-x86/xen.h`).

/// `trap_info.flags` bits 0-1: the DPL a software `int` needs (`TI_GET_DPL`).
pub const TI_DPL_MASK: u8 = 3;
/// `trap_info.flags` bit 2: entering the handler masks events, like an interrupt gate
/// (`TI_GET_IF`).
pub const TI_IF: u8 = 1 << 2;

/// One virtual IDT entry for `set_trap_table` (`struct trap_info`); a table ends at an
/// entry whose `address` is 0.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct TrapInfo {
    pub vector: u8,
    /// DPL in bits 0-1, [`TI_IF`].
    pub flags: u8,
    pub cs: u16,
    pub _cpad0: u32,
    pub address: u64,
}

assert_layout!(
    TrapInfo,
    size = 16,
    align = 8,
    vector = 0,
    flags = 1,
    cs = 2,
    address = 8
);

impl TrapInfo {
    pub const fn dpl(&self) -> u8 {
        self.flags & TI_DPL_MASK
    }

    pub const fn masks_events(&self) -> bool {
        self.flags & TI_IF != 0
    }
}

// ---------------------------------------------------------------------------------------
// Registers (`xen-x86_64.h`).

/// A vCPU's general registers (`struct cpu_user_regs`), as saved on hypercall and exception
/// entry. `error_code` and `entry_vector` are hypervisor-private.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct CpuUserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub error_code: u32,
    pub entry_vector: u32,
    pub rip: u64,
    pub cs: u16,
    pub _pad0: [u16; 1],
    /// The event mask to restore; `rflags.IF == !saved_upcall_mask`.
    pub saved_upcall_mask: u8,
    pub _pad1: [u8; 3],
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u16,
    pub _pad2: [u16; 3],
    pub es: u16,
    pub _pad3: [u16; 3],
    pub ds: u16,
    pub _pad4: [u16; 3],
    pub fs: u16,
    pub _pad5: [u16; 3],
    pub gs: u16,
    pub _pad6: [u16; 3],
}

assert_layout!(
    CpuUserRegs,
    size = 200,
    align = 8,
    r15 = 0,
    r14 = 8,
    r13 = 16,
    r12 = 24,
    rbp = 32,
    rbx = 40,
    r11 = 48,
    r10 = 56,
    r9 = 64,
    r8 = 72,
    rax = 80,
    rcx = 88,
    rdx = 96,
    rsi = 104,
    rdi = 112,
    error_code = 120,
    entry_vector = 124,
    rip = 128,
    cs = 136,
    _pad0 = 138,
    saved_upcall_mask = 140,
    _pad1 = 141,
    rflags = 144,
    rsp = 152,
    ss = 160,
    _pad2 = 162,
    es = 168,
    _pad3 = 170,
    ds = 176,
    _pad4 = 178,
    fs = 184,
    _pad5 = 186,
    gs = 192,
    _pad6 = 194,
);

/// A vCPU's complete state (`struct vcpu_guest_context`, 64-bit layout), given to
/// `VCPUOP_initialise` and read/written by the toolstack.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VcpuGuestContext {
    /// FXSAVE image.
    pub fpu_ctxt: [u8; 512],
    /// `VGCF_*`.
    pub flags: u64,
    pub user_regs: CpuUserRegs,
    /// The virtual IDT.
    pub trap_ctxt: [TrapInfo; 256],
    /// LDT linear address and number of entries.
    pub ldt_base: u64,
    pub ldt_ents: u64,
    /// GDT machine frames and number of entries.
    pub gdt_frames: [u64; 16],
    pub gdt_ents: u64,
    /// The guest kernel's stack (the virtual TSS's SS1/SP1).
    pub kernel_ss: u64,
    pub kernel_sp: u64,
    /// CR0-CR7; `ctrlreg[3]` is the kernel and `ctrlreg[1]` the user page-table base, both
    /// in [`xen_pfn_to_cr3`] form.
    pub ctrlreg: [u64; 8],
    pub debugreg: [u64; 8],
    pub event_callback_eip: u64,
    pub failsafe_callback_eip: u64,
    pub syscall_callback_eip: u64,
    /// Bitmap of enabled `VMASST_TYPE_*`.
    pub vm_assist: u64,
    pub fs_base: u64,
    pub gs_base_kernel: u64,
    pub gs_base_user: u64,
}

assert_layout!(
    VcpuGuestContext,
    size = 5168,
    align = 8,
    fpu_ctxt = 0,
    flags = 512,
    user_regs = 520,
    trap_ctxt = 720,
    ldt_base = 4816,
    ldt_ents = 4824,
    gdt_frames = 4832,
    gdt_ents = 4960,
    kernel_ss = 4968,
    kernel_sp = 4976,
    ctrlreg = 4984,
    debugreg = 5048,
    event_callback_eip = 5112,
    failsafe_callback_eip = 5120,
    syscall_callback_eip = 5128,
    vm_assist = 5136,
    fs_base = 5144,
    gs_base_kernel = 5152,
    gs_base_user = 5160,
);

/// The arch part of `vcpu_info` (`struct arch_vcpu_info`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ArchVcpuInfo {
    /// The faulting address of the last page fault delivered to the guest.
    pub cr2: u64,
    pub pad: u64,
}

assert_layout!(ArchVcpuInfo, size = 16, align = 8, cr2 = 0, pad = 8);

/// The arch part of `shared_info` (`struct arch_shared_info`): where the guest publishes its
/// P2M for the toolstack (save, restore, migration).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ArchSharedInfo {
    /// Entries of the P2M.
    pub max_pfn: u64,
    /// Frame of the 3-level P2M tree's top list; 0 not set up, `!0` invalid (use
    /// `p2m_vaddr`).
    pub pfn_to_mfn_frame_list_list: XenPfn,
    /// `XEN_NMIREASON_*` bits.
    pub nmi_reason: u64,
    /// When non-zero, cr3 (in `xen_pfn_to_cr3` form) of the address space holding the
    /// linear P2M list at `p2m_vaddr`.
    pub p2m_cr3: u64,
    pub p2m_vaddr: u64,
    /// Odd while the guest changes the P2M mappings.
    pub p2m_generation: u64,
}

assert_layout!(
    ArchSharedInfo,
    size = 48,
    align = 8,
    max_pfn = 0,
    pfn_to_mfn_frame_list_list = 8,
    nmi_reason = 16,
    p2m_cr3 = 24,
    p2m_vaddr = 32,
    p2m_generation = 40,
);

/// The frame on the guest kernel stack that `iret` consumes (`struct iret_context`),
/// `rax` at the stack pointer.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct IretContext {
    pub rax: u64,
    pub r11: u64,
    pub rcx: u64,
    /// [`VGCF_IN_SYSCALL`].
    pub flags: u64,
    pub rip: u64,
    /// Privilege 0-2 means kernel mode, 3 user mode.
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

assert_layout!(
    IretContext,
    size = 72,
    align = 8,
    rax = 0,
    r11 = 8,
    rcx = 16,
    flags = 24,
    rip = 32,
    cs = 40,
    rflags = 48,
    rsp = 56,
    ss = 64,
);

/// `set_callbacks(event, failsafe, syscall)` and `callback_register.address` take a plain
/// address on x86-64 (`xen_callback_t`).
pub type XenCallback = XenUlong;

// ---------------------------------------------------------------------------------------
// Page-table entry bits a 64-bit PV guest writes (`xen.h`, mmu_update: the architectural
// x86 layout, except that bit 7 of an L1 entry is PAT and superpages go through
// MMUEXT_[UN]MARK_SUPER).

pub const _PAGE_PRESENT: u64 = 1 << 0;
pub const _PAGE_RW: u64 = 1 << 1;
pub const _PAGE_USER: u64 = 1 << 2;
pub const _PAGE_PWT: u64 = 1 << 3;
pub const _PAGE_PCD: u64 = 1 << 4;
pub const _PAGE_ACCESSED: u64 = 1 << 5;
pub const _PAGE_DIRTY: u64 = 1 << 6;
/// PAT in an L1 entry; page size (PSE) in L2/L3 entries.
pub const _PAGE_PAT: u64 = 1 << 7;
pub const _PAGE_PSE: u64 = 1 << 7;
pub const _PAGE_GLOBAL: u64 = 1 << 8;
/// Bits 9-11 are the guest's own.
pub const _PAGE_AVAIL0: u64 = 1 << 9;
pub const _PAGE_AVAIL1: u64 = 1 << 10;
pub const _PAGE_AVAIL2: u64 = 1 << 11;
pub const _PAGE_AVAIL: u64 = _PAGE_AVAIL0 | _PAGE_AVAIL1 | _PAGE_AVAIL2;
pub const _PAGE_NX: u64 = 1 << 63;
/// The frame-address bits of an entry (bits 12-51).
pub const PTE_ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// Page size and shift (`XEN_PAGE_SHIFT`, `io/ring.h`).
pub const XEN_PAGE_SHIFT: u32 = 12;
pub const XEN_PAGE_SIZE: u64 = 1 << XEN_PAGE_SHIFT;

#[cfg(test)]
mod tests {
    use zerocopy::FromZeros;

    use super::*;
    use crate::{layout::pml4_slot, xen::UnknownNumber};

    #[test]
    fn layout_constants() {
        assert_eq!(pml4_slot(HYPERVISOR_VIRT_START), 256);
        assert_eq!(pml4_slot(HYPERVISOR_VIRT_END), 272);
        assert_eq!(MACH2PHYS_NR_ENTRIES, 1 << 35);
        assert_eq!(FIRST_RESERVED_GDT_ENTRY, 7168);
        assert_eq!(FLAT_RING3_CS64 >> 3, 0xe033 >> 3);
        assert_eq!(FLAT_KERNEL_CS, 0xe033);
        assert_eq!(FLAT_USER_SS, 0xe02b);
        assert_eq!(xen_cr3_to_pfn(xen_pfn_to_cr3(0x1234)), 0x1234);
    }

    #[test]
    fn flag_bits() {
        assert_eq!(VGCF_IN_KERNEL, 4);
        assert_eq!(VGCF_ONLINE, 32);
        assert_eq!(VGCF_IN_SYSCALL, 256);
        assert_eq!(
            _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY,
            0x67
        );
        assert_eq!(_PAGE_AVAIL, 0xe00);
        assert_eq!(_PAGE_NX, 0x8000_0000_0000_0000);
        assert_eq!(PTE_ADDR_MASK & _PAGE_NX, 0);
    }

    #[test]
    fn segbase_round_trip() {
        for &s in SegBase::ALL {
            assert_eq!(SegBase::try_from(s.raw()), Ok(s));
        }
        assert_eq!(SegBase::try_from(4u32), Err(UnknownNumber(4)));
    }

    #[test]
    fn trap_table_entry_bytes() {
        // vector 14, DPL 0 with events masked, FLAT_KERNEL_CS, handler address.
        let bytes = [
            14u8, 4, 0x33, 0xe0, 0, 0, 0, 0, 0x10, 0x20, 0x30, 0x80, 0xff, 0xff, 0xff, 0xff,
        ];
        let ti = TrapInfo::read_from_bytes(&bytes).unwrap();
        assert_eq!(ti.vector, 14);
        assert_eq!(ti.dpl(), 0);
        assert!(ti.masks_events());
        assert_eq!(ti.cs, FLAT_KERNEL_CS);
        assert_eq!(ti.address, 0xffff_ffff_8030_2010);
        assert_eq!(ti.as_bytes(), &bytes);
    }

    #[test]
    fn vcpu_guest_context_bytes() {
        let mut ctx = VcpuGuestContext::new_zeroed();
        ctx.flags = VGCF_IN_KERNEL | VGCF_ONLINE;
        ctx.user_regs.rip = 0xffff_ffff_8100_0000;
        ctx.user_regs.cs = FLAT_KERNEL_CS;
        ctx.trap_ctxt[255].address = 0xdead_beef;
        ctx.ctrlreg[3] = xen_pfn_to_cr3(0x42);
        ctx.gs_base_user = 7;
        let bytes = ctx.as_bytes();
        assert_eq!(&bytes[512..520], &36u64.to_le_bytes());
        assert_eq!(
            &bytes[520 + 128..520 + 136],
            &0xffff_ffff_8100_0000u64.to_le_bytes()
        );
        assert_eq!(
            &bytes[720 + 255 * 16 + 8..720 + 256 * 16],
            &0xdead_beefu64.to_le_bytes()
        );
        assert_eq!(&bytes[4984 + 24..4984 + 32], &0x42000u64.to_le_bytes());
        assert_eq!(&bytes[5160..], &7u64.to_le_bytes());
        let back = VcpuGuestContext::read_from_bytes(bytes).unwrap();
        assert_eq!(back.as_bytes(), bytes);
    }
}
