//! Emulating a PV guest kernel's direct writes to its own page tables.
//!
//! Xen's writable-page-table assist (`VMASST_TYPE_writable_pagetables`, `xen.h`), which
//! Linux requires through its `FEATURES` note (`!writable_page_tables`), lets a PV kernel
//! update page-table entries with ordinary instructions. Its page-table frames are mapped
//! read-only for it, so such a write raises #PF (present, write); the hypervisor copies
//! up to [`MAX_INSN_LEN`](super::emulate::MAX_INSN_LEN) bytes from the guest's `rip`, decodes them here
//! ([`decode_pte_write`]), computes the new 8-byte entry ([`apply`]), validates it through
//! the PV MMU, writes it and advances `rip` by [`PteWrite::len`] (Xen: `ptwr_do_page_fault`
//! in `arch/x86/pv/ro-page-fault.c`, which runs `x86_emulate` with a write hook). Anything
//! this module does not recognise is an error: the caller injects the original #PF.
//!
//! What Linux 6.1 runs on entries of a pinned (hence read-only) page table, and so what
//! this module accepts:
//!
//! * `native_set_pte` and friends (`WRITE_ONCE`, `pgtable_64.h`; `xen_set_pte_init` and
//!   `xen_set_pmd` in `arch/x86/xen/mmu_pv.c` write directly and rely on the trap):
//!   `mov r/m64, r64` (`REX.W 89`) and `mov r/m64, imm32` (`REX.W c7 /0`), plus the
//!   32-bit forms (`89`, `c7 /0`) writing half an entry, which Xen merges with the other
//!   half (`ptwr_emulated_update`);
//! * `native_ptep_get_and_clear`, `pmdp_establish`: `xchg r/m64, r64` (`87`, locked with
//!   or without the prefix);
//! * `ptep_set_wrprotect` (`clear_bit` with a constant bit, `bitops.h`): `lock andb $imm8`
//!   (`80 /4 ib`) on the byte holding the bit; `set_bit` the same with `orb` (`80 /1`);
//! * `ptep_test_and_clear_young` (`test_and_clear_bit`, `arch/x86/mm/pgtable.c`):
//!   `lock btrq $imm8` (`REX.W 0f ba /6 ib`); `clear_bit`/`set_bit` with a variable bit:
//!   `lock btr/bts r/m64, r64` (`0f b3`, `0f ab`) and their immediate forms;
//! * for completeness, `lock cmpxchg r/m, r` (`0f b1`) and `lock and/or` on 32 and 64
//!   bits (`21`, `09`, `81 /4 /1 id`, `83 /4 /1 ib`).
//!
//! Prefixes: `lock` (`f0`) at most once, refused on `mov` (the CPU raises #UD); a
//! segment override with a zero base in 64-bit mode (`26`, `2e`, `36`, `3e`) at most
//! once, because Linux's `alternatives_smp_unlock` turns every `LOCK_PREFIX` into `3e`
//! (`ds`) on a uniprocessor boot; REX right before the opcode. `fs`/`gs` (a kernel never
//! reaches its page tables through a per-CPU base), `66`, `67`, `f2`/`f3` (including the
//! HLE hints) are refused. Not emulated, though Xen's general emulator would take them:
//! string instructions (Linux copies page-table entries with `memcpy` only into tables
//! that are not yet pinned), SSE stores, 16-bit and byte register operands, `xor`,
//! `btc`, `cmpxchg8b/16b`.
//!
//! General registers are numbered as in the instruction encoding (see
//! [`emulate`](super::emulate)).

use ferrovisor_abi::xen::arch_x86::CpuUserRegs;

use super::{
    emulate::{gpr, MemOperand, Segment},
    insn::{self, Cursor, InsnEnd, REX_R, REX_W},
};

/// A decoded write to a page-table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PteWrite {
    /// The instruction's length in bytes (at most [`MAX_INSN_LEN`](super::emulate::MAX_INSN_LEN)).
    pub len: usize,
    pub op: PteOp,
    /// The memory operand; its `segment` is `None` or one with a zero base (`es`, `cs`,
    /// `ss`, `ds`), so [`PteWrite::effective_address`] is the linear address.
    pub mem: MemOperand,
    /// The operand size in bytes: 1 (`andb`/`orb`), 4 or 8.
    pub size: u8,
}

impl PteWrite {
    /// The linear address the instruction writes, given the registers at the fault
    /// (`regs.rip` is the instruction's address). For `bts`/`btr` with a register bit
    /// offset this is the operand's base; [`apply`] refuses offsets outside the operand.
    /// The caller checks it against `%cr2` and takes `offset_in_entry` from its low bits.
    pub fn effective_address(&self, regs: &CpuUserRegs) -> u64 {
        self.mem
            .effective_address(regs, regs.rip.wrapping_add(self.len as u64))
    }

    /// [`apply`] with this instruction's operation and size.
    pub fn apply(
        &self,
        old: u64,
        regs: &CpuUserRegs,
        offset_in_entry: u8,
    ) -> Result<ApplyResult, PtwrError> {
        apply(&self.op, old, regs, self.size, offset_in_entry)
    }
}

/// What the instruction does to its memory operand (the destination, `size` bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PteOp {
    /// `mov`: the destination becomes the source.
    Store(Src),
    /// `xchg`: the destination becomes register `reg`, which receives the old value.
    Xchg(u8),
    /// `cmpxchg`: if the destination equals `rax` (truncated to the operand size) it
    /// becomes register `reg`, else `rax` receives it.
    Cmpxchg(u8),
    /// `and`.
    And(Src),
    /// `or`.
    Or(Src),
    /// `btr`: clear one bit, CF receiving its old value.
    Btr(BitSrc),
    /// `bts`: set one bit, CF receiving its old value.
    Bts(BitSrc),
}

/// A source operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    /// A general register, read at the operand size.
    Reg(u8),
    /// An immediate, already sign-extended to 64 bits as the CPU extends it to the
    /// operand size (a 32-bit `mov`'s or `and`'s imm32 is taken as is).
    Imm(u64),
}

/// The bit-offset operand of `btr`/`bts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitSrc {
    /// An imm8, taken modulo the operand width as the CPU does.
    Imm(u8),
    /// A general register, a signed offset from the operand's address: the CPU would
    /// reach outside the operand for values outside `0..width`, which [`apply`] refuses.
    Reg(u8),
}

/// The effect of one emulated instruction on the entry and the registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyResult {
    /// The whole 8-byte entry after the instruction (equal to `old` when `write` is
    /// false).
    pub new: u64,
    /// Whether the entry is written: false for a failed `cmpxchg` only. (The CPU's
    /// locked cycle writes the old value back; nothing changes, so nothing to validate.)
    pub write: bool,
    /// A general register the instruction writes and its new 64-bit value (32-bit
    /// results zero-extend, as in 64-bit mode).
    pub reg: Option<(u8, u64)>,
    /// `rflags` after the instruction.
    pub rflags: u64,
}

impl ApplyResult {
    /// Store the register effects in `regs` (not `rip`: the caller adds
    /// [`PteWrite::len`]). Call only once the new entry has been validated and written,
    /// so a refused write leaves the guest's registers as they were at the fault.
    pub fn commit(&self, regs: &mut CpuUserRegs) {
        if let Some((reg, value)) = self.reg {
            if let Some(r) = super::emulate::gpr_mut(regs, reg) {
                *r = value;
            }
        }
        regs.rflags = self.rflags;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtwrError {
    /// The bytes end before the instruction does.
    Truncated,
    /// The instruction would be longer than 15 bytes (the CPU raises #GP).
    TooLong,
    /// A prefix this module refuses, a repeated one, or `lock` on `mov` (see the module
    /// documentation).
    UnexpectedPrefix(u8),
    /// The ModRM byte names a register, not memory: such an instruction cannot have
    /// faulted on a page-table write.
    RegisterOperand,
    /// Not one of the instructions listed in the module documentation.
    Unsupported,
    /// `offset_in_entry` and the operand size do not describe a naturally aligned field
    /// of the entry (Xen: "only allow naturally-aligned stores").
    Misaligned,
    /// A register bit offset that would reach outside the operand.
    BitOffsetOutOfRange,
}

/// `rflags` bits the emulated instructions write.
const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;
const ARITH: u64 = CF | PF | AF | ZF | SF | OF;

impl From<InsnEnd> for PtwrError {
    fn from(end: InsnEnd) -> Self {
        match end {
            InsnEnd::Truncated => PtwrError::Truncated,
            InsnEnd::TooLong => PtwrError::TooLong,
        }
    }
}

/// The prefixes seen before the opcode.
#[derive(Clone, Copy, Default)]
struct Prefixes {
    lock: bool,
    segment: Option<Segment>,
    rex: u8,
}

impl Prefixes {
    fn rex_bit(&self, bit: u8) -> u8 {
        insn::rex_bit(self.rex, bit)
    }
}

fn read_prefixes(c: &mut Cursor<'_>) -> Result<Prefixes, PtwrError> {
    let mut p = Prefixes::default();
    let mut rex_seen = false;
    loop {
        let b = c.peek()?;
        let segment = match b {
            0x26 => Some(Segment::Es),
            0x2e => Some(Segment::Cs),
            0x36 => Some(Segment::Ss),
            0x3e => Some(Segment::Ds),
            _ => None,
        };
        let is_rex = b & 0xf0 == 0x40;
        let is_prefix = is_rex
            || segment.is_some()
            || matches!(b, 0xf0 | 0x64 | 0x65 | 0x66 | 0x67 | 0xf2 | 0xf3);
        if !is_prefix {
            return Ok(p);
        }
        if rex_seen {
            // A REX prefix followed by another prefix: the CPU would ignore the REX.
            return Err(PtwrError::UnexpectedPrefix(b));
        }
        match (b, segment) {
            (0xf0, _) if !p.lock => p.lock = true,
            (_, Some(seg)) if p.segment.is_none() => p.segment = Some(seg),
            _ if is_rex => {
                rex_seen = true;
                p.rex = b;
            }
            // fs, gs, 66, 67, f2, f3, a repeated lock or segment override.
            _ => return Err(PtwrError::UnexpectedPrefix(b)),
        }
        c.pos += 1;
    }
}

/// The ModRM byte's reg field (REX.R-extended) and the memory operand it introduces
/// (64-bit addressing); a register operand is an error.
fn modrm_mem(c: &mut Cursor<'_>, p: &Prefixes) -> Result<(u8, MemOperand), PtwrError> {
    let modrm = c.next_byte()?;
    let mode = modrm >> 6;
    if mode == 3 {
        return Err(PtwrError::RegisterOperand);
    }
    let reg = ((modrm >> 3) & 7) | p.rex_bit(REX_R);
    let op = insn::mem_operand(c, modrm, p.segment, p.rex)?;
    Ok((reg, op))
}

/// Decode the instruction at the start of `bytes` (up to [`MAX_INSN_LEN`](super::emulate::MAX_INSN_LEN) bytes copied
/// from the faulting `rip`; fewer if the code ends at an unreadable page). Never panics,
/// whatever the input.
pub fn decode_pte_write(bytes: &[u8]) -> Result<PteWrite, PtwrError> {
    let mut c = Cursor::new(bytes);
    let p = read_prefixes(&mut c)?;
    let wide = if p.rex & REX_W != 0 { 8 } else { 4 };
    let opcode = c.next_byte()?;
    let (op, mem, size) = match opcode {
        // mov r/m, r
        0x89 => {
            let (reg, mem) = modrm_mem(&mut c, &p)?;
            (PteOp::Store(Src::Reg(reg)), mem, wide)
        }
        // mov r/m, imm32
        0xc7 => {
            let (ext, mem) = modrm_mem(&mut c, &p)?;
            if ext & 7 != 0 {
                return Err(PtwrError::Unsupported);
            }
            (PteOp::Store(imm(c.imm32()?, wide)), mem, wide)
        }
        // xchg r/m, r
        0x87 => {
            let (reg, mem) = modrm_mem(&mut c, &p)?;
            (PteOp::Xchg(reg), mem, wide)
        }
        // or r/m, r / and r/m, r
        0x09 | 0x21 => {
            let (reg, mem) = modrm_mem(&mut c, &p)?;
            (logic(opcode == 0x21, Src::Reg(reg)), mem, wide)
        }
        // Group 1: and/or r/m8, imm8 / r/m, imm32 / r/m, imm8 (sign-extended).
        0x80 | 0x81 | 0x83 => {
            let (ext, mem) = modrm_mem(&mut c, &p)?;
            let is_and = match ext & 7 {
                1 => false,
                4 => true,
                // add, adc, sbb, sub, xor, cmp.
                _ => return Err(PtwrError::Unsupported),
            };
            let (src, size) = match opcode {
                0x80 => (Src::Imm(u64::from(c.next_byte()?)), 1),
                0x81 => (imm(c.imm32()?, wide), wide),
                _ => (imm(i32::from(c.next_byte()? as i8), wide), wide),
            };
            (logic(is_and, src), mem, size)
        }
        0x0f => match c.next_byte()? {
            // cmpxchg r/m, r
            0xb1 => {
                let (reg, mem) = modrm_mem(&mut c, &p)?;
                (PteOp::Cmpxchg(reg), mem, wide)
            }
            // btr r/m, r
            0xb3 => {
                let (reg, mem) = modrm_mem(&mut c, &p)?;
                (PteOp::Btr(BitSrc::Reg(reg)), mem, wide)
            }
            // bts r/m, r
            0xab => {
                let (reg, mem) = modrm_mem(&mut c, &p)?;
                (PteOp::Bts(BitSrc::Reg(reg)), mem, wide)
            }
            // Group 8: bts/btr r/m, imm8.
            0xba => {
                let (ext, mem) = modrm_mem(&mut c, &p)?;
                let bit = BitSrc::Imm(c.next_byte()?);
                let op = match ext & 7 {
                    5 => PteOp::Bts(bit),
                    6 => PteOp::Btr(bit),
                    // bt (a read), btc, undefined.
                    _ => return Err(PtwrError::Unsupported),
                };
                (op, mem, wide)
            }
            _ => return Err(PtwrError::Unsupported),
        },
        _ => return Err(PtwrError::Unsupported),
    };
    if p.lock && matches!(op, PteOp::Store(_)) {
        return Err(PtwrError::UnexpectedPrefix(0xf0));
    }
    // The cursor never moves past MAX_INSN_LEN bytes.
    Ok(PteWrite {
        len: c.pos,
        op,
        mem,
        size,
    })
}

/// An immediate, sign-extended to 64 bits for a 64-bit operand, as is for 32 bits.
fn imm(value: i32, size: u8) -> Src {
    Src::Imm(if size == 8 {
        value as i64 as u64
    } else {
        u64::from(value as u32)
    })
}

fn logic(is_and: bool, src: Src) -> PteOp {
    if is_and {
        PteOp::And(src)
    } else {
        PteOp::Or(src)
    }
}

/// The mask of an operand of `size` bytes.
fn mask(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (u32::from(size) * 8)) - 1
    }
}

/// The value of register `reg` after writing `value` at operand size `size`: 32- and
/// 64-bit writes zero-extend, narrower ones keep the upper bits.
fn reg_write(regs: &CpuUserRegs, reg: u8, value: u64, size: u8) -> Result<(u8, u64), PtwrError> {
    let cur = gpr(regs, reg).ok_or(PtwrError::Unsupported)?;
    let m = mask(size);
    let v = if size >= 4 {
        value & m
    } else {
        (cur & !m) | (value & m)
    };
    Ok((reg, v))
}

/// PF: set when the low byte of the result has an even number of one bits.
fn parity(result: u64) -> u64 {
    if (result as u8).count_ones() % 2 == 0 {
        PF
    } else {
        0
    }
}

/// ZF, SF and PF of a `size`-byte result.
fn zsp(result: u64, size: u8) -> u64 {
    let sign = 1u64 << (u32::from(size) * 8 - 1);
    let mut f = parity(result);
    if result & mask(size) == 0 {
        f |= ZF;
    }
    if result & sign != 0 {
        f |= SF;
    }
    f
}

/// Compute what `op` (operand size `size`) does to the `size`-byte field at byte
/// `offset_in_entry` of the 8-byte entry `old`, with the registers `regs` at the fault.
/// Nothing is modified: [`ApplyResult::commit`] stores the register effects once the
/// caller has validated and written `new`. Should the caller's write of the entry race
/// with the hardware setting Accessed/Dirty on another CPU (a compare-exchange against
/// `old` fails), it calls `apply` again with the fresh entry.
///
/// `rflags`, as the instruction leaves them (Intel SDM vol. 2):
/// * `mov`, `xchg`: unchanged;
/// * `and`, `or`: CF and OF cleared, ZF/SF/PF from the result; AF, undefined, cleared
///   (as QEMU and Bochs model it);
/// * `cmpxchg`: CF, PF, AF, ZF, SF, OF of the subtraction `rax - destination` (ZF set
///   on success);
/// * `btr`, `bts`: CF is the old bit; the others (OF, SF, AF, PF undefined, ZF
///   unaffected) unchanged.
pub fn apply(
    op: &PteOp,
    old: u64,
    regs: &CpuUserRegs,
    size: u8,
    offset_in_entry: u8,
) -> Result<ApplyResult, PtwrError> {
    if !matches!(size, 1 | 2 | 4 | 8) || offset_in_entry % size != 0 || offset_in_entry > 8 - size {
        return Err(PtwrError::Misaligned);
    }
    let m = mask(size);
    let shift = u32::from(offset_in_entry) * 8;
    let dest = (old >> shift) & m;
    let read = |src: &Src| -> Result<u64, PtwrError> {
        Ok(match *src {
            Src::Reg(r) => gpr(regs, r).ok_or(PtwrError::Unsupported)?,
            Src::Imm(v) => v,
        } & m)
    };
    let width = u32::from(size) * 8;
    let bit = |src: &BitSrc| -> Result<u32, PtwrError> {
        match *src {
            BitSrc::Imm(b) => Ok(u32::from(b) & (width - 1)),
            BitSrc::Reg(r) => {
                let v = gpr(regs, r).ok_or(PtwrError::Unsupported)?;
                // The offset is signed at the operand size; only 0..width stays within
                // the operand.
                let signed = (v << (64 - width)) as i64 >> (64 - width);
                u32::try_from(signed)
                    .ok()
                    .filter(|&b| b < width)
                    .ok_or(PtwrError::BitOffsetOutOfRange)
            }
        }
    };
    let flags = regs.rflags;
    let mut write = true;
    let mut reg = None;
    let (value, rflags) = match op {
        PteOp::Store(src) => (read(src)?, flags),
        PteOp::Xchg(r) => {
            let v = read(&Src::Reg(*r))?;
            reg = Some(reg_write(regs, *r, dest, size)?);
            (v, flags)
        }
        PteOp::Cmpxchg(r) => {
            let acc = regs.rax & m;
            let diff = acc.wrapping_sub(dest) & m;
            let sign = 1u64 << (width - 1);
            let mut f = zsp(diff, size);
            if acc < dest {
                f |= CF;
            }
            if (acc ^ dest) & (acc ^ diff) & sign != 0 {
                f |= OF;
            }
            if (acc ^ dest ^ diff) & 0x10 != 0 {
                f |= AF;
            }
            let f = (flags & !ARITH) | f;
            if acc == dest {
                (read(&Src::Reg(*r))?, f)
            } else {
                write = false;
                reg = Some(reg_write(regs, 0, dest, size)?);
                (dest, f)
            }
        }
        PteOp::And(src) | PteOp::Or(src) => {
            let s = read(src)?;
            let v = if matches!(op, PteOp::And(_)) {
                dest & s
            } else {
                dest | s
            };
            (v, (flags & !ARITH) | zsp(v, size))
        }
        PteOp::Btr(b) | PteOp::Bts(b) => {
            let b = 1u64 << bit(b)?;
            let cf = if dest & b != 0 { CF } else { 0 };
            let v = if matches!(op, PteOp::Btr(_)) {
                dest & !b
            } else {
                dest | b
            };
            (v, (flags & !CF) | cf)
        }
    };
    let new = if write {
        (old & !(m << shift)) | ((value & m) << shift)
    } else {
        old
    };
    Ok(ApplyResult {
        new,
        write,
        reg,
        rflags,
    })
}

#[cfg(test)]
mod tests {
    use zerocopy::FromZeros;

    use super::*;
    use crate::pv::emulate::MAX_INSN_LEN;

    fn ok(bytes: &[u8]) -> PteWrite {
        let w = decode_pte_write(bytes).unwrap_or_else(|e| panic!("{bytes:02x?}: {e:?}"));
        assert_eq!(w.len, bytes.len(), "{bytes:02x?}");
        w
    }

    fn mem(base: Option<u8>, index: Option<u8>, scale: u8, disp: i32) -> MemOperand {
        MemOperand {
            segment: None,
            base,
            index,
            scale,
            disp,
            rip_relative: false,
        }
    }

    fn w(op: PteOp, mem: MemOperand, size: u8, len: usize) -> PteWrite {
        PteWrite { len, op, mem, size }
    }

    // Encodings from GNU as (`as --64`, `objdump -d`); the source line precedes each.

    #[test]
    fn stores() {
        use PteOp::Store;
        // mov %rax,(%rdi)
        assert_eq!(
            ok(&[0x48, 0x89, 0x07]),
            w(Store(Src::Reg(0)), mem(Some(7), None, 1, 0), 8, 3)
        );
        // mov %r11,0x8(%r12)
        assert_eq!(
            ok(&[0x4d, 0x89, 0x5c, 0x24, 0x08]),
            w(Store(Src::Reg(11)), mem(Some(12), None, 1, 8), 8, 5)
        );
        // mov %ecx,0x4(%rdx)
        assert_eq!(
            ok(&[0x89, 0x4a, 0x04]),
            w(Store(Src::Reg(1)), mem(Some(2), None, 1, 4), 4, 3)
        );
        // movq $0x0,(%rax)
        assert_eq!(
            ok(&[0x48, 0xc7, 0x00, 0x00, 0x00, 0x00, 0x00]),
            w(Store(Src::Imm(0)), mem(Some(0), None, 1, 0), 8, 7)
        );
        // movq $-2,0x10(%rbx,%rsi,8)
        assert_eq!(
            ok(&[0x48, 0xc7, 0x44, 0xf3, 0x10, 0xfe, 0xff, 0xff, 0xff]),
            w(
                Store(Src::Imm(0xffff_ffff_ffff_fffe)),
                mem(Some(3), Some(6), 8, 0x10),
                8,
                9
            )
        );
        // movl $0x80000000,0x4(%rdi): not sign-extended at 32 bits.
        assert_eq!(
            ok(&[0xc7, 0x47, 0x04, 0x00, 0x00, 0x00, 0x80]),
            w(Store(Src::Imm(0x8000_0000)), mem(Some(7), None, 1, 4), 4, 7)
        );
        // c7 /1 is not a mov.
        assert_eq!(
            decode_pte_write(&[0x48, 0xc7, 0x08, 0, 0, 0, 0]),
            Err(PtwrError::Unsupported)
        );
        // lock mov is #UD.
        assert_eq!(
            decode_pte_write(&[0xf0, 0x48, 0x89, 0x07]),
            Err(PtwrError::UnexpectedPrefix(0xf0))
        );
    }

    #[test]
    fn exchanges() {
        // xchg %rax,(%rdx)
        assert_eq!(
            ok(&[0x48, 0x87, 0x02]),
            w(PteOp::Xchg(0), mem(Some(2), None, 1, 0), 8, 3)
        );
        // lock xchg %r9,(%rcx)
        assert_eq!(
            ok(&[0xf0, 0x4c, 0x87, 0x09]),
            w(PteOp::Xchg(9), mem(Some(1), None, 1, 0), 8, 4)
        );
        // xchg %esi,0x4(%rbp)
        assert_eq!(
            ok(&[0x87, 0x75, 0x04]),
            w(PteOp::Xchg(6), mem(Some(5), None, 1, 4), 4, 3)
        );
        // lock cmpxchg %rcx,(%rdi)
        assert_eq!(
            ok(&[0xf0, 0x48, 0x0f, 0xb1, 0x0f]),
            w(PteOp::Cmpxchg(1), mem(Some(7), None, 1, 0), 8, 5)
        );
        // lock cmpxchg %r10d,-0x4(%r13,%r14,1)
        assert_eq!(
            ok(&[0xf0, 0x47, 0x0f, 0xb1, 0x54, 0x35, 0xfc]),
            w(PteOp::Cmpxchg(10), mem(Some(13), Some(14), 1, -4), 4, 7)
        );
        // Byte cmpxchg (0f b0) is not emulated.
        assert_eq!(
            decode_pte_write(&[0xf0, 0x0f, 0xb0, 0x0f]),
            Err(PtwrError::Unsupported)
        );
    }

    #[test]
    fn logic_ops() {
        use PteOp::{And, Or};
        let rdi = mem(Some(7), None, 1, 0);
        // lock and %rax,(%rdi)
        assert_eq!(
            ok(&[0xf0, 0x48, 0x21, 0x07]),
            w(And(Src::Reg(0)), rdi, 8, 4)
        );
        // lock or %rdx,0x7f(%rdi)
        assert_eq!(
            ok(&[0xf0, 0x48, 0x09, 0x57, 0x7f]),
            w(Or(Src::Reg(2)), mem(Some(7), None, 1, 0x7f), 8, 5)
        );
        // lock andq $-0x3,(%rdi)
        assert_eq!(
            ok(&[0xf0, 0x48, 0x83, 0x27, 0xfd]),
            w(And(Src::Imm(!2)), rdi, 8, 5)
        );
        // lock orq $0x20,(%rdi)
        assert_eq!(
            ok(&[0xf0, 0x48, 0x83, 0x0f, 0x20]),
            w(Or(Src::Imm(0x20)), rdi, 8, 5)
        );
        // lock andq $0x7fffffff,(%rsi)
        assert_eq!(
            ok(&[0xf0, 0x48, 0x81, 0x26, 0xff, 0xff, 0xff, 0x7f]),
            w(And(Src::Imm(0x7fff_ffff)), mem(Some(6), None, 1, 0), 8, 8)
        );
        // lock orq $0x12345678,0x100(%rsi)
        assert_eq!(
            ok(&[0xf0, 0x48, 0x81, 0x8e, 0x00, 0x01, 0x00, 0x00, 0x78, 0x56, 0x34, 0x12]),
            w(
                Or(Src::Imm(0x1234_5678)),
                mem(Some(6), None, 1, 0x100),
                8,
                12
            )
        );
        // lock andb $0xfd,(%rax): Linux's ptep_set_wrprotect.
        assert_eq!(
            ok(&[0xf0, 0x80, 0x20, 0xfd]),
            w(And(Src::Imm(0xfd)), mem(Some(0), None, 1, 0), 1, 4)
        );
        // lock orb $0x80,0x7(%rdi)
        assert_eq!(
            ok(&[0xf0, 0x80, 0x4f, 0x07, 0x80]),
            w(Or(Src::Imm(0x80)), mem(Some(7), None, 1, 7), 1, 5)
        );
        // lock andl $-3,(%rdi)
        assert_eq!(
            ok(&[0xf0, 0x83, 0x27, 0xfd]),
            w(And(Src::Imm(0xffff_fffd)), rdi, 4, 4)
        );
        // ds and %rax,(%rdi): LOCK_PREFIX patched for a uniprocessor.
        assert_eq!(
            ok(&[0x3e, 0x48, 0x21, 0x07]),
            w(
                And(Src::Reg(0)),
                MemOperand {
                    segment: Some(Segment::Ds),
                    ..rdi
                },
                8,
                4
            )
        );
        // add, sub, xor, cmp (81 /0, /5, /6, /7) and the byte register forms are refused.
        for bytes in [
            &[0xf0, 0x48, 0x81, 0x07, 0, 0, 0, 0][..],
            &[0xf0, 0x48, 0x81, 0x2f, 0, 0, 0, 0],
            &[0xf0, 0x48, 0x83, 0x37, 0],
            &[0x48, 0x83, 0x3f, 0],
            &[0xf0, 0x20, 0x07],
            &[0xf0, 0x08, 0x07],
            &[0xf0, 0x48, 0x31, 0x07],
        ] {
            assert_eq!(
                decode_pte_write(bytes),
                Err(PtwrError::Unsupported),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn bit_ops() {
        use PteOp::{Btr, Bts};
        // lock btrq $0x5,(%rdi): Linux's ptep_test_and_clear_young.
        assert_eq!(
            ok(&[0xf0, 0x48, 0x0f, 0xba, 0x37, 0x05]),
            w(Btr(BitSrc::Imm(5)), mem(Some(7), None, 1, 0), 8, 6)
        );
        // lock btsq $0x1,0x8(%rax)
        assert_eq!(
            ok(&[0xf0, 0x48, 0x0f, 0xba, 0x68, 0x08, 0x01]),
            w(Bts(BitSrc::Imm(1)), mem(Some(0), None, 1, 8), 8, 7)
        );
        // lock btr %rsi,(%rdi)
        assert_eq!(
            ok(&[0xf0, 0x48, 0x0f, 0xb3, 0x37]),
            w(Btr(BitSrc::Reg(6)), mem(Some(7), None, 1, 0), 8, 5)
        );
        // lock bts %r8,(%r15)
        assert_eq!(
            ok(&[0xf0, 0x4d, 0x0f, 0xab, 0x07]),
            w(Bts(BitSrc::Reg(8)), mem(Some(15), None, 1, 0), 8, 5)
        );
        // lock btrl $0x1,0x4(%rdi)
        assert_eq!(
            ok(&[0xf0, 0x0f, 0xba, 0x77, 0x04, 0x01]),
            w(Btr(BitSrc::Imm(1)), mem(Some(7), None, 1, 4), 4, 6)
        );
        // ds btrq $0x5,(%rdi)
        assert_eq!(
            ok(&[0x3e, 0x48, 0x0f, 0xba, 0x37, 0x05]).op,
            Btr(BitSrc::Imm(5))
        );
        // bt (a read) and btc are not emulated.
        assert_eq!(
            decode_pte_write(&[0x48, 0x0f, 0xba, 0x27, 0x05]),
            Err(PtwrError::Unsupported)
        );
        assert_eq!(
            decode_pte_write(&[0xf0, 0x48, 0x0f, 0xba, 0x3f, 0x05]),
            Err(PtwrError::Unsupported)
        );
        assert_eq!(
            decode_pte_write(&[0xf0, 0x48, 0x0f, 0xbb, 0x37]),
            Err(PtwrError::Unsupported)
        );
    }

    #[test]
    fn addressing() {
        // mov %rax,0x1234(%rip)
        let insn = ok(&[0x48, 0x89, 0x05, 0x34, 0x12, 0x00, 0x00]);
        assert_eq!(
            insn.mem,
            MemOperand {
                rip_relative: true,
                ..mem(None, None, 1, 0x1234)
            }
        );
        let mut regs = CpuUserRegs::new_zeroed();
        regs.rip = 0xffff_8000_0000_0000;
        assert_eq!(insn.effective_address(&regs), 0xffff_8000_0000_123b);
        // movq $1,0x10(%rip): the next rip is after the immediate.
        let insn = ok(&[
            0x48, 0xc7, 0x05, 0x10, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
        ]);
        assert_eq!(insn.op, PteOp::Store(Src::Imm(1)));
        assert_eq!(insn.effective_address(&regs), 0xffff_8000_0000_001b);
        // mov %rax,(%rsp)
        assert_eq!(ok(&[0x48, 0x89, 0x04, 0x24]).mem, mem(Some(4), None, 1, 0));
        // mov %rax,0x0(%r13)
        assert_eq!(ok(&[0x49, 0x89, 0x45, 0x00]).mem, mem(Some(13), None, 1, 0));
        // mov %rax,0x0(,%rax,8)
        assert_eq!(
            ok(&[0x48, 0x89, 0x04, 0xc5, 0x00, 0x00, 0x00, 0x00]).mem,
            mem(None, Some(0), 8, 0)
        );
        // mov %rax,(%rax,%r12,2)
        let insn = ok(&[0x4a, 0x89, 0x04, 0x60]);
        assert_eq!(insn.mem, mem(Some(0), Some(12), 2, 0));
        regs.rax = 0x1000;
        regs.r12 = 0x10;
        assert_eq!(insn.effective_address(&regs), 0x1020);
        // Register destinations cannot have faulted: mov %rax,%rdi.
        assert_eq!(
            decode_pte_write(&[0x48, 0x89, 0xc7]),
            Err(PtwrError::RegisterOperand)
        );
    }

    #[test]
    fn prefixes() {
        use PtwrError::UnexpectedPrefix;
        let refused = [
            (&[0x65, 0x48, 0x89, 0x07][..], UnexpectedPrefix(0x65)),
            (&[0x64, 0x48, 0x89, 0x07], UnexpectedPrefix(0x64)),
            (&[0x66, 0x89, 0x07], UnexpectedPrefix(0x66)),
            (&[0x67, 0x48, 0x89, 0x07], UnexpectedPrefix(0x67)),
            (&[0xf2, 0xf0, 0x48, 0x21, 0x07], UnexpectedPrefix(0xf2)),
            (&[0xf0, 0xf3, 0x48, 0x21, 0x07], UnexpectedPrefix(0xf3)),
            (&[0xf0, 0xf0, 0x48, 0x21, 0x07], UnexpectedPrefix(0xf0)),
            (&[0x3e, 0x2e, 0x48, 0x21, 0x07], UnexpectedPrefix(0x2e)),
            // REX must come last.
            (&[0x48, 0xf0, 0x21, 0x07], UnexpectedPrefix(0xf0)),
            (&[0x48, 0x48, 0x21, 0x07], UnexpectedPrefix(0x48)),
        ];
        for (bytes, err) in refused {
            assert_eq!(decode_pte_write(bytes), Err(err), "{bytes:02x?}");
        }
        // Lock and ds together, either order (a LOCK_PREFIX next to an explicit ds).
        assert_eq!(
            ok(&[0x3e, 0xf0, 0x48, 0x21, 0x07]).op,
            PteOp::And(Src::Reg(0))
        );
        assert_eq!(
            ok(&[0xf0, 0x3e, 0x48, 0x21, 0x07]).op,
            PteOp::And(Src::Reg(0))
        );
        // Prefixes only: truncated; a run of them is refused at the first repeat.
        assert_eq!(decode_pte_write(&[0xf0, 0x3e]), Err(PtwrError::Truncated));
        assert_eq!(decode_pte_write(&[0x3e; 20]), Err(UnexpectedPrefix(0x3e)));
        // The longest accepted form (14 bytes):
        // lock ds orq $0x12345678,0x100(%rsp); every proper prefix is truncated.
        let full = [
            0xf0, 0x3e, 0x48, 0x81, 0x8c, 0x24, 0x00, 0x01, 0x00, 0x00, 0x78, 0x56, 0x34, 0x12,
        ];
        assert_eq!(ok(&full).len, 14);
        for n in 0..full.len() {
            assert_eq!(
                decode_pte_write(&full[..n]),
                Err(PtwrError::Truncated),
                "{n}"
            );
        }
    }

    fn regs_with(f: impl FnOnce(&mut CpuUserRegs)) -> CpuUserRegs {
        let mut regs = CpuUserRegs::new_zeroed();
        regs.rflags = 0x202;
        f(&mut regs);
        regs
    }

    const PTE: u64 = 0x8000_0001_2345_6067; // NX | mfn 0x123456 | D A U W P

    #[test]
    fn apply_store() {
        let regs = regs_with(|r| r.rax = 0x0000_0002_0000_0003);
        let r = apply(&PteOp::Store(Src::Reg(0)), PTE, &regs, 8, 0).unwrap();
        assert_eq!(
            r,
            ApplyResult {
                new: 0x0000_0002_0000_0003,
                write: true,
                reg: None,
                rflags: 0x202
            }
        );
        // 4-byte writes merge with the other half.
        let r = apply(&PteOp::Store(Src::Reg(0)), PTE, &regs, 4, 0).unwrap();
        assert_eq!(r.new, 0x8000_0001_0000_0003);
        let r = apply(&PteOp::Store(Src::Reg(0)), PTE, &regs, 4, 4).unwrap();
        assert_eq!(r.new, 0x0000_0003_2345_6067);
        let r = apply(&PteOp::Store(Src::Imm(0x8000_0000)), PTE, &regs, 4, 4).unwrap();
        assert_eq!(r.new, 0x8000_0000_2345_6067);
        let r = apply(&PteOp::Store(Src::Imm(!1)), PTE, &regs, 8, 0).unwrap();
        assert_eq!(r.new, !1);
        // Misaligned or out-of-entry fields.
        for (size, off) in [(8, 4), (4, 2), (4, 8), (1, 8), (3, 0), (0, 0), (16, 0)] {
            assert_eq!(
                apply(&PteOp::Store(Src::Reg(0)), PTE, &regs, size, off),
                Err(PtwrError::Misaligned),
                "{size} {off}"
            );
        }
    }

    #[test]
    fn apply_xchg() {
        let mut regs = regs_with(|r| r.rdx = 0xffff_ffff_0000_0000);
        let r = apply(&PteOp::Xchg(2), PTE, &regs, 8, 0).unwrap();
        assert_eq!(
            (r.new, r.write, r.reg, r.rflags),
            (0xffff_ffff_0000_0000, true, Some((2, PTE)), 0x202)
        );
        // 32-bit: the register is zero-extended.
        let r = apply(&PteOp::Xchg(2), PTE, &regs, 4, 4).unwrap();
        assert_eq!(r.new, 0x0000_0000_2345_6067);
        assert_eq!(r.reg, Some((2, 0x8000_0001)));
        r.commit(&mut regs);
        assert_eq!(regs.rdx, 0x8000_0001);
    }

    #[test]
    fn apply_cmpxchg() {
        // Success: the entry takes rcx, ZF set, rax untouched.
        let regs = regs_with(|r| {
            r.rax = PTE;
            r.rcx = 0x1234;
            r.rflags = 0x202 | CF | SF | OF;
        });
        let r = apply(&PteOp::Cmpxchg(1), PTE, &regs, 8, 0).unwrap();
        assert_eq!(
            r,
            ApplyResult {
                new: 0x1234,
                write: true,
                reg: None,
                rflags: 0x202 | ZF | PF
            }
        );
        // Failure: nothing written, rax takes the entry, flags of rax - entry.
        let regs = regs_with(|r| {
            r.rax = 1;
            r.rcx = 0x1234;
        });
        let r = apply(&PteOp::Cmpxchg(1), PTE, &regs, 8, 0).unwrap();
        let diff = 1u64.wrapping_sub(PTE); // 0x7fff_fffe_dcba_9f9a
        assert_eq!(diff, 0x7fff_fffe_dcba_9f9a);
        // CF (1 < PTE), AF (borrow into bit 4: 0x1 - 0x7 in the low nibble), PF (0x9a
        // has four bits); no OF (positive minus negative fits), no SF.
        assert_eq!(
            r,
            ApplyResult {
                new: PTE,
                write: false,
                reg: Some((0, PTE)),
                rflags: 0x202 | CF | AF | PF
            }
        );
        let mut after = regs;
        r.commit(&mut after);
        assert_eq!((after.rax, after.rflags), (PTE, 0x202 | CF | AF | PF));
        // 32-bit on the upper half: rax compared at 32 bits, zero-extended on failure.
        let regs = regs_with(|r| {
            r.rax = 0xdead_beef_8000_0001;
            r.r10 = 0xffff_ffff_0000_0000;
        });
        let r = apply(&PteOp::Cmpxchg(10), PTE, &regs, 4, 4).unwrap();
        assert_eq!((r.new, r.write, r.reg), (0x2345_6067, true, None));
        assert_eq!(r.rflags, 0x202 | ZF | PF);
        let regs = regs_with(|r| r.rax = 0x7000_0000);
        let r = apply(&PteOp::Cmpxchg(10), PTE, &regs, 4, 4).unwrap();
        assert_eq!(
            (r.new, r.write, r.reg),
            (PTE, false, Some((0, 0x8000_0001)))
        );
        // 0x70000000 - 0x80000001 = 0xefffffff: borrow, signed overflow, sign, AF
        // (0x0 - 0x1 in the low nibble), PF (0xff).
        assert_eq!(r.rflags, 0x202 | CF | OF | SF | AF | PF);
    }

    #[test]
    fn apply_logic() {
        let regs = regs_with(|r| r.rflags = 0x202 | CF | OF | AF | ZF);
        // lock andb $0xfd on byte 0: clear _PAGE_RW.
        let r = apply(&PteOp::And(Src::Imm(0xfd)), PTE, &regs, 1, 0).unwrap();
        assert_eq!(r.new, PTE & !2);
        // 0x65: not zero, not negative (as a byte), four bits set.
        assert_eq!(r.rflags, 0x202 | PF);
        assert_eq!(r.reg, None);
        // lock orb $0x80 on byte 7 (set NX, already set): SF from bit 7 of the byte.
        let r = apply(&PteOp::Or(Src::Imm(0x80)), PTE, &regs, 1, 7).unwrap();
        assert_eq!(r.new, PTE);
        assert_eq!(r.rflags, 0x202 | SF);
        // and with zero: ZF and PF.
        let r = apply(&PteOp::And(Src::Imm(0)), PTE, &regs, 8, 0).unwrap();
        assert_eq!((r.new, r.rflags), (0, 0x202 | ZF | PF));
        // 64-bit or with a register: SF from bit 63.
        let regs = regs_with(|r| r.rsi = 0x100);
        let r = apply(&PteOp::Or(Src::Reg(6)), PTE, &regs, 8, 0).unwrap();
        assert_eq!((r.new, r.rflags), (PTE | 0x100, 0x202 | SF));
        // 32-bit and on the upper half: the lower half is kept.
        let r = apply(&PteOp::And(Src::Imm(0x7fff_ffff)), PTE, &regs, 4, 4).unwrap();
        assert_eq!((r.new, r.rflags), (0x0000_0001_2345_6067, 0x202));
    }

    #[test]
    fn apply_bit_ops() {
        let regs = regs_with(|r| {
            r.rflags = 0x202 | ZF | SF;
            r.rsi = 63;
            r.rdi = 64;
            r.rbx = u64::MAX; // -1
            r.rcx = 0x1_0000_0005; // 5 at 32 bits
        });
        // btrq $5: clear Accessed, CF = 1; ZF and SF untouched.
        let r = apply(&PteOp::Btr(BitSrc::Imm(5)), PTE, &regs, 8, 0).unwrap();
        assert_eq!((r.new, r.rflags), (PTE & !0x20, 0x202 | ZF | SF | CF));
        // Again on the result: CF = 0.
        let r = apply(&PteOp::Btr(BitSrc::Imm(5)), r.new, &regs, 8, 0).unwrap();
        assert_eq!((r.new, r.rflags), (PTE & !0x20, 0x202 | ZF | SF));
        // The immediate is taken modulo 64: 69 is bit 5.
        let r = apply(&PteOp::Btr(BitSrc::Imm(69)), PTE, &regs, 8, 0).unwrap();
        assert_eq!(r.new, PTE & !0x20);
        // bts/btr with a register offset: bit 63.
        let r = apply(&PteOp::Bts(BitSrc::Reg(6)), 0, &regs, 8, 0).unwrap();
        assert_eq!((r.new, r.rflags & CF), (1 << 63, 0));
        let r = apply(&PteOp::Btr(BitSrc::Reg(6)), PTE, &regs, 8, 0).unwrap();
        assert_eq!((r.new, r.rflags & CF), (PTE & !(1 << 63), CF));
        // Register offsets outside the operand are refused (64, -1).
        for reg in [7, 3] {
            assert_eq!(
                apply(&PteOp::Bts(BitSrc::Reg(reg)), PTE, &regs, 8, 0),
                Err(PtwrError::BitOffsetOutOfRange)
            );
        }
        // 32-bit operand: the register is read at 32 bits; the imm modulo 32.
        let r = apply(&PteOp::Btr(BitSrc::Reg(1)), PTE, &regs, 4, 0).unwrap();
        assert_eq!(r.new, PTE & !0x20);
        let r = apply(&PteOp::Btr(BitSrc::Imm(63)), PTE, &regs, 4, 4).unwrap();
        assert_eq!((r.new, r.rflags & CF), (PTE & !(1 << 63), CF));
        assert_eq!(
            apply(&PteOp::Bts(BitSrc::Reg(6)), PTE, &regs, 4, 0),
            Err(PtwrError::BitOffsetOutOfRange)
        );
    }

    #[test]
    fn decode_then_apply() {
        // lock btrq $0x5,(%rdi) at a PTE in the middle of a page.
        let insn = ok(&[0xf0, 0x48, 0x0f, 0xba, 0x37, 0x05]);
        let mut regs = regs_with(|r| {
            r.rdi = 0xffff_8880_0123_4ff8;
            r.rip = 0xffff_ffff_8100_0000;
        });
        let ea = insn.effective_address(&regs);
        assert_eq!(ea, 0xffff_8880_0123_4ff8);
        let r = insn.apply(PTE, &regs, (ea & 7) as u8).unwrap();
        assert_eq!(r.new, PTE & !0x20);
        r.commit(&mut regs);
        assert_eq!(regs.rflags, 0x202 | CF);
        // mov %ecx,0x4(%rdx): the upper half.
        let insn = ok(&[0x89, 0x4a, 0x04]);
        let regs = regs_with(|r| {
            r.rdx = 0x1000;
            r.rcx = 0xaaaa_aaaa_0000_0000;
        });
        let ea = insn.effective_address(&regs);
        assert_eq!(ea, 0x1004);
        let r = insn.apply(PTE, &regs, (ea & 7) as u8).unwrap();
        assert_eq!(r.new, 0x0000_0000_2345_6067);
    }

    #[test]
    fn garbage() {
        assert_eq!(decode_pte_write(&[]), Err(PtwrError::Truncated));
        assert_eq!(decode_pte_write(&[0x0f]), Err(PtwrError::Truncated));
        assert_eq!(decode_pte_write(&[0x90]), Err(PtwrError::Unsupported));
        assert_eq!(decode_pte_write(&[0x0f, 0x05]), Err(PtwrError::Unsupported));
        assert_eq!(decode_pte_write(&[0x48, 0x89]), Err(PtwrError::Truncated));
        assert_eq!(
            decode_pte_write(&[0x48, 0x89, 0x04]),
            Err(PtwrError::Truncated)
        );
    }

    /// Random bytes, biased towards the interesting ones, never panic the decoder or
    /// `apply` and never yield a length over 15 or past the input.
    #[test]
    fn fuzz_never_panics() {
        const INTERESTING: [u8; 28] = [
            0x0f, 0xf0, 0x3e, 0x48, 0x4f, 0x41, 0x66, 0x65, 0x89, 0xc7, 0x87, 0x21, 0x09, 0x80,
            0x81, 0x83, 0xb1, 0xb3, 0xab, 0xba, 0x04, 0x05, 0x24, 0x44, 0x84, 0x37, 0xc0, 0xff,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut decoded = 0;
        for _ in 0..200_000 {
            let len = (rand() % 20) as usize;
            let mut buf = [0u8; 20];
            for b in &mut buf[..len] {
                let r = rand();
                *b = if r & 1 == 0 {
                    INTERESTING[(r >> 8) as usize % INTERESTING.len()]
                } else {
                    (r >> 8) as u8
                };
            }
            if let Ok(insn) = decode_pte_write(&buf[..len]) {
                assert!(insn.len >= 1 && insn.len <= MAX_INSN_LEN && insn.len <= len);
                assert!(matches!(insn.size, 1 | 4 | 8));
                decoded += 1;
                let mut regs = CpuUserRegs::new_zeroed();
                for r in 0..16 {
                    *super::super::emulate::gpr_mut(&mut regs, r).unwrap() = rand();
                }
                regs.rip = rand();
                regs.rflags = rand();
                let _ = insn.effective_address(&regs);
                let old = rand();
                let offset = (rand() % 9) as u8;
                if let Ok(r) = insn.apply(old, &regs, offset) {
                    // Only the addressed field changes.
                    let m = mask(insn.size) << (u32::from(offset) * 8);
                    assert_eq!(r.new & !m, old & !m);
                    assert!(r.write || r.new == old);
                    assert_eq!(r.rflags & !ARITH, regs.rflags & !ARITH);
                }
            }
        }
        assert!(
            decoded > 100,
            "the generator reaches valid encodings ({decoded})"
        );
    }
}
