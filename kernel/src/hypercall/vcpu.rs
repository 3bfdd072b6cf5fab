//! Per-vCPU hypercalls: `vcpu_op` (vcpu_info and runstate placement, timers, up/down)
//! and `set_timer_op`; plus `sched_op`'s blocking.

use ferrovisor::evtchn;
use ferrovisor::mm::{Mfn, PAGE_SIZE};
use ferrovisor_abi::xen::sched::SchedPoll;
use ferrovisor_abi::{
    errno::XenErrno,
    xen::{
        vcpu::{
            VcpuOp, VcpuRegisterRunstateMemoryArea, VcpuRegisterVcpuInfo, VcpuSetPeriodicTimer,
            VcpuSetSingleshotTimer, VCPU_SSHOTTMR_FUTURE,
        },
        xen::VcpuInfo,
    },
};
use zerocopy::FromBytes;

use super::Result;
use crate::{arch::x86_64::irq, clock, domain, domain::FRAME_TABLE};

fn read<T: FromBytes>(arg: u64) -> core::result::Result<T, XenErrno> {
    let mut buf = [0u8; 32];
    let len = core::mem::size_of::<T>();
    domain::with_current(|d| d.read_guest(arg, &mut buf[..len]))
        .ok_or(XenErrno::Esrch)?
        .map_err(|_| XenErrno::Efault)?;
    T::read_from_bytes(&buf[..len]).map_err(|_| XenErrno::Efault)
}

/// `vcpu_op(cmd, vcpu, arg)`. dom0 has one vCPU (0); secondary vCPUs come with SMP.
pub fn vcpu_op([cmd, vcpu, arg, ..]: [u64; 5]) -> Result {
    let op = VcpuOp::try_from(cmd as u32).map_err(|_| XenErrno::Enosys)?;
    if vcpu != 0 {
        return Err(XenErrno::Enoent);
    }
    match op {
        VcpuOp::IsUp => Ok(1),
        VcpuOp::Up => Ok(0),
        VcpuOp::Down | VcpuOp::Initialise => Err(XenErrno::Einval),
        VcpuOp::RegisterVcpuInfo => {
            let reg: VcpuRegisterVcpuInfo = read(arg)?;
            let size = core::mem::size_of::<VcpuInfo>() as u64;
            if reg.offset as u64 + size > PAGE_SIZE || reg.offset % 64 != 0 {
                return Err(XenErrno::Einval);
            }
            domain::with_current(|d| {
                if d.vcpu.vcpu_info_registered {
                    return Err(XenErrno::Einval);
                }
                // The guest names its frame by machine frame number (a PV guest's view). A
                // general reference keeps it the domain's while the hypervisor writes it.
                let mfn = Mfn(reg.mfn);
                FRAME_TABLE
                    .lock()
                    .as_mut()
                    .ok_or(XenErrno::Esrch)?
                    .get_page(mfn, d.id)
                    .map_err(|_| XenErrno::Einval)?;
                d.vcpu.vcpu_info_registered = true;
                let mask = d.upcall_mask();
                let pending = d.upcall_pending();
                d.vcpu.vcpu_info = (mfn, reg.offset as usize);
                // The moved structure starts with the old state (Xen copies it).
                d.set_upcall_mask(mask);
                if pending {
                    d.raise_upcall();
                }
                d.publish_time();
                Ok(0)
            })
            .ok_or(XenErrno::Esrch)?
        }
        VcpuOp::RegisterRunstateMemoryArea => {
            let area: VcpuRegisterRunstateMemoryArea = read(arg)?;
            domain::with_current(|d| {
                d.vcpu.runstate_area = (area.addr.0 != 0).then_some(area.addr.0);
                d.publish_runstate();
                Ok(0)
            })
            .ok_or(XenErrno::Esrch)?
        }
        VcpuOp::SetSingleshotTimer => {
            let t: VcpuSetSingleshotTimer = read(arg)?;
            if t.flags & VCPU_SSHOTTMR_FUTURE != 0 && t.timeout_abs_ns < clock::now_ns() {
                return Err(XenErrno::Etime);
            }
            set_deadline(Some(t.timeout_abs_ns))
        }
        VcpuOp::StopSingleshotTimer => set_deadline(None),
        VcpuOp::SetPeriodicTimer => {
            let t: VcpuSetPeriodicTimer = read(arg)?;
            // Xen refuses periods under 1 ms (what it can deliver without a storm).
            if t.period_ns < 1_000_000 {
                return Err(XenErrno::Einval);
            }
            domain::with_current(|d| {
                d.vcpu.periodic = Some((t.period_ns, clock::now_ns() + t.period_ns));
                Ok(0)
            })
            .ok_or(XenErrno::Esrch)?
        }
        VcpuOp::StopPeriodicTimer => domain::with_current(|d| {
            d.vcpu.periodic = None;
            Ok(0)
        })
        .ok_or(XenErrno::Esrch)?,
        _ => Err(XenErrno::Enosys),
    }
}

fn set_deadline(deadline: Option<u64>) -> Result {
    domain::with_current(|d| {
        d.vcpu.timer_deadline = deadline;
        Ok(0)
    })
    .ok_or(XenErrno::Esrch)?
}

/// `set_timer_op(timeout)`: the single-shot timer at absolute system time `timeout` (ns);
/// 0 cancels it.
pub fn set_timer_op([timeout, ..]: [u64; 5]) -> Result {
    set_deadline((timeout != 0).then_some(timeout))
}

/// Ports one `SCHEDOP_poll` may name (Xen's limit is the domain's port count; 128 covers
/// what guests use: Linux polls one port).
const MAX_POLL_PORTS: usize = 128;

/// `SCHEDOP_poll`: wait until one of the given ports is pending or the timeout (absolute
/// system time, 0 = none) passes. Events stay masked; nothing is delivered.
pub fn poll(arg: u64) -> Result {
    let p: SchedPoll = read(arg)?;
    let n = p.nr_ports as usize;
    if n > MAX_POLL_PORTS {
        return Err(XenErrno::Einval);
    }
    let mut raw = [0u8; MAX_POLL_PORTS * 4];
    domain::with_current(|d| d.read_guest(p.ports.0, &mut raw[..n * 4]))
        .ok_or(XenErrno::Esrch)?
        .map_err(|_| XenErrno::Efault)?;
    let mut ports = [0u32; MAX_POLL_PORTS];
    for (i, port) in ports[..n].iter_mut().enumerate() {
        *port = u32::from_le_bytes([raw[i * 4], raw[i * 4 + 1], raw[i * 4 + 2], raw[i * 4 + 3]]);
    }
    let ok = domain::with_current(|d| ports[..n].iter().all(|&p| d.evtchn.is_valid_port(p)))
        .ok_or(XenErrno::Esrch)?;
    if !ok {
        return Err(XenErrno::Einval);
    }
    loop {
        let ready = domain::with_current(|d| evtchn::poll_ready(&d.event_words(), &ports[..n]))
            .unwrap_or(true);
        if ready || (p.timeout != 0 && clock::now_ns() >= p.timeout) {
            return Ok(0);
        }
        irq::enable_and_wait();
        irq::disable();
    }
}

/// `SCHEDOP_block`: unmask events and wait until one is pending (the tick keeps firing
/// timers meanwhile).
pub fn block() -> Result {
    domain::with_current(|d| {
        d.set_upcall_mask(0);
        d.set_runstate(domain::RUNSTATE_BLOCKED);
    })
    .ok_or(XenErrno::Esrch)?;
    loop {
        if domain::with_current(|d| d.upcall_pending()).unwrap_or(true) {
            domain::with_current(|d| d.set_runstate(domain::RUNSTATE_RUNNING));
            return Ok(0);
        }
        irq::enable_and_wait();
        irq::disable();
    }
}
