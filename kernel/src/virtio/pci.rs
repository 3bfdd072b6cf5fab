//! The virtio PCI transport, modern interface (4.1.4): where the configuration structures
//! are (vendor-specific capabilities naming a BAR, an offset and a length) and the layout
//! of the common configuration structure.

use alloc::vec::Vec;

use crate::pci::{Bar, Bdf, Capability, ConfigSpace, CAP_VENDOR};

/// `cfg_type` values (4.1.4).
pub const CFG_COMMON: u8 = 1;
pub const CFG_NOTIFY: u8 = 2;
pub const CFG_ISR: u8 = 3;
pub const CFG_DEVICE: u8 = 4;

/// Common configuration registers (4.1.4.3), byte offsets.
pub mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const MSIX_CONFIG: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// The structure's size: a shorter region is refused.
    pub const LEN: u32 = 0x38;
}

/// What `msix_config` / `queue_msix_vector` read back when the device could not take the
/// vector (4.1.4.3: "NO_VECTOR").
pub const NO_VECTOR: u16 = 0xffff;

/// A configuration structure: `length` bytes at `offset` in BAR `bar`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub bar: u8,
    pub offset: u32,
    pub length: u32,
}

impl Region {
    /// Whether the region lies inside a BAR of `bar_size` bytes.
    pub fn fits(&self, bar_size: u64) -> bool {
        (self.offset as u64)
            .checked_add(self.length as u64)
            .is_some_and(|end| end <= bar_size)
    }
}

/// The structures a modern virtio PCI function exposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioCaps {
    pub common: Region,
    pub notify: Region,
    /// Queue `q`'s notification address is `notify.offset + queue_notify_off(q) *
    /// notify_off_multiplier` (4.1.4.4).
    pub notify_off_multiplier: u32,
    pub isr: Region,
    pub device: Option<Region>,
}

/// Why a function cannot be driven through the modern transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// No usable common, notify or ISR structure (a legacy-only device).
    Missing(&'static str),
    /// A structure's region lies outside its BAR, or the BAR is not memory.
    OutsideBar(&'static str),
}

impl core::fmt::Display for TransportError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TransportError::Missing(w) => write!(f, "no usable {w} configuration capability"),
            TransportError::OutsideBar(w) => {
                write!(f, "the {w} configuration lies outside a memory BAR")
            }
        }
    }
}

/// Finds the structures in the capability list (the first usable capability of each
/// type, 4.1.4: "the driver SHOULD use the first instance"), checked against the BARs:
/// each must lie inside a memory BAR. Port-I/O BARs are not used.
pub fn find_caps(
    cfg: &impl ConfigSpace,
    bdf: Bdf,
    caps: &[Capability],
    bars: &[Option<Bar>; 6],
) -> Result<VirtioCaps, TransportError> {
    let mut found: Vec<(u8, Region, u32)> = Vec::new();
    for c in caps.iter().filter(|c| c.id == CAP_VENDOR) {
        let o = c.offset as u16;
        let cap_len = cfg.read8(bdf, o + 2);
        let cfg_type = cfg.read8(bdf, o + 3);
        let bar = cfg.read8(bdf, o + 4);
        if cap_len < 16 || bar > 5 || found.iter().any(|(t, _, _)| *t == cfg_type) {
            continue;
        }
        let region = Region {
            bar,
            offset: cfg.read32(bdf, o + 8),
            length: cfg.read32(bdf, o + 12),
        };
        let multiplier = if cfg_type == CFG_NOTIFY {
            if cap_len < 20 {
                continue;
            }
            cfg.read32(bdf, o + 16)
        } else {
            0
        };
        let usable = match cfg_type {
            CFG_COMMON => region.length >= common::LEN,
            CFG_NOTIFY => region.length >= 2,
            CFG_ISR => region.length >= 1,
            CFG_DEVICE => region.length >= 1,
            _ => false,
        };
        if usable {
            found.push((cfg_type, region, multiplier));
        }
    }
    let get = |t: u8| found.iter().find(|(ty, _, _)| *ty == t).copied();
    let check = |r: Region, what: &'static str| -> Result<Region, TransportError> {
        match bars[r.bar as usize].and_then(|b| b.memory()) {
            Some((_, size)) if r.fits(size) => Ok(r),
            _ => Err(TransportError::OutsideBar(what)),
        }
    };
    let (_, common, _) = get(CFG_COMMON).ok_or(TransportError::Missing("common"))?;
    let (_, notify, multiplier) = get(CFG_NOTIFY).ok_or(TransportError::Missing("notify"))?;
    let (_, isr, _) = get(CFG_ISR).ok_or(TransportError::Missing("ISR"))?;
    let device = match get(CFG_DEVICE) {
        Some((_, r, _)) => Some(check(r, "device")?),
        None => None,
    };
    Ok(VirtioCaps {
        common: check(common, "common")?,
        notify: check(notify, "notify")?,
        notify_off_multiplier: multiplier,
        isr: check(isr, "ISR")?,
        device,
    })
}

/// Offset in the notify structure's BAR where queue notifications go, if inside the
/// structure (4.1.4.4).
pub fn notify_offset(caps: &VirtioCaps, queue_notify_off: u16) -> Option<u64> {
    let rel = queue_notify_off as u64 * caps.notify_off_multiplier as u64;
    (rel + 2 <= caps.notify.length as u64).then_some(caps.notify.offset as u64 + rel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{capabilities, fake::FakeConfig};

    fn vcap(cfg_type: u8, bar: u8, offset: u32, length: u32, extra: Option<u32>) -> Vec<u8> {
        // Body after id/next: cap_len, cfg_type, bar, id, pad[2], offset, length[, mult].
        let mut b = vec![
            if extra.is_some() { 20 } else { 16 },
            cfg_type,
            bar,
            0,
            0,
            0,
        ];
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&length.to_le_bytes());
        if let Some(m) = extra {
            b.extend_from_slice(&m.to_le_bytes());
        }
        b
    }

    fn qemu_like() -> (FakeConfig, Bdf) {
        let mut c = FakeConfig::default();
        let d = Bdf::new(0, 4, 0);
        c.add(d, 0x1af4, 0x1042, 0x0100_0000, 0);
        c.add_cap(d, 0x84, CAP_VENDOR, &vcap(CFG_COMMON, 4, 0, 0x1000, None));
        c.add_cap(d, 0x70, CAP_VENDOR, &vcap(CFG_ISR, 4, 0x1000, 0x1000, None));
        c.add_cap(
            d,
            0x60,
            CAP_VENDOR,
            &vcap(CFG_DEVICE, 4, 0x2000, 0x1000, None),
        );
        c.add_cap(
            d,
            0xb0,
            CAP_VENDOR,
            &vcap(CFG_NOTIFY, 4, 0x3000, 0x1000, Some(4)),
        );
        // A second common capability (ignored: the first wins).
        c.add_cap(d, 0xc8, CAP_VENDOR, &vcap(CFG_COMMON, 2, 0, 0x1000, None));
        (c, d)
    }

    fn bars(size: u64) -> [Option<Bar>; 6] {
        let mut b = [None; 6];
        b[4] = Some(Bar::Memory {
            addr: 0xfe00_0000,
            size,
            prefetchable: true,
            is64: true,
        });
        b
    }

    #[test]
    fn finds_qemu_style_capabilities() {
        let (c, d) = qemu_like();
        let caps = capabilities(&c, d);
        let v = find_caps(&c, d, &caps, &bars(0x4000)).unwrap();
        assert_eq!(
            v.common,
            Region {
                bar: 4,
                offset: 0,
                length: 0x1000
            }
        );
        assert_eq!(v.notify.offset, 0x3000);
        assert_eq!(v.notify_off_multiplier, 4);
        assert_eq!(v.isr.offset, 0x1000);
        assert_eq!(v.device.map(|r| r.offset), Some(0x2000));
        assert_eq!(notify_offset(&v, 1), Some(0x3004));
        assert_eq!(notify_offset(&v, 1023), Some(0x3ffc));
        assert_eq!(notify_offset(&v, 1024), None);
    }

    #[test]
    fn refuses_regions_outside_their_bar_and_missing_ones() {
        let (c, d) = qemu_like();
        let caps = capabilities(&c, d);
        assert_eq!(
            find_caps(&c, d, &caps, &bars(0x3800)),
            Err(TransportError::OutsideBar("notify"))
        );
        assert_eq!(
            find_caps(&c, d, &caps, &[None; 6]),
            Err(TransportError::OutsideBar("device"))
        );
        let only_common = &caps[..1];
        assert_eq!(
            find_caps(&c, d, only_common, &bars(0x4000)),
            Err(TransportError::Missing("notify"))
        );
        let r = Region {
            bar: 0,
            offset: u32::MAX,
            length: 2,
        };
        assert!(!r.fits(1 << 32));
        assert!(r.fits((1 << 32) + 1));
    }
}
