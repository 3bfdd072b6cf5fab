//! The image's first instruction and the Xen ELF notes every test kernel carries
//! (`public/elfnote.h`; layout from `xen.h`'s start-of-day description).
//!
//! The domain builder enters `_start` in ring 3, in 64-bit mode, with events masked,
//! `rsi` = the virtual address of `start_info` and `rsp` = a bootstrap stack inside the
//! bootstrap region. `_start` moves to the kernel's own stack (the end of the bss, see
//! `linker.ld`) and calls `pvrt_main(start_info_va, bootstrap_rsp)`, which the kernel's
//! [`test_kernel!`](crate::test_kernel) defines and which hands over to
//! [`entry`](crate::entry). The bss is not zeroed here: the builder zeroes it.

use core::arch::global_asm;

global_asm!(
    r#"
    .pushsection .text.pvrt_start, "ax", @progbits
    .global _start
    .type _start, @function
_start:
    mov rdi, rsi
    mov rsi, rsp
    lea rsp, [rip + __pvrt_stack_top]
    xor ebp, ebp
    call pvrt_main
    ud2
    .size _start, . - _start
    .popsection
    "#
);

// The notes. A test kernel says it is a "linux" guest because the loader (Xen's libelf,
// and Ferrovisor's, which keeps its rules) accepts only the generic loader or Linux; it
// is not Linux, as GUEST_VERSION says. FEATURES is empty: no XENFEAT is required (a test
// that needs one checks XENVER_get_features itself). HYPERCALL_PAGE is only in kernels
// that ask for the page (`test_kernel!(..., hypercall_page)`).
//
// Note record: namesz, descsz, type, "Xen\0", descriptor, each padded to 4 bytes.
global_asm!(
    r#"
    .macro pvrt_xen_note_begin type
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 2f - 1f
    .long \type
    .asciz "Xen"
    .balign 4
1:
    .endm
    .macro pvrt_xen_note_end
2:  .balign 4
    .popsection
    .endm
    .macro pvrt_xen_note_str type, value
    pvrt_xen_note_begin \type
    .asciz "\value"
    pvrt_xen_note_end
    .endm
    .macro pvrt_xen_note_quad type, value
    pvrt_xen_note_begin \type
    .quad \value
    pvrt_xen_note_end
    .endm

    pvrt_xen_note_str {guest_os}, linux
    pvrt_xen_note_str {guest_version}, ferrovisor-test
    pvrt_xen_note_str {xen_version}, xen-3.0
    pvrt_xen_note_str {loader}, generic
    pvrt_xen_note_quad {virt_base}, {virt_base_value}
    pvrt_xen_note_quad {paddr_offset}, 0
    pvrt_xen_note_quad {entry}, _start
    pvrt_xen_note_str {features}

    .purgem pvrt_xen_note_quad
    .purgem pvrt_xen_note_str
    .purgem pvrt_xen_note_end
    .purgem pvrt_xen_note_begin
    "#,
    guest_os = const ferrovisor_abi::xen::elfnote::XEN_ELFNOTE_GUEST_OS,
    guest_version = const ferrovisor_abi::xen::elfnote::XEN_ELFNOTE_GUEST_VERSION,
    xen_version = const ferrovisor_abi::xen::elfnote::XEN_ELFNOTE_XEN_VERSION,
    loader = const ferrovisor_abi::xen::elfnote::XEN_ELFNOTE_LOADER,
    virt_base = const ferrovisor_abi::xen::elfnote::XEN_ELFNOTE_VIRT_BASE,
    virt_base_value = const crate::contract::VIRT_BASE,
    paddr_offset = const ferrovisor_abi::xen::elfnote::XEN_ELFNOTE_PADDR_OFFSET,
    entry = const ferrovisor_abi::xen::elfnote::XEN_ELFNOTE_ENTRY,
    features = const ferrovisor_abi::xen::elfnote::XEN_ELFNOTE_FEATURES,
);

/// The HYPERCALL_PAGE note and the page itself, for [`test_kernel!`](crate::test_kernel)'s
/// `hypercall_page` form: a page-aligned 4 KiB page in `.text` named `hypercall_page`,
/// filled with `int3` so that a call into a page the builder did not fill traps.
#[doc(hidden)]
#[macro_export]
macro_rules! __pvrt_hypercall_page_asm {
    () => {
        ::core::arch::global_asm!(
            r#"
            .pushsection .text.hypercall_page, "ax", @progbits
            .balign 4096
            .global hypercall_page
            .type hypercall_page, @function
        hypercall_page:
            .fill 4096, 1, 0xcc
            .size hypercall_page, 4096
            .popsection

            .pushsection .note.Xen, "a", @note
            .balign 4
            .long 4
            .long 8
            .long {hypercall_page_note}
            .asciz "Xen"
            .balign 4
            .quad hypercall_page
            .popsection
            "#,
            hypercall_page_note = const $crate::abi::xen::elfnote::XEN_ELFNOTE_HYPERCALL_PAGE,
        );
    };
}
