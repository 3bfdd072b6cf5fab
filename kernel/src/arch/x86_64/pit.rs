//! The 8254 PIT, used once at boot to calibrate the TSC.

use super::{cpu::rdtsc, port::Port};

pub const PIT_HZ: u64 = 1_193_182;

/// Measures TSC ticks per second against PIT channel 2 (gate and output on port 0x61, so
/// no interrupt is needed). Takes the best of several 10 ms windows: a window that was
/// stretched by an emulator hiccup only ever reads high.
pub fn calibrate_tsc() -> Option<u64> {
    // SAFETY: the PIT and the keyboard-controller port B are legacy devices the hypervisor
    // owns; only channel 2 and its gate are touched.
    let (ctrl, ch2, port_b) = unsafe { (Port::new(0x43), Port::new(0x42), Port::new(0x61)) };
    const WINDOW_TICKS: u64 = PIT_HZ / 100; // 10 ms
    let mut best: Option<u64> = None;
    for _ in 0..5 {
        // Gate off, speaker off; channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count).
        port_b.write8(port_b.read8() & !0x03);
        ctrl.write8(0b1011_0000);
        ch2.write8(WINDOW_TICKS as u8);
        ch2.write8((WINDOW_TICKS >> 8) as u8);
        // Gate on: counting starts; OUT2 (port 0x61 bit 5) rises at terminal count. The
        // TSC is read before the gate opens, so a delay can only lengthen a window (and the
        // minimum over the windows discards it), never shorten it.
        let gate = (port_b.read8() & !0x02) | 0x01;
        let start = rdtsc();
        port_b.write8(gate);
        let mut spins: u64 = 0;
        while port_b.read8() & 0x20 == 0 {
            spins += 1;
            if spins > 5_000_000 {
                return None; // no PIT (a 10 ms window takes far fewer port reads)
            }
            core::hint::spin_loop();
        }
        let delta = rdtsc() - start;
        best = Some(best.map_or(delta, |b| b.min(delta)));
    }
    port_b.write8(port_b.read8() & !0x03);
    best.map(|ticks| ticks * PIT_HZ / WINDOW_TICKS)
}

/// Masks every line of both legacy 8259 PICs, after moving their vectors away from the
/// exception range, so a stray legacy interrupt can never look like a CPU exception.
pub fn disable_legacy_pic() {
    // SAFETY: the 8259s are legacy devices the hypervisor owns; this is their standard
    // initialisation sequence followed by a full mask.
    let (m_cmd, m_data, s_cmd, s_data) = unsafe {
        (
            Port::new(0x20),
            Port::new(0x21),
            Port::new(0xa0),
            Port::new(0xa1),
        )
    };
    m_cmd.write8(0x11);
    s_cmd.write8(0x11);
    m_data.write8(0x20);
    s_data.write8(0x28);
    m_data.write8(0x04);
    s_data.write8(0x02);
    m_data.write8(0x01);
    s_data.write8(0x01);
    m_data.write8(0xff);
    s_data.write8(0xff);
}
