//! Debian's unmodified Linux kernel (`linux-image-amd64`, fetched into `target/linux/`)
//! boots as dom0 with the busybox initramfs `cargo xtask` builds, to a shell on its
//! console; the test types commands on the serial line and checks what they print,
//! among them the control tool `fv` (built into the initramfs) driving a second domain.

use std::time::{SystemTime, UNIX_EPOCH};

use ferrovisor_tests::{boot, Modules};

/// The hypervisor line of the product brief's GRUB entry, plus `maxcpus=2` (QEMU has two
/// CPUs; dom0 gets a vCPU per CPU, as in Xen) and the debug exit that turns dom0's
/// poweroff into QEMU's exit status.
const HYPERVISOR_CMDLINE: &str =
    "dom0_mem=262144 maxcpus=2 console=com1 loglvl=info debug_exit=0xf4";
const KERNEL_CMDLINE: &str = "root=/dev/xvda ro console=hvc0 nousb";

#[test]
fn debian_linux_boots_as_dom0_to_a_shell() {
    let linux = xtask::linux::dom0().unwrap_or_else(|e| panic!("{e:#}"));
    let mut b = boot(
        "linux-dom0",
        HYPERVISOR_CMDLINE,
        Modules::Dom0KernelAndModule {
            kernel: &linux.vmlinuz,
            cmdline: KERNEL_CMDLINE,
            module: &linux.initrd,
        },
    );
    // Two Linux boots under TCG (dom0, then a domU), each decompressing its kernel: more
    // than the usual boot allowance on a slow or busy machine.
    b.allow(std::time::Duration::from_secs(480));
    b.expect(r"dom0: Linux \S+ ready");
    b.expect(r"Enter 'help' for a list of built-in commands");

    // Each command prints a marker computed by the shell, so that the echo of the typed
    // line (which holds the command, not its result) never matches. The prompt itself
    // ends no line, so the log never shows it: the next command is typed after the
    // previous one's marker, and the terminal keeps it until the shell reads it.
    let run = |b: &mut ferrovisor_tests::Boot, cmd: &str, pattern: &str| {
        b.send(&format!("{cmd}\r"));
        b.expect(pattern)
    };
    let m = run(&mut b, "echo R=$(uname -r)", r"R=(\d\S*)");
    assert_eq!(m.group(1), linux.version, "uname -r");

    // dom0 is privileged but not Xen's initial domain: no `control_d` capability.
    run(&mut b, "echo C=[$(cat /proc/xen/capabilities)]", r"C=\[\]");

    let m = run(
        &mut b,
        "echo M=$(free -m | awk '/Mem:/ {print $2}')",
        r"M=(\d+)",
    );
    let total: u64 = m.group(1).parse().expect("a number");
    assert!(
        (180..=256).contains(&total),
        "free -m says {total} MiB in a 256 MiB dom0"
    );

    let m = run(&mut b, "echo T=$(date -u +%s)", r"T=(\d+)");
    let guest: u64 = m.group(1).parse().expect("a number");
    let host = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    assert!(
        guest.abs_diff(host) < 300,
        "dom0's clock says {guest}, the host {host}"
    );

    // Both physical CPUs run, and dom0 has a vCPU on each (Linux's secondary CPU comes
    // up through `VCPUOP_initialise`/`up`; its IPIs are event channels).
    b.find(r"smp: 2 CPUs running");
    let m = run(&mut b, "echo N=$(nproc)", r"N=(\d+)");
    assert_eq!(m.group(1), "2", "nproc with maxcpus=2");
    // IPIs (event channels bound with `EVTCHNOP_bind_ipi`) reached both vCPUs.
    let m = run(
        &mut b,
        "echo I=$(awk '/-ipi/ {a += $2; b += $3} END {print a \"/\" b}' /proc/interrupts)",
        r"I=(\d+)/(\d+)",
    );
    let (ipis0, ipis1): (u64, u64) = (m.group(1).parse().unwrap(), m.group(2).parse().unwrap());
    assert!(
        ipis0 > 0 && ipis1 > 0,
        "IPIs taken per vCPU: {ipis0}/{ipis1}"
    );

    // Timers: sleep returns.
    run(&mut b, "sleep 1; echo S=$((40+2))", r"S=42");
    run(
        &mut b,
        "ls /dev/xen/privcmd /dev/xen/evtchn /dev/xen/gntdev >/dev/null && echo D=$((1+1))",
        r"D=2",
    );
    // No Xen-related error or warning in the kernel log.
    let m = run(
        &mut b,
        "echo E=$(dmesg | grep -i xen | grep -ciE 'error|warn|fail|unable')",
        r"E=(\d+)",
    );
    if m.group(1) != "0" {
        run(&mut b, "dmesg | grep -i xen; echo X=$((2+2))", r"X=4");
        b.fail("dom0's kernel log has Xen-related errors or warnings");
    }

    // The control tool, through privcmd: the xl-style table, a test-kernel domU built
    // from an example config, which passes and powers off, and its destruction.
    run(&mut b, "fv list; echo L=$((3*3))", r"L=9");
    b.find(r"Name +ID +Mem VCPUs\tState\tTime\(s\)");
    // (dom0 has two vCPUs, one per physical CPU.)
    b.find(r"Domain-0 +0 +256 +2 +r----- +\d+\.\d");
    run(
        &mut b,
        "fv create /etc/fv/examples/hello.cfg && echo N=$((4*4))",
        r"N=16",
    );
    let m = run(
        &mut b,
        "fv list | grep -c '^hello .*---s--'; echo P=$((5*5))",
        r"(\d+)\nP=25",
    );
    assert_eq!(m.group(1), "1", "fv list does not show hello shut down");
    // It printed its verdict before it powered off (on the hypervisor's console).
    b.find(r"\(d1\) pv-test hello: PASS");
    run(
        &mut b,
        "fv destroy hello && echo Q=$(fv list | grep -c hello)",
        r"Q=0",
    );
    run(
        &mut b,
        "echo G=$(fv dmesg | grep -c 'destroyed .hello.')",
        r"G=[1-9]",
    );

    // A Linux domU: the same kernel with its own busybox initramfs, built by fv from the
    // example config; dom0 talks to its shell through `fv console` (what the domU prints
    // comes back raw on dom0's console, where the hypervisor's own mirror of the domU's
    // console would carry a `(d2) ` prefix), then destroys it and gets its memory back.
    let free = |b: &mut ferrovisor_tests::Boot, tag: &str| -> u64 {
        let m = run(
            b,
            &format!("echo {tag}=$(fv info | awk '/free_memory/ {{print $3}}')"),
            &format!(r"{tag}=(\d+)"),
        );
        m.group(1).parse().expect("a number")
    };
    let before = free(&mut b, "F1");
    run(
        &mut b,
        "fv create /etc/fv/examples/linux-domu.cfg && echo V=$((7*7))",
        r"V=49",
    );
    b.expect(r"\(d2\) domU: Linux \S+ ready");
    b.send("(sleep 2; echo 'echo U=$((6*7))'; sleep 4) | fv console linux\r");
    b.expect(r"(?m)^U=42");
    run(
        &mut b,
        "fv list | grep -c '^linux '; echo W=$((8*8))",
        r"1\nW=64",
    );
    // Pause and unpause show in the state column (`rbpscd`: the third letter).
    let state = "fv list | awk '/^linux / {print $5}'";
    run(
        &mut b,
        &format!("fv pause linux && echo PA=$({state} | cut -c3)"),
        r"PA=p",
    );
    run(
        &mut b,
        &format!("fv unpause linux && echo UN=$({state} | cut -c3)"),
        r"UN=-",
    );
    // A shutdown request reaches the guest through xenstore; it powers itself off and
    // `fv shutdown -w` returns once it has (the fourth letter: shut down).
    run(
        &mut b,
        &format!("fv shutdown -w linux && echo SD=$({state} | cut -c4)"),
        r"SD=s",
    );
    run(
        &mut b,
        "fv destroy linux && echo Y=$(fv list | grep -c linux)",
        r"Y=0",
    );
    let after = free(&mut b, "F2");
    assert_eq!(after, before, "free MiB after destroying the Linux domU");

    b.send("poweroff -f\r");
    b.expect_dom0_poweroff();
    b.assert_dom0_not_crashed();
    b.assert_absent("PANIC");
}
