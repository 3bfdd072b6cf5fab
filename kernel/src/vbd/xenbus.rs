//! The vbd's xenbus handshake (`io/blkif.h`'s feature nodes, `io/xenbus.h`'s states), as
//! a state machine: the binary tells it the frontend's state and lets it read the
//! frontend's nodes; it answers with [`Action`]s (write a node in the backend's
//! directory, switch state, connect or disconnect the ring).
//!
//! The sequence Linux 6.1's blkfront follows:
//! 1. the backend writes its features and goes InitWait ([`VbdXenbus::start`]);
//! 2. blkfront writes `ring-ref` (or `ring-page-order` and `ring-ref0..N`),
//!    `event-channel`, `protocol`, and goes Initialised;
//! 3. the backend maps the ring and binds the channel ([`Action::Connect`]), then
//!    ([`VbdXenbus::connect_result`]) writes `sectors`, `info`, `sector-size`,
//!    `physical-sector-size` and goes Connected;
//! 4. closing: Closing ↔ Closing, then Closed ↔ Closed; a frontend back at Initialising
//!    while the backend is Closed (a reloaded driver, kexec) makes it InitWait again.
//!
//! After a restore blkfront writes its ring details and goes Initialised at once, without
//! waiting for InitWait: the features are written by `start` before the guest can look,
//! and a frontend already Initialised (or Connected) when the backend starts is
//! connected to straight away.

use alloc::{format, string::String, vec, vec::Vec};

use ferrovisor_abi::xen::{
    grant_table::GrantRef,
    io::{
        blkif::{BLKIF_MAX_RING_PAGE_ORDER, BLKIF_MAX_SEGMENTS_PER_REQUEST},
        xenbus::XenbusState,
    },
    EvtchnPort,
};

/// The frontend's directory, read by node name (`ring-ref`).
pub trait FrontendNodes {
    /// The node's value, `None` if it does not exist or cannot be read.
    fn read(&mut self, node: &str) -> Option<Vec<u8>>;
}

/// Discard as the disk offers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscardInfo {
    /// `discard-granularity`, bytes.
    pub granularity: u32,
    /// `discard-alignment`, bytes.
    pub alignment: u32,
}

/// What the backend tells the frontend about the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advertisement {
    /// `max-ring-page-order` (at most 4).
    pub max_ring_page_order: u32,
    /// `feature-max-indirect-segments`; ≤ 11 is not written (no indirect requests).
    pub max_indirect_segments: u16,
    /// `feature-flush-cache`.
    pub flush: bool,
    /// `feature-discard` and its parameters; `None` writes `feature-discard` = 0.
    pub discard: Option<DiscardInfo>,
    /// `sectors`: the target's size in 512-byte sectors.
    pub sectors: u64,
    /// `info`: `VDISK_*` bits.
    pub info: u32,
    /// `sector-size`, `physical-sector-size` in bytes.
    pub sector_size: u32,
    pub physical_sector_size: u32,
}

/// The ring the frontend offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingDetails {
    /// One grant per page, `1 << order` of them, in ring order.
    pub grefs: Vec<GrantRef>,
    pub order: u32,
    pub event_channel: EvtchnPort,
}

impl RingDetails {
    /// The ring's size in bytes (for [`super::engine::VbdEngine::new`]).
    pub fn bytes(&self) -> usize {
        4096 << self.order
    }
}

/// What is wrong with the frontend's details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// A node is missing or not a number (its name).
    BadNode(String),
    /// `ring-page-order` above what was advertised.
    RingPageOrder(u32),
    /// `protocol` names an ABI the backend does not speak.
    Protocol(String),
    /// Mapping the ring or binding the channel failed (the binary's reason).
    MapFailed(&'static str),
}

/// Something for the binary to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write `value` to the node of that name in the backend's directory.
    Write(&'static str, String),
    /// Write the backend's `state`.
    SetState(XenbusState),
    /// Map the ring and bind the event channel, then call
    /// [`VbdXenbus::connect_result`].
    Connect(RingDetails),
    /// Stop serving: [`super::engine::VbdEngine::disconnect`], unmap, unbind.
    Disconnect,
    /// Report the error (xenbus writes it under `error/`; a log line will do) — a
    /// [`Action::SetState`] Closing follows.
    Fatal(ConnectError),
}

/// The backend's side of the handshake for one vbd.
#[derive(Clone, Debug)]
pub struct VbdXenbus {
    adv: Advertisement,
    state: XenbusState,
    /// A [`Action::Connect`] went out and no result came back yet.
    connecting: bool,
    /// The ring is (being) served: a disconnect is owed before going away.
    connected: bool,
}

/// The ABI a 64-bit frontend names (`XEN_IO_PROTO_ABI_X86_64`).
pub const PROTOCOL_X86_64: &str = "x86_64-abi";

fn parse_u32(value: &[u8]) -> Option<u32> {
    let text = core::str::from_utf8(value).ok()?;
    let text = text.trim_end_matches(['\0', '\n']).trim();
    text.parse().ok()
}

impl VbdXenbus {
    pub fn new(adv: Advertisement) -> Self {
        let max_ring_page_order = adv.max_ring_page_order.min(BLKIF_MAX_RING_PAGE_ORDER);
        VbdXenbus {
            adv: Advertisement {
                max_ring_page_order,
                ..adv
            },
            state: XenbusState::Initialising,
            connecting: false,
            connected: false,
        }
    }

    /// The backend's state as last set.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// Whether the ring is being served.
    pub fn connected(&self) -> bool {
        self.connected
    }

    fn features(&self) -> Vec<Action> {
        let a = &self.adv;
        let mut out = Vec::new();
        if usize::from(a.max_indirect_segments) > BLKIF_MAX_SEGMENTS_PER_REQUEST {
            out.push(Action::Write(
                "feature-max-indirect-segments",
                format!("{}", a.max_indirect_segments),
            ));
        }
        out.push(Action::Write(
            "max-ring-page-order",
            format!("{}", a.max_ring_page_order),
        ));
        out.push(Action::Write("multi-queue-max-queues", "1".into()));
        out.push(Action::Write("feature-flush-cache", flag(a.flush)));
        out.push(Action::Write("feature-barrier", "0".into()));
        out.push(Action::Write("feature-persistent", "0".into()));
        match a.discard {
            Some(d) => {
                out.push(Action::Write("feature-discard", "1".into()));
                out.push(Action::Write(
                    "discard-granularity",
                    format!("{}", d.granularity),
                ));
                out.push(Action::Write(
                    "discard-alignment",
                    format!("{}", d.alignment),
                ));
                out.push(Action::Write("discard-secure", "0".into()));
            }
            None => out.push(Action::Write("feature-discard", "0".into())),
        }
        out
    }

    fn set(&mut self, state: XenbusState, out: &mut Vec<Action>) {
        self.state = state;
        out.push(Action::SetState(state));
    }

    /// The device is created: its features, then InitWait. Then call
    /// [`Self::frontend_changed`] with the frontend's state as it is now (a restored
    /// frontend may be Initialised already).
    pub fn start(&mut self) -> Vec<Action> {
        let mut out = self.features();
        self.set(XenbusState::InitWait, &mut out);
        out
    }

    /// The frontend's `state` node changed (or its watch fired).
    pub fn frontend_changed(
        &mut self,
        front: XenbusState,
        nodes: &mut impl FrontendNodes,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        match front {
            XenbusState::Initialising => {
                if self.state == XenbusState::Closed || self.connected {
                    // The frontend starts over (a reloaded driver, kexec): so do we.
                    self.disconnect(&mut out);
                    out.extend(self.features());
                    self.set(XenbusState::InitWait, &mut out);
                }
            }
            XenbusState::Initialised | XenbusState::Connected => {
                if self.connected || self.connecting || self.state == XenbusState::Closing {
                    return out;
                }
                match self.read_ring(nodes) {
                    Ok(details) => {
                        self.connecting = true;
                        self.connected = true;
                        out.push(Action::Connect(details));
                    }
                    Err(e) => {
                        out.push(Action::Fatal(e));
                        self.set(XenbusState::Closing, &mut out);
                    }
                }
            }
            XenbusState::Closing => {
                self.disconnect(&mut out);
                if self.state != XenbusState::Closing && self.state != XenbusState::Closed {
                    self.set(XenbusState::Closing, &mut out);
                }
            }
            XenbusState::Closed | XenbusState::Unknown => {
                self.disconnect(&mut out);
                if self.state != XenbusState::Closed {
                    self.set(XenbusState::Closed, &mut out);
                }
            }
            XenbusState::InitWait | XenbusState::Reconfiguring | XenbusState::Reconfigured => {}
        }
        out
    }

    /// The outcome of an [`Action::Connect`]: on success the disk's details and
    /// Connected, on failure the error and Closing.
    pub fn connect_result(&mut self, result: Result<(), &'static str>) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.connecting {
            return out;
        }
        self.connecting = false;
        match result {
            Ok(()) => {
                let a = &self.adv;
                out.push(Action::Write("sectors", format!("{}", a.sectors)));
                out.push(Action::Write("info", format!("{}", a.info)));
                out.push(Action::Write("sector-size", format!("{}", a.sector_size)));
                out.push(Action::Write(
                    "physical-sector-size",
                    format!("{}", a.physical_sector_size),
                ));
                self.set(XenbusState::Connected, &mut out);
            }
            Err(why) => {
                // Nothing was mapped: no disconnect owed.
                self.connected = false;
                out.push(Action::Fatal(ConnectError::MapFailed(why)));
                self.set(XenbusState::Closing, &mut out);
            }
        }
        out
    }

    /// The backend closes the device (a detach): Closing, with the ring still served until
    /// the frontend answers Closing or Closed (blkfront finishes with its requests first).
    /// The frontend's Closed then brings the backend to Closed, where the device may go.
    pub fn close(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state != XenbusState::Closing && self.state != XenbusState::Closed {
            self.set(XenbusState::Closing, &mut out);
        }
        out
    }

    /// The frontend broke the ring protocol: stop serving at once and close.
    pub fn fault(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.disconnect(&mut out);
        if self.state != XenbusState::Closing && self.state != XenbusState::Closed {
            self.set(XenbusState::Closing, &mut out);
        }
        out
    }

    fn disconnect(&mut self, out: &mut Vec<Action>) {
        if self.connected {
            self.connected = false;
            self.connecting = false;
            out.push(Action::Disconnect);
        }
    }

    fn number(nodes: &mut impl FrontendNodes, node: &str) -> Result<u32, ConnectError> {
        nodes
            .read(node)
            .and_then(|v| parse_u32(&v))
            .ok_or_else(|| ConnectError::BadNode(node.into()))
    }

    /// Reads the frontend's ring details (blkback's `connect_ring` rules: without
    /// `ring-page-order` one page in `ring-ref`, with it `ring-ref0..`).
    fn read_ring(&self, nodes: &mut impl FrontendNodes) -> Result<RingDetails, ConnectError> {
        match nodes.read("protocol") {
            None => {}
            Some(p) => {
                let text = String::from_utf8_lossy(&p);
                let text = text.trim_end_matches(['\0', '\n']);
                if text != PROTOCOL_X86_64 {
                    return Err(ConnectError::Protocol(text.into()));
                }
            }
        }
        let (order, grefs) = match nodes.read("ring-page-order") {
            None => (0, vec![Self::number(nodes, "ring-ref")?]),
            Some(v) => {
                let order =
                    parse_u32(&v).ok_or_else(|| ConnectError::BadNode("ring-page-order".into()))?;
                if order > self.adv.max_ring_page_order {
                    return Err(ConnectError::RingPageOrder(order));
                }
                let mut grefs = Vec::new();
                for i in 0..1u32 << order {
                    grefs.push(Self::number(nodes, &format!("ring-ref{i}"))?);
                }
                (order, grefs)
            }
        };
        let event_channel = Self::number(nodes, "event-channel")?;
        Ok(RingDetails {
            grefs,
            order,
            event_channel,
        })
    }
}

fn flag(on: bool) -> String {
    String::from(if on { "1" } else { "0" })
}

#[cfg(test)]
mod tests {
    use alloc::collections::BTreeMap;

    use super::*;

    #[derive(Default)]
    struct Front(BTreeMap<String, Vec<u8>>);

    impl Front {
        fn set(&mut self, node: &str, value: &str) {
            self.0.insert(node.into(), value.as_bytes().to_vec());
        }
    }

    impl FrontendNodes for Front {
        fn read(&mut self, node: &str) -> Option<Vec<u8>> {
            self.0.get(node).cloned()
        }
    }

    fn adv() -> Advertisement {
        Advertisement {
            max_ring_page_order: 4,
            max_indirect_segments: 32,
            flush: true,
            discard: Some(DiscardInfo {
                granularity: 4096,
                alignment: 0,
            }),
            sectors: 2048,
            info: 0,
            sector_size: 512,
            physical_sector_size: 4096,
        }
    }

    fn writes(actions: &[Action]) -> BTreeMap<&'static str, String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Write(k, v) => Some((*k, v.clone())),
                _ => None,
            })
            .collect()
    }

    fn connected_vbd() -> (VbdXenbus, Front) {
        let mut x = VbdXenbus::new(adv());
        x.start();
        let mut front = Front::default();
        blkfront_single(&mut front);
        let acts = x.frontend_changed(XenbusState::Initialised, &mut front);
        assert!(matches!(acts[..], [Action::Connect(_)]));
        x.connect_result(Ok(()));
        assert_eq!(x.state(), XenbusState::Connected);
        (x, front)
    }

    #[test]
    fn a_detach_closes_and_serves_until_the_frontend_closes() {
        let (mut x, mut front) = connected_vbd();
        assert_eq!(x.close(), [Action::SetState(XenbusState::Closing)]);
        assert!(
            x.connected(),
            "the ring is served until the frontend closes"
        );
        assert!(x.close().is_empty(), "closing twice does nothing");
        assert_eq!(
            x.frontend_changed(XenbusState::Closing, &mut front),
            [Action::Disconnect]
        );
        assert_eq!(
            x.frontend_changed(XenbusState::Closed, &mut front),
            [Action::SetState(XenbusState::Closed)]
        );
        assert_eq!(x.state(), XenbusState::Closed);
    }

    #[test]
    fn a_ring_fault_disconnects_at_once() {
        let (mut x, mut front) = connected_vbd();
        assert_eq!(
            x.fault(),
            [Action::Disconnect, Action::SetState(XenbusState::Closing)]
        );
        assert!(!x.connected());
        assert!(x.fault().is_empty());
        // The frontend starts over once both ends are closed.
        x.frontend_changed(XenbusState::Closed, &mut front);
        let again = x.frontend_changed(XenbusState::Initialising, &mut front);
        assert_eq!(again.last(), Some(&Action::SetState(XenbusState::InitWait)));
    }

    /// What blkfront's `talk_to_blkback` writes for a one-page ring.
    fn blkfront_single(front: &mut Front) {
        front.set("ring-ref", "8");
        front.set("event-channel", "17");
        front.set("protocol", "x86_64-abi");
        front.set("feature-persistent", "1");
    }

    #[test]
    fn blkfront_first_boot_sequence() {
        let mut x = VbdXenbus::new(adv());
        let start = x.start();
        let w = writes(&start);
        assert_eq!(w["feature-max-indirect-segments"], "32");
        assert_eq!(w["max-ring-page-order"], "4");
        assert_eq!(w["feature-flush-cache"], "1");
        assert_eq!(w["feature-discard"], "1");
        assert_eq!(w["discard-granularity"], "4096");
        assert_eq!(w["feature-barrier"], "0");
        assert!(!w.contains_key("sectors"), "sectors are written at connect");
        assert_eq!(start.last(), Some(&Action::SetState(XenbusState::InitWait)));

        let mut front = Front::default();
        // The watch fires at once, while blkfront is still Initialising: nothing to do.
        assert!(x
            .frontend_changed(XenbusState::Initialising, &mut front)
            .is_empty());
        blkfront_single(&mut front);
        let acts = x.frontend_changed(XenbusState::Initialised, &mut front);
        assert_eq!(
            acts,
            [Action::Connect(RingDetails {
                grefs: vec![8],
                order: 0,
                event_channel: 17
            })]
        );
        let acts = x.connect_result(Ok(()));
        let w = writes(&acts);
        assert_eq!(w["sectors"], "2048");
        assert_eq!(w["info"], "0");
        assert_eq!(w["sector-size"], "512");
        assert_eq!(w["physical-sector-size"], "4096");
        assert_eq!(acts.last(), Some(&Action::SetState(XenbusState::Connected)));
        // blkfront then goes Connected itself: no second connect.
        assert!(x
            .frontend_changed(XenbusState::Connected, &mut front)
            .is_empty());
        assert!(x.connected());
    }

    #[test]
    fn multi_page_rings_read_every_ref() {
        let mut x = VbdXenbus::new(adv());
        x.start();
        let mut front = Front::default();
        front.set("ring-page-order", "2");
        for i in 0..4 {
            front.set(&format!("ring-ref{i}"), &format!("{}", 100 + i));
        }
        front.set("event-channel", "5");
        front.set("protocol", "x86_64-abi\0");
        let acts = x.frontend_changed(XenbusState::Initialised, &mut front);
        let Action::Connect(d) = &acts[0] else {
            panic!("{acts:?}")
        };
        assert_eq!(d.grefs, [100, 101, 102, 103]);
        assert_eq!(d.bytes(), 4 * 4096);
    }

    #[test]
    fn bad_frontend_details_close_the_device() {
        for (setup, err) in [
            (
                (|f: &mut Front| f.set("protocol", "x86_32-abi")) as fn(&mut Front),
                ConnectError::Protocol("x86_32-abi".into()),
            ),
            (
                |f: &mut Front| f.set("ring-page-order", "5"),
                ConnectError::RingPageOrder(5),
            ),
            (
                |f: &mut Front| {
                    f.set("ring-page-order", "1");
                    f.set("ring-ref0", "1");
                },
                ConnectError::BadNode("ring-ref1".into()),
            ),
            (
                |f: &mut Front| f.set("event-channel", "x"),
                ConnectError::BadNode("event-channel".into()),
            ),
            (
                |f: &mut Front| {
                    f.0.remove("ring-ref");
                },
                ConnectError::BadNode("ring-ref".into()),
            ),
        ] {
            let mut x = VbdXenbus::new(adv());
            x.start();
            let mut front = Front::default();
            blkfront_single(&mut front);
            setup(&mut front);
            let acts = x.frontend_changed(XenbusState::Initialised, &mut front);
            assert_eq!(
                acts,
                [Action::Fatal(err), Action::SetState(XenbusState::Closing)]
            );
            assert!(!x.connected());
        }
        // No protocol node: the native ABI.
        let mut x = VbdXenbus::new(adv());
        x.start();
        let mut front = Front::default();
        blkfront_single(&mut front);
        front.0.remove("protocol");
        assert!(matches!(
            x.frontend_changed(XenbusState::Initialised, &mut front)[..],
            [Action::Connect(_)]
        ));
    }

    #[test]
    fn a_failed_map_closes_without_a_disconnect() {
        let mut x = VbdXenbus::new(adv());
        x.start();
        let mut front = Front::default();
        blkfront_single(&mut front);
        x.frontend_changed(XenbusState::Initialised, &mut front);
        assert_eq!(
            x.connect_result(Err("bad gref")),
            [
                Action::Fatal(ConnectError::MapFailed("bad gref")),
                Action::SetState(XenbusState::Closing)
            ]
        );
        assert_eq!(
            x.frontend_changed(XenbusState::Closed, &mut front),
            [Action::SetState(XenbusState::Closed)]
        );
    }

    #[test]
    fn closing_then_reconnecting() {
        let mut x = VbdXenbus::new(adv());
        x.start();
        let mut front = Front::default();
        blkfront_single(&mut front);
        x.frontend_changed(XenbusState::Initialised, &mut front);
        x.connect_result(Ok(()));
        assert_eq!(
            x.frontend_changed(XenbusState::Closing, &mut front),
            [Action::Disconnect, Action::SetState(XenbusState::Closing)]
        );
        assert_eq!(
            x.frontend_changed(XenbusState::Closed, &mut front),
            [Action::SetState(XenbusState::Closed)]
        );
        // The driver comes back (kexec, module reload): InitWait again, features kept.
        let acts = x.frontend_changed(XenbusState::Initialising, &mut front);
        assert_eq!(acts.last(), Some(&Action::SetState(XenbusState::InitWait)));
        assert!(writes(&acts).contains_key("max-ring-page-order"));
        front.set("ring-ref", "9");
        let acts = x.frontend_changed(XenbusState::Initialised, &mut front);
        assert!(matches!(&acts[..], [Action::Connect(d)] if d.grefs == [9]));
    }

    #[test]
    fn a_restored_blkfront_connects_without_waiting_for_initwait() {
        // The restored guest wrote its ring and went Initialised before this backend
        // existed; the backend starts, and the watch reports Initialised.
        let mut front = Front::default();
        blkfront_single(&mut front);
        let mut x = VbdXenbus::new(adv());
        let start = x.start();
        assert!(writes(&start).contains_key("feature-max-indirect-segments"));
        let acts = x.frontend_changed(XenbusState::Initialised, &mut front);
        assert!(matches!(&acts[..], [Action::Connect(_)]));
        let acts = x.connect_result(Ok(()));
        assert_eq!(acts.last(), Some(&Action::SetState(XenbusState::Connected)));
        // Even a frontend that shows Connected is served.
        let mut y = VbdXenbus::new(adv());
        y.start();
        assert!(matches!(
            &y.frontend_changed(XenbusState::Connected, &mut front)[..],
            [Action::Connect(_)]
        ));
    }

    #[test]
    fn a_frontend_that_vanishes_is_disconnected() {
        let mut x = VbdXenbus::new(adv());
        x.start();
        let mut front = Front::default();
        blkfront_single(&mut front);
        x.frontend_changed(XenbusState::Initialised, &mut front);
        x.connect_result(Ok(()));
        assert_eq!(
            x.frontend_changed(XenbusState::Unknown, &mut front),
            [Action::Disconnect, Action::SetState(XenbusState::Closed)]
        );
    }

    #[test]
    fn no_indirect_and_no_discard_are_advertised_as_such() {
        let mut x = VbdXenbus::new(Advertisement {
            max_indirect_segments: 11,
            discard: None,
            flush: false,
            ..adv()
        });
        let w = writes(&x.start());
        assert!(!w.contains_key("feature-max-indirect-segments"));
        assert_eq!(w["feature-discard"], "0");
        assert_eq!(w["feature-flush-cache"], "0");
        assert!(!w.contains_key("discard-granularity"));
    }
}
