//! Ethernet frames and the IP/TCP/UDP headers inside them, parsed from guest-supplied
//! bytes: every accessor bounds-checks against the frame (a truncated or lying header is
//! `None`, never a read past the end).
//!
//! Facts from IEEE 802.3 (frame layout, the group bit), IEEE 802.1Q (the 4-byte VLAN tag,
//! TPIDs 0x8100 and 0x88a8), RFC 791 (IPv4), RFC 8200 (IPv6 and its extension headers),
//! RFC 9293 (TCP) and RFC 768 (UDP).

use core::fmt;

/// Bytes of an untagged Ethernet header (`ETH_HLEN`).
pub const ETH_HLEN: usize = 14;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// TPID of an 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// TPID of an 802.1ad service tag (QinQ outer tag).
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// VLAN tags skipped before the EtherType (an outer service tag and an inner one).
const MAX_VLAN_TAGS: usize = 2;

/// A 48-bit MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: Self = Self([0xff; 6]);
    /// `00:00:00:00:00:00`: never a valid source.
    pub const ZERO: Self = Self([0; 6]);
    /// The OUI Xen's toolstack gives virtual interfaces (`00:16:3e`).
    pub const XEN_OUI: [u8; 3] = [0x00, 0x16, 0x3e];

    /// The group bit (the least significant bit of the first byte): multicast, broadcast
    /// included.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// Every bit set.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// An individual (unicast) address: the group bit clear. The zero address counts as
    /// unicast here; test [`Self::is_zero`] where it matters.
    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// Every bit clear.
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// Under the Xen OUI `00:16:3e`.
    pub fn is_xen(&self) -> bool {
        self.0[..3] == Self::XEN_OUI
    }

    /// One of `01:80:c2:00:00:00`–`0f`, the IEEE 802.1D reserved group addresses (STP,
    /// pause frames, LACP, LLDP, 802.1X) a bridge must never forward.
    pub fn is_link_local_reserved(&self) -> bool {
        self.0[..5] == [0x01, 0x80, 0xc2, 0x00, 0x00] && self.0[5] & 0xf0 == 0
    }

    /// A Xen-style address `00:16:3e:xx:yy:zz` from three bytes, with the top bit of the
    /// fourth byte cleared, as the toolstack does.
    pub fn xen_from(bytes: [u8; 3]) -> Self {
        let [a, b, c] = bytes;
        Self([0x00, 0x16, 0x3e, a & 0x7f, b, c])
    }

    /// Parses `00:16:3e:01:02:03` (six two-digit hex bytes separated by `:`, either case).
    pub fn parse(text: &str) -> Option<Self> {
        let mut out = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut out {
            let part = parts.next()?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        parts.next().is_none().then_some(Self(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn mac_at(bytes: &[u8], at: usize) -> Option<MacAddr> {
    let b = bytes.get(at..at + 6)?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(b);
    Some(MacAddr(mac))
}

/// The Ethernet header of a frame, VLAN tags skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthernetHeader {
    pub dst: MacAddr,
    pub src: MacAddr,
    /// The EtherType after any VLAN tags.
    pub ethertype: u16,
    /// VLAN tags skipped (0..=2).
    pub vlan_tags: u8,
    /// Where the payload (the L3 header) starts.
    pub payload_offset: usize,
}

impl EthernetHeader {
    /// Parses the header at the start of `frame`; `None` if the frame is shorter than the
    /// header (tags included) or stacks more than two VLAN tags.
    pub fn parse(frame: &[u8]) -> Option<Self> {
        let dst = mac_at(frame, 0)?;
        let src = mac_at(frame, 6)?;
        let mut at = 12;
        let mut ethertype = be16(frame, at)?;
        let mut tags = 0u8;
        while ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
            if usize::from(tags) == MAX_VLAN_TAGS {
                return None;
            }
            tags += 1;
            at += 4;
            ethertype = be16(frame, at)?;
        }
        Some(Self {
            dst,
            src,
            ethertype,
            vlan_tags: tags,
            payload_offset: at + 2,
        })
    }

    /// The destination and source alone, for a switch that must not care what follows.
    pub fn addresses(frame: &[u8]) -> Option<(MacAddr, MacAddr)> {
        if frame.len() < ETH_HLEN {
            return None;
        }
        Some((mac_at(frame, 0)?, mac_at(frame, 6)?))
    }
}

/// An IPv4 header (RFC 791).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Header {
    /// Where the header starts in the frame.
    pub offset: usize,
    /// IHL × 4 (20..=60).
    pub header_len: usize,
    /// The datagram's length (header + payload) from the header; within the frame.
    pub total_len: usize,
    pub identification: u16,
    /// More-fragments flag or a non-zero fragment offset: not a whole datagram.
    pub fragment: bool,
    pub protocol: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ipv4Header {
    /// Parses the header at `offset`; `None` unless version 4, IHL ≥ 5 and the
    /// datagram's total length lies within the frame (Ethernet padding may follow it).
    pub fn parse(frame: &[u8], offset: usize) -> Option<Self> {
        let first = *frame.get(offset)?;
        if first >> 4 != 4 {
            return None;
        }
        let header_len = usize::from(first & 0x0f) * 4;
        let total_len = usize::from(be16(frame, offset + 2)?);
        if header_len < 20 || total_len < header_len || offset + total_len > frame.len() {
            return None;
        }
        let flags_frag = be16(frame, offset + 6)?;
        let mut src = [0u8; 4];
        let mut dst = [0u8; 4];
        src.copy_from_slice(frame.get(offset + 12..offset + 16)?);
        dst.copy_from_slice(frame.get(offset + 16..offset + 20)?);
        Some(Self {
            offset,
            header_len,
            total_len,
            identification: be16(frame, offset + 4)?,
            fragment: flags_frag & 0x3fff != 0,
            protocol: *frame.get(offset + 9)?,
            src,
            dst,
        })
    }
}

/// An IPv6 header (RFC 8200), with the extension headers before the upper layer skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Header {
    pub offset: usize,
    /// The payload length field: bytes after the fixed 40-byte header (non-zero; jumbograms
    /// are refused); within the frame.
    pub payload_len: usize,
    /// The upper-layer protocol after the skipped extension headers.
    pub protocol: u8,
    /// Where the upper-layer header starts in the frame.
    pub l4_offset: usize,
    /// A fragment header was seen: not a whole datagram.
    pub fragment: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// Fixed IPv6 header bytes.
pub const IPV6_HLEN: usize = 40;

impl Ipv6Header {
    /// Parses the header at `offset`; `None` unless version 6, a non-zero payload length
    /// within the frame and well-formed extension headers.
    pub fn parse(frame: &[u8], offset: usize) -> Option<Self> {
        if *frame.get(offset)? >> 4 != 6 {
            return None;
        }
        let payload_len = usize::from(be16(frame, offset + 4)?);
        let end = offset + IPV6_HLEN + payload_len;
        if payload_len == 0 || end > frame.len() {
            return None;
        }
        let mut protocol = *frame.get(offset + 6)?;
        let mut at = offset + IPV6_HLEN;
        let mut fragment = false;
        // Hop-by-hop (0), routing (43), fragment (44), destination options (60): skip
        // them (a bounded number, each at least 8 bytes, never past the payload).
        for _ in 0..8 {
            let len = match protocol {
                0 | 43 | 60 => (usize::from(*frame.get(at + 1)?) + 1) * 8,
                44 => {
                    fragment = true;
                    8
                }
                _ => break,
            };
            protocol = *frame.get(at)?;
            at += len;
            if at > end {
                return None;
            }
        }
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(frame.get(offset + 8..offset + 24)?);
        dst.copy_from_slice(frame.get(offset + 24..offset + 40)?);
        Some(Self {
            offset,
            payload_len,
            protocol,
            l4_offset: at,
            fragment,
            src,
            dst,
        })
    }
}

/// The IP layer of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpHeader {
    V4(Ipv4Header),
    V6(Ipv6Header),
}

/// An IP packet's upper layer located in its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpPacket {
    pub eth: EthernetHeader,
    pub ip: IpHeader,
    /// The upper-layer protocol (`IPPROTO_*`).
    pub protocol: u8,
    /// Where the upper-layer header starts.
    pub l4_offset: usize,
    /// Upper-layer bytes (header and data) as the IP header counts them.
    pub l4_len: usize,
    /// A fragment: the upper layer is not whole and has no checksum of its own here.
    pub fragment: bool,
}

impl IpPacket {
    /// Parses an Ethernet frame carrying IPv4 or IPv6; `None` for anything else or a
    /// malformed header.
    pub fn parse(frame: &[u8]) -> Option<Self> {
        let eth = EthernetHeader::parse(frame)?;
        let at = eth.payload_offset;
        match eth.ethertype {
            ETHERTYPE_IPV4 => {
                let v4 = Ipv4Header::parse(frame, at)?;
                Some(Self {
                    eth,
                    ip: IpHeader::V4(v4),
                    protocol: v4.protocol,
                    l4_offset: at + v4.header_len,
                    l4_len: v4.total_len - v4.header_len,
                    fragment: v4.fragment,
                })
            }
            ETHERTYPE_IPV6 => {
                let v6 = Ipv6Header::parse(frame, at)?;
                let end = at + IPV6_HLEN + v6.payload_len;
                Some(Self {
                    eth,
                    ip: IpHeader::V6(v6),
                    protocol: v6.protocol,
                    l4_offset: v6.l4_offset,
                    l4_len: end - v6.l4_offset,
                    fragment: v6.fragment,
                })
            }
            _ => None,
        }
    }

    /// The upper-layer bytes (header and data), without Ethernet padding.
    pub fn l4<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        frame.get(self.l4_offset..self.l4_offset.checked_add(self.l4_len)?)
    }

    /// The TCP header, if this is TCP and it fits.
    pub fn tcp(&self, frame: &[u8]) -> Option<TcpHeader> {
        if self.protocol != IPPROTO_TCP || self.fragment {
            return None;
        }
        TcpHeader::parse(self.l4(frame)?, self.l4_offset)
    }

    /// The UDP header, if this is UDP and it fits.
    pub fn udp(&self, frame: &[u8]) -> Option<UdpHeader> {
        if self.protocol != IPPROTO_UDP || self.fragment {
            return None;
        }
        UdpHeader::parse(self.l4(frame)?, self.l4_offset)
    }
}

/// TCP flag FIN.
pub const TCP_FIN: u8 = 0x01;
/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag RST.
pub const TCP_RST: u8 = 0x04;
/// TCP flag PSH.
pub const TCP_PSH: u8 = 0x08;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;
/// TCP flag CWR.
pub const TCP_CWR: u8 = 0x80;
/// Offset of the checksum field in a TCP header.
pub const TCP_CHECKSUM_OFFSET: usize = 16;
/// Offset of the checksum field in a UDP header.
pub const UDP_CHECKSUM_OFFSET: usize = 6;

/// A TCP header (RFC 9293).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpHeader {
    /// Where the header starts in the frame.
    pub offset: usize,
    /// Data offset × 4 (20..=60), within the segment.
    pub header_len: usize,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    /// The low eight flag bits (CWR … FIN).
    pub flags: u8,
    pub checksum: u16,
}

impl TcpHeader {
    /// Parses the segment `l4` (which starts at `offset` in its frame).
    pub fn parse(l4: &[u8], offset: usize) -> Option<Self> {
        let header_len = usize::from(*l4.get(12)? >> 4) * 4;
        if header_len < 20 || header_len > l4.len() {
            return None;
        }
        Some(Self {
            offset,
            header_len,
            src_port: be16(l4, 0)?,
            dst_port: be16(l4, 2)?,
            seq: be32(l4, 4)?,
            ack: be32(l4, 8)?,
            flags: *l4.get(13)?,
            checksum: be16(l4, TCP_CHECKSUM_OFFSET)?,
        })
    }
}

/// A UDP header (RFC 768).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpHeader {
    pub offset: usize,
    pub src_port: u16,
    pub dst_port: u16,
    /// The length field (header + data).
    pub len: u16,
    pub checksum: u16,
}

impl UdpHeader {
    /// Parses the datagram `l4` (which starts at `offset` in its frame); `None` if shorter
    /// than the 8-byte header.
    pub fn parse(l4: &[u8], offset: usize) -> Option<Self> {
        Some(Self {
            offset,
            src_port: be16(l4, 0)?,
            dst_port: be16(l4, 2)?,
            len: be16(l4, 4)?,
            checksum: be16(l4, UDP_CHECKSUM_OFFSET)?,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use alloc::{string::ToString, vec, vec::Vec};

    use super::*;

    /// An Ethernet + IPv4 + TCP frame with `payload` (checksums zero).
    pub(crate) fn ipv4_tcp(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![
            0x00, 0x16, 0x3e, 0x00, 0x00, 0x02, // dst
            0x00, 0x16, 0x3e, 0x00, 0x00, 0x01, // src
            0x08, 0x00,
        ];
        let total = 20 + 20 + payload.len();
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0x12,
            0x34,
            0x40,
            0,
        ]);
        f.extend_from_slice(&[64, IPPROTO_TCP, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(&[0x04, 0xd2, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0]);
        f.extend_from_slice(&[0x50, TCP_ACK | TCP_PSH, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn mac_kinds_and_text() {
        let xen = MacAddr([0x00, 0x16, 0x3e, 0x01, 0x02, 0x03]);
        assert!(xen.is_unicast() && xen.is_xen() && !xen.is_multicast());
        assert_eq!(xen.to_string(), "00:16:3e:01:02:03");
        assert_eq!(MacAddr::parse("00:16:3E:01:02:03"), Some(xen));
        assert_eq!(MacAddr::parse("00:16:3e:01:02"), None);
        assert_eq!(MacAddr::parse("00:16:3e:01:02:03:04"), None);
        assert_eq!(MacAddr::parse("00:16:3e:1:02:03"), None);
        assert_eq!(MacAddr::parse("00:16:3e:+1:02:03"), None);
        assert_eq!(MacAddr::parse("00:16:3e:gg:02:03"), None);
        assert!(MacAddr::BROADCAST.is_broadcast() && MacAddr::BROADCAST.is_multicast());
        assert!(MacAddr::ZERO.is_zero() && !MacAddr::ZERO.is_multicast());
        assert!(MacAddr([0x33, 0x33, 0, 0, 0, 1]).is_multicast());
        assert!(MacAddr([0x01, 0x80, 0xc2, 0, 0, 0x0e]).is_link_local_reserved());
        assert!(!MacAddr([0x01, 0x80, 0xc2, 0, 0, 0x10]).is_link_local_reserved());
        assert_eq!(
            MacAddr::xen_from([0xff, 0xaa, 0x55]),
            MacAddr([0x00, 0x16, 0x3e, 0x7f, 0xaa, 0x55])
        );
    }

    #[test]
    fn ethernet_skips_vlan_tags() {
        let mut f = ipv4_tcp(b"hi");
        let eth = EthernetHeader::parse(&f).unwrap();
        assert_eq!(
            (eth.ethertype, eth.payload_offset, eth.vlan_tags),
            (0x0800, 14, 0)
        );
        // Insert a QinQ outer tag and an 802.1Q inner tag.
        f.splice(12..12, [0x88, 0xa8, 0, 5, 0x81, 0x00, 0, 7]);
        let eth = EthernetHeader::parse(&f).unwrap();
        assert_eq!(
            (eth.ethertype, eth.payload_offset, eth.vlan_tags),
            (0x0800, 22, 2)
        );
        let p = IpPacket::parse(&f).unwrap();
        assert_eq!(p.l4_offset, 42);
        // A third tag is refused; a tag cut short is refused.
        f.splice(12..12, [0x81, 0x00, 0, 9]);
        assert_eq!(EthernetHeader::parse(&f), None);
        assert_eq!(EthernetHeader::parse(&[0u8; 13]), None);
        assert_eq!(
            EthernetHeader::parse(&[0x81, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x81, 0, 0, 1]),
            None
        );
    }

    #[test]
    fn ipv4_tcp_parses_and_lengths_come_from_the_header() {
        let mut f = ipv4_tcp(b"hello");
        // Ethernet padding after the datagram is not part of the segment.
        f.extend_from_slice(&[0; 6]);
        let p = IpPacket::parse(&f).unwrap();
        assert_eq!((p.protocol, p.l4_offset, p.l4_len), (IPPROTO_TCP, 34, 25));
        let tcp = p.tcp(&f).unwrap();
        assert_eq!((tcp.src_port, tcp.dst_port, tcp.seq), (1234, 80, 1));
        assert_eq!(tcp.header_len, 20);
        assert!(p.udp(&f).is_none());
        match p.ip {
            IpHeader::V4(v4) => {
                assert_eq!(
                    (v4.src, v4.dst, v4.fragment),
                    ([10, 0, 0, 1], [10, 0, 0, 2], false)
                )
            }
            IpHeader::V6(_) => panic!("v4 expected"),
        }
    }

    #[test]
    fn lying_headers_are_refused_not_read_past() {
        let f = ipv4_tcp(b"hello");
        // total length past the frame
        let mut g = f.clone();
        g[16] = 0xff;
        assert!(IpPacket::parse(&g).is_none());
        // IHL below 5, and IHL above the total length
        let mut g = f.clone();
        g[14] = 0x44;
        assert!(IpPacket::parse(&g).is_none());
        let mut g = f.clone();
        g[14] = 0x4f;
        g[16] = 0;
        g[17] = 40;
        assert!(IpPacket::parse(&g).is_none());
        // TCP data offset past the segment
        let mut g = f.clone();
        g[46] = 0xf0;
        let p = IpPacket::parse(&g).unwrap();
        assert!(p.tcp(&g).is_none());
        // Every truncation parses or fails without panicking.
        for n in 0..f.len() {
            let _ = IpPacket::parse(&f[..n]).map(|p| (p.tcp(&f[..n]), p.udp(&f[..n])));
        }
    }

    #[test]
    fn ipv6_extension_headers_are_skipped() {
        let mut f = vec![
            0x33, 0x33, 0, 0, 0, 1, 0x00, 0x16, 0x3e, 0, 0, 1, 0x86, 0xdd,
        ];
        // payload: hop-by-hop (8 bytes) then UDP (8 + 4).
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, 0, 64]);
        f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[IPPROTO_UDP, 0, 1, 4, 0, 0, 0, 0]);
        f.extend_from_slice(&[0x12, 0x34, 0x00, 0x35, 0, 12, 0, 0, 1, 2, 3, 4]);
        let p = IpPacket::parse(&f).unwrap();
        assert_eq!((p.protocol, p.l4_offset, p.l4_len), (IPPROTO_UDP, 62, 12));
        let udp = p.udp(&f).unwrap();
        assert_eq!((udp.src_port, udp.dst_port, udp.len), (0x1234, 53, 12));
        // An extension header claiming to run past the payload is refused.
        let mut g = f.clone();
        g[55] = 5;
        assert!(IpPacket::parse(&g).is_none());
        // A jumbogram (payload length 0) is refused.
        let mut g = f.clone();
        g[19] = 0;
        assert!(IpPacket::parse(&g).is_none());
    }
}
