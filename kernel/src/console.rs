//! The hypervisor console: COM1 and/or the VGA text screen (`console=`), with every byte
//! also kept in the log ring (what `fv dmesg` will read). Also the `log` backend, which
//! honours `loglvl=` and stamps each line with the time since boot.

use core::{
    fmt::{self, Write},
    sync::atomic::{AtomicBool, Ordering},
};

use ferrovisor::{cmdline::ConsoleSet, logring::LogRing};

use crate::{
    arch::x86_64::{irq::IrqMutex, serial::Serial, vga::Vga},
    clock,
};

pub const LOG_RING_SIZE: usize = 64 * 1024;

pub struct Console {
    serial: Option<Serial>,
    vga: Option<Vga>,
    ring: LogRing<LOG_RING_SIZE>,
}

impl Console {
    const fn new() -> Console {
        Console {
            serial: None,
            vga: None,
            ring: LogRing::new(),
        }
    }

    fn write_bytes(&mut self, bytes: &[u8]) {
        self.ring.push(bytes);
        if let Some(s) = &self.serial {
            s.write_bytes(bytes);
        }
        if let Some(v) = &mut self.vga {
            v.write_bytes(bytes);
        }
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

static CONSOLE: IrqMutex<Console> = IrqMutex::new(Console::new());
/// Set once the fatal path owns the console: all other output stops.
static TAKEN_OVER: AtomicBool = AtomicBool::new(false);
/// Set once `init` has opened the consoles `console=` asked for.
static READY: AtomicBool = AtomicBool::new(false);

/// Opens the consoles `console=` asks for.
pub fn init(set: ConsoleSet, baud: u32) {
    let mut c = CONSOLE.lock();
    if set.com1 {
        c.serial = Some(Serial::com1(baud));
    }
    if set.vga {
        c.vga = Some(Vga::text_console());
    }
    READY.store(true, Ordering::SeqCst);
}

/// Bytes received on the serial line since the last call, up to `out.len()`.
pub fn read_serial(out: &mut [u8]) -> usize {
    let c = CONSOLE.lock();
    let Some(serial) = &c.serial else {
        return 0;
    };
    let mut n = 0;
    while n < out.len() {
        match serial.try_read_byte() {
            Some(b) => {
                out[n] = b;
                n += 1;
            }
            None => break,
        }
    }
    n
}

/// Reads the hypervisor's log ring from byte `from` (a running offset): copies what fits
/// into `out` and returns (bytes copied, offset after them, bytes lost before them
/// because the ring overwrote them).
pub fn read_log(from: u64, out: &mut [u8]) -> (usize, u64, u64) {
    let c = CONSOLE.lock();
    let missed = c.ring.oldest().saturating_sub(from);
    let (n, next) = c.ring.read(from, out);
    (n, next, missed)
}

/// Writes guest console output as it is, with no prefix or line ending added (dom0's
/// console, where the administrator types).
pub fn write_raw(text: &str) {
    if TAKEN_OVER.load(Ordering::Relaxed) {
        return;
    }
    let mut c = CONSOLE.lock();
    let _ = c.write_str(text);
}

/// Writes one line as it is (guest console output: its own prefix, no time stamp).
pub fn write_line(line: &str) {
    if TAKEN_OVER.load(Ordering::Relaxed) {
        return;
    }
    let mut c = CONSOLE.lock();
    let _ = writeln!(c, "{line}");
}

/// The console for the fatal path: stops every other writer and writes even if the lock
/// is held (by this CPU, interrupted in the middle of a line, or by a wedged one).
pub struct FatalWriter {
    serial: Option<Serial>,
}

pub fn take_over() -> FatalWriter {
    TAKEN_OVER.store(true, Ordering::SeqCst);
    // Before `init` (a fault while parsing the boot information) COM1 is the only hope.
    let has_serial = match CONSOLE.try_lock() {
        Some(c) => c.serial.is_some() || !READY.load(Ordering::SeqCst),
        None => true,
    };
    // Every other writer has stopped; the UART is already programmed (or absent, in which
    // case the bytes go nowhere).
    let serial = has_serial.then(Serial::attach_com1);
    let mut w = FatalWriter { serial };
    let _ = w.write_str("\n");
    w
}

impl Write for FatalWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(s_) = &self.serial {
            s_.write_bytes(s.as_bytes());
        }
        if let Some(mut c) = CONSOLE.try_lock() {
            c.ring.push(s.as_bytes());
            if let Some(v) = &mut c.vga {
                v.write_bytes(s.as_bytes());
            }
        }
        Ok(())
    }
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) || TAKEN_OVER.load(Ordering::Relaxed) {
            return;
        }
        let ns = clock::now_ns();
        let prefix = match record.level() {
            log::Level::Error => "error: ",
            log::Level::Warn => "warning: ",
            log::Level::Info => "",
            log::Level::Debug => "debug: ",
            log::Level::Trace => "trace: ",
        };
        let mut c = CONSOLE.lock();
        let _ = writeln!(
            c,
            "[{:5}.{:06}] {}{}",
            ns / 1_000_000_000,
            (ns / 1000) % 1_000_000,
            prefix,
            record.args()
        );
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Installs the `log` backend at `level`.
pub fn init_log(level: log::LevelFilter) {
    // Only fails if called twice, which the boot sequence does not do.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
