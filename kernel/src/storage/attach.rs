//! Who may attach which target how, as xl's `block` hotplug script decides it:
//! - a writable (`w`) attachment is refused while another *running* domain has the same
//!   or an overlapping target (a whole disk overlaps its partitions) attached at all;
//! - a read-only (`r`) attachment is refused while another running domain has it `w`;
//! - `w!` (shared on purpose) is never refused for sharing and never refuses others;
//! - writable on a read-only disk is refused.
//!
//! Attachments of the same domain never conflict (xl's `same_vm`); a domain that is not
//! running (dying, or not yet unpaused for the first time is the caller's choice) is not
//! counted.

use ferrovisor_abi::{
    domctl::{DeviceRefusal, VBD_MODE_READ, VBD_MODE_WRITE, VBD_MODE_WRITE_SHARED},
    xen::DomId,
};

use super::target::Target;

/// How a domain has a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `r`.
    ReadOnly,
    /// `w`.
    Write,
    /// `w!`.
    WriteShared,
}

impl Mode {
    /// Decodes [`DeviceAttach::mode`](ferrovisor_abi::domctl::DeviceAttach::mode).
    pub fn from_raw(mode: u32) -> Option<Self> {
        match mode {
            VBD_MODE_READ => Some(Mode::ReadOnly),
            VBD_MODE_WRITE => Some(Mode::Write),
            VBD_MODE_WRITE_SHARED => Some(Mode::WriteShared),
            _ => None,
        }
    }

    /// Parses xl's spelling (`r`, `ro`, `w`, `rw`, `w!`, `rw!`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "r" | "ro" => Some(Mode::ReadOnly),
            "w" | "rw" => Some(Mode::Write),
            "w!" | "rw!" => Some(Mode::WriteShared),
            _ => None,
        }
    }

    /// Whether the guest may write.
    pub fn writable(self) -> bool {
        self != Mode::ReadOnly
    }

    /// The backend's `mode` node (`r` or `w`).
    pub fn node_value(self) -> &'static str {
        if self.writable() {
            "w"
        } else {
            "r"
        }
    }
}

/// One existing vbd attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub domain: DomId,
    pub target: Target,
    pub mode: Mode,
    /// The domain runs (counts for sharing).
    pub running: bool,
}

/// Why an attachment is refused, with the domain in the way for `TargetInUse`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: DeviceRefusal,
    pub conflict_domain: Option<DomId>,
}

impl From<DeviceRefusal> for Refusal {
    fn from(reason: DeviceRefusal) -> Self {
        Refusal {
            reason,
            conflict_domain: None,
        }
    }
}

fn conflicts(new: Mode, old: Mode) -> bool {
    match (new, old) {
        (Mode::WriteShared, _) | (_, Mode::WriteShared) => false,
        (Mode::Write, _) | (_, Mode::Write) => true,
        (Mode::ReadOnly, Mode::ReadOnly) => false,
    }
}

/// Checks attaching `target` to `domain` in `mode` against the attachments that exist.
pub fn check_attach<'a>(
    domain: DomId,
    target: &Target,
    mode: Mode,
    existing: impl IntoIterator<Item = &'a Attachment>,
) -> Result<(), Refusal> {
    if mode.writable() && target.read_only {
        return Err(DeviceRefusal::TargetReadOnly.into());
    }
    for a in existing {
        if a.domain != domain && a.running && a.target.overlaps(target) && conflicts(mode, a.mode) {
            return Err(Refusal {
                reason: DeviceRefusal::TargetInUse,
                conflict_domain: Some(a.domain),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(start: u64, sectors: u64, partition: Option<u32>) -> Target {
        Target {
            disk: 0,
            partition,
            start,
            sectors,
            read_only: false,
        }
    }

    fn att(domain: DomId, target: Target, mode: Mode, running: bool) -> Attachment {
        Attachment {
            domain,
            target,
            mode,
            running,
        }
    }

    const WHOLE: Target = Target {
        disk: 0,
        partition: None,
        start: 0,
        sectors: 10000,
        read_only: false,
    };

    fn in_use(by: DomId) -> Result<(), Refusal> {
        Err(Refusal {
            reason: DeviceRefusal::TargetInUse,
            conflict_domain: Some(by),
        })
    }

    #[test]
    fn writers_exclude_others_on_overlapping_targets() {
        let p1 = t(2048, 2048, Some(1));
        let p2 = t(4096, 2048, Some(2));
        let existing = [att(1, p1, Mode::Write, true)];
        assert_eq!(check_attach(2, &p1, Mode::Write, &existing), in_use(1));
        assert_eq!(check_attach(2, &p1, Mode::ReadOnly, &existing), in_use(1));
        // The whole disk overlaps the partition.
        assert_eq!(
            check_attach(2, &WHOLE, Mode::ReadOnly, &existing),
            in_use(1)
        );
        // Another partition does not.
        assert_eq!(check_attach(2, &p2, Mode::Write, &existing), Ok(()));
        // The same domain may have it twice.
        assert_eq!(check_attach(1, &p1, Mode::Write, &existing), Ok(()));
    }

    #[test]
    fn readers_share_and_exclude_writers() {
        let existing = [att(1, WHOLE, Mode::ReadOnly, true)];
        assert_eq!(check_attach(2, &WHOLE, Mode::ReadOnly, &existing), Ok(()));
        assert_eq!(
            check_attach(2, &t(2048, 10, Some(1)), Mode::Write, &existing),
            in_use(1)
        );
    }

    #[test]
    fn w_bang_shares_on_purpose() {
        let existing = [att(1, WHOLE, Mode::WriteShared, true)];
        assert_eq!(check_attach(2, &WHOLE, Mode::Write, &existing), Ok(()));
        let existing = [att(1, WHOLE, Mode::Write, true)];
        assert_eq!(
            check_attach(2, &WHOLE, Mode::WriteShared, &existing),
            Ok(())
        );
    }

    #[test]
    fn domains_that_do_not_run_do_not_count() {
        let existing = [att(1, WHOLE, Mode::Write, false)];
        assert_eq!(check_attach(2, &WHOLE, Mode::Write, &existing), Ok(()));
    }

    #[test]
    fn writable_on_a_read_only_disk_is_refused() {
        let ro = Target {
            read_only: true,
            ..WHOLE
        };
        assert_eq!(
            check_attach(2, &ro, Mode::Write, []),
            Err(DeviceRefusal::TargetReadOnly.into())
        );
        assert_eq!(
            check_attach(2, &ro, Mode::WriteShared, []),
            Err(DeviceRefusal::TargetReadOnly.into())
        );
        assert_eq!(check_attach(2, &ro, Mode::ReadOnly, []), Ok(()));
    }

    #[test]
    fn modes_decode() {
        assert_eq!(
            Mode::from_raw(VBD_MODE_WRITE_SHARED),
            Some(Mode::WriteShared)
        );
        assert_eq!(Mode::from_raw(7), None);
        assert_eq!(Mode::parse("w!"), Some(Mode::WriteShared));
        assert_eq!(Mode::parse("x"), None);
        assert_eq!(Mode::WriteShared.node_value(), "w");
    }
}
