//! Event channels (`event_channel.h`): `event_channel_op(cmd, arg)`, the argument of each
//! command, and the 2-level and FIFO ABI sizes.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{DomId, EvtchnPort};

xen_enum! {
    /// `event_channel_op` commands (`EVTCHNOP_*`).
    pub enum EvtchnOp: u32 {
        /// arg is an [`EvtchnBindInterdomain`].
        BindInterdomain = 0,
        /// arg is an [`EvtchnBindVirq`].
        BindVirq = 1,
        /// arg is an [`EvtchnBindPirq`].
        BindPirq = 2,
        /// arg is an [`EvtchnClose`].
        Close = 3,
        /// arg is an [`EvtchnSend`].
        Send = 4,
        /// arg is an [`EvtchnStatus`].
        Status = 5,
        /// arg is an [`EvtchnAllocUnbound`].
        AllocUnbound = 6,
        /// arg is an [`EvtchnBindIpi`].
        BindIpi = 7,
        /// arg is an [`EvtchnBindVcpu`].
        BindVcpu = 8,
        /// arg is an [`EvtchnUnmask`].
        Unmask = 9,
        /// arg is an [`EvtchnReset`].
        Reset = 10,
        /// arg is an [`EvtchnInitControl`] (FIFO ABI).
        InitControl = 11,
        /// arg is an [`EvtchnExpandArray`] (FIFO ABI).
        ExpandArray = 12,
        /// arg is an [`EvtchnSetPriority`] (FIFO ABI).
        SetPriority = 13,
    }
}

/// Ports of the 2-level ABI on x86-64: one bit per port in `shared_info`'s 64 words of
/// 64 bits (`EVTCHN_2L_NR_CHANNELS`).
pub const EVTCHN_2L_NR_CHANNELS: u32 = 64 * 64;

/// `EVTCHNOP_alloc_unbound` argument (`struct evtchn_alloc_unbound`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EvtchnAllocUnbound {
    pub dom: DomId,
    /// The domain allowed to bind the other end.
    pub remote_dom: DomId,
    /// Out.
    pub port: EvtchnPort,
}

assert_layout!(
    EvtchnAllocUnbound,
    size = 8,
    align = 4,
    dom = 0,
    remote_dom = 2,
    port = 4
);

/// `EVTCHNOP_bind_interdomain` argument (`struct evtchn_bind_interdomain`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EvtchnBindInterdomain {
    pub remote_dom: DomId,
    pub _cpad0: u16,
    pub remote_port: EvtchnPort,
    /// Out.
    pub local_port: EvtchnPort,
}

assert_layout!(
    EvtchnBindInterdomain,
    size = 12,
    align = 4,
    remote_dom = 0,
    remote_port = 4,
    local_port = 8,
);

/// `EVTCHNOP_bind_virq` argument (`struct evtchn_bind_virq`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EvtchnBindVirq {
    /// A `Virq`.
    pub virq: u32,
    pub vcpu: u32,
    /// Out.
    pub port: EvtchnPort,
}

assert_layout!(
    EvtchnBindVirq,
    size = 12,
    align = 4,
    virq = 0,
    vcpu = 4,
    port = 8
);

/// Set in `evtchn_bind_pirq.flags`: the IRQ may be shared with other domains.
pub const BIND_PIRQ__WILL_SHARE: u32 = 1;

/// `EVTCHNOP_bind_pirq` argument (`struct evtchn_bind_pirq`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EvtchnBindPirq {
    pub pirq: u32,
    /// `BIND_PIRQ__*`.
    pub flags: u32,
    /// Out.
    pub port: EvtchnPort,
}

assert_layout!(
    EvtchnBindPirq,
    size = 12,
    align = 4,
    pirq = 0,
    flags = 4,
    port = 8
);

/// `EVTCHNOP_bind_ipi` argument (`struct evtchn_bind_ipi`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EvtchnBindIpi {
    pub vcpu: u32,
    /// Out.
    pub port: EvtchnPort,
}

assert_layout!(EvtchnBindIpi, size = 8, align = 4, vcpu = 0, port = 4);

/// `EVTCHNOP_close` argument (`struct evtchn_close`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EvtchnClose {
    pub port: EvtchnPort,
}

assert_layout!(EvtchnClose, size = 4, align = 4, port = 0);

/// `EVTCHNOP_send` argument (`struct evtchn_send`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EvtchnSend {
    pub port: EvtchnPort,
}

assert_layout!(EvtchnSend, size = 4, align = 4, port = 0);

// `evtchn_status.status` (`EVTCHNSTAT_*`).
pub const EVTCHNSTAT_CLOSED: u32 = 0;
pub const EVTCHNSTAT_UNBOUND: u32 = 1;
pub const EVTCHNSTAT_INTERDOMAIN: u32 = 2;
pub const EVTCHNSTAT_PIRQ: u32 = 3;
pub const EVTCHNSTAT_VIRQ: u32 = 4;
pub const EVTCHNSTAT_IPI: u32 = 5;

/// `EVTCHNOP_status` argument (`struct evtchn_status`). `u` is a union selected by
/// `status`; see the accessors.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EvtchnStatus {
    pub dom: DomId,
    pub _cpad0: u16,
    pub port: EvtchnPort,
    /// Out: `EVTCHNSTAT_*`.
    pub status: u32,
    /// Out: the vCPU notified.
    pub vcpu: u32,
    /// Out: `unbound { dom }`, `interdomain { dom, port }`, `pirq` or `virq`.
    pub u: [u32; 2],
}

assert_layout!(
    EvtchnStatus,
    size = 24,
    align = 4,
    dom = 0,
    port = 4,
    status = 8,
    vcpu = 12,
    u = 16,
);

impl EvtchnStatus {
    /// `u.unbound.dom` or `u.interdomain.dom`.
    pub const fn u_dom(&self) -> DomId {
        self.u[0] as DomId
    }

    /// `u.interdomain.port`.
    pub const fn u_port(&self) -> EvtchnPort {
        self.u[1]
    }

    /// `u.pirq` or `u.virq`.
    pub const fn u_irq(&self) -> u32 {
        self.u[0]
    }

    /// Sets `u.unbound`.
    pub fn set_unbound(&mut self, dom: DomId) {
        self.u = [dom as u32, 0];
    }

    /// Sets `u.interdomain`.
    pub fn set_interdomain(&mut self, dom: DomId, port: EvtchnPort) {
        self.u = [dom as u32, port];
    }

    /// Sets `u.pirq` or `u.virq`.
    pub fn set_irq(&mut self, irq: u32) {
        self.u = [irq, 0];
    }
}

/// `EVTCHNOP_bind_vcpu` argument (`struct evtchn_bind_vcpu`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EvtchnBindVcpu {
    pub port: EvtchnPort,
    pub vcpu: u32,
}

assert_layout!(EvtchnBindVcpu, size = 8, align = 4, port = 0, vcpu = 4);

/// `EVTCHNOP_unmask` argument (`struct evtchn_unmask`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EvtchnUnmask {
    pub port: EvtchnPort,
}

assert_layout!(EvtchnUnmask, size = 4, align = 4, port = 0);

/// `EVTCHNOP_reset` argument (`struct evtchn_reset`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EvtchnReset {
    pub dom: DomId,
}

assert_layout!(EvtchnReset, size = 2, align = 2, dom = 0);

/// `EVTCHNOP_init_control` argument (`struct evtchn_init_control`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EvtchnInitControl {
    pub control_gfn: u64,
    pub offset: u32,
    pub vcpu: u32,
    /// Out.
    pub link_bits: u8,
    pub _pad: [u8; 7],
}

assert_layout!(
    EvtchnInitControl,
    size = 24,
    align = 8,
    control_gfn = 0,
    offset = 8,
    vcpu = 12,
    link_bits = 16,
    _pad = 17,
);

/// `EVTCHNOP_expand_array` argument (`struct evtchn_expand_array`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EvtchnExpandArray {
    pub array_gfn: u64,
}

assert_layout!(EvtchnExpandArray, size = 8, align = 8, array_gfn = 0);

/// `EVTCHNOP_set_priority` argument (`struct evtchn_set_priority`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EvtchnSetPriority {
    pub port: EvtchnPort,
    pub priority: u32,
}

assert_layout!(
    EvtchnSetPriority,
    size = 8,
    align = 4,
    port = 0,
    priority = 4
);

// FIFO ABI (`event_channel.h`).
pub const EVTCHN_FIFO_PRIORITY_MAX: u32 = 0;
pub const EVTCHN_FIFO_PRIORITY_DEFAULT: u32 = 7;
pub const EVTCHN_FIFO_PRIORITY_MIN: u32 = 15;
pub const EVTCHN_FIFO_MAX_QUEUES: usize = EVTCHN_FIFO_PRIORITY_MIN as usize + 1;
/// Bit numbers in an event word.
pub const EVTCHN_FIFO_PENDING: u32 = 31;
pub const EVTCHN_FIFO_MASKED: u32 = 30;
pub const EVTCHN_FIFO_LINKED: u32 = 29;
pub const EVTCHN_FIFO_BUSY: u32 = 28;
pub const EVTCHN_FIFO_LINK_BITS: u32 = 17;
pub const EVTCHN_FIFO_LINK_MASK: u32 = (1 << EVTCHN_FIFO_LINK_BITS) - 1;
pub const EVTCHN_FIFO_NR_CHANNELS: u32 = 1 << EVTCHN_FIFO_LINK_BITS;

/// Per-vCPU FIFO control block (`struct evtchn_fifo_control_block`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct EvtchnFifoControlBlock {
    pub ready: u32,
    pub _rsvd: u32,
    pub head: [u32; EVTCHN_FIFO_MAX_QUEUES],
}

assert_layout!(
    EvtchnFifoControlBlock,
    size = 72,
    align = 4,
    ready = 0,
    _rsvd = 4,
    head = 8
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::{xen::Virq, UnknownNumber};

    #[test]
    fn round_trips() {
        for &op in EvtchnOp::ALL {
            assert_eq!(EvtchnOp::try_from(op.raw()), Ok(op));
            assert_eq!(EvtchnOp::try_from(u64::from(op.raw())), Ok(op));
        }
        assert_eq!(EvtchnOp::try_from(4u32), Ok(EvtchnOp::Send));
        assert_eq!(EvtchnOp::try_from(9u32), Ok(EvtchnOp::Unmask));
        // EVTCHNOP_reset_cont (14) is hypervisor-internal.
        assert_eq!(EvtchnOp::try_from(14u32), Err(UnknownNumber(14)));
        assert_eq!(EVTCHN_2L_NR_CHANNELS, 4096);
        assert_eq!(EVTCHN_FIFO_NR_CHANNELS, 1 << 17);
    }

    #[test]
    fn bind_virq_bytes() {
        let bytes = [0u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        let mut b = EvtchnBindVirq::read_from_bytes(&bytes).unwrap();
        assert_eq!(Virq::try_from(b.virq), Ok(Virq::Timer));
        assert_eq!(b.vcpu, 1);
        b.port = 5;
        assert_eq!(&b.as_bytes()[8..], &[5, 0, 0, 0]);
    }

    #[test]
    fn status_union() {
        let mut st = EvtchnStatus {
            dom: 0x7ff0,
            _cpad0: 0,
            port: 3,
            status: EVTCHNSTAT_INTERDOMAIN,
            vcpu: 0,
            u: [0; 2],
        };
        st.set_interdomain(1, 42);
        assert_eq!(&st.as_bytes()[16..], &[1, 0, 0, 0, 42, 0, 0, 0]);
        assert_eq!((st.u_dom(), st.u_port()), (1, 42));
        st.set_irq(7);
        assert_eq!(st.u_irq(), 7);
    }
}
