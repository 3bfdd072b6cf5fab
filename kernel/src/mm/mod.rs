//! Physical and virtual memory: frame numbers, the frame allocator, the hypervisor's
//! virtual layout and the page-table builder.

pub mod frame_alloc;
pub mod frame_table;
pub mod layout;
pub mod page_type;
pub mod paging;

use core::fmt;

/// Size of a base page and of a frame.
pub const PAGE_SIZE: u64 = 4096;
pub const PAGE_SHIFT: u32 = 12;

/// A machine frame number: a 4 KiB frame of host-physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mfn(pub u64);

impl Mfn {
    /// The frame holding a physical address.
    pub const fn containing(paddr: u64) -> Self {
        Mfn(paddr >> PAGE_SHIFT)
    }
    /// The frame's first physical address.
    pub const fn addr(self) -> u64 {
        self.0 << PAGE_SHIFT
    }
}

impl fmt::Display for Mfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mfn {:#x}", self.0)
    }
}

/// A half-open range of physical addresses `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PhysRange {
    pub start: u64,
    pub end: u64,
}

impl PhysRange {
    pub const fn new(start: u64, end: u64) -> Self {
        PhysRange { start, end }
    }
    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }
    pub const fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
    pub const fn overlaps(&self, other: &PhysRange) -> bool {
        self.start < other.end && other.start < self.end
    }
    /// The largest page-aligned range inside this one (may be empty).
    pub const fn shrink_to_pages(&self) -> PhysRange {
        let start = align_up(self.start, PAGE_SIZE);
        let end = align_down(self.end, PAGE_SIZE);
        if end <= start {
            PhysRange { start, end: start }
        } else {
            PhysRange { start, end }
        }
    }
    /// The smallest page-aligned range covering this one.
    pub const fn grow_to_pages(&self) -> PhysRange {
        PhysRange {
            start: align_down(self.start, PAGE_SIZE),
            end: align_up(self.end, PAGE_SIZE),
        }
    }
}

impl fmt::Display for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#018x}-{:#018x}",
            self.start,
            self.end.saturating_sub(1)
        )
    }
}

/// Rounds `x` down to a multiple of `align` (a power of two).
pub const fn align_down(x: u64, align: u64) -> u64 {
    x & !(align - 1)
}

/// Rounds `x` up to a multiple of `align` (a power of two), saturating at the top.
pub const fn align_up(x: u64, align: u64) -> u64 {
    match x.checked_add(align - 1) {
        Some(v) => v & !(align - 1),
        None => align_down(u64::MAX, align),
    }
}

/// Formats a byte count the way the boot log shows sizes: `256 MiB`, `12 KiB`, `1 GiB`.
#[derive(Clone, Copy, Debug)]
pub struct HumanSize(pub u64);

impl fmt::Display for HumanSize {
    #[allow(
        clippy::manual_is_multiple_of,
        reason = "u64::is_multiple_of needs Rust 1.87; the workspace's rust-version is 1.85"
    )]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const KIB: u64 = 1024;
        let b = self.0;
        if b >= KIB * KIB * KIB && b % (KIB * KIB * KIB) == 0 {
            write!(f, "{} GiB", b / (KIB * KIB * KIB))
        } else if b >= KIB * KIB {
            write!(f, "{} MiB", b / (KIB * KIB))
        } else if b >= KIB {
            write!(f, "{} KiB", b / KIB)
        } else {
            write!(f, "{b} B")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_rounding() {
        let r = PhysRange::new(0x1001, 0x3fff);
        assert_eq!(r.shrink_to_pages(), PhysRange::new(0x2000, 0x3000));
        assert_eq!(r.grow_to_pages(), PhysRange::new(0x1000, 0x4000));
        assert!(PhysRange::new(0x1001, 0x1fff).shrink_to_pages().is_empty());
        assert_eq!(align_up(u64::MAX - 5, 4096), align_down(u64::MAX, 4096));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(format!("{}", HumanSize(256 << 20)), "256 MiB");
        assert_eq!(format!("{}", HumanSize(1 << 30)), "1 GiB");
        assert_eq!(format!("{}", HumanSize(12 << 10)), "12 KiB");
        assert_eq!(format!("{}", HumanSize(1536 << 20)), "1536 MiB");
    }
}
