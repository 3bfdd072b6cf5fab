//! Test-only boot paths (`selftest=` on the command line), used by the QEMU integration
//! tests: check the running hypervisor and stop with a verdict, or fault on purpose to
//! show that the fatal paths report what happened.

use alloc::{boxed::Box, vec::Vec};

use ferrovisor::cmdline::SelfTest;

use crate::{
    arch::x86_64::{debug_exit::Verdict, irq, trap},
    clock, fatal, memory,
};

pub const SELFTEST_FAULT_ADDRESS: u64 = 0xdead_beef_000;

pub fn run(test: SelfTest) -> ! {
    match test {
        SelfTest::Halt => halt_after_checks(),
        SelfTest::PageFault => {
            log::info!("selftest: writing to unmapped address {SELFTEST_FAULT_ADDRESS:#x}");
            trap::provoke_page_fault(SELFTEST_FAULT_ADDRESS)
        }
        SelfTest::StackOverflow => {
            log::info!("selftest: recursing until the main stack overflows");
            let depth = recurse(core::hint::black_box(0));
            log::error!("selftest: recursion returned at depth {depth}");
            fatal::halt(Verdict::Fatal)
        }
    }
}

/// Each level keeps 512 bytes live on the stack, so the recursion cannot be turned into a
/// loop and reaches the guard page quickly.
fn recurse(depth: u64) -> u64 {
    let mut buf = [0u8; 512];
    buf[depth as usize % 512] = depth as u8;
    core::hint::black_box(&mut buf);
    if depth == u64::MAX {
        return 0;
    }
    recurse(depth + 1) + buf[7] as u64
}

fn halt_after_checks() -> ! {
    let mut ok = true;

    // The tick: count timer interrupts against the TSC clock.
    const WANT_TICKS: u64 = 50;
    let (t0, n0) = (clock::ticks(), clock::now_ns());
    while clock::ticks() - t0 < WANT_TICKS && clock::now_ns() - n0 < 10_000_000_000 {
        irq::enable_and_wait();
    }
    let (ticks, ms) = (clock::ticks() - t0, (clock::now_ns() - n0) / 1_000_000);
    if ticks >= WANT_TICKS {
        log::info!("selftest: tick running: {ticks} ticks in {ms} ms");
    } else {
        log::error!("selftest: tick not running: {ticks} ticks in {ms} ms");
        ok = false;
    }

    // The heap.
    let v: Vec<u64> = (0..10_000).collect();
    let b = Box::new([7u8; 4096]);
    if v.iter().sum::<u64>() != 49_995_000 || b.iter().any(|&x| x != 7) {
        log::error!("selftest: heap allocations read back wrong");
        ok = false;
    }
    drop((v, b));

    // The frame allocator gives frames back.
    let before = memory::free_bytes();
    let taken = memory::FRAMES.lock().as_mut().and_then(|f| f.alloc());
    let during = memory::free_bytes();
    if let Some(mfn) = taken {
        let _ = memory::FRAMES.lock().as_mut().map(|f| f.free(mfn));
    }
    if taken.is_none() || during + 4096 != before || memory::free_bytes() != before {
        log::error!("selftest: frame allocator accounting is off");
        ok = false;
    }

    if ok {
        log::info!("selftest: passed");
        fatal::halt(Verdict::Halted)
    } else {
        log::error!("selftest: failed");
        fatal::halt(Verdict::Fatal)
    }
}
