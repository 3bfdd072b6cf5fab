//! QEMU's isa-debug-exit device: writing `v` makes QEMU exit with status `(v << 1) | 1`.
//! Only used when the command line names its port (`debug_exit=0xf4`): it is how the
//! integration tests get the hypervisor's verdict.

use super::port::Port;

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
}

/// Reports `verdict` on the configured port, if there is one.
pub fn report(port: Option<u16>, verdict: Verdict) {
    if let Some(port) = port {
        // SAFETY: the administrator named this port as QEMU's isa-debug-exit device on the
        // command line; it is written once, as the machine stops.
        unsafe { Port::new(port) }.write32(verdict as u32);
    }
}
