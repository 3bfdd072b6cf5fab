//! A domain's monitor: what carries out `on_poweroff`, `on_reboot` and `on_crash`.
//!
//! As with `xl`, `fv create` leaves a small background process per domain (`fv monitor`,
//! or in the foreground with `fv create -F`) that waits on xenstore's `@releaseDomain`
//! watch, which the hypervisor fires whenever a domain shuts down, crashes or goes away
//! (a slow poll backs it up). When its domain has stopped, the monitor reads why from
//! `GetDomainInfo` (`DOMINFO_SHUTDOWN` and the `SHUTDOWN_*` reason) and does what the
//! config asks for that reason:
//!
//! | action | what happens |
//! |---|---|
//! | `destroy` | the domain is destroyed; the monitor ends |
//! | `restart` | destroyed, then built again from the same config, same name and UUID (a new id); the monitor follows the new domain |
//! | `preserve` | left shut down (`fv list` shows it) until `fv destroy`; the monitor ends |
//! | `rename-restart` | renamed `NAME-ID` and left shut down, and a new domain is built under the config's name |
//! | `coredump-destroy`, `coredump-restart` | core dumps are not supported: said so in the log, then `destroy` or `restart` |
//!
//! A domain restarted more than [`RESTART_LIMIT`] times within [`RESTART_WINDOW`] is left
//! shut down instead (a guest that dies at boot would otherwise loop forever). A domain
//! that suspends (for a save) is left alone.

use std::{collections::VecDeque, io::Write, time::Duration};

use ferrovisor_abi::{
    domctl::{
        DomainInfo, DomctlCmd, RenameDomain, DOMAIN_NAME_MAX, DOMINFO_CRASHED, DOMINFO_DYING,
        DOMINFO_SHUTDOWN,
    },
    xen::{sched::ShutdownReason, DomId},
};

use super::{domain_info, domctl, domctl0, CommandError};
use crate::{
    config::{Action, DomainConfig},
    hypervisor::Hypervisor,
    table::{name_of, shutdown_reason_name},
};

/// At most this many restarts within [`RESTART_WINDOW`].
pub const RESTART_LIMIT: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How often the monitor looks at its domain when no watch event comes.
pub const POLL_FALLBACK: Duration = Duration::from_secs(10);

/// Why a domain stopped, as far as the actions go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Poweroff,
    Reboot,
    Suspend,
    /// A crash, a watchdog expiry or a reason this tool does not know: `on_crash`.
    Crash(u32),
    /// `SHUTDOWN_soft_reset`: handled as a reboot (no soft reset here).
    SoftReset,
}

impl Stop {
    /// Why `info`'s domain stopped; `None` while it has not.
    pub fn of(info: &DomainInfo) -> Option<Stop> {
        if info.flags & DOMINFO_SHUTDOWN == 0 || info.flags & DOMINFO_DYING != 0 {
            return None;
        }
        if info.flags & DOMINFO_CRASHED != 0 {
            // Crashed however it happened (the hypervisor may have killed it).
            return Some(Stop::Crash(info.shutdown_reason));
        }
        Some(match ShutdownReason::try_from(info.shutdown_reason) {
            Ok(ShutdownReason::Poweroff) => Stop::Poweroff,
            Ok(ShutdownReason::Reboot) => Stop::Reboot,
            Ok(ShutdownReason::Suspend) => Stop::Suspend,
            Ok(ShutdownReason::SoftReset) => Stop::SoftReset,
            Ok(ShutdownReason::Crash | ShutdownReason::Watchdog) | Err(_) => {
                Stop::Crash(info.shutdown_reason)
            }
        })
    }
}

/// What the monitor does about a stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Destroy,
    Restart,
    RenameRestart,
    Preserve,
    /// Nothing yet (a suspended domain is being saved).
    Wait,
}

/// A stop, the setting that applies and what it leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// `on_poweroff`, `on_reboot`, `on_crash`, or `""` for a suspend.
    pub setting: &'static str,
    pub action: Option<Action>,
    pub step: Step,
    /// Said in the log along with the action.
    pub note: Option<&'static str>,
}

/// The action `config` sets for `stop`.
pub fn decide(stop: Stop, config: &DomainConfig) -> Decision {
    let (setting, action) = match stop {
        Stop::Suspend => {
            return Decision {
                setting: "",
                action: None,
                step: Step::Wait,
                note: None,
            }
        }
        Stop::Poweroff => ("on_poweroff", config.on_poweroff),
        Stop::Reboot | Stop::SoftReset => ("on_reboot", config.on_reboot),
        Stop::Crash(_) => ("on_crash", config.on_crash),
    };
    let dump = Some("core dumps are not supported: no dump is written");
    let (step, note) = match action {
        Action::Destroy => (Step::Destroy, None),
        Action::Restart => (Step::Restart, None),
        Action::Preserve => (Step::Preserve, None),
        Action::RenameRestart => (Step::RenameRestart, None),
        Action::CoredumpDestroy => (Step::Destroy, dump),
        Action::CoredumpRestart => (Step::Restart, dump),
    };
    Decision {
        setting,
        action: Some(action),
        step,
        note,
    }
}

/// Counts restarts in a sliding window.
#[derive(Debug)]
pub struct RestartGuard {
    recent: VecDeque<Duration>,
    limit: usize,
    window: Duration,
}

impl RestartGuard {
    pub fn new(limit: usize, window: Duration) -> Self {
        Self {
            recent: VecDeque::new(),
            limit,
            window,
        }
    }

    /// Whether one more restart at `now` (time since any fixed point) is allowed;
    /// counts it if so.
    pub fn allow(&mut self, now: Duration) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|&t| now.saturating_sub(t) >= self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.limit {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

/// The name a `rename-restart` gives the stopped domain: `NAME-ID`, cut to fit.
pub fn renamed(name: &str, dom: DomId) -> String {
    let suffix = format!("-{dom}");
    let keep = name.len().min(DOMAIN_NAME_MAX - suffix.len());
    // Config names are ASCII (the hypervisor's rule), so any cut is a char boundary.
    format!("{}{suffix}", &name[..keep])
}

/// How a monitor ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MonitorEnd {
    /// Its domain was destroyed by the configured action.
    Destroyed,
    /// Its domain is left shut down or crashed (`preserve`, or too many restarts).
    Preserved(DomId),
    /// Its domain went away by other hands (`fv destroy`).
    Gone,
}

/// Builds and starts a new domain from the monitor's config with a given UUID.
pub type Rebuild<'a> = dyn FnMut(&mut dyn Hypervisor, [u8; 16]) -> Result<DomId, CommandError> + 'a;

/// What a monitor needs besides the hypervisor.
pub struct Monitor<'a> {
    /// The config the domain was created from (the actions, and what a restart builds).
    pub config: DomainConfig,
    /// Builds and starts a new domain from the config with this UUID (as `fv create`).
    pub rebuild: &'a mut Rebuild<'a>,
    /// A fresh UUID (a `rename-restart`'s new domain).
    pub new_uuid: &'a mut dyn FnMut() -> [u8; 16],
    /// Time since a fixed point (for the restart limit).
    pub now: &'a mut dyn FnMut() -> Duration,
    /// Where it says what it does.
    pub log: &'a mut dyn Write,
    /// Longest wait for a watch event before looking anyway.
    pub poll: Duration,
}

fn say(log: &mut dyn Write, text: std::fmt::Arguments) -> Result<(), CommandError> {
    log.write_fmt(text)
        .and_then(|()| log.write_all(b"\n"))
        .and_then(|()| log.flush())
        .map_err(CommandError::Output)
}

fn describe(info: &DomainInfo) -> String {
    format!("domain {} ({})", name_of(info), info.domid)
}

/// Watches domain `dom` (and whatever replaces it on a restart) until an action ends it.
pub fn monitor(
    hv: &mut dyn Hypervisor,
    mut dom: DomId,
    m: &mut Monitor<'_>,
) -> Result<MonitorEnd, CommandError> {
    let first = domain_info(hv, dom)?;
    let mut uuid = first.uuid;
    let mut guard = RestartGuard::new(RESTART_LIMIT, RESTART_WINDOW);
    let mut waiting_since_suspend = false;
    // How the monitor came to look (said in the log with what it found).
    let mut how = "found at start";
    say(
        m.log,
        format_args!(
            "fv monitor: watching {} (on_poweroff={}, on_reboot={}, on_crash={})",
            describe(&first),
            m.config.on_poweroff.name(),
            m.config.on_reboot.name(),
            m.config.on_crash.name()
        ),
    )?;
    loop {
        let info = match domain_info(hv, dom) {
            Ok(i) if i.uuid == uuid && i.flags & DOMINFO_DYING == 0 => i,
            Ok(_) | Err(CommandError::NoSuchId(_)) => {
                say(
                    m.log,
                    format_args!("fv monitor: domain {dom} is gone (destroyed elsewhere)"),
                )?;
                return Ok(MonitorEnd::Gone);
            }
            Err(e) => return Err(e),
        };
        let stop = Stop::of(&info);
        if stop != Some(Stop::Suspend) {
            waiting_since_suspend = false;
        }
        if let Some(stop) = stop {
            let d = decide(stop, &m.config);
            let what = describe(&info);
            let reason = shutdown_reason_name(info.shutdown_reason);
            if d.step == Step::Wait {
                if !waiting_since_suspend {
                    say(m.log, format_args!("fv monitor: {what} suspended; waiting"))?;
                    waiting_since_suspend = true;
                }
            } else {
                let action = d.action.map_or("", Action::name);
                say(
                    m.log,
                    format_args!(
                        "fv monitor: {what} shut down ({reason}), {how}: {} = {action}{}",
                        d.setting,
                        d.note.map_or(String::new(), |n| format!(" ({n})"))
                    ),
                )?;
            }
            match d.step {
                Step::Wait => {}
                Step::Preserve => {
                    say(
                        m.log,
                        format_args!(
                            "fv monitor: {what} left shut down; 'fv destroy {dom}' removes it"
                        ),
                    )?;
                    return Ok(MonitorEnd::Preserved(dom));
                }
                Step::Destroy => {
                    domctl0(hv, DomctlCmd::DestroyDomain, dom)?;
                    say(m.log, format_args!("fv monitor: {what} destroyed"))?;
                    return Ok(MonitorEnd::Destroyed);
                }
                Step::Restart | Step::RenameRestart => {
                    if !guard.allow((m.now)()) {
                        say(
                            m.log,
                            format_args!(
                                "fv monitor: {what} restarted {RESTART_LIMIT} times within {} s: \
                                 left shut down ('fv destroy {dom}' removes it; check its \
                                 console with 'fv dmesg')",
                                RESTART_WINDOW.as_secs()
                            ),
                        )?;
                        return Ok(MonitorEnd::Preserved(dom));
                    }
                    let new_uuid = if d.step == Step::RenameRestart {
                        let to = renamed(&name_of(&info), dom);
                        let mut r = RenameDomain {
                            name: [0; DOMAIN_NAME_MAX],
                        };
                        r.name[..to.len()].copy_from_slice(to.as_bytes());
                        domctl(hv, DomctlCmd::RenameDomain, dom, &r, &mut [])?;
                        say(
                            m.log,
                            format_args!("fv monitor: {what} renamed {to} and kept"),
                        )?;
                        (m.new_uuid)()
                    } else {
                        domctl0(hv, DomctlCmd::DestroyDomain, dom)?;
                        uuid
                    };
                    dom = (m.rebuild)(hv, new_uuid)?;
                    uuid = domain_info(hv, dom)?.uuid;
                    how = "found at start";
                    say(
                        m.log,
                        format_args!("fv monitor: {} restarted as domain {dom}", m.config.name),
                    )?;
                    continue;
                }
            }
        }
        how = if hv.wait_for_domain_change(m.poll)? {
            "noticed on @releaseDomain"
        } else {
            "noticed on a periodic look"
        };
    }
}

#[cfg(test)]
mod tests {
    use ferrovisor_abi::domctl::{DOMINFO_BUILT, DOMINFO_RUNNING};

    use super::*;
    use crate::{
        commands::create,
        config,
        hypervisor::fake::{Fake, DESTROYED_ELSEWHERE},
    };

    fn cfg(extra: &str) -> DomainConfig {
        let text = format!("name='g'\nkernel='/k'\nmemory=4\n{extra}\n");
        config::parse(&text, "g.cfg", &[])
            .unwrap_or_else(|e| panic!("{e}"))
            .config
    }

    const SOFT_RESET: u32 = 5;
    const WATCHDOG: u32 = 4;

    #[test]
    fn each_reason_takes_its_setting() {
        let c =
            cfg("on_poweroff='preserve'\non_reboot='rename-restart'\non_crash='coredump-restart'");
        let d = decide(Stop::Poweroff, &c);
        assert_eq!(
            (d.setting, d.step, d.note),
            ("on_poweroff", Step::Preserve, None)
        );
        let d = decide(Stop::Reboot, &c);
        assert_eq!((d.setting, d.step), ("on_reboot", Step::RenameRestart));
        assert_eq!(decide(Stop::SoftReset, &c).setting, "on_reboot");
        let d = decide(Stop::Crash(3), &c);
        assert_eq!((d.setting, d.step), ("on_crash", Step::Restart));
        assert!(d.note.unwrap().contains("core dumps are not supported"));
        assert_eq!(decide(Stop::Suspend, &c).step, Step::Wait);
        // xl's defaults: destroy on poweroff and crash, restart on reboot.
        let c = cfg("");
        assert_eq!(decide(Stop::Poweroff, &c).step, Step::Destroy);
        assert_eq!(decide(Stop::Reboot, &c).step, Step::Restart);
        assert_eq!(decide(Stop::Crash(3), &c).step, Step::Destroy);
        let d = decide(Stop::Crash(3), &cfg("on_crash='coredump-destroy'"));
        assert_eq!(d.step, Step::Destroy);
        assert!(d.note.is_some());
    }

    #[test]
    fn stops_read_from_domain_info() {
        let mut f = Fake::new();
        let mut info = f
            .add_domain(4, "g", 256, DOMINFO_BUILT | DOMINFO_RUNNING)
            .info;
        assert_eq!(Stop::of(&info), None);
        info.flags = DOMINFO_BUILT | DOMINFO_SHUTDOWN;
        for (reason, stop) in [
            (0, Stop::Poweroff),
            (1, Stop::Reboot),
            (2, Stop::Suspend),
            (3, Stop::Crash(3)),
            (WATCHDOG, Stop::Crash(WATCHDOG)),
            (SOFT_RESET, Stop::SoftReset),
            (77, Stop::Crash(77)),
        ] {
            info.shutdown_reason = reason;
            assert_eq!(Stop::of(&info), Some(stop), "reason {reason}");
        }
        // Crashed is a crash whatever the reason says.
        info.flags |= DOMINFO_CRASHED;
        info.shutdown_reason = 0;
        assert_eq!(Stop::of(&info), Some(Stop::Crash(0)));
        info.flags |= DOMINFO_DYING;
        assert_eq!(Stop::of(&info), None, "dying: being destroyed already");
    }

    #[test]
    fn restarts_are_limited_within_the_window() {
        let mut g = RestartGuard::new(3, Duration::from_secs(60));
        let s = Duration::from_secs;
        assert!(g.allow(s(0)) && g.allow(s(10)) && g.allow(s(20)));
        assert!(!g.allow(s(30)));
        assert!(!g.allow(s(59)));
        // The first restart leaves the window.
        assert!(g.allow(s(60)));
        assert!(!g.allow(s(61)));
    }

    #[test]
    fn renamed_names_fit() {
        assert_eq!(renamed("web1", 7), "web1-7");
        let long = "x".repeat(DOMAIN_NAME_MAX);
        let r = renamed(&long, 123);
        assert_eq!(r.len(), DOMAIN_NAME_MAX);
        assert!(r.ends_with("x-123"));
    }

    struct Run {
        end: Result<MonitorEnd, CommandError>,
        log: String,
        rebuilt: usize,
    }

    /// Creates `g` from `c` in `f` and monitors it.
    fn watch(f: &mut Fake, c: DomainConfig) -> (DomId, Run) {
        let plan = create::plan(&c, [1; 16], &[]);
        let dom = create::execute(f, &plan, b"kernel", None).unwrap();
        let mut rebuilt = 0;
        let mut log = Vec::new();
        let cfg = c.clone();
        let mut rebuild = |hv: &mut dyn Hypervisor, uuid: [u8; 16]| {
            rebuilt += 1;
            create::execute(hv, &create::plan(&cfg, uuid, &[]), b"kernel", None)
        };
        let mut new_uuid = || [9u8; 16];
        let mut now = || Duration::from_secs(1);
        let mut m = Monitor {
            config: c,
            rebuild: &mut rebuild,
            new_uuid: &mut new_uuid,
            now: &mut now,
            log: &mut log,
            poll: Duration::from_millis(1),
        };
        let end = monitor(f, dom, &mut m);
        (
            dom,
            Run {
                end,
                log: String::from_utf8(log).unwrap(),
                rebuilt,
            },
        )
    }

    fn named<'f>(f: &'f Fake, name: &str) -> Vec<&'f DomainInfo> {
        f.domains
            .values()
            .map(|d| &d.info)
            .filter(|i| i.name_bytes() == name.as_bytes())
            .collect()
    }

    #[test]
    fn poweroff_destroys() {
        let mut f = Fake::new();
        f.stop_script.push_back(("g".into(), 0));
        let (dom, r) = watch(&mut f, cfg(""));
        assert_eq!(r.end.unwrap(), MonitorEnd::Destroyed);
        assert!(!f.domains.contains_key(&dom));
        assert!(
            r.log
                .contains("domain g (1) shut down (poweroff), noticed on @releaseDomain: on_poweroff = destroy"),
            "{}",
            r.log
        );
        // It waited on the watch, then destroyed: no busy loop.
        assert_eq!(f.calls.iter().filter(|c| *c == "wait").count(), 1);
    }

    #[test]
    fn reboot_restarts_under_the_same_name_and_uuid() {
        let mut f = Fake::new();
        f.stop_script.push_back(("g".into(), 1));
        f.stop_script.push_back(("g".into(), 1));
        f.stop_script.push_back(("g".into(), 0));
        let (dom, r) = watch(&mut f, cfg("on_poweroff='preserve'"));
        assert_eq!(r.rebuilt, 2);
        let MonitorEnd::Preserved(last) = r.end.unwrap() else {
            panic!("{}", r.log)
        };
        assert!(last > dom, "a new id each time");
        assert!(!f.domains.contains_key(&dom));
        let g = named(&f, "g");
        assert_eq!(g.len(), 1);
        assert_eq!((g[0].domid, g[0].uuid), (last, [1; 16]));
        assert_eq!(g[0].flags & DOMINFO_SHUTDOWN, DOMINFO_SHUTDOWN);
        assert!(r.log.contains("on_reboot = restart"), "{}", r.log);
        assert!(r.log.contains(&format!("g restarted as domain {last}")));
    }

    #[test]
    fn a_missed_event_is_caught_by_the_periodic_look() {
        let mut f = Fake::new();
        f.quiet_stops = true;
        f.stop_script.push_back(("g".into(), 0));
        let (_, r) = watch(&mut f, cfg(""));
        assert_eq!(r.end.unwrap(), MonitorEnd::Destroyed);
        assert!(
            r.log
                .contains("(poweroff), noticed on a periodic look: on_poweroff = destroy"),
            "{}",
            r.log
        );
    }

    #[test]
    fn a_domain_already_stopped_is_handled_at_once() {
        let mut f = Fake::new();
        let plan = create::plan(&cfg(""), [1; 16], &[]);
        let dom = create::execute(&mut f, &plan, b"kernel", None).unwrap();
        let d = f.domains.get_mut(&dom).unwrap();
        d.info.flags = DOMINFO_BUILT | DOMINFO_SHUTDOWN;
        let mut rebuild = |_: &mut dyn Hypervisor, _: [u8; 16]| -> Result<DomId, CommandError> {
            unreachable!("poweroff destroys")
        };
        let (mut new_uuid, mut now) = (|| [0u8; 16], || Duration::ZERO);
        let mut log = Vec::new();
        let mut m = Monitor {
            config: cfg(""),
            rebuild: &mut rebuild,
            new_uuid: &mut new_uuid,
            now: &mut now,
            log: &mut log,
            poll: Duration::from_millis(1),
        };
        assert_eq!(monitor(&mut f, dom, &mut m).unwrap(), MonitorEnd::Destroyed);
        let log = String::from_utf8(log).unwrap();
        assert!(
            log.contains("(poweroff), found at start: on_poweroff = destroy"),
            "{log}"
        );
        assert!(!f.calls.iter().any(|c| c == "wait"), "no wait needed");
    }

    #[test]
    fn crash_preserved_stays_listed_as_crashed() {
        let mut f = Fake::new();
        f.stop_script.push_back(("g".into(), 3));
        let (dom, r) = watch(&mut f, cfg("on_crash='preserve'"));
        assert_eq!(r.end.unwrap(), MonitorEnd::Preserved(dom));
        assert_ne!(f.domains[&dom].info.flags & DOMINFO_CRASHED, 0);
        assert!(
            r.log
                .contains("(crash), noticed on @releaseDomain: on_crash = preserve"),
            "{}",
            r.log
        );
    }

    #[test]
    fn rename_restart_keeps_the_old_one_renamed() {
        let mut f = Fake::new();
        f.stop_script.push_back(("g".into(), 3));
        f.stop_script.push_back(("g".into(), DESTROYED_ELSEWHERE));
        let (dom, r) = watch(&mut f, cfg("on_crash='rename-restart'"));
        assert_eq!(r.end.unwrap(), MonitorEnd::Gone);
        let old = named(&f, &format!("g-{dom}"));
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].domid, dom);
        assert_ne!(old[0].flags & DOMINFO_CRASHED, 0);
        // The new g was built with a fresh uuid, then destroyed by someone else.
        assert!(named(&f, "g").is_empty());
        assert!(f.calls.iter().any(|c| c.starts_with("domctl CreateDomain")));
        assert_eq!(r.rebuilt, 1);
        assert!(
            r.log.contains(&format!("renamed g-{dom} and kept")),
            "{}",
            r.log
        );
    }

    #[test]
    fn a_crash_loop_is_stopped() {
        let mut f = Fake::new();
        for _ in 0..20 {
            f.stop_script.push_back(("g".into(), 3));
        }
        let (_, r) = watch(&mut f, cfg("on_crash='restart'"));
        let MonitorEnd::Preserved(last) = r.end.unwrap() else {
            panic!("{}", r.log)
        };
        assert_eq!(r.rebuilt, RESTART_LIMIT);
        assert_ne!(f.domains[&last].info.flags & DOMINFO_CRASHED, 0);
        assert!(r.log.contains("restarted 5 times within 60 s"), "{}", r.log);
    }

    #[test]
    fn suspend_waits_and_destroyed_elsewhere_ends() {
        let mut f = Fake::new();
        f.stop_script.push_back(("g".into(), 2));
        f.stop_script.push_back(("other".into(), 0));
        f.stop_script.push_back(("g".into(), DESTROYED_ELSEWHERE));
        let (_, r) = watch(&mut f, cfg(""));
        assert_eq!(r.end.unwrap(), MonitorEnd::Gone);
        assert_eq!(r.log.matches("suspended; waiting").count(), 1, "{}", r.log);
        assert!(r.log.contains("is gone"));
    }

    #[test]
    fn a_closed_watch_is_an_error() {
        let mut f = Fake::new();
        let (_, r) = watch(&mut f, cfg(""));
        let e = r.end.unwrap_err().to_string();
        assert!(e.contains("@releaseDomain"), "{e}");
    }
}
