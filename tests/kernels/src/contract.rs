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

/// The `hostile` test's disk (`tests/tests/hostile.rs` makes it, the `hostile` kernel
/// checks what it reads against it): an MBR with partition 1 at [`HOSTILE_P1_START`] of
/// [`HOSTILE_P1_SECTORS`] (dom0's xvda, `dom0_disk=vda1`) and partition 2 right after it,
/// every 8-byte word of the image [`hostile_disk_word`] of its byte offset.
pub const HOSTILE_DISK_SECTORS: u64 = 32768;
pub const HOSTILE_P1_START: u64 = 2048;
pub const HOSTILE_P1_SECTORS: u64 = 8192;
pub const HOSTILE_P2_START: u64 = HOSTILE_P1_START + HOSTILE_P1_SECTORS;
pub const HOSTILE_P2_SECTORS: u64 = 8192;
/// Partition-relative sectors the kernel writes legitimately (one 4 KiB page each): a
/// first write read back before the attacks, the page the request-rewriting race writes
/// (the partition's last), and the write read back after the last reconnect.
pub const HOSTILE_FIRST_WRITE: u64 = 64;
pub const HOSTILE_RACE_WRITE: u64 = HOSTILE_P1_SECTORS - 8;
pub const HOSTILE_FINAL_WRITE: u64 = 128;

/// The image's 8-byte word at byte `offset` (a multiple of 8).
pub const fn hostile_disk_word(offset: u64) -> u64 {
    (offset ^ 0x5eed_0000_0000_0000).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The word the kernel writes at byte `offset` of a legitimately written page `tag`
/// (1: the first write, 2: the race, 3: the final write).
pub const fn hostile_write_word(tag: u64, offset: u64) -> u64 {
    (tag << 56) | (0x00ab_cdef << 24) | (offset & 0xff_ffff)
}
