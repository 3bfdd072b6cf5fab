//! The virtio-net driver: a pool of posted receive buffers (each refilled as soon as its
//! frame was handed up), transmission from a copy into one of a fixed pool of DMA
//! buffers, and both queues served from the device's interrupt. No offloads are
//! negotiated: frames come and go whole, checksums complete.
//!
//! Locking as in `blk`: one `IrqMutex` per NIC, never held while the receive callback
//! runs; lock order `DOMAINS` → a NIC's lock.

use alloc::vec::Vec;

use ferrovisor::{
    pci::{Bdf, Function},
    virtio::{
        net::{self, MacAddr, NicInfo, HEADER_LEN, MAX_FRAME, RX_QUEUE, TX_QUEUE},
        queue::{self, QueueLayout, Segment, SplitQueue},
    },
};

use super::{
    irq,
    virtio_pci::{ProbeError, Transport},
};
use crate::arch::x86_64::{
    dma::{DmaBuffer, DmaRing},
    irq::IrqMutex,
    pci::HwConfig,
};

/// A NIC's index (PCI order).
pub type NicId = usize;

/// Receives frames (without the virtio header) in interrupt context on the boot CPU, with
/// no driver lock held. The slice is valid only during the call.
pub trait NetReceiver: Sync {
    fn receive(&self, nic: NicId, frame: &[u8]);
    /// Transmit buffers came free after [`transmit`] said busy.
    fn tx_room(&self, _nic: NicId) {}
}

/// Why [`transmit`] did not send a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxError {
    NoNic,
    /// Every transmit buffer is with the device: retry after `tx_room`.
    Busy,
    /// Longer than [`MAX_FRAME`] or shorter than an Ethernet header.
    BadLength,
    /// The device broke the protocol and was stopped.
    Broken,
}

/// Receive buffers posted (at most the queue's size).
const RX_BUFFERS: u16 = 128;
/// Transmit buffers (at most the queue's size).
const TX_BUFFERS: u16 = 64;
/// Each buffer: the header and a full frame, in one page.
const BUFFER_BYTES: usize = 4096;

struct Queue {
    ring: DmaRing,
    queue: SplitQueue,
    notify_at: u64,
    /// Per head id: the buffer the device holds.
    held: Vec<Option<DmaBuffer>>,
}

impl Queue {
    fn new(t: &Transport, index: u16) -> Result<Queue, ProbeError> {
        let name = if index == RX_QUEUE {
            "receive"
        } else {
            "transmit"
        };
        let size = queue::choose_size(t.queue_max(index)).ok_or(ProbeError::Queue(name))?;
        let layout = QueueLayout::new(size);
        let ring = DmaRing::new(layout.bytes).ok_or(ProbeError::OutOfMemory)?;
        let q = SplitQueue::new(size, &ring);
        let base = ring.phys();
        let notify_at = t.enable_queue(
            index,
            size,
            base + layout.desc as u64,
            base + layout.avail as u64,
            base + layout.used as u64,
        )?;
        Ok(Queue {
            ring,
            queue: q,
            notify_at,
            held: (0..size).map(|_| None).collect(),
        })
    }

    /// Gives `buf` to the device (`len` bytes of it; writable for receive).
    fn post(&mut self, buf: DmaBuffer, len: usize, device_writes: bool) -> Result<(), DmaBuffer> {
        let seg = Segment {
            addr: buf.phys(),
            len: len as u32,
            device_writes,
        };
        match self.queue.add(&self.ring, &[seg]) {
            Ok(head) => {
                self.held[head as usize] = Some(buf);
                Ok(())
            }
            Err(_) => Err(buf),
        }
    }
}

struct NicState {
    transport: Transport,
    rx: Queue,
    tx: Queue,
    tx_pool: Vec<DmaBuffer>,
    /// `transmit` said busy since the last `tx_room`.
    tx_waiting: bool,
    link_up: bool,
    broken: bool,
}

/// One virtio-net NIC.
pub struct Nic {
    pub bdf: Bdf,
    pub info: NicInfo,
    pub vector: u8,
    state: IrqMutex<NicState>,
}

impl Nic {
    /// Its MAC address (all zero if the device has none: the caller picks one).
    pub fn mac(&self) -> MacAddr {
        self.info.mac.unwrap_or_default()
    }

    pub fn link_up(&self) -> bool {
        self.state.lock().link_up
    }
}

static NICS: spin::Once<Vec<Nic>> = spin::Once::new();
static RECEIVER: IrqMutex<Option<&'static dyn NetReceiver>> = IrqMutex::new(None);

/// Registers the receive callback (replacing any earlier one); frames that arrive while
/// none is registered are dropped.
pub fn set_receiver(receiver: &'static dyn NetReceiver) {
    *RECEIVER.lock() = Some(receiver);
}

/// Every NIC, in PCI order (index = [`NicId`]).
pub fn nics() -> &'static [Nic] {
    NICS.get().map_or(&[], |n| n.as_slice())
}

pub(super) fn install(nics: Vec<Nic>) {
    NICS.call_once(|| nics);
}

fn read_link(t: &Transport, info: &NicInfo) -> bool {
    let status = t.read_device_config(|d| d.read16(net::config::STATUS));
    net::link_up(info.has_status, status)
}

pub(super) fn probe(
    cfg: HwConfig,
    func: &Function,
    index: usize,
    apic_id: u32,
) -> Result<Nic, ProbeError> {
    let t = Transport::new(cfg, func)?;
    let features = t.negotiate(net::WANTED)?;
    let info = t.read_device_config(|d| NicInfo::read(features, |o| d.read8(o)));
    let vector = irq::alloc_vector(on_interrupt, index).ok_or(ProbeError::NoVector)?;
    t.setup_msix(vector, apic_id)?;
    let mut rx = Queue::new(&t, RX_QUEUE)?;
    let tx = Queue::new(&t, TX_QUEUE)?;
    for _ in 0..RX_BUFFERS.min(rx.queue.size()) {
        let buf = DmaBuffer::new(BUFFER_BYTES).ok_or(ProbeError::OutOfMemory)?;
        if rx.post(buf, BUFFER_BYTES, true).is_err() {
            break;
        }
    }
    let mut tx_pool = Vec::new();
    for _ in 0..TX_BUFFERS.min(tx.queue.size()) {
        tx_pool.push(DmaBuffer::new(BUFFER_BYTES).ok_or(ProbeError::OutOfMemory)?);
    }
    t.driver_ok();
    // The receive buffers were made available before DRIVER_OK; tell the device now.
    t.notify(rx.notify_at, RX_QUEUE);
    let link_up = read_link(&t, &info);
    Ok(Nic {
        bdf: func.bdf,
        info,
        vector,
        state: IrqMutex::new(NicState {
            transport: t,
            rx,
            tx,
            tx_pool,
            tx_waiting: false,
            link_up,
            broken: false,
        }),
    })
}

/// Sends one Ethernet frame (destination, source, type, payload; no FCS), copied into a
/// transmit buffer. Busy when every buffer is with the device.
pub fn transmit(nic: NicId, frame: &[u8]) -> Result<(), TxError> {
    let n = nics().get(nic).ok_or(TxError::NoNic)?;
    if frame.len() < 14 || frame.len() > MAX_FRAME {
        return Err(TxError::BadLength);
    }
    let mut guard = n.state.lock();
    let st = &mut *guard;
    if st.broken {
        return Err(TxError::Broken);
    }
    let Some(mut buf) = st.tx_pool.pop() else {
        st.tx_waiting = true;
        return Err(TxError::Busy);
    };
    let len = HEADER_LEN + frame.len();
    buf.set_len(len);
    let bytes = buf.as_mut_slice();
    // No offloads: an all-zero header (5.1.6.2).
    bytes[..HEADER_LEN].fill(0);
    bytes[HEADER_LEN..].copy_from_slice(frame);
    if let Err(buf) = st.tx.post(buf, len, false) {
        st.tx_pool.push(buf);
        st.tx_waiting = true;
        return Err(TxError::Busy);
    }
    if st.tx.queue.should_notify(&st.tx.ring) {
        st.transport.notify(st.tx.notify_at, TX_QUEUE);
    }
    Ok(())
}

/// The NIC's interrupt: reclaims sent buffers, hands each received frame up (lock
/// released) and reposts its buffer, and notes link changes.
fn on_interrupt(index: usize) {
    let Some(n) = nics().get(index) else {
        return;
    };
    let receiver = *RECEIVER.lock();
    let room = {
        let mut guard = n.state.lock();
        let st = &mut *guard;
        let mut freed = false;
        loop {
            match st.tx.queue.pop_used(&st.tx.ring) {
                Ok(Some(u)) => {
                    if let Some(b) = st.tx.held.get_mut(u.id as usize).and_then(Option::take) {
                        st.tx_pool.push(b);
                        freed = true;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    log::error!(
                        "virtio-net {}: transmit queue: {e}; the NIC is stopped",
                        n.bdf
                    );
                    stop(st);
                    break;
                }
            }
        }
        let link = read_link(&st.transport, &n.info);
        if link != st.link_up {
            st.link_up = link;
            log::info!(
                "virtio-net {} {}: link {}",
                n.bdf,
                n.mac(),
                if link { "up" } else { "down" }
            );
        }
        freed && core::mem::take(&mut st.tx_waiting)
    };
    loop {
        let taken = {
            let mut guard = n.state.lock();
            let st = &mut *guard;
            if st.broken {
                None
            } else {
                match st.rx.queue.pop_used(&st.rx.ring) {
                    Ok(Some(u)) => st
                        .rx
                        .held
                        .get_mut(u.id as usize)
                        .and_then(Option::take)
                        .map(|b| (b, u.len)),
                    Ok(None) => None,
                    Err(e) => {
                        log::error!(
                            "virtio-net {}: receive queue: {e}; the NIC is stopped",
                            n.bdf
                        );
                        stop(st);
                        None
                    }
                }
            }
        };
        let Some((buf, len)) = taken else {
            break;
        };
        if let (Some(r), Some(frame)) = (receiver, net::received_frame(buf.as_slice(), len)) {
            r.receive(index, frame);
        }
        let mut guard = n.state.lock();
        let st = &mut *guard;
        if st.broken {
            continue;
        }
        // Cannot fail (the buffer's descriptor just came free); drop it if it did.
        let _ = st.rx.post(buf, BUFFER_BYTES, true);
        if st.rx.queue.should_notify(&st.rx.ring) {
            st.transport.notify(st.rx.notify_at, RX_QUEUE);
        }
    }
    if room {
        if let Some(r) = receiver {
            r.tx_room(index);
        }
    }
}

/// Stops a NIC that broke the rules (see `blk::stop`): its buffers are leaked unless the
/// reset finishes.
fn stop(st: &mut NicState) {
    st.broken = true;
    if st.transport.reset().is_err() {
        st.transport.fail();
        for q in [&mut st.rx, &mut st.tx] {
            for b in q.held.iter_mut().filter_map(Option::take) {
                b.leak();
            }
        }
    }
}
