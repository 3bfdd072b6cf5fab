//! How the hypervisor stops: cleanly, on a fatal exception, or on a panic. Each path
//! takes the console over (all other output stops), says why, reports the verdict to
//! QEMU's isa-debug-exit when the command line named one, and halts the CPU.

use core::{
    fmt::Write,
    sync::atomic::{AtomicBool, Ordering},
};

use crate::{
    arch::x86_64::memory,
    arch::x86_64::{
        cpu,
        debug_exit::{self, Verdict},
        irq, smp,
        trap::TrapFrame,
    },
    console,
};

/// Set by the first panic or fatal exception: a second one only stops the CPU.
static DYING: AtomicBool = AtomicBool::new(false);

/// Stops the machine with `verdict`, after a last line (printed whatever `loglvl=` says).
pub fn halt(verdict: Verdict) -> ! {
    irq::disable();
    smp::stop_others();
    let mut w = console::take_over();
    let _ = writeln!(w, "hypervisor halted");
    debug_exit::report(verdict);
    irq::halt_forever()
}

const EXCEPTIONS: [(&str, &str); 32] = [
    ("divide error", "DE"),
    ("debug", "DB"),
    ("non-maskable interrupt", "NMI"),
    ("breakpoint", "BP"),
    ("overflow", "OF"),
    ("bound range exceeded", "BR"),
    ("invalid opcode", "UD"),
    ("device not available", "NM"),
    ("double fault", "DF"),
    ("coprocessor segment overrun", "CSO"),
    ("invalid TSS", "TS"),
    ("segment not present", "NP"),
    ("stack-segment fault", "SS"),
    ("general protection fault", "GP"),
    ("page fault", "PF"),
    ("reserved vector 15", "15"),
    ("x87 floating-point error", "MF"),
    ("alignment check", "AC"),
    ("machine check", "MC"),
    ("SIMD floating-point error", "XM"),
    ("virtualization exception", "VE"),
    ("control protection", "CP"),
    ("reserved vector 22", "22"),
    ("reserved vector 23", "23"),
    ("reserved vector 24", "24"),
    ("reserved vector 25", "25"),
    ("reserved vector 26", "26"),
    ("reserved vector 27", "27"),
    ("hypervisor injection", "HV"),
    ("VMM communication", "VC"),
    ("security exception", "SX"),
    ("reserved vector 31", "31"),
];

/// A CPU exception the hypervisor cannot recover from: dump everything and stop.
pub fn exception(frame: &TrapFrame) -> ! {
    irq::disable();
    if DYING.swap(true, Ordering::SeqCst) {
        irq::halt_forever();
    }
    smp::stop_others();
    let mut w = console::take_over();
    let vector = frame.vector as usize;
    let (name, mnemonic) = EXCEPTIONS
        .get(vector)
        .copied()
        .unwrap_or(("exception", "?"));
    let cr2 = cpu::read_cr2();
    let _ = writeln!(
        w,
        "FATAL: {name} (#{mnemonic}) in the hypervisor at rip={:#018x}, vector {vector}",
        frame.rip
    );
    if vector == 14 {
        let e = frame.error_code;
        let _ = writeln!(
            w,
            "  cr2={cr2:#018x} (faulting address), error code {e:#x} ({}, {}, {}{}{})",
            if e & 2 != 0 { "write" } else { "read" },
            if e & 1 != 0 {
                "protection violation"
            } else {
                "not present"
            },
            if e & 4 != 0 { "user" } else { "supervisor" },
            if e & 8 != 0 { ", reserved bit set" } else { "" },
            if e & 16 != 0 {
                ", instruction fetch"
            } else {
                ""
            },
        );
    } else if frame.error_code != 0 {
        let _ = writeln!(w, "  error code {:#x}", frame.error_code);
    }
    // An overflow shows up as a #PF in a guard region, or as a #DF when that #PF could not
    // be delivered on the overflowing stack itself.
    let hit = memory::guard_hit(cr2).or_else(|| memory::guard_hit(frame.rsp.wrapping_sub(64)));
    if let Some(stack) = hit {
        let _ = writeln!(
            w,
            "  stack overflow: guard page of the {} stack hit (stack {:#x}-{:#x}, rsp={:#x})",
            stack.name, stack.bottom, stack.top, frame.rsp
        );
    }
    dump_registers(&mut w, frame);
    let _ = writeln!(w, "hypervisor halted");
    debug_exit::report(Verdict::Fatal);
    irq::halt_forever()
}

fn dump_registers(w: &mut impl Write, f: &TrapFrame) {
    let rows: [[(&str, u64); 4]; 5] = [
        [
            ("rax", f.rax),
            ("rbx", f.rbx),
            ("rcx", f.rcx),
            ("rdx", f.rdx),
        ],
        [
            ("rsi", f.rsi),
            ("rdi", f.rdi),
            ("rbp", f.rbp),
            ("rsp", f.rsp),
        ],
        [("r8", f.r8), ("r9", f.r9), ("r10", f.r10), ("r11", f.r11)],
        [
            ("r12", f.r12),
            ("r13", f.r13),
            ("r14", f.r14),
            ("r15", f.r15),
        ],
        [
            ("rip", f.rip),
            ("rflags", f.rflags),
            ("cs", f.cs),
            ("ss", f.ss),
        ],
    ];
    for row in rows {
        let _ = write!(w, " ");
        for (name, value) in row {
            let _ = write!(w, " {name:>3}={value:#018x}");
        }
        let _ = writeln!(w);
    }
    let _ = writeln!(
        w,
        "  cr0={:#018x} cr2={:#018x} cr3={:#018x} cr4={:#018x}",
        cpu::read_cr0(),
        cpu::read_cr2(),
        cpu::read_cr3(),
        cpu::read_cr4().bits()
    );
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    irq::disable();
    if DYING.swap(true, Ordering::SeqCst) {
        irq::halt_forever();
    }
    smp::stop_others();
    let mut w = console::take_over();
    match info.location() {
        Some(l) => {
            let _ = writeln!(
                w,
                "PANIC at {}:{}:{}: {}",
                l.file(),
                l.line(),
                l.column(),
                info.message()
            );
        }
        None => {
            let _ = writeln!(w, "PANIC: {}", info.message());
        }
    }
    let _ = writeln!(w, "hypervisor halted");
    debug_exit::report(Verdict::Fatal);
    irq::halt_forever()
}
