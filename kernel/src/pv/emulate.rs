//! Decoding the privileged instructions a PV guest kernel still executes.
//!
//! The guest kernel runs in ring 3, so `cpuid` (only through the forced-emulation prefix,
//! since the plain instruction does not fault), `rdmsr`/`wrmsr`, control- and
//! debug-register moves, port I/O, `hlt`, `cli`/`sti` and the like raise #GP or #UD in
//! the hypervisor. The trap handler copies up to [`MAX_INSN_LEN`] bytes from the guest's
//! `rip` and calls [`decode`]; the hypervisor then checks its policy and carries out the
//! instruction's effect itself, advancing `rip` by [`Insn::len`]. Anything this module
//! does not recognise is an error: the caller reflects the original fault to the guest.
//!
//! The decoder reads 64-bit-mode encodings only (a 64-bit PV kernel has no 32-bit code
//! segment it could run privileged code from) and handles prefixes explicitly:
//!
//! * `lock` (`f0`) is refused everywhere ([`DecodeError::LockPrefix`]): it makes every
//!   instruction below #UD on real hardware, except AMD's `lock mov cr0` alias for CR8,
//!   which we do not offer;
//! * `rep`/`repne` (`f3`/`f2`) and address size (`67`) are refused;
//! * operand size (`66`) is accepted on `in`/`out` only, where it selects 16-bit ports;
//! * a segment override (at most one) is accepted only on the memory operand of `lgdt`,
//!   `lidt`, `lmsw` and `invlpg`;
//! * REX (`40`-`4f`) must come right before the opcode (the CPU ignores an earlier
//!   one; we refuse it) and is accepted on control/debug-register moves (REX.R extends
//!   the CR/DR number, REX.B the general register) and on the memory-operand forms
//!   (REX.B and REX.X extend base and index);
//! * any other prefix on any other instruction is refused
//!   ([`DecodeError::UnexpectedPrefix`]), even where the CPU would ignore it: a PV kernel
//!   never emits one, and an odd encoding is more likely an attack than a need.
//!
//! General registers are numbered as in the instruction encoding: `rax` 0, `rcx` 1,
//! `rdx` 2, `rbx` 3, `rsp` 4, `rbp` 5, `rsi` 6, `rdi` 7, `r8`-`r15` 8-15 ([`gpr`],
//! [`gpr_mut`] map them onto [`CpuUserRegs`]).

use ferrovisor_abi::xen::arch_x86::{CpuUserRegs, XEN_EMULATE_PREFIX};

use super::insn::{self, Cursor, InsnEnd, REX_B, REX_R};

/// The architectural limit on an x86 instruction's length.
pub const MAX_INSN_LEN: usize = 15;

/// A decoded instruction: its length in bytes (at most [`MAX_INSN_LEN`]) and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub len: usize,
    pub kind: InsnKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsnKind {
    /// `ud2; .ascii "xen"; cpuid` (`XEN_EMULATE_PREFIX`, `arch-x86/xen.h`): the guest
    /// asks for the hypervisor's view of CPUID.
    ForcedCpuid,
    /// `cpuid` (`0f a2`); it faults only with CPUID faulting enabled.
    Cpuid,
    /// `rdmsr` (`0f 32`).
    Rdmsr,
    /// `wrmsr` (`0f 30`).
    Wrmsr,
    /// `rdtsc` (`0f 31`), faulting with CR4.TSD.
    Rdtsc,
    /// `rdtscp` (`0f 01 f9`), faulting with CR4.TSD.
    Rdtscp,
    /// `rdpmc` (`0f 33`), faulting without CR4.PCE.
    Rdpmc,
    /// `xsetbv` (`0f 01 d1`).
    Xsetbv,
    /// `mov %crN, %reg` (`0f 20 /r`).
    MovFromCr { cr: u8, reg: u8 },
    /// `mov %reg, %crN` (`0f 22 /r`).
    MovToCr { cr: u8, reg: u8 },
    /// `mov %drN, %reg` (`0f 21 /r`).
    MovFromDr { dr: u8, reg: u8 },
    /// `mov %reg, %drN` (`0f 23 /r`).
    MovToDr { dr: u8, reg: u8 },
    /// `in`/`out` with an immediate port or `dx`; `size` is 1, 2 or 4 bytes, the data
    /// register `al`/`ax`/`eax`.
    Io { port: IoPort, size: u8, dir: IoDir },
    /// `hlt` (`f4`).
    Hlt,
    /// `cli` (`fa`).
    Cli,
    /// `sti` (`fb`).
    Sti,
    /// `wbinvd` (`0f 09`).
    Wbinvd,
    /// `invd` (`0f 08`).
    Invd,
    /// `clts` (`0f 06`).
    Clts,
    /// `swapgs` (`0f 01 f8`).
    Swapgs,
    /// `invlpg m` (`0f 01 /7`, memory form).
    Invlpg(MemOperand),
    /// `lgdt m` (`0f 01 /2`, memory form).
    Lgdt(MemOperand),
    /// `lidt m` (`0f 01 /3`, memory form).
    Lidt(MemOperand),
    /// `lmsw r/m16` (`0f 01 /6`).
    Lmsw(Operand),
}

/// The port of an `in`/`out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoPort {
    Imm(u8),
    Dx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDir {
    In,
    Out,
}

/// `rax` after an `in` of `size` bytes (1, 2 or 4) that read `value`: `al` and `ax` are
/// merged into the old register; a 32-bit `in` writes `eax`, which clears the upper half
/// of `rax` as every 32-bit register write does in 64-bit mode.
pub fn io_in_result(old_rax: u64, size: u8, value: u32) -> u64 {
    match size {
        1 => (old_rax & !0xff) | u64::from(value & 0xff),
        2 => (old_rax & !0xffff) | u64::from(value & 0xffff),
        _ => u64::from(value),
    }
}

/// A register or memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    Reg(u8),
    Mem(MemOperand),
}

/// A segment named by an override prefix. In 64-bit mode only `fs` and `gs` add a base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    Es,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
}

/// A memory operand: `segment:[base + index * scale + disp]`, or with `rip_relative`,
/// `[next rip + disp]` (`base` and `index` are then `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOperand {
    pub segment: Option<Segment>,
    pub base: Option<u8>,
    pub index: Option<u8>,
    /// 1, 2, 4 or 8.
    pub scale: u8,
    pub disp: i32,
    pub rip_relative: bool,
}

impl MemOperand {
    /// The effective address (the offset within the segment, 64-bit wrapping arithmetic
    /// as the CPU does), given the general registers and the address of the next
    /// instruction (`rip + len`). The caller adds the `fs`/`gs` base if `segment` asks.
    pub fn effective_address(&self, regs: &CpuUserRegs, next_rip: u64) -> u64 {
        let reg = |r: Option<u8>| r.and_then(|r| gpr(regs, r)).unwrap_or(0);
        let base = if self.rip_relative {
            next_rip
        } else {
            reg(self.base)
        };
        base.wrapping_add(reg(self.index).wrapping_mul(u64::from(self.scale)))
            .wrapping_add(self.disp as i64 as u64)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the instruction does (the caller copied too few, or the
    /// guest's code runs into an unreadable page).
    Truncated,
    /// The instruction would be longer than 15 bytes (the CPU raises #GP).
    TooLong,
    /// A `lock` prefix.
    LockPrefix,
    /// A prefix this instruction does not take (see the module documentation).
    UnexpectedPrefix(u8),
    /// A valid instruction the hypervisor does not emulate (`ins`/`outs`, `sgdt`, a
    /// `ud2` without the forced-emulation signature, ...), or no instruction at all.
    Unsupported,
    /// A control- or debug-register move the CPU would reject with #UD (CR1, CR5-CR7,
    /// CR9-CR15, DR8-DR15).
    Invalid,
}

/// The general register `reg` (0-15, encoding order) of `regs`.
pub fn gpr(regs: &CpuUserRegs, reg: u8) -> Option<u64> {
    Some(match reg {
        0 => regs.rax,
        1 => regs.rcx,
        2 => regs.rdx,
        3 => regs.rbx,
        4 => regs.rsp,
        5 => regs.rbp,
        6 => regs.rsi,
        7 => regs.rdi,
        8 => regs.r8,
        9 => regs.r9,
        10 => regs.r10,
        11 => regs.r11,
        12 => regs.r12,
        13 => regs.r13,
        14 => regs.r14,
        15 => regs.r15,
        _ => return None,
    })
}

/// The general register `reg` (0-15, encoding order) of `regs`, writable.
pub fn gpr_mut(regs: &mut CpuUserRegs, reg: u8) -> Option<&mut u64> {
    Some(match reg {
        0 => &mut regs.rax,
        1 => &mut regs.rcx,
        2 => &mut regs.rdx,
        3 => &mut regs.rbx,
        4 => &mut regs.rsp,
        5 => &mut regs.rbp,
        6 => &mut regs.rsi,
        7 => &mut regs.rdi,
        8 => &mut regs.r8,
        9 => &mut regs.r9,
        10 => &mut regs.r10,
        11 => &mut regs.r11,
        12 => &mut regs.r12,
        13 => &mut regs.r13,
        14 => &mut regs.r14,
        15 => &mut regs.r15,
        _ => return None,
    })
}

/// The prefixes seen before the opcode.
#[derive(Clone, Copy, Default)]
struct Prefixes {
    opsize: bool,
    segment: Option<(u8, Segment)>,
    rex: Option<u8>,
}

impl Prefixes {
    /// Refuse everything but what `allow_*` permits.
    fn only(
        &self,
        allow_opsize: bool,
        allow_segment: bool,
        allow_rex: bool,
    ) -> Result<(), DecodeError> {
        if self.opsize && !allow_opsize {
            return Err(DecodeError::UnexpectedPrefix(0x66));
        }
        if let (Some((byte, _)), false) = (self.segment, allow_segment) {
            return Err(DecodeError::UnexpectedPrefix(byte));
        }
        if let (Some(rex), false) = (self.rex, allow_rex) {
            return Err(DecodeError::UnexpectedPrefix(rex));
        }
        Ok(())
    }

    fn rex_bit(&self, bit: u8) -> u8 {
        insn::rex_bit(self.rex.unwrap_or(0), bit)
    }
}

impl From<InsnEnd> for DecodeError {
    fn from(end: InsnEnd) -> Self {
        match end {
            InsnEnd::Truncated => DecodeError::Truncated,
            InsnEnd::TooLong => DecodeError::TooLong,
        }
    }
}

fn segment_of(byte: u8) -> Option<Segment> {
    Some(match byte {
        0x26 => Segment::Es,
        0x2e => Segment::Cs,
        0x36 => Segment::Ss,
        0x3e => Segment::Ds,
        0x64 => Segment::Fs,
        0x65 => Segment::Gs,
        _ => return None,
    })
}

fn is_legacy_prefix(byte: u8) -> bool {
    matches!(byte, 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3) || segment_of(byte).is_some()
}

fn is_rex(byte: u8) -> bool {
    byte & 0xf0 == 0x40
}

fn read_prefixes(c: &mut Cursor<'_>) -> Result<Prefixes, DecodeError> {
    let mut p = Prefixes::default();
    loop {
        let b = c.peek()?;
        if !is_legacy_prefix(b) && !is_rex(b) {
            return Ok(p);
        }
        if p.rex.is_some() {
            // A REX prefix followed by another prefix: the CPU would ignore the REX.
            return Err(DecodeError::UnexpectedPrefix(b));
        }
        match b {
            0xf0 => return Err(DecodeError::LockPrefix),
            0x66 => p.opsize = true,
            _ if is_rex(b) => p.rex = Some(b),
            _ => match (segment_of(b), p.segment) {
                (Some(seg), None) => p.segment = Some((b, seg)),
                // A second segment override, 0x67, rep/repne.
                _ => return Err(DecodeError::UnexpectedPrefix(b)),
            },
        }
        c.pos += 1;
    }
}

/// The memory operand after a ModRM byte whose mod field is not 11 (64-bit addressing).
fn mem_operand(c: &mut Cursor<'_>, modrm: u8, p: &Prefixes) -> Result<MemOperand, DecodeError> {
    let segment = p.segment.map(|(_, s)| s);
    Ok(insn::mem_operand(c, modrm, segment, p.rex.unwrap_or(0))?)
}

/// `mov` to or from a control or debug register: `0f 20..23 /r`. The mod field is
/// ignored (the operand is always a register).
fn mov_special(c: &mut Cursor<'_>, opcode: u8, p: &Prefixes) -> Result<InsnKind, DecodeError> {
    p.only(false, false, true)?;
    let modrm = c.next_byte()?;
    let special = ((modrm >> 3) & 7) | p.rex_bit(REX_R);
    let reg = (modrm & 7) | p.rex_bit(REX_B);
    match opcode {
        0x20 | 0x22 => {
            if !matches!(special, 0 | 2 | 3 | 4 | 8) {
                return Err(DecodeError::Invalid);
            }
            Ok(if opcode == 0x20 {
                InsnKind::MovFromCr { cr: special, reg }
            } else {
                InsnKind::MovToCr { cr: special, reg }
            })
        }
        _ => {
            if special > 7 {
                return Err(DecodeError::Invalid);
            }
            Ok(if opcode == 0x21 {
                InsnKind::MovFromDr { dr: special, reg }
            } else {
                InsnKind::MovToDr { dr: special, reg }
            })
        }
    }
}

/// Group 7: `0f 01 /r`.
fn group7(c: &mut Cursor<'_>, p: &Prefixes) -> Result<InsnKind, DecodeError> {
    let modrm = c.next_byte()?;
    let op = (modrm >> 3) & 7;
    if modrm >> 6 == 3 {
        if op == 6 {
            p.only(false, false, true)?;
            return Ok(InsnKind::Lmsw(Operand::Reg((modrm & 7) | p.rex_bit(REX_B))));
        }
        p.only(false, false, false)?;
        return match modrm {
            0xd1 => Ok(InsnKind::Xsetbv),
            0xf8 => Ok(InsnKind::Swapgs),
            0xf9 => Ok(InsnKind::Rdtscp),
            // The register forms of /0-/3 and /7 are other instructions (vmcall,
            // monitor, xgetbv, clac, SVM, monitorx, ...), none of which we emulate.
            _ => Err(DecodeError::Unsupported),
        };
    }
    p.only(false, true, true)?;
    let mem = mem_operand(c, modrm, p)?;
    match op {
        2 => Ok(InsnKind::Lgdt(mem)),
        3 => Ok(InsnKind::Lidt(mem)),
        6 => Ok(InsnKind::Lmsw(Operand::Mem(mem))),
        7 => Ok(InsnKind::Invlpg(mem)),
        // sgdt, sidt, smsw (not privileged) and the rest.
        _ => Err(DecodeError::Unsupported),
    }
}

/// `in`/`out`: `e4`-`e7` with an 8-bit immediate port, `ec`-`ef` with the port in `dx`.
fn io(c: &mut Cursor<'_>, opcode: u8, p: &Prefixes) -> Result<InsnKind, DecodeError> {
    p.only(true, false, false)?;
    let port = if opcode & 0x08 == 0 {
        IoPort::Imm(c.next_byte()?)
    } else {
        IoPort::Dx
    };
    let size = match (opcode & 1, p.opsize) {
        (0, _) => 1,
        (_, true) => 2,
        (_, false) => 4,
    };
    let dir = if opcode & 2 == 0 {
        IoDir::In
    } else {
        IoDir::Out
    };
    Ok(InsnKind::Io { port, size, dir })
}

/// Decode the instruction at the start of `bytes` (the caller copies up to
/// [`MAX_INSN_LEN`] bytes from the guest's `rip`; fewer if the code ends at an unreadable
/// page). Never panics, whatever the input.
pub fn decode(bytes: &[u8]) -> Result<Insn, DecodeError> {
    // `ud2` is emulated only as the forced-emulation signature followed by `cpuid`,
    // matched on its exact bytes with no prefixes.
    if bytes.starts_with(&[0x0f, 0x0b]) {
        let forced = XEN_EMULATE_PREFIX.iter().chain(&[0x0f, 0xa2]);
        for (i, &want) in forced.enumerate() {
            match bytes.get(i) {
                None => return Err(DecodeError::Truncated),
                Some(&b) if b != want => return Err(DecodeError::Unsupported),
                Some(_) => {}
            }
        }
        return Ok(Insn {
            len: XEN_EMULATE_PREFIX.len() + 2,
            kind: InsnKind::ForcedCpuid,
        });
    }

    let mut c = Cursor::new(bytes);
    let p = read_prefixes(&mut c)?;
    let opcode = c.next_byte()?;
    let kind = match opcode {
        0xe4..=0xe7 | 0xec..=0xef => io(&mut c, opcode, &p)?,
        // ins/outs.
        0x6c..=0x6f => return Err(DecodeError::Unsupported),
        0xf4 | 0xfa | 0xfb => {
            p.only(false, false, false)?;
            match opcode {
                0xf4 => InsnKind::Hlt,
                0xfa => InsnKind::Cli,
                _ => InsnKind::Sti,
            }
        }
        0x0f => {
            let op2 = c.next_byte()?;
            match op2 {
                0x20..=0x23 => mov_special(&mut c, op2, &p)?,
                0x01 => group7(&mut c, &p)?,
                _ => {
                    let kind = match op2 {
                        0xa2 => InsnKind::Cpuid,
                        0x32 => InsnKind::Rdmsr,
                        0x30 => InsnKind::Wrmsr,
                        0x31 => InsnKind::Rdtsc,
                        0x33 => InsnKind::Rdpmc,
                        0x06 => InsnKind::Clts,
                        0x08 => InsnKind::Invd,
                        0x09 => InsnKind::Wbinvd,
                        _ => return Err(DecodeError::Unsupported),
                    };
                    p.only(false, false, false)?;
                    kind
                }
            }
        }
        _ => return Err(DecodeError::Unsupported),
    };
    // The cursor never moves past MAX_INSN_LEN bytes.
    Ok(Insn { len: c.pos, kind })
}

#[cfg(test)]
mod tests {
    use zerocopy::FromZeros;

    use super::*;

    fn ok(bytes: &[u8]) -> Insn {
        decode(bytes).unwrap_or_else(|e| panic!("{bytes:02x?}: {e:?}"))
    }

    fn kind(bytes: &[u8]) -> InsnKind {
        let insn = ok(bytes);
        assert_eq!(insn.len, bytes.len(), "{bytes:02x?}");
        insn.kind
    }

    #[test]
    fn forced_cpuid() {
        let insn = ok(&[0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2, 0x90, 0x90]);
        assert_eq!(
            insn,
            Insn {
                len: 7,
                kind: InsnKind::ForcedCpuid
            }
        );
        // Anything else after the signature, or a plain ud2, is not emulated.
        assert_eq!(
            decode(&[0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0x32]),
            Err(DecodeError::Unsupported)
        );
        assert_eq!(
            decode(&[0x0f, 0x0b, 0x90, 0x90]),
            Err(DecodeError::Unsupported)
        );
        assert_eq!(
            decode(&[0x0f, 0x0b, b'x', b'e', b'N']),
            Err(DecodeError::Unsupported)
        );
        // Every proper prefix of the sequence is truncated.
        let full = [0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2];
        for n in 0..full.len() {
            assert_eq!(decode(&full[..n]), Err(DecodeError::Truncated), "{n}");
        }
        // No prefixes before the signature.
        assert!(decode(&[0x66, 0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2]).is_err());
    }

    #[test]
    fn simple_two_byte_instructions() {
        assert_eq!(kind(&[0x0f, 0xa2]), InsnKind::Cpuid);
        assert_eq!(kind(&[0x0f, 0x32]), InsnKind::Rdmsr);
        assert_eq!(kind(&[0x0f, 0x30]), InsnKind::Wrmsr);
        assert_eq!(kind(&[0x0f, 0x31]), InsnKind::Rdtsc);
        assert_eq!(kind(&[0x0f, 0x33]), InsnKind::Rdpmc);
        assert_eq!(kind(&[0x0f, 0x06]), InsnKind::Clts);
        assert_eq!(kind(&[0x0f, 0x08]), InsnKind::Invd);
        assert_eq!(kind(&[0x0f, 0x09]), InsnKind::Wbinvd);
        assert_eq!(kind(&[0x0f, 0x01, 0xf8]), InsnKind::Swapgs);
        assert_eq!(kind(&[0x0f, 0x01, 0xf9]), InsnKind::Rdtscp);
        assert_eq!(kind(&[0x0f, 0x01, 0xd1]), InsnKind::Xsetbv);
        assert_eq!(kind(&[0xf4]), InsnKind::Hlt);
        assert_eq!(kind(&[0xfa]), InsnKind::Cli);
        assert_eq!(kind(&[0xfb]), InsnKind::Sti);
        // Trailing bytes are not part of the instruction.
        assert_eq!(ok(&[0x0f, 0x30, 0xff, 0xff]).len, 2);
    }

    #[test]
    fn control_register_moves() {
        // mov %cr3, %rax
        assert_eq!(
            kind(&[0x0f, 0x20, 0xd8]),
            InsnKind::MovFromCr { cr: 3, reg: 0 }
        );
        // mov %rdi, %cr4
        assert_eq!(
            kind(&[0x0f, 0x22, 0xe7]),
            InsnKind::MovToCr { cr: 4, reg: 7 }
        );
        // mov %cr0, %r9 (REX.B)
        assert_eq!(
            kind(&[0x41, 0x0f, 0x20, 0xc1]),
            InsnKind::MovFromCr { cr: 0, reg: 9 }
        );
        // mov %r15, %cr8 (REX.R + REX.B)
        assert_eq!(
            kind(&[0x45, 0x0f, 0x22, 0xc7]),
            InsnKind::MovToCr { cr: 8, reg: 15 }
        );
        // mov %cr8, %rax (REX.R), REX.W ignored
        assert_eq!(
            kind(&[0x4c, 0x0f, 0x20, 0xc0]),
            InsnKind::MovFromCr { cr: 8, reg: 0 }
        );
        // mov %cr2, %rdx: the mod field is ignored.
        assert_eq!(
            kind(&[0x0f, 0x20, 0x12]),
            InsnKind::MovFromCr { cr: 2, reg: 2 }
        );
        // CR1, CR5-CR7, CR9-CR15 do not exist.
        for (rex, modrm) in [
            (None, 0xc8),
            (None, 0xe8),
            (None, 0xf8),
            (Some(0x44), 0xc8),
            (Some(0x44), 0xf8),
        ] {
            let mut v = alloc::vec::Vec::new();
            v.extend(rex);
            v.extend([0x0f, 0x22, modrm]);
            assert_eq!(decode(&v), Err(DecodeError::Invalid), "{v:02x?}");
        }
        assert_eq!(decode(&[0x0f, 0x20]), Err(DecodeError::Truncated));
        assert_eq!(
            decode(&[0x66, 0x0f, 0x20, 0xd8]),
            Err(DecodeError::UnexpectedPrefix(0x66))
        );
        assert_eq!(
            decode(&[0x65, 0x0f, 0x20, 0xd8]),
            Err(DecodeError::UnexpectedPrefix(0x65))
        );
        assert_eq!(
            decode(&[0xf0, 0x0f, 0x20, 0xc0]),
            Err(DecodeError::LockPrefix)
        );
    }

    #[test]
    fn debug_register_moves() {
        // mov %db7, %rax
        assert_eq!(
            kind(&[0x0f, 0x21, 0xf8]),
            InsnKind::MovFromDr { dr: 7, reg: 0 }
        );
        // mov %r10, %db0
        assert_eq!(
            kind(&[0x41, 0x0f, 0x23, 0xc2]),
            InsnKind::MovToDr { dr: 0, reg: 10 }
        );
        // DR8 does not exist.
        assert_eq!(decode(&[0x44, 0x0f, 0x23, 0xc0]), Err(DecodeError::Invalid));
    }

    #[test]
    fn port_io() {
        use IoDir::*;
        use IoPort::*;
        let io = |port, size, dir| InsnKind::Io { port, size, dir };
        assert_eq!(kind(&[0xe4, 0x60]), io(Imm(0x60), 1, In));
        assert_eq!(kind(&[0xe5, 0x40]), io(Imm(0x40), 4, In));
        assert_eq!(kind(&[0x66, 0xe5, 0x40]), io(Imm(0x40), 2, In));
        assert_eq!(kind(&[0xe6, 0x80]), io(Imm(0x80), 1, Out));
        assert_eq!(kind(&[0xe7, 0x80]), io(Imm(0x80), 4, Out));
        assert_eq!(kind(&[0x66, 0xe7, 0x80]), io(Imm(0x80), 2, Out));
        assert_eq!(kind(&[0xec]), io(Dx, 1, In));
        assert_eq!(kind(&[0xed]), io(Dx, 4, In));
        assert_eq!(kind(&[0x66, 0xed]), io(Dx, 2, In));
        assert_eq!(kind(&[0xee]), io(Dx, 1, Out));
        assert_eq!(kind(&[0xef]), io(Dx, 4, Out));
        assert_eq!(kind(&[0x66, 0xef]), io(Dx, 2, Out));
        // Repeated 0x66 is still 16-bit.
        assert_eq!(kind(&[0x66, 0x66, 0xef]), io(Dx, 2, Out));
        assert_eq!(decode(&[0xe4]), Err(DecodeError::Truncated));
        // String I/O is refused, with or without rep.
        for b in 0x6c..=0x6f {
            assert_eq!(decode(&[b]), Err(DecodeError::Unsupported));
        }
        assert_eq!(
            decode(&[0xf3, 0x6e]),
            Err(DecodeError::UnexpectedPrefix(0xf3))
        );
        assert_eq!(
            decode(&[0x48, 0xef]),
            Err(DecodeError::UnexpectedPrefix(0x48))
        );
        assert_eq!(
            decode(&[0x2e, 0xee]),
            Err(DecodeError::UnexpectedPrefix(0x2e))
        );
        assert_eq!(decode(&[0xf0, 0xee]), Err(DecodeError::LockPrefix));
        assert_eq!(
            decode(&[0x67, 0xee]),
            Err(DecodeError::UnexpectedPrefix(0x67))
        );
    }

    #[test]
    fn memory_operands() {
        let mem = |base, index, scale, disp| MemOperand {
            segment: None,
            base,
            index,
            scale,
            disp,
            rip_relative: false,
        };
        // invlpg (%rax)
        assert_eq!(
            kind(&[0x0f, 0x01, 0x38]),
            InsnKind::Invlpg(mem(Some(0), None, 1, 0))
        );
        // invlpg 0x10(%r13)
        assert_eq!(
            kind(&[0x41, 0x0f, 0x01, 0x7d, 0x10]),
            InsnKind::Invlpg(mem(Some(13), None, 1, 0x10))
        );
        // lgdt -0x8(%rsp): SIB with no index
        assert_eq!(
            kind(&[0x0f, 0x01, 0x54, 0x24, 0xf8]),
            InsnKind::Lgdt(mem(Some(4), None, 1, -8))
        );
        // lidt 0x12345678(%rbx,%r12,8): SIB index r12 via REX.X
        assert_eq!(
            kind(&[0x42, 0x0f, 0x01, 0x9c, 0xe3, 0x78, 0x56, 0x34, 0x12]),
            InsnKind::Lidt(mem(Some(3), Some(12), 8, 0x1234_5678))
        );
        // lgdt 0x100(,%rcx,4): no base, disp32
        assert_eq!(
            kind(&[0x0f, 0x01, 0x14, 0x8d, 0x00, 0x01, 0x00, 0x00]),
            InsnKind::Lgdt(mem(None, Some(1), 4, 0x100))
        );
        // lidt 0x20(%rip)
        assert_eq!(
            kind(&[0x0f, 0x01, 0x1d, 0x20, 0x00, 0x00, 0x00]),
            InsnKind::Lidt(MemOperand {
                rip_relative: true,
                ..mem(None, None, 1, 0x20)
            })
        );
        // invlpg %gs:(%rdi)
        assert_eq!(
            kind(&[0x65, 0x0f, 0x01, 0x3f]),
            InsnKind::Invlpg(MemOperand {
                segment: Some(Segment::Gs),
                ..mem(Some(7), None, 1, 0)
            })
        );
        // lmsw %ax / lmsw (%rsi) / lmsw %r8w
        assert_eq!(kind(&[0x0f, 0x01, 0xf0]), InsnKind::Lmsw(Operand::Reg(0)));
        assert_eq!(
            kind(&[0x41, 0x0f, 0x01, 0xf0]),
            InsnKind::Lmsw(Operand::Reg(8))
        );
        assert_eq!(
            kind(&[0x0f, 0x01, 0x36]),
            InsnKind::Lmsw(Operand::Mem(mem(Some(6), None, 1, 0)))
        );
        // Not emulated: sgdt, smsw, vmcall, xgetbv, clac; two segment overrides.
        for bytes in [
            &[0x0f, 0x01, 0x00][..],
            &[0x0f, 0x01, 0x20],
            &[0x0f, 0x01, 0xc1],
            &[0x0f, 0x01, 0xd0],
            &[0x0f, 0x01, 0xca],
        ] {
            assert_eq!(decode(bytes), Err(DecodeError::Unsupported), "{bytes:02x?}");
        }
        assert_eq!(
            decode(&[0x64, 0x65, 0x0f, 0x01, 0x3f]),
            Err(DecodeError::UnexpectedPrefix(0x65))
        );
        // Truncated displacement / SIB.
        assert_eq!(
            decode(&[0x0f, 0x01, 0x1d, 0x20, 0x00]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(decode(&[0x0f, 0x01, 0x14]), Err(DecodeError::Truncated));
    }

    #[test]
    fn effective_address() {
        let mut regs = CpuUserRegs::new_zeroed();
        regs.rbx = 0x1000;
        regs.r12 = 0x10;
        let InsnKind::Lidt(m) = ok(&[0x42, 0x0f, 0x01, 0x9c, 0xe3, 0xf0, 0xff, 0xff, 0xff]).kind
        else {
            panic!()
        };
        assert_eq!(m.effective_address(&regs, 0), 0x1000 + 0x80 - 0x10);
        let insn = ok(&[0x0f, 0x01, 0x1d, 0x20, 0x00, 0x00, 0x00]);
        let InsnKind::Lidt(m) = insn.kind else {
            panic!()
        };
        assert_eq!(m.effective_address(&regs, 0x4000 + insn.len as u64), 0x4027);
    }

    #[test]
    fn prefix_rules() {
        // REX must be last.
        assert_eq!(
            decode(&[0x41, 0x66, 0xef]),
            Err(DecodeError::UnexpectedPrefix(0x66))
        );
        assert_eq!(
            decode(&[0x41, 0x41, 0x0f, 0x20, 0xc0]),
            Err(DecodeError::UnexpectedPrefix(0x41))
        );
        // No prefixes on the simple instructions.
        assert_eq!(
            decode(&[0x48, 0x0f, 0x30]),
            Err(DecodeError::UnexpectedPrefix(0x48))
        );
        assert_eq!(
            decode(&[0x66, 0xf4]),
            Err(DecodeError::UnexpectedPrefix(0x66))
        );
        assert_eq!(
            decode(&[0xf2, 0x0f, 0xa2]),
            Err(DecodeError::UnexpectedPrefix(0xf2))
        );
        assert_eq!(
            decode(&[0x48, 0x0f, 0x01, 0xf8]),
            Err(DecodeError::UnexpectedPrefix(0x48))
        );
        // Prefixes only: truncated; 15 prefixes: too long.
        assert_eq!(decode(&[0x66, 0x66]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0x66; 20]), Err(DecodeError::TooLong));
        let mut long = [0x66u8; 16];
        long[14] = 0xef;
        assert_eq!(ok(&long).len, 15);
        long[14] = 0xe4; // its immediate would be byte 16
        assert_eq!(decode(&long), Err(DecodeError::TooLong));
    }

    #[test]
    fn garbage() {
        assert_eq!(decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0x0f]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0x90]), Err(DecodeError::Unsupported));
        assert_eq!(decode(&[0x0f, 0x05]), Err(DecodeError::Unsupported));
        assert_eq!(decode(&[0xcd, 0x80]), Err(DecodeError::Unsupported));
    }

    #[test]
    fn register_numbering() {
        let mut regs = CpuUserRegs::new_zeroed();
        for r in 0..16u8 {
            *gpr_mut(&mut regs, r).unwrap() = 0x100 + u64::from(r);
        }
        assert_eq!(
            (regs.rax, regs.rcx, regs.rdx, regs.rbx),
            (0x100, 0x101, 0x102, 0x103)
        );
        assert_eq!(
            (regs.rsp, regs.rbp, regs.rsi, regs.rdi),
            (0x104, 0x105, 0x106, 0x107)
        );
        assert_eq!((regs.r8, regs.r15), (0x108, 0x10f));
        for r in 0..16u8 {
            assert_eq!(gpr(&regs, r), Some(0x100 + u64::from(r)));
        }
        assert_eq!(gpr(&regs, 16), None);
        assert!(gpr_mut(&mut regs, 255).is_none());
    }

    /// Random bytes, biased towards the interesting ones, never panic the decoder and
    /// never yield a length over 15 or past the input.
    #[test]
    fn fuzz_never_panics() {
        const INTERESTING: [u8; 24] = [
            0x0f, 0x01, 0x20, 0x22, 0x21, 0x23, 0x66, 0x67, 0xf0, 0xf3, 0x41, 0x4f, 0x65, 0xe4,
            0xef, 0x0b, b'x', b'e', b'n', 0xa2, 0x24, 0x05, 0x3d, 0xc0,
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
            if let Ok(insn) = decode(&buf[..len]) {
                assert!(insn.len >= 1 && insn.len <= MAX_INSN_LEN && insn.len <= len);
                decoded += 1;
            }
        }
        assert!(
            decoded > 100,
            "the generator reaches valid encodings ({decoded})"
        );
    }

    #[test]
    fn in_results_merge_like_the_cpu() {
        let old = 0x1122_3344_5566_7788;
        assert_eq!(io_in_result(old, 1, 0xffff_ffff), 0x1122_3344_5566_77ff);
        assert_eq!(io_in_result(old, 2, 0xffff_ffff), 0x1122_3344_5566_ffff);
        assert_eq!(io_in_result(old, 4, 0xffff_ffff), 0x0000_0000_ffff_ffff);
    }
}
