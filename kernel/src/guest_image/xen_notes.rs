//! What a PV kernel tells its domain builder: the Xen ELF notes (`public/elfnote.h`) or,
//! in kernels older than the notes, the `__xen_guest` section string.
//!
//! The rules are those of Xen's libelf (`xen/common/libelf/libelf-dominfo.c`), kept as
//! facts so a kernel Xen accepts is accepted here and vice versa:
//! - notes come from `PT_NOTE` segments; only if none of those holds a Xen note are
//!   `SHT_NOTE` sections read; only if neither has one is `__xen_guest` read;
//! - the kernel must name the `generic` loader or a `linux` guest OS, and Xen `xen-3.0`;
//! - `VIRT_BASE` defaults to 0; `PADDR_OFFSET` defaults to 0 with notes but to
//!   `VIRT_BASE` with `__xen_guest`, and may not be given without `VIRT_BASE`;
//! - a missing `ENTRY` is the ELF entry point; the legacy `HYPERCALL_PAGE` is a page
//!   number relative to `VIRT_BASE`;
//! - the entry point must lie inside the kernel's virtual extent, which must not start
//!   below `VIRT_BASE`, and `INIT_P2M` must not lie inside it;
//! - in the `FEATURES` string an unknown feature is ignored unless it is required (`!`).
//!
//! Stricter than libelf, for a clearer error on a broken or hostile image: a malformed
//! note record, a numeric note that is not 1, 2, 4 or 8 bytes, a string note that is not
//! text, and a legacy number that does not parse are refused rather than read as 0.

use alloc::{
    string::{String, ToString},
    vec::Vec,
};
use core::{fmt, str};

use ferrovisor_abi::xen::{elfnote::*, features::*};

use super::elf::{notes, Elf, ElfError};

/// `XENFEAT_NR_SUBMAPS` (`public/features.h`) is 1: feature bits fit in one `u32`.
pub type FeatureBits = u32;
const _: () = assert!(XENFEAT_NR_SUBMAPS == 1);

/// Feature names as the `FEATURES` string spells them: `public/features.h`'s names
/// without `XENFEAT_` (a superset of the seven libelf knows; the others are ignored there
/// as unknown, which only matters if a kernel required one).
const FEATURE_NAMES: &[(&str, u32)] = &[
    ("writable_page_tables", XENFEAT_WRITABLE_PAGE_TABLES),
    (
        "writable_descriptor_tables",
        XENFEAT_WRITABLE_DESCRIPTOR_TABLES,
    ),
    ("auto_translated_physmap", XENFEAT_AUTO_TRANSLATED_PHYSMAP),
    ("supervisor_mode_kernel", XENFEAT_SUPERVISOR_MODE_KERNEL),
    ("pae_pgdir_above_4gb", XENFEAT_PAE_PGDIR_ABOVE_4GB),
    (
        "mmu_pt_update_preserve_ad",
        XENFEAT_MMU_PT_UPDATE_PRESERVE_AD,
    ),
    ("highmem_assist", XENFEAT_HIGHMEM_ASSIST),
    ("gnttab_map_avail_bits", XENFEAT_GNTTAB_MAP_AVAIL_BITS),
    ("hvm_callback_vector", XENFEAT_HVM_CALLBACK_VECTOR),
    ("hvm_safe_pvclock", XENFEAT_HVM_SAFE_PVCLOCK),
    ("hvm_pirqs", XENFEAT_HVM_PIRQS),
    ("dom0", XENFEAT_DOM0),
    (
        "memory_op_vnode_supported",
        XENFEAT_MEMORY_OP_VNODE_SUPPORTED,
    ),
    ("ARM_SMCCC_supported", XENFEAT_ARM_SMCCC_SUPPORTED),
    ("linux_rsdp_unrestricted", XENFEAT_LINUX_RSDP_UNRESTRICTED),
    ("not_direct_mapped", XENFEAT_NOT_DIRECT_MAPPED),
    ("direct_mapped", XENFEAT_DIRECT_MAPPED),
];

/// The `XENFEAT_` name of a feature bit, for logs.
pub fn feature_name(bit: u32) -> Option<&'static str> {
    FEATURE_NAMES
        .iter()
        .find(|(_, b)| *b == bit)
        .map(|(n, _)| *n)
}

/// Xen's feature flags a kernel supports and requires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeatureSet {
    /// Features the kernel can use (every required feature is also supported).
    pub supported: FeatureBits,
    /// Features the kernel cannot run without (`!name` in the `FEATURES` string).
    pub required: FeatureBits,
}

impl FeatureSet {
    pub const fn supports(&self, bit: u32) -> bool {
        bit < 32 && self.supported & (1 << bit) != 0
    }

    pub const fn requires(&self, bit: u32) -> bool {
        bit < 32 && self.required & (1 << bit) != 0
    }

    /// Add the features of a `|`-separated `FEATURES` string.
    pub fn add_string(&mut self, list: &str) -> Result<(), NotesError> {
        for item in list.split('|') {
            let (name, required) = match item.strip_prefix('!') {
                Some(name) => (name, true),
                None => (item, false),
            };
            match FEATURE_NAMES.iter().find(|(n, _)| *n == name) {
                Some(&(_, bit)) => {
                    self.supported |= 1 << bit;
                    if required {
                        self.required |= 1 << bit;
                    }
                }
                None if required => return Err(NotesError::UnknownRequiredFeature(name.into())),
                None => {}
            }
        }
        Ok(())
    }
}

/// The `PAE_MODE` note (x86-32 only; recorded for completeness).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PaeMode {
    #[default]
    No,
    Yes,
    ExtendedCr3,
    Bimodal,
}

/// Where the information came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InfoSource {
    NoteSegments,
    NoteSections,
    LegacyXenGuest,
}

/// Everything the domain builder needs from a PV kernel, defaults applied and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XenGuestInfo {
    pub source: InfoSource,
    /// Virtual entry point (`ENTRY`, else the ELF `e_entry`).
    pub entry: u64,
    /// Virtual address of the page the builder fills with hypercall stubs.
    pub hypercall_page: Option<u64>,
    pub virt_base: u64,
    pub paddr_offset: u64,
    pub xen_version: String,
    pub guest_os: String,
    pub guest_version: Option<String>,
    pub loader: String,
    /// `FEATURES` and `SUPPORTED_FEATURES` combined, as Xen does.
    pub features: FeatureSet,
    /// The `SUPPORTED_FEATURES` note alone (0 when absent).
    pub supported_features: FeatureBits,
    /// Where the kernel wants the initial phys-to-machine list mapped.
    pub init_p2m: Option<u64>,
    pub pae_mode: PaeMode,
    pub hv_start_low: Option<u64>,
    /// The kernel accepts an initrd not mapped by its initial page tables.
    pub mod_start_pfn: bool,
    pub suspend_cancel: bool,
    /// Mask/value pairs recognising non-present L1 entries that hold MFNs.
    pub l1_mfn_valid: Vec<(u64, u64)>,
    pub bsd_symtab: bool,
    /// PVH entry point (ignored for PV).
    pub phys32_entry: Option<u64>,
}

/// Why the Xen guest information is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotesError {
    /// Neither Xen notes nor `__xen_guest`.
    NotXenKernel,
    /// A malformed note record.
    Elf(ElfError),
    TooManyNotes,
    BadNumericNote {
        name: &'static str,
        size: usize,
    },
    BadStringNote {
        name: &'static str,
    },
    BadLegacyNumber {
        key: String,
        value: String,
    },
    UnknownRequiredFeature(String),
    UnsupportedGuest {
        loader: String,
        guest_os: String,
    },
    UnsupportedXenVersion(String),
    PaddrOffsetWithoutVirtBase,
    OutOfBounds {
        virt_base: u64,
        start: u64,
        end: u64,
        entry: u64,
    },
    P2mInsideKernel {
        p2m: u64,
        start: u64,
        end: u64,
    },
}

impl From<ElfError> for NotesError {
    fn from(e: ElfError) -> Self {
        NotesError::Elf(e)
    }
}

impl fmt::Display for NotesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotesError::NotXenKernel => f.write_str(
                "not a Xen PV kernel: no Xen ELF notes (and no __xen_guest section); \
                 build Linux with CONFIG_XEN_PV=y",
            ),
            NotesError::Elf(e) => write!(f, "{e}"),
            NotesError::TooManyNotes => write!(f, "more than {MAX_NOTES} ELF notes"),
            NotesError::BadNumericNote { name, size } => write!(
                f,
                "the Xen {name} note is {size} bytes long; a number must be 1, 2, 4 or 8"
            ),
            NotesError::BadStringNote { name } => {
                write!(f, "the Xen {name} note is not ASCII text")
            }
            NotesError::BadLegacyNumber { key, value } => {
                write!(f, "__xen_guest: {key}={value} is not a number")
            }
            NotesError::UnknownRequiredFeature(name) => write!(
                f,
                "the kernel requires the Xen feature \"{name}\", which is unknown"
            ),
            NotesError::UnsupportedGuest { loader, guest_os } => write!(
                f,
                "only kernels for the generic loader or Linux can be loaded (this one says \
                 loader \"{loader}\", guest OS \"{guest_os}\")"
            ),
            NotesError::UnsupportedXenVersion(v) => write!(
                f,
                "the kernel is built for Xen \"{v}\", not the xen-3.0 interface"
            ),
            NotesError::PaddrOffsetWithoutVirtBase => {
                f.write_str("the kernel gives PADDR_OFFSET without VIRT_BASE")
            }
            NotesError::OutOfBounds {
                virt_base,
                start,
                end,
                entry,
            } => write!(
                f,
                "the kernel's addresses are inconsistent: entry {entry:#x}, image \
                 {start:#x}..{end:#x}, VIRT_BASE {virt_base:#x} (the entry must be inside \
                 the image, which must not start below VIRT_BASE)"
            ),
            NotesError::P2mInsideKernel { p2m, start, end } => write!(
                f,
                "INIT_P2M {p2m:#x} lies inside the kernel image {start:#x}..{end:#x}"
            ),
        }
    }
}

/// Bounds the work on hostile input (libelf has a similar cap).
pub const MAX_NOTES: usize = 1024;
/// More `L1_MFN_VALID` pairs than any kernel gives (Linux gives one).
const MAX_L1_MFN_VALID: usize = 16;

/// Values as found, before defaults (libelf's `UNSET_ADDR` is `None`).
#[derive(Default)]
struct Raw {
    entry: Option<u64>,
    hypercall_page: Option<u64>,
    virt_base: Option<u64>,
    paddr_offset: Option<u64>,
    xen_version: String,
    guest_os: String,
    guest_version: Option<String>,
    loader: String,
    features: FeatureSet,
    supported_features: FeatureBits,
    init_p2m: Option<u64>,
    pae_mode: PaeMode,
    hv_start_low: Option<u64>,
    mod_start_pfn: bool,
    suspend_cancel: bool,
    l1_mfn_valid: Vec<(u64, u64)>,
    bsd_symtab: bool,
    phys32_entry: Option<u64>,
}

/// Read the Xen guest information of `elf` and apply libelf's defaults and checks.
pub fn parse(elf: &Elf<'_>) -> Result<XenGuestInfo, NotesError> {
    let mut raw = Raw::default();
    let mut total = 0usize;
    let mut source = None;
    let mut found = 0;
    for (base, seg) in elf.note_segments() {
        found += parse_notes(&mut raw, base, seg, &mut total)?;
    }
    if found > 0 {
        source = Some(InfoSource::NoteSegments);
    } else {
        for (base, sec) in elf.note_sections() {
            found += parse_notes(&mut raw, base, sec, &mut total)?;
        }
        if found > 0 {
            source = Some(InfoSource::NoteSections);
        } else if let Some(guest) = elf.section_by_name(XEN_GUEST_SECTION) {
            parse_legacy(&mut raw, guest)?;
            source = Some(InfoSource::LegacyXenGuest);
        }
    }
    let source = source.ok_or(NotesError::NotXenKernel)?;
    check_and_default(elf, source, raw)
}

fn parse_notes(
    raw: &mut Raw,
    base: usize,
    data: &[u8],
    total: &mut usize,
) -> Result<usize, NotesError> {
    let mut found = 0;
    for note in notes(base, data) {
        let note = note?;
        *total += 1;
        if *total > MAX_NOTES {
            return Err(NotesError::TooManyNotes);
        }
        if note.name == XEN_ELFNOTE_NAME.as_bytes() {
            apply_note(raw, note.note_type, note.desc)?;
            found += 1;
        }
    }
    Ok(found)
}

fn numeric(name: &'static str, desc: &[u8]) -> Result<u64, NotesError> {
    match desc.len() {
        1 | 2 | 4 | 8 => {
            let mut b = [0u8; 8];
            b[..desc.len()].copy_from_slice(desc);
            Ok(u64::from_le_bytes(b))
        }
        size => Err(NotesError::BadNumericNote { name, size }),
    }
}

/// A string note: NUL-terminated ASCII (the whole descriptor if it has no NUL).
fn string(name: &'static str, desc: &[u8]) -> Result<String, NotesError> {
    let text = desc.split(|&b| b == 0).next().unwrap_or(desc);
    match str::from_utf8(text) {
        Ok(s) if s.is_ascii() => Ok(s.to_string()),
        _ => Err(NotesError::BadStringNote { name }),
    }
}

fn apply_note(raw: &mut Raw, note_type: u32, desc: &[u8]) -> Result<(), NotesError> {
    match note_type {
        XEN_ELFNOTE_ENTRY => raw.entry = Some(numeric("ENTRY", desc)?),
        XEN_ELFNOTE_HYPERCALL_PAGE => {
            raw.hypercall_page = Some(numeric("HYPERCALL_PAGE", desc)?);
        }
        XEN_ELFNOTE_VIRT_BASE => raw.virt_base = Some(numeric("VIRT_BASE", desc)?),
        XEN_ELFNOTE_PADDR_OFFSET => raw.paddr_offset = Some(numeric("PADDR_OFFSET", desc)?),
        XEN_ELFNOTE_XEN_VERSION => raw.xen_version = string("XEN_VERSION", desc)?,
        XEN_ELFNOTE_GUEST_OS => raw.guest_os = string("GUEST_OS", desc)?,
        XEN_ELFNOTE_GUEST_VERSION => raw.guest_version = Some(string("GUEST_VERSION", desc)?),
        XEN_ELFNOTE_LOADER => raw.loader = string("LOADER", desc)?,
        XEN_ELFNOTE_PAE_MODE => {
            let s = string("PAE_MODE", desc)?;
            if s == "yes" {
                raw.pae_mode = PaeMode::ExtendedCr3;
            }
            if s.contains("bimodal") {
                raw.pae_mode = PaeMode::Bimodal;
            }
        }
        XEN_ELFNOTE_FEATURES => raw.features.add_string(&string("FEATURES", desc)?)?,
        XEN_ELFNOTE_SUPPORTED_FEATURES => {
            // An array of 32-bit submaps; XENFEAT_NR_SUBMAPS is 1, so only the first counts.
            let bits = match desc {
                [a, b, c, d, rest @ ..] if rest.len() % 4 == 0 => {
                    u32::from_le_bytes([*a, *b, *c, *d])
                }
                _ => {
                    return Err(NotesError::BadNumericNote {
                        name: "SUPPORTED_FEATURES",
                        size: desc.len(),
                    })
                }
            };
            raw.supported_features |= bits;
            raw.features.supported |= bits;
        }
        XEN_ELFNOTE_BSD_SYMTAB => raw.bsd_symtab = string("BSD_SYMTAB", desc)? == "yes",
        XEN_ELFNOTE_HV_START_LOW => raw.hv_start_low = Some(numeric("HV_START_LOW", desc)?),
        XEN_ELFNOTE_L1_MFN_VALID => {
            if desc.is_empty() || desc.len() % 16 != 0 || desc.len() / 16 > MAX_L1_MFN_VALID {
                return Err(NotesError::BadNumericNote {
                    name: "L1_MFN_VALID",
                    size: desc.len(),
                });
            }
            raw.l1_mfn_valid = desc
                .chunks_exact(16)
                .map(|p| {
                    let (mask, value) = p.split_at(8);
                    (le64(mask), le64(value))
                })
                .collect();
        }
        XEN_ELFNOTE_SUSPEND_CANCEL => {
            raw.suspend_cancel = numeric("SUSPEND_CANCEL", desc)? != 0;
        }
        XEN_ELFNOTE_INIT_P2M => raw.init_p2m = Some(numeric("INIT_P2M", desc)?),
        XEN_ELFNOTE_MOD_START_PFN => raw.mod_start_pfn = numeric("MOD_START_PFN", desc)? != 0,
        XEN_ELFNOTE_PHYS32_ENTRY => raw.phys32_entry = Some(numeric("PHYS32_ENTRY", desc)?),
        // INFO and types from later Xen versions: ignored, as libelf does.
        _ => {}
    }
    Ok(())
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

/// `strtoull(value, NULL, 0)`'s bases: `0x` hexadecimal, a leading `0` octal, else
/// decimal; but the whole value must be a number.
fn legacy_number(key: &str, value: &str) -> Result<u64, NotesError> {
    let parsed = if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16)
    } else if value.len() > 1 && value.starts_with('0') {
        u64::from_str_radix(&value[1..], 8)
    } else {
        value.parse()
    };
    parsed.map_err(|_| NotesError::BadLegacyNumber {
        key: key.into(),
        value: value.into(),
    })
}

/// The `__xen_guest` string: `KEY=VALUE` (or a bare `KEY`) items separated by commas,
/// up to the first NUL.
fn parse_legacy(raw: &mut Raw, section: &[u8]) -> Result<(), NotesError> {
    let text = section.split(|&b| b == 0).next().unwrap_or(section);
    let text = match str::from_utf8(text) {
        Ok(s) if s.is_ascii() => s,
        _ => {
            return Err(NotesError::BadStringNote {
                name: "__xen_guest",
            })
        }
    };
    let mut hypercall_pfn = None;
    for item in text.split(',').filter(|i| !i.is_empty()) {
        let (key, value) = item.split_once('=').unwrap_or((item, ""));
        match key {
            "LOADER" => raw.loader = value.into(),
            "GUEST_OS" => raw.guest_os = value.into(),
            "GUEST_VER" => raw.guest_version = Some(value.into()),
            "XEN_VER" => raw.xen_version = value.into(),
            "PAE" => {
                if value == "yes[extended-cr3]" {
                    raw.pae_mode = PaeMode::ExtendedCr3;
                } else if value.starts_with("yes") {
                    raw.pae_mode = PaeMode::Yes;
                }
            }
            "BSD_SYMTAB" => raw.bsd_symtab = true,
            "VIRT_BASE" => raw.virt_base = Some(legacy_number(key, value)?),
            "VIRT_ENTRY" => raw.entry = Some(legacy_number(key, value)?),
            "ELF_PADDR_OFFSET" => raw.paddr_offset = Some(legacy_number(key, value)?),
            "HYPERCALL_PAGE" => hypercall_pfn = Some(legacy_number(key, value)?),
            "FEATURES" => raw.features.add_string(value)?,
            _ => {}
        }
    }
    // A page number, made an address with VIRT_BASE once every key has been read.
    if let Some(pfn) = hypercall_pfn {
        let addr = pfn
            .checked_mul(4096)
            .and_then(|a| a.checked_add(raw.virt_base.unwrap_or(0)))
            .ok_or(NotesError::BadLegacyNumber {
                key: "HYPERCALL_PAGE".into(),
                value: alloc::format!("{pfn:#x}"),
            })?;
        raw.hypercall_page = Some(addr);
    }
    Ok(())
}

fn check_and_default(
    elf: &Elf<'_>,
    source: InfoSource,
    raw: Raw,
) -> Result<XenGuestInfo, NotesError> {
    if !raw.loader.starts_with("generic") && !raw.guest_os.starts_with("linux") {
        return Err(NotesError::UnsupportedGuest {
            loader: raw.loader,
            guest_os: raw.guest_os,
        });
    }
    if !raw.xen_version.starts_with("xen-3.0") {
        return Err(NotesError::UnsupportedXenVersion(raw.xen_version));
    }
    if raw.paddr_offset.is_some() && raw.virt_base.is_none() {
        return Err(NotesError::PaddrOffsetWithoutVirtBase);
    }
    let virt_base = raw.virt_base.unwrap_or(0);
    let paddr_offset = raw.paddr_offset.unwrap_or(match source {
        InfoSource::LegacyXenGuest => virt_base,
        InfoSource::NoteSegments | InfoSource::NoteSections => 0,
    });
    // libelf's arithmetic is modulo 2^64; the loader re-checks every segment exactly.
    let virt_offset = virt_base.wrapping_sub(paddr_offset);
    let (pstart, pend) = elf.paddr_extent();
    let start = pstart.wrapping_add(virt_offset);
    let end = pend.wrapping_add(virt_offset);
    let entry = raw.entry.unwrap_or(elf.e_entry);
    if start > end || entry < start || entry > end || virt_base > start {
        return Err(NotesError::OutOfBounds {
            virt_base,
            start,
            end,
            entry,
        });
    }
    if let Some(p2m) = raw.init_p2m {
        if p2m >= start && p2m < end {
            return Err(NotesError::P2mInsideKernel { p2m, start, end });
        }
    }
    Ok(XenGuestInfo {
        source,
        entry,
        hypercall_page: raw.hypercall_page,
        virt_base,
        paddr_offset,
        xen_version: raw.xen_version,
        guest_os: raw.guest_os,
        guest_version: raw.guest_version,
        loader: raw.loader,
        features: raw.features,
        supported_features: raw.supported_features,
        init_p2m: raw.init_p2m,
        pae_mode: raw.pae_mode,
        hv_start_low: raw.hv_start_low,
        mod_start_pfn: raw.mod_start_pfn,
        suspend_cancel: raw.suspend_cancel,
        l1_mfn_valid: raw.l1_mfn_valid,
        bsd_symtab: raw.bsd_symtab,
        phys32_entry: raw.phys32_entry,
    })
}
