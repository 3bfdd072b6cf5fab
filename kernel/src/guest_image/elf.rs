//! ELF64 little-endian x86-64 executables, read from an untrusted byte slice.
//!
//! Field layouts from the System V ABI ("gABI", chapter 4, and its x86-64 supplement).
//! Written by hand rather than with `goblin`: the domain builder needs headers, program
//! headers, note records and one section lookup, and a small parser whose every offset
//! is checked in plain sight is easier to trust than a general one behind `scroll`.
//!
//! Everything is validated once in [`Elf::parse`]: afterwards every accessor returns
//! slices already known to be inside the file, so later stages need no bounds checks.

use alloc::vec::Vec;
use core::fmt;

pub const EM_X86_64: u16 = 62;
pub const ET_EXEC: u16 = 2;
pub const ET_DYN: u16 = 3;
pub const PT_LOAD: u32 = 1;
pub const PT_NOTE: u32 = 4;
pub const SHT_NOTE: u32 = 7;
pub const SHT_NOBITS: u32 = 8;
pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;
pub const PF_R: u32 = 4;

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const SHDR_SIZE: usize = 64;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u8 = 1;
/// More than any kernel has (Linux's vmlinux has 5); bounds the work on hostile input.
pub const MAX_PROGRAM_HEADERS: usize = 64;
/// Linux's vmlinux has about 80 sections; a kernel built with per-function sections may
/// have tens of thousands, which a PV loader has no need to accept.
pub const MAX_SECTION_HEADERS: usize = 4096;

/// One program header (`Elf64_Phdr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramHeader {
    pub p_type: u32,
    pub p_flags: u32,
    pub p_offset: u64,
    pub p_vaddr: u64,
    pub p_paddr: u64,
    pub p_filesz: u64,
    pub p_memsz: u64,
    pub p_align: u64,
}

impl ProgramHeader {
    /// Whether the loader copies this segment into the guest: a `PT_LOAD` with at least
    /// one of R/W/X set (the rule of Xen's libelf, `elf_phdr_is_loadable`).
    pub const fn is_loadable(&self) -> bool {
        self.p_type == PT_LOAD && self.p_flags & (PF_R | PF_W | PF_X) != 0
    }
}

/// One section header (`Elf64_Shdr`), the fields used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionHeader {
    pub sh_name: u32,
    pub sh_type: u32,
    pub sh_offset: u64,
    pub sh_size: u64,
}

/// One note record: name (without its NUL), type and descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Note<'a> {
    pub name: &'a [u8],
    pub note_type: u32,
    pub desc: &'a [u8],
}

/// What is wrong with an ELF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    TooShort {
        len: usize,
    },
    BadMagic,
    NotElf64 {
        class: u8,
    },
    NotLittleEndian {
        data: u8,
    },
    BadVersion {
        version: u8,
    },
    NotX86_64 {
        machine: u16,
    },
    NotExecutable {
        e_type: u16,
    },
    BadHeaderEntrySize {
        what: &'static str,
        size: u16,
    },
    TooManyHeaders {
        what: &'static str,
        count: usize,
        max: usize,
    },
    NoProgramHeaders,
    TableOutOfBounds {
        what: &'static str,
        offset: u64,
        size: u64,
        file_len: usize,
    },
    SegmentOutOfBounds {
        index: usize,
        offset: u64,
        filesz: u64,
        file_len: usize,
    },
    FileSizeExceedsMemSize {
        index: usize,
        filesz: u64,
        memsz: u64,
    },
    AddressOverflow {
        index: usize,
    },
    OverlappingSegments {
        first: usize,
        second: usize,
    },
    NoLoadableSegment,
    SectionOutOfBounds {
        index: usize,
        offset: u64,
        size: u64,
        file_len: usize,
    },
    BadSectionNameTable {
        index: u16,
    },
    MalformedNote {
        offset: usize,
        detail: &'static str,
    },
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ElfError::TooShort { len } => {
                write!(f, "{len} bytes is too short for an ELF64 header (64 bytes)")
            }
            ElfError::BadMagic => f.write_str("no ELF magic (7f 45 4c 46)"),
            ElfError::NotElf64 { class } => write!(
                f,
                "ELF class {class} is not ELFCLASS64: a 64-bit PV kernel is required"
            ),
            ElfError::NotLittleEndian { data } => {
                write!(f, "ELF data encoding {data} is not little endian")
            }
            ElfError::BadVersion { version } => write!(f, "ELF version {version} is not 1"),
            ElfError::NotX86_64 { machine } => write!(
                f,
                "ELF machine {machine} is not x86-64 ({EM_X86_64}): wrong architecture"
            ),
            ElfError::NotExecutable { e_type } => write!(
                f,
                "ELF type {e_type} is not an executable (ET_EXEC or ET_DYN): an object file \
                 or core dump is not a kernel"
            ),
            ElfError::BadHeaderEntrySize { what, size } => {
                write!(f, "{what} entries are {size} bytes, not the ELF64 size")
            }
            ElfError::TooManyHeaders { what, count, max } => {
                write!(f, "{count} {what} headers, more than the {max} accepted")
            }
            ElfError::NoProgramHeaders => f.write_str("no program headers"),
            ElfError::TableOutOfBounds {
                what,
                offset,
                size,
                file_len,
            } => write!(
                f,
                "the {what} header table ({size} bytes at {offset:#x}) lies outside the \
                 {file_len}-byte file"
            ),
            ElfError::SegmentOutOfBounds {
                index,
                offset,
                filesz,
                file_len,
            } => write!(
                f,
                "segment {index} ({filesz} bytes at offset {offset:#x}) lies outside the \
                 {file_len}-byte file (truncated image?)"
            ),
            ElfError::FileSizeExceedsMemSize {
                index,
                filesz,
                memsz,
            } => write!(
                f,
                "segment {index} has p_filesz {filesz:#x} larger than p_memsz {memsz:#x}"
            ),
            ElfError::AddressOverflow { index } => {
                write!(f, "segment {index}'s address range wraps around")
            }
            ElfError::OverlappingSegments { first, second } => write!(
                f,
                "loadable segments {first} and {second} overlap (by p_paddr)"
            ),
            ElfError::NoLoadableSegment => f.write_str("no loadable (PT_LOAD) segment"),
            ElfError::SectionOutOfBounds {
                index,
                offset,
                size,
                file_len,
            } => write!(
                f,
                "section {index} ({size} bytes at offset {offset:#x}) lies outside the \
                 {file_len}-byte file"
            ),
            ElfError::BadSectionNameTable { index } => {
                write!(f, "the section-name table index {index} is invalid")
            }
            ElfError::MalformedNote { offset, detail } => {
                write!(f, "malformed ELF note at offset {offset:#x}: {detail}")
            }
        }
    }
}

/// A validated ELF64 x86-64 executable.
#[derive(Debug)]
pub struct Elf<'a> {
    data: &'a [u8],
    pub e_type: u16,
    pub e_entry: u64,
    phdrs: Vec<ProgramHeader>,
    shdrs: Vec<SectionHeader>,
    /// Index of the section-name string table, if the file has one.
    shstrndx: Option<usize>,
}

fn u16_at(d: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([d[off], d[off + 1]])
}

fn u32_at(d: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([d[off], d[off + 1], d[off + 2], d[off + 3]])
}

fn u64_at(d: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[off..off + 8]);
    u64::from_le_bytes(b)
}

/// `data[offset..offset + size]` if it lies inside `data`, with no overflow.
fn range(data: &[u8], offset: u64, size: u64) -> Option<&[u8]> {
    let end = offset.checked_add(size)?;
    if end > data.len() as u64 {
        return None;
    }
    // Both are at most data.len(), so they fit in usize.
    Some(&data[offset as usize..end as usize])
}

impl<'a> Elf<'a> {
    /// Check the ELF header, program headers and section headers of `data`.
    pub fn parse(data: &'a [u8]) -> Result<Elf<'a>, ElfError> {
        if data.len() < 4 || &data[..4] != b"\x7fELF" {
            return Err(if data.len() < 4 && b"\x7fELF".starts_with(data) {
                ElfError::TooShort { len: data.len() }
            } else {
                ElfError::BadMagic
            });
        }
        if data.len() < EHDR_SIZE {
            return Err(ElfError::TooShort { len: data.len() });
        }
        if data[4] != ELFCLASS64 {
            return Err(ElfError::NotElf64 { class: data[4] });
        }
        if data[5] != ELFDATA2LSB {
            return Err(ElfError::NotLittleEndian { data: data[5] });
        }
        if data[6] != EV_CURRENT {
            return Err(ElfError::BadVersion { version: data[6] });
        }
        let e_type = u16_at(data, 16);
        if e_type != ET_EXEC && e_type != ET_DYN {
            return Err(ElfError::NotExecutable { e_type });
        }
        let machine = u16_at(data, 18);
        if machine != EM_X86_64 {
            return Err(ElfError::NotX86_64 { machine });
        }
        let e_entry = u64_at(data, 24);
        let e_phoff = u64_at(data, 32);
        let e_shoff = u64_at(data, 40);
        let e_ehsize = u16_at(data, 52);
        let e_phentsize = u16_at(data, 54);
        let e_phnum = usize::from(u16_at(data, 56));
        let e_shentsize = u16_at(data, 58);
        let e_shnum = usize::from(u16_at(data, 60));
        let e_shstrndx = u16_at(data, 62);
        if usize::from(e_ehsize) != EHDR_SIZE {
            return Err(ElfError::BadHeaderEntrySize {
                what: "ELF header",
                size: e_ehsize,
            });
        }

        if e_phnum == 0 {
            return Err(ElfError::NoProgramHeaders);
        }
        if usize::from(e_phentsize) != PHDR_SIZE {
            return Err(ElfError::BadHeaderEntrySize {
                what: "program header",
                size: e_phentsize,
            });
        }
        if e_phnum > MAX_PROGRAM_HEADERS {
            return Err(ElfError::TooManyHeaders {
                what: "program",
                count: e_phnum,
                max: MAX_PROGRAM_HEADERS,
            });
        }
        let table_size = (e_phnum * PHDR_SIZE) as u64;
        let table = range(data, e_phoff, table_size).ok_or(ElfError::TableOutOfBounds {
            what: "program",
            offset: e_phoff,
            size: table_size,
            file_len: data.len(),
        })?;
        let phdrs: Vec<ProgramHeader> = table
            .chunks_exact(PHDR_SIZE)
            .map(|p| ProgramHeader {
                p_type: u32_at(p, 0),
                p_flags: u32_at(p, 4),
                p_offset: u64_at(p, 8),
                p_vaddr: u64_at(p, 16),
                p_paddr: u64_at(p, 24),
                p_filesz: u64_at(p, 32),
                p_memsz: u64_at(p, 40),
                p_align: u64_at(p, 48),
            })
            .collect();
        check_segments(data, &phdrs)?;

        // Sections are optional (a stripped image has none); when present they must be
        // sound, since notes and `__xen_guest` may be looked up through them.
        let mut shdrs = Vec::new();
        let mut shstrndx = None;
        if e_shoff != 0 && e_shnum != 0 {
            if usize::from(e_shentsize) != SHDR_SIZE {
                return Err(ElfError::BadHeaderEntrySize {
                    what: "section header",
                    size: e_shentsize,
                });
            }
            if e_shnum > MAX_SECTION_HEADERS {
                return Err(ElfError::TooManyHeaders {
                    what: "section",
                    count: e_shnum,
                    max: MAX_SECTION_HEADERS,
                });
            }
            let table_size = (e_shnum * SHDR_SIZE) as u64;
            let table = range(data, e_shoff, table_size).ok_or(ElfError::TableOutOfBounds {
                what: "section",
                offset: e_shoff,
                size: table_size,
                file_len: data.len(),
            })?;
            for (index, s) in table.chunks_exact(SHDR_SIZE).enumerate() {
                let sh = SectionHeader {
                    sh_name: u32_at(s, 0),
                    sh_type: u32_at(s, 4),
                    sh_offset: u64_at(s, 24),
                    sh_size: u64_at(s, 32),
                };
                if index != 0
                    && sh.sh_type != SHT_NOBITS
                    && range(data, sh.sh_offset, sh.sh_size).is_none()
                {
                    return Err(ElfError::SectionOutOfBounds {
                        index,
                        offset: sh.sh_offset,
                        size: sh.sh_size,
                        file_len: data.len(),
                    });
                }
                shdrs.push(sh);
            }
            // SHN_UNDEF: no names. Anything else must be an in-file section.
            if e_shstrndx != 0 {
                let idx = usize::from(e_shstrndx);
                match shdrs.get(idx) {
                    Some(s) if s.sh_type != SHT_NOBITS => shstrndx = Some(idx),
                    _ => return Err(ElfError::BadSectionNameTable { index: e_shstrndx }),
                }
            }
        }

        Ok(Elf {
            data,
            e_type,
            e_entry,
            phdrs,
            shdrs,
            shstrndx,
        })
    }

    /// The whole file.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    pub fn program_headers(&self) -> &[ProgramHeader] {
        &self.phdrs
    }

    /// The segments the loader copies, in file order.
    pub fn loadable_segments(&self) -> impl Iterator<Item = &ProgramHeader> {
        self.phdrs.iter().filter(|p| p.is_loadable())
    }

    /// The file bytes of a segment (`p_filesz` bytes at `p_offset`; checked in `parse`).
    pub fn segment_data(&self, phdr: &ProgramHeader) -> &'a [u8] {
        range(self.data, phdr.p_offset, phdr.p_filesz).unwrap_or(&[])
    }

    /// The lowest `p_paddr` and the highest `p_paddr + p_memsz` of the loadable segments
    /// (libelf's `pstart`/`pend`). `parse` guarantees there is one and nothing overflows.
    pub fn paddr_extent(&self) -> (u64, u64) {
        self.loadable_segments().fold((u64::MAX, 0), |(lo, hi), p| {
            (lo.min(p.p_paddr), hi.max(p.p_paddr + p.p_memsz))
        })
    }

    /// The contents of every `PT_NOTE` segment, skipping those with `p_offset` 0 (some
    /// binutils versions emit such bogus note headers; Xen's libelf skips them too).
    pub fn note_segments(&self) -> impl Iterator<Item = (usize, &'a [u8])> + '_ {
        self.phdrs
            .iter()
            .filter(|p| p.p_type == PT_NOTE && p.p_offset != 0)
            .map(|p| (p.p_offset as usize, self.segment_data(p)))
    }

    /// The contents of every `SHT_NOTE` section.
    pub fn note_sections(&self) -> impl Iterator<Item = (usize, &'a [u8])> + '_ {
        self.shdrs
            .iter()
            .skip(1)
            .filter(|s| s.sh_type == SHT_NOTE)
            .map(|s| (s.sh_offset as usize, self.section_data(s)))
    }

    fn section_data(&self, s: &SectionHeader) -> &'a [u8] {
        if s.sh_type == SHT_NOBITS {
            return &[];
        }
        range(self.data, s.sh_offset, s.sh_size).unwrap_or(&[])
    }

    /// The name of a section, if the file has a name table and the name is in it.
    fn section_name(&self, s: &SectionHeader) -> Option<&'a [u8]> {
        let table = self.section_data(self.shdrs.get(self.shstrndx?)?);
        let rest = table.get(usize::try_from(s.sh_name).ok()?..)?;
        let nul = rest.iter().position(|&b| b == 0)?;
        Some(&rest[..nul])
    }

    /// The contents of the first section called `name`.
    pub fn section_by_name(&self, name: &str) -> Option<&'a [u8]> {
        self.shdrs
            .iter()
            .skip(1)
            .find(|s| self.section_name(s) == Some(name.as_bytes()))
            .map(|s| self.section_data(s))
    }
}

/// `PT_LOAD` rules: file bytes inside the file, `p_filesz <= p_memsz`, no address
/// overflow, no two loadable segments sharing a physical byte, at least one non-empty.
/// Also `PT_NOTE` contents inside the file.
fn check_segments(data: &[u8], phdrs: &[ProgramHeader]) -> Result<(), ElfError> {
    let mut any = false;
    for (index, p) in phdrs.iter().enumerate() {
        let in_file = p.p_type != PT_LOAD && p.p_type != PT_NOTE
            || range(data, p.p_offset, p.p_filesz).is_some();
        if !in_file {
            return Err(ElfError::SegmentOutOfBounds {
                index,
                offset: p.p_offset,
                filesz: p.p_filesz,
                file_len: data.len(),
            });
        }
        if !p.is_loadable() {
            continue;
        }
        if p.p_filesz > p.p_memsz {
            return Err(ElfError::FileSizeExceedsMemSize {
                index,
                filesz: p.p_filesz,
                memsz: p.p_memsz,
            });
        }
        if p.p_paddr.checked_add(p.p_memsz).is_none() || p.p_vaddr.checked_add(p.p_memsz).is_none()
        {
            return Err(ElfError::AddressOverflow { index });
        }
        any |= p.p_memsz > 0;
        for (first, q) in phdrs[..index].iter().enumerate() {
            let overlaps = q.is_loadable()
                && p.p_memsz > 0
                && q.p_memsz > 0
                && p.p_paddr < q.p_paddr + q.p_memsz
                && q.p_paddr < p.p_paddr + p.p_memsz;
            if overlaps {
                return Err(ElfError::OverlappingSegments {
                    first,
                    second: index,
                });
            }
        }
    }
    if any {
        Ok(())
    } else {
        Err(ElfError::NoLoadableSegment)
    }
}

/// Iterate over the note records in `data` (a note segment or section), which starts at
/// file offset `base` (for error messages). Each record is `namesz`, `descsz`, `type`,
/// then the name and the descriptor, each padded to 4 bytes (gABI "Note Section").
pub fn notes(base: usize, data: &[u8]) -> Notes<'_> {
    Notes { base, data, pos: 0 }
}

/// The iterator [`notes`] returns; it stops after the first error.
#[derive(Debug)]
pub struct Notes<'a> {
    base: usize,
    data: &'a [u8],
    pos: usize,
}

const fn align4(n: u64) -> u64 {
    (n + 3) & !3
}

impl<'a> Iterator for Notes<'a> {
    type Item = Result<Note<'a>, ElfError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.data[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let offset = self.base.saturating_add(self.pos);
        let fail = |detail| Some(Err(ElfError::MalformedNote { offset, detail }));
        if rest.len() < 12 {
            // Zero padding after the last record is harmless.
            self.pos = self.data.len();
            if rest.iter().all(|&b| b == 0) {
                return None;
            }
            return fail("truncated note header");
        }
        let namesz = u64::from(u32_at(rest, 0));
        let descsz = u64::from(u32_at(rest, 4));
        let note_type = u32_at(rest, 8);
        let desc_start = 12 + align4(namesz);
        // The last record's descriptor padding may be cut off by the segment's end.
        let desc_end = desc_start + descsz;
        if desc_end > rest.len() as u64 {
            self.pos = self.data.len();
            return fail("name or descriptor runs past the end of the notes");
        }
        // Checked just above: all of these are within rest.len().
        let name = &rest[12..12 + namesz as usize];
        let name = name.split(|&b| b == 0).next().unwrap_or(name);
        let desc = &rest[desc_start as usize..desc_end as usize];
        let next = align4(desc_end).min(rest.len() as u64) as usize;
        self.pos += next;
        Some(Ok(Note {
            name,
            note_type,
            desc,
        }))
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;
    use crate::guest_image::tests::ElfBuilder;

    #[test]
    fn parses_a_well_formed_image() {
        let img = ElfBuilder::linux_like().build();
        let elf = Elf::parse(&img).unwrap();
        assert_eq!(elf.e_type, ET_EXEC);
        assert_eq!(elf.loadable_segments().count(), 3);
        let (lo, hi) = elf.paddr_extent();
        assert_eq!(lo, 0x100_0000);
        assert!(hi > lo);
        assert_eq!(elf.note_segments().count(), 1);
        assert!(elf.section_by_name("__xen_guest").is_none());
        assert!(elf.section_by_name(".notes").is_some());
    }

    #[test]
    fn header_field_errors() {
        let good = ElfBuilder::linux_like().build();
        let patch = |off: usize, bytes: &[u8]| {
            let mut v = good.clone();
            v[off..off + bytes.len()].copy_from_slice(bytes);
            Elf::parse(&v).unwrap_err()
        };
        assert_eq!(patch(0, b"\x7fELG"), ElfError::BadMagic);
        assert_eq!(patch(4, &[1]), ElfError::NotElf64 { class: 1 });
        assert_eq!(patch(5, &[2]), ElfError::NotLittleEndian { data: 2 });
        assert_eq!(patch(6, &[0]), ElfError::BadVersion { version: 0 });
        assert_eq!(patch(16, &[1, 0]), ElfError::NotExecutable { e_type: 1 });
        assert_eq!(patch(18, &[3, 0]), ElfError::NotX86_64 { machine: 3 });
        assert!(matches!(
            patch(54, &[32, 0]),
            ElfError::BadHeaderEntrySize { .. }
        ));
        assert_eq!(patch(56, &[0, 0]), ElfError::NoProgramHeaders);
        assert!(matches!(
            patch(56, &[0xff, 0xff]),
            ElfError::TooManyHeaders { .. }
        ));
        assert!(matches!(
            patch(32, &[0xf0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            ElfError::TableOutOfBounds { .. }
        ));
        assert!(matches!(
            patch(58, &[40, 0]),
            ElfError::BadHeaderEntrySize { .. }
        ));
        assert!(matches!(
            patch(40, &[0, 0, 0, 0, 0, 0, 0, 0x80]),
            ElfError::TableOutOfBounds { .. }
        ));
        assert_eq!(
            patch(62, &[0xfe, 0x00]),
            ElfError::BadSectionNameTable { index: 0xfe }
        );
        // Every message names the problem.
        assert!(patch(18, &[3, 0]).to_string().contains("x86-64"));
    }

    #[test]
    fn segment_errors() {
        let phdr = |i: usize, f: usize| 64 + i * PHDR_SIZE + f;
        let good = ElfBuilder::linux_like().build();
        let patch = |off: usize, val: u64| {
            let mut v = good.clone();
            v[off..off + 8].copy_from_slice(&val.to_le_bytes());
            Elf::parse(&v).unwrap_err()
        };
        // Segment 0 is the first PT_LOAD: p_offset 8, p_paddr 24, p_filesz 32, p_memsz 40.
        assert!(matches!(
            patch(phdr(0, 8), good.len() as u64),
            ElfError::SegmentOutOfBounds { index: 0, .. }
        ));
        assert!(matches!(
            patch(phdr(0, 32), u64::MAX),
            ElfError::SegmentOutOfBounds { index: 0, .. }
        ));
        assert!(matches!(
            patch(phdr(0, 40), 1),
            ElfError::FileSizeExceedsMemSize { index: 0, .. }
        ));
        assert_eq!(
            patch(phdr(0, 24), u64::MAX - 0x10),
            ElfError::AddressOverflow { index: 0 }
        );
        assert_eq!(
            patch(phdr(1, 24), 0x100_0000),
            ElfError::OverlappingSegments {
                first: 0,
                second: 1
            }
        );
        // PT_NOTE (segment 3) out of the file.
        assert!(matches!(
            patch(phdr(3, 32), 1 << 40),
            ElfError::SegmentOutOfBounds { index: 3, .. }
        ));
        // No loadable segment: make every PT_LOAD a PT_NULL.
        let mut v = good.clone();
        for i in 0..3 {
            v[phdr(i, 0)..phdr(i, 4)].copy_from_slice(&0u32.to_le_bytes());
        }
        assert_eq!(Elf::parse(&v).unwrap_err(), ElfError::NoLoadableSegment);
    }

    #[test]
    fn section_out_of_bounds() {
        let img = ElfBuilder::linux_like().build();
        let shoff = u64::from_le_bytes(img[40..48].try_into().unwrap()) as usize;
        let mut v = img.clone();
        // Section 1's sh_offset.
        v[shoff + SHDR_SIZE + 24..shoff + SHDR_SIZE + 32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Elf::parse(&v).unwrap_err(),
            ElfError::SectionOutOfBounds { index: 1, .. }
        ));
    }

    #[test]
    fn note_records() {
        let mut seg = vec![];
        for (name, ty, desc) in [
            (
                &b"Xen\0"[..],
                1u32,
                &b"\x01\x02\x03\x04\x05\x06\x07\x08"[..],
            ),
            (b"GNU\0", 3, b"abcde"),
            (b"Linux\0", 7, b""),
        ] {
            seg.extend((name.len() as u32).to_le_bytes());
            seg.extend((desc.len() as u32).to_le_bytes());
            seg.extend(ty.to_le_bytes());
            seg.extend(name);
            seg.resize(seg.len().next_multiple_of(4), 0);
            seg.extend(desc);
            seg.resize(seg.len().next_multiple_of(4), 0);
        }
        seg.extend([0u8; 4]); // trailing padding
        let got: Vec<_> = notes(0, &seg).collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].name, b"Xen");
        assert_eq!(got[0].note_type, 1);
        assert_eq!(got[0].desc.len(), 8);
        assert_eq!(got[1].desc, b"abcde");
        assert_eq!(got[2].name, b"Linux");
        // Every truncation either ends cleanly at a record boundary or reports an error.
        for len in 0..seg.len() {
            let items: Vec<_> = notes(0, &seg[..len]).collect();
            let errors = items.iter().filter(|r| r.is_err()).count();
            assert!(errors <= 1);
        }
        // A huge namesz or descsz is an error, not an overflow.
        let mut bad = seg.clone();
        bad[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(notes(0x100, &bad).next().unwrap().is_err());
        let mut bad = seg.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            notes(0x100, &bad).next().unwrap(),
            Err(ElfError::MalformedNote { offset: 0x100, .. })
        ));
    }
}
