//! Where input from the serial line goes: to the hypervisor (its own debug keys) or to one
//! domain's console.
//!
//! As in Xen, three Ctrl-A (0x01) in a row move input to the next target. The order is the
//! hypervisor, then every domain with a console in domain-id order (dom0 first), then the
//! hypervisor again. The three Ctrl-A are swallowed. Any other byte resets the count, and
//! the Ctrl-A bytes held back before it are delivered first, in order, to the current
//! target, as Xen's `serial_rx` does: one or two Ctrl-A are ordinary input (Ctrl-A is
//! "start of line" in shells and the prefix key of `screen`), so they must not be lost.
//! Because they are held until the next byte, a lone Ctrl-A reaches the guest only when
//! the next key is typed; Xen behaves the same.

use alloc::vec::Vec;

use ferrovisor_abi::xen::DomId;

/// The byte that, three times in a row, switches the input target (Ctrl-A).
pub const SWITCH_CHAR: u8 = 0x01;
/// How many [`SWITCH_CHAR`] in a row switch.
pub const SWITCH_COUNT: u8 = 3;

/// Where serial input goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputTarget {
    /// The hypervisor's own key handlers.
    Hypervisor,
    /// A domain's console.
    Domain(DomId),
}

/// Bytes to deliver to one target: up to two held Ctrl-A, then the byte just received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    bytes: [u8; SWITCH_COUNT as usize],
    len: u8,
}

impl Delivery {
    /// The bytes, in the order they were typed.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// What one received byte amounts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routed {
    /// A Ctrl-A, held back: it may be part of a switch.
    Held,
    /// Deliver these bytes to `target`.
    Deliver {
        target: InputTarget,
        bytes: Delivery,
    },
    /// The third Ctrl-A in a row: input now goes to this target (print a notice).
    Switched(InputTarget),
}

/// The serial input switch.
pub struct InputSwitch {
    target: InputTarget,
    /// Domains with a console, sorted by id, no duplicates.
    domains: Vec<DomId>,
    /// Ctrl-A received in a row and held back.
    held: u8,
}

impl InputSwitch {
    /// A switch sending input to the hypervisor, with no domain consoles yet (Xen, too,
    /// keeps input until boot is done and then hands it to dom0: call
    /// [`Self::set_target`]).
    pub const fn new() -> Self {
        InputSwitch {
            target: InputTarget::Hypervisor,
            domains: Vec::new(),
            held: 0,
        }
    }

    /// Where input goes now.
    pub const fn target(&self) -> InputTarget {
        self.target
    }

    /// Domains that can take input, in switching order.
    pub fn domains(&self) -> &[DomId] {
        &self.domains
    }

    /// Makes `domid`'s console a possible target (idempotent).
    pub fn add_domain(&mut self, domid: DomId) {
        if let Err(at) = self.domains.binary_search(&domid) {
            self.domains.insert(at, domid);
        }
    }

    /// Removes `domid`'s console. If it was the target, input moves to dom0, or to the
    /// hypervisor if dom0 has no console either; the new target is returned so that the
    /// caller can print a notice. `None` when the target did not change.
    pub fn remove_domain(&mut self, domid: DomId) -> Option<InputTarget> {
        if let Ok(at) = self.domains.binary_search(&domid) {
            self.domains.remove(at);
        }
        if self.target != InputTarget::Domain(domid) {
            return None;
        }
        self.target = if self.domains.first() == Some(&0) {
            InputTarget::Domain(0)
        } else {
            InputTarget::Hypervisor
        };
        Some(self.target)
    }

    /// Sends input to `target`; `false` (and nothing changes) for a domain without a
    /// console.
    pub fn set_target(&mut self, target: InputTarget) -> bool {
        let known = match target {
            InputTarget::Hypervisor => true,
            InputTarget::Domain(d) => self.domains.binary_search(&d).is_ok(),
        };
        if known {
            self.target = target;
        }
        known
    }

    /// The target after the current one in the cycle hypervisor → each domain in id
    /// order → hypervisor.
    pub fn next_target(&self) -> InputTarget {
        let next = match self.target {
            InputTarget::Hypervisor => self.domains.first(),
            InputTarget::Domain(d) => self.domains.iter().find(|&&e| e > d),
        };
        next.map_or(InputTarget::Hypervisor, |&d| InputTarget::Domain(d))
    }

    /// Routes one byte received from the serial line.
    pub fn receive(&mut self, byte: u8) -> Routed {
        if byte == SWITCH_CHAR {
            self.held += 1;
            if self.held < SWITCH_COUNT {
                return Routed::Held;
            }
            self.held = 0;
            self.target = self.next_target();
            return Routed::Switched(self.target);
        }
        let mut bytes = [SWITCH_CHAR; SWITCH_COUNT as usize];
        let held = usize::from(core::mem::take(&mut self.held));
        // held < SWITCH_COUNT, so the byte fits after the held Ctrl-A.
        bytes[held] = byte;
        Routed::Deliver {
            target: self.target,
            bytes: Delivery {
                bytes,
                len: held as u8 + 1,
            },
        }
    }
}

impl Default for InputSwitch {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HV: InputTarget = InputTarget::Hypervisor;
    const D0: InputTarget = InputTarget::Domain(0);

    fn switch_with(domains: &[DomId]) -> InputSwitch {
        let mut s = InputSwitch::new();
        for &d in domains {
            s.add_domain(d);
        }
        s
    }

    /// Feeds `bytes` and collects what each target received and every switch.
    fn feed(s: &mut InputSwitch, bytes: &[u8]) -> (Vec<(InputTarget, u8)>, Vec<InputTarget>) {
        let (mut got, mut switched) = (Vec::new(), Vec::new());
        for &b in bytes {
            match s.receive(b) {
                Routed::Held => {}
                Routed::Deliver { target, bytes } => {
                    got.extend(bytes.as_slice().iter().map(|&b| (target, b)));
                }
                Routed::Switched(t) => switched.push(t),
            }
        }
        (got, switched)
    }

    #[test]
    fn starts_at_the_hypervisor_and_passes_bytes_through() {
        let mut s = switch_with(&[0]);
        assert_eq!(s.target(), HV);
        assert_eq!(feed(&mut s, b"h"), (vec![(HV, b'h')], vec![]));
        assert!(s.set_target(D0));
        assert_eq!(feed(&mut s, b"ls"), (vec![(D0, b'l'), (D0, b's')], vec![]));
    }

    #[test]
    fn three_ctrl_a_switch_and_are_swallowed() {
        let mut s = switch_with(&[0]);
        assert_eq!(s.receive(SWITCH_CHAR), Routed::Held);
        assert_eq!(s.receive(SWITCH_CHAR), Routed::Held);
        assert_eq!(s.receive(SWITCH_CHAR), Routed::Switched(D0));
        assert_eq!(s.target(), D0);
        assert_eq!(feed(&mut s, b"x"), (vec![(D0, b'x')], vec![]));
    }

    #[test]
    fn two_ctrl_a_then_another_byte_are_delivered_without_switching() {
        let mut s = switch_with(&[0]);
        s.set_target(D0);
        let (got, switched) = feed(&mut s, b"\x01\x01e");
        assert_eq!(got, [(D0, 1), (D0, 1), (D0, b'e')]);
        assert!(switched.is_empty());
        // The count restarted: two more Ctrl-A and a byte still do not switch.
        let (got, switched) = feed(&mut s, b"\x01\x01\x02");
        assert_eq!(got, [(D0, 1), (D0, 1), (D0, 2)]);
        assert!(switched.is_empty());
        assert_eq!(s.target(), D0);
    }

    #[test]
    fn one_ctrl_a_is_delivered_with_the_next_byte() {
        let mut s = switch_with(&[0]);
        s.set_target(D0);
        assert_eq!(s.receive(SWITCH_CHAR), Routed::Held);
        match s.receive(b'k') {
            Routed::Deliver { target, bytes } => {
                assert_eq!(target, D0);
                assert_eq!(bytes.as_slice(), b"\x01k");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn six_ctrl_a_switch_twice() {
        let mut s = switch_with(&[0, 3]);
        let (got, switched) = feed(&mut s, &[SWITCH_CHAR; 6]);
        assert!(got.is_empty());
        assert_eq!(switched, [D0, InputTarget::Domain(3)]);
    }

    #[test]
    fn cycles_hypervisor_dom0_domus_in_id_order_then_hypervisor() {
        let mut s = switch_with(&[7, 0, 2]);
        assert_eq!(s.domains(), [0, 2, 7]);
        let mut order = Vec::new();
        for _ in 0..5 {
            order.extend(feed(&mut s, &[SWITCH_CHAR; 3]).1);
        }
        assert_eq!(
            order,
            [D0, InputTarget::Domain(2), InputTarget::Domain(7), HV, D0]
        );
    }

    #[test]
    fn with_no_consoles_switching_stays_at_the_hypervisor() {
        let mut s = InputSwitch::new();
        assert_eq!(feed(&mut s, &[SWITCH_CHAR; 3]).1, [HV]);
    }

    #[test]
    fn removing_the_target_moves_input_to_dom0_then_the_hypervisor() {
        let mut s = switch_with(&[0, 1, 2]);
        assert!(s.set_target(InputTarget::Domain(2)));
        // Removing another domain changes nothing.
        assert_eq!(s.remove_domain(1), None);
        assert_eq!(s.target(), InputTarget::Domain(2));
        assert_eq!(s.remove_domain(2), Some(D0));
        assert_eq!(s.remove_domain(0), Some(HV));
        assert_eq!(s.target(), HV);
        assert!(s.domains().is_empty());
    }

    #[test]
    fn removing_the_target_without_dom0_goes_to_the_hypervisor() {
        let mut s = switch_with(&[4, 5]);
        s.set_target(InputTarget::Domain(5));
        assert_eq!(s.remove_domain(5), Some(HV));
    }

    #[test]
    fn the_cycle_continues_past_a_removed_domain() {
        let mut s = switch_with(&[0, 1, 2]);
        s.set_target(InputTarget::Domain(1));
        s.remove_domain(2);
        assert_eq!(s.next_target(), HV);
    }

    #[test]
    fn unknown_domains_cannot_be_targets_and_adding_twice_is_harmless() {
        let mut s = switch_with(&[0, 0]);
        assert_eq!(s.domains(), [0]);
        assert!(!s.set_target(InputTarget::Domain(9)));
        assert_eq!(s.target(), HV);
    }
}
