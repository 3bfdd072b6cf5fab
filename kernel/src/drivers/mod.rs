//! The machine's devices, owned by the hypervisor: the PCI walk at boot and the virtio
//! drivers (`blk`, `net`) over the modern PCI transport (`virtio_pci`), with MSI-X
//! interrupts on device vectors (`irq`). No domain gets hardware: the backends built on
//! these drivers are the only way guests reach a disk or the network.
//!
//! The drivers name no higher layer: completions and received frames go to the callbacks
//! the upper layer registers (`blk::set_completion_handler`, `net::set_receiver`).

pub mod blk;
pub mod irq;
pub mod net;
pub mod virtio_pci;

use alloc::vec::Vec;

use ferrovisor::{pci, virtio::DeviceType};

use crate::arch::x86_64::{acpi, apic, pci::HwConfig};

/// Walks PCI and sets up every virtio disk and NIC (called once, on the boot CPU, after
/// the local APIC is up). `rsdp` is the loader's copy of the ACPI RSDP.
pub fn probe(rsdp: Option<&[u8]>) {
    let ecam = acpi::ecam_regions(rsdp)
        .into_iter()
        .find(|r| r.segment == 0);
    let cfg = HwConfig::new(ecam);
    match ecam {
        Some(r) if matches!(cfg, HwConfig::Ecam { .. }) => log::info!(
            "pci: ECAM at {:#x}, buses {}-{}",
            r.window_start(),
            r.start_bus,
            r.end_bus
        ),
        _ => log::info!("pci: configuration through {}", cfg.describe()),
    }
    let funcs = pci::scan(&cfg);
    // MSI-X messages go to the boot CPU (this one).
    let apic_id = apic::id();
    let mut disks = Vec::new();
    let mut nics = Vec::new();
    for f in &funcs {
        match DeviceType::from_pci(f.vendor, f.device, f.subsystem_id) {
            Some(DeviceType::Block) => match blk::probe(cfg, f, disks.len(), apic_id) {
                Ok(d) => {
                    // The `pci:` line comes with the partition scan
                    // (`backend::disks::scan`), once the disk can be read.
                    log::info!(
                        "virtio-blk {}: {} sectors, block size {}, {}{}{}, queue of {}, vector {:#x}",
                        d.name,
                        d.info.capacity,
                        d.info.blk_size,
                        if d.info.read_only { "read-only" } else { "read-write" },
                        if d.info.flush { ", flush" } else { "" },
                        if d.info.discard.is_some() { ", discard" } else { "" },
                        d.queue_size,
                        d.vector
                    );
                    disks.push(d);
                }
                Err(e) => log::warn!("pci: {} virtio-blk not used: {e}", f.bdf),
            },
            Some(DeviceType::Net) => match net::probe(cfg, f, nics.len(), apic_id) {
                Ok(n) => {
                    log::info!("pci: {} virtio-net {}", f.bdf, n.mac());
                    log::info!(
                        "virtio-net {}: link {}, vector {:#x}",
                        n.mac(),
                        if n.link_up() { "up" } else { "down" },
                        n.vector
                    );
                    nics.push(n);
                }
                Err(e) => log::warn!("pci: {} virtio-net not used: {e}", f.bdf),
            },
            Some(other) => log::info!("pci: {} {} (no driver)", f.bdf, other.name()),
            None => log::debug!(
                "pci: {} {:04x}:{:04x} {}",
                f.bdf,
                f.vendor,
                f.device,
                f.class_name()
            ),
        }
    }
    log::info!(
        "pci: {} functions, {} disk{}, {} NIC{}",
        funcs.len(),
        disks.len(),
        if disks.len() == 1 { "" } else { "s" },
        nics.len(),
        if nics.len() == 1 { "" } else { "s" }
    );
    blk::install(disks);
    net::install(nics);
}
