//! What `SysctlCmd::ListDisks` reports: every disk, then each of its partitions, as the
//! `phy:` targets a vbd can name (`fv disk-list`).

use alloc::vec::Vec;

use ferrovisor_abi::domctl::{
    set_padded, DiskInfo, DISK_DISCARD, DISK_FLUSH, DISK_PARTITION, DISK_READ_ONLY,
};
use zerocopy::FromZeros;

use super::{
    names::{disk_name, partition_name},
    partition::PartitionTable,
};

/// One disk as the boot scan found it.
#[derive(Clone, Copy, Debug)]
pub struct ScannedDisk<'a> {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    pub sector_size: u32,
    pub read_only: bool,
    pub flush: bool,
    pub discard: bool,
    pub table: Option<&'a PartitionTable>,
}

/// The entries for `disks` (index = disk number: `vda` is 0), each disk followed by its
/// partitions in number order. Attachment counts start at zero (the caller adds them).
pub fn disk_entries(disks: &[ScannedDisk<'_>]) -> Vec<DiskInfo> {
    let mut out = Vec::new();
    for (index, d) in (0u32..).zip(disks) {
        let mut flags = 0;
        if d.read_only {
            flags |= DISK_READ_ONLY;
        }
        if d.flush {
            flags |= DISK_FLUSH;
        }
        if d.discard {
            flags |= DISK_DISCARD;
        }
        let name = disk_name(index);
        let mut disk = DiskInfo::new_zeroed();
        // Names are at most a few letters and digits: they always fit.
        let _ = set_padded(&mut disk.name, name.as_bytes());
        disk.sectors = d.sectors;
        disk.sector_size = d.sector_size;
        disk.flags = flags;
        out.push(disk);
        for p in d.table.map_or(&[][..], |t| &t.partitions[..]) {
            let mut part = disk;
            let _ = set_padded(&mut part.name, partition_name(index, p.number).as_bytes());
            let _ = set_padded(&mut part.parent, name.as_bytes());
            part.start_sector = p.start;
            part.sectors = p.sectors;
            part.flags = flags | DISK_PARTITION;
            out.push(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use ferrovisor_abi::domctl::padded_str;

    use super::*;
    use crate::storage::partition::{Partition, TableKind};

    #[test]
    fn disks_come_with_their_partitions() {
        let table = PartitionTable {
            kind: TableKind::Mbr,
            partitions: vec![
                Partition {
                    number: 1,
                    start: 2048,
                    sectors: 4096,
                },
                Partition {
                    number: 5,
                    start: 8192,
                    sectors: 100,
                },
            ],
            notes: vec![],
        };
        let disks = [
            ScannedDisk {
                sectors: 16384,
                sector_size: 512,
                read_only: false,
                flush: true,
                discard: true,
                table: Some(&table),
            },
            ScannedDisk {
                sectors: 100,
                sector_size: 4096,
                read_only: true,
                flush: false,
                discard: false,
                table: None,
            },
        ];
        let e = disk_entries(&disks);
        let names: Vec<&[u8]> = e.iter().map(|d| padded_str(&d.name)).collect();
        assert_eq!(names, [&b"vda"[..], b"vda1", b"vda5", b"vdb"]);
        assert_eq!(
            (e[0].sectors, e[0].flags),
            (16384, DISK_FLUSH | DISK_DISCARD)
        );
        assert_eq!(padded_str(&e[2].parent), b"vda");
        assert_eq!((e[2].start_sector, e[2].sectors), (8192, 100));
        assert_eq!(e[2].flags, DISK_FLUSH | DISK_DISCARD | DISK_PARTITION);
        assert_eq!((e[3].sector_size, e[3].flags), (4096, DISK_READ_ONLY));
        assert!(padded_str(&e[3].parent).is_empty());
        assert_eq!((e[1].writers, e[1].readers), (0, 0));
    }
}
