//! The device figures of `cargo xtask bench`: TCP throughput and ping round trips
//! domU↔domU and domU↔dom0, and sequential read/write MB/s and 4 KiB random-read IOPS on
//! a vbd (`phy:` of a virtio disk's first partition), on Ferrovisor (its own vif and vbd
//! backends), on Xen 4.17 with its own toolstack (xl, netback and blkback in dom0: see
//! [`crate::xen_xl`]) and natively (Linux on the same QEMU virtio devices), under the same
//! TCG, in one run.
//!
//! Every figure is taken inside a guest by `fvbench` (`tests/guest-bench`, static musl,
//! in every initramfs: the same code and the guest's own clock everywhere) or by
//! busybox's `ping`. The native column's closest fair equivalent of two domains on one
//! machine: one Linux with two virtio-net NICs joined by a QEMU hub (`-netdev hubport`),
//! the second NIC in its own network namespace, so that the packets cross both virtio
//! devices instead of the loopback; natively there is no dom0, so both network rows are
//! that same path, measured for each row. The native disk is the partition itself
//! (`/dev/vda1`). One CPU everywhere (`-smp 1` natively, `maxcpus=1` on both
//! hypervisors), as in the Linux figures.

use std::time::Duration;

use anyhow::{bail, Context};
use regex::Regex;

use crate::{
    build::{self, Artifacts},
    disk_image::{self, DiskImage},
    initramfs::Entry,
    iso::{self, BootEntry, BootModule},
    linux::{self, Dom0Linux},
    qemu::{self, QemuConfig, VirtioDisk, VirtioNic},
    shell::{Shell, Typing},
    xen_xl,
};

/// The line busybox's shell prints right before its first prompt.
pub const BANNER: &str = r"Enter 'help' for a list of built-in commands";
/// The port of the `fvbench sink` every guest (and each dom0) runs.
pub const SINK_PORT: u16 = 5001;
/// What each TCP figure sends.
const TCP_MIB: u32 = 16;
/// Pings of each round-trip figure (`-A`: the next as soon as a reply is in).
const PINGS: u32 = 20;
/// The disk: 128 MiB, partition 1 (what the vbd is) a quarter of it, all of which the
/// sequential figures write and then read.
const DISK_MIB: u64 = 128;
const SEQ_MIB: u32 = 32;
/// How long the random reads go on.
const RANDREAD_SECS: u32 = 10;
/// A measuring command's limit (a figure at 0.2 MB/s would still come in).
const MEASURE_TIMEOUT: Duration = Duration::from_secs(240);
const SHORT: Duration = Duration::from_secs(60);

/// The domUs' addresses on the hypervisors (QEMU's user network, as `cargo xtask run`).
pub const NA_IP: &str = "10.0.2.21";
pub const NB_IP: &str = "10.0.2.22";
pub const GATEWAY: &str = "10.0.2.2";
/// The native column's two ends.
const NATIVE_IP: &str = "10.0.3.1";
const NATIVE_PEER_IP: &str = "10.0.3.2";

/// The device figures, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figure {
    TcpDomuDomu,
    TcpDomuDom0,
    PingDomuDomu,
    PingDomuDom0,
    SeqRead,
    SeqWrite,
    RandRead,
}

impl Figure {
    pub const ALL: [Figure; 7] = [
        Figure::TcpDomuDomu,
        Figure::TcpDomuDom0,
        Figure::PingDomuDomu,
        Figure::PingDomuDom0,
        Figure::SeqRead,
        Figure::SeqWrite,
        Figure::RandRead,
    ];

    pub fn label(self) -> String {
        match self {
            Figure::TcpDomuDomu => format!("TCP domU -> domU, {TCP_MIB} MiB (MB/s)"),
            Figure::TcpDomuDom0 => format!("TCP domU -> dom0, {TCP_MIB} MiB (MB/s)"),
            Figure::PingDomuDomu => format!("ping domU <-> domU, avg of {PINGS} (ms)"),
            Figure::PingDomuDom0 => format!("ping domU <-> dom0, avg of {PINGS} (ms)"),
            Figure::SeqRead => format!("vbd sequential read, {SEQ_MIB} MiB, 1 MiB O_DIRECT (MB/s)"),
            Figure::SeqWrite => {
                format!("vbd sequential write, {SEQ_MIB} MiB, 1 MiB O_DIRECT (MB/s)")
            }
            Figure::RandRead => format!("vbd 4 KiB random read, QD1, {RANDREAD_SECS} s (IOPS)"),
        }
    }
}

/// Where the guests run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    Native,
    Ferrovisor,
    Xen,
}

impl Platform {
    pub fn column(self) -> &'static str {
        match self {
            Platform::Native => "native",
            Platform::Ferrovisor => "Ferrovisor",
            Platform::Xen => "Xen 4.17 + xl",
        }
    }
}

/// One platform's figures: a value, or why there is none.
#[derive(Clone, Debug, Default)]
pub struct DeviceFigures {
    pub values: Vec<(Figure, Result<f64, String>)>,
}

impl DeviceFigures {
    /// Every figure n/a for the same reason (the platform did not come up).
    pub fn unavailable(why: &str) -> Self {
        DeviceFigures {
            values: Figure::ALL
                .iter()
                .map(|f| (*f, Err(why.to_owned())))
                .collect(),
        }
    }

    pub fn get(&self, f: Figure) -> Option<&Result<f64, String>> {
        self.values.iter().find(|(g, _)| *g == f).map(|(_, v)| v)
    }

    fn set(&mut self, f: Figure, v: anyhow::Result<f64>) {
        let v = v.map_err(|e| {
            // The first line: the rest is the serial log.
            format!("{e:#}").lines().next().unwrap_or("").to_owned()
        });
        self.values.retain(|(g, _)| *g != f);
        self.values.push((f, v));
    }
}

/// The files the bench adds to every initramfs: `fvbench` in dom0 and in the domU, and
/// the domU's `/etc/rc.local`, which starts its sink.
fn bench_extras(name: &str) -> anyhow::Result<linux::Extras> {
    let fvbench = build::guest_bench()?;
    let data =
        std::fs::read(&fvbench).with_context(|| format!("cannot read {}", fvbench.display()))?;
    let bin = Entry::File {
        path: "bin/fvbench".into(),
        mode: 0o755,
        data,
    };
    Ok(linux::Extras {
        name: name.to_owned(),
        dom0_files: vec![bin.clone()],
        domu_files: vec![
            bin,
            Entry::File {
                path: "etc/rc.local".into(),
                mode: 0o755,
                data: format!("#!/bin/sh\nexec /bin/fvbench sink {SINK_PORT}\n").into_bytes(),
            },
        ],
        dom0_modules: linux::DEVICE_MODULES.to_vec(),
        strip_fv: true,
    })
}

/// A fresh disk for the vbd figures (its first partition is the vbd).
fn disk() -> anyhow::Result<DiskImage> {
    let files = disk_image::cache_path("bench-devices-files");
    let _ = std::fs::remove_dir_all(&files);
    std::fs::create_dir_all(&files)?;
    let path = disk_image::cache_path("bench-devices.img");
    let _ = std::fs::remove_file(&path);
    disk_image::partitioned(&path, DISK_MIB, &files)
}

/// Measures the device figures on every platform in `platforms`; a platform that cannot
/// be measured has its reason in every cell.
pub fn measure_all(
    platforms: &[Platform],
    artifacts: &Artifacts,
) -> anyhow::Result<Vec<(Platform, DeviceFigures)>> {
    let linux = linux::dom0_with(&bench_extras("bench-devices-initrd.img")?)?;
    let mut cols = Vec::new();
    for &p in platforms {
        eprintln!("bench: devices, {}", p.column());
        let image = disk()?;
        let f = match p {
            Platform::Native => native(&linux, artifacts, &image),
            Platform::Ferrovisor => ferrovisor(&linux, artifacts, &image),
            Platform::Xen => xen(&image),
        };
        let f = f.unwrap_or_else(|e| {
            eprintln!("bench: devices on {} gave no figures: {e:#}", p.column());
            let first = format!("{e:#}");
            DeviceFigures::unavailable(first.lines().next().unwrap_or("failed"))
        });
        cols.push((p, f));
    }
    Ok(cols)
}

fn virtio_disk(image: &DiskImage) -> VirtioDisk {
    VirtioDisk {
        image: image.path.clone(),
        read_only: false,
    }
}

/// Linux on the QEMU machine itself: the virtio drivers loaded by hand, the peer NIC in a
/// network namespace of its own.
fn native(
    linux: &Dom0Linux,
    artifacts: &Artifacts,
    image: &DiskImage,
) -> anyhow::Result<DeviceFigures> {
    // QEMU wants an ISO; `-kernel` boots before it.
    let iso = iso::make_iso(
        &BootEntry::new(artifacts),
        &build::output_dir().join("bench-devices-native.iso"),
    )?;
    let mut cfg = QemuConfig::new(iso);
    cfg.memory_mib = 256;
    cfg.smp = 1;
    cfg.disks = vec![virtio_disk(image)];
    cfg.extra_args = vec![
        "-kernel".into(),
        linux.vmlinuz.display().to_string(),
        "-initrd".into(),
        linux.initrd.display().to_string(),
        "-append".into(),
        // `ip=off`: net-up leaves eth0 alone (it is configured below); `no_timer_check`:
        // see bench_linux.
        "console=ttyS0 nousb no_timer_check ip=off".into(),
    ];
    for (i, mac) in ["52:54:00:12:34:01", "52:54:00:12:34:02"]
        .iter()
        .enumerate()
    {
        cfg.extra_args.extend([
            "-netdev".into(),
            format!("hubport,id=h{i},hubid=0"),
            "-device".into(),
            format!("virtio-net-pci,netdev=h{i},mac={mac}"),
        ]);
    }
    cfg.log_name = Some("bench-devices-native".into());
    let mut sh = Shell::new(qemu::spawn(&cfg)?, Typing::AtOnce);
    sh.expect(BANNER, Duration::from_secs(600))?;
    sh.run(
        "for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
         failover net_failover virtio_net virtio_blk; do insmod /lib/modules/$m.ko || exit 1; done",
        SHORT,
    )?;
    sh.wait_for(
        "[ -e /sys/class/net/eth1 ] && [ -b /dev/vda1 ]",
        60,
        "virtio NICs and disk",
    )?;
    sh.run(
        "unshare -n sleep 1000000 </dev/null >/dev/null 2>&1 & echo $! > /run/peer.pid",
        SHORT,
    )?;
    sh.wait_for("[ -s /run/peer.pid ]", 10, "the peer namespace")?;
    sh.run(
        &format!(
            "P=$(cat /run/peer.pid); sleep 1; ip link set eth1 netns $P && \
             nsenter -t $P -n sh -c 'ip link set lo up && ip addr add {NATIVE_PEER_IP}/24 dev eth1 \
             && ip link set eth1 up' && ip link set lo up && ip addr add {NATIVE_IP}/24 dev eth0 \
             && ip link set eth0 up"
        ),
        SHORT,
    )?;
    sh.spawn(&format!(
        "nsenter -t $(cat /run/peer.pid) -n fvbench sink {SINK_PORT}"
    ))?;
    sh.wait_for(
        &format!("ping -c 1 -W 2 {NATIVE_PEER_IP} >/dev/null"),
        60,
        "the peer NIC answers",
    )?;
    let mut f = DeviceFigures::default();
    network(&mut sh, &mut f, NATIVE_PEER_IP, NATIVE_PEER_IP);
    storage(&mut sh, &mut f, "/dev/vda1");
    Ok(f)
}

/// Ferrovisor as `cargo xtask run` sets it up: dom0 by DHCP on its vif, domU `nb` (a
/// sink), then domU `na` with the partition as its `xvda`, whose console takes the
/// figures.
fn ferrovisor(
    linux: &Dom0Linux,
    artifacts: &Artifacts,
    image: &DiskImage,
) -> anyhow::Result<DeviceFigures> {
    let mut entry = BootEntry::new(artifacts);
    entry.hypervisor_cmdline = "dom0_mem=262144 maxcpus=1 console=com1 loglvl=info".to_owned();
    entry.modules = vec![
        BootModule {
            source: linux.vmlinuz.clone(),
            iso_name: format!("vmlinuz-{}", linux.version),
            cmdline: "console=hvc0 nousb".to_owned(),
        },
        BootModule {
            source: linux.initrd.clone(),
            iso_name: format!("initrd.img-{}", linux.version),
            cmdline: String::new(),
        },
    ];
    let iso = iso::make_iso(
        &entry,
        &build::output_dir().join("bench-devices-ferrovisor.iso"),
    )?;
    let mut cfg = QemuConfig::new(iso);
    cfg.nics = vec![VirtioNic {
        mac: "52:54:00:12:34:56".into(),
    }];
    cfg.disks = vec![virtio_disk(image)];
    cfg.log_name = Some("bench-devices-ferrovisor".into());
    let mut sh = Shell::new(qemu::spawn(&cfg)?, Typing::AtOnce);
    sh.expect(BANNER, Duration::from_secs(600))?;
    sh.wait_for(
        "ip -4 addr show eth0 | grep -q inet",
        120,
        "dom0's eth0 gets a DHCP lease",
    )?;
    let dom0_ip = sh.run(
        "ip -4 addr show eth0 | awk '/inet / {sub(\"/.*\", \"\", $2); print $2}'",
        SHORT,
    )?;
    sh.spawn(&format!("fvbench sink {SINK_PORT}"))?;
    let create = |name: &str, ip: &str, extra: &str| {
        format!(
            "fv create /etc/fv/examples/linux-domu.cfg 'name=\"{name}\"' \
             \"vif=['bridge=xenbr0']\" 'ip=\"{ip}\"' 'netmask=\"255.255.255.0\"' \
             'gateway=\"{GATEWAY}\"' {extra}"
        )
    };
    sh.run(&create("nb", NB_IP, ""), Duration::from_secs(120))?;
    sh.send(&format!(
        "{} -c\r",
        create("na", NA_IP, "\"disk=['phy:vda1,xvda,w']\"")
    ))?;
    sh.expect(r"^domU: Linux \S+ ready", Duration::from_secs(300))?;
    std::thread::sleep(Duration::from_secs(1));
    sh.send("\r")?;
    sh.run("true", SHORT)?;
    domu_ready(&mut sh, NA_IP)?;
    let mut f = DeviceFigures::default();
    network(&mut sh, &mut f, NB_IP, &dom0_ip);
    storage(&mut sh, &mut f, "/dev/xvda");
    Ok(f)
}

/// Xen 4.17 with xl: the same two domUs, made by `xl create`.
fn xen(image: &DiskImage) -> anyhow::Result<DeviceFigures> {
    let mut host = xen_xl::XenHost::boot(&xen_xl::HostConfig {
        log_name: "bench-devices-xen".into(),
        disks: vec![virtio_disk(image)],
        dom0_ip: Some(xen_xl::DOM0_IP.into()),
        extras: bench_extras("bench-devices-xen-initrd.img")?,
    })?;
    host.shell.spawn(&format!("fvbench sink {SINK_PORT}"))?;
    host.create(&xen_xl::DomainConfig::linux_domu("nb").with_ip(NB_IP))?;
    host.create(
        &xen_xl::DomainConfig::linux_domu("na")
            .with_ip(NA_IP)
            .with_disk("phy:/dev/vda1,xvda,w"),
    )?;
    // Each domU's network and sink checked from its console: busybox was seen to crash
    // early in a domU's boot on Xen under TCG (a segfault reading its TLS), and `net-up`
    // with it.
    for (name, ip) in [("nb", NB_IP), ("na", NA_IP)] {
        host.console(name)?;
        domu_address(&mut host.shell, ip)?;
        host.shell.spawn(&format!(
            "pidof fvbench >/dev/null || exec fvbench sink {SINK_PORT}"
        ))?;
    }
    domu_ready(&mut host.shell, NA_IP)?;
    let mut f = DeviceFigures::default();
    network(&mut host.shell, &mut f, NB_IP, xen_xl::DOM0_IP);
    storage(&mut host.shell, &mut f, "/dev/xvda");
    Ok(f)
}

/// The domU whose console `sh` is on has its address `ip`, after running `net-up` once
/// more if it does not come.
fn domu_address(sh: &mut Shell, ip: &str) -> anyhow::Result<()> {
    let cond = format!("ip -4 addr show eth0 | grep -q 'inet {ip}/24'");
    if sh.wait_for(&cond, 60, "the domU's eth0 up").is_ok() {
        return Ok(());
    }
    sh.run("/sbin/net-up", SHORT)?;
    sh.wait_for(&cond, 30, "the domU's eth0 up (net-up run again)")
}

/// The domU whose console `sh` is on has its address, and the other domU's sink answers.
fn domu_ready(sh: &mut Shell, ip: &str) -> anyhow::Result<()> {
    domu_address(sh, ip)?;
    sh.wait_for(
        &format!("ping -c 1 -W 2 {NB_IP} >/dev/null"),
        180,
        "the other domU answers",
    )
}

/// The network figures from the shell `sh` is on, to `peer` (the other domU's address)
/// and `dom0`.
fn network(sh: &mut Shell, f: &mut DeviceFigures, peer: &str, dom0: &str) {
    for (tcp, ping, to) in [
        (Figure::TcpDomuDomu, Figure::PingDomuDomu, peer),
        (Figure::TcpDomuDom0, Figure::PingDomuDom0, dom0),
    ] {
        f.set(
            tcp,
            fvbench(
                sh,
                &format!("fvbench send {to} {SINK_PORT} {TCP_MIB}"),
                r"tcp ([0-9.]+) MB/s",
            ),
        );
        f.set(ping, ping_avg(sh, to));
    }
}

/// The disk figures on `dev`: written first, so that the reads read data.
fn storage(sh: &mut Shell, f: &mut DeviceFigures, dev: &str) {
    f.set(
        Figure::SeqWrite,
        fvbench(
            sh,
            &format!("fvbench write {dev} {SEQ_MIB}"),
            r"seqwrite ([0-9.]+) MB/s",
        ),
    );
    f.set(
        Figure::SeqRead,
        fvbench(
            sh,
            &format!("fvbench read {dev} {SEQ_MIB}"),
            r"seqread ([0-9.]+) MB/s",
        ),
    );
    f.set(
        Figure::RandRead,
        fvbench(
            sh,
            &format!("fvbench randread {dev} {RANDREAD_SECS}"),
            r"randread ([0-9.]+) IOPS",
        ),
    );
}

/// Runs an `fvbench` command and reads its figure.
fn fvbench(sh: &mut Shell, cmd: &str, figure: &str) -> anyhow::Result<f64> {
    let (status, out) = sh.try_run(cmd, MEASURE_TIMEOUT)?;
    let re = Regex::new(&format!("fvbench: {figure}"))?;
    match re.captures(&out) {
        Some(c) if status == 0 => c[1].parse().context("a bad figure"),
        _ => bail!("`{cmd}`: {out}"),
    }
}

/// busybox ping's average round trip, in ms.
fn ping_avg(sh: &mut Shell, to: &str) -> anyhow::Result<f64> {
    let cmd = format!("ping -A -c {PINGS} -W 10 {to}");
    let out = sh.run(&cmd, MEASURE_TIMEOUT)?;
    let re = Regex::new(r"round-trip min/avg/max = [0-9.]+/([0-9.]+)/")?;
    match re.captures(&out) {
        Some(c) => c[1].parse().context("a bad round trip"),
        None => bail!("`{cmd}`: {out}"),
    }
}

/// The device table: one row per figure, one column per platform, each hypervisor's
/// ratio to native, then the reasons of every n/a.
pub fn table(cols: &[(Platform, DeviceFigures)]) -> String {
    let native = cols
        .iter()
        .find(|(p, _)| *p == Platform::Native)
        .map(|c| &c.1);
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["device figure".to_owned()];
    for (p, _) in cols {
        header.push(p.column().to_owned());
        if *p != Platform::Native {
            header.push("x native".to_owned());
        }
    }
    rows.push(header);
    let mut notes = Vec::new();
    for fig in Figure::ALL {
        let mut row = vec![fig.label()];
        let n = native
            .and_then(|n| n.get(fig))
            .and_then(|v| v.as_ref().ok());
        for (p, f) in cols {
            let v = f.get(fig);
            let cell = match v {
                Some(Ok(v)) => format!("{v:.2}"),
                Some(Err(why)) => {
                    notes.push(format!("{}, {}: n/a ({why})", fig.label(), p.column()));
                    "n/a".to_owned()
                }
                None => "n/a".to_owned(),
            };
            row.push(cell);
            if *p != Platform::Native {
                row.push(match (v, n) {
                    (Some(Ok(v)), Some(n)) if *n > 0.0 => format!("{:.2}", v / n),
                    _ => "-".to_owned(),
                });
            }
        }
        rows.push(row);
    }
    let mut out = crate::bench::render(&rows, &notes);
    out.push_str(
        "note: x native is the platform's value over native's: for MB/s and IOPS below 1 is \
         slower, for ping above 1 is slower.\n",
    );
    out.push_str(
        "note: native network = one Linux, two virtio-net NICs joined by a QEMU hub, the peer \
         NIC in its own network namespace (no dom0 natively: both network rows measure that \
         path); native disk = /dev/vda1 itself; hypervisors: the vbd is phy: of vda1, the domUs \
         on the hypervisor's switch (Ferrovisor) or dom0's bridge with netback (Xen); dom0 has \
         256 MiB on Ferrovisor, 512 MiB on Xen (xl builds domUs in dom0's memory: 256 MiB ran \
         out).\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_ratios_and_reasons() {
        let mut native = DeviceFigures::default();
        native.set(Figure::TcpDomuDomu, Ok(100.0));
        native.set(Figure::PingDomuDomu, Ok(0.5));
        let mut fv = DeviceFigures::default();
        fv.set(Figure::TcpDomuDomu, Ok(25.0));
        fv.set(Figure::PingDomuDomu, Ok(1.5));
        fv.set(Figure::SeqRead, Err(anyhow::anyhow!("no disk\nlog...")));
        let xen = DeviceFigures::unavailable("xl create failed");
        let t = table(&[
            (Platform::Native, native),
            (Platform::Ferrovisor, fv),
            (Platform::Xen, xen),
        ]);
        let cells = |prefix: &str| -> Vec<String> {
            t.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap()
                .split('|')
                .skip(1)
                .map(|c| c.trim().to_owned())
                .collect()
        };
        assert_eq!(
            cells("TCP domU -> domU"),
            ["100.00", "25.00", "0.25", "n/a", "-"],
            "{t}"
        );
        let ping = t
            .lines()
            .find(|l| l.starts_with("ping domU <-> domU"))
            .unwrap();
        assert!(ping.contains("3.00"), "{t}");
        assert!(t.contains("Ferrovisor: n/a (no disk)"), "{t}");
        assert!(t.contains("Xen 4.17 + xl: n/a (xl create failed)"), "{t}");
        assert!(t
            .lines()
            .next()
            .unwrap()
            .contains("native | Ferrovisor | x native"));
    }
}
