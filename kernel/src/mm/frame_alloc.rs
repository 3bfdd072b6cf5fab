//! The physical frame allocator: one bit per 4 KiB frame of the machine.
//!
//! Boot computes the free memory once ([`free_ranges`]: RAM from the multiboot2 memory
//! map minus the hypervisor image, the boot modules, the first MiB and anything else in
//! use), takes the early allocations straight out of that list ([`carve`], which is also
//! where the bitmap's own storage comes from), then hands the rest to a
//! [`FrameAllocator`]. Nothing here allocates: the ranges live in fixed-capacity vectors
//! and the bitmap is storage the caller carved.
//!
//! Frames this allocator never managed (the image, modules, firmware, MMIO) can never be
//! freed into it, so a stray `free` cannot turn a reserved frame into a free one.

use core::fmt;

use super::{align_up, Mfn, PhysRange, PAGE_SHIFT, PAGE_SIZE};

/// The most disjoint free ranges kept; a PC's memory map has a handful.
pub const MAX_FREE_RANGES: usize = 64;

/// A sorted list of disjoint, non-adjacent, page-aligned free ranges.
pub type FreeRanges = heapless::Vec<PhysRange, MAX_FREE_RANGES>;

const BITS: u64 = u64::BITS as u64;

/// A run of free frames: first frame number and length.
type Run = (u64, u64);

/// The free memory: every RAM range shrunk to whole pages, minus every reserved range
/// grown to whole pages, sorted by address, with overlapping and adjacent ranges merged
/// and empty ones dropped.
///
/// Reserved ranges should include the memory map's non-RAM entries too when the firmware
/// may have reported overlapping entries, so that a region claimed both ways is treated
/// as reserved.
///
/// If more than [`MAX_FREE_RANGES`] disjoint ranges remain, the smallest are left out:
/// that memory is lost to the allocator (never handed out), which is the safe way to fail.
pub fn free_ranges(ram: &[PhysRange], reserved: &[PhysRange]) -> FreeRanges {
    let mut out = FreeRanges::new();
    for ram in ram {
        let ram = ram.shrink_to_pages();
        let mut cursor = ram.start;
        while cursor < ram.end {
            // Skip past whatever reserved range covers the cursor...
            let covered_to = reserved
                .iter()
                .map(PhysRange::grow_to_pages)
                .filter(|r| r.contains(cursor))
                .map(|r| r.end)
                .max();
            if let Some(end) = covered_to {
                cursor = end;
                continue;
            }
            // ... then the free piece runs to the next reserved start or the RAM's end.
            let stop = reserved
                .iter()
                .map(PhysRange::grow_to_pages)
                .filter(|r| !r.is_empty() && r.start > cursor && r.start < ram.end)
                .map(|r| r.start)
                .min()
                .unwrap_or(ram.end);
            insert_merged(&mut out, PhysRange::new(cursor, stop));
            cursor = stop;
        }
    }
    out
}

/// Adds `piece` to a sorted, merged list, merging it with the ranges it overlaps or
/// touches. When the list is full, the smallest range (the lowest of equals) gives way if
/// `piece` is larger; otherwise `piece` is dropped.
fn insert_merged(list: &mut FreeRanges, piece: PhysRange) {
    if piece.is_empty() {
        return;
    }
    let mut merged = piece;
    let mut i = 0;
    while i < list.len() {
        let r = list[i];
        if r.start <= merged.end && merged.start <= r.end {
            merged = PhysRange::new(r.start.min(merged.start), r.end.max(merged.end));
            list.remove(i);
        } else {
            i += 1;
        }
    }
    if list.is_full() {
        let smallest = list
            .iter()
            .enumerate()
            .min_by_key(|(_, r)| r.len())
            .map(|(i, r)| (i, r.len()));
        match smallest {
            Some((i, len)) if len < merged.len() => {
                list.remove(i);
            }
            _ => return,
        }
    }
    let pos = list
        .iter()
        .position(|r| r.start > merged.start)
        .unwrap_or(list.len());
    // Cannot fail: the list had room or one range was just removed.
    let _ = list.insert(pos, merged);
}

/// Takes `bytes` (rounded up to whole pages) out of the lowest free range with room for
/// them at or above `above`, before the allocator exists (for the bitmap itself and the
/// early page tables). Returns `None` for 0 bytes or when nothing fits; `free` is then
/// unchanged.
///
/// When the chunk comes out of the middle of a range and `free` is full, the smaller of
/// the two leftovers is given up (lost, never handed out).
pub fn carve(free: &mut FreeRanges, bytes: u64, above: u64) -> Option<PhysRange> {
    if bytes == 0 {
        return None;
    }
    let size = bytes.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1);
    let (i, start) = free
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let start = align_up(r.start.max(above), PAGE_SIZE);
            let end = start.checked_add(size)?;
            (end <= r.end).then_some((i, start))
        })
        .min_by_key(|&(_, start)| start)?;
    let range = free[i];
    let chunk = PhysRange::new(start, start + size);
    let below = PhysRange::new(range.start, chunk.start);
    let after = PhysRange::new(chunk.end, range.end);
    match (below.is_empty(), after.is_empty()) {
        (true, true) => {
            free.remove(i);
        }
        (true, false) => free[i] = after,
        (false, true) => free[i] = below,
        (false, false) => {
            free[i] = below;
            if free.insert(i + 1, after).is_err() && after.len() > below.len() {
                free[i] = after;
            }
        }
    }
    Some(chunk)
}

/// Why a frame could not be freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The frame is already free.
    DoubleFree(Mfn),
    /// The frame was never free memory of this allocator (reserved, MMIO, or beyond it).
    OutOfRange(Mfn),
}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreeError::DoubleFree(mfn) => write!(f, "{mfn} freed twice"),
            FreeError::OutOfRange(mfn) => {
                write!(f, "{mfn} is not memory the frame allocator manages")
            }
        }
    }
}

/// Why [`FrameAllocator::alloc_extents`] failed (it then took nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentError {
    NotEnoughFrames {
        wanted: u64,
        free: u64,
    },
    /// Enough frames are free, but in more runs than the output list can hold.
    TooFragmented,
}

impl fmt::Display for ExtentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtentError::NotEnoughFrames { wanted, free } => write!(
                f,
                "not enough free memory: {wanted} frames wanted, {free} free"
            ),
            ExtentError::TooFragmented => f.write_str(
                "free memory is too fragmented: the frames do not fit in the allowed number of extents",
            ),
        }
    }
}

/// A bitmap allocator of 4 KiB frames; bit set = frame free.
pub struct FrameAllocator<'a> {
    bitmap: &'a mut [u64],
    /// The page-aligned ranges that were free at initialisation, clipped to the bitmap's
    /// reach: the only frames `free` accepts.
    managed: FreeRanges,
    /// Frames the bitmap covers, from frame 0.
    frames: u64,
    free: u64,
    managed_frames: u64,
    /// Where the next single-frame search starts (next fit).
    next: u64,
}

impl<'a> FrameAllocator<'a> {
    /// The number of `u64` bitmap words needed to cover every frame below `max_addr`.
    pub fn bitmap_words(max_addr: u64) -> usize {
        let frames = max_addr.div_ceil(PAGE_SIZE);
        usize::try_from(frames.div_ceil(BITS)).unwrap_or(usize::MAX)
    }

    /// An allocator over `bitmap` whose free frames are those in `free` (which should
    /// come from [`free_ranges`] after any [`carve`]s). The bitmap is cleared first;
    /// frames beyond its reach are ignored, and so are the smallest ranges if `free`
    /// holds more than [`MAX_FREE_RANGES`] disjoint ones.
    pub fn new(bitmap: &'a mut [u64], free: &[PhysRange]) -> Self {
        bitmap.fill(0);
        let frames = (bitmap.len() as u64).saturating_mul(BITS);
        let reach = frames.saturating_mul(PAGE_SIZE);
        let mut managed = FreeRanges::new();
        for range in free {
            let range = range.shrink_to_pages();
            insert_merged(
                &mut managed,
                PhysRange::new(range.start, range.end.min(reach)),
            );
        }
        let mut allocator = FrameAllocator {
            bitmap,
            managed,
            frames,
            free: 0,
            managed_frames: 0,
            next: 0,
        };
        for i in 0..allocator.managed.len() {
            let range = allocator.managed[i];
            let (start, end) = (range.start >> PAGE_SHIFT, range.end >> PAGE_SHIFT);
            allocator.mark(start, end, true);
            allocator.managed_frames += end - start;
        }
        allocator.free = allocator.managed_frames;
        allocator
    }

    /// One frame: the first free one at or after the last one handed out, wrapping
    /// around, so a fresh allocator gives the lowest address first and recently freed
    /// frames are not immediately reused.
    pub fn alloc(&mut self) -> Option<Mfn> {
        let frame = self
            .find_free(self.next, self.frames)
            .or_else(|| self.find_free(0, self.next.min(self.frames)))?;
        self.take(frame, 1);
        self.next = frame + 1;
        Some(Mfn(frame))
    }

    /// `count` contiguous frames whose first frame number is a multiple of `align_frames`
    /// (a power of two), at the lowest such place. `None` when there is none, when
    /// `count` is 0 or when `align_frames` is not a power of two.
    pub fn alloc_contiguous(&mut self, count: u64, align_frames: u64) -> Option<Mfn> {
        if count == 0 || !align_frames.is_power_of_two() {
            return None;
        }
        let mut from = 0;
        loop {
            let free = self.find_free(from, self.frames)?;
            let start = free.checked_add(align_frames - 1)? & !(align_frames - 1);
            let end = start.checked_add(count)?;
            if end > self.frames {
                return None;
            }
            match self.find_used(start, end) {
                None => {
                    self.take(start, count);
                    return Some(Mfn(start));
                }
                Some(used) => from = used + 1,
            }
        }
    }

    /// One frame lying entirely below `limit_addr` (for hardware that cannot address
    /// more). It is the highest such frame, so the scarcer low memory stays available to
    /// requests with tighter limits.
    pub fn alloc_below(&mut self, limit_addr: u64) -> Option<Mfn> {
        let limit = (limit_addr >> PAGE_SHIFT).min(self.frames);
        let frame = self.find_last_free(limit)?;
        self.take(frame, 1);
        Some(Mfn(frame))
    }

    /// Returns a frame. Only frames that were free at initialisation are accepted.
    pub fn free(&mut self, mfn: Mfn) -> Result<(), FreeError> {
        if !self.manages(mfn) {
            return Err(FreeError::OutOfRange(mfn));
        }
        if self.is_free(mfn) {
            return Err(FreeError::DoubleFree(mfn));
        }
        self.mark(mfn.0, mfn.0 + 1, true);
        self.free += 1;
        Ok(())
    }

    pub fn free_frames(&self) -> u64 {
        self.free
    }

    /// Frames that were free at initialisation (the most that can ever be free).
    pub fn managed_frames(&self) -> u64 {
        self.managed_frames
    }

    /// The ranges that were free at initialisation.
    pub fn managed_ranges(&self) -> &[PhysRange] {
        &self.managed
    }

    pub fn is_free(&self, mfn: Mfn) -> bool {
        mfn.0 < self.frames && self.bitmap[word(mfn.0)] & bit(mfn.0) != 0
    }

    /// Whether the frame was free memory at initialisation.
    pub fn manages(&self, mfn: Mfn) -> bool {
        // Checked first so that `addr` cannot wrap for a huge frame number.
        mfn.0 < self.frames && self.managed.iter().any(|r| r.contains(mfn.addr()))
    }

    /// Takes `frames` frames in as few contiguous runs as possible and appends them to
    /// `out`, sorted by address. Largest runs go first, which minimises their number; the
    /// last, partial run comes from the smallest run that holds it whole (best fit), so
    /// big runs stay whole for later. On failure everything taken by this call is given
    /// back and `out` is as it was.
    pub fn alloc_extents<const N: usize>(
        &mut self,
        frames: u64,
        out: &mut heapless::Vec<PhysRange, N>,
    ) -> Result<(), ExtentError> {
        if frames > self.free {
            return Err(ExtentError::NotEnoughFrames {
                wanted: frames,
                free: self.free,
            });
        }
        let first = out.len();
        let mut remaining = frames;
        while remaining > 0 {
            let (largest, best_fit) = self.survey_runs(remaining);
            let (start, len) = match (best_fit, largest) {
                (Some((start, _)), _) => (start, remaining),
                (None, Some(run)) => run,
                // Cannot happen while `remaining <= self.free`; refuse rather than loop.
                (None, None) => {
                    self.give_back(out, first);
                    return Err(ExtentError::NotEnoughFrames {
                        wanted: frames,
                        free: self.free,
                    });
                }
            };
            let run = PhysRange::new(start << PAGE_SHIFT, (start + len) << PAGE_SHIFT);
            if out.push(run).is_err() {
                self.give_back(out, first);
                return Err(ExtentError::TooFragmented);
            }
            self.take(start, len);
            remaining -= len;
        }
        out[first..].sort_unstable();
        Ok(())
    }

    /// Frees the runs `out[first..]` and removes them from `out`.
    fn give_back<const N: usize>(&mut self, out: &mut heapless::Vec<PhysRange, N>, first: usize) {
        for i in first..out.len() {
            let run = out[i];
            let (start, end) = (run.start >> PAGE_SHIFT, run.end >> PAGE_SHIFT);
            self.mark(start, end, true);
            self.free += end - start;
        }
        out.truncate(first);
    }

    /// The largest free run `(start, len)` (the lowest of equals), and the smallest run
    /// of at least `wanted` frames (the lowest of equals), if any.
    fn survey_runs(&self, wanted: u64) -> (Option<Run>, Option<Run>) {
        let mut largest: Option<Run> = None;
        let mut best_fit: Option<Run> = None;
        let mut from = 0;
        while let Some(start) = self.find_free(from, self.frames) {
            let end = self.find_used(start, self.frames).unwrap_or(self.frames);
            let len = end - start;
            if largest.is_none_or(|(_, l)| len > l) {
                largest = Some((start, len));
            }
            if len >= wanted && best_fit.is_none_or(|(_, l)| len < l) {
                best_fit = Some((start, len));
            }
            from = end;
        }
        (largest, best_fit)
    }

    /// Marks frames `[start, end)` used.
    fn take(&mut self, start: u64, count: u64) {
        self.mark(start, start + count, false);
        self.free -= count;
    }

    /// Sets (free) or clears (used) the bits of frames `[start, end)`, a word at a time.
    fn mark(&mut self, start: u64, end: u64, free: bool) {
        let mut frame = start;
        while frame < end {
            let shift = frame % BITS;
            let n = (end - frame).min(BITS - shift);
            let mask = if n == BITS {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << shift
            };
            let w = &mut self.bitmap[word(frame)];
            if free {
                *w |= mask;
            } else {
                *w &= !mask;
            }
            frame += n;
        }
    }

    /// The first free frame in `[from, to)`.
    fn find_free(&self, from: u64, to: u64) -> Option<u64> {
        self.find(from, to, false)
    }

    /// The first used frame in `[from, to)`.
    fn find_used(&self, from: u64, to: u64) -> Option<u64> {
        self.find(from, to, true)
    }

    fn find(&self, from: u64, to: u64, used: bool) -> Option<u64> {
        let mut frame = from;
        while frame < to {
            let raw = self.bitmap[word(frame)];
            let bits = if used { !raw } else { raw } >> (frame % BITS);
            if bits != 0 {
                let found = frame + u64::from(bits.trailing_zeros());
                return (found < to).then_some(found);
            }
            frame = (frame / BITS + 1) * BITS;
        }
        None
    }

    /// The last free frame below `to`.
    fn find_last_free(&self, to: u64) -> Option<u64> {
        let mut end = to;
        while end > 0 {
            let w = word(end - 1);
            let base = w as u64 * BITS;
            let valid = end - base;
            let mask = if valid == BITS {
                u64::MAX
            } else {
                (1u64 << valid) - 1
            };
            let bits = self.bitmap[w] & mask;
            if bits != 0 {
                return Some(base + (BITS - 1 - u64::from(bits.leading_zeros())));
            }
            end = base;
        }
        None
    }
}

/// The bitmap word of a frame. Callers only pass frames below `frames`, which came from
/// the bitmap's length, so the index fits in usize.
fn word(frame: u64) -> usize {
    (frame / BITS) as usize
}

fn bit(frame: u64) -> u64 {
    1 << (frame % BITS)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;

    fn r(start: u64, end: u64) -> PhysRange {
        PhysRange::new(start, end)
    }

    /// A machine like QEMU's with 64 MiB: low memory, the BIOS hole, the rest.
    fn machine_ram() -> [PhysRange; 2] {
        [r(0, 639 * KIB), r(MIB, 64 * MIB)]
    }

    /// The first MiB, the hypervisor image and two boot modules (unaligned ends).
    fn machine_reserved() -> [PhysRange; 4] {
        [
            r(0, MIB),
            r(MIB, 3 * MIB + 0x123),
            r(16 * MIB, 24 * MIB + 1),
            r(24 * MIB + 0x2000, 30 * MIB + 0x800),
        ]
    }

    #[test]
    fn free_ranges_of_a_machine() {
        let free = free_ranges(&machine_ram(), &machine_reserved());
        assert_eq!(
            free.as_slice(),
            &[
                r(3 * MIB + 0x1000, 16 * MIB),
                r(24 * MIB + 0x1000, 24 * MIB + 0x2000),
                r(30 * MIB + 0x1000, 64 * MIB),
            ]
        );
    }

    #[test]
    fn free_ranges_rounding_merging_and_sorting() {
        // Unaligned RAM shrinks; out of order, overlapping and adjacent RAM merges.
        let ram = [
            r(0x10_0000, 0x20_0000),
            r(0x1800, 0x4fff),
            r(0x3000, 0x8000),
            r(0x20_0000, 0x30_0000),
            r(0x40_0000, 0x40_0fff),
        ];
        assert_eq!(
            free_ranges(&ram, &[]).as_slice(),
            &[r(0x2000, 0x8000), r(0x10_0000, 0x30_0000)]
        );
        // A reserved range spanning several RAM ranges, and one covering a RAM range
        // exactly; an empty reserved range changes nothing.
        let reserved = [
            r(0x7001, 0x15_0000),
            r(0x20_0000, 0x30_0000),
            r(0x2000, 0x2000),
        ];
        assert_eq!(
            free_ranges(&ram, &reserved).as_slice(),
            &[r(0x2000, 0x7000), r(0x15_0000, 0x20_0000)]
        );
        // Overlapping reserved ranges.
        let reserved = [r(0x3000, 0x5000), r(0x4000, 0x6000), r(0x5800, 0x5900)];
        assert_eq!(
            free_ranges(&[r(0x2000, 0x8000)], &reserved).as_slice(),
            &[r(0x2000, 0x3000), r(0x6000, 0x8000)]
        );
        assert!(free_ranges(&[], &[]).is_empty());
        assert!(free_ranges(&[r(0, MIB)], &[r(0, u64::MAX)]).is_empty());
        assert!(free_ranges(&[r(5, 4000)], &[]).is_empty());
    }

    #[test]
    fn free_ranges_at_the_top_of_the_address_space() {
        let top = !(PAGE_SIZE - 1);
        let ram = [r(top - 4 * PAGE_SIZE, u64::MAX)];
        let reserved = [r(top - PAGE_SIZE, u64::MAX)];
        assert_eq!(
            free_ranges(&ram, &reserved).as_slice(),
            &[r(top - 4 * PAGE_SIZE, top - PAGE_SIZE)]
        );
    }

    #[test]
    fn free_ranges_keeps_the_largest_when_full() {
        // 100 disjoint RAM ranges of 1..=100 pages, in a scrambled order.
        let ram: Vec<PhysRange> = (0..100u64)
            .map(|i| (i * 37) % 100)
            .map(|i| r(i * MIB, i * MIB + (i + 1) * PAGE_SIZE))
            .collect();
        let free = free_ranges(&ram, &[]);
        assert_eq!(free.len(), MAX_FREE_RANGES);
        let expected: Vec<PhysRange> = (36..100u64)
            .map(|i| r(i * MIB, i * MIB + (i + 1) * PAGE_SIZE))
            .collect();
        assert_eq!(free.as_slice(), expected.as_slice());
    }

    #[test]
    fn carve_takes_from_the_lowest_range_with_room() {
        let mut free = free_ranges(&machine_ram(), &machine_reserved());
        // The 4 KiB gap at 24 MiB is too small; the range above 3 MiB has room.
        let bitmap = carve(&mut free, 5000, 0).unwrap();
        assert_eq!(bitmap, r(3 * MIB + 0x1000, 3 * MIB + 0x3000));
        assert_eq!(free[0], r(3 * MIB + 0x3000, 16 * MIB));
        // `above` skips lower memory and splits a range in two.
        let high = carve(&mut free, MIB, 40 * MIB + 1).unwrap();
        assert_eq!(high, r(40 * MIB + 0x1000, 41 * MIB + 0x1000));
        assert_eq!(
            free.as_slice(),
            &[
                r(3 * MIB + 0x3000, 16 * MIB),
                r(24 * MIB + 0x1000, 24 * MIB + 0x2000),
                r(30 * MIB + 0x1000, 40 * MIB + 0x1000),
                r(41 * MIB + 0x1000, 64 * MIB),
            ]
        );
        // An exact fit removes the range.
        assert_eq!(
            carve(&mut free, 1, 24 * MIB),
            Some(r(24 * MIB + 0x1000, 24 * MIB + 0x2000))
        );
        assert_eq!(free.len(), 3);
        // Taking the tail of a range.
        assert_eq!(carve(&mut free, MIB, 63 * MIB), Some(r(63 * MIB, 64 * MIB)));
        assert_eq!(free[2], r(41 * MIB + 0x1000, 63 * MIB));
    }

    #[test]
    fn carve_failures_leave_the_list_alone() {
        let mut free = free_ranges(&machine_ram(), &machine_reserved());
        let before = free.clone();
        assert_eq!(carve(&mut free, 0, 0), None);
        assert_eq!(carve(&mut free, 64 * MIB, 0), None);
        assert_eq!(carve(&mut free, PAGE_SIZE, 64 * MIB), None);
        assert_eq!(carve(&mut free, u64::MAX, 0), None);
        assert_eq!(carve(&mut free, PAGE_SIZE, u64::MAX), None);
        assert_eq!(free, before);
    }

    #[test]
    fn carve_split_on_a_full_list_keeps_the_larger_leftover() {
        let mut free = FreeRanges::new();
        for i in 0..MAX_FREE_RANGES as u64 {
            free.push(r(i * MIB, i * MIB + 16 * PAGE_SIZE)).unwrap();
        }
        // Split the first range 2 pages / 1 page / 13 pages: the 2-page piece is lost.
        let chunk = carve(&mut free, PAGE_SIZE, 2 * PAGE_SIZE).unwrap();
        assert_eq!(chunk, r(2 * PAGE_SIZE, 3 * PAGE_SIZE));
        assert_eq!(free[0], r(3 * PAGE_SIZE, 16 * PAGE_SIZE));
        assert_eq!(free.len(), MAX_FREE_RANGES);
        // Split 13 pages / 1 page / 2 pages: the 2-page piece is lost.
        let chunk = carve(&mut free, PAGE_SIZE, MIB + 13 * PAGE_SIZE).unwrap();
        assert_eq!(chunk, r(MIB + 13 * PAGE_SIZE, MIB + 14 * PAGE_SIZE));
        assert_eq!(free[1], r(MIB, MIB + 13 * PAGE_SIZE));
    }

    #[test]
    fn bitmap_words_cover_max_addr() {
        assert_eq!(FrameAllocator::bitmap_words(0), 0);
        assert_eq!(FrameAllocator::bitmap_words(1), 1);
        assert_eq!(FrameAllocator::bitmap_words(64 * PAGE_SIZE), 1);
        assert_eq!(FrameAllocator::bitmap_words(64 * PAGE_SIZE + 1), 2);
        assert_eq!(FrameAllocator::bitmap_words(4 << 30), (1 << 20) / 64);
        assert_eq!(FrameAllocator::bitmap_words(u64::MAX), 1 << 46);
    }

    /// The machine with its bitmap carved above the image, like boot does.
    fn machine() -> (FreeRanges, PhysRange, Vec<u64>) {
        let ram = machine_ram();
        let mut free = free_ranges(&ram, &machine_reserved());
        let words = FrameAllocator::bitmap_words(ram[1].end);
        let bitmap_range = carve(&mut free, words as u64 * 8, 0).unwrap();
        (free, bitmap_range, vec![u64::MAX; words])
    }

    #[test]
    fn never_hands_out_a_reserved_frame() {
        let (free, bitmap_range, mut bitmap) = machine();
        let mut fa = FrameAllocator::new(&mut bitmap, &free);
        let expected: u64 = free.iter().map(|r| r.len() / PAGE_SIZE).sum();
        assert_eq!(fa.managed_frames(), expected);
        assert_eq!(fa.free_frames(), expected);
        assert_eq!(fa.managed_ranges(), free.as_slice());
        let mut seen = BTreeSet::new();
        while let Some(mfn) = fa.alloc() {
            let addr = mfn.addr();
            assert!(addr >= 3 * MIB + 0x1000, "{mfn}: first MiB or image");
            assert!(!bitmap_range.contains(addr), "{mfn}: the bitmap");
            assert!(
                !r(16 * MIB, 24 * MIB + 0x1000).contains(addr),
                "{mfn}: module"
            );
            assert!(
                !r(24 * MIB + 0x2000, 30 * MIB + 0x1000).contains(addr),
                "{mfn}: module"
            );
            assert!(addr < 64 * MIB, "{mfn}: beyond RAM");
            assert!(seen.insert(mfn), "{mfn} twice");
            assert!(!fa.is_free(mfn));
        }
        assert_eq!(seen.len() as u64, expected);
        assert_eq!(fa.free_frames(), 0);
        assert_eq!(fa.alloc_contiguous(1, 1), None);
        assert_eq!(fa.alloc_below(u64::MAX), None);
    }

    #[test]
    fn alloc_is_next_fit_from_the_lowest_address() {
        let free = [r(0x10_000, 0x14_000)];
        let mut bitmap = [0u64; 1];
        let mut fa = FrameAllocator::new(&mut bitmap, &free);
        assert_eq!(fa.managed_frames(), 4);
        assert_eq!(fa.alloc(), Some(Mfn(0x10)));
        assert_eq!(fa.alloc(), Some(Mfn(0x11)));
        fa.free(Mfn(0x10)).unwrap();
        // Not immediately reused: the search goes on from where it stopped...
        assert_eq!(fa.alloc(), Some(Mfn(0x12)));
        assert_eq!(fa.alloc(), Some(Mfn(0x13)));
        // ... and wraps around.
        assert_eq!(fa.alloc(), Some(Mfn(0x10)));
        assert_eq!(fa.alloc(), None);
        assert_eq!(fa.free_frames(), 0);
    }

    #[test]
    fn free_checks() {
        let (free, bitmap_range, mut bitmap) = machine();
        let mut fa = FrameAllocator::new(&mut bitmap, &free);
        let mfn = fa.alloc().unwrap();
        let before = fa.free_frames();
        assert_eq!(fa.free(mfn), Ok(()));
        assert_eq!(fa.free_frames(), before + 1);
        assert!(fa.is_free(mfn));
        assert_eq!(fa.free(mfn), Err(FreeError::DoubleFree(mfn)));
        assert_eq!(fa.free_frames(), before + 1);
        // Never-free frames: the first MiB, the image, a module, the bitmap, beyond RAM,
        // beyond the bitmap, and a frame number so large its address would wrap.
        for bad in [
            Mfn(0),
            Mfn::containing(2 * MIB),
            Mfn::containing(20 * MIB),
            Mfn::containing(bitmap_range.start),
            Mfn::containing(64 * MIB),
            Mfn(1 << 40),
            Mfn((1 << 52) + mfn.0),
            Mfn(u64::MAX),
        ] {
            assert_eq!(fa.free(bad), Err(FreeError::OutOfRange(bad)), "{bad}");
            assert!(!fa.is_free(bad));
            assert!(!fa.manages(bad));
        }
        assert_eq!(fa.free_frames(), before + 1);
    }

    #[test]
    fn frames_beyond_the_bitmap_are_ignored() {
        // One word covers frames 0..64; the range runs to frame 100.
        let mut bitmap = [0u64; 1];
        let mut fa = FrameAllocator::new(&mut bitmap, &[r(60 * PAGE_SIZE, 100 * PAGE_SIZE)]);
        assert_eq!(fa.managed_frames(), 4);
        assert_eq!(fa.managed_ranges(), &[r(60 * PAGE_SIZE, 64 * PAGE_SIZE)]);
        assert_eq!(fa.free(Mfn(70)), Err(FreeError::OutOfRange(Mfn(70))));
        for _ in 0..4 {
            assert!(fa.alloc().is_some_and(|m| m.0 < 64));
        }
        assert_eq!(fa.alloc(), None);
    }

    #[test]
    fn new_clears_stale_bits_and_handles_unaligned_overlapping_input() {
        let mut bitmap = [u64::MAX; 2];
        let fa = FrameAllocator::new(
            &mut bitmap,
            &[r(0x1800, 0x5000), r(0x4000, 0x8000), r(0x9000, 0x9000)],
        );
        assert_eq!(fa.managed_frames(), 6);
        assert_eq!(fa.free_frames(), 6);
        assert!(!fa.is_free(Mfn(1)));
        assert!(fa.is_free(Mfn(2)));
        assert!(fa.is_free(Mfn(7)));
        assert!(!fa.is_free(Mfn(8)));
        assert!(!fa.is_free(Mfn(127)));
        assert_eq!(bitmap, [0b1111_1100, 0]);
    }

    #[test]
    fn empty_allocator() {
        let mut bitmap: [u64; 0] = [];
        let mut fa = FrameAllocator::new(&mut bitmap, &[r(0, MIB)]);
        assert_eq!(fa.managed_frames(), 0);
        assert_eq!(fa.alloc(), None);
        assert_eq!(fa.alloc_below(MIB), None);
        assert_eq!(fa.alloc_contiguous(1, 1), None);
        assert_eq!(fa.free(Mfn(0)), Err(FreeError::OutOfRange(Mfn(0))));
        let mut out = heapless::Vec::<PhysRange, 4>::new();
        assert_eq!(fa.alloc_extents(0, &mut out), Ok(()));
        assert!(out.is_empty());
    }

    #[test]
    fn contiguous_and_aligned() {
        // Frames 3..40 and 64..200 free.
        let mut bitmap = [0u64; 4];
        let free = [
            r(3 * PAGE_SIZE, 40 * PAGE_SIZE),
            r(64 * PAGE_SIZE, 200 * PAGE_SIZE),
        ];
        let mut fa = FrameAllocator::new(&mut bitmap, &free);
        assert_eq!(fa.alloc_contiguous(4, 1), Some(Mfn(3)));
        assert_eq!(fa.alloc_contiguous(4, 8), Some(Mfn(8)));
        // 30 frames fit below 40 from 12, but aligned to 16 only from 16 (to 46): next run.
        assert_eq!(fa.alloc_contiguous(30, 16), Some(Mfn(64)));
        // A run spanning a word boundary.
        assert_eq!(fa.alloc_contiguous(70, 1), Some(Mfn(94)));
        assert_eq!(fa.free_frames(), 37 + 136 - 4 - 4 - 30 - 70);
        for f in [3, 6, 8, 11, 64, 93, 94, 163] {
            assert!(!fa.is_free(Mfn(f)), "{f}");
        }
        assert!(fa.is_free(Mfn(7)));
        assert!(fa.is_free(Mfn(164)));
        // Too big, bad alignments, zero count: nothing changes.
        let before = fa.free_frames();
        assert_eq!(fa.alloc_contiguous(37, 1), None);
        assert_eq!(fa.alloc_contiguous(1, 0), None);
        assert_eq!(fa.alloc_contiguous(1, 3), None);
        assert_eq!(fa.alloc_contiguous(0, 1), None);
        assert_eq!(fa.alloc_contiguous(u64::MAX, 1), None);
        assert_eq!(fa.alloc_contiguous(1, 1 << 63), None);
        assert_eq!(fa.free_frames(), before);
        // The remaining 36-frame run (164..200) fits exactly.
        assert_eq!(fa.alloc_contiguous(36, 4), Some(Mfn(164)));
    }

    #[test]
    fn alloc_below_prefers_the_highest_frame_under_the_limit() {
        let mut bitmap = [0u64; 4];
        let free = [
            r(3 * PAGE_SIZE, 40 * PAGE_SIZE),
            r(64 * PAGE_SIZE, 200 * PAGE_SIZE),
        ];
        let mut fa = FrameAllocator::new(&mut bitmap, &free);
        assert_eq!(fa.alloc_below(100 * PAGE_SIZE), Some(Mfn(99)));
        // A limit inside a frame excludes that frame.
        assert_eq!(fa.alloc_below(100 * PAGE_SIZE + 0xfff), Some(Mfn(98)));
        assert_eq!(fa.alloc_below(64 * PAGE_SIZE), Some(Mfn(39)));
        assert_eq!(fa.alloc_below(u64::MAX), Some(Mfn(199)));
        assert_eq!(fa.alloc_below(4 * PAGE_SIZE), Some(Mfn(3)));
        assert_eq!(fa.alloc_below(4 * PAGE_SIZE), None);
        assert_eq!(fa.alloc_below(0), None);
        assert_eq!(fa.free_frames(), 37 + 136 - 5);
    }

    #[test]
    fn extents_one_run_when_possible() {
        let mut bitmap = [0u64; 8];
        // Runs of 10 (frames 10..20), 50 (100..150) and 200 (300..500) frames.
        let free = [
            r(10 * PAGE_SIZE, 20 * PAGE_SIZE),
            r(100 * PAGE_SIZE, 150 * PAGE_SIZE),
            r(300 * PAGE_SIZE, 500 * PAGE_SIZE),
        ];
        let mut fa = FrameAllocator::new(&mut bitmap, &free);
        let mut out = heapless::Vec::<PhysRange, 4>::new();
        // Best fit: the 50-frame run holds 40 frames; the big run stays whole.
        fa.alloc_extents(40, &mut out).unwrap();
        assert_eq!(out.as_slice(), &[r(100 * PAGE_SIZE, 140 * PAGE_SIZE)]);
        assert_eq!(fa.free_frames(), 260 - 40);
        out.clear();
        // 205 frames: the whole 200-run (nothing holds them all), then the last 5 from
        // the lowest of the two 10-frame runs that fit them.
        fa.alloc_extents(205, &mut out).unwrap();
        assert_eq!(
            out.as_slice(),
            &[
                r(10 * PAGE_SIZE, 15 * PAGE_SIZE),
                r(300 * PAGE_SIZE, 500 * PAGE_SIZE)
            ]
        );
        assert_eq!(fa.free_frames(), 15);
    }

    #[test]
    fn extents_across_many_runs() {
        let mut bitmap = [0u64; 8];
        let free = [
            r(10 * PAGE_SIZE, 20 * PAGE_SIZE),
            r(100 * PAGE_SIZE, 150 * PAGE_SIZE),
            r(300 * PAGE_SIZE, 500 * PAGE_SIZE),
        ];
        let mut fa = FrameAllocator::new(&mut bitmap, &free);
        let mut out = heapless::Vec::<PhysRange, 8>::new();
        out.push(r(0, 1)).unwrap(); // the caller's earlier entries stay first
        fa.alloc_extents(255, &mut out).unwrap();
        assert_eq!(
            out.as_slice(),
            &[
                r(0, 1),
                r(10 * PAGE_SIZE, 15 * PAGE_SIZE),
                r(100 * PAGE_SIZE, 150 * PAGE_SIZE),
                r(300 * PAGE_SIZE, 500 * PAGE_SIZE),
            ]
        );
        assert_eq!(fa.free_frames(), 5);
        for f in 15..20 {
            assert!(fa.is_free(Mfn(f)));
        }
        out.truncate(1);
        fa.alloc_extents(5, &mut out).unwrap();
        assert_eq!(out[1], r(15 * PAGE_SIZE, 20 * PAGE_SIZE));
        assert_eq!(fa.free_frames(), 0);
    }

    #[test]
    fn extents_roll_back_on_failure() {
        let mut bitmap = [0u64; 8];
        // 20 runs of 3 frames.
        let free: Vec<PhysRange> = (0..20u64)
            .map(|i| r(i * 8 * PAGE_SIZE, (i * 8 + 3) * PAGE_SIZE))
            .collect();
        let mut fa = FrameAllocator::new(&mut bitmap, &free);
        let taken = fa.alloc().unwrap();
        let snapshot: Vec<bool> = (0..512).map(|f| fa.is_free(Mfn(f))).collect();
        let mut out = heapless::Vec::<PhysRange, 4>::new();
        out.push(r(1, 2)).unwrap();
        assert_eq!(
            fa.alloc_extents(60, &mut out),
            Err(ExtentError::NotEnoughFrames {
                wanted: 60,
                free: 59
            })
        );
        // 10 frames need 4 runs, but only 3 slots are left in `out`.
        assert_eq!(
            fa.alloc_extents(10, &mut out),
            Err(ExtentError::TooFragmented)
        );
        assert_eq!(out.as_slice(), &[r(1, 2)]);
        assert_eq!(fa.free_frames(), 59);
        let now: Vec<bool> = (0..512).map(|f| fa.is_free(Mfn(f))).collect();
        assert_eq!(now, snapshot);
        assert!(!fa.is_free(taken));
        // 9 frames fit in 3 runs.
        fa.alloc_extents(9, &mut out).unwrap();
        assert_eq!(out.len(), 4);
        assert_eq!(fa.free_frames(), 50);
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            FreeError::DoubleFree(Mfn(0x1234)).to_string(),
            "mfn 0x1234 freed twice"
        );
        assert_eq!(
            FreeError::OutOfRange(Mfn(0x10)).to_string(),
            "mfn 0x10 is not memory the frame allocator manages"
        );
        assert_eq!(
            ExtentError::NotEnoughFrames {
                wanted: 10,
                free: 3
            }
            .to_string(),
            "not enough free memory: 10 frames wanted, 3 free"
        );
        assert_eq!(
            ExtentError::TooFragmented.to_string(),
            "free memory is too fragmented: the frames do not fit in the allowed number of extents"
        );
    }

    /// A tiny deterministic generator (xorshift64*), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn matches_a_reference_model() {
        // Frames 0..320 covered; free: 5..70, 90..91, 128..260, 300..320.
        let free = [
            r(5 * PAGE_SIZE, 70 * PAGE_SIZE),
            r(90 * PAGE_SIZE, 91 * PAGE_SIZE),
            r(128 * PAGE_SIZE, 260 * PAGE_SIZE),
            r(300 * PAGE_SIZE, 320 * PAGE_SIZE),
        ];
        let managed: BTreeSet<u64> = free
            .iter()
            .flat_map(|r| (r.start / PAGE_SIZE)..(r.end / PAGE_SIZE))
            .collect();
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut bitmap = [0u64; 5];
            let mut fa = FrameAllocator::new(&mut bitmap, &free);
            let mut model_free = managed.clone();
            let mut held: Vec<u64> = Vec::new();
            for step in 0..2000 {
                match rng.below(7) {
                    0 | 1 => match fa.alloc() {
                        Some(m) => {
                            assert!(model_free.remove(&m.0), "seed {seed} step {step}: {m}");
                            held.push(m.0);
                        }
                        None => assert!(model_free.is_empty()),
                    },
                    2 => {
                        let (count, align) = (1 + rng.below(12), 1 << rng.below(4));
                        let fits = |s: u64| (s..s + count).all(|f| model_free.contains(&f));
                        let expect = (0..320u64).step_by(align as usize).find(|&s| fits(s));
                        let got = fa.alloc_contiguous(count, align).map(|m| m.0);
                        assert_eq!(got, expect, "seed {seed} step {step}");
                        if let Some(s) = got {
                            for f in s..s + count {
                                model_free.remove(&f);
                                held.push(f);
                            }
                        }
                    }
                    3 => {
                        let limit = rng.below(330 * PAGE_SIZE);
                        let expect = model_free.range(..limit / PAGE_SIZE).next_back().copied();
                        let got = fa.alloc_below(limit).map(|m| m.0);
                        assert_eq!(got, expect, "seed {seed} step {step}");
                        if let Some(f) = got {
                            model_free.remove(&f);
                            held.push(f);
                        }
                    }
                    4 => {
                        let wanted = rng.below(40);
                        let mut out = heapless::Vec::<PhysRange, 3>::new();
                        match fa.alloc_extents(wanted, &mut out) {
                            Ok(()) => {
                                let total: u64 = out.iter().map(|r| r.len() / PAGE_SIZE).sum();
                                assert_eq!(total, wanted);
                                for run in &out {
                                    for f in run.start / PAGE_SIZE..run.end / PAGE_SIZE {
                                        assert!(model_free.remove(&f), "seed {seed} step {step}");
                                        held.push(f);
                                    }
                                }
                            }
                            Err(ExtentError::NotEnoughFrames { wanted: w, free }) => {
                                assert_eq!(w, wanted);
                                assert_eq!(free, model_free.len() as u64);
                                assert!(wanted > free);
                            }
                            Err(ExtentError::TooFragmented) => assert!(out.is_empty()),
                        }
                    }
                    _ => {
                        if !held.is_empty() {
                            let i = rng.below(held.len() as u64) as usize;
                            let f = held.swap_remove(i);
                            assert_eq!(fa.free(Mfn(f)), Ok(()));
                            model_free.insert(f);
                            assert_eq!(fa.free(Mfn(f)), Err(FreeError::DoubleFree(Mfn(f))));
                        }
                        let f = rng.below(340);
                        if !managed.contains(&f) {
                            assert_eq!(fa.free(Mfn(f)), Err(FreeError::OutOfRange(Mfn(f))));
                        }
                    }
                }
                assert_eq!(
                    fa.free_frames(),
                    model_free.len() as u64,
                    "seed {seed} step {step}"
                );
            }
            for f in 0..340 {
                assert_eq!(
                    fa.is_free(Mfn(f)),
                    model_free.contains(&f),
                    "seed {seed} frame {f}"
                );
            }
            assert_eq!(fa.managed_frames(), managed.len() as u64);
        }
    }
}
