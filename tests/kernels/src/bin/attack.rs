//! `attack`: a hostile dom0 that tries to escape and must be refused every time, with the
//! hypervisor still running afterwards. Each attempt prints `refused: <what>: <result>`
//! and is checked for the errno Xen's implementation gives (the ABI headers define none):
//!
//! | attempt | expected |
//! |---|---|
//! | map (RO or RW) a RAM frame the domain does not own: the hypervisor image (machine 0x200000), frame 0 | `-EBUSY` (Xen's `get_page_from_l1e` "could not pin"); frame 0 may also be `-EPERM` where it is classed as I/O memory. Xen 4.17 gives dom0 I/O access to the low 1 MiB, so there frame 0 maps: Ferrovisor does not hand dom0 I/O memory yet |
//! | map a frame beyond RAM | `-EPERM` (I/O memory without I/O access; Xen grants dom0 that access, Ferrovisor does not yet) |
//! | map one of its own page-table frames writable | `-EBUSY` |
//! | change an L4 entry in the hypervisor's slots 256..=271 | `-EINVAL` |
//! | pin an L1 mapping a frame it does not own | `-EBUSY` or `-EINVAL` |
//! | pin an L2 with a superpage (PSE) entry | `-EINVAL` |
//! | `update_va_mapping` of a hypervisor address | `-EINVAL` |
//! | hypercall buffers in hypervisor memory, or a result written into its own read-only page table | `-EFAULT` |
//! | well-formed requests in its own memory naming hostile machine addresses and frames (random 64-bit values, non-canonical direct-map addresses, MMIO, the hypervisor image, beyond RAM) in `mmu_update` (every command), `mmuext_op` (every frame command), `update_va_mapping`, `update_descriptor`, grant `map`/`unmap` by PTE address and `decrease_reservation` | an errno every time (the hypervisor once read the old entry of an `mmu_update` target before checking it: a #GP that stopped the machine) |
//! | `set_gdt` with a TSS descriptor, or too many entries | `-EINVAL` (`-ENOSYS` where `set_gdt` is not implemented yet, reported as such) |
//! | read, execute, write hypervisor memory (image, direct map, the read-only M2P) | a #PF bounced to the kernel's handler with that address in `vcpu_info.arch.cr2` |
//!
//! Then a few hundred hypercalls with numbers 0..64 and arguments from a fixed-seed PRNG
//! (excluding what would legitimately stop or wedge the kernel: `set_trap_table`,
//! `set_callbacks`, `iret`, `sched_op` and its compat form, `vcpu_op` down/NMI on itself,
//! console writes), each of which must return; afterwards the kernel checks it still works.
#![cfg_attr(target_os = "none", no_std, no_main)]

use ferrovisor_abi::{
    errno::XenErrno,
    xen::{
        version::XenVersionOp,
        xen::{MmuUpdate, MmuextCmd, MmuextOp, StartInfo, DOMID_SELF, UVMF_INVLPG},
    },
};
use pvrt::{
    region::{self, ScratchPage, PTE_RO, PTE_RW},
    traps::{self, pfec, vector, Fault},
};

pvrt::test_kernel!(name: "attack", main: test_main);

/// The hypervisor image: machine 0x200000, virtual 0xffff820000200000 (README, "Virtual
/// layout").
const HV_IMAGE_MFN: u64 = 0x200;
const HV_IMAGE_VA: u64 = 0xffff_8200_0020_0000;
/// The hypervisor's direct map of RAM.
const HV_DIRECT_MAP: u64 = 0xffff_8300_0000_0000;
/// The read-only machine-to-phys table every PV guest sees.
const M2P: u64 = 0xffff_8000_0000_0000;
/// A frame far beyond the test machine's RAM and devices (512 GiB).
const BEYOND_RAM_MFN: u64 = 0x800_0000;
/// Hypercall numbers.
const HC_SET_TRAP_TABLE: u64 = 0;
const HC_SET_GDT: u64 = 2;
const HC_SET_CALLBACKS: u64 = 4;
const HC_SCHED_OP_COMPAT: u64 = 6;
const HC_CONSOLE_IO: u64 = 18;
const HC_IRET: u64 = 23;
const HC_VCPU_OP: u64 = 24;
const HC_SCHED_OP: u64 = 29;
const HC_FPU_TASKSWITCH: u64 = 5;
const HC_SET_DEBUGREG: u64 = 8;
const HC_UPDATE_DESCRIPTOR: u64 = 10;
/// Random hypercalls to make.
const RANDOM_CALLS: u32 = 400;
/// Random machine addresses per PV MMU request kind in `hostile_machine_addresses`.
const RANDOM_MADDRS: u32 = 200;
const HC_GRANT_TABLE_OP: u64 = 20;
/// `FIRST_RESERVED_GDT_ENTRY`: the guest's GDT may not reach the hypervisor's entries.
const FIRST_RESERVED_GDT_ENTRY: u64 = 14 * 512;

fn errno_name(ret: i64) -> &'static str {
    use XenErrno::*;
    for e in [
        Eperm, Enoent, Esrch, Efault, Ebusy, Eexist, Einval, Enosys, Enomem, Eacces, Erange,
        Eagain, E2big, Eopnotsupp, Enodev, Enxio,
    ] {
        if e.to_hypercall_ret() == ret {
            return match e {
                Eperm => "EPERM",
                Enoent => "ENOENT",
                Esrch => "ESRCH",
                Efault => "EFAULT",
                Ebusy => "EBUSY",
                Eexist => "EEXIST",
                Einval => "EINVAL",
                Enosys => "ENOSYS",
                Enomem => "ENOMEM",
                Eacces => "EACCES",
                Erange => "ERANGE",
                Eagain => "EAGAIN",
                E2big => "E2BIG",
                Eopnotsupp => "EOPNOTSUPP",
                Enodev => "ENODEV",
                _ => "ENXIO",
            };
        }
    }
    if ret >= 0 {
        "success"
    } else {
        "other"
    }
}

/// Checks one refusal: `ret` must be one of `accept`.
fn refused(what: &str, ret: i64, accept: &[XenErrno]) {
    pvrt::println!(
        "pv-test attack: refused: {what}: {ret} ({})",
        errno_name(ret)
    );
    pvrt::ensure!(
        accept.iter().any(|e| e.to_hypercall_ret() == ret),
        "{what} returned {ret} ({}); expected one of {accept:?}",
        errno_name(ret)
    );
}

fn test_main(si: &StartInfo) -> Result<(), &'static str> {
    if let Err(ret) = pvrt::shared_info::map(si) {
        pvrt::fail!("update_va_mapping of shared_info returned {ret}");
    }
    if let Err(e) = traps::install() {
        pvrt::fail!("installing the trap table: {e}");
    }
    let victim = region::alloc_scratch(si).ok_or("out of scratch pages")?;
    let tables = pvrt::region::Tables::new(si);
    foreign_frames(&victim, &tables);
    own_page_tables(&victim, &tables);
    hypervisor_slots(&tables);
    bad_pins(si)?;
    hypervisor_addresses(si);
    bad_gdt(si)?;
    review_regressions(si, &tables)?;
    hostile_machine_addresses()?;
    random_hypercalls(si);
    still_alive(&victim)
}

/// Attacks a review found: unpinning the page-table root that is loaded, giving back the
/// shared-info page the hypervisor keeps writing, and pinning as a page table a frame
/// whose writable mapping was just dropped without a TLB flush (then writing through the
/// stale translation).
fn review_regressions(si: &StartInfo, tables: &pvrt::region::Tables) -> Result<(), &'static str> {
    let mmuext = |cmd: MmuextCmd, arg1: u64| {
        let op = [MmuextOp {
            cmd: cmd.raw(),
            _cpad0: 0,
            arg1,
            arg2: 0,
        }];
        // SAFETY: the hypervisor checks the frame named.
        unsafe { pvrt::mmuext_op(&op, None, DOMID_SELF) }
    };
    // Unpinning the live root: allowed (Xen allows it too), but the root stays a
    // validated table while it is loaded; the kernel must keep running.
    let rc = mmuext(MmuextCmd::UnpinTable, tables.l4_mfn);
    let version = pvrt::xen_version(XenVersionOp::Version);
    pvrt::ensure!(
        version > 0,
        "after unpinning the live L4, xen_version returned {}",
        version
    );
    pvrt::println!("pv-test attack: unpinned its live L4 ({rc}); still running");
    let rc = mmuext(MmuextCmd::PinL4Table, tables.l4_mfn);
    pvrt::ensure!(rc == 0, "re-pinning the L4 returned {}", rc);

    // The shared-info page cannot be given back.
    let rc = give_back(si.shared_info >> 12);
    if pvrt::on_ferrovisor() {
        pvrt::ensure!(
            rc == 0,
            "giving back the shared-info page returned {} (expected 0 done)",
            rc
        );
        pvrt::println!("pv-test attack: refused: giving back the shared-info page (0 done)");
    } else {
        pvrt::println!("pv-test attack: Xen's rule: shared-info give-back returned {rc}");
    }

    // Stale translation: write through V to X, drop V's mapping without a flush, pin X as
    // an L1, then write through V again: that write must fault.
    let x = region::alloc_scratch(si).ok_or("out of scratch pages")?;
    // SAFETY: the scratch page is mapped writable and used by nothing else.
    unsafe { core::ptr::write_volatile(x.words(), 0) };
    // SAFETY: unmapping our own scratch page, without a flush (UVMF_NONE).
    let rc = unsafe { pvrt::update_va_mapping(x.va, 0, 0) };
    pvrt::ensure!(rc == 0, "unmapping the scratch page returned {}", rc);
    let rc = mmuext(MmuextCmd::PinL1Table, x.mfn);
    pvrt::ensure!(rc == 0, "pinning the zeroed page as an L1 returned {}", rc);
    // SAFETY: must fault: the page is unmapped and now a page table.
    let r = unsafe { traps::probe_write(x.va, 0x200 << 12 | 0x7) };
    pvrt::ensure!(
        r.is_err(),
        "a write through the stale translation of a pinned L1 went through"
    );
    let rc = mmuext(MmuextCmd::UnpinTable, x.mfn);
    pvrt::ensure!(rc == 0, "unpinning it returned {}", rc);
    pvrt::println!(
        "pv-test attack: refused: writing a freshly pinned L1 through a stale translation (#PF)"
    );
    Ok(())
}

/// `decrease_reservation` of one frame: how many extents went back (0 or 1), or an errno.
fn give_back(mfn: u64) -> i64 {
    let mut frames = [mfn];
    let mut r = ferrovisor_abi::xen::memory::XenMemoryReservation {
        extent_start: ferrovisor_abi::xen::GuestHandle(frames.as_mut_ptr() as u64),
        nr_extents: 1,
        extent_order: 0,
        mem_flags: 0,
        domid: DOMID_SELF,
        _cpad0: [0; 6],
    };
    // SAFETY: the hypervisor reads `r` and `frames`, both in this kernel's memory.
    unsafe {
        pvrt::memory_op(
            ferrovisor_abi::xen::memory::MemoryOp::DecreaseReservation,
            (&raw mut r).cast(),
        )
    }
}

/// Machine addresses a hostile guest hands to the PV MMU: the one from the crash report
/// (a direct-map address far beyond RAM, non-canonical once translated), MMIO, the
/// hypervisor image, frame 0, beyond RAM, the top of the address space.
fn hostile_maddr(rng: &mut Rng, i: u32) -> u64 {
    const FIXED: [u64; 9] = [
        0xf7b3_d8a0_e2c8_d000,
        0xf7b4_55a0_e2c8_d000,
        0xfee0_0000,
        0xfec0_0000,
        HV_IMAGE_MFN * region::PAGE_SIZE,
        0,
        BEYOND_RAM_MFN * region::PAGE_SIZE,
        0xffff_ffff_ffff_f000,
        0x000f_ffff_ffff_f000,
    ];
    match FIXED.get(i as usize) {
        Some(&a) => a,
        // A random address, always far above this machine's RAM (bit 40 set).
        None => (rng.next() | 1 << 40) & !7,
    }
}

/// Well-formed requests in the kernel's own memory whose machine addresses and frames are
/// hostile: every one must be refused with an errno (never success, never a hypervisor
/// fault). The regression test of the `mmu_update` crash (the old entry was read at the
/// guest's address before the frame table had checked it).
fn hostile_machine_addresses() -> Result<(), &'static str> {
    let mut rng = Rng(0x0bad_add7_e55e_5eed);
    let mut refusals = 0u32;
    let mut check = |what: &str, ret: i64| -> Result<(), &'static str> {
        if ret >= 0 {
            pvrt::println!("pv-test attack: {what} succeeded ({ret})");
            pvrt::fail!("a request with a hostile machine address succeeded");
        }
        refusals += 1;
        Ok(())
    };
    for i in 0..RANDOM_MADDRS {
        let maddr = hostile_maddr(&mut rng, i);
        // mmu_update: a normal update, the M2P update and the A/D-preserving update.
        for cmd in 0..3u64 {
            let req = [MmuUpdate {
                ptr: maddr | cmd,
                val: rng.next(),
            }];
            let mut done = 0u32;
            // SAFETY: the request is in this kernel's memory; the target is hostile.
            let ret = unsafe { pvrt::mmu_update(&req, Some(&mut done), DOMID_SELF) };
            check("mmu_update of a hostile machine address", ret)?;
            pvrt::ensure!(done == 0, "a refused mmu_update counted {} done", done);
        }
        // Every mmuext command that names a frame.
        for cmd in [
            MmuextCmd::PinL1Table,
            MmuextCmd::PinL2Table,
            MmuextCmd::PinL3Table,
            MmuextCmd::PinL4Table,
            MmuextCmd::UnpinTable,
            MmuextCmd::NewBaseptr,
            MmuextCmd::ClearPage,
            MmuextCmd::CopyPage,
        ] {
            let op = [MmuextOp {
                cmd: cmd.raw(),
                _cpad0: 0,
                arg1: maddr >> 12,
                // CopyPage's source frame: hostile too.
                arg2: hostile_maddr(&mut rng, RANDOM_MADDRS) >> 12,
            }];
            // SAFETY: the op is in this kernel's memory; the frames are hostile.
            let ret = unsafe { pvrt::mmuext_op(&op, None, DOMID_SELF) };
            check("mmuext_op on a hostile frame", ret)?;
        }
        if maddr != 0 {
            let op = [MmuextOp {
                cmd: MmuextCmd::NewUserBaseptr.raw(),
                _cpad0: 0,
                arg1: maddr >> 12,
                arg2: 0,
            }];
            // SAFETY: as above.
            let ret = unsafe { pvrt::mmuext_op(&op, None, DOMID_SELF) };
            check("new user base pointer on a hostile frame", ret)?;
        }
        // update_descriptor into a hostile machine address, with a harmless descriptor.
        // SAFETY: the hypervisor checks the frame.
        let ret = unsafe { pvrt::hypercall2(HC_UPDATE_DESCRIPTOR, maddr & !7, 0) };
        check("update_descriptor at a hostile machine address", ret)?;
        // update_va_mapping of an address in the hypervisor's range or non-canonical, with
        // a PTE naming a hostile frame.
        let va = HOSTILE[(rng.next() % HOSTILE.len() as u64) as usize] & !0xfff;
        // SAFETY: refused: not the kernel's address space.
        let ret = unsafe { pvrt::update_va_mapping(va, maddr | PTE_RW, UVMF_INVLPG) };
        check("update_va_mapping of a hostile address", ret)?;
        // Giving back a hostile frame.
        let ret = give_back(maddr >> 12);
        // Returns how many extents it gave back: none.
        pvrt::ensure!(
            ret <= 0,
            "decrease_reservation of a hostile frame returned {}",
            ret
        );
        // Grant operations: map at a hostile PTE address (host map with
        // GNTMAP_contains_pte), unmap of it, and setup_table. Each answers in its own
        // status field.
        use ferrovisor_abi::xen::grant_table::{
            GnttabMapGrantRef, GnttabUnmapGrantRef, GNTMAP_CONTAINS_PTE, GNTMAP_HOST_MAP,
        };
        let mut map = GnttabMapGrantRef {
            host_addr: maddr,
            flags: GNTMAP_HOST_MAP | GNTMAP_CONTAINS_PTE,
            r#ref: (rng.next() % 64) as u32,
            dom: DOMID_SELF,
            status: 0,
            handle: 0,
            dev_bus_addr: 0,
        };
        // SAFETY: the op is in this kernel's memory; the PTE address is hostile.
        let ret = unsafe { pvrt::hypercall3(HC_GRANT_TABLE_OP, 0, (&raw mut map) as u64, 1) };
        check(
            "grant map at a hostile PTE address",
            if ret < 0 { ret } else { i64::from(map.status) },
        )?;
        let mut unmap = GnttabUnmapGrantRef {
            host_addr: maddr,
            dev_bus_addr: 0,
            handle: (rng.next() % 4) as u32,
            status: 0,
            _cpad0: 0,
        };
        // SAFETY: as above.
        let ret = unsafe { pvrt::hypercall3(HC_GRANT_TABLE_OP, 1, (&raw mut unmap) as u64, 1) };
        check(
            "grant unmap at a hostile PTE address",
            if ret < 0 {
                ret
            } else {
                i64::from(unmap.status)
            },
        )?;
    }
    pvrt::println!(
        "pv-test attack: refused: {refusals} PV MMU, descriptor, grant and memory requests naming hostile machine addresses"
    );
    Ok(())
}

/// Mapping frames the domain does not own, through both `update_va_mapping` and
/// `mmu_update` on the L1 entry.
fn foreign_frames(victim: &ScratchPage, tables: &pvrt::region::Tables) {
    let l1e = tables.l1e_maddr(victim.va);
    // Hypervisor switch: Xen 4.17 gives dom0 I/O memory access (the low 1 MiB, and frames
    // beyond RAM), so there it maps frame 0 and the frame beyond RAM; Ferrovisor does not
    // hand dom0 I/O memory yet and refuses both. On Xen those two cases are skipped.
    let ferrovisor = pvrt::on_ferrovisor();
    let cases: [(&str, u64, &[XenErrno]); 3] = [
        (
            "the hypervisor image (machine 0x200000)",
            HV_IMAGE_MFN,
            &[XenErrno::Ebusy],
        ),
        ("machine frame 0", 0, &[XenErrno::Ebusy, XenErrno::Eperm]),
        ("a frame beyond RAM", BEYOND_RAM_MFN, &[XenErrno::Eperm]),
    ];
    for (what, mfn, accept) in cases {
        if !ferrovisor && mfn != HV_IMAGE_MFN {
            pvrt::println!(
                "pv-test attack: Xen's rule: mapping {what} is dom0's I/O memory access, skipped"
            );
            continue;
        }
        for (mode, flags) in [("read-only", PTE_RO), ("writable", PTE_RW)] {
            let pte = (mfn * region::PAGE_SIZE) | flags;
            // SAFETY: the victim scratch page is used for nothing else; a (wrongly)
            // accepted mapping only changes what that page shows.
            let ret = unsafe { pvrt::update_va_mapping(victim.va, pte, UVMF_INVLPG) };
            refused(
                &alloc_free_fmt(format_args!("update_va_mapping of {what} {mode}")),
                ret,
                accept,
            );
            if let Some(l1e) = l1e {
                let req = [MmuUpdate { ptr: l1e, val: pte }];
                // SAFETY: as above, the same L1 entry.
                let ret = unsafe { pvrt::mmu_update(&req, None, DOMID_SELF) };
                refused(
                    &alloc_free_fmt(format_args!("mmu_update mapping {what} {mode}")),
                    ret,
                    accept,
                );
            }
        }
    }
}

/// A small formatting buffer: the kernels have no allocator.
struct Line {
    buf: [u8; 120],
    len: usize,
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl core::ops::Deref for Line {
    type Target = str;
    fn deref(&self) -> &str {
        pvrt::c_str(&self.buf[..self.len]).unwrap_or("?")
    }
}

fn alloc_free_fmt(args: core::fmt::Arguments<'_>) -> Line {
    let mut l = Line {
        buf: [0; 120],
        len: 0,
    };
    let _ = core::fmt::Write::write_fmt(&mut l, args);
    l
}

/// Its own page-table frames mapped writable.
fn own_page_tables(victim: &ScratchPage, tables: &pvrt::region::Tables) {
    let l1_of_victim = tables
        .l1e_maddr(victim.va)
        .map(|a| a / region::PAGE_SIZE)
        .unwrap_or(tables.last_mfn());
    for (what, mfn) in [("its L4", tables.l4_mfn), ("an L1", l1_of_victim)] {
        // SAFETY: as in `foreign_frames`.
        let ret = unsafe {
            pvrt::update_va_mapping(victim.va, (mfn * region::PAGE_SIZE) | PTE_RW, UVMF_INVLPG)
        };
        refused(
            &alloc_free_fmt(format_args!("writable mapping of {what} (mfn {mfn:#x})")),
            ret,
            &[XenErrno::Ebusy],
        );
    }
}

/// L4 entries in the hypervisor's slots 256..=271.
fn hypervisor_slots(tables: &pvrt::region::Tables) {
    let own_l3 = pvrt::region::Tables::entry(tables.l4_va, 511);
    for (slot, val) in [(256u64, own_l3), (260, own_l3), (271, own_l3), (260, 0)] {
        let req = [MmuUpdate {
            ptr: tables.l4_mfn * region::PAGE_SIZE + slot * 8,
            val,
        }];
        // SAFETY: must be refused; were it accepted the hypervisor would be unmapped or
        // aliased in this address space, which is what the test is about.
        let ret = unsafe { pvrt::mmu_update(&req, None, DOMID_SELF) };
        refused(
            &alloc_free_fmt(format_args!("mmu_update of L4 slot {slot} to {val:#x}")),
            ret,
            &[XenErrno::Einval],
        );
    }
}

/// Pinning tables with bad entries.
fn bad_pins(si: &StartInfo) -> Result<(), &'static str> {
    let own = region::alloc_scratch(si).ok_or("out of scratch pages")?;
    let cases: [(&str, MmuextCmd, u64, &[XenErrno]); 2] = [
        (
            "an L1 mapping the hypervisor image",
            MmuextCmd::PinL1Table,
            (HV_IMAGE_MFN * region::PAGE_SIZE) | PTE_RO,
            &[XenErrno::Ebusy, XenErrno::Einval],
        ),
        (
            "an L2 with a superpage entry",
            MmuextCmd::PinL2Table,
            own.maddr() | PTE_RO | (1 << 7),
            &[XenErrno::Einval],
        ),
    ];
    for (what, cmd, entry, accept) in cases {
        let page = region::alloc_scratch(si).ok_or("out of scratch pages")?;
        // SAFETY: a scratch page of this kernel, still mapped writable.
        unsafe { page.words().write_volatile(entry) };
        // SAFETY: the page stays mapped, read-only, as a page table candidate must be.
        let ret = unsafe { pvrt::update_va_mapping(page.va, page.maddr() | PTE_RO, UVMF_INVLPG) };
        pvrt::ensure!(
            ret == 0,
            "remapping a scratch page read-only returned {ret}"
        );
        let op = [MmuextOp {
            cmd: cmd.raw(),
            _cpad0: 0,
            arg1: page.mfn,
            arg2: 0,
        }];
        // SAFETY: must be refused; were it accepted, the page would be a pinned table
        // nothing uses.
        let ret = unsafe { pvrt::mmuext_op(&op, None, DOMID_SELF) };
        refused(&alloc_free_fmt(format_args!("pin of {what}")), ret, accept);
    }
    Ok(())
}

/// Reaching hypervisor memory: mapping, reading, executing and writing it, and handing
/// its addresses to hypercalls.
fn hypervisor_addresses(si: &StartInfo) {
    for va in [HV_IMAGE_VA, M2P, HV_DIRECT_MAP] {
        let pte = (region::mfn_of(si, pvrt::start_info_va()) * region::PAGE_SIZE) | PTE_RO;
        // SAFETY: must be refused: the hypervisor's range is never the guest's.
        let ret = unsafe { pvrt::update_va_mapping(va, pte, UVMF_INVLPG) };
        refused(
            &alloc_free_fmt(format_args!(
                "update_va_mapping at hypervisor address {va:#x}"
            )),
            ret,
            &[XenErrno::Einval],
        );
    }

    for va in [HV_IMAGE_VA, HV_DIRECT_MAP] {
        let r = traps::probe_read(va);
        page_fault("read", va, r.map(|_| ()), 0, pfec::WRITE | pfec::INSN_FETCH);
    }
    // SAFETY: must fault: hypervisor text is not the guest's to run.
    let r = unsafe { traps::probe_call(HV_IMAGE_VA) };
    if let Err(f) = r {
        pvrt::ensure!(
            f.rip == HV_IMAGE_VA,
            "the fetch fault's rip is {:#x}, expected {HV_IMAGE_VA:#x}",
            f.rip
        );
    }
    page_fault("call", HV_IMAGE_VA, r, pfec::INSN_FETCH, pfec::WRITE);

    // The M2P is readable (Linux reads it) but never writable.
    let own_mfn = region::mfn_of(si, pvrt::start_info_va());
    let own_pfn = (pvrt::start_info_va() - pvrt::contract::VIRT_BASE) / region::PAGE_SIZE;
    match traps::probe_read(M2P + own_mfn * 8) {
        Ok(pfn) => pvrt::println!(
            "pv-test attack: M2P[{own_mfn:#x}] = {pfn:#x} (start_info's pfn {own_pfn:#x})"
        ),
        Err(f) => pvrt::println!("pv-test attack: the M2P is not readable: {f}"),
    }
    // SAFETY: must fault: the M2P is mapped read-only (if at all).
    let r = unsafe { traps::probe_write(M2P + own_mfn * 8, 0x5a5a) };
    page_fault("write", M2P + own_mfn * 8, r, pfec::WRITE, pfec::INSN_FETCH);

    // Hypercall buffers in hypervisor memory and in its own read-only page table.
    let hostile_console = [HV_IMAGE_VA, HV_DIRECT_MAP, M2P];
    for buf in hostile_console {
        // SAFETY: the hypervisor must refuse to read a buffer in its own range.
        let ret = unsafe { pvrt::hypercall3(HC_CONSOLE_IO, 0, 64, buf) };
        refused(
            &alloc_free_fmt(format_args!("console_io write from {buf:#x}")),
            ret,
            &[XenErrno::Efault],
        );
    }
    for buf in [HV_IMAGE_VA + 0x10_0000, HV_DIRECT_MAP + 0x1000, M2P] {
        // SAFETY: the hypervisor must refuse to write a buffer in its own range.
        let ret = unsafe {
            pvrt::xen_version_with(XenVersionOp::Extraversion, buf as *mut core::ffi::c_void)
        };
        refused(
            &alloc_free_fmt(format_args!(
                "xen_version(XENVER_extraversion) into {buf:#x}"
            )),
            ret,
            &[XenErrno::Efault],
        );
    }
    let empty: [MmuUpdate; 0] = [];
    for done in [HV_IMAGE_VA + 0x10_0000, si.pt_base] {
        // SAFETY: no requests; only the 4-byte count is written, which must be refused
        // in hypervisor memory and in a read-only page table.
        let ret =
            unsafe { pvrt::hypercall4(1, empty.as_ptr() as u64, 0, done, u64::from(DOMID_SELF)) };
        // Hypervisor switch: Xen 4.17's `do_mmu_update` ignores the result of copying the
        // count out, so it returns 0 having written nothing; Ferrovisor reports -EFAULT.
        if ret == 0 && !pvrt::on_ferrovisor() {
            pvrt::println!(
                "pv-test attack: Xen's rule: mmu_update writing its count to {done:#x}: 0 \
                 (the failed copy is not reported)"
            );
            continue;
        }
        refused(
            &alloc_free_fmt(format_args!("mmu_update writing its count to {done:#x}")),
            ret,
            &[XenErrno::Efault],
        );
    }
    // SAFETY: the request array itself in hypervisor memory: must be refused.
    let ret = unsafe { pvrt::hypercall4(1, HV_IMAGE_VA, 1, 0, u64::from(DOMID_SELF)) };
    refused(
        "mmu_update with its requests in hypervisor memory",
        ret,
        &[XenErrno::Efault],
    );
}

/// Checks that a probe at `va` faulted with a #PF for `va`, the error code having every
/// bit of `must` and none of `must_not`.
fn page_fault(what: &str, va: u64, r: Result<(), Fault>, must: u64, must_not: u64) {
    match r {
        Ok(()) => pvrt::fail!("{what} of hypervisor address {va:#x} did not fault"),
        Err(f) => {
            pvrt::println!("pv-test attack: refused: {what} of {va:#x}: #PF bounced ({f})");
            pvrt::ensure!(
                f.vector == vector::PF,
                "{what} of {va:#x}: vector {}, expected #PF",
                f.vector
            );
            pvrt::ensure!(
                f.cr2 == Some(va),
                "{what} of {va:#x}: vcpu_info.arch.cr2 is {:?}",
                f.cr2
            );
            pvrt::ensure!(
                f.error_code & must == must && f.error_code & must_not == 0,
                "{what} of {va:#x}: error code {:#x}, expected bits {must:#x} set and {must_not:#x} clear",
                f.error_code
            );
        }
    }
}

/// `set_gdt` with a system descriptor and with too many entries.
fn bad_gdt(si: &StartInfo) -> Result<(), &'static str> {
    let page = region::alloc_scratch(si).ok_or("out of scratch pages")?;
    // Entry 1: a present 64-bit TSS descriptor (type 9), which a guest may never load.
    // SAFETY: a scratch page of this kernel, still mapped writable.
    unsafe {
        page.words().add(2).write_volatile(0x0000_8900_0000_0067);
        page.words().add(3).write_volatile(0);
    }
    // SAFETY: the page stays mapped read-only, as a GDT frame must be.
    let ret = unsafe { pvrt::update_va_mapping(page.va, page.maddr() | PTE_RO, UVMF_INVLPG) };
    pvrt::ensure!(
        ret == 0,
        "remapping the GDT candidate read-only returned {ret}"
    );
    let frames = [page.mfn];
    for (what, entries) in [
        ("a TSS descriptor", 4u64),
        (
            "more entries than the guest may have",
            FIRST_RESERVED_GDT_ENTRY + 1,
        ),
    ] {
        // SAFETY: must be refused; were it accepted, the GDT holds nothing this kernel
        // loads.
        let ret = unsafe { pvrt::hypercall2(HC_SET_GDT, frames.as_ptr() as u64, entries) };
        if ret == XenErrno::Enosys.to_hypercall_ret() {
            pvrt::println!(
                "pv-test attack: refused: set_gdt with {what}: -38 (ENOSYS: not implemented)"
            );
            continue;
        }
        refused(
            &alloc_free_fmt(format_args!("set_gdt with {what}")),
            ret,
            &[XenErrno::Einval],
        );
    }
    Ok(())
}

/// xorshift64*: a fixed seed gives the same calls every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Addresses worth handing to the hypervisor: its own ranges, the edges of the canonical
/// halves, and the non-canonical middle.
const HOSTILE: [u64; 10] = [
    HV_IMAGE_VA,
    HV_DIRECT_MAP,
    M2P,
    0xffff_8280_0000_0000,
    0xffff_87ff_ffff_fff8,
    0x0000_7fff_ffff_fff8,
    0x0000_8000_0000_0000,
    0xffff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    0xffff_ffff_ffff_f000,
];

fn random_arg(rng: &mut Rng) -> u64 {
    match rng.next() % 6 {
        0 => rng.next(),
        1 => rng.next() % 16,
        2 => HOSTILE[(rng.next() % HOSTILE.len() as u64) as usize],
        3 => rng.next() & 0xffff_ffff,
        4 => 0,
        _ => rng.next() | 0xffff_8000_0000_0000,
    }
}

fn random_hypercalls(si: &StartInfo) {
    // The domain's own frames, kept away from `update_descriptor`'s machine address.
    let (lo, hi) = (0..si.nr_pages.min(1 << 20)).fold((u64::MAX, 0), |(lo, hi), pfn| {
        // SAFETY: the p2m list has nr_pages entries.
        let mfn =
            unsafe { core::ptr::read_volatile((si.mfn_list as *const u64).add(pfn as usize)) };
        (lo.min(mfn), hi.max(mfn))
    });
    let mut rng = Rng(0x5eed_f00d_dead_beef);
    let (mut ok, mut enosys, mut efault, mut einval, mut eperm, mut other) = (0, 0, 0, 0, 0, 0);
    let mut skipped = 0;
    for i in 0..RANDOM_CALLS {
        let nr = rng.next() % 64;
        let mut a = [0u64; 5];
        for x in a.iter_mut() {
            *x = random_arg(&mut rng);
        }
        match nr {
            HC_SET_TRAP_TABLE | HC_SET_CALLBACKS | HC_SCHED_OP_COMPAT | HC_IRET | HC_SCHED_OP => {
                skipped += 1;
                continue;
            }
            // Never a console write: it could copy this kernel's own text to the log.
            HC_CONSOLE_IO if a[0] as u32 == 0 => a[0] = 1,
            // Never take its only vCPU down or send it an NMI it has no handler for.
            HC_VCPU_OP if a[1] as u32 == 0 && matches!(a[0] as u32, 2 | 11) => a[1] = 1,
            HC_UPDATE_DESCRIPTOR if (lo..=hi).contains(&(a[0] >> 12)) => {
                a[0] = HV_IMAGE_MFN * region::PAGE_SIZE
            }
            _ => {}
        }
        // SAFETY: the arguments are hostile on purpose; the exclusions above keep the
        // calls from legitimately stopping this kernel or overwriting its own memory
        // (every pointer is into unmapped or hypervisor memory, or small).
        let ret = unsafe { pvrt::hypercall5(nr, a[0], a[1], a[2], a[3], a[4]) };
        match errno_name(ret) {
            "success" => {
                ok += 1;
                pvrt::println!(
                    "pv-test attack: random call {i}: hypercall {nr}({:#x}, {:#x}, {:#x}, {:#x}, {:#x}) = {ret}",
                    a[0], a[1], a[2], a[3], a[4]
                );
            }
            "ENOSYS" => enosys += 1,
            "EFAULT" => efault += 1,
            "EINVAL" => einval += 1,
            "EPERM" => eperm += 1,
            _ => other += 1,
        }
    }
    // Undo what the random calls may have set: CR0.TS and DR7.
    // SAFETY: clearing TS and the breakpoint enables is what the kernel runs with.
    unsafe {
        let _ = pvrt::hypercall1(HC_FPU_TASKSWITCH, 0);
        let _ = pvrt::hypercall2(HC_SET_DEBUGREG, 7, 0);
    }
    pvrt::println!(
        "pv-test attack: {} random hypercalls returned: {ok} succeeded, {enosys} ENOSYS, {efault} EFAULT, \
         {einval} EINVAL, {eperm} EPERM, {other} other; {skipped} skipped",
        RANDOM_CALLS - skipped
    );
}

/// After all that: hypercalls, the trap table and its own memory still work.
fn still_alive(victim: &ScratchPage) -> Result<(), &'static str> {
    let version = pvrt::xen_version(XenVersionOp::Version);
    pvrt::ensure!(
        version >> 16 == 4,
        "xen_version after the attack returned {version:#x}"
    );
    let r = traps::probe_read(0x1000);
    pvrt::ensure!(
        matches!(r, Err(Fault { vector: 14, .. })),
        "a read of an unmapped page after the attack did not bounce a #PF: {r:?}"
    );
    // SAFETY: the victim page back as itself, writable.
    let ret = unsafe { pvrt::update_va_mapping(victim.va, victim.maddr() | PTE_RW, UVMF_INVLPG) };
    pvrt::ensure!(ret == 0, "remapping the victim page returned {ret}");
    // SAFETY: the victim page, mapped writable again.
    unsafe { core::ptr::write_volatile(victim.va as *mut u64, 0x600d) };
    pvrt::println!(
        "pv-test attack: still running: xen_version {version:#x}, traps and mappings work"
    );
    Ok(())
}
