//! The rules for a 64-bit PV guest's descriptor tables: `set_gdt`, `update_descriptor` and
//! `MMUEXT_SET_LDT` (`arch-x86/xen.h`'s "Segment Descriptor Tables", `xen.h`'s
//! `mmuext_op`), and the check every GDT or LDT entry passes before the CPU may see it
//! (Xen's `check_descriptor()` for a 64-bit PV domain).
//!
//! A PV guest's descriptor tables are its own frames, but the CPU reads them while running
//! the guest with the hypervisor's IDT, TSS and ring-0 code: the hypervisor maps the GDT
//! frames into the first 14 pages of its per-CPU GDT window (`arch::x86_64::gdt`) and the
//! LDT pages next to it. So every entry is checked (and, where Xen does, fixed up) while the
//! frame is a `SegDesc` frame, which no writable mapping can change behind the check; the
//! only way to change an entry afterwards is `update_descriptor`, which checks it again.
//!
//! # One entry ([`check_descriptor`])
//!
//! | entry | verdict | why |
//! |---|---|---|
//! | not present (P = 0) | stored as written | any use of it faults (#NP, #GP or #SS), whatever the other bits say |
//! | code or data segment (S = 1), any DPL | DPL raised to 3 | the guest kernel runs in ring 3 (Xen's `GUEST_KERNEL_RPL` is 3 for 64-bit PV), so nothing it describes may be more privileged: a DPL < 3 segment would let an IRET or far transfer with a guest-supplied RPL-0 selector put guest code in ring 0. Linux writes its kernel segments with DPL 0 and gets them back with DPL 3, as on Xen |
//! | 64-bit code (L = 1), 16/32-bit code, conforming code, expand-down data | allowed, no base/limit check | long mode ignores base and limit for CS/DS/ES/SS, and FS/GS bases only reach guest addresses the page tables already guard; the hypervisor's memory is protected by paging (supervisor pages), not by segment limits. A conforming segment at DPL 3 is only reachable from CPL 3 and never changes CPL |
//! | system type 0, present | stored as written | the CPU refuses to load it as a segment or use it as a gate; it is the shape of a 16-byte gate's upper half |
//! | 64-bit call gate (type 12) | target selector checked, reserved bits 32..39 must be 0, **DPL forced to 0**, the target selector's RPL set to the (fixed-up) DPL, i.e. 3 | a gate at DPL 0 can never be used from ring 3: a far call through it raises #GP with the gate's selector, which the hypervisor may emulate (checking the target again) or hand to the guest. The target may be a guest GDT selector (index < `FIRST_RESERVED_GDT_ENTRY`), exactly `FLAT_KERNEL_CS` (0xe033, the guest's flat 64-bit code) or an LDT selector; never another hypervisor entry such as its ring-0 CS at 0xe008 |
//! | LDT descriptor (type 2) | refused | system structures are the hypervisor's: it loads LDTR itself, from its own descriptor, after `MMUEXT_SET_LDT` |
//! | 64-bit TSS, available or busy (types 9, 11) | refused | the TSS holds the ring-0 and IST stacks; only the hypervisor's TSS (selector 0xe040) may exist |
//! | interrupt or trap gate (types 14, 15) | refused | they only mean anything in the IDT, which is the hypervisor's (guests register handlers with `set_trap_table`); Xen admits no system type but call gates |
//! | any type long mode reserves (1, 3..=8, 10, 13: 16-bit TSS and gates, task gates, 32-bit-only types) | refused | not valid in IA-32e mode (Intel SDM vol. 3, table 3-2); the list of accepted kinds stays short |
//!
//! A 16-byte system descriptor (a call gate here: LDT and TSS descriptors are refused) spans
//! two slots, and the second slot is **not skipped**: a selector can name it on its own, so
//! it passes [`check_descriptor`] as an entry in its own right, exactly as Xen checks each
//! 8-byte slot of a page independently. Its usual shape (reserved upper dword of zero) is a
//! not-present entry; if the guest makes it something else, that something else must pass.
//! Whether a gate's upper half suits the gate is for the gate emulation to check at the call
//! (the CPU never uses the gate itself, its DPL being 0), so a gate in a page's last slot is
//! accepted, its upper half being slot 0 of the next frame, checked with that frame.
//!
//! # Tables
//!
//! - `set_gdt(frames, entries)` ([`validate_set_gdt`]): `entries` ≤ `FIRST_RESERVED_GDT_ENTRY`
//!   (7168, 14 pages) and exactly `ceil(entries / 512)` frames are read from the guest
//!   ([`gdt_frame_count`]), as Xen's `do_set_gdt`. 0 entries is an empty GDT. Each frame is
//!   then taken as a `SegDesc` frame through the frame table and its entries checked with
//!   [`check_page`].
//! - `update_descriptor(maddr, desc)` ([`validate_update_descriptor`]): `maddr` 8-byte
//!   aligned (else it would straddle two entries) and `desc` passes [`check_descriptor`]; the
//!   caller then writes [`Descriptor::raw`] into a frame that is either `SegDesc` or may take
//!   the `Writable` type (a guest may prepare descriptors in ordinary memory: they are checked
//!   again when the frame becomes a descriptor table).
//! - `MMUEXT_SET_LDT(base, entries)` ([`validate_set_ldt`]): `entries` ≤ 8192 (the 64 KiB
//!   an LDT selector can index); with `entries` > 0, `base` is page-aligned and the whole
//!   table lies in guest address space. With 0 entries the base is ignored (no LDT).
//!
//! All failures are `-EINVAL`, as in Xen ([`DescError::errno`]).

use core::fmt;

use ferrovisor_abi::{
    errno::XenErrno,
    xen::arch_x86::{
        FIRST_RESERVED_GDT_ENTRY, FIRST_RESERVED_GDT_PAGE, FLAT_KERNEL_CS, HYPERVISOR_VIRT_END,
    },
};

use crate::mm::{Mfn, PAGE_SIZE};

/// Eight-byte entries in a 4 KiB descriptor-table frame.
pub const ENTRIES_PER_PAGE: usize = 512;

/// The most entries an LDT can have: a selector's 13-bit index (`MMUEXT_SET_LDT`'s limit).
pub const MAX_LDT_ENTRIES: u32 = 8192;

/// Bits of a descriptor as one little-endian `u64` (Intel SDM vol. 3, 3.4.5 and 6.14.1).
mod bits {
    pub const TYPE_SHIFT: u32 = 40;
    pub const TYPE_MASK: u64 = 0xf << TYPE_SHIFT;
    /// S: code or data segment (1) or system descriptor (0).
    pub const S: u64 = 1 << 44;
    pub const DPL_SHIFT: u32 = 45;
    pub const DPL_MASK: u64 = 3 << DPL_SHIFT;
    pub const PRESENT: u64 = 1 << 47;
    /// Type bit 3 of a code/data segment: code.
    pub const CODE: u64 = 1 << 43;
    /// A gate's target selector.
    pub const GATE_SELECTOR_SHIFT: u32 = 16;
    pub const GATE_SELECTOR_MASK: u64 = 0xffff << GATE_SELECTOR_SHIFT;
    /// A 64-bit call gate's reserved bits (where IST sits in an interrupt gate, and the
    /// parameter count in a 32-bit call gate).
    pub const GATE_RESERVED: u64 = 0xff << 32;
}

/// System descriptor types in IA-32e mode (Intel SDM vol. 3, table 3-2).
mod system_type {
    /// Invalid; the upper half of a 16-byte descriptor.
    pub const UPPER_HALF: u8 = 0;
    pub const LDT: u8 = 2;
    pub const TSS_AVAILABLE: u8 = 9;
    pub const TSS_BUSY: u8 = 11;
    pub const CALL_GATE: u8 = 12;
    pub const INTERRUPT_GATE: u8 = 14;
    pub const TRAP_GATE: u8 = 15;
}

/// What an accepted entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescKind {
    /// P = 0: stored as written.
    NotPresent,
    /// A code segment, DPL 3.
    Code,
    /// A data segment, DPL 3.
    Data,
    /// A 64-bit call gate, stored with DPL 0 so that using it traps to the hypervisor.
    CallGate,
    /// A present system descriptor of type 0 (shaped like a 16-byte descriptor's upper
    /// half), stored as written.
    UpperHalf,
}

/// An entry that passed [`check_descriptor`]: the value to store in the table, possibly
/// fixed up from what the guest wrote. Only [`check_descriptor`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    raw: u64,
    kind: DescKind,
}

impl Descriptor {
    /// The value the hypervisor stores in the guest's table.
    pub const fn raw(self) -> u64 {
        self.raw
    }

    pub const fn kind(self) -> DescKind {
        self.kind
    }
}

/// Why a descriptor or a descriptor-table hypercall was refused. All are `-EINVAL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescError {
    /// A present LDT descriptor.
    Ldt,
    /// A present 64-bit TSS descriptor (available or busy).
    Tss,
    /// A present 64-bit interrupt gate.
    InterruptGate,
    /// A present 64-bit trap gate.
    TrapGate,
    /// A present system descriptor of a type long mode reserves.
    ReservedType(u8),
    /// A call gate whose target is a hypervisor selector other than `FLAT_KERNEL_CS`.
    GateTarget(u16),
    /// A call gate with reserved bits 32..39 set.
    GateReservedBits,
    /// `set_gdt` with more than `FIRST_RESERVED_GDT_ENTRY` entries.
    TooManyGdtEntries(u32),
    /// `set_gdt` given a frame list of the wrong length (a caller bug: it reads exactly
    /// [`gdt_frame_count`] frames).
    FrameCount { expected: usize, given: usize },
    /// `update_descriptor` at an address that is not 8-byte aligned.
    Misaligned(u64),
    /// `MMUEXT_SET_LDT` with more than [`MAX_LDT_ENTRIES`] entries.
    TooManyLdtEntries(u32),
    /// `MMUEXT_SET_LDT` with a base that is not page-aligned.
    LdtBaseMisaligned(u64),
    /// `MMUEXT_SET_LDT` with a table reaching outside guest address space.
    LdtOutsideGuest(u64),
}

impl DescError {
    /// Xen refuses all of these with `-EINVAL`.
    pub const fn errno(self) -> XenErrno {
        XenErrno::Einval
    }
}

impl fmt::Display for DescError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DescError::Ldt => f.write_str("LDT descriptor in a guest table"),
            DescError::Tss => f.write_str("TSS descriptor in a guest table"),
            DescError::InterruptGate => f.write_str("interrupt gate in a guest table"),
            DescError::TrapGate => f.write_str("trap gate in a guest table"),
            DescError::ReservedType(t) => write!(f, "reserved system descriptor type {t}"),
            DescError::GateTarget(sel) => write!(f, "call gate to hypervisor selector {sel:#x}"),
            DescError::GateReservedBits => f.write_str("call gate with reserved bits set"),
            DescError::TooManyGdtEntries(n) => write!(f, "GDT of {n} entries"),
            DescError::FrameCount { expected, given } => {
                write!(f, "{given} GDT frames given, {expected} expected")
            }
            DescError::Misaligned(a) => write!(f, "descriptor address {a:#x} not 8-byte aligned"),
            DescError::TooManyLdtEntries(n) => write!(f, "LDT of {n} entries"),
            DescError::LdtBaseMisaligned(b) => write!(f, "LDT base {b:#x} not page-aligned"),
            DescError::LdtOutsideGuest(b) => {
                write!(f, "LDT at {b:#x} reaches outside guest address space")
            }
        }
    }
}

/// May a guest call gate transfer to `sel`? Xen's `guest_gate_selector_okay` for 64-bit PV:
/// a guest GDT entry, the guest's flat 64-bit code selector exactly (RPL 3 included), or
/// any LDT selector (the LDT is all guest entries).
const fn gate_target_ok(sel: u16) -> bool {
    ((sel >> 3) as usize) < FIRST_RESERVED_GDT_ENTRY || sel == FLAT_KERNEL_CS || sel & 4 != 0
}

/// Checks one 8-byte GDT or LDT entry of a 64-bit PV guest and returns what to store (the
/// rules and their reasons are in the [module documentation](self)). A 16-byte
/// descriptor's second slot is checked by its own call.
pub const fn check_descriptor(raw: u64) -> Result<Descriptor, DescError> {
    use bits::*;

    if raw & PRESENT == 0 {
        return Ok(Descriptor {
            raw,
            kind: DescKind::NotPresent,
        });
    }
    // Every DPL below the guest kernel's ring (3) becomes 3; 3 is already the weakest.
    let raised = raw | DPL_MASK;
    if raw & S != 0 {
        let kind = if raw & CODE != 0 {
            DescKind::Code
        } else {
            DescKind::Data
        };
        return Ok(Descriptor { raw: raised, kind });
    }
    match ((raw & TYPE_MASK) >> TYPE_SHIFT) as u8 {
        system_type::UPPER_HALF => Ok(Descriptor {
            raw,
            kind: DescKind::UpperHalf,
        }),
        system_type::CALL_GATE => {
            let target = ((raw & GATE_SELECTOR_MASK) >> GATE_SELECTOR_SHIFT) as u16;
            if !gate_target_ok(target) {
                return Err(DescError::GateTarget(target));
            }
            if raw & GATE_RESERVED != 0 {
                return Err(DescError::GateReservedBits);
            }
            // DPL 0: using the gate traps. The gate's own DPL (after the raise: 3) is kept
            // in the target's RPL, where the emulation finds it.
            let dpl = (raised & DPL_MASK) >> DPL_SHIFT;
            let target = (target as u64 & !3) | dpl;
            let stored = (raw & !DPL_MASK & !GATE_SELECTOR_MASK) | (target << GATE_SELECTOR_SHIFT);
            Ok(Descriptor {
                raw: stored,
                kind: DescKind::CallGate,
            })
        }
        system_type::LDT => Err(DescError::Ldt),
        system_type::TSS_AVAILABLE | system_type::TSS_BUSY => Err(DescError::Tss),
        system_type::INTERRUPT_GATE => Err(DescError::InterruptGate),
        system_type::TRAP_GATE => Err(DescError::TrapGate),
        reserved => Err(DescError::ReservedType(reserved)),
    }
}

/// Checks every entry of a descriptor-table frame and, if all pass, replaces each with the
/// value [`check_descriptor`] stores. Returns whether any entry changed (then the caller
/// writes the page back), or the index of the first refused entry and why, leaving `entries`
/// untouched.
///
/// All 512 slots are checked whatever the table's entry count, as Xen's
/// `validate_segdesc_page`: the GDTR limit covers the whole window (`arch::x86_64::gdt`
/// loads 0xffff), so a selector can reach slots past `entries` in the last GDT frame, and
/// one `SegDesc` frame may serve several tables of different sizes. Linux keeps the rest of
/// its GDT and LDT pages zeroed for this reason.
pub fn check_page(entries: &mut [u64; ENTRIES_PER_PAGE]) -> Result<bool, (usize, DescError)> {
    for (i, &raw) in entries.iter().enumerate() {
        if let Err(e) = check_descriptor(raw) {
            return Err((i, e));
        }
    }
    let mut changed = false;
    for entry in entries.iter_mut() {
        // Every entry passed above; `check_descriptor` is pure, so this is the same answer.
        if let Ok(d) = check_descriptor(*entry) {
            changed |= d.raw != *entry;
            *entry = d.raw;
        }
    }
    Ok(changed)
}

/// How many frames `set_gdt(frames, entries)` reads from the guest's list:
/// `ceil(entries / 512)`, after refusing more than `FIRST_RESERVED_GDT_ENTRY` entries (Xen's
/// `do_set_gdt` checks the count before it copies the list).
/// The base a segment register gets from loading a selector of descriptor `raw`: `None`
/// unless it is a present code or data segment a ring-3 selector may load (DPL 3: the
/// checked descriptors a guest installs all are).
pub const fn segment_base(raw: u64) -> Option<u32> {
    if raw & bits::PRESENT == 0 || raw & bits::S == 0 {
        return None;
    }
    if (raw & bits::DPL_MASK) >> bits::DPL_SHIFT != 3 {
        return None;
    }
    Some((((raw >> 16) & 0xff_ffff) | (((raw >> 56) & 0xff) << 24)) as u32)
}

pub const fn gdt_frame_count(entries: u32) -> Result<usize, DescError> {
    if entries as usize > FIRST_RESERVED_GDT_ENTRY {
        return Err(DescError::TooManyGdtEntries(entries));
    }
    Ok((entries as usize).div_ceil(ENTRIES_PER_PAGE))
}

/// A vCPU's GDT as the guest set it: its frames (the first [`GuestGdt::frames`] of the 14
/// guest pages of the GDT window) and entry count.
///
/// The window maps each frame writable for the hypervisor (as Xen maps them
/// `__PAGE_HYPERVISOR_RW`): the CPU sets a descriptor's accessed bit when it loads it. The
/// window's other guest pages must map a zeroed frame (every entry not present), as Xen's
/// `zero_page`, since the GDTR limit reaches them too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestGdt {
    frames: [Mfn; FIRST_RESERVED_GDT_PAGE],
    entries: u32,
}

impl GuestGdt {
    /// No GDT: a vCPU's state before `set_gdt`, and what `set_gdt(_, 0)` gives.
    pub const EMPTY: GuestGdt = GuestGdt {
        frames: [Mfn(0); FIRST_RESERVED_GDT_PAGE],
        entries: 0,
    };

    /// The frames, `ceil(entries / 512)` of them.
    pub fn frames(&self) -> &[Mfn] {
        &self.frames[..(self.entries as usize).div_ceil(ENTRIES_PER_PAGE)]
    }

    pub const fn entries(&self) -> u32 {
        self.entries
    }
}

impl Default for GuestGdt {
    fn default() -> Self {
        GuestGdt::EMPTY
    }
}

/// Checks the arguments of `set_gdt(frames, entries)`: the entry count (see
/// [`gdt_frame_count`]) and that `frames` holds the frames read for it. The frames
/// themselves are the caller's: each taken as a `SegDesc` frame of the domain, then its
/// entries checked with [`check_page`] (all references dropped again if one fails).
pub fn validate_set_gdt(frames: &[u64], entries: u32) -> Result<GuestGdt, DescError> {
    let expected = gdt_frame_count(entries)?;
    if frames.len() != expected {
        return Err(DescError::FrameCount {
            expected,
            given: frames.len(),
        });
    }
    let mut gdt = GuestGdt {
        frames: GuestGdt::EMPTY.frames,
        entries,
    };
    for (slot, &frame) in gdt.frames.iter_mut().zip(frames) {
        *slot = Mfn(frame);
    }
    Ok(gdt)
}

/// A checked `update_descriptor(maddr, desc)`: where to write and what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescriptorUpdate {
    /// The frame (PV guests name it by machine address).
    pub mfn: Mfn,
    /// The entry within the frame.
    pub slot: usize,
    /// The value to write.
    pub desc: Descriptor,
}

/// Checks `update_descriptor(maddr, desc)`: an 8-byte-aligned address (else the write
/// would corrupt two adjacent entries) and a descriptor that passes [`check_descriptor`].
/// The caller then takes the frame as `SegDesc` if it has that type, else as `Writable`,
/// and writes [`Descriptor::raw`].
pub const fn validate_update_descriptor(
    maddr: u64,
    desc: u64,
) -> Result<DescriptorUpdate, DescError> {
    if maddr % 8 != 0 {
        return Err(DescError::Misaligned(maddr));
    }
    let desc = match check_descriptor(desc) {
        Ok(d) => d,
        Err(e) => return Err(e),
    };
    Ok(DescriptorUpdate {
        mfn: Mfn::containing(maddr),
        slot: ((maddr & (PAGE_SIZE - 1)) / 8) as usize,
        desc,
    })
}

/// A vCPU's LDT as `MMUEXT_SET_LDT` set it: a guest-virtual base and an entry count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestLdt {
    base: u64,
    entries: u32,
}

impl GuestLdt {
    /// No LDT.
    pub const EMPTY: GuestLdt = GuestLdt {
        base: 0,
        entries: 0,
    };

    /// The guest-virtual base (0 when there is no LDT).
    pub const fn base(&self) -> u64 {
        self.base
    }

    pub const fn entries(&self) -> u32 {
        self.entries
    }

    /// The guest pages the LDT spans, each taken as a `SegDesc` frame and checked with
    /// [`check_page`] when mapped.
    pub const fn pages(&self) -> usize {
        (self.entries as usize * 8).div_ceil(PAGE_SIZE as usize)
    }
}

/// Lowest non-canonical address: the end of the lower half of guest address space.
const LOWER_HALF_END: u64 = 1 << 47;

/// Checks `MMUEXT_SET_LDT(base, entries)`. 0 entries means no LDT and the base is ignored
/// (stored as 0), as Xen. Otherwise: at most [`MAX_LDT_ENTRIES`], a page-aligned base (the
/// hypervisor maps the LDT page by page) and the whole table inside guest address space,
/// the lower half or from `HYPERVISOR_VIRT_END` up, never the hypervisor's hole or the
/// non-canonical gap. Xen checks only the base (`__addr_ok`) and relies on the page walk
/// failing further on; checking the last byte too refuses nothing a guest can use.
pub const fn validate_set_ldt(base: u64, entries: u32) -> Result<GuestLdt, DescError> {
    if entries > MAX_LDT_ENTRIES {
        return Err(DescError::TooManyLdtEntries(entries));
    }
    if entries == 0 {
        return Ok(GuestLdt::EMPTY);
    }
    if base & (PAGE_SIZE - 1) != 0 {
        return Err(DescError::LdtBaseMisaligned(base));
    }
    let last = match base.checked_add(entries as u64 * 8 - 1) {
        Some(last) => last,
        None => return Err(DescError::LdtOutsideGuest(base)),
    };
    let in_lower_half = last < LOWER_HALF_END;
    let in_upper_half = base >= HYPERVISOR_VIRT_END;
    if !in_lower_half && !in_upper_half {
        return Err(DescError::LdtOutsideGuest(base));
    }
    Ok(GuestLdt { base, entries })
}

const _: () = assert!(PAGE_SIZE as usize == ENTRIES_PER_PAGE * 8);
const _: () = assert!(FIRST_RESERVED_GDT_ENTRY == FIRST_RESERVED_GDT_PAGE * ENTRIES_PER_PAGE);

#[cfg(test)]
mod tests {
    use super::*;

    /// `GDT_ENTRY_INIT(flags, base, limit)` of Linux's `asm/desc_defs.h`.
    const fn gdt_entry_init(flags: u16, base: u32, limit: u32) -> u64 {
        let flags = flags as u64;
        let base = base as u64;
        let limit = limit as u64;
        (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | ((flags & 0xff) << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((flags >> 12) & 0xf) << 52)
            | (((base >> 24) & 0xff) << 56)
    }

    /// A 64-bit call gate's low half: `access` is the byte at bits 40..47.
    const fn call_gate(target: u16, offset: u32, access: u8) -> u64 {
        (offset as u64 & 0xffff)
            | ((target as u64) << 16)
            | ((access as u64) << 40)
            | ((offset as u64 >> 16) << 48)
    }

    /// A present system descriptor of `ty`, DPL 0, otherwise zero.
    const fn system(ty: u8) -> u64 {
        (0x80 | ty as u64) << 40
    }

    // Linux 6.1, arch/x86/include/asm/segment.h (x86-64) and cpu/common.c's `gdt_page`.
    const GDT_ENTRY_KERNEL32_CS: usize = 1;
    const GDT_ENTRY_KERNEL_CS: usize = 2;
    const GDT_ENTRY_KERNEL_DS: usize = 3;
    const GDT_ENTRY_DEFAULT_USER32_CS: usize = 4;
    const GDT_ENTRY_DEFAULT_USER_DS: usize = 5;
    const GDT_ENTRY_DEFAULT_USER_CS: usize = 6;
    const GDT_ENTRY_TSS: usize = 8;
    const GDT_ENTRY_LDT: usize = 10;
    const GDT_ENTRY_TLS_MIN: usize = 12;
    const GDT_ENTRY_CPUNODE: usize = 15;
    const GDT_ENTRIES: u32 = 16;

    /// CPU 1's `gdt_page` as a Linux PV guest hands it to `set_gdt`: the static kernel and
    /// user segments (DPL 0 for the kernel ones), the CPUNODE entry `setup_getcpu` writes
    /// (limit = cpu | node << 12; read-only expand-down data, DPL 3, 32-bit) and a
    /// `set_thread_area` TLS entry. `xen_write_gdt_entry` ignores TSS and LDT descriptors,
    /// so those slots stay zero, as does the rest of the page.
    fn linux_gdt_page() -> [u64; ENTRIES_PER_PAGE] {
        let mut page = [0; ENTRIES_PER_PAGE];
        page[GDT_ENTRY_KERNEL32_CS] = gdt_entry_init(0xc09b, 0, 0xfffff);
        page[GDT_ENTRY_KERNEL_CS] = gdt_entry_init(0xa09b, 0, 0xfffff);
        page[GDT_ENTRY_KERNEL_DS] = gdt_entry_init(0xc093, 0, 0xfffff);
        page[GDT_ENTRY_DEFAULT_USER32_CS] = gdt_entry_init(0xc0fb, 0, 0xfffff);
        page[GDT_ENTRY_DEFAULT_USER_DS] = gdt_entry_init(0xc0f3, 0, 0xfffff);
        page[GDT_ENTRY_DEFAULT_USER_CS] = gdt_entry_init(0xa0fb, 0, 0xfffff);
        page[GDT_ENTRY_TLS_MIN] = gdt_entry_init(0xc0f3, 0x1234_5678, 0xfffff);
        page[GDT_ENTRY_CPUNODE] = gdt_entry_init(0x40f5, 0, 1);
        page
    }

    #[test]
    fn linux_values_are_the_known_descriptors() {
        let page = linux_gdt_page();
        assert_eq!(page[GDT_ENTRY_KERNEL_CS], 0x00af_9b00_0000_ffff);
        assert_eq!(page[GDT_ENTRY_KERNEL_DS], 0x00cf_9300_0000_ffff);
        assert_eq!(page[GDT_ENTRY_DEFAULT_USER_CS], 0x00af_fb00_0000_ffff);
        assert_eq!(page[GDT_ENTRY_CPUNODE], 0x0040_f500_0000_0001);
    }

    #[test]
    fn linux_gdt_is_accepted_with_kernel_segments_raised_to_dpl3() {
        let gdt = validate_set_gdt(&[0x1234], GDT_ENTRIES).unwrap();
        assert_eq!(gdt.frames(), &[Mfn(0x1234)]);
        assert_eq!(gdt.entries(), GDT_ENTRIES);

        let written = linux_gdt_page();
        let mut page = written;
        assert_eq!(check_page(&mut page), Ok(true));
        assert_eq!(page[GDT_ENTRY_KERNEL32_CS], 0x00cf_fb00_0000_ffff);
        assert_eq!(page[GDT_ENTRY_KERNEL_CS], 0x00af_fb00_0000_ffff);
        assert_eq!(page[GDT_ENTRY_KERNEL_DS], 0x00cf_f300_0000_ffff);
        // Already DPL 3: as written.
        for i in [
            GDT_ENTRY_DEFAULT_USER32_CS,
            GDT_ENTRY_DEFAULT_USER_DS,
            GDT_ENTRY_DEFAULT_USER_CS,
            GDT_ENTRY_TLS_MIN,
            GDT_ENTRY_CPUNODE,
        ] {
            assert_eq!(page[i], written[i], "entry {i}");
        }
        for i in [0, 7, GDT_ENTRY_TSS, GDT_ENTRY_TSS + 1, GDT_ENTRY_LDT, 511] {
            assert_eq!(page[i], 0, "entry {i}");
        }
        // The fixed-up page checks again without change (update_descriptor's re-checks).
        assert_eq!(check_page(&mut page), Ok(false));
        assert_eq!(
            check_descriptor(written[GDT_ENTRY_KERNEL_CS])
                .unwrap()
                .kind(),
            DescKind::Code
        );
        assert_eq!(
            check_descriptor(written[GDT_ENTRY_KERNEL_DS])
                .unwrap()
                .kind(),
            DescKind::Data
        );
    }

    #[test]
    fn linux_tls_update_descriptor_is_accepted() {
        // `xen_load_tls` writes each TLS slot of the live GDT frame.
        let maddr = (0x1234 << 12) + (GDT_ENTRY_TLS_MIN as u64 + 1) * 8;
        let tls = gdt_entry_init(0xc0f3, 0x7f00_0000, 0xfffff);
        let u = validate_update_descriptor(maddr, tls).unwrap();
        assert_eq!(u.mfn, Mfn(0x1234));
        assert_eq!(u.slot, GDT_ENTRY_TLS_MIN + 1);
        assert_eq!(u.desc.raw(), tls);
        // Clearing an entry: not present.
        let u = validate_update_descriptor(maddr, 0).unwrap();
        assert_eq!(u.desc.kind(), DescKind::NotPresent);
    }

    #[test]
    fn every_dpl_becomes_3_for_segments() {
        for dpl in 0..4u64 {
            let code = 0x00af_9b00_0000_ffff | (dpl << 45);
            let data = 0x00cf_9300_0000_ffff | (dpl << 45);
            assert_eq!(check_descriptor(code).unwrap().raw(), 0x00af_fb00_0000_ffff);
            assert_eq!(check_descriptor(data).unwrap().raw(), 0x00cf_f300_0000_ffff);
        }
    }

    #[test]
    fn unusual_segments_are_allowed() {
        // Conforming code DPL 0 (type 0xf), 16-bit code, expand-down data, L and D both
        // set, a base in the hypervisor's range: none reaches anything paging does not
        // guard, so all pass with DPL 3.
        for (raw, fixed) in [
            (0x00af_9f00_0000_ffff, 0x00af_ff00_0000_ffff),
            (0x0000_9a00_0000_ffff, 0x0000_fa00_0000_ffff),
            (0x00cf_9700_0000_ffff, 0x00cf_f700_0000_ffff),
            (0x00ef_9b00_0000_ffff, 0x00ef_fb00_0000_ffff),
            (0xff8f_9300_0000_ffff, 0xff8f_f300_0000_ffff),
        ] {
            assert_eq!(check_descriptor(raw).unwrap().raw(), fixed, "{raw:#x}");
        }
    }

    #[test]
    fn not_present_entries_are_stored_as_written() {
        for raw in [
            0,
            0x0000_0900_0000_0067, // a TSS, not present
            0x00af_1b00_0000_ffff, // DPL 0 code, not present
            0x0000_0e00_0008_0000, // an interrupt gate, not present
            !bits::PRESENT,
        ] {
            let d = check_descriptor(raw).unwrap();
            assert_eq!((d.raw(), d.kind()), (raw, DescKind::NotPresent));
        }
    }

    #[test]
    fn present_type0_is_stored_as_written() {
        // DPL 0 stays 0: the CPU never loads a type-0 system descriptor.
        let raw = system(0) | 0xffff_8880;
        let d = check_descriptor(raw).unwrap();
        assert_eq!((d.raw(), d.kind()), (raw, DescKind::UpperHalf));
    }

    #[test]
    fn system_descriptors_are_refused() {
        assert_eq!(check_descriptor(system(2)), Err(DescError::Ldt));
        assert_eq!(check_descriptor(system(9)), Err(DescError::Tss));
        assert_eq!(check_descriptor(system(11)), Err(DescError::Tss));
        assert_eq!(check_descriptor(system(14)), Err(DescError::InterruptGate));
        assert_eq!(check_descriptor(system(15)), Err(DescError::TrapGate));
        for ty in [1, 3, 4, 5, 6, 7, 8, 10, 13] {
            assert_eq!(
                check_descriptor(system(ty)),
                Err(DescError::ReservedType(ty))
            );
            // DPL 3 does not help.
            assert_eq!(
                check_descriptor(system(ty) | bits::DPL_MASK),
                Err(DescError::ReservedType(ty))
            );
        }
        // The attack test kernel's TSS (limit 0x67, present, type 9).
        assert_eq!(check_descriptor(0x0000_8900_0000_0067), Err(DescError::Tss));
        // Linux's interrupt gate for vector 0 (kernel CS 0x10, DPL 0) and the int3 one (DPL 3).
        assert_eq!(
            check_descriptor(0x8180_8e00_0010_1234),
            Err(DescError::InterruptGate)
        );
        assert_eq!(
            check_descriptor(0x8180_ee00_0010_1234),
            Err(DescError::InterruptGate)
        );
        for e in [DescError::Ldt, DescError::GateTarget(0xe008)] {
            assert_eq!(e.errno(), XenErrno::Einval);
        }
    }

    #[test]
    fn call_gates_are_stored_at_dpl0_with_the_dpl_in_the_target_rpl() {
        for (target, stored_target) in [
            (0x0010, 0x0013),                                       // guest GDT entry 2, RPL 0
            (0x0033, 0x0033),                                       // guest GDT entry 6, RPL 3
            (((FIRST_RESERVED_GDT_ENTRY - 1) << 3) as u16, 0xdffb), // last guest entry
            (FLAT_KERNEL_CS, FLAT_KERNEL_CS),                       // 0xe033
            (0x0007, 0x0007),                                       // LDT entry 0
            (0xe00c, 0xe00f), // LDT entry 0x1c01: the LDT is guest's
        ] {
            for dpl_access in [0xec, 0x8c, 0xac] {
                let raw = call_gate(target, 0x8180_1234, dpl_access);
                let d = check_descriptor(raw).unwrap();
                assert_eq!(d.kind(), DescKind::CallGate);
                assert_eq!(
                    d.raw(),
                    call_gate(stored_target, 0x8180_1234, 0x8c),
                    "target {target:#x} access {dpl_access:#x}"
                );
            }
        }
    }

    #[test]
    fn call_gates_to_the_hypervisor_are_refused() {
        for target in [
            0xe008u16, // the hypervisor's ring-0 CS
            0xe010,    // its DS
            0xe040,    // its TSS
            0xe023,    // FLAT_RING3_CS32: only FLAT_KERNEL_CS is admitted
            0xe030,    // FLAT_KERNEL_CS with RPL 0: the exact selector only
            (FIRST_RESERVED_GDT_ENTRY << 3) as u16,
            0xfff8,
        ] {
            assert_eq!(
                check_descriptor(call_gate(target, 0, 0xec)),
                Err(DescError::GateTarget(target))
            );
        }
    }

    #[test]
    fn call_gates_with_reserved_bits_are_refused() {
        for bit in 32..40 {
            assert_eq!(
                check_descriptor(call_gate(0x0033, 0, 0xec) | (1 << bit)),
                Err(DescError::GateReservedBits),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn sixteen_byte_descriptors_check_both_slots() {
        // A gate with its usual upper half (offset 63:32, reserved dword zero): not present.
        let mut page = [0; ENTRIES_PER_PAGE];
        page[8] = call_gate(0x0033, 0x8180_1234, 0xec);
        page[9] = 0xffff_ffff;
        assert_eq!(check_page(&mut page), Ok(true));
        assert_eq!(page[8], call_gate(0x0033, 0x8180_1234, 0x8c));
        assert_eq!(page[9], 0xffff_ffff);

        // An upper half made into a DPL 0 code segment is a segment like any other.
        let mut page = [0; ENTRIES_PER_PAGE];
        page[8] = call_gate(0x0033, 0, 0xec);
        page[9] = 0x00af_9b00_0000_ffff;
        assert_eq!(check_page(&mut page), Ok(true));
        assert_eq!(page[9], 0x00af_fb00_0000_ffff);

        // An upper half made into a TSS is refused: the slot is not skipped.
        let mut page = [0; ENTRIES_PER_PAGE];
        page[8] = call_gate(0x0033, 0, 0xec);
        page[9] = 0x0000_8900_0000_0067;
        let before = page;
        assert_eq!(check_page(&mut page), Err((9, DescError::Tss)));
        assert_eq!(page, before, "a refused page is left untouched");

        // A TSS whose upper half alone would pass is still refused at its first slot.
        let mut page = [0; ENTRIES_PER_PAGE];
        page[GDT_ENTRY_TSS] = 0x0000_8900_0000_0067;
        assert_eq!(check_page(&mut page), Err((GDT_ENTRY_TSS, DescError::Tss)));
    }

    #[test]
    fn sixteen_byte_descriptors_at_a_page_boundary() {
        // A gate in the last slot: accepted; its upper half is the next frame's slot 0,
        // checked with that frame.
        let mut last = [0; ENTRIES_PER_PAGE];
        last[511] = call_gate(0x0010, 0x1000, 0xec);
        assert_eq!(check_page(&mut last), Ok(true));
        assert_eq!(last[511], call_gate(0x0013, 0x1000, 0x8c));
        let mut next = [0; ENTRIES_PER_PAGE];
        next[0] = 0xffff_8000; // the gate's upper half: not present
        assert_eq!(check_page(&mut next), Ok(false));
        next[0] = system(0) | 0xffff_8000; // present type 0: as written
        assert_eq!(check_page(&mut next), Ok(false));
        next[0] = system(14);
        assert_eq!(check_page(&mut next), Err((0, DescError::InterruptGate)));

        // LDT and TSS descriptors in the last slot: refused there.
        for (ty, err) in [(2, DescError::Ldt), (9, DescError::Tss)] {
            let mut page = [0; ENTRIES_PER_PAGE];
            page[511] = system(ty) | bits::DPL_MASK;
            assert_eq!(check_page(&mut page), Err((511, err)));
        }
    }

    #[test]
    fn check_page_checks_slots_past_the_entry_count() {
        // A 16-entry GDT frame with a DPL 0 segment in slot 100 and a TSS in slot 200: the
        // window's 0xffff limit reaches both.
        let mut page = linux_gdt_page();
        page[100] = 0x00af_9b00_0000_ffff;
        assert_eq!(check_page(&mut page), Ok(true));
        assert_eq!(page[100], 0x00af_fb00_0000_ffff);
        page[200] = 0x0000_8900_0000_0067;
        assert_eq!(check_page(&mut page), Err((200, DescError::Tss)));
        // The first refused entry is reported.
        page[150] = system(15);
        assert_eq!(check_page(&mut page), Err((150, DescError::TrapGate)));
    }

    #[test]
    fn set_gdt_entry_counts() {
        let frames: [u64; 15] = core::array::from_fn(|i| 0x100 + i as u64);
        for (entries, nr) in [
            (0, 0),
            (1, 1),
            (16, 1),
            (512, 1),
            (513, 2),
            (1024, 2),
            (1025, 3),
            (7167, 14),
            (7168, 14),
        ] {
            assert_eq!(gdt_frame_count(entries), Ok(nr), "{entries}");
            let gdt = validate_set_gdt(&frames[..nr], entries).unwrap();
            assert_eq!(gdt.entries(), entries);
            let want: Vec<Mfn> = frames[..nr].iter().map(|&f| Mfn(f)).collect();
            assert_eq!(gdt.frames(), &want[..]);
        }
        for entries in [7169, 8192, u32::MAX] {
            assert_eq!(
                gdt_frame_count(entries),
                Err(DescError::TooManyGdtEntries(entries))
            );
            assert_eq!(
                validate_set_gdt(&frames[..14], entries),
                Err(DescError::TooManyGdtEntries(entries))
            );
        }
        assert_eq!(
            validate_set_gdt(&frames[..2], 512),
            Err(DescError::FrameCount {
                expected: 1,
                given: 2
            })
        );
        assert_eq!(
            validate_set_gdt(&frames[..1], 513),
            Err(DescError::FrameCount {
                expected: 2,
                given: 1
            })
        );
        assert_eq!(
            validate_set_gdt(&frames[..15], 7168),
            Err(DescError::FrameCount {
                expected: 14,
                given: 15
            })
        );
        assert_eq!(validate_set_gdt(&[], 0), Ok(GuestGdt::EMPTY));
        assert_eq!(GuestGdt::default().frames(), &[]);
    }

    #[test]
    fn update_descriptor_rules() {
        for maddr in [1, 4, 0x1234_5007] {
            assert_eq!(
                validate_update_descriptor(maddr, 0),
                Err(DescError::Misaligned(maddr))
            );
        }
        let u = validate_update_descriptor(0x5000 + 4088, 0x00af_9b00_0000_ffff).unwrap();
        assert_eq!((u.mfn, u.slot), (Mfn(5), 511));
        assert_eq!(u.desc.raw(), 0x00af_fb00_0000_ffff);
        assert_eq!(
            validate_update_descriptor(0x5000, system(11)),
            Err(DescError::Tss)
        );
        assert_eq!(
            validate_update_descriptor(0x5008, call_gate(0xe008, 0, 0xec)),
            Err(DescError::GateTarget(0xe008))
        );
    }

    #[test]
    fn set_ldt_rules() {
        // No LDT: the base does not matter.
        assert_eq!(validate_set_ldt(0xdead_beef, 0), Ok(GuestLdt::EMPTY));
        assert_eq!(GuestLdt::EMPTY.pages(), 0);

        let ldt = validate_set_ldt(0xffff_8880_0123_4000, 1).unwrap();
        assert_eq!(
            (ldt.base(), ldt.entries(), ldt.pages()),
            (0xffff_8880_0123_4000, 1, 1)
        );
        let ldt = validate_set_ldt(0x7000, MAX_LDT_ENTRIES).unwrap();
        assert_eq!(ldt.pages(), 16);
        assert_eq!(validate_set_ldt(0x7000, 513).unwrap().pages(), 2);

        assert_eq!(
            validate_set_ldt(0x7000, MAX_LDT_ENTRIES + 1),
            Err(DescError::TooManyLdtEntries(MAX_LDT_ENTRIES + 1))
        );
        assert_eq!(
            validate_set_ldt(0x7008, 1),
            Err(DescError::LdtBaseMisaligned(0x7008))
        );

        // The top of the lower half: fits exactly, one entry more crosses into the gap.
        let top = LOWER_HALF_END - PAGE_SIZE;
        assert!(validate_set_ldt(top, 512).is_ok());
        assert_eq!(
            validate_set_ldt(top, 513),
            Err(DescError::LdtOutsideGuest(top))
        );
        // The last page of the address space: fits exactly, one entry more wraps.
        let last = 0u64.wrapping_sub(PAGE_SIZE);
        assert!(validate_set_ldt(last, 512).is_ok());
        assert_eq!(
            validate_set_ldt(last, 513),
            Err(DescError::LdtOutsideGuest(last))
        );
        // The non-canonical gap and the hypervisor's hole, up to its last page.
        for base in [
            LOWER_HALF_END,
            0x0000_ffff_ffff_f000,
            0xffff_8000_0000_0000,
            0xffff_8040_0000_0000,
            HYPERVISOR_VIRT_END - PAGE_SIZE,
        ] {
            assert_eq!(
                validate_set_ldt(base, 1),
                Err(DescError::LdtOutsideGuest(base)),
                "{base:#x}"
            );
        }
        assert!(validate_set_ldt(HYPERVISOR_VIRT_END, 1).is_ok());
    }

    #[test]
    fn segment_bases() {
        // A present ring-3 data segment with base 0x12345678.
        let d = 0x12cf_f234_5678_ffff_u64;
        assert_eq!(segment_base(d), Some(0x1234_5678));
        assert_eq!(segment_base(d & !bits::PRESENT), None);
        assert_eq!(segment_base(d & !bits::DPL_MASK), None, "ring 0");
        assert_eq!(segment_base(d & !bits::S), None, "a system descriptor");
    }
}
