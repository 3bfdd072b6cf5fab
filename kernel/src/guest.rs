//! Entries from ring 3: system calls, exceptions and interrupted execution. Ring 3 is
//! where PV guests run; until the PV core exists the only ring-3 code is the ring-3
//! selftest, so these hand over to it, and anything else from ring 3 is fatal.

use crate::{arch::x86_64::trap::TrapFrame, fatal, selftest};

/// A SYSCALL from ring 3.
pub fn syscall(frame: &mut TrapFrame) {
    if !selftest::ring3_syscall(frame) {
        fatal::exception(frame);
    }
}

/// A CPU exception raised in ring 3.
pub fn exception(frame: &mut TrapFrame) {
    if !selftest::ring3_exception(frame) {
        fatal::exception(frame);
    }
}

/// Ring 3 was interrupted (by the tick); `frame` is where it resumes.
pub fn interrupted(frame: &mut TrapFrame) {
    selftest::ring3_interrupted(frame);
}
