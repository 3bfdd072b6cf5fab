//! Ferrovisor's hardware-free logic: everything here builds for the host too and is unit
//! tested with `cargo test -p ferrovisor`. The hypervisor binary (`main.rs` and `arch/`)
//! drives the hardware and calls into these modules.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod acpi;
pub mod cmdline;
pub mod domain_builder;
pub mod domain_control;
pub mod evtchn;
pub mod grant_table;
pub mod guest_console;
pub mod guest_image;
pub mod io_ring;
pub mod logring;
pub mod mm;
pub mod multiboot2;
pub mod net;
pub mod pci;
pub mod pv;
pub mod ratelimit;
pub mod storage;
pub mod time;
pub mod vbd;
pub mod vif;
pub mod virtio;
pub mod xenbus;
pub mod xenstore;
