//! The few ACPI tables the hypervisor reads: the RSDP (as the multiboot2 loader copies it),
//! the RSDT/XSDT and the MCFG (PCI Express memory-mapped configuration, "ECAM").
//!
//! Layouts from the ACPI specification (6.x, 5.2.5 RSDP, 5.2.6 SDT header, 5.2.7 RSDT,
//! 5.2.8 XSDT) and the PCI Firmware Specification (4.1.2, MCFG). Firmware tables are input
//! we did not write: every length and checksum is checked before a field is used, and a
//! bad table is an error, never a panic.

use alloc::vec::Vec;
use core::fmt;

/// Why a table was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// Shorter than its fixed part or than the length it declares.
    Truncated,
    /// The signature is not the one expected.
    Signature,
    /// The bytes do not sum to zero.
    Checksum,
    /// A declared length is smaller than the fixed part.
    BadLength,
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AcpiError::Truncated => "table truncated",
            AcpiError::Signature => "wrong signature",
            AcpiError::Checksum => "bad checksum",
            AcpiError::BadLength => "declared length too small",
        })
    }
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

fn sums_to_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |acc, &x| acc.wrapping_add(x)) == 0
}

/// Where the root table is, from the RSDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootTable {
    /// ACPI 1.0: 32-bit entries.
    Rsdt(u64),
    /// ACPI 2.0+: 64-bit entries (preferred when present).
    Xsdt(u64),
}

/// Decodes an RSDP (20 bytes for revision 0, 36 for 2+). The 1.0 checksum covers the first
/// 20 bytes; the extended one the whole structure.
pub fn parse_rsdp(b: &[u8]) -> Result<RootTable, AcpiError> {
    if b.len() < 20 {
        return Err(AcpiError::Truncated);
    }
    if &b[0..8] != b"RSD PTR " {
        return Err(AcpiError::Signature);
    }
    if !sums_to_zero(&b[..20]) {
        return Err(AcpiError::Checksum);
    }
    let revision = b[15];
    let rsdt = u32_at(b, 16).ok_or(AcpiError::Truncated)? as u64;
    if revision >= 2 && b.len() >= 36 {
        let len = u32_at(b, 20).ok_or(AcpiError::Truncated)? as usize;
        if len >= 36 && len <= b.len() && sums_to_zero(&b[..len]) {
            if let Some(xsdt) = u64_at(b, 24).filter(|&x| x != 0) {
                return Ok(RootTable::Xsdt(xsdt));
            }
        }
    }
    Ok(RootTable::Rsdt(rsdt))
}

/// Size of the common system description table header.
pub const SDT_HEADER_LEN: usize = 36;

/// The length an SDT header declares (read the header first, then map that much).
pub fn sdt_length(header: &[u8]) -> Result<usize, AcpiError> {
    let len = u32_at(header, 4).ok_or(AcpiError::Truncated)? as usize;
    if len < SDT_HEADER_LEN {
        return Err(AcpiError::BadLength);
    }
    Ok(len)
}

/// The signature of an SDT (its first four bytes), if there are four.
pub fn sdt_signature(table: &[u8]) -> Option<[u8; 4]> {
    table.get(0..4).map(|s| [s[0], s[1], s[2], s[3]])
}

/// Checks a whole SDT (`signature`, declared length within `table`, checksum) and returns
/// it cut to its declared length.
pub fn check_sdt<'a>(table: &'a [u8], signature: &[u8; 4]) -> Result<&'a [u8], AcpiError> {
    let len = sdt_length(table)?;
    let t = table.get(..len).ok_or(AcpiError::Truncated)?;
    if &t[0..4] != signature {
        return Err(AcpiError::Signature);
    }
    if !sums_to_zero(t) {
        return Err(AcpiError::Checksum);
    }
    Ok(t)
}

/// The table addresses in a checked RSDT (4-byte entries) or XSDT (8-byte entries).
pub fn root_entries(root: &[u8], kind: RootTable) -> Result<Vec<u64>, AcpiError> {
    let (sig, width): (&[u8; 4], usize) = match kind {
        RootTable::Rsdt(_) => (b"RSDT", 4),
        RootTable::Xsdt(_) => (b"XSDT", 8),
    };
    let t = check_sdt(root, sig)?;
    Ok(t[SDT_HEADER_LEN..]
        .chunks_exact(width)
        .map(|c| {
            if width == 4 {
                u32_at(c, 0).unwrap_or(0) as u64
            } else {
                u64_at(c, 0).unwrap_or(0)
            }
        })
        .filter(|&a| a != 0)
        .collect())
}

/// One ECAM window of the MCFG: configuration space of buses `start_bus..=end_bus` of PCI
/// segment `segment`, 4 KiB per function, at `base` (the address of bus 0, even when
/// `start_bus` is not 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcamRegion {
    pub base: u64,
    pub segment: u16,
    pub start_bus: u8,
    pub end_bus: u8,
}

impl EcamRegion {
    /// Physical address of the first byte that belongs to bus `start_bus`.
    pub fn window_start(&self) -> u64 {
        self.base + ((self.start_bus as u64) << 20)
    }

    /// Bytes from [`Self::window_start`] to the end of bus `end_bus`.
    pub fn window_len(&self) -> u64 {
        (self.end_bus as u64 + 1 - self.start_bus as u64) << 20
    }
}

/// The ECAM windows of an MCFG table (header, 8 reserved bytes, then 16-byte entries).
/// Entries with `end_bus < start_bus` or a base that is not 1 MiB aligned are skipped.
pub fn parse_mcfg(table: &[u8]) -> Result<Vec<EcamRegion>, AcpiError> {
    let t = check_sdt(table, b"MCFG")?;
    let entries = t.get(SDT_HEADER_LEN + 8..).ok_or(AcpiError::Truncated)?;
    Ok(entries
        .chunks_exact(16)
        .filter_map(|e| {
            let base = u64_at(e, 0)?;
            let segment = u16::from_le_bytes([e[8], e[9]]);
            let (start_bus, end_bus) = (e[10], e[11]);
            (end_bus >= start_bus && base % (1 << 20) == 0 && base != 0).then_some(EcamRegion {
                base,
                segment,
                start_bus,
                end_bus,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix_checksum(b: &mut [u8], at: usize, range: core::ops::Range<usize>) {
        b[at] = 0;
        let s = b[range].iter().fold(0u8, |a, &x| a.wrapping_add(x));
        b[at] = 0u8.wrapping_sub(s);
    }

    fn sdt(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; SDT_HEADER_LEN];
        t[0..4].copy_from_slice(sig);
        t.extend_from_slice(body);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        t[8] = 1;
        let n = t.len();
        fix_checksum(&mut t, 9, 0..n);
        t
    }

    fn rsdp_v2(rsdt: u32, xsdt: u64) -> Vec<u8> {
        let mut b = vec![0u8; 36];
        b[0..8].copy_from_slice(b"RSD PTR ");
        b[15] = 2;
        b[16..20].copy_from_slice(&rsdt.to_le_bytes());
        b[20..24].copy_from_slice(&36u32.to_le_bytes());
        b[24..32].copy_from_slice(&xsdt.to_le_bytes());
        fix_checksum(&mut b, 8, 0..20);
        fix_checksum(&mut b, 32, 0..36);
        b
    }

    #[test]
    fn rsdp_prefers_the_xsdt_and_checks_sums() {
        let b = rsdp_v2(0x1000, 0x2000);
        assert_eq!(parse_rsdp(&b), Ok(RootTable::Xsdt(0x2000)));
        // Revision 0 (20 bytes): the RSDT.
        let mut v1 = b[..20].to_vec();
        v1[15] = 0;
        fix_checksum(&mut v1, 8, 0..20);
        assert_eq!(parse_rsdp(&v1), Ok(RootTable::Rsdt(0x1000)));
        // A broken extended checksum falls back to the RSDT.
        let mut bad_ext = b.clone();
        bad_ext[32] ^= 1;
        assert_eq!(parse_rsdp(&bad_ext), Ok(RootTable::Rsdt(0x1000)));
        let mut bad = b.clone();
        bad[16] ^= 1;
        assert_eq!(parse_rsdp(&bad), Err(AcpiError::Checksum));
        assert_eq!(parse_rsdp(&b[..10]), Err(AcpiError::Truncated));
        let mut sig = b;
        sig[0] = b'X';
        assert_eq!(parse_rsdp(&sig), Err(AcpiError::Signature));
    }

    #[test]
    fn root_tables_list_their_entries() {
        let mut body = Vec::new();
        body.extend_from_slice(&0x1234u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&0x5678u32.to_le_bytes());
        let rsdt = sdt(b"RSDT", &body);
        assert_eq!(
            root_entries(&rsdt, RootTable::Rsdt(0)),
            Ok(vec![0x1234, 0x5678])
        );
        let mut body = Vec::new();
        body.extend_from_slice(&0x1_0000_0000u64.to_le_bytes());
        let xsdt = sdt(b"XSDT", &body);
        assert_eq!(
            root_entries(&xsdt, RootTable::Xsdt(0)),
            Ok(vec![0x1_0000_0000])
        );
        assert_eq!(
            root_entries(&xsdt, RootTable::Rsdt(0)),
            Err(AcpiError::Signature)
        );
        let mut corrupt = xsdt.clone();
        corrupt[40] ^= 0xff;
        assert_eq!(
            root_entries(&corrupt, RootTable::Xsdt(0)),
            Err(AcpiError::Checksum)
        );
        // Declared longer than what is there.
        let mut long = xsdt;
        long[4] = 200;
        assert_eq!(
            root_entries(&long, RootTable::Xsdt(0)),
            Err(AcpiError::Truncated)
        );
        assert_eq!(sdt_length(&[0; 8]), Err(AcpiError::BadLength));
    }

    #[test]
    fn mcfg_gives_its_windows() {
        let mut body = vec![0u8; 8];
        // q35: segment 0, buses 0..=255 at 0xb000_0000.
        body.extend_from_slice(&0xb000_0000u64.to_le_bytes());
        body.extend_from_slice(&[0, 0, 0, 255, 0, 0, 0, 0]);
        // Invalid: end < start.
        body.extend_from_slice(&0xc000_0000u64.to_le_bytes());
        body.extend_from_slice(&[0, 0, 9, 3, 0, 0, 0, 0]);
        // A trailing partial entry is ignored.
        body.extend_from_slice(&[1, 2, 3]);
        let t = sdt(b"MCFG", &body);
        let r = parse_mcfg(&t).unwrap();
        assert_eq!(
            r,
            vec![EcamRegion {
                base: 0xb000_0000,
                segment: 0,
                start_bus: 0,
                end_bus: 255
            }]
        );
        assert_eq!(r[0].window_len(), 256 << 20);
        let w = EcamRegion {
            base: 0xe000_0000,
            segment: 0,
            start_bus: 2,
            end_bus: 3,
        };
        assert_eq!(w.window_start(), 0xe020_0000);
        assert_eq!(w.window_len(), 2 << 20);
        assert_eq!(
            parse_mcfg(&sdt(b"APIC", &[0; 8])),
            Err(AcpiError::Signature)
        );
    }
}
