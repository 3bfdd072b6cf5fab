//! Disks as the hypervisor hands them to guests: partition tables read at boot
//! ([`partition`]), the host-side names of disks and partitions ([`names`]), the guest's
//! device names and Xen virtual-device numbers ([`vdev`]), `phy:` targets with their
//! bounds checks ([`target`]) and the rules for attaching a target to a domain
//! ([`attach`]).
//!
//! Sectors are 512 bytes everywhere here, as in `io/blkif.h` and the MBR/GPT formats
//! (a disk with larger sectors is still addressed in 512-byte units).

pub mod attach;
pub mod listing;
pub mod names;
pub mod partition;
pub mod target;
pub mod vdev;

/// Bytes in the unit every sector number here counts.
pub const SECTOR_BYTES: usize = 512;

/// Why a disk read failed (the driver's detail stays with the driver).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadFailed;

/// Reading a disk sector by sector, as the partition parser needs it: the binary
/// implements it over the virtio disk at boot, tests over a `Vec`.
pub trait SectorReader {
    /// The disk's size in 512-byte sectors.
    fn sectors(&self) -> u64;
    /// Reads `buf.len() / 512` sectors from `sector` (`buf.len()` is a multiple of 512).
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), ReadFailed>;
}
