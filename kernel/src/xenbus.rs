//! The xenstore side of a split device, as the toolstack lays it out
//! (`docs/misc/xenstore-paths.pandoc`, xl's device code): the frontend's directory in
//! the guest's home, the backend's in the backend domain's, and the nodes each starts
//! with. The backend here is the hypervisor itself (`DOMID_XEN`), so its directories are
//! `/local/domain/32754/backend/<kind>/<domid>/<devid>`: outside dom0's tree, so that a
//! dom0 kernel with its own backend drivers (Linux's `xen-netback` is autoloaded from a
//! `xen-backend:vif` uevent) never sees, and never races for, these devices.

use alloc::{format, string::String, vec, vec::Vec};

use ferrovisor_abi::xen::{xen::DOMID_XEN, DomId};

use crate::net::ethernet::MacAddr;

/// The two kinds of split device the hypervisor serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeviceKind {
    /// A network interface (`io/netif.h`).
    Vif,
    /// A block device (`io/blkif.h`).
    Vbd,
}

impl DeviceKind {
    /// The directory name in xenstore (`device/vif`, `backend/vbd`).
    pub const fn name(self) -> &'static str {
        match self {
            DeviceKind::Vif => "vif",
            DeviceKind::Vbd => "vbd",
        }
    }
}

/// Where one device's two ends live in xenstore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicePaths {
    pub frontend: String,
    pub backend: String,
}

/// The paths of device `devid` of `kind` in domain `dom`.
pub fn paths(kind: DeviceKind, dom: DomId, devid: u32) -> DevicePaths {
    DevicePaths {
        frontend: format!("/local/domain/{dom}/device/{}/{devid}", kind.name()),
        backend: format!(
            "/local/domain/{DOMID_XEN}/backend/{}/{dom}/{devid}",
            kind.name()
        ),
    }
}

/// A directory to create with its permission list (xenstore's `n0`, `r5` entries: the
/// first names the owner), then the nodes to write under it, which inherit it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dir {
    pub path: String,
    pub perms: Vec<String>,
    /// (name relative to `path`, value).
    pub nodes: Vec<(&'static str, String)>,
}

/// The frontend directory: owned by the guest (it writes its ring details and state
/// there), readable by the backend; and the backend directory: owned by the backend,
/// readable by the guest (Linux needs to read `state` and the features).
fn dirs(
    kind: DeviceKind,
    dom: DomId,
    devid: u32,
    mut front: Vec<(&'static str, String)>,
    mut back: Vec<(&'static str, String)>,
) -> [Dir; 2] {
    let p = paths(kind, dom, devid);
    let mut f = vec![
        ("backend", p.backend.clone()),
        ("backend-id", format!("{DOMID_XEN}")),
        ("state", String::from("1")),
    ];
    f.append(&mut front);
    let mut b = vec![
        ("frontend", p.frontend.clone()),
        ("frontend-id", format!("{dom}")),
        ("online", String::from("1")),
        ("state", String::from("1")),
    ];
    b.append(&mut back);
    [
        Dir {
            path: p.frontend,
            perms: vec![format!("n{dom}"), format!("r{DOMID_XEN}")],
            nodes: f,
        },
        Dir {
            path: p.backend,
            perms: vec![format!("n{DOMID_XEN}"), format!("r{dom}")],
            nodes: b,
        },
    ]
}

/// A vif's starting nodes (`handle` is its devid).
pub fn vif_dirs(dom: DomId, devid: u32, mac: [u8; 6], bridge: &str) -> [Dir; 2] {
    // `xx:xx:xx:xx:xx:xx`, as xenstore's `mac` nodes spell it.
    let mac = format!("{}", MacAddr(mac));
    dirs(
        DeviceKind::Vif,
        dom,
        devid,
        vec![("handle", format!("{devid}")), ("mac", mac.clone())],
        vec![
            ("handle", format!("{devid}")),
            ("mac", mac),
            ("bridge", String::from(bridge)),
            ("type", String::from("vif")),
        ],
    )
}

/// What a vbd is attached as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VbdNodes<'a> {
    /// The virtual device number (`virtual-device`), also its devid.
    pub vdev: u32,
    /// The guest's name for it (`xvda`): the backend's `dev`.
    pub vdev_name: &'a str,
    /// The `phy:` target (`vda2`): the backend's `params`.
    pub target: &'a str,
    pub writable: bool,
    pub cdrom: bool,
}

/// A vbd's starting nodes.
pub fn vbd_dirs(dom: DomId, v: &VbdNodes<'_>) -> [Dir; 2] {
    let devtype = String::from(if v.cdrom { "cdrom" } else { "disk" });
    dirs(
        DeviceKind::Vbd,
        dom,
        v.vdev,
        vec![
            ("virtual-device", format!("{}", v.vdev)),
            ("device-type", devtype.clone()),
        ],
        vec![
            ("params", String::from(v.target)),
            ("mode", String::from(if v.writable { "w" } else { "r" })),
            ("type", String::from("phy")),
            ("dev", String::from(v.vdev_name)),
            ("device-type", devtype),
            ("removable", String::from(if v.cdrom { "1" } else { "0" })),
            ("bootable", String::from("1")),
        ],
    )
}

/// Reads a device id and domain back out of an event path under the hypervisor's watch
/// of `/local/domain/<dom>/device/<kind>/<devid>`: `(dom, kind, devid, rest)`.
pub fn parse_frontend_path(path: &str) -> Option<(DomId, DeviceKind, u32, &str)> {
    let rest = path.strip_prefix("/local/domain/")?;
    let (dom, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("device/")?;
    let (kind, rest) = rest.split_once('/')?;
    let kind = match kind {
        "vif" => DeviceKind::Vif,
        "vbd" => DeviceKind::Vbd,
        _ => return None,
    };
    let (devid, node) = rest.split_once('/').unwrap_or((rest, ""));
    let digits = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(dom) || !digits(devid) {
        return None;
    }
    Some((dom.parse().ok()?, kind, devid.parse().ok()?, node))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node<'a>(d: &'a Dir, name: &str) -> Option<&'a str> {
        d.nodes
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_vif_has_both_ends_pointing_at_each_other() {
        let [front, back] = vif_dirs(3, 0, [0x00, 0x16, 0x3e, 1, 2, 3], "xenbr0");
        assert_eq!(front.path, "/local/domain/3/device/vif/0");
        assert_eq!(back.path, "/local/domain/32754/backend/vif/3/0");
        assert_eq!(front.perms, ["n3", "r32754"]);
        assert_eq!(back.perms, ["n32754", "r3"]);
        assert_eq!(node(&front, "backend"), Some(back.path.as_str()));
        assert_eq!(node(&front, "backend-id"), Some("32754"));
        assert_eq!(node(&front, "state"), Some("1"));
        assert_eq!(node(&front, "mac"), Some("00:16:3e:01:02:03"));
        assert_eq!(node(&back, "frontend"), Some(front.path.as_str()));
        assert_eq!(node(&back, "frontend-id"), Some("3"));
        assert_eq!(node(&back, "bridge"), Some("xenbr0"));
        assert_eq!(node(&back, "state"), Some("1"));
        assert_eq!(node(&back, "online"), Some("1"));
    }

    #[test]
    fn a_vbd_names_its_target_and_virtual_device() {
        let v = VbdNodes {
            vdev: 51712,
            vdev_name: "xvda",
            target: "vda2",
            writable: false,
            cdrom: false,
        };
        let [front, back] = vbd_dirs(7, &v);
        assert_eq!(front.path, "/local/domain/7/device/vbd/51712");
        assert_eq!(node(&front, "virtual-device"), Some("51712"));
        assert_eq!(node(&front, "device-type"), Some("disk"));
        assert_eq!(node(&back, "params"), Some("vda2"));
        assert_eq!(node(&back, "mode"), Some("r"));
        assert_eq!(node(&back, "type"), Some("phy"));
        assert_eq!(node(&back, "dev"), Some("xvda"));
    }

    #[test]
    fn event_paths_parse_back() {
        assert_eq!(
            parse_frontend_path("/local/domain/3/device/vif/0/state"),
            Some((3, DeviceKind::Vif, 0, "state"))
        );
        assert_eq!(
            parse_frontend_path("/local/domain/12/device/vbd/51712"),
            Some((12, DeviceKind::Vbd, 51712, ""))
        );
        assert_eq!(
            parse_frontend_path("/local/domain/3/device/vbd/51712/queue-0/ring-ref"),
            Some((3, DeviceKind::Vbd, 51712, "queue-0/ring-ref"))
        );
        for bad in [
            "/local/domain/x/device/vif/0",
            "/local/domain/3/device/vkbd/0",
            "/local/domain/3/device/vif/",
            "/local/domain/3/devices/vif/0",
            "/local/domain/99999999999/device/vif/0",
            "/local/domain/3/device/vif/-1",
        ] {
            assert_eq!(parse_frontend_path(bad), None, "{bad}");
        }
    }
}
