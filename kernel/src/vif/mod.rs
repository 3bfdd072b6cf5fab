//! The vif backend engine for one network device (`io/netif.h`), generic over what the
//! binary provides: the frontend's two ring pages ([`RingMemory`]) and grant copies
//! ([`GrantCopy`]).
//!
//! - [`tx`]: frontend → switch. Slot chains are copied out of the ring, validated as
//!   netback does, grant-copied into a [`Packet`] and answered one response per slot.
//! - [`rx`]: switch → frontend. A bounded queue of packets waiting for the frontend's rx
//!   requests, delivered by grant copy into its posted pages, answered in the same slots.
//! - [`xenbus`]: the handshake as a state machine over the frontend's state and nodes.
//!
//! How the binary drives one device: on the frontend's Connected, [`xenbus::VifXenbus`]
//! says [`xenbus::Action::Connect`]; map the two rings, bind the event channel(s), make a
//! [`Vif`] with the parsed [`xenbus::FrontendConfig`], attach the switch port, set the
//! backend Connected ([`xenbus::VifXenbus::connected`]) and call [`Vif::process_tx`] and
//! [`Vif::process_rx`] once (netfront kicks both channels before it sees Connected).
//! Then: tx event → `process_tx`, handing each packet to the switch; a packet the switch
//! sends to the port → [`Vif::queue_rx`] then `process_rx`; rx event (new rx requests) →
//! `process_rx`. Notify the frontend when a summary says so. A [`VifError`] means the
//! frontend broke the protocol: stop serving the rings and close the device.

pub mod rx;
pub mod tx;
pub mod xenbus;

use ferrovisor_abi::{
    errno::XenErrno,
    xen::{grant_table::GrantRef, io::netif::XEN_NETIF_PAGE_SIZE},
};

use self::{rx::RxQueue, tx::TxRing, xenbus::FrontendConfig};
pub use self::{rx::RxSummary, tx::TxSummary};
pub use crate::io_ring::RingMemory;
use crate::{
    io_ring::RingError,
    net::{self, Packet},
};

/// Grant copies between hypervisor memory and one frontend's granted pages, done by the
/// binary with the grant table's copy machinery (the frontend domain is implied). The
/// engine never asks for a copy that crosses the end of the granted page
/// (`offset + len <= 4096`), and splits its own buffer at 4 KiB boundaries of the
/// packet, so a page-aligned packet buffer is never crossed either.
pub trait GrantCopy {
    /// Copies `buf.len()` bytes out of page `gref` from `offset`. A bad reference (not
    /// granted to the backend, out of range) is the Xen errno the copy reported.
    fn copy_from_grant(
        &mut self,
        gref: GrantRef,
        offset: u16,
        buf: &mut [u8],
    ) -> Result<(), XenErrno>;

    /// Copies `data` into page `gref` at `offset`; the grant must be writable.
    fn copy_to_grant(&mut self, gref: GrantRef, offset: u16, data: &[u8]) -> Result<(), XenErrno>;
}

/// The largest piece of a copy starting at `page_off` in a frontend page and at `local`
/// in the packet: neither side crosses a 4 KiB boundary.
fn piece(page_off: usize, local: usize, left: usize) -> usize {
    let page_room = XEN_NETIF_PAGE_SIZE - page_off % XEN_NETIF_PAGE_SIZE;
    let local_room = XEN_NETIF_PAGE_SIZE - local % XEN_NETIF_PAGE_SIZE;
    left.min(page_room).min(local_room)
}

/// Copies `dst.len()` bytes from (gref, offset) into `dst`, which sits at `local` in its
/// packet; refuses a range past the page end.
pub(crate) fn read_grant(
    g: &mut impl GrantCopy,
    gref: GrantRef,
    offset: usize,
    dst: &mut [u8],
    local: usize,
) -> Result<(), XenErrno> {
    if offset + dst.len() > XEN_NETIF_PAGE_SIZE {
        return Err(XenErrno::Einval);
    }
    let mut done = 0;
    while done < dst.len() {
        let n = piece(offset + done, local + done, dst.len() - done);
        g.copy_from_grant(gref, (offset + done) as u16, &mut dst[done..done + n])?;
        done += n;
    }
    Ok(())
}

/// Copies `src` (at `local` in its packet) into (gref, offset); refuses a range past the
/// page end.
pub(crate) fn write_grant(
    g: &mut impl GrantCopy,
    gref: GrantRef,
    offset: usize,
    src: &[u8],
    local: usize,
) -> Result<(), XenErrno> {
    if offset + src.len() > XEN_NETIF_PAGE_SIZE {
        return Err(XenErrno::Einval);
    }
    let mut done = 0;
    while done < src.len() {
        let n = piece(offset + done, local + done, src.len() - done);
        g.copy_to_grant(gref, (offset + done) as u16, &src[done..done + n])?;
        done += n;
    }
    Ok(())
}

/// A protocol violation that closes the device (netback's `xenvif_fatal_tx_err` cases,
/// and a ring overflow on either ring).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VifError {
    /// A ring's producer index claims more requests than the ring holds.
    Ring(RingError),
    /// A chain announced more slots (`more_data`/`extra_info`) than were published.
    MissingSlots,
    /// A chain longer than any frontend may send (netback's `fatal_skb_slots`).
    TooManySlots,
    /// A slot's `offset + size` passes the end of its page.
    CrossesPage,
    /// An extra-info slot of type 0 or past `XEN_NETIF_EXTRA_TYPE_MAX`.
    BadExtra,
    /// A GSO extra with MSS 0 or an unknown type.
    BadGso,
    /// The device was closed by an earlier violation.
    Broken,
}

impl From<RingError> for VifError {
    fn from(e: RingError) -> Self {
        VifError::Ring(e)
    }
}

/// Counters of one device, for `DeviceInfo` (`requests`/`errors`) and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VifStats {
    /// Packets taken from the frontend and handed on.
    pub tx_packets: u64,
    /// Tx packets refused (malformed, bad grant) — answered with `NETIF_RSP_ERROR`.
    pub tx_errors: u64,
    /// Tx packets the switch did not take — answered with `NETIF_RSP_DROPPED`.
    pub tx_dropped: u64,
    /// Packets delivered to the frontend.
    pub rx_packets: u64,
    /// Packets for the frontend dropped (queue full, too big without `feature-sg`, GSO it
    /// cannot take, a checksum that cannot be completed).
    pub rx_dropped: u64,
    /// Rx slots answered with an error (a bad rx grant).
    pub rx_errors: u64,
}

impl core::ops::AddAssign for VifStats {
    /// Adds another connection's counters (a device's totals across reconnects).
    fn add_assign(&mut self, o: Self) {
        self.tx_packets += o.tx_packets;
        self.tx_errors += o.tx_errors;
        self.tx_dropped += o.tx_dropped;
        self.rx_packets += o.rx_packets;
        self.rx_dropped += o.rx_dropped;
        self.rx_errors += o.rx_errors;
    }
}

/// One vif device's engine state: its two rings, its rx queue, what the frontend
/// negotiated, and whether it broke the protocol.
#[derive(Debug)]
pub struct Vif {
    config: FrontendConfig,
    tx: TxRing,
    rx: RxQueue,
    stats: VifStats,
    broken: Option<VifError>,
}

impl Vif {
    /// An engine for a frontend that connected with `config`, its rings fresh.
    pub fn new(config: FrontendConfig) -> Self {
        Self {
            config,
            tx: TxRing::new(),
            rx: RxQueue::new(rx::RxLimits::default()),
            stats: VifStats::default(),
            broken: None,
        }
    }

    /// What the frontend negotiated.
    pub fn config(&self) -> &FrontendConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> VifStats {
        self.stats
    }

    /// The violation that closed the device, if any.
    pub fn broken(&self) -> Option<VifError> {
        self.broken
    }

    fn check(&self) -> Result<(), VifError> {
        self.broken.map_or(Ok(()), |_| Err(VifError::Broken))
    }

    /// Serves the tx ring: up to `budget` packets, each handed to `deliver` (which
    /// returns whether the switch took it). See [`tx`].
    pub fn process_tx(
        &mut self,
        ring: &mut impl RingMemory,
        grants: &mut impl GrantCopy,
        budget: usize,
        deliver: impl FnMut(Packet) -> bool,
    ) -> Result<TxSummary, VifError> {
        self.check()?;
        let r = self
            .tx
            .process(ring, grants, budget, &mut self.stats, deliver);
        if let Err(e) = r {
            self.broken = Some(e);
        }
        r
    }

    /// Queues a packet for the frontend; false (and counted) when the queue is full. Call
    /// [`Self::process_rx`] after.
    ///
    /// A GSO packet this frontend cannot take whole (no `feature-gso-tcpv4/6` for its
    /// type, or no `feature-sg`) is segmented here ([`net::gso`]) and its segments queued.
    pub fn queue_rx(&mut self, packet: Packet) -> bool {
        if self.broken.is_some() {
            self.stats.rx_dropped += 1;
            return false;
        }
        if let Some(gso) = packet.gso {
            if !self.config.takes_gso(gso.kind) {
                let Ok(segments) = net::gso::segment(&packet) else {
                    self.stats.rx_dropped += 1;
                    return false;
                };
                let mut all = true;
                for s in segments {
                    all &= self.rx.push(s, &mut self.stats);
                }
                return all;
            }
        }
        self.rx.push(packet, &mut self.stats)
    }

    /// Packets waiting for rx requests.
    pub fn rx_queued(&self) -> usize {
        self.rx.len()
    }

    /// Delivers queued packets into the frontend's posted rx pages. See [`rx`].
    pub fn process_rx(
        &mut self,
        ring: &mut impl RingMemory,
        grants: &mut impl GrantCopy,
    ) -> Result<RxSummary, VifError> {
        self.check()?;
        let r = self.rx.deliver(ring, grants, &self.config, &mut self.stats);
        if let Err(e) = r {
            self.broken = Some(e);
        }
        r
    }
}

#[cfg(test)]
pub(crate) mod fakes {
    use alloc::{collections::BTreeMap, vec, vec::Vec};

    use super::*;

    /// One ring page in a `Vec`.
    pub(crate) struct Page {
        pub bytes: Vec<u8>,
    }

    impl Page {
        pub(crate) fn new() -> Self {
            Self {
                bytes: vec![0; 4096],
            }
        }
    }

    impl RingMemory for Page {
        fn len(&self) -> usize {
            self.bytes.len()
        }
        fn load_acquire_u32(&self, o: usize) -> u32 {
            u32::from_le_bytes([
                self.bytes[o],
                self.bytes[o + 1],
                self.bytes[o + 2],
                self.bytes[o + 3],
            ])
        }
        fn store_release_u32(&mut self, o: usize, v: u32) {
            self.bytes[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }
        fn read(&self, o: usize, buf: &mut [u8]) {
            buf.copy_from_slice(&self.bytes[o..o + buf.len()]);
        }
        fn write(&mut self, o: usize, d: &[u8]) {
            self.bytes[o..o + d.len()].copy_from_slice(d);
        }
        fn full_barrier(&self) {}
    }

    /// Granted pages of a fake frontend; every copy is logged so tests can check no copy
    /// crosses a page.
    #[derive(Default)]
    pub(crate) struct Grants {
        pub pages: BTreeMap<GrantRef, Vec<u8>>,
        pub readonly: Vec<GrantRef>,
        pub copies: Vec<(GrantRef, usize, usize)>,
    }

    impl Grants {
        pub(crate) fn grant(&mut self, gref: GrantRef, data: &[u8], at: usize) {
            let page = self.pages.entry(gref).or_insert_with(|| vec![0; 4096]);
            page[at..at + data.len()].copy_from_slice(data);
        }
    }

    impl GrantCopy for Grants {
        fn copy_from_grant(
            &mut self,
            gref: GrantRef,
            offset: u16,
            buf: &mut [u8],
        ) -> Result<(), XenErrno> {
            let o = usize::from(offset);
            assert!(o + buf.len() <= 4096, "copy crosses the frontend page");
            self.copies.push((gref, o, buf.len()));
            let page = self.pages.get(&gref).ok_or(XenErrno::Einval)?;
            buf.copy_from_slice(&page[o..o + buf.len()]);
            Ok(())
        }
        fn copy_to_grant(
            &mut self,
            gref: GrantRef,
            offset: u16,
            data: &[u8],
        ) -> Result<(), XenErrno> {
            let o = usize::from(offset);
            assert!(o + data.len() <= 4096, "copy crosses the frontend page");
            self.copies.push((gref, o, data.len()));
            if self.readonly.contains(&gref) {
                return Err(XenErrno::Eperm);
            }
            let page = self.pages.get_mut(&gref).ok_or(XenErrno::Einval)?;
            page[o..o + data.len()].copy_from_slice(data);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fakes::Grants, *};

    #[test]
    fn copies_split_at_both_page_boundaries_and_refuse_overruns() {
        let mut g = Grants::default();
        g.grant(5, &[7u8; 4096], 0);
        let mut buf = [0u8; 3000];
        // The packet position 3000 makes the local side cross 4096 after 1096 bytes.
        read_grant(&mut g, 5, 1000, &mut buf, 3000).unwrap();
        assert_eq!(g.copies, [(5, 1000, 1096), (5, 2096, 1904)]);
        assert!(buf.iter().all(|b| *b == 7));
        assert_eq!(
            read_grant(&mut g, 5, 2000, &mut [0u8; 2097], 0),
            Err(XenErrno::Einval)
        );
        assert_eq!(
            read_grant(&mut g, 9, 0, &mut [0u8; 10], 0),
            Err(XenErrno::Einval)
        );
        g.readonly.push(5);
        assert_eq!(
            write_grant(&mut g, 5, 0, &[1u8; 10], 0),
            Err(XenErrno::Eperm)
        );
    }
}
