//! The PV page-table entry rules: what a 64-bit PV guest may put in each level of its own
//! page tables, as pure functions over raw `u64` entries.
//!
//! The rules are Xen's x86-64 PV rules (`arch/x86/mm.c`: `get_page_from_l[1-4]e`,
//! `base_disallow_mask`, `L1_DISALLOW_MASK`, `adjust_guest_l[1-4]e`); the reference counting
//! that goes with them lives in [`super::frame_table`]. A guest may set, in a present entry:
//!
//! | bits | L1 | L2, L3, L4 |
//! |---|---|---|
//! | P, RW, US, A, D | yes | yes |
//! | PWT, PCD, PAT/PSE (3, 4, 7) | no (cache attributes need I/O access; later) | no (PSE: no superpages) |
//! | G (8) | yes (the context switch flushes global entries, as Xen's does) | no |
//! | AVAIL 9..=11 | yes | yes |
//! | address 12..=51 | a frame of the frame table | idem |
//! | AVAIL_HIGH 52..=61 | yes | yes |
//! | 62 | no (Xen's `_PAGE_GNTTAB`: grant mappings are made by the hypervisor only) | yes |
//! | NX (63) | yes | yes |
//!
//! A not-present entry is not interpreted (guests keep swap entries there).
//!
//! Guest kernels run in ring 3, so every present entry the hypervisor installs gets
//! `_PAGE_USER` ([`guest_entry`]), as Xen's `adjust_guest_l[1-4]e` do for 64-bit PV guests.
//! The kernel/user separation comes from the separate kernel and user L4 tables of the PV
//! ABI, not from the U/S bit. (Xen's extra `_PAGE_GUEST_KERNEL` marker, used to make user
//! mappings global, is a TLB optimisation left for later.)

use core::ops::RangeInclusive;

use ferrovisor_abi::layout::{pml4_slot, HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START};

use super::{frame_table::MmError, paging::pte, Mfn, PAGE_SHIFT};

/// Entries in a table of any level.
pub const ENTRIES: usize = 512;

/// The L4 slots the hypervisor owns in every guest address space (256..=271,
/// `HYPERVISOR_VIRT_START`..`HYPERVISOR_VIRT_END`). Guests can neither update them nor have
/// what they wrote there interpreted: validating an L4 fills them with the hypervisor's
/// entries.
pub const HYPERVISOR_L4_SLOTS: RangeInclusive<usize> =
    pml4_slot(HYPERVISOR_VIRT_START)..=pml4_slot(HYPERVISOR_VIRT_END - 1);

/// How many L4 slots the hypervisor owns.
pub const HYPERVISOR_L4_SLOT_COUNT: usize =
    pml4_slot(HYPERVISOR_VIRT_END - 1) - pml4_slot(HYPERVISOR_VIRT_START) + 1;

const _: () = assert!(HYPERVISOR_L4_SLOT_COUNT == 16);

/// Entry bits beyond the hardware ones in [`pte`].
pub mod bits {
    /// Bits 9..=11, ignored by the hardware, free for the guest.
    pub const AVAIL_LOW: u64 = 0x7 << 9;
    /// Bits 52..=62, ignored by the hardware (no protection keys for PV guests), free for
    /// the guest except bit 62 in L1 entries.
    pub const AVAIL_HIGH: u64 = 0x7ff << 52;
    /// Bit 62: Xen's `_PAGE_GNTTAB`, marking grant mappings in L1 entries.
    pub const GNTTAB: u64 = 1 << 62;
}

/// Bits a guest may set in a present L1 entry (Xen's `L1_DISALLOW_MASK`, complemented, for a
/// domain without I/O access).
pub const L1_ALLOWED: u64 = pte::PRESENT
    | pte::WRITABLE
    | pte::USER
    | pte::ACCESSED
    | pte::DIRTY
    | pte::GLOBAL
    | bits::AVAIL_LOW
    | pte::ADDR_MASK
    | (bits::AVAIL_HIGH & !bits::GNTTAB)
    | pte::NX;

/// Bits a guest may set in a present L2, L3 or L4 entry (Xen's `base_disallow_mask`,
/// complemented): no cache attributes, no PSE, no global bit.
pub const UPPER_ALLOWED: u64 = pte::PRESENT
    | pte::WRITABLE
    | pte::USER
    | pte::ACCESSED
    | pte::DIRTY
    | bits::AVAIL_LOW
    | pte::ADDR_MASK
    | bits::AVAIL_HIGH
    | pte::NX;

/// A page-table level. `L1` tables map 4 KiB frames, `L4` is the root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    L1,
    L2,
    L3,
    L4,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::L1, Level::L2, Level::L3, Level::L4];

    /// The level of the tables this level's entries point to; `None` for L1, whose entries
    /// map frames.
    pub const fn below(self) -> Option<Level> {
        match self {
            Level::L1 => None,
            Level::L2 => Some(Level::L1),
            Level::L3 => Some(Level::L2),
            Level::L4 => Some(Level::L3),
        }
    }

    /// The frame type a table of this level has.
    pub const fn page_type(self) -> PageType {
        match self {
            Level::L1 => PageType::L1,
            Level::L2 => PageType::L2,
            Level::L3 => PageType::L3,
            Level::L4 => PageType::L4,
        }
    }

    /// 1 to 4.
    pub const fn number(self) -> u8 {
        match self {
            Level::L1 => 1,
            Level::L2 => 2,
            Level::L3 => 3,
            Level::L4 => 4,
        }
    }
}

/// What a frame is currently used as (Xen's `PGT_*` types). A frame has one type at a time
/// and can change it only when nothing holds a reference to its current type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageType {
    /// No type reference is held.
    None,
    L1,
    L2,
    L3,
    L4,
    /// A GDT or LDT page (`PGT_seg_desc_page`): never mapped writable while in use.
    SegDesc,
    /// Mapped writable somewhere (`PGT_writable_page`).
    Writable,
}

impl PageType {
    /// The level, for the four page-table types.
    pub const fn level(self) -> Option<Level> {
        match self {
            PageType::L1 => Some(Level::L1),
            PageType::L2 => Some(Level::L2),
            PageType::L3 => Some(Level::L3),
            PageType::L4 => Some(Level::L4),
            PageType::None | PageType::SegDesc | PageType::Writable => None,
        }
    }

    pub const fn is_page_table(self) -> bool {
        self.level().is_some()
    }
}

/// What a valid entry refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    NotPresent,
    /// An L1 entry mapping a 4 KiB frame.
    Frame {
        mfn: Mfn,
        writable: bool,
    },
    /// An L2, L3 or L4 entry pointing to a table of level `level` (one below the entry's).
    Table {
        mfn: Mfn,
        level: Level,
    },
}

/// The frame an entry's address bits name.
pub const fn entry_mfn(entry: u64) -> Mfn {
    Mfn((entry & pte::ADDR_MASK) >> PAGE_SHIFT)
}

/// Checks one entry of a level-`level` table against the flag rules and says what it refers
/// to. Ownership and types of the frame referred to are the frame table's business.
pub fn validate_entry(level: Level, entry: u64) -> Result<EntryKind, MmError> {
    if entry & pte::PRESENT == 0 {
        return Ok(EntryKind::NotPresent);
    }
    let allowed = match level {
        Level::L1 => L1_ALLOWED,
        // 2 MiB / 1 GiB pages: Xen allowed them only with the long-gone `allowsuperpage`
        // option; today's Xen refuses PSE in PV L2/L3 entries (it is in base_disallow_mask).
        Level::L2 | Level::L3 if entry & pte::HUGE != 0 => return Err(MmError::Superpage),
        Level::L2 | Level::L3 | Level::L4 => UPPER_ALLOWED,
    };
    if entry & !allowed != 0 {
        return Err(MmError::BadFlags);
    }
    let mfn = entry_mfn(entry);
    Ok(match level.below() {
        None => EntryKind::Frame {
            mfn,
            writable: entry & pte::WRITABLE != 0,
        },
        Some(level) => EntryKind::Table { mfn, level },
    })
}

/// The value the hypervisor stores for a guest entry it accepted: present entries get
/// `_PAGE_USER` since the guest kernel runs in ring 3 (Xen's `adjust_guest_l[1-4]e`), and
/// lose `_PAGE_GLOBAL`: guest translations must not survive a page-table switch (between
/// guest kernel and user mode, vCPUs or domains), which a plain CR3 write guarantees only
/// for non-global entries.
pub const fn guest_entry(entry: u64) -> u64 {
    if entry & pte::PRESENT != 0 {
        (entry | pte::USER) & !pte::GLOBAL
    } else {
        entry
    }
}

/// Whether slot `index` of a level-`level` table is the guest's to fill: every slot except
/// the hypervisor's L4 slots.
pub fn is_guest_slot(level: Level, index: usize) -> bool {
    index < ENTRIES && !(level == Level::L4 && HYPERVISOR_L4_SLOTS.contains(&index))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = pte::PRESENT;
    const RW: u64 = pte::WRITABLE;

    fn at(mfn: u64) -> u64 {
        mfn << PAGE_SHIFT
    }

    #[test]
    fn hypervisor_slots_are_256_to_271() {
        assert_eq!(HYPERVISOR_L4_SLOTS, 256..=271);
        assert!(is_guest_slot(Level::L4, 255));
        assert!(!is_guest_slot(Level::L4, 256));
        assert!(!is_guest_slot(Level::L4, 271));
        assert!(is_guest_slot(Level::L4, 272));
        assert!(is_guest_slot(Level::L3, 256));
        assert!(!is_guest_slot(Level::L1, ENTRIES));
    }

    #[test]
    fn not_present_entries_are_not_interpreted() {
        for level in Level::ALL {
            assert_eq!(validate_entry(level, 0), Ok(EntryKind::NotPresent));
            // A swap entry: anything but the present bit.
            assert_eq!(validate_entry(level, !P), Ok(EntryKind::NotPresent));
        }
    }

    #[test]
    fn entries_say_what_they_refer_to() {
        assert_eq!(
            validate_entry(Level::L1, at(5) | P | RW | pte::NX),
            Ok(EntryKind::Frame {
                mfn: Mfn(5),
                writable: true
            })
        );
        assert_eq!(
            validate_entry(Level::L1, at(5) | P),
            Ok(EntryKind::Frame {
                mfn: Mfn(5),
                writable: false
            })
        );
        for (level, below) in [
            (Level::L2, Level::L1),
            (Level::L3, Level::L2),
            (Level::L4, Level::L3),
        ] {
            assert_eq!(
                validate_entry(level, at(7) | P | RW | pte::USER | pte::ACCESSED),
                Ok(EntryKind::Table {
                    mfn: Mfn(7),
                    level: below
                })
            );
        }
    }

    #[test]
    fn superpages_are_refused() {
        assert_eq!(
            validate_entry(Level::L2, at(512) | P | pte::HUGE),
            Err(MmError::Superpage)
        );
        assert_eq!(
            validate_entry(Level::L3, at(512) | P | RW | pte::HUGE),
            Err(MmError::Superpage)
        );
        // Bit 7 is reserved in L4 entries and PAT in L1 entries.
        assert_eq!(
            validate_entry(Level::L4, at(1) | P | pte::HUGE),
            Err(MmError::BadFlags)
        );
        assert_eq!(
            validate_entry(Level::L1, at(1) | P | pte::HUGE),
            Err(MmError::BadFlags)
        );
    }

    #[test]
    fn flag_masks_per_level() {
        for bad in [pte::PWT, pte::PCD] {
            for level in Level::ALL {
                assert_eq!(
                    validate_entry(level, at(1) | P | bad),
                    Err(MmError::BadFlags)
                );
            }
        }
        // Global: leaf only.
        assert!(validate_entry(Level::L1, at(1) | P | pte::GLOBAL).is_ok());
        assert_eq!(
            validate_entry(Level::L2, at(1) | P | pte::GLOBAL),
            Err(MmError::BadFlags)
        );
        // Bit 62 is the grant-mapping marker in L1 entries only.
        assert_eq!(
            validate_entry(Level::L1, at(1) | P | bits::GNTTAB),
            Err(MmError::BadFlags)
        );
        assert!(validate_entry(Level::L2, at(1) | P | bits::GNTTAB).is_ok());
        // Software bits and NX are the guest's.
        for level in Level::ALL {
            let e = at(1) | P | bits::AVAIL_LOW | (0x3ff << 52) | pte::NX | pte::DIRTY;
            assert!(validate_entry(level, e).is_ok(), "{level:?}");
        }
    }

    #[test]
    fn masks_cover_all_64_bits_consistently() {
        // Every bit is either allowed or refused, and the only differences between L1 and
        // the upper levels are the global bit and bit 62.
        assert_eq!(L1_ALLOWED ^ UPPER_ALLOWED, pte::GLOBAL | bits::GNTTAB);
        for bit in [pte::PWT, pte::PCD, pte::HUGE] {
            assert_eq!(L1_ALLOWED & bit, 0);
            assert_eq!(UPPER_ALLOWED & bit, 0);
        }
    }

    #[test]
    fn accepted_entries_get_the_user_bit() {
        assert_eq!(guest_entry(at(3) | P), at(3) | P | pte::USER);
        assert_eq!(guest_entry(at(3) | P | pte::USER), at(3) | P | pte::USER);
        assert_eq!(guest_entry(at(3)), at(3));
    }

    #[test]
    fn levels_chain_down_to_frames() {
        assert_eq!(Level::L4.below(), Some(Level::L3));
        assert_eq!(Level::L1.below(), None);
        for level in Level::ALL {
            assert_eq!(level.page_type().level(), Some(level));
        }
        assert!(!PageType::Writable.is_page_table());
        assert!(!PageType::SegDesc.is_page_table());
    }
}
