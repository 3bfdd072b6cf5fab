//! The vbd backend engine for one device: takes requests off the frontend's ring, checks
//! them, moves data between the frontend's granted pages and bounce buffers in hypervisor
//! memory, submits disk I/O, and answers.
//!
//! Rules (`io/blkif.h`, and what Linux 6.1's blkfront expects of a backend):
//! - every request is copied out of the ring (and an indirect request's segment pages
//!   out of their grants) once, then validated, then used: a frontend changing them
//!   afterwards changes nothing here;
//! - a response repeats the request's `id` and `operation` (for INDIRECT its
//!   `indirect_op`; blkfront marks the disk broken otherwise) with status 0 (OK), -1
//!   (error) or -2 (not supported: WRITE_BARRIER, DISCARD on a disk without it, unknown
//!   operations, as blkback answers them);
//! - a READ or WRITE has 1..=11 segments (INDIRECT: up to the advertised maximum), each
//!   `first_sect <= last_sect <= 7` of a 4 KiB frame, covering consecutive sectors from
//!   `sector_number`; the whole range must lie inside the target, and be whole sectors of
//!   the disk's `sector-size`;
//! - FLUSH_DISKCACHE with segments is a write followed by a flush, without them a flush
//!   (on a disk without a volatile cache a flush has nothing to do and succeeds);
//! - WRITE data is grant-copied into the bounce buffer before the disk sees it; READ
//!   data is copied out when the disk completes, and a grant gone bad by then makes the
//!   response an error;
//! - the disk may say Busy: the I/O waits in order and is retried when anything
//!   completes (call [`VbdEngine::process`] after completions on a shared disk);
//! - a ring overflow ([`RingError`]) breaks the device: nothing more is read or written,
//!   and the caller closes it;
//! - [`VbdEngine::disconnect`] forgets every request; their bounce buffers belong to the
//!   disk until it completes them, and those late completions are dropped (the token's
//!   generation no longer matches), so nothing reaches a ring that is gone.

use alloc::{collections::VecDeque, vec, vec::Vec};

use ferrovisor_abi::{
    errno::XenErrno,
    xen::{
        grant_table::GrantRef,
        io::blkif::{
            BlkifOp, BlkifRequestSegment, BlkifResponse, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
            BLKIF_MAX_SECTOR_IN_FRAME, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_RING_ENTRY_BYTES,
            BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, BLKIF_SECTOR_BYTES,
            BLKIF_SEGS_PER_INDIRECT_FRAME,
        },
    },
};
use zerocopy::{FromBytes, IntoBytes};

use crate::{
    io_ring::{BackRing, RingError, RingMemory},
    storage::target::Target,
};

/// Grant copies between hypervisor memory and the frontend's granted frames (the
/// binary does them with the grant table's copy machinery, `GNTTABOP_copy`-style). The
/// range `offset .. offset + len` always lies inside the 4 KiB frame.
pub trait GrantCopy {
    /// Copies from the frontend's frame `gref` at `offset` into `buf`.
    fn copy_in(&mut self, gref: GrantRef, offset: usize, buf: &mut [u8]) -> Result<(), XenErrno>;
    /// Copies `data` into the frontend's frame `gref` at `offset` (a writable grant).
    fn copy_out(&mut self, gref: GrantRef, offset: usize, data: &[u8]) -> Result<(), XenErrno>;
}

/// A disk operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskOp {
    Read,
    Write,
    Flush,
    Discard,
}

/// One disk I/O. Sectors are 512-byte units on the whole disk (the target's offset is
/// applied already); `buffer` holds `sectors * 512` bytes for reads and writes.
#[derive(Debug)]
pub struct DiskIo<B> {
    pub op: DiskOp,
    pub sector: u64,
    pub sectors: u64,
    pub buffer: Option<B>,
    /// Passed back to [`VbdEngine::complete`].
    pub token: u64,
}

/// Why the disk did not take an I/O; it hands the I/O back.
#[derive(Debug)]
pub enum SubmitError<B> {
    /// No room now: the engine retries it later.
    Busy(DiskIo<B>),
    /// It cannot be done: the request fails.
    Failed(DiskIo<B>),
}

/// What the disk can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskCaps {
    /// A volatile write cache that flushes empty (virtio's `VIRTIO_BLK_F_FLUSH`).
    pub flush: bool,
    pub discard: bool,
    /// Logical block size in bytes (a multiple of 512).
    pub sector_size: u32,
    pub physical_sector_size: u32,
    pub read_only: bool,
}

/// The disk side the engine drives; completions come back through
/// [`VbdEngine::complete`].
pub trait Disk {
    /// A bounce buffer in hypervisor memory the disk can do I/O to.
    type Buffer: AsRef<[u8]> + AsMut<[u8]>;
    /// A buffer of at least `bytes`, or `None` when memory is short (the request then
    /// fails with an error response).
    fn alloc(&mut self, bytes: usize) -> Option<Self::Buffer>;
    fn submit(&mut self, io: DiskIo<Self::Buffer>) -> Result<(), SubmitError<Self::Buffer>>;
}

/// A disk I/O that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoFailed;

/// Limits of one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Written as `feature-max-indirect-segments` (values ≤ 11 disable indirect requests);
    /// at most 8 × 512.
    pub max_indirect_segments: u16,
    /// Requests taken off the ring and not yet answered (at most the ring's size).
    pub max_in_flight: usize,
}

impl Default for Config {
    fn default() -> Self {
        // 32 segments (128 KiB) is what blkfront uses by default; 32 in flight is one
        // page's ring.
        Config {
            max_indirect_segments: 32,
            max_in_flight: 32,
        }
    }
}

/// The device must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Ring(RingError),
}

/// Counters for `fv`'s device list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
}

/// A validated segment: where its bytes are in the frontend's frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seg {
    gref: GrantRef,
    offset: usize,
    len: usize,
}

#[derive(Debug)]
enum Kind {
    Read,
    Write,
    /// A FLUSH_DISKCACHE with data: the write, then the flush.
    WriteThenFlush,
    Flush,
    Discard,
}

#[derive(Debug)]
enum Stage<B> {
    /// Waiting for the disk to have room.
    Queued(DiskIo<B>),
    /// The disk has it.
    Submitted,
}

#[derive(Debug)]
struct InFlight<B> {
    id: u64,
    op: u8,
    kind: Kind,
    segs: Vec<Seg>,
    stage: Stage<B>,
}

/// One device's engine. `D` is the disk type (for its buffers).
pub struct VbdEngine<D: Disk> {
    ring: BackRing,
    target: Target,
    writable: bool,
    caps: DiskCaps,
    config: Config,
    slots: Vec<Option<InFlight<D::Buffer>>>,
    /// Slots whose I/O is [`Stage::Queued`], oldest first.
    queued: VecDeque<usize>,
    generation: u32,
    broken: Option<Fault>,
    stats: Stats,
}

impl<D: Disk> core::fmt::Debug for VbdEngine<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VbdEngine")
            .field("target", &self.target)
            .field("in_flight", &self.in_flight())
            .field("broken", &self.broken)
            .finish()
    }
}

/// An early answer to a request that does not reach the disk.
struct Answer(i16);

impl<D: Disk> VbdEngine<D> {
    /// An engine for a ring of `ring_bytes` (4096 << `ring-page-order`) serving `target`
    /// (`writable` when attached `w`/`w!`). `None` if no entry fits the ring.
    pub fn new(
        ring_bytes: usize,
        target: Target,
        writable: bool,
        caps: DiskCaps,
        config: Config,
    ) -> Option<Self> {
        let ring = BackRing::new(ring_bytes, BLKIF_RING_ENTRY_BYTES)?;
        let max_in_flight = config.max_in_flight.clamp(1, ring.size() as usize);
        let max_indirect = config
            .max_indirect_segments
            .min((BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * BLKIF_SEGS_PER_INDIRECT_FRAME) as u16);
        let mut slots = Vec::new();
        slots.resize_with(max_in_flight, || None);
        Some(VbdEngine {
            ring,
            target,
            writable: writable && !target.read_only && !caps.read_only,
            caps,
            config: Config {
                max_indirect_segments: max_indirect,
                max_in_flight,
            },
            slots,
            queued: VecDeque::new(),
            generation: 0,
            broken: None,
            stats: Stats::default(),
        })
    }

    /// Requests taken and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The fault that broke the device, if any.
    pub fn fault(&self) -> Option<Fault> {
        self.broken
    }

    /// Forgets every request (the ring is going away). The disk still owns the buffers of
    /// I/Os it has; their completions are ignored.
    pub fn disconnect(&mut self) {
        for s in self.slots.iter_mut() {
            *s = None;
        }
        self.queued.clear();
        self.generation = self.generation.wrapping_add(1);
    }

    /// Serves the ring: retries queued I/O, takes requests while there is room, answers
    /// what can be answered, does the final check before idling, publishes. Returns
    /// whether to notify the frontend. Call it on the event channel's kick and after
    /// completions on the disk.
    pub fn process(
        &mut self,
        mem: &mut impl RingMemory,
        grants: &mut impl GrantCopy,
        disk: &mut D,
    ) -> Result<bool, Fault> {
        if let Some(f) = self.broken {
            return Err(f);
        }
        self.retry_queued(mem, disk);
        loop {
            while let Some(slot) = self.free_slot() {
                let mut raw = [0u8; BLKIF_RING_ENTRY_BYTES];
                match self.ring.take_request(mem, &mut raw) {
                    Ok(true) => self.start(slot, &raw, mem, grants, disk),
                    Ok(false) => break,
                    Err(e) => return Err(self.fail(e)),
                }
            }
            if self.free_slot().is_none() {
                // A completion will bring us back.
                break;
            }
            match self.ring.final_check(mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(self.ring.publish(mem))
    }

    /// A disk I/O completed: answers its request (copying READ data out first), then
    /// serves the ring again. Returns whether to notify the frontend.
    pub fn complete(
        &mut self,
        token: u64,
        result: Result<(), IoFailed>,
        buffer: Option<D::Buffer>,
        mem: &mut impl RingMemory,
        grants: &mut impl GrantCopy,
        disk: &mut D,
    ) -> Result<bool, Fault> {
        if let Some(f) = self.broken {
            return Err(f);
        }
        let slot = (token & 0xffff_ffff) as usize;
        let current = (token >> 32) as u32 == self.generation
            && matches!(
                self.slots.get(slot),
                Some(Some(InFlight {
                    stage: Stage::Submitted,
                    ..
                }))
            );
        if !current {
            // A request forgotten by `disconnect`, or a token that is not ours.
            return Ok(false);
        }
        let Some(entry) = self.slots[slot].as_mut() else {
            return Ok(false);
        };
        let status = match (&entry.kind, result) {
            (_, Err(IoFailed)) => BLKIF_RSP_ERROR,
            (Kind::Read, Ok(())) => match buffer.as_ref() {
                Some(buf) => copy_out(grants, &entry.segs, buf.as_ref()),
                None => BLKIF_RSP_ERROR,
            },
            (Kind::WriteThenFlush, Ok(())) if self.caps.flush => {
                entry.kind = Kind::Flush;
                let io = DiskIo {
                    op: DiskOp::Flush,
                    sector: 0,
                    sectors: 0,
                    buffer: None,
                    token,
                };
                drop(buffer);
                self.submit(slot, io, mem, disk);
                return self.process(mem, grants, disk);
            }
            _ => BLKIF_RSP_OKAY,
        };
        drop(buffer);
        self.respond(slot, status, mem);
        self.process(mem, grants, disk)
    }

    fn fail(&mut self, e: RingError) -> Fault {
        let f = Fault::Ring(e);
        self.broken = Some(f);
        f
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| s.is_none())
    }

    fn token(&self, slot: usize) -> u64 {
        u64::from(self.generation) << 32 | slot as u64
    }

    /// Writes the response of `slot` (privately: `process` publishes) and frees it.
    fn respond(&mut self, slot: usize, status: i16, mem: &mut impl RingMemory) {
        if let Some(entry) = self.slots.get_mut(slot).and_then(Option::take) {
            self.answer(entry.id, entry.op, status, mem);
        }
    }

    fn answer(&mut self, id: u64, op: u8, status: i16, mem: &mut impl RingMemory) {
        self.stats.requests += 1;
        if status != BLKIF_RSP_OKAY {
            self.stats.errors += 1;
        }
        let rsp = BlkifResponse::new(id, op, status);
        // Every taken request gets exactly one response, so there is always a slot.
        let _ = self.ring.put_response(mem, rsp.as_bytes());
    }

    /// Hands an I/O to the disk, behind any that wait already.
    fn submit(
        &mut self,
        slot: usize,
        io: DiskIo<D::Buffer>,
        mem: &mut impl RingMemory,
        disk: &mut D,
    ) {
        if !self.queued.is_empty() {
            self.queue(slot, io);
            return;
        }
        match disk.submit(io) {
            Ok(()) => self.set_stage(slot, Stage::Submitted),
            Err(SubmitError::Busy(io)) => self.queue(slot, io),
            Err(SubmitError::Failed(_)) => self.respond(slot, BLKIF_RSP_ERROR, mem),
        }
    }

    fn queue(&mut self, slot: usize, io: DiskIo<D::Buffer>) {
        self.set_stage(slot, Stage::Queued(io));
        self.queued.push_back(slot);
    }

    fn set_stage(&mut self, slot: usize, stage: Stage<D::Buffer>) {
        if let Some(Some(entry)) = self.slots.get_mut(slot) {
            entry.stage = stage;
        }
    }

    fn retry_queued(&mut self, mem: &mut impl RingMemory, disk: &mut D) {
        while let Some(&slot) = self.queued.front() {
            let Some(Some(entry)) = self.slots.get_mut(slot) else {
                self.queued.pop_front();
                continue;
            };
            let Stage::Queued(io) = core::mem::replace(&mut entry.stage, Stage::Submitted) else {
                self.queued.pop_front();
                continue;
            };
            match disk.submit(io) {
                Ok(()) => {
                    self.queued.pop_front();
                }
                Err(SubmitError::Busy(io)) => {
                    self.set_stage(slot, Stage::Queued(io));
                    return;
                }
                Err(SubmitError::Failed(_)) => {
                    self.queued.pop_front();
                    self.respond(slot, BLKIF_RSP_ERROR, mem);
                }
            }
        }
    }

    /// Decodes, validates and starts the request copied into `raw`.
    fn start(
        &mut self,
        slot: usize,
        raw: &[u8; BLKIF_RING_ENTRY_BYTES],
        mem: &mut impl RingMemory,
        grants: &mut impl GrantCopy,
        disk: &mut D,
    ) {
        let op = raw[0];
        let id = u64::from_le_bytes(raw[8..16].try_into().unwrap_or([0; 8]));
        let sector_number = u64::from_le_bytes(raw[16..24].try_into().unwrap_or([0; 8]));
        let (rsp_op, planned) = match BlkifOp::from_raw(u64::from(op)) {
            Some(BlkifOp::Read) => (op, self.direct(raw, Kind::Read)),
            Some(BlkifOp::Write) => (op, self.direct(raw, Kind::Write)),
            Some(BlkifOp::FlushDiskcache) if raw[1] == 0 => (op, self.flush()),
            Some(BlkifOp::FlushDiskcache) => (op, self.direct(raw, Kind::WriteThenFlush)),
            Some(BlkifOp::Discard) => (op, self.discard(raw)),
            Some(BlkifOp::Indirect) => (raw[1], self.indirect(raw, grants)),
            Some(BlkifOp::WriteBarrier | BlkifOp::Reserved1) | None => {
                (op, Err(Answer(BLKIF_RSP_EOPNOTSUPP)))
            }
        };
        let (kind, segs) = match planned {
            Ok(p) => p,
            Err(Answer(status)) => return self.answer(id, rsp_op, status, mem),
        };
        let sectors: u64 = match kind {
            Kind::Discard => u64::from_le_bytes(raw[24..32].try_into().unwrap_or([0; 8])),
            _ => segs
                .iter()
                .map(|s| (s.len / BLKIF_SECTOR_BYTES) as u64)
                .sum(),
        };
        // Range, alignment and permission checks common to every kind.
        let disk_sector = match self.check_range(&kind, sector_number, sectors) {
            Ok(s) => s,
            Err(Answer(status)) => return self.answer(id, rsp_op, status, mem),
        };
        let no_disk_work = match kind {
            Kind::Flush => !self.caps.flush,
            Kind::Discard => sectors == 0,
            _ => false,
        };
        if no_disk_work {
            return self.answer(id, rsp_op, BLKIF_RSP_OKAY, mem);
        }
        let bytes = segs.iter().map(|s| s.len).sum::<usize>();
        let mut buffer = None;
        if bytes > 0 {
            let Some(mut buf) = disk.alloc(bytes).filter(|b| b.as_ref().len() >= bytes) else {
                // Short of memory: an error now is better than a queue that may never
                // move.
                return self.answer(id, rsp_op, BLKIF_RSP_ERROR, mem);
            };
            if matches!(kind, Kind::Write | Kind::WriteThenFlush)
                && copy_in(grants, &segs, buf.as_mut()) != BLKIF_RSP_OKAY
            {
                return self.answer(id, rsp_op, BLKIF_RSP_ERROR, mem);
            }
            buffer = Some(buf);
        }
        let disk_op = match kind {
            Kind::Read => DiskOp::Read,
            Kind::Write | Kind::WriteThenFlush => DiskOp::Write,
            Kind::Flush => DiskOp::Flush,
            Kind::Discard => DiskOp::Discard,
        };
        let (io_sector, io_sectors) = match kind {
            Kind::Flush => (0, 0),
            _ => (disk_sector, sectors),
        };
        let io = DiskIo {
            op: disk_op,
            sector: io_sector,
            sectors: io_sectors,
            buffer,
            token: self.token(slot),
        };
        self.slots[slot] = Some(InFlight {
            id,
            op: rsp_op,
            kind,
            segs,
            stage: Stage::Submitted,
        });
        self.submit(slot, io, mem, disk);
    }

    fn check_range(&self, kind: &Kind, sector: u64, sectors: u64) -> Result<u64, Answer> {
        let writes = !matches!(kind, Kind::Read | Kind::Flush);
        if writes && !self.writable {
            return Err(Answer(BLKIF_RSP_ERROR));
        }
        if matches!(kind, Kind::Flush) {
            return Ok(0);
        }
        // A disk with larger sectors takes only whole ones (blkfront, told `sector-size`,
        // sends nothing else).
        let unit = u64::from(self.caps.sector_size / BLKIF_SECTOR_BYTES as u32).max(1);
        if sector % unit != 0 || sectors % unit != 0 {
            return Err(Answer(BLKIF_RSP_ERROR));
        }
        self.target
            .map(sector, sectors)
            .map_err(|_| Answer(BLKIF_RSP_ERROR))
    }

    fn flush(&self) -> Result<(Kind, Vec<Seg>), Answer> {
        Ok((Kind::Flush, Vec::new()))
    }

    fn discard(&self, _raw: &[u8]) -> Result<(Kind, Vec<Seg>), Answer> {
        if !self.caps.discard {
            return Err(Answer(BLKIF_RSP_EOPNOTSUPP));
        }
        // BLKIF_DISCARD_SECURE is ignored: `discard-secure` is never advertised.
        Ok((Kind::Discard, Vec::new()))
    }

    /// A READ, WRITE or FLUSH_DISKCACHE with its segments in the request.
    fn direct(&self, raw: &[u8], kind: Kind) -> Result<(Kind, Vec<Seg>), Answer> {
        let n = usize::from(raw[1]);
        if n == 0 || n > BLKIF_MAX_SEGMENTS_PER_REQUEST {
            return Err(Answer(BLKIF_RSP_ERROR));
        }
        let segs = parse_segments(&raw[24..24 + 8 * n])?;
        Ok((kind, segs))
    }

    /// An INDIRECT request: its segment pages are grant-copied in, then checked.
    fn indirect(
        &self,
        raw: &[u8],
        grants: &mut impl GrantCopy,
    ) -> Result<(Kind, Vec<Seg>), Answer> {
        let kind = match BlkifOp::from_raw(u64::from(raw[1])) {
            Some(BlkifOp::Read) => Kind::Read,
            Some(BlkifOp::Write) => Kind::Write,
            _ => return Err(Answer(BLKIF_RSP_ERROR)),
        };
        let n = usize::from(u16::from_le_bytes([raw[2], raw[3]]));
        if n == 0
            || n > usize::from(self.config.max_indirect_segments)
            || self.config.max_indirect_segments as usize <= BLKIF_MAX_SEGMENTS_PER_REQUEST
        {
            return Err(Answer(BLKIF_RSP_ERROR));
        }
        let mut table = vec![0u8; n * 8];
        for (page, chunk) in table
            .chunks_mut(BLKIF_SEGS_PER_INDIRECT_FRAME * 8)
            .enumerate()
        {
            let off = 28 + 4 * page;
            let gref = u32::from_le_bytes(raw[off..off + 4].try_into().unwrap_or([0; 4]));
            grants
                .copy_in(gref, 0, chunk)
                .map_err(|_| Answer(BLKIF_RSP_ERROR))?;
        }
        let segs = parse_segments(&table)?;
        Ok((kind, segs))
    }
}

/// Checks segments copied out of the ring or an indirect page.
fn parse_segments(bytes: &[u8]) -> Result<Vec<Seg>, Answer> {
    let mut segs = Vec::with_capacity(bytes.len() / 8);
    for chunk in bytes.chunks_exact(8) {
        let s = BlkifRequestSegment::read_from_bytes(chunk).map_err(|_| Answer(BLKIF_RSP_ERROR))?;
        if s.first_sect > s.last_sect || s.last_sect > BLKIF_MAX_SECTOR_IN_FRAME {
            return Err(Answer(BLKIF_RSP_ERROR));
        }
        segs.push(Seg {
            gref: s.gref,
            offset: usize::from(s.first_sect) * BLKIF_SECTOR_BYTES,
            len: usize::from(s.last_sect - s.first_sect + 1) * BLKIF_SECTOR_BYTES,
        });
    }
    Ok(segs)
}

fn copy_in(grants: &mut impl GrantCopy, segs: &[Seg], buf: &mut [u8]) -> i16 {
    let mut pos = 0;
    for s in segs {
        let Some(dst) = buf.get_mut(pos..pos + s.len) else {
            return BLKIF_RSP_ERROR;
        };
        if grants.copy_in(s.gref, s.offset, dst).is_err() {
            return BLKIF_RSP_ERROR;
        }
        pos += s.len;
    }
    BLKIF_RSP_OKAY
}

fn copy_out(grants: &mut impl GrantCopy, segs: &[Seg], buf: &[u8]) -> i16 {
    let mut pos = 0;
    for s in segs {
        let Some(src) = buf.get(pos..pos + s.len) else {
            return BLKIF_RSP_ERROR;
        };
        if grants.copy_out(s.gref, s.offset, src).is_err() {
            return BLKIF_RSP_ERROR;
        }
        pos += s.len;
    }
    BLKIF_RSP_OKAY
}

#[cfg(test)]
mod tests;
