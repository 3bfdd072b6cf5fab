//! The commands of `fv`, over any [`Hypervisor`]: what they ask the hypervisor and in
//! which order. Printing is left to the caller, except for streams (`dmesg`, `console`)
//! which write to the `Write` they are given.

pub mod create;
pub mod device;
pub mod monitor;

use std::{
    io::Write,
    str::FromStr,
    sync::mpsc::{Receiver, TryRecvError},
    time::{Duration, Instant},
};

use ferrovisor_abi::{
    domctl::{
        ConsoleIo, DomainInfo, Domctl, DomctlCmd, ListDomains, PhysInfo, ReadLog, SetMemTarget,
        ShutdownRequest, Sysctl, SysctlCmd, VcpuState, DOMINFO_DYING, DOMINFO_PAUSED,
        DOMINFO_SHUTDOWN,
    },
    xen::{xen::DOMID_FIRST_RESERVED, DomId},
};
use thiserror::Error;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

use crate::{
    hypervisor::{handle_of, Buf, Hypervisor, TransportError},
    size::MemSize,
    table::{name_of, pages_to_mib},
};

const ESRCH: i32 = 3;

/// A domain as the user names it: by id, or by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainRef {
    Id(DomId),
    Name(String),
}

impl std::fmt::Display for DomainRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DomainRef::Id(id) => write!(f, "{id}"),
            DomainRef::Name(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for DomainRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("a domain name or id is needed".into());
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<DomId>() {
                Ok(id) if id < DOMID_FIRST_RESERVED => Ok(DomainRef::Id(id)),
                _ => Err(format!(
                    "'{s}' is not a domain id (ids go from 0 to {})",
                    DOMID_FIRST_RESERVED - 1
                )),
            };
        }
        Ok(DomainRef::Name(s.into()))
    }
}

/// Why a command failed.
#[derive(Debug, Error)]
pub enum CommandError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("no domain named '{0}': 'fv list' shows the domains")]
    NoSuchName(String),
    #[error("no domain with id {0}: 'fv list' shows the domains")]
    NoSuchId(DomId),
    #[error("domain {0} is not paused")]
    NotPaused(String),
    #[error("domain 0 is the control domain and cannot be {0}")]
    Dom0(&'static str),
    #[error(
        "{size} is above the {max_mib} MiB maximum of domain {domain}: ask for at most {max_mib}m"
    )]
    AboveMax {
        domain: String,
        size: MemSize,
        max_mib: u64,
    },
    #[error("domain {domain} did not {what} within {secs} s; it may ignore the request ('fv destroy {domain}' stops it at once)")]
    Timeout {
        domain: String,
        what: &'static str,
        secs: u64,
    },
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(Box<crate::config::ConfigError>),
    #[error("creating domain '{name}' failed while {stage}: {source}{cleanup}")]
    Create {
        name: String,
        stage: &'static str,
        #[source]
        source: Box<TransportError>,
        /// What became of the half-built domain.
        cleanup: String,
    },
    /// A device could not be attached: `guest.cfg: vif 0 (mac=…, bridge=xenbr1): no
    /// switch named 'xenbr1' on this host (the host has: xenbr0)`.
    #[error("{context}: {device}: {why}{cleanup}")]
    Device {
        /// The config file, or `domain 'web1' (3)`.
        context: String,
        device: String,
        why: String,
        /// What became of the half-built domain (empty for a hot-plug).
        cleanup: String,
    },
    #[error("{context} has no {what}: {hint}")]
    NoSuchDevice {
        context: String,
        what: String,
        hint: String,
    },
    #[error("{context}: {device} is still there after {secs} s: its frontend did not close it (the guest may still be using it); '{force_cmd}' removes it at once")]
    DetachTimeout {
        context: String,
        device: String,
        secs: u64,
        force_cmd: String,
    },
}

impl From<crate::config::ConfigError> for CommandError {
    fn from(e: crate::config::ConfigError) -> Self {
        CommandError::Config(Box::new(e))
    }
}

impl CommandError {
    /// The process exit status: every command failure is 1 (usage errors, 2, come from
    /// the command-line parser).
    pub fn exit_code(&self) -> u8 {
        1
    }
}

/// A `domctl` with payload `T`; the payload and header domain that come back.
pub fn domctl<T: FromBytes + IntoBytes + Immutable>(
    hv: &mut dyn Hypervisor,
    cmd: DomctlCmd,
    dom: DomId,
    payload: &T,
    bufs: &mut [Buf<'_>],
) -> Result<(T, DomId), TransportError> {
    let mut req = Domctl::new(cmd, dom, payload);
    hv.domctl(&mut req, bufs)?;
    Ok((req.payload(), req.domain))
}

/// A `domctl` without payload.
pub fn domctl0(hv: &mut dyn Hypervisor, cmd: DomctlCmd, dom: DomId) -> Result<(), TransportError> {
    domctl(hv, cmd, dom, &[0u8; 0], &mut []).map(|_| ())
}

/// A `sysctl` with payload `T`.
pub fn sysctl<T: FromBytes + IntoBytes + Immutable>(
    hv: &mut dyn Hypervisor,
    cmd: SysctlCmd,
    payload: &T,
    bufs: &mut [Buf<'_>],
) -> Result<T, TransportError> {
    let mut req = Sysctl::new(cmd, payload);
    hv.sysctl(&mut req, bufs)?;
    Ok(req.payload())
}

pub fn domain_info(hv: &mut dyn Hypervisor, dom: DomId) -> Result<DomainInfo, CommandError> {
    match domctl(
        hv,
        DomctlCmd::GetDomainInfo,
        dom,
        &DomainInfo::new_zeroed(),
        &mut [],
    ) {
        Ok((info, _)) => Ok(info),
        Err(e) if e.errno() == Some(ESRCH) => Err(CommandError::NoSuchId(dom)),
        Err(e) => Err(e.into()),
    }
}

/// Each vCPU's state (`GetVcpuInfo`), in vCPU order.
pub fn vcpu_states(
    hv: &mut dyn Hypervisor,
    info: &DomainInfo,
) -> Result<Vec<VcpuState>, CommandError> {
    (0..info.nr_vcpus)
        .map(|vcpu| {
            let ask = VcpuState {
                vcpu,
                ..VcpuState::new_zeroed()
            };
            match domctl(hv, DomctlCmd::GetVcpuInfo, info.domid, &ask, &mut []) {
                Ok((state, _)) => Ok(state),
                Err(e) if e.errno() == Some(ESRCH) => Err(CommandError::NoSuchId(info.domid)),
                Err(e) => Err(e.into()),
            }
        })
        .collect()
}

/// Every domain, dying ones included, by id.
pub fn list_domains(hv: &mut dyn Hypervisor) -> Result<Vec<DomainInfo>, CommandError> {
    const BATCH: usize = 64;
    let size = core::mem::size_of::<DomainInfo>();
    let mut all = Vec::new();
    let mut first: DomId = 0;
    loop {
        let mut buf = vec![0u8; BATCH * size];
        let req = ListDomains {
            first_domain: first,
            max_entries: BATCH as u32,
            buffer: handle_of(&buf),
            ..ListDomains::new_zeroed()
        };
        let out = sysctl(hv, SysctlCmd::ListDomains, &req, &mut [Buf::Out(&mut buf)])?;
        let n = (out.nr_entries as usize).min(BATCH);
        for chunk in buf.chunks_exact(size).take(n) {
            // Each chunk is exactly one DomainInfo's size.
            all.push(DomainInfo::read_from_bytes(chunk).expect("chunk of the right size"));
        }
        match all.last() {
            Some(last) if n == BATCH && last.domid < DOMID_FIRST_RESERVED - 1 => {
                first = last.domid + 1
            }
            _ => return Ok(all),
        }
    }
}

/// The domain `r` names.
pub fn resolve(hv: &mut dyn Hypervisor, r: &DomainRef) -> Result<DomainInfo, CommandError> {
    match r {
        DomainRef::Id(id) => domain_info(hv, *id),
        DomainRef::Name(name) => list_domains(hv)?
            .into_iter()
            .find(|i| i.name_bytes() == name.as_bytes())
            .ok_or_else(|| CommandError::NoSuchName(name.clone())),
    }
}

/// `fv list [DOMAIN...]`: every domain, or the ones named (in the order named).
pub fn list(hv: &mut dyn Hypervisor, which: &[DomainRef]) -> Result<Vec<DomainInfo>, CommandError> {
    if which.is_empty() {
        return list_domains(hv);
    }
    which.iter().map(|r| resolve(hv, r)).collect()
}

pub fn phys_info(hv: &mut dyn Hypervisor) -> Result<PhysInfo, CommandError> {
    Ok(sysctl(
        hv,
        SysctlCmd::PhysInfo,
        &PhysInfo::new_zeroed(),
        &mut [],
    )?)
}

/// `fv dmesg`: writes the hypervisor's log from `offset` to `out`, noting lost bytes;
/// returns the offset after the last byte, where a later read (after `-c`) starts.
pub fn dmesg(
    hv: &mut dyn Hypervisor,
    mut offset: u64,
    out: &mut dyn Write,
) -> Result<u64, CommandError> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let req = ReadLog {
            offset,
            buffer: handle_of(&buf),
            len: buf.len() as u32,
            ..ReadLog::new_zeroed()
        };
        let r = sysctl(hv, SysctlCmd::ReadLog, &req, &mut [Buf::Out(&mut buf)])?;
        if r.missed > 0 {
            writeln!(out, "[{} bytes of log lost: the ring wrapped]", r.missed)
                .map_err(CommandError::Output)?;
        }
        let done = (r.done as usize).min(buf.len());
        if done == 0 {
            return Ok(r.offset.max(offset));
        }
        out.write_all(&buf[..done]).map_err(CommandError::Output)?;
        offset = r.offset;
    }
}

/// Pause, unpause or destroy the domain `r` names; returns its info from before.
pub fn lifecycle(
    hv: &mut dyn Hypervisor,
    r: &DomainRef,
    cmd: DomctlCmd,
) -> Result<DomainInfo, CommandError> {
    let info = resolve(hv, r)?;
    if info.domid == 0 {
        return Err(CommandError::Dom0(match cmd {
            DomctlCmd::DestroyDomain => "destroyed",
            DomctlCmd::PauseDomain => "paused",
            _ => "unpaused (it is never paused)",
        }));
    }
    if cmd == DomctlCmd::UnpauseDomain && info.flags & DOMINFO_PAUSED == 0 {
        return Err(CommandError::NotPaused(name_of(&info)));
    }
    domctl0(hv, cmd, info.domid)?;
    Ok(info)
}

/// `fv mem-set`: the balloon target of the domain, within its maximum.
pub fn mem_set(
    hv: &mut dyn Hypervisor,
    r: &DomainRef,
    size: MemSize,
) -> Result<DomainInfo, CommandError> {
    let info = resolve(hv, r)?;
    if size.pages() > info.max_pages {
        return Err(CommandError::AboveMax {
            domain: name_of(&info),
            size,
            max_mib: pages_to_mib(info.max_pages),
        });
    }
    let t = SetMemTarget {
        target_pages: size.pages(),
    };
    domctl(hv, DomctlCmd::SetMemTarget, info.domid, &t, &mut [])?;
    Ok(info)
}

/// What a shutdown request asks (`SHUTDOWN_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownKind {
    Poweroff = 0,
    Reboot = 1,
}

/// `fv shutdown` / `fv reboot`: asks the guest (through xenstore's `control/shutdown`,
/// which the hypervisor writes). With `wait`, polls every `poll` until the domain has
/// shut down or gone, for at most `wait`.
pub fn shutdown(
    hv: &mut dyn Hypervisor,
    r: &DomainRef,
    kind: ShutdownKind,
    wait: Option<Duration>,
    poll: Duration,
) -> Result<DomainInfo, CommandError> {
    let info = resolve(hv, r)?;
    let req = ShutdownRequest {
        reason: kind as u32,
    };
    domctl(hv, DomctlCmd::RequestShutdown, info.domid, &req, &mut [])?;
    let Some(limit) = wait else {
        return Ok(info);
    };
    let start = Instant::now();
    loop {
        match domain_info(hv, info.domid) {
            Err(CommandError::NoSuchId(_)) => return Ok(info),
            Err(e) => return Err(e),
            Ok(now) if now.flags & (DOMINFO_SHUTDOWN | DOMINFO_DYING) != 0 => return Ok(now),
            Ok(_) => {}
        }
        if start.elapsed() >= limit {
            return Err(CommandError::Timeout {
                domain: name_of(&info),
                what: "shut down",
                secs: limit.as_secs(),
            });
        }
        std::thread::sleep(poll);
    }
}

/// The byte that leaves `fv console` (Ctrl-], as in xl).
pub const CONSOLE_ESCAPE: u8 = 0x1d;

/// `fv console`: copies the domain's console history to `out` (from the start) and
/// `input` to the domain, until the escape byte arrives, the input ends or the domain
/// goes away. Polls every `poll`.
pub fn console(
    hv: &mut dyn Hypervisor,
    r: &DomainRef,
    input: &Receiver<Vec<u8>>,
    out: &mut dyn Write,
    poll: Duration,
) -> Result<(), CommandError> {
    let info = resolve(hv, r)?;
    let dom = info.domid;
    let mut offset = 0u64;
    let mut buf = vec![0u8; 4096];
    loop {
        loop {
            let req = ConsoleIo {
                offset,
                buffer: handle_of(&buf),
                len: buf.len() as u32,
                ..ConsoleIo::new_zeroed()
            };
            let (c, _) = match domctl(
                hv,
                DomctlCmd::ConsoleRead,
                dom,
                &req,
                &mut [Buf::Out(&mut buf)],
            ) {
                Err(e) if e.errno() == Some(ESRCH) => return Ok(()),
                r => r?,
            };
            let done = (c.done as usize).min(buf.len());
            out.write_all(&buf[..done]).map_err(CommandError::Output)?;
            offset = c.offset;
            if done == 0 {
                break;
            }
        }
        out.flush().map_err(CommandError::Output)?;
        match input.try_recv() {
            Ok(bytes) => {
                let (send, stop) = match bytes.iter().position(|&b| b == CONSOLE_ESCAPE) {
                    Some(i) => (&bytes[..i], true),
                    None => (&bytes[..], false),
                };
                if !send.is_empty() {
                    let req = ConsoleIo {
                        buffer: handle_of(send),
                        len: send.len() as u32,
                        ..ConsoleIo::new_zeroed()
                    };
                    domctl(hv, DomctlCmd::ConsoleWrite, dom, &req, &mut [Buf::In(send)])?;
                }
                if stop {
                    return Ok(());
                }
            }
            Err(TryRecvError::Disconnected) => return Ok(()),
            Err(TryRecvError::Empty) => std::thread::sleep(poll),
        }
    }
}

#[cfg(test)]
mod tests;
