//! The engine against fakes: a ring in a `Vec`, a grant table of pages, and a disk that
//! completes whatever its test says, in any order.

use alloc::{collections::BTreeMap, vec, vec::Vec};

use ferrovisor_abi::xen::io::{
    blkif::{BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect},
    ring::{REQ_PROD, RING_ENTRIES_OFFSET, RSP_EVENT, RSP_PROD},
};
use zerocopy::FromZeros;

use super::*;

const PAGE: usize = 4096;

/// The frontend's ring page, and the frontend's view of it.
struct Ring {
    mem: Vec<u8>,
    req_prod: u32,
    rsp_cons: u32,
}

impl RingMemory for Ring {
    fn len(&self) -> usize {
        self.mem.len()
    }
    fn load_acquire_u32(&self, o: usize) -> u32 {
        u32::from_le_bytes(self.mem[o..o + 4].try_into().unwrap())
    }
    fn store_release_u32(&mut self, o: usize, v: u32) {
        self.mem[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn read(&self, o: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self.mem[o..o + buf.len()]);
    }
    fn write(&mut self, o: usize, d: &[u8]) {
        self.mem[o..o + d.len()].copy_from_slice(d);
    }
    fn full_barrier(&self) {}
}

/// A frontend that rewrites each entry right after the backend copied it out
/// (`RingMemory::read` takes `&self`, hence the cell).
struct Tampering {
    ring: core::cell::RefCell<Ring>,
    tamper: fn(&mut [u8]),
}

impl RingMemory for Tampering {
    fn len(&self) -> usize {
        self.ring.borrow().len()
    }
    fn load_acquire_u32(&self, o: usize) -> u32 {
        self.ring.borrow().load_acquire_u32(o)
    }
    fn store_release_u32(&mut self, o: usize, v: u32) {
        self.ring.get_mut().store_release_u32(o, v)
    }
    fn read(&self, o: usize, buf: &mut [u8]) {
        self.ring.borrow().read(o, buf);
        let mut ring = self.ring.borrow_mut();
        (self.tamper)(&mut ring.mem[o..o + buf.len()]);
    }
    fn write(&mut self, o: usize, d: &[u8]) {
        self.ring.get_mut().write(o, d)
    }
    fn full_barrier(&self) {}
}

impl Ring {
    fn new(pages: usize) -> Self {
        let mut r = Ring {
            mem: vec![0; pages * PAGE],
            req_prod: 0,
            rsp_cons: 0,
        };
        r.store_release_u32(RSP_EVENT, 1);
        r
    }
    fn size(&self) -> u32 {
        ferrovisor_abi::xen::io::ring::ring_size(self.mem.len(), 112)
    }
    fn push_bytes(&mut self, bytes: &[u8]) {
        let off = RING_ENTRIES_OFFSET + (self.req_prod & (self.size() - 1)) as usize * 112;
        self.mem[off..off + 112].fill(0);
        self.mem[off..off + bytes.len()].copy_from_slice(bytes);
        self.req_prod = self.req_prod.wrapping_add(1);
        self.store_release_u32(REQ_PROD, self.req_prod);
    }
    fn push(&mut self, req: &BlkifRequest) {
        self.push_bytes(req.as_bytes());
    }
    /// The responses published since the last call (`RING_FINAL_CHECK_FOR_RESPONSES`
    /// style: rsp_event moves on).
    fn responses(&mut self) -> Vec<BlkifResponse> {
        let prod = self.load_acquire_u32(RSP_PROD);
        let mut out = Vec::new();
        while self.rsp_cons != prod {
            let off = RING_ENTRIES_OFFSET + (self.rsp_cons & (self.size() - 1)) as usize * 112;
            out.push(BlkifResponse::read_from_bytes(&self.mem[off..off + 16]).unwrap());
            self.rsp_cons = self.rsp_cons.wrapping_add(1);
        }
        self.store_release_u32(RSP_EVENT, self.rsp_cons.wrapping_add(1));
        out
    }
}

/// Granted pages; a missing gref is a bad one.
#[derive(Default)]
struct Grants {
    pages: BTreeMap<GrantRef, Vec<u8>>,
}

impl Grants {
    fn grant(&mut self, gref: GrantRef, fill: u8) {
        self.pages.insert(gref, vec![fill; PAGE]);
    }
}

impl GrantCopy for Grants {
    fn copy_in(&mut self, gref: GrantRef, offset: usize, buf: &mut [u8]) -> Result<(), XenErrno> {
        assert!(offset + buf.len() <= PAGE, "a copy crosses the frame");
        let page = self.pages.get(&gref).ok_or(XenErrno::Einval)?;
        buf.copy_from_slice(&page[offset..offset + buf.len()]);
        Ok(())
    }
    fn copy_out(&mut self, gref: GrantRef, offset: usize, data: &[u8]) -> Result<(), XenErrno> {
        assert!(offset + data.len() <= PAGE, "a copy crosses the frame");
        let page = self.pages.get_mut(&gref).ok_or(XenErrno::Einval)?;
        page[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// A disk of `sectors` that holds every I/O until the test completes it.
struct FakeDisk {
    data: Vec<u8>,
    pending: Vec<DiskIo<Vec<u8>>>,
    /// Submissions refused with Busy beyond this many pending.
    room: usize,
    log: Vec<(DiskOp, u64, u64)>,
    alloc_fails: bool,
}

impl FakeDisk {
    fn new(sectors: usize) -> Self {
        FakeDisk {
            data: vec![0; sectors * 512],
            pending: Vec::new(),
            room: usize::MAX,
            log: Vec::new(),
            alloc_fails: false,
        }
    }

    /// Does pending I/O number `i` and returns what `complete` takes.
    fn finish(&mut self, i: usize) -> (u64, Result<(), IoFailed>, Option<Vec<u8>>) {
        let mut io = self.pending.remove(i);
        let range = io.sector as usize * 512..(io.sector + io.sectors) as usize * 512;
        match io.op {
            DiskOp::Read => {
                let buf = io.buffer.as_mut().unwrap();
                let n = range.len();
                buf[..n].copy_from_slice(&self.data[range]);
            }
            DiskOp::Write => {
                let n = range.len();
                self.data[range].copy_from_slice(&io.buffer.as_ref().unwrap()[..n]);
            }
            DiskOp::Discard => self.data[range].fill(0),
            DiskOp::Flush => {}
        }
        (io.token, Ok(()), io.buffer)
    }
}

impl Disk for FakeDisk {
    type Buffer = Vec<u8>;
    fn alloc(&mut self, bytes: usize) -> Option<Vec<u8>> {
        (!self.alloc_fails).then(|| vec![0xee; bytes])
    }
    fn submit(&mut self, io: DiskIo<Vec<u8>>) -> Result<(), SubmitError<Vec<u8>>> {
        if self.pending.len() >= self.room {
            return Err(SubmitError::Busy(io));
        }
        if let Some(b) = &io.buffer {
            assert!(b.len() >= io.sectors as usize * 512);
        }
        self.log.push((io.op, io.sector, io.sectors));
        self.pending.push(io);
        Ok(())
    }
}

const CAPS: DiskCaps = DiskCaps {
    flush: true,
    discard: true,
    sector_size: 512,
    physical_sector_size: 512,
    read_only: false,
};

/// A partition-like target: sectors 1000..1000+2000 of the disk.
const TARGET: Target = Target {
    disk: 0,
    partition: Some(1),
    start: 1000,
    sectors: 2000,
    read_only: false,
};

struct World {
    ring: Ring,
    grants: Grants,
    disk: FakeDisk,
    engine: VbdEngine<FakeDisk>,
}

impl World {
    fn new() -> Self {
        Self::with(TARGET, true, CAPS, Config::default())
    }
    fn with(target: Target, writable: bool, caps: DiskCaps, config: Config) -> Self {
        World {
            ring: Ring::new(1),
            grants: Grants::default(),
            disk: FakeDisk::new(4000),
            engine: VbdEngine::new(PAGE, target, writable, caps, config).unwrap(),
        }
    }
    fn process(&mut self) -> bool {
        self.engine
            .process(&mut self.ring, &mut self.grants, &mut self.disk)
            .unwrap()
    }
    fn finish(&mut self, i: usize) -> bool {
        let (token, result, buf) = self.disk.finish(i);
        self.engine
            .complete(
                token,
                result,
                buf,
                &mut self.ring,
                &mut self.grants,
                &mut self.disk,
            )
            .unwrap()
    }
    fn finish_all(&mut self) {
        while !self.disk.pending.is_empty() {
            self.finish(0);
        }
    }
    /// Queues `req`, serves it to the end and returns the responses.
    fn run(&mut self, req: &BlkifRequest) -> Vec<BlkifResponse> {
        self.ring.push(req);
        self.process();
        self.finish_all();
        self.ring.responses()
    }
}

fn seg(gref: GrantRef, first: u8, last: u8) -> BlkifRequestSegment {
    BlkifRequestSegment {
        gref,
        first_sect: first,
        last_sect: last,
        _cpad: [0; 2],
    }
}

fn req(op: BlkifOp, id: u64, sector: u64, segs: &[BlkifRequestSegment]) -> BlkifRequest {
    let mut r = BlkifRequest::new_zeroed();
    r.operation = op.raw();
    r.id = id;
    r.sector_number = sector;
    r.nr_segments = segs.len() as u8;
    r.seg[..segs.len()].copy_from_slice(segs);
    r
}

fn rsp(id: u64, op: BlkifOp, status: i16) -> BlkifResponse {
    BlkifResponse::new(id, op.raw(), status)
}

#[test]
fn a_write_lands_at_the_target_offset_and_reads_back() {
    let mut w = World::new();
    w.grants.grant(7, 0x11);
    w.grants.grant(8, 0x22);
    // Sectors 2..=7 of frame 7, then 0..=1 of frame 8: eight sectors from guest sector 16.
    let write = req(BlkifOp::Write, 42, 16, &[seg(7, 2, 7), seg(8, 0, 1)]);
    assert_eq!(w.run(&write), [rsp(42, BlkifOp::Write, 0)]);
    assert_eq!(w.disk.log, [(DiskOp::Write, 1016, 8)]);
    let at = |s: usize| w.disk.data[s * 512];
    assert_eq!(
        (at(1015), at(1016), at(1021), at(1022), at(1024)),
        (0, 0x11, 0x11, 0x22, 0)
    );

    // Read them back into fresh frames, at other offsets.
    w.grants.grant(9, 0);
    w.grants.grant(10, 0);
    let read = req(BlkifOp::Read, 43, 16, &[seg(9, 0, 5), seg(10, 6, 7)]);
    assert_eq!(w.run(&read), [rsp(43, BlkifOp::Read, 0)]);
    assert!(w.grants.pages[&9][..6 * 512].iter().all(|&b| b == 0x11));
    assert!(w.grants.pages[&9][6 * 512..].iter().all(|&b| b == 0));
    assert!(w.grants.pages[&10][6 * 512..].iter().all(|&b| b == 0x22));
    assert_eq!(
        w.engine.stats(),
        Stats {
            requests: 2,
            errors: 0
        }
    );
}

#[test]
fn completions_out_of_order_answer_the_right_ids() {
    let mut w = World::new();
    for g in 0..3 {
        w.grants.grant(g, 0);
    }
    for i in 0..3u32 {
        w.ring.push(&req(
            BlkifOp::Read,
            100 + u64::from(i),
            u64::from(i) * 8,
            &[seg(i, 0, 7)],
        ));
    }
    w.disk.data[1008 * 512] = 0x5a; // guest sector 8: request 101's first byte
    assert!(!w.process(), "nothing answered yet");
    assert_eq!(w.engine.in_flight(), 3);
    assert!(w.finish(2)); // request 102 first; the frontend waits on rsp_event 1
    w.finish(1); // 101
    w.finish(0); // 100
    let ids: Vec<u64> = w.ring.responses().iter().map(|r| r.id).collect();
    assert_eq!(ids, [102, 101, 100]);
    assert_eq!(w.grants.pages[&1][0], 0x5a);
    assert_eq!(w.engine.in_flight(), 0);
}

#[test]
fn hostile_requests_get_error_responses() {
    let mut w = World::new();
    w.grants.grant(1, 0);
    let ok = [seg(1, 0, 7)];
    let cases: Vec<(BlkifRequest, i16)> = vec![
        (req(BlkifOp::Read, 1, 0, &[]), -1),
        (
            {
                let mut r = req(BlkifOp::Read, 2, 0, &ok);
                r.nr_segments = 12;
                r
            },
            -1,
        ),
        (req(BlkifOp::Write, 3, 0, &[seg(1, 5, 4)]), -1),
        (req(BlkifOp::Write, 4, 0, &[seg(1, 0, 8)]), -1),
        (req(BlkifOp::Read, 5, u64::MAX - 3, &ok), -1),
        (req(BlkifOp::Read, 6, 1993, &ok), -1), // one sector past the target's end
        (req(BlkifOp::Write, 7, 0, &[seg(99, 0, 7)]), -1), // bad gref
        (req(BlkifOp::WriteBarrier, 8, 0, &ok), -2),
        (req(BlkifOp::Reserved1, 9, 0, &ok), -2),
    ];
    for (r, status) in &cases {
        let got = w.run(r);
        assert_eq!(
            got,
            [BlkifResponse::new(r.id, r.operation, *status)],
            "{r:?}"
        );
    }
    // An unknown operation number is echoed as it came.
    let mut r = req(BlkifOp::Read, 10, 0, &ok);
    r.operation = 0x77;
    assert_eq!(w.run(&r), [BlkifResponse::new(10, 0x77, -2)]);
    // The last sector of the target is fine.
    assert_eq!(
        w.run(&req(BlkifOp::Read, 11, 1992, &ok)),
        [rsp(11, BlkifOp::Read, 0)]
    );
    assert_eq!(w.disk.log, [(DiskOp::Read, 2992, 8)]);
}

#[test]
fn a_grant_revoked_before_the_read_completes_fails_the_read() {
    let mut w = World::new();
    w.grants.grant(1, 0);
    w.ring.push(&req(BlkifOp::Read, 5, 0, &[seg(1, 0, 7)]));
    w.process();
    w.grants.pages.remove(&1);
    w.finish_all();
    assert_eq!(w.ring.responses(), [rsp(5, BlkifOp::Read, -1)]);
}

#[test]
fn a_request_changed_after_it_was_read_is_served_as_read() {
    let mut w = World::new();
    w.grants.grant(1, 0x33);
    w.ring.push(&req(BlkifOp::Write, 77, 8, &[seg(1, 0, 7)]));
    let mut ring = Tampering {
        ring: core::cell::RefCell::new(core::mem::replace(&mut w.ring, Ring::new(1))),
        tamper: |b: &mut [u8]| {
            b[8] ^= 0xff; // the id
            b[16] = 0xf0; // the sector
            b[25] = 0xff; // the first segment's gref
        },
    };
    w.engine
        .process(&mut ring, &mut w.grants, &mut w.disk)
        .unwrap();
    w.ring = ring.ring.into_inner();
    // The ring holds the changed request; the engine acts on what it copied.
    let entry = RING_ENTRIES_OFFSET;
    assert_eq!(w.ring.mem[entry + 16], 0xf0);
    w.finish_all();
    assert_eq!(w.ring.responses(), [rsp(77, BlkifOp::Write, 0)]);
    assert_eq!(w.disk.log, [(DiskOp::Write, 1008, 8)]);
}

#[test]
fn a_read_only_attachment_refuses_writes_and_discards() {
    let mut w = World::with(TARGET, false, CAPS, Config::default());
    w.grants.grant(1, 0);
    let s = [seg(1, 0, 7)];
    assert_eq!(
        w.run(&req(BlkifOp::Write, 1, 0, &s)),
        [rsp(1, BlkifOp::Write, -1)]
    );
    let mut disc = BlkifRequestDiscard::new_zeroed();
    disc.operation = BlkifOp::Discard.raw();
    disc.id = 2;
    disc.nr_sectors = 8;
    w.ring.push_bytes(disc.as_bytes());
    w.process();
    assert_eq!(w.ring.responses(), [rsp(2, BlkifOp::Discard, -1)]);
    // With data, a flush is a write.
    assert_eq!(
        w.run(&req(BlkifOp::FlushDiskcache, 3, 0, &s)),
        [rsp(3, BlkifOp::FlushDiskcache, -1)]
    );
    assert_eq!(
        w.run(&req(BlkifOp::FlushDiskcache, 4, 0, &[])),
        [rsp(4, BlkifOp::FlushDiskcache, 0)]
    );
    assert_eq!(
        w.run(&req(BlkifOp::Read, 5, 0, &s)),
        [rsp(5, BlkifOp::Read, 0)]
    );
    // A read-only disk makes even a `w` attachment read-only.
    let ro = Target {
        read_only: true,
        ..TARGET
    };
    let mut w = World::with(ro, true, CAPS, Config::default());
    w.grants.grant(1, 0);
    assert_eq!(
        w.run(&req(BlkifOp::Write, 6, 0, &s)),
        [rsp(6, BlkifOp::Write, -1)]
    );
}

#[test]
fn discard_goes_to_the_disk_only_when_it_has_it() {
    let mut disc = BlkifRequestDiscard::new_zeroed();
    disc.operation = BlkifOp::Discard.raw();
    disc.id = 9;
    disc.sector_number = 100;
    disc.nr_sectors = 50;
    let mut w = World::new();
    w.ring.push_bytes(disc.as_bytes());
    w.process();
    w.finish_all();
    assert_eq!(w.ring.responses(), [rsp(9, BlkifOp::Discard, 0)]);
    assert_eq!(w.disk.log, [(DiskOp::Discard, 1100, 50)]);
    // Beyond the target.
    disc.nr_sectors = 1901;
    w.ring.push_bytes(disc.as_bytes());
    w.process();
    assert_eq!(w.ring.responses(), [rsp(9, BlkifOp::Discard, -1)]);

    let mut w = World::with(
        TARGET,
        true,
        DiskCaps {
            discard: false,
            ..CAPS
        },
        Config::default(),
    );
    disc.nr_sectors = 8;
    w.ring.push_bytes(disc.as_bytes());
    w.process();
    assert_eq!(w.ring.responses(), [rsp(9, BlkifOp::Discard, -2)]);
    assert!(w.disk.log.is_empty());
}

#[test]
fn a_flush_with_data_writes_then_flushes() {
    let mut w = World::new();
    w.grants.grant(1, 0x44);
    assert_eq!(
        w.run(&req(BlkifOp::FlushDiskcache, 1, 8, &[seg(1, 0, 7)])),
        [rsp(1, BlkifOp::FlushDiskcache, 0)]
    );
    assert_eq!(
        w.disk.log,
        [(DiskOp::Write, 1008, 8), (DiskOp::Flush, 0, 0)]
    );
    assert_eq!(w.disk.data[1008 * 512], 0x44);
    assert_eq!(
        w.run(&req(BlkifOp::FlushDiskcache, 2, 0, &[])),
        [rsp(2, BlkifOp::FlushDiskcache, 0)]
    );
    assert_eq!(w.disk.log.last(), Some(&(DiskOp::Flush, 0, 0)));

    // A write-through disk: nothing to flush.
    let mut w = World::with(
        TARGET,
        true,
        DiskCaps {
            flush: false,
            ..CAPS
        },
        Config::default(),
    );
    w.grants.grant(1, 0x44);
    assert_eq!(
        w.run(&req(BlkifOp::FlushDiskcache, 3, 0, &[])),
        [rsp(3, BlkifOp::FlushDiskcache, 0)]
    );
    assert_eq!(
        w.run(&req(BlkifOp::FlushDiskcache, 4, 0, &[seg(1, 0, 0)])),
        [rsp(4, BlkifOp::FlushDiskcache, 0)]
    );
    assert_eq!(w.disk.log, [(DiskOp::Write, 1000, 1)]);
}

fn indirect(id: u64, op: BlkifOp, sector: u64, n: u16, grefs: &[GrantRef]) -> BlkifRequestIndirect {
    let mut r = BlkifRequestIndirect::new_zeroed();
    r.operation = BlkifOp::Indirect.raw();
    r.indirect_op = op.raw();
    r.id = id;
    r.sector_number = sector;
    r.nr_segments = n;
    r.indirect_grefs[..grefs.len()].copy_from_slice(grefs);
    r
}

/// Puts `segs` into indirect pages granted as 1000, 1001, ...
fn indirect_pages(grants: &mut Grants, segs: &[BlkifRequestSegment]) -> Vec<GrantRef> {
    let mut grefs = Vec::new();
    for (i, chunk) in segs.chunks(512).enumerate() {
        let gref = 1000 + i as GrantRef;
        let mut page = vec![0u8; PAGE];
        for (j, s) in chunk.iter().enumerate() {
            page[j * 8..j * 8 + 8].copy_from_slice(s.as_bytes());
        }
        grants.pages.insert(gref, page);
        grefs.push(gref);
    }
    grefs
}

#[test]
fn indirect_requests_span_several_pages() {
    let config = Config {
        max_indirect_segments: 600,
        max_in_flight: 32,
    };
    let mut w = World::with(
        Target {
            sectors: 4000 - 1000,
            ..TARGET
        },
        true,
        CAPS,
        config,
    );
    // 600 one-sector segments, each in its own frame.
    let segs: Vec<_> = (0..600).map(|i| seg(i, 3, 3)).collect();
    for i in 0..600 {
        w.grants.grant(i, i as u8);
    }
    let grefs = indirect_pages(&mut w.grants, &segs);
    assert_eq!(grefs.len(), 2);
    w.ring
        .push_bytes(indirect(5, BlkifOp::Write, 0, 600, &grefs).as_bytes());
    w.process();
    w.finish_all();
    // The response's operation is the indirect_op.
    assert_eq!(w.ring.responses(), [rsp(5, BlkifOp::Write, 0)]);
    assert_eq!(w.disk.log, [(DiskOp::Write, 1000, 600)]);
    assert_eq!(w.disk.data[(1000 + 599) * 512], 599u32 as u8);

    // Too many segments, a bad indirect_op, a bad indirect gref.
    let too_many: Vec<_> = (0..601).map(|i| seg(i % 600, 3, 3)).collect();
    let grefs2 = indirect_pages(&mut w.grants, &too_many);
    w.ring
        .push_bytes(indirect(6, BlkifOp::Read, 0, 601, &grefs2).as_bytes());
    w.ring
        .push_bytes(indirect(7, BlkifOp::Discard, 0, 10, &grefs2).as_bytes());
    w.ring
        .push_bytes(indirect(8, BlkifOp::Read, 0, 10, &[4242]).as_bytes());
    w.ring
        .push_bytes(indirect(9, BlkifOp::Read, 0, 0, &grefs2).as_bytes());
    w.process();
    assert_eq!(
        w.ring.responses(),
        [
            rsp(6, BlkifOp::Read, -1),
            rsp(7, BlkifOp::Discard, -1),
            rsp(8, BlkifOp::Read, -1),
            rsp(9, BlkifOp::Read, -1)
        ]
    );
}

#[test]
fn indirect_segments_are_checked_like_direct_ones() {
    let mut w = World::new();
    w.grants.grant(1, 0);
    let grefs = indirect_pages(&mut w.grants, &[seg(1, 0, 7), seg(1, 6, 8)]);
    w.ring
        .push_bytes(indirect(1, BlkifOp::Read, 0, 2, &grefs).as_bytes());
    w.process();
    assert_eq!(w.ring.responses(), [rsp(1, BlkifOp::Read, -1)]);
    assert!(w.disk.log.is_empty());
    // Without indirect support advertised, none is served.
    let mut w = World::with(
        TARGET,
        true,
        CAPS,
        Config {
            max_indirect_segments: 0,
            max_in_flight: 32,
        },
    );
    let grefs = indirect_pages(&mut w.grants, &[seg(1, 0, 7)]);
    w.grants.grant(1, 0);
    w.ring
        .push_bytes(indirect(2, BlkifOp::Read, 0, 1, &grefs).as_bytes());
    w.process();
    assert_eq!(w.ring.responses(), [rsp(2, BlkifOp::Read, -1)]);
}

#[test]
fn a_busy_disk_gets_the_io_again_in_order() {
    let mut w = World::new();
    w.disk.room = 1;
    for g in 0..3 {
        w.grants.grant(g, g as u8 + 1);
    }
    for i in 0..3u32 {
        w.ring.push(&req(
            BlkifOp::Write,
            u64::from(i),
            8 * u64::from(i),
            &[seg(i, 0, 7)],
        ));
    }
    w.process();
    assert_eq!(w.disk.pending.len(), 1);
    assert_eq!(w.engine.in_flight(), 3);
    w.finish(0);
    assert_eq!(w.disk.log.len(), 2);
    w.finish_all();
    assert_eq!(
        w.disk.log.iter().map(|l| l.1).collect::<Vec<_>>(),
        [1000, 1008, 1016]
    );
    assert_eq!(w.ring.responses().len(), 3);
}

#[test]
fn in_flight_requests_are_bounded() {
    let mut w = World::with(
        TARGET,
        true,
        CAPS,
        Config {
            max_indirect_segments: 32,
            max_in_flight: 2,
        },
    );
    w.grants.grant(1, 0);
    for i in 0..5 {
        w.ring.push(&req(BlkifOp::Read, i, 0, &[seg(1, 0, 0)]));
    }
    w.process();
    assert_eq!(w.disk.pending.len(), 2);
    w.finish(0);
    assert_eq!(w.disk.pending.len(), 2);
    w.finish_all();
    assert_eq!(w.ring.responses().len(), 5);
}

#[test]
fn many_requests_wrap_the_ring_slots() {
    let mut w = World::new();
    w.grants.grant(1, 0);
    let mut answered = 0;
    for round in 0..10u64 {
        for i in 0..20 {
            w.ring
                .push(&req(BlkifOp::Read, round * 100 + i, i, &[seg(1, 0, 0)]));
        }
        w.process();
        w.finish_all();
        let got = w.ring.responses();
        assert!(got.iter().all(|r| r.status == 0));
        answered += got.len();
    }
    assert_eq!(answered, 200);
}

#[test]
fn an_overflowing_ring_breaks_the_device_and_nothing_else() {
    let mut w = World::new();
    w.grants.grant(1, 0);
    w.ring.push(&req(BlkifOp::Read, 1, 0, &[seg(1, 0, 0)]));
    w.process();
    // The frontend claims 40 more requests: more than the ring holds.
    w.ring.store_release_u32(REQ_PROD, 41);
    let before = w.ring.mem.clone();
    let err = w.engine.process(&mut w.ring, &mut w.grants, &mut w.disk);
    assert!(matches!(err, Err(Fault::Ring(RingError::Overflow { .. }))));
    assert_eq!(w.ring.mem, before, "the ring was written");
    // The read in flight completes into nothing.
    let (token, result, buf) = w.disk.finish(0);
    assert!(w
        .engine
        .complete(token, result, buf, &mut w.ring, &mut w.grants, &mut w.disk)
        .is_err());
    assert_eq!(w.ring.mem, before);
    assert_eq!(w.engine.fault(), err.err());
}

#[test]
fn after_a_disconnect_late_completions_are_dropped() {
    let mut w = World::new();
    w.grants.grant(1, 0);
    w.ring.push(&req(BlkifOp::Read, 1, 0, &[seg(1, 0, 7)]));
    w.process();
    w.engine.disconnect();
    assert_eq!(w.engine.in_flight(), 0);
    let before = w.ring.mem.clone();
    assert!(!w.finish(0));
    assert_eq!(w.ring.mem, before);
    assert!(w.grants.pages[&1].iter().all(|&b| b == 0));
    // A token that was never ours is ignored too.
    assert_eq!(
        w.engine
            .complete(12345, Ok(()), None, &mut w.ring, &mut w.grants, &mut w.disk),
        Ok(false)
    );
}

#[test]
fn large_sector_disks_take_whole_sectors_only() {
    let mut w = World::with(
        Target {
            start: 1024,
            ..TARGET
        },
        true,
        DiskCaps {
            sector_size: 4096,
            ..CAPS
        },
        Config::default(),
    );
    w.grants.grant(1, 0);
    assert_eq!(
        w.run(&req(BlkifOp::Read, 1, 8, &[seg(1, 0, 7)])),
        [rsp(1, BlkifOp::Read, 0)]
    );
    assert_eq!(
        w.run(&req(BlkifOp::Read, 2, 4, &[seg(1, 0, 7)])),
        [rsp(2, BlkifOp::Read, -1)]
    );
    assert_eq!(
        w.run(&req(BlkifOp::Read, 3, 8, &[seg(1, 0, 3)])),
        [rsp(3, BlkifOp::Read, -1)]
    );
}

#[test]
fn out_of_memory_fails_the_request() {
    let mut w = World::new();
    w.grants.grant(1, 0);
    w.disk.alloc_fails = true;
    assert_eq!(
        w.run(&req(BlkifOp::Read, 1, 0, &[seg(1, 0, 7)])),
        [rsp(1, BlkifOp::Read, -1)]
    );
}

#[test]
fn the_frontend_is_notified_only_when_it_asked() {
    let mut w = World::new();
    w.grants.grant(1, 0);
    w.ring.push(&req(BlkifOp::Read, 1, 0, &[seg(1, 0, 0)]));
    w.ring.push(&req(BlkifOp::Read, 2, 0, &[seg(1, 0, 0)]));
    w.process();
    // rsp_event is 1: the first response notifies, the second does not.
    assert!(w.finish(0));
    assert!(!w.finish(0));
    assert_eq!(w.ring.responses().len(), 2);
    // The final check asked for a kick at the next request.
    assert_eq!(
        w.ring
            .load_acquire_u32(ferrovisor_abi::xen::io::ring::REQ_EVENT),
        3
    );
}
