//! Boot-time memory setup: the frame allocator over usable RAM, the hypervisor's own page
//! tables (image with per-section permissions, direct map of RAM, guarded stacks, MMIO,
//! the GDT window), and the kernel heap.

use core::{
    fmt,
    sync::atomic::{AtomicBool, Ordering},
};

use ferrovisor::{
    mm::{
        frame_alloc::{self, FrameAllocator, MAX_FREE_RANGES},
        layout::{
            self, image_virt_to_phys, DIRECT_MAP_BASE, DIRECT_MAP_SIZE, EARLY_DIRECT_MAP_SIZE,
            GDT_WINDOWS_BASE, GDT_WINDOW_SIZE, IST_STACK_SIZE, LDT_WINDOWS_BASE, LDT_WINDOW_SIZE,
            MMIO_BASE, STACKS_BASE, STACK_SIZE,
        },
        paging::{AddressSpace, Attrs, MapError, SIZE_1G, SIZE_2M, SIZE_4K},
        Mfn, PhysRange, PAGE_SIZE,
    },
    multiboot2::{BootInfo, MemoryKind},
};
use ferrovisor_abi::layout::{FIRST_RESERVED_GDT_BYTE, MACH2PHYS_VIRT_END, MACH2PHYS_VIRT_START};
use linked_list_allocator::LockedHeap;

use crate::arch::x86_64::{
    boot::ImageLayout,
    cpu::Features,
    irq::IrqMutex,
    paging::{self as hw_paging, DirectMapTables},
    phys::{self, OwnedFrame},
};

/// The frame allocator, once RAM is known.
pub static FRAMES: IrqMutex<Option<FrameAllocator<'static>>> = IrqMutex::new(None);

#[global_allocator]
static HEAP: IrqSafeHeap = IrqSafeHeap(LockedHeap::empty());

/// The kernel heap, with interrupts off while its lock is held: device interrupt handlers
/// (completion and receive callbacks) allocate and free, and an interrupt arriving while
/// its own CPU holds the heap's spinlock would otherwise wait for ever.
struct IrqSafeHeap(LockedHeap);

// SAFETY: every method forwards to `LockedHeap`'s, which is a correct allocator; only the
// interrupt flag is changed around the calls (and restored).
unsafe impl core::alloc::GlobalAlloc for IrqSafeHeap {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        let on = crate::arch::x86_64::irq::enabled();
        crate::arch::x86_64::irq::disable();
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { self.0.alloc(layout) };
        if on {
            crate::arch::x86_64::irq::enable();
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: core::alloc::Layout) {
        let on = crate::arch::x86_64::irq::enabled();
        crate::arch::x86_64::irq::disable();
        // SAFETY: the caller's contract, passed on.
        unsafe { self.0.dealloc(ptr, layout) };
        if on {
            crate::arch::x86_64::irq::enable();
        }
    }
}

/// The kernel heap: a quarter of RAM, between 16 and 512 MiB (the frame table, and the
/// decompressed dom0 kernel while it is built, live there: Debian's XZ vmlinuz needs
/// about 63 MiB of output and a 32 MiB dictionary).
pub fn heap_size(ram_bytes: u64) -> u64 {
    (ram_bytes / 4).clamp(16 << 20, 512 << 20) & !(PAGE_SIZE - 1)
}
/// Firmware owns the first MiB (real-mode IVT, BIOS data, EBDA, option ROMs); the AP
/// start-up trampoline will be placed there explicitly, not by the allocator.
const FIRMWARE_LOW: PhysRange = PhysRange::new(0, 0x10_0000);
/// Virtual space given to each stack: the stack sits at the top, everything below it in
/// the slot is never mapped, so an overflow always hits unmapped memory.
const STACK_SLOT: u64 = 1 << 20;

#[derive(Debug)]
pub enum MemoryError {
    NoUsableRam,
    BitmapPlacement,
    Map(MapError),
    OutOfFrames(&'static str),
    HeapTwice,
    /// A device or firmware range to map overlaps RAM the frame allocator manages.
    DeviceRangeIsRam(u64),
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryError::NoUsableRam => write!(f, "the memory map has no usable RAM"),
            MemoryError::BitmapPlacement => {
                write!(f, "no room below 4 GiB for the frame allocator's bitmap")
            }
            MemoryError::Map(e) => write!(f, "building the hypervisor page tables: {e}"),
            MemoryError::OutOfFrames(what) => write!(f, "out of memory for {what}"),
            MemoryError::HeapTwice => write!(f, "the kernel heap was initialised twice"),
            MemoryError::DeviceRangeIsRam(a) => {
                write!(f, "{a:#x} is RAM, not a device or firmware range")
            }
        }
    }
}

impl From<MapError> for MemoryError {
    fn from(e: MapError) -> Self {
        MemoryError::Map(e)
    }
}

/// RAM ranges of the memory map that the allocator may hand out.
/// RAM beyond what the direct map can hold (5 TiB) is ignored.
fn available_ram(boot: &BootInfo) -> heapless::Vec<PhysRange, 128> {
    boot.memory_map
        .iter()
        .filter(|r| r.kind == MemoryKind::Available && r.base < DIRECT_MAP_SIZE)
        .map(|r| PhysRange::new(r.base, r.base.saturating_add(r.len).min(DIRECT_MAP_SIZE)))
        .collect()
}

pub struct FrameStats {
    pub usable_bytes: u64,
    pub free_bytes: u64,
}

/// What the allocator must never hand out, by name (the selftest checks it).
pub type Reserved = heapless::Vec<(&'static str, PhysRange), 24>;
static RESERVED: spin::Mutex<Reserved> = spin::Mutex::new(heapless::Vec::new());

pub fn reserved_ranges() -> Reserved {
    RESERVED.lock().clone()
}

/// The bytes of a boot module: `range` must lie inside one of the boot modules
/// `init_frames` kept out of the allocator (RAM nothing is ever given and nothing writes,
/// direct-mapped); anything else is `None`.
pub fn boot_module_bytes(range: PhysRange) -> Option<&'static [u8]> {
    let inside = RESERVED.lock().iter().any(|(name, r)| {
        name.starts_with("boot module") && r.start <= range.start && range.end <= r.end
    });
    if !inside || range.end < range.start {
        return None;
    }
    // SAFETY: as above: a reserved boot module, never written, in the direct map.
    Some(unsafe { phys::slice(range.start, range.len() as usize) })
}

/// Builds the frame allocator over usable RAM minus the firmware's first MiB, the
/// hypervisor image, the boot information and every boot module.
pub fn init_frames(
    boot: &BootInfo,
    image: &ImageLayout,
    mbi: PhysRange,
) -> Result<FrameStats, MemoryError> {
    let ram = available_ram(boot);
    let usable_bytes: u64 = ram.iter().map(|r| r.shrink_to_pages().len()).sum();
    const MODULE_NAMES: [&str; 16] = [
        "boot module 0",
        "boot module 1",
        "boot module 2",
        "boot module 3",
        "boot module 4",
        "boot module 5",
        "boot module 6",
        "boot module 7",
        "boot module 8",
        "boot module 9",
        "boot module 10",
        "boot module 11",
        "boot module 12",
        "boot module 13",
        "boot module 14",
        "boot module 15",
    ];
    let mut named: Reserved = heapless::Vec::new();
    let _ = named.push(("the firmware's first MiB", FIRMWARE_LOW));
    let _ = named.push((
        "the hypervisor image",
        PhysRange::new(image.phys_start, image.phys_end),
    ));
    let _ = named.push(("the boot information", mbi));
    for (m, name) in boot.modules.iter().zip(MODULE_NAMES) {
        let _ = named.push((name, PhysRange::new(m.start, m.end)));
    }
    // Firmware may report overlapping entries: whatever any entry calls not available stays
    // out of the allocator, even where another entry calls it available.
    let mut reserved: heapless::Vec<PhysRange, 160> = named.iter().map(|(_, r)| *r).collect();
    for r in boot
        .memory_map
        .iter()
        .filter(|r| r.kind != MemoryKind::Available)
    {
        let _ = reserved.push(PhysRange::new(r.base, r.base.saturating_add(r.len)));
    }
    let mut free: heapless::Vec<PhysRange, MAX_FREE_RANGES> =
        frame_alloc::free_ranges(&ram, &reserved);
    let max_addr = free
        .iter()
        .map(|r| r.end)
        .max()
        .ok_or(MemoryError::NoUsableRam)?;
    let words = FrameAllocator::bitmap_words(max_addr);
    let bitmap = frame_alloc::carve(&mut free, words as u64 * 8, FIRMWARE_LOW.end)
        .filter(|r| r.end <= EARLY_DIRECT_MAP_SIZE)
        .ok_or(MemoryError::BitmapPlacement)?;
    // SAFETY: `carve` removed the bitmap's frames from the free ranges, so nothing else
    // will ever own them; they are below 4 GiB, inside the early direct map, and stay in
    // the final direct map (they are RAM).
    let words_slice = unsafe { phys::words_mut(bitmap.start, words) };
    let alloc = FrameAllocator::new(words_slice, &free);
    let free_bytes = alloc.free_frames() * PAGE_SIZE;
    *FRAMES.lock() = Some(alloc);
    let _ = named.push(("the frame allocator's bitmap", bitmap));
    *RESERVED.lock() = named;
    Ok(FrameStats {
        usable_bytes,
        free_bytes,
    })
}

/// The hypervisor's L4 and the zero frame of the GDT window (for `map_guest_gdt`).
static GDT_STATE: spin::Mutex<Option<(Mfn, Mfn)>> = spin::Mutex::new(None);

/// Loads the hypervisor's own address space (no guest mappings): what a CPU runs in while
/// it has no vCPU, so no guest's page tables stay in use by it.
pub fn enter_idle_address_space() {
    if let Some((root, _)) = *GDT_STATE.lock() {
        // SAFETY: the hypervisor's own L4 maps all of the hypervisor (every guest L4 copies
        // its slots from it).
        unsafe { hw_paging::activate(root) };
    }
}

/// Points this CPU's GDT and LDT windows at the zero frame and unloads the LDT: what a CPU
/// that runs no vCPU shows, so its windows never map frames of a vCPU it no longer runs
/// (they may be freed and reused once that vCPU's tables are released).
pub fn clear_guest_windows() {
    let _ = map_guest_gdt(&[]);
    let _ = load_guest_ldt(&[], 0);
}

/// Maps a vCPU's GDT frames into this CPU's GDT window (pages 0..14, writable for the
/// hypervisor only: the CPU sets descriptors' accessed bits); pages past them show the
/// zero frame.
pub fn map_guest_gdt(frames: &[Mfn]) -> Result<(), MemoryError> {
    let Some((root, zero)) = *GDT_STATE.lock() else {
        return Err(MemoryError::NoUsableRam);
    };
    let mut guard = FRAMES.lock();
    let alloc = guard.as_mut().ok_or(MemoryError::NoUsableRam)?;
    // SAFETY: the hypervisor's own L4; only the GDT window's existing leaves (slot 261,
    // shared by every address space) are rewritten.
    let tables = unsafe { DirectMapTables::new(alloc, u64::MAX) };
    let mut aspace = AddressSpace::attach(root, tables, crate::arch::x86_64::msr::nx_enabled());
    let window = gdt_window(crate::arch::x86_64::percpu::cpu());
    for i in 0..FIRST_RESERVED_GDT_BYTE as u64 / PAGE_SIZE {
        let va = window + i * PAGE_SIZE;
        match frames.get(i as usize) {
            Some(f) => aspace.remap_page(va, f.addr(), Attrs::DATA)?,
            None => aspace.remap_page(va, zero.addr(), Attrs::RODATA)?,
        }
        hw_paging::invlpg(va);
    }
    Ok(())
}

/// Maps a vCPU's LDT frames into this CPU's LDT window (writable for the hypervisor only,
/// like the GDT window) and loads the LDT, or unloads it (the window showing the zero
/// frame) when there are none.
pub fn load_guest_ldt(frames: &[Mfn], entries: u32) -> Result<(), MemoryError> {
    let Some((root, zero)) = *GDT_STATE.lock() else {
        return Err(MemoryError::NoUsableRam);
    };
    let window = ldt_window(crate::arch::x86_64::percpu::cpu());
    {
        let mut guard = FRAMES.lock();
        let alloc = guard.as_mut().ok_or(MemoryError::NoUsableRam)?;
        // SAFETY: the hypervisor's own L4; only the LDT window's leaves (slot 261, shared
        // by every address space) are written.
        let tables = unsafe { DirectMapTables::new(alloc, u64::MAX) };
        let mut aspace = AddressSpace::attach(root, tables, crate::arch::x86_64::msr::nx_enabled());
        for i in 0..LDT_WINDOW_SIZE / PAGE_SIZE {
            let va = window + i * PAGE_SIZE;
            match frames.get(i as usize) {
                Some(f) => aspace.remap_page(va, f.addr(), Attrs::DATA)?,
                None => aspace.remap_page(va, zero.addr(), Attrs::RODATA)?,
            }
            hw_paging::invlpg(va);
        }
    }
    let entries = if frames.is_empty() { 0 } else { entries };
    // SAFETY: the window maps exactly the vCPU's checked LDT frames (the zero page after
    // them), and stays so until the next LDT load.
    unsafe { crate::arch::x86_64::gdt::load_ldt(window, entries) };
    Ok(())
}

/// Where the machine-to-phys table is (first frame, entries) until `init_m2p` takes it.
static M2P_PLACE: spin::Mutex<Option<(Mfn, u64)>> = spin::Mutex::new(None);
/// The table's first machine frame (its frames are contiguous).
static M2P_FIRST: spin::Mutex<Mfn> = spin::Mutex::new(Mfn(0));
/// The machine-to-phys table: `M2P[mfn] = pfn`, or [`M2P_INVALID`].
static M2P: spin::Mutex<Option<&'static mut [u64]>> = spin::Mutex::new(None);
/// What a frame no domain uses maps to (Xen's `INVALID_M2P_ENTRY`).
pub const M2P_INVALID: u64 = u64::MAX;

/// Fills the machine-to-phys table with "invalid" (after the switch to the final tables,
/// when all of it is direct-mapped).
pub fn init_m2p() {
    let Some((first, entries)) = M2P_PLACE.lock().take() else {
        return;
    };
    // SAFETY: the frames were allocated for the table alone in `build_kernel_space`; the
    // guests' mapping of them is read-only, so this is the only writer; direct-mapped.
    let table = unsafe { phys::words_mut(first.addr(), (layout::m2p_bytes(entries) / 8) as usize) };
    // The tail past the last frame is mapped for guests too: invalid as well.
    table.fill(M2P_INVALID);
    *M2P_FIRST.lock() = first;
    *M2P.lock() = Some(&mut table[..entries as usize]);
}

/// Frames the machine-to-phys table covers (one past the highest RAM frame).
pub fn m2p_entries() -> u64 {
    M2P.lock().as_ref().map_or(0, |t| t.len() as u64)
}

/// The frames `XENMEM_machphys_mfn_list` reports: the first of each 2 MiB extent of the
/// table.
pub fn m2p_extents() -> impl Iterator<Item = u64> {
    layout::m2p_extents(M2P_FIRST.lock().0, m2p_entries())
}

/// Records that machine frame `mfn` is pseudo-physical frame `pfn` of its domain.
pub fn m2p_set(mfn: Mfn, pfn: u64) {
    if let Some(t) = M2P.lock().as_mut() {
        if let Some(e) = t.get_mut(mfn.0 as usize) {
            *e = pfn;
        }
    }
}

/// A stack the fault handler can name when its guard is hit.
#[derive(Clone, Copy, Debug)]
pub struct StackInfo {
    pub name: &'static str,
    pub top: u64,
    pub bottom: u64,
    /// The unmapped region below the stack.
    pub guard: (u64, u64),
}

static STACKS: spin::Mutex<heapless::Vec<StackInfo, { 4 * crate::arch::x86_64::smp::MAX_CPUS }>> =
    spin::Mutex::new(heapless::Vec::new());

/// The stack whose guard region contains `addr`, if any (used by the fault handler, so
/// it never waits for the lock).
pub fn guard_hit(addr: u64) -> Option<StackInfo> {
    let stacks = STACKS.try_lock()?;
    stacks
        .iter()
        .copied()
        .find(|s| addr >= s.guard.0 && addr < s.guard.1)
}

/// What the final address space provides to the rest of the boot.
pub struct KernelSpace {
    /// The boot CPU's stacks and GDT window.
    pub cpu0: CpuSpace,
    pub apic_mmio: u64,
    pub tables_root: Mfn,
    pub direct_mapped: u64,
}

/// A CPU's own part of the hypervisor's address space: its guarded stacks and its GDT
/// window (LDT window: `LDT_WINDOWS_BASE` + the same offset).
#[derive(Clone, Copy, Debug)]
pub struct CpuSpace {
    pub main_stack_top: u64,
    pub ist_double_fault: u64,
    pub ist_nmi: u64,
    pub ist_machine_check: u64,
    pub gdt_window: u64,
    pub gdt_reserved_page: u64,
}

/// Stacks each CPU has: the main one, then the IST stacks.
const STACKS_PER_CPU: u64 = 4;

/// CPU `cpu`'s GDT and LDT windows.
fn gdt_window(cpu: u32) -> u64 {
    GDT_WINDOWS_BASE + cpu as u64 * GDT_WINDOW_SIZE
}

fn ldt_window(cpu: u32) -> u64 {
    LDT_WINDOWS_BASE + cpu as u64 * LDT_WINDOW_SIZE
}

/// Maps CPU `cpu`'s guarded stacks and GDT window (its two reserved pages fresh, the
/// guest part showing `zero`) into `aspace`.
fn map_cpu_space(
    aspace: &mut AddressSpace<DirectMapTables>,
    cpu: u32,
    zero: Mfn,
) -> Result<CpuSpace, MemoryError> {
    let mut stacks = STACKS.lock();
    let mut tops = [0u64; STACKS_PER_CPU as usize];
    let specs: [(&str, u64); STACKS_PER_CPU as usize] = [
        ("main", STACK_SIZE),
        ("double-fault IST", IST_STACK_SIZE),
        ("NMI IST", IST_STACK_SIZE),
        ("machine-check IST", IST_STACK_SIZE),
    ];
    for (slot, (name, size)) in specs.iter().enumerate() {
        let index = cpu as u64 * STACKS_PER_CPU + slot as u64;
        let top = STACKS_BASE + (index + 1) * STACK_SLOT;
        let bottom = top - size;
        let mut va = bottom;
        while va < top {
            let f = aspace
                .memory_mut()
                .frames()
                .alloc()
                .ok_or(MemoryError::OutOfFrames("stacks"))?;
            aspace.map_page(va, f.addr(), SIZE_4K, Attrs::DATA)?;
            va += PAGE_SIZE;
        }
        tops[slot] = top;
        let _ = stacks.push(StackInfo {
            name,
            top,
            bottom,
            guard: (top - STACK_SLOT, bottom),
        });
    }
    drop(stacks);

    // The GDT window: the hypervisor's two reserved pages, the zero page below them.
    let window = gdt_window(cpu);
    let reserved_page = window + FIRST_RESERVED_GDT_BYTE as u64;
    for i in 0..2 {
        let f = aspace
            .memory_mut()
            .frames()
            .alloc_below(EARLY_DIRECT_MAP_SIZE)
            .ok_or(MemoryError::OutOfFrames("the GDT"))?;
        // SAFETY: the frame was just allocated, so it is ours; it is direct-mapped.
        unsafe { phys::zero(f.addr(), PAGE_SIZE) };
        aspace.map_page(
            reserved_page + i * PAGE_SIZE,
            f.addr(),
            SIZE_4K,
            Attrs::DATA,
        )?;
    }
    debug_assert!(reserved_page + 2 * PAGE_SIZE <= window + GDT_WINDOW_SIZE);
    for i in 0..FIRST_RESERVED_GDT_BYTE as u64 / PAGE_SIZE {
        aspace.map_page(window + i * PAGE_SIZE, zero.addr(), SIZE_4K, Attrs::RODATA)?;
    }
    Ok(CpuSpace {
        main_stack_top: tops[0],
        ist_double_fault: tops[1],
        ist_nmi: tops[2],
        ist_machine_check: tops[3],
        gdt_window: window,
        gdt_reserved_page: reserved_page,
    })
}

/// Maps another CPU's stacks and GDT window into the hypervisor's (live) address space.
pub fn new_cpu_space(cpu: u32) -> Result<CpuSpace, MemoryError> {
    let Some((root, zero)) = *GDT_STATE.lock() else {
        return Err(MemoryError::NoUsableRam);
    };
    let mut guard = FRAMES.lock();
    let frames = guard.as_mut().ok_or(MemoryError::NoUsableRam)?;
    // SAFETY: the hypervisor's own L4; only slot 261's stack and GDT-window regions of a
    // CPU that has none yet are added (entries are only ever added there).
    let tables = unsafe { DirectMapTables::new(frames, u64::MAX) };
    let mut aspace = AddressSpace::attach(root, tables, crate::arch::x86_64::msr::nx_enabled());
    map_cpu_space(&mut aspace, cpu, zero)
}

/// Builds the hypervisor's final page tables and switches to them.
pub fn build_kernel_space(
    boot: &BootInfo,
    image: &ImageLayout,
    features: &Features,
    apic_phys: u64,
) -> Result<KernelSpace, MemoryError> {
    let mut guard = FRAMES.lock();
    let frames = guard.as_mut().ok_or(MemoryError::NoUsableRam)?;
    // SAFETY: the tables are new ones, built here from fresh frames, below 4 GiB while only
    // the early direct map exists.
    let tables = unsafe { DirectMapTables::new(frames, EARLY_DIRECT_MAP_SIZE) };
    let mut aspace = AddressSpace::new(tables, crate::arch::x86_64::msr::nx_enabled())?;

    // The image, section by section.
    for (range, attrs) in [
        (image.text, Attrs::TEXT),
        (image.rodata, Attrs::RODATA),
        (image.data, Attrs::DATA),
    ] {
        aspace.map_range(
            range.0,
            image_virt_to_phys(range.0),
            range.1 - range.0,
            attrs,
            SIZE_2M,
        )?;
    }

    // The direct map: the firmware's first MiB and all RAM, merged.
    let mut ram: heapless::Vec<PhysRange, 130> = heapless::Vec::new();
    let _ = ram.push(PhysRange::new(0, 0x10_0000));
    for r in boot
        .memory_map
        .iter()
        .filter(|r| r.kind.is_ram() && r.base < DIRECT_MAP_SIZE)
    {
        let end = r.base.saturating_add(r.len).min(DIRECT_MAP_SIZE);
        let _ = ram.push(PhysRange::new(r.base, end).grow_to_pages());
    }
    ram.sort_unstable();
    let mut merged: heapless::Vec<PhysRange, 130> = heapless::Vec::new();
    for r in ram {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => {
                let _ = merged.push(r);
            }
        }
    }
    let max_page = if features.page_1g { SIZE_1G } else { SIZE_2M };
    let mut direct_mapped = 0;
    for r in &merged {
        aspace.map_range(
            DIRECT_MAP_BASE + r.start,
            r.start,
            r.len(),
            Attrs::DATA,
            max_page,
        )?;
        direct_mapped += r.len();
    }

    // Local APIC registers, uncached.
    let apic_mmio = MMIO_BASE;
    aspace.map_page(apic_mmio, apic_phys, SIZE_4K, Attrs::MMIO)?;

    // The machine-to-phys table: one u64 per frame of RAM, read-only to guests at the
    // ABI's fixed address (`MACH2PHYS_VIRT_START`); the hypervisor writes it through the
    // direct map.
    let max_ram = merged.last().map_or(0, |r| r.end);
    let m2p_entries = max_ram / PAGE_SIZE;
    let m2p_bytes = layout::m2p_bytes(m2p_entries);
    if m2p_bytes > MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START {
        return Err(MemoryError::OutOfFrames(
            "the machine-to-phys table (too much RAM)",
        ));
    }
    let m2p = aspace
        .memory_mut()
        .frames()
        .alloc_contiguous(m2p_bytes / PAGE_SIZE, layout::M2P_EXTENT_BYTES / PAGE_SIZE)
        .ok_or(MemoryError::OutOfFrames("the machine-to-phys table"))?;
    let guest_ro = Attrs {
        writable: false,
        executable: false,
        uncached: false,
        user: true,
    };
    aspace.map_range(
        MACH2PHYS_VIRT_START,
        m2p.addr(),
        m2p_bytes,
        guest_ro,
        SIZE_2M,
    )?;
    *M2P_PLACE.lock() = Some((m2p, m2p_entries));

    // A zeroed page for the GDT windows' pages no guest frame fills (selectors reach the
    // whole 64 KiB window).
    let zero = aspace
        .memory_mut()
        .frames()
        .alloc_below(EARLY_DIRECT_MAP_SIZE)
        .ok_or(MemoryError::OutOfFrames("the GDT"))?;
    // SAFETY: the frame was just allocated; it is direct-mapped.
    unsafe { phys::zero(zero.addr(), PAGE_SIZE) };
    let cpu0 = map_cpu_space(&mut aspace, 0, zero)?;
    *GDT_STATE.lock() = Some((aspace.root(), zero));

    let root = aspace.root();
    // SAFETY: the new tables map the image (code, data, this stack: the boot stack is in
    // .bss), the direct map (boot information, modules, the allocator's bitmap, the page
    // tables themselves) and everything set up above.
    unsafe { hw_paging::activate(root) };
    Ok(KernelSpace {
        cpu0,
        apic_mmio,
        tables_root: root,
        direct_mapped,
    })
}

/// Gives the kernel heap `HEAP_SIZE` of contiguous frames, reached through the direct map.
pub fn init_heap(size: u64) -> Result<u64, MemoryError> {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return Err(MemoryError::HeapTwice);
    }
    let frames = size / PAGE_SIZE;
    let start = FRAMES
        .lock()
        .as_mut()
        .and_then(|f| f.alloc_contiguous(frames, 1))
        .ok_or(MemoryError::OutOfFrames("the kernel heap"))?;
    let va = DIRECT_MAP_BASE + start.addr();
    // SAFETY: the frames were just allocated for the heap alone and are direct-mapped;
    // `DONE` makes this the only initialisation.
    unsafe { HEAP.0.lock().init(va as *mut u8, size as usize) };
    Ok(va)
}

/// Gives a frame back to the allocator (it must be nobody's any more).
pub fn free_frame(mfn: Mfn) -> bool {
    FRAMES.lock().as_mut().is_some_and(|f| f.free(mfn).is_ok())
}

/// A zeroed frame, exclusively the caller's.
pub fn alloc_frame() -> Option<OwnedFrame> {
    let mfn = FRAMES.lock().as_mut()?.alloc()?;
    // SAFETY: the allocator just handed this frame out, so nobody else owns or maps it;
    // all RAM is direct-mapped once the final tables are active.
    let mut frame = unsafe { OwnedFrame::new(mfn) };
    frame.bytes_mut().fill(0);
    Some(frame)
}

/// Maps `frame` at `va` in the hypervisor's own address space for ring 3 (the ring-3
/// selftest only: guests get their own, validated, page tables). The frame stays mapped
/// for good.
pub fn map_user_page(va: u64, frame: OwnedFrame, attrs: Attrs) -> Result<(), MemoryError> {
    let root = Mfn::containing(crate::arch::x86_64::cpu::read_cr3());
    let mut guard = FRAMES.lock();
    let frames = guard.as_mut().ok_or(MemoryError::NoUsableRam)?;
    // SAFETY: `root` is the hypervisor's own live address space (CR3); only entries are
    // added, on the way to a new user page, under the allocator lock.
    let tables = unsafe { DirectMapTables::new(frames, u64::MAX) };
    let mut aspace = AddressSpace::attach(root, tables, crate::arch::x86_64::msr::nx_enabled());
    aspace.map_page(va, frame.mfn().addr(), SIZE_4K, attrs)?;
    Ok(())
}

/// Frames the allocator manages, and how many of them are free now.
pub fn frame_counts() -> (u64, u64) {
    FRAMES
        .lock()
        .as_ref()
        .map_or((0, 0), |f| (f.managed_frames(), f.free_frames()))
}

/// Free RAM, for the boot log and the checks that nothing leaked.
pub fn free_bytes() -> u64 {
    FRAMES
        .lock()
        .as_ref()
        .map_or(0, |f| f.free_frames() * PAGE_SIZE)
}

/// The next free address of the MMIO window (the local APIC's page is at its start).
static MMIO_NEXT: spin::Mutex<u64> = spin::Mutex::new(MMIO_BASE + SIZE_2M);

/// Maps `[phys, phys + len)` into the MMIO window of the hypervisor's address space (slot
/// 261, shared by every address space) and returns the virtual address of `phys`:
/// uncached for device registers (`Attrs::MMIO`), or read-only for firmware tables
/// (`Attrs::RODATA`). Refused for RAM the frame allocator manages (that is the direct
/// map's, with its own cache type). Mappings are never removed: devices and firmware
/// tables stay for as long as the hypervisor runs.
pub fn map_device(phys: u64, len: u64, attrs: Attrs) -> Result<u64, MemoryError> {
    let start = phys & !(PAGE_SIZE - 1);
    let end = phys
        .checked_add(len.max(1))
        .and_then(|e| e.checked_next_multiple_of(PAGE_SIZE))
        .ok_or(MemoryError::DeviceRangeIsRam(phys))?;
    let Some((root, _)) = *GDT_STATE.lock() else {
        return Err(MemoryError::NoUsableRam);
    };
    let mut guard = FRAMES.lock();
    let frames = guard.as_mut().ok_or(MemoryError::NoUsableRam)?;
    if let Some(ram) = (start / PAGE_SIZE..end / PAGE_SIZE).find(|&f| frames.manages(Mfn(f))) {
        return Err(MemoryError::DeviceRangeIsRam(ram * PAGE_SIZE));
    }
    let mut next = MMIO_NEXT.lock();
    // The same offset in a 2 MiB page as the physical range, so large pages can be used.
    let va = next.next_multiple_of(SIZE_2M) + start % SIZE_2M;
    let va_end = va + (end - start);
    if va_end > MMIO_BASE + layout::MMIO_SIZE {
        return Err(MemoryError::OutOfFrames("the MMIO window"));
    }
    // SAFETY: the hypervisor's own L4; only fresh addresses of the MMIO window (slot 261,
    // shared by every address space) get entries, under the allocator lock.
    let tables = unsafe { DirectMapTables::new(frames, u64::MAX) };
    let mut aspace = AddressSpace::attach(root, tables, crate::arch::x86_64::msr::nx_enabled());
    aspace.map_range(va, start, end - start, attrs, SIZE_2M)?;
    *next = va_end;
    Ok(va + (phys - start))
}
