//! `memory_op`: what a PV guest learns about its memory (its memory map, reservation
//! sizes, the machine-to-phys table's location) and, later, ballooning.

use ferrovisor_abi::{
    errno::XenErrno,
    layout::MACH2PHYS_VIRT_START,
    xen::{
        memory::{E820Entry, MemoryOp, XenMachphysMapping, XenMemoryMap},
        xen::DOMID_SELF,
    },
};
use zerocopy::{FromBytes, IntoBytes};

use super::Result;
use crate::{domain, domain::Domain, memory};

const E820_RAM: u32 = 1;

pub fn memory_op([cmd, arg, ..]: [u64; 5]) -> Result {
    // Bits 6 and up carry a continuation (preemption) start extent; none is used yet.
    let op = MemoryOp::try_from((cmd & 0x3f) as u32).map_err(|_| XenErrno::Enosys)?;
    domain::with_current(|d| one(d, op, arg)).ok_or(XenErrno::Esrch)?
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
        MemoryOp::CurrentReservation | MemoryOp::MaximumReservation => match read_domid(d, arg)? {
            id if id == DOMID_SELF || id == d.id.0 => Ok(pages),
            _ => Err(XenErrno::Esrch),
        },
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
        // Ballooning (increase/decrease/populate) and the rest come with memory control.
        _ => Err(XenErrno::Enosys),
    }
}
