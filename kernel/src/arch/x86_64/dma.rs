//! Memory devices read and write by DMA: whole frames from the hypervisor's frame
//! allocator (never a guest's), physically contiguous, reached by the hypervisor through
//! the direct map. A physical address is the machine address the device uses (no IOMMU
//! is programmed).
//!
//! Ownership is the driver's discipline: a buffer given to a device is kept (moved into
//! the driver's record of the request) until the device has returned it, so it is never
//! freed or reused while the device may still write it. A device that stops answering
//! keeps its buffers for ever (they are leaked, never freed).

use ferrovisor::mm::{layout::phys_to_virt, Mfn, PAGE_SIZE};
use ferrovisor::virtio::queue::RingMemory;

use super::memory::FRAMES;

/// A DMA buffer: `pages` contiguous zeroed frames, of which the first `len` bytes are the
/// buffer's contents for I/O.
#[derive(Debug)]
pub struct DmaBuffer {
    first: Mfn,
    pages: u64,
    len: usize,
}

impl DmaBuffer {
    /// A zeroed buffer of `len` bytes (at least one byte; whole pages are taken), or
    /// `None` when memory is short.
    pub fn new(len: usize) -> Option<DmaBuffer> {
        let pages = (len.max(1) as u64).div_ceil(PAGE_SIZE);
        let first = FRAMES.lock().as_mut()?.alloc_contiguous(pages, 1)?;
        let mut b = DmaBuffer { first, pages, len };
        b.capacity_slice_mut().fill(0);
        Some(b)
    }

    /// The machine address of the first byte.
    pub fn phys(&self) -> u64 {
        self.first.addr()
    }

    /// The buffer's I/O length.
    pub fn len(&self) -> usize {
        self.len
    }

    #[allow(dead_code, reason = "API for the backends; clippy wants it beside len")]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes it could hold (whole pages).
    pub fn capacity(&self) -> usize {
        (self.pages * PAGE_SIZE) as usize
    }

    /// Changes the I/O length (at most the capacity; more is clamped).
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.capacity());
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the frames are this buffer's alone (taken from the allocator, freed only
        // by `drop`), direct-mapped; `len` ≤ capacity.
        unsafe { core::slice::from_raw_parts(phys_to_virt(self.phys()) as *const u8, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes the reference unique.
        unsafe { core::slice::from_raw_parts_mut(phys_to_virt(self.phys()) as *mut u8, self.len) }
    }

    fn capacity_slice_mut(&mut self) -> &mut [u8] {
        let cap = self.capacity();
        // SAFETY: as in `as_mut_slice`, for the whole frames.
        unsafe { core::slice::from_raw_parts_mut(phys_to_virt(self.phys()) as *mut u8, cap) }
    }

    /// Never gives the frames back (for memory a device might still write).
    pub fn leak(self) {
        core::mem::forget(self);
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        if let Some(frames) = FRAMES.lock().as_mut() {
            for i in 0..self.pages {
                let _ = frames.free(Mfn(self.first.0 + i));
            }
        }
    }
}

/// Ring memory shared with a device (virtqueue rings): every access volatile, so neither
/// side's view is cached in registers, and `fence` a full barrier.
#[derive(Debug)]
pub struct DmaRing {
    buf: DmaBuffer,
}

impl DmaRing {
    pub fn new(bytes: usize) -> Option<DmaRing> {
        Some(DmaRing {
            buf: DmaBuffer::new(bytes)?,
        })
    }

    pub fn phys(&self) -> u64 {
        self.buf.phys()
    }

    fn at(&self, offset: usize, size: usize) -> Option<u64> {
        let end = offset.checked_add(size)?;
        (end <= self.buf.capacity() && offset % size == 0)
            .then_some(phys_to_virt(self.buf.phys()) + offset as u64)
    }
}

impl RingMemory for DmaRing {
    fn read16(&self, offset: usize) -> u16 {
        // SAFETY: inside the ring's own frames, aligned (checked).
        self.at(offset, 2)
            .map_or(u16::MAX, |a| unsafe { (a as *const u16).read_volatile() })
    }

    fn read32(&self, offset: usize) -> u32 {
        // SAFETY: as in `read16`.
        self.at(offset, 4)
            .map_or(u32::MAX, |a| unsafe { (a as *const u32).read_volatile() })
    }

    fn write16(&self, offset: usize, value: u16) {
        if let Some(a) = self.at(offset, 2) {
            // SAFETY: as in `read16`.
            unsafe { (a as *mut u16).write_volatile(value) }
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        if let Some(a) = self.at(offset, 4) {
            // SAFETY: as in `read16`.
            unsafe { (a as *mut u32).write_volatile(value) }
        }
    }

    fn write64(&self, offset: usize, value: u64) {
        if let Some(a) = self.at(offset, 8) {
            // SAFETY: as in `read16`.
            unsafe { (a as *mut u64).write_volatile(value) }
        }
    }

    fn fence(&self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
}
