//! Finding the compressed kernel inside a Linux bzImage.
//!
//! Layout from Linux's `Documentation/arch/x86/boot.rst` ("The real-mode kernel header"):
//! the setup header starts at 0x1f1 with `setup_sects` (0 means 4); the magic `HdrS` at
//! 0x202 and the protocol version at 0x206 identify it; the 32/64-bit code starts after
//! the boot sector and the setup sectors, at `(setup_sects + 1) * 512`. From protocol 2.08
//! on, `payload_offset` (0x248, relative to that code) and `payload_length` (0x24c) locate
//! the compressed `vmlinux`, whose last four bytes are its uncompressed length
//! (`arch/x86/boot/compressed/mkpiggy.c` reads it there for every compression method).

use core::fmt;

const SETUP_SECTS: usize = 0x1f1;
const BOOT_FLAG: usize = 0x1fe;
const HEADER_MAGIC: usize = 0x202;
const VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
/// The header must reach past `payload_length`.
const HEADER_END: usize = PAYLOAD_LENGTH + 4;

const HDRS: &[u8; 4] = b"HdrS";
const BOOT_FLAG_VALUE: u16 = 0xaa55;
/// `payload_offset`/`payload_length` exist from boot protocol 2.08 (Linux 2.6.26).
const MIN_VERSION: u16 = 0x0208;
const SECTOR: usize = 512;
/// `setup_sects == 0` means 4, for compatibility with very old kernels.
const DEFAULT_SETUP_SECTS: usize = 4;

/// The parts of a bzImage the domain builder needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BzImage<'a> {
    /// Boot protocol version, e.g. `0x020f`.
    pub version: u16,
    /// The compressed kernel (`payload_offset`/`payload_length`).
    pub payload: &'a [u8],
    /// The uncompressed length stored in the payload's last four bytes.
    pub uncompressed_len: u32,
}

/// Why a bzImage cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BzImageError {
    /// The file is shorter than the setup header it claims to have.
    Truncated { len: usize },
    /// The boot sector's 0xaa55 flag is missing.
    BadBootFlag(u16),
    /// Boot protocol older than 2.08: no payload fields.
    OldProtocol(u16),
    /// `payload_offset`/`payload_length` point outside the file.
    PayloadOutOfBounds {
        start: u64,
        len: u64,
        file_len: usize,
    },
    /// The payload is too short to hold a compressed stream and its length.
    EmptyPayload,
}

impl fmt::Display for BzImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BzImageError::Truncated { len } => write!(
                f,
                "the bzImage is truncated ({len} bytes, shorter than its setup header)"
            ),
            BzImageError::BadBootFlag(flag) => {
                write!(f, "the bzImage boot flag is {flag:#06x}, not 0xaa55")
            }
            BzImageError::OldProtocol(v) => write!(
                f,
                "the bzImage uses boot protocol {}.{:02}, older than 2.08: it has no payload \
                 fields, so pass the uncompressed vmlinux instead",
                v >> 8,
                v & 0xff
            ),
            BzImageError::PayloadOutOfBounds {
                start,
                len,
                file_len,
            } => write!(
                f,
                "the bzImage payload ({len} bytes at offset {start:#x}) lies outside the \
                 {file_len}-byte file (truncated or corrupt boot module)"
            ),
            BzImageError::EmptyPayload => f.write_str("the bzImage payload is empty"),
        }
    }
}

/// Whether `data` carries a Linux boot-protocol header (the `HdrS` magic), i.e. should be
/// parsed with [`parse`].
pub fn is_bzimage(data: &[u8]) -> bool {
    data.get(HEADER_MAGIC..HEADER_MAGIC + 4) == Some(HDRS.as_slice())
}

/// Locate the compressed kernel. Every offset is checked against the file.
pub fn parse(data: &[u8]) -> Result<BzImage<'_>, BzImageError> {
    let truncated = BzImageError::Truncated { len: data.len() };
    let u16_at = |off: usize| {
        data.get(off..off + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |off: usize| {
        data.get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if !is_bzimage(data) {
        return Err(truncated);
    }
    let flag = u16_at(BOOT_FLAG).ok_or(truncated)?;
    if flag != BOOT_FLAG_VALUE {
        return Err(BzImageError::BadBootFlag(flag));
    }
    let version = u16_at(VERSION).ok_or(truncated)?;
    if version < MIN_VERSION {
        return Err(BzImageError::OldProtocol(version));
    }
    if data.len() < HEADER_END {
        return Err(truncated);
    }
    let setup_sects = match data[SETUP_SECTS] {
        0 => DEFAULT_SETUP_SECTS,
        n => usize::from(n),
    };
    let code_start = (setup_sects + 1) * SECTOR;
    let offset = u32_at(PAYLOAD_OFFSET).ok_or(truncated)?;
    let length = u32_at(PAYLOAD_LENGTH).ok_or(truncated)?;
    let start = code_start as u64 + u64::from(offset);
    let end = start + u64::from(length);
    if end > data.len() as u64 {
        return Err(BzImageError::PayloadOutOfBounds {
            start,
            len: u64::from(length),
            file_len: data.len(),
        });
    }
    // Both bounds are within `data.len()`, so they fit in usize.
    let payload = &data[start as usize..end as usize];
    let tail = payload
        .len()
        .checked_sub(4)
        .filter(|&t| t > 0)
        .ok_or(BzImageError::EmptyPayload)?;
    let l = &payload[tail..];
    Ok(BzImage {
        version,
        payload,
        uncompressed_len: u32::from_le_bytes([l[0], l[1], l[2], l[3]]),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use alloc::{vec, vec::Vec};

    use super::*;

    /// A minimal bzImage around `payload`: boot sector, `setup_sects` setup sectors, then
    /// 0x100 bytes of "decompressor" before the payload.
    pub(crate) fn make_bzimage(setup_sects: u8, payload: &[u8]) -> Vec<u8> {
        let sects = if setup_sects == 0 { 4 } else { setup_sects };
        let code = (usize::from(sects) + 1) * 512;
        let mut v = vec![0u8; code + 0x100];
        v[SETUP_SECTS] = setup_sects;
        v[BOOT_FLAG..BOOT_FLAG + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
        v[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        v[VERSION..VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        v[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&0x100u32.to_le_bytes());
        v[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4]
            .copy_from_slice(&(payload.len() as u32).to_le_bytes());
        v.extend_from_slice(payload);
        v.extend_from_slice(&[0xcc; 64]); // trailing padding, as real images have
        v
    }

    #[test]
    fn finds_the_payload() {
        let payload = b"compressed-bytes\x2a\x00\x00\x00";
        for sects in [0u8, 1, 27] {
            let img = make_bzimage(sects, payload);
            assert!(is_bzimage(&img));
            let bz = parse(&img).unwrap();
            assert_eq!(bz.payload, payload);
            assert_eq!(bz.version, 0x020f);
            assert_eq!(bz.uncompressed_len, 42);
        }
    }

    #[test]
    fn rejects_bad_headers() {
        let img = make_bzimage(3, b"abcdefgh");
        let mut old = img.clone();
        old[VERSION] = 0x07;
        old[VERSION + 1] = 0x02;
        assert_eq!(parse(&old), Err(BzImageError::OldProtocol(0x0207)));
        assert!(parse(&old).unwrap_err().to_string().contains("2.07"));
        let mut flag = img.clone();
        flag[BOOT_FLAG] = 0;
        assert_eq!(parse(&flag), Err(BzImageError::BadBootFlag(0xaa00)));
        let mut far = img.clone();
        far[PAYLOAD_OFFSET + 3] = 0xff;
        assert!(matches!(
            parse(&far),
            Err(BzImageError::PayloadOutOfBounds { .. })
        ));
        let mut long = img.clone();
        long[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse(&long),
            Err(BzImageError::PayloadOutOfBounds { .. })
        ));
        let mut empty = img.clone();
        empty[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(parse(&empty), Err(BzImageError::EmptyPayload));
        assert!(!is_bzimage(b"\x7fELF"));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let img = make_bzimage(2, b"0123456789abcdef");
        let payload_end = img.len() - 64;
        for len in 0..img.len() {
            let r = parse(&img[..len]);
            assert_eq!(r.is_ok(), len >= payload_end, "len {len}");
        }
    }
}
