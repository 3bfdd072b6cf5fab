//! Physical-device operations (`physdev.h`): `physdev_op(cmd, arg)`. The numbers are all
//! here; the arguments a PV kernel uses for I/O privilege and interrupts have structures.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{DomId, GuestHandle, XenPfn};

xen_enum! {
    /// `physdev_op` commands (`PHYSDEVOP_*`).
    pub enum PhysdevOp: u32 {
        /// Obsolete since interface 0x00030202.
        IrqUnmaskNotify = 4,
        IrqStatusQuery = 5,
        SetIopl = 6,
        SetIobitmap = 7,
        ApicRead = 8,
        ApicWrite = 9,
        AllocIrqVector = 10,
        FreeIrqVector = 11,
        Eoi = 12,
        MapPirq = 13,
        UnmapPirq = 14,
        ManagePciAdd = 15,
        ManagePciRemove = 16,
        PirqEoiGmfnV1 = 17,
        RestoreMsi = 19,
        ManagePciAddExt = 20,
        SetupGsi = 21,
        GetFreePirq = 23,
        PciMmcfgReserved = 24,
        PciDeviceAdd = 25,
        PciDeviceRemove = 26,
        RestoreMsiExt = 27,
        PirqEoiGmfnV2 = 28,
        DbgpOp = 29,
        PrepareMsix = 30,
        ReleaseMsix = 31,
    }
}

/// `PHYSDEVOP_eoi` argument (`struct physdev_eoi`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct PhysdevEoi {
    pub irq: u32,
}

assert_layout!(PhysdevEoi, size = 4, align = 4, irq = 0);

/// `PHYSDEVOP_pirq_eoi_gmfn_v{1,2}` argument (`struct physdev_pirq_eoi_gmfn`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct PhysdevPirqEoiGmfn {
    pub gmfn: XenPfn,
}

assert_layout!(PhysdevPirqEoiGmfn, size = 8, align = 8, gmfn = 0);

/// `physdev_irq_status_query.flags`: the IRQ needs `PHYSDEVOP_eoi`.
pub const XENIRQSTAT_NEEDS_EOI: u32 = 1 << 0;
/// `physdev_irq_status_query.flags`: the IRQ is shared between guests.
pub const XENIRQSTAT_SHARED: u32 = 1 << 1;

/// `PHYSDEVOP_irq_status_query` argument (`struct physdev_irq_status_query`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct PhysdevIrqStatusQuery {
    pub irq: u32,
    /// Out: `XENIRQSTAT_*`.
    pub flags: u32,
}

assert_layout!(
    PhysdevIrqStatusQuery,
    size = 8,
    align = 4,
    irq = 0,
    flags = 4
);

/// `PHYSDEVOP_set_iopl` argument (`struct physdev_set_iopl`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct PhysdevSetIopl {
    pub iopl: u32,
}

assert_layout!(PhysdevSetIopl, size = 4, align = 4, iopl = 0);

/// `PHYSDEVOP_set_iobitmap` argument (`struct physdev_set_iobitmap`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct PhysdevSetIobitmap {
    /// Array of `u8`, one bit per port.
    pub bitmap: GuestHandle,
    pub nr_ports: u32,
    pub _cpad0: u32,
}

assert_layout!(
    PhysdevSetIobitmap,
    size = 16,
    align = 8,
    bitmap = 0,
    nr_ports = 8
);

// `physdev_map_pirq.type` (`MAP_PIRQ_TYPE_*`).
pub const MAP_PIRQ_TYPE_MSI: i32 = 0x0;
pub const MAP_PIRQ_TYPE_GSI: i32 = 0x1;
pub const MAP_PIRQ_TYPE_UNKNOWN: i32 = 0x2;
pub const MAP_PIRQ_TYPE_MSI_SEG: i32 = 0x3;
pub const MAP_PIRQ_TYPE_MULTI_MSI: i32 = 0x4;

/// `PHYSDEVOP_map_pirq` argument (`struct physdev_map_pirq`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct PhysdevMapPirq {
    pub domid: DomId,
    pub _cpad0: u16,
    /// `MAP_PIRQ_TYPE_*`.
    pub r#type: i32,
    pub index: i32,
    /// In/out.
    pub pirq: i32,
    /// High 16 bits: PCI segment for the `*_MSI_SEG`/`*_MULTI_MSI` types.
    pub bus: i32,
    pub devfn: i32,
    pub entry_nr: i32,
    pub _cpad1: u32,
    pub table_base: u64,
}

assert_layout!(
    PhysdevMapPirq,
    size = 40,
    align = 8,
    domid = 0,
    r#type = 4,
    index = 8,
    pirq = 12,
    bus = 16,
    devfn = 20,
    entry_nr = 24,
    table_base = 32,
);

/// `PHYSDEVOP_unmap_pirq` argument (`struct physdev_unmap_pirq`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct PhysdevUnmapPirq {
    pub domid: DomId,
    pub _cpad0: u16,
    pub pirq: i32,
}

assert_layout!(PhysdevUnmapPirq, size = 8, align = 4, domid = 0, pirq = 4);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::UnknownNumber;

    #[test]
    fn round_trips() {
        for &op in PhysdevOp::ALL {
            assert_eq!(PhysdevOp::try_from(op.raw()), Ok(op));
            assert_eq!(PhysdevOp::try_from(u64::from(op.raw())), Ok(op));
        }
        assert_eq!(PhysdevOp::ALL.len(), 26);
        for n in [0u32, 3, 18, 22, 32] {
            assert_eq!(PhysdevOp::try_from(n), Err(UnknownNumber(n.into())));
        }
    }

    #[test]
    fn set_iopl_bytes() {
        let arg = PhysdevSetIopl::read_from_bytes(&[1, 0, 0, 0]).unwrap();
        assert_eq!(arg.iopl, 1);
    }
}
