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
    /// The string does not start with a digit.
    NotANumber,
    /// A digit that the number's base does not have: `08` (a leading `0` is octal) or
    /// `0x` with no hexadecimal digit after it.
    BadDigit,
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
            SizeError::NotANumber => "a size must start with a number",
            SizeError::BadDigit => {
                "a leading 0 makes a number octal (digits 0-7) and 0x hexadecimal"
            }
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

/// Parses a size in bytes (Xen's `parse_size_and_unit`).
///
/// The number is read as C's `strtoull(s, &end, 0)` reads it: `0x` or `0X` followed by a
/// hexadecimal digit starts a hexadecimal number, any other leading `0` an octal one, and
/// anything else is decimal. So `0x10000` is 64 MiB and `010` is 8 KiB. Hexadecimal digits
/// are taken greedily, so in `0x10b` the `b` is a digit, not the byte suffix.
///
/// A bare number is KiB, as for Xen's `dom0_mem=262144` (256 MiB). The suffixes `B`, `K`,
/// `M`, `G` and `T` (any case, optionally spelled `KiB`, `MiB`, `GiB`, `TiB`) are binary
/// multiples of a byte. Unlike Xen, a size that does not fit in 64 bits is refused rather
/// than wrapped.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let (number, suffix) = scan_number(s)?;
    let shift = match_suffix(suffix).ok_or(SizeError::UnknownSuffix)?;
    number.checked_mul(1u64 << shift).ok_or(SizeError::Overflow)
}

/// Reads the unsigned number at the start of `s` in base 0 (see [`parse_size`]) and
/// returns it with the text after it.
fn scan_number(s: &str) -> Result<(u64, &str), SizeError> {
    let bytes = s.as_bytes();
    match bytes.first() {
        None => return Err(SizeError::Empty),
        Some(b) if !b.is_ascii_digit() => return Err(SizeError::NotANumber),
        Some(_) => {}
    }
    let hex = bytes[0] == b'0'
        && matches!(bytes.get(1), Some(b'x' | b'X'))
        && bytes.get(2).is_some_and(u8::is_ascii_hexdigit);
    let (radix, start) = match (hex, bytes[0]) {
        (true, _) => (16, 2),
        (false, b'0') => (8, 0),
        (false, _) => (10, 0),
    };
    let digits = bytes[start..]
        .iter()
        .take_while(|&&b| char::from(b).is_digit(radix))
        .count();
    let (number, rest) = s[start..].split_at(digits);
    // `08`, `09`, `0x` and `0xg` would otherwise surface as a puzzling "unknown suffix".
    if radix == 8 && rest.starts_with(['8', '9', 'x', 'X']) {
        return Err(SizeError::BadDigit);
    }
    let value = number
        .chars()
        .try_fold(0u64, |acc, c| {
            acc.checked_mul(u64::from(radix))?
                .checked_add(u64::from(c.to_digit(radix)?))
        })
        .ok_or(SizeError::Overflow)?;
    Ok((value, rest))
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

/// One `<sz>` of `dom0_mem=`: `[-](<size> | <frac>% | <size>+<frac>%)`.
///
/// It stands for `bytes` plus `percent` per cent of the memory available for dom0, or,
/// with a leading `-` (`all_but`), for the available memory minus that.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dom0MemSize {
    /// The `<size>` part, in bytes (0 when only a fraction is given).
    pub bytes: u64,
    /// The `<frac>` part, in per cent of the available memory: 0 to 99, as in Xen.
    pub percent: u32,
    /// A leading `-`: everything available except the amount above.
    pub all_but: bool,
}

/// The size item of `dom0_mem=` (the one without `min:` or `max:`).
pub type Dom0MemAmount = Dom0MemSize;

impl Dom0MemSize {
    /// Exactly `bytes` bytes.
    pub const fn bytes(bytes: u64) -> Self {
        Dom0MemSize {
            bytes,
            percent: 0,
            all_but: false,
        }
    }

    /// Everything available except `bytes` bytes.
    pub const fn all_but(bytes: u64) -> Self {
        Dom0MemSize {
            bytes,
            percent: 0,
            all_but: true,
        }
    }

    /// `percent` per cent of the available memory.
    pub const fn percent(percent: u32) -> Self {
        Dom0MemSize {
            bytes: 0,
            percent,
            all_but: false,
        }
    }

    /// The bytes this stands for when `available` bytes could go to dom0.
    ///
    /// Saturating: an absolute size too large for 64 bits is `u64::MAX`, and an
    /// "all but" that keeps back at least everything is 0.
    pub fn of(&self, available: u64) -> u64 {
        let share = u128::from(available) * u128::from(self.percent) / 100;
        let share = u64::try_from(share).unwrap_or(u64::MAX);
        let amount = self.bytes.saturating_add(share);
        if self.all_but {
            available.saturating_sub(amount)
        } else {
            amount
        }
    }

    /// Parses one `<sz>`.
    fn parse(s: &str) -> Result<Dom0MemSize, &'static str> {
        let (all_but, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (bytes, percent) = match s.strip_suffix('%') {
            Some(with_frac) => {
                let (size, frac) = match with_frac.split_once('+') {
                    Some((size, frac)) => (parse_size(size).map_err(SizeError::reason)?, frac),
                    None => (0, with_frac),
                };
                (size, parse_percent(frac)?)
            }
            None if s.contains('+') => {
                return Err("a '+' must be followed by a percentage, as in 1G+25%")
            }
            None => (parse_size(s).map_err(SizeError::reason)?, 0),
        };
        Ok(Dom0MemSize {
            bytes,
            percent,
            all_but,
        })
    }
}

/// The `<frac>` of `<frac>%`: a plain number (base 0, like sizes) below 100.
fn parse_percent(s: &str) -> Result<u32, &'static str> {
    const EXPECTED: &str = "a percentage must be a whole number from 0 to 99, as in 25%";
    match scan_number(s) {
        Ok((value, "")) if value < 100 => Ok(value as u32),
        _ => Err(EXPECTED),
    }
}

/// `dom0_mem=List of ( min:<sz> | max:<sz> | <sz> )`, items in any order (Xen's syntax).
///
/// `<sz>` is `<size>`, `<frac>%` or `<size>+<frac>%`, optionally after a `-`; see
/// [`Dom0MemSize`] and [`parse_size`]. A later item of the same kind overrides an earlier
/// one. See [`Dom0Mem::resolve`] for how the three combine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dom0Mem {
    pub amount: Option<Dom0MemAmount>,
    pub min: Option<Dom0MemSize>,
    pub max: Option<Dom0MemSize>,
}

/// Why [`Dom0Mem::resolve`] could not size dom0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dom0MemError {
    /// More memory was asked for than there is. Xen would silently give dom0 all there
    /// is instead; Ferrovisor refuses, so that a wrong `dom0_mem=` is noticed.
    NotEnoughMemory { requested: u64, available: u64 },
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
                mem.min = Some(Dom0MemSize::parse(size)?);
            } else if let Some(size) = item.strip_prefix("max:") {
                mem.max = Some(Dom0MemSize::parse(size)?);
            } else {
                mem.amount = Some(Dom0MemSize::parse(item)?);
            }
        }
        Ok(mem)
    }

    /// dom0's size in bytes, given the bytes that could be given to dom0 (Xen's
    /// `dom0_compute_nr_pages`).
    ///
    /// 1. The amount: without one, or when it comes to less than a page (`dom0_mem=0`,
    ///    `0%`), the hypervisor keeps back 1/16th of the memory, at most
    ///    [`Self::DEFAULT_RESERVE_MAX`], for its own later allocations (domain
    ///    structures, grant and event-channel tables) and dom0 gets the rest. An "all but"
    ///    amount that leaves less than a page is an error, not the default.
    /// 2. `min:` raises the amount to at least its size.
    /// 3. `max:` lowers it to at most its size; so when `min:` is above `max:`, `max:`
    ///    wins, as Xen documents.
    /// 4. The result is rounded down to whole pages.
    ///
    /// One deliberate difference from Xen: where Xen quietly shrinks dom0 to the memory
    /// there is, a result above `available` is [`Dom0MemError::NotEnoughMemory`].
    pub fn resolve(&self, available: u64) -> Result<u64, Dom0MemError> {
        use crate::mm::{align_down, PAGE_SIZE};
        let default = || available - (available / 16).min(Self::DEFAULT_RESERVE_MAX);
        let mut size = match self.amount {
            Some(amount) => {
                let size = amount.of(available);
                if align_down(size, PAGE_SIZE) != 0 {
                    size
                } else if amount.all_but {
                    return Err(Dom0MemError::NoMemoryLeft { available });
                } else {
                    default()
                }
            }
            None => default(),
        };
        if let Some(min) = self.min {
            size = size.max(min.of(available));
        }
        if let Some(max) = self.max {
            size = size.min(max.of(available));
        }
        let size = align_down(size, PAGE_SIZE);
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
    /// Exercise the hypervisor's devices: disk reads, a write, flush and read-back on vda;
    /// an ARP exchange with QEMU's user-network gateway on the first NIC.
    Devices,
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

/// The switch dom0's vif goes on unless `dom0_vif=` names another.
pub const DEFAULT_BRIDGE: &str = ferrovisor_abi::domctl::SWITCH_NAME;

/// `dom0_vif=`: `none` (or `off`, `no`, `0`), `on` (the default: `vif0.0` on
/// [`DEFAULT_BRIDGE`] with a MAC made from the machine's), or xl's vif form
/// `mac=00:16:3e:..,bridge=NAME` (either key may be left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dom0Vif<'a> {
    Off,
    On {
        mac: Option<[u8; 6]>,
        bridge: &'a str,
    },
}

impl Default for Dom0Vif<'_> {
    fn default() -> Self {
        Dom0Vif::On {
            mac: None,
            bridge: DEFAULT_BRIDGE,
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (also with `-`), refusing multicast and all-zero addresses.
pub fn parse_unicast_mac(text: &str) -> Option<[u8; 6]> {
    let mac = crate::net::ethernet::MacAddr::parse(&text.replace('-', ":"))?;
    (mac.is_unicast() && !mac.is_zero()).then_some(mac.0)
}

impl<'a> Dom0Vif<'a> {
    fn parse(value: &'a str) -> Result<Self, &'static str> {
        match value {
            "none" | "off" | "no" | "0" | "false" => return Ok(Dom0Vif::Off),
            "on" | "yes" | "1" | "true" | "default" => return Ok(Dom0Vif::default()),
            _ => {}
        }
        let (mut mac, mut bridge) = (None, DEFAULT_BRIDGE);
        for item in value.split(',') {
            match item.split_once('=') {
                Some(("mac", m)) => {
                    mac = Some(
                        parse_unicast_mac(m).ok_or("expected a unicast mac=xx:xx:xx:xx:xx:xx")?,
                    )
                }
                Some(("bridge", b)) if is_device_name(b) => bridge = b,
                Some(("bridge", _)) => {
                    return Err("expected bridge=NAME (letters, digits, '-', '_', '.', at most 15)")
                }
                _ => return Err("expected none, on, or mac=..,bridge=.."),
            }
        }
        Ok(Dom0Vif::On { mac, bridge })
    }
}

/// A name of a disk, partition, bridge or guest device: 1 to 15 of `[A-Za-z0-9._-]`.
fn is_device_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `dom0_disk=[phy:]TARGET[,VDEV[,MODE]]`: the `phy:` target (`vda`, `vda1`) dom0 gets as
/// VDEV (default `xvda`, so that the brief's `root=/dev/xvda` finds it), MODE `w`
/// (default), `r` or `w!`. `none` attaches nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dom0Disk<'a> {
    pub target: &'a str,
    pub vdev: &'a str,
    pub writable: bool,
    /// `w!`: writable even if another domain has it writable.
    pub shared: bool,
}

impl<'a> Dom0Disk<'a> {
    fn parse(value: &'a str) -> Result<Option<Self>, &'static str> {
        if value == "none" {
            return Ok(None);
        }
        let value = value.strip_prefix("phy:").unwrap_or(value);
        let mut parts = value.split(',');
        let target = parts
            .next()
            .filter(|t| is_device_name(t))
            .ok_or("expected [phy:]TARGET[,VDEV[,r|w|w!]], e.g. phy:vda1,xvda,w")?;
        let vdev = match parts.next() {
            None | Some("") => "xvda",
            Some(v) if is_device_name(v) => v,
            Some(_) => return Err("expected a guest device name such as xvda after the target"),
        };
        let (writable, shared) = match parts.next() {
            None | Some("w") | Some("rw") => (true, false),
            Some("r") | Some("ro") => (false, false),
            Some("w!") => (true, true),
            Some(_) => return Err("expected the mode r, w or w! after the guest device"),
        };
        if parts.next().is_some() {
            return Err("expected at most TARGET,VDEV,MODE");
        }
        Ok(Some(Dom0Disk {
            target,
            vdev,
            writable,
            shared,
        }))
    }
}

/// The parsed command line. Fields hold their defaults unless an option set them.
#[derive(Clone, Debug)]
pub struct Cmdline<'a> {
    pub raw: &'a str,
    pub dom0_mem: Option<Dom0Mem>,
    /// `maxcpus=`: how many physical CPUs run (default: all that answer, up to 16).
    pub maxcpus: Option<u32>,
    /// `dom0_max_vcpus=`: how many vCPUs dom0 gets (default, as in Xen: one per running
    /// physical CPU).
    pub dom0_max_vcpus: Option<u32>,
    pub loglvl: LogLevel,
    pub console: ConsoleSet,
    pub com1_baud: Option<u32>,
    pub selftest: Option<SelfTest>,
    /// The QEMU `isa-debug-exit` port the hypervisor reports its test verdict to.
    pub debug_exit: Option<u16>,
    /// `guest_console_mirror=`: domUs' console output also goes to the hypervisor's
    /// serial line and log ring as `(d<id>)` lines (rate-limited). Off by default: as in
    /// Xen, a domU's console is its own (`fv console`, the domain's history).
    pub guest_console_mirror: bool,
    /// `dom0_vif=`: dom0's network interface on a switch (default: `vif0.0` on `xenbr0`).
    pub dom0_vif: Dom0Vif<'a>,
    /// `dom0_disk=`: a `phy:` target attached to dom0 (default: none).
    pub dom0_disk: Option<Dom0Disk<'a>>,
    pub diagnostics: heapless::Vec<Diagnostic<'a>, MAX_DIAGNOSTICS>,
    /// Diagnostics beyond [`MAX_DIAGNOSTICS`], counted so the log can say some were lost.
    pub diagnostics_dropped: usize,
}

/// The options this module knows, by their canonical (underscore) names.
#[derive(Clone, Copy)]
enum Key {
    Dom0Mem,
    Dom0MaxVcpus,
    MaxCpus,
    LogLvl,
    Console,
    Com1,
    SelfTest,
    DebugExit,
    GuestConsoleMirror,
    Dom0Vif,
    Dom0Disk,
}

impl Key {
    /// Booleans, which Xen also takes as a bare name (on) or with `no-` before it (off).
    const fn is_boolean(self) -> bool {
        matches!(self, Key::GuestConsoleMirror)
    }

    fn lookup(name: &str) -> Option<Key> {
        const KEYS: [(&str, Key); 11] = [
            ("dom0_vif", Key::Dom0Vif),
            ("dom0_disk", Key::Dom0Disk),
            ("dom0_mem", Key::Dom0Mem),
            ("dom0_max_vcpus", Key::Dom0MaxVcpus),
            ("maxcpus", Key::MaxCpus),
            ("loglvl", Key::LogLvl),
            ("console", Key::Console),
            ("com1", Key::Com1),
            ("selftest", Key::SelfTest),
            ("debug_exit", Key::DebugExit),
            ("guest_console_mirror", Key::GuestConsoleMirror),
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

/// `dom0_max_vcpus=<n>` or Xen's range form `<min>-<max>` (dom0 gets the maximum).
fn parse_dom0_max_vcpus(value: &str) -> Result<u32, &'static str> {
    let (min, max) = match value.split_once('-') {
        Some((lo, hi)) => (parse_maxcpus(lo)?, parse_maxcpus(hi)?),
        None => (1, parse_maxcpus(value)?),
    };
    if min > max {
        return Err("expected <n> or <min>-<max> with min <= max");
    }
    Ok(max)
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
        "devices" => Ok(SelfTest::Devices),
        _ => Err("expected halt, pagefault, overflow, panic, ring3 or devices"),
    }
}

/// Xen's boolean values.
fn parse_boolean(value: &str) -> Result<bool, &'static str> {
    match value {
        "yes" | "on" | "true" | "enable" | "1" => Ok(true),
        "no" | "off" | "false" | "disable" | "0" => Ok(false),
        _ => Err("expected on or off (also yes/no, true/false, enable/disable, 1/0)"),
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
            dom0_max_vcpus: None,
            loglvl: LogLevel::default(),
            console: ConsoleSet::default(),
            com1_baud: None,
            selftest: None,
            debug_exit: None,
            guest_console_mirror: false,
            dom0_vif: Dom0Vif::default(),
            dom0_disk: None,
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
        let (key, value) = match Key::lookup(name) {
            Some(key) => (key, value),
            None => match name.strip_prefix("no-").and_then(Key::lookup) {
                Some(key) if key.is_boolean() && value.is_none() => (key, Some("off")),
                _ => {
                    self.report(Diagnostic::Unknown { option });
                    return;
                }
            },
        };
        let value = match value {
            Some(value) if !value.is_empty() => value,
            None if key.is_boolean() => "on",
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
            Key::Dom0MaxVcpus => parse_dom0_max_vcpus(value).map(|n| self.dom0_max_vcpus = Some(n)),
            Key::LogLvl => LogLevel::parse(value).map(|l| self.loglvl = l),
            Key::Console => ConsoleSet::parse(value).map(|c| self.console = c),
            Key::Com1 => parse_com1(value).map(|b| self.com1_baud = Some(b)),
            Key::SelfTest => parse_selftest(value).map(|t| self.selftest = Some(t)),
            Key::DebugExit => parse_debug_exit(value).map(|p| self.debug_exit = Some(p)),
            Key::GuestConsoleMirror => {
                parse_boolean(value).map(|on| self.guest_console_mirror = on)
            }
            Key::Dom0Vif => Dom0Vif::parse(value).map(|v| self.dom0_vif = v),
            Key::Dom0Disk => Dom0Disk::parse(value).map(|d| self.dom0_disk = d),
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
    fn sizes_in_hexadecimal() {
        // 0x10000 KiB = 64 MiB.
        assert_eq!(parse_size("0x10000"), Ok(64 * MIB));
        assert_eq!(parse_size("0X10000"), Ok(64 * MIB));
        assert_eq!(parse_size("0x10M"), Ok(16 * MIB));
        assert_eq!(parse_size("0xaG"), Ok(10 * GIB));
        assert_eq!(parse_size("0XFfK"), Ok(255 * KIB));
        assert_eq!(parse_size("0x0"), Ok(0));
        // As with strtoull, hexadecimal digits are taken greedily: this b is a digit.
        assert_eq!(parse_size("0x10b"), Ok(0x10b * KIB));
        assert_eq!(parse_size("0x10bB"), Ok(0x10bb * KIB));
    }

    #[test]
    fn sizes_in_octal() {
        assert_eq!(parse_size("010"), Ok(8 * KIB));
        assert_eq!(parse_size("010M"), Ok(8 * MIB));
        assert_eq!(parse_size("0777B"), Ok(511));
        assert_eq!(parse_size("00"), Ok(0));
        assert_eq!(parse_size("0b"), Ok(0));
        assert_eq!(parse_size("0G"), Ok(0));
    }

    #[test]
    fn size_errors() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("G"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("-1G"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("+1G"), Err(SizeError::NotANumber));
        assert_eq!(parse_size(" 1G"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("x10"), Err(SizeError::NotANumber));
        assert_eq!(parse_size("1X"), Err(SizeError::UnknownSuffix));
        assert_eq!(parse_size("1GB"), Err(SizeError::UnknownSuffix));
        assert_eq!(parse_size("1 G"), Err(SizeError::UnknownSuffix));
        assert_eq!(parse_size("1.5G"), Err(SizeError::UnknownSuffix));
        assert_eq!(parse_size("1x10"), Err(SizeError::UnknownSuffix));
        assert_eq!(parse_size("0x1Q"), Err(SizeError::UnknownSuffix));
        assert_eq!(parse_size("1%"), Err(SizeError::UnknownSuffix));
        assert_eq!(
            SizeError::UnknownSuffix.to_string(),
            "unknown size suffix (use B, K, M, G or T)"
        );
    }

    #[test]
    fn size_digit_errors() {
        for s in ["08", "09G", "0778", "0x", "0X", "0xG", "0xg", "0x.5"] {
            assert_eq!(parse_size(s), Err(SizeError::BadDigit), "{s}");
        }
        assert_eq!(
            SizeError::BadDigit.to_string(),
            "a leading 0 makes a number octal (digits 0-7) and 0x hexadecimal"
        );
    }

    #[test]
    fn size_overflow() {
        assert_eq!(parse_size("99999999999999999999"), Err(SizeError::Overflow));
        assert_eq!(parse_size("16777216T"), Err(SizeError::Overflow));
        // 2^54 KiB is exactly 2^64 bytes: one too many.
        assert_eq!(parse_size("18014398509481984"), Err(SizeError::Overflow));
        assert_eq!(parse_size("18014398509481983"), Ok(u64::MAX - 1023));
        assert_eq!(parse_size("18446744073709551615B"), Ok(u64::MAX));
        assert_eq!(
            parse_size("18446744073709551616B"),
            Err(SizeError::Overflow)
        );
        assert_eq!(parse_size("0xffffffffffffffffB"), Err(SizeError::Overflow));
        assert_eq!(parse_size("0xffffffffffffffff"), Err(SizeError::Overflow));
        assert_eq!(parse_size("0x3fffffffffffffK"), Ok(u64::MAX - 1023));
        assert_eq!(parse_size("0x10000000000000000"), Err(SizeError::Overflow));
        assert_eq!(parse_size("01777777777777777777777b"), Ok(u64::MAX));
        assert_eq!(
            parse_size("02000000000000000000000b"),
            Err(SizeError::Overflow)
        );
    }

    fn size(bytes: u64, percent: u32, all_but: bool) -> Dom0MemSize {
        Dom0MemSize {
            bytes,
            percent,
            all_but,
        }
    }

    #[test]
    fn dom0_mem_syntax() {
        assert_eq!(
            Dom0Mem::parse("262144"),
            Ok(Dom0Mem {
                amount: Some(Dom0MemSize::bytes(256 * MIB)),
                min: None,
                max: None
            })
        );
        assert_eq!(
            Dom0Mem::parse("max:2G,min:512M,1G"),
            Ok(Dom0Mem {
                amount: Some(Dom0MemSize::bytes(GIB)),
                min: Some(Dom0MemSize::bytes(512 * MIB)),
                max: Some(Dom0MemSize::bytes(2 * GIB))
            })
        );
        assert_eq!(
            Dom0Mem::parse("-1G"),
            Ok(Dom0Mem {
                amount: Some(Dom0MemSize::all_but(GIB)),
                min: None,
                max: None
            })
        );
        assert_eq!(
            Dom0Mem::parse("min:1G"),
            Ok(Dom0Mem {
                amount: None,
                min: Some(Dom0MemSize::bytes(GIB)),
                max: None
            })
        );
        // Later items override earlier ones.
        assert_eq!(
            Dom0Mem::parse("1G,2G,max:4G,max:3G").map(|m| (m.amount, m.max)),
            Ok((
                Some(Dom0MemSize::bytes(2 * GIB)),
                Some(Dom0MemSize::bytes(3 * GIB))
            ))
        );
    }

    #[test]
    fn dom0_mem_syntax_fractions_and_signs() {
        let amount = |s| Dom0Mem::parse(s).map(|m| m.amount.unwrap());
        assert_eq!(amount("25%"), Ok(Dom0MemSize::percent(25)));
        assert_eq!(amount("0%"), Ok(Dom0MemSize::percent(0)));
        assert_eq!(amount("99%"), Ok(Dom0MemSize::percent(99)));
        assert_eq!(amount("0x10%"), Ok(Dom0MemSize::percent(16)));
        assert_eq!(amount("010%"), Ok(Dom0MemSize::percent(8)));
        assert_eq!(amount("1G+25%"), Ok(size(GIB, 25, false)));
        assert_eq!(amount("0x400+5%"), Ok(size(MIB, 5, false)));
        assert_eq!(amount("-1G+25%"), Ok(size(GIB, 25, true)));
        assert_eq!(amount("-25%"), Ok(size(0, 25, true)));
        assert_eq!(amount("-0"), Ok(Dom0MemSize::all_but(0)));
        assert_eq!(amount("0"), Ok(Dom0MemSize::bytes(0)));
        assert_eq!(
            Dom0Mem::parse("min:-1G,max:-10%,50%"),
            Ok(Dom0Mem {
                amount: Some(Dom0MemSize::percent(50)),
                min: Some(Dom0MemSize::all_but(GIB)),
                max: Some(size(0, 10, true))
            })
        );
        assert_eq!(
            Dom0Mem::parse("min:512M+10%,max:-0x100000"),
            Ok(Dom0Mem {
                amount: None,
                min: Some(size(512 * MIB, 10, false)),
                max: Some(Dom0MemSize::all_but(GIB))
            })
        );
    }

    #[test]
    fn dom0_mem_syntax_errors() {
        let percent = "a percentage must be a whole number from 0 to 99, as in 25%";
        let plus = "a '+' must be followed by a percentage, as in 1G+25%";
        let cases = [
            ("", "missing value"),
            ("1G,,max:2G", "empty item in the comma-separated list"),
            ("1G,", "empty item in the comma-separated list"),
            (",1G", "empty item in the comma-separated list"),
            ("min:", SizeError::Empty.reason()),
            ("max:-", SizeError::Empty.reason()),
            ("-", SizeError::Empty.reason()),
            ("lots", SizeError::NotANumber.reason()),
            ("mid:1G", SizeError::NotANumber.reason()),
            ("MAX:1G", SizeError::NotANumber.reason()),
            ("--1G", SizeError::NotANumber.reason()),
            ("+1G", plus),
            ("1Q", SizeError::UnknownSuffix.reason()),
            ("08", SizeError::BadDigit.reason()),
            ("max:0x", SizeError::BadDigit.reason()),
            ("99999999999999999999", SizeError::Overflow.reason()),
            ("min:16777216T", SizeError::Overflow.reason()),
            ("100%", percent),
            ("-100%", percent),
            ("150%", percent),
            ("%", percent),
            ("-%", percent),
            ("25%%", percent),
            ("1G+%", percent),
            ("1G+2G%", percent),
            ("1G+-5%", percent),
            ("1G+1.5%", percent),
            ("1G+ 5%", percent),
            ("99999999999999999999%", percent),
            ("1G+25%+5%", percent),
            ("+25%", SizeError::Empty.reason()),
            ("-+25%", SizeError::Empty.reason()),
            ("x+25%", SizeError::NotANumber.reason()),
            ("1G+", plus),
            ("1G+25", plus),
            ("25%+1G", plus),
            ("max:-1G+", plus),
        ];
        for (value, reason) in cases {
            assert_eq!(Dom0Mem::parse(value), Err(reason), "{value}");
        }
    }

    #[test]
    fn dom0_mem_resolve_exact_and_all_but() {
        let avail = 8 * GIB;
        let resolve = |s| Dom0Mem::parse(s).unwrap().resolve(avail);
        assert_eq!(resolve("1G"), Ok(GIB));
        assert_eq!(resolve("0x100000"), Ok(GIB));
        assert_eq!(resolve("04000000"), Ok(GIB));
        assert_eq!(resolve("-1G"), Ok(7 * GIB));
        assert_eq!(resolve("-0"), Ok(avail));
        assert_eq!(resolve("8G"), Ok(avail));
        // Rounded down to whole pages.
        assert_eq!(resolve("1000001B"), Ok(1000001 & !4095));
        assert_eq!(resolve("-1000001B"), Ok(avail - (1000001 & !4095) - 4096));
    }

    #[test]
    fn dom0_mem_resolve_fractions() {
        let avail = 8 * GIB;
        let resolve = |s| Dom0Mem::parse(s).unwrap().resolve(avail);
        assert_eq!(resolve("50%"), Ok(4 * GIB));
        assert_eq!(resolve("1G+25%"), Ok(3 * GIB));
        assert_eq!(resolve("-25%"), Ok(6 * GIB));
        // All but (1 GiB + 25%).
        assert_eq!(resolve("-1G+25%"), Ok(5 * GIB));
        assert_eq!(resolve("99%"), Ok((avail * 99 / 100) & !4095));
        // A fraction is of the memory available, rounded down to whole pages.
        assert_eq!(resolve("33%"), Ok((avail * 33 / 100) & !4095));
        assert_eq!(resolve("max:50%"), Ok(4 * GIB));
        assert_eq!(resolve("1G,min:25%"), Ok(2 * GIB));
        assert_eq!(resolve("min:-1G,1G"), Ok(7 * GIB));
        assert_eq!(resolve("max:-2G"), Ok(6 * GIB));
        assert_eq!(resolve("max:-1G+25%"), Ok(5 * GIB));
        // Xen's example: 1G+25% of a 256 GiB host is 65 GiB.
        assert_eq!(
            Dom0Mem::parse("1G+25%").unwrap().resolve(256 * GIB),
            Ok(65 * GIB)
        );
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
    fn dom0_mem_zero_amount_is_the_default() {
        let avail = 16 * GIB;
        let default = Dom0Mem::default().resolve(avail);
        assert_eq!(default, Ok(avail - 128 * MIB));
        // As in Xen, an amount of less than a page means "no amount given".
        for value in ["0", "0G", "0x0", "00", "0%", "0+0%", "4095B", "0B+0%"] {
            assert_eq!(
                Dom0Mem::parse(value).unwrap().resolve(avail),
                default,
                "{value}"
            );
        }
        // A percentage that comes to less than a page of a tiny machine, too.
        assert_eq!(
            Dom0Mem::parse("1%").unwrap().resolve(64 * 4096),
            Dom0Mem::default().resolve(64 * 4096)
        );
        // min: and max: still apply to the default.
        assert_eq!(Dom0Mem::parse("0,max:1G").unwrap().resolve(avail), Ok(GIB));
        assert_eq!(
            Dom0Mem::parse("0,min:-0").unwrap().resolve(avail),
            Ok(avail)
        );
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
        // A min: that keeps back more than there is sets no lower bound.
        assert_eq!(
            Dom0Mem::parse("1G,min:-9G").unwrap().resolve(avail),
            Ok(GIB)
        );
        // min: 0 is no lower bound either.
        assert_eq!(Dom0Mem::parse("1G,min:0").unwrap().resolve(avail), Ok(GIB));
    }

    #[test]
    fn dom0_mem_max_wins_over_min() {
        let avail = 8 * GIB;
        let resolve = |s| Dom0Mem::parse(s).unwrap().resolve(avail);
        assert_eq!(resolve("min:2G,max:1G"), Ok(GIB));
        assert_eq!(resolve("max:1G,min:2G"), Ok(GIB));
        assert_eq!(resolve("3G,min:4G,max:2G"), Ok(2 * GIB));
        assert_eq!(resolve("min:75%,max:25%"), Ok(2 * GIB));
        assert_eq!(resolve("min:-1G,max:-2G"), Ok(6 * GIB));
        // Even a min: larger than all memory is only a problem if max: allows it.
        assert_eq!(resolve("min:16G,max:1G"), Ok(GIB));
    }

    #[test]
    fn dom0_mem_resolve_not_enough_memory() {
        let avail = 2 * GIB;
        let resolve = |s| Dom0Mem::parse(s).unwrap().resolve(avail);
        let not_enough = |requested| {
            Err(Dom0MemError::NotEnoughMemory {
                requested,
                available: avail,
            })
        };
        assert_eq!(resolve("4G"), not_enough(4 * GIB));
        assert_eq!(resolve("min:3G"), not_enough(3 * GIB));
        assert_eq!(resolve("max:4G,3G"), not_enough(3 * GIB));
        assert_eq!(resolve("2097156"), not_enough(2 * GIB + 4 * KIB));
        assert_eq!(
            resolve("1G+90%"),
            not_enough((GIB + avail * 90 / 100) & !4095)
        );
        assert_eq!(
            resolve("min:1G+60%"),
            not_enough((GIB + avail * 60 / 100) & !4095)
        );
        // The largest sizes saturate rather than wrap.
        let huge = crate::mm::align_down(u64::MAX, crate::mm::PAGE_SIZE);
        assert_eq!(resolve("18446744073709551615B+50%"), not_enough(huge));
        assert_eq!(resolve("0x3fffffffffffffK+99%"), not_enough(huge));
        assert_eq!(
            Dom0MemSize {
                bytes: 0,
                percent: u32::MAX,
                all_but: false
            }
            .of(u64::MAX),
            u64::MAX
        );
    }

    #[test]
    fn dom0_mem_resolve_no_memory_left() {
        let avail = 2 * GIB;
        let resolve = |s| Dom0Mem::parse(s).unwrap().resolve(avail);
        let none_left = Err(Dom0MemError::NoMemoryLeft { available: avail });
        for value in [
            "-2G",
            "-3G",
            "-2147483649B",
            "-1G+50%",
            "-1G+99%",
            "-18446744073709551615B+99%",
            "max:0",
            "max:0%",
            "max:4095B",
            "max:-2G",
            "max:-1G+50%",
            "4G,max:-3G",
        ] {
            assert_eq!(resolve(value), none_left, "{value}");
        }
        // An "all but" leaving less than a page is refused, not replaced by the default.
        assert_eq!(resolve("-2147483649B"), none_left);
        assert_eq!(resolve("-2097148K"), Ok(4096));
        assert_eq!(
            Dom0Mem::default().resolve(0),
            Err(Dom0MemError::NoMemoryLeft { available: 0 })
        );
        assert_eq!(
            Dom0Mem::parse("1G").unwrap().resolve(0),
            Err(Dom0MemError::NotEnoughMemory {
                requested: GIB,
                available: 0
            })
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
            Some(Dom0MemSize::bytes(256 * MIB))
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
                amount: Some(Dom0MemSize::bytes(GIB)),
                min: None,
                max: Some(Dom0MemSize::bytes(2 * GIB))
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
            Some(Dom0MemSize::bytes(GIB))
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
                max: Some(Dom0MemSize::bytes(2 * GIB))
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
    fn dom0_max_vcpus_values() {
        assert_eq!(parse("dom0_max_vcpus=2").dom0_max_vcpus, Some(2));
        assert_eq!(parse("dom0_max_vcpus=1-4").dom0_max_vcpus, Some(4));
        assert_eq!(parse("dom0-max-vcpus=3").dom0_max_vcpus, Some(3));
        for bad in ["dom0_max_vcpus=0", "dom0_max_vcpus=4-2", "dom0_max_vcpus=x"] {
            let c = parse(bad);
            assert_eq!(c.dom0_max_vcpus, None, "{bad}");
            assert_eq!(c.diagnostics.len(), 1, "{bad}");
        }
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
        assert_eq!(parse("selftest=devices").selftest, Some(SelfTest::Devices));
        assert_eq!(
            only_malformed("selftest=reboot"),
            "expected halt, pagefault, overflow, panic, ring3 or devices"
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
            Some(Dom0MemSize::bytes(GIB))
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

    #[test]
    fn guest_console_mirror_is_a_xen_boolean_off_by_default() {
        assert!(!parse("").guest_console_mirror);
        for on in [
            "guest_console_mirror=on",
            "guest-console-mirror=yes",
            "guest_console_mirror=1",
            "guest_console_mirror",
        ] {
            let c = parse(on);
            assert!(c.guest_console_mirror && c.diagnostics.is_empty(), "{on}");
        }
        for off in [
            "guest_console_mirror=on guest_console_mirror=off",
            "guest_console_mirror no-guest_console_mirror",
            "guest_console_mirror=disable",
        ] {
            let c = parse(off);
            assert!(!c.guest_console_mirror && c.diagnostics.is_empty(), "{off}");
        }
        // A bad value keeps the earlier setting; `no-` is for booleans only.
        let c = parse("guest_console_mirror=on guest_console_mirror=maybe");
        assert!(c.guest_console_mirror);
        assert_eq!(
            only_malformed("guest_console_mirror=maybe"),
            "expected on or off (also yes/no, true/false, enable/disable, 1/0)"
        );
        assert_eq!(
            parse("no-maxcpus").diagnostics[0],
            Diagnostic::Unknown {
                option: "no-maxcpus"
            }
        );
        assert_eq!(
            parse("no-guest_console_mirror=on").diagnostics[0],
            Diagnostic::Unknown {
                option: "no-guest_console_mirror=on"
            }
        );
    }

    #[test]
    fn dom0_vif_is_on_by_default_and_takes_xls_form() {
        assert_eq!(parse("").dom0_vif, Dom0Vif::default());
        assert_eq!(parse("dom0_vif=none").dom0_vif, Dom0Vif::Off);
        assert_eq!(parse("dom0-vif=off").dom0_vif, Dom0Vif::Off);
        assert_eq!(
            parse("dom0_vif=mac=00:16:3e:0a:0b:0c,bridge=lan1").dom0_vif,
            Dom0Vif::On {
                mac: Some([0, 0x16, 0x3e, 0xa, 0xb, 0xc]),
                bridge: "lan1"
            }
        );
        assert_eq!(
            parse("dom0_vif=bridge=xenbr1").dom0_vif,
            Dom0Vif::On {
                mac: None,
                bridge: "xenbr1"
            }
        );
        for bad in [
            "dom0_vif=mac=01:00:5e:00:00:01",
            "dom0_vif=mac=00:00:00:00:00:00",
            "dom0_vif=mac=00:16:3e:0a:0b",
            "dom0_vif=mac=00:16:3e:0a:0b:0c:0d",
            "dom0_vif=bridge=",
            "dom0_vif=colour=red",
        ] {
            let c = parse(bad);
            assert_eq!(c.dom0_vif, Dom0Vif::default(), "{bad}");
            assert!(
                matches!(c.diagnostics[0], Diagnostic::Malformed { .. }),
                "{bad}"
            );
        }
    }

    #[test]
    fn dom0_disk_names_a_target_device_and_mode() {
        assert_eq!(parse("").dom0_disk, None);
        assert_eq!(
            parse("dom0_disk=vda1").dom0_disk,
            Some(Dom0Disk {
                target: "vda1",
                vdev: "xvda",
                writable: true,
                shared: false
            })
        );
        assert_eq!(
            parse("dom0_disk=phy:vdb,xvdb,r").dom0_disk,
            Some(Dom0Disk {
                target: "vdb",
                vdev: "xvdb",
                writable: false,
                shared: false
            })
        );
        assert_eq!(
            parse("dom0_disk=vda2,,w!")
                .dom0_disk
                .map(|d| (d.vdev, d.shared)),
            Some(("xvda", true))
        );
        assert_eq!(parse("dom0_disk=vda dom0_disk=none").dom0_disk, None);
        for bad in [
            "dom0_disk=phy:",
            "dom0_disk=vda,xvda,x",
            "dom0_disk=vda,xvda,w,extra",
            "dom0_disk=../etc",
        ] {
            let c = parse(bad);
            assert_eq!(c.dom0_disk, None, "{bad}");
            assert!(
                matches!(c.diagnostics[0], Diagnostic::Malformed { .. }),
                "{bad}"
            );
        }
    }
}
