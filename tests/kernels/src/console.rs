//! Console output through `console_io(CONSOLEIO_write)`. Output is gathered per line so
//! that each hypercall carries one whole line (the hypervisor prefixes each line with the
//! domain, `(d0) `); a line longer than the buffer goes out in pieces.

use core::fmt;

/// Bytes gathered before a write is forced.
const LINE_BUFFER: usize = 160;

/// A `fmt::Write` that hands complete lines (and full buffers) to `sink`.
pub struct LineWriter<F: FnMut(&[u8])> {
    buf: [u8; LINE_BUFFER],
    len: usize,
    sink: F,
}

impl<F: FnMut(&[u8])> LineWriter<F> {
    pub const fn new(sink: F) -> Self {
        LineWriter {
            buf: [0; LINE_BUFFER],
            len: 0,
            sink,
        }
    }

    /// Hands over what is buffered.
    pub fn flush(&mut self) {
        if self.len > 0 {
            (self.sink)(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl<F: FnMut(&[u8])> fmt::Write for LineWriter<F> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            self.buf[self.len] = b;
            self.len += 1;
            if b == b'\n' || self.len == LINE_BUFFER {
                self.flush();
            }
        }
        Ok(())
    }
}

impl<F: FnMut(&[u8])> Drop for LineWriter<F> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Writes formatted text to the hypervisor console. A failing `console_io` is ignored:
/// there is nowhere else to report it.
pub fn print(args: fmt::Arguments<'_>) {
    let mut out = LineWriter::new(|bytes: &[u8]| {
        let _ = crate::hypercall::console_write(bytes);
    });
    let _ = fmt::Write::write_fmt(&mut out, args);
}

/// `print!` to the hypervisor console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::print(::core::format_args!($($arg)*))
    };
}

/// `println!` to the hypervisor console: one `console_io` per line.
#[macro_export]
macro_rules! println {
    () => {
        $crate::console::print(::core::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::console::print(::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use std::{string::String, vec::Vec};

    use super::*;

    fn chunks(write: impl FnOnce(&mut dyn fmt::Write)) -> Vec<String> {
        let mut out = Vec::new();
        {
            let mut w = LineWriter::new(|b: &[u8]| out.push(String::from_utf8_lossy(b).into()));
            write(&mut w);
        }
        out
    }

    #[test]
    fn one_write_per_line() {
        let out = chunks(|w| {
            let name = "hello";
            let _ = write!(w, "pv-test {name}: ");
            let _ = write!(w, "PASS\nsecond\n");
        });
        assert_eq!(out, ["pv-test hello: PASS\n", "second\n"]);
    }

    #[test]
    fn long_lines_and_tails_are_flushed() {
        let long = "x".repeat(LINE_BUFFER + 5);
        let out = chunks(|w| {
            let _ = write!(w, "{long}\ntail");
        });
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].len(), LINE_BUFFER);
        assert_eq!(out[1], "xxxxx\n");
        assert_eq!(out[2], "tail");
    }
}
