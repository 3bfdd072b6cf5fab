//! MSI-X (PCI 3.0, 6.8.2): the capability's fields, and the message that makes an entry
//! interrupt a local APIC (Intel SDM vol. 3, 11.11 "Message Signalled Interrupts").

use super::{Bdf, ConfigSpace};

/// Message control: MSI-X enable.
const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: every vector masked, whatever its own mask bit says.
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;

/// Bytes of one table entry: address low, address high, data, vector control.
pub const ENTRY_SIZE: u64 = 16;
/// Vector control: this entry masked.
pub const ENTRY_MASKED: u32 = 1;

/// A decoded MSI-X capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCapability {
    /// The capability's offset in configuration space.
    pub offset: u8,
    /// Entries in the table (1..=2048).
    pub table_size: u16,
    /// The BAR (0..6) holding the table, and the table's offset in it.
    pub table_bar: u8,
    pub table_offset: u32,
    pub pba_bar: u8,
    pub pba_offset: u32,
}

impl MsixCapability {
    /// Reads the capability at `offset`; `None` if a BAR indicator names no BAR (6, 7).
    pub fn read(cfg: &impl ConfigSpace, bdf: Bdf, offset: u8) -> Option<MsixCapability> {
        let control = cfg.read16(bdf, offset as u16 + 2);
        let table = cfg.read32(bdf, offset as u16 + 4);
        let pba = cfg.read32(bdf, offset as u16 + 8);
        let (table_bar, pba_bar) = ((table & 7) as u8, (pba & 7) as u8);
        if table_bar > 5 || pba_bar > 5 {
            return None;
        }
        Some(MsixCapability {
            offset,
            table_size: (control & 0x7ff) + 1,
            table_bar,
            table_offset: table & !7,
            pba_bar,
            pba_offset: pba & !7,
        })
    }

    /// The table's byte length.
    pub fn table_len(&self) -> u64 {
        self.table_size as u64 * ENTRY_SIZE
    }

    /// Enables MSI-X with the whole function masked (while the table is programmed).
    pub fn enable_masked(&self, cfg: &impl ConfigSpace, bdf: Bdf) {
        let c = cfg.read16(bdf, self.offset as u16 + 2);
        cfg.write16(
            bdf,
            self.offset as u16 + 2,
            c | CONTROL_ENABLE | CONTROL_FUNCTION_MASK,
        );
    }

    /// Lifts the function mask (entries' own masks still apply).
    pub fn unmask_function(&self, cfg: &impl ConfigSpace, bdf: Bdf) {
        let c = cfg.read16(bdf, self.offset as u16 + 2);
        cfg.write16(
            bdf,
            self.offset as u16 + 2,
            (c | CONTROL_ENABLE) & !CONTROL_FUNCTION_MASK,
        );
    }
}

/// The message (address, data) for a fixed, edge-triggered interrupt on `vector` of the
/// local APIC with xAPIC id `apic_id` (physical destination mode): address 0xFEE0_0000
/// with the destination id in bits 19:12, data = the vector.
pub fn lapic_message(apic_id: u8, vector: u8) -> (u64, u32) {
    (0xfee0_0000 | (apic_id as u64) << 12, vector as u32)
}

#[cfg(test)]
mod tests {
    use super::{
        super::{fake::FakeConfig, CAP_MSIX},
        *,
    };

    #[test]
    fn capability_fields_and_enable() {
        let mut c = FakeConfig::default();
        let d = Bdf::new(0, 3, 0);
        c.add(d, 0x1af4, 0x1041, 0x0200_0000, 0);
        // 3 entries (size field 2); table in BAR1 at 0, PBA in BAR1 at 0x800.
        c.add_cap(d, 0x98, CAP_MSIX, &[2, 0, 1, 0, 0, 0, 0x01, 0x08, 0, 0]);
        let m = MsixCapability::read(&c, d, 0x98).unwrap();
        assert_eq!(
            m,
            MsixCapability {
                offset: 0x98,
                table_size: 3,
                table_bar: 1,
                table_offset: 0,
                pba_bar: 1,
                pba_offset: 0x800
            }
        );
        assert_eq!(m.table_len(), 48);
        m.enable_masked(&c, d);
        assert_eq!(c.read16(d, 0x9a), 0xc002);
        m.unmask_function(&c, d);
        assert_eq!(c.read16(d, 0x9a), 0x8002);
        // The id and next bytes are kept.
        assert_eq!(c.read8(d, 0x98), CAP_MSIX);
        c.set8(d, 0x9c, 7);
        assert_eq!(MsixCapability::read(&c, d, 0x98), None);
    }

    #[test]
    fn lapic_messages() {
        assert_eq!(lapic_message(0, 0x40), (0xfee0_0000, 0x40));
        assert_eq!(lapic_message(3, 0x41), (0xfee0_3000, 0x41));
    }
}
