//! The GRUB rescue ISO: a staging tree with the hypervisor, its boot modules and a real
//! `grub.cfg` multiboot2 entry (the one an administrator writes, see the product brief),
//! turned into a BIOS-bootable ISO by `grub-mkrescue`.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};

use crate::build::Artifacts;

/// The hypervisor command line of the default entry.
pub const DEFAULT_HYPERVISOR_CMDLINE: &str = "dom0_mem=262144 console=com1 loglvl=info";
/// The dom0 kernel command line of the default entry (passed to dom0 untouched).
pub const DEFAULT_DOM0_CMDLINE: &str = "root=/dev/xvda ro console=hvc0 nousb";
/// GRUB menu timeout for interactive runs; tests use 0.
pub const INTERACTIVE_TIMEOUT_SECS: u32 = 3;

/// One `module2` line: a file copied to `/boot/<iso_name>` and its command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootModule {
    pub source: PathBuf,
    pub iso_name: String,
    pub cmdline: String,
}

/// Which hypervisor a boot entry loads: its file on the ISO and the menu title.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Hypervisor {
    #[default]
    Ferrovisor,
    /// Real Xen 4.17, the reference the test kernels are checked against ([`crate::xen`]).
    Xen,
}

impl Hypervisor {
    /// The image's name in the ISO's `/boot`.
    pub fn iso_name(self) -> &'static str {
        match self {
            Hypervisor::Ferrovisor => "ferrovisor.gz",
            Hypervisor::Xen => "xen.gz",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Hypervisor::Ferrovisor => "Ferrovisor",
            Hypervisor::Xen => "Xen 4.17",
        }
    }
}

/// One GRUB `menuentry`: the hypervisor (`/boot/ferrovisor.gz`, or `/boot/xen.gz`), its
/// command line and its modules (dom0's kernel first, then its initrd), and the menu timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// The gzipped hypervisor, copied to `/boot/<kind.iso_name()>`.
    pub hypervisor: PathBuf,
    pub kind: Hypervisor,
    pub hypervisor_cmdline: String,
    pub modules: Vec<BootModule>,
    pub timeout_secs: u32,
}

impl BootEntry {
    /// The product brief's entry, with the placeholder dom0 kernel and initrd: the default
    /// command lines, timeout 0.
    pub fn new(artifacts: &Artifacts) -> Self {
        BootEntry {
            hypervisor: artifacts.gz.clone(),
            kind: Hypervisor::Ferrovisor,
            hypervisor_cmdline: DEFAULT_HYPERVISOR_CMDLINE.to_owned(),
            modules: vec![
                BootModule {
                    source: artifacts.dom0_placeholder.clone(),
                    iso_name: "vmlinuz-placeholder".to_owned(),
                    cmdline: DEFAULT_DOM0_CMDLINE.to_owned(),
                },
                BootModule {
                    source: artifacts.initrd_placeholder.clone(),
                    iso_name: "initrd-placeholder".to_owned(),
                    cmdline: String::new(),
                },
            ],
            timeout_secs: 0,
        }
    }

    /// An entry that boots Xen 4.17 (`xen_gz`, from [`crate::xen::image`]) with
    /// [`crate::xen::CMDLINE`] and no modules yet, timeout 0.
    pub fn xen(xen_gz: impl Into<PathBuf>) -> Self {
        BootEntry {
            hypervisor: xen_gz.into(),
            kind: Hypervisor::Xen,
            hypervisor_cmdline: crate::xen::CMDLINE.to_owned(),
            modules: Vec::new(),
            timeout_secs: 0,
        }
    }

    /// The `grub.cfg` for this entry. GRUB writes its menu to the serial line too, so the
    /// whole boot is visible on COM1.
    pub fn grub_cfg(&self) -> anyhow::Result<String> {
        check_cmdline(&self.hypervisor_cmdline)?;
        let mut cfg = String::new();
        // `fmt::Write` into a String cannot fail.
        let _ = write!(
            cfg,
            "set timeout={}\n\
             set default=0\n\
             serial --unit=0 --speed=115200\n\
             terminal_input serial console\n\
             terminal_output serial console\n\
             \n\
             menuentry '{}' {{\n    \
                 insmod gzio\n    \
                 insmod multiboot2\n    \
                 multiboot2 /boot/{}{}\n",
            self.timeout_secs,
            self.kind.title(),
            self.kind.iso_name(),
            with_space(&self.hypervisor_cmdline),
        );
        for module in &self.modules {
            check_cmdline(&module.cmdline)?;
            check_iso_name(&module.iso_name)?;
            let _ = writeln!(
                cfg,
                "    module2    /boot/{}{}",
                module.iso_name,
                with_space(&module.cmdline)
            );
        }
        cfg.push_str("}\n");
        Ok(cfg)
    }
}

fn with_space(cmdline: &str) -> String {
    let cmdline = cmdline.trim();
    if cmdline.is_empty() {
        String::new()
    } else {
        format!(" {cmdline}")
    }
}

/// GRUB's script parser would expand or split on these; our command lines never need them.
fn check_cmdline(cmdline: &str) -> anyhow::Result<()> {
    if let Some(c) = cmdline.chars().find(|c| "\"'\\$;|&<>{}#`\n\r".contains(*c)) {
        bail!("command line {cmdline:?}: {c:?} would be interpreted by GRUB's script parser");
    }
    Ok(())
}

fn check_iso_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name != Hypervisor::Ferrovisor.iso_name()
        && name != Hypervisor::Xen.iso_name()
        && name != "grub"
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        bail!("module file name {name:?}: use a plain name ([A-Za-z0-9._-]) other than ferrovisor.gz, xen.gz and grub");
    }
    Ok(())
}

/// A staging directory name no other ISO build (thread or process) uses at the same time.
fn unique_staging_dir(out: &Path) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "iso".to_owned());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    crate::target_dir().join("iso-staging").join(format!(
        "{stem}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Builds the ISO for `entry` at `out` and returns `out`. Safe to call concurrently, from
/// threads or processes, as long as the `out` paths differ.
pub fn make_iso(entry: &BootEntry, out: &Path) -> anyhow::Result<PathBuf> {
    let cfg = entry.grub_cfg()?;
    let staging = unique_staging_dir(out);
    let result = stage_and_pack(entry, &cfg, &staging, out);
    let _ = fs::remove_dir_all(&staging);
    result.with_context(|| format!("making the ISO {}", out.display()))?;
    Ok(out.to_path_buf())
}

fn stage_and_pack(entry: &BootEntry, cfg: &str, staging: &Path, out: &Path) -> anyhow::Result<()> {
    let boot = staging.join("boot");
    fs::create_dir_all(boot.join("grub"))
        .with_context(|| format!("cannot create {}", boot.display()))?;
    copy(&entry.hypervisor, &boot.join(entry.kind.iso_name()))?;
    for module in &entry.modules {
        copy(&module.source, &boot.join(&module.iso_name))?;
    }
    fs::write(boot.join("grub/grub.cfg"), cfg).context("cannot write grub.cfg")?;

    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    // grub-mkrescue writes through xorriso; a failed run may leave a partial file behind.
    let _ = fs::remove_file(out);
    let mut cmd = Command::new("grub-mkrescue");
    cmd.arg("-o").arg(out).arg(staging);
    let line = crate::display_command(&cmd);
    let output = cmd.output().with_context(|| {
        format!("cannot run `{line}`: is grub-common installed? (`cargo xtask deps`)")
    })?;
    if !output.status.success() || !out.is_file() {
        bail!(
            "`{line}` failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifacts() -> Artifacts {
        Artifacts {
            elf: "elf".into(),
            gz: "ferrovisor.gz".into(),
            dom0_placeholder: "dom0.bin".into(),
            initrd_placeholder: "initrd.bin".into(),
        }
    }

    #[test]
    fn default_entry_is_the_briefs() {
        let cfg = BootEntry::new(&artifacts()).grub_cfg().unwrap();
        assert_eq!(
            cfg,
            "set timeout=0\n\
             set default=0\n\
             serial --unit=0 --speed=115200\n\
             terminal_input serial console\n\
             terminal_output serial console\n\
             \n\
             menuentry 'Ferrovisor' {\n\
            \x20   insmod gzio\n\
            \x20   insmod multiboot2\n\
            \x20   multiboot2 /boot/ferrovisor.gz dom0_mem=262144 console=com1 loglvl=info\n\
            \x20   module2    /boot/vmlinuz-placeholder root=/dev/xvda ro console=hvc0 nousb\n\
            \x20   module2    /boot/initrd-placeholder\n\
             }\n"
        );
    }

    #[test]
    fn no_modules_and_empty_cmdline() {
        let mut entry = BootEntry::new(&artifacts());
        entry.modules.clear();
        entry.hypervisor_cmdline.clear();
        entry.timeout_secs = INTERACTIVE_TIMEOUT_SECS;
        let cfg = entry.grub_cfg().unwrap();
        assert!(cfg.starts_with("set timeout=3\n"));
        assert!(cfg.contains("    multiboot2 /boot/ferrovisor.gz\n}\n"));
        assert!(!cfg.contains("module2 "));
    }

    #[test]
    fn rejects_what_grub_would_interpret() {
        let mut entry = BootEntry::new(&artifacts());
        entry.hypervisor_cmdline = "console=com1; reboot".into();
        assert!(entry.grub_cfg().is_err());
        let mut entry = BootEntry::new(&artifacts());
        entry.modules[0].cmdline = "root=$root".into();
        assert!(entry.grub_cfg().is_err());
        let mut entry = BootEntry::new(&artifacts());
        entry.modules[0].iso_name = "../x".into();
        assert!(entry.grub_cfg().is_err());
    }

    #[test]
    fn xen_entry_boots_xen_gz() {
        let mut entry = BootEntry::xen("/cache/xen-4.17-amd64.gz");
        entry.modules.push(BootModule {
            source: "hello".into(),
            iso_name: "hello.elf".into(),
            cmdline: "x=1".into(),
        });
        let cfg = entry.grub_cfg().unwrap();
        assert!(cfg.contains("menuentry 'Xen 4.17' {\n"), "{cfg}");
        assert!(
            cfg.contains(&format!(
                "    multiboot2 /boot/xen.gz {}\n    module2    /boot/hello.elf x=1\n}}\n",
                crate::xen::CMDLINE
            )),
            "{cfg}"
        );
        entry.modules[0].iso_name = "xen.gz".into();
        assert!(entry.grub_cfg().is_err());
    }

    #[test]
    fn staging_dirs_are_unique() {
        let out = Path::new("/tmp/x.iso");
        assert_ne!(unique_staging_dir(out), unique_staging_dir(out));
    }
}
