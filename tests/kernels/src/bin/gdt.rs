//! `gdt`: guest descriptor tables. The kernel builds a GDT page (null, a 64-bit code and a
//! data segment written with DPL 0 as Linux writes them), makes it read-only (a descriptor
//! page may not be mapped writable), loads it with `set_gdt`, loads a data selector from
//! it, rewrites an entry with `update_descriptor`, and checks the refusals: a TSS
//! descriptor in either call, and `set_gdt` while the page is still mapped writable.
#![cfg_attr(target_os = "none", no_std, no_main)]

use ferrovisor_abi::xen::{
    hypercall::Hypercall,
    xen::{MmuextCmd, MmuextOp, StartInfo, DOMID_SELF, UVMF_INVLPG},
};
use pvrt::{
    events::{self, VIRQ_TIMER},
    region::{self, PTE_RO, PTE_RW},
    shared_info,
    time::{self, NS_PER_MS},
    traps,
};

pvrt::test_kernel!(name: "gdt", main: test_main);

const CODE64_DPL0: u64 = 0x00af_9b00_0000_ffff;
const DATA_DPL0: u64 = 0x00cf_9300_0000_ffff;
const DATA_DPL3: u64 = 0x00cf_f300_0000_ffff;
/// An available 64-bit TSS descriptor (low half): never allowed in a guest GDT.
const TSS: u64 = 0x0000_8900_0000_0067;
/// Selector of entry 2, RPL 3.
const DATA_SEL: u16 = (2 << 3) | 3;

fn set_gdt(frames: &[u64], entries: u64) -> i64 {
    // SAFETY: the hypervisor reads `frames` (a local array) and checks every frame.
    unsafe { pvrt::hypercall2(Hypercall::SetGdt as u64, frames.as_ptr() as u64, entries) }
}

fn mmuext(cmd: MmuextCmd, arg1: u64, arg2: u64) -> i64 {
    let op = [MmuextOp {
        cmd: cmd.raw(),
        _cpad0: 0,
        arg1,
        arg2,
    }];
    // SAFETY: the hypervisor checks everything named.
    unsafe { pvrt::mmuext_op(&op, None, DOMID_SELF) }
}

fn update_descriptor(maddr: u64, desc: u64) -> i64 {
    // SAFETY: the hypervisor checks the frame and the descriptor.
    unsafe { pvrt::hypercall2(Hypercall::UpdateDescriptor as u64, maddr, desc) }
}

/// Entry 2 rewritten as not present: a selector loaded from it can no longer be loaded.
const DATA_NOT_PRESENT: u64 = DATA_DPL0 & !(1 << 47);

/// A selector the vCPU holds whose descriptor goes away while it is loaded: the vCPU
/// blocks (so it leaves the CPU and its selectors are saved), and when it runs again the
/// CPU refuses to reload it. Ferrovisor loads the null selector instead (its rule; Xen
/// enters the guest's failsafe callback, which this kernel does not take), and the
/// hypervisor must survive the refused load.
fn stale_selector(si: &StartInfo, entry: u64) -> Result<(), &'static str> {
    if !pvrt::on_ferrovisor() {
        pvrt::println!(
            "pv-test gdt: Xen's rule: a selector that no longer loads enters the failsafe \
             callback (not exercised)"
        );
        return Ok(());
    }
    if let Err(ret) = shared_info::map(si) {
        pvrt::fail!("update_va_mapping of shared_info returned {ret}");
    }
    traps::install().map_err(|_| "cannot install the trap table and callbacks")?;
    traps::set_event_handler(return_masked);
    let timer = events::bind_virq(VIRQ_TIMER, 0).map_err(|_| "cannot bind VIRQ_TIMER")?;
    // SAFETY: ES is unused in 64-bit mode.
    unsafe {
        core::arch::asm!("mov es, {0:x}", in(reg) DATA_SEL as u64, options(nostack));
    }
    let rc = update_descriptor(entry, DATA_NOT_PRESENT);
    pvrt::ensure!(rc == 0, "update_descriptor(not present) returned {}", rc);
    let es_before = es();
    // Off the CPU until the timer: the hypervisor saves ES and must reload it after. The
    // block must really take the vCPU off the CPU, and `SCHEDOP_block` returns at once
    // while an upcall is pending (as in Xen): so nothing may be pending when it is made.
    // With events masked, an earlier event is discarded and the timer armed far enough
    // out that it cannot fire first (with 2 ms it sometimes did under a loaded TCG, and
    // ES was then never saved and reloaded); should it fire anyway, it is re-armed.
    let mut quiet = false;
    for _ in 0..5 {
        events::mask_events();
        events::discard(timer);
        let rc = time::set_singleshot_timer(time::now() + 20 * NS_PER_MS, 0);
        pvrt::ensure!(rc == 0, "VCPUOP_set_singleshot_timer returned {}", rc);
        if events::upcall_pending() == 0 {
            quiet = true;
            break;
        }
    }
    pvrt::ensure!(
        quiet,
        "an upcall was pending before SCHEDOP_block each of 5 times (a 20 ms timer firing \
         at once?)"
    );
    let rc = pvrt::sched_block();
    pvrt::ensure!(rc == 0, "SCHEDOP_block returned {}", rc);
    events::mask_events();
    events::clear_pending(timer);
    let es_after = es();
    pvrt::ensure!(
        es_before == DATA_SEL && es_after == 0,
        "ES was {:#x} before the block and {:#x} after; expected {:#x}, then null",
        es_before,
        es_after,
        DATA_SEL
    );
    let rc = update_descriptor(entry, DATA_DPL0);
    pvrt::ensure!(rc == 0, "update_descriptor(present again) returned {}", rc);
    pvrt::println!(
        "pv-test gdt: a selector whose descriptor went away loads as null after a block \
         ({es_before:#x} -> {es_after:#x})"
    );
    Ok(())
}

/// The timer's upcall ends the block: return from it with events masked again (the
/// saved upcall mask in `cs` bit 32, and IF clear).
fn return_masked(frame: &mut traps::ExceptionFrame) {
    frame.cs |= 1 << 32;
    frame.rflags &= !(1 << 9);
}

fn es() -> u16 {
    let es: u16;
    // SAFETY: reading a segment register has no side effects.
    unsafe {
        core::arch::asm!("mov {0:x}, es", out(reg) es, options(nomem, nostack, preserves_flags))
    };
    es
}

fn test_main(si: &StartInfo) -> Result<(), &'static str> {
    let page = region::alloc_scratch(si).ok_or("no scratch page")?;
    // SAFETY: the scratch page is mapped writable and used by nothing else.
    unsafe {
        let w = page.words();
        core::ptr::write_volatile(w, 0);
        core::ptr::write_volatile(w.add(1), CODE64_DPL0);
        core::ptr::write_volatile(w.add(2), DATA_DPL0);
    }
    // While the page is mapped writable it cannot become a descriptor page.
    let rc = set_gdt(&[page.mfn], 3);
    pvrt::ensure!(
        rc < 0,
        "set_gdt accepted a page the guest can still write (returned {})",
        rc
    );
    pvrt::println!("pv-test gdt: set_gdt of a writable page refused: {}", rc);

    // SAFETY: remapping the scratch page read-only; nothing else uses it.
    let rc = unsafe { pvrt::update_va_mapping(page.va, page.maddr() | PTE_RO, UVMF_INVLPG) };
    pvrt::ensure!(rc == 0, "remapping the GDT page read-only returned {}", rc);
    let rc = set_gdt(&[page.mfn], 3);
    pvrt::ensure!(rc == 0, "set_gdt returned {}", rc);
    // The hypervisor raised the DPL of the ring-0 segments to 3 (the kernel runs in ring 3).
    // SAFETY: the page is still mapped (read-only).
    let data = unsafe { core::ptr::read_volatile(page.words().add(2)) };
    pvrt::ensure!(
        data == DATA_DPL3 | (data & (1 << 40)),
        "entry 2 reads {:#x} after set_gdt",
        data
    );
    pvrt::println!(
        "pv-test gdt: set_gdt loaded 3 entries; entry 2 now {:#x}",
        data
    );

    // Load the data selector from the new GDT and read it back.
    let loaded: u16;
    // SAFETY: DS is unused in 64-bit mode; it is reset to the null selector right after.
    unsafe {
        core::arch::asm!(
            "mov ds, {sel:x}",
            "mov {out:x}, ds",
            "xor {tmp:e}, {tmp:e}",
            "mov ds, {tmp:x}",
            sel = in(reg) DATA_SEL as u64,
            out = out(reg) loaded,
            tmp = out(reg) _,
            options(nostack)
        );
    }
    pvrt::ensure!(
        loaded == DATA_SEL,
        "ds read back {:#x}, expected {:#x}",
        loaded,
        DATA_SEL
    );
    pvrt::println!(
        "pv-test gdt: loaded selector {:#x} from the guest GDT",
        loaded
    );

    // update_descriptor: a good descriptor goes in, a TSS is refused.
    let slot1 = page.maddr() + 8;
    let rc = update_descriptor(slot1, DATA_DPL0);
    pvrt::ensure!(
        rc == 0,
        "update_descriptor of a data segment returned {}",
        rc
    );
    let rc = update_descriptor(slot1, TSS);
    pvrt::ensure!(
        rc == -22,
        "update_descriptor of a TSS returned {}, expected -22",
        rc
    );
    pvrt::println!("pv-test gdt: update_descriptor accepted a segment and refused a TSS (-22)");

    stale_selector(si, page.maddr() + 2 * 8)?;

    // An LDT: a page with one data segment, read-only, loaded with MMUEXT_SET_LDT; its
    // selector (index 0, table bit, RPL 3) loads.
    let ldt = region::alloc_scratch(si).ok_or("no scratch page")?;
    // SAFETY: the scratch page is mapped writable and used by nothing else.
    unsafe { core::ptr::write_volatile(ldt.words(), DATA_DPL0) };
    // SAFETY: remapping the page read-only; nothing else uses it.
    let rc = unsafe { pvrt::update_va_mapping(ldt.va, ldt.maddr() | PTE_RO, UVMF_INVLPG) };
    pvrt::ensure!(rc == 0, "remapping the LDT page read-only returned {}", rc);
    let rc = mmuext(MmuextCmd::SetLdt, ldt.va, 1);
    pvrt::ensure!(rc == 0, "MMUEXT_SET_LDT(1 entry) returned {}", rc);
    let ldt_sel: u16 = 0b111;
    let loaded: u16;
    // SAFETY: as for the GDT selector above.
    unsafe {
        core::arch::asm!(
            "mov ds, {sel:x}",
            "mov {out:x}, ds",
            "xor {tmp:e}, {tmp:e}",
            "mov ds, {tmp:x}",
            sel = in(reg) ldt_sel as u64,
            out = out(reg) loaded,
            tmp = out(reg) _,
            options(nostack)
        );
    }
    pvrt::ensure!(loaded == ldt_sel, "ds read back {:#x} from the LDT", loaded);
    let rc = mmuext(MmuextCmd::SetLdt, 0, 0);
    pvrt::ensure!(rc == 0, "MMUEXT_SET_LDT(0) returned {}", rc);
    // SAFETY: the page is no longer a descriptor page, so it may be writable again.
    let rc = unsafe { pvrt::update_va_mapping(ldt.va, ldt.maddr() | PTE_RW, UVMF_INVLPG) };
    pvrt::ensure!(
        rc == 0,
        "remapping the old LDT page writable returned {}",
        rc
    );
    pvrt::println!(
        "pv-test gdt: LDT loaded, selector {:#x} from it, then dropped",
        loaded
    );

    // Back to an empty GDT and a writable page.
    let rc = set_gdt(&[], 0);
    pvrt::ensure!(rc == 0, "set_gdt(0 entries) returned {}", rc);
    // SAFETY: the page is no longer a descriptor page.
    let rc = unsafe { pvrt::update_va_mapping(page.va, page.maddr() | PTE_RW, UVMF_INVLPG) };
    pvrt::ensure!(
        rc == 0,
        "remapping the page writable after the GDT was dropped returned {}",
        rc
    );
    Ok(())
}
