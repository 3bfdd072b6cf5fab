//! PCI configuration space on this machine: ECAM (PCI Express memory-mapped
//! configuration, from ACPI's MCFG) where the firmware describes it, else configuration
//! mechanism #1 (ports 0xCF8/0xCFC: PCI Local Bus Specification 3.0, 3.2.2.3.2), which
//! reaches the first 256 bytes of each function.

use ferrovisor::{
    acpi::EcamRegion,
    pci::{Bdf, ConfigSpace},
};

use super::{irq::IrqMutex, mmio::Mmio, port::Port};

/// The configuration address and data ports, used as one pair under this lock.
static MECHANISM1: IrqMutex<()> = IrqMutex::new(());

/// How this machine's configuration space is reached.
#[derive(Clone, Copy, Debug)]
pub enum HwConfig {
    /// Memory-mapped, for buses `start_bus..=end_bus` of segment 0.
    Ecam {
        window: Mmio,
        start_bus: u8,
        end_bus: u8,
    },
    /// Ports 0xCF8/0xCFC.
    Ports,
}

impl HwConfig {
    /// ECAM over the MCFG's window for segment 0 (mapped uncached here), or the ports when
    /// there is none or it cannot be mapped (logged).
    pub fn new(ecam: Option<EcamRegion>) -> HwConfig {
        let Some(r) = ecam.filter(|r| r.segment == 0) else {
            return HwConfig::Ports;
        };
        match Mmio::map(r.window_start(), r.window_len()) {
            Ok(window) => HwConfig::Ecam {
                window,
                start_bus: r.start_bus,
                end_bus: r.end_bus,
            },
            Err(e) => {
                log::warn!(
                    "pci: cannot map the ECAM window at {:#x}: {e}; using ports 0xcf8/0xcfc",
                    r.window_start()
                );
                HwConfig::Ports
            }
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            HwConfig::Ecam { .. } => "ECAM (MCFG)",
            HwConfig::Ports => "configuration mechanism #1 (ports 0xcf8/0xcfc)",
        }
    }

    fn ecam_offset(start_bus: u8, end_bus: u8, bdf: Bdf, offset: u16) -> Option<u64> {
        if bdf.bus < start_bus || bdf.bus > end_bus || offset >= 4096 {
            return None;
        }
        Some(
            ((bdf.bus - start_bus) as u64) << 20
                | (bdf.dev as u64) << 15
                | (bdf.func as u64) << 12
                | (offset & !3) as u64,
        )
    }

    fn port_address(bdf: Bdf, offset: u16) -> Option<u32> {
        (offset < 256).then_some(
            0x8000_0000
                | (bdf.bus as u32) << 16
                | (bdf.dev as u32) << 11
                | (bdf.func as u32) << 8
                | (offset & 0xfc) as u32,
        )
    }
}

fn ports() -> (Port, Port) {
    // SAFETY: 0xCF8/0xCFC are the PC's configuration mechanism, which only this module
    // drives (under `MECHANISM1`); dom0 gets no port access to them.
    unsafe { (Port::new(0xcf8), Port::new(0xcfc)) }
}

impl ConfigSpace for HwConfig {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        match *self {
            HwConfig::Ecam {
                window,
                start_bus,
                end_bus,
            } => Self::ecam_offset(start_bus, end_bus, bdf, offset)
                .map_or(u32::MAX, |o| window.read32(o)),
            HwConfig::Ports => {
                let Some(addr) = Self::port_address(bdf, offset) else {
                    return u32::MAX;
                };
                let _pair = MECHANISM1.lock();
                let (a, d) = ports();
                a.write32(addr);
                d.read32()
            }
        }
    }

    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        match *self {
            HwConfig::Ecam {
                window,
                start_bus,
                end_bus,
            } => {
                if let Some(o) = Self::ecam_offset(start_bus, end_bus, bdf, offset) {
                    window.write32(o, value)
                }
            }
            HwConfig::Ports => {
                if let Some(addr) = Self::port_address(bdf, offset) {
                    let _pair = MECHANISM1.lock();
                    let (a, d) = ports();
                    a.write32(addr);
                    d.write32(value);
                }
            }
        }
    }
}
