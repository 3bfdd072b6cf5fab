//! `grant_table_op`: grant tables v1 (`grant_table.h`). The rules are
//! `ferrovisor::grant_table`; this is the guest-facing side: the shared entries in the
//! granting domain's grant frames, the PTEs of host mappings (through the frame table,
//! which marks them so only an unmap removes them), and the copies.

use alloc::vec::Vec;

use ferrovisor::{
    grant_table::{
        self, CopyPlan, GrantDomains, GrantFrameAlloc, GrantFrames, GrantTable, Maptrack,
    },
    mm::{
        frame_table::{DomId, Owner, WritableFrame},
        Mfn, PAGE_SIZE,
    },
};
use ferrovisor_abi::{
    errno::XenErrno,
    xen::{
        grant_table::{
            header_domid, header_flags, GnttabCopy, GnttabGetVersion, GnttabMapGrantRef, GnttabOp,
            GnttabQuerySize, GnttabSetVersion, GnttabSetupTable, GnttabUnmapGrantRef, GrantEntryV1,
            GrantRef, GrantStatus, GNTMAP_CONTAINS_PTE, GRANT_ENTRIES_V1_PER_FRAME,
        },
        xen::DOMID_SELF,
    },
};

use super::{read_struct as read, write_struct as write, Result};
use crate::{
    arch::x86_64::memory,
    arch::x86_64::{
        paging::{self as hw_paging, GuestTables},
        phys::{FrameReader, SharedFrame},
    },
    domain::{self, Domain, Domains, FRAME_TABLE},
};

/// Most operations one call runs (Xen preempts longer batches with a continuation; the
/// guest's batches are far smaller).
const MAX_BATCH: u64 = 1024;

/// One granting domain's shared entries, in its grant frames: views of the handles the
/// domain holds for them (`Domain::grant_frames`, in table order), borrowed beside its grant
/// table.
pub struct EntryFrames<'a> {
    frames: &'a [WritableFrame],
    owner: DomId,
}

impl EntryFrames<'_> {
    /// The frame and offset of entry `gref`. The logic asks only for references below the
    /// table's size, whose frames the domain holds; anything else (a hypervisor bug) reads
    /// as an empty entry and takes no update.
    fn slot(&self, gref: GrantRef) -> Option<(SharedFrame<'_>, usize)> {
        let per = GRANT_ENTRIES_V1_PER_FRAME;
        let frame = self.frames.get((gref / per) as usize)?;
        Some((SharedFrame::new(frame), (gref % per) as usize * 8))
    }
}

impl GrantFrames for EntryFrames<'_> {
    fn read_entry(&self, gref: GrantRef) -> GrantEntryV1 {
        let Some((f, off)) = self.slot(gref) else {
            return GrantEntryV1::default();
        };
        let header = f.load_acquire_u32(off);
        GrantEntryV1 {
            flags: header_flags(header),
            domid: header_domid(header),
            frame: f.read_u32(off + 4),
        }
    }
    fn cmpxchg_header(&self, gref: GrantRef, old: u32, new: u32) -> u32 {
        match self.slot(gref) {
            Some((f, off)) => f.compare_exchange_u32(off, old, new),
            None => !old,
        }
    }
    fn clear_flags(&self, gref: GrantRef, bits: u16) {
        let Some((f, off)) = self.slot(gref) else {
            return;
        };
        let mut cur = f.load_acquire_u32(off);
        loop {
            let new = cur & !u32::from(bits);
            let found = f.compare_exchange_u32(off, cur, new);
            if found == cur {
                return;
            }
            cur = found;
        }
    }
    fn owns_frame(&self, mfn: Mfn) -> bool {
        FRAME_TABLE
            .lock()
            .as_ref()
            .and_then(|ft| ft.info(mfn).map(|i| i.owner))
            == Some(Owner::Domain(self.owner))
    }
}

/// The domain set, as the grant logic finds granting domains in it.
pub struct Granters<'a>(pub &'a mut Domains);

impl<'d> GrantDomains for Granters<'d> {
    type Frames<'a>
        = EntryFrames<'a>
    where
        Self: 'a;
    fn with_granter<R>(
        &mut self,
        dom: DomId,
        f: impl FnOnce(&mut GrantTable, &EntryFrames<'_>) -> R,
    ) -> Option<R> {
        let d = self.0.get_mut(dom)?;
        let frames = EntryFrames {
            frames: &d.grant_frames,
            owner: dom,
        };
        Some(f(&mut d.grants, &frames))
    }
}

/// Grant frames: fresh zeroed frames of the domain, held writable for as long as the table
/// lives (the hypervisor reads and updates them, so they must never become page or
/// descriptor tables; the guest maps them itself). The handles made during one
/// `setup_table` are kept here until it succeeds, then move to `Domain::grant_frames`.
#[derive(Default)]
struct FrameAlloc {
    made: Vec<WritableFrame>,
}

impl GrantFrameAlloc for FrameAlloc {
    fn alloc_grant_frame(&mut self, dom: DomId) -> Option<Mfn> {
        let mfn = memory::alloc_frame()?.into_mfn();
        let mut ft = FRAME_TABLE.lock();
        let ft = ft.as_mut()?;
        match ft
            .assign(mfn, Owner::Domain(dom))
            .and_then(|()| ft.get_writable(mfn, dom))
        {
            Ok(frame) => {
                self.made.push(frame);
                Some(mfn)
            }
            Err(_) => {
                let _ = ft.assign(mfn, Owner::Free);
                let _ = memory::free_frame(mfn);
                None
            }
        }
    }
    fn free_grant_frame(&mut self, mfn: Mfn) {
        if let Some(i) = self.made.iter().position(|f| f.mfn() == mfn) {
            release_grant_frame(self.made.swap_remove(i));
        }
    }
}

/// Gives a grant frame back to the free pool (its references go with its handle).
pub fn release_grant_frame(frame: WritableFrame) {
    if let Some(ft) = FRAME_TABLE.lock().as_mut() {
        let mfn = frame.mfn();
        let _ = ft.put_writable(frame);
        if ft.info(mfn).is_some_and(|i| i.is_unreferenced()) && ft.assign(mfn, Owner::Free).is_ok()
        {
            let _ = memory::free_frame(mfn);
        }
    }
}

pub fn grant_table_op([cmd, arg, count, ..]: [u64; 5]) -> Result {
    let op = GnttabOp::try_from(cmd as u32).map_err(|_| XenErrno::Enosys)?;
    if count > MAX_BATCH {
        return Err(XenErrno::Einval);
    }
    domain::with_domains(|doms| match op {
        GnttabOp::SetupTable => setup_table(doms, arg),
        GnttabOp::QuerySize => query_size(doms, arg),
        GnttabOp::SetVersion => {
            let caller = doms.current().ok_or(XenErrno::Esrch)?;
            let mut v: GnttabSetVersion = read(caller, arg)?;
            let result = caller.grants.set_version(v.version);
            v.version = caller.grants.version();
            write(caller, arg, &v)?;
            result.map(|()| 0)
        }
        GnttabOp::GetVersion => {
            let caller = doms.current().ok_or(XenErrno::Esrch)?;
            let mut v: GnttabGetVersion = read(caller, arg)?;
            if v.dom != DOMID_SELF && v.dom != caller.id.0 {
                return Err(XenErrno::Eperm);
            }
            v.version = caller.grants.version();
            write(caller, arg, &v)?;
            Ok(0)
        }
        GnttabOp::MapGrantRef => each(doms, arg, count, 32, map_one),
        GnttabOp::UnmapGrantRef => each(doms, arg, count, 24, unmap_one),
        GnttabOp::Copy => each(doms, arg, count, 40, copy_one),
        // Version 1 has no status frames.
        GnttabOp::GetStatusFrames => Err(XenErrno::Einval),
        _ => Err(XenErrno::Enosys),
    })
}

/// Runs `one` on each of `count` entries of `size` bytes from `arg`; each entry reports
/// its own status, a fault on the array ends the call with `-EFAULT`.
fn each(
    doms: &mut Domains,
    arg: u64,
    count: u64,
    size: u64,
    one: fn(&mut Domains, u64) -> core::result::Result<(), XenErrno>,
) -> Result {
    for i in 0..count {
        one(doms, arg.wrapping_add(i * size))?;
    }
    Ok(0)
}

/// The caller, or the domain the privileged caller names.
fn target(doms: &mut Domains, dom: u16) -> core::result::Result<DomId, XenErrno> {
    let caller = doms.current().ok_or(XenErrno::Esrch)?.id;
    super::named_domain(caller, dom)
}

fn setup_table(doms: &mut Domains, arg: u64) -> Result {
    let caller = doms.current().ok_or(XenErrno::Esrch)?;
    let mut s: GnttabSetupTable = read(caller, arg)?;
    let list = s.frame_list.0;
    let mut alloc = FrameAlloc::default();
    let frames = match target(doms, s.dom) {
        Err(_) => {
            s.status = GrantStatus::BadDomain.raw();
            Vec::new()
        }
        Ok(dom) => match doms.get_mut(dom) {
            None => {
                s.status = GrantStatus::BadDomain.raw();
                Vec::new()
            }
            Some(d) => match d.grants.setup_table(s.nr_frames, &mut alloc) {
                Ok(frames) => {
                    s.status = GrantStatus::Okay.raw();
                    let frames = frames.to_vec();
                    d.grant_frames.append(&mut alloc.made);
                    frames
                }
                Err(e) => {
                    s.status = e.raw();
                    Vec::new()
                }
            },
        },
    };
    let caller = doms.current().ok_or(XenErrno::Esrch)?;
    for (i, mfn) in frames.iter().enumerate() {
        write(caller, list.wrapping_add(i as u64 * 8), &mfn.0)?;
    }
    write(caller, arg, &s)?;
    Ok(0)
}

fn query_size(doms: &mut Domains, arg: u64) -> Result {
    let caller = doms.current().ok_or(XenErrno::Esrch)?;
    let mut q: GnttabQuerySize = read(caller, arg)?;
    match target(doms, q.dom).ok().and_then(|dom| doms.get(dom)) {
        Some(d) => {
            let size = d.grants.query_size();
            q.nr_frames = size.nr_frames;
            q.max_nr_frames = size.max_nr_frames;
            q.status = GrantStatus::Okay.raw();
        }
        None => q.status = GrantStatus::BadDomain.raw(),
    }
    write(doms.current().ok_or(XenErrno::Esrch)?, arg, &q)?;
    Ok(0)
}

/// The L1 entry a host mapping goes into: the PTE at machine address `host_addr` with
/// `GNTMAP_contains_pte`, else the one mapping virtual address `host_addr` now.
fn pte_slot(d: &Domain, host_addr: u64, flags: u32) -> Option<(Mfn, usize)> {
    if flags & GNTMAP_CONTAINS_PTE != 0 {
        if host_addr % 8 != 0 {
            return None;
        }
        return Some((
            Mfn::containing(host_addr),
            (host_addr % PAGE_SIZE) as usize / 8,
        ));
    }
    d.l1_slot(host_addr)
}

/// Runs `f` with the caller's maptrack taken out of it (the grant logic needs the other
/// domains at the same time).
fn with_maptrack<R>(
    doms: &mut Domains,
    f: impl FnOnce(&mut Maptrack, &mut Domains) -> R,
) -> Option<R> {
    let caller = doms.current()?;
    let id = caller.id;
    let mut mt = core::mem::replace(&mut caller.maptrack, Maptrack::new(id, 0));
    let r = f(&mut mt, doms);
    if let Some(caller) = doms.current() {
        caller.maptrack = mt;
    }
    Some(r)
}

fn map_one(doms: &mut Domains, at: u64) -> core::result::Result<(), XenErrno> {
    let caller = doms.current().ok_or(XenErrno::Esrch)?;
    let mut op: GnttabMapGrantRef = read(caller, at)?;
    let id = caller.id;
    let slot = pte_slot(caller, op.host_addr, op.flags);
    let result = with_maptrack(doms, |mt, doms| {
        let Some((table, index)) = slot else {
            return Err(GrantStatus::BadVirtAddr);
        };
        let mapped = mt.map(&mut Granters(doms), &op)?;
        let m = mapped.mapping;
        let refs = m.refs();
        let installed = FRAME_TABLE.lock().as_mut().is_some_and(|ft| {
            let mut mem = GuestTables::new();
            ft.map_grant(
                table,
                index,
                id,
                refs.mfn,
                refs.owner,
                refs.writable,
                ferrovisor::mm::paging::pte::USER,
                &mut mem,
            )
            .is_ok()
        });
        if !installed {
            mt.cancel_map(&mut Granters(doms), mapped.handle);
            return Err(GrantStatus::GeneralError);
        }
        Ok(mapped)
    })
    .ok_or(XenErrno::Esrch)?;
    match result {
        Ok(mapped) => {
            op.status = GrantStatus::Okay.raw();
            op.handle = mapped.handle;
            op.dev_bus_addr = mapped.dev_bus_addr();
        }
        Err(e) => op.status = e.raw(),
    }
    write(doms.current().ok_or(XenErrno::Esrch)?, at, &op)
}

fn unmap_one(doms: &mut Domains, at: u64) -> core::result::Result<(), XenErrno> {
    let caller = doms.current().ok_or(XenErrno::Esrch)?;
    let mut op: GnttabUnmapGrantRef = read(caller, at)?;
    let id = caller.id;
    let result = with_maptrack(doms, |mt, doms| {
        let m = mt.check_unmap(&op)?;
        let caller = doms.current().ok_or(GrantStatus::GeneralError)?;
        let (table, index) =
            pte_slot(caller, m.host_addr, m.flags).ok_or(GrantStatus::BadVirtAddr)?;
        let removed = FRAME_TABLE.lock().as_mut().is_some_and(|ft| {
            let mut mem = GuestTables::new();
            ft.unmap_grant(table, index, id, m.mfn, !m.readonly(), &mut mem)
                .is_ok()
        });
        if !removed {
            return Err(GrantStatus::GeneralError);
        }
        if !m.contains_pte() {
            hw_paging::invlpg(m.host_addr);
        } else {
            hw_paging::flush_tlb_local();
        }
        // No CPU may keep the translation once the granter has its frame back.
        caller.flush_other_cpus();
        mt.unmap(&mut Granters(doms), &op)
    })
    .ok_or(XenErrno::Esrch)?;
    op.status = match result {
        Ok(_) => GrantStatus::Okay.raw(),
        Err(e) => e.raw(),
    };
    write(doms.current().ok_or(XenErrno::Esrch)?, at, &op)
}

fn copy_one(doms: &mut Domains, at: u64) -> core::result::Result<(), XenErrno> {
    let caller = doms.current().ok_or(XenErrno::Esrch)?;
    let mut op: GnttabCopy = read(caller, at)?;
    let id = caller.id;
    op.status = match grant_table::acquire_copy(&mut Granters(doms), id, &op) {
        Ok(plan) => {
            let done = copy_frames(&plan, id);
            grant_table::release_copy(&mut Granters(doms), &plan);
            match done {
                Ok(()) => GrantStatus::Okay.raw(),
                Err(e) => e.raw(),
            }
        }
        Err(e) => e.raw(),
    };
    write(doms.current().ok_or(XenErrno::Esrch)?, at, &op)
}

/// Copies the planned bytes, holding the source with a general reference and the
/// destination with a `Writable` type reference for the duration: a page table or
/// descriptor table is never written this way, whatever was granted.
fn copy_frames(plan: &CopyPlan, caller: DomId) -> core::result::Result<(), GrantStatus> {
    let owner = |pinned: Option<(DomId, GrantRef)>| pinned.map_or(caller, |(dom, _)| dom);
    let (src, dst) = (plan.source, plan.dest);
    let (src_owner, dst_owner) = (owner(src.pinned), owner(dst.pinned));
    // The bytes move only through views of the handles the frame table gives out after
    // its checks: a general reference on the source, a `Writable` type reference on the
    // destination (so a page or descriptor table is never written this way).
    let (from, to) = {
        let mut ft = FRAME_TABLE.lock();
        let ft = ft.as_mut().ok_or(GrantStatus::GeneralError)?;
        let from = ft
            .get_page_ref(src.mfn, src_owner)
            .map_err(|_| GrantStatus::BadPage)?;
        match ft.get_writable(dst.mfn, dst_owner) {
            Ok(to) => (from, to),
            Err(e) => {
                let _ = ft.put_page_ref(from);
                crate::guest_log::debug(
                    caller,
                    format_args!("grant copy: destination {}: {e}", dst.mfn),
                );
                return Err(GrantStatus::BadPage);
            }
        }
    };
    let len = usize::from(plan.len);
    let mut buf = [0u8; PAGE_SIZE as usize];
    // `offset + len` stays within each page (checked by `acquire_copy`; the views check
    // again).
    FrameReader::new(&from).read_bytes(usize::from(src.offset), &mut buf[..len]);
    SharedFrame::new(&to).write_bytes(usize::from(dst.offset), &buf[..len]);
    let mut ft = FRAME_TABLE.lock();
    if let Some(ft) = ft.as_mut() {
        let _ = ft.put_writable(to);
        let _ = ft.put_page_ref(from);
    }
    Ok(())
}
