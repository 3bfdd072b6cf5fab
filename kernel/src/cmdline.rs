//! The hypervisor's own command line (the multiboot2 cmdline tag of its image).
//!
//! The option names and value syntax follow Xen's habits (docs/misc/xen-command-line),
//! so an administrator can move a GRUB entry from Xen to Ferrovisor: `dom0_mem=` takes a
//! bare number as KiB, `loglvl=` takes Xen's level names, a later option overrides an
//! earlier one, and `-` and `_` are interchangeable inside option names.
//!
//! Parsing never fails: a bad option is reported as a [`Diagnostic`] and ignored, so a
//! typo in a GRUB entry costs a log line rather than a boot. The dom0 kernel's own command
//! line (the boot module's string) is never parsed here; it goes to dom0 untouched.

use core::fmt;

use log::LevelFilter;

const MIB: u64 = 1 << 20;

/// The most diagnostics a [`Cmdline`] keeps; the rest are only counted.
pub const MAX_DIAGNOSTICS: usize = 16;

/// Why a size string was refused by [`parse_size`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeError {
    /// Nothing to parse.
    Empty,
    /// The string does not start with a decimal digit.
    NotANumber,
    /// The text after the number is not a known unit.
    UnknownSuffix,
    /// The size does not fit in 64 bits of bytes.
    Overflow,
}

impl SizeError {
    /// A short, specific reason, used as the text of [`Diagnostic::Malformed`].
    pub const fn reason(self) -> &'static str {
        match self {
            SizeError::Empty => "expected a size such as 262144 (KiB), 512M or 2G",
            SizeError::NotANumber => "a size must start with a decimal number",
            SizeError::UnknownSuffix => "unknown size suffix (use B, K, M, G or T)",
            SizeError::Overflow => "size does not fit in 64 bits",
        }
    }
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// Parses a size in bytes.
///
/// A bare number is KiB, as for Xen's `dom0_mem=262144` (256 MiB). The suffixes `B`, `K`,
/// `M`, `G` and `T` (any case, optionally spelled `KiB`, `MiB`, `GiB`, `TiB`) are binary
/// multiples of a byte.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(SizeError::NotANumber);
    }
    let (number, suffix) = s.split_at(digits);
    let number = parse_decimal(number).ok_or(SizeError::Overflow)?;
    let shift = match_suffix(suffix).ok_or(SizeError::UnknownSuffix)?;
    number.checked_mul(1u64 << shift).ok_or(SizeError::Overflow)
}

/// The power of two a size suffix multiplies by.
fn match_suffix(suffix: &str) -> Option<u32> {
    const UNITS: [(&str, &str, u32); 4] = [
        ("k", "kib", 10),
        ("m", "mib", 20),
        ("g", "gib", 30),
        ("t", "tib", 40),
    ];
    if suffix.is_empty() {
        return Some(10);
    }
    if suffix.eq_ignore_ascii_case("b") {
        return Some(0);
    }
    UNITS
        .iter()
        .find(|(short, long, _)| {
            suffix.eq_ignore_ascii_case(short) || suffix.eq_ignore_ascii_case(long)
        })
        .map(|&(_, _, shift)| shift)
}

/// A string of decimal digits only (no sign, no spaces), overflow checked.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.bytes().try_fold(0u64, |acc, b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// A decimal number, or a hexadecimal one with a `0x` prefix.
fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() => hex.bytes().try_fold(0u64, |acc, b| {
            let digit = char::from(b).to_digit(16)?;
            acc.checked_mul(16)?.checked_add(u64::from(digit))
        }),
        Some(_) => None,
        None => parse_decimal(s),
    }
}

/// The size item of `dom0_mem=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dom0MemAmount {
    /// Give dom0 exactly this many bytes.
    Exact(u64),
    /// Give dom0 everything except this many bytes (Xen's leading `-`).
    AllBut(u64),
}

/// `dom0_mem=[min:<size>,][max:<size>,][<size>]`, items in any order (Xen's syntax).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dom0Mem {
    pub amount: Option<Dom0MemAmount>,
    pub min: Option<u64>,
    pub max: Option<u64>,
}

/// Why [`Dom0Mem::resolve`] could not size dom0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dom0MemError {
    /// More memory was asked for than there is.
    NotEnoughMemory { requested: u64, available: u64 },
    /// `min:` is larger than `max:`.
    MinAboveMax { min: u64, max: u64 },
    /// The request leaves dom0 with less than one page.
    NoMemoryLeft { available: u64 },
}

impl fmt::Display for Dom0MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::mm::HumanSize;
        match *self {
            Dom0MemError::NotEnoughMemory {
                requested,
                available,
            } => write!(
                f,
                "dom0_mem asks for {} but only {} is available for dom0",
                HumanSize(requested),
                HumanSize(available)
            ),
            Dom0MemError::MinAboveMax { min, max } => write!(
                f,
                "dom0_mem min:{} is above max:{}",
                HumanSize(min),
                HumanSize(max)
            ),
            Dom0MemError::NoMemoryLeft { available } => write!(
                f,
                "dom0_mem leaves dom0 no memory (of {} available)",
                HumanSize(available)
            ),
        }
    }
}

impl Dom0Mem {
    /// The largest share kept back for the hypervisor when no size is given.
    pub const DEFAULT_RESERVE_MAX: u64 = 128 * MIB;

    /// Parses the value of `dom0_mem=`. A later item of the same kind overrides an
    /// earlier one, as for whole options.
    pub fn parse(value: &str) -> Result<Dom0Mem, &'static str> {
        if value.is_empty() {
            return Err("missing value");
        }
        let mut mem = Dom0Mem::default();
        for item in value.split(',') {
            if item.is_empty() {
                return Err("empty item in the comma-separated list");
            }
            if let Some(size) = item.strip_prefix("min:") {
                mem.min = Some(parse_bound(size)?);
            } else if let Some(size) = item.strip_prefix("max:") {
                mem.max = Some(parse_bound(size)?);
            } else if let Some(size) = item.strip_prefix('-') {
                mem.amount = Some(Dom0MemAmount::AllBut(
                    parse_size(size).map_err(SizeError::reason)?,
                ));
            } else {
                mem.amount = Some(Dom0MemAmount::Exact(
                    parse_size(item).map_err(SizeError::reason)?,
                ));
            }
        }
        Ok(mem)
    }

    /// dom0's size in bytes, given the bytes that could be given to dom0.
    ///
    /// Without a size, the hypervisor keeps back 1/16th of the memory, at most
    /// [`Self::DEFAULT_RESERVE_MAX`], for its own later allocations (domain structures,
    /// grant and event-channel tables). Then `max:` clamps and `min:` raises; the result
    /// is whole pages.
    pub fn resolve(&self, available: u64) -> Result<u64, Dom0MemError> {
        if let (Some(min), Some(max)) = (self.min, self.max) {
            if min > max {
                return Err(Dom0MemError::MinAboveMax { min, max });
            }
        }
        let mut size = match self.amount {
            Some(Dom0MemAmount::Exact(bytes)) => bytes,
            Some(Dom0MemAmount::AllBut(keep)) => {
                let size = available.saturating_sub(keep);
                if size == 0 {
                    return Err(Dom0MemError::NoMemoryLeft { available });
                }
                size
            }
            None => available - (available / 16).min(Self::DEFAULT_RESERVE_MAX),
        };
        if let Some(max) = self.max {
            size = size.min(max);
        }
        if let Some(min) = self.min {
            size = size.max(min);
        }
        let size = crate::mm::align_down(size, crate::mm::PAGE_SIZE);
        if size > available {
            return Err(Dom0MemError::NotEnoughMemory {
                requested: size,
                available,
            });
        }
        if size == 0 {
            return Err(Dom0MemError::NoMemoryLeft { available });
        }
        Ok(size)
    }
}

/// `min:` and `max:` are plain sizes; Xen's "all but" form is only for the amount here.
fn parse_bound(size: &str) -> Result<u64, &'static str> {
    if size.starts_with('-') {
        return Err("min: and max: take a size, not an 'all but' (-) amount");
    }
    parse_size(size).map_err(SizeError::reason)
}

/// The console log level, in Xen's `loglvl=` vocabulary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    None,
    Error,
    Warning,
    #[default]
    Info,
    Debug,
    All,
}

impl LogLevel {
    /// The `log` crate filter that shows this level and everything more severe.
    pub fn to_filter(self) -> LevelFilter {
        match self {
            LogLevel::None => LevelFilter::Off,
            LogLevel::Error => LevelFilter::Error,
            LogLevel::Warning => LevelFilter::Warn,
            LogLevel::Info => LevelFilter::Info,
            LogLevel::Debug => LevelFilter::Debug,
            LogLevel::All => LevelFilter::Trace,
        }
    }

    /// One level name: Xen's `none|error|warning|info|debug|all`, plus `warn` and `trace`.
    pub fn from_name(name: &str) -> Option<LogLevel> {
        Some(match name {
            "none" => LogLevel::None,
            "error" => LogLevel::Error,
            "warning" | "warn" => LogLevel::Warning,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "all" | "trace" => LogLevel::All,
            _ => return None,
        })
    }

    /// `<level>[/<rate-limited level>]`; Xen's second level (what is still printed when
    /// rate limited) has no meaning here, so it is checked and then ignored.
    fn parse(value: &str) -> Result<LogLevel, &'static str> {
        const EXPECTED: &str =
            "expected none, error, warning, info, debug or all (optionally /<level>)";
        let (level, limited) = match value.split_once('/') {
            Some((level, limited)) => (level, Some(limited)),
            None => (value, None),
        };
        if let Some(limited) = limited {
            LogLevel::from_name(limited).ok_or(EXPECTED)?;
        }
        LogLevel::from_name(level).ok_or(EXPECTED)
    }
}

/// Where console output goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleSet {
    pub com1: bool,
    pub vga: bool,
}

impl Default for ConsoleSet {
    fn default() -> Self {
        ConsoleSet {
            com1: true,
            vga: true,
        }
    }
}

impl ConsoleSet {
    /// A comma list of `com1`, `vga` and `none`; `none` adds nothing, so `none` alone
    /// silences the console.
    fn parse(value: &str) -> Result<ConsoleSet, &'static str> {
        let mut set = ConsoleSet {
            com1: false,
            vga: false,
        };
        for item in value.split(',') {
            match item {
                "com1" => set.com1 = true,
                "vga" => set.vga = true,
                "none" => {}
                "" => return Err("empty item in the comma-separated list"),
                _ => return Err("expected a comma list of com1, vga or none"),
            }
        }
        Ok(set)
    }
}

/// Deliberate faults for the QEMU integration tests (`selftest=`), which check that the
/// hypervisor reports them rather than hanging or rebooting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfTest {
    /// Check the running system (tick, heap, frame allocator), then halt cleanly.
    Halt,
    /// Write to an unmapped address.
    PageFault,
    /// Recurse until the stack's guard page is hit.
    StackOverflow,
    /// Call `panic!`.
    Panic,
    /// Run code in ring 3: a SYSCALL, timer interrupts and an exception from there.
    Ring3,
}

/// A command-line option that was ignored, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diagnostic<'a> {
    Unknown {
        option: &'a str,
    },
    Malformed {
        option: &'a str,
        reason: &'static str,
    },
}

impl fmt::Display for Diagnostic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Diagnostic::Unknown { option } => write!(f, "ignoring unknown option '{option}'"),
            Diagnostic::Malformed { option, reason } => {
                write!(f, "ignoring malformed option '{option}': {reason}")
            }
        }
    }
}

/// The parsed command line. Fields hold their defaults unless an option set them.
#[derive(Clone, Debug)]
pub struct Cmdline<'a> {
    pub raw: &'a str,
    pub dom0_mem: Option<Dom0Mem>,
    pub maxcpus: Option<u32>,
    pub loglvl: LogLevel,
    pub console: ConsoleSet,
    pub com1_baud: Option<u32>,
    pub selftest: Option<SelfTest>,
    /// The QEMU `isa-debug-exit` port the hypervisor reports its test verdict to.
    pub debug_exit: Option<u16>,
    pub diagnostics: heapless::Vec<Diagnostic<'a>, MAX_DIAGNOSTICS>,
    /// Diagnostics beyond [`MAX_DIAGNOSTICS`], counted so the log can say some were lost.
    pub diagnostics_dropped: usize,
}

/// The options this module knows, by their canonical (underscore) names.
#[derive(Clone, Copy)]
enum Key {
    Dom0Mem,
    MaxCpus,
    LogLvl,
    Console,
    Com1,
    SelfTest,
    DebugExit,
}

impl Key {
    fn lookup(name: &str) -> Option<Key> {
        const KEYS: [(&str, Key); 7] = [
            ("dom0_mem", Key::Dom0Mem),
            ("maxcpus", Key::MaxCpus),
            ("loglvl", Key::LogLvl),
            ("console", Key::Console),
            ("com1", Key::Com1),
            ("selftest", Key::SelfTest),
            ("debug_exit", Key::DebugExit),
        ];
        KEYS.iter()
            .find(|(known, _)| same_option_name(known, name))
            .map(|&(_, key)| key)
    }
}

/// Xen compares option names treating `-` and `_` as the same character.
fn same_option_name(canonical: &str, given: &str) -> bool {
    canonical.len() == given.len()
        && canonical
            .bytes()
            .zip(given.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
}

/// The baud rates of a PC UART's standard divisors that anyone still uses.
const STANDARD_BAUDS: [u32; 8] = [1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200];

/// `com1=<baud>[,8n1]`: Xen's syntax continues with I/O base and IRQ, which the fixed
/// COM1 at 0x3f8 does not need; only 8 data bits, no parity, 1 stop bit is supported.
fn parse_com1(value: &str) -> Result<u32, &'static str> {
    let (baud, dps) = match value.split_once(',') {
        Some((baud, dps)) => (baud, Some(dps)),
        None => (value, None),
    };
    let baud = parse_decimal(baud)
        .and_then(|b| u32::try_from(b).ok())
        .filter(|b| STANDARD_BAUDS.contains(b))
        .ok_or(
            "expected a standard baud rate (1200, 2400, 4800, 9600, 19200, 38400, 57600 or 115200)",
        )?;
    match dps {
        None => Ok(baud),
        Some(dps) if dps.eq_ignore_ascii_case("8n1") => Ok(baud),
        Some(_) => Err("only the 8n1 line format is supported"),
    }
}

fn parse_maxcpus(value: &str) -> Result<u32, &'static str> {
    parse_decimal(value)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n >= 1)
        .ok_or("expected a positive number")
}

fn parse_selftest(value: &str) -> Result<SelfTest, &'static str> {
    match value {
        "halt" => Ok(SelfTest::Halt),
        "pagefault" => Ok(SelfTest::PageFault),
        "overflow" => Ok(SelfTest::StackOverflow),
        "panic" => Ok(SelfTest::Panic),
        "ring3" => Ok(SelfTest::Ring3),
        _ => Err("expected halt, pagefault, overflow, panic or ring3"),
    }
}

fn parse_debug_exit(value: &str) -> Result<u16, &'static str> {
    parse_number(value)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&n| n != 0)
        .ok_or("expected a non-zero I/O port number below 0x10000 (decimal or 0x-hex)")
}

impl<'a> Cmdline<'a> {
    /// Every option at its default.
    pub fn empty(raw: &'a str) -> Self {
        Cmdline {
            raw,
            dom0_mem: None,
            maxcpus: None,
            loglvl: LogLevel::default(),
            console: ConsoleSet::default(),
            com1_baud: None,
            selftest: None,
            debug_exit: None,
            diagnostics: heapless::Vec::new(),
            diagnostics_dropped: 0,
        }
    }

    fn report(&mut self, diagnostic: Diagnostic<'a>) {
        if self.diagnostics.push(diagnostic).is_err() {
            self.diagnostics_dropped += 1;
        }
    }

    /// Applies one `key[=value]` word. A malformed value leaves the option as it was
    /// before this word (an earlier valid occurrence still counts).
    fn apply(&mut self, option: &'a str) {
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (option, None),
        };
        let Some(key) = Key::lookup(name) else {
            self.report(Diagnostic::Unknown { option });
            return;
        };
        let value = match value {
            Some(value) if !value.is_empty() => value,
            _ => {
                self.report(Diagnostic::Malformed {
                    option,
                    reason: "missing value after '='",
                });
                return;
            }
        };
        let result = match key {
            Key::Dom0Mem => Dom0Mem::parse(value).map(|m| self.dom0_mem = Some(m)),
            Key::MaxCpus => parse_maxcpus(value).map(|n| self.maxcpus = Some(n)),
            Key::LogLvl => LogLevel::parse(value).map(|l| self.loglvl = l),
            Key::Console => ConsoleSet::parse(value).map(|c| self.console = c),
            Key::Com1 => parse_com1(value).map(|b| self.com1_baud = Some(b)),
            Key::SelfTest => parse_selftest(value).map(|t| self.selftest = Some(t)),
            Key::DebugExit => parse_debug_exit(value).map(|p| self.debug_exit = Some(p)),
        };
        if let Err(reason) = result {
            self.report(Diagnostic::Malformed { option, reason });
        }
    }
}

/// Parses the hypervisor's command line: whitespace-separated `key=value` or bare `key`
/// words. Never fails; see [`Cmdline::diagnostics`].
pub fn parse(raw: &str) -> Cmdline<'_> {
    let mut cmdline = Cmdline::empty(raw);
    for option in raw.split_ascii_whitespace() {
        cmdline.apply(option);
    }
    cmdline
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1 << 10;
    const GIB: u64 = 1 << 30;

    fn malformed<'a>(c: &Cmdline<'a>) -> Vec<(&'a str, &'static str)> {
        c.diagnostics
            .iter()
            .filter_map(|d| match *d {
                Diagnostic::Malformed { option, reason } => Some((option, reason)),
                Diagnostic::Unknown { .. } => None,
            })
            .collect()
    }

    fn only_malformed(line: &str) -> &'static str {
        let c = parse(line);
        assert_eq!(c.diagnostics.len(), 1, "{line}: {:?}", c.diagnostics);
        match c.diagnostics[0] {
            Diagnostic::Malformed { option, reason } => {
                assert_eq!(option, line);
                reason
            }
            d => panic!("{line}: expected malformed, got {d:?}"),
        }
    }

    #[test]
    fn sizes_bare_numbers_are_kib() {
        assert_eq!(parse_size("262144"), Ok(256 * MIB));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1"), Ok(1024));
    }

    #[test]
    fn sizes_with_suffixes() {
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("512b"), Ok(512));
        assert_eq!(parse_size("4K"), Ok(4 * KIB));
        assert_eq!(parse_size("4k"), Ok(4 * KIB));
        assert_eq!(parse_size("4KiB"), Ok(4 * KIB));
        assert_eq!(parse_size("256M"), Ok(256 * MIB));
        assert_eq!(parse_size("256mib"), Ok(256 * MIB));
        assert_eq!(parse_size("1G"), Ok(GIB));
        assert_eq!(parse_size("1GiB"), Ok(GIB));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
    }

    #[test]
    fn size_errors() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("G"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("-1G"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("+1G"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("1X"), Err(SizeError::UnknownSuffix));
        assert_eq!(parse_size("1GB"), Err(SizeError::UnknownSuffix));
        assert_eq!(parse_size("1 G"), Err(SizeError::UnknownSuffix));
        assert_eq!(parse_size("1.5G"), Err(SizeError::UnknownSuffix));
        assert_eq!(parse_size("99999999999999999999"), Err(SizeError::Overflow));
        assert_eq!(parse_size("16777216T"), Err(SizeError::Overflow));
        // 2^54 KiB is exactly 2^64 bytes: one too many.
        assert_eq!(parse_size("18014398509481984"), Err(SizeError::Overflow));
        assert_eq!(parse_size("18014398509481983"), Ok(u64::MAX - 1023));
        assert_eq!(
            SizeError::UnknownSuffix.to_string(),
            "unknown size suffix (use B, K, M, G or T)"
        );
    }

    #[test]
    fn dom0_mem_syntax() {
        assert_eq!(
            Dom0Mem::parse("262144"),
            Ok(Dom0Mem {
                amount: Some(Dom0MemAmount::Exact(256 * MIB)),
                min: None,
                max: None
            })
        );
        assert_eq!(
            Dom0Mem::parse("max:2G,min:512M,1G"),
            Ok(Dom0Mem {
                amount: Some(Dom0MemAmount::Exact(GIB)),
                min: Some(512 * MIB),
                max: Some(2 * GIB)
            })
        );
        assert_eq!(
            Dom0Mem::parse("-1G"),
            Ok(Dom0Mem {
                amount: Some(Dom0MemAmount::AllBut(GIB)),
                min: None,
                max: None
            })
        );
        assert_eq!(
            Dom0Mem::parse("min:1G"),
            Ok(Dom0Mem {
                amount: None,
                min: Some(GIB),
                max: None
            })
        );
        // Later items override earlier ones.
        assert_eq!(
            Dom0Mem::parse("1G,2G,max:4G,max:3G").map(|m| (m.amount, m.max)),
            Ok((Some(Dom0MemAmount::Exact(2 * GIB)), Some(3 * GIB)))
        );
    }

    #[test]
    fn dom0_mem_syntax_errors() {
        assert_eq!(Dom0Mem::parse(""), Err("missing value"));
        assert_eq!(
            Dom0Mem::parse("1G,,max:2G"),
            Err("empty item in the comma-separated list")
        );
        assert_eq!(
            Dom0Mem::parse("1G,"),
            Err("empty item in the comma-separated list")
        );
        assert_eq!(
            Dom0Mem::parse("max:-1G"),
            Err("min: and max: take a size, not an 'all but' (-) amount")
        );
        assert_eq!(Dom0Mem::parse("min:"), Err(SizeError::Empty.reason()));
        assert_eq!(Dom0Mem::parse("lots"), Err(SizeError::NotANumber.reason()));
        assert_eq!(Dom0Mem::parse("-"), Err(SizeError::Empty.reason()));
        assert_eq!(Dom0Mem::parse("1Q"), Err(SizeError::UnknownSuffix.reason()));
        assert_eq!(
            Dom0Mem::parse("mid:1G"),
            Err(SizeError::NotANumber.reason())
        );
    }

    #[test]
    fn dom0_mem_resolve_exact_and_all_but() {
        let avail = 8 * GIB;
        let exact = Dom0Mem::parse("1G").unwrap();
        assert_eq!(exact.resolve(avail), Ok(GIB));
        let all_but = Dom0Mem::parse("-1G").unwrap();
        assert_eq!(all_but.resolve(avail), Ok(7 * GIB));
        // Rounded down to whole pages.
        let odd = Dom0Mem::parse("1000001B").unwrap();
        assert_eq!(odd.resolve(avail), Ok(1000001 & !4095));
    }

    #[test]
    fn dom0_mem_resolve_default_reserve() {
        // 1/16th kept back on a small machine...
        assert_eq!(Dom0Mem::default().resolve(512 * MIB), Ok(480 * MIB));
        // ... capped at 128 MiB on a large one.
        assert_eq!(
            Dom0Mem::default().resolve(16 * GIB),
            Ok(16 * GIB - 128 * MIB)
        );
        // The reserve boundary: 2 GiB / 16 = 128 MiB exactly.
        assert_eq!(Dom0Mem::default().resolve(2 * GIB), Ok(2 * GIB - 128 * MIB));
    }

    #[test]
    fn dom0_mem_resolve_min_max() {
        let avail = 8 * GIB;
        let clamp = Dom0Mem::parse("4G,max:2G").unwrap();
        assert_eq!(clamp.resolve(avail), Ok(2 * GIB));
        let raise = Dom0Mem::parse("256M,min:1G").unwrap();
        assert_eq!(raise.resolve(avail), Ok(GIB));
        let both = Dom0Mem::parse("min:1G,max:2G").unwrap();
        assert_eq!(both.resolve(avail), Ok(2 * GIB));
        assert_eq!(both.resolve(1200 * MIB), Ok(1200 * MIB - 75 * MIB));
        // min wins over the default reserve when memory is short.
        assert_eq!(Dom0Mem::parse("min:1G").unwrap().resolve(GIB), Ok(GIB));
        let all_but_max = Dom0Mem::parse("-1G,max:3G").unwrap();
        assert_eq!(all_but_max.resolve(avail), Ok(3 * GIB));
    }

    #[test]
    fn dom0_mem_resolve_errors() {
        let avail = 2 * GIB;
        assert_eq!(
            Dom0Mem::parse("4G").unwrap().resolve(avail),
            Err(Dom0MemError::NotEnoughMemory {
                requested: 4 * GIB,
                available: avail
            })
        );
        assert_eq!(
            Dom0Mem::parse("min:3G").unwrap().resolve(avail),
            Err(Dom0MemError::NotEnoughMemory {
                requested: 3 * GIB,
                available: avail
            })
        );
        assert_eq!(
            Dom0Mem::parse("min:2G,max:1G").unwrap().resolve(avail),
            Err(Dom0MemError::MinAboveMax {
                min: 2 * GIB,
                max: GIB
            })
        );
        assert_eq!(
            Dom0Mem::parse("-2G").unwrap().resolve(avail),
            Err(Dom0MemError::NoMemoryLeft { available: avail })
        );
        assert_eq!(
            Dom0Mem::parse("-3G").unwrap().resolve(avail),
            Err(Dom0MemError::NoMemoryLeft { available: avail })
        );
        assert_eq!(
            Dom0Mem::parse("100B").unwrap().resolve(avail),
            Err(Dom0MemError::NoMemoryLeft { available: avail })
        );
        assert_eq!(
            Dom0Mem::default().resolve(0),
            Err(Dom0MemError::NoMemoryLeft { available: 0 })
        );
    }

    #[test]
    fn dom0_mem_error_messages() {
        assert_eq!(
            Dom0MemError::NotEnoughMemory {
                requested: 4 * GIB,
                available: 2 * GIB
            }
            .to_string(),
            "dom0_mem asks for 4 GiB but only 2 GiB is available for dom0"
        );
        assert_eq!(
            Dom0MemError::MinAboveMax {
                min: 2 * GIB,
                max: 512 * MIB
            }
            .to_string(),
            "dom0_mem min:2 GiB is above max:512 MiB"
        );
        assert_eq!(
            Dom0MemError::NoMemoryLeft { available: GIB }.to_string(),
            "dom0_mem leaves dom0 no memory (of 1 GiB available)"
        );
    }

    #[test]
    fn defaults() {
        let c = parse("");
        assert_eq!(c.raw, "");
        assert_eq!(c.dom0_mem, None);
        assert_eq!(c.maxcpus, None);
        assert_eq!(c.loglvl, LogLevel::Info);
        assert_eq!(
            c.console,
            ConsoleSet {
                com1: true,
                vga: true
            }
        );
        assert_eq!(c.com1_baud, None);
        assert_eq!(c.selftest, None);
        assert_eq!(c.debug_exit, None);
        assert!(c.diagnostics.is_empty());
        assert_eq!(c.diagnostics_dropped, 0);
        assert!(parse(" \t \n ").diagnostics.is_empty());
    }

    #[test]
    fn grub_entry_from_the_brief() {
        let raw = "dom0_mem=262144 console=com1 loglvl=info";
        let c = parse(raw);
        assert_eq!(c.raw, raw);
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
        assert_eq!(
            c.dom0_mem.and_then(|m| m.amount),
            Some(Dom0MemAmount::Exact(256 * MIB))
        );
        assert_eq!(
            c.console,
            ConsoleSet {
                com1: true,
                vga: false
            }
        );
        assert_eq!(c.loglvl, LogLevel::Info);
    }

    #[test]
    fn every_option() {
        let c = parse(
            "  dom0_mem=max:2G,1G\tmaxcpus=4 loglvl=debug/warning console=vga,com1 \
             com1=115200,8n1 selftest=pagefault debug_exit=0xf4 ",
        );
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
        assert_eq!(
            c.dom0_mem,
            Some(Dom0Mem {
                amount: Some(Dom0MemAmount::Exact(GIB)),
                min: None,
                max: Some(2 * GIB)
            })
        );
        assert_eq!(c.maxcpus, Some(4));
        assert_eq!(c.loglvl, LogLevel::Debug);
        assert_eq!(
            c.console,
            ConsoleSet {
                com1: true,
                vga: true
            }
        );
        assert_eq!(c.com1_baud, Some(115200));
        assert_eq!(c.selftest, Some(SelfTest::PageFault));
        assert_eq!(c.debug_exit, Some(0xf4));
    }

    #[test]
    fn dashes_and_underscores_are_interchangeable_in_names() {
        let c = parse("dom0-mem=1G debug-exit=244");
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
        assert_eq!(
            c.dom0_mem.and_then(|m| m.amount),
            Some(Dom0MemAmount::Exact(GIB))
        );
        assert_eq!(c.debug_exit, Some(244));
        // ... but only in names, and only those two characters.
        assert_eq!(
            parse("dom0.mem=1G").diagnostics[0],
            Diagnostic::Unknown {
                option: "dom0.mem=1G"
            }
        );
        assert_eq!(
            parse("DOM0_MEM=1G").diagnostics[0],
            Diagnostic::Unknown {
                option: "DOM0_MEM=1G"
            }
        );
    }

    #[test]
    fn later_occurrence_overrides() {
        let c = parse("maxcpus=2 loglvl=error maxcpus=8 loglvl=all console=com1 console=none");
        assert!(c.diagnostics.is_empty());
        assert_eq!(c.maxcpus, Some(8));
        assert_eq!(c.loglvl, LogLevel::All);
        assert_eq!(
            c.console,
            ConsoleSet {
                com1: false,
                vga: false
            }
        );
        let d = parse("dom0_mem=1G dom0_mem=max:2G");
        assert_eq!(
            d.dom0_mem,
            Some(Dom0Mem {
                amount: None,
                min: None,
                max: Some(2 * GIB)
            })
        );
    }

    #[test]
    fn malformed_later_occurrence_keeps_earlier_value() {
        let c = parse("maxcpus=2 maxcpus=zero loglvl=debug loglvl=loud");
        assert_eq!(c.maxcpus, Some(2));
        assert_eq!(c.loglvl, LogLevel::Debug);
        assert_eq!(malformed(&c).len(), 2);
    }

    #[test]
    fn log_levels() {
        let cases = [
            ("none", LogLevel::None, LevelFilter::Off),
            ("error", LogLevel::Error, LevelFilter::Error),
            ("warning", LogLevel::Warning, LevelFilter::Warn),
            ("warn", LogLevel::Warning, LevelFilter::Warn),
            ("info", LogLevel::Info, LevelFilter::Info),
            ("debug", LogLevel::Debug, LevelFilter::Debug),
            ("all", LogLevel::All, LevelFilter::Trace),
            ("trace", LogLevel::All, LevelFilter::Trace),
        ];
        for (name, level, filter) in cases {
            let c = parse(&format!("loglvl={name}")).loglvl;
            assert_eq!(c, level, "{name}");
            assert_eq!(c.to_filter(), filter, "{name}");
        }
        assert_eq!(parse("loglvl=error/none").loglvl, LogLevel::Error);
        assert_eq!(parse("loglvl=all/warning").loglvl, LogLevel::All);
        assert!(LogLevel::None < LogLevel::All);
    }

    #[test]
    fn log_level_errors_keep_default() {
        let reason = "expected none, error, warning, info, debug or all (optionally /<level>)";
        for line in [
            "loglvl=verbose",
            "loglvl=Info",
            "loglvl=info/",
            "loglvl=/info",
            "loglvl=info/loud",
            "loglvl=info/warn/all",
        ] {
            assert_eq!(only_malformed(line), reason, "{line}");
            assert_eq!(parse(line).loglvl, LogLevel::Info);
        }
    }

    #[test]
    fn consoles() {
        let set = |line| parse(line).console;
        assert_eq!(
            set("console=com1"),
            ConsoleSet {
                com1: true,
                vga: false
            }
        );
        assert_eq!(
            set("console=vga"),
            ConsoleSet {
                com1: false,
                vga: true
            }
        );
        assert_eq!(
            set("console=com1,vga"),
            ConsoleSet {
                com1: true,
                vga: true
            }
        );
        assert_eq!(
            set("console=none"),
            ConsoleSet {
                com1: false,
                vga: false
            }
        );
        assert_eq!(
            set("console=none,com1"),
            ConsoleSet {
                com1: true,
                vga: false
            }
        );
        assert_eq!(
            set("console=com1,com1"),
            ConsoleSet {
                com1: true,
                vga: false
            }
        );
    }

    #[test]
    fn console_errors_keep_default() {
        assert_eq!(
            only_malformed("console=com1,ttyS0"),
            "expected a comma list of com1, vga or none"
        );
        assert_eq!(
            only_malformed("console=com2"),
            "expected a comma list of com1, vga or none"
        );
        assert_eq!(
            only_malformed("console=com1,"),
            "empty item in the comma-separated list"
        );
        assert_eq!(parse("console=com1,ttyS0").console, ConsoleSet::default());
    }

    #[test]
    fn com1_options() {
        for baud in STANDARD_BAUDS {
            assert_eq!(parse(&format!("com1={baud}")).com1_baud, Some(baud));
        }
        assert_eq!(parse("com1=9600,8n1").com1_baud, Some(9600));
        assert_eq!(parse("com1=9600,8N1").com1_baud, Some(9600));
        let bad_baud =
            "expected a standard baud rate (1200, 2400, 4800, 9600, 19200, 38400, 57600 or 115200)";
        assert_eq!(only_malformed("com1=9601"), bad_baud);
        assert_eq!(only_malformed("com1=230400"), bad_baud);
        assert_eq!(only_malformed("com1=300"), bad_baud);
        assert_eq!(only_malformed("com1=auto"), bad_baud);
        assert_eq!(only_malformed("com1=99999999999"), bad_baud);
        assert_eq!(only_malformed("com1=,8n1"), bad_baud);
        assert_eq!(
            only_malformed("com1=115200,7e1"),
            "only the 8n1 line format is supported"
        );
        assert_eq!(
            only_malformed("com1=115200,"),
            "only the 8n1 line format is supported"
        );
        assert_eq!(
            only_malformed("com1=115200,8n1,0x3f8"),
            "only the 8n1 line format is supported"
        );
        assert_eq!(parse("com1=115200,7e1").com1_baud, None);
    }

    #[test]
    fn maxcpus_values() {
        assert_eq!(parse("maxcpus=1").maxcpus, Some(1));
        assert_eq!(parse("maxcpus=4294967295").maxcpus, Some(u32::MAX));
        for line in [
            "maxcpus=0",
            "maxcpus=abc",
            "maxcpus=-1",
            "maxcpus=+2",
            "maxcpus=4294967296",
            "maxcpus=0x4",
        ] {
            assert_eq!(only_malformed(line), "expected a positive number", "{line}");
            assert_eq!(parse(line).maxcpus, None);
        }
    }

    #[test]
    fn selftest_values() {
        assert_eq!(parse("selftest=halt").selftest, Some(SelfTest::Halt));
        assert_eq!(
            parse("selftest=pagefault").selftest,
            Some(SelfTest::PageFault)
        );
        assert_eq!(
            parse("selftest=overflow").selftest,
            Some(SelfTest::StackOverflow)
        );
        assert_eq!(parse("selftest=panic").selftest, Some(SelfTest::Panic));
        assert_eq!(parse("selftest=ring3").selftest, Some(SelfTest::Ring3));
        assert_eq!(
            only_malformed("selftest=reboot"),
            "expected halt, pagefault, overflow, panic or ring3"
        );
    }

    #[test]
    fn debug_exit_values() {
        assert_eq!(parse("debug_exit=0xf4").debug_exit, Some(0xf4));
        assert_eq!(parse("debug_exit=0XF4").debug_exit, Some(0xf4));
        assert_eq!(parse("debug_exit=501").debug_exit, Some(501));
        assert_eq!(parse("debug_exit=0xffff").debug_exit, Some(0xffff));
        let reason = "expected a non-zero I/O port number below 0x10000 (decimal or 0x-hex)";
        for line in [
            "debug_exit=0",
            "debug_exit=0x",
            "debug_exit=0x10000",
            "debug_exit=65536",
            "debug_exit=port",
            "debug_exit=0xfg",
        ] {
            assert_eq!(only_malformed(line), reason, "{line}");
            assert_eq!(parse(line).debug_exit, None);
        }
    }

    #[test]
    fn dom0_mem_option_errors() {
        assert_eq!(
            only_malformed("dom0_mem=lots"),
            SizeError::NotANumber.reason()
        );
        assert_eq!(parse("dom0_mem=lots").dom0_mem, None);
    }

    #[test]
    fn missing_values() {
        for line in [
            "dom0_mem",
            "dom0_mem=",
            "maxcpus",
            "loglvl=",
            "console",
            "com1",
            "selftest",
            "debug_exit=",
        ] {
            assert_eq!(only_malformed(line), "missing value after '='", "{line}");
        }
    }

    #[test]
    fn unknown_options() {
        let c = parse("bogus=1 noreboot dom0_mem=1G =5 maxcpus=abc");
        assert_eq!(
            c.diagnostics.as_slice(),
            &[
                Diagnostic::Unknown { option: "bogus=1" },
                Diagnostic::Unknown { option: "noreboot" },
                Diagnostic::Unknown { option: "=5" },
                Diagnostic::Malformed {
                    option: "maxcpus=abc",
                    reason: "expected a positive number"
                },
            ]
        );
        assert_eq!(
            c.dom0_mem.and_then(|m| m.amount),
            Some(Dom0MemAmount::Exact(GIB))
        );
    }

    #[test]
    fn diagnostic_messages() {
        let c = parse("bogus=1 maxcpus=abc");
        assert_eq!(
            c.diagnostics[0].to_string(),
            "ignoring unknown option 'bogus=1'"
        );
        assert_eq!(
            c.diagnostics[1].to_string(),
            "ignoring malformed option 'maxcpus=abc': expected a positive number"
        );
    }

    #[test]
    fn diagnostics_overflow_is_counted() {
        let line: String = (0..20).map(|i| format!("x{i} ")).collect();
        let c = parse(&line);
        assert_eq!(c.diagnostics.len(), MAX_DIAGNOSTICS);
        assert_eq!(c.diagnostics_dropped, 4);
        assert_eq!(c.diagnostics[15], Diagnostic::Unknown { option: "x15" });
    }

    #[test]
    fn value_may_contain_equals() {
        // Only the first '=' splits; the rest belongs to the value.
        assert_eq!(only_malformed("maxcpus=4=5"), "expected a positive number");
    }
}
