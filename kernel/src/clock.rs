//! Time: the TSC (calibrated at boot) gives a monotonic clock in nanoseconds since the
//! hypervisor started; the CMOS RTC read at boot anchors the wall clock; the APIC timer
//! tick counts here.

use core::sync::atomic::{AtomicU64, Ordering};

use ferrovisor::time::{rtc::DateTime, scale::TscScale};

use crate::arch::x86_64::cpu::rdtsc;

static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
/// `TscScale` packed as `mul | (shift as u8) << 32`, 0 until calibrated.
static SCALE: AtomicU64 = AtomicU64::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);
/// Unix time (seconds) at `BOOT_TSC`.
static BOOT_UNIX: AtomicU64 = AtomicU64::new(0);

/// Marks time zero (the first thing `kernel_entry` does).
pub fn mark_boot() {
    BOOT_TSC.store(rdtsc(), Ordering::Relaxed);
}

pub fn set_tsc_hz(hz: u64) {
    let s = TscScale::from_hz(hz);
    TSC_HZ.store(hz, Ordering::Relaxed);
    SCALE.store(
        s.mul as u64 | ((s.shift as u8 as u64) << 32),
        Ordering::Relaxed,
    );
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Nanoseconds since boot (0 until the TSC is calibrated).
pub fn now_ns() -> u64 {
    let packed = SCALE.load(Ordering::Relaxed);
    if packed == 0 {
        return 0;
    }
    let scale = TscScale {
        mul: packed as u32,
        shift: (packed >> 32) as u8 as i8,
    };
    scale.ticks_to_ns(rdtsc().saturating_sub(BOOT_TSC.load(Ordering::Relaxed)))
}

/// Anchors the wall clock: `now` was read from the RTC just now.
pub fn set_wallclock(now: &DateTime) {
    let since_boot = now_ns() / 1_000_000_000;
    BOOT_UNIX.store(now.to_unix().saturating_sub(since_boot), Ordering::Relaxed);
}

/// Unix time (seconds) at system time 0.
pub fn boot_unix() -> u64 {
    BOOT_UNIX.load(Ordering::Relaxed)
}

/// The TSC scale the clock uses (what guests get in `vcpu_time_info`).
pub fn scale() -> TscScale {
    let packed = SCALE.load(Ordering::Relaxed);
    TscScale {
        mul: packed as u32,
        shift: (packed >> 32) as u8 as i8,
    }
}

pub fn tick() {
    TICKS.fetch_add(1, Ordering::Relaxed);
}

pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}
