//! Entries from ring 3: system calls, exceptions and interrupted execution. Ring 3 is
//! where PV guests run (and the ring-3 selftest, which takes precedence when it runs).

use crate::{arch::x86_64::trap::TrapFrame, domain, fatal, hypercall, selftest};

/// A SYSCALL from ring 3: from a guest kernel, a hypercall.
pub fn syscall(frame: &mut TrapFrame) {
    if selftest::ring3_syscall(frame) {
        return;
    }
    if !domain::running() {
        fatal::exception(frame);
    }
    hypercall::dispatch(frame);
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
