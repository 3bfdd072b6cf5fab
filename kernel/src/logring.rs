//! The hypervisor's log ring: the last `N` bytes of console output, kept in memory so
//! that `fv dmesg` can read the boot log long after the serial line scrolled away.
//!
//! Bytes are addressed by a 64-bit sequence number (the count of bytes pushed before
//! them), never by a buffer index, so a reader that remembers where it stopped can ask for
//! "everything since" and learn from the answer how much it missed. 2^64 bytes of log is
//! beyond any uptime, so the counter never wraps.

/// A byte ring of capacity `N` (`N > 0`, checked at compile time).
pub struct LogRing<const N: usize> {
    buf: [u8; N],
    written: u64,
}

impl<const N: usize> LogRing<N> {
    /// `N` as a sequence distance; lossless since usize is at most 64 bits wide.
    const CAPACITY: u64 = N as u64;

    /// An empty ring, usable as a `static` initialiser.
    pub const fn new() -> Self {
        const { assert!(N > 0, "a LogRing needs room for at least one byte") };
        LogRing {
            buf: [0; N],
            written: 0,
        }
    }

    /// The ring's capacity in bytes.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Appends `bytes`, overwriting the oldest bytes once the ring is full.
    pub fn push(&mut self, bytes: &[u8]) {
        let len = bytes.len() as u64;
        // Only the last N bytes of a long push can survive it.
        let kept = &bytes[bytes.len().saturating_sub(N)..];
        let start = self.written + (len - kept.len() as u64);
        let pos = self.index(start);
        let first = kept.len().min(N - pos);
        self.buf[pos..pos + first].copy_from_slice(&kept[..first]);
        self.buf[..kept.len() - first].copy_from_slice(&kept[first..]);
        self.written += len;
    }

    /// The total number of bytes ever pushed: the sequence number of the next byte.
    pub const fn written(&self) -> u64 {
        self.written
    }

    /// The sequence number of the oldest byte still held.
    pub const fn oldest(&self) -> u64 {
        self.written.saturating_sub(Self::CAPACITY)
    }

    /// Copies bytes starting at sequence number `from` into `out`, as many as fit and
    /// are held. A `from` older than [`Self::oldest`] starts at the oldest byte (the
    /// caller sees the gap from the returned position); a `from` beyond [`Self::written`]
    /// copies nothing. Returns the number of bytes copied and the sequence number just
    /// after the last one, where the next read should start.
    pub fn read(&self, from: u64, out: &mut [u8]) -> (usize, u64) {
        let start = from.clamp(self.oldest(), self.written);
        let held = self.written - start;
        let count = out.len().min(usize::try_from(held).unwrap_or(usize::MAX));
        let pos = self.index(start);
        let first = count.min(N - pos);
        out[..first].copy_from_slice(&self.buf[pos..pos + first]);
        out[first..count].copy_from_slice(&self.buf[..count - first]);
        (count, start + count as u64)
    }

    /// The buffer index of a sequence number.
    fn index(&self, seq: u64) -> usize {
        // The remainder is below N, so it fits in usize.
        (seq % Self::CAPACITY) as usize
    }
}

impl<const N: usize> Default for LogRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all<const N: usize>(ring: &LogRing<N>, from: u64) -> (Vec<u8>, u64) {
        let mut out = vec![0; N + 8];
        let (n, next) = ring.read(from, &mut out);
        out.truncate(n);
        (out, next)
    }

    #[test]
    fn usable_in_a_static() {
        static RING: LogRing<64> = LogRing::new();
        assert_eq!(RING.written(), 0);
        assert_eq!(RING.capacity(), 64);
    }

    #[test]
    fn empty_ring() {
        let ring = LogRing::<16>::default();
        assert_eq!(ring.written(), 0);
        assert_eq!(ring.oldest(), 0);
        assert_eq!(read_all(&ring, 0), (vec![], 0));
        assert_eq!(read_all(&ring, 5), (vec![], 0));
    }

    #[test]
    fn push_and_read_without_wrap() {
        let mut ring = LogRing::<16>::new();
        ring.push(b"hello ");
        ring.push(b"world");
        ring.push(b"");
        assert_eq!(ring.written(), 11);
        assert_eq!(ring.oldest(), 0);
        assert_eq!(read_all(&ring, 0), (b"hello world".to_vec(), 11));
        assert_eq!(read_all(&ring, 6), (b"world".to_vec(), 11));
        assert_eq!(read_all(&ring, 11), (vec![], 11));
        assert_eq!(read_all(&ring, 100), (vec![], 11));
    }

    #[test]
    fn wraparound_keeps_the_newest_bytes() {
        let mut ring = LogRing::<8>::new();
        ring.push(b"0123456");
        ring.push(b"789ab");
        assert_eq!(ring.written(), 12);
        assert_eq!(ring.oldest(), 4);
        assert_eq!(read_all(&ring, 0), (b"456789ab".to_vec(), 12));
        assert_eq!(read_all(&ring, 4), (b"456789ab".to_vec(), 12));
        assert_eq!(read_all(&ring, 9), (b"9ab".to_vec(), 12));
    }

    #[test]
    fn push_longer_than_the_ring() {
        let mut ring = LogRing::<8>::new();
        ring.push(b"abc");
        ring.push(b"0123456789ABCDEFGHIJ");
        assert_eq!(ring.written(), 23);
        assert_eq!(ring.oldest(), 15);
        assert_eq!(read_all(&ring, 0), (b"CDEFGHIJ".to_vec(), 23));
        // Exactly N bytes.
        ring.push(b"xxxxxxxx");
        assert_eq!(read_all(&ring, 0), (b"xxxxxxxx".to_vec(), 31));
    }

    #[test]
    fn small_reads_resume_where_they_stopped() {
        let mut ring = LogRing::<8>::new();
        ring.push(b"abcdefghijk");
        let mut out = [0u8; 3];
        let mut seq = 0;
        let mut got = Vec::new();
        loop {
            let (n, next) = ring.read(seq, &mut out);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&out[..n]);
            seq = next;
        }
        assert_eq!(got, b"defghijk");
        assert_eq!(seq, 11);
        // A read into an empty buffer copies nothing and moves nowhere (but is clamped).
        assert_eq!(ring.read(0, &mut []), (0, 3));
        assert_eq!(ring.read(5, &mut []), (0, 5));
    }

    #[test]
    fn one_byte_ring() {
        let mut ring = LogRing::<1>::new();
        ring.push(b"ab");
        ring.push(b"c");
        assert_eq!(read_all(&ring, 0), (b"c".to_vec(), 3));
        assert_eq!(ring.oldest(), 2);
    }

    #[test]
    fn matches_a_reference_model() {
        // Pushes of every length at every alignment against a plain Vec of everything.
        let mut ring = LogRing::<13>::new();
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
            ring.push(&chunk);
            all.extend_from_slice(&chunk);
            assert_eq!(ring.written(), all.len() as u64);
            let oldest = all.len().saturating_sub(13);
            assert_eq!(ring.oldest(), oldest as u64);
            let from = (step as usize * 5) % (all.len() + 1);
            let mut out = [0u8; 9];
            let (n, next) = ring.read(from as u64, &mut out);
            let start = from.max(oldest);
            let expect = &all[start..(start + 9).min(all.len())];
            assert_eq!(&out[..n], expect);
            assert_eq!(next, (start + n) as u64);
        }
    }
}
