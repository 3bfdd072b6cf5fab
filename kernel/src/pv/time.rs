//! PV time: the per-vCPU `vcpu_time_info` record (pvclock) and the wall clock in
//! `shared_info` (`xen.h`).
//!
//! # System time
//!
//! System time is nanoseconds since the hypervisor started, one clock for every domain. A
//! guest computes it from its `vcpu_time_info` record and its own `rdtsc` as
//! `system_time + ((((tsc - tsc_timestamp) << tsc_shift) * tsc_to_system_mul) >> 32)`
//! (`xen.h`); Linux does it in 64-bit arithmetic (the shift in 64 bits, then the 64x32-bit
//! product's bits 32..96, `asm/pvclock.h`), which [`guest_read`] reproduces.
//!
//! The hypervisor's own clock is a [`SystemClock`]: `epoch_ns + scale(tsc - epoch_tsc)`, the
//! scale being [`TscScale`]. Each record it publishes is that clock sampled at the TSC of
//! the update. Because the scale rounds down, `scale(a) + scale(b) <= scale(a + b)`, so a
//! guest extrapolating an older record never runs ahead of the clock, and a guest using the
//! newer record starts exactly at the clock's value: guest time never goes backwards across
//! an update, and stays at most two nanoseconds below the hypervisor's clock (one rounding
//! per term; with a negative shift the dropped low TSC bits add up to one more), for deltas
//! the guest's 64-bit shift does not overflow, i.e. as long as records are refreshed well
//! within 2^(64 - shift) ticks.
//!
//! # The version protocol
//!
//! Records live in guest-visible memory and guests read them without locks: the writer
//! makes `version` odd, writes the fields, then makes `version` even again, each store
//! ordered after the previous one; a reader retries while `version` is odd or changed
//! across its read (`xen.h`, like Linux's seqlock). [`begin_update`], [`write_fields`] and
//! [`end_update`] are the three ordered steps; [`update`] does all three on a record the
//! caller holds. The version numbers are computed from whatever the guest-writable page
//! holds, so a guest scribbling on them cannot make the writer publish a stable-looking
//! version while the update is in progress.
//!
//! # The wall clock
//!
//! `shared_info.wc_sec_hi:wc_sec` and `wc_nsec` hold the Unix time at system time 0, under
//! the same version protocol with `wc_version` (on x86-64 `wc_sec_hi` sits directly in
//! `shared_info`, after `wc_nsec`; only 32-bit x86 keeps it in `arch_shared_info`). A guest
//! adds its system time to get the time of day. Linux 6.1 reads only the low 32 bits
//! (`pvclock_read_wallclock`), so it is correct until 2106; the high word is filled for
//! guests that use it.

use core::sync::atomic::{compiler_fence, Ordering};

use ferrovisor_abi::xen::xen::{
    SharedInfo, VcpuTimeInfo, XEN_PVCLOCK_GUEST_STOPPED, XEN_PVCLOCK_TSC_STABLE_BIT,
};

use crate::time::scale::TscScale;

const NS_PER_SEC: u64 = 1_000_000_000;

/// Why a time record was not published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvTimeError {
    /// The scale's multiplier is 0 (the TSC frequency was never measured). Guests divide by
    /// `tsc_to_system_mul` to derive the TSC frequency (Linux's `pvclock_tsc_khz`), so such
    /// a record would crash them.
    NoTscScale,
}

/// The first step of an update: the odd version to store before touching the fields.
///
/// From an even (stable) version this is `version + 1`, as Xen does. From an odd one (only
/// a guest writing to its own record produces that) it is `version + 2`, so the value still
/// changes and stays odd.
pub const fn version_begin(version: u32) -> u32 {
    version.wrapping_add(1) | 1
}

/// The last step of an update: the even version to store after the fields.
pub const fn version_end(version: u32) -> u32 {
    version.wrapping_add(1) & !1
}

/// The fields of a `vcpu_time_info` record other than `version` and the padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeFields {
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
    /// `XEN_PVCLOCK_*`.
    pub flags: u8,
}

impl TimeFields {
    /// The record for system time `system_time_ns` at TSC value `tsc`. `tsc_stable` says
    /// the TSC is invariant and synchronised across physical CPUs
    /// (`XEN_PVCLOCK_TSC_STABLE_BIT`): guests then trust each vCPU's reading without a
    /// global "last value" clamp.
    pub fn new(
        tsc: u64,
        system_time_ns: u64,
        scale: TscScale,
        tsc_stable: bool,
    ) -> Result<Self, PvTimeError> {
        if scale.mul == 0 {
            return Err(PvTimeError::NoTscScale);
        }
        Ok(Self {
            tsc_timestamp: tsc,
            system_time: system_time_ns,
            tsc_to_system_mul: scale.mul,
            tsc_shift: scale.shift,
            flags: if tsc_stable {
                XEN_PVCLOCK_TSC_STABLE_BIT
            } else {
                0
            },
        })
    }

    /// The same record with `XEN_PVCLOCK_GUEST_STOPPED` set: the vCPU was paused (or the
    /// domain restored), so the guest should not blame the gap on soft lockups. The guest
    /// clears the flag itself.
    pub const fn guest_stopped(mut self) -> Self {
        self.flags |= XEN_PVCLOCK_GUEST_STOPPED;
        self
    }
}

/// Step 1 of 3: marks the record as being updated (odd version).
pub fn begin_update(info: &mut VcpuTimeInfo) {
    info.version = version_begin(info.version);
}

/// Step 2 of 3: the fields. The padding is zeroed, as the hypervisor writes every byte of
/// the record it owns.
pub fn write_fields(info: &mut VcpuTimeInfo, fields: &TimeFields) {
    info.pad0 = 0;
    info.tsc_timestamp = fields.tsc_timestamp;
    info.system_time = fields.system_time;
    info.tsc_to_system_mul = fields.tsc_to_system_mul;
    info.tsc_shift = fields.tsc_shift;
    info.flags = fields.flags;
    info.pad1 = [0; 2];
}

/// Step 3 of 3: marks the record as stable again (even version).
pub fn end_update(info: &mut VcpuTimeInfo) {
    info.version = version_end(info.version);
}

/// Publishes system time `system_time_ns` at TSC `tsc` in `info`, following the version
/// protocol. When the record lives in guest memory that another CPU may be reading, the
/// caller performs the three steps as three ordered stores instead (x86 keeps stores in
/// order; the compiler must too).
pub fn update(
    info: &mut VcpuTimeInfo,
    tsc: u64,
    system_time_ns: u64,
    scale: TscScale,
    tsc_stable: bool,
) -> Result<(), PvTimeError> {
    let fields = TimeFields::new(tsc, system_time_ns, scale, tsc_stable)?;
    begin_update(info);
    compiler_fence(Ordering::SeqCst);
    write_fields(info, &fields);
    compiler_fence(Ordering::SeqCst);
    end_update(info);
    Ok(())
}

/// System time as a guest computes it from `info` at TSC value `tsc`, with a 64-bit guest's
/// arithmetic (wrapping where the guest's registers wrap). Ignores `version`: a guest only
/// trusts a value read between two equal even versions.
pub fn guest_read(info: &VcpuTimeInfo, tsc: u64) -> u64 {
    let delta = tsc.wrapping_sub(info.tsc_timestamp);
    let shift = i32::from(info.tsc_shift);
    let shifted = if shift >= 0 {
        delta.checked_shl(shift.unsigned_abs()).unwrap_or(0)
    } else {
        delta.checked_shr(shift.unsigned_abs()).unwrap_or(0)
    };
    // The guest keeps bits 32..96 of the 96-bit product.
    let product = u128::from(shifted) * u128::from(info.tsc_to_system_mul);
    let offset = (product >> 32) as u64;
    info.system_time.wrapping_add(offset)
}

/// The TSC frequency in kHz a guest derives from `info` (`xen.h`'s
/// `((10^9 << 32) / tsc_to_system_mul) >> tsc_shift`, in kHz as Linux's `pvclock_tsc_khz`),
/// or `None` for a multiplier of 0.
pub fn guest_tsc_khz(info: &VcpuTimeInfo) -> Option<u64> {
    if info.tsc_to_system_mul == 0 {
        return None;
    }
    let khz = (1_000_000u64 << 32) / u64::from(info.tsc_to_system_mul);
    let shift = i32::from(info.tsc_shift);
    Some(if shift < 0 {
        khz.checked_shl(shift.unsigned_abs()).unwrap_or(0)
    } else {
        khz.checked_shr(shift.unsigned_abs()).unwrap_or(0)
    })
}

/// The hypervisor's system clock: `epoch_ns + scale(tsc - epoch_tsc)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemClock {
    pub epoch_tsc: u64,
    pub epoch_ns: u64,
    pub scale: TscScale,
}

impl SystemClock {
    /// The clock that reads 0 at TSC value `boot_tsc`.
    pub const fn new(boot_tsc: u64, scale: TscScale) -> Self {
        Self {
            epoch_tsc: boot_tsc,
            epoch_ns: 0,
            scale,
        }
    }

    /// System time at TSC value `tsc` (the epoch's time for a TSC before the epoch).
    pub fn now(&self, tsc: u64) -> u64 {
        self.epoch_ns
            .saturating_add(self.scale.ticks_to_ns(tsc.saturating_sub(self.epoch_tsc)))
    }

    /// Switches to a new scale (a recalibrated TSC frequency) from TSC value `tsc` on, with
    /// no jump: the clock continues from its value at `tsc`.
    pub fn rescale(&mut self, tsc: u64, scale: TscScale) {
        self.epoch_ns = self.now(tsc);
        self.epoch_tsc = tsc.max(self.epoch_tsc);
        self.scale = scale;
    }

    /// Publishes this clock, sampled at TSC value `tsc`, in `info`.
    pub fn publish(
        &self,
        info: &mut VcpuTimeInfo,
        tsc: u64,
        tsc_stable: bool,
    ) -> Result<(), PvTimeError> {
        update(info, tsc, self.now(tsc), self.scale, tsc_stable)
    }
}

/// A Unix time: seconds and nanoseconds since 1970-01-01 00:00 UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixTime {
    pub sec: u64,
    /// Below 1_000_000_000.
    pub nsec: u32,
}

impl UnixTime {
    /// From nanoseconds since the epoch.
    pub const fn from_ns(ns: u128) -> Self {
        let sec = ns / NS_PER_SEC as u128;
        Self {
            sec: if sec > u64::MAX as u128 {
                u64::MAX
            } else {
                sec as u64
            },
            nsec: (ns % NS_PER_SEC as u128) as u32,
        }
    }

    /// Nanoseconds since the epoch.
    pub const fn as_ns(&self) -> u128 {
        self.sec as u128 * NS_PER_SEC as u128 + self.nsec as u128
    }
}

/// The wall clock at system time 0, from a Unix time `now` read at system time
/// `system_time_ns`. A `now` earlier than the system time (a clock set before 1970 plus
/// uptime) gives the epoch itself.
pub fn wall_clock_at_boot(now: UnixTime, system_time_ns: u64) -> UnixTime {
    UnixTime::from_ns(now.as_ns().saturating_sub(u128::from(system_time_ns)))
}

/// Publishes the wall clock at system time 0 in `shared_info` under `wc_version`'s
/// protocol (odd while the three fields change).
pub fn set_wall_clock(shared: &mut SharedInfo, at_boot: UnixTime) {
    shared.wc_version = version_begin(shared.wc_version);
    compiler_fence(Ordering::SeqCst);
    shared.set_wc_seconds(at_boot.sec);
    shared.wc_nsec = at_boot.nsec % NS_PER_SEC as u32;
    compiler_fence(Ordering::SeqCst);
    shared.wc_version = version_end(shared.wc_version);
}

/// Reads the wall clock at system time 0 the way a guest does, `None` while an update is
/// in progress (odd `wc_version`).
pub fn read_wall_clock(shared: &SharedInfo) -> Option<UnixTime> {
    if shared.wc_version & 1 != 0 {
        return None;
    }
    Some(UnixTime {
        sec: shared.wc_seconds(),
        nsec: shared.wc_nsec,
    })
}

/// The time of day a guest computes: the wall clock at boot plus its system time read from
/// `info` at TSC `tsc`. `None` while either record is being updated.
pub fn guest_time_of_day(shared: &SharedInfo, info: &VcpuTimeInfo, tsc: u64) -> Option<UnixTime> {
    if info.version & 1 != 0 {
        return None;
    }
    let boot = read_wall_clock(shared)?;
    Some(UnixTime::from_ns(
        boot.as_ns() + u128::from(guest_read(info, tsc)),
    ))
}

#[cfg(test)]
mod tests {
    use zerocopy::FromZeros;

    use super::*;

    const FREQUENCIES: [u64; 6] = [
        1_000_000_000,
        1_193_182,
        2_500_000_000,
        3_000_100_000,
        3_999_999_999,
        10_000_000_000,
    ];

    fn record() -> VcpuTimeInfo {
        VcpuTimeInfo::new_zeroed()
    }

    #[test]
    fn version_is_even_after_update_and_odd_during() {
        let mut info = record();
        let scale = TscScale::from_hz(2_500_000_000);
        for round in 1..=3u32 {
            update(&mut info, 1000 * u64::from(round), 5, scale, true).unwrap();
            assert_eq!(info.version, 2 * round);
        }
        begin_update(&mut info);
        assert_eq!(info.version, 7);
        end_update(&mut info);
        assert_eq!(info.version, 8);
    }

    #[test]
    fn versions_from_guest_scribbles_stay_odd_then_even() {
        for v in [0u32, 1, 2, 0x7fff_ffff, u32::MAX - 1, u32::MAX] {
            let odd = version_begin(v);
            assert_eq!(odd & 1, 1, "{v}");
            assert_ne!(odd, v, "{v}");
            let even = version_end(odd);
            assert_eq!(even & 1, 0, "{v}");
            assert_ne!(even, odd, "{v}");
        }
        assert_eq!(version_begin(u32::MAX), 1);
        assert_eq!(version_end(u32::MAX), 0);
    }

    #[test]
    fn fields_and_flags() {
        let mut info = record();
        info.pad0 = 0xdead;
        info.pad1 = [1, 2];
        let scale = TscScale::from_hz(3_000_100_000);
        update(&mut info, 123, 456, scale, true).unwrap();
        assert_eq!(info.tsc_timestamp, 123);
        assert_eq!(info.system_time, 456);
        assert_eq!(info.tsc_to_system_mul, scale.mul);
        assert_eq!(info.tsc_shift, scale.shift);
        assert_eq!(info.flags, XEN_PVCLOCK_TSC_STABLE_BIT);
        assert_eq!((info.pad0, info.pad1), (0, [0, 0]));
        update(&mut info, 123, 456, scale, false).unwrap();
        assert_eq!(info.flags, 0);
        let stopped = TimeFields::new(1, 2, scale, true).unwrap().guest_stopped();
        assert_eq!(
            stopped.flags,
            XEN_PVCLOCK_TSC_STABLE_BIT | XEN_PVCLOCK_GUEST_STOPPED
        );
    }

    #[test]
    fn unmeasured_tsc_is_refused_untouched() {
        let mut info = record();
        assert_eq!(
            update(&mut info, 1, 2, TscScale::from_hz(0), true),
            Err(PvTimeError::NoTscScale)
        );
        assert_eq!(info.version, 0);
        assert_eq!(guest_tsc_khz(&info), None);
    }

    #[test]
    fn guest_read_matches_ticks_to_ns() {
        for hz in FREQUENCIES {
            let scale = TscScale::from_hz(hz);
            let mut info = record();
            let base_tsc = 0x1234_5678_9abc;
            let base_ns = 42_000_000_000;
            update(&mut info, base_tsc, base_ns, scale, true).unwrap();
            for delta in [0u64, 1, 7, 1_000, hz / 1000, hz, 60 * hz, 3600 * hz] {
                assert_eq!(
                    guest_read(&info, base_tsc + delta),
                    base_ns + scale.ticks_to_ns(delta),
                    "{hz} Hz, delta {delta}"
                );
            }
        }
    }

    #[test]
    fn guest_derives_the_tsc_frequency() {
        for hz in FREQUENCIES {
            let mut info = record();
            update(&mut info, 0, 0, TscScale::from_hz(hz), true).unwrap();
            let khz = guest_tsc_khz(&info).unwrap();
            // The guest divides before it shifts, so a negative shift costs precision;
            // 10 ppm covers it.
            let want = hz / 1000;
            assert!(
                khz.abs_diff(want) <= want / 100_000 + 1,
                "{hz} Hz gave {khz} kHz"
            );
        }
    }

    #[test]
    fn monotonic_across_updates_and_within_two_nanoseconds_of_the_clock() {
        for hz in FREQUENCIES {
            let clock = SystemClock::new(1_000_000, TscScale::from_hz(hz));
            let mut info = record();
            clock.publish(&mut info, 1_000_000, true).unwrap();
            let mut last = 0;
            let mut tsc = 1_000_000u64;
            // Irregular steps and updates: every 1..=13 ticks, an update every few reads.
            for i in 0..20_000u64 {
                tsc += 1 + (i * 7919) % 13 + if i % 500 == 0 { hz / 100 } else { 0 };
                if i % 3 == 0 {
                    clock.publish(&mut info, tsc, true).unwrap();
                }
                let read = guest_read(&info, tsc);
                let exact = clock.now(tsc);
                assert!(read >= last, "{hz} Hz: went back from {last} to {read}");
                assert!(
                    read <= exact && exact - read <= 2,
                    "{hz} Hz: {read} vs {exact}"
                );
                last = read;
            }
        }
    }

    #[test]
    fn rescale_does_not_jump() {
        let mut clock = SystemClock::new(0, TscScale::from_hz(1_000_000_000));
        let before = clock.now(5_000_000_000);
        clock.rescale(5_000_000_000, TscScale::from_hz(2_000_000_000));
        assert_eq!(clock.now(5_000_000_000), before);
        assert_eq!(clock.now(7_000_000_000), before + 1_000_000_000);
        // A TSC before the epoch reads as the epoch.
        assert_eq!(clock.now(0), before);
    }

    #[test]
    fn wall_clock_round_trip() {
        let mut shared = SharedInfo::new_zeroed();
        let now = UnixTime {
            sec: 1_700_000_000,
            nsec: 250_000_000,
        };
        let uptime = 3_750_000_000; // 3.75 s
        let boot = wall_clock_at_boot(now, uptime);
        assert_eq!(
            boot,
            UnixTime {
                sec: 1_699_999_996,
                nsec: 500_000_000
            }
        );
        set_wall_clock(&mut shared, boot);
        assert_eq!(shared.wc_version, 2);
        assert_eq!(read_wall_clock(&shared), Some(boot));

        // The guest adds its system time and gets `now` back.
        let scale = TscScale::from_hz(1_000_000_000);
        let mut info = record();
        update(&mut info, 0, uptime, scale, true).unwrap();
        assert_eq!(guest_time_of_day(&shared, &info, 0), Some(now));
        assert_eq!(
            guest_time_of_day(&shared, &info, 1_000_000_000),
            Some(UnixTime {
                sec: now.sec + 1,
                nsec: now.nsec
            })
        );

        // While an update is in progress the reader gets nothing.
        shared.wc_version = version_begin(shared.wc_version);
        assert_eq!(read_wall_clock(&shared), None);
    }

    #[test]
    fn wall_clock_beyond_2106_uses_the_high_word() {
        let mut shared = SharedInfo::new_zeroed();
        let far = UnixTime {
            sec: 0x1_0000_0005,
            nsec: 1,
        };
        set_wall_clock(&mut shared, far);
        assert_eq!((shared.wc_sec, shared.wc_sec_hi, shared.wc_nsec), (5, 1, 1));
        assert_eq!(read_wall_clock(&shared), Some(far));
    }

    #[test]
    fn wall_clock_before_uptime_clamps_to_the_epoch() {
        let early = UnixTime { sec: 1, nsec: 0 };
        assert_eq!(
            wall_clock_at_boot(early, 5_000_000_000),
            UnixTime { sec: 0, nsec: 0 }
        );
    }
}
