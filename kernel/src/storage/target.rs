//! `phy:` targets: a whole disk or one partition, as a window of sectors on a disk, and
//! the bounds check that maps a guest's sector to the disk's.

use alloc::vec::Vec;

use ferrovisor_abi::domctl::DeviceRefusal;

use super::{
    names::{parse_target, TargetName},
    partition::Partition,
};

/// A window of a disk given to a guest as its whole virtual disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The machine disk's index (`vda` = 0).
    pub disk: u32,
    /// The partition, or `None` for the whole disk.
    pub partition: Option<u32>,
    /// First disk sector and length, 512-byte sectors.
    pub start: u64,
    pub sectors: u64,
    /// The disk refuses writes.
    pub read_only: bool,
}

/// A request that does not fit in its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfRange;

impl Target {
    /// Whether two targets share a sector (a whole disk overlaps each of its partitions).
    pub fn overlaps(&self, other: &Target) -> bool {
        self.disk == other.disk
            && self.start < other.start.saturating_add(other.sectors)
            && other.start < self.start.saturating_add(self.sectors)
    }

    /// The disk sector of the guest's `sector`, if `sector .. sector + count` lies inside
    /// the target (all 512-byte units, overflow-checked).
    pub fn map(&self, sector: u64, count: u64) -> Result<u64, OutOfRange> {
        let end = sector.checked_add(count).ok_or(OutOfRange)?;
        if end > self.sectors {
            return Err(OutOfRange);
        }
        self.start.checked_add(sector).ok_or(OutOfRange)
    }
}

/// A machine disk as the partition scan at boot found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub index: u32,
    /// 512-byte sectors.
    pub sectors: u64,
    pub read_only: bool,
    pub partitions: Vec<Partition>,
}

impl Disk {
    /// The target a parsed name names on this disk.
    pub fn target(&self, partition: Option<u32>) -> Option<Target> {
        let (start, sectors) = match partition {
            None => (0, self.sectors),
            Some(n) => {
                let p = self.partitions.iter().find(|p| p.number == n)?;
                (p.start, p.sectors)
            }
        };
        Some(Target {
            disk: self.index,
            partition,
            start,
            sectors,
            read_only: self.read_only,
        })
    }
}

/// Resolves a `phy:` name (`vda`, `vdb2`) against the machine's disks.
pub fn resolve(name: &str, disks: &[Disk]) -> Result<Target, DeviceRefusal> {
    let TargetName { disk, partition } = parse_target(name).ok_or(DeviceRefusal::NoSuchTarget)?;
    disks
        .iter()
        .find(|d| d.index == disk)
        .and_then(|d| d.target(partition))
        .ok_or(DeviceRefusal::NoSuchTarget)
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;

    fn disks() -> Vec<Disk> {
        vec![
            Disk {
                index: 0,
                sectors: 10000,
                read_only: false,
                partitions: vec![
                    Partition {
                        number: 1,
                        start: 2048,
                        sectors: 2048,
                    },
                    Partition {
                        number: 5,
                        start: 4200,
                        sectors: 100,
                    },
                ],
            },
            Disk {
                index: 1,
                sectors: 500,
                read_only: true,
                partitions: vec![],
            },
        ]
    }

    #[test]
    fn names_resolve_to_windows() {
        let d = disks();
        let p1 = resolve("vda1", &d).unwrap();
        assert_eq!((p1.start, p1.sectors, p1.partition), (2048, 2048, Some(1)));
        let whole = resolve("vda", &d).unwrap();
        assert_eq!((whole.start, whole.sectors), (0, 10000));
        assert!(resolve("vdb", &d).unwrap().read_only);
        assert_eq!(resolve("vda2", &d), Err(DeviceRefusal::NoSuchTarget));
        assert_eq!(resolve("vdc", &d), Err(DeviceRefusal::NoSuchTarget));
        assert_eq!(resolve("sda", &d), Err(DeviceRefusal::NoSuchTarget));
    }

    #[test]
    fn a_disk_overlaps_its_partitions_but_partitions_not_each_other() {
        let d = disks();
        let whole = resolve("vda", &d).unwrap();
        let p1 = resolve("vda1", &d).unwrap();
        let p5 = resolve("vda5", &d).unwrap();
        assert!(whole.overlaps(&p1) && p1.overlaps(&whole));
        assert!(!p1.overlaps(&p5));
        assert!(!p1.overlaps(&resolve("vdb", &d).unwrap()));
    }

    #[test]
    fn requests_map_inside_the_window_only() {
        let p1 = resolve("vda1", &disks()).unwrap();
        assert_eq!(p1.map(0, 8), Ok(2048));
        assert_eq!(p1.map(2040, 8), Ok(4088));
        assert_eq!(p1.map(2041, 8), Err(OutOfRange));
        assert_eq!(p1.map(2048, 0), Ok(4096));
        assert_eq!(p1.map(2049, 0), Err(OutOfRange));
        assert_eq!(p1.map(u64::MAX, 2), Err(OutOfRange));
        assert_eq!(p1.map(1, u64::MAX), Err(OutOfRange));
    }
}
