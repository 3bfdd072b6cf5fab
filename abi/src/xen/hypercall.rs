//! Hypercall numbers (`__HYPERVISOR_*`, `xen.h`; `__HYPERVISOR_mca` from
//! `arch-x86/xen-mca.h`).
//!
//! A 64-bit PV guest puts the number in `rax` (through its hypercall page) and up to six
//! arguments in `rdi`, `rsi`, `rdx`, `r10`, `r8`, `r9`; the result comes back in `rax`,
//! negative errnos for failures.

/// Number of arguments a hypercall takes at most (also `multicall_entry.args`).
pub const MAX_HYPERCALL_ARGS: usize = 6;

/// Size of one stub in the hypercall page: hypercall `n` is called at `page + n * 32`
/// (`arch-x86/xen-x86_64.h`).
pub const HYPERCALL_STUB_SIZE: usize = 32;

xen_enum! {
    /// A hypercall number (`__HYPERVISOR_*`). Numbers the headers leave unassigned (11, 43..47,
    /// the architecture slots other than `mca`) are unknown, hence `-ENOSYS`.
    pub enum Hypercall: u64 {
        SetTrapTable = 0,
        MmuUpdate = 1,
        SetGdt = 2,
        StackSwitch = 3,
        SetCallbacks = 4,
        FpuTaskswitch = 5,
        /// Pre-3.0.2 `sched_op(cmd, arg)` (yield, block, shutdown only).
        SchedOpCompat = 6,
        PlatformOp = 7,
        SetDebugreg = 8,
        GetDebugreg = 9,
        UpdateDescriptor = 10,
        MemoryOp = 12,
        Multicall = 13,
        UpdateVaMapping = 14,
        SetTimerOp = 15,
        /// Pre-3.2.2 `event_channel_op(struct evtchn_op *)`.
        EventChannelOpCompat = 16,
        XenVersion = 17,
        ConsoleIo = 18,
        /// Pre-3.2.2 `physdev_op(struct physdev_op *)`.
        PhysdevOpCompat = 19,
        GrantTableOp = 20,
        VmAssist = 21,
        UpdateVaMappingOtherdomain = 22,
        Iret = 23,
        VcpuOp = 24,
        SetSegmentBase = 25,
        MmuextOp = 26,
        XsmOp = 27,
        NmiOp = 28,
        SchedOp = 29,
        CallbackOp = 30,
        XenoprofOp = 31,
        EventChannelOp = 32,
        PhysdevOp = 33,
        HvmOp = 34,
        Sysctl = 35,
        Domctl = 36,
        KexecOp = 37,
        TmemOp = 38,
        ArgoOp = 39,
        XenpmuOp = 40,
        DmOp = 41,
        HypfsOp = 42,
        /// `__HYPERVISOR_arch_0` on x86: machine-check operations.
        Mca = 48,
    }
}

/// First architecture-specific hypercall number (`__HYPERVISOR_arch_0`).
pub const HYPERVISOR_ARCH_0: u64 = 48;
/// Last architecture-specific hypercall number (`__HYPERVISOR_arch_7`).
pub const HYPERVISOR_ARCH_7: u64 = 55;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::UnknownNumber;

    #[test]
    fn round_trip() {
        for &h in Hypercall::ALL {
            assert_eq!(Hypercall::try_from(h.raw()), Ok(h));
            assert_eq!(u64::from(h), h.raw());
        }
        assert_eq!(Hypercall::ALL.len(), 43);
    }

    #[test]
    fn known_numbers() {
        assert_eq!(Hypercall::try_from(0u64), Ok(Hypercall::SetTrapTable));
        assert_eq!(Hypercall::try_from(17u64), Ok(Hypercall::XenVersion));
        assert_eq!(Hypercall::try_from(18u64), Ok(Hypercall::ConsoleIo));
        assert_eq!(Hypercall::try_from(23u64), Ok(Hypercall::Iret));
        assert_eq!(Hypercall::try_from(29u64), Ok(Hypercall::SchedOp));
        assert_eq!(Hypercall::try_from(32u64), Ok(Hypercall::EventChannelOp));
        assert_eq!(Hypercall::try_from(HYPERVISOR_ARCH_0), Ok(Hypercall::Mca));
    }

    #[test]
    fn unknown_numbers_rejected() {
        for n in [
            11u64,
            43,
            47,
            49,
            HYPERVISOR_ARCH_7,
            56,
            64,
            u64::MAX,
            1 << 32,
        ] {
            assert_eq!(Hypercall::try_from(n), Err(UnknownNumber(n)));
        }
    }
}
