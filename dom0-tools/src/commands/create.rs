//! `fv create`: from a [`DomainConfig`] to a running domain, in the order the `control`
//! test kernel checks on the hypervisor (`tests/kernels/src/bin/control.rs`):
//! `CreateDomain` → `populate_physmap` of the new domain, pfns in order → `BuildPv`
//! (kernel, ramdisk, command line) → the toolstack's xenstore keys → a `DeviceAttach`
//! per `vif` and `disk` entry → `UnpauseDomain`.
//! Anything failing after `CreateDomain` destroys the half-built domain, so a failed
//! create leaves nothing behind.

use std::fmt::Write as _;

use ferrovisor_abi::{
    domctl::{BuildPv, CreateDomain, DomctlCmd, DOMAIN_NAME_MAX},
    xen::{DomId, GuestHandle, XenPfn},
};

use super::{
    device::{self, PlannedDevice},
    domctl, domctl0, CommandError,
};
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
    /// The vifs, then the disks, in config order, attached in that order.
    pub devices: Vec<PlannedDevice>,
}

/// A version-4 UUID from 16 random bytes (RFC 4122 version and variant bits).
pub fn uuid_v4(mut random: [u8; 16]) -> [u8; 16] {
    random[6] = (random[6] & 0x0f) | 0x40;
    random[8] = (random[8] & 0x3f) | 0x80;
    random
}

/// The MAC of vif `index` when its spec names none and `macs` has no entry for it: a
/// locally derived one from the domain's UUID (random unless the config fixes it), so
/// that every vif of a domain differs.
fn derived_mac(uuid: &[u8; 16], index: usize) -> [u8; 6] {
    let mut seed = *uuid;
    seed[0] ^= index as u8;
    seed[1] = seed[1].wrapping_add(seed[5 + index % 8]);
    seed[2] ^= (index >> 8) as u8 ^ seed[13];
    device::random_mac(seed)
}

/// The plan for `config`; `uuid` is used when the config names none. `macs[i]` is vif
/// `i`'s MAC when its spec names none (random ones from the caller, or those the domain
/// had before a restart).
pub fn plan(config: &DomainConfig, uuid: [u8; 16], macs: &[[u8; 6]]) -> CreatePlan {
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
    let vifs = config.vifs.iter().enumerate().map(|(i, v)| {
        let mac = v
            .mac
            .or_else(|| macs.get(i).copied())
            .unwrap_or_else(|| derived_mac(&uuid, i));
        device::plan_vif(i, v, mac)
    });
    let disks = config.disks.iter().map(device::plan_disk);
    CreatePlan {
        config: config.clone(),
        uuid,
        create,
        populate_pages: config.memory_mib * 256,
        cmdline: config.cmdline.clone(),
        devices: vifs.chain(disks).collect(),
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
        for d in &self.devices {
            let what = match &d.request {
                Ok(r) if r.kind == ferrovisor_abi::domctl::DEVICE_VBD => {
                    format!("{} as virtual device {}", d.label, r.vdev)
                }
                Ok(_) => d.label.clone(),
                Err(why) => format!("{}: cannot be attached: {why}", d.label),
            };
            line("attach", what);
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
    // A device spec this host cannot serve stops the create before anything exists.
    if let Some((label, why)) = plan.devices.iter().find_map(|d| {
        d.request
            .as_ref()
            .err()
            .map(|e| (d.label.clone(), e.clone()))
    }) {
        return Err(CommandError::Device {
            context: plan.config.file.clone(),
            device: label,
            why,
            cleanup: String::new(),
        });
    }
    let (_, dom) = domctl(hv, DomctlCmd::CreateDomain, 0, &plan.create, &mut [])
        .map_err(|e| fail("creating it", e, String::new()))?;
    match build(hv, plan, dom, kernel, ramdisk) {
        Ok(()) => Ok(dom),
        Err(e) => {
            let cleanup = match domctl0(hv, DomctlCmd::DestroyDomain, dom) {
                Ok(()) => format!("; the half-built domain {dom} was destroyed"),
                Err(d) => format!(
                    "; destroying the half-built domain {dom} failed too ({d}): run 'fv destroy {dom}'"
                ),
            };
            Err(match e {
                BuildError::Stage(stage, e) => fail(stage, e, cleanup),
                BuildError::Device { device, why } => CommandError::Device {
                    context: plan.config.file.clone(),
                    device,
                    why,
                    cleanup,
                },
            })
        }
    }
}

/// Why a build stopped.
enum BuildError {
    /// A hypercall of a stage failed.
    Stage(&'static str, TransportError),
    /// A device was refused; `why` says what to do.
    Device { device: String, why: String },
}

impl From<(&'static str, TransportError)> for BuildError {
    fn from((stage, e): (&'static str, TransportError)) -> Self {
        BuildError::Stage(stage, e)
    }
}

fn build(
    hv: &mut dyn Hypervisor,
    plan: &CreatePlan,
    dom: DomId,
    kernel: &[u8],
    ramdisk: Option<&[u8]>,
) -> Result<(), BuildError> {
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
            return Err(BuildError::Stage(
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
    // The hypervisor writes both ends' xenstore nodes; the frontends find them when the
    // guest starts.
    for d in &plan.devices {
        device::attach(hv, dom, d).map_err(|why| BuildError::Device {
            device: d.label.clone(),
            why,
        })?;
    }
    Ok(domctl0(hv, DomctlCmd::UnpauseDomain, dom).map_err(|e| ("starting it", e))?)
}
