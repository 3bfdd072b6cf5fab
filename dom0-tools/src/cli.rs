//! The command line of `fv`, in `xl`'s shape: `fv <command> [options] [args]`.
//!
//! Exit status: 0 success, 1 the command failed, 2 the command line is wrong (clap's
//! usage errors); `--help` and `--version` exit 0.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{commands::DomainRef, size::MemSize};

/// `fv --version`: the tool's version and the control-interface version it speaks
/// (kept equal to `FV_CONTROL_INTERFACE_VERSION` by the assertion below).
const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (control interface v2)");

/// Ferrovisor's dom0 control tool: create, list and control domains.
#[derive(Debug, Parser)]
#[command(name = "fv", version, long_version = LONG_VERSION, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List all domains, or the ones named, with their memory, vCPUs, state and CPU time
    List {
        /// Also print each domain's UUID and shutdown reason
        #[arg(short, long)]
        long: bool,
        /// Print JSON instead of the table
        #[arg(long)]
        json: bool,
        /// Domains to list (names or ids); all when none
        #[arg(value_name = "DOMAIN")]
        domains: Vec<DomainRef>,
    },
    /// Print facts about the host: CPUs, memory, hypervisor version, uptime
    Info,
    /// Print the hypervisor's log
    Dmesg {
        /// Clear the log after printing it (later runs print only what is new)
        #[arg(short = 'c', long)]
        clear: bool,
    },
    /// Create a domain from an xl.cfg-style config file and start it; a background
    /// monitor then carries out its on_poweroff/on_reboot/on_crash actions
    Create {
        /// The domain config file
        file: PathBuf,
        /// Attach to the new domain's console once it runs (leave with Ctrl-])
        #[arg(short = 'c', long)]
        console: bool,
        /// Stay in the foreground as the domain's monitor (carrying out its actions)
        /// instead of leaving one in the background
        #[arg(short = 'F', long, conflicts_with = "console")]
        foreground: bool,
        /// Print what would be created (parameters and kernel command line), create nothing
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Settings applied after the file, in config syntax (memory=256 'extra="quiet"')
        #[arg(value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Attach to a domain's console (leave with Ctrl-])
    Console {
        /// The domain: its name or numeric id
        #[arg(value_name = "DOMAIN")]
        domain: DomainRef,
    },
    /// Pause a domain (it keeps its memory but gets no CPU)
    Pause {
        /// The domain: its name or numeric id
        #[arg(value_name = "DOMAIN")]
        domain: DomainRef,
    },
    /// Let a paused domain run again
    Unpause {
        /// The domain: its name or numeric id
        #[arg(value_name = "DOMAIN")]
        domain: DomainRef,
    },
    /// Ask a domain to shut down cleanly
    Shutdown {
        /// Wait (up to 5 minutes) until the domain has shut down
        #[arg(short, long)]
        wait: bool,
        /// The domain: its name or numeric id
        #[arg(value_name = "DOMAIN")]
        domain: DomainRef,
    },
    /// Ask a domain to reboot
    Reboot {
        /// The domain: its name or numeric id
        #[arg(value_name = "DOMAIN")]
        domain: DomainRef,
    },
    /// Stop a domain at once and free everything it holds
    Destroy {
        /// The domain: its name or numeric id
        #[arg(value_name = "DOMAIN")]
        domain: DomainRef,
    },
    /// Set a domain's memory target (its balloon driver gives or takes memory)
    #[command(name = "mem-set")]
    MemSet {
        /// The domain: its name or numeric id
        #[arg(value_name = "DOMAIN")]
        domain: DomainRef,
        /// The new size: 256m, 1g, 524288k; a bare number is MiB
        #[arg(value_name = "MEM")]
        mem: MemSize,
    },
    /// List the vCPUs of all domains, or of one
    #[command(name = "vcpu-list")]
    VcpuList {
        /// Only this domain (name or numeric id)
        #[arg(value_name = "DOMAIN")]
        domain: Option<DomainRef>,
    },
    /// Print how long the host's domains have been up
    Uptime {
        /// Only this domain (name or numeric id)
        #[arg(value_name = "DOMAIN")]
        domain: Option<DomainRef>,
    },
    /// Give a running domain a new network interface (a vif on one of the host's switches)
    #[command(
        name = "network-attach",
        after_help = "Settings as in a config file's vif entry: mac=00:16:3e:xx:xx:xx (a random \
                      one when none), bridge=xenbr0 (the default), devid=N.\n\
                      Example: fv network-attach web1 bridge=xenbr0"
    )]
    NetworkAttach {
        /// The domain: its name or numeric id
        #[arg(value_name = "DOMAIN")]
        domain: DomainRef,
        /// vif settings (key=value)
        #[arg(value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Remove a network interface from a domain (its frontend is asked to close it first)
    #[command(name = "network-detach")]
    NetworkDetach {
        /// Remove it at once, without waiting for the guest
        #[arg(long)]
        force: bool,
        /// The domain: its name or numeric id
        #[arg(value_name = "DOMAIN")]
        domain: DomainRef,
        /// The vif: its device id (the Idx of network-list) or its MAC address
        #[arg(value_name = "DEVID|MAC")]
        device: String,
    },
    /// List the network interfaces of domains
    #[command(name = "network-list")]
    NetworkList {
        /// The domains: names or numeric ids
        #[arg(value_name = "DOMAIN", required = true)]
        domains: Vec<DomainRef>,
    },
    /// Give a running domain a disk (one of the host's disks or partitions)
    #[command(
        name = "block-attach",
        after_help = "The disk spec of a config file's disk entry, e.g. 'phy:vda2,xvdb,w' or \
                      'target=vda2,vdev=xvdb,access=r'; access r, w, or w! (writable and shared \
                      with other domains). 'fv disk-list' shows the host's disks.\n\
                      Example: fv block-attach web1 phy:vda2,xvdb,w"
    )]
    BlockAttach {
        /// The domain: its name or numeric id
        #[arg(value_name = "DOMAIN")]
        domain: DomainRef,
        /// The disk spec (several arguments are joined with commas)
        #[arg(value_name = "DISKSPEC", required = true)]
        spec: Vec<String>,
    },
    /// Remove a disk from a domain (its frontend is asked to close it first; fv waits 10 s)
    #[command(name = "block-detach")]
    BlockDetach {
        /// Remove it at once, without waiting for the guest (it loses the disk under its feet)
        #[arg(long)]
        force: bool,
        /// The domain: its name or numeric id
        #[arg(value_name = "DOMAIN")]
        domain: DomainRef,
        /// The disk: its virtual device (xvdb) or device id (the Vdev of block-list)
        #[arg(value_name = "VDEV|DEVID")]
        device: String,
    },
    /// List the disks of domains
    #[command(name = "block-list")]
    BlockList {
        /// The domains: names or numeric ids
        #[arg(value_name = "DOMAIN", required = true)]
        domains: Vec<DomainRef>,
    },
    /// List the host's disks and partitions (the phy: targets) and who uses them
    #[command(name = "disk-list")]
    DiskList,
    /// Show the virtual switches' ports and their traffic counters
    Switch {
        /// Print JSON instead of the table
        #[arg(long)]
        json: bool,
    },
    /// Watch a domain and carry out its config's on_poweroff/on_reboot/on_crash actions
    /// (what `fv create` leaves running in the background)
    #[command(hide = true)]
    Monitor {
        /// The domain: its name or numeric id
        #[arg(value_name = "DOMAIN")]
        domain: DomainRef,
        /// The config file it was created from
        file: PathBuf,
        /// The settings `fv create` applied after the file
        #[arg(value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
}

const _: () = assert!(ferrovisor_abi::domctl::FV_CONTROL_INTERFACE_VERSION == 2);

#[cfg(test)]
mod tests {
    use clap::{error::ErrorKind, CommandFactory};

    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        let mut v = vec!["fv"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(|c| c.command)
    }

    fn name(s: &str) -> DomainRef {
        DomainRef::Name(s.into())
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_parses() {
        assert!(matches!(
            parse(&["list", "-l", "--json", "web1", "0"]).unwrap(),
            Command::List { long: true, json: true, domains } if domains == [name("web1"), DomainRef::Id(0)]
        ));
        assert!(matches!(
            parse(&["list", "--long"]).unwrap(),
            Command::List { long: true, json: false, domains } if domains.is_empty()
        ));
        assert!(matches!(parse(&["info"]).unwrap(), Command::Info));
        assert!(matches!(
            parse(&["dmesg", "-c"]).unwrap(),
            Command::Dmesg { clear: true }
        ));
        assert!(matches!(
            parse(&["dmesg"]).unwrap(),
            Command::Dmesg { clear: false }
        ));
        match parse(&[
            "create",
            "guest.cfg",
            "-c",
            "-n",
            "memory=256",
            "extra=\"console=hvc0\"",
        ])
        .unwrap()
        {
            Command::Create {
                file,
                console,
                foreground,
                dry_run,
                overrides,
            } => {
                assert_eq!(file, PathBuf::from("guest.cfg"));
                assert!(console && dry_run && !foreground);
                assert_eq!(overrides, ["memory=256", "extra=\"console=hvc0\""]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["create", "--dry-run", "g.cfg"]).unwrap(),
            Command::Create {
                dry_run: true,
                console: false,
                ..
            }
        ));
        assert!(matches!(
            parse(&["create", "-F", "g.cfg", "memory=64"]).unwrap(),
            Command::Create {
                foreground: true,
                console: false,
                ..
            }
        ));
        match parse(&["monitor", "3", "--", "g.cfg", "memory=64"]).unwrap() {
            Command::Monitor {
                domain,
                file,
                overrides,
            } => {
                assert_eq!(domain, DomainRef::Id(3));
                assert_eq!(file, PathBuf::from("g.cfg"));
                assert_eq!(overrides, ["memory=64"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(parse(&["console", "3"]).unwrap(), Command::Console { domain } if domain == DomainRef::Id(3))
        );
        assert!(
            matches!(parse(&["pause", "web1"]).unwrap(), Command::Pause { domain } if domain == name("web1"))
        );
        assert!(matches!(
            parse(&["unpause", "web1"]).unwrap(),
            Command::Unpause { .. }
        ));
        assert!(matches!(
            parse(&["shutdown", "-w", "web1"]).unwrap(),
            Command::Shutdown { wait: true, .. }
        ));
        assert!(matches!(
            parse(&["shutdown", "--wait", "web1"]).unwrap(),
            Command::Shutdown { wait: true, .. }
        ));
        assert!(matches!(
            parse(&["reboot", "web1"]).unwrap(),
            Command::Reboot { .. }
        ));
        assert!(
            matches!(parse(&["destroy", "7"]).unwrap(), Command::Destroy { domain } if domain == DomainRef::Id(7))
        );
        assert!(matches!(
            parse(&["mem-set", "web1", "256m"]).unwrap(),
            Command::MemSet { mem: MemSize(b), .. } if b == 256 << 20
        ));
        assert!(matches!(
            parse(&["mem-set", "web1", "512"]).unwrap(),
            Command::MemSet { mem: MemSize(b), .. } if b == 512 << 20
        ));
        assert!(matches!(
            parse(&["vcpu-list"]).unwrap(),
            Command::VcpuList { domain: None }
        ));
        assert!(matches!(
            parse(&["vcpu-list", "web1"]).unwrap(),
            Command::VcpuList { domain: Some(_) }
        ));
        assert!(matches!(
            parse(&["uptime"]).unwrap(),
            Command::Uptime { domain: None }
        ));
        assert!(matches!(
            parse(&["network-attach", "web1", "mac=00:16:3e:00:00:01", "bridge=xenbr0"]).unwrap(),
            Command::NetworkAttach { domain, settings } if domain == name("web1") && settings.len() == 2
        ));
        assert!(matches!(
            parse(&["network-attach", "web1"]).unwrap(),
            Command::NetworkAttach { settings, .. } if settings.is_empty()
        ));
        assert!(matches!(
            parse(&["network-detach", "web1", "00:16:3e:00:00:01"]).unwrap(),
            Command::NetworkDetach { force: false, device, .. } if device == "00:16:3e:00:00:01"
        ));
        assert!(matches!(
            parse(&["network-list", "web1", "3"]).unwrap(),
            Command::NetworkList { domains } if domains.len() == 2
        ));
        assert!(matches!(
            parse(&["block-attach", "web1", "phy:vda2,xvdb,w"]).unwrap(),
            Command::BlockAttach { spec, .. } if spec == ["phy:vda2,xvdb,w"]
        ));
        assert!(matches!(
            parse(&["block-detach", "--force", "web1", "xvdb"]).unwrap(),
            Command::BlockDetach { force: true, device, .. } if device == "xvdb"
        ));
        assert!(matches!(
            parse(&["block-list", "web1"]).unwrap(),
            Command::BlockList { .. }
        ));
        assert!(matches!(parse(&["disk-list"]).unwrap(), Command::DiskList));
        assert!(matches!(
            parse(&["switch", "--json"]).unwrap(),
            Command::Switch { json: true }
        ));
    }

    #[test]
    fn usage_errors_exit_2() {
        for bad in [
            &["frobnicate"][..],
            &["pause"],
            &["mem-set", "web1", "12x"],
            &["mem-set", "web1"],
            &["destroy", "99999"],
            &["create"],
            &["list", "--colour"],
            &["create", "-F", "-c", "g.cfg"],
            &["network-list"],
            &["block-list"],
            &["block-attach", "web1"],
            &["block-detach", "web1"],
            &["network-detach", "web1"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
        let e = parse(&["mem-set", "web1", "12x"]).unwrap_err().to_string();
        assert!(e.contains("'12x' is not a size"), "{e}");
    }

    #[test]
    fn help_everywhere() {
        let e = parse(&["--help"]).unwrap_err();
        assert_eq!((e.kind(), e.exit_code()), (ErrorKind::DisplayHelp, 0));
        let help = e.to_string();
        for cmd in [
            "list",
            "info",
            "dmesg",
            "create",
            "console",
            "pause",
            "unpause",
            "shutdown",
            "reboot",
            "destroy",
            "mem-set",
            "vcpu-list",
            "uptime",
            "network-attach",
            "network-detach",
            "network-list",
            "block-attach",
            "block-detach",
            "block-list",
            "disk-list",
            "switch",
        ] {
            assert!(
                help.contains(&format!("  {cmd} ")),
                "{cmd} missing from:\n{help}"
            );
            let e = parse(&[cmd, "--help"]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::DisplayHelp, "{cmd}");
        }
        let v = parse(&["--version"]).unwrap_err();
        assert_eq!((v.kind(), v.exit_code()), (ErrorKind::DisplayVersion, 0));
        let interface = format!(
            "(control interface v{})",
            ferrovisor_abi::domctl::FV_CONTROL_INTERFACE_VERSION
        );
        assert!(v.to_string().contains(&interface), "{v}");
    }
}
