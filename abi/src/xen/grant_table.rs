//! Grant tables (`grant_table.h`): `grant_table_op(cmd, arg, count)`, the v1 shared entry
//! a granting domain writes, its flag bits, the mapping and copy flags, the status codes
//! each operation reports in its `status` field, and the argument of each command.
//!
//! Only version 1 of the entry layout is described; v2 (`grant_entry_v2`, status frames)
//! is never offered, so nothing here needs it.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{DomId, GuestHandle, XenPfn};

/// A grant reference: an index into the granting domain's table (`grant_ref_t`).
pub type GrantRef = u32;
/// A mapping handle the hypervisor hands to the mapping domain (`grant_handle_t`).
pub type GrantHandle = u32;

xen_enum! {
    /// `grant_table_op` commands (`GNTTABOP_*`).
    pub enum GnttabOp: u32 {
        /// arg is an array of [`GnttabMapGrantRef`].
        MapGrantRef = 0,
        /// arg is an array of [`GnttabUnmapGrantRef`].
        UnmapGrantRef = 1,
        /// arg is a [`GnttabSetupTable`].
        SetupTable = 2,
        /// arg is a [`GnttabDumpTable`].
        DumpTable = 3,
        /// arg is an array of [`GnttabTransfer`].
        Transfer = 4,
        /// arg is an array of [`GnttabCopy`].
        Copy = 5,
        /// arg is a [`GnttabQuerySize`].
        QuerySize = 6,
        /// arg is an array of [`GnttabUnmapAndReplace`].
        UnmapAndReplace = 7,
        /// arg is a [`GnttabSetVersion`].
        SetVersion = 8,
        /// arg is a [`GnttabGetStatusFrames`].
        GetStatusFrames = 9,
        /// arg is a [`GnttabGetVersion`].
        GetVersion = 10,
        /// arg is an array of `gnttab_swap_grant_ref`.
        SwapGrantRef = 11,
        /// arg is an array of `gnttab_cache_flush` (Arm only).
        CacheFlush = 12,
    }
}

/// A v1 shared grant entry (`struct grant_entry_v1`), 512 to a 4 KiB grant frame. The
/// granting domain writes `domid` and `frame`, then `flags`; the hypervisor only ever
/// sets and clears `GTF_reading`/`GTF_writing` in `flags`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GrantEntryV1 {
    /// `GTF_*`: the type in the low two bits, then the flag bits.
    pub flags: u16,
    /// The domain allowed to use the grant.
    pub domid: DomId,
    /// For `GTF_permit_access` the frame that domain may access: for a PV granting domain
    /// a machine frame number. For `GTF_accept_transfer`, the frame transferred in.
    pub frame: u32,
}

assert_layout!(
    GrantEntryV1,
    size = 8,
    align = 4,
    flags = 0,
    domid = 2,
    frame = 4
);

impl GrantEntryV1 {
    /// `flags` and `domid` as the one 32-bit word the hypervisor compare-exchanges, so
    /// that a change of either by the guest is seen (`flags` in the low half: x86 is
    /// little-endian).
    pub const fn header(&self) -> u32 {
        header_word(self.flags, self.domid)
    }
}

/// The 32-bit word at the start of a v1 entry: `flags` low, `domid` high.
pub const fn header_word(flags: u16, domid: DomId) -> u32 {
    flags as u32 | (domid as u32) << 16
}

/// The `flags` half of a header word.
pub const fn header_flags(word: u32) -> u16 {
    word as u16
}

/// The `domid` half of a header word.
pub const fn header_domid(word: u32) -> DomId {
    (word >> 16) as DomId
}

/// Bytes of a v1 entry.
pub const GRANT_ENTRY_V1_SIZE: usize = 8;
/// v1 entries in one 4 KiB grant frame.
pub const GRANT_ENTRIES_V1_PER_FRAME: u32 = 4096 / GRANT_ENTRY_V1_SIZE as u32;

/// Entries at the start of a table that the toolstack reserves (`GNTTAB_NR_RESERVED_ENTRIES`).
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;
/// The reserved entry granting the console ring to the console backend.
pub const GNTTAB_RESERVED_CONSOLE: GrantRef = 0;
/// The reserved entry granting the xenstore ring to xenstored.
pub const GNTTAB_RESERVED_XENSTORE: GrantRef = 1;

// Entry types, in `flags & GTF_TYPE_MASK` (`GTF_*`).
/// The entry grants nothing.
pub const GTF_INVALID: u16 = 0;
/// `domid` may map or copy `frame`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// `domid` may transfer a frame into this entry.
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
/// `domid` may use another domain's grant through this one (v2 only).
pub const GTF_TRANSITIVE: u16 = 3;
pub const GTF_TYPE_MASK: u16 = 3;

// Flag bits of a `GTF_permit_access` entry.
/// The grantee may only read the frame. [granting domain]
pub const GTF_READONLY: u16 = 1 << 2;
/// The grantee holds the frame mapped or pinned for reading. [hypervisor]
pub const GTF_READING: u16 = 1 << 3;
/// The grantee holds the frame mapped or pinned for writing. [hypervisor]
pub const GTF_WRITING: u16 = 1 << 4;
/// Cache attributes the grantee's mapping gets (`GTF_PWT`, `GTF_PCD`, `GTF_PAT`).
pub const GTF_PWT: u16 = 1 << 5;
pub const GTF_PCD: u16 = 1 << 6;
pub const GTF_PAT: u16 = 1 << 7;
/// Only part of the frame is granted (v2 only; never mappable).
pub const GTF_SUB_PAGE: u16 = 1 << 8;

// Flag bits of a `GTF_accept_transfer` entry (the same bit numbers, other meanings).
/// The hypervisor has committed to transferring a frame. [hypervisor]
pub const GTF_TRANSFER_COMMITTED: u16 = 1 << 2;
/// The transfer is done and `frame` holds the new frame. [hypervisor]
pub const GTF_TRANSFER_COMPLETED: u16 = 1 << 3;

// `gnttab_map_grant_ref.flags` and `gnttab_unmap_grant_ref` (`GNTMAP_*`).
/// Map for device access: `dev_bus_addr` gets the bus address.
pub const GNTMAP_DEVICE_MAP: u32 = 1 << 0;
/// Map for CPU access at `host_addr`.
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// Read-only mapping.
pub const GNTMAP_READONLY: u32 = 1 << 2;
/// With `GNTMAP_host_map`: the mapping is also usable by the current application (the
/// PTE gets the user bit), not only by the guest kernel.
pub const GNTMAP_APPLICATION_MAP: u32 = 1 << 3;
/// With `GNTMAP_host_map`: `host_addr` is the machine address of the PTE to write, not a
/// virtual address.
pub const GNTMAP_CONTAINS_PTE: u32 = 1 << 4;
/// Bits 16 and up are the guest's own (Linux's gntdev tags its mappings there); the
/// hypervisor ignores them.
pub const GNTMAP_GUEST_AVAIL_MASK: u32 = !0 << 16;

// `gnttab_copy.flags` (`GNTCOPY_*`).
/// `source.u` is a grant reference of `source.domid`, not a frame of the caller.
pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
/// `dest.u` is a grant reference of `dest.domid`, not a frame of the caller.
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

xen_enum! {
    /// The per-operation status (`GNTST_*`, an `int16_t` in each argument).
    pub enum GrantStatus: i16 {
        Okay = 0,
        /// An error with no more specific code.
        GeneralError = -1,
        /// No such domain.
        BadDomain = -2,
        /// A reference outside the table, or one the caller may not use this way.
        BadGntref = -3,
        /// An unknown mapping handle.
        BadHandle = -4,
        /// `host_addr` does not fit the operation.
        BadVirtAddr = -5,
        /// `dev_bus_addr` does not fit the operation.
        BadDevAddr = -6,
        /// No room in the I/O MMU.
        NoDeviceSpace = -7,
        PermissionDenied = -8,
        /// The frame named is not valid for the operation.
        BadPage = -9,
        /// A copy range crosses a page boundary.
        BadCopyArg = -10,
        /// A transferred frame's address is too large for the receiver.
        AddressTooBig = -11,
        /// Not done; try again.
        Eagain = -12,
        /// Out of space (mapping handles).
        NoSpace = -13,
    }
}

/// `GNTTABOP_map_grant_ref` argument (`struct gnttab_map_grant_ref`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabMapGrantRef {
    /// A virtual address, or with `GNTMAP_contains_pte` the machine address of a PTE.
    pub host_addr: u64,
    /// `GNTMAP_*`.
    pub flags: u32,
    pub r#ref: GrantRef,
    /// The granting domain.
    pub dom: DomId,
    /// Out: a [`GrantStatus`].
    pub status: i16,
    /// Out.
    pub handle: GrantHandle,
    /// Out: the machine address of the granted frame.
    pub dev_bus_addr: u64,
}

assert_layout!(
    GnttabMapGrantRef,
    size = 32,
    align = 8,
    host_addr = 0,
    flags = 8,
    r#ref = 12,
    dom = 16,
    status = 18,
    handle = 20,
    dev_bus_addr = 24,
);

/// `GNTTABOP_unmap_grant_ref` argument (`struct gnttab_unmap_grant_ref`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabUnmapGrantRef {
    /// What the map was given, or 0 to leave the host mapping.
    pub host_addr: u64,
    /// What the map returned, or 0 to leave the device mapping.
    pub dev_bus_addr: u64,
    pub handle: GrantHandle,
    /// Out: a [`GrantStatus`].
    pub status: i16,
    pub _cpad0: u16,
}

assert_layout!(
    GnttabUnmapGrantRef,
    size = 24,
    align = 8,
    host_addr = 0,
    dev_bus_addr = 8,
    handle = 16,
    status = 20,
);

/// `GNTTABOP_setup_table` argument (`struct gnttab_setup_table`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabSetupTable {
    /// Usually `DOMID_SELF`.
    pub dom: DomId,
    pub _cpad0: u16,
    /// Grant frames wanted; the table grows to this many, never shrinks.
    pub nr_frames: u32,
    /// Out: a [`GrantStatus`].
    pub status: i16,
    pub _cpad1: [u8; 6],
    /// Array of `nr_frames` `xen_pfn_t` to fill with the frames (machine frames for PV).
    pub frame_list: GuestHandle,
}

assert_layout!(
    GnttabSetupTable,
    size = 24,
    align = 8,
    dom = 0,
    nr_frames = 4,
    status = 8,
    frame_list = 16,
);

/// `GNTTABOP_dump_table` argument (`struct gnttab_dump_table`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabDumpTable {
    pub dom: DomId,
    /// Out: a [`GrantStatus`].
    pub status: i16,
}

assert_layout!(GnttabDumpTable, size = 4, align = 2, dom = 0, status = 2);

/// `GNTTABOP_transfer` argument (`struct gnttab_transfer`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabTransfer {
    pub mfn: XenPfn,
    pub domid: DomId,
    pub _cpad0: u16,
    pub r#ref: GrantRef,
    /// Out: a [`GrantStatus`].
    pub status: i16,
    pub _cpad1: [u8; 6],
}

assert_layout!(
    GnttabTransfer,
    size = 24,
    align = 8,
    mfn = 0,
    domid = 8,
    r#ref = 12,
    status = 16,
);

/// One side of a copy (`struct gnttab_copy_ptr`). `u` is a C union of a grant reference
/// and a frame number, chosen by the `GNTCOPY_*_gref` flag; see the accessors.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabCopyPtr {
    /// `u.ref` (low 32 bits) or `u.gmfn`.
    pub u: u64,
    /// The granting domain, for a grant reference.
    pub domid: DomId,
    /// Byte offset in the frame.
    pub offset: u16,
    pub _cpad0: u32,
}

assert_layout!(
    GnttabCopyPtr,
    size = 16,
    align = 8,
    u = 0,
    domid = 8,
    offset = 10
);

impl GnttabCopyPtr {
    /// `u.ref`.
    pub const fn gref(&self) -> GrantRef {
        self.u as GrantRef
    }

    /// `u.gmfn`.
    pub const fn gmfn(&self) -> XenPfn {
        self.u
    }

    /// A side naming grant `gref` of `domid`.
    pub const fn with_gref(gref: GrantRef, domid: DomId, offset: u16) -> Self {
        Self {
            u: gref as u64,
            domid,
            offset,
            _cpad0: 0,
        }
    }

    /// A side naming the caller's own frame `gmfn`.
    pub const fn with_gmfn(gmfn: XenPfn, domid: DomId, offset: u16) -> Self {
        Self {
            u: gmfn,
            domid,
            offset,
            _cpad0: 0,
        }
    }
}

/// `GNTTABOP_copy` argument (`struct gnttab_copy`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabCopy {
    pub source: GnttabCopyPtr,
    pub dest: GnttabCopyPtr,
    /// Bytes to copy; `offset + len` stays within one page on both sides.
    pub len: u16,
    /// `GNTCOPY_*`.
    pub flags: u16,
    /// Out: a [`GrantStatus`].
    pub status: i16,
    pub _cpad0: u16,
}

assert_layout!(
    GnttabCopy,
    size = 40,
    align = 8,
    source = 0,
    dest = 16,
    len = 32,
    flags = 34,
    status = 36,
);

/// `GNTTABOP_query_size` argument (`struct gnttab_query_size`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabQuerySize {
    pub dom: DomId,
    pub _cpad0: u16,
    /// Out: frames in use.
    pub nr_frames: u32,
    /// Out: the most `setup_table` will grow to.
    pub max_nr_frames: u32,
    /// Out: a [`GrantStatus`].
    pub status: i16,
    pub _cpad1: u16,
}

assert_layout!(
    GnttabQuerySize,
    size = 16,
    align = 4,
    dom = 0,
    nr_frames = 4,
    max_nr_frames = 8,
    status = 12,
);

/// `GNTTABOP_unmap_and_replace` argument (`struct gnttab_unmap_and_replace`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabUnmapAndReplace {
    pub host_addr: u64,
    pub new_addr: u64,
    pub handle: GrantHandle,
    /// Out: a [`GrantStatus`].
    pub status: i16,
    pub _cpad0: u16,
}

assert_layout!(
    GnttabUnmapAndReplace,
    size = 24,
    align = 8,
    host_addr = 0,
    new_addr = 8,
    handle = 16,
    status = 20,
);

/// `GNTTABOP_set_version` argument (`struct gnttab_set_version`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabSetVersion {
    /// In: the version wanted. Out: the version in force.
    pub version: u32,
}

assert_layout!(GnttabSetVersion, size = 4, align = 4, version = 0);

/// `GNTTABOP_get_status_frames` argument (`struct gnttab_get_status_frames`; v2 only).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabGetStatusFrames {
    pub nr_frames: u32,
    pub dom: DomId,
    /// Out: a [`GrantStatus`].
    pub status: i16,
    /// Array of `nr_frames` `uint64_t` to fill.
    pub frame_list: GuestHandle,
}

assert_layout!(
    GnttabGetStatusFrames,
    size = 16,
    align = 8,
    nr_frames = 0,
    dom = 4,
    status = 6,
    frame_list = 8,
);

/// `GNTTABOP_get_version` argument (`struct gnttab_get_version`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GnttabGetVersion {
    pub dom: DomId,
    pub pad: u16,
    /// Out.
    pub version: u32,
}

assert_layout!(
    GnttabGetVersion,
    size = 8,
    align = 4,
    dom = 0,
    pad = 2,
    version = 4
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::UnknownNumber;

    #[test]
    fn op_numbers() {
        for &op in GnttabOp::ALL {
            assert_eq!(GnttabOp::try_from(op.raw()), Ok(op));
        }
        assert_eq!(GnttabOp::try_from(5u32), Ok(GnttabOp::Copy));
        assert_eq!(GnttabOp::try_from(10u32), Ok(GnttabOp::GetVersion));
        assert_eq!(GnttabOp::try_from(13u32), Err(UnknownNumber(13)));
    }

    #[test]
    fn status_codes() {
        assert_eq!(GrantStatus::Okay.raw(), 0);
        assert_eq!(GrantStatus::BadGntref.raw(), -3);
        assert_eq!(GrantStatus::BadCopyArg.raw(), -10);
        assert_eq!(GrantStatus::NoSpace.raw(), -13);
        assert_eq!(
            GrantStatus::try_from(-8i16),
            Ok(GrantStatus::PermissionDenied)
        );
        // Both sides of the comparison sign-extend, so negative codes decode.
        assert!(GrantStatus::try_from(-14i16).is_err());
        assert!(GrantStatus::try_from(1i16).is_err());
    }

    #[test]
    fn flag_bits() {
        assert_eq!(
            (GTF_READONLY, GTF_READING, GTF_WRITING, GTF_SUB_PAGE),
            (4, 8, 16, 256)
        );
        assert_eq!((GTF_PWT, GTF_PCD, GTF_PAT), (0x20, 0x40, 0x80));
        assert_eq!((GTF_TRANSFER_COMMITTED, GTF_TRANSFER_COMPLETED), (4, 8));
        assert_eq!(
            (
                GNTMAP_DEVICE_MAP,
                GNTMAP_HOST_MAP,
                GNTMAP_READONLY,
                GNTMAP_APPLICATION_MAP,
                GNTMAP_CONTAINS_PTE
            ),
            (1, 2, 4, 8, 16)
        );
        assert_eq!(GNTMAP_GUEST_AVAIL_MASK, 0xffff_0000);
        assert_eq!((GNTCOPY_SOURCE_GREF, GNTCOPY_DEST_GREF), (1, 2));
        assert_eq!(GRANT_ENTRIES_V1_PER_FRAME, 512);
    }

    #[test]
    fn entry_header_word() {
        let e = GrantEntryV1 {
            flags: GTF_PERMIT_ACCESS | GTF_READONLY,
            domid: 7,
            frame: 0x1234,
        };
        let bytes = e.as_bytes();
        let word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        assert_eq!(word, e.header());
        assert_eq!(header_flags(word), GTF_PERMIT_ACCESS | GTF_READONLY);
        assert_eq!(header_domid(word), 7);
        assert_eq!(&bytes[4..], &0x1234u32.to_le_bytes());
    }

    #[test]
    fn copy_ptr_union() {
        let p = GnttabCopyPtr::with_gref(0x55, 3, 100);
        assert_eq!(p.gref(), 0x55);
        assert_eq!(&p.as_bytes()[..8], &[0x55, 0, 0, 0, 0, 0, 0, 0]);
        let f = GnttabCopyPtr::with_gmfn(0x1_0000_0001, 0x7ff0, 8);
        assert_eq!(f.gmfn(), 0x1_0000_0001);
        assert_eq!(f.gref(), 1);
        assert_eq!(&f.as_bytes()[8..12], &[0xf0, 0x7f, 8, 0]);
    }

    #[test]
    fn map_op_bytes() {
        let mut bytes = [0u8; 32];
        bytes[0..8].copy_from_slice(&0xffff_8880_0000_1000u64.to_le_bytes());
        bytes[8..12].copy_from_slice(&(GNTMAP_HOST_MAP | GNTMAP_READONLY).to_le_bytes());
        bytes[12..16].copy_from_slice(&9u32.to_le_bytes());
        bytes[16..18].copy_from_slice(&2u16.to_le_bytes());
        let mut op = GnttabMapGrantRef::read_from_bytes(&bytes).unwrap();
        assert_eq!((op.r#ref, op.dom), (9, 2));
        op.status = GrantStatus::BadGntref.raw();
        op.handle = 4;
        assert_eq!(&op.as_bytes()[18..24], &[0xfd, 0xff, 4, 0, 0, 0]);
    }
}
