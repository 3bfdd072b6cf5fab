//! `hello`: the first PV test kernel, with no hypercall page (hypercalls are a direct
//! `syscall`, as current Linux makes them). Checks the start-of-day state `xen.h`
//! describes, `xen_version`, and that an unknown hypercall is `-ENOSYS`.
#![cfg_attr(target_os = "none", no_std, no_main)]

use ferrovisor_abi::xen::{version::XenVersionOp, xen::StartInfo};

pvrt::test_kernel!(name: "hello", main: test_main);

fn test_main(si: &StartInfo) -> Result<(), &'static str> {
    pvrt::println!(
        "pv-test hello: start_info magic {}, nr_pages {}, cmdline '{}'",
        pvrt::magic(si).unwrap_or("<not text>"),
        si.nr_pages,
        pvrt::cmdline(si).unwrap_or("<not text>"),
    );
    checks::start_of_day(si)?;
    checks::version_is_4(pvrt::contract::HELLO_CMDLINE, si)?;
    checks::unknown_hypercall_is_enosys()
}

mod checks {
    use ferrovisor_abi::{errno::XenErrno, xen::xen::StartInfo};

    use super::XenVersionOp;

    /// An unassigned hypercall number (`xen.h` assigns up to 55; Xen's table has 64).
    const UNASSIGNED_HYPERCALL: u64 = 62;

    /// `xen.h`'s start-of-day layout: the magic, the domain's pages, and the p2m list and
    /// bootstrap page tables inside the bootstrap region, after the kernel image.
    pub fn start_of_day(si: &StartInfo) -> Result<(), &'static str> {
        if !pvrt::magic_is_x86_64(si) {
            return Err("start_info magic does not start with xen-3.0-x86_64");
        }
        if si.nr_pages == 0 {
            return Err("start_info.nr_pages is 0");
        }
        // The bootstrap region starts at VIRT_BASE (pfn 0) and cannot be larger than the
        // domain's memory.
        let region_end = pvrt::contract::VIRT_BASE.saturating_add(si.nr_pages.saturating_mul(4096));
        let image_end = pvrt::layout::image_end();
        let in_region = |va: u64| va >= image_end && va < region_end;
        pvrt::println!(
            "pv-test hello: image end {image_end:#x}, bootstrap region end <= {region_end:#x}, \
             start_info {:#x}, mfn_list {:#x}, pt_base {:#x} ({} frames), bootstrap rsp {:#x}",
            pvrt::start_info_va(),
            si.mfn_list,
            si.pt_base,
            si.nr_pt_frames,
            pvrt::bootstrap_rsp(),
        );
        pvrt::ensure!(
            si.pt_base != 0 && si.pt_base % 4096 == 0 && in_region(si.pt_base),
            "pt_base {:#x} is not a page in the bootstrap region [{image_end:#x}, {region_end:#x})",
            si.pt_base
        );
        pvrt::ensure!(
            si.mfn_list != 0 && si.mfn_list % 8 == 0 && in_region(si.mfn_list),
            "mfn_list {:#x} is not in the bootstrap region [{image_end:#x}, {region_end:#x})",
            si.mfn_list
        );
        pvrt::ensure!(
            in_region(pvrt::start_info_va()),
            "start_info {:#x} is not in the bootstrap region",
            pvrt::start_info_va()
        );
        pvrt::ensure!(
            si.nr_pt_frames > 0,
            "start_info.nr_pt_frames is 0 with pt_base {:#x}",
            si.pt_base
        );
        Ok(())
    }

    /// The command line the test passed, then `XENVER_version` (Ferrovisor answers as
    /// Xen 4.17 does: `0x00040011`).
    pub fn version_is_4(expected_cmdline: &str, si: &StartInfo) -> Result<(), &'static str> {
        match pvrt::cmdline(si) {
            Some(cmdline) if cmdline == expected_cmdline => {}
            Some(cmdline) => {
                pvrt::fail!("start_info.cmd_line is '{cmdline}', expected '{expected_cmdline}'")
            }
            None => return Err("start_info.cmd_line is not UTF-8 text"),
        }
        let version = pvrt::xen_version(XenVersionOp::Version);
        pvrt::println!(
            "pv-test hello: xen_version {}.{} ({version:#010x})",
            version >> 16,
            version & 0xffff
        );
        pvrt::ensure!(
            version >> 16 == 4,
            "xen_version(XENVER_version) = {version:#x}, expected major version 4"
        );
        Ok(())
    }

    pub fn unknown_hypercall_is_enosys() -> Result<(), &'static str> {
        // SAFETY: an unassigned number names nothing for the hypervisor to do.
        let ret = unsafe { pvrt::hypercall0(UNASSIGNED_HYPERCALL) };
        pvrt::println!("pv-test hello: hypercall {UNASSIGNED_HYPERCALL} returned {ret}");
        pvrt::ensure!(
            ret == XenErrno::Enosys.to_hypercall_ret(),
            "unassigned hypercall {UNASSIGNED_HYPERCALL} returned {ret}, expected -ENOSYS (-38)"
        );
        Ok(())
    }
}
