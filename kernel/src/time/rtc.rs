//! Decoding the CMOS real-time clock (MC146818-compatible) into a UTC date and Unix time.
//!
//! The registers hold the date in BCD or binary and the hour in 12- or 24-hour form,
//! depending on status register B (bit 2 "DM": 1 = binary; bit 1 "24/12": 1 = 24-hour;
//! in 12-hour mode bit 7 of the hours register is the PM flag). The century lives in a
//! register whose index the ACPI FADT gives (`CENTURY`), when there is one at all.
//! The port I/O that fills [`RtcRegisters`] is the caller's; this module only decodes,
//! and treats the RTC as UTC, as is usual for servers.

use core::fmt;

const STATUS_B_BINARY: u8 = 1 << 2;
const STATUS_B_24H: u8 = 1 << 1;
const HOURS_PM: u8 = 1 << 7;

const SECS_PER_DAY: u64 = 86_400;
const UNIX_EPOCH_YEAR: u16 = 1970;

/// The raw CMOS values, exactly as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtcRegisters {
    pub seconds: u8,
    pub minutes: u8,
    pub hours: u8,
    pub day: u8,
    pub month: u8,
    /// Two digits: the year within the century.
    pub year: u8,
    /// The century register, if the FADT names one.
    pub century: Option<u8>,
    pub status_b: u8,
}

/// A UTC calendar date and time, to the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DateTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

/// An RTC register, to say which one was bad.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtcField {
    Seconds,
    Minutes,
    Hours,
    Day,
    Month,
    Year,
    Century,
}

impl fmt::Display for RtcField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RtcField::Seconds => "seconds",
            RtcField::Minutes => "minutes",
            RtcField::Hours => "hours",
            RtcField::Day => "day of month",
            RtcField::Month => "month",
            RtcField::Year => "year",
            RtcField::Century => "century",
        })
    }
}

/// Why the RTC's registers do not make a date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtcError {
    /// A register in BCD mode holds a nibble above 9.
    BadBcd { field: RtcField, raw: u8 },
    /// A decoded value outside its field's range.
    OutOfRange { field: RtcField, value: u8 },
    /// A day that its month does not have (e.g. 31 April, 29 February of a common year).
    NoSuchDay { year: u16, month: u8, day: u8 },
    /// A date before 1970, which Unix time cannot express (a century register of 19
    /// with a year below 70, or a bogus century).
    BeforeEpoch { year: u16 },
}

impl fmt::Display for RtcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RtcError::BadBcd { field, raw } => {
                write!(f, "RTC {field} register {raw:#04x} is not valid BCD")
            }
            RtcError::OutOfRange { field, value } => {
                write!(f, "RTC {field} value {value} is out of range")
            }
            RtcError::NoSuchDay { year, month, day } => {
                write!(f, "RTC date {year:04}-{month:02}-{day:02} does not exist")
            }
            RtcError::BeforeEpoch { year } => {
                write!(f, "RTC year {year} is before 1970")
            }
        }
    }
}

#[allow(
    clippy::manual_is_multiple_of,
    reason = "u16::is_multiple_of needs Rust 1.87; the workspace's rust-version is 1.85"
)]
pub const fn is_leap_year(year: u16) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// The number of days in `month` (1-12) of `year`; 0 for a month that does not exist.
pub const fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Leap years in 1..=y (Gregorian rules, extended backwards).
const fn leaps_through(y: u64) -> u64 {
    y / 4 - y / 100 + y / 400
}

/// Days from 1970-01-01 to 1 January of `year` (>= 1970).
const fn days_before_year(year: u64) -> u64 {
    365 * (year - UNIX_EPOCH_YEAR as u64) + leaps_through(year - 1)
        - leaps_through(UNIX_EPOCH_YEAR as u64 - 1)
}

/// Days from 1 January to the first of `month` (1-12).
const fn days_before_month(year: u16, month: u8) -> u64 {
    const CUMULATIVE: [u16; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let m = if matches!(month, 1..=12) { month } else { 1 };
    let days = CUMULATIVE[(m - 1) as usize] as u64;
    if m > 2 && is_leap_year(year) {
        days + 1
    } else {
        days
    }
}

impl DateTime {
    /// The last second a `DateTime` can hold.
    pub const MAX: DateTime = DateTime {
        year: u16::MAX,
        month: 12,
        day: 31,
        hour: 23,
        minute: 59,
        second: 59,
    };

    /// Seconds since 1970-01-01 00:00:00 UTC (leap seconds are not counted, as in Unix
    /// time). Dates before 1970 give 0; the fields are assumed valid (as [`decode`] and
    /// [`DateTime::from_unix`] make them).
    pub const fn to_unix(&self) -> u64 {
        if self.year < UNIX_EPOCH_YEAR {
            return 0;
        }
        let days = days_before_year(self.year as u64)
            + days_before_month(self.year, self.month)
            + (self.day as u64).saturating_sub(1);
        days * SECS_PER_DAY + self.hour as u64 * 3600 + self.minute as u64 * 60 + self.second as u64
    }

    /// The date of a Unix time; times past [`DateTime::MAX`] give `DateTime::MAX`.
    pub const fn from_unix(secs: u64) -> DateTime {
        if secs > DateTime::MAX.to_unix() {
            return DateTime::MAX;
        }
        let days = secs / SECS_PER_DAY;
        let rest = secs % SECS_PER_DAY;
        // 146097 days per 400 years: a first guess within a year of the answer.
        let mut year = UNIX_EPOCH_YEAR as u64 + days * 400 / 146_097;
        while year > UNIX_EPOCH_YEAR as u64 && days_before_year(year) > days {
            year -= 1;
        }
        while days_before_year(year + 1) <= days {
            year += 1;
        }
        // Fits: secs <= MAX.to_unix() bounds the year by u16::MAX.
        let year = year as u16;
        let mut day_of_year = days - days_before_year(year as u64);
        let mut month = 1;
        while month < 12 && day_of_year >= days_in_month(year, month) as u64 {
            day_of_year -= days_in_month(year, month) as u64;
            month += 1;
        }
        // All below 60, 24 or 31 respectively, so the narrowing casts are exact.
        DateTime {
            year,
            month,
            day: day_of_year as u8 + 1,
            hour: (rest / 3600) as u8,
            minute: (rest / 60 % 60) as u8,
            second: (rest % 60) as u8,
        }
    }
}

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// One register in the clock's current mode, range checked.
fn read_field(
    raw: u8,
    binary: bool,
    field: RtcField,
    range: core::ops::RangeInclusive<u8>,
) -> Result<u8, RtcError> {
    let value = if binary {
        raw
    } else {
        let (tens, ones) = (raw >> 4, raw & 0x0f);
        if tens > 9 || ones > 9 {
            return Err(RtcError::BadBcd { field, raw });
        }
        tens * 10 + ones
    };
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(RtcError::OutOfRange { field, value })
    }
}

/// Decodes and validates the RTC registers.
pub fn decode(r: &RtcRegisters) -> Result<DateTime, RtcError> {
    let binary = r.status_b & STATUS_B_BINARY != 0;
    let second = read_field(r.seconds, binary, RtcField::Seconds, 0..=59)?;
    let minute = read_field(r.minutes, binary, RtcField::Minutes, 0..=59)?;
    let hour = if r.status_b & STATUS_B_24H != 0 {
        read_field(r.hours, binary, RtcField::Hours, 0..=23)?
    } else {
        // 12-hour clock: 12 AM is midnight, 12 PM is noon.
        let pm = r.hours & HOURS_PM != 0;
        let h12 = read_field(r.hours & !HOURS_PM, binary, RtcField::Hours, 1..=12)?;
        match (h12, pm) {
            (12, false) => 0,
            (12, true) => 12,
            (h, false) => h,
            (h, true) => h + 12,
        }
    };
    let day = read_field(r.day, binary, RtcField::Day, 1..=31)?;
    let month = read_field(r.month, binary, RtcField::Month, 1..=12)?;
    let yy = u16::from(read_field(r.year, binary, RtcField::Year, 0..=99)?);
    let year = match r.century {
        Some(raw) => u16::from(read_field(raw, binary, RtcField::Century, 0..=u8::MAX)?) * 100 + yy,
        // Without a century register, a two-digit year is placed in 1970..=2069.
        None if yy < 70 => 2000 + yy,
        None => 1900 + yy,
    };
    if year < UNIX_EPOCH_YEAR {
        return Err(RtcError::BeforeEpoch { year });
    }
    if day > days_in_month(year, month) {
        return Err(RtcError::NoSuchDay { year, month, day });
    }
    Ok(DateTime {
        year,
        month,
        day,
        hour,
        minute,
        second,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BCD_24H: u8 = STATUS_B_24H;
    const BIN_24H: u8 = STATUS_B_24H | STATUS_B_BINARY;
    const BCD_12H: u8 = 0;
    const BIN_12H: u8 = STATUS_B_BINARY;

    fn dt(year: u16, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> DateTime {
        DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
        }
    }

    /// 2026-11-21 20:42:04 in BCD, 24-hour, with a century register.
    fn regs() -> RtcRegisters {
        RtcRegisters {
            seconds: 0x04,
            minutes: 0x42,
            hours: 0x20,
            day: 0x21,
            month: 0x11,
            year: 0x26,
            century: Some(0x20),
            status_b: BCD_24H,
        }
    }

    #[test]
    fn known_unix_times() {
        // Reference values from an independent implementation (Python's calendar.timegm).
        let cases = [
            (dt(1970, 1, 1, 0, 0, 0), 0),
            (dt(1999, 12, 31, 23, 59, 59), 946_684_799),
            (dt(2000, 2, 29, 23, 59, 59), 951_868_799),
            (dt(2000, 3, 1, 0, 0, 0), 951_868_800),
            (dt(2038, 1, 19, 3, 14, 8), 2_147_483_648),
            (dt(2026, 11, 21, 20, 42, 4), 1_795_293_724),
            (dt(2100, 3, 1, 0, 0, 0), 4_107_542_400),
        ];
        for (date, unix) in cases {
            assert_eq!(date.to_unix(), unix, "{date}");
            assert_eq!(DateTime::from_unix(unix), date, "{unix}");
        }
    }

    #[test]
    fn display() {
        assert_eq!(
            dt(2026, 11, 21, 20, 42, 4).to_string(),
            "2026-11-21 20:42:04 UTC"
        );
        assert_eq!(
            dt(1970, 1, 1, 0, 0, 0).to_string(),
            "1970-01-01 00:00:00 UTC"
        );
    }

    #[test]
    fn round_trips() {
        // Every day over several leap cycles, at a varying time of day, and the seconds
        // around each midnight.
        let mut prev = None;
        let mut secs = 0u64;
        while secs < 5_000_000_000 {
            let date = DateTime::from_unix(secs);
            assert_eq!(date.to_unix(), secs);
            assert!(date.day >= 1 && date.day <= days_in_month(date.year, date.month));
            assert!(date.hour < 24 && date.minute < 60 && date.second < 60);
            if let Some(p) = prev {
                assert!(date > p, "{date} after {p}");
            }
            prev = Some(date);
            let before_midnight = (secs / SECS_PER_DAY + 1) * SECS_PER_DAY - 1;
            assert_eq!(
                DateTime::from_unix(before_midnight).to_unix(),
                before_midnight
            );
            assert_eq!(DateTime::from_unix(before_midnight + 1).hour, 0);
            secs += SECS_PER_DAY + 3_607;
        }
    }

    #[test]
    fn extremes() {
        assert_eq!(DateTime::from_unix(DateTime::MAX.to_unix()), DateTime::MAX);
        assert_eq!(DateTime::from_unix(u64::MAX), DateTime::MAX);
        assert_eq!(
            DateTime::from_unix(DateTime::MAX.to_unix() + 1),
            DateTime::MAX
        );
        assert_eq!(dt(1969, 12, 31, 23, 59, 59).to_unix(), 0);
        let y2400 = dt(2400, 2, 29, 12, 0, 0);
        assert_eq!(DateTime::from_unix(y2400.to_unix()), y2400);
    }

    #[test]
    fn calendar_helpers() {
        assert!(is_leap_year(2000));
        assert!(is_leap_year(2024));
        assert!(!is_leap_year(1900));
        assert!(!is_leap_year(2100));
        assert!(!is_leap_year(2026));
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2026, 4), 30);
        assert_eq!(days_in_month(2026, 12), 31);
        assert_eq!(days_in_month(2026, 0), 0);
        assert_eq!(days_in_month(2026, 13), 0);
    }

    #[test]
    fn decode_bcd_24h_with_century() {
        let date = decode(&regs()).unwrap();
        assert_eq!(date, dt(2026, 11, 21, 20, 42, 4));
        assert_eq!(date.to_unix(), 1_795_293_724);
    }

    /// The same instant in binary.
    fn binary_regs() -> RtcRegisters {
        RtcRegisters {
            seconds: 4,
            minutes: 42,
            hours: 20,
            day: 21,
            month: 11,
            year: 26,
            century: Some(20),
            status_b: BIN_24H,
        }
    }

    #[test]
    fn decode_binary_24h() {
        assert_eq!(decode(&binary_regs()), Ok(dt(2026, 11, 21, 20, 42, 4)));
    }

    #[test]
    fn decode_12h_clock() {
        let at = |hours, status_b: u8| {
            let base = if status_b & STATUS_B_BINARY != 0 {
                binary_regs()
            } else {
                regs()
            };
            decode(&RtcRegisters {
                hours,
                status_b,
                ..base
            })
            .map(|d| d.hour)
        };
        // BCD: 12 AM, 1 AM, 11 AM, 12 PM, 1 PM, 8 PM, 11 PM.
        assert_eq!(at(0x12, BCD_12H), Ok(0));
        assert_eq!(at(0x01, BCD_12H), Ok(1));
        assert_eq!(at(0x11, BCD_12H), Ok(11));
        assert_eq!(at(0x80 | 0x12, BCD_12H), Ok(12));
        assert_eq!(at(0x80 | 0x01, BCD_12H), Ok(13));
        assert_eq!(at(0x80 | 0x08, BCD_12H), Ok(20));
        assert_eq!(at(0x80 | 0x11, BCD_12H), Ok(23));
        // Binary.
        assert_eq!(at(12, BIN_12H), Ok(0));
        assert_eq!(at(0x80 | 12, BIN_12H), Ok(12));
        assert_eq!(at(0x80 | 11, BIN_12H), Ok(23));
        // Hour 0 and 13 do not exist on a 12-hour clock.
        assert_eq!(
            at(0x00, BCD_12H),
            Err(RtcError::OutOfRange {
                field: RtcField::Hours,
                value: 0
            })
        );
        assert_eq!(
            at(0x80 | 13, BIN_12H),
            Err(RtcError::OutOfRange {
                field: RtcField::Hours,
                value: 13
            })
        );
        // The PM bit means nothing in 24-hour mode: it makes the register invalid.
        assert_eq!(
            at(0x80 | 0x08, BCD_24H),
            Err(RtcError::OutOfRange {
                field: RtcField::Hours,
                value: 88
            })
        );
    }

    #[test]
    fn two_digit_year_without_century() {
        let year = |yy| {
            decode(&RtcRegisters {
                year: yy,
                century: None,
                ..regs()
            })
            .map(|d| d.year)
        };
        assert_eq!(year(0x00), Ok(2000));
        assert_eq!(year(0x26), Ok(2026));
        assert_eq!(year(0x69), Ok(2069));
        assert_eq!(year(0x70), Ok(1970));
        assert_eq!(year(0x99), Ok(1999));
    }

    #[test]
    fn century_register() {
        let r = RtcRegisters {
            century: Some(0x19),
            year: 0x99,
            ..regs()
        };
        assert_eq!(decode(&r).map(|d| d.year), Ok(1999));
        let r = RtcRegisters {
            century: Some(0x21),
            year: 0x05,
            ..regs()
        };
        assert_eq!(decode(&r).map(|d| d.year), Ok(2105));
        let r = RtcRegisters {
            century: Some(0x19),
            year: 0x69,
            ..regs()
        };
        assert_eq!(decode(&r), Err(RtcError::BeforeEpoch { year: 1969 }));
        let r = RtcRegisters {
            century: Some(0x00),
            ..regs()
        };
        assert_eq!(decode(&r), Err(RtcError::BeforeEpoch { year: 26 }));
        let r = RtcRegisters {
            century: Some(0x2a),
            ..regs()
        };
        assert_eq!(
            decode(&r),
            Err(RtcError::BadBcd {
                field: RtcField::Century,
                raw: 0x2a
            })
        );
    }

    /// Spoils one register of a good set.
    type Corrupt = fn(&mut RtcRegisters);

    #[test]
    fn bad_bcd_in_every_field() {
        let cases: [(Corrupt, RtcField, u8); 6] = [
            (|r| r.seconds = 0x5a, RtcField::Seconds, 0x5a),
            (|r| r.minutes = 0xa0, RtcField::Minutes, 0xa0),
            (|r| r.hours = 0x1f, RtcField::Hours, 0x1f),
            (|r| r.day = 0x0b, RtcField::Day, 0x0b),
            (|r| r.month = 0x0c, RtcField::Month, 0x0c),
            (|r| r.year = 0xff, RtcField::Year, 0xff),
        ];
        for (set, field, raw) in cases {
            let mut r = regs();
            set(&mut r);
            assert_eq!(decode(&r), Err(RtcError::BadBcd { field, raw }));
        }
    }

    #[test]
    fn out_of_range_in_every_field() {
        let cases: [(Corrupt, RtcField, u8); 8] = [
            (|r| r.seconds = 0x60, RtcField::Seconds, 60),
            (|r| r.minutes = 0x99, RtcField::Minutes, 99),
            (|r| r.hours = 0x24, RtcField::Hours, 24),
            (|r| r.day = 0x00, RtcField::Day, 0),
            (|r| r.day = 0x32, RtcField::Day, 32),
            (|r| r.month = 0x00, RtcField::Month, 0),
            (|r| r.month = 0x13, RtcField::Month, 13),
            (
                |r| {
                    r.status_b = BIN_24H;
                    r.seconds = 1;
                    r.minutes = 1;
                    r.hours = 1;
                    r.day = 1;
                    r.month = 1;
                    r.year = 100;
                },
                RtcField::Year,
                100,
            ),
        ];
        for (set, field, value) in cases {
            let mut r = regs();
            set(&mut r);
            assert_eq!(
                decode(&r),
                Err(RtcError::OutOfRange { field, value }),
                "{field}"
            );
        }
    }

    #[test]
    fn days_per_month_and_leap_years() {
        let date = |century, year, month, day| {
            decode(&RtcRegisters {
                century,
                year,
                month,
                day,
                ..regs()
            })
        };
        assert!(date(Some(0x20), 0x24, 0x02, 0x29).is_ok());
        assert!(date(Some(0x20), 0x00, 0x02, 0x29).is_ok());
        assert!(date(None, 0x00, 0x02, 0x29).is_ok());
        assert_eq!(
            date(Some(0x21), 0x00, 0x02, 0x29),
            Err(RtcError::NoSuchDay {
                year: 2100,
                month: 2,
                day: 29
            })
        );
        assert_eq!(
            date(Some(0x20), 0x26, 0x02, 0x29),
            Err(RtcError::NoSuchDay {
                year: 2026,
                month: 2,
                day: 29
            })
        );
        assert_eq!(
            date(Some(0x20), 0x26, 0x04, 0x31),
            Err(RtcError::NoSuchDay {
                year: 2026,
                month: 4,
                day: 31
            })
        );
        assert!(date(Some(0x20), 0x26, 0x12, 0x31).is_ok());
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            RtcError::BadBcd {
                field: RtcField::Minutes,
                raw: 0xa0
            }
            .to_string(),
            "RTC minutes register 0xa0 is not valid BCD"
        );
        assert_eq!(
            RtcError::OutOfRange {
                field: RtcField::Day,
                value: 32
            }
            .to_string(),
            "RTC day of month value 32 is out of range"
        );
        assert_eq!(
            RtcError::NoSuchDay {
                year: 2026,
                month: 2,
                day: 30
            }
            .to_string(),
            "RTC date 2026-02-30 does not exist"
        );
        assert_eq!(
            RtcError::BeforeEpoch { year: 1969 }.to_string(),
            "RTC year 1969 is before 1970"
        );
        let names: Vec<String> = [
            RtcField::Seconds,
            RtcField::Hours,
            RtcField::Month,
            RtcField::Year,
            RtcField::Century,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(names, ["seconds", "hours", "month", "year", "century"]);
    }
}
