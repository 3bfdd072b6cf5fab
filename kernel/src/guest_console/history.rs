//! The recent output of one domain's console, kept so that dom0's `fv console` can poll
//! it ("everything since offset N") long after the guest wrote it.
//!
//! Bytes are addressed by their offset in the domain's whole output stream (the count of
//! bytes written before them), never by a buffer index: a reader that remembers where it
//! stopped learns from each answer how much it missed if it fell behind. A 64-bit offset
//! never wraps.

use alloc::collections::VecDeque;

/// What [`History::read`] copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryRead {
    /// Bytes copied to the caller's buffer.
    pub copied: usize,
    /// The offset of the first byte copied (the requested one, or the oldest kept when
    /// the request was older than that).
    pub start: u64,
    /// Where the next read should start: just after the last byte copied.
    pub next: u64,
    /// Bytes between the requested offset and the oldest one still kept, which were
    /// dropped before the reader asked for them; 0 when nothing was missed.
    pub missed: u64,
}

/// A bounded byte history: the last `capacity` bytes written, oldest dropped first. The
/// buffer grows only as output arrives, so a quiet domain costs little.
pub struct History {
    buf: VecDeque<u8>,
    capacity: usize,
    written: u64,
}

impl History {
    /// An empty history keeping at most `capacity` bytes (at least 1).
    pub fn new(capacity: usize) -> Self {
        History {
            buf: VecDeque::new(),
            capacity: capacity.max(1),
            written: 0,
        }
    }

    /// The most bytes kept.
    pub const fn capacity(&self) -> usize {
        self.capacity
    }

    /// The total number of bytes ever written: the offset of the next byte.
    pub const fn written(&self) -> u64 {
        self.written
    }

    /// The offset of the oldest byte still kept.
    pub fn oldest(&self) -> u64 {
        // buf.len() <= capacity <= usize::MAX, lossless into u64; never more than written.
        self.written - self.buf.len() as u64
    }

    /// Appends `bytes`, dropping the oldest bytes beyond the capacity.
    pub fn push(&mut self, bytes: &[u8]) {
        self.written += bytes.len() as u64;
        // Only the last `capacity` bytes of a long write can survive it.
        let kept = &bytes[bytes.len().saturating_sub(self.capacity)..];
        let overflow = (self.buf.len() + kept.len()).saturating_sub(self.capacity);
        self.buf.drain(..overflow);
        self.buf.extend(kept);
    }

    /// Copies the bytes from offset `from` on into `out`, as many as fit. A `from` older
    /// than [`Self::oldest`] starts at the oldest byte and reports the gap in
    /// [`HistoryRead::missed`]; a `from` at or beyond [`Self::written`] copies nothing
    /// (and `next` is then [`Self::written`], so a reader that got ahead of the domain,
    /// e.g. after the domain's console was reset, resynchronises).
    pub fn read(&self, from: u64, out: &mut [u8]) -> HistoryRead {
        let oldest = self.oldest();
        let start = from.clamp(oldest, self.written);
        // start - oldest <= buf.len(), so it fits in usize.
        let skip = (start - oldest) as usize;
        let (a, b) = self.buf.as_slices();
        let mut copied = 0;
        let (a_skip, b_skip) = if skip < a.len() {
            (skip, 0)
        } else {
            (a.len(), skip - a.len())
        };
        for part in [&a[a_skip..], &b[b_skip..]] {
            let n = part.len().min(out.len() - copied);
            out[copied..copied + n].copy_from_slice(&part[..n]);
            copied += n;
        }
        HistoryRead {
            copied,
            start,
            next: start + copied as u64,
            missed: oldest.saturating_sub(from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(h: &History, from: u64) -> (Vec<u8>, HistoryRead) {
        let mut out = vec![0; h.capacity() + 8];
        let r = h.read(from, &mut out);
        out.truncate(r.copied);
        (out, r)
    }

    #[test]
    fn empty_history() {
        let h = History::new(16);
        assert_eq!((h.written(), h.oldest()), (0, 0));
        let (bytes, r) = read_all(&h, 0);
        assert!(bytes.is_empty());
        assert_eq!((r.start, r.next, r.missed), (0, 0, 0));
    }

    #[test]
    fn reads_everything_since_an_offset() {
        let mut h = History::new(16);
        h.push(b"hello ");
        h.push(b"world");
        assert_eq!(read_all(&h, 0).0, b"hello world");
        let (bytes, r) = read_all(&h, 6);
        assert_eq!(bytes, b"world");
        assert_eq!((r.start, r.next, r.missed), (6, 11, 0));
        // Caught up, and past the end: nothing, and `next` is where output will continue.
        assert_eq!(read_all(&h, 11).1.next, 11);
        let (bytes, r) = read_all(&h, 500);
        assert!(bytes.is_empty());
        assert_eq!((r.next, r.missed), (11, 0));
    }

    #[test]
    fn overflow_drops_the_oldest_bytes() {
        let mut h = History::new(8);
        h.push(b"0123456");
        h.push(b"789ab");
        assert_eq!((h.written(), h.oldest()), (12, 4));
        assert_eq!(read_all(&h, 4).0, b"456789ab");
        assert_eq!(read_all(&h, 9).0, b"9ab");
    }

    #[test]
    fn reading_from_before_the_oldest_reports_the_gap() {
        let mut h = History::new(8);
        h.push(b"abcdefghijklmnop");
        let (bytes, r) = read_all(&h, 3);
        assert_eq!(bytes, b"ijklmnop");
        assert_eq!((r.start, r.next, r.missed), (8, 16, 5));
    }

    #[test]
    fn a_push_longer_than_the_capacity_keeps_its_tail() {
        let mut h = History::new(4);
        h.push(b"xy");
        h.push(b"0123456789");
        assert_eq!((h.written(), h.oldest()), (12, 8));
        assert_eq!(read_all(&h, 0).0, b"6789");
    }

    #[test]
    fn small_reads_resume_where_they_stopped() {
        let mut h = History::new(8);
        h.push(b"abcdefghijk");
        let mut out = [0u8; 3];
        let mut at = 0;
        let mut got = Vec::new();
        let mut missed = 0;
        loop {
            let r = h.read(at, &mut out);
            missed += r.missed;
            if r.copied == 0 {
                break;
            }
            got.extend_from_slice(&out[..r.copied]);
            at = r.next;
        }
        assert_eq!(got, b"defghijk");
        assert_eq!((at, missed), (11, 3));
    }

    #[test]
    fn zero_capacity_keeps_one_byte() {
        let mut h = History::new(0);
        h.push(b"ab");
        assert_eq!(read_all(&h, 0).0, b"b");
    }

    #[test]
    fn matches_a_reference_model() {
        let mut h = History::new(13);
        let mut all = Vec::new();
        let mut x = 1u32;
        for step in 0..500u32 {
            let len = (step * 7 + 3) as usize % 31;
            let chunk: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            h.push(&chunk);
            all.extend_from_slice(&chunk);
            let oldest = all.len().saturating_sub(13);
            assert_eq!(h.oldest(), oldest as u64);
            let from = (step as usize * 5) % (all.len() + 1);
            let mut out = [0u8; 9];
            let r = h.read(from as u64, &mut out);
            let start = from.max(oldest);
            assert_eq!(&out[..r.copied], &all[start..(start + 9).min(all.len())]);
            assert_eq!(r.missed, oldest.saturating_sub(from) as u64);
        }
    }
}
