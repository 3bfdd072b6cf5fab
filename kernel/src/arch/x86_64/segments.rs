//! A vCPU's data segment selectors (DS, ES, FS), which the guest loads itself (a PV
//! kernel runs in ring 3, where `mov %reg, %fs` needs no hypervisor) and which stay in the
//! CPU while the hypervisor runs. They are saved when a vCPU leaves a CPU and loaded when
//! it comes back, as Xen does (`save_segments`/`load_segments`): otherwise the next vCPU
//! on that CPU inherits the previous one's selectors. Linux reads its FS selector at every
//! task switch and, finding one that is not null, takes the thread's FS base to come from
//! the descriptor: a selector leaked from another vCPU (Linux loads `__USER_DS` then null
//! into FS on AMD-style CPUs, and a tick can switch vCPUs between the two) loses that
//! thread's TLS base, and its next `fs:` access faults.
//!
//! A saved selector may name a descriptor that is gone by the time it is loaded again (the
//! guest changed its GDT or LDT meanwhile, on another vCPU too): the load then faults in
//! the hypervisor. Each load instruction is a known address; a #GP, #NP, #SS or #TS there
//! resumes at [`seg_load_refused`] ([`recover_refused_load`]), and that register gets the
//! null selector instead.
//!
//! GS is not handled here: loading its selector replaces the hypervisor's own GS base
//! (its per-CPU area), and the guest's GS selector is only ever set through
//! `set_segment_base(SEGBASE_GS_USER_SEL)`.

use super::trap::TrapFrame;

core::arch::global_asm!(
    r#"
    .section .text.segments, "ax"
    .globl seg_load_ds
seg_load_ds:
    xorl %eax, %eax
    .globl seg_load_ds_insn
seg_load_ds_insn:
    movw %di, %ds
    ret

    .globl seg_load_es
seg_load_es:
    xorl %eax, %eax
    .globl seg_load_es_insn
seg_load_es_insn:
    movw %di, %es
    ret

    .globl seg_load_fs
seg_load_fs:
    xorl %eax, %eax
    .globl seg_load_fs_insn
seg_load_fs_insn:
    movw %di, %fs
    ret

    /* Where a refused load resumes: the stack still holds the caller's return address. */
    .globl seg_load_refused
seg_load_refused:
    movl $1, %eax
    ret
"#,
    options(att_syntax)
);

extern "C" {
    fn seg_load_ds(selector: u16) -> u32;
    fn seg_load_es(selector: u16) -> u32;
    fn seg_load_fs(selector: u16) -> u32;
    static seg_load_ds_insn: u8;
    static seg_load_es_insn: u8;
    static seg_load_fs_insn: u8;
    static seg_load_refused: u8;
}

/// A vCPU's DS, ES and FS selectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataSelectors {
    pub ds: u16,
    pub es: u16,
    pub fs: u16,
}

impl DataSelectors {
    /// What the CPU has loaded now.
    pub fn read() -> DataSelectors {
        let (ds, es, fs): (u16, u16, u16);
        // SAFETY: reading segment registers has no side effects.
        unsafe {
            core::arch::asm!(
                "mov {0:x}, ds",
                "mov {1:x}, es",
                "mov {2:x}, fs",
                out(reg) ds,
                out(reg) es,
                out(reg) fs,
                options(nomem, nostack, preserves_flags)
            );
        }
        DataSelectors { ds, es, fs }
    }

    /// Loads the three selectors; one the CPU refuses is loaded as null instead. Returns
    /// whether all three were taken as given. The FS base the descriptor gives replaces
    /// the FS base: load the vCPU's own base after this.
    pub fn load(&self) -> bool {
        let mut ok = true;
        for (load, selector) in [
            (seg_load_ds as unsafe extern "C" fn(u16) -> u32, self.ds),
            (seg_load_es, self.es),
            (seg_load_fs, self.fs),
        ] {
            // SAFETY: DS and ES are ignored for addressing in 64-bit mode and the
            // hypervisor never uses FS, so any selector the CPU accepts is harmless; one
            // it refuses faults at the load instruction, which `recover_refused_load`
            // turns into a return of 1 (nothing changed), and null always loads.
            unsafe {
                if load(selector) != 0 {
                    ok = false;
                    load(0);
                }
            }
        }
        ok
    }
}

/// Whether `frame` is a fault on one of the selector loads above (a descriptor the CPU
/// refused); if so it resumes at the refusal path, which returns 1 to the loader.
pub fn recover_refused_load(frame: &mut TrapFrame) -> bool {
    const TS: u64 = 10;
    const NP: u64 = 11;
    const SS: u64 = 12;
    const GP: u64 = 13;
    // SAFETY: only the addresses of the assembly labels are taken.
    let (ds, es, fs, refused) = unsafe {
        (
            &seg_load_ds_insn as *const u8 as u64,
            &seg_load_es_insn as *const u8 as u64,
            &seg_load_fs_insn as *const u8 as u64,
            &seg_load_refused as *const u8 as u64,
        )
    };
    let at_load = frame.cs & 3 == 0
        && matches!(frame.vector, TS | NP | SS | GP)
        && [ds, es, fs].contains(&frame.rip);
    if at_load {
        frame.rip = refused;
    }
    at_load
}
