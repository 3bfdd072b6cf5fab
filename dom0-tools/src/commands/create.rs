//! `fv create`: from a [`DomainConfig`] to a running domain, in the order the `control`
//! test kernel checks on the hypervisor (`tests/kernels/src/bin/control.rs`):
//! `CreateDomain` → `populate_physmap` of the new domain, pfns in order → `BuildPv`
//! (kernel, ramdisk, command line) → the toolstack's xenstore keys → `UnpauseDomain`.
//! Anything failing after `CreateDomain` destroys the half-built domain, so a failed
//! create leaves nothing behind.

use std::fmt::Write as _;

use ferrovisor_abi::{
    domctl::{BuildPv, CreateDomain, DomctlCmd, DOMAIN_NAME_MAX},
    xen::{DomId, GuestHandle, XenPfn},
};

use super::{domctl, domctl0, CommandError};
use crate::{
    config::{uuid_string, DomainConfig},
    hypervisor::{handle_of, Buf, Hypervisor, TransportError},
};

/// Pfns per `populate_physmap` call.
pub const POPULATE_BATCH: usize = 512;

/// Everything `fv create` will ask for, decided before anything is asked.
#[derive(Clone, Debug)]
pub struct CreatePlan {
    pub config: DomainConfig,
    pub uuid: [u8; 16],
    pub create: CreateDomain,
    /// Pfns 0..`populate_pages` are populated before the build.
    pub populate_pages: u64,
    pub cmdline: String,
}

/// A version-4 UUID from 16 random bytes (RFC 4122 version and variant bits).
pub fn uuid_v4(mut random: [u8; 16]) -> [u8; 16] {
    random[6] = (random[6] & 0x0f) | 0x40;
    random[8] = (random[8] & 0x3f) | 0x80;
    random
}

/// The plan for `config`; `uuid` is used when the config names none.
pub fn plan(config: &DomainConfig, uuid: [u8; 16]) -> CreatePlan {
    let uuid = config.uuid.unwrap_or(uuid);
    let mut name = [0u8; DOMAIN_NAME_MAX];
    // The config parser bounds names to DOMAIN_NAME_MAX bytes.
    name[..config.name.len()].copy_from_slice(config.name.as_bytes());
    let create = CreateDomain {
        uuid,
        name,
        max_pages: config.maxmem_mib * 256,
        max_vcpus: config.vcpus,
        flags: 0,
    };
    CreatePlan {
        config: config.clone(),
        uuid,
        create,
        populate_pages: config.memory_mib * 256,
        cmdline: config.cmdline.clone(),
    }
}

impl CreatePlan {
    /// The xenstore keys the toolstack writes under `/local/domain/<id>` and `/vm/<uuid>`
    /// before the domain starts (memory in KiB, as Xen's toolstack writes it).
    pub fn xenstore_keys(&self, dom: DomId) -> Vec<(String, String)> {
        let home = format!("/local/domain/{dom}");
        let vm = format!("/vm/{}", uuid_string(&self.uuid));
        let c = &self.config;
        vec![
            (format!("{home}/name"), c.name.clone()),
            (format!("{home}/domid"), dom.to_string()),
            (format!("{home}/vm"), vm.clone()),
            (
                format!("{home}/memory/static-max"),
                (c.maxmem_mib * 1024).to_string(),
            ),
            (
                format!("{home}/memory/target"),
                (c.memory_mib * 1024).to_string(),
            ),
            (format!("{vm}/name"), c.name.clone()),
            (format!("{vm}/uuid"), uuid_string(&self.uuid)),
            (format!("{vm}/on_poweroff"), c.on_poweroff.name().into()),
            (format!("{vm}/on_reboot"), c.on_reboot.name().into()),
            (format!("{vm}/on_crash"), c.on_crash.name().into()),
        ]
    }

    /// What `fv create --dry-run` prints.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        let mut line = |k: &str, v: String| {
            let _ = writeln!(s, "{k:<16}{v}");
        };
        line("name", c.name.clone());
        line("uuid", uuid_string(&self.uuid));
        line(
            "memory",
            format!(
                "{} MiB ({} pages populated)",
                c.memory_mib, self.populate_pages
            ),
        );
        line(
            "maxmem",
            format!("{} MiB (max_pages {})", c.maxmem_mib, self.create.max_pages),
        );
        line("vcpus", c.vcpus.to_string());
        line("kernel", c.kernel.display().to_string());
        line(
            "ramdisk",
            c.ramdisk
                .as_ref()
                .map_or("(none)".into(), |r| r.display().to_string()),
        );
        line("cmdline", self.cmdline.clone());
        line("on_poweroff", c.on_poweroff.name().into());
        line("on_reboot", c.on_reboot.name().into());
        line("on_crash", c.on_crash.name().into());
        for (i, v) in c.vifs.iter().enumerate() {
            let mac = v.mac.map_or("(generated)".into(), |m| {
                crate::config::device::mac_string(&m)
            });
            let bridge = v.bridge.clone().unwrap_or_else(|| "xenbr0".into());
            line(
                &format!("vif {i}"),
                format!("mac {mac}, bridge {bridge} (not attached yet: no vif backend)"),
            );
        }
        for d in &c.disks {
            let access = match d.access {
                crate::config::device::Access::ReadOnly => "ro",
                crate::config::device::Access::ReadWrite => "rw",
            };
            line(
                &format!("disk {}", d.vdev),
                format!(
                    "{} {access}{} (not attached yet: no vbd backend)",
                    d.target.as_deref().unwrap_or("(empty)"),
                    if d.cdrom { " cdrom" } else { "" }
                ),
            );
        }
        s
    }
}

/// Runs `plan` with the kernel and ramdisk images already read; the new domain's id.
pub fn execute(
    hv: &mut dyn Hypervisor,
    plan: &CreatePlan,
    kernel: &[u8],
    ramdisk: Option<&[u8]>,
) -> Result<DomId, CommandError> {
    let name = plan.config.name.clone();
    let fail = |stage, source, cleanup: String| CommandError::Create {
        name: name.clone(),
        stage,
        source: Box::new(source),
        cleanup,
    };
    let (_, dom) = domctl(hv, DomctlCmd::CreateDomain, 0, &plan.create, &mut [])
        .map_err(|e| fail("creating it", e, String::new()))?;
    match build(hv, plan, dom, kernel, ramdisk) {
        Ok(()) => Ok(dom),
        Err((stage, e)) => {
            let cleanup = match domctl0(hv, DomctlCmd::DestroyDomain, dom) {
                Ok(()) => format!("; the half-built domain {dom} was destroyed"),
                Err(d) => format!(
                    "; destroying the half-built domain {dom} failed too ({d}): run 'fv destroy {dom}'"
                ),
            };
            Err(fail(stage, e, cleanup))
        }
    }
}

fn build(
    hv: &mut dyn Hypervisor,
    plan: &CreatePlan,
    dom: DomId,
    kernel: &[u8],
    ramdisk: Option<&[u8]>,
) -> Result<(), (&'static str, TransportError)> {
    let mut next: u64 = 0;
    let mut extents: Vec<XenPfn> = Vec::with_capacity(POPULATE_BATCH);
    while next < plan.populate_pages {
        let n = (plan.populate_pages - next).min(POPULATE_BATCH as u64);
        extents.clear();
        extents.extend(next..next + n);
        let done = hv
            .populate_physmap(dom, &mut extents)
            .map_err(|e| ("populating its memory", e))?;
        if done as u64 != n {
            return Err((
                "populating its memory",
                TransportError::Hypercall {
                    op: format!(
                        "memory_op populate_physmap of domain {dom} (pfn {next}: {done} of {n} pages)"
                    ),
                    errno: 12,
                },
            ));
        }
        next += n;
    }

    let cmdline = plan.cmdline.as_bytes();
    let ramdisk = ramdisk.unwrap_or(&[]);
    let b = BuildPv {
        kernel: handle_of(kernel),
        kernel_len: kernel.len() as u64,
        ramdisk: if ramdisk.is_empty() {
            GuestHandle::NULL
        } else {
            handle_of(ramdisk)
        },
        ramdisk_len: ramdisk.len() as u64,
        cmdline: if cmdline.is_empty() {
            GuestHandle::NULL
        } else {
            handle_of(cmdline)
        },
        cmdline_len: cmdline.len() as u32,
        flags: 0,
        store_mfn: 0,
        console_mfn: 0,
        store_port: 0,
        console_port: 0,
        entry: 0,
        start_info: 0,
    };
    let mut bufs = [Buf::In(kernel), Buf::In(ramdisk), Buf::In(cmdline)];
    domctl(hv, DomctlCmd::BuildPv, dom, &b, &mut bufs).map_err(|e| ("building it", e))?;

    for (path, value) in plan.xenstore_keys(dom) {
        hv.xenstore_write(&path, &value)
            .map_err(|e| ("writing its xenstore keys", e))?;
    }
    domctl0(hv, DomctlCmd::UnpauseDomain, dom).map_err(|e| ("starting it", e))
}
