//! Xen-PV guest support that needs no hardware (host-tested): one module per concern.

pub mod bounce;
pub mod cpuid;
pub mod descriptor;
pub mod emulate;
pub mod insn;
pub mod msr;
pub mod ptwr;
pub mod time;
pub mod version;
