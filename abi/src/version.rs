//! Versions the hypervisor reports to guests and to the toolstack.

/// The Xen interface version the guest ABI follows: `__XEN_LATEST_INTERFACE_VERSION__` of
/// the Xen 4.17 headers (`xen-compat.h`), unchanged since 4.14.
pub const XEN_INTERFACE_VERSION: u32 = 0x0004_0e00;

/// The Xen release the hypervisor presents itself as (`XENVER_version`, CPUID leaf
/// 0x40000001): major in the high 16 bits, minor in the low 16.
pub const XEN_VERSION_MAJOR: u32 = 4;
pub const XEN_VERSION_MINOR: u32 = 17;
pub const XEN_VERSION: u32 = (XEN_VERSION_MAJOR << 16) | XEN_VERSION_MINOR;

/// Version of Ferrovisor's own domctl/sysctl interface between `fv` and the hypervisor.
/// Bumped on every incompatible change; both sides refuse a mismatch. Version 2:
/// `DomainInfo::start_time_ns` (136-byte entries) and `RenameDomain`.
pub const FV_CONTROL_INTERFACE_VERSION: u32 = 2;

const _: () = assert!(XEN_VERSION == 0x0004_0011);
