//! Port I/O.

/// An I/O port. Making one is `unsafe`: its owner promises the port belongs to the device
/// it drives and that nothing else programs that device behind its back. Using it is safe.
#[derive(Clone, Copy, Debug)]
pub struct Port(u16);

impl Port {
    /// # Safety
    /// The caller owns the device behind `port` (see the type's documentation).
    pub const unsafe fn new(port: u16) -> Self {
        Port(port)
    }

    pub fn read8(self) -> u8 {
        // SAFETY: the port's owner vouched for it in `Port::new`.
        unsafe { x86::io::inb(self.0) }
    }

    pub fn write8(self, value: u8) {
        // SAFETY: as above.
        unsafe { x86::io::outb(self.0, value) }
    }

    pub fn write32(self, value: u32) {
        // SAFETY: as above.
        unsafe { x86::io::outl(self.0, value) }
    }

    pub fn read32(self) -> u32 {
        // SAFETY: as above.
        unsafe { x86::io::inl(self.0) }
    }
}
