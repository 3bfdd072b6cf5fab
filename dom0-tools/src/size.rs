//! Memory sizes on the command line (`fv mem-set web1 256m`).
//!
//! A number with an optional unit: `b` bytes, `k` KiB, `m` MiB, `g` GiB, `t` TiB (any
//! case, optionally followed by `iB` or `B`). A bare number is MiB, like the `memory`
//! setting of a domain config (xl's mem-set reads a bare number as KiB; fv keeps one unit
//! for both places).

use std::{fmt, str::FromStr};

use thiserror::Error;

/// Bytes in a page.
pub const PAGE_SIZE: u64 = 4096;

/// A size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemSize(pub u64);

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SizeError {
    #[error("a size is needed, like 256m or 1g")]
    Empty,
    #[error("'{0}' is not a size: expected a number with an optional unit b, k, m, g or t, like 256m or 1g (a bare number is MiB)")]
    Malformed(String),
    #[error("'{0}' is too large")]
    TooLarge(String),
    #[error("'{0}' is less than one 4 KiB page")]
    BelowOnePage(String),
}

impl MemSize {
    /// Whole pages (rounded down).
    pub fn pages(self) -> u64 {
        self.0 / PAGE_SIZE
    }

    pub fn mib(self) -> u64 {
        self.0 >> 20
    }
}

impl fmt::Display for MemSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b % (1 << 30) == 0 && b > 0 {
            write!(f, "{} GiB", b >> 30)
        } else if b % (1 << 20) == 0 {
            write!(f, "{} MiB", b >> 20)
        } else {
            write!(f, "{} KiB", b >> 10)
        }
    }
}

impl FromStr for MemSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, SizeError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(SizeError::Empty);
        }
        let digits = t.chars().take_while(char::is_ascii_digit).count();
        let (num, unit) = t.split_at(digits);
        let n: u64 = num.parse().map_err(|_| SizeError::Malformed(s.into()))?;
        let unit = unit.to_ascii_lowercase();
        let unit = unit
            .strip_suffix("ib")
            .or_else(|| unit.strip_suffix('b').filter(|u| !u.is_empty()))
            .unwrap_or(&unit);
        let shift = match unit {
            "" | "m" => 20,
            "b" => 0,
            "k" => 10,
            "g" => 30,
            "t" => 40,
            _ => return Err(SizeError::Malformed(s.into())),
        };
        let bytes = n
            .checked_mul(1u64 << shift)
            .ok_or_else(|| SizeError::TooLarge(s.into()))?;
        if bytes < PAGE_SIZE {
            return Err(SizeError::BelowOnePage(s.into()));
        }
        Ok(MemSize(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<u64, SizeError> {
        s.parse::<MemSize>().map(|m| m.0)
    }

    #[test]
    fn units() {
        assert_eq!(p("256"), Ok(256 << 20));
        assert_eq!(p("256m"), Ok(256 << 20));
        assert_eq!(p("256M"), Ok(256 << 20));
        assert_eq!(p("256MiB"), Ok(256 << 20));
        assert_eq!(p("256mb"), Ok(256 << 20));
        assert_eq!(p("1g"), Ok(1 << 30));
        assert_eq!(p("1G"), Ok(1 << 30));
        assert_eq!(p("65536k"), Ok(64 << 20));
        assert_eq!(p("8192b"), Ok(8192));
        assert_eq!(p("1t"), Ok(1 << 40));
        assert_eq!("1g".parse::<MemSize>().unwrap().pages(), 262_144);
        assert_eq!(MemSize(256 << 20).to_string(), "256 MiB");
        assert_eq!(MemSize(1 << 30).to_string(), "1 GiB");
    }

    #[test]
    fn errors() {
        assert_eq!(p(""), Err(SizeError::Empty));
        assert!(matches!(p("m"), Err(SizeError::Malformed(_))));
        assert!(matches!(p("12x"), Err(SizeError::Malformed(_))));
        assert!(matches!(p("-1"), Err(SizeError::Malformed(_))));
        assert!(matches!(p("1.5g"), Err(SizeError::Malformed(_))));
        assert!(matches!(p("99999999999t"), Err(SizeError::TooLarge(_))));
        assert!(matches!(p("100b"), Err(SizeError::BelowOnePage(_))));
        assert_eq!(
            p("12x").unwrap_err().to_string(),
            "'12x' is not a size: expected a number with an optional unit b, k, m, g or t, like 256m or 1g (a bare number is MiB)"
        );
    }
}
