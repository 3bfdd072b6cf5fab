//! Split virtqueues (2.6): the driver's side. The rings live in DMA memory shared with the
//! device, reached through [`RingMemory`] (volatile accesses in the hypervisor, a byte
//! vector in the tests); the queue's own bookkeeping (free descriptors, which chains are
//! in flight, how many bytes each may receive) stays in hypervisor memory the device
//! cannot touch, so a device that scribbles on the rings can at worst fail its own
//! requests.

use alloc::{vec, vec::Vec};

/// Descriptor flags (2.6.5).
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
/// Used-ring flag: the device does not need notifications (2.6.10).
const USED_F_NO_NOTIFY: u16 = 1;

/// The largest queue we set up (the device may offer less).
pub const MAX_QUEUE_SIZE: u16 = 256;

/// Access to the queue's ring memory: byte offsets from its start. Implementations must
/// make each access one load or store the device sees (volatile), and `fence` a full
/// memory barrier between the driver's and the device's views.
pub trait RingMemory {
    fn read16(&self, offset: usize) -> u16;
    fn read32(&self, offset: usize) -> u32;
    fn write16(&self, offset: usize, value: u16);
    fn write32(&self, offset: usize, value: u32);
    fn write64(&self, offset: usize, value: u64);
    fn fence(&self);
}

/// Where the three parts of a split queue of `size` entries sit in one allocation (2.6:
/// descriptor table 16-aligned, available ring 2-aligned, used ring 4-aligned; the used
/// ring gets its own page as legacy layouts did, which costs nothing here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    pub size: u16,
    pub desc: usize,
    pub avail: usize,
    pub used: usize,
    /// Total bytes, a whole number of 4 KiB pages.
    pub bytes: usize,
}

impl QueueLayout {
    pub fn new(size: u16) -> QueueLayout {
        let n = size as usize;
        let desc = 0;
        let avail = 16 * n;
        // flags, idx, ring[n], used_event
        let avail_end = avail + 6 + 2 * n;
        let used = avail_end.div_ceil(4096) * 4096;
        // flags, idx, ring[n] of (id u32, len u32), avail_event
        let used_end = used + 6 + 8 * n;
        QueueLayout {
            size,
            desc,
            avail,
            used,
            bytes: used_end.div_ceil(4096) * 4096,
        }
    }
}

/// The queue size to use given the device's maximum: a power of two (2.6: "Queue Size
/// value is always a power of 2" for split queues), at most [`MAX_QUEUE_SIZE`]; `None`
/// when the device offers no queue (0).
pub fn choose_size(device_max: u16) -> Option<u16> {
    if device_max == 0 {
        return None;
    }
    let cap = device_max.min(MAX_QUEUE_SIZE);
    // The largest power of two not above `cap`.
    Some(1 << (15 - cap.leading_zeros()))
}

/// One buffer of a chain: `len` bytes at machine address `addr`, read by the device, or
/// written by it when `device_writes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
    pub device_writes: bool,
}

/// Why a chain was not added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddError {
    /// Not enough free descriptors now: retry once a completion frees some.
    Full,
    /// Zero segments, or more than the queue has descriptors.
    BadChain,
}

/// A chain the device returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// The chain's head descriptor (what [`SplitQueue::add`] returned).
    pub id: u16,
    /// Bytes the device says it wrote, at most the chain's device-writable total.
    pub len: u32,
    /// The device claimed more than the chain's writable bytes (`len` is clamped).
    pub overrun: bool,
}

/// The device broke the used-ring rules: the queue is not to be trusted any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsedError {
    /// The used index moved by more than the queue's size since we last looked.
    IndexJump { last: u16, now: u16 },
    /// An entry names a descriptor that is no chain's head, or not in flight.
    BadId(u32),
}

impl core::fmt::Display for UsedError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            UsedError::IndexJump { last, now } => {
                write!(f, "used index jumped from {last} to {now}")
            }
            UsedError::BadId(id) => write!(f, "used entry for id {id}, which is not in flight"),
        }
    }
}

/// The driver's state of one split virtqueue.
#[derive(Debug)]
pub struct SplitQueue {
    layout: QueueLayout,
    /// Our copy of each descriptor's `next` link (the free list, and the chains in flight).
    next: Vec<u16>,
    free_head: u16,
    num_free: u16,
    /// Per head in flight: descriptors in its chain (0: not a head in flight).
    chain_len: Vec<u16>,
    /// Per head in flight: bytes the device may write.
    writable: Vec<u32>,
    /// The next available-ring slot (free-running, as the ring's idx).
    avail_idx: u16,
    /// The next used-ring entry to look at.
    last_used: u16,
}

impl SplitQueue {
    /// A queue of `size` entries (a power of two, ≤ [`MAX_QUEUE_SIZE`]) over `mem`, which
    /// must be [`QueueLayout::new`]`(size).bytes` long; writes the rings' initial state
    /// (every flag and index zero: interrupts wanted).
    pub fn new(size: u16, mem: &impl RingMemory) -> SplitQueue {
        let layout = QueueLayout::new(size);
        let n = size as usize;
        for off in (0..layout.bytes).step_by(4) {
            mem.write32(off, 0);
        }
        SplitQueue {
            layout,
            next: (1..=size).collect(),
            free_head: 0,
            num_free: size,
            chain_len: vec![0; n],
            writable: vec![0; n],
            avail_idx: 0,
            last_used: 0,
        }
    }

    pub fn layout(&self) -> QueueLayout {
        self.layout
    }

    pub fn size(&self) -> u16 {
        self.layout.size
    }

    /// Free descriptors.
    pub fn free(&self) -> u16 {
        self.num_free
    }

    /// The id the next [`SplitQueue::add`] will return (its head descriptor), if any
    /// descriptor is free: lets the caller fill per-request memory indexed by it first.
    pub fn next_head(&self) -> Option<u16> {
        (self.num_free > 0).then_some(self.free_head)
    }

    /// Chains the device holds.
    pub fn in_flight(&self) -> usize {
        self.chain_len.iter().filter(|&&n| n != 0).count()
    }

    /// Writes a chain of `segments` (device-readable ones first, as 2.6.4.2 requires of
    /// the driver) and makes it available. Returns its head id. The caller notifies the
    /// device if [`SplitQueue::should_notify`].
    pub fn add(&mut self, mem: &impl RingMemory, segments: &[Segment]) -> Result<u16, AddError> {
        let n = segments.len();
        if n == 0 || n > self.layout.size as usize {
            return Err(AddError::BadChain);
        }
        if n > self.num_free as usize {
            return Err(AddError::Full);
        }
        let head = self.free_head;
        let mut d = head;
        let mut writable = 0u32;
        for (i, s) in segments.iter().enumerate() {
            let last = i + 1 == n;
            let mut flags = if last { 0 } else { DESC_F_NEXT };
            if s.device_writes {
                flags |= DESC_F_WRITE;
                writable = writable.saturating_add(s.len);
            }
            let off = self.layout.desc + 16 * d as usize;
            let next = self.next[d as usize];
            mem.write64(off, s.addr);
            mem.write32(off + 8, s.len);
            mem.write16(off + 12, flags);
            mem.write16(off + 14, if last { 0 } else { next });
            if !last {
                d = next;
            }
        }
        self.free_head = self.next[d as usize];
        self.num_free -= n as u16;
        self.chain_len[head as usize] = n as u16;
        self.writable[head as usize] = writable;
        let slot = self.avail_idx % self.layout.size;
        mem.write16(self.layout.avail + 4 + 2 * slot as usize, head);
        // The ring entry before the index that publishes it (2.6.13.3).
        mem.fence();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write16(self.layout.avail + 2, self.avail_idx);
        mem.fence();
        Ok(head)
    }

    /// Whether the device wants a notification after [`SplitQueue::add`] (2.6.10: it may
    /// set NO_NOTIFY in the used ring's flags while it is already processing).
    pub fn should_notify(&self, mem: &impl RingMemory) -> bool {
        mem.read16(self.layout.used) & USED_F_NO_NOTIFY == 0
    }

    /// Whether the device has returned chains we have not taken yet.
    pub fn has_used(&self, mem: &impl RingMemory) -> bool {
        mem.read16(self.layout.used + 2) != self.last_used
    }

    /// Takes the next chain the device returned, freeing its descriptors. `Ok(None)` when
    /// there is none; an error when the device broke the rules (the entry is skipped; the
    /// caller should stop using the device).
    pub fn pop_used(&mut self, mem: &impl RingMemory) -> Result<Option<Used>, UsedError> {
        let now = mem.read16(self.layout.used + 2);
        if now == self.last_used {
            return Ok(None);
        }
        if now.wrapping_sub(self.last_used) > self.layout.size {
            return Err(UsedError::IndexJump {
                last: self.last_used,
                now,
            });
        }
        // The index before the entry it publishes.
        mem.fence();
        let slot = self.last_used % self.layout.size;
        let off = self.layout.used + 4 + 8 * slot as usize;
        let id = mem.read32(off);
        let len = mem.read32(off + 4);
        self.last_used = self.last_used.wrapping_add(1);
        let Some(&count) = self.chain_len.get(id as usize).filter(|&&c| c != 0) else {
            return Err(UsedError::BadId(id));
        };
        let head = id as u16;
        // Back to the free list, following our own links.
        let mut tail = head;
        for _ in 1..count {
            tail = self.next[tail as usize];
        }
        self.next[tail as usize] = self.free_head;
        self.free_head = head;
        self.num_free += count;
        self.chain_len[head as usize] = 0;
        let max = core::mem::take(&mut self.writable[head as usize]);
        Ok(Some(Used {
            id: head,
            len: len.min(max),
            overrun: len > max,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    struct Mem(RefCell<Vec<u8>>);

    impl Mem {
        fn new(size: u16) -> Mem {
            Mem(RefCell::new(vec![0xaa; QueueLayout::new(size).bytes]))
        }
        fn get(&self, off: usize, n: usize) -> u64 {
            let m = self.0.borrow();
            let mut v = 0u64;
            for i in (0..n).rev() {
                v = v << 8 | m[off + i] as u64;
            }
            v
        }
        fn put(&self, off: usize, n: usize, v: u64) {
            let mut m = self.0.borrow_mut();
            for i in 0..n {
                m[off + i] = (v >> (8 * i)) as u8;
            }
        }
    }

    impl RingMemory for Mem {
        fn read16(&self, o: usize) -> u16 {
            self.get(o, 2) as u16
        }
        fn read32(&self, o: usize) -> u32 {
            self.get(o, 4) as u32
        }
        fn write16(&self, o: usize, v: u16) {
            self.put(o, 2, v as u64)
        }
        fn write32(&self, o: usize, v: u32) {
            self.put(o, 4, v as u64)
        }
        fn write64(&self, o: usize, v: u64) {
            self.put(o, 8, v)
        }
        fn fence(&self) {}
    }

    /// A chain as the device sees it: (head, [(addr, len, flags)]).
    type Chain = (u16, Vec<(u64, u32, u16)>);

    /// The device's side: takes avail entries and returns them in the used ring.
    struct Device {
        layout: QueueLayout,
        seen_avail: u16,
        used_idx: u16,
    }

    impl Device {
        fn new(layout: QueueLayout) -> Device {
            Device {
                layout,
                seen_avail: 0,
                used_idx: 0,
            }
        }
        /// The next available chain: (head, [(addr, len, flags)]).
        fn take(&mut self, m: &Mem) -> Option<Chain> {
            let idx = m.read16(self.layout.avail + 2);
            if idx == self.seen_avail {
                return None;
            }
            let slot = self.seen_avail % self.layout.size;
            self.seen_avail = self.seen_avail.wrapping_add(1);
            let head = m.read16(self.layout.avail + 4 + 2 * slot as usize);
            let mut chain = Vec::new();
            let mut d = head;
            loop {
                let o = 16 * d as usize;
                let flags = m.read16(o + 12);
                chain.push((m.get(o, 8), m.read32(o + 8), flags));
                if flags & DESC_F_NEXT == 0 {
                    break;
                }
                d = m.read16(o + 14);
            }
            Some((head, chain))
        }
        fn give(&mut self, m: &Mem, id: u32, len: u32) {
            let slot = self.used_idx % self.layout.size;
            let o = self.layout.used + 4 + 8 * slot as usize;
            m.write32(o, id);
            m.write32(o + 4, len);
            self.used_idx = self.used_idx.wrapping_add(1);
            m.write16(self.layout.used + 2, self.used_idx);
        }
    }

    fn seg(addr: u64, len: u32, device_writes: bool) -> Segment {
        Segment {
            addr,
            len,
            device_writes,
        }
    }

    #[test]
    fn layout_and_sizes() {
        let l = QueueLayout::new(256);
        assert_eq!((l.desc, l.avail, l.used, l.bytes), (0, 4096, 8192, 12288));
        let l = QueueLayout::new(8);
        assert_eq!((l.avail, l.used, l.bytes), (128, 4096, 8192));
        assert_eq!(choose_size(0), None);
        assert_eq!(choose_size(1), Some(1));
        assert_eq!(choose_size(1024), Some(256));
        assert_eq!(choose_size(200), Some(128));
        assert_eq!(choose_size(u16::MAX), Some(256));
    }

    #[test]
    fn chains_go_out_and_come_back() {
        let m = Mem::new(8);
        let mut q = SplitQueue::new(8, &m);
        let mut dev = Device::new(q.layout());
        // A block-style request: header (read), data (written), status (written).
        let chain = [
            seg(0x1000, 16, false),
            seg(0x2000, 512, true),
            seg(0x3000, 1, true),
        ];
        let next = q.next_head();
        let head = q.add(&m, &chain).unwrap();
        assert_eq!(next, Some(head));
        assert_eq!(q.free(), 5);
        assert!(q.should_notify(&m));
        let (h, got) = dev.take(&m).unwrap();
        assert_eq!(h, head);
        assert_eq!(
            got,
            vec![
                (0x1000, 16, DESC_F_NEXT),
                (0x2000, 512, DESC_F_NEXT | DESC_F_WRITE),
                (0x3000, 1, DESC_F_WRITE)
            ]
        );
        assert_eq!(q.pop_used(&m), Ok(None));
        dev.give(&m, head as u32, 513);
        assert!(q.has_used(&m));
        assert_eq!(
            q.pop_used(&m),
            Ok(Some(Used {
                id: head,
                len: 513,
                overrun: false
            }))
        );
        assert_eq!(q.free(), 8);
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn full_queue_is_busy_and_recovers_after_many_wraps() {
        let m = Mem::new(4);
        let mut q = SplitQueue::new(4, &m);
        let mut dev = Device::new(q.layout());
        for round in 0..70_000u32 {
            // Fill the queue with two 2-descriptor chains; a third does not fit.
            let a = q.add(&m, &[seg(1, 1, false), seg(2, 2, true)]).unwrap();
            let b = q.add(&m, &[seg(3, 3, false), seg(4, 4, true)]).unwrap();
            assert_eq!(q.add(&m, &[seg(5, 5, true)]), Err(AddError::Full));
            let (h1, _) = dev.take(&m).unwrap();
            let (h2, _) = dev.take(&m).unwrap();
            assert_eq!((h1, h2), (a, b));
            // Returned out of order.
            dev.give(&m, b as u32, 4);
            dev.give(&m, a as u32, round % 3);
            assert_eq!(q.pop_used(&m).unwrap().unwrap().id, b);
            assert_eq!(q.pop_used(&m).unwrap().unwrap().id, a);
            assert_eq!(q.free(), 4);
        }
        assert_eq!(q.add(&m, &[]), Err(AddError::BadChain));
        assert_eq!(q.add(&m, &[seg(0, 0, false); 5]), Err(AddError::BadChain));
    }

    #[test]
    fn a_lying_device_gets_errors_not_panics() {
        let m = Mem::new(4);
        let mut q = SplitQueue::new(4, &m);
        let mut dev = Device::new(q.layout());
        let head = q.add(&m, &[seg(0x1000, 100, true)]).unwrap();
        // An id out of range, then one that is not in flight.
        dev.give(&m, 4000, 1);
        assert_eq!(q.pop_used(&m), Err(UsedError::BadId(4000)));
        dev.give(&m, (head + 1) as u32, 1);
        assert_eq!(q.pop_used(&m), Err(UsedError::BadId(head as u32 + 1)));
        // A length above what the chain could take is clamped and flagged.
        dev.give(&m, head as u32, 0xffff_ffff);
        assert_eq!(
            q.pop_used(&m),
            Ok(Some(Used {
                id: head,
                len: 100,
                overrun: true
            }))
        );
        // Returning the same chain twice.
        dev.give(&m, head as u32, 1);
        assert_eq!(q.pop_used(&m), Err(UsedError::BadId(head as u32)));
        assert_eq!(q.free(), 4);
        // The used index leaping ahead.
        m.write16(q.layout().used + 2, 100);
        assert!(matches!(q.pop_used(&m), Err(UsedError::IndexJump { .. })));
        // The device scribbling on descriptors does not corrupt our free list.
        let h = q.add(&m, &[seg(1, 1, false), seg(2, 2, false)]).unwrap();
        m.write16(16 * h as usize + 14, 3000);
        m.write16(q.layout().used + 2, 5);
        let o = q.layout().used + 4;
        m.write32(o, h as u32);
        assert_eq!(q.pop_used(&m).unwrap().unwrap().id, h);
        assert_eq!(q.free(), 4);
    }

    #[test]
    fn no_notify_flag_is_honoured() {
        let m = Mem::new(4);
        let q = SplitQueue::new(4, &m);
        m.write16(q.layout().used, USED_F_NO_NOTIFY);
        assert!(!q.should_notify(&m));
    }
}
