//! The tx ring (frontend → switch).
//!
//! A packet is a chain of slots (`io/netif.h`, and netback's `xenvif_tx_build_gops` /
//! `xenvif_count_requests` for what a backend must refuse):
//! - the first slot's `size` is the whole packet's length, each later slot's its own, so
//!   the first slot holds `first.size - Σ later sizes` bytes; `NETTXF_more_data` chains;
//! - `NETTXF_extra_info` on the first slot: extra-info slots follow it (before the later
//!   data slots), chained by `XEN_NETIF_EXTRA_FLAG_MORE`;
//! - at most [`XEN_NETIF_NR_SLOTS_MIN`] data slots: more are dropped, and a chain of
//!   more than [`FATAL_SLOTS`] is a hostile frontend (fatal);
//! - a later slot larger than what is left of the first size: dropped (buggy frontends
//!   do it with ≥ 64 KiB frames; netback does not treat it as fatal);
//! - a packet (or its first slot) shorter than an Ethernet header: dropped;
//! - `offset + size` past the page: fatal, as are missing slots, unknown extra types and
//!   a GSO extra with MSS 0 or an unknown type.
//!
//! Every request is copied out of the ring once, before it is looked at; nothing is read
//! from the ring again. One response per slot, in ring order: the packet's status on its
//! data slots, `NETIF_RSP_NULL` on its extra-info slots.

use alloc::vec::Vec;

use ferrovisor_abi::xen::io::netif::{
    NetifExtraInfo, NetifExtraType, NetifGsoType, NetifTxRequest, NetifTxResponse,
    NETIF_RSP_DROPPED, NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETTXF_CSUM_BLANK,
    NETTXF_DATA_VALIDATED, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA, XEN_NETIF_NR_SLOTS_MIN,
    XEN_NETIF_PAGE_SIZE,
};
use zerocopy::{FromBytes, IntoBytes};

use super::{read_grant, GrantCopy, RingMemory, VifError, VifStats};
use crate::{
    io_ring::BackRing,
    net::{ethernet::ETH_HLEN, ChecksumState, Gso, GsoKind, Packet},
};

/// Bytes of a tx ring entry (the larger of the 12-byte request and 4-byte response).
pub const TX_ENTRY: usize = 12;
/// Slots in a chain beyond which the frontend is hostile (netback's default
/// `fatal_skb_slots`).
pub const FATAL_SLOTS: usize = 20;

/// What one [`super::Vif::process_tx`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxSummary {
    /// Packets handed to the switch (taken or not).
    pub packets: usize,
    /// Packets refused with `NETIF_RSP_ERROR`.
    pub errors: usize,
    /// Control requests (multicast extras) answered; they count against the budget too.
    pub controls: usize,
    /// The frontend asked to be notified of the responses.
    pub notify: bool,
    /// The budget ran out with requests left: call again.
    pub more: bool,
}

/// The backend's side of the tx ring.
#[derive(Debug)]
pub(crate) struct TxRing {
    ring: BackRing,
}

/// The ids of the slots of one chain, for their responses.
struct Slots {
    /// (id, is an extra-info slot), in ring order.
    ids: heapless::Vec<(u16, bool), { FATAL_SLOTS + 8 }>,
}

impl TxRing {
    pub(crate) fn new() -> Self {
        // A 4 KiB page always holds 256 twelve-byte entries.
        let ring = BackRing::new(XEN_NETIF_PAGE_SIZE, TX_ENTRY);
        match ring {
            Some(ring) => Self { ring },
            // `ring_size(4096, 12)` is 256 (the abi's tests check it).
            None => unreachable!("a 4 KiB page holds a tx ring"),
        }
    }

    fn take(&mut self, mem: &impl RingMemory) -> Result<Option<[u8; TX_ENTRY]>, VifError> {
        let mut buf = [0u8; TX_ENTRY];
        Ok(self.ring.take_request(mem, &mut buf)?.then_some(buf))
    }

    fn respond(&mut self, mem: &mut impl RingMemory, id: u16, status: i16) {
        let rsp = NetifTxResponse { id, status };
        self.ring.put_response(mem, rsp.as_bytes());
    }

    fn respond_all(&mut self, mem: &mut impl RingMemory, slots: &Slots, status: i16) {
        for &(id, extra) in &slots.ids {
            self.respond(mem, id, if extra { NETIF_RSP_NULL } else { status });
        }
    }

    pub(crate) fn process(
        &mut self,
        mem: &mut impl RingMemory,
        grants: &mut impl GrantCopy,
        budget: usize,
        stats: &mut VifStats,
        mut deliver: impl FnMut(Packet) -> bool,
    ) -> Result<TxSummary, VifError> {
        let mut summary = TxSummary::default();
        loop {
            if summary.packets + summary.errors + summary.controls >= budget {
                summary.more = self.ring.unconsumed(mem)? > 0;
                break;
            }
            if self.ring.unconsumed(mem)? == 0 && !self.ring.final_check(mem)? {
                break;
            }
            match self.one_packet(mem, grants, &mut deliver, stats)? {
                Outcome::Delivered => summary.packets += 1,
                Outcome::Refused => summary.errors += 1,
                Outcome::Control => summary.controls += 1,
            }
        }
        summary.notify = self.ring.publish(mem);
        Ok(summary)
    }

    fn one_packet(
        &mut self,
        mem: &mut impl RingMemory,
        grants: &mut impl GrantCopy,
        deliver: &mut impl FnMut(Packet) -> bool,
        stats: &mut VifStats,
    ) -> Result<Outcome, VifError> {
        let Some(raw) = self.take(mem)? else {
            return Ok(Outcome::Control);
        };
        let first = NetifTxRequest::read_from_bytes(&raw).unwrap_or_default();
        let mut slots = Slots {
            ids: heapless::Vec::new(),
        };
        let _ = slots.ids.push((first.id, false));

        // Extra-info slots right after the first.
        let mut gso = None;
        let mut control = false;
        if first.flags & NETTXF_EXTRA_INFO != 0 {
            loop {
                let Some(raw) = self.take(mem)? else {
                    return Err(VifError::MissingSlots);
                };
                let (extra, _) =
                    NetifExtraInfo::read_from_prefix(&raw).map_err(|_| VifError::BadExtra)?;
                if slots.ids.push((0, true)).is_err() {
                    return Err(VifError::TooManySlots);
                }
                match extra.kind() {
                    None => return Err(VifError::BadExtra),
                    Some(NetifExtraType::Gso) => {
                        let body = extra.gso();
                        let kind = match NetifGsoType::from_raw(u64::from(body.gso_type)) {
                            Some(NetifGsoType::TcpV4) => GsoKind::TcpV4,
                            Some(NetifGsoType::TcpV6) => GsoKind::TcpV6,
                            _ => return Err(VifError::BadGso),
                        };
                        if body.size == 0 {
                            return Err(VifError::BadGso);
                        }
                        gso = Some(Gso {
                            kind,
                            mss: body.size,
                        });
                    }
                    // Multicast filter updates (never offered: the switch floods
                    // multicast): answered OK and carry no packet, as netback does.
                    Some(NetifExtraType::McastAdd | NetifExtraType::McastDel) => control = true,
                    Some(NetifExtraType::Hash) => {}
                }
                if !extra.more() {
                    break;
                }
            }
        }
        if control {
            self.respond_all(mem, &slots, NETIF_RSP_OKAY);
            return Ok(Outcome::Control);
        }

        // The later data slots; the first slot keeps what they leave of its size.
        // The first slot is one of the XEN_NETIF_NR_SLOTS_MIN.
        let mut later: heapless::Vec<NetifTxRequest, { XEN_NETIF_NR_SLOTS_MIN - 1 }> =
            heapless::Vec::new();
        let mut remaining = usize::from(first.size);
        let mut drop = false;
        let mut more = first.flags & NETTXF_MORE_DATA != 0;
        let mut data_slots = 1;
        while more {
            if data_slots >= FATAL_SLOTS {
                return Err(VifError::TooManySlots);
            }
            let Some(raw) = self.take(mem)? else {
                return Err(VifError::MissingSlots);
            };
            let txp = NetifTxRequest::read_from_bytes(&raw).unwrap_or_default();
            data_slots += 1;
            if slots.ids.push((txp.id, false)).is_err() {
                return Err(VifError::TooManySlots);
            }
            if usize::from(txp.offset) + usize::from(txp.size) > XEN_NETIF_PAGE_SIZE {
                return Err(VifError::CrossesPage);
            }
            let size = usize::from(txp.size);
            if size > remaining {
                drop = true;
            }
            remaining = remaining.saturating_sub(size);
            if later.push(txp).is_err() {
                // More than XEN_NETIF_NR_SLOTS_MIN data slots: consumed, then dropped.
                drop = true;
            }
            more = txp.flags & NETTXF_MORE_DATA != 0;
        }
        let first_len = remaining;
        if usize::from(first.offset) + first_len > XEN_NETIF_PAGE_SIZE {
            return Err(VifError::CrossesPage);
        }
        if usize::from(first.size) < ETH_HLEN || first_len < ETH_HLEN {
            drop = true;
        }
        if drop {
            self.respond_all(mem, &slots, NETIF_RSP_ERROR);
            stats.tx_errors += 1;
            return Ok(Outcome::Refused);
        }

        let total = usize::from(first.size);
        let mut data = Vec::new();
        if data.try_reserve_exact(total).is_err() {
            self.respond_all(mem, &slots, NETIF_RSP_DROPPED);
            stats.tx_dropped += 1;
            return Ok(Outcome::Delivered);
        }
        data.resize(total, 0);
        let mut at = 0;
        let mut copied = read_grant(
            grants,
            first.gref,
            usize::from(first.offset),
            &mut data[..first_len],
            0,
        );
        at += first_len;
        for txp in &later {
            if copied.is_err() {
                break;
            }
            let n = usize::from(txp.size);
            copied = read_grant(
                grants,
                txp.gref,
                usize::from(txp.offset),
                &mut data[at..at + n],
                at,
            );
            at += n;
        }
        if copied.is_err() {
            self.respond_all(mem, &slots, NETIF_RSP_ERROR);
            stats.tx_errors += 1;
            return Ok(Outcome::Refused);
        }

        let checksum = if first.flags & NETTXF_CSUM_BLANK != 0 {
            ChecksumState::Partial
        } else if first.flags & NETTXF_DATA_VALIDATED != 0 {
            ChecksumState::Complete
        } else {
            ChecksumState::Unverified
        };
        let taken = deliver(Packet {
            data,
            checksum,
            gso,
        });
        if taken {
            stats.tx_packets += 1;
        } else {
            stats.tx_dropped += 1;
        }
        self.respond_all(
            mem,
            &slots,
            if taken {
                NETIF_RSP_OKAY
            } else {
                NETIF_RSP_DROPPED
            },
        );
        Ok(Outcome::Delivered)
    }
}

enum Outcome {
    Delivered,
    Refused,
    Control,
}

#[cfg(test)]
mod tests {
    use alloc::{vec, vec::Vec};

    use ferrovisor_abi::xen::io::{
        netif::{NetifExtraGso, NETIF_RSP_NULL},
        ring::{REQ_PROD, RING_ENTRIES_OFFSET, RSP_EVENT, RSP_PROD},
    };

    use core::cell::RefCell;

    use super::*;
    use crate::vif::{
        fakes::{Grants, Page},
        xenbus::FrontendConfig,
        Vif,
    };

    /// A fake netfront: queues tx requests at its producer index.
    struct Front {
        page: Page,
        prod: u32,
        grants: Grants,
        next_gref: u32,
    }

    impl Front {
        fn new() -> Self {
            let mut page = Page::new();
            // netfront asks for a notification at the first response.
            page.store_release_u32(RSP_EVENT, 1);
            Self {
                page,
                prod: 0,
                grants: Grants::default(),
                next_gref: 100,
            }
        }

        fn slot(&mut self, bytes: &[u8]) {
            let off = RING_ENTRIES_OFFSET + (self.prod & 255) as usize * TX_ENTRY;
            self.page.bytes[off..off + TX_ENTRY].fill(0);
            self.page.bytes[off..off + bytes.len()].copy_from_slice(bytes);
            self.prod = self.prod.wrapping_add(1);
        }

        fn req(&mut self, gref: u32, offset: u16, flags: u16, id: u16, size: u16) {
            let r = NetifTxRequest {
                gref,
                offset,
                flags,
                id,
                size,
            };
            self.slot(r.as_bytes());
        }

        fn publish(&mut self) {
            let p = self.prod;
            self.page.store_release_u32(REQ_PROD, p);
        }

        /// Queues `frame` as netfront does: a first slot at `offset`, then whole pages.
        fn send(
            &mut self,
            frame: &[u8],
            offset: u16,
            flags: u16,
            gso: Option<NetifExtraGso>,
            id0: u16,
        ) {
            let first_len = frame.len().min(4096 - usize::from(offset));
            let mut chunks = vec![(usize::from(offset), &frame[..first_len])];
            for c in frame[first_len..].chunks(4096) {
                chunks.push((0, c));
            }
            let n = chunks.len();
            for (i, (off, data)) in chunks.into_iter().enumerate() {
                let gref = self.next_gref;
                self.next_gref += 1;
                self.grants.grant(gref, data, off);
                let more = if i + 1 < n { NETTXF_MORE_DATA } else { 0 };
                let size = if i == 0 {
                    frame.len() as u16
                } else {
                    data.len() as u16
                };
                let mut f = more;
                if i == 0 {
                    f |= flags | if gso.is_some() { NETTXF_EXTRA_INFO } else { 0 };
                }
                self.req(gref, off as u16, f, id0 + i as u16, size);
                if i == 0 {
                    if let Some(g) = gso {
                        self.slot(NetifExtraInfo::new_gso(g).as_bytes());
                    }
                }
            }
            self.publish();
        }

        fn responses(&self, from: u32, to: u32) -> Vec<(u16, i16)> {
            (from..to)
                .map(|i| {
                    let off = RING_ENTRIES_OFFSET + (i & 255) as usize * TX_ENTRY;
                    let r =
                        NetifTxResponse::read_from_bytes(&self.page.bytes[off..off + 4]).unwrap();
                    (r.id, r.status)
                })
                .collect()
        }
    }

    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![
            0x00, 0x16, 0x3e, 0, 0, 2, 0x00, 0x16, 0x3e, 0, 0, 1, 0x08, 0x00,
        ];
        f.extend((14..len).map(|i| (i % 251) as u8));
        f
    }

    fn run(vif: &mut Vif, front: &mut Front) -> (Result<TxSummary, VifError>, Vec<Packet>) {
        let mut got = Vec::new();
        let r = vif.process_tx(&mut front.page, &mut front.grants, 64, |p| {
            got.push(p);
            true
        });
        (r, got)
    }

    fn vif() -> Vif {
        Vif::new(FrontendConfig::test_default())
    }

    #[test]
    fn a_multi_slot_packet_arrives_whole_with_one_response_per_slot() {
        let mut vif = vif();
        let mut front = Front::new();
        let f = frame(9000);
        front.send(&f, 1000, NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED, None, 7);
        let (r, got) = run(&mut vif, &mut front);
        let s = r.unwrap();
        assert_eq!((s.packets, s.errors, s.notify), (1, 0, true));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, f);
        assert_eq!(got[0].checksum, ChecksumState::Partial);
        assert_eq!(got[0].gso, None);
        // 3096 + 4096 + 1808: three slots, three OK responses with their ids.
        assert_eq!(front.page.load_acquire_u32(RSP_PROD), 3);
        assert_eq!(front.responses(0, 3), [(7, 0), (8, 0), (9, 0)]);
        // No copy crossed a page on either side.
        for (_, off, len) in &front.grants.copies {
            assert!(off + len <= 4096);
        }
        assert_eq!(vif.stats().tx_packets, 1);
    }

    #[test]
    fn gso_extra_is_parsed_and_answered_null() {
        let mut vif = vif();
        let mut front = Front::new();
        let f = frame(3000);
        let gso = NetifExtraGso {
            size: 1448,
            gso_type: 1,
            pad: 0,
            features: 0,
        };
        front.send(&f, 0, NETTXF_CSUM_BLANK, Some(gso), 1);
        let (r, got) = run(&mut vif, &mut front);
        assert_eq!(r.unwrap().packets, 1);
        assert_eq!(
            got[0].gso,
            Some(Gso {
                kind: GsoKind::TcpV4,
                mss: 1448
            })
        );
        assert_eq!(front.responses(0, 2)[0], (1, NETIF_RSP_OKAY));
        assert_eq!(front.responses(0, 2)[1].1, NETIF_RSP_NULL);
    }

    #[test]
    fn the_switch_refusing_a_packet_answers_dropped() {
        let mut vif = vif();
        let mut front = Front::new();
        front.send(&frame(60), 0, 0, None, 3);
        let r = vif.process_tx(&mut front.page, &mut front.grants, 64, |_| false);
        assert_eq!(r.unwrap().packets, 1);
        assert_eq!(front.responses(0, 1), [(3, NETIF_RSP_DROPPED)]);
        assert_eq!(vif.stats().tx_dropped, 1);
    }

    #[test]
    fn many_packets_go_round_the_ring() {
        let mut vif = vif();
        let mut front = Front::new();
        let mut n = 0;
        for round in 0..10u16 {
            for i in 0..40u16 {
                front.send(&frame(60 + usize::from(i)), 0, 0, None, i);
            }
            let (r, got) = run(&mut vif, &mut front);
            assert!(r.is_ok(), "round {round}");
            assert_eq!(got.len(), 40);
            n += 40;
            assert_eq!(front.page.load_acquire_u32(RSP_PROD), n);
            // netfront moves rsp_event on as it consumes.
            front.page.store_release_u32(RSP_EVENT, n + 1);
        }
        // The budget splits a long batch: `more` says call again.
        for i in 0..70u16 {
            front.send(&frame(60), 0, 0, None, i);
        }
        let (r, got) = run(&mut vif, &mut front);
        assert!(r.unwrap().more);
        assert_eq!(got.len(), 64);
        let (r, got) = run(&mut vif, &mut front);
        assert!(!r.unwrap().more);
        assert_eq!(got.len(), 6);
    }

    #[test]
    fn too_many_slots_are_dropped_then_fatal() {
        // 19 data slots: consumed and answered ERROR; the next packet still goes through.
        let mut vif = vif();
        let mut front = Front::new();
        for i in 0..19u16 {
            let more = if i < 18 { NETTXF_MORE_DATA } else { 0 };
            let size = if i == 0 { 19 * 100 } else { 100 };
            front.grants.grant(1, &[0; 100], 0);
            front.req(1, 0, more, i, size);
        }
        front.publish();
        front.send(&frame(60), 0, 0, None, 99);
        let (r, got) = run(&mut vif, &mut front);
        let s = r.unwrap();
        assert_eq!((s.packets, s.errors), (1, 1));
        assert_eq!(got.len(), 1);
        let rsp = front.responses(0, 20);
        assert!(rsp[..19].iter().all(|(_, st)| *st == NETIF_RSP_ERROR));
        assert_eq!(rsp[19], (99, NETIF_RSP_OKAY));
        // 21 slots: a hostile frontend; the device closes and stays closed.
        let mut vif = Vif::new(FrontendConfig::test_default());
        let mut front = Front::new();
        for i in 0..21u16 {
            front.req(1, 0, NETTXF_MORE_DATA, i, 100);
        }
        front.publish();
        assert_eq!(run(&mut vif, &mut front).0, Err(VifError::TooManySlots));
        assert_eq!(vif.broken(), Some(VifError::TooManySlots));
        assert_eq!(run(&mut vif, &mut front).0, Err(VifError::Broken));
    }

    #[test]
    fn slots_past_the_page_are_fatal() {
        let mut vif = vif();
        let mut front = Front::new();
        front.grants.grant(1, &frame(100), 0);
        front.req(1, 4000, 0, 1, 100);
        front.publish();
        assert_eq!(run(&mut vif, &mut front).0, Err(VifError::CrossesPage));
        // A later slot crossing its page.
        let mut vif = Vif::new(FrontendConfig::test_default());
        let mut front = Front::new();
        front.req(1, 0, NETTXF_MORE_DATA, 1, 200);
        front.req(2, 4090, 0, 2, 100);
        front.publish();
        assert_eq!(run(&mut vif, &mut front).0, Err(VifError::CrossesPage));
    }

    #[test]
    fn size_mismatches_and_runts_are_errors_not_faults() {
        let mut vif = vif();
        let mut front = Front::new();
        front.grants.grant(1, &frame(200), 0);
        // Later slots claim more than the first size: dropped.
        front.req(1, 0, NETTXF_MORE_DATA, 1, 100);
        front.req(1, 0, 0, 2, 150);
        // A first size smaller than the Ethernet header.
        front.req(1, 0, 0, 3, 10);
        // A first slot left with fewer than 14 bytes of its own.
        front.req(1, 0, NETTXF_MORE_DATA, 4, 100);
        front.req(1, 0, 0, 5, 90);
        // First size 0 with later slots (u16 arithmetic must not wrap into a huge copy).
        front.req(1, 0, NETTXF_MORE_DATA, 6, 0);
        front.req(1, 0, 0, 7, 4096);
        front.publish();
        let (r, got) = run(&mut vif, &mut front);
        let s = r.unwrap();
        assert_eq!((s.packets, s.errors), (0, 4));
        assert!(got.is_empty());
        assert!(front
            .responses(0, 7)
            .iter()
            .all(|(_, st)| *st == NETIF_RSP_ERROR));
        assert_eq!(vif.stats().tx_errors, 4);
    }

    #[test]
    fn bad_grefs_are_errors() {
        let mut vif = vif();
        let mut front = Front::new();
        front.grants.grant(1, &frame(100), 0);
        front.req(1, 0, NETTXF_MORE_DATA, 1, 200);
        front.req(555, 0, 0, 2, 100);
        front.publish();
        let (r, got) = run(&mut vif, &mut front);
        assert_eq!(r.unwrap().errors, 1);
        assert!(got.is_empty());
        assert_eq!(
            front.responses(0, 2),
            [(1, NETIF_RSP_ERROR), (2, NETIF_RSP_ERROR)]
        );
    }

    #[test]
    fn missing_slots_and_bad_extras_are_fatal() {
        // more_data on the last published slot.
        let mut vif = vif();
        let mut front = Front::new();
        front.req(1, 0, NETTXF_MORE_DATA, 1, 200);
        front.publish();
        assert_eq!(run(&mut vif, &mut front).0, Err(VifError::MissingSlots));
        // extra_info with no extra slot.
        let mut vif = Vif::new(FrontendConfig::test_default());
        let mut front = Front::new();
        front.req(1, 0, NETTXF_EXTRA_INFO, 1, 60);
        front.publish();
        assert_eq!(run(&mut vif, &mut front).0, Err(VifError::MissingSlots));
        // An extra of type 0, of type 5, a GSO with MSS 0, a GSO of type 3.
        for extra in [
            [0u8, 0, 0, 0, 0, 0, 0, 0],
            [5, 0, 0, 0, 0, 0, 0, 0],
            [1, 0, 0, 0, 1, 0, 0, 0],
            [1, 0, 0xa8, 5, 3, 0, 0, 0],
        ] {
            let mut vif = Vif::new(FrontendConfig::test_default());
            let mut front = Front::new();
            front.req(1, 0, NETTXF_EXTRA_INFO, 1, 60);
            front.slot(&extra);
            front.publish();
            let e = run(&mut vif, &mut front).0.unwrap_err();
            assert!(
                matches!(e, VifError::BadExtra | VifError::BadGso),
                "{extra:?}"
            );
        }
        // A producer index beyond the ring.
        let mut vif = Vif::new(FrontendConfig::test_default());
        let mut front = Front::new();
        front.page.store_release_u32(REQ_PROD, 300);
        assert!(matches!(
            run(&mut vif, &mut front).0,
            Err(VifError::Ring(_))
        ));
    }

    #[test]
    fn mcast_extras_are_answered_and_carry_no_packet() {
        let mut vif = vif();
        let mut front = Front::new();
        front.req(0, 0, NETTXF_EXTRA_INFO, 1, 0);
        front.slot(&[2, 0, 0x01, 0x00, 0x5e, 0, 0, 1]);
        front.send(&frame(60), 0, 0, None, 2);
        let (r, got) = run(&mut vif, &mut front);
        assert!(r.is_ok());
        assert_eq!(got.len(), 1);
        assert_eq!(front.responses(0, 3), [(1, 0), (0, NETIF_RSP_NULL), (2, 0)]);
    }

    #[test]
    fn requests_changed_after_being_read_are_not_reread() {
        /// A frontend racing the backend: each entry turns hostile (size 0xffff, offset
        /// 0xffff, every flag) the moment the backend has read it.
        struct Racing(RefCell<Page>);
        impl RingMemory for Racing {
            fn len(&self) -> usize {
                self.0.borrow().len()
            }
            fn load_acquire_u32(&self, o: usize) -> u32 {
                self.0.borrow().load_acquire_u32(o)
            }
            fn store_release_u32(&mut self, o: usize, v: u32) {
                self.0.borrow_mut().store_release_u32(o, v)
            }
            fn read(&self, o: usize, buf: &mut [u8]) {
                let mut page = self.0.borrow_mut();
                page.read(o, buf);
                page.bytes[o..o + buf.len()].fill(0xff);
            }
            fn write(&mut self, o: usize, d: &[u8]) {
                self.0.borrow_mut().write(o, d)
            }
            fn full_barrier(&self) {}
        }
        let mut vif = vif();
        let mut front = Front::new();
        let f = frame(5000);
        front.send(&f, 0, NETTXF_CSUM_BLANK, None, 1);
        front.send(&frame(60), 0, 0, None, 9);
        let mut ring = Racing(RefCell::new(core::mem::replace(
            &mut front.page,
            Page::new(),
        )));
        let mut grants = core::mem::take(&mut front.grants);
        let mut got = Vec::new();
        let r = vif.process_tx(&mut ring, &mut grants, 64, |p| {
            got.push(p);
            true
        });
        assert_eq!(r.map(|s| s.packets), Ok(2));
        assert_eq!(got[0].data, f);
        assert_eq!(got[0].checksum, ChecksumState::Partial);
        assert_eq!(got[1].data, frame(60));
    }
}
