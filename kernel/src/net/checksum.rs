//! The Internet checksum (RFC 1071) of IPv4 headers and of TCP/UDP over their
//! pseudo-headers (RFC 9293 §3.1, RFC 768, RFC 8200 §8.1), and the completion of packets
//! a guest sent with a blank (partial) checksum.
//!
//! netfront always transmits TCP/UDP with `NETTXF_csum_blank`: the field holds whatever
//! the guest's stack left there (Linux leaves the pseudo-header sum), so completion never
//! trusts it: the field is zeroed and the sum computed from scratch. A packet carries its
//! [`ChecksumState`]; completing turns `Partial` into `Complete`, so a packet flooded to
//! several ports, or passed through twice, is never summed over its own checksum.

use super::ethernet::{
    IpHeader, IpPacket, IPPROTO_TCP, IPPROTO_UDP, TCP_CHECKSUM_OFFSET, UDP_CHECKSUM_OFFSET,
};

/// What is known of a packet's L4 checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ChecksumState {
    /// Nothing: the checksum is whatever the sender wrote; receivers verify it.
    #[default]
    Unverified,
    /// Known good (computed here, or the sender vouched for it: `data_validated`).
    Complete,
    /// Blank: must be completed before the packet reaches anyone who did not ask for
    /// checksum offload (`csum_blank`).
    Partial,
}

/// Why a partial checksum cannot be completed (the packet is then dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumError {
    /// Not IPv4/IPv6, or a malformed header.
    NotIp,
    /// Neither TCP nor UDP (or a fragment, or the L4 header does not fit).
    UnsupportedProtocol,
}

/// Adds `data` as big-endian 16-bit words (an odd last byte padded with zero) to `sum`.
/// The accumulator is 64 bits wide, so 64 KiB packets cannot overflow it.
pub fn add_bytes(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a sum into 16 bits with end-around carry.
pub fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The one's-complement checksum of `data` (the value to store in a zeroed field).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(add_bytes(0, data))
}

/// The pseudo-header sum of `packet` for an upper layer of `l4_len` bytes.
pub fn pseudo_header_sum(packet: &IpPacket, l4_len: usize) -> u64 {
    let mut sum = 0;
    match packet.ip {
        IpHeader::V4(v4) => {
            sum = add_bytes(sum, &v4.src);
            sum = add_bytes(sum, &v4.dst);
        }
        IpHeader::V6(v6) => {
            sum = add_bytes(sum, &v6.src);
            sum = add_bytes(sum, &v6.dst);
        }
    }
    sum + u64::from(packet.protocol) + l4_len as u64
}

/// The IPv4 header checksum of the header at `offset` (field zeroed while summing); `None`
/// if the frame holds no IPv4 header there.
pub fn ipv4_header_checksum(frame: &[u8], offset: usize, header_len: usize) -> Option<u16> {
    let header = frame.get(offset..offset.checked_add(header_len)?)?;
    let sum = add_bytes(0, header.get(..10)?);
    Some(!fold(add_bytes(sum, header.get(12..)?)))
}

/// Rewrites the IPv4 header checksum of the header at `offset`.
pub fn set_ipv4_header_checksum(frame: &mut [u8], offset: usize, header_len: usize) -> Option<()> {
    let sum = ipv4_header_checksum(frame, offset, header_len)?;
    frame
        .get_mut(offset + 10..offset + 12)?
        .copy_from_slice(&sum.to_be_bytes());
    Some(())
}

/// Where the L4 checksum field lives in the frame, for TCP or UDP.
fn l4_checksum_field(frame: &[u8], packet: &IpPacket) -> Result<usize, ChecksumError> {
    match packet.protocol {
        IPPROTO_TCP if packet.tcp(frame).is_some() => Ok(packet.l4_offset + TCP_CHECKSUM_OFFSET),
        IPPROTO_UDP if packet.udp(frame).is_some() => Ok(packet.l4_offset + UDP_CHECKSUM_OFFSET),
        _ => Err(ChecksumError::UnsupportedProtocol),
    }
}

/// Computes and stores the TCP/UDP checksum of `frame` from scratch (the field's old
/// contents ignored). A UDP checksum that comes out 0 is sent as 0xffff (RFC 768: 0 means
/// "none").
pub fn fill_l4_checksum(frame: &mut [u8]) -> Result<(), ChecksumError> {
    let packet = IpPacket::parse(frame).ok_or(ChecksumError::NotIp)?;
    let field = l4_checksum_field(frame, &packet)?;
    let l4 = packet.l4(frame).ok_or(ChecksumError::NotIp)?;
    let rel = field - packet.l4_offset;
    let mut sum = pseudo_header_sum(&packet, l4.len());
    sum = add_bytes(sum, &l4[..rel]);
    sum = add_bytes(sum, &l4[rel + 2..]);
    let mut value = !fold(sum);
    if packet.protocol == IPPROTO_UDP && value == 0 {
        value = 0xffff;
    }
    frame
        .get_mut(field..field + 2)
        .ok_or(ChecksumError::NotIp)?
        .copy_from_slice(&value.to_be_bytes());
    Ok(())
}

/// Whether `frame`'s TCP/UDP checksum is right. `None` when the frame is not TCP/UDP over
/// IP. An IPv4 UDP checksum of 0 (none sent) counts as right.
pub fn verify_l4_checksum(frame: &[u8]) -> Option<bool> {
    let packet = IpPacket::parse(frame)?;
    let field = l4_checksum_field(frame, &packet).ok()?;
    let l4 = packet.l4(frame)?;
    let stored = u16::from_be_bytes([*frame.get(field)?, *frame.get(field + 1)?]);
    if packet.protocol == IPPROTO_UDP && stored == 0 {
        return Some(matches!(packet.ip, IpHeader::V4(_)));
    }
    let sum = add_bytes(pseudo_header_sum(&packet, l4.len()), l4);
    Some(fold(sum) == 0xffff)
}

/// Completes a partial checksum once: `Partial` → computed, state `Complete`; any other
/// state is left alone (the checksum is not summed over again).
pub fn complete_partial(frame: &mut [u8], state: &mut ChecksumState) -> Result<(), ChecksumError> {
    if *state != ChecksumState::Partial {
        return Ok(());
    }
    fill_l4_checksum(frame)?;
    *state = ChecksumState::Complete;
    Ok(())
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;
    use crate::net::ethernet::tests::ipv4_tcp;

    /// An independent checksum: the one's-complement sum equals the plain sum modulo
    /// 0xffff (with 0 written as 0xffff), computed over a byte-wise big-endian read.
    fn reference(data: &[u8]) -> u16 {
        let mut total: u64 = 0;
        for (i, b) in data.iter().enumerate() {
            total += if i % 2 == 0 {
                u64::from(*b) * 256
            } else {
                u64::from(*b)
            };
        }
        let r = (total % 0xffff) as u16;
        let folded = if r == 0 && total != 0 { 0xffff } else { r };
        !folded
    }

    #[test]
    fn ipv4_header_known_vector() {
        // The header of RFC 1071-style textbook example: 4500 0073 0000 4000 4011 ----
        // c0a8 0001 c0a8 00c7 has checksum 0xb861.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr), 0xb861);
        assert_eq!(ipv4_header_checksum(&hdr, 0, 20), Some(0xb861));
        assert_eq!(reference(&hdr), 0xb861);
        // RFC 1071 §3's example words 0001 f203 f4f5 f6f7 sum to ddf2.
        assert_eq!(
            fold(add_bytes(
                0,
                &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]
            )),
            0xddf2
        );
    }

    #[test]
    fn tcp_v4_completion_matches_an_independent_sum() {
        for len in [0usize, 1, 5, 100, 1459] {
            let payload: alloc::vec::Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut f = ipv4_tcp(&payload);
            // The guest left its pseudo-header sum (or garbage): must not matter.
            f[50] = 0xde;
            f[51] = 0xad;
            let mut state = ChecksumState::Partial;
            complete_partial(&mut f, &mut state).unwrap();
            assert_eq!(state, ChecksumState::Complete);
            // Independent: pseudo-header bytes then the segment with a zeroed field.
            let mut pseudo = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, IPPROTO_TCP];
            let tcp_len = (20 + len) as u16;
            pseudo.extend_from_slice(&tcp_len.to_be_bytes());
            let mut seg = f[34..].to_vec();
            seg[16] = 0;
            seg[17] = 0;
            pseudo.extend_from_slice(&seg);
            assert_eq!(
                u16::from_be_bytes([f[50], f[51]]),
                reference(&pseudo),
                "len {len}"
            );
            assert_eq!(verify_l4_checksum(&f), Some(true));
            // One flipped bit is caught.
            let mut g = f.clone();
            let at = g.len() - 1;
            g[at] ^= 0x10;
            assert_eq!(verify_l4_checksum(&g), Some(false));
        }
    }

    #[test]
    fn never_completed_twice() {
        let mut f = ipv4_tcp(b"abc");
        let mut state = ChecksumState::Partial;
        complete_partial(&mut f, &mut state).unwrap();
        let good = f.clone();
        // The guest's frame would be corrupted by a second pass over a stale field if
        // the state were ignored: it is not.
        f[50] ^= 0xff;
        complete_partial(&mut f, &mut state).unwrap();
        assert_ne!(f, good);
        let mut state = ChecksumState::Unverified;
        complete_partial(&mut f, &mut state).unwrap();
        assert_eq!(state, ChecksumState::Unverified);
    }

    #[test]
    fn udp_v6_completion_and_zero_rule() {
        let mut f = vec![
            0x00, 0x16, 0x3e, 0, 0, 2, 0x00, 0x16, 0x3e, 0, 0, 1, 0x86, 0xdd,
        ];
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 13, IPPROTO_UDP, 64]);
        let src = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let dst = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&[
            0x30, 0x39, 0x00, 0x35, 0, 13, 0x55, 0x55, b'h', b'e', b'l', b'l', b'o',
        ]);
        let mut state = ChecksumState::Partial;
        complete_partial(&mut f, &mut state).unwrap();
        let mut pseudo = src.to_vec();
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&[0, 0, 0, 13, 0, 0, 0, IPPROTO_UDP]);
        let mut seg = f[54..].to_vec();
        seg[6] = 0;
        seg[7] = 0;
        pseudo.extend_from_slice(&seg);
        assert_eq!(u16::from_be_bytes([f[60], f[61]]), reference(&pseudo));
        assert_eq!(verify_l4_checksum(&f), Some(true));
        // IPv6 UDP must carry a checksum: 0 is wrong there.
        f[60] = 0;
        f[61] = 0;
        assert_eq!(verify_l4_checksum(&f), Some(false));
    }

    #[test]
    fn non_tcp_udp_partials_are_refused() {
        let mut f = ipv4_tcp(b"x");
        f[23] = 1; // ICMP
        let mut state = ChecksumState::Partial;
        assert_eq!(
            complete_partial(&mut f, &mut state),
            Err(ChecksumError::UnsupportedProtocol)
        );
        assert_eq!(state, ChecksumState::Partial);
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&[0, 0x16, 0x3e, 0, 0, 1, 0x08, 0x06]);
        arp.extend_from_slice(&[0; 28]);
        assert_eq!(
            complete_partial(&mut arp, &mut state),
            Err(ChecksumError::NotIp)
        );
    }
}
