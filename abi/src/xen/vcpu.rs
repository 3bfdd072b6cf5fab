//! Per-vCPU operations (`vcpu.h`): `vcpu_op(cmd, vcpuid, extra_arg)`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::GuestHandle;

xen_enum! {
    /// `vcpu_op` commands (`VCPUOP_*`).
    pub enum VcpuOp: u32 {
        /// Set up a down vCPU's initial state; arg is a `VcpuGuestContext`.
        Initialise = 0,
        /// Make an initialised vCPU runnable.
        Up = 1,
        /// Make a vCPU non-runnable.
        Down = 2,
        /// Returns 1 if the vCPU is up.
        IsUp = 3,
        /// arg is a [`VcpuRunstateInfo`] to fill.
        GetRunstateInfo = 4,
        /// arg is a [`VcpuRegisterRunstateMemoryArea`].
        RegisterRunstateMemoryArea = 5,
        /// arg is a [`VcpuSetPeriodicTimer`].
        SetPeriodicTimer = 6,
        StopPeriodicTimer = 7,
        /// arg is a [`VcpuSetSingleshotTimer`].
        SetSingleshotTimer = 8,
        StopSingleshotTimer = 9,
        /// arg is a [`VcpuRegisterVcpuInfo`]; once per vCPU.
        RegisterVcpuInfo = 10,
        SendNmi = 11,
        /// arg is a [`VcpuGetPhysid`].
        GetPhysid = 12,
        /// arg is a [`VcpuRegisterTimeMemoryArea`].
        RegisterVcpuTimeMemoryArea = 13,
    }
}

xen_enum! {
    /// `vcpu_runstate_info.state` (`RUNSTATE_*`); also the index into `time`.
    pub enum RunState: i32 {
        Running = 0,
        Runnable = 1,
        Blocked = 2,
        Offline = 3,
    }
}

/// Set in `state_entry_time` while the hypervisor updates a registered runstate area
/// (with `VMASST_TYPE_runstate_update_flag`).
pub const XEN_RUNSTATE_UPDATE: u64 = 1 << 63;

/// A vCPU's run state and time accounting (`struct vcpu_runstate_info`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VcpuRunstateInfo {
    /// A [`RunState`].
    pub state: i32,
    pub _cpad0: u32,
    /// System time (ns) the state was entered.
    pub state_entry_time: u64,
    /// Nanoseconds spent in each [`RunState`].
    pub time: [u64; 4],
}

assert_layout!(
    VcpuRunstateInfo,
    size = 48,
    align = 8,
    state = 0,
    state_entry_time = 8,
    time = 16,
);

/// `VCPUOP_register_runstate_memory_area` argument
/// (`struct vcpu_register_runstate_memory_area`): a guest virtual address on x86.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VcpuRegisterRunstateMemoryArea {
    /// Union of handle, pointer and `u64`: one address.
    pub addr: GuestHandle,
}

assert_layout!(
    VcpuRegisterRunstateMemoryArea,
    size = 8,
    align = 8,
    addr = 0
);

/// `VCPUOP_set_periodic_timer` argument (`struct vcpu_set_periodic_timer`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VcpuSetPeriodicTimer {
    pub period_ns: u64,
}

assert_layout!(VcpuSetPeriodicTimer, size = 8, align = 8, period_ns = 0);

/// Fail with `-ETIME` if the timeout is already past (`VCPU_SSHOTTMR_future`); a
/// hypervisor may ignore it.
pub const VCPU_SSHOTTMR_FUTURE: u32 = 1 << 0;

/// `VCPUOP_set_singleshot_timer` argument (`struct vcpu_set_singleshot_timer`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VcpuSetSingleshotTimer {
    /// Absolute system time in ns.
    pub timeout_abs_ns: u64,
    /// `VCPU_SSHOTTMR_*`.
    pub flags: u32,
    pub _cpad0: u32,
}

assert_layout!(
    VcpuSetSingleshotTimer,
    size = 16,
    align = 8,
    timeout_abs_ns = 0,
    flags = 8,
);

/// `VCPUOP_register_vcpu_info` argument (`struct vcpu_register_vcpu_info`): the 64-byte
/// `vcpu_info` moves to `mfn`'s page at `offset` and must not cross the page end.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VcpuRegisterVcpuInfo {
    /// Frame (a GFN for PV) holding the new `vcpu_info`.
    pub mfn: u64,
    pub offset: u32,
    pub rsvd: u32,
}

assert_layout!(
    VcpuRegisterVcpuInfo,
    size = 16,
    align = 8,
    mfn = 0,
    offset = 8,
    rsvd = 12
);

/// `VCPUOP_get_physid` argument (`struct vcpu_get_physid`): on x86 APIC id in bits 31:0,
/// ACPI id in bits 63:32.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VcpuGetPhysid {
    pub phys_id: u64,
}

assert_layout!(VcpuGetPhysid, size = 8, align = 8, phys_id = 0);

/// `VCPUOP_register_vcpu_time_memory_area` argument
/// (`struct vcpu_register_time_memory_area`): where to keep a copy of the vCPU's
/// `vcpu_time_info`.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VcpuRegisterTimeMemoryArea {
    pub addr: GuestHandle,
}

assert_layout!(VcpuRegisterTimeMemoryArea, size = 8, align = 8, addr = 0);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::UnknownNumber;

    #[test]
    fn round_trips() {
        for &op in VcpuOp::ALL {
            assert_eq!(VcpuOp::try_from(op.raw()), Ok(op));
            assert_eq!(VcpuOp::try_from(u64::from(op.raw())), Ok(op));
        }
        for &s in RunState::ALL {
            assert_eq!(RunState::try_from(s.raw()), Ok(s));
        }
        assert_eq!(VcpuOp::try_from(14u32), Err(UnknownNumber(14)));
        assert_eq!(RunState::try_from(4i32), Err(UnknownNumber(4)));
        assert!(RunState::try_from(-1i32).is_err());
    }

    #[test]
    fn singleshot_and_vcpu_info_bytes() {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&5_000_000_000u64.to_le_bytes());
        bytes[8] = 1;
        let t = VcpuSetSingleshotTimer::read_from_bytes(&bytes).unwrap();
        assert_eq!(t.timeout_abs_ns, 5_000_000_000);
        assert_eq!(t.flags, VCPU_SSHOTTMR_FUTURE);
        assert_eq!(t.as_bytes(), &bytes);

        let reg = VcpuRegisterVcpuInfo {
            mfn: 0x1234,
            offset: 0xfc0,
            rsvd: 0,
        };
        assert_eq!(
            reg.as_bytes(),
            &[0x34, 0x12, 0, 0, 0, 0, 0, 0, 0xc0, 0x0f, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn runstate_update_bit() {
        let info = VcpuRunstateInfo {
            state: RunState::Running.raw(),
            _cpad0: 0,
            state_entry_time: XEN_RUNSTATE_UPDATE | 42,
            time: [1, 2, 3, 4],
        };
        assert_eq!(info.state_entry_time & !XEN_RUNSTATE_UPDATE, 42);
        assert_eq!(
            &info.as_bytes()[8..16],
            &(XEN_RUNSTATE_UPDATE | 42).to_le_bytes()
        );
    }
}
