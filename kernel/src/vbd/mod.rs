//! The vbd backend (`io/blkif.h`), hardware-free: [`engine`] serves one device's ring
//! (requests in, bounce buffers, disk I/O, responses out), [`xenbus`] runs its xenstore
//! handshake. The binary implements the small traits they are generic over: grant
//! copies ([`engine::GrantCopy`]), the disk ([`engine::Disk`]), the ring's shared memory
//! ([`crate::io_ring::RingMemory`]) and reading the frontend's nodes
//! ([`xenbus::FrontendNodes`]).

pub mod engine;
pub mod xenbus;
