//! `balloon`: giving memory back and taking it again (`XENMEM_decrease_reservation`,
//! `XENMEM_increase_reservation`, `XENMEM_current_reservation`), as Linux's balloon driver
//! does. A page is unmapped and returned: the reservation shrinks by one and its M2P entry
//! becomes invalid; a new page comes back zeroed and mappable, and the reservation grows
//! again. Refused: returning a page that is still mapped, returning a frame the domain
//! does not own, growing beyond the domain's size. Before that, where the machine-to-phys
//! table is (`XENMEM_machphys_mapping`) and which frames back it
//! (`XENMEM_machphys_mfn_list`: one per 2 MiB of the table, as save/restore tools use it).
#![cfg_attr(target_os = "none", no_std, no_main)]

use core::ffi::c_void;

use ferrovisor_abi::xen::{
    memory::{MemoryOp, XenMachphysMapping, XenMachphysMfnList, XenMemoryReservation},
    xen::{StartInfo, DOMID_SELF, UVMF_INVLPG},
    GuestHandle,
};
use pvrt::region::{self, PTE_RW};

pvrt::test_kernel!(name: "balloon", main: test_main);

/// The read-only machine-to-phys table.
const M2P: u64 = 0xffff_8000_0000_0000;

fn reservation(op: MemoryOp, frames: &mut [u64]) -> i64 {
    let mut r = XenMemoryReservation {
        extent_start: GuestHandle(frames.as_mut_ptr() as u64),
        nr_extents: frames.len() as u64,
        extent_order: 0,
        mem_flags: 0,
        domid: DOMID_SELF,
        _cpad0: [0; 6],
    };
    // SAFETY: the hypervisor reads `r` and reads/writes `frames`, both ours.
    unsafe { pvrt::memory_op(op, (&raw mut r).cast::<c_void>()) }
}

fn current() -> i64 {
    let mut dom = DOMID_SELF;
    // SAFETY: the hypervisor reads the domain id.
    unsafe {
        pvrt::memory_op(
            MemoryOp::CurrentReservation,
            (&raw mut dom).cast::<c_void>(),
        )
    }
}

/// `XENMEM_machphys_mfn_list` into `out`, asking for at most `max` extents: the return
/// code and `nr_extents`.
fn mfn_list(out: &mut [u64], max: u32) -> (i64, u32) {
    let mut l = XenMachphysMfnList {
        max_extents: max,
        _cpad0: 0,
        extent_start: GuestHandle(out.as_mut_ptr() as u64),
        nr_extents: u32::MAX,
        _cpad1: 0,
    };
    // SAFETY: the hypervisor reads `l`, writes at most `max` <= `out.len()` entries of `out`.
    let rc = unsafe { pvrt::memory_op(MemoryOp::MachphysMfnList, (&raw mut l).cast::<c_void>()) };
    (rc, l.nr_extents)
}

/// The machine-to-phys table's place and its backing frames.
fn m2p_layout() -> Result<(), &'static str> {
    let mut m = XenMachphysMapping {
        v_start: 0,
        v_end: 0,
        max_mfn: 0,
    };
    // SAFETY: the hypervisor writes `m`, ours.
    let rc = unsafe { pvrt::memory_op(MemoryOp::MachphysMapping, (&raw mut m).cast::<c_void>()) };
    pvrt::ensure!(rc == 0, "XENMEM_machphys_mapping returned {rc}");
    pvrt::ensure!(
        m.v_start == M2P && m.v_end >= M2P + (m.max_mfn + 1) * 8,
        "XENMEM_machphys_mapping: {:#x}-{:#x} for max_mfn {:#x}: not at {M2P:#x} or too small",
        m.v_start,
        m.v_end,
        m.max_mfn
    );
    const EXTENT: u64 = 2 << 20;
    let expected = ((m.max_mfn + 1) * 8).div_ceil(EXTENT);
    let mut extents = [0u64; 16];
    let (rc, n) = mfn_list(&mut extents, 16);
    pvrt::ensure!(rc == 0, "XENMEM_machphys_mfn_list returned {rc}");
    pvrt::ensure!(
        u64::from(n) == expected.min(16),
        "XENMEM_machphys_mfn_list gave {n} extents for a table of {} entries, expected {}",
        m.max_mfn + 1,
        expected.min(16)
    );
    let listed = &extents[..n as usize];
    for (i, &mfn) in listed.iter().enumerate() {
        pvrt::ensure!(
            mfn != 0 && mfn <= m.max_mfn && !listed[..i].contains(&mfn),
            "XENMEM_machphys_mfn_list extent {i} is frame {mfn:#x}: zero, beyond max_mfn or \
             repeated"
        );
    }
    let first = listed.first().copied().unwrap_or(0);
    let (rc, none) = mfn_list(&mut [0u64; 1], 0);
    pvrt::ensure!(
        rc == 0 && none == 0,
        "XENMEM_machphys_mfn_list with max_extents 0: returned {rc}, nr_extents {none}"
    );
    pvrt::println!(
        "pv-test balloon: M2P at {:#x}-{:#x} (max_mfn {:#x}), {n} extent(s) from frame {:#x}",
        m.v_start,
        m.v_end,
        m.max_mfn,
        first
    );
    Ok(())
}

fn test_main(si: &StartInfo) -> Result<(), &'static str> {
    m2p_layout()?;
    let start = current();
    pvrt::ensure!(
        start == si.nr_pages as i64,
        "current reservation {} != nr_pages {}",
        start,
        si.nr_pages
    );

    // A page still mapped cannot be returned (Ferrovisor; Xen takes it and frees it once
    // unmapped, so there the probe is skipped).
    let page = region::alloc_scratch(si).ok_or("no scratch page")?;
    if pvrt::on_ferrovisor() {
        let rc = reservation(MemoryOp::DecreaseReservation, &mut [page.mfn]);
        pvrt::ensure!(
            rc == 0,
            "decrease_reservation of a mapped page returned {} (expected 0 done)",
            rc
        );
    } else {
        pvrt::println!(
            "pv-test balloon: Xen's rule: a mapped page would be taken back; not probed"
        );
    }
    // Nor a frame the domain does not own (the hypervisor image).
    let rc = reservation(MemoryOp::DecreaseReservation, &mut [0x200]);
    pvrt::ensure!(
        rc == 0,
        "decrease_reservation of a foreign frame returned {}",
        rc
    );
    pvrt::println!("pv-test balloon: a mapped page and a foreign frame are not taken back");

    // Unmap it, then return it.
    // SAFETY: the scratch page is used by nothing else.
    let rc = unsafe { pvrt::update_va_mapping(page.va, 0, UVMF_INVLPG) };
    pvrt::ensure!(rc == 0, "unmapping the page returned {}", rc);
    let rc = reservation(MemoryOp::DecreaseReservation, &mut [page.mfn]);
    pvrt::ensure!(rc == 1, "decrease_reservation returned {}", rc);
    pvrt::ensure!(
        current() == start - 1,
        "the reservation did not shrink: {}",
        current()
    );
    // SAFETY: the M2P is mapped read-only for guests.
    let m2p = unsafe { core::ptr::read_volatile((M2P + page.mfn * 8) as *const u64) };
    pvrt::ensure!(
        m2p == u64::MAX,
        "the returned frame's M2P entry is {:#x}, not invalid",
        m2p
    );
    pvrt::println!(
        "pv-test balloon: returned frame {:#x}; reservation {} -> {}",
        page.mfn,
        start,
        current()
    );

    // Take one back: it arrives zeroed and can be mapped.
    let mut got = [0u64];
    let rc = reservation(MemoryOp::IncreaseReservation, &mut got);
    pvrt::ensure!(rc == 1, "increase_reservation returned {}", rc);
    pvrt::ensure!(
        current() == start,
        "the reservation did not grow back: {}",
        current()
    );
    // SAFETY: mapping the new frame at the scratch address.
    let rc = unsafe { pvrt::update_va_mapping(page.va, (got[0] << 12) | PTE_RW, UVMF_INVLPG) };
    pvrt::ensure!(rc == 0, "mapping the new frame returned {}", rc);
    // SAFETY: just mapped writable.
    let zero = (0..512).all(|i| unsafe { core::ptr::read_volatile(page.words().add(i)) } == 0);
    pvrt::ensure!(zero, "the new frame is not zeroed");
    pvrt::println!(
        "pv-test balloon: got frame {:#x} back, zeroed; reservation {}",
        got[0],
        current()
    );

    // The domain cannot grow beyond its size.
    let mut more = [0u64];
    let rc = reservation(MemoryOp::IncreaseReservation, &mut more);
    pvrt::ensure!(
        rc == 0,
        "increase_reservation beyond the domain's size returned {}",
        rc
    );
    pvrt::println!("pv-test balloon: growing beyond its size refused");
    Ok(())
}
