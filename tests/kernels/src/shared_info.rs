//! The shared_info page (`xen.h`, `struct shared_info`): the kernel maps the machine frame
//! `start_info.shared_info` names at the bootstrap region's last page
//! ([`region::shared_info_va`]) with `update_va_mapping`. vCPU 0's `vcpu_info` is at its
//! start, until the kernel moves it to a page of its own ([`register_vcpu_info`]); its
//! `arch.cr2` is where the hypervisor leaves a page fault's address, since the 64-bit PV
//! exception frame has no slot for it.

use core::sync::atomic::{AtomicU64, Ordering};

use ferrovisor_abi::xen::{
    vcpu::{VcpuOp, VcpuRegisterVcpuInfo},
    xen::{SharedInfo, StartInfo, VcpuInfo, UVMF_INVLPG},
};

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

/// Where vCPU 0's `vcpu_info` was moved to (0: still in shared_info).
static VCPU_INFO_VA: AtomicU64 = AtomicU64::new(0);

/// vCPU 0's `vcpu_info`: in shared_info, or where [`register_vcpu_info`] moved it; `None`
/// before [`map`].
pub fn vcpu_info() -> Option<*mut VcpuInfo> {
    match VCPU_INFO_VA.load(Ordering::SeqCst) {
        0 => get().map(|si| {
            // SAFETY: only the address of the field is taken.
            unsafe { (&raw const (*si).vcpu_info[0]).cast_mut() }
        }),
        va => Some(va as *mut VcpuInfo),
    }
}

/// `VCPUOP_register_vcpu_info`: moves vCPU 0's `vcpu_info` to byte `offset` of the page
/// `va`, named by its machine frame `mfn` (a PV guest names machine frames). On success
/// the runtime reads it there from now on.
///
/// # Safety
/// The 64 bytes at `va + offset` must be mapped writable and left to the hypervisor for
/// the kernel's life, and `mfn` must be the frame behind `va`.
pub unsafe fn register_vcpu_info(va: u64, mfn: u64, offset: u32) -> i64 {
    let mut reg = VcpuRegisterVcpuInfo {
        mfn,
        offset,
        rsvd: 0,
    };
    // SAFETY: the caller's contract; the hypervisor reads the 16-byte argument.
    let ret = unsafe { hypercall::vcpu_op(VcpuOp::RegisterVcpuInfo, 0, (&raw mut reg).cast()) };
    if ret == 0 {
        VCPU_INFO_VA.store(va + u64::from(offset), Ordering::SeqCst);
    }
    ret
}

/// vCPU 0's `vcpu_info.arch.cr2`, if shared_info is mapped.
pub fn cr2() -> Option<u64> {
    let vi = vcpu_info()?;
    // SAFETY: `vi` is the mapped vcpu_info; the hypervisor writes the field
    // asynchronously, hence the volatile read.
    Some(unsafe { core::ptr::read_volatile(&raw const (*vi).arch.cr2) })
}

/// vCPU 0's `evtchn_upcall_mask`, if shared_info is mapped.
pub fn upcall_mask() -> Option<u8> {
    let vi = vcpu_info()?;
    // SAFETY: as in `cr2`.
    Some(unsafe { core::ptr::read_volatile(&raw const (*vi).evtchn_upcall_mask) })
}
