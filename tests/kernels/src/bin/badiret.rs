//! `badiret`: an `iret` hypercall whose context names a code selector the CPU will not
//! load (GDT index 1, which this kernel never filled). The hypervisor accepts the context
//! (the selector is a guest selector) but the CPU refuses it on the way back to the guest.
//! Expected, as on Xen: the guest kernel gets the CPU's #GP through its trap table, as if
//! raised at the refused state (the `rip` and `cs` it asked for, the selector as error
//! code), and the hypervisor itself does not take a fatal exception.
#![cfg_attr(target_os = "none", no_std, no_main)]

use core::sync::atomic::{AtomicU64, Ordering};

use ferrovisor_abi::xen::xen::StartInfo;
use pvrt::traps::{self, vector, Trap};

pvrt::test_kernel!(name: "badiret", main: test_main);

/// The `rip` the refused context names.
static TARGET: AtomicU64 = AtomicU64::new(0);

/// The code selector the refused context names: GDT index 1.
const BAD_CS: u64 = 0x8;

fn on_trap(trap: &mut Trap<'_>) -> bool {
    let frame = &trap.frame;
    let target = TARGET.load(Ordering::SeqCst);
    pvrt::println!(
        "pv-test badiret: exception {} error code {:#x} at rip {:#x} cs {:#x}",
        frame.vector,
        frame.error_code,
        frame.rip,
        frame.cs_selector()
    );
    if frame.vector != u64::from(vector::GP) || frame.error_code & !3 != BAD_CS {
        pvrt::fail!(
            "the refused return raised vector {} error code {:#x}, expected #GP with the \
             selector {BAD_CS:#x} as error code",
            frame.vector,
            frame.error_code
        );
    }
    if frame.rip != target || u64::from(frame.cs_selector()) & !3 != BAD_CS {
        pvrt::fail!(
            "the #GP frame holds rip {:#x} cs {:#x}, expected the refused rip {target:#x} \
             and cs {BAD_CS:#x} (any RPL)",
            frame.rip,
            frame.cs_selector()
        );
    }
    pvrt::pass()
}

fn test_main(_si: &StartInfo) -> Result<(), &'static str> {
    if let Err(e) = traps::install() {
        pvrt::fail!("installing the trap table and callbacks: {e}");
    }
    traps::set_handler(on_trap);
    pvrt::println!("pv-test badiret: returning with cs {BAD_CS:#x} through iret");
    #[cfg(target_os = "none")]
    // SAFETY: the iret hypercall never returns here: the CPU refuses the context and the
    // hypervisor bounces its #GP to the trap table, whose handler ends the kernel.
    unsafe {
        core::arch::asm!(
            "lea rcx, [rip + 2f]",
            "mov [{target}], rcx",
            "mov rax, rsp",
            "push 0xe02b",      // ss
            "push rax",         // rsp
            "push 0x202",       // rflags
            "push 0x8",         // cs: GDT index 1, never filled
            "push rcx",         // rip
            "push 0",           // flags
            "push rcx",
            "push r11",
            "push rax",
            "mov eax, 23",      // __HYPERVISOR_iret
            "syscall",
            "2:",
            "ud2",
            target = in(reg) TARGET.as_ptr(),
            out("rax") _,
            out("rcx") _,
            out("r11") _,
        );
    }
    Err("the iret hypercall returned")
}
