//! The xenbus device states (`io/xenbus.h`, `enum xenbus_state`), written as decimal
//! strings to each end's `state` node in xenstore.

xen_enum! {
    pub enum XenbusState: u32 {
        Unknown = 0,
        Initialising = 1,
        /// The backend is ready for the frontend's details (`InitWait`).
        InitWait = 2,
        /// The frontend has published its rings (`Initialised`).
        Initialised = 3,
        Connected = 4,
        Closing = 5,
        Closed = 6,
        /// Reconfiguration (netback/netfront XDP); never used by the hypervisor.
        Reconfiguring = 7,
        Reconfigured = 8,
    }
}

impl XenbusState {
    /// Parses a `state` node's value (`"4"`, with or without a trailing NUL or newline).
    pub fn parse(value: &[u8]) -> Option<Self> {
        let text = core::str::from_utf8(value).ok()?;
        let n: u32 = text.trim_end_matches(['\0', '\n']).trim().parse().ok()?;
        Self::from_raw(u64::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_from_xenstore_values() {
        assert_eq!(XenbusState::parse(b"4"), Some(XenbusState::Connected));
        assert_eq!(XenbusState::parse(b"1\0"), Some(XenbusState::Initialising));
        assert_eq!(XenbusState::parse(b"9"), None);
        assert_eq!(XenbusState::parse(b"x"), None);
        assert_eq!(XenbusState::Closed.raw(), 6);
    }
}
