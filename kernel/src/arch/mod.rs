//! The hardware layer. Every `unsafe` of the hypervisor lives under here, in small
//! modules named after the one thing they touch; the rest of the hypervisor is safe Rust.
pub mod x86_64;
