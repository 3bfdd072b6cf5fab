//! Platform operations for the hardware domain (`platform.h`): `platform_op(&op)`. The
//! command numbers, the envelope, and the time-setting arguments are here; the other
//! arguments fit in the envelope's 128-byte union and get structures when dom0 support
//! needs them.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{read_prefix, write_prefix};

/// `xen_platform_op.interface_version` a caller must pass (`XENPF_INTERFACE_VERSION`).
pub const XENPF_INTERFACE_VERSION: u32 = 0x0300_0001;

xen_enum! {
    /// `xen_platform_op.cmd` (`XENPF_*`).
    pub enum PlatformOp: u32 {
        Settime32 = 17,
        AddMemtype = 31,
        DelMemtype = 32,
        ReadMemtype = 33,
        MicrocodeUpdate = 35,
        PlatformQuirk = 39,
        GetCpuVersion = 48,
        EfiRuntimeCall = 49,
        FirmwareInfo = 50,
        EnterAcpiSleep = 51,
        ChangeFreq = 52,
        Getidletime = 53,
        SetProcessorPminfo = 54,
        GetCpuinfo = 55,
        CpuOnline = 56,
        CpuOffline = 57,
        CpuHotadd = 58,
        MemHotadd = 59,
        CoreParking = 60,
        ResourceOp = 61,
        Settime64 = 62,
        GetSymbol = 63,
    }
}

/// The `platform_op` argument (`struct xen_platform_op`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenPlatformOp {
    /// A [`PlatformOp`].
    pub cmd: u32,
    /// Must be [`XENPF_INTERFACE_VERSION`].
    pub interface_version: u32,
    /// The per-command argument (a C union padded to 128 bytes, 8-aligned).
    pub u: [u64; 16],
}

assert_layout!(
    XenPlatformOp,
    size = 136,
    align = 8,
    cmd = 0,
    interface_version = 4,
    u = 8
);

impl XenPlatformOp {
    /// `u.settime32`.
    pub fn settime32(&self) -> XenpfSettime32 {
        read_prefix(self.u.as_bytes())
    }

    /// `u.settime64`.
    pub fn settime64(&self) -> XenpfSettime64 {
        read_prefix(self.u.as_bytes())
    }

    /// Writes `arg` at the start of the union.
    pub fn set_arg<T: IntoBytes + Immutable>(&mut self, arg: &T) {
        write_prefix(self.u.as_mut_bytes(), arg);
    }
}

/// `XENPF_settime32` argument (`struct xenpf_settime32`): wall time at `system_time`.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenpfSettime32 {
    pub secs: u32,
    pub nsecs: u32,
    pub system_time: u64,
}

assert_layout!(
    XenpfSettime32,
    size = 16,
    align = 8,
    secs = 0,
    nsecs = 4,
    system_time = 8
);

/// `XENPF_settime64` argument (`struct xenpf_settime64`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenpfSettime64 {
    pub secs: u64,
    pub nsecs: u32,
    /// Must be zero.
    pub mbz: u32,
    pub system_time: u64,
}

assert_layout!(
    XenpfSettime64,
    size = 24,
    align = 8,
    secs = 0,
    nsecs = 8,
    mbz = 12,
    system_time = 16,
);

#[cfg(test)]
mod tests {
    use zerocopy::FromZeros;

    use super::*;
    use crate::xen::UnknownNumber;

    #[test]
    fn round_trips() {
        for &op in PlatformOp::ALL {
            assert_eq!(PlatformOp::try_from(op.raw()), Ok(op));
            assert_eq!(PlatformOp::try_from(u64::from(op.raw())), Ok(op));
        }
        assert_eq!(PlatformOp::try_from(0u32), Err(UnknownNumber(0)));
        assert_eq!(PlatformOp::try_from(34u32), Err(UnknownNumber(34)));
    }

    #[test]
    fn settime64_in_envelope() {
        let mut op = XenPlatformOp::new_zeroed();
        op.cmd = PlatformOp::Settime64.raw();
        op.interface_version = XENPF_INTERFACE_VERSION;
        op.set_arg(&XenpfSettime64 {
            secs: 1_700_000_000,
            nsecs: 5,
            mbz: 0,
            system_time: 9,
        });
        let bytes = op.as_bytes();
        assert_eq!(&bytes[..8], &[62, 0, 0, 0, 1, 0, 0, 3]);
        assert_eq!(&bytes[8..16], &1_700_000_000u64.to_le_bytes());
        let back = XenPlatformOp::read_from_bytes(bytes).unwrap();
        assert_eq!(back.settime64().system_time, 9);
        assert_eq!(back.settime32().secs, 1_700_000_000);
    }
}
