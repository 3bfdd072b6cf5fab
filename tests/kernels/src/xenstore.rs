//! A small synchronous xenstore client on the domain's store ring (`xs_wire.h`): one
//! request at a time, replies read back in order, watch events kept aside until asked
//! for. The page is `start_info.store_mfn`, found in the bootstrap region through the
//! phys-to-machine list; requests are signalled on `start_info.store_evtchn`.

use core::sync::atomic::{fence, AtomicU32, Ordering};

use ferrovisor_abi::xen::{
    xen::StartInfo,
    xs_wire::{XenstoreDomainInterface, XsType, XsdSockmsg, XENSTORE_RING_SIZE},
    DomId,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::{contract::VIRT_BASE, events, region::PAGE_SIZE};

const RING: u32 = XENSTORE_RING_SIZE;
const REQ: usize = core::mem::offset_of!(XenstoreDomainInterface, req);
const RSP: usize = core::mem::offset_of!(XenstoreDomainInterface, rsp);
const REQ_PROD: usize = core::mem::offset_of!(XenstoreDomainInterface, req_prod);
const RSP_CONS: usize = core::mem::offset_of!(XenstoreDomainInterface, rsp_cons);
const RSP_PROD: usize = core::mem::offset_of!(XenstoreDomainInterface, rsp_prod);
const REQ_CONS: usize = core::mem::offset_of!(XenstoreDomainInterface, req_cons);

/// Bytes of one reply or watch event kept.
pub const MAX_MSG: usize = 4096;
/// Watch events kept while waiting for a reply.
const MAX_EVENTS: usize = 8;

/// A failed request: the error name xenstore answered (`EACCES`, ...), or a local
/// problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsError {
    /// The service's `XS_ERROR` reply.
    Reply([u8; 12]),
    /// The reply did not fit the caller's buffer.
    TooLong,
    /// The service did not answer.
    NoReply,
}

impl XsError {
    /// The error name, e.g. `"EACCES"`.
    pub fn name(&self) -> &str {
        match self {
            XsError::Reply(b) => {
                let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                core::str::from_utf8(&b[..end]).unwrap_or("?")
            }
            XsError::TooLong => "reply too long",
            XsError::NoReply => "no reply",
        }
    }
}

/// A watch event: the path that changed and the watch's token.
pub struct WatchEvent {
    buf: [u8; 256],
    len: usize,
}

impl WatchEvent {
    fn part(&self, i: usize) -> &str {
        let mut parts = self.buf[..self.len].split(|&b| b == 0);
        core::str::from_utf8(parts.nth(i).unwrap_or(&[])).unwrap_or("")
    }
    pub fn path(&self) -> &str {
        self.part(0)
    }
    pub fn token(&self) -> &str {
        self.part(1)
    }
}

/// The store connection.
pub struct Store {
    page: u64,
    port: u32,
    next_id: u32,
    events: [Option<WatchEvent>; MAX_EVENTS],
}

/// The bootstrap-region address of machine frame `mfn`, from the phys-to-machine list.
pub fn va_of_mfn(si: &StartInfo, mfn: u64) -> Option<u64> {
    (0..si.nr_pages).find_map(|pfn| {
        // SAFETY: `mfn_list` holds `nr_pages` entries in the bootstrap region, mapped.
        let m = unsafe { core::ptr::read_volatile((si.mfn_list as *const u64).add(pfn as usize)) };
        (m == mfn).then_some(VIRT_BASE + pfn * PAGE_SIZE)
    })
}

impl Store {
    /// Connects to the ring `start_info` names; `None` if the domain has none.
    pub fn open(si: &StartInfo) -> Option<Store> {
        if si.store_evtchn == 0 {
            return None;
        }
        Some(Store {
            page: va_of_mfn(si, si.store_mfn)?,
            port: si.store_evtchn,
            next_id: 1,
            events: Default::default(),
        })
    }

    fn index(&self, off: usize) -> &AtomicU32 {
        // SAFETY: the store page is mapped for the kernel's lifetime; the index fields
        // are 4-byte aligned words shared with the service.
        unsafe { AtomicU32::from_ptr((self.page + off as u64) as *mut u32) }
    }

    fn byte(&self, off: usize) -> *mut u8 {
        (self.page + off as u64) as *mut u8
    }

    /// Writes `bytes` into the request ring, waiting for space.
    fn put(&mut self, bytes: &[u8]) {
        for &b in bytes {
            loop {
                let prod = self.index(REQ_PROD).load(Ordering::Relaxed);
                let cons = self.index(REQ_CONS).load(Ordering::Acquire);
                if prod.wrapping_sub(cons) < RING {
                    // SAFETY: inside the request ring of the mapped page.
                    unsafe { self.byte(REQ + (prod % RING) as usize).write_volatile(b) };
                    fence(Ordering::Release);
                    self.index(REQ_PROD)
                        .store(prod.wrapping_add(1), Ordering::Release);
                    break;
                }
                events::send(self.port);
                crate::sched_yield();
            }
        }
    }

    /// Reads `out.len()` bytes of the reply ring, waiting for them.
    fn get(&mut self, out: &mut [u8]) -> Result<(), XsError> {
        for b in out.iter_mut() {
            let mut spins = 0u32;
            loop {
                let cons = self.index(RSP_CONS).load(Ordering::Relaxed);
                let prod = self.index(RSP_PROD).load(Ordering::Acquire);
                if cons != prod {
                    // SAFETY: inside the reply ring of the mapped page.
                    *b = unsafe { self.byte(RSP + (cons % RING) as usize).read_volatile() };
                    fence(Ordering::Release);
                    self.index(RSP_CONS)
                        .store(cons.wrapping_add(1), Ordering::Release);
                    break;
                }
                spins += 1;
                if spins > 100_000 {
                    return Err(XsError::NoReply);
                }
                // The service may hold more output for a full ring: tell it there is room.
                events::send(self.port);
                crate::sched_yield();
            }
        }
        Ok(())
    }

    /// Reads one whole message: its header and its payload into `out` (the payload's
    /// length, or `TooLong`, which still consumes it).
    fn message(&mut self, out: &mut [u8]) -> Result<(XsdSockmsg, usize), XsError> {
        let mut raw = [0u8; 16];
        self.get(&mut raw)?;
        let hdr = XsdSockmsg::read_from_bytes(&raw).map_err(|_| XsError::NoReply)?;
        let len = hdr.len as usize;
        let mut scratch = [0u8; 1];
        let mut too_long = false;
        for i in 0..len {
            match out.get_mut(i) {
                Some(b) => self.get(core::slice::from_mut(b))?,
                None => {
                    too_long = true;
                    self.get(&mut scratch)?;
                }
            }
        }
        if too_long {
            return Err(XsError::TooLong);
        }
        Ok((hdr, len))
    }

    /// Sends one request (`parts` joined) and returns the reply's payload length in
    /// `out`; watch events arriving meanwhile are kept.
    pub fn request(
        &mut self,
        kind: XsType,
        tx: u32,
        parts: &[&[u8]],
        out: &mut [u8],
    ) -> Result<usize, XsError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let hdr = XsdSockmsg {
            r#type: kind.raw(),
            req_id: id,
            tx_id: tx,
            len: len as u32,
        };
        self.put(hdr.as_bytes());
        for p in parts {
            self.put(p);
        }
        events::send(self.port);
        loop {
            let mut buf = [0u8; MAX_MSG];
            let (h, n) = self.message(&mut buf)?;
            if h.r#type == XsType::WatchEvent.raw() {
                self.keep_event(&buf[..n]);
                continue;
            }
            if h.r#type == XsType::ErrorReply.raw() {
                let mut name = [0u8; 12];
                let k = n.min(12);
                name[..k].copy_from_slice(&buf[..k]);
                return Err(XsError::Reply(name));
            }
            let k = n.min(out.len());
            out[..k].copy_from_slice(&buf[..k]);
            return if n > out.len() {
                Err(XsError::TooLong)
            } else {
                Ok(n)
            };
        }
    }

    fn keep_event(&mut self, payload: &[u8]) {
        if let Some(slot) = self.events.iter_mut().find(|e| e.is_none()) {
            let mut ev = WatchEvent {
                buf: [0; 256],
                len: payload.len().min(256),
            };
            ev.buf[..ev.len].copy_from_slice(&payload[..ev.len]);
            *slot = Some(ev);
        }
    }

    /// `XS_READ` of `path` into `out`.
    pub fn read(&mut self, path: &str, out: &mut [u8]) -> Result<usize, XsError> {
        self.request(XsType::Read, 0, &[path.as_bytes(), b"\0"], out)
    }

    /// `XS_WRITE`.
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        self.request(
            XsType::Write,
            0,
            &[path.as_bytes(), b"\0", value],
            &mut [0u8; 8],
        )
        .map(|_| ())
    }

    /// `XS_RM` of `path` and everything under it.
    pub fn remove(&mut self, path: &str) -> Result<(), XsError> {
        self.request(XsType::Rm, 0, &[path.as_bytes(), b"\0"], &mut [0u8; 8])
            .map(|_| ())
    }

    /// `XS_WATCH` (the service fires it once at once).
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.request(
            XsType::Watch,
            0,
            &[path.as_bytes(), b"\0", token.as_bytes(), b"\0"],
            &mut [0u8; 8],
        )
        .map(|_| ())
    }

    /// `XS_SET_PERMS` of `path`: `perms` as xenstore spells them (`"n3"`, `"r5"`: the
    /// first names the owner and everyone's default, the others grant named domains).
    pub fn set_perms(&mut self, path: &str, perms: &[&str]) -> Result<(), XsError> {
        let mut parts: [&[u8]; 12] = [&[]; 12];
        parts[0] = path.as_bytes();
        parts[1] = b"\0";
        let mut n = 2;
        for p in perms.iter().take(5) {
            parts[n] = p.as_bytes();
            parts[n + 1] = b"\0";
            n += 2;
        }
        self.request(XsType::SetPerms, 0, &parts[..n], &mut [0u8; 8])
            .map(|_| ())
    }

    /// Writes `n` in decimal.
    pub fn write_number(&mut self, path: &str, n: u64) -> Result<(), XsError> {
        let mut num = [0u8; 20];
        self.write(path, crate::decimal(n, &mut num).as_bytes())
    }

    /// Publishes `data/offer/{port,gref}` (relative to the caller's home) readable by
    /// `peer` only: the node first, owned by `me` and readable by `peer`, so that its
    /// children inherit that.
    pub fn offer(
        &mut self,
        me: DomId,
        peer: DomId,
        port: u32,
        gref: u32,
    ) -> Result<(), &'static str> {
        self.write("data/offer", b"")
            .map_err(|_| "cannot write data/offer")?;
        let (mut p0, mut p1) = ([0u8; 24], [0u8; 24]);
        let owner = perm(b'n', me, &mut p0);
        let reader = perm(b'r', peer, &mut p1);
        self.set_perms("data/offer", &[owner, reader])
            .map_err(|_| "cannot set data/offer's permissions")?;
        self.write_number("data/offer/port", port.into())
            .map_err(|_| "cannot write data/offer/port")?;
        self.write_number("data/offer/gref", gref.into())
            .map_err(|_| "cannot write data/offer/gref")
    }

    /// Waits (up to a minute) for `peer`'s offer ([`Self::offer`]): its (port, gref).
    pub fn take_offer(&mut self, peer: DomId) -> Result<(u32, u32), &'static str> {
        let mut path = DomainPath::new();
        self.watch(path.of(peer, "data/offer/gref"), "offer")
            .map_err(|_| "cannot watch the peer's offer")?;
        let deadline = crate::time::now() + 60 * crate::time::NS_PER_SEC;
        let gref = loop {
            if let Ok(g) = self.read_number(path.of(peer, "data/offer/gref")) {
                break g as u32;
            }
            crate::ensure!(crate::time::now() < deadline, "the peer never offered");
            let _ = self.next_event(1000);
        };
        let port = self.read_number(path.of(peer, "data/offer/port"))? as u32;
        Ok((port, gref))
    }

    /// Reads a decimal number.
    pub fn read_number(&mut self, path: &str) -> Result<u64, &'static str> {
        let mut buf = [0u8; 24];
        let n = self
            .read(path, &mut buf)
            .map_err(|_| "xenstore read failed")?;
        crate::parse_decimal(&buf[..n]).ok_or("not a number")
    }

    /// `XS_RESET_WATCHES`: drops every watch of the domain.
    pub fn reset_watches(&mut self) -> Result<(), XsError> {
        self.events = Default::default();
        self.request(XsType::ResetWatches, 0, &[], &mut [0u8; 8])
            .map(|_| ())
    }

    /// The next watch event: a kept one, or one read from the ring (waiting for it up to
    /// `tries` yields).
    pub fn next_event(&mut self, tries: u32) -> Option<WatchEvent> {
        if let Some(e) = self.events.iter_mut().find_map(|e| e.take()) {
            return Some(e);
        }
        for _ in 0..tries {
            let cons = self.index(RSP_CONS).load(Ordering::Relaxed);
            let prod = self.index(RSP_PROD).load(Ordering::Acquire);
            if cons != prod {
                let mut buf = [0u8; MAX_MSG];
                let (h, n) = self.message(&mut buf).ok()?;
                if h.r#type == XsType::WatchEvent.raw() {
                    self.keep_event(&buf[..n]);
                    return self.events.iter_mut().find_map(|e| e.take());
                }
                continue;
            }
            crate::sched_yield();
        }
        None
    }
}

/// `/local/domain/<dom>/<key>` built in place.
pub struct DomainPath {
    buf: [u8; 96],
}

impl DomainPath {
    pub fn new() -> Self {
        DomainPath { buf: [0; 96] }
    }
    pub fn of(&mut self, dom: DomId, key: &str) -> &str {
        use core::fmt::Write;
        struct W<'a>(&'a mut [u8], usize);
        impl Write for W<'_> {
            fn write_str(&mut self, s: &str) -> core::fmt::Result {
                let end = self.1 + s.len();
                self.0
                    .get_mut(self.1..end)
                    .ok_or(core::fmt::Error)?
                    .copy_from_slice(s.as_bytes());
                self.1 = end;
                Ok(())
            }
        }
        let mut w = W(&mut self.buf, 0);
        let _ = if key.is_empty() {
            write!(w, "/local/domain/{dom}")
        } else {
            write!(w, "/local/domain/{dom}/{key}")
        };
        let n = w.1;
        core::str::from_utf8(&self.buf[..n]).unwrap_or("")
    }
}

impl Default for DomainPath {
    fn default() -> Self {
        Self::new()
    }
}

/// A permission as xenstore spells it: `letter` (`n`, `r`, `w`, `b`) and the domain id.
fn perm(letter: u8, dom: DomId, buf: &mut [u8; 24]) -> &str {
    let mut num = [0u8; 20];
    let num = crate::decimal(dom.into(), &mut num);
    buf[0] = letter;
    buf[1..1 + num.len()].copy_from_slice(num.as_bytes());
    core::str::from_utf8(&buf[..1 + num.len()]).unwrap_or("")
}
