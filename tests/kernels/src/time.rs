//! Time as a PV guest reads it: system time from `vcpu_info.time` with the pvclock protocol
//! (`xen.h`, `struct vcpu_time_info`: wait for an even `version`, read the fields, read it
//! again; system time = `system_time` + (TSC - `tsc_timestamp`) shifted by `tsc_shift`
//! and multiplied by `tsc_to_system_mul` / 2^32), the wall clock from `shared_info`
//! (`wc_sec`/`wc_nsec`/`wc_sec_hi` at system time 0, under `wc_version`), and the vCPU
//! timers (`vcpu.h`'s single-shot and periodic timers, `set_timer_op`), all in absolute
//! system time.

use core::{
    ffi::c_void,
    sync::atomic::{fence, Ordering},
};

use ferrovisor_abi::xen::{
    hypercall::Hypercall,
    vcpu::{VcpuOp, VcpuRegisterRunstateMemoryArea, VcpuSetPeriodicTimer, VcpuSetSingleshotTimer},
    xen::VcpuTimeInfo,
    GuestHandle,
};

use crate::{hypercall, shared_info};

pub const NS_PER_MS: u64 = 1_000_000;
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// The CPU's time-stamp counter.
pub fn rdtsc() -> u64 {
    #[cfg(target_os = "none")]
    {
        let (lo, hi): (u32, u32);
        // SAFETY: `rdtsc` only reads the counter (PV guests may: the hypervisor leaves
        // CR4.TSD clear, as Xen does by default).
        unsafe {
            core::arch::asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nostack))
        };
        u64::from(hi) << 32 | u64::from(lo)
    }
    #[cfg(not(target_os = "none"))]
    0
}

/// `delta` TSC ticks in nanoseconds with the pvclock scale: shift, then multiply by
/// `mul` / 2^32.
pub fn scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let shifted = if shift < 0 {
        delta >> shift.unsigned_abs()
    } else {
        delta << shift
    };
    ((u128::from(shifted) * u128::from(mul)) >> 32) as u64
}

/// One consistent read of a `vcpu_time_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// System time (ns) at `tsc`.
    pub now: u64,
    pub tsc: u64,
    /// The (even) version the fields were read under.
    pub version: u32,
    pub system_time: u64,
    pub tsc_timestamp: u64,
    pub mul: u32,
    pub shift: i8,
    /// How many times the version changed under the reader (it retried).
    pub retries: u32,
}

/// Reads the `vcpu_time_info` at `info` with the version protocol.
///
/// # Safety
/// `info` must point to a mapped `vcpu_time_info` (which the hypervisor updates).
pub unsafe fn read_at(info: *const VcpuTimeInfo) -> Reading {
    let mut retries = 0;
    loop {
        // SAFETY: the caller's contract; the hypervisor writes these fields
        // asynchronously, hence volatile reads ordered by fences.
        let r = unsafe {
            let version = core::ptr::read_volatile(&raw const (*info).version);
            fence(Ordering::SeqCst);
            let tsc_timestamp = core::ptr::read_volatile(&raw const (*info).tsc_timestamp);
            let system_time = core::ptr::read_volatile(&raw const (*info).system_time);
            let mul = core::ptr::read_volatile(&raw const (*info).tsc_to_system_mul);
            let shift = core::ptr::read_volatile(&raw const (*info).tsc_shift);
            let tsc = rdtsc();
            fence(Ordering::SeqCst);
            let again = core::ptr::read_volatile(&raw const (*info).version);
            (version, again, tsc_timestamp, system_time, mul, shift, tsc)
        };
        let (version, again, tsc_timestamp, system_time, mul, shift, tsc) = r;
        if version & 1 == 0 && version == again {
            let now =
                system_time.wrapping_add(scale_delta(tsc.wrapping_sub(tsc_timestamp), mul, shift));
            return Reading {
                now,
                tsc,
                version,
                system_time,
                tsc_timestamp,
                mul,
                shift,
                retries,
            };
        }
        retries += 1;
        core::hint::spin_loop();
    }
}

/// Reads vCPU 0's time from its current `vcpu_info` (needs [`shared_info::map`]).
pub fn read() -> Reading {
    let Some(vi) = shared_info::vcpu_info() else {
        crate::fail!("reading the time: shared_info is not mapped");
    };
    // SAFETY: `vcpu_info` points to the mapped vcpu_info (in shared_info, or the page it
    // was moved to); its `time` field is the vCPU's `vcpu_time_info`.
    unsafe { read_at(&raw const (*vi).time) }
}

/// System time now (ns).
pub fn now() -> u64 {
    read().now
}

/// Spins until system time reaches `deadline`.
pub fn spin_until(deadline: u64) {
    while now() < deadline {
        core::hint::spin_loop();
    }
}

/// The wall clock at system time 0, as `shared_info` holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    /// Seconds since the Unix epoch (`wc_sec_hi << 32 | wc_sec`).
    pub sec: u64,
    pub nsec: u32,
    /// The (even) `wc_version` it was read under.
    pub version: u32,
}

impl WallClock {
    /// Unix time (ns) at system time `system_ns`.
    pub fn unix_ns_at(&self, system_ns: u64) -> u64 {
        self.sec * NS_PER_SEC + u64::from(self.nsec) + system_ns
    }
}

/// Reads the wall clock with its version protocol (needs [`shared_info::map`]).
pub fn wallclock() -> WallClock {
    let Some(si) = shared_info::get() else {
        crate::fail!("reading the wall clock: shared_info is not mapped");
    };
    loop {
        // SAFETY: `si` is the mapped shared_info page; the hypervisor updates the fields
        // asynchronously, hence the volatile reads between fences.
        let (version, sec, nsec, sec_hi, again) = unsafe {
            let version = core::ptr::read_volatile(&raw const (*si).wc_version);
            fence(Ordering::SeqCst);
            let sec = core::ptr::read_volatile(&raw const (*si).wc_sec);
            let nsec = core::ptr::read_volatile(&raw const (*si).wc_nsec);
            let sec_hi = core::ptr::read_volatile(&raw const (*si).wc_sec_hi);
            fence(Ordering::SeqCst);
            let again = core::ptr::read_volatile(&raw const (*si).wc_version);
            (version, sec, nsec, sec_hi, again)
        };
        if version & 1 == 0 && version == again {
            return WallClock {
                sec: u64::from(sec_hi) << 32 | u64::from(sec),
                nsec,
                version,
            };
        }
        core::hint::spin_loop();
    }
}

/// A UTC date and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl Utc {
    /// The civil date of `unix_secs` (proleptic Gregorian, Howard Hinnant's
    /// `civil_from_days`).
    pub fn from_unix(unix_secs: u64) -> Utc {
        let days = (unix_secs / 86_400) as i64;
        let rem = unix_secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Utc {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
        }
    }
}

impl core::fmt::Display for Utc {
    /// `YYYY-MM-DD HH:MM:SS`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

fn vcpu_op(cmd: VcpuOp, arg: *mut c_void) -> i64 {
    // SAFETY: every caller passes the structure `cmd` takes, on its stack, for vCPU 0;
    // timers only make the hypervisor send VIRQ_TIMER.
    unsafe { hypercall::vcpu_op(cmd, 0, arg) }
}

/// `VCPUOP_set_singleshot_timer`: VIRQ_TIMER at absolute system time `timeout` (ns).
pub fn set_singleshot_timer(timeout: u64, flags: u32) -> i64 {
    let mut t = VcpuSetSingleshotTimer {
        timeout_abs_ns: timeout,
        flags,
        _cpad0: 0,
    };
    vcpu_op(VcpuOp::SetSingleshotTimer, (&raw mut t).cast())
}

/// `VCPUOP_stop_singleshot_timer`.
pub fn stop_singleshot_timer() -> i64 {
    vcpu_op(VcpuOp::StopSingleshotTimer, core::ptr::null_mut())
}

/// `VCPUOP_set_periodic_timer`: VIRQ_TIMER every `period` ns.
pub fn set_periodic_timer(period: u64) -> i64 {
    let mut t = VcpuSetPeriodicTimer { period_ns: period };
    vcpu_op(VcpuOp::SetPeriodicTimer, (&raw mut t).cast())
}

/// `VCPUOP_stop_periodic_timer` (every vCPU starts with a 10 ms one, as in Xen).
pub fn stop_periodic_timer() -> i64 {
    vcpu_op(VcpuOp::StopPeriodicTimer, core::ptr::null_mut())
}

/// `set_timer_op(timeout)`: the single-shot timer at absolute system time `timeout`; 0
/// cancels it.
pub fn set_timer_op(timeout: u64) -> i64 {
    // SAFETY: no memory argument.
    unsafe { hypercall::hypercall1(Hypercall::SetTimerOp.raw(), timeout) }
}

/// `VCPUOP_register_runstate_memory_area`: the hypervisor keeps vCPU 0's
/// `vcpu_runstate_info` at `va` up to date.
///
/// # Safety
/// `va` must be 48 writable bytes the kernel leaves to the hypervisor for as long as the
/// area is registered.
pub unsafe fn register_runstate_area(va: u64) -> i64 {
    let mut area = VcpuRegisterRunstateMemoryArea {
        addr: GuestHandle(va),
    };
    vcpu_op(VcpuOp::RegisterRunstateMemoryArea, (&raw mut area).cast())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvclock_scaling() {
        // 2 GHz: mul 2^31 with shift 0 halves the ticks.
        assert_eq!(scale_delta(2_000_000, 1 << 31, 0), 1_000_000);
        // A negative shift divides first, a positive one multiplies.
        assert_eq!(scale_delta(4_000_000, 1 << 31, -1), 1_000_000);
        assert_eq!(scale_delta(500_000, 1 << 31, 2), 1_000_000);
        // No overflow on large deltas.
        assert_eq!(scale_delta(u64::MAX >> 4, u32::MAX, 4), {
            let v = (u64::MAX >> 4) << 4;
            ((u128::from(v) * u128::from(u32::MAX)) >> 32) as u64
        });
    }

    #[test]
    fn utc_dates() {
        assert_eq!(Utc::from_unix(0).to_string(), "1970-01-01 00:00:00");
        assert_eq!(
            Utc::from_unix(951_782_400).to_string(),
            "2000-02-29 00:00:00"
        );
        assert_eq!(
            Utc::from_unix(1_700_000_000).to_string(),
            "2023-11-14 22:13:20"
        );
        assert_eq!(
            Utc::from_unix(4_102_444_799).to_string(),
            "2099-12-31 23:59:59"
        );
    }

    #[test]
    fn wallclock_adds_system_time() {
        let wc = WallClock {
            sec: 10,
            nsec: 500,
            version: 2,
        };
        assert_eq!(wc.unix_ns_at(1_000), 10 * NS_PER_SEC + 1_500);
    }
}
