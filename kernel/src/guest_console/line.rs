//! Mirroring a domain's console output to the hypervisor's serial log, one whole line at
//! a time, each prefixed with `(d<id>) ` so that interleaved domains stay readable.
//!
//! What reaches the administrator's terminal is made safe here: the guest's bytes are
//! untrusted, and a raw ESC, CSI or carriage return could move the cursor, rewrite what
//! is on screen (including another domain's prefix) or reprogram the terminal. So every
//! control character except tab is shown as `\xNN`; printable UTF-8 passes through, and
//! bytes that are not valid UTF-8 are escaped the same way. A backslash is left alone:
//! the mirror is for reading, and the exact bytes are in the domain's history.

use alloc::{string::String, vec::Vec};
use core::fmt::Write;

use ferrovisor_abi::xen::DomId;

/// Raw bytes of guest output per mirrored line; a longer line is cut into several, each
/// with the prefix (nothing is lost).
pub const LINE_LIMIT: usize = 256;

/// Assembles one domain's output into lines for the serial log.
pub struct LineMirror {
    domid: DomId,
    limit: usize,
    /// The raw bytes of the line so far, without the held carriage return.
    line: Vec<u8>,
    /// A `\r` seen last: dropped if a `\n` follows (the `\r\n` a guest's tty emits),
    /// otherwise it belongs to the line (and is shown escaped).
    held_cr: bool,
    /// The escaped line handed to the caller, reused across lines.
    text: String,
}

impl LineMirror {
    /// A mirror for domain `domid` cutting lines at [`LINE_LIMIT`] bytes.
    pub fn new(domid: DomId) -> Self {
        Self::with_limit(domid, LINE_LIMIT)
    }

    /// A mirror cutting lines at `limit` raw bytes (at least 1).
    pub fn with_limit(domid: DomId, limit: usize) -> Self {
        LineMirror {
            domid,
            limit: limit.max(1),
            line: Vec::new(),
            held_cr: false,
            text: String::new(),
        }
    }

    /// Whether part of a line is waiting for its end.
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.held_cr
    }

    /// Takes more of the domain's output; `emit` gets each completed line, prefixed and
    /// escaped, without a line terminator (the caller's log adds its own).
    pub fn feed(&mut self, bytes: &[u8], emit: &mut impl FnMut(&str)) {
        for &b in bytes {
            if core::mem::take(&mut self.held_cr) {
                if b == b'\n' {
                    self.emit(emit);
                    continue;
                }
                self.push(b'\r', emit);
            }
            match b {
                b'\n' => self.emit(emit),
                b'\r' => self.held_cr = true,
                _ => self.push(b, emit),
            }
        }
    }

    /// Emits the partial line, if any, as if it had ended: for a prompt that never gets
    /// a newline, or a domain going away. A held `\r` is shown.
    pub fn flush(&mut self, emit: &mut impl FnMut(&str)) {
        if core::mem::take(&mut self.held_cr) {
            self.line.push(b'\r');
        }
        if !self.line.is_empty() {
            self.emit(emit);
        }
    }

    fn push(&mut self, b: u8, emit: &mut impl FnMut(&str)) {
        self.line.push(b);
        if self.line.len() >= self.limit {
            self.emit(emit);
        }
    }

    fn emit(&mut self, emit: &mut impl FnMut(&str)) {
        self.text.clear();
        // Writing to a String cannot fail.
        let _ = write!(self.text, "(d{}) ", self.domid);
        escape_into(&self.line, &mut self.text);
        self.line.clear();
        emit(&self.text);
    }
}

/// Appends `raw` to `out` with every control character other than tab, and every byte
/// that is not part of valid UTF-8, written as `\xNN` (one per byte).
pub fn escape_into(raw: &[u8], out: &mut String) {
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\t' || !c.is_control() {
                out.push(c);
            } else {
                let mut utf8 = [0u8; 4];
                for &b in c.encode_utf8(&mut utf8).as_bytes() {
                    escape_byte(b, out);
                }
            }
        }
        for &b in chunk.invalid() {
            escape_byte(b, out);
        }
    }
}

fn escape_byte(b: u8, out: &mut String) {
    // Writing to a String cannot fail.
    let _ = write!(out, "\\x{b:02x}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(m: &mut LineMirror, bytes: &[u8]) -> Vec<String> {
        let mut got = Vec::new();
        m.feed(bytes, &mut |l: &str| got.push(l.into()));
        got
    }

    #[test]
    fn whole_lines_get_the_domain_prefix() {
        let mut m = LineMirror::new(3);
        assert_eq!(lines(&mut m, b"hello\nwor"), ["(d3) hello"]);
        assert!(m.has_partial());
        assert_eq!(lines(&mut m, b"ld\n\n"), ["(d3) world", "(d3) "]);
        assert!(!m.has_partial());
    }

    #[test]
    fn cr_before_lf_is_dropped_even_across_feeds() {
        let mut m = LineMirror::new(1);
        assert_eq!(lines(&mut m, b"login: root\r\n"), ["(d1) login: root"]);
        assert!(lines(&mut m, b"a\r").is_empty());
        assert_eq!(lines(&mut m, b"\n"), ["(d1) a"]);
    }

    #[test]
    fn a_lone_cr_is_shown_escaped() {
        // Otherwise a guest could return to column 0 and overwrite its own prefix.
        let mut m = LineMirror::new(1);
        assert_eq!(
            lines(&mut m, b"50%\r(d0) fake\r\r\n"),
            ["(d1) 50%\\x0d(d0) fake\\x0d"]
        );
    }

    #[test]
    fn long_lines_are_cut_at_the_limit() {
        let mut m = LineMirror::with_limit(2, 4);
        assert_eq!(
            lines(&mut m, b"abcdefghij\n"),
            ["(d2) abcd", "(d2) efgh", "(d2) ij"]
        );
        // A line of exactly the limit is emitted when full; its newline ends an empty one.
        assert_eq!(lines(&mut m, b"wxyz"), ["(d2) wxyz"]);
        assert_eq!(lines(&mut m, b"\n"), ["(d2) "]);
    }

    #[test]
    fn default_limit_cuts_a_flood_without_newlines() {
        let mut m = LineMirror::new(7);
        let got = lines(&mut m, &[b'x'; LINE_LIMIT * 3 + 1]);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|l| l.len() == "(d7) ".len() + LINE_LIMIT));
        assert!(m.has_partial());
    }

    #[test]
    fn control_bytes_are_escaped_tab_is_kept() {
        let mut m = LineMirror::new(1);
        assert_eq!(
            lines(&mut m, b"\x1b[2J\x07a\tb\x7f\x00\n"),
            ["(d1) \\x1b[2J\\x07a\tb\\x7f\\x00"]
        );
    }

    #[test]
    fn utf8_passes_but_c1_controls_and_invalid_bytes_are_escaped() {
        let mut m = LineMirror::new(1);
        // U+25CF (systemd's bullet) passes; U+009B (CSI as UTF-8) and a bare 0x9b do not.
        assert_eq!(
            lines(&mut m, "\u{25cf} ok \u{9b}31m".as_bytes()),
            Vec::<String>::new()
        );
        assert_eq!(
            lines(&mut m, b"\x9b\xff\n"),
            ["(d1) \u{25cf} ok \\xc2\\x9b31m\\x9b\\xff"]
        );
    }

    #[test]
    fn flush_emits_a_partial_line() {
        let mut m = LineMirror::new(4);
        let mut got = Vec::new();
        m.flush(&mut |l: &str| got.push(String::from(l)));
        assert!(got.is_empty());
        m.feed(b"login: ", &mut |l: &str| got.push(l.into()));
        m.flush(&mut |l: &str| got.push(l.into()));
        assert_eq!(got, ["(d4) login: "]);
        assert!(!m.has_partial());
        m.feed(b"x\r", &mut |l: &str| got.push(l.into()));
        m.flush(&mut |l: &str| got.push(l.into()));
        assert_eq!(got[1], "(d4) x\\x0d");
    }
}
