//! The PV test kernels (`tests/kernels/src/bin/`), each booted as dom0 from a GRUB entry:
//! one test per kernel. A kernel checks what it tests itself and prints its verdict
//! (`tests/kernels/src/contract.rs`); the contract with the hypervisor is that it copies
//! dom0's `console_io` output to the serial line, each line prefixed `(d0) `, and on
//! dom0's `SCHEDOP_shutdown` logs `dom0 shut down (poweroff)` and halts cleanly (QEMU
//! status 33), or logs `dom0 crashed` and exits with debug-exit 0x13 (status 39).

use ferrovisor_tests::{boot_test_kernel, Boot};

#[allow(
    dead_code,
    reason = "shared with the kernels; not every constant is checked here"
)]
#[path = "../kernels/src/contract.rs"]
mod contract;

/// dom0 gets 32 MiB: the kernels are small, and the builder's layout still spans several
/// page-table frames.
const HYPERVISOR_CMDLINE: &str = "dom0_mem=32M console=com1 loglvl=info debug_exit=0xf4";

/// Boots kernel `name`, waits for its PASS line and the hypervisor's poweroff, and checks
/// that nothing failed on the way. Returns the finished boot for further log checks.
///
/// Under `cargo xtask test --on-xen` the kernel boots on Xen 4.17 instead: the same
/// verdict line (Xen prints dom0's output without `(d0) `, which the runner drops from
/// every pattern), and the machine must stop after dom0's poweroff, which Xen logs in its
/// own words (see `Boot::expect_dom0_poweroff`).
fn run_kernel(name: &str, kernel_cmdline: &str) -> Boot {
    let mut b = boot_test_kernel(name, HYPERVISOR_CMDLINE, kernel_cmdline);
    let verdict = format!(
        r"\(d0\) {} {name}: (PASS|FAIL: .*)",
        contract::VERDICT_PREFIX
    );
    let matched = b.expect(&verdict);
    if matched.group(1) != "PASS" {
        b.fail(&format!("test kernel {name} failed: {}", matched.text));
    }
    b.expect_dom0_poweroff();
    b.assert_absent("FAIL");
    b.assert_absent("PANIC");
    b.assert_absent("FATAL");
    b.assert_dom0_not_crashed();
    b
}

#[test]
fn hello() {
    let mut b = run_kernel("hello", contract::HELLO_CMDLINE);
    b.find(&format!(
        r"\(d0\) pv-test hello: start_info magic xen-3\.0-x86_64, nr_pages \d+, cmdline '{}'",
        regex::escape(contract::HELLO_CMDLINE)
    ));
    b.find(r"\(d0\) pv-test hello: xen_version 4\.\d+");
    b.find(r"\(d0\) pv-test hello: hypercall 62 returned -38");
}

#[test]
fn hypercall_page() {
    let mut b = run_kernel("hypercall_page", "");
    b.find(r"\(d0\) pv-test hypercall_page: hypercalls through the page at 0x[0-9a-f]+");
    b.find(r"\(d0\) pv-test hypercall_page: xen_version 4\.\d+");
}

#[test]
fn traps() {
    let mut b = run_kernel("traps", "");
    b.find(r"\(d0\) pv-test traps: trap table installed");
    b.find(r"\(d0\) pv-test traps: native iretq to itself in kernel mode returned");
    b.find(r"\(d0\) pv-test traps: #BP handled");
    b.find(r"\(d0\) pv-test traps: #PF handled at rip 0x[0-9a-f]+: error code 0x0, vcpu_info\.arch\.cr2 0x12345000");
    b.find(
        r"\(d0\) pv-test traps: cpuid 0x40000000: eax 0x4000000[2-9a-f], signature 'XenVMMXenVMM'",
    );
    b.find(r"\(d0\) pv-test traps: cpuid 0x40000001: version 4\.17");
}

#[test]
fn usermode() {
    let mut b = run_kernel("usermode", "");
    b.find(r"\(d0\) pv-test usermode: user L4 mfn 0x[0-9a-f]+: pin \+ MMUEXT_NEW_USER_BASEPTR returned 0");
    b.find(r"\(d0\) pv-test usermode: syscall callback: 1 call\(s\), rax 0x5ca1, rdi 0x1234");
    b.find(r"\(d0\) pv-test usermode: user #UD: rip 0x4[0-9a-f]{5}, cs 0x[0-9a-f]*e033");
}

#[test]
fn attack() {
    let mut b = run_kernel("attack", "");
    b.find(r"\(d0\) pv-test attack: refused: update_va_mapping of the hypervisor image \(machine 0x200000\) writable: -16");
    b.find(r"\(d0\) pv-test attack: refused: mmu_update of L4 slot 260 to 0x0: -22");
    b.find(r"\(d0\) pv-test attack: refused: call of 0xffff820000200000: #PF bounced");
    b.find(r"\(d0\) pv-test attack: refused: \d+ PV MMU, descriptor, grant and memory requests naming hostile machine addresses");
    b.find(r"\(d0\) pv-test attack: \d+ random hypercalls returned");
    b.find(r"\(d0\) pv-test attack: unpinned its live L4 \(-?\d+\); still running");
    b.find(r"\(d0\) pv-test attack: (refused: giving back the shared-info page|Xen's rule: shared-info)");
    b.find(
        r"\(d0\) pv-test attack: refused: writing a freshly pinned L1 through a stale translation",
    );
    b.find(r"\(d0\) pv-test attack: still running");
}

#[test]
fn events() {
    /// Unix seconds of a UTC civil date and time (Howard Hinnant's `days_from_civil`).
    fn unix_secs(y: i64, m: i64, d: i64, hh: i64, mm: i64, ss: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400 + hh * 3600 + mm * 60 + ss
    }

    let mut b = run_kernel("events", "");
    b.find(r"\(d0\) pv-test events: VIRQ_TIMER bound to port [1-9]\d*");
    b.find(r"\(d0\) pv-test events: single-shot: block returned 0 after \d+ us, 1 upcall\(s\)");
    // Ferrovisor republishes the time record with every timer event; Xen about once a
    // second (the kernel then waits for it and prints how long it took).
    let updates = if b.on_xen() { r"\d+" } else { r"[1-9]\d*" };
    b.find(&format!(
        r"\(d0\) pv-test events: time: \d+ reads over 60 ms, {updates} updates seen, \d+ retries, 0 backwards"
    ));
    b.find(r"\(d0\) pv-test events: periodic 10 ms: \d+ upcalls");
    b.find(r"\(d0\) pv-test events: EVTCHNOP_status port \d+: status 4, vcpu 0, virq 0");
    b.find(r"\(d0\) pv-test events: send to closed port \d+: -22");
    b.find(r"\(d0\) pv-test events: VIRQ_TIMER bound again: Err\(-17\)");
    // Ferrovisor does not offer the FIFO ABI (-ENOSYS); Xen does, and refuses the
    // kernel's deliberately bogus control block (-EINVAL).
    let init_control = if b.on_xen() { "-22" } else { "-38" };
    b.find(&format!(
        r"\(d0\) pv-test events: EVTCHNOP_init_control: {init_control}"
    ));
    b.find(r"\(d0\) pv-test events: runstate area at 0x[0-9a-f]+: register returned 0, state 0");
    b.find(r"\(d0\) pv-test events: VCPUOP_register_vcpu_info\(mfn 0x[0-9a-f]+, offset 64\) returned 0");

    // The guest's wall clock (shared_info's wc_* plus system time) against the host's: QEMU's
    // RTC starts from the host clock in UTC, and the hypervisor anchors wc_* on the RTC.
    let wc =
        b.find(r"\(d0\) pv-test events: wallclock (\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})");
    let field = |i: usize| -> i64 { wc.group(i).parse().expect("the regex matched digits") };
    let guest = unix_secs(field(1), field(2), field(3), field(4), field(5), field(6));
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the host clock is after 1970")
        .as_secs() as i64;
    let skew = (host - guest).abs();
    b.check(
        skew <= 600,
        &format!(
            "the guest's wall clock {} is {skew} s away from the host's (allowed: 10 minutes)",
            wc.text
        ),
    );
}

#[test]
fn fpu() {
    let mut b = run_kernel("fpu", "");
    b.find(r"\(d0\) pv-test fpu: xmm0-15 loaded, MXCSR 0x7f80");
    b.find(r"\(d0\) pv-test fpu: after \d+ hypercalls, 100 int3 bounces, \d+ upcalls and \d+ ms blocked: MXCSR 0x7f80, xmm intact");
    b.find(r"\(d0\) pv-test fpu: lazy FPU \(fpu_taskswitch\(0\)\): 1 #NM");
    b.find(r"\(d0\) pv-test fpu: lazy FPU \(clts\): 1 #NM");
}

#[test]
fn ptwrite() {
    let mut b = run_kernel("ptwrite", "");
    b.find(r"\(d0\) pv-test ptwrite: (without the assist the write faults|Xen's rule)");
    b.find(r"\(d0\) pv-test ptwrite: mov remapped the page");
    b.find(r"\(d0\) pv-test ptwrite: xchg restored the page");
    b.find(r"\(d0\) pv-test ptwrite: a writable mapping of the L4 is refused");
}

#[test]
fn gdt() {
    let mut b = run_kernel("gdt", "");
    b.find(r"\(d0\) pv-test gdt: set_gdt of a writable page refused");
    b.find(r"\(d0\) pv-test gdt: set_gdt loaded 3 entries");
    b.find(r"\(d0\) pv-test gdt: loaded selector 0x13 from the guest GDT");
    b.find(r"\(d0\) pv-test gdt: update_descriptor accepted a segment and refused a TSS");
    if !ferrovisor_tests::on_xen() {
        b.find(r"\(d0\) pv-test gdt: a selector whose descriptor went away loads as null after a block \(0x13 -> 0x0\)");
    }
    b.find(r"\(d0\) pv-test gdt: LDT loaded, selector 0x7 from it, then dropped");
}

/// The `smp` test kernel as dom0 with two vCPUs (as Xen takes `dom0_max_vcpus`), under
/// hypervisor command line `cmdline` (`run` names the boot's logs); returns the boot for
/// more checks.
fn smp_kernel_with(run: &str, cmdline: &str) -> ferrovisor_tests::Boot {
    // `run_kernel`'s checks, with the two-vCPU command line.
    let mut b = ferrovisor_tests::boot_test_kernel_as(run, "smp", cmdline, "");
    let verdict = format!(r"\(d0\) {} smp: (PASS|FAIL: .*)", contract::VERDICT_PREFIX);
    let matched = b.expect(&verdict);
    if matched.group(1) != "PASS" {
        b.fail(&format!("test kernel smp failed: {}", matched.text));
    }
    b.expect_dom0_poweroff();
    b.assert_absent("FAIL");
    b.assert_absent("PANIC");
    b.assert_absent("FATAL");
    b.assert_dom0_not_crashed();

    b.find(r"\(d0\) pv-test smp: VCPUOP_is_up: vCPU 0 1, vCPU 1 0, vCPU 2 -2");
    b.find(r"\(d0\) pv-test smp: VCPUOP_up\(1\) before VCPUOP_initialise: -22");
    b.find(r"\(d0\) pv-test smp: VCPUOP_initialise\(1\): 0, again: -17; is_up 0");
    b.find(r"\(d0\) pv-test smp: VCPUOP_up\(1\): 0, is_up 1");
    b.find(r"\(d0\) pv-test smp: vCPU 1 up: rdi 1, rsi 0x53507631c0de0001, .*MXCSR 0x1f80, xmm zero; .*int3 handled");
    b.find(r"\(d0\) pv-test smp: vCPU 0: \d{3,} yields, vCPU 1 progressed across [1-9]\d* of them; xmm, MXCSR 0x7f80, gs/fs bases and DS/ES/FS selectors intact");
    b.find(
        r"\(d0\) pv-test smp: vCPU 1: \d{3,} yields, .*xmm, MXCSR 0x5f80, gs/fs bases and DS/ES/FS selectors intact",
    );
    b.find(r"\(d0\) pv-test smp: IPI port \d+ bound to vCPU 1: 1 upcall hit\(s\) on vCPU 1, 0 on vCPU 0; vCPU 1's SCHEDOP_block returned 0");
    b.find(
        r"\(d0\) pv-test smp: vCPU 1 polled the masked IPI port while vCPU 0 ran; the send woke it",
    );
    b.find(r"\(d0\) pv-test smp: vCPU 1 spun 50\+ ms without hypercalls: vCPU 0 ran [1-9]\d* time\(s\) meanwhile");
    b.find(r"\(d0\) pv-test smp: vCPU 1 is down: is_up 0");
    b.find(
        r"\(d0\) pv-test smp: VCPUOP_up\(1\) again: vCPU 1's VCPUOP_down returned 0; down again",
    );
    b
}

/// Two vCPUs on two physical CPUs (QEMU's `-smp 2`): the application processor starts
/// and the vCPUs run in parallel, events crossing between the CPUs.
#[test]
fn smp() {
    let mut b = smp_kernel_with(
        "smp",
        "dom0_mem=32M dom0_max_vcpus=2 console=com1 loglvl=info debug_exit=0xf4",
    );
    if !b.on_xen() {
        b.find(r"smp: CPU 1 up \(APIC id \d+\)");
        b.find(r"smp: 2 CPUs running \(1 answered the start-up IPIs\)");
    }
}

/// The same two vCPUs sharing one physical CPU (`maxcpus=1` leaves the second halted):
/// yields, blocking, and the tick's preemption of a vCPU that never calls the hypervisor.
#[test]
fn smp_on_one_cpu() {
    let mut b = smp_kernel_with(
        "smp-one-cpu",
        "dom0_mem=32M dom0_max_vcpus=2 maxcpus=1 console=com1 loglvl=info debug_exit=0xf4",
    );
    if !b.on_xen() {
        b.find(r"smp: maxcpus=1, only the boot CPU runs");
        b.assert_absent(r"smp: CPU 1 up");
    }
}

#[test]
fn privops() {
    let mut b = run_kernel("privops", "");
    b.find(r"\(d0\) pv-test privops: cr0 0x[0-9a-f]+, cr3 0x[0-9a-f]+ \(its L4\)");
    b.find(r"\(d0\) pv-test privops: CR0.TS toggled; clearing CR0.WP refused with #GP");
    b.find(r"\(d0\) pv-test privops: copy and clear page work; clearing its L4 refused");
    b.find(r"\(d0\) pv-test privops: empty LDT set");
}

#[test]
fn balloon() {
    let mut b = run_kernel("balloon", "");
    b.find(r"\(d0\) pv-test balloon: M2P at 0xffff800000000000-0x[0-9a-f]+ \(max_mfn 0x[0-9a-f]+\), [1-9]\d* extent\(s\) from frame 0x[0-9a-f]+");
    b.find(r"\(d0\) pv-test balloon: a mapped page and a foreign frame are not taken back");
    b.find(r"\(d0\) pv-test balloon: returned frame 0x[0-9a-f]+; reservation (\d+) -> (\d+)");
    b.find(r"\(d0\) pv-test balloon: got frame 0x[0-9a-f]+ back, zeroed");
    b.find(r"\(d0\) pv-test balloon: growing beyond its size refused");
}

/// A guest `iret` to a state the CPU refuses (a code selector its GDT lacks): the guest
/// kernel gets the #GP through its trap table at the refused `rip` and `cs`, as on Xen;
/// the hypervisor survives it (no fatal exception).
#[test]
fn badiret() {
    let mut b = run_kernel("badiret", "");
    b.find(r"\(d0\) pv-test badiret: returning with cs 0x8 through iret");
    b.find(r"\(d0\) pv-test badiret: exception 13 error code 0x8 at rip 0x[0-9a-f]+ cs 0x[8b]\b");
}
