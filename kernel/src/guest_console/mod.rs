//! The console backend: each domain's PV console (`io/console.h`) and the serial line's
//! input switch, free of hardware.
//!
//! - [`ring`]: the ring rules over [`ConsoleRing`], an abstract view of a domain's shared
//!   console page (the hypervisor implements it with ordered loads and stores).
//! - [`history`]: the bounded record of a domain's output that dom0 polls by offset.
//! - [`line`]: whole-line, escaped mirroring of a domain's output to the serial log.
//! - [`GuestConsole`]: one domain's console state tying those together, plus the input
//!   waiting for room in the guest's ring.
//! - [`switch`]: where serial input goes (the hypervisor or one domain), switched by
//!   three Ctrl-A in a row as in Xen.

use alloc::collections::VecDeque;

use ferrovisor_abi::xen::DomId;

pub mod history;
pub mod line;
pub mod ring;
pub mod switch;

pub use history::{History, HistoryRead};
pub use line::LineMirror;
pub use ring::{drain_output, fill_input, ConsoleRing, RingError};
pub use switch::{InputSwitch, InputTarget, Routed};

/// Output kept per domain for dom0 to poll.
pub const HISTORY_BYTES: usize = 64 * 1024;
/// Input waiting for room in a domain's ring; more is refused until the guest reads.
pub const INPUT_QUEUE_BYTES: usize = 4 * 1024;

/// What one [`GuestConsole::service`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Serviced {
    /// Output bytes consumed from the guest's ring.
    pub consumed: usize,
    /// Input bytes produced into the guest's ring.
    pub produced: usize,
    /// A ring found broken by this call (reported once; the ring is not used again until
    /// [`GuestConsole::reset_ring`]).
    pub error: Option<RingError>,
}

impl Serviced {
    /// Whether to send an event on the domain's console channel: Xen's backend notifies
    /// after consuming output (the guest may wait for space) and after producing input.
    pub const fn notify(&self) -> bool {
        self.consumed != 0 || self.produced != 0
    }
}

/// One domain's console: its output history, the mirror of its output to the serial
/// log, the input waiting for its ring, and whether each ring is still usable.
///
/// Output arrives either from the ring ([`Self::service`]) or, for a domain that writes
/// through the `console_io` hypercall (dom0), directly ([`Self::record_output`]); input
/// leaves through the ring or, for `console_io` readers, [`Self::take_input`].
pub struct GuestConsole {
    domid: DomId,
    history: History,
    mirror: LineMirror,
    input: VecDeque<u8>,
    input_limit: usize,
    out_broken: bool,
    in_broken: bool,
    /// Ring output goes to the mirror as it is, not as prefixed, escaped lines: for the
    /// console the administrator works on (dom0's, as Xen passes it through), where a
    /// shell's line editing must reach the terminal.
    raw_ring_mirror: bool,
}

impl GuestConsole {
    /// A console for `domid` with the default limits.
    pub fn new(domid: DomId) -> Self {
        Self::with_limits(domid, HISTORY_BYTES, INPUT_QUEUE_BYTES, line::LINE_LIMIT)
    }

    /// A console keeping `history_bytes` of output, queueing at most `input_bytes` of
    /// input and cutting mirrored lines at `line_limit` bytes.
    pub fn with_limits(
        domid: DomId,
        history_bytes: usize,
        input_bytes: usize,
        line_limit: usize,
    ) -> Self {
        GuestConsole {
            domid,
            history: History::new(history_bytes),
            mirror: LineMirror::with_limit(domid, line_limit),
            input: VecDeque::new(),
            input_limit: input_bytes,
            out_broken: false,
            in_broken: false,
            raw_ring_mirror: false,
        }
    }

    /// Mirrors ring output raw (see the field); console_io output stays line-mirrored.
    pub fn set_raw_ring_mirror(&mut self, raw: bool) {
        self.raw_ring_mirror = raw;
    }

    /// The domain this console belongs to.
    pub const fn domid(&self) -> DomId {
        self.domid
    }

    /// Takes output the domain wrote: appended to the history, and each completed line
    /// passed to `mirror` (prefixed and escaped, see [`LineMirror::feed`]).
    pub fn record_output(&mut self, bytes: &[u8], mirror: &mut impl FnMut(&str)) {
        self.history.push(bytes);
        self.mirror.feed(bytes, mirror);
    }

    /// Emits a partial output line to `mirror` (a prompt, or the domain going away).
    pub fn flush_mirror(&mut self, mirror: &mut impl FnMut(&str)) {
        self.mirror.flush(mirror);
    }

    /// Copies output from offset `from` on into `out` (see [`History::read`]).
    pub fn read_history(&self, from: u64, out: &mut [u8]) -> HistoryRead {
        self.history.read(from, out)
    }

    /// The offset just past the domain's latest output byte.
    pub const fn output_written(&self) -> u64 {
        self.history.written()
    }

    /// Queues input for the domain (from dom0 or the serial line). Returns how many
    /// bytes, a prefix of `bytes`, were accepted; the rest is refused because the queue
    /// is full (the guest is not reading), and the caller may retry later.
    pub fn queue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.input_limit.saturating_sub(self.input.len());
        let n = bytes.len().min(room);
        self.input.extend(&bytes[..n]);
        n
    }

    /// Input bytes waiting for the guest.
    pub fn pending_input(&self) -> usize {
        self.input.len()
    }

    /// Hands queued input to a domain reading through `console_io` instead of the ring:
    /// copies as much as fits into `out`, oldest first, and returns the count.
    pub fn take_input(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.input.len());
        for (dst, src) in out.iter_mut().zip(self.input.drain(..n)) {
            *dst = src;
        }
        n
    }

    /// Whether the guest broke its output ring (no more output is read from it) or
    /// input ring (no more input is written to it), until [`Self::reset_ring`].
    pub const fn ring_broken(&self) -> (bool, bool) {
        (self.out_broken, self.in_broken)
    }

    /// Uses the rings again after the guest set up its console afresh (e.g. after a
    /// reboot into a new kernel, or a restore).
    pub fn reset_ring(&mut self) {
        self.out_broken = false;
        self.in_broken = false;
    }

    /// Moves bytes through the guest's page: consumes its output (recording it as
    /// [`Self::record_output`] does), then produces as much queued input as fits. Call
    /// it when the guest signals its console channel, and when input is queued. A ring
    /// with bogus indexes is reported once in [`Serviced::error`] and then left alone;
    /// the other ring keeps working.
    pub fn service(&mut self, ring: &impl ConsoleRing, mirror: &mut impl FnMut(&str)) -> Serviced {
        let mut done = Serviced::default();
        if !self.out_broken {
            let raw = self.raw_ring_mirror;
            match drain_output(ring, &mut |b: &[u8]| {
                self.history.push(b);
                if raw {
                    mirror(&alloc::string::String::from_utf8_lossy(b));
                } else {
                    self.mirror.feed(b, &mut *mirror);
                }
            }) {
                Ok(n) => done.consumed = n,
                Err(e) => {
                    self.out_broken = true;
                    done.error = Some(e);
                }
            }
        }
        if !self.in_broken && !self.input.is_empty() {
            let (first, second) = self.input.as_slices();
            let mut produced = 0;
            for part in [first, second] {
                if part.is_empty() {
                    continue;
                }
                match fill_input(ring, part) {
                    Ok(n) => {
                        produced += n;
                        if n < part.len() {
                            break;
                        }
                    }
                    Err(e) => {
                        self.in_broken = true;
                        // An output error found first is the one reported.
                        done.error = done.error.or(Some(e));
                        break;
                    }
                }
            }
            self.input.drain(..produced);
            done.produced = produced;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use alloc::{string::String, vec::Vec};

    use ferrovisor_abi::xen::console::{XENCONS_IN_SIZE, XENCONS_OUT_SIZE};

    use super::{ring::tests::FakeRing, *};

    /// Services `c` over `ring`, collecting the mirrored lines.
    fn service(c: &mut GuestConsole, ring: &FakeRing) -> (Serviced, Vec<String>) {
        let mut lines = Vec::new();
        let done = c.service(ring, &mut |l: &str| lines.push(l.into()));
        (done, lines)
    }

    fn history(c: &GuestConsole, from: u64) -> Vec<u8> {
        let mut out = vec![0; 1 << 17];
        let r = c.read_history(from, &mut out);
        out.truncate(r.copied);
        out
    }

    #[test]
    fn ring_output_goes_to_history_and_mirror_and_notifies() {
        let mut c = GuestConsole::new(5);
        let ring = FakeRing::at(2040);
        ring.guest_write(b"Linux version 6.1\r\nlogin: ");
        let (done, lines) = service(&mut c, &ring);
        assert_eq!(done.consumed, 26);
        assert!(done.notify());
        assert_eq!(lines, ["(d5) Linux version 6.1"]);
        assert_eq!(history(&c, 0), b"Linux version 6.1\r\nlogin: ");
        assert_eq!(c.output_written(), 26);
        // Nothing new: no notification.
        let (done, lines) = service(&mut c, &ring);
        assert!(!done.notify() && lines.is_empty());
    }

    #[test]
    fn input_larger_than_the_ring_is_delivered_in_order_as_the_guest_reads() {
        let mut c = GuestConsole::new(1);
        let ring = FakeRing::at(1000);
        let data: Vec<u8> = (0..XENCONS_IN_SIZE + 300)
            .map(|i| (i % 251) as u8)
            .collect();
        assert_eq!(c.queue_input(&data), data.len());
        let (done, _) = service(&mut c, &ring);
        assert_eq!(done.produced, XENCONS_IN_SIZE);
        assert!(done.notify());
        assert_eq!(c.pending_input(), 300);
        // The ring is full: nothing moves, no notification.
        assert!(!service(&mut c, &ring).0.notify());
        let mut got = ring.guest_read();
        c.queue_input(b"tail");
        let (done, _) = service(&mut c, &ring);
        assert_eq!(done.produced, 304);
        got.extend(ring.guest_read());
        let mut expect = data.clone();
        expect.extend_from_slice(b"tail");
        assert_eq!(got, expect);
        assert_eq!(c.pending_input(), 0);
    }

    #[test]
    fn the_input_queue_is_bounded() {
        let mut c = GuestConsole::with_limits(1, 64, 8, 80);
        assert_eq!(c.queue_input(b"0123456"), 7);
        assert_eq!(c.queue_input(b"789"), 1);
        assert_eq!(c.queue_input(b"x"), 0);
        let mut out = [0u8; 5];
        assert_eq!(c.take_input(&mut out), 5);
        assert_eq!(&out, b"01234");
        assert_eq!(c.queue_input(b"abc"), 3);
        let mut out = [0u8; 16];
        assert_eq!(c.take_input(&mut out), 6);
        assert_eq!(&out[..6], b"567abc");
    }

    #[test]
    fn a_bogus_output_producer_stops_reading_output_but_input_still_flows() {
        let mut c = GuestConsole::new(2);
        let ring = FakeRing::new();
        ring.out_prod.set(XENCONS_OUT_SIZE as u32 + 1);
        c.queue_input(b"hi");
        let (done, lines) = service(&mut c, &ring);
        assert!(matches!(done.error, Some(RingError::BogusOutput { .. })));
        assert_eq!((done.consumed, done.produced), (0, 2));
        assert!(lines.is_empty());
        assert_eq!(c.ring_broken(), (true, false));
        assert_eq!(ring.out_cons.get(), 0);
        // Even once the indexes look sane again, the ring stays unused and the error is
        // not reported twice.
        ring.out_prod.set(3);
        let (done, _) = service(&mut c, &ring);
        assert_eq!((done.error, done.consumed), (None, 0));
        assert_eq!(ring.out_cons.get(), 0);
        // Until the console is reset.
        c.reset_ring();
        assert_eq!(service(&mut c, &ring).0.consumed, 3);
    }

    #[test]
    fn a_bogus_input_consumer_stops_writing_input_and_keeps_it_queued() {
        let mut c = GuestConsole::new(2);
        let ring = FakeRing::new();
        ring.in_cons.set(7);
        ring.guest_write(b"ok\n");
        c.queue_input(b"abc");
        let (done, lines) = service(&mut c, &ring);
        assert!(matches!(done.error, Some(RingError::BogusInput { .. })));
        assert_eq!((done.consumed, done.produced), (3, 0));
        assert_eq!(lines, ["(d2) ok"]);
        assert_eq!(c.ring_broken(), (false, true));
        assert_eq!(c.pending_input(), 3);
    }

    #[test]
    fn a_flood_of_output_keeps_the_newest_history_and_reports_the_gap() {
        let mut c = GuestConsole::with_limits(3, 4096, 64, 80);
        let ring = FakeRing::new();
        for round in 0..4u8 {
            ring.guest_write(&[b'a' + round; XENCONS_OUT_SIZE]);
            service(&mut c, &ring);
        }
        assert_eq!(c.output_written(), 4 * XENCONS_OUT_SIZE as u64);
        let mut out = vec![0; 8192];
        let r = c.read_history(0, &mut out);
        assert_eq!(r.missed, 4096);
        assert_eq!(r.copied, 4096);
        assert!(out[..2048].iter().all(|&b| b == b'c'));
        assert!(out[2048..4096].iter().all(|&b| b == b'd'));
    }

    #[test]
    fn record_output_and_flush_serve_console_io_writers() {
        let mut c = GuestConsole::new(0);
        let mut lines = Vec::new();
        c.record_output(b"dom0 says\n# ", &mut |l: &str| lines.push(String::from(l)));
        c.flush_mirror(&mut |l: &str| lines.push(String::from(l)));
        assert_eq!(lines, ["(d0) dom0 says", "(d0) # "]);
        assert_eq!(history(&c, 10), b"# ");
    }
}
