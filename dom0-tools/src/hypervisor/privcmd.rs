//! The hypervisor from a Linux dom0: hypercalls through `/dev/xen/privcmd`
//! (`IOCTL_PRIVCMD_HYPERCALL`, Linux `include/uapi/xen/privcmd.h`) and xenstore through
//! `/dev/xen/xenbus` (Xen's xenstore wire protocol, `io/xs_wire.h`: a 16-byte header,
//! then the payload; one request, one reply).
//!
//! The only `unsafe` of `fv` is here: the ioctl, which hands the kernel pointers the
//! hypervisor then reads and writes.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::Duration,
};

use ferrovisor_abi::{
    domctl::{Domctl, Sysctl},
    xen::{
        hypercall::Hypercall,
        memory::{MemoryOp, XenMemoryReservation},
        xs_wire::{XsType, XsdSockmsg, XSD_SOCKMSG_SIZE},
        DomId, GuestHandle, XenPfn,
    },
};
use zerocopy::{FromBytes, IntoBytes};

use super::{
    check_buffers, domctl_buffers, domctl_name, sysctl_buffers, sysctl_name, Buf, BufferUse,
    Hypervisor, TransportError,
};

pub const PRIVCMD_PATH: &str = "/dev/xen/privcmd";
pub const XENBUS_PATH: &str = "/dev/xen/xenbus";

/// `struct privcmd_hypercall`: the hypercall number and its five arguments.
#[repr(C)]
struct PrivcmdHypercall {
    op: u64,
    arg: [u64; 5],
}

const _: () = assert!(core::mem::size_of::<PrivcmdHypercall>() == 48);

/// `_IOC(_IOC_NONE, 'P', 0, sizeof(struct privcmd_hypercall))`: direction 0 in bits
/// 30–31, size in bits 16–29, type `'P'` in bits 8–15, number 0.
const IOCTL_PRIVCMD_HYPERCALL: u64 = (48 << 16) | ((b'P' as u64) << 8);

fn open(path: &'static str) -> Result<File, TransportError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => TransportError::NoDevice { path },
            io::ErrorKind::PermissionDenied => TransportError::PermissionDenied { path },
            _ => TransportError::Device { path, source },
        })
}

/// The hypervisor through Linux's privcmd and xenbus devices.
#[derive(Debug)]
pub struct Privcmd {
    privcmd: File,
    /// Opened on first use: the hypercall-only commands do not need xenstore.
    xenbus: Option<File>,
    req_id: u32,
    /// `@releaseDomain` events, from a second xenbus connection read by its own thread
    /// (watch events arrive between replies; this keeps them off the request one).
    stop_events: Option<Receiver<()>>,
}

/// The token of `fv`'s `@releaseDomain` watch.
const STOP_WATCH_TOKEN: &str = "fv-domain-stops";

/// Opens a xenbus connection, registers the `@releaseDomain` watch on it, and starts a
/// thread that sends one `()` per watch event (the first comes at once, as Xen fires a
/// new watch). The channel closes when the connection does.
fn watch_domain_stops() -> Result<Receiver<()>, TransportError> {
    let mut bus = open(XENBUS_PATH)?;
    let mut payload = b"@releaseDomain\0".to_vec();
    payload.extend_from_slice(STOP_WATCH_TOKEN.as_bytes());
    payload.push(0);
    let header = XsdSockmsg {
        r#type: XsType::Watch.raw(),
        req_id: 1,
        tx_id: 0,
        len: payload.len() as u32,
    };
    let mut msg = header.as_bytes().to_vec();
    msg.extend_from_slice(&payload);
    bus.write_all(&msg).map_err(|e| TransportError::Xenstore {
        op: "watch",
        path: "@releaseDomain".into(),
        reason: e.to_string(),
    })?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || loop {
        let mut head = [0u8; XSD_SOCKMSG_SIZE];
        if bus.read_exact(&mut head).is_err() {
            return;
        }
        let h = XsdSockmsg::read_from_bytes(&head).expect("16 bytes");
        let mut body = vec![0u8; h.len as usize];
        if bus.read_exact(&mut body).is_err() {
            return;
        }
        if h.r#type == XsType::ErrorReply.raw() {
            // The watch was refused: close the channel, the waiter reports it.
            return;
        }
        if h.r#type == XsType::WatchEvent.raw() && tx.send(()).is_err() {
            return;
        }
    });
    Ok(rx)
}

impl Privcmd {
    /// Opens `/dev/xen/privcmd`; a clear error when it is missing or not ours to open.
    pub fn open() -> Result<Self, TransportError> {
        Ok(Self {
            privcmd: open(PRIVCMD_PATH)?,
            xenbus: None,
            req_id: 0,
            stop_events: None,
        })
    }

    /// One hypercall; its return value, or the errno it failed with.
    fn hypercall(&self, op: &str, nr: u64, args: [u64; 5]) -> Result<i64, TransportError> {
        let mut call = PrivcmdHypercall { op: nr, arg: args };
        // SAFETY:
        // 1. `call` is a valid `struct privcmd_hypercall` that lives across the ioctl.
        // 2. Every pointer among the arguments points to memory the caller borrows for
        //    this call: the request (a `&mut`), and buffers checked by `check_buffers`
        //    to be the `Buf`s passed alongside, written only when they are `Buf::Out`.
        // 3. The hypervisor writes no more than those lengths (its own rule for each
        //    command, `abi/src/domctl.rs`), so no other Rust memory changes underneath.
        let ret = unsafe {
            libc::ioctl(
                self.privcmd.as_raw_fd(),
                IOCTL_PRIVCMD_HYPERCALL as _,
                &raw mut call,
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                // Linux returns the hypervisor's -errno as the ioctl's errno.
                Some(errno) => TransportError::Hypercall {
                    op: op.into(),
                    errno,
                },
                None => TransportError::Device {
                    path: PRIVCMD_PATH,
                    source: err,
                },
            });
        }
        Ok(i64::from(ret))
    }

    fn xenbus(&mut self) -> Result<&mut File, TransportError> {
        if self.xenbus.is_none() {
            self.xenbus = Some(open(XENBUS_PATH)?);
        }
        Ok(self.xenbus.as_mut().expect("opened above"))
    }

    /// One xenstore request; the reply's payload, or `Err(Some(name))` for an error
    /// reply (`ENOENT`, ...).
    fn xs_request(
        &mut self,
        op: &'static str,
        path: &str,
        ty: XsType,
        payload: &[u8],
    ) -> Result<Result<Vec<u8>, String>, TransportError> {
        self.req_id = self.req_id.wrapping_add(1);
        let header = XsdSockmsg {
            r#type: ty.raw(),
            req_id: self.req_id,
            tx_id: 0,
            len: payload.len() as u32,
        };
        let mut msg = header.as_bytes().to_vec();
        msg.extend_from_slice(payload);
        let io_err = |e: io::Error| TransportError::Xenstore {
            op,
            path: path.into(),
            reason: e.to_string(),
        };
        let bus = self.xenbus()?;
        bus.write_all(&msg).map_err(io_err)?;
        let mut head = [0u8; XSD_SOCKMSG_SIZE];
        bus.read_exact(&mut head).map_err(io_err)?;
        let reply = XsdSockmsg::read_from_bytes(&head).expect("16 bytes");
        let mut body = vec![0u8; reply.len as usize];
        bus.read_exact(&mut body).map_err(io_err)?;
        if reply.r#type == XsType::ErrorReply.raw() {
            let name = body.split(|&b| b == 0).next().unwrap_or_default();
            return Ok(Err(String::from_utf8_lossy(name).into_owned()));
        }
        Ok(Ok(body))
    }
}

fn ptr_of<T>(v: &mut T) -> u64 {
    (v as *mut T) as u64
}

fn check(op: &str, uses: &[BufferUse], bufs: &mut [Buf<'_>]) -> Result<(), TransportError> {
    check_buffers(op, uses, bufs)?;
    prefault(bufs);
    Ok(())
}

/// Makes every page of the buffers present before the hypercall: the hypervisor copies
/// to and from them through dom0's page tables and cannot fault a page in (as in Xen, a
/// hypercall on a page Linux has not mapped yet fails with `-EFAULT`), and freshly
/// allocated memory is mapped lazily.
fn prefault(bufs: &mut [Buf<'_>]) {
    const PAGE: usize = 4096;
    for b in bufs.iter_mut() {
        match b {
            Buf::In(b) => {
                for i in (0..b.len()).step_by(PAGE).chain(b.len().checked_sub(1)) {
                    std::hint::black_box(b[i]);
                }
            }
            Buf::Out(b) => {
                // The hypervisor overwrites these bytes: writing them first costs nothing.
                for i in (0..b.len()).step_by(PAGE).chain(b.len().checked_sub(1)) {
                    b[i] = 0;
                }
                std::hint::black_box(&mut **b);
            }
        }
    }
}

impl Hypervisor for Privcmd {
    fn domctl(&mut self, req: &mut Domctl, bufs: &mut [Buf<'_>]) -> Result<(), TransportError> {
        let op = domctl_name(req);
        check(&op, &domctl_buffers(req), bufs)?;
        let nr = Hypercall::Domctl.raw();
        self.hypercall(&op, nr, [ptr_of(req), 0, 0, 0, 0])
            .map(|_| ())
    }

    fn sysctl(&mut self, req: &mut Sysctl, bufs: &mut [Buf<'_>]) -> Result<(), TransportError> {
        let op = sysctl_name(req);
        check(&op, &sysctl_buffers(req), bufs)?;
        let nr = Hypercall::Sysctl.raw();
        self.hypercall(&op, nr, [ptr_of(req), 0, 0, 0, 0])
            .map(|_| ())
    }

    fn populate_physmap(
        &mut self,
        dom: DomId,
        extents: &mut [XenPfn],
    ) -> Result<usize, TransportError> {
        let mut res = XenMemoryReservation {
            extent_start: GuestHandle(extents.as_mut_ptr() as u64),
            nr_extents: extents.len() as u64,
            extent_order: 0,
            mem_flags: 0,
            domid: dom,
            _cpad0: [0; 6],
        };
        let op = format!("memory_op populate_physmap of domain {dom}");
        let nr = Hypercall::MemoryOp.raw();
        let done = self.hypercall(
            &op,
            nr,
            [
                u64::from(MemoryOp::PopulatePhysmap.raw()),
                ptr_of(&mut res),
                0,
                0,
                0,
            ],
        )?;
        Ok(usize::try_from(done).unwrap_or(0))
    }

    fn xenstore_write(&mut self, path: &str, value: &str) -> Result<(), TransportError> {
        let mut payload = path.as_bytes().to_vec();
        payload.push(0);
        payload.extend_from_slice(value.as_bytes());
        match self.xs_request("write", path, XsType::Write, &payload)? {
            Ok(_) => Ok(()),
            Err(reason) => Err(TransportError::Xenstore {
                op: "write",
                path: path.into(),
                reason,
            }),
        }
    }

    fn wait_for_domain_change(&mut self, timeout: Duration) -> Result<bool, TransportError> {
        if self.stop_events.is_none() {
            self.stop_events = Some(watch_domain_stops()?);
        }
        let rx = self.stop_events.as_ref().expect("set above");
        let fired = match rx.recv_timeout(timeout) {
            Ok(()) => true,
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => {
                self.stop_events = None;
                return Err(TransportError::Xenstore {
                    op: "watch",
                    path: "@releaseDomain".into(),
                    reason: format!("the watch connection on {XENBUS_PATH} closed"),
                });
            }
        };
        // One look at the domains answers every event queued so far.
        while rx.try_recv().is_ok() {}
        Ok(fired)
    }

    fn xenstore_read(&mut self, path: &str) -> Result<Option<String>, TransportError> {
        let mut payload = path.as_bytes().to_vec();
        payload.push(0);
        match self.xs_request("read", path, XsType::Read, &payload)? {
            Ok(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            Err(reason) if reason == "ENOENT" => Ok(None),
            Err(reason) => Err(TransportError::Xenstore {
                op: "read",
                path: path.into(),
                reason,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_number() {
        // _IOC(_IOC_NONE, 'P', 0, 48)
        assert_eq!(IOCTL_PRIVCMD_HYPERCALL, 0x0030_5000);
    }

    #[test]
    fn opening_says_what_is_wrong() {
        if std::path::Path::new(PRIVCMD_PATH).exists() {
            return;
        }
        let e = Privcmd::open().unwrap_err();
        assert_eq!(
            e.to_string(),
            "fv must run in dom0 of a Ferrovisor host: /dev/xen/privcmd not found"
        );
    }
}
