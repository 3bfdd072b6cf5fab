//! Device specifications inside a domain config: `vif` entries
//! (xl-network-configuration(5)) and `disk` entries (xl-disk-configuration(5)).
//! They are parsed and validated now; attaching them waits for the vif and vbd backends.

use std::net::Ipv4Addr;

use serde::Serialize;
use thiserror::Error;

/// What is wrong with one device spec (the caller adds where it is).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DeviceSpecError {
    #[error("'{item}' is not 'key=value' (vif settings are key=value pairs separated by commas)")]
    VifNotKeyValue { item: String },
    #[error("unknown vif setting '{key}' (known: mac, bridge, ip, script, backend, vifname, model, type, rate, mtu, gatewaydev, devid)")]
    UnknownVifKey { key: String },
    #[error("'{key}' is given twice in one device spec")]
    Duplicate { key: String },
    #[error("bad MAC address '{value}': expected six pairs of hex digits separated by ':', like 00:16:3e:12:34:56")]
    BadMac { value: String },
    #[error("MAC address '{value}' is a multicast address (the first byte is odd); a vif needs a unicast one")]
    MulticastMac { value: String },
    #[error("bad bridge name '{value}': 1 to 15 characters, no '/', ':' or blanks")]
    BadBridge { value: String },
    #[error(
        "bad IPv4 address '{value}' (vif ip takes addresses separated by spaces, like 10.0.0.2)"
    )]
    BadIp { value: String },
    #[error("bad mtu '{value}': expected a number from 68 to 65535")]
    BadMtu { value: String },
    #[error("bad vif type '{value}': expected 'vif' or 'ioemu'")]
    BadVifType { value: String },
    #[error("bad devid '{value}': expected a number")]
    BadDevid { value: String },
    #[error("'{value}' in a disk spec: {why}")]
    BadDiskParam { value: String, why: &'static str },
    #[error("unknown disk format '{value}' (known: raw, qcow, qcow2, vhd, qed, empty)")]
    BadFormat { value: String },
    #[error("bad access mode '{value}': expected 'r'/'ro' (read-only), 'w'/'rw' (read-write) or 'w!' (read-write, shared with other domains)")]
    BadAccess { value: String },
    #[error("bad virtual device '{value}': expected a name like xvda, xvdb1, hda or sdb")]
    BadVdev { value: String },
    #[error("the disk spec has no virtual device: give one, e.g. 'phy:/dev/vg/guest,xvda,w'")]
    NoVdev,
    #[error("the disk spec has no target: give the file or device, e.g. '/srv/guest.img,,xvda'")]
    NoTarget,
    #[error(
        "too many positional parameters in the disk spec: at most target, format, vdev, access"
    )]
    TooManyPositional,
}

/// A `vif` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VifSpec {
    pub mac: Option<[u8; 6]>,
    pub bridge: Option<String>,
    pub ip: Vec<Ipv4Addr>,
    pub script: Option<String>,
    pub backend: Option<String>,
    pub vifname: Option<String>,
    pub model: Option<String>,
    pub vif_type: Option<String>,
    pub rate: Option<String>,
    pub mtu: Option<u32>,
    pub gatewaydev: Option<String>,
    pub devid: Option<u32>,
}

/// Formats a MAC address as xl prints it.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_mac(value: &str) -> Result<[u8; 6], DeviceSpecError> {
    let bad = || DeviceSpecError::BadMac {
        value: value.into(),
    };
    let parts: Vec<&str> = value.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (slot, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *slot = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(DeviceSpecError::MulticastMac {
            value: value.into(),
        });
    }
    Ok(mac)
}

/// An interface name as Linux accepts it (`IFNAMSIZ` is 16 with the NUL).
fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// Parses one `vif` entry: `key=value` pairs separated by commas; `''` is a vif with
/// every default.
pub fn parse_vif(spec: &str) -> Result<VifSpec, DeviceSpecError> {
    let mut vif = VifSpec::default();
    let mut seen: Vec<String> = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            return Err(DeviceSpecError::VifNotKeyValue { item: item.into() });
        };
        let (key, value) = (key.trim(), value.trim());
        if seen.iter().any(|k| k == key) {
            return Err(DeviceSpecError::Duplicate { key: key.into() });
        }
        seen.push(key.into());
        let text = Some(value.to_string());
        match key {
            "mac" => vif.mac = Some(parse_mac(value)?),
            "bridge" => {
                if !valid_ifname(value) {
                    return Err(DeviceSpecError::BadBridge {
                        value: value.into(),
                    });
                }
                vif.bridge = text;
            }
            "ip" => {
                for addr in value.split_whitespace() {
                    vif.ip.push(
                        addr.parse()
                            .map_err(|_| DeviceSpecError::BadIp { value: addr.into() })?,
                    );
                }
            }
            "mtu" => match value.parse::<u32>() {
                Ok(m) if (68..=65535).contains(&m) => vif.mtu = Some(m),
                _ => {
                    return Err(DeviceSpecError::BadMtu {
                        value: value.into(),
                    })
                }
            },
            "type" => match value {
                "vif" | "ioemu" => vif.vif_type = text,
                _ => {
                    return Err(DeviceSpecError::BadVifType {
                        value: value.into(),
                    })
                }
            },
            "devid" => {
                vif.devid = Some(value.parse().map_err(|_| DeviceSpecError::BadDevid {
                    value: value.into(),
                })?)
            }
            "vifname" => {
                if !valid_ifname(value) {
                    return Err(DeviceSpecError::BadBridge {
                        value: value.into(),
                    });
                }
                vif.vifname = text;
            }
            "script" => vif.script = text,
            "backend" => vif.backend = text,
            "model" => vif.model = text,
            "rate" => vif.rate = text,
            "gatewaydev" => vif.gatewaydev = text,
            _ => return Err(DeviceSpecError::UnknownVifKey { key: key.into() }),
        }
    }
    Ok(vif)
}

/// A disk image format (`format=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Raw,
    Qcow,
    Qcow2,
    Vhd,
    Qed,
    Empty,
}

/// Read-only or read-write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    #[default]
    ReadWrite,
    ReadOnly,
    /// `w!`: writable even while another domain has the target writable (xl's way of
    /// saying the sharing is on purpose, e.g. a cluster filesystem).
    #[serde(rename = "readwrite-shared")]
    WriteShared,
}

impl Access {
    /// The spelling in a disk spec: `r`, `w`, `w!`.
    pub fn spec_name(self) -> &'static str {
        match self {
            Access::ReadOnly => "r",
            Access::ReadWrite => "w",
            Access::WriteShared => "w!",
        }
    }
}

/// A `disk` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiskSpec {
    /// The file or block device; none for an empty CD-ROM drive.
    pub target: Option<String>,
    pub format: DiskFormat,
    pub vdev: String,
    pub access: Access,
    pub cdrom: bool,
    /// `phy`, `qdisk` or `tap`, from `backendtype=` or a deprecated `phy:`-style prefix.
    pub backend_type: Option<String>,
    /// The backend domain.
    pub backend: Option<String>,
    pub script: Option<String>,
}

fn parse_format(value: &str) -> Result<DiskFormat, DeviceSpecError> {
    Ok(match value {
        "" | "raw" => DiskFormat::Raw,
        "qcow" => DiskFormat::Qcow,
        "qcow2" => DiskFormat::Qcow2,
        "vhd" => DiskFormat::Vhd,
        "qed" => DiskFormat::Qed,
        "empty" => DiskFormat::Empty,
        _ => {
            return Err(DeviceSpecError::BadFormat {
                value: value.into(),
            })
        }
    })
}

fn parse_access(value: &str) -> Result<Access, DeviceSpecError> {
    match value {
        "" | "w" | "rw" => Ok(Access::ReadWrite),
        "r" | "ro" => Ok(Access::ReadOnly),
        "w!" | "rw!" => Ok(Access::WriteShared),
        _ => Err(DeviceSpecError::BadAccess {
            value: value.into(),
        }),
    }
}

/// A name with a virtual device number ([`super::vdev::vdev_number`]).
fn valid_vdev(v: &str) -> bool {
    super::vdev::vdev_number(v).is_some()
}

/// The deprecated `prefix:` forms of a target and what they imply.
fn split_legacy_prefix(target: &str) -> Option<(&'static str, Option<DiskFormat>, &str)> {
    const PREFIXES: &[(&str, &str, Option<DiskFormat>)] = &[
        ("phy:", "phy", None),
        ("file:", "qdisk", Some(DiskFormat::Raw)),
        ("tap:aio:", "tap", Some(DiskFormat::Raw)),
        ("tap:qcow:", "tap", Some(DiskFormat::Qcow)),
        ("tap:qcow2:", "tap", Some(DiskFormat::Qcow2)),
        ("tap:vhd:", "tap", Some(DiskFormat::Vhd)),
        ("aio:", "tap", Some(DiskFormat::Raw)),
        ("raw:", "qdisk", Some(DiskFormat::Raw)),
        ("qcow:", "qdisk", Some(DiskFormat::Qcow)),
        ("qcow2:", "qdisk", Some(DiskFormat::Qcow2)),
        ("vhd:", "qdisk", Some(DiskFormat::Vhd)),
    ];
    PREFIXES
        .iter()
        .find_map(|&(p, backend, format)| target.strip_prefix(p).map(|t| (backend, format, t)))
}

impl DiskSpec {
    /// The spec in its positional form (`phy:vda2,xvda,w`), for messages.
    pub fn spec_string(&self) -> String {
        let prefix = match self.backend_type.as_deref() {
            Some("phy") => "phy:",
            _ => "",
        };
        let mut s = format!(
            "{prefix}{},{},{}",
            self.target.as_deref().unwrap_or(""),
            self.vdev,
            self.access.spec_name()
        );
        if self.cdrom {
            s.push_str(",cdrom");
        }
        s
    }
}

impl VifSpec {
    /// `mac=…, bridge=…` as messages show a vif (the bridge it gets when none is named).
    pub fn describe(&self, mac: &[u8; 6]) -> String {
        format!(
            "mac={}, bridge={}",
            mac_string(mac),
            self.bridge.as_deref().unwrap_or(DEFAULT_BRIDGE)
        )
    }
}

/// The switch a vif joins when its spec names none (xl's default).
pub const DEFAULT_BRIDGE: &str = "xenbr0";

/// Parses one `disk` entry: positional `target, format, vdev, access`, `key=value`
/// parameters, the `cdrom` flag, and the deprecated forms (`phy:/dev/vg/g,xvda,w`,
/// where the prefix stands for the format, and `hdc:cdrom`). `target=` must come last:
/// the rest of the spec, commas included, is the target.
pub fn parse_disk(spec: &str) -> Result<DiskSpec, DeviceSpecError> {
    let mut target: Option<String> = None;
    let mut format: Option<DiskFormat> = None;
    let mut vdev: Option<String> = None;
    let mut access: Option<Access> = None;
    let mut cdrom = false;
    let mut backend_type = None;
    let mut backend = None;
    let mut script = None;
    // Positional slots still open: 0 target, 1 format, 2 vdev, 3 access.
    let mut next_positional = 0usize;

    let (params, explicit_target) = match spec.find("target=") {
        Some(i) if i == 0 || spec[..i].trim_end().ends_with(',') => {
            (&spec[..i], Some(spec[i + "target=".len()..].to_string()))
        }
        _ => (spec, None),
    };
    let dup = |k: &str| DeviceSpecError::Duplicate { key: k.into() };
    for raw in params.split(',') {
        let item = raw.trim();
        if let Some((key, value)) = item.split_once('=') {
            let value = value.trim();
            match key.trim() {
                "format" => {
                    if format.replace(parse_format(value)?).is_some() {
                        return Err(dup("format"));
                    }
                }
                "vdev" => {
                    if vdev.replace(value.into()).is_some() {
                        return Err(dup("vdev"));
                    }
                }
                "access" => {
                    if access.replace(parse_access(value)?).is_some() {
                        return Err(dup("access"));
                    }
                }
                "devtype" => match value {
                    "cdrom" => cdrom = true,
                    "disk" => {}
                    _ => {
                        return Err(DeviceSpecError::BadDiskParam {
                            value: item.into(),
                            why: "devtype is 'disk' or 'cdrom'",
                        })
                    }
                },
                "backendtype" => match value {
                    "phy" | "qdisk" | "tap" | "standalone" => backend_type = Some(value.into()),
                    _ => {
                        return Err(DeviceSpecError::BadDiskParam {
                            value: item.into(),
                            why: "backendtype is phy, qdisk, tap or standalone",
                        })
                    }
                },
                "backend" => backend = Some(value.to_string()),
                "script" => script = Some(value.to_string()),
                _ => {
                    return Err(DeviceSpecError::BadDiskParam {
                        value: item.into(),
                        why: "unknown parameter (known: target, format, vdev, access, devtype, backendtype, backend, script)",
                    })
                }
            }
            continue;
        }
        match item {
            "cdrom" => {
                cdrom = true;
                continue;
            }
            "" if next_positional < 4 => {
                // An empty positional keeps its default: '/dev/vg/g,,hda'.
                next_positional += 1;
                continue;
            }
            "" => continue,
            _ => {}
        }
        match next_positional {
            0 => {
                let t = match split_legacy_prefix(item) {
                    Some((b, f, rest)) => {
                        backend_type = Some(b.to_string());
                        if let Some(f) = f {
                            format = Some(f);
                        }
                        // The prefix stood for the format: the next positional is vdev.
                        next_positional = 1;
                        rest
                    }
                    None => item,
                };
                target = Some(t.to_string());
            }
            1 => format = Some(parse_format(item)?),
            2 => {
                // Deprecated 'hdc:cdrom'.
                match item.split_once(':') {
                    Some((v, "cdrom")) => {
                        cdrom = true;
                        vdev = Some(v.into());
                    }
                    Some(_) => {
                        return Err(DeviceSpecError::BadVdev { value: item.into() });
                    }
                    None => {
                        if vdev.replace(item.into()).is_some() {
                            return Err(dup("vdev"));
                        }
                    }
                }
            }
            3 => {
                if access.replace(parse_access(item)?).is_some() {
                    return Err(dup("access"));
                }
            }
            _ => return Err(DeviceSpecError::TooManyPositional),
        }
        next_positional += 1;
    }
    if let Some(t) = explicit_target {
        if target.replace(t).is_some() {
            return Err(dup("target"));
        }
    }
    let vdev = vdev.ok_or(DeviceSpecError::NoVdev)?;
    if !valid_vdev(&vdev) {
        return Err(DeviceSpecError::BadVdev { value: vdev });
    }
    let target = target.filter(|t| !t.is_empty());
    if target.is_none() && !cdrom {
        return Err(DeviceSpecError::NoTarget);
    }
    let default_access = if cdrom {
        Access::ReadOnly
    } else {
        Access::ReadWrite
    };
    Ok(DiskSpec {
        format: format.unwrap_or(if target.is_none() {
            DiskFormat::Empty
        } else {
            DiskFormat::Raw
        }),
        target,
        vdev,
        access: access.unwrap_or(default_access),
        cdrom,
        backend_type,
        backend,
        script,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vifs() {
        let v = parse_vif("mac=00:16:3e:12:34:56, bridge=xenbr0").unwrap();
        assert_eq!(v.mac, Some([0x00, 0x16, 0x3e, 0x12, 0x34, 0x56]));
        assert_eq!(v.bridge.as_deref(), Some("xenbr0"));
        assert_eq!(mac_string(&v.mac.unwrap()), "00:16:3e:12:34:56");
        assert_eq!(parse_vif("").unwrap(), VifSpec::default());
        let v = parse_vif("ip=10.0.0.2 10.0.0.3,mtu=9000,type=vif,devid=1").unwrap();
        assert_eq!(v.ip.len(), 2);
        assert_eq!((v.mtu, v.devid), (Some(9000), Some(1)));
    }

    #[test]
    fn bad_vifs() {
        let cases = [
            ("mac", "'mac' is not 'key=value'"),
            ("colour=red", "unknown vif setting 'colour'"),
            ("mac=00:16:3e:12:34", "bad MAC address '00:16:3e:12:34'"),
            ("mac=00:16:3e:12:34:zz", "bad MAC address"),
            ("mac=01:16:3e:12:34:56", "is a multicast address"),
            ("bridge=a/b", "bad bridge name 'a/b'"),
            ("bridge=thisnameiswaytoolong", "bad bridge name"),
            ("ip=10.0.0.300", "bad IPv4 address '10.0.0.300'"),
            ("mtu=12", "bad mtu '12'"),
            ("type=tap", "bad vif type 'tap'"),
            ("devid=x", "bad devid 'x'"),
            ("bridge=a,bridge=b", "'bridge' is given twice"),
        ];
        for (spec, msg) in cases {
            let e = parse_vif(spec).unwrap_err().to_string();
            assert!(e.contains(msg), "{spec}: {e}");
        }
    }

    #[test]
    fn disks() {
        let d = parse_disk("phy:/dev/vg/guest,xvda,w").unwrap();
        assert_eq!(d.target.as_deref(), Some("/dev/vg/guest"));
        assert_eq!(d.vdev, "xvda");
        assert_eq!(d.access, Access::ReadWrite);
        assert_eq!(d.backend_type.as_deref(), Some("phy"));

        // The equivalent spellings of xl-disk-configuration(5).
        let a = parse_disk("/dev/vg/guest-volume,,hda").unwrap();
        let b = parse_disk("/dev/vg/guest-volume,raw,hda,rw").unwrap();
        let c = parse_disk("format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume").unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
        let e = parse_disk("raw:/dev/vg/guest-volume,hda,w").unwrap();
        assert_eq!((e.target, e.vdev, e.format), (b.target, b.vdev, b.format));

        let cd1 = parse_disk("/root/image.iso,,hdc,cdrom").unwrap();
        let cd2 = parse_disk("/root/image.iso,raw,hdc,devtype=cdrom").unwrap();
        let cd3 =
            parse_disk("format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso")
                .unwrap();
        for cd in [&cd1, &cd2, &cd3] {
            assert!(cd.cdrom);
            assert_eq!(cd.access, Access::ReadOnly);
            assert_eq!(cd.vdev, "hdc");
        }
        let t = parse_disk("vdev=xvdb, target=/srv/a,b.img").unwrap();
        assert_eq!(t.target.as_deref(), Some("/srv/a,b.img"));
        let ro = parse_disk("file:/srv/g.img,xvdb1,r").unwrap();
        assert_eq!((ro.access, ro.vdev.as_str()), (Access::ReadOnly, "xvdb1"));
        let shared = parse_disk("phy:vda2,xvda,w!").unwrap();
        assert_eq!(shared.access, Access::WriteShared);
        assert_eq!(shared.spec_string(), "phy:vda2,xvda,w!");
        let keyed = parse_disk("vdev=xvdb, access=ro, devtype=cdrom, target=vdb").unwrap();
        assert_eq!(keyed.spec_string(), "vdb,xvdb,r,cdrom");
        assert!(parse_disk("phy:vda,xvdq,w").is_ok());
        assert!(parse_disk("phy:vda,xvda300,w").is_err());
        let empty_cd = parse_disk(",,hdc,cdrom").unwrap();
        assert_eq!(
            (empty_cd.target, empty_cd.format),
            (None, DiskFormat::Empty)
        );
    }

    #[test]
    fn bad_disks() {
        let cases = [
            ("/srv/g.img", "no virtual device"),
            ("/srv/g.img,,xvda,x", "bad access mode 'x'"),
            ("/srv/g.img,vmdk,xvda", "unknown disk format 'vmdk'"),
            ("/srv/g.img,,floppy0", "bad virtual device 'floppy0'"),
            ("vdev=xvda", "no target"),
            ("/a,raw,xvda,w,extra", "too many positional"),
            ("/a,,xvda,colour=red", "unknown parameter"),
            ("/a,,xvda,devtype=tape", "devtype is 'disk' or 'cdrom'"),
            ("/a,,xvda,vdev=xvdb", "'vdev' is given twice"),
        ];
        for (spec, msg) in cases {
            let e = parse_disk(spec).unwrap_err().to_string();
            assert!(e.contains(msg), "{spec}: {e}");
        }
    }
}
