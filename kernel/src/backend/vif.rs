//! The vif backend (`io/netif.h`) on the virtual switch: the library's handshake
//! (`vif::xenbus`) and engine (`vif`) over a frontend's two mapped rings and grant
//! copies. Its tx ring feeds [`switch::deliver`]; the switch queues frames for it with
//! [`Vif::queue_rx`] and has it serve its rx ring with [`Vif::serve_rx`].

use alloc::{collections::VecDeque, format, string::String, vec::Vec};

use zerocopy::FromZeros;

use ferrovisor::{
    cmdline::Dom0Vif,
    mm::frame_table::DomId,
    net::{ethernet::MacAddr, Packet},
    vif::{
        self as engine,
        xenbus::{Action, BackendFeatures, EventChannels, FrontendConfig, VifXenbus},
        GrantCopy, VifStats,
    },
    xenbus::{self as layout, Dir},
};
use ferrovisor_abi::{
    domctl::{
        padded_str, set_padded, DeviceAttach, DeviceInfo, DeviceRefusal, DEVICE_VIF, DEVID_AUTO,
    },
    errno::XenErrno,
    xen::{grant_table::GrantRef, io::xenbus::XenbusState},
};

use super::{
    devices::{self, FrontNodes, Head},
    grant_io::{self, RingPages},
    switch,
};
use crate::domain::Domains;

/// Packets one kick takes from a tx ring before the rest waits for the next tick (a
/// guest producing as fast as it is served cannot hold the CPU in one hypercall).
const TX_BUDGET: usize = 256;
const TX_ROUNDS: usize = 4;

/// What a vif is, decided at attach.
#[derive(Clone, Debug)]
pub struct Plan {
    pub devid: u32,
    pub mac: [u8; 6],
    pub bridge: String,
}

impl Plan {
    /// The starting directories of both ends.
    pub fn dirs(&self, dom: DomId) -> [Dir; 2] {
        layout::vif_dirs(dom.0, self.devid, self.mac, &self.bridge)
    }
}

/// Grant copies to and from the frontend's pages.
struct FrontGrants<'a> {
    doms: &'a mut Domains,
    dom: DomId,
}

impl GrantCopy for FrontGrants<'_> {
    fn copy_from_grant(
        &mut self,
        gref: GrantRef,
        offset: u16,
        buf: &mut [u8],
    ) -> Result<(), XenErrno> {
        grant_io::copy_from_grant(self.doms, self.dom, gref, usize::from(offset), buf)
            .map_err(|_| XenErrno::Efault)
    }
    fn copy_to_grant(&mut self, gref: GrantRef, offset: u16, data: &[u8]) -> Result<(), XenErrno> {
        grant_io::copy_to_grant(self.doms, self.dom, gref, usize::from(offset), data)
            .map_err(|_| XenErrno::Efault)
    }
}

/// A connected frontend.
struct Conn {
    engine: engine::Vif,
    tx: RingPages,
    rx: RingPages,
    /// (tx port, rx port): the same port twice unless the channels are split.
    ports: (u32, u32),
}

/// One vif.
pub struct Vif {
    plan: Plan,
    xenbus: VifXenbus,
    conn: Option<Conn>,
    /// Counters of connections before the current one.
    earlier: VifStats,
    /// The tx ring had more than one kick's budget: the tick serves the rest.
    backlog: bool,
    /// Frames for a frontend that is not connected yet are dropped, counted here.
    unconnected_drops: u64,
}

impl Vif {
    /// Checks an attach request: a unicast MAC (or none: one is made), the switch, the
    /// device id (`DEVID_AUTO`: the lowest free). `taken` are the domain's vif devids.
    pub fn plan(dom: DomId, req: &DeviceAttach, taken: &[u32]) -> Result<Plan, DeviceRefusal> {
        let bridge =
            core::str::from_utf8(padded_str(&req.bridge)).map_err(|_| DeviceRefusal::BadSpec)?;
        let bridge = if bridge.is_empty() {
            switch::name()
        } else {
            bridge
        };
        if !switch::exists(bridge) {
            return Err(DeviceRefusal::NoSuchBridge);
        }
        if req.vdev != 0 || req.mode != 0 || req.device_type != 0 {
            return Err(DeviceRefusal::BadSpec);
        }
        let devid = match req.devid {
            DEVID_AUTO => (0..).find(|d| !taken.contains(d)).unwrap_or(0),
            d if d > 0xffff => return Err(DeviceRefusal::BadSpec),
            d if taken.contains(&d) => return Err(DeviceRefusal::DevidInUse),
            d => d,
        };
        let mac = MacAddr(req.mac);
        let mac = if mac.is_zero() {
            switch::default_mac(dom.0, devid)
        } else if mac.is_unicast() {
            mac.0
        } else {
            return Err(DeviceRefusal::BadSpec);
        };
        Ok(Plan {
            devid,
            mac,
            bridge: String::from(bridge),
        })
    }

    pub fn new(plan: Plan) -> Vif {
        Vif {
            plan,
            // GSO: a frontend's large TCP segments cross the switch whole to a frontend
            // that takes them, and are cut for one that does not (and for the uplink).
            xenbus: VifXenbus::new(BackendFeatures {
                gso_tcpv4: true,
                gso_tcpv6: true,
                ..BackendFeatures::default()
            }),
            conn: None,
            earlier: VifStats::default(),
            backlog: false,
            unconnected_drops: 0,
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.plan.mac
    }

    /// `00:16:3e:01:02:03 on xenbr0`.
    pub fn describe(&self) -> String {
        format!("{} on {}", MacAddr(self.plan.mac), self.plan.bridge)
    }

    pub fn state(&self) -> XenbusState {
        self.xenbus.state()
    }

    fn stats(&self) -> VifStats {
        let now = self
            .conn
            .as_ref()
            .map(|c| c.engine.stats())
            .unwrap_or_default();
        let mut all = self.earlier;
        all += now;
        all.rx_dropped += self.unconnected_drops;
        all
    }

    pub fn fill_info(&self, info: &mut DeviceInfo) {
        info.mac = self.plan.mac;
        let _ = set_padded(&mut info.bridge, self.plan.bridge.as_bytes());
        if let Some(c) = &self.conn {
            let cfg = c.engine.config();
            info.evtchn = c.ports.0;
            info.ring_ref = [cfg.tx_ring_ref, cfg.rx_ring_ref];
        }
        let s = self.stats();
        info.requests = s.tx_packets + s.rx_packets;
        info.errors = s.tx_errors + s.rx_errors;
    }

    /// The device exists: features, InitWait.
    pub fn start(&mut self, doms: &mut Domains, head: &Head) {
        let acts = self.xenbus.start();
        self.run(doms, head, acts);
    }

    /// The frontend's state is `state` now.
    pub fn frontend_changed(&mut self, doms: &mut Domains, head: &Head, state: XenbusState) {
        let acts = self
            .xenbus
            .frontend_changed(state, &mut FrontNodes { doms, head });
        self.run(doms, head, acts);
    }

    /// A detach: Closing (netfront then closes its end).
    pub fn close(&mut self, doms: &mut Domains, head: &Head) {
        let acts = self.xenbus.close();
        self.run(doms, head, acts);
    }

    /// The device goes (destroy, forced detach): stop serving, give everything back.
    pub fn teardown(&mut self, doms: &mut Domains, head: &Head) {
        self.disconnect(doms, head);
    }

    /// The frontend kicked a port (or the tick found a backlog): answers its rx ring's
    /// new requests and takes the packets off its tx ring, returned for the switch.
    pub fn kick(&mut self, doms: &mut Domains, head: &Head) -> Vec<Packet> {
        self.serve_rx(doms, head);
        let mut out = Vec::new();
        self.backlog = false;
        for _ in 0..TX_ROUNDS {
            let Some(c) = self.conn.as_mut() else {
                break;
            };
            let mut mem = c.tx.memory();
            let r = c.engine.process_tx(
                &mut mem,
                &mut FrontGrants {
                    doms,
                    dom: head.dom,
                },
                TX_BUDGET,
                |p| {
                    out.push(p);
                    true
                },
            );
            let port = c.ports.0;
            match r {
                Ok(s) => {
                    if s.notify {
                        head.notify(doms, port);
                    }
                    if !s.more {
                        break;
                    }
                    self.backlog = true;
                }
                Err(e) => {
                    self.broken(doms, head, e);
                    break;
                }
            }
        }
        out
    }

    /// Whether the tx ring was left with work (see [`TX_BUDGET`]).
    pub fn backlog(&self) -> bool {
        self.backlog
    }

    /// A frame from the switch, queued for the rx ring; false if it cannot take it.
    pub fn queue_rx(&mut self, packet: Packet) -> bool {
        match self.conn.as_mut() {
            Some(c) if self.xenbus.state() == XenbusState::Connected => c.engine.queue_rx(packet),
            _ => {
                self.unconnected_drops += 1;
                false
            }
        }
    }

    /// Delivers what is queued into the frontend's posted rx pages.
    pub fn serve_rx(&mut self, doms: &mut Domains, head: &Head) {
        let Some(c) = self.conn.as_mut() else {
            return;
        };
        let mut mem = c.rx.memory();
        let r = c.engine.process_rx(
            &mut mem,
            &mut FrontGrants {
                doms,
                dom: head.dom,
            },
        );
        let port = c.ports.1;
        match r {
            Ok(s) if s.notify => head.notify(doms, port),
            Ok(_) => {}
            Err(e) => self.broken(doms, head, e),
        }
    }

    fn broken(&mut self, doms: &mut Domains, head: &Head, e: engine::VifError) {
        head.warn(format_args!(
            "the frontend broke the protocol ({e:?}); device closed"
        ));
        let acts = self.xenbus.protocol_error();
        self.run(doms, head, acts);
    }

    /// Carries out the handshake's actions, in order.
    fn run(&mut self, doms: &mut Domains, head: &Head, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            match a {
                Action::Write(node, value) => head.write(doms, node, value),
                Action::SetState(s) => head.set_state(doms, s),
                Action::Connect(config) => match self.connect(doms, head, config) {
                    Ok(()) => {
                        queue.extend(self.xenbus.connected());
                        // netfront kicked both rings before it saw Connected.
                        self.backlog = true;
                    }
                    Err(why) => {
                        head.warn(format_args!("cannot connect: {why}"));
                        head.write(doms, "error", why);
                        queue.extend(self.xenbus.connect_failed());
                    }
                },
                Action::Disconnect => self.disconnect(doms, head),
                Action::Error(e) => {
                    let why = format!("the frontend's nodes: {e:?}");
                    head.warn(format_args!("cannot connect: {why}"));
                    head.write(doms, "error", &why);
                }
            }
        }
    }

    fn connect(
        &mut self,
        doms: &mut Domains,
        head: &Head,
        config: FrontendConfig,
    ) -> Result<(), &'static str> {
        let tx = RingPages::map(doms, head.dom, &[config.tx_ring_ref])
            .map_err(|_| "tx-ring-ref is not a page granted to the backend")?;
        let rx = match RingPages::map(doms, head.dom, &[config.rx_ring_ref]) {
            Ok(rx) => rx,
            Err(_) => {
                tx.release(doms);
                return Err("rx-ring-ref is not a page granted to the backend");
            }
        };
        let ports = match config.event_channels {
            EventChannels::Shared(p) => (p, p),
            EventChannels::Split { tx, rx } => (tx, rx),
        };
        let mut bound: Vec<u32> = Vec::new();
        for p in [ports.0, ports.1] {
            if bound.contains(&p) {
                continue;
            }
            if let Err(e) = head.connect_port(doms, p) {
                for b in bound {
                    head.release_port(doms, b);
                }
                tx.release(doms);
                rx.release(doms);
                return Err(e);
            }
            bound.push(p);
        }
        self.conn = Some(Conn {
            engine: engine::Vif::new(config),
            tx,
            rx,
            ports,
        });
        Ok(())
    }

    fn disconnect(&mut self, doms: &mut Domains, head: &Head) {
        if let Some(c) = self.conn.take() {
            self.earlier += c.engine.stats();
            c.tx.release(doms);
            c.rx.release(doms);
            head.release_port(doms, c.ports.0);
            if c.ports.1 != c.ports.0 {
                head.release_port(doms, c.ports.1);
            }
        }
        self.backlog = false;
    }
}

/// Gives dom0 its `vif0.0` as `dom0_vif=` says (before dom0 runs, so that netfront finds
/// it at boot).
pub fn attach_dom0_vif(doms: &mut Domains, vif: &Dom0Vif<'_>) {
    let Dom0Vif::On { mac, bridge } = *vif else {
        log::info!("dom0_vif=none: dom0 has no network interface");
        return;
    };
    let mut req = DeviceAttach::new_zeroed();
    req.kind = DEVICE_VIF;
    req.devid = 0;
    req.mac = mac.unwrap_or([0; 6]);
    if set_padded(&mut req.bridge, bridge.as_bytes()).is_none() {
        log::error!("dom0_vif: bridge name '{bridge}' too long; dom0 has no vif");
        return;
    }
    if let Err(e) = devices::attach(doms, crate::domain::DOM0, &mut req) {
        let why = match e.refusal.reason {
            DeviceRefusal::NoSuchBridge => {
                format!(
                    "no switch named '{bridge}' (this host has {})",
                    switch::name()
                )
            }
            r => format!("{r:?} ({:?})", e.errno),
        };
        log::error!("dom0_vif: not attached: {why}");
    }
}
