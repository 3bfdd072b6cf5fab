//! The CMOS real-time clock: read once at boot for the wall-clock time.

use ferrovisor::time::rtc::RtcRegisters;

use super::port::Port;

fn ports() -> (Port, Port) {
    // SAFETY: the CMOS index/data ports belong to the hypervisor; NMIs stay enabled (bit 7
    // of the index is left clear).
    unsafe { (Port::new(0x70), Port::new(0x71)) }
}

fn read(reg: u8) -> u8 {
    let (index, data) = ports();
    index.write8(reg);
    data.read8()
}

fn update_in_progress() -> bool {
    read(0x0a) & 0x80 != 0
}

fn snapshot() -> RtcRegisters {
    RtcRegisters {
        seconds: read(0x00),
        minutes: read(0x02),
        hours: read(0x04),
        day: read(0x07),
        month: read(0x08),
        year: read(0x09),
        // The FADT names the century register; until ACPI is parsed, use the common 0x32
        // and let the decoder reject a value that is not a plausible century.
        century: Some(read(0x32)),
        status_b: read(0x0b),
    }
}

/// Reads the RTC registers consistently: wait for no update in progress, then read until
/// two snapshots agree (the registers can change between reads).
pub fn read_registers() -> RtcRegisters {
    let mut last = None;
    for _ in 0..1000 {
        let mut spins = 0;
        while update_in_progress() && spins < 1_000_000 {
            spins += 1;
            core::hint::spin_loop();
        }
        let now = snapshot();
        if last == Some(now) {
            return now;
        }
        last = Some(now);
    }
    last.unwrap_or_else(snapshot)
}
