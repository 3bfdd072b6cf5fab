//! Xen-PV guest support that needs no hardware (host-tested): one module per concern.

pub mod bounce;
pub mod cpuid;
pub mod emulate;
pub mod msr;
pub mod time;
pub mod version;
