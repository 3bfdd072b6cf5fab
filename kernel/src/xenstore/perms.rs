//! Node permissions (xenstore.txt, GET_PERMS/SET_PERMS, and the XenBus wiki's
//! "Permissions" section it points to).
//!
//! A node's list is one or more entries `<letter><domid>`. The first names the owner and
//! the access every domain not listed gets; later entries give a named domain its own
//! access. The owner always may read and write; privileged domains bypass every check.

use alloc::vec::Vec;

use ferrovisor_abi::xen::{xs_wire::XsErrorCode, DomId};

/// The privileged domain: exempt from permission checks and quotas, the only one allowed
/// INTRODUCE/RELEASE and to change a node's owner.
pub const PRIVILEGED_DOMID: DomId = 0;

/// The hypervisor itself, as the owner of its backends' nodes and the watcher of their
/// frontends (`DOMID_XEN`). It has no connection: it never sends a message.
pub const HYPERVISOR_DOMID: DomId = ferrovisor_abi::xen::xen::DOMID_XEN;

/// Whether `dom` bypasses permission checks: the one control domain, dom0, and the
/// hypervisor's own watches.
pub const fn is_privileged(dom: DomId) -> bool {
    dom == PRIVILEGED_DOMID || dom == HYPERVISOR_DOMID
}

/// One access letter (xenstore.txt `<perm-as-string>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `n`: no access.
    None,
    /// `r`: read only.
    Read,
    /// `w`: write only.
    Write,
    /// `b`: both.
    Both,
}

impl Access {
    pub const fn from_letter(letter: u8) -> Option<Self> {
        match letter {
            b'n' => Some(Self::None),
            b'r' => Some(Self::Read),
            b'w' => Some(Self::Write),
            b'b' => Some(Self::Both),
            _ => None,
        }
    }

    pub const fn letter(self) -> u8 {
        match self {
            Self::None => b'n',
            Self::Read => b'r',
            Self::Write => b'w',
            Self::Both => b'b',
        }
    }

    pub const fn can_read(self) -> bool {
        matches!(self, Self::Read | Self::Both)
    }

    pub const fn can_write(self) -> bool {
        matches!(self, Self::Write | Self::Both)
    }
}

/// One entry of a permission list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PermEntry {
    pub dom: DomId,
    pub access: Access,
}

/// A node's permission list; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Perms {
    entries: Vec<PermEntry>,
}

impl Perms {
    /// A list with just the owner entry: `dom` owns the node, everyone else gets `others`.
    pub fn owned_by(dom: DomId, others: Access) -> Self {
        Perms {
            entries: alloc::vec![PermEntry {
                dom,
                access: others
            }],
        }
    }

    /// Parses the permission strings of a SET_PERMS payload (each without its NUL). An
    /// empty list, an unknown letter or a domid that is not a decimal `u16` is `EINVAL`.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, XsErrorCode> {
        let mut entries = Vec::new();
        for item in items {
            let (&letter, digits) = item.split_first().ok_or(XsErrorCode::Einval)?;
            let access = Access::from_letter(letter).ok_or(XsErrorCode::Einval)?;
            let dom = parse_domid(digits).ok_or(XsErrorCode::Einval)?;
            entries.push(PermEntry { dom, access });
        }
        if entries.is_empty() {
            return Err(XsErrorCode::Einval);
        }
        Ok(Perms { entries })
    }

    pub fn entries(&self) -> &[PermEntry] {
        &self.entries
    }

    /// The owning domain (the first entry's).
    pub fn owner(&self) -> DomId {
        self.entries.first().map_or(PRIVILEGED_DOMID, |e| e.dom)
    }

    /// The GET_PERMS payload: each entry as `<letter><domid>` followed by a NUL.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.entries {
            out.push(e.access.letter());
            out.extend_from_slice(alloc::format!("{}", e.dom).as_bytes());
            out.push(0);
        }
        out
    }

    /// What `dom` may do with the node: everything if privileged or the owner, else its
    /// own entry if listed, else the owner entry's default.
    pub fn access_for(&self, dom: DomId) -> Access {
        if is_privileged(dom) || dom == self.owner() {
            return Access::Both;
        }
        let listed = self.entries.iter().skip(1).find(|e| e.dom == dom);
        match (listed, self.entries.first()) {
            (Some(e), _) | (None, Some(e)) => e.access,
            (None, None) => Access::None,
        }
    }

    pub fn can_read(&self, dom: DomId) -> bool {
        self.access_for(dom).can_read()
    }

    pub fn can_write(&self, dom: DomId) -> bool {
        self.access_for(dom).can_write()
    }

    /// Whether `dom` may change the list (SET_PERMS): the owner or a privileged domain.
    pub fn can_set(&self, dom: DomId) -> bool {
        is_privileged(dom) || dom == self.owner()
    }

    /// The permissions of a node `creator` makes below a node with these: a copy, except
    /// that an unprivileged creator becomes the owner (so it can manage what it made, and
    /// it is charged for it).
    pub fn inherited_by(&self, creator: DomId) -> Self {
        let mut child = self.clone();
        if !is_privileged(creator) {
            if let Some(first) = child.entries.first_mut() {
                first.dom = creator;
            }
        }
        child
    }
}

/// Parses a decimal domid (xenstore.txt `<domid>`: 0..65535). Unlike xenstored, which lets
/// parse errors go undetected, garbage is refused.
pub fn parse_domid(digits: &[u8]) -> Option<DomId> {
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    DomId::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(s: &[&str]) -> Perms {
        Perms::parse(s.iter().map(|x| x.as_bytes())).unwrap()
    }

    #[test]
    fn parse_and_format_round_trip() {
        let p = perms(&["w3", "r0", "b7", "n12"]);
        assert_eq!(p.owner(), 3);
        assert_eq!(p.to_wire(), b"w3\0r0\0b7\0n12\0");
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in [
            &["x1"][..],
            &["r"],
            &["r-1"],
            &["r65536"],
            &["r1a"],
            &[""],
            &[],
        ] {
            assert_eq!(
                Perms::parse(bad.iter().map(|x| x.as_bytes())),
                Err(XsErrorCode::Einval),
                "{bad:?}"
            );
        }
        assert!(Perms::parse([&b"n65535"[..]]).is_ok());
    }

    #[test]
    fn owner_always_has_full_access() {
        let p = perms(&["n5"]);
        assert_eq!(p.access_for(5), Access::Both);
        assert_eq!(p.access_for(6), Access::None);
    }

    #[test]
    fn default_and_named_entries() {
        let p = perms(&["r5", "w6", "n7"]);
        assert!(p.can_read(8) && !p.can_write(8));
        assert!(p.can_write(6) && !p.can_read(6));
        assert!(!p.can_read(7) && !p.can_write(7));
    }

    #[test]
    fn privileged_bypasses_everything() {
        let p = perms(&["n5", "n0"]);
        assert_eq!(p.access_for(0), Access::Both);
        assert!(p.can_set(0));
    }

    #[test]
    fn only_owner_or_privileged_may_set() {
        let p = perms(&["b5", "b6"]);
        assert!(p.can_set(5));
        assert!(!p.can_set(6));
    }

    #[test]
    fn inheritance_replaces_owner_for_unprivileged_creator() {
        let parent = perms(&["r0", "b4"]);
        assert_eq!(parent.inherited_by(0), parent);
        let child = parent.inherited_by(4);
        assert_eq!(child.owner(), 4);
        assert_eq!(child.to_wire(), b"r4\0b4\0");
    }

    #[test]
    fn domid_parsing() {
        assert_eq!(parse_domid(b"0"), Some(0));
        assert_eq!(parse_domid(b"65535"), Some(65535));
        assert_eq!(parse_domid(b"65536"), None);
        assert_eq!(parse_domid(b"999999"), None);
        assert_eq!(parse_domid(b""), None);
        assert_eq!(parse_domid(b"+1"), None);
    }
}
