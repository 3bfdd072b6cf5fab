//! Networking logic of the virtual switch: Ethernet and IP header parsing, the learning
//! bridge, checksum completion and software segmentation. Pure functions over byte
//! slices; the vif backend (`crate::vif`) and the binary's NIC glue feed it frames.

pub mod bridge;
pub mod checksum;
pub mod ethernet;
