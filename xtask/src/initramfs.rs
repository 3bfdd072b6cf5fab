//! A gzip-compressed `newc` cpio archive, the format Linux unpacks as its initramfs
//! (`Documentation/driver-api/early-userspace/buffer-format.rst`: a 110-byte ASCII
//! header per entry, name and data each padded to 4 bytes, ended by `TRAILER!!!`).

use std::io::Write;

use flate2::{write::GzEncoder, Compression};

/// One entry of the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// The uncompressed archive of `entries`, in order (a directory must come before what
/// it holds).
pub fn cpio(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ino, e) in entries.iter().enumerate() {
        let (path, mode, data): (&str, u32, &[u8]) = match e {
            Entry::Dir { path, mode } => (path, S_IFDIR | mode, &[]),
            Entry::File { path, mode, data } => (path, S_IFREG | mode, data),
            Entry::Symlink { path, target } => (path, S_IFLNK | 0o777, target.as_bytes()),
        };
        record(&mut out, ino as u32 + 1, mode, path, data);
    }
    record(&mut out, 0, 0, "TRAILER!!!", &[]);
    out
}

fn record(out: &mut Vec<u8>, ino: u32, mode: u32, name: &str, data: &[u8]) {
    let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        0, // rdevmajor
        0, // rdevminor
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The archive, gzip-compressed.
pub fn cpio_gz(entries: &[Entry]) -> anyhow::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&cpio(entries))?;
    Ok(gz.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_records_are_aligned_and_terminated() {
        let a = cpio(&[
            Entry::Dir {
                path: "bin".into(),
                mode: 0o755,
            },
            Entry::File {
                path: "bin/x".into(),
                mode: 0o755,
                data: b"hello".to_vec(),
            },
            Entry::Symlink {
                path: "bin/y".into(),
                target: "x".into(),
            },
        ]);
        assert_eq!(&a[..6], b"070701");
        assert_eq!(a.len() % 4, 0);
        // The directory's header: inode 1, mode 040755, name "bin" (4 bytes with NUL).
        assert_eq!(&a[6..14], b"00000001");
        assert_eq!(&a[14..22], b"000041ed");
        assert_eq!(&a[94..102], b"00000004");
        assert_eq!(&a[110..114], b"bin\0");
        // The file's data follows its header and name.
        let at = a.windows(5).position(|w| w == b"hello").unwrap();
        assert_eq!(at % 4, 0);
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("bin/y\0"));
        assert!(text.ends_with("TRAILER!!!\0\0\0\0") || text.contains("TRAILER!!!\0"));
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let entries = [Entry::File {
            path: "init".into(),
            mode: 0o755,
            data: b"#!/bin/sh\n".to_vec(),
        }];
        let gz = cpio_gz(&entries).unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, cpio(&entries));
    }
}
