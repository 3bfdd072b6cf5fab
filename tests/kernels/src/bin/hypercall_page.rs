//! `hypercall_page`: a kernel whose HYPERCALL_PAGE note asks the domain builder for a
//! hypercall page, and which makes every hypercall (console output and the verdict's
//! shutdown included) with `call hypercall_page + nr * 32`, as older Linux kernels did.
#![cfg_attr(target_os = "none", no_std, no_main)]

use ferrovisor_abi::{
    errno::XenErrno,
    xen::{version::XenVersionOp, xen::StartInfo},
};

pvrt::test_kernel!(name: "hypercall_page", main: test_main, hypercall_page);

/// An unassigned hypercall number: its stub must still answer `-ENOSYS`.
const UNASSIGNED_HYPERCALL: u64 = 62;

fn test_main(_: &StartInfo) -> Result<(), &'static str> {
    let Some(page) = pvrt::hypercall_page() else {
        return Err("the runtime is not using the hypercall page");
    };
    pvrt::println!("pv-test hypercall_page: hypercalls through the page at {page:#x}");

    let version = pvrt::xen_version(XenVersionOp::Version);
    pvrt::println!(
        "pv-test hypercall_page: xen_version {}.{} ({version:#010x})",
        version >> 16,
        version & 0xffff
    );
    pvrt::ensure!(
        version >> 16 == 4,
        "xen_version(XENVER_version) through the page = {version:#x}, expected major 4"
    );

    // SAFETY: an unassigned number names nothing for the hypervisor to do.
    let ret = unsafe { pvrt::hypercall0(UNASSIGNED_HYPERCALL) };
    pvrt::ensure!(
        ret == XenErrno::Enosys.to_hypercall_ret(),
        "unassigned hypercall {UNASSIGNED_HYPERCALL} through the page returned {ret}, expected -ENOSYS (-38)"
    );
    Ok(())
}
