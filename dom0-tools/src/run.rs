//! Runs one parsed command: opens the hypervisor only when the command needs it, prints
//! results to `out` and warnings to `err`.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::mpsc::Receiver,
    time::Duration,
};

use ferrovisor_abi::domctl::DomctlCmd;

use crate::{
    cli::Command,
    commands::{self, create, CommandError, ShutdownKind},
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
}

fn print(out: &mut dyn Write, s: &str) -> Result<(), CommandError> {
    out.write_all(s.as_bytes()).map_err(CommandError::Output)
}

fn dmesg_offset_file(dir: &Path) -> PathBuf {
    dir.join("dmesg-offset")
}

/// Runs `cmd`.
pub fn run(cmd: Command, env: &mut Env<'_>) -> Result<(), CommandError> {
    if let Command::Create {
        file,
        console,
        dry_run,
        overrides,
    } = cmd
    {
        return run_create(&file, console, dry_run, &overrides, env);
    }
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
            print(env.out, &table::vcpu_table(&infos))
        }
        Command::Uptime { domain } => {
            let infos = commands::list(hv, domain.as_slice())?;
            let host = commands::phys_info(hv)?.uptime_ns;
            print(env.out, &table::uptime_table(&infos, host))
        }
        Command::Create { .. } => unreachable!("handled above"),
    }
}

fn read_image(path: &Path) -> Result<Vec<u8>, CommandError> {
    std::fs::read(path).map_err(|source| CommandError::ReadFile {
        path: path.display().to_string(),
        source,
    })
}

fn run_create(
    file: &Path,
    console: bool,
    dry_run: bool,
    overrides: &[String],
    env: &mut Env<'_>,
) -> Result<(), CommandError> {
    let loaded = config::load(file, overrides)?;
    for w in &loaded.warnings {
        writeln!(env.err, "fv: {w}").map_err(CommandError::Output)?;
    }
    let plan = create::plan(&loaded.config, create::uuid_v4((env.random)()));
    if dry_run {
        return print(env.out, &plan.describe());
    }
    let kernel = read_image(&loaded.config.kernel)?;
    let ramdisk = loaded
        .config
        .ramdisk
        .as_deref()
        .map(read_image)
        .transpose()?;
    let mut hv = (env.open)()?;
    let dom = create::execute(hv.as_mut(), &plan, &kernel, ramdisk.as_deref())?;
    writeln!(env.err, "fv: created domain {} ({dom})", plan.config.name)
        .map_err(CommandError::Output)?;
    if console {
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
        let mut env = Env {
            open: &mut open,
            out: &mut out,
            err: &mut err,
            state_dir: state_dir.into(),
            random: &mut random,
            console_input: &mut input,
        };
        let result = run(cli.command, &mut env);
        Outcome {
            result,
            out: String::from_utf8(out).unwrap(),
            err: String::from_utf8(err).unwrap(),
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
        let mut env = Env {
            open: &mut open,
            out: &mut out,
            err: &mut err,
            state_dir: dir.clone(),
            random: &mut random,
            console_input: &mut input,
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
        let mut env = Env {
            open: &mut open,
            out: &mut out,
            err: &mut err,
            state_dir: std::env::temp_dir(),
            random: &mut random,
            console_input: &mut input,
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
}
