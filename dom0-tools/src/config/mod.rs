//! Domain config files in xl.cfg(5) syntax, and `KEY=VALUE` overrides from the command
//! line, turned into a typed [`DomainConfig`].
//!
//! `syntax` reads settings and their positions; this module gives them meaning (types,
//! ranges, defaults, the kernel command line) and reports every problem with the file,
//! line and column it comes from. Unknown keys are warnings returned to the caller.

pub mod cmdline;
pub mod device;
pub mod syntax;
pub mod vdev;

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, path::PathBuf};

use serde::Serialize;
use thiserror::Error;

use self::{
    cmdline::CmdlineParts,
    device::{DeviceSpecError, DiskSpec, VifSpec},
    syntax::{Pos, Scalar, Setting, SyntaxError, Value},
};

/// Memory a guest gets when the config names none, in MiB (xm's default).
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Longest domain name (the hypervisor's limit, `DOMAIN_NAME_MAX`).
pub const NAME_MAX: usize = ferrovisor_abi::domctl::DOMAIN_NAME_MAX;

/// What the guest's own shutdown, reboot or crash leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Destroy,
    Restart,
    Preserve,
    RenameRestart,
    CoredumpDestroy,
    CoredumpRestart,
}

impl Action {
    const ALL: [(&'static str, Action); 6] = [
        ("destroy", Action::Destroy),
        ("restart", Action::Restart),
        ("preserve", Action::Preserve),
        ("rename-restart", Action::RenameRestart),
        ("coredump-destroy", Action::CoredumpDestroy),
        ("coredump-restart", Action::CoredumpRestart),
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|&(_, a)| a)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("destroy", |(n, _)| n)
    }
}

/// A domain as a config file describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DomainConfig {
    /// The config file as named on the command line (for messages).
    pub file: String,
    pub name: String,
    pub memory_mib: u64,
    /// At least `memory_mib`.
    pub maxmem_mib: u64,
    pub vcpus: u32,
    pub kernel: PathBuf,
    pub ramdisk: Option<PathBuf>,
    /// The kernel command line, assembled (see [`cmdline::CmdlineParts::build`]).
    pub cmdline: String,
    pub uuid: Option<[u8; 16]>,
    pub on_poweroff: Action,
    pub on_reboot: Action,
    pub on_crash: Action,
    pub vifs: Vec<VifSpec>,
    pub disks: Vec<DiskSpec>,
}

/// Why a setting's value is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum InvalidSetting {
    #[error("'{key}' must be {expected}, found {found}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error("'{key}' must be {range}, found {value}")]
    OutOfRange {
        key: &'static str,
        range: &'static str,
        value: u64,
    },
    #[error("bad domain name '{value}': 1 to 64 letters, digits, '-', '_' or '.'")]
    BadName { value: String },
    #[error("bad uuid '{value}': expected 32 hex digits as 8-4-4-4-12, like 3f2504e0-4f89-11d3-9a0c-0305e82c3301")]
    BadUuid { value: String },
    #[error("'{value}' is not an action for {key}: expected destroy, restart, preserve, rename-restart, coredump-destroy or coredump-restart")]
    BadAction { key: &'static str, value: String },
    #[error("'{key}' must be an IPv4 address like 10.0.0.2, found '{value}'")]
    BadAddress { key: &'static str, value: String },
    #[error("bad hostname '{value}': letters, digits, '-' and '.' only")]
    BadHostname { value: String },
    #[error("'dhcp' must be \"dhcp\" or \"off\", found '{value}'")]
    BadDhcp { value: String },
    #[error("'{key}' entry {index}: {error}")]
    Device {
        key: &'static str,
        index: usize,
        error: DeviceSpecError,
    },
    #[error("'nfs_root' needs 'nfs_server' too: add nfs_server = \"<address>\"")]
    NfsRootWithoutServer,
    #[error("'maxmem' ({maxmem} MiB) is below 'memory' ({memory} MiB): raise maxmem or drop it")]
    MaxmemBelowMemory { memory: u64, maxmem: u64 },
    #[error("only PV guests run on Ferrovisor: 'type' must be \"pv\", found '{value}'")]
    NotPv { value: String },
    #[error("'{key}' must not be empty")]
    Empty { key: &'static str },
}

/// A config that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the domain config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not in xl.cfg syntax.
    #[error("{file}:{pos}: {error}")]
    Syntax {
        file: String,
        pos: Pos,
        error: SyntaxError,
    },
    /// A setting has a value it cannot take.
    #[error("{file}:{pos}: {error}")]
    Invalid {
        file: String,
        pos: Pos,
        error: InvalidSetting,
    },
    /// A setting every domain needs is absent.
    #[error("{file}: no '{key}' setting: add {example}")]
    Missing {
        file: String,
        key: &'static str,
        example: &'static str,
    },
}

/// Something odd but not fatal, for the caller to print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub file: String,
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: warning: {}", self.file, self.pos, self.message)
    }
}

/// A parsed config and the warnings met on the way.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: DomainConfig,
    pub warnings: Vec<Warning>,
}

/// Keys with a meaning here; anything else is warned about and ignored.
const KNOWN_KEYS: &[&str] = &[
    "name",
    "type",
    "memory",
    "maxmem",
    "vcpus",
    "kernel",
    "ramdisk",
    "extra",
    "root",
    "cmdline",
    "uuid",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "vif",
    "disk",
    "ip",
    "netmask",
    "gateway",
    "hostname",
    "dhcp",
    "nfs_server",
    "nfs_root",
];

/// A setting and the source it came from (the file, or one override).
struct Sourced {
    file: String,
    setting: Setting,
}

/// Reads `path` and applies `overrides` (`KEY=VALUE`, in order, after the file).
pub fn load(path: &std::path::Path, overrides: &[String]) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string(), overrides)
}

/// Parses config `text` (named `file` in messages) with `overrides` applied after it.
/// Override number `n` (1-based) is named `override n` in messages.
pub fn parse(text: &str, file: &str, overrides: &[String]) -> Result<Loaded, ConfigError> {
    let mut all: Vec<Sourced> = syntax::parse(text)
        .map_err(|e| ConfigError::Syntax {
            file: file.into(),
            pos: e.pos,
            error: e.error,
        })?
        .into_iter()
        .map(|setting| Sourced {
            file: file.into(),
            setting,
        })
        .collect();
    for (i, arg) in overrides.iter().enumerate() {
        let name = format!("override {} '{}'", i + 1, arg);
        let setting = syntax::parse_override(arg).map_err(|e| ConfigError::Syntax {
            file: name.clone(),
            pos: e.pos,
            error: e.error,
        })?;
        all.push(Sourced {
            file: name,
            setting,
        });
    }
    Builder::new(file).build(all)
}

struct Builder {
    file: String,
    warnings: Vec<Warning>,
    /// The last setting of each key.
    map: BTreeMap<String, Sourced>,
}

impl Builder {
    fn new(file: &str) -> Self {
        Self {
            file: file.into(),
            warnings: Vec::new(),
            map: BTreeMap::new(),
        }
    }

    fn warn(&mut self, file: &str, pos: Pos, message: String) {
        self.warnings.push(Warning {
            file: file.into(),
            pos,
            message,
        });
    }

    fn invalid(s: &Sourced, error: InvalidSetting) -> ConfigError {
        ConfigError::Invalid {
            file: s.file.clone(),
            pos: s.setting.value_pos,
            error,
        }
    }

    fn string(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        let Some(s) = self.map.get(key) else {
            return Ok(None);
        };
        match &s.setting.value {
            Value::Scalar(Scalar::Str(v)) => Ok(Some(v.clone())),
            other => Err(Self::invalid(
                s,
                InvalidSetting::WrongType {
                    key,
                    expected: "a string in quotes",
                    found: other.kind(),
                },
            )),
        }
    }

    fn nonempty_string(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.string(key)? {
            Some(v) if v.is_empty() => {
                Err(Self::invalid(&self.map[key], InvalidSetting::Empty { key }))
            }
            v => Ok(v),
        }
    }

    fn number(
        &self,
        key: &'static str,
        expected: &'static str,
        range: (u64, u64),
        range_text: &'static str,
    ) -> Result<Option<u64>, ConfigError> {
        let Some(s) = self.map.get(key) else {
            return Ok(None);
        };
        match &s.setting.value {
            Value::Scalar(Scalar::Int(n)) if (range.0..=range.1).contains(n) => Ok(Some(*n)),
            Value::Scalar(Scalar::Int(n)) => Err(Self::invalid(
                s,
                InvalidSetting::OutOfRange {
                    key,
                    range: range_text,
                    value: *n,
                },
            )),
            other => Err(Self::invalid(
                s,
                InvalidSetting::WrongType {
                    key,
                    expected,
                    found: other.kind(),
                },
            )),
        }
    }

    fn address(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.string(key)? {
            Some(v) if v.parse::<Ipv4Addr>().is_err() => Err(Self::invalid(
                &self.map[key],
                InvalidSetting::BadAddress { key, value: v },
            )),
            v => Ok(v),
        }
    }

    fn action(&self, key: &'static str, default: Action) -> Result<Action, ConfigError> {
        match self.string(key)? {
            None => Ok(default),
            Some(v) => Action::parse(&v).ok_or_else(|| {
                Self::invalid(&self.map[key], InvalidSetting::BadAction { key, value: v })
            }),
        }
    }

    /// A list of strings, each parsed by `parse`; a single string counts as a list of one.
    fn devices<T>(
        &self,
        key: &'static str,
        parse: fn(&str) -> Result<T, DeviceSpecError>,
    ) -> Result<Vec<T>, ConfigError> {
        let Some(s) = self.map.get(key) else {
            return Ok(Vec::new());
        };
        let items: Vec<(Pos, &Scalar)> = match &s.setting.value {
            Value::List(items) => items.iter().map(|i| (i.pos, &i.value)).collect(),
            Value::Scalar(v) => vec![(s.setting.value_pos, v)],
        };
        let mut out = Vec::new();
        for (index, (pos, value)) in items.into_iter().enumerate() {
            let at = |error| ConfigError::Invalid {
                file: s.file.clone(),
                pos,
                error,
            };
            let Scalar::Str(text) = value else {
                return Err(at(InvalidSetting::WrongType {
                    key,
                    expected: "a list of strings in quotes",
                    found: "a number in the list",
                }));
            };
            out.push(parse(text).map_err(|error| {
                at(InvalidSetting::Device {
                    key,
                    index: index + 1,
                    error,
                })
            })?);
        }
        Ok(out)
    }

    fn build(mut self, all: Vec<Sourced>) -> Result<Loaded, ConfigError> {
        for s in all {
            let key = s.setting.key.clone();
            if !KNOWN_KEYS.contains(&key.as_str()) {
                let (file, pos) = (s.file.clone(), s.setting.key_pos);
                self.warn(&file, pos, format!("unknown setting '{key}' ignored"));
            }
            if let Some(prev) = self.map.get(&key) {
                // An override replacing a file setting is what overrides are for.
                if prev.file == s.file {
                    let line = prev.setting.key_pos.line;
                    let (file, pos) = (s.file.clone(), s.setting.key_pos);
                    self.warn(
                        &file,
                        pos,
                        format!("'{key}' set again (first at line {line}); this value wins"),
                    );
                }
            }
            self.map.insert(key, s);
        }

        if let Some(t) = self.string("type")? {
            if t != "pv" {
                return Err(Self::invalid(
                    &self.map["type"],
                    InvalidSetting::NotPv { value: t },
                ));
            }
        }
        let name = self.string("name")?.ok_or_else(|| ConfigError::Missing {
            file: self.file.clone(),
            key: "name",
            example: "name = \"guest1\"",
        })?;
        let name_ok = (1..=NAME_MAX).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err(Self::invalid(
                &self.map["name"],
                InvalidSetting::BadName { value: name },
            ));
        }
        // 2^44 MiB keeps the page count (x256) within u64 and is far beyond any host.
        let memory = self
            .number(
                "memory",
                "a number of MiB",
                (1, 1 << 44),
                "at least 1 (MiB)",
            )?
            .unwrap_or(DEFAULT_MEMORY_MIB);
        let maxmem = self
            .number(
                "maxmem",
                "a number of MiB",
                (1, 1 << 44),
                "at least 1 (MiB)",
            )?
            .unwrap_or(memory);
        if maxmem < memory {
            return Err(Self::invalid(
                &self.map["maxmem"],
                InvalidSetting::MaxmemBelowMemory { memory, maxmem },
            ));
        }
        let vcpus = self
            .number("vcpus", "a number", (1, 4096), "from 1 to 4096")?
            .unwrap_or(1);
        let kernel = self
            .nonempty_string("kernel")?
            .ok_or_else(|| ConfigError::Missing {
                file: self.file.clone(),
                key: "kernel",
                example: "kernel = \"/boot/vmlinuz\"",
            })?;
        let ramdisk = self.nonempty_string("ramdisk")?;
        let uuid = match self.string("uuid")? {
            None => None,
            Some(v) => Some(parse_uuid(&v).ok_or_else(|| {
                Self::invalid(&self.map["uuid"], InvalidSetting::BadUuid { value: v })
            })?),
        };
        let hostname = self.string("hostname")?;
        if let Some(h) = &hostname {
            let ok = !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
            if !ok {
                return Err(Self::invalid(
                    &self.map["hostname"],
                    InvalidSetting::BadHostname { value: h.clone() },
                ));
            }
        }
        let dhcp = self.string("dhcp")?;
        if let Some(d) = &dhcp {
            if d != "dhcp" && d != "off" {
                return Err(Self::invalid(
                    &self.map["dhcp"],
                    InvalidSetting::BadDhcp { value: d.clone() },
                ));
            }
        }
        let parts = CmdlineParts {
            cmdline: self.string("cmdline")?,
            root: self.string("root")?,
            extra: self.string("extra")?,
            ip: self.address("ip")?,
            netmask: self.address("netmask")?,
            gateway: self.address("gateway")?,
            hostname,
            dhcp,
            nfs_server: self.address("nfs_server")?,
            nfs_root: self.nonempty_string("nfs_root")?,
        };
        if parts.nfs_root.is_some() && parts.nfs_server.is_none() {
            return Err(Self::invalid(
                &self.map["nfs_root"],
                InvalidSetting::NfsRootWithoutServer,
            ));
        }
        if parts.cmdline.is_some() && parts.has_parts() {
            let s = &self.map["cmdline"];
            let (file, pos) = (s.file.clone(), s.setting.key_pos);
            self.warn(
                &file,
                pos,
                "'cmdline' is set, so 'root', 'extra' and the ip/nfs settings are ignored".into(),
            );
        }
        let config = DomainConfig {
            file: self.file.clone(),
            name,
            memory_mib: memory,
            maxmem_mib: maxmem,
            vcpus: u32::try_from(vcpus).unwrap_or(1),
            kernel: kernel.into(),
            ramdisk: ramdisk.map(Into::into),
            cmdline: parts.build(),
            uuid,
            on_poweroff: self.action("on_poweroff", Action::Destroy)?,
            on_reboot: self.action("on_reboot", Action::Restart)?,
            on_crash: self.action("on_crash", Action::Destroy)?,
            vifs: self.devices("vif", device::parse_vif)?,
            disks: self.devices("disk", device::parse_disk)?,
        };
        Ok(Loaded {
            config,
            warnings: self.warnings,
        })
    }
}

/// Parses `8-4-4-4-12` hex (or 32 hex digits without dashes).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = s.split('-').collect();
    let shape_ok =
        groups.len() == 1 && s.len() == 32 || groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]);
    if !shape_ok {
        return None;
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Formats a UUID as `8-4-4-4-12` lowercase hex.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests;
