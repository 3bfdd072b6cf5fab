//! Partition tables: MBR (with extended/logical partitions) and GPT, read through a
//! [`SectorReader`].
//!
//! Numbering follows Linux (`block/partitions/msdos.c`, `efi.c`): MBR primaries keep their
//! slot number 1–4, logical partitions inside extended ones count from 5 in chain order;
//! GPT entries are numbered by their index in the entry array plus one. Extended
//! containers are not returned (they hold only the chain).
//!
//! The table is on a disk the user brought: anything odd is refused or clipped and noted
//! in [`PartitionTable::notes`], never trusted. A partition running past the disk's end is
//! clipped to it (as Linux truncates), one starting beyond it or overlapping an earlier
//! one is dropped, the extended chain is followed at most [`MAX_PARTITIONS`] links and
//! never revisits a sector, and GPT's entry array is bounded before it is read.

use alloc::{vec, vec::Vec};

use super::{ReadFailed, SectorReader, SECTOR_BYTES};
use crate::guest_image::decompress::crc32;

/// The highest partition number kept (Linux's `DISK_MAX_PARTS` is 256 minors, one for
/// the whole disk; the extended vdev encoding also stops at 255).
pub const MAX_PARTITIONS: u32 = 255;
/// The largest GPT entry array read (the usual one is 128 entries of 128 bytes: 16 KiB).
pub const MAX_GPT_ENTRY_BYTES: usize = 1 << 20;

/// One partition: its number, first sector and length (512-byte sectors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    pub number: u32,
    pub start: u64,
    pub sectors: u64,
}

impl Partition {
    /// The sector after the last one.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.sectors)
    }
}

/// Which kind of table was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// No recognisable table: the disk is used whole.
    None,
    Mbr,
    /// GPT; `backup` when the primary header or entries were bad and the backup at the
    /// disk's last sector was used.
    Gpt {
        backup: bool,
    },
}

/// Something in the table that was clipped or ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// The partition ran past the disk's end and was cut to it.
    Clipped { number: u32 },
    /// The partition starts at or past the disk's end (or outside its container): dropped.
    OutOfRange { number: u32 },
    /// The partition overlaps partition `with`, found earlier: dropped.
    Overlap { number: u32, with: u32 },
    /// The extended chain looped, ran too long or left its container: cut there.
    ChainCut,
    /// More partitions than [`MAX_PARTITIONS`]: the rest are ignored.
    TooMany,
    /// The primary GPT was bad for this reason (the backup was used).
    PrimaryGptBad(GptFault),
}

/// What is wrong with a GPT header or its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GptFault {
    Signature,
    HeaderSize,
    HeaderCrc,
    /// `my_lba` is not where the header was read.
    WrongLba,
    /// The usable range is empty or beyond the disk.
    UsableRange,
    /// Entry size not 128·2ⁿ (≤ 4096), or the array is larger than we read.
    EntryGeometry,
    /// The entry array lies beyond the disk.
    EntriesBeyondDisk,
    EntriesCrc,
    /// The disk is too small to hold a GPT.
    DiskTooSmall,
}

/// Why no table could be returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionError {
    /// The disk could not be read.
    Read(ReadFailed),
    /// A protective MBR announces GPT, but neither GPT header is usable.
    Gpt { primary: GptFault, backup: GptFault },
}

impl From<ReadFailed> for PartitionError {
    fn from(e: ReadFailed) -> Self {
        PartitionError::Read(e)
    }
}

/// A disk's partitions, sorted by number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTable {
    pub kind: TableKind,
    pub partitions: Vec<Partition>,
    pub notes: Vec<Note>,
}

impl PartitionTable {
    /// The partition of that number.
    pub fn get(&self, number: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == number)
    }
}

const MBR_SIGNATURE: [u8; 2] = [0x55, 0xaa];
const MBR_ENTRIES: usize = 446;
const MBR_TYPE_GPT: u8 = 0xee;
/// DOS, Win95 LBA and Linux extended partitions.
const MBR_EXTENDED_TYPES: [u8; 3] = [0x05, 0x0f, 0x85];

#[derive(Clone, Copy)]
struct MbrEntry {
    boot: u8,
    kind: u8,
    start: u32,
    sectors: u32,
}

fn mbr_entries(sector: &[u8]) -> Option<[MbrEntry; 4]> {
    if sector.get(510..512) != Some(&MBR_SIGNATURE[..]) {
        return None;
    }
    let mut out = [MbrEntry {
        boot: 0,
        kind: 0,
        start: 0,
        sectors: 0,
    }; 4];
    for (i, e) in out.iter_mut().enumerate() {
        let b = &sector[MBR_ENTRIES + 16 * i..MBR_ENTRIES + 16 * (i + 1)];
        *e = MbrEntry {
            boot: b[0],
            kind: b[4],
            start: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            sectors: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        };
    }
    Some(out)
}

/// Collects partitions, clipping and refusing as the module doc says.
struct Builder {
    disk: u64,
    partitions: Vec<Partition>,
    notes: Vec<Note>,
}

impl Builder {
    /// Adds a partition of `[start, start + sectors)` that must lie in `[lo, hi)` (the disk
    /// or its container).
    fn add(&mut self, number: u32, start: u64, sectors: u64, lo: u64, hi: u64) {
        if number > MAX_PARTITIONS {
            if !self.notes.contains(&Note::TooMany) {
                self.notes.push(Note::TooMany);
            }
            return;
        }
        let hi = hi.min(self.disk);
        if start < lo || start >= hi || sectors == 0 {
            self.notes.push(Note::OutOfRange { number });
            return;
        }
        let mut sectors = sectors;
        if start.saturating_add(sectors) > hi {
            sectors = hi - start;
            self.notes.push(Note::Clipped { number });
        }
        let end = start + sectors;
        if let Some(other) = self
            .partitions
            .iter()
            .find(|p| start < p.end() && p.start < end)
        {
            self.notes.push(Note::Overlap {
                number,
                with: other.number,
            });
            return;
        }
        self.partitions.push(Partition {
            number,
            start,
            sectors,
        });
    }

    fn finish(mut self, kind: TableKind) -> PartitionTable {
        self.partitions.sort_by_key(|p| p.number);
        PartitionTable {
            kind,
            partitions: self.partitions,
            notes: self.notes,
        }
    }
}

/// Reads the disk's partition table. A disk without a valid MBR signature (or with a
/// boot sector that is not a table) has no partitions; a protective MBR leads to GPT.
pub fn read_partitions(disk: &mut impl SectorReader) -> Result<PartitionTable, PartitionError> {
    let sectors = disk.sectors();
    let mut b = Builder {
        disk: sectors,
        partitions: Vec::new(),
        notes: Vec::new(),
    };
    if sectors == 0 {
        return Ok(b.finish(TableKind::None));
    }
    let mut mbr = [0u8; SECTOR_BYTES];
    disk.read(0, &mut mbr)?;
    let Some(entries) = mbr_entries(&mbr) else {
        return Ok(b.finish(TableKind::None));
    };
    // A FAT boot sector also ends in 55 AA; its would-be boot flags are rarely 0 or 0x80
    // (Linux's msdos.c tells them apart the same way).
    if entries.iter().any(|e| e.boot != 0 && e.boot != 0x80) {
        return Ok(b.finish(TableKind::None));
    }
    if entries.iter().any(|e| e.kind == MBR_TYPE_GPT) {
        return read_gpt(disk, b);
    }
    let mut next_logical = 5;
    for (slot, e) in (1u32..).zip(entries.iter()) {
        if e.kind == 0 || e.sectors == 0 {
            continue;
        }
        let start = u64::from(e.start);
        let len = u64::from(e.sectors);
        if MBR_EXTENDED_TYPES.contains(&e.kind) {
            read_logicals(disk, &mut b, start, len, &mut next_logical)?;
        } else {
            b.add(slot, start, len, 0, sectors);
        }
    }
    Ok(b.finish(TableKind::Mbr))
}

/// Follows the chain of extended boot records in the container `[base, base + len)`.
/// Each record's data entries are relative to the record, its link to the container.
fn read_logicals(
    disk: &mut impl SectorReader,
    b: &mut Builder,
    base: u64,
    len: u64,
    next: &mut u32,
) -> Result<(), PartitionError> {
    let limit = base.saturating_add(len).min(b.disk);
    let mut visited: Vec<u64> = Vec::new();
    let mut ebr = base;
    loop {
        if ebr < base
            || ebr >= limit
            || visited.contains(&ebr)
            || visited.len() as u32 >= MAX_PARTITIONS
        {
            b.notes.push(Note::ChainCut);
            return Ok(());
        }
        visited.push(ebr);
        let mut sector = [0u8; SECTOR_BYTES];
        disk.read(ebr, &mut sector)?;
        let Some(entries) = mbr_entries(&sector) else {
            // The chain simply ends where the records stop (Linux does the same).
            return Ok(());
        };
        let mut link = None;
        for e in entries.iter() {
            if e.kind == 0 || e.sectors == 0 {
                continue;
            }
            if MBR_EXTENDED_TYPES.contains(&e.kind) {
                link.get_or_insert(base.saturating_add(u64::from(e.start)));
                continue;
            }
            if *next > MAX_PARTITIONS {
                if !b.notes.contains(&Note::TooMany) {
                    b.notes.push(Note::TooMany);
                }
                return Ok(());
            }
            let start = ebr.saturating_add(u64::from(e.start));
            b.add(*next, start, u64::from(e.sectors), base, limit);
            *next += 1;
        }
        match link {
            Some(l) => ebr = l,
            None => return Ok(()),
        }
    }
}

const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
const GPT_HEADER_MIN: usize = 92;
const GPT_ENTRY_MIN: usize = 128;

struct GptHeader {
    first_usable: u64,
    last_usable: u64,
    entries_lba: u64,
    num_entries: u32,
    entry_size: u32,
    entries_crc: u32,
}

fn le64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

fn le32(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}

/// Reads and checks the header at `lba` and its entry array; returns the entries' bytes.
fn gpt_at(
    disk: &mut impl SectorReader,
    lba: u64,
) -> Result<Result<(GptHeader, Vec<u8>), GptFault>, ReadFailed> {
    let sectors = disk.sectors();
    let mut sector = [0u8; SECTOR_BYTES];
    disk.read(lba, &mut sector)?;
    if &sector[0..8] != GPT_SIGNATURE {
        return Ok(Err(GptFault::Signature));
    }
    let header_size = le32(&sector, 12) as usize;
    if !(GPT_HEADER_MIN..=SECTOR_BYTES).contains(&header_size) {
        return Ok(Err(GptFault::HeaderSize));
    }
    let crc = le32(&sector, 16);
    let mut copy = sector;
    copy[16..20].fill(0);
    if crc32(&copy[..header_size]) != crc {
        return Ok(Err(GptFault::HeaderCrc));
    }
    if le64(&sector, 24) != lba {
        return Ok(Err(GptFault::WrongLba));
    }
    let h = GptHeader {
        first_usable: le64(&sector, 40),
        last_usable: le64(&sector, 48),
        entries_lba: le64(&sector, 72),
        num_entries: le32(&sector, 80),
        entry_size: le32(&sector, 84),
        entries_crc: le32(&sector, 88),
    };
    if h.first_usable > h.last_usable || h.last_usable >= sectors {
        return Ok(Err(GptFault::UsableRange));
    }
    let entry_size = h.entry_size as usize;
    let bytes = (h.num_entries as usize).checked_mul(entry_size);
    let Some(bytes) = bytes.filter(|&n| {
        (GPT_ENTRY_MIN..=4096).contains(&entry_size)
            && entry_size.is_power_of_two()
            && n <= MAX_GPT_ENTRY_BYTES
    }) else {
        return Ok(Err(GptFault::EntryGeometry));
    };
    let array_sectors = bytes.div_ceil(SECTOR_BYTES) as u64;
    if h.entries_lba == 0
        || h.entries_lba
            .checked_add(array_sectors)
            .is_none_or(|end| end > sectors)
    {
        return Ok(Err(GptFault::EntriesBeyondDisk));
    }
    let mut array = vec![0u8; array_sectors as usize * SECTOR_BYTES];
    if !array.is_empty() {
        disk.read(h.entries_lba, &mut array)?;
    }
    array.truncate(bytes);
    if crc32(&array) != h.entries_crc {
        return Ok(Err(GptFault::EntriesCrc));
    }
    Ok(Ok((h, array)))
}

fn read_gpt(
    disk: &mut impl SectorReader,
    mut b: Builder,
) -> Result<PartitionTable, PartitionError> {
    let sectors = disk.sectors();
    // Protective MBR, primary header, at least one entry sector, backup header.
    if sectors < 4 {
        return Err(PartitionError::Gpt {
            primary: GptFault::DiskTooSmall,
            backup: GptFault::DiskTooSmall,
        });
    }
    let (backup_used, (h, array)) = match gpt_at(disk, 1)? {
        Ok(found) => (false, found),
        Err(primary) => match gpt_at(disk, sectors - 1)? {
            Ok(found) => {
                b.notes.push(Note::PrimaryGptBad(primary));
                (true, found)
            }
            Err(backup) => return Err(PartitionError::Gpt { primary, backup }),
        },
    };
    let lo = h.first_usable;
    let hi = h.last_usable.saturating_add(1);
    for (number, entry) in (1u32..).zip(array.chunks_exact(h.entry_size as usize)) {
        if entry[0..16].iter().all(|&x| x == 0) {
            continue;
        }
        let first = le64(entry, 32);
        let last = le64(entry, 40);
        if last < first {
            b.notes.push(Note::OutOfRange { number });
            continue;
        }
        b.add(number, first, last - first + 1, lo, hi);
    }
    Ok(b.finish(TableKind::Gpt {
        backup: backup_used,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk in memory; `reads` counts reads so a loop would show.
    struct Disk {
        data: Vec<u8>,
        reads: u32,
    }

    impl Disk {
        fn new(sectors: u64) -> Self {
            Disk {
                data: vec![0; sectors as usize * SECTOR_BYTES],
                reads: 0,
            }
        }
        fn sector(&mut self, lba: u64) -> &mut [u8] {
            let o = lba as usize * SECTOR_BYTES;
            &mut self.data[o..o + SECTOR_BYTES]
        }
        /// Writes an MBR-style record at `lba`.
        fn mbr(&mut self, lba: u64, entries: &[(u8, u32, u32)]) {
            let s = self.sector(lba);
            for (i, &(kind, start, len)) in entries.iter().enumerate() {
                let e = &mut s[MBR_ENTRIES + 16 * i..MBR_ENTRIES + 16 * (i + 1)];
                e[4] = kind;
                e[8..12].copy_from_slice(&start.to_le_bytes());
                e[12..16].copy_from_slice(&len.to_le_bytes());
            }
            s[510] = 0x55;
            s[511] = 0xaa;
        }
    }

    impl SectorReader for Disk {
        fn sectors(&self) -> u64 {
            (self.data.len() / SECTOR_BYTES) as u64
        }
        fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), ReadFailed> {
            self.reads += 1;
            assert!(self.reads < 10_000, "the parser loops");
            let o = usize::try_from(sector).map_err(|_| ReadFailed)? * SECTOR_BYTES;
            let src = self.data.get(o..o + buf.len()).ok_or(ReadFailed)?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    fn part(number: u32, start: u64, sectors: u64) -> Partition {
        Partition {
            number,
            start,
            sectors,
        }
    }

    #[test]
    fn a_blank_disk_has_no_table() {
        let mut d = Disk::new(16);
        let t = read_partitions(&mut d).unwrap();
        assert_eq!(t.kind, TableKind::None);
        assert!(t.partitions.is_empty());
        let mut empty = Disk::new(0);
        assert_eq!(read_partitions(&mut empty).unwrap().kind, TableKind::None);
    }

    #[test]
    fn mbr_primaries_keep_their_slot_numbers() {
        let mut d = Disk::new(8192);
        d.mbr(0, &[(0x83, 2048, 2048), (0, 0, 0), (0x83, 4096, 4096)]);
        let t = read_partitions(&mut d).unwrap();
        assert_eq!(t.kind, TableKind::Mbr);
        assert_eq!(t.partitions, [part(1, 2048, 2048), part(3, 4096, 4096)]);
        assert!(t.notes.is_empty());
    }

    #[test]
    fn logical_partitions_count_from_five() {
        let mut d = Disk::new(20000);
        d.mbr(0, &[(0x83, 2048, 2048), (0x05, 4096, 10000)]);
        // EBR 1 at 4096: data at +63, link to the container's +3000.
        d.mbr(4096, &[(0x83, 63, 1000), (0x05, 3000, 2000)]);
        // EBR 2 at 7096: data at +63, end of chain.
        d.mbr(7096, &[(0x83, 63, 1500)]);
        let t = read_partitions(&mut d).unwrap();
        assert_eq!(
            t.partitions,
            [
                part(1, 2048, 2048),
                part(5, 4096 + 63, 1000),
                part(6, 7096 + 63, 1500)
            ]
        );
    }

    #[test]
    fn an_extended_chain_that_loops_is_cut() {
        let mut d = Disk::new(20000);
        d.mbr(0, &[(0x05, 4096, 10000)]);
        d.mbr(4096, &[(0x83, 1, 10), (0x05, 100, 100)]);
        // The second record links back to the first.
        d.mbr(4196, &[(0x83, 1, 10), (0x05, 0, 100)]);
        let t = read_partitions(&mut d).unwrap();
        assert_eq!(t.partitions, [part(5, 4097, 10), part(6, 4197, 10)]);
        assert!(t.notes.contains(&Note::ChainCut));
    }

    #[test]
    fn a_long_chain_stops_at_the_partition_limit() {
        let mut d = Disk::new(4000);
        d.mbr(0, &[(0x05, 1, 3990)]);
        // Every record holds a one-sector partition (the record's own sector) and links
        // to the next sector: thousands of links.
        for i in 1..3990u32 {
            d.mbr(u64::from(i), &[(0x83, 0, 1), (0x05, i, 1)]);
        }
        let t = read_partitions(&mut d).unwrap();
        assert!(t.partitions.len() <= MAX_PARTITIONS as usize);
        assert!(t.partitions.iter().all(|p| p.number <= MAX_PARTITIONS));
        assert!(d.reads <= MAX_PARTITIONS + 2);
    }

    #[test]
    fn hostile_primaries_are_clipped_or_dropped() {
        let mut d = Disk::new(1000);
        d.mbr(
            0,
            &[
                (0x83, 100, 200),
                // Overlaps partition 1.
                (0x83, 250, 100),
                // Runs past the end: clipped to 900 sectors.
                (0x83, 100 + 200 + 100 + 100, u32::MAX),
                // Starts beyond the end.
                (0x83, 5000, 10),
            ],
        );
        let t = read_partitions(&mut d).unwrap();
        assert_eq!(t.partitions, [part(1, 100, 200), part(3, 500, 500)]);
        assert!(t.notes.contains(&Note::Overlap { number: 2, with: 1 }));
        assert!(t.notes.contains(&Note::Clipped { number: 3 }));
        assert!(t.notes.contains(&Note::OutOfRange { number: 4 }));
    }

    #[test]
    fn a_logical_partition_outside_its_container_is_dropped() {
        let mut d = Disk::new(10000);
        d.mbr(0, &[(0x05, 1000, 1000)]);
        d.mbr(1000, &[(0x83, 5000, 10)]);
        let t = read_partitions(&mut d).unwrap();
        assert!(t.partitions.is_empty());
        assert_eq!(t.notes, [Note::OutOfRange { number: 5 }]);
    }

    #[test]
    fn a_boot_sector_is_not_a_table() {
        let mut d = Disk::new(100);
        d.mbr(0, &[(0x83, 1, 10)]);
        d.sector(0)[MBR_ENTRIES] = 0x12;
        assert_eq!(read_partitions(&mut d).unwrap().kind, TableKind::None);
    }

    /// Writes a GPT (header at `lba`, entries at `entries_lba`) with the given partitions.
    fn write_gpt(d: &mut Disk, lba: u64, entries_lba: u64, parts: &[(u64, u64)], n: u32) {
        let sectors = d.sectors();
        let mut array = vec![0u8; n as usize * 128];
        for (i, &(first, last)) in parts.iter().enumerate() {
            let e = &mut array[i * 128..(i + 1) * 128];
            e[0] = 0xaf; // any non-zero type GUID
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
        }
        let o = entries_lba as usize * SECTOR_BYTES;
        d.data[o..o + array.len()].copy_from_slice(&array);
        let s = d.sector(lba);
        s.fill(0);
        s[0..8].copy_from_slice(GPT_SIGNATURE);
        s[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        s[12..16].copy_from_slice(&92u32.to_le_bytes());
        s[24..32].copy_from_slice(&lba.to_le_bytes());
        let alt = if lba == 1 { sectors - 1 } else { 1 };
        s[32..40].copy_from_slice(&alt.to_le_bytes());
        s[40..48].copy_from_slice(&34u64.to_le_bytes());
        s[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
        s[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        s[80..84].copy_from_slice(&n.to_le_bytes());
        s[84..88].copy_from_slice(&128u32.to_le_bytes());
        s[88..92].copy_from_slice(&crc32(&array).to_le_bytes());
        let crc = crc32(&s[..92]);
        s[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    fn gpt_disk() -> Disk {
        let mut d = Disk::new(10000);
        d.mbr(0, &[(0xee, 1, 9999)]);
        let parts = [(2048, 4095), (4096, 9000)];
        write_gpt(&mut d, 1, 2, &parts, 128);
        write_gpt(&mut d, 9999, 10000 - 33, &parts, 128);
        d
    }

    #[test]
    fn gpt_entries_are_numbered_by_index() {
        let mut d = gpt_disk();
        let t = read_partitions(&mut d).unwrap();
        assert_eq!(t.kind, TableKind::Gpt { backup: false });
        assert_eq!(t.partitions, [part(1, 2048, 2048), part(2, 4096, 4905)]);
    }

    #[test]
    fn a_bad_primary_gpt_falls_back_to_the_backup() {
        let mut d = gpt_disk();
        d.sector(1)[30] ^= 1; // the header CRC no longer matches
        let t = read_partitions(&mut d).unwrap();
        assert_eq!(t.kind, TableKind::Gpt { backup: true });
        assert_eq!(t.notes, [Note::PrimaryGptBad(GptFault::HeaderCrc)]);
        assert_eq!(t.partitions.len(), 2);

        let mut d = gpt_disk();
        d.sector(2)[40] ^= 1; // an entry changed: the array CRC no longer matches
        let t = read_partitions(&mut d).unwrap();
        assert_eq!(t.notes, [Note::PrimaryGptBad(GptFault::EntriesCrc)]);
    }

    #[test]
    fn both_gpts_bad_is_refused_with_reasons() {
        let mut d = gpt_disk();
        d.sector(1)[0] = b'X';
        d.sector(9999)[30] ^= 1;
        assert_eq!(
            read_partitions(&mut d),
            Err(PartitionError::Gpt {
                primary: GptFault::Signature,
                backup: GptFault::HeaderCrc
            })
        );
    }

    #[test]
    fn a_huge_gpt_entry_count_is_refused_before_reading() {
        let mut d = Disk::new(10000);
        d.mbr(0, &[(0xee, 1, 9999)]);
        write_gpt(&mut d, 1, 2, &[], 1);
        // Claim 2^32 - 1 entries and fix up the header CRC.
        let s = d.sector(1);
        s[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
        s[16..20].fill(0);
        let crc = crc32(&s[..92]);
        s[16..20].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            read_partitions(&mut d),
            Err(PartitionError::Gpt {
                primary: GptFault::EntryGeometry,
                backup: GptFault::Signature
            })
        );
    }

    #[test]
    fn gpt_entries_outside_the_usable_range_or_reversed_are_dropped() {
        let mut d = Disk::new(10000);
        d.mbr(0, &[(0xee, 1, 9999)]);
        let parts = [
            (10, 100),
            (5000, 4000),
            (3000, 4000),
            (3500, 3600),
            (9000, u64::MAX),
        ];
        write_gpt(&mut d, 1, 2, &parts, 128);
        let t = read_partitions(&mut d).unwrap();
        assert_eq!(t.partitions, [part(3, 3000, 1001), part(5, 9000, 967)]);
        assert!(t.notes.contains(&Note::OutOfRange { number: 1 }));
        assert!(t.notes.contains(&Note::OutOfRange { number: 2 }));
        assert!(t.notes.contains(&Note::Overlap { number: 4, with: 3 }));
        assert!(t.notes.contains(&Note::Clipped { number: 5 }));
    }

    #[test]
    fn a_failing_read_is_an_error() {
        struct Broken;
        impl SectorReader for Broken {
            fn sectors(&self) -> u64 {
                100
            }
            fn read(&mut self, _: u64, _: &mut [u8]) -> Result<(), ReadFailed> {
                Err(ReadFailed)
            }
        }
        assert_eq!(
            read_partitions(&mut Broken),
            Err(PartitionError::Read(ReadFailed))
        );
    }
}
