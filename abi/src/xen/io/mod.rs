//! The split-driver protocols (`io/`): the shared-ring header (`io/ring.h`), the xenbus
//! states (`io/xenbus.h`), and the block and network rings (`io/blkif.h`,
//! `io/netif.h`) the hypervisor's vbd and vif backends serve.

pub mod blkif;
pub mod netif;
pub mod ring;
pub mod xenbus;
