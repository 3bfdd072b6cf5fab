//! What guests put in the hypervisor's log (serial line, VGA, log ring): domUs' console
//! lines, when `guest_console_mirror=on`, and the warnings their bad input causes. Every
//! such line passes a per-domain rate limit (`ferrovisor::ratelimit`; dom0 exempt), so a
//! guest in an oops loop cannot push the hypervisor's own messages out of `fv dmesg`;
//! dropped lines are counted and reported once, as `(d<id>) ... N lines suppressed`,
//! before that domain's next line that passes or when it is destroyed.
//!
//! A domain's console history (`fv console`, `ConsoleRead`) is not affected: all its
//! output lands there whatever is mirrored or limited.

use core::{
    fmt,
    sync::atomic::{AtomicBool, Ordering},
};

use ferrovisor::{
    mm::frame_table::DomId,
    ratelimit::{Admit, PerDomain, GUEST_LOG},
};

use crate::{arch::x86_64::irq::IrqMutex, clock, domain::DOM0};

/// Lock order: a leaf (taken and released before anything is written).
static LIMITS: IrqMutex<PerDomain> = IrqMutex::new(PerDomain::new(GUEST_LOG));
/// `guest_console_mirror=`.
static MIRROR: AtomicBool = AtomicBool::new(false);

/// Sets `guest_console_mirror=` (once, at boot).
pub fn set_mirror(on: bool) {
    MIRROR.store(on, Ordering::Relaxed);
}

/// Whether a line of `dom` may go to the log now; says first how many were dropped.
fn admit(dom: DomId) -> bool {
    let verdict = LIMITS.lock().admit(dom.0, clock::now_ns());
    match verdict {
        Admit::Pass { suppressed } => {
            report(dom, suppressed);
            true
        }
        Admit::Drop => false,
    }
}

fn report(dom: DomId, suppressed: u64) {
    if suppressed > 0 {
        log::warn!("(d{}) ... {suppressed} lines suppressed", dom.0);
    }
}

/// One line of a domain's console output (already prefixed `(d<id>)` and escaped): to
/// the log if it is dom0's, or if domU consoles are mirrored and the limit allows.
pub fn console_line(dom: DomId, line: &str) {
    if dom != DOM0 && !MIRROR.load(Ordering::Relaxed) {
        return;
    }
    if admit(dom) {
        crate::console::write_line(line);
    }
}

/// A warning caused by something `dom` did (a broken ring, bad hypercall input).
pub fn warn(dom: DomId, args: fmt::Arguments) {
    if log::log_enabled!(log::Level::Warn) && admit(dom) {
        log::warn!("d{}: {args}", dom.0);
    }
}

/// A debug message caused by something `dom` did; only counted when it would be shown.
pub fn debug(dom: DomId, args: fmt::Arguments) {
    if log::log_enabled!(log::Level::Debug) && admit(dom) {
        log::debug!("d{}: {args}", dom.0);
    }
}

/// `dom` is being destroyed: reports what it had dropped since its last line.
pub fn forget(dom: DomId) {
    let suppressed = LIMITS.lock().forget(dom.0);
    report(dom, suppressed);
}
