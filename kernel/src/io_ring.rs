//! The backend's side of an `io/ring.h` shared ring, over memory the frontend can change
//! at any moment.
//!
//! The rules carried over from the header:
//! - indices are free-running `u32`s; the entry of index `i` is `i & (size - 1)`;
//! - the frontend owns `req_prod` and `rsp_event`, the backend `rsp_prod` and
//!   `req_event`; the backend's own consumer index and private response producer never
//!   live in shared memory, so the frontend cannot move them;
//! - after publishing a producer index (a full barrier first), the other end is notified
//!   iff `new - event < new - old` (u32 arithmetic);
//! - before going idle the backend sets `req_event = req_cons + 1`, barriers, and looks
//!   again (`RING_FINAL_CHECK_FOR_REQUESTS`).
//!
//! What the frontend can break, and what happens: a `req_prod` more than one ring ahead
//! of what the backend has answered is [`RingError::Overflow`] (the device is closed,
//! nothing is read); every request is copied out of the ring before anyone looks at it.

/// The shared memory of one ring (one or several pages, contiguous in the frontend's
/// view): the binary implements it over the frames it holds, tests over a `Vec`.
/// Offsets are from the start of the first page; an entry may straddle two pages.
pub trait RingMemory {
    /// Bytes of shared memory (the header plus the entries).
    fn len(&self) -> usize;
    /// No memory at all (never a usable ring).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn load_acquire_u32(&self, offset: usize) -> u32;
    fn store_release_u32(&mut self, offset: usize, value: u32);
    /// Copies `buf.len()` bytes out from `offset` (`offset + buf.len() <= len()`).
    fn read(&self, offset: usize, buf: &mut [u8]);
    /// Copies `data` in at `offset` (`offset + data.len() <= len()`).
    fn write(&mut self, offset: usize, data: &[u8]);
    /// A full memory barrier (`mb()`), ordering stores before later loads.
    fn full_barrier(&self);
}

use ferrovisor_abi::xen::io::ring::{
    ring_size, REQ_EVENT, REQ_PROD, RING_ENTRIES_OFFSET, RSP_EVENT, RSP_PROD,
};

/// What a frontend did to its ring that the protocol does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// `req_prod` claims more unanswered requests than the ring holds.
    Overflow { req_prod: u32, req_cons: u32 },
}

/// The backend's private state for one ring.
#[derive(Clone, Debug)]
pub struct BackRing {
    size: u32,
    entry: usize,
    req_cons: u32,
    rsp_prod_pvt: u32,
    /// `rsp_prod` as last published.
    rsp_published: u32,
}

impl BackRing {
    /// A ring of `bytes` (its pages) whose entries are `entry_size` bytes, as the frontend
    /// initialised it (`SHARED_RING_INIT` zeroes the indices; a backend attaching to a
    /// ring starts from what the frontend wrote, which must be all zero indices here:
    /// the frontends of this protocol always hand over fresh rings). `None` if no entry
    /// fits.
    pub fn new(bytes: usize, entry_size: usize) -> Option<Self> {
        let size = ring_size(bytes, entry_size);
        (size > 0).then_some(BackRing {
            size,
            entry: entry_size,
            req_cons: 0,
            rsp_prod_pvt: 0,
            rsp_published: 0,
        })
    }

    /// Entries in the ring.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The next request index the backend will consume.
    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }

    /// The private response producer: the next response's index.
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    fn offset(&self, index: u32) -> usize {
        RING_ENTRIES_OFFSET + (index & (self.size - 1)) as usize * self.entry
    }

    /// Requests published and not yet consumed, checked against the ring's capacity:
    /// requests consumed but not yet answered still occupy their slots.
    pub fn unconsumed(&self, mem: &impl RingMemory) -> Result<u32, RingError> {
        let req_prod = mem.load_acquire_u32(REQ_PROD);
        let pending = req_prod.wrapping_sub(self.req_cons);
        let in_flight = self.req_cons.wrapping_sub(self.rsp_prod_pvt);
        if pending > self.size - in_flight.min(self.size) {
            return Err(RingError::Overflow {
                req_prod,
                req_cons: self.req_cons,
            });
        }
        Ok(pending)
    }

    /// Copies the next request out into `buf` (the entry's first `buf.len()` bytes) and
    /// consumes it; `Ok(false)` when there is none.
    pub fn take_request(
        &mut self,
        mem: &impl RingMemory,
        buf: &mut [u8],
    ) -> Result<bool, RingError> {
        debug_assert!(buf.len() <= self.entry);
        if self.unconsumed(mem)? == 0 {
            return Ok(false);
        }
        let off = self.offset(self.req_cons);
        if off + buf.len() > mem.len() {
            // Cannot happen with `new`'s size; refuse rather than read past the ring.
            return Ok(false);
        }
        mem.read(off, buf);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(true)
    }

    /// Requests consumed and not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Writes a response into the next response slot (private until [`Self::publish`]).
    /// Returns false (and writes nothing) if every consumed request is answered already.
    pub fn put_response(&mut self, mem: &mut impl RingMemory, rsp: &[u8]) -> bool {
        debug_assert!(rsp.len() <= self.entry);
        if self.in_flight() == 0 {
            return false;
        }
        let off = self.offset(self.rsp_prod_pvt);
        if off + rsp.len() > mem.len() {
            return false;
        }
        mem.write(off, rsp);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        true
    }

    /// Responses written and not yet published. (Responses go out in the order their
    /// requests came in, so the response to request `i` is in slot `i`: what netif's rx
    /// ring requires.)
    pub fn responses_pending(&self) -> u32 {
        self.rsp_prod_pvt.wrapping_sub(self.rsp_published)
    }

    /// Publishes the private responses (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`): true
    /// when the frontend asked to be notified of them.
    pub fn publish(&mut self, mem: &mut impl RingMemory) -> bool {
        let old = self.rsp_published;
        let new = self.rsp_prod_pvt;
        if old == new {
            return false;
        }
        // The responses' bytes before the index that publishes them.
        mem.full_barrier();
        mem.store_release_u32(RSP_PROD, new);
        self.rsp_published = new;
        // The index before reading the event index the frontend may be moving.
        mem.full_barrier();
        let event = mem.load_acquire_u32(RSP_EVENT);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: whether requests are waiting; if none, asks the
    /// frontend to notify at the next one and looks again, so none can slip by.
    pub fn final_check(&mut self, mem: &mut impl RingMemory) -> Result<bool, RingError> {
        if self.unconsumed(mem)? > 0 {
            return Ok(true);
        }
        mem.store_release_u32(REQ_EVENT, self.req_cons.wrapping_add(1));
        mem.full_barrier();
        Ok(self.unconsumed(mem)? > 0)
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;
    use alloc::vec::Vec;

    use super::*;

    struct Mem(Vec<u8>);

    impl RingMemory for Mem {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn load_acquire_u32(&self, o: usize) -> u32 {
            u32::from_le_bytes(self.0[o..o + 4].try_into().unwrap())
        }
        fn store_release_u32(&mut self, o: usize, v: u32) {
            self.0[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }
        fn read(&self, o: usize, buf: &mut [u8]) {
            buf.copy_from_slice(&self.0[o..o + buf.len()]);
        }
        fn write(&mut self, o: usize, d: &[u8]) {
            self.0[o..o + d.len()].copy_from_slice(d);
        }
        fn full_barrier(&self) {}
    }

    impl Mem {
        fn page() -> Self {
            Mem(vec![0; 4096])
        }
        fn u32(&self, o: usize) -> u32 {
            self.load_acquire_u32(o)
        }
        /// The frontend queues a request whose first byte is `tag`.
        fn front_push(&mut self, ring: &BackRing, index: u32, tag: u8) {
            let off = RING_ENTRIES_OFFSET + (index & (ring.size() - 1)) as usize * ring.entry;
            self.0[off] = tag;
            self.store_release_u32(REQ_PROD, index.wrapping_add(1));
        }
    }

    #[test]
    fn requests_come_out_in_order_and_responses_go_back() {
        let mut mem = Mem::page();
        let mut ring = BackRing::new(4096, 112).unwrap();
        assert_eq!(ring.size(), 32);
        for i in 0..3 {
            mem.front_push(&ring, i, 10 + i as u8);
        }
        let mut buf = [0u8; 112];
        for i in 0..3 {
            assert_eq!(ring.take_request(&mem, &mut buf), Ok(true));
            assert_eq!(buf[0], 10 + i as u8);
        }
        assert_eq!(ring.take_request(&mem, &mut buf), Ok(false));
        assert_eq!(ring.in_flight(), 3);
        // The frontend waits for the first response (rsp_event = 1).
        mem.store_release_u32(RSP_EVENT, 1);
        assert!(ring.put_response(&mut mem, &[1; 16]));
        assert!(ring.publish(&mut mem));
        assert_eq!(mem.u32(RSP_PROD), 1);
        // It has not moved rsp_event on: no notification for the next two.
        assert!(ring.put_response(&mut mem, &[2; 16]));
        assert!(ring.put_response(&mut mem, &[3; 16]));
        assert!(!ring.publish(&mut mem));
        assert_eq!(mem.u32(RSP_PROD), 3);
        // Every consumed request is answered: nothing more to respond to.
        assert!(!ring.put_response(&mut mem, &[4; 16]));
        assert_eq!(mem.0[RING_ENTRIES_OFFSET + 2 * 112], 3);
    }

    #[test]
    fn a_producer_beyond_the_ring_is_an_overflow() {
        let mut mem = Mem::page();
        let mut ring = BackRing::new(4096, 112).unwrap();
        mem.store_release_u32(REQ_PROD, 33);
        let mut buf = [0u8; 112];
        assert_eq!(
            ring.take_request(&mem, &mut buf),
            Err(RingError::Overflow {
                req_prod: 33,
                req_cons: 0
            })
        );
        // A full ring is fine, and so is wrapping the u32 indices.
        mem.store_release_u32(REQ_PROD, 32);
        for _ in 0..32 {
            assert_eq!(ring.take_request(&mem, &mut buf), Ok(true));
        }
        // 32 in flight: one more published request overflows what can be answered.
        mem.store_release_u32(REQ_PROD, 33);
        assert!(ring.unconsumed(&mem).is_err());
        // Going backwards is as bad as going too far.
        mem.store_release_u32(REQ_PROD, 5);
        assert!(ring.unconsumed(&mem).is_err());
    }

    #[test]
    fn indices_wrap_around_u32() {
        let mut mem = Mem::page();
        let mut ring = BackRing::new(4096, 8).unwrap();
        ring.req_cons = u32::MAX - 1;
        ring.rsp_prod_pvt = u32::MAX - 1;
        ring.rsp_published = u32::MAX - 1;
        // The frontend waits for the response at index MAX - 1 (rsp_event = rsp_cons + 1).
        mem.store_release_u32(RSP_EVENT, u32::MAX);
        mem.front_push(&ring, u32::MAX - 1, 1);
        mem.front_push(&ring, u32::MAX, 2);
        mem.front_push(&ring, 0, 3);
        let mut buf = [0u8; 8];
        let mut seen = Vec::new();
        while ring.take_request(&mem, &mut buf).unwrap() {
            seen.push(buf[0]);
            assert!(ring.put_response(&mut mem, &buf));
        }
        assert_eq!(seen, [1, 2, 3]);
        assert!(ring.publish(&mut mem));
        assert_eq!(mem.u32(RSP_PROD), 1);
    }

    #[test]
    fn the_final_check_sets_the_event_index() {
        let mut mem = Mem::page();
        let mut ring = BackRing::new(4096, 12).unwrap();
        assert_eq!(ring.final_check(&mut mem), Ok(false));
        assert_eq!(mem.u32(REQ_EVENT), 1);
        mem.front_push(&ring, 0, 7);
        assert_eq!(ring.final_check(&mut mem), Ok(true));
    }

    #[test]
    fn entries_may_straddle_pages_of_a_multi_page_ring() {
        let mut mem = Mem(vec![0; 4 * 4096]);
        let mut ring = BackRing::new(4 * 4096, 112).unwrap();
        assert_eq!(ring.size(), 128);
        // Entry 72 runs from 64 + 72 * 112 = 8128 to 8240, across the second page's end.
        const { assert!(RING_ENTRIES_OFFSET + 72 * 112 < 2 * 4096) };
        const { assert!(RING_ENTRIES_OFFSET + 73 * 112 > 2 * 4096) };
        let mut buf = [0u8; 112];
        for i in 0..80u32 {
            let off = RING_ENTRIES_OFFSET + i as usize * 112;
            mem.0[off + 111] = i as u8;
            mem.front_push(&ring, i, i as u8);
            assert_eq!(ring.take_request(&mem, &mut buf), Ok(true));
            assert_eq!((buf[0], buf[111]), (i as u8, i as u8));
            assert!(ring.put_response(&mut mem, &[0; 16]));
        }
    }
}
