//! The rules of domain control (`ferrovisor_abi::domctl`) that need no hardware: which
//! `CreateDomain` requests are acceptable, how a domain's state reads in `DomainInfo`
//! (the flags `xl list` turns into its `r b p s c d` column), and what a shutdown request
//! writes for the guest.

use alloc::{collections::BTreeMap, string::String};

use ferrovisor_abi::{
    domctl::{
        name_bytes, CreateDomain, DOMINFO_BLOCKED, DOMINFO_BUILT, DOMINFO_CRASHED, DOMINFO_PAUSED,
        DOMINFO_PRIVILEGED, DOMINFO_RUNNING, DOMINFO_SHUTDOWN,
    },
    errno::XenErrno,
};

/// Where a domain is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    Running,
    /// Shut itself down with this `SHUTDOWN_*` reason (not `crash`).
    Shutdown(u32),
    Crashed,
}

/// A valid domain name: 1 to 64 bytes of ASCII letters, digits and `-_.` (what fits a
/// xenstore path element and a shell word unquoted).
pub fn check_name(name: &[u8]) -> Result<String, XenErrno> {
    let ok = !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(XenErrno::Einval);
    }
    Ok(name.iter().map(|&b| char::from(b)).collect())
}

/// Checks a `CreateDomain` request against the machine (`total_pages` of RAM the
/// hypervisor manages, `max_vcpus` per domain); returns the domain's name. Uniqueness
/// among live domains is the caller's check.
pub fn check_create(
    c: &CreateDomain,
    total_pages: u64,
    max_vcpus: usize,
) -> Result<String, XenErrno> {
    let name = check_name(name_bytes(&c.name))?;
    if c.flags != 0 || c.max_vcpus == 0 || c.max_vcpus as usize > max_vcpus {
        return Err(XenErrno::Einval);
    }
    if c.max_pages == 0 || c.max_pages > total_pages {
        return Err(XenErrno::Einval);
    }
    Ok(name)
}

/// What `DomainInfo` reports of a domain's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    pub life: Life,
    pub built: bool,
    pub privileged: bool,
    pub pause_count: u32,
    /// vCPUs up, and how many of those wait for an event.
    pub online_vcpus: u32,
    pub blocked_vcpus: u32,
}

/// `SHUTDOWN_crash` (`sched.h`): the reason a crashed domain reports, however it crashed.
const SHUTDOWN_CRASH: u32 = 3;

/// The `DOMINFO_*` flags and the shutdown reason of a domain in `state`.
pub fn info_flags(state: &State) -> (u32, u32) {
    let mut flags = 0;
    if state.built {
        flags |= DOMINFO_BUILT;
    }
    if state.privileged {
        flags |= DOMINFO_PRIVILEGED;
    }
    if state.pause_count > 0 {
        flags |= DOMINFO_PAUSED;
    }
    let mut reason = 0;
    match state.life {
        Life::Running if state.online_vcpus == 0 => {}
        Life::Running if state.blocked_vcpus == state.online_vcpus => flags |= DOMINFO_BLOCKED,
        Life::Running if state.built && state.pause_count == 0 => flags |= DOMINFO_RUNNING,
        Life::Running => {}
        Life::Shutdown(r) => {
            flags |= DOMINFO_SHUTDOWN;
            reason = r;
        }
        Life::Crashed => {
            flags |= DOMINFO_SHUTDOWN | DOMINFO_CRASHED;
            reason = SHUTDOWN_CRASH;
        }
    }
    (flags, reason)
}

/// Which domains' shutdowns and crashes have been announced to the toolstack
/// (`@releaseDomain`, `VIRQ_DOM_EXC`): each stop is announced once, when it is first
/// seen; a domain that goes away is forgotten.
#[derive(Debug, Default)]
pub struct StopTracker {
    announced: BTreeMap<u16, Life>,
}

impl StopTracker {
    pub const fn new() -> Self {
        Self {
            announced: BTreeMap::new(),
        }
    }

    /// Looks at every live domain's life; whether one stopped (shut down or crashed)
    /// since the last look, which the caller then announces.
    pub fn update(&mut self, live: impl IntoIterator<Item = (u16, Life)>) -> bool {
        let mut seen = BTreeMap::new();
        let mut news = false;
        for (id, life) in live {
            if life == Life::Running {
                continue;
            }
            if self.announced.get(&id) != Some(&life) {
                news = true;
            }
            seen.insert(id, life);
        }
        self.announced = seen;
        news
    }
}

/// The word a toolstack writes to a guest's `control/shutdown` for `SHUTDOWN_*` reason
/// `reason` (`poweroff`, `reboot`, `suspend`); other reasons cannot be requested.
pub fn shutdown_request(reason: u32) -> Result<&'static str, XenErrno> {
    match reason {
        0 => Ok("poweroff"),
        1 => Ok("reboot"),
        2 => Ok("suspend"),
        _ => Err(XenErrno::Einval),
    }
}

#[cfg(test)]
mod tests {
    use ferrovisor_abi::domctl::DOMAIN_NAME_MAX;

    use super::*;

    fn req(name: &str, pages: u64, vcpus: u32) -> CreateDomain {
        let mut c = CreateDomain {
            uuid: [0; 16],
            name: [0; DOMAIN_NAME_MAX],
            max_pages: pages,
            max_vcpus: vcpus,
            flags: 0,
        };
        c.name[..name.len()].copy_from_slice(name.as_bytes());
        c
    }

    #[test]
    fn names() {
        assert_eq!(check_name(b"guest-1_a.b").as_deref(), Ok("guest-1_a.b"));
        for bad in [&b""[..], b"a b", b"a/b", b"caf\xc3\xa9", b"x\0y", b"a;b"] {
            assert_eq!(check_name(bad), Err(XenErrno::Einval), "{bad:?}");
        }
        assert!(check_name(&[b'a'; DOMAIN_NAME_MAX]).is_ok());
    }

    #[test]
    fn create_requests() {
        assert_eq!(check_create(&req("g", 256, 1), 1000, 8).as_deref(), Ok("g"));
        assert_eq!(
            check_create(&req("g", 0, 1), 1000, 8),
            Err(XenErrno::Einval)
        );
        assert_eq!(
            check_create(&req("g", 1001, 1), 1000, 8),
            Err(XenErrno::Einval)
        );
        assert_eq!(
            check_create(&req("g", 256, 0), 1000, 8),
            Err(XenErrno::Einval)
        );
        assert_eq!(
            check_create(&req("g", 256, 9), 1000, 8),
            Err(XenErrno::Einval)
        );
        assert_eq!(
            check_create(&req("", 256, 1), 1000, 8),
            Err(XenErrno::Einval)
        );
        let mut flagged = req("g", 256, 1);
        flagged.flags = 1;
        assert_eq!(check_create(&flagged, 1000, 8), Err(XenErrno::Einval));
    }

    fn state(life: Life, pause_count: u32, online: u32, blocked: u32) -> State {
        State {
            life,
            built: true,
            privileged: false,
            pause_count,
            online_vcpus: online,
            blocked_vcpus: blocked,
        }
    }

    #[test]
    fn states_read_like_xl_list() {
        let f = |s: State| info_flags(&s);
        assert_eq!(
            f(state(Life::Running, 0, 2, 0)),
            (DOMINFO_BUILT | DOMINFO_RUNNING, 0)
        );
        assert_eq!(
            f(state(Life::Running, 0, 2, 2)),
            (DOMINFO_BUILT | DOMINFO_BLOCKED, 0)
        );
        assert_eq!(
            f(state(Life::Running, 1, 1, 0)),
            (DOMINFO_BUILT | DOMINFO_PAUSED, 0)
        );
        assert_eq!(
            f(state(Life::Shutdown(1), 0, 1, 0)),
            (DOMINFO_BUILT | DOMINFO_SHUTDOWN, 1)
        );
        assert_eq!(
            f(state(Life::Crashed, 0, 1, 0)),
            (DOMINFO_BUILT | DOMINFO_SHUTDOWN | DOMINFO_CRASHED, 3)
        );
        // Created, not built: paused, nothing else.
        let fresh = State {
            built: false,
            ..state(Life::Running, 1, 0, 0)
        };
        assert_eq!(f(fresh), (DOMINFO_PAUSED, 0));
        let dom0 = State {
            privileged: true,
            ..state(Life::Running, 0, 1, 0)
        };
        assert_eq!(
            f(dom0),
            (DOMINFO_BUILT | DOMINFO_PRIVILEGED | DOMINFO_RUNNING, 0)
        );
    }

    #[test]
    fn each_stop_is_announced_once() {
        let mut t = StopTracker::new();
        assert!(!t.update([(0, Life::Running), (1, Life::Running)]));
        assert!(t.update([(0, Life::Running), (1, Life::Shutdown(0))]));
        assert!(!t.update([(0, Life::Running), (1, Life::Shutdown(0))]));
        // Another domain crashing is news; the first one still stopped is not.
        assert!(t.update([(1, Life::Shutdown(0)), (2, Life::Crashed)]));
        assert!(!t.update([(1, Life::Shutdown(0)), (2, Life::Crashed)]));
        // Destroyed and its id reused by a domain that stops again: news again.
        assert!(!t.update([(2, Life::Crashed)]));
        assert!(t.update([(1, Life::Shutdown(1)), (2, Life::Crashed)]));
        assert!(!t.update([]));
        assert!(t.update([(2, Life::Crashed)]));
    }

    #[test]
    fn shutdown_requests() {
        assert_eq!(shutdown_request(0), Ok("poweroff"));
        assert_eq!(shutdown_request(1), Ok("reboot"));
        assert_eq!(shutdown_request(2), Ok("suspend"));
        assert_eq!(shutdown_request(3), Err(XenErrno::Einval));
    }
}
