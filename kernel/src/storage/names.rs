//! Host-side names of the machine's disks and partitions, the `phy:` targets the toolstack
//! names: `vda`…`vdz`, `vdaa`…`vdzz`, `vdaaa`… (Linux's sd naming: the disk index in
//! bijective base 26 over `a`–`z`), and `vda1` for partition 1 of the first disk.

use alloc::string::String;
use core::fmt::Write;

/// The prefix of every disk name.
pub const DISK_PREFIX: &str = "vd";
/// The largest disk index names parse to (more disks than any machine has; the bound
/// keeps the arithmetic small).
pub const MAX_DISK_INDEX: u32 = (1 << 20) - 1;

/// Appends the letters of disk `index` (0 → `a`, 25 → `z`, 26 → `aa`, 701 → `zz`,
/// 702 → `aaa`).
pub fn push_disk_letters(out: &mut String, index: u32) {
    let mut letters = [0u8; 8];
    let mut n = u64::from(index) + 1;
    let mut len = 0;
    while n > 0 && len < letters.len() {
        n -= 1;
        letters[len] = b'a' + (n % 26) as u8;
        len += 1;
        n /= 26;
    }
    for &l in letters[..len].iter().rev() {
        out.push(char::from(l));
    }
}

/// The disk index of a run of letters (`a` → 0, `aa` → 26); `None` for anything but
/// lowercase letters, or an index above [`MAX_DISK_INDEX`].
pub fn parse_disk_letters(letters: &str) -> Option<u32> {
    if letters.is_empty() || letters.len() > 6 {
        return None;
    }
    let mut n: u32 = 0;
    for b in letters.bytes() {
        if !b.is_ascii_lowercase() {
            return None;
        }
        n = n.checked_mul(26)?.checked_add(u32::from(b - b'a') + 1)?;
    }
    let index = n - 1;
    (index <= MAX_DISK_INDEX).then_some(index)
}

/// A decimal number without sign, leading zeros or overflow.
pub(crate) fn parse_decimal(digits: &str) -> Option<u32> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// Splits `<letters><digits>` after `prefix`: the disk index and the number, if any.
pub(crate) fn split_letters_number(name: &str, prefix: &str) -> Option<(u32, Option<u32>)> {
    let rest = name.strip_prefix(prefix)?;
    let split = rest
        .find(|c: char| !c.is_ascii_lowercase())
        .unwrap_or(rest.len());
    let (letters, digits) = rest.split_at(split);
    let disk = parse_disk_letters(letters)?;
    let number = if digits.is_empty() {
        None
    } else {
        Some(parse_decimal(digits)?)
    };
    Some((disk, number))
}

/// The name of disk `index` (`vda`).
pub fn disk_name(index: u32) -> String {
    let mut s = String::from(DISK_PREFIX);
    push_disk_letters(&mut s, index);
    s
}

/// The name of a partition (`vda1`).
pub fn partition_name(disk: u32, partition: u32) -> String {
    let mut s = disk_name(disk);
    // Writing to a String cannot fail.
    let _ = write!(s, "{partition}");
    s
}

/// A parsed `phy:` target name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetName {
    pub disk: u32,
    /// `None` for the whole disk.
    pub partition: Option<u32>,
}

/// Parses a `phy:` target (`vda`, `vdb2`, `/dev/vdb2` as xl users write it); partition 0
/// and leading zeros are refused (no such names exist).
pub fn parse_target(name: &str) -> Option<TargetName> {
    let name = name.strip_prefix("/dev/").unwrap_or(name);
    let (disk, partition) = split_letters_number(name, DISK_PREFIX)?;
    if partition == Some(0) {
        return None;
    }
    Some(TargetName { disk, partition })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names_count_like_linux_sd() {
        assert_eq!(disk_name(0), "vda");
        assert_eq!(disk_name(25), "vdz");
        assert_eq!(disk_name(26), "vdaa");
        assert_eq!(disk_name(27), "vdab");
        assert_eq!(disk_name(701), "vdzz");
        assert_eq!(disk_name(702), "vdaaa");
        assert_eq!(partition_name(1, 12), "vdb12");
        for i in (0..20000).chain([MAX_DISK_INDEX]) {
            let name = disk_name(i);
            assert_eq!(
                parse_target(&name),
                Some(TargetName {
                    disk: i,
                    partition: None
                })
            );
        }
    }

    #[test]
    fn targets_parse_back() {
        assert_eq!(
            parse_target("vda2"),
            Some(TargetName {
                disk: 0,
                partition: Some(2)
            })
        );
        assert_eq!(
            parse_target("/dev/vdaa15"),
            Some(TargetName {
                disk: 26,
                partition: Some(15)
            })
        );
        for bad in [
            "",
            "vd",
            "vda0",
            "vda01",
            "xvda",
            "vdA",
            "vda1b",
            "vda-1",
            "vda99999999999",
            "vdzzzzzzz",
            "vda 1",
        ] {
            assert_eq!(parse_target(bad), None, "{bad}");
        }
    }
}
