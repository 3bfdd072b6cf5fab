//! The hypercall fuzzer: the `fuzzctl` test kernel boots as dom0 with the `fuzz` kernel as
//! its module and builds two unprivileged domains from it, a peer and the fuzzer (two
//! vCPUs), which make random hypercalls with random but readable arguments (see
//! `tests/kernels/src/bin/fuzz.rs`). dom0 then checks that the peer still answers, that
//! the fuzzer finished or died, and that destroying both gives every frame back.
//!
//! The seed rotates: it is derived from the time and printed (`fuzz seed 0x...; replay
//! with FERROVISOR_FUZZ_SEED=0x...`); `FERROVISOR_FUZZ_SEED` replays one, and
//! `FERROVISOR_FUZZ_CALLS` sets the number of calls (`cargo xtask stress` runs long ones).

use std::{
    env,
    io::Write,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ferrovisor_tests::{boot, test_kernel, Modules};

/// The short run of `cargo xtask test`: about 30 s under TCG on two cores (some 75000
/// calls a second).
const DEFAULT_CALLS: u64 = 2_000_000;

fn env_u64(name: &str) -> Option<u64> {
    let v = env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

#[test]
fn unprivileged_hypercall_fuzzer_leaves_the_machine_up_and_leaks_nothing() {
    let seed = env_u64("FERROVISOR_FUZZ_SEED").unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is after 1970");
        (t.as_secs() << 20) ^ u64::from(t.subsec_micros())
    });
    let calls = env_u64("FERROVISOR_FUZZ_CALLS").unwrap_or(DEFAULT_CALLS);
    // Straight to the terminal (libtest captures `eprintln!`): the seed of every run shows.
    let _ = writeln!(
        std::io::stderr(),
        "fuzz seed {seed:#x}; replay with FERROVISOR_FUZZ_SEED={seed:#x} ({calls} calls)"
    );
    // dom0's own deadline for the fuzzer, well inside the harness's.
    let fuzz_secs = 120 + calls / 20_000;
    let mut cmdline = format!("seed={seed:#x} calls={calls} timeout={fuzz_secs}");
    // Replaying: print every call of each vCPU from this index on.
    if let Some(trace) = env_u64("FERROVISOR_FUZZ_TRACE") {
        cmdline.push_str(&format!(" trace={trace}"));
    }
    // Narrowing down: only this hypercall number.
    if let Some(only) = env_u64("FERROVISOR_FUZZ_ONLY") {
        cmdline.push_str(&format!(" only={only}"));
    }
    let started = Instant::now();
    let mut b = boot(
        "fuzz",
        &format!(
            // The domUs' consoles are mirrored (rate-limited) for whoever reads a failing
            // log; the verdicts are dom0's, whose console is not limited.
            "dom0_mem=32M console=com1 loglvl={} debug_exit=0xf4 guest_console_mirror=on",
            env::var("FERROVISOR_FUZZ_LOGLVL").unwrap_or_else(|_| "info".into())
        ),
        Modules::Dom0KernelAndModule {
            kernel: test_kernel("fuzzctl"),
            cmdline: &cmdline,
            module: test_kernel("fuzz"),
        },
    );
    b.allow(Duration::from_secs(fuzz_secs + 120));
    b.expect(&format!(
        r"\(d0\) pv-test fuzzctl: built peer d(\d+) and fuzzer d(\d+) \(2 vCPUs\): seed {seed:#x}, {calls} calls"
    ));
    b.expect(r"\(d0\) pv-test fuzzctl: peer d\d+ answers");
    let outcome = b.expect(
        r"\(d0\) pv-test fuzzctl: fuzzer d\d+ (finished \(poweroff\)|died \(flags 0x[0-9a-f]+, reason \d+\)) after [\d.]+ s",
    );
    let died = outcome.group(1).starts_with("died");
    b.expect(r"\(d0\) pv-test fuzzctl: peer d\d+ still answers after the fuzz");
    b.expect(r"\(d0\) pv-test fuzzctl: both destroyed, all \d+ free frames back");
    let verdict = b.expect(r"\(d0\) pv-test fuzzctl: (PASS|FAIL: .*)");
    if verdict.group(1) != "PASS" {
        b.fail(&format!("dom0 failed (seed {seed:#x}): {}", verdict.text));
    }
    b.expect_dom0_poweroff();
    if died {
        // Allowed (the fuzzer may kill itself), but worth a look: say why it died.
        let why = b
            .session
            .find(&ferrovisor_tests::re(r"\(d\d+\) pv-test fuzz: FAIL: .*"))
            .map_or_else(|| "no reason printed".to_owned(), |m| m.text);
        eprintln!("fuzz seed {seed:#x}: the fuzzer died: {why}");
    }
    // A fuzzer that finished powered itself off, which it does only after its own checks
    // (every call returned, its read-only text unchanged) passed.
    b.assert_absent("FATAL");
    b.assert_absent("PANIC");
    b.assert_absent(r"\(d0\) .*FAIL");
    b.assert_dom0_not_crashed();
    eprintln!(
        "fuzz seed {seed:#x}: {calls} calls, passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
