//! QEMU's isa-debug-exit device: writing `v` makes QEMU exit with status `(v << 1) | 1`.
//! Only used when the command line names its port (`debug_exit=0xf4`): it is how the
//! integration tests get the hypervisor's verdict.

use core::sync::atomic::{AtomicU32, Ordering};

use super::port::Port;

/// The configured port, or 0.
static PORT: AtomicU32 = AtomicU32::new(0);

/// Names QEMU's isa-debug-exit port.
///
/// # Safety
/// `port` must be an isa-debug-exit device (or nothing at all): [`report`] writes to it.
pub unsafe fn configure(port: u16) {
    PORT.store(port as u32 | 0x1_0000, Ordering::SeqCst);
}

/// Why the hypervisor stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Verdict {
    /// Halted cleanly (QEMU exit status 33).
    Halted = 0x10,
    /// A panic or a fatal exception (35).
    Fatal = 0x11,
    /// Refused to boot: a configuration error such as a missing dom0 module (37).
    Refused = 0x12,
    /// dom0 crashed, or shut down with reason crash (39).
    GuestCrashed = 0x13,
}

/// Reports `verdict` on the configured port, if there is one.
pub fn report(verdict: Verdict) {
    let v = PORT.load(Ordering::SeqCst);
    if v != 0 {
        // SAFETY: `configure`'s caller vouched that this port is an isa-debug-exit device;
        // it is written as the machine stops.
        unsafe { Port::new(v as u16) }.write32(verdict as u32);
    }
}
