//! The virtual switch `xenbr0`: the library's learning bridge (`net::bridge`) over the
//! machine's ports — every vif the hypervisor serves, and the first virtio NIC as the
//! uplink — and the way a frame travels between them.
//!
//! A frame from a vif (its tx ring) or from the NIC (its interrupt) goes to
//! [`deliver`]: the bridge picks the egress ports; a vif egress queues it on that
//! device's rx ring (each vif that got frames is served and notified once per batch),
//! the uplink sends it through the NIC after completing what the NIC cannot do (a blank
//! checksum, a GSO packet cut into segments: the driver negotiates no offloads).
//!
//! The switch exists whether or not the machine has a NIC: domains and dom0 still talk
//! to each other through it. Locks, in order: `DOMAINS`, the device registry, then this
//! switch, then the NIC driver's.

use alloc::{collections::VecDeque, string::String, vec::Vec};

use ferrovisor::{
    cmdline::DEFAULT_BRIDGE,
    net::{
        bridge::{Bridge, Forward, PortStats},
        checksum::complete_partial,
        gso, Packet,
    },
};
use ferrovisor_abi::domctl::{set_padded, SwitchPort, PORT_UPLINK, PORT_VIF};
use zerocopy::FromZeros;

use super::devices::{self, Backend, Registry};
use crate::{
    arch::x86_64::irq::IrqMutex,
    clock,
    domain::Domains,
    drivers::net::{self as nic, NetReceiver, NicId},
};

/// A port of the switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PortId {
    /// The machine's NIC.
    Uplink,
    /// The vif with this device id (`devices`' numbering).
    Vif(u32),
}

struct Switch {
    bridge: Bridge<PortId>,
    /// The NIC that is the uplink.
    uplink: Option<NicId>,
    /// Frames for the uplink that found every NIC transmit buffer busy, sent in order as
    /// buffers come free (`tx_room`); at most [`UPLINK_BACKLOG`].
    backlog: VecDeque<Vec<u8>>,
}

/// Frames waiting for the NIC, beyond which the uplink drops (a NIC queue's worth).
const UPLINK_BACKLOG: usize = 256;

static SWITCH: IrqMutex<Option<Switch>> = IrqMutex::new(None);

/// The one switch's name.
pub fn name() -> &'static str {
    DEFAULT_BRIDGE
}

/// Whether a switch of this name exists.
pub fn exists(bridge: &str) -> bool {
    bridge == name()
}

fn with_switch<R>(f: impl FnOnce(&mut Switch) -> R) -> Option<R> {
    SWITCH.lock().as_mut().map(f)
}

/// Makes the switch; the first NIC, if any, becomes its uplink (its frames arrive by
/// interrupt from now on). Call once, after the drivers probed.
pub fn init() {
    let mut bridge = Bridge::default();
    let uplink = (!nic::nics().is_empty()).then_some(0);
    if uplink.is_some() {
        bridge.add_port(PortId::Uplink);
    }
    *SWITCH.lock() = Some(Switch {
        bridge,
        uplink,
        backlog: VecDeque::new(),
    });
    if let Some(n) = uplink {
        static RECEIVER: Uplink = Uplink;
        nic::set_receiver(&RECEIVER);
        log::info!(
            "switch: {} with uplink {} (virtio-net {})",
            name(),
            uplink_name(),
            nic::nics()[n].mac()
        );
    } else {
        log::info!("switch: {} without an uplink (no NIC)", name());
    }
}

/// The uplink's port name, as `fv switch` shows it.
fn uplink_name() -> &'static str {
    "eth0"
}

/// The MAC a vif gets when none was asked for: Xen's `00:16:3e` prefix and three bytes
/// from the NIC's address (dom0's `vif0.0` then looks like the machine), mixed with the
/// domain and device ids for everyone else.
pub fn default_mac(dom: u16, devid: u32) -> [u8; 6] {
    let base = nic::nics().first().map_or([0, 0, 1], |n| {
        let m = n.mac().0;
        [m[3], m[4], m[5]]
    });
    let mix = u32::from(dom).wrapping_mul(0x9e37_79b1) ^ devid.wrapping_mul(0x85eb_ca6b);
    let [a, b, c, _] = mix.to_le_bytes();
    // The mix is 0 only for dom0's first vif.
    [0x00, 0x16, 0x3e, base[0] ^ a, base[1] ^ b, base[2] ^ c]
}

/// Plugs vif `id` in.
pub fn add_vif(id: u32) {
    with_switch(|s| s.bridge.add_port(PortId::Vif(id)));
}

/// Unplugs vif `id`: the addresses learned on it are forgotten.
pub fn remove_vif(id: u32) -> Option<PortStats> {
    with_switch(|s| s.bridge.remove_port(PortId::Vif(id))).flatten()
}

/// Every port, for `ListSwitchPorts`; `vif` names a vif's domain, device id and MAC.
pub fn ports(vif: impl Fn(u32) -> Option<(u16, u32, [u8; 6])>) -> Vec<SwitchPort> {
    let guard = SWITCH.lock();
    let Some(s) = guard.as_ref() else {
        return Vec::new();
    };
    s.bridge
        .ports()
        .filter_map(|p| {
            let stats = s.bridge.stats(p)?;
            let mut e = SwitchPort::new_zeroed();
            let _ = set_padded(&mut e.bridge, name().as_bytes());
            match p {
                PortId::Uplink => {
                    e.kind = PORT_UPLINK;
                    let _ = set_padded(&mut e.name, uplink_name().as_bytes());
                    e.mac = s.uplink.and_then(|n| nic::nics().get(n))?.mac().0;
                }
                PortId::Vif(id) => {
                    let (dom, devid, mac) = vif(id)?;
                    e.kind = PORT_VIF;
                    e.domid = dom;
                    e.devid = devid;
                    e.mac = mac;
                    let _ = set_padded(&mut e.name, port_name(dom, devid).as_bytes());
                }
            }
            e.learned = stats.learned;
            e.rx_packets = stats.rx_packets;
            e.rx_bytes = stats.rx_bytes;
            e.rx_drops = stats.rx_drops;
            e.tx_packets = stats.tx_packets;
            e.tx_bytes = stats.tx_bytes;
            e.tx_drops = stats.tx_drops;
            Some(e)
        })
        .collect()
}

/// `vif3.0`.
pub fn port_name(dom: u16, devid: u32) -> String {
    alloc::format!("vif{dom}.{devid}")
}

/// Sends `packets`, received on `ingress`, where the switch says. Each vif that got
/// frames is served once at the end (one rx pass and one notification per batch).
pub fn deliver(doms: &mut Domains, reg: &mut Registry, ingress: PortId, packets: Vec<Packet>) {
    let mut touched: Vec<u32> = Vec::new();
    for packet in packets {
        let now = clock::now_ns();
        let Some(out) = with_switch(|s| s.bridge.forward(ingress, &packet.data, now)) else {
            return;
        };
        let egress = match out {
            Forward::Drop(_) => continue,
            Forward::Unicast(p) => alloc::vec![p],
            Forward::Flood(ps) => ps,
        };
        let last = egress.len().saturating_sub(1);
        let mut packet = Some(packet);
        for (i, port) in egress.into_iter().enumerate() {
            let p = if i == last {
                packet.take()
            } else {
                packet.clone()
            };
            let Some(p) = p else { break };
            let len = p.data.len();
            let taken = match port {
                PortId::Uplink => send_uplink(p),
                PortId::Vif(id) => match reg.get_mut(id).map(|d| &mut d.backend) {
                    Some(Backend::Vif(v)) => {
                        if !touched.contains(&id) {
                            touched.push(id);
                        }
                        v.queue_rx(p)
                    }
                    _ => false,
                },
            };
            if !taken {
                with_switch(|s| s.bridge.egress_dropped(port, len));
            }
        }
    }
    for id in touched {
        if let Some(dev) = reg.get_mut(id) {
            if let Backend::Vif(v) = &mut dev.backend {
                v.serve_rx(doms, &dev.head);
            }
        }
    }
}

/// Sends a frame out of the NIC: a GSO packet as its segments, every blank checksum
/// completed. False if the NIC did not take it (or all of it).
fn send_uplink(packet: Packet) -> bool {
    let Some(n) = with_switch(|s| s.uplink).flatten() else {
        return false;
    };
    let Ok(segments) = gso::segment(&packet) else {
        return false;
    };
    let mut all = true;
    for mut seg in segments {
        if complete_partial(&mut seg.data, &mut seg.checksum).is_err() {
            all = false;
            continue;
        }
        all &= transmit_or_wait(n, seg.data);
    }
    all
}

/// Sends a frame, or queues it behind the ones already waiting for NIC buffers; false if
/// the NIC refused it or the queue is full.
fn transmit_or_wait(n: NicId, frame: Vec<u8>) -> bool {
    let mut guard = SWITCH.lock();
    let Some(s) = guard.as_mut() else {
        return false;
    };
    if s.backlog.is_empty() {
        match nic::transmit(n, &frame) {
            Ok(()) => return true,
            Err(nic::TxError::Busy) => {}
            Err(_) => return false,
        }
    }
    if s.backlog.len() >= UPLINK_BACKLOG {
        return false;
    }
    s.backlog.push_back(frame);
    true
}

/// NIC buffers came free: send what waits, in order, until the NIC is busy again.
fn drain_uplink(n: NicId) {
    let mut guard = SWITCH.lock();
    let Some(s) = guard.as_mut() else {
        return;
    };
    while let Some(frame) = s.backlog.pop_front() {
        match nic::transmit(n, &frame) {
            Ok(()) => {}
            Err(nic::TxError::Busy) => {
                s.backlog.push_front(frame);
                return;
            }
            // A frame the NIC will never take (it is broken, or the frame is bad).
            Err(_) => {}
        }
    }
}

/// The NIC's frames, in its interrupt.
struct Uplink;

impl NetReceiver for Uplink {
    fn tx_room(&self, nic: NicId) {
        drain_uplink(nic);
    }

    fn receive(&self, _nic: NicId, frame: &[u8]) {
        let packet = Packet::plain(frame.to_vec());
        crate::domain::with_domains(|doms| {
            devices::with_registry(|reg| {
                deliver(doms, reg, PortId::Uplink, alloc::vec![packet]);
            });
        });
    }
}
