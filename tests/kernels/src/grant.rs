//! Offering grants (`grant_table.h`, v1): a one-frame grant table mapped over a scratch
//! page, and entries written in the order the ABI asks (frame and domain, then flags).

use core::sync::atomic::{fence, Ordering};

use ferrovisor_abi::xen::{
    grant_table::{
        GnttabCopy, GnttabCopyPtr, GnttabMapGrantRef, GnttabOp, GnttabSetupTable,
        GnttabUnmapGrantRef, GNTCOPY_DEST_GREF, GNTMAP_HOST_MAP, GNTMAP_READONLY,
        GTF_PERMIT_ACCESS, GTF_READONLY,
    },
    xen::{StartInfo, DOMID_SELF},
    DomId, GuestHandle,
};

use crate::region::{self, ScratchPage};

/// The domain's grant table, mapped.
pub struct GrantTable {
    va: u64,
}

impl GrantTable {
    /// `GNTTABOP_setup_table` for one frame, mapped over a scratch page.
    pub fn setup(si: &StartInfo) -> Result<GrantTable, &'static str> {
        let mut frame = 0u64;
        let mut setup = GnttabSetupTable {
            dom: DOMID_SELF,
            nr_frames: 1,
            frame_list: GuestHandle(&raw mut frame as u64),
            ..Default::default()
        };
        let r = crate::control::grant_op(GnttabOp::SetupTable, &mut setup);
        crate::ensure!(
            r == 0 && setup.status == 0 && frame != 0,
            "setup_table: rc {r}, status {}",
            setup.status
        );
        let table = region::alloc_scratch(si).ok_or("no scratch page for the grant table")?;
        // SAFETY: remaps one of the kernel's scratch pages, which nothing else uses.
        let r = unsafe { crate::update_va_mapping(table.va, (frame << 12) | region::PTE_RW, 0) };
        crate::ensure!(r == 0, "mapping the grant frame returned {r}");
        Ok(GrantTable { va: table.va })
    }

    /// Grants `to` access to `page` as reference `gref` (below 512).
    pub fn grant(&self, gref: u32, to: DomId, page: &ScratchPage, readonly: bool) {
        let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        self.grant_raw(gref, to, page.mfn, flags);
    }

    /// Writes entry `gref` (below 512) as given: `flags` of any type, even nonsense.
    pub fn grant_raw(&self, gref: u32, to: DomId, mfn: u64, flags: u16) {
        // SAFETY: the grant frame is mapped writable at `va`; entry `gref` is 8 bytes
        // inside it (gref < 512). Frame and domain go first, the flags that make the
        // entry valid last.
        unsafe {
            let words = (self.va as *mut u32).add(2 * (gref as usize % 512));
            words.add(1).write_volatile(mfn as u32);
            words.write_volatile(u32::from(to) << 16);
            fence(Ordering::Release);
            words.write_volatile((u32::from(to) << 16) | u32::from(flags));
        }
    }

    /// The address of entry `gref`'s first word (domain and flags), for code that
    /// rewrites it concurrently.
    pub fn entry_va(&self, gref: u32) -> u64 {
        self.va + 8 * u64::from(gref % 512)
    }
}

/// `GNTTABOP_map_grant_ref` of `gref` of `dom` at `host_addr` (whose L1 entry must be
/// empty): the hypercall's result and the operation as the hypervisor filled it in
/// (`status`, `handle`).
pub fn map(host_addr: u64, gref: u32, dom: DomId, readonly: bool) -> (i64, GnttabMapGrantRef) {
    let mut op = GnttabMapGrantRef {
        host_addr,
        flags: GNTMAP_HOST_MAP | if readonly { GNTMAP_READONLY } else { 0 },
        r#ref: gref,
        dom,
        ..Default::default()
    };
    let r = crate::control::grant_op(GnttabOp::MapGrantRef, &mut op);
    (r, op)
}

/// `GNTTABOP_unmap_grant_ref` of `handle` mapped at `host_addr`: the result and status.
pub fn unmap(host_addr: u64, handle: u32) -> (i64, i16) {
    let mut op = GnttabUnmapGrantRef {
        host_addr,
        dev_bus_addr: 0,
        handle,
        status: 0,
        _cpad0: 0,
    };
    let r = crate::control::grant_op(GnttabOp::UnmapGrantRef, &mut op);
    (r, op.status)
}

/// `GNTTABOP_copy` of `len` bytes from this domain's frame `src_mfn` into `gref` of
/// `dom` at `offset`: the result and status.
pub fn copy_to(src_mfn: u64, gref: u32, dom: DomId, offset: u16, len: u16) -> (i64, i16) {
    let mut op = GnttabCopy {
        source: GnttabCopyPtr::with_gmfn(src_mfn, DOMID_SELF, 0),
        dest: GnttabCopyPtr::with_gref(gref, dom, offset),
        len,
        flags: GNTCOPY_DEST_GREF,
        status: 0,
        _cpad0: 0,
    };
    let r = crate::control::grant_op(GnttabOp::Copy, &mut op);
    (r, op.status)
}
