//! The console backend: each domain's PV console (`io/console.h`) and the serial line's
//! input switch, free of hardware.
//!
//! - [`ring`]: the ring rules over [`ConsoleRing`], an abstract view of a domain's shared
//!   console page (the hypervisor implements it with ordered loads and stores).
//! - [`history`]: the bounded record of a domain's output that dom0 polls by offset.
//! - [`line`]: whole-line, escaped mirroring of a domain's output to the serial log.
//! - [`GuestConsole`]: one domain's console state tying those together, plus the input
//!   waiting for room in the guest's ring.
//! - [`switch`]: where serial input goes (the hypervisor or one domain), switched by
//!   three Ctrl-A in a row as in Xen.

pub mod history;
pub mod line;
pub mod ring;
pub mod switch;

pub use history::{History, HistoryRead};
pub use line::LineMirror;
pub use ring::{drain_output, fill_input, ConsoleRing, RingError};
pub use switch::{InputSwitch, InputTarget, Routed};
