//! `pvrt`, the runtime of Ferrovisor's PV test kernels: the entry point, the Xen ELF
//! notes, hypercalls (direct `syscall` or through the hypercall page), console output and
//! the verdict protocol the QEMU tests read.
//!
//! A test kernel is one file in `src/bin/`:
//!
//! ```ignore
//! #![cfg_attr(target_os = "none", no_std, no_main)]
//!
//! use ferrovisor_abi::xen::xen::StartInfo;
//!
//! pvrt::test_kernel!(name: "hello", main: test_main);
//!
//! fn test_main(start_info: &StartInfo) -> Result<(), &'static str> {
//!     pvrt::println!("pv-test hello: nr_pages {}", start_info.nr_pages);
//!     pvrt::ensure!(start_info.nr_pages > 0, "no pages");
//!     Ok(())
//! }
//! ```
//!
//! `Ok` prints `pv-test <name>: PASS` and powers the domain off; `Err(reason)`,
//! [`fail!`], a failed [`ensure!`] or a panic print `pv-test <name>: FAIL: <reason>` and
//! crash it (`SHUTDOWN_crash`). Add `, hypercall_page` to `test_kernel!` for a kernel whose
//! notes ask for a hypercall page and which makes every hypercall through it.
//!
//! Built for `x86_64-unknown-none` the kernels are linked by `linker.ld`; on the host
//! the crate is a stub (hypercalls panic), so host builds, lints and the unit tests of
//! the hardware-free parts work.
#![cfg_attr(not(test), no_std)]

pub mod console;
pub mod contract;
pub mod control;
pub mod events;
pub mod frontend;
pub mod grant;
pub mod hypercall;
pub mod layout;
pub mod region;
pub mod shared_info;
pub mod smp;
pub mod sse;
#[cfg(target_os = "none")]
mod start;
pub mod time;
pub mod traps;
pub mod xenstore;

use core::{
    fmt,
    sync::atomic::{AtomicPtr, AtomicU64, Ordering},
};

/// The shared ABI crate, for the macros.
#[doc(hidden)]
pub use ferrovisor_abi as abi;
use ferrovisor_abi::xen::{
    sched::ShutdownReason,
    xen::{StartInfo, START_INFO_MAGIC_X86_64},
};
pub use hypercall::*;

/// A test kernel's verdict function: `Ok` passes; `Err` fails with that reason.
pub type TestMain = fn(&StartInfo) -> Result<(), &'static str>;

/// What [`test_kernel!`] tells the runtime about the kernel.
#[derive(Debug)]
pub struct TestKernel {
    /// The name in the verdict lines: `pv-test <name>: PASS`.
    pub name: &'static str,
    pub main: TestMain,
    /// The address of the kernel's hypercall page, when its notes ask for one.
    pub hypercall_page: Option<fn() -> u64>,
}

/// The running kernel, for the panic handler.
static KERNEL: AtomicPtr<TestKernel> = AtomicPtr::new(core::ptr::null_mut());
/// The TSC when the kernel's Rust code first ran (what the domain-creation benchmark
/// measures up to).
static ENTRY_TSC: AtomicU64 = AtomicU64::new(0);
/// The `rsp` the domain builder started the kernel with.
static BOOTSTRAP_RSP: AtomicU64 = AtomicU64::new(0);
/// The `rsi` the domain builder started the kernel with.
static START_INFO_VA: AtomicU64 = AtomicU64::new(0);

/// Declares the test kernel: `test_kernel!(name: "hello", main: test_main)`, optionally
/// followed by `, hypercall_page`. Defines `pvrt_main` (which `_start` calls) on the
/// bare-metal target and a `main` that says what this is on the host.
#[macro_export]
macro_rules! test_kernel {
    (name: $name:literal, main: $main:path $(,)?) => {
        $crate::test_kernel!(@define $name, $main, ::core::option::Option::None);
    };
    (name: $name:literal, main: $main:path, hypercall_page $(,)?) => {
        #[cfg(target_os = "none")]
        $crate::__pvrt_hypercall_page_asm!();

        #[cfg(target_os = "none")]
        fn __pvrt_hypercall_page() -> u64 {
            extern "C" {
                static hypercall_page: [u8; 4096];
            }
            (&raw const hypercall_page) as u64
        }

        $crate::test_kernel!(
            @define $name,
            $main,
            ::core::option::Option::Some(__pvrt_hypercall_page)
        );
    };
    (@define $name:literal, $main:path, $page:expr) => {
        #[cfg(target_os = "none")]
        #[no_mangle]
        extern "C" fn pvrt_main(start_info_va: u64, bootstrap_rsp: u64) -> ! {
            static KERNEL: $crate::TestKernel = $crate::TestKernel {
                name: $name,
                main: $main,
                hypercall_page: $page,
            };
            $crate::entry(&KERNEL, start_info_va, bootstrap_rsp)
        }

        #[cfg(not(target_os = "none"))]
        fn main() {
            let _: $crate::TestMain = $main;
            ::std::eprintln!(
                "{} is a bare-metal Xen-PV test kernel: build it for x86_64-unknown-none \
                 (`xtask::build::test_kernels`) and boot it as dom0",
                $name
            );
        }
    };
}

/// Fails the test now: prints `pv-test <name>: FAIL: <formatted reason>` and crashes the
/// domain.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {
        $crate::fail(::core::format_args!($($arg)*))
    };
}

/// `ensure!(cond, "reason {}", x)`: [`fail!`] unless `cond`.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::fail!($($arg)*);
        }
    };
}

/// `v` in decimal, written into `buf`.
pub fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    core::str::from_utf8(&buf[i..]).unwrap_or("?")
}

/// A decimal number's value (digits only, no overflow).
pub fn parse_decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() {
        return None;
    }
    b.iter().try_fold(0u64, |acc, &c| {
        c.is_ascii_digit()
            .then(|| acc.checked_mul(10)?.checked_add(u64::from(c - b'0')))
            .flatten()
    })
}

/// The TSC at the kernel's entry.
pub fn entry_tsc() -> u64 {
    ENTRY_TSC.load(Ordering::Relaxed)
}

/// Where the kernel starts, called by the `pvrt_main` that [`test_kernel!`] defines:
/// records the start-of-day state, selects the hypercall transport, runs the kernel's
/// main function and reports its verdict.
pub fn entry(kernel: &'static TestKernel, start_info_va: u64, bootstrap_rsp: u64) -> ! {
    ENTRY_TSC.store(time::rdtsc(), Ordering::Relaxed);
    KERNEL.store(core::ptr::from_ref(kernel).cast_mut(), Ordering::Relaxed);
    BOOTSTRAP_RSP.store(bootstrap_rsp, Ordering::Relaxed);
    START_INFO_VA.store(start_info_va, Ordering::Relaxed);

    if let Some(page) = kernel.hypercall_page {
        let page = page();
        match hypercall_page_bytes(page) {
            Some(bytes) if bytes.iter().all(|&b| b == 0xcc) => fail!(
                "the domain builder did not fill the hypercall page at {page:#x} (HYPERCALL_PAGE note)"
            ),
            // SAFETY: `page` is this kernel's hypercall page (its note names it) and the
            // builder filled it with stubs (it is no longer all int3).
            _ => unsafe { hypercall::use_hypercall_page(page) },
        }
    }

    let Some(start_info) = start_info(start_info_va) else {
        fail!("start_info address {start_info_va:#x} (rsi at entry) is not a kernel address");
    };
    match (kernel.main)(start_info) {
        Ok(()) => pass(),
        Err(reason) => fail!("{reason}"),
    }
}

/// The start_info page the builder passed in `rsi`, if `va` can be one: aligned, and at
/// or above `VIRT_BASE`, where the bootstrap region lives.
fn start_info(va: u64) -> Option<&'static StartInfo> {
    let plausible = va >= contract::VIRT_BASE && va % 8 == 0;
    if !plausible {
        return None;
    }
    // SAFETY: `xen.h` (start-of-day layout): `rsi` holds the virtual address of the
    // start_info page, mapped in the bootstrap region, which stays mapped for the kernel's
    // life (the runtime never remaps it) and which nothing writes after the start.
    Some(unsafe { &*(va as *const StartInfo) })
}

/// The kernel's hypercall page as bytes (the runtime reads it to see it was filled).
fn hypercall_page_bytes(page: u64) -> Option<&'static [u8; 4096]> {
    if page == 0 || page % 4096 != 0 {
        return None;
    }
    // SAFETY: `page` is the page-aligned hypercall page in this kernel's own text, mapped
    // with the image; the builder wrote it before the kernel started and nothing writes
    // it afterwards.
    Some(unsafe { &*(page as *const [u8; 4096]) })
}

/// The running kernel's name ("?" before [`entry`]).
pub fn name() -> &'static str {
    let kernel = KERNEL.load(Ordering::Relaxed);
    // SAFETY: only `entry` stores here, a `&'static TestKernel`.
    unsafe { kernel.as_ref() }.map_or("?", |k| k.name)
}

/// The `rsp` the kernel was started with (inside the bootstrap region).
pub fn bootstrap_rsp() -> u64 {
    BOOTSTRAP_RSP.load(Ordering::Relaxed)
}

/// The `rsi` the kernel was started with: `start_info`'s virtual address.
pub fn start_info_va() -> u64 {
    START_INFO_VA.load(Ordering::Relaxed)
}

/// `start_info.magic` up to its NUL, if it is text.
pub fn magic(start_info: &StartInfo) -> Option<&str> {
    c_str(&start_info.magic)
}

/// Whether the magic is the one a 64-bit PV guest gets: `xen-3.0-x86_64`.
pub fn magic_is_x86_64(start_info: &StartInfo) -> bool {
    start_info.magic.starts_with(START_INFO_MAGIC_X86_64)
}

/// `start_info.cmd_line` up to its NUL, if it is text.
pub fn cmdline(start_info: &StartInfo) -> Option<&str> {
    c_str(&start_info.cmd_line)
}

/// A NUL-terminated (or full) byte array as text.
pub fn c_str(bytes: &[u8]) -> Option<&str> {
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    core::str::from_utf8(&bytes[..len]).ok()
}

/// The test passed: prints the PASS line and powers the domain off.
pub fn pass() -> ! {
    println!("{} {}: PASS", contract::VERDICT_PREFIX, name());
    shutdown(ShutdownReason::Poweroff)
}

/// The test failed: prints the FAIL line with `reason` and crashes the domain.
pub fn fail(reason: fmt::Arguments<'_>) -> ! {
    println!("{} {}: FAIL: {reason}", contract::VERDICT_PREFIX, name());
    shutdown(ShutdownReason::Crash)
}

/// `SCHEDOP_shutdown(reason)`; should it return, says so once and yields forever (never a
/// silent busy loop).
pub fn shutdown(reason: ShutdownReason) -> ! {
    let ret = sched_shutdown(reason);
    println!(
        "{} {}: SCHEDOP_shutdown({reason:?}) returned {ret}; yielding forever",
        contract::VERDICT_PREFIX,
        name()
    );
    loop {
        let _ = sched_yield();
    }
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    static PANICKING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if PANICKING.swap(true, Ordering::Relaxed) {
        // Panicked while reporting a panic: just stop.
        shutdown(ShutdownReason::Crash);
    }
    match info.location() {
        Some(location) => fail!("panic at {location}: {}", info.message()),
        None => fail!("panic at an unknown location: {}", info.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_strings() {
        let mut magic = [0u8; 32];
        magic[..14].copy_from_slice(b"xen-3.0-x86_64");
        assert_eq!(c_str(&magic), Some("xen-3.0-x86_64"));
        assert_eq!(c_str(b"full"), Some("full"));
        assert_eq!(c_str(b"\xff\0"), None);
        assert_eq!(c_str(b"\0abc"), Some(""));
    }

    #[test]
    fn name_before_entry() {
        assert_eq!(name(), "?");
    }
}
