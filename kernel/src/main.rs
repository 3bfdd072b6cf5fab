//! The Ferrovisor hypervisor image. GRUB loads it through multiboot2; `boot/` brings the
//! CPU to long mode and calls [`start::kernel_entry`], which brings up the machine.
//!
//! Hardware-free logic lives in the `ferrovisor` library (host-tested); this binary holds
//! the hardware layer (`arch`, the only place with `unsafe`) and the safe code that drives
//! it. Built for `x86_64-unknown-none` (`cargo xtask build`); for any other target it is
//! just a stub that says so, so that workspace-wide host builds and lints work.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod backend;
#[cfg(target_os = "none")]
mod clock;
#[cfg(target_os = "none")]
mod console;
#[cfg(target_os = "none")]
mod dom0;
#[cfg(target_os = "none")]
mod domain;
#[cfg(target_os = "none")]
mod drivers;
#[cfg(target_os = "none")]
mod fatal;
#[cfg(target_os = "none")]
mod guest;
#[cfg(target_os = "none")]
mod guest_log;
#[cfg(target_os = "none")]
mod hypercall;
#[cfg(target_os = "none")]
mod interrupts;
#[cfg(target_os = "none")]
#[cfg(target_os = "none")]
mod sched;
#[cfg(target_os = "none")]
mod selftest;
#[cfg(target_os = "none")]
mod start;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "ferrovisor is a bare-metal image: build it with `cargo xtask build` \
         (target x86_64-unknown-none) and boot it with `cargo xtask run`"
    );
    std::process::exit(2);
}
