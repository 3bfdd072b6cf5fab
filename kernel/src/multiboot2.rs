//! The multiboot2 boot information, read safely from a byte slice.
//!
//! Layout from the GNU Multiboot2 specification, section 3.6 "Boot information format":
//! a fixed part (`u32 total_size`, `u32 reserved`) followed by tags, each starting on an
//! 8-byte boundary with `u32 type` and `u32 size` (size counts the tag header but not the
//! padding after it), ending with a tag of type 0 and size 8. All fields are little endian.
//!
//! The bootloader is trusted to boot us but not to be bug-free, so every size and offset
//! is checked before use and a malformed structure is an error, never a panic or a read
//! out of bounds.

use core::fmt;

/// What a multiboot2 bootloader leaves in EAX (spec section 3.3, "Machine state").
pub const BOOTLOADER_MAGIC: u32 = 0x36d7_6289;

/// The most boot modules and memory-map regions kept; more are counted as dropped.
pub const MAX_MODULES: usize = 16;
pub const MAX_REGIONS: usize = 128;

const FIXED_PART: usize = 8;
const TAG_HEADER: usize = 8;
const TAG_ALIGN: usize = 8;
/// Spec 3.6.8: each entry is at least `u64 base_addr, u64 length, u32 type, u32 reserved`.
const MIN_MMAP_ENTRY: u32 = 24;

mod tag {
    pub const END: u32 = 0;
    pub const CMDLINE: u32 = 1;
    pub const BOOTLOADER_NAME: u32 = 2;
    pub const MODULE: u32 = 3;
    pub const BASIC_MEMINFO: u32 = 4;
    pub const MEMORY_MAP: u32 = 6;
    pub const ACPI_OLD: u32 = 14;
    pub const ACPI_NEW: u32 = 15;
}

/// The boot information's size in bytes, from its first field, so the caller knows how
/// much to map or copy before calling [`parse`]. `None` if fewer than the 8 bytes of the
/// fixed part are given.
pub fn total_size(header: &[u8]) -> Option<u32> {
    if header.len() < FIXED_PART {
        return None;
    }
    read_u32(header, 0)
}

/// The type of a memory-map region (spec 3.6.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    Available,
    Reserved,
    AcpiReclaimable,
    AcpiNvs,
    Defective,
    Other(u32),
}

impl MemoryKind {
    pub const fn from_raw(raw: u32) -> MemoryKind {
        match raw {
            1 => MemoryKind::Available,
            2 => MemoryKind::Reserved,
            3 => MemoryKind::AcpiReclaimable,
            4 => MemoryKind::AcpiNvs,
            5 => MemoryKind::Defective,
            other => MemoryKind::Other(other),
        }
    }

    /// Whether the region is RAM (possibly in use by firmware), i.e. belongs in the
    /// machine's frame table, as opposed to holes, MMIO and bad memory.
    pub const fn is_ram(&self) -> bool {
        matches!(
            self,
            MemoryKind::Available | MemoryKind::AcpiReclaimable | MemoryKind::AcpiNvs
        )
    }
}

impl fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryKind::Available => f.write_str("available"),
            MemoryKind::Reserved => f.write_str("reserved"),
            MemoryKind::AcpiReclaimable => f.write_str("ACPI reclaimable"),
            MemoryKind::AcpiNvs => f.write_str("ACPI NVS"),
            MemoryKind::Defective => f.write_str("defective"),
            MemoryKind::Other(raw) => write!(f, "type {raw}"),
        }
    }
}

/// One memory-map entry: `[base, base + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    pub base: u64,
    pub len: u64,
    pub kind: MemoryKind,
}

impl MemoryRegion {
    /// The region as a physical range (`base + len` was checked not to overflow).
    pub const fn range(&self) -> crate::mm::PhysRange {
        crate::mm::PhysRange::new(self.base, self.base + self.len)
    }
}

/// A boot module: `[start, end)` in physical memory and its command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module<'a> {
    pub start: u64,
    pub end: u64,
    pub cmdline: &'a str,
}

impl Module<'_> {
    pub const fn range(&self) -> crate::mm::PhysRange {
        crate::mm::PhysRange::new(self.start, self.end)
    }
}

/// What the hypervisor uses from the boot information.
#[derive(Clone, Debug)]
pub struct BootInfo<'a> {
    pub total_size: u32,
    pub cmdline: Option<&'a str>,
    pub bootloader_name: Option<&'a str>,
    /// In the order the bootloader listed them: dom0's kernel first, then its initrd.
    pub modules: heapless::Vec<Module<'a>, MAX_MODULES>,
    pub modules_dropped: usize,
    pub memory_map: heapless::Vec<MemoryRegion, MAX_REGIONS>,
    pub regions_dropped: usize,
    /// `mem_lower` and `mem_upper` in KiB (spec 3.6.7).
    pub basic_memory_kib: Option<(u32, u32)>,
    /// A copy of the ACPI RSDP: the ACPI 2.0+ one (tag 15) if given, else the 1.0 one
    /// (tag 14).
    pub acpi_rsdp: Option<&'a [u8]>,
}

/// Why the boot information was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than the fixed part.
    TooShort { len: usize },
    /// `total_size` is below the fixed part or beyond the bytes given.
    BadTotalSize { total_size: u32, available: usize },
    /// A tag's header does not fit before `total_size`.
    TruncatedTagHeader { offset: usize },
    /// A tag extends past `total_size`.
    TagOutOfBounds {
        offset: usize,
        tag_type: u32,
        size: u32,
    },
    /// A tag is smaller than its header or its fixed fields, or an end tag is not 8 bytes.
    BadTagSize {
        offset: usize,
        tag_type: u32,
        size: u32,
    },
    /// The memory map's entries are smaller than the spec's 24 bytes.
    BadMemoryMapEntrySize { offset: usize, entry_size: u32 },
    /// The memory map's entries do not exactly fill its tag.
    PartialMemoryMapEntry {
        offset: usize,
        size: u32,
        entry_size: u32,
    },
    /// A memory region's end does not fit in 64 bits.
    MemoryRegionOverflow { base: u64, len: u64 },
    /// A module ends before it starts.
    ModuleEndBeforeStart { start: u64, end: u64 },
    /// No end tag before `total_size`.
    MissingEndTag,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ParseError::TooShort { len } => write!(
                f,
                "boot information too short: {len} bytes, the fixed part alone is {FIXED_PART}"
            ),
            ParseError::BadTotalSize {
                total_size,
                available,
            } => write!(
                f,
                "boot information total_size {total_size} is not between {FIXED_PART} and the {available} bytes available"
            ),
            ParseError::TruncatedTagHeader { offset } => write!(
                f,
                "boot information tag header at offset {offset:#x} is cut off by total_size"
            ),
            ParseError::TagOutOfBounds {
                offset,
                tag_type,
                size,
            } => write!(
                f,
                "boot information tag type {tag_type} at offset {offset:#x} with size {size} runs past total_size"
            ),
            ParseError::BadTagSize {
                offset,
                tag_type,
                size,
            } => write!(
                f,
                "boot information tag type {tag_type} at offset {offset:#x} has invalid size {size}"
            ),
            ParseError::BadMemoryMapEntrySize { offset, entry_size } => write!(
                f,
                "memory map tag at offset {offset:#x} has entry_size {entry_size}, below the minimum {MIN_MMAP_ENTRY}"
            ),
            ParseError::PartialMemoryMapEntry {
                offset,
                size,
                entry_size,
            } => write!(
                f,
                "memory map tag at offset {offset:#x} of size {size} does not hold whole entries of {entry_size} bytes"
            ),
            ParseError::MemoryRegionOverflow { base, len } => write!(
                f,
                "memory map region at {base:#x} with length {len:#x} wraps past the top of the address space"
            ),
            ParseError::ModuleEndBeforeStart { start, end } => write!(
                f,
                "boot module ends at {end:#x}, before its start {start:#x}"
            ),
            ParseError::MissingEndTag => f.write_str("boot information has no end tag"),
        }
    }
}

fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let field = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(field.try_into().ok()?))
}

fn read_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    let field = bytes.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_le_bytes(field.try_into().ok()?))
}

/// A NUL-terminated string field: up to the first NUL (or the whole field if there is
/// none), and up to the first byte that breaks UTF-8, so a bad byte costs only the tail.
fn c_string(field: &[u8]) -> &str {
    let len = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let field = &field[..len];
    match core::str::from_utf8(field) {
        Ok(s) => s,
        // `valid_up_to` is by definition the length of a valid UTF-8 prefix, so the
        // second conversion cannot fail; the fallback only keeps this path panic-free.
        Err(e) => core::str::from_utf8(&field[..e.valid_up_to()]).unwrap_or(""),
    }
}

/// Parses the boot information. `bytes` may be longer than `total_size`; only the first
/// `total_size` bytes are read.
pub fn parse(bytes: &[u8]) -> Result<BootInfo<'_>, ParseError> {
    let total = total_size(bytes).ok_or(ParseError::TooShort { len: bytes.len() })?;
    let total_usize = usize::try_from(total).unwrap_or(usize::MAX);
    if total_usize < FIXED_PART || total_usize > bytes.len() {
        return Err(ParseError::BadTotalSize {
            total_size: total,
            available: bytes.len(),
        });
    }
    let bytes = &bytes[..total_usize];

    let mut info = BootInfo {
        total_size: total,
        cmdline: None,
        bootloader_name: None,
        modules: heapless::Vec::new(),
        modules_dropped: 0,
        memory_map: heapless::Vec::new(),
        regions_dropped: 0,
        basic_memory_kib: None,
        acpi_rsdp: None,
    };
    let mut rsdp_new = None;
    let mut rsdp_old = None;

    // Tags start on 8-byte boundaries by construction: the fixed part is 8 bytes and each
    // next offset is rounded up to 8 (spec 3.6.1).
    let mut offset = FIXED_PART;
    loop {
        if offset >= bytes.len() {
            return Err(ParseError::MissingEndTag);
        }
        let header = (read_u32(bytes, offset), read_u32(bytes, offset + 4));
        let (Some(tag_type), Some(size)) = header else {
            return Err(ParseError::TruncatedTagHeader { offset });
        };
        let bad_size = ParseError::BadTagSize {
            offset,
            tag_type,
            size,
        };
        let size_usize = usize::try_from(size).unwrap_or(usize::MAX);
        if size_usize < TAG_HEADER {
            return Err(bad_size);
        }
        let end = offset.saturating_add(size_usize);
        if end > bytes.len() {
            return Err(ParseError::TagOutOfBounds {
                offset,
                tag_type,
                size,
            });
        }
        let payload = &bytes[offset + TAG_HEADER..end];
        match tag_type {
            tag::END => {
                if size_usize != TAG_HEADER {
                    return Err(bad_size);
                }
                break;
            }
            tag::CMDLINE => info.cmdline = Some(c_string(payload)),
            tag::BOOTLOADER_NAME => info.bootloader_name = Some(c_string(payload)),
            tag::MODULE => {
                let (Some(start), Some(mod_end)) = (read_u32(payload, 0), read_u32(payload, 4))
                else {
                    return Err(bad_size);
                };
                let (start, mod_end) = (u64::from(start), u64::from(mod_end));
                if mod_end < start {
                    return Err(ParseError::ModuleEndBeforeStart {
                        start,
                        end: mod_end,
                    });
                }
                let module = Module {
                    start,
                    end: mod_end,
                    cmdline: c_string(&payload[8..]),
                };
                if info.modules.push(module).is_err() {
                    info.modules_dropped += 1;
                }
            }
            tag::BASIC_MEMINFO => {
                let (Some(lower), Some(upper)) = (read_u32(payload, 0), read_u32(payload, 4))
                else {
                    return Err(bad_size);
                };
                info.basic_memory_kib = Some((lower, upper));
            }
            tag::MEMORY_MAP => parse_memory_map(&mut info, payload, offset, size)?,
            tag::ACPI_OLD => rsdp_old = Some(payload),
            tag::ACPI_NEW => rsdp_new = Some(payload),
            // Spec 3.6: a consumer must ignore tags it does not understand.
            _ => {}
        }
        offset = end.saturating_add(TAG_ALIGN - 1) & !(TAG_ALIGN - 1);
    }
    info.acpi_rsdp = rsdp_new.or(rsdp_old);
    Ok(info)
}

fn parse_memory_map<'a>(
    info: &mut BootInfo<'a>,
    payload: &'a [u8],
    offset: usize,
    size: u32,
) -> Result<(), ParseError> {
    let (Some(entry_size), Some(_entry_version)) = (read_u32(payload, 0), read_u32(payload, 4))
    else {
        return Err(ParseError::BadTagSize {
            offset,
            tag_type: tag::MEMORY_MAP,
            size,
        });
    };
    if entry_size < MIN_MMAP_ENTRY {
        return Err(ParseError::BadMemoryMapEntrySize { offset, entry_size });
    }
    // Later entry versions may grow the entry; the first 24 bytes keep their meaning, so
    // entries are walked by `entry_size` and only that prefix is read.
    let entries = &payload[8..];
    let step = usize::try_from(entry_size).unwrap_or(usize::MAX);
    let entries = entries.chunks_exact(step);
    if !entries.remainder().is_empty() {
        return Err(ParseError::PartialMemoryMapEntry {
            offset,
            size,
            entry_size,
        });
    }
    for entry in entries {
        let (Some(base), Some(len), Some(kind)) =
            (read_u64(entry, 0), read_u64(entry, 8), read_u32(entry, 16))
        else {
            // Unreachable: chunks_exact yields `entry_size >= 24` bytes, so every field is
            // present; refusing rather than panicking keeps the parser total.
            return Err(ParseError::BadMemoryMapEntrySize { offset, entry_size });
        };
        if base.checked_add(len).is_none() {
            return Err(ParseError::MemoryRegionOverflow { base, len });
        }
        let region = MemoryRegion {
            base,
            len,
            kind: MemoryKind::from_raw(kind),
        };
        if info.memory_map.push(region).is_err() {
            info.regions_dropped += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds boot information the way the spec lays it out, with knobs to break it.
    struct Builder {
        bytes: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                bytes: vec![0; FIXED_PART],
            }
        }

        fn tag(mut self, tag_type: u32, payload: &[u8]) -> Self {
            let size = u32::try_from(TAG_HEADER + payload.len()).unwrap();
            self.raw_tag(tag_type, size, payload);
            self
        }

        /// A tag whose size field is whatever the test says.
        fn raw_tag(&mut self, tag_type: u32, size: u32, payload: &[u8]) {
            self.bytes.extend_from_slice(&tag_type.to_le_bytes());
            self.bytes.extend_from_slice(&size.to_le_bytes());
            self.bytes.extend_from_slice(payload);
            let padded = self.bytes.len().next_multiple_of(TAG_ALIGN);
            self.bytes.resize(padded, 0);
        }

        fn string(self, tag_type: u32, s: &str) -> Self {
            let mut payload = s.as_bytes().to_vec();
            payload.push(0);
            self.tag(tag_type, &payload)
        }

        fn module(self, start: u32, end: u32, cmdline: &str) -> Self {
            let mut payload = start.to_le_bytes().to_vec();
            payload.extend_from_slice(&end.to_le_bytes());
            payload.extend_from_slice(cmdline.as_bytes());
            payload.push(0);
            self.tag(tag::MODULE, &payload)
        }

        fn memory_map(self, entry_size: u32, regions: &[(u64, u64, u32)]) -> Self {
            let mut payload = entry_size.to_le_bytes().to_vec();
            payload.extend_from_slice(&0u32.to_le_bytes());
            for &(base, len, kind) in regions {
                let mut entry = base.to_le_bytes().to_vec();
                entry.extend_from_slice(&len.to_le_bytes());
                entry.extend_from_slice(&kind.to_le_bytes());
                entry.resize(entry_size as usize, 0);
                payload.extend_from_slice(&entry);
            }
            self.tag(tag::MEMORY_MAP, &payload)
        }

        fn end(self) -> Vec<u8> {
            self.tag(tag::END, &[]).finish()
        }

        /// Without an end tag.
        fn finish(mut self) -> Vec<u8> {
            let total = u32::try_from(self.bytes.len()).unwrap();
            self.bytes[..4].copy_from_slice(&total.to_le_bytes());
            self.bytes
        }
    }

    const RSDP_V1: &[u8] = b"RSD PTR \x01OEMID \x00\x00\x00\x00\x00";
    const RSDP_V2: &[u8] = b"RSD PTR \x02OEMID \x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";

    fn grub_like() -> Vec<u8> {
        Builder::new()
            .string(tag::CMDLINE, "dom0_mem=262144 console=com1 loglvl=info")
            .string(tag::BOOTLOADER_NAME, "GRUB 2.06-13+deb12u1")
            .module(
                0x0100_0000,
                0x0180_0000,
                "/boot/vmlinuz-6.1.0-amd64 root=/dev/xvda ro console=hvc0 nousb",
            )
            .module(0x0200_0000, 0x0300_0123, "/boot/initrd.img-6.1.0-amd64")
            .tag(tag::BASIC_MEMINFO, &[0x7f, 0x02, 0, 0, 0x00, 0xfc, 0x0f, 0])
            .tag(42, &[1, 2, 3]) // unknown (e.g. a framebuffer we do not use)
            .memory_map(
                24,
                &[
                    (0, 0x9fc00, 1),
                    (0x9fc00, 0x400, 2),
                    (0xf0000, 0x10000, 2),
                    (0x10_0000, 0x7fee_0000, 1),
                    (0x7ffe_0000, 0x2_0000, 3),
                    (0xfeff_c000, 0x4000, 4),
                    (0xffff_0000, 0x1_0000, 5),
                    (0x1_0000_0000, 0x8000_0000, 1),
                    (0xfd_0000_0000, 0x3_0000_0000, 12),
                ],
            )
            .tag(tag::ACPI_OLD, RSDP_V1)
            .end()
    }

    #[test]
    fn grub_like_boot_information() {
        let bytes = grub_like();
        let info = parse(&bytes).unwrap();
        assert_eq!(info.total_size as usize, bytes.len());
        assert_eq!(
            info.cmdline,
            Some("dom0_mem=262144 console=com1 loglvl=info")
        );
        assert_eq!(info.bootloader_name, Some("GRUB 2.06-13+deb12u1"));
        assert_eq!(info.modules.len(), 2);
        assert_eq!(info.modules_dropped, 0);
        let kernel = info.modules[0];
        assert_eq!((kernel.start, kernel.end), (0x0100_0000, 0x0180_0000));
        assert!(kernel.cmdline.split(' ').any(|w| w == "nousb"));
        assert_eq!(
            kernel.range(),
            crate::mm::PhysRange::new(0x0100_0000, 0x0180_0000)
        );
        assert_eq!(info.modules[1].cmdline, "/boot/initrd.img-6.1.0-amd64");
        assert_eq!(info.modules[1].end, 0x0300_0123);
        assert_eq!(info.basic_memory_kib, Some((639, 0x000f_fc00)));
        assert_eq!(info.memory_map.len(), 9);
        assert_eq!(info.regions_dropped, 0);
        assert_eq!(
            info.memory_map[3],
            MemoryRegion {
                base: 0x10_0000,
                len: 0x7fee_0000,
                kind: MemoryKind::Available
            }
        );
        let kinds: Vec<MemoryKind> = info.memory_map.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                MemoryKind::Available,
                MemoryKind::Reserved,
                MemoryKind::Reserved,
                MemoryKind::Available,
                MemoryKind::AcpiReclaimable,
                MemoryKind::AcpiNvs,
                MemoryKind::Defective,
                MemoryKind::Available,
                MemoryKind::Other(12),
            ]
        );
        assert_eq!(
            info.memory_map[8].range(),
            crate::mm::PhysRange::new(0xfd_0000_0000, 0x100_0000_0000)
        );
        assert_eq!(info.acpi_rsdp, Some(RSDP_V1));
    }

    #[test]
    fn minimal_boot_information() {
        let bytes = Builder::new().end();
        assert_eq!(bytes.len(), 16);
        let info = parse(&bytes).unwrap();
        assert_eq!(info.total_size, 16);
        assert_eq!(info.cmdline, None);
        assert_eq!(info.bootloader_name, None);
        assert!(info.modules.is_empty());
        assert!(info.memory_map.is_empty());
        assert_eq!(info.basic_memory_kib, None);
        assert_eq!(info.acpi_rsdp, None);
    }

    #[test]
    fn total_size_field() {
        assert_eq!(total_size(&[]), None);
        assert_eq!(total_size(&[0x10, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(total_size(&[0x10, 0x02, 0, 0, 0, 0, 0, 0]), Some(0x210));
        assert_eq!(total_size(&grub_like()), Some(grub_like().len() as u32));
    }

    #[test]
    fn trailing_bytes_beyond_total_size_are_ignored() {
        let mut bytes = grub_like();
        let len = bytes.len();
        // A tag after the end tag and garbage after total_size are never read.
        bytes.extend_from_slice(&[0xff; 64]);
        let info = parse(&bytes).unwrap();
        assert_eq!(info.total_size as usize, len);
    }

    #[test]
    fn tags_after_the_end_tag_are_ignored() {
        let mut b = Builder::new().tag(tag::END, &[]);
        b.raw_tag(tag::MODULE, 4, &[]); // would be an error if read
        let bytes = b.finish();
        assert!(parse(&bytes).unwrap().modules.is_empty());
    }

    #[test]
    fn new_rsdp_is_preferred_in_either_order() {
        for bytes in [
            Builder::new()
                .tag(tag::ACPI_NEW, RSDP_V2)
                .tag(tag::ACPI_OLD, RSDP_V1)
                .end(),
            Builder::new()
                .tag(tag::ACPI_OLD, RSDP_V1)
                .tag(tag::ACPI_NEW, RSDP_V2)
                .end(),
        ] {
            assert_eq!(parse(&bytes).unwrap().acpi_rsdp, Some(RSDP_V2));
        }
    }

    #[test]
    fn strings() {
        // No NUL: the string runs to the end of the tag.
        let bytes = Builder::new().tag(tag::CMDLINE, b"loglvl=all").end();
        assert_eq!(parse(&bytes).unwrap().cmdline, Some("loglvl=all"));
        // Bytes after the NUL are not part of it.
        let bytes = Builder::new().tag(tag::CMDLINE, b"a=1\0junk").end();
        assert_eq!(parse(&bytes).unwrap().cmdline, Some("a=1"));
        // Invalid UTF-8 cuts the string there, never fails.
        let bytes = Builder::new()
            .tag(tag::CMDLINE, b"console=com1 \xff\xfe maxcpus=2\0")
            .end();
        assert_eq!(parse(&bytes).unwrap().cmdline, Some("console=com1 "));
        // A multi-byte character cut by the tag end keeps its whole predecessors.
        let bytes = Builder::new()
            .tag(
                tag::BOOTLOADER_NAME,
                "GRUB é".as_bytes().split_last().unwrap().1,
            )
            .end();
        assert_eq!(parse(&bytes).unwrap().bootloader_name, Some("GRUB "));
        // Valid UTF-8 beyond ASCII is kept.
        let bytes = Builder::new().string(tag::BOOTLOADER_NAME, "GRÜB").end();
        assert_eq!(parse(&bytes).unwrap().bootloader_name, Some("GRÜB"));
        // Empty strings, with and without the NUL.
        let bytes = Builder::new().tag(tag::CMDLINE, b"").module(1, 2, "").end();
        let info = parse(&bytes).unwrap();
        assert_eq!(info.cmdline, Some(""));
        assert_eq!(info.modules[0].cmdline, "");
        let bytes = Builder::new()
            .tag(tag::MODULE, &[0, 0, 0, 0, 0, 0, 0, 0])
            .end();
        assert_eq!(parse(&bytes).unwrap().modules[0].cmdline, "");
    }

    #[test]
    fn larger_memory_map_entries_are_walked_by_entry_size() {
        let bytes = Builder::new()
            .memory_map(32, &[(0, 0x9f000, 1), (0x10_0000, 0x100_0000, 1)])
            .end();
        let info = parse(&bytes).unwrap();
        assert_eq!(info.memory_map.len(), 2);
        assert_eq!(info.memory_map[1].base, 0x10_0000);
        assert_eq!(info.memory_map[1].len, 0x100_0000);
    }

    #[test]
    fn capacity_overflow_is_counted() {
        let mut b = Builder::new();
        for i in 0..(MAX_MODULES as u32 + 3) {
            b = b.module(i * 0x1000, i * 0x1000 + 0x800, "m");
        }
        let regions: Vec<(u64, u64, u32)> = (0..(MAX_REGIONS as u64 + 5))
            .map(|i| (i << 20, 1 << 20, 1))
            .collect();
        let bytes = b.memory_map(24, &regions).end();
        let info = parse(&bytes).unwrap();
        assert_eq!(info.modules.len(), MAX_MODULES);
        assert_eq!(info.modules_dropped, 3);
        assert_eq!(
            info.modules[MAX_MODULES - 1].start,
            (MAX_MODULES as u64 - 1) * 0x1000
        );
        assert_eq!(info.memory_map.len(), MAX_REGIONS);
        assert_eq!(info.regions_dropped, 5);
    }

    #[test]
    fn memory_kinds() {
        assert!(MemoryKind::Available.is_ram());
        assert!(MemoryKind::AcpiReclaimable.is_ram());
        assert!(MemoryKind::AcpiNvs.is_ram());
        assert!(!MemoryKind::Reserved.is_ram());
        assert!(!MemoryKind::Defective.is_ram());
        assert!(!MemoryKind::Other(7).is_ram());
        assert_eq!(MemoryKind::from_raw(0), MemoryKind::Other(0));
        assert_eq!(MemoryKind::from_raw(6), MemoryKind::Other(6));
        let names: Vec<String> = [1, 2, 3, 4, 5, 20]
            .into_iter()
            .map(|k| MemoryKind::from_raw(k).to_string())
            .collect();
        assert_eq!(
            names,
            [
                "available",
                "reserved",
                "ACPI reclaimable",
                "ACPI NVS",
                "defective",
                "type 20"
            ]
        );
    }

    #[test]
    fn too_short() {
        assert_eq!(parse(&[]).unwrap_err(), ParseError::TooShort { len: 0 });
        assert_eq!(
            parse(&[8, 0, 0, 0, 0, 0, 0]).unwrap_err(),
            ParseError::TooShort { len: 7 }
        );
    }

    #[test]
    fn bad_total_size() {
        let mut bytes = Builder::new().end();
        bytes[..4].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            parse(&bytes).unwrap_err(),
            ParseError::BadTotalSize {
                total_size: 7,
                available: 16
            }
        );
        bytes[..4].copy_from_slice(&17u32.to_le_bytes());
        assert_eq!(
            parse(&bytes).unwrap_err(),
            ParseError::BadTotalSize {
                total_size: 17,
                available: 16
            }
        );
        bytes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            parse(&bytes).unwrap_err(),
            ParseError::BadTotalSize {
                total_size: u32::MAX,
                available: 16
            }
        );
    }

    #[test]
    fn missing_end_tag() {
        // Nothing but the fixed part.
        let bytes = Builder::new().finish();
        assert_eq!(parse(&bytes).unwrap_err(), ParseError::MissingEndTag);
        let bytes = Builder::new().string(tag::CMDLINE, "x").finish();
        assert_eq!(parse(&bytes).unwrap_err(), ParseError::MissingEndTag);
        // The end tag exists but total_size stops before it.
        let mut bytes = Builder::new().string(tag::CMDLINE, "x").end();
        bytes[..4].copy_from_slice(&24u32.to_le_bytes());
        assert_eq!(parse(&bytes).unwrap_err(), ParseError::MissingEndTag);
        // The last tag's padding reaches total_size exactly.
        let mut bytes = Builder::new().tag(tag::CMDLINE, b"abc").end();
        bytes[..4].copy_from_slice(&19u32.to_le_bytes());
        assert_eq!(parse(&bytes).unwrap_err(), ParseError::MissingEndTag);
    }

    #[test]
    fn truncated_tag_header() {
        let mut bytes = Builder::new().end();
        bytes[..4].copy_from_slice(&12u32.to_le_bytes());
        assert_eq!(
            parse(&bytes).unwrap_err(),
            ParseError::TruncatedTagHeader { offset: 8 }
        );
    }

    #[test]
    fn tag_out_of_bounds() {
        let mut b = Builder::new().string(tag::CMDLINE, "ok");
        b.raw_tag(tag::BOOTLOADER_NAME, 64, b"short\0");
        let bytes = b.end();
        assert_eq!(
            parse(&bytes).unwrap_err(),
            ParseError::TagOutOfBounds {
                offset: 24,
                tag_type: tag::BOOTLOADER_NAME,
                size: 64
            }
        );
        let mut b = Builder::new();
        b.raw_tag(tag::CMDLINE, u32::MAX, b"");
        let bytes = b.end();
        assert_eq!(
            parse(&bytes).unwrap_err(),
            ParseError::TagOutOfBounds {
                offset: 8,
                tag_type: tag::CMDLINE,
                size: u32::MAX
            }
        );
    }

    #[test]
    fn bad_tag_sizes() {
        let cases: [(u32, u32, &[u8]); 6] = [
            (tag::CMDLINE, 7, b""),
            (77, 0, b""),
            (tag::END, 16, &[0; 8]),
            (tag::MODULE, 12, &[0; 4]),
            (tag::BASIC_MEMINFO, 12, &[0; 4]),
            (tag::MEMORY_MAP, 12, &[24, 0, 0, 0]),
        ];
        for (tag_type, size, payload) in cases {
            let mut b = Builder::new();
            b.raw_tag(tag_type, size, payload);
            let bytes = b.end();
            assert_eq!(
                parse(&bytes).unwrap_err(),
                ParseError::BadTagSize {
                    offset: 8,
                    tag_type,
                    size
                },
                "tag {tag_type} size {size}"
            );
        }
    }

    #[test]
    fn bad_memory_map_entry_size() {
        for entry_size in [0u32, 8, 16, 20, 23] {
            let mut payload = entry_size.to_le_bytes().to_vec();
            payload.extend_from_slice(&[0; 28]);
            let bytes = Builder::new().tag(tag::MEMORY_MAP, &payload).end();
            assert_eq!(
                parse(&bytes).unwrap_err(),
                ParseError::BadMemoryMapEntrySize {
                    offset: 8,
                    entry_size
                }
            );
        }
    }

    #[test]
    fn partial_memory_map_entry() {
        let mut payload = 24u32.to_le_bytes().to_vec();
        payload.extend_from_slice(&0u32.to_le_bytes());
        payload.extend_from_slice(&[0; 24 + 16]);
        let bytes = Builder::new().tag(tag::MEMORY_MAP, &payload).end();
        assert_eq!(
            parse(&bytes).unwrap_err(),
            ParseError::PartialMemoryMapEntry {
                offset: 8,
                size: 8 + 8 + 40,
                entry_size: 24
            }
        );
        // An entry_size so large no entry fits.
        let mut payload = u32::MAX.to_le_bytes().to_vec();
        payload.extend_from_slice(&[0; 28]);
        let bytes = Builder::new().tag(tag::MEMORY_MAP, &payload).end();
        assert!(matches!(
            parse(&bytes).unwrap_err(),
            ParseError::PartialMemoryMapEntry { .. }
        ));
    }

    #[test]
    fn memory_region_overflow() {
        let bytes = Builder::new()
            .memory_map(24, &[(u64::MAX - 0xfff, 0x1000, 2)])
            .end();
        assert_eq!(
            parse(&bytes).unwrap_err(),
            ParseError::MemoryRegionOverflow {
                base: u64::MAX - 0xfff,
                len: 0x1000
            }
        );
        // Ending exactly at the top is fine.
        let bytes = Builder::new()
            .memory_map(24, &[(u64::MAX - 0xfff, 0xfff, 2)])
            .end();
        assert!(parse(&bytes).is_ok());
    }

    #[test]
    fn module_end_before_start() {
        let bytes = Builder::new().module(0x2000, 0x1fff, "bad").end();
        assert_eq!(
            parse(&bytes).unwrap_err(),
            ParseError::ModuleEndBeforeStart {
                start: 0x2000,
                end: 0x1fff
            }
        );
        // An empty module is allowed.
        let bytes = Builder::new().module(0x2000, 0x2000, "empty").end();
        assert_eq!(parse(&bytes).unwrap().modules[0].cmdline, "empty");
    }

    #[test]
    fn error_messages() {
        let cases = [
            (ParseError::TooShort { len: 3 }, "boot information too short: 3 bytes, the fixed part alone is 8"),
            (
                ParseError::BadTotalSize { total_size: 99, available: 16 },
                "boot information total_size 99 is not between 8 and the 16 bytes available",
            ),
            (
                ParseError::TruncatedTagHeader { offset: 8 },
                "boot information tag header at offset 0x8 is cut off by total_size",
            ),
            (
                ParseError::TagOutOfBounds { offset: 24, tag_type: 2, size: 64 },
                "boot information tag type 2 at offset 0x18 with size 64 runs past total_size",
            ),
            (
                ParseError::BadTagSize { offset: 8, tag_type: 3, size: 12 },
                "boot information tag type 3 at offset 0x8 has invalid size 12",
            ),
            (
                ParseError::BadMemoryMapEntrySize { offset: 8, entry_size: 20 },
                "memory map tag at offset 0x8 has entry_size 20, below the minimum 24",
            ),
            (
                ParseError::PartialMemoryMapEntry { offset: 8, size: 56, entry_size: 24 },
                "memory map tag at offset 0x8 of size 56 does not hold whole entries of 24 bytes",
            ),
            (
                ParseError::MemoryRegionOverflow { base: 0xffff_f000, len: 0x10 },
                "memory map region at 0xfffff000 with length 0x10 wraps past the top of the address space",
            ),
            (
                ParseError::ModuleEndBeforeStart { start: 0x2000, end: 0x1000 },
                "boot module ends at 0x1000, before its start 0x2000",
            ),
            (ParseError::MissingEndTag, "boot information has no end tag"),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let full = grub_like();
        for len in 0..full.len() {
            let mut cut = full[..len].to_vec();
            if len >= 4 {
                cut[..4].copy_from_slice(&(len as u32).to_le_bytes());
            }
            assert!(parse(&cut).is_err(), "length {len}");
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        // Flip each byte of a valid structure: parse may accept or refuse, never panic.
        let full = grub_like();
        for i in 0..full.len() {
            for value in [0x00, 0x07, 0x80, 0xff] {
                let mut bytes = full.clone();
                bytes[i] = value;
                let _ = parse(&bytes);
            }
        }
    }
}
