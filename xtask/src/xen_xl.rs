//! Real Xen 4.17 with its own toolstack, the reference for the device, checkpoint and
//! migration benches: Xen boots Debian's kernel as dom0 with the busybox initramfs of
//! [`crate::linux`] plus Xen's dom0 userland from Debian's packages (`xl`, `xenstored`,
//! `xenconsoled`, `xen-init-dom0`, `xenstore-*` and the libraries they link, glibc
//! included), netback, blkback and the bridge; `xl create` then makes domUs from xl.cfg
//! files written in dom0, and `xl console` reaches their shells.
//!
//! - [`XenHost::boot`]: QEMU (TCG, `-cpu max,-smap,-smep`) with Xen and that dom0, until
//!   dom0's toolstack is up (`/sbin/xl-up`: the daemons, `xenbr0` over the first NIC,
//!   dom0's address on the bridge).
//! - [`XenHost::create`]: a domU from a [`DomainConfig`] (`xl create`).
//! - [`XenHost::console`] / [`XenHost::leave_console`]: the serial shell moves to a domU's
//!   console and back; [`XenHost::shell`] runs commands wherever it is.
//!
//! The packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x` into
//! `target/xen/xl-root/` (once); nothing of them is in the repository, and nothing is
//! installed on the host. libxl's hotplug scripts are the project's own small busybox
//! scripts (`src/dom0/xen/`): Debian's need bash and more tools than the initramfs has.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context};

use crate::{
    build, debian,
    initramfs::Entry,
    iso::{self, BootEntry, BootModule},
    linux,
    qemu::{self, QemuConfig, VirtioDisk, VirtioNic},
    shell::{Shell, Typing},
    xen,
};

/// The packages of Xen's dom0 userland, and the libraries they link that the initramfs
/// lacks (Debian 12's glibc, libgcc_s (glibc's pthread_cancel loads it), libuuid, zlib,
/// liblzma, libzstd).
pub const PACKAGES: [&str; 19] = [
    "xen-utils-4.17",
    "xenstore-utils",
    "libxenmisc4.17",
    "libxenstore4",
    "libxentoolcore1",
    "libxencall1",
    "libxenevtchn1",
    "libxenforeignmemory1",
    "libxendevicemodel1",
    "libxengnttab1",
    "libxentoollog1",
    "libxenhypfs1",
    "libyajl2",
    "libc6",
    "libgcc-s1",
    "libuuid1",
    "zlib1g",
    "liblzma5",
    "libzstd1",
];

/// Where xl looks for its helpers (its compiled-in `LIBEXEC_BIN`).
const XEN_BIN: &str = "usr/lib/xen-4.17/bin";
/// The programs taken from there.
const XEN_PROGRAMS: [&str; 6] = [
    "xl",
    "xenstored",
    "xenconsoled",
    "xenconsole",
    "xen-init-dom0",
    "libxl-save-helper",
];
/// The library directories taken whole (shared objects only).
const LIB_DIRS: [&str; 2] = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"];

const XL_UP: &str = include_str!("dom0/xen/xl-up.sh");
const VIF_BRIDGE: &str = include_str!("dom0/xen/vif-bridge");
const BLOCK: &str = include_str!("dom0/xen/block");

/// dom0's address on `xenbr0`: the one QEMU's DHCP server gives a guest, as dom0 has
/// on Ferrovisor.
pub const DOM0_IP: &str = "10.0.2.15";
/// The gateway of QEMU's user network.
pub const GATEWAY: &str = "10.0.2.2";

/// Xen's command line: dom0 with 512 MiB, one vCPU and one physical CPU. Not the 256
/// MiB Ferrovisor's dom0 has: Xen unpacks the gzipped initrd in dom0's memory before
/// Linux unpacks it again, and xl then builds a domU's kernel and ramdisk in dom0's
/// memory too; with 256 MiB, `xl create` was killed for want of memory. Under TCG,
/// processes in Xen's domUs segfault now and then (NULL heap and TLS pointers, init among
/// them, which panics the domU), dom0 alone never did: `pcid=0` was tried against it
/// (stale TLB entries) and did not cure it; callers must expect a domU process to die.
pub const CMDLINE: &str = "dom0_mem=512M,max:512M dom0_max_vcpus=1 maxcpus=1 pcid=0 console=com1 \
                           com1=115200,8n1 loglvl=all guest_loglvl=all noreboot=false";
/// dom0's kernel line: `ip=off`, since dom0's network is the bridge `xl-up` makes.
pub const DOM0_CMDLINE: &str = "console=hvc0 nousb ip=off";

const BANNER: &str = r"Enter 'help' for a list of built-in commands";
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const SHORT: Duration = Duration::from_secs(60);

/// What a [`XenHost`] boots with.
#[derive(Clone, Debug, Default)]
pub struct HostConfig {
    /// The serial log's name under `target/qemu-logs/`.
    pub log_name: String,
    /// virtio-blk disks (dom0's `/dev/vda`…).
    pub disks: Vec<VirtioDisk>,
    /// dom0's address on `xenbr0` (`/24`), if any.
    pub dom0_ip: Option<String>,
    /// What else goes into dom0's and the domU example's initramfs; its `name` is the
    /// initramfs' file name (the xl userland is added to `dom0_files`).
    pub extras: linux::Extras,
}

/// A Linux domU for `xl create`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    pub name: String,
    pub kernel: String,
    pub ramdisk: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub extra: String,
    /// xl vif specs (`bridge=xenbr0,mac=…`).
    pub vifs: Vec<String>,
    /// xl disk specs (`phy:/dev/vda1,xvda,w`).
    pub disks: Vec<String>,
}

impl DomainConfig {
    /// Debian's kernel with the domU initramfs of [`crate::linux`] (the files Ferrovisor's
    /// `linux-domu.cfg` example boots), 128 MiB, one vCPU, no devices.
    pub fn linux_domu(name: &str) -> Self {
        DomainConfig {
            name: name.to_owned(),
            kernel: "/usr/lib/fv/vmlinuz".to_owned(),
            ramdisk: "/usr/lib/fv/domu-initrd.img".to_owned(),
            memory_mib: 128,
            vcpus: 1,
            extra: "console=hvc0".to_owned(),
            vifs: Vec::new(),
            disks: Vec::new(),
        }
    }

    /// A vif on `xenbr0` and the static address `ip/24` (gateway [`GATEWAY`]) on the
    /// kernel line, in the `ip=` form the initramfs' `net-up` reads.
    pub fn with_ip(mut self, ip: &str) -> Self {
        self.vifs.push("bridge=xenbr0".to_owned());
        self.extra
            .push_str(&format!(" ip={ip}::{GATEWAY}:255.255.255.0::eth0:off"));
        self
    }

    pub fn with_disk(mut self, spec: &str) -> Self {
        self.disks.push(spec.to_owned());
        self
    }

    /// The xl.cfg text. Strings are double-quoted (xl accepts both quotes), so the text
    /// can be typed inside single quotes.
    pub fn to_xl_cfg(&self) -> String {
        let list = |items: &[String]| {
            items
                .iter()
                .map(|i| format!("\"{i}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut s = format!(
            "name = \"{}\"\nkernel = \"{}\"\nramdisk = \"{}\"\nmemory = {}\nvcpus = {}\n\
             extra = \"{}\"\non_poweroff = \"destroy\"\n",
            self.name, self.kernel, self.ramdisk, self.memory_mib, self.vcpus, self.extra
        );
        if !self.vifs.is_empty() {
            s.push_str(&format!("vif = [ {} ]\n", list(&self.vifs)));
        }
        if !self.disks.is_empty() {
            s.push_str(&format!("disk = [ {} ]\n", list(&self.disks)));
        }
        s
    }
}

/// Where the serial shell is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Console {
    Dom0,
    DomU(String),
}

/// A running Xen machine with xl in dom0.
pub struct XenHost {
    pub shell: Shell,
    pub at: Console,
}

impl XenHost {
    /// Boots Xen and dom0 and brings the toolstack up.
    pub fn boot(cfg: &HostConfig) -> anyhow::Result<Self> {
        let xen_gz = xen::image()?;
        let mut extras = cfg.extras.clone();
        if extras.name.is_empty() {
            extras.name = "xen-xl-initrd.img".to_owned();
        }
        extras.dom0_files.extend(userland()?);
        for m in linux::DEVICE_MODULES {
            if !extras.dom0_modules.contains(&m) {
                extras.dom0_modules.push(m);
            }
        }
        let linux = linux::dom0_with(&extras)?;
        let mut entry = BootEntry::xen(xen_gz);
        entry.hypervisor_cmdline = CMDLINE.to_owned();
        entry.modules = vec![
            BootModule {
                source: linux.vmlinuz.clone(),
                iso_name: format!("vmlinuz-{}", linux.version),
                cmdline: DOM0_CMDLINE.to_owned(),
            },
            BootModule {
                source: linux.initrd.clone(),
                iso_name: format!("initrd.img-{}", linux.version),
                cmdline: String::new(),
            },
        ];
        let iso = iso::make_iso(
            &entry,
            &build::output_dir().join(format!("{}.iso", cfg.log_name)),
        )?;
        let mut q = QemuConfig::new(iso);
        q.extra_args = xen::QEMU_ARGS.iter().map(|&a| a.to_owned()).collect();
        // The bridge's uplink, as the switch's on Ferrovisor.
        q.nics = vec![VirtioNic {
            mac: "52:54:00:12:34:56".into(),
        }];
        q.disks = cfg.disks.clone();
        q.log_name = Some(cfg.log_name.clone());
        let mut shell = Shell::new(qemu::spawn(&q)?, Typing::Slowly);
        shell.expect(BANNER, BOOT_TIMEOUT)?;
        let addr = cfg
            .dom0_ip
            .as_ref()
            .map(|ip| format!(" {ip}/24"))
            .unwrap_or_default();
        let out = shell
            .run(&format!("/sbin/xl-up{addr}"), Duration::from_secs(180))
            .context("bringing Xen's dom0 toolstack up")?;
        if !out.contains("xl-up: ready") {
            bail!("xl-up: {out}");
        }
        // Typed as a line of its own: [`Shell::run`]'s command substitution is a subshell.
        shell.send(
            "export PATH=$PATH:/usr/bin:/usr/lib/xen-4.17/bin \
             LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu\r",
        )?;
        shell.run("command -v xl", SHORT)?;
        Ok(XenHost {
            shell,
            at: Console::Dom0,
        })
    }

    /// Writes `/var/lib/xen/NAME.cfg` and runs `xl create` on it (from dom0's shell).
    pub fn create(&mut self, dom: &DomainConfig) -> anyhow::Result<()> {
        self.leave_console()?;
        let text = dom.to_xl_cfg();
        if text.contains('\'') {
            bail!("an xl.cfg with a single quote cannot be typed: {text}");
        }
        let lines: Vec<String> = text.lines().map(|l| format!("'{l}'")).collect();
        let path = format!("/var/lib/xen/{}.cfg", dom.name);
        self.shell.run(
            &format!("printf '%s\\n' {} > {path}", lines.join(" ")),
            SHORT,
        )?;
        // xl stays behind as the domain's watcher: it must not hold the output open.
        let log = format!("/var/log/xen/create-{}.log", dom.name);
        self.shell
            .run(
                &format!("xl create {path} </dev/null >{log} 2>&1; s=$?; cat {log}; exit $s"),
                Duration::from_secs(300),
            )
            .with_context(|| format!("xl create {path}"))?;
        Ok(())
    }

    /// Moves the serial shell to `name`'s console (`xl console`) and waits until its
    /// shell answers (it may still be booting).
    pub fn console(&mut self, name: &str) -> anyhow::Result<()> {
        self.leave_console()?;
        self.shell.send(&format!("xl console {name}\r"))?;
        std::thread::sleep(Duration::from_secs(2));
        self.at = Console::DomU(name.to_owned());
        let mut last = None;
        for _ in 0..12 {
            self.shell.send("\r")?;
            // dom0's shell answers too when xl console ended at once (the domain died):
            // a domU has no `control_d` capability.
            match self.shell.try_run(
                "! grep -qs control_d /proc/xen/capabilities",
                Duration::from_secs(20),
            ) {
                Ok((0, _)) => return Ok(()),
                Ok((_, _)) => {
                    self.at = Console::Dom0;
                    let list = self.shell.try_run("xl list", SHORT).map(|r| r.1);
                    bail!(
                        "`xl console {name}` ended at once: the domain is gone? xl list: {}",
                        list.unwrap_or_default()
                    );
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| anyhow::anyhow!("no shell"))
            .context(format!("{name}'s console does not answer")))
    }

    /// Back to dom0's shell (Ctrl-], xenconsole's escape), if on a domU's console.
    pub fn leave_console(&mut self) -> anyhow::Result<()> {
        if self.at == Console::Dom0 {
            return Ok(());
        }
        self.shell.send("\x1d")?;
        std::thread::sleep(Duration::from_secs(1));
        self.at = Console::Dom0;
        self.shell.run("true", SHORT).map(drop)
    }

    /// `xl destroy NAME` (from dom0's shell).
    pub fn destroy(&mut self, name: &str) -> anyhow::Result<()> {
        self.leave_console()?;
        self.shell
            .run(&format!("xl destroy {name}"), SHORT)
            .map(drop)
    }
}

/// The cache of the unpacked packages, `target/xen/xl-root/`.
pub fn root_dir() -> PathBuf {
    xen::cache_dir().join("xl-root")
}

/// The packages unpacked into [`root_dir`], fetched once (the tree is renamed into place
/// whole, with the package list as its stamp).
fn unpacked() -> anyhow::Result<PathBuf> {
    let root = root_dir();
    let stamp = PACKAGES.join("\n");
    if fs::read_to_string(root.join(".packages")).is_ok_and(|s| s == stamp) {
        return Ok(root);
    }
    let cache = xen::cache_dir();
    fs::create_dir_all(&cache)?;
    let staging = cache.join(format!("xl-root-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    for p in PACKAGES {
        debian::with_package(p, &cache, |tree| {
            let mut cp = Command::new("cp");
            cp.arg("-a")
                .arg(format!("{}/.", tree.display()))
                .arg(&staging);
            crate::run(&mut cp)
        })?;
    }
    fs::write(staging.join(".packages"), &stamp)?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&staging, &root).with_context(|| format!("cannot write {}", root.display()))?;
    eprintln!("xen_xl: dom0 userland in {}", root.display());
    Ok(root)
}

/// dom0's xl userland as initramfs entries: the programs, the shared objects, the
/// loader at `/lib64`, `xenstore-*`, the hotplug scripts and `/sbin/xl-up`.
pub fn userland() -> anyhow::Result<Vec<Entry>> {
    let root = unpacked()?;
    let mut e = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    let mut dir = |e: &mut Vec<Entry>, path: &str| {
        let mut at = String::new();
        for part in path.split('/') {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            if !dirs.contains(&at) {
                dirs.push(at.clone());
                e.push(Entry::Dir {
                    path: at.clone(),
                    mode: 0o755,
                });
            }
        }
    };
    let file = |from: &Path, to: &str, mode: u32| -> anyhow::Result<Entry> {
        Ok(Entry::File {
            path: to.to_owned(),
            mode,
            data: fs::read(from).with_context(|| format!("cannot read {}", from.display()))?,
        })
    };
    dir(&mut e, XEN_BIN);
    for p in XEN_PROGRAMS {
        e.push(file(
            &root.join(XEN_BIN).join(p),
            &format!("{XEN_BIN}/{p}"),
            0o755,
        )?);
    }
    for d in LIB_DIRS {
        dir(&mut e, d);
        let mut names: Vec<PathBuf> = fs::read_dir(root.join(d))
            .with_context(|| format!("no {d} in the unpacked packages"))?
            .filter_map(Result::ok)
            .map(|x| x.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(".so"))
            })
            .collect();
        names.sort();
        for p in names {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let to = format!("{d}/{name}");
            match fs::read_link(&p) {
                Ok(target) => e.push(Entry::Symlink {
                    path: to,
                    target: target.display().to_string(),
                }),
                Err(_) if p.is_file() => e.push(file(&p, &to, 0o755)?),
                Err(_) => {}
            }
        }
    }
    dir(&mut e, "lib64");
    e.push(Entry::Symlink {
        path: "lib64/ld-linux-x86-64.so.2".into(),
        target: "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into(),
    });
    // xenstore-utils: one program that acts by the name it is called by.
    dir(&mut e, "usr/bin");
    e.push(file(
        &root.join("usr/bin/xenstore"),
        "usr/bin/xenstore",
        0o755,
    )?);
    for t in [
        "read", "write", "exists", "list", "ls", "rm", "chmod", "watch",
    ] {
        e.push(Entry::Symlink {
            path: format!("usr/bin/xenstore-{t}"),
            target: "xenstore".into(),
        });
    }
    dir(&mut e, "etc/xen/scripts");
    e.push(Entry::File {
        path: "etc/xen/xl.conf".into(),
        mode: 0o644,
        data: b"# xl's defaults are used (xtask::xen_xl).\n".to_vec(),
    });
    for (name, text) in [("vif-bridge", VIF_BRIDGE), ("block", BLOCK)] {
        e.push(Entry::File {
            path: format!("etc/xen/scripts/{name}"),
            mode: 0o755,
            data: text.as_bytes().to_vec(),
        });
    }
    e.push(Entry::File {
        path: "sbin/xl-up".into(),
        mode: 0o755,
        data: XL_UP.as_bytes().to_vec(),
    });
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xl_cfg_has_devices_and_no_single_quote() {
        let d = DomainConfig::linux_domu("na")
            .with_ip("10.0.2.21")
            .with_disk("phy:/dev/vda1,xvda,w");
        let t = d.to_xl_cfg();
        assert!(t.contains("name = \"na\"\n"), "{t}");
        assert!(t.contains("vif = [ \"bridge=xenbr0\" ]\n"), "{t}");
        assert!(t.contains("disk = [ \"phy:/dev/vda1,xvda,w\" ]\n"), "{t}");
        assert!(
            t.contains("extra = \"console=hvc0 ip=10.0.2.21::10.0.2.2:255.255.255.0::eth0:off\""),
            "{t}"
        );
        assert!(!t.contains('\''));
        let bare = DomainConfig::linux_domu("x").to_xl_cfg();
        assert!(
            !bare.contains("vif =") && !bare.contains("\ndisk ="),
            "{bare}"
        );
    }

    #[test]
    fn scripts_are_busybox_shell() {
        for s in [XL_UP, VIF_BRIDGE, BLOCK] {
            assert!(s.starts_with("#!/bin/sh\n"));
        }
        assert!(XL_UP.contains("xenstored") && XL_UP.contains("xenconsoled"));
        assert!(BLOCK.contains("physical-device"));
        assert!(VIF_BRIDGE.contains("hotplug-status"));
    }
}
