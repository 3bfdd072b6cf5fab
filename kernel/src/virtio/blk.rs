//! The virtio block device (5.2): feature bits, the configuration layout, request headers
//! and the checks a request passes before it reaches the device.

use core::fmt;

/// Feature bits (5.2.3).
pub mod feature {
    pub const SIZE_MAX: u32 = 1;
    pub const SEG_MAX: u32 = 2;
    pub const RO: u32 = 5;
    pub const BLK_SIZE: u32 = 6;
    pub const FLUSH: u32 = 9;
    pub const DISCARD: u32 = 13;
}

/// The features the driver takes when offered.
pub const WANTED: u64 = super::bit(feature::SIZE_MAX)
    | super::bit(feature::SEG_MAX)
    | super::bit(feature::RO)
    | super::bit(feature::BLK_SIZE)
    | super::bit(feature::FLUSH)
    | super::bit(feature::DISCARD);

/// Configuration fields (5.2.4), byte offsets in the device configuration structure.
pub mod config {
    pub const CAPACITY: u64 = 0;
    pub const SIZE_MAX: u64 = 8;
    pub const SEG_MAX: u64 = 12;
    pub const BLK_SIZE: u64 = 20;
    pub const MAX_DISCARD_SECTORS: u64 = 36;
    pub const MAX_DISCARD_SEG: u64 = 40;
    pub const DISCARD_SECTOR_ALIGNMENT: u64 = 44;
    /// Bytes the driver reads (up to the discard fields).
    pub const LEN: u32 = 48;
}

/// Request types (5.2.6).
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_DISCARD: u32 = 11;

/// Status byte values (5.2.6).
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// Sector size of every virtio-blk address and length, whatever `blk_size` says.
pub const SECTOR: u64 = 512;
/// Bytes of the request header (type, reserved, sector).
pub const HEADER_LEN: usize = 16;
/// Bytes of one discard segment (sector, num_sectors, flags).
pub const DISCARD_SEGMENT_LEN: usize = 16;

/// Discard limits (5.2.4, VIRTIO_BLK_F_DISCARD).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscardLimits {
    /// Largest discard, in 512-byte sectors.
    pub max_sectors: u32,
    /// Segments per discard request (we send one).
    pub max_segments: u32,
    /// Discards should start and end on multiples of this many sectors (1: none).
    pub sector_alignment: u32,
}

/// What the driver knows about a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    /// Size in 512-byte sectors.
    pub capacity: u64,
    /// The device's preferred block size in bytes (512 unless BLK_SIZE).
    pub blk_size: u32,
    pub read_only: bool,
    /// FLUSH negotiated: the device has a cache and flush requests.
    pub flush: bool,
    pub discard: Option<DiscardLimits>,
    /// Data segments per request (SEG_MAX), if the device says.
    pub seg_max: Option<u32>,
    /// Bytes per data segment (SIZE_MAX), if the device says.
    pub size_max: Option<u32>,
}

impl DiskInfo {
    /// Reads the configuration through `read32` (a 4-aligned offset of the device
    /// structure) with the negotiated `features`; nonsense values (a zero or
    /// non-power-of-two block size, zero limits) fall back to safe defaults.
    pub fn read(features: u64, read32: impl Fn(u64) -> u32) -> DiskInfo {
        let has = |b: u32| features & super::bit(b) != 0;
        let capacity =
            read32(config::CAPACITY) as u64 | (read32(config::CAPACITY + 4) as u64) << 32;
        let blk_size = if has(feature::BLK_SIZE) {
            Some(read32(config::BLK_SIZE))
                .filter(|s| s.is_power_of_two() && (512..=65536).contains(s))
        } else {
            None
        };
        let nonzero = |v: u32| (v != 0).then_some(v);
        DiskInfo {
            capacity,
            blk_size: blk_size.unwrap_or(512),
            read_only: has(feature::RO),
            flush: has(feature::FLUSH),
            discard: has(feature::DISCARD).then(|| DiscardLimits {
                max_sectors: nonzero(read32(config::MAX_DISCARD_SECTORS)).unwrap_or(u32::MAX),
                max_segments: nonzero(read32(config::MAX_DISCARD_SEG)).unwrap_or(1),
                sector_alignment: nonzero(read32(config::DISCARD_SECTOR_ALIGNMENT)).unwrap_or(1),
            }),
            seg_max: has(feature::SEG_MAX)
                .then(|| read32(config::SEG_MAX))
                .and_then(nonzero),
            size_max: has(feature::SIZE_MAX)
                .then(|| read32(config::SIZE_MAX))
                .and_then(nonzero),
        }
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.capacity.saturating_mul(SECTOR)
    }
}

/// A block operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read into the buffers, from `sector` on.
    Read,
    /// Write the buffers, from `sector` on.
    Write,
    /// Make every completed write durable (no buffers; `sector` ignored).
    Flush,
    /// Tell the device `sectors` sectors from `sector` on are unused (no buffers).
    Discard { sectors: u32 },
}

/// Why a request was refused before it reached the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// The disk is read-only.
    ReadOnly,
    /// The device did not offer the operation (FLUSH, DISCARD).
    Unsupported,
    /// Past the end of the disk.
    OutOfRange,
    /// A buffer length that is zero or not a multiple of 512, a data operation without
    /// buffers, a flush or discard with some, or too many or too large segments.
    BadBuffers,
    /// A discard larger than the device takes, or of zero sectors.
    BadDiscard,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestError::ReadOnly => "the disk is read-only",
            RequestError::Unsupported => "the device does not support the operation",
            RequestError::OutOfRange => "past the end of the disk",
            RequestError::BadBuffers => "buffers unfit for the request",
            RequestError::BadDiscard => "discard size out of the device's limits",
        })
    }
}

/// Checks a request against the disk: `buffer_lens` are the data segments' byte lengths.
pub fn check(
    info: &DiskInfo,
    op: Op,
    sector: u64,
    buffer_lens: &[u32],
) -> Result<(), RequestError> {
    match op {
        Op::Read | Op::Write => {
            if op == Op::Write && info.read_only {
                return Err(RequestError::ReadOnly);
            }
            if buffer_lens.is_empty()
                || buffer_lens
                    .iter()
                    .any(|&l| l == 0 || l as u64 % SECTOR != 0)
                || info
                    .seg_max
                    .is_some_and(|m| buffer_lens.len() as u64 > m as u64)
                || info
                    .size_max
                    .is_some_and(|m| buffer_lens.iter().any(|&l| l > m))
            {
                return Err(RequestError::BadBuffers);
            }
            let bytes: u64 = buffer_lens.iter().map(|&l| l as u64).sum();
            let end = sector.checked_add(bytes / SECTOR);
            if end.is_none_or(|e| e > info.capacity) {
                return Err(RequestError::OutOfRange);
            }
            Ok(())
        }
        Op::Flush => {
            if !buffer_lens.is_empty() {
                return Err(RequestError::BadBuffers);
            }
            // Without FLUSH the device has no volatile cache to flush (5.2.5: writes
            // complete durably); succeeding is what the caller wants, but the driver
            // completes such a flush itself, so here it is "unsupported" by the device.
            if !info.flush {
                return Err(RequestError::Unsupported);
            }
            Ok(())
        }
        Op::Discard { sectors } => {
            if info.read_only {
                return Err(RequestError::ReadOnly);
            }
            let Some(limits) = info.discard else {
                return Err(RequestError::Unsupported);
            };
            if !buffer_lens.is_empty() {
                return Err(RequestError::BadBuffers);
            }
            if sectors == 0 || sectors > limits.max_sectors {
                return Err(RequestError::BadDiscard);
            }
            if sector
                .checked_add(sectors as u64)
                .is_none_or(|e| e > info.capacity)
            {
                return Err(RequestError::OutOfRange);
            }
            Ok(())
        }
    }
}

/// The 16-byte request header for `op` at `sector`.
pub fn header(op: Op, sector: u64) -> [u8; HEADER_LEN] {
    let t = match op {
        Op::Read => T_IN,
        Op::Write => T_OUT,
        Op::Flush => T_FLUSH,
        Op::Discard { .. } => T_DISCARD,
    };
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&t.to_le_bytes());
    // A flush's sector must be zero (5.2.6.1: "the sector field ... MUST be 0" for
    // types other than IN and OUT).
    let s = if matches!(op, Op::Read | Op::Write) {
        sector
    } else {
        0
    };
    h[8..16].copy_from_slice(&s.to_le_bytes());
    h
}

/// The discard segment (5.2.6: `virtio_blk_discard_write_zeroes`, flags 0).
pub fn discard_segment(sector: u64, sectors: u32) -> [u8; DISCARD_SEGMENT_LEN] {
    let mut d = [0u8; DISCARD_SEGMENT_LEN];
    d[0..8].copy_from_slice(&sector.to_le_bytes());
    d[8..12].copy_from_slice(&sectors.to_le_bytes());
    d
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// The device reported an I/O error.
    IoError,
    /// The device does not support the request.
    Unsupported,
    /// The device broke the protocol (an unknown status byte, a short used length, a
    /// device reset): treat as an I/O error.
    DeviceError,
}

impl Status {
    /// The status byte the device wrote, given the used length it reported (which must
    /// cover the status byte, the last writable byte of the chain).
    pub fn from_device(byte: u8, used_len: u32) -> Status {
        if used_len == 0 {
            return Status::DeviceError;
        }
        match byte {
            S_OK => Status::Ok,
            S_IOERR => Status::IoError,
            S_UNSUPP => Status::Unsupported,
            _ => Status::DeviceError,
        }
    }
}

/// Linux's name for disk `index` (0: vda, 25: vdz, 26: vdaa, …).
pub fn disk_name(index: usize) -> heapless::String<8> {
    let mut letters = heapless::Vec::<u8, 4>::new();
    let mut n = index;
    loop {
        let _ = letters.push(b'a' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    let mut s = heapless::String::new();
    let _ = s.push_str("vd");
    for &c in letters.iter().rev() {
        let _ = s.push(c as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::bit;

    fn disk() -> DiskInfo {
        DiskInfo {
            capacity: 4096,
            blk_size: 512,
            read_only: false,
            flush: true,
            discard: Some(DiscardLimits {
                max_sectors: 1024,
                max_segments: 1,
                sector_alignment: 8,
            }),
            seg_max: Some(4),
            size_max: Some(8192),
        }
    }

    #[test]
    fn config_is_read_with_the_negotiated_features() {
        let cfg = |off: u64| match off {
            0 => 0x0040_0000,
            4 => 0x1,
            8 => 0x1000,
            12 => 126,
            20 => 4096,
            36 => 0,
            40 => 1,
            44 => 8,
            _ => 0xdead,
        };
        let all = WANTED;
        let i = DiskInfo::read(all, cfg);
        assert_eq!(i.capacity, 0x1_0040_0000);
        assert_eq!(i.blk_size, 4096);
        assert!(i.read_only && i.flush);
        assert_eq!(
            i.discard,
            Some(DiscardLimits {
                max_sectors: u32::MAX,
                max_segments: 1,
                sector_alignment: 8
            })
        );
        assert_eq!((i.seg_max, i.size_max), (Some(126), Some(0x1000)));
        let none = DiskInfo::read(0, cfg);
        assert_eq!(none.blk_size, 512);
        assert!(!none.read_only && !none.flush && none.discard.is_none());
        assert_eq!(none.seg_max, None);
        // A silly block size is ignored.
        let i = DiskInfo::read(bit(feature::BLK_SIZE), |o| if o == 20 { 700 } else { 0 });
        assert_eq!(i.blk_size, 512);
    }

    #[test]
    fn requests_are_checked() {
        let d = disk();
        assert_eq!(check(&d, Op::Read, 0, &[4096, 512]), Ok(()));
        assert_eq!(check(&d, Op::Read, 4095, &[512]), Ok(()));
        assert_eq!(
            check(&d, Op::Read, 4095, &[1024]),
            Err(RequestError::OutOfRange)
        );
        assert_eq!(
            check(&d, Op::Read, u64::MAX, &[512]),
            Err(RequestError::OutOfRange)
        );
        assert_eq!(check(&d, Op::Read, 0, &[]), Err(RequestError::BadBuffers));
        assert_eq!(
            check(&d, Op::Read, 0, &[100]),
            Err(RequestError::BadBuffers)
        );
        assert_eq!(
            check(&d, Op::Read, 0, &[512; 5]),
            Err(RequestError::BadBuffers)
        );
        assert_eq!(
            check(&d, Op::Write, 0, &[16384]),
            Err(RequestError::BadBuffers)
        );
        assert_eq!(check(&d, Op::Flush, 0, &[]), Ok(()));
        assert_eq!(
            check(&d, Op::Flush, 0, &[512]),
            Err(RequestError::BadBuffers)
        );
        assert_eq!(check(&d, Op::Discard { sectors: 8 }, 8, &[]), Ok(()));
        assert_eq!(
            check(&d, Op::Discard { sectors: 2048 }, 0, &[]),
            Err(RequestError::BadDiscard)
        );
        assert_eq!(
            check(&d, Op::Discard { sectors: 8 }, 4092, &[]),
            Err(RequestError::OutOfRange)
        );
        let ro = DiskInfo {
            read_only: true,
            flush: false,
            discard: None,
            ..d
        };
        assert_eq!(
            check(&ro, Op::Write, 0, &[512]),
            Err(RequestError::ReadOnly)
        );
        assert_eq!(check(&ro, Op::Read, 0, &[512]), Ok(()));
        assert_eq!(
            check(&ro, Op::Flush, 0, &[]),
            Err(RequestError::Unsupported)
        );
        let rw = DiskInfo {
            read_only: false,
            ..ro
        };
        assert_eq!(
            check(&rw, Op::Discard { sectors: 1 }, 0, &[]),
            Err(RequestError::Unsupported)
        );
    }

    #[test]
    fn headers_statuses_and_names() {
        let h = header(Op::Write, 0x1122_3344_5566);
        assert_eq!(&h[0..4], &[1, 0, 0, 0]);
        assert_eq!(
            u64::from_le_bytes(h[8..16].try_into().unwrap()),
            0x1122_3344_5566
        );
        assert_eq!(
            &header(Op::Flush, 99)[..],
            &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(header(Op::Discard { sectors: 1 }, 5)[0], 11);
        let d = discard_segment(16, 8);
        assert_eq!(u64::from_le_bytes(d[0..8].try_into().unwrap()), 16);
        assert_eq!(u32::from_le_bytes(d[8..12].try_into().unwrap()), 8);
        assert_eq!(Status::from_device(0, 513), Status::Ok);
        assert_eq!(Status::from_device(1, 1), Status::IoError);
        assert_eq!(Status::from_device(2, 1), Status::Unsupported);
        assert_eq!(Status::from_device(0, 0), Status::DeviceError);
        assert_eq!(Status::from_device(9, 1), Status::DeviceError);
        assert_eq!(disk_name(0), "vda");
        assert_eq!(disk_name(25), "vdz");
        assert_eq!(disk_name(26), "vdaa");
        assert_eq!(disk_name(701), "vdzz");
        assert_eq!(disk_name(702), "vdaaa");
    }
}
