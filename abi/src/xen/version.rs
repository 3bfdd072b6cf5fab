//! `xen_version(cmd, arg)` (`version.h`).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::XenUlong;

xen_enum! {
    /// `xen_version` commands (`XENVER_*`).
    pub enum XenVersionOp: u32 {
        /// Returns `major << 16 | minor`; arg is null.
        Version = 0,
        /// arg is a [`XenExtraversion`].
        Extraversion = 1,
        /// arg is a [`XenCompileInfo`].
        CompileInfo = 2,
        /// arg is a [`XenCapabilitiesInfo`].
        Capabilities = 3,
        /// arg is a [`XenChangesetInfo`].
        Changeset = 4,
        /// arg is a [`XenPlatformParameters`].
        PlatformParameters = 5,
        /// arg is a [`XenFeatureInfo`].
        GetFeatures = 6,
        /// Returns the page size; arg is null.
        Pagesize = 7,
        /// arg is a `XenDomainHandle`.
        GuestHandle = 8,
        /// arg is a [`XenCommandline`].
        Commandline = 9,
        /// arg is a `xen_build_id` (a `u32` length then the bytes); returns the length.
        BuildId = 10,
    }
}

/// `XENVER_extraversion` answer (`xen_extraversion_t`), e.g. `".0"`, NUL-terminated.
pub type XenExtraversion = [u8; 16];
pub const XEN_EXTRAVERSION_LEN: usize = 16;
/// `XENVER_capabilities` answer (`xen_capabilities_info_t`), e.g. `"xen-3.0-x86_64 "`.
pub type XenCapabilitiesInfo = [u8; 1024];
pub const XEN_CAPABILITIES_INFO_LEN: usize = 1024;
/// `XENVER_changeset` answer (`xen_changeset_info_t`).
pub type XenChangesetInfo = [u8; 64];
pub const XEN_CHANGESET_INFO_LEN: usize = 64;
/// `XENVER_commandline` answer (`xen_commandline_t`).
pub type XenCommandline = [u8; 1024];

/// `XENVER_compile_info` answer (`struct xen_compile_info`), NUL-terminated strings.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenCompileInfo {
    pub compiler: [u8; 64],
    pub compile_by: [u8; 16],
    pub compile_domain: [u8; 32],
    pub compile_date: [u8; 32],
}

assert_layout!(
    XenCompileInfo,
    size = 144,
    align = 1,
    compiler = 0,
    compile_by = 64,
    compile_domain = 80,
    compile_date = 112,
);

/// `XENVER_platform_parameters` answer (`struct xen_platform_parameters`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenPlatformParameters {
    /// Start of the hypervisor's reserved virtual range (`HYPERVISOR_VIRT_START`).
    pub virt_start: XenUlong,
}

assert_layout!(XenPlatformParameters, size = 8, align = 8, virt_start = 0);

/// `XENVER_get_features` argument (`struct xen_feature_info`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenFeatureInfo {
    /// In: which 32-bit submap.
    pub submap_idx: u32,
    /// Out: its `XENFEAT_*` bits.
    pub submap: u32,
}

assert_layout!(
    XenFeatureInfo,
    size = 8,
    align = 4,
    submap_idx = 0,
    submap = 4
);

/// The fixed head of `XENVER_build_id`'s argument (`struct xen_build_id`); the id bytes
/// follow it in guest memory.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenBuildIdHeader {
    /// In: size of the buffer after it.
    pub len: u32,
}

assert_layout!(XenBuildIdHeader, size = 4, align = 4, len = 0);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::UnknownNumber;

    #[test]
    fn round_trips() {
        for &op in XenVersionOp::ALL {
            assert_eq!(XenVersionOp::try_from(op.raw()), Ok(op));
            assert_eq!(XenVersionOp::try_from(u64::from(op.raw())), Ok(op));
        }
        assert_eq!(XenVersionOp::try_from(6u32), Ok(XenVersionOp::GetFeatures));
        assert_eq!(XenVersionOp::try_from(11u32), Err(UnknownNumber(11)));
    }

    #[test]
    fn feature_info_bytes() {
        let info = XenFeatureInfo {
            submap_idx: 0,
            submap: 0x8a1,
        };
        assert_eq!(info.as_bytes(), &[0, 0, 0, 0, 0xa1, 0x08, 0, 0]);
        let back = XenFeatureInfo::read_from_bytes(info.as_bytes()).unwrap();
        assert_eq!(back.submap, 0x8a1);
    }
}
