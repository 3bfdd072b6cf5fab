//! Building a PV domain: dom0 from the boot modules at start of day, other domains from
//! the image and ramdisk the privileged domain hands over (`domctl BuildPv`). Both load
//! the kernel with `ferrovisor::domain_builder` into the domain's frames, validate the
//! bootstrap page tables through the frame table, and prepare vCPU 0.

use alloc::{boxed::Box, format, string::String, vec::Vec};
use core::mem::offset_of;

use ferrovisor::{
    domain_builder::{self, BuildSpec, DomainMemory, KernelImage, Segment},
    evtchn::EventChannels,
    grant_table::{self, GrantTable, Maptrack},
    guest_console::GuestConsole,
    guest_image::{self, GuestImage},
    mm::{
        frame_table::{DomId, L4Ref, MmError, Owner, WritableFrame},
        page_type::Level,
        Mfn, PhysRange, PAGE_SIZE,
    },
    multiboot2::Module,
};
use ferrovisor_abi::{
    layout::{FLAT_RING3_CS64, FLAT_RING3_SS64},
    xen::xen::{VcpuInfo, SIF_PRIVILEGED, VMASST_TYPE_WRITABLE_PAGETABLES},
};

use super::{
    lifecycle::{SERVICE_CONSOLE, SERVICE_XENSTORE},
    Domain, Life, Vcpu, DOM0, FRAME_TABLE, MAX_PORTS, MAX_VCPUS,
};
use crate::{
    arch::x86_64::memory,
    arch::x86_64::{paging::GuestTables, phys::SharedFrame, trap::TrapFrame},
};

/// Grant mappings one domain may hold at once.
const MAX_GRANT_MAPS: u32 = 16 * 1024;

/// Largest kernel image (decompressed) the builder accepts.
const MAX_KERNEL_IMAGE: usize = 128 << 20;

/// A domain's memory while it is being built: its frames in pseudo-physical order. Every
/// write goes through the frame table, which allows it only into a frame of the domain
/// that nothing references and that has no type (a domain that has never run); the first
/// refusal is kept and fails the build.
struct BuildMemory<'a> {
    dom: DomId,
    p2m: &'a [Mfn],
    refused: Option<String>,
}

impl DomainMemory for BuildMemory<'_> {
    fn nr_pages(&self) -> u64 {
        self.p2m.len() as u64
    }
    fn mfn(&self, pfn: u64) -> Mfn {
        // The builder asks only for pfns below `nr_pages` (its layout is checked against
        // it); anything else names no frame.
        self.p2m.get(pfn as usize).copied().unwrap_or(Mfn(u64::MAX))
    }
    fn write(&mut self, pfn: u64, offset: usize, bytes: &[u8]) {
        let mfn = self.mfn(pfn);
        let written = FRAME_TABLE
            .lock()
            .as_ref()
            .ok_or(MmError::InvalidMfn)
            .and_then(|ft| ft.write_unused(mfn, self.dom, offset, bytes, &mut GuestTables::new()));
        if let (Err(e), None) = (written, &self.refused) {
            self.refused = Some(format!("pfn {pfn:#x} ({mfn}): {e}"));
        }
    }
}

/// The kernel image's segments as the builder wants them.
fn segments(image: &GuestImage) -> Vec<Segment<'_>> {
    image
        .segments
        .iter()
        .map(|s| Segment {
            virt: s.guest_virt,
            data: &image.elf[s.file_offset as usize..(s.file_offset + s.file_size) as usize],
            mem_size: s.mem_size,
        })
        .collect()
}

/// What to build into a domain.
pub struct BuildInput<'a> {
    /// The kernel file (ELF or bzImage, compressed or not).
    pub kernel: &'a [u8],
    pub initrd: Option<&'a [u8]>,
    pub cmdline: &'a str,
    /// `SIF_*` flags for `start_info`.
    pub flags: u32,
    /// The guest's ports to the xenstore and console backends (0: none).
    pub store_evtchn: u32,
    pub console_evtchn: u32,
    /// Names the domain in messages ("dom0", "d3").
    pub what: &'a str,
    /// Where the kernel came from, for messages ("module 0", "the BuildPv request").
    pub source: &'a str,
}

/// What the builder made: vCPU 0's starting registers and page-table root, and where it
/// put the rings.
pub struct Built {
    pub regs: TrapFrame,
    /// vCPU 0's base pointer (taken by `Domain::start_vcpu0`).
    pub l4: Option<L4Ref>,
    pub stack_top: u64,
    pub store_mfn: Mfn,
    pub console_mfn: Mfn,
}

/// Loads `input` into the frames `p2m` of domain `dom` (owned by it, zeroed and unused)
/// and validates its bootstrap page tables: pins the L4, and takes vCPU 0's base-pointer
/// reference on it.
pub fn build_into(
    dom: DomId,
    p2m: &[Mfn],
    shared_info: Mfn,
    input: &BuildInput,
) -> Result<Built, String> {
    let image = guest_image::inspect(input.kernel, MAX_KERNEL_IMAGE).map_err(|e| {
        format!(
            "the {} kernel ({}) is unusable: {e}",
            input.what, input.source
        )
    })?;
    log::info!(
        "{}: {:?} kernel, entry {:#x}, image {:#x}-{:#x}, hypercall page {}",
        input.what,
        image.format,
        image.entry,
        image.virt_start,
        image.virt_end,
        if image.info.hypercall_page.is_some() {
            "requested"
        } else {
            "not used"
        }
    );
    let segs = segments(&image);
    let kimage = KernelImage {
        segments: &segs,
        virt_base: image.info.virt_base,
        entry: image.entry,
        hypercall_page: image.info.hypercall_page,
    };
    let spec = BuildSpec {
        initrd: input.initrd,
        cmdline: input.cmdline,
        flags: input.flags,
        shared_info_maddr: shared_info.addr(),
        store_evtchn: input.store_evtchn,
        console_evtchn: input.console_evtchn,
    };
    let mut mem = BuildMemory {
        dom,
        p2m,
        refused: None,
    };
    let built = domain_builder::build(&kimage, &spec, &mut mem)
        .map_err(|e| format!("building {}: {e}", input.what))?;
    if let Some(why) = mem.refused {
        return Err(format!(
            "building {}: a write into its memory was refused: {why}",
            input.what
        ));
    }
    drop(image);

    let l4 = p2m[built.l4_pfn as usize];
    let l4 = {
        let mut ft = FRAME_TABLE.lock();
        let ft = ft.as_mut().ok_or("no frame table")?;
        for (pfn, &mfn) in p2m.iter().enumerate() {
            memory::m2p_set(mfn, pfn as u64);
        }
        let mut tables = GuestTables::new();
        ft.pin(l4, dom, Level::L4, &mut tables)
            .map_err(|e| format!("{}'s bootstrap page tables are invalid: {e}", input.what))?;
        // vCPU 0's base pointer holds its own reference, so unpinning the boot root (as a
        // guest may) can never devalidate the tables CR3 points at.
        ft.get_l4_ref(l4, dom, &mut tables)
            .map_err(|e| format!("{}'s bootstrap page tables are invalid: {e}", input.what))?
    };
    log::info!(
        "{}: built: {} pages, start info at {:#x}, {} page-table frames, stack top {:#x}",
        input.what,
        p2m.len(),
        built.start_info_va,
        built.pt_count,
        built.stack_top
    );
    let regs = TrapFrame {
        rip: built.entry,
        cs: FLAT_RING3_CS64 as u64,
        rflags: 0x202,
        rsp: built.stack_top,
        ss: FLAT_RING3_SS64 as u64,
        rsi: built.start_info_va,
        ..TrapFrame::default()
    };
    Ok(Built {
        regs,
        l4: Some(l4),
        stack_top: built.stack_top,
        store_mfn: p2m[built.store_pfn as usize],
        console_mfn: p2m[built.console_pfn as usize],
    })
}

/// A fresh shared-info frame for `dom`, with the permanent references that keep the
/// guest from giving it back or making it a page or descriptor table (the hypervisor
/// writes it for as long as the domain lives; `FrameTable::get_writable`).
pub fn new_shared_info(dom: DomId) -> Result<WritableFrame, String> {
    let frame = memory::alloc_frame().ok_or("out of memory for a shared info page")?;
    let mfn = frame.into_mfn();
    let mut ft = FRAME_TABLE.lock();
    let ft = ft.as_mut().ok_or("no frame table")?;
    ft.assign(mfn, Owner::Domain(dom))
        .and_then(|()| ft.get_writable(mfn, dom))
        .map_err(|e| format!("the shared info page {mfn}: {e}"))
}

/// Takes the references that keep a ring frame (xenstore, console) the domain's, and
/// ordinary memory, while the hypervisor's backend writes it (`FrameTable::get_writable`:
/// were it a page table, the backend's writes would be PTEs the guest chose);
/// `lifecycle::destroy` drops them.
pub fn hold_ring(dom: DomId, mfn: Mfn) -> Result<WritableFrame, String> {
    FRAME_TABLE
        .lock()
        .as_mut()
        .ok_or("no frame table")?
        .get_writable(mfn, dom)
        .map_err(|e| format!("the ring frame {mfn}: {e}"))
}

/// vCPU 0 starts with event delivery masked, as in Xen.
pub fn mask_vcpu0_events(shared_info: &WritableFrame) {
    SharedFrame::new(shared_info).write_u8(offset_of!(VcpuInfo, evtchn_upcall_mask), 1);
}

/// A domain with nothing built in it yet: no memory, vCPUs offline, paused once (it
/// runs after the privileged domain builds it and unpauses it).
pub fn new_domain(
    id: DomId,
    name: String,
    uuid: [u8; 16],
    max_pages: u64,
    nr_vcpus: u32,
    shared_info: WritableFrame,
) -> Domain {
    let nr_vcpus = nr_vcpus.clamp(1, MAX_VCPUS as u32);
    Domain {
        id,
        p2m: Vec::new(),
        shared_info: Some(shared_info),
        vcpus: (0..nr_vcpus)
            .map(|v| Vcpu::new(v, TrapFrame::default(), None, 0))
            .collect(),
        cur: 0,
        console: GuestConsole::new(id.0),
        console_ring_used: false,
        evtchn: EventChannels::new(id.0, nr_vcpus, MAX_PORTS),
        // Writable page tables are on from the start, as Xen gives every PV domain.
        vm_assist: 1 << VMASST_TYPE_WRITABLE_PAGETABLES,
        max_pages,
        name,
        uuid,
        pause_count: 1,
        life: Life::Running,
        built: false,
        cpu_time_ns: 0,
        target_pages: max_pages,
        grants: GrantTable::new(id, grant_table::DEFAULT_MAX_FRAMES),
        grant_frames: Vec::new(),
        maptrack: Maptrack::new(id, MAX_GRANT_MAPS),
        store_ring: None,
        console_ring: None,
    }
}

impl Domain {
    /// Vcpu 0 starts where the builder left it; the others wait for `VCPUOP_initialise`.
    pub fn start_vcpu0(&mut self, built: &mut Built) {
        self.vcpus[0] = Vcpu {
            online: true,
            initialised: true,
            ..Vcpu::new(0, built.regs, built.l4.take(), built.stack_top)
        };
        self.built = true;
    }
}

/// Builds dom0 from the kernel (and initrd) modules in its reserved memory.
pub fn build_dom0(
    kernel: &Module,
    initrd: Option<&Module>,
    extents: &[PhysRange],
    nr_vcpus: u32,
) -> Result<(), String> {
    let module = memory::boot_module_bytes(kernel.range()).ok_or("dom0's kernel module")?;
    let initrd_bytes = match initrd {
        Some(m) => Some(memory::boot_module_bytes(m.range()).ok_or("dom0's initrd module")?),
        None => None,
    };

    let p2m: Vec<Mfn> = extents
        .iter()
        .flat_map(|r| (r.start / PAGE_SIZE..r.end / PAGE_SIZE).map(Mfn))
        .collect();
    {
        let mut ft = FRAME_TABLE.lock();
        let ft = ft.as_mut().ok_or("no frame table")?;
        // Scrubbed once dom0's (and unused): whatever was there before never reaches it.
        let zero = [0u8; PAGE_SIZE as usize];
        let mut mem = GuestTables::new();
        for &mfn in &p2m {
            ft.assign(mfn, Owner::Domain(DOM0))
                .and_then(|()| ft.write_unused(mfn, DOM0, 0, &zero, &mut mem))
                .map_err(|e| format!("giving {mfn} to dom0: {e}"))?;
        }
    }
    let shared_info = new_shared_info(DOM0)?;
    let shared_info_mfn = shared_info.mfn();
    mask_vcpu0_events(&shared_info);
    let max_pages = p2m.len() as u64;
    let mut d = new_domain(
        DOM0,
        String::from("Domain-0"),
        [0; 16],
        max_pages,
        nr_vcpus,
        shared_info,
    );
    // dom0 reaches the xenstore service and its console through rings like any domain:
    // it is privileged but not Xen's "initial domain", so Linux's `hvc_xen` uses the
    // console ring (`console_io` output works too, for early messages).
    let store_port = d
        .evtchn
        .bind_backend(SERVICE_XENSTORE)
        .map_err(|e| format!("dom0's xenstore port: {e:?}"))?;
    let console_port = d
        .evtchn
        .bind_backend(SERVICE_CONSOLE)
        .map_err(|e| format!("dom0's console port: {e:?}"))?;
    let input = BuildInput {
        kernel: module,
        initrd: initrd_bytes,
        cmdline: kernel.cmdline,
        flags: SIF_PRIVILEGED,
        store_evtchn: store_port,
        console_evtchn: console_port,
        what: "dom0",
        source: "module 0",
    };
    let mut built = build_into(DOM0, &p2m, shared_info_mfn, &input)?;
    let store = hold_ring(DOM0, built.store_mfn)?;
    let console = hold_ring(DOM0, built.console_mfn)?;
    d.p2m = p2m;
    d.start_vcpu0(&mut built);
    d.store_ring = Some((store, store_port));
    d.console_ring = Some((console, console_port));
    d.console.set_raw_ring_mirror(true);
    // Paused until `run_dom0` lets the CPUs pick it.
    d.pause_count = 1;
    super::with_domains(|doms| doms.insert(Box::new(d)));
    Ok(())
}
