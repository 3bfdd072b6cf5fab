//! Entries from ring 3: system calls, exceptions and interrupted execution. Ring 3 is
//! where PV guests run (and the ring-3 selftest, which takes precedence when it runs).

use crate::{arch::x86_64::trap::TrapFrame, domain, fatal, hypercall, selftest};

/// A SYSCALL from ring 3: from a guest kernel, a hypercall.
pub fn syscall(frame: &mut TrapFrame) {
    if selftest::ring3_syscall(frame) {
        return;
    }
    match domain::with_current(|d| d.vcpu.kernel_mode) {
        None => fatal::exception(frame),
        Some(true) => hypercall::dispatch(frame),
        // Guest user space never makes hypercalls: its SYSCALL belongs to the guest kernel.
        Some(false) => domain::crash(format_args!(
            "system call from guest user mode at rip={:#x}: bouncing it to the guest kernel \
             is not implemented yet",
            frame.rip
        )),
    }
}

/// A CPU exception raised in ring 3. Bouncing exceptions to the guest's trap table comes
/// next; until then the guest cannot continue from one.
pub fn exception(frame: &mut TrapFrame) {
    if selftest::ring3_exception(frame) {
        return;
    }
    if !domain::running() {
        fatal::exception(frame);
    }
    domain::crash(format_args!(
        "unhandled exception {} (error code {:#x}) at rip={:#x}, rsp={:#x}",
        frame.vector, frame.error_code, frame.rip, frame.rsp
    ))
}

/// Ring 3 was interrupted (by the tick); `frame` is where it resumes.
pub fn interrupted(frame: &mut TrapFrame) {
    selftest::ring3_interrupted(frame);
}
