//! `fpu`: the guest's SSE state survives the hypervisor, and lazy FPU switching works.
//!
//! * Distinct values in xmm0-xmm15 and a non-default MXCSR (round toward zero) survive
//!   thousands of hypercalls, exceptions bounced through the trap table (`int3` and its
//!   `iret`), event upcalls and timer interrupts while spinning, and 50 ms of
//!   `SCHEDOP_block`. The kernel is built soft-float, so no compiled code touches these
//!   registers: only the explicit `movdqu`/`ldmxcsr` here do.
//! * `fpu_taskswitch(1)` sets the guest's CR0.TS: the next SSE instruction raises #NM; the
//!   kernel's #NM handler clears TS (first with `fpu_taskswitch(0)`, then with `clts`,
//!   which the hypervisor emulates) and returns; the instruction re-executes and succeeds,
//!   and the other registers keep their values.
//!
//! An SSE instruction that raises #UD means the hypervisor did not enable SSE for guests
//! (CR4.OSFXSR/OSXMMEXCPT): that is reported as such.
#![cfg_attr(target_os = "none", no_std, no_main)]

use core::sync::atomic::{AtomicU64, Ordering};

use ferrovisor_abi::xen::{
    event_channel::EvtchnOp, hypercall::Hypercall, version::XenVersionOp, xen::StartInfo,
};
use pvrt::{
    events::{self, VIRQ_TIMER},
    shared_info,
    sse::{first_difference, load_xmm, mxcsr, set_mxcsr, store_xmm, Xmm},
    time::{self, NS_PER_MS},
    traps::{self, vector, Trap},
};

pvrt::test_kernel!(name: "fpu", main: test_main);

/// MXCSR with every exception masked (the default 0x1f80) and rounding toward zero
/// (RC = 11b, bits 13-14).
const MXCSR_TEST: u32 = 0x7f80;

/// Which way the #NM handler clears TS.
const CLEAR_WITH_HYPERCALL: u64 = 1;
const CLEAR_WITH_CLTS: u64 = 2;
static NM_MODE: AtomicU64 = AtomicU64::new(0);
static NM_COUNT: AtomicU64 = AtomicU64::new(0);
static NM_RIP: AtomicU64 = AtomicU64::new(0);
static NM_CLEAR_RET: AtomicU64 = AtomicU64::new(0);
/// `int3`s handled while the registers are loaded.
static BP_COUNT: AtomicU64 = AtomicU64::new(0);
/// Set while an SSE instruction is first tried: a #UD then is the finding.
static SSE_PROBE: AtomicU64 = AtomicU64::new(0);

fn pattern(seed: u8) -> Xmm {
    let mut x = [[0u8; 16]; 16];
    for (r, reg) in x.iter_mut().enumerate() {
        for (b, byte) in reg.iter_mut().enumerate() {
            *byte = seed
                .wrapping_add((r as u8).wrapping_mul(16))
                .wrapping_add(b as u8)
                ^ 0xa5;
        }
    }
    x
}

fn fpu_taskswitch(set: u64) -> i64 {
    // SAFETY: no memory argument; it only changes the guest's CR0.TS.
    unsafe { pvrt::hypercall1(Hypercall::FpuTaskswitch.raw(), set) }
}

fn handler(trap: &mut Trap<'_>) -> bool {
    let v = trap.frame.vector;
    if v == u64::from(vector::UD) && SSE_PROBE.load(Ordering::SeqCst) != 0 {
        pvrt::fail!(
            "an SSE instruction (movdqu) raised #UD at rip {:#x}: the hypervisor does not \
             enable SSE for guests (CR4.OSFXSR/OSXMMEXCPT clear)",
            trap.frame.rip
        );
    }
    if v == u64::from(vector::BP) {
        BP_COUNT.fetch_add(1, Ordering::SeqCst);
        return true;
    }
    if v != u64::from(vector::NM) {
        return false;
    }
    NM_COUNT.fetch_add(1, Ordering::SeqCst);
    NM_RIP.store(trap.frame.rip, Ordering::SeqCst);
    match NM_MODE.load(Ordering::SeqCst) {
        CLEAR_WITH_HYPERCALL => {
            NM_CLEAR_RET.store(fpu_taskswitch(0) as u64, Ordering::SeqCst);
        }
        CLEAR_WITH_CLTS => {
            // SAFETY: `clts` in ring 3 faults with #GP(0), which the hypervisor emulates
            // for the guest kernel (it clears the guest's TS); nothing else changes.
            #[cfg(target_os = "none")]
            unsafe {
                core::arch::asm!("clts", options(nostack))
            };
            NM_CLEAR_RET.store(0, Ordering::SeqCst);
        }
        // An #NM nobody expected: fail with the frame.
        _ => return false,
    }
    true
}

fn test_main(si: &StartInfo) -> Result<(), &'static str> {
    if let Err(ret) = shared_info::map(si) {
        pvrt::fail!("update_va_mapping of shared_info returned {ret}");
    }
    traps::set_handler(handler);
    if let Err(e) = traps::install() {
        pvrt::fail!("installing the trap table and callbacks: {e}");
    }
    events::install();
    let ret = time::stop_periodic_timer();
    pvrt::ensure!(ret == 0, "VCPUOP_stop_periodic_timer returned {ret}");
    let port = match events::bind_virq(VIRQ_TIMER, 0) {
        Ok(p) => p,
        Err(ret) => pvrt::fail!("EVTCHNOP_bind_virq(VIRQ_TIMER) returned {ret}"),
    };
    events::set_masked(port, false);
    events::discard(port);

    let want = pattern(0x11);
    SSE_PROBE.store(1, Ordering::SeqCst);
    load_xmm(&want);
    set_mxcsr(MXCSR_TEST);
    SSE_PROBE.store(0, Ordering::SeqCst);
    pvrt::println!("pv-test fpu: xmm0-15 loaded, MXCSR {MXCSR_TEST:#x}");
    let stats = survive(port)?;
    let got = store_xmm();
    let csr = mxcsr();
    pvrt::println!(
        "pv-test fpu: after {} hypercalls, {} int3 bounces, {} upcalls and {} ms blocked: \
         MXCSR {csr:#x}, xmm {}",
        stats.hypercalls,
        BP_COUNT.load(Ordering::SeqCst),
        stats.upcalls,
        stats.blocked_ms,
        if got == want { "intact" } else { "changed" }
    );
    if let Some((r, g, w)) = first_difference(&got, &want) {
        pvrt::fail!(
            "xmm{r} is {g:#034x} after hypervisor entries, expected {w:#034x}: the guest's SSE \
             state was not preserved"
        );
    }
    pvrt::ensure!(
        csr == MXCSR_TEST,
        "MXCSR is {csr:#x} after hypervisor entries, expected {MXCSR_TEST:#x}"
    );

    lazy(CLEAR_WITH_HYPERCALL, "fpu_taskswitch(0)", &want, 0x40)?;
    lazy(CLEAR_WITH_CLTS, "clts", &want, 0x80)?;
    Ok(())
}

struct Stats {
    hypercalls: u64,
    upcalls: u64,
    blocked_ms: u64,
}

/// Hypervisor entries of every kind while the registers hold the pattern.
fn survive(port: u32) -> Result<Stats, &'static str> {
    let mut hypercalls = 0u64;
    for i in 0..2000u32 {
        let ret = match i % 4 {
            0 => pvrt::xen_version(XenVersionOp::Version),
            1 => pvrt::sched_yield(),
            2 => time::set_timer_op(0),
            _ => {
                let mut port_arg = port;
                // SAFETY: EVTCHNOP_unmask reads the 4-byte port.
                unsafe { events::event_channel_op(EvtchnOp::Unmask, (&raw mut port_arg).cast()) }
            }
        };
        pvrt::ensure!(ret >= 0, "hypercall {i} returned {ret}");
        hypercalls += 1;
    }
    for _ in 0..100 {
        // SAFETY: `int3` enters the #BP handler, which returns to the next instruction.
        #[cfg(target_os = "none")]
        unsafe {
            core::arch::asm!("int3")
        };
    }
    pvrt::ensure!(
        BP_COUNT.load(Ordering::SeqCst) == 100,
        "{} of 100 int3s reached the handler",
        BP_COUNT.load(Ordering::SeqCst)
    );

    // Timer interrupts and upcalls while running: 50 ms under a 10 ms periodic timer.
    let upcalls = events::upcalls();
    let ret = time::set_periodic_timer(10 * NS_PER_MS);
    pvrt::ensure!(ret == 0, "VCPUOP_set_periodic_timer returned {ret}");
    hypercalls += 1;
    events::unmask_events();
    let start = time::now();
    time::spin_until(start + 50 * NS_PER_MS);
    // A host that starves the emulator delivers fewer ticks: wait for a few more upcalls
    // (bounded), since the point is upcalls interleaved with FPU use, not their rate.
    while events::upcalls() - upcalls < 3 && time::now() < start + 2 * time::NS_PER_SEC {
        core::hint::spin_loop();
    }
    let ret = time::stop_periodic_timer();
    pvrt::ensure!(ret == 0, "VCPUOP_stop_periodic_timer returned {ret}");
    hypercalls += 1;

    // 50 ms blocked.
    let t0 = time::now();
    let ret = time::set_singleshot_timer(t0 + 50 * NS_PER_MS, 0);
    pvrt::ensure!(ret == 0, "VCPUOP_set_singleshot_timer returned {ret}");
    let mut blocks = 0;
    while time::now() < t0 + 50 * NS_PER_MS && blocks < 100 {
        let ret = pvrt::sched_block();
        pvrt::ensure!(ret == 0, "SCHEDOP_block returned {ret}");
        blocks += 1;
        hypercalls += 1;
    }
    let blocked = time::now() - t0;
    events::mask_events();
    let upcalls = events::upcalls() - upcalls;
    pvrt::ensure!(
        upcalls >= 2,
        "only {upcalls} event upcalls during 50 ms of a periodic timer and a 50 ms block"
    );
    Ok(Stats {
        hypercalls,
        upcalls,
        blocked_ms: blocked / NS_PER_MS,
    })
}

/// Lazy FPU: with TS set, `movdqu xmm0` faults with #NM; the handler clears TS (`how`) and
/// the instruction runs again. The other registers keep `base`.
fn lazy(mode: u64, how: &str, base: &Xmm, seed: u8) -> Result<(), &'static str> {
    let fresh = pattern(seed);
    NM_MODE.store(mode, Ordering::SeqCst);
    let count = NM_COUNT.load(Ordering::SeqCst);
    let ret = fpu_taskswitch(1);
    pvrt::ensure!(ret == 0, "fpu_taskswitch(1) returned {ret}");
    let at: u64;
    // SAFETY: `movdqu xmm0` reads 16 bytes of `fresh`; the #NM it raises goes to the
    // handler, which clears TS and returns to it. xmm0 is this test's (soft-float).
    #[cfg(target_os = "none")]
    unsafe {
        core::arch::asm!(
            "lea {at}, [rip + 2f]",
            "2:",
            "movdqu xmm0, [{p}]",
            at = out(reg) at,
            p = in(reg) fresh[0].as_ptr(),
            options(nostack, readonly),
        );
    }
    #[cfg(not(target_os = "none"))]
    {
        at = 0;
    }
    NM_MODE.store(0, Ordering::SeqCst);
    let got = store_xmm();
    let nms = NM_COUNT.load(Ordering::SeqCst) - count;
    let rip = NM_RIP.load(Ordering::SeqCst);
    let clear_ret = NM_CLEAR_RET.load(Ordering::SeqCst) as i64;
    pvrt::println!(
        "pv-test fpu: lazy FPU ({how}): {nms} #NM at rip {rip:#x} (movdqu at {at:#x}), clear \
         returned {clear_ret}, xmm0 {}",
        if got[0] == fresh[0] {
            "loaded"
        } else {
            "not loaded"
        }
    );
    pvrt::ensure!(
        nms == 1,
        "after fpu_taskswitch(1) the first SSE instruction raised {nms} #NM (expected 1)"
    );
    pvrt::ensure!(
        rip == at,
        "#NM frame rip {rip:#x}, expected the faulting movdqu at {at:#x}"
    );
    pvrt::ensure!(
        clear_ret == 0,
        "{how} in the #NM handler returned {clear_ret}"
    );
    pvrt::ensure!(
        got[0] == fresh[0],
        "xmm0 is {:#034x} after the re-executed movdqu, expected {:#034x}",
        u128::from_le_bytes(got[0]),
        u128::from_le_bytes(fresh[0])
    );
    let mut want = *base;
    want[0] = fresh[0];
    if let Some((r, g, w)) = first_difference(&got, &want) {
        pvrt::fail!("xmm{r} is {g:#034x} after the #NM round trip, expected {w:#034x}");
    }
    // TS is clear again: another SSE instruction runs without #NM.
    load_xmm(base);
    let nms = NM_COUNT.load(Ordering::SeqCst) - count;
    pvrt::ensure!(
        nms == 1,
        "SSE raised #NM again after the handler cleared TS with {how}"
    );
    Ok(())
}
