//! Raw disk images for the vbd tests: an MBR partition table written here (two primary
//! partitions, 1 MiB-aligned, type 0x83), and an ext4 filesystem on partition 2 made by
//! `mkfs.ext4 -d DIR -E offset=BYTES` (e2fsprogs; no root, no loop devices). Images are
//! rebuilt only when the size or the files change (a stamp beside the image).
//!
//! The MBR format (the classic IBM PC layout): 446 bytes of boot code, four 16-byte
//! entries (boot flag, CHS start, type, CHS end, LBA start, sector count, little-endian),
//! then 0x55 0xAA.

use std::{
    fs::{self, File},
    io::{Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    process::Command,
    time::UNIX_EPOCH,
};

use anyhow::{bail, ensure, Context};

use crate::deps::find_program;

/// Bytes in a sector.
pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries (what fdisk and parted do).
pub const ALIGN_SECTORS: u64 = 2048;
/// The partition type written (Linux).
pub const TYPE_LINUX: u8 = 0x83;

/// One primary partition, in 512-byte sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionLayout {
    /// 1..=4.
    pub number: u32,
    pub start_sector: u64,
    pub sectors: u64,
}

impl PartitionLayout {
    pub fn offset_bytes(&self) -> u64 {
        self.start_sector * SECTOR
    }
    pub fn size_bytes(&self) -> u64 {
        self.sectors * SECTOR
    }
}

/// An image made by [`partitioned`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskImage {
    pub path: PathBuf,
    /// The whole image, 512-byte sectors.
    pub sectors: u64,
    /// Partition 1 (empty) and partition 2 (ext4 with the files).
    pub partitions: Vec<PartitionLayout>,
}

/// Where test images live: `target/disks/NAME`.
pub fn cache_path(name: &str) -> PathBuf {
    crate::target_dir().join("disks").join(name)
}

/// The two-partition layout of a `size_mib` disk: partition 1 takes a quarter (at least
/// 1 MiB) from 1 MiB, partition 2 the rest, both 1 MiB-aligned.
pub fn layout(size_mib: u64) -> anyhow::Result<[PartitionLayout; 2]> {
    ensure!(size_mib >= 8, "a partitioned image needs at least 8 MiB");
    let total = size_mib * 1024 * 1024 / SECTOR;
    ensure!(total <= u64::from(u32::MAX), "MBR addresses at most 2 TiB");
    let p1_sectors = (size_mib / 4).max(1) * ALIGN_SECTORS;
    let p2_start = ALIGN_SECTORS + p1_sectors;
    Ok([
        PartitionLayout {
            number: 1,
            start_sector: ALIGN_SECTORS,
            sectors: p1_sectors,
        },
        PartitionLayout {
            number: 2,
            start_sector: p2_start,
            sectors: total - p2_start,
        },
    ])
}

/// A CHS triple for an LBA (255 heads, 63 sectors a track), or the "use LBA" value
/// 1023/254/63 when the cylinder does not fit.
fn chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SPT: u64 = 63;
    let cylinder = lba / (HEADS * SPT);
    if cylinder > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let head = (lba / SPT) % HEADS;
    let sector = lba % SPT + 1;
    [
        head as u8,
        (sector as u8) | (((cylinder >> 8) as u8) << 6),
        cylinder as u8,
    ]
}

/// The MBR sector for up to four primary partitions (type 0x83, none bootable) with
/// the disk signature `signature`.
pub fn mbr_sector(partitions: &[PartitionLayout], signature: u32) -> anyhow::Result<[u8; 512]> {
    ensure!(
        partitions.len() <= 4,
        "an MBR holds four primary partitions"
    );
    let mut s = [0u8; 512];
    s[440..444].copy_from_slice(&signature.to_le_bytes());
    for p in partitions {
        ensure!((1..=4).contains(&p.number), "primary partitions are 1..=4");
        let start = u32::try_from(p.start_sector).context("partition start beyond 2 TiB")?;
        let len = u32::try_from(p.sectors).context("partition size beyond 2 TiB")?;
        ensure!(len > 0, "empty partition {}", p.number);
        let e = &mut s[446 + 16 * (p.number as usize - 1)..][..16];
        e[0] = 0;
        e[1..4].copy_from_slice(&chs(p.start_sector));
        e[4] = TYPE_LINUX;
        e[5..8].copy_from_slice(&chs(p.start_sector + p.sectors - 1));
        e[8..12].copy_from_slice(&start.to_le_bytes());
        e[12..16].copy_from_slice(&len.to_le_bytes());
    }
    s[510] = 0x55;
    s[511] = 0xaa;
    Ok(s)
}

/// What the stamp records: the size and every file's path, length and mtime.
fn stamp_text(size_mib: u64, files_dir: &Path) -> anyhow::Result<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let meta = e.metadata()?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let rel = path
                .strip_prefix(base)
                .unwrap_or(&path)
                .display()
                .to_string();
            out.push(format!("{rel} {} {mtime}", meta.len()));
            if meta.is_dir() {
                walk(&path, base, out)?;
            }
        }
        Ok(())
    }
    let mut lines = vec![format!("size {size_mib} MiB, layout v1")];
    walk(files_dir, files_dir, &mut lines)?;
    Ok(lines.join("\n"))
}

/// An e2fsprogs program (`mkfs.ext4`, `debugfs`, `e2fsck`): on `PATH`, or in `/usr/sbin`
/// or `/sbin`, which a non-root `PATH` often lacks.
pub fn e2fsprogs(name: &str) -> anyhow::Result<PathBuf> {
    find_program(name)
        .or_else(|| {
            ["/usr/sbin", "/sbin"]
                .into_iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
        })
        .with_context(|| format!("{name} not found: install e2fsprogs (`cargo xtask deps`)"))
}

fn mkfs_ext4() -> anyhow::Result<PathBuf> {
    e2fsprogs("mkfs.ext4")
}

impl DiskImage {
    /// Partition `number`'s layout.
    pub fn partition(&self, number: u32) -> anyhow::Result<PartitionLayout> {
        self.partitions
            .iter()
            .copied()
            .find(|p| p.number == number)
            .with_context(|| format!("{} has no partition {number}", self.path.display()))
    }

    /// The bytes of partition `number`, read from the image file as it is now.
    pub fn partition_bytes(&self, number: u32) -> anyhow::Result<Vec<u8>> {
        let p = self.partition(number)?;
        let whole =
            fs::read(&self.path).with_context(|| format!("cannot read {}", self.path.display()))?;
        let start = usize::try_from(p.offset_bytes())?;
        let end = usize::try_from(p.offset_bytes() + p.size_bytes())?;
        whole.get(start..end).map(<[u8]>::to_vec).with_context(|| {
            format!(
                "{} is shorter than its partition table",
                self.path.display()
            )
        })
    }

    /// Copies partition `number` out to `out` (for tools that take a filesystem image,
    /// not a partitioned disk: `debugfs`, `e2fsck`).
    pub fn extract_partition(&self, number: u32, out: &Path) -> anyhow::Result<()> {
        let bytes = self.partition_bytes(number)?;
        fs::write(out, bytes).with_context(|| format!("cannot write {}", out.display()))
    }
}

/// `debugfs -R REQUEST FS` on an ext2/3/4 image, read-only: what it prints on stdout.
pub fn debugfs(fs_image: &Path, request: &str) -> anyhow::Result<String> {
    let out = Command::new(e2fsprogs("debugfs")?)
        .args(["-R", request])
        .arg(fs_image)
        .output()
        .context("cannot run debugfs")?;
    ensure!(
        out.status.success(),
        "debugfs -R {request:?} {}: {}\n{}",
        fs_image.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `e2fsck -f -n FS` (a full check that changes nothing): its exit status (0 means
/// clean, 4 uncorrected errors, see e2fsck(8)) and everything it printed.
pub fn e2fsck_readonly(fs_image: &Path) -> anyhow::Result<(i32, String)> {
    let out = Command::new(e2fsprogs("e2fsck")?)
        .args(["-f", "-n"])
        .arg(fs_image)
        .output()
        .context("cannot run e2fsck")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), text))
}

/// Makes (or reuses) a `size_mib` raw image at `path` with the MBR of [`layout`] and an
/// ext4 filesystem holding `files_dir`'s contents on partition 2.
pub fn partitioned(path: &Path, size_mib: u64, files_dir: &Path) -> anyhow::Result<DiskImage> {
    let parts = layout(size_mib)?;
    let image = DiskImage {
        path: path.to_path_buf(),
        sectors: size_mib * 1024 * 1024 / SECTOR,
        partitions: parts.to_vec(),
    };
    let stamp_path = path.with_extension("stamp");
    let stamp = stamp_text(size_mib, files_dir)?;
    if path.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(image);
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let _ = fs::remove_file(&stamp_path);
    let tmp = path.with_extension("partial");
    {
        let mut f =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.set_len(size_mib * 1024 * 1024)?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&mbr_sector(&parts, 0x4656_4d42)?)?;
        f.sync_all()?;
    }
    let p2 = parts[1];
    let mut cmd = Command::new(mkfs_ext4()?);
    cmd.args(["-q", "-F", "-L", "fvdata", "-d"])
        .arg(files_dir)
        .arg("-E")
        .arg(format!("offset={}", p2.offset_bytes()))
        .arg(&tmp)
        .arg(format!("{}k", p2.size_bytes() / 1024));
    crate::run(&mut cmd)?;
    let len = fs::metadata(&tmp)?.len();
    if len != size_mib * 1024 * 1024 {
        bail!("mkfs.ext4 changed the image's size to {len} bytes");
    }
    fs::rename(&tmp, path)?;
    fs::write(&stamp_path, stamp)?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the four entries back, independently of the writer.
    fn parse(s: &[u8; 512]) -> Vec<(u8, u8, u32, u32)> {
        assert_eq!(&s[510..], &[0x55, 0xaa]);
        (0..4)
            .map(|i| {
                let e = &s[446 + 16 * i..][..16];
                let le = |o: usize| u32::from_le_bytes(e[o..o + 4].try_into().unwrap());
                (e[0], e[4], le(8), le(12))
            })
            .collect()
    }

    #[test]
    fn the_layout_is_aligned_and_fills_the_disk() {
        let [p1, p2] = layout(64).unwrap();
        assert_eq!((p1.start_sector, p1.sectors), (2048, 16 * 2048));
        assert_eq!(p2.start_sector % ALIGN_SECTORS, 0);
        assert_eq!(p2.start_sector + p2.sectors, 64 * 2048);
        assert!(layout(4).is_err());
    }

    #[test]
    fn the_mbr_reads_back() {
        let parts = layout(64).unwrap();
        let s = mbr_sector(&parts, 1).unwrap();
        assert_eq!(
            parse(&s),
            [
                (0, 0x83, 2048, 32768),
                (0, 0x83, 34816, 96256),
                (0, 0, 0, 0),
                (0, 0, 0, 0)
            ]
        );
        // CHS of LBA 2048 with 255/63 geometry: cylinder 0, head 32, sector 33.
        assert_eq!(&s[447..450], &[32, 33, 0]);
        assert!(mbr_sector(
            &[PartitionLayout {
                number: 5,
                start_sector: 1,
                sectors: 1
            }],
            0
        )
        .is_err());
    }

    #[test]
    fn a_partitioned_image_has_the_files_on_partition_2() {
        if mkfs_ext4().is_err() {
            eprintln!("skipped: no mkfs.ext4 (e2fsprogs)");
            return;
        }
        let dir = crate::target_dir().join("disk-image-test");
        let files = dir.join("files");
        fs::create_dir_all(files.join("sub")).unwrap();
        fs::write(files.join("hello.txt"), "hello from the vbd\n").unwrap();
        fs::write(files.join("sub/data.bin"), [7u8; 5000]).unwrap();
        let path = dir.join("disk.img");
        let img = partitioned(&path, 16, &files).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 16 << 20);
        let mut mbr = [0u8; 512];
        mbr.copy_from_slice(&fs::read(&path).unwrap()[..512]);
        let entries = parse(&mbr);
        for p in &img.partitions {
            let e = entries[p.number as usize - 1];
            assert_eq!(
                (u64::from(e.2), u64::from(e.3)),
                (p.start_sector, p.sectors)
            );
        }
        // A second call with the same inputs reuses the image.
        let before = fs::metadata(&path).unwrap().modified().unwrap();
        partitioned(&path, 16, &files).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), before);

        if let Some(sfdisk) = find_program("sfdisk") {
            let out = Command::new(sfdisk).arg("-d").arg(&path).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("start=        2048"), "{text}");
        }
        // The filesystem, cut out of the image, holds the files.
        let p2 = img.partitions[1];
        let whole = fs::read(&path).unwrap();
        let part = dir.join("p2.img");
        fs::write(
            &part,
            &whole[p2.offset_bytes() as usize..(p2.offset_bytes() + p2.size_bytes()) as usize],
        )
        .unwrap();
        let debugfs = find_program("debugfs")
            .or_else(|| Some(PathBuf::from("/usr/sbin/debugfs")).filter(|p| p.is_file()));
        if let Some(debugfs) = debugfs {
            let out = Command::new(debugfs)
                .args(["-R", "cat /hello.txt"])
                .arg(&part)
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from the vbd\n");
        }
        // Partition 1 is untouched by mkfs.
        let p1 = img.partitions[0];
        assert!(whole[p1.offset_bytes() as usize..][..4096]
            .iter()
            .all(|&b| b == 0));
    }
}
