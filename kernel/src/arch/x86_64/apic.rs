//! The local APIC: xAPIC through MMIO, or x2APIC through MSRs where the CPU has it; its
//! timer drives the hypervisor tick, in TSC-deadline mode where available.

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use super::{cpu::rdtsc, msr};

pub const TIMER_VECTOR: u8 = 0xf0;
pub const SPURIOUS_VECTOR: u8 = 0xff;

// Register offsets of the xAPIC MMIO page; the x2APIC MSR is 0x800 + offset / 16.
const REG_ID: u32 = 0x20;
const REG_TPR: u32 = 0x80;
const REG_EOI: u32 = 0xb0;
const REG_SVR: u32 = 0xf0;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
const REG_LVT_TIMER: u32 = 0x320;
const REG_TIMER_INITIAL: u32 = 0x380;
const REG_TIMER_CURRENT: u32 = 0x390;
const REG_TIMER_DIVIDE: u32 = 0x3e0;

const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;
const LVT_TSC_DEADLINE: u32 = 2 << 17;

const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    XApic,
    X2Apic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    Periodic,
    TscDeadline,
}

const MODE_NONE: u8 = 0;
const MODE_XAPIC: u8 = 1;
const MODE_X2APIC: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(MODE_NONE);
/// Virtual address of the xAPIC MMIO page (mapped uncached by the memory setup).
static MMIO: AtomicU64 = AtomicU64::new(0);
/// TSC ticks between two deadline-mode interrupts (0 in periodic mode).
static DEADLINE_PERIOD: AtomicU64 = AtomicU64::new(0);
/// The periodic timer's initial count the first CPU calibrated (the others reuse it).
static PERIODIC_COUNT: AtomicU64 = AtomicU64::new(0);

/// What an inter-processor interrupt does at its destination (the ICR's delivery mode).
#[derive(Clone, Copy, Debug)]
pub enum Ipi {
    /// Interrupt `vector`.
    Fixed(u8),
    /// A non-maskable interrupt.
    Nmi,
    /// INIT: the processor resets and waits for a STARTUP.
    Init,
    /// STARTUP: the processor starts in real mode at page `vector` (address vector << 12).
    Startup(u8),
}

/// Where an inter-processor interrupt goes.
#[derive(Clone, Copy, Debug)]
pub enum Dest {
    /// The processor with this APIC id.
    Id(u32),
    /// Every processor but this one.
    AllButSelf,
}

/// Sends an inter-processor interrupt and waits until the local APIC has sent it.
pub fn send_ipi(ipi: Ipi, dest: Dest) {
    const ASSERT: u32 = 1 << 14;
    const ALL_BUT_SELF: u32 = 0b11 << 18;
    const PENDING: u32 = 1 << 12;
    let mode = match ipi {
        Ipi::Fixed(v) => v as u32,
        Ipi::Nmi => 0b100 << 8 | ASSERT,
        Ipi::Init => 0b101 << 8 | ASSERT,
        Ipi::Startup(page) => 0b110 << 8 | ASSERT | page as u32,
    };
    let (low, id) = match dest {
        Dest::Id(id) => (mode, id),
        Dest::AllButSelf => (mode | ALL_BUT_SELF, 0),
    };
    match MODE.load(Ordering::Relaxed) {
        // SAFETY: x2APIC mode is on; its ICR is one 64-bit MSR (destination in the high
        // half), and writing it only sends the interrupt.
        MODE_X2APIC => unsafe {
            msr::write(
                msr::X2APIC_BASE + REG_ICR_LOW / 16,
                (id as u64) << 32 | low as u64,
            )
        },
        MODE_XAPIC => {
            write(REG_ICR_HIGH, id << 24);
            write(REG_ICR_LOW, low);
            while read(REG_ICR_LOW) & PENDING != 0 {
                core::hint::spin_loop();
            }
        }
        _ => {}
    }
}

/// The physical address of the xAPIC registers, from IA32_APIC_BASE.
pub fn mmio_phys() -> u64 {
    // SAFETY: IA32_APIC_BASE exists on every CPU with a local APIC (all x86-64 CPUs).
    unsafe { msr::read(msr::IA32_APIC_BASE) & 0x000f_ffff_ffff_f000 }
}

fn read(reg: u32) -> u32 {
    match MODE.load(Ordering::Relaxed) {
        // SAFETY: the x2APIC MSRs exist once x2APIC mode is on (`init`).
        MODE_X2APIC => unsafe { msr::read(msr::X2APIC_BASE + reg / 16) as u32 },
        MODE_XAPIC => {
            let p = (MMIO.load(Ordering::Relaxed) + reg as u64) as *const u32;
            // SAFETY: `init` stored the address of the mapped, uncached APIC page; `reg` is
            // one of the register offsets above, inside that page.
            unsafe { p.read_volatile() }
        }
        _ => 0,
    }
}

fn write(reg: u32, value: u32) {
    match MODE.load(Ordering::Relaxed) {
        // SAFETY: as in `read`.
        MODE_X2APIC => unsafe { msr::write(msr::X2APIC_BASE + reg / 16, value as u64) },
        MODE_XAPIC => {
            let p = (MMIO.load(Ordering::Relaxed) + reg as u64) as *mut u32;
            // SAFETY: as in `read`.
            unsafe { p.write_volatile(value) }
        }
        _ => {}
    }
}

/// Enables this CPU's local APIC, in x2APIC mode when `use_x2apic`, otherwise through the
/// MMIO page mapped at `mmio_virt`.
///
/// # Safety
/// Unless `use_x2apic`, `mmio_virt` must map this CPU's APIC registers ([`mmio_phys`])
/// uncached for as long as the hypervisor runs. `use_x2apic` only if CPUID reports x2APIC.
pub unsafe fn init(use_x2apic: bool, mmio_virt: u64) -> Mode {
    // SAFETY: enabling the APIC in IA32_APIC_BASE, then (a separate write, since x2APIC
    // mode may only be entered from enabled xAPIC mode) x2APIC mode when the caller says
    // the CPU has it; nothing else uses the APIC yet.
    unsafe {
        let base = msr::read(msr::IA32_APIC_BASE) | APIC_BASE_ENABLE;
        msr::write(msr::IA32_APIC_BASE, base);
        if use_x2apic {
            msr::write(msr::IA32_APIC_BASE, base | APIC_BASE_X2APIC);
        }
    }
    let mode = if use_x2apic {
        MODE.store(MODE_X2APIC, Ordering::Relaxed);
        Mode::X2Apic
    } else {
        MMIO.store(mmio_virt, Ordering::Relaxed);
        MODE.store(MODE_XAPIC, Ordering::Relaxed);
        Mode::XApic
    };
    // Accept every priority, and software-enable with the spurious vector.
    write(REG_TPR, 0);
    write(REG_SVR, (1 << 8) | SPURIOUS_VECTOR as u32);
    mode
}

pub fn id() -> u32 {
    match MODE.load(Ordering::Relaxed) {
        MODE_X2APIC => read(REG_ID),
        _ => read(REG_ID) >> 24,
    }
}

pub fn eoi() {
    write(REG_EOI, 0);
}

/// Starts the tick: every `period_ns`, an interrupt on [`TIMER_VECTOR`]. Uses TSC-deadline
/// mode when the CPU has it (re-armed by [`on_tick`]); otherwise the APIC's own counter in
/// periodic mode, calibrated here against the TSC.
pub fn start_timer(period_ns: u64, tsc_hz: u64) -> TimerMode {
    let tsc_deadline = x86::cpuid::CpuId::new()
        .get_feature_info()
        .is_some_and(|f| f.has_tsc_deadline());
    if tsc_deadline {
        let period = tsc_hz * period_ns / 1_000_000_000;
        DEADLINE_PERIOD.store(period, Ordering::Relaxed);
        write(REG_LVT_TIMER, LVT_TSC_DEADLINE | TIMER_VECTOR as u32);
        arm_deadline(period);
        return TimerMode::TscDeadline;
    }
    let known = PERIODIC_COUNT.load(Ordering::Relaxed) as u32;
    if known != 0 {
        write(REG_LVT_TIMER, LVT_PERIODIC | TIMER_VECTOR as u32);
        write(REG_TIMER_DIVIDE, 0x3);
        write(REG_TIMER_INITIAL, known);
        return TimerMode::Periodic;
    }
    // Count the APIC timer down (divide by 16) for 10 ms of TSC time, masked.
    write(REG_TIMER_DIVIDE, 0x3);
    write(REG_LVT_TIMER, LVT_MASKED | TIMER_VECTOR as u32);
    write(REG_TIMER_INITIAL, u32::MAX);
    let window = tsc_hz / 100;
    let start = rdtsc();
    while rdtsc() - start < window {
        core::hint::spin_loop();
    }
    let elapsed = u32::MAX - read(REG_TIMER_CURRENT);
    write(REG_TIMER_INITIAL, 0);
    let apic_hz = elapsed as u64 * 100;
    let count = (apic_hz * period_ns / 1_000_000_000).clamp(1, u32::MAX as u64) as u32;
    PERIODIC_COUNT.store(count as u64, Ordering::Relaxed);
    write(REG_LVT_TIMER, LVT_PERIODIC | TIMER_VECTOR as u32);
    write(REG_TIMER_DIVIDE, 0x3);
    write(REG_TIMER_INITIAL, count);
    TimerMode::Periodic
}

fn arm_deadline(period: u64) {
    // SAFETY: only reached once `start_timer` found TSC-deadline in CPUID, so the MSR
    // exists; writing it only schedules a timer interrupt. The fence orders the LVT write
    // (an MMIO store in xAPIC mode) before the deadline, which the SDM requires.
    unsafe {
        core::arch::asm!("mfence", options(nostack, preserves_flags));
        msr::write(msr::IA32_TSC_DEADLINE, rdtsc() + period)
    }
}

/// Called from the timer interrupt: re-arms a deadline-mode timer.
pub fn on_tick() {
    let period = DEADLINE_PERIOD.load(Ordering::Relaxed);
    if period != 0 {
        arm_deadline(period);
    }
}
