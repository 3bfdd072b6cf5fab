//! Memory reservation and physmap operations (`memory.h`): `memory_op(cmd, arg)`, plus the
//! E820 entry format `XENMEM_memory_map` fills (the BIOS INT 15h/E820h record).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{DomId, GuestHandle, XenPfn, XenUlong};

xen_enum! {
    /// `memory_op` commands (`XENMEM_*`).
    pub enum MemoryOp: u32 {
        /// arg is a [`XenMemoryReservation`]; returns extents done.
        IncreaseReservation = 0,
        DecreaseReservation = 1,
        /// arg is a `DomId`; returns the highest machine frame number.
        MaximumRamPage = 2,
        /// arg is a `DomId`; returns pages.
        CurrentReservation = 3,
        MaximumReservation = 4,
        /// arg is a [`XenMachphysMfnList`].
        MachphysMfnList = 5,
        PopulatePhysmap = 6,
        /// arg is a [`XenAddToPhysmap`].
        AddToPhysmap = 7,
        /// arg is a [`XenMemoryMap`] (the caller's pseudo-physical map).
        MemoryMap = 9,
        /// arg is a [`XenMemoryMap`] (the host's map, dom0 only).
        MachineMemoryMap = 10,
        /// arg is a [`XenMemoryExchange`].
        Exchange = 11,
        /// arg is a [`XenMachphysMapping`].
        MachphysMapping = 12,
        /// arg is a [`XenForeignMemoryMap`].
        SetMemoryMap = 13,
        /// arg is a `DomId`.
        MaximumGpfn = 14,
        /// arg is a [`XenRemoveFromPhysmap`].
        RemoveFromPhysmap = 15,
        /// arg is a [`XenPodTarget`].
        SetPodTarget = 16,
        GetPodTarget = 17,
        GetSharingFreedPages = 18,
        GetSharingSharedPages = 19,
        PagingOp = 20,
        AccessOp = 21,
        SharingOp = 22,
        /// arg is a [`XenAddToPhysmapBatch`].
        AddToPhysmapBatch = 23,
        /// arg is a [`XenMemoryReservation`] with no extents.
        ClaimPages = 24,
        MachphysCompatMfnList = 25,
        /// arg is a [`XenVnumaTopologyInfo`].
        GetVnumainfo = 26,
        ReservedDeviceMemoryMap = 27,
        /// arg is a [`XenMemAcquireResource`].
        AcquireResource = 28,
    }
}

// `xen_memory_reservation.mem_flags` (`XENMEMF_*`).

/// Maximum address width of the allocated memory, 0 for no limit.
pub const fn xenmemf_address_bits(bits: u32) -> u32 {
    bits
}
pub const fn xenmemf_get_address_bits(flags: u32) -> u32 {
    flags & 0xff
}
/// Allocate from NUMA node `node`.
pub const fn xenmemf_node(node: u32) -> u32 {
    (node + 1) << 8
}
pub const fn xenmemf_get_node(flags: u32) -> u32 {
    ((flags >> 8).wrapping_sub(1)) & 0xff
}
pub const XENMEMF_POPULATE_ON_DEMAND: u32 = 1 << 16;
pub const XENMEMF_EXACT_NODE_REQUEST: u32 = 1 << 17;
pub const XENMEMF_VNODE: u32 = 1 << 18;

/// Argument of increase/decrease_reservation, populate_physmap and claim_pages
/// (`struct xen_memory_reservation`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenMemoryReservation {
    /// Array of `xen_pfn_t`: frames to free, or to populate (in/out).
    pub extent_start: GuestHandle,
    pub nr_extents: XenUlong,
    /// Each extent is `2^extent_order` pages.
    pub extent_order: u32,
    /// `XENMEMF_*`.
    pub mem_flags: u32,
    /// Only `DOMID_SELF` for unprivileged callers.
    pub domid: DomId,
    pub _cpad0: [u8; 6],
}

assert_layout!(
    XenMemoryReservation,
    size = 32,
    align = 8,
    extent_start = 0,
    nr_extents = 8,
    extent_order = 16,
    mem_flags = 20,
    domid = 24,
);

/// `XENMEM_exchange` argument (`struct xen_memory_exchange`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenMemoryExchange {
    /// Extents given up.
    pub r#in: XenMemoryReservation,
    /// Extents received, same total size.
    pub out: XenMemoryReservation,
    /// Out: input extents exchanged so far; the caller must zero it.
    pub nr_exchanged: XenUlong,
}

assert_layout!(
    XenMemoryExchange,
    size = 72,
    align = 8,
    r#in = 0,
    out = 32,
    nr_exchanged = 64
);

/// Argument of maximum_ram_page and the reservation queries (`struct xen_memory_domain`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenMemoryDomain {
    pub domid: DomId,
}

assert_layout!(XenMemoryDomain, size = 2, align = 2, domid = 0);

/// `XENMEM_machphys_mfn_list` argument (`struct xen_machphys_mfn_list`): the frames
/// backing the M2P table, one per 2 MiB.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenMachphysMfnList {
    pub max_extents: u32,
    pub _cpad0: u32,
    /// Array of `xen_pfn_t` to fill.
    pub extent_start: GuestHandle,
    /// Out: entries written.
    pub nr_extents: u32,
    pub _cpad1: u32,
}

assert_layout!(
    XenMachphysMfnList,
    size = 24,
    align = 8,
    max_extents = 0,
    extent_start = 8,
    nr_extents = 16,
);

/// `XENMEM_machphys_mapping` answer (`struct xen_machphys_mapping`): where the read-only
/// M2P table is mapped.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenMachphysMapping {
    pub v_start: XenUlong,
    pub v_end: XenUlong,
    /// Largest MFN the table covers.
    pub max_mfn: XenUlong,
}

assert_layout!(
    XenMachphysMapping,
    size = 24,
    align = 8,
    v_start = 0,
    v_end = 8,
    max_mfn = 16
);

// Map spaces for add_to_physmap (`XENMAPSPACE_*`).
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
pub const XENMAPSPACE_GRANT_TABLE: u32 = 1;
pub const XENMAPSPACE_GMFN: u32 = 2;
pub const XENMAPSPACE_GMFN_RANGE: u32 = 3;
pub const XENMAPSPACE_GMFN_FOREIGN: u32 = 4;
pub const XENMAPSPACE_DEV_MMIO: u32 = 5;
/// In `idx` with `XENMAPSPACE_grant_table`: a status frame rather than a shared one.
pub const XENMAPIDX_GRANT_TABLE_STATUS: u64 = 0x8000_0000;

/// `XENMEM_add_to_physmap` argument (`struct xen_add_to_physmap`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenAddToPhysmap {
    pub domid: DomId,
    /// Pages, for `XENMAPSPACE_gmfn_range`.
    pub size: u16,
    /// `XENMAPSPACE_*`.
    pub space: u32,
    pub idx: XenUlong,
    pub gpfn: XenPfn,
}

assert_layout!(
    XenAddToPhysmap,
    size = 24,
    align = 8,
    domid = 0,
    size = 2,
    space = 4,
    idx = 8,
    gpfn = 16,
);

/// `XENMEM_add_to_physmap_batch` argument (`struct xen_add_to_physmap_batch`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenAddToPhysmapBatch {
    pub domid: DomId,
    pub space: u16,
    pub size: u16,
    /// Union: `foreign_domid` for `XENMAPSPACE_gmfn_foreign`, otherwise zero.
    pub u: u16,
    /// Array of `xen_ulong_t` indexes.
    pub idxs: GuestHandle,
    /// Array of `xen_pfn_t`.
    pub gpfns: GuestHandle,
    /// Out: array of `int` per-index errors.
    pub errs: GuestHandle,
}

assert_layout!(
    XenAddToPhysmapBatch,
    size = 32,
    align = 8,
    domid = 0,
    space = 2,
    size = 4,
    u = 6,
    idxs = 8,
    gpfns = 16,
    errs = 24,
);

/// `XENMEM_remove_from_physmap` argument (`struct xen_remove_from_physmap`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenRemoveFromPhysmap {
    pub domid: DomId,
    pub _cpad0: [u8; 6],
    pub gpfn: XenPfn,
}

assert_layout!(
    XenRemoveFromPhysmap,
    size = 16,
    align = 8,
    domid = 0,
    gpfn = 8
);

/// `XENMEM_memory_map`/`XENMEM_machine_memory_map` argument (`struct xen_memory_map`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenMemoryMap {
    /// In: capacity of `buffer` in entries; out: entries stored.
    pub nr_entries: u32,
    pub _cpad0: u32,
    /// Array of [`E820Entry`].
    pub buffer: GuestHandle,
}

assert_layout!(
    XenMemoryMap,
    size = 16,
    align = 8,
    nr_entries = 0,
    buffer = 8
);

/// `XENMEM_set_memory_map` argument (`struct xen_foreign_memory_map`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenForeignMemoryMap {
    pub domid: DomId,
    pub _cpad0: [u8; 6],
    pub map: XenMemoryMap,
}

assert_layout!(
    XenForeignMemoryMap,
    size = 24,
    align = 8,
    domid = 0,
    map = 8
);

/// `XENMEM_{set,get}_pod_target` argument (`struct xen_pod_target`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenPodTarget {
    pub target_pages: u64,
    pub tot_pages: u64,
    pub pod_cache_pages: u64,
    pub pod_entries: u64,
    pub domid: DomId,
    pub _cpad0: [u8; 6],
}

assert_layout!(
    XenPodTarget,
    size = 40,
    align = 8,
    target_pages = 0,
    tot_pages = 8,
    pod_cache_pages = 16,
    pod_entries = 24,
    domid = 32,
);

// Resource types for acquire_resource (`XENMEM_resource_*`).
pub const XENMEM_RESOURCE_IOREQ_SERVER: u16 = 0;
pub const XENMEM_RESOURCE_GRANT_TABLE: u16 = 1;
pub const XENMEM_RESOURCE_VMTRACE_BUF: u16 = 2;
pub const XENMEM_RESOURCE_GRANT_TABLE_ID_SHARED: u32 = 0;
pub const XENMEM_RESOURCE_GRANT_TABLE_ID_STATUS: u32 = 1;

/// `XENMEM_acquire_resource` argument (`struct xen_mem_acquire_resource`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenMemAcquireResource {
    pub domid: DomId,
    /// `XENMEM_resource_*`.
    pub r#type: u16,
    pub id: u32,
    /// In/out: frames to map; 0 with a null `frame_list` asks for the resource's size.
    pub nr_frames: u32,
    /// Must be zero.
    pub pad: u32,
    pub frame: u64,
    /// Array of `xen_pfn_t`.
    pub frame_list: GuestHandle,
}

assert_layout!(
    XenMemAcquireResource,
    size = 32,
    align = 8,
    domid = 0,
    r#type = 2,
    id = 4,
    nr_frames = 8,
    pad = 12,
    frame = 16,
    frame_list = 24,
);

/// A vNUMA memory range (`struct xen_vmemrange`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenVmemrange {
    pub start: u64,
    pub end: u64,
    pub flags: u32,
    pub nid: u32,
}

assert_layout!(
    XenVmemrange,
    size = 24,
    align = 8,
    start = 0,
    end = 8,
    flags = 16,
    nid = 20
);

/// `XENMEM_get_vnumainfo` argument (`struct xen_vnuma_topology_info`); the three handle
/// unions are 8 bytes each.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenVnumaTopologyInfo {
    pub domid: DomId,
    pub pad: u16,
    pub nr_vnodes: u32,
    pub nr_vcpus: u32,
    pub nr_vmemranges: u32,
    /// Array of `unsigned int`, `nr_vnodes^2` distances.
    pub vdistance: GuestHandle,
    /// Array of `unsigned int`, one node per vCPU.
    pub vcpu_to_vnode: GuestHandle,
    /// Array of [`XenVmemrange`].
    pub vmemrange: GuestHandle,
}

assert_layout!(
    XenVnumaTopologyInfo,
    size = 40,
    align = 8,
    domid = 0,
    pad = 2,
    nr_vnodes = 4,
    nr_vcpus = 8,
    nr_vmemranges = 12,
    vdistance = 16,
    vcpu_to_vnode = 24,
    vmemrange = 32,
);

// ---------------------------------------------------------------------------------------
// E820 (the format `xen_memory_map.buffer` uses: BIOS INT 15h, AX=E820h).

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;
pub const E820_ACPI: u32 = 3;
pub const E820_NVS: u32 = 4;
pub const E820_UNUSABLE: u32 = 5;

/// One memory-map entry, packed to 20 bytes as the BIOS returns it.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C, packed)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    /// `E820_*`.
    pub r#type: u32,
}

assert_layout!(
    E820Entry,
    size = 20,
    align = 1,
    addr = 0,
    size = 8,
    r#type = 16
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::{xen::DOMID_SELF, UnknownNumber};

    #[test]
    fn round_trips() {
        for &op in MemoryOp::ALL {
            assert_eq!(MemoryOp::try_from(op.raw()), Ok(op));
            assert_eq!(MemoryOp::try_from(u64::from(op.raw())), Ok(op));
        }
        assert_eq!(MemoryOp::try_from(8u32), Err(UnknownNumber(8)));
        assert_eq!(MemoryOp::try_from(29u32), Err(UnknownNumber(29)));
        assert_eq!(MemoryOp::PopulatePhysmap.raw(), 6);
        assert_eq!(MemoryOp::MachphysMapping.raw(), 12);
    }

    #[test]
    fn mem_flags() {
        assert_eq!(
            xenmemf_get_address_bits(xenmemf_address_bits(32) | xenmemf_node(1)),
            32
        );
        assert_eq!(
            xenmemf_get_node(xenmemf_node(3) | XENMEMF_EXACT_NODE_REQUEST),
            3
        );
        assert_eq!(XENMEMF_POPULATE_ON_DEMAND, 0x1_0000);
    }

    #[test]
    fn reservation_bytes() {
        let r = XenMemoryReservation {
            extent_start: GuestHandle(0xffff_8880_0000_1000),
            nr_extents: 16,
            extent_order: 9,
            mem_flags: 0,
            domid: DOMID_SELF,
            _cpad0: [0; 6],
        };
        let bytes = r.as_bytes();
        assert_eq!(&bytes[8..16], &16u64.to_le_bytes());
        assert_eq!(&bytes[16..20], &9u32.to_le_bytes());
        assert_eq!(&bytes[24..26], &0x7ff0u16.to_le_bytes());
        let back = XenMemoryReservation::read_from_bytes(bytes).unwrap();
        assert_eq!(back.extent_start, r.extent_start);
    }

    #[test]
    fn e820_entries_are_packed() {
        let map = [
            E820Entry {
                addr: 0,
                size: 0xa0000,
                r#type: E820_RAM,
            },
            E820Entry {
                addr: 0x10_0000,
                size: 0x1000_0000,
                r#type: E820_RAM,
            },
        ];
        let bytes = map.as_bytes();
        assert_eq!(bytes.len(), 40);
        assert_eq!(&bytes[20..28], &0x10_0000u64.to_le_bytes());
        assert_eq!(&bytes[36..40], &E820_RAM.to_le_bytes());
        let back = <[E820Entry; 2]>::read_from_bytes(bytes).unwrap();
        assert_eq!({ back[1].size }, 0x1000_0000);
    }
}
