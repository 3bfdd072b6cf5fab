//! Domains made by dom0: the `control` test kernel boots as dom0 with the `guest` test
//! kernel as its second module, builds a domain from it through Ferrovisor's control
//! interface, cooperates with it through xenstore, an event channel, a grant and its
//! console, and destroys it (see `tests/kernels/src/bin/control.rs` and `guest.rs`). Domain
//! ids rise as in Xen: the scratch domain is d1, the guest d2, the pair d3 and d4, the
//! flooding guest d5. The hypervisor mirrors domU consoles to its log
//! (`guest_console_mirror=on`, off by default) so that the guests' lines can be checked
//! here, as the administrator would see them.
//! Ferrovisor only: the control interface is its own.

use ferrovisor_tests::{boot, test_kernel, Modules};

#[allow(
    dead_code,
    reason = "shared with the kernels; not every constant is checked here"
)]
#[path = "../kernels/src/contract.rs"]
mod contract;

#[test]
fn dom0_builds_a_guest_that_cooperates_and_is_torn_down_without_leaks() {
    let mut b = boot(
        "domains-control",
        "dom0_mem=32M console=com1 loglvl=info debug_exit=0xf4 guest_console_mirror=on",
        Modules::Dom0KernelAndModule {
            kernel: test_kernel("control"),
            cmdline: "",
            module: test_kernel("guest"),
        },
    );
    // Serial input goes to dom0 first.
    b.expect(r"\(d0\) pv-test control: type a line");
    b.send("serial-hello\r");
    b.expect(r"\(d0\) pv-test control: console input 'serial-hello'");
    // With the guest alive, three Ctrl-A move it to the guest, three more to the
    // hypervisor, three more back to dom0, which then gets the next line.
    b.expect(r"\(d0\) pv-test control: switch the serial input around, then type a line");
    b.send("\x01\x01\x01");
    b.expect(r"\*\*\* serial input to d2");
    b.send("\x01\x01\x01");
    b.expect(r"\*\*\* serial input to the hypervisor");
    b.send("\x01\x01\x01");
    b.expect(r"\*\*\* serial input to d0");
    b.send("back\r");
    b.expect(r"\(d0\) pv-test control: console input 'back'");
    let verdict = format!(
        r"\(d0\) {} control: (PASS|FAIL: .*)",
        contract::VERDICT_PREFIX
    );
    let m = b.expect(&verdict);
    if m.group(1) != "PASS" {
        b.fail(&format!("the control kernel failed: {}", m.text));
    }
    b.expect_dom0_poweroff();
    // The guest's half, in its own words.
    b.find(r"\(d2\) pv-test guest: domctl, sysctl, foreign populate and an ungranted map refused");
    b.find(r"\(d2\) pv-test guest: xenstore refused dom0's home, a 3000-byte value \(E\w+\) and watch \d+ \(E\w+\)");
    b.find(r"\(d2\) pv-test guest: dom0's reply arrived through the grant");
    b.find(r"\(d2\) pv-test guest: PASS");
    // Its console ring, mirrored to the log; dom0's input echoed back; the shutdown
    // request seen through xenstore.
    b.find(r"\(d2\) guest console: hello through the ring");
    b.find(r"\(d2\) guest console: got ping");
    b.find(r"\(d2\) pv-test guest: the toolstack asked for a poweroff");
    b.find(r"\(d0\) pv-test control: read \d+ bytes of the guest's console, with 'guest console: got ping'");
    // dom0's half.
    b.find(
        r"\(d0\) pv-test control: built d2: entry 0x[0-9a-f]+, store port \d+, console port \d+",
    );
    b.find(r"\(d0\) pv-test control: vCPU 0 of the paused guest starts at 0x[0-9a-f]+, cr3 0x[0-9a-f]+");
    b.find(r"\(d0\) pv-test control: mapped the guest's grant \(status 0\)");
    b.find(r"\(d0\) pv-test control: the guest shut down \(poweroff\)");
    b.find(r"\(d0\) pv-test control: guest destroyed, all \d+ free frames back");
    b.find(r"\(d0\) pv-test control: mapped the guest's start_info through mmu_update");
    // The frame dom0 still mapped keeps the destroyed guest dying until it is unmapped.
    b.find(r"d2: destroyed .guest1.: \d+ frames freed, 1 still referenced elsewhere");
    b.find(r"d2: its last frames came back; gone");
    // Two guests on their own: one offers, the other takes.
    b.find(r"\(d\d+\) pv-test guest: pair a offers port \d+ and grant 9 to d\d+");
    b.find(r"\(d\d+\) pv-test guest: pair b answered in d\d+'s page and signalled");
    b.find(r"\(d\d+\) pv-test guest: pair a found d\d+'s answer in its page");
    b.find(r"\(d0\) pv-test control: d\d+ and d\d+ cooperated through xenstore, an event channel and a grant, and were destroyed with every frame back");
    b.find(r"d1: destroyed .scratch.: 513 frames freed\n");
    // A guest flooding its console: dom0 found the log ring still holding the boot and
    // only a burst of the flood; the serial line shows the same.
    let m = b.find(&format!(
        r"\(d0\) pv-test control: flood: d(\d+) wrote {} lines in \d+ ms; the log kept (\d+), said (\d+) were suppressed",
        contract::FLOOD_LINES + 1
    ));
    let (id, kept, suppressed): (u32, usize, u64) = (
        m.group(1).parse().expect("a number"),
        m.group(2).parse().expect("a number"),
        m.group(3).parse().expect("a number"),
    );
    let log = b.session.stripped_output();
    let mirrored = log
        .lines()
        .filter(|l| l.starts_with(&format!("(d{id}) ")))
        .count();
    assert_eq!(mirrored, kept, "d{id}'s lines on the serial line");
    assert!(
        kept >= contract::GUEST_LOG_BURST as usize && kept < 100,
        "d{id}: {kept} lines of {} mirrored",
        contract::FLOOD_LINES
    );
    assert!(suppressed >= u64::from(contract::FLOOD_LINES) + 1 - 100);
    b.find(&format!(r"warning: \(d{id}\) \.\.\. \d+ lines suppressed"));
    b.find(&format!(r"d{id}: destroyed .flood.: \d+ frames freed"));
    b.assert_absent("FAIL");
    b.assert_absent("PANIC");
    b.assert_dom0_not_crashed();
}
