//! Debian's own Linux as dom0: the kernel package (`linux-image-amd64`'s current
//! dependency) and `busybox-static`, fetched into `target/linux/` (never committed), and
//! a small initramfs built from them: busybox, the Xen drivers the kernel has as modules,
//! `fv` (built for musl), and an `/init` that opens a shell on the console
//! (`src/dom0/init.sh`).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};

use crate::{
    debian,
    initramfs::{self, Entry},
};

/// The metapackage that names Debian's current kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-amd64";
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
/// The Xen drivers `/init` loads, in order (privcmd first: xenfs uses it).
pub const XEN_MODULES: [&str; 5] = [
    "xen-privcmd",
    "xen-evtchn",
    "xen-gntdev",
    "xen-gntalloc",
    "xenfs/xenfs",
];

const INIT: &str = include_str!("dom0/init.sh");
/// Example domain configurations, installed under `/etc/fv/examples/`.
const EXAMPLES: [(&str, &str); 2] = [
    ("hello.cfg", include_str!("dom0/examples/hello.cfg")),
    (
        "linux-domu.cfg",
        include_str!("dom0/examples/linux-domu.cfg"),
    ),
];
const DOMU_INIT: &str = include_str!("dom0/domu-init.sh");
const DOMU_PROFILE: &str = "export PATH=/bin\nexport PS1='domU:\\w# '\n";
const PROFILE: &str = include_str!("dom0/profile");

/// dom0's kernel and initramfs.
#[derive(Clone, Debug)]
pub struct Dom0Linux {
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    /// The kernel release (`uname -r`).
    pub version: String,
}

/// The cache, `target/linux`.
pub fn cache_dir() -> PathBuf {
    crate::target_dir().join("linux")
}

/// Debian's kernel and a fresh dom0 initramfs, fetching the packages first if they are
/// not cached.
pub fn dom0() -> anyhow::Result<Dom0Linux> {
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let kernel_dir = kernel(&cache)?;
    let version = fs::read_to_string(kernel_dir.join("version"))
        .context("the cached kernel has no version file")?
        .trim()
        .to_owned();
    let busybox = busybox(&cache)?;
    let fv = crate::build::fv()?;
    let initrd = cache.join("dom0-initrd.img");
    let mut files = entries(&kernel_dir, &busybox)?;
    files.push(Entry::File {
        path: "bin/fv".into(),
        mode: 0o755,
        data: fs::read(&fv).with_context(|| format!("cannot read {}", fv.display()))?,
    });
    // What the examples boot: the `hello` test kernel.
    let kernels = crate::build::test_kernels(crate::build::Profile::Release)?;
    let hello = kernels
        .get("hello")
        .context("no hello test kernel was built")?;
    for d in ["usr", "usr/lib", "usr/lib/fv", "etc/fv", "etc/fv/examples"] {
        files.push(Entry::Dir {
            path: d.into(),
            mode: 0o755,
        });
    }
    files.push(Entry::File {
        path: "usr/lib/fv/hello.elf".into(),
        mode: 0o644,
        data: fs::read(hello).with_context(|| format!("cannot read {}", hello.display()))?,
    });
    // The Linux domU example: this kernel and a busybox initramfs of its own.
    files.push(Entry::File {
        path: "usr/lib/fv/vmlinuz".into(),
        mode: 0o644,
        data: fs::read(kernel_dir.join("vmlinuz")).context("cannot read the cached vmlinuz")?,
    });
    files.push(Entry::File {
        path: "usr/lib/fv/domu-initrd.img".into(),
        mode: 0o644,
        data: initramfs::cpio_gz(&domu_entries(&busybox)?)?,
    });
    for (name, text) in EXAMPLES {
        files.push(Entry::File {
            path: format!("etc/fv/examples/{name}"),
            mode: 0o644,
            data: text.as_bytes().to_vec(),
        });
    }
    let image = initramfs::cpio_gz(&files)?;
    let staged = initrd.with_extension(format!("part-{}", std::process::id()));
    fs::write(&staged, image).with_context(|| format!("cannot write {}", staged.display()))?;
    fs::rename(&staged, &initrd).with_context(|| format!("cannot write {}", initrd.display()))?;
    Ok(Dom0Linux {
        vmlinuz: kernel_dir.join("vmlinuz"),
        initrd,
        version,
    })
}

/// What every initramfs here holds: the usual directories, busybox (also as `sh`, the
/// shell; `/init` scripts run under `#!/bin/busybox sh`), `init` and `/etc/profile`,
/// and `/sbin/poweroff` and `/sbin/reboot`. Linux runs the latter when the toolstack asks
/// it to stop (`control/shutdown`: `orderly_poweroff`/`orderly_reboot`); busybox's own
/// would signal an init that is a plain shell here, so these act at once.
fn busybox_root(busybox: &Path, init: &str, profile: &str) -> anyhow::Result<Vec<Entry>> {
    let dir = |p: &str| Entry::Dir {
        path: p.to_owned(),
        mode: 0o755,
    };
    let mut e: Vec<Entry> = ["bin", "sbin", "dev", "etc", "proc", "sys", "tmp", "run"]
        .into_iter()
        .map(dir)
        .collect();
    e.extend([
        Entry::File {
            path: "bin/busybox".into(),
            mode: 0o755,
            data: fs::read(busybox)
                .with_context(|| format!("cannot read {}", busybox.display()))?,
        },
        Entry::Symlink {
            path: "bin/sh".into(),
            target: "busybox".into(),
        },
        Entry::File {
            path: "init".into(),
            mode: 0o755,
            data: init.as_bytes().to_vec(),
        },
        Entry::File {
            path: "etc/profile".into(),
            mode: 0o644,
            data: profile.as_bytes().to_vec(),
        },
    ]);
    for cmd in ["poweroff", "reboot", "halt"] {
        e.push(Entry::File {
            path: format!("sbin/{cmd}"),
            mode: 0o755,
            data: format!("#!/bin/sh\nsync\nexec /bin/busybox {cmd} -f\n").into_bytes(),
        });
    }
    Ok(e)
}

/// dom0's initramfs: the busybox root with dom0's `/init` and the Xen modules.
fn entries(kernel_dir: &Path, busybox: &Path) -> anyhow::Result<Vec<Entry>> {
    let mut e = busybox_root(busybox, INIT, PROFILE)?;
    for d in ["lib", "lib/modules"] {
        e.push(Entry::Dir {
            path: d.into(),
            mode: 0o755,
        });
    }
    for m in XEN_MODULES {
        let name = module_file_name(m);
        let from = kernel_dir.join("modules").join(&name);
        e.push(Entry::File {
            path: format!("lib/modules/{name}"),
            mode: 0o644,
            data: fs::read(&from).with_context(|| format!("cannot read {}", from.display()))?,
        });
    }
    Ok(e)
}

/// A domU's initramfs: the busybox root with the domU's `/init`.
fn domu_entries(busybox: &Path) -> anyhow::Result<Vec<Entry>> {
    busybox_root(busybox, DOMU_INIT, DOMU_PROFILE)
}

fn module_file_name(m: &str) -> String {
    format!("{}.ko", m.rsplit('/').next().unwrap_or(m))
}

/// `target/linux/kernel/` with `vmlinuz`, `version` and `modules/*.ko`, from the package
/// `linux-image-amd64` depends on (fetched once; a cached kernel is used as it is).
fn kernel(cache: &Path) -> anyhow::Result<PathBuf> {
    let dir = cache.join("kernel");
    if dir.join("version").is_file() {
        return Ok(dir);
    }
    let package = debian::resolve(KERNEL_METAPACKAGE, "linux-image-")?;
    let staging = cache.join(format!("kernel-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(staging.join("modules"))?;
    debian::with_package(&package, cache, |root| {
        let boot = root.join("boot");
        let vmlinuz = fs::read_dir(&boot)
            .with_context(|| format!("{package} has no /boot"))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .with_context(|| format!("{package} has no /boot/vmlinuz-*"))?;
        let version = vmlinuz
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches("vmlinuz-")
                    .to_owned()
            })
            .unwrap_or_default();
        fs::copy(&vmlinuz, staging.join("vmlinuz"))?;
        let xen = root
            .join("lib/modules")
            .join(&version)
            .join("kernel/drivers/xen");
        for m in XEN_MODULES {
            let from = xen.join(format!("{m}.ko"));
            if !from.is_file() {
                bail!("{package} has no {}", from.display());
            }
            fs::copy(&from, staging.join("modules").join(module_file_name(m)))?;
        }
        fs::write(staging.join("version"), format!("{version}\n"))?;
        Ok(())
    })?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&staging, &dir).with_context(|| format!("cannot write {}", dir.display()))?;
    eprintln!("linux: dom0 kernel in {}", dir.display());
    Ok(dir)
}

/// `target/linux/busybox`, the static busybox of Debian's `busybox-static`.
fn busybox(cache: &Path) -> anyhow::Result<PathBuf> {
    let path = cache.join("busybox");
    if path.is_file() {
        return Ok(path);
    }
    debian::with_package(BUSYBOX_PACKAGE, cache, |root| {
        debian::install_file(&root.join("bin/busybox"), &path)
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        assert_eq!(module_file_name("xenfs/xenfs"), "xenfs.ko");
        assert_eq!(module_file_name("xen-privcmd"), "xen-privcmd.ko");
    }

    #[test]
    fn init_loads_every_module_and_opens_a_shell() {
        for m in XEN_MODULES {
            let name = module_file_name(m);
            let stem = name.trim_end_matches(".ko");
            assert!(INIT.contains(stem), "{stem} is not loaded by /init");
        }
        assert!(INIT.contains("mount -t xenfs"));
        assert!(INIT.starts_with("#!/bin/busybox sh"));
    }
}
