//! The rx ring (switch → frontend).
//!
//! netfront keeps the ring stocked with rx requests, each a whole writable page granted
//! at offset 0. A packet takes `ceil(len / 4096)` requests (only one without
//! `feature-sg`), plus one for a GSO extra-info record right after the first when the
//! packet is GSO and the frontend takes that GSO type; each request is answered in its
//! own slot (`io/ring.h`: responses are produced in request order, so the response to
//! request `i` lands in slot `i`, which netfront relies on: it finds its page by slot).
//! The first response carries the checksum flags, every response but the last
//! `NETRXF_more_data`, the status is the slot's byte count, or `NETIF_RSP_ERROR` when the
//! frontend's grant could not be written (netfront then drops the whole packet and moves
//! on, as the slot chain stays intact).
//!
//! A packet whose checksum is partial reaches a frontend that did not offer to receive
//! partial checksums (`feature-no-csum-offload` for IPv4, no `feature-ipv6-csum-offload`
//! for IPv6) completed; one the frontend can take goes out with `csum_blank` and
//! `data_validated`, as netback marks `CHECKSUM_PARTIAL` packets.

use alloc::collections::VecDeque;

use ferrovisor_abi::xen::io::{
    netif::{
        NetifExtraGso, NetifExtraInfo, NetifGsoType, NetifRxRequest, NetifRxResponse,
        NETIF_RSP_ERROR, NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED, NETRXF_EXTRA_INFO,
        NETRXF_MORE_DATA, XEN_NETIF_NR_SLOTS_MIN, XEN_NETIF_PAGE_SIZE,
    },
    ring::REQ_EVENT,
};
use zerocopy::{FromBytes, IntoBytes};

use super::{write_grant, xenbus::FrontendConfig, GrantCopy, RingMemory, VifError, VifStats};
use crate::{
    io_ring::BackRing,
    net::{
        checksum::complete_partial,
        ethernet::{EthernetHeader, ETHERTYPE_IPV6, ETH_HLEN},
        ChecksumState, GsoKind, Packet,
    },
};

/// Bytes of an rx ring entry (request and response are both 8 bytes).
pub const RX_ENTRY: usize = 8;

/// Bounds of the queue of packets waiting for rx requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxLimits {
    pub packets: usize,
    pub bytes: usize,
}

impl Default for RxLimits {
    fn default() -> Self {
        Self {
            packets: 256,
            bytes: 4 << 20,
        }
    }
}

/// What one [`super::Vif::process_rx`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxSummary {
    /// Packets written into the frontend's pages.
    pub delivered: usize,
    /// Packets dropped as undeliverable to this frontend.
    pub dropped: usize,
    /// The frontend asked to be notified of the responses.
    pub notify: bool,
    /// Packets still queued, waiting for rx requests (the frontend has been asked to
    /// notify when it posts them).
    pub waiting: usize,
}

/// The rx ring and the packets waiting for it.
#[derive(Debug)]
pub(crate) struct RxQueue {
    ring: BackRing,
    queue: VecDeque<Packet>,
    bytes: usize,
    limits: RxLimits,
}

/// How a packet goes out to this frontend.
struct Plan {
    data_slots: usize,
    extra: Option<NetifExtraGso>,
    flags: u16,
}

impl RxQueue {
    pub(crate) fn new(limits: RxLimits) -> Self {
        match BackRing::new(XEN_NETIF_PAGE_SIZE, RX_ENTRY) {
            Some(ring) => Self {
                ring,
                queue: VecDeque::new(),
                bytes: 0,
                limits,
            },
            // `ring_size(4096, 8)` is 256 (the abi's tests check it).
            None => unreachable!("a 4 KiB page holds an rx ring"),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn push(&mut self, packet: Packet, stats: &mut VifStats) -> bool {
        let len = packet.data.len();
        if self.queue.len() >= self.limits.packets || self.bytes + len > self.limits.bytes {
            stats.rx_dropped += 1;
            return false;
        }
        self.bytes += len;
        self.queue.push_back(packet);
        true
    }

    fn pop(&mut self) -> Option<Packet> {
        let p = self.queue.pop_front()?;
        self.bytes -= p.data.len();
        Some(p)
    }

    /// Decides how `packet` goes out, completing its checksum if the frontend cannot take
    /// it partial; `None`: it cannot go to this frontend.
    fn plan(packet: &mut Packet, config: &FrontendConfig) -> Option<Plan> {
        let len = packet.data.len();
        if len < ETH_HLEN || len > usize::from(u16::MAX) {
            return None;
        }
        let extra = match packet.gso {
            None => None,
            Some(gso) => {
                let ty = match gso.kind {
                    GsoKind::TcpV4 => NetifGsoType::TcpV4,
                    GsoKind::TcpV6 => NetifGsoType::TcpV6,
                };
                // `Vif::queue_rx` segmented what this frontend cannot take whole.
                if !config.takes_gso(gso.kind) {
                    return None;
                }
                Some(NetifExtraGso {
                    size: gso.mss,
                    gso_type: ty.raw(),
                    pad: 0,
                    features: 0,
                })
            }
        };
        let data_slots = len.div_ceil(XEN_NETIF_PAGE_SIZE);
        if data_slots > XEN_NETIF_NR_SLOTS_MIN || (data_slots > 1 && !config.sg) {
            return None;
        }
        let flags = match packet.checksum {
            ChecksumState::Partial => {
                let v6 = EthernetHeader::parse(&packet.data)
                    .is_some_and(|e| e.ethertype == ETHERTYPE_IPV6);
                let offload = if v6 {
                    config.ipv6_csum_offload
                } else {
                    config.csum_offload
                };
                // A GSO packet must stay partial: every segment's checksum is the
                // frontend's to compute (netback likewise marks GSO CHECKSUM_PARTIAL).
                if offload || extra.is_some() {
                    NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED
                } else {
                    complete_partial(&mut packet.data, &mut packet.checksum).ok()?;
                    NETRXF_DATA_VALIDATED
                }
            }
            ChecksumState::Complete => NETRXF_DATA_VALIDATED,
            ChecksumState::Unverified => 0,
        };
        Some(Plan {
            data_slots,
            extra,
            flags,
        })
    }

    /// Whether `needed` requests are posted; if not, asks the frontend to notify when
    /// enough are (`req_event` at the request that completes them: netback's
    /// `xenvif_rx_ring_slots_available`), then looks again.
    fn slots_available(
        &mut self,
        mem: &mut impl RingMemory,
        needed: u32,
    ) -> Result<bool, VifError> {
        if self.ring.unconsumed(mem)? >= needed {
            return Ok(true);
        }
        mem.store_release_u32(REQ_EVENT, self.ring.req_cons().wrapping_add(needed));
        mem.full_barrier();
        Ok(self.ring.unconsumed(mem)? >= needed)
    }

    fn take(&mut self, mem: &impl RingMemory) -> Result<NetifRxRequest, VifError> {
        let mut buf = [0u8; RX_ENTRY];
        // Callers checked the requests are there; a vanished one is an overflow the
        // ring reports, never a read of an unpublished slot.
        if !self.ring.take_request(mem, &mut buf)? {
            return Err(VifError::MissingSlots);
        }
        Ok(NetifRxRequest::read_from_bytes(&buf).unwrap_or_default())
    }

    pub(crate) fn deliver(
        &mut self,
        mem: &mut impl RingMemory,
        grants: &mut impl GrantCopy,
        config: &FrontendConfig,
        stats: &mut VifStats,
    ) -> Result<RxSummary, VifError> {
        let mut summary = RxSummary::default();
        while let Some(packet) = self.queue.front_mut() {
            let Some(plan) = Self::plan(packet, config) else {
                self.pop();
                stats.rx_dropped += 1;
                summary.dropped += 1;
                continue;
            };
            let needed = plan.data_slots + usize::from(plan.extra.is_some());
            if !self.slots_available(mem, needed as u32)? {
                break;
            }
            let Some(packet) = self.pop() else { break };
            self.write_packet(mem, grants, &packet.data, &plan, stats)?;
            stats.rx_packets += 1;
            summary.delivered += 1;
        }
        summary.waiting = self.queue.len();
        summary.notify = self.ring.publish(mem);
        Ok(summary)
    }

    fn write_packet(
        &mut self,
        mem: &mut impl RingMemory,
        grants: &mut impl GrantCopy,
        data: &[u8],
        plan: &Plan,
        stats: &mut VifStats,
    ) -> Result<(), VifError> {
        for (i, chunk) in data.chunks(XEN_NETIF_PAGE_SIZE).enumerate() {
            let req = self.take(mem)?;
            let local = i * XEN_NETIF_PAGE_SIZE;
            let status = match write_grant(grants, req.gref, 0, chunk, local) {
                // A chunk is at most 4096 bytes: it fits the i16.
                Ok(()) => chunk.len() as i16,
                Err(_) => {
                    stats.rx_errors += 1;
                    NETIF_RSP_ERROR
                }
            };
            let mut flags = 0;
            if i == 0 {
                flags |= plan.flags;
                if plan.extra.is_some() {
                    flags |= NETRXF_EXTRA_INFO;
                }
            }
            if i + 1 < plan.data_slots {
                flags |= NETRXF_MORE_DATA;
            }
            let rsp = NetifRxResponse {
                id: req.id,
                offset: 0,
                flags,
                status,
            };
            self.ring.put_response(mem, rsp.as_bytes());
            if i == 0 {
                if let Some(gso) = plan.extra {
                    // The extra takes the next request's slot; its page is not used.
                    self.take(mem)?;
                    self.ring
                        .put_response(mem, NetifExtraInfo::new_gso(gso).as_bytes());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use alloc::{vec, vec::Vec};

    use ferrovisor_abi::xen::io::{
        netif::NETIF_RSP_ERROR,
        ring::{REQ_PROD, RING_ENTRIES_OFFSET, RSP_EVENT, RSP_PROD},
    };

    use super::*;
    use crate::{
        net::{checksum::verify_l4_checksum, ethernet::tests::ipv4_tcp, Gso},
        vif::{
            fakes::{Grants, Page},
            xenbus::FrontendConfig,
            Vif,
        },
    };

    /// A fake netfront's rx side: posts pages, reads responses.
    struct Front {
        page: Page,
        prod: u32,
        cons: u32,
        grants: Grants,
    }

    impl Front {
        fn new() -> Self {
            let mut page = Page::new();
            page.store_release_u32(RSP_EVENT, 1);
            Self {
                page,
                prod: 0,
                cons: 0,
                grants: Grants::default(),
            }
        }

        /// Posts `n` requests (id = slot index, gref 1000 + index, as netfront does).
        fn post(&mut self, n: u32) {
            for _ in 0..n {
                let idx = self.prod & 255;
                let gref = 1000 + idx;
                self.grants.grant(gref, &[0xee; 4096], 0);
                let req = NetifRxRequest {
                    id: idx as u16,
                    pad: 0,
                    gref,
                };
                let off = RING_ENTRIES_OFFSET + idx as usize * RX_ENTRY;
                self.page.bytes[off..off + 8].copy_from_slice(req.as_bytes());
                self.prod = self.prod.wrapping_add(1);
            }
            let p = self.prod;
            self.page.store_release_u32(REQ_PROD, p);
        }

        fn response(&self, i: u32) -> NetifRxResponse {
            let off = RING_ENTRIES_OFFSET + (i & 255) as usize * RX_ENTRY;
            NetifRxResponse::read_from_bytes(&self.page.bytes[off..off + 8]).unwrap()
        }

        /// Reads one packet as netfront does: (first flags, extra, data).
        fn receive(&mut self) -> Option<(u16, Option<NetifExtraInfo>, Vec<u8>, bool)> {
            let prod = self.page.load_acquire_u32(RSP_PROD);
            if self.cons == prod {
                return None;
            }
            let first = self.response(self.cons);
            let mut slot = self.cons;
            let mut rsp = first;
            let mut extra = None;
            let mut data = Vec::new();
            let mut error = false;
            loop {
                // Each response sits in its request's slot and echoes its id.
                assert_eq!(u32::from(rsp.id), slot & 255);
                assert_eq!(rsp.offset, 0);
                if rsp.status < 0 {
                    error = true;
                } else {
                    let page = &self.grants.pages[&(1000 + u32::from(rsp.id))];
                    data.extend_from_slice(&page[..rsp.status as usize]);
                }
                if slot == self.cons && first.flags & NETRXF_EXTRA_INFO != 0 {
                    slot += 1;
                    let off = RING_ENTRIES_OFFSET + (slot & 255) as usize * RX_ENTRY;
                    extra = Some(
                        NetifExtraInfo::read_from_bytes(&self.page.bytes[off..off + 8]).unwrap(),
                    );
                }
                if rsp.flags & NETRXF_MORE_DATA == 0 {
                    break;
                }
                slot += 1;
                rsp = self.response(slot);
            }
            let idx = slot;
            self.cons = idx + 1;
            Some((first.flags, extra, data, error))
        }
    }

    fn run(vif: &mut Vif, front: &mut Front) -> RxSummary {
        vif.process_rx(&mut front.page, &mut front.grants).unwrap()
    }

    fn partial_tcp(len: usize) -> Packet {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        Packet {
            data: ipv4_tcp(&payload),
            checksum: ChecksumState::Partial,
            gso: None,
        }
    }

    #[test]
    fn packets_wait_for_requests_and_split_over_pages() {
        let mut vif = Vif::new(FrontendConfig::test_default());
        let mut front = Front::new();
        let big = Packet::plain((0..9000).map(|i| (i % 253) as u8).collect());
        assert!(vif.queue_rx(big.clone()));
        // No requests yet: it waits, and asks to be woken when 3 are posted.
        let s = run(&mut vif, &mut front);
        assert_eq!((s.delivered, s.waiting), (0, 1));
        assert_eq!(front.page.load_acquire_u32(REQ_EVENT), 3);
        front.post(2);
        assert_eq!(run(&mut vif, &mut front).delivered, 0);
        front.post(1);
        let s = run(&mut vif, &mut front);
        assert_eq!((s.delivered, s.waiting, s.notify), (1, 0, true));
        let (flags, extra, data, error) = front.receive().unwrap();
        assert_eq!((flags & !NETRXF_MORE_DATA, extra, error), (0, None, false));
        assert_eq!(data, big.data);
        // Statuses 4096, 4096, 808 in slots 0..3, same ids.
        let st: Vec<i16> = (0..3).map(|i| front.response(i).status).collect();
        assert_eq!(st, [4096, 4096, 808]);
        for (_, off, len) in &front.grants.copies {
            assert!(off + len <= 4096);
        }
    }

    #[test]
    fn without_sg_only_single_slot_packets_go() {
        let mut cfg = FrontendConfig::test_default();
        cfg.sg = false;
        let mut vif = Vif::new(cfg);
        let mut front = Front::new();
        front.post(10);
        vif.queue_rx(Packet::plain(vec![0x11; 4097]));
        vif.queue_rx(Packet::plain(vec![0x22; 4096]));
        let s = run(&mut vif, &mut front);
        assert_eq!((s.delivered, s.dropped), (1, 1));
        assert_eq!(front.receive().unwrap().2, vec![0x22; 4096]);
        assert_eq!(vif.stats().rx_dropped, 1);
    }

    #[test]
    fn checksum_flags_follow_what_the_frontend_offered() {
        // Offload taken: partial goes out blank + validated, untouched.
        let mut vif = Vif::new(FrontendConfig::test_default());
        let mut front = Front::new();
        front.post(4);
        let p = partial_tcp(100);
        vif.queue_rx(p.clone());
        vif.queue_rx(Packet::plain(ipv4_tcp(b"x")));
        run(&mut vif, &mut front);
        let (flags, _, data, _) = front.receive().unwrap();
        assert_eq!(flags, NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED);
        assert_eq!(data, p.data);
        assert_eq!(front.receive().unwrap().0, 0);
        // feature-no-csum-offload: completed here, marked validated.
        let mut cfg = FrontendConfig::test_default();
        cfg.csum_offload = false;
        let mut vif = Vif::new(cfg);
        let mut front = Front::new();
        front.post(4);
        vif.queue_rx(p.clone());
        run(&mut vif, &mut front);
        let (flags, _, data, _) = front.receive().unwrap();
        assert_eq!(flags, NETRXF_DATA_VALIDATED);
        assert_eq!(verify_l4_checksum(&data), Some(true));
    }

    #[test]
    fn gso_packets_carry_an_extra_after_the_first_slot() {
        let mut vif = Vif::new(FrontendConfig::test_default());
        let mut front = Front::new();
        front.post(8);
        let mut p = partial_tcp(6000);
        p.gso = Some(Gso {
            kind: GsoKind::TcpV4,
            mss: 1448,
        });
        vif.queue_rx(p.clone());
        let s = run(&mut vif, &mut front);
        assert_eq!(s.delivered, 1);
        assert_eq!(front.page.load_acquire_u32(RSP_PROD), 3);
        let (flags, extra, data, _) = front.receive().unwrap();
        assert_eq!(
            flags,
            NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED | NETRXF_EXTRA_INFO | NETRXF_MORE_DATA
        );
        let extra = extra.unwrap();
        assert_eq!(
            (
                extra.extra_type,
                extra.flags,
                extra.gso().size,
                extra.gso().gso_type
            ),
            (1, 0, 1448, 1)
        );
        assert_eq!(data, p.data);
        // A frontend without GSO for that type does not get it.
        let mut cfg = FrontendConfig::test_default();
        cfg.gso_tcpv6 = false;
        let mut vif = Vif::new(cfg);
        p.gso = Some(Gso {
            kind: GsoKind::TcpV6,
            mss: 1400,
        });
        vif.queue_rx(p.clone());
        let mut front = Front::new();
        front.post(8);
        // The IPv4 frame is not the TCPv6 its GSO type says: dropped, not segmented.
        assert_eq!(vif.stats().rx_dropped, 1);
        assert_eq!(run(&mut vif, &mut front).delivered, 0);
        // An IPv4 GSO packet for a frontend without feature-gso-tcpv4: segmented.
        let mut cfg = FrontendConfig::test_default();
        cfg.gso_tcpv4 = false;
        let mut vif = Vif::new(cfg);
        p.gso = Some(Gso {
            kind: GsoKind::TcpV4,
            mss: 1448,
        });
        assert!(vif.queue_rx(p));
        assert_eq!(vif.rx_queued(), 5);
        let mut front = Front::new();
        front.post(8);
        assert_eq!(run(&mut vif, &mut front).delivered, 5);
        for _ in 0..5 {
            let (flags, extra, data, _) = front.receive().unwrap();
            assert_eq!((flags, extra), (NETRXF_DATA_VALIDATED, None));
            assert!(data.len() <= 14 + 40 + 1448);
            assert_eq!(verify_l4_checksum(&data), Some(true));
        }
    }

    #[test]
    fn bad_rx_grants_answer_errors_and_keep_the_chain() {
        let mut vif = Vif::new(FrontendConfig::test_default());
        let mut front = Front::new();
        front.post(4);
        // Slot 1's page is revoked, slot 2's is read-only.
        front.grants.pages.remove(&1001);
        front.grants.readonly.push(1002);
        vif.queue_rx(Packet::plain(vec![1; 5000]));
        vif.queue_rx(Packet::plain(vec![2; 60]));
        vif.queue_rx(Packet::plain(vec![3; 60]));
        let s = run(&mut vif, &mut front);
        assert_eq!(s.delivered, 3);
        let (_, _, _, error) = front.receive().unwrap();
        assert!(error);
        assert_eq!(front.response(1).status, NETIF_RSP_ERROR);
        assert!(front.receive().unwrap().3);
        assert_eq!(front.receive().unwrap().2, vec![3; 60]);
        assert_eq!(vif.stats().rx_errors, 2);
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut vif = Vif::new(FrontendConfig::test_default());
        for _ in 0..256 {
            assert!(vif.queue_rx(Packet::plain(vec![0; 60])));
        }
        assert!(!vif.queue_rx(Packet::plain(vec![0; 60])));
        assert_eq!(vif.rx_queued(), 256);
        assert_eq!(vif.stats().rx_dropped, 1);
        // Bytes bound too: 64 KiB packets stop well before 256 of them.
        let mut vif = Vif::new(FrontendConfig::test_default());
        let n = (0..256)
            .take_while(|_| vif.queue_rx(Packet::plain(vec![0; 65535])))
            .count();
        assert_eq!(n, (4 << 20) / 65535);
    }

    #[test]
    fn round_and_round_the_ring() {
        let mut vif = Vif::new(FrontendConfig::test_default());
        let mut front = Front::new();
        front.post(256);
        for round in 0..20u32 {
            for i in 0..100u32 {
                vif.queue_rx(Packet::plain(vec![(round + i) as u8; 60 + i as usize]));
            }
            let s = run(&mut vif, &mut front);
            assert_eq!(s.delivered, 100);
            for i in 0..100u32 {
                let (_, _, data, _) = front.receive().unwrap();
                assert_eq!(data, vec![(round + i) as u8; 60 + i as usize]);
            }
            // netfront re-posts what it consumed and moves rsp_event on.
            front.post(100);
            let c = front.cons;
            front.page.store_release_u32(RSP_EVENT, c + 1);
        }
    }

    #[test]
    fn an_rx_producer_beyond_the_ring_is_fatal() {
        let mut vif = Vif::new(FrontendConfig::test_default());
        let mut front = Front::new();
        front.page.store_release_u32(REQ_PROD, 1000);
        vif.queue_rx(Packet::plain(vec![0; 60]));
        assert!(matches!(
            vif.process_rx(&mut front.page, &mut front.grants),
            Err(VifError::Ring(_))
        ));
        assert!(!vif.queue_rx(Packet::plain(vec![0; 60])));
    }
}
