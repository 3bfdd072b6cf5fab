//! What the test kernels and the QEMU tests that boot them agree on. Plain constants, no
//! dependencies: `tests/tests/pv_kernels.rs` includes this file with `#[path]`, so both
//! sides read one definition.
//!
//! The verdict protocol: a kernel prints `pv-test <name>: PASS` and shuts down with
//! `SHUTDOWN_poweroff`, or prints `pv-test <name>: FAIL: <reason>` (a Rust panic's reason is
//! `panic at <location>: <message>`) and shuts down with `SHUTDOWN_crash`. The hypervisor
//! prefixes each line dom0 writes with `(d0) `.

/// What every verdict line (and every other line the runtime prints) starts with.
pub const VERDICT_PREFIX: &str = "pv-test";

/// The dom0 command line the `hello` test passes and the `hello` kernel expects.
pub const HELLO_CMDLINE: &str = "pv-test=hello console=hvc0 nousb x=1";

/// The kernel's `VIRT_BASE` note: where pseudo-physical 0 is mapped (the bootstrap
/// region's start), as in Linux's x86-64 PV kernels.
pub const VIRT_BASE: u64 = 0xffff_ffff_8000_0000;

/// Where `linker.ld` links the kernel: `VIRT_BASE` + its load address 0x200000.
pub const IMAGE_START: u64 = VIRT_BASE + 0x20_0000;

/// The `guest` kernel's command line that makes it flood its console: it writes
/// [`FLOOD_LINES`] lines through `console_io` as fast as it can, then passes.
pub const FLOOD_CMDLINE: &str = "flood";
/// How many lines the flooding guest writes.
pub const FLOOD_LINES: u32 = 5000;
/// Ferrovisor's limit on a domU's lines in its log (`ferrovisor::ratelimit::GUEST_LOG`):
/// a burst, then a steady rate per second.
pub const GUEST_LOG_BURST: u32 = 20;
pub const GUEST_LOG_PER_SEC: u32 = 2;
