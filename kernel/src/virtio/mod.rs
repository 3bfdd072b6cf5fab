//! Virtio 1.x (the OASIS "Virtual I/O Device" specification, version 1.1; section numbers
//! below are that document's): device status, feature negotiation, the PCI transport's
//! capabilities (`pci`), split virtqueues (`queue`), and the block (`blk`) and network
//! (`net`) device formats. Hardware-free: the drivers in the hypervisor binary
//! (`drivers/`) do the register accesses and own the DMA memory.
//!
//! Everything a device writes (used-ring indices and entries, configuration fields) is
//! checked before use; a device that breaks the rules gets an error, never a panic.

pub mod blk;
pub mod net;
pub mod pci;
pub mod queue;

/// Device status bits (2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    pub const FAILED: u8 = 128;
}

/// Device-independent feature bits (6).
pub mod feature {
    /// Indirect descriptors (2.6.5.3).
    pub const RING_INDIRECT_DESC: u32 = 28;
    /// used_event / avail_event (2.6.7).
    pub const RING_EVENT_IDX: u32 = 29;
    /// The device complies with this version of the specification: mandatory here.
    pub const VERSION_1: u32 = 32;
    /// The device needs the platform's IOMMU translation; we give machine addresses.
    pub const ACCESS_PLATFORM: u32 = 33;
    pub const RING_PACKED: u32 = 34;
}

/// The feature bit as a mask.
pub const fn bit(n: u32) -> u64 {
    1 << n
}

/// Device types (5): the PCI device id of a modern device is 0x1040 + type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceType {
    Net,
    Block,
    Console,
    Entropy,
    Balloon,
    Scsi,
    Other(u16),
}

impl DeviceType {
    fn from_type(t: u16) -> DeviceType {
        match t {
            1 => DeviceType::Net,
            2 => DeviceType::Block,
            3 => DeviceType::Console,
            4 => DeviceType::Entropy,
            5 => DeviceType::Balloon,
            8 => DeviceType::Scsi,
            n => DeviceType::Other(n),
        }
    }

    /// The virtio device a PCI function is (4.1.2.1): vendor 0x1af4; device ids
    /// 0x1040..=0x107f are modern (type = id - 0x1040); 0x1000..=0x103f are transitional,
    /// with the type in the subsystem id. `None` for anything else.
    pub fn from_pci(vendor: u16, device: u16, subsystem_id: u16) -> Option<DeviceType> {
        if vendor != 0x1af4 {
            return None;
        }
        match device {
            0x1040..=0x107f => Some(DeviceType::from_type(device - 0x1040)),
            0x1000..=0x103f => Some(DeviceType::from_type(subsystem_id)),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            DeviceType::Net => "virtio-net",
            DeviceType::Block => "virtio-blk",
            DeviceType::Console => "virtio-console",
            DeviceType::Entropy => "virtio-rng",
            DeviceType::Balloon => "virtio-balloon",
            DeviceType::Scsi => "virtio-scsi",
            DeviceType::Other(_) => "virtio device",
        }
    }
}

/// Why feature negotiation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureError {
    /// The device does not offer VERSION_1: a legacy-only device.
    NotVersion1,
    /// The device requires a feature we cannot honour (ACCESS_PLATFORM: it sits behind an
    /// IOMMU we do not program).
    Requires(u32),
}

impl core::fmt::Display for FeatureError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FeatureError::NotVersion1 => f.write_str("no VERSION_1 (legacy-only device)"),
            FeatureError::Requires(b) => write!(f, "the device requires feature bit {b}"),
        }
    }
}

/// The features to accept: those of `wanted` the device offers, plus VERSION_1, which it
/// must offer. ACCESS_PLATFORM offered is refused (3.1.1: a driver that does not accept
/// it must fail if the device insists; we hand the device machine addresses, which is
/// only right without an IOMMU in between).
pub fn negotiate(offered: u64, wanted: u64) -> Result<u64, FeatureError> {
    if offered & bit(feature::VERSION_1) == 0 {
        return Err(FeatureError::NotVersion1);
    }
    if offered & bit(feature::ACCESS_PLATFORM) != 0 {
        return Err(FeatureError::Requires(feature::ACCESS_PLATFORM));
    }
    // Never take transport features we do not implement, whatever the caller asked for.
    let unsupported = bit(feature::RING_INDIRECT_DESC)
        | bit(feature::RING_EVENT_IDX)
        | bit(feature::RING_PACKED)
        | bit(feature::ACCESS_PLATFORM);
    Ok(offered & (wanted & !unsupported) | bit(feature::VERSION_1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_types_from_pci_ids() {
        assert_eq!(
            DeviceType::from_pci(0x1af4, 0x1041, 0),
            Some(DeviceType::Net)
        );
        assert_eq!(
            DeviceType::from_pci(0x1af4, 0x1042, 0),
            Some(DeviceType::Block)
        );
        assert_eq!(
            DeviceType::from_pci(0x1af4, 0x1000, 1),
            Some(DeviceType::Net)
        );
        assert_eq!(
            DeviceType::from_pci(0x1af4, 0x1001, 2),
            Some(DeviceType::Block)
        );
        assert_eq!(DeviceType::from_pci(0x1af4, 0x1100, 2), None);
        assert_eq!(DeviceType::from_pci(0x8086, 0x1041, 0), None);
        assert_eq!(
            DeviceType::from_pci(0x1af4, 0x1053, 0),
            Some(DeviceType::Other(0x13))
        );
    }

    #[test]
    fn negotiation_needs_version_1_and_drops_what_we_lack() {
        let v1 = bit(feature::VERSION_1);
        assert_eq!(negotiate(0xff, 0xff), Err(FeatureError::NotVersion1));
        assert_eq!(
            negotiate(v1 | bit(feature::ACCESS_PLATFORM), 0),
            Err(FeatureError::Requires(feature::ACCESS_PLATFORM))
        );
        let offered = v1 | 0b1010 | bit(feature::RING_EVENT_IDX) | bit(feature::RING_INDIRECT_DESC);
        assert_eq!(negotiate(offered, u64::MAX), Ok(v1 | 0b1010));
        assert_eq!(negotiate(offered, 0b0110), Ok(v1 | 0b0010));
    }
}
