//! Reading ACPI tables from physical memory: each table is mapped read-only in the MMIO
//! window (firmware tables may sit in reserved memory the direct map does not cover) and
//! copied out, so that the parsers in the library see ordinary bytes.

use alloc::vec::Vec;

use ferrovisor::{
    acpi::{self, EcamRegion, RootTable},
    mm::paging::Attrs,
};

use super::memory;

/// Copies `len` bytes of firmware memory at `phys` (at most 1 MiB: no table we read is
/// larger).
fn read_firmware(phys: u64, len: usize) -> Option<Vec<u8>> {
    if len > 1 << 20 {
        return None;
    }
    let virt = memory::map_device(phys, len as u64, Attrs::RODATA).ok()?;
    // SAFETY: `map_device` just mapped `[phys, phys + len)` read-only at `virt`, for good;
    // it is firmware memory (not RAM the allocator manages), which nothing writes.
    let bytes = unsafe { core::slice::from_raw_parts(virt as *const u8, len) };
    Some(bytes.to_vec())
}

/// A whole SDT at `phys`: its header first, then the length it declares.
fn read_sdt(phys: u64) -> Option<Vec<u8>> {
    let header = read_firmware(phys, acpi::SDT_HEADER_LEN)?;
    let len = acpi::sdt_length(&header).ok()?;
    read_firmware(phys, len)
}

/// The ECAM windows the MCFG describes, from the RSDP the loader gave (`rsdp`: the
/// multiboot2 ACPI tag's copy). Empty, with a log line saying why, when there are none.
pub fn ecam_regions(rsdp: Option<&[u8]>) -> Vec<EcamRegion> {
    let Some(rsdp) = rsdp else {
        log::info!("acpi: the loader gave no RSDP");
        return Vec::new();
    };
    let root = match acpi::parse_rsdp(rsdp) {
        Ok(r) => r,
        Err(e) => {
            log::warn!("acpi: the RSDP is unusable: {e}");
            return Vec::new();
        }
    };
    let (RootTable::Rsdt(addr) | RootTable::Xsdt(addr)) = root;
    let Some(table) = read_sdt(addr) else {
        log::warn!("acpi: cannot read the root table at {addr:#x}");
        return Vec::new();
    };
    let entries = match acpi::root_entries(&table, root) {
        Ok(e) => e,
        Err(e) => {
            log::warn!("acpi: the root table at {addr:#x} is unusable: {e}");
            return Vec::new();
        }
    };
    for a in entries {
        let Some(header) = read_firmware(a, acpi::SDT_HEADER_LEN) else {
            continue;
        };
        if acpi::sdt_signature(&header) != Some(*b"MCFG") {
            continue;
        }
        return match read_sdt(a).map(|t| acpi::parse_mcfg(&t)) {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                log::warn!("acpi: the MCFG at {a:#x} is unusable: {e}");
                Vec::new()
            }
            None => Vec::new(),
        };
    }
    log::info!("acpi: no MCFG table");
    Vec::new()
}
