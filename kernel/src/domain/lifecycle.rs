//! Domain control's heavier steps: building a created domain (`BuildPv`) and destroying
//! one (every frame, port and reference it held comes back).

use alloc::{collections::BTreeMap, format, string::String, vec::Vec};

use ferrovisor::mm::{
    frame_table::{DomId, Owner},
    Mfn,
};
use ferrovisor_abi::{domctl::BuildPv, errno::XenErrno, xen::xen::DOMID_XEN};

use super::{
    build::{self, BuildInput},
    Domain, DOM0, FRAME_TABLE,
};
use crate::{
    arch::x86_64::memory,
    arch::x86_64::{irq::IrqMutex, paging::GuestTables},
    hypercall::domctl::Privileged,
};

/// When each created domain was made (ns of hypervisor uptime), for `DomainInfo`'s
/// `start_time_ns` (`fv uptime`). dom0, built at boot, has no entry: it reads as 0.
/// The innermost lock: nothing is locked while it is held.
static STARTED: IrqMutex<BTreeMap<u16, u64>> = IrqMutex::new(BTreeMap::new());

/// Records that domain `id` was created at `now_ns`.
pub fn record_start(id: DomId, now_ns: u64) {
    STARTED.lock().insert(id.0, now_ns);
}

/// When domain `id` was created (0: at boot).
pub fn start_time_ns(id: DomId) -> u64 {
    STARTED.lock().get(&id.0).copied().unwrap_or(0)
}

/// `RenameDomain`: a new name for a domain other than dom0 (valid, and unique among the
/// live domains), also written to its xenstore `name` key.
pub fn rename(_: &Privileged, target: DomId, name: &[u8]) -> Result<(), XenErrno> {
    let name = ferrovisor::domain_control::check_name(name)?;
    if target == DOM0 {
        return Err(XenErrno::Einval);
    }
    super::with_domains(|doms| {
        if doms.iter().any(|d| d.name == name && d.id != target) {
            return Err(XenErrno::Eexist);
        }
        let d = doms.get_mut(target).ok_or(XenErrno::Esrch)?;
        log::info!("d{}: renamed \"{}\" to \"{name}\"", target.0, d.name);
        d.name = name.clone();
        if d.built {
            let path = format!("/local/domain/{}/name", target.0);
            let _ = crate::backend::xenstore::write(doms, &path, &name);
        }
        Ok(())
    })
}

/// The hypervisor's backends, as the service numbers their ports carry (the remote port
/// of a channel to `DOMID_XEN`).
pub const SERVICE_XENSTORE: u32 = 1;
pub const SERVICE_CONSOLE: u32 = 2;

/// Largest kernel file and ramdisk `BuildPv` copies in.
const MAX_KERNEL_FILE: u64 = 64 << 20;
const MAX_RAMDISK: u64 = 256 << 20;
/// Longest command line (`MAX_GUEST_CMDLINE`, `xen.h`).
const MAX_CMDLINE: u32 = 1024;

/// Copies `len` bytes from the caller's buffer at `va` into a new heap buffer.
fn copy_in(va: u64, len: u64, max: u64) -> Result<Vec<u8>, XenErrno> {
    if len > max {
        return Err(XenErrno::E2big);
    }
    let mut buf = Vec::new();
    buf.try_reserve_exact(len as usize)
        .map_err(|_| XenErrno::Enomem)?;
    buf.resize(len as usize, 0);
    const CHUNK: usize = 64 * 1024;
    for (i, chunk) in buf.chunks_mut(CHUNK).enumerate() {
        let at = va.wrapping_add((i * CHUNK) as u64);
        super::with_current(|d| d.read_guest(at, chunk))
            .ok_or(XenErrno::Esrch)?
            .map_err(|_| XenErrno::Efault)?;
    }
    Ok(buf)
}

/// `BuildPv`: loads the kernel (and ramdisk) the caller passes into `target`'s populated
/// memory, binds its xenstore and console ports to the hypervisor's backends, and
/// prepares vCPU 0. The domain must be created, not yet built, and paused.
pub fn build_pv(_: &Privileged, target: DomId, b: &mut BuildPv) -> Result<(), XenErrno> {
    if target == DOM0 || b.flags != 0 || b.cmdline_len > MAX_CMDLINE {
        return Err(XenErrno::Einval);
    }
    let kernel = copy_in(b.kernel.0, b.kernel_len, MAX_KERNEL_FILE)?;
    let ramdisk = if b.ramdisk.is_null() || b.ramdisk_len == 0 {
        None
    } else {
        Some(copy_in(b.ramdisk.0, b.ramdisk_len, MAX_RAMDISK)?)
    };
    let cmdline = if b.cmdline.is_null() {
        String::new()
    } else {
        let raw = copy_in(
            b.cmdline.0,
            u64::from(b.cmdline_len),
            u64::from(MAX_CMDLINE),
        )?;
        let text = raw.split(|&c| c == 0).next().unwrap_or(&[]);
        core::str::from_utf8(text)
            .map_err(|_| XenErrno::Einval)?
            .into()
    };
    // Building may decompress a large kernel: it runs with the domain out of the set, so
    // nothing else can see it half-built.
    let mut d = super::with_domains(|doms| {
        let d = doms.get(target).ok_or(XenErrno::Esrch)?;
        if d.built || d.pause_count == 0 {
            return Err(XenErrno::Einval);
        }
        if d.p2m.is_empty() {
            return Err(XenErrno::Enomem); // populate its memory first
        }
        doms.take_for_build(target).ok_or(XenErrno::Esrch)
    })?;
    // The build holds no lock and may take seconds (decompressing a kernel under TCG):
    // this CPU takes interrupts meanwhile (ticks, other CPUs' TLB-flush requests).
    let was_off = !crate::arch::x86_64::irq::enabled();
    if was_off {
        crate::arch::x86_64::irq::enable();
    }
    let result = build_into_domain(&mut d, &kernel, ramdisk.as_deref(), &cmdline, b);
    if was_off {
        crate::arch::x86_64::irq::disable();
    }
    if result.is_ok() {
        crate::backend::console::attach(target);
    }
    super::with_domains(|doms| {
        doms.insert(d);
        if result.is_ok() {
            crate::backend::xenstore::introduce(doms, target);
        }
    });
    result
}

fn build_into_domain(
    d: &mut Domain,
    kernel: &[u8],
    ramdisk: Option<&[u8]>,
    cmdline: &str,
    b: &mut BuildPv,
) -> Result<(), XenErrno> {
    check_unused(d)?;
    let store_port = d.evtchn.bind_backend(SERVICE_XENSTORE)?;
    let console_port = match d.evtchn.bind_backend(SERVICE_CONSOLE) {
        Ok(p) => p,
        Err(e) => {
            let _ = d.evtchn.close(store_port);
            return Err(e);
        }
    };
    let what = format!("d{}", d.id.0);
    let input = BuildInput {
        kernel,
        initrd: ramdisk,
        cmdline,
        flags: 0,
        store_evtchn: store_port,
        console_evtchn: console_port,
        what: &what,
        source: "passed to BuildPv",
    };
    let Some(shared_info) = d.shared_info_mfn() else {
        return Err(XenErrno::Esrch);
    };
    let mut built = match build::build_into(d.id, &d.p2m, shared_info, &input) {
        Ok(built) => built,
        Err(e) => {
            log::warn!("{e}");
            let _ = d.evtchn.close(store_port);
            let _ = d.evtchn.close(console_port);
            return Err(XenErrno::Einval);
        }
    };
    if let Some(shared) = d.shared_info.as_ref() {
        build::mask_vcpu0_events(shared);
    }
    let hold = |mfn| {
        build::hold_ring(d.id, mfn).map_err(|e| {
            log::warn!("{e}");
            XenErrno::Einval
        })
    };
    let store = hold(built.store_mfn)?;
    let console = match hold(built.console_mfn) {
        Ok(console) => console,
        Err(e) => {
            // Not recorded in the domain yet: `destroy` would never drop it.
            if let Some(ft) = FRAME_TABLE.lock().as_mut() {
                let _ = ft.put_writable(store);
            }
            return Err(e);
        }
    };
    d.start_vcpu0(&mut built);
    d.store_ring = Some((store, store_port));
    d.console_ring = Some((console, console_port));
    b.store_mfn = built.store_mfn.0;
    b.console_mfn = built.console_mfn.0;
    b.store_port = store_port;
    b.console_port = console_port;
    b.entry = built.regs.rip;
    b.start_info = built.regs.rsi;
    Ok(())
}

/// Every frame of a domain about to be built must be its own and untouched: no mapping,
/// type or reference (the privileged domain may have mapped them, which would let it
/// write the page tables the builder is about to validate).
fn check_unused(d: &Domain) -> Result<(), XenErrno> {
    let guard = FRAME_TABLE.lock();
    let ft = guard.as_ref().ok_or(XenErrno::Esrch)?;
    let clean = d.p2m.iter().all(|&m| {
        ft.info(m)
            .is_some_and(|i| i.owner == Owner::Domain(d.id) && i.is_unreferenced())
    });
    if clean {
        Ok(())
    } else {
        Err(XenErrno::Ebusy)
    }
}

/// `DestroyDomain`: takes the domain out of the set, closes its ports (peers in other
/// domains see their end closed), drops every reference its vCPUs held, and frees its
/// frames. A frame something else still references stays allocated to it until then.
pub fn destroy(_: &Privileged, target: DomId) -> Result<(), XenErrno> {
    if target == DOM0 {
        return Err(XenErrno::Einval);
    }
    // Off every CPU first; paused, no CPU picks it again.
    super::pause_sync(target).ok_or(XenErrno::Esrch)?;
    let mut d = super::with_domains(|doms| {
        // Its devices first, while it is still there to take back their rings and ports.
        crate::backend::devices::destroy_domain(doms, target);
        let mut d = doms.remove(target).ok_or(XenErrno::Esrch)?;
        // Its id stays taken (listed as dying) until its memory is released below.
        doms.add_dying(
            target,
            super::registry::Dying {
                name: d.name.clone(),
                uuid: d.uuid,
                frames: d.p2m.len() as u64,
            },
        );
        d.evtchn.reset_each(|closed| {
            let Some(peer) = closed.peer else {
                return;
            };
            if peer.dom == DOMID_XEN {
                return;
            }
            if let Some(p) = doms.get_mut(DomId(peer.dom)) {
                p.evtchn.peer_closed(peer.port, target.0, closed.port);
            }
        });
        crate::backend::xenstore::release(doms, target);
        crate::backend::console::detach(target);
        release_grants(doms, &mut d);
        Ok::<_, XenErrno>(d)
    })?;
    STARTED.lock().remove(&target.0);
    let (freed, kept) = release_memory(&mut d);
    super::with_domains(|doms| doms.set_dying_frames(target, kept as u64));
    log::info!(
        "d{}: destroyed \"{}\": {} frames freed{}",
        target.0,
        d.name,
        freed,
        if kept > 0 {
            format!(", {kept} still referenced elsewhere")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// The dying domain's grant mappings of other domains' frames go (their pins and frame
/// references), and its own grant frames are given back once nobody maps them.
fn release_grants(doms: &mut super::Domains, d: &mut Domain) {
    let unmapped = d
        .maptrack
        .release_all(&mut crate::hypercall::grant_table::Granters(doms));
    if let Some(ft) = FRAME_TABLE.lock().as_mut() {
        let mut mem = GuestTables::new();
        for u in &unmapped {
            let r = u.mapping.refs();
            let _ = ft.put_grant_refs(r.mfn, r.writable, &mut mem);
        }
    }
    let still = d.grants.begin_teardown();
    if !still.is_empty() {
        log::warn!(
            "d{}: {} of its grants are still mapped by other domains; their frames stay \
             allocated until unmapped",
            d.id.0,
            still.len()
        );
    }
    // The hypervisor reads the grant frames no more (the table goes with the domain, and
    // other domains' unmaps of its grants find no granter to update): their permanent
    // references go now, and frames still mapped elsewhere come back with the dying
    // domain's other frames once unmapped.
    let _ = d.grants.take_frames();
    if let Some(ft) = FRAME_TABLE.lock().as_mut() {
        for frame in d.grant_frames.drain(..) {
            let _ = ft.put_writable(frame);
        }
    }
}

/// Tries again to free the frames of destroyed domains that other domains still
/// referenced; a domain whose last frame came back is gone for good. Called on every
/// control operation (what lists domains, so `fv list` shows them leave).
pub fn reap_dying() {
    super::with_domains(|doms| {
        let ids: Vec<DomId> = doms.dying().map(|(id, _)| id).collect();
        for id in ids {
            let left = {
                let mut guard = FRAME_TABLE.lock();
                let Some(ft) = guard.as_mut() else {
                    return;
                };
                let mut mem = GuestTables::new();
                let released = ft.release_domain(id, &mut mem);
                for &mfn in &released.freed {
                    memory::m2p_set(mfn, memory::M2P_INVALID);
                    let _ = memory::free_frame(mfn);
                }
                released.still_referenced.len() as u64
            };
            if left == 0 {
                log::info!("d{}: its last frames came back; gone", id.0);
            }
            doms.set_dying_frames(id, left);
        }
    });
}

/// Drops the vCPUs' references (page-table roots, descriptor tables, registered
/// `vcpu_info` frames) and the shared-info page's, then releases every frame the domain
/// owns. Returns (frames freed, frames still referenced).
fn release_memory(d: &mut Domain) -> (usize, usize) {
    let mut guard = FRAME_TABLE.lock();
    let Some(ft) = guard.as_mut() else {
        return (0, 0);
    };
    let mut mem = GuestTables::new();
    for v in d.vcpus.iter_mut() {
        for l4 in [v.kernel_l4.take(), v.user_l4.take()].into_iter().flatten() {
            let _ = ft.put_l4_ref(l4, &mut mem);
        }
        for &f in v.gdt.frames().iter().chain(v.ldt_frames.iter()) {
            let _ = ft.put_page_and_type(f, &mut mem);
        }
        if let Some(frame) = v.vcpu_info_frame.take() {
            let _ = ft.put_writable(frame);
        }
    }
    let held = [
        d.shared_info.take(),
        d.store_ring.take().map(|(f, _)| f),
        d.console_ring.take().map(|(f, _)| f),
    ];
    for frame in held.into_iter().flatten() {
        let _ = ft.put_writable(frame);
    }
    let released = ft.release_domain(d.id, &mut mem);
    for &mfn in &released.freed {
        memory::m2p_set(mfn, memory::M2P_INVALID);
        let _ = memory::free_frame(mfn);
    }
    // No translation of a freed frame may survive its reuse.
    crate::arch::x86_64::paging::flush_tlb_local();
    d.p2m.clear();
    let kept: Vec<Mfn> = released.still_referenced;
    (released.freed.len(), kept.len())
}
