//! The foundation's QEMU scenarios: one GRUB boot each, judged by the serial log and the
//! `isa-debug-exit` status. The log lines are the hypervisor's serial log contract; a line
//! may carry a prefix (timestamp, level), so no pattern is anchored at the line start.

use std::time::{SystemTime, UNIX_EPOCH};

use ferrovisor_tests::{boot, boot_with_memory, Boot, ExitOutcome, Modules};
use xtask::{build::PLACEHOLDER_SIZE, iso::DEFAULT_DOM0_CMDLINE};

const BOOT_CMDLINE: &str = "dom0_mem=262144 console=com1 loglvl=info bogus_opt=1 maxcpus=abc \
                            selftest=halt debug_exit=0xf4";

fn no_panic_or_fatal(b: &mut Boot) {
    b.assert_absent("PANIC");
    b.assert_absent("FATAL");
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[test]
fn days_from_civil_matches_known_dates() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    assert_eq!(days_from_civil(2024, 2, 29), 19_782);
}

/// Scenario A: a full boot with the default modules, a cmdline with bad options, the
/// platform report, the timer selftest, and a clean halt.
#[test]
fn boot_reports_platform_and_halts_cleanly() {
    let mut b = boot("boot", BOOT_CMDLINE, Modules::Default);
    b.expect(r"Ferrovisor \d+\.\d+\.\d+");
    b.expect(r"selftest: passed");
    b.expect_exit(ExitOutcome::HaltedCleanly);

    b.find(&format!("command line: {}", regex::escape(BOOT_CMDLINE)));
    b.find("bootloader: GRUB");

    let map = b.find("memory map:");
    b.find_from(r"0x0000000000100000-0x[0-9a-f]{16} available", map.end);
    let ram: u64 = b.find(r"memory: (\d+) MiB of RAM").parse(1).unwrap();
    b.check(
        (1000..=1024).contains(&ram),
        &format!("{ram} MiB of RAM, expected 1000..=1024 for -m 1024"),
    );

    b.find(r"cmdline: ignoring unknown option 'bogus_opt=1'");
    b.find(r"cmdline: ignoring malformed option 'maxcpus=abc'");

    let dom0 = b.find(&format!(
        r"dom0 kernel: module 0 at 0x([0-9a-f]+)-0x([0-9a-f]+) \((\d+) KiB\), command line '{}'",
        regex::escape(DEFAULT_DOM0_CMDLINE)
    ));
    let kib: usize = dom0.parse(3).unwrap();
    b.check(
        kib == PLACEHOLDER_SIZE / 1024,
        &format!(
            "dom0 kernel module of {kib} KiB; the placeholder is {} KiB",
            PLACEHOLDER_SIZE / 1024
        ),
    );
    b.find(r"dom0 initrd: module 1 at ");
    b.find(r"dom0_mem: 256 MiB");
    b.find(r"dom0: reserved 256 MiB \(65536 frames");

    let tsc = b.find(r"tsc: (\d+)\.(\d{3}) MHz");
    let mhz: u64 = tsc.parse(1).unwrap();
    b.check(
        mhz > 100,
        &format!("TSC at {} MHz, expected > 100", tsc.group(1)),
    );

    let wall = b.find(r"wallclock: (\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d) UTC");
    let f: Vec<i64> = (1..=6).map(|i| wall.parse(i).unwrap()).collect();
    let guest = days_from_civil(f[0], f[1], f[2]) * 86_400 + f[3] * 3600 + f[4] * 60 + f[5];
    let host = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the host clock is after 1970")
        .as_secs() as i64;
    b.check(
        (guest - host).abs() <= 600,
        &format!(
            "wallclock {} is {} s away from the host's UTC time (QEMU's RTC follows it)",
            wall.text,
            guest - host
        ),
    );

    b.find(r"apic: xAPIC");
    b.find(r"timer at 100 Hz");

    let tick = b.find(r"selftest: tick running: (\d+) ticks in (\d+) ms");
    let ticks: u64 = tick.parse(1).unwrap();
    let ms: u64 = tick.parse(2).unwrap();
    b.check(ticks >= 20, &format!("{ticks} ticks, expected at least 20"));
    b.check(
        ticks * 10 / 4 <= ms && ms <= ticks * 10 * 4,
        &format!("{ticks} ticks in {ms} ms: not one tick every ~10 ms"),
    );
    let frames = b.find(
        r"selftest: frame allocator: handed out all (\d+) free frames, none in the (\d+) reserved ranges",
    );
    let handed_out: u64 = frames.parse(1).unwrap();
    // 1024 MiB of RAM, 256 MiB of it dom0's and 256 MiB the heap's (a quarter of RAM):
    // most of the remaining 512 MiB must have been free.
    b.check(
        handed_out > 120_000,
        &format!("only {handed_out} frames were free, expected most of 512 MiB"),
    );
    b.assert_last_line("hypervisor halted");
    no_panic_or_fatal(&mut b);
}

/// Scenario B: a page fault in the hypervisor is reported with its registers and halts.
#[test]
fn page_fault_in_hypervisor_is_fatal_and_reported() {
    let mut b = boot(
        "fault",
        "console=com1 selftest=pagefault debug_exit=0xf4",
        Modules::Default,
    );
    b.expect(r"FATAL: page fault \(#PF\) in the hypervisor");
    b.expect_exit(ExitOutcome::Fatal);
    b.find(r"cr2=0x00000deadbeef000");
    b.find(r"error code 0x[0-9a-f]+ \(write");
    b.find(r"rax=0x[0-9a-f]{16}");
    b.find(r"rip=0xffff82[0-9a-f]{10}");
    // The hypervisor's own selectors (Xen's reserved GDT range) were live.
    b.find(r"cs=0x000000000000e008");
    b.assert_last_line("hypervisor halted");
}

/// Scenario C: a stack overflow hits the guard page and is caught by the #DF handler on its
/// own stack.
#[test]
fn stack_overflow_is_caught_by_double_fault_handler() {
    let mut b = boot(
        "stack-overflow",
        "console=com1 selftest=overflow debug_exit=0xf4",
        Modules::Default,
    );
    b.expect(r"FATAL: double fault \(#DF\) in the hypervisor");
    b.expect_exit(ExitOutcome::Fatal);
    b.find(r"stack overflow: guard page of the main stack hit");
    b.assert_last_line("hypervisor halted");
}

/// Scenario D: no dom0 module and an impossible dom0_mem: refuse to boot, without a panic.
#[test]
fn refuses_to_boot_without_dom0_module() {
    let mut b = boot(
        "refuse",
        "dom0_mem=64G console=com1 debug_exit=0xf4",
        Modules::None,
    );
    b.expect(r"cannot start dom0; halting");
    b.expect_exit(ExitOutcome::RefusedToBoot);
    b.find(r"no dom0 kernel: the boot entry has no module2 line");
    b.find(r"dom0_mem: cannot reserve 64 GiB for dom0");
    b.assert_last_line("hypervisor halted");
    no_panic_or_fatal(&mut b);
}

/// Scenario E: a panic prints its location and message, and nothing follows it.
#[test]
fn panic_reports_location_and_stops_output() {
    let mut b = boot(
        "panic",
        "console=com1 selftest=panic debug_exit=0xf4",
        Modules::Default,
    );
    b.expect(r"PANIC at kernel/src/selftest\.rs:\d+:\d+: selftest: deliberate panic");
    b.expect_exit(ExitOutcome::Fatal);
    b.assert_last_line("hypervisor halted");
}

/// Scenario F: ring 3. User code makes a SYSCALL (arguments in, result back), is
/// interrupted by the tick several times, and raises #UD: each arrives as a ring-3 event
/// with the right registers, not as a hypervisor fault.
#[test]
fn ring3_syscall_interrupts_and_exceptions_reach_the_hypervisor() {
    let mut b = boot(
        "ring3",
        "console=com1 selftest=ring3 debug_exit=0xf4",
        Modules::Default,
    );
    b.expect(r"selftest: ring 3: entering user code at 0x400000");
    b.expect(r"selftest: ring 3: syscall from cs=0xe033 rip=0x40000c with rax=0x1234 rdi=0x5678");
    b.expect(r"selftest: ring 3: 5 timer interrupts taken from ring 3 at rip=0x40000f");
    b.expect(
        r"selftest: ring 3: #UD at rip=0x400011 cs=0xe033, syscall result 0x42 seen in ring 3",
    );
    b.expect(r"selftest: passed");
    b.expect_exit(ExitOutcome::HaltedCleanly);
    b.assert_last_line("hypervisor halted");
    no_panic_or_fatal(&mut b);
}

/// Scenario G: 6 GiB of RAM. Memory above 4 GiB is direct-mapped (with 1 GiB pages where
/// the CPU has them), handed out by the frame allocator and checked by the selftest.
#[test]
fn large_memory_is_mapped_and_allocated() {
    let mut b = boot_with_memory(
        "large-memory",
        "dom0_mem=1G console=com1 selftest=halt debug_exit=0xf4",
        Modules::Default,
        6144,
    );
    b.expect(r"selftest: passed");
    b.expect_exit(ExitOutcome::HaltedCleanly);
    let ram: u64 = b.find(r"memory: (\d+) MiB of RAM").parse(1).unwrap();
    b.check(
        (6000..=6144).contains(&ram),
        &format!("{ram} MiB of RAM, expected ~6 GiB"),
    );
    let mapped: u64 = b
        .find(r"paging: hypervisor tables at .*, (\d+) MiB direct-mapped")
        .parse(1)
        .unwrap();
    b.check(
        mapped >= ram,
        &format!("{mapped} MiB direct-mapped for {ram} MiB of RAM"),
    );
    b.find(r"dom0: reserved 1 GiB \(262144 frames");
    let frames: u64 = b
        .find(r"selftest: frame allocator: handed out all (\d+) free frames")
        .parse(1)
        .unwrap();
    // Over 3.8 GiB free after dom0 and the heap: frames above 4 GiB were handed out too.
    b.check(
        frames > 1_000_000,
        &format!("only {frames} frames handed out"),
    );
    no_panic_or_fatal(&mut b);
}

/// Scenario H: a dom0 module that is not a kernel (the placeholder file) is refused with
/// a message saying what is wrong, and the hypervisor stops instead of running it.
#[test]
fn refuses_a_module_that_is_not_a_kernel() {
    let mut b = boot(
        "bad-kernel",
        "dom0_mem=64M console=com1 debug_exit=0xf4",
        Modules::Default,
    );
    b.expect(r"the dom0 kernel \(module 0\) is unusable: .*not a Linux bzImage or ELF kernel");
    b.expect(r"cannot start dom0; halting");
    b.expect_exit(ExitOutcome::RefusedToBoot);
    no_panic_or_fatal(&mut b);
}
