//! 16550 UART (COM1).

use super::port::Port;

pub const COM1: u16 = 0x3f8;

/// A 16550-compatible UART.
pub struct Serial {
    base: u16,
}

impl Serial {
    /// Programs the UART for `baud`, 8 data bits, no parity, one stop bit, FIFOs on,
    /// interrupts off (the console polls).
    ///
    /// # Safety
    /// The hypervisor owns the UART at `base`.
    pub unsafe fn init(base: u16, baud: u32) -> Serial {
        let divisor = (115_200 / baud.clamp(1, 115_200)) as u16;
        let s = Serial { base };
        s.reg(1).write8(0x00); // IER: no interrupts
        s.reg(3).write8(0x80); // LCR: DLAB to set the divisor
        s.reg(0).write8(divisor as u8);
        s.reg(1).write8((divisor >> 8) as u8);
        s.reg(3).write8(0x03); // LCR: 8N1
        s.reg(2).write8(0xc7); // FCR: enable and clear FIFOs
        s.reg(4).write8(0x03); // MCR: DTR | RTS
        s
    }

    /// Uses an already-programmed UART as it is (the fatal path does this).
    ///
    /// # Safety
    /// As for [`Serial::init`].
    pub unsafe fn attach(base: u16) -> Serial {
        Serial { base }
    }

    /// COM1, programmed for `baud`. COM1 belongs to the hypervisor: no domain is given
    /// port I/O (`physdev_op` refuses it, and a guest kernel's `in`/`out` under a virtual
    /// IOPL reach no device), so nothing else drives it.
    pub fn com1(baud: u32) -> Serial {
        // SAFETY: as above, the hypervisor owns COM1.
        unsafe { Serial::init(COM1, baud) }
    }

    /// COM1 as it is programmed (the fatal path, once every other writer has stopped).
    pub fn attach_com1() -> Serial {
        // SAFETY: as in `com1`.
        unsafe { Serial::attach(COM1) }
    }

    fn reg(&self, offset: u16) -> Port {
        // SAFETY: `init`'s caller owns the UART's eight registers.
        unsafe { Port::new(self.base + offset) }
    }

    pub fn write_byte(&self, b: u8) {
        // Wait for the transmit holding register; give up after a bounded wait so a
        // missing or wedged UART cannot hang the hypervisor.
        for _ in 0..100_000 {
            if self.reg(5).read8() & 0x20 != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        self.reg(0).write8(b);
    }

    /// A received byte, if the UART holds one (LSR bit 0, data ready).
    pub fn try_read_byte(&self) -> Option<u8> {
        (self.reg(5).read8() & 0x01 != 0).then(|| self.reg(0).read8())
    }

    pub fn write_bytes(&self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(b);
        }
    }
}
