//! The Linux figures of `cargo xtask bench`: Debian's kernel with the busybox initramfs
//! of `cargo xtask run`, booted natively in QEMU, as Ferrovisor's dom0 and (with
//! `--against-xen`) as Xen 4.17's dom0, under the same TCG, in one run. For each: the
//! host time from QEMU's start to the shell's banner, then a syscall-heavy loop (`dd`
//! of single bytes) and a fork/exec-heavy loop (`/bin/true` 200 times) timed by the
//! guest's own clock; on Ferrovisor also the host time from typing `fv create` of the
//! Linux domU example to that domU's shell banner.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use regex::Regex;

use crate::{
    build::Artifacts,
    iso::{self, BootEntry, BootModule},
    linux::Dom0Linux,
    qemu::{self, QemuConfig, Session},
    xen,
};

/// The line busybox's shell prints right before its first prompt.
const BANNER: &str = r"Enter 'help' for a list of built-in commands";
/// One boot, from QEMU's start to the last figure.
const TIMEOUT: Duration = Duration::from_secs(600);
const DD_BYTES: u32 = 200_000;
const FORKS: u32 = 200;

/// A platform's figures, in milliseconds (`None`: not measured there).
#[derive(Clone, Debug, Default)]
pub struct LinuxFigures {
    pub boot_to_shell: Option<f64>,
    pub syscall_loop: Option<f64>,
    pub fork_loop: Option<f64>,
    pub domu_create_to_shell: Option<f64>,
}

/// Where the kernel runs.
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
            Platform::Ferrovisor => "Ferrovisor dom0",
            Platform::Xen => "Xen 4.17 dom0",
        }
    }
}

/// Boots Linux on `platform` once and takes its figures.
pub fn measure(
    platform: Platform,
    linux: &Dom0Linux,
    artifacts: &Artifacts,
    xen_gz: Option<&Path>,
) -> anyhow::Result<LinuxFigures> {
    let out = crate::build::output_dir();
    let modules = |cmdline: &str| {
        vec![
            BootModule {
                source: linux.vmlinuz.clone(),
                iso_name: format!("vmlinuz-{}", linux.version),
                cmdline: cmdline.to_owned(),
            },
            BootModule {
                source: linux.initrd.clone(),
                iso_name: format!("initrd.img-{}", linux.version),
                cmdline: String::new(),
            },
        ]
    };
    let mut entry = BootEntry::new(artifacts);
    // One CPU on every platform (native `-smp 1`, Xen `maxcpus=1`): the loops are
    // single-threaded, and the figures compare like with like.
    entry.hypervisor_cmdline = "dom0_mem=262144 maxcpus=1 console=com1 loglvl=info".to_owned();
    entry.modules = modules("console=hvc0 nousb");
    let ferrovisor_iso = iso::make_iso(&entry, &out.join("bench-linux-ferrovisor.iso"))?;
    let mut cfg = match platform {
        Platform::Ferrovisor => QemuConfig::new(ferrovisor_iso),
        Platform::Xen => {
            let image = xen_gz.context("no Xen image")?;
            let mut entry = BootEntry::xen(image);
            entry.hypervisor_cmdline = "dom0_mem=256M,max:256M dom0_max_vcpus=1 maxcpus=1 \
                                        console=com1 com1=115200,8n1 noreboot=false"
                .to_owned();
            entry.modules = modules("console=hvc0 nousb");
            let mut cfg = QemuConfig::new(iso::make_iso(&entry, &out.join("bench-linux-xen.iso"))?);
            cfg.extra_args = xen::QEMU_ARGS.iter().map(|&a| a.to_owned()).collect();
            cfg
        }
        Platform::Native => {
            // The same kernel and initramfs straight from QEMU (`-kernel` boots before the
            // CD), on its serial line, with the 256 MiB dom0 has.
            let mut cfg = QemuConfig::new(ferrovisor_iso);
            cfg.memory_mib = 256;
            cfg.smp = 1;
            cfg.extra_args = vec![
                "-kernel".into(),
                linux.vmlinuz.display().to_string(),
                "-initrd".into(),
                linux.initrd.display().to_string(),
                "-append".into(),
                // `no_timer_check`: on a busy host, TCG's IO-APIC timer can miss Linux's
                // boot-time check, which then panics ("IO-APIC + timer doesn't work").
                "console=ttyS0 nousb no_timer_check".into(),
            ];
            cfg
        }
    };
    cfg.log_name = Some(format!(
        "bench-linux-{}",
        platform
            .column()
            .split(' ')
            .next()
            .unwrap_or("x")
            .to_lowercase()
    ));
    let spawned = Instant::now();
    let mut s = qemu::spawn(&cfg)?;
    expect(&mut s, BANNER)?;
    let mut f = LinuxFigures {
        boot_to_shell: Some(spawned.elapsed().as_secs_f64() * 1000.0),
        ..LinuxFigures::default()
    };
    f.syscall_loop = Some(timed(
        &mut s,
        "SYS",
        &format!("dd if=/dev/zero of=/dev/null bs=1 count={DD_BYTES} 2>/dev/null"),
    )?);
    f.fork_loop = Some(timed(
        &mut s,
        "FORK",
        &format!("for i in $(seq {FORKS}); do /bin/true; done"),
    )?);
    if platform == Platform::Ferrovisor {
        let typed = Instant::now();
        type_slowly(&mut s, "fv create /etc/fv/examples/linux-domu.cfg -c\r")?;
        // Through dom0's console (`-c`): the hypervisor mirrors no domU console by default.
        expect(&mut s, r"domU: Linux \S+ ready")?;
        expect(&mut s, BANNER)?;
        f.domu_create_to_shell = Some(typed.elapsed().as_secs_f64() * 1000.0);
    }
    s.kill();
    Ok(f)
}

/// Types `text` a few characters at a time: a console that polls its input (Xen's dom0
/// console drops what arrives faster than it reads) then sees every character.
fn type_slowly(s: &mut Session, text: &str) -> anyhow::Result<()> {
    let chars: Vec<char> = text.chars().collect();
    for chunk in chars.chunks(4) {
        s.send(&chunk.iter().collect::<String>())?;
        std::thread::sleep(Duration::from_millis(40));
    }
    Ok(())
}

fn expect(s: &mut Session, pattern: &str) -> anyhow::Result<()> {
    s.expect(&Regex::new(&format!("(?m){pattern}"))?, TIMEOUT)?;
    Ok(())
}

/// Runs `cmd` in the guest's shell between two readings of its clock (`/proc/uptime`, in
/// hundredths of a second: busybox's `date` has no nanoseconds, so the loops are made to
/// last seconds); returns the difference in milliseconds. The marker `TAG_CS=` is
/// computed by the shell, so the echo of the typed line never matches.
fn timed(s: &mut Session, tag: &str, cmd: &str) -> anyhow::Result<f64> {
    let now = "$(cut -d' ' -f1 /proc/uptime | tr -d .)";
    type_slowly(
        s,
        &format!("a={now}; {cmd}; b={now}; echo {tag}_CS=$((b-a))\r"),
    )?;
    let m = s.expect(&Regex::new(&format!(r"(?m){tag}_CS=(\d+)"))?, TIMEOUT)?;
    let cs: f64 = m.group(1).parse().context("a bad timing")?;
    Ok(cs * 10.0)
}

/// Reads one figure.
type Getter = fn(&LinuxFigures) -> Option<f64>;

/// The Linux table: one row per figure, one column per platform, and the ratio of each
/// hypervisor to native.
pub fn table(cols: &[(Platform, LinuxFigures)]) -> String {
    let native = cols
        .iter()
        .find(|(p, _)| *p == Platform::Native)
        .map(|c| &c.1);
    let rows: [(&str, Getter); 4] = [
        ("QEMU start -> shell banner (host ms)", |f| f.boot_to_shell),
        ("syscall loop: dd of 200000 single bytes (ms)", |f| {
            f.syscall_loop
        }),
        ("fork/exec loop: 200 x /bin/true (ms)", |f| f.fork_loop),
        ("Linux domU: fv create -> its shell banner (host ms)", |f| {
            f.domu_create_to_shell
        }),
    ];
    let mut out = String::new();
    let mut header = vec![format!("{:<52}", "Linux figure")];
    for (p, _) in cols {
        header.push(format!("{:>16}", p.column()));
        if *p != Platform::Native {
            header.push(format!("{:>10}", "x native"));
        }
    }
    out.push_str(header.join(" | ").trim_end());
    out.push('\n');
    for (label, get) in rows {
        let mut cells = vec![format!("{label:<52}")];
        for (p, f) in cols {
            let v = get(f);
            cells.push(format!(
                "{:>16}",
                v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"))
            ));
            if *p != Platform::Native {
                let ratio = match (v, native.and_then(get)) {
                    (Some(v), Some(n)) if n > 0.0 => format!("{:.2}", v / n),
                    _ => "n/a".to_owned(),
                };
                cells.push(format!("{ratio:>10}"));
            }
        }
        out.push_str(cells.join(" | ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_ratios_to_native() {
        let native = LinuxFigures {
            boot_to_shell: Some(1000.0),
            syscall_loop: Some(10.0),
            fork_loop: Some(100.0),
            domu_create_to_shell: None,
        };
        let ferro = LinuxFigures {
            boot_to_shell: Some(3000.0),
            syscall_loop: Some(25.0),
            fork_loop: Some(150.0),
            domu_create_to_shell: Some(9000.0),
        };
        let t = table(&[(Platform::Native, native), (Platform::Ferrovisor, ferro)]);
        assert!(t.contains("3.00"), "{t}");
        assert!(t.contains("2.50"), "{t}");
        assert!(t.contains("1.50"), "{t}");
        assert!(t.lines().nth(4).is_some_and(|l| l.contains("n/a")), "{t}");
    }
}
