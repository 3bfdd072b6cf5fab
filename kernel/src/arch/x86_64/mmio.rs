//! Device registers: a window of memory-mapped I/O, mapped uncached into the hypervisor's
//! MMIO area (`memory::map_device`), read and written with single volatile accesses.
//! Every access is bounds- and alignment-checked: one outside the window reads as all
//! ones (as a missing device does) and writes nothing.

use ferrovisor::mm::paging::Attrs;

use super::memory::{self, MemoryError};

/// A mapped register window. Cloning it gives another handle to the same registers; the
/// mapping is never removed.
#[derive(Clone, Copy, Debug)]
pub struct Mmio {
    virt: u64,
    len: u64,
}

impl Mmio {
    /// Maps `len` bytes of device memory at physical `phys` uncached. The range must not
    /// be RAM (refused); it is the caller's job to name a device's registers (a BAR the
    /// device decodes, an ECAM window from the MCFG).
    pub fn map(phys: u64, len: u64) -> Result<Mmio, MemoryError> {
        let virt = memory::map_device(phys, len, Attrs::MMIO)?;
        Ok(Mmio { virt, len })
    }

    /// A window of no bytes: every read is all ones, every write dropped.
    pub const fn empty() -> Mmio {
        Mmio { virt: 0, len: 0 }
    }

    /// The part `[offset, offset + len)` of this window, if inside it.
    pub fn sub(&self, offset: u64, len: u64) -> Option<Mmio> {
        let end = offset.checked_add(len)?;
        (end <= self.len).then_some(Mmio {
            virt: self.virt + offset,
            len,
        })
    }

    fn at(&self, offset: u64, size: u64) -> Option<u64> {
        let end = offset.checked_add(size)?;
        (end <= self.len && offset % size == 0).then_some(self.virt + offset)
    }

    pub fn read8(&self, offset: u64) -> u8 {
        match self.at(offset, 1) {
            // SAFETY: inside the window `map` mapped uncached for good (checked).
            Some(a) => unsafe { (a as *const u8).read_volatile() },
            None => u8::MAX,
        }
    }

    pub fn read16(&self, offset: u64) -> u16 {
        match self.at(offset, 2) {
            // SAFETY: inside the window, aligned (checked).
            Some(a) => unsafe { (a as *const u16).read_volatile() },
            None => u16::MAX,
        }
    }

    pub fn read32(&self, offset: u64) -> u32 {
        match self.at(offset, 4) {
            // SAFETY: inside the window, aligned (checked).
            Some(a) => unsafe { (a as *const u32).read_volatile() },
            None => u32::MAX,
        }
    }

    pub fn write8(&self, offset: u64, value: u8) {
        if let Some(a) = self.at(offset, 1) {
            // SAFETY: inside the window (checked).
            unsafe { (a as *mut u8).write_volatile(value) }
        }
    }

    pub fn write16(&self, offset: u64, value: u16) {
        if let Some(a) = self.at(offset, 2) {
            // SAFETY: inside the window, aligned (checked).
            unsafe { (a as *mut u16).write_volatile(value) }
        }
    }

    pub fn write32(&self, offset: u64, value: u32) {
        if let Some(a) = self.at(offset, 4) {
            // SAFETY: inside the window, aligned (checked).
            unsafe { (a as *mut u32).write_volatile(value) }
        }
    }

    /// A 64-bit register written as two 32-bit halves, low first (virtio 4.1.3.1 allows
    /// drivers to do so; not every device takes 64-bit accesses).
    pub fn write64(&self, offset: u64, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}
