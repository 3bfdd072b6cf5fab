//! The PV MMU hypercalls: `mmu_update`, `mmuext_op` and `update_va_mapping`. Every change
//! to a guest page table goes through the frame table's rules (`mm::frame_table`): a
//! domain can only map frames it owns, never a page table writable, never the hypervisor's
//! slots.

use ferrovisor::mm::{
    frame_table::{DomId, FrameTable, MmError, Owner, UpdateOutcome},
    page_type::Level,
    page_type::PageType,
    Mfn, PAGE_SIZE,
};
use ferrovisor::pv::descriptor;
use ferrovisor_abi::{
    errno::XenErrno,
    xen::xen::{
        foreigndom_fd, MmuUpdate, MmuUpdateCmd, MmuextCmd, MmuextOp, DOMID_SELF, UVMF_ALL,
        UVMF_FLUSHTYPE_MASK, UVMF_INVLPG, UVMF_TLB_FLUSH,
    },
};
use zerocopy::FromBytes;

use super::Result;
use crate::{
    arch::x86_64::memory,
    arch::x86_64::{
        paging::{self as hw_paging, GuestTables},
        phys::{FrameReader, SharedFrame},
    },
    domain::{self, Domain, FRAME_TABLE},
};

const PTE_PRESENT: u64 = 1;

/// Most requests one call handles before it stops (the caller retries with the rest);
/// keeps one hypercall's work bounded.
const MAX_BATCH: u64 = 512;

fn mm_errno(e: MmError) -> XenErrno {
    e.errno()
}

fn tables() -> GuestTables {
    GuestTables::new()
}

fn with_ft<R>(
    f: impl FnOnce(&mut FrameTable) -> core::result::Result<R, XenErrno>,
) -> core::result::Result<R, XenErrno> {
    let mut guard = FRAME_TABLE.lock();
    let ft = guard.as_mut().ok_or(XenErrno::Esrch)?;
    f(ft)
}

/// `mmuext_op` works on the domain's own tables only: `DOMID_SELF` or the caller's id.
fn check_self(foreigndom: u64) -> core::result::Result<(), XenErrno> {
    let caller = domain::with_current(|d| d.id).ok_or(XenErrno::Esrch)?;
    let fd = foreigndom_fd(foreigndom as u32);
    if fd == DOMID_SELF || fd == caller.0 {
        Ok(())
    } else {
        Err(XenErrno::Esrch)
    }
}

/// The owner of the frames `mmu_update`'s L1 entries map: the caller, or (for the
/// privileged domain only) the existing domain `foreigndom` names.
fn page_owner(foreigndom: u64) -> core::result::Result<DomId, XenErrno> {
    let caller = domain::with_current(|d| d.id).ok_or(XenErrno::Esrch)?;
    let fd = foreigndom_fd(foreigndom as u32);
    if fd == DOMID_SELF || fd == caller.0 {
        return Ok(caller);
    }
    if caller != domain::DOM0 {
        return Err(XenErrno::Eperm);
    }
    let owner = DomId(fd);
    domain::with_domain(owner, |_| owner).ok_or(XenErrno::Esrch)
}

/// `mmu_update(reqs, count, success_count, foreigndom)`.
pub fn mmu_update([reqs, count, done_ptr, foreigndom, _]: [u64; 5]) -> Result {
    let pg_owner = page_owner(foreigndom)?;
    let n = count.min(MAX_BATCH);
    let mut done = 0u64;
    let mut result = Ok(0);
    for i in 0..n {
        let mut raw = [0u8; 16];
        let req = domain::with_current(|d| d.read_guest(reqs.wrapping_add(i * 16), &mut raw))
            .ok_or(XenErrno::Esrch)?
            .map_err(|_| XenErrno::Efault)
            .and_then(|()| MmuUpdate::read_from_bytes(&raw).map_err(|_| XenErrno::Efault));
        let step = req.and_then(|req| {
            domain::with_current(|d| one_update(d, &req, pg_owner)).unwrap_or(Err(XenErrno::Esrch))
        });
        if let Err(e) = step {
            result = Err(e);
            break;
        }
        done += 1;
    }
    hw_paging::flush_tlb_local();
    write_done(done_ptr, done)?;
    result
}

fn one_update(
    d: &mut Domain,
    req: &MmuUpdate,
    pg_owner: DomId,
) -> core::result::Result<(), XenErrno> {
    let addr = req.addr();
    let mfn = Mfn::containing(addr);
    match req.cmd() {
        MmuUpdateCmd::NormalPtUpdate | MmuUpdateCmd::PtUpdatePreserveAd => {
            if addr % 8 != 0 {
                return Err(XenErrno::Einval);
            }
            let index = ((addr % PAGE_SIZE) / 8) as usize;
            with_ft(|ft| {
                // The old entry is read (to know whether other CPUs may cache it) by the
                // frame table, only once it has found `mfn` to be the caller's.
                let updated = ft
                    .update_entry_as(mfn, index, req.val, d.id, pg_owner, &mut tables())
                    .map_err(mm_errno)?;
                if matches!(updated.outcome, UpdateOutcome::Validated(_))
                    && updated.old & PTE_PRESENT != 0
                {
                    // A translation other CPUs may have cached went away or changed.
                    d.flush_other_cpus();
                }
                Ok(())
            })
        }
        MmuUpdateCmd::MachphysUpdate if pg_owner != d.id => Err(XenErrno::Einval),
        MmuUpdateCmd::MachphysUpdate => {
            let owned =
                with_ft(|ft| Ok(ft.info(mfn).map(|i| i.owner) == Some(Owner::Domain(d.id))))?;
            if !owned || req.val >= d.p2m.len() as u64 {
                return Err(XenErrno::Einval);
            }
            memory::m2p_set(mfn, req.val);
            Ok(())
        }
        MmuUpdateCmd::PtUpdateNoTranslate => Err(XenErrno::Enosys),
    }
}

fn write_done(ptr: u64, done: u64) -> core::result::Result<(), XenErrno> {
    if ptr == 0 {
        return Ok(());
    }
    domain::with_current(|d| d.write_guest(ptr, &(done as u32).to_le_bytes()))
        .ok_or(XenErrno::Esrch)?
        .map_err(|_| XenErrno::Efault)
}

/// `mmuext_op(ops, count, success_count, foreigndom)`.
pub fn mmuext_op([ops, count, done_ptr, foreigndom, _]: [u64; 5]) -> Result {
    check_self(foreigndom)?;
    let n = count.min(MAX_BATCH);
    let mut done = 0u64;
    let mut result = Ok(0);
    for i in 0..n {
        let mut raw = [0u8; 24];
        let op = domain::with_current(|d| d.read_guest(ops.wrapping_add(i * 24), &mut raw))
            .ok_or(XenErrno::Esrch)?
            .map_err(|_| XenErrno::Efault)
            .and_then(|()| MmuextOp::read_from_bytes(&raw).map_err(|_| XenErrno::Efault));
        let step = op.and_then(|op| {
            domain::with_current(|d| one_ext(d, &op)).unwrap_or(Err(XenErrno::Esrch))
        });
        if let Err(e) = step {
            result = Err(e);
            break;
        }
        done += 1;
    }
    // A frame that just became a page table or descriptor page may still have a writable
    // translation cached from before (its mapping dropped with UVMF_NONE): flush before
    // the guest runs again.
    hw_paging::flush_tlb_local();
    write_done(done_ptr, done)?;
    result
}

fn pin_level(cmd: MmuextCmd) -> Option<Level> {
    match cmd {
        MmuextCmd::PinL1Table => Some(Level::L1),
        MmuextCmd::PinL2Table => Some(Level::L2),
        MmuextCmd::PinL3Table => Some(Level::L3),
        MmuextCmd::PinL4Table => Some(Level::L4),
        _ => None,
    }
}

fn one_ext(d: &mut Domain, op: &MmuextOp) -> core::result::Result<(), XenErrno> {
    let cmd = MmuextCmd::try_from(op.cmd).map_err(|_| XenErrno::Enosys)?;
    let mfn = Mfn(op.arg1);
    if let Some(level) = pin_level(cmd) {
        return with_ft(|ft| ft.pin(mfn, d.id, level, &mut tables()).map_err(mm_errno));
    }
    match cmd {
        MmuextCmd::UnpinTable => with_ft(|ft| ft.unpin(mfn, d.id, &mut tables()).map_err(mm_errno)),
        MmuextCmd::NewBaseptr => new_baseptr(d, mfn),
        MmuextCmd::NewUserBaseptr => {
            // A zero frame means "no user page tables".
            // Called from guest kernel mode, so CR3 holds the kernel root, never the old
            // user one, which can go at once.
            with_ft(|ft| {
                let mut mem = tables();
                let new = match op.arg1 {
                    0 => None,
                    _ => Some(ft.get_l4_ref(mfn, d.id, &mut mem).map_err(mm_errno)?),
                };
                let v = d.cur_mut();
                v.pv.has_user_page_tables = new.is_some();
                if let Some(old) = core::mem::replace(&mut v.user_l4, new) {
                    let _ = ft.put_l4_ref(old, &mut mem);
                }
                Ok(())
            })
        }
        MmuextCmd::TlbFlushLocal => {
            hw_paging::flush_tlb_local();
            Ok(())
        }
        MmuextCmd::InvlpgLocal => {
            hw_paging::invlpg(op.arg1);
            Ok(())
        }
        // On the CPUs of the vCPUs named (a superset: every CPU running one of the
        // domain's vCPUs), the whole TLB.
        MmuextCmd::TlbFlushMulti
        | MmuextCmd::TlbFlushAll
        | MmuextCmd::InvlpgMulti
        | MmuextCmd::InvlpgAll => {
            d.flush_all_cpus();
            Ok(())
        }
        MmuextCmd::FlushCache | MmuextCmd::FlushCacheGlobal => Ok(()),
        // `highmem_assist`: whole-page clear and copy of the domain's ordinary pages.
        // The frames are written only through views of the handles the frame table gives
        // out after its checks (a `Writable` type reference: never a page or descriptor
        // table of anyone).
        MmuextCmd::ClearPage => with_ft(|ft| {
            let page = ft.get_writable(mfn, d.id).map_err(mm_errno)?;
            SharedFrame::new(&page).zero();
            let _ = ft.put_writable(page);
            Ok(())
        }),
        MmuextCmd::CopyPage => with_ft(|ft| {
            let src = ft.get_page_ref(Mfn(op.src_mfn()), d.id).map_err(mm_errno)?;
            let dst = match ft.get_writable(mfn, d.id) {
                Ok(dst) => dst,
                Err(e) => {
                    let _ = ft.put_page_ref(src);
                    return Err(mm_errno(e));
                }
            };
            let mut bytes = [0u8; PAGE_SIZE as usize];
            FrameReader::new(&src).read_bytes(0, &mut bytes);
            SharedFrame::new(&dst).write_bytes(0, &bytes);
            let _ = ft.put_writable(dst);
            let _ = ft.put_page_ref(src);
            Ok(())
        }),
        // An empty LDT (what Linux sets) is accepted; loading a real LDT is not offered yet.
        MmuextCmd::SetLdt => set_ldt(d, op.arg1, op.arg2),
        // Superpage marks (PV guests get no superpages) and anything newer.
        _ => Err(XenErrno::Enosys),
    }
}

/// `MMUEXT_SET_LDT(linear_addr, nr_ents)`: the LDT lives in the guest's memory at a
/// page-aligned address; each of its pages is typed `SegDesc` (so the guest cannot write
/// it any more), its descriptors are checked like a GDT's, and it is mapped into the CPU's
/// LDT window and loaded.
fn set_ldt(d: &mut Domain, base: u64, entries: u64) -> core::result::Result<(), XenErrno> {
    let entries = u32::try_from(entries).map_err(|_| XenErrno::Einval)?;
    let ldt = descriptor::validate_set_ldt(base, entries).map_err(|e| e.errno())?;
    let mut frames: heapless::Vec<Mfn, 16> = heapless::Vec::new();
    for i in 0..ldt.pages() as u64 {
        let va = ldt.base() + i * PAGE_SIZE;
        let (l1, index) = d.l1_slot(va).ok_or(XenErrno::Einval)?;
        let entry = with_ft(|ft| ft.read_entry(l1, index, d.id, &tables()).map_err(mm_errno))?;
        if entry & 1 == 0 {
            return Err(XenErrno::Einval);
        }
        let _ = frames.push(Mfn::containing(entry & 0x000f_ffff_ffff_f000));
    }
    with_ft(|ft| {
        let mut mem = super::desc::tables();
        let mut taken = 0;
        for &mfn in &frames {
            let step = ft
                .get_page_and_type(mfn, d.id, PageType::SegDesc, &mut mem)
                .map_err(mm_errno)
                .and_then(|()| {
                    taken += 1;
                    super::desc::check_frame(ft, &mut mem, d.id, mfn)
                });
            if let Err(e) = step {
                super::desc::release(ft, &mut mem, &frames[..taken]);
                return Err(e);
            }
        }
        let old = core::mem::replace(&mut d.cur_mut().ldt_frames, frames.clone());
        super::desc::release(ft, &mut mem, &old);
        Ok(())
    })?;
    d.cur_mut().ldt_entries = ldt.entries();
    memory::load_guest_ldt(&d.cur_mut().ldt_frames, ldt.entries()).map_err(|_| XenErrno::Enomem)
}

/// Makes `mfn` the running vCPU's kernel page-table root (`MMUEXT_NEW_BASEPTR`, or a
/// guest `mov %reg, %cr3`).
pub fn new_baseptr(d: &mut Domain, mfn: Mfn) -> core::result::Result<(), XenErrno> {
    with_ft(|ft| {
        let mut mem = tables();
        let new = ft.get_l4_ref(mfn, d.id, &mut mem).map_err(mm_errno)?;
        let v = d.cur_mut();
        let in_kernel = v.pv.in_kernel;
        let old = v.kernel_l4.replace(new);
        if in_kernel {
            if let Some(l4) = v.kernel_l4.as_ref() {
                hw_paging::activate_guest(l4);
            }
        }
        // The old root's references go only once the new one is held and loaded, so CR3
        // never points at a table that was just devalidated.
        if let Some(old) = old {
            let _ = ft.put_l4_ref(old, &mut mem);
        }
        Ok(())
    })?;
    Ok(())
}

/// `update_va_mapping(va, val, flags)`: replaces the L1 entry mapping `va` in the current
/// address space.
pub fn update_va_mapping([va, val, flags, ..]: [u64; 5]) -> Result {
    domain::with_current(|d| {
        let (l1, index) = d.l1_slot(va).ok_or(XenErrno::Einval)?;
        with_ft(|ft| {
            let updated = ft
                .update_l1_entry(l1, index, val, d.id, &mut tables())
                .map_err(mm_errno)?;
            match updated.outcome {
                UpdateOutcome::Validated(Level::L1) => {
                    if updated.old & PTE_PRESENT != 0 || flags & UVMF_ALL != 0 {
                        d.flush_other_cpus();
                    }
                    Ok(())
                }
                _ => Err(XenErrno::Einval),
            }
        })
    })
    .ok_or(XenErrno::Esrch)??;
    match flags & UVMF_FLUSHTYPE_MASK {
        UVMF_INVLPG => hw_paging::invlpg(va),
        UVMF_TLB_FLUSH => hw_paging::flush_tlb_local(),
        _ => {}
    }
    Ok(0)
}
