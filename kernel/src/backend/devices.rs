//! Every split device the hypervisor serves (vbds and vifs), and what they share: their
//! xenstore directories, the hypervisor's watch on each frontend's directory, the event
//! channel a frontend connects to its backend, and attach, detach, list and teardown
//! for the control interface.
//!
//! A device is numbered once (`id`, never reused); its backend service number (what a
//! frontend's port is connected to, [`crate::evtchn`]'s `connect_backend`) is
//! [`SERVICE_DEVICE_BASE`] + `id`, and its watch token is `dev<id>`.
//!
//! Locks, in order: `DOMAINS`, then [`DEVICES`], then the xenstore service (and the disk
//! and NIC drivers' own locks). The xenstore service never calls in here: the watches
//! it fires for the hypervisor are queued and taken by [`drain`] once the call that
//! fired them is over.

use alloc::{collections::BTreeMap, format, string::String, vec::Vec};

use zerocopy::FromZeros;

use ferrovisor::{
    domain_control::Life,
    mm::frame_table::DomId,
    storage::attach::Refusal,
    xenbus::{self, DeviceKind, DevicePaths, Dir},
};
use ferrovisor_abi::{
    domctl::{
        DeviceAttach, DeviceDetach, DeviceInfo, DeviceRefusal, DETACH_FORCE, DEVICE_VBD, DEVICE_VIF,
    },
    errno::XenErrno,
    xen::{io::xenbus::XenbusState, xen::DOMID_XEN},
};

use ferrovisor::evtchn::PortState;

use super::{
    switch::{self, PortId},
    vbd, vif, xenstore,
};
use crate::{arch::x86_64::irq::IrqMutex, domain::Domains};

/// Backend service numbers of devices start here (below: xenstore and the console).
pub const SERVICE_DEVICE_BASE: u32 = 0x100;

/// Devices of one kind a domain may have (xl's default limits are lower).
const MAX_PER_KIND: usize = 16;

/// What every device has.
#[derive(Debug)]
pub struct Head {
    pub id: u32,
    pub dom: DomId,
    pub devid: u32,
    pub kind: DeviceKind,
    pub paths: DevicePaths,
    /// The frontend's `state` as last read.
    pub front_state: XenbusState,
    /// A detach was asked: the device goes once the backend reaches Closed.
    pub detaching: bool,
}

impl Head {
    /// The backend service number the frontend's port connects to.
    pub fn service(&self) -> u32 {
        SERVICE_DEVICE_BASE + self.id
    }

    fn token(&self) -> String {
        format!("dev{}", self.id)
    }

    /// Writes `value` to `node` in the backend's directory.
    pub fn write(&self, doms: &mut Domains, node: &str, value: &str) {
        let path = format!("{}/{node}", self.paths.backend);
        if let Err(e) = xenstore::write(doms, &path, value) {
            log::warn!("xenstore: writing {path}: {e:?}");
        }
    }

    /// Writes the backend's `state`.
    pub fn set_state(&self, doms: &mut Domains, state: XenbusState) {
        self.write(doms, "state", &format!("{}", state.raw()));
    }

    /// Reads `node` of the frontend's directory.
    pub fn read_front(&self, doms: &mut Domains, node: &str) -> Option<Vec<u8>> {
        xenstore::read(doms, &format!("{}/{node}", self.paths.frontend))
    }

    /// Signals the frontend's `port`, if it is still connected to this device (a port
    /// the guest closed and reused is left alone).
    pub fn notify(&self, doms: &mut Domains, port: u32) {
        let Some(d) = doms.get_mut(self.dom) else {
            return;
        };
        let expected = PortState::Interdomain {
            remote: DOMID_XEN,
            remote_port: self.service(),
        };
        if d.evtchn.state(port) != Some(expected) {
            return;
        }
        let vcpu = d.evtchn.notify_vcpu(port).unwrap_or(0);
        d.notify(port, vcpu);
    }

    /// Connects the frontend's unbound `port` (allocated for `DOMID_XEN`) to this device.
    pub fn connect_port(&self, doms: &mut Domains, port: u32) -> Result<(), &'static str> {
        let d = doms.get_mut(self.dom).ok_or("the domain is gone")?;
        d.evtchn
            .connect_backend(port, self.service())
            .map_err(|_| "event-channel is not a port left unbound for the backend")
    }

    /// Gives the frontend's `port` back (unbound for `DOMID_XEN` again).
    pub fn release_port(&self, doms: &mut Domains, port: u32) {
        if let Some(d) = doms.get_mut(self.dom) {
            d.evtchn.peer_closed(port, DOMID_XEN, self.service());
        }
    }

    /// A warning about the device, in its domain's rate-limited log.
    pub fn warn(&self, what: core::fmt::Arguments<'_>) {
        crate::guest_log::warn(
            self.dom,
            format_args!("{} {}: {what}", self.kind.name(), self.devid),
        );
    }
}

/// The frontend's nodes, read from the store (for either kind's handshake).
pub struct FrontNodes<'a> {
    pub doms: &'a mut Domains,
    pub head: &'a Head,
}

impl ferrovisor::vbd::xenbus::FrontendNodes for FrontNodes<'_> {
    fn read(&mut self, node: &str) -> Option<Vec<u8>> {
        self.head.read_front(self.doms, node)
    }
}

impl ferrovisor::vif::xenbus::FrontendNodes for FrontNodes<'_> {
    fn read(&mut self, node: &str) -> Option<Vec<u8>> {
        self.head.read_front(self.doms, node)
    }
}

/// The kind-specific part.
pub enum Backend {
    Vbd(vbd::Vbd),
    Vif(vif::Vif),
}

/// One device.
pub struct Device {
    pub head: Head,
    pub backend: Backend,
}

impl Device {
    fn backend_state(&self) -> XenbusState {
        match &self.backend {
            Backend::Vbd(v) => v.state(),
            Backend::Vif(v) => v.state(),
        }
    }
}

/// The devices, by id.
pub struct Registry {
    devices: BTreeMap<u32, Device>,
    next_id: u32,
}

/// Lock order: `DOMAINS`, then this, then xenstore and the drivers.
static DEVICES: IrqMutex<Registry> = IrqMutex::new(Registry {
    devices: BTreeMap::new(),
    next_id: 0,
});

/// Runs `f` on the registry.
pub fn with_registry<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    f(&mut DEVICES.lock())
}

impl Registry {
    /// The device `id`.
    pub fn get_mut(&mut self, id: u32) -> Option<&mut Device> {
        self.devices.get_mut(&id)
    }

    /// Every device, for the backends' own scans (a disk's completions, a switch's ports).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Device> + '_ {
        self.devices.values_mut()
    }

    fn of_domain(&self, dom: DomId) -> impl Iterator<Item = &Device> + '_ {
        self.devices.values().filter(move |d| d.head.dom == dom)
    }

    fn find(&self, dom: DomId, kind: DeviceKind, devid: u32) -> Option<u32> {
        self.of_domain(dom)
            .find(|d| d.head.kind == kind && d.head.devid == devid)
            .map(|d| d.head.id)
    }
}

fn kind_of(raw: u32) -> Option<DeviceKind> {
    match raw {
        DEVICE_VIF => Some(DeviceKind::Vif),
        DEVICE_VBD => Some(DeviceKind::Vbd),
        _ => None,
    }
}

fn raw_kind(kind: DeviceKind) -> u32 {
    match kind {
        DeviceKind::Vif => DEVICE_VIF,
        DeviceKind::Vbd => DEVICE_VBD,
    }
}

/// Why an attach failed: the errno, and the reason `fv` shows.
pub struct AttachError {
    pub errno: XenErrno,
    pub refusal: Refusal,
}

impl AttachError {
    fn errno(errno: XenErrno) -> Self {
        AttachError {
            errno,
            refusal: DeviceRefusal::None.into(),
        }
    }

    pub fn refused(errno: XenErrno, reason: DeviceRefusal) -> Self {
        AttachError {
            errno,
            refusal: reason.into(),
        }
    }
}

/// Creates directories with their permissions and starting nodes.
fn make_dirs(doms: &mut Domains, dirs: &[Dir]) -> Result<(), XenErrno> {
    for dir in dirs {
        xenstore::mkdir(doms, &dir.path).map_err(|_| XenErrno::Enomem)?;
        xenstore::set_perms(doms, &dir.path, &dir.perms).map_err(|_| XenErrno::Enomem)?;
        for (node, value) in &dir.nodes {
            xenstore::write(doms, &format!("{}/{node}", dir.path), value)
                .map_err(|_| XenErrno::Enomem)?;
        }
    }
    Ok(())
}

/// Attaches a device to `dom` (`DeviceAttach`): checks it, writes both directories,
/// watches the frontend's, starts the backend's handshake. On refusal `req.reason` (and
/// `conflict_domain`) say why; `req.devid` is the id given.
pub fn attach(doms: &mut Domains, dom: DomId, req: &mut DeviceAttach) -> Result<(), AttachError> {
    let kind = kind_of(req.kind).ok_or(AttachError::refused(
        XenErrno::Einval,
        DeviceRefusal::BadSpec,
    ))?;
    if req.flags != 0 {
        return Err(AttachError::refused(
            XenErrno::Einval,
            DeviceRefusal::BadSpec,
        ));
    }
    let d = doms.get(dom).ok_or(AttachError::errno(XenErrno::Esrch))?;
    if d.life != Life::Running {
        return Err(AttachError::refused(
            XenErrno::Ebusy,
            DeviceRefusal::DomainNotReady,
        ));
    }
    let mut reg = DEVICES.lock();
    if reg.of_domain(dom).filter(|d| d.head.kind == kind).count() >= MAX_PER_KIND {
        return Err(AttachError::refused(
            XenErrno::Enospc,
            DeviceRefusal::TooManyDevices,
        ));
    }
    let id = reg.next_id;
    let (devid, backend, dirs) = match kind {
        DeviceKind::Vbd => {
            let existing: Vec<_> = reg
                .devices
                .values()
                .filter_map(|dev| match &dev.backend {
                    Backend::Vbd(v) => Some(v.attachment(doms, dev.head.dom)),
                    Backend::Vif(_) => None,
                })
                .collect();
            let plan = vbd::Vbd::plan(dom, req, &existing).map_err(|r| AttachError {
                errno: match r.reason {
                    DeviceRefusal::NoSuchTarget => XenErrno::Enoent,
                    DeviceRefusal::TargetInUse => XenErrno::Ebusy,
                    DeviceRefusal::TargetReadOnly => XenErrno::Erofs,
                    _ => XenErrno::Einval,
                },
                refusal: r,
            })?;
            if reg.find(dom, kind, plan.devid).is_some() {
                return Err(AttachError::refused(
                    XenErrno::Eexist,
                    DeviceRefusal::DevidInUse,
                ));
            }
            let dirs = plan.dirs(dom);
            (plan.devid, Backend::Vbd(vbd::Vbd::new(plan)), dirs)
        }
        DeviceKind::Vif => {
            let taken: Vec<u32> = reg
                .of_domain(dom)
                .filter(|d| d.head.kind == kind)
                .map(|d| d.head.devid)
                .collect();
            let plan = vif::Vif::plan(dom, req, &taken).map_err(|r| {
                AttachError::refused(
                    match r {
                        DeviceRefusal::NoSuchBridge => XenErrno::Enodev,
                        DeviceRefusal::DevidInUse => XenErrno::Eexist,
                        _ => XenErrno::Einval,
                    },
                    r,
                )
            })?;
            let dirs = plan.dirs(dom);
            (plan.devid, Backend::Vif(vif::Vif::new(plan)), dirs)
        }
    };
    let head = Head {
        id,
        dom,
        devid,
        kind,
        paths: xenbus::paths(kind, dom.0, devid),
        front_state: XenbusState::Initialising,
        detaching: false,
    };
    let made = make_dirs(doms, &dirs).and_then(|()| {
        xenstore::watch(&head.paths.frontend, &head.token()).map_err(|_| XenErrno::Enomem)
    });
    if let Err(e) = made {
        xenstore::remove(doms, &head.paths.frontend);
        xenstore::remove(doms, &head.paths.backend);
        return Err(AttachError::errno(e));
    }
    reg.next_id += 1;
    req.devid = devid;
    let mut dev = Device { head, backend };
    log::info!(
        "d{}: {} {} attached{}",
        dom.0,
        kind.name(),
        devid,
        match &dev.backend {
            Backend::Vbd(v) => format!(" ({})", v.describe()),
            Backend::Vif(v) => format!(" ({})", v.describe()),
        }
    );
    match &mut dev.backend {
        Backend::Vbd(v) => v.start(doms, &dev.head),
        Backend::Vif(v) => {
            switch::add_vif(id);
            v.start(doms, &dev.head)
        }
    }
    reg.devices.insert(id, dev);
    Ok(())
}

/// Detaches device `req.devid` of `dom` (`DeviceDetach`): closes it, and removes it once
/// its frontend has closed (or at once with [`DETACH_FORCE`]).
pub fn detach(doms: &mut Domains, dom: DomId, req: &DeviceDetach) -> Result<(), XenErrno> {
    let kind = kind_of(req.kind).ok_or(XenErrno::Einval)?;
    if req.flags & !DETACH_FORCE != 0 {
        return Err(XenErrno::Einval);
    }
    doms.get(dom).ok_or(XenErrno::Esrch)?;
    let mut reg = DEVICES.lock();
    let id = reg.find(dom, kind, req.devid).ok_or(XenErrno::Enoent)?;
    if req.flags & DETACH_FORCE != 0 {
        remove(doms, &mut reg, id);
        return Ok(());
    }
    let Some(dev) = reg.devices.get_mut(&id) else {
        return Err(XenErrno::Enoent);
    };
    dev.head.detaching = true;
    match &mut dev.backend {
        Backend::Vbd(v) => v.close(doms, &dev.head),
        Backend::Vif(v) => v.close(doms, &dev.head),
    }
    reap(doms, &mut reg, id);
    Ok(())
}

/// Removes device `id` if it is detaching and both ends are done with it.
fn reap(doms: &mut Domains, reg: &mut Registry, id: u32) {
    let done = reg.devices.get(&id).is_some_and(|d| {
        d.head.detaching
            && (d.backend_state() == XenbusState::Closed
                || matches!(
                    d.head.front_state,
                    XenbusState::Initialising | XenbusState::Closed | XenbusState::Unknown
                ) && d.backend_state() != XenbusState::Connected)
    });
    if done {
        remove(doms, reg, id);
    }
}

/// Tears device `id` down and forgets it: stops serving, gives back its ring and port,
/// removes its directories and watch.
fn remove(doms: &mut Domains, reg: &mut Registry, id: u32) {
    let Some(mut dev) = reg.devices.remove(&id) else {
        return;
    };
    xenstore::unwatch(&dev.head.paths.frontend, &dev.head.token());
    match &mut dev.backend {
        Backend::Vbd(v) => v.teardown(doms, &dev.head),
        Backend::Vif(v) => {
            v.teardown(doms, &dev.head);
            switch::remove_vif(id);
        }
    }
    xenstore::remove(doms, &dev.head.paths.backend);
    xenstore::remove(doms, &dev.head.paths.frontend);
    log::info!(
        "d{}: {} {} removed",
        dev.head.dom.0,
        dev.head.kind.name(),
        dev.head.devid
    );
}

/// Tears down every device of a domain being destroyed (while it is still in `doms`:
/// its grants and ports are given back to it).
pub fn destroy_domain(doms: &mut Domains, dom: DomId) {
    let mut reg = DEVICES.lock();
    let ids: Vec<u32> = reg.of_domain(dom).map(|d| d.head.id).collect();
    for id in ids {
        remove(doms, &mut reg, id);
    }
}

/// The devices of `dom`, for `ListDevices`.
pub fn list(dom: DomId) -> Vec<DeviceInfo> {
    let reg = DEVICES.lock();
    reg.of_domain(dom)
        .map(|dev| {
            let mut info = DeviceInfo::new_zeroed();
            info.kind = raw_kind(dev.head.kind);
            info.devid = dev.head.devid;
            info.backend_state = dev.backend_state().raw();
            info.frontend_state = dev.head.front_state.raw();
            match &dev.backend {
                Backend::Vbd(v) => v.fill_info(&mut info),
                Backend::Vif(v) => v.fill_info(&mut info),
            }
            info
        })
        .collect()
}

/// Domain `dom` signalled backend `service`: serve that device's rings.
pub fn kick(doms: &mut Domains, dom: DomId, service: u32) {
    let Some(id) = service.checked_sub(SERVICE_DEVICE_BASE) else {
        return;
    };
    let mut reg = DEVICES.lock();
    let Some(dev) = reg.devices.get_mut(&id) else {
        return;
    };
    if dev.head.dom != dom {
        return;
    }
    match &mut dev.backend {
        Backend::Vbd(v) => v.kick(doms, &dev.head),
        Backend::Vif(_) => serve_vif(doms, &mut reg, id),
    }
}

/// Serves vif `id`'s rings and sends what it transmitted through the switch.
fn serve_vif(doms: &mut Domains, reg: &mut Registry, id: u32) {
    let packets = match reg.devices.get_mut(&id) {
        Some(Device {
            head,
            backend: Backend::Vif(v),
        }) => v.kick(doms, head),
        _ => return,
    };
    if !packets.is_empty() {
        switch::deliver(doms, reg, PortId::Vif(id), packets);
    }
}

/// The tick: vifs whose tx ring had more than one kick's worth are served on.
pub fn on_tick(doms: &mut Domains) {
    let mut reg = DEVICES.lock();
    let busy: Vec<u32> = reg
        .devices
        .values()
        .filter(|d| matches!(&d.backend, Backend::Vif(v) if v.backlog()))
        .map(|d| d.head.id)
        .collect();
    for id in busy {
        serve_vif(doms, &mut reg, id);
    }
}

/// The switch's ports, for `ListSwitchPorts`.
pub fn switch_ports() -> Vec<ferrovisor_abi::domctl::SwitchPort> {
    let reg = DEVICES.lock();
    switch::ports(|id| match reg.devices.get(&id) {
        Some(Device {
            head,
            backend: Backend::Vif(v),
        }) => Some((head.dom.0, head.devid, v.mac())),
        _ => None,
    })
}

/// Handles the hypervisor's fired watches: each device whose frontend directory changed
/// reads the frontend's state and moves its handshake on. Call after anything that may
/// have written to the store (a guest's store request, a control operation).
pub fn drain(doms: &mut Domains) {
    loop {
        // Several events for one device (a frontend writing its ring details) need one
        // look at its state, after the last of them.
        let mut ids: Vec<u32> = Vec::new();
        while let Some((_path, token)) = xenstore::next_internal_event() {
            if let Some(id) = token
                .strip_prefix("dev")
                .and_then(|n| n.parse::<u32>().ok())
            {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        if ids.is_empty() {
            return;
        }
        for id in ids {
            frontend_changed(doms, id);
        }
    }
}

fn frontend_changed(doms: &mut Domains, id: u32) {
    let mut reg = DEVICES.lock();
    let Some(dev) = reg.devices.get_mut(&id) else {
        return;
    };
    let state = dev
        .head
        .read_front(doms, "state")
        .and_then(|v| XenbusState::parse(&v))
        // A frontend directory removed (the domain going, a guest's rm) reads as Closed.
        .unwrap_or(XenbusState::Closed);
    dev.head.front_state = state;
    let vif = match &mut dev.backend {
        Backend::Vbd(v) => {
            v.frontend_changed(doms, &dev.head, state);
            false
        }
        Backend::Vif(v) => {
            v.frontend_changed(doms, &dev.head, state);
            v.backlog()
        }
    };
    if vif {
        // Just connected: netfront posted its rx requests and kicked before it saw the
        // backend Connected.
        serve_vif(doms, &mut reg, id);
    }
    reap(doms, &mut reg, id);
}
