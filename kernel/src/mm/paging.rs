//! Building x86-64 4-level page tables for the hypervisor's own address space.
//!
//! The logic is hardware-free: tables are reached through [`TableMemory`], which the
//! hypervisor implements over the direct map and the unit tests over a `Vec`. Only the
//! hypervisor's mappings are made here (never user-accessible); guest page tables are
//! validated, not built, by the PV MMU. User-accessible mappings exist only for the
//! ring-3 selftest.

use core::fmt;

use super::{Mfn, PAGE_SIZE};

/// Page-table entry bits (Intel SDM vol. 3, 4.5).
pub mod pte {
    pub const PRESENT: u64 = 1 << 0;
    pub const WRITABLE: u64 = 1 << 1;
    pub const USER: u64 = 1 << 2;
    pub const PWT: u64 = 1 << 3;
    pub const PCD: u64 = 1 << 4;
    pub const ACCESSED: u64 = 1 << 5;
    pub const DIRTY: u64 = 1 << 6;
    pub const HUGE: u64 = 1 << 7;
    pub const GLOBAL: u64 = 1 << 8;
    pub const NX: u64 = 1 << 63;
    pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
}

pub const ENTRIES: usize = 512;
pub const SIZE_4K: u64 = PAGE_SIZE;
pub const SIZE_2M: u64 = 2 << 20;
pub const SIZE_1G: u64 = 1 << 30;

/// Where the page tables' frames are and how to reach them.
pub trait TableMemory {
    /// A zeroed frame for a new table.
    fn alloc_table(&mut self) -> Option<Mfn>;
    fn read(&self, table: Mfn, index: usize) -> u64;
    fn write(&mut self, table: Mfn, index: usize, value: u64);
}

/// What a hypervisor mapping allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attrs {
    pub writable: bool,
    pub executable: bool,
    /// Device memory: uncached (PCD | PWT).
    pub uncached: bool,
    /// Reachable from ring 3 (never global: ring-3 mappings differ between address spaces).
    pub user: bool,
}

impl Attrs {
    const fn new(writable: bool, executable: bool, uncached: bool, user: bool) -> Attrs {
        Attrs {
            writable,
            executable,
            uncached,
            user,
        }
    }
    pub const TEXT: Attrs = Attrs::new(false, true, false, false);
    pub const RODATA: Attrs = Attrs::new(false, false, false, false);
    pub const DATA: Attrs = Attrs::new(true, false, false, false);
    pub const MMIO: Attrs = Attrs::new(true, false, true, false);
    pub const USER_TEXT: Attrs = Attrs::new(false, true, false, true);
    pub const USER_DATA: Attrs = Attrs::new(true, false, false, true);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The address is not canonical or not aligned to the page size asked for.
    BadAddress { va: u64, pa: u64 },
    /// Something is already mapped there.
    AlreadyMapped { va: u64 },
    /// No frame left for an intermediate table.
    OutOfTables,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::BadAddress { va, pa } => {
                write!(
                    f,
                    "cannot map {va:#x} -> {pa:#x}: misaligned or non-canonical"
                )
            }
            MapError::AlreadyMapped { va } => write!(f, "{va:#x} is already mapped"),
            MapError::OutOfTables => write!(f, "out of memory for page tables"),
        }
    }
}

/// Index into the table at `level` (4 = PML4 … 1 = PT) for `va`.
pub const fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

pub const fn is_canonical(va: u64) -> bool {
    let top = va >> 47;
    top == 0 || top == 0x1_ffff
}

/// A 4-level address space rooted at `root`.
pub struct AddressSpace<M: TableMemory> {
    root: Mfn,
    mem: M,
    /// `pte::NX` when EFER.NXE is on, else 0 (the bit is reserved without it).
    nx: u64,
}

impl<M: TableMemory> AddressSpace<M> {
    pub fn new(mut mem: M, nx_enabled: bool) -> Result<Self, MapError> {
        let root = mem.alloc_table().ok_or(MapError::OutOfTables)?;
        Ok(AddressSpace {
            root,
            mem,
            nx: if nx_enabled { pte::NX } else { 0 },
        })
    }

    /// An existing address space rooted at `root`.
    pub fn attach(root: Mfn, mem: M, nx_enabled: bool) -> Self {
        AddressSpace {
            root,
            mem,
            nx: if nx_enabled { pte::NX } else { 0 },
        }
    }

    pub fn root(&self) -> Mfn {
        self.root
    }

    pub fn memory(&self) -> &M {
        &self.mem
    }

    pub fn memory_mut(&mut self) -> &mut M {
        &mut self.mem
    }

    fn leaf_bits(&self, attrs: Attrs) -> u64 {
        let mut bits = pte::PRESENT | pte::ACCESSED;
        if attrs.user {
            bits |= pte::USER;
        } else {
            bits |= pte::GLOBAL;
        }
        if attrs.writable {
            bits |= pte::WRITABLE | pte::DIRTY;
        }
        if !attrs.executable {
            bits |= self.nx;
        }
        if attrs.uncached {
            bits |= pte::PCD | pte::PWT;
        }
        bits
    }

    /// The table one level down from entry `index` of `table`, created if absent.
    fn next_table(
        &mut self,
        table: Mfn,
        index: usize,
        va: u64,
        user: bool,
    ) -> Result<Mfn, MapError> {
        // Intermediate entries allow everything (ring 3 too, on the way to a user leaf);
        // the leaf decides.
        let user_bit = if user { pte::USER } else { 0 };
        let entry = self.mem.read(table, index);
        if entry & pte::PRESENT != 0 {
            if entry & pte::HUGE != 0 {
                return Err(MapError::AlreadyMapped { va });
            }
            if entry & user_bit != user_bit {
                self.mem.write(table, index, entry | user_bit);
            }
            return Ok(Mfn::containing(entry & pte::ADDR_MASK));
        }
        let new = self.mem.alloc_table().ok_or(MapError::OutOfTables)?;
        self.mem.write(
            table,
            index,
            new.addr() | pte::PRESENT | pte::WRITABLE | user_bit,
        );
        Ok(new)
    }

    /// Maps one page of `size` (4 KiB, 2 MiB or 1 GiB) at `va` to `pa`.
    pub fn map_page(&mut self, va: u64, pa: u64, size: u64, attrs: Attrs) -> Result<(), MapError> {
        let leaf_level = match size {
            SIZE_4K => 1,
            SIZE_2M => 2,
            SIZE_1G => 3,
            _ => return Err(MapError::BadAddress { va, pa }),
        };
        if !is_canonical(va) || va % size != 0 || pa % size != 0 || pa & !pte::ADDR_MASK != 0 {
            return Err(MapError::BadAddress { va, pa });
        }
        let mut table = self.root;
        let mut level = 4;
        while level > leaf_level {
            table = self.next_table(table, index(va, level), va, attrs.user)?;
            level -= 1;
        }
        let idx = index(va, level);
        if self.mem.read(table, idx) & pte::PRESENT != 0 {
            return Err(MapError::AlreadyMapped { va });
        }
        let huge = if leaf_level > 1 { pte::HUGE } else { 0 };
        self.mem
            .write(table, idx, pa | huge | self.leaf_bits(attrs));
        Ok(())
    }

    /// Points the 4 KiB page at `va` to `pa`, replacing whatever 4 KiB mapping was there
    /// (the caller flushes the TLB entry).
    pub fn remap_page(&mut self, va: u64, pa: u64, attrs: Attrs) -> Result<(), MapError> {
        if !is_canonical(va) || va % SIZE_4K != 0 || pa % SIZE_4K != 0 || pa & !pte::ADDR_MASK != 0
        {
            return Err(MapError::BadAddress { va, pa });
        }
        let mut table = self.root;
        for level in [4, 3, 2] {
            table = self.next_table(table, index(va, level), va, attrs.user)?;
        }
        self.mem
            .write(table, index(va, 1), pa | self.leaf_bits(attrs));
        Ok(())
    }

    /// Maps `[va, va + len)` to `[pa, pa + len)` with the largest pages that fit (up to
    /// `max_page`: pass `SIZE_1G` only when the CPU has 1 GiB pages).
    pub fn map_range(
        &mut self,
        va: u64,
        pa: u64,
        len: u64,
        attrs: Attrs,
        max_page: u64,
    ) -> Result<(), MapError> {
        if va % SIZE_4K != 0 || pa % SIZE_4K != 0 || len % SIZE_4K != 0 {
            return Err(MapError::BadAddress { va, pa });
        }
        let mut off = 0;
        while off < len {
            let (v, p, left) = (va + off, pa + off, len - off);
            let size = [SIZE_1G, SIZE_2M, SIZE_4K]
                .into_iter()
                .find(|&s| s <= max_page && v % s == 0 && p % s == 0 && left >= s)
                .unwrap_or(SIZE_4K);
            self.map_page(v, p, size, attrs)?;
            off += size;
        }
        Ok(())
    }

    /// The physical address `va` maps to and the leaf entry, if mapped.
    pub fn translate(&self, va: u64) -> Option<(u64, u64)> {
        if !is_canonical(va) {
            return None;
        }
        let mut table = self.root;
        for level in (1..=4).rev() {
            let entry = self.mem.read(table, index(va, level));
            if entry & pte::PRESENT == 0 {
                return None;
            }
            let page_size = 1u64 << (12 + 9 * (level - 1));
            if level == 1 || (level <= 3 && entry & pte::HUGE != 0) {
                let base = entry & pte::ADDR_MASK & !(page_size - 1);
                return Some((base + (va & (page_size - 1)), entry));
            }
            table = Mfn::containing(entry & pte::ADDR_MASK);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Tables in a hash map, frames numbered from 0x1000.
    #[derive(Default)]
    struct VecTables {
        tables: HashMap<u64, Vec<u64>>,
        next: u64,
        limit: Option<usize>,
    }

    impl TableMemory for VecTables {
        fn alloc_table(&mut self) -> Option<Mfn> {
            if self.limit.is_some_and(|l| self.tables.len() >= l) {
                return None;
            }
            let mfn = 0x1000 + self.next;
            self.next += 1;
            self.tables.insert(mfn, vec![0; ENTRIES]);
            Some(Mfn(mfn))
        }
        fn read(&self, table: Mfn, index: usize) -> u64 {
            self.tables[&table.0][index]
        }
        fn write(&mut self, table: Mfn, index: usize, value: u64) {
            self.tables.get_mut(&table.0).expect("table exists")[index] = value;
        }
    }

    #[test]
    fn maps_and_translates_with_permissions() {
        let mut aspace = AddressSpace::new(VecTables::default(), true).unwrap();
        let va = 0xFFFF_8200_0020_0000;
        aspace
            .map_page(va, 0x20_0000, SIZE_4K, Attrs::TEXT)
            .unwrap();
        aspace
            .map_page(va + 0x1000, 0x20_1000, SIZE_4K, Attrs::DATA)
            .unwrap();
        let (pa, e) = aspace.translate(va + 0x123).unwrap();
        assert_eq!(pa, 0x20_0123);
        assert_eq!(e & (pte::WRITABLE | pte::NX | pte::USER), 0);
        let (pa, e) = aspace.translate(va + 0x1008).unwrap();
        assert_eq!(pa, 0x20_1008);
        assert_ne!(e & pte::WRITABLE, 0);
        assert_ne!(e & pte::NX, 0);
        assert!(aspace.translate(va + 0x2000).is_none());
        assert_eq!(
            aspace.map_page(va, 0x30_0000, SIZE_4K, Attrs::DATA),
            Err(MapError::AlreadyMapped { va })
        );
    }

    #[test]
    fn nx_bit_only_when_enabled() {
        let mut aspace = AddressSpace::new(VecTables::default(), false).unwrap();
        aspace
            .map_page(0x40_0000, 0x40_0000, SIZE_4K, Attrs::DATA)
            .unwrap();
        let (_, e) = aspace.translate(0x40_0000).unwrap();
        assert_eq!(e & pte::NX, 0);
    }

    #[test]
    fn range_uses_large_pages_where_aligned() {
        let mut aspace = AddressSpace::new(VecTables::default(), true).unwrap();
        let base = 0xFFFF_8300_0000_0000;
        // 4 KiB at the head, then 2 MiB pages, then a 1 GiB page, then 4 KiB at the tail.
        let start = SIZE_2M - 0x3000;
        let len = SIZE_1G * 2 + 0x5000 - start;
        aspace
            .map_range(base + start, start, len, Attrs::DATA, SIZE_1G)
            .unwrap();
        for pa in [
            start,
            SIZE_2M,
            SIZE_1G - 0x1000,
            SIZE_1G,
            2 * SIZE_1G + 0x4000,
        ] {
            assert_eq!(
                aspace.translate(base + pa).map(|t| t.0),
                Some(pa),
                "{pa:#x}"
            );
        }
        assert!(aspace.translate(base + start - 0x1000).is_none());
        assert!(aspace.translate(base + start + len).is_none());
        let (_, e) = aspace.translate(base + SIZE_1G).unwrap();
        assert_ne!(e & pte::HUGE, 0, "the aligned GiB uses a 1 GiB page");
        let (_, e) = aspace.translate(base + SIZE_2M).unwrap();
        assert_ne!(e & pte::HUGE, 0, "aligned 2 MiB uses a 2 MiB page");
        let (_, e) = aspace.translate(base + start).unwrap();
        assert_eq!(e & pte::HUGE, 0);
    }

    #[test]
    fn refuses_bad_addresses_and_huge_conflicts() {
        let mut aspace = AddressSpace::new(VecTables::default(), true).unwrap();
        assert!(matches!(
            aspace.map_page(0x0000_8000_0000_0000, 0, SIZE_4K, Attrs::DATA),
            Err(MapError::BadAddress { .. })
        ));
        assert!(matches!(
            aspace.map_page(0x1000, 0x20_0000, SIZE_2M, Attrs::DATA),
            Err(MapError::BadAddress { .. })
        ));
        aspace
            .map_page(0x20_0000, 0x20_0000, SIZE_2M, Attrs::DATA)
            .unwrap();
        assert_eq!(
            aspace.map_page(0x20_1000, 0x1000, SIZE_4K, Attrs::DATA),
            Err(MapError::AlreadyMapped { va: 0x20_1000 })
        );
    }

    #[test]
    fn out_of_tables_is_an_error() {
        let mem = VecTables {
            limit: Some(2),
            ..Default::default()
        };
        let mut aspace = AddressSpace::new(mem, true).unwrap();
        assert_eq!(
            aspace.map_page(0x1000, 0x1000, SIZE_4K, Attrs::DATA),
            Err(MapError::OutOfTables)
        );
    }

    #[test]
    fn user_mappings_are_user_all_the_way_down_and_not_global() {
        let mut aspace = AddressSpace::new(VecTables::default(), true).unwrap();
        aspace
            .map_page(0x40_0000, 0x1000, SIZE_4K, Attrs::DATA)
            .unwrap();
        aspace
            .map_page(0x40_1000, 0x2000, SIZE_4K, Attrs::USER_TEXT)
            .unwrap();
        let (_, e) = aspace.translate(0x40_1000).unwrap();
        assert_eq!(e & (pte::USER | pte::GLOBAL | pte::NX), pte::USER);
        let (_, e) = aspace.translate(0x40_0000).unwrap();
        assert_eq!(e & (pte::USER | pte::GLOBAL), pte::GLOBAL);
        // Every intermediate entry on the way allows ring 3.
        let mut table = aspace.root();
        for level in (2..=4).rev() {
            let entry = aspace.memory().read(table, index(0x40_1000, level));
            assert_ne!(entry & pte::USER, 0, "level {level}");
            table = Mfn::containing(entry & pte::ADDR_MASK);
        }
    }

    #[test]
    fn remap_replaces_a_page() {
        let mut aspace = AddressSpace::new(VecTables::default(), true).unwrap();
        aspace
            .map_page(0x40_0000, 0x1000, SIZE_4K, Attrs::DATA)
            .unwrap();
        aspace.remap_page(0x40_0000, 0x5000, Attrs::RODATA).unwrap();
        let (pa, e) = aspace.translate(0x40_0000).unwrap();
        assert_eq!(pa, 0x5000);
        assert_eq!(e & pte::WRITABLE, 0);
        aspace.remap_page(0x80_0000, 0x6000, Attrs::DATA).unwrap();
        assert_eq!(aspace.translate(0x80_0000).map(|t| t.0), Some(0x6000));
        assert!(aspace.remap_page(0x80_0001, 0x6000, Attrs::DATA).is_err());
    }

    #[test]
    fn uncached_mmio_bits() {
        let mut aspace = AddressSpace::new(VecTables::default(), true).unwrap();
        aspace
            .map_page(0xFFFF_8290_0000_0000, 0xFEE0_0000, SIZE_4K, Attrs::MMIO)
            .unwrap();
        let (_, e) = aspace.translate(0xFFFF_8290_0000_0000).unwrap();
        assert_eq!(e & (pte::PCD | pte::PWT), pte::PCD | pte::PWT);
    }
}
