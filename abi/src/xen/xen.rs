//! The core structures and numbers of `xen.h`: the start-of-day `start_info` page, the
//! `shared_info` page with its `vcpu_info` slots and time records, the PV MMU requests
//! (`mmu_update`, `mmuext_op`, `update_va_mapping` flags), multicalls, virtual IRQs, console
//! and `vm_assist` commands, and the reserved domain ids.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{
    arch_x86::{ArchSharedInfo, ArchVcpuInfo, XEN_LEGACY_MAX_VCPUS},
    read_prefix, write_prefix, DomId, GuestHandle, XenPfn, XenUlong,
};

// ---------------------------------------------------------------------------------------
// Domain ids (`xen.h`).

/// Ids from here up are reserved and never name an ordinary domain.
pub const DOMID_FIRST_RESERVED: DomId = 0x7FF0;
/// The calling domain.
pub const DOMID_SELF: DomId = 0x7FF0;
/// I/O memory owner: mapping with it as foreign domain allows only I/O pages.
pub const DOMID_IO: DomId = 0x7FF1;
/// The hypervisor's own pages.
pub const DOMID_XEN: DomId = 0x7FF2;
/// Copy-on-write (shared) pages.
pub const DOMID_COW: DomId = 0x7FF3;
/// Pages whose owner is unknown.
pub const DOMID_INVALID: DomId = 0x7FF4;
/// The idle domain.
pub const DOMID_IDLE: DomId = 0x7FFF;
/// Mask of the bits a domain id may use.
pub const DOMID_MASK: DomId = 0x7FFF;

// ---------------------------------------------------------------------------------------
// Console and vm_assist (`xen.h`).

xen_enum! {
    /// `console_io(cmd, count, buffer)` commands (`CONSOLEIO_*`).
    pub enum ConsoleIoCmd: u32 {
        Write = 0,
        Read = 1,
    }
}

xen_enum! {
    /// `vm_assist(cmd, type)` commands (`VMASST_CMD_*`).
    pub enum VmAssistCmd: u32 {
        Enable = 0,
        Disable = 1,
    }
}

xen_enum! {
    /// `vm_assist` types (`VMASST_TYPE_*`); also bit numbers of
    /// `vcpu_guest_context.vm_assist`.
    pub enum VmAssistType: u32 {
        /// 32-bit guests only.
        FourGbSegments = 0,
        /// 32-bit guests only.
        FourGbSegmentsNotify = 1,
        WritablePagetables = 2,
        /// PAE guests only.
        PaeExtendedCr3 = 3,
        ArchitecturalIopl = 4,
        RunstateUpdateFlag = 5,
        M2pStrict = 32,
    }
}

pub const VMASST_TYPE_4GB_SEGMENTS: u32 = VmAssistType::FourGbSegments.raw();
pub const VMASST_TYPE_4GB_SEGMENTS_NOTIFY: u32 = VmAssistType::FourGbSegmentsNotify.raw();
pub const VMASST_TYPE_WRITABLE_PAGETABLES: u32 = VmAssistType::WritablePagetables.raw();
pub const VMASST_TYPE_PAE_EXTENDED_CR3: u32 = VmAssistType::PaeExtendedCr3.raw();
pub const VMASST_TYPE_ARCHITECTURAL_IOPL: u32 = VmAssistType::ArchitecturalIopl.raw();
pub const VMASST_TYPE_RUNSTATE_UPDATE_FLAG: u32 = VmAssistType::RunstateUpdateFlag.raw();
pub const VMASST_TYPE_M2P_STRICT: u32 = VmAssistType::M2pStrict.raw();

// ---------------------------------------------------------------------------------------
// Virtual IRQs (`xen.h`, `VIRQ_MCA` from `arch-x86/xen-mca.h`).

xen_enum! {
    /// A virtual IRQ (`VIRQ_*`), bound to a port with `EVTCHNOP_bind_virq`. Per-vCPU ones
    /// (timer, debug, xenoprof, xenpmu) bind once per vCPU; the rest are global and bind to
    /// vCPU 0 first.
    pub enum Virq: u32 {
        Timer = 0,
        Debug = 1,
        Console = 2,
        DomExc = 3,
        Tbuf = 4,
        Debugger = 6,
        Xenoprof = 7,
        ConRing = 8,
        PcpuState = 9,
        MemEvent = 10,
        Argo = 11,
        Enomem = 12,
        Xenpmu = 13,
        /// `VIRQ_ARCH_0` on x86: a machine check was logged.
        Mca = 16,
    }
}

/// First architecture-specific VIRQ (`VIRQ_ARCH_0`).
pub const VIRQ_ARCH_0: u32 = 16;
/// Number of VIRQ numbers (`NR_VIRQS`); valid ones are below it.
pub const NR_VIRQS: u32 = 24;

// ---------------------------------------------------------------------------------------
// mmu_update (`xen.h`).

xen_enum! {
    /// The request kind, carried in `mmu_update.ptr[1:0]` (`MMU_*`).
    pub enum MmuUpdateCmd: u32 {
        /// Checked write of a page-table entry; `ptr` is its machine address.
        NormalPtUpdate = 0,
        /// Set the M2P entry of the frame containing `ptr` to `val`.
        MachphysUpdate = 1,
        /// As `NormalPtUpdate`, keeping the entry's current Accessed/Dirty bits.
        PtUpdatePreserveAd = 2,
        /// As `NormalPtUpdate`, `val` not translated through the foreign domain.
        PtUpdateNoTranslate = 3,
    }
}

pub const MMU_NORMAL_PT_UPDATE: u32 = MmuUpdateCmd::NormalPtUpdate.raw();
pub const MMU_MACHPHYS_UPDATE: u32 = MmuUpdateCmd::MachphysUpdate.raw();
pub const MMU_PT_UPDATE_PRESERVE_AD: u32 = MmuUpdateCmd::PtUpdatePreserveAd.raw();
pub const MMU_PT_UPDATE_NO_TRANSLATE: u32 = MmuUpdateCmd::PtUpdateNoTranslate.raw();

/// One `mmu_update(reqs, count, done, foreigndom)` request (`struct mmu_update`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct MmuUpdate {
    /// Machine address of the target with the [`MmuUpdateCmd`] in bits 1:0.
    pub ptr: u64,
    /// New entry value.
    pub val: u64,
}

assert_layout!(MmuUpdate, size = 16, align = 8, ptr = 0, val = 8);

impl MmuUpdate {
    /// The request kind; every value of bits 1:0 names one.
    pub const fn cmd(&self) -> MmuUpdateCmd {
        match self.ptr & 3 {
            0 => MmuUpdateCmd::NormalPtUpdate,
            1 => MmuUpdateCmd::MachphysUpdate,
            2 => MmuUpdateCmd::PtUpdatePreserveAd,
            _ => MmuUpdateCmd::PtUpdateNoTranslate,
        }
    }

    /// The machine address with the command bits cleared.
    pub const fn addr(&self) -> u64 {
        self.ptr & !3
    }
}

/// The data-page owner (FD) encoded in `foreigndom[15:0]` of `mmu_update`/`mmuext_op`.
pub const fn foreigndom_fd(foreigndom: u32) -> DomId {
    foreigndom as DomId
}

/// The page-table owner (PFD) encoded in `foreigndom[31:16]`: 0 means the caller
/// ([`DOMID_SELF`]), `x` means domain `x - 1`.
pub const fn foreigndom_pfd(foreigndom: u32) -> DomId {
    match (foreigndom >> 16) as DomId {
        0 => DOMID_SELF,
        x => x - 1,
    }
}

// ---------------------------------------------------------------------------------------
// mmuext_op (`xen.h`).

xen_enum! {
    /// `mmuext_op.cmd` (`MMUEXT_*`).
    pub enum MmuextCmd: u32 {
        PinL1Table = 0,
        PinL2Table = 1,
        PinL3Table = 2,
        PinL4Table = 3,
        UnpinTable = 4,
        NewBaseptr = 5,
        TlbFlushLocal = 6,
        InvlpgLocal = 7,
        TlbFlushMulti = 8,
        InvlpgMulti = 9,
        TlbFlushAll = 10,
        InvlpgAll = 11,
        FlushCache = 12,
        SetLdt = 13,
        NewUserBaseptr = 15,
        ClearPage = 16,
        CopyPage = 17,
        FlushCacheGlobal = 18,
        MarkSuper = 19,
        UnmarkSuper = 20,
    }
}

/// One `mmuext_op(ops, count, done, foreigndom)` request (`struct mmuext_op`). `arg1` and
/// `arg2` are C unions; the accessors name their members.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct MmuextOp {
    /// An [`MmuextCmd`].
    pub cmd: u32,
    pub _cpad0: u32,
    /// `mfn` or `linear_addr`.
    pub arg1: u64,
    /// `nr_ents` (low 32 bits), `vcpumask` or `src_mfn`.
    pub arg2: u64,
}

assert_layout!(MmuextOp, size = 24, align = 8, cmd = 0, arg1 = 8, arg2 = 16);

impl MmuextOp {
    /// `arg1.mfn`: pin/unpin, new (user) base pointer, clear/copy page, (un)mark super.
    pub const fn mfn(&self) -> XenPfn {
        self.arg1
    }

    /// `arg1.linear_addr`: INVLPG_*, SET_LDT.
    pub const fn linear_addr(&self) -> u64 {
        self.arg1
    }

    /// `arg2.nr_ents`: SET_LDT. Only the low 32 bits belong to it.
    pub const fn nr_ents(&self) -> u32 {
        self.arg2 as u32
    }

    /// `arg2.vcpumask`: a guest bitmap of vCPUs for the *_MULTI commands.
    pub const fn vcpumask(&self) -> GuestHandle {
        GuestHandle(self.arg2)
    }

    /// `arg2.src_mfn`: COPY_PAGE.
    pub const fn src_mfn(&self) -> XenPfn {
        self.arg2
    }
}

// ---------------------------------------------------------------------------------------
// update_va_mapping flags (`xen.h`).

/// No TLB flush.
pub const UVMF_NONE: u64 = 0;
/// Flush the whole TLB(s).
pub const UVMF_TLB_FLUSH: u64 = 1;
/// Flush only the updated address.
pub const UVMF_INVLPG: u64 = 2;
/// Bits selecting the flush type.
pub const UVMF_FLUSHTYPE_MASK: u64 = 3;
/// Flush the vCPUs in the bitmap whose guest address is ORed into the flags.
pub const UVMF_MULTI: u64 = 0;
/// Flush the local TLB only (`UVMF_MULTI` with a null bitmap).
pub const UVMF_LOCAL: u64 = 0;
/// Flush every vCPU's TLB.
pub const UVMF_ALL: u64 = 1 << 2;

// ---------------------------------------------------------------------------------------
// multicall (`xen.h`).

/// One call of a `multicall(calls, nr_calls)` batch (`struct multicall_entry`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct MulticallEntry {
    /// Hypercall number.
    pub op: XenUlong,
    /// Written back with the call's return value.
    pub result: XenUlong,
    pub args: [XenUlong; 6],
}

assert_layout!(
    MulticallEntry,
    size = 64,
    align = 8,
    op = 0,
    result = 8,
    args = 16
);

// ---------------------------------------------------------------------------------------
// Time (`xen.h`).

/// The TSC is stable across vCPUs (`vcpu_time_info.flags`).
pub const XEN_PVCLOCK_TSC_STABLE_BIT: u8 = 1 << 0;
/// The vCPU was paused; guest watchdogs should not fire (`vcpu_time_info.flags`).
pub const XEN_PVCLOCK_GUEST_STOPPED: u8 = 1 << 1;

/// Per-vCPU system-time parameters (`struct vcpu_time_info`, the pvclock record).
///
/// Writers bump `version` to odd before an update and to even after it; a reader retries
/// while it reads an odd version or the version changed across its read. System time in ns:
/// `system_time + (((tsc - tsc_timestamp) << tsc_shift) * tsc_to_system_mul >> 32)`, the
/// shift being a right shift when `tsc_shift` is negative.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VcpuTimeInfo {
    pub version: u32,
    pub pad0: u32,
    /// TSC at the last update.
    pub tsc_timestamp: u64,
    /// Nanoseconds since boot at `tsc_timestamp`.
    pub system_time: u64,
    /// TSC-to-ns multiplier, a 32.32 fixed-point fraction.
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
    /// `XEN_PVCLOCK_*`.
    pub flags: u8,
    pub pad1: [u8; 2],
}

assert_layout!(
    VcpuTimeInfo,
    size = 32,
    align = 8,
    version = 0,
    pad0 = 4,
    tsc_timestamp = 8,
    system_time = 16,
    tsc_to_system_mul = 24,
    tsc_shift = 28,
    flags = 29,
    pad1 = 30,
);

/// Whether a `version` (of [`VcpuTimeInfo`] or `shared_info.wc_version`) marks a record
/// that is not being updated.
pub const fn version_is_stable(version: u32) -> bool {
    version & 1 == 0
}

// ---------------------------------------------------------------------------------------
// vcpu_info and shared_info (`xen.h`).

/// A vCPU's event and time state (`struct vcpu_info`), 64 bytes; the first
/// `XEN_LEGACY_MAX_VCPUS` live in `shared_info`, others where `VCPUOP_register_vcpu_info`
/// places them.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VcpuInfo {
    /// Set by the hypervisor when an event is pending; cleared by the guest.
    pub evtchn_upcall_pending: u8,
    /// Non-zero: no upcall is delivered (the guest's "interrupts disabled").
    pub evtchn_upcall_mask: u8,
    pub _cpad0: [u8; 6],
    /// One bit per word of `shared_info.evtchn_pending` holding a pending port.
    pub evtchn_pending_sel: XenUlong,
    pub arch: ArchVcpuInfo,
    pub time: VcpuTimeInfo,
}

assert_layout!(
    VcpuInfo,
    size = 64,
    align = 8,
    evtchn_upcall_pending = 0,
    evtchn_upcall_mask = 1,
    evtchn_pending_sel = 8,
    arch = 16,
    time = 32,
);

/// The page shared between the hypervisor and a domain (`struct shared_info`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SharedInfo {
    pub vcpu_info: [VcpuInfo; XEN_LEGACY_MAX_VCPUS],
    /// 2-level event channels: one pending bit per port.
    pub evtchn_pending: [XenUlong; 64],
    /// 2-level event channels: one mask bit per port.
    pub evtchn_mask: [XenUlong; 64],
    /// Version of the wall-clock fields, same protocol as [`VcpuTimeInfo::version`].
    pub wc_version: u32,
    /// Wall-clock time (Unix epoch, plus the domain's offset) at system time 0: seconds,
    /// low 32 bits.
    pub wc_sec: u32,
    pub wc_nsec: u32,
    /// Seconds, high 32 bits.
    pub wc_sec_hi: u32,
    pub arch: ArchSharedInfo,
}

assert_layout!(
    SharedInfo,
    size = 3136,
    align = 8,
    vcpu_info = 0,
    evtchn_pending = 2048,
    evtchn_mask = 2560,
    wc_version = 3072,
    wc_sec = 3076,
    wc_nsec = 3080,
    wc_sec_hi = 3084,
    arch = 3088,
);

impl SharedInfo {
    /// The 64-bit wall-clock seconds from `wc_sec_hi:wc_sec`.
    pub const fn wc_seconds(&self) -> u64 {
        ((self.wc_sec_hi as u64) << 32) | self.wc_sec as u64
    }

    /// Stores 64-bit wall-clock seconds into `wc_sec` and `wc_sec_hi`.
    pub fn set_wc_seconds(&mut self, secs: u64) {
        self.wc_sec = secs as u32;
        self.wc_sec_hi = (secs >> 32) as u32;
    }
}

// ---------------------------------------------------------------------------------------
// start_info (`xen.h`).

/// Length of `start_info.cmd_line` (`MAX_GUEST_CMDLINE`).
pub const MAX_GUEST_CMDLINE: usize = 1024;

/// The privileged domain.
pub const SIF_PRIVILEGED: u32 = 1 << 0;
/// The initial control domain (dom0).
pub const SIF_INITDOMAIN: u32 = 1 << 1;
/// `mod_start` points at a list of [`XenMultibootModList`] rather than one module.
pub const SIF_MULTIBOOT_MOD: u32 = 1 << 2;
/// `mod_start` is a PFN, not a virtual address.
pub const SIF_MOD_START_PFN: u32 = 1 << 3;
/// The toolstack understands a virtually mapped P2M list.
pub const SIF_VIRT_P2M_4TOOLS: u32 = 1 << 4;
/// Byte reserved for power-management options.
pub const SIF_PM_MASK: u32 = 0xFF << 8;

/// The `magic` a 64-bit PV guest is given: `xen-<abi version>-<platform>`, the form Xen's
/// domain builder writes.
pub const START_INFO_MAGIC_X86_64: &[u8] = b"xen-3.0-x86_64";

/// The start-of-day page a PV kernel receives in `rsi` (`struct start_info`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct StartInfo {
    /// `"xen-<version>-<platform>"`, NUL-padded.
    pub magic: [u8; 32],
    /// Pages allocated to the domain.
    pub nr_pages: u64,
    /// Machine address of the shared-info page.
    pub shared_info: u64,
    /// `SIF_*`.
    pub flags: u32,
    pub _cpad0: u32,
    /// Machine frame of the xenstore ring.
    pub store_mfn: XenPfn,
    pub store_evtchn: u32,
    pub _cpad1: u32,
    /// Union: `domU { mfn, evtchn }` or `dom0 { info_off, info_size }`; see the accessors.
    pub console: [u64; 2],
    /// Virtual address of the bootstrap page tables.
    pub pt_base: u64,
    pub nr_pt_frames: u64,
    /// Virtual address of the P2M list (pfn → mfn).
    pub mfn_list: u64,
    /// Virtual address (or PFN, with `SIF_MOD_START_PFN`) of the initial ramdisk.
    pub mod_start: u64,
    pub mod_len: u64,
    /// NUL-terminated kernel command line (`int8_t` in C).
    pub cmd_line: [u8; MAX_GUEST_CMDLINE],
    /// First PFN of the initial P2M table frames.
    pub first_p2m_pfn: u64,
    pub nr_p2m_frames: u64,
}

assert_layout!(
    StartInfo,
    size = 1168,
    align = 8,
    magic = 0,
    nr_pages = 32,
    shared_info = 40,
    flags = 48,
    store_mfn = 56,
    store_evtchn = 64,
    console = 72,
    pt_base = 88,
    nr_pt_frames = 96,
    mfn_list = 104,
    mod_start = 112,
    mod_len = 120,
    cmd_line = 128,
    first_p2m_pfn = 1152,
    nr_p2m_frames = 1160,
);

impl StartInfo {
    /// `console.domU.mfn`: machine frame of the console ring.
    pub const fn console_domu_mfn(&self) -> XenPfn {
        self.console[0]
    }

    /// `console.domU.evtchn`: event channel of the console ring.
    pub const fn console_domu_evtchn(&self) -> u32 {
        self.console[1] as u32
    }

    /// Sets `console.domU`, zeroing the union's padding.
    pub fn set_console_domu(&mut self, mfn: XenPfn, evtchn: u32) {
        self.console = [mfn, evtchn as u64];
    }

    /// `console.dom0.info_off`: offset in this page of a [`Dom0VgaConsoleInfo`].
    pub const fn console_dom0_info_off(&self) -> u32 {
        self.console[0] as u32
    }

    /// `console.dom0.info_size`.
    pub const fn console_dom0_info_size(&self) -> u32 {
        (self.console[0] >> 32) as u32
    }

    /// Sets `console.dom0`, zeroing the rest of the union.
    pub fn set_console_dom0(&mut self, info_off: u32, info_size: u32) {
        self.console = [((info_size as u64) << 32) | info_off as u64, 0];
    }
}

/// One module of a `SIF_MULTIBOOT_MOD` list (`struct xen_multiboot_mod_list`); addresses
/// are pseudo-physical.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenMultibootModList {
    pub mod_start: u32,
    /// Last byte, inclusive.
    pub mod_end: u32,
    /// Address of the NUL-terminated command line.
    pub cmdline: u32,
    pub pad: u32,
}

assert_layout!(
    XenMultibootModList,
    size = 16,
    align = 4,
    mod_start = 0,
    mod_end = 4,
    cmdline = 8,
    pad = 12,
);

// ---------------------------------------------------------------------------------------
// dom0 console info (`xen.h`), found at `start_info + console.dom0.info_off`.

pub const XEN_VGATYPE_TEXT_MODE_3: u8 = 0x03;
pub const XEN_VGATYPE_VESA_LFB: u8 = 0x23;
pub const XEN_VGATYPE_EFI_LFB: u8 = 0x70;

/// `dom0_vga_console_info.u.text_mode_3`.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VgaTextMode3 {
    pub font_height: u16,
    pub cursor_x: u16,
    pub cursor_y: u16,
    pub rows: u16,
    pub columns: u16,
}

assert_layout!(
    VgaTextMode3,
    size = 10,
    align = 2,
    font_height = 0,
    cursor_x = 2,
    cursor_y = 4,
    rows = 6,
    columns = 8,
);

/// `dom0_vga_console_info.u.vesa_lfb` (also used for `XEN_VGATYPE_EFI_LFB`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VgaVesaLfb {
    pub width: u16,
    pub height: u16,
    pub bytes_per_line: u16,
    pub bits_per_pixel: u16,
    /// Low 32 bits of the framebuffer's physical address.
    pub lfb_base: u32,
    /// Size in 64 KiB units.
    pub lfb_size: u32,
    pub red_pos: u8,
    pub red_size: u8,
    pub green_pos: u8,
    pub green_size: u8,
    pub blue_pos: u8,
    pub blue_size: u8,
    pub rsvd_pos: u8,
    pub rsvd_size: u8,
    pub gbl_caps: u32,
    pub mode_attrs: u16,
    pub pad: u16,
    /// High 32 bits of the framebuffer's physical address.
    pub ext_lfb_base: u32,
}

assert_layout!(
    VgaVesaLfb,
    size = 36,
    align = 4,
    width = 0,
    height = 2,
    bytes_per_line = 4,
    bits_per_pixel = 6,
    lfb_base = 8,
    lfb_size = 12,
    red_pos = 16,
    red_size = 17,
    green_pos = 18,
    green_size = 19,
    blue_pos = 20,
    blue_size = 21,
    rsvd_pos = 22,
    rsvd_size = 23,
    gbl_caps = 24,
    mode_attrs = 28,
    pad = 30,
    ext_lfb_base = 32,
);

/// dom0's boot console description (`struct dom0_vga_console_info`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Dom0VgaConsoleInfo {
    /// `XEN_VGATYPE_*`.
    pub video_type: u8,
    pub _cpad0: [u8; 3],
    /// Union of [`VgaTextMode3`] and [`VgaVesaLfb`].
    pub u: [u32; 9],
}

assert_layout!(
    Dom0VgaConsoleInfo,
    size = 40,
    align = 4,
    video_type = 0,
    u = 4
);

impl Dom0VgaConsoleInfo {
    pub fn text_mode_3(&self) -> VgaTextMode3 {
        read_prefix(self.u.as_bytes())
    }

    pub fn vesa_lfb(&self) -> VgaVesaLfb {
        read_prefix(self.u.as_bytes())
    }

    /// Sets the text-mode member, zeroing the rest of the union.
    pub fn set_text_mode_3(&mut self, mode: &VgaTextMode3) {
        self.u = [0; 9];
        write_prefix(self.u.as_mut_bytes(), mode);
    }

    pub fn set_vesa_lfb(&mut self, lfb: &VgaVesaLfb) {
        write_prefix(self.u.as_mut_bytes(), lfb);
    }
}

#[cfg(test)]
mod tests {
    use zerocopy::FromZeros;

    use super::*;
    use crate::xen::UnknownNumber;

    #[test]
    fn sub_op_round_trips() {
        for &c in MmuextCmd::ALL {
            assert_eq!(MmuextCmd::try_from(c.raw()), Ok(c));
            assert_eq!(MmuextCmd::try_from(u64::from(c.raw())), Ok(c));
        }
        for &v in Virq::ALL {
            assert_eq!(Virq::try_from(v.raw()), Ok(v));
        }
        for &t in VmAssistType::ALL {
            assert_eq!(VmAssistType::try_from(t.raw()), Ok(t));
        }
        assert_eq!(ConsoleIoCmd::try_from(0u32), Ok(ConsoleIoCmd::Write));
        assert_eq!(ConsoleIoCmd::try_from(1u32), Ok(ConsoleIoCmd::Read));
        assert_eq!(MmuextCmd::try_from(14u32), Err(UnknownNumber(14)));
        assert_eq!(MmuextCmd::try_from(21u32), Err(UnknownNumber(21)));
        assert_eq!(ConsoleIoCmd::try_from(2u64), Err(UnknownNumber(2)));
        assert_eq!(Virq::try_from(5u32), Err(UnknownNumber(5)));
        assert_eq!(Virq::try_from(17u32), Err(UnknownNumber(17)));
        assert_eq!(
            MmuextCmd::try_from(u64::from(u32::MAX) + 1),
            Err(UnknownNumber(1 << 32))
        );
    }

    #[test]
    fn header_numbers() {
        assert_eq!(MmuextCmd::PinL4Table.raw(), 3);
        assert_eq!(MmuextCmd::NewUserBaseptr.raw(), 15);
        assert_eq!(MmuextCmd::UnmarkSuper.raw(), 20);
        assert_eq!(VMASST_TYPE_M2P_STRICT, 32);
        assert_eq!(Virq::Mca.raw(), VIRQ_ARCH_0);
        assert_eq!((DOMID_SELF, DOMID_IO, DOMID_XEN), (0x7ff0, 0x7ff1, 0x7ff2));
        assert_eq!(SIF_PRIVILEGED | SIF_INITDOMAIN, 3);
        assert_eq!(SIF_MOD_START_PFN, 8);
        assert_eq!(SIF_PM_MASK, 0xff00);
        assert_eq!(UVMF_INVLPG | UVMF_ALL, 6);
        assert_eq!(XEN_PVCLOCK_TSC_STABLE_BIT | XEN_PVCLOCK_GUEST_STOPPED, 3);
    }

    #[test]
    fn mmu_update_decoding() {
        let req = MmuUpdate {
            ptr: 0x1234_5000 | 2,
            val: 0x8000_0000_0000_0063,
        };
        assert_eq!(req.cmd(), MmuUpdateCmd::PtUpdatePreserveAd);
        assert_eq!(req.addr(), 0x1234_5000);
        assert_eq!(foreigndom_fd(0x0003_7ff0), DOMID_SELF);
        assert_eq!(foreigndom_pfd(0x0003_7ff0), 2);
        assert_eq!(foreigndom_pfd(0x0000_0005), DOMID_SELF);
    }

    #[test]
    fn mmuext_union_members() {
        let bytes: [u8; 24] = [
            13, 0, 0, 0, 0, 0, 0, 0, // cmd = SET_LDT, C padding
            0, 0x10, 0, 0, 0, 0x80, 0xff, 0xff, // linear_addr
            0x20, 0, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd, // nr_ents, then union bytes it leaves
        ];
        let op = MmuextOp::read_from_bytes(&bytes).unwrap();
        assert_eq!(MmuextCmd::try_from(op.cmd), Ok(MmuextCmd::SetLdt));
        assert_eq!(op.linear_addr(), 0xffff_8000_0000_1000);
        assert_eq!(op.nr_ents(), 0x20);
        assert_eq!(op.as_bytes(), &bytes);
    }

    #[test]
    fn start_info_bytes_round_trip() {
        let mut si = StartInfo::new_zeroed();
        si.magic[..START_INFO_MAGIC_X86_64.len()].copy_from_slice(START_INFO_MAGIC_X86_64);
        si.nr_pages = 0x4_0000;
        si.flags = SIF_PRIVILEGED | SIF_INITDOMAIN;
        si.set_console_domu(0x1234, 3);
        si.cmd_line[..4].copy_from_slice(b"ro\0\0");
        let bytes = si.as_bytes();
        assert_eq!(bytes.len(), 1168);
        assert_eq!(&bytes[32..40], &0x4_0000u64.to_le_bytes());
        assert_eq!(&bytes[72..80], &0x1234u64.to_le_bytes());
        assert_eq!(&bytes[80..84], &3u32.to_le_bytes());
        let back = StartInfo::read_from_bytes(bytes).unwrap();
        assert_eq!(back.console_domu_mfn(), 0x1234);
        assert_eq!(back.console_domu_evtchn(), 3);
        assert_eq!(back.as_bytes(), bytes);

        si.set_console_dom0(0x800, 40);
        assert_eq!(si.console_dom0_info_off(), 0x800);
        assert_eq!(si.console_dom0_info_size(), 40);
        assert_eq!(&si.as_bytes()[72..80], &[0, 8, 0, 0, 40, 0, 0, 0]);
    }

    #[test]
    fn shared_info_wall_clock_and_vcpu_slots() {
        let mut sh = SharedInfo::new_zeroed();
        sh.set_wc_seconds(0x1_2345_6789);
        assert_eq!((sh.wc_sec, sh.wc_sec_hi), (0x2345_6789, 1));
        assert_eq!(sh.wc_seconds(), 0x1_2345_6789);
        sh.vcpu_info[1].evtchn_upcall_mask = 1;
        sh.vcpu_info[1].time.version = 7;
        let bytes = sh.as_bytes();
        assert_eq!(bytes[64 + 1], 1);
        assert_eq!(&bytes[64 + 32..64 + 36], &7u32.to_le_bytes());
        assert_eq!(&bytes[3076..3080], &0x2345_6789u32.to_le_bytes());
        assert!(!version_is_stable(sh.vcpu_info[1].time.version));
        assert!(version_is_stable(8));
    }

    #[test]
    fn vga_console_union() {
        let mut info = Dom0VgaConsoleInfo::new_zeroed();
        info.video_type = XEN_VGATYPE_TEXT_MODE_3;
        info.set_text_mode_3(&VgaTextMode3 {
            font_height: 16,
            cursor_x: 1,
            cursor_y: 2,
            rows: 25,
            columns: 80,
        });
        assert_eq!(&info.as_bytes()[..8], &[3, 0, 0, 0, 16, 0, 1, 0]);
        let mode = info.text_mode_3();
        assert_eq!((mode.rows, mode.columns), (25, 80));
        let mut lfb = VgaVesaLfb::new_zeroed();
        lfb.lfb_base = 0xfd00_0000;
        lfb.ext_lfb_base = 1;
        info.set_vesa_lfb(&lfb);
        assert_eq!(&info.as_bytes()[12..16], &0xfd00_0000u32.to_le_bytes());
        assert_eq!(info.vesa_lfb().ext_lfb_base, 1);
    }
}
