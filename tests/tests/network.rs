//! Networking through the hypervisor's vif backend and its switch `xenbr0`, in one boot:
//! Debian's Linux as dom0 (its `vif0.0` from the default `dom0_vif=`), one virtio-net NIC
//! on QEMU's user network as the switch's uplink (`restrict=on`: only QEMU's own gateway
//! 10.0.2.2 is reachable, nothing leaves the machine), and two Linux domUs `na` and `nb`
//! that `fv create` gives a vif each (xm's `ip`/`netmask`/`gateway`: static addresses):
//! - dom0 gets its address by DHCP from QEMU and pings the gateway;
//! - a vif naming a switch that does not exist is refused at create, naming it;
//! - `na` pings dom0, `nb` and the gateway;
//! - 16 MiB over TCP `na` → `nb` (domU to domU), dom0 → `na` and `na` → dom0 arrive
//!   intact (MD5 at both ends);
//! - `fv switch` shows every port with its MAC and counters that saw the traffic (and
//!   frames larger than the MTU: GSO segments cross the switch whole);
//! - hot-plug: `fv network-attach` gives `na` an `eth1` (which carries a ping), `fv
//!   network-detach` takes it away again;
//! - `fv destroy` takes a domain's port off the switch.

use std::time::Duration;

use ferrovisor_tests::{boot_with_config, re, Modules, Term, VirtioNic};

const HYPERVISOR_CMDLINE: &str =
    "dom0_mem=262144 maxcpus=2 console=com1 loglvl=info debug_exit=0xf4";
const KERNEL_CMDLINE: &str = "console=hvc0 nousb";
const DOMU_CFG: &str = "/etc/fv/examples/linux-domu.cfg";
const GATEWAY: &str = "10.0.2.2";
const NA_IP: &str = "10.0.2.21";
const NB_IP: &str = "10.0.2.22";
const NA_MAC: &str = "00:16:3e:0a:00:21";
/// The payload of each transfer, in MiB.
const MIB: u32 = 16;

/// `fv create` of a domU with one vif at a static address.
fn create(t: &mut Term, name: &str, ip: &str, vif: &str) {
    t.b.send(&format!(
        "fv create {DOMU_CFG} 'name=\"{name}\"' \"vif=['{vif}']\" 'ip=\"{ip}\"' \
         'netmask=\"255.255.255.0\"' 'gateway=\"{GATEWAY}\"' -c\r"
    ));
    t.expect_within(r"^domU: Linux \S+ ready", 300);
    std::thread::sleep(Duration::from_secs(1));
    t.b.send("\r");
    t.run("true", 60);
    t.wait_for(
        &format!("ip -4 addr show eth0 | grep -q 'inet {ip}/24'"),
        60,
        &format!("{name}'s eth0 up at {ip}"),
    );
}

/// Pings `to` three times from the shell the terminal is on.
fn ping(t: &mut Term, who: &str, to: &str) {
    let out = t.run(&format!("ping -c 3 -W 10 {to}"), 60);
    t.check(
        out.contains("3 packets received"),
        &format!("{who} pings {to}: {out}"),
    );
}

/// Makes a 16 MiB file of random bytes at `path`; returns its MD5 and length as
/// [`received`] says them.
fn blob(t: &mut Term, path: &str) -> String {
    let out = t.run(
        &format!("dd if=/dev/urandom of={path} bs=1M count={MIB} 2>/dev/null && md5sum {path}"),
        120,
    );
    let md5 = out.split_whitespace().next().unwrap_or("");
    format!("{md5} {}", MIB << 20)
}

/// Starts a listener on `port` that writes the MD5 and the length of what it received
/// to `out` once the sender closed (streamed: a 128 MiB domU has no room to keep it).
/// The receiving end runs under `-e`: a listener whose stdin ends would close its half
/// of the connection, and busybox's `nc` sender stops at its peer's FIN.
fn listen(t: &mut Term, port: u16, out: &str) {
    t.run(
        &format!(
            "rm -f {out}; nc -l -p {port} -e sh -c 'mkfifo {out}.f; wc -c < {out}.f > {out}.n & \
             tee {out}.f | md5sum > {out}.part; wait; cat {out}.n >> {out}.part; \
             rm {out}.f {out}.n; mv {out}.part {out}' \
             </dev/null >/dev/null 2>&1 & true"
        ),
        30,
    );
}

/// The MD5 and length the listener of [`listen`] wrote, once it has (`md5 length`).
fn received(t: &mut Term, out: &str, what: &str) -> String {
    t.wait_for(&format!("[ -e {out} ]"), 120, what);
    let got = t.run(&format!("cat {out}"), 30);
    got.replace(" -", "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The columns of `fv switch`'s line for `port` (Switch Port Domain MAC Learned
/// RX-packets RX-bytes RX-drops TX-packets TX-bytes TX-drops), as numbers from Learned on.
fn counters(t: &mut Term, port: &str) -> Vec<u64> {
    let line = t.run(&format!("fv switch | awk '$2 == \"{port}\"'"), 30);
    let fields: Vec<&str> = line.split_whitespace().collect();
    let nums: Vec<u64> = fields
        .iter()
        .skip(4)
        .filter_map(|f| f.parse().ok())
        .collect();
    if nums.len() != 7 {
        t.b.fail(&format!("fv switch's line for {port}: {line:?}"));
    }
    nums
}

#[test]
fn vifs_reach_dom0_each_other_and_the_gateway() {
    let linux = xtask::linux::dom0().unwrap_or_else(|e| panic!("{e:#}"));
    let b = boot_with_config(
        "network",
        HYPERVISOR_CMDLINE,
        Modules::Dom0KernelAndModule {
            kernel: &linux.vmlinuz,
            cmdline: KERNEL_CMDLINE,
            module: &linux.initrd,
        },
        |cfg| {
            cfg.nics = vec![VirtioNic {
                mac: "52:54:00:12:34:56".into(),
            }];
        },
    );
    let mut t = Term::new(b);
    t.b.allow(Duration::from_secs(1500));
    t.expect_within(r"dom0: Linux \S+ ready", 300);
    t.expect_within(r"Enter 'help' for a list of built-in commands", 60);

    // --- dom0: a DHCP lease from QEMU on vif0.0, and the gateway answers.
    t.wait_for(
        "ip -4 addr show eth0 | grep -q inet",
        90,
        "dom0's eth0 gets a DHCP lease",
    );
    let dom0_ip = t.run(
        "ip -4 addr show eth0 | awk '/inet / {sub(\"/.*\", \"\", $2); print $2}'",
        30,
    );
    t.check(
        re(r"^10\.0\.2\.\d+$").is_match(&dom0_ip),
        &format!("dom0's address from QEMU's DHCP: {dom0_ip}"),
    );
    ping(&mut t, "dom0", GATEWAY);
    let list = t.run("fv network-list 0", 30);
    t.check(
        re(r"\s0 +32754 +00:16:3e:12:34:56 +0 +4 ").is_match(&list),
        &format!("fv network-list 0: vif0.0 connected, its MAC from the NIC's: {list}"),
    );

    // --- A vif on a switch that does not exist: refused at create, naming both.
    let err = t.run_fails(
        &format!("fv create {DOMU_CFG} 'name=\"nx\"' \"vif=['bridge=nosuch']\""),
        60,
    );
    t.check(
        err.contains("nosuch") && err.contains("xenbr0"),
        &format!("create with bridge=nosuch: the refusal names it and xenbr0: {err}"),
    );
    let listed = t.run("fv list | grep -c '^nx ' || true", 30);
    t.check(listed == "0", &format!("the refused nx is left: {listed}"));

    // --- nb first (it listens), then na.
    create(&mut t, "nb", NB_IP, "bridge=xenbr0");
    listen(&mut t, 5001, "/tmp/from-na");
    t.leave_console();
    create(&mut t, "na", NA_IP, &format!("mac={NA_MAC},bridge=xenbr0"));
    let mac = t.run("cat /sys/class/net/eth0/address", 30);
    t.check(
        mac == NA_MAC,
        &format!("na's eth0 has the config's MAC: {mac}"),
    );
    ping(&mut t, "na", &dom0_ip);
    ping(&mut t, "na", NB_IP);
    ping(&mut t, "na", GATEWAY);

    // --- 16 MiB na → nb.
    let sent = blob(&mut t, "/tmp/blob");
    t.run(&format!("nc {NB_IP} 5001 < /tmp/blob; rm /tmp/blob"), 600);
    listen(&mut t, 5002, "/tmp/from-dom0");
    t.leave_console();
    t.console("nb");
    let got = received(&mut t, "/tmp/from-na", "nb received na's 16 MiB");
    t.check(
        got == sent,
        &format!("na → nb: {MIB} MiB arrive intact (sent {sent}, received {got})"),
    );
    t.leave_console();

    // --- 16 MiB dom0 → na, and na → dom0.
    let sent = blob(&mut t, "/tmp/blob");
    t.run(&format!("nc {NA_IP} 5002 < /tmp/blob"), 600);
    listen(&mut t, 5003, "/tmp/from-na");
    t.console("na");
    let got = received(&mut t, "/tmp/from-dom0", "na received dom0's 16 MiB");
    t.check(
        got == sent,
        &format!("dom0 → na: {MIB} MiB arrive intact (sent {sent}, received {got})"),
    );
    let sent = blob(&mut t, "/tmp/blob");
    t.run(&format!("nc {dom0_ip} 5003 < /tmp/blob; rm /tmp/blob"), 600);
    t.leave_console();
    let got = received(&mut t, "/tmp/from-na", "dom0 received na's 16 MiB");
    t.check(
        got == sent,
        &format!("na → dom0: {MIB} MiB arrive intact (sent {sent}, received {got})"),
    );

    // --- The switch: every port, the MACs, and counters that saw the transfers.
    let na_id = t.run("fv list | awk '/^na / {print $2}'", 30);
    let nb_id = t.run("fv list | awk '/^nb / {print $2}'", 30);
    let na_port = format!("vif{na_id}.0");
    let nb_port = format!("vif{nb_id}.0");
    let table = t.run("fv switch", 30);
    for (port, what) in [
        ("eth0", "the uplink"),
        ("vif0.0", "dom0's vif"),
        (na_port.as_str(), "na's vif"),
        (nb_port.as_str(), "nb's vif"),
    ] {
        t.check(
            re(&format!(r"xenbr0 +{} ", regex::escape(port))).is_match(&table),
            &format!("fv switch lists {what} {port}: {table}"),
        );
    }
    t.check(
        table.contains(NA_MAC),
        &format!("fv switch shows na's MAC: {table}"),
    );
    let bytes = u64::from(MIB) << 20;
    // From na: 16 MiB to nb and 16 MiB to dom0; to na: 16 MiB from dom0.
    let na = counters(&mut t, &na_port);
    let nb = counters(&mut t, &nb_port);
    let up = counters(&mut t, "eth0");
    t.check(
        na[2] >= 2 * bytes && na[5] >= bytes && nb[5] >= bytes,
        &format!("switch counters: {na_port} {na:?}, {nb_port} {nb:?}"),
    );
    // GSO: netfront sends TCP in segments of up to 64 KiB and the switch passes them
    // whole to a frontend that takes them, so na's frames average more than an MTU.
    t.check(
        na[2] > 1514 * na[1],
        &format!("{na_port}'s frames average over 1514 bytes (GSO): {na:?}"),
    );
    t.check(
        up[0] >= 1 && na[0] >= 1,
        &format!(
            "the switch learned the gateway's and na's addresses: eth0 {up:?}, {na_port} {na:?}"
        ),
    );

    // --- Hot-plug: a second vif in the running na, then gone again.
    t.run("fv network-attach na bridge=xenbr0", 60);
    let list = t.run("fv network-list na", 30);
    t.check(
        re(r"\s1 +32754 +00:16:3e(:[0-9a-f]{2}){3} +1 ").is_match(&list),
        &format!("fv network-list na: the new vif 1 with a random 00:16:3e MAC: {list}"),
    );
    t.console("na");
    t.wait_for("[ -e /sys/class/net/eth1 ]", 60, "eth1 appears in na");
    t.run(
        "ip addr add 10.0.2.31/24 dev eth1 && ip link set eth1 up",
        30,
    );
    let out = t.run(&format!("ping -c 3 -W 10 -I eth1 {GATEWAY}"), 60);
    t.check(
        out.contains("3 packets received"),
        &format!("na pings the gateway over the hot-plugged eth1: {out}"),
    );
    t.leave_console();
    t.wait_for(
        "fv network-list na | grep -q '^1 .* 4 '",
        30,
        "na's vif 1 connected",
    );
    t.run("fv network-detach na 1", 60);
    let left = t.run("fv network-list na | tail -n +2 | awk '{print $1}'", 30);
    t.check(
        left == "0",
        &format!("after network-detach only vif 0 is left: {left}"),
    );
    t.console("na");
    t.wait_for("[ ! -e /sys/class/net/eth1 ]", 60, "eth1 goes from na");
    ping(&mut t, "na after the detach", NB_IP);
    t.leave_console();

    // --- destroy takes the domain's port off the switch.
    t.run("fv destroy nb", 60);
    let table = t.run("fv switch", 30);
    t.check(
        !table.contains(&format!(" {nb_port} ")) && table.contains(&format!(" {na_port} ")),
        &format!("after destroying nb, its port {nb_port} is gone, na's stays: {table}"),
    );
    t.run("fv destroy na", 60);
    t.b.send("poweroff -f\r");
    t.b.expect_dom0_poweroff();
}
