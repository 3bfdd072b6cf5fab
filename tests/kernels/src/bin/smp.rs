//! `smp`: a second vCPU, brought up the way Linux brings up its secondary CPUs (dom0
//! booted with `dom0_max_vcpus=2`), on its own physical CPU or sharing one with vCPU 0.
//!
//! 1. vCPU 0 probes: `VCPUOP_is_up` is 1 for itself, 0 for vCPU 1, `-ENOENT` for vCPU 2;
//!    `VCPUOP_up(1)` before `VCPUOP_initialise` is `-EINVAL`.
//! 2. It loads its own xmm0-15/MXCSR pattern, builds vCPU 1's `vcpu_guest_context`
//!    ([`pvrt::smp::kernel_context`]: entry through an asm trampoline, a 16 KiB stack of
//!    scratch pages, vCPU 0's L4, the runtime's trap table and callbacks, FS and kernel GS
//!    bases of its own), and makes `VCPUOP_initialise(1)` (again: `-EEXIST`; still down),
//!    then `VCPUOP_up(1)` (now up).
//! 3. vCPU 1 checks its start: `rdi`/`rsi`/`rsp` from the context, a fresh FPU (MXCSR
//!    0x1f80, xmm zero: nothing of vCPU 0's), its GS/FS bases, events masked in its
//!    `vcpu_info`, its own clock agreeing with vCPU 0's, and an `int3` handled through the
//!    context's trap table.
//! 4. Both load distinct xmm/MXCSR values and yield (`SCHEDOP_yield`) at least 200 times
//!    each, until each has seen the other make progress (on one physical CPU they take
//!    turns; on two they run side by side); afterwards each still has its own registers
//!    and segment bases.
//! 5. vCPU 0 binds an IPI port to vCPU 1 and sends on it while vCPU 1 is in
//!    `SCHEDOP_block`: the upcall runs on vCPU 1 (told apart by its stack), never on vCPU 0
//!    (whose events are unmasked meanwhile), and vCPU 1's block returns.
//! 6. vCPU 1 spins at least 50 ms without a single hypercall (on until vCPU 0 ran, at most
//!    a second) while vCPU 0 blocks on a 5 ms single-shot timer: vCPU 0 must run during
//!    the spin (timer preemption).
//! 7. vCPU 1 takes itself down (`VCPUOP_down(1)`): `is_up` becomes 0 and it stays stopped;
//!    vCPU 0 brings it up again and its `VCPUOP_down` returns 0 (Linux's CPU hotplug
//!    relies on that); it goes down again.
//!
//! Every step prints a `pv-test smp:` line, so a log that stops shows where.
#![cfg_attr(target_os = "none", no_std, no_main)]

use ferrovisor_abi::xen::{
    hypercall::Hypercall,
    sched::{SchedOp, SchedPoll},
    GuestHandle,
};

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use ferrovisor_abi::{
    errno::XenErrno,
    xen::{
        arch_x86::{SegBase, FLAT_RING3_DS32},
        xen::StartInfo,
    },
};
use pvrt::{
    events::{self, VIRQ_TIMER},
    layout, region, shared_info,
    smp::{self, Start},
    sse::{first_difference, load_xmm, mxcsr, set_mxcsr, store_xmm, Xmm, MXCSR_DEFAULT},
    time::{self, NS_PER_MS},
    traps::{self, vector, ExceptionFrame, Trap},
};

pvrt::test_kernel!(name: "smp", main: test_main);

/// The secondary vCPU.
const VCPU1: u32 = 1;
/// `SCHEDOP_yield` rounds each vCPU counts at least, and at most.
const YIELD_ROUNDS: u64 = 200;
const YIELD_LIMIT: u64 = 1_000_000;
/// How long vCPU 1 spins without hypercalls.
const SPIN_MS: u64 = 50;
/// The spin goes on past `SPIN_MS` until vCPU 0 has run during it, up to this long: a
/// host too busy to deliver ticks while the first 50 ms pass (TCG's clock is the host's)
/// must not look like a missing preemption; only no preemption in a whole second does.
const SPIN_MAX_MS: u64 = 1000;
/// vCPU 1's stack, in scratch pages.
const STACK_PAGES: u64 = 4;
/// vCPU 1's `rsi` at entry.
const ENTRY_COOKIE: u64 = 0x5350_7631_c0de_0001;
/// How long vCPU 0 waits for anything vCPU 1 does.
const WAIT_MS: u64 = 2000;

/// MXCSR of each vCPU: every exception masked, rounding toward zero (vCPU 0) or up
/// (vCPU 1).
const MXCSR: [u32; 2] = [0x7f80, 0x5f80];
/// The seeds of the xmm patterns.
const XMM_SEED: [u8; 2] = [0x11, 0x77];

/// Each vCPU's kernel GS base points at its entry here: `[vCPU id, GS_MAGIC]`.
static PERCPU: [[u64; 2]; 2] = [[0, GS_MAGIC], [1, GS_MAGIC]];
const GS_MAGIC: u64 = 0x6773_6261_7365_2121;
/// Each vCPU's FS base points at its word here.
static FS_MARK: [u64; 2] = [0xf5f5_0000_0000_0000, 0xf5f5_0000_0000_0001];

/// How far vCPU 0 has got; vCPU 1 waits for each phase.
static PHASE: AtomicU32 = AtomicU32::new(0);
const PHASE_YIELD: u32 = 1;
const PHASE_IPI: u32 = 2;
const PHASE_POLL: u32 = 3;
const PHASE_SPIN: u32 = 4;
const PHASE_DOWN: u32 = 5;
/// vCPU 1 is in SCHEDOP_poll on the (masked) IPI port / came back from it with this.
static POLLING: AtomicBool = AtomicBool::new(false);
static POLL_WOKE: AtomicBool = AtomicBool::new(false);
static POLL_RET: AtomicU64 = AtomicU64::new(u64::MAX);

/// vCPU 1's stack, `[lo, hi)` (0 before it is allocated).
static STACK1_LO: AtomicU64 = AtomicU64::new(0);
static STACK1_HI: AtomicU64 = AtomicU64::new(0);

/// vCPU 1 reached its entry, and finished its start checks.
static ENTERED: AtomicBool = AtomicBool::new(false);
static READY1: AtomicBool = AtomicBool::new(false);
/// The yield rounds each vCPU finished.
static ROUNDS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
static YIELD_DONE1: AtomicBool = AtomicBool::new(false);
/// Each vCPU has done its rounds and seen the other's count move.
static YIELD_SAW: [AtomicBool; 2] = [const { AtomicBool::new(false) }; 2];

/// `#BP`s handled, per vCPU.
static BREAKPOINTS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
/// Upcalls taken, per vCPU, and per port below 64.
static UPCALLS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
static HITS: [[AtomicU64; 64]; 2] = [const { [const { AtomicU64::new(0) }; 64] }; 2];
/// Bit `v`: an upcall on vCPU `v` found that vCPU's `evtchn_upcall_mask` clear.
static UNMASKED_UPCALL: AtomicU8 = AtomicU8::new(0);

/// The IPI step: the port, vCPU 1 about to block, its blocks, the last block's result,
/// and that it saw the IPI.
static IPI_PORT: AtomicU32 = AtomicU32::new(0);
static BLOCKING: AtomicBool = AtomicBool::new(false);
static BLOCK_CALLS: AtomicU64 = AtomicU64::new(0);
static BLOCK_RET: AtomicU64 = AtomicU64::new(u64::MAX);
static IPI_WOKE: AtomicBool = AtomicBool::new(false);

/// The preemption step: vCPU 1 is in its spin; it finished; how often vCPU 0 ran
/// meanwhile (counted by vCPU 0) and how many of those vCPU 1 saw.
static SPINNING: AtomicBool = AtomicBool::new(false);
static SPIN_DONE: AtomicBool = AtomicBool::new(false);
static RUNS_DURING_SPIN: AtomicU64 = AtomicU64::new(0);
static SPIN_SEEN: AtomicU64 = AtomicU64::new(0);

/// The down step: vCPU 1 resumed from its `VCPUOP_down`, with this result.
static RESUMED: AtomicBool = AtomicBool::new(false);
static DOWN_RET: AtomicU64 = AtomicU64::new(u64::MAX);

fn errno(e: XenErrno) -> i64 {
    e.to_hypercall_ret()
}

// --- Which vCPU runs: the stack tells. ----------------------------------------------

/// The vCPU whose stack holds `addr`: vCPU 1's scratch stack, else vCPU 0 (which runs on
/// the kernel's own stack).
fn vcpu_of(addr: u64) -> usize {
    let (lo, hi) = (
        STACK1_LO.load(Ordering::SeqCst),
        STACK1_HI.load(Ordering::SeqCst),
    );
    usize::from(lo != 0 && (lo..hi).contains(&addr))
}

/// The running vCPU.
fn current_vcpu() -> usize {
    let marker = 0u8;
    vcpu_of(core::ptr::from_ref(&marker) as u64)
}

// --- Exceptions and events. -----------------------------------------------------------

fn handler(trap: &mut Trap<'_>) -> bool {
    if trap.frame.vector == u64::from(vector::BP) {
        let v = vcpu_of(core::ptr::from_ref(&*trap.frame) as u64);
        BREAKPOINTS[v].fetch_add(1, Ordering::SeqCst);
        return true;
    }
    false
}

/// The 2-level upcall (`events_2l.c`) on whichever vCPU it arrives: that vCPU's
/// `vcpu_info` has the selector, the shared bitmaps the ports.
fn on_upcall(frame: &mut ExceptionFrame) {
    let v = vcpu_of(core::ptr::from_ref(&*frame) as u64);
    UPCALLS[v].fetch_add(1, Ordering::SeqCst);
    let vi = smp::vcpu_info(v as u32);
    let Some(si) = shared_info::get() else {
        pvrt::fail!("upcall on vCPU {v} before shared_info is mapped");
    };
    // SAFETY: `vi` is vCPU v's vcpu_info in the mapped shared_info; the hypervisor changes
    // these fields atomically too, so they are only accessed atomically.
    let (pending, mask, sel) = unsafe {
        (
            AtomicU8::from_ptr(&raw mut (*vi).evtchn_upcall_pending),
            AtomicU8::from_ptr(&raw mut (*vi).evtchn_upcall_mask),
            AtomicU64::from_ptr(&raw mut (*vi).evtchn_pending_sel),
        )
    };
    if mask.load(Ordering::SeqCst) != 1 {
        UNMASKED_UPCALL.fetch_or(1 << v, Ordering::SeqCst);
    }
    pending.store(0, Ordering::SeqCst);
    loop {
        let words = sel.swap(0, Ordering::SeqCst);
        if words == 0 {
            break;
        }
        for w in (0..64usize).filter(|w| words & (1 << w) != 0) {
            // SAFETY: as above, the shared bitmaps of the mapped shared_info.
            let (p, m) = unsafe {
                (
                    AtomicU64::from_ptr(&raw mut (*si.cast_mut()).evtchn_pending[w]),
                    AtomicU64::from_ptr(&raw mut (*si.cast_mut()).evtchn_mask[w]),
                )
            };
            let ready = p.load(Ordering::SeqCst) & !m.load(Ordering::SeqCst);
            for bit in (0..64usize).filter(|b| ready & (1 << b) != 0) {
                if p.fetch_and(!(1 << bit), Ordering::SeqCst) & (1 << bit) == 0 {
                    continue;
                }
                if let Some(hits) = HITS[v].get(w * 64 + bit) {
                    hits.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

/// Sets vCPU `v`'s `evtchn_upcall_mask` (only vCPU `v` itself does).
fn set_events_masked(v: u32, masked: bool) {
    let vi = smp::vcpu_info(v);
    // SAFETY: as in `on_upcall`.
    let mask = unsafe { AtomicU8::from_ptr(&raw mut (*vi).evtchn_upcall_mask) };
    mask.store(u8::from(masked), Ordering::SeqCst);
}

fn upcall_mask(v: u32) -> u8 {
    let vi = smp::vcpu_info(v);
    // SAFETY: as in `on_upcall`.
    unsafe { AtomicU8::from_ptr(&raw mut (*vi).evtchn_upcall_mask) }.load(Ordering::SeqCst)
}

// --- SSE registers and segment bases. ------------------------------------------------

fn pattern(seed: u8) -> Xmm {
    let mut x = [[0u8; 16]; 16];
    for (r, reg) in x.iter_mut().enumerate() {
        for (b, byte) in reg.iter_mut().enumerate() {
            *byte = seed
                .wrapping_add((r as u8).wrapping_mul(16))
                .wrapping_add(b as u8)
                ^ 0x5a;
        }
    }
    x
}

fn load_sse(v: usize) {
    load_xmm(&pattern(XMM_SEED[v]));
    set_mxcsr(MXCSR[v]);
}

/// Fails unless vCPU `v` still has its own xmm pattern and MXCSR.
fn check_sse(v: usize, after: &str) {
    let got = store_xmm();
    if let Some((r, g, w)) = first_difference(&got, &pattern(XMM_SEED[v])) {
        pvrt::fail!(
            "vCPU {v}: xmm{r} is {g:#034x} after {after}, expected {w:#034x}: the FPU/SSE \
             state is not kept per vCPU"
        );
    }
    let csr = mxcsr();
    pvrt::ensure!(
        csr == MXCSR[v],
        "vCPU {v}: MXCSR is {csr:#x} after {after}, expected {:#x}",
        MXCSR[v]
    );
}

/// `gs:[0]`, `gs:[8]` and `fs:[0]`.
fn segment_words() -> (u64, u64, u64) {
    #[cfg(target_os = "none")]
    {
        let (gs0, gs8, fs0): (u64, u64, u64);
        // SAFETY: the FS and kernel GS bases point at this kernel's statics (`PERCPU`,
        // `FS_MARK`), set before this runs; the reads change nothing.
        unsafe {
            core::arch::asm!(
                "mov {gs0}, qword ptr gs:[0]",
                "mov {gs8}, qword ptr gs:[8]",
                "mov {fs0}, qword ptr fs:[0]",
                gs0 = out(reg) gs0,
                gs8 = out(reg) gs8,
                fs0 = out(reg) fs0,
                options(nostack, readonly, preserves_flags),
            );
        }
        (gs0, gs8, fs0)
    }
    #[cfg(not(target_os = "none"))]
    (0, 0, 0)
}

/// Fails unless vCPU `v`'s GS and FS bases are its own.
/// The data selectors (DS, ES, FS) each vCPU loads for the yield rounds: each its own, so
/// a hypervisor that let one vCPU's selectors leak to the next vCPU on the CPU (instead of
/// saving and restoring them, as Xen does) is caught when they share a CPU.
const SELECTORS: [[u16; 3]; 2] = [
    [FLAT_RING3_DS32, 0, 0],
    [0, FLAT_RING3_DS32, FLAT_RING3_DS32],
];

/// Loads vCPU `v`'s selectors, then its FS base again (the FS load replaced it).
fn load_selectors(v: usize) -> Result<(), &'static str> {
    let [ds, es, fs] = SELECTORS[v];
    // SAFETY: flat ring-3 data segments or null; nothing in this kernel addresses through
    // DS or ES (ignored in 64-bit mode), and FS is used only through its base, set again
    // below.
    unsafe {
        core::arch::asm!(
            "mov ds, {0:x}",
            "mov es, {1:x}",
            "mov fs, {2:x}",
            in(reg) ds,
            in(reg) es,
            in(reg) fs,
            options(nostack, preserves_flags)
        );
    }
    // SAFETY: as at start: nothing uses FS but `segment_words`.
    let ret =
        unsafe { smp::set_segment_base(SegBase::Fs, core::ptr::from_ref(&FS_MARK[v]) as u64) };
    pvrt::ensure!(ret == 0, "set_segment_base(Fs) returned {ret}");
    Ok(())
}

/// vCPU `v` still has its own DS, ES and FS selectors.
fn check_selectors(v: usize, after: &str) {
    let (ds, es, fs): (u16, u16, u16);
    // SAFETY: reading segment registers has no side effects.
    unsafe {
        core::arch::asm!(
            "mov {0:x}, ds",
            "mov {1:x}, es",
            "mov {2:x}, fs",
            out(reg) ds,
            out(reg) es,
            out(reg) fs,
            options(nomem, nostack, preserves_flags)
        );
    }
    pvrt::ensure!(
        [ds, es, fs] == SELECTORS[v],
        "vCPU {v}: DS/ES/FS {ds:#x}/{es:#x}/{fs:#x} {after}, expected {:#x?}: another          vCPU's selectors leaked in",
        SELECTORS[v]
    );
}

fn check_segments(v: usize, after: &str) {
    let (gs0, gs8, fs0) = segment_words();
    pvrt::ensure!(
        gs0 == v as u64 && gs8 == GS_MAGIC,
        "vCPU {v}: gs:[0] {gs0:#x}, gs:[8] {gs8:#x} {after}: the kernel GS base is not vCPU \
         {v}'s ({:#x})",
        core::ptr::from_ref(&PERCPU[v]) as u64
    );
    pvrt::ensure!(
        fs0 == FS_MARK[v],
        "vCPU {v}: fs:[0] {fs0:#x} {after}, expected {:#x}: the FS base is not vCPU {v}'s",
        FS_MARK[v]
    );
}

// --- vCPU 1. ---------------------------------------------------------------------------

// vCPU 1's first instruction: `rsp` is the context's (its stack top); align it for the
// call and hand over `rdi`, `rsi` and the entry `rsp`.
#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .pushsection .text.smp_vcpu1_entry, "ax", @progbits
    .global smp_vcpu1_entry
    .type smp_vcpu1_entry, @function
smp_vcpu1_entry:
    mov rdx, rsp
    and rsp, -16
    xor ebp, ebp
    call smp_vcpu1_main
    ud2
    .size smp_vcpu1_entry, . - smp_vcpu1_entry
    .popsection
    "#
);

fn vcpu1_entry_address() -> u64 {
    #[cfg(target_os = "none")]
    {
        extern "C" {
            fn smp_vcpu1_entry();
        }
        smp_vcpu1_entry as unsafe extern "C" fn() as usize as u64
    }
    #[cfg(not(target_os = "none"))]
    0
}

/// Yields until vCPU 0 reaches `phase`.
fn wait_phase(phase: u32) {
    while PHASE.load(Ordering::SeqCst) < phase {
        let _ = pvrt::sched_yield();
    }
}

#[no_mangle]
extern "C" fn smp_vcpu1_main(rdi: u64, rsi: u64, rsp: u64) -> ! {
    ENTERED.store(true, Ordering::SeqCst);
    let top = STACK1_HI.load(Ordering::SeqCst);
    pvrt::ensure!(
        rdi == u64::from(VCPU1) && rsi == ENTRY_COOKIE && rsp == top,
        "vCPU 1 entered with rdi {rdi:#x}, rsi {rsi:#x}, rsp {rsp:#x}; the context gave rdi \
         {VCPU1}, rsi {ENTRY_COOKIE:#x}, rsp {top:#x}"
    );
    pvrt::ensure!(current_vcpu() == 1, "vCPU 1 runs outside its stack");
    // A fresh FPU: nothing of vCPU 0's pattern (Xen's vcpu_setup_fpu without
    // VGCF_I387_VALID: zeroed, MXCSR 0x1f80).
    let csr = mxcsr();
    pvrt::ensure!(
        csr == MXCSR_DEFAULT,
        "vCPU 1 started with MXCSR {csr:#x}, expected the default {MXCSR_DEFAULT:#x} (vCPU 0 \
         has {:#x})",
        MXCSR[0]
    );
    if let Some((r, g, _)) = first_difference(&store_xmm(), &[[0; 16]; 16]) {
        pvrt::fail!("vCPU 1 started with xmm{r} = {g:#034x}, expected 0 (a fresh FPU state)");
    }
    check_segments(1, "at entry (fs_base/gs_base_kernel of the context)");
    let mask = upcall_mask(VCPU1);
    pvrt::ensure!(
        mask == 1,
        "vCPU 1 started with evtchn_upcall_mask {mask} in its vcpu_info, expected 1 (events \
         masked)"
    );
    // Its own clock (vcpu_info[1].time) against vCPU 0's, read back to back.
    let mine = smp::read_time(VCPU1);
    let theirs = smp::read_time(0);
    pvrt::ensure!(
        mine.mul != 0,
        "vCPU 1's vcpu_time_info is not filled in (version {}, tsc_to_system_mul 0)",
        mine.version
    );
    // Within one scheduler tick: Xen republishes each vCPU's copy only when it is scheduled,
    // and under TCG its TSC extrapolation of an idle vCPU's copy drifts by milliseconds.
    let skew = mine.now.abs_diff(theirs.now);
    pvrt::ensure!(
        skew < 10 * NS_PER_MS,
        "vCPU 1's clock reads {} ns, vCPU 0's {} ns: {skew} ns apart",
        mine.now,
        theirs.now
    );
    // SAFETY: `int3` enters the #BP handler through the trap table of the context, which
    // returns to the next instruction.
    #[cfg(target_os = "none")]
    unsafe {
        core::arch::asm!("int3")
    };
    let bps = BREAKPOINTS[1].load(Ordering::SeqCst);
    pvrt::ensure!(
        bps == 1,
        "vCPU 1's int3 reached the #BP handler {bps} time(s) on vCPU 1 (trap_ctxt)"
    );
    pvrt::println!(
        "pv-test smp: vCPU 1 up: rdi {rdi}, rsi {rsi:#x}, rsp {rsp:#x}; MXCSR {csr:#x}, xmm \
         zero; gs/fs bases set; events masked; clock {skew} ns from vCPU 0's; int3 handled"
    );
    load_sse(1);
    READY1.store(true, Ordering::SeqCst);

    wait_phase(PHASE_YIELD);
    if let Err(e) = load_selectors(1) {
        pvrt::fail!("vCPU 1: {e}");
    }
    let (rounds, switches) = yield_together(1);
    check_sse(1, "the yield rounds");
    check_segments(1, "after the yield rounds");
    check_selectors(1, "after the yield rounds");
    pvrt::println!(
        "pv-test smp: vCPU 1: {rounds} yields, vCPU 0 progressed across {switches} of \
         them; xmm, MXCSR {:#x}, gs/fs bases and DS/ES/FS selectors intact",
        MXCSR[1]
    );
    YIELD_DONE1.store(true, Ordering::SeqCst);

    wait_phase(PHASE_IPI);
    let port = IPI_PORT.load(Ordering::SeqCst) as usize;
    BLOCKING.store(true, Ordering::SeqCst);
    while HITS[1][port].load(Ordering::SeqCst) == 0 {
        let calls = BLOCK_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
        pvrt::ensure!(
            calls <= 1000,
            "vCPU 1: SCHEDOP_block returned 1000 times without the IPI"
        );
        // Block unmasks vCPU 1's events; the upcall runs before it returns.
        let ret = pvrt::sched_block();
        BLOCK_RET.store(ret as u64, Ordering::SeqCst);
    }
    set_events_masked(VCPU1, true);
    IPI_WOKE.store(true, Ordering::SeqCst);

    // SCHEDOP_poll on the IPI port, masked (as Linux's PV spinlocks poll): vCPU 0 must
    // get the CPU meanwhile and its send must end the poll.
    wait_phase(PHASE_POLL);
    POLLING.store(true, Ordering::SeqCst);
    let ret = sched_poll(port as u32);
    POLL_RET.store(ret as u64, Ordering::SeqCst);
    POLL_WOKE.store(true, Ordering::SeqCst);

    wait_phase(PHASE_SPIN);
    // No hypercall from here to the end of the spin: only the hypervisor's timer can give
    // vCPU 0 the CPU.
    let t0 = smp::read_time(VCPU1).now;
    let runs0 = RUNS_DURING_SPIN.load(Ordering::SeqCst);
    SPINNING.store(true, Ordering::SeqCst);
    loop {
        let now = smp::read_time(VCPU1).now;
        let ran = RUNS_DURING_SPIN.load(Ordering::SeqCst) > runs0;
        if now >= t0 + SPIN_MAX_MS * NS_PER_MS || (now >= t0 + SPIN_MS * NS_PER_MS && ran) {
            break;
        }
        core::hint::spin_loop();
    }
    SPINNING.store(false, Ordering::SeqCst);
    SPIN_SEEN.store(
        RUNS_DURING_SPIN.load(Ordering::SeqCst) - runs0,
        Ordering::SeqCst,
    );
    SPIN_DONE.store(true, Ordering::SeqCst);

    wait_phase(PHASE_DOWN);
    check_sse(1, "the IPI and the spin");
    pvrt::println!("pv-test smp: vCPU 1: VCPUOP_down on itself");
    let ret = smp::down(VCPU1);
    DOWN_RET.store(ret as u64, Ordering::SeqCst);
    RESUMED.store(true, Ordering::SeqCst);
    loop {
        let ret = smp::down(VCPU1);
        pvrt::ensure!(ret == 0, "vCPU 1: VCPUOP_down on itself returned {ret}");
    }
}

// --- vCPU 0. ---------------------------------------------------------------------------

/// Yields until `done()`, failing after [`WAIT_MS`] of system time.
fn wait_for(what: &str, done: impl Fn() -> bool) {
    wait_or_report(what, done, || {});
}

/// As [`wait_for`], with `report()` printing what the state was before the failure.
fn wait_or_report(what: &str, done: impl Fn() -> bool, report: impl Fn()) {
    let deadline = time::now() + WAIT_MS * NS_PER_MS;
    while !done() {
        if time::now() > deadline {
            report();
            pvrt::fail!("vCPU 0 waited {WAIT_MS} ms for {what}");
        }
        let _ = pvrt::sched_yield();
    }
}

/// The event state of both vCPUs and of `port`, for a failure.
fn report_events(port: u32) {
    let p = port as usize;
    let vi = |v: u32| {
        let vi = smp::vcpu_info(v);
        // SAFETY: as in `on_upcall`; reads only.
        unsafe {
            (
                AtomicU8::from_ptr(&raw mut (*vi).evtchn_upcall_pending).load(Ordering::SeqCst),
                AtomicU8::from_ptr(&raw mut (*vi).evtchn_upcall_mask).load(Ordering::SeqCst),
                AtomicU64::from_ptr(&raw mut (*vi).evtchn_pending_sel).load(Ordering::SeqCst),
            )
        }
    };
    let (pend0, mask0, sel0) = vi(0);
    let (pend1, mask1, sel1) = vi(VCPU1);
    pvrt::println!(
        "pv-test smp: port {port}: pending {}, masked {}, status {:?}; hits vCPU 0 {}, vCPU 1 \
         {}; upcalls vCPU 0 {}, vCPU 1 {}",
        events::is_pending(port),
        events::is_masked(port),
        events::status(port).map(|s| (s.status, s.vcpu)),
        HITS[0][p].load(Ordering::SeqCst),
        HITS[1][p].load(Ordering::SeqCst),
        UPCALLS[0].load(Ordering::SeqCst),
        UPCALLS[1].load(Ordering::SeqCst),
    );
    pvrt::println!(
        "pv-test smp: vcpu_info 0: upcall_pending {pend0}, mask {mask0}, sel {sel0:#x}; \
         vcpu_info 1: upcall_pending {pend1}, mask {mask1}, sel {sel1:#x}; vCPU 1: {} \
         block(s), last result {:?} (None: still in the first), is_up {}",
        BLOCK_CALLS.load(Ordering::SeqCst),
        match BLOCK_RET.load(Ordering::SeqCst) {
            u64::MAX => None,
            ret => Some(ret as i64),
        },
        smp::is_up(VCPU1),
    );
}

fn test_main(si: &StartInfo) -> Result<(), &'static str> {
    if let Err(ret) = shared_info::map(si) {
        pvrt::fail!("update_va_mapping of shared_info returned {ret}");
    }
    traps::set_handler(handler);
    let via = match traps::install() {
        Ok(via) => via,
        Err(e) => pvrt::fail!("installing the trap table and callbacks: {e}"),
    };
    traps::set_event_handler(on_upcall);
    let ret = time::stop_periodic_timer();
    pvrt::ensure!(ret == 0, "VCPUOP_stop_periodic_timer returned {ret}");
    for (which, base) in [
        (SegBase::GsKernel, core::ptr::from_ref(&PERCPU[0]) as u64),
        (SegBase::Fs, core::ptr::from_ref(&FS_MARK[0]) as u64),
    ] {
        // SAFETY: nothing in this kernel uses FS or GS but `segment_words`.
        let ret = unsafe { smp::set_segment_base(which, base) };
        pvrt::ensure!(ret == 0, "set_segment_base({which:?}) returned {ret}");
    }
    check_segments(0, "after set_segment_base");
    pvrt::println!("pv-test smp: vCPU 0: trap table and callbacks ({via:?}), gs/fs bases set");

    probe()?;
    let (entry, top, l4_mfn) = start_vcpu1(si)?;
    pvrt::println!(
        "pv-test smp: vCPU 1 initialised (rip {entry:#x}, rsp {top:#x}, cr3 {:#x}) and up",
        l4_mfn << 12
    );
    wait_for("vCPU 1 to reach its entry", || {
        ENTERED.load(Ordering::SeqCst)
    });
    wait_for("vCPU 1's start checks", || READY1.load(Ordering::SeqCst));

    yield_rounds()?;
    ipi()?;
    poll()?;
    preemption()?;
    take_down()?;

    check_sse(0, "the whole test");
    check_segments(0, "after the whole test");
    Ok(())
}

/// Step 1: `is_up` and `up` before anything is set up.
fn probe() -> Result<(), &'static str> {
    let up0 = smp::is_up(0);
    let up1 = smp::is_up(VCPU1);
    let up2 = smp::is_up(2);
    pvrt::println!("pv-test smp: VCPUOP_is_up: vCPU 0 {up0}, vCPU 1 {up1}, vCPU 2 {up2}");
    pvrt::ensure!(up0 == 1, "VCPUOP_is_up(0) returned {up0}, expected 1");
    pvrt::ensure!(
        up1 != errno(XenErrno::Enoent),
        "VCPUOP_is_up(1) returned -ENOENT: dom0 has no vCPU 1 (is dom0_max_vcpus=2 on the \
         hypervisor command line?)"
    );
    pvrt::ensure!(
        up1 == 0,
        "VCPUOP_is_up(1) returned {up1} before VCPUOP_initialise, expected 0"
    );
    pvrt::ensure!(
        up2 == errno(XenErrno::Enoent),
        "VCPUOP_is_up(2) returned {up2}, expected -ENOENT (dom0 has 2 vCPUs)"
    );
    let ret = smp::up(VCPU1);
    pvrt::println!("pv-test smp: VCPUOP_up(1) before VCPUOP_initialise: {ret}");
    pvrt::ensure!(
        ret == errno(XenErrno::Einval),
        "VCPUOP_up(1) before VCPUOP_initialise returned {ret}, expected -EINVAL"
    );
    Ok(())
}

/// Step 2: vCPU 1's stack and context, `VCPUOP_initialise`, `VCPUOP_up`. Returns the
/// entry, the stack top and the L4's frame.
fn start_vcpu1(si: &StartInfo) -> Result<(u64, u64, u64), &'static str> {
    let mut lo = 0;
    let mut next = 0;
    for i in 0..STACK_PAGES {
        let Some(page) = region::alloc_scratch(si) else {
            pvrt::fail!("no scratch page left for vCPU 1's stack");
        };
        if i == 0 {
            lo = page.va;
        } else {
            pvrt::ensure!(
                page.va == next,
                "scratch pages are not contiguous: {:#x} after {next:#x}",
                page.va
            );
        }
        next = page.va + region::PAGE_SIZE;
    }
    let top = next;
    let (own_lo, own_hi) = layout::stack();
    pvrt::ensure!(
        top <= own_lo || lo >= own_hi,
        "vCPU 1's stack overlaps the kernel's"
    );
    STACK1_LO.store(lo, Ordering::SeqCst);
    STACK1_HI.store(top, Ordering::SeqCst);

    // vCPU 0's own SSE state first: vCPU 1 must not start with it.
    load_sse(0);

    let l4_mfn = region::mfn_of(si, si.pt_base);
    let entry = vcpu1_entry_address();
    let ctx = smp::kernel_context(&Start {
        rip: entry,
        rsp: top,
        args: [u64::from(VCPU1), ENTRY_COOKIE],
        l4_mfn,
        fs_base: core::ptr::from_ref(&FS_MARK[1]) as u64,
        gs_base_kernel: core::ptr::from_ref(&PERCPU[1]) as u64,
    });
    // SAFETY: the entry is `smp_vcpu1_entry`, which runs `smp_vcpu1_main` on the scratch
    // stack reserved above for vCPU 1 alone; the L4 is the kernel's own, and the trap table
    // and callbacks are the runtime's stubs.
    let ret = unsafe { smp::initialise(VCPU1, &ctx) };
    pvrt::ensure!(ret == 0, "VCPUOP_initialise(1) returned {ret}");
    // SAFETY: as above; it must be refused anyway.
    let again = unsafe { smp::initialise(VCPU1, &ctx) };
    let up1 = smp::is_up(VCPU1);
    pvrt::println!(
        "pv-test smp: VCPUOP_initialise(1): {ret}, again: {again}; is_up {up1} (no VGCF_online)"
    );
    pvrt::ensure!(
        again == errno(XenErrno::Eexist),
        "a second VCPUOP_initialise(1) returned {again}, expected -EEXIST"
    );
    pvrt::ensure!(
        up1 == 0,
        "VCPUOP_is_up(1) is {up1} after VCPUOP_initialise without VGCF_online, expected 0"
    );
    let ret = smp::up(VCPU1);
    let up1 = smp::is_up(VCPU1);
    pvrt::println!("pv-test smp: VCPUOP_up(1): {ret}, is_up {up1}");
    pvrt::ensure!(ret == 0, "VCPUOP_up(1) returned {ret}");
    pvrt::ensure!(up1 == 1, "VCPUOP_is_up(1) is {up1} after VCPUOP_up");
    Ok((entry, top, l4_mfn))
}

/// Step 4: turns with `SCHEDOP_yield`; each keeps its SSE registers and segment bases.
fn yield_rounds() -> Result<(), &'static str> {
    load_selectors(0)?;
    PHASE.store(PHASE_YIELD, Ordering::SeqCst);
    let (rounds, switches) = yield_together(0);
    wait_for("vCPU 1 to finish its yield rounds", || {
        YIELD_DONE1.load(Ordering::SeqCst)
    });
    check_sse(0, "the yield rounds");
    check_segments(0, "after the yield rounds");
    check_selectors(0, "after the yield rounds");
    pvrt::println!(
        "pv-test smp: vCPU 0: {rounds} yields, vCPU 1 progressed across {switches} of \
         them; xmm, MXCSR {:#x}, gs/fs bases and DS/ES/FS selectors intact",
        MXCSR[0]
    );
    pvrt::ensure!(
        switches > 0,
        "vCPU 1 never ran while vCPU 0 yielded {rounds} times"
    );
    Ok(())
}

/// vCPU `me`'s yield rounds: at least `YIELD_ROUNDS` `SCHEDOP_yield`s, counting those
/// across which the other vCPU's count moved; both go on until each has seen the other
/// move (on one physical CPU a yield runs the other; on two they run side by side, and
/// one may start before the other), or `YIELD_LIMIT` rounds. Returns (rounds, switches).
fn yield_together(me: usize) -> (u64, u64) {
    let other = 1 - me;
    let mut switches = 0u64;
    let mut rounds = 0u64;
    let mut last = ROUNDS[other].load(Ordering::SeqCst);
    loop {
        ROUNDS[me].fetch_add(1, Ordering::SeqCst);
        rounds += 1;
        let ret = pvrt::sched_yield();
        if ret != 0 {
            pvrt::fail!("vCPU {me}: SCHEDOP_yield returned {ret}");
        }
        let now = ROUNDS[other].load(Ordering::SeqCst);
        if now != last {
            switches += 1;
            last = now;
        }
        if rounds >= YIELD_ROUNDS && switches > 0 {
            YIELD_SAW[me].store(true, Ordering::SeqCst);
        }
        let both = YIELD_SAW.iter().all(|s| s.load(Ordering::SeqCst));
        if both || rounds >= YIELD_LIMIT {
            return (rounds, switches);
        }
    }
}

/// Step 5: an IPI to vCPU 1, blocked, arrives on vCPU 1 only.
fn ipi() -> Result<(), &'static str> {
    let bad = events::bind_ipi(2);
    pvrt::ensure!(
        bad == Err(errno(XenErrno::Enoent)),
        "EVTCHNOP_bind_ipi(vcpu 2) returned {bad:?}, expected -ENOENT"
    );
    let port = match events::bind_ipi(VCPU1) {
        Ok(p) => p,
        Err(ret) => pvrt::fail!("EVTCHNOP_bind_ipi(vcpu 1) returned {ret}"),
    };
    pvrt::ensure!(
        (port as usize) < HITS[1].len(),
        "EVTCHNOP_bind_ipi gave port {port}, above the {} this test counts",
        HITS[1].len()
    );
    events::clear_pending(port);
    events::set_masked(port, false);
    IPI_PORT.store(port, Ordering::SeqCst);
    PHASE.store(PHASE_IPI, Ordering::SeqCst);
    wait_for("vCPU 1 to block", || BLOCKING.load(Ordering::SeqCst));
    // Let it reach SCHEDOP_block: it stays blocked, nothing is pending for it.
    for _ in 0..5 {
        let _ = pvrt::sched_yield();
    }
    let early = HITS[1][port as usize].load(Ordering::SeqCst);
    pvrt::ensure!(
        early == 0,
        "vCPU 1 saw the IPI port {early} time(s) before the send"
    );
    let blocks = BLOCK_CALLS.load(Ordering::SeqCst);

    // vCPU 0's events are unmasked meanwhile: an IPI routed to it would show here.
    events::unmask_events();
    let ret = events::send(port);
    pvrt::ensure!(ret == 0, "EVTCHNOP_send({port}) returned {ret}");
    wait_or_report(
        "vCPU 1 to take the IPI and return from SCHEDOP_block",
        || IPI_WOKE.load(Ordering::SeqCst),
        || report_events(port),
    );
    for _ in 0..5 {
        let _ = pvrt::sched_yield();
    }
    events::mask_events();

    let on0 = HITS[0][port as usize].load(Ordering::SeqCst);
    let on1 = HITS[1][port as usize].load(Ordering::SeqCst);
    let block_ret = BLOCK_RET.load(Ordering::SeqCst) as i64;
    let calls = BLOCK_CALLS.load(Ordering::SeqCst);
    pvrt::println!(
        "pv-test smp: IPI port {port} bound to vCPU 1: {on1} upcall hit(s) on vCPU 1, {on0} on \
         vCPU 0; vCPU 1's SCHEDOP_block returned {block_ret} ({blocks} call(s) before the \
         send, {calls} in all)"
    );
    pvrt::ensure!(
        on0 == 0,
        "the IPI bound to vCPU 1 was delivered on vCPU 0 ({on0} time(s))"
    );
    pvrt::ensure!(on1 == 1, "vCPU 1 took the IPI {on1} time(s), expected 1");
    pvrt::ensure!(
        block_ret == 0,
        "vCPU 1's SCHEDOP_block returned {block_ret}"
    );
    let unmasked = UNMASKED_UPCALL.load(Ordering::SeqCst);
    pvrt::ensure!(
        unmasked == 0,
        "an upcall arrived with that vCPU's evtchn_upcall_mask clear (vCPUs {unmasked:#b})"
    );
    Ok(())
}

/// `SCHEDOP_poll(ports, nr_ports, timeout 0)` on one port.
fn sched_poll(port: u32) -> i64 {
    let ports = [port];
    let mut arg = SchedPoll {
        ports: GuestHandle(ports.as_ptr() as u64),
        nr_ports: 1,
        _cpad0: 0,
        timeout: 0,
    };
    // SAFETY: the hypervisor reads `arg` and the port array, both live across the call.
    unsafe {
        pvrt::hypercall2(
            Hypercall::SchedOp as u64,
            u64::from(SchedOp::Poll.raw()),
            (&raw mut arg) as u64,
        )
    }
}

/// Step 5b: vCPU 1 polls the masked IPI port; vCPU 0 keeps running and its send wakes it.
fn poll() -> Result<(), &'static str> {
    let port = IPI_PORT.load(Ordering::SeqCst);
    events::clear_pending(port);
    events::set_masked(port, true);
    PHASE.store(PHASE_POLL, Ordering::SeqCst);
    wait_for("vCPU 1 to poll", || POLLING.load(Ordering::SeqCst));
    for _ in 0..5 {
        let _ = pvrt::sched_yield();
    }
    pvrt::ensure!(
        !POLL_WOKE.load(Ordering::SeqCst),
        "vCPU 1's SCHEDOP_poll returned before anything was sent"
    );
    let ret = events::send(port);
    pvrt::ensure!(ret == 0, "EVTCHNOP_send({port}) returned {ret}");
    wait_for("vCPU 1 to return from SCHEDOP_poll", || {
        POLL_WOKE.load(Ordering::SeqCst)
    });
    let poll_ret = POLL_RET.load(Ordering::SeqCst) as i64;
    pvrt::ensure!(poll_ret == 0, "vCPU 1's SCHEDOP_poll returned {poll_ret}");
    events::clear_pending(port);
    events::set_masked(port, false);
    pvrt::println!(
        "pv-test smp: vCPU 1 polled the masked IPI port while vCPU 0 ran; the send woke it"
    );
    Ok(())
}

/// Step 6: vCPU 1 spins without hypercalls; vCPU 0's timer still gets it the CPU.
fn preemption() -> Result<(), &'static str> {
    let timer = match events::bind_virq(VIRQ_TIMER, 0) {
        Ok(p) => p,
        Err(ret) => pvrt::fail!("EVTCHNOP_bind_virq(VIRQ_TIMER, vcpu 0) returned {ret}"),
    };
    pvrt::ensure!(
        (timer as usize) < HITS[0].len(),
        "VIRQ_TIMER got port {timer}, above the {} this test counts",
        HITS[0].len()
    );
    events::clear_pending(timer);
    events::set_masked(timer, false);
    // Single-shot timers, as Linux uses them: Xen pauses a vCPU's periodic timer while the
    // vCPU is blocked, so only a single-shot deadline is sure to wake a blocked vCPU.
    let ticks = HITS[0][timer as usize].load(Ordering::SeqCst);

    PHASE.store(PHASE_SPIN, Ordering::SeqCst);
    let t0 = time::now();
    let deadline = t0 + WAIT_MS * NS_PER_MS;
    let mut wakeups = 0u64;
    while !SPIN_DONE.load(Ordering::SeqCst) {
        if SPINNING.load(Ordering::SeqCst) {
            RUNS_DURING_SPIN.fetch_add(1, Ordering::SeqCst);
        }
        if time::now() > deadline {
            pvrt::fail!(
                "vCPU 1's {SPIN_MS} ms spin did not end within {WAIT_MS} ms (spinning: {})",
                SPINNING.load(Ordering::SeqCst)
            );
        }
        // Block unmasks vCPU 0's events; its timer's upcall wakes it.
        let ret = time::set_singleshot_timer(time::now() + 5 * NS_PER_MS, 0);
        pvrt::ensure!(ret == 0, "VCPUOP_set_singleshot_timer returned {ret}");
        let ret = pvrt::sched_block();
        pvrt::ensure!(ret == 0, "vCPU 0: SCHEDOP_block returned {ret}");
        events::mask_events();
        wakeups += 1;
    }
    let ticks = HITS[0][timer as usize].load(Ordering::SeqCst) - ticks;
    let runs = RUNS_DURING_SPIN.load(Ordering::SeqCst);
    let seen = SPIN_SEEN.load(Ordering::SeqCst);
    pvrt::println!(
        "pv-test smp: vCPU 1 spun {SPIN_MS}+ ms without hypercalls: vCPU 0 ran {runs} time(s) \
         meanwhile (vCPU 1 saw {seen}); {ticks} timer upcall(s), {wakeups} wakeup(s) in {} ms",
        (time::now() - t0) / NS_PER_MS
    );
    pvrt::ensure!(
        runs > 0,
        "vCPU 0 never ran while vCPU 1 spun {SPIN_MAX_MS} ms without hypercalls: no timer \
         preemption"
    );
    pvrt::ensure!(
        ticks > 0,
        "vCPU 0's single-shot timer never fired during the spin"
    );
    Ok(())
}

/// Step 7: vCPU 1 takes itself down, comes back up from its `VCPUOP_down`, goes down again.
fn take_down() -> Result<(), &'static str> {
    PHASE.store(PHASE_DOWN, Ordering::SeqCst);
    wait_for(
        "VCPUOP_is_up(1) to become 0 after vCPU 1's VCPUOP_down",
        || smp::is_up(VCPU1) == 0,
    );
    for _ in 0..5 {
        let _ = pvrt::sched_yield();
    }
    pvrt::ensure!(
        !RESUMED.load(Ordering::SeqCst),
        "vCPU 1's VCPUOP_down on itself returned while it was down"
    );
    pvrt::println!("pv-test smp: vCPU 1 is down: is_up 0");
    let ret = smp::up(VCPU1);
    pvrt::ensure!(
        ret == 0,
        "VCPUOP_up(1) after its VCPUOP_down returned {ret}"
    );
    wait_for("vCPU 1 to resume from VCPUOP_down", || {
        RESUMED.load(Ordering::SeqCst)
    });
    let down_ret = DOWN_RET.load(Ordering::SeqCst) as i64;
    wait_for("vCPU 1 to go down again", || smp::is_up(VCPU1) == 0);
    pvrt::println!(
        "pv-test smp: VCPUOP_up(1) again: vCPU 1's VCPUOP_down returned {down_ret}; down again"
    );
    pvrt::ensure!(
        down_ret == 0,
        "vCPU 1's VCPUOP_down on itself returned {down_ret}"
    );
    Ok(())
}
