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
    let free = |b: &mut ferrovisor_tests::Boot, tag: &str| -> u64 {
        let m = run(
            b,
            &format!("echo {tag}=$(fv info | awk '/free_memory/ {{print $3}}')"),
            &format!(r"{tag}=(\d+)"),
        );
        m.group(1).parse().expect("a number")
    };
    let free_at_start = free(&mut b, "F0");
    // Waits (up to 20 s) until `cond` holds in dom0's shell, then returns what `show`
    // prints (after a `tag0=` marker the shell computes): how the test waits for a
    // domain's monitor, which acts on its own after the domain stops.
    let wait = |b: &mut ferrovisor_tests::Boot, cond: &str, tag: &str, show: &str| -> String {
        let m = run(
            b,
            &format!(
                "for i in $(seq 100); do {cond} && break; sleep 0.2; done; echo {tag}$((0))=$({show})"
            ),
            &format!(r"{tag}0=(.*)"),
        );
        m.group(1).trim().to_owned()
    };
    // on_poweroff = "preserve" (the example's): the monitor fv create leaves behind sees
    // it power off and leaves it shut down.
    run(
        &mut b,
        "fv create /etc/fv/examples/hello.cfg && echo N=$((4*4))",
        r"N=16",
    );
    let m = wait(
        &mut b,
        "grep -q 'left shut down' /var/log/fv/hello.log",
        "HP",
        "fv list | grep -c '^hello .*---s--'",
    );
    assert_eq!(m, "1", "fv list does not show hello shut down");
    // It printed its verdict before it powered off: in its console history, which
    // `fv console` shows (domU consoles are not mirrored to the hypervisor's serial line
    // by default, see the end).
    run(
        &mut b,
        "fv console hello </dev/null | grep -c 'pv-test hello: PASS'; echo HV=$((3*7))",
        r"^1\s+HV=21",
    );
    run(
        &mut b,
        "grep -c 'hello (1) shut down (poweroff), .*: on_poweroff = preserve' /var/log/fv/hello.log; echo HL=$((9*9))",
        r"1\s+HL=81",
    );
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
    // on_crash = "preserve": with another command line the hello kernel fails its check
    // and crashes (SHUTDOWN_crash); it stays, listed as crashed, until destroyed.
    run(
        &mut b,
        "fv create /etc/fv/examples/hello.cfg 'cmdline=\"pv-test=hello crash-me\"' \
         'on_crash=\"preserve\"' && echo HC=$((2*21))",
        r"HC=42",
    );
    let m = wait(
        &mut b,
        "grep -q 'on_crash = preserve' /var/log/fv/hello.log",
        "CR",
        "fv list | grep -c '^hello .*---sc-'",
    );
    assert_eq!(m, "1", "fv list does not show hello crashed");
    run(
        &mut b,
        "fv console hello </dev/null | grep -c 'pv-test hello: FAIL'; echo HF=$((4*7))",
        r"^1\s+HF=28",
    );
    run(&mut b, "fv destroy hello && echo HD=$((3*11))", r"HD=33");
    // on_poweroff = "destroy": the monitor destroys it by itself.
    run(
        &mut b,
        "fv create /etc/fv/examples/hello.cfg 'on_poweroff=\"destroy\"' && echo HX=$((5*11))",
        r"HX=55",
    );
    let m = wait(
        &mut b,
        "! fv list hello >/dev/null 2>&1",
        "HG",
        "fv list | grep -c hello; grep -c 'on_poweroff = destroy' /var/log/fv/hello.log",
    );
    assert_eq!(m, "0 1", "the monitor did not destroy hello");
    // on_poweroff = "rename-restart": each hello that powers off is renamed hello-ID
    // and kept, and a new hello is built; it powers off at once too, so after 5
    // restarts in a minute the monitor stops and leaves the last one shut down.
    run(
        &mut b,
        "fv create /etc/fv/examples/hello.cfg 'on_poweroff=\"rename-restart\"' && echo RR=$((6*11))",
        r"RR=66",
    );
    let m = wait(
        &mut b,
        "grep -q 'restarted 5 times within 60 s' /var/log/fv/hello.log",
        "RN",
        "fv list | grep -c '^hello-[0-9]* .*---s--'; fv list | grep -c '^hello .*---s--'",
    );
    assert_eq!(m, "5 1", "rename-restart: renamed and kept, then stopped");
    run(
        &mut b,
        "for d in $(fv list | awk '/^hello/ {print $1}'); do fv destroy $d; done; \
         echo RD=$(fv list | grep -c hello)",
        r"RD=0",
    );
    assert_eq!(
        free(&mut b, "F1"),
        free_at_start,
        "free MiB after the hellos"
    );

    // A Linux domU: the same kernel with its own busybox initramfs, built by fv from the
    // example config. `fv create -c` attaches to its console at once: what the domU
    // prints comes back raw on dom0's console (the hypervisor's mirror of the domU's
    // console, with a `(dN) ` prefix, is off by default), and what is typed on dom0's
    // console (its terminal in raw mode meanwhile) goes to its shell, until Ctrl-].
    b.allow(std::time::Duration::from_secs(900));
    let before = free(&mut b, "F2");
    b.send("fv create /etc/fv/examples/linux-domu.cfg -c\r");
    b.expect(r"^domU: Linux \S+ ready");
    std::thread::sleep(std::time::Duration::from_secs(2));
    // Page migration (compaction) in the domU: its migration entries are non-present
    // PTEs with bit 62 set, which the PV MMU must not take for grant mappings.
    b.send("echo 1 >/proc/sys/vm/compact_memory && echo CC=$((6*7))$((1+1))\r");
    b.expect(r"^CC=422");
    b.send("\x1d");
    // Leaving restores dom0's terminal; what is typed next goes to dom0's shell.
    std::thread::sleep(std::time::Duration::from_secs(1));
    run(&mut b, "echo BACK=$((2+3))", r"BACK=5");
    let m = run(
        &mut b,
        "fv list | awk '/^linux / {print \"LI=\" $2 \",\" $3 \",\" $4}'",
        r"LI=(\d+),(\d+),(\d+)",
    );
    let first_id: u32 = m.group(1).parse().expect("a number");
    assert_eq!(
        (m.group(2), m.group(3)),
        ("128", "1"),
        "linux's MiB and vCPUs"
    );
    // `fv console NAME` reaches the shell too (input from a pipe, which ends it).
    b.send("(sleep 2; echo 'echo U=$((6*7))'; sleep 4) | fv console linux\r");
    b.expect(r"^U=42");
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
    // mem-set: the balloon target reaches the domU's balloon driver (through xenstore's
    // memory/target), which gives memory back.
    run(&mut b, "fv mem-set linux 96m && echo MS=$((8*8))", r"MS=64");
    b.send(
        "(sleep 3; echo 'echo TK=$(cat /sys/devices/system/xen_memory/xen_memory0/target_kb)'; \
         sleep 3) | fv console linux\r",
    );
    b.expect(r"^TK=98304");
    let m = wait(
        &mut b,
        "[ $(fv list | awk '/^linux / {print $3}') -le 96 ]",
        "LM",
        "fv list | awk '/^linux / {print $3}'",
    );
    let mib: u64 = m.parse().expect("a number");
    assert!(mib <= 96, "linux still has {mib} MiB after mem-set 96m");
    // vcpu-list: one line per vCPU in xl's columns, each with the physical CPU it ran
    // on last and its own time; dom0's two vCPUs have both run.
    run(&mut b, "fv vcpu-list linux; echo VL=$((4*5))", r"VL=20");
    b.find(&format!(
        r"Name +ID +VCPU +CPU +State +Time\(s\) +Affinity.*\n.*linux +{first_id} +0 +[01] +[-r][-b]- +\d+\.\d +all / all"
    ));
    let m = run(
        &mut b,
        "fv vcpu-list 0 | awk '/^Domain-0/ {printf \"%s:%s:%s \", $3, $4, $6}'; echo VD=$((4*6))",
        r"0:([01]):(\d+\.\d) 1:([01]):(\d+\.\d) VD=24",
    );
    for (vcpu, time) in [(0, m.group(2)), (1, m.group(4))] {
        let t: f64 = time.parse().expect("a number");
        assert!(t > 0.0, "dom0's vCPU {vcpu} has no CPU time: {}", m.text);
    }
    // uptime: every domain's, from its creation time; the domU is younger than dom0.
    let m = run(
        &mut b,
        "fv uptime | awk '/^Domain-0 |^linux / {print $1 \"=\" $3}' | tr '\\n' ' '; echo UT=$((6*6))",
        r"Domain-0=(\d+):(\d\d):(\d\d) linux=(\d+):(\d\d):(\d\d) UT=36",
    );
    let secs = |h: usize| -> u64 {
        (h..h + 3).fold(0, |acc, g| {
            acc * 60 + m.group(g).parse::<u64>().expect("a number")
        })
    };
    let (dom0_up, linux_up) = (secs(1), secs(4));
    assert!(
        linux_up > 0 && linux_up < dom0_up,
        "uptime: linux {linux_up} s, Domain-0 {dom0_up} s"
    );

    // fv reboot: the guest reboots itself (control/shutdown), its monitor, woken by the
    // hypervisor's @releaseDomain watch event (not its 10 s fallback look), sees
    // SHUTDOWN_reboot and, as on_reboot = "restart" (xl's default), builds it again:
    // the same name, a new id, booting again.
    run(&mut b, "fv reboot linux && echo RB=$((7*8))", r"RB=56");
    // Seen through dom0: the new domain's console history.
    let m = run(
        &mut b,
        &format!(
            "for i in $(seq 300); do [ \"$(fv list | awk '/^linux / {{print $2}}')\" != {first_id} ] && \
             fv console linux </dev/null 2>/dev/null | grep -q 'domU: Linux .* ready' && break; \
             sleep 0.5; done; echo RY$((0))=$(fv list | awk '/^linux / {{print $2}}')"
        ),
        r"RY0=(\d+)",
    );
    let second_id: u32 = m.group(1).parse().expect("a number");
    assert_ne!(second_id, first_id, "the restarted domain has a new id");
    let m = run(
        &mut b,
        "fv list | awk '/^linux / {print \"LR=\" $2 \",\" $3}'; echo LC=$(fv list | grep -c '^linux ')",
        r"LR=(\d+),(\d+)\s+LC=1",
    );
    assert_eq!(
        m.group(1),
        second_id.to_string(),
        "fv list after the reboot"
    );
    assert_eq!(
        m.group(2),
        "128",
        "the restarted domain has its config's memory"
    );
    run(
        &mut b,
        &format!(
            "grep -c 'linux ({first_id}) shut down (reboot), noticed on @releaseDomain: on_reboot = restart' /var/log/fv/linux.log; \
             grep -c 'linux restarted as domain {second_id}' /var/log/fv/linux.log; echo RL=$((9*7))"
        ),
        r"1\s+1\s+RL=63",
    );
    // A shutdown request reaches the guest through xenstore; it powers itself off and
    // `fv shutdown -w` returns once it has; on_poweroff = "destroy" (the example's): its
    // monitor destroys it, and the hypervisor's free memory is back.
    run(&mut b, "fv shutdown -w linux && echo SD=$((9*9))", r"SD=81");
    let m = wait(
        &mut b,
        "! fv list linux >/dev/null 2>&1",
        "Y",
        "fv list | grep -c linux",
    );
    assert_eq!(m, "0", "the monitor did not destroy linux");
    run(
        &mut b,
        "grep -c 'shut down (poweroff), noticed on @releaseDomain: on_poweroff = destroy' /var/log/fv/linux.log; echo PD=$((3*17))",
        r"1\s+PD=51",
    );
    let after = free(&mut b, "F3");
    assert_eq!(after, before, "free MiB after the Linux domU went");
    // Only Domain-0 is left, and every monitor has ended with its domain.
    run(
        &mut b,
        "echo OD=$(fv list | tail -n +2 | awk '{print $1}' | tr '\\n' ,); echo MO=$(ps | grep -c '[f]v monitor')",
        r"OD=Domain-0,\s+MO=0",
    );

    // dom0 compacts its memory: Linux migrates pages (through migration entries in its
    // page tables), and goes on.
    let m = run(
        &mut b,
        "echo 1 >/proc/sys/vm/compact_memory; echo PM=$(awk '/^pgmigrate_success/ {print $2}' /proc/vmstat)",
        r"PM=(\d+)",
    );
    let migrated: u64 = m.group(1).parse().expect("a number");
    assert!(migrated > 0, "dom0's compaction migrated no page");

    b.send("poweroff -f\r");
    b.expect_dom0_poweroff();
    b.assert_dom0_not_crashed();
    b.assert_absent("PANIC");
    // Without `guest_console_mirror=on` no domU's console reaches the serial line.
    b.assert_absent(r"^\(d[1-9]\d*\) ");
}
