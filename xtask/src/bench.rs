//! `cargo xtask bench`: boots the benchmark kernel (`tests/kernels/src/bin/bench.rs`) as
//! dom0 and prints its figures as a table; with `--against-xen`, the same kernel on Xen
//! 4.17 in the same run, with both columns and their ratio.
//!
//! The kernel measures with the TSC and prints `bench: <name> median <ns> ns (<n> samples)`
//! or `bench: <name> n/a (<reason>)`. One figure it cannot take: the time from QEMU's start
//! to dom0's first instruction, since dom0 cannot read the host's clock. xtask measures
//! what it can see instead, the host time from spawning QEMU to the serial line carrying
//! dom0's first console output (its first action), and labels it as such: firmware, GRUB,
//! the hypervisor's boot and the domain build are all in it.
//!
//! QEMU runs with TCG, so every figure is an emulation figure: comparable between two
//! hypervisors under the same emulator on the same host, not what either does on hardware.
//! A benchmark is never part of `cargo xtask test`.
//!
//! dom0 gets two vCPUs on both hypervisors (`dom0_max_vcpus=2`) for the context switch
//! figure, and both hypervisors schedule them on one physical CPU: Ferrovisor runs on one,
//! and Xen is told `maxcpus=1`, since with the QEMU machine's second CPU its two vCPUs
//! would run side by side and a yield would switch nothing.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use regex::Regex;

use crate::{
    build::{self, Profile},
    deps,
    iso::{self, BootEntry, BootModule},
    qemu::{self, ExitOutcome, QemuConfig},
    xen,
};

/// The benchmark kernel's name (`tests/kernels/src/bin/bench.rs`).
pub const KERNEL: &str = "bench";
/// The other domain of the inter-domain figures (`tests/kernels/src/bin/peer.rs`).
pub const PEER_KERNEL: &str = "peer";

/// The hypervisor command line: the QEMU tests' (dom0 small, `debug_exit` so that dom0's
/// poweroff ends QEMU), with dom0's second vCPU for the context switch.
pub const HYPERVISOR_CMDLINE: &str =
    "dom0_mem=32M dom0_max_vcpus=2 console=com1 loglvl=info debug_exit=0xf4";

/// What the bench adds to Xen's test command line ([`xen::CMDLINE`]): dom0's second vCPU,
/// and one physical CPU, as Ferrovisor has, so that the two vCPUs share it.
pub const XEN_EXTRA_CMDLINE: &str = "dom0_max_vcpus=2 maxcpus=1";

/// How long the machine must stay silent after Xen's halt line before QEMU is stopped.
const XEN_HALT_QUIET: Duration = Duration::from_secs(2);

/// One boot, from QEMU's start to its exit.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The line the kernel prints first.
const FIRST_OUTPUT: &str = "bench: first output";

/// `cargo xtask bench`'s options.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Also boot the same kernel as dom0 of Xen 4.17 and print both columns and their ratio.
    #[arg(long)]
    pub against_xen: bool,
    /// Boots per hypervisor; each figure is then the median of the boots' medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub runs: u32,
    /// Only these tables (default: all): `pv` (the bench kernel's figures), `linux` (Linux
    /// boot, syscall and fork figures), `devices` (network and vbd figures).
    #[arg(long, value_delimiter = ',', value_parser = ["pv", "linux", "devices"])]
    pub only: Vec<String>,
    /// The device table's columns (default: native, ferrovisor, and xen with
    /// `--against-xen`).
    #[arg(long, value_delimiter = ',', value_parser = ["native", "ferrovisor", "xen"])]
    pub device_platforms: Vec<String>,
}

impl BenchArgs {
    fn wants(&self, table: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|t| t == table)
    }
}

/// The hypervisors a column can come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypervisor {
    Ferrovisor,
    Xen,
}

impl Hypervisor {
    pub fn column(self) -> &'static str {
        match self {
            Hypervisor::Ferrovisor => "Ferrovisor",
            Hypervisor::Xen => "Xen 4.17",
        }
    }
}

/// One figure of one boot, or of several combined.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A median in nanoseconds and how many samples it is the median of.
    Ns { median: f64, samples: u64 },
    /// A host-side duration in milliseconds and how many boots it is the median of.
    Ms { median: f64, boots: u32 },
    /// Not measured, and why.
    NotAvailable(String),
}

impl Value {
    fn number(&self) -> Option<f64> {
        match self {
            Value::Ns { median, .. } | Value::Ms { median, .. } => Some(*median),
            Value::NotAvailable(_) => None,
        }
    }

    fn cell(&self) -> String {
        match self {
            Value::Ns { median, samples } => format!("{median:.1} ns (n={samples})"),
            Value::Ms { median, boots } => {
                let unit = if *boots == 1 { "boot" } else { "boots" };
                format!("{median:.0} ms ({boots} {unit})")
            }
            Value::NotAvailable(_) => "n/a".to_owned(),
        }
    }
}

/// The figure the host measures.
pub const FIRST_OUTPUT_FIGURE: &str = "first_output";

/// The rows of the table, in order, with their labels; figures the kernel prints that are
/// not listed here follow under their own names.
pub const ROWS: &[(&str, &str)] = &[
    ("null_hypercall", "null hypercall (xen_version)"),
    (
        "page_fault_bounce",
        "page-fault bounce (#PF -> handler -> iret)",
    ),
    ("mmu_update_batch64", "mmu_update, batch of 64 L1 updates"),
    ("mmu_update_per_entry", "mmu_update, per L1 update"),
    ("context_switch", "context switch (2 vCPUs)"),
    (
        "evtchn_roundtrip",
        "event channel round trip, dom0 <-> domU (2 sends, 2 wake-ups)",
    ),
    ("grant_map_unmap", "grant map + unmap (read-only, one page)"),
    ("grant_copy_4k", "grant copy of 4 KiB into a domU's grant"),
    ("xenstore_read", "xenstore read round trip (dom0's ring)"),
    ("xenstore_write", "xenstore write round trip (dom0's ring)"),
    (
        "domain_create_64m",
        "64 MiB domU: CreateDomain -> its first instruction",
    ),
    (FIRST_OUTPUT_FIGURE, "QEMU start -> dom0's first output"),
    ("timer_overhead", "TSC read pair (included above)"),
];

/// The figures of one hypervisor, by name.
pub type Figures = BTreeMap<String, Value>;

/// Parses the kernel's `bench:` lines out of a serial log. A dom0 line may carry the
/// hypervisor's `(d0) ` prefix (Ferrovisor's) or none (Xen writes dom0's output as is).
pub fn parse_figures(log: &str) -> Figures {
    let re = Regex::new(
        r"(?m)^(?:\(d0\) )?bench: (\w+) (?:median ([0-9]+(?:\.[0-9]+)?) ns \(([0-9]+) samples\)|n/a \((.*)\))$",
    )
    .expect("a valid regex");
    let mut figures = Figures::new();
    for caps in re.captures_iter(log) {
        let name = caps[1].to_owned();
        let value = match (caps.get(2), caps.get(3), caps.get(4)) {
            (Some(median), Some(samples), _) => {
                match (median.as_str().parse(), samples.as_str().parse()) {
                    (Ok(median), Ok(samples)) => Value::Ns { median, samples },
                    _ => continue,
                }
            }
            (_, _, Some(reason)) => Value::NotAvailable(reason.as_str().to_owned()),
            _ => continue,
        };
        figures.insert(name, value);
    }
    figures
}

/// Combines the figures of several boots: each numeric figure becomes the median of the
/// boots' values (their sample counts add up); a figure missing from, or `n/a` in, any boot
/// is `n/a` with the first reason.
pub fn combine(boots: &[Figures]) -> Figures {
    let mut names: Vec<&String> = boots.iter().flat_map(|f| f.keys()).collect();
    names.sort();
    names.dedup();
    let mut out = Figures::new();
    for name in names {
        let values: Vec<Option<&Value>> = boots.iter().map(|f| f.get(name)).collect();
        let reason = values.iter().find_map(|v| match v {
            None => Some("missing from a boot".to_owned()),
            Some(Value::NotAvailable(r)) => Some(r.clone()),
            Some(_) => None,
        });
        if let Some(reason) = reason {
            out.insert(name.clone(), Value::NotAvailable(reason));
            continue;
        }
        let mut numbers: Vec<f64> = values.iter().flatten().filter_map(|v| v.number()).collect();
        numbers.sort_by(f64::total_cmp);
        let median = numbers[numbers.len() / 2];
        let value = match values[0] {
            Some(Value::Ms { .. }) => Value::Ms {
                median,
                boots: numbers.len() as u32,
            },
            _ => Value::Ns {
                median,
                samples: values
                    .iter()
                    .flatten()
                    .map(|v| match v {
                        Value::Ns { samples, .. } => *samples,
                        _ => 0,
                    })
                    .sum(),
            },
        };
        out.insert(name.clone(), value);
    }
    out
}

/// The table: `figure | Ferrovisor`, or with Xen `figure | Ferrovisor | Xen 4.17 | ratio`
/// (Ferrovisor / Xen: below 1 Ferrovisor is faster), then the reasons of every `n/a`.
pub fn table(ferrovisor: &Figures, xen: Option<&Figures>) -> String {
    let mut names: Vec<(String, String)> = ROWS
        .iter()
        .map(|(name, label)| ((*name).to_owned(), (*label).to_owned()))
        .collect();
    for name in ferrovisor
        .keys()
        .chain(xen.into_iter().flat_map(|x| x.keys()))
    {
        if !names.iter().any(|(n, _)| n == name) {
            names.push((name.clone(), name.clone()));
        }
    }
    let mut header = vec![
        "figure".to_owned(),
        Hypervisor::Ferrovisor.column().to_owned(),
    ];
    if xen.is_some() {
        header.push(Hypervisor::Xen.column().to_owned());
        header.push("ratio".to_owned());
    }
    let mut rows = vec![header];
    let mut notes = Vec::new();
    let missing = Value::NotAvailable("not reported".to_owned());
    for (name, label) in &names {
        let fv = ferrovisor.get(name).unwrap_or(&missing);
        let mut row = vec![label.clone(), fv.cell()];
        if let Value::NotAvailable(reason) = fv {
            notes.push(format!(
                "{label}, {}: n/a ({reason})",
                Hypervisor::Ferrovisor.column()
            ));
        }
        if let Some(xen) = xen {
            let x = xen.get(name).unwrap_or(&missing);
            row.push(x.cell());
            row.push(match (fv.number(), x.number()) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "-".to_owned(),
            });
            if let Value::NotAvailable(reason) = x {
                notes.push(format!(
                    "{label}, {}: n/a ({reason})",
                    Hypervisor::Xen.column()
                ));
            }
        }
        rows.push(row);
    }
    render(&rows, &notes)
}

/// Lays out `rows` (the first is the header) as a `|`-separated table, the first column
/// left-aligned and the others right-aligned, a rule under the header, then `notes`, a
/// line each.
pub fn render(rows: &[Vec<String>], notes: &[String]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| {
                if c == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        out.push_str(cells.join(" | ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("-|-"));
            out.push('\n');
        }
    }
    for note in notes {
        out.push_str(note);
        out.push('\n');
    }
    out
}

/// Xen's command line for the bench: [`xen::CMDLINE`] and [`XEN_EXTRA_CMDLINE`].
pub fn xen_cmdline() -> String {
    format!("{} {XEN_EXTRA_CMDLINE}", xen::CMDLINE)
}

/// `cargo xtask bench`.
pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    deps::ensure()?;
    // Fetched first: a machine that cannot get Xen fails before any boot.
    let xen_image = if args.against_xen {
        Some(xen::image()?)
    } else {
        None
    };
    let artifacts = build::build(Profile::Release)?;
    let pv = if args.wants("pv") {
        Some(pv_tables(args, &artifacts, xen_image)?)
    } else {
        None
    };
    let linux_cols = if args.wants("linux") {
        Some(linux_table(args, &artifacts)?)
    } else {
        None
    };
    let device_cols = if args.wants("devices") {
        use crate::bench_devices::Platform;
        let mut platforms = vec![Platform::Native, Platform::Ferrovisor];
        if args.against_xen {
            platforms.push(Platform::Xen);
        }
        if !args.device_platforms.is_empty() {
            platforms.retain(|p| {
                args.device_platforms
                    .iter()
                    .any(|a| p.column().to_lowercase().starts_with(a.as_str()))
            });
            if args.device_platforms.iter().any(|a| a == "xen")
                && !platforms.contains(&Platform::Xen)
            {
                platforms.push(Platform::Xen);
            }
        }
        Some(crate::bench_devices::measure_all(&platforms, &artifacts)?)
    } else {
        None
    };

    if let Some((ferrovisor, xen)) = &pv {
        println!();
        print!("{}", table(ferrovisor, xen.as_ref()));
    }
    if let Some(cols) = &linux_cols {
        println!();
        print!("{}", crate::bench_linux::table(cols));
    }
    if let Some(cols) = &device_cols {
        println!();
        print!("{}", crate::bench_devices::table(cols));
    }
    println!(
        "note: QEMU runs with TCG (emulation): these are emulation figures, comparable between \
         hypervisors in the same run, not hardware figures."
    );
    if pv.is_some() {
        println!(
            "note: \"QEMU start -> dom0's first output\" is host time from spawning QEMU to the \
             serial line of dom0's first console write (firmware, GRUB, hypervisor boot and dom0 \
             build included), not to its first instruction."
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The bench kernel's figures on Ferrovisor and, with `--against-xen`, on Xen.
fn pv_tables(
    args: &BenchArgs,
    artifacts: &build::Artifacts,
    xen_image: Option<PathBuf>,
) -> anyhow::Result<(Figures, Option<Figures>)> {
    let kernels = build::test_kernels(Profile::Release)?;
    let kernel = kernels
        .get(KERNEL)
        .with_context(|| format!("no test kernel {KERNEL:?} was built"))?
        .clone();

    let module = BootModule {
        source: kernel,
        iso_name: format!("{KERNEL}.elf"),
        cmdline: String::new(),
    };
    // On Ferrovisor, the peer kernel rides along as dom0's initrd: the bench kernel builds
    // it into a second domain for the inter-domain figures.
    let peer = BootModule {
        source: kernels
            .get(PEER_KERNEL)
            .with_context(|| format!("no test kernel {PEER_KERNEL:?} was built"))?
            .clone(),
        iso_name: format!("{PEER_KERNEL}.elf"),
        cmdline: String::new(),
    };
    let mut entry = BootEntry::new(artifacts);
    entry.hypervisor_cmdline = HYPERVISOR_CMDLINE.to_owned();
    entry.modules = vec![module.clone(), peer];
    let iso = iso::make_iso(&entry, &build::output_dir().join("bench.iso"))?;
    let xen_iso = match xen_image {
        Some(image) => {
            let mut entry = BootEntry::xen(image);
            entry.hypervisor_cmdline = xen_cmdline();
            entry.modules = vec![module];
            Some(iso::make_iso(
                &entry,
                &build::output_dir().join("bench-xen.iso"),
            )?)
        }
        None => None,
    };

    let ferrovisor = boots(Hypervisor::Ferrovisor, &iso, args.runs)?;
    let xen = match &xen_iso {
        Some(iso) => Some(boots(Hypervisor::Xen, iso, args.runs)?),
        None => None,
    };
    Ok((ferrovisor, xen))
}

/// Debian's Linux: natively, as Ferrovisor's dom0 and, with --against-xen, as Xen's.
fn linux_table(
    args: &BenchArgs,
    artifacts: &build::Artifacts,
) -> anyhow::Result<
    Vec<(
        crate::bench_linux::Platform,
        crate::bench_linux::LinuxFigures,
    )>,
> {
    let linux = crate::linux::dom0()?;
    let xen_gz = if args.against_xen {
        Some(xen::image()?)
    } else {
        None
    };
    let mut platforms = vec![
        crate::bench_linux::Platform::Native,
        crate::bench_linux::Platform::Ferrovisor,
    ];
    if args.against_xen {
        platforms.push(crate::bench_linux::Platform::Xen);
    }
    let mut linux_cols = Vec::new();
    for p in platforms {
        eprintln!("bench: Linux, {}", p.column());
        // A platform that fails to give its figures shows n/a; the others still count.
        let f = crate::bench_linux::measure(p, &linux, artifacts, xen_gz.as_deref())
            .unwrap_or_else(|e| {
                eprintln!("bench: Linux on {} gave no figures: {e:#}", p.column());
                crate::bench_linux::LinuxFigures::default()
            });
        linux_cols.push((p, f));
    }
    Ok(linux_cols)
}

/// Boots `iso` `runs` times and combines the figures.
fn boots(hv: Hypervisor, iso: &std::path::Path, runs: u32) -> anyhow::Result<Figures> {
    let mut all = Vec::new();
    for run in 1..=runs {
        eprintln!("bench: {} boot {run} of {runs}", hv.column());
        all.push(boot_once(hv, iso.to_path_buf(), run)?);
    }
    Ok(combine(&all))
}

/// One boot: times QEMU's start to the kernel's first line, waits for its verdict and the
/// machine's end (Ferrovisor: QEMU's clean exit; Xen: its halt line, then QEMU is
/// stopped), and parses the figures.
fn boot_once(hv: Hypervisor, iso: PathBuf, run: u32) -> anyhow::Result<Figures> {
    let mut cfg = QemuConfig::new(iso);
    let tag = match hv {
        Hypervisor::Ferrovisor => "ferrovisor",
        Hypervisor::Xen => "xen",
    };
    if hv == Hypervisor::Xen {
        cfg.extra_args = xen::QEMU_ARGS.iter().map(|&a| a.to_owned()).collect();
    }
    cfg.log_name = Some(format!("bench-{tag}-{run}"));
    let spawned = Instant::now();
    let mut session = qemu::spawn(&cfg)?;
    let first = Regex::new(&format!(
        r"(?m)^(?:\(d0\) )?{}$",
        regex::escape(FIRST_OUTPUT)
    ))?;
    session.expect(&first, BOOT_TIMEOUT)?;
    let first_output = spawned.elapsed();
    let remaining = BOOT_TIMEOUT.saturating_sub(first_output);

    let verdict = Regex::new(r"(?m)^(?:\(d0\) )?pv-test bench: (PASS|FAIL: .*)$")?;
    let matched = session.expect(&verdict, remaining)?;
    if matched.group(1) != "PASS" {
        bail!(
            "the bench kernel failed: {}\n{}",
            matched.text,
            session.report()
        );
    }
    match hv {
        Hypervisor::Ferrovisor => {
            let outcome = session.wait_exit(Duration::from_secs(60))?;
            if outcome != ExitOutcome::HaltedCleanly {
                bail!(
                    "QEMU ended with \"{}\" after the bench kernel passed\n{}",
                    outcome.describe(),
                    session.report()
                );
            }
        }
        Hypervisor::Xen => {
            // Xen halts its CPUs on dom0's poweroff without ending QEMU.
            let halted = Regex::new(&format!(
                r"(?m)^\(XEN\) {}",
                regex::escape(xen::DOM0_POWEROFF_LINE)
            ))?;
            session.expect(&halted, Duration::from_secs(60))?;
            if let Ok(outcome) = session.wait_exit(XEN_HALT_QUIET) {
                bail!(
                    "Xen halted the machine, then QEMU exited: {}\n{}",
                    outcome.describe(),
                    session.report()
                );
            }
            session.kill();
        }
    }
    let mut figures = parse_figures(&session.stripped_output());
    figures.insert(
        FIRST_OUTPUT_FIGURE.to_owned(),
        Value::Ms {
            median: first_output.as_secs_f64() * 1000.0,
            boots: 1,
        },
    );
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
(d0) bench: first output
(d0) bench: tsc_khz 2400000
(d0) bench: timer_overhead median 21.5 ns (10000 samples)
(d0) bench: null_hypercall median 1234.0 ns (10000 samples)
(d0) bench: mmu_update_per_entry median 99.9 ns (1000 samples)
(d0) bench: context_switch n/a (one vCPU: VCPUOP_is_up(1) returned -2)
bench: page_fault_bounce median 5000.2 ns (10000 samples)
(d0) pv-test bench: PASS
";

    #[test]
    fn both_hypervisors_give_dom0_two_vcpus() {
        assert!(HYPERVISOR_CMDLINE.contains("dom0_max_vcpus=2"));
        let x = xen_cmdline();
        assert!(x.starts_with(xen::CMDLINE), "{x}");
        assert!(x.ends_with(" dom0_max_vcpus=2 maxcpus=1"), "{x}");
    }

    #[test]
    fn parses_the_kernel_lines() {
        let f = parse_figures(LOG);
        assert_eq!(
            f.get("null_hypercall"),
            Some(&Value::Ns {
                median: 1234.0,
                samples: 10000
            })
        );
        assert_eq!(
            f.get("context_switch"),
            Some(&Value::NotAvailable(
                "one vCPU: VCPUOP_is_up(1) returned -2".to_owned()
            ))
        );
        // Without the `(d0) ` prefix, as Xen prints dom0's output.
        assert!(f.contains_key("page_fault_bounce"));
        assert!(!f.contains_key("tsc_khz"));
        assert!(!f.contains_key("first"));
        assert_eq!(f.len(), 5);
    }

    #[test]
    fn combines_boots_by_median() {
        let a = parse_figures("bench: x median 10.0 ns (5 samples)\nbench: y n/a (no)\n");
        let b = parse_figures(
            "bench: x median 30.0 ns (5 samples)\nbench: y median 1.0 ns (1 samples)\n",
        );
        let c = parse_figures("bench: x median 20.0 ns (5 samples)\n");
        let f = combine(&[a, b, c]);
        assert_eq!(
            f.get("x"),
            Some(&Value::Ns {
                median: 20.0,
                samples: 15
            })
        );
        assert_eq!(f.get("y"), Some(&Value::NotAvailable("no".to_owned())));
    }

    #[test]
    fn table_with_and_without_xen() {
        let mut fv = parse_figures(LOG);
        fv.insert(
            FIRST_OUTPUT_FIGURE.to_owned(),
            Value::Ms {
                median: 4321.0,
                boots: 1,
            },
        );
        let t = table(&fv, None);
        assert!(t.starts_with("figure "), "{t}");
        assert!(t.contains("null hypercall (xen_version)"), "{t}");
        assert!(t.contains("1234.0 ns (n=10000)"), "{t}");
        assert!(t.contains("4321 ms (1 boot)"), "{t}");
        assert!(t.contains(
            "context switch (2 vCPUs), Ferrovisor: n/a (one vCPU: VCPUOP_is_up(1) returned -2)"
        ));
        assert!(!t.contains("ratio"));

        let mut xen = fv.clone();
        xen.insert(
            "null_hypercall".to_owned(),
            Value::Ns {
                median: 617.0,
                samples: 10000,
            },
        );
        let t = table(&fv, Some(&xen));
        let row = t.lines().find(|l| l.starts_with("null hypercall")).unwrap();
        assert!(row.ends_with(" 2.00"), "{t}");
        assert!(row.contains("617.0 ns (n=10000)"), "{t}");
        assert!(
            t.lines().next().unwrap().ends_with("Xen 4.17 | ratio"),
            "{t}"
        );
    }
}
