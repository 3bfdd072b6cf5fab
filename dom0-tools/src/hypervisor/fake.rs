//! An in-memory hypervisor for the tests: domains, their flags, a log ring, a console
//! history and a xenstore, following the rules `abi/src/domctl.rs` states. It records
//! every call so tests can check the order of operations, and can be told to refuse one
//! command with an errno.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use ferrovisor_abi::{
    domctl::{
        padded_str, set_padded, BuildPv, ConsoleIo, CreateDomain, DeviceAttach, DeviceDetach,
        DeviceInfo, DeviceRefusal, DiskInfo, DomainInfo, Domctl, DomctlCmd, ListDevices,
        ListDomains, PhysInfo, ReadLog, RenameDomain, SetMaxMem, SetMemTarget, ShutdownRequest,
        SwitchPort, Sysctl, SysctlCmd, VcpuState, DETACH_FORCE, DEVICE_VBD, DEVICE_VIF, DEVID_AUTO,
        DISK_FLUSH, DISK_PARTITION, DISK_READ_ONLY, DOMINFO_BLOCKED, DOMINFO_BUILT,
        DOMINFO_CRASHED, DOMINFO_DYING, DOMINFO_PAUSED, DOMINFO_PRIVILEGED, DOMINFO_RUNNING,
        DOMINFO_SHUTDOWN, FV_CONTROL_INTERFACE_VERSION, PORT_UPLINK, PORT_VIF, VBD_MODE_READ,
        VBD_MODE_WRITE, VBD_MODE_WRITE_SHARED, VBD_TYPE_CDROM, VBD_TYPE_DISK,
    },
    xen::{DomId, XenPfn},
};
use zerocopy::{FromZeros, IntoBytes};

use super::{check_buffers, domctl_buffers, sysctl_buffers, Buf, Hypervisor, TransportError};

const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENOMEM: i32 = 12;
const EACCES: i32 = 13;
const EBUSY: i32 = 16;
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EINVAL: i32 = 22;
const ENOSPC: i32 = 28;
const EROFS: i32 = 30;
const ENOSYS: i32 = 38;

/// Devices of one kind a fake domain may have.
pub const FAKE_MAX_DEVICES: usize = 8;

/// xenbus states (`io/xenbus.h`).
const XENBUS_INIT_WAIT: u32 = 2;
const XENBUS_CONNECTED: u32 = 4;
const XENBUS_CLOSING: u32 = 5;

/// In [`Fake::stop_script`]: the domain is destroyed (by another `fv`).
pub const DESTROYED_ELSEWHERE: u32 = u32::MAX;

/// One fake domain.
#[derive(Clone, Debug)]
pub struct FakeDomain {
    pub info: DomainInfo,
    pub pause_count: u32,
    /// Pfns populated, in order.
    pub populated: Vec<XenPfn>,
    pub target_pages: u64,
    pub kernel_len: u64,
    pub ramdisk_len: u64,
    pub cmdline: String,
    /// What a `ConsoleRead` returns.
    pub console: Vec<u8>,
    /// What `ConsoleWrite`s sent.
    pub console_input: Vec<u8>,
    pub shutdown_requests: Vec<u32>,
    /// Its vifs and vbds, in attach order.
    pub devices: Vec<DeviceInfo>,
}

/// The fake hypervisor.
#[derive(Debug)]
pub struct Fake {
    pub domains: BTreeMap<DomId, FakeDomain>,
    pub total_pages: u64,
    pub nr_cpus: u32,
    /// The host's uptime (`PhysInfo`); a domain created now gets it as its start time.
    pub uptime_ns: u64,
    pub log: Vec<u8>,
    pub xenstore: BTreeMap<String, String>,
    /// `"domctl CreateDomain 0"`, `"populate 1 256"`, `"xs_write /path value"`, ...
    pub calls: Vec<String>,
    /// The next call of this command fails with this errno.
    pub fail: Option<(String, i32)>,
    /// A request for a shutdown stops the domain at once.
    pub obey_shutdown: bool,
    /// What each `wait_for_domain_change` does: the live domain with this name stops
    /// with this `SHUTDOWN_*` reason (3 crashes it; [`DESTROYED_ELSEWHERE`] destroys it)
    /// and the watch fires. With nothing left, the watch connection is closed (an error).
    pub stop_script: VecDeque<(String, u32)>,
    /// The watch misses the scripted stops: each wait applies one and times out.
    pub quiet_stops: bool,
    /// The host's switches (`xenbr0`).
    pub bridges: Vec<String>,
    /// The host's disks and partitions; `writers`/`readers` are computed when listed.
    pub disks: Vec<DiskInfo>,
    /// The uplink port of `xenbr0`: its name and MAC (none: no NIC).
    pub uplink: Option<(String, [u8; 6])>,
    /// Whether frontends close when asked (a detach without force then removes the
    /// device); otherwise the device stays in Closing.
    pub frontends_close: bool,
    next_id: DomId,
}

/// A [`DiskInfo`] for the fake's host.
pub fn fake_disk(name: &str, parent: &str, start: u64, sectors: u64, flags: u32) -> DiskInfo {
    let mut d = DiskInfo::new_zeroed();
    let _ = set_padded(&mut d.name, name.as_bytes());
    let _ = set_padded(&mut d.parent, parent.as_bytes());
    d.start_sector = start;
    d.sectors = sectors;
    d.sector_size = 512;
    d.flags = flags;
    d
}

fn name_array(name: &str) -> [u8; 64] {
    let mut n = [0u8; 64];
    n[..name.len()].copy_from_slice(name.as_bytes());
    n
}

impl Default for Fake {
    fn default() -> Self {
        Self::new()
    }
}

impl Fake {
    /// A host with 1 GiB, 2 CPUs and dom0 (`Domain-0`, 256 MiB, running).
    pub fn new() -> Self {
        let mut f = Self {
            domains: BTreeMap::new(),
            total_pages: 262_144,
            nr_cpus: 2,
            uptime_ns: 3_723_500_000_000,
            log: b"(XEN) Ferrovisor starting\n(XEN) dom0 built\n".to_vec(),
            xenstore: BTreeMap::new(),
            calls: Vec::new(),
            fail: None,
            obey_shutdown: true,
            stop_script: VecDeque::new(),
            quiet_stops: false,
            bridges: vec!["xenbr0".into()],
            // vda: 8 GiB with two partitions; vdb: a 1 GiB read-only disk.
            disks: vec![
                fake_disk("vda", "", 0, 16 << 20, DISK_FLUSH),
                fake_disk("vda1", "vda", 2048, 2 << 20, DISK_FLUSH | DISK_PARTITION),
                fake_disk(
                    "vda2",
                    "vda",
                    2048 + (2 << 20),
                    (16 << 20) - 2048 - (2 << 20),
                    DISK_FLUSH | DISK_PARTITION,
                ),
                fake_disk("vdb", "", 0, 2 << 20, DISK_READ_ONLY),
            ],
            uplink: Some(("eth0".into(), [0x52, 0x54, 0x00, 0x12, 0x34, 0x56])),
            frontends_close: true,
            next_id: 1,
        };
        f.add_domain(
            0,
            "Domain-0",
            65_536,
            DOMINFO_PRIVILEGED | DOMINFO_BUILT | DOMINFO_RUNNING,
        );
        if let Some(d) = f.domains.get_mut(&0) {
            d.info.cpu_time_ns = 110_900_000_000;
        }
        f
    }

    /// Adds a built domain with `pages` populated.
    pub fn add_domain(&mut self, id: DomId, name: &str, pages: u64, flags: u32) -> &mut FakeDomain {
        let mut info = DomainInfo::new_zeroed();
        info.domid = id;
        info.flags = flags;
        info.nr_vcpus = 1;
        info.online_vcpus = 1;
        info.tot_pages = pages;
        info.max_pages = pages;
        info.name = name_array(name);
        self.next_id = self.next_id.max(id + 1);
        self.domains.insert(
            id,
            FakeDomain {
                info,
                pause_count: u32::from(flags & DOMINFO_PAUSED != 0),
                populated: (0..pages).collect(),
                target_pages: pages,
                kernel_len: 0,
                ramdisk_len: 0,
                cmdline: String::new(),
                console: Vec::new(),
                console_input: Vec::new(),
                shutdown_requests: Vec::new(),
                devices: Vec::new(),
            },
        );
        self.domains.get_mut(&id).expect("just inserted")
    }

    fn used_pages(&self) -> u64 {
        self.domains.values().map(|d| d.info.tot_pages).sum()
    }

    fn refuse(&mut self, op: String, name: &str) -> Result<(), TransportError> {
        if let Some((cmd, errno)) = &self.fail {
            if cmd == name {
                let errno = *errno;
                self.fail = None;
                return Err(TransportError::Hypercall { op, errno });
            }
        }
        Ok(())
    }

    fn dom(&mut self, id: DomId) -> Result<&mut FakeDomain, i32> {
        self.domains.get_mut(&id).ok_or(ESRCH)
    }

    /// Adds a vif to a domain as the hypervisor would, for tests that start with devices.
    pub fn add_vif(&mut self, dom: DomId, devid: u32, mac: [u8; 6], bridge: &str) {
        let mut a = DeviceAttach::new_zeroed();
        a.kind = DEVICE_VIF;
        a.devid = devid;
        a.mac = mac;
        let _ = set_padded(&mut a.bridge, bridge.as_bytes());
        let _ = self.attach(dom, &mut a);
    }

    /// Adds a vbd to a domain as the hypervisor would.
    pub fn add_vbd(&mut self, dom: DomId, target: &str, vdev_name: &str, vdev: u32, mode: u32) {
        let mut a = DeviceAttach::new_zeroed();
        a.kind = DEVICE_VBD;
        a.devid = vdev;
        a.vdev = vdev;
        a.mode = mode;
        let _ = set_padded(&mut a.target, target.as_bytes());
        let _ = set_padded(&mut a.vdev_name, vdev_name.as_bytes());
        let _ = self.attach(dom, &mut a);
    }

    /// The disk entry named `name`.
    fn disk(&self, name: &[u8]) -> Option<&DiskInfo> {
        self.disks.iter().find(|d| padded_str(&d.name) == name)
    }

    /// Whether two targets share sectors: the same, or a disk and one of its partitions.
    fn overlap(&self, a: &[u8], b: &[u8]) -> bool {
        let (Some(x), Some(y)) = (self.disk(a), self.disk(b)) else {
            return false;
        };
        let base = |d: &DiskInfo| {
            if d.flags & DISK_PARTITION != 0 {
                padded_str(&d.parent).to_vec()
            } else {
                padded_str(&d.name).to_vec()
            }
        };
        base(x) == base(y)
            && x.start_sector < y.start_sector + y.sectors
            && y.start_sector < x.start_sector + x.sectors
    }

    /// The hypervisor's checks for `DeviceAttach`, in its order; the device is added.
    fn attach(&mut self, id: DomId, a: &mut DeviceAttach) -> Result<(), (DeviceRefusal, i32)> {
        let no = |r: DeviceRefusal, errno: i32| Err((r, errno));
        let info = self
            .domains
            .get(&id)
            .ok_or((DeviceRefusal::None, ESRCH))?
            .info;
        if info.flags & DOMINFO_BUILT == 0 || info.flags & DOMINFO_DYING != 0 {
            return no(DeviceRefusal::DomainNotReady, EINVAL);
        }
        if a.flags != 0 || (a.kind != DEVICE_VIF && a.kind != DEVICE_VBD) {
            return no(DeviceRefusal::BadSpec, EINVAL);
        }
        let mut dev = DeviceInfo::new_zeroed();
        dev.kind = a.kind;
        dev.backend_state = XENBUS_INIT_WAIT;
        dev.frontend_state = 1;
        if a.kind == DEVICE_VIF {
            if a.mac[0] & 1 != 0 || a.mac == [0; 6] {
                return no(DeviceRefusal::BadSpec, EINVAL);
            }
            let bridge = padded_str(&a.bridge);
            if !self.bridges.iter().any(|b| b.as_bytes() == bridge) {
                return no(DeviceRefusal::NoSuchBridge, ENODEV);
            }
            dev.mac = a.mac;
            dev.bridge = a.bridge;
        } else {
            let target = padded_str(&a.target).to_vec();
            let Some(disk) = self.disk(&target).copied() else {
                return no(DeviceRefusal::NoSuchTarget, ENODEV);
            };
            let writable = match a.mode {
                VBD_MODE_READ => false,
                VBD_MODE_WRITE | VBD_MODE_WRITE_SHARED => true,
                _ => return no(DeviceRefusal::BadSpec, EINVAL),
            };
            if a.device_type != VBD_TYPE_DISK && a.device_type != VBD_TYPE_CDROM {
                return no(DeviceRefusal::BadSpec, EINVAL);
            }
            if writable && disk.flags & DISK_READ_ONLY != 0 {
                return no(DeviceRefusal::TargetReadOnly, EROFS);
            }
            let d = &self.domains[&id];
            if d.devices
                .iter()
                .any(|v| v.kind == DEVICE_VBD && v.vdev == a.vdev)
            {
                return no(DeviceRefusal::VdevInUse, EEXIST);
            }
            if a.mode != VBD_MODE_WRITE_SHARED {
                // xl's sharing rules, as the hypervisor's: `w` is exclusive among other
                // running domains (any overlapping attachment but a `w!` one refuses it),
                // `r` is refused by an overlapping `w`; `w!` on either side shares.
                let holder = self.domains.values().find(|o| {
                    o.info.domid != id
                        && o.info.flags & DOMINFO_DYING == 0
                        && o.devices.iter().any(|v| {
                            v.kind == DEVICE_VBD
                                && v.mode != VBD_MODE_WRITE_SHARED
                                && (a.mode == VBD_MODE_WRITE || v.mode == VBD_MODE_WRITE)
                                && self.overlap(padded_str(&v.target), &target)
                        })
                });
                if let Some(o) = holder {
                    a.conflict_domain = o.info.domid;
                    return no(DeviceRefusal::TargetInUse, EBUSY);
                }
            }
            dev.target = a.target;
            dev.vdev_name = a.vdev_name;
            dev.vdev = a.vdev;
            dev.mode = a.mode;
            dev.device_type = a.device_type;
        }
        let d = self
            .domains
            .get_mut(&id)
            .ok_or((DeviceRefusal::None, ESRCH))?;
        let same_kind = || d.devices.iter().filter(|v| v.kind == a.kind);
        if same_kind().count() >= FAKE_MAX_DEVICES {
            return no(DeviceRefusal::TooManyDevices, ENOSPC);
        }
        let devid = if a.devid == DEVID_AUTO {
            (0..)
                .find(|n| !same_kind().any(|v| v.devid == *n))
                .unwrap_or(0)
        } else {
            a.devid
        };
        if same_kind().any(|v| v.devid == devid) {
            return no(DeviceRefusal::DevidInUse, EEXIST);
        }
        dev.devid = devid;
        a.devid = devid;
        d.devices.push(dev);
        Ok(())
    }

    /// Makes every device of `dom` connected, as frontends would (rings and channel set).
    pub fn connect_all(&mut self, dom: DomId) {
        if let Some(d) = self.domains.get_mut(&dom) {
            for (i, v) in d.devices.iter_mut().enumerate() {
                let i = i as u32;
                v.backend_state = XENBUS_CONNECTED;
                v.frontend_state = XENBUS_CONNECTED;
                v.evtchn = 10 + i;
                v.ring_ref = [768 + 2 * i, 769 + 2 * i];
                v.requests = 100 * u64::from(i + 1);
            }
        }
    }

    /// The disks with their users counted.
    fn listed_disks(&self) -> Vec<DiskInfo> {
        self.disks
            .iter()
            .map(|disk| {
                let mut d = *disk;
                for o in self.domains.values() {
                    for v in o.devices.iter().filter(|v| v.kind == DEVICE_VBD) {
                        if padded_str(&v.target) == padded_str(&disk.name) {
                            if v.mode == VBD_MODE_READ {
                                d.readers += 1;
                            } else {
                                d.writers += 1;
                            }
                        }
                    }
                }
                d
            })
            .collect()
    }

    /// The uplink, then every vif, on their switches; counters from the devices'.
    fn switch_ports(&self) -> Vec<SwitchPort> {
        let mut ports = Vec::new();
        if let Some((name, mac)) = &self.uplink {
            let mut p = SwitchPort::new_zeroed();
            let _ = set_padded(&mut p.bridge, b"xenbr0");
            let _ = set_padded(&mut p.name, name.as_bytes());
            p.kind = PORT_UPLINK;
            p.mac = *mac;
            p.learned = 3;
            (p.rx_packets, p.rx_bytes, p.tx_packets, p.tx_bytes) = (1200, 345_678, 800, 123_456);
            ports.push(p);
        }
        for d in self.domains.values() {
            for v in d.devices.iter().filter(|v| v.kind == DEVICE_VIF) {
                let mut p = SwitchPort::new_zeroed();
                p.bridge = v.bridge;
                let name = format!("vif{}.{}", d.info.domid, v.devid);
                let _ = set_padded(&mut p.name, name.as_bytes());
                p.kind = PORT_VIF;
                p.domid = d.info.domid;
                p.devid = v.devid;
                p.mac = v.mac;
                p.learned = u32::from(v.requests > 0);
                p.rx_packets = v.requests;
                p.rx_bytes = v.requests * 98;
                p.tx_packets = v.requests / 2;
                p.tx_bytes = v.requests * 49;
                p.tx_drops = v.errors;
                ports.push(p);
            }
        }
        ports
    }

    fn run_domctl(&mut self, req: &mut Domctl, bufs: &mut [Buf<'_>]) -> Result<(), i32> {
        if req.interface_version != FV_CONTROL_INTERFACE_VERSION {
            return Err(EACCES);
        }
        let cmd = DomctlCmd::try_from(req.cmd).map_err(|_| ENOSYS)?;
        let id = req.domain;
        match cmd {
            DomctlCmd::CreateDomain => {
                let c: CreateDomain = req.payload();
                let name = String::from_utf8_lossy(ferrovisor_abi::domctl::name_bytes(&c.name))
                    .into_owned();
                if name.is_empty() || c.max_vcpus == 0 || c.max_pages == 0 || c.flags != 0 {
                    return Err(EINVAL);
                }
                if self
                    .domains
                    .values()
                    .any(|d| d.info.name_bytes() == name.as_bytes())
                {
                    return Err(EEXIST);
                }
                let new = self.next_id;
                let self_uptime = self.uptime_ns;
                let d = self.add_domain(new, &name, 0, DOMINFO_PAUSED);
                d.info.max_pages = c.max_pages;
                d.info.nr_vcpus = c.max_vcpus;
                d.info.online_vcpus = 0;
                d.info.uuid = c.uuid;
                d.info.start_time_ns = self_uptime;
                d.populated.clear();
                req.domain = new;
            }
            DomctlCmd::DestroyDomain => {
                if id == 0 {
                    return Err(EINVAL);
                }
                self.domains.remove(&id).ok_or(ESRCH)?;
            }
            DomctlCmd::PauseDomain => {
                let d = self.dom(id)?;
                d.pause_count += 1;
                d.info.flags = (d.info.flags | DOMINFO_PAUSED) & !DOMINFO_RUNNING;
            }
            DomctlCmd::UnpauseDomain => {
                let d = self.dom(id)?;
                if d.pause_count == 0 {
                    return Err(EINVAL);
                }
                d.pause_count -= 1;
                if d.pause_count == 0 {
                    d.info.flags &= !DOMINFO_PAUSED;
                    if d.info.flags & DOMINFO_BUILT != 0 && d.info.flags & DOMINFO_SHUTDOWN == 0 {
                        d.info.flags |= DOMINFO_RUNNING;
                        d.info.online_vcpus = d.info.nr_vcpus;
                    }
                }
            }
            DomctlCmd::GetDomainInfo => {
                let info = self.dom(id)?.info;
                req.set_payload(&info);
            }
            DomctlCmd::SetMaxMem => {
                let m: SetMaxMem = req.payload();
                self.dom(id)?.info.max_pages = m.max_pages;
            }
            DomctlCmd::SetMemTarget => {
                let t: SetMemTarget = req.payload();
                let d = self.dom(id)?;
                if t.target_pages > d.info.max_pages {
                    return Err(EINVAL);
                }
                d.target_pages = t.target_pages;
            }
            DomctlCmd::BuildPv => {
                let b: BuildPv = req.payload();
                let uses = domctl_buffers(req);
                let idx = check_buffers("build", &uses, bufs).map_err(|_| EINVAL)?;
                let cmdline = uses
                    .iter()
                    .zip(&idx)
                    .find(|(u, _)| u.handle == b.cmdline)
                    .map(|(u, &i)| match &bufs[i] {
                        Buf::In(s) => String::from_utf8_lossy(&s[..u.len]).into_owned(),
                        Buf::Out(s) => String::from_utf8_lossy(&s[..u.len]).into_owned(),
                    })
                    .unwrap_or_default();
                let d = self.dom(id)?;
                if d.populated.is_empty() || b.kernel_len == 0 || d.info.flags & DOMINFO_BUILT != 0
                {
                    return Err(EINVAL);
                }
                d.kernel_len = b.kernel_len;
                d.ramdisk_len = b.ramdisk_len;
                d.cmdline = cmdline;
                d.info.flags |= DOMINFO_BUILT;
                let out = BuildPv {
                    store_mfn: 0x1000,
                    console_mfn: 0x1001,
                    store_port: 1,
                    console_port: 2,
                    entry: 0xffff_ffff_8100_0000,
                    start_info: 0xffff_ffff_8200_0000,
                    ..b
                };
                req.set_payload(&out);
            }
            DomctlCmd::RequestShutdown => {
                let r: ShutdownRequest = req.payload();
                if r.reason > 2 {
                    return Err(EINVAL);
                }
                let obey = self.obey_shutdown;
                let d = self.dom(id)?;
                d.shutdown_requests.push(r.reason);
                if obey {
                    d.info.flags =
                        (d.info.flags | DOMINFO_SHUTDOWN) & !(DOMINFO_RUNNING | DOMINFO_BLOCKED);
                    d.info.shutdown_reason = r.reason;
                }
            }
            DomctlCmd::ConsoleRead => {
                let mut c: ConsoleIo = req.payload();
                let uses = domctl_buffers(req);
                let idx = check_buffers("console", &uses, bufs).map_err(|_| EINVAL)?;
                let history = self.dom(id)?.console.clone();
                let start = usize::try_from(c.offset)
                    .unwrap_or(usize::MAX)
                    .min(history.len());
                let Some(Buf::Out(out)) = idx.first().map(|&i| &mut bufs[i]) else {
                    return Err(EINVAL);
                };
                let n = (history.len() - start).min(c.len as usize);
                out[..n].copy_from_slice(&history[start..start + n]);
                c.done = n as u32;
                c.offset = (start + n) as u64;
                c.missed = 0;
                req.set_payload(&c);
            }
            DomctlCmd::ConsoleWrite => {
                let mut c: ConsoleIo = req.payload();
                let uses = domctl_buffers(req);
                let idx = check_buffers("console", &uses, bufs).map_err(|_| EINVAL)?;
                let bytes = match idx.first().map(|&i| &bufs[i]) {
                    Some(Buf::In(b)) => b[..c.len as usize].to_vec(),
                    Some(Buf::Out(b)) => b[..c.len as usize].to_vec(),
                    None => Vec::new(),
                };
                c.done = bytes.len() as u32;
                self.dom(id)?.console_input.extend_from_slice(&bytes);
                req.set_payload(&c);
            }
            DomctlCmd::RenameDomain => {
                let r: RenameDomain = req.payload();
                let name = ferrovisor_abi::domctl::name_bytes(&r.name).to_vec();
                if id == 0 || name.is_empty() {
                    return Err(EINVAL);
                }
                if self
                    .domains
                    .values()
                    .any(|d| d.info.domid != id && d.info.name_bytes() == name.as_slice())
                {
                    return Err(EEXIST);
                }
                let d = self.dom(id)?;
                d.info.name = [0; 64];
                d.info.name[..name.len()].copy_from_slice(&name);
            }
            DomctlCmd::GetVcpuInfo => {
                // vCPUs below `online_vcpus` are up, on CPU `vcpu % nr_cpus`, sharing the
                // domain's time; a running domain has them on their CPUs.
                let nr_cpus = self.nr_cpus.max(1);
                let mut v: VcpuState = req.payload();
                let info = self.dom(id)?.info;
                if v.vcpu >= info.nr_vcpus {
                    return Err(ENOENT);
                }
                let online = v.vcpu < info.online_vcpus;
                v.online = online.into();
                v.running = (online && info.flags & DOMINFO_RUNNING != 0).into();
                v.blocked = (online && info.flags & DOMINFO_BLOCKED != 0).into();
                v.cpu = v.vcpu % nr_cpus;
                v.cpu_time_ns = info.cpu_time_ns / u64::from(info.nr_vcpus.max(1));
                req.set_payload(&v);
            }
            DomctlCmd::GetVcpuContext | DomctlCmd::SetVcpuContext => {
                return Err(ENOSYS);
            }
            DomctlCmd::DeviceAttach => {
                let mut a: DeviceAttach = req.payload();
                a.reason = DeviceRefusal::None.raw();
                a.conflict_domain = 0;
                let result = self.attach(id, &mut a);
                if let Err((refusal, _)) = result {
                    a.reason = refusal.raw();
                }
                // The outputs come back even with a refusal.
                req.set_payload(&a);
                return result.map_err(|(_, errno)| errno);
            }
            DomctlCmd::DeviceDetach => {
                let d: DeviceDetach = req.payload();
                let close = self.frontends_close;
                let dom = self.dom(id)?;
                let at = dom
                    .devices
                    .iter()
                    .position(|i| i.kind == d.kind && i.devid == d.devid)
                    .ok_or(ENOENT)?;
                if d.flags & !DETACH_FORCE != 0 {
                    return Err(EINVAL);
                }
                if d.flags & DETACH_FORCE != 0 || close {
                    dom.devices.remove(at);
                } else {
                    dom.devices[at].backend_state = XENBUS_CLOSING;
                }
            }
            DomctlCmd::ListDevices => {
                let devices = self.dom(id)?.devices.clone();
                fill_list(req, bufs, domctl_buffers, &devices)?;
            }
        }
        Ok(())
    }

    fn run_sysctl(&mut self, req: &mut Sysctl, bufs: &mut [Buf<'_>]) -> Result<(), i32> {
        if req.interface_version != FV_CONTROL_INTERFACE_VERSION {
            return Err(EACCES);
        }
        match SysctlCmd::try_from(req.cmd).map_err(|_| ENOSYS)? {
            SysctlCmd::PhysInfo => {
                let p = PhysInfo {
                    nr_cpus: self.nr_cpus,
                    cpu_khz: 2_394_454,
                    total_pages: self.total_pages,
                    free_pages: self.total_pages - self.used_pages(),
                    uptime_ns: self.uptime_ns,
                    xen_version: ferrovisor_abi::version::XEN_VERSION,
                    nr_domains: self.domains.len() as u32,
                };
                req.set_payload(&p);
            }
            SysctlCmd::ListDomains => {
                let mut l: ListDomains = req.payload();
                let idx = check_buffers("list", &sysctl_buffers(req), bufs).map_err(|_| EINVAL)?;
                let Some(Buf::Out(out)) = idx.first().map(|&i| &mut bufs[i]) else {
                    return Err(EINVAL);
                };
                let size = core::mem::size_of::<DomainInfo>();
                let mut n = 0;
                for d in self
                    .domains
                    .range(l.first_domain..)
                    .take(l.max_entries as usize)
                {
                    out[n * size..(n + 1) * size].copy_from_slice(d.1.info.as_bytes());
                    n += 1;
                }
                l.nr_entries = n as u32;
                req.set_payload(&l);
            }
            SysctlCmd::ListDisks => {
                let disks = self.listed_disks();
                fill_list(req, bufs, sysctl_buffers, &disks)?;
            }
            SysctlCmd::ListSwitchPorts => {
                let ports = self.switch_ports();
                fill_list(req, bufs, sysctl_buffers, &ports)?;
            }
            SysctlCmd::ReadLog => {
                let mut r: ReadLog = req.payload();
                let idx = check_buffers("log", &sysctl_buffers(req), bufs).map_err(|_| EINVAL)?;
                let Some(Buf::Out(out)) = idx.first().map(|&i| &mut bufs[i]) else {
                    return Err(EINVAL);
                };
                let start = usize::try_from(r.offset)
                    .unwrap_or(usize::MAX)
                    .min(self.log.len());
                let n = (self.log.len() - start).min(r.len as usize);
                out[..n].copy_from_slice(&self.log[start..start + n]);
                r.done = n as u32;
                r.offset = (start + n) as u64;
                r.missed = 0;
                req.set_payload(&r);
            }
        }
        Ok(())
    }
}

impl Hypervisor for Fake {
    fn domctl(&mut self, req: &mut Domctl, bufs: &mut [Buf<'_>]) -> Result<(), TransportError> {
        let name = DomctlCmd::try_from(req.cmd).map_or("?".into(), |c| format!("{c:?}"));
        self.calls.push(format!("domctl {name} {}", req.domain));
        let op = super::domctl_name(req);
        self.refuse(op.clone(), &name)?;
        self.run_domctl(req, bufs)
            .map_err(|errno| TransportError::Hypercall { op, errno })
    }

    fn sysctl(&mut self, req: &mut Sysctl, bufs: &mut [Buf<'_>]) -> Result<(), TransportError> {
        let name = SysctlCmd::try_from(req.cmd).map_or("?".into(), |c| format!("{c:?}"));
        self.calls.push(format!("sysctl {name}"));
        let op = super::sysctl_name(req);
        self.refuse(op.clone(), &name)?;
        self.run_sysctl(req, bufs)
            .map_err(|errno| TransportError::Hypercall { op, errno })
    }

    fn populate_physmap(
        &mut self,
        dom: DomId,
        extents: &mut [XenPfn],
    ) -> Result<usize, TransportError> {
        self.calls.push(format!("populate {dom} {}", extents.len()));
        let op = format!("memory_op populate_physmap of domain {dom}");
        self.refuse(op.clone(), "populate")?;
        let free = self.total_pages - self.used_pages();
        let d = self
            .domains
            .get_mut(&dom)
            .ok_or(TransportError::Hypercall {
                op: op.clone(),
                errno: ESRCH,
            })?;
        if dom == 0 {
            return Err(TransportError::Hypercall { op, errno: EPERM });
        }
        let room = (d.info.max_pages - d.info.tot_pages).min(free) as usize;
        let n = extents.len().min(room);
        for pfn in extents.iter_mut().take(n) {
            d.populated.push(*pfn);
            *pfn += 0x10_0000;
        }
        d.info.tot_pages += n as u64;
        if n == 0 && !extents.is_empty() {
            return Err(TransportError::Hypercall { op, errno: ENOMEM });
        }
        Ok(n)
    }

    fn xenstore_write(&mut self, path: &str, value: &str) -> Result<(), TransportError> {
        self.calls.push(format!("xs_write {path} {value}"));
        self.xenstore.insert(path.into(), value.into());
        Ok(())
    }

    fn xenstore_read(&mut self, path: &str) -> Result<Option<String>, TransportError> {
        Ok(self.xenstore.get(path).cloned())
    }

    fn wait_for_domain_change(&mut self, _timeout: Duration) -> Result<bool, TransportError> {
        self.calls.push("wait".into());
        let Some((name, reason)) = self.stop_script.pop_front() else {
            return Err(TransportError::Xenstore {
                op: "watch",
                path: "@releaseDomain".into(),
                reason: "the fake's script is over".into(),
            });
        };
        if reason == DESTROYED_ELSEWHERE {
            self.domains
                .retain(|_, d| d.info.name_bytes() != name.as_bytes());
        } else if let Some(d) = self
            .domains
            .values_mut()
            .find(|d| d.info.name_bytes() == name.as_bytes())
        {
            d.info.flags &= !(DOMINFO_RUNNING | DOMINFO_BLOCKED);
            d.info.flags |= DOMINFO_SHUTDOWN;
            if reason == 3 {
                d.info.flags |= DOMINFO_CRASHED;
            }
            d.info.shutdown_reason = reason;
        }
        Ok(!self.quiet_stops)
    }
}

/// Copies `items` into the buffer a list request names, as many as fit, and sets
/// `nr_entries`.
fn fill_list<R, T>(
    req: &mut R,
    bufs: &mut [Buf<'_>],
    uses: fn(&R) -> Vec<super::BufferUse>,
    items: &[T],
) -> Result<(), i32>
where
    R: ListRequest,
    T: IntoBytes + zerocopy::Immutable,
{
    let mut l: ListDevices = req.list();
    let idx = check_buffers("list", &uses(req), bufs).map_err(|_| EINVAL)?;
    let Some(Buf::Out(out)) = idx.first().map(|&i| &mut bufs[i]) else {
        return Err(EINVAL);
    };
    let size = core::mem::size_of::<T>();
    let n = items.len().min(l.max_entries as usize);
    for (i, item) in items.iter().take(n).enumerate() {
        out[i * size..(i + 1) * size].copy_from_slice(item.as_bytes());
    }
    l.nr_entries = n as u32;
    req.set_list(&l);
    Ok(())
}

/// A domctl or sysctl whose payload is a [`ListDevices`].
trait ListRequest {
    fn list(&self) -> ListDevices;
    fn set_list(&mut self, l: &ListDevices);
}

impl ListRequest for Domctl {
    fn list(&self) -> ListDevices {
        self.payload()
    }
    fn set_list(&mut self, l: &ListDevices) {
        self.set_payload(l);
    }
}

impl ListRequest for Sysctl {
    fn list(&self) -> ListDevices {
        self.payload()
    }
    fn set_list(&mut self, l: &ListDevices) {
        self.set_payload(l);
    }
}
