//! `fuzz`: the unprivileged domains of the hypercall fuzzer. The `fuzzctl` kernel (dom0)
//! builds two domUs from this module: `role=peer`, a well-behaved domain the fuzzer has
//! real grants and an event channel with, and `role=fuzz seed=0x... calls=N`, which makes
//! `N` hypercalls (half on each of its two vCPUs, at once) with arguments from a PRNG
//! seeded by `seed`, and then powers off.
//!
//! Every hypercall number 0..64 is made, biased towards the implemented ones and their
//! sub-ops. Arguments are chosen per field from classes of values: buffer pointers into the
//! fuzzer's own pool of pages *filled with random bytes* (so every structure the
//! hypervisor reads is random but readable, with some fields set to plausible values:
//! domain ids, ports, grant references, frames, PTEs, counts), into its own read-only text
//! and bootstrap page tables, into the hypervisor's range, non-canonical, null; machine
//! frames of its own, of the peer, of the hypervisor image, MMIO, random and beyond RAM;
//! page-table updates of its own scratch tables (an L3 -> L2 -> L1 chain hooked into L4
//! slot 1, the "window") and descriptor updates of its own descriptor pages. Multicalls
//! carry nested random entries. `domctl`, `sysctl` and `platform_op` must be refused
//! (the domain is unprivileged); the kernel's read-only text must be unchanged afterwards.
//!
//! Excluded, because they legitimately kill or wedge the fuzzer (in Xen as well):
//!
//! | what | why |
//! |---|---|
//! | `set_trap_table`, `set_callbacks`, `callback_op` register or unregister of the event, failsafe and syscall callbacks | the next exception or event would jump to a random address, or could not be delivered (the hypervisor crashes the domain) |
//! | `iret` | returns to a random frame |
//! | `sched_op` `shutdown` (and the compat form), `watchdog` | stops the domain (the fuzzer shuts down only at the end) |
//! | `sched_op` `block`, a `poll` without a timeout | sleeps forever when nothing is pending |
//! | `vcpu_op` `down`, `send_nmi` | stops a fuzzing vCPU; an NMI has no handler |
//! | page-table updates (`mmu_update` targets, `update_va_mapping` and grant-map addresses) inside the kernel's own bootstrap region and page tables | would unmap or remap its own text, data or stack |
//! | `mmuext` `new_baseptr` to any own frame but the current L4 (the peer's frames are used instead) | a zeroed own page (from `populate_physmap` too) validates as an empty L4: no kernel left to run |
//! | writes into own frames the kernel uses (`clear_page`, `copy_page` destination, `update_descriptor`, grant-copy destination frames): only its pool, scratch and descriptor frames, never text, data or tables | would overwrite its own code or data |
//! | hypervisor-written pointers into its own data, bss or stack | the hypervisor may write there legitimately; pointers go to the pool, read-only pages or hostile addresses only |
//! | `console_io` write of its own text | the log would carry its rodata (verdict strings included) |
//!
//! Events may be delivered (a random `unmask`, a random `register_vcpu_info` with a zero
//! mask byte): the handler returns with events masked.
#![cfg_attr(target_os = "none", no_std, no_main)]

use ferrovisor_abi::xen::xen::StartInfo;

pvrt::test_kernel!(name: "fuzz", main: test_main);

fn test_main(si: &StartInfo) -> Result<(), &'static str> {
    match pvrt::cmdline(si) {
        Some(c) if c.contains("role=peer") => peer::run(si),
        Some(c) if c.contains("role=fuzz") => fuzzer::run(si, c),
        _ => Err("no role= on the command line"),
    }
}

/// Reads `key=value` from a command line (hex with `0x`, else decimal).
fn arg(cmdline: &str, key: &str) -> Option<u64> {
    cmdline.split(' ').find_map(|w| {
        let v = w.strip_prefix(key)?.strip_prefix('=')?;
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        }
    })
}

/// What the two domains agree on.
mod wire {
    /// The peer's page granted to dom0 (the after-fuzz round trip) and to the fuzzer.
    pub const PEER_GREF_DOM0: u32 = 8;
    pub const PEER_GREF_FUZZER: u32 = 9;
    /// The fuzzer's page granted to the peer, which keeps it mapped.
    pub const FUZZER_GREF: u32 = 10;
    /// The peer answers dom0's nonce (word 0 of its granted page) with this XOR in word 1.
    pub const ANSWER_XOR: u64 = 0x5eed_5eed_5eed_5eed;
}

/// Shared helpers of both roles.
mod common {
    use ferrovisor_abi::xen::{
        event_channel::{EvtchnBindInterdomain, EvtchnOp},
        xen::StartInfo,
        DomId,
    };
    use pvrt::{events, xenstore::Store};

    pub fn setup(si: &StartInfo) -> Result<(Store, DomId, DomId), &'static str> {
        pvrt::shared_info::map(si).map_err(|_| "cannot map shared_info")?;
        let mut store = Store::open(si).ok_or("no xenstore ring")?;
        let me = store.read_number("domid")? as DomId;
        let peer = store.read_number("data/peer")? as DomId;
        Ok((store, me, peer))
    }

    /// `EVTCHNOP_bind_interdomain` to `remote_port` of `dom`: the local port.
    pub fn bind(dom: DomId, remote_port: u32) -> Result<u32, &'static str> {
        let mut b = EvtchnBindInterdomain {
            remote_dom: dom,
            _cpad0: 0,
            remote_port,
            local_port: 0,
        };
        // SAFETY: the hypervisor reads and writes the structure on this stack.
        let r = unsafe { events::event_channel_op(EvtchnOp::BindInterdomain, (&raw mut b).cast()) };
        pvrt::ensure!(r == 0, "binding port {remote_port} of d{dom} returned {r}");
        events::set_masked(b.local_port, true);
        events::clear_pending(b.local_port);
        Ok(b.local_port)
    }
}

/// The peer: grants a page to dom0 and one to the fuzzer, offers the fuzzer a port, maps
/// the page the fuzzer grants it, then answers dom0's nonces and echoes the fuzzer's
/// events until dom0 destroys it.
mod peer {
    use ferrovisor_abi::xen::{
        hypercall::Hypercall,
        sched::{SchedOp, SchedPoll},
        xen::StartInfo,
        GuestHandle,
    };
    use pvrt::{events, region};

    use crate::{common, wire};

    pub fn run(si: &StartInfo) -> Result<(), &'static str> {
        let (mut store, me, fuzzer) = common::setup(si)?;
        let dom0_port = store.read_number("data/dom0-port")? as u32;
        let to_dom0 = common::bind(0, dom0_port)?;
        let to_fuzzer = pvrt::control::alloc_unbound(fuzzer)?;
        let table = pvrt::grant::GrantTable::setup(si)?;
        let dom0_page = region::alloc_scratch(si).ok_or("no scratch page")?;
        let fuzzer_page = region::alloc_scratch(si).ok_or("no scratch page")?;
        table.grant(wire::PEER_GREF_DOM0, 0, &dom0_page, false);
        table.grant(wire::PEER_GREF_FUZZER, fuzzer, &fuzzer_page, false);
        store.offer(me, fuzzer, to_fuzzer, wire::PEER_GREF_FUZZER)?;

        // The fuzzer's page, mapped for good: the fuzzer's frame stays referenced by this
        // domain while it is fuzzed and destroyed.
        let (_, gref) = store.take_offer(fuzzer)?;
        let at = region::alloc_scratch(si).ok_or("no scratch page")?;
        // SAFETY: the scratch page is the kernel's and unused; the grant goes there.
        let r = unsafe { pvrt::update_va_mapping(at.va, 0, 0) };
        pvrt::ensure!(r == 0, "unmapping a scratch page returned {r}");
        let (r, map) = pvrt::grant::map(at.va, gref, fuzzer, false);
        pvrt::ensure!(
            r == 0 && map.status == 0,
            "mapping the fuzzer's grant: rc {r}, status {}",
            map.status
        );
        store
            .write("data/ready", b"1")
            .map_err(|_| "cannot write data/ready")?;
        pvrt::println!(
            "pv-test fuzz: peer d{me} ready: port {to_fuzzer} and grant {} for d{fuzzer}, \
             its grant {gref} mapped",
            wire::PEER_GREF_FUZZER
        );

        let words = dom0_page.words();
        let ports = [to_dom0, to_fuzzer];
        loop {
            let poll = SchedPoll {
                ports: GuestHandle(ports.as_ptr() as u64),
                nr_ports: 2,
                _cpad0: 0,
                timeout: pvrt::time::now() + 100 * pvrt::time::NS_PER_MS,
            };
            // SAFETY: the hypervisor reads the argument and the two-port list on this
            // stack.
            let _ = unsafe {
                pvrt::hypercall2(
                    Hypercall::SchedOp.raw(),
                    u64::from(SchedOp::Poll.raw()),
                    (&raw const poll) as u64,
                )
            };
            if events::is_pending(to_dom0) {
                events::clear_pending(to_dom0);
                // SAFETY: dom0's granted page is mapped writable for the kernel's life;
                // dom0 writes word 0 before it signals.
                unsafe {
                    let nonce = words.read_volatile();
                    words.add(1).write_volatile(nonce ^ wire::ANSWER_XOR);
                }
                events::send(to_dom0);
            }
            if events::is_pending(to_fuzzer) {
                events::clear_pending(to_fuzzer);
                events::send(to_fuzzer);
            }
        }
    }
}

/// The fuzzer.
mod fuzzer {
    use core::{
        cell::UnsafeCell,
        sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering},
    };

    use ferrovisor_abi::xen::{
        arch_x86::{_PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW, FLAT_KERNEL_SS},
        hypercall::Hypercall as H,
        xen::{MmuUpdate, MmuextCmd, MmuextOp, StartInfo, DOMID_SELF, UVMF_INVLPG},
        DomId,
    };
    use pvrt::{
        contract::VIRT_BASE,
        layout,
        region::{self, ScratchPage, PAGE_SIZE, PTE_RW, PTE_TABLE},
        smp, traps,
    };

    use crate::{common, wire};

    /// Pool pages per vCPU: the random-filled buffers.
    const POOL_PAGES: usize = 8;
    /// Frames of its own that random memory and page-table ops may consume.
    const DONOR_PAGES: usize = 8;
    /// Unmapped frames for `update_descriptor` and `set_gdt`.
    const DESC_PAGES: usize = 2;
    const VCPU1_STACK_PAGES: u64 = 4;
    /// The window: L4 slot 1, one L1 worth (2 MiB) mapped through the scratch tables.
    const WINDOW: u64 = 1 << 39;
    const WINDOW_L4_SLOT: u64 = 1;
    /// Where the peer's grant is mapped: the window's last page.
    const PEER_MAP_VA: u64 = WINDOW + 511 * PAGE_SIZE;
    /// Own frames the fuzzer keeps a sorted list of (its size, 8 MiB, is 2048).
    const MAX_OWN: usize = 4096;
    /// Hostile addresses and frames.
    const HV_IMAGE_VA: u64 = 0xffff_8200_0020_0000;
    const HV_DIRECT_MAP: u64 = 0xffff_8300_0000_0000;
    const M2P: u64 = 0xffff_8000_0000_0000;
    const HV_IMAGE_MFN: u64 = 0x200;
    const BEYOND_RAM_MFN: u64 = 0x800_0000;
    /// The hypervisor's RAM on the test machine is at most a few GiB: frames below this.
    const RAM_MFNS: u64 = 0x10_0000;
    /// The sub-ops each implemented hypercall is biased towards.
    const IMPLEMENTED: [H; 21] = [
        H::MmuUpdate,
        H::MmuUpdate,
        H::MmuextOp,
        H::MmuextOp,
        H::UpdateVaMapping,
        H::UpdateVaMapping,
        H::MemoryOp,
        H::MemoryOp,
        H::GrantTableOp,
        H::GrantTableOp,
        H::GrantTableOp,
        H::EventChannelOp,
        H::EventChannelOp,
        H::VcpuOp,
        H::SchedOp,
        H::SetGdt,
        H::UpdateDescriptor,
        H::Multicall,
        H::XenVersion,
        H::ConsoleIo,
        H::PhysdevOp,
    ];

    /// What both vCPUs fuzz with; written by vCPU 0 before vCPU 1 starts, read-only after.
    struct Env {
        seed: u64,
        calls: [u64; 2],
        /// Calls from this index on are printed before they are made (`trace=`).
        trace: u64,
        /// Only this hypercall (`only=`, for narrowing a replay down).
        only: Option<u64>,
        me: DomId,
        peer: DomId,
        peer_mfns: [u64; 4],
        peer_port: u32,
        /// The kernel's own bootstrap region, where nothing is remapped.
        region: (u64, u64),
        /// Text and rodata, read-only.
        ro: (u64, u64),
        pt_base: u64,
        nr_pt_frames: u64,
        l4_mfn: u64,
        /// The window's L3, L2, L1 (machine frames).
        window_tables: [u64; 3],
        pools: [u64; 2],
        /// Frames the fuzzer may write through the hypervisor: pools, donors, descriptor
        /// pages, its granted page.
        writable: [u64; 2 * POOL_PAGES + DONOR_PAGES + DESC_PAGES + 1],
        desc: [u64; DESC_PAGES],
        nr_pages: u64,
        mfn_list: u64,
    }

    /// The fuzzer's own frames, sorted (written before vCPU 1 starts).
    struct OwnFrames(UnsafeCell<([u64; MAX_OWN], usize)>);
    // SAFETY: written only by vCPU 0 before vCPU 1 is started, read-only afterwards.
    unsafe impl Sync for OwnFrames {}
    static OWN: OwnFrames = OwnFrames(UnsafeCell::new(([0; MAX_OWN], 0)));

    static ENV: AtomicPtr<Env> = AtomicPtr::new(core::ptr::null_mut());
    static VCPU1_DONE: AtomicBool = AtomicBool::new(false);
    static VCPU1_STACK_TOP: AtomicU64 = AtomicU64::new(0);
    static DONE_CALLS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

    fn is_own(mfn: u64) -> bool {
        // SAFETY: see `OwnFrames`: no writer once fuzzing starts.
        let (list, n) = unsafe { &*OWN.0.get() };
        list[..*n].binary_search(&mfn).is_ok()
    }

    pub fn run(si: &StartInfo, cmdline: &str) -> Result<(), &'static str> {
        let seed = crate::arg(cmdline, "seed").unwrap_or(1);
        let calls = crate::arg(cmdline, "calls").unwrap_or(10_000);
        pvrt::println!("pv-test fuzz: seed {seed:#x}, {calls} calls on 2 vCPUs");
        traps::install().map_err(|_| "cannot install the trap table")?;
        traps::set_event_handler(keep_masked);

        let (mut store, me, peer) = common::setup(si)?;
        let mut peer_mfns = [0u64; 4];
        if let Some(list) = cmdline
            .split(' ')
            .find_map(|w| w.strip_prefix("peer_mfns="))
        {
            for (slot, m) in peer_mfns.iter_mut().zip(list.split(',')) {
                *slot = m
                    .strip_prefix("0x")
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                    .unwrap_or(0);
            }
        }

        let tables = region::Tables::new(si);
        let window_tables = build_window(si, &tables)?;

        // The peer's offer: bind its port, map its page into the window.
        let (remote, peer_gref) = store.take_offer(peer)?;
        let peer_port = common::bind(peer, remote)?;
        let (r, map) = pvrt::grant::map(PEER_MAP_VA, peer_gref, peer, false);
        pvrt::ensure!(
            r == 0 && map.status == 0,
            "mapping the peer's grant: rc {r}, status {}",
            map.status
        );
        // Its own page for the peer, which maps it.
        let table = pvrt::grant::GrantTable::setup(si)?;
        let granted = region::alloc_scratch(si).ok_or("no scratch page")?;
        table.grant(wire::FUZZER_GREF, peer, &granted, false);
        store.offer(me, peer, 0, wire::FUZZER_GREF)?;
        store
            .write("data/ready", b"1")
            .map_err(|_| "cannot write data/ready")?;
        store
            .watch("data/go", "go")
            .map_err(|_| "cannot watch data/go")?;
        while store.read_number("data/go").is_err() {
            let _ = store.next_event(1000);
        }

        let mut writable = [0u64; 2 * POOL_PAGES + DONOR_PAGES + DESC_PAGES + 1];
        let mut w = 0;
        let mut pools = [0u64; 2];
        for pool in &mut pools {
            for i in 0..POOL_PAGES {
                let p = region::alloc_scratch(si).ok_or("no scratch page for the pool")?;
                if i == 0 {
                    *pool = p.va;
                }
                pvrt::ensure!(p.va == *pool + i as u64 * PAGE_SIZE, "pool not contiguous");
                writable[w] = p.mfn;
                w += 1;
            }
        }
        let mut rng = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
        for pool in pools {
            fill_random(&mut rng, pool, POOL_PAGES as u64 * PAGE_SIZE);
        }
        for _ in 0..DONOR_PAGES {
            let p = region::alloc_scratch(si).ok_or("no scratch page for the donors")?;
            fill_random(&mut rng, p.va, PAGE_SIZE);
            unmap(&p)?;
            writable[w] = p.mfn;
            w += 1;
        }
        let mut desc = [0u64; DESC_PAGES];
        for d in &mut desc {
            let p = region::alloc_scratch(si).ok_or("no scratch page for descriptors")?;
            // SAFETY: a scratch page of the kernel, mapped writable, used by nothing else.
            unsafe { core::ptr::write_bytes(p.va as *mut u8, 0, PAGE_SIZE as usize) };
            unmap(&p)?;
            *d = p.mfn;
            writable[w] = p.mfn;
            w += 1;
        }
        writable[w] = granted.mfn;

        own_frames(si)?;
        let ro = (layout::image_start(), layout::data_start());
        make_read_only(si, ro)?;
        let text_sum = checksum(ro);
        let env = Env {
            seed,
            calls: [calls / 2, calls - calls / 2],
            trace: crate::arg(cmdline, "trace").unwrap_or(u64::MAX),
            only: crate::arg(cmdline, "only"),
            me,
            peer,
            peer_mfns,
            peer_port,
            region: (VIRT_BASE, region::region_end(si)),
            ro,
            pt_base: si.pt_base,
            nr_pt_frames: si.nr_pt_frames,
            l4_mfn: tables.l4_mfn,
            window_tables,
            pools,
            writable,
            desc,
            nr_pages: si.nr_pages,
            mfn_list: si.mfn_list,
        };
        ENV.store(core::ptr::from_ref(&env).cast_mut(), Ordering::SeqCst);
        start_vcpu1(si, tables.l4_mfn)?;

        let stats0 = fuzz(&env, 0);
        while !VCPU1_DONE.load(Ordering::SeqCst) {
            let _ = pvrt::sched_yield();
        }
        // Undo what the random calls may have set: CR0.TS and the breakpoints.
        // SAFETY: clearing TS and DR7 is what the kernel runs with.
        unsafe {
            let _ = pvrt::hypercall1(H::FpuTaskswitch.raw(), 0);
            let _ = pvrt::hypercall2(H::SetDebugreg.raw(), 7, 0);
        }
        pvrt::ensure!(
            checksum(ro) == text_sum,
            "the kernel's read-only text and rodata changed under the fuzz"
        );
        let total = DONE_CALLS[0].load(Ordering::SeqCst) + DONE_CALLS[1].load(Ordering::SeqCst);
        pvrt::println!(
            "pv-test fuzz: seed {seed:#x}: {total} calls done; vCPU 0: {} succeeded, {} \
             refused; text unchanged",
            stats0.ok,
            stats0.refused
        );
        Ok(())
    }

    /// The event upcall: return with events masked (nothing here waits for events).
    fn keep_masked(frame: &mut traps::ExceptionFrame) {
        frame.cs |= 1 << 32;
        frame.rflags &= !(1 << 9);
    }

    fn unmap(p: &ScratchPage) -> Result<(), &'static str> {
        // SAFETY: one of the kernel's scratch pages, which it no longer uses.
        let r = unsafe { pvrt::update_va_mapping(p.va, 0, UVMF_INVLPG) };
        pvrt::ensure!(r == 0, "unmapping a scratch page returned {r}");
        Ok(())
    }

    fn mmuext(cmd: MmuextCmd, arg1: u64) -> i64 {
        let op = [MmuextOp {
            cmd: cmd.raw(),
            _cpad0: 0,
            arg1,
            arg2: 0,
        }];
        // SAFETY: pins the kernel's own scratch tables, which nothing maps yet.
        unsafe { pvrt::mmuext_op(&op, None, DOMID_SELF) }
    }

    fn set_entry(ptr: u64, val: u64) -> Result<(), &'static str> {
        let req = [MmuUpdate { ptr, val }];
        // SAFETY: hooks the scratch tables into the window, which nothing else uses.
        let r = unsafe { pvrt::mmu_update(&req, None, DOMID_SELF) };
        pvrt::ensure!(r == 0, "hooking a window table returned {r}");
        Ok(())
    }

    /// The window: zeroed scratch pages pinned as L1, L2 and L3 and hooked into L4 slot
    /// 1, so that random page-table updates have real tables of the fuzzer's own.
    fn build_window(si: &StartInfo, tables: &region::Tables) -> Result<[u64; 3], &'static str> {
        let mut frames = [0u64; 3];
        for (f, cmd) in frames.iter_mut().zip([
            MmuextCmd::PinL3Table,
            MmuextCmd::PinL2Table,
            MmuextCmd::PinL1Table,
        ]) {
            let p = region::alloc_scratch(si).ok_or("no scratch page for the window")?;
            // SAFETY: a scratch page of the kernel, mapped writable, used by nothing else.
            unsafe { core::ptr::write_bytes(p.va as *mut u8, 0, PAGE_SIZE as usize) };
            unmap(&p)?;
            let r = mmuext(cmd, p.mfn);
            pvrt::ensure!(r == 0, "pinning a window table returned {r}");
            *f = p.mfn;
        }
        let [l3, l2, l1] = frames;
        set_entry(l2 * PAGE_SIZE, (l1 * PAGE_SIZE) | PTE_TABLE)?;
        set_entry(l3 * PAGE_SIZE, (l2 * PAGE_SIZE) | PTE_TABLE)?;
        set_entry(
            tables.l4_mfn * PAGE_SIZE + WINDOW_L4_SLOT * 8,
            (l3 * PAGE_SIZE) | PTE_TABLE,
        )?;
        Ok(frames)
    }

    fn own_frames(si: &StartInfo) -> Result<(), &'static str> {
        let n = si.nr_pages as usize;
        pvrt::ensure!(
            n <= MAX_OWN,
            "{n} pages: more than the fuzzer keeps a list of"
        );
        // SAFETY: vCPU 1 is not started yet: nothing else reads the list.
        let (list, len) = unsafe { &mut *OWN.0.get() };
        for (pfn, slot) in list.iter_mut().take(n).enumerate() {
            // SAFETY: the p2m list has nr_pages entries, mapped in the bootstrap region.
            *slot = unsafe { (si.mfn_list as *const u64).add(pfn).read_volatile() };
        }
        list[..n].sort_unstable();
        *len = n;
        Ok(())
    }

    /// The start-of-day mappings are all writable (as in Xen); the fuzzer's text and
    /// rodata become read-only, so that a hypervisor write there for a hypercall argument
    /// must fail, and the text checksum shows whether one did not.
    fn make_read_only(si: &StartInfo, (lo, hi): (u64, u64)) -> Result<(), &'static str> {
        let mut va = lo;
        while va < hi {
            let mfn = region::mfn_of(si, va);
            // SAFETY: the same frame stays mapped at the same address, only read-only; the
            // kernel never writes its text or rodata.
            let r = unsafe {
                pvrt::update_va_mapping(va, (mfn * PAGE_SIZE) | region::PTE_RO, UVMF_INVLPG)
            };
            pvrt::ensure!(r == 0, "remapping {va:#x} read-only returned {r}");
            va += PAGE_SIZE;
        }
        Ok(())
    }

    fn checksum((lo, hi): (u64, u64)) -> u64 {
        let mut sum = 0xcbf2_9ce4_8422_2325u64;
        let mut a = lo;
        while a < hi {
            // SAFETY: [lo, hi) is the kernel's text and rodata, mapped read-only.
            let w = unsafe { (a as *const u64).read_volatile() };
            sum = (sum ^ w).wrapping_mul(0x100_0000_01b3);
            a += 8;
        }
        sum
    }

    fn fill_random(rng: &mut Rng, va: u64, len: u64) {
        for i in 0..len / 8 {
            // SAFETY: callers pass the kernel's own pool or scratch pages, mapped writable.
            unsafe { (va as *mut u64).add(i as usize).write_volatile(rng.next()) };
        }
    }

    // --- vCPU 1. -------------------------------------------------------------------

    // vCPU 1's first instruction: align the stack and call `fuzz_vcpu1_main`.
    #[cfg(target_os = "none")]
    core::arch::global_asm!(
        r#"
        .pushsection .text.fuzz_vcpu1_entry, "ax", @progbits
        .global fuzz_vcpu1_entry
        .type fuzz_vcpu1_entry, @function
    fuzz_vcpu1_entry:
        and rsp, -16
        xor ebp, ebp
        call fuzz_vcpu1_main
        ud2
        .size fuzz_vcpu1_entry, . - fuzz_vcpu1_entry
        .popsection
        "#
    );

    fn vcpu1_entry_address() -> u64 {
        #[cfg(target_os = "none")]
        {
            extern "C" {
                fn fuzz_vcpu1_entry();
            }
            fuzz_vcpu1_entry as unsafe extern "C" fn() as usize as u64
        }
        #[cfg(not(target_os = "none"))]
        0
    }

    fn start_vcpu1(si: &StartInfo, l4_mfn: u64) -> Result<(), &'static str> {
        let mut top = 0;
        for i in 0..VCPU1_STACK_PAGES {
            let p = region::alloc_scratch(si).ok_or("no scratch page for vCPU 1's stack")?;
            pvrt::ensure!(
                i == 0 || p.va == top,
                "vCPU 1's stack pages are not contiguous"
            );
            top = p.va + PAGE_SIZE;
        }
        VCPU1_STACK_TOP.store(top, Ordering::SeqCst);
        let ctx = smp::kernel_context(&smp::Start {
            rip: vcpu1_entry_address(),
            rsp: top,
            args: [1, 0],
            l4_mfn,
            fs_base: 0,
            gs_base_kernel: 0,
        });
        // SAFETY: the entry is `fuzz_vcpu1_entry`, which runs `fuzz_vcpu1_main` on the
        // scratch stack reserved above for vCPU 1 alone; the L4 is the kernel's own and
        // the trap table and callbacks are the runtime's.
        let r = unsafe { smp::initialise(1, &ctx) };
        pvrt::ensure!(r == 0, "VCPUOP_initialise(1) returned {r}");
        let r = smp::up(1);
        pvrt::ensure!(r == 0, "VCPUOP_up(1) returned {r}");
        Ok(())
    }

    #[no_mangle]
    extern "C" fn fuzz_vcpu1_main() -> ! {
        let env = ENV.load(Ordering::SeqCst);
        // SAFETY: vCPU 0 stored a pointer to its `Env` before starting this vCPU, and it
        // keeps it alive (and unchanged) until this vCPU reports it is done.
        let env = unsafe { &*env };
        let _ = fuzz(env, 1);
        VCPU1_DONE.store(true, Ordering::SeqCst);
        loop {
            let _ = smp::down(1);
        }
    }

    // --- The fuzz loop. ------------------------------------------------------------

    /// Per-vCPU outcome counts.
    #[derive(Default)]
    struct Stats {
        ok: u64,
        refused: u64,
    }

    fn fuzz(env: &Env, vcpu: usize) -> Stats {
        let mut f = Fuzzer {
            env,
            rng: Rng::new(env.seed.wrapping_add(vcpu as u64).wrapping_mul(0x2545_f491)),
            pool: env.pools[vcpu],
            vcpu,
            bump: 0,
            tracing: false,
        };
        let mut stats = Stats::default();
        let n = env.calls[vcpu];
        let every = (n / 10).max(1);
        for i in 0..n {
            f.bump = 0;
            f.tracing = i >= env.trace;
            let (nr, a) = f.call(0);
            if f.tracing {
                pvrt::println!(
                    "pv-test fuzz: vCPU {vcpu} call {i}: hypercall {nr}({:#x}, {:#x}, {:#x}, \
                     {:#x}, {:#x})",
                    a[0],
                    a[1],
                    a[2],
                    a[3],
                    a[4]
                );
            }
            // SAFETY: the arguments are hostile on purpose; the generators keep to the
            // exclusions of the module documentation, so that nothing the hypervisor
            // legitimately does with them stops this kernel or overwrites its own code,
            // data or page tables.
            let ret = unsafe { pvrt::hypercall5(nr, a[0], a[1], a[2], a[3], a[4]) };
            if ret >= 0 {
                stats.ok += 1;
            } else {
                stats.refused += 1;
            }
            if matches!(nr, 7 | 35 | 36) && ret >= 0 {
                pvrt::fail!(
                    "vCPU {vcpu} call {i}: privileged hypercall {nr}({:#x}, {:#x}, {:#x}) \
                     succeeded ({ret}) in an unprivileged domain",
                    a[0],
                    a[1],
                    a[2]
                );
            }
            DONE_CALLS[vcpu].store(i + 1, Ordering::Relaxed);
            if (i + 1) % every == 0 {
                pvrt::println!("pv-test fuzz: vCPU {vcpu}: {}/{n} calls", i + 1);
            }
        }
        stats
    }

    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Rng {
            Rng(seed | 1)
        }

        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        /// True with probability `num`/`den`.
        fn chance(&mut self, num: u64, den: u64) -> bool {
            self.below(den) < num
        }

        fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
            xs[self.below(xs.len() as u64) as usize]
        }
    }

    // The pool writers: `va + off` is always in the calling vCPU's pool, mapped writable
    // and holding random bytes only (nothing the kernel relies on).
    fn put64(va: u64, off: u64, v: u64) {
        // SAFETY: see above.
        unsafe { ((va + off) as *mut u64).write_unaligned(v) }
    }

    fn put32(va: u64, off: u64, v: u32) {
        // SAFETY: see above.
        unsafe { ((va + off) as *mut u32).write_unaligned(v) }
    }

    fn put16(va: u64, off: u64, v: u16) {
        // SAFETY: see above.
        unsafe { ((va + off) as *mut u16).write_unaligned(v) }
    }

    struct Fuzzer<'a> {
        env: &'a Env,
        rng: Rng,
        /// This vCPU's pool and how much of it the current call has used.
        pool: u64,
        /// Which vCPU this is (0 or 1).
        vcpu: usize,
        bump: u64,
        /// Print the entries of multicalls too.
        tracing: bool,
    }

    const POOL_BYTES: u64 = POOL_PAGES as u64 * PAGE_SIZE;

    impl Fuzzer<'_> {
        fn r(&mut self) -> u64 {
            self.rng.next()
        }

        /// A fresh buffer of `len` random bytes in the pool (8-aligned).
        fn slot(&mut self, len: u64) -> u64 {
            let len = len.clamp(8, POOL_BYTES / 2).next_multiple_of(8);
            if self.bump + len > POOL_BYTES {
                self.bump = 0;
            }
            let va = self.pool + self.bump;
            self.bump += len;
            for i in 0..len / 8 {
                let v = self.r();
                put64(va, i * 8, v);
            }
            va
        }

        // --- Value classes. ---

        /// Addresses the hypervisor must never read or write for a guest.
        fn hostile(&mut self) -> u64 {
            let fixed = [
                HV_IMAGE_VA,
                HV_DIRECT_MAP,
                M2P,
                0,
                0x1000,
                0x0000_8000_0000_0000,
                0x8000_0000_0000_0000,
                0xffff_8000_0000_0000 - 8,
                u64::MAX - 7,
                0x7fff_ffff_f000,
            ];
            match self.rng.below(4) {
                0 => self.rng.pick(&fixed),
                1 => 0xffff_8000_0000_0000 + self.rng.below(16 << 39),
                2 => self.r(),
                _ => self.rng.pick(&fixed).wrapping_add(self.rng.below(1 << 16)),
            }
        }

        /// A pointer the hypervisor reads from: mostly a random buffer in the pool.
        fn rptr(&mut self, len: u64) -> u64 {
            match self.rng.below(10) {
                0..=5 => self.slot(len),
                6 => self.pool + self.rng.below(POOL_BYTES),
                7 => {
                    let (lo, hi) = self.env.ro;
                    lo + self.rng.below(hi - lo)
                }
                8 => (self.env.pt_base + self.rng.below(self.env.nr_pt_frames * PAGE_SIZE)) & !7,
                _ => self.hostile(),
            }
        }

        /// A pointer the hypervisor writes to: the pool, read-only pages (must fault) or
        /// hostile addresses.
        fn wptr(&mut self, len: u64) -> u64 {
            match self.rng.below(10) {
                0..=6 => self.slot(len),
                7 => {
                    let (lo, hi) = self.env.ro;
                    lo + self.rng.below(hi - lo)
                }
                8 => self.env.pt_base + self.rng.below(PAGE_SIZE),
                _ => self.hostile(),
            }
        }

        fn dom(&mut self) -> u64 {
            let e = self.env;
            u64::from(match self.rng.below(10) {
                0..=3 => DOMID_SELF,
                4 => e.me,
                5 | 6 => e.peer,
                7 => 0,
                8 => self.rng.pick(&[0x7ff1, 0x7ff2, 0x7ff4, 0x7fff, e.peer + 1]),
                _ => self.r() as u16,
            })
        }

        fn port(&mut self) -> u64 {
            match self.rng.below(8) {
                0..=4 => self.rng.below(12),
                5 => u64::from(self.env.peer_port),
                6 => self.rng.pick(&[1023, 1024, 4095, 4096, u32::MAX as u64]),
                _ => self.r() & 0xffff_ffff,
            }
        }

        fn gref(&mut self) -> u64 {
            match self.rng.below(6) {
                0..=2 => self.rng.below(16),
                3 => u64::from(self.rng.pick(&[
                    wire::PEER_GREF_DOM0,
                    wire::PEER_GREF_FUZZER,
                    wire::FUZZER_GREF,
                ])),
                4 => self.rng.pick(&[511, 512, 4095, 1 << 20, u32::MAX as u64]),
                _ => self.r() & 0xffff_ffff,
            }
        }

        fn count(&mut self) -> u64 {
            match self.rng.below(10) {
                0 => 0,
                1..=6 => 1 + self.rng.below(4),
                7 => self.rng.below(64),
                8 => self
                    .rng
                    .pick(&[255, 256, 1 << 16, 1 << 31, u32::MAX as u64]),
                _ => self.r(),
            }
        }

        /// Entries in a list the generator builds (bounded by the pool).
        fn entries(&mut self) -> u64 {
            match self.rng.below(8) {
                0 => 0,
                1..=5 => 1 + self.rng.below(4),
                _ => self.rng.below(32),
            }
        }

        /// A random own frame (any).
        fn own_mfn(&mut self) -> u64 {
            let pfn = self.rng.below(self.env.nr_pages);
            // SAFETY: the p2m list has nr_pages entries, mapped for the kernel's life.
            unsafe {
                (self.env.mfn_list as *const u64)
                    .add(pfn as usize)
                    .read_volatile()
            }
        }

        /// Any machine frame: own, the peer's, the hypervisor's, random.
        fn mfn(&mut self) -> u64 {
            match self.rng.below(12) {
                0..=2 => self.own_mfn(),
                3..=4 => self.target_mfn(),
                5 => self.rng.pick(&self.env.window_tables),
                6 => self.env.l4_mfn,
                7 => self.rng.pick(&self.env.peer_mfns),
                8 => self
                    .rng
                    .pick(&[HV_IMAGE_MFN, 0, 0xfee00, 0xfec00, BEYOND_RAM_MFN]),
                9 => self.rng.below(RAM_MFNS),
                10 => self.r() >> 12,
                _ => self.r(),
            }
        }

        /// A frame whose contents may be written: this vCPU's pool frames, the shared
        /// scratch frames, the peer's, foreign or hostile frames; never another own frame,
        /// and never the other vCPU's pool (whose argument structures are being built and
        /// read concurrently: a poll argument cleared there is a poll without timeout on
        /// no port, which waits for ever, as in Xen).
        fn target_mfn(&mut self) -> u64 {
            let other_pool = (1 - self.vcpu) * POOL_PAGES..(2 - self.vcpu) * POOL_PAGES;
            let m = match self.rng.below(8) {
                0..=3 => {
                    let i = self.rng.below(self.env.writable.len() as u64) as usize;
                    let i = if other_pool.contains(&i) {
                        i - other_pool.start + self.vcpu * POOL_PAGES
                    } else {
                        i
                    };
                    self.env.writable[i]
                }
                4 => self.rng.pick(&self.env.peer_mfns),
                5 => self.rng.below(RAM_MFNS),
                6 => self.rng.pick(&[HV_IMAGE_MFN, 0, 0xfee00, BEYOND_RAM_MFN]),
                _ => self.r() >> 12,
            };
            if is_own(m) && !self.env.writable.contains(&m)
                || self.env.writable[other_pool].contains(&m)
            {
                self.env.writable[self.vcpu * POOL_PAGES]
            } else {
                m
            }
        }

        /// A machine address of a page-table entry to update: the window's tables, or a
        /// target frame.
        fn pte_maddr(&mut self) -> u64 {
            let frame = if self.rng.chance(2, 3) {
                self.rng.pick(&self.env.window_tables)
            } else {
                self.target_mfn()
            };
            let off = if self.rng.chance(7, 8) {
                self.rng.below(512) * 8
            } else {
                self.rng.below(PAGE_SIZE)
            };
            (frame << 12).wrapping_add(off)
        }

        fn pte(&mut self) -> u64 {
            let flags = match self.rng.below(6) {
                0 => 0,
                1 | 2 => PTE_RW,
                3 => region::PTE_RO,
                4 => _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | self.r() & 0xfff,
                _ => self.r() & (0xfff | 0xfff0_0000_0000_0000),
            };
            let mfn = self.mfn();
            (mfn << 12 & 0x000f_ffff_ffff_f000) | flags
        }

        /// A virtual address whose mapping may be changed: the window, hostile, low.
        fn map_va(&mut self) -> u64 {
            let va = match self.rng.below(8) {
                0..=4 => WINDOW + self.rng.below(512) * PAGE_SIZE,
                5 => WINDOW + self.rng.below(1 << 30),
                6 => self.hostile(),
                _ => self.rng.below(1 << 32),
            };
            let (lo, hi) = self.env.region;
            if (lo..hi).contains(&va) {
                WINDOW
            } else {
                va
            }
        }

        fn va_any(&mut self) -> u64 {
            match self.rng.below(3) {
                0 => self.map_va(),
                1 => self.rptr(64),
                _ => self.r(),
            }
        }

        fn time(&mut self) -> u64 {
            match self.rng.below(4) {
                0 => 0,
                1 => pvrt::time::now() + self.rng.below(5_000_000),
                2 => self.rng.below(1 << 20),
                _ => self.r(),
            }
        }

        // --- Hypercalls. ---

        /// One hypercall: its number and arguments. `depth` > 0 inside a multicall.
        fn call(&mut self, depth: u32) -> (u64, [u64; 5]) {
            loop {
                let nr = if let Some(only) = self.env.only.filter(|_| depth == 0) {
                    only
                } else if self.rng.chance(3, 4) {
                    self.rng.pick(&IMPLEMENTED).raw()
                } else {
                    self.rng.below(64)
                };
                if let Some(a) = self.args(nr, depth) {
                    if self.tracing && depth > 0 {
                        pvrt::println!(
                            "pv-test fuzz:   multicall entry: hypercall {nr}({:#x}, {:#x}, \
                             {:#x}, {:#x}, {:#x})",
                            a[0],
                            a[1],
                            a[2],
                            a[3],
                            a[4]
                        );
                    }
                    return (nr, a);
                }
            }
        }

        /// Arguments for hypercall `nr`, or `None` for an excluded one.
        fn args(&mut self, nr: u64, depth: u32) -> Option<[u64; 5]> {
            let mut a = [self.r(), self.r(), self.r(), self.r(), self.r()];
            let Ok(h) = H::try_from(nr) else {
                // No such hypercall: random registers, sometimes a pointer.
                a[0] = self.rptr(256);
                return Some(a);
            };
            match h {
                H::SetTrapTable | H::SetCallbacks | H::Iret => return None,
                H::MmuUpdate => {
                    let n = self.entries();
                    let reqs = self.slot(n * 16);
                    for i in 0..n {
                        let cmd = if self.rng.chance(7, 8) {
                            self.rng.below(3)
                        } else {
                            self.rng.below(8)
                        };
                        let (ptr, val) = if cmd == 1 {
                            // MMU_MACHPHYS_UPDATE: a frame and its new pfn.
                            (self.mfn() << 12, self.rng.below(2 * self.env.nr_pages))
                        } else {
                            (self.pte_maddr(), self.pte())
                        };
                        put64(reqs, i * 16, (ptr & !7) | cmd);
                        put64(reqs, i * 16 + 8, val);
                    }
                    a = self.batch_args(reqs, n);
                }
                H::SetGdt => {
                    let n = self.entries();
                    let frames = self.slot(n * 8);
                    for i in 0..n {
                        let m = if self.rng.chance(1, 2) {
                            self.rng.pick(&self.env.desc)
                        } else {
                            self.mfn()
                        };
                        put64(frames, i * 8, m);
                    }
                    a[0] = if self.rng.chance(7, 8) {
                        frames
                    } else {
                        self.rptr(64)
                    };
                    a[1] = match self.rng.below(4) {
                        0 => n * 512,
                        1 => self.rng.below(n * 512 + 1),
                        2 => self.rng.below(65536),
                        _ => self.r(),
                    };
                }
                H::StackSwitch => {
                    a[0] = if self.rng.chance(1, 2) {
                        u64::from(FLAT_KERNEL_SS)
                    } else {
                        self.r() & 0xffff
                    };
                    a[1] = self.va_any();
                }
                H::FpuTaskswitch => a[0] = self.rng.below(3),
                H::SchedOpCompat => {
                    // Only yield and unknown commands: block and shutdown are excluded.
                    a[0] = if self.rng.chance(1, 2) {
                        0
                    } else {
                        3 + self.rng.below(8)
                    };
                }
                H::SetDebugreg => {
                    a[0] = self.rng.below(10);
                    a[1] = if self.rng.chance(1, 2) {
                        self.va_any()
                    } else {
                        self.r()
                    };
                }
                H::GetDebugreg => a[0] = self.rng.below(10),
                H::UpdateDescriptor => {
                    let frame = if self.rng.chance(1, 2) {
                        self.rng.pick(&self.env.desc)
                    } else {
                        self.target_mfn()
                    };
                    a[0] = (frame << 12) + self.rng.below(512) * 8;
                    if self.rng.chance(1, 8) {
                        a[0] += self.rng.below(8);
                    }
                    a[1] = if self.rng.chance(1, 2) {
                        // A flat descriptor with random type, DPL and flags.
                        0x00cf_0000_0000_ffff | (self.r() & 0x00f0_ff00_0000_0000)
                    } else {
                        self.r()
                    };
                }
                H::MemoryOp => a = self.memory_op(),
                H::Multicall => {
                    let n = if depth == 0 { self.entries() } else { 2 };
                    // The entries first, the list last: no later buffer can overwrite it.
                    let mut calls = [(0u64, [0u64; 5]); 32];
                    for c in calls.iter_mut().take(n as usize) {
                        *c = self.call(depth + 1);
                    }
                    let list = self.slot(n * 64);
                    for (i, (nr, args)) in calls.iter().take(n as usize).enumerate() {
                        let i = i as u64;
                        put64(list, i * 64, *nr);
                        for (j, &v) in args.iter().enumerate() {
                            put64(list, i * 64 + 16 + j as u64 * 8, v);
                        }
                    }
                    // Only the entries made here: random memory read as entries would
                    // carry excluded calls (set_trap_table, iret, ...) past the generator.
                    if self.rng.chance(7, 8) {
                        a[0] = list;
                        a[1] = n;
                    } else {
                        a[0] = self.hostile();
                        a[1] = self.count();
                    }
                }
                H::UpdateVaMapping | H::UpdateVaMappingOtherdomain => {
                    a[0] = self.map_va();
                    a[1] = self.pte();
                    a[2] = match self.rng.below(6) {
                        0..=2 => self.rng.below(8),
                        3 => self.rng.below(3) | self.wptr(8),
                        _ => self.r(),
                    };
                    a[3] = self.dom();
                }
                H::SetTimerOp => a[0] = self.time(),
                H::EventChannelOpCompat => {
                    let op = self.slot(32);
                    let cmd = self.rng.below(15);
                    put32(op, 0, cmd as u32);
                    self.evtchn_fields(cmd, op + 8);
                    a[0] = if self.rng.chance(7, 8) {
                        op
                    } else {
                        self.rptr(32)
                    };
                }
                H::XenVersion => {
                    a[0] = if self.rng.chance(7, 8) {
                        self.rng.below(16)
                    } else {
                        self.r()
                    };
                    a[1] = if self.rng.chance(1, 8) {
                        0
                    } else {
                        self.wptr(1024)
                    };
                }
                H::ConsoleIo => {
                    a[0] = self.rng.below(3);
                    if a[0] == 0 {
                        // A write: random bytes from the pool (or hostile), never its text.
                        a[1] = self.rng.below(64);
                        a[2] = if self.rng.chance(1, 2) {
                            self.slot(64)
                        } else {
                            self.hostile()
                        };
                        if self.rng.chance(3, 4) {
                            // Mostly a zero-length write: the log stays readable.
                            a[1] = 0;
                        }
                    } else {
                        a[1] = self.count();
                        a[2] = self.wptr(256);
                    }
                }
                H::PhysdevOpCompat => {
                    let op = self.slot(32);
                    put32(op, 0, self.rng.below(32) as u32);
                    a[0] = op;
                }
                H::GrantTableOp => a = self.grant_table_op(),
                H::VmAssist => {
                    a[0] = self.rng.below(3);
                    a[1] = self.rng.below(40);
                }
                H::VcpuOp => a = self.vcpu_op()?,
                H::SetSegmentBase => {
                    a[0] = self.rng.below(6);
                    a[1] = if self.rng.chance(1, 2) {
                        self.r() & 0xffff
                    } else {
                        self.va_any()
                    };
                }
                H::MmuextOp => a = self.mmuext_op(),
                H::SchedOp => a = self.sched_op()?,
                H::CallbackOp => {
                    let cb = self.slot(16);
                    let cmd = self.rng.below(3);
                    // Register or unregister only types other than the event, failsafe
                    // and syscall callbacks.
                    let ty = 3 + self.rng.below(8);
                    put16(cb, 0, ty as u16);
                    put64(cb, 8, self.va_any());
                    a[0] = cmd;
                    // Never random memory: its type could name the event callback.
                    a[1] = if self.rng.chance(7, 8) {
                        cb
                    } else {
                        self.hostile()
                    };
                }
                H::EventChannelOp => {
                    let cmd = self.rng.below(15);
                    let op = self.slot(32);
                    self.evtchn_fields(cmd, op);
                    a[0] = cmd;
                    a[1] = if self.rng.chance(7, 8) {
                        op
                    } else {
                        self.rptr(32)
                    };
                }
                H::PhysdevOp => {
                    a[0] = self.rng.below(32);
                    let op = self.slot(64);
                    if a[0] == 6 {
                        // PHYSDEVOP_set_iopl
                        put32(op, 0, self.rng.below(5) as u32);
                    }
                    a[1] = if self.rng.chance(7, 8) {
                        op
                    } else {
                        self.rptr(64)
                    };
                }
                H::Domctl | H::Sysctl => {
                    let req = self.slot(256);
                    // The interface version (right half the time), then the command.
                    if self.rng.chance(1, 2) {
                        put32(req, 0, ferrovisor_abi::domctl::FV_CONTROL_INTERFACE_VERSION);
                    }
                    let cmds = if h == H::Domctl { 100 } else { 30 };
                    put32(req, 4, self.rng.below(cmds) as u32);
                    put16(req, 8, self.dom() as u16);
                    a[0] = if self.rng.chance(7, 8) {
                        req
                    } else {
                        self.rptr(256)
                    };
                }
                _ => {
                    // Everything else: a command and a random buffer.
                    a[0] = self.rng.below(32);
                    a[1] = self.rptr(256);
                }
            }
            Some(a)
        }

        fn memory_op(&mut self) -> [u64; 5] {
            let cmd = if self.rng.chance(7, 8) {
                self.rng.below(26)
            } else {
                self.r() & 0xffff_ffff
            };
            // The extent-start continuation lives in the command's high bits.
            let cmd = if self.rng.chance(1, 16) {
                cmd | self.rng.below(64) << 6
            } else {
                cmd
            };
            let arg = match cmd & 0x3f {
                0 | 1 | 6 => self.reservation(cmd & 0x3f),
                2 | 3 | 4 | 14 => {
                    let d = self.slot(8);
                    put16(d, 0, self.dom() as u16);
                    d
                }
                5 | 25 => {
                    let m = self.slot(24);
                    put32(m, 0, self.count() as u32);
                    put64(m, 8, self.wptr(256));
                    m
                }
                7 => {
                    let m = self.slot(24);
                    put16(m, 0, self.dom() as u16);
                    put16(m, 2, self.count() as u16);
                    put32(m, 4, self.rng.below(8) as u32);
                    put64(m, 8, self.mfn());
                    put64(m, 16, self.rng.below(2 * self.env.nr_pages));
                    m
                }
                9 | 10 | 13 => {
                    let m = self.slot(16);
                    put32(m, 0, self.count() as u32);
                    put64(m, 8, self.wptr(512));
                    m
                }
                11 => {
                    let m = self.slot(72);
                    for half in [0, 32] {
                        let n = self.entries();
                        let list = self.slot(n * 8);
                        for i in 0..n {
                            put64(list, i * 8, self.mfn());
                        }
                        put64(m, half, list);
                        put64(m, half + 8, n);
                        put32(m, half + 16, self.rng.below(3) as u32);
                        put16(m, half + 24, self.dom() as u16);
                    }
                    put64(m, 64, self.rng.below(4));
                    m
                }
                12 => self.wptr(24),
                _ => self.rptr(64),
            };
            [cmd, arg, 0, 0, 0]
        }

        fn reservation(&mut self, cmd: u64) -> u64 {
            let res = self.slot(32);
            let n = self.entries();
            let list = self.slot(n * 8);
            for i in 0..n {
                let v = if cmd == 1 {
                    // decrease_reservation: frames to give back.
                    self.mfn()
                } else {
                    self.rng.below(4 * self.env.nr_pages)
                };
                put64(list, i * 8, v);
            }
            put64(
                res,
                0,
                if self.rng.chance(7, 8) {
                    list
                } else {
                    self.wptr(64)
                },
            );
            put64(
                res,
                8,
                if self.rng.chance(7, 8) {
                    n
                } else {
                    self.count()
                },
            );
            put32(
                res,
                16,
                if self.rng.chance(3, 4) {
                    0
                } else {
                    self.rng.below(20) as u32
                },
            );
            if self.rng.chance(3, 4) {
                put32(res, 20, 0);
            }
            put16(res, 24, self.dom() as u16);
            res
        }

        fn evtchn_fields(&mut self, cmd: u64, op: u64) {
            match cmd {
                // bind_interdomain: remote dom, remote port, local port (out).
                0 => {
                    put16(op, 0, self.dom() as u16);
                    put32(op, 4, self.port() as u32);
                }
                // bind_virq: virq, vcpu; bind_pirq: pirq, flags.
                1 | 2 => {
                    put32(op, 0, self.rng.below(24) as u32);
                    put32(op, 4, self.rng.below(3) as u32);
                }
                // close, send, unmask: a port.
                3 | 4 | 9 => put32(op, 0, self.port() as u32),
                // status: dom, port.
                5 => {
                    put16(op, 0, self.dom() as u16);
                    put32(op, 4, self.port() as u32);
                }
                // alloc_unbound: dom, remote dom.
                6 => {
                    put16(op, 0, self.dom() as u16);
                    put16(op, 2, self.dom() as u16);
                }
                // bind_ipi: vcpu.
                7 => put32(op, 0, self.rng.below(3) as u32),
                // bind_vcpu: port, vcpu.
                8 => {
                    put32(op, 0, self.port() as u32);
                    put32(op, 4, self.rng.below(3) as u32);
                }
                // reset: dom.
                10 => put16(op, 0, self.dom() as u16),
                // init_control: control gfn, offset, vcpu; expand_array: gfn.
                11 | 12 => {
                    put64(op, 0, self.mfn());
                    put32(op, 8, self.rng.below(4096) as u32);
                    put32(op, 12, self.rng.below(3) as u32);
                }
                _ => {}
            }
        }

        fn grant_table_op(&mut self) -> [u64; 5] {
            let cmd = if self.rng.chance(7, 8) {
                self.rng.below(13)
            } else {
                self.r() & 0xffff_ffff
            };
            let n = self.entries();
            let (size, list) = match cmd {
                0 => (32, self.slot(n * 32)),
                1 | 7 => (24, self.slot(n * 24)),
                5 => (40, self.slot(n * 40)),
                4 | 11 => (24, self.slot(n * 24)),
                _ => (0, self.slot(64)),
            };
            for i in 0..n.max(1) {
                let e = list + i * size;
                match cmd {
                    0 => {
                        // map_grant_ref: host_addr, flags, ref, dom.
                        let flags = self.r() as u32 & 0x1f;
                        let host = if flags & 0x10 != 0 {
                            // GNTMAP_contains_pte: a PTE's machine address.
                            self.pte_maddr()
                        } else {
                            self.map_va()
                        };
                        put64(e, 0, host);
                        put32(
                            e,
                            8,
                            if self.rng.chance(3, 4) {
                                flags | 1
                            } else {
                                flags
                            },
                        );
                        put32(e, 12, self.gref() as u32);
                        put16(e, 16, self.dom() as u16);
                    }
                    1 | 7 => {
                        // unmap (and replace): host_addr, dev_bus_addr / new_addr, handle.
                        put64(e, 0, self.map_va());
                        put64(
                            e,
                            8,
                            if cmd == 7 {
                                self.map_va()
                            } else {
                                self.r() & 0xfff
                            },
                        );
                        put32(e, 16, self.rng.below(8) as u32);
                    }
                    2 => {
                        // setup_table: dom, nr_frames, frame_list.
                        put16(list, 0, self.dom() as u16);
                        put32(list, 4, self.count() as u32);
                        put64(list, 16, self.wptr(64));
                    }
                    3 | 6 | 10 => put16(list, 0, self.dom() as u16),
                    4 => {
                        // transfer: a frame, to a domain, a reference.
                        put64(e, 0, self.mfn());
                        put16(e, 8, self.dom() as u16);
                        put32(e, 12, self.gref() as u32);
                    }
                    5 => {
                        // copy: source and destination (a gref or a frame), len, flags.
                        let flags = self.rng.below(4) as u16;
                        for (half, is_gref) in [(0u64, flags & 1 != 0), (16, flags & 2 != 0)] {
                            let v = if is_gref {
                                self.gref()
                            } else if half == 16 {
                                // A destination frame: never the kernel's own.
                                self.target_mfn()
                            } else {
                                self.mfn()
                            };
                            put64(e, half, v);
                            put16(e, half + 8, self.dom() as u16);
                            put16(e, half + 10, self.rng.below(4200) as u16);
                        }
                        put16(e, 32, self.rng.below(4200) as u16);
                        put16(e, 34, flags);
                    }
                    8 => put32(list, 0, self.rng.below(4) as u32),
                    9 => {
                        put16(list, 0, self.dom() as u16);
                        put32(list, 4, self.count() as u32);
                        put64(list, 16, self.wptr(64));
                    }
                    11 => {
                        put32(e, 0, self.gref() as u32);
                        put32(e, 4, self.gref() as u32);
                    }
                    _ => {}
                }
            }
            let arg = if self.rng.chance(7, 8) {
                list
            } else {
                self.rptr(64)
            };
            let count = if self.rng.chance(7, 8) {
                n.max(1)
            } else {
                self.count()
            };
            [cmd, arg, count, 0, 0]
        }

        fn vcpu_op(&mut self) -> Option<[u64; 5]> {
            let cmd = if self.rng.chance(7, 8) {
                self.rng.below(14)
            } else {
                self.r() & 0xffff_ffff
            };
            if matches!(cmd, 2 | 11) {
                return None;
            }
            let vcpu = match self.rng.below(8) {
                0..=2 => 0,
                3..=5 => 1,
                6 => 2 + self.rng.below(8),
                _ => self.r() & 0xffff_ffff,
            };
            let arg = match cmd {
                0 => self.rptr(5168),
                4 | 12 => self.wptr(48),
                5 | 13 => {
                    let m = self.slot(8);
                    put64(m, 0, self.wptr(48));
                    m
                }
                6 => {
                    let m = self.slot(8);
                    put64(m, 0, self.time());
                    m
                }
                8 => {
                    let m = self.slot(16);
                    put64(m, 0, self.time());
                    put32(m, 8, self.rng.below(2) as u32);
                    m
                }
                10 => {
                    let m = self.slot(16);
                    put64(m, 0, self.target_mfn());
                    put32(m, 8, self.rng.below(4200) as u32);
                    m
                }
                _ => self.rptr(64),
            };
            Some([cmd, vcpu, arg, 0, 0])
        }

        fn mmuext_op(&mut self) -> [u64; 5] {
            let n = self.entries();
            let ops = self.slot(n * 24);
            for i in 0..n {
                let cmd = if self.rng.chance(7, 8) {
                    self.rng.below(21)
                } else {
                    self.r() & 0xffff_ffff
                };
                let (arg1, arg2) = match cmd {
                    // Pins, unpin, superpage marks: any frame.
                    0..=4 | 19 | 20 => (self.mfn(), self.r()),
                    // new_baseptr: the current L4 or a frame not its own (frames it
                    // populated later are its own too, and a zeroed one pins as an L4).
                    5 => {
                        let m = if self.rng.chance(1, 2) {
                            self.env.l4_mfn
                        } else {
                            self.rng.pick(&self.env.peer_mfns)
                        };
                        (m, self.r())
                    }
                    15 => (self.mfn(), self.r()),
                    // invlpg (local, all), the TLB flush and invlpg of a vCPU mask.
                    7 | 11 => (self.va_any(), self.r()),
                    8 => (self.r(), self.rptr(8)),
                    9 => (self.va_any(), self.rptr(8)),
                    13 => (
                        if self.rng.chance(1, 2) {
                            self.map_va()
                        } else {
                            self.rptr(64)
                        },
                        self.count(),
                    ),
                    16 => (self.target_mfn(), self.r()),
                    17 => (self.target_mfn(), self.mfn()),
                    _ => (self.r(), self.rptr(8)),
                };
                if self.tracing {
                    pvrt::println!("pv-test fuzz:     mmuext {cmd} {arg1:#x} {arg2:#x}");
                }
                put32(ops, i * 24, cmd as u32);
                put64(ops, i * 24 + 8, arg1);
                put64(ops, i * 24 + 16, arg2);
            }
            self.batch_args(ops, n)
        }

        /// `mmu_update`/`mmuext_op`'s arguments for the `n` requests at `list`: mostly
        /// those, sometimes another list or count; a done-count pointer half the time; a
        /// random page owner.
        fn batch_args(&mut self, list: u64, n: u64) -> [u64; 5] {
            [
                if self.rng.chance(7, 8) {
                    list
                } else {
                    self.rptr(64)
                },
                if self.rng.chance(7, 8) {
                    n
                } else {
                    self.count()
                },
                if self.rng.chance(1, 2) {
                    0
                } else {
                    self.wptr(4)
                },
                self.dom(),
                0,
            ]
        }

        fn sched_op(&mut self) -> Option<[u64; 5]> {
            let cmd = if self.rng.chance(7, 8) {
                self.rng.below(8)
            } else {
                self.r() & 0xffff_ffff
            };
            let arg = match cmd {
                // block, shutdown, watchdog: excluded.
                1 | 2 | 6 => return None,
                0 => 0,
                3 => {
                    // poll: ports, always with a timeout in the next few milliseconds.
                    let n = self.entries();
                    let ports = self.slot(n * 4);
                    for i in 0..n {
                        put32(ports, i * 4, self.port() as u32);
                    }
                    let p = self.slot(24);
                    put64(
                        p,
                        0,
                        if self.rng.chance(7, 8) {
                            ports
                        } else {
                            self.rptr(16)
                        },
                    );
                    put32(
                        p,
                        8,
                        if self.rng.chance(7, 8) {
                            n as u32
                        } else {
                            self.count() as u32
                        },
                    );
                    put64(p, 16, pvrt::time::now().max(1) + self.rng.below(2_000_000));
                    p
                }
                4 => {
                    let p = self.slot(8);
                    put16(p, 0, self.dom() as u16);
                    put32(p, 4, self.rng.below(6) as u32);
                    p
                }
                _ => self.rptr(16),
            };
            Some([cmd, arg, 0, 0, 0])
        }
    }
}
