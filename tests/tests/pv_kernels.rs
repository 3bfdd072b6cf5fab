//! The PV test kernels (`tests/kernels/src/bin/`), each booted as dom0 from a GRUB entry:
//! one test per kernel. A kernel checks what it tests itself and prints its verdict
//! (`tests/kernels/src/contract.rs`); the contract with the hypervisor is that it copies
//! dom0's `console_io` output to the serial line, each line prefixed `(d0) `, and on
//! dom0's `SCHEDOP_shutdown` logs `dom0 shut down (poweroff)` and halts cleanly (QEMU
//! status 33), or logs `dom0 crashed` and exits with debug-exit 0x13 (status 39).

use ferrovisor_tests::{boot_test_kernel, Boot, ExitOutcome};

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
    b.expect(r"dom0 shut down \(poweroff\)");
    b.expect_exit(ExitOutcome::HaltedCleanly);
    b.assert_absent("FAIL");
    b.assert_absent("PANIC");
    b.assert_absent("FATAL");
    b.assert_absent("dom0 crashed");
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
    b.find(r"\(d0\) pv-test attack: \d+ random hypercalls returned");
    b.find(r"\(d0\) pv-test attack: still running");
}
