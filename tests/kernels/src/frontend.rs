//! The frontend's side of a split device the hypervisor serves (`io/xenbus.h`,
//! `io/ring.h`): paths in the store, waiting for the backend's `state`, and a shared
//! ring on one of the kernel's scratch pages that the kernel fills by hand (so that it
//! can also fill it wrongly).

use core::sync::atomic::{fence, AtomicU32, Ordering};

use ferrovisor_abi::xen::io::ring::{
    ring_size, REQ_EVENT, REQ_PROD, RING_ENTRIES_OFFSET, RSP_EVENT, RSP_PROD,
};

use crate::{
    region::{ScratchPage, PAGE_SIZE},
    time,
    xenstore::Store,
};

/// `XenbusState` values (`io/xenbus.h`).
pub mod state {
    pub const INITIALISING: u32 = 1;
    pub const INIT_WAIT: u32 = 2;
    pub const INITIALISED: u32 = 3;
    pub const CONNECTED: u32 = 4;
    pub const CLOSING: u32 = 5;
    pub const CLOSED: u32 = 6;
}

/// A store path built in place (up to 128 bytes; longer ones are cut, and then name no
/// node anyone wrote).
#[derive(Clone, Copy)]
pub struct Path {
    buf: [u8; 128],
    len: usize,
}

impl Path {
    pub fn new(s: &str) -> Path {
        let mut p = Path {
            buf: [0; 128],
            len: 0,
        };
        p.push(s);
        p
    }

    fn push(&mut self, s: &str) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
    }

    /// `self/node`.
    pub fn join(&self, node: &str) -> Path {
        let mut p = *self;
        p.push("/");
        p.push(node);
        p
    }

    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

/// Reads `path` as text into `buf`.
pub fn read_str<'a>(store: &mut Store, path: &Path, buf: &'a mut [u8]) -> Option<&'a str> {
    let n = store.read(path.as_str(), buf).ok()?;
    let text = core::str::from_utf8(&buf[..n]).ok()?;
    Some(text.trim_end_matches('\0'))
}

/// Reads `path` as a decimal number.
pub fn read_number(store: &mut Store, path: &Path) -> Option<u64> {
    let mut buf = [0u8; 24];
    let text = read_str(store, path, &mut buf)?;
    crate::parse_decimal(text.as_bytes())
}

/// `dir/state`, `None` while it cannot be read.
pub fn read_state(store: &mut Store, dir: &Path) -> Option<u32> {
    read_number(store, &dir.join("state")).map(|s| s as u32)
}

/// Writes `dir/state`.
pub fn write_state(store: &mut Store, dir: &Path, state: u32) -> Result<(), &'static str> {
    store
        .write_number(dir.join("state").as_str(), state.into())
        .map_err(|_| "cannot write the frontend's state")
}

/// Waits up to `ms` for `dir/state` to be `want`: the state it reached, or the last one
/// seen (0: none could be read) as the error.
pub fn wait_state(store: &mut Store, dir: &Path, want: u32, ms: u64) -> Result<(), u32> {
    let deadline = time::now() + ms * time::NS_PER_MS;
    let mut last = 0;
    loop {
        if let Some(s) = read_state(store, dir) {
            if s == want {
                return Ok(());
            }
            last = s;
        }
        if time::now() > deadline {
            return Err(last);
        }
        for _ in 0..20 {
            crate::sched_yield();
        }
    }
}

/// One shared ring on a scratch page, as the frontend sees it: it owns `req_prod` and
/// `rsp_event`, reads `rsp_prod`, and writes whatever it likes into the entries.
pub struct Ring {
    va: u64,
    bytes: u64,
    entry: usize,
    size: u32,
}

impl Ring {
    /// A ring of `entry`-byte entries over `page` (mapped writable, the kernel's alone
    /// besides the backend it is granted to), initialised empty (`SHARED_RING_INIT`).
    pub fn new(page: &ScratchPage, entry: usize) -> Ring {
        Ring::over(page.va, 1, entry)
    }

    /// A ring over `pages` scratch pages contiguous from `va` (a multi-page blkif ring,
    /// `ring-page-order`), initialised empty.
    pub fn over(va: u64, pages: u64, entry: usize) -> Ring {
        let bytes = pages * PAGE_SIZE;
        let ring = Ring {
            va,
            bytes,
            entry,
            size: ring_size(bytes as usize, entry),
        };
        ring.reset();
        ring
    }

    /// Empty again: every byte zero, both event indices 1.
    pub fn reset(&self) {
        for i in 0..self.bytes / 8 {
            // SAFETY: the ring's pages are scratch pages mapped writable for the kernel's
            // life; the backend is disconnected while a ring is reset.
            unsafe { (self.va as *mut u64).add(i as usize).write_volatile(0) };
        }
        self.index(REQ_EVENT).store(1, Ordering::SeqCst);
        self.index(RSP_EVENT).store(1, Ordering::SeqCst);
    }

    /// Entries in the ring.
    pub fn size(&self) -> u32 {
        self.size
    }

    fn index(&self, off: usize) -> &AtomicU32 {
        // SAFETY: the header's indices are aligned words of the mapped page, shared with
        // the backend, only ever accessed atomically here.
        unsafe { AtomicU32::from_ptr((self.va + off as u64) as *mut u32) }
    }

    /// Publishes `prod` as `req_prod` (the entries' bytes first).
    pub fn publish(&self, prod: u32) {
        fence(Ordering::SeqCst);
        self.index(REQ_PROD).store(prod, Ordering::SeqCst);
    }

    pub fn req_prod(&self) -> u32 {
        self.index(REQ_PROD).load(Ordering::SeqCst)
    }

    pub fn rsp_prod(&self) -> u32 {
        self.index(RSP_PROD).load(Ordering::SeqCst)
    }

    /// The address of the entry of index `i` (for code that rewrites it concurrently).
    pub fn entry_va(&self, i: u32) -> u64 {
        self.va + (RING_ENTRIES_OFFSET + (i & (self.size - 1)) as usize * self.entry) as u64
    }

    /// Writes `bytes` (at most one entry) at the start of entry `i`, the rest of the
    /// entry zeroed.
    pub fn write(&self, i: u32, bytes: &[u8]) {
        let at = self.entry_va(i) as *mut u8;
        for k in 0..self.entry {
            let b = bytes.get(k).copied().unwrap_or(0);
            // SAFETY: `k` is inside entry `i`, inside the mapped ring page.
            unsafe { at.add(k).write_volatile(b) };
        }
    }

    /// Reads the first `buf.len()` bytes (at most one entry) of entry `i`.
    pub fn read(&self, i: u32, buf: &mut [u8]) {
        fence(Ordering::SeqCst);
        let at = self.entry_va(i) as *const u8;
        for (k, b) in buf.iter_mut().take(self.entry).enumerate() {
            // SAFETY: as in `write`.
            *b = unsafe { at.add(k).read_volatile() };
        }
    }

    /// Waits up to `ms` for `rsp_prod` to reach `until` (in ring arithmetic); whether it
    /// did.
    pub fn wait_responses(&self, until: u32, ms: u64) -> bool {
        let deadline = time::now() + ms * time::NS_PER_MS;
        loop {
            let have = self.rsp_prod();
            if until.wrapping_sub(have) as i32 <= 0 {
                return true;
            }
            if time::now() > deadline {
                return false;
            }
            crate::sched_yield();
        }
    }
}

/// Fills a scratch page with `word(offset)` at every 8-byte offset.
pub fn fill_page(page: &ScratchPage, word: impl Fn(u64) -> u64) {
    for i in 0..PAGE_SIZE / 8 {
        // SAFETY: the scratch page is mapped writable for the kernel's life.
        unsafe { page.words().add(i as usize).write_volatile(word(i * 8)) };
    }
}

/// The first 8-byte offset of `page` where `word(offset)` is not what it holds.
pub fn check_page(page: &ScratchPage, word: impl Fn(u64) -> u64) -> Option<u64> {
    (0..PAGE_SIZE / 8).map(|i| i * 8).find(|&off| {
        // SAFETY: as in `fill_page`.
        let have = unsafe { page.words().add((off / 8) as usize).read_volatile() };
        have != word(off)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_and_cut() {
        let p = Path::new("/local/domain/0/device/vbd/51712");
        assert_eq!(
            p.join("ring-ref").as_str(),
            "/local/domain/0/device/vbd/51712/ring-ref"
        );
        let long = Path::new(&"x".repeat(200));
        assert_eq!(long.as_str().len(), 128);
    }
}
