//! The shared-page transport (`io/xs_wire.h`, `docs/misc/xenstore-ring.txt`): requests
//! arrive in `req`, replies and watch events leave through `rsp`, each a byte stream
//! with free-running 32-bit producer and consumer indices.
//!
//! The page itself is behind [`RingAccess`], which the hypervisor implements over the
//! guest's frame. The guest writes the page concurrently, so an implementation reads
//! `req_prod` before the request bytes it covers (a read barrier between) and writes the
//! reply bytes before `rsp_prod` (a write barrier between), and the caller notifies the
//! event channel when [`RingState`] says it moved an index (xenstore-ring.txt: "whenever
//! the ring structure is updated the event channel must be signalled").
//!
//! The guest controls every index and every byte, so nothing here trusts them: a
//! producer more than a ring's worth ahead of its consumer, or a message longer than
//! `XENSTORE_PAYLOAD_MAX`, is a protocol fault. The connection is then dead: the fault is
//! reported in the page's `error` field (`XENSTORE_ERROR_*`) and nothing more is read or
//! written, as xenstored does.

use alloc::{collections::VecDeque, vec::Vec};

use ferrovisor_abi::xen::xs_wire::{
    mask_xenstore_idx, XsdSockmsg, XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX,
    XENSTORE_PAYLOAD_MAX, XENSTORE_RING_SIZE, XSD_SOCKMSG_SIZE,
};
use zerocopy::FromBytes;

const RING: usize = XENSTORE_RING_SIZE as usize;

/// Access to one domain's `struct xenstore_domain_interface`.
pub trait RingAccess {
    fn req_cons(&self) -> u32;
    /// Read before the request bytes (acquire).
    fn req_prod(&self) -> u32;
    fn set_req_cons(&mut self, idx: u32);
    fn rsp_cons(&self) -> u32;
    fn rsp_prod(&self) -> u32;
    /// Written after the reply bytes (release).
    fn set_rsp_prod(&mut self, idx: u32);
    /// Copies `buf.len()` bytes from `req[offset..]`; never crosses the ring's end.
    fn read_req(&self, offset: usize, buf: &mut [u8]);
    /// Copies `data` to `rsp[offset..]`; never crosses the ring's end.
    fn write_rsp(&mut self, offset: usize, data: &[u8]);
    /// Sets the page's `error` field (`XENSTORE_ERROR_*`).
    fn set_error(&mut self, error: u32);
}

/// Why a connection was shut down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingFault {
    /// A producer or consumer index more than a ring's worth away from its partner.
    BadIndex,
    /// A message header announcing more than `XENSTORE_PAYLOAD_MAX` bytes.
    Oversized,
}

impl RingFault {
    /// The `XENSTORE_ERROR_*` code for the page's `error` field.
    pub const fn error_code(self) -> u32 {
        match self {
            Self::BadIndex => XENSTORE_ERROR_RINGIDX,
            Self::Oversized => XENSTORE_ERROR_PROTO,
        }
    }
}

/// The service's side of one ring: the request being assembled and how much of the
/// first queued reply is already in the ring.
#[derive(Debug, Default)]
pub struct RingState {
    partial: Vec<u8>,
    written: usize,
    fault: Option<RingFault>,
}

impl RingState {
    pub fn new() -> Self {
        Self::default()
    }

    /// The fault that shut the connection down, if any.
    pub fn fault(&self) -> Option<RingFault> {
        self.fault
    }

    fn fail<R: RingAccess>(&mut self, ring: &mut R, fault: RingFault) -> RingFault {
        self.fault = Some(fault);
        self.partial = Vec::new();
        ring.set_error(fault.error_code());
        fault
    }

    /// Bytes still needed to complete the message being assembled, or `None` if its
    /// header announces too long a payload.
    fn needed(&self) -> Option<usize> {
        if self.partial.len() < XSD_SOCKMSG_SIZE {
            return Some(XSD_SOCKMSG_SIZE - self.partial.len());
        }
        let (hdr, _) = XsdSockmsg::read_from_prefix(&self.partial).ok()?;
        if hdr.len > XENSTORE_PAYLOAD_MAX {
            return None;
        }
        Some(XSD_SOCKMSG_SIZE + hdr.len as usize - self.partial.len())
    }

    /// Consumes request bytes up to the end of one message. Returns the message once it
    /// is complete (header and payload), and whether `req_cons` moved (then notify).
    pub fn read_message<R: RingAccess>(
        &mut self,
        ring: &mut R,
    ) -> Result<(Option<Vec<u8>>, bool), RingFault> {
        if let Some(f) = self.fault {
            return Err(f);
        }
        let mut cons = ring.req_cons();
        let prod = ring.req_prod();
        let mut avail = prod.wrapping_sub(cons) as usize;
        if avail > RING {
            return Err(self.fail(ring, RingFault::BadIndex));
        }
        let mut moved = false;
        loop {
            let Some(need) = self.needed() else {
                return Err(self.fail(ring, RingFault::Oversized));
            };
            if need == 0 {
                if moved {
                    ring.set_req_cons(cons);
                }
                return Ok((Some(core::mem::take(&mut self.partial)), moved));
            }
            if avail == 0 {
                if moved {
                    ring.set_req_cons(cons);
                }
                return Ok((None, moved));
            }
            let offset = mask_xenstore_idx(cons) as usize;
            let n = need.min(avail).min(RING - offset);
            let start = self.partial.len();
            self.partial.resize(start + n, 0);
            if let Some(buf) = self.partial.get_mut(start..) {
                ring.read_req(offset, buf);
            }
            // `n` <= RING, so it fits in u32.
            cons = cons.wrapping_add(n as u32);
            avail -= n;
            moved = true;
        }
    }

    /// Writes as much of `queue` as fits into `rsp`, keeping the rest (and the unwritten
    /// tail of a message cut short) for later. Returns whether `rsp_prod` moved.
    pub fn write_messages<R: RingAccess>(
        &mut self,
        ring: &mut R,
        queue: &mut VecDeque<Vec<u8>>,
    ) -> Result<bool, RingFault> {
        if let Some(f) = self.fault {
            return Err(f);
        }
        let cons = ring.rsp_cons();
        let mut prod = ring.rsp_prod();
        let used = prod.wrapping_sub(cons) as usize;
        if used > RING {
            return Err(self.fail(ring, RingFault::BadIndex));
        }
        let mut free = RING - used;
        let mut moved = false;
        while free > 0 {
            let Some(front) = queue.front() else {
                break;
            };
            let rest = front.get(self.written..).unwrap_or(&[]);
            let offset = mask_xenstore_idx(prod) as usize;
            let n = rest.len().min(free).min(RING - offset);
            if let Some(chunk) = rest.get(..n) {
                ring.write_rsp(offset, chunk);
            }
            prod = prod.wrapping_add(n as u32);
            free -= n;
            self.written += n;
            moved |= n > 0;
            if self.written >= front.len() {
                queue.pop_front();
                self.written = 0;
            }
        }
        if moved {
            ring.set_rsp_prod(prod);
        }
        Ok(moved)
    }
}

/// A plain in-memory page, for tests.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct TestRing {
    pub req: [u8; RING],
    pub rsp: [u8; RING],
    pub req_cons: u32,
    pub req_prod: u32,
    pub rsp_cons: u32,
    pub rsp_prod: u32,
    pub error: u32,
}

#[cfg(test)]
impl TestRing {
    pub fn new(start: u32) -> Self {
        TestRing {
            req: [0; RING],
            rsp: [0; RING],
            req_cons: start,
            req_prod: start,
            rsp_cons: start,
            rsp_prod: start,
            error: 0,
        }
    }

    /// Guest side: produces request bytes (as many as fit).
    pub fn push_req(&mut self, bytes: &[u8]) -> usize {
        let free = RING - self.req_prod.wrapping_sub(self.req_cons) as usize;
        let n = bytes.len().min(free);
        for &b in &bytes[..n] {
            self.req[mask_xenstore_idx(self.req_prod) as usize] = b;
            self.req_prod = self.req_prod.wrapping_add(1);
        }
        n
    }

    /// Guest side: consumes every reply byte available.
    pub fn pop_rsp(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.rsp_cons != self.rsp_prod {
            out.push(self.rsp[mask_xenstore_idx(self.rsp_cons) as usize]);
            self.rsp_cons = self.rsp_cons.wrapping_add(1);
        }
        out
    }
}

#[cfg(test)]
impl RingAccess for TestRing {
    fn req_cons(&self) -> u32 {
        self.req_cons
    }
    fn req_prod(&self) -> u32 {
        self.req_prod
    }
    fn set_req_cons(&mut self, idx: u32) {
        self.req_cons = idx;
    }
    fn rsp_cons(&self) -> u32 {
        self.rsp_cons
    }
    fn rsp_prod(&self) -> u32 {
        self.rsp_prod
    }
    fn set_rsp_prod(&mut self, idx: u32) {
        self.rsp_prod = idx;
    }
    fn read_req(&self, offset: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self.req[offset..offset + buf.len()]);
    }
    fn write_rsp(&mut self, offset: usize, data: &[u8]) {
        self.rsp[offset..offset + data.len()].copy_from_slice(data);
    }
    fn set_error(&mut self, error: u32) {
        self.error = error;
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use zerocopy::IntoBytes;

    use super::*;

    fn msg(ty: u32, payload: &[u8]) -> Vec<u8> {
        let hdr = XsdSockmsg {
            r#type: ty,
            req_id: 9,
            tx_id: 0,
            len: payload.len() as u32,
        };
        let mut m = hdr.as_bytes().to_vec();
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn partial_message_waits_for_the_rest() {
        let mut ring = TestRing::new(0);
        let mut st = RingState::new();
        let m = msg(2, b"/a/b\0");
        ring.push_req(&m[..10]);
        assert_eq!(st.read_message(&mut ring), Ok((None, true)));
        assert_eq!(st.read_message(&mut ring), Ok((None, false)));
        ring.push_req(&m[10..]);
        assert_eq!(st.read_message(&mut ring), Ok((Some(m), true)));
    }

    #[test]
    fn two_messages_come_out_one_at_a_time() {
        let mut ring = TestRing::new(0);
        let mut st = RingState::new();
        let (a, b) = (msg(2, b"x\0"), msg(2, b"yy\0"));
        ring.push_req(&a);
        ring.push_req(&b);
        assert_eq!(st.read_message(&mut ring).unwrap().0, Some(a));
        assert_eq!(st.read_message(&mut ring).unwrap().0, Some(b));
        assert_eq!(st.read_message(&mut ring).unwrap().0, None);
    }

    #[test]
    fn indices_wrap_around_2_to_the_32() {
        let mut ring = TestRing::new(u32::MAX - 5);
        let mut st = RingState::new();
        let m = msg(2, b"/wrapping/path\0");
        ring.push_req(&m);
        assert_eq!(st.read_message(&mut ring).unwrap().0, Some(m.clone()));
        let mut q = VecDeque::from(vec![m.clone()]);
        assert_eq!(st.write_messages(&mut ring, &mut q), Ok(true));
        assert_eq!(ring.pop_rsp(), m);
    }

    #[test]
    fn bogus_producer_index_is_a_fault_not_a_panic() {
        let mut ring = TestRing::new(0);
        let mut st = RingState::new();
        ring.req_prod = 5000;
        assert_eq!(st.read_message(&mut ring), Err(RingFault::BadIndex));
        assert_eq!(ring.error, XENSTORE_ERROR_RINGIDX);
        // Dead from now on, even if the guest repairs the index.
        ring.req_prod = 0;
        assert_eq!(st.read_message(&mut ring), Err(RingFault::BadIndex));
    }

    #[test]
    fn bogus_response_consumer_is_a_fault() {
        let mut ring = TestRing::new(0);
        let mut st = RingState::new();
        ring.rsp_cons = 2000;
        let mut q = VecDeque::from(vec![vec![1u8; 4]]);
        assert_eq!(
            st.write_messages(&mut ring, &mut q),
            Err(RingFault::BadIndex)
        );
    }

    #[test]
    fn oversized_length_is_a_protocol_fault() {
        let mut ring = TestRing::new(0);
        let mut st = RingState::new();
        let hdr = XsdSockmsg {
            r#type: 2,
            req_id: 1,
            tx_id: 0,
            len: XENSTORE_PAYLOAD_MAX + 1,
        };
        ring.push_req(hdr.as_bytes());
        assert_eq!(st.read_message(&mut ring), Err(RingFault::Oversized));
        assert_eq!(ring.error, XENSTORE_ERROR_PROTO);
    }

    #[test]
    fn max_payload_message_passes_through_a_small_ring() {
        let mut ring = TestRing::new(100);
        let mut st = RingState::new();
        let m = msg(11, &vec![b'a'; XENSTORE_PAYLOAD_MAX as usize]);
        let mut sent = 0;
        let mut got = None;
        while got.is_none() {
            sent += ring.push_req(&m[sent..]);
            got = st.read_message(&mut ring).unwrap().0;
        }
        assert_eq!(got, Some(m));
    }

    #[test]
    fn replies_larger_than_free_space_wrap_and_queue() {
        let mut ring = TestRing::new(1000);
        let mut st = RingState::new();
        let big: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        let small = vec![7u8; 30];
        let mut q = VecDeque::from(vec![big.clone(), small.clone()]);
        assert_eq!(st.write_messages(&mut ring, &mut q), Ok(true));
        assert_eq!(q.len(), 2, "big message only partly written");
        // Full ring: nothing more until the guest consumes.
        assert_eq!(st.write_messages(&mut ring, &mut q), Ok(false));
        let mut got = ring.pop_rsp();
        assert_eq!(got.len(), RING);
        assert_eq!(st.write_messages(&mut ring, &mut q), Ok(true));
        got.extend(ring.pop_rsp());
        assert!(q.is_empty());
        let mut want = big;
        want.extend(small);
        assert_eq!(got, want);
    }

    #[test]
    fn full_ring_writes_nothing() {
        let mut ring = TestRing::new(0);
        ring.rsp_prod = 1024;
        let mut st = RingState::new();
        let mut q = VecDeque::from(vec![vec![1u8; 4]]);
        assert_eq!(st.write_messages(&mut ring, &mut q), Ok(false));
        assert_eq!(q.len(), 1);
    }
}
