//! `io/netif.h`: the network device rings (tx and rx requests and responses, extra info).
//!
//! Two rings per queue, each one 4 KiB page granted by the frontend: tx (frontend →
//! backend packets: 12-byte requests, 4-byte responses, 256 entries) and rx (backend →
//! frontend: the frontend posts empty granted pages as 8-byte requests, the backend
//! answers each in the same slot with an 8-byte response, 256 entries). Extra-info
//! records (8 bytes) take a request slot on tx and a response slot on rx.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::xen::grant_table::GrantRef;

/// The fewest slots a backend must accept for one packet (`XEN_NETIF_NR_SLOTS_MIN`);
/// netfront never uses more (it linearises a packet that would).
pub const XEN_NETIF_NR_SLOTS_MIN: usize = 18;
/// The largest packet a tx request chain describes (`XEN_NETIF_MAX_TX_SIZE`): the first
/// slot's `size` is a `u16`.
pub const XEN_NETIF_MAX_TX_SIZE: usize = 0xFFFF;
/// The page every slot lives in (`XEN_PAGE_SIZE`): `offset + size` of a slot must not
/// exceed it.
pub const XEN_NETIF_PAGE_SIZE: usize = 4096;

/// Tx request flag: the packet's L4 checksum is blank (partial: the pseudo-header sum
/// only) and must be completed (`NETTXF_csum_blank`).
pub const NETTXF_CSUM_BLANK: u16 = 1 << 0;
/// Tx request flag: the packet's checksum is known good (`NETTXF_data_validated`).
pub const NETTXF_DATA_VALIDATED: u16 = 1 << 1;
/// Tx request flag: another data slot of the same packet follows (`NETTXF_more_data`).
pub const NETTXF_MORE_DATA: u16 = 1 << 2;
/// Tx request flag: extra-info slots follow this (first) slot (`NETTXF_extra_info`).
pub const NETTXF_EXTRA_INFO: u16 = 1 << 3;

/// Rx response flag: the checksum is known good (`NETRXF_data_validated`).
pub const NETRXF_DATA_VALIDATED: u16 = 1 << 0;
/// Rx response flag: the L4 checksum is blank (partial) (`NETRXF_csum_blank`).
pub const NETRXF_CSUM_BLANK: u16 = 1 << 1;
/// Rx response flag: another slot of the same packet follows (`NETRXF_more_data`).
pub const NETRXF_MORE_DATA: u16 = 1 << 2;
/// Rx response flag: extra-info slots follow this (first) slot (`NETRXF_extra_info`).
pub const NETRXF_EXTRA_INFO: u16 = 1 << 3;
/// Rx response flag: a GSO prefix slot precedes the packet (`NETRXF_gso_prefix`); an old
/// variant of GSO the hypervisor never uses.
pub const NETRXF_GSO_PREFIX: u16 = 1 << 4;

/// Response status: a dropped packet (`NETIF_RSP_DROPPED`).
pub const NETIF_RSP_DROPPED: i16 = -2;
/// Response status: an error (`NETIF_RSP_ERROR`).
pub const NETIF_RSP_ERROR: i16 = -1;
/// Response status: done (`NETIF_RSP_OKAY`).
pub const NETIF_RSP_OKAY: i16 = 0;
/// Response status of an extra-info slot's tx response (`NETIF_RSP_NULL`).
pub const NETIF_RSP_NULL: i16 = 1;

/// Extra-info flag: another extra-info slot follows (`XEN_NETIF_EXTRA_FLAG_MORE`).
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1 << 0;

xen_enum! {
    /// Extra-info types (`XEN_NETIF_EXTRA_TYPE_*`); 0 (`NONE`) is never valid.
    pub enum NetifExtraType: u8 {
        /// The body is [`NetifExtraGso`].
        Gso = 1,
        /// A multicast address to add (`u.mcast`).
        McastAdd = 2,
        /// A multicast address to remove (`u.mcast`).
        McastDel = 3,
        /// A packet hash (`u.hash`).
        Hash = 4,
    }
}

/// One past the largest extra-info type (`XEN_NETIF_EXTRA_TYPE_MAX`).
pub const XEN_NETIF_EXTRA_TYPE_MAX: u8 = 5;

xen_enum! {
    /// GSO types of [`NetifExtraGso::gso_type`] (`XEN_NETIF_GSO_TYPE_*`).
    pub enum NetifGsoType: u8 {
        None = 0,
        TcpV4 = 1,
        TcpV6 = 2,
    }
}

xen_enum! {
    /// Hash types of the hash extra (`_XEN_NETIF_CTRL_HASH_TYPE_*`: bit numbers).
    pub enum NetifHashType: u8 {
        Ipv4 = 0,
        Ipv4Tcp = 1,
        Ipv6 = 2,
        Ipv6Tcp = 3,
    }
}

/// A tx request (`struct netif_tx_request`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct NetifTxRequest {
    /// The granted page holding this slot's data.
    pub gref: GrantRef,
    /// Where the data starts in that page.
    pub offset: u16,
    /// `NETTXF_*`.
    pub flags: u16,
    /// Echoed in the response.
    pub id: u16,
    /// First slot: the whole packet's length; later slots: their own.
    pub size: u16,
}

assert_layout!(
    NetifTxRequest,
    size = 12,
    align = 4,
    gref = 0,
    offset = 4,
    flags = 6,
    id = 8,
    size = 10
);

/// A tx response (`struct netif_tx_response`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct NetifTxResponse {
    pub id: u16,
    /// `NETIF_RSP_*`.
    pub status: i16,
}

assert_layout!(NetifTxResponse, size = 4, align = 2, id = 0, status = 2);

/// An rx request (`struct netif_rx_request`): an empty page the backend may fill.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct NetifRxRequest {
    /// Echoed in the response.
    pub id: u16,
    pub pad: u16,
    /// The granted (writable) page.
    pub gref: GrantRef,
}

assert_layout!(
    NetifRxRequest,
    size = 8,
    align = 4,
    id = 0,
    pad = 2,
    gref = 4
);

/// An rx response (`struct netif_rx_response`), in the slot of its request.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct NetifRxResponse {
    pub id: u16,
    /// Where the data starts in the page.
    pub offset: u16,
    /// `NETRXF_*`.
    pub flags: u16,
    /// Bytes in this slot, or a negative `NETIF_RSP_*`.
    pub status: i16,
}

assert_layout!(
    NetifRxResponse,
    size = 8,
    align = 2,
    id = 0,
    offset = 2,
    flags = 4,
    status = 6
);

/// An extra-info record (`struct netif_extra_info`): `type`, `flags`, then a 6-byte union
/// (`u.gso`, `u.mcast`, `u.hash`) kept as bytes with typed accessors.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct NetifExtraInfo {
    /// A [`NetifExtraType`] (raw: a guest may send anything).
    pub extra_type: u8,
    /// `XEN_NETIF_EXTRA_FLAG_*`.
    pub flags: u8,
    /// The union `u` (alignment 2 in C, from `pad[3]`).
    pub u: [u16; 3],
}

assert_layout!(
    NetifExtraInfo,
    size = 8,
    align = 2,
    extra_type = 0,
    flags = 1,
    u = 2
);

/// The GSO body of an extra-info record (`u.gso`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct NetifExtraGso {
    /// The MSS.
    pub size: u16,
    /// A [`NetifGsoType`] (raw).
    pub gso_type: u8,
    pub pad: u8,
    /// `XEN_NETIF_GSO_FEAT_*`: none are defined.
    pub features: u16,
}

assert_layout!(
    NetifExtraGso,
    size = 6,
    align = 2,
    size = 0,
    gso_type = 2,
    pad = 3,
    features = 4
);

/// The hash body of an extra-info record (`u.hash`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct NetifExtraHash {
    /// A [`NetifHashType`] (raw).
    pub hash_type: u8,
    /// `XEN_NETIF_CTRL_HASH_ALGORITHM_*`.
    pub algorithm: u8,
    pub value: [u8; 4],
}

assert_layout!(
    NetifExtraHash,
    size = 6,
    align = 1,
    hash_type = 0,
    algorithm = 1,
    value = 2
);

impl NetifExtraInfo {
    /// The union as its 6 bytes.
    pub fn body(&self) -> [u8; 6] {
        let mut out = [0u8; 6];
        out.copy_from_slice(self.u.as_bytes());
        out
    }

    fn with_body(extra_type: u8, flags: u8, body: &[u8; 6]) -> Self {
        let mut info = Self {
            extra_type,
            flags,
            u: [0; 3],
        };
        info.u.as_mut_bytes().copy_from_slice(body);
        info
    }

    /// The type, `None` for 0 or a number `netif.h` does not define.
    pub fn kind(&self) -> Option<NetifExtraType> {
        NetifExtraType::from_raw(u64::from(self.extra_type))
    }

    /// Whether another extra-info slot follows.
    pub fn more(&self) -> bool {
        self.flags & XEN_NETIF_EXTRA_FLAG_MORE != 0
    }

    /// `u.gso`.
    pub fn gso(&self) -> NetifExtraGso {
        crate::xen::read_prefix(&self.body())
    }

    /// `u.mcast.addr`.
    pub fn mcast(&self) -> [u8; 6] {
        self.body()
    }

    /// `u.hash`.
    pub fn hash(&self) -> NetifExtraHash {
        crate::xen::read_prefix(&self.body())
    }

    /// A GSO record (`flags` 0: no further extra follows).
    pub fn new_gso(gso: NetifExtraGso) -> Self {
        let mut body = [0u8; 6];
        crate::xen::write_prefix(&mut body, &gso);
        Self::with_body(NetifExtraType::Gso.raw(), 0, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_request_decodes_from_ring_bytes() {
        // gref 0x11223344, offset 0x100, flags more_data|csum_blank, id 7, size 1514.
        let bytes = [
            0x44, 0x33, 0x22, 0x11, 0x00, 0x01, 0x05, 0x00, 0x07, 0x00, 0xea, 0x05,
        ];
        let req = NetifTxRequest::read_from_bytes(&bytes).unwrap();
        assert_eq!(req.gref, 0x1122_3344);
        assert_eq!(req.offset, 0x100);
        assert_eq!(req.flags, NETTXF_MORE_DATA | NETTXF_CSUM_BLANK);
        assert_eq!(req.id, 7);
        assert_eq!(req.size, 1514);
    }

    #[test]
    fn responses_encode_little_endian() {
        let tx = NetifTxResponse {
            id: 0x0102,
            status: NETIF_RSP_DROPPED,
        };
        assert_eq!(tx.as_bytes(), &[0x02, 0x01, 0xfe, 0xff]);
        let rx = NetifRxResponse {
            id: 3,
            offset: 0,
            flags: NETRXF_MORE_DATA | NETRXF_DATA_VALIDATED,
            status: 4096,
        };
        assert_eq!(rx.as_bytes(), &[3, 0, 0, 0, 5, 0, 0x00, 0x10]);
    }

    #[test]
    fn extra_info_gso_round_trips() {
        let info = NetifExtraInfo::new_gso(NetifExtraGso {
            size: 1448,
            gso_type: NetifGsoType::TcpV4.raw(),
            pad: 0,
            features: 0,
        });
        assert_eq!(info.as_bytes(), &[1, 0, 0xa8, 0x05, 1, 0, 0, 0]);
        let back = NetifExtraInfo::read_from_bytes(info.as_bytes()).unwrap();
        assert_eq!(back.kind(), Some(NetifExtraType::Gso));
        assert!(!back.more());
        assert_eq!(back.gso().size, 1448);
        assert_eq!(back.gso().gso_type, 1);
    }

    #[test]
    fn extra_info_mcast_and_hash_bodies() {
        let bytes = [2, 1, 0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
        let info = NetifExtraInfo::read_from_bytes(&bytes).unwrap();
        assert_eq!(info.kind(), Some(NetifExtraType::McastAdd));
        assert!(info.more());
        assert_eq!(info.mcast(), [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);
        let bytes = [4, 0, 1, 1, 0xde, 0xad, 0xbe, 0xef];
        let hash = NetifExtraInfo::read_from_bytes(&bytes).unwrap().hash();
        assert_eq!(hash.hash_type, NetifHashType::Ipv4Tcp.raw());
        assert_eq!(hash.value, [0xde, 0xad, 0xbe, 0xef]);
        // Type 0 and types past the maximum name nothing.
        let none = NetifExtraInfo::read_from_bytes(&[0u8; 8]).unwrap();
        assert_eq!(none.kind(), None);
        assert_eq!(
            NetifExtraType::from_raw(u64::from(XEN_NETIF_EXTRA_TYPE_MAX)),
            None
        );
    }

    #[test]
    fn numbers_match_the_header() {
        assert_eq!(XEN_NETIF_NR_SLOTS_MIN, 18);
        assert_eq!(XEN_NETIF_MAX_TX_SIZE, 65535);
        assert_eq!(
            (
                NETTXF_CSUM_BLANK,
                NETTXF_DATA_VALIDATED,
                NETTXF_MORE_DATA,
                NETTXF_EXTRA_INFO
            ),
            (1, 2, 4, 8)
        );
        assert_eq!(
            (
                NETRXF_DATA_VALIDATED,
                NETRXF_CSUM_BLANK,
                NETRXF_MORE_DATA,
                NETRXF_EXTRA_INFO
            ),
            (1, 2, 4, 8)
        );
        assert_eq!(NETRXF_GSO_PREFIX, 16);
        assert_eq!(
            (
                NETIF_RSP_DROPPED,
                NETIF_RSP_ERROR,
                NETIF_RSP_OKAY,
                NETIF_RSP_NULL
            ),
            (-2, -1, 0, 1)
        );
        assert_eq!(NetifGsoType::TcpV6.raw(), 2);
    }
}
