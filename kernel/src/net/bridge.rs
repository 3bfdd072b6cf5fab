//! The learning switch (`xenbr0`): an IEEE 802.1D transparent bridge without spanning
//! tree, generic over what identifies a port (a vif, the uplink NIC).
//!
//! Rules (802.1D §7/§8, and what Linux's bridge does by default):
//! - a frame whose source is a group (multicast/broadcast) or the zero address is dropped;
//! - the source address is learned, or moved, to the ingress port;
//! - a known unicast destination goes to its port, but never back out of the ingress (a
//!   frame for a station on the port it came from needs no forwarding);
//! - unknown unicast, broadcast and multicast flood to every port but the ingress;
//! - the reserved group addresses `01:80:c2:00:00:00`–`0f` are never forwarded;
//! - an entry not refreshed for 300 s (802.1D's default ageing time) is forgotten;
//! - a removed port forgets every address learned on it.
//!
//! A guest controls the source addresses it sends, so the table is bounded twice: a port
//! learns at most [`BridgeLimits::per_port`] addresses (beyond that its frames are still
//! forwarded, the new sources are simply not learned, so one guest cannot crowd the others
//! out), and the whole table at most [`BridgeLimits::total`] (the oldest entry is evicted).
//! Every operation is `O(log n)`; ageing is amortised into [`Bridge::forward`].

use alloc::{collections::BTreeMap, vec::Vec};

use super::ethernet::{EthernetHeader, MacAddr};

/// 802.1D's default ageing time.
pub const AGEING_TIME_NS: u64 = 300 * 1_000_000_000;

/// Bounds of the learning table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BridgeLimits {
    /// Entries in the whole table.
    pub total: usize,
    /// Entries learned on one port.
    pub per_port: u32,
}

impl Default for BridgeLimits {
    fn default() -> Self {
        Self {
            total: 4096,
            per_port: 256,
        }
    }
}

/// Counters of one port, as the switch sees them (`rx`: from the port; `tx`: to it), in
/// the shape of `ferrovisor_abi::domctl::SwitchPort`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames from the port the switch refused (bad source, reserved destination, runt).
    pub rx_drops: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames for the port it could not take (its queue full, reported by the caller).
    pub tx_drops: u64,
    /// Addresses currently learned on the port.
    pub learned: u32,
}

/// Why a frame goes nowhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The ingress is not a port of this switch.
    UnknownPort,
    /// Shorter than an Ethernet header.
    Runt,
    /// A group or zero source address.
    BadSource,
    /// A reserved link-local destination (`01:80:c2:00:00:0x`).
    Reserved,
    /// The destination was learned on the ingress port itself.
    SamePort,
}

/// Where a frame goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forward<P> {
    Drop(DropReason),
    /// To one known port.
    Unicast(P),
    /// To each of these ports (every port but the ingress; may be empty).
    Flood(Vec<P>),
}

#[derive(Clone, Copy, Debug)]
struct Entry<P> {
    port: P,
    last_seen: u64,
    /// Key in `Bridge::order`: unique and increasing with each refresh.
    stamp: u64,
}

/// A learning switch over ports identified by `P`.
#[derive(Clone, Debug)]
pub struct Bridge<P> {
    limits: BridgeLimits,
    ports: BTreeMap<P, PortStats>,
    table: BTreeMap<MacAddr, Entry<P>>,
    /// Entries from the least to the most recently refreshed.
    order: BTreeMap<u64, MacAddr>,
    next_stamp: u64,
}

impl<P: Copy + Ord> Default for Bridge<P> {
    fn default() -> Self {
        Self::new(BridgeLimits::default())
    }
}

impl<P: Copy + Ord> Bridge<P> {
    /// An empty switch.
    pub fn new(limits: BridgeLimits) -> Self {
        Self {
            limits,
            ports: BTreeMap::new(),
            table: BTreeMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
        }
    }

    /// Adds a port; false if it is one already.
    pub fn add_port(&mut self, port: P) -> bool {
        if self.ports.contains_key(&port) {
            return false;
        }
        self.ports.insert(port, PortStats::default());
        true
    }

    /// Removes a port and forgets every address learned on it; its final counters, `None`
    /// if it was no port.
    pub fn remove_port(&mut self, port: P) -> Option<PortStats> {
        let stats = self.ports.remove(&port)?;
        let gone: Vec<MacAddr> = self
            .table
            .iter()
            .filter(|(_, e)| e.port == port)
            .map(|(mac, _)| *mac)
            .collect();
        for mac in gone {
            self.forget(mac);
        }
        Some(PortStats {
            learned: 0,
            ..stats
        })
    }

    /// The ports, in order.
    pub fn ports(&self) -> impl Iterator<Item = P> + '_ {
        self.ports.keys().copied()
    }

    /// A port's counters.
    pub fn stats(&self, port: P) -> Option<PortStats> {
        self.ports.get(&port).copied()
    }

    /// Entries in the learning table.
    pub fn learned(&self) -> usize {
        self.table.len()
    }

    /// The port `mac` was last seen on, unless that was more than the ageing time before
    /// `now_ns`.
    pub fn lookup(&self, mac: MacAddr, now_ns: u64) -> Option<P> {
        let e = self.table.get(&mac)?;
        (now_ns.saturating_sub(e.last_seen) <= AGEING_TIME_NS).then_some(e.port)
    }

    /// Forgets every entry older than the ageing time.
    pub fn age(&mut self, now_ns: u64) {
        while let Some((_, &mac)) = self.order.first_key_value() {
            match self.table.get(&mac) {
                Some(e) if now_ns.saturating_sub(e.last_seen) > AGEING_TIME_NS => self.forget(mac),
                _ => break,
            }
        }
    }

    fn forget(&mut self, mac: MacAddr) {
        if let Some(e) = self.table.remove(&mac) {
            self.order.remove(&e.stamp);
            if let Some(s) = self.ports.get_mut(&e.port) {
                s.learned = s.learned.saturating_sub(1);
            }
        }
    }

    fn stamp(&mut self) -> u64 {
        let s = self.next_stamp;
        self.next_stamp += 1;
        s
    }

    /// Learns (or refreshes, or moves) `mac` on `port`.
    fn learn(&mut self, mac: MacAddr, port: P, now_ns: u64) {
        let stamp = self.stamp();
        if let Some(e) = self.table.get_mut(&mac) {
            let (old_port, old_stamp) = (e.port, e.stamp);
            e.last_seen = now_ns;
            e.stamp = stamp;
            e.port = port;
            self.order.remove(&old_stamp);
            self.order.insert(stamp, mac);
            if old_port != port {
                if let Some(s) = self.ports.get_mut(&old_port) {
                    s.learned = s.learned.saturating_sub(1);
                }
                if let Some(s) = self.ports.get_mut(&port) {
                    s.learned += 1;
                }
            }
            return;
        }
        if self
            .ports
            .get(&port)
            .is_none_or(|s| s.learned >= self.limits.per_port)
        {
            return;
        }
        while self.table.len() >= self.limits.total.max(1) {
            match self.order.first_key_value() {
                Some((_, &oldest)) => self.forget(oldest),
                None => break,
            }
        }
        self.table.insert(
            mac,
            Entry {
                port,
                last_seen: now_ns,
                stamp,
            },
        );
        self.order.insert(stamp, mac);
        if let Some(s) = self.ports.get_mut(&port) {
            s.learned += 1;
        }
    }

    /// Decides where `frame`, received on `ingress` at `now_ns` (monotonic), goes:
    /// counts it on the ingress, learns its source, and counts it as sent on each egress
    /// (the caller reports an egress that could not take it with [`Self::egress_dropped`]).
    pub fn forward(&mut self, ingress: P, frame: &[u8], now_ns: u64) -> Forward<P> {
        self.age(now_ns);
        let len = frame.len() as u64;
        let Some(rx) = self.ports.get_mut(&ingress) else {
            return Forward::Drop(DropReason::UnknownPort);
        };
        rx.rx_packets += 1;
        rx.rx_bytes += len;
        let verdict = match EthernetHeader::addresses(frame) {
            None => Err(DropReason::Runt),
            Some((_, src)) if src.is_multicast() || src.is_zero() => Err(DropReason::BadSource),
            Some((dst, src)) => {
                self.learn(src, ingress, now_ns);
                if dst.is_link_local_reserved() {
                    Err(DropReason::Reserved)
                } else if dst.is_multicast() {
                    Ok(None)
                } else {
                    match self.lookup(dst, now_ns) {
                        Some(p) if p == ingress => Err(DropReason::SamePort),
                        Some(p) => Ok(Some(p)),
                        None => Ok(None),
                    }
                }
            }
        };
        let out = match verdict {
            Err(reason) => {
                if let Some(rx) = self.ports.get_mut(&ingress) {
                    rx.rx_drops += 1;
                }
                return Forward::Drop(reason);
            }
            Ok(Some(p)) => Forward::Unicast(p),
            Ok(None) => Forward::Flood(
                self.ports
                    .keys()
                    .copied()
                    .filter(|p| *p != ingress)
                    .collect(),
            ),
        };
        let egress: &[P] = match &out {
            Forward::Unicast(p) => core::slice::from_ref(p),
            Forward::Flood(ps) => ps,
            Forward::Drop(_) => &[],
        };
        for p in egress {
            if let Some(s) = self.ports.get_mut(p) {
                s.tx_packets += 1;
                s.tx_bytes += len;
            }
        }
        out
    }

    /// An egress [`Self::forward`] chose could not take the frame of `len` bytes: moved
    /// from its sent to its dropped counters.
    pub fn egress_dropped(&mut self, port: P, len: usize) {
        if let Some(s) = self.ports.get_mut(&port) {
            s.tx_packets = s.tx_packets.saturating_sub(1);
            s.tx_bytes = s.tx_bytes.saturating_sub(len as u64);
            s.tx_drops += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use alloc::{vec, vec::Vec};

    use super::*;

    const S: u64 = 1_000_000_000;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x00, 0x16, 0x3e, 0, 0, n])
    }

    fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
        let mut f = dst.0.to_vec();
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&[0x08, 0x06]);
        f.extend_from_slice(&[0; 46]);
        f
    }

    fn bridge(ports: &[u32]) -> Bridge<u32> {
        let mut b = Bridge::default();
        for p in ports {
            assert!(b.add_port(*p));
        }
        b
    }

    #[test]
    fn unknown_unicast_floods_then_known_goes_to_its_port() {
        let mut b = bridge(&[1, 2, 3]);
        assert_eq!(
            b.forward(1, &frame(mac(2), mac(1)), 0),
            Forward::Flood(vec![2, 3])
        );
        // 2 answers: 1 is known now, and 2 is learned.
        assert_eq!(b.forward(2, &frame(mac(1), mac(2)), S), Forward::Unicast(1));
        assert_eq!(
            b.forward(1, &frame(mac(2), mac(1)), 2 * S),
            Forward::Unicast(2)
        );
        assert_eq!(b.stats(1).unwrap().learned, 1);
        let s3 = b.stats(3).unwrap();
        assert_eq!((s3.tx_packets, s3.tx_bytes), (1, 60));
        let s1 = b.stats(1).unwrap();
        assert_eq!((s1.rx_packets, s1.tx_packets, s1.rx_drops), (2, 1, 0));
    }

    #[test]
    fn broadcast_and_multicast_flood_but_never_to_the_ingress() {
        let mut b = bridge(&[1, 2, 3]);
        assert_eq!(
            b.forward(2, &frame(MacAddr::BROADCAST, mac(2)), 0),
            Forward::Flood(vec![1, 3])
        );
        let mcast = MacAddr([0x01, 0x00, 0x5e, 0, 0, 0xfb]);
        assert_eq!(
            b.forward(3, &frame(mcast, mac(3)), 0),
            Forward::Flood(vec![1, 2])
        );
        // A lone port floods to nobody.
        let mut lone = bridge(&[7]);
        assert_eq!(
            lone.forward(7, &frame(MacAddr::BROADCAST, mac(7)), 0),
            Forward::Flood(vec![])
        );
    }

    #[test]
    fn bad_sources_reserved_destinations_and_runts_are_dropped() {
        let mut b = bridge(&[1, 2]);
        let group = MacAddr([0x01, 0, 0, 0, 0, 1]);
        assert_eq!(
            b.forward(1, &frame(mac(2), group), 0),
            Forward::Drop(DropReason::BadSource)
        );
        assert_eq!(
            b.forward(1, &frame(mac(2), MacAddr::BROADCAST), 0),
            Forward::Drop(DropReason::BadSource)
        );
        assert_eq!(
            b.forward(1, &frame(mac(2), MacAddr::ZERO), 0),
            Forward::Drop(DropReason::BadSource)
        );
        for last in [0x00, 0x01, 0x02, 0x0e, 0x0f] {
            let stp = MacAddr([0x01, 0x80, 0xc2, 0, 0, last]);
            assert_eq!(
                b.forward(1, &frame(stp, mac(1)), 0),
                Forward::Drop(DropReason::Reserved)
            );
        }
        let not_reserved = MacAddr([0x01, 0x80, 0xc2, 0, 0, 0x10]);
        assert_eq!(
            b.forward(1, &frame(not_reserved, mac(1)), 0),
            Forward::Flood(vec![2])
        );
        assert_eq!(b.forward(1, &[0; 13], 0), Forward::Drop(DropReason::Runt));
        assert_eq!(
            b.forward(9, &frame(mac(2), mac(1)), 0),
            Forward::Drop(DropReason::UnknownPort)
        );
        // Bad sources are never learned.
        assert_eq!(b.lookup(group, 0), None);
        assert_eq!(b.lookup(MacAddr::ZERO, 0), None);
        assert_eq!(b.stats(1).unwrap().rx_drops, 9);
        assert_eq!(b.stats(2).unwrap().tx_packets, 1);
    }

    #[test]
    fn a_destination_on_the_ingress_port_is_not_sent_back() {
        let mut b = bridge(&[1, 2]);
        b.forward(1, &frame(MacAddr::BROADCAST, mac(10)), 0);
        b.forward(1, &frame(MacAddr::BROADCAST, mac(11)), 0);
        assert_eq!(
            b.forward(1, &frame(mac(10), mac(11)), 0),
            Forward::Drop(DropReason::SamePort)
        );
    }

    #[test]
    fn addresses_move_with_their_station() {
        let mut b = bridge(&[1, 2, 3]);
        b.forward(1, &frame(MacAddr::BROADCAST, mac(5)), 0);
        assert_eq!(b.lookup(mac(5), 0), Some(1));
        // The guest migrated (or the MAC was taken over): it now speaks on port 2.
        b.forward(2, &frame(MacAddr::BROADCAST, mac(5)), S);
        assert_eq!(b.lookup(mac(5), S), Some(2));
        assert_eq!(b.stats(1).unwrap().learned, 0);
        assert_eq!(b.stats(2).unwrap().learned, 1);
        assert_eq!(b.forward(3, &frame(mac(5), mac(6)), S), Forward::Unicast(2));
    }

    #[test]
    fn entries_age_out_after_300_seconds() {
        let mut b = bridge(&[1, 2, 3]);
        b.forward(1, &frame(MacAddr::BROADCAST, mac(1)), 0);
        b.forward(2, &frame(MacAddr::BROADCAST, mac(2)), 100 * S);
        assert_eq!(
            b.forward(3, &frame(mac(1), mac(3)), 300 * S),
            Forward::Unicast(1)
        );
        // Just past 300 s after it was last seen, mac(1) is unknown: flooded.
        assert_eq!(b.lookup(mac(1), 300 * S + 1), None);
        assert_eq!(
            b.forward(3, &frame(mac(1), mac(3)), 300 * S + 1),
            Forward::Flood(vec![1, 2])
        );
        assert_eq!(b.stats(1).unwrap().learned, 0);
        // Refreshing keeps an entry alive.
        b.forward(2, &frame(MacAddr::BROADCAST, mac(2)), 350 * S);
        b.age(600 * S);
        assert_eq!(b.lookup(mac(2), 600 * S), Some(2));
        b.age(651 * S);
        assert_eq!(b.lookup(mac(2), 651 * S), None);
        assert_eq!(b.stats(2).unwrap().learned, 0);
    }

    #[test]
    fn a_removed_port_forgets_its_addresses() {
        let mut b = bridge(&[1, 2, 3]);
        b.forward(1, &frame(MacAddr::BROADCAST, mac(1)), 0);
        b.forward(2, &frame(MacAddr::BROADCAST, mac(2)), 0);
        let last = b.remove_port(1).unwrap();
        assert_eq!(last.rx_packets, 1);
        assert_eq!(b.lookup(mac(1), 0), None);
        assert_eq!(b.learned(), 1);
        assert_eq!(
            b.forward(2, &frame(mac(1), mac(2)), 0),
            Forward::Flood(vec![3])
        );
        assert_eq!(b.remove_port(1), None);
        assert!(!b.add_port(2));
    }

    #[test]
    fn source_spraying_is_bounded_and_evicts_the_oldest() {
        let mut b: Bridge<u32> = Bridge::new(BridgeLimits {
            total: 8,
            per_port: 6,
        });
        for p in [1, 2, 3] {
            b.add_port(p);
        }
        b.forward(2, &frame(MacAddr::BROADCAST, mac(200)), 0);
        b.forward(3, &frame(MacAddr::BROADCAST, mac(201)), 1);
        // Port 1 sprays 1000 source addresses: it learns at most 6.
        for i in 0..1000u32 {
            let src = MacAddr([0x02, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            b.forward(1, &frame(MacAddr::BROADCAST, src), 2 + u64::from(i));
        }
        assert_eq!(b.stats(1).unwrap().learned, 6);
        assert_eq!(b.learned(), 8);
        assert_eq!(b.lookup(mac(200), 2000), Some(2));
        // A total limit below what the ports learn evicts the oldest entry first.
        for i in 0..5u8 {
            b.forward(2, &frame(MacAddr::BROADCAST, mac(i)), 3000 + u64::from(i));
        }
        assert_eq!(b.learned(), 8);
        assert_eq!(b.lookup(mac(201), 4000), None, "oldest evicted");
        assert_eq!(b.lookup(mac(4), 4000), Some(2));
        let total: u32 = [1, 2, 3].iter().map(|p| b.stats(*p).unwrap().learned).sum();
        assert_eq!(total, 8);
    }

    #[test]
    fn egress_drops_move_counters() {
        let mut b = bridge(&[1, 2]);
        assert_eq!(
            b.forward(1, &frame(MacAddr::BROADCAST, mac(1)), 0),
            Forward::Flood(vec![2])
        );
        b.egress_dropped(2, 60);
        let s = b.stats(2).unwrap();
        assert_eq!((s.tx_packets, s.tx_bytes, s.tx_drops), (0, 0, 1));
    }
}
