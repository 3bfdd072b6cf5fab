//! The shared ring page of `io/ring.h`: a 64-byte header of free-running producer and
//! event indices, then a power-of-two array of entries, each the size of the larger of
//! the request and response (a C union of the two).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The header at the start of every shared ring (`struct <name>_sring` before `ring[]`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SringHeader {
    pub req_prod: u32,
    pub req_event: u32,
    pub rsp_prod: u32,
    pub rsp_event: u32,
    /// `__pad` / the netif `pvt` union in newer headers: unused by the protocol.
    pub pad: [u8; 48],
}

assert_layout!(
    SringHeader,
    size = 64,
    align = 4,
    req_prod = 0,
    req_event = 4,
    rsp_prod = 8,
    rsp_event = 12,
    pad = 16
);

/// Offsets of the header fields, for accessing them in shared memory one at a time.
pub const REQ_PROD: usize = 0;
pub const REQ_EVENT: usize = 4;
pub const RSP_PROD: usize = 8;
pub const RSP_EVENT: usize = 12;
/// Where the entries start.
pub const RING_ENTRIES_OFFSET: usize = 64;

/// Entries of a ring of `bytes` whose entries are `entry_size` bytes: the largest power of
/// two that fits after the header (`__CONST_RING_SIZE`/`__RING_SIZE`).
pub const fn ring_size(bytes: usize, entry_size: usize) -> u32 {
    if bytes <= RING_ENTRIES_OFFSET || entry_size == 0 {
        return 0;
    }
    let n = (bytes - RING_ENTRIES_OFFSET) / entry_size;
    if n == 0 {
        return 0;
    }
    1 << (usize::BITS - 1 - n.leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_match_the_headers() {
        // blkif: 112-byte requests, 32 per page; netif tx 12 bytes, rx 8: 256 each.
        assert_eq!(ring_size(4096, 112), 32);
        assert_eq!(ring_size(4096, 12), 256);
        assert_eq!(ring_size(4096, 8), 256);
        // Multi-page blkif rings (ring-page-order 1..=4).
        assert_eq!(ring_size(2 * 4096, 112), 64);
        assert_eq!(ring_size(16 * 4096, 112), 512);
        assert_eq!(ring_size(64, 8), 0);
    }
}
