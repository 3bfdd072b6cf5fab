//! Versions the hypervisor reports to guests and to the toolstack.

/// The Xen interface version the guest ABI follows (`__XEN_LATEST_INTERFACE_VERSION__` of
/// Xen 4.17, from `xen-compat.h`).
pub const XEN_INTERFACE_VERSION: u32 = 0x0004_0011;

/// `XENVER_version` answer: major in the high 16 bits, minor in the low 16.
pub const XEN_VERSION_MAJOR: u32 = 4;
pub const XEN_VERSION_MINOR: u32 = 17;

/// Version of Ferrovisor's own domctl/sysctl interface between `fv` and the hypervisor.
/// Bumped on every incompatible change; both sides refuse a mismatch.
pub const FV_CONTROL_INTERFACE_VERSION: u32 = 1;
