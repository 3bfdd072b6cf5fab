//! `badiret`: an `iret` hypercall whose context names a code selector the CPU will not
//! load (GDT index 1, which this kernel never filled). The hypervisor accepts the context
//! (the selector is a guest selector) but the CPU refuses it on the way back to the guest.
//! Expected on Ferrovisor: the domain is crashed with a message saying so, and the
//! hypervisor itself does not take a fatal exception. (Xen bounces to the failsafe
//! callback instead; the test runs on Ferrovisor only.)
#![cfg_attr(target_os = "none", no_std, no_main)]

use ferrovisor_abi::xen::xen::StartInfo;

pvrt::test_kernel!(name: "badiret", main: test_main);

fn test_main(_si: &StartInfo) -> Result<(), &'static str> {
    pvrt::println!("pv-test badiret: returning with cs 0x8 through iret");
    #[cfg(target_os = "none")]
    // SAFETY: the iret hypercall never returns here: the hypervisor resumes the context
    // (which the CPU refuses) or crashes the domain.
    unsafe {
        core::arch::asm!(
            "mov rax, rsp",
            "push 0xe02b",      // ss
            "push rax",         // rsp
            "push 0x202",       // rflags
            "push 0x8",         // cs: GDT index 1, never filled
            "lea rcx, [rip + 2f]",
            "push rcx",         // rip
            "push 0",           // flags
            "push rcx",
            "push r11",
            "push rax",
            "mov eax, 23",      // __HYPERVISOR_iret
            "syscall",
            "2:",
            "ud2",
            out("rax") _,
            out("rcx") _,
            out("r11") _,
        );
    }
    Err("the iret hypercall returned")
}
