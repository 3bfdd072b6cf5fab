//! The guest-kernel image: from a boot module to checked ELF segments and Xen guest
//! information, ready for the domain builder to load.
//!
//! Accepted forms, as Xen's own builders accept them: an ELF64 x86-64 PV kernel
//! (`vmlinux`), the same compressed with gzip or XZ, or a Linux bzImage (`vmlinuz`, e.g.
//! Debian's, whose payload is an XZ-compressed `vmlinux`). Everything here is untrusted
//! input handling: a malformed or hostile image is an [`ImageError`] that says what is
//! wrong, never a panic, and no allocation exceeds the caller's `max_decompressed`.
//!
//! Load addresses follow Xen's libelf: a segment goes to
//! `p_paddr + VIRT_BASE - PADDR_OFFSET`, not to `p_vaddr`, because Linux links its
//! per-CPU segment at `p_vaddr` 0 while its `p_paddr` places it inside the image.

pub mod bzimage;
pub mod decompress;
pub mod elf;
pub mod xen_notes;

use alloc::vec::Vec;
use core::fmt;

use ferrovisor_abi::layout::{HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START};

use self::{
    bzimage::BzImageError,
    decompress::{Compression, DecompressError},
    elf::{Elf, ElfError, PF_X},
    xen_notes::{NotesError, XenGuestInfo},
};

const PAGE_SIZE: u64 = 4096;
/// End of the lower canonical half: guest user space.
const LOWER_HALF_END: u64 = 0x0000_8000_0000_0000;
/// The most virtual space a kernel image may span. Linux's x86-64 `KERNEL_IMAGE_SIZE` is
/// at most 1 GiB; anything larger is a corrupt or hostile image.
pub const MAX_KERNEL_EXTENT: u64 = 1 << 30;

/// How the boot module was packaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// A bare ELF kernel.
    Elf,
    /// A gzip-compressed ELF kernel.
    Gzip,
    /// An XZ-compressed ELF kernel.
    Xz,
    /// A Linux bzImage whose payload is compressed with the given method.
    BzImage(Compression),
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageFormat::Elf => f.write_str("ELF"),
            ImageFormat::Gzip => f.write_str("gzip-compressed ELF"),
            ImageFormat::Xz => f.write_str("XZ-compressed ELF"),
            ImageFormat::BzImage(c) => write!(f, "bzImage ({c} payload)"),
        }
    }
}

/// One loadable segment, placed in the guest's virtual address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    /// Where the segment starts in the guest: `p_paddr + virt_base - paddr_offset`.
    pub guest_virt: u64,
    /// Offset of its bytes in [`GuestImage::elf`].
    pub file_offset: u64,
    /// Bytes copied from the file; the rest up to `mem_size` is zeroed.
    pub file_size: u64,
    pub mem_size: u64,
    /// ELF `p_flags` (`PF_R` 4, `PF_W` 2, `PF_X` 1).
    pub flags: u32,
}

impl LoadSegment {
    pub const fn guest_end(&self) -> u64 {
        self.guest_virt + self.mem_size
    }

    const fn contains(&self, va: u64, len: u64) -> bool {
        va >= self.guest_virt && va <= self.guest_end() && self.guest_end() - va >= len
    }
}

/// A checked guest kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestImage {
    /// The (decompressed) ELF file the segments refer to.
    pub elf: Vec<u8>,
    pub info: XenGuestInfo,
    /// Loadable segments with a non-zero memory size, in file order.
    pub segments: Vec<LoadSegment>,
    /// Page-aligned start of the loaded kernel.
    pub virt_start: u64,
    /// Page-aligned end (exclusive) of the loaded kernel.
    pub virt_end: u64,
    /// Virtual entry point.
    pub entry: u64,
    pub format: ImageFormat,
}

/// Why a kernel image is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageError {
    Empty,
    /// Neither ELF, bzImage nor a known compression format.
    UnrecognisedFormat {
        first_bytes: [u8; 8],
        len: usize,
    },
    BzImage(BzImageError),
    /// A bzImage whose payload starts with no known compression magic.
    UnknownPayloadCompression {
        first_bytes: [u8; 8],
    },
    Decompress {
        format: Compression,
        error: DecompressError,
    },
    /// The decompressed payload is not an ELF file.
    PayloadNotElf {
        format: ImageFormat,
        first_bytes: [u8; 8],
    },
    TooLarge {
        size: usize,
        limit: usize,
    },
    Elf(ElfError),
    Xen(NotesError),
    SegmentAddressOverflow {
        index: usize,
    },
    SegmentInHypervisorRange {
        index: usize,
        start: u64,
        end: u64,
    },
    SegmentNotCanonical {
        index: usize,
        start: u64,
        end: u64,
    },
    ExtentTooLarge {
        start: u64,
        end: u64,
    },
    EntryNotInCode {
        entry: u64,
    },
    HypercallPageOutsideImage {
        addr: u64,
    },
    HypercallPageMisaligned {
        addr: u64,
    },
}

impl From<ElfError> for ImageError {
    fn from(e: ElfError) -> Self {
        ImageError::Elf(e)
    }
}

impl From<NotesError> for ImageError {
    fn from(e: NotesError) -> Self {
        ImageError::Xen(e)
    }
}

impl From<BzImageError> for ImageError {
    fn from(e: BzImageError) -> Self {
        ImageError::BzImage(e)
    }
}

struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Empty => f.write_str("the dom0 kernel module is empty"),
            ImageError::UnrecognisedFormat { first_bytes, len } => write!(
                f,
                "the dom0 kernel module is not a Linux bzImage or ELF kernel, compressed or \
                 not (first bytes {}); the first module2 line must name the kernel",
                Hex(&first_bytes[..(*len).min(8)])
            ),
            ImageError::BzImage(e) => write!(f, "the dom0 kernel is a bad bzImage: {e}"),
            ImageError::UnknownPayloadCompression { first_bytes } => write!(
                f,
                "the dom0 kernel bzImage's payload has an unknown compression format \
                 (first bytes {})",
                Hex(first_bytes)
            ),
            ImageError::Decompress { error, .. } => {
                write!(f, "the dom0 kernel cannot be decompressed: {error}")
            }
            ImageError::PayloadNotElf {
                format,
                first_bytes,
            } => write!(
                f,
                "the dom0 kernel's {format} payload is not an ELF kernel (first bytes {})",
                Hex(first_bytes)
            ),
            ImageError::TooLarge { size, limit } => write!(
                f,
                "the dom0 kernel is {size} bytes, more than the {limit}-byte limit"
            ),
            ImageError::Elf(e) => write!(f, "the dom0 kernel is a malformed ELF file: {e}"),
            ImageError::Xen(e) => write!(f, "the dom0 kernel is refused: {e}"),
            ImageError::SegmentAddressOverflow { index } => write!(
                f,
                "the dom0 kernel's segment {index} lands outside the 64-bit address space"
            ),
            ImageError::SegmentInHypervisorRange { index, start, end } => write!(
                f,
                "the dom0 kernel's segment {index} ({start:#x}..{end:#x}) overlaps the \
                 hypervisor's reserved range {HYPERVISOR_VIRT_START:#x}..{HYPERVISOR_VIRT_END:#x}"
            ),
            ImageError::SegmentNotCanonical { index, start, end } => write!(
                f,
                "the dom0 kernel's segment {index} ({start:#x}..{end:#x}) is not at \
                 canonical guest addresses"
            ),
            ImageError::ExtentTooLarge { start, end } => write!(
                f,
                "the dom0 kernel spans {start:#x}..{end:#x}, more than {} MiB",
                MAX_KERNEL_EXTENT >> 20
            ),
            ImageError::EntryNotInCode { entry } => write!(
                f,
                "the dom0 kernel's entry point {entry:#x} is not in an executable segment"
            ),
            ImageError::HypercallPageOutsideImage { addr } => write!(
                f,
                "the dom0 kernel's hypercall page {addr:#x} is not inside one of its segments"
            ),
            ImageError::HypercallPageMisaligned { addr } => write!(
                f,
                "the dom0 kernel's hypercall page {addr:#x} is not page aligned"
            ),
        }
    }
}

fn first_bytes(data: &[u8]) -> [u8; 8] {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    b
}

fn is_elf(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

/// Unpack `module` (ELF, gzip/XZ-compressed ELF, or bzImage) into owned ELF bytes, never
/// holding more than `max_decompressed` bytes of output.
fn unpack(module: &[u8], max_decompressed: usize) -> Result<(ImageFormat, Vec<u8>), ImageError> {
    if module.is_empty() {
        return Err(ImageError::Empty);
    }
    if is_elf(module) {
        if module.len() > max_decompressed {
            return Err(ImageError::TooLarge {
                size: module.len(),
                limit: max_decompressed,
            });
        }
        return Ok((ImageFormat::Elf, module.to_vec()));
    }
    let (format, kind, compressed, hint) = if bzimage::is_bzimage(module) {
        let bz = bzimage::parse(module)?;
        let kind = decompress::detect(bz.payload).ok_or(ImageError::UnknownPayloadCompression {
            first_bytes: first_bytes(bz.payload),
        })?;
        // Linux stores the uncompressed length in the payload's last four bytes.
        let hint = usize::try_from(bz.uncompressed_len).ok();
        (ImageFormat::BzImage(kind), kind, bz.payload, hint)
    } else {
        match decompress::detect(module) {
            Some(Compression::Gzip) => {
                // gzip's trailer ends with the length (mod 2^32).
                let hint = module
                    .get(module.len().saturating_sub(4)..)
                    .and_then(|t| <[u8; 4]>::try_from(t).ok())
                    .and_then(|t| usize::try_from(u32::from_le_bytes(t)).ok());
                (ImageFormat::Gzip, Compression::Gzip, module, hint)
            }
            Some(Compression::Xz) => (ImageFormat::Xz, Compression::Xz, module, None),
            // Named but not decodable: `decompress` refuses it with a clear message.
            Some(other) => (ImageFormat::Elf, other, module, None),
            None => {
                return Err(ImageError::UnrecognisedFormat {
                    first_bytes: first_bytes(module),
                    len: module.len(),
                })
            }
        }
    };
    let (_, elf) = decompress::decompress(compressed, max_decompressed, hint).map_err(|error| {
        ImageError::Decompress {
            format: kind,
            error,
        }
    })?;
    if !is_elf(&elf) {
        return Err(ImageError::PayloadNotElf {
            format,
            first_bytes: first_bytes(&elf),
        });
    }
    Ok((format, elf))
}

/// Check a boot module as a PV guest kernel: unpack it, validate the ELF, read the Xen
/// guest information and place every loadable segment in the guest's address space.
pub fn inspect(module: &[u8], max_decompressed: usize) -> Result<GuestImage, ImageError> {
    let (format, elf_bytes) = unpack(module, max_decompressed)?;
    let elf = Elf::parse(&elf_bytes)?;
    let info = xen_notes::parse(&elf)?;
    let segments = place_segments(&elf, &info)?;

    // `place_segments` returns at least one segment (`Elf::parse` guarantees a
    // non-empty loadable one), all ending at most at 2^64 - 2^47 or below 2^47.
    let lo = segments.iter().map(|s| s.guest_virt).min().unwrap_or(0);
    let hi = segments.iter().map(|s| s.guest_end()).max().unwrap_or(0);
    let virt_start = lo & !(PAGE_SIZE - 1);
    let virt_end = hi
        .checked_next_multiple_of(PAGE_SIZE)
        .ok_or(ImageError::SegmentAddressOverflow { index: 0 })?;
    if virt_end - virt_start > MAX_KERNEL_EXTENT {
        return Err(ImageError::ExtentTooLarge {
            start: virt_start,
            end: virt_end,
        });
    }

    let entry = info.entry;
    if !segments
        .iter()
        .any(|s| s.flags & PF_X != 0 && s.contains(entry, 1))
    {
        return Err(ImageError::EntryNotInCode { entry });
    }
    if let Some(addr) = info.hypercall_page {
        if addr % PAGE_SIZE != 0 {
            return Err(ImageError::HypercallPageMisaligned { addr });
        }
        if !segments.iter().any(|s| s.contains(addr, PAGE_SIZE)) {
            return Err(ImageError::HypercallPageOutsideImage { addr });
        }
    }

    drop(elf);
    Ok(GuestImage {
        elf: elf_bytes,
        info,
        segments,
        virt_start,
        virt_end,
        entry,
        format,
    })
}

/// Place each loadable segment at `p_paddr + virt_base - paddr_offset` (computed exactly,
/// without wrap-around) and check it lies in guest space: entirely in the lower canonical
/// half, or entirely at or above `HYPERVISOR_VIRT_END`.
fn place_segments(elf: &Elf<'_>, info: &XenGuestInfo) -> Result<Vec<LoadSegment>, ImageError> {
    let mut segments = Vec::new();
    for (index, p) in elf.program_headers().iter().enumerate() {
        if !p.is_loadable() || p.p_memsz == 0 {
            continue;
        }
        let start =
            i128::from(p.p_paddr) + i128::from(info.virt_base) - i128::from(info.paddr_offset);
        let end = start + i128::from(p.p_memsz);
        let (Ok(start), Ok(end)) = (u64::try_from(start), u64::try_from(end - 1)) else {
            return Err(ImageError::SegmentAddressOverflow { index });
        };
        // `end` is inclusive here, so a segment ending exactly at 2^64 is representable.
        let in_lower = end < LOWER_HALF_END;
        let in_upper = start >= HYPERVISOR_VIRT_END;
        if !in_lower && !in_upper {
            let report_end = end.wrapping_add(1);
            return Err(
                if start < HYPERVISOR_VIRT_END && end >= HYPERVISOR_VIRT_START {
                    ImageError::SegmentInHypervisorRange {
                        index,
                        start,
                        end: report_end,
                    }
                } else {
                    ImageError::SegmentNotCanonical {
                        index,
                        start,
                        end: report_end,
                    }
                },
            );
        }
        if end == u64::MAX {
            // The exclusive end would be 2^64, which `LoadSegment` cannot express.
            return Err(ImageError::SegmentAddressOverflow { index });
        }
        segments.push(LoadSegment {
            guest_virt: start,
            file_offset: p.p_offset,
            file_size: p.p_filesz,
            mem_size: p.p_memsz,
            flags: p.p_flags,
        });
    }
    Ok(segments)
}

#[cfg(test)]
pub(crate) mod tests {
    use alloc::{
        string::{String, ToString},
        vec,
        vec::Vec,
    };

    use ferrovisor_abi::xen::elfnote::*;

    use super::{
        elf::{PF_R, PF_W, PT_LOAD, PT_NOTE, SHT_NOTE},
        xen_notes::{FeatureSet, InfoSource, PaeMode},
        *,
    };

    pub(crate) const VIRT_BASE: u64 = 0xffff_ffff_8000_0000;
    pub(crate) const TEXT: u64 = 0xffff_ffff_8100_0000;
    pub(crate) const STARTUP_XEN: u64 = TEXT + 0x40;
    pub(crate) const HYPERCALL_PAGE: u64 = TEXT + 0x1000;
    pub(crate) const INIT_P2M: u64 = 0x80_0000_0000;
    const LIMIT: usize = 1 << 20;

    #[derive(Clone, Debug)]
    pub(crate) struct Segment {
        pub flags: u32,
        pub vaddr: u64,
        pub paddr: u64,
        pub data: Vec<u8>,
        pub memsz: u64,
    }

    /// Builds small ELF64 PV kernels: loadable segments, a `PT_NOTE` segment and/or an
    /// `SHT_NOTE` section holding the notes, an optional `__xen_guest` section.
    #[derive(Clone, Debug)]
    pub(crate) struct ElfBuilder {
        pub e_entry: u64,
        pub segments: Vec<Segment>,
        /// (name, type, descriptor)
        pub notes: Vec<(Vec<u8>, u32, Vec<u8>)>,
        pub note_segment: bool,
        pub note_section: bool,
        pub xen_guest: Option<String>,
    }

    fn u64_note(v: u64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    fn u32_note(v: u32) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    fn str_note(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    impl ElfBuilder {
        /// Shaped like Linux 6.1's x86-64 `vmlinux`: text, a per-CPU segment linked at
        /// virtual 0, data with bss; e_entry physical; the notes of `xen-head.S`.
        pub(crate) fn linux_like() -> ElfBuilder {
            let seg = |flags, vaddr, paddr, filesz: usize, memsz, fill| Segment {
                flags,
                vaddr,
                paddr,
                data: vec![fill; filesz],
                memsz,
            };
            let xen = |ty, desc| (b"Xen\0".to_vec(), ty, desc);
            ElfBuilder {
                e_entry: 0x100_0000,
                segments: vec![
                    seg(PF_R | PF_X, TEXT, 0x100_0000, 0x200, 0x3000, 0x90),
                    seg(PF_R | PF_W, 0, 0x100_3000, 0x80, 0x1000, 0x11),
                    seg(PF_R | PF_W, TEXT + 0x4000, 0x100_4000, 0x100, 0x3000, 0x22),
                ],
                notes: vec![
                    (b"GNU\0".to_vec(), 3, vec![0xab; 20]),
                    xen(XEN_ELFNOTE_GUEST_OS, str_note("linux")),
                    xen(XEN_ELFNOTE_GUEST_VERSION, str_note("2.6")),
                    xen(XEN_ELFNOTE_XEN_VERSION, str_note("xen-3.0")),
                    xen(XEN_ELFNOTE_VIRT_BASE, u64_note(VIRT_BASE)),
                    xen(XEN_ELFNOTE_INIT_P2M, u64_note(INIT_P2M)),
                    xen(XEN_ELFNOTE_ENTRY, u64_note(STARTUP_XEN)),
                    xen(XEN_ELFNOTE_HYPERCALL_PAGE, u64_note(HYPERCALL_PAGE)),
                    xen(
                        XEN_ELFNOTE_FEATURES,
                        str_note("!writable_page_tables|pae_pgdir_above_4gb"),
                    ),
                    xen(
                        XEN_ELFNOTE_SUPPORTED_FEATURES,
                        u32_note((1 << 0) | (1 << 11) | (1 << 15)),
                    ),
                    xen(XEN_ELFNOTE_PAE_MODE, str_note("yes")),
                    xen(XEN_ELFNOTE_LOADER, str_note("generic")),
                    xen(
                        XEN_ELFNOTE_L1_MFN_VALID,
                        [u64_note(1), u64_note(1)].concat(),
                    ),
                    xen(XEN_ELFNOTE_SUSPEND_CANCEL, u32_note(1)),
                    xen(XEN_ELFNOTE_MOD_START_PFN, u32_note(1)),
                    xen(XEN_ELFNOTE_HV_START_LOW, u64_note(0xffff_8000_0000_0000)),
                    xen(XEN_ELFNOTE_PADDR_OFFSET, u64_note(0)),
                ],
                note_segment: true,
                note_section: true,
                xen_guest: None,
            }
        }

        /// Set (replace or add) a Xen note.
        pub(crate) fn note(mut self, ty: u32, desc: Vec<u8>) -> ElfBuilder {
            self = self.without_note(ty);
            self.notes.push((b"Xen\0".to_vec(), ty, desc));
            self
        }

        pub(crate) fn without_note(mut self, ty: u32) -> ElfBuilder {
            self.notes.retain(|(n, t, _)| !(n == b"Xen\0" && *t == ty));
            self
        }

        pub(crate) fn without_xen_notes(mut self) -> ElfBuilder {
            self.notes.retain(|(n, _, _)| n != b"Xen\0");
            self
        }

        pub(crate) fn build(&self) -> Vec<u8> {
            let phnum = self.segments.len() + usize::from(self.note_segment);
            let mut out = vec![0u8; 64 + phnum * 56];
            let align = |out: &mut Vec<u8>, a: usize| out.resize(out.len().next_multiple_of(a), 0);
            let mut offsets = Vec::new();
            for s in &self.segments {
                align(&mut out, 16);
                offsets.push(out.len());
                out.extend_from_slice(&s.data);
            }
            align(&mut out, 4);
            let notes_off = out.len();
            for (name, ty, desc) in &self.notes {
                out.extend((name.len() as u32).to_le_bytes());
                out.extend((desc.len() as u32).to_le_bytes());
                out.extend(ty.to_le_bytes());
                out.extend(name);
                align(&mut out, 4);
                out.extend(desc);
                align(&mut out, 4);
            }
            let notes_len = out.len() - notes_off;
            let guest_off = out.len();
            if let Some(g) = &self.xen_guest {
                out.extend(g.as_bytes());
                out.push(0);
            }
            let guest_len = out.len() - guest_off;
            let shstrtab = b"\0.notes\0__xen_guest\0.shstrtab\0";
            let strtab_off = out.len();
            out.extend(shstrtab);
            align(&mut out, 8);
            let shoff = out.len();
            // (name offset in shstrtab, type, offset, size)
            let mut shdrs = vec![(0u32, 0u32, 0usize, 0usize)];
            if self.note_section {
                shdrs.push((1, SHT_NOTE, notes_off, notes_len));
            }
            if self.xen_guest.is_some() {
                shdrs.push((8, 1, guest_off, guest_len));
            }
            shdrs.push((20, 3, strtab_off, shstrtab.len()));
            for &(name, ty, off, size) in &shdrs {
                let mut sh = [0u8; 64];
                sh[0..4].copy_from_slice(&name.to_le_bytes());
                sh[4..8].copy_from_slice(&ty.to_le_bytes());
                sh[24..32].copy_from_slice(&(off as u64).to_le_bytes());
                sh[32..40].copy_from_slice(&(size as u64).to_le_bytes());
                out.extend(sh);
            }

            let put16 = |o: &mut Vec<u8>, at: usize, v: u16| {
                o[at..at + 2].copy_from_slice(&v.to_le_bytes())
            };
            let put32 = |o: &mut Vec<u8>, at: usize, v: u32| {
                o[at..at + 4].copy_from_slice(&v.to_le_bytes())
            };
            let put64 = |o: &mut Vec<u8>, at: usize, v: u64| {
                o[at..at + 8].copy_from_slice(&v.to_le_bytes())
            };
            out[0..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
            put16(&mut out, 16, 2); // ET_EXEC
            put16(&mut out, 18, 62); // EM_X86_64
            put32(&mut out, 20, 1);
            put64(&mut out, 24, self.e_entry);
            put64(&mut out, 32, 64);
            put64(&mut out, 40, shoff as u64);
            put16(&mut out, 52, 64);
            put16(&mut out, 54, 56);
            put16(&mut out, 56, phnum as u16);
            put16(&mut out, 58, 64);
            put16(&mut out, 60, shdrs.len() as u16);
            put16(&mut out, 62, (shdrs.len() - 1) as u16);
            let mut ph = 64;
            for (s, &off) in self.segments.iter().zip(&offsets) {
                put32(&mut out, ph, PT_LOAD);
                put32(&mut out, ph + 4, s.flags);
                put64(&mut out, ph + 8, off as u64);
                put64(&mut out, ph + 16, s.vaddr);
                put64(&mut out, ph + 24, s.paddr);
                put64(&mut out, ph + 32, s.data.len() as u64);
                put64(&mut out, ph + 40, s.memsz);
                put64(&mut out, ph + 48, 0x20_0000);
                ph += 56;
            }
            if self.note_segment {
                put32(&mut out, ph, PT_NOTE);
                put32(&mut out, ph + 4, PF_R);
                put64(&mut out, ph + 8, notes_off as u64);
                put64(&mut out, ph + 32, notes_len as u64);
                put64(&mut out, ph + 40, notes_len as u64);
                put64(&mut out, ph + 48, 4);
            }
            out
        }
    }

    pub(crate) fn gzip(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        v.extend(miniz_oxide::deflate::compress_to_vec(payload, 9));
        v.extend(decompress::crc32(payload).to_le_bytes());
        v.extend((payload.len() as u32).to_le_bytes());
        v
    }

    fn xen_err(b: &ElfBuilder) -> NotesError {
        match inspect(&b.build(), LIMIT) {
            Err(ImageError::Xen(e)) => e,
            other => panic!("expected a Xen-notes error, got {other:?}"),
        }
    }

    fn err(b: &ElfBuilder) -> ImageError {
        inspect(&b.build(), LIMIT).unwrap_err()
    }

    #[test]
    fn inspects_a_linux_like_kernel() {
        let img = inspect(&ElfBuilder::linux_like().build(), LIMIT).unwrap();
        assert_eq!(img.format, ImageFormat::Elf);
        assert_eq!(img.entry, STARTUP_XEN);
        assert_eq!(img.virt_start, TEXT);
        assert_eq!(img.virt_end, TEXT + 0x7000);
        let virts: Vec<u64> = img.segments.iter().map(|s| s.guest_virt).collect();
        // The per-CPU segment (p_vaddr 0) lands by its p_paddr, between text and data.
        assert_eq!(virts, [TEXT, TEXT + 0x3000, TEXT + 0x4000]);
        assert_eq!(img.segments[1].file_size, 0x80);
        assert_eq!(img.segments[1].mem_size, 0x1000);
        let i = &img.info;
        assert_eq!(i.source, InfoSource::NoteSegments);
        assert_eq!(i.virt_base, VIRT_BASE);
        assert_eq!(i.paddr_offset, 0);
        assert_eq!(i.hypercall_page, Some(HYPERCALL_PAGE));
        assert_eq!(i.init_p2m, Some(INIT_P2M));
        assert_eq!(i.guest_os, "linux");
        assert_eq!(i.guest_version.as_deref(), Some("2.6"));
        assert_eq!(i.loader, "generic");
        assert_eq!(i.xen_version, "xen-3.0");
        assert_eq!(i.pae_mode, PaeMode::ExtendedCr3);
        assert_eq!(
            i.features,
            FeatureSet {
                supported: (1 << 0) | (1 << 4) | (1 << 11) | (1 << 15),
                required: 1 << 0,
            }
        );
        assert!(i.features.requires(0) && i.features.supports(11) && !i.features.supports(3));
        assert_eq!(i.supported_features, (1 << 0) | (1 << 11) | (1 << 15));
        assert_eq!(i.hv_start_low, Some(0xffff_8000_0000_0000));
        assert!(i.mod_start_pfn && i.suspend_cancel && !i.bsd_symtab);
        assert_eq!(i.l1_mfn_valid, [(1, 1)]);
        assert_eq!(i.phys32_entry, None);
        // The segments' bytes are where they say.
        let s = &img.segments[0];
        let off = s.file_offset as usize;
        assert!(img.elf[off..off + s.file_size as usize]
            .iter()
            .all(|&b| b == 0x90));
    }

    #[test]
    fn compressed_and_bzimage_forms() {
        let elf = ElfBuilder::linux_like().build();
        let gz = gzip(&elf);
        let img = inspect(&gz, LIMIT).unwrap();
        assert_eq!(img.format, ImageFormat::Gzip);
        assert_eq!(img.elf, elf);
        let bz = bzimage::tests::make_bzimage(27, &gz);
        let img = inspect(&bz, LIMIT).unwrap();
        assert_eq!(img.format, ImageFormat::BzImage(Compression::Gzip));
        assert_eq!(img.elf, elf);
        assert_eq!(img.entry, STARTUP_XEN);
        assert_eq!(
            ImageFormat::BzImage(Compression::Xz).to_string(),
            "bzImage (xz payload)"
        );
    }

    #[test]
    fn every_truncation_is_refused_without_panic() {
        let elf = ElfBuilder::linux_like().build();
        for len in 0..elf.len() {
            assert!(inspect(&elf[..len], LIMIT).is_err(), "ELF prefix {len}");
        }
        let gz = gzip(&elf);
        for len in 0..gz.len() {
            assert!(inspect(&gz[..len], LIMIT).is_err(), "gzip prefix {len}");
        }
        let bz = bzimage::tests::make_bzimage(3, &gz);
        let payload_end = bz.len() - 64;
        for len in 0..bz.len() {
            let r = inspect(&bz[..len], LIMIT);
            assert_eq!(r.is_ok(), len >= payload_end, "bzImage prefix {len}");
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let elf = ElfBuilder::linux_like().build();
        let mut refused = 0;
        for i in 0..elf.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut v = elf.clone();
                v[i] ^= x;
                if let Err(e) = inspect(&v, LIMIT) {
                    assert!(!e.to_string().is_empty());
                    refused += 1;
                }
            }
        }
        assert!(refused > 100);
    }

    #[test]
    fn not_a_xen_kernel() {
        let b = ElfBuilder::linux_like().without_xen_notes();
        assert_eq!(xen_err(&b), NotesError::NotXenKernel);
        assert!(err(&b).to_string().contains("not a Xen PV kernel"));
    }

    #[test]
    fn notes_from_sections_when_no_note_segment() {
        let mut b = ElfBuilder::linux_like();
        b.note_segment = false;
        let img = inspect(&b.build(), LIMIT).unwrap();
        assert_eq!(img.info.source, InfoSource::NoteSections);
        assert_eq!(img.entry, STARTUP_XEN);
    }

    #[test]
    fn legacy_xen_guest_section() {
        let mut b = ElfBuilder::linux_like().without_xen_notes();
        b.e_entry = STARTUP_XEN;
        b.xen_guest = Some(
            "GUEST_OS=linux,GUEST_VER=2.6,XEN_VER=xen-3.0,VIRT_BASE=0xffffffff80000000,\
             ELF_PADDR_OFFSET=0x0,HYPERCALL_PAGE=0x1001,LOADER=generic,\
             FEATURES=writable_page_tables|!pae_pgdir_above_4gb,BSD_SYMTAB,PAE=yes"
                .into(),
        );
        let img = inspect(&b.build(), LIMIT).unwrap();
        let i = &img.info;
        assert_eq!(i.source, InfoSource::LegacyXenGuest);
        assert_eq!(i.hypercall_page, Some(HYPERCALL_PAGE));
        assert_eq!(i.entry, STARTUP_XEN);
        assert_eq!(i.paddr_offset, 0);
        assert_eq!(i.features.required, 1 << 4);
        assert!(i.bsd_symtab);
        assert_eq!(i.pae_mode, PaeMode::Yes);
        assert_eq!(img.segments[0].guest_virt, TEXT);

        // Old kernels put virtual addresses in p_paddr: ELF_PADDR_OFFSET then defaults to
        // VIRT_BASE, and VIRT_ENTRY overrides e_entry.
        for s in &mut b.segments {
            s.paddr += VIRT_BASE;
        }
        b.e_entry = 0;
        b.xen_guest = Some(
            "GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xffffffff80000000,\
             VIRT_ENTRY=0xffffffff81000040,LOADER=generic"
                .into(),
        );
        let img = inspect(&b.build(), LIMIT).unwrap();
        assert_eq!(img.info.paddr_offset, VIRT_BASE);
        assert_eq!(img.entry, STARTUP_XEN);
        assert_eq!(img.info.hypercall_page, None);
        assert_eq!(img.segments[1].guest_virt, TEXT + 0x3000);

        b.xen_guest = Some("GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xfffffffg".into());
        assert!(matches!(xen_err(&b), NotesError::BadLegacyNumber { .. }));
        b.xen_guest = Some("GUEST_OS=linux,XEN_VER=xen-3.0,HYPERCALL_PAGE=0xffffffffffffff".into());
        assert!(matches!(xen_err(&b), NotesError::BadLegacyNumber { .. }));
        b.xen_guest = Some("GUEST_OS=linux,XEN_VER=xen-3.0,ELF_PADDR_OFFSET=0".into());
        assert_eq!(xen_err(&b), NotesError::PaddrOffsetWithoutVirtBase);
    }

    #[test]
    fn guest_os_loader_and_version_rules() {
        let b = ElfBuilder::linux_like()
            .note(XEN_ELFNOTE_GUEST_OS, str_note("netbsd"))
            .note(XEN_ELFNOTE_LOADER, str_note("bsdboot"));
        assert!(matches!(xen_err(&b), NotesError::UnsupportedGuest { .. }));
        // Either condition is enough: the generic loader for any OS.
        let b = b.note(XEN_ELFNOTE_LOADER, str_note("generic"));
        assert!(inspect(&b.build(), LIMIT).is_ok());
        let b = ElfBuilder::linux_like().note(XEN_ELFNOTE_XEN_VERSION, str_note("xen-2.0"));
        assert_eq!(
            xen_err(&b),
            NotesError::UnsupportedXenVersion("xen-2.0".into())
        );
        let b = ElfBuilder::linux_like().without_note(XEN_ELFNOTE_XEN_VERSION);
        assert!(matches!(xen_err(&b), NotesError::UnsupportedXenVersion(_)));
    }

    #[test]
    fn note_value_errors() {
        let b = ElfBuilder::linux_like().note(XEN_ELFNOTE_ENTRY, vec![1, 2, 3]);
        assert_eq!(
            xen_err(&b),
            NotesError::BadNumericNote {
                name: "ENTRY",
                size: 3
            }
        );
        let b = ElfBuilder::linux_like().note(XEN_ELFNOTE_GUEST_OS, vec![0xff, 0xfe, 0]);
        assert_eq!(xen_err(&b), NotesError::BadStringNote { name: "GUEST_OS" });
        let b = ElfBuilder::linux_like().note(XEN_ELFNOTE_L1_MFN_VALID, vec![0; 12]);
        assert!(matches!(xen_err(&b), NotesError::BadNumericNote { .. }));
        let b = ElfBuilder::linux_like().note(XEN_ELFNOTE_SUPPORTED_FEATURES, vec![1, 2]);
        assert!(matches!(xen_err(&b), NotesError::BadNumericNote { .. }));
        let b = ElfBuilder::linux_like().note(XEN_ELFNOTE_FEATURES, str_note("dom0|!frobnicate"));
        assert_eq!(
            xen_err(&b),
            NotesError::UnknownRequiredFeature("frobnicate".into())
        );
        // An unknown optional feature is ignored, as libelf does.
        let b = ElfBuilder::linux_like().note(XEN_ELFNOTE_FEATURES, str_note("dom0|frobnicate|"));
        let img = inspect(&b.build(), LIMIT).unwrap();
        assert!(img.info.features.supports(11));
        assert_eq!(img.info.features.required, 0);
        // 4-byte numbers work as well as 8-byte ones, and unknown note types are skipped.
        let b = ElfBuilder::linux_like()
            .note(XEN_ELFNOTE_PADDR_OFFSET, u32_note(0))
            .note(XEN_ELFNOTE_INFO, str_note("KEY=VALUE"))
            .note(0x77, vec![1, 2, 3]);
        assert!(inspect(&b.build(), LIMIT).is_ok());
        let mut b = ElfBuilder::linux_like();
        for _ in 0..xen_notes::MAX_NOTES {
            b.notes.push((b"GNU\0".to_vec(), 1, vec![0; 4]));
        }
        assert_eq!(xen_err(&b), NotesError::TooManyNotes);
    }

    #[test]
    fn entry_and_hypercall_page_checks() {
        let b = ElfBuilder::linux_like().note(XEN_ELFNOTE_ENTRY, u64_note(0xffff_ffff_9000_0000));
        assert!(matches!(xen_err(&b), NotesError::OutOfBounds { .. }));
        // Inside the image, but in the data segment.
        let b = ElfBuilder::linux_like().note(XEN_ELFNOTE_ENTRY, u64_note(TEXT + 0x4000));
        assert_eq!(
            err(&b),
            ImageError::EntryNotInCode {
                entry: TEXT + 0x4000
            }
        );
        // No ENTRY note: e_entry is used (Linux's is physical, hence refused).
        let b = ElfBuilder::linux_like().without_note(XEN_ELFNOTE_ENTRY);
        assert!(matches!(
            xen_err(&b),
            NotesError::OutOfBounds {
                entry: 0x100_0000,
                ..
            }
        ));
        let mut b = ElfBuilder::linux_like().without_note(XEN_ELFNOTE_ENTRY);
        b.e_entry = STARTUP_XEN;
        assert_eq!(inspect(&b.build(), LIMIT).unwrap().entry, STARTUP_XEN);

        let b = ElfBuilder::linux_like().note(XEN_ELFNOTE_HYPERCALL_PAGE, u64_note(TEXT + 8));
        assert_eq!(
            err(&b),
            ImageError::HypercallPageMisaligned { addr: TEXT + 8 }
        );
        let far = 0xffff_ffff_9000_0000;
        let b = ElfBuilder::linux_like().note(XEN_ELFNOTE_HYPERCALL_PAGE, u64_note(far));
        assert_eq!(err(&b), ImageError::HypercallPageOutsideImage { addr: far });
        let b = ElfBuilder::linux_like().without_note(XEN_ELFNOTE_HYPERCALL_PAGE);
        assert_eq!(
            inspect(&b.build(), LIMIT).unwrap().info.hypercall_page,
            None
        );

        let b = ElfBuilder::linux_like().note(XEN_ELFNOTE_INIT_P2M, u64_note(TEXT + 0x1000));
        assert!(matches!(xen_err(&b), NotesError::P2mInsideKernel { .. }));
    }

    #[test]
    fn placement_rules() {
        // A kernel based in the hypervisor's reserved range.
        let base = 0xffff_8000_0000_0000;
        let b = ElfBuilder::linux_like()
            .note(XEN_ELFNOTE_VIRT_BASE, u64_note(base))
            .note(XEN_ELFNOTE_ENTRY, u64_note(base + 0x100_0040))
            .note(XEN_ELFNOTE_HYPERCALL_PAGE, u64_note(base + 0x100_1000));
        assert!(matches!(
            err(&b),
            ImageError::SegmentInHypervisorRange { index: 0, .. }
        ));
        assert!(err(&b).to_string().contains("hypervisor"));
        // In the non-canonical hole.
        let base = 0x0000_9000_0000_0000;
        let b = ElfBuilder::linux_like()
            .note(XEN_ELFNOTE_VIRT_BASE, u64_note(base))
            .note(XEN_ELFNOTE_ENTRY, u64_note(base + 0x100_0040))
            .note(XEN_ELFNOTE_HYPERCALL_PAGE, u64_note(base + 0x100_1000));
        assert!(matches!(
            err(&b),
            ImageError::SegmentNotCanonical { index: 0, .. }
        ));
        // Straddling the top of the lower half.
        let base = LOWER_HALF_END - 0x100_0000 - 0x2000;
        let b = ElfBuilder::linux_like()
            .note(XEN_ELFNOTE_VIRT_BASE, u64_note(base))
            .note(XEN_ELFNOTE_ENTRY, u64_note(base + 0x100_0040))
            .without_note(XEN_ELFNOTE_HYPERCALL_PAGE)
            .without_note(XEN_ELFNOTE_INIT_P2M);
        assert!(matches!(
            err(&b),
            ImageError::SegmentNotCanonical { index: 0, .. }
        ));
        // A kernel in the lower half is fine.
        let b = ElfBuilder::linux_like()
            .note(XEN_ELFNOTE_VIRT_BASE, u64_note(0))
            .note(XEN_ELFNOTE_ENTRY, u64_note(0x100_0040))
            .note(XEN_ELFNOTE_HYPERCALL_PAGE, u64_note(0x100_1000))
            .without_note(XEN_ELFNOTE_INIT_P2M);
        let img = inspect(&b.build(), LIMIT).unwrap();
        assert_eq!((img.virt_start, img.virt_end), (0x100_0000, 0x100_7000));
        // Too big a span.
        let mut b = ElfBuilder::linux_like();
        b.segments[2].paddr += (1 << 30) + (1 << 20);
        assert!(matches!(err(&b), ImageError::ExtentTooLarge { .. }));
        // PADDR_OFFSET above VIRT_BASE moves the kernel below VIRT_BASE: refused.
        let b = ElfBuilder::linux_like().note(XEN_ELFNOTE_PADDR_OFFSET, u64_note(0x200_0000));
        assert!(matches!(xen_err(&b), NotesError::OutOfBounds { .. }));
        // A segment that would end past 2^64.
        let b = ElfBuilder::linux_like()
            .note(XEN_ELFNOTE_VIRT_BASE, u64_note(u64::MAX - 0x100_3000))
            .note(XEN_ELFNOTE_ENTRY, u64_note(u64::MAX - 0x2fc0))
            .without_note(XEN_ELFNOTE_HYPERCALL_PAGE);
        assert!(inspect(&b.build(), LIMIT).is_err());
    }

    #[test]
    fn packaging_errors() {
        assert_eq!(inspect(&[], LIMIT), Err(ImageError::Empty));
        let e = inspect(b"MZ\x90\x00\x03\x00\x00\x00\x04", LIMIT).unwrap_err();
        assert!(e.to_string().contains("4d 5a 90 00 03 00 00 00"), "{e}");
        let e = inspect(b"MZ", LIMIT).unwrap_err();
        assert!(e.to_string().contains("(first bytes 4d 5a)"), "{e}");

        let elf = ElfBuilder::linux_like().build();
        assert_eq!(
            inspect(&elf, 100),
            Err(ImageError::TooLarge {
                size: elf.len(),
                limit: 100
            })
        );
        assert!(matches!(
            inspect(&gzip(&elf), 100),
            Err(ImageError::Decompress {
                format: Compression::Gzip,
                error: DecompressError::TooLarge { .. }
            })
        ));
        // Compressed, but not an ELF inside.
        assert!(matches!(
            inspect(&gzip(b"just text"), LIMIT),
            Err(ImageError::PayloadNotElf {
                format: ImageFormat::Gzip,
                ..
            })
        ));
        let bz = bzimage::tests::make_bzimage(1, &gzip(b"MZ not an elf"));
        assert!(matches!(
            inspect(&bz, LIMIT),
            Err(ImageError::PayloadNotElf {
                format: ImageFormat::BzImage(Compression::Gzip),
                ..
            })
        ));
        // A zstd bzImage (Ubuntu's kind): named, not decoded.
        let bz = bzimage::tests::make_bzimage(1, b"\x28\xb5\x2f\xfd rest of a zstd frame");
        let e = inspect(&bz, LIMIT).unwrap_err();
        assert_eq!(
            e,
            ImageError::Decompress {
                format: Compression::Zstd,
                error: DecompressError::UnsupportedCompression("zstd")
            }
        );
        assert!(e.to_string().contains("zstd"));
        let bz = bzimage::tests::make_bzimage(1, b"\x00\x01\x02\x03 unknown payload");
        assert!(matches!(
            inspect(&bz, LIMIT),
            Err(ImageError::UnknownPayloadCompression { .. })
        ));
        // A bare bzip2 file.
        assert!(matches!(
            inspect(b"BZh91AY&SY", LIMIT),
            Err(ImageError::Decompress {
                format: Compression::Bzip2,
                ..
            })
        ));
    }

    /// The real thing: Debian's own kernel. Run with
    /// `cargo test -p ferrovisor --lib debian_vmlinuz -- --ignored --nocapture`
    /// after fetching it (see the panic message) or with `FERROVISOR_VMLINUZ=/path`.
    #[test]
    #[ignore = "needs Debian's vmlinuz: see the message it prints"]
    fn debian_vmlinuz() {
        extern crate std;
        use std::{env, fs, path::PathBuf, println};

        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut candidates: Vec<PathBuf> = env::var_os("FERROVISOR_VMLINUZ")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        candidates.push(workspace.join("target/debian/vmlinuz"));
        if let Ok(dir) = fs::read_dir("/boot") {
            let mut boot: Vec<PathBuf> = dir
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("vmlinuz-"))
                })
                .collect();
            boot.sort();
            candidates.extend(boot);
        }
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            panic!(
                "no kernel found (tried {candidates:?}). Fetch Debian's: \
                 `cd /tmp && apt-get download linux-image-6.1.0-<abi>-amd64 && \
                 dpkg-deb -x linux-image-*.deb x && mkdir -p {ws}/target/debian && \
                 cp x/boot/vmlinuz-* {ws}/target/debian/vmlinuz` \
                 (`apt-cache depends linux-image-amd64` names the package)",
                ws = workspace.display()
            )
        };
        let module = fs::read(path).unwrap();
        let img = inspect(&module, 256 << 20).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        println!("{}: {} bytes, {}", path.display(), module.len(), img.format);
        println!("ELF: {} bytes; entry {:#x}", img.elf.len(), img.entry);
        println!("extent {:#x}..{:#x}", img.virt_start, img.virt_end);
        for s in &img.segments {
            println!(
                "  segment at {:#x}: file {:#x}+{:#x}, mem {:#x}, flags {:#x}",
                s.guest_virt, s.file_offset, s.file_size, s.mem_size, s.flags
            );
        }
        let required: Vec<&str> = (0..32)
            .filter(|&b| img.info.features.requires(b))
            .map(|b| xen_notes::feature_name(b).unwrap_or("?"))
            .collect();
        let supported: Vec<&str> = (0..32)
            .filter(|&b| img.info.features.supports(b))
            .map(|b| xen_notes::feature_name(b).unwrap_or("?"))
            .collect();
        println!("info: {:#x?}", img.info);
        println!("required features: {required:?}; supported: {supported:?}");
        assert_eq!(img.info.guest_os, "linux");
        assert_eq!(img.info.virt_base, 0xffff_ffff_8000_0000);
        assert!(img.info.hypercall_page.is_some() || img.info.features.supports(0));
    }
}
