//! The vif's xenbus handshake as a state machine: it is told the frontend's `state` and
//! can read the frontend's nodes; it answers with [`Action`]s for the binary to carry out
//! (write a backend node, set the backend's state, connect, disconnect).
//!
//! The sequence (`io/netif.h`'s feature nodes; Linux 6.1 netfront's `talk_to_netback`
//! and `netback_changed`, netback's `frontend_changed`):
//! 1. [`VifXenbus::start`]: the backend's feature nodes, then InitWait.
//! 2. netfront, on InitWait, writes its rings, event channel(s) and features in one
//!    transaction and goes straight to Connected (never Initialised).
//! 3. On the frontend's Connected the machine reads those nodes and says
//!    [`Action::Connect`]; the binary maps the rings, binds the channel(s), attaches the
//!    switch port, then calls [`VifXenbus::connected`] (→ the backend's Connected, which
//!    is when netfront sends its gratuitous ARP) and scans both rings once.
//! 4. Closing ↔ Closing, Closed ↔ Closed; a frontend back at Initialising (a restarted
//!    driver, kexec) after the backend closed sends the backend to InitWait again.

use alloc::vec::Vec;

use ferrovisor_abi::xen::{grant_table::GrantRef, io::xenbus::XenbusState, EvtchnPort};

/// What the backend offers (its feature nodes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendFeatures {
    /// `feature-sg`: accept multi-slot tx packets (without it netfront drops every packet
    /// needing two slots).
    pub sg: bool,
    /// `feature-gso-tcpv4` / `-tcpv6`: accept GSO tx packets. Only with software
    /// segmentation for the ports that cannot take them.
    pub gso_tcpv4: bool,
    pub gso_tcpv6: bool,
    /// `feature-ipv6-csum-offload`: accept IPv6 tx packets with a blank checksum.
    pub ipv6_csum_offload: bool,
    /// `feature-split-event-channels`: let the frontend use one channel per ring.
    pub split_event_channels: bool,
}

impl Default for BackendFeatures {
    fn default() -> Self {
        Self {
            sg: true,
            gso_tcpv4: false,
            gso_tcpv6: false,
            ipv6_csum_offload: true,
            split_event_channels: true,
        }
    }
}

impl BackendFeatures {
    /// The nodes to write under the backend's directory before InitWait. Never
    /// `feature-xdp-headroom` (netfront would wait for a Reconfigured state forever).
    pub fn nodes(&self) -> Vec<(&'static str, &'static str)> {
        let flag = |on: bool| if on { "1" } else { "0" };
        let mut nodes = alloc::vec![
            // Mandatory: netfront refuses a backend without it (-ENODEV).
            ("feature-rx-copy", "1"),
            ("feature-rx-flip", "0"),
            ("feature-sg", flag(self.sg)),
            ("feature-ipv6-csum-offload", flag(self.ipv6_csum_offload)),
            (
                "feature-split-event-channels",
                flag(self.split_event_channels)
            ),
            // One queue: netfront then writes its keys flat, not under queue-N/.
            ("multi-queue-max-queues", "1"),
        ];
        if self.gso_tcpv4 {
            nodes.push(("feature-gso-tcpv4", "1"));
        }
        if self.gso_tcpv6 {
            nodes.push(("feature-gso-tcpv6", "1"));
        }
        nodes
    }
}

/// The frontend's event channel(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventChannels {
    /// `event-channel`: one port for both rings.
    Shared(EvtchnPort),
    /// `event-channel-tx` and `event-channel-rx`.
    Split { tx: EvtchnPort, rx: EvtchnPort },
}

/// What the frontend published for its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendConfig {
    pub tx_ring_ref: GrantRef,
    pub rx_ring_ref: GrantRef,
    pub event_channels: EventChannels,
    /// `feature-sg`: it takes packets over several rx slots.
    pub sg: bool,
    /// `feature-gso-tcpv4` / `-tcpv6`: it takes GSO packets on rx.
    pub gso_tcpv4: bool,
    pub gso_tcpv6: bool,
    /// Not `feature-no-csum-offload`: it takes IPv4 packets with a blank checksum.
    pub csum_offload: bool,
    /// `feature-ipv6-csum-offload`: it takes IPv6 packets with a blank checksum.
    pub ipv6_csum_offload: bool,
}

impl FrontendConfig {
    /// Whether it takes GSO packets of `kind` whole on rx (GSO needs several slots).
    pub fn takes_gso(&self, kind: crate::net::GsoKind) -> bool {
        self.sg
            && match kind {
                crate::net::GsoKind::TcpV4 => self.gso_tcpv4,
                crate::net::GsoKind::TcpV6 => self.gso_tcpv6,
            }
    }
}

#[cfg(test)]
impl FrontendConfig {
    /// What Linux 6.1's netfront negotiates with the default [`BackendFeatures`].
    pub(crate) fn test_default() -> Self {
        Self {
            tx_ring_ref: 8,
            rx_ring_ref: 9,
            event_channels: EventChannels::Shared(5),
            sg: true,
            gso_tcpv4: true,
            gso_tcpv6: true,
            csum_offload: true,
            ipv6_csum_offload: true,
        }
    }
}

/// Why the frontend's nodes do not describe a connection the backend can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// A required node is missing.
    Missing(&'static str),
    /// A node is not a decimal number in range.
    Invalid(&'static str),
    /// `request-rx-copy` is not 1 (page flipping is not supported).
    NoRxCopy,
    /// `feature-rx-notify` is not 1 (netback requires it as well).
    NoRxNotify,
    /// More than one queue asked for (one was offered).
    MultiQueue,
}

/// Something the binary must do for the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write `value` to the backend's node `name` (relative to its directory).
    Write(&'static str, &'static str),
    /// Write the backend's `state`.
    SetState(XenbusState),
    /// Map the rings, bind the channel(s), attach the switch port, then call
    /// [`VifXenbus::connected`] (or [`VifXenbus::connect_failed`]).
    Connect(FrontendConfig),
    /// Unbind, unmap, detach the switch port; drop the engine's state.
    Disconnect,
    /// The frontend's nodes are unusable: log it (and write it to the backend's `error`
    /// node, as `xenbus_dev_fatal` does).
    Error(ConnectError),
}

/// The frontend's directory in xenstore.
pub trait FrontendNodes {
    /// The value of node `name` under the frontend's directory, `None` if absent.
    fn read(&mut self, name: &str) -> Option<Vec<u8>>;
}

fn text(value: &[u8]) -> Option<&str> {
    core::str::from_utf8(value)
        .ok()
        .map(|t| t.trim_end_matches(['\0', '\n']).trim())
}

fn read_u32(nodes: &mut impl FrontendNodes, name: &'static str) -> Result<u32, ConnectError> {
    let value = nodes.read(name).ok_or(ConnectError::Missing(name))?;
    text(&value)
        .and_then(|t| t.parse().ok())
        .ok_or(ConnectError::Invalid(name))
}

/// A feature flag: absent or unreadable is `default` (`xenbus_read_unsigned`).
fn read_flag(nodes: &mut impl FrontendNodes, name: &str, default: bool) -> bool {
    nodes
        .read(name)
        .and_then(|v| text(&v).and_then(|t| t.parse::<u32>().ok()))
        .map_or(default, |n| n != 0)
}

/// Reads and checks the frontend's connection nodes.
pub fn read_frontend(
    nodes: &mut impl FrontendNodes,
    features: &BackendFeatures,
) -> Result<FrontendConfig, ConnectError> {
    if let Some(v) = nodes.read("multi-queue-num-queues") {
        let n: u32 = text(&v)
            .and_then(|t| t.parse().ok())
            .ok_or(ConnectError::Invalid("multi-queue-num-queues"))?;
        if n > 1 {
            return Err(ConnectError::MultiQueue);
        }
    }
    let tx_ring_ref = read_u32(nodes, "tx-ring-ref")?;
    let rx_ring_ref = read_u32(nodes, "rx-ring-ref")?;
    let split = features.split_event_channels
        && nodes.read("event-channel-tx").is_some()
        && nodes.read("event-channel-rx").is_some();
    let event_channels = if split {
        EventChannels::Split {
            tx: read_u32(nodes, "event-channel-tx")?,
            rx: read_u32(nodes, "event-channel-rx")?,
        }
    } else {
        EventChannels::Shared(read_u32(nodes, "event-channel")?)
    };
    match nodes.read("request-rx-copy") {
        None => return Err(ConnectError::NoRxCopy),
        Some(v) if text(&v).and_then(|t| t.parse::<u32>().ok()) != Some(1) => {
            return Err(ConnectError::NoRxCopy)
        }
        Some(_) => {}
    }
    if !read_flag(nodes, "feature-rx-notify", false) {
        return Err(ConnectError::NoRxNotify);
    }
    Ok(FrontendConfig {
        tx_ring_ref,
        rx_ring_ref,
        event_channels,
        sg: read_flag(nodes, "feature-sg", false),
        gso_tcpv4: read_flag(nodes, "feature-gso-tcpv4", false),
        gso_tcpv6: read_flag(nodes, "feature-gso-tcpv6", false),
        csum_offload: !read_flag(nodes, "feature-no-csum-offload", false),
        ipv6_csum_offload: read_flag(nodes, "feature-ipv6-csum-offload", false),
    })
}

/// The backend's side of one vif's handshake.
#[derive(Clone, Debug)]
pub struct VifXenbus {
    features: BackendFeatures,
    state: XenbusState,
    /// The binary holds a connection (rings mapped, or being mapped).
    attached: bool,
}

impl VifXenbus {
    /// A device whose backend has not yet announced itself (state Initialising).
    pub fn new(features: BackendFeatures) -> Self {
        Self {
            features,
            state: XenbusState::Initialising,
            attached: false,
        }
    }

    /// The backend's state as last set.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// What the backend offers.
    pub fn features(&self) -> &BackendFeatures {
        &self.features
    }

    fn set(&mut self, state: XenbusState, out: &mut Vec<Action>) {
        if self.state != state {
            self.state = state;
            out.push(Action::SetState(state));
        }
    }

    fn detach(&mut self, out: &mut Vec<Action>) {
        if self.attached {
            self.attached = false;
            out.push(Action::Disconnect);
        }
    }

    /// Announces the backend: its feature nodes, then InitWait.
    pub fn start(&mut self) -> Vec<Action> {
        let mut out: Vec<Action> = self
            .features
            .nodes()
            .into_iter()
            .map(|(n, v)| Action::Write(n, v))
            .collect();
        self.set(XenbusState::InitWait, &mut out);
        out
    }

    /// The frontend's `state` changed (or its watch fired) to `front`.
    pub fn frontend_changed(
        &mut self,
        front: XenbusState,
        nodes: &mut impl FrontendNodes,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        match front {
            XenbusState::Initialising => match self.state {
                XenbusState::Initialising => out = self.start(),
                XenbusState::InitWait => {}
                // A frontend starting over (restarted driver, kexec, resume): drop the
                // old connection and offer a new one. The feature nodes are still there.
                _ => {
                    self.detach(&mut out);
                    self.set(XenbusState::InitWait, &mut out);
                }
            },
            XenbusState::Connected if self.state == XenbusState::InitWait && !self.attached => {
                match read_frontend(nodes, &self.features) {
                    Ok(config) => {
                        self.attached = true;
                        out.push(Action::Connect(config));
                    }
                    Err(e) => {
                        out.push(Action::Error(e));
                        self.set(XenbusState::Closing, &mut out);
                    }
                }
            }
            XenbusState::Closing => {
                self.detach(&mut out);
                if self.state != XenbusState::Closed {
                    self.set(XenbusState::Closing, &mut out);
                }
            }
            XenbusState::Closed | XenbusState::Unknown => {
                self.detach(&mut out);
                if self.state != XenbusState::Closed {
                    // The shortest path passes Closing (netback's set_backend_state).
                    self.set(XenbusState::Closing, &mut out);
                    self.set(XenbusState::Closed, &mut out);
                }
            }
            // Initialised (netfront never uses it), a repeated Connected, and the XDP
            // reconfiguration states (never offered).
            _ => {}
        }
        out
    }

    /// The binary finished [`Action::Connect`]: the backend is Connected. (Then scan
    /// both rings once: netfront kicked its channels before it saw this.)
    pub fn connected(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if self.attached && self.state == XenbusState::InitWait {
            self.set(XenbusState::Connected, &mut out);
        }
        out
    }

    /// The binary could not connect (a ring grant that does not map, a bad port): undo
    /// and close.
    pub fn connect_failed(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.detach(&mut out);
        self.set(XenbusState::Closing, &mut out);
        out
    }

    /// The backend closes the device (a detach): Closing, the rings still served until
    /// the frontend closes its end (netfront answers Closed at once); its Closed then
    /// brings the backend to Closed, where the device may go.
    pub fn close(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state != XenbusState::Closing && self.state != XenbusState::Closed {
            self.set(XenbusState::Closing, &mut out);
        }
        out
    }

    /// The engine found a protocol violation ([`super::VifError`]): close the device, as
    /// netback's fatal errors do.
    pub fn protocol_error(&mut self) -> Vec<Action> {
        self.connect_failed()
    }
}

#[cfg(test)]
mod tests {
    use alloc::{collections::BTreeMap, string::String, vec};

    use super::*;

    #[derive(Default)]
    struct Nodes(BTreeMap<String, Vec<u8>>);

    impl Nodes {
        fn set(&mut self, k: &str, v: &str) {
            self.0.insert(k.into(), v.as_bytes().to_vec());
        }
        /// What Linux 6.1's netfront writes in `talk_to_netback` (one queue).
        fn netfront() -> Self {
            let mut n = Nodes::default();
            for (k, v) in [
                ("backend", "/local/domain/0/backend/vif/3/0"),
                ("backend-id", "0"),
                ("handle", "0"),
                ("mac", "00:16:3e:01:02:03"),
                ("multi-queue-num-queues", "1"),
                ("tx-ring-ref", "1280"),
                ("rx-ring-ref", "1281"),
                ("event-channel", "9"),
                ("request-rx-copy", "1"),
                ("feature-rx-notify", "1"),
                ("feature-sg", "1"),
                ("feature-gso-tcpv4", "1"),
                ("feature-gso-tcpv6", "1"),
                ("feature-ipv6-csum-offload", "1"),
            ] {
                n.set(k, v);
            }
            n
        }
    }

    impl FrontendNodes for Nodes {
        fn read(&mut self, name: &str) -> Option<Vec<u8>> {
            self.0.get(name).cloned()
        }
    }

    use XenbusState::*;

    #[test]
    fn a_detach_closes_and_the_frontends_closed_finishes_it() {
        let mut xb = VifXenbus::new(BackendFeatures::default());
        xb.start();
        let mut nodes = Nodes::netfront();
        assert!(matches!(
            xb.frontend_changed(Connected, &mut nodes).as_slice(),
            [Action::Connect(_)]
        ));
        xb.connected();
        assert_eq!(xb.close(), vec![Action::SetState(Closing)]);
        // Still connected: netfront may have responses to collect.
        assert_eq!(xb.close(), vec![]);
        assert_eq!(
            xb.frontend_changed(Closed, &mut nodes),
            vec![Action::Disconnect, Action::SetState(Closed)]
        );
        assert_eq!(xb.close(), vec![]);
        // A detach of a device whose frontend never came: Closing, then its Closed.
        let mut idle = VifXenbus::new(BackendFeatures::default());
        idle.start();
        assert_eq!(idle.close(), vec![Action::SetState(Closing)]);
        assert_eq!(
            idle.frontend_changed(Closed, &mut Nodes::default()),
            vec![Action::SetState(Closed)]
        );
    }

    #[test]
    fn netfronts_sequence_connects() {
        let mut xb = VifXenbus::new(BackendFeatures::default());
        let start = xb.start();
        assert!(start.contains(&Action::Write("feature-rx-copy", "1")));
        assert!(start.contains(&Action::Write("feature-sg", "1")));
        assert!(start.contains(&Action::Write("feature-rx-flip", "0")));
        assert!(start.contains(&Action::Write("multi-queue-max-queues", "1")));
        assert!(!start
            .iter()
            .any(|a| matches!(a, Action::Write("feature-xdp-headroom", _))));
        assert!(!start
            .iter()
            .any(|a| matches!(a, Action::Write("feature-gso-tcpv4", _))));
        assert_eq!(start.last(), Some(&Action::SetState(InitWait)));
        // The frontend watch fires at once with Initialising: nothing new.
        let mut empty = Nodes::default();
        assert_eq!(xb.frontend_changed(Initialising, &mut empty), vec![]);
        // netfront writes its nodes and goes to Connected.
        let mut nodes = Nodes::netfront();
        let acts = xb.frontend_changed(Connected, &mut nodes);
        let cfg = match acts.as_slice() {
            [Action::Connect(cfg)] => *cfg,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            cfg,
            FrontendConfig {
                tx_ring_ref: 1280,
                rx_ring_ref: 1281,
                event_channels: EventChannels::Shared(9),
                sg: true,
                gso_tcpv4: true,
                gso_tcpv6: true,
                csum_offload: true,
                ipv6_csum_offload: true,
            }
        );
        // Still InitWait until the binary reports the connection made.
        assert_eq!(xb.state(), InitWait);
        assert_eq!(xb.frontend_changed(Connected, &mut nodes), vec![]);
        assert_eq!(xb.connected(), vec![Action::SetState(Connected)]);
        assert_eq!(xb.frontend_changed(Connected, &mut nodes), vec![]);
        assert_eq!(xb.connected(), vec![]);
    }

    #[test]
    fn closing_closed_and_starting_over() {
        let mut xb = VifXenbus::new(BackendFeatures::default());
        xb.start();
        let mut nodes = Nodes::netfront();
        xb.frontend_changed(Connected, &mut nodes);
        xb.connected();
        // netfront's xennet_bus_close: Closing, wait for Closing, then Closed.
        assert_eq!(
            xb.frontend_changed(Closing, &mut nodes),
            vec![Action::Disconnect, Action::SetState(Closing)]
        );
        assert_eq!(
            xb.frontend_changed(Closed, &mut nodes),
            vec![Action::SetState(Closed)]
        );
        assert_eq!(xb.frontend_changed(Closed, &mut nodes), vec![]);
        // The driver comes back (module reload, kexec): InitWait again, then a new connection.
        assert_eq!(
            xb.frontend_changed(Initialising, &mut nodes),
            vec![Action::SetState(InitWait)]
        );
        assert!(matches!(
            xb.frontend_changed(Connected, &mut nodes).as_slice(),
            [Action::Connect(_)]
        ));
        assert_eq!(xb.connected(), vec![Action::SetState(Connected)]);
        // A frontend reset straight to Initialising while connected (a resume).
        assert_eq!(
            xb.frontend_changed(Initialising, &mut nodes),
            vec![Action::Disconnect, Action::SetState(InitWait)]
        );
        // The frontend's directory vanished (domain gone): close.
        assert_eq!(
            xb.frontend_changed(Unknown, &mut nodes),
            vec![Action::SetState(Closing), Action::SetState(Closed)]
        );
    }

    #[test]
    fn split_channels_and_old_frontend_flags() {
        let mut nodes = Nodes::netfront();
        nodes.0.remove("event-channel");
        nodes.set("event-channel-tx", "11");
        nodes.set("event-channel-rx", "12\0");
        nodes.set("feature-no-csum-offload", "1");
        nodes.0.remove("feature-sg");
        let cfg = read_frontend(&mut nodes, &BackendFeatures::default()).unwrap();
        assert_eq!(cfg.event_channels, EventChannels::Split { tx: 11, rx: 12 });
        assert!(!cfg.csum_offload && !cfg.sg);
        // Without split channels offered, a lone event-channel is required.
        let off = BackendFeatures {
            split_event_channels: false,
            ..BackendFeatures::default()
        };
        assert_eq!(
            read_frontend(&mut nodes, &off),
            Err(ConnectError::Missing("event-channel"))
        );
        assert!(off.nodes().contains(&("feature-split-event-channels", "0")));
    }

    #[test]
    fn bad_frontend_nodes_close_the_device() {
        let cases: [(&str, Option<&str>, ConnectError); 7] = [
            ("request-rx-copy", Some("0"), ConnectError::NoRxCopy),
            ("request-rx-copy", None, ConnectError::NoRxCopy),
            ("feature-rx-notify", Some("0"), ConnectError::NoRxNotify),
            ("tx-ring-ref", None, ConnectError::Missing("tx-ring-ref")),
            (
                "rx-ring-ref",
                Some("-1"),
                ConnectError::Invalid("rx-ring-ref"),
            ),
            (
                "event-channel",
                Some("99999999999"),
                ConnectError::Invalid("event-channel"),
            ),
            (
                "multi-queue-num-queues",
                Some("4"),
                ConnectError::MultiQueue,
            ),
        ];
        for (node, value, err) in cases {
            let mut nodes = Nodes::netfront();
            match value {
                Some(v) => nodes.set(node, v),
                None => {
                    nodes.0.remove(node);
                }
            }
            let mut xb = VifXenbus::new(BackendFeatures::default());
            xb.start();
            assert_eq!(
                xb.frontend_changed(Connected, &mut nodes),
                vec![Action::Error(err), Action::SetState(Closing)],
                "{node}"
            );
        }
        // A failed mapping undoes the connection and closes.
        let mut xb = VifXenbus::new(BackendFeatures::default());
        xb.start();
        xb.frontend_changed(Connected, &mut Nodes::netfront());
        assert_eq!(
            xb.connect_failed(),
            vec![Action::Disconnect, Action::SetState(Closing)]
        );
        assert_eq!(xb.connected(), vec![]);
    }

    #[test]
    fn gso_is_offered_only_when_asked() {
        let f = BackendFeatures {
            gso_tcpv4: true,
            gso_tcpv6: true,
            ..BackendFeatures::default()
        };
        assert!(f.nodes().contains(&("feature-gso-tcpv4", "1")));
        assert!(f.nodes().contains(&("feature-gso-tcpv6", "1")));
    }
}
