//! Domains and their vCPUs: building dom0 from the boot modules, running it in ring 3,
//! and what happens when a domain stops. `registry` holds every live domain; domains
//! other than dom0 are made through domain control (`hypercall::domctl`).

pub mod build;
pub mod lifecycle;
pub mod registry;

pub use build::build_dom0;
pub use ferrovisor::domain_control::Life;
pub use registry::{with_current, with_domain, with_domains, Domains, Dying};

use alloc::{string::String, vec::Vec};
use core::mem::offset_of;

use ferrovisor::{
    evtchn::{self, EventChannels, EventWords},
    grant_table::{GrantTable, Maptrack},
    guest_console::GuestConsole,
    mm::{
        frame_table::{DomId, FrameTable, L4Ref, PageRef, WritableFrame},
        Mfn, PAGE_SIZE,
    },
    pv::{
        bounce::BounceState,
        descriptor::GuestGdt,
        time::{self as pv_time, TimeFields},
    },
};
use ferrovisor_abi::xen::{
    arch_x86::ArchVcpuInfo,
    vcpu::VcpuRunstateInfo,
    xen::{SharedInfo, VcpuInfo, VcpuTimeInfo},
};
use zerocopy::{FromZeros, IntoBytes};

use crate::{
    arch::x86_64::{
        cpu::FpuState,
        debug_exit::Verdict,
        guest_memory::{GuestFault, GuestFrames, GuestSpace},
        irq::IrqMutex,
        paging as hw_paging, percpu,
        phys::SharedFrame,
        segments::DataSelectors,
        trap::TrapFrame,
    },
    clock, fatal,
};

pub const DOM0: DomId = DomId(0);

/// `RUNSTATE_*` (`vcpu.h`).
pub const RUNSTATE_RUNNING: i32 = 0;
pub const RUNSTATE_RUNNABLE: i32 = 1;
pub const RUNSTATE_BLOCKED: i32 = 2;
pub const RUNSTATE_OFFLINE: i32 = 3;

/// Event-channel ports per domain (the 2-level ABI's limit for 64-bit guests is 4096).
const MAX_PORTS: u32 = 1024;
/// vCPUs a domain may have (each has a `vcpu_info` slot in the shared-info page).
pub const MAX_VCPUS: usize = 8;
const VIRQ_TIMER: u32 = 0;

/// How guest-memory copies hold the frames of domain `.0` they touch: through the frame
/// table, refused while this CPU itself holds it (a copy must not run inside its lock;
/// another CPU holding it is waited for).
pub struct DomainFrames(pub DomId);

impl GuestFrames for DomainFrames {
    fn hold_read(&self, mfn: Mfn) -> Option<PageRef> {
        FRAME_TABLE
            .lock_unless_held_here()?
            .as_mut()?
            .get_page_ref(mfn, self.0)
            .ok()
    }
    fn hold_write(&self, mfn: Mfn) -> Option<WritableFrame> {
        FRAME_TABLE
            .lock_unless_held_here()?
            .as_mut()?
            .get_writable(mfn, self.0)
            .ok()
    }
    fn release_read(&self, page: PageRef) {
        if let Some(ft) = FRAME_TABLE.lock().as_mut() {
            let _ = ft.put_page_ref(page);
        }
    }
    fn release_write(&self, page: WritableFrame) {
        if let Some(ft) = FRAME_TABLE.lock().as_mut() {
            let _ = ft.put_writable(page);
        }
    }
}

/// A virtual CPU: its saved registers and PV state.
pub struct Vcpu {
    /// Its number in the domain.
    pub id: u32,
    /// Up (`VCPUOP_up`), or down / never started.
    pub online: bool,
    /// Has a starting state (vCPU 0 from the builder, others from `VCPUOP_initialise`).
    pub initialised: bool,
    /// Waiting in `SCHEDOP_block` for an event, or in `SCHEDOP_poll` (then `poll` says
    /// for which ports and until when).
    pub blocked: bool,
    pub poll: Option<Poll>,
    /// Its x87/SSE registers while it is not on the CPU.
    pub fpu: FpuState,
    /// Its FS base while it is not on the CPU.
    pub fs_base: u64,
    /// Its active GS base while it is not on the CPU (on the CPU it is in the MSR).
    pub saved_gs_base_active: u64,
    /// The registers it resumes with (a trap frame: what `trap_exit` restores).
    pub regs: TrapFrame,
    /// Guest-kernel vs user mode, kernel stack, trap table, callbacks, upcall mask.
    pub pv: BounceState,
    /// The kernel's page-table root (`cr3` while in kernel mode).
    pub kernel_l4: Option<L4Ref>,
    /// The user page-table root (`MMUEXT_NEW_USER_BASEPTR`), `cr3` in user mode.
    pub user_l4: Option<L4Ref>,
    /// Its DS, ES and FS selectors while it is off the CPU (`arch::x86_64::segments`).
    pub selectors: DataSelectors,
    /// The GS base of the mode that is not running (swapped on each mode change).
    pub saved_gs_base: u64,
    /// The guest's virtual CR0.TS (`fpu_taskswitch`).
    pub fpu_ts: bool,
    /// The guest's virtual CR2: the address of the last page fault delivered to it.
    pub cr2: u64,
    /// The version of the last `vcpu_time_info` published (even when complete).
    pub time_version: u32,
    /// Its timer fired while it was live on another CPU: its `vcpu_time_info` is to be
    /// republished by that CPU before the vCPU next runs guest code (never from here,
    /// where the guest could read the fields half-written).
    pub time_stale: bool,
    /// Where its `vcpu_info` is: at this offset in the shared-info page, or in the frame
    /// the guest moved it to (`VCPUOP_register_vcpu_info`, once per vCPU as `vcpu.h`
    /// says), held writable while it is there.
    pub vcpu_info_frame: Option<WritableFrame>,
    pub vcpu_info_offset: usize,
    /// Single-shot timer deadline (system time, ns).
    pub timer_deadline: Option<u64>,
    /// Periodic timer: period and next deadline.
    pub periodic: Option<(u64, u64)>,
    /// Guest address of its `vcpu_runstate_info`, if registered.
    pub runstate_area: Option<u64>,
    /// Its run-state accounting (what the runstate area shows).
    pub runstate: VcpuRunstateInfo,
    /// Its GDT (`set_gdt`): the frames mapped into the CPU's GDT window while it runs.
    pub gdt: GuestGdt,
    /// Its virtual I/O privilege level (`PHYSDEVOP_set_iopl`, 0 to 3): at 1 or more its
    /// kernel may use `in`/`out` (which reach no device) and `cli`/`sti` (no-ops).
    pub iopl: u8,
    /// Its LDT (`MMUEXT_SET_LDT`): the frames (typed `SegDesc`) and the entry count.
    pub ldt_frames: heapless::Vec<Mfn, 16>,
    pub ldt_entries: u32,
    /// The physical CPU it is live on, if any (a vCPU runs on one CPU at a time).
    pub on_cpu: Option<u32>,
    /// The physical CPU it last ran on (`fv vcpu-list`'s CPU column).
    pub last_cpu: Option<u32>,
}

pub struct Domain {
    pub id: DomId,
    /// Pseudo-physical to machine frames.
    pub p2m: Vec<Mfn>,
    /// Its shared-info page, held writable from creation until its memory is released.
    pub shared_info: Option<WritableFrame>,
    /// Its vCPUs, indexed by id (never empty). A vCPU on a physical CPU has its
    /// registers, segment bases and FPU state live there (`Vcpu::on_cpu`).
    pub vcpus: Vec<Vcpu>,
    /// The vCPU the code holding the registry lock acts for: the one this physical CPU
    /// runs, when it runs one of this domain's (the registry's accessors set it). What
    /// [`Domain::cur`] returns.
    pub(crate) cur: usize,
    /// Its console: output history, serial mirror, pending input.
    pub console: GuestConsole,
    /// It has written to its console ring (so input goes there too, rather than to
    /// `console_io` read: dom0 has both, and a kernel uses one of them).
    pub console_ring_used: bool,
    /// The domain's event-channel ports.
    pub evtchn: EventChannels,
    /// `vm_assist` types enabled (a bit per `VMASST_TYPE_*`).
    pub vm_assist: u32,
    /// Most frames the domain may own (its size at build; `mem-set` will change it).
    pub max_pages: u64,
    /// Its name (`xl list`'s first column) and UUID.
    pub name: String,
    pub uuid: [u8; 16],
    /// Nested pauses by the privileged domain; its vCPUs run only at 0.
    pub pause_count: u32,
    /// Running, or stopped and why.
    pub life: Life,
    /// Has a kernel loaded (dom0 from the start, others after `BuildPv`).
    pub built: bool,
    /// CPU time its vCPUs have had (ns), accounted on every switch away.
    pub cpu_time_ns: u64,
    /// The balloon target the toolstack set (frames).
    pub target_pages: u64,
    /// The grants it offers, and the grants of others it maps.
    pub grants: GrantTable,
    /// Its grant frames, held writable, in table order (`grants.frames()` names the same).
    pub grant_frames: Vec<WritableFrame>,
    pub maptrack: Maptrack,
    /// Its xenstore and console rings (frame, the guest's port), once built.
    pub store_ring: Option<(WritableFrame, u32)>,
    pub console_ring: Option<(WritableFrame, u32)>,
}

/// The 2-level event bitmaps of a domain: `evtchn_pending`/`evtchn_mask` in shared info,
/// the selector and the upcall flags in the vCPU's `vcpu_info`. Every update is an atomic
/// operation on the shared page, since the guest changes the same words.
pub struct SharedWords<'a> {
    shared: SharedFrame<'a>,
    /// Each vCPU's `vcpu_info`: (vCPU id, frame, offset).
    vcpu_infos: heapless::Vec<(u32, SharedFrame<'a>, usize), MAX_VCPUS>,
}

impl SharedWords<'_> {
    fn info(&self, vcpu: u32) -> Option<(SharedFrame<'_>, usize)> {
        self.vcpu_infos
            .iter()
            .find(|(id, _, _)| *id == vcpu)
            .map(|&(_, f, o)| (f, o))
    }

    /// Whether `evtchn_upcall_pending` is set for `vcpu` (no change).
    pub fn upcall_pending_swap_peek(&self, vcpu: u32) -> bool {
        self.info(vcpu).is_some_and(|(f, base)| {
            f.read_u8(base + offset_of!(VcpuInfo, evtchn_upcall_pending)) != 0
        })
    }
}

impl EventWords for SharedWords<'_> {
    fn pending_fetch_or(&self, word: usize, mask: u64) -> u64 {
        self.shared
            .fetch_or_u64(offset_of!(SharedInfo, evtchn_pending) + word * 8, mask)
    }
    fn pending_load(&self, word: usize) -> u64 {
        self.shared
            .load_u64(offset_of!(SharedInfo, evtchn_pending) + word * 8)
    }
    fn pending_fetch_and(&self, word: usize, mask: u64) -> u64 {
        self.shared
            .fetch_and_u64(offset_of!(SharedInfo, evtchn_pending) + word * 8, mask)
    }
    fn mask_load(&self, word: usize) -> u64 {
        self.shared
            .load_u64(offset_of!(SharedInfo, evtchn_mask) + word * 8)
    }
    fn mask_fetch_and(&self, word: usize, mask: u64) -> u64 {
        self.shared
            .fetch_and_u64(offset_of!(SharedInfo, evtchn_mask) + word * 8, mask)
    }
    fn sel_fetch_or(&self, vcpu: u32, mask: u64) -> u64 {
        self.info(vcpu).map_or(0, |(f, base)| {
            f.fetch_or_u64(base + offset_of!(VcpuInfo, evtchn_pending_sel), mask)
        })
    }
    fn upcall_pending_swap(&self, vcpu: u32, v: u8) -> u8 {
        self.info(vcpu).map_or(0, |(f, base)| {
            f.swap_u8(base + offset_of!(VcpuInfo, evtchn_upcall_pending), v)
        })
    }
    fn upcall_mask_load(&self, vcpu: u32) -> u8 {
        self.info(vcpu).map_or(1, |(f, base)| {
            f.read_u8(base + offset_of!(VcpuInfo, evtchn_upcall_mask))
        })
    }
}

/// What a vCPU in `SCHEDOP_poll` waits for: one of `ports` becoming pending, or the
/// system time `deadline`.
#[derive(Clone, Debug)]
pub struct Poll {
    pub ports: heapless::Vec<u32, MAX_POLL_PORTS>,
    pub deadline: Option<u64>,
}

/// Ports one `SCHEDOP_poll` may name (Linux polls one).
pub const MAX_POLL_PORTS: usize = 128;

impl Vcpu {
    /// A vCPU that is not running yet, with vCPU `id`'s default `vcpu_info` slot in the
    /// shared-info page.
    pub fn new(id: u32, regs: TrapFrame, l4: Option<L4Ref>, kernel_sp: u64) -> Vcpu {
        Vcpu {
            id,
            online: false,
            initialised: false,
            blocked: false,
            poll: None,
            fpu: FpuState::initial(),
            fs_base: 0,
            saved_gs_base_active: 0,
            regs,
            pv: BounceState::new(kernel_sp),
            kernel_l4: l4,
            user_l4: None,
            selectors: DataSelectors::default(),
            saved_gs_base: 0,
            fpu_ts: false,
            cr2: 0,
            time_version: 0,
            time_stale: false,
            vcpu_info_frame: None,
            vcpu_info_offset: id as usize * core::mem::size_of::<VcpuInfo>(),
            timer_deadline: None,
            // Xen starts every vCPU with a 10 ms periodic timer (Linux stops it).
            periodic: Some((10_000_000, 10_000_000)),
            runstate_area: None,
            runstate: VcpuRunstateInfo {
                state: RUNSTATE_RUNNING,
                _cpad0: 0,
                state_entry_time: 0,
                time: [0; 4],
            },
            gdt: GuestGdt::EMPTY,
            iopl: 0,
            ldt_frames: heapless::Vec::new(),
            ldt_entries: 0,
            on_cpu: None,
            last_cpu: None,
        }
    }

    /// Can be put on the CPU.
    pub fn runnable(&self) -> bool {
        self.online && !self.blocked
    }

    /// CPU time it has had (ns) up to `now`: its time in `RUNSTATE_RUNNING`, the current
    /// stretch included.
    pub fn cpu_time_ns(&self, now: u64) -> u64 {
        let r = &self.runstate;
        let current = if r.state == RUNSTATE_RUNNING {
            now.saturating_sub(r.state_entry_time)
        } else {
            0
        };
        r.time[RUNSTATE_RUNNING as usize].saturating_add(current)
    }
}

impl Domain {
    /// The event bitmaps, for the event-channel operations; `None` once the domain's
    /// memory is released (events to it go nowhere then).
    pub fn event_words(&self) -> Option<SharedWords<'_>> {
        let mut infos = heapless::Vec::new();
        for v in &self.vcpus {
            if let Some((f, off)) = self.vcpu_info_of(v) {
                let _ = infos.push((v.id, f, off));
            }
        }
        Some(SharedWords {
            shared: self.shared()?,
            vcpu_infos: infos,
        })
    }

    pub fn vcpu_by_id_mut(&mut self, id: u32) -> Option<&mut Vcpu> {
        self.vcpus.get_mut(id as usize)
    }

    /// The vCPU this physical CPU acts for (see `cur`).
    pub fn cur(&self) -> &Vcpu {
        &self.vcpus[self.cur]
    }

    pub fn cur_mut(&mut self) -> &mut Vcpu {
        &mut self.vcpus[self.cur]
    }

    /// The other CPUs (a bit per CPU index) running one of its vCPUs now.
    pub fn other_cpus(&self) -> u64 {
        let me = percpu::cpu();
        self.vcpus
            .iter()
            .filter_map(|v| v.on_cpu)
            .filter(|&c| c != me)
            .fold(0, |m, c| m | 1u64 << c)
    }

    /// Flushes the TLBs of the other CPUs running its vCPUs, and waits until they have:
    /// after a translation in its page tables was removed or changed, before anything
    /// (a frame's new type, its return to the allocator) relies on its being gone.
    pub fn flush_other_cpus(&self) {
        let others = self.other_cpus();
        if others != 0 {
            crate::arch::x86_64::smp::flush_tlbs(others);
        }
    }

    /// Flushes the TLBs of every CPU running its vCPUs, this one included (the guest's
    /// `MMUEXT_TLB_FLUSH_ALL` and friends).
    pub fn flush_all_cpus(&self) {
        crate::arch::x86_64::smp::flush_tlbs(self.other_cpus() | 1u64 << percpu::cpu());
    }

    /// Runs `f` acting for vCPU `id` (what [`Domain::cur`] returns meanwhile): for the
    /// per-vCPU operations one vCPU may do on behalf of another (`vcpu_op` on a sibling).
    pub fn acting_for<R>(&mut self, id: u32, f: impl FnOnce(&mut Domain) -> R) -> Option<R> {
        if id as usize >= self.vcpus.len() {
            return None;
        }
        let saved = core::mem::replace(&mut self.cur, id as usize);
        let r = f(self);
        self.cur = saved;
        Some(r)
    }

    /// Marks `port` pending for vCPU `vcpu`: a blocked vCPU becomes runnable, and so does
    /// any vCPU polling that port.
    pub fn notify(&mut self, port: u32, vcpu: u32) {
        if let Some(words) = self.event_words() {
            let _ = evtchn::set_pending(&words, port, vcpu);
        }
        self.wake_if_pending(vcpu);
        for v in self.vcpus.iter_mut() {
            if v.poll.as_ref().is_some_and(|p| p.ports.contains(&port)) {
                v.poll = None;
                v.blocked = false;
            }
        }
        use crate::arch::x86_64::smp;
        if let Some(c) = self.vcpus.get(vcpu as usize).and_then(|v| v.on_cpu) {
            smp::kick(c);
        }
        if self.can_run()
            && self
                .vcpus
                .iter()
                .any(|v| v.on_cpu.is_none() && v.runnable())
        {
            smp::kick_idle();
        }
    }

    /// Gets other CPUs to act on its vCPUs' new state: a CPU running one re-checks its
    /// events on the way back to it; a runnable one on no CPU wakes an idle CPU.
    pub fn kick_vcpus(&self) {
        use crate::arch::x86_64::smp;
        let mut waiting = false;
        for v in &self.vcpus {
            match v.on_cpu {
                Some(c) => smp::kick(c),
                None => waiting |= v.runnable(),
            }
        }
        if waiting && self.can_run() {
            smp::kick_idle();
        }
    }

    /// A vCPU blocked in `SCHEDOP_block` with an event pending becomes runnable (a
    /// polling vCPU waits for its ports instead).
    pub fn wake_if_pending(&mut self, vcpu: u32) {
        let pending = self
            .event_words()
            .is_some_and(|w| w.upcall_pending_swap_peek(vcpu));
        if let Some(v) = self.vcpu_by_id_mut(vcpu) {
            if v.blocked && v.poll.is_none() && pending {
                v.blocked = false;
            }
        }
    }
}

/// Pauses domain `id` (one more nested pause) and returns once none of its vCPUs is on a
/// CPU any more, their state saved: what domain control needs before it reads, replaces
/// or tears down that state. `None` if there is no such domain.
pub fn pause_sync(id: DomId) -> Option<()> {
    with_domain(id, |d| {
        d.pause_count = d.pause_count.saturating_add(1);
    })?;
    wait_descheduled(id);
    Some(())
}

/// Waits until no vCPU of domain `id` (paused or stopped, so no CPU picks it again) is on
/// a CPU; the CPUs running one are kicked, and switch away on their way back to it.
pub fn wait_descheduled(id: DomId) {
    loop {
        let on_cpu = with_domain(id, |d| {
            d.kick_vcpus();
            d.vcpus.iter().any(|v| v.on_cpu.is_some())
        });
        if on_cpu != Some(true) {
            return;
        }
        for _ in 0..1000 {
            crate::arch::x86_64::smp::serve_flush();
            core::hint::spin_loop();
        }
    }
}

/// Every frame's owner and type (the PV MMU's state).
pub static FRAME_TABLE: IrqMutex<Option<FrameTable>> = IrqMutex::new(None);

/// Creates the frame table for frames below `max_addr`, with the hypervisor's L4 slots
/// that every validated guest L4 receives.
pub fn init_frame_table(max_addr: u64) {
    let mut table = FrameTable::new((max_addr / PAGE_SIZE) as usize);
    table.set_hypervisor_l4_slots(hw_paging::hypervisor_l4_slots());
    *FRAME_TABLE.lock() = Some(table);
}

/// Enters dom0 for the first time; never returns (the hypervisor runs from traps from now).
pub fn run_dom0() -> ! {
    let started = with_domain(DOM0, |d| {
        d.publish_wallclock();
        if let Some(mfn) = d.shared_info_mfn() {
            log::info!("dom0: shared info page at {mfn}");
        }
        log::info!("dom0: starting at {:#x} in ring 3", d.vcpus[0].regs.rip);
        // Built paused: from here any CPU may pick its first vCPU.
        d.pause_count = 0;
    });
    if started.is_none() {
        log::error!("dom0 was not built");
        fatal::halt(Verdict::Refused);
    }
    crate::sched::run_idle()
}

impl Domain {
    /// The held base pointer of one of its vCPUs whose frame is `mfn`.
    fn held_root(&self, mfn: Mfn) -> Option<&L4Ref> {
        self.vcpus
            .iter()
            .flat_map(|v| [v.kernel_l4.as_ref(), v.user_l4.as_ref()])
            .flatten()
            .find(|l4| l4.mfn() == mfn)
    }

    /// The current guest address space (the one CR3 holds while the domain's trap is
    /// handled), for copying to and from guest memory; `None` (every access faults) if CR3
    /// is not one of its vCPUs' held roots.
    pub fn space(&self) -> Option<GuestSpace<'_, DomainFrames>> {
        let cr3 = Mfn::containing(crate::arch::x86_64::cpu::read_cr3());
        let l4 = self.held_root(cr3)?;
        Some(GuestSpace::new(l4, DomainFrames(self.id)))
    }

    /// The guest kernel's address space (bounce frames always go on a kernel stack).
    pub fn kernel_space(&self) -> Option<GuestSpace<'_, DomainFrames>> {
        let l4 = self.cur().kernel_l4.as_ref()?;
        Some(GuestSpace::new(l4, DomainFrames(self.id)))
    }

    /// The shared-info page (held writable from creation until the domain's memory is
    /// released).
    pub fn shared(&self) -> Option<SharedFrame<'_>> {
        self.shared_info.as_ref().map(SharedFrame::new)
    }

    /// The shared-info page's machine frame.
    pub fn shared_info_mfn(&self) -> Option<Mfn> {
        self.shared_info.as_ref().map(WritableFrame::mfn)
    }

    /// Where `v`'s `vcpu_info` is: the frame and the offset of the structure in it.
    fn vcpu_info_of<'a>(&'a self, v: &'a Vcpu) -> Option<(SharedFrame<'a>, usize)> {
        let frame = v.vcpu_info_frame.as_ref().or(self.shared_info.as_ref())?;
        Some((SharedFrame::new(frame), v.vcpu_info_offset))
    }

    /// The current vCPU's `vcpu_info`.
    pub fn vcpu_info(&self) -> Option<(SharedFrame<'_>, usize)> {
        self.vcpu_info_of(self.cur())
    }

    pub fn set_upcall_mask(&self, mask: u8) {
        if let Some((f, base)) = self.vcpu_info() {
            f.write_u8(base + offset_of!(VcpuInfo, evtchn_upcall_mask), mask);
        }
    }

    /// Its events are masked (as they are once the domain's memory is gone).
    pub fn upcall_mask(&self) -> u8 {
        self.vcpu_info().map_or(1, |(f, base)| {
            f.read_u8(base + offset_of!(VcpuInfo, evtchn_upcall_mask))
        })
    }

    /// An event is pending for the vCPU and its events are not masked.
    pub fn upcall_due(&self) -> bool {
        self.upcall_pending() && self.upcall_mask() == 0
    }

    /// The vCPU has an event pending, masked or not (what wakes a blocked vCPU).
    pub fn upcall_pending(&self) -> bool {
        self.vcpu_info().is_some_and(|(f, base)| {
            f.read_u8(base + offset_of!(VcpuInfo, evtchn_upcall_pending)) != 0
        })
    }

    /// Publishes the current vCPU's `vcpu_time_info` (system time now, TSC scale) under the version
    /// protocol: odd version, fields, even version.
    pub fn publish_time(&mut self) {
        let tsc = crate::arch::x86_64::cpu::rdtsc();
        let system_ns = clock::now_ns();
        let Ok(fields) = TimeFields::new(tsc, system_ns, clock::scale(), false) else {
            return; // no TSC calibration: nothing truthful to publish
        };
        let mut info = VcpuTimeInfo::new_zeroed();
        pv_time::write_fields(&mut info, &fields);
        let odd = self.cur().time_version.wrapping_add(1) | 1;
        let even = odd.wrapping_add(1);
        {
            let Some((shared, vi)) = self.vcpu_info() else {
                return;
            };
            let base = vi + offset_of!(VcpuInfo, time);
            let version_at = base + offset_of!(VcpuTimeInfo, version);
            shared.write_u32(version_at, odd);
            core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
            let fields_at = offset_of!(VcpuTimeInfo, tsc_timestamp);
            shared.write_bytes(base + fields_at, &info.as_bytes()[fields_at..]);
            core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
            shared.write_u32(version_at, even);
        }
        self.cur_mut().time_version = even;
        self.cur_mut().time_stale = false;
    }

    /// Publishes the wall-clock time at system time 0 in `shared_info`.
    pub fn publish_wallclock(&self) {
        let Some(shared) = self.shared() else {
            return;
        };
        let version = shared.read_u32(offset_of!(SharedInfo, wc_version));
        shared.write_u32(
            offset_of!(SharedInfo, wc_version),
            version.wrapping_add(1) | 1,
        );
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        let boot = clock::boot_unix();
        shared.write_u32(offset_of!(SharedInfo, wc_sec), boot as u32);
        shared.write_u32(offset_of!(SharedInfo, wc_nsec), 0);
        shared.write_u32(offset_of!(SharedInfo, wc_sec_hi), (boot >> 32) as u32);
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        shared.write_u32(
            offset_of!(SharedInfo, wc_version),
            (version.wrapping_add(1) | 1).wrapping_add(1),
        );
    }

    /// Marks an event as pending for the vCPU (delivered on its next return to the guest
    /// if not masked).
    pub fn raise_upcall(&self) {
        if let Some((f, base)) = self.vcpu_info() {
            f.swap_u8(base + offset_of!(VcpuInfo, evtchn_upcall_pending), 1);
        }
    }

    /// Moves the vCPU to run state `state` (`RUNSTATE_*`), accounting the time spent in
    /// the old one, and publishes it.
    pub fn set_runstate(&mut self, state: i32) {
        let now = clock::now_ns();
        let r = &mut self.cur_mut().runstate;
        if let Some(t) = r.time.get_mut(r.state as usize) {
            *t += now.saturating_sub(r.state_entry_time);
        }
        r.state = state;
        r.state_entry_time = now;
        self.publish_runstate();
    }

    /// Writes the vCPU's run-state accounting to the area the guest registered.
    pub fn publish_runstate(&self) {
        let Some(va) = self.cur().runstate_area else {
            return;
        };
        // A bad area is the guest's problem (Xen ignores write failures here too).
        if let Some(space) = self.kernel_space() {
            let _ = space.write(va, self.cur().runstate.as_bytes());
        }
    }

    /// Sends virtual IRQ `virq` of vCPU `vcpu` if the guest bound it to a port.
    pub fn send_virq(&mut self, virq: u32, vcpu: u32) {
        let Some(target) = self.evtchn.virq_target(virq, vcpu) else {
            return;
        };
        // `set_pending` raises the upcall flag itself when one becomes due.
        self.notify(target.port, target.vcpu);
    }

    /// Fires the timers of every vCPU that are due (called on every tick).
    pub fn check_timers(&mut self, now: u64) {
        let mut fired: heapless::Vec<u32, MAX_VCPUS> = heapless::Vec::new();
        for v in self.vcpus.iter_mut() {
            if !v.online {
                continue;
            }
            // A poll whose timeout passed ends (`SCHEDOP_poll` returns 0 either way).
            if v.poll
                .as_ref()
                .is_some_and(|p| p.deadline.is_some_and(|d| d <= now))
            {
                v.poll = None;
                v.blocked = false;
            }
            let mut fire = false;
            if v.timer_deadline.is_some_and(|d| d <= now) {
                v.timer_deadline = None;
                fire = true;
            }
            if let Some((period, next)) = v.periodic {
                if next <= now {
                    // Skip missed periods rather than firing a burst.
                    let behind = (now - next) / period + 1;
                    let next = next.saturating_add(behind.saturating_mul(period));
                    v.periodic = Some((period, next));
                    fire = true;
                }
            }
            if fire {
                let _ = fired.push(v.id);
            }
        }
        let here = percpu::cpu();
        for id in fired {
            // A vCPU live on another CPU may be reading its time right now: a version
            // seen odd there would be an update in progress. That CPU republishes it on
            // its way back to the guest (`guest::before_return`), as Xen updates a vCPU's
            // time only on the vCPU's own CPU.
            let elsewhere = self
                .vcpu_by_id_mut(id)
                .is_some_and(|v| v.on_cpu.is_some_and(|c| c != here));
            if elsewhere {
                if let Some(v) = self.vcpu_by_id_mut(id) {
                    v.time_stale = true;
                }
            } else {
                self.acting_for(id, |d| d.publish_time());
            }
            self.send_virq(VIRQ_TIMER, id);
        }
    }

    pub fn set_cr2(&self, cr2: u64) {
        if let Some((f, base)) = self.vcpu_info() {
            f.write_u64(
                base + offset_of!(VcpuInfo, arch) + offset_of!(ArchVcpuInfo, cr2),
                cr2,
            );
        }
    }

    /// Changes between guest-kernel and guest-user mode: the page tables and the GS base
    /// follow (Xen's `toggle_guest_mode`).
    pub fn switch_mode(&mut self, to_kernel: bool) {
        let v = self.cur();
        let l4 = if to_kernel {
            v.kernel_l4.as_ref()
        } else {
            v.user_l4.as_ref()
        };
        if let Some(l4) = l4 {
            hw_paging::activate_guest(l4);
        }
        let active = percpu::guest_gs_base();
        let _ = percpu::set_guest_gs_base(self.cur().saved_gs_base);
        self.cur_mut().saved_gs_base = active;
    }

    pub fn read_guest(&self, va: u64, out: &mut [u8]) -> Result<(), GuestFault> {
        self.space().ok_or(GuestFault::NotMapped(va))?.read(va, out)
    }

    pub fn write_guest(&self, va: u64, bytes: &[u8]) -> Result<(), GuestFault> {
        self.space()
            .ok_or(GuestFault::NotMapped(va))?
            .write(va, bytes)
    }

    /// The L1 table and index mapping `va` in the current address space.
    pub fn l1_slot(&self, va: u64) -> Option<(Mfn, usize)> {
        self.space()?.l1_slot(va).ok()
    }

    /// Console output written through `console_io`: kept in its history and mirrored to
    /// the log, whole lines prefixed `(d<id>)` (a domU's as `guest_log` allows).
    pub fn console_write(&mut self, bytes: &[u8]) {
        let id = self.id;
        self.console
            .record_output(bytes, &mut |line| crate::guest_log::console_line(id, line));
    }
}

impl Domain {
    /// Whether its vCPUs may run: alive, built and not paused.
    pub fn can_run(&self) -> bool {
        self.life == Life::Running && self.built && self.pause_count == 0
    }

    /// The domain stopped itself (`SCHEDOP_shutdown`). dom0 stopping stops the machine;
    /// another domain stays, stopped, until domain control destroys it (the scheduler
    /// moves off it on the way out of the hypercall).
    pub fn shutdown(&mut self, reason: u32) {
        const CRASH: u32 = 3;
        if self.id == DOM0 {
            match reason {
                0 => {
                    log::info!("dom0 shut down (poweroff)");
                    fatal::halt(Verdict::Halted)
                }
                1 => {
                    log::info!(
                        "dom0 asked for a reboot; rebooting the machine is not supported yet, \
                         halting"
                    );
                    fatal::halt(Verdict::Halted)
                }
                _ => self.crash(format_args!("shut down with reason {reason}")),
            }
        }
        if reason == CRASH {
            return self.crash(format_args!("shut down with reason crash"));
        }
        log::info!("d{}: shut down (reason {reason})", self.id.0);
        self.life = Life::Shutdown(reason);
        self.kick_vcpus(); // its vCPUs on other CPUs stop too
    }

    /// The domain crashed (asked to, or did something the hypervisor cannot let it go on
    /// from). dom0 crashing stops the machine; another domain stays, crashed, until it is
    /// destroyed.
    pub fn crash(&mut self, why: core::fmt::Arguments) {
        if self.id == DOM0 {
            log::error!("dom0 crashed: {why}");
            fatal::halt(Verdict::GuestCrashed)
        }
        log::error!("d{} crashed: {why}", self.id.0);
        self.life = Life::Crashed;
        self.kick_vcpus();
    }

    /// Its vCPUs, in id order.
    pub fn vcpus(&self) -> impl Iterator<Item = &Vcpu> + '_ {
        self.vcpus.iter()
    }
}
