//! TSC ticks to nanoseconds, in the fixed-point form PV guests use.
//!
//! Xen's `public/xen.h` (`struct vcpu_time_info`) defines system time as
//! `system_time + ((tsc - tsc_timestamp) << tsc_shift) * tsc_to_system_mul >> 32`, where a
//! negative `tsc_shift` shifts right. Guest kernels evaluate exactly that, so the
//! hypervisor computes its own time the same way (shift first, then multiply) and both
//! sides agree to the nanosecond.

const NS_PER_SEC: u128 = 1_000_000_000;

/// A `vcpu_time_info` scale: nanoseconds = `(ticks << shift) * mul >> 32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscScale {
    pub mul: u32,
    pub shift: i8,
}

impl TscScale {
    /// The scale for a TSC running at `tsc_hz`, with the largest `mul` below 2^32 (so the
    /// most significant bits, at least 31 of them) that some `shift` allows; the rounding
    /// error is then below 1 part in 2^31. A frequency of 0 (never measured) gives a
    /// scale that maps every tick count to 0.
    pub fn from_hz(tsc_hz: u64) -> TscScale {
        if tsc_hz == 0 {
            return TscScale { mul: 0, shift: 0 };
        }
        let hz = u128::from(tsc_hz);
        // ns per tick = mul * 2^(shift - 32), so mul = 1e9 * 2^(32 - shift) / hz, which
        // halves as shift grows: the first shift that brings mul below 2^32 is the best.
        // Every u64 frequency finds one within -64..=63 (1 Hz needs 30, u64::MAX Hz -34).
        for shift in -64i8..=63 {
            let exponent = 32 - i32::from(shift);
            let (num, den) = if exponent >= 0 {
                (NS_PER_SEC << exponent, hz)
            } else {
                (NS_PER_SEC, hz << -exponent)
            };
            let mul = (num + den / 2) / den;
            if let Ok(mul) = u32::try_from(mul) {
                return TscScale { mul, shift };
            }
        }
        // Unreachable (see above); the slowest representable scale is the safe answer.
        TscScale {
            mul: u32::MAX,
            shift: 63,
        }
    }

    /// Converts a tick count to nanoseconds the way a guest does, saturating at
    /// `u64::MAX` where the exact result would not fit.
    pub fn ticks_to_ns(&self, ticks: u64) -> u64 {
        let mul = u128::from(self.mul);
        let shift = i32::from(self.shift);
        let ns = if shift >= 0 {
            // (ticks << shift) * mul >> 32, without losing bits of the 128-bit product.
            let product = u128::from(ticks) * mul; // < 2^96
            if shift <= 32 {
                (product << shift) >> 32
            } else {
                let up = shift - 32;
                if product.leading_zeros() < up.unsigned_abs() {
                    u128::MAX
                } else {
                    product << up
                }
            }
        } else {
            let down = shift.unsigned_abs();
            let shifted = if down >= 64 {
                0
            } else {
                u128::from(ticks >> down)
            };
            (shifted * mul) >> 32
        };
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}

/// The number of TSC ticks in `ns` nanoseconds at `tsc_hz` (rounded down, saturating).
pub fn ns_to_ticks(ns: u64, tsc_hz: u64) -> u64 {
    let ticks = u128::from(ns) * u128::from(tsc_hz) / NS_PER_SEC;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FREQUENCIES: [u64; 9] = [
        1_000_000,
        1_193_182,
        3_579_545,
        14_318_180,
        1_000_000_000,
        2_500_000_000,
        3_000_100_000,
        4_999_999_999,
        10_000_000_000,
    ];

    fn assert_within_ppm(got: u64, want: u64, ppm: u64, what: &str) {
        let tolerance = (want / 1_000_000 * ppm).max(1);
        assert!(
            got.abs_diff(want) <= tolerance,
            "{what}: got {got}, want {want} ± {tolerance}"
        );
    }

    #[test]
    fn one_second_is_one_second() {
        for hz in FREQUENCIES {
            let scale = TscScale::from_hz(hz);
            assert_within_ppm(scale.ticks_to_ns(hz), 1_000_000_000, 1, &format!("{hz} Hz"));
        }
    }

    #[test]
    fn mul_keeps_at_least_31_significant_bits() {
        for hz in FREQUENCIES
            .into_iter()
            .chain([1, 999_999, 10_000_000_001, u64::MAX])
        {
            let scale = TscScale::from_hz(hz);
            assert!(scale.mul >= 1 << 31, "{hz} Hz: {scale:?}");
        }
    }

    #[test]
    fn known_scales() {
        // 1 GHz: one tick is exactly 1 ns = 2^31 * 2^(1 - 32).
        assert_eq!(
            TscScale::from_hz(1_000_000_000),
            TscScale {
                mul: 1 << 31,
                shift: 1
            }
        );
        // 1 MHz: 1000 ns per tick = 4194304000 * 2^(10 - 32).
        assert_eq!(
            TscScale::from_hz(1_000_000),
            TscScale {
                mul: 4_194_304_000,
                shift: 10
            }
        );
        // 10 GHz: 0.1 ns per tick; 0.1 lies in [2^-4, 2^-3), so shift is -3.
        assert_eq!(TscScale::from_hz(10_000_000_000).shift, -3);
        assert_eq!(TscScale::from_hz(1).shift, 30);
        assert_eq!(TscScale::from_hz(u64::MAX).shift, -34);
        let exact = TscScale::from_hz(1_000_000_000);
        for ticks in [0, 1, 12_345, u64::MAX / 2, u64::MAX] {
            assert_eq!(exact.ticks_to_ns(ticks), ticks);
        }
    }

    #[test]
    fn hours_do_not_overflow() {
        for hz in FREQUENCIES {
            let scale = TscScale::from_hz(hz);
            for hours in [1u64, 24, 24 * 365, 24 * 365 * 50] {
                let secs = hours * 3600;
                let ticks = secs * hz;
                assert_within_ppm(
                    scale.ticks_to_ns(ticks),
                    secs * 1_000_000_000,
                    1,
                    &format!("{hours} h at {hz} Hz"),
                );
            }
        }
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        let slow = TscScale::from_hz(1_000_000);
        assert_eq!(slow.ticks_to_ns(u64::MAX), u64::MAX);
        let odd = TscScale {
            mul: u32::MAX,
            shift: 100,
        };
        assert_eq!(odd.ticks_to_ns(1), u64::MAX);
        assert_eq!(odd.ticks_to_ns(0), 0);
        let tiny = TscScale {
            mul: u32::MAX,
            shift: -100,
        };
        assert_eq!(tiny.ticks_to_ns(u64::MAX), 0);
        let big_shift = TscScale { mul: 1, shift: 40 };
        assert_eq!(big_shift.ticks_to_ns(3), 3 << 8);
        let min_shift = TscScale {
            mul: u32::MAX,
            shift: i8::MIN,
        };
        assert_eq!(min_shift.ticks_to_ns(u64::MAX), 0);
    }

    #[test]
    fn shifts_before_multiplying_like_a_guest() {
        // With a negative shift the low bits are dropped first, as a guest computes it.
        let scale = TscScale::from_hz(10_000_000_000);
        assert_eq!(scale.ticks_to_ns(7), 0);
        let shifted = 8u64 >> -scale.shift;
        let guest = (shifted * u64::from(scale.mul)) >> 32;
        assert_eq!(scale.ticks_to_ns(8), guest);
    }

    #[test]
    fn zero_frequency() {
        let scale = TscScale::from_hz(0);
        assert_eq!(scale, TscScale { mul: 0, shift: 0 });
        assert_eq!(scale.ticks_to_ns(u64::MAX), 0);
        assert_eq!(ns_to_ticks(1_000_000_000, 0), 0);
    }

    #[test]
    fn ns_to_ticks_inverts_ticks_to_ns() {
        for hz in FREQUENCIES {
            assert_eq!(ns_to_ticks(1_000_000_000, hz), hz);
            assert_eq!(ns_to_ticks(0, hz), 0);
            let scale = TscScale::from_hz(hz);
            // Rounding down to whole ticks loses up to one tick period on top of the
            // scale's own error.
            let tick_ns = 1_000_000_000 / hz + 1;
            for ns in [1_000_000u64, 3_600_000_000_000, 86_400_000_000_000] {
                let back = scale.ticks_to_ns(ns_to_ticks(ns, hz));
                assert!(
                    back.abs_diff(ns) <= tick_ns + ns / 1_000_000,
                    "{ns} ns at {hz} Hz came back as {back}"
                );
            }
        }
        assert_eq!(ns_to_ticks(1, 2_500_000_000), 2);
        assert_eq!(ns_to_ticks(u64::MAX, 10_000_000_000), u64::MAX);
    }
}
