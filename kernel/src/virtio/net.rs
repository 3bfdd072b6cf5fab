//! The virtio network device (5.1): feature bits, configuration, the per-packet header,
//! and the ARP frames the devices self test sends and recognises.

use core::fmt;

/// Feature bits (5.1.3).
pub mod feature {
    pub const MAC: u32 = 5;
    pub const MRG_RXBUF: u32 = 15;
    pub const STATUS: u32 = 16;
}

/// What the driver takes when offered: the MAC address and the link status, no offloads
/// (so every received frame is whole and checksummed, and transmitted ones need nothing).
pub const WANTED: u64 = super::bit(feature::MAC) | super::bit(feature::STATUS);

/// Configuration fields (5.1.4).
pub mod config {
    pub const MAC: u64 = 0;
    pub const STATUS: u64 = 6;
    pub const STATUS_LINK_UP: u16 = 1;
}

/// `struct virtio_net_hdr` with VERSION_1 (5.1.6: `num_buffers` is always present): 12
/// bytes before each frame, all zero for a frame without offloads.
pub const HEADER_LEN: usize = 12;

/// Largest Ethernet frame without FCS we send or accept (1500 bytes of payload, no VLAN
/// tag room needed by us, but a tagged frame of 1518 fits too).
pub const MAX_FRAME: usize = 1518;

/// Receive queue index and transmit queue index (5.1.2).
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// What the driver knows about a NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NicInfo {
    /// The device's address, if it has one (VIRTIO_NET_F_MAC).
    pub mac: Option<MacAddr>,
    /// Whether the device reports link status (VIRTIO_NET_F_STATUS).
    pub has_status: bool,
}

impl NicInfo {
    pub fn read(features: u64, read8: impl Fn(u64) -> u8) -> NicInfo {
        let has = |b: u32| features & super::bit(b) != 0;
        NicInfo {
            mac: has(feature::MAC).then(|| {
                let mut m = [0u8; 6];
                for (i, b) in m.iter_mut().enumerate() {
                    *b = read8(config::MAC + i as u64);
                }
                MacAddr(m)
            }),
            has_status: has(feature::STATUS),
        }
    }
}

/// Whether the link is up, from the status field (always up without STATUS: 5.1.4.2).
pub fn link_up(has_status: bool, status: u16) -> bool {
    !has_status || status & config::STATUS_LINK_UP != 0
}

/// The frame a received buffer holds, without the header: `used_len` is what the device
/// reported; `None` when it is too short for a header and an Ethernet header.
pub fn received_frame(buffer: &[u8], used_len: u32) -> Option<&[u8]> {
    let len = (used_len as usize).min(buffer.len());
    (len >= HEADER_LEN + 14).then(|| &buffer[HEADER_LEN..len])
}

const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];

/// A broadcast ARP request (RFC 826) from `mac`/`ip` asking for `target`: 42 bytes.
pub fn arp_request(mac: MacAddr, ip: [u8; 4], target: [u8; 4]) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP);
    // htype 1 (Ethernet), ptype 0x0800 (IPv4), hlen 6, plen 4, op 1 (request).
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac.0);
    f[28..32].copy_from_slice(&ip);
    // Target hardware address unknown (zero).
    f[38..42].copy_from_slice(&target);
    f
}

/// If `frame` is an ARP reply saying `ip` is at some address, sent to `me`, that address.
pub fn arp_reply_from(frame: &[u8], ip: [u8; 4], me: MacAddr) -> Option<MacAddr> {
    if frame.len() < 42
        || frame[12..14] != ETHERTYPE_ARP
        || frame[14..22] != [0, 1, 8, 0, 6, 4, 0, 2]
    {
        return None;
    }
    if frame[28..32] != ip || frame[32..38] != me.0 {
        return None;
    }
    let mut m = [0u8; 6];
    m.copy_from_slice(&frame[22..28]);
    Some(MacAddr(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::bit;

    const ME: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    const GW: MacAddr = MacAddr([0x52, 0x55, 10, 0, 2, 2]);

    #[test]
    fn config_and_link() {
        let cfg = |o: u64| [0x52u8, 0x54, 0, 0x12, 0x34, 0x56, 1, 0][o as usize];
        let i = NicInfo::read(WANTED, cfg);
        assert_eq!(i.mac, Some(ME));
        assert_eq!(i.mac.unwrap().to_string(), "52:54:00:12:34:56");
        assert!(i.has_status);
        assert_eq!(NicInfo::read(bit(feature::STATUS), cfg).mac, None);
        assert!(link_up(true, 1) && !link_up(true, 0) && link_up(false, 0));
    }

    #[test]
    fn frames_lose_their_header() {
        let buf = [7u8; 100];
        assert_eq!(received_frame(&buf, 60).map(|f| f.len()), Some(48));
        assert_eq!(received_frame(&buf, 5000).map(|f| f.len()), Some(88));
        assert_eq!(received_frame(&buf, 20), None);
    }

    #[test]
    fn arp_round_trip() {
        let req = arp_request(ME, [10, 0, 2, 15], [10, 0, 2, 2]);
        assert_eq!(&req[0..6], &[0xff; 6]);
        assert_eq!(&req[12..14], &[8, 6]);
        assert_eq!(&req[38..42], &[10, 0, 2, 2]);
        // The gateway's reply.
        let mut rep = [0u8; 60];
        rep[0..6].copy_from_slice(&ME.0);
        rep[6..12].copy_from_slice(&GW.0);
        rep[12..14].copy_from_slice(&[8, 6]);
        rep[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        rep[22..28].copy_from_slice(&GW.0);
        rep[28..32].copy_from_slice(&[10, 0, 2, 2]);
        rep[32..38].copy_from_slice(&ME.0);
        rep[38..42].copy_from_slice(&[10, 0, 2, 15]);
        assert_eq!(arp_reply_from(&rep, [10, 0, 2, 2], ME), Some(GW));
        assert_eq!(arp_reply_from(&rep, [10, 0, 2, 3], ME), None);
        assert_eq!(arp_reply_from(&rep[..41], [10, 0, 2, 2], ME), None);
        // Our own request is not a reply.
        assert_eq!(arp_reply_from(&req, [10, 0, 2, 15], ME), None);
    }
}
