//! What the two x86-64 instruction decoders ([`emulate`](super::emulate) for privileged
//! instructions, [`ptwr`](super::ptwr) for page-table writes) share: a bounded cursor
//! over the instruction bytes, the REX bits, and the ModRM/SIB memory operand.

use super::emulate::{MemOperand, Segment, MAX_INSN_LEN};

/// REX bits.
pub const REX_B: u8 = 1 << 0;
pub const REX_X: u8 = 1 << 1;
pub const REX_R: u8 = 1 << 2;
pub const REX_W: u8 = 1 << 3;

/// Why the cursor could not give another byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsnEnd {
    /// The bytes end before the instruction does.
    Truncated,
    /// The instruction would be longer than 15 bytes.
    TooLong,
}

/// A cursor over the instruction bytes that never reads past 15 bytes or the slice.
pub struct Cursor<'a> {
    bytes: &'a [u8],
    pub pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    pub fn peek(&self) -> Result<u8, InsnEnd> {
        if self.pos >= MAX_INSN_LEN {
            return Err(InsnEnd::TooLong);
        }
        self.bytes.get(self.pos).copied().ok_or(InsnEnd::Truncated)
    }

    pub fn next_byte(&mut self) -> Result<u8, InsnEnd> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    /// A little-endian 32-bit displacement or immediate.
    pub fn imm32(&mut self) -> Result<i32, InsnEnd> {
        let mut le = [0u8; 4];
        for b in &mut le {
            *b = self.next_byte()?;
        }
        Ok(i32::from_le_bytes(le))
    }
}

/// `bit` of `rex` as the fourth bit of a register number.
pub fn rex_bit(rex: u8, bit: u8) -> u8 {
    u8::from(rex & bit != 0) << 3
}

/// The memory operand after a ModRM byte whose mod field is not 11 (64-bit addressing),
/// with the segment override and REX byte (0 for none) seen before the opcode.
pub fn mem_operand(
    c: &mut Cursor<'_>,
    modrm: u8,
    segment: Option<Segment>,
    rex: u8,
) -> Result<MemOperand, InsnEnd> {
    let mode = modrm >> 6;
    let rm = modrm & 7;
    let mut op = MemOperand {
        segment,
        base: None,
        index: None,
        scale: 1,
        disp: 0,
        rip_relative: false,
    };
    let mut disp32 = mode == 2;
    if rm == 4 {
        let sib = c.next_byte()?;
        op.scale = 1 << (sib >> 6);
        let index = ((sib >> 3) & 7) | rex_bit(rex, REX_X);
        // Index 100 without REX.X means "no index"; with REX.X it is r12.
        op.index = (index != 4).then_some(index);
        let base = sib & 7;
        if base == 5 && mode == 0 {
            disp32 = true;
        } else {
            op.base = Some(base | rex_bit(rex, REX_B));
        }
    } else if rm == 5 && mode == 0 {
        op.rip_relative = true;
        disp32 = true;
    } else {
        op.base = Some(rm | rex_bit(rex, REX_B));
    }
    if mode == 1 {
        op.disp = i32::from(c.next_byte()? as i8);
    } else if disp32 {
        op.disp = c.imm32()?;
    }
    Ok(op)
}
