//! `privops`: privileged operations a PV kernel still performs and that the hypervisor
//! emulates or offers as `mmuext_op`s: `mov` from CR0/CR3/CR4 (the guest's view: CR3 is
//! its current page-table root), `mov` to CR0 (only TS may change; anything else is
//! #GP), `MMUEXT_CLEAR_PAGE` and `MMUEXT_COPY_PAGE` (what `XENFEAT_highmem_assist`
//! promises), and `MMUEXT_SET_LDT` with an empty LDT; a clear of its own page table is
//! refused.
#![cfg_attr(target_os = "none", no_std, no_main)]

use ferrovisor_abi::xen::xen::{MmuextCmd, MmuextOp, StartInfo, DOMID_SELF};
use pvrt::{region, traps};

pvrt::test_kernel!(name: "privops", main: test_main);

fn mmuext(cmd: MmuextCmd, arg1: u64, arg2: u64) -> i64 {
    let op = [MmuextOp {
        cmd: cmd.raw(),
        _cpad0: 0,
        arg1,
        arg2,
    }];
    // SAFETY: the hypervisor checks every frame named.
    unsafe { pvrt::mmuext_op(&op, None, DOMID_SELF) }
}

fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: `mov %cr0` from ring 3 faults (#GP) and is emulated.
    unsafe { core::arch::asm!("mov {}, cr0", out(reg) v, options(nostack)) };
    v
}

fn test_main(si: &StartInfo) -> Result<(), &'static str> {
    traps::install().map_err(|_| "installing the trap table failed")?;
    let cr3: u64;
    let cr4: u64;
    // SAFETY: as for `read_cr0`.
    unsafe {
        core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nostack));
        core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nostack));
    }
    let l4 = region::mfn_of(si, si.pt_base) << 12;
    pvrt::ensure!(
        cr3 == l4,
        "cr3 reads {:#x}, expected the L4 at {:#x}",
        cr3,
        l4
    );
    pvrt::ensure!(cr4 & (1 << 9) != 0, "cr4 {:#x} lacks OSFXSR", cr4);
    let cr0 = read_cr0();
    pvrt::ensure!(
        cr0 & 1 != 0 && cr0 & (1 << 31) != 0,
        "cr0 {:#x} lacks PE/PG",
        cr0
    );
    pvrt::println!("pv-test privops: cr0 {cr0:#x}, cr3 {cr3:#x} (its L4), cr4 {cr4:#x}");

    // CR0: TS on and off through `mov`; any other change is refused with #GP.
    let ts = 1u64 << 3;
    // SAFETY: emulated; only TS changes.
    unsafe { core::arch::asm!("mov cr0, {}", in(reg) cr0 | ts, options(nostack)) };
    pvrt::ensure!(read_cr0() & ts != 0, "TS did not stick");
    // SAFETY: as above.
    unsafe { core::arch::asm!("mov cr0, {}", in(reg) cr0 & !ts, options(nostack)) };
    pvrt::ensure!(read_cr0() & ts == 0, "TS did not clear");
    // SAFETY: clearing WP must be refused with a #GP, which the probe catches.
    match unsafe { traps::probe_mov_to_cr0(cr0 & !(1 << 16)) } {
        Err(f) if f.vector == 13 => {}
        Err(f) => pvrt::fail!("clearing CR0.WP: unexpected fault {}", f),
        Ok(()) => pvrt::fail!("clearing CR0.WP did not raise #GP"),
    }
    pvrt::ensure!(read_cr0() & (1 << 16) != 0, "CR0.WP was cleared");
    pvrt::println!("pv-test privops: CR0.TS toggled; clearing CR0.WP refused with #GP");

    // Page clear and copy.
    let a = region::alloc_scratch(si).ok_or("no scratch page")?;
    let b = region::alloc_scratch(si).ok_or("no scratch page")?;
    // SAFETY: scratch pages, mapped writable, used by nothing else.
    unsafe {
        for i in 0..512 {
            core::ptr::write_volatile(a.words().add(i), 0x1111_0000 + i as u64);
            core::ptr::write_volatile(b.words().add(i), 0xffff_ffff);
        }
    }
    let rc = mmuext(MmuextCmd::CopyPage, b.mfn, a.mfn);
    pvrt::ensure!(rc == 0, "MMUEXT_COPY_PAGE returned {}", rc);
    // SAFETY: as above.
    let copied = (0..512)
        .all(|i| unsafe { core::ptr::read_volatile(b.words().add(i)) } == 0x1111_0000 + i as u64);
    pvrt::ensure!(copied, "MMUEXT_COPY_PAGE did not copy the page");
    let rc = mmuext(MmuextCmd::ClearPage, a.mfn, 0);
    pvrt::ensure!(rc == 0, "MMUEXT_CLEAR_PAGE returned {}", rc);
    // SAFETY: as above.
    let cleared = (0..512).all(|i| unsafe { core::ptr::read_volatile(a.words().add(i)) } == 0);
    pvrt::ensure!(cleared, "MMUEXT_CLEAR_PAGE left data in the page");
    let rc = mmuext(MmuextCmd::ClearPage, l4 >> 12, 0);
    pvrt::ensure!(rc < 0, "MMUEXT_CLEAR_PAGE of its own L4 returned {}", rc);
    pvrt::println!("pv-test privops: copy and clear page work; clearing its L4 refused ({rc})");

    let rc = mmuext(MmuextCmd::SetLdt, 0, 0);
    pvrt::ensure!(rc == 0, "MMUEXT_SET_LDT with no entries returned {}", rc);
    pvrt::println!("pv-test privops: empty LDT set");
    Ok(())
}
