//! `memory_op`: what a PV guest learns about its memory (its memory map, reservation
//! sizes, the machine-to-phys table's location) and, later, ballooning.

use ferrovisor_abi::{
    errno::XenErrno,
    layout::MACH2PHYS_VIRT_START,
    xen::{
        memory::{
            E820Entry, MemoryOp, XenMachphysMapping, XenMachphysMfnList, XenMemoryMap,
            XenMemoryReservation,
        },
        xen::DOMID_SELF,
    },
};
use zerocopy::{FromBytes, IntoBytes};

use super::Result;
use alloc::vec::Vec;

use ferrovisor::mm::{
    frame_table::{DomId, Owner},
    Mfn,
};

use crate::{
    arch::x86_64::memory,
    domain::{self, Domain, Domains},
};

const E820_RAM: u32 = 1;

pub fn memory_op([cmd, arg, ..]: [u64; 5]) -> Result {
    // Bits 6 and up carry a continuation (preemption) start extent; none is used yet.
    let op = MemoryOp::try_from((cmd & 0x3f) as u32).map_err(|_| XenErrno::Enosys)?;
    domain::with_domains(|doms| match op {
        MemoryOp::IncreaseReservation | MemoryOp::PopulatePhysmap => {
            increase_reservation(doms, arg, op == MemoryOp::PopulatePhysmap)
        }
        MemoryOp::CurrentReservation | MemoryOp::MaximumReservation => reservation(doms, op, arg),
        _ => one(doms.current().ok_or(XenErrno::Esrch)?, op, arg),
    })
}

/// `XENMEM_current_reservation` / `maximum_reservation` of the caller or (for the
/// privileged domain) any domain.
fn reservation(doms: &mut Domains, op: MemoryOp, arg: u64) -> Result {
    let caller = doms.current().ok_or(XenErrno::Esrch)?;
    let (caller_id, id) = (caller.id, read_domid(caller, arg)?);
    let target = if id == DOMID_SELF {
        caller_id
    } else {
        DomId(id)
    };
    if target != caller_id && caller_id != domain::DOM0 {
        return Err(XenErrno::Eperm);
    }
    let d = doms.get(target).ok_or(XenErrno::Esrch)?;
    Ok(if op == MemoryOp::CurrentReservation {
        d.p2m.len() as u64
    } else {
        d.max_pages
    })
}

/// Extents one call handles (the guest repeats the call for the rest, as with Xen's
/// preemption).
const MAX_EXTENTS: u64 = 512;

/// The reservation argument. Only the privileged domain may name another domain, and
/// only where `foreign_ok` (populating a domain it builds).
fn read_reservation(
    d: &Domain,
    arg: u64,
    foreign_ok: bool,
) -> core::result::Result<XenMemoryReservation, XenErrno> {
    let mut raw = [0u8; core::mem::size_of::<XenMemoryReservation>()];
    d.read_guest(arg, &mut raw).map_err(|_| XenErrno::Efault)?;
    let r = XenMemoryReservation::read_from_bytes(&raw).map_err(|_| XenErrno::Efault)?;
    if r.domid != DOMID_SELF && r.domid != d.id.0 {
        if d.id != domain::DOM0 {
            return Err(XenErrno::Eperm);
        }
        if !foreign_ok {
            return Err(XenErrno::Esrch);
        }
    }
    if r.extent_order != 0 {
        return Err(XenErrno::Einval); // PV guests have no superpages
    }
    Ok(r)
}

fn read_u64(d: &Domain, va: u64) -> core::result::Result<u64, XenErrno> {
    super::read_struct(d, va)
}

/// `XENMEM_machphys_mfn_list`: the machine frames backing the read-only machine-to-phys
/// table, the first of each 2 MiB extent (each extent is 512 contiguous frames), up to
/// `max_extents` of them; `nr_extents` says how many were written.
fn machphys_mfn_list(d: &Domain, arg: u64) -> Result {
    let mut list: XenMachphysMfnList = super::read_struct(d, arg)?;
    let mut written = 0u32;
    for mfn in memory::m2p_extents().take(list.max_extents as usize) {
        let at = list.extent_start.0.wrapping_add(u64::from(written) * 8);
        d.write_guest(at, &mfn.to_le_bytes())
            .map_err(|_| XenErrno::Efault)?;
        written += 1;
    }
    list.nr_extents = written;
    d.write_guest(arg, list.as_bytes())
        .map_err(|_| XenErrno::Efault)?;
    Ok(0)
}

/// `XENMEM_decrease_reservation`: the guest gives frames back (a PV guest names machine
/// frames). Each must be the domain's and no longer mapped or typed. Returns the number
/// of extents released.
fn decrease_reservation(d: &mut Domain, arg: u64) -> Result {
    let r = read_reservation(d, arg, false)?;
    let mut released = Vec::new();
    for i in 0..r.nr_extents.min(MAX_EXTENTS) {
        // Xen stops at the first extent it cannot read or frame it cannot take, and
        // reports the progress (the frames already taken must be finished below).
        let Ok(mfn) = read_u64(d, r.extent_start.0.wrapping_add(i * 8)).map(Mfn) else {
            break;
        };
        let taken = domain::FRAME_TABLE.lock().as_mut().is_some_and(|ft| {
            ft.info(mfn)
                .is_some_and(|info| info.owner == Owner::Domain(d.id) && info.is_unreferenced())
                && ft.assign(mfn, Owner::Free).is_ok()
        });
        if !taken {
            break;
        }
        memory::m2p_set(mfn, memory::M2P_INVALID);
        released.push(mfn);
    }
    if released.is_empty() {
        return Ok(0);
    }
    // One pass over the domain's frames for the whole batch: a pass per extent would keep
    // interrupts off for as long as the guest's memory is large, 512 times over.
    let done = released.len() as u64;
    released.sort_unstable();
    d.p2m.retain(|m| released.binary_search(m).is_err());
    // No translation of the frames may survive their reuse.
    crate::arch::x86_64::paging::flush_tlb_local();
    for mfn in released {
        let _ = memory::free_frame(mfn);
    }
    Ok(done)
}

/// `XENMEM_increase_reservation` / `XENMEM_populate_physmap`: fresh zeroed frames, up to
/// the target domain's limit. For `populate_physmap` the list holds the guest's pfns on
/// the way in; either way the machine frame numbers are written back (a PV guest maps
/// them itself). The privileged domain may populate another domain (to build it): that
/// domain's frames must then come in pfn order, from its first missing one. Returns the
/// number of extents done.
fn increase_reservation(doms: &mut Domains, arg: u64, populate: bool) -> Result {
    let caller = doms.current().ok_or(XenErrno::Esrch)?;
    let r = read_reservation(caller, arg, true)?;
    let caller_id = caller.id;
    let target = if r.domid == DOMID_SELF {
        caller_id
    } else {
        DomId(r.domid)
    };
    let n = r.nr_extents.min(MAX_EXTENTS);
    let slot = |i: u64| r.extent_start.0.wrapping_add(i * 8);
    // The pfns asked for, read from the caller before anything is allocated.
    let mut pfns = Vec::new();
    if populate {
        for i in 0..n {
            pfns.push(read_u64(caller, slot(i))?);
        }
    }
    let t = doms.get_mut(target).ok_or(XenErrno::Esrch)?;
    let foreign = target != caller_id;
    let mut mfns = Vec::new();
    for i in 0..n {
        if t.p2m.len() as u64 >= t.max_pages {
            break;
        }
        let pfn = pfns.get(i as usize).copied();
        if foreign && pfn.is_some_and(|p| p != t.p2m.len() as u64) {
            if i == 0 {
                return Err(XenErrno::Einval);
            }
            break;
        }
        let Some(frame) = memory::alloc_frame() else {
            break;
        };
        let mfn = frame.into_mfn();
        let given = domain::FRAME_TABLE
            .lock()
            .as_mut()
            .is_some_and(|ft| ft.assign(mfn, Owner::Domain(target)).is_ok());
        if !given {
            let _ = memory::free_frame(mfn);
            break;
        }
        memory::m2p_set(mfn, pfn.unwrap_or(memory::M2P_INVALID));
        t.p2m.push(mfn);
        mfns.push(mfn);
    }
    // Report the frames; a list the caller cannot be written ends the report (the
    // frames stay the target's, as Xen leaves them).
    let caller = doms.current().ok_or(XenErrno::Esrch)?;
    for (i, mfn) in mfns.iter().enumerate() {
        if caller
            .write_guest(slot(i as u64), &mfn.0.to_le_bytes())
            .is_err()
        {
            return if i == 0 {
                Err(XenErrno::Efault)
            } else {
                Ok(i as u64)
            };
        }
    }
    Ok(mfns.len() as u64)
}

fn read_domid(d: &Domain, arg: u64) -> core::result::Result<u16, XenErrno> {
    let mut b = [0u8; 2];
    d.read_guest(arg, &mut b).map_err(|_| XenErrno::Efault)?;
    Ok(u16::from_le_bytes(b))
}

fn one(d: &mut Domain, op: MemoryOp, arg: u64) -> Result {
    let pages = d.p2m.len() as u64;
    match op {
        // The guest's pseudo-physical memory: one RAM range from 0.
        MemoryOp::MemoryMap => {
            let mut raw = [0u8; core::mem::size_of::<XenMemoryMap>()];
            d.read_guest(arg, &mut raw).map_err(|_| XenErrno::Efault)?;
            let mut map = XenMemoryMap::read_from_bytes(&raw).map_err(|_| XenErrno::Efault)?;
            if map.nr_entries < 1 {
                return Err(XenErrno::Einval);
            }
            let ram = E820Entry {
                addr: 0,
                size: pages * 4096,
                r#type: E820_RAM,
            };
            d.write_guest(map.buffer.0, ram.as_bytes())
                .map_err(|_| XenErrno::Efault)?;
            map.nr_entries = 1;
            d.write_guest(arg, map.as_bytes())
                .map_err(|_| XenErrno::Efault)?;
            Ok(0)
        }
        // The highest machine frame number (what sizes the guest's view of the M2P).
        MemoryOp::MaximumRamPage => Ok(memory::m2p_entries().saturating_sub(1)),
        MemoryOp::MachphysMapping => {
            let entries = memory::m2p_entries();
            let m = XenMachphysMapping {
                v_start: MACH2PHYS_VIRT_START,
                v_end: MACH2PHYS_VIRT_START + (entries * 8).div_ceil(2 << 20) * (2 << 20),
                max_mfn: entries.saturating_sub(1),
            };
            d.write_guest(arg, m.as_bytes())
                .map_err(|_| XenErrno::Efault)?;
            Ok(0)
        }
        MemoryOp::MachphysMfnList => machphys_mfn_list(d, arg),
        MemoryOp::DecreaseReservation => decrease_reservation(d, arg),
        _ => Err(XenErrno::Enosys),
    }
}
