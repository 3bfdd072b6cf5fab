//! Devices: turning `vif` and `disk` specs into `DeviceAttach` requests, attaching them
//! (at `fv create` and by hot-plug), detaching them as `xl *-detach` does, and the
//! lists (`network-list`, `block-list`, `disk-list`, `switch`).
//!
//! The hypervisor is the backend of every device (`DOMID_XEN`) and writes both ends'
//! xenstore nodes itself; the toolstack only asks (`abi/src/domctl.rs`). A refused attach
//! comes back with a [`DeviceRefusal`], which becomes a message saying what to do.

use std::time::{Duration, Instant};

use ferrovisor_abi::{
    domctl::{
        padded_str, set_padded, DeviceAttach, DeviceDetach, DeviceInfo, DeviceRefusal, DiskInfo,
        SwitchPort, DETACH_FORCE, DEVICE_VBD, DEVICE_VIF, DEVID_AUTO, SWITCH_NAME, VBD_MODE_READ,
        VBD_MODE_WRITE, VBD_MODE_WRITE_SHARED, VBD_TYPE_CDROM, VBD_TYPE_DISK,
    },
    xen::DomId,
};
use zerocopy::FromZeros;

use super::{resolve, CommandError, DomainRef};
use crate::{
    config::{
        device::{mac_string, parse_disk, parse_vif, Access, DiskFormat, DiskSpec, VifSpec},
        vdev::vdev_number,
    },
    hypervisor::{Hypervisor, TransportError},
    table::name_of,
};

const ESRCH: i32 = 3;
/// What a hypervisor without the device backends answers.
const ENOSYS: i32 = 38;

/// The OUI of Xen's vif MACs.
pub const XEN_OUI: [u8; 3] = [0x00, 0x16, 0x3e];

/// How long `*-detach` waits for the frontend to close the device (xl's 10 s).
pub const DETACH_WAIT: Duration = Duration::from_secs(10);

/// A MAC address for a vif whose spec names none: Xen's `00:16:3e` and three random
/// bytes, the top bit of the fourth byte clear (the half of the OUI's range xl uses).
pub fn random_mac(random: [u8; 16]) -> [u8; 6] {
    [
        XEN_OUI[0],
        XEN_OUI[1],
        XEN_OUI[2],
        random[0] & 0x7f,
        random[1],
        random[2],
    ]
}

/// A device ready to attach: what messages call it, and its request or why the spec
/// cannot be served here.
#[derive(Clone, Debug)]
pub struct PlannedDevice {
    /// `vif 0 (mac=…, bridge=…)` or `disk 'phy:vda2,xvda,w'`.
    pub label: String,
    pub request: Result<DeviceAttach, String>,
}

/// The request for a vif with MAC `mac` (the spec's, or a generated one). Only `mac`,
/// `bridge` and `devid` mean something to the hypervisor's backend; the other settings
/// (script, model, rate, ...) are for Xen's hotplug scripts and have no effect here.
pub fn vif_request(spec: &VifSpec, mac: [u8; 6]) -> Result<DeviceAttach, String> {
    let mut a = DeviceAttach::new_zeroed();
    a.kind = DEVICE_VIF;
    a.devid = spec.devid.unwrap_or(DEVID_AUTO);
    a.mac = mac;
    let bridge = spec
        .bridge
        .as_deref()
        .unwrap_or(crate::config::device::DEFAULT_BRIDGE);
    set_padded(&mut a.bridge, bridge.as_bytes())
        .ok_or_else(|| format!("the bridge name '{bridge}' is too long"))?;
    Ok(a)
}

/// The label and request of vif number `index` of a config, with MAC `mac`.
pub fn plan_vif(index: usize, spec: &VifSpec, mac: [u8; 6]) -> PlannedDevice {
    PlannedDevice {
        label: format!("vif {index} ({})", spec.describe(&mac)),
        request: vif_request(spec, mac),
    }
}

/// The request for a disk spec: a `phy:` target among the host's disks (`vda2`, with or
/// without `/dev/`), raw, attached under its virtual device number (also its device id,
/// as xl does).
pub fn disk_request(spec: &DiskSpec) -> Result<DeviceAttach, String> {
    let Some(target) = spec.target.as_deref() else {
        return Err(
            "an empty CD-ROM drive cannot be attached: Ferrovisor serves only the host's disks (give a target; 'fv disk-list' shows them)".into(),
        );
    };
    match spec.backend_type.as_deref() {
        None | Some("phy") => {}
        Some(other) => {
            return Err(format!(
                "the {other} backend is not available: Ferrovisor attaches the host's disks and partitions only ('phy:NAME'; 'fv disk-list' shows them)"
            ))
        }
    }
    if spec.format != DiskFormat::Raw {
        return Err(
            "only raw disks are served (the hypervisor reads no image formats): drop the format"
                .into(),
        );
    }
    if spec.backend.is_some() {
        return Err(
            "'backend=' cannot be set: the hypervisor itself is the backend of every disk".into(),
        );
    }
    let name = target.strip_prefix("/dev/").unwrap_or(target);
    let vdev = vdev_number(&spec.vdev)
        .ok_or_else(|| format!("'{}' is not a virtual device name", spec.vdev))?;
    let mut a = DeviceAttach::new_zeroed();
    a.kind = DEVICE_VBD;
    a.devid = vdev;
    a.vdev = vdev;
    a.mode = match spec.access {
        Access::ReadOnly => VBD_MODE_READ,
        Access::ReadWrite => VBD_MODE_WRITE,
        Access::WriteShared => VBD_MODE_WRITE_SHARED,
    };
    a.device_type = if spec.cdrom {
        VBD_TYPE_CDROM
    } else {
        VBD_TYPE_DISK
    };
    set_padded(&mut a.target, name.as_bytes())
        .ok_or_else(|| format!("the target name '{name}' is too long"))?;
    set_padded(&mut a.vdev_name, spec.vdev.as_bytes())
        .ok_or_else(|| format!("the device name '{}' is too long", spec.vdev))?;
    Ok(a)
}

/// The label and request of a disk spec.
pub fn plan_disk(spec: &DiskSpec) -> PlannedDevice {
    PlannedDevice {
        label: format!("disk '{}'", spec.spec_string()),
        request: disk_request(spec),
    }
}

/// A request's target, bridge or device name as text.
fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(field).into_owned()
}

/// A domain's name and id for messages: `'web1' (3)`.
fn domain_label(hv: &mut dyn Hypervisor, dom: DomId) -> String {
    match super::domain_info(hv, dom) {
        Ok(i) => format!("'{}' ({dom})", name_of(&i)),
        Err(_) => format!("{dom}"),
    }
}

/// What a refused attach means and what to do, from its reason (the transport error's
/// own text when the hypervisor gave none).
pub fn refusal_text(hv: &mut dyn Hypervisor, req: &DeviceAttach, error: &TransportError) -> String {
    let vif = req.kind == DEVICE_VIF;
    let kind = if vif { "vif" } else { "disk" };
    let target = text(padded_str(&req.target));
    match DeviceRefusal::try_from(req.reason) {
        Ok(DeviceRefusal::NoSuchBridge) => {
            let mut bridges: Vec<String> = hv
                .list_switch_ports()
                .unwrap_or_default()
                .iter()
                .map(|p| text(padded_str(&p.bridge)))
                .collect();
            bridges.sort();
            bridges.dedup();
            let has = if bridges.is_empty() {
                format!("the host's switch is {SWITCH_NAME}")
            } else {
                format!("the host has: {}", bridges.join(", "))
            };
            format!(
                "no switch named '{}' on this host ({has})",
                text(padded_str(&req.bridge))
            )
        }
        Ok(DeviceRefusal::NoSuchTarget) => {
            let names: Vec<String> = hv
                .list_disks()
                .unwrap_or_default()
                .iter()
                .map(|d| text(padded_str(&d.name)))
                .collect();
            let has = if names.is_empty() {
                "the host has no disks".into()
            } else {
                format!(
                    "the host has: {}; 'fv disk-list' shows them",
                    names.join(", ")
                )
            };
            format!("no disk or partition named '{target}' on this host ({has})")
        }
        Ok(DeviceRefusal::TargetInUse) => {
            let holder = req.conflict_domain;
            let who = domain_label(hv, holder);
            // The holder may have this very target, or a disk or partition overlapping it,
            // writable (any attach conflicts) or read-only (a 'w' attach conflicts).
            let held: Vec<(String, bool)> = hv
                .list_devices(holder)
                .unwrap_or_default()
                .iter()
                .filter(|d| d.kind == DEVICE_VBD)
                .map(|d| (text(padded_str(&d.target)), d.mode != VBD_MODE_READ))
                .collect();
            let writable: Vec<String> = held
                .iter()
                .filter(|(_, w)| *w)
                .map(|(t, _)| t.clone())
                .collect();
            // Its own attachment of this very target says which; else any writable one.
            let read_only = match held.iter().find(|(t, _)| *t == target) {
                Some((_, w)) => !w,
                None => writable.is_empty(),
            };
            if read_only && req.mode == VBD_MODE_WRITE {
                let theirs: Vec<String> = held.into_iter().map(|(t, _)| t).collect();
                let what = if theirs.is_empty() || theirs.contains(&target) {
                    format!("{target} is attached read-only to domain {who}")
                } else {
                    format!(
                        "{target} overlaps {}, attached read-only to domain {who}",
                        theirs.join(", ")
                    )
                };
                return format!(
                    "{what}, and 'w' needs it alone; use 'r' to share it read-only, or 'w!'"
                );
            }
            let what = if writable.is_empty() || writable.contains(&target) {
                format!("{target} is attached writable to domain {who}")
            } else {
                format!(
                    "{target} overlaps {}, attached writable to domain {who}",
                    writable.join(", ")
                )
            };
            format!("{what}; use 'w!' to share it writable, or 'r'")
        }
        Ok(DeviceRefusal::DevidInUse) => format!(
            "the domain already has a {kind} with devid {}: give another devid or none",
            req.devid
        ),
        Ok(DeviceRefusal::VdevInUse) => format!(
            "the domain already has a disk at {} ({}): pick another virtual device",
            text(padded_str(&req.vdev_name)),
            req.vdev
        ),
        Ok(DeviceRefusal::TooManyDevices) => {
            format!("the domain has as many {kind}s as it may have: detach one first")
        }
        Ok(DeviceRefusal::BadSpec) => {
            format!("the hypervisor refused the {kind} spec as malformed ({error})")
        }
        Ok(DeviceRefusal::DomainNotReady) => {
            "the domain cannot take devices now (it is dying, or not built yet)".into()
        }
        Ok(DeviceRefusal::TargetReadOnly) => {
            format!("{target} is read-only on this host: attach it with 'r'")
        }
        Ok(DeviceRefusal::None) | Err(_) => match error {
            TransportError::Hypercall { errno, .. } if *errno == ENOSYS => format!(
                "this hypervisor does not serve {kind}s yet (its device backends are not \
                 built in); remove the entry to create the domain without it"
            ),
            _ => error.to_string(),
        },
    }
}

/// Attaches one planned device to `dom`; its device id, or the message for the user.
pub fn attach(hv: &mut dyn Hypervisor, dom: DomId, device: &PlannedDevice) -> Result<u32, String> {
    let mut req = device.request.clone()?;
    match hv.device_attach(dom, &mut req) {
        Ok(()) => Ok(req.devid),
        Err(e) => Err(refusal_text(hv, &req, &e)),
    }
}

/// `domain 'web1' (3)` for messages about a domain named by the user.
fn context_of(info: &ferrovisor_abi::domctl::DomainInfo) -> String {
    format!("domain '{}' ({})", name_of(info), info.domid)
}

/// `fv network-attach DOMAIN [KEY=VALUE...]`: a vif from xl's settings (`mac=`,
/// `bridge=`, `devid=`, ...), with a random MAC when none is given. Returns the domain's
/// id and the new vif's device id and MAC.
pub fn network_attach(
    hv: &mut dyn Hypervisor,
    r: &DomainRef,
    settings: &[String],
    random: [u8; 16],
) -> Result<(DomId, u32, [u8; 6]), CommandError> {
    let info = resolve(hv, r)?;
    let context = context_of(&info);
    let joined = settings.join(",");
    let spec = parse_vif(&joined).map_err(|e| CommandError::Device {
        context: context.clone(),
        device: format!("vif '{joined}'"),
        why: e.to_string(),
        cleanup: String::new(),
    })?;
    let mac = spec.mac.unwrap_or_else(|| random_mac(random));
    let planned = PlannedDevice {
        label: format!("vif ({})", spec.describe(&mac)),
        request: vif_request(&spec, mac),
    };
    let devid = attach(hv, info.domid, &planned).map_err(|why| CommandError::Device {
        context,
        device: planned.label.clone(),
        why,
        cleanup: String::new(),
    })?;
    Ok((info.domid, devid, mac))
}

/// `fv block-attach DOMAIN DISKSPEC...`: a disk from a config file's disk spec (the
/// arguments joined with commas, as xl does). Returns the domain's id and the device id.
pub fn block_attach(
    hv: &mut dyn Hypervisor,
    r: &DomainRef,
    spec: &[String],
) -> Result<(DomId, u32), CommandError> {
    let info = resolve(hv, r)?;
    let context = context_of(&info);
    let joined = spec.join(",");
    let parsed = parse_disk(&joined).map_err(|e| CommandError::Device {
        context: context.clone(),
        device: format!("disk '{joined}'"),
        why: e.to_string(),
        cleanup: String::new(),
    })?;
    let planned = plan_disk(&parsed);
    let devid = attach(hv, info.domid, &planned).map_err(|why| CommandError::Device {
        context,
        device: planned.label.clone(),
        why,
        cleanup: String::new(),
    })?;
    Ok((info.domid, devid))
}

/// A MAC address as typed (`00:16:3E:01:02:03`, any case).
fn parse_mac_arg(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// The device of `kind` that `which` names among `devices`: a device id, a vif's MAC, or
/// a vbd's virtual device name (`xvdb`) or number.
fn find_device<'a>(devices: &'a [DeviceInfo], kind: u32, which: &str) -> Option<&'a DeviceInfo> {
    let of_kind = || devices.iter().filter(move |d| d.kind == kind);
    if let Ok(n) = which.parse::<u32>() {
        return of_kind().find(|d| d.devid == n || (kind == DEVICE_VBD && d.vdev == n));
    }
    if kind == DEVICE_VIF {
        let mac = parse_mac_arg(which)?;
        return of_kind().find(|d| d.mac == mac);
    }
    let n = vdev_number(which)?;
    of_kind().find(|d| d.vdev == n)
}

/// How a device is named in messages: `vif 0 (00:16:3e:01:02:03)`, `disk xvdb (51728)`.
fn device_label(d: &DeviceInfo) -> String {
    if d.kind == DEVICE_VIF {
        format!("vif {} ({})", d.devid, mac_string(&d.mac))
    } else {
        format!("disk {} ({})", text(padded_str(&d.vdev_name)), d.vdev)
    }
}

/// How a detach ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detached {
    /// The frontend closed and the device is gone.
    Closed,
    /// Removed at once (`--force`).
    Forced,
    /// The domain went away meanwhile (and its devices with it).
    DomainGone,
}

/// `fv network-detach` / `fv block-detach`: asks the frontend to close the device and
/// waits up to `wait` (polling every `poll`) for it to go, as xl does; `force` removes it
/// at once. Returns the device's label and how it ended.
#[allow(clippy::too_many_arguments)]
pub fn detach(
    hv: &mut dyn Hypervisor,
    r: &DomainRef,
    kind: u32,
    which: &str,
    force: bool,
    wait: Duration,
    poll: Duration,
) -> Result<(String, Detached), CommandError> {
    let info = resolve(hv, r)?;
    let dom = info.domid;
    let context = context_of(&info);
    let devices = hv.list_devices(dom)?;
    let (noun, list_cmd) = if kind == DEVICE_VIF {
        ("vif", "network-list")
    } else {
        ("disk", "block-list")
    };
    let Some(dev) = find_device(&devices, kind, which) else {
        return Err(CommandError::NoSuchDevice {
            context,
            what: format!("{noun} '{which}'"),
            hint: format!("'fv {list_cmd} {}' shows them", name_of(&info)),
        });
    };
    let label = device_label(dev);
    let req = DeviceDetach {
        kind,
        devid: dev.devid,
        flags: if force { DETACH_FORCE } else { 0 },
    };
    let devid = dev.devid;
    match hv.device_detach(dom, &req) {
        Err(e) if e.errno() == Some(ESRCH) => return Ok((label, Detached::DomainGone)),
        r => r?,
    }
    if force {
        return Ok((label, Detached::Forced));
    }
    let start = Instant::now();
    loop {
        let now = match hv.list_devices(dom) {
            Err(e) if e.errno() == Some(ESRCH) => return Ok((label, Detached::DomainGone)),
            r => r?,
        };
        if !now.iter().any(|d| d.kind == kind && d.devid == devid) {
            return Ok((label, Detached::Closed));
        }
        if start.elapsed() >= wait {
            let cmd = if kind == DEVICE_VIF {
                "network-detach"
            } else {
                "block-detach"
            };
            return Err(CommandError::DetachTimeout {
                context,
                device: label,
                secs: wait.as_secs(),
                force_cmd: format!("fv {cmd} --force {} {devid}", name_of(&info)),
            });
        }
        std::thread::sleep(poll);
    }
}

/// The devices of `kind` of each domain named, for `network-list` and `block-list`.
pub fn list_of_kind(
    hv: &mut dyn Hypervisor,
    which: &[DomainRef],
    kind: u32,
) -> Result<Vec<(DomId, Vec<DeviceInfo>)>, CommandError> {
    which
        .iter()
        .map(|r| {
            let info = resolve(hv, r)?;
            let devs = hv
                .list_devices(info.domid)?
                .into_iter()
                .filter(|d| d.kind == kind)
                .collect();
            Ok((info.domid, devs))
        })
        .collect()
}

/// Who has a target attached: `(domain name, domid, writable)` for each vbd of each
/// domain naming it exactly.
pub type DiskUsers = Vec<(String, DomId, &'static str)>;

/// `fv disk-list`: the host's disks and partitions, each with the domains using it.
pub fn disk_list(hv: &mut dyn Hypervisor) -> Result<Vec<(DiskInfo, DiskUsers)>, CommandError> {
    let disks = hv.list_disks()?;
    let mut users: Vec<(String, String, DomId, &'static str)> = Vec::new();
    for d in super::list_domains(hv)? {
        // A domain gone between the two lists has no devices left.
        let devs = match hv.list_devices(d.domid) {
            Err(e) if e.errno() == Some(ESRCH) => continue,
            // A hypervisor that lists disks but serves no vbds yet: nobody uses them.
            Err(e) if e.errno() == Some(ENOSYS) => break,
            r => r?,
        };
        for v in devs.iter().filter(|v| v.kind == DEVICE_VBD) {
            users.push((
                text(padded_str(&v.target)),
                name_of(&d),
                d.domid,
                match v.mode {
                    VBD_MODE_READ => "r",
                    VBD_MODE_WRITE_SHARED => "w!",
                    _ => "w",
                },
            ));
        }
    }
    Ok(disks
        .into_iter()
        .map(|disk| {
            let name = text(padded_str(&disk.name));
            let who = users
                .iter()
                .filter(|u| u.0 == name)
                .map(|u| (u.1.clone(), u.2, u.3))
                .collect();
            (disk, who)
        })
        .collect())
}

/// `fv switch`: every switch port, with the name of the domain of each vif.
pub fn switch_ports(
    hv: &mut dyn Hypervisor,
) -> Result<Vec<(SwitchPort, Option<String>)>, CommandError> {
    let ports = hv.list_switch_ports()?;
    let domains = super::list_domains(hv)?;
    Ok(ports
        .into_iter()
        .map(|p| {
            let name = (p.kind == ferrovisor_abi::domctl::PORT_VIF)
                .then(|| domains.iter().find(|d| d.domid == p.domid).map(name_of))
                .flatten();
            (p, name)
        })
        .collect())
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
