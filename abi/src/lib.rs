//! The guest ABI (Xen's public x86-64 PV interface) and Ferrovisor's own control interface,
//! defined once and shared by the hypervisor, `fv` and the test kernels.
//!
//! Everything here is a fact carried over from Xen's public headers (`/usr/include/xen`,
//! Debian package `libxen-dev`): numbers, layouts and protocol states. Layouts carry
//! compile-time size, alignment and offset checks.
//!
//! Re-checking those numbers against the headers: generate a C program that includes the
//! headers (`#include <xen/xen.h>`, `<xen/vcpu.h>`, ...; compiled for x86-64 with
//! `gcc -D__XEN_INTERFACE_VERSION__=0x00040e00`, the latest interface of the 4.17 headers)
//! and prints `sizeof`, `_Alignof` and, for every field listed in an `assert_layout!` here,
//! `offsetof` and the field's size; print the same from Rust (`size_of`, `align_of`,
//! `offset_of!`, `size_of_val`) and diff the two. Fields named `_cpad*` are padding C leaves
//! implicit, and `E820Entry` is the packed BIOS record (no header defines it). Do the same
//! for the numeric `#define`s against the constants and enums.
#![no_std]
#![forbid(unsafe_code)]

// `xen` first: its layout and number macros serve the modules after it.
#[macro_use]
pub mod xen;
pub mod domctl;
pub mod errno;
pub mod layout;
pub mod version;
