//! The VGA text screen (80x25 at physical 0xb8000), written through the direct map.

use ferrovisor::mm::layout::phys_to_virt;

const COLS: usize = 80;
const ROWS: usize = 25;
const ATTR: u16 = 0x07 << 8; // light grey on black

pub struct Vga {
    col: usize,
    row: usize,
}

impl Vga {
    /// # Safety
    /// The hypervisor owns the VGA text buffer, and physical 0xb8000 is direct-mapped.
    pub unsafe fn init() -> Vga {
        let mut v = Vga { col: 0, row: 0 };
        for r in 0..ROWS {
            v.clear_row(r);
        }
        v
    }

    /// The text screen, cleared. Only the console opens it (once, at `console=vga`), and
    /// the low 1 MiB that holds it is in the early and the final direct map (`memory`).
    pub fn text_console() -> Vga {
        // SAFETY: as above.
        unsafe { Vga::init() }
    }

    fn cell(&self, row: usize, col: usize) -> *mut u16 {
        (phys_to_virt(0xb8000) as *mut u16).wrapping_add(row * COLS + col)
    }

    fn put(&mut self, row: usize, col: usize, value: u16) {
        debug_assert!(row < ROWS && col < COLS);
        // SAFETY: inside the 80x25 text buffer, which `init`'s caller gave us.
        unsafe { self.cell(row, col).write_volatile(value) }
    }

    fn get(&self, row: usize, col: usize) -> u16 {
        // SAFETY: as in `put`.
        unsafe { self.cell(row, col).read_volatile() }
    }

    fn clear_row(&mut self, row: usize) {
        for c in 0..COLS {
            self.put(row, c, ATTR | b' ' as u16);
        }
    }

    fn newline(&mut self) {
        self.col = 0;
        if self.row + 1 < ROWS {
            self.row += 1;
            return;
        }
        for r in 1..ROWS {
            for c in 0..COLS {
                let v = self.get(r, c);
                self.put(r - 1, c, v);
            }
        }
        self.clear_row(ROWS - 1);
    }

    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                b'\n' => self.newline(),
                b'\r' => self.col = 0,
                _ => {
                    if self.col == COLS {
                        self.newline();
                    }
                    let ch = if b.is_ascii_graphic() || b == b' ' {
                        b
                    } else {
                        b'?'
                    };
                    self.put(self.row, self.col, ATTR | ch as u16);
                    self.col += 1;
                }
            }
        }
    }
}
