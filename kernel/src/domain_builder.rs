//! The PV domain builder's start-of-day layout (`xen.h`, "Start-of-day memory layout"):
//! it loads the kernel's segments and the initrd into the domain's pseudo-physical
//! memory, writes the phys-to-machine list, `start_info`, the console and xenstore pages,
//! the bootstrap page tables (mapped read-only) and the hypercall page, and says where
//! the kernel starts.
//!
//! The bootstrap region is one contiguous virtual range starting at the kernel's
//! `VIRT_BASE`, mapped 1:1 onto the first pseudo-physical frames (pfn = (va - base) / 4K):
//!
//! ```text
//! virt_base ... kernel image | initrd | p2m list | start_info | xenstore | console |
//!               page tables | stack | >= 512 KiB padding, up to a 4 MiB boundary
//! ```
//!
//! Every page of it is mapped writable except the page tables. Page-table entries hold
//! machine frame numbers, as in every PV guest. The hypervisor's L4 slots are left empty:
//! the hypervisor fills them in when it runs the address space.
//!
//! Hardware-free: the domain's memory is reached through [`DomainMemory`], so the same
//! code builds dom0 at boot and (later) domUs for the toolstack, and is unit tested here.

use core::fmt;

use ferrovisor_abi::xen::{
    arch_x86::{_PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW, _PAGE_USER},
    xen::{StartInfo, MAX_GUEST_CMDLINE, START_INFO_MAGIC_X86_64},
};
use zerocopy::{FromZeros, IntoBytes};

use crate::mm::{Mfn, PAGE_SIZE};

/// The domain's pseudo-physical memory: `nr_pages` frames, each backed by a machine frame.
/// Every page reads as zero before the build.
pub trait DomainMemory {
    fn nr_pages(&self) -> u64;
    fn mfn(&self, pfn: u64) -> Mfn;
    /// Writes `bytes` at `offset` in page `pfn` (`offset + bytes.len() <= 4096`).
    fn write(&mut self, pfn: u64, offset: usize, bytes: &[u8]);
}

/// One loadable segment of the kernel, at its final guest-virtual address.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    pub virt: u64,
    pub data: &'a [u8],
    /// Bytes in memory; past `data.len()` they are zero (`.bss`).
    pub mem_size: u64,
}

/// What the builder needs of the kernel image.
#[derive(Clone, Copy, Debug)]
pub struct KernelImage<'a> {
    pub segments: &'a [Segment<'a>],
    /// `VIRT_BASE`: the start of the bootstrap region, pfn 0.
    pub virt_base: u64,
    pub entry: u64,
    /// `HYPERCALL_PAGE`: where the kernel wants the hypercall stubs, if anywhere.
    pub hypercall_page: Option<u64>,
}

/// Everything else the start-of-day state needs.
#[derive(Clone, Copy, Debug)]
pub struct BuildSpec<'a> {
    pub initrd: Option<&'a [u8]>,
    pub cmdline: &'a str,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Machine address of the domain's shared-info page.
    pub shared_info_maddr: u64,
    pub store_evtchn: u32,
    pub console_evtchn: u32,
}

/// Where things ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Built {
    pub entry: u64,
    /// Initial `rsp`: the top of the bootstrap stack.
    pub stack_top: u64,
    /// Initial `rsi`.
    pub start_info_va: u64,
    /// pfn of the bootstrap L4, and the page-table frames (`[first, first + count)`).
    pub l4_pfn: u64,
    pub pt_first_pfn: u64,
    pub pt_count: u64,
    pub p2m_va: u64,
    pub store_pfn: u64,
    pub console_pfn: u64,
    pub initrd: Option<(u64, u64)>,
    /// End of the bootstrap region (exclusive, 4 MiB aligned).
    pub virt_end: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// The kernel has no loadable segment, or a segment below `VIRT_BASE`, misaligned
    /// `VIRT_BASE`, or an entry point outside the image.
    BadImage(&'static str),
    /// The bootstrap region needs more pages than the domain has.
    TooSmall { needed_pages: u64, nr_pages: u64 },
    /// The command line does not fit `start_info.cmd_line`.
    CmdlineTooLong { len: usize },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::BadImage(why) => write!(f, "the kernel image cannot be laid out: {why}"),
            BuildError::TooSmall {
                needed_pages,
                nr_pages,
            } => write!(
                f,
                "the kernel, initrd and start-of-day data need {} KiB but the domain has only \
                 {} KiB: give it more memory",
                needed_pages * 4,
                nr_pages * 4
            ),
            BuildError::CmdlineTooLong { len } => write!(
                f,
                "the kernel command line is {len} bytes; at most {} fit",
                MAX_GUEST_CMDLINE - 1
            ),
        }
    }
}

const PAGE: u64 = PAGE_SIZE;
const PADDING: u64 = 512 * 1024;
const REGION_ALIGN: u64 = 4 << 20;

fn page_up(x: u64) -> u64 {
    x.div_ceil(PAGE) * PAGE
}

/// Page-table pages needed to map `[start, end)` with 4 KiB pages: one L4 plus one table
/// per 512 GiB, 1 GiB and 2 MiB span touched.
fn tables_for(start: u64, end: u64) -> u64 {
    let span = |shift: u32| ((end - 1) >> shift) - (start >> shift) + 1;
    1 + span(39) + span(30) + span(21)
}

/// The x86-64 hypercall page: one 32-byte stub per hypercall. A stub saves the registers
/// SYSCALL clobbers, makes the call with the number in `eax`, and returns; the `iret`
/// stub instead pushes `rcx`, `r11`, `rax` to complete the guest's `iret_context` on its
/// stack and never returns.
pub fn hypercall_page() -> [u8; 4096] {
    const IRET: u8 = 23;
    let mut page = [0xcc_u8; 4096]; // int3 between stubs
    for nr in 0u8..128 {
        let stub: &[u8] = if nr == IRET {
            &[0x51, 0x41, 0x53, 0x50, 0xb8, nr, 0, 0, 0, 0x0f, 0x05]
        } else {
            &[
                0x51, 0x41, 0x53, 0xb8, nr, 0, 0, 0, 0x0f, 0x05, 0x41, 0x5b, 0x59, 0xc3,
            ]
        };
        let at = nr as usize * 32;
        page[at..at + stub.len()].copy_from_slice(stub);
    }
    page
}

struct Writer<'m, M: DomainMemory> {
    mem: &'m mut M,
    virt_base: u64,
}

impl<M: DomainMemory> Writer<'_, M> {
    /// Copies `bytes` to guest-virtual `va` (inside the bootstrap region).
    fn copy(&mut self, va: u64, bytes: &[u8]) {
        let mut off = 0usize;
        while off < bytes.len() {
            let addr = va + off as u64 - self.virt_base;
            let (pfn, in_page) = (addr / PAGE, (addr % PAGE) as usize);
            let n = (PAGE as usize - in_page).min(bytes.len() - off);
            self.mem.write(pfn, in_page, &bytes[off..off + n]);
            off += n;
        }
    }

    fn write_u64(&mut self, pfn: u64, index: usize, value: u64) {
        self.mem.write(pfn, index * 8, &value.to_le_bytes());
    }
}

/// Lays out and writes the start-of-day state; see the module documentation.
pub fn build<M: DomainMemory>(
    image: &KernelImage,
    spec: &BuildSpec,
    mem: &mut M,
) -> Result<Built, BuildError> {
    let base = image.virt_base;
    if base % REGION_ALIGN != 0 {
        return Err(BuildError::BadImage("VIRT_BASE is not 4 MiB aligned"));
    }
    if image.segments.is_empty() {
        return Err(BuildError::BadImage("no loadable segment"));
    }
    let mut kernel_end = 0u64;
    for s in image.segments {
        if s.virt < base || (s.data.len() as u64) > s.mem_size {
            return Err(BuildError::BadImage("a segment lies below VIRT_BASE"));
        }
        let end = s
            .virt
            .checked_add(s.mem_size)
            .ok_or(BuildError::BadImage("segment overflows"))?;
        kernel_end = kernel_end.max(end);
    }
    let in_image = |va: u64| {
        image
            .segments
            .iter()
            .any(|s| va >= s.virt && va < s.virt + s.mem_size)
    };
    if !in_image(image.entry) {
        return Err(BuildError::BadImage(
            "the entry point is outside the loaded image",
        ));
    }
    if let Some(hp) = image.hypercall_page {
        if hp % PAGE != 0 || !in_image(hp) || !in_image(hp + PAGE - 1) {
            return Err(BuildError::BadImage(
                "the hypercall page is not a page of the image",
            ));
        }
    }
    if spec.cmdline.len() >= MAX_GUEST_CMDLINE {
        return Err(BuildError::CmdlineTooLong {
            len: spec.cmdline.len(),
        });
    }
    let nr_pages = mem.nr_pages();
    // Everything laid out below stays under `kernel_end` plus the initrd, the p2m, the
    // start-of-day pages, at most `nr_pages` page tables, the stack, the padding and the
    // rounding: refused if that passes the top of the address space (an image placed at
    // its very end), so none of the arithmetic below can wrap.
    let initrd_len = spec.initrd.map_or(0, |i| i.len() as u64);
    let worst = nr_pages
        .checked_mul(8 + PAGE)
        .and_then(|n| n.checked_add(initrd_len))
        .and_then(|n| n.checked_add(PADDING + 2 * REGION_ALIGN + 8 * PAGE))
        .and_then(|n| n.checked_add(kernel_end));
    if worst.is_none() || kernel_end < base {
        return Err(BuildError::BadImage(
            "the image, initrd and start-of-day data pass the end of the address space",
        ));
    }

    // The layout, each element page aligned, in xen.h's order.
    let kernel_end = page_up(kernel_end);
    let initrd_va = kernel_end;
    let p2m_va = page_up(initrd_va + initrd_len);
    let start_info_va = page_up(p2m_va + nr_pages * 8);
    let store_va = start_info_va + PAGE;
    let console_va = store_va + PAGE;
    let pt_va = console_va + PAGE;
    // The page tables map the whole region, which includes the page tables: iterate until
    // the count is stable.
    let mut pt_count = 1;
    let (stack_va, virt_end) = loop {
        let stack_va = pt_va + pt_count * PAGE;
        let end = (stack_va + PAGE + PADDING).div_ceil(REGION_ALIGN) * REGION_ALIGN;
        let needed = tables_for(base, end);
        if needed <= pt_count {
            break (stack_va, end);
        }
        if needed > nr_pages {
            return Err(BuildError::TooSmall {
                needed_pages: needed,
                nr_pages,
            });
        }
        pt_count = needed;
    };
    let region_pages = (virt_end - base) / PAGE;
    if region_pages > nr_pages {
        return Err(BuildError::TooSmall {
            needed_pages: region_pages,
            nr_pages,
        });
    }
    let pfn = |va: u64| (va - base) / PAGE;

    let mut w = Writer {
        mem,
        virt_base: base,
    };
    for s in image.segments {
        w.copy(s.virt, s.data); // the rest of mem_size is already zero
    }
    if let Some(hp) = image.hypercall_page {
        w.copy(hp, &hypercall_page());
    }
    if let Some(initrd) = spec.initrd {
        w.copy(initrd_va, initrd);
    }
    for p in 0..nr_pages {
        let mfn = w.mem.mfn(p).0;
        let at = p2m_va + p * 8 - base;
        w.write_u64(at / PAGE, ((at % PAGE) / 8) as usize, mfn);
    }

    // Bootstrap page tables: allocate tables in order from pt_va, L4 first.
    let l4_pfn = pfn(pt_va);
    let mut next_table = l4_pfn + 1;
    let pt_end_pfn = l4_pfn + pt_count;
    let table_flags = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED;
    // (l3, l2, l1) currently being filled, with the index they cover.
    let mut current: [(u64, u64); 3] = [(u64::MAX, 0); 3];
    for va in (base..virt_end).step_by(PAGE as usize) {
        let mut parent = l4_pfn;
        for (depth, shift) in [39u32, 30, 21].into_iter().enumerate() {
            let key = va >> shift;
            if current[depth].0 != key {
                let table = next_table;
                next_table += 1;
                let index = ((va >> shift) & 0x1ff) as usize;
                let entry = (w.mem.mfn(table).0 << 12) | table_flags;
                w.write_u64(parent, index, entry);
                current[depth] = (key, table);
                // A new table at this level starts fresh tables below it.
                for c in current.iter_mut().skip(depth + 1) {
                    *c = (u64::MAX, 0);
                }
            }
            parent = current[depth].1;
        }
        let page_pfn = pfn(va);
        let mut flags = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_RW;
        if (l4_pfn..pt_end_pfn).contains(&page_pfn) {
            flags &= !(_PAGE_RW | _PAGE_DIRTY); // page tables are mapped read-only
        }
        let entry = (w.mem.mfn(page_pfn).0 << 12) | flags;
        w.write_u64(parent, ((va >> 12) & 0x1ff) as usize, entry);
    }
    debug_assert!(next_table <= pt_end_pfn, "page-table count underestimated");

    let mut si = StartInfo::new_zeroed();
    si.magic[..START_INFO_MAGIC_X86_64.len()].copy_from_slice(START_INFO_MAGIC_X86_64);
    si.nr_pages = nr_pages;
    si.shared_info = spec.shared_info_maddr;
    si.flags = spec.flags;
    si.store_mfn = w.mem.mfn(pfn(store_va)).0;
    si.store_evtchn = spec.store_evtchn;
    si.set_console_domu(w.mem.mfn(pfn(console_va)).0, spec.console_evtchn);
    si.pt_base = pt_va;
    si.nr_pt_frames = pt_count;
    si.mfn_list = p2m_va;
    if spec.initrd.is_some() {
        si.mod_start = initrd_va;
        si.mod_len = initrd_len;
    }
    si.cmd_line[..spec.cmdline.len()].copy_from_slice(spec.cmdline.as_bytes());
    w.copy(start_info_va, si.as_bytes());

    Ok(Built {
        entry: image.entry,
        stack_top: stack_va + PAGE,
        start_info_va,
        l4_pfn,
        pt_first_pfn: l4_pfn,
        pt_count,
        p2m_va,
        store_pfn: pfn(store_va),
        console_pfn: pfn(console_va),
        initrd: spec.initrd.map(|_| (initrd_va, initrd_len)),
        virt_end,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use zerocopy::FromBytes;

    use super::*;

    /// Pseudo-physical pages backed by machine frames in reverse order (so pfn != mfn).
    struct TestMemory {
        pages: HashMap<u64, Vec<u8>>,
        nr: u64,
    }

    impl TestMemory {
        fn new(nr: u64) -> Self {
            TestMemory {
                pages: HashMap::new(),
                nr,
            }
        }
        fn mfn_to_pfn(&self, mfn: u64) -> u64 {
            0x10_0000 - 1 - mfn
        }
        fn page(&self, pfn: u64) -> Vec<u8> {
            self.pages
                .get(&pfn)
                .cloned()
                .unwrap_or_else(|| vec![0; 4096])
        }
        fn u64_at(&self, pfn: u64, index: usize) -> u64 {
            u64::from_le_bytes(self.page(pfn)[index * 8..index * 8 + 8].try_into().unwrap())
        }
        /// Walks the guest page tables from the L4 at `l4_pfn`: (pfn, leaf flags).
        fn translate(&self, l4_pfn: u64, va: u64) -> Option<(u64, u64)> {
            let mut table = l4_pfn;
            for shift in [39u32, 30, 21, 12] {
                let e = self.u64_at(table, ((va >> shift) & 0x1ff) as usize);
                if e & _PAGE_PRESENT == 0 {
                    return None;
                }
                let next = self.mfn_to_pfn((e >> 12) & 0xff_ffff_ffff);
                if shift == 12 {
                    return Some((next, e & 0xfff));
                }
                assert_eq!(
                    e & _PAGE_USER,
                    _PAGE_USER,
                    "intermediate entries allow ring 3"
                );
                table = next;
            }
            None
        }
        fn read_va(&self, l4_pfn: u64, va: u64, len: usize) -> Vec<u8> {
            (0..len as u64)
                .map(|i| {
                    let (pfn, _) = self.translate(l4_pfn, va + i).expect("mapped");
                    self.page(pfn)[((va + i) % 4096) as usize]
                })
                .collect()
        }
    }

    impl DomainMemory for TestMemory {
        fn nr_pages(&self) -> u64 {
            self.nr
        }
        fn mfn(&self, pfn: u64) -> Mfn {
            assert!(pfn < self.nr, "pfn {pfn:#x} beyond the domain");
            Mfn(0x10_0000 - 1 - pfn)
        }
        fn write(&mut self, pfn: u64, offset: usize, bytes: &[u8]) {
            assert!(pfn < self.nr && offset + bytes.len() <= 4096);
            let page = self.pages.entry(pfn).or_insert_with(|| vec![0; 4096]);
            page[offset..offset + bytes.len()].copy_from_slice(bytes);
        }
    }

    const BASE: u64 = 0xffff_ffff_8000_0000;

    fn kernel() -> (Vec<u8>, Vec<u8>) {
        let text: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let data = vec![0xaa; 3000];
        (text, data)
    }

    fn spec(initrd: Option<&[u8]>) -> BuildSpec<'_> {
        BuildSpec {
            initrd,
            cmdline: "root=/dev/xvda ro console=hvc0 nousb",
            flags: 0,
            shared_info_maddr: 0x1234_5000,
            store_evtchn: 1,
            console_evtchn: 2,
        }
    }

    fn build_test(nr: u64, initrd: Option<&[u8]>) -> (TestMemory, Built, Vec<u8>, Vec<u8>) {
        let (text, data) = kernel();
        let segs = [
            Segment {
                // The zero-filled tail holds the hypercall page.
                virt: BASE + 0x20_0000,
                data: &text,
                mem_size: 0x4000,
            },
            Segment {
                virt: BASE + 0x20_4000,
                data: &data,
                mem_size: 0x5000,
            },
        ];
        let image = KernelImage {
            segments: &segs,
            virt_base: BASE,
            entry: BASE + 0x20_0010,
            hypercall_page: Some(BASE + 0x20_3000),
        };
        let mut mem = TestMemory::new(nr);
        let built = build(&image, &spec(initrd), &mut mem).expect("builds");
        (mem, built, text, data)
    }

    #[test]
    fn layout_follows_xen_start_of_day_rules() {
        let initrd = vec![0x5a; 70_000];
        let (mem, b, _, _) = build_test(16_384, Some(&initrd));
        assert_eq!(b.virt_end % REGION_ALIGN, 0);
        assert!(
            b.virt_end - (b.stack_top) >= PADDING,
            "512 KiB padding after the stack"
        );
        let (initrd_va, initrd_len) = b.initrd.unwrap();
        assert_eq!(initrd_va, BASE + 0x20_9000, "initrd right after the kernel");
        assert_eq!(initrd_len, 70_000);
        assert!(b.p2m_va >= initrd_va + initrd_len && b.p2m_va % PAGE == 0);
        assert!(b.start_info_va >= b.p2m_va + 16_384 * 8);
        assert_eq!(b.store_pfn, (b.start_info_va - BASE) / PAGE + 1);
        assert_eq!(b.console_pfn, b.store_pfn + 1);
        assert_eq!(b.l4_pfn, b.console_pfn + 1);
        assert_eq!(b.stack_top, BASE + (b.pt_first_pfn + b.pt_count + 1) * PAGE);
        // Every page of the region is mapped to its pfn; only page tables read-only.
        for va in (BASE..b.virt_end).step_by(4096) {
            let (pfn, flags) = mem.translate(b.l4_pfn, va).expect("region mapped");
            assert_eq!(pfn, (va - BASE) / PAGE);
            let is_pt = (b.pt_first_pfn..b.pt_first_pfn + b.pt_count).contains(&pfn);
            assert_eq!(flags & _PAGE_RW == 0, is_pt, "va {va:#x}");
            assert_ne!(flags & _PAGE_USER, 0);
        }
        assert!(mem.translate(b.l4_pfn, b.virt_end).is_none());
        assert!(mem.translate(b.l4_pfn, BASE - PAGE).is_none());
        // No hypervisor slot is touched.
        for slot in 256..=271 {
            assert_eq!(mem.u64_at(b.l4_pfn, slot), 0);
        }
        // The page-table pages were all used, and no more were claimed than needed.
        let used: std::collections::HashSet<u64> = (b.pt_first_pfn..b.pt_first_pfn + b.pt_count)
            .filter(|&p| mem.page(p).iter().any(|&x| x != 0))
            .collect();
        assert_eq!(used.len() as u64, b.pt_count);
    }

    #[test]
    fn contents_are_where_the_guest_looks() {
        let initrd = vec![0x5a; 5000];
        let (mem, b, text, data) = build_test(8192, Some(&initrd));
        let got = mem.read_va(b.l4_pfn, BASE + 0x20_0000, text.len());
        let first_diff = got.iter().zip(&text).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "the kernel text differs");
        assert_eq!(mem.read_va(b.l4_pfn, BASE + 0x20_4000, data.len()), data);
        assert!(mem
            .read_va(b.l4_pfn, BASE + 0x20_4000 + 3000, 0x5000 - 3000)
            .iter()
            .all(|&x| x == 0));
        let (iva, ilen) = b.initrd.unwrap();
        assert_eq!(mem.read_va(b.l4_pfn, iva, ilen as usize), initrd);
        // p2m list: pfn -> mfn.
        for p in [0u64, 1, 4095, 8191] {
            let bytes = mem.read_va(b.l4_pfn, b.p2m_va + p * 8, 8);
            assert_eq!(u64::from_le_bytes(bytes.try_into().unwrap()), mem.mfn(p).0);
        }
        let si_bytes = mem.read_va(b.l4_pfn, b.start_info_va, core::mem::size_of::<StartInfo>());
        let si = StartInfo::read_from_bytes(&si_bytes).unwrap();
        assert_eq!(&si.magic[..14], b"xen-3.0-x86_64");
        assert_eq!(si.nr_pages, 8192);
        assert_eq!(si.shared_info, 0x1234_5000);
        assert_eq!(si.pt_base, BASE + b.l4_pfn * PAGE);
        assert_eq!(si.nr_pt_frames, b.pt_count);
        assert_eq!(si.mfn_list, b.p2m_va);
        assert_eq!((si.mod_start, si.mod_len), (iva, ilen));
        assert_eq!(si.store_mfn, mem.mfn(b.store_pfn).0);
        assert_eq!(si.console_domu_mfn(), mem.mfn(b.console_pfn).0);
        assert_eq!((si.store_evtchn, si.console_domu_evtchn()), (1, 2));
        let cmd = si.cmd_line.split(|&c| c == 0).next().unwrap();
        assert_eq!(cmd, b"root=/dev/xvda ro console=hvc0 nousb");
        // The hypercall page: stub 0 and the iret stub.
        let hp = mem.read_va(b.l4_pfn, BASE + 0x20_3000, 4096);
        assert_eq!(
            &hp[..14],
            &[0x51, 0x41, 0x53, 0xb8, 0, 0, 0, 0, 0x0f, 0x05, 0x41, 0x5b, 0x59, 0xc3]
        );
        assert_eq!(
            &hp[23 * 32..23 * 32 + 11],
            &[0x51, 0x41, 0x53, 0x50, 0xb8, 23, 0, 0, 0, 0x0f, 0x05]
        );
        assert_eq!(b.entry, BASE + 0x20_0010);
    }

    #[test]
    fn refuses_what_does_not_fit_or_make_sense() {
        let (text, _) = kernel();
        let seg = [Segment {
            virt: BASE + 0x20_0000,
            data: &text,
            mem_size: text.len() as u64,
        }];
        let ok = KernelImage {
            segments: &seg,
            virt_base: BASE,
            entry: BASE + 0x20_0000,
            hypercall_page: None,
        };
        let mut small = TestMemory::new(512);
        assert!(matches!(
            build(&ok, &spec(None), &mut small),
            Err(BuildError::TooSmall { .. })
        ));
        let mut mem = TestMemory::new(4096);
        let bad_entry = KernelImage { entry: BASE, ..ok };
        assert!(matches!(
            build(&bad_entry, &spec(None), &mut mem),
            Err(BuildError::BadImage(_))
        ));
        let bad_base = KernelImage {
            virt_base: BASE + 0x1000,
            ..ok
        };
        assert!(matches!(
            build(&bad_base, &spec(None), &mut mem),
            Err(BuildError::BadImage(_))
        ));
        let bad_hp = KernelImage {
            hypercall_page: Some(BASE + 0x20_0800),
            ..ok
        };
        assert!(matches!(
            build(&bad_hp, &spec(None), &mut mem),
            Err(BuildError::BadImage(_))
        ));
        let below = [Segment {
            virt: BASE - 0x1000,
            data: &text,
            mem_size: text.len() as u64,
        }];
        let below = KernelImage {
            segments: &below,
            ..ok
        };
        assert!(matches!(
            build(&below, &spec(None), &mut mem),
            Err(BuildError::BadImage(_))
        ));
        // An image placed at the very top of the address space: the layout after it would
        // wrap (it used to overflow: a panic in a debug build, garbage in a release one).
        let top = 0xffff_ffff_ff80_0000;
        let at_top = [Segment {
            virt: top,
            data: &text,
            mem_size: 0x7f_f000,
        }];
        let at_top = KernelImage {
            segments: &at_top,
            virt_base: top,
            entry: top,
            hypercall_page: None,
        };
        assert!(matches!(
            build(&at_top, &spec(None), &mut mem),
            Err(BuildError::BadImage(_))
        ));
        let long = "x".repeat(MAX_GUEST_CMDLINE);
        let long_spec = BuildSpec {
            cmdline: &long,
            ..spec(None)
        };
        assert_eq!(
            build(&ok, &long_spec, &mut mem),
            Err(BuildError::CmdlineTooLong {
                len: MAX_GUEST_CMDLINE
            })
        );
    }

    #[test]
    fn table_count_covers_region_crossing_boundaries() {
        // A region crossing a 1 GiB boundary needs two L2s.
        assert_eq!(tables_for(BASE, BASE + (4 << 20)), 1 + 1 + 1 + 2);
        assert_eq!(
            tables_for(BASE + (1 << 30) - (2 << 20), BASE + (1 << 30) + (2 << 20)),
            1 + 1 + 2 + 2
        );
    }
}
