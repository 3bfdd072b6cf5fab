//! The shared_info page (`xen.h`, `struct shared_info`): the kernel maps the machine frame
//! `start_info.shared_info` names at the bootstrap region's last page
//! ([`region::shared_info_va`]) with `update_va_mapping`. vCPU 0's `vcpu_info` is at its
//! start; its `arch.cr2` is where the hypervisor leaves a page fault's address, since the
//! 64-bit PV exception frame has no slot for it.

use core::sync::atomic::{AtomicU64, Ordering};

use ferrovisor_abi::xen::xen::{SharedInfo, StartInfo, UVMF_INVLPG};

use crate::{hypercall, region};

/// Where shared_info is mapped (0: not yet).
static SHARED_INFO_VA: AtomicU64 = AtomicU64::new(0);

/// Maps shared_info; returns its virtual address, or `update_va_mapping`'s error.
pub fn map(si: &StartInfo) -> Result<u64, i64> {
    let va = region::shared_info_va(si);
    let pte = (si.shared_info & !(region::PAGE_SIZE - 1)) | region::PTE_RW;
    // SAFETY: `va` is the bootstrap region's last padding page, which nothing else uses;
    // the new mapping replaces it.
    let ret = unsafe { hypercall::update_va_mapping(va, pte, UVMF_INVLPG) };
    if ret != 0 {
        return Err(ret);
    }
    SHARED_INFO_VA.store(va, Ordering::SeqCst);
    Ok(va)
}

/// The mapped shared_info page, if [`map`] succeeded.
pub fn get() -> Option<*const SharedInfo> {
    match SHARED_INFO_VA.load(Ordering::SeqCst) {
        0 => None,
        va => Some(va as *const SharedInfo),
    }
}

/// vCPU 0's `vcpu_info.arch.cr2`, if shared_info is mapped.
pub fn cr2() -> Option<u64> {
    let si = get()?;
    // SAFETY: `map` mapped the shared_info page at `si`; the hypervisor writes the field
    // asynchronously, hence the volatile read.
    Some(unsafe { core::ptr::read_volatile(&raw const (*si).vcpu_info[0].arch.cr2) })
}

/// vCPU 0's `evtchn_upcall_mask`, if shared_info is mapped.
pub fn upcall_mask() -> Option<u8> {
    let si = get()?;
    // SAFETY: as in `cr2`.
    Some(unsafe { core::ptr::read_volatile(&raw const (*si).vcpu_info[0].evtchn_upcall_mask) })
}
