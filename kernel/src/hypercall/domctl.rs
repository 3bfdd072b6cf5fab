//! `domctl` and `sysctl`: Ferrovisor's own control interface (`ferrovisor_abi::domctl`),
//! for the privileged domain only. Everything another domain asks gets `-EPERM`.
//!
//! Each call copies the fixed-size request in from the caller, checks the interface
//! version (`-EACCES` on a mismatch, as Xen answers a stale toolstack), runs the command
//! and copies the request back with its outputs.

use alloc::vec::Vec;

use ferrovisor::{domain_control, mm::frame_table::DomId};
use ferrovisor_abi::{
    domctl::{
        self, BuildPv, ConsoleIo, CreateDomain, DomainInfo, Domctl, DomctlCmd, ListDomains,
        PhysInfo, ReadLog, RenameDomain, SetMaxMem, SetMemTarget, ShutdownRequest, Sysctl,
        SysctlCmd, VcpuContext, VcpuState, DOMAIN_NAME_MAX, FV_CONTROL_INTERFACE_VERSION,
    },
    errno::XenErrno,
    version::XEN_VERSION,
};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

use super::Result;
use crate::{
    arch::x86_64::memory,
    backend, clock,
    domain::{self, lifecycle, Domain, DOM0},
};

/// Proof that the caller is the privileged domain: only [`privileged`] makes one, and
/// every control operation takes it.
pub struct Privileged(());

/// The caller's privilege, or `-EPERM`.
pub fn privileged() -> core::result::Result<Privileged, XenErrno> {
    match domain::with_current(|d| d.id) {
        Some(id) if id == DOM0 => Ok(Privileged(())),
        _ => Err(XenErrno::Eperm),
    }
}

/// Copies a `T` in from the caller's memory.
pub(super) fn read_in<T: FromBytes>(va: u64) -> core::result::Result<T, XenErrno> {
    let mut raw = alloc::vec![0u8; core::mem::size_of::<T>()];
    domain::with_current(|d| d.read_guest(va, &mut raw))
        .ok_or(XenErrno::Esrch)?
        .map_err(|_| XenErrno::Efault)?;
    T::read_from_bytes(&raw).map_err(|_| XenErrno::Efault)
}

/// Copies bytes out to the caller's memory.
pub(super) fn write_out(va: u64, bytes: &[u8]) -> core::result::Result<(), XenErrno> {
    domain::with_current(|d| d.write_guest(va, bytes))
        .ok_or(XenErrno::Esrch)?
        .map_err(|_| XenErrno::Efault)
}

/// Copies the first `max` of `entries` out to the caller's array at `buffer` (the list
/// commands' output); returns how many were written.
fn write_entries<T: IntoBytes + Immutable>(
    buffer: u64,
    entries: &[T],
    max: u32,
) -> core::result::Result<u32, XenErrno> {
    let n = entries.len().min(max as usize);
    for (i, e) in entries[..n].iter().enumerate() {
        let at = buffer.wrapping_add((i * core::mem::size_of::<T>()) as u64);
        write_out(at, e.as_bytes())?;
    }
    Ok(n as u32)
}

pub fn domctl([arg, ..]: [u64; 5]) -> Result {
    let p = privileged()?;
    lifecycle::reap_dying();
    domain::with_domains(backend::announce_stops);
    let mut req: Domctl = read_in(arg)?;
    if req.interface_version != FV_CONTROL_INTERFACE_VERSION {
        return Err(XenErrno::Eacces);
    }
    let cmd = DomctlCmd::try_from(req.cmd).map_err(|_| XenErrno::Enosys)?;
    let target = DomId(req.domain);
    match cmd {
        DomctlCmd::CreateDomain => {
            let id = create(&p, &req.payload())?;
            req.domain = id.0;
        }
        DomctlCmd::DestroyDomain => lifecycle::destroy(&p, target)?,
        DomctlCmd::PauseDomain => {
            on_domu(target, |d| match d.pause_count.checked_add(1) {
                Some(_) => Ok(()),
                None => Err(XenErrno::Eoverflow),
            })?;
            // Returns with its vCPUs off every CPU, their state saved (as Xen's pause).
            domain::pause_sync(target).ok_or(XenErrno::Esrch)?;
        }
        DomctlCmd::UnpauseDomain => on_domu(target, |d| {
            d.pause_count = d.pause_count.checked_sub(1).ok_or(XenErrno::Einval)?;
            d.kick_vcpus();
            Ok(())
        })?,
        DomctlCmd::GetDomainInfo => {
            let info = domain::with_domains(|doms| {
                doms.get(target).map(info).or_else(|| {
                    doms.dying()
                        .find(|(id, _)| *id == target)
                        .map(|(id, d)| dying_info(id, d))
                })
            })
            .ok_or(XenErrno::Esrch)?;
            req.set_payload(&info);
        }
        DomctlCmd::SetMaxMem => {
            let m: SetMaxMem = req.payload();
            domain::with_domain(target, |d| d.max_pages = m.max_pages).ok_or(XenErrno::Esrch)?;
        }
        DomctlCmd::SetMemTarget => {
            let t: SetMemTarget = req.payload();
            set_mem_target(&p, target, t.target_pages)?;
        }
        DomctlCmd::RequestShutdown => {
            let r: ShutdownRequest = req.payload();
            request_shutdown(&p, target, r.reason)?;
        }
        DomctlCmd::ConsoleRead => {
            let mut c: ConsoleIo = req.payload();
            console_read(&p, target, &mut c)?;
            req.set_payload(&c);
        }
        DomctlCmd::ConsoleWrite => {
            let mut c: ConsoleIo = req.payload();
            console_write(&p, target, &mut c)?;
            req.set_payload(&c);
        }
        DomctlCmd::RenameDomain => {
            let r: RenameDomain = req.payload();
            lifecycle::rename(&p, target, domctl::name_bytes(&r.name))?;
        }
        DomctlCmd::GetVcpuInfo => {
            let mut v: VcpuState = req.payload();
            let now = clock::now_ns();
            let (online, blocked, running, cpu, time) = domain::with_domain(target, |d| {
                d.vcpus()
                    .find(|x| x.id == v.vcpu)
                    .map(|x| {
                        let online = x.online && d.built;
                        (
                            online,
                            online && x.blocked,
                            x.on_cpu.is_some(),
                            x.last_cpu,
                            x.cpu_time_ns(now),
                        )
                    })
                    .ok_or(XenErrno::Enoent)
            })
            .ok_or(XenErrno::Esrch)??;
            v.online = online.into();
            v.blocked = blocked.into();
            v.running = running.into();
            v.cpu = cpu.unwrap_or(VcpuState::NO_CPU);
            v.cpu_time_ns = time;
            req.set_payload(&v);
        }
        DomctlCmd::BuildPv => {
            let mut b: BuildPv = req.payload();
            lifecycle::build_pv(&p, target, &mut b)?;
            req.set_payload(&b);
        }
        DomctlCmd::GetVcpuContext => {
            let c: VcpuContext = req.payload();
            let ctx = on_stopped(target, |d| super::vcpu::context_of(d, c.vcpu))?;
            write_out(c.ctx.0, ctx.as_bytes())?;
        }
        DomctlCmd::SetVcpuContext => {
            let c: VcpuContext = req.payload();
            let ctx = super::vcpu::read_context(c.ctx.0)?;
            on_stopped(target, |d| {
                super::vcpu::apply_context(d, c.vcpu, &ctx, true)
            })?;
        }
        DomctlCmd::DeviceAttach => {
            let mut a: domctl::DeviceAttach = req.payload();
            a.reason = domctl::DeviceRefusal::None.raw();
            a.conflict_domain = 0;
            let result = domain::with_domains(|doms| {
                let r = backend::devices::attach(doms, target, &mut a);
                backend::devices::drain(doms);
                r
            });
            if let Err(e) = &result {
                a.reason = e.refusal.reason.raw();
                a.conflict_domain = e.refusal.conflict_domain.unwrap_or(0);
            }
            // The reason goes back with a refusal too: `fv` names it.
            req.set_payload(&a);
            write_out(arg, req.as_bytes())?;
            return result.map(|()| 0).map_err(|e| e.errno);
        }
        DomctlCmd::DeviceDetach => {
            let d: domctl::DeviceDetach = req.payload();
            domain::with_domains(|doms| {
                let r = backend::devices::detach(doms, target, &d);
                backend::devices::drain(doms);
                r
            })?;
        }
        DomctlCmd::ListDevices => {
            let mut l: domctl::ListDevices = req.payload();
            if domain::with_domains(|doms| doms.get(target).is_none()) {
                return Err(XenErrno::Esrch);
            }
            let devices = backend::devices::list(target);
            l.nr_entries = write_entries(l.buffer.0, &devices, l.max_entries)?;
            req.set_payload(&l);
        }
    }
    write_out(arg, req.as_bytes())?;
    Ok(0)
}

/// A domain's vCPU state is read or replaced only while none of its vCPUs can run.
fn stopped(d: &Domain) -> core::result::Result<(), XenErrno> {
    if d.id == DOM0 || d.can_run() {
        Err(XenErrno::Ebusy)
    } else {
        Ok(())
    }
}

/// Runs `f` on a stopped domain once none of its vCPUs is on a CPU: one that stopped
/// itself (shutdown, crash) may still be live on another CPU for a moment, its registers,
/// segment bases and page-table root in that CPU rather than in its saved state (which
/// `f` reads or replaces, and which that CPU's switch away would overwrite).
fn on_stopped<R>(
    target: DomId,
    f: impl FnOnce(&mut Domain) -> core::result::Result<R, XenErrno>,
) -> core::result::Result<R, XenErrno> {
    let mut f = Some(f);
    loop {
        let done = domain::with_domain(target, |d| {
            stopped(d)?;
            if d.vcpus().any(|v| v.on_cpu.is_some()) {
                d.kick_vcpus();
                return Ok(None);
            }
            f.take().map(|f| f(d)).transpose()
        })
        .ok_or(XenErrno::Esrch)??;
        if let Some(r) = done {
            return Ok(r);
        }
        for _ in 0..1000 {
            crate::arch::x86_64::smp::serve_flush();
            core::hint::spin_loop();
        }
    }
}

/// Runs `f` on a domain other than dom0 (which cannot pause or stop itself this way).
fn on_domu(
    target: DomId,
    f: impl FnOnce(&mut Domain) -> core::result::Result<(), XenErrno>,
) -> core::result::Result<(), XenErrno> {
    if target == DOM0 {
        return Err(XenErrno::Einval);
    }
    domain::with_domain(target, f).ok_or(XenErrno::Esrch)?
}

/// Most console bytes one `ConsoleRead`/`ConsoleWrite` moves (the caller loops).
const CONSOLE_CHUNK: usize = 16 * 1024;

/// `SetMemTarget`: the balloon target, published where a PV guest's balloon driver
/// watches for it (`memory/target`, in KiB).
fn set_mem_target(_: &Privileged, target: DomId, pages: u64) -> core::result::Result<(), XenErrno> {
    domain::with_domains(|doms| {
        let d = doms.get_mut(target).ok_or(XenErrno::Esrch)?;
        // `SetMaxMem` takes any limit, so the KiB figure may not fit.
        let kib = pages.checked_mul(4).ok_or(XenErrno::Einval)?;
        if pages > d.max_pages {
            return Err(XenErrno::Einval);
        }
        d.target_pages = pages;
        let path = alloc::format!("/local/domain/{}/memory/target", target.0);
        backend::xenstore::write(doms, &path, &alloc::format!("{kib}")).map_err(|_| XenErrno::Eio)
    })
}

/// `RequestShutdown`: writes `control/shutdown` as Xen's toolstack does; the guest
/// watches it and shuts itself down (a guest that ignores it is destroyed instead).
fn request_shutdown(
    _: &Privileged,
    target: DomId,
    reason: u32,
) -> core::result::Result<(), XenErrno> {
    let word = domain_control::shutdown_request(reason)?;
    if target == DOM0 {
        return Err(XenErrno::Einval);
    }
    domain::with_domains(|doms| {
        if doms.get(target).is_none() {
            return Err(XenErrno::Esrch);
        }
        let path = alloc::format!("/local/domain/{}/control/shutdown", target.0);
        backend::xenstore::write(doms, &path, word).map_err(|_| XenErrno::Eio)
    })
}

/// `ConsoleRead`: the domain's console history from `offset` (what `fv console` polls).
fn console_read(
    _: &Privileged,
    target: DomId,
    c: &mut ConsoleIo,
) -> core::result::Result<(), XenErrno> {
    let mut buf = alloc::vec![0u8; (c.len as usize).min(CONSOLE_CHUNK)];
    let read = domain::with_domain(target, |d| {
        backend::console::service(d);
        d.console.read_history(c.offset, &mut buf)
    })
    .ok_or(XenErrno::Esrch)?;
    write_out(c.buffer.0, &buf[..read.copied])?;
    c.done = read.copied as u32;
    c.offset = read.next;
    c.missed = read.missed;
    Ok(())
}

/// `ConsoleWrite`: input for the domain's console, queued and moved into its ring.
fn console_write(
    _: &Privileged,
    target: DomId,
    c: &mut ConsoleIo,
) -> core::result::Result<(), XenErrno> {
    let mut buf = alloc::vec![0u8; (c.len as usize).min(CONSOLE_CHUNK)];
    domain::with_current(|d| d.read_guest(c.buffer.0, &mut buf))
        .ok_or(XenErrno::Esrch)?
        .map_err(|_| XenErrno::Efault)?;
    let n = domain::with_domain(target, |d| {
        let n = d.console.queue_input(&buf);
        backend::console::service(d);
        n
    })
    .ok_or(XenErrno::Esrch)?;
    c.done = n as u32;
    Ok(())
}

fn create(_: &Privileged, c: &CreateDomain) -> core::result::Result<DomId, XenErrno> {
    let (total, _) = memory::frame_counts();
    let name = domain_control::check_create(c, total, domain::MAX_VCPUS)?;
    domain::with_domains(|doms| {
        if doms.iter().any(|d| d.name == name) {
            return Err(XenErrno::Eexist);
        }
        let id = doms.free_id().ok_or(XenErrno::Enospc)?;
        let shared_info = domain::build::new_shared_info(id).map_err(|e| {
            log::warn!("creating d{}: {e}", id.0);
            XenErrno::Enomem
        })?;
        let d = domain::build::new_domain(id, name, c.uuid, c.max_pages, c.max_vcpus, shared_info);
        log::info!(
            "d{}: created \"{}\" ({} vCPUs, at most {} MiB)",
            id.0,
            d.name,
            c.max_vcpus,
            c.max_pages / 256
        );
        doms.insert(alloc::boxed::Box::new(d));
        lifecycle::record_start(id, clock::now_ns());
        Ok(id)
    })
}

/// What `GetDomainInfo` and `ListDomains` report about a domain.
pub fn info(d: &Domain) -> DomainInfo {
    let mut i = DomainInfo::new_zeroed();
    i.domid = d.id.0;
    let online = d.vcpus().filter(|v| v.online).count() as u32;
    let state = domain_control::State {
        life: d.life,
        built: d.built,
        privileged: d.id == DOM0,
        pause_count: d.pause_count,
        online_vcpus: online,
        blocked_vcpus: d.vcpus().filter(|v| v.online && v.blocked).count() as u32,
    };
    (i.flags, i.shutdown_reason) = domain_control::info_flags(&state);
    i.nr_vcpus = d.vcpus().count() as u32;
    i.online_vcpus = online;
    i.tot_pages = d.p2m.len() as u64;
    i.max_pages = d.max_pages;
    i.cpu_time_ns = d.cpu_time_ns;
    i.uuid = d.uuid;
    let n = d.name.len().min(DOMAIN_NAME_MAX);
    i.name[..n].copy_from_slice(&d.name.as_bytes()[..n]);
    i.start_time_ns = lifecycle::start_time_ns(d.id);
    i
}

/// A dying domain as `GetDomainInfo` and `ListDomains` report it.
fn dying_info(id: DomId, d: &domain::Dying) -> DomainInfo {
    let mut i = DomainInfo::new_zeroed();
    i.domid = id.0;
    i.flags = domctl::DOMINFO_DYING | domctl::DOMINFO_SHUTDOWN;
    i.tot_pages = d.frames;
    i.uuid = d.uuid;
    let n = d.name.len().min(DOMAIN_NAME_MAX);
    i.name[..n].copy_from_slice(&d.name.as_bytes()[..n]);
    i
}

pub fn sysctl([arg, ..]: [u64; 5]) -> Result {
    let _p = privileged()?;
    lifecycle::reap_dying();
    domain::with_domains(backend::announce_stops);
    let mut req: Sysctl = read_in(arg)?;
    if req.interface_version != FV_CONTROL_INTERFACE_VERSION {
        return Err(XenErrno::Eacces);
    }
    match SysctlCmd::try_from(req.cmd).map_err(|_| XenErrno::Enosys)? {
        SysctlCmd::PhysInfo => {
            let (total, free) = memory::frame_counts();
            let p = PhysInfo {
                nr_cpus: crate::arch::x86_64::smp::online_mask().count_ones(),
                cpu_khz: (clock::tsc_hz() / 1000) as u32,
                total_pages: total,
                free_pages: free,
                uptime_ns: clock::now_ns(),
                xen_version: XEN_VERSION,
                nr_domains: domain::with_domains(|doms| doms.len()) as u32,
            };
            req.set_payload(&p);
        }
        SysctlCmd::ListDomains => {
            let mut l: ListDomains = req.payload();
            let infos: Vec<DomainInfo> = domain::with_domains(|doms| {
                let mut all: Vec<DomainInfo> = doms
                    .iter()
                    .map(info)
                    .chain(doms.dying().map(|(id, d)| dying_info(id, d)))
                    .filter(|i| i.domid >= l.first_domain)
                    .collect();
                all.sort_unstable_by_key(|i| i.domid);
                all.truncate(l.max_entries as usize);
                all
            });
            l.nr_entries = write_entries(l.buffer.0, &infos, l.max_entries)?;
            req.set_payload(&l);
        }
        SysctlCmd::ReadLog => {
            let mut r: ReadLog = req.payload();
            // A bounded chunk per call; the caller loops from the returned offset.
            let mut buf = alloc::vec![0u8; (r.len as usize).min(16 * 1024)];
            let (n, next, missed) = crate::console::read_log(r.offset, &mut buf);
            write_out(r.buffer.0, &buf[..n])?;
            r.done = n as u32;
            r.offset = next;
            r.missed = missed;
            req.set_payload(&r);
        }
        SysctlCmd::ListDisks => {
            let mut l: domctl::ListDisks = req.payload();
            let disks = backend::disks::list();
            l.nr_entries = write_entries(l.buffer.0, &disks, l.max_entries)?;
            req.set_payload(&l);
        }
        SysctlCmd::ListSwitchPorts => {
            let mut l: domctl::ListSwitchPorts = req.payload();
            let ports = backend::devices::switch_ports();
            l.nr_entries = write_entries(l.buffer.0, &ports, l.max_entries)?;
            req.set_payload(&l);
        }
    }
    write_out(arg, req.as_bytes())?;
    Ok(0)
}
