//! `cargo xtask stress`: long runs that `cargo xtask test` cannot afford. The hypercall
//! fuzzer (`tests/tests/fuzz.rs`) for `--calls` calls in total, in boots of
//! `--calls-per-boot` with consecutive seeds from `--seed` (each printed, so that a failure
//! replays with `FERROVISOR_FUZZ_SEED`); then the Linux dom0 + domU scenario
//! (`tests/tests/linux.rs`) `--linux-runs` times. With `--hogs`, every second run has
//! busy-loop processes on every host CPU beside QEMU. Each run is the integration test
//! itself (`cargo test -p ferrovisor-tests --test ...`), with QEMU logging interrupts and
//! CPU resets (`-d int,cpu_reset -D`); the logs of failing runs (that QEMU log and the
//! serial log) are kept under `target/stress/`. Never part of `cargo xtask test`.

use std::{
    fs,
    process::{Child, Command, ExitCode, Stdio},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub struct StressArgs {
    /// Fuzzer calls in total (over all boots).
    #[arg(long, default_value_t = 10_000_000)]
    pub calls: u64,
    /// Fuzzer calls per boot.
    #[arg(long, default_value_t = 2_000_000)]
    pub calls_per_boot: u64,
    /// The first boot's seed (hex with 0x, or decimal); the next boots count up from it.
    /// Default: from the time.
    #[arg(long, value_parser = parse_u64)]
    pub seed: Option<u64>,
    /// Boots of the Linux dom0 + domU scenario.
    #[arg(long, default_value_t = 10)]
    pub linux_runs: u32,
    /// Run every second boot beside busy-loop processes, one per host CPU.
    #[arg(long)]
    pub hogs: bool,
}

fn parse_u64(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s}: {e}"))
}

/// Busy loops on the host, ended (by their own ids) when dropped.
struct Hogs(Vec<Child>);

impl Hogs {
    fn start() -> anyhow::Result<Hogs> {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut children = Vec::new();
        for _ in 0..n {
            let child = Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start a CPU hog (sh)")?;
            children.push(child);
        }
        Ok(Hogs(children))
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One run's outcome.
struct Run {
    passed: bool,
    hogs: bool,
}

/// Runs integration test `test` once with `env`, QEMU's debug log in `target/stress/`;
/// keeps the logs when it fails.
fn run_test(
    test: &str,
    name: &str,
    serial_log: &str,
    env: &[(&str, String)],
    hogs: bool,
) -> anyhow::Result<Run> {
    let dir = crate::target_dir().join("stress");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let qemu_log = dir.join(format!("{name}.qemu.log"));
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(crate::workspace_root())
        .args(["test", "-p", "ferrovisor-tests", "--test", test])
        .env("FERROVISOR_QEMU_DEBUG_LOG", &qemu_log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let _hogs = if hogs { Some(Hogs::start()?) } else { None };
    let started = Instant::now();
    let (_, passed) = crate::testrun::run(&mut cmd)?;
    drop(_hogs);
    let secs = started.elapsed().as_secs_f64();
    if passed {
        let _ = fs::remove_file(&qemu_log);
        eprintln!("stress: {name}: passed in {secs:.0} s");
    } else {
        let serial = crate::target_dir()
            .join("qemu-logs")
            .join(format!("{serial_log}.log"));
        let kept = dir.join(format!("{name}.serial.log"));
        let _ = fs::copy(&serial, &kept);
        eprintln!(
            "stress: {name}: FAILED after {secs:.0} s; logs kept: {} and {}",
            qemu_log.display(),
            kept.display()
        );
    }
    Ok(Run { passed, hogs })
}

fn summary(runs: &[Run]) -> (usize, usize, usize) {
    let passed = runs.iter().filter(|r| r.passed).count();
    let with_hogs = runs.iter().filter(|r| r.hogs).count();
    (passed, runs.len(), with_hogs)
}

pub fn run(args: &StressArgs) -> anyhow::Result<ExitCode> {
    crate::deps::ensure()?;
    let first_seed = args.seed.unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is after 1970");
        (t.as_secs() << 20) ^ u64::from(t.subsec_micros())
    });
    let per_boot = args.calls_per_boot.max(2);
    let mut fuzz = Vec::new();
    let mut failed_seeds = Vec::new();
    let mut done = 0;
    let mut boot = 0u64;
    while done < args.calls {
        let calls = per_boot.min(args.calls - done).max(2);
        let seed = first_seed.wrapping_add(boot);
        let hogs = args.hogs && boot % 2 == 1;
        eprintln!(
            "stress: fuzz boot {} with seed {seed:#x}, {calls} calls{}",
            boot + 1,
            if hogs { ", beside CPU hogs" } else { "" }
        );
        let run = run_test(
            "fuzz",
            &format!("fuzz-{seed:#x}"),
            "fuzz",
            &[
                ("FERROVISOR_FUZZ_SEED", format!("{seed:#x}")),
                ("FERROVISOR_FUZZ_CALLS", calls.to_string()),
            ],
            hogs,
        )?;
        if !run.passed {
            failed_seeds.push(seed);
        }
        fuzz.push(run);
        done += calls;
        boot += 1;
    }
    let mut linux = Vec::new();
    for i in 0..args.linux_runs {
        let hogs = args.hogs && i % 2 == 1;
        eprintln!(
            "stress: linux run {}/{}{}",
            i + 1,
            args.linux_runs,
            if hogs { ", beside CPU hogs" } else { "" }
        );
        linux.push(run_test(
            "linux",
            &format!("linux-{}", i + 1),
            "linux-dom0",
            &[],
            hogs,
        )?);
    }
    let (fp, fb, _) = summary(&fuzz);
    let (lp, ln, lh) = summary(&linux);
    let fuzz_verdict = if fp == fb {
        "all passed".to_owned()
    } else {
        let seeds: Vec<String> = failed_seeds.iter().map(|s| format!("{s:#x}")).collect();
        format!("{} failed (seeds {})", fb - fp, seeds.join(", "))
    };
    println!(
        "stress: fuzz {done} calls in {fb} boots: {fuzz_verdict}; linux: {lp}/{ln} passed ({lh} \
         with hogs)"
    );
    Ok(if fp == fb && lp == ln {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
