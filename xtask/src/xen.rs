//! Real Xen 4.17, the reference hypervisor: the same PV test kernels boot as its dom0 from
//! the same GRUB ISO layout under the same QEMU TCG (`cargo xtask test --on-xen`), so what
//! the tests expect of Ferrovisor is checked against Xen's own behaviour.
//!
//! The image is Debian's `xen-hypervisor-4.17-amd64` package (`/boot/xen-4.17-amd64.gz`),
//! fetched with `apt-get download` and unpacked with `dpkg-deb -x` into a cache under
//! `target/xen/`; it is never part of the repository.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};

/// The Debian package that holds Xen 4.17's hypervisor image.
pub const PACKAGE: &str = "xen-hypervisor-4.17-amd64";
/// The image's path inside the package.
const IMAGE_IN_PACKAGE: &str = "boot/xen-4.17-amd64.gz";
/// The image's name in the cache.
const IMAGE_NAME: &str = "xen-4.17-amd64.gz";

/// Xen's command line for booting a test kernel as dom0: the same 32 MiB as Ferrovisor's
/// test entry (`max:` so that dom0 cannot balloon past it), the serial console at the
/// speed GRUB uses, every log level on, and a reboot (which `-no-reboot` turns into QEMU's
/// exit) when dom0 crashes. Xen writes the hardware domain's `console_io` output to the
/// serial line as is, without the `(d0) ` prefix Ferrovisor adds.
pub const CMDLINE: &str = "dom0_mem=32M,max:32M dom0_max_vcpus=2 maxcpus=1 console=com1 \
                           com1=115200,8n1 loglvl=all guest_loglvl=all noreboot=false";

/// QEMU arguments appended after the standard ones (a later `-cpu` wins): Xen 4.17 does not
/// boot under TCG with SMAP and SMEP in `-cpu max`.
pub const QEMU_ARGS: [&str; 2] = ["-cpu", "max,-smap,-smep"];

/// What Xen 4.17 prints (after its `(XEN) ` prefix) when dom0 shuts down with
/// `SHUTDOWN_poweroff`; it then halts the CPUs without powering off, so QEMU keeps running.
pub const DOM0_POWEROFF_LINE: &str = "Hardware Dom0 halted: halting machine";
/// What Xen 4.17 prints when dom0 shuts down with `SHUTDOWN_crash` (it then reboots after
/// 5 s, which ends QEMU under `-no-reboot`).
pub const DOM0_CRASH_LINE: &str = "Hardware Dom0 crashed";

/// The cache directory, `target/xen`.
pub fn cache_dir() -> PathBuf {
    crate::target_dir().join("xen")
}

/// The cached image's path, whether or not it has been fetched.
pub fn cached_image() -> PathBuf {
    cache_dir().join(IMAGE_NAME)
}

/// The path of Xen 4.17's `xen.gz`, fetching and unpacking the Debian package into the
/// cache first when it is not there. Safe against concurrent callers: the image is put in
/// place with a rename.
pub fn image() -> anyhow::Result<PathBuf> {
    let image = cached_image();
    if image.is_file() {
        return Ok(image);
    }
    fetch(&image).with_context(|| {
        format!(
            "cannot get Xen 4.17 (Debian package {PACKAGE}) into {}",
            image.display()
        )
    })?;
    Ok(image)
}

fn fetch(image: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(cache_dir())
        .with_context(|| format!("cannot create {}", cache_dir().display()))?;
    crate::debian::with_package(PACKAGE, &cache_dir(), |root| {
        let unpacked = root.join(IMAGE_IN_PACKAGE);
        if !unpacked.is_file() {
            bail!("{PACKAGE} has no /{IMAGE_IN_PACKAGE}");
        }
        crate::debian::install_file(&unpacked, image)?;
        eprintln!("xen: {}", image.display());
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_under_target() {
        assert!(cached_image().starts_with(crate::target_dir()));
        assert!(cached_image().ends_with("xen/xen-4.17-amd64.gz"));
    }

    #[test]
    fn cmdline_passes_grubs_checks() {
        assert!(!CMDLINE.contains(|c: char| "\"'\\$;|&<>{}#`\n\r".contains(c)));
        assert!(CMDLINE.contains("console=com1"));
    }
}
