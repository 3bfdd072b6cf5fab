//! Debian packages the tooling needs but the repository never holds (Xen 4.17 for the
//! comparison runs, the Linux kernel and busybox for dom0): fetched with `apt-get
//! download`, unpacked with `dpkg-deb -x` in a private directory, and the wanted files
//! copied into a cache under `target/` with a rename, so that a reader sees no file or a
//! whole one even with concurrent fetches.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};

/// Downloads `package` and unpacks it; `take(root)` then copies what it needs out of the
/// unpacked tree `root` (it runs while the tree exists; the tree is removed afterwards).
/// `cache` is where the private work directory goes.
pub fn with_package<T>(
    package: &str,
    cache: &Path,
    take: impl FnOnce(&Path) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    for tool in ["apt-get", "dpkg-deb"] {
        if crate::deps::find_program(tool).is_none() {
            bail!("no `{tool}` on this machine: {package} comes from Debian's packages");
        }
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let work = cache.join(format!("fetch-{}-{nanos}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let result = download(package, &work).and_then(|deb| {
        let root = work.join("root");
        crate::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        eprintln!(
            "debian: unpacked {}",
            deb.file_name().unwrap_or_default().to_string_lossy()
        );
        take(&root)
    });
    let _ = fs::remove_dir_all(&work);
    result
}

fn download(package: &str, work: &Path) -> anyhow::Result<PathBuf> {
    let download = || {
        let mut cmd = Command::new("apt-get");
        cmd.args(["download", package]).current_dir(work);
        crate::run(&mut cmd)
    };
    if download().is_err() {
        // Most often the package lists were never fetched (a fresh container).
        if !is_root() {
            bail!(
                "`apt-get download {package}` failed; if apt does not know the package yet, \
                 run `sudo apt-get update` once and retry"
            );
        }
        eprintln!("debian: retrying after `apt-get update`");
        crate::run(Command::new("apt-get").arg("update"))?;
        download()?;
    }
    fs::read_dir(work)
        .with_context(|| format!("cannot list {}", work.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", work.display()))
}

/// Copies `from` to `to` through a file next to `to`, renamed into place.
pub fn install_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    let staged = to.with_extension(format!("part-{}", std::process::id()));
    fs::copy(from, &staged).with_context(|| format!("cannot copy {}", from.display()))?;
    fs::rename(&staged, to).with_context(|| format!("cannot write {}", to.display()))?;
    Ok(())
}

/// The package a metapackage such as `linux-image-amd64` stands for now (its first
/// dependency named `prefix…`), from apt's local package lists.
pub fn resolve(metapackage: &str, prefix: &str) -> anyhow::Result<String> {
    let query = || {
        Command::new("apt-cache")
            .args(["depends", "--no-recommends", "--no-suggests", metapackage])
            .output()
    };
    let mut out = query().context("cannot run apt-cache")?;
    if !out.status.success() && is_root() {
        crate::run(Command::new("apt-get").arg("update"))?;
        out = query().context("cannot run apt-cache")?;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with(prefix))
        .map(str::to_owned)
        .with_context(|| {
            format!(
                "apt does not say which package {metapackage} depends on; run `apt-get update` \
                 and retry"
            )
        })
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}
