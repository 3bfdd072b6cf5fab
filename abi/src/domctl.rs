//! Ferrovisor's own control interface between the privileged domain (`fv`, or a test
//! kernel) and the hypervisor: `domctl` (one domain) and `sysctl` (the host).
//!
//! The hypercall numbers are Xen's (`__HYPERVISOR_domctl` 36, `__HYPERVISOR_sysctl` 35),
//! so Linux's `privcmd` passes the calls through unchanged; the argument is the project's
//! own, versioned, and defined only here. Both calls take one guest pointer to a
//! fixed-size request ([`Domctl`] or [`Sysctl`]): a header (interface version, command,
//! target domain) and a payload whose layout the command selects. The hypervisor copies
//! the whole request in, validates it, and copies it back with the outputs filled in.
//!
//! Errors are Xen errnos: `-EACCES` for an interface-version mismatch (as Xen answers a
//! stale toolstack), `-EPERM` when the caller is not the privileged domain, `-ESRCH` for
//! a domain that does not exist, `-EINVAL` for a malformed payload, `-ENOSYS` for an
//! unknown command.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::xen::{read_prefix, write_prefix, DomId, GuestHandle, XenDomainHandle};

pub use crate::version::FV_CONTROL_INTERFACE_VERSION;

/// Bytes of command payload in a [`Domctl`] request.
pub const DOMCTL_PAYLOAD: usize = 240;
/// Bytes of command payload in a [`Sysctl`] request.
pub const SYSCTL_PAYLOAD: usize = 240;
/// Longest domain name, in bytes (NUL-padded when shorter).
pub const DOMAIN_NAME_MAX: usize = 64;

xen_enum! {
    /// `domctl` commands.
    pub enum DomctlCmd: u32 {
        /// Payload [`CreateDomain`]; the new id comes back in the header's `domain`.
        CreateDomain = 1,
        /// No payload. Frees every frame, port, grant and xenstore entry of the domain.
        DestroyDomain = 2,
        /// No payload. Stops the domain's vCPUs (nested: each pause needs an unpause).
        PauseDomain = 3,
        /// No payload.
        UnpauseDomain = 4,
        /// Payload [`DomainInfo`] (out).
        GetDomainInfo = 5,
        /// Payload [`SetMaxMem`].
        SetMaxMem = 6,
        /// Payload [`SetMemTarget`]: the balloon target the guest reads from xenstore.
        SetMemTarget = 7,
        /// Payload [`BuildPv`]: loads a PV kernel into the domain's populated memory and
        /// prepares vCPU 0; the domain stays paused until `UnpauseDomain`.
        BuildPv = 8,
        /// Payload [`VcpuContext`]: reads a paused domain's vCPU state
        /// (`vcpu_guest_context`).
        GetVcpuContext = 9,
        /// Payload [`VcpuContext`]: replaces a paused domain's vCPU state.
        SetVcpuContext = 10,
        /// Payload [`ShutdownRequest`]: asks the guest to shut down, reboot or suspend
        /// (through xenstore's `control/shutdown`, as Xen's toolstack does).
        RequestShutdown = 11,
        /// Payload [`ConsoleIo`]: reads the domain's console history from an offset.
        ConsoleRead = 12,
        /// Payload [`ConsoleIo`]: writes input to the domain's console.
        ConsoleWrite = 13,
        /// Payload [`RenameDomain`]: gives a domain other than dom0 a new name (unique
        /// among live domains, the rules of [`CreateDomain::name`]); what `on_crash =
        /// "rename-restart"` does before building the replacement.
        RenameDomain = 14,
        /// Payload [`VcpuState`]: one vCPU's state, physical CPU and CPU time (`vcpu`
        /// in, the rest out; Xen's `getvcpuinfo`).
        GetVcpuInfo = 15,
        /// Payload [`DeviceAttach`]: gives the domain a vif or a vbd served by the
        /// hypervisor's backends (xenstore nodes of both ends written, backend in
        /// InitWait); the device id comes back in `devid`.
        DeviceAttach = 16,
        /// Payload [`DeviceDetach`]: starts closing a device (the frontend is asked to
        /// close, as `xl *-detach` does) or, with [`DETACH_FORCE`], removes it at once.
        DeviceDetach = 17,
        /// Payload [`ListDevices`]: fills a guest array of [`DeviceInfo`], the domain's
        /// vifs and vbds.
        ListDevices = 18,
    }
}

xen_enum! {
    /// `sysctl` commands.
    pub enum SysctlCmd: u32 {
        /// Payload [`PhysInfo`] (out).
        PhysInfo = 1,
        /// Payload [`ListDomains`]: fills a guest array of [`DomainInfo`].
        ListDomains = 2,
        /// Payload [`ReadLog`]: the hypervisor's log ring (`dmesg`).
        ReadLog = 3,
        /// Payload [`ListDisks`]: fills a guest array of [`DiskInfo`], the machine's
        /// disks and their partitions (the `phy:` targets).
        ListDisks = 4,
        /// Payload [`ListSwitchPorts`]: fills a guest array of [`SwitchPort`], every
        /// port of every virtual switch with its counters.
        ListSwitchPorts = 5,
    }
}

/// A `domctl` request.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Domctl {
    /// Must be [`FV_CONTROL_INTERFACE_VERSION`].
    pub interface_version: u32,
    /// A [`DomctlCmd`].
    pub cmd: u32,
    /// The target domain (in), or the created one (out, `CreateDomain`).
    pub domain: DomId,
    pub _pad: [u8; 6],
    pub payload: [u8; DOMCTL_PAYLOAD],
}

assert_layout!(
    Domctl,
    size = 256,
    align = 4,
    interface_version = 0,
    cmd = 4,
    domain = 8,
    payload = 16
);

impl Domctl {
    /// A request for `cmd` on `domain` with `payload` (zero-extended).
    pub fn new<T: IntoBytes + Immutable>(cmd: DomctlCmd, domain: DomId, payload: &T) -> Self {
        let mut d = Self {
            interface_version: FV_CONTROL_INTERFACE_VERSION,
            cmd: cmd.raw(),
            domain,
            _pad: [0; 6],
            payload: [0; DOMCTL_PAYLOAD],
        };
        d.set_payload(payload);
        d
    }

    /// The payload as a `T` (every payload type fits; checked at compile time below).
    pub fn payload<T: FromBytes>(&self) -> T {
        read_prefix(&self.payload)
    }

    pub fn set_payload<T: IntoBytes + Immutable>(&mut self, value: &T) {
        write_prefix(&mut self.payload, value);
    }
}

/// A `sysctl` request.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Sysctl {
    /// Must be [`FV_CONTROL_INTERFACE_VERSION`].
    pub interface_version: u32,
    /// A [`SysctlCmd`].
    pub cmd: u32,
    pub _pad: [u8; 8],
    pub payload: [u8; SYSCTL_PAYLOAD],
}

assert_layout!(
    Sysctl,
    size = 256,
    align = 4,
    interface_version = 0,
    cmd = 4,
    payload = 16
);

impl Sysctl {
    pub fn new<T: IntoBytes + Immutable>(cmd: SysctlCmd, payload: &T) -> Self {
        let mut s = Self {
            interface_version: FV_CONTROL_INTERFACE_VERSION,
            cmd: cmd.raw(),
            _pad: [0; 8],
            payload: [0; SYSCTL_PAYLOAD],
        };
        s.set_payload(payload);
        s
    }

    pub fn payload<T: FromBytes>(&self) -> T {
        read_prefix(&self.payload)
    }

    pub fn set_payload<T: IntoBytes + Immutable>(&mut self, value: &T) {
        write_prefix(&mut self.payload, value);
    }
}

/// `CreateDomain` payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct CreateDomain {
    pub uuid: XenDomainHandle,
    /// NUL-padded; unique among live domains; letters, digits and `-_.` only.
    pub name: [u8; DOMAIN_NAME_MAX],
    /// Most frames the domain may own.
    pub max_pages: u64,
    /// vCPUs (1 up to the hypervisor's limit).
    pub max_vcpus: u32,
    /// Reserved, zero.
    pub flags: u32,
}

assert_layout!(
    CreateDomain,
    size = 96,
    align = 8,
    uuid = 0,
    name = 16,
    max_pages = 80,
    max_vcpus = 88,
    flags = 92
);

/// [`DomainInfo::flags`]: the domain's vCPUs run, or one is on a CPU.
pub const DOMINFO_RUNNING: u32 = 1 << 0;
/// Every online vCPU waits for an event.
pub const DOMINFO_BLOCKED: u32 = 1 << 1;
/// Paused by the privileged domain.
pub const DOMINFO_PAUSED: u32 = 1 << 2;
/// Shut itself down; `shutdown_reason` says why.
pub const DOMINFO_SHUTDOWN: u32 = 1 << 3;
/// Crashed (shut down with `SHUTDOWN_crash`, or killed by the hypervisor).
pub const DOMINFO_CRASHED: u32 = 1 << 4;
/// Being destroyed; its last frames are still referenced elsewhere.
pub const DOMINFO_DYING: u32 = 1 << 5;
/// Built (`BuildPv` done): it has a kernel to run.
pub const DOMINFO_BUILT: u32 = 1 << 6;
/// The privileged (control) domain.
pub const DOMINFO_PRIVILEGED: u32 = 1 << 7;

/// `GetDomainInfo` payload (out), and one entry of `ListDomains`.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct DomainInfo {
    pub domid: DomId,
    pub _pad: u16,
    /// `DOMINFO_*`.
    pub flags: u32,
    /// `SHUTDOWN_*` (`sched.h`) when `DOMINFO_SHUTDOWN` is set.
    pub shutdown_reason: u32,
    /// vCPUs the domain has, and how many are up.
    pub nr_vcpus: u32,
    pub online_vcpus: u32,
    pub _pad2: u32,
    /// Frames the domain owns now, and at most.
    pub tot_pages: u64,
    pub max_pages: u64,
    /// CPU time its vCPUs have had, in nanoseconds.
    pub cpu_time_ns: u64,
    pub uuid: XenDomainHandle,
    pub name: [u8; DOMAIN_NAME_MAX],
    /// When the domain was created, in nanoseconds of hypervisor uptime (as
    /// [`PhysInfo::uptime_ns`]; 0 for dom0, built at boot). Interface version 2.
    pub start_time_ns: u64,
}

assert_layout!(
    DomainInfo,
    size = 136,
    align = 8,
    domid = 0,
    flags = 4,
    shutdown_reason = 8,
    nr_vcpus = 12,
    online_vcpus = 16,
    tot_pages = 24,
    max_pages = 32,
    cpu_time_ns = 40,
    uuid = 48,
    name = 64,
    start_time_ns = 128
);

impl DomainInfo {
    /// The name up to its first NUL.
    pub fn name_bytes(&self) -> &[u8] {
        name_bytes(&self.name)
    }
}

/// A NUL-padded name's bytes.
pub fn name_bytes(name: &[u8; DOMAIN_NAME_MAX]) -> &[u8] {
    padded_str(name)
}

/// `RenameDomain` payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RenameDomain {
    /// NUL-padded; the rules of [`CreateDomain::name`].
    pub name: [u8; DOMAIN_NAME_MAX],
}

assert_layout!(RenameDomain, size = 64, align = 1, name = 0);

/// `SetMaxMem` payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SetMaxMem {
    pub max_pages: u64,
}

assert_layout!(SetMaxMem, size = 8, align = 8, max_pages = 0);

/// `SetMemTarget` payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SetMemTarget {
    pub target_pages: u64,
}

assert_layout!(SetMemTarget, size = 8, align = 8, target_pages = 0);

/// `BuildPv` payload: buffers in the caller's address space.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct BuildPv {
    /// The kernel image (ELF or bzImage, compressed or not).
    pub kernel: GuestHandle,
    pub kernel_len: u64,
    /// The initial ramdisk, or null.
    pub ramdisk: GuestHandle,
    pub ramdisk_len: u64,
    /// The kernel command line (no NUL needed), or null.
    pub cmdline: GuestHandle,
    pub cmdline_len: u32,
    /// Reserved, zero.
    pub flags: u32,
    /// Out: the machine frames of the xenstore and console rings, and their ports in
    /// the guest.
    pub store_mfn: u64,
    pub console_mfn: u64,
    pub store_port: u32,
    pub console_port: u32,
    /// Out: the guest's entry point and `start_info` address.
    pub entry: u64,
    pub start_info: u64,
}

assert_layout!(
    BuildPv,
    size = 88,
    align = 8,
    kernel = 0,
    kernel_len = 8,
    ramdisk = 16,
    ramdisk_len = 24,
    cmdline = 32,
    cmdline_len = 40,
    flags = 44,
    store_mfn = 48,
    console_mfn = 56,
    store_port = 64,
    console_port = 68,
    entry = 72,
    start_info = 80
);

/// `GetVcpuContext` / `SetVcpuContext` payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VcpuContext {
    pub vcpu: u32,
    pub _pad: u32,
    /// A `vcpu_guest_context` (`arch-x86/xen.h`) in the caller's memory.
    pub ctx: GuestHandle,
}

assert_layout!(VcpuContext, size = 16, align = 8, vcpu = 0, ctx = 8);

/// `GetVcpuInfo` payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VcpuState {
    /// Which vCPU (in).
    pub vcpu: u32,
    /// 1 when it is up (`VCPUOP_up`, or vCPU 0 of a built domain).
    pub online: u8,
    /// 1 when it waits for an event (`SCHEDOP_block`/`poll`).
    pub blocked: u8,
    /// 1 when it is on a physical CPU now.
    pub running: u8,
    pub _pad: u8,
    /// The physical CPU it runs on, or last ran on; [`VcpuState::NO_CPU`] if it never ran.
    pub cpu: u32,
    pub _pad2: u32,
    /// CPU time it has had, in nanoseconds.
    pub cpu_time_ns: u64,
}

assert_layout!(
    VcpuState,
    size = 24,
    align = 8,
    vcpu = 0,
    online = 4,
    blocked = 5,
    running = 6,
    cpu = 8,
    cpu_time_ns = 16
);

impl VcpuState {
    pub const NO_CPU: u32 = u32::MAX;
}

/// `RequestShutdown` payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ShutdownRequest {
    /// `SHUTDOWN_poweroff`, `SHUTDOWN_reboot` or `SHUTDOWN_suspend` (`sched.h`).
    pub reason: u32,
}

assert_layout!(ShutdownRequest, size = 4, align = 4, reason = 0);

/// `ConsoleRead` / `ConsoleWrite` payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ConsoleIo {
    /// Read: the history offset to read from (in), the offset after the last byte
    /// returned (out). Unused for writes.
    pub offset: u64,
    pub buffer: GuestHandle,
    /// Buffer size (in).
    pub len: u32,
    /// Bytes read or written (out).
    pub done: u32,
    /// Read: bytes between the asked offset and the oldest one kept, which are lost.
    pub missed: u64,
}

assert_layout!(
    ConsoleIo,
    size = 32,
    align = 8,
    offset = 0,
    buffer = 8,
    len = 16,
    done = 20,
    missed = 24
);

/// `PhysInfo` payload (out).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct PhysInfo {
    pub nr_cpus: u32,
    pub cpu_khz: u32,
    /// RAM frames the hypervisor manages, and how many are free.
    pub total_pages: u64,
    pub free_pages: u64,
    /// Nanoseconds since the hypervisor started.
    pub uptime_ns: u64,
    /// Xen version it presents (major << 16 | minor).
    pub xen_version: u32,
    pub nr_domains: u32,
}

assert_layout!(
    PhysInfo,
    size = 40,
    align = 8,
    nr_cpus = 0,
    cpu_khz = 4,
    total_pages = 8,
    free_pages = 16,
    uptime_ns = 24,
    xen_version = 32,
    nr_domains = 36
);

/// `ListDomains` payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ListDomains {
    /// Lowest domain id to report.
    pub first_domain: DomId,
    pub _pad: u16,
    /// Room in `buffer`, in entries (in); entries written (out).
    pub max_entries: u32,
    pub buffer: GuestHandle,
    pub nr_entries: u32,
    pub _pad2: u32,
}

assert_layout!(
    ListDomains,
    size = 24,
    align = 8,
    first_domain = 0,
    max_entries = 4,
    buffer = 8,
    nr_entries = 16
);

/// `ReadLog` payload: like [`ConsoleIo`] for the hypervisor's log ring.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ReadLog {
    pub offset: u64,
    pub buffer: GuestHandle,
    pub len: u32,
    pub done: u32,
    pub missed: u64,
}

assert_layout!(
    ReadLog,
    size = 32,
    align = 8,
    offset = 0,
    buffer = 8,
    len = 16,
    done = 20,
    missed = 24
);

/// [`DeviceAttach::kind`] and friends: a virtual network interface (`io/netif.h`).
pub const DEVICE_VIF: u32 = 1;
/// A virtual block device (`io/blkif.h`).
pub const DEVICE_VBD: u32 = 2;
/// [`DeviceAttach::devid`] in: let the hypervisor choose the lowest free id.
pub const DEVID_AUTO: u32 = u32::MAX;
/// Longest switch (bridge) name, in bytes, NUL-padded.
pub const BRIDGE_NAME_MAX: usize = 16;
/// The hypervisor's one switch, which exists with or without a NIC.
pub const SWITCH_NAME: &str = "xenbr0";
/// Longest `phy:` target name (`vda`, `vda2`), NUL-padded.
pub const TARGET_NAME_MAX: usize = 32;
/// Longest guest device name (`xvda`, `sdb`), NUL-padded.
pub const VDEV_NAME_MAX: usize = 16;

/// [`DeviceAttach::mode`]: read-only (`r`).
pub const VBD_MODE_READ: u32 = 0;
/// Writable (`w`): refused while another running domain has the target (or a disk or
/// partition overlapping it) attached at all, and a later `r` attachment by another
/// domain is refused while it is held `w` (xl's `block` script rules).
pub const VBD_MODE_WRITE: u32 = 1;
/// Writable and shared on purpose (`w!`): no exclusivity check.
pub const VBD_MODE_WRITE_SHARED: u32 = 2;

/// [`DeviceAttach::device_type`]: a disk.
pub const VBD_TYPE_DISK: u32 = 0;
/// A CD-ROM (read-only, removable).
pub const VBD_TYPE_CDROM: u32 = 1;

xen_enum! {
    /// Why a [`DeviceAttach`] was refused ([`DeviceAttach::reason`], out), so that the
    /// toolstack can say what to do about it.
    pub enum DeviceRefusal: u32 {
        /// Accepted.
        None = 0,
        /// No switch of that name ([`DeviceAttach::bridge`]).
        NoSuchBridge = 1,
        /// No disk or partition of that name ([`DeviceAttach::target`]).
        NoSuchTarget = 2,
        /// The target (or a disk or partition overlapping it) is writable in the running
        /// domain [`DeviceAttach::conflict_domain`]; `w!` shares it on purpose.
        TargetInUse = 3,
        /// The domain already has a device of that kind with that id.
        DevidInUse = 4,
        /// The domain already has a vbd with that virtual device number.
        VdevInUse = 5,
        /// The domain has as many devices of that kind as it may.
        TooManyDevices = 6,
        /// A malformed field (a mode, type, multicast MAC, unknown flags).
        BadSpec = 7,
        /// The domain cannot take devices now (dying, or not yet built).
        DomainNotReady = 8,
        /// The target is read-only on the machine and `w` was asked.
        TargetReadOnly = 9,
    }
}

/// `DeviceAttach` payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct DeviceAttach {
    /// [`DEVICE_VIF`] or [`DEVICE_VBD`].
    pub kind: u32,
    /// The device id (vif `handle`, the vbd's xenstore index; in, or [`DEVID_AUTO`]),
    /// the one given (out). For a vbd the toolstack passes the virtual device number,
    /// as xl does.
    pub devid: u32,
    /// Out: a [`DeviceRefusal`] when the call fails with a reason the user can act on.
    pub reason: u32,
    /// Out, with [`DeviceRefusal::TargetInUse`]: the domain holding the target.
    pub conflict_domain: DomId,
    pub _pad: u16,
    /// vif: its MAC address (unicast).
    pub mac: [u8; 6],
    pub _pad2: [u8; 2],
    /// vif: the switch to plug it into (`xenbr0`), NUL-padded.
    pub bridge: [u8; BRIDGE_NAME_MAX],
    /// vbd: the `phy:` target (`vda`, `vda2`), NUL-padded.
    pub target: [u8; TARGET_NAME_MAX],
    /// vbd: the guest's name for it (`xvda`, `sdb`), NUL-padded.
    pub vdev_name: [u8; VDEV_NAME_MAX],
    /// vbd: the virtual device number (`virtual-device`: xvda is 51712).
    pub vdev: u32,
    /// vbd: a `VBD_MODE_*`.
    pub mode: u32,
    /// vbd: a `VBD_TYPE_*`.
    pub device_type: u32,
    /// Reserved, zero.
    pub flags: u32,
}

assert_layout!(
    DeviceAttach,
    size = 104,
    align = 4,
    kind = 0,
    devid = 4,
    reason = 8,
    conflict_domain = 12,
    mac = 16,
    bridge = 24,
    target = 40,
    vdev_name = 72,
    vdev = 88,
    mode = 92,
    device_type = 96,
    flags = 100
);

/// [`DeviceDetach::flags`]: remove the device at once, whatever its frontend does (what
/// `xl *-detach --force` does; the frontend sees its backend vanish).
pub const DETACH_FORCE: u32 = 1;

/// `DeviceDetach` payload.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct DeviceDetach {
    /// [`DEVICE_VIF`] or [`DEVICE_VBD`].
    pub kind: u32,
    pub devid: u32,
    /// `DETACH_*`.
    pub flags: u32,
}

assert_layout!(
    DeviceDetach,
    size = 12,
    align = 4,
    kind = 0,
    devid = 4,
    flags = 8
);

/// `ListDevices` payload (also the shape of the other list calls below).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ListDevices {
    /// Room in `buffer`, in entries (in).
    pub max_entries: u32,
    /// Entries written (out).
    pub nr_entries: u32,
    pub buffer: GuestHandle,
}

assert_layout!(
    ListDevices,
    size = 16,
    align = 8,
    max_entries = 0,
    nr_entries = 4,
    buffer = 8
);

/// `ListDisks` payload.
pub type ListDisks = ListDevices;
/// `ListSwitchPorts` payload.
pub type ListSwitchPorts = ListDevices;

/// One entry of [`ListDevices`].
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct DeviceInfo {
    /// [`DEVICE_VIF`] or [`DEVICE_VBD`].
    pub kind: u32,
    pub devid: u32,
    /// xenbus states (`XenbusState*`: 1 Initialising … 6 Closed) of both ends.
    pub backend_state: u32,
    pub frontend_state: u32,
    /// The frontend's event channel port (0 until connected).
    pub evtchn: u32,
    /// The first ring grant references (vif: tx, rx; vbd: ring-ref0, unused).
    pub ring_ref: [u32; 2],
    /// vbd: `VBD_MODE_*`, `VBD_TYPE_*` and the virtual device number.
    pub mode: u32,
    pub device_type: u32,
    pub vdev: u32,
    /// vif: MAC address.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// vif: switch; vbd: `phy:` target; NUL-padded.
    pub bridge: [u8; BRIDGE_NAME_MAX],
    pub target: [u8; TARGET_NAME_MAX],
    pub vdev_name: [u8; VDEV_NAME_MAX],
    /// Requests (vbd) or packets (vif) served, and refused as malformed.
    pub requests: u64,
    pub errors: u64,
}

assert_layout!(
    DeviceInfo,
    size = 128,
    align = 8,
    kind = 0,
    devid = 4,
    backend_state = 8,
    frontend_state = 12,
    evtchn = 16,
    ring_ref = 20,
    mode = 28,
    device_type = 32,
    vdev = 36,
    mac = 40,
    bridge = 48,
    target = 64,
    vdev_name = 96,
    requests = 112,
    errors = 120
);

/// [`DiskInfo::flags`]: the disk refuses writes.
pub const DISK_READ_ONLY: u32 = 1 << 0;
/// It supports discard.
pub const DISK_DISCARD: u32 = 1 << 1;
/// It has a volatile write cache (flushes mean something).
pub const DISK_FLUSH: u32 = 1 << 2;
/// This entry is a partition of the disk [`DiskInfo::parent`] names.
pub const DISK_PARTITION: u32 = 1 << 3;

/// One entry of [`ListDisks`]: a disk or a partition.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct DiskInfo {
    /// `vda`, `vda1`, NUL-padded.
    pub name: [u8; TARGET_NAME_MAX],
    /// The whole disk's name for a partition, else empty.
    pub parent: [u8; TARGET_NAME_MAX],
    /// First sector on the disk (0 for a disk) and length, in 512-byte sectors.
    pub start_sector: u64,
    pub sectors: u64,
    /// The disk's logical block size in bytes.
    pub sector_size: u32,
    /// `DISK_*`.
    pub flags: u32,
    /// Running domains that have it attached writable (`w` or `w!`), and read-only.
    pub writers: u32,
    pub readers: u32,
}

assert_layout!(
    DiskInfo,
    size = 96,
    align = 8,
    name = 0,
    parent = 32,
    start_sector = 64,
    sectors = 72,
    sector_size = 80,
    flags = 84,
    writers = 88,
    readers = 92
);

/// [`SwitchPort::kind`]: a domain's vif.
pub const PORT_VIF: u32 = 1;
/// The machine's NIC (the uplink).
pub const PORT_UPLINK: u32 = 2;

/// One entry of [`ListSwitchPorts`]; counters as seen from the switch (`rx`: frames the
/// switch received from the port, `tx`: frames it sent to the port).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SwitchPort {
    /// The switch (`xenbr0`) and the port (`vif3.0`, `eth0` for the uplink).
    pub bridge: [u8; BRIDGE_NAME_MAX],
    pub name: [u8; BRIDGE_NAME_MAX],
    /// `PORT_*`.
    pub kind: u32,
    /// The vif's domain and device id.
    pub domid: DomId,
    pub _pad: u16,
    pub devid: u32,
    /// MAC addresses learned on this port.
    pub learned: u32,
    pub mac: [u8; 6],
    pub _pad2: [u8; 2],
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_drops: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_drops: u64,
}

assert_layout!(
    SwitchPort,
    size = 104,
    align = 8,
    bridge = 0,
    name = 16,
    kind = 32,
    domid = 36,
    devid = 40,
    learned = 44,
    mac = 48,
    rx_packets = 56,
    rx_bytes = 64,
    rx_drops = 72,
    tx_packets = 80,
    tx_bytes = 88,
    tx_drops = 96
);

/// A NUL-padded fixed-size string field's bytes (names of bridges, targets, devices).
pub fn padded_str<const N: usize>(field: &[u8; N]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(N);
    &field[..end]
}

/// Fills a NUL-padded field from `s`; `None` when it does not fit with room for none.
pub fn set_padded<const N: usize>(field: &mut [u8; N], s: &[u8]) -> Option<()> {
    if s.len() > N || s.contains(&0) {
        return None;
    }
    *field = [0; N];
    field[..s.len()].copy_from_slice(s);
    Some(())
}

// Every payload fits its request.
const _: () = {
    assert!(core::mem::size_of::<CreateDomain>() <= DOMCTL_PAYLOAD);
    assert!(core::mem::size_of::<DomainInfo>() <= DOMCTL_PAYLOAD);
    assert!(core::mem::size_of::<BuildPv>() <= DOMCTL_PAYLOAD);
    assert!(core::mem::size_of::<ConsoleIo>() <= DOMCTL_PAYLOAD);
    assert!(core::mem::size_of::<RenameDomain>() <= DOMCTL_PAYLOAD);
    assert!(core::mem::size_of::<VcpuState>() <= DOMCTL_PAYLOAD);
    assert!(core::mem::size_of::<PhysInfo>() <= SYSCTL_PAYLOAD);
    assert!(core::mem::size_of::<ListDomains>() <= SYSCTL_PAYLOAD);
    assert!(core::mem::size_of::<ReadLog>() <= SYSCTL_PAYLOAD);
    assert!(core::mem::size_of::<DeviceAttach>() <= DOMCTL_PAYLOAD);
    assert!(core::mem::size_of::<DeviceDetach>() <= DOMCTL_PAYLOAD);
    assert!(core::mem::size_of::<ListDevices>() <= DOMCTL_PAYLOAD);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let c = CreateDomain {
            uuid: [7; 16],
            name: [0; DOMAIN_NAME_MAX],
            max_pages: 4096,
            max_vcpus: 2,
            flags: 0,
        };
        let d = Domctl::new(DomctlCmd::CreateDomain, 0, &c);
        assert_eq!(d.interface_version, FV_CONTROL_INTERFACE_VERSION);
        assert_eq!(d.cmd, 1);
        let back: CreateDomain = d.payload();
        assert_eq!(
            (back.uuid, back.max_pages, back.max_vcpus),
            ([7; 16], 4096, 2)
        );
        assert!(d.payload[core::mem::size_of::<CreateDomain>()..]
            .iter()
            .all(|&b| b == 0));
    }

    #[test]
    fn names_stop_at_nul() {
        let mut n = [0u8; DOMAIN_NAME_MAX];
        n[..5].copy_from_slice(b"guest");
        assert_eq!(name_bytes(&n), b"guest");
        assert_eq!(name_bytes(&[b'x'; DOMAIN_NAME_MAX]).len(), DOMAIN_NAME_MAX);
    }

    #[test]
    fn unknown_commands_do_not_decode() {
        assert!(DomctlCmd::try_from(0u32).is_err());
        assert!(SysctlCmd::try_from(99u32).is_err());
        assert_eq!(DomctlCmd::try_from(8u32), Ok(DomctlCmd::BuildPv));
    }
}
