//! Event channels, 2-level ABI (`event_channel.h`, `xen.h`'s `shared_info`).
//!
//! Two halves, both free of hardware:
//! - [`EventChannels`], one per domain: the port table (what each port is bound to and
//!   which vCPU it notifies) and the `EVTCHNOP_*` state rules with Xen's errnos. It never
//!   touches guest memory; an operation that must also change another domain's table or
//!   the shared-info bits says so in what it returns.
//! - The bit rules of the 2-level ABI ([`set_pending`], [`unmask`], [`clear_pending`],
//!   [`poll_ready`]) over [`EventWords`], an abstract view of the `evtchn_pending` and
//!   `evtchn_mask` bitmaps in `shared_info` and the selector and upcall flags in each
//!   `vcpu_info`. The hypervisor implements it with atomic operations on the shared page
//!   (the guest changes the same words concurrently); the tests with plain cells.
//!
//! Ports of the hypervisor's own backends (console, xenstore) fit the same model: give
//! the hypervisor a table of its own under `DOMID_XEN` and bind its ports to the guest's
//! with [`bind_interdomain`]; a guest's `send` then names `DOMID_XEN` as the target.

use alloc::vec::Vec;

use ferrovisor_abi::{
    errno::XenErrno,
    xen::{
        event_channel::{
            EvtchnStatus, EVTCHNSTAT_CLOSED, EVTCHNSTAT_INTERDOMAIN, EVTCHNSTAT_IPI,
            EVTCHNSTAT_PIRQ, EVTCHNSTAT_UNBOUND, EVTCHNSTAT_VIRQ, EVTCHN_2L_NR_CHANNELS,
        },
        xen::{Virq, DOMID_XEN, NR_VIRQS},
        DomId,
    },
};

/// Ports a 64-bit guest can have under the 2-level ABI: one bit each in `shared_info`'s
/// 64 pending words of 64 bits.
pub const MAX_PORTS_2L: u32 = EVTCHN_2L_NR_CHANNELS;

/// Ports per pending/mask word and per selector bit (`BITS_PER_EVTCHN_WORD` on x86-64).
const BITS_PER_WORD: u32 = u64::BITS;

const VIRQ_SLOTS: usize = NR_VIRQS as usize;

/// What a port is bound to (Xen's `ECS_*` states).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Not in use (`EVTCHNSTAT_closed`). Port 0 always reads as free but is never handed
    /// out: Xen reserves it, and Linux treats port 0 as "no port".
    Free,
    /// Allocated, waiting for `remote` to bind to it (`EVTCHNSTAT_unbound`).
    Unbound { remote: DomId },
    /// Connected to `remote_port` of `remote` (`EVTCHNSTAT_interdomain`); `remote` is
    /// this table's own domain for a loopback channel.
    Interdomain { remote: DomId, remote_port: u32 },
    /// Bound to a virtual IRQ (`EVTCHNSTAT_virq`). `vcpu` is the vCPU it was bound on:
    /// always 0 for a global VIRQ, whose notify vCPU may later move with `bind_vcpu`.
    Virq { virq: u32, vcpu: u32 },
    /// A virtual IPI to `vcpu` (`EVTCHNSTAT_ipi`).
    Ipi { vcpu: u32 },
    /// A physical IRQ (`EVTCHNSTAT_pirq`). Never created: Ferrovisor offers no PIRQs, see
    /// [`EventChannels::bind_pirq`].
    Pirq { pirq: u32 },
}

/// Where an event sent with `EVTCHNOP_send` goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendTarget {
    /// A port of the sending domain itself (an IPI or a loopback channel): mark `port`
    /// pending for `vcpu` with [`set_pending`] on this domain's words.
    Local { vcpu: u32, port: u32 },
    /// A port of domain `dom`: look up its notify vCPU with that domain's
    /// [`EventChannels::notify_vcpu`], then [`set_pending`] on that domain's words.
    Remote { dom: DomId, port: u32 },
    /// The port is unbound: Xen drops the event silently and the hypercall succeeds.
    Dropped,
}

/// The other end of an interdomain channel, in another domain's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteEnd {
    pub dom: DomId,
    pub port: u32,
}

/// A port just closed, and what the caller must still do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed {
    /// The freed port. Clear its pending bit with [`clear_pending`] (Xen's `evtchn_free`
    /// does, so that a port reused later does not start with a stale event).
    pub port: u32,
    /// For an interdomain channel to another domain: its end, which the caller must put
    /// back in the unbound state with that domain's [`EventChannels::peer_closed`].
    /// (A loopback channel's other end is handled here.)
    pub peer: Option<RemoteEnd>,
}

/// A port and the vCPU it notifies: where a VIRQ is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventTarget {
    pub port: u32,
    pub vcpu: u32,
}

#[derive(Clone, Copy, Debug)]
struct Channel {
    state: PortState,
    /// `notify_vcpu_id`: 0 for a fresh or freed port (`event_channel.h`, bind_vcpu note 3).
    notify_vcpu: u32,
}

const FREE: Channel = Channel {
    state: PortState::Free,
    notify_vcpu: 0,
};

/// True for the VIRQs `xen.h` marks global ("G."): bound once per domain, on vCPU 0,
/// movable with `bind_vcpu`. The per-vCPU ones ("V.") are timer, debug, xenoprof and
/// xenpmu. Numbers below `NR_VIRQS` that name nothing are global, as in Xen (x86 treats
/// every `VIRQ_ARCH_*` as global).
pub fn virq_is_global(virq: u32) -> bool {
    !matches!(
        Virq::from_raw(u64::from(virq)),
        Some(Virq::Timer | Virq::Debug | Virq::Xenoprof | Virq::Xenpmu)
    )
}

/// One domain's event-channel ports.
///
/// Operations follow Xen's `event_channel.c` rules and errnos; resolving `DOMID_SELF`,
/// finding the remote domain (`-ESRCH`) and privilege checks (`-EPERM`) are the
/// caller's, as is every change to the shared-info bits.
pub struct EventChannels {
    dom: DomId,
    nr_vcpus: u32,
    /// Quota: ports are `0..nr_ports`.
    nr_ports: u32,
    /// Indexed by port, grown on demand; ports at or past the end are free.
    ports: Vec<Channel>,
    /// `virq_to_evtchn`, per vCPU (grown on demand); 0 means unbound. Global VIRQs live
    /// in vCPU 0's row whichever vCPU they notify, as in Xen.
    virqs: Vec<[u32; VIRQ_SLOTS]>,
    in_use: u32,
}

impl EventChannels {
    /// An empty table for domain `dom` with `nr_vcpus` vCPUs, allowing ports
    /// `0..nr_ports` (`nr_ports` is capped at [`MAX_PORTS_2L`]; port 0 is reserved, so a
    /// domain can bind at most `nr_ports - 1` ports). Allocates nothing until used.
    pub fn new(dom: DomId, nr_vcpus: u32, nr_ports: u32) -> Self {
        EventChannels {
            dom,
            nr_vcpus,
            nr_ports: nr_ports.min(MAX_PORTS_2L),
            ports: Vec::new(),
            virqs: Vec::new(),
            in_use: 0,
        }
    }

    /// The domain this table belongs to.
    pub const fn domid(&self) -> DomId {
        self.dom
    }

    /// The vCPUs ports may be bound to are `0..nr_vcpus`.
    pub const fn nr_vcpus(&self) -> u32 {
        self.nr_vcpus
    }

    /// The port quota: valid ports are `0..nr_ports`.
    pub const fn nr_ports(&self) -> u32 {
        self.nr_ports
    }

    /// Ports in use (not free); 0 after [`Self::reset`], which is how teardown checks
    /// that nothing leaked.
    pub const fn in_use(&self) -> u32 {
        self.in_use
    }

    /// Whether `port` is inside the quota (Xen's `port_is_valid`): `SCHEDOP_poll` and
    /// `EVTCHNOP_unmask` refuse other ports with `-EINVAL`.
    pub const fn is_valid_port(&self, port: u32) -> bool {
        port < self.nr_ports
    }

    /// What `port` is bound to; `None` outside the quota.
    pub fn state(&self, port: u32) -> Option<PortState> {
        self.is_valid_port(port).then(|| self.channel(port).state)
    }

    /// The vCPU `port` notifies; `None` outside the quota. A free port notifies vCPU 0,
    /// as in Xen (which is what `EVTCHNOP_unmask` of a free port uses).
    pub fn notify_vcpu(&self, port: u32) -> Option<u32> {
        self.is_valid_port(port)
            .then(|| self.channel(port).notify_vcpu)
    }

    /// Every port in use, in port order.
    pub fn bound_ports(&self) -> impl Iterator<Item = (u32, PortState)> + '_ {
        (0u32..)
            .zip(self.ports.iter())
            .filter(|(_, c)| c.state != PortState::Free)
            .map(|(p, c)| (p, c.state))
    }

    /// `EVTCHNOP_alloc_unbound`: a fresh port that `remote` (already resolved from
    /// `DOMID_SELF`; it may be this domain, for loopback) may bind to. `-ENOSPC` when the
    /// quota is used up.
    pub fn alloc_unbound(&mut self, remote: DomId) -> Result<u32, XenErrno> {
        let port = self.find_free_port()?;
        self.install(port, PortState::Unbound { remote }, 0);
        Ok(port)
    }

    /// `EVTCHNOP_bind_interdomain` with the calling domain as its own remote (loopback):
    /// `remote_port` must be a port of this table, unbound for this domain. For another
    /// domain use [`bind_interdomain`]. The same follow-up applies: mark the returned
    /// port pending.
    pub fn bind_loopback(&mut self, remote_port: u32) -> Result<u32, XenErrno> {
        let port = self.find_free_port()?;
        if !self.is_unbound_for(remote_port, self.dom) {
            return Err(XenErrno::Einval);
        }
        let dom = self.dom;
        self.install(
            port,
            PortState::Interdomain {
                remote: dom,
                remote_port,
            },
            0,
        );
        self.slot_mut(remote_port).state = PortState::Interdomain {
            remote: dom,
            remote_port: port,
        };
        Ok(port)
    }

    /// A port whose other end is one of the hypervisor's own backends (the xenstore or
    /// console service, numbered by the hypervisor): an interdomain channel to
    /// `DOMID_XEN`. The guest's `send` on it comes back as a [`SendTarget::Remote`] to
    /// `DOMID_XEN`; the guest may close it like any channel. Notifies vCPU 0.
    pub fn bind_backend(&mut self, service: u32) -> Result<u32, XenErrno> {
        let port = self.find_free_port()?;
        self.install(
            port,
            PortState::Interdomain {
                remote: DOMID_XEN,
                remote_port: service,
            },
            0,
        );
        Ok(port)
    }

    /// Connects the guest's `port`, which it allocated unbound for `DOMID_XEN` (a
    /// frontend's `alloc_unbound` with the backend id it read from xenstore), to the
    /// hypervisor backend `service`: what a backend domain's `bind_interdomain` does in
    /// Xen. `-EINVAL` unless the port is unbound for `DOMID_XEN`. The backend lets go of
    /// it with [`Self::peer_closed`]`(port, DOMID_XEN, service)`.
    pub fn connect_backend(&mut self, port: u32, service: u32) -> Result<(), XenErrno> {
        if !self.is_unbound_for(port, DOMID_XEN) {
            return Err(XenErrno::Einval);
        }
        self.slot_mut(port).state = PortState::Interdomain {
            remote: DOMID_XEN,
            remote_port: service,
        };
        Ok(())
    }

    /// `EVTCHNOP_bind_virq`. `-EINVAL` for a number at or past `NR_VIRQS` or a global
    /// VIRQ on a vCPU other than 0 (global ones bind on vCPU 0 and move with
    /// `bind_vcpu`), `-ENOENT` for a vCPU the domain lacks, `-EEXIST` when the VIRQ is
    /// already bound (per vCPU for per-vCPU VIRQs, per domain for global ones),
    /// `-ENOSPC` when the quota is used up. The port notifies `vcpu`.
    pub fn bind_virq(&mut self, virq: u32, vcpu: u32) -> Result<u32, XenErrno> {
        if virq >= NR_VIRQS || (virq_is_global(virq) && vcpu != 0) {
            return Err(XenErrno::Einval);
        }
        self.check_vcpu(vcpu)?;
        if self.virq_port(virq, vcpu).is_some() {
            return Err(XenErrno::Eexist);
        }
        let row = vcpu as usize;
        if self.virqs.len() <= row {
            let more = row + 1 - self.virqs.len();
            self.virqs.try_reserve(more).map_err(|_| XenErrno::Enomem)?;
            self.virqs.resize(row + 1, [0; VIRQ_SLOTS]);
        }
        let port = self.find_free_port()?;
        self.install(port, PortState::Virq { virq, vcpu }, vcpu);
        self.virqs[row][virq as usize] = port;
        Ok(port)
    }

    /// `EVTCHNOP_bind_ipi`: a port notifying `vcpu` (`-ENOENT` if the domain lacks it),
    /// which the domain signals with `send`. A vCPU may have many.
    pub fn bind_ipi(&mut self, vcpu: u32) -> Result<u32, XenErrno> {
        self.check_vcpu(vcpu)?;
        let port = self.find_free_port()?;
        self.install(port, PortState::Ipi { vcpu }, vcpu);
        Ok(port)
    }

    /// `EVTCHNOP_bind_pirq`: always `-EPERM`. Physical IRQs stay with the hypervisor,
    /// which owns the devices, so no domain has permission for any PIRQ.
    pub fn bind_pirq(&mut self, _pirq: u32) -> Result<u32, XenErrno> {
        Err(XenErrno::Eperm)
    }

    /// `EVTCHNOP_bind_vcpu`: make `port` notify `vcpu`. `-ENOENT` for a vCPU the domain
    /// lacks, `-EINVAL` for a port outside the quota or one whose vCPU is fixed: only
    /// unbound and interdomain ports and global VIRQs move (`event_channel.h`).
    pub fn bind_vcpu(&mut self, port: u32, vcpu: u32) -> Result<(), XenErrno> {
        self.check_vcpu(vcpu)?;
        if !self.is_valid_port(port) {
            return Err(XenErrno::Einval);
        }
        match self.channel(port).state {
            PortState::Unbound { .. } | PortState::Interdomain { .. } => {}
            PortState::Virq { virq, .. } if virq_is_global(virq) => {}
            _ => return Err(XenErrno::Einval),
        }
        self.slot_mut(port).notify_vcpu = vcpu;
        Ok(())
    }

    /// `EVTCHNOP_close`. `-EINVAL` for a port outside the quota, free, or port 0. The
    /// port becomes free and notifies vCPU 0 again; see [`Closed`] for what the caller
    /// must finish (the pending bit, the other domain's end).
    pub fn close(&mut self, port: u32) -> Result<Closed, XenErrno> {
        if port == 0 || !self.is_valid_port(port) {
            return Err(XenErrno::Einval);
        }
        let mut peer = None;
        match self.channel(port).state {
            PortState::Free => return Err(XenErrno::Einval),
            PortState::Unbound { .. } | PortState::Ipi { .. } | PortState::Pirq { .. } => {}
            PortState::Virq { virq, vcpu } => {
                if let Some(slot) = self
                    .virqs
                    .get_mut(vcpu as usize)
                    .and_then(|row| row.get_mut(virq as usize))
                {
                    *slot = 0;
                }
            }
            PortState::Interdomain {
                remote,
                remote_port,
            } => {
                if remote == self.dom {
                    let dom = self.dom;
                    self.peer_closed(remote_port, dom, port);
                } else {
                    peer = Some(RemoteEnd {
                        dom: remote,
                        port: remote_port,
                    });
                }
            }
        }
        *self.slot_mut(port) = FREE;
        self.in_use -= 1;
        Ok(Closed { port, peer })
    }

    /// The other end of `port`'s channel, `peer_port` of `peer_dom`, was closed: `port`
    /// goes back to waiting for `peer_dom` (unbound), keeping its notify vCPU, as Xen's
    /// close does. Returns false, changing nothing, if `port` is not that channel's end.
    pub fn peer_closed(&mut self, port: u32, peer_dom: DomId, peer_port: u32) -> bool {
        let expected = PortState::Interdomain {
            remote: peer_dom,
            remote_port: peer_port,
        };
        if !self.is_valid_port(port) || self.channel(port).state != expected {
            return false;
        }
        self.slot_mut(port).state = PortState::Unbound { remote: peer_dom };
        true
    }

    /// `EVTCHNOP_reset` (and domain teardown): closes every port, calling `on_closed`
    /// with each [`Closed`] for the caller to finish. Allocates nothing.
    pub fn reset_each(&mut self, mut on_closed: impl FnMut(Closed)) {
        for port in 1..self.ports.len() as u32 {
            if self.channel(port).state != PortState::Free {
                if let Ok(closed) = self.close(port) {
                    on_closed(closed);
                }
            }
        }
        self.ports = Vec::new();
        self.virqs = Vec::new();
    }

    /// [`Self::reset_each`], collecting what was closed.
    pub fn reset(&mut self) -> Vec<Closed> {
        let mut closed = Vec::new();
        self.reset_each(|c| closed.push(c));
        closed
    }

    /// `EVTCHNOP_send`: where the event goes. `-EINVAL` for a port outside the quota,
    /// free, or bound to a VIRQ or PIRQ (only the hypervisor raises those).
    pub fn send(&self, port: u32) -> Result<SendTarget, XenErrno> {
        if !self.is_valid_port(port) {
            return Err(XenErrno::Einval);
        }
        let chan = self.channel(port);
        match chan.state {
            PortState::Interdomain {
                remote,
                remote_port,
            } if remote == self.dom => Ok(SendTarget::Local {
                vcpu: self.channel(remote_port).notify_vcpu,
                port: remote_port,
            }),
            PortState::Interdomain {
                remote,
                remote_port,
            } => Ok(SendTarget::Remote {
                dom: remote,
                port: remote_port,
            }),
            PortState::Ipi { .. } => Ok(SendTarget::Local {
                vcpu: chan.notify_vcpu,
                port,
            }),
            PortState::Unbound { .. } => Ok(SendTarget::Dropped),
            PortState::Free | PortState::Virq { .. } | PortState::Pirq { .. } => {
                Err(XenErrno::Einval)
            }
        }
    }

    /// `EVTCHNOP_status`: `-EINVAL` outside the quota; a free port (port 0 included) is
    /// `EVTCHNSTAT_closed`. `vcpu` is the notify vCPU. The returned `dom` is this domain's
    /// id; Xen hands back the request's `dom` unchanged (possibly `DOMID_SELF`), so a
    /// caller copying the answer to the guest puts the request's value back.
    pub fn status(&self, port: u32) -> Result<EvtchnStatus, XenErrno> {
        if !self.is_valid_port(port) {
            return Err(XenErrno::Einval);
        }
        let chan = self.channel(port);
        let (status, u) = match chan.state {
            PortState::Free => (EVTCHNSTAT_CLOSED, [0, 0]),
            PortState::Unbound { remote } => (EVTCHNSTAT_UNBOUND, [u32::from(remote), 0]),
            PortState::Interdomain {
                remote,
                remote_port,
            } => (EVTCHNSTAT_INTERDOMAIN, [u32::from(remote), remote_port]),
            PortState::Pirq { pirq } => (EVTCHNSTAT_PIRQ, [pirq, 0]),
            PortState::Virq { virq, .. } => (EVTCHNSTAT_VIRQ, [virq, 0]),
            PortState::Ipi { .. } => (EVTCHNSTAT_IPI, [0, 0]),
        };
        Ok(EvtchnStatus {
            dom: self.dom,
            _cpad0: 0,
            port,
            status,
            vcpu: chan.notify_vcpu,
            u,
        })
    }

    /// The port bound to `virq` on `vcpu`. A global VIRQ has one binding per domain, so
    /// `vcpu` is ignored for it.
    pub fn virq_port(&self, virq: u32, vcpu: u32) -> Option<u32> {
        if virq >= NR_VIRQS {
            return None;
        }
        let row = if virq_is_global(virq) { 0 } else { vcpu };
        let port = *self.virqs.get(row as usize)?.get(virq as usize)?;
        (port != 0).then_some(port)
    }

    /// Where raising `virq` for `vcpu` delivers (the port and its notify vCPU, which for
    /// a global VIRQ may have moved from vCPU 0), or `None` if the domain never bound it.
    pub fn virq_target(&self, virq: u32, vcpu: u32) -> Option<EventTarget> {
        let port = self.virq_port(virq, vcpu)?;
        Some(EventTarget {
            port,
            vcpu: self.channel(port).notify_vcpu,
        })
    }

    /// The IPI ports notifying `vcpu` (Linux binds several per CPU).
    pub fn ipi_ports(&self, vcpu: u32) -> impl Iterator<Item = u32> + '_ {
        self.bound_ports()
            .filter(move |&(_, s)| s == PortState::Ipi { vcpu })
            .map(|(p, _)| p)
    }

    fn channel(&self, port: u32) -> Channel {
        self.ports.get(port as usize).copied().unwrap_or(FREE)
    }

    /// The slot of a port inside the table; only called for ports in use or just
    /// returned by [`Self::find_free_port`], which made room for them.
    fn slot_mut(&mut self, port: u32) -> &mut Channel {
        &mut self.ports[port as usize]
    }

    fn check_vcpu(&self, vcpu: u32) -> Result<(), XenErrno> {
        if vcpu < self.nr_vcpus {
            Ok(())
        } else {
            Err(XenErrno::Enoent)
        }
    }

    fn is_unbound_for(&self, port: u32, dom: DomId) -> bool {
        port != 0
            && self.is_valid_port(port)
            && self.channel(port).state == PortState::Unbound { remote: dom }
    }

    /// The lowest free port above 0 (Xen's `get_free_port`), with room made for it in the
    /// table; it stays free until [`Self::install`]. `-ENOSPC` when the quota is used up,
    /// `-ENOMEM` if the table cannot grow.
    fn find_free_port(&mut self) -> Result<u32, XenErrno> {
        if let Some(port) = (1u32..)
            .zip(self.ports.iter().skip(1))
            .find(|(_, c)| c.state == PortState::Free)
            .map(|(p, _)| p)
        {
            return Ok(port);
        }
        let next = self.ports.len().max(1);
        if next >= self.nr_ports as usize {
            return Err(XenErrno::Enospc);
        }
        self.ports
            .try_reserve(next + 1 - self.ports.len())
            .map_err(|_| XenErrno::Enomem)?;
        self.ports.resize(next + 1, FREE);
        Ok(next as u32)
    }

    fn install(&mut self, port: u32, state: PortState, notify_vcpu: u32) {
        *self.slot_mut(port) = Channel { state, notify_vcpu };
        self.in_use += 1;
    }
}

/// `EVTCHNOP_bind_interdomain` between two domains: `local` (the caller) binds to
/// `remote_port` of `remote`, which must be unbound and waiting for `local`'s domain
/// (`-EINVAL` otherwise, or if both tables are the same domain: use
/// [`EventChannels::bind_loopback`]). `-ENOSPC` if `local` has no free port; that is
/// checked first, as in Xen. Returns the new local port, which notifies vCPU 0; the
/// remote port keeps its notify vCPU.
///
/// `event_channel.h`: the peer may have signalled before the bind, so the caller then
/// marks the new local port pending ([`set_pending`] for its notify vCPU).
pub fn bind_interdomain(
    local: &mut EventChannels,
    remote: &mut EventChannels,
    remote_port: u32,
) -> Result<u32, XenErrno> {
    let port = local.find_free_port()?;
    if local.dom == remote.dom || !remote.is_unbound_for(remote_port, local.dom) {
        return Err(XenErrno::Einval);
    }
    local.install(
        port,
        PortState::Interdomain {
            remote: remote.dom,
            remote_port,
        },
        0,
    );
    remote.slot_mut(remote_port).state = PortState::Interdomain {
        remote: local.dom,
        remote_port: port,
    };
    Ok(port)
}

/// The 2-level event bits of one domain, as atomic operations on its shared pages:
/// `shared_info.evtchn_pending[word]` and `evtchn_mask[word]` (`word < 64`), and each
/// vCPU's `vcpu_info.evtchn_pending_sel`, `evtchn_upcall_pending` and
/// `evtchn_upcall_mask`. The fetch operations return the previous value.
pub trait EventWords {
    fn pending_fetch_or(&self, word: usize, mask: u64) -> u64;
    fn pending_load(&self, word: usize) -> u64;
    fn pending_fetch_and(&self, word: usize, mask: u64) -> u64;
    fn mask_load(&self, word: usize) -> u64;
    /// Only [`unmask`] writes the mask (for `EVTCHNOP_unmask`); otherwise it is the
    /// guest's.
    fn mask_fetch_and(&self, word: usize, mask: u64) -> u64;
    fn sel_fetch_or(&self, vcpu: u32, mask: u64) -> u64;
    fn upcall_pending_swap(&self, vcpu: u32, v: u8) -> u8;
    fn upcall_mask_load(&self, vcpu: u32) -> u8;
}

/// What a change of the event bits asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// Nothing changed that anyone waits for.
    None,
    /// The port became pending but needs no upcall (masked, or the vCPU already has
    /// one pending): only a vCPU blocked in `SCHEDOP_poll` on this port needs waking.
    Pending,
    /// `evtchn_upcall_pending` went from 0 to 1: kick the vCPU (wake it if blocked or
    /// polling; it takes the upcall when `evtchn_upcall_mask` is clear).
    Upcall,
}

impl Notify {
    /// Whether the port just became pending (what `SCHEDOP_poll` waiters watch for).
    pub const fn newly_pending(self) -> bool {
        !matches!(self, Notify::None)
    }
}

/// The pending/mask word of `port` and its bit in it, or `None` past the 2-level ABI's
/// 4096 ports (so the bitmaps are never indexed out of range).
fn bit_of(port: u32) -> Option<(usize, u64)> {
    (port < MAX_PORTS_2L).then(|| {
        (
            (port / BITS_PER_WORD) as usize,
            1u64 << (port % BITS_PER_WORD),
        )
    })
}

/// The selector and upcall steps shared by [`set_pending`] and [`unmask`]: flag word
/// `word` in `vcpu`'s selector and, if newly flagged, raise its upcall.
fn raise_selector(words: &impl EventWords, word: usize, vcpu: u32) -> bool {
    let sel = 1u64 << word;
    words.sel_fetch_or(vcpu, sel) & sel == 0 && words.upcall_pending_swap(vcpu, 1) == 0
}

/// Marks `port` pending for `vcpu` (its notify vCPU), Xen's 2-level `set_pending`: set the
/// pending bit; if it was already set, nothing more (the guest has not consumed the
/// previous event). If the port is masked, stop there: the guest sees the event when it
/// unmasks. Otherwise set bit `port / 64` of the vCPU's selector and, if that was newly
/// set, `evtchn_upcall_pending`; [`Notify::Upcall`] if that was 0.
pub fn set_pending(words: &impl EventWords, port: u32, vcpu: u32) -> Notify {
    let Some((word, bit)) = bit_of(port) else {
        return Notify::None;
    };
    if words.pending_fetch_or(word, bit) & bit != 0 {
        return Notify::None;
    }
    if words.mask_load(word) & bit == 0 && raise_selector(words, word, vcpu) {
        Notify::Upcall
    } else {
        Notify::Pending
    }
}

/// `EVTCHNOP_unmask` for `port` notifying `vcpu`: clear the mask bit; if it was set and
/// the port is pending, do [`set_pending`]'s selector and upcall steps, which the guest
/// missed while the port was masked. Returns [`Notify::Upcall`] or [`Notify::None`]; the
/// caller checks the port against the quota first (`-EINVAL`).
pub fn unmask(words: &impl EventWords, port: u32, vcpu: u32) -> Notify {
    let Some((word, bit)) = bit_of(port) else {
        return Notify::None;
    };
    // Linux clears the mask itself on the fast path and relies on the hypercall raising
    // an upcall only for a port that was still masked (events_2l.c).
    if words.mask_fetch_and(word, !bit) & bit != 0
        && words.pending_load(word) & bit != 0
        && raise_selector(words, word, vcpu)
    {
        Notify::Upcall
    } else {
        Notify::None
    }
}

/// Clears `port`'s pending bit (after a close).
pub fn clear_pending(words: &impl EventWords, port: u32) {
    if let Some((word, bit)) = bit_of(port) {
        words.pending_fetch_and(word, !bit);
    }
}

/// Whether `port` is pending.
pub fn is_pending(words: &impl EventWords, port: u32) -> bool {
    bit_of(port).is_some_and(|(word, bit)| words.pending_load(word) & bit != 0)
}

/// Whether `port` is masked.
pub fn is_masked(words: &impl EventWords, port: u32) -> bool {
    bit_of(port).is_some_and(|(word, bit)| words.mask_load(word) & bit != 0)
}

/// `SCHEDOP_poll`'s test: whether any of `ports` is pending, masked or not (polled ports
/// are usually masked). The caller has refused ports outside the quota with `-EINVAL`.
pub fn poll_ready(words: &impl EventWords, ports: &[u32]) -> bool {
    ports.iter().any(|&port| is_pending(words, port))
}

#[cfg(test)]
mod tests {
    use core::cell::Cell;
    use std::collections::BTreeMap;

    use ferrovisor_abi::xen::xen::DOMID_XEN;

    use super::*;

    const A: DomId = 1;
    const B: DomId = 2;

    // -----------------------------------------------------------------------------
    // The port table.

    fn table(dom: DomId) -> EventChannels {
        EventChannels::new(dom, 2, 64)
    }

    #[test]
    fn a_frontends_port_connects_to_a_backend_and_back() {
        let mut t = table(A);
        let p = t.alloc_unbound(DOMID_XEN).unwrap();
        let other = t.alloc_unbound(B).unwrap();
        assert_eq!(t.connect_backend(other, 0x100), Err(XenErrno::Einval));
        assert_eq!(t.connect_backend(0, 0x100), Err(XenErrno::Einval));
        assert_eq!(t.connect_backend(9999, 0x100), Err(XenErrno::Einval));
        t.connect_backend(p, 0x100).unwrap();
        assert_eq!(
            t.send(p),
            Ok(SendTarget::Remote {
                dom: DOMID_XEN,
                port: 0x100
            })
        );
        // Connected once: a second connect is refused.
        assert_eq!(t.connect_backend(p, 0x101), Err(XenErrno::Einval));
        // The backend lets go: unbound for DOMID_XEN again, ready for a reconnect.
        assert!(!t.peer_closed(p, DOMID_XEN, 0x101));
        assert!(t.peer_closed(p, DOMID_XEN, 0x100));
        assert_eq!(t.send(p), Ok(SendTarget::Dropped));
        t.connect_backend(p, 0x102).unwrap();
    }

    #[test]
    fn port_zero_is_reserved_and_ports_are_lowest_first() {
        let mut t = table(A);
        assert_eq!(t.state(0), Some(PortState::Free));
        assert_eq!(t.alloc_unbound(B), Ok(1));
        assert_eq!(t.alloc_unbound(B), Ok(2));
        assert_eq!(t.bind_ipi(1), Ok(3));
        assert_eq!(t.close(2).map(|c| c.port), Ok(2));
        assert_eq!(t.bind_ipi(0), Ok(2));
        assert_eq!(t.in_use(), 3);
        assert_eq!(t.close(0), Err(XenErrno::Einval));
        assert_eq!(t.bind_vcpu(0, 0), Err(XenErrno::Einval));
        assert_eq!(t.send(0), Err(XenErrno::Einval));
        assert_eq!(t.status(0).map(|s| s.status), Ok(EVTCHNSTAT_CLOSED));
    }

    #[test]
    fn quota() {
        let mut t = EventChannels::new(A, 1, 4);
        assert_eq!(t.alloc_unbound(B), Ok(1));
        assert_eq!(t.bind_ipi(0), Ok(2));
        assert_eq!(t.bind_virq(Virq::Timer.raw(), 0), Ok(3));
        assert_eq!(t.alloc_unbound(B), Err(XenErrno::Enospc));
        assert_eq!(t.bind_ipi(0), Err(XenErrno::Enospc));
        assert_eq!(t.bind_virq(Virq::Console.raw(), 0), Err(XenErrno::Enospc));
        let mut other = EventChannels::new(B, 1, 4);
        let rp = other.alloc_unbound(A).unwrap();
        assert_eq!(
            bind_interdomain(&mut t, &mut other, rp),
            Err(XenErrno::Enospc)
        );
        // A failed bind leaves the remote port waiting.
        assert_eq!(other.state(rp), Some(PortState::Unbound { remote: A }));
        t.close(2).unwrap();
        assert_eq!(t.alloc_unbound(B), Ok(2));
        assert_eq!(t.status(4).err(), Some(XenErrno::Einval));
        assert_eq!(t.notify_vcpu(4), None);
        // The 2-level ABI caps the quota.
        assert_eq!(
            EventChannels::new(A, 1, 1 << 17).nr_ports(),
            EVTCHN_2L_NR_CHANNELS
        );
        // A quota that leaves nothing past the reserved port 0.
        assert_eq!(
            EventChannels::new(A, 1, 1).alloc_unbound(B),
            Err(XenErrno::Enospc)
        );
        assert_eq!(
            EventChannels::new(A, 1, 0).alloc_unbound(B),
            Err(XenErrno::Enospc)
        );
    }

    #[test]
    fn fill_the_whole_2l_space() {
        let mut t = EventChannels::new(A, 1, MAX_PORTS_2L);
        for want in 1..MAX_PORTS_2L {
            assert_eq!(t.bind_ipi(0), Ok(want));
        }
        assert_eq!(t.bind_ipi(0), Err(XenErrno::Enospc));
        assert_eq!(t.ipi_ports(0).count(), 4095);
        assert_eq!(t.reset().len(), 4095);
        assert_eq!(t.in_use(), 0);
    }

    #[test]
    fn virq_rules() {
        let mut t = table(A);
        let timer = Virq::Timer.raw();
        let p0 = t.bind_virq(timer, 0).unwrap();
        let p1 = t.bind_virq(timer, 1).unwrap();
        assert_ne!(p0, p1);
        assert_eq!(t.bind_virq(timer, 0), Err(XenErrno::Eexist));
        assert_eq!(t.bind_virq(timer, 1), Err(XenErrno::Eexist));
        assert_eq!(t.bind_virq(timer, 2), Err(XenErrno::Enoent));
        assert_eq!(t.bind_virq(NR_VIRQS, 0), Err(XenErrno::Einval));
        assert_eq!(t.bind_virq(u32::MAX, 0), Err(XenErrno::Einval));
        assert_eq!(
            (t.virq_port(timer, 0), t.virq_port(timer, 1)),
            (Some(p0), Some(p1))
        );
        assert_eq!(t.notify_vcpu(p1), Some(1));
        // Per-vCPU VIRQs never move.
        assert_eq!(t.bind_vcpu(p1, 0), Err(XenErrno::Einval));

        // Global ones bind once, on vCPU 0, and may move.
        let con = Virq::Console.raw();
        assert_eq!(t.bind_virq(con, 1), Err(XenErrno::Einval));
        let pc = t.bind_virq(con, 0).unwrap();
        assert_eq!(t.bind_virq(con, 0), Err(XenErrno::Eexist));
        assert_eq!(t.bind_vcpu(pc, 1), Ok(()));
        assert_eq!(t.bind_vcpu(pc, 2), Err(XenErrno::Enoent));
        assert_eq!(t.virq_port(con, 0), Some(pc));
        assert_eq!(t.virq_port(con, 1), Some(pc));
        assert_eq!(
            t.virq_target(con, 0),
            Some(EventTarget { port: pc, vcpu: 1 })
        );
        assert_eq!(
            t.virq_target(timer, 1),
            Some(EventTarget { port: p1, vcpu: 1 })
        );
        assert_eq!(t.virq_target(Virq::DomExc.raw(), 0), None);
        // After a move the global VIRQ is still bound: vCPU 0 cannot bind it again.
        assert_eq!(t.bind_virq(con, 0), Err(XenErrno::Eexist));
        let st = t.status(pc).unwrap();
        assert_eq!((st.status, st.vcpu, st.u_irq()), (EVTCHNSTAT_VIRQ, 1, con));

        // The other VIRQs xen.h lists per vCPU.
        for v in [Virq::Debug, Virq::Xenoprof, Virq::Xenpmu] {
            assert!(!virq_is_global(v.raw()));
            assert!(t.bind_virq(v.raw(), 1).is_ok());
        }
        for v in [Virq::DomExc, Virq::ConRing, Virq::Mca, Virq::Enomem] {
            assert!(virq_is_global(v.raw()));
        }
        // VIRQ numbers below NR_VIRQS that name nothing bind, as global ones, as in Xen.
        assert!(virq_is_global(5) && virq_is_global(NR_VIRQS - 1));
        assert!(t.bind_virq(NR_VIRQS - 1, 0).is_ok());

        // Close, then bind again.
        let c = t.close(p0).unwrap();
        assert_eq!(
            c,
            Closed {
                port: p0,
                peer: None
            }
        );
        assert_eq!(t.virq_port(timer, 0), None);
        assert_eq!(t.virq_port(timer, 1), Some(p1));
        assert_eq!(t.bind_virq(timer, 0), Ok(p0));
        t.close(pc).unwrap();
        assert_eq!(t.virq_port(con, 0), None);
        assert_eq!(t.notify_vcpu(pc), Some(0));
        assert_eq!(t.bind_virq(con, 0), Ok(pc));
        assert_eq!(t.notify_vcpu(pc), Some(0));
        assert_eq!(t.send(pc), Err(XenErrno::Einval));
    }

    #[test]
    fn ipi() {
        let mut t = table(A);
        assert_eq!(t.bind_ipi(2), Err(XenErrno::Enoent));
        let a = t.bind_ipi(1).unwrap();
        let b = t.bind_ipi(1).unwrap();
        let c = t.bind_ipi(0).unwrap();
        assert_eq!(t.ipi_ports(1).collect::<Vec<_>>(), [a, b]);
        assert_eq!(t.ipi_ports(0).collect::<Vec<_>>(), [c]);
        assert_eq!(t.send(b), Ok(SendTarget::Local { vcpu: 1, port: b }));
        assert_eq!(t.bind_vcpu(a, 0), Err(XenErrno::Einval));
        let st = t.status(a).unwrap();
        assert_eq!((st.status, st.vcpu, st.u), (EVTCHNSTAT_IPI, 1, [0, 0]));
        assert_eq!(
            t.close(a),
            Ok(Closed {
                port: a,
                peer: None
            })
        );
        assert_eq!(t.close(a), Err(XenErrno::Einval));
        assert_eq!(t.send(a), Err(XenErrno::Einval));
        assert_eq!(t.bind_vcpu(a, 0), Err(XenErrno::Einval));
    }

    #[test]
    fn pirq_refused() {
        let mut t = table(A);
        assert_eq!(t.bind_pirq(9), Err(XenErrno::Eperm));
        assert_eq!(t.in_use(), 0);
    }

    #[test]
    fn unbound_ports() {
        let mut t = table(A);
        let p = t.alloc_unbound(B).unwrap();
        let st = t.status(p).unwrap();
        assert_eq!((st.dom, st.port), (A, p));
        assert_eq!((st.status, st.vcpu, st.u_dom()), (EVTCHNSTAT_UNBOUND, 0, B));
        // Sending on an unbound port is accepted and goes nowhere.
        assert_eq!(t.send(p), Ok(SendTarget::Dropped));
        assert_eq!(t.bind_vcpu(p, 1), Ok(()));
        assert_eq!(t.notify_vcpu(p), Some(1));
        assert_eq!(t.bind_vcpu(p, 9), Err(XenErrno::Enoent));
        assert_eq!(t.bind_vcpu(64, 0), Err(XenErrno::Einval));
        // -ENOENT is checked before the port, as Xen does.
        assert_eq!(t.bind_vcpu(64, 9), Err(XenErrno::Enoent));
        assert_eq!(
            t.close(p),
            Ok(Closed {
                port: p,
                peer: None
            })
        );
        assert_eq!(t.status(p).unwrap().status, EVTCHNSTAT_CLOSED);
        assert_eq!(t.notify_vcpu(p), Some(0));
        assert_eq!(t.close(p), Err(XenErrno::Einval));
        assert_eq!(t.close(64), Err(XenErrno::Einval));
        assert_eq!(t.close(u32::MAX), Err(XenErrno::Einval));
    }

    #[test]
    fn interdomain_bind_send_close_from_each_side() {
        let mut a = table(A);
        let mut b = table(B);
        // B offers a port to A; B moved its notification to vCPU 1 before the bind.
        let pb = b.alloc_unbound(A).unwrap();
        b.bind_vcpu(pb, 1).unwrap();
        a.bind_ipi(0).unwrap();
        let pa = bind_interdomain(&mut a, &mut b, pb).unwrap();
        assert_eq!(pa, 2);
        assert_eq!(
            a.state(pa),
            Some(PortState::Interdomain {
                remote: B,
                remote_port: pb
            })
        );
        assert_eq!(
            b.state(pb),
            Some(PortState::Interdomain {
                remote: A,
                remote_port: pa
            })
        );
        assert_eq!((a.notify_vcpu(pa), b.notify_vcpu(pb)), (Some(0), Some(1)));
        let st = a.status(pa).unwrap();
        assert_eq!(
            (st.status, st.u_dom(), st.u_port()),
            (EVTCHNSTAT_INTERDOMAIN, B, pb)
        );
        assert_eq!(a.send(pa), Ok(SendTarget::Remote { dom: B, port: pb }));
        assert_eq!(b.send(pb), Ok(SendTarget::Remote { dom: A, port: pa }));
        // Bound already: nobody can bind it again.
        assert_eq!(bind_interdomain(&mut a, &mut b, pb), Err(XenErrno::Einval));

        // A closes: B's end waits for A again, keeping its vCPU.
        let c = a.close(pa).unwrap();
        assert_eq!(c.peer, Some(RemoteEnd { dom: B, port: pb }));
        assert!(b.peer_closed(pb, A, pa));
        assert_eq!(b.state(pb), Some(PortState::Unbound { remote: A }));
        assert_eq!(b.notify_vcpu(pb), Some(1));
        assert_eq!(b.send(pb), Ok(SendTarget::Dropped));
        // A stale or repeated notice changes nothing.
        assert!(!b.peer_closed(pb, A, pa));
        assert!(!b.peer_closed(99, A, pa));

        // A binds again; this time B closes.
        let pa2 = bind_interdomain(&mut a, &mut b, pb).unwrap();
        assert_eq!(pa2, pa);
        let c = b.close(pb).unwrap();
        assert_eq!(c.peer, Some(RemoteEnd { dom: A, port: pa2 }));
        assert!(a.peer_closed(pa2, B, pb));
        assert_eq!(a.state(pa2), Some(PortState::Unbound { remote: B }));
        // Now B may bind to A's waiting port.
        let pb2 = bind_interdomain(&mut b, &mut a, pa2).unwrap();
        assert_eq!(b.send(pb2), Ok(SendTarget::Remote { dom: A, port: pa2 }));
    }

    #[test]
    fn interdomain_refusals() {
        let mut a = table(A);
        let mut b = table(B);
        let mut c = table(3);
        let for_c = b.alloc_unbound(3).unwrap();
        // Waiting for another domain.
        assert_eq!(
            bind_interdomain(&mut a, &mut b, for_c),
            Err(XenErrno::Einval)
        );
        // Not unbound, free, reserved, out of range.
        let ipi = b.bind_ipi(0).unwrap();
        for port in [ipi, 0, 40, 64, u32::MAX] {
            assert_eq!(
                bind_interdomain(&mut a, &mut b, port),
                Err(XenErrno::Einval)
            );
        }
        // Two tables claiming the same domain.
        let mut b2 = table(B);
        let p = b2.alloc_unbound(B).unwrap();
        assert_eq!(bind_interdomain(&mut b, &mut b2, p), Err(XenErrno::Einval));
        assert_eq!(a.in_use(), 0);
        assert!(bind_interdomain(&mut c, &mut b, for_c).is_ok());
    }

    #[test]
    fn loopback() {
        let mut a = table(A);
        let listen = a.alloc_unbound(A).unwrap();
        a.bind_vcpu(listen, 1).unwrap();
        let other = a.alloc_unbound(B).unwrap();
        assert_eq!(a.bind_loopback(other), Err(XenErrno::Einval));
        assert_eq!(a.bind_loopback(0), Err(XenErrno::Einval));
        let p = a.bind_loopback(listen).unwrap();
        assert_eq!(
            a.send(p),
            Ok(SendTarget::Local {
                vcpu: 1,
                port: listen
            })
        );
        assert_eq!(a.send(listen), Ok(SendTarget::Local { vcpu: 0, port: p }));
        let st = a.status(p).unwrap();
        assert_eq!((st.u_dom(), st.u_port()), (A, listen));
        // Closing one end handles the other here.
        assert_eq!(
            a.close(listen),
            Ok(Closed {
                port: listen,
                peer: None
            })
        );
        assert_eq!(a.state(p), Some(PortState::Unbound { remote: A }));
        assert_eq!(a.bind_loopback(p), Ok(listen));
    }

    #[test]
    fn reset_closes_everything_and_reports_peers() {
        let mut a = table(A);
        let mut b = table(B);
        a.bind_virq(Virq::Timer.raw(), 1).unwrap();
        a.bind_virq(Virq::Console.raw(), 0).unwrap();
        a.bind_ipi(0).unwrap();
        a.alloc_unbound(B).unwrap();
        let l = a.alloc_unbound(A).unwrap();
        a.bind_loopback(l).unwrap();
        let pb = b.alloc_unbound(A).unwrap();
        let pa = bind_interdomain(&mut a, &mut b, pb).unwrap();
        let closed = a.reset();
        assert_eq!(closed.len(), 7);
        assert_eq!(
            closed.iter().filter_map(|c| c.peer).collect::<Vec<_>>(),
            [RemoteEnd { dom: B, port: pb }]
        );
        assert!(closed.iter().any(|c| c.port == pa));
        assert_eq!(a.in_use(), 0);
        assert_eq!(a.bound_ports().count(), 0);
        assert_eq!(a.virq_port(Virq::Timer.raw(), 1), None);
        assert_eq!(a.virq_port(Virq::Console.raw(), 0), None);
        assert!(b.peer_closed(pb, A, pa));
        // Everything binds again from port 1.
        assert_eq!(a.bind_virq(Virq::Timer.raw(), 1), Ok(1));
        assert_eq!(bind_interdomain(&mut a, &mut b, pb), Ok(2));
    }

    #[test]
    fn hypervisor_backend_as_a_peer() {
        // The console backend: the hypervisor's own table binds to the guest's port.
        let mut xen = EventChannels::new(DOMID_XEN, 1, MAX_PORTS_2L);
        let mut guest = table(A);
        let gp = guest.alloc_unbound(DOMID_XEN).unwrap();
        let xp = bind_interdomain(&mut xen, &mut guest, gp).unwrap();
        assert_eq!(
            guest.send(gp),
            Ok(SendTarget::Remote {
                dom: DOMID_XEN,
                port: xp
            })
        );
        assert_eq!(xen.send(xp), Ok(SendTarget::Remote { dom: A, port: gp }));
    }

    // -----------------------------------------------------------------------------
    // The 2-level bits.

    struct Words {
        pending: [Cell<u64>; 64],
        mask: [Cell<u64>; 64],
        sel: Vec<Cell<u64>>,
        upcall: Vec<Cell<u8>>,
        upcall_mask: Vec<Cell<u8>>,
    }

    impl Words {
        fn new(vcpus: usize) -> Self {
            Words {
                pending: core::array::from_fn(|_| Cell::new(0)),
                mask: core::array::from_fn(|_| Cell::new(0)),
                sel: (0..vcpus).map(|_| Cell::new(0)).collect(),
                upcall: (0..vcpus).map(|_| Cell::new(0)).collect(),
                upcall_mask: (0..vcpus).map(|_| Cell::new(0)).collect(),
            }
        }

        // The guest's side.
        fn guest_mask(&self, port: u32) {
            let c = &self.mask[port as usize / 64];
            c.set(c.get() | 1 << (port % 64));
        }

        fn guest_unmask_bit(&self, port: u32) {
            let c = &self.mask[port as usize / 64];
            c.set(c.get() & !(1 << (port % 64)));
        }

        /// What Linux's upcall handler does first: take the flag and the selector.
        fn guest_take(&self, vcpu: u32) -> u64 {
            self.upcall[vcpu as usize].set(0);
            self.sel[vcpu as usize].replace(0)
        }

        fn sel(&self, vcpu: u32) -> u64 {
            self.sel[vcpu as usize].get()
        }

        fn upcall(&self, vcpu: u32) -> u8 {
            self.upcall[vcpu as usize].get()
        }
    }

    fn fetch(c: &Cell<u64>, f: impl FnOnce(u64) -> u64) -> u64 {
        let old = c.get();
        c.set(f(old));
        old
    }

    impl EventWords for Words {
        fn pending_fetch_or(&self, word: usize, mask: u64) -> u64 {
            fetch(&self.pending[word], |v| v | mask)
        }
        fn pending_load(&self, word: usize) -> u64 {
            self.pending[word].get()
        }
        fn pending_fetch_and(&self, word: usize, mask: u64) -> u64 {
            fetch(&self.pending[word], |v| v & mask)
        }
        fn mask_load(&self, word: usize) -> u64 {
            self.mask[word].get()
        }
        fn mask_fetch_and(&self, word: usize, mask: u64) -> u64 {
            fetch(&self.mask[word], |v| v & mask)
        }
        fn sel_fetch_or(&self, vcpu: u32, mask: u64) -> u64 {
            fetch(&self.sel[vcpu as usize], |v| v | mask)
        }
        fn upcall_pending_swap(&self, vcpu: u32, v: u8) -> u8 {
            self.upcall[vcpu as usize].replace(v)
        }
        fn upcall_mask_load(&self, vcpu: u32) -> u8 {
            self.upcall_mask[vcpu as usize].get()
        }
    }

    #[test]
    fn set_pending_raises_one_upcall() {
        let w = Words::new(2);
        assert_eq!(set_pending(&w, 70, 1), Notify::Upcall);
        assert!(is_pending(&w, 70));
        assert_eq!((w.sel(1), w.upcall(1)), (1 << 1, 1));
        assert_eq!((w.sel(0), w.upcall(0)), (0, 0));
        // Already pending: nothing at all.
        assert_eq!(set_pending(&w, 70, 1), Notify::None);
        // Same word, selector already set: pending only.
        assert_eq!(set_pending(&w, 71, 1), Notify::Pending);
        // Another word: the selector is new but the upcall is already pending.
        assert_eq!(set_pending(&w, 3, 1), Notify::Pending);
        assert_eq!(w.sel(1), 0b11);
        // The guest takes the upcall; the next event raises a new one.
        assert_eq!(w.guest_take(1), 0b11);
        assert_eq!(set_pending(&w, 200, 1), Notify::Upcall);
        assert_eq!(w.sel(1), 1 << 3);
        // A selector bit left set while the upcall flag is clear: no new upcall.
        w.upcall[1].set(0);
        assert_eq!(set_pending(&w, 201, 1), Notify::Pending);
        assert_eq!(w.upcall(1), 0);
    }

    #[test]
    fn masked_port_waits_for_unmask() {
        let w = Words::new(1);
        w.guest_mask(5);
        assert_eq!(set_pending(&w, 5, 0), Notify::Pending);
        assert!(is_pending(&w, 5) && is_masked(&w, 5));
        assert_eq!((w.sel(0), w.upcall(0)), (0, 0));
        assert!(poll_ready(&w, &[9, 5]));
        // Unmask delivers what the mask held back.
        assert_eq!(unmask(&w, 5, 0), Notify::Upcall);
        assert!(!is_masked(&w, 5));
        assert_eq!((w.sel(0), w.upcall(0)), (1, 1));
        // Unmasking a port that is not masked does nothing, pending or not.
        w.guest_take(0);
        assert_eq!(unmask(&w, 5, 0), Notify::None);
        assert_eq!((w.sel(0), w.upcall(0)), (0, 0));
    }

    #[test]
    fn unmask_cases() {
        let w = Words::new(2);
        // Masked, not pending: just clears the mask.
        w.guest_mask(64);
        assert_eq!(unmask(&w, 64, 1), Notify::None);
        assert!(!is_masked(&w, 64));
        assert_eq!(w.sel(1), 0);
        // Masked, pending, selector already set: no upcall.
        w.guest_mask(65);
        set_pending(&w, 65, 1);
        w.sel[1].set(1 << 1);
        assert_eq!(unmask(&w, 65, 1), Notify::None);
        assert_eq!(w.upcall(1), 0);
        // Masked, pending, upcall already pending: none either.
        w.sel[1].set(0);
        w.upcall[1].set(1);
        w.guest_mask(65);
        assert_eq!(unmask(&w, 65, 1), Notify::None);
        assert_eq!(w.sel(1), 1 << 1);
        // Linux's fast path: the guest cleared the mask itself; the hypercall that may
        // follow raises nothing.
        let w = Words::new(1);
        w.guest_mask(7);
        set_pending(&w, 7, 0);
        w.guest_unmask_bit(7);
        assert_eq!(unmask(&w, 7, 0), Notify::None);
    }

    #[test]
    fn clear_and_poll() {
        let w = Words::new(1);
        assert!(!poll_ready(&w, &[1, 2, 3]));
        assert!(!poll_ready(&w, &[]));
        set_pending(&w, 4095, 0);
        assert!(poll_ready(&w, &[1, 4095]));
        clear_pending(&w, 4095);
        assert!(!poll_ready(&w, &[4095]));
        // A cleared port raises a fresh event again.
        w.guest_take(0);
        assert_eq!(set_pending(&w, 4095, 0), Notify::Upcall);
        assert_eq!(w.sel(0), 1 << 63);
    }

    #[test]
    fn ports_past_the_2l_space_touch_nothing() {
        let w = Words::new(1);
        for port in [4096, 4097, u32::MAX] {
            assert_eq!(set_pending(&w, port, 0), Notify::None);
            assert_eq!(unmask(&w, port, 0), Notify::None);
            clear_pending(&w, port);
            assert!(!is_pending(&w, port) && !is_masked(&w, port));
            assert!(!poll_ready(&w, &[port]));
        }
        assert_eq!(w.sel(0), 0);
    }

    #[test]
    fn send_then_deliver_between_domains() {
        // The whole path the hypercall layer takes: bind (marking the new port
        // pending), send, deliver to the remote's notify vCPU, close and clear.
        let (mut a, mut b) = (table(A), table(B));
        let (wa, wb) = (Words::new(2), Words::new(2));
        let pb = b.alloc_unbound(A).unwrap();
        b.bind_vcpu(pb, 1).unwrap();
        let pa = bind_interdomain(&mut a, &mut b, pb).unwrap();
        assert_eq!(
            set_pending(&wa, pa, a.notify_vcpu(pa).unwrap()),
            Notify::Upcall
        );
        let SendTarget::Remote { dom, port } = a.send(pa).unwrap() else {
            panic!("not remote")
        };
        assert_eq!((dom, port), (B, pb));
        assert_eq!(
            set_pending(&wb, port, b.notify_vcpu(port).unwrap()),
            Notify::Upcall
        );
        assert_eq!((wb.upcall(1), wb.upcall(0)), (1, 0));
        let closed = b.close(pb).unwrap();
        clear_pending(&wb, closed.port);
        assert!(!is_pending(&wb, pb));
        let peer = closed.peer.unwrap();
        assert!(a.peer_closed(peer.port, B, pb));
        // The surviving end keeps its pending bit (Xen leaves it).
        assert!(is_pending(&wa, pa));
    }

    // -----------------------------------------------------------------------------
    // Randomized comparison with a plain model.

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u32) -> u32 {
            (self.next() % u64::from(n)) as u32
        }
    }

    /// The spec written out naively: a map of bound ports, searched linearly.
    struct Model {
        dom: DomId,
        vcpus: u32,
        nr_ports: u32,
        /// port -> (state, notify vCPU)
        ports: BTreeMap<u32, (PortState, u32)>,
    }

    impl Model {
        fn free_port(&self) -> Result<u32, XenErrno> {
            (1..self.nr_ports)
                .find(|p| !self.ports.contains_key(p))
                .ok_or(XenErrno::Enospc)
        }

        fn global(virq: u32) -> bool {
            ![0, 1, 7, 13].contains(&virq)
        }

        fn virq_port(&self, virq: u32, vcpu: u32) -> Option<u32> {
            let key = if Self::global(virq) { 0 } else { vcpu };
            self.ports
                .iter()
                .find(|(_, &(s, _))| s == PortState::Virq { virq, vcpu: key })
                .map(|(&p, _)| p)
        }

        fn bind_virq(&mut self, virq: u32, vcpu: u32) -> Result<u32, XenErrno> {
            if virq >= 24 || (Self::global(virq) && vcpu != 0) {
                return Err(XenErrno::Einval);
            }
            if vcpu >= self.vcpus {
                return Err(XenErrno::Enoent);
            }
            if self.virq_port(virq, vcpu).is_some() {
                return Err(XenErrno::Eexist);
            }
            let p = self.free_port()?;
            self.ports.insert(p, (PortState::Virq { virq, vcpu }, vcpu));
            Ok(p)
        }

        fn bind_ipi(&mut self, vcpu: u32) -> Result<u32, XenErrno> {
            if vcpu >= self.vcpus {
                return Err(XenErrno::Enoent);
            }
            let p = self.free_port()?;
            self.ports.insert(p, (PortState::Ipi { vcpu }, vcpu));
            Ok(p)
        }

        fn alloc_unbound(&mut self, remote: DomId) -> Result<u32, XenErrno> {
            let p = self.free_port()?;
            self.ports.insert(p, (PortState::Unbound { remote }, 0));
            Ok(p)
        }

        fn bind_vcpu(&mut self, port: u32, vcpu: u32) -> Result<(), XenErrno> {
            if vcpu >= self.vcpus {
                return Err(XenErrno::Enoent);
            }
            match self.ports.get_mut(&port) {
                Some((PortState::Unbound { .. } | PortState::Interdomain { .. }, n)) => {
                    *n = vcpu;
                    Ok(())
                }
                Some((PortState::Virq { virq, .. }, n)) if Self::global(*virq) => {
                    *n = vcpu;
                    Ok(())
                }
                _ => Err(XenErrno::Einval),
            }
        }

        /// Closes `port`; the other end (in this model or not) is returned, not touched.
        fn close(&mut self, port: u32) -> Result<Option<RemoteEnd>, XenErrno> {
            match self.ports.remove(&port) {
                None => Err(XenErrno::Einval),
                Some((
                    PortState::Interdomain {
                        remote,
                        remote_port,
                    },
                    _,
                )) => Ok(Some(RemoteEnd {
                    dom: remote,
                    port: remote_port,
                })),
                Some(_) => Ok(None),
            }
        }

        fn peer_closed(&mut self, port: u32, by: DomId) {
            let (s, _) = self.ports.get_mut(&port).expect("peer end exists");
            *s = PortState::Unbound { remote: by };
        }

        fn status(&self, port: u32) -> Result<(PortState, u32), XenErrno> {
            if port >= self.nr_ports {
                return Err(XenErrno::Einval);
            }
            Ok(self
                .ports
                .get(&port)
                .copied()
                .unwrap_or((PortState::Free, 0)))
        }

        fn send(&self, port: u32) -> Result<SendTarget, XenErrno> {
            match self.ports.get(&port) {
                Some(&(PortState::Ipi { .. }, n)) => Ok(SendTarget::Local { vcpu: n, port }),
                Some(&(PortState::Unbound { .. }, _)) => Ok(SendTarget::Dropped),
                Some(&(
                    PortState::Interdomain {
                        remote,
                        remote_port,
                    },
                    _,
                )) if remote == self.dom => Ok(SendTarget::Local {
                    vcpu: self.ports[&remote_port].1,
                    port: remote_port,
                }),
                Some(&(
                    PortState::Interdomain {
                        remote,
                        remote_port,
                    },
                    _,
                )) => Ok(SendTarget::Remote {
                    dom: remote,
                    port: remote_port,
                }),
                _ => Err(XenErrno::Einval),
            }
        }
    }

    /// Binds `from` (index `f`) to `port` of `to` in the model: the same rules.
    fn model_bind(models: &mut [Model; 2], f: usize, t: usize, port: u32) -> Result<u32, XenErrno> {
        let from_dom = models[f].dom;
        let lp = models[f].free_port()?;
        let ok = port != 0
            && models[t].ports.get(&port).map(|&(s, _)| s)
                == Some(PortState::Unbound { remote: from_dom });
        if !ok {
            return Err(XenErrno::Einval);
        }
        let to_dom = models[t].dom;
        models[f].ports.insert(
            lp,
            (
                PortState::Interdomain {
                    remote: to_dom,
                    remote_port: port,
                },
                0,
            ),
        );
        let entry = models[t].ports.get_mut(&port).unwrap();
        entry.0 = PortState::Interdomain {
            remote: from_dom,
            remote_port: lp,
        };
        Ok(lp)
    }

    /// Applies a close in the model, including the other end wherever it is.
    fn model_close(
        models: &mut [Model; 2],
        d: usize,
        port: u32,
    ) -> Result<Option<RemoteEnd>, XenErrno> {
        let peer = models[d].close(port)?;
        let dom = models[d].dom;
        if let Some(end) = peer {
            let t = models.iter().position(|m| m.dom == end.dom).unwrap();
            models[t].peer_closed(end.port, dom);
        }
        // The table reports only other domains' ends.
        Ok(peer.filter(|e| e.dom != dom))
    }

    fn check_same(tables: &[EventChannels; 2], models: &[Model; 2]) {
        for (t, m) in tables.iter().zip(models) {
            let mut in_use = 0;
            for port in 0..=m.nr_ports {
                let want = m.status(port);
                let got = t
                    .status(port)
                    .map(|_| (t.state(port).unwrap(), t.notify_vcpu(port).unwrap()));
                assert_eq!(got, want, "dom {} port {port}", m.dom);
                in_use += u32::from(matches!(want, Ok((s, _)) if s != PortState::Free));
            }
            assert_eq!(t.in_use(), in_use);
            for virq in 0..NR_VIRQS + 1 {
                for vcpu in 0..m.vcpus + 1 {
                    let want = if virq < NR_VIRQS {
                        m.virq_port(virq, vcpu)
                    } else {
                        None
                    };
                    assert_eq!(t.virq_port(virq, vcpu), want, "virq {virq} vcpu {vcpu}");
                }
            }
        }
        // Both ends of every channel agree.
        for t in tables {
            for (port, s) in t.bound_ports() {
                if let PortState::Interdomain {
                    remote,
                    remote_port,
                } = s
                {
                    let other = tables.iter().find(|o| o.domid() == remote).unwrap();
                    assert_eq!(
                        other.state(remote_port),
                        Some(PortState::Interdomain {
                            remote: t.domid(),
                            remote_port: port
                        })
                    );
                }
            }
        }
    }

    #[test]
    fn randomized_table_against_model() {
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let nr_ports = 4 + rng.below(12);
            let mut tables = [
                EventChannels::new(A, 2, nr_ports),
                EventChannels::new(B, 3, nr_ports + 3),
            ];
            let mut models = [
                Model {
                    dom: A,
                    vcpus: 2,
                    nr_ports,
                    ports: BTreeMap::new(),
                },
                Model {
                    dom: B,
                    vcpus: 3,
                    nr_ports: nr_ports + 3,
                    ports: BTreeMap::new(),
                },
            ];
            for _ in 0..600 {
                let d = rng.below(2) as usize;
                let o = 1 - d;
                let port = rng.below(models[d].nr_ports + 2);
                let vcpu = rng.below(4);
                match rng.below(100) {
                    0..=14 => {
                        let remote = [A, B, 7][rng.below(3) as usize];
                        let got = tables[d].alloc_unbound(remote);
                        assert_eq!(got, models[d].alloc_unbound(remote));
                    }
                    15..=29 => {
                        let rport = rng.below(models[o].nr_ports + 2);
                        let [t0, t1] = &mut tables;
                        let got = if d == 0 {
                            bind_interdomain(t0, t1, rport)
                        } else {
                            bind_interdomain(t1, t0, rport)
                        };
                        assert_eq!(got, model_bind(&mut models, d, o, rport));
                    }
                    30..=34 => {
                        let got = tables[d].bind_loopback(port);
                        assert_eq!(got, model_bind(&mut models, d, d, port));
                    }
                    35..=49 => {
                        let virq = rng.below(NR_VIRQS + 2);
                        let got = tables[d].bind_virq(virq, vcpu);
                        assert_eq!(got, models[d].bind_virq(virq, vcpu), "virq {virq}");
                    }
                    50..=57 => {
                        assert_eq!(tables[d].bind_ipi(vcpu), models[d].bind_ipi(vcpu));
                    }
                    58..=67 => {
                        let got = tables[d].bind_vcpu(port, vcpu);
                        assert_eq!(got, models[d].bind_vcpu(port, vcpu));
                    }
                    68..=84 => {
                        let got = tables[d].close(port);
                        let want = model_close(&mut models, d, port);
                        assert_eq!(got.map(|c| c.peer), want);
                        if let Ok(Closed {
                            peer: Some(end), ..
                        }) = got
                        {
                            assert!(tables[o].peer_closed(end.port, tables[d].domid(), port));
                        }
                    }
                    85..=97 => {
                        assert_eq!(tables[d].send(port), models[d].send(port));
                    }
                    _ => {
                        let dom = tables[d].domid();
                        for c in tables[d].reset() {
                            if let Some(end) = c.peer {
                                assert!(tables[o].peer_closed(end.port, dom, c.port));
                            }
                        }
                        let bound: Vec<u32> = models[d].ports.keys().copied().collect();
                        for p in bound {
                            if models[d].ports.contains_key(&p) {
                                model_close(&mut models, d, p).unwrap();
                            }
                        }
                    }
                }
                check_same(&tables, &models);
            }
        }
    }

    #[test]
    fn randomized_bits_against_model() {
        // Per port: pending, masked; per vCPU: selector, upcall flag.
        const PORTS: u32 = 256;
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0xd1b5_4a32_d192_ed03) | 1);
            let w = Words::new(2);
            let mut pending = [false; PORTS as usize];
            let mut masked = [false; PORTS as usize];
            let mut sel = [0u64; 2];
            let mut upcall = [false; 2];
            for _ in 0..3000 {
                let port = rng.below(PORTS);
                let p = port as usize;
                let vcpu = rng.below(2);
                let v = vcpu as usize;
                let word_bit = 1u64 << (port / 64);
                match rng.below(6) {
                    0 | 1 => {
                        let want = if pending[p] {
                            Notify::None
                        } else {
                            pending[p] = true;
                            if masked[p] || sel[v] & word_bit != 0 {
                                Notify::Pending
                            } else {
                                sel[v] |= word_bit;
                                if upcall[v] {
                                    Notify::Pending
                                } else {
                                    upcall[v] = true;
                                    Notify::Upcall
                                }
                            }
                        };
                        assert_eq!(set_pending(&w, port, vcpu), want);
                    }
                    2 => {
                        let was = masked[p];
                        masked[p] = false;
                        let mut want = Notify::None;
                        if was && pending[p] && sel[v] & word_bit == 0 {
                            sel[v] |= word_bit;
                            if !upcall[v] {
                                upcall[v] = true;
                                want = Notify::Upcall;
                            }
                        }
                        assert_eq!(unmask(&w, port, vcpu), want);
                    }
                    3 => {
                        masked[p] = true;
                        w.guest_mask(port);
                    }
                    4 => {
                        pending[p] = false;
                        clear_pending(&w, port);
                    }
                    _ => {
                        assert_eq!(w.guest_take(vcpu), sel[v]);
                        sel[v] = 0;
                        upcall[v] = false;
                    }
                }
                for q in 0..PORTS {
                    assert_eq!(is_pending(&w, q), pending[q as usize]);
                    assert_eq!(is_masked(&w, q), masked[q as usize]);
                }
                for c in 0..2u32 {
                    assert_eq!(w.sel(c), sel[c as usize]);
                    assert_eq!(w.upcall(c) != 0, upcall[c as usize]);
                }
                let some: Vec<u32> = (0..4).map(|_| rng.below(PORTS)).collect();
                assert_eq!(
                    poll_ready(&w, &some),
                    some.iter().any(|&q| pending[q as usize])
                );
            }
        }
    }

    #[test]
    fn backend_ports_send_to_the_hypervisor() {
        let mut t = EventChannels::new(1, 1, 64);
        let store = t.bind_backend(1).unwrap();
        let console = t.bind_backend(2).unwrap();
        assert_ne!(store, console);
        assert_eq!(
            t.send(store),
            Ok(SendTarget::Remote {
                dom: DOMID_XEN,
                port: 1
            })
        );
        let st = t.status(console).unwrap();
        assert_eq!(st.status, EVTCHNSTAT_INTERDOMAIN);
        let closed = t.close(store).unwrap();
        assert_eq!(
            closed.peer,
            Some(RemoteEnd {
                dom: DOMID_XEN,
                port: 1
            })
        );
    }
}
