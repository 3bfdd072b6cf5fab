//! Software TCP segmentation (what a NIC's TSO does): one large GSO packet becomes
//! MSS-sized frames for a port that cannot take it whole (a frontend without
//! `feature-gso-tcpv4/6`, a NIC without TSO).
//!
//! Each segment repeats the Ethernet, IP and TCP headers (options included) with
//! (RFC 9293, RFC 791, RFC 8200, and the rules Linux's `tcp_gso_segment` follows):
//! - the IPv4 total length / IPv6 payload length of the segment, IPv4 ids counting up
//!   from the original's, the IPv4 header checksum recomputed;
//! - the sequence number advanced by the payload before it;
//! - FIN and PSH only on the last segment, CWR only on the first;
//! - its TCP checksum computed from scratch (the segments leave `Complete`).

use alloc::vec::Vec;

use super::{
    checksum::{fill_l4_checksum, set_ipv4_header_checksum},
    ethernet::{IpHeader, IpPacket, IPV6_HLEN, TCP_CWR, TCP_FIN, TCP_PSH},
    ChecksumState, GsoKind, Packet,
};

/// The most segments one packet may become (a hostile MSS of 1 would otherwise make
/// 65 000 frames out of one).
pub const MAX_SEGMENTS: usize = 512;

/// Why a GSO packet cannot be segmented (it is then dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoError {
    /// Not TCP over the IP version its GSO type names, or malformed headers.
    NotTcp,
    /// An MSS of 0, or one so small the packet would make more than [`MAX_SEGMENTS`].
    BadMss,
    /// Out of memory for the segments.
    NoMemory,
}

/// Cuts `packet` into segments of at most `mss` TCP payload bytes each. A packet without
/// GSO comes back alone, unchanged.
pub fn segment(packet: &Packet) -> Result<Vec<Packet>, GsoError> {
    let Some(gso) = packet.gso else {
        return Ok(alloc::vec![packet.clone()]);
    };
    let frame = &packet.data;
    let ip = IpPacket::parse(frame).ok_or(GsoError::NotTcp)?;
    match (gso.kind, ip.ip) {
        (GsoKind::TcpV4, IpHeader::V4(_)) | (GsoKind::TcpV6, IpHeader::V6(_)) => {}
        _ => return Err(GsoError::NotTcp),
    }
    let tcp = ip.tcp(frame).ok_or(GsoError::NotTcp)?;
    let headers = ip.l4_offset + tcp.header_len;
    let end = ip.l4_offset + ip.l4_len;
    let payload = frame.get(headers..end).ok_or(GsoError::NotTcp)?;
    let mss = usize::from(gso.mss);
    if mss == 0 || payload.len().div_ceil(mss) > MAX_SEGMENTS {
        return Err(GsoError::BadMss);
    }
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        alloc::vec![&[][..]]
    } else {
        payload.chunks(mss).collect()
    };
    let count = chunks.len();
    let mut out = Vec::new();
    out.try_reserve_exact(count)
        .map_err(|_| GsoError::NoMemory)?;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let mut seg = Vec::new();
        seg.try_reserve_exact(headers + chunk.len())
            .map_err(|_| GsoError::NoMemory)?;
        seg.extend_from_slice(&frame[..headers]);
        seg.extend_from_slice(chunk);
        let l4_len = tcp.header_len + chunk.len();
        match ip.ip {
            IpHeader::V4(v4) => {
                let total = (v4.header_len + l4_len) as u16;
                seg[v4.offset + 2..v4.offset + 4].copy_from_slice(&total.to_be_bytes());
                let id = v4.identification.wrapping_add(i as u16);
                seg[v4.offset + 4..v4.offset + 6].copy_from_slice(&id.to_be_bytes());
                set_ipv4_header_checksum(&mut seg, v4.offset, v4.header_len)
                    .ok_or(GsoError::NotTcp)?;
            }
            IpHeader::V6(v6) => {
                let ext = ip.l4_offset - (v6.offset + IPV6_HLEN);
                let payload_len = (ext + l4_len) as u16;
                seg[v6.offset + 4..v6.offset + 6].copy_from_slice(&payload_len.to_be_bytes());
            }
        }
        let t = tcp.offset;
        let seq = tcp.seq.wrapping_add((i * mss) as u32);
        seg[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = tcp.flags;
        if i + 1 < count {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        seg[t + 13] = flags;
        fill_l4_checksum(&mut seg).map_err(|_| GsoError::NotTcp)?;
        out.push(Packet {
            data: seg,
            checksum: ChecksumState::Complete,
            gso: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;
    use crate::net::{
        checksum::{ipv4_header_checksum, verify_l4_checksum},
        ethernet::{tests::ipv4_tcp, TcpHeader, TCP_ACK},
        Gso,
    };

    fn gso_v4(payload_len: usize, mss: u16) -> Packet {
        let payload: Vec<u8> = (0..payload_len).map(|i| (i * 13) as u8).collect();
        let mut data = ipv4_tcp(&payload);
        data[47] |= TCP_FIN | TCP_CWR;
        Packet {
            data,
            checksum: ChecksumState::Partial,
            gso: Some(Gso {
                kind: GsoKind::TcpV4,
                mss,
            }),
        }
    }

    #[test]
    fn ipv4_segments_have_right_lengths_ids_seqs_flags_and_checksums() {
        let p = gso_v4(5000, 1448);
        let segs = segment(&p).unwrap();
        assert_eq!(segs.len(), 4);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let ip = IpPacket::parse(&s.data).unwrap();
            let IpHeader::V4(v4) = ip.ip else { panic!() };
            let tcp = ip.tcp(&s.data).unwrap();
            let len = if i < 3 { 1448 } else { 5000 - 3 * 1448 };
            assert_eq!(v4.total_len, 40 + len);
            assert_eq!(s.data.len(), 54 + len);
            assert_eq!(v4.identification, 0x1234 + i as u16);
            let stored = u16::from_be_bytes([s.data[24], s.data[25]]);
            assert_eq!(ipv4_header_checksum(&s.data, 14, 20), Some(stored));
            assert_eq!(tcp.seq, 1 + (i * 1448) as u32);
            let last = i == 3;
            assert_eq!(tcp.flags & TCP_FIN != 0, last);
            assert_eq!(tcp.flags & TCP_PSH != 0, last);
            assert_eq!(tcp.flags & TCP_CWR != 0, i == 0);
            assert!(tcp.flags & TCP_ACK != 0);
            assert_eq!(verify_l4_checksum(&s.data), Some(true));
            assert_eq!((s.checksum, s.gso), (ChecksumState::Complete, None));
            joined.extend_from_slice(&s.data[54..]);
        }
        assert_eq!(joined, p.data[54..]);
    }

    #[test]
    fn ipv6_segments() {
        let payload: Vec<u8> = (0..3000).map(|i| i as u8).collect();
        let mut f = alloc::vec![0x00, 0x16, 0x3e, 0, 0, 2, 0x00, 0x16, 0x3e, 0, 0, 1, 0x86, 0xdd];
        let plen = (20 + payload.len()) as u16;
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&plen.to_be_bytes());
        f.extend_from_slice(&[6, 64]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&[0x04, 0xd2, 0x00, 0x50, 0xff, 0xff, 0xff, 0x00, 0, 0, 0, 0]);
        f.extend_from_slice(&[0x50, TCP_ACK | TCP_PSH, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(&payload);
        let p = Packet {
            data: f,
            checksum: ChecksumState::Partial,
            gso: Some(Gso {
                kind: GsoKind::TcpV6,
                mss: 1400,
            }),
        };
        let segs = segment(&p).unwrap();
        assert_eq!(segs.len(), 3);
        for (i, s) in segs.iter().enumerate() {
            let ip = IpPacket::parse(&s.data).unwrap();
            let len = if i < 2 { 1400 } else { 200 };
            assert_eq!(ip.l4_len, 20 + len);
            let tcp = TcpHeader::parse(ip.l4(&s.data).unwrap(), ip.l4_offset).unwrap();
            // The sequence number wraps past 2^32.
            assert_eq!(tcp.seq, 0xffff_ff00u32.wrapping_add(1400 * i as u32));
            assert_eq!(verify_l4_checksum(&s.data), Some(true));
        }
    }

    #[test]
    fn bad_gso_packets_are_refused() {
        assert_eq!(segment(&gso_v4(5000, 0)), Err(GsoError::BadMss));
        assert_eq!(segment(&gso_v4(5000, 1)), Err(GsoError::BadMss));
        let mut p = gso_v4(100, 50);
        p.gso = Some(Gso {
            kind: GsoKind::TcpV6,
            mss: 50,
        });
        assert_eq!(segment(&p), Err(GsoError::NotTcp));
        let mut p = gso_v4(100, 50);
        p.data[23] = 17;
        assert_eq!(segment(&p), Err(GsoError::NotTcp));
        // No GSO: unchanged. GSO without payload: one segment.
        let plain = Packet::plain(ipv4_tcp(b"abc"));
        assert_eq!(segment(&plain).unwrap(), core::slice::from_ref(&plain));
        assert_eq!(segment(&gso_v4(0, 1448)).unwrap().len(), 1);
    }
}
