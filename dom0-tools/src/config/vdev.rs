//! Guest disk names (`xvda`, `xvdb1`, `sda`, `hdc`) and the virtual device numbers they
//! stand for: the `virtual-device` a vbd's frontend reads and the vbd's device id, as
//! Linux's blkfront decodes them and xl encodes them (Xen's `docs/misc/vbd-interface.txt`):
//!
//! - `xvd` disks 0–15 with partitions 0–15: `202 << 8 | disk << 4 | partition`;
//!   larger disks (`xvdq` on) or partitions (up to 255): the extended form
//!   `1 << 28 | disk << 8 | partition`, disks up to 2^20 - 1;
//! - `sd` (SCSI), disks 0–15, partitions 0–15: `8 << 8 | disk << 4 | partition`;
//! - `hd` (IDE), disks 0–3, partitions 0–63: major 3 for `hda`/`hdb`, 22 for
//!   `hdc`/`hdd`, `major << 8 | (disk & 1) << 6 | partition`.
//!
//! Disk letters count as in Linux's names: `a`–`z` are 0–25, `aa` is 26, `az` 51, `ba` 52.

/// The extended-numbering flag (bit 28).
const EXTENDED: u32 = 1 << 28;
/// The major of Xen's own `xvd` disks.
const XVD_MAJOR: u32 = 202;
const SD_MAJOR: u32 = 8;
/// IDE majors: the first two disks, the next two.
const HD_MAJORS: [u32; 2] = [3, 22];

/// The disk index of a run of lowercase letters (`a` 0, `z` 25, `aa` 26), bijective base 26.
fn disk_index(letters: &str) -> Option<u32> {
    if letters.is_empty() || letters.len() > 4 {
        return None;
    }
    let mut n: u32 = 0;
    for c in letters.bytes() {
        if !c.is_ascii_lowercase() {
            return None;
        }
        n = n.checked_mul(26)?.checked_add(u32::from(c - b'a') + 1)?;
    }
    Some(n - 1)
}

/// Letters for disk index `n` (the inverse of [`disk_index`]).
fn disk_letters(mut n: u32) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b'a' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Splits `xvdb12` into the prefix's rest `b` and the partition 12 (0 when there are no
/// digits). Digits must not start with 0 (`xvda01` is not a name Linux gives).
fn split(rest: &str) -> Option<(&str, u32)> {
    let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
    let (l, digits) = rest.split_at(letters);
    if digits.is_empty() {
        return Some((l, 0));
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') || digits.len() > 3 {
        return None;
    }
    Some((l, digits.parse().ok()?))
}

/// The virtual device number of a guest disk name; `None` for a name Linux and xl would
/// not accept.
pub fn vdev_number(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix("xvd") {
        let (letters, part) = split(rest)?;
        let disk = disk_index(letters)?;
        if disk < 16 && part < 16 {
            Some(XVD_MAJOR << 8 | disk << 4 | part)
        } else if disk < 1 << 20 && part < 256 {
            Some(EXTENDED | disk << 8 | part)
        } else {
            None
        }
    } else if let Some(rest) = name.strip_prefix("sd") {
        let (letters, part) = split(rest)?;
        let disk = disk_index(letters)?;
        (disk < 16 && part < 16).then_some(SD_MAJOR << 8 | disk << 4 | part)
    } else if let Some(rest) = name.strip_prefix("hd") {
        let (letters, part) = split(rest)?;
        let disk = disk_index(letters)?;
        (disk < 4 && part < 64)
            .then(|| HD_MAJORS[(disk / 2) as usize] << 8 | (disk & 1) << 6 | part)
    } else {
        None
    }
}

/// The name of a virtual device number (`51712` is `xvda`); `None` for a number none of
/// the schemes above produces.
pub fn vdev_name(number: u32) -> Option<String> {
    let part = |p: u32| {
        if p == 0 {
            String::new()
        } else {
            p.to_string()
        }
    };
    if number & EXTENDED != 0 {
        let disk = (number & !EXTENDED) >> 8;
        if number >> 29 != 0 || disk >= 1 << 20 {
            return None;
        }
        return Some(format!("xvd{}{}", disk_letters(disk), part(number & 0xff)));
    }
    let (major, minor) = (number >> 8, number & 0xff);
    match major {
        XVD_MAJOR => Some(format!(
            "xvd{}{}",
            disk_letters(minor >> 4),
            part(minor & 15)
        )),
        SD_MAJOR => Some(format!(
            "sd{}{}",
            disk_letters(minor >> 4),
            part(minor & 15)
        )),
        m if HD_MAJORS.contains(&m) => {
            let base = if m == HD_MAJORS[0] { 0 } else { 2 };
            Some(format!(
                "hd{}{}",
                disk_letters(base + (minor >> 6)),
                part(minor & 63)
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xvd_names() {
        assert_eq!(vdev_number("xvda"), Some(51712));
        assert_eq!(vdev_number("xvda1"), Some(51713));
        assert_eq!(vdev_number("xvdb"), Some(51728));
        assert_eq!(vdev_number("xvdb15"), Some(202 << 8 | 1 << 4 | 15));
        assert_eq!(vdev_number("xvdp"), Some(202 << 8 | 15 << 4));
        // Past the 16th disk, or the 15th partition: the extended form.
        assert_eq!(vdev_number("xvdq"), Some(1 << 28 | 16 << 8));
        assert_eq!(vdev_number("xvda16"), Some(1 << 28 | 16));
        assert_eq!(vdev_number("xvdz255"), Some(1 << 28 | 25 << 8 | 255));
        assert_eq!(vdev_number("xvdaa"), Some(1 << 28 | 26 << 8));
        assert_eq!(vdev_number("xvdba1"), Some(1 << 28 | 52 << 8 | 1));
        assert_eq!(vdev_number("xvda256"), None);
        assert_eq!(vdev_number("xvd"), None);
        assert_eq!(vdev_number("xvda01"), None);
        assert_eq!(vdev_number("xvdA"), None);
        assert_eq!(vdev_number("xvda1b"), None);
    }

    #[test]
    fn scsi_and_ide_names() {
        assert_eq!(vdev_number("sda"), Some(2048));
        assert_eq!(vdev_number("sdb2"), Some(8 << 8 | 1 << 4 | 2));
        assert_eq!(vdev_number("sdq"), None);
        assert_eq!(vdev_number("hda"), Some(768));
        assert_eq!(vdev_number("hdb1"), Some(3 << 8 | 64 | 1));
        assert_eq!(vdev_number("hdc"), Some(22 << 8));
        assert_eq!(vdev_number("hdd63"), Some(22 << 8 | 64 | 63));
        assert_eq!(vdev_number("hde"), None);
        assert_eq!(vdev_number("hda64"), None);
        assert_eq!(vdev_number("floppy0"), None);
        assert_eq!(vdev_number(""), None);
    }

    #[test]
    fn numbers_name_back() {
        for name in [
            "xvda", "xvda1", "xvdp15", "xvdq", "xvdz255", "xvdaa", "xvdba1", "xvdzzz", "sda",
            "sdp15", "hda", "hdb1", "hdc", "hdd63",
        ] {
            let n = vdev_number(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(vdev_name(n).as_deref(), Some(name), "{n:#x}");
        }
        assert_eq!(vdev_name(7 << 8), None);
        assert_eq!(vdev_name(3 << 28), None);
    }
}
