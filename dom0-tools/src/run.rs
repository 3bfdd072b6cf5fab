//! Runs one parsed command: opens the hypervisor only when the command needs it, prints
//! results to `out` and warnings to `err`.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::mpsc::Receiver,
    time::Duration,
};

use ferrovisor_abi::{
    domctl::{DomctlCmd, DEVICE_VBD, DEVICE_VIF},
    xen::DomId,
};

use crate::{
    cli::Command,
    commands::{self, create, monitor, CommandError, ShutdownKind},
    config,
    hypervisor::{Hypervisor, TransportError},
    table,
};

/// How long `shutdown --wait` waits.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(300);

/// What a command needs from its surroundings, so tests can provide their own.
pub struct Env<'a> {
    /// Opens the hypervisor (privcmd in dom0, a fake in tests).
    pub open: &'a mut dyn FnMut() -> Result<Box<dyn Hypervisor>, TransportError>,
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    /// Where `dmesg -c` keeps the offset it cleared to.
    pub state_dir: PathBuf,
    /// 16 random bytes for a new domain's UUID.
    pub random: &'a mut dyn FnMut() -> [u8; 16],
    /// Console input (for `console` and `create -c`).
    pub console_input: &'a mut dyn FnMut() -> Receiver<Vec<u8>>,
    /// Starts a domain's background monitor (`fv monitor`, see [`MonitorLaunch`]).
    pub spawn_monitor: &'a mut dyn FnMut(&MonitorLaunch) -> std::io::Result<()>,
}

/// A background monitor `fv create` starts: `fv monitor DOMID -- FILE [KEY=VALUE...]`,
/// detached (its own process group, no terminal), writing to `log`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorLaunch {
    pub domid: DomId,
    pub file: PathBuf,
    pub overrides: Vec<String>,
    pub log: PathBuf,
}

impl MonitorLaunch {
    /// The arguments after `fv`.
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> =
            vec!["monitor".into(), self.domid.to_string().into(), "--".into()];
        v.push(self.file.clone().into_os_string());
        v.extend(self.overrides.iter().map(Into::into));
        v
    }
}

/// Where a domain's monitor writes what it does (as `xl` keeps
/// `/var/log/xen/xl-NAME.log`).
pub const MONITOR_LOG_DIR: &str = "/var/log/fv";

fn print(out: &mut dyn Write, s: &str) -> Result<(), CommandError> {
    out.write_all(s.as_bytes()).map_err(CommandError::Output)
}

fn dmesg_offset_file(dir: &Path) -> PathBuf {
    dir.join("dmesg-offset")
}

/// Runs `cmd`.
pub fn run(cmd: Command, env: &mut Env<'_>) -> Result<(), CommandError> {
    let cmd = match cmd {
        Command::Create {
            file,
            console,
            foreground,
            dry_run,
            overrides,
        } => {
            let how = if dry_run {
                CreateMode::DryRun
            } else if console {
                CreateMode::Console
            } else if foreground {
                CreateMode::Foreground
            } else {
                CreateMode::Background
            };
            return run_create(&file, how, &overrides, env);
        }
        Command::Monitor {
            domain,
            file,
            overrides,
        } => return run_monitor(&domain, &file, &overrides, env),
        other => other,
    };
    let mut hv = (env.open)()?;
    let hv: &mut dyn Hypervisor = hv.as_mut();
    let poll = Duration::from_millis(100);
    match cmd {
        Command::List {
            long,
            json,
            domains,
        } => {
            let infos = commands::list(hv, &domains)?;
            let text = if json {
                table::list_json(&infos)
            } else {
                table::list_table(&infos, long)
            };
            print(env.out, &text)
        }
        Command::Info => {
            let p = commands::phys_info(hv)?;
            print(env.out, &table::info_text(&p))
        }
        Command::Dmesg { clear } => {
            let file = dmesg_offset_file(&env.state_dir);
            let from = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            let end = commands::dmesg(hv, from, env.out)?;
            if clear {
                std::fs::create_dir_all(&env.state_dir)
                    .and_then(|()| std::fs::write(&file, format!("{end}\n")))
                    .map_err(|source| CommandError::ReadFile {
                        path: file.display().to_string(),
                        source,
                    })?;
            }
            Ok(())
        }
        Command::Console { domain } => {
            let input = (env.console_input)();
            commands::console(hv, &domain, &input, env.out, poll)
        }
        Command::Pause { domain } => {
            commands::lifecycle(hv, &domain, DomctlCmd::PauseDomain).map(|_| ())
        }
        Command::Unpause { domain } => {
            commands::lifecycle(hv, &domain, DomctlCmd::UnpauseDomain).map(|_| ())
        }
        Command::Destroy { domain } => {
            commands::lifecycle(hv, &domain, DomctlCmd::DestroyDomain).map(|_| ())
        }
        Command::Shutdown { wait, domain } => {
            let wait = wait.then_some(SHUTDOWN_WAIT);
            commands::shutdown(hv, &domain, ShutdownKind::Poweroff, wait, poll).map(|_| ())
        }
        Command::Reboot { domain } => {
            commands::shutdown(hv, &domain, ShutdownKind::Reboot, None, poll).map(|_| ())
        }
        Command::MemSet { domain, mem } => commands::mem_set(hv, &domain, mem).map(|_| ()),
        Command::VcpuList { domain } => {
            let infos = commands::list(hv, domain.as_slice())?;
            let mut rows = Vec::new();
            for i in infos {
                // A domain gone between the listing and the question is left out.
                match commands::vcpu_states(hv, &i) {
                    Ok(v) => rows.push((i, v)),
                    Err(CommandError::NoSuchId(_)) if domain.is_none() => {}
                    Err(e) => return Err(e),
                }
            }
            print(env.out, &table::vcpu_table(&rows))
        }
        Command::Uptime { domain } => {
            let infos = commands::list(hv, domain.as_slice())?;
            let host = commands::phys_info(hv)?.uptime_ns;
            print(env.out, &table::uptime_table(&infos, host))
        }
        Command::NetworkAttach { domain, settings } => {
            let (dom, devid, mac) =
                commands::device::network_attach(hv, &domain, &settings, (env.random)())?;
            writeln!(
                env.err,
                "fv: domain {domain} ({dom}): vif {devid} attached (mac={})",
                config::device::mac_string(&mac)
            )
            .map_err(CommandError::Output)
        }
        Command::BlockAttach { domain, spec } => {
            let (dom, devid) = commands::device::block_attach(hv, &domain, &spec)?;
            writeln!(
                env.err,
                "fv: domain {domain} ({dom}): disk '{}' attached (devid {devid})",
                spec.join(",")
            )
            .map_err(CommandError::Output)
        }
        Command::NetworkDetach {
            force,
            domain,
            device,
        } => detach(hv, env, &domain, DEVICE_VIF, &device, force),
        Command::BlockDetach {
            force,
            domain,
            device,
        } => detach(hv, env, &domain, DEVICE_VBD, &device, force),
        Command::NetworkList { domains } => {
            let rows = commands::device::list_of_kind(hv, &domains, DEVICE_VIF)?;
            print(env.out, &table::network_list_table(&rows))
        }
        Command::BlockList { domains } => {
            let rows = commands::device::list_of_kind(hv, &domains, DEVICE_VBD)?;
            print(env.out, &table::block_list_table(&rows))
        }
        Command::DiskList => {
            let rows = commands::device::disk_list(hv)?;
            print(env.out, &table::disk_list_table(&rows))
        }
        Command::Switch { json } => {
            let ports = commands::device::switch_ports(hv)?;
            let text = if json {
                table::switch_json(&ports)
            } else {
                table::switch_table(&ports)
            };
            print(env.out, &text)
        }
        Command::Create { .. } | Command::Monitor { .. } => unreachable!("handled above"),
    }
}

/// How long `*-detach` polls for the device to go.
const DETACH_POLL: Duration = Duration::from_millis(100);

fn detach(
    hv: &mut dyn Hypervisor,
    env: &mut Env<'_>,
    domain: &commands::DomainRef,
    kind: u32,
    device: &str,
    force: bool,
) -> Result<(), CommandError> {
    let (label, how) = commands::device::detach(
        hv,
        domain,
        kind,
        device,
        force,
        commands::device::DETACH_WAIT,
        DETACH_POLL,
    )?;
    let what = match how {
        commands::device::Detached::Closed => "detached",
        commands::device::Detached::Forced => "removed (forced)",
        commands::device::Detached::DomainGone => "gone with the domain",
    };
    writeln!(env.err, "fv: domain {domain}: {label} {what}").map_err(CommandError::Output)
}

fn read_image(path: &Path) -> Result<Vec<u8>, CommandError> {
    std::fs::read(path).map_err(|source| CommandError::ReadFile {
        path: path.display().to_string(),
        source,
    })
}

/// What `fv create` does once the domain runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CreateMode {
    /// `-n`: print the plan, create nothing.
    DryRun,
    /// Leave a background monitor.
    Background,
    /// `-c`: leave a background monitor and attach to the console.
    Console,
    /// `-F`: be the monitor.
    Foreground,
}

/// The kernel and ramdisk images `config` names.
type Images = (Vec<u8>, Option<Vec<u8>>);

fn read_images(config: &config::DomainConfig) -> Result<Images, CommandError> {
    let kernel = read_image(&config.kernel)?;
    let ramdisk = config.ramdisk.as_deref().map(read_image).transpose()?;
    Ok((kernel, ramdisk))
}

/// Builds and starts the domain `config` describes from its images, with `macs` for
/// the vifs whose specs name none.
fn build_from(
    hv: &mut dyn Hypervisor,
    config: &config::DomainConfig,
    uuid: [u8; 16],
    macs: &[[u8; 6]],
    (kernel, ramdisk): &Images,
) -> Result<(DomId, create::CreatePlan), CommandError> {
    let plan = create::plan(config, uuid, macs);
    let dom = create::execute(hv, &plan, kernel, ramdisk.as_deref())?;
    Ok((dom, plan))
}

fn run_create(
    file: &Path,
    how: CreateMode,
    overrides: &[String],
    env: &mut Env<'_>,
) -> Result<(), CommandError> {
    let loaded = config::load(file, overrides)?;
    for w in &loaded.warnings {
        writeln!(env.err, "fv: {w}").map_err(CommandError::Output)?;
    }
    let uuid = create::uuid_v4((env.random)());
    let macs: Vec<[u8; 6]> = loaded
        .config
        .vifs
        .iter()
        .map(|_| commands::device::random_mac((env.random)()))
        .collect();
    if how == CreateMode::DryRun {
        let plan = create::plan(&loaded.config, uuid, &macs);
        return print(env.out, &plan.describe());
    }
    // The images are read before anything is created: a missing file costs nothing.
    let images = read_images(&loaded.config)?;
    let mut hv = (env.open)()?;
    let (dom, plan) = build_from(hv.as_mut(), &loaded.config, uuid, &macs, &images)?;
    drop(images);
    writeln!(env.err, "fv: created domain {} ({dom})", plan.config.name)
        .map_err(CommandError::Output)?;
    if how == CreateMode::Foreground {
        return monitor_domain(hv.as_mut(), dom, loaded.config, env).map(|_| ());
    }
    let launch = MonitorLaunch {
        domid: dom,
        file: std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf()),
        overrides: overrides.to_vec(),
        log: Path::new(MONITOR_LOG_DIR).join(format!("{}.log", plan.config.name)),
    };
    if let Err(e) = (env.spawn_monitor)(&launch) {
        writeln!(
            env.err,
            "fv: warning: cannot start the monitor of domain {} ({e}): its on_poweroff, \
             on_reboot and on_crash actions will not be carried out; run 'fv monitor {dom} {}' \
             to watch it",
            plan.config.name,
            file.display()
        )
        .map_err(CommandError::Output)?;
    }
    if how == CreateMode::Console {
        let input = (env.console_input)();
        commands::console(
            hv.as_mut(),
            &commands::DomainRef::Id(dom),
            &input,
            env.out,
            Duration::from_millis(100),
        )?;
    }
    Ok(())
}

/// Runs the monitor of `dom` (created from `config`) here, logging to `env.err`.
fn monitor_domain(
    hv: &mut dyn Hypervisor,
    dom: DomId,
    config: config::DomainConfig,
    env: &mut Env<'_>,
) -> Result<monitor::MonitorEnd, CommandError> {
    let start = std::time::Instant::now();
    let cfg = config.clone();
    // A restarted domain keeps its vifs' MACs, as with xl (its DHCP lease stays valid).
    let macs = kept_macs(hv, dom);
    // Read again for each restart: an updated kernel on disk is what the next boot gets.
    let mut rebuild = |hv: &mut dyn Hypervisor, uuid: [u8; 16]| -> Result<DomId, CommandError> {
        let images = read_images(&cfg)?;
        build_from(hv, &cfg, uuid, &macs, &images).map(|(d, _)| d)
    };
    let random = &mut *env.random;
    let mut new_uuid = || create::uuid_v4(random());
    let mut now = || start.elapsed();
    let mut m = monitor::Monitor {
        config,
        rebuild: &mut rebuild,
        new_uuid: &mut new_uuid,
        now: &mut now,
        log: env.err,
        poll: monitor::POLL_FALLBACK,
    };
    monitor::monitor(hv, dom, &mut m)
}

/// The MACs of `dom`'s vifs in device-id order (the order the config's vifs were given
/// ids in); empty when they cannot be read.
fn kept_macs(hv: &mut dyn Hypervisor, dom: DomId) -> Vec<[u8; 6]> {
    let mut vifs: Vec<_> = hv
        .list_devices(dom)
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.kind == DEVICE_VIF)
        .collect();
    vifs.sort_by_key(|d| d.devid);
    vifs.iter().map(|d| d.mac).collect()
}

/// `fv monitor DOMAIN -- FILE [KEY=VALUE...]`: the background half of `fv create`.
fn run_monitor(
    domain: &commands::DomainRef,
    file: &Path,
    overrides: &[String],
    env: &mut Env<'_>,
) -> Result<(), CommandError> {
    let loaded = config::load(file, overrides)?;
    let mut hv = (env.open)()?;
    let dom = commands::resolve(hv.as_mut(), domain)?.domid;
    monitor_domain(hv.as_mut(), dom, loaded.config, env).map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use clap::Parser;

    use super::*;
    use crate::{cli::Cli, hypervisor::fake::Fake};

    struct Outcome {
        result: Result<(), CommandError>,
        out: String,
        err: String,
        launches: Vec<MonitorLaunch>,
    }

    fn run_with(args: &[&str], fake: impl Fn() -> Fake, state_dir: &Path) -> Outcome {
        let mut v = vec!["fv"];
        v.extend_from_slice(args);
        let cli = Cli::try_parse_from(v).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut open = || Ok(Box::new(fake()) as Box<dyn Hypervisor>);
        let mut random = || [7u8; 16];
        let mut input = || {
            let (tx, rx) = mpsc::channel();
            tx.send(vec![commands::CONSOLE_ESCAPE]).unwrap();
            rx
        };
        let mut launches = Vec::new();
        let mut spawn = |l: &MonitorLaunch| {
            launches.push(l.clone());
            Ok(())
        };
        let mut env = Env {
            open: &mut open,
            out: &mut out,
            err: &mut err,
            state_dir: state_dir.into(),
            random: &mut random,
            console_input: &mut input,
            spawn_monitor: &mut spawn,
        };
        let result = run(cli.command, &mut env);
        Outcome {
            result,
            out: String::from_utf8(out).unwrap(),
            err: String::from_utf8(err).unwrap(),
            launches,
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fv-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn list_and_json() {
        let dir = temp_dir("list");
        let o = run_with(&["list"], Fake::new, &dir);
        assert!(o.result.is_ok());
        assert!(o.out.starts_with(table::LIST_HEADER));
        assert!(o.out.contains("Domain-0"));
        let o = run_with(&["list", "--json"], Fake::new, &dir);
        let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
        assert_eq!(v[0]["name"], "Domain-0");
        let o = run_with(&["list", "nope"], Fake::new, &dir);
        assert_eq!(o.result.unwrap_err().exit_code(), 1);
    }

    #[test]
    fn dmesg_clear_remembers_where_it_stopped() {
        let dir = temp_dir("dmesg");
        let o = run_with(&["dmesg", "-c"], Fake::new, &dir);
        assert!(o.out.contains("Ferrovisor starting"));
        let o = run_with(&["dmesg"], Fake::new, &dir);
        assert_eq!(o.out, "", "cleared");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn create_dry_run_needs_no_hypervisor() {
        let dir = temp_dir("dry");
        let cfg = dir.join("guest.cfg");
        std::fs::write(
            &cfg,
            "name='g'\nkernel='/nonexistent/k'\nmemory=64\nfoo=1\n",
        )
        .unwrap();
        let mut v = vec![
            "fv",
            "create",
            "-n",
            cfg.to_str().unwrap(),
            "extra=\"quiet\"",
        ];
        let cli = Cli::try_parse_from(v.drain(..)).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut open = || -> Result<Box<dyn Hypervisor>, TransportError> {
            Err(TransportError::NoDevice {
                path: "/dev/xen/privcmd",
            })
        };
        let mut random = || [0u8; 16];
        let mut input = || mpsc::channel().1;
        let mut spawn = |_: &MonitorLaunch| -> std::io::Result<()> { panic!("no monitor here") };
        let mut env = Env {
            open: &mut open,
            out: &mut out,
            err: &mut err,
            state_dir: dir.clone(),
            random: &mut random,
            console_input: &mut input,
            spawn_monitor: &mut spawn,
        };
        run(cli.command, &mut env).unwrap();
        let out = String::from_utf8(out).unwrap();
        let err = String::from_utf8(err).unwrap();
        assert!(out.contains("cmdline         quiet\n"), "{out}");
        assert!(out.contains("memory          64 MiB (16384 pages populated)\n"));
        assert!(
            err.contains("guest.cfg:4:1: warning: unknown setting 'foo' ignored"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn create_runs_and_reports() {
        let dir = temp_dir("create");
        let cfg = dir.join("guest.cfg");
        let kernel = dir.join("vmlinuz");
        std::fs::write(&kernel, b"kernel image").unwrap();
        std::fs::write(
            &cfg,
            format!("name='g'\nkernel='{}'\nmemory=4\n", kernel.display()),
        )
        .unwrap();
        let o = run_with(&["create", "-c", cfg.to_str().unwrap()], Fake::new, &dir);
        assert!(
            o.result.is_ok(),
            "{:?}",
            o.result.err().map(|e| e.to_string())
        );
        assert_eq!(o.err, "fv: created domain g (1)\n");
        // A monitor is left behind for the domain's actions, with what rebuilds it.
        assert_eq!(o.launches.len(), 1);
        let l = &o.launches[0];
        assert_eq!(l.log, Path::new("/var/log/fv/g.log"));
        assert!(l.file.is_absolute());
        let args: Vec<String> = l
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, ["monitor", "1", "--", cfg.to_str().unwrap()]);
        // Overrides go along; the monitor parses them back.
        let o = run_with(
            &["create", cfg.to_str().unwrap(), "on_crash='preserve'"],
            Fake::new,
            &dir,
        );
        let args = o.launches[0].args();
        let cli = Cli::try_parse_from(std::iter::once("fv".into()).chain(args)).unwrap();
        assert!(matches!(
            cli.command,
            Command::Monitor { domain: commands::DomainRef::Id(1), overrides, .. }
                if overrides == ["on_crash='preserve'"]
        ));
        // In the foreground, fv create is the monitor: the domain powers off, and
        // on_poweroff (destroy, by default) is carried out before it returns.
        let stops = || {
            let mut f = Fake::new();
            f.stop_script.push_back(("g".into(), 0));
            f
        };
        let o = run_with(&["create", "-F", cfg.to_str().unwrap()], stops, &dir);
        assert!(
            o.result.is_ok(),
            "{:?}",
            o.result.err().map(|e| e.to_string())
        );
        assert!(o.launches.is_empty());
        assert!(
            o.err.contains("fv monitor: domain g (1) shut down (poweroff), noticed on @releaseDomain: on_poweroff = destroy\nfv monitor: domain g (1) destroyed\n"),
            "{}",
            o.err
        );
        // A missing kernel is named.
        std::fs::remove_file(&kernel).unwrap();
        let o = run_with(&["create", cfg.to_str().unwrap()], Fake::new, &dir);
        let e = o.result.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot read {}: ", kernel.display())),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_privcmd_is_explained() {
        let cli = Cli::try_parse_from(["fv", "list"]).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut open = || -> Result<Box<dyn Hypervisor>, TransportError> {
            Err(TransportError::NoDevice {
                path: "/dev/xen/privcmd",
            })
        };
        let mut random = || [0u8; 16];
        let mut input = || mpsc::channel().1;
        let mut spawn = |_: &MonitorLaunch| -> std::io::Result<()> { panic!("no monitor here") };
        let mut env = Env {
            open: &mut open,
            out: &mut out,
            err: &mut err,
            state_dir: std::env::temp_dir(),
            random: &mut random,
            console_input: &mut input,
            spawn_monitor: &mut spawn,
        };
        let e = run(cli.command, &mut env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "fv must run in dom0 of a Ferrovisor host: /dev/xen/privcmd not found"
        );
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn the_other_commands() {
        let dir = temp_dir("other");
        let guests = || {
            let mut f = Fake::new();
            f.add_domain(5, "db", 256, ferrovisor_abi::domctl::DOMINFO_PAUSED);
            f
        };
        for args in [
            &["info"][..],
            &["uptime"],
            &["vcpu-list", "0"],
            &["unpause", "db"],
            &["console", "0"],
        ] {
            let o = run_with(args, guests, &dir);
            assert!(
                o.result.is_ok(),
                "{args:?}: {:?}",
                o.result.err().map(|e| e.to_string())
            );
        }
        let o = run_with(&["info"], Fake::new, &dir);
        assert!(o.out.starts_with("nr_cpus                : 2\n"));
        for args in [
            &["destroy", "0"][..],
            &["pause", "Domain-0"],
            &["unpause", "0"],
            &["mem-set", "0", "4g"],
        ] {
            let o = run_with(args, Fake::new, &dir);
            assert_eq!(o.result.unwrap_err().exit_code(), 1, "{args:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn device_commands() {
        let dir = temp_dir("devices");
        let host = || {
            let mut f = Fake::new();
            f.add_domain(3, "web1", 256, ferrovisor_abi::domctl::DOMINFO_BUILT);
            f.add_vbd(
                3,
                "vda2",
                "xvda",
                51712,
                ferrovisor_abi::domctl::VBD_MODE_WRITE,
            );
            f.add_vif(3, 0, [0, 0x16, 0x3e, 1, 2, 3], "xenbr0");
            f
        };
        let ok = |args: &[&str]| {
            let o = run_with(args, host, &dir);
            assert!(
                o.result.is_ok(),
                "{args:?}: {:?}",
                o.result.err().map(|e| e.to_string())
            );
            (o.out, o.err)
        };
        let (_, err) = ok(&["network-attach", "web1", "bridge=xenbr0"]);
        assert_eq!(
            err,
            "fv: domain web1 (3): vif 1 attached (mac=00:16:3e:07:07:07)\n"
        );
        let (_, err) = ok(&["block-attach", "web1", "phy:vda1,xvdb,r"]);
        assert_eq!(
            err,
            "fv: domain web1 (3): disk 'phy:vda1,xvdb,r' attached (devid 51728)\n"
        );
        let (_, err) = ok(&["block-detach", "web1", "xvda"]);
        assert_eq!(err, "fv: domain web1: disk xvda (51712) detached\n");
        let (_, err) = ok(&["network-detach", "--force", "3", "0"]);
        assert_eq!(
            err,
            "fv: domain 3: vif 0 (00:16:3e:01:02:03) removed (forced)\n"
        );
        let (out, _) = ok(&["network-list", "web1"]);
        assert!(out.starts_with("Idx BE Mac Addr."), "{out}");
        assert!(out.contains("00:16:3e:01:02:03"), "{out}");
        let (out, _) = ok(&["block-list", "web1", "0"]);
        assert!(
            out.contains("/local/domain/32754/backend/vbd/3/51712"),
            "{out}"
        );
        let (out, _) = ok(&["disk-list"]);
        assert!(out.contains("web1(3):w"), "{out}");
        let (out, _) = ok(&["switch"]);
        assert!(out.contains("vif3.0     web1(3)"), "{out}");
        let (out, _) = ok(&["switch", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[1]["mac"], "00:16:3e:01:02:03");
        let o = run_with(&["block-attach", "web1", "phy:vdc,xvdc,w"], host, &dir);
        assert_eq!(o.result.unwrap_err().exit_code(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn create_dry_run_shows_devices_with_a_random_mac() {
        let dir = temp_dir("dry-dev");
        let cfg = dir.join("net.cfg");
        std::fs::write(
            &cfg,
            "name='n'\nkernel='/k'\nvif=['']\ndisk=['phy:vda2,xvda,w']\nip='10.0.0.2'\n",
        )
        .unwrap();
        let o = run_with(&["create", "-n", cfg.to_str().unwrap()], Fake::new, &dir);
        assert!(o.result.is_ok());
        // The UUID takes the first draw, the vif's MAC the next (the fake draws 7s).
        assert!(
            o.out
                .contains("attach          vif 0 (mac=00:16:3e:07:07:07, bridge=xenbr0)\n"),
            "{}",
            o.out
        );
        assert!(o
            .out
            .contains("attach          disk 'phy:vda2,xvda,w' as virtual device 51712\n"));
        // xm's ip= goes to the kernel as its ip= option, for the vif's eth0.
        assert!(
            o.out.contains("cmdline         ip=10.0.0.2:::::eth0:off\n"),
            "{}",
            o.out
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
