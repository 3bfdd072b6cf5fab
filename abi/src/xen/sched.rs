//! Scheduler operations (`sched.h`): `sched_op(cmd, arg)`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{DomId, GuestHandle};

xen_enum! {
    /// `sched_op` commands (`SCHEDOP_*`).
    pub enum SchedOp: u32 {
        /// Give up the CPU; arg is null.
        Yield = 0,
        /// Sleep until an event arrives, atomically unmasking events first; arg is null.
        Block = 1,
        /// Stop the whole domain; arg is a [`SchedShutdown`]. With `Suspend`, `rdx` holds the
        /// start-info MFN.
        Shutdown = 2,
        /// Wait for one of a set of ports; arg is a [`SchedPoll`].
        Poll = 3,
        /// Shut another domain down; arg is a [`SchedRemoteShutdown`].
        RemoteShutdown = 4,
        /// Record the reason a later shutdown reports; arg is a [`SchedShutdown`].
        ShutdownCode = 5,
        /// Domain watchdog; arg is a [`SchedWatchdog`].
        Watchdog = 6,
        /// Hardware domain only; arg is a [`SchedPinOverride`].
        PinOverride = 7,
    }
}

xen_enum! {
    /// Shutdown reasons (`SHUTDOWN_*`), reported to the toolstack.
    pub enum ShutdownReason: u32 {
        Poweroff = 0,
        Reboot = 1,
        Suspend = 2,
        Crash = 3,
        Watchdog = 4,
        SoftReset = 5,
    }
}

/// Largest valid shutdown reason (`SHUTDOWN_MAX`).
pub const SHUTDOWN_MAX: u32 = 5;

/// `SCHEDOP_shutdown`/`SCHEDOP_shutdown_code` argument (`struct sched_shutdown`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SchedShutdown {
    /// A [`ShutdownReason`].
    pub reason: u32,
}

assert_layout!(SchedShutdown, size = 4, align = 4, reason = 0);

/// `SCHEDOP_poll` argument (`struct sched_poll`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SchedPoll {
    /// Array of `evtchn_port_t`.
    pub ports: GuestHandle,
    pub nr_ports: u32,
    pub _cpad0: u32,
    /// Absolute system time (ns) to give up at; 0 waits forever.
    pub timeout: u64,
}

assert_layout!(
    SchedPoll,
    size = 24,
    align = 8,
    ports = 0,
    nr_ports = 8,
    timeout = 16
);

/// `SCHEDOP_remote_shutdown` argument (`struct sched_remote_shutdown`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SchedRemoteShutdown {
    pub domain_id: DomId,
    pub _cpad0: u16,
    pub reason: u32,
}

assert_layout!(
    SchedRemoteShutdown,
    size = 8,
    align = 4,
    domain_id = 0,
    reason = 4
);

/// `SCHEDOP_watchdog` argument (`struct sched_watchdog`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SchedWatchdog {
    pub id: u32,
    /// Seconds.
    pub timeout: u32,
}

assert_layout!(SchedWatchdog, size = 8, align = 4, id = 0, timeout = 4);

/// `SCHEDOP_pin_override` argument (`struct sched_pin_override`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SchedPinOverride {
    /// Negative undoes the override.
    pub pcpu: i32,
}

assert_layout!(SchedPinOverride, size = 4, align = 4, pcpu = 0);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::UnknownNumber;

    #[test]
    fn round_trips() {
        for &op in SchedOp::ALL {
            assert_eq!(SchedOp::try_from(op.raw()), Ok(op));
            assert_eq!(SchedOp::try_from(u64::from(op.raw())), Ok(op));
        }
        for &r in ShutdownReason::ALL {
            assert_eq!(ShutdownReason::try_from(r.raw()), Ok(r));
        }
        assert_eq!(
            ShutdownReason::ALL.last().map(|r| r.raw()),
            Some(SHUTDOWN_MAX)
        );
        assert_eq!(SchedOp::try_from(8u32), Err(UnknownNumber(8)));
        assert_eq!(ShutdownReason::try_from(6u32), Err(UnknownNumber(6)));
    }

    #[test]
    fn poll_bytes() {
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&0xffff_c900_0000_0010u64.to_le_bytes());
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        bytes[16..].copy_from_slice(&1_000_000u64.to_le_bytes());
        let poll = SchedPoll::read_from_bytes(&bytes).unwrap();
        assert_eq!(poll.ports.addr(), 0xffff_c900_0000_0010);
        assert_eq!(poll.nr_ports, 2);
        assert_eq!(poll.timeout, 1_000_000);
        assert_eq!(poll.as_bytes(), &bytes);
    }
}
