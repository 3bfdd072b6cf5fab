//! What `fv` prints: `xl list`'s table (same columns and widths, so scripts that read
//! `xl list` read `fv list`), its JSON form, `xl info`-style host facts, and the
//! uptime and vCPU lists as far as `DomainInfo` tells.

use ferrovisor_abi::{
    domctl::{
        padded_str, DeviceInfo, DiskInfo, DomainInfo, PhysInfo, SwitchPort, VcpuState,
        DISK_DISCARD, DISK_FLUSH, DISK_PARTITION, DISK_READ_ONLY, DOMINFO_BLOCKED, DOMINFO_CRASHED,
        DOMINFO_DYING, DOMINFO_PAUSED, DOMINFO_PRIVILEGED, DOMINFO_RUNNING, DOMINFO_SHUTDOWN,
        FV_CONTROL_INTERFACE_VERSION, PORT_UPLINK, PORT_VIF,
    },
    xen::sched::ShutdownReason,
};
use serde::Serialize;

use crate::config::{device::mac_string, uuid_string};

/// A domain's name for display.
pub fn name_of(info: &DomainInfo) -> String {
    String::from_utf8_lossy(info.name_bytes()).into_owned()
}

/// Pages to MiB, rounded down as xl does.
pub fn pages_to_mib(pages: u64) -> u64 {
    pages / 256
}

/// The `rbpscd` state column: running, blocked, paused, shutdown, crashed, dying; `-`
/// for each one unset.
pub fn state_letters(flags: u32) -> String {
    [
        (DOMINFO_RUNNING, 'r'),
        (DOMINFO_BLOCKED, 'b'),
        (DOMINFO_PAUSED, 'p'),
        (DOMINFO_SHUTDOWN, 's'),
        (DOMINFO_CRASHED, 'c'),
        (DOMINFO_DYING, 'd'),
    ]
    .iter()
    .map(|&(bit, c)| if flags & bit != 0 { c } else { '-' })
    .collect()
}

/// The name of a shutdown reason.
pub fn shutdown_reason_name(reason: u32) -> &'static str {
    match ShutdownReason::try_from(reason) {
        Ok(ShutdownReason::Poweroff) => "poweroff",
        Ok(ShutdownReason::Reboot) => "reboot",
        Ok(ShutdownReason::Suspend) => "suspend",
        Ok(ShutdownReason::Crash) => "crash",
        Ok(ShutdownReason::Watchdog) => "watchdog",
        Ok(ShutdownReason::SoftReset) => "soft_reset",
        Err(_) => "unknown",
    }
}

/// `xl list`'s header.
pub const LIST_HEADER: &str =
    "Name                                        ID   Mem VCPUs\tState\tTime(s)";

/// `fv list`: one line per domain in xl's layout (name left in 40 columns, id, MiB and
/// online vCPUs right in 5, five blanks, the state letters, the CPU seconds with one
/// decimal right in 8). `long` adds the UUID and, for a shut-down domain, its reason.
pub fn list_table(infos: &[DomainInfo], long: bool) -> String {
    let mut out = String::from(LIST_HEADER);
    if long {
        out.push_str("   UUID                                  Reason");
    }
    out.push('\n');
    for i in infos {
        out.push_str(&format!(
            "{:<40} {:>5} {:>5} {:>5}     {}  {:>8.1}",
            name_of(i),
            i.domid,
            pages_to_mib(i.tot_pages),
            i.online_vcpus,
            state_letters(i.flags),
            i.cpu_time_ns as f64 / 1e9,
        ));
        if long {
            let reason = if i.flags & DOMINFO_SHUTDOWN != 0 {
                shutdown_reason_name(i.shutdown_reason)
            } else {
                "-"
            };
            out.push_str(&format!("   {}  {}", uuid_string(&i.uuid), reason));
        }
        out.push('\n');
    }
    out
}

/// One domain in `fv list --json`.
#[derive(Debug, Serialize)]
pub struct DomainJson {
    pub domid: u16,
    pub name: String,
    pub uuid: String,
    pub state: String,
    pub running: bool,
    pub blocked: bool,
    pub paused: bool,
    pub shutdown: bool,
    pub crashed: bool,
    pub dying: bool,
    pub privileged: bool,
    /// The reason's name when `shutdown` is set.
    pub shutdown_reason: Option<&'static str>,
    pub memory_mib: u64,
    pub max_memory_mib: u64,
    pub pages: u64,
    pub max_pages: u64,
    pub vcpus: u32,
    pub online_vcpus: u32,
    pub cpu_time_ns: u64,
}

impl From<&DomainInfo> for DomainJson {
    fn from(i: &DomainInfo) -> Self {
        let f = |bit| i.flags & bit != 0;
        Self {
            domid: i.domid,
            name: name_of(i),
            uuid: uuid_string(&i.uuid),
            state: state_letters(i.flags),
            running: f(DOMINFO_RUNNING),
            blocked: f(DOMINFO_BLOCKED),
            paused: f(DOMINFO_PAUSED),
            shutdown: f(DOMINFO_SHUTDOWN),
            crashed: f(DOMINFO_CRASHED),
            dying: f(DOMINFO_DYING),
            privileged: f(DOMINFO_PRIVILEGED),
            shutdown_reason: f(DOMINFO_SHUTDOWN).then(|| shutdown_reason_name(i.shutdown_reason)),
            memory_mib: pages_to_mib(i.tot_pages),
            max_memory_mib: pages_to_mib(i.max_pages),
            pages: i.tot_pages,
            max_pages: i.max_pages,
            vcpus: i.nr_vcpus,
            online_vcpus: i.online_vcpus,
            cpu_time_ns: i.cpu_time_ns,
        }
    }
}

/// `fv list --json`: an array of [`DomainJson`], pretty-printed, with a final newline.
pub fn list_json(infos: &[DomainInfo]) -> String {
    let v: Vec<DomainJson> = infos.iter().map(DomainJson::from).collect();
    // Serialising plain structs of strings, numbers and bools cannot fail.
    let mut s = serde_json::to_string_pretty(&v).expect("plain data serialises");
    s.push('\n');
    s
}

/// `H:MM:SS`, with `N day(s), ` in front past a day.
pub fn uptime_string(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    let (days, h, m, sec) = (s / 86_400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    let hms = format!("{h}:{m:02}:{sec:02}");
    match days {
        0 => hms,
        1 => format!("1 day, {hms}"),
        d => format!("{d} days, {hms}"),
    }
}

/// `fv info`: the host, one `key : value` per line as xl prints them.
pub fn info_text(p: &PhysInfo) -> String {
    let line = |k: &str, v: String| format!("{k:<23}: {v}\n");
    let mut out = String::new();
    out += &line("nr_cpus", p.nr_cpus.to_string());
    out += &line(
        "cpu_mhz",
        format!("{}.{:03}", p.cpu_khz / 1000, p.cpu_khz % 1000),
    );
    out += &line("total_memory", pages_to_mib(p.total_pages).to_string());
    out += &line("free_memory", pages_to_mib(p.free_pages).to_string());
    out += &line("nr_domains", p.nr_domains.to_string());
    out += &line("xen_major", (p.xen_version >> 16).to_string());
    out += &line("xen_minor", (p.xen_version & 0xffff).to_string());
    out += &line(
        "xen_version",
        format!("{}.{}", p.xen_version >> 16, p.xen_version & 0xffff),
    );
    out += &line("hypervisor", "Ferrovisor".into());
    out += &line("uptime", uptime_string(p.uptime_ns));
    out += &line(
        "control_interface",
        FV_CONTROL_INTERFACE_VERSION.to_string(),
    );
    out += &line("fv_version", env!("CARGO_PKG_VERSION").to_string());
    out
}

/// `fv uptime`: xl's layout (name in 33 columns, id in 4): the host's uptime less the
/// domain's `start_time_ns` (dom0's is 0: it starts with the host).
pub fn uptime_table(infos: &[DomainInfo], host_uptime_ns: u64) -> String {
    let mut out = format!("{:<33} {:>4} {}\n", "Name", "ID", "Uptime");
    for i in infos {
        let up = uptime_string(host_uptime_ns.saturating_sub(i.start_time_ns));
        out.push_str(&format!("{:<33} {:>4} {}\n", name_of(i), i.domid, up));
    }
    out
}

/// `fv vcpu-list`: xl's columns, a line per vCPU: the physical CPU it runs on or last
/// ran on (`-` when offline or never run), its state (`r` running, `b` blocked, `p`
/// offline, as xl) and its own CPU time.
pub fn vcpu_table(rows: &[(DomainInfo, Vec<VcpuState>)]) -> String {
    let mut out = format!(
        "{:<32} {:>5} {:>5} {:>5} {:>5} {:>9} {}\n",
        "Name", "ID", "VCPU", "CPU", "State", "Time(s)", "Affinity (Hard / Soft)"
    );
    for (i, vcpus) in rows {
        for v in vcpus {
            let online = v.online != 0;
            let state = format!(
                "{}{}{}",
                if v.running != 0 { 'r' } else { '-' },
                if v.blocked != 0 { 'b' } else { '-' },
                if online { '-' } else { 'p' }
            );
            let cpu = if online && v.cpu != VcpuState::NO_CPU {
                v.cpu.to_string()
            } else {
                "-".into()
            };
            out.push_str(&format!(
                "{:<32} {:>5} {:>5} {:>5} {:>5} {:>9.1} {}\n",
                name_of(i),
                i.domid,
                v.vcpu,
                cpu,
                state,
                v.cpu_time_ns as f64 / 1e9,
                "all / all"
            ));
        }
    }
    out
}

/// The backend domain of every device: the hypervisor itself (`DOMID_XEN`).
pub const BACKEND_DOMID: u16 = ferrovisor_abi::xen::xen::DOMID_XEN;

/// A device's backend directory, where the hypervisor keeps its xenstore nodes.
pub fn backend_path(kind: &str, dom: u16, devid: u32) -> String {
    format!("/local/domain/{BACKEND_DOMID}/backend/{kind}/{dom}/{devid}")
}

/// `fv network-list`: xl's layout (`Idx BE Mac Addr. handle state evt-ch
/// tx-/rx-ring-ref BE-path`), one header, then each domain's vifs. `state` is the
/// frontend's xenbus state, as xl reads it.
pub fn network_list_table(rows: &[(u16, Vec<DeviceInfo>)]) -> String {
    let mut out = format!(
        "{:<3} {:<2} {:<17} {:<6} {:<5} {:<6} {:>5}/{:<5} {:<30}\n",
        "Idx", "BE", "Mac Addr.", "handle", "state", "evt-ch", "tx-", "rx-ring-ref", "BE-path"
    );
    for (dom, devs) in rows {
        for d in devs {
            out.push_str(&format!(
                "{:<3} {:<2} {} {:>6} {:>5} {:>6} {:>5}/{:<11} {:<30}\n",
                d.devid,
                BACKEND_DOMID,
                mac_string(&d.mac),
                d.devid,
                d.frontend_state,
                d.evtchn,
                d.ring_ref[0],
                d.ring_ref[1],
                backend_path("vif", *dom, d.devid)
            ));
        }
    }
    out
}

/// `fv block-list`: xl's layout (`Vdev BE handle state evt-ch ring-ref BE-path`; Vdev
/// is the virtual device number, handle the domain, as xl prints them).
pub fn block_list_table(rows: &[(u16, Vec<DeviceInfo>)]) -> String {
    let mut out = format!(
        "{:<5} {:<3} {:<6} {:<5} {:<6} {:<8} {:<30}\n",
        "Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"
    );
    for (dom, devs) in rows {
        for d in devs {
            out.push_str(&format!(
                "{:<5} {:<3} {:<6} {:<5} {:<6} {:<8} {:<30}\n",
                d.devid,
                BACKEND_DOMID,
                dom,
                d.frontend_state,
                d.evtchn,
                d.ring_ref[0],
                backend_path("vbd", *dom, d.devid)
            ));
        }
    }
    out
}

/// A size in 512-byte sectors, in the largest binary unit that keeps a digit before the
/// point (`8.0G`, `512.0M`, `4.0K`).
pub fn sectors_string(sectors: u64) -> String {
    let bytes = sectors.saturating_mul(512) as f64;
    let units = [("T", 40), ("G", 30), ("M", 20), ("K", 10)];
    for (u, shift) in units {
        let unit = (1u64 << shift) as f64;
        if bytes >= unit {
            return format!("{:.1}{u}", bytes / unit);
        }
    }
    format!("{}B", sectors * 512)
}

/// `DISK_*` flags as words.
fn disk_flags(flags: u32) -> String {
    let words: Vec<&str> = [
        (DISK_PARTITION, "partition"),
        (DISK_READ_ONLY, "ro"),
        (DISK_FLUSH, "flush"),
        (DISK_DISCARD, "discard"),
    ]
    .iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|&(_, w)| w)
    .collect();
    if words.is_empty() {
        "-".into()
    } else {
        words.join(",")
    }
}

/// `fv disk-list`: each disk and partition: name, size, first sector, sectors, flags and
/// the domains that have it and how (`web1(3):w`, `db(5):w!`, `b(6):r`), or `-`.
pub fn disk_list_table(rows: &[(DiskInfo, crate::commands::device::DiskUsers)]) -> String {
    let mut out = format!(
        "{:<12} {:>8} {:>12} {:>12} {:<20} {}\n",
        "Name", "Size", "Start", "Sectors", "Flags", "Used by"
    );
    for (d, users) in rows {
        let used = if users.is_empty() {
            match (d.writers, d.readers) {
                (0, 0) => "-".to_string(),
                (w, r) => format!("{w} writable, {r} read-only"),
            }
        } else {
            users
                .iter()
                .map(|(n, id, access)| format!("{n}({id}):{access}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        out.push_str(&format!(
            "{:<12} {:>8} {:>12} {:>12} {:<20} {}\n",
            String::from_utf8_lossy(padded_str(&d.name)),
            sectors_string(d.sectors),
            d.start_sector,
            d.sectors,
            disk_flags(d.flags),
            used
        ));
    }
    out
}

/// A port's owner for display: `web1(3)` for a vif, `(uplink)` for the NIC.
fn port_owner(p: &SwitchPort, domain: &Option<String>) -> String {
    if p.kind == PORT_UPLINK {
        return "(uplink)".into();
    }
    match domain {
        Some(n) => format!("{n}({})", p.domid),
        None => format!("({})", p.domid),
    }
}

/// `fv switch`: a line per port: switch, port, owner, MAC, MACs learned, and the
/// counters as the switch sees them (rx: from the port, tx: to it).
pub fn switch_table(ports: &[(SwitchPort, Option<String>)]) -> String {
    let mut out = format!(
        "{:<8} {:<10} {:<20} {:<17} {:>7} {:>10} {:>12} {:>8} {:>10} {:>12} {:>8}\n",
        "Switch",
        "Port",
        "Domain",
        "MAC",
        "Learned",
        "RX-packets",
        "RX-bytes",
        "RX-drops",
        "TX-packets",
        "TX-bytes",
        "TX-drops"
    );
    for (p, dom) in ports {
        out.push_str(&format!(
            "{:<8} {:<10} {:<20} {:<17} {:>7} {:>10} {:>12} {:>8} {:>10} {:>12} {:>8}\n",
            String::from_utf8_lossy(padded_str(&p.bridge)),
            String::from_utf8_lossy(padded_str(&p.name)),
            port_owner(p, dom),
            mac_string(&p.mac),
            p.learned,
            p.rx_packets,
            p.rx_bytes,
            p.rx_drops,
            p.tx_packets,
            p.tx_bytes,
            p.tx_drops
        ));
    }
    out
}

/// Packet, byte and drop counters of one direction.
#[derive(Debug, Serialize)]
pub struct CountersJson {
    pub packets: u64,
    pub bytes: u64,
    pub drops: u64,
}

/// One port in `fv switch --json`.
#[derive(Debug, Serialize)]
pub struct PortJson {
    pub switch: String,
    pub port: String,
    /// `vif` or `uplink`.
    pub kind: &'static str,
    pub domid: Option<u16>,
    pub domain: Option<String>,
    pub devid: Option<u32>,
    pub mac: String,
    pub learned: u32,
    pub rx: CountersJson,
    pub tx: CountersJson,
}

/// `fv switch --json`: an array of [`PortJson`], pretty-printed, with a final newline.
pub fn switch_json(ports: &[(SwitchPort, Option<String>)]) -> String {
    let v: Vec<PortJson> = ports
        .iter()
        .map(|(p, dom)| {
            let vif = p.kind == PORT_VIF;
            PortJson {
                switch: String::from_utf8_lossy(padded_str(&p.bridge)).into_owned(),
                port: String::from_utf8_lossy(padded_str(&p.name)).into_owned(),
                kind: if vif { "vif" } else { "uplink" },
                domid: vif.then_some(p.domid),
                domain: dom.clone(),
                devid: vif.then_some(p.devid),
                mac: mac_string(&p.mac),
                learned: p.learned,
                rx: CountersJson {
                    packets: p.rx_packets,
                    bytes: p.rx_bytes,
                    drops: p.rx_drops,
                },
                tx: CountersJson {
                    packets: p.tx_packets,
                    bytes: p.tx_bytes,
                    drops: p.tx_drops,
                },
            }
        })
        .collect();
    let mut s = serde_json::to_string_pretty(&v).expect("plain data serialises");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use zerocopy::FromZeros;

    use super::*;

    fn info(id: u16, name: &str, pages: u64, vcpus: u32, flags: u32, ns: u64) -> DomainInfo {
        let mut i = DomainInfo::new_zeroed();
        i.domid = id;
        i.name[..name.len()].copy_from_slice(name.as_bytes());
        i.tot_pages = pages;
        i.max_pages = pages;
        i.nr_vcpus = vcpus;
        i.online_vcpus = vcpus;
        i.flags = flags;
        i.cpu_time_ns = ns;
        i
    }

    #[test]
    fn list_matches_xl_byte_for_byte() {
        // What `xl list` prints for the same domains (Xen 4.17's layout).
        let want = "Name                                        ID   Mem VCPUs\tState\tTime(s)\n\
                    Domain-0                                     0  3911     4     r-----     110.9\n\
                    web1                                         7   256     2     -b----       3.0\n\
                    stopped                                     12   128     1     --psc-       0.0\n";
        let infos = [
            info(
                0,
                "Domain-0",
                3911 * 256 + 100,
                4,
                DOMINFO_RUNNING | DOMINFO_PRIVILEGED,
                110_949_999_999,
            ),
            info(7, "web1", 256 * 256, 2, DOMINFO_BLOCKED, 2_960_000_000),
            info(
                12,
                "stopped",
                128 * 256,
                1,
                DOMINFO_PAUSED | DOMINFO_SHUTDOWN | DOMINFO_CRASHED,
                0,
            ),
        ];
        assert_eq!(list_table(&infos, false), want);
    }

    #[test]
    fn header_columns() {
        assert_eq!(LIST_HEADER.find("ID"), Some(44));
        assert_eq!(LIST_HEADER.find("Mem"), Some(49));
        assert_eq!(LIST_HEADER.find("VCPUs"), Some(53));
    }

    #[test]
    fn long_list_adds_uuid_and_reason() {
        let mut i = info(3, "g", 256, 1, DOMINFO_SHUTDOWN, 0);
        i.uuid = [0x11; 16];
        i.shutdown_reason = 1;
        let t = list_table(&[i], true);
        let line = t.lines().nth(1).unwrap();
        assert!(
            line.ends_with("   11111111-1111-1111-1111-111111111111  reboot"),
            "{line}"
        );
    }

    #[test]
    fn state_letters_in_order() {
        assert_eq!(state_letters(0), "------");
        assert_eq!(state_letters(0x3f), "rbpscd");
        assert_eq!(state_letters(DOMINFO_DYING), "-----d");
    }

    #[test]
    fn json() {
        let j = list_json(&[info(1, "a", 512, 1, DOMINFO_PAUSED, 5)]);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v[0]["name"], "a");
        assert_eq!(v[0]["state"], "--p---");
        assert_eq!(v[0]["paused"], true);
        assert_eq!(v[0]["memory_mib"], 2);
        assert_eq!(v[0]["shutdown_reason"], serde_json::Value::Null);
    }

    #[test]
    fn uptimes() {
        assert_eq!(uptime_string(3_723 * 1_000_000_000), "1:02:03");
        assert_eq!(
            uptime_string(86_400 * 1_000_000_000 + 5_000_000_000),
            "1 day, 0:00:05"
        );
        assert_eq!(uptime_string(3 * 86_400 * 1_000_000_000), "3 days, 0:00:00");
        let mut web = info(4, "web1", 1, 1, 0, 0);
        web.start_time_ns = 3_600 * 1_000_000_000;
        let mut late = info(5, "late", 1, 1, 0, 0);
        // Created after the host figure was read: 0, not an underflow.
        late.start_time_ns = 4_000 * 1_000_000_000;
        let t = uptime_table(
            &[info(0, "Domain-0", 1, 1, DOMINFO_PRIVILEGED, 0), web, late],
            3_723 * 1_000_000_000,
        );
        assert_eq!(
            t,
            "Name                                ID Uptime\n\
             Domain-0                             0 1:02:03\n\
             web1                                 4 0:02:03\n\
             late                                 5 0:00:00\n"
        );
    }

    fn vcpu(vcpu: u32, online: bool, blocked: bool, running: bool, cpu: u32, ns: u64) -> VcpuState {
        VcpuState {
            vcpu,
            online: online.into(),
            blocked: blocked.into(),
            running: running.into(),
            _pad: 0,
            cpu,
            _pad2: 0,
            cpu_time_ns: ns,
        }
    }

    #[test]
    fn vcpus() {
        let up = info(1, "up", 1, 1, DOMINFO_BLOCKED, 1_500_000_000);
        let two = info(2, "smp", 1, 3, DOMINFO_RUNNING, 10_000_000_000);
        let t = vcpu_table(&[
            (up, vec![vcpu(0, true, true, false, 1, 1_500_000_000)]),
            (
                two,
                vec![
                    vcpu(0, true, false, true, 0, 7_250_000_000),
                    vcpu(1, false, false, false, 1, 2_750_000_000),
                    vcpu(2, true, false, false, VcpuState::NO_CPU, 0),
                ],
            ),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "Name                                ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)"
        );
        assert_eq!(
            lines[1],
            "up                                   1     0     1   -b-       1.5 all / all"
        );
        assert_eq!(
            lines[2],
            "smp                                  2     0     0   r--       7.2 all / all"
        );
        // Offline: no CPU, `p`; its time so far stays.
        assert_eq!(
            lines[3],
            "smp                                  2     1     -   --p       2.8 all / all"
        );
        // Up but never run yet.
        assert_eq!(
            lines[4],
            "smp                                  2     2     -   ---       0.0 all / all"
        );
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn host_info() {
        let p = PhysInfo {
            nr_cpus: 2,
            cpu_khz: 2_394_454,
            total_pages: 262_144,
            free_pages: 196_608,
            uptime_ns: 3_723 * 1_000_000_000,
            xen_version: 0x0004_0011,
            nr_domains: 2,
        };
        let t = info_text(&p);
        assert!(t.starts_with("nr_cpus                : 2\ncpu_mhz                : 2394.454\n"));
        assert!(t.contains("total_memory           : 1024\nfree_memory            : 768\n"));
        assert!(t.contains("xen_version            : 4.17\n"));
        assert!(t.contains("uptime                 : 1:02:03\n"));
    }
}
