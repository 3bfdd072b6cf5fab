//! `fvbench`: the measuring program of `cargo xtask bench`'s device figures, a static
//! binary (x86_64-unknown-linux-musl) in every guest's initramfs, so that the native,
//! Ferrovisor and Xen columns are measured by the same code with the guest's own clock.
//!
//! - `fvbench sink PORT`: serves TCP on PORT for ever; for each connection it reads to
//!   EOF, then answers with the byte count (8 bytes, little-endian) and closes.
//! - `fvbench send HOST PORT MIB`: sends MIB MiB to a sink and waits for its count: the
//!   time covers every byte arriving (plus one round trip), not just the local buffers.
//! - `fvbench read DEV MIB`, `fvbench write DEV MIB`: sequential `O_DIRECT` I/O in 1 MiB
//!   blocks from the start of DEV (the write ends with `fsync`), so the guest's page
//!   cache is not what is measured.
//! - `fvbench randread DEV SECS`: 4 KiB `O_DIRECT` reads at random 4 KiB-aligned offsets
//!   of DEV for SECS seconds, one at a time (queue depth 1).
//!
//! Each prints one line `fvbench: <figure> <value> <unit>` (MB = 10^6 bytes), or
//! `fvbench: error: <why>` and exits with 1.

use std::{
    alloc::{alloc_zeroed, Layout},
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    net::{Shutdown, TcpListener, TcpStream},
    process::ExitCode,
    time::{Duration, Instant},
};

const MIB: usize = 1 << 20;
/// The block of the sequential figures and of one TCP write.
const SEQ_BLOCK: usize = MIB;
const RAND_BLOCK: usize = 4096;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["sink", port] => number(port).and_then(sink),
        ["send", host, port, mib] => {
            number(port).and_then(|p| number(mib).and_then(|m| send(host, p, m)))
        }
        ["read", dev, mib] => number(mib).and_then(|m| sequential(dev, m, false)),
        ["write", dev, mib] => number(mib).and_then(|m| sequential(dev, m, true)),
        ["randread", dev, secs] => number(secs).and_then(|s| randread(dev, s)),
        _ => Err(
            "usage: fvbench sink PORT | send HOST PORT MIB | read DEV MIB | \
                  write DEV MIB | randread DEV SECS"
                .to_owned(),
        ),
    };
    match result {
        Ok(line) => {
            println!("fvbench: {line}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("fvbench: error: {why}");
            ExitCode::FAILURE
        }
    }
}

fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("not a number: {s:?}"))
}

fn mb_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64().max(1e-9)
}

fn sink(port: u16) -> Result<String, String> {
    let listener =
        TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind port {port}: {e}"))?;
    let mut buf = vec![0u8; SEQ_BLOCK];
    loop {
        let Ok((mut conn, _)) = listener.accept() else {
            continue;
        };
        let mut total: u64 = 0;
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        // A sender that went away gets nothing; the sink serves the next one.
        let _ = conn.write_all(&total.to_le_bytes());
    }
}

fn send(host: &str, port: u16, mib: usize) -> Result<String, String> {
    let mut conn =
        TcpStream::connect((host, port)).map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let block: Vec<u8> = (0..SEQ_BLOCK).map(|i| (i * 7 + 3) as u8).collect();
    let start = Instant::now();
    for _ in 0..mib {
        conn.write_all(&block).map_err(|e| format!("send: {e}"))?;
    }
    conn.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut count = [0u8; 8];
    conn.read_exact(&mut count)
        .map_err(|e| format!("the sink's count: {e}"))?;
    let took = start.elapsed();
    let got = u64::from_le_bytes(count);
    let sent = (mib * MIB) as u64;
    if got != sent {
        return Err(format!("the sink received {got} of {sent} bytes"));
    }
    Ok(format!(
        "tcp {:.2} MB/s ({mib} MiB in {:.3} s)",
        mb_per_s(mib * MIB, took),
        took.as_secs_f64()
    ))
}

/// A zeroed buffer aligned for `O_DIRECT` (the logical block size; 4 KiB covers it).
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Result<Self, String> {
        let layout = Layout::from_size_align(len, 4096).map_err(|e| e.to_string())?;
        // SAFETY: `layout` has a non-zero size (every caller passes a block size).
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err("out of memory".to_owned());
        }
        Ok(Aligned { ptr, len })
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live allocation of `len` bytes owned by `self` (leaked at
        // exit: the program ends after one figure), and `&mut self` makes this the only
        // view of it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

fn open_direct(dev: &str, write: bool) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .map_err(|e| format!("open {dev} with O_DIRECT: {e}"))
}

fn sequential(dev: &str, mib: usize, write: bool) -> Result<String, String> {
    let mut file = open_direct(dev, write)?;
    let size = file.seek(SeekFrom::End(0)).map_err(|e| e.to_string())? as usize;
    if size < mib * MIB {
        return Err(format!("{dev} has {size} bytes, fewer than {mib} MiB"));
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut buf = Aligned::new(SEQ_BLOCK)?;
    for (i, b) in buf.bytes().iter_mut().enumerate() {
        *b = (i * 13 + 5) as u8;
    }
    let start = Instant::now();
    for _ in 0..mib {
        let r = if write {
            file.write_all(buf.bytes())
        } else {
            file.read_exact(buf.bytes())
        };
        r.map_err(|e| format!("{dev}: {e}"))?;
    }
    if write {
        file.sync_all().map_err(|e| format!("fsync {dev}: {e}"))?;
    }
    let took = start.elapsed();
    Ok(format!(
        "{} {:.2} MB/s ({mib} MiB in {:.3} s)",
        if write { "seqwrite" } else { "seqread" },
        mb_per_s(mib * MIB, took),
        took.as_secs_f64()
    ))
}

fn randread(dev: &str, secs: u64) -> Result<String, String> {
    let mut file = open_direct(dev, false)?;
    let blocks = file.seek(SeekFrom::End(0)).map_err(|e| e.to_string())? / RAND_BLOCK as u64;
    if blocks == 0 {
        return Err(format!("{dev} is smaller than 4 KiB"));
    }
    let mut buf = Aligned::new(RAND_BLOCK)?;
    // xorshift64: offsets that no read-ahead predicts, the same on every platform.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let budget = Duration::from_secs(secs);
    let start = Instant::now();
    let mut reads: u64 = 0;
    while start.elapsed() < budget {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = (x % blocks) * RAND_BLOCK as u64;
        file.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
        file.read_exact(buf.bytes())
            .map_err(|e| format!("{dev} at {at}: {e}"))?;
        reads += 1;
    }
    let took = start.elapsed();
    Ok(format!(
        "randread {:.1} IOPS ({reads} reads of 4 KiB in {:.3} s)",
        reads as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    ))
}
