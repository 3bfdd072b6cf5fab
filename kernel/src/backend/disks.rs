//! The machine's disks as `phy:` targets: each virtio disk's partition table, read once
//! at boot (`storage::partition`), and the log line that names what a guest can be
//! given (`pci: 00:04.0 virtio-blk vda 2048 MiB, 2 partitions`).

use alloc::vec::Vec;

use ferrovisor::storage::{
    listing::{self, ScannedDisk},
    partition::{self, PartitionTable, TableKind},
    ReadFailed, SectorReader, SECTOR_BYTES,
};

use crate::drivers::blk::{self, DiskId};

/// What the boot scan found on each disk (index = [`DiskId`]); `None` where the table
/// could not be read or made no sense (the disk is still usable whole).
static TABLES: spin::Once<Vec<Option<PartitionTable>>> = spin::Once::new();

/// Most sectors one blocking read asks for while scanning (GPT entry arrays are 32).
const READ_CHUNK: usize = 64;

struct Reader {
    disk: DiskId,
    sectors: u64,
}

impl SectorReader for Reader {
    fn sectors(&self) -> u64 {
        self.sectors
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), ReadFailed> {
        for (i, chunk) in buf.chunks_mut(READ_CHUNK * SECTOR_BYTES).enumerate() {
            let at = sector + (i * READ_CHUNK) as u64;
            let count = (chunk.len() / SECTOR_BYTES) as u32;
            let data = blk::read_sectors(self.disk, at, count).map_err(|_| ReadFailed)?;
            if data.len() < chunk.len() {
                return Err(ReadFailed);
            }
            chunk.copy_from_slice(&data[..chunk.len()]);
        }
        Ok(())
    }
}

/// Reads every disk's partition table and logs each disk with what it holds. Needs
/// interrupts (the reads complete by interrupt): after `drivers::probe`.
pub fn scan() {
    let tables = blk::disks()
        .iter()
        .enumerate()
        .map(|(id, d)| {
            let mut reader = Reader {
                disk: id,
                sectors: d.info.capacity,
            };
            let found = partition::read_partitions(&mut reader);
            let what = match &found {
                Ok(t) if t.kind == TableKind::None => {
                    alloc::string::String::from("no partition table")
                }
                Ok(t) => alloc::format!(
                    "{} partition{}",
                    t.partitions.len(),
                    if t.partitions.len() == 1 { "" } else { "s" }
                ),
                Err(e) => alloc::format!("partition table unusable ({e:?}); used whole"),
            };
            log::info!(
                "pci: {} virtio-blk {} {}, {what}",
                d.bdf,
                d.name,
                blk::size_text(&d.info)
            );
            if let Ok(t) = &found {
                for note in &t.notes {
                    log::warn!("virtio-blk {}: partition table: {note:?}", d.name);
                }
            }
            found.ok()
        })
        .collect();
    TABLES.call_once(|| tables);
}

/// The partition table found on `disk` at boot.
fn table(disk: DiskId) -> Option<&'static PartitionTable> {
    TABLES.get()?.get(disk)?.as_ref()
}

/// Every disk and partition, as `ListDisks` reports them.
pub fn list() -> Vec<ferrovisor_abi::domctl::DiskInfo> {
    let scanned: Vec<ScannedDisk<'_>> = blk::disks()
        .iter()
        .enumerate()
        .map(|(id, d)| ScannedDisk {
            sectors: d.info.capacity,
            sector_size: d.info.blk_size,
            read_only: d.info.read_only,
            flush: d.info.flush,
            discard: d.info.discard.is_some(),
            table: table(id),
        })
        .collect();
    listing::disk_entries(&scanned)
}

/// Every disk with the partitions the boot scan found, as vbd targets resolve against.
pub fn targets() -> Vec<ferrovisor::storage::target::Disk> {
    blk::disks()
        .iter()
        .enumerate()
        .map(|(id, d)| ferrovisor::storage::target::Disk {
            index: id as u32,
            sectors: d.info.capacity,
            read_only: d.info.read_only,
            partitions: table(id).map_or_else(Vec::new, |t| t.partitions.clone()),
        })
        .collect()
}
