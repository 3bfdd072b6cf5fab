//! Access to physical memory through the direct map (`mm::layout`). This is the only
//! place that turns a physical address into a Rust reference.

use ferrovisor::mm::{
    frame_table::{PageRef, WritableFrame},
    layout::phys_to_virt,
};

/// The bytes at `[paddr, paddr + len)`.
///
/// # Safety
/// The range must be mapped in the direct map (below `EARLY_DIRECT_MAP_SIZE` during
/// early boot, any RAM after), and nothing may write it while the slice is alive.
pub unsafe fn slice(paddr: u64, len: usize) -> &'static [u8] {
    // SAFETY: mapped and not written, as the caller guarantees.
    unsafe { core::slice::from_raw_parts(phys_to_virt(paddr) as *const u8, len) }
}

/// Exclusive access to `count` u64 words at `paddr`.
///
/// # Safety
/// The range must be mapped in the direct map, 8-byte aligned, and owned by the caller
/// alone (for example frames it took from the frame allocator) for `'static`.
pub unsafe fn words_mut(paddr: u64, count: usize) -> &'static mut [u64] {
    // SAFETY: mapped, aligned and exclusively owned, as the caller guarantees.
    unsafe { core::slice::from_raw_parts_mut(phys_to_virt(paddr) as *mut u64, count) }
}

/// Fills the frame-aligned range with zeroes.
///
/// # Safety
/// As for [`words_mut`].
pub unsafe fn zero(paddr: u64, len: u64) {
    // SAFETY: as the caller guarantees.
    unsafe { core::ptr::write_bytes(phys_to_virt(paddr) as *mut u8, 0, len as usize) }
}

/// A frame taken from the frame allocator, owned by whoever holds this value: the only
/// way to get a `&mut` to a frame's bytes.
#[derive(Debug)]
pub struct OwnedFrame {
    mfn: ferrovisor::mm::Mfn,
}

impl OwnedFrame {
    /// # Safety
    /// `mfn` must be a frame of RAM that the caller exclusively owns (just allocated and
    /// not mapped or referenced anywhere else), and it must be direct-mapped.
    pub unsafe fn new(mfn: ferrovisor::mm::Mfn) -> OwnedFrame {
        OwnedFrame { mfn }
    }

    pub fn mfn(&self) -> ferrovisor::mm::Mfn {
        self.mfn
    }

    /// Gives up exclusive access: the frame is handed to someone else (a domain).
    pub fn into_mfn(self) -> ferrovisor::mm::Mfn {
        self.mfn
    }

    pub fn bytes_mut(&mut self) -> &mut [u8; 4096] {
        // SAFETY: `new`'s contract: exclusive ownership of a direct-mapped frame; the
        // borrow of `self` keeps this reference unique.
        unsafe { &mut *(phys_to_virt(self.mfn.addr()) as *mut [u8; 4096]) }
    }
}

/// Copies `bytes` to physical address `paddr`.
///
/// # Safety
/// The range must be direct-mapped RAM that the caller exclusively owns (for example a
/// domain's frames while it is being built and not yet running).
pub unsafe fn write_bytes(paddr: u64, bytes: &[u8]) {
    // SAFETY: as the caller guarantees.
    unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), phys_to_virt(paddr) as *mut u8, bytes.len())
    }
}

/// A frame the hypervisor shares with a guest (shared info, a `vcpu_info`, a ring, a grant
/// frame): both sides write it, so every access is a single volatile or atomic load or
/// store. Made from the [`WritableFrame`] the frame table gave out, which it borrows: the
/// frame stays the domain's ordinary RAM (never a page or descriptor table, never freed
/// or given to another owner) for as long as any view of it exists.
#[derive(Clone, Copy, Debug)]
pub struct SharedFrame<'a> {
    mfn: ferrovisor::mm::Mfn,
    _held: core::marker::PhantomData<&'a WritableFrame>,
}

impl<'a> SharedFrame<'a> {
    pub fn new(frame: &'a WritableFrame) -> SharedFrame<'a> {
        SharedFrame {
            mfn: frame.mfn(),
            _held: core::marker::PhantomData,
        }
    }

    fn ptr(&self, offset: usize, size: usize) -> *mut u8 {
        assert!(offset.checked_add(size).is_some_and(|end| end <= 4096) && offset % size == 0);
        (phys_to_virt(self.mfn.addr()) + offset as u64) as *mut u8
    }

    pub fn read_u8(&self, offset: usize) -> u8 {
        // SAFETY: inside the frame (checked), which the borrowed `WritableFrame` keeps the
        // domain's RAM (direct-mapped) for as long as `self`.
        unsafe { self.ptr(offset, 1).read_volatile() }
    }

    pub fn write_u8(&self, offset: usize, value: u8) {
        // SAFETY: as in `read_u8`.
        unsafe { self.ptr(offset, 1).write_volatile(value) }
    }

    pub fn write_u64(&self, offset: usize, value: u64) {
        // SAFETY: as in `read_u8`; the offset is 8-byte aligned (checked).
        unsafe { (self.ptr(offset, 8) as *mut u64).write_volatile(value) }
    }

    pub fn read_u32(&self, offset: usize) -> u32 {
        // SAFETY: as in `read_u8`; 4-byte aligned (checked).
        unsafe { (self.ptr(offset, 4) as *const u32).read_volatile() }
    }

    pub fn write_u32(&self, offset: usize, value: u32) {
        // SAFETY: as in `read_u8`; 4-byte aligned (checked).
        unsafe { (self.ptr(offset, 4) as *mut u32).write_volatile(value) }
    }

    /// Byte-wise volatile copy into the frame (for records published under a version
    /// protocol, where the version stores order the copy).
    pub fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        assert!(offset
            .checked_add(bytes.len())
            .is_some_and(|end| end <= 4096));
        for (i, &b) in bytes.iter().enumerate() {
            self.write_u8(offset + i, b);
        }
    }

    /// Fills the whole frame with zeroes (`MMUEXT_CLEAR_PAGE`).
    pub fn zero(&self) {
        for offset in (0..4096).step_by(8) {
            self.write_u64(offset, 0);
        }
    }

    /// Byte-wise volatile copy out of the frame.
    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) {
        assert!(offset.checked_add(out.len()).is_some_and(|end| end <= 4096));
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.read_u8(offset + i);
        }
    }

    fn atomic_u32(&self, offset: usize) -> &core::sync::atomic::AtomicU32 {
        let p = self.ptr(offset, 4) as *mut u32;
        // SAFETY: 4-byte aligned memory inside the frame (checked), valid for as long as
        // `self` (the borrowed `WritableFrame`); the guest shares the word by design of the ring
        // protocols, which atomic accesses tolerate.
        unsafe { core::sync::atomic::AtomicU32::from_ptr(p) }
    }

    /// A ring index the other side publishes: the bytes it wrote before are visible to
    /// the reads that follow.
    pub fn load_acquire_u32(&self, offset: usize) -> u32 {
        self.atomic_u32(offset)
            .load(core::sync::atomic::Ordering::Acquire)
    }

    /// Publishes a ring index: the bytes written before it are visible to the other side
    /// once it sees the index.
    pub fn store_release_u32(&self, offset: usize, value: u32) {
        self.atomic_u32(offset)
            .store(value, core::sync::atomic::Ordering::Release)
    }

    /// Compare-exchange of a 32-bit word the guest also updates atomically (a grant
    /// entry's flags and domain); returns the value found (`old` when it was replaced).
    pub fn compare_exchange_u32(&self, offset: usize, old: u32, new: u32) -> u32 {
        match self.atomic_u32(offset).compare_exchange(
            old,
            new,
            core::sync::atomic::Ordering::SeqCst,
            core::sync::atomic::Ordering::SeqCst,
        ) {
            Ok(v) | Err(v) => v,
        }
    }

    fn atomic_u64(&self, offset: usize) -> &core::sync::atomic::AtomicU64 {
        let p = self.ptr(offset, 8) as *mut u64;
        // SAFETY: 8-byte aligned memory inside the frame (checked), valid for as long as
        // `self` (the borrowed `WritableFrame`); the guest only ever accesses it atomically or
        // racily by design of the shared-info ABI, which atomic RMWs tolerate.
        unsafe { core::sync::atomic::AtomicU64::from_ptr(p) }
    }

    pub fn fetch_or_u64(&self, offset: usize, mask: u64) -> u64 {
        self.atomic_u64(offset)
            .fetch_or(mask, core::sync::atomic::Ordering::SeqCst)
    }

    pub fn fetch_and_u64(&self, offset: usize, mask: u64) -> u64 {
        self.atomic_u64(offset)
            .fetch_and(mask, core::sync::atomic::Ordering::SeqCst)
    }

    pub fn load_u64(&self, offset: usize) -> u64 {
        self.atomic_u64(offset)
            .load(core::sync::atomic::Ordering::SeqCst)
    }

    pub fn swap_u8(&self, offset: usize, value: u8) -> u8 {
        let p = self.ptr(offset, 1);
        // SAFETY: a byte inside the frame (checked), valid as in `atomic_u64`.
        let a = unsafe { core::sync::atomic::AtomicU8::from_ptr(p) };
        a.swap(value, core::sync::atomic::Ordering::SeqCst)
    }
}

/// A read-only view of a domain's frame the hypervisor holds a general reference to (a
/// grant copy's or `MMUEXT_COPY_PAGE`'s source): the borrowed [`PageRef`] keeps the frame
/// the domain's RAM while the view exists.
#[derive(Clone, Copy, Debug)]
pub struct FrameReader<'a> {
    mfn: ferrovisor::mm::Mfn,
    _held: core::marker::PhantomData<&'a PageRef>,
}

impl<'a> FrameReader<'a> {
    pub fn new(page: &'a PageRef) -> FrameReader<'a> {
        FrameReader {
            mfn: page.mfn(),
            _held: core::marker::PhantomData,
        }
    }

    /// Copies `out.len()` bytes at `offset` out of the frame (the guest may be writing
    /// them: each byte is read once, with a volatile load).
    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) {
        assert!(offset.checked_add(out.len()).is_some_and(|end| end <= 4096));
        let base = (phys_to_virt(self.mfn.addr()) + offset as u64) as *const u8;
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: inside the frame (checked), which the borrowed `PageRef` keeps the
            // domain's RAM (direct-mapped) for as long as `self`.
            *b = unsafe { base.add(i).read_volatile() };
        }
    }
}
