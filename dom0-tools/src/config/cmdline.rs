//! The guest kernel's command line from a config: xl's `root`/`extra`/`cmdline`, and
//! xm's network-boot keys (`ip`, `netmask`, `gateway`, `hostname`, `dhcp`, `nfs_server`,
//! `nfs_root`) turned into the kernel's `ip=` and `nfsroot=` options
//! (Linux `Documentation/admin-guide/nfs/nfsroot.rst`).

/// The parts that make up a command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CmdlineParts {
    pub cmdline: Option<String>,
    pub root: Option<String>,
    pub extra: Option<String>,
    pub ip: Option<String>,
    pub netmask: Option<String>,
    pub gateway: Option<String>,
    pub hostname: Option<String>,
    /// xm's `dhcp` (`"dhcp"` or `"off"`, the default).
    pub dhcp: Option<String>,
    pub nfs_server: Option<String>,
    pub nfs_root: Option<String>,
}

impl CmdlineParts {
    /// Whether any key besides `cmdline` is set (they are ignored when `cmdline` is).
    pub fn has_parts(&self) -> bool {
        self.root.is_some()
            || self.extra.is_some()
            || self.ip.is_some()
            || self.nfs_root.is_some()
            || self.dhcp.as_deref().is_some_and(|d| d != "off")
    }

    /// The kernel's `ip=` option: `ip=<client>:<server>:<gateway>:<netmask>:<hostname>:
    /// <device>:<autoconf>`, as xm built it (device `eth0`; autoconf `off` unless
    /// `dhcp = "dhcp"`). None when there is no address and no DHCP.
    pub fn ip_option(&self) -> Option<String> {
        let dhcp = self.dhcp.as_deref().unwrap_or("off");
        if self.ip.is_none() && dhcp == "off" {
            return None;
        }
        let f = |v: &Option<String>| v.clone().unwrap_or_default();
        Some(format!(
            "ip={}:{}:{}:{}:{}:eth0:{}",
            f(&self.ip),
            f(&self.nfs_server),
            f(&self.gateway),
            f(&self.netmask),
            f(&self.hostname),
            dhcp
        ))
    }

    /// The command line: `cmdline` alone when given (xl ignores `root` and `extra` then);
    /// otherwise `ip=…`, `root=…` (`/dev/nfs` when booting from NFS without a root),
    /// `nfsroot=<server>:<path>` and `extra`, in xm's order.
    pub fn build(&self) -> String {
        if let Some(c) = &self.cmdline {
            return c.clone();
        }
        let mut words: Vec<String> = Vec::new();
        if let Some(ip) = self.ip_option() {
            words.push(ip);
        }
        match (&self.root, &self.nfs_root) {
            (Some(root), _) => words.push(format!("root={root}")),
            (None, Some(_)) => words.push("root=/dev/nfs".into()),
            (None, None) => {}
        }
        if let (Some(server), Some(path)) = (&self.nfs_server, &self.nfs_root) {
            words.push(format!("nfsroot={server}:{path}"));
        }
        if let Some(extra) = &self.extra {
            if !extra.is_empty() {
                words.push(extra.clone());
            }
        }
        words.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.into())
    }

    #[test]
    fn root_and_extra() {
        let p = CmdlineParts {
            root: s("/dev/xvda1 ro"),
            extra: s("console=hvc0"),
            ..Default::default()
        };
        assert_eq!(p.build(), "root=/dev/xvda1 ro console=hvc0");
        assert_eq!(CmdlineParts::default().build(), "");
    }

    #[test]
    fn cmdline_wins() {
        let p = CmdlineParts {
            cmdline: s("root=/dev/xvda quiet"),
            root: s("/dev/sda"),
            ..Default::default()
        };
        assert_eq!(p.build(), "root=/dev/xvda quiet");
        assert!(p.has_parts());
    }

    #[test]
    fn nfs_boot_as_xm() {
        let p = CmdlineParts {
            ip: s("10.0.0.2"),
            netmask: s("255.255.255.0"),
            gateway: s("10.0.0.1"),
            hostname: s("web1"),
            nfs_server: s("10.0.0.9"),
            nfs_root: s("/export/web1"),
            extra: s("console=hvc0"),
            ..Default::default()
        };
        assert_eq!(
            p.build(),
            "ip=10.0.0.2:10.0.0.9:10.0.0.1:255.255.255.0:web1:eth0:off root=/dev/nfs \
             nfsroot=10.0.0.9:/export/web1 console=hvc0"
        );
        let dhcp = CmdlineParts {
            dhcp: s("dhcp"),
            ..Default::default()
        };
        assert_eq!(dhcp.build(), "ip=:::::eth0:dhcp");
    }
}
