//! The host tools and rustup targets that building, packaging and booting need, checked
//! before `run`, `iso` and `test`, and installed when we can (Debian's `apt-get` as root,
//! `rustup target add`).

use std::{
    env,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

/// Something on the host that a Debian package provides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// An executable found on `$PATH`.
    Program(&'static str),
    /// A directory that must exist.
    Dir(&'static str),
}

/// One host requirement and the Debian package that provides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tool {
    pub probe: Probe,
    pub package: &'static str,
    /// What it is used for, for messages.
    pub purpose: &'static str,
}

/// The host tools the ISO and QEMU steps need.
pub const TOOLS: &[Tool] = &[
    Tool {
        probe: Probe::Program("qemu-system-x86_64"),
        package: "qemu-system-x86",
        purpose: "boots the ISO",
    },
    Tool {
        probe: Probe::Program("grub-mkrescue"),
        package: "grub-common",
        purpose: "makes the GRUB rescue ISO",
    },
    Tool {
        probe: Probe::Program("xorriso"),
        package: "xorriso",
        purpose: "writes the ISO image for grub-mkrescue",
    },
    Tool {
        probe: Probe::Program("mformat"),
        package: "mtools",
        purpose: "writes the El Torito image for grub-mkrescue",
    },
    Tool {
        probe: Probe::Program("cc"),
        package: "gcc",
        purpose: "links build scripts and host tools (rustc calls it as the linker)",
    },
    Tool {
        probe: Probe::Dir("/usr/lib/grub/i386-pc"),
        package: "grub-pc-bin",
        purpose: "GRUB's BIOS modules, which the ISO boots with",
    },
    Tool {
        probe: Probe::Program("mkfs.ext4"),
        package: "e2fsprogs",
        purpose: "makes the ext4 filesystems of the vbd tests' disk images",
    },
];

/// The hypervisor's (and the PV test kernels') target.
pub const HYPERVISOR_TARGET: &str = "x86_64-unknown-none";
/// The static `fv` toolstack's target.
pub const DOM0_TOOLS_TARGET: &str = "x86_64-unknown-linux-musl";
/// Every rustup target the workspace builds for, besides the host.
pub const TARGETS: &[&str] = &[HYPERVISOR_TARGET, DOM0_TOOLS_TARGET];

impl Tool {
    pub fn is_present(&self) -> bool {
        match self.probe {
            Probe::Program(name) => find_program(name).is_some(),
            Probe::Dir(dir) => Path::new(dir).is_dir(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self.probe {
            Probe::Program(name) | Probe::Dir(name) => name,
        }
    }
}

/// Looks `name` up on `$PATH` as `sh` would.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The tools of [`TOOLS`] that are missing.
pub fn missing_tools() -> Vec<Tool> {
    TOOLS.iter().copied().filter(|t| !t.is_present()).collect()
}

/// The Debian packages that provide the missing tools, without duplicates.
pub fn packages_for(tools: &[Tool]) -> Vec<&'static str> {
    let mut packages: Vec<&'static str> = Vec::new();
    for tool in tools {
        if !packages.contains(&tool.package) {
            packages.push(tool.package);
        }
    }
    packages
}

/// The targets of `targets` whose standard library is not installed in the active toolchain.
///
/// Looks in `rustc --print sysroot` rather than asking rustup, so that it also answers for a
/// toolchain rustup does not manage.
pub fn missing_targets(targets: &[&'static str]) -> anyhow::Result<Vec<&'static str>> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .with_context(|| format!("cannot run `{} --print sysroot`", rustc.to_string_lossy()))?;
    if !out.status.success() {
        bail!(
            "`rustc --print sysroot` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(targets
        .iter()
        .copied()
        .filter(|t| !sysroot.join("lib/rustlib").join(t).join("lib").is_dir())
        .collect())
}

/// The `apt-get install` line for `packages`.
pub fn apt_install_command(packages: &[&str]) -> String {
    format!(
        "apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    )
}

/// The `rustup target add` line for `targets`.
pub fn rustup_command(targets: &[&str]) -> String {
    format!("rustup target add {}", targets.join(" "))
}

/// Checks, without installing anything, that the QEMU integration tests can run: the host
/// tools and the hypervisor's target. The error names what to install.
pub fn require_for_qemu_tests() -> anyhow::Result<()> {
    let tools = missing_tools();
    let targets = missing_targets(&[HYPERVISOR_TARGET])?;
    if tools.is_empty() && targets.is_empty() {
        return Ok(());
    }
    let mut msg = String::from("the QEMU integration tests need what this machine lacks:\n");
    for tool in &tools {
        msg.push_str(&format!(
            "  - {} ({}), from the Debian package {}\n",
            tool.name(),
            tool.purpose,
            tool.package
        ));
    }
    for target in &targets {
        msg.push_str(&format!("  - the Rust target {target}\n"));
    }
    msg.push_str("install them with `cargo xtask deps`, or:\n");
    if !tools.is_empty() {
        msg.push_str(&format!(
            "  sudo {}\n",
            apt_install_command(&packages_for(&tools))
        ));
    }
    if !targets.is_empty() {
        msg.push_str(&format!("  {}\n", rustup_command(&targets)));
    }
    bail!("{}", msg.trim_end())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Checks every requirement and installs what is missing: Debian packages with `apt-get`
/// when running as root (otherwise it prints the `sudo` line and fails), rustup targets with
/// `rustup target add`.
pub fn ensure() -> anyhow::Result<()> {
    let tools = missing_tools();
    if tools.is_empty() {
        eprintln!("deps: host tools present (qemu-system-x86_64, grub-mkrescue, xorriso, mformat, GRUB i386-pc modules, mkfs.ext4)");
    } else {
        let packages = packages_for(&tools);
        for tool in &tools {
            eprintln!(
                "deps: missing {} ({}), from the Debian package {}",
                tool.name(),
                tool.purpose,
                tool.package
            );
        }
        if find_program("apt-get").is_none() {
            bail!(
                "no apt-get on this machine: install the equivalents of the Debian packages {}",
                packages.join(" ")
            );
        }
        if !is_root() {
            bail!(
                "install the missing packages, then run this again:\n  sudo {}",
                apt_install_command(&packages)
            );
        }
        crate::run(Command::new("apt-get").arg("update"))?;
        crate::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&packages),
        )?;
        let still_missing = missing_tools();
        if !still_missing.is_empty() {
            let names: Vec<_> = still_missing.iter().map(Tool::name).collect();
            bail!("still missing after apt-get install: {}", names.join(", "));
        }
    }

    let targets = missing_targets(TARGETS)?;
    if targets.is_empty() {
        eprintln!("deps: rust targets present ({})", TARGETS.join(", "));
    } else {
        eprintln!("deps: missing rust targets {}", targets.join(", "));
        if find_program("rustup").is_none() {
            bail!(
                "no rustup on this machine: install the standard libraries of {} for the active toolchain",
                targets.join(", ")
            );
        }
        crate::run(
            Command::new("rustup")
                .args(["target", "add"])
                .args(&targets),
        )?;
        let still_missing = missing_targets(TARGETS)?;
        if !still_missing.is_empty() {
            bail!(
                "still missing after rustup: {}; try `{}`",
                still_missing.join(", "),
                rustup_command(&still_missing)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_are_listed_once_in_order() {
        let tools = [TOOLS[2], TOOLS[0], TOOLS[2]];
        assert_eq!(packages_for(&tools), ["xorriso", "qemu-system-x86"]);
    }

    #[test]
    fn finds_sh_on_path() {
        assert!(find_program("sh").is_some());
        assert!(find_program("no-such-program-ferrovisor").is_none());
    }
}
