//! The ring rules of the PV console page (`io/console.h`), over [`ConsoleRing`], an
//! abstract view of the shared page.
//!
//! The backend consumes the `out` ring and produces into the `in` ring. Both index pairs
//! live in guest-writable memory, so every value read from the page is checked before it
//! is used: a ring that claims to hold more bytes than it has room for is a protocol error
//! ([`RingError`]), and nothing is read from or written to it.

use ferrovisor_abi::xen::console::{
    mask_in_idx, mask_out_idx, XenconsRingIdx, XENCONS_IN_SIZE, XENCONS_OUT_SIZE,
};

/// Ring sizes as index distances (both are far below 2^32).
const OUT_SIZE_IDX: XenconsRingIdx = XENCONS_OUT_SIZE as XenconsRingIdx;
const IN_SIZE_IDX: XenconsRingIdx = XENCONS_IN_SIZE as XenconsRingIdx;

/// A domain's console page as the backend sees it.
///
/// The hypervisor implements this over its mapping of the guest's page, with the
/// orderings each method names (the guest runs concurrently on other CPUs); the tests
/// with plain cells. Offsets passed to the copy methods are already masked, and
/// `offset + len` never exceeds the ring's size.
pub trait ConsoleRing {
    /// Loads `out_prod` with acquire ordering: the output bytes the guest wrote before
    /// publishing it are visible to the [`Self::read_out`] calls that follow (the guest
    /// writes its bytes, then a write barrier, then `out_prod`).
    fn out_prod(&self) -> XenconsRingIdx;
    /// Loads `out_cons`.
    fn out_cons(&self) -> XenconsRingIdx;
    /// Copies `dst.len()` bytes of `out` starting at `offset`.
    fn read_out(&self, offset: usize, dst: &mut [u8]);
    /// Stores `out_cons` with release ordering: the reads before it are complete before
    /// the guest may reuse the space.
    fn set_out_cons(&self, cons: XenconsRingIdx);

    /// Loads `in_cons` with acquire ordering: the guest has finished reading the bytes
    /// before it, so the backend may overwrite them.
    fn in_cons(&self) -> XenconsRingIdx;
    /// Loads `in_prod`.
    fn in_prod(&self) -> XenconsRingIdx;
    /// Copies `src` into `in` starting at `offset`.
    fn write_in(&self, offset: usize, src: &[u8]);
    /// Stores `in_prod` with release ordering: the bytes written before it are visible
    /// to the guest once it sees the new index.
    fn set_in_prod(&self, prod: XenconsRingIdx);
}

/// A ring whose indexes cannot be right: the guest wrote garbage, or something else
/// scribbled on its page. The backend stops using that ring (as Xen's backends do) until
/// the console is reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// `out_prod - out_cons` exceeds the output ring's size.
    BogusOutput {
        cons: XenconsRingIdx,
        prod: XenconsRingIdx,
    },
    /// `in_prod - in_cons` exceeds the input ring's size.
    BogusInput {
        cons: XenconsRingIdx,
        prod: XenconsRingIdx,
    },
}

/// How many of `len` bytes starting at offset `start` of a ring of `size` bytes lie
/// before the end of the ring; the rest wrap to offset 0.
fn before_wrap(start: usize, len: usize, size: usize) -> usize {
    len.min(size - start)
}

/// Consumes everything the guest has produced in its `out` ring (from `out_cons` to
/// `out_prod`, wrapping): copies it out of the shared page (into a ring-sized stack
/// buffer, so the guest cannot change it under `sink`), advances `out_cons`, then passes
/// it to `sink` as one slice. Returns the number of bytes consumed; when it is non-zero the guest must
/// be notified through the console event channel (it may be waiting for space).
///
/// `out_prod` is read once, so a guest that keeps producing cannot keep the backend here:
/// one call consumes at most one ring's worth.
pub fn drain_output(
    ring: &impl ConsoleRing,
    sink: &mut impl FnMut(&[u8]),
) -> Result<usize, RingError> {
    let cons = ring.out_cons();
    let prod = ring.out_prod();
    let avail = prod.wrapping_sub(cons);
    if avail > OUT_SIZE_IDX {
        return Err(RingError::BogusOutput { cons, prod });
    }
    if avail == 0 {
        return Ok(0);
    }
    // At most XENCONS_OUT_SIZE, so it fits in usize.
    let len = avail as usize;
    let start = mask_out_idx(cons);
    let first = before_wrap(start, len, XENCONS_OUT_SIZE);
    let mut buf = [0u8; XENCONS_OUT_SIZE];
    ring.read_out(start, &mut buf[..first]);
    if first < len {
        ring.read_out(0, &mut buf[first..len]);
    }
    ring.set_out_cons(prod);
    sink(&buf[..len]);
    Ok(len)
}

/// Produces as much of `bytes` as fits into the guest's `in` ring (from `in_prod`,
/// wrapping, up to one ring's worth ahead of `in_cons`), then advances `in_prod`. Returns
/// the number of bytes produced, a prefix of `bytes`; the caller keeps the rest for when
/// the guest has consumed some. When it is non-zero the guest must be notified.
pub fn fill_input(ring: &impl ConsoleRing, bytes: &[u8]) -> Result<usize, RingError> {
    let cons = ring.in_cons();
    let prod = ring.in_prod();
    let used = prod.wrapping_sub(cons);
    if used > IN_SIZE_IDX {
        return Err(RingError::BogusInput { cons, prod });
    }
    // At most XENCONS_IN_SIZE, so it fits in usize.
    let space = (IN_SIZE_IDX - used) as usize;
    let len = bytes.len().min(space);
    if len == 0 {
        return Ok(0);
    }
    let start = mask_in_idx(prod);
    let first = before_wrap(start, len, XENCONS_IN_SIZE);
    ring.write_in(start, &bytes[..first]);
    if first < len {
        ring.write_in(0, &bytes[first..len]);
    }
    // len <= XENCONS_IN_SIZE, so the cast is lossless.
    ring.set_in_prod(prod.wrapping_add(len as XenconsRingIdx));
    Ok(len)
}

#[cfg(test)]
pub(crate) mod tests {
    use core::cell::{Cell, RefCell};

    use super::*;

    /// A console page in plain cells, standing in for the guest's shared page.
    pub(crate) struct FakeRing {
        pub(crate) r#in: RefCell<[u8; XENCONS_IN_SIZE]>,
        pub(crate) out: RefCell<[u8; XENCONS_OUT_SIZE]>,
        pub(crate) in_cons: Cell<u32>,
        pub(crate) in_prod: Cell<u32>,
        pub(crate) out_cons: Cell<u32>,
        pub(crate) out_prod: Cell<u32>,
    }

    impl FakeRing {
        pub(crate) fn new() -> Self {
            FakeRing {
                r#in: RefCell::new([0; XENCONS_IN_SIZE]),
                out: RefCell::new([0; XENCONS_OUT_SIZE]),
                in_cons: Cell::new(0),
                in_prod: Cell::new(0),
                out_cons: Cell::new(0),
                out_prod: Cell::new(0),
            }
        }

        /// Both rings empty at index `idx` (to test wrap-around of offsets and indexes).
        pub(crate) fn at(idx: u32) -> Self {
            let ring = Self::new();
            ring.in_cons.set(idx);
            ring.in_prod.set(idx);
            ring.out_cons.set(idx);
            ring.out_prod.set(idx);
            ring
        }

        /// The guest writes `bytes` to its output ring, as a frontend does (no overflow
        /// check: the tests only write what fits).
        pub(crate) fn guest_write(&self, bytes: &[u8]) {
            let mut prod = self.out_prod.get();
            for &b in bytes {
                self.out.borrow_mut()[mask_out_idx(prod)] = b;
                prod = prod.wrapping_add(1);
            }
            self.out_prod.set(prod);
        }

        /// The guest reads everything in its input ring.
        pub(crate) fn guest_read(&self) -> Vec<u8> {
            let mut cons = self.in_cons.get();
            let mut got = Vec::new();
            while cons != self.in_prod.get() {
                got.push(self.r#in.borrow()[mask_in_idx(cons)]);
                cons = cons.wrapping_add(1);
            }
            self.in_cons.set(cons);
            got
        }
    }

    impl ConsoleRing for FakeRing {
        fn out_prod(&self) -> u32 {
            self.out_prod.get()
        }
        fn out_cons(&self) -> u32 {
            self.out_cons.get()
        }
        fn read_out(&self, offset: usize, dst: &mut [u8]) {
            dst.copy_from_slice(&self.out.borrow()[offset..offset + dst.len()]);
        }
        fn set_out_cons(&self, cons: u32) {
            self.out_cons.set(cons);
        }
        fn in_cons(&self) -> u32 {
            self.in_cons.get()
        }
        fn in_prod(&self) -> u32 {
            self.in_prod.get()
        }
        fn write_in(&self, offset: usize, src: &[u8]) {
            self.r#in.borrow_mut()[offset..offset + src.len()].copy_from_slice(src);
        }
        fn set_in_prod(&self, prod: u32) {
            self.in_prod.set(prod);
        }
    }

    fn drain(ring: &FakeRing) -> Result<Vec<u8>, RingError> {
        let mut got = Vec::new();
        let n = drain_output(ring, &mut |b: &[u8]| got.extend_from_slice(b))?;
        assert_eq!(n, got.len());
        Ok(got)
    }

    #[test]
    fn empty_output_ring_drains_nothing() {
        let ring = FakeRing::new();
        assert_eq!(drain(&ring), Ok(vec![]));
        assert_eq!(ring.out_cons.get(), 0);
    }

    #[test]
    fn drains_output_and_advances_out_cons() {
        let ring = FakeRing::new();
        ring.guest_write(b"hello\n");
        assert_eq!(drain(&ring), Ok(b"hello\n".to_vec()));
        assert_eq!(ring.out_cons.get(), 6);
        assert_eq!(drain(&ring), Ok(vec![]));
        ring.guest_write(b"more");
        assert_eq!(drain(&ring), Ok(b"more".to_vec()));
        assert_eq!(ring.out_cons.get(), 10);
    }

    #[test]
    fn drains_output_across_the_end_of_the_ring() {
        let ring = FakeRing::at(2040);
        ring.guest_write(b"0123456789abcdef");
        assert_eq!(drain(&ring), Ok(b"0123456789abcdef".to_vec()));
        assert_eq!(ring.out_cons.get(), 2056);
    }

    #[test]
    fn drains_output_across_index_wrap_at_2_pow_32() {
        let ring = FakeRing::at(u32::MAX - 3);
        ring.guest_write(b"wrapping");
        assert_eq!(ring.out_prod.get(), 4);
        assert_eq!(drain(&ring), Ok(b"wrapping".to_vec()));
        assert_eq!(ring.out_cons.get(), 4);
    }

    #[test]
    fn drains_a_full_output_ring() {
        let ring = FakeRing::at(100);
        let data: Vec<u8> = (0..XENCONS_OUT_SIZE).map(|i| i as u8).collect();
        ring.guest_write(&data);
        assert_eq!(drain(&ring), Ok(data));
    }

    #[test]
    fn bogus_output_producer_is_an_error_and_nothing_moves() {
        let ring = FakeRing::new();
        ring.out_cons.set(10);
        ring.out_prod.set(10 + OUT_SIZE_IDX + 1);
        assert_eq!(
            drain(&ring),
            Err(RingError::BogusOutput {
                cons: 10,
                prod: 10 + OUT_SIZE_IDX + 1
            })
        );
        assert_eq!(ring.out_cons.get(), 10);
        // A producer behind the consumer is just as bogus (a huge wrapping distance).
        ring.out_prod.set(9);
        assert!(matches!(drain(&ring), Err(RingError::BogusOutput { .. })));
    }

    #[test]
    fn fills_input_and_advances_in_prod() {
        let ring = FakeRing::new();
        assert_eq!(fill_input(&ring, b"ls\r"), Ok(3));
        assert_eq!(ring.in_prod.get(), 3);
        assert_eq!(ring.guest_read(), b"ls\r");
        assert_eq!(fill_input(&ring, b""), Ok(0));
        assert_eq!(ring.in_prod.get(), 3);
    }

    #[test]
    fn fills_input_across_the_end_of_the_ring() {
        let ring = FakeRing::at(1020);
        assert_eq!(fill_input(&ring, b"abcdefgh"), Ok(8));
        assert_eq!(ring.in_prod.get(), 1028);
        assert_eq!(ring.r#in.borrow()[..4], *b"efgh");
        assert_eq!(ring.guest_read(), b"abcdefgh");
    }

    #[test]
    fn fill_input_stops_at_free_space() {
        let ring = FakeRing::at(u32::MAX - 10);
        let data = vec![b'x'; XENCONS_IN_SIZE + 100];
        assert_eq!(fill_input(&ring, &data), Ok(XENCONS_IN_SIZE));
        assert_eq!(fill_input(&ring, b"y"), Ok(0));
        assert_eq!(ring.guest_read().len(), XENCONS_IN_SIZE);
        assert_eq!(fill_input(&ring, b"yz"), Ok(2));
        assert_eq!(ring.guest_read(), b"yz");
    }

    #[test]
    fn bogus_input_consumer_is_an_error_and_nothing_is_written() {
        let ring = FakeRing::new();
        ring.in_prod.set(5);
        ring.in_cons.set(6); // the guest claims to have read past what was produced
        assert_eq!(
            fill_input(&ring, b"abc"),
            Err(RingError::BogusInput { cons: 6, prod: 5 })
        );
        assert_eq!(ring.in_prod.get(), 5);
        assert_eq!(ring.r#in.borrow()[5], 0);
    }
}
