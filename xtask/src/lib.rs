//! Ferrovisor's developer tasks, as a library so that the QEMU integration tests
//! (`tests/`) build, package and boot the hypervisor exactly as `cargo xtask` does.
//!
//! - [`deps`]: the host tools and rustup targets the other steps need, and installing them.
//! - [`disk_image`]: partitioned raw disk images (MBR, ext4 with given files) for the vbd tests.
//! - [`build`]: the hypervisor image (`ferrovisor.gz`) and the placeholder boot modules.
//! - [`iso`]: the GRUB rescue ISO with a real `grub.cfg` multiboot2 entry.
//! - [`xen`]: Xen 4.17 from Debian's package, the reference the test kernels also boot on.
//! - [`qemu`]: the QEMU command line, and a [`qemu::Session`] that reads the serial log.
//! - [`bench`]: `cargo xtask bench`, the benchmark kernel's figures as a table.
//! - [`stress`]: `cargo xtask stress`, long fuzzer runs and repeated Linux boots.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

pub mod bench;
pub mod bench_devices;
pub mod bench_linux;
pub mod build;
pub mod debian;
pub mod deps;
pub mod disk_image;
pub mod initramfs;
pub mod iso;
pub mod linux;
pub mod qemu;
pub mod shell;
pub mod stress;
pub mod testrun;
pub mod xen;
pub mod xen_xl;

/// The workspace root (the directory holding the workspace `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ is a directory inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` when set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// Renders a command as a shell-like line, for "what we run" messages.
pub fn display_command(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        line.push(' ');
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || "'\"$\\;&|".contains(c)) {
            line.push('\'');
            line.push_str(&arg.replace('\'', r"'\''"));
            line.push('\'');
        } else {
            line.push_str(&arg);
        }
    }
    line
}

/// Prints `$ <command>` to stderr, runs it with inherited stdio and fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let line = display_command(cmd);
    eprintln!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}
