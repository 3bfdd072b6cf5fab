//! `cargo xtask`: Ferrovisor's developer commands. Run `cargo xtask --help`.

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use xtask::{
    build::{self, Artifacts, Profile},
    deps,
    iso::{self, BootEntry, DEFAULT_DOM0_CMDLINE, DEFAULT_HYPERVISOR_CMDLINE},
    qemu::{Accel, ExitOutcome, QemuConfig, VirtioDisk, VirtioNic},
    testrun, xen,
};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, package, boot and test Ferrovisor",
    long_about = "Build, package, boot and test Ferrovisor.\n\n\
                  The hypervisor is built for x86_64-unknown-none, gzipped to \
                  target/ferrovisor/ferrovisor.gz, put on a GRUB rescue ISO with a multiboot2 \
                  entry and booted in QEMU (TCG by default) with its serial console on the terminal."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check for QEMU, GRUB, xorriso, mtools and the rustup targets; install what is missing
    /// (apt-get as root, otherwise print the sudo command; rustup target add).
    Deps,
    /// Build the hypervisor and write target/ferrovisor/ferrovisor.gz and the placeholder
    /// boot modules; prints the .gz path.
    Build(BuildArgs),
    /// Build, then make a GRUB rescue ISO; prints the ISO's path as the last line of stdout.
    Iso(IsoArgs),
    /// Build, make the ISO and boot it in QEMU with the serial console on this terminal.
    Run(RunArgs),
    /// Run the host unit tests, then the QEMU integration tests.
    Test(TestArgs),
    /// cargo fmt --check, and clippy -D warnings for the host and for the bare-metal target
    /// (the hypervisor and the PV test kernels).
    Lint,
    /// Boot the benchmark kernel as dom0 and print its figures (null hypercall, page-fault
    /// bounce, mmu_update batch, context switch, QEMU start to dom0's first output);
    /// `--against-xen` adds Xen 4.17's column and the ratio. Never part of `test`.
    Bench(xtask::bench::BenchArgs),
    /// Long runs: the hypercall fuzzer for --calls calls (boots of --calls-per-boot with
    /// consecutive seeds), then the Linux dom0 + domU test --linux-runs times; --hogs runs
    /// every second boot beside busy loops on the host. Logs of failing runs go to
    /// target/stress/. Never part of `test`.
    Stress(xtask::stress::StressArgs),
}

#[derive(Args)]
struct TestArgs {
    /// Run only the PV test kernels, each booted as dom0 of real Xen 4.17 (Debian's
    /// xen-hypervisor-4.17-amd64, fetched into target/xen/) instead of Ferrovisor: checks
    /// what the tests expect against the reference hypervisor.
    #[arg(long)]
    on_xen: bool,
}

#[derive(Args)]
struct BuildArgs {
    /// Build the debug profile instead of release.
    #[arg(long)]
    debug: bool,
}

#[derive(Args)]
struct EntryArgs {
    /// The hypervisor's command line (GRUB's multiboot2 line).
    #[arg(long, default_value = DEFAULT_HYPERVISOR_CMDLINE)]
    cmdline: String,
    /// dom0's kernel command line (the first module2 line).
    #[arg(long, default_value = DEFAULT_DOM0_CMDLINE)]
    module_cmdline: String,
    /// Leave out both module2 lines (no dom0 kernel, no initrd).
    #[arg(long, conflicts_with_all = ["dom0", "dom0_test"])]
    no_modules: bool,
    /// dom0's kernel: a Xen-PV kernel file (ELF, or a bzImage such as Debian's vmlinuz)
    /// [default: Debian's linux-image-amd64 with a busybox initramfs, fetched into
    /// target/linux/].
    #[arg(long, value_name = "PATH", conflicts_with = "dom0_test")]
    dom0: Option<PathBuf>,
    /// dom0's initrd (the second module2 line) [default: the busybox initramfs for the
    /// default kernel, a placeholder otherwise].
    #[arg(long, value_name = "PATH", conflicts_with = "no_modules")]
    initrd: Option<PathBuf>,
    /// dom0's kernel: one of the project's PV test kernels (tests/kernels/src/bin/NAME.rs),
    /// built first; e.g. `events`, `smp` (give `--smp`-style options in --cmdline).
    #[arg(long, value_name = "NAME")]
    dom0_test: Option<String>,
    #[command(flatten)]
    build: BuildArgs,
}

#[derive(Args)]
struct IsoArgs {
    #[command(flatten)]
    entry: EntryArgs,
    /// Where to write the ISO [default: target/ferrovisor/ferrovisor.iso].
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    entry: EntryArgs,
    /// Use KVM (-accel kvm -cpu host) instead of TCG; needs hardware VT-x/AMD-V.
    #[arg(long)]
    kvm: bool,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// Number of CPUs.
    #[arg(long, default_value_t = 2)]
    smp: u32,
    /// No NIC: by default the machine has one virtio-net NIC on QEMU's user network
    /// (gateway 10.0.2.2, DHCP), the uplink of the hypervisor's switch `xenbr0`.
    #[arg(long)]
    no_net: bool,
    /// No disk: by default the machine has one virtio disk, `target/disks/run.img` (made
    /// once, 256 MiB: an MBR, vda1 empty, vda2 ext4; kept between runs), so that the
    /// example configs' `phy:vda2` works.
    #[arg(long)]
    no_disk: bool,
    /// Extra QEMU arguments, after `--`.
    #[arg(last = true)]
    qemu_args: Vec<String>,
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Cmd) -> anyhow::Result<ExitCode> {
    match command {
        Cmd::Deps => deps::ensure()?,
        Cmd::Build(args) => {
            let artifacts = build_step(&args)?;
            println!("{}", artifacts.gz.display());
        }
        Cmd::Iso(args) => {
            deps::ensure()?;
            let out = args
                .output
                .unwrap_or_else(|| build::output_dir().join("ferrovisor.iso"));
            let iso = iso_step(&args.entry, 0, &out)?;
            println!("{}", iso.display());
        }
        Cmd::Run(args) => return run(args),
        Cmd::Test(args) if args.on_xen => test_on_xen()?,
        Cmd::Test(_) => test()?,
        Cmd::Lint => lint()?,
        Cmd::Bench(args) => return xtask::bench::run(&args),
        Cmd::Stress(args) => return xtask::stress::run(&args),
    }
    Ok(ExitCode::SUCCESS)
}

fn build_step(args: &BuildArgs) -> anyhow::Result<Artifacts> {
    let profile = if args.debug {
        Profile::Debug
    } else {
        Profile::Release
    };
    let artifacts = build::build(profile)?;
    eprintln!(
        "build: {} -> {}",
        artifacts.elf.display(),
        artifacts.gz.display()
    );
    Ok(artifacts)
}

fn iso_step(args: &EntryArgs, timeout_secs: u32, out: &std::path::Path) -> anyhow::Result<PathBuf> {
    let artifacts = build_step(&args.build)?;
    let mut entry = BootEntry::new(&artifacts);
    entry.hypervisor_cmdline = args.cmdline.clone();
    entry.timeout_secs = timeout_secs;
    if args.no_modules {
        entry.modules.clear();
    } else {
        entry.modules[0].cmdline = args.module_cmdline.clone();
    }
    if let Some(name) = &args.dom0_test {
        let mut kernels = build::test_kernels(Profile::Release)?;
        let Some(kernel) = kernels.remove(name) else {
            bail!(
                "--dom0-test {name}: there is no tests/kernels/src/bin/{name}.rs; the test \
                 kernels are: {}",
                kernels.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        };
        entry.modules[0].source = kernel;
        entry.modules[0].iso_name = format!("pv-test-{name}");
    } else if let Some(path) = &args.dom0 {
        anyhow::ensure!(
            path.is_file(),
            "--dom0 {}: no such file (give the path of a Xen-PV kernel, e.g. \
             /boot/vmlinuz-6.1.0-*-amd64)",
            path.display()
        );
        entry.modules[0].source = path.clone();
        entry.modules[0].iso_name = "vmlinuz".to_owned();
    } else if !args.no_modules {
        // The default dom0: Debian's own kernel with a busybox initramfs.
        let linux = xtask::linux::dom0()?;
        entry.modules[0].source = linux.vmlinuz.clone();
        entry.modules[0].iso_name = format!("vmlinuz-{}", linux.version);
        if let Some(m) = entry.modules.get_mut(1) {
            m.source = linux.initrd.clone();
            m.iso_name = format!("initrd.img-{}", linux.version);
        }
    }
    if let Some(path) = &args.initrd {
        anyhow::ensure!(path.is_file(), "--initrd {}: no such file", path.display());
        if let Some(m) = entry.modules.get_mut(1) {
            m.source = path.clone();
            m.iso_name = "initrd.img".to_owned();
        }
    }
    eprintln!("iso: grub.cfg:\n{}", entry.grub_cfg()?);
    let iso = iso::make_iso(&entry, out)?;
    eprintln!("iso: wrote {}", iso.display());
    Ok(iso)
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    deps::ensure()?;
    let iso = iso_step(
        &args.entry,
        iso::INTERACTIVE_TIMEOUT_SECS,
        &build::output_dir().join("ferrovisor.iso"),
    )?;
    let mut cfg = QemuConfig::new(iso);
    cfg.memory_mib = args.memory;
    cfg.smp = args.smp;
    if !args.no_net {
        cfg.nics = vec![VirtioNic {
            mac: "52:54:00:12:34:56".into(),
        }];
    }
    if !args.no_disk {
        cfg.disks = vec![VirtioDisk {
            image: run_disk()?,
            read_only: false,
        }];
    }
    cfg.extra_args = args.qemu_args;
    if args.kvm {
        cfg.accel = Accel::Kvm;
        eprintln!(
            "note: --kvm needs hardware VT-x/AMD-V (/dev/kvm). The paravirtual KVM of some cloud \
             machines breaks ring-3 syscall, which PV guests rely on; drop --kvm (TCG) if dom0 misbehaves."
        );
    }
    let mut cmd = cfg.command(true);
    eprintln!("$ {}", xtask::display_command(&cmd));
    eprintln!(
        "QEMU: the serial console is on this terminal; quit with Ctrl-A X (Ctrl-A H for help)."
    );
    let status = cmd
        .status()
        .context("cannot start qemu-system-x86_64 (`cargo xtask deps` installs it)")?;
    let outcome = ExitOutcome::from_status(status);
    eprintln!("{}", outcome.describe());
    Ok(match outcome {
        ExitOutcome::HaltedCleanly | ExitOutcome::Other(0) => ExitCode::SUCCESS,
        ExitOutcome::Other(code) => ExitCode::from(u8::try_from(code).unwrap_or(1).max(1)),
        ExitOutcome::Fatal => ExitCode::from(35),
        ExitOutcome::RefusedToBoot => ExitCode::from(37),
        ExitOutcome::GuestCrashed => ExitCode::from(39),
        ExitOutcome::Signal(_) => ExitCode::FAILURE,
    })
}

/// `cargo xtask run`'s disk, made the first time (its contents are the user's after).
fn run_disk() -> anyhow::Result<PathBuf> {
    let path = xtask::disk_image::cache_path("run.img");
    if !path.exists() {
        let files = xtask::disk_image::cache_path("run-files");
        std::fs::create_dir_all(&files)
            .with_context(|| format!("cannot create {}", files.display()))?;
        std::fs::write(
            files.join("README"),
            "The disk of `cargo xtask run` (target/disks/run.img): vda2, ext4.\n",
        )?;
        eprintln!("making {} (256 MiB: vda1 empty, vda2 ext4)", path.display());
        xtask::disk_image::partitioned(&path, 256, &files)?;
    }
    Ok(path)
}

fn cargo_in_workspace() -> Command {
    let mut cmd = build::cargo();
    cmd.current_dir(xtask::workspace_root());
    cmd
}

/// Runs every step, then fails if any failed (so one run shows every failure).
fn run_all(steps: Vec<(&str, Command)>) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for (name, mut cmd) in steps {
        eprintln!("==> {name}");
        if let Err(err) = xtask::run(&mut cmd) {
            eprintln!("error: {err:#}");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join("; "));
    }
    Ok(())
}

fn test() -> anyhow::Result<()> {
    deps::ensure()?;
    // Style and lints are part of passing: a change that breaks them does not land.
    eprintln!("==> lint (rustfmt, clippy on both targets)");
    lint()?;
    let mut unit = cargo_in_workspace();
    unit.args(["test", "--workspace", "--exclude", "ferrovisor-tests"]);
    let mut qemu = cargo_in_workspace();
    qemu.args(["test", "-p", "ferrovisor-tests", "--", "--test-threads=2"]);
    let mut totals = testrun::Counts::default();
    let mut failed = Vec::new();
    for (name, mut cmd) in [("host unit tests", unit), ("QEMU integration tests", qemu)] {
        eprintln!("==> {name}");
        let (counts, ok) = testrun::run(&mut cmd)?;
        eprintln!(
            "==> {name}: {} passed, {} failed, {} ignored",
            counts.passed, counts.failed, counts.ignored
        );
        if !ok {
            failed.push(name);
        }
        totals.add(counts);
    }
    // One plain closing line for CI; a step that failed without a result line (a build
    // error) still counts as a failure.
    let failures = totals.failed.max(failed.len() as u64);
    println!("{} passed, {} failed", totals.passed, failures);
    if !failed.is_empty() {
        bail!("failed: {}", failed.join("; "));
    }
    Ok(())
}

/// `test --on-xen`: the PV kernel tests with `FERROVISOR_ON_XEN=1`, which makes them boot
/// each kernel on Xen 4.17 (`tests/src/lib.rs`, `boot_test_kernel`).
fn test_on_xen() -> anyhow::Result<()> {
    deps::ensure()?;
    // Fetched once here rather than by the test threads.
    let image = xen::image()?;
    eprintln!("==> PV test kernels on Xen 4.17 ({})", image.display());
    let mut cmd = cargo_in_workspace();
    cmd.args([
        "test",
        "-p",
        "ferrovisor-tests",
        "--test",
        "pv_kernels",
        "--",
        "--test-threads=2",
    ])
    .env("FERROVISOR_ON_XEN", "1");
    let (counts, ok) = testrun::run(&mut cmd)?;
    let failures = if ok {
        counts.failed
    } else {
        counts.failed.max(1)
    };
    println!(
        "{} passed, {} failed (on Xen 4.17)",
        counts.passed, failures
    );
    if !ok {
        bail!("failed: PV test kernels on Xen 4.17");
    }
    Ok(())
}

fn lint() -> anyhow::Result<()> {
    let mut fmt = cargo_in_workspace();
    fmt.args(["fmt", "--all", "--check"]);
    let mut host = cargo_in_workspace();
    host.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    let mut hypervisor = cargo_in_workspace();
    hypervisor.args([
        "clippy",
        "-p",
        build::HYPERVISOR_PACKAGE,
        "--target",
        deps::HYPERVISOR_TARGET,
        "--",
        "-D",
        "warnings",
    ]);
    let mut test_kernels = cargo_in_workspace();
    test_kernels.args([
        "clippy",
        "-p",
        build::TEST_KERNELS_PACKAGE,
        "--target",
        deps::HYPERVISOR_TARGET,
        "--",
        "-D",
        "warnings",
    ]);
    run_all(vec![
        ("rustfmt", fmt),
        ("clippy (host, all targets)", host),
        ("clippy (hypervisor, x86_64-unknown-none)", hypervisor),
        (
            "clippy (PV test kernels, x86_64-unknown-none)",
            test_kernels,
        ),
    ])
}
