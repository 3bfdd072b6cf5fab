//! Per-CPU GDT and TSS, laid out as Xen's x86-64 PV ABI expects.
//!
//! A PV guest's GDT fills the first 14 pages of a 16-page (8192-entry) table and the
//! hypervisor owns the entries from `FIRST_RESERVED_GDT_ENTRY` (= 14 * 512) on, with the
//! flat selectors of `arch-x86/xen-x86_64.h`. So each CPU has a 16-page GDT *window*
//! (`mm::layout::GDT_WINDOWS_BASE`): its last two pages hold the hypervisor's descriptors
//! and the first 14 will map the running vCPU's GDT frames. Until guests run they are
//! left unmapped (no selector below 0xe000 is ever loaded).

use core::mem::size_of;

use ferrovisor_abi::layout::FIRST_RESERVED_GDT_ENTRY;

/// Selectors in the hypervisor's reserved range: its own (Xen's values) and the guests'
/// flat ring-3 ones from the ABI. `STAR` will be built from them: SYSCALL loads CS/SS from
/// HYPERVISOR_CS/+8, SYSRET from FLAT_RING3_CS32 + 16 (CS64) and + 8 (SS).
pub mod selector {
    pub use ferrovisor_abi::layout::{FLAT_RING3_CS32, FLAT_RING3_CS64, FLAT_RING3_DS32};

    pub const HYPERVISOR_CS: u16 = 0xe008;
    pub const HYPERVISOR_DS: u16 = 0xe010;
    pub const TSS: u16 = 0xe040;
    pub const LDT: u16 = 0xe050;
}

/// Each CPU's reserved GDT page (set by `load`), where its LDT descriptor is written.
static RESERVED_PAGE: [core::sync::atomic::AtomicU64; super::smp::MAX_CPUS] =
    [const { core::sync::atomic::AtomicU64::new(0) }; super::smp::MAX_CPUS];

/// Loads an LDT of `entries` descriptors at hypervisor address `base` (the CPU's LDT
/// window), or none when `entries` is 0.
///
/// # Safety
/// `base..base + entries * 8` must be mapped (the LDT window holding checked descriptor
/// pages) for as long as this LDT is loaded.
pub unsafe fn load_ldt(base: u64, entries: u32) {
    let page = RESERVED_PAGE
        .get(super::percpu::cpu() as usize)
        .map_or(0, |p| p.load(core::sync::atomic::Ordering::Relaxed));
    if entries == 0 || page == 0 {
        // SAFETY: a null LDT selector only makes LDT selectors fault.
        unsafe { core::arch::asm!("lldt {0:x}", in(reg) 0u64, options(nostack)) };
        return;
    }
    let limit = (entries as u64 * 8 - 1) & 0xf_ffff;
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x82 << 40) // present, type 2: LDT
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    let slot = (selector::LDT as usize >> 3) - FIRST_RESERVED_GDT_ENTRY;
    let p = (page as *mut u64).wrapping_add(slot);
    // SAFETY: the reserved GDT page is mapped writable (`load`); the descriptor describes
    // the caller's mapped LDT window; loading it only changes where LDT selectors point.
    unsafe {
        p.write_volatile(low);
        p.wrapping_add(1).write_volatile(base >> 32);
        core::arch::asm!("lldt {0:x}", in(reg) selector::LDT as u64, options(nostack));
    }
}

/// The hardware TSS (Intel SDM vol. 3, 8.7).
#[repr(C, packed(4))]
pub struct Tss {
    _reserved0: u32,
    /// Stacks for privilege changes; RSP0 is where a guest trap lands.
    pub rsp: [u64; 3],
    _reserved1: u64,
    /// Interrupt stacks, IST1..IST7 (index 0 here is IST1).
    pub ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    /// Past the limit: no I/O permission bitmap, so ring 3 port I/O always faults.
    pub iomap_base: u16,
}

const _: () = assert!(size_of::<Tss>() == 104);

impl Tss {
    pub const fn new() -> Tss {
        Tss {
            _reserved0: 0,
            rsp: [0; 3],
            _reserved1: 0,
            ist: [0; 7],
            _reserved2: 0,
            _reserved3: 0,
            iomap_base: size_of::<Tss>() as u16,
        }
    }
}

impl Default for Tss {
    fn default() -> Self {
        Tss::new()
    }
}

/// IST slots (1-based, as the IDT gate encodes them).
pub const IST_DOUBLE_FAULT: u8 = 1;
pub const IST_NMI: u8 = 2;
pub const IST_MACHINE_CHECK: u8 = 3;

const CODE64_DPL0: u64 = 0x00af_9b00_0000_ffff;
const DATA_DPL0: u64 = 0x00cf_9300_0000_ffff;
const CODE32_DPL3: u64 = 0x00cf_fb00_0000_ffff;
const DATA_DPL3: u64 = 0x00cf_f300_0000_ffff;
const CODE64_DPL3: u64 = 0x00af_fb00_0000_ffff;

fn tss_descriptor(base: u64) -> (u64, u64) {
    let limit = (size_of::<Tss>() - 1) as u64;
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40) // present, type 9: available 64-bit TSS
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    (low, base >> 32)
}

/// Fills the hypervisor's reserved GDT page (mapped writable at `reserved_page`, which
/// must be `window + FIRST_RESERVED_GDT_BYTE`), loads the GDT window, reloads the
/// segment registers and loads the TSS.
///
/// # Safety
/// `window` must be this CPU's (index `cpu`) GDT window with its reserved pages mapped
/// writable at `reserved_page`, and `tss` must stay alive and unmoved for as long as the
/// CPU runs.
pub unsafe fn load(cpu: u32, window: u64, reserved_page: u64, tss: &'static Tss) {
    let entry = |sel: u16| -> *mut u64 {
        let index = (sel as usize >> 3) - FIRST_RESERVED_GDT_ENTRY;
        (reserved_page as *mut u64).wrapping_add(index)
    };
    if let Some(p) = RESERVED_PAGE.get(cpu as usize) {
        p.store(reserved_page, core::sync::atomic::Ordering::Relaxed);
    }
    let (tss_low, tss_high) = tss_descriptor(tss as *const Tss as u64);
    // SAFETY: every selector below lies in the reserved page the caller mapped for us.
    unsafe {
        entry(selector::HYPERVISOR_CS).write_volatile(CODE64_DPL0);
        entry(selector::HYPERVISOR_DS).write_volatile(DATA_DPL0);
        entry(selector::FLAT_RING3_CS32 & !3).write_volatile(CODE32_DPL3);
        entry(selector::FLAT_RING3_DS32 & !3).write_volatile(DATA_DPL3);
        entry(selector::FLAT_RING3_CS64 & !3).write_volatile(CODE64_DPL3);
        entry(selector::TSS).write_volatile(tss_low);
        entry(selector::TSS + 8).write_volatile(tss_high);
    }
    let gdtr = x86::dtables::DescriptorTablePointer::<u64> {
        limit: 0xffff,
        base: window as *const u64,
    };
    // SAFETY: the descriptors just written are valid; the far return reloads CS with the
    // new code selector, the data selectors are reloaded, and the TSS descriptor is fresh
    // (not busy).
    unsafe {
        x86::dtables::lgdt(&gdtr);
        core::arch::asm!(
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ss, {ds:x}",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            cs = in(reg) selector::HYPERVISOR_CS as u64,
            ds = in(reg) selector::HYPERVISOR_DS as u64,
            tmp = lateout(reg) _,
        );
        x86::task::load_tr(x86::segmentation::SegmentSelector::from_raw(selector::TSS));
    }
}
