//! How the hypervisor's device backends touch a frontend's memory: only through grants
//! the frontend made to `DOMID_XEN`, each pinned in its grant table (so the guest cannot
//! end or repoint it meanwhile) and held in the frame table for the access (a general
//! reference to read, a `Writable` type reference to write: never a page table or a
//! descriptor table).
//!
//! Two shapes: a copy (pin, hold, copy, release: the data path of both backends, as in
//! Xen's netback), and a connected ring (pinned and held writable for as long as the
//! device stays connected, given back on disconnect or destroy).

use alloc::vec::Vec;

use ferrovisor::{
    grant_table::{self, BackendPin},
    io_ring::RingMemory,
    mm::{
        frame_table::{DomId, PageRef, WritableFrame},
        PAGE_SIZE,
    },
};
use ferrovisor_abi::xen::{
    grant_table::{GrantRef, GrantStatus},
    xen::DOMID_XEN,
};

use crate::{
    arch::x86_64::phys::{FrameReader, SharedFrame},
    domain::{Domains, FRAME_TABLE},
    hypercall::grant_table::Granters,
};

/// The backends act as this domain in grant entries and event channels.
pub const BACKEND: DomId = DomId(DOMID_XEN);

const PAGE: usize = PAGE_SIZE as usize;

fn fits(offset: usize, len: usize) -> Result<(), GrantStatus> {
    if offset.checked_add(len).is_some_and(|end| end <= PAGE) {
        Ok(())
    } else {
        Err(GrantStatus::BadCopyArg)
    }
}

/// Copies `buf.len()` bytes out of grant `gref` of `granter`, from `offset` in its page.
pub fn copy_from_grant(
    doms: &mut Domains,
    granter: DomId,
    gref: GrantRef,
    offset: usize,
    buf: &mut [u8],
) -> Result<(), GrantStatus> {
    fits(offset, buf.len())?;
    let pin = grant_table::acquire_backend_pin(&mut Granters(doms), BACKEND, granter, gref, true)?;
    let page = FRAME_TABLE
        .lock()
        .as_mut()
        .ok_or(GrantStatus::GeneralError)
        .and_then(|ft| {
            ft.get_page_ref(pin.mfn, granter)
                .map_err(|_| GrantStatus::BadPage)
        });
    if let Ok(page) = &page {
        FrameReader::new(page).read_bytes(offset, buf);
    }
    put_page(page);
    grant_table::release_backend_pin(&mut Granters(doms), pin);
    Ok(())
}

/// Copies `data` into grant `gref` of `granter`, at `offset` in its page; the grant must
/// be writable.
pub fn copy_to_grant(
    doms: &mut Domains,
    granter: DomId,
    gref: GrantRef,
    offset: usize,
    data: &[u8],
) -> Result<(), GrantStatus> {
    fits(offset, data.len())?;
    let pin = grant_table::acquire_backend_pin(&mut Granters(doms), BACKEND, granter, gref, false)?;
    let frame = FRAME_TABLE
        .lock()
        .as_mut()
        .ok_or(GrantStatus::GeneralError)
        .and_then(|ft| {
            ft.get_writable(pin.mfn, granter)
                .map_err(|_| GrantStatus::BadPage)
        });
    let result = match &frame {
        Ok(f) => {
            SharedFrame::new(f).write_bytes(offset, data);
            Ok(())
        }
        Err(e) => Err(*e),
    };
    if let Ok(f) = frame {
        put_writable(f);
    }
    grant_table::release_backend_pin(&mut Granters(doms), pin);
    result
}

fn put_page(page: Result<PageRef, GrantStatus>) {
    if let (Ok(page), Some(ft)) = (page, FRAME_TABLE.lock().as_mut()) {
        let _ = ft.put_page_ref(page);
    }
}

fn put_writable(frame: WritableFrame) {
    if let Some(ft) = FRAME_TABLE.lock().as_mut() {
        let _ = ft.put_writable(frame);
    }
}

/// A frontend's shared ring, one or more granted pages held writable while the device is
/// connected. Not `Clone`; give it back with [`RingPages::release`] (a ring dropped
/// without it would leave its pins and references held: the domain could never finish
/// dying, which is loud, rather than its frames being reused under us, which is silent).
pub struct RingPages {
    pages: Vec<(BackendPin, WritableFrame)>,
}

impl RingPages {
    /// Pins and holds the pages `grefs` of `granter`, in ring order. Any failure gives
    /// back what was taken and reports the first bad reference's status.
    pub fn map(
        doms: &mut Domains,
        granter: DomId,
        grefs: &[GrantRef],
    ) -> Result<RingPages, (GrantRef, GrantStatus)> {
        let mut ring = RingPages { pages: Vec::new() };
        for &gref in grefs {
            let pin = grant_table::acquire_backend_pin(
                &mut Granters(doms),
                BACKEND,
                granter,
                gref,
                false,
            );
            let pin = match pin {
                Ok(p) => p,
                Err(e) => {
                    ring.release(doms);
                    return Err((gref, e));
                }
            };
            let frame = FRAME_TABLE
                .lock()
                .as_mut()
                .and_then(|ft| ft.get_writable(pin.mfn, granter).ok());
            match frame {
                Some(f) => ring.pages.push((pin, f)),
                None => {
                    grant_table::release_backend_pin(&mut Granters(doms), pin);
                    ring.release(doms);
                    return Err((gref, GrantStatus::BadPage));
                }
            }
        }
        Ok(ring)
    }

    /// Gives back every page's reference and pin.
    pub fn release(self, doms: &mut Domains) {
        for (pin, frame) in self.pages {
            put_writable(frame);
            grant_table::release_backend_pin(&mut Granters(doms), pin);
        }
    }

    /// The ring's memory, as the ring logic reads and writes it.
    pub fn memory(&self) -> RingView<'_> {
        RingView {
            pages: self
                .pages
                .iter()
                .map(|(_, f)| SharedFrame::new(f))
                .collect(),
        }
    }
}

/// Views of a held ring's pages, contiguous as the frontend sees them.
pub struct RingView<'a> {
    pages: Vec<SharedFrame<'a>>,
}

impl RingView<'_> {
    /// Runs `f` on each (page, offset in page, range in the caller's buffer) that the
    /// byte range `offset..offset + len` covers.
    fn spans(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(&SharedFrame<'_>, usize, usize, usize),
    ) {
        let mut done = 0;
        while done < len {
            let at = offset + done;
            let Some(page) = self.pages.get(at / PAGE) else {
                return;
            };
            let in_page = at % PAGE;
            let n = (PAGE - in_page).min(len - done);
            f(page, in_page, done, n);
            done += n;
        }
    }
}

impl RingMemory for RingView<'_> {
    fn len(&self) -> usize {
        self.pages.len() * PAGE
    }
    fn load_acquire_u32(&self, offset: usize) -> u32 {
        // Header fields are 4-byte aligned in the first page.
        self.pages
            .get(offset / PAGE)
            .map_or(0, |p| p.load_acquire_u32(offset % PAGE))
    }
    fn store_release_u32(&mut self, offset: usize, value: u32) {
        if let Some(p) = self.pages.get(offset / PAGE) {
            p.store_release_u32(offset % PAGE, value);
        }
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        let len = buf.len();
        self.spans(offset, len, |page, at, from, n| {
            page.read_bytes(at, &mut buf[from..from + n]);
        });
    }
    fn write(&mut self, offset: usize, data: &[u8]) {
        self.spans(offset, data.len(), |page, at, from, n| {
            page.write_bytes(at, &data[from..from + n]);
        });
    }
    fn full_barrier(&self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
}
