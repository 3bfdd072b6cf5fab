//! Ferrovisor's own control interface (`ferrovisor_abi::domctl`): `domctl` and `sysctl`
//! for the privileged domain's test kernels.

use ferrovisor_abi::{
    domctl::{Domctl, DomctlCmd, Sysctl, SysctlCmd},
    xen::{hypercall::Hypercall, DomId},
};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::hypercall;

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
