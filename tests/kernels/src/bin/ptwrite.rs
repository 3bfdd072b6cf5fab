//! `ptwrite`: the writable-page-tables assist (`VMASST_TYPE_writable_pagetables`, which
//! Linux requires, and which PV domains get by default, as under Xen). The kernel writes a
//! page-table entry of its live bootstrap tables with ordinary instructions (`mov`,
//! `xchg`) although the tables are mapped read-only for it; the hypervisor emulates each
//! write after validating the new entry as `mmu_update` would. Checked: with the assist
//! disabled the write faults (Ferrovisor; Xen 4.17 emulates regardless, and the kernel
//! says so); with it, a `mov` remaps a page and an `xchg` restores it returning the old
//! entry; an entry that would map the L4 writable is refused (the write faults and the
//! entry is unchanged).
#![cfg_attr(target_os = "none", no_std, no_main)]

use ferrovisor_abi::xen::xen::{
    MmuextCmd, MmuextOp, StartInfo, VmAssistCmd, VmAssistType, DOMID_SELF,
};
use pvrt::{
    region::{self, PTE_RW},
    traps::{self, pfec},
};

pvrt::test_kernel!(name: "ptwrite", main: test_main);

const VIRT_BASE: u64 = 0xffff_ffff_8000_0000;
/// The read-only machine-to-phys table (`MACH2PHYS_VIRT_START`).
const M2P: u64 = 0xffff_8000_0000_0000;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The virtual address, in the bootstrap region, of the L1 entry that maps `va`: walk the
/// tables from `pt_base`, turning each table's machine frame into its pseudo-physical
/// frame with the M2P, and that into its address in the 1:1 bootstrap mapping.
fn l1_entry_va(si: &StartInfo, va: u64) -> Result<u64, &'static str> {
    let mut table = si.pt_base;
    for shift in [39u32, 30, 21] {
        let slot = table + ((va >> shift) & 0x1ff) * 8;
        // SAFETY: `table` is one of the bootstrap page tables, mapped read-only in the
        // bootstrap region.
        let entry = unsafe { core::ptr::read_volatile(slot as *const u64) };
        if entry & 1 == 0 {
            return Err("a bootstrap table entry on the way is not present");
        }
        let mfn = (entry & ADDR_MASK) >> 12;
        // SAFETY: the M2P is mapped read-only for guests at its fixed address.
        let pfn = unsafe { core::ptr::read_volatile((M2P + mfn * 8) as *const u64) };
        table = VIRT_BASE + pfn * 4096;
    }
    Ok(table + ((va >> 12) & 0x1ff) * 8)
}

/// `MMUEXT_INVLPG_LOCAL`: drops this CPU's translation of `va`.
fn invlpg(va: u64) -> Result<(), &'static str> {
    let op = [MmuextOp {
        cmd: MmuextCmd::InvlpgLocal.raw(),
        _cpad0: 0,
        arg1: va,
        arg2: 0,
    }];
    // SAFETY: a TLB flush of one address; no memory is named.
    let rc = unsafe { pvrt::mmuext_op(&op, None, DOMID_SELF) };
    if rc == 0 {
        Ok(())
    } else {
        Err("MMUEXT_INVLPG_LOCAL failed")
    }
}

fn read(addr: u64) -> u64 {
    // SAFETY: the callers pass addresses mapped readable in the bootstrap region.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

fn test_main(si: &StartInfo) -> Result<(), &'static str> {
    traps::install().map_err(|_| "installing the trap table failed")?;
    let a = region::alloc_scratch(si).ok_or("no scratch page")?;
    let b = region::alloc_scratch(si).ok_or("no scratch page")?;
    // SAFETY: both scratch pages are mapped writable and used by nothing else.
    unsafe {
        core::ptr::write_volatile(a.words(), 0xaaaa_aaaa);
        core::ptr::write_volatile(b.words(), 0xbbbb_bbbb);
    }
    let pte = l1_entry_va(si, a.va)?;
    let original = read(pte);
    pvrt::ensure!(
        (original & ADDR_MASK) >> 12 == a.mfn,
        "the L1 entry found for page A maps {:#x}, not A's frame {:#x}",
        original,
        a.mfn
    );
    let to_b = b.maddr() | PTE_RW;

    // With the assist disabled, a direct write to a page table faults back to the guest.
    let rc = pvrt::vm_assist(VmAssistCmd::Disable, VmAssistType::WritablePagetables);
    pvrt::ensure!(
        rc == 0,
        "vm_assist(disable, writable_pagetables) returned {}",
        rc
    );
    if pvrt::on_ferrovisor() {
        // SAFETY: the entry is in a read-only mapping of a page table: the write must fault.
        match unsafe { traps::probe_write(pte, to_b) } {
            Err(f) if f.vector == 14 && f.error_code & pfec::WRITE != 0 => {
                pvrt::println!(
                    "pv-test ptwrite: without the assist the write faults (error code {:#x})",
                    f.error_code
                );
            }
            Err(f) => pvrt::fail!("without the assist: unexpected fault {}", f),
            Ok(()) => pvrt::fail!("without the assist a page-table write went through"),
        }
        pvrt::ensure!(
            read(pte) == original,
            "the entry changed although the write faulted"
        );
    } else {
        pvrt::println!(
            "pv-test ptwrite: Xen's rule: page-table writes are emulated whatever vm_assist says"
        );
    }

    let rc = pvrt::vm_assist(VmAssistCmd::Enable, VmAssistType::WritablePagetables);
    pvrt::ensure!(
        rc == 0,
        "vm_assist(enable, writable_pagetables) returned {}",
        rc
    );

    // A plain `mov` remaps page A onto page B's frame.
    // SAFETY: with the assist on, the faulting write is emulated (or bounced as #PF).
    unsafe { traps::probe_write(pte, to_b) }
        .map_err(|_| "the mov to the entry was not emulated")?;
    // As on hardware, the guest flushes the stale translation itself after changing an
    // entry (Xen does not flush for it; Ferrovisor does, which is allowed).
    invlpg(a.va)?;
    // The hypervisor may adjust flag bits (Ferrovisor forces _PAGE_USER, as Xen does for
    // 64-bit PV): the frame is what must have changed.
    pvrt::ensure!(
        read(pte) & ADDR_MASK == b.maddr(),
        "the entry was not written: it is {:#x}",
        read(pte)
    );
    let seen = read(a.va);
    pvrt::ensure!(
        seen == 0xbbbb_bbbb,
        "after the mov, page A reads {:#x}, expected B's 0xbbbbbbbb",
        seen
    );
    pvrt::println!(
        "pv-test ptwrite: mov remapped the page (entry now {:#x})",
        read(pte)
    );

    // `xchg` puts the original entry back and returns the current one.
    let mut value = original;
    // SAFETY: as above; `xchg` with memory is emulated and returns the old entry.
    unsafe {
        core::arch::asm!("xchg [{p}], {v}", p = in(reg) pte, v = inout(reg) value, options(nostack));
    }
    invlpg(a.va)?;
    pvrt::ensure!(
        (value & ADDR_MASK) == b.maddr(),
        "xchg returned {:#x}, expected B's entry",
        value
    );
    let seen = read(a.va);
    pvrt::ensure!(
        seen == 0xaaaa_aaaa,
        "after the xchg, page A reads {:#x}, expected 0xaaaaaaaa",
        seen
    );
    pvrt::println!(
        "pv-test ptwrite: xchg restored the page and returned {:#x}",
        value
    );

    // An entry mapping the live L4 writable is refused: the write faults, nothing changes.
    let l4_mfn = region::mfn_of(si, si.pt_base);
    let bad = (l4_mfn << 12) | PTE_RW;
    // SAFETY: the write must be refused and bounced as a page fault.
    match unsafe { traps::probe_write(pte, bad) } {
        Err(f) if f.vector == 14 => {
            pvrt::println!(
                "pv-test ptwrite: a writable mapping of the L4 is refused (#PF, error code {:#x})",
                f.error_code
            );
        }
        Err(f) => pvrt::fail!("mapping the L4 writable: unexpected fault {}", f),
        Ok(()) => pvrt::fail!("a writable mapping of the L4 was accepted"),
    }
    pvrt::ensure!(
        (read(pte) & ADDR_MASK) >> 12 == a.mfn,
        "the refused write changed the entry"
    );
    Ok(())
}
