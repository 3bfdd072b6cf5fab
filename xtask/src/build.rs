//! Building the hypervisor image and the files GRUB loads: `ferrovisor.gz` (the gzipped
//! ELF, as Xen ships `xen.gz`), placeholder boot modules, and the project's PV test
//! kernels (`tests/kernels/`), which the integration tests boot as dom0.

use std::{
    collections::BTreeMap,
    env,
    fs::{self, File},
    io::{BufWriter, Read, Write},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context};
use flate2::{write::GzEncoder, Compression};

use crate::deps::HYPERVISOR_TARGET;

/// The hypervisor's cargo package (and binary) name.
pub const HYPERVISOR_PACKAGE: &str = "ferrovisor";

/// The PV test kernels' cargo package; each of its binaries (`src/bin/<name>.rs`) is one
/// kernel.
pub const TEST_KERNELS_PACKAGE: &str = "pv-test-kernels";

/// The multiboot2 header magic (Multiboot2 spec, 3.1.1): GRUB looks for it, 8-byte
/// aligned, within the image's first 32 KiB.
const MULTIBOOT2_HEADER_MAGIC: u32 = 0xe852_50d6;
const MULTIBOOT2_SEARCH_BYTES: usize = 32 * 1024;

/// Placeholder modules are padded to one page so that their reported size is exact
/// (4 KiB) whichever way the hypervisor rounds.
pub const PLACEHOLDER_SIZE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Release,
    Debug,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

/// What `build` produced, all under `target/ferrovisor/` except the ELF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifacts {
    /// The linked hypervisor, `target/x86_64-unknown-none/<profile>/ferrovisor`.
    pub elf: PathBuf,
    /// `target/ferrovisor/ferrovisor.gz`, what GRUB's `multiboot2` line loads.
    pub gz: PathBuf,
    /// `target/ferrovisor/dom0-placeholder.bin`, the first `module2` (dom0's kernel).
    pub dom0_placeholder: PathBuf,
    /// `target/ferrovisor/initrd-placeholder.bin`, the second `module2` (dom0's initrd).
    pub initrd_placeholder: PathBuf,
}

/// Where `build` writes its outputs.
pub fn output_dir() -> PathBuf {
    crate::target_dir().join("ferrovisor")
}

/// `$CARGO` (set when we run under cargo) or `cargo`.
pub fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Builds the hypervisor for `x86_64-unknown-none` and packages it (see [`package`]).
pub fn build(profile: Profile) -> anyhow::Result<Artifacts> {
    let mut cmd = cargo();
    cmd.current_dir(crate::workspace_root()).args([
        "build",
        "-p",
        HYPERVISOR_PACKAGE,
        "--target",
        HYPERVISOR_TARGET,
    ]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    crate::run(&mut cmd).context("building the hypervisor")?;
    let elf = crate::target_dir()
        .join(HYPERVISOR_TARGET)
        .join(profile.dir())
        .join(HYPERVISOR_PACKAGE);
    package(&elf)
}

/// The PV test kernels' names: the binaries of `tests/kernels/src/bin/`, sorted.
pub fn test_kernel_names() -> anyhow::Result<Vec<String>> {
    let dir = crate::workspace_root().join("tests/kernels/src/bin");
    let entries = fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|ext| ext == "rs") {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                names.push(stem.to_owned());
            }
        }
    }
    names.sort();
    ensure!(!names.is_empty(), "no test kernels in {}", dir.display());
    Ok(names)
}

/// Builds the PV test kernels for `x86_64-unknown-none` and returns each kernel's ELF,
/// `target/x86_64-unknown-none/<profile>/<name>`, by name.
/// The target `fv` is built for: a static binary that runs in any Linux dom0.
pub const FV_TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds `fv` (crate `dom0-tools`) for [`FV_TARGET`], release; returns the binary.
pub fn fv() -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.current_dir(crate::workspace_root()).args([
        "build",
        "-p",
        "dom0-tools",
        "--bin",
        "fv",
        "--target",
        FV_TARGET,
        "--release",
    ]);
    crate::run(&mut cmd).context("building fv")?;
    let bin = crate::target_dir()
        .join(FV_TARGET)
        .join("release")
        .join("fv");
    ensure!(bin.is_file(), "building fv left no {}", bin.display());
    Ok(bin)
}

/// Builds `fvbench` (crate `guest-bench`, the device bench's measuring program) for
/// [`FV_TARGET`], release; returns the binary.
pub fn guest_bench() -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    // Without debug info: it rides in initramfs images that live in a guest's memory.
    cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true");
    cmd.current_dir(crate::workspace_root()).args([
        "build",
        "-p",
        "guest-bench",
        "--bin",
        "fvbench",
        "--target",
        FV_TARGET,
        "--release",
    ]);
    crate::run(&mut cmd).context("building fvbench")?;
    let bin = crate::target_dir()
        .join(FV_TARGET)
        .join("release")
        .join("fvbench");
    ensure!(bin.is_file(), "building fvbench left no {}", bin.display());
    Ok(bin)
}

pub fn test_kernels(profile: Profile) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let names = test_kernel_names()?;
    let mut cmd = cargo();
    cmd.current_dir(crate::workspace_root()).args([
        "build",
        "-p",
        TEST_KERNELS_PACKAGE,
        "--bins",
        "--target",
        HYPERVISOR_TARGET,
    ]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    crate::run(&mut cmd).context("building the PV test kernels")?;
    let dir = crate::target_dir()
        .join(HYPERVISOR_TARGET)
        .join(profile.dir());
    let mut kernels = BTreeMap::new();
    for name in names {
        let elf = dir.join(&name);
        let header = fs::read(&elf)
            .with_context(|| format!("test kernel {name}: cannot read {}", elf.display()))?;
        ensure!(
            header.len() >= 64 && header[..4] == *b"\x7fELF" && header[4] == 2,
            "test kernel {name}: {} is not an ELF64 image",
            elf.display()
        );
        kernels.insert(name, elf);
    }
    Ok(kernels)
}

/// Checks that `elf` is an ELF64 image with a multiboot2 header, gzips it to
/// `target/ferrovisor/ferrovisor.gz` and writes the placeholder modules.
pub fn package(elf: &Path) -> anyhow::Result<Artifacts> {
    let image = fs::read(elf).with_context(|| format!("cannot read {}", elf.display()))?;
    check_image(&image).with_context(|| format!("{} is not a bootable image", elf.display()))?;

    let dir = output_dir();
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let gz = dir.join("ferrovisor.gz");
    write_atomically(&gz, |file| {
        let mut encoder = GzEncoder::new(BufWriter::new(file), Compression::default());
        encoder.write_all(&image)?;
        encoder.finish()?.flush()
    })?;

    let dom0_placeholder = dir.join("dom0-placeholder.bin");
    write_placeholder(
        &dom0_placeholder,
        "Ferrovisor placeholder dom0 kernel (foundation stage).\n\
         This is not a kernel: GRUB loads it as the first module2 so that the hypervisor\n\
         can find, measure and report its dom0 kernel module before dom0 exists.\n",
    )?;
    let initrd_placeholder = dir.join("initrd-placeholder.bin");
    write_placeholder(
        &initrd_placeholder,
        "Ferrovisor placeholder dom0 initrd (foundation stage).\n\
         This is not an initramfs: GRUB loads it as the second module2.\n",
    )?;

    Ok(Artifacts {
        elf: elf.to_path_buf(),
        gz,
        dom0_placeholder,
        initrd_placeholder,
    })
}

/// Catches the two mistakes GRUB would only report as a terse error on the serial line.
fn check_image(image: &[u8]) -> anyhow::Result<()> {
    ensure!(
        image.len() >= 64 && image[..4] == *b"\x7fELF",
        "no ELF header"
    );
    ensure!(
        image[4] == 2,
        "not an ELF64 image (EI_CLASS = {})",
        image[4]
    );
    let window = &image[..image.len().min(MULTIBOOT2_SEARCH_BYTES)];
    let found = window
        .chunks_exact(8)
        .any(|chunk| chunk[..4] == MULTIBOOT2_HEADER_MAGIC.to_le_bytes());
    if !found {
        bail!("no multiboot2 header (magic {MULTIBOOT2_HEADER_MAGIC:#x}, 8-byte aligned) in its first 32 KiB");
    }
    Ok(())
}

fn write_placeholder(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut content = text.as_bytes().to_vec();
    content.resize(PLACEHOLDER_SIZE.max(content.len()), 0);
    write_atomically(path, |file| file.write_all(&content))
}

/// Writes through a temporary file and renames it, so that a concurrent reader (another
/// test process making an ISO) never sees a half-written file.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = File::create(&tmp).and_then(|mut file| {
        write(&mut file)?;
        file.sync_all()
    });
    result
        .and_then(|()| fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()))
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
}

/// Reads a gzip file back (for tests and checks).
pub fn gunzip(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut out)
        .with_context(|| format!("cannot gunzip {}", path.display()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_elf(header_at: usize) -> Vec<u8> {
        let mut image = vec![0u8; 40 * 1024];
        image[..4].copy_from_slice(b"\x7fELF");
        image[4] = 2;
        image[header_at..header_at + 4].copy_from_slice(&MULTIBOOT2_HEADER_MAGIC.to_le_bytes());
        image
    }

    #[test]
    fn accepts_elf64_with_multiboot2_header() {
        assert!(check_image(&fake_elf(0x1000)).is_ok());
    }

    #[test]
    fn rejects_header_past_32k_or_misaligned() {
        assert!(check_image(&fake_elf(33 * 1024)).is_err());
        assert!(check_image(&fake_elf(0x1004)).is_err());
    }

    #[test]
    fn test_kernels_are_the_bins() {
        let names = test_kernel_names().unwrap();
        assert!(names.iter().any(|n| n == "hello"), "{names:?}");
        assert!(names.iter().any(|n| n == "hypercall_page"), "{names:?}");
    }

    #[test]
    fn rejects_elf32_and_non_elf() {
        let mut image = fake_elf(0x1000);
        image[4] = 1;
        assert!(check_image(&image).is_err());
        assert!(
            check_image(b"MZ not an elf at all, but long enough to have a header....").is_err()
        );
    }
}
