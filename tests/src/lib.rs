//! Helpers for the QEMU integration tests: build the hypervisor (and the PV test kernels)
//! once per test process, make an ISO for a boot entry, boot it and check the serial log.
//! Every check that fails panics with the whole serial log, and so does any other panic
//! while a [`Boot`] is alive.
//!
//! With `FERROVISOR_ON_XEN=1` in the environment (`cargo xtask test --on-xen`),
//! [`boot_test_kernel`] boots the same test kernel as dom0 of real Xen 4.17 instead, so the
//! PV kernel tests check Ferrovisor's behaviour against the reference hypervisor's.

use std::{
    collections::BTreeMap,
    env,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, Instant},
};

use regex::Regex;

mod term;
pub use term::Term;
pub use xtask::qemu::{ExitOutcome, Matched, QemuConfig, VirtioDisk, VirtioNic};
use xtask::{
    build::{self, Artifacts, Profile},
    deps,
    iso::{self, BootEntry, BootModule},
    qemu::{self, Session},
    xen,
};

/// One boot, from QEMU's start to its exit: TCG on a loaded 2-core machine is slow.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a machine must stay silent after Xen's halt line for the halt to count.
const XEN_HALT_QUIET: Duration = Duration::from_secs(2);

/// The hypervisor and boot modules, built once per test process. Panics (failing the test,
/// never skipping it) when the machine lacks a tool, naming what to install.
pub fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Result<Artifacts, String>> = OnceLock::new();
    let built = ARTIFACTS.get_or_init(|| {
        deps::require_for_qemu_tests()
            .and_then(|()| build::build(Profile::Release))
            .map_err(|err| format!("{err:#}"))
    });
    match built {
        Ok(artifacts) => artifacts,
        Err(err) => panic!("cannot build the hypervisor for the QEMU tests:\n{err}"),
    }
}

/// The PV test kernels (`tests/kernels/`), built once per test process, by name. Panics
/// (failing the test) when they do not build.
pub fn test_kernels() -> &'static BTreeMap<String, PathBuf> {
    static KERNELS: OnceLock<Result<BTreeMap<String, PathBuf>, String>> = OnceLock::new();
    let built = KERNELS
        .get_or_init(|| build::test_kernels(Profile::Release).map_err(|err| format!("{err:#}")));
    match built {
        Ok(kernels) => kernels,
        Err(err) => panic!("cannot build the PV test kernels:\n{err}"),
    }
}

/// The ELF of test kernel `name` (`tests/kernels/src/bin/<name>.rs`).
pub fn test_kernel(name: &str) -> &'static Path {
    let kernels = test_kernels();
    match kernels.get(name) {
        Some(path) => path,
        None => panic!(
            "no test kernel {name:?}; there are {:?}",
            kernels.keys().collect::<Vec<_>>()
        ),
    }
}

/// Whether the PV test kernels boot on real Xen 4.17 rather than on Ferrovisor:
/// `FERROVISOR_ON_XEN=1` in the environment (`cargo xtask test --on-xen` sets it).
pub fn on_xen() -> bool {
    env::var_os("FERROVISOR_ON_XEN").is_some_and(|v| v == "1")
}

/// Xen 4.17's image (Debian's package, cached under `target/xen/`), fetched once per test
/// process. Panics (failing the test) when it cannot be fetched.
pub fn xen_image() -> &'static Path {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match IMAGE.get_or_init(|| xen::image().map_err(|err| format!("{err:#}"))) {
        Ok(path) => path,
        Err(err) => panic!("cannot get Xen 4.17 for the --on-xen tests:\n{err}"),
    }
}

/// Which `module2` lines the boot entry has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modules<'a> {
    /// The placeholder dom0 kernel (with `iso::DEFAULT_DOM0_CMDLINE`) and initrd.
    Default,
    /// No `module2` line at all.
    None,
    /// One `module2` line: this dom0 kernel with this command line, no initrd.
    Dom0Kernel { kernel: &'a Path, cmdline: &'a str },
    /// This dom0 kernel and a second module (dom0's initrd: here another kernel, which
    /// dom0 builds into a domain of its own).
    Dom0KernelAndModule {
        kernel: &'a Path,
        cmdline: &'a str,
        module: &'a Path,
    },
}

/// Makes `target/qemu-tests/<name>.iso` for this hypervisor command line and module set.
pub fn make_iso(name: &str, hypervisor_cmdline: &str, modules: Modules<'_>) -> PathBuf {
    let mut entry = BootEntry::new(artifacts());
    entry.hypervisor_cmdline = hypervisor_cmdline.to_owned();
    entry.timeout_secs = 0;
    match modules {
        Modules::Default => {}
        Modules::None => entry.modules.clear(),
        Modules::Dom0Kernel { kernel, cmdline } => {
            let file_name = kernel
                .file_name()
                .map_or_else(|| "dom0-kernel".into(), |n| n.to_string_lossy());
            entry.modules = vec![BootModule {
                source: kernel.to_path_buf(),
                iso_name: format!("{file_name}.elf"),
                cmdline: cmdline.to_owned(),
            }];
        }
        Modules::Dom0KernelAndModule {
            kernel,
            cmdline,
            module,
        } => {
            let name = |p: &Path| {
                p.file_name()
                    .map_or_else(|| "module".into(), |n| n.to_string_lossy().into_owned())
            };
            entry.modules = vec![
                BootModule {
                    source: kernel.to_path_buf(),
                    iso_name: format!("{}.elf", name(kernel)),
                    cmdline: cmdline.to_owned(),
                },
                BootModule {
                    source: module.to_path_buf(),
                    iso_name: format!("{}-module.elf", name(module)),
                    cmdline: String::new(),
                },
            ];
        }
    }
    let out = xtask::target_dir()
        .join("qemu-tests")
        .join(format!("{name}.iso"));
    iso::make_iso(&entry, &out).unwrap_or_else(|err| panic!("{err:#}"))
}

/// Builds the ISO and boots it with QEMU's defaults (TCG, 1024 MiB, 2 CPUs); the serial log
/// also goes to `target/qemu-logs/<name>.log`.
pub fn boot(name: &str, hypervisor_cmdline: &str, modules: Modules<'_>) -> Boot {
    boot_with_memory(
        name,
        hypervisor_cmdline,
        modules,
        QemuConfig::new(PathBuf::new()).memory_mib,
    )
}

/// As [`boot`], with `memory_mib` of RAM.
pub fn boot_with_memory(
    name: &str,
    hypervisor_cmdline: &str,
    modules: Modules<'_>,
    memory_mib: u32,
) -> Boot {
    let iso = make_iso(name, hypervisor_cmdline, modules);
    let mut cfg = QemuConfig::new(iso);
    cfg.memory_mib = memory_mib;
    cfg.log_name = Some(name.to_owned());
    cfg.extra_args = qemu_debug_args();
    let session = qemu::spawn(&cfg).unwrap_or_else(|err| panic!("{err:#}"));
    Boot {
        session,
        deadline: Instant::now() + BOOT_TIMEOUT,
        reported: false,
        on_xen: false,
    }
}

/// As [`boot`], with the QEMU configuration adjusted by `configure` (virtio disks and
/// NICs, memory) before QEMU starts.
pub fn boot_with_config(
    name: &str,
    hypervisor_cmdline: &str,
    modules: Modules<'_>,
    configure: impl FnOnce(&mut QemuConfig),
) -> Boot {
    let iso = make_iso(name, hypervisor_cmdline, modules);
    let mut cfg = QemuConfig::new(iso);
    cfg.log_name = Some(name.to_owned());
    cfg.extra_args = qemu_debug_args();
    configure(&mut cfg);
    let session = qemu::spawn(&cfg).unwrap_or_else(|err| panic!("{err:#}"));
    Boot {
        session,
        deadline: Instant::now() + BOOT_TIMEOUT,
        reported: false,
        on_xen: false,
    }
}

/// With `FERROVISOR_QEMU_DEBUG_LOG=<file>` in the environment (`cargo xtask stress` sets
/// it), QEMU logs interrupts, exceptions and CPU resets there (`-d int,cpu_reset -D`).
fn qemu_debug_args() -> Vec<String> {
    match env::var_os("FERROVISOR_QEMU_DEBUG_LOG") {
        Some(path) if !path.is_empty() => vec![
            "-d".into(),
            "int,cpu_reset".into(),
            "-D".into(),
            path.to_string_lossy().into_owned(),
        ],
        _ => Vec::new(),
    }
}

/// Boots test kernel `name` (`tests/kernels/src/bin/<name>.rs`) as dom0: the kernel is the
/// only `module2`, with `kernel_cmdline`. The ISO and the serial log are named
/// `pv-<name>`.
///
/// When [`on_xen`], the same kernel boots as dom0 of Xen 4.17 instead, with
/// [`xen::CMDLINE`] (`hypervisor_cmdline` is Ferrovisor's and is not used) and
/// [`xen::QEMU_ARGS`]; the ISO and the log are named `xen-pv-<name>`.
pub fn boot_test_kernel(name: &str, hypervisor_cmdline: &str, kernel_cmdline: &str) -> Boot {
    boot_test_kernel_as(name, name, hypervisor_cmdline, kernel_cmdline)
}

/// [`boot_test_kernel`] for a second scenario of the same kernel: `run` names its logs
/// and ISO, so that both can run at once.
pub fn boot_test_kernel_as(
    run: &str,
    name: &str,
    hypervisor_cmdline: &str,
    kernel_cmdline: &str,
) -> Boot {
    let kernel = test_kernel(name);
    if on_xen() {
        return boot_on_xen(&format!("xen-pv-{run}"), kernel, kernel_cmdline);
    }
    boot(
        &format!("pv-{run}"),
        hypervisor_cmdline,
        Modules::Dom0Kernel {
            kernel,
            cmdline: kernel_cmdline,
        },
    )
}

/// Boots `kernel` as Xen 4.17's dom0 (see [`boot_test_kernel`]).
fn boot_on_xen(name: &str, kernel: &Path, kernel_cmdline: &str) -> Boot {
    let mut entry = BootEntry::xen(xen_image());
    let file_name = kernel
        .file_name()
        .map_or_else(|| "dom0-kernel".into(), |n| n.to_string_lossy());
    entry.modules = vec![BootModule {
        source: kernel.to_path_buf(),
        iso_name: format!("{file_name}.elf"),
        cmdline: kernel_cmdline.to_owned(),
    }];
    let out = xtask::target_dir()
        .join("qemu-tests")
        .join(format!("{name}.iso"));
    let iso = iso::make_iso(&entry, &out).unwrap_or_else(|err| panic!("{err:#}"));
    let mut cfg = QemuConfig::new(iso);
    cfg.extra_args = xen::QEMU_ARGS.iter().map(|&a| a.to_owned()).collect();
    cfg.log_name = Some(name.to_owned());
    let session = qemu::spawn(&cfg).unwrap_or_else(|err| panic!("{err:#}"));
    Boot {
        session,
        deadline: Instant::now() + BOOT_TIMEOUT,
        reported: false,
        on_xen: true,
    }
}

/// A booted machine under test. All waits share one deadline, [`BOOT_TIMEOUT`] after boot.
#[derive(Debug)]
pub struct Boot {
    pub session: Session,
    deadline: Instant,
    /// Whether a panic message already carried the serial log.
    reported: bool,
    /// Booted on Xen 4.17 ([`on_xen`]): see [`Boot::re`].
    on_xen: bool,
}

/// Compiles a regex of the test source; a bad one is a bug in the test.
pub fn re(pattern: &str) -> Regex {
    Regex::new(&format!("(?m){pattern}"))
        .unwrap_or_else(|err| panic!("bad regex /{pattern}/: {err}"))
}

impl Boot {
    /// Whether this machine runs Xen 4.17 rather than Ferrovisor.
    pub fn on_xen(&self) -> bool {
        self.on_xen
    }

    /// Compiles a pattern of the test source for this machine's log. Ferrovisor prefixes
    /// each line dom0 writes with `(d0) `; Xen 4.17 writes the hardware domain's
    /// `console_io` output as is (only other domains get `(dN) `), so on Xen the `(d0) `
    /// prefix is taken out of every pattern.
    fn re(&self, pattern: &str) -> Regex {
        if self.on_xen {
            re(&pattern.replace(r"\(d0\) ", ""))
        } else {
            re(pattern)
        }
    }

    /// Gives a long scenario (Linux as dom0 and a domU) more time than [`BOOT_TIMEOUT`]:
    /// the deadline becomes `total` after now.
    pub fn allow(&mut self, total: Duration) {
        self.deadline = self.deadline.max(Instant::now() + total);
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Fails the test with `msg` and the whole serial log.
    pub fn fail(&mut self, msg: &str) -> ! {
        self.reported = true;
        panic!("{msg}\n{}", self.session.report())
    }

    fn fail_with(&mut self, err: anyhow::Error) -> ! {
        // The session's errors already carry the log.
        self.reported = true;
        panic!("{err:#}")
    }

    /// Types `s` on the serial line.
    pub fn send(&mut self, s: &str) {
        if let Err(e) = self.session.send(s) {
            self.fail(&format!("cannot write to the serial line: {e:#}"));
        }
    }

    /// Waits for `pattern` after the previous `expect`'s match.
    pub fn expect(&mut self, pattern: &str) -> Matched {
        let remaining = self.remaining();
        let re = self.re(pattern);
        match self.session.expect(&re, remaining) {
            Ok(matched) => matched,
            Err(err) => self.fail_with(err),
        }
    }

    /// The first match of `pattern` anywhere in the log so far.
    pub fn find(&mut self, pattern: &str) -> Matched {
        self.find_from(pattern, 0)
    }

    /// The first match of `pattern` at or after offset `from` of the log.
    pub fn find_from(&mut self, pattern: &str, from: usize) -> Matched {
        let re = self.re(pattern);
        match self.session.find_from(&re, from) {
            Some(matched) => matched,
            None => self.fail(&format!("the serial log has no /{pattern}/")),
        }
    }

    /// Fails if `pattern` appears anywhere in the log.
    pub fn assert_absent(&mut self, pattern: &str) {
        if let Some(found) = self.session.find(&self.re(pattern)) {
            self.fail(&format!(
                "the serial log has {:?}, matching /{pattern}/, which must not appear",
                found.text
            ));
        }
    }

    /// Fails unless the last non-empty line of the log matches `pattern`: nothing was
    /// printed after it.
    pub fn assert_last_line(&mut self, pattern: &str) {
        let out = self.session.stripped_output();
        let last = out
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string();
        if !self.re(pattern).is_match(&last) {
            self.fail(&format!(
                "the log's last line is {last:?}, expected /{pattern}/ with nothing after it"
            ));
        }
    }

    /// Fails with the log unless `ok`.
    pub fn check(&mut self, ok: bool, what: &str) {
        if !ok {
            self.fail(&format!("check failed: {what}"));
        }
    }

    /// Waits for dom0's poweroff to stop the machine. Ferrovisor logs
    /// `dom0 shut down (poweroff)` and halts cleanly (QEMU status 33). Xen 4.17 logs
    /// [`xen::DOM0_POWEROFF_LINE`] and halts its CPUs without powering off, so QEMU keeps
    /// running: the machine must stay silent for a while (Xen halted rather than, say,
    /// rebooting), then QEMU is stopped.
    pub fn expect_dom0_poweroff(&mut self) {
        if !self.on_xen {
            self.expect(r"dom0 shut down \(poweroff\)");
            self.expect_exit(ExitOutcome::HaltedCleanly);
            return;
        }
        self.expect(&format!(
            r"\(XEN\) {}",
            regex::escape(xen::DOM0_POWEROFF_LINE)
        ));
        // On success `wait_exit` reports an exit: the machine did not stay halted.
        if let Ok(outcome) = self.session.wait_exit(XEN_HALT_QUIET) {
            self.fail(&format!(
                "Xen halted the machine, then QEMU exited: {}",
                outcome.describe()
            ));
        }
        self.assert_last_line(&regex::escape(xen::DOM0_POWEROFF_LINE));
    }

    /// Fails if the log says dom0 crashed (Ferrovisor's `dom0 crashed`, Xen's
    /// [`xen::DOM0_CRASH_LINE`]).
    pub fn assert_dom0_not_crashed(&mut self) {
        let pattern = if self.on_xen {
            regex::escape(xen::DOM0_CRASH_LINE)
        } else {
            "dom0 crashed".to_owned()
        };
        self.assert_absent(&pattern);
    }

    /// Waits for QEMU to exit and checks its verdict.
    pub fn expect_exit(&mut self, expected: ExitOutcome) {
        let remaining = self.remaining();
        let outcome = match self.session.wait_exit(remaining) {
            Ok(outcome) => outcome,
            Err(err) => self.fail_with(err),
        };
        if outcome != expected {
            self.fail(&format!(
                "QEMU's exit: expected {expected:?} ({}), got {outcome:?} ({})",
                expected.describe(),
                outcome.describe()
            ));
        }
    }
}

impl Drop for Boot {
    fn drop(&mut self) {
        self.session.kill();
        // A plain `assert!` in the test body: show the log it was about.
        if std::thread::panicking() && !self.reported {
            eprintln!("{}", self.session.report());
        }
    }
}
