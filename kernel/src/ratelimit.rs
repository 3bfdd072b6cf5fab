//! Rate limits for what guests make the hypervisor log.
//!
//! A guest controls how much it prints, and how often it feeds the hypervisor input that
//! gets logged as a warning; the hypervisor's log ring and serial line are shared by all.
//! So each domain other than dom0 gets a token bucket of log lines ([`TokenBucket`]): a
//! burst may pass at once, then lines pass at a steady rate and the rest are counted and
//! dropped; the next line that passes (or the domain's end) reports how many were lost.
//! Xen does the same for guest-caused messages with `printk_ratelimit` (by default a
//! burst of 10 messages per 5 s, below `guest_loglvl`'s threshold); here the bucket is
//! per domain, so one noisy domain cannot silence another one's or the hypervisor's
//! messages.
//!
//! dom0 is not limited: its `console_io` output is the PV test kernels' (and an early
//! Linux's) main console and its ring is the administrator's terminal, and Xen too
//! prints the hardware domain's console writes without the guest rate limit.
//!
//! Time is passed in by the caller (ns of any monotonic clock), so the rules are
//! host-tested against a fake clock.

use alloc::collections::BTreeMap;

use ferrovisor_abi::xen::DomId;

const NS_PER_SEC: u64 = 1_000_000_000;

/// A burst of lines and a steady rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Lines that may pass at once after a quiet period (at least 1).
    pub burst: u32,
    /// Lines per second that pass in the long run (at least 1).
    pub per_sec: u32,
}

/// The limit on each domain's lines in the hypervisor's log: 20 at once, then 2 a second
/// (Xen's average rate: 10 per 5 s). A domain flooding for a minute adds some 140 lines.
pub const GUEST_LOG: Limit = Limit {
    burst: 20,
    per_sec: 2,
};

/// What [`TokenBucket::admit`] decided for one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Log it; `suppressed` lines were dropped since the last one that passed (say so
    /// first if it is not 0).
    Pass { suppressed: u64 },
    /// Drop it (it is counted).
    Drop,
}

/// A token bucket kept as nanoseconds of credit: each line costs `1 s / per_sec`, the
/// credit grows with time and is capped at `burst` lines' worth. Integer arithmetic
/// only; a clock that steps back adds no credit.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    cost_ns: u64,
    cap_ns: u64,
    credit_ns: u64,
    last_ns: u64,
    suppressed: u64,
}

impl TokenBucket {
    /// A full bucket at time `now_ns`.
    pub fn new(limit: Limit, now_ns: u64) -> Self {
        let cost_ns = NS_PER_SEC / u64::from(limit.per_sec.max(1));
        let cap_ns = cost_ns.saturating_mul(u64::from(limit.burst.max(1)));
        TokenBucket {
            cost_ns,
            cap_ns,
            credit_ns: cap_ns,
            last_ns: now_ns,
            suppressed: 0,
        }
    }

    /// Decides for one line at time `now_ns`.
    pub fn admit(&mut self, now_ns: u64) -> Admit {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        self.credit_ns = self.credit_ns.saturating_add(elapsed).min(self.cap_ns);
        if self.credit_ns >= self.cost_ns {
            self.credit_ns -= self.cost_ns;
            Admit::Pass {
                suppressed: core::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            Admit::Drop
        }
    }

    /// Lines dropped and not reported yet; reporting them is now the caller's.
    pub fn take_suppressed(&mut self) -> u64 {
        core::mem::take(&mut self.suppressed)
    }
}

/// One bucket per domain (made on its first line), dom0 exempt.
pub struct PerDomain {
    limit: Limit,
    buckets: BTreeMap<DomId, TokenBucket>,
}

/// dom0: never limited (see the module's comment).
const DOM0: DomId = 0;

impl PerDomain {
    /// No buckets yet; usable as a `static` initialiser.
    pub const fn new(limit: Limit) -> Self {
        PerDomain {
            limit,
            buckets: BTreeMap::new(),
        }
    }

    /// Decides for one line of domain `dom` at `now_ns`.
    pub fn admit(&mut self, dom: DomId, now_ns: u64) -> Admit {
        if dom == DOM0 {
            return Admit::Pass { suppressed: 0 };
        }
        let limit = self.limit;
        self.buckets
            .entry(dom)
            .or_insert_with(|| TokenBucket::new(limit, now_ns))
            .admit(now_ns)
    }

    /// The domain is gone: forgets its bucket (a later domain with its id starts full)
    /// and returns the lines it had dropped and not reported yet.
    pub fn forget(&mut self, dom: DomId) -> u64 {
        self.buckets
            .remove(&dom)
            .map_or(0, |mut b| b.take_suppressed())
    }

    /// Domains with a bucket.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const LIMIT: Limit = Limit {
        burst: 20,
        per_sec: 10,
    };

    /// Feeds `n` lines at `now`, returning how many passed and the suppressed counts
    /// reported on the way.
    fn feed(b: &mut TokenBucket, now: u64, n: u32) -> (u32, u64) {
        let (mut passed, mut reported) = (0, 0);
        for _ in 0..n {
            if let Admit::Pass { suppressed } = b.admit(now) {
                passed += 1;
                reported += suppressed;
            }
        }
        (passed, reported)
    }

    #[test]
    fn a_burst_passes_then_lines_are_dropped_and_counted() {
        let mut b = TokenBucket::new(LIMIT, 1000 * MS);
        assert_eq!(feed(&mut b, 1000 * MS, 20), (20, 0));
        assert_eq!(b.admit(1000 * MS), Admit::Drop);
        assert_eq!(feed(&mut b, 1000 * MS, 999), (0, 0));
        // One line's worth of time (100 ms) lets one through, which reports the drops.
        assert_eq!(b.admit(1099 * MS), Admit::Drop);
        assert_eq!(b.admit(1100 * MS), Admit::Pass { suppressed: 1001 });
        // Reported once: the next drop starts a new count.
        assert_eq!(b.admit(1100 * MS), Admit::Drop);
        assert_eq!(b.take_suppressed(), 1);
        assert_eq!(b.take_suppressed(), 0);
    }

    #[test]
    fn the_steady_rate_is_kept_over_a_long_flood() {
        let mut b = TokenBucket::new(LIMIT, 0);
        let (mut passed, mut reported, mut sent) = (0, 0, 0u64);
        // 1000 lines a second for 60 s, in 1 ms steps.
        for ms in 0..60_000 {
            let (p, r) = feed(&mut b, ms * MS, 1);
            passed += p;
            reported += r;
            sent += 1;
        }
        // The burst, then 10 a second (the first 100 ms refill just one line).
        assert_eq!(passed, 20 + 599);
        // Nothing is lost from the count: what passed, was reported or is pending.
        assert_eq!(u64::from(passed) + reported + b.take_suppressed(), sent);
    }

    #[test]
    fn a_quiet_period_refills_up_to_the_burst_only() {
        let mut b = TokenBucket::new(LIMIT, 0);
        assert_eq!(feed(&mut b, 0, 25), (20, 0));
        // An hour of silence is worth the burst, not 36000 lines.
        let hour = 3_600_000 * MS;
        let (passed, reported) = feed(&mut b, hour, 30);
        assert_eq!((passed, reported), (20, 5));
        assert_eq!(b.take_suppressed(), 10);
    }

    #[test]
    fn a_clock_stepping_back_adds_no_credit_and_does_not_panic() {
        let mut b = TokenBucket::new(LIMIT, 5000 * MS);
        assert_eq!(feed(&mut b, 5000 * MS, 20), (20, 0));
        assert_eq!(b.admit(0), Admit::Drop);
        assert_eq!(b.admit(4000 * MS), Admit::Drop);
        // Credit resumes from the latest time seen, not the stepped-back one.
        assert_eq!(b.admit(5050 * MS), Admit::Drop);
        assert!(matches!(b.admit(5100 * MS), Admit::Pass { suppressed: 3 }));
        // The far end of the clock saturates instead of overflowing.
        assert!(matches!(b.admit(u64::MAX), Admit::Pass { .. }));
        assert!(matches!(b.admit(u64::MAX), Admit::Pass { .. }));
    }

    #[test]
    fn degenerate_limits_still_pass_a_line() {
        let mut b = TokenBucket::new(
            Limit {
                burst: 0,
                per_sec: 0,
            },
            0,
        );
        assert_eq!(b.admit(0), Admit::Pass { suppressed: 0 });
        assert_eq!(b.admit(0), Admit::Drop);
        assert_eq!(b.admit(NS_PER_SEC), Admit::Pass { suppressed: 1 });
    }

    #[test]
    fn each_domain_has_its_own_bucket_and_dom0_none() {
        let mut l = PerDomain::new(LIMIT);
        for _ in 0..1000 {
            assert_eq!(l.admit(0, 0), Admit::Pass { suppressed: 0 });
        }
        assert_eq!(l.tracked(), 0);
        for _ in 0..20 {
            assert!(matches!(l.admit(3, 0), Admit::Pass { .. }));
        }
        for _ in 0..7 {
            assert_eq!(l.admit(3, 0), Admit::Drop);
        }
        // d3 flooding leaves d4's burst intact.
        for _ in 0..20 {
            assert!(matches!(l.admit(4, 0), Admit::Pass { .. }));
        }
        assert_eq!(l.tracked(), 2);
        // The end of d3 hands over its unreported drops; a new d3 starts full.
        assert_eq!(l.forget(3), 7);
        assert_eq!(l.forget(3), 0);
        assert_eq!(l.admit(3, 0), Admit::Pass { suppressed: 0 });
    }

    #[test]
    fn the_default_is_sensible() {
        const { assert!(GUEST_LOG.burst >= 10 && GUEST_LOG.per_sec >= 1) };
        let mut b = TokenBucket::new(GUEST_LOG, 0);
        let (passed, _) = feed(&mut b, 0, 5000);
        assert_eq!(passed, GUEST_LOG.burst);
    }
}
