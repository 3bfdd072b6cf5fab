//! Ferrovisor's own control interface (`ferrovisor_abi::domctl`): `domctl` and `sysctl`
//! for the privileged domain's test kernels.

use ferrovisor_abi::{
    domctl::{
        BuildPv, CreateDomain, DomainInfo, Domctl, DomctlCmd, PhysInfo, Sysctl, SysctlCmd,
        DOMAIN_NAME_MAX,
    },
    xen::{
        event_channel::{EvtchnAllocUnbound, EvtchnOp},
        grant_table::GnttabOp,
        hypercall::Hypercall,
        memory::{MemoryOp, XenMemoryReservation},
        xen::{StartInfo, DOMID_SELF},
        DomId, GuestHandle,
    },
};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

use crate::{events, hypercall};

/// Runs a `domctl` request as it is (the caller may corrupt any field); returns the
/// hypercall's result.
pub fn raw_domctl(req: &mut Domctl) -> i64 {
    // SAFETY: the hypervisor reads and writes the 256-byte request on this stack.
    unsafe { hypercall::hypercall1(Hypercall::Domctl.raw(), (req as *mut Domctl) as u64) }
}

/// Runs a `sysctl` request as it is.
pub fn raw_sysctl(req: &mut Sysctl) -> i64 {
    // SAFETY: as in `raw_domctl`.
    unsafe { hypercall::hypercall1(Hypercall::Sysctl.raw(), (req as *mut Sysctl) as u64) }
}

/// `domctl(cmd, dom, payload)`: the returned payload and the header's domain, or the
/// error.
pub fn domctl<T: FromBytes + IntoBytes + Immutable>(
    cmd: DomctlCmd,
    dom: DomId,
    payload: &T,
) -> Result<(T, DomId), i64> {
    let mut req = Domctl::new(cmd, dom, payload);
    match raw_domctl(&mut req) {
        0 => Ok((req.payload(), req.domain)),
        e => Err(e),
    }
}

/// A `domctl` without payload.
pub fn domctl0(cmd: DomctlCmd, dom: DomId) -> i64 {
    let mut req = Domctl::new(cmd, dom, &[0u8; 0]);
    raw_domctl(&mut req)
}

/// `sysctl(cmd, payload)`: the returned payload, or the error.
pub fn sysctl<T: FromBytes + IntoBytes + Immutable>(cmd: SysctlCmd, payload: &T) -> Result<T, i64> {
    let mut req = Sysctl::new(cmd, payload);
    match raw_sysctl(&mut req) {
        0 => Ok(req.payload()),
        e => Err(e),
    }
}

pub fn phys_info() -> Result<PhysInfo, &'static str> {
    sysctl(SysctlCmd::PhysInfo, &PhysInfo::new_zeroed()).map_err(|_| "sysctl PhysInfo failed")
}

pub fn domain_info(dom: DomId) -> Result<DomainInfo, &'static str> {
    domctl(DomctlCmd::GetDomainInfo, dom, &DomainInfo::new_zeroed())
        .map(|(i, _)| i)
        .map_err(|_| "GetDomainInfo failed")
}

/// `CreateDomain` with one vCPU: the new domain's id, or the error.
pub fn create(name: &str, max_pages: u64) -> Result<DomId, i64> {
    create_with_vcpus(name, max_pages, 1)
}

/// `CreateDomain` with `max_vcpus` vCPUs: the new domain's id, or the error.
pub fn create_with_vcpus(name: &str, max_pages: u64, max_vcpus: u32) -> Result<DomId, i64> {
    let mut c = CreateDomain {
        uuid: [0x42; 16],
        name: [0; DOMAIN_NAME_MAX],
        max_pages,
        max_vcpus,
        flags: 0,
    };
    let n = name.len().min(DOMAIN_NAME_MAX);
    c.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    domctl(DomctlCmd::CreateDomain, 0, &c).map(|(_, id)| id)
}

/// A domctl without payload that must succeed.
pub fn expect0(cmd: DomctlCmd, dom: DomId, what: &'static str) -> Result<(), &'static str> {
    match domctl0(cmd, dom) {
        0 => Ok(()),
        _ => Err(what),
    }
}

/// `populate_physmap` of another domain, pfn by pfn in batches; the machine frames of
/// the first `mfns.len()` pfns are kept in `mfns`.
pub fn populate(dom: DomId, pages: u64, mfns: &mut [u64]) -> Result<(), &'static str> {
    let mut list = [0u64; 256];
    let mut next = 0;
    while next < pages {
        let n = (pages - next).min(list.len() as u64);
        for (i, slot) in list.iter_mut().take(n as usize).enumerate() {
            *slot = next + i as u64;
        }
        let mut res = XenMemoryReservation {
            extent_start: GuestHandle(list.as_mut_ptr() as u64),
            nr_extents: n,
            extent_order: 0,
            mem_flags: 0,
            domid: dom,
            _cpad0: [0; 6],
        };
        // SAFETY: the reservation and its list are on this stack.
        let r = unsafe { hypercall::memory_op(MemoryOp::PopulatePhysmap, (&raw mut res).cast()) };
        crate::ensure!(r == n as i64, "populate_physmap of d{dom} returned {r}");
        for (i, &mfn) in list.iter().take(n as usize).enumerate() {
            if let Some(slot) = mfns.get_mut((next + i as u64) as usize) {
                *slot = mfn;
            }
        }
        next += n;
    }
    Ok(())
}

/// Builds `dom` from this kernel's initrd module (another test kernel).
pub fn build_from_module(
    si: &StartInfo,
    dom: DomId,
    cmdline: &[u8],
) -> Result<BuildPv, &'static str> {
    crate::ensure!(si.mod_start != 0 && si.mod_len != 0, "no initrd module");
    let b = BuildPv {
        kernel: GuestHandle(si.mod_start),
        kernel_len: si.mod_len,
        ramdisk: GuestHandle(0),
        ramdisk_len: 0,
        cmdline: GuestHandle(cmdline.as_ptr() as u64),
        cmdline_len: cmdline.len() as u32,
        flags: 0,
        store_mfn: 0,
        console_mfn: 0,
        store_port: 0,
        console_port: 0,
        entry: 0,
        start_info: 0,
    };
    domctl(DomctlCmd::BuildPv, dom, &b)
        .map(|(b, _)| b)
        .map_err(|_| "BuildPv failed")
}

/// A port of this domain that `dom` may bind (masked here: the caller polls it).
pub fn alloc_unbound(dom: DomId) -> Result<u32, &'static str> {
    let mut a = EvtchnAllocUnbound {
        dom: DOMID_SELF,
        remote_dom: dom,
        port: 0,
    };
    // SAFETY: the hypervisor reads and writes the structure on this stack.
    let r = unsafe { events::event_channel_op(EvtchnOp::AllocUnbound, (&raw mut a).cast()) };
    crate::ensure!(r == 0, "alloc_unbound for d{dom} returned {r}");
    events::set_masked(a.port, true);
    Ok(a.port)
}

/// One `grant_table_op` on one argument structure.
pub fn grant_op<T>(op: GnttabOp, arg: &mut T) -> i64 {
    // SAFETY: the hypervisor reads and writes the one entry on this stack.
    unsafe {
        hypercall::hypercall3(
            Hypercall::GrantTableOp.raw(),
            u64::from(op.raw()),
            (arg as *mut T) as u64,
            1,
        )
    }
}
