//! Test-only boot paths (`selftest=` on the command line), used by the QEMU integration
//! tests: check the running hypervisor and stop with a verdict, or fault on purpose to
//! show that the fatal paths report what happened.

use alloc::{boxed::Box, vec::Vec};

use ferrovisor::{cmdline::SelfTest, mm::Mfn};

use crate::{
    arch::x86_64::{debug_exit::Verdict, irq, trap},
    clock, dom0, fatal, memory,
};

pub const SELFTEST_FAULT_ADDRESS: u64 = 0x0dea_dbee_f000;

pub fn run(test: SelfTest) -> ! {
    match test {
        SelfTest::Halt => halt_after_checks(),
        SelfTest::PageFault => {
            log::info!("selftest: writing to unmapped address {SELFTEST_FAULT_ADDRESS:#x}");
            trap::provoke_page_fault(SELFTEST_FAULT_ADDRESS)
        }
        SelfTest::Panic => panic!("selftest: deliberate panic"),
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

/// Takes every free frame from the allocator and checks that none of them lies in a range
/// that must never be handed out (firmware, the image, the boot information, the modules,
/// the allocator's bitmap, dom0's reservation), then gives them all back.
fn frame_allocator_respects_reservations() -> bool {
    let mut guard = memory::FRAMES.lock();
    let Some(frames) = guard.as_mut() else {
        log::error!("selftest: no frame allocator");
        return false;
    };
    let free_before = frames.free_frames();
    let reserved = memory::reserved_ranges();
    let dom0 = dom0::reserved_extents();
    let mut taken: Vec<Mfn> = Vec::with_capacity(free_before as usize);
    let mut bad = None;
    while let Some(mfn) = frames.alloc() {
        let hit = reserved
            .iter()
            .find(|(_, r)| r.contains(mfn.addr()))
            .map(|(name, _)| *name)
            .or_else(|| {
                dom0.iter()
                    .any(|r| r.contains(mfn.addr()))
                    .then_some("dom0's memory")
            });
        if let (None, Some(name)) = (bad, hit) {
            bad = Some((mfn, name));
        }
        taken.push(mfn);
    }
    let handed_out = taken.len() as u64;
    let mut double_free = false;
    for mfn in taken {
        double_free |= frames.free(mfn).is_err();
    }
    let free_after = frames.free_frames();
    drop(guard);
    match bad {
        Some((mfn, name)) => {
            log::error!("selftest: frame allocator handed out {mfn}, which is in {name}");
            false
        }
        None if handed_out != free_before || free_after != free_before || double_free => {
            log::error!(
                "selftest: frame allocator accounting is off: {free_before} free, {handed_out} \
                 handed out, {free_after} free after giving them back"
            );
            false
        }
        None => {
            log::info!(
                "selftest: frame allocator: handed out all {handed_out} free frames, none in \
                 the {} reserved ranges or dom0's memory; all returned",
                reserved.len()
            );
            true
        }
    }
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

    if !frame_allocator_respects_reservations() {
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
