//! The frame table: one [`FrameInfo`] per machine frame, saying who owns the frame, how many
//! references to it exist and what it is used as. It enforces the PV MMU's isolation rules
//! (Xen's `arch/x86/mm.c` reference-counting design):
//!
//! - a domain maps only frames it owns (I/O frames need I/O access, which no domain has yet);
//! - a frame used as a page table (or descriptor table) is never mapped writable, and a frame
//!   mapped writable never becomes a page table: a frame has one [`PageType`] at a time and
//!   changes it only when its type count is zero;
//! - a table gets its page-table type only after every entry was checked ([`validate_entry`])
//!   and the references of every present entry were taken, recursively down to L1;
//! - the hypervisor's L4 slots ([`HYPERVISOR_L4_SLOTS`]) are never guest-controlled.
//!
//! Two counts per frame, as in Xen: `count` (general references: mappings, table entries,
//! pins; a frame with references cannot change owner) and `type_info.type_count` (references
//! to the current type: writable mappings for [`PageType::Writable`], upper-level entries,
//! pins and loaded base pointers for page-table types). Every type reference comes with a
//! general reference, so `count >= type_count` always holds.
//!
//! Ownership itself is not a reference: a frame owned by a domain and used by nothing has
//! `count == 0` and type [`PageType::None`].
//!
//! Tables are read and written through [`PageTableMemory`]; nothing here touches hardware,
//! and TLBs are not modelled: the caller must flush stale translations (on every CPU the
//! domain ran on) before a frame whose writable mapping was just dropped can be used with a
//! page-table type; Xen does this with its `tlbflush_timestamp` check on type changes.
//! Writable mappings are granted in exactly one place, `get_mapping_refs` (log-dirty mode
//! hooks there later); `UpdateOutcome::PlainWrite` writes are done by the caller, which marks
//! them dirty too.

use alloc::vec::Vec;
use core::fmt;

use ferrovisor_abi::errno::XenErrno;

use super::{
    page_type::{
        bits, entry_mfn, guest_entry, is_guest_slot, validate_entry, EntryKind, Level, PageType,
        ENTRIES, HYPERVISOR_L4_SLOTS, HYPERVISOR_L4_SLOT_COUNT,
    },
    paging::pte,
    Mfn,
};

/// A domain id (`domid_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomId(pub u16);

impl fmt::Display for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d{}", self.0)
    }
}

/// Who a frame belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// In the frame allocator's hands.
    Free,
    /// The hypervisor's own memory (image, heap, its page tables).
    Hypervisor,
    Domain(DomId),
    /// Not RAM: device memory and holes (Xen's `dom_io`).
    Io,
}

/// What a frame is used as, and how many references hold that use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeInfo {
    pub ty: PageType,
    /// References to `ty`. Zero exactly when `ty` is [`PageType::None`].
    pub type_count: u32,
    /// The contents were checked for `ty` and the references of its entries are held. Cleared
    /// only by `release_domain`'s forced devalidation while references remain.
    pub validated: bool,
    /// `MMUEXT_PIN_L?_TABLE`: the pin holds one general and one type reference.
    pub pinned: bool,
}

impl TypeInfo {
    pub const UNTYPED: TypeInfo = TypeInfo {
        ty: PageType::None,
        type_count: 0,
        validated: false,
        pinned: false,
    };
}

/// One machine frame's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    pub owner: Owner,
    /// General references.
    pub count: u32,
    pub type_info: TypeInfo,
}

impl FrameInfo {
    pub const FREE: FrameInfo = FrameInfo {
        owner: Owner::Free,
        count: 0,
        type_info: TypeInfo::UNTYPED,
    };

    /// Nothing refers to the frame: it may change owner.
    pub const fn is_unreferenced(&self) -> bool {
        self.count == 0 && self.type_info.type_count == 0 && !self.type_info.pinned
    }
}

/// A frame the frame table has just checked to be a domain's frame (so RAM, never the
/// hypervisor's own memory, a free frame or device memory), for the one access it is about
/// to make. Only this module makes one, and it never hands one out: so a
/// [`PageTableMemory`] can only ever be asked to touch a frame the table vouched for, and
/// reading a guest-supplied address before the check does not compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckedFrame {
    mfn: Mfn,
}

impl CheckedFrame {
    pub fn mfn(self) -> Mfn {
        self.mfn
    }
}

/// A frame of a domain that the hypervisor holds as ordinary writable memory: made only by
/// [`FrameTable::get_writable`], after its checks, with a general and a `Writable` type
/// reference that stay held for as long as this value lives; they go back only through
/// [`FrameTable::put_writable`], which consumes it. Neither `Clone` nor `Copy`, so there is
/// one holder. The hypervisor's views of such a frame (`SharedFrame`: shared info, a
/// registered `vcpu_info`, the rings) borrow it, so no view outlives the references, and
/// while they are held the frame can become neither a page table nor a descriptor table,
/// nor change owner. Dropping one without giving it back only keeps the frame referenced
/// (its domain's memory is then never freed): never unsound.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "dropping a WritableFrame leaks its references: give it back with put_writable"]
pub struct WritableFrame {
    mfn: Mfn,
    owner: DomId,
}

impl WritableFrame {
    pub fn mfn(&self) -> Mfn {
        self.mfn
    }

    /// The domain that owns the frame (and keeps owning it while this lives).
    pub fn owner(&self) -> DomId {
        self.owner
    }
}

/// A general reference to a frame of a domain, held for as long as this value lives:
/// made only by [`FrameTable::get_page_ref`], given back only by
/// [`FrameTable::put_page_ref`]. While it is held the frame cannot change owner (so it is
/// never freed or given to the hypervisor or another domain); it may have any type, so
/// the hypervisor's view of it (`FrameReader`) only reads.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "dropping a PageRef leaks its reference: give it back with put_page_ref"]
pub struct PageRef {
    mfn: Mfn,
}

impl PageRef {
    pub fn mfn(&self) -> Mfn {
        self.mfn
    }
}

/// A general and an L4 type reference on a validated L4 of a domain: what a vCPU's base
/// pointers hold (Xen's `get_page_and_type(PGT_l4_page_table)` in `new_guest_cr3`). Made
/// only by [`FrameTable::get_l4_ref`], given back only by [`FrameTable::put_l4_ref`]; while
/// it is held the table stays validated, its hypervisor slots map the hypervisor, and the
/// guest cannot write it. The proof from which the CPU's CR3 may be loaded with it and the
/// guest's address space walked.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "dropping an L4Ref leaks its references: give it back with put_l4_ref"]
pub struct L4Ref {
    mfn: Mfn,
}

impl L4Ref {
    pub fn mfn(&self) -> Mfn {
        self.mfn
    }
}

/// Access to the contents of page-table (and descriptor-table) frames. The hypervisor
/// implements it over its direct map; the tests over a map. Its methods take a
/// [`CheckedFrame`], which only the frame table can make.
pub trait PageTableMemory {
    fn read(&self, table: CheckedFrame, index: usize) -> u64;
    fn write(&mut self, table: CheckedFrame, index: usize, value: u64);
    /// Writes `bytes` at byte `offset` of the frame (`offset + len <= 4096`): the
    /// builder's writes into a domain's unused frames. By whole words by default.
    fn write_bytes(&mut self, frame: CheckedFrame, offset: usize, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            let at = offset + i;
            let shift = (at % 8) * 8;
            let word = self.read(frame, at / 8);
            self.write(
                frame,
                at / 8,
                (word & !(0xff << shift)) | (u64::from(b) << shift),
            );
        }
    }
}

/// Page-table memory for operations that never validate or devalidate a table (a
/// `Writable` type reference): nothing is read or written.
struct NoTables;

impl PageTableMemory for NoTables {
    fn read(&self, _: CheckedFrame, _: usize) -> u64 {
        0
    }
    fn write(&mut self, _: CheckedFrame, _: usize, _: u64) {}
}

/// Why a PV MMU operation was refused. Each maps to the errno Xen returns in the same case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmError {
    /// The frame is not in the frame table (-EINVAL, as Xen's failed `get_page_from_mfn`).
    InvalidMfn,
    /// A table, pin or update target the domain does not own (-EINVAL, Xen's
    /// `get_page_and_type_from_mfn` and "could not get page for normal update").
    NotOwner,
    /// An L1 entry maps a frame of another domain, the hypervisor or the free pool (-EBUSY,
    /// Xen's `get_page_from_l1e` "could not pin").
    ForeignFrame,
    /// An L1 entry maps device memory or a frame outside RAM without I/O access (-EPERM, as
    /// Xen's `iomem_access_permitted` check).
    IoNotPermitted,
    /// The frame is in use with another type, or is being validated (-EINVAL, Xen's "bad
    /// type").
    TypeConflict,
    /// An L1 entry maps writable a frame in use as a page table or descriptor table
    /// (-EBUSY, from `get_page_from_l1e`).
    WritableTable,
    /// Reserved or unsupported bits in a present entry (-EINVAL, "bad L? flags").
    BadFlags,
    /// PSE in an L2 or L3 entry: no superpages for PV guests (-EINVAL).
    Superpage,
    /// An entry refers to its own table (linear page tables are not supported yet; -EINVAL).
    LinearPageTable,
    /// An update of the hypervisor's L4 slots (-EINVAL, "illegal L4 update attempt in the
    /// Xen-private area").
    HypervisorSlot,
    /// An entry index outside the table (-EINVAL).
    BadIndex,
    /// `MMUEXT_PIN_*` on a pinned frame (-EINVAL, "mfn already pinned").
    AlreadyPinned,
    /// `MMUEXT_UNPIN_TABLE` on a frame that is not pinned (-EINVAL, "mfn not pinned").
    NotPinned,
    /// The frame is referenced and cannot change owner (-EBUSY).
    Busy,
    /// A reference count would overflow (-EBUSY, as Xen's failing `get_page` in an L1 entry).
    RefOverflow,
    /// A reference was dropped that was not held. Only a hypervisor bug can cause this
    /// (-EINVAL).
    NotReferenced,
    /// An ordinary update of an entry that holds a grant mapping: only
    /// `GNTTABOP_unmap_grant_ref` may remove it (-EINVAL; Xen crashes the domain for an
    /// "implicit unmap of a granted PTE").
    GrantMapping,
}

impl MmError {
    pub const fn errno(self) -> XenErrno {
        match self {
            MmError::ForeignFrame
            | MmError::WritableTable
            | MmError::Busy
            | MmError::RefOverflow => XenErrno::Ebusy,
            MmError::IoNotPermitted => XenErrno::Eperm,
            MmError::InvalidMfn
            | MmError::NotOwner
            | MmError::TypeConflict
            | MmError::BadFlags
            | MmError::Superpage
            | MmError::LinearPageTable
            | MmError::HypervisorSlot
            | MmError::BadIndex
            | MmError::AlreadyPinned
            | MmError::NotPinned
            | MmError::NotReferenced
            | MmError::GrantMapping => XenErrno::Einval,
        }
    }
}

impl fmt::Display for MmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MmError::InvalidMfn => "no such frame",
            MmError::NotOwner => "frame not owned by the domain",
            MmError::ForeignFrame => "mapping of a frame the domain does not own",
            MmError::IoNotPermitted => "mapping of I/O memory without I/O access",
            MmError::TypeConflict => "frame in use with another type",
            MmError::WritableTable => "writable mapping of a page-table or descriptor frame",
            MmError::BadFlags => "reserved or unsupported bits in entry",
            MmError::Superpage => "superpage entry",
            MmError::LinearPageTable => "linear page table",
            MmError::HypervisorSlot => "update of a hypervisor L4 slot",
            MmError::BadIndex => "entry index out of range",
            MmError::AlreadyPinned => "frame already pinned",
            MmError::NotPinned => "frame not pinned",
            MmError::Busy => "frame still referenced",
            MmError::RefOverflow => "reference count overflow",
            MmError::NotReferenced => "reference not held",
            MmError::GrantMapping => "ordinary update of a grant mapping",
        })
    }
}

/// What [`FrameTable::update_entry`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// The frame is a validated table of this level: the new entry was checked, its
    /// references taken, written (adjusted by `guest_entry`) and the old entry's references
    /// dropped.
    Validated(Level),
    /// The frame is the domain's but not a page table (type `None` or `Writable`): the update
    /// was an ordinary memory write of the value as given (log-dirty mode marks it dirty).
    PlainWrite,
}

/// What [`FrameTable::update_entry_as`] did, and the entry it replaced (read only after the
/// frame was found to be the domain's): the caller flushes other CPUs' TLBs if it was
/// present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Updated {
    pub outcome: UpdateOutcome,
    pub old: u64,
}

/// What [`FrameTable::release_domain`] left.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Frames now unreferenced and marked [`Owner::Free`]: the caller returns them to the
    /// frame allocator.
    pub freed: Vec<Mfn>,
    /// Frames still referenced from outside the domain's own tables and pins (a loaded base
    /// pointer, another domain's mapping): still owned by the dying domain. Call
    /// `release_domain` again once those references are gone.
    pub still_referenced: Vec<Mfn>,
}

/// Owner, references and type of every machine frame, indexed by MFN.
pub struct FrameTable {
    frames: Vec<FrameInfo>,
    /// What an L4 gets in [`HYPERVISOR_L4_SLOTS`] when it is validated.
    hypervisor_l4: [u64; HYPERVISOR_L4_SLOT_COUNT],
}

impl fmt::Debug for FrameTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameTable")
            .field("frames", &self.frames.len())
            .finish_non_exhaustive()
    }
}

impl FrameTable {
    /// A table for MFNs `0..nr_frames`, all free.
    pub fn new(nr_frames: usize) -> Self {
        FrameTable {
            frames: alloc::vec![FrameInfo::FREE; nr_frames],
            hypervisor_l4: [0; HYPERVISOR_L4_SLOT_COUNT],
        }
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Sets the entries written into [`HYPERVISOR_L4_SLOTS`] of every L4 from its next
    /// validation on (Xen's `init_xen_l4_slots`). Already validated L4s keep what they have.
    pub fn set_hypervisor_l4_slots(&mut self, entries: [u64; HYPERVISOR_L4_SLOT_COUNT]) {
        self.hypervisor_l4 = entries;
    }

    pub fn info(&self, mfn: Mfn) -> Option<&FrameInfo> {
        self.frames.get(usize::try_from(mfn.0).ok()?)
    }

    /// Every frame with its state, in MFN order.
    pub fn frames(&self) -> impl Iterator<Item = (Mfn, &FrameInfo)> + '_ {
        self.frames
            .iter()
            .enumerate()
            .map(|(i, f)| (Mfn(i as u64), f))
    }

    /// The frames a domain owns, in MFN order (what save and migration walk).
    pub fn frames_of(&self, dom: DomId) -> impl Iterator<Item = (Mfn, &FrameInfo)> + '_ {
        self.frames()
            .filter(move |(_, f)| f.owner == Owner::Domain(dom))
    }

    /// Gives an unreferenced frame to a new owner.
    pub fn assign(&mut self, mfn: Mfn, owner: Owner) -> Result<(), MmError> {
        let frame = self.frame_mut(mfn)?;
        if !frame.is_unreferenced() {
            return Err(MmError::Busy);
        }
        *frame = FrameInfo {
            owner,
            ..FrameInfo::FREE
        };
        Ok(())
    }

    /// Takes a general reference to a frame `dom` owns.
    pub fn get_page(&mut self, mfn: Mfn, dom: DomId) -> Result<(), MmError> {
        let frame = self.frame_mut(mfn)?;
        if frame.owner != Owner::Domain(dom) {
            return Err(MmError::NotOwner);
        }
        frame.count = frame.count.checked_add(1).ok_or(MmError::RefOverflow)?;
        Ok(())
    }

    /// Takes a base pointer's references on `mfn`, which becomes (or already is) a
    /// validated L4 of `dom`.
    pub fn get_l4_ref<M: PageTableMemory + ?Sized>(
        &mut self,
        mfn: Mfn,
        dom: DomId,
        mem: &mut M,
    ) -> Result<L4Ref, MmError> {
        self.get_page_and_type(mfn, dom, PageType::L4, mem)?;
        Ok(L4Ref { mfn })
    }

    /// Gives back what [`Self::get_l4_ref`] took (the table is devalidated if nothing else
    /// holds it). The caller must have moved every CPU off it first.
    pub fn put_l4_ref<M: PageTableMemory + ?Sized>(
        &mut self,
        l4: L4Ref,
        mem: &mut M,
    ) -> Result<(), MmError> {
        self.put_page_and_type(l4.mfn, mem)
    }

    /// [`Self::get_page`], as a handle the hypervisor's read-only view of the frame is
    /// made from.
    pub fn get_page_ref(&mut self, mfn: Mfn, dom: DomId) -> Result<PageRef, MmError> {
        self.get_page(mfn, dom)?;
        Ok(PageRef { mfn })
    }

    /// Gives back what [`Self::get_page_ref`] took.
    pub fn put_page_ref(&mut self, page: PageRef) -> Result<(), MmError> {
        self.put_page(page.mfn)
    }

    /// Drops a general reference. The references backing type references stay.
    pub fn put_page(&mut self, mfn: Mfn) -> Result<(), MmError> {
        let frame = self.frame_mut(mfn)?;
        if frame.count <= frame.type_info.type_count {
            return Err(MmError::NotReferenced);
        }
        frame.count -= 1;
        Ok(())
    }

    /// Takes a reference to frame `mfn` being of type `ty`; the caller holds a general
    /// reference for it. If the frame had no type, it takes `ty`, and a page-table type is
    /// validated first: every entry checked and its references taken (all rolled back on
    /// failure).
    ///
    /// [`PageType::SegDesc`] only excludes writable mappings; checking the descriptors
    /// (Xen's `check_descriptor`) is the descriptor-table code's job, after it got the type.
    pub fn get_page_type<M: PageTableMemory + ?Sized>(
        &mut self,
        mfn: Mfn,
        dom: DomId,
        ty: PageType,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let i = self.index(mfn)?;
        let frame = &mut self.frames[i];
        if frame.owner != Owner::Domain(dom) {
            return Err(MmError::NotOwner);
        }
        if ty == PageType::None {
            return Err(MmError::TypeConflict);
        }
        if frame.count <= frame.type_info.type_count {
            return Err(MmError::NotReferenced);
        }
        let t = &mut frame.type_info;
        if t.type_count > 0 {
            // A table still being validated is only reachable through a linear reference.
            if t.ty != ty || !t.validated {
                return Err(MmError::TypeConflict);
            }
            t.type_count = t.type_count.checked_add(1).ok_or(MmError::RefOverflow)?;
            return Ok(());
        }
        // The type changes only here, with no reference to the old one left. While the
        // table is validated it already has its type, so an entry referring back to it (at
        // any level, as a table or writable) conflicts.
        *t = TypeInfo {
            ty,
            type_count: 1,
            validated: false,
            pinned: false,
        };
        if let Some(level) = ty.level() {
            if let Err(e) = self.validate_table(mfn, level, dom, mem) {
                self.frames[i].type_info = TypeInfo::UNTYPED;
                return Err(e);
            }
        }
        self.frames[i].type_info.validated = true;
        Ok(())
    }

    /// Drops a type reference. When the last one goes, a page table is devalidated (the
    /// references of its entries dropped, recursively) and the frame becomes untyped.
    pub fn put_page_type<M: PageTableMemory + ?Sized>(
        &mut self,
        mfn: Mfn,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let i = self.index(mfn)?;
        let t = self.frames[i].type_info;
        if t.type_count == 0 || (t.pinned && t.type_count == 1) {
            return Err(MmError::NotReferenced);
        }
        if t.type_count > 1 {
            self.frames[i].type_info.type_count -= 1;
            return Ok(());
        }
        if let (true, Some(level)) = (t.validated, t.ty.level()) {
            self.frames[i].type_info.validated = false;
            self.devalidate_table(mfn, level, mem);
        }
        self.frames[i].type_info = TypeInfo::UNTYPED;
        Ok(())
    }

    /// A general reference and a type reference (Xen's `get_page_and_type`).
    pub fn get_page_and_type<M: PageTableMemory + ?Sized>(
        &mut self,
        mfn: Mfn,
        dom: DomId,
        ty: PageType,
        mem: &mut M,
    ) -> Result<(), MmError> {
        self.get_page(mfn, dom)?;
        if let Err(e) = self.get_page_type(mfn, dom, ty, mem) {
            let undone = self.put_page(mfn);
            debug_assert!(undone.is_ok());
            return Err(e);
        }
        Ok(())
    }

    /// Drops what [`FrameTable::get_page_and_type`] took.
    pub fn put_page_and_type<M: PageTableMemory + ?Sized>(
        &mut self,
        mfn: Mfn,
        mem: &mut M,
    ) -> Result<(), MmError> {
        self.put_page_type(mfn, mem)?;
        self.put_page(mfn)
    }

    /// Holds `mfn`, a frame of `dom`, as ordinary writable memory for the hypervisor's own
    /// use: a general reference and a `Writable` type reference (Xen's
    /// `share_xen_page_with_guest`, and `get_page_and_type(PGT_writable_page)` in
    /// `VCPUOP_register_vcpu_info`). For every frame the hypervisor writes behind the
    /// guest's back — shared info, a registered `vcpu_info`, the xenstore and console
    /// rings, grant-table frames: while held, the guest can make it neither a page table
    /// nor a descriptor table, so those writes can never forge a PTE or a descriptor.
    /// Refused while the frame has another type.
    pub fn get_writable(&mut self, mfn: Mfn, dom: DomId) -> Result<WritableFrame, MmError> {
        self.get_page_and_type(mfn, dom, PageType::Writable, &mut NoTables)
            .map_err(|e| match e {
                MmError::TypeConflict => MmError::WritableTable,
                e => e,
            })?;
        Ok(WritableFrame { mfn, owner: dom })
    }

    /// Gives back what [`Self::get_writable`] took.
    pub fn put_writable(&mut self, frame: WritableFrame) -> Result<(), MmError> {
        let info = self.frame(frame.mfn)?;
        if info.type_info.ty != PageType::Writable || info.owner != Owner::Domain(frame.owner) {
            return Err(MmError::NotReferenced);
        }
        self.put_page_and_type(frame.mfn, &mut NoTables)
    }

    /// `MMUEXT_PIN_L{1,2,3,4}_TABLE`: makes `mfn` a table of `level` (validating it if it had
    /// no type) and keeps it so until unpinned.
    pub fn pin<M: PageTableMemory + ?Sized>(
        &mut self,
        mfn: Mfn,
        dom: DomId,
        level: Level,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let frame = self.frame(mfn)?;
        if frame.owner != Owner::Domain(dom) {
            return Err(MmError::NotOwner);
        }
        if frame.type_info.pinned {
            return Err(if frame.type_info.ty == level.page_type() {
                MmError::AlreadyPinned
            } else {
                MmError::TypeConflict
            });
        }
        self.get_page_and_type(mfn, dom, level.page_type(), mem)?;
        let i = self.index(mfn)?;
        self.frames[i].type_info.pinned = true;
        Ok(())
    }

    /// `MMUEXT_UNPIN_TABLE`: drops the pin's references; the table is devalidated if nothing
    /// else uses it.
    pub fn unpin<M: PageTableMemory + ?Sized>(
        &mut self,
        mfn: Mfn,
        dom: DomId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let i = self.index(mfn)?;
        let frame = &mut self.frames[i];
        if frame.owner != Owner::Domain(dom) {
            return Err(MmError::NotOwner);
        }
        if !frame.type_info.pinned {
            return Err(MmError::NotPinned);
        }
        frame.type_info.pinned = false;
        self.put_page_and_type(mfn, mem)
    }

    /// `MMU_NORMAL_PT_UPDATE`: sets entry `index` of `table` to `new` on behalf of `dom`.
    ///
    /// For a validated page table the new entry is checked at the table's level and its
    /// references taken before the old entry's are dropped (so rewriting an entry with the
    /// same target never devalidates the target). Any other frame of the domain that is not
    /// a descriptor table in use takes an ordinary write of `new`, done here too.
    pub fn update_entry<M: PageTableMemory + ?Sized>(
        &mut self,
        table: Mfn,
        index: usize,
        new: u64,
        dom: DomId,
        mem: &mut M,
    ) -> Result<UpdateOutcome, MmError> {
        self.update_entry_as(table, index, new, dom, dom, mem)
            .map(|u| u.outcome)
    }

    /// [`Self::update_entry`] where an L1 entry maps frames of `pg_owner` instead of
    /// `dom`'s own: the privileged domain's foreign mappings (`mmu_update` with a
    /// `foreigndom`, what Linux's `privcmd` uses). The caller checks the privilege. The
    /// foreign frame gets the same references as an own mapping, so it cannot be freed
    /// (or become a page table, if mapped writable) while mapped.
    pub fn update_entry_as<M: PageTableMemory + ?Sized>(
        &mut self,
        table: Mfn,
        index: usize,
        new: u64,
        dom: DomId,
        pg_owner: DomId,
        mem: &mut M,
    ) -> Result<Updated, MmError> {
        let frame = *self.frame(table)?;
        if frame.owner != Owner::Domain(dom) {
            return Err(MmError::NotOwner);
        }
        if index >= ENTRIES {
            return Err(MmError::BadIndex);
        }
        let checked = self.checked(table)?;
        let t = frame.type_info;
        let plain = |mem: &mut M| {
            let old = mem.read(checked, index);
            mem.write(checked, index, new);
            Ok(Updated {
                outcome: UpdateOutcome::PlainWrite,
                old,
            })
        };
        if t.type_count == 0 {
            return plain(mem);
        }
        match t.ty.level() {
            Some(level) => {
                if !t.validated {
                    return Err(MmError::TypeConflict);
                }
                if !is_guest_slot(level, index) {
                    return Err(MmError::HypervisorSlot);
                }
                let old = mem.read(checked, index);
                // Only a present entry can be a grant mapping: a non-present one is the
                // guest's to encode (Linux's swap and migration entries set bit 62).
                if level == Level::L1 && old & pte::PRESENT != 0 && old & bits::GNTTAB != 0 {
                    return Err(MmError::GrantMapping);
                }
                let owner = if level == Level::L1 { pg_owner } else { dom };
                self.get_entry_refs(table, level, new, owner, mem)?;
                mem.write(checked, index, guest_entry(new));
                self.put_entry_refs(level, old, mem);
                Ok(Updated {
                    outcome: UpdateOutcome::Validated(level),
                    old,
                })
            }
            None if t.ty == PageType::Writable => plain(mem),
            None => Err(MmError::TypeConflict),
        }
    }

    /// `update_va_mapping`'s update: like [`Self::update_entry`], but only of a validated L1
    /// (anything else is refused before any access, never a plain write).
    pub fn update_l1_entry<M: PageTableMemory + ?Sized>(
        &mut self,
        table: Mfn,
        index: usize,
        new: u64,
        dom: DomId,
        mem: &mut M,
    ) -> Result<Updated, MmError> {
        self.checked_table(table, index, dom, |ty| ty == PageType::L1)?;
        self.update_entry_as(table, index, new, dom, dom, mem)
    }

    /// Writes `bytes` at `offset` of `mfn`, a frame of `dom` that nothing references and
    /// that has no type (checked now, under the caller's hold on the table): the domain
    /// builder's writes into a domain that has never run.
    pub fn write_unused<M: PageTableMemory + ?Sized>(
        &self,
        mfn: Mfn,
        dom: DomId,
        offset: usize,
        bytes: &[u8],
        mem: &mut M,
    ) -> Result<(), MmError> {
        if offset
            .checked_add(bytes.len())
            .is_none_or(|end| end > ENTRIES * 8)
        {
            return Err(MmError::BadIndex);
        }
        let frame = self.frame(mfn)?;
        if frame.owner != Owner::Domain(dom) {
            return Err(MmError::NotOwner);
        }
        if !frame.is_unreferenced() {
            return Err(MmError::Busy);
        }
        mem.write_bytes(self.checked(mfn)?, offset, bytes);
        Ok(())
    }

    /// Entry `index` of `table`, a validated page table (of any level) of `dom`: what the
    /// hypervisor reads of a guest's tables outside an update (the L1 entry behind a
    /// faulting address, an LDT's mapping).
    pub fn read_entry<M: PageTableMemory + ?Sized>(
        &self,
        table: Mfn,
        index: usize,
        dom: DomId,
        mem: &M,
    ) -> Result<u64, MmError> {
        let table = self.checked_table(table, index, dom, |ty| ty.level().is_some())?;
        Ok(mem.read(table, index))
    }

    /// The 512 descriptors of `mfn`, a frame of `dom` the caller holds typed
    /// [`PageType::SegDesc`].
    pub fn read_descriptors<M: PageTableMemory + ?Sized>(
        &self,
        mfn: Mfn,
        dom: DomId,
        mem: &M,
    ) -> Result<[u64; ENTRIES], MmError> {
        let checked = self.checked_typed(mfn, dom, |ty| ty == PageType::SegDesc)?;
        let mut page = [0u64; ENTRIES];
        for (i, e) in page.iter_mut().enumerate() {
            *e = mem.read(checked, i);
        }
        Ok(page)
    }

    /// Descriptor `index` of `mfn`, a frame of `dom` the caller holds typed
    /// [`PageType::SegDesc`] (a loaded GDT or LDT frame).
    pub fn read_descriptor<M: PageTableMemory + ?Sized>(
        &self,
        mfn: Mfn,
        dom: DomId,
        index: usize,
        mem: &M,
    ) -> Result<u64, MmError> {
        if index >= ENTRIES {
            return Err(MmError::BadIndex);
        }
        let checked = self.checked_typed(mfn, dom, |ty| ty == PageType::SegDesc)?;
        Ok(mem.read(checked, index))
    }

    /// Writes one (already checked) descriptor into `mfn`, a frame of `dom` the caller
    /// holds typed [`PageType::SegDesc`] or [`PageType::Writable`]: never a page table.
    pub fn write_descriptor<M: PageTableMemory + ?Sized>(
        &self,
        mfn: Mfn,
        dom: DomId,
        index: usize,
        value: u64,
        mem: &mut M,
    ) -> Result<(), MmError> {
        if index >= ENTRIES {
            return Err(MmError::BadIndex);
        }
        let checked = self.checked_typed(mfn, dom, |ty| {
            ty == PageType::SegDesc || ty == PageType::Writable
        })?;
        mem.write(checked, index, value);
        Ok(())
    }

    /// The key to a frame's contents, for a frame some domain owns.
    fn checked(&self, mfn: Mfn) -> Result<CheckedFrame, MmError> {
        match self.frame(mfn)?.owner {
            Owner::Domain(_) => Ok(CheckedFrame { mfn }),
            _ => Err(MmError::NotOwner),
        }
    }

    /// The key to a frame of `dom` that holds a type reference `ok` accepts.
    fn checked_typed(
        &self,
        mfn: Mfn,
        dom: DomId,
        ok: impl Fn(PageType) -> bool,
    ) -> Result<CheckedFrame, MmError> {
        self.checked_held(mfn, dom, |t| ok(t.ty))
    }

    /// The key to a frame of `dom` whose type references (at least one) `ok` accepts.
    fn checked_held(
        &self,
        mfn: Mfn,
        dom: DomId,
        ok: impl Fn(&TypeInfo) -> bool,
    ) -> Result<CheckedFrame, MmError> {
        let frame = self.frame(mfn)?;
        if frame.owner != Owner::Domain(dom) {
            return Err(MmError::NotOwner);
        }
        if frame.type_info.type_count == 0 || !ok(&frame.type_info) {
            return Err(MmError::TypeConflict);
        }
        self.checked(mfn)
    }

    /// Installs a grant mapping (`GNTTABOP_map_grant_ref` with `GNTMAP_host_map`): entry
    /// `index` of `table`, a validated L1 of `dom` whose entry is not present, comes to
    /// map `mfn`, a frame of `owner` that `owner` granted. Takes a general reference on
    /// the frame and, for a writable mapping, a `Writable` type reference (refused while
    /// the frame is a page or descriptor table). `flags` are the PTE bits below the frame
    /// address besides present and writable (user, accessed, dirty, cache bits); the entry
    /// is marked as a grant mapping, so that ordinary updates cannot drop it.
    #[allow(
        clippy::too_many_arguments,
        reason = "one entry, one frame, its owner and how"
    )]
    pub fn map_grant<M: PageTableMemory + ?Sized>(
        &mut self,
        table: Mfn,
        index: usize,
        dom: DomId,
        mfn: Mfn,
        owner: DomId,
        writable: bool,
        flags: u64,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let slot = self.check_grant_slot(table, index, dom)?;
        if mem.read(slot, index) & pte::PRESENT != 0 {
            return Err(MmError::Busy);
        }
        self.get_page(mfn, owner)?;
        if writable {
            if let Err(e) = self.get_page_type(mfn, owner, PageType::Writable, mem) {
                let undone = self.put_page(mfn);
                debug_assert!(undone.is_ok());
                return Err(match e {
                    MmError::TypeConflict => MmError::WritableTable,
                    e => e,
                });
            }
        }
        let rw = if writable { pte::WRITABLE } else { 0 };
        let keep = pte::USER | pte::ACCESSED | pte::DIRTY | pte::PWT | pte::PCD | pte::NX;
        mem.write(
            slot,
            index,
            mfn.addr() | pte::PRESENT | rw | (flags & keep) | bits::GNTTAB,
        );
        Ok(())
    }

    /// Removes the grant mapping of `mfn` at entry `index` of `table` (an L1 of `dom`),
    /// writable or not as the maptrack says, and drops the references [`Self::map_grant`]
    /// took. `-EINVAL`-style errors if the entry is not that grant mapping; nothing
    /// changes then.
    ///
    /// The writability must match too: the guest names the entry by an address it may
    /// have remapped, and one handle's read-only pins released with another mapping's
    /// writable entry would leave a writable mapping behind while the granter's entry
    /// says `GTF_writing` is clear (so it would reuse the page for anything).
    pub fn unmap_grant<M: PageTableMemory + ?Sized>(
        &mut self,
        table: Mfn,
        index: usize,
        dom: DomId,
        mfn: Mfn,
        writable: bool,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let slot = self.check_grant_slot(table, index, dom)?;
        let entry = mem.read(slot, index);
        if entry & pte::PRESENT == 0
            || entry & bits::GNTTAB == 0
            || entry_mfn(entry) != mfn
            || (entry & pte::WRITABLE != 0) != writable
        {
            return Err(MmError::NotReferenced);
        }
        mem.write(slot, index, 0);
        self.put_grant_refs(mfn, entry & pte::WRITABLE != 0, mem)
    }

    /// Drops a grant mapping's references whose entry is already gone (its table was
    /// freed with a dying domain, or the caller cleared it).
    pub fn put_grant_refs<M: PageTableMemory + ?Sized>(
        &mut self,
        mfn: Mfn,
        writable: bool,
        mem: &mut M,
    ) -> Result<(), MmError> {
        if writable {
            self.put_page_and_type(mfn, mem)
        } else {
            self.put_page(mfn)
        }
    }

    fn check_grant_slot(
        &self,
        table: Mfn,
        index: usize,
        dom: DomId,
    ) -> Result<CheckedFrame, MmError> {
        self.checked_table(table, index, dom, |ty| ty == PageType::L1)
    }

    /// The key to entry `index` of `table`: a validated, referenced page table of `dom`
    /// whose type `ok` accepts.
    fn checked_table(
        &self,
        table: Mfn,
        index: usize,
        dom: DomId,
        ok: impl Fn(PageType) -> bool,
    ) -> Result<CheckedFrame, MmError> {
        if index >= ENTRIES {
            return Err(MmError::BadIndex);
        }
        self.checked_held(table, dom, |t| ok(t.ty) && t.validated)
    }

    /// Drops everything a dying domain holds (Xen's `domain_relinquish_resources`): its pins
    /// first, then, top level first, the entries of every table still validated because
    /// something outside holds a reference to it. Frames left unreferenced become free and
    /// are returned; the others stay the domain's until their last reference goes.
    pub fn release_domain<M: PageTableMemory + ?Sized>(
        &mut self,
        dom: DomId,
        mem: &mut M,
    ) -> Released {
        let owned = Owner::Domain(dom);
        for i in 0..self.frames.len() {
            let frame = &mut self.frames[i];
            if frame.owner == owned && frame.type_info.pinned {
                frame.type_info.pinned = false;
                let dropped = self.put_page_and_type(Mfn(i as u64), mem);
                debug_assert!(dropped.is_ok());
            }
        }
        for level in Level::ALL.iter().rev() {
            for i in 0..self.frames.len() {
                let frame = &mut self.frames[i];
                let t = &mut frame.type_info;
                if frame.owner == owned
                    && t.ty == level.page_type()
                    && t.validated
                    && t.type_count > 0
                {
                    // The type reference stays with its holder; dropping it later finds
                    // nothing left to devalidate.
                    t.validated = false;
                    self.devalidate_table(Mfn(i as u64), *level, mem);
                }
            }
        }
        let mut released = Released::default();
        for (i, frame) in self.frames.iter_mut().enumerate() {
            if frame.owner != owned {
                continue;
            }
            if frame.is_unreferenced() {
                *frame = FrameInfo::FREE;
                released.freed.push(Mfn(i as u64));
            } else {
                released.still_referenced.push(Mfn(i as u64));
            }
        }
        released
    }

    fn index(&self, mfn: Mfn) -> Result<usize, MmError> {
        usize::try_from(mfn.0)
            .ok()
            .filter(|&i| i < self.frames.len())
            .ok_or(MmError::InvalidMfn)
    }

    fn frame(&self, mfn: Mfn) -> Result<&FrameInfo, MmError> {
        let i = self.index(mfn)?;
        Ok(&self.frames[i])
    }

    fn frame_mut(&mut self, mfn: Mfn) -> Result<&mut FrameInfo, MmError> {
        let i = self.index(mfn)?;
        Ok(&mut self.frames[i])
    }

    /// Checks one entry of `table` (a level-`level` table of `dom`) and takes the references
    /// it needs.
    fn get_entry_refs<M: PageTableMemory + ?Sized>(
        &mut self,
        table: Mfn,
        level: Level,
        entry: u64,
        dom: DomId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        match validate_entry(level, entry)? {
            EntryKind::NotPresent => Ok(()),
            EntryKind::Frame { mfn, writable } => self.get_mapping_refs(mfn, writable, dom, mem),
            EntryKind::Table { mfn, .. } if mfn == table => Err(MmError::LinearPageTable),
            EntryKind::Table { mfn, level } => {
                self.get_page_and_type(mfn, dom, level.page_type(), mem)
            }
        }
    }

    /// The references for an L1 mapping of `mfn`. The one place where a guest gets a
    /// writable mapping.
    fn get_mapping_refs<M: PageTableMemory + ?Sized>(
        &mut self,
        mfn: Mfn,
        writable: bool,
        dom: DomId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        match self.frame(mfn).map(|f| f.owner) {
            Ok(Owner::Domain(owner)) if owner == dom => {}
            Err(_) | Ok(Owner::Io) => return Err(MmError::IoNotPermitted),
            Ok(_) => return Err(MmError::ForeignFrame),
        }
        self.get_page(mfn, dom)?;
        if writable {
            if let Err(e) = self.get_page_type(mfn, dom, PageType::Writable, mem) {
                let undone = self.put_page(mfn);
                debug_assert!(undone.is_ok());
                return Err(match e {
                    MmError::TypeConflict => MmError::WritableTable,
                    e => e,
                });
            }
        }
        Ok(())
    }

    /// Drops the references of an entry that was accepted by `get_entry_refs`.
    fn put_entry_refs<M: PageTableMemory + ?Sized>(
        &mut self,
        level: Level,
        entry: u64,
        mem: &mut M,
    ) {
        if level == Level::L1 && entry & bits::GNTTAB != 0 && entry & pte::PRESENT != 0 {
            // A grant mapping's references belong to the maptrack, which drops them when
            // the grant is unmapped (or its holder dies).
            return;
        }
        let dropped = match validate_entry(level, entry) {
            Ok(EntryKind::NotPresent) => Ok(()),
            Ok(EntryKind::Frame { mfn, writable }) => {
                if writable {
                    self.put_page_and_type(mfn, mem)
                } else {
                    self.put_page(mfn)
                }
            }
            Ok(EntryKind::Table { mfn, .. }) => self.put_page_and_type(mfn, mem),
            // A validated table holds only accepted entries: it is read-only to the guest.
            Err(e) => Err(e),
        };
        debug_assert!(dropped.is_ok(), "{level:?} entry {entry:#x}: {dropped:?}");
    }

    /// Takes the references of every entry of a table getting type `level`; on failure
    /// drops those taken so far. Recursion: at most one table per level is being validated
    /// at a time, so the depth is bounded by 4.
    fn validate_table<M: PageTableMemory + ?Sized>(
        &mut self,
        table: Mfn,
        level: Level,
        dom: DomId,
        mem: &mut M,
    ) -> Result<(), MmError> {
        let checked = self.checked(table)?;
        for i in 0..ENTRIES {
            if !is_guest_slot(level, i) {
                continue;
            }
            let entry = mem.read(checked, i);
            if let Err(e) = self.get_entry_refs(table, level, entry, dom, mem) {
                for j in (0..i).rev() {
                    if is_guest_slot(level, j) {
                        let taken = mem.read(checked, j);
                        self.put_entry_refs(level, taken, mem);
                    }
                }
                return Err(e);
            }
            let adjusted = guest_entry(entry);
            if adjusted != entry {
                mem.write(checked, i, adjusted);
            }
        }
        if level == Level::L4 {
            // Whatever the guest wrote there is never used: the hypervisor's entries replace it.
            for (slot, &entry) in HYPERVISOR_L4_SLOTS.zip(self.hypervisor_l4.iter()) {
                mem.write(checked, slot, entry);
            }
        }
        Ok(())
    }

    /// Drops the references of every entry of a table losing type `level`.
    fn devalidate_table<M: PageTableMemory + ?Sized>(
        &mut self,
        table: Mfn,
        level: Level,
        mem: &mut M,
    ) {
        let Ok(checked) = self.checked(table) else {
            debug_assert!(false, "devalidating {table}, which no domain owns");
            return;
        };
        for i in 0..ENTRIES {
            if is_guest_slot(level, i) {
                let entry = mem.read(checked, i);
                self.put_entry_refs(level, entry, mem);
            }
        }
        if level == Level::L4 {
            // The frame may become writable again: take the hypervisor's entries out of it.
            for slot in HYPERVISOR_L4_SLOTS {
                mem.write(checked, slot, 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const P: u64 = pte::PRESENT;
    const RW: u64 = pte::WRITABLE;
    const US: u64 = pte::USER;
    const D1: DomId = DomId(1);
    const D2: DomId = DomId(2);
    const NR_FRAMES: usize = 64;

    /// Guest memory: every frame's 512 entries, zero unless written.
    #[derive(Default)]
    struct Mem(HashMap<(u64, usize), u64>);

    impl Mem {
        fn get(&self, table: Mfn, index: usize) -> u64 {
            self.0.get(&(table.0, index)).copied().unwrap_or(0)
        }
        fn set(&mut self, table: Mfn, index: usize, value: u64) {
            if value == 0 {
                self.0.remove(&(table.0, index));
            } else {
                self.0.insert((table.0, index), value);
            }
        }
    }

    /// Frames `table()` gives to a domain: the only ones the frame table may ever touch
    /// (the hypervisor's, I/O, free frames and those beyond the table never).
    fn assert_domain_frame(mfn: Mfn) {
        assert!(
            mfn.0 < 48,
            "the frame table touched {mfn}, which no domain owns"
        );
    }

    impl PageTableMemory for Mem {
        fn read(&self, table: CheckedFrame, index: usize) -> u64 {
            assert_domain_frame(table.mfn);
            self.get(table.mfn, index)
        }
        fn write(&mut self, table: CheckedFrame, index: usize, value: u64) {
            assert_domain_frame(table.mfn);
            self.set(table.mfn, index, value)
        }
    }

    fn e(mfn: u64, flags: u64) -> u64 {
        (mfn << 12) | flags
    }

    /// Frames 0..32 are d1's, 32..48 d2's, 48..50 the hypervisor's, 50..52 I/O, the rest
    /// free.
    fn table() -> FrameTable {
        let mut ft = FrameTable::new(NR_FRAMES);
        for m in 0..NR_FRAMES as u64 {
            let owner = match m {
                0..32 => Owner::Domain(D1),
                32..48 => Owner::Domain(D2),
                48..50 => Owner::Hypervisor,
                50..52 => Owner::Io,
                _ => Owner::Free,
            };
            ft.assign(Mfn(m), owner).unwrap();
        }
        ft
    }

    fn info(ft: &FrameTable, m: u64) -> FrameInfo {
        *ft.info(Mfn(m)).unwrap()
    }

    fn assert_all_clear(ft: &FrameTable) {
        for (mfn, f) in ft.frames() {
            assert_eq!(f.count, 0, "{mfn}: {f:?}");
            assert_eq!(f.type_info, TypeInfo::UNTYPED, "{mfn}: {f:?}");
        }
    }

    /// L4 1 -> L3 2 -> L2 3 -> L1 4 -> frame 10 (writable) and frame 11 (read-only), plus a
    /// read-only mapping of the L1 itself (as a guest's direct map has).
    fn build_tree(mem: &mut Mem) {
        mem.set(Mfn(1), 0, e(2, P | RW));
        mem.set(Mfn(2), 0, e(3, P | RW));
        mem.set(Mfn(3), 0, e(4, P | RW));
        mem.set(Mfn(4), 0, e(10, P | RW));
        mem.set(Mfn(4), 1, e(11, P));
        mem.set(Mfn(4), 2, e(4, P));
    }

    fn typed(ty: PageType, type_count: u32, pinned: bool) -> TypeInfo {
        TypeInfo {
            ty,
            type_count,
            validated: true,
            pinned,
        }
    }

    /// Recomputes every count from the tables' contents and the pins and checks the frame
    /// table agrees, and that no frame in use as a page table or descriptor table has a
    /// writable mapping. `held` are the references taken with `get_page_and_type` outside
    /// tables and pins (loaded base pointers).
    fn audit_with(ft: &FrameTable, mem: &Mem, held: &[Mfn]) {
        let mut count = vec![0u32; ft.len()];
        let mut type_count = vec![0u32; ft.len()];
        for m in held {
            count[m.0 as usize] += 1;
            type_count[m.0 as usize] += 1;
        }
        // The non-zero entries of each frame (reading all 512 of every table is slow).
        let mut contents = HashMap::<u64, Vec<(usize, u64)>>::new();
        for (&(table, index), &entry) in &mem.0 {
            contents.entry(table).or_default().push((index, entry));
        }
        for (mfn, f) in ft.frames() {
            let t = f.type_info;
            assert_eq!(t.ty == PageType::None, t.type_count == 0, "{mfn}: {f:?}");
            assert!(f.count >= t.type_count, "{mfn}: {f:?}");
            if f.count > 0 {
                assert!(matches!(f.owner, Owner::Domain(_)), "{mfn}: {f:?}");
            }
            if t.pinned {
                assert!(t.ty.is_page_table(), "{mfn}: {f:?}");
                count[mfn.0 as usize] += 1;
                type_count[mfn.0 as usize] += 1;
            }
            let Some(level) = t.ty.level() else { continue };
            assert!(t.validated, "{mfn}: {f:?}");
            let entries = contents.get(&mfn.0).map(Vec::as_slice).unwrap_or(&[]);
            for &(i, entry) in entries {
                if !is_guest_slot(level, i) {
                    assert_eq!(entry, 0, "{mfn} hypervisor slot {i}");
                    continue;
                }
                let kind = validate_entry(level, entry)
                    .unwrap_or_else(|err| panic!("{mfn}[{i}] = {entry:#x}: {err:?}"));
                if entry & P != 0 {
                    assert_ne!(entry & US, 0, "{mfn}[{i}] = {entry:#x}");
                }
                match kind {
                    EntryKind::NotPresent => {}
                    EntryKind::Frame {
                        mfn: target,
                        writable,
                    } => {
                        let tf = ft.info(target).unwrap();
                        assert_eq!(tf.owner, f.owner, "{mfn}[{i}] maps {target}");
                        count[target.0 as usize] += 1;
                        if writable {
                            assert_eq!(
                                tf.type_info.ty,
                                PageType::Writable,
                                "{mfn}[{i}] maps {target} writable: {tf:?}"
                            );
                            type_count[target.0 as usize] += 1;
                        }
                    }
                    EntryKind::Table { mfn: target, level } => {
                        let tf = ft.info(target).unwrap();
                        assert_eq!(tf.owner, f.owner);
                        assert_eq!(tf.type_info.ty, level.page_type(), "{mfn}[{i}] -> {target}");
                        assert!(tf.type_info.validated);
                        count[target.0 as usize] += 1;
                        type_count[target.0 as usize] += 1;
                    }
                }
            }
        }
        for (mfn, f) in ft.frames() {
            let i = mfn.0 as usize;
            assert_eq!(f.count, count[i], "{mfn}: {f:?}");
            assert_eq!(f.type_info.type_count, type_count[i], "{mfn}: {f:?}");
        }
    }

    fn audit(ft: &FrameTable, mem: &Mem) {
        audit_with(ft, mem, &[]);
    }

    #[test]
    fn pinning_a_tree_validates_every_level_and_unpinning_releases_it() {
        let mut ft = table();
        let mut mem = Mem::default();
        build_tree(&mut mem);
        ft.pin(Mfn(1), D1, Level::L4, &mut mem).unwrap();
        assert_eq!(info(&ft, 1).type_info, typed(PageType::L4, 1, true));
        assert_eq!(info(&ft, 1).count, 1);
        assert_eq!(info(&ft, 2).type_info, typed(PageType::L3, 1, false));
        assert_eq!(info(&ft, 3).type_info, typed(PageType::L2, 1, false));
        assert_eq!(info(&ft, 4).type_info, typed(PageType::L1, 1, false));
        assert_eq!(
            info(&ft, 4).count,
            2,
            "entry in the L2 + its own read-only mapping"
        );
        assert_eq!(info(&ft, 10).type_info, typed(PageType::Writable, 1, false));
        assert_eq!(info(&ft, 10).count, 1);
        assert_eq!(info(&ft, 11).type_info, TypeInfo::UNTYPED);
        assert_eq!(info(&ft, 11).count, 1);
        // Accepted entries got the user bit.
        assert_eq!(mem.get(Mfn(4), 0), e(10, P | RW | US));
        assert_eq!(mem.get(Mfn(1), 0), e(2, P | RW | US));
        audit(&ft, &mem);

        ft.unpin(Mfn(1), D1, &mut mem).unwrap();
        assert_all_clear(&ft);
    }

    #[test]
    fn shared_subtrees_are_counted_once_per_reference() {
        let mut ft = table();
        let mut mem = Mem::default();
        build_tree(&mut mem);
        // A second L4 sharing the L3; the L3 also pinned on its own.
        mem.set(Mfn(5), 3, e(2, P));
        ft.pin(Mfn(1), D1, Level::L4, &mut mem).unwrap();
        ft.pin(Mfn(5), D1, Level::L4, &mut mem).unwrap();
        ft.pin(Mfn(2), D1, Level::L3, &mut mem).unwrap();
        assert_eq!(info(&ft, 2).type_info, typed(PageType::L3, 3, true));
        assert_eq!(info(&ft, 2).count, 3);
        audit(&ft, &mem);
        ft.unpin(Mfn(1), D1, &mut mem).unwrap();
        ft.unpin(Mfn(2), D1, &mut mem).unwrap();
        assert_eq!(info(&ft, 2).type_info, typed(PageType::L3, 1, false));
        assert_eq!(info(&ft, 10).type_info.ty, PageType::Writable);
        audit(&ft, &mem);
        ft.unpin(Mfn(5), D1, &mut mem).unwrap();
        assert_all_clear(&ft);
    }

    #[test]
    fn a_page_table_is_never_mapped_writable() {
        // Mapping first, then pinning: the writable mapping of the L2 fails validation.
        let mut ft = table();
        let mut mem = Mem::default();
        build_tree(&mut mem);
        mem.set(Mfn(4), 7, e(3, P | RW));
        assert_eq!(
            ft.pin(Mfn(1), D1, Level::L4, &mut mem),
            Err(MmError::WritableTable)
        );
        assert_all_clear(&ft);

        // A writable mapping of the L1 in itself.
        mem.set(Mfn(4), 7, e(4, P | RW));
        assert_eq!(
            ft.pin(Mfn(1), D1, Level::L4, &mut mem),
            Err(MmError::WritableTable)
        );
        assert_all_clear(&ft);

        // Pinning first, then mapping: the update is refused and the entry left alone.
        mem.set(Mfn(4), 7, 0);
        ft.pin(Mfn(1), D1, Level::L4, &mut mem).unwrap();
        for table in [1, 2, 3, 4] {
            assert_eq!(
                ft.update_entry(Mfn(4), 7, e(table, P | RW), D1, &mut mem),
                Err(MmError::WritableTable)
            );
        }
        assert_eq!(mem.get(Mfn(4), 7), 0);
        // Read-only is fine.
        assert_eq!(
            ft.update_entry(Mfn(4), 7, e(3, P), D1, &mut mem),
            Ok(UpdateOutcome::Validated(Level::L1))
        );
        audit(&ft, &mem);

        // A frame mapped writable cannot become a table.
        assert_eq!(
            ft.pin(Mfn(10), D1, Level::L1, &mut mem),
            Err(MmError::TypeConflict)
        );
        assert_eq!(
            ft.update_entry(Mfn(3), 1, e(10, P), D1, &mut mem),
            Err(MmError::TypeConflict)
        );
        assert_eq!(MmError::WritableTable.errno(), XenErrno::Ebusy);
        audit(&ft, &mem);
        ft.unpin(Mfn(1), D1, &mut mem).unwrap();
        assert_all_clear(&ft);
    }

    #[test]
    fn descriptor_pages_are_never_mapped_writable() {
        let mut ft = table();
        let mut mem = Mem::default();
        ft.get_page_and_type(Mfn(20), D1, PageType::SegDesc, &mut mem)
            .unwrap();
        mem.set(Mfn(4), 0, e(20, P | RW));
        assert_eq!(
            ft.pin(Mfn(4), D1, Level::L1, &mut mem),
            Err(MmError::WritableTable)
        );
        assert_eq!(
            ft.update_entry(Mfn(20), 0, 0, D1, &mut mem),
            Err(MmError::TypeConflict)
        );
        ft.put_page_and_type(Mfn(20), &mut mem).unwrap();
        ft.pin(Mfn(4), D1, Level::L1, &mut mem).unwrap();
        assert_eq!(
            ft.get_page_and_type(Mfn(20), D1, PageType::SegDesc, &mut mem),
            Err(MmError::TypeConflict)
        );
        ft.unpin(Mfn(4), D1, &mut mem).unwrap();
        assert_all_clear(&ft);
    }

    #[test]
    fn other_domains_frames_are_refused() {
        let mut ft = table();
        let mut mem = Mem::default();
        build_tree(&mut mem);
        ft.pin(Mfn(1), D1, Level::L4, &mut mem).unwrap();
        for (target, err) in [
            (32, MmError::ForeignFrame),     // d2's
            (48, MmError::ForeignFrame),     // the hypervisor's
            (60, MmError::ForeignFrame),     // free
            (50, MmError::IoNotPermitted),   // device memory
            (1000, MmError::IoNotPermitted), // outside RAM
        ] {
            for flags in [P, P | RW] {
                assert_eq!(
                    ft.update_entry(Mfn(4), 9, e(target, flags), D1, &mut mem),
                    Err(err),
                    "{target}"
                );
            }
        }
        assert_eq!(MmError::ForeignFrame.errno(), XenErrno::Ebusy);
        assert_eq!(MmError::IoNotPermitted.errno(), XenErrno::Eperm);
        // Upper levels: d2's table, and a table outside the frame table.
        assert_eq!(
            ft.update_entry(Mfn(3), 9, e(33, P), D1, &mut mem),
            Err(MmError::NotOwner)
        );
        assert_eq!(
            ft.update_entry(Mfn(3), 9, e(1000, P), D1, &mut mem),
            Err(MmError::InvalidMfn)
        );
        // d2 cannot update, pin or unpin d1's tables.
        assert_eq!(
            ft.update_entry(Mfn(4), 9, 0, D2, &mut mem),
            Err(MmError::NotOwner)
        );
        assert_eq!(
            ft.pin(Mfn(4), D2, Level::L1, &mut mem),
            Err(MmError::NotOwner)
        );
        assert_eq!(ft.unpin(Mfn(1), D2, &mut mem), Err(MmError::NotOwner));
        assert_eq!(
            ft.update_entry(Mfn(1000), 0, 0, D1, &mut mem),
            Err(MmError::InvalidMfn)
        );
        audit(&ft, &mem);
        ft.unpin(Mfn(1), D1, &mut mem).unwrap();
        assert_all_clear(&ft);

        // A foreign frame deep in a tree fails the whole pin.
        mem.set(Mfn(4), 300, e(40, P));
        assert_eq!(
            ft.pin(Mfn(1), D1, Level::L4, &mut mem),
            Err(MmError::ForeignFrame)
        );
        assert_all_clear(&ft);
    }

    #[test]
    fn hypervisor_l4_slots_are_not_guest_controlled() {
        let mut ft = table();
        let mut mem = Mem::default();
        let mut xen = [0u64; HYPERVISOR_L4_SLOT_COUNT];
        for (k, slot) in xen.iter_mut().enumerate() {
            *slot = e(48, P | RW) + ((k as u64) << 12);
        }
        ft.set_hypervisor_l4_slots(xen);
        build_tree(&mut mem);
        // Garbage the guest left there, even a reference to a frame it owns, is ignored
        // and replaced.
        mem.set(Mfn(1), 256, e(2, P | RW));
        mem.set(Mfn(1), 271, u64::MAX);
        ft.pin(Mfn(1), D1, Level::L4, &mut mem).unwrap();
        for (k, slot) in HYPERVISOR_L4_SLOTS.enumerate() {
            assert_eq!(mem.get(Mfn(1), slot), xen[k]);
        }
        assert_eq!(info(&ft, 2).type_info.type_count, 1);
        for slot in [256, 260, 271] {
            assert_eq!(
                ft.update_entry(Mfn(1), slot, e(5, P), D1, &mut mem),
                Err(MmError::HypervisorSlot)
            );
            assert_eq!(
                ft.update_entry(Mfn(1), slot, 0, D1, &mut mem),
                Err(MmError::HypervisorSlot)
            );
        }
        assert_eq!(
            ft.update_entry(Mfn(1), 512, 0, D1, &mut mem),
            Err(MmError::BadIndex)
        );
        // Slots 255 and 272 are the guest's; the same slots of lower levels too.
        ft.update_entry(Mfn(1), 255, e(5, P), D1, &mut mem).unwrap();
        ft.update_entry(Mfn(1), 272, e(5, P), D1, &mut mem).unwrap();
        ft.update_entry(Mfn(2), 256, e(6, P), D1, &mut mem).unwrap();
        assert_eq!(info(&ft, 5).type_info, typed(PageType::L3, 2, false));
        ft.unpin(Mfn(1), D1, &mut mem).unwrap();
        // Devalidation takes the hypervisor's entries out of the frame.
        for slot in HYPERVISOR_L4_SLOTS {
            assert_eq!(mem.get(Mfn(1), slot), 0);
        }
        assert_all_clear(&ft);
    }

    #[test]
    fn superpages_and_bad_flags_are_refused() {
        let mut ft = table();
        let mut mem = Mem::default();
        mem.set(Mfn(3), 5, e(512, P | RW | pte::HUGE));
        assert_eq!(
            ft.pin(Mfn(3), D1, Level::L2, &mut mem),
            Err(MmError::Superpage)
        );
        mem.set(Mfn(3), 5, 0);
        ft.pin(Mfn(3), D1, Level::L2, &mut mem).unwrap();
        assert_eq!(
            ft.update_entry(Mfn(3), 5, e(4, P | pte::HUGE), D1, &mut mem),
            Err(MmError::Superpage)
        );
        assert_eq!(
            ft.update_entry(Mfn(3), 5, e(4, P | pte::PCD), D1, &mut mem),
            Err(MmError::BadFlags)
        );
        ft.pin(Mfn(4), D1, Level::L1, &mut mem).unwrap();
        for bad in [pte::PCD, pte::PWT, pte::HUGE, bits::GNTTAB] {
            assert_eq!(
                ft.update_entry(Mfn(4), 0, e(10, P | bad), D1, &mut mem),
                Err(MmError::BadFlags)
            );
        }
        assert_eq!(MmError::Superpage.errno(), XenErrno::Einval);
        audit(&ft, &mem);
        ft.unpin(Mfn(3), D1, &mut mem).unwrap();
        ft.unpin(Mfn(4), D1, &mut mem).unwrap();
        assert_all_clear(&ft);
    }

    #[test]
    fn linear_and_circular_references_are_refused() {
        let mut ft = table();
        let mut mem = Mem::default();
        // Self references at every upper level.
        for (m, level) in [(1, Level::L4), (2, Level::L3), (3, Level::L2)] {
            mem.set(Mfn(m), 100, e(m, P));
            assert_eq!(
                ft.pin(Mfn(m), D1, level, &mut mem),
                Err(MmError::LinearPageTable)
            );
            mem.set(Mfn(m), 100, 0);
        }
        assert_all_clear(&ft);

        // A cycle L4 1 -> L3 2 -> L2 3 -> back to the L3 (as an L1) or the L4.
        build_tree(&mut mem);
        mem.set(Mfn(3), 1, e(2, P));
        assert_eq!(
            ft.pin(Mfn(1), D1, Level::L4, &mut mem),
            Err(MmError::TypeConflict)
        );
        assert_all_clear(&ft);
        mem.set(Mfn(3), 1, e(1, P));
        assert_eq!(
            ft.pin(Mfn(1), D1, Level::L4, &mut mem),
            Err(MmError::TypeConflict)
        );
        assert_all_clear(&ft);
        mem.set(Mfn(3), 1, 0);

        // Through updates once validated.
        ft.pin(Mfn(1), D1, Level::L4, &mut mem).unwrap();
        assert_eq!(
            ft.update_entry(Mfn(1), 1, e(1, P), D1, &mut mem),
            Err(MmError::LinearPageTable)
        );
        assert_eq!(
            ft.update_entry(Mfn(2), 1, e(1, P), D1, &mut mem),
            Err(MmError::TypeConflict)
        );
        assert_eq!(
            ft.update_entry(Mfn(3), 1, e(2, P), D1, &mut mem),
            Err(MmError::TypeConflict)
        );
        audit(&ft, &mem);
        ft.unpin(Mfn(1), D1, &mut mem).unwrap();
        assert_all_clear(&ft);
    }

    #[test]
    fn a_failed_validation_leaves_no_references() {
        let mut ft = table();
        let mut mem = Mem::default();
        build_tree(&mut mem);
        // Many good entries at every level, then one bad entry in the last L1.
        for i in 1..10 {
            mem.set(Mfn(1), i, e(12 + i as u64 % 2, P));
            mem.set(Mfn(4), 10 + i, e(20 + i as u64, P | RW));
        }
        mem.set(Mfn(12), 0, e(3, P)); // L3 12 -> the L2
        mem.set(Mfn(13), 0, e(3, P)); // L3 13 -> the L2
        mem.set(Mfn(4), 400, e(2, P | RW)); // the L3, writable
        assert_eq!(
            ft.pin(Mfn(1), D1, Level::L4, &mut mem),
            Err(MmError::WritableTable)
        );
        assert_all_clear(&ft);
        // Fixed, it pins.
        mem.set(Mfn(4), 400, e(2, P));
        ft.pin(Mfn(1), D1, Level::L4, &mut mem).unwrap();
        assert_eq!(info(&ft, 3).type_info.type_count, 3);
        audit(&ft, &mem);
        ft.unpin(Mfn(1), D1, &mut mem).unwrap();
        assert_all_clear(&ft);
    }

    #[test]
    fn updates_take_new_references_before_dropping_old_ones() {
        let mut ft = table();
        let mut mem = Mem::default();
        build_tree(&mut mem);
        ft.pin(Mfn(1), D1, Level::L4, &mut mem).unwrap();
        // Rewriting the only entry naming the L1 keeps it validated.
        assert_eq!(
            ft.update_entry(Mfn(3), 0, e(4, P), D1, &mut mem),
            Ok(UpdateOutcome::Validated(Level::L2))
        );
        assert_eq!(info(&ft, 4).type_info, typed(PageType::L1, 1, false));
        // Writable -> read-only: the frame loses its writable type.
        ft.update_entry(Mfn(4), 0, e(10, P), D1, &mut mem).unwrap();
        assert_eq!(info(&ft, 10).type_info, TypeInfo::UNTYPED);
        assert_eq!(info(&ft, 10).count, 1);
        // Now it can become a table, and mapping it writable is refused.
        ft.update_entry(Mfn(3), 2, e(10, P), D1, &mut mem).unwrap();
        assert_eq!(info(&ft, 10).type_info.ty, PageType::L1);
        assert_eq!(
            ft.update_entry(Mfn(4), 0, e(10, P | RW), D1, &mut mem),
            Err(MmError::WritableTable)
        );
        audit(&ft, &mem);
        // Clearing the L3's entry devalidates the L2 and everything under it.
        ft.update_entry(Mfn(2), 0, 0, D1, &mut mem).unwrap();
        for m in [3, 4, 10, 11] {
            assert_eq!(info(&ft, m).type_info, TypeInfo::UNTYPED, "{m}");
            assert_eq!(info(&ft, m).count, 0, "{m}");
        }
        // The L2 is an ordinary page again.
        assert_eq!(
            ft.update_entry(Mfn(3), 0, u64::MAX, D1, &mut mem),
            Ok(UpdateOutcome::PlainWrite)
        );
        audit(&ft, &mem);
        ft.unpin(Mfn(1), D1, &mut mem).unwrap();
        assert_all_clear(&ft);
    }

    #[test]
    fn pin_rules() {
        let mut ft = table();
        let mut mem = Mem::default();
        ft.pin(Mfn(3), D1, Level::L2, &mut mem).unwrap();
        assert_eq!(
            ft.pin(Mfn(3), D1, Level::L2, &mut mem),
            Err(MmError::AlreadyPinned)
        );
        assert_eq!(
            ft.pin(Mfn(3), D1, Level::L1, &mut mem),
            Err(MmError::TypeConflict)
        );
        assert_eq!(MmError::AlreadyPinned.errno(), XenErrno::Einval);
        assert_eq!(ft.unpin(Mfn(4), D1, &mut mem), Err(MmError::NotPinned));
        assert_eq!(MmError::NotPinned.errno(), XenErrno::Einval);
        // A pinned frame cannot be given away, nor its pin reference dropped by a put.
        assert_eq!(ft.assign(Mfn(3), Owner::Domain(D2)), Err(MmError::Busy));
        assert_eq!(
            ft.put_page_type(Mfn(3), &mut mem),
            Err(MmError::NotReferenced)
        );
        assert_eq!(ft.put_page(Mfn(3)), Err(MmError::NotReferenced));
        ft.unpin(Mfn(3), D1, &mut mem).unwrap();
        assert_eq!(ft.unpin(Mfn(3), D1, &mut mem), Err(MmError::NotPinned));
        assert_eq!(ft.put_page(Mfn(3)), Err(MmError::NotReferenced));
        assert_all_clear(&ft);
        ft.assign(Mfn(3), Owner::Domain(D2)).unwrap();
        assert_eq!(
            ft.pin(Mfn(3), D1, Level::L2, &mut mem),
            Err(MmError::NotOwner)
        );
        assert_eq!(
            ft.pin(Mfn(999), D1, Level::L2, &mut mem),
            Err(MmError::InvalidMfn)
        );
    }

    #[test]
    fn plain_writes_are_done_only_for_the_domains_own_untyped_or_writable_frames() {
        let mut ft = table();
        let mut mem = Mem::default();
        assert_eq!(
            ft.update_entry(Mfn(7), 3, 0x1234, D1, &mut mem),
            Ok(UpdateOutcome::PlainWrite)
        );
        assert_eq!(mem.get(Mfn(7), 3), 0x1234, "written as given");
        // Another domain's frame, the hypervisor's, I/O, free or beyond the table: refused,
        // and nothing read or written.
        for (m, err) in [
            (33, MmError::NotOwner),
            (48, MmError::NotOwner),
            (50, MmError::NotOwner),
            (60, MmError::NotOwner),
            (1 << 40, MmError::InvalidMfn),
        ] {
            assert_eq!(ft.update_entry(Mfn(m), 3, 0x99, D1, &mut mem), Err(err));
            assert_eq!(mem.get(Mfn(m), 3), 0);
        }
        assert_eq!(
            ft.update_entry(Mfn(7), 512, 0x99, D1, &mut mem),
            Err(MmError::BadIndex)
        );
        // Mapped writable: still a plain write.
        mem.set(Mfn(4), 0, e(7, P | RW));
        ft.pin(Mfn(4), D1, Level::L1, &mut mem).unwrap();
        assert_eq!(
            ft.update_entry(Mfn(7), 3, 0x1234, D1, &mut mem),
            Ok(UpdateOutcome::PlainWrite)
        );
        ft.unpin(Mfn(4), D1, &mut mem).unwrap();
        assert_all_clear(&ft);
    }

    #[test]
    fn the_builder_writes_only_unused_frames_of_the_domain() {
        let mut ft = table();
        let mut mem = Mem::default();
        ft.write_unused(Mfn(7), D1, 8, &[1, 2, 3], &mut mem)
            .unwrap();
        assert_eq!(mem.get(Mfn(7), 1), 0x03_02_01);
        // Not the domain's, not RAM, referenced or typed, or past the page: refused, and
        // nothing written.
        assert_eq!(
            ft.write_unused(Mfn(33), D1, 0, &[9], &mut mem),
            Err(MmError::NotOwner)
        );
        assert_eq!(
            ft.write_unused(Mfn(48), D1, 0, &[9], &mut mem),
            Err(MmError::NotOwner)
        );
        assert_eq!(
            ft.write_unused(Mfn(50), D1, 0, &[9], &mut mem),
            Err(MmError::NotOwner)
        );
        ft.pin(Mfn(4), D1, Level::L1, &mut mem).unwrap();
        assert_eq!(
            ft.write_unused(Mfn(4), D1, 0, &[9], &mut mem),
            Err(MmError::Busy)
        );
        let held = ft.get_page_ref(Mfn(5), D1).unwrap();
        assert_eq!(
            ft.write_unused(Mfn(5), D1, 0, &[9], &mut mem),
            Err(MmError::Busy)
        );
        assert_eq!(
            ft.write_unused(Mfn(7), D1, 4095, &[9, 9], &mut mem),
            Err(MmError::BadIndex)
        );
        assert_eq!(
            ft.write_unused(Mfn(7), D1, usize::MAX, &[9], &mut mem),
            Err(MmError::BadIndex)
        );
        for m in [33, 48, 50, 4, 5] {
            assert_eq!(mem.get(Mfn(m), 0), 0);
        }
        ft.put_page_ref(held).unwrap();
        ft.unpin(Mfn(4), D1, &mut mem).unwrap();
        assert_all_clear(&ft);
    }

    #[test]
    fn release_domain_leaves_nothing() {
        let mut ft = table();
        let mut mem = Mem::default();
        build_tree(&mut mem);
        mem.set(Mfn(5), 0, e(2, P));
        mem.set(Mfn(6), 0, e(12, P | RW));
        ft.pin(Mfn(1), D1, Level::L4, &mut mem).unwrap();
        ft.pin(Mfn(5), D1, Level::L4, &mut mem).unwrap();
        ft.pin(Mfn(6), D1, Level::L1, &mut mem).unwrap();
        // A table of d2 that must survive.
        mem.set(Mfn(33), 0, e(34, P | RW));
        ft.pin(Mfn(33), D2, Level::L1, &mut mem).unwrap();
        // A base pointer still loaded: the L4 stays referenced, all under it goes.
        ft.get_page_and_type(Mfn(1), D1, PageType::L4, &mut mem)
            .unwrap();

        let released = ft.release_domain(D1, &mut mem);
        assert_eq!(released.still_referenced, vec![Mfn(1)]);
        assert_eq!(released.freed.len(), 31);
        assert!(!released.freed.contains(&Mfn(1)));
        assert_eq!(ft.frames_of(D1).count(), 1);
        for m in 2..32 {
            assert_eq!(info(&ft, m), FrameInfo::FREE, "{m}");
        }
        assert_eq!(info(&ft, 34).type_info.ty, PageType::Writable);
        // The holder drops its reference; nothing is devalidated twice.
        ft.put_page_and_type(Mfn(1), &mut mem).unwrap();
        assert_eq!(info(&ft, 1).count, 0);
        let released = ft.release_domain(D1, &mut mem);
        assert_eq!(released.freed, vec![Mfn(1)]);
        assert!(released.still_referenced.is_empty());
        assert_eq!(ft.frames_of(D1).count(), 0);

        let released = ft.release_domain(D2, &mut mem);
        assert_eq!(released.freed.len(), 16);
        assert_all_clear(&ft);
        assert_eq!(
            ft.frames().filter(|(_, f)| f.owner == Owner::Free).count(),
            NR_FRAMES - 4
        );
    }

    #[test]
    fn frames_are_enumerable_by_owner() {
        let ft = table();
        let d2: Vec<_> = ft.frames_of(D2).map(|(m, _)| m.0).collect();
        assert_eq!(d2, (32..48).collect::<Vec<_>>());
        assert_eq!(ft.frames_of(DomId(7)).count(), 0);
        assert_eq!(ft.len(), NR_FRAMES);
        assert!(ft.info(Mfn(NR_FRAMES as u64)).is_none());
    }

    #[test]
    fn general_and_type_references_stay_paired() {
        let mut ft = table();
        let mut mem = Mem::default();
        assert_eq!(
            ft.get_page_type(Mfn(7), D1, PageType::Writable, &mut mem),
            Err(MmError::NotReferenced),
            "a type reference needs a general one"
        );
        ft.get_page(Mfn(7), D1).unwrap();
        assert_eq!(ft.get_page(Mfn(40), D1), Err(MmError::NotOwner));
        assert_eq!(ft.assign(Mfn(7), Owner::Free), Err(MmError::Busy));
        ft.get_page_type(Mfn(7), D1, PageType::Writable, &mut mem)
            .unwrap();
        assert_eq!(ft.put_page(Mfn(7)), Err(MmError::NotReferenced));
        ft.put_page_type(Mfn(7), &mut mem).unwrap();
        ft.put_page(Mfn(7)).unwrap();
        assert_eq!(
            ft.put_page_type(Mfn(7), &mut mem),
            Err(MmError::NotReferenced)
        );
        assert_eq!(ft.put_page(Mfn(7)), Err(MmError::NotReferenced));
        assert_eq!(ft.put_page(Mfn(999)), Err(MmError::InvalidMfn));
        assert_all_clear(&ft);
    }

    #[test]
    fn every_error_has_an_errno_and_a_message() {
        use MmError::*;
        for err in [
            InvalidMfn,
            NotOwner,
            ForeignFrame,
            IoNotPermitted,
            TypeConflict,
            WritableTable,
            BadFlags,
            Superpage,
            LinearPageTable,
            HypervisorSlot,
            BadIndex,
            AlreadyPinned,
            NotPinned,
            Busy,
            RefOverflow,
            NotReferenced,
        ] {
            assert!(err.errno().to_hypercall_ret() < 0);
            assert!(!format!("{err}").is_empty());
        }
        assert_eq!(NotOwner.errno(), XenErrno::Einval);
        assert_eq!(TypeConflict.errno(), XenErrno::Einval);
        assert_eq!(HypervisorSlot.errno(), XenErrno::Einval);
    }

    /// xorshift64*: deterministic, dependency-free randomness for the property tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    fn random_entry(rng: &mut Rng) -> u64 {
        if rng.chance(15) {
            return if rng.chance(50) { 0 } else { rng.next() & !P };
        }
        // Mostly d1's frames, sometimes anyone's or none.
        let target = if rng.chance(85) {
            rng.below(32)
        } else {
            rng.below(NR_FRAMES as u64 + 8)
        };
        let mut flags = P | pte::ACCESSED;
        if rng.chance(50) {
            flags |= RW;
        }
        if rng.chance(30) {
            flags |= US;
        }
        for (percent, bit) in [
            (4, pte::HUGE),
            (2, pte::PCD),
            (2, pte::GLOBAL),
            (2, bits::GNTTAB),
            (5, pte::NX),
        ] {
            if rng.chance(percent) {
                flags |= bit;
            }
        }
        e(target, flags)
    }

    fn random_index(rng: &mut Rng) -> usize {
        match rng.below(4) {
            0 => rng.below(4) as usize,
            1 => 254 + rng.below(20) as usize,
            2 => 508 + rng.below(4) as usize,
            _ => rng.below(ENTRIES as u64) as usize,
        }
    }

    fn random_level(rng: &mut Rng) -> Level {
        Level::ALL[rng.below(4) as usize]
    }

    /// Random guests: updates (with the plain writes they are allowed), pins, unpins and
    /// base pointers loaded and dropped, checking after every step that the counts match the
    /// tables and that no page table is mapped writable; at the end, releasing both domains
    /// (some while base pointers are still loaded) leaves every frame free.
    #[test]
    fn random_operation_sequences_keep_the_invariants() {
        let mut outcomes = HashMap::<&'static str, u32>::new();
        for seed in 1..=60u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut ft = table();
            let mut mem = Mem::default();
            let mut held = Vec::new();
            for _ in 0..400 {
                let dom = if rng.chance(90) { D1 } else { D2 };
                // Mostly d1's frames; sometimes anything, up to random 64-bit numbers (what a
                // hostile `mmu_update` names): the memory asserts none but a domain's frame
                // is ever read or written.
                let frame = Mfn(match rng.below(20) {
                    0..=17 => rng.below(32),
                    18 => rng.below(NR_FRAMES as u64 + 4),
                    _ => rng.next(),
                });
                let name = match rng.below(10) {
                    0..=5 => {
                        let index = random_index(&mut rng);
                        let entry = random_entry(&mut rng);
                        match ft.update_entry(frame, index, entry, dom, &mut mem) {
                            Ok(UpdateOutcome::PlainWrite) => {
                                assert_eq!(mem.get(frame, index), entry, "written as given");
                                "plain write"
                            }
                            Ok(UpdateOutcome::Validated(Level::L1)) => "L1 update",
                            Ok(UpdateOutcome::Validated(Level::L2)) => "L2 update",
                            Ok(UpdateOutcome::Validated(Level::L3)) => "L3 update",
                            Ok(UpdateOutcome::Validated(Level::L4)) => "L4 update",
                            Err(_) => "refused update",
                        }
                    }
                    6 | 7 => match ft.pin(frame, dom, random_level(&mut rng), &mut mem) {
                        Ok(()) => "pin",
                        Err(_) => "refused pin",
                    },
                    8 => match ft.unpin(frame, dom, &mut mem) {
                        Ok(()) => "unpin",
                        Err(_) => "refused unpin",
                    },
                    _ if held.is_empty() || rng.chance(75) => {
                        match ft.get_page_and_type(frame, dom, PageType::L4, &mut mem) {
                            Ok(()) => {
                                held.push(frame);
                                "load base"
                            }
                            Err(_) => "refused base",
                        }
                    }
                    _ => {
                        let i = rng.below(held.len() as u64) as usize;
                        ft.put_page_and_type(held.swap_remove(i), &mut mem).unwrap();
                        "drop base"
                    }
                };
                *outcomes.entry(name).or_default() += 1;
                audit_with(&ft, &mem, &held);
            }
            let deepest = ft
                .frames()
                .filter(|(_, f)| f.type_info.ty == PageType::L4 && f.count > 0)
                .count();
            *outcomes.entry("live L4s at the end").or_default() += deepest as u32;
            if rng.chance(50) {
                // The domain dies with base pointers loaded: those frames stay referenced
                // until the holders let go, everything else is freed.
                let mut expect: Vec<Mfn> = held.clone();
                expect.sort();
                expect.dedup();
                let mut still = Vec::new();
                for dom in [D1, D2] {
                    let released = ft.release_domain(dom, &mut mem);
                    for m in &released.freed {
                        assert_eq!(info(&ft, m.0), FrameInfo::FREE);
                    }
                    still.extend(released.still_referenced);
                }
                still.sort();
                assert_eq!(still, expect, "seed {seed}");
                *outcomes.entry("released with bases").or_default() += held.len() as u32;
            }
            for m in held.drain(..) {
                ft.put_page_and_type(m, &mut mem).unwrap();
            }
            for dom in [D1, D2] {
                let released = ft.release_domain(dom, &mut mem);
                assert!(released.still_referenced.is_empty(), "seed {seed}");
                assert_eq!(ft.frames_of(dom).count(), 0);
            }
            assert_all_clear(&ft);
        }
        // The sequences reached the interesting states.
        for name in [
            "pin",
            "unpin",
            "plain write",
            "refused update",
            "load base",
            "drop base",
        ] {
            assert!(
                outcomes.get(name).copied().unwrap_or(0) > 50,
                "{outcomes:?}"
            );
        }
        for name in ["L1 update", "L2 update", "L3 update", "L4 update"] {
            assert!(
                outcomes.get(name).copied().unwrap_or(0) > 20,
                "{outcomes:?}"
            );
        }
        assert!(outcomes["live L4s at the end"] > 5, "{outcomes:?}");
        assert!(outcomes["released with bases"] > 5, "{outcomes:?}");
    }

    #[test]
    fn frames_the_hypervisor_writes_never_become_tables() {
        let mut ft = table();
        let mut mem = Mem::default();
        // Held (a ring, shared info, a grant frame): it may be mapped writable but never
        // pinned or used as a page or descriptor table.
        let held = ft.get_writable(Mfn(20), D1).unwrap();
        assert_eq!((held.mfn(), held.owner()), (Mfn(20), D1));
        for level in Level::ALL {
            assert_eq!(
                ft.pin(Mfn(20), D1, level, &mut mem),
                Err(MmError::TypeConflict)
            );
        }
        assert!(ft
            .get_page_and_type(Mfn(20), D1, PageType::SegDesc, &mut mem)
            .is_err());
        ft.get_page_and_type(Mfn(20), D1, PageType::Writable, &mut mem)
            .unwrap();
        ft.put_page_and_type(Mfn(20), &mut mem).unwrap();
        // Nor can it change owner while held.
        assert_eq!(ft.assign(Mfn(20), Owner::Domain(D2)), Err(MmError::Busy));
        // Another domain's frame, or one that is a table now, cannot be held.
        assert_eq!(ft.get_writable(Mfn(40), D1), Err(MmError::NotOwner));
        ft.pin(Mfn(21), D1, Level::L1, &mut mem).unwrap();
        assert_eq!(ft.get_writable(Mfn(21), D1), Err(MmError::WritableTable));
        assert_eq!(info(&ft, 21).count, 1, "only the pin's reference");
        ft.unpin(Mfn(21), D1, &mut mem).unwrap();
        // Released, it is an ordinary frame again.
        ft.put_writable(held).unwrap();
        assert_eq!(info(&ft, 20).count, 0);
        assert_eq!(info(&ft, 20).type_info, TypeInfo::UNTYPED);
        ft.pin(Mfn(20), D1, Level::L1, &mut mem).unwrap();
        ft.unpin(Mfn(20), D1, &mut mem).unwrap();
        assert_all_clear(&ft);
    }

    #[test]
    fn non_present_entries_with_bit_62_are_the_guests_not_grant_mappings() {
        let mut ft = table();
        let mut mem = Mem::default();
        build_tree(&mut mem);
        ft.pin(Mfn(1), D1, Level::L4, &mut mem).unwrap();
        // A Linux migration entry (swap type in bits 59..63, the offset inverted below).
        let migration = 0xefff_e7ff_ffac_0002;
        assert_ne!(migration & bits::GNTTAB, 0);
        ft.update_entry(Mfn(4), 7, migration, D1, &mut mem).unwrap();
        assert_eq!(mem.get(Mfn(4), 7), migration);
        // Migration done: the entry becomes a present mapping again.
        ft.update_entry(Mfn(4), 7, e(12, P | RW), D1, &mut mem)
            .unwrap();
        assert_eq!(mem.get(Mfn(4), 7) & !0xfff & !(1 << 63), 12 << 12);
        ft.update_entry(Mfn(4), 7, 0, D1, &mut mem).unwrap();
    }

    #[test]
    fn grant_mappings_take_the_granters_references_and_only_unmap_drops_them() {
        let mut ft = table();
        let mut mem = Mem::default();
        build_tree(&mut mem);
        ft.pin(Mfn(1), D1, Level::L4, &mut mem).unwrap();
        // d1 maps d2's frame 40 writable at L1 4, slot 7.
        ft.map_grant(Mfn(4), 7, D1, Mfn(40), D2, true, US, &mut mem)
            .unwrap();
        let entry = mem.get(Mfn(4), 7);
        assert_eq!(entry & !0xfff & !(1 << 63) & !bits::GNTTAB, 40 << 12);
        assert_ne!(entry & bits::GNTTAB, 0);
        assert_eq!(info(&ft, 40).count, 1);
        assert_eq!(info(&ft, 40).type_info.ty, PageType::Writable);
        // The slot is taken; an ordinary update of it is refused and changes nothing.
        assert_eq!(
            ft.map_grant(Mfn(4), 7, D1, Mfn(41), D2, false, US, &mut mem),
            Err(MmError::Busy)
        );
        assert_eq!(
            ft.update_entry(Mfn(4), 7, 0, D1, &mut mem),
            Err(MmError::GrantMapping)
        );
        assert_eq!(mem.get(Mfn(4), 7), entry);
        // A guest cannot forge the marker.
        assert!(ft
            .update_entry(Mfn(4), 8, e(12, P | RW) | bits::GNTTAB, D1, &mut mem)
            .is_err());
        // Unmapping another frame there is refused; the right one drops the references.
        assert!(ft
            .unmap_grant(Mfn(4), 7, D1, Mfn(41), true, &mut mem)
            .is_err());
        // Nor as a read-only mapping of the same frame (another handle's, whose pins are
        // read-only): its writable entry and type reference would stay.
        assert_eq!(
            ft.unmap_grant(Mfn(4), 7, D1, Mfn(40), false, &mut mem),
            Err(MmError::NotReferenced)
        );
        assert_eq!(mem.get(Mfn(4), 7), entry);
        assert_eq!(info(&ft, 40).count, 1);
        ft.unmap_grant(Mfn(4), 7, D1, Mfn(40), true, &mut mem)
            .unwrap();
        assert_eq!(mem.get(Mfn(4), 7), 0);
        assert_eq!(info(&ft, 40).count, 0);
        assert_eq!(info(&ft, 40).type_info, TypeInfo::UNTYPED);
        ft.unpin(Mfn(1), D1, &mut mem).unwrap();
        assert_all_clear(&ft);
    }

    #[test]
    fn grant_mappings_need_a_validated_l1_and_a_frame_of_the_granter() {
        let mut ft = table();
        let mut mem = Mem::default();
        build_tree(&mut mem);
        // Not a page table yet.
        assert_eq!(
            ft.map_grant(Mfn(4), 7, D1, Mfn(40), D2, false, US, &mut mem),
            Err(MmError::TypeConflict)
        );
        ft.pin(Mfn(1), D1, Level::L4, &mut mem).unwrap();
        // The frame is not the named granter's.
        assert_eq!(
            ft.map_grant(Mfn(4), 7, D1, Mfn(20), D2, false, US, &mut mem),
            Err(MmError::NotOwner)
        );
        // Writable grant of a frame in use as a page table of its owner.
        mem.set(Mfn(33), 0, 0);
        ft.pin(Mfn(33), D2, Level::L1, &mut mem).unwrap();
        assert_eq!(
            ft.map_grant(Mfn(4), 7, D1, Mfn(33), D2, true, US, &mut mem),
            Err(MmError::WritableTable)
        );
        assert_eq!(info(&ft, 33).count, 1, "only the pin's reference");
        // Releasing the mapping domain leaves the grant's references to the maptrack.
        ft.map_grant(Mfn(4), 7, D1, Mfn(40), D2, false, US, &mut mem)
            .unwrap();
        let released = ft.release_domain(D1, &mut mem);
        assert!(released.still_referenced.is_empty());
        assert_eq!(info(&ft, 40).count, 1);
        ft.put_grant_refs(Mfn(40), false, &mut mem).unwrap();
        assert_eq!(info(&ft, 40).count, 0);
    }

    #[test]
    fn foreign_mappings_take_references_on_the_other_domains_frame() {
        let mut ft = table();
        let mut mem = Mem::default();
        build_tree(&mut mem);
        ft.pin(Mfn(1), D1, Level::L4, &mut mem).unwrap();
        // An ordinary update may not map d2's frame.
        assert_eq!(
            ft.update_entry(Mfn(4), 9, e(40, P | RW), D1, &mut mem),
            Err(MmError::ForeignFrame)
        );
        // A foreign update with d2 as the page owner may, and holds d2's frame.
        ft.update_entry_as(Mfn(4), 9, e(40, P | RW), D1, D2, &mut mem)
            .unwrap();
        assert_eq!(info(&ft, 40).count, 1);
        assert_eq!(info(&ft, 40).type_info.ty, PageType::Writable);
        // d2 going away leaves the mapped frame to it until the mapping goes.
        let released = ft.release_domain(D2, &mut mem);
        assert_eq!(released.still_referenced, vec![Mfn(40)]);
        ft.update_entry(Mfn(4), 9, 0, D1, &mut mem).unwrap();
        assert_eq!(info(&ft, 40).count, 0);
        let released = ft.release_domain(D2, &mut mem);
        assert_eq!(released.freed, vec![Mfn(40)]);
        // Upper levels still only take the domain's own tables.
        assert!(ft
            .update_entry_as(Mfn(3), 5, e(33, P | RW), D1, D2, &mut mem)
            .is_err());
    }
}
