//! PCI: configuration-space decoding, the bus walk, BARs (with sizing) and the capability
//! list, over any [`ConfigSpace`] (the hardware's, in `arch/x86_64/pci.rs`, or a fake one
//! in the tests).
//!
//! Offsets and bits from the PCI Local Bus Specification 3.0 (6.1 configuration header,
//! 6.2.5 base address registers, 6.7 capabilities list, 6.8.2 MSI-X) and the PCI-to-PCI
//! Bridge Architecture Specification 1.2 (3.2 type 1 header). A device's configuration
//! space is the device's to fill: nothing read from it may make the walk loop, index out
//! of bounds or panic.

use alloc::vec::Vec;
use core::fmt;

pub mod msix;

/// Bus, device, function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    pub bus: u8,
    /// 0..32.
    pub dev: u8,
    /// 0..8.
    pub func: u8,
}

impl Bdf {
    pub const fn new(bus: u8, dev: u8, func: u8) -> Bdf {
        Bdf {
            bus,
            dev: dev & 0x1f,
            func: func & 7,
        }
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

/// Access to configuration space. `offset` is a byte offset, 4-aligned for the 32-bit
/// accessors; the provided narrower ones are built on them. A function that does not
/// exist reads as all ones.
pub trait ConfigSpace {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32;
    fn write32(&self, bdf: Bdf, offset: u16, value: u32);

    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        (self.read32(bdf, offset & !3) >> ((offset & 2) * 8)) as u16
    }

    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        (self.read32(bdf, offset & !3) >> ((offset & 3) * 8)) as u8
    }

    /// A 16-bit write as read-modify-write of its dword: configuration mechanism #1 and
    /// ECAM both allow narrower writes, but one path keeps the fake and real spaces alike.
    /// Registers with write-1-to-clear bits in the other half (the status register next
    /// to the command register) must be written with [`ConfigSpace::write32`] instead.
    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        let shift = (offset & 2) * 8;
        let old = self.read32(bdf, offset & !3);
        let new = (old & !(0xffff << shift)) | (value as u32) << shift;
        self.write32(bdf, offset & !3, new);
    }
}

pub const REG_VENDOR: u16 = 0x00;
pub const REG_COMMAND: u16 = 0x04;
pub const REG_CLASS: u16 = 0x08;
pub const REG_HEADER_TYPE: u16 = 0x0e;
pub const REG_BAR0: u16 = 0x10;
pub const REG_SUBSYSTEM: u16 = 0x2c;
pub const REG_CAP_PTR: u16 = 0x34;
/// Type 1 header: primary, secondary, subordinate bus numbers.
pub const REG_BRIDGE_BUSES: u16 = 0x18;

pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Disables the legacy INTx pin (we use MSI-X).
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const STATUS_CAP_LIST: u32 = 1 << (4 + 16);

/// One function found by [`scan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub revision: u8,
    /// The header layout (0 device, 1 PCI bridge, 2 CardBus), multi-function bit cleared.
    pub header_type: u8,
    /// Subsystem vendor and id (type 0 headers only, else 0).
    pub subsystem_vendor: u16,
    pub subsystem_id: u16,
}

impl Function {
    /// A short name for the class, for the log.
    pub fn class_name(&self) -> &'static str {
        match (self.class, self.subclass) {
            (0x01, 0x00) => "SCSI controller",
            (0x01, 0x01) => "IDE controller",
            (0x01, 0x06) => "SATA controller",
            (0x01, 0x08) => "NVMe controller",
            (0x01, _) => "storage controller",
            (0x02, 0x00) => "Ethernet controller",
            (0x02, _) => "network controller",
            (0x03, _) => "display controller",
            (0x04, _) => "multimedia controller",
            (0x05, _) => "memory controller",
            (0x06, 0x00) => "host bridge",
            (0x06, 0x01) => "ISA bridge",
            (0x06, 0x04) => "PCI bridge",
            (0x06, _) => "bridge",
            (0x07, _) => "communication controller",
            (0x08, _) => "system peripheral",
            (0x0c, 0x03) => "USB controller",
            (0x0c, 0x05) => "SMBus controller",
            (0x0c, _) => "serial bus controller",
            _ => "device",
        }
    }
}

fn read_function(cfg: &impl ConfigSpace, bdf: Bdf) -> Option<Function> {
    let id = cfg.read32(bdf, REG_VENDOR);
    let vendor = id as u16;
    if vendor == 0xffff || vendor == 0 {
        return None;
    }
    let class = cfg.read32(bdf, REG_CLASS);
    let header_type = cfg.read8(bdf, REG_HEADER_TYPE) & 0x7f;
    let sub = if header_type == 0 {
        cfg.read32(bdf, REG_SUBSYSTEM)
    } else {
        0
    };
    Some(Function {
        bdf,
        vendor,
        device: (id >> 16) as u16,
        class: (class >> 24) as u8,
        subclass: (class >> 16) as u8,
        prog_if: (class >> 8) as u8,
        revision: class as u8,
        header_type,
        subsystem_vendor: sub as u16,
        subsystem_id: (sub >> 16) as u16,
    })
}

/// Every function reachable from bus 0: all eight functions of multi-function devices,
/// and the buses behind PCI-to-PCI bridges as the firmware numbered them (a secondary bus
/// already seen, or not above its bridge's bus, is not walked again). Bus, then device,
/// then function order (bridged buses right after their bridge).
pub fn scan(cfg: &impl ConfigSpace) -> Vec<Function> {
    let mut found = Vec::new();
    let mut seen = [false; 256];
    scan_bus(cfg, 0, &mut seen, &mut found);
    found
}

fn scan_bus(cfg: &impl ConfigSpace, bus: u8, seen: &mut [bool; 256], found: &mut Vec<Function>) {
    if core::mem::replace(&mut seen[bus as usize], true) {
        return;
    }
    for dev in 0..32 {
        let Some(f0) = read_function(cfg, Bdf::new(bus, dev, 0)) else {
            continue;
        };
        let multi = cfg.read8(f0.bdf, REG_HEADER_TYPE) & 0x80 != 0;
        let funcs = if multi { 8 } else { 1 };
        for func in 0..funcs {
            let Some(f) = (if func == 0 {
                Some(f0)
            } else {
                read_function(cfg, Bdf::new(bus, dev, func))
            }) else {
                continue;
            };
            found.push(f);
            if f.header_type == 1 {
                let secondary = cfg.read8(f.bdf, REG_BRIDGE_BUSES + 1);
                if secondary > bus {
                    scan_bus(cfg, secondary, seen, found);
                }
            }
        }
    }
}

/// A decoded base address register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    Memory {
        addr: u64,
        size: u64,
        prefetchable: bool,
        is64: bool,
    },
    Io {
        port: u32,
        size: u32,
    },
}

impl Bar {
    /// The memory BAR's address and size, if it is one and has been given an address.
    pub fn memory(&self) -> Option<(u64, u64)> {
        match *self {
            Bar::Memory { addr, size, .. } if addr != 0 && size != 0 => Some((addr, size)),
            _ => None,
        }
    }
}

/// Decodes and sizes the BARs of a type 0 function (six slots; a 64-bit BAR fills its slot
/// and leaves the next `None`). Sizing writes all ones and reads back (PCI 6.2.5.1), with
/// the function's memory and I/O decoding turned off meanwhile, then restores both.
pub fn read_bars(cfg: &impl ConfigSpace, bdf: Bdf) -> [Option<Bar>; 6] {
    let mut bars = [None; 6];
    if cfg.read8(bdf, REG_HEADER_TYPE) & 0x7f != 0 {
        return bars;
    }
    let command = cfg.read16(bdf, REG_COMMAND);
    cfg.write16(bdf, REG_COMMAND, command & !(COMMAND_IO | COMMAND_MEMORY));
    let mut i = 0;
    while i < 6 {
        let off = REG_BAR0 + 4 * i as u16;
        let low = cfg.read32(bdf, off);
        cfg.write32(bdf, off, u32::MAX);
        let low_mask = cfg.read32(bdf, off);
        cfg.write32(bdf, off, low);
        if low & 1 == 1 {
            let mask = low_mask & !3 & 0xffff;
            if mask != 0 {
                bars[i] = Some(Bar::Io {
                    port: low & !3,
                    size: (!mask).wrapping_add(1) & 0xffff,
                });
            }
            i += 1;
            continue;
        }
        let is64 = (low >> 1) & 3 == 2;
        let prefetchable = low & 8 != 0;
        let (addr, mask) = if is64 && i < 5 {
            let hoff = off + 4;
            let high = cfg.read32(bdf, hoff);
            cfg.write32(bdf, hoff, u32::MAX);
            let high_mask = cfg.read32(bdf, hoff);
            cfg.write32(bdf, hoff, high);
            (
                (high as u64) << 32 | (low & !0xf) as u64,
                (high_mask as u64) << 32 | (low_mask & !0xf) as u64,
            )
        } else {
            (
                (low & !0xf) as u64,
                0xffff_ffff_0000_0000 | (low_mask & !0xf) as u64,
            )
        };
        if mask != 0xffff_ffff_0000_0000 && mask != 0 {
            bars[i] = Some(Bar::Memory {
                addr,
                size: (!mask).wrapping_add(1),
                prefetchable,
                is64,
            });
        }
        i += if is64 { 2 } else { 1 };
    }
    cfg.write16(bdf, REG_COMMAND, command);
    bars
}

/// One entry of the capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub id: u8,
    /// Where it starts in configuration space.
    pub offset: u8,
}

pub const CAP_MSI: u8 = 0x05;
pub const CAP_VENDOR: u8 = 0x09;
pub const CAP_PCIE: u8 = 0x10;
pub const CAP_MSIX: u8 = 0x11;

/// The capability list (PCI 6.7), in list order. A pointer below 0x40 ends it; at most 48
/// entries are read (a 256-byte space cannot hold more), so a looping list ends too.
pub fn capabilities(cfg: &impl ConfigSpace, bdf: Bdf) -> Vec<Capability> {
    let mut caps = Vec::new();
    if cfg.read32(bdf, REG_COMMAND) & STATUS_CAP_LIST == 0 {
        return caps;
    }
    let mut ptr = cfg.read8(bdf, REG_CAP_PTR) & !3;
    while ptr >= 0x40 && caps.len() < 48 {
        let head = cfg.read16(bdf, ptr as u16);
        caps.push(Capability {
            id: head as u8,
            offset: ptr,
        });
        ptr = (head >> 8) as u8 & !3;
    }
    caps
}

/// Turns memory decoding and bus mastering on (and INTx off: interrupts come by MSI-X).
/// Written as a dword with the status half zero, so no write-1-to-clear status bit is
/// cleared by accident.
pub fn enable_memory_and_bus_master(cfg: &impl ConfigSpace, bdf: Bdf) {
    let command = cfg.read16(bdf, REG_COMMAND);
    let new = command | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
    cfg.write32(bdf, REG_COMMAND, new as u32);
}

#[cfg(test)]
pub(crate) mod fake {
    //! A configuration space in memory, with BAR size masks, for the tests here and in
    //! `virtio`.
    use std::{cell::RefCell, collections::BTreeMap};

    use super::*;

    #[derive(Default)]
    pub struct FakeConfig {
        pub funcs: RefCell<BTreeMap<Bdf, [u8; 4096]>>,
        /// Per function and BAR register offset: the bits that read back as writable.
        pub bar_masks: BTreeMap<(Bdf, u16), u32>,
        pub writes: RefCell<Vec<(Bdf, u16, u32)>>,
    }

    impl FakeConfig {
        pub fn add(&mut self, bdf: Bdf, vendor: u16, device: u16, class: u32, header: u8) {
            let mut s = [0u8; 4096];
            s[0..2].copy_from_slice(&vendor.to_le_bytes());
            s[2..4].copy_from_slice(&device.to_le_bytes());
            s[8..12].copy_from_slice(&class.to_le_bytes());
            s[0x0e] = header;
            self.funcs.borrow_mut().insert(bdf, s);
        }

        pub fn set8(&self, bdf: Bdf, off: usize, v: u8) {
            self.funcs.borrow_mut().get_mut(&bdf).unwrap()[off] = v;
        }

        pub fn set32(&self, bdf: Bdf, off: usize, v: u32) {
            self.funcs.borrow_mut().get_mut(&bdf).unwrap()[off..off + 4]
                .copy_from_slice(&v.to_le_bytes());
        }

        /// Adds a capability at `off` with the given body (after the id/next bytes),
        /// linked at the list's end.
        pub fn add_cap(&self, bdf: Bdf, off: u8, id: u8, body: &[u8]) {
            let mut funcs = self.funcs.borrow_mut();
            let s = funcs.get_mut(&bdf).unwrap();
            s[6] |= 1 << 4;
            let mut link = 0x34usize;
            while s[link] != 0 {
                link = s[link] as usize + 1;
            }
            s[link] = off;
            s[off as usize] = id;
            s[off as usize + 1] = 0;
            s[off as usize + 2..off as usize + 2 + body.len()].copy_from_slice(body);
        }
    }

    impl ConfigSpace for FakeConfig {
        fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
            let funcs = self.funcs.borrow();
            match funcs.get(&bdf) {
                Some(s) => {
                    let o = offset as usize;
                    u32::from_le_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]])
                }
                None => u32::MAX,
            }
        }

        fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
            self.writes.borrow_mut().push((bdf, offset, value));
            let mut funcs = self.funcs.borrow_mut();
            let Some(s) = funcs.get_mut(&bdf) else {
                return;
            };
            let bar_mask = self.bar_masks.get(&(bdf, offset)).copied().or(
                // Unimplemented BARs are hardwired to zero.
                (0x10..0x28).contains(&offset).then_some(0),
            );
            let value = match bar_mask {
                Some(mask) => {
                    let old = u32::from_le_bytes(s[offset as usize..][..4].try_into().unwrap());
                    // Read-only low bits (type flags) keep their value.
                    (value & mask) | (old & !mask)
                }
                None => value,
            };
            s[offset as usize..offset as usize + 4].copy_from_slice(&value.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fake::FakeConfig, *};

    #[test]
    fn bdf_prints_like_lspci() {
        assert_eq!(Bdf::new(0, 3, 0).to_string(), "00:03.0");
        assert_eq!(Bdf::new(0x1a, 0x1f, 7).to_string(), "1a:1f.7");
    }

    #[test]
    fn scan_finds_functions_and_walks_bridges() {
        let mut c = FakeConfig::default();
        c.add(Bdf::new(0, 0, 0), 0x8086, 0x29c0, 0x0600_0000, 0);
        // A multi-function device with functions 0 and 3.
        c.add(Bdf::new(0, 0x1f, 0), 0x8086, 0x2918, 0x0601_0000, 0x80);
        c.add(Bdf::new(0, 0x1f, 3), 0x8086, 0x2930, 0x0c05_0000, 0);
        // Function 1 of a single-function device is never looked at.
        c.add(Bdf::new(0, 2, 0), 0x1af4, 0x1041, 0x0200_0000, 0);
        c.add(Bdf::new(0, 2, 1), 0x1af4, 0x1042, 0x0100_0000, 0);
        // A bridge to bus 1, and a bridge claiming bus 0 (a loop) on bus 1.
        c.add(Bdf::new(0, 4, 0), 0x1b36, 0x0001, 0x0604_0000, 1);
        c.set8(Bdf::new(0, 4, 0), 0x19, 1);
        c.add(Bdf::new(1, 0, 0), 0x1af4, 0x1042, 0x0100_0000, 0);
        c.add(Bdf::new(1, 1, 0), 0x1b36, 0x0001, 0x0604_0000, 1);
        c.set8(Bdf::new(1, 1, 0), 0x19, 0);
        let found: Vec<_> = scan(&c).iter().map(|f| f.bdf).collect();
        assert_eq!(
            found,
            vec![
                Bdf::new(0, 0, 0),
                Bdf::new(0, 2, 0),
                Bdf::new(0, 4, 0),
                Bdf::new(1, 0, 0),
                Bdf::new(1, 1, 0),
                Bdf::new(0, 0x1f, 0),
                Bdf::new(0, 0x1f, 3),
            ]
        );
        let f = scan(&c)[1];
        assert_eq!(
            (f.vendor, f.device, f.class, f.subclass),
            (0x1af4, 0x1041, 2, 0)
        );
        assert_eq!(f.class_name(), "Ethernet controller");
    }

    #[test]
    fn bars_are_decoded_and_sized() {
        let mut c = FakeConfig::default();
        let d = Bdf::new(0, 3, 0);
        c.add(d, 0x1af4, 0x1041, 0x0200_0000, 0);
        // BAR0: I/O, 32 ports at 0xc040. BAR1: 32-bit memory, 4 KiB at 0xfebd_1000.
        // BAR4/5: 64-bit prefetchable memory, 16 KiB at 0x8_0000_4000.
        c.set32(d, 0x10, 0xc041);
        c.bar_masks.insert((d, 0x10), 0xffff_ffe0);
        c.set32(d, 0x14, 0xfebd_1000);
        c.bar_masks.insert((d, 0x14), 0xffff_f000);
        c.set32(d, 0x20, 0x0000_400c);
        c.bar_masks.insert((d, 0x20), 0xffff_c000);
        c.set32(d, 0x24, 0x8);
        c.bar_masks.insert((d, 0x24), 0xffff_ffff);
        c.set32(d, 4, 0x0010_0007); // command: IO, memory, bus master; status: caps
        let bars = read_bars(&c, d);
        assert_eq!(
            bars[0],
            Some(Bar::Io {
                port: 0xc040,
                size: 32
            })
        );
        assert_eq!(
            bars[1].and_then(|b| b.memory()),
            Some((0xfebd_1000, 0x1000))
        );
        assert_eq!(bars[2], None);
        assert_eq!(
            bars[4],
            Some(Bar::Memory {
                addr: 0x8_0000_4000,
                size: 0x4000,
                prefetchable: true,
                is64: true
            })
        );
        assert_eq!(bars[5], None);
        // Everything is restored, and decoding was off while sizing.
        assert_eq!(c.read32(d, 0x10), 0xc041);
        assert_eq!(c.read32(d, 0x24), 0x8);
        assert_eq!(c.read16(d, 4), 7);
        let writes = c.writes.borrow();
        assert_eq!(writes.first(), Some(&(d, 4, 0x0010_0004)));
    }

    #[test]
    fn capability_walk_stops_on_loops_and_low_pointers() {
        let mut c = FakeConfig::default();
        let d = Bdf::new(0, 3, 0);
        c.add(d, 0x1af4, 0x1041, 0x0200_0000, 0);
        assert!(capabilities(&c, d).is_empty());
        c.add_cap(d, 0x98, CAP_MSIX, &[0; 10]);
        c.add_cap(d, 0x84, CAP_VENDOR, &[0; 14]);
        c.add_cap(d, 0x70, CAP_VENDOR, &[0; 14]);
        let caps = capabilities(&c, d);
        assert_eq!(
            caps.iter().map(|c| (c.id, c.offset)).collect::<Vec<_>>(),
            vec![(CAP_MSIX, 0x98), (CAP_VENDOR, 0x84), (CAP_VENDOR, 0x70)]
        );
        // Make the last one point back at the first: the walk still ends.
        c.set8(d, 0x71, 0x98);
        assert_eq!(capabilities(&c, d).len(), 48);
        // A pointer into the header ends the list.
        c.set8(d, 0x71, 0x10);
        assert_eq!(capabilities(&c, d).len(), 3);
    }

    #[test]
    fn enabling_keeps_status_bits() {
        let mut c = FakeConfig::default();
        let d = Bdf::new(0, 3, 0);
        c.add(d, 0x1af4, 0x1041, 0x0200_0000, 0);
        c.set32(d, 4, 0xf810_0001);
        enable_memory_and_bus_master(&c, d);
        assert_eq!(c.writes.borrow().last(), Some(&(d, 4, 0x0000_0407)));
    }
}
