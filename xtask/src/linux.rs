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
/// The Xen drivers dom0's `/init` loads, in order (privcmd first: xenfs uses it), as
/// paths under the package's `lib/modules/VERSION/kernel/`.
pub const XEN_MODULES: [&str; 5] = [
    "drivers/xen/xen-privcmd",
    "drivers/xen/xen-evtchn",
    "drivers/xen/xen-gntdev",
    "drivers/xen/xen-gntalloc",
    "drivers/xen/xenfs/xenfs",
];

/// The PV frontends every initramfs here loads (Debian builds both as modules,
/// `CONFIG_XEN_NETDEV_FRONTEND=m`, `CONFIG_XEN_BLKDEV_FRONTEND=m`; neither depends on
/// another module).
pub const FRONTEND_MODULES: [&str; 2] = ["drivers/net/xen-netfront", "drivers/block/xen-blkfront"];

/// ext4 and what it needs, in load order, for a domU to mount `/dev/xvda*`: Debian has
/// `CONFIG_EXT4_FS=m`; its `.modinfo` says `depends=jbd2,mbcache,crc16` and both ext4
/// and jbd2 have `softdep=pre: crypto-crc32c` (metadata checksums), which the generic
/// crc32c (`crc32c_generic`, alias `crypto-crc32c`) provides on any CPU.
pub const EXT4_MODULES: [&str; 5] = [
    "crypto/crc32c_generic",
    "lib/crc16",
    "fs/mbcache",
    "fs/jbd2/jbd2",
    "fs/ext4/ext4",
];

/// What the device bench (`bench_devices`) adds to dom0's initramfs, in load order: the
/// virtio PCI drivers for Linux on the QEMU machine itself (natively, or as Xen's dom0,
/// which owns the devices there), and Xen dom0's backends and bridge. Each `depends=`
/// (from `.modinfo`) comes before its user; `module_entries` checks it.
pub const DEVICE_MODULES: [&str; 14] = [
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci",
    "net/core/failover",
    "drivers/net/net_failover",
    "drivers/net/virtio_net",
    "drivers/block/virtio_blk",
    "drivers/net/xen-netback/xen-netback",
    "drivers/block/xen-blkback/xen-blkback",
    "net/llc/llc",
    "net/802/stp",
    "net/bridge/bridge",
];

/// Every module the cache holds.
fn all_modules() -> impl Iterator<Item = &'static str> {
    XEN_MODULES
        .into_iter()
        .chain(FRONTEND_MODULES)
        .chain(EXT4_MODULES)
        .chain(DEVICE_MODULES)
}

/// dom0's modules in load order.
fn dom0_modules() -> Vec<&'static str> {
    XEN_MODULES.into_iter().chain(FRONTEND_MODULES).collect()
}

/// A domU's modules in load order.
fn domu_modules() -> Vec<&'static str> {
    FRONTEND_MODULES.into_iter().chain(EXT4_MODULES).collect()
}

const INIT: &str = include_str!("dom0/init.sh");
/// Example domain configurations, installed under `/etc/fv/examples/`.
const EXAMPLES: [(&str, &str); 3] = [
    ("hello.cfg", include_str!("dom0/examples/hello.cfg")),
    (
        "linux-domu.cfg",
        include_str!("dom0/examples/linux-domu.cfg"),
    ),
    ("linux-net.cfg", include_str!("dom0/examples/linux-net.cfg")),
];
const DOMU_INIT: &str = include_str!("dom0/domu-init.sh");
/// Brings `eth0` up (DHCP, or the kernel command line's `ip=`), in both initramfs.
const NET_UP: &str = include_str!("dom0/net-up.sh");
/// udhcpc's hook, at the path busybox's udhcpc runs by default.
const UDHCPC_SCRIPT: &str = include_str!("dom0/udhcpc.script");
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

/// What a specialised initramfs adds to dom0's (the device bench's: its measuring program,
/// the virtio drivers, Xen's toolstack).
#[derive(Clone, Debug, Default)]
pub struct Extras {
    /// The initramfs' file name under the cache (`dom0-initrd.img` is dom0's own).
    pub name: String,
    /// More files in dom0's initramfs (directories first).
    pub dom0_files: Vec<Entry>,
    /// More files in the Linux domU example's initramfs.
    pub domu_files: Vec<Entry>,
    /// Modules (paths as in [`DEVICE_MODULES`]) put under dom0's `/lib/modules/`, in load
    /// order; `/init` does not load them.
    pub dom0_modules: Vec<&'static str>,
    /// `fv` without its debug info (by the host's `strip`, when there is one): Xen
    /// unpacks a gzipped initrd in dom0's memory before Linux unpacks it again, and
    /// 256 MiB do not hold both copies with it.
    pub strip_fv: bool,
}

/// Debian's kernel and a fresh dom0 initramfs, fetching the packages first if they are
/// not cached.
pub fn dom0() -> anyhow::Result<Dom0Linux> {
    dom0_with(&Extras {
        name: "dom0-initrd.img".to_owned(),
        ..Extras::default()
    })
}

/// [`dom0`] with `extras` in the initramfs.
pub fn dom0_with(extras: &Extras) -> anyhow::Result<Dom0Linux> {
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let kernel_dir = kernel(&cache)?;
    let version = fs::read_to_string(kernel_dir.join("version"))
        .context("the cached kernel has no version file")?
        .trim()
        .to_owned();
    let busybox = busybox(&cache)?;
    let fv = crate::build::fv()?;
    let initrd = cache.join(&extras.name);
    let mut files = entries(&kernel_dir, &busybox)?;
    // Loaded (by whoever uses them) after the ones /init loads.
    files.extend(module_files(
        &kernel_dir,
        &extras.dom0_modules,
        &dom0_modules(),
    )?);
    files.extend(extras.dom0_files.iter().cloned());
    let fv_data = match crate::deps::find_program("strip") {
        Some(strip) if extras.strip_fv => {
            let out = cache.join(format!("fv-stripped-{}", std::process::id()));
            crate::run(
                std::process::Command::new(strip)
                    .arg("--strip-debug")
                    .arg("-o")
                    .arg(&out)
                    .arg(&fv),
            )?;
            let data = fs::read(&out);
            let _ = fs::remove_file(&out);
            data
        }
        _ => fs::read(&fv),
    }
    .with_context(|| format!("cannot read {}", fv.display()))?;
    files.push(Entry::File {
        path: "bin/fv".into(),
        mode: 0o755,
        data: fv_data,
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
        data: initramfs::cpio_gz(
            &domu_entries(&kernel_dir, &busybox)?
                .into_iter()
                .chain(extras.domu_files.iter().cloned())
                .collect::<Vec<_>>(),
        )?,
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
    for d in ["usr", "usr/share", "usr/share/udhcpc", "mnt"] {
        e.push(dir(d));
    }
    e.extend([
        Entry::File {
            path: "sbin/net-up".into(),
            mode: 0o755,
            data: NET_UP.as_bytes().to_vec(),
        },
        Entry::File {
            path: "usr/share/udhcpc/default.script".into(),
            mode: 0o755,
            data: UDHCPC_SCRIPT.as_bytes().to_vec(),
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

/// `lib/modules/` with `modules` (in load order) from the cache, after checking that
/// each one's `depends=` are loaded before it.
fn module_entries(kernel_dir: &Path, modules: &[&str]) -> anyhow::Result<Vec<Entry>> {
    let mut e: Vec<Entry> = ["lib", "lib/modules"]
        .into_iter()
        .map(|d| Entry::Dir {
            path: d.into(),
            mode: 0o755,
        })
        .collect();
    e.extend(module_files(kernel_dir, modules, &[])?);
    Ok(e)
}

/// The files of [`module_entries`] for `modules`, loaded after `before`.
fn module_files(
    kernel_dir: &Path,
    modules: &[&str],
    before: &[&str],
) -> anyhow::Result<Vec<Entry>> {
    let mut e = Vec::new();
    let mut loaded: Vec<String> = before.iter().map(|m| module_stem(m)).collect();
    for m in modules {
        let name = module_file_name(m);
        let from = kernel_dir.join("modules").join(&name);
        let data = fs::read(&from).with_context(|| format!("cannot read {}", from.display()))?;
        for dep in module_depends(&data) {
            if !loaded.contains(&dep) {
                bail!("{name} depends on {dep}, which is not loaded before it: add it to the list");
            }
        }
        loaded.push(module_stem(m));
        e.push(Entry::File {
            path: format!("lib/modules/{name}"),
            mode: 0o644,
            data,
        });
    }
    Ok(e)
}

/// dom0's initramfs: the busybox root with dom0's `/init`, the Xen drivers and the
/// frontends.
fn entries(kernel_dir: &Path, busybox: &Path) -> anyhow::Result<Vec<Entry>> {
    let mut e = busybox_root(busybox, INIT, PROFILE)?;
    e.extend(module_entries(kernel_dir, &dom0_modules())?);
    Ok(e)
}

/// A domU's initramfs: the busybox root with the domU's `/init`, the frontends and ext4.
fn domu_entries(kernel_dir: &Path, busybox: &Path) -> anyhow::Result<Vec<Entry>> {
    let mut e = busybox_root(busybox, DOMU_INIT, DOMU_PROFILE)?;
    e.extend(module_entries(kernel_dir, &domu_modules())?);
    Ok(e)
}

/// A module's name as the kernel knows it (`xen-netfront` is `xen_netfront`).
fn module_stem(m: &str) -> String {
    m.rsplit('/').next().unwrap_or(m).replace('-', "_")
}

/// The modules a `.ko` needs loaded first: its `.modinfo` string `depends=a,b` (what
/// depmod turns into `modules.dep`; Debian's package ships none), `-` read as `_`.
fn module_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &ko[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

fn module_file_name(m: &str) -> String {
    format!("{}.ko", m.rsplit('/').next().unwrap_or(m))
}

/// `target/linux/kernel/` with `vmlinuz`, `version` and `modules/*.ko`, from the package
/// `linux-image-amd64` depends on (fetched once; a cached kernel is used as it is).
fn kernel(cache: &Path) -> anyhow::Result<PathBuf> {
    let dir = cache.join("kernel");
    // A cache from before a module was added to the lists is fetched again.
    let complete = all_modules().all(|m| dir.join("modules").join(module_file_name(m)).is_file());
    if dir.join("version").is_file() && complete {
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
        let tree = root.join("lib/modules").join(&version).join("kernel");
        for m in all_modules() {
            let from = tree.join(format!("{m}.ko"));
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
        assert_eq!(module_file_name("drivers/xen/xenfs/xenfs"), "xenfs.ko");
        assert_eq!(
            module_file_name("drivers/xen/xen-privcmd"),
            "xen-privcmd.ko"
        );
        assert_eq!(module_stem("drivers/net/xen-netfront"), "xen_netfront");
    }

    #[test]
    fn depends_come_from_modinfo() {
        let ko = b"\x7fELF...\0license=GPL\0depends=jbd2,mbcache,crc16\0retpoline=Y\0";
        assert_eq!(module_depends(ko), ["jbd2", "mbcache", "crc16"]);
        assert!(module_depends(b"\0depends=\0name=xen_netfront\0").is_empty());
        assert!(module_depends(b"nothing here").is_empty());
    }

    #[test]
    fn the_crc32c_softdep_is_met_before_jbd2_and_ext4() {
        let m = domu_modules();
        let at = |name: &str| m.iter().position(|p| p.ends_with(name)).unwrap();
        assert!(at("crc32c_generic") < at("jbd2/jbd2"));
        assert!(at("jbd2/jbd2") < at("ext4/ext4"));
    }

    #[test]
    fn init_loads_every_module_and_opens_a_shell() {
        for (init, modules) in [(INIT, dom0_modules()), (DOMU_INIT, domu_modules())] {
            for m in modules {
                let name = module_file_name(m);
                let stem = name.trim_end_matches(".ko");
                assert!(init.contains(stem), "{stem} is not loaded by /init");
            }
            assert!(init.starts_with("#!/bin/busybox sh"));
            // The network comes up in the background: the shell is not kept waiting.
            assert!(
                init.contains("/sbin/net-up >/run/net-up.log 2>&1 &"),
                "{init}"
            );
        }
        assert!(INIT.contains("mount -t xenfs"));
        assert!(NET_UP.contains("/sys/class/net/"));
        assert!(UDHCPC_SCRIPT.contains("resolv.conf"));
    }
}
