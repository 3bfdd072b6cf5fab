//! Xen's ELF note types (`public/elfnote.h`).
//!
//! A PV kernel describes itself to the domain builder in ELF notes whose owner name is
//! [`XEN_ELFNOTE_NAME`] ("Xen"), kept in a `PT_NOTE` segment (or, failing that, an
//! `SHT_NOTE` section). Numeric notes are 4 or 8 bytes long; string notes are
//! NUL-terminated ASCII. Kernels older than the notes carried the same facts in a
//! `__xen_guest` section as a comma-separated `KEY=VALUE` string ([`XEN_GUEST_SECTION`]);
//! each note below names the legacy key it replaces.

/// The owner name of every Xen note (the note's `name` field, NUL-terminated on disk).
pub const XEN_ELFNOTE_NAME: &str = "Xen";

/// The legacy section that predates the notes: `GUEST_OS=linux,XEN_VER=xen-3.0,...`.
pub const XEN_GUEST_SECTION: &str = "__xen_guest";

/// `NAME=VALUE` pair (string).
pub const XEN_ELFNOTE_INFO: u32 = 0;
/// Virtual address of the entry point (numeric). Legacy: `VIRT_ENTRY`.
pub const XEN_ELFNOTE_ENTRY: u32 = 1;
/// Virtual address of the hypercall transfer page (numeric). Legacy: `HYPERCALL_PAGE`,
/// which is a page number relative to `VIRT_BASE`, not an address.
pub const XEN_ELFNOTE_HYPERCALL_PAGE: u32 = 2;
/// Virtual address where the kernel image is mapped (numeric; defaults to 0).
/// Legacy: `VIRT_BASE`.
pub const XEN_ELFNOTE_VIRT_BASE: u32 = 3;
/// Offset of the ELF `p_paddr` fields from the pseudo-physical load address (numeric;
/// defaults to 0). Legacy: `ELF_PADDR_OFFSET`, whose default is `VIRT_BASE`.
pub const XEN_ELFNOTE_PADDR_OFFSET: u32 = 4;
/// Version of Xen the kernel works with (string, `"xen-3.0"`). Legacy: `XEN_VER`.
pub const XEN_ELFNOTE_XEN_VERSION: u32 = 5;
/// Name of the guest operating system (string). Legacy: `GUEST_OS`.
pub const XEN_ELFNOTE_GUEST_OS: u32 = 6;
/// Version of the guest operating system (string). Legacy: `GUEST_VER`.
pub const XEN_ELFNOTE_GUEST_VERSION: u32 = 7;
/// Loader type (string, `"generic"`). Legacy: `LOADER`.
pub const XEN_ELFNOTE_LOADER: u32 = 8;
/// PAE support, x86-32 only (string: `"yes"`, `"no"` or `"bimodal"`). Legacy: `PAE`.
pub const XEN_ELFNOTE_PAE_MODE: u32 = 9;
/// Supported/required features (string: `XENFEAT_` names without the prefix, separated
/// by `|`; a leading `!` marks a feature as required). Legacy: `FEATURES`.
pub const XEN_ELFNOTE_FEATURES: u32 = 10;
/// The kernel wants its symbol table loaded (string, `"yes"` or `"no"`). Legacy: `BSD_SYMTAB`.
pub const XEN_ELFNOTE_BSD_SYMTAB: u32 = 11;
/// Lowest address the hypervisor hole may begin at (numeric).
pub const XEN_ELFNOTE_HV_START_LOW: u32 = 12;
/// `maddr_t`-sized mask/value pairs recognising non-present L1 entries that hold MFNs.
pub const XEN_ELFNOTE_L1_MFN_VALID: u32 = 13;
/// The guest supports cooperative suspend cancellation (numeric; default 0).
pub const XEN_ELFNOTE_SUSPEND_CANCEL: u32 = 14;
/// Non-default virtual address for the initial phys-to-machine map (numeric; x86-64).
pub const XEN_ELFNOTE_INIT_P2M: u32 = 15;
/// The guest accepts an initrd not mapped by its initial page tables (numeric).
pub const XEN_ELFNOTE_MOD_START_PFN: u32 = 16;
/// Supported features as a bitmap (numeric), combined with the `FEATURES` string.
pub const XEN_ELFNOTE_SUPPORTED_FEATURES: u32 = 17;
/// 32-bit physical entry point for PVH (numeric; ignored for PV).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// The highest note type defined for guest kernels.
pub const XEN_ELFNOTE_MAX: u32 = XEN_ELFNOTE_PHYS32_ENTRY;

/// System information in crash notes (written by kexec/kdump, not read from guests).
pub const XEN_ELFNOTE_CRASH_INFO: u32 = 0x100_0001;
/// Per-CPU registers in crash notes.
pub const XEN_ELFNOTE_CRASH_REGS: u32 = 0x100_0002;
/// dump-core marker note.
pub const XEN_ELFNOTE_DUMPCORE_NONE: u32 = 0x200_0000;
/// dump-core header note.
pub const XEN_ELFNOTE_DUMPCORE_HEADER: u32 = 0x200_0001;
/// dump-core Xen version note.
pub const XEN_ELFNOTE_DUMPCORE_XEN_VERSION: u32 = 0x200_0002;
/// dump-core format version note.
pub const XEN_ELFNOTE_DUMPCORE_FORMAT_VERSION: u32 = 0x200_0003;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_elfnote_h() {
        let expected = [
            (XEN_ELFNOTE_INFO, 0),
            (XEN_ELFNOTE_ENTRY, 1),
            (XEN_ELFNOTE_HYPERCALL_PAGE, 2),
            (XEN_ELFNOTE_VIRT_BASE, 3),
            (XEN_ELFNOTE_PADDR_OFFSET, 4),
            (XEN_ELFNOTE_XEN_VERSION, 5),
            (XEN_ELFNOTE_GUEST_OS, 6),
            (XEN_ELFNOTE_GUEST_VERSION, 7),
            (XEN_ELFNOTE_LOADER, 8),
            (XEN_ELFNOTE_PAE_MODE, 9),
            (XEN_ELFNOTE_FEATURES, 10),
            (XEN_ELFNOTE_BSD_SYMTAB, 11),
            (XEN_ELFNOTE_HV_START_LOW, 12),
            (XEN_ELFNOTE_L1_MFN_VALID, 13),
            (XEN_ELFNOTE_SUSPEND_CANCEL, 14),
            (XEN_ELFNOTE_INIT_P2M, 15),
            (XEN_ELFNOTE_MOD_START_PFN, 16),
            (XEN_ELFNOTE_SUPPORTED_FEATURES, 17),
            (XEN_ELFNOTE_PHYS32_ENTRY, 18),
            (XEN_ELFNOTE_MAX, 18),
        ];
        for (got, want) in expected {
            assert_eq!(got, want);
        }
        assert_eq!(XEN_ELFNOTE_NAME, "Xen");
    }
}
