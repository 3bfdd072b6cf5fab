//! How `fv` reaches the hypervisor: the [`Hypervisor`] trait, with Linux's privcmd and
//! xenbus devices behind it in dom0 ([`privcmd`]) and an in-memory fake for the tests.
//!
//! Requests that carry buffers (`BuildPv`'s images, `ListDomains`' array, the log and
//! console reads) name them by address inside the request, as the hypervisor expects.
//! Callers pass the same buffers alongside as [`Buf`]s: the borrow keeps them alive for
//! the call, and [`check_buffers`] refuses a request naming memory that is not one of
//! them, so no request can make the hypervisor write anywhere else in `fv`.

#[cfg(test)]
pub mod fake;
#[cfg(target_os = "linux")]
pub mod privcmd;

use ferrovisor_abi::{
    domctl::{
        BuildPv, ConsoleIo, DeviceAttach, DeviceDetach, DeviceInfo, DiskInfo, DomainInfo, Domctl,
        DomctlCmd, ListDevices, ListDomains, ReadLog, SwitchPort, Sysctl, SysctlCmd, VcpuContext,
    },
    xen::{arch_x86::VcpuGuestContext, DomId, GuestHandle, XenPfn},
};
use std::time::Duration;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

use thiserror::Error;

/// A buffer a request names: read by the hypervisor, or written by it.
#[derive(Debug)]
pub enum Buf<'a> {
    In(&'a [u8]),
    Out(&'a mut [u8]),
}

impl Buf<'_> {
    pub fn addr(&self) -> u64 {
        match self {
            Buf::In(b) => b.as_ptr() as u64,
            Buf::Out(b) => b.as_ptr() as u64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Buf::In(b) => b.len(),
            Buf::Out(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The handle of a slice, to put in a request.
pub fn handle_of(bytes: &[u8]) -> GuestHandle {
    GuestHandle(bytes.as_ptr() as u64)
}

/// A failure to reach the hypervisor or a refusal from it.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("fv must run in dom0 of a Ferrovisor host: {path} not found")]
    NoDevice { path: &'static str },
    #[error("permission denied opening {path}: run fv as root")]
    PermissionDenied { path: &'static str },
    #[error("cannot use {path}: {source}")]
    Device {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: {}", errno_text(*.errno))]
    Hypercall { op: String, errno: i32 },
    #[error("{op}: the request names a buffer of {len} bytes at {addr:#x} that was not passed with it (a bug in fv)")]
    UnbackedBuffer { op: String, addr: u64, len: usize },
    #[error("xenstore {op} {path}: {reason}")]
    Xenstore {
        op: &'static str,
        path: String,
        reason: String,
    },
}

impl TransportError {
    /// The Xen errno of a refused hypercall.
    pub fn errno(&self) -> Option<i32> {
        match self {
            TransportError::Hypercall { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// What a Xen errno means for a control request, and what to do about it.
pub fn errno_text(errno: i32) -> String {
    let text = match errno {
        1 => "not permitted: only the control domain (dom0) may do this",
        3 => "no such domain (it may have gone away)",
        12 => "the hypervisor is out of memory: free some (fv list, fv destroy) or ask for less",
        13 => "fv and the hypervisor speak different control-interface versions: use the fv built with this hypervisor",
        14 => "bad address in the request",
        16 => "busy: try again",
        17 => "a domain with that name already exists: pick another name or destroy it first",
        22 => "invalid request (a bad name, size or state for this operation)",
        28 => "no space left",
        38 => "not implemented by this hypervisor",
        _ => "refused",
    };
    format!("{text} (errno {errno})")
}

/// The hypervisor as `fv` sees it.
pub trait Hypervisor {
    /// One `domctl` (`__HYPERVISOR_domctl`), with the buffers its payload names.
    fn domctl(&mut self, req: &mut Domctl, bufs: &mut [Buf<'_>]) -> Result<(), TransportError>;
    /// One `sysctl` (`__HYPERVISOR_sysctl`), with the buffers its payload names.
    fn sysctl(&mut self, req: &mut Sysctl, bufs: &mut [Buf<'_>]) -> Result<(), TransportError>;
    /// `memory_op(XENMEM_populate_physmap)` for domain `dom`, order-0 extents: `extents`
    /// holds the pseudo-physical frames in and their machine frames out. Returns how
    /// many were populated.
    fn populate_physmap(
        &mut self,
        dom: DomId,
        extents: &mut [XenPfn],
    ) -> Result<usize, TransportError>;
    /// Writes a xenstore node (absolute path).
    fn xenstore_write(&mut self, path: &str, value: &str) -> Result<(), TransportError>;
    /// Reads a xenstore node; `None` when it does not exist.
    fn xenstore_read(&mut self, path: &str) -> Result<Option<String>, TransportError>;
    /// Waits up to `timeout` for a domain to shut down, crash or go away (xenstore's
    /// `@releaseDomain` watch, registered on the first call); whether the watch fired.
    /// The caller then looks at the domains: a fired watch names none.
    fn wait_for_domain_change(&mut self, timeout: Duration) -> Result<bool, TransportError>;

    /// `DeviceAttach` for domain `dom`. `req` holds the outputs afterwards whether the
    /// call succeeded or not: the device id given, or the refusal's `reason` and
    /// `conflict_domain`, which the hypervisor fills in before failing.
    fn device_attach(&mut self, dom: DomId, req: &mut DeviceAttach) -> Result<(), TransportError> {
        let mut d = Domctl::new(DomctlCmd::DeviceAttach, dom, &*req);
        let r = self.domctl(&mut d, &mut []);
        *req = d.payload();
        r
    }

    /// `DeviceDetach` for domain `dom`.
    fn device_detach(&mut self, dom: DomId, req: &DeviceDetach) -> Result<(), TransportError> {
        self.domctl(&mut Domctl::new(DomctlCmd::DeviceDetach, dom, req), &mut [])
    }

    /// `ListDevices`: the vifs and vbds of domain `dom`.
    fn list_devices(&mut self, dom: DomId) -> Result<Vec<DeviceInfo>, TransportError> {
        list_all(|l, bufs| {
            let mut d = Domctl::new(DomctlCmd::ListDevices, dom, l);
            self.domctl(&mut d, bufs)?;
            Ok(d.payload())
        })
    }

    /// `ListDisks`: the host's disks and partitions (the `phy:` targets).
    fn list_disks(&mut self) -> Result<Vec<DiskInfo>, TransportError> {
        list_all(|l, bufs| {
            let mut s = Sysctl::new(SysctlCmd::ListDisks, l);
            self.sysctl(&mut s, bufs)?;
            Ok(s.payload())
        })
    }

    /// `ListSwitchPorts`: every port of every switch, with its counters.
    fn list_switch_ports(&mut self) -> Result<Vec<SwitchPort>, TransportError> {
        list_all(|l, bufs| {
            let mut s = Sysctl::new(SysctlCmd::ListSwitchPorts, l);
            self.sysctl(&mut s, bufs)?;
            Ok(s.payload())
        })
    }
}

/// Entries a list call asks for first; doubled while the answer fills the buffer (the
/// list calls have no "start from" field: a full buffer may mean more entries).
const LIST_FIRST: usize = 32;
/// The most entries a list call is asked for.
const LIST_MAX: usize = 4096;

/// Runs a [`ListDevices`]-shaped call with a buffer of `T`s large enough for every entry.
fn list_all<T: FromBytes + IntoBytes + Immutable>(
    mut call: impl FnMut(&ListDevices, &mut [Buf<'_>]) -> Result<ListDevices, TransportError>,
) -> Result<Vec<T>, TransportError> {
    let size = core::mem::size_of::<T>();
    let mut room = LIST_FIRST;
    loop {
        let mut buf = vec![0u8; room * size];
        let l = ListDevices {
            max_entries: room as u32,
            buffer: handle_of(&buf),
            ..ListDevices::new_zeroed()
        };
        let out = call(&l, &mut [Buf::Out(&mut buf)])?;
        let n = (out.nr_entries as usize).min(room);
        if n == room && room < LIST_MAX {
            room *= 2;
            continue;
        }
        return Ok(buf
            .chunks_exact(size)
            .take(n)
            .filter_map(|c| T::read_from_bytes(c).ok())
            .collect());
    }
}

/// One buffer a request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferUse {
    pub handle: GuestHandle,
    pub len: usize,
    /// Whether the hypervisor writes it.
    pub written: bool,
}

fn use_of(handle: GuestHandle, len: u64, written: bool) -> Option<BufferUse> {
    (!handle.is_null()).then_some(BufferUse {
        handle,
        len: usize::try_from(len).unwrap_or(usize::MAX),
        written,
    })
}

/// The array a list call's payload names, of `max_entries` `T`s, written.
fn list_buffer<T>(l: &ListDevices) -> Vec<BufferUse> {
    let len = u64::from(l.max_entries).saturating_mul(core::mem::size_of::<T>() as u64);
    use_of(l.buffer, len, true).into_iter().collect()
}

/// The buffers a `domctl` request names, by command.
pub fn domctl_buffers(req: &Domctl) -> Vec<BufferUse> {
    match DomctlCmd::try_from(req.cmd) {
        Ok(DomctlCmd::BuildPv) => {
            let b: BuildPv = req.payload();
            [
                use_of(b.kernel, b.kernel_len, false),
                use_of(b.ramdisk, b.ramdisk_len, false),
                use_of(b.cmdline, u64::from(b.cmdline_len), false),
            ]
            .into_iter()
            .flatten()
            .collect()
        }
        Ok(cmd @ (DomctlCmd::GetVcpuContext | DomctlCmd::SetVcpuContext)) => {
            let v: VcpuContext = req.payload();
            let len = core::mem::size_of::<VcpuGuestContext>() as u64;
            use_of(v.ctx, len, cmd == DomctlCmd::GetVcpuContext)
                .into_iter()
                .collect()
        }
        Ok(DomctlCmd::ListDevices) => list_buffer::<DeviceInfo>(&req.payload()),
        Ok(cmd @ (DomctlCmd::ConsoleRead | DomctlCmd::ConsoleWrite)) => {
            let c: ConsoleIo = req.payload();
            use_of(c.buffer, u64::from(c.len), cmd == DomctlCmd::ConsoleRead)
                .into_iter()
                .collect()
        }
        _ => Vec::new(),
    }
}

/// The buffers a `sysctl` request names, by command.
pub fn sysctl_buffers(req: &Sysctl) -> Vec<BufferUse> {
    match SysctlCmd::try_from(req.cmd) {
        Ok(SysctlCmd::ListDomains) => {
            let l: ListDomains = req.payload();
            let len =
                u64::from(l.max_entries).saturating_mul(core::mem::size_of::<DomainInfo>() as u64);
            use_of(l.buffer, len, true).into_iter().collect()
        }
        Ok(SysctlCmd::ListDisks) => list_buffer::<DiskInfo>(&req.payload()),
        Ok(SysctlCmd::ListSwitchPorts) => list_buffer::<SwitchPort>(&req.payload()),
        Ok(SysctlCmd::ReadLog) => {
            let r: ReadLog = req.payload();
            use_of(r.buffer, u64::from(r.len), true)
                .into_iter()
                .collect()
        }
        _ => Vec::new(),
    }
}

/// Checks that every buffer in `uses` starts one of `bufs` and fits it, and that the ones
/// the hypervisor writes are `Buf::Out`. Returns, for each use, the index in `bufs`.
pub fn check_buffers(
    op: &str,
    uses: &[BufferUse],
    bufs: &[Buf<'_>],
) -> Result<Vec<usize>, TransportError> {
    uses.iter()
        .map(|u| {
            bufs.iter()
                .position(|b| {
                    b.addr() == u.handle.addr()
                        && b.len() >= u.len
                        && (!u.written || matches!(b, Buf::Out(_)))
                })
                .ok_or_else(|| TransportError::UnbackedBuffer {
                    op: op.into(),
                    addr: u.handle.addr(),
                    len: u.len,
                })
        })
        .collect()
}

/// A name for a request in messages (`domctl GetDomainInfo`).
pub fn domctl_name(req: &Domctl) -> String {
    match DomctlCmd::try_from(req.cmd) {
        Ok(c) => format!("domctl {c:?} of domain {}", req.domain),
        Err(_) => format!("domctl {}", req.cmd),
    }
}

pub fn sysctl_name(req: &Sysctl) -> String {
    match SysctlCmd::try_from(req.cmd) {
        Ok(c) => format!("sysctl {c:?}"),
        Err(_) => format!("sysctl {}", req.cmd),
    }
}

#[cfg(test)]
mod tests {
    use ferrovisor_abi::domctl::ListDomains;

    use super::*;

    #[test]
    fn buffers_must_be_passed_along() {
        let mut out = vec![0u8; 2 * core::mem::size_of::<DomainInfo>()];
        let l = ListDomains {
            max_entries: 2,
            buffer: handle_of(&out),
            ..ListDomains::new_zeroed()
        };
        let req = Sysctl::new(SysctlCmd::ListDomains, &l);
        let uses = sysctl_buffers(&req);
        assert_eq!(uses.len(), 1);
        assert!(check_buffers("x", &uses, &[]).is_err());
        let other = vec![0u8; 4];
        assert!(check_buffers("x", &uses, &[Buf::In(&other)]).is_err());
        let copy = out.clone();
        // Written buffers must be passed as Out.
        assert!(check_buffers("x", &uses, &[Buf::In(&copy)]).is_err());
        assert_eq!(
            check_buffers("x", &uses, &[Buf::Out(&mut out)]).unwrap(),
            [0]
        );
    }

    #[test]
    fn too_short_buffers_are_refused() {
        let mut out = vec![0u8; 10];
        let r = ReadLog {
            len: 11,
            buffer: handle_of(&out),
            ..ReadLog::new_zeroed()
        };
        let req = Sysctl::new(SysctlCmd::ReadLog, &r);
        let e = check_buffers(
            "sysctl ReadLog",
            &sysctl_buffers(&req),
            &[Buf::Out(&mut out)],
        )
        .unwrap_err();
        assert!(e.to_string().contains("was not passed with it"));
    }

    #[test]
    fn errnos_say_what_to_do() {
        let e = TransportError::Hypercall {
            op: "domctl CreateDomain".into(),
            errno: 17,
        };
        assert_eq!(
            e.to_string(),
            "domctl CreateDomain: a domain with that name already exists: pick another name or destroy it first (errno 17)"
        );
        assert_eq!(e.errno(), Some(17));
    }
}
