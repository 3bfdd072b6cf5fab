//! Networking logic of the virtual switch: Ethernet and IP header parsing, the learning
//! bridge, checksum completion and software segmentation. Pure functions over byte
//! slices; the vif backend (`crate::vif`) and the binary's NIC glue feed it frames.

pub mod bridge;
pub mod checksum;
pub mod ethernet;
pub mod gso;

use alloc::vec::Vec;

pub use checksum::ChecksumState;

/// The TCP segmentation a large packet asks for (from a netif GSO extra).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoKind {
    TcpV4,
    TcpV6,
}

/// Segmentation offload: the packet is one large TCP segment to be cut into `mss`-byte
/// segments by whoever cannot pass it on whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gso {
    pub kind: GsoKind,
    /// Maximum segment size (TCP payload bytes per segment); never 0.
    pub mss: u16,
}

/// A frame travelling through the switch, with what is known of its checksum and its
/// segmentation offload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The Ethernet frame (no FCS).
    pub data: Vec<u8>,
    pub checksum: ChecksumState,
    pub gso: Option<Gso>,
}

impl Packet {
    /// A plain frame (checksum unverified, no offload), as a NIC delivers it.
    pub fn plain(data: Vec<u8>) -> Self {
        Self {
            data,
            checksum: ChecksumState::Unverified,
            gso: None,
        }
    }
}
