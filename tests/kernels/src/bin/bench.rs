//! `bench`: the benchmark kernel `cargo xtask bench` boots as dom0 (never part of
//! `cargo xtask test`). It times, with the TSC, what a PV kernel pays the hypervisor for:
//!
//! * `null_hypercall`: `xen_version(XENVER_version, NULL)`, the cheapest real hypercall,
//!   `syscall` to return;
//! * `page_fault_bounce`: a read of an unmapped address, bounced through the trap table to
//!   the #PF handler, which skips the 3-byte load and returns with the `iret` hypercall:
//!   from the faulting instruction to the next one;
//! * `mmu_update_batch64`: one `mmu_update` of 64 L1-entry updates, alternately unmapping
//!   and remapping one scratch page of the bootstrap region (so every pair drops and takes
//!   the page's writable type), and `mmu_update_per_entry`, that median over 64;
//! * `context_switch`: only with a second vCPU (dom0 booted with `dom0_max_vcpus=2`, both
//!   vCPUs on one physical CPU). The kernel starts vCPU 1 as the `smp` kernel does
//!   (`VCPUOP_initialise` with [`pvrt::smp::kernel_context`], then `VCPUOP_up`), and both
//!   vCPUs yield in turn with `SCHEDOP_yield`. Before each yield a vCPU stores its TSC and
//!   its id in one shared word; on return from its own yield a vCPU that finds the *other*
//!   vCPU's stamp there has just been switched to, and the sample is its TSC minus that
//!   stamp: from one vCPU's yield to the other running (the hypercall, the scheduler, the
//!   switch of every register and the return). A yield that comes back to the same vCPU is
//!   no sample. Without a vCPU 1 that can be started it says `n/a` and why, never a number;
//! * `timer_overhead`: two back-to-back TSC reads, which every sample above includes (it is
//!   not subtracted).
//!
//! Each figure is the median of many individually timed samples (the batch: of many
//! batches), converted to nanoseconds with the TSC scale of `vcpu_time_info`
//! (`tsc_to_system_mul`, `tsc_shift`; `xen.h`). The lines are machine-readable:
//! `bench: <name> median <ns> ns (<n> samples)` or `bench: <name> n/a (<reason>)`. The
//! kernel's first action is to print `bench: first output`: xtask times QEMU's start to that
//! line (the kernel cannot know the host's clock).
#![cfg_attr(target_os = "none", no_std, no_main)]

use core::{
    cell::UnsafeCell,
    sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
};

use ferrovisor_abi::xen::{
    version::XenVersionOp,
    xen::{MmuUpdate, MmuUpdateCmd, StartInfo, DOMID_SELF},
};
use pvrt::{
    layout,
    region::{self, ScratchPage},
    smp::{self, Start},
    time::{self, NS_PER_MS},
    traps::{self, vector, Trap},
};

pvrt::test_kernel!(name: "bench", main: bench_main);

/// Samples per figure (batches for `mmu_update`), after [`WARMUP`] untimed rounds.
const SAMPLES: usize = 10_000;
const MMU_BATCHES: usize = 1_000;
const WARMUP: usize = 100;
/// L1-entry updates in one `mmu_update`.
const BATCH: usize = 64;
/// An address no bootstrap mapping covers (PML4 slot 0), for the page faults.
const UNMAPPED: u64 = 0x0000_1234_5000;
/// The #PF handler skips the load the fault probe makes: `mov rax, [rdi]` (48 8b 07).
const FAULTING_LOAD_LEN: u64 = 3;

fn bench_main(si: &StartInfo) -> Result<(), &'static str> {
    pvrt::println!("bench: first output");
    if let Err(ret) = pvrt::shared_info::map(si) {
        pvrt::fail!("update_va_mapping of shared_info returned {ret}");
    }
    traps::set_handler(skip_faulting_load);
    if let Err(e) = traps::install() {
        pvrt::fail!("installing the trap table: {e}");
    }
    let scale = TscScale::read()?;
    pvrt::println!("bench: tsc_khz {}", scale.khz());
    let samples = sample_buffer();

    let overhead = median(time_each(&mut samples[..], || {}));
    report(&scale, "timer_overhead", overhead, SAMPLES, 1);

    let ret = pvrt::xen_version(XenVersionOp::Version);
    pvrt::ensure!(ret > 0, "xen_version(XENVER_version) returned {ret}");
    let null = median(time_each(&mut samples[..], || {
        let _ = pvrt::xen_version(XenVersionOp::Version);
    }));
    report(&scale, "null_hypercall", null, SAMPLES, 1);

    let before = FAULTS.load(Ordering::SeqCst);
    let faults = median(time_faults(&mut samples[..]));
    let handled = FAULTS.load(Ordering::SeqCst) - before;
    pvrt::ensure!(
        handled == (SAMPLES + WARMUP) as u64,
        "{handled} page faults handled, expected {}",
        SAMPLES + WARMUP
    );
    report(&scale, "page_fault_bounce", faults, SAMPLES, 1);

    let batch = median(time_mmu_batches(si, &mut samples[..MMU_BATCHES])?);
    report(&scale, "mmu_update_batch64", batch, MMU_BATCHES, 1);
    report(
        &scale,
        "mmu_update_per_entry",
        batch,
        MMU_BATCHES,
        BATCH as u64,
    );

    context_switch(si, &scale, &mut samples[..]);
    domains::run(si, &scale, &mut samples[..DOMAIN_SAMPLES]);
    Ok(())
}

/// Samples per inter-domain figure (each costs domain switches under TCG).
const DOMAIN_SAMPLES: usize = 500;

/// The inter-domain figures, with the `peer` kernel (this kernel's initrd module) as the
/// other domain, built through Ferrovisor's own control interface:
///
/// * `domain_create_64m`: from `CreateDomain` of a 64 MiB domain, through populating its
///   memory, `BuildPv` and `UnpauseDomain`, to the peer's first instruction (its TSC at
///   entry, which it reports through xenstore): one sample;
/// * `evtchn_roundtrip`: dom0 sends on an interdomain port and polls its end; the peer,
///   polling its own, wakes and sends back: two sends, two wake-ups, two domain switches;
/// * `grant_map_unmap`: mapping the peer's grant read-only and unmapping it again;
/// * `grant_copy_4k`: `GNTTABOP_copy` of a whole page from dom0 into the peer's grant;
/// * `xenstore_read`, `xenstore_write`: one request and its reply on dom0's store ring.
///
/// On Xen, or without the module, each says `n/a` and why.
mod domains {
    use ferrovisor_abi::{
        domctl::DomctlCmd,
        xen::{xen::StartInfo, DomId},
    };
    use pvrt::{
        control, events, region,
        xenstore::{DomainPath, Store},
    };

    use super::{median, rdtsc, report, time_each, TscScale};

    const FIGURES: [&str; 6] = [
        "domain_create_64m",
        "evtchn_roundtrip",
        "grant_map_unmap",
        "grant_copy_4k",
        "xenstore_read",
        "xenstore_write",
    ];
    /// The peer's size: 64 MiB.
    const PEER_PAGES: u64 = 16 * 1024;
    /// The reference the peer grants.
    const GREF: u32 = 8;

    pub fn run(si: &StartInfo, scale: &TscScale, samples: &mut [u64]) {
        let why = if !pvrt::on_ferrovisor() {
            Some("Ferrovisor's own control interface")
        } else if si.mod_len == 0 {
            Some("no peer kernel module")
        } else {
            None
        };
        if let Some(why) = why {
            for f in FIGURES {
                pvrt::println!("bench: {f} n/a ({why})");
            }
            return;
        }
        if let Err(e) = measure(si, scale, samples) {
            for f in FIGURES {
                pvrt::println!("bench: {f} n/a ({e})");
            }
        }
    }

    fn measure(si: &StartInfo, scale: &TscScale, samples: &mut [u64]) -> Result<(), &'static str> {
        let mut store = Store::open(si).ok_or("dom0 has no xenstore ring")?;
        let mut path = DomainPath::new();
        let t0 = rdtsc();
        let peer = control::create("peer", PEER_PAGES + 64).map_err(|_| "CreateDomain failed")?;
        control::populate(peer, PEER_PAGES, &mut [])?;
        control::build_from_module(si, peer, b"pv-test=peer")?;
        let port = control::alloc_unbound(peer)?;
        let mut num = [0u8; 20];
        store
            .write(
                path.of(peer, "data/dom0-port"),
                pvrt::decimal(port.into(), &mut num).as_bytes(),
            )
            .map_err(|_| "cannot write the peer's data/dom0-port")?;
        control::expect0(DomctlCmd::UnpauseDomain, peer, "UnpauseDomain failed")?;
        wait_ready(&mut store, peer)?;
        let mut raw = [0u8; 20];
        let n = store
            .read(path.of(peer, "data/entry-tsc"), &mut raw)
            .map_err(|_| "the peer did not report its entry TSC")?;
        let entry = pvrt::parse_decimal(&raw[..n]).ok_or("a bad entry TSC")?;
        report(scale, "domain_create_64m", entry.wrapping_sub(t0), 1, 1);

        events::clear_pending(port);
        let rtt = median(time_each(samples, || {
            events::send(port);
            while !events::is_pending(port) {
                pvrt::sched_poll(port, 0);
            }
            events::clear_pending(port);
        }));
        report(scale, "evtchn_roundtrip", rtt, samples.len(), 1);

        let at = region::alloc_scratch(si).ok_or("no scratch page")?;
        // SAFETY: the scratch page is unused; the grant goes where it was.
        unsafe { pvrt::update_va_mapping(at.va, 0, 0) };
        let mut failed = false;
        let map_unmap = median(time_each(samples, || {
            let (r, map) = pvrt::grant::map(at.va, GREF, peer, true);
            let (u, status) = pvrt::grant::unmap(at.va, map.handle);
            failed |= r != 0 || map.status != 0 || u != 0 || status != 0;
        }));
        pvrt::ensure!(!failed, "a grant map or unmap failed");
        report(scale, "grant_map_unmap", map_unmap, samples.len(), 1);

        let src = region::alloc_scratch(si).ok_or("no scratch page")?;
        let copy = median(time_each(samples, || {
            let (r, status) = pvrt::grant::copy_to(src.mfn, GREF, peer, 0, 4096);
            failed |= r != 0 || status != 0;
        }));
        pvrt::ensure!(!failed, "a grant copy failed");
        report(scale, "grant_copy_4k", copy, samples.len(), 1);

        let mut buf = [0u8; 16];
        let read = median(time_each(samples, || {
            failed |= store.read(path.of(peer, "data/ready"), &mut buf).is_err();
        }));
        pvrt::ensure!(!failed, "a xenstore read failed");
        report(scale, "xenstore_read", read, samples.len(), 1);
        let write = median(time_each(samples, || {
            failed |= store.write(path.of(peer, "data/x"), b"1").is_err();
        }));
        pvrt::ensure!(!failed, "a xenstore write failed");
        report(scale, "xenstore_write", write, samples.len(), 1);

        control::expect0(DomctlCmd::DestroyDomain, peer, "DestroyDomain failed")
    }

    fn wait_ready(store: &mut Store, peer: DomId) -> Result<(), &'static str> {
        let mut path = DomainPath::new();
        for _ in 0..100_000 {
            if store
                .read(path.of(peer, "data/ready"), &mut [0u8; 4])
                .is_ok()
            {
                return Ok(());
            }
            pvrt::sched_yield();
        }
        Err("the peer never got ready")
    }
}

/// The TSC-to-nanoseconds scale of vCPU 0's `vcpu_time_info`.
struct TscScale {
    mul: u32,
    shift: i8,
}

impl TscScale {
    /// Reads the scale under the version protocol (`xen.h`: retry while `version` is odd
    /// or changes across the read).
    fn read() -> Result<Self, &'static str> {
        let Some(si) = pvrt::shared_info::get() else {
            return Err("shared_info is not mapped");
        };
        loop {
            // SAFETY: `shared_info::map` mapped the page at `si`, which stays mapped; the
            // hypervisor updates the record asynchronously, hence the volatile reads.
            let (v1, mul, shift, v2) = unsafe {
                let time = &raw const (*si).vcpu_info[0].time;
                let v1 = core::ptr::read_volatile(&raw const (*time).version);
                core::sync::atomic::fence(Ordering::Acquire);
                let mul = core::ptr::read_volatile(&raw const (*time).tsc_to_system_mul);
                let shift = core::ptr::read_volatile(&raw const (*time).tsc_shift);
                core::sync::atomic::fence(Ordering::Acquire);
                let v2 = core::ptr::read_volatile(&raw const (*time).version);
                (v1, mul, shift, v2)
            };
            if v1 % 2 == 0 && v1 == v2 {
                if mul == 0 {
                    return Err("vcpu_time_info.tsc_to_system_mul is 0: no TSC scale");
                }
                return Ok(TscScale { mul, shift });
            }
        }
    }

    /// `ticks * 10` in nanoseconds (tenths of a nanosecond for `ticks`):
    /// `((ticks << shift) * mul) >> 32`, in 128 bits so that nothing overflows.
    fn tenths_of_ns(&self, ticks: u64) -> u128 {
        let t = u128::from(ticks) * 10;
        let shifted = if self.shift >= 0 {
            t << self.shift
        } else {
            t >> self.shift.unsigned_abs()
        };
        (shifted * u128::from(self.mul)) >> 32
    }

    /// The TSC frequency in kHz: `((10^9 << 32) / mul) >> shift` (`xen.h`), in kHz.
    fn khz(&self) -> u64 {
        let khz = (1_000_000u64 << 32) / u64::from(self.mul);
        if self.shift >= 0 {
            khz >> self.shift
        } else {
            khz << self.shift.unsigned_abs()
        }
    }
}

/// Prints `bench: <name> median <ns> ns (<n> samples)` for a median of `ticks`, divided by
/// `per` (the batch size for a per-entry figure).
fn report(scale: &TscScale, name: &str, ticks: u64, samples: usize, per: u64) {
    let tenths = scale.tenths_of_ns(ticks) / u128::from(per);
    pvrt::println!(
        "bench: {name} median {}.{} ns ({samples} samples)",
        tenths / 10,
        tenths % 10
    );
}

/// The TSC, after the earlier instructions (`lfence; rdtsc`, Linux's `rdtsc_ordered`).
#[inline(always)]
fn rdtsc() -> u64 {
    #[cfg(target_os = "none")]
    {
        let (lo, hi): (u32, u32);
        // SAFETY: `lfence` and `rdtsc` only read the TSC into eax:edx (a PV guest may: the
        // hypervisor leaves CR4.TSD clear, as Xen does).
        unsafe {
            core::arch::asm!(
                "lfence",
                "rdtsc",
                out("eax") lo,
                out("edx") hi,
                options(nomem, nostack, preserves_flags),
            );
        }
        (u64::from(hi) << 32) | u64::from(lo)
    }
    #[cfg(not(target_os = "none"))]
    0
}

/// Times `f` once per slot of `samples` (after [`WARMUP`] untimed calls), in TSC ticks.
fn time_each(samples: &mut [u64], mut f: impl FnMut()) -> &mut [u64] {
    for _ in 0..WARMUP {
        f();
    }
    for s in samples.iter_mut() {
        let t0 = rdtsc();
        f();
        *s = rdtsc().wrapping_sub(t0);
    }
    samples
}

/// Page faults the handler skipped.
static FAULTS: AtomicU64 = AtomicU64::new(0);

/// The kernel's exception handler: a #PF at [`UNMAPPED`] resumes after the 3-byte load;
/// anything else fails the kernel.
fn skip_faulting_load(trap: &mut Trap<'_>) -> bool {
    let expected =
        trap.frame.vector == u64::from(vector::PF) && trap.cr2.is_none_or(|cr2| cr2 == UNMAPPED);
    if expected {
        trap.frame.rip += FAULTING_LOAD_LEN;
        FAULTS.fetch_add(1, Ordering::Relaxed);
    }
    expected
}

/// Times page faults: TSC, the faulting load, TSC, in one asm block so that the sample is
/// exactly fault → hypervisor → handler → `iret` → next instruction (plus one TSC read).
fn time_faults(samples: &mut [u64]) -> &mut [u64] {
    for _ in 0..WARMUP {
        let _ = fault_once();
    }
    for s in samples.iter_mut() {
        *s = fault_once();
    }
    samples
}

fn fault_once() -> u64 {
    #[cfg(target_os = "none")]
    {
        let (t0, t1): (u64, u64);
        // SAFETY: the load of the unmapped `UNMAPPED` raises #PF, which the trap table
        // installed by `bench_main` bounces to `skip_faulting_load`; it resumes after the
        // load with every register restored by the trap stub and the `iret` hypercall. The
        // load's destination, rax, and the TSC registers are declared clobbered.
        unsafe {
            core::arch::asm!(
                "lfence",
                "rdtsc",
                "shl rdx, 32",
                "or rax, rdx",
                "mov {t0}, rax",
                ".byte 0x48, 0x8b, 0x07",
                "lfence",
                "rdtsc",
                "shl rdx, 32",
                "or rax, rdx",
                t0 = out(reg) t0,
                in("rdi") UNMAPPED,
                out("rax") t1,
                out("rdx") _,
            );
        }
        t1.wrapping_sub(t0)
    }
    #[cfg(not(target_os = "none"))]
    0
}

/// Times `mmu_update` batches on one scratch page's L1 entry: unmap, map, … 64 updates,
/// the last restoring the original entry, so the page is mapped as before after each batch.
fn time_mmu_batches<'a>(
    si: &StartInfo,
    samples: &'a mut [u64],
) -> Result<&'a mut [u64], &'static str> {
    let page = region::alloc_scratch(si).ok_or("out of scratch pages")?;
    let Some((l1e, original)) = l1_entry(si, page.va) else {
        pvrt::fail!(
            "no bootstrap L1 entry found for scratch page {:#x}",
            page.va
        );
    };
    pvrt::ensure!(
        original & 1 == 1 && (original & 0x000f_ffff_ffff_f000) >> 12 == page.mfn,
        "the L1 entry of scratch page {:#x} is {original:#x}, not a mapping of mfn {:#x}",
        page.va,
        page.mfn
    );
    let ptr = l1e | u64::from(MmuUpdateCmd::NormalPtUpdate.raw());
    let mut batch = [MmuUpdate { ptr, val: 0 }; BATCH];
    for (i, req) in batch.iter_mut().enumerate() {
        req.val = if i % 2 == 0 { 0 } else { original };
    }

    let mut done = 0u32;
    // SAFETY: the scratch page is this benchmark's alone; the batch ends with the entry as
    // it was, so nothing that uses the page sees a change.
    let ret = unsafe { pvrt::mmu_update(&batch, Some(&mut done), DOMID_SELF) };
    pvrt::ensure!(
        ret == 0 && done as usize == BATCH,
        "mmu_update of {BATCH} L1 updates returned {ret}, {done} done"
    );
    time_each(samples, || {
        // SAFETY: as above.
        let _ = unsafe { pvrt::mmu_update(&batch, None, DOMID_SELF) };
    });
    still_mapped(&page)?;
    Ok(samples)
}

/// The scratch page is mapped and writable after the batches.
fn still_mapped(page: &ScratchPage) -> Result<(), &'static str> {
    let word = page.words();
    // SAFETY: the scratch page is mapped writable again (every batch ends by restoring its
    // entry) and used by nothing else.
    let back = unsafe {
        core::ptr::write_volatile(word, 0x5ca1_ab1e);
        core::ptr::read_volatile(word)
    };
    pvrt::ensure!(
        back == 0x5ca1_ab1e,
        "the scratch page reads back {back:#x} after the mmu_update batches"
    );
    Ok(())
}

/// The machine address of the bootstrap L1 entry mapping `va`, and its value: a walk of
/// the bootstrap page tables (`pt_base`, `nr_pt_frames`, mapped read-only in the region).
fn l1_entry(si: &StartInfo, va: u64) -> Option<(u64, u64)> {
    let frames = si.nr_pt_frames;
    let va_of = |mfn: u64| {
        (0..frames)
            .map(|i| si.pt_base + i * region::PAGE_SIZE)
            .find(|&table| region::mfn_of(si, table) == mfn)
    };
    let entry = |table: u64, index: u64| {
        // SAFETY: `table` is a bootstrap page-table frame, mapped read-only in the
        // bootstrap region for the kernel's life; `index` is below 512.
        unsafe { core::ptr::read_volatile((table as *const u64).add(index as usize)) }
    };
    let mut table = si.pt_base;
    for shift in [39u32, 30, 21] {
        let e = entry(table, (va >> shift) & 511);
        if e & 1 == 0 {
            return None;
        }
        table = va_of((e & 0x000f_ffff_ffff_f000) >> 12)?;
    }
    let index = (va >> 12) & 511;
    let maddr = region::mfn_of(si, table) * region::PAGE_SIZE + index * 8;
    Some((maddr, entry(table, index)))
}

// --- The context switch: a yield ping-pong between vCPU 0 and vCPU 1. ----------------

/// The secondary vCPU.
const VCPU1: u32 = 1;
/// vCPU 1's stack, in scratch pages.
const STACK1_PAGES: u64 = 4;
/// Samples each vCPU takes (both together: [`SAMPLES`]).
const SWITCHES_PER_VCPU: usize = SAMPLES / 2;
/// How long (system time) vCPU 0 waits for vCPU 1 to start, and for the ping-pong.
const START_WAIT_MS: u64 = 5_000;
const PING_PONG_MS: u64 = 60_000;

/// The last stamp before a yield: the TSC with bit 0 replaced by the yielding vCPU's id.
static LAST_YIELD: AtomicU64 = AtomicU64::new(0);
/// vCPU 1 reached its entry; vCPU 0 lets it start, and stops it; vCPU 1 is done (its
/// samples and count final).
static ENTERED1: AtomicBool = AtomicBool::new(false);
static GO: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);
static DONE1: AtomicBool = AtomicBool::new(false);
/// vCPU 1's samples (TSC ticks) and how many it took.
static SAMPLES1: [AtomicU64; SWITCHES_PER_VCPU] = [const { AtomicU64::new(0) }; SWITCHES_PER_VCPU];
static COUNT1: AtomicUsize = AtomicUsize::new(0);

/// Stamps `LAST_YIELD` for vCPU `me`, yields, and returns the sample when the yield
/// switched: the TSC now minus the other vCPU's stamp, if the other vCPU stamped last
/// (and before now: with both on one physical CPU it always is).
#[inline(always)]
fn yield_once(me: u64) -> Option<u64> {
    LAST_YIELD.store((rdtsc() & !1) | me, Ordering::SeqCst);
    let _ = pvrt::sched_yield();
    let now = rdtsc();
    let last = LAST_YIELD.load(Ordering::SeqCst);
    let stamp = last & !1;
    (last & 1 != me && stamp <= now).then(|| now - stamp)
}

/// The context switch figure, or `n/a` and why: starts vCPU 1, runs the ping-pong until
/// each vCPU has [`SWITCHES_PER_VCPU`] samples (after [`WARMUP`] switches each), and
/// prints the median of both vCPUs' samples.
fn context_switch(si: &StartInfo, scale: &TscScale, samples: &mut [u64]) {
    match start_vcpu1(si) {
        Ok(()) => {}
        Err((reason, None)) => {
            pvrt::println!("bench: context_switch n/a ({reason})");
            return;
        }
        Err((reason, Some(ret))) => {
            pvrt::println!("bench: context_switch n/a ({reason}: returned {ret})");
            return;
        }
    }
    let deadline = time::now() + START_WAIT_MS * NS_PER_MS;
    while !ENTERED1.load(Ordering::SeqCst) {
        if time::now() > deadline {
            pvrt::println!(
                "bench: context_switch n/a (vCPU 1 is up but did not run within \
                 {START_WAIT_MS} ms of vCPU 0's yields)"
            );
            return;
        }
        let _ = pvrt::sched_yield();
    }

    let mine = &mut samples[..SWITCHES_PER_VCPU];
    let mut switches = 0usize;
    let mut taken = 0usize;
    let deadline = time::now() + PING_PONG_MS * NS_PER_MS;
    let mut timed_out = false;
    GO.store(true, Ordering::SeqCst);
    while taken < SWITCHES_PER_VCPU || COUNT1.load(Ordering::SeqCst) < SWITCHES_PER_VCPU {
        if time::now() > deadline {
            timed_out = true;
            break;
        }
        if let Some(ticks) = yield_once(0) {
            switches += 1;
            if switches > WARMUP && taken < SWITCHES_PER_VCPU {
                mine[taken] = ticks;
                taken += 1;
            }
        }
    }
    STOP.store(true, Ordering::SeqCst);
    let deadline = time::now() + START_WAIT_MS * NS_PER_MS;
    while !DONE1.load(Ordering::SeqCst) {
        if time::now() > deadline {
            pvrt::println!(
                "bench: context_switch n/a (vCPU 1 did not stop within {START_WAIT_MS} ms)"
            );
            return;
        }
        let _ = pvrt::sched_yield();
    }

    let theirs = COUNT1.load(Ordering::SeqCst);
    for (slot, sample) in samples[taken..].iter_mut().zip(&SAMPLES1[..theirs]) {
        *slot = sample.load(Ordering::SeqCst);
    }
    let n = taken + theirs;
    pvrt::println!(
        "bench: context_switch_samples vCPU 0 {taken}, vCPU 1 {theirs}{}",
        if timed_out {
            " (stopped after the time limit)"
        } else {
            ""
        }
    );
    if taken == 0 || theirs == 0 {
        pvrt::println!(
            "bench: context_switch n/a (no switch from vCPU {} to vCPU {} within {} ms of \
             yields)",
            if taken == 0 { 1 } else { 0 },
            if taken == 0 { 0 } else { 1 },
            PING_PONG_MS
        );
        return;
    }
    report(scale, "context_switch", median(&mut samples[..n]), n, 1);
}

/// Brings vCPU 1 up at [`bench_vcpu1_entry`] on a stack of scratch pages, as the `smp`
/// kernel does; when the domain has no vCPU 1 or it cannot be started, the reason and the
/// hypercall's result if one failed.
fn start_vcpu1(si: &StartInfo) -> Result<(), (&'static str, Option<i64>)> {
    match smp::is_up(VCPU1) {
        0 => {}
        r if r < 0 => return Err(("one vCPU: VCPUOP_is_up(1)", Some(r))),
        r => {
            return Err((
                "vCPU 1 is up already, running no code of this kernel",
                Some(r),
            ))
        }
    }
    let no_page = ("no scratch page left for vCPU 1's stack", None);
    let mut lo = 0;
    let mut next = 0;
    for i in 0..STACK1_PAGES {
        let page = region::alloc_scratch(si).ok_or(no_page)?;
        if i == 0 {
            lo = page.va;
        } else if page.va != next {
            return Err((
                "the scratch pages for vCPU 1's stack are not contiguous",
                None,
            ));
        }
        next = page.va + region::PAGE_SIZE;
    }
    let top = next;
    let (own_lo, own_hi) = layout::stack();
    if !(top <= own_lo || lo >= own_hi) {
        return Err(("vCPU 1's stack would overlap the kernel's", None));
    }
    let ctx = smp::kernel_context(&Start {
        rip: vcpu1_entry_address(),
        rsp: top,
        args: [u64::from(VCPU1), 0],
        l4_mfn: region::mfn_of(si, si.pt_base),
        fs_base: 0,
        gs_base_kernel: 0,
    });
    // SAFETY: the entry is `bench_vcpu1_entry`, which runs `bench_vcpu1_main` on the
    // scratch stack reserved above for vCPU 1 alone; the L4 is the kernel's own, and the
    // trap table and callbacks are the runtime's stubs.
    let ret = unsafe { smp::initialise(VCPU1, &ctx) };
    if ret != 0 {
        return Err(("VCPUOP_initialise(1)", Some(ret)));
    }
    let ret = smp::up(VCPU1);
    if ret != 0 {
        return Err(("VCPUOP_up(1) after VCPUOP_initialise(1)", Some(ret)));
    }
    Ok(())
}

// vCPU 1's first instruction: align the context's stack for the call.
#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .pushsection .text.bench_vcpu1_entry, "ax", @progbits
    .global bench_vcpu1_entry
    .type bench_vcpu1_entry, @function
bench_vcpu1_entry:
    and rsp, -16
    xor ebp, ebp
    call bench_vcpu1_main
    ud2
    .size bench_vcpu1_entry, . - bench_vcpu1_entry
    .popsection
    "#
);

fn vcpu1_entry_address() -> u64 {
    #[cfg(target_os = "none")]
    {
        extern "C" {
            fn bench_vcpu1_entry();
        }
        bench_vcpu1_entry as unsafe extern "C" fn() as usize as u64
    }
    #[cfg(not(target_os = "none"))]
    0
}

/// vCPU 1: waits for the go, yields in turn with vCPU 0 until told to stop, recording
/// its samples, then takes itself down (events stay masked all along: only yields switch).
#[no_mangle]
extern "C" fn bench_vcpu1_main() -> ! {
    ENTERED1.store(true, Ordering::SeqCst);
    while !GO.load(Ordering::SeqCst) {
        let _ = pvrt::sched_yield();
    }
    let mut switches = 0usize;
    let mut taken = 0usize;
    while !STOP.load(Ordering::SeqCst) {
        if let Some(ticks) = yield_once(1) {
            switches += 1;
            if switches > WARMUP && taken < SWITCHES_PER_VCPU {
                SAMPLES1[taken].store(ticks, Ordering::SeqCst);
                taken += 1;
                COUNT1.store(taken, Ordering::SeqCst);
            }
        }
    }
    DONE1.store(true, Ordering::SeqCst);
    loop {
        let _ = smp::down(VCPU1);
    }
}

/// The median of `samples` (sorted in place).
fn median(samples: &mut [u64]) -> u64 {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or(0)
}

/// Room for [`SAMPLES`] samples: too large for the 64 KiB stack, so a static handed out
/// once.
struct SampleBuffer(UnsafeCell<[u64; SAMPLES]>);

// SAFETY: only vCPU 0 uses the buffer (vCPU 1 records into `SAMPLES1`), and
// `sample_buffer` hands it out at most once, so no two references to it exist.
unsafe impl Sync for SampleBuffer {}

static BUFFER: SampleBuffer = SampleBuffer(UnsafeCell::new([0; SAMPLES]));
static BUFFER_TAKEN: AtomicBool = AtomicBool::new(false);

fn sample_buffer() -> &'static mut [u64; SAMPLES] {
    if BUFFER_TAKEN.swap(true, Ordering::SeqCst) {
        pvrt::fail!("the sample buffer was taken twice");
    }
    // SAFETY: the flag above lets this run once, so this is the only reference.
    unsafe { &mut *BUFFER.0.get() }
}
