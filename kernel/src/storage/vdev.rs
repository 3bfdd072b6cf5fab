//! Guest device names and Xen virtual-device numbers (the vbd's `virtual-device` node).
//!
//! Encoding (Xen's `xen-vbd-interface(7)`, as xl implements it):
//! - `xvd` (and `d<disk>p<part>`): `202 << 8 | disk << 4 | part` for disk and partition
//!   up to 15, otherwise `1 << 28 | disk << 8 | part` (disk < 2²⁰, partition < 256);
//! - `sd`: `8 << 8 | disk << 4 | part`, disk and partition up to 15;
//! - `hd`: `3 << 8 | disk << 6 | part` for disks 0–1, `22 << 8 | (disk - 2) << 6 | part`
//!   for disks 2–3, partitions up to 63;
//! - a bare number (decimal, `0x` hex or `0` octal) is the number itself.
//!
//! Decoding follows Linux 6.1's blkfront (`xen_translate_vdev`, `xlvbd_alloc_gendisk`):
//! every device appears in the guest as `xvd<letters>[part]`; SCSI majors 8, 65–71 and
//! 128–135 map 16 disks each; IDE majors 3 and 22 keep only the disk (the partition is
//! dropped); the extended form's minor must fit in 20 bits; numbers at or above
//! `2 << 28` are ignored.

use alloc::string::String;
use core::fmt::Write;

use super::names::{parse_decimal, push_disk_letters, split_letters_number};

/// The xvd major (`XENVBD_MAJOR`).
pub const XENVBD_MAJOR: u32 = 202;
/// The extended numbering's flag (`1 << 28`).
pub const VDEV_EXTENDED: u32 = 1 << 28;
const SCSI_DISK0_MAJOR: u32 = 8;
const IDE0_MAJOR: u32 = 3;
const IDE1_MAJOR: u32 = 22;
/// Linux's `MINORBITS`: an extended minor must be below `1 << 20`.
const MINOR_BITS: u32 = 20;

/// Encodes an `xvd` disk and partition (0 = whole disk).
pub fn encode_xvd(disk: u32, partition: u32) -> Option<u32> {
    if disk < 16 && partition < 16 {
        Some(XENVBD_MAJOR << 8 | disk << 4 | partition)
    } else if disk < 1 << 20 && partition < 256 {
        Some(VDEV_EXTENDED | disk << 8 | partition)
    } else {
        None
    }
}

/// The virtual-device number of a guest device name (`xvda`, `xvdb2`, `xvdq`, `d0p1`,
/// `sdb3`, `hdc2`, `51712`, `0xca00`), as xl computes it; `None` if it names nothing.
pub fn parse_vdev(name: &str) -> Option<u32> {
    if let Some(n) = parse_number(name) {
        return (n < 2 << 28).then_some(n);
    }
    if let Some(rest) = name.strip_prefix('d') {
        let (disk, part) = match rest.split_once('p') {
            Some((d, p)) => (parse_decimal(d)?, parse_decimal(p)?),
            None => (parse_decimal(rest)?, 0),
        };
        return encode_xvd(disk, part);
    }
    if name.starts_with("xvd") {
        let (disk, part) = split_letters_number(name, "xvd")?;
        return encode_xvd(disk, part.unwrap_or(0));
    }
    if name.starts_with("sd") {
        let (disk, part) = split_letters_number(name, "sd")?;
        let part = part.unwrap_or(0);
        return (disk < 16 && part < 16).then_some(SCSI_DISK0_MAJOR << 8 | disk << 4 | part);
    }
    if name.starts_with("hd") {
        let (disk, part) = split_letters_number(name, "hd")?;
        let part = part.unwrap_or(0);
        if part >= 64 {
            return None;
        }
        return match disk {
            0 | 1 => Some(IDE0_MAJOR << 8 | disk << 6 | part),
            2 | 3 => Some(IDE1_MAJOR << 8 | (disk - 2) << 6 | part),
            _ => None,
        };
    }
    None
}

/// `strtoul(…, 0)` without its leniency: `0x`/`0X` hex, a leading `0` octal, else
/// decimal; the whole string must be digits.
fn parse_number(s: &str) -> Option<u32> {
    let (digits, radix) = if let Some(hex) = s.strip_prefix("0x").or(s.strip_prefix("0X")) {
        (hex, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

/// What a Linux guest makes of a virtual-device number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestDisk {
    /// The disk's index in the guest's `xvd` names.
    pub disk: u32,
    /// 0 for a whole disk.
    pub partition: u32,
}

impl GuestDisk {
    /// The guest's device name (`xvda`, `xvdb2`).
    pub fn name(&self) -> String {
        let mut s = String::from("xvd");
        push_disk_letters(&mut s, self.disk);
        if self.partition != 0 {
            // Writing to a String cannot fail.
            let _ = write!(s, "{}", self.partition);
        }
        s
    }
}

/// Decodes a virtual-device number as Linux 6.1's blkfront does; `None` where blkfront
/// refuses the device (`-ENODEV`).
pub fn decode_vdev(vdev: u32) -> Option<GuestDisk> {
    if vdev >> 28 > 1 {
        return None;
    }
    if vdev & VDEV_EXTENDED != 0 {
        let minor = vdev & !VDEV_EXTENDED;
        if minor >> MINOR_BITS != 0 {
            return None;
        }
        return Some(GuestDisk {
            disk: minor / 256,
            partition: minor % 256,
        });
    }
    let major = vdev >> 8;
    let minor = vdev & 0xff;
    let (disk, partition) = match major {
        XENVBD_MAJOR => (minor / 16, minor % 16),
        // IDE: blkfront computes the guest minor from the disk alone.
        IDE0_MAJOR => (minor / 64, 0),
        IDE1_MAJOR => (minor / 64 + 2, 0),
        SCSI_DISK0_MAJOR => (minor / 16, minor % 16),
        65..=71 => (minor / 16 + (major - 65 + 1) * 16, minor % 16),
        128..=135 => (minor / 16 + (major - 128 + 8) * 16, minor % 16),
        _ => return None,
    };
    Some(GuestDisk { disk, partition })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xvd_names_use_the_short_form_up_to_15() {
        assert_eq!(parse_vdev("xvda"), Some(51712));
        assert_eq!(parse_vdev("xvda1"), Some(51713));
        assert_eq!(parse_vdev("xvdb"), Some(202 << 8 | 1 << 4));
        assert_eq!(parse_vdev("xvdp15"), Some(202 << 8 | 15 << 4 | 15));
        // xvdq is disk 16: the extended form.
        assert_eq!(parse_vdev("xvdq"), Some(1 << 28 | 16 << 8));
        // A partition above 15 on a small disk, too.
        assert_eq!(parse_vdev("xvda16"), Some(1 << 28 | 16));
        // The interface document's example: d536p37 = xvdtq37.
        assert_eq!(parse_vdev("xvdtq37"), Some(1 << 28 | 536 << 8 | 37));
        assert_eq!(parse_vdev("d536p37"), parse_vdev("xvdtq37"));
        assert_eq!(parse_vdev("xvda256"), None);
    }

    #[test]
    fn d_p_forms_match_xvd() {
        assert_eq!(parse_vdev("d0"), Some(51712));
        assert_eq!(parse_vdev("d0p0"), Some(51712));
        assert_eq!(parse_vdev("d0p1"), Some(51713));
        assert_eq!(parse_vdev("d1p2"), parse_vdev("xvdb2"));
        assert_eq!(parse_vdev("dp1"), None);
        assert_eq!(parse_vdev("d1p"), None);
    }

    #[test]
    fn sd_and_hd_forms() {
        assert_eq!(parse_vdev("sda"), Some(8 << 8));
        assert_eq!(parse_vdev("sdb3"), Some(8 << 8 | 1 << 4 | 3));
        assert_eq!(parse_vdev("sdq"), None);
        assert_eq!(parse_vdev("sda16"), None);
        assert_eq!(parse_vdev("hda"), Some(3 << 8));
        assert_eq!(parse_vdev("hdb1"), Some(3 << 8 | 1 << 6 | 1));
        assert_eq!(parse_vdev("hdc2"), Some(22 << 8 | 2));
        assert_eq!(parse_vdev("hdd63"), Some(22 << 8 | 1 << 6 | 63));
        assert_eq!(parse_vdev("hde"), None);
        assert_eq!(parse_vdev("hda64"), None);
    }

    #[test]
    fn bare_numbers_pass_through() {
        assert_eq!(parse_vdev("51712"), Some(51712));
        assert_eq!(parse_vdev("0xca00"), Some(51712));
        assert_eq!(parse_vdev("0145000"), Some(51712));
        assert_eq!(parse_vdev("0"), Some(0));
        assert_eq!(parse_vdev("0x"), None);
        assert_eq!(parse_vdev("08"), None);
        assert_eq!(parse_vdev("-1"), None);
        assert_eq!(parse_vdev("536870912"), None); // 2 << 28: reserved
        assert_eq!(parse_vdev("99999999999"), None);
        assert_eq!(parse_vdev(""), None);
        assert_eq!(parse_vdev("xvd"), None);
        assert_eq!(parse_vdev("vda"), None);
    }

    #[test]
    fn blkfront_names_what_xl_encodes() {
        for (name, guest) in [
            ("xvda", "xvda"),
            ("xvdb2", "xvdb2"),
            ("xvdq", "xvdq"),
            ("xvdtq37", "xvdtq37"),
            ("sdb3", "xvdb3"),
            ("hda", "xvda"),
            ("hdc2", "xvdc"),
            ("d1p2", "xvdb2"),
        ] {
            let n = parse_vdev(name).unwrap();
            assert_eq!(decode_vdev(n).unwrap().name(), guest, "{name}");
        }
        // SCSI majors beyond the first map 16 disks each.
        assert_eq!(
            decode_vdev(65 << 8 | 1 << 4 | 2),
            Some(GuestDisk {
                disk: 17,
                partition: 2
            })
        );
        assert_eq!(decode_vdev(128 << 8).map(|g| g.disk), Some(128));
        // Unknown majors, the reserved range and minors past 20 bits are refused.
        assert_eq!(decode_vdev(7 << 8), None);
        assert_eq!(decode_vdev(2 << 28), None);
        assert_eq!(decode_vdev(1 << 28 | 1 << 20), None);
        // xl accepts disks up to 2^20 - 1; Linux only those whose minor fits.
        let big = parse_vdev("d5000").unwrap();
        assert_eq!(decode_vdev(big), None);
    }
}
