//! The PV console ring (`io/console.h`): one shared page per domain, holding an input ring
//! (backend to guest) and an output ring (guest to backend), each with free-running 32-bit
//! indexes. The guest finds the page and its event channel in `start_info.console.domU`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A console ring index (`XENCONS_RING_IDX`). Indexes run freely and wrap at 2^32; the
/// byte an index names is `idx & (ring size - 1)` (`MASK_XENCONS_IDX`), and
/// `prod - cons` (wrapping) is the number of bytes in the ring.
pub type XenconsRingIdx = u32;

/// Bytes in the input ring (`sizeof(xencons_interface.in)`), a power of two.
pub const XENCONS_IN_SIZE: usize = 1024;
/// Bytes in the output ring (`sizeof(xencons_interface.out)`), a power of two.
pub const XENCONS_OUT_SIZE: usize = 2048;

const _: () = assert!(XENCONS_IN_SIZE.is_power_of_two());
const _: () = assert!(XENCONS_OUT_SIZE.is_power_of_two());

/// The console page's layout (`struct xencons_interface`). The backend produces into `in`
/// (advancing `in_prod`) and consumes from `out` (advancing `out_cons`); the guest does
/// the opposite.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenconsInterface {
    pub r#in: [u8; XENCONS_IN_SIZE],
    pub out: [u8; XENCONS_OUT_SIZE],
    pub in_cons: XenconsRingIdx,
    pub in_prod: XenconsRingIdx,
    pub out_cons: XenconsRingIdx,
    pub out_prod: XenconsRingIdx,
}

assert_layout!(
    XenconsInterface,
    size = 3088,
    align = 4,
    r#in = 0,
    out = 1024,
    in_cons = 3072,
    in_prod = 3076,
    out_cons = 3080,
    out_prod = 3084,
);

/// Byte offsets of the index words in the page, for a hypervisor that accesses them as
/// atomics rather than through a copy of the whole structure.
pub const XENCONS_IN_OFFSET: usize = core::mem::offset_of!(XenconsInterface, r#in);
pub const XENCONS_OUT_OFFSET: usize = core::mem::offset_of!(XenconsInterface, out);
pub const XENCONS_IN_CONS_OFFSET: usize = core::mem::offset_of!(XenconsInterface, in_cons);
pub const XENCONS_IN_PROD_OFFSET: usize = core::mem::offset_of!(XenconsInterface, in_prod);
pub const XENCONS_OUT_CONS_OFFSET: usize = core::mem::offset_of!(XenconsInterface, out_cons);
pub const XENCONS_OUT_PROD_OFFSET: usize = core::mem::offset_of!(XenconsInterface, out_prod);

/// `MASK_XENCONS_IDX` for the input ring: the byte offset in `in` that `idx` names.
pub const fn mask_in_idx(idx: XenconsRingIdx) -> usize {
    idx as usize & (XENCONS_IN_SIZE - 1)
}

/// `MASK_XENCONS_IDX` for the output ring: the byte offset in `out` that `idx` names.
pub const fn mask_out_idx(idx: XenconsRingIdx) -> usize {
    idx as usize & (XENCONS_OUT_SIZE - 1)
}

#[cfg(test)]
mod tests {
    use zerocopy::FromZeros;

    use super::*;

    #[test]
    fn fits_in_a_page_and_masks_wrap() {
        assert!(core::mem::size_of::<XenconsInterface>() <= 4096);
        assert_eq!(mask_in_idx(1023), 1023);
        assert_eq!(mask_in_idx(1024), 0);
        assert_eq!(mask_in_idx(u32::MAX), 1023);
        assert_eq!(mask_out_idx(2049), 1);
        assert_eq!(mask_out_idx(u32::MAX), 2047);
    }

    #[test]
    fn zeroed_page_is_an_empty_ring() {
        let page = XenconsInterface::new_zeroed();
        assert_eq!(page.in_prod.wrapping_sub(page.in_cons), 0);
        assert_eq!(page.out_prod.wrapping_sub(page.out_cons), 0);
        assert_eq!(page.as_bytes().len(), 3088);
    }
}
