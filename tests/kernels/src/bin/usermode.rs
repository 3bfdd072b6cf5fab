//! `usermode`: guest user mode. The kernel builds a user address space (a second L4 made
//! of scratch pages: the kernel's own slot 511 shared, plus a read-only code page at
//! [`USER_CODE`] and a writable stack page after it), pins it and installs it with
//! `MMUEXT_NEW_USER_BASEPTR`, registers a kernel stack for entries from user mode
//! (`stack_switch`) and its syscall callback, and enters user mode with the `iret`
//! hypercall (`cs` = `FLAT_USER_CS64`, RPL 3). The user code makes a `syscall` with a
//! number in `rax` and an argument in `rdi`; the kernel's callback sees them on a frame
//! on the registered stack, with the user `cs` (RPL 3) and `rip` after the `syscall`,
//! answers in `rax` and returns to user mode with `iret`. The user code then uses its
//! stack and executes `ud2`, which bounces to the kernel's #UD handler as a user-mode
//! exception; the handler checks the registers user mode left and resumes the kernel.
#![cfg_attr(target_os = "none", no_std, no_main)]

use core::sync::atomic::{AtomicU64, Ordering};

use ferrovisor_abi::xen::{
    arch_x86::{FLAT_KERNEL_SS, FLAT_USER_CS64},
    xen::{MmuextCmd, MmuextOp, StartInfo, DOMID_SELF, UVMF_INVLPG},
};
use pvrt::{
    region::{self, ScratchPage, PTE_RO, PTE_RW, PTE_TABLE},
    traps::{self, vector, Trap, VECTOR_SYSCALL},
};

pvrt::test_kernel!(name: "usermode", main: test_main);

/// Where the user code page is mapped (PML4 slot 0, L2 slot 2, L1 slot 0); the stack page
/// follows it.
const USER_CODE: u64 = 0x40_0000;
const USER_STACK_TOP: u64 = USER_CODE + 2 * region::PAGE_SIZE;
/// What the user code passes in `rax` and `rdi`, and what the kernel answers.
const SYSCALL_NR: u64 = 0x5ca1;
const SYSCALL_ARG: u64 = 0x1234;
const SYSCALL_ANSWER: u64 = SYSCALL_ARG + 1;
/// What the user code pushes and pops (through its stack) into r13.
const STACK_MARK: u64 = 0x77;
/// Pages of the kernel stack for entries from user mode.
const ENTRY_STACK_PAGES: usize = 4;

// The user code, copied to the user code page: position independent.
#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .pushsection .rodata.usermode_code, "a", @progbits
    .balign 16
    .global usermode_code_start
usermode_code_start:
    mov eax, {nr}
    mov edi, {arg}
    syscall
    .global usermode_code_after_syscall
usermode_code_after_syscall:
    mov rbx, rax
    push {mark}
    pop r13
    .global usermode_code_ud2
usermode_code_ud2:
    ud2
    jmp usermode_code_start
    .global usermode_code_end
usermode_code_end:
    .popsection
    "#,
    nr = const SYSCALL_NR,
    arg = const SYSCALL_ARG,
    mark = const STACK_MARK,
);

/// The user code's bytes, and the offsets of the instruction after `syscall` and of `ud2`.
fn user_code() -> (&'static [u8], u64, u64) {
    #[cfg(target_os = "none")]
    {
        extern "C" {
            static usermode_code_start: u8;
            static usermode_code_after_syscall: u8;
            static usermode_code_ud2: u8;
            static usermode_code_end: u8;
        }
        let start = &raw const usermode_code_start;
        let after = (&raw const usermode_code_after_syscall) as u64 - start as u64;
        let ud2 = (&raw const usermode_code_ud2) as u64 - start as u64;
        let len = (&raw const usermode_code_end) as usize - start as usize;
        // SAFETY: the blob above, in .rodata, between its two labels.
        (
            unsafe { core::slice::from_raw_parts(start, len) },
            after,
            ud2,
        )
    }
    #[cfg(not(target_os = "none"))]
    (&[], 0, 0)
}

/// What the handlers saw.
static SYSCALLS: AtomicU64 = AtomicU64::new(0);
static SYSCALL_RAX: AtomicU64 = AtomicU64::new(0);
static SYSCALL_RDI: AtomicU64 = AtomicU64::new(0);
static SYSCALL_RIP: AtomicU64 = AtomicU64::new(0);
static SYSCALL_CS: AtomicU64 = AtomicU64::new(0);
static SYSCALL_RSP: AtomicU64 = AtomicU64::new(0);
static SYSCALL_FRAME_AT: AtomicU64 = AtomicU64::new(0);
static UD_SEEN: AtomicU64 = AtomicU64::new(0);
static UD_RIP: AtomicU64 = AtomicU64::new(0);
static UD_CS: AtomicU64 = AtomicU64::new(0);
static UD_RBX: AtomicU64 = AtomicU64::new(0);
static UD_R13: AtomicU64 = AtomicU64::new(0);
static UD_RSP: AtomicU64 = AtomicU64::new(0);
static UD_FRAME_AT: AtomicU64 = AtomicU64::new(0);

fn handler(trap: &mut Trap<'_>) -> bool {
    let f = &mut *trap.frame;
    let at = core::ptr::from_mut(f) as u64;
    match f.vector {
        VECTOR_SYSCALL => {
            SYSCALLS.fetch_add(1, Ordering::SeqCst);
            SYSCALL_RAX.store(f.rax, Ordering::SeqCst);
            SYSCALL_RDI.store(f.rdi, Ordering::SeqCst);
            SYSCALL_RIP.store(f.rip, Ordering::SeqCst);
            SYSCALL_CS.store(f.cs, Ordering::SeqCst);
            SYSCALL_RSP.store(f.rsp, Ordering::SeqCst);
            SYSCALL_FRAME_AT.store(at, Ordering::SeqCst);
            f.rax = SYSCALL_ANSWER;
            true
        }
        v if v == u64::from(vector::UD) && f.from_user() => {
            UD_SEEN.fetch_add(1, Ordering::SeqCst);
            UD_RIP.store(f.rip, Ordering::SeqCst);
            UD_CS.store(f.cs, Ordering::SeqCst);
            UD_RBX.store(f.rbx, Ordering::SeqCst);
            UD_R13.store(f.r13, Ordering::SeqCst);
            UD_RSP.store(f.rsp, Ordering::SeqCst);
            UD_FRAME_AT.store(at, Ordering::SeqCst);
            traps::return_from_user(f)
        }
        _ => false,
    }
}

fn scratch(si: &StartInfo) -> Result<ScratchPage, &'static str> {
    region::alloc_scratch(si).ok_or("out of scratch pages")
}

/// Entry `index` of a scratch page that is still mapped writable.
fn set_entry(page: &ScratchPage, index: usize, value: u64) {
    assert!(index < 512);
    // SAFETY: a scratch page of this kernel, mapped writable, 512 entries.
    unsafe { page.words().add(index).write_volatile(value) };
}

fn test_main(si: &StartInfo) -> Result<(), &'static str> {
    if let Err(ret) = pvrt::shared_info::map(si) {
        pvrt::fail!("update_va_mapping of shared_info returned {ret}");
    }
    traps::set_handler(handler);
    if let Err(e) = traps::install() {
        pvrt::fail!("installing the trap table and callbacks: {e}");
    }

    // The user address space.
    let l4 = scratch(si)?;
    let l3 = scratch(si)?;
    let l2 = scratch(si)?;
    let l1 = scratch(si)?;
    let code = scratch(si)?;
    let stack = scratch(si)?;
    let (bytes, after_syscall, ud2_offset) = user_code();
    // SAFETY: `code` is a scratch page mapped writable; the blob is smaller than a page.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), code.va as *mut u8, bytes.len()) };
    // The kernel's slot 511 (the bootstrap region), shared.
    // SAFETY: pt_base is the bootstrap L4, mapped read-only in the bootstrap region.
    let kernel_slot_511 = unsafe { core::ptr::read_volatile((si.pt_base as *const u64).add(511)) };
    set_entry(&l4, 0, l3.maddr() | PTE_TABLE);
    set_entry(&l4, 511, kernel_slot_511);
    set_entry(&l3, 0, l2.maddr() | PTE_TABLE);
    set_entry(
        &l2,
        ((USER_CODE >> 21) & 511) as usize,
        l1.maddr() | PTE_TABLE,
    );
    set_entry(
        &l1,
        ((USER_CODE >> 12) & 511) as usize,
        code.maddr() | PTE_RO,
    );
    set_entry(
        &l1,
        (((USER_CODE + region::PAGE_SIZE) >> 12) & 511) as usize,
        stack.maddr() | PTE_RW,
    );
    // Page tables are never mapped writable: make the kernel's mappings read-only.
    for page in [&l4, &l3, &l2, &l1] {
        // SAFETY: scratch pages nothing else uses; they stay mapped, read-only.
        let ret = unsafe { pvrt::update_va_mapping(page.va, page.maddr() | PTE_RO, UVMF_INVLPG) };
        pvrt::ensure!(
            ret == 0,
            "update_va_mapping({:#x}) read-only returned {ret}",
            page.va
        );
    }
    let ops = [
        MmuextOp {
            cmd: MmuextCmd::PinL4Table.raw(),
            _cpad0: 0,
            arg1: l4.mfn,
            arg2: 0,
        },
        MmuextOp {
            cmd: MmuextCmd::NewUserBaseptr.raw(),
            _cpad0: 0,
            arg1: l4.mfn,
            arg2: 0,
        },
    ];
    let mut done = 0u32;
    // SAFETY: pins the new user L4 and makes it the user page tables; the kernel's own
    // address space is unchanged.
    let ret = unsafe { pvrt::mmuext_op(&ops, Some(&mut done), DOMID_SELF) };
    pvrt::println!(
        "pv-test usermode: user L4 mfn {:#x}: pin + MMUEXT_NEW_USER_BASEPTR returned {ret} \
         ({done} done)",
        l4.mfn
    );
    pvrt::ensure!(
        ret == 0 && done == 2,
        "pinning the user L4 and MMUEXT_NEW_USER_BASEPTR returned {ret}, {done} of 2 done"
    );

    // The kernel stack entries from user mode land on.
    let entry_stack = scratch(si)?;
    for _ in 1..ENTRY_STACK_PAGES {
        scratch(si)?;
    }
    let entry_top = entry_stack.va + ENTRY_STACK_PAGES as u64 * region::PAGE_SIZE;
    // SAFETY: scratch pages used for nothing else.
    let ret = unsafe { pvrt::stack_switch(FLAT_KERNEL_SS, entry_top) };
    pvrt::ensure!(ret == 0, "stack_switch returned {ret}");

    pvrt::println!("pv-test usermode: entering user mode at {USER_CODE:#x}");
    // SAFETY: the user page tables map the code and stack, the entry stack is registered,
    // the #UD handler sends the vCPU back.
    unsafe { traps::enter_user(USER_CODE, USER_STACK_TOP) };
    pvrt::println!("pv-test usermode: back in the kernel");

    let on_entry_stack = |at: u64| at >= entry_stack.va && at < entry_top;
    let (n, rax, rdi) = (
        SYSCALLS.load(Ordering::SeqCst),
        SYSCALL_RAX.load(Ordering::SeqCst),
        SYSCALL_RDI.load(Ordering::SeqCst),
    );
    let (rip, cs, rsp, at) = (
        SYSCALL_RIP.load(Ordering::SeqCst),
        SYSCALL_CS.load(Ordering::SeqCst),
        SYSCALL_RSP.load(Ordering::SeqCst),
        SYSCALL_FRAME_AT.load(Ordering::SeqCst),
    );
    pvrt::println!(
        "pv-test usermode: syscall callback: {n} call(s), rax {rax:#x}, rdi {rdi:#x}, rip {rip:#x}, \
         cs {cs:#x}, rsp {rsp:#x}, frame at {at:#x}"
    );
    pvrt::ensure!(n == 1, "the syscall callback ran {n} times, expected once");
    pvrt::ensure!(
        rax == SYSCALL_NR && rdi == SYSCALL_ARG,
        "the syscall callback saw rax {rax:#x} rdi {rdi:#x}, expected {SYSCALL_NR:#x} {SYSCALL_ARG:#x}"
    );
    pvrt::ensure!(
        rip == USER_CODE + after_syscall,
        "syscall frame rip {rip:#x}, expected {:#x}",
        USER_CODE + after_syscall
    );
    pvrt::ensure!(
        cs as u16 == FLAT_USER_CS64,
        "syscall frame cs {cs:#x}, expected FLAT_USER_CS64 {FLAT_USER_CS64:#x}"
    );
    pvrt::ensure!(
        rsp == USER_STACK_TOP,
        "syscall frame rsp {rsp:#x}, expected the user stack {USER_STACK_TOP:#x}"
    );
    pvrt::ensure!(
        on_entry_stack(at),
        "the syscall frame is at {at:#x}, not on the stack_switch stack"
    );

    let (seen, rip, cs, rbx, r13, rsp, at) = (
        UD_SEEN.load(Ordering::SeqCst),
        UD_RIP.load(Ordering::SeqCst),
        UD_CS.load(Ordering::SeqCst),
        UD_RBX.load(Ordering::SeqCst),
        UD_R13.load(Ordering::SeqCst),
        UD_RSP.load(Ordering::SeqCst),
        UD_FRAME_AT.load(Ordering::SeqCst),
    );
    pvrt::println!(
        "pv-test usermode: user #UD: rip {rip:#x}, cs {cs:#x}, rbx {rbx:#x}, r13 {r13:#x}, \
         rsp {rsp:#x}, frame at {at:#x}"
    );
    pvrt::ensure!(seen == 1, "the user #UD reached the kernel {seen} times");
    pvrt::ensure!(
        rip == USER_CODE + ud2_offset,
        "user #UD rip {rip:#x}, expected {:#x}",
        USER_CODE + ud2_offset
    );
    pvrt::ensure!(
        cs as u16 == FLAT_USER_CS64,
        "user #UD frame cs {cs:#x}, expected FLAT_USER_CS64 (RPL 3)"
    );
    pvrt::ensure!(
        rbx == SYSCALL_ANSWER,
        "user mode got {rbx:#x} from its syscall, expected {SYSCALL_ANSWER:#x}"
    );
    pvrt::ensure!(
        r13 == STACK_MARK && rsp == USER_STACK_TOP,
        "the user stack round trip left r13 {r13:#x} rsp {rsp:#x}"
    );
    pvrt::ensure!(
        on_entry_stack(at),
        "the user #UD frame is at {at:#x}, not on the stack_switch stack"
    );
    Ok(())
}
