//! Decompressing a guest kernel: gzip and XZ, bounded by the caller's output limit.
//!
//! Linux's bzImage carries its kernel compressed with the method chosen at build time
//! (`CONFIG_KERNEL_GZIP`/`XZ`/`ZSTD`/`LZ4`/`LZMA`/`BZIP2`/`LZO`); Debian's kernels use XZ.
//! Every format is recognised by its magic number; gzip and XZ are decoded, the others are
//! named in a clear "unsupported" error so the administrator knows to recompress.
//!
//! Crate choices (both pure Rust, `no_std` + `alloc`, and free of `unsafe` as built here):
//! - gzip: `miniz_oxide`'s raw-DEFLATE stream decoder (`#![forbid(unsafe_code)]`, the
//!   decoder behind `flate2`'s default backend). The gzip wrapper (RFC 1952) is parsed here
//!   and its CRC-32 and length trailer are checked.
//! - XZ: `xz4rust`, a port of Lasse Collin's xz-embedded, the decoder Linux itself uses to
//!   unpack its kernel (so it has the BCJ x86 filter Linux's `xz_wrap.sh` applies). Built
//!   with its `no_unsafe` feature, under which the crate is `deny(unsafe_code)`, and
//!   without SHA-256 checks (Linux uses CRC-32). Rejected: `xz2` (binds liblzma, C),
//!   `lzma-rs` (needs `std`), `lzma-rust2` (a port of XZ for Java that also runs
//!   `no_std`, but carries an encoder, lzip and multi-threading, its `xz` feature pulls in
//!   `sha2`, and its `unsafe` code has no opt-out).
//! - zstd (Ubuntu's kernels) is not decoded yet: `ruzstd` is the candidate, but it needs
//!   Rust 1.87 (the workspace promises 1.85) and a bound on the window size it allocates.
//!
//! Memory: the output never grows past `max_output` bytes (a bigger stream is refused,
//! not truncated), and the XZ dictionary the stream asks for may not exceed it either.
//! Stack: xz4rust's decoder state (about 30 KiB) and miniz_oxide's (about 43 KiB) are
//! boxed, but an unoptimised build may build them on the stack first.

use alloc::{
    boxed::Box,
    string::{String, ToString},
    vec::Vec,
};
use core::fmt;

use miniz_oxide::{
    inflate::stream::{inflate, InflateState},
    DataFormat, MZError, MZFlush, MZStatus,
};
use xz4rust::{XzDecoder, XzNextBlockResult};

/// A compression format, recognised by its magic number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    /// The legacy `.lzma` ("LZMA alone") format, `CONFIG_KERNEL_LZMA`.
    Lzma,
    Zstd,
    /// LZ4's legacy frame format, which Linux's `lz4 -l` writes.
    Lz4,
    Bzip2,
    Lzo,
}

impl Compression {
    pub const fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Lzma => "lzma",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
            Compression::Bzip2 => "bzip2",
            Compression::Lzo => "lzo",
        }
    }

    /// Whether [`decompress`] can decode this format.
    pub const fn is_supported(self) -> bool {
        matches!(self, Compression::Gzip | Compression::Xz)
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
/// Also `0x1f 0x9e`: old gzip's magic, which Linux's own `decompress_method()` accepts.
const GZIP_OLD_MAGIC: &[u8] = &[0x1f, 0x9e];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const LZ4_LEGACY_MAGIC: &[u8] = &[0x02, 0x21, 0x4c, 0x18];
const BZIP2_MAGIC: &[u8] = b"BZh";
const LZO_MAGIC: &[u8] = &[0x89, b'L', b'Z', b'O'];
/// `.lzma` has no magic; Linux recognises it by its usual first three bytes (properties
/// 0x5d, then the little-endian dictionary size's low bytes 00 00), as does `file(1)`.
const LZMA_MAGIC: &[u8] = &[0x5d, 0x00, 0x00];

/// The compression format `data` starts with, if any.
pub fn detect(data: &[u8]) -> Option<Compression> {
    const TABLE: [(&[u8], Compression); 8] = [
        (GZIP_MAGIC, Compression::Gzip),
        (GZIP_OLD_MAGIC, Compression::Gzip),
        (XZ_MAGIC, Compression::Xz),
        (ZSTD_MAGIC, Compression::Zstd),
        (LZ4_LEGACY_MAGIC, Compression::Lz4),
        (BZIP2_MAGIC, Compression::Bzip2),
        (LZO_MAGIC, Compression::Lzo),
        (LZMA_MAGIC, Compression::Lzma),
    ];
    TABLE
        .iter()
        .find(|(magic, _)| data.starts_with(magic))
        .map(|&(_, kind)| kind)
}

/// Why a compressed image could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecompressError {
    /// Not a compression format this module knows.
    UnknownFormat,
    /// A known format without a decoder here.
    UnsupportedCompression(&'static str),
    /// The stream decodes to more than the caller's limit.
    TooLarge { format: Compression, limit: usize },
    /// The XZ stream wants a dictionary larger than the output limit.
    DictionaryTooLarge { needed: u64, limit: usize },
    /// The stream ends before its end marker.
    Truncated { format: Compression },
    /// The stream is malformed or fails its checksum.
    Corrupt { format: Compression, detail: String },
    /// The hypervisor's heap cannot hold the output buffer.
    OutOfMemory { format: Compression, bytes: usize },
}

impl fmt::Display for DecompressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecompressError::UnknownFormat => f.write_str("unknown compression format"),
            DecompressError::UnsupportedCompression(name) => write!(
                f,
                "{name}-compressed kernels are not supported: rebuild the kernel with \
                 CONFIG_KERNEL_XZ or CONFIG_KERNEL_GZIP, or pass the uncompressed vmlinux"
            ),
            DecompressError::TooLarge { format, limit } => write!(
                f,
                "the {format} stream decompresses to more than the {limit}-byte limit \
                 (a corrupt or hostile image, or raise the limit)"
            ),
            DecompressError::DictionaryTooLarge { needed, limit } => write!(
                f,
                "the xz stream asks for a {needed}-byte dictionary, more than the \
                 {limit}-byte limit"
            ),
            DecompressError::Truncated { format } => {
                write!(
                    f,
                    "the {format} stream is truncated (is the boot module complete?)"
                )
            }
            DecompressError::Corrupt { format, detail } => {
                write!(f, "the {format} stream is corrupt: {detail}")
            }
            DecompressError::OutOfMemory { format, bytes } => write!(
                f,
                "the hypervisor's heap cannot hold {bytes} bytes of decompressed {format} output \
                 (give the machine more RAM, or boot the uncompressed vmlinux)"
            ),
        }
    }
}

/// Decompress `data` (any format [`detect`] recognises), producing at most `max_output`
/// bytes. `size_hint` (e.g. the length Linux appends after its payload) only presizes the
/// output buffer, capped at `max_output`; a wrong hint costs a reallocation, nothing more.
/// Bytes after the end of the (first) compressed stream are ignored, as Linux does.
pub fn decompress(
    data: &[u8],
    max_output: usize,
    size_hint: Option<usize>,
) -> Result<(Compression, Vec<u8>), DecompressError> {
    let format = detect(data).ok_or(DecompressError::UnknownFormat)?;
    let mut out = Output::new(format, max_output, size_hint)?;
    match format {
        Compression::Gzip => gunzip(data, &mut out)?,
        Compression::Xz => unxz(data, &mut out)?,
        other => return Err(DecompressError::UnsupportedCompression(other.name())),
    }
    Ok((format, out.finish()))
}

/// A growable output buffer that never exceeds its limit.
struct Output {
    format: Compression,
    buf: Vec<u8>,
    /// Bytes of `buf` holding decoded data; the rest is scratch space for the decoder.
    len: usize,
    limit: usize,
}

impl Output {
    const MIN_CHUNK: usize = 64 * 1024;

    fn new(
        format: Compression,
        limit: usize,
        size_hint: Option<usize>,
    ) -> Result<Output, DecompressError> {
        // One extra page over the hint, so an exact hint needs no second allocation for
        // the decoder's last call.
        let initial = size_hint
            .map_or(Self::MIN_CHUNK, |h| h.saturating_add(4096))
            .min(limit);
        let mut out = Output {
            format,
            buf: Vec::new(),
            len: 0,
            limit,
        };
        out.grow_to(initial)?;
        Ok(out)
    }

    /// Grows the buffer to `bytes`, failing (not aborting) when the heap cannot.
    fn grow_to(&mut self, bytes: usize) -> Result<(), DecompressError> {
        let more = bytes.saturating_sub(self.buf.len());
        self.buf
            .try_reserve_exact(more)
            .map_err(|_| DecompressError::OutOfMemory {
                format: self.format,
                bytes,
            })?;
        self.buf.resize(bytes, 0);
        Ok(())
    }

    /// Space for the decoder to write into, growing the buffer (doubling, capped at the
    /// limit) when it is full. Empty only when the limit has been reached.
    fn spare(&mut self) -> Result<&mut [u8], DecompressError> {
        if self.len == self.buf.len() && self.buf.len() < self.limit {
            let grown = self
                .buf
                .len()
                .saturating_mul(2)
                .max(Self::MIN_CHUNK)
                .min(self.limit);
            self.grow_to(grown)?;
        }
        Ok(&mut self.buf[self.len..])
    }

    fn advance(&mut self, n: usize) {
        self.len += n;
    }

    fn too_large(&self) -> DecompressError {
        DecompressError::TooLarge {
            format: self.format,
            limit: self.limit,
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.truncate(self.len);
        self.buf.shrink_to_fit();
        self.buf
    }
}

// gzip (RFC 1952): a 10-byte header, optional fields, raw DEFLATE, then CRC-32 and the
// input size mod 2^32, both little endian.
const FTEXT_FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const FRESERVED: u8 = 0xe0;
const CM_DEFLATE: u8 = 8;

fn gzip_header_len(data: &[u8]) -> Result<usize, DecompressError> {
    let truncated = DecompressError::Truncated {
        format: Compression::Gzip,
    };
    let corrupt = |detail: &str| DecompressError::Corrupt {
        format: Compression::Gzip,
        detail: detail.to_string(),
    };
    if data.len() < 10 {
        return Err(truncated);
    }
    if data[2] != CM_DEFLATE {
        return Err(corrupt("compression method is not DEFLATE"));
    }
    let flags = data[3];
    if flags & FRESERVED != 0 {
        return Err(corrupt("reserved header flags are set"));
    }
    let mut pos = 10usize;
    if flags & FEXTRA != 0 {
        let xlen = data.get(pos..pos + 2).ok_or(truncated.clone())?;
        pos += 2 + usize::from(u16::from_le_bytes([xlen[0], xlen[1]]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let rest = data.get(pos..).ok_or(truncated.clone())?;
            let nul = rest.iter().position(|&b| b == 0).ok_or(truncated.clone())?;
            pos += nul + 1;
        }
    }
    if flags & FTEXT_FHCRC != 0 {
        pos += 2;
    }
    if pos > data.len() {
        return Err(truncated);
    }
    Ok(pos)
}

fn gunzip(data: &[u8], out: &mut Output) -> Result<(), DecompressError> {
    let format = Compression::Gzip;
    let mut input = &data[gzip_header_len(data)?..];
    let mut state: Box<InflateState> = InflateState::new_boxed(DataFormat::Raw);
    loop {
        let spare = out.spare()?;
        if spare.is_empty() {
            // At the limit: the stream must end without producing another byte.
            let mut probe = [0u8; 1];
            let r = inflate(&mut state, input, &mut probe, MZFlush::None);
            input = &input[r.bytes_consumed..];
            match r.status {
                Ok(MZStatus::StreamEnd) if r.bytes_written == 0 => break,
                _ if r.bytes_written > 0 => return Err(out.too_large()),
                Ok(_) if r.bytes_consumed > 0 => continue,
                Ok(_) | Err(MZError::Buf) => return Err(DecompressError::Truncated { format }),
                Err(_) => return Err(deflate_corrupt()),
            }
        }
        let r = inflate(&mut state, input, spare, MZFlush::None);
        input = &input[r.bytes_consumed..];
        out.advance(r.bytes_written);
        match r.status {
            Ok(MZStatus::StreamEnd) => break,
            Ok(_) if r.bytes_consumed > 0 || r.bytes_written > 0 => {}
            // No progress with output space available: the input ran out.
            Ok(_) | Err(MZError::Buf) => return Err(DecompressError::Truncated { format }),
            Err(_) => return Err(deflate_corrupt()),
        }
    }
    let trailer = input
        .get(..8)
        .ok_or(DecompressError::Truncated { format })?;
    let crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let isize = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    let decoded = &out.buf[..out.len];
    // RFC 1952: ISIZE is the input size modulo 2^32, so truncating is the definition.
    if isize != decoded.len() as u32 {
        return Err(DecompressError::Corrupt {
            format,
            detail: alloc::format!(
                "the trailer says {isize} bytes (mod 2^32), the data has {}",
                decoded.len()
            ),
        });
    }
    let actual = crc32(decoded);
    if crc != actual {
        return Err(DecompressError::Corrupt {
            format,
            detail: alloc::format!("CRC-32 mismatch (trailer {crc:#010x}, data {actual:#010x})"),
        });
    }
    Ok(())
}

fn deflate_corrupt() -> DecompressError {
    DecompressError::Corrupt {
        format: Compression::Gzip,
        detail: "invalid DEFLATE data".to_string(),
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xedb88320), as gzip's trailer uses.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data
        .iter()
        .fold(!0u32, |c, &b| TABLE[usize::from((c as u8) ^ b)] ^ (c >> 8))
}

/// The dictionary xz4rust starts with; it grows to what the stream header asks for.
const XZ_INITIAL_DICT: usize = 4096;

fn unxz(data: &[u8], out: &mut Output) -> Result<(), DecompressError> {
    let limit = out.limit;
    let format = Compression::Xz;
    // xz4rust allocates the dictionary the stream header names (Linux's xz_wrap.sh asks
    // for 32 MiB) on top of the output; it may not exceed the output limit either, so XZ
    // needs at most twice `max_output` in all.
    let max_dict = out.limit;
    let mut decoder =
        XzDecoder::in_heap_with_alloc_dict_size(XZ_INITIAL_DICT.min(max_dict), max_dict);
    let mut input = data;
    let mut idle = 0u32;
    loop {
        let spare = out.spare()?;
        let at_limit = spare.is_empty();
        let mut probe = [0u8; 1];
        let target: &mut [u8] = if at_limit { &mut probe } else { spare };
        let result = decoder
            .decode(input, target)
            .map_err(|e| xz_error(&e, limit))?;
        let (consumed, produced) = (result.input_consumed(), result.output_produced());
        if at_limit && produced > 0 {
            return Err(out.too_large());
        }
        input = &input[consumed..];
        out.advance(produced);
        if let XzNextBlockResult::EndOfStream(..) = result {
            return Ok(());
        }
        if consumed == 0 && produced == 0 {
            // The decoder buffers internally, so allow a second call before deciding the
            // input is exhausted.
            idle += 1;
            if idle > 1 {
                return Err(DecompressError::Truncated { format });
            }
        } else {
            idle = 0;
        }
    }
}

fn xz_error(e: &xz4rust::XzError, limit: usize) -> DecompressError {
    match e {
        xz4rust::XzError::NeedsLargerInputBuffer => DecompressError::Truncated {
            format: Compression::Xz,
        },
        xz4rust::XzError::DictionaryTooLarge(needed) => DecompressError::DictionaryTooLarge {
            needed: *needed,
            limit,
        },
        other => DecompressError::Corrupt {
            format: Compression::Xz,
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;

    fn gzip(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x1f, 0x8b, 8, FNAME, 0, 0, 0, 0, 0, 3];
        v.extend_from_slice(b"vmlinux\0");
        v.extend(miniz_oxide::deflate::compress_to_vec(payload, 9));
        v.extend(crc32(payload).to_le_bytes());
        v.extend((payload.len() as u32).to_le_bytes());
        v
    }

    /// "hello, xen\n" × 500 (5500 bytes), made with
    /// `yes 'hello, xen' | head -n 500 | xz --check=crc32 --x86 --lzma2=dict=4KiB | xxd -i`
    /// (the filter chain Linux's `scripts/xz_wrap.sh` uses, with the smallest dictionary).
    const XZ_HELLO: &[u8] = &[
        0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 0x00, 0x01, 0x69, 0x22, 0xde, 0x36, 0x02, 0x01, 0x04,
        0x00, 0x21, 0x01, 0x00, 0x00, 0xda, 0x33, 0xad, 0x03, 0xe0, 0x15, 0x7b, 0x00, 0x2c, 0x5d,
        0x00, 0x34, 0x19, 0x49, 0xee, 0x8d, 0xef, 0x8c, 0x6b, 0xeb, 0x85, 0x69, 0x8d, 0xb8, 0xcd,
        0x78, 0xa6, 0xbd, 0x5a, 0x95, 0xa9, 0xb7, 0x17, 0x45, 0x71, 0x86, 0xb6, 0x27, 0x4f, 0x6a,
        0x83, 0xa2, 0x51, 0xe0, 0xd6, 0xec, 0x01, 0xe7, 0x77, 0x87, 0x2a, 0xee, 0x89, 0xc0, 0x00,
        0x00, 0x72, 0xe7, 0xae, 0xb4, 0x00, 0x01, 0x44, 0xfc, 0x2a, 0x00, 0x00, 0x00, 0xa1, 0x6e,
        0xd7, 0x15, 0x3e, 0x30, 0x0d, 0x8b, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x59, 0x5a,
    ];

    fn hello() -> Vec<u8> {
        b"hello, xen\n".repeat(500)
    }

    #[test]
    fn detects_every_magic() {
        assert_eq!(detect(&gzip(b"x")), Some(Compression::Gzip));
        assert_eq!(detect(XZ_HELLO), Some(Compression::Xz));
        assert_eq!(
            detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(Compression::Zstd)
        );
        assert_eq!(detect(b"BZh91AY"), Some(Compression::Bzip2));
        assert_eq!(detect(&[0x02, 0x21, 0x4c, 0x18]), Some(Compression::Lz4));
        assert_eq!(detect(&[0x89, b'L', b'Z', b'O', 0]), Some(Compression::Lzo));
        assert_eq!(detect(&[0x5d, 0, 0, 0x80, 0]), Some(Compression::Lzma));
        assert_eq!(detect(b"\x7fELF"), None);
        assert_eq!(detect(&[]), None);
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn gzip_round_trip() {
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 / 13) as u8).collect();
        let (kind, out) = decompress(&gzip(&payload), 1 << 20, None).unwrap();
        assert_eq!(kind, Compression::Gzip);
        assert_eq!(out, payload);
        // With an exact hint and with a wrong one.
        let (_, out) = decompress(&gzip(&payload), 1 << 20, Some(payload.len())).unwrap();
        assert_eq!(out, payload);
        let (_, out) = decompress(&gzip(&payload), 1 << 20, Some(3)).unwrap();
        assert_eq!(out, payload);
    }

    #[test]
    fn gzip_exactly_at_the_limit_fits_one_more_byte_does_not() {
        let payload = vec![0xabu8; 100_000];
        let data = gzip(&payload);
        assert_eq!(decompress(&data, 100_000, None).unwrap().1, payload);
        assert_eq!(
            decompress(&data, 99_999, None),
            Err(DecompressError::TooLarge {
                format: Compression::Gzip,
                limit: 99_999
            })
        );
    }

    #[test]
    fn gzip_corruption_is_detected() {
        let payload = hello();
        let good = gzip(&payload);
        let mut bad_crc = good.clone();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 1;
        assert!(matches!(
            decompress(&bad_crc, 1 << 20, None),
            Err(DecompressError::Corrupt { .. })
        ));
        let mut bad_len = good.clone();
        bad_len[n - 1] ^= 1;
        assert!(matches!(
            decompress(&bad_len, 1 << 20, None),
            Err(DecompressError::Corrupt { .. })
        ));
        let mut bad_method = good.clone();
        bad_method[2] = 7;
        assert!(matches!(
            decompress(&bad_method, 1 << 20, None),
            Err(DecompressError::Corrupt { .. })
        ));
        let mut garbage = good.clone();
        garbage[18] = 0xff; // first DEFLATE byte: BTYPE 11 is reserved
        assert!(decompress(&garbage, 1 << 20, None).is_err());
    }

    #[test]
    fn gzip_every_truncation_is_an_error() {
        let good = gzip(&hello());
        for len in 0..good.len() {
            assert!(
                decompress(&good[..len], 1 << 20, None).is_err(),
                "len {len}"
            );
        }
    }

    #[test]
    fn xz_decodes_the_test_vector() {
        let (kind, out) = decompress(XZ_HELLO, 1 << 20, None).unwrap();
        assert_eq!(kind, Compression::Xz);
        assert_eq!(out, hello());
        // Linux appends the uncompressed size after the stream: ignored.
        let mut with_size = XZ_HELLO.to_vec();
        with_size.extend(5500u32.to_le_bytes());
        assert_eq!(
            decompress(&with_size, 1 << 20, Some(5500)).unwrap().1,
            hello()
        );
    }

    #[test]
    fn xz_limit_and_truncation() {
        assert_eq!(decompress(XZ_HELLO, 5500, None).unwrap().1, hello());
        assert_eq!(
            decompress(XZ_HELLO, 5499, None),
            Err(DecompressError::TooLarge {
                format: Compression::Xz,
                limit: 5499
            })
        );
        // The 4 KiB dictionary the stream asks for counts against the limit too.
        assert_eq!(
            decompress(XZ_HELLO, 4095, None),
            Err(DecompressError::DictionaryTooLarge {
                needed: 4096,
                limit: 4095
            })
        );
        for len in 0..XZ_HELLO.len() {
            assert!(
                decompress(&XZ_HELLO[..len], 1 << 20, None).is_err(),
                "len {len}"
            );
        }
    }

    #[test]
    fn xz_corruption_is_detected() {
        for i in 0..XZ_HELLO.len() {
            let mut bad = XZ_HELLO.to_vec();
            bad[i] ^= 0x10;
            // Every byte of the stream is covered by a CRC or is structural; flipping one
            // must never decode to wrong data silently (nor panic).
            if let Ok((_, out)) = decompress(&bad, 1 << 20, None) {
                assert_eq!(out, hello(), "byte {i}");
            }
        }
    }

    #[test]
    fn unsupported_formats_are_named() {
        assert_eq!(
            decompress(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0], 4096, None),
            Err(DecompressError::UnsupportedCompression("zstd"))
        );
        let msg = DecompressError::UnsupportedCompression("zstd").to_string();
        assert!(msg.contains("zstd") && msg.contains("CONFIG_KERNEL_XZ"));
        assert_eq!(
            decompress(b"\x7fELF", 4096, None),
            Err(DecompressError::UnknownFormat)
        );
    }
}
