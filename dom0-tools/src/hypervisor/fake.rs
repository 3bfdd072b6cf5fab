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
        BuildPv, ConsoleIo, CreateDomain, DomainInfo, Domctl, DomctlCmd, ListDomains, PhysInfo,
        ReadLog, RenameDomain, SetMaxMem, SetMemTarget, ShutdownRequest, Sysctl, SysctlCmd,
        VcpuState, DOMINFO_BLOCKED, DOMINFO_BUILT, DOMINFO_CRASHED, DOMINFO_PAUSED,
        DOMINFO_PRIVILEGED, DOMINFO_RUNNING, DOMINFO_SHUTDOWN, FV_CONTROL_INTERFACE_VERSION,
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
const EEXIST: i32 = 17;
const EINVAL: i32 = 22;
const ENOSYS: i32 = 38;

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
    next_id: DomId,
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
            // As the hypervisor today: no device backends yet.
            DomctlCmd::DeviceAttach | DomctlCmd::DeviceDetach | DomctlCmd::ListDevices => {
                return Err(ENOSYS)
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
            SysctlCmd::ListDisks | SysctlCmd::ListSwitchPorts => return Err(ENOSYS),
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
