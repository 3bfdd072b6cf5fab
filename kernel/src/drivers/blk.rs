//! The virtio-blk driver: one request queue per disk, asynchronous requests with a
//! caller's token, completions delivered from the interrupt handler to the callback the
//! upper layer registered, and a blocking variant for boot time.
//!
//! Locking: each disk's state is behind its own `IrqMutex`, taken by [`submit`] (any CPU)
//! and by the interrupt handler (the boot CPU). The completion callback is always called
//! with that lock released, so it may take `DOMAINS` and call [`submit`] again. Lock
//! order: `DOMAINS` → a disk's lock; a disk's lock is never held while taking anything
//! else (but the frame allocator's, to allocate memory at probe time).

use alloc::vec::Vec;

use ferrovisor::{
    pci::{Bdf, Function},
    virtio::{
        blk::{self, DiskInfo, Op, RequestError, Status},
        queue::{self, AddError, QueueLayout, Segment, SplitQueue},
    },
};

use super::{
    irq,
    virtio_pci::{ProbeError, Transport},
};
use crate::{
    arch::x86_64::{
        dma::{DmaBuffer, DmaRing},
        irq::{self as cpu_irq, IrqMutex},
        pci::HwConfig,
        percpu,
    },
    clock,
};

/// A disk's index: vda is 0, vdb 1, … (PCI order).
pub type DiskId = usize;

/// Receives completed requests, in interrupt context on the boot CPU, with no driver lock
/// held. `buffers` are the caller's buffers back (for a read, filled).
pub trait BlkCompletion: Sync {
    fn complete(&self, disk: DiskId, token: u64, status: Status, buffers: Vec<DmaBuffer>);
}

/// Why [`submit`] did not queue a request (the buffers come back with the error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    NoDisk,
    /// The queue is full: retry after a completion for this disk.
    Busy,
    Invalid(RequestError),
    /// The device broke the protocol and was stopped.
    Broken,
}

impl core::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SubmitError::NoDisk => f.write_str("no such disk"),
            SubmitError::Busy => f.write_str("the disk's queue is full"),
            SubmitError::Invalid(e) => write!(f, "{e}"),
            SubmitError::Broken => f.write_str("the disk was stopped after a device error"),
        }
    }
}

/// Per-request bytes in the disk's metadata buffer: the header at 0, a discard segment at
/// 16, the status byte at 32.
const META_STRIDE: usize = 64;
const META_DISCARD: usize = 16;
const META_STATUS: usize = 32;

struct Pending {
    token: u64,
    buffers: Vec<DmaBuffer>,
    /// Completed into `Disk::blocking_result` rather than through the callback.
    blocking: bool,
}

struct DiskState {
    transport: Transport,
    notify_at: u64,
    ring: DmaRing,
    queue: SplitQueue,
    /// Per head id: the request in flight.
    slots: Vec<Option<Pending>>,
    /// Headers, discard segments and status bytes, indexed by head id.
    meta: DmaBuffer,
    broken: bool,
}

/// One virtio-blk disk.
pub struct Disk {
    pub name: heapless::String<8>,
    pub bdf: Bdf,
    pub info: DiskInfo,
    pub vector: u8,
    pub queue_size: u16,
    state: IrqMutex<DiskState>,
    /// One blocking request at a time per disk.
    blocking: spin::Mutex<u64>,
    blocking_result: IrqMutex<Option<(u64, Status, Vec<DmaBuffer>)>>,
}

static DISKS: spin::Once<Vec<Disk>> = spin::Once::new();
static COMPLETION: IrqMutex<Option<&'static dyn BlkCompletion>> = IrqMutex::new(None);

/// Registers the completion callback (replacing any earlier one). Completions that come
/// while none is registered are dropped (their buffers freed).
pub fn set_completion_handler(handler: &'static dyn BlkCompletion) {
    *COMPLETION.lock() = Some(handler);
}

/// Every disk, in PCI order (index = [`DiskId`]).
pub fn disks() -> &'static [Disk] {
    DISKS.get().map_or(&[], |d| d.as_slice())
}

pub(super) fn install(disks: Vec<Disk>) {
    DISKS.call_once(|| disks);
}

/// Sets the device at `func` up as disk number `index`, interrupting the local APIC
/// `apic_id`.
pub(super) fn probe(
    cfg: HwConfig,
    func: &Function,
    index: usize,
    apic_id: u32,
) -> Result<Disk, ProbeError> {
    let t = Transport::new(cfg, func)?;
    let features = t.negotiate(blk::WANTED)?;
    let info = t.read_device_config(|d| DiskInfo::read(features, |o| d.read32(o)));
    let vector = irq::alloc_vector(on_interrupt, index).ok_or(ProbeError::NoVector)?;
    t.setup_msix(vector, apic_id)?;
    let size = queue::choose_size(t.queue_max(0)).ok_or(ProbeError::Queue("0"))?;
    let layout = QueueLayout::new(size);
    let ring = DmaRing::new(layout.bytes).ok_or(ProbeError::OutOfMemory)?;
    let q = SplitQueue::new(size, &ring);
    let base = ring.phys();
    let notify_at = t.enable_queue(
        0,
        size,
        base + layout.desc as u64,
        base + layout.avail as u64,
        base + layout.used as u64,
    )?;
    let meta = DmaBuffer::new(size as usize * META_STRIDE).ok_or(ProbeError::OutOfMemory)?;
    t.driver_ok();
    Ok(Disk {
        name: blk::disk_name(index),
        bdf: func.bdf,
        info,
        vector,
        queue_size: size,
        state: IrqMutex::new(DiskState {
            transport: t,
            notify_at,
            ring,
            queue: q,
            slots: (0..size).map(|_| None).collect(),
            meta,
            broken: false,
        }),
        blocking: spin::Mutex::new(0),
        blocking_result: IrqMutex::new(None),
    })
}

/// Queues `op` at `sector` (512-byte units) on `disk`, with data `buffers` (each a whole
/// number of sectors; none for flush and discard). When the device is done,
/// the registered [`BlkCompletion`] gets `token`, the status and the buffers. On error
/// the buffers come back at once.
pub fn submit(
    disk: DiskId,
    op: Op,
    sector: u64,
    buffers: Vec<DmaBuffer>,
    token: u64,
) -> Result<(), (SubmitError, Vec<DmaBuffer>)> {
    submit_inner(disk, op, sector, buffers, token, false)
}

fn submit_inner(
    disk: DiskId,
    op: Op,
    sector: u64,
    mut buffers: Vec<DmaBuffer>,
    token: u64,
    blocking: bool,
) -> Result<(), (SubmitError, Vec<DmaBuffer>)> {
    let Some(d) = disks().get(disk) else {
        return Err((SubmitError::NoDisk, buffers));
    };
    let lens: Vec<u32> = buffers.iter().map(|b| b.len() as u32).collect();
    if let Err(e) = blk::check(&d.info, op, sector, &lens) {
        return Err((SubmitError::Invalid(e), buffers));
    }
    let mut segments: Vec<Segment> = Vec::with_capacity(buffers.len() + 3);
    let mut st = d.state.lock();
    if st.broken {
        return Err((SubmitError::Broken, buffers));
    }
    let extra = if matches!(op, Op::Discard { .. }) {
        3
    } else {
        2
    };
    if buffers.len() + extra > st.queue.size() as usize {
        return Err((SubmitError::Invalid(RequestError::BadBuffers), buffers));
    }
    let Some(head) = st
        .queue
        .next_head()
        .filter(|_| st.queue.free() as usize >= buffers.len() + extra)
    else {
        return Err((SubmitError::Busy, buffers));
    };
    let m = head as usize * META_STRIDE;
    let meta_phys = st.meta.phys() + m as u64;
    {
        let meta = &mut st.meta.as_mut_slice()[m..m + META_STRIDE];
        meta[..blk::HEADER_LEN].copy_from_slice(&blk::header(op, sector));
        if let Op::Discard { sectors } = op {
            meta[META_DISCARD..META_DISCARD + blk::DISCARD_SEGMENT_LEN]
                .copy_from_slice(&blk::discard_segment(sector, sectors));
        }
        // Not a status the device writes: a used entry that leaves it is a device error.
        meta[META_STATUS] = 0xff;
    }
    segments.push(Segment {
        addr: meta_phys,
        len: blk::HEADER_LEN as u32,
        device_writes: false,
    });
    if let Op::Discard { .. } = op {
        segments.push(Segment {
            addr: meta_phys + META_DISCARD as u64,
            len: blk::DISCARD_SEGMENT_LEN as u32,
            device_writes: false,
        });
    }
    for b in &buffers {
        segments.push(Segment {
            addr: b.phys(),
            len: b.len() as u32,
            device_writes: op == Op::Read,
        });
    }
    segments.push(Segment {
        addr: meta_phys + META_STATUS as u64,
        len: 1,
        device_writes: true,
    });
    let st = &mut *st;
    match st.queue.add(&st.ring, &segments) {
        Ok(h) if h == head => {}
        Ok(_) | Err(AddError::BadChain) => {
            // Cannot happen (checked above); refuse rather than lose track of a chain.
            st.broken = true;
            return Err((SubmitError::Broken, core::mem::take(&mut buffers)));
        }
        Err(AddError::Full) => return Err((SubmitError::Busy, buffers)),
    }
    st.slots[head as usize] = Some(Pending {
        token,
        buffers,
        blocking,
    });
    if st.queue.should_notify(&st.ring) {
        st.transport.notify(st.notify_at, 0);
    }
    Ok(())
}

/// Why a blocking request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockingError {
    Submit(SubmitError),
    /// No completion within the time allowed (the request stays with the device).
    Timeout,
    /// Called with interrupts disabled, or off the boot CPU while it cannot take them:
    /// the completion could never be seen.
    InterruptsOff,
    OutOfMemory,
    /// The device completed the request with this status.
    Failed(Status),
}

impl core::fmt::Display for BlockingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BlockingError::Submit(e) => write!(f, "{e}"),
            BlockingError::Timeout => f.write_str("timed out"),
            BlockingError::InterruptsOff => f.write_str("called with interrupts disabled"),
            BlockingError::OutOfMemory => f.write_str("out of memory"),
            BlockingError::Failed(s) => write!(f, "the device answered {s:?}"),
        }
    }
}

/// How long a blocking request may take.
const BLOCKING_TIMEOUT_NS: u64 = 10_000_000_000;

/// Submits a request and waits for its completion (interrupt-driven: the CPU halts until
/// interrupts arrive), for boot-time use. Must be called with interrupts enabled.
/// Returns the buffers when the device answered OK.
pub fn submit_and_wait(
    disk: DiskId,
    op: Op,
    sector: u64,
    buffers: Vec<DmaBuffer>,
) -> Result<Vec<DmaBuffer>, BlockingError> {
    if !cpu_irq::enabled() {
        return Err(BlockingError::InterruptsOff);
    }
    let Some(d) = disks().get(disk) else {
        return Err(BlockingError::Submit(SubmitError::NoDisk));
    };
    let mut serial = d.blocking.lock();
    *serial += 1;
    let token = *serial;
    submit_inner(disk, op, sector, buffers, token, true)
        .map_err(|(e, _)| BlockingError::Submit(e))?;
    let deadline = clock::now_ns() + BLOCKING_TIMEOUT_NS;
    let on_boot_cpu = percpu::try_cpu() == Some(0);
    loop {
        // Interrupts off between the check and the halt, so a completion in between
        // cannot be missed until the next tick (`enable_and_wait` is `sti; hlt`).
        cpu_irq::disable();
        let done = {
            let mut r = d.blocking_result.lock();
            match r.take() {
                Some((t, status, bufs)) if t == token => Some((status, bufs)),
                // A late answer to an earlier, timed-out request: its buffers are free.
                Some(_) | None => None,
            }
        };
        if let Some((status, bufs)) = done {
            cpu_irq::enable();
            return match status {
                Status::Ok => Ok(bufs),
                s => Err(BlockingError::Failed(s)),
            };
        }
        if clock::now_ns() > deadline {
            cpu_irq::enable();
            return Err(BlockingError::Timeout);
        }
        if on_boot_cpu {
            cpu_irq::enable_and_wait();
        } else {
            cpu_irq::enable();
            core::hint::spin_loop();
        }
    }
}

/// Reads `count` sectors from `sector` on, blocking (boot time: the partition scan).
pub fn read_sectors(disk: DiskId, sector: u64, count: u32) -> Result<Vec<u8>, BlockingError> {
    let len = count as usize * blk::SECTOR as usize;
    let buf = DmaBuffer::new(len).ok_or(BlockingError::OutOfMemory)?;
    let bufs = submit_and_wait(disk, Op::Read, sector, alloc::vec![buf])?;
    Ok(bufs
        .first()
        .map_or_else(Vec::new, |b| b.as_slice().to_vec()))
}

/// The disk's interrupt: takes every completed request (a batch at a time, under the
/// lock), then, with the lock released, hands each to its receiver.
fn on_interrupt(disk: usize) {
    let Some(d) = disks().get(disk) else {
        return;
    };
    loop {
        let mut done: heapless::Vec<(Pending, Status), 16> = heapless::Vec::new();
        {
            let mut guard = d.state.lock();
            let st = &mut *guard;
            if st.broken {
                // Whatever was in flight when the device was stopped fails.
                for slot in st.slots.iter_mut() {
                    if done.is_full() {
                        break;
                    }
                    if let Some(p) = slot.take() {
                        let _ = done.push((p, Status::DeviceError));
                    }
                }
            }
            while !st.broken && !done.is_full() {
                match st.queue.pop_used(&st.ring) {
                    Ok(Some(u)) => {
                        let Some(p) = st.slots.get_mut(u.id as usize).and_then(Option::take) else {
                            continue;
                        };
                        let byte = st.meta.as_slice()[u.id as usize * META_STRIDE + META_STATUS];
                        let _ = done.push((p, Status::from_device(byte, u.len)));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        log::error!("virtio-blk {}: {e}; the disk is stopped", d.name);
                        stop(st);
                        break;
                    }
                }
            }
        }
        if done.is_empty() {
            return;
        }
        let handler = *COMPLETION.lock();
        for (p, status) in done {
            if p.blocking {
                *d.blocking_result.lock() = Some((p.token, status, p.buffers));
            } else if let Some(h) = handler {
                h.complete(disk, p.token, status, p.buffers);
            }
        }
    }
}

/// Stops a device that broke the rules: a reset makes it drop the queue (so its buffers
/// may be handed back); if the reset does not finish, the buffers are leaked instead.
fn stop(st: &mut DiskState) {
    st.broken = true;
    if st.transport.reset().is_err() {
        st.transport.fail();
        for p in st.slots.iter_mut().filter_map(Option::as_mut) {
            for b in p.buffers.drain(..) {
                b.leak();
            }
        }
    }
}

/// The device's size in bytes, as the log shows it.
pub fn size_text(info: &DiskInfo) -> alloc::string::String {
    let b = info.bytes();
    if b >= 1 << 20 {
        alloc::format!("{} MiB", b >> 20)
    } else {
        alloc::format!("{} KiB", b >> 10)
    }
}
