//! The guest ABI (Xen's public x86-64 PV interface) and Ferrovisor's own control interface,
//! defined once and shared by the hypervisor, `fv` and the test kernels.
//!
//! Everything here is a fact carried over from Xen's public headers (`/usr/include/xen`,
//! Debian package `libxen-dev`): numbers, layouts and protocol states. Layouts carry
//! compile-time size and offset checks.
#![no_std]
#![forbid(unsafe_code)]

pub mod errno;
pub mod layout;
pub mod version;
