//! `io/blkif.h`: the block device ring (requests, segments, responses, operations).
//!
//! One ring page holds 32 entries of 112 bytes (the request; the 16-byte response shares
//! the slot). Data moves through segments: a grant of one 4 KiB frame and the 512-byte
//! sectors `first_sect..=last_sect` in it. Sector numbers are always in 512-byte units,
//! whatever the disk's `sector-size`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::xen::grant_table::GrantRef;

xen_enum! {
    /// `BLKIF_OP_*`: a request's `operation` (and a response's, echoed).
    pub enum BlkifOp: u8 {
        Read = 0,
        Write = 1,
        /// Ordered write; no backend of ours offers it (`feature-barrier` absent).
        WriteBarrier = 2,
        /// Flush the disk's write cache; with segments, write them first (Linux sends
        /// its PREFLUSH/FUA writes this way).
        FlushDiskcache = 3,
        /// `BLKIF_OP_RESERVED_1`: a retired number, never valid.
        Reserved1 = 4,
        /// A [`BlkifRequestDiscard`].
        Discard = 5,
        /// A [`BlkifRequestIndirect`]: the segments live in granted pages.
        Indirect = 6,
    }
}

/// Segments a direct request carries (`BLKIF_MAX_SEGMENTS_PER_REQUEST`).
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// Grant references of indirect pages in one indirect request
/// (`BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`).
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// Segments in one indirect page: a 4 KiB page of 8-byte segments
/// (`BLKIF_SEGS_PER_INDIRECT_FRAME` in Linux's blkif headers).
pub const BLKIF_SEGS_PER_INDIRECT_FRAME: usize = 4096 / core::mem::size_of::<BlkifRequestSegment>();
/// The last sector number a segment may name: a 4 KiB frame holds eight 512-byte sectors.
pub const BLKIF_MAX_SECTOR_IN_FRAME: u8 = 7;
/// The unit of `sector_number`, `nr_sectors`, `first_sect`/`last_sect` and `sectors`.
pub const BLKIF_SECTOR_BYTES: usize = 512;

/// `BLKIF_DISCARD_SECURE`: [`BlkifRequestDiscard::flag`] asks for a secure erase
/// (ignored unless the backend wrote `discard-secure` = 1).
pub const BLKIF_DISCARD_SECURE: u8 = 1;

/// `BLKIF_RSP_OKAY`.
pub const BLKIF_RSP_OKAY: i16 = 0;
/// `BLKIF_RSP_ERROR`: failed (`-EIO` to the guest).
pub const BLKIF_RSP_ERROR: i16 = -1;
/// `BLKIF_RSP_EOPNOTSUPP`: the operation is not supported.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;

/// `VDISK_CDROM`, a bit of the backend's `info` node.
pub const VDISK_CDROM: u32 = 0x1;
/// `VDISK_REMOVABLE`.
pub const VDISK_REMOVABLE: u32 = 0x2;
/// `VDISK_READONLY`.
pub const VDISK_READONLY: u32 = 0x4;

/// The largest `ring-page-order` the protocol allows (`XENBUS_MAX_RING_GRANT_ORDER` in
/// Linux: 16 pages).
pub const BLKIF_MAX_RING_PAGE_ORDER: u32 = 4;

/// `struct blkif_request_segment`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct BlkifRequestSegment {
    pub gref: GrantRef,
    /// The first 512-byte sector of the frame to transfer (inclusive).
    pub first_sect: u8,
    /// The last one (inclusive), at most 7.
    pub last_sect: u8,
    pub _cpad: [u8; 2],
}

assert_layout!(
    BlkifRequestSegment,
    size = 8,
    align = 4,
    gref = 0,
    first_sect = 4,
    last_sect = 5
);

/// `struct blkif_request`: read, write, barrier and flush requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct BlkifRequest {
    pub operation: u8,
    pub nr_segments: u8,
    /// `blkif_vdev_t`: only meaningful to backends serving several disks on a ring.
    pub handle: u16,
    pub _cpad: u32,
    /// The guest's value, echoed in the response.
    pub id: u64,
    /// The first 512-byte sector on the virtual disk.
    pub sector_number: u64,
    pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

assert_layout!(
    BlkifRequest,
    size = 112,
    align = 8,
    operation = 0,
    nr_segments = 1,
    handle = 2,
    id = 8,
    sector_number = 16,
    seg = 24
);

/// `struct blkif_request_discard` (same ring slot, `operation` = DISCARD).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct BlkifRequestDiscard {
    pub operation: u8,
    /// [`BLKIF_DISCARD_SECURE`] or zero.
    pub flag: u8,
    pub handle: u16,
    pub _cpad: u32,
    pub id: u64,
    pub sector_number: u64,
    pub nr_sectors: u64,
}

assert_layout!(
    BlkifRequestDiscard,
    size = 32,
    align = 8,
    operation = 0,
    flag = 1,
    handle = 2,
    id = 8,
    sector_number = 16,
    nr_sectors = 24
);

/// `struct blkif_request_indirect` on x86-64 (no i386 tail padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct BlkifRequestIndirect {
    pub operation: u8,
    /// READ or WRITE.
    pub indirect_op: u8,
    /// Segments in the indirect pages (up to the backend's
    /// `feature-max-indirect-segments`).
    pub nr_segments: u16,
    pub _cpad: u32,
    pub id: u64,
    pub sector_number: u64,
    pub handle: u16,
    pub _cpad2: u16,
    /// Grants of the pages holding the [`BlkifRequestSegment`]s, 512 to a page.
    pub indirect_grefs: [GrantRef; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    pub _cpad3: u32,
}

assert_layout!(
    BlkifRequestIndirect,
    size = 64,
    align = 8,
    operation = 0,
    indirect_op = 1,
    nr_segments = 2,
    id = 8,
    sector_number = 16,
    handle = 24,
    indirect_grefs = 28
);

/// `struct blkif_response`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct BlkifResponse {
    pub id: u64,
    /// The request's operation (an indirect request's `indirect_op`).
    pub operation: u8,
    pub _cpad: u8,
    /// A `BLKIF_RSP_*`.
    pub status: i16,
    pub _cpad2: u32,
}

assert_layout!(
    BlkifResponse,
    size = 16,
    align = 8,
    id = 0,
    operation = 8,
    status = 10
);

/// Bytes of one ring slot: the union of request and response.
pub const BLKIF_RING_ENTRY_BYTES: usize = core::mem::size_of::<BlkifRequest>();

impl BlkifResponse {
    /// A response with its padding zeroed.
    pub const fn new(id: u64, operation: u8, status: i16) -> Self {
        BlkifResponse {
            id,
            operation,
            _cpad: 0,
            status,
            _cpad2: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use zerocopy::FromZeros;

    use super::*;
    use crate::xen::io::ring::ring_size;

    #[test]
    fn numbers_match_the_header() {
        assert_eq!(BlkifOp::Read.raw(), 0);
        assert_eq!(BlkifOp::Write.raw(), 1);
        assert_eq!(BlkifOp::WriteBarrier.raw(), 2);
        assert_eq!(BlkifOp::FlushDiskcache.raw(), 3);
        assert_eq!(BlkifOp::Discard.raw(), 5);
        assert_eq!(BlkifOp::Indirect.raw(), 6);
        assert_eq!(BlkifOp::try_from(7u8).ok(), None);
        assert_eq!(BLKIF_SEGS_PER_INDIRECT_FRAME, 512);
        assert_eq!(
            (BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP),
            (0, -1, -2)
        );
        assert_eq!(VDISK_CDROM | VDISK_REMOVABLE | VDISK_READONLY, 7);
        assert_eq!(ring_size(4096, BLKIF_RING_ENTRY_BYTES), 32);
    }

    #[test]
    fn a_request_decodes_from_its_bytes() {
        let mut bytes = [0u8; 112];
        bytes[0] = 1; // write
        bytes[1] = 2;
        bytes[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        bytes[16..24].copy_from_slice(&2048u64.to_le_bytes());
        // seg[1]: gref 9, sectors 3..=7
        bytes[32..36].copy_from_slice(&9u32.to_le_bytes());
        bytes[36] = 3;
        bytes[37] = 7;
        let req = BlkifRequest::read_from_bytes(&bytes).unwrap();
        assert_eq!(req.operation, BlkifOp::Write.raw());
        assert_eq!(req.nr_segments, 2);
        assert_eq!(req.id, 0x1122_3344_5566_7788);
        assert_eq!(req.sector_number, 2048);
        assert_eq!(req.seg[1].gref, 9);
        assert_eq!((req.seg[1].first_sect, req.seg[1].last_sect), (3, 7));

        let disc = BlkifRequestDiscard::read_from_prefix(&bytes).unwrap().0;
        assert_eq!(disc.sector_number, 2048);
        let ind = BlkifRequestIndirect::read_from_prefix(&bytes).unwrap().0;
        assert_eq!(ind.indirect_op, 2);
    }

    #[test]
    fn a_response_encodes_to_its_bytes() {
        let rsp = BlkifResponse::new(0xabcd, 6, BLKIF_RSP_EOPNOTSUPP);
        let bytes = rsp.as_bytes();
        assert_eq!(&bytes[0..8], &0xabcdu64.to_le_bytes());
        assert_eq!(bytes[8], 6);
        assert_eq!(&bytes[10..12], &(-2i16).to_le_bytes());
        let zero = BlkifResponse::new_zeroed();
        assert_eq!(zero.as_bytes(), &[0u8; 16]);
    }
}
