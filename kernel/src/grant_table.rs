//! Grant tables, version 1, for PV guests (`grant_table.h`).
//!
//! Three pieces of state, all free of hardware:
//! - [`GrantTable`], one per *granting* domain: the shared frames holding its v1 entries
//!   (grown by `GNTTABOP_setup_table`, never shrunk) and the "active" record of every
//!   reference currently in use: who uses it, the frame it names, and pin counts. The
//!   shared entry's `GTF_reading`/`GTF_writing` bits follow the pins.
//! - [`Maptrack`], one per *mapping* domain: handle → mapping, with handles reused after
//!   unmap and a cap per domain.
//! - [`GrantFrames`], the hypervisor's view of one granting domain's shared entries
//!   (atomic reads and compare-exchanges: the guest edits them concurrently) and of the
//!   frames it owns; and [`GrantDomains`], the lookup of granting domains by id.
//!
//! Operations never touch page tables or reference counts themselves: a map returns a
//! [`Mapped`] saying which PTE to write and which frame references to take; an unmap
//! returns an [`Unmapped`] saying what to undo. Per-operation failures are the `GNTST_*`
//! [`GrantStatus`] Xen writes in the operation's `status` field; only `set_version`
//! answers with an errno, as in Xen.
//!
//! Locking is the caller's: a map holds the mapping domain's [`Maptrack`] and, inside
//! [`GrantDomains::with_granter`], the granting domain's [`GrantTable`].

use alloc::{collections::BTreeMap, vec::Vec};

use ferrovisor_abi::{
    errno::XenErrno,
    xen::{
        grant_table::{
            header_domid, header_flags, GnttabCopy, GnttabCopyPtr, GnttabMapGrantRef,
            GnttabUnmapGrantRef, GrantEntryV1, GrantHandle, GrantRef, GrantStatus,
            GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, GNTMAP_APPLICATION_MAP, GNTMAP_CONTAINS_PTE,
            GNTMAP_DEVICE_MAP, GNTMAP_GUEST_AVAIL_MASK, GNTMAP_HOST_MAP, GNTMAP_READONLY,
            GRANT_ENTRIES_V1_PER_FRAME, GTF_PAT, GTF_PCD, GTF_PERMIT_ACCESS, GTF_PWT, GTF_READING,
            GTF_READONLY, GTF_SUB_PAGE, GTF_TYPE_MASK, GTF_WRITING,
        },
        xen::DOMID_SELF,
    },
};

use crate::mm::{frame_table::DomId, Mfn, PAGE_SIZE};

/// Grant frames a domain may have unless configured otherwise (Xen's `gnttab_max_frames`
/// default): 32 × 512 = 16384 references.
pub const DEFAULT_MAX_FRAMES: u32 = 32;

/// Mapping handles a domain may hold unless configured otherwise: Xen's default of 1024
/// maptrack frames of 256 entries each.
pub const DEFAULT_MAX_MAPTRACK: u32 = 1024 * 256;

/// Compare-exchange attempts on a shared entry before giving up on a guest that keeps
/// changing it (Xen gives up after five too).
const CMPXCHG_ATTEMPTS: usize = 5;

/// The only grant-table layout offered.
pub const GRANT_VERSION: u32 = 1;

/// The hypervisor's view of one granting domain: its shared v1 entries, accessed
/// atomically (the guest writes them concurrently), and its frames.
///
/// The logic only asks for references below [`GrantTable::nr_entries`]; entry `r` lives in
/// grant frame `r / 512` ([`GrantTable::frames`]) at byte `(r % 512) * 8`.
pub trait GrantFrames {
    /// Reads entry `gref` (one atomic 32-bit load of the header, then the frame).
    fn read_entry(&self, gref: GrantRef) -> GrantEntryV1;
    /// Compare-exchange of the entry's header word (`flags | domid << 16`, see
    /// [`ferrovisor_abi::xen::grant_table::header_word`]); returns the value found, equal
    /// to `old` when the exchange happened.
    fn cmpxchg_header(&self, gref: GrantRef, old: u32, new: u32) -> u32;
    /// Atomically clears `bits` in the entry's `flags`.
    fn clear_flags(&self, gref: GrantRef, bits: u16);
    /// Whether `mfn` is ordinary RAM owned by this domain, so that it may be granted (a
    /// PV entry's `frame` is a machine frame number).
    fn owns_frame(&self, mfn: Mfn) -> bool;
}

/// Finds granting domains.
pub trait GrantDomains {
    /// The shared entries, as a view that may borrow the granting domain beside its table.
    type Frames<'a>: GrantFrames
    where
        Self: 'a;
    /// Runs `f` on the grant table and shared entries of `dom`; `None` if there is no such
    /// domain. A dying domain whose table still has pins must still be found (unmaps of
    /// its grants go there); its table refuses new pins itself.
    fn with_granter<R>(
        &mut self,
        dom: DomId,
        f: impl FnOnce(&mut GrantTable, &Self::Frames<'_>) -> R,
    ) -> Option<R>;
}

/// Where fresh grant frames come from: zeroed frames the hypervisor shares with the
/// domain (so that it can map them writable).
pub trait GrantFrameAlloc {
    fn alloc_grant_frame(&mut self, dom: DomId) -> Option<Mfn>;
    /// Gives back a frame [`Self::alloc_grant_frame`] returned that was never used.
    fn free_grant_frame(&mut self, mfn: Mfn);
}

/// Pins of one reference (Xen's `act->pin` fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pins {
    /// Host (CPU) mappings and copies, read-only.
    pub host_ro: u32,
    /// Host (CPU) mappings and copies, writable.
    pub host_rw: u32,
    /// Device mappings, read-only.
    pub dev_ro: u32,
    /// Device mappings, writable.
    pub dev_rw: u32,
}

impl Pins {
    const fn writable(&self) -> bool {
        self.host_rw != 0 || self.dev_rw != 0
    }

    const fn is_empty(&self) -> bool {
        self.host_ro == 0 && self.host_rw == 0 && self.dev_ro == 0 && self.dev_rw == 0
    }

    fn counter(&mut self, readonly: bool, device: bool) -> &mut u32 {
        match (device, readonly) {
            (false, true) => &mut self.host_ro,
            (false, false) => &mut self.host_rw,
            (true, true) => &mut self.dev_ro,
            (true, false) => &mut self.dev_rw,
        }
    }
}

/// A reference in use (Xen's `active_grant_entry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveGrant {
    pub gref: GrantRef,
    /// The only domain using it: the entry's `domid` when it was first pinned.
    pub user: DomId,
    /// The frame the entry named when it was first pinned; later changes of the shared
    /// entry by the guest do not move it.
    pub mfn: Mfn,
    pub pins: Pins,
}

/// `GNTTABOP_query_size`'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSize {
    pub nr_frames: u32,
    pub max_nr_frames: u32,
}

/// One granting domain's table.
pub struct GrantTable {
    dom: DomId,
    max_frames: u32,
    /// The shared frames, in table order.
    frames: Vec<Mfn>,
    active: BTreeMap<GrantRef, ActiveGrant>,
    /// Set by [`Self::begin_teardown`]: no new pins.
    dying: bool,
}

impl GrantTable {
    /// An empty table (no frames yet) for `dom`, growing to at most `max_frames`.
    /// Xen gives a new domain one frame: call [`Self::setup_table`] with 1 when building it.
    pub fn new(dom: DomId, max_frames: u32) -> Self {
        GrantTable {
            dom,
            max_frames,
            frames: Vec::new(),
            active: BTreeMap::new(),
            dying: false,
        }
    }

    pub const fn domid(&self) -> DomId {
        self.dom
    }

    /// The shared frames, in table order.
    pub fn frames(&self) -> &[Mfn] {
        &self.frames
    }

    /// Valid references are `0..nr_entries`.
    pub fn nr_entries(&self) -> u32 {
        self.nr_frames().saturating_mul(GRANT_ENTRIES_V1_PER_FRAME)
    }

    fn nr_frames(&self) -> u32 {
        // The vector never grows past `max_frames`, a u32.
        u32::try_from(self.frames.len()).unwrap_or(u32::MAX)
    }

    /// `GNTTABOP_query_size`.
    pub fn query_size(&self) -> TableSize {
        TableSize {
            nr_frames: self.nr_frames(),
            max_nr_frames: self.max_frames,
        }
    }

    /// `GNTTABOP_setup_table`: grows the table to `nr_frames` frames (never shrinks it) and
    /// returns the first `nr_frames` frames, which the caller writes to `frame_list`.
    /// `GNTST_general_error` beyond the maximum (as Xen) or when frames run out (nothing
    /// is kept from a failed growth).
    pub fn setup_table(
        &mut self,
        nr_frames: u32,
        alloc: &mut impl GrantFrameAlloc,
    ) -> Result<&[Mfn], GrantStatus> {
        if nr_frames > self.max_frames || self.dying {
            return Err(GrantStatus::GeneralError);
        }
        let want = nr_frames as usize;
        if want > self.frames.len() {
            let more = want - self.frames.len();
            self.frames
                .try_reserve(more)
                .map_err(|_| GrantStatus::GeneralError)?;
            let old = self.frames.len();
            for _ in 0..more {
                match alloc.alloc_grant_frame(self.dom) {
                    Some(mfn) => self.frames.push(mfn),
                    None => {
                        for mfn in self.frames.drain(old..) {
                            alloc.free_grant_frame(mfn);
                        }
                        return Err(GrantStatus::GeneralError);
                    }
                }
            }
        }
        Ok(&self.frames[..want])
    }

    /// The version in force: always 1. `GNTTABOP_get_version` and the value
    /// `GNTTABOP_set_version` writes back, whatever it returns.
    pub const fn version(&self) -> u32 {
        GRANT_VERSION
    }

    /// `GNTTABOP_set_version`: 1 is accepted (and already in force); 2 is `-ENOSYS`, Xen's
    /// answer when v2 is disabled (Linux then stays on v1); anything else, 0 included, is
    /// `-EINVAL`.
    pub fn set_version(&mut self, version: u32) -> Result<(), XenErrno> {
        match version {
            GRANT_VERSION => Ok(()),
            2 => Err(XenErrno::Enosys),
            _ => Err(XenErrno::Einval),
        }
    }

    /// `GNTTABOP_get_status_frames`: v1 has no status frames, so asking for any is
    /// `GNTST_general_error`; asking for none succeeds with nothing to write.
    pub fn get_status_frames(&self, nr_frames: u32) -> Result<(), GrantStatus> {
        if nr_frames == 0 {
            Ok(())
        } else {
            Err(GrantStatus::GeneralError)
        }
    }

    /// The active record of `gref`, if it is in use.
    pub fn active(&self, gref: GrantRef) -> Option<ActiveGrant> {
        self.active.get(&gref).copied()
    }

    /// Every reference in use, in reference order.
    pub fn active_grants(&self) -> impl Iterator<Item = ActiveGrant> + '_ {
        self.active.values().copied()
    }

    /// No reference is in use: the domain's grants hold no frame of it.
    pub fn is_quiescent(&self) -> bool {
        self.active.is_empty()
    }

    /// Whether [`Self::begin_teardown`] ran.
    pub const fn is_dying(&self) -> bool {
        self.dying
    }

    /// The granting domain is being destroyed: refuse new pins from now on and report
    /// the references other domains still use. Their frames must stay owned by the dying
    /// domain (`FrameTable::release_domain` reports them as still referenced) and this
    /// table must stay reachable through [`GrantDomains::with_granter`] until
    /// [`Self::is_quiescent`]; then [`Self::take_frames`] gives back the grant frames.
    pub fn begin_teardown(&mut self) -> Vec<ActiveGrant> {
        self.dying = true;
        self.active_grants().collect()
    }

    /// Once the table is quiescent, empties it and returns its grant frames for the
    /// caller to free (after the domain's own mappings of them are gone). `None` while
    /// references are still in use.
    pub fn take_frames(&mut self) -> Option<Vec<Mfn>> {
        self.is_quiescent()
            .then(|| core::mem::take(&mut self.frames))
    }

    /// Pins `gref` for `user`, checking and updating the shared entry. Returns the frame
    /// and the entry's cache-attribute bits.
    fn pin(
        &mut self,
        frames: &impl GrantFrames,
        user: DomId,
        gref: GrantRef,
        readonly: bool,
        device: bool,
    ) -> Result<(Mfn, u16), GrantStatus> {
        if self.dying {
            return Err(GrantStatus::BadDomain);
        }
        if gref >= self.nr_entries() {
            return Err(GrantStatus::BadGntref);
        }
        if let Some(act) = self.active.get_mut(&gref) {
            // Xen refuses a pin count about to overflow the same way.
            if act.user != user || *act.pins.counter(readonly, device) == u32::MAX {
                return Err(GrantStatus::GeneralError);
            }
            // The first writable pin of an entry already pinned read-only must still
            // find the entry writable and set GTF_writing.
            let flags = if !readonly && !act.pins.writable() {
                set_status(frames, gref, user, readonly, false)?
            } else {
                frames.read_entry(gref).flags
            };
            *act.pins.counter(readonly, device) += 1;
            return Ok((act.mfn, flags & CACHE_FLAGS));
        }
        let flags = set_status(frames, gref, user, readonly, true)?;
        let mfn = Mfn(u64::from(frames.read_entry(gref).frame));
        if !frames.owns_frame(mfn) {
            frames.clear_flags(gref, GTF_READING | GTF_WRITING);
            return Err(GrantStatus::BadPage);
        }
        let mut pins = Pins::default();
        *pins.counter(readonly, device) = 1;
        self.active.insert(
            gref,
            ActiveGrant {
                gref,
                user,
                mfn,
                pins,
            },
        );
        Ok((mfn, flags & CACHE_FLAGS))
    }

    /// Drops one pin taken by [`Self::pin`], clearing `GTF_writing` with the last
    /// writable pin and `GTF_reading` with the last pin. Unknown pins are ignored (only a
    /// hypervisor bug could ask for one).
    fn unpin(&mut self, frames: &impl GrantFrames, gref: GrantRef, readonly: bool, device: bool) {
        let Some(act) = self.active.get_mut(&gref) else {
            debug_assert!(false, "unpin of an inactive grant");
            return;
        };
        let count = act.pins.counter(readonly, device);
        if *count == 0 {
            debug_assert!(false, "unpin of a pin not held");
            return;
        }
        *count -= 1;
        let mut clear = 0;
        if !readonly && !act.pins.writable() {
            clear |= GTF_WRITING;
        }
        if act.pins.is_empty() {
            clear |= GTF_READING;
            self.active.remove(&gref);
        }
        if clear != 0 {
            frames.clear_flags(gref, clear);
        }
    }
}

/// The entry bits that become the mapping's cache attributes.
const CACHE_FLAGS: u16 = GTF_PWT | GTF_PCD | GTF_PAT;

/// Sets `GTF_reading` (and `GTF_writing` unless `readonly`) in entry `gref` with a
/// compare-exchange, retrying while the guest changes the entry under us. With
/// `check_entry` (the first pin), the entry must be a full-page `GTF_permit_access` to
/// `user`. Returns the entry's flags as they were before the update.
fn set_status(
    frames: &impl GrantFrames,
    gref: GrantRef,
    user: DomId,
    readonly: bool,
    check_entry: bool,
) -> Result<u16, GrantStatus> {
    let mut seen = frames.read_entry(gref).header();
    for _ in 0..CMPXCHG_ATTEMPTS {
        let flags = header_flags(seen);
        if check_entry
            && (flags & (GTF_TYPE_MASK | GTF_SUB_PAGE) != GTF_PERMIT_ACCESS
                || header_domid(seen) != user.0)
        {
            return Err(GrantStatus::GeneralError);
        }
        if !readonly && flags & GTF_READONLY != 0 {
            return Err(GrantStatus::PermissionDenied);
        }
        let set = if readonly {
            GTF_READING
        } else {
            GTF_READING | GTF_WRITING
        };
        let prev = frames.cmpxchg_header(gref, seen, seen | u32::from(set));
        if prev == seen {
            return Ok(flags);
        }
        seen = prev;
    }
    // The guest keeps rewriting the entry.
    Err(GrantStatus::GeneralError)
}

/// The frame references a grant mapping holds on the granted frame (Xen's `get_page` and
/// `get_page_type(PGT_writable_page)` in `map_grant_ref`): take them after a map, drop
/// them after an unmap. One set per mapping, whether it is a host mapping, a device
/// mapping or both. Copies take none: their pins last only while the hypervisor copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRefs {
    pub mfn: Mfn,
    /// The frame's owner, for `FrameTable::get_page`.
    pub owner: DomId,
    /// A general reference and, when set, a `PageType::Writable` type reference too.
    pub writable: bool,
}

/// One mapping of a grant, as the maptrack keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub granter: DomId,
    pub gref: GrantRef,
    /// The `GNTMAP_*` flags of the map, without the guest's own bits.
    pub flags: u32,
    pub mfn: Mfn,
    /// A virtual address, or with `GNTMAP_contains_pte` a PTE's machine address.
    pub host_addr: u64,
}

impl Mapping {
    pub const fn readonly(&self) -> bool {
        self.flags & GNTMAP_READONLY != 0
    }

    pub const fn device(&self) -> bool {
        self.flags & GNTMAP_DEVICE_MAP != 0
    }

    /// `host_addr` is the machine address of the PTE to write.
    pub const fn contains_pte(&self) -> bool {
        self.flags & GNTMAP_CONTAINS_PTE != 0
    }

    /// The PTE gets the user bit.
    pub const fn application(&self) -> bool {
        self.flags & GNTMAP_APPLICATION_MAP != 0
    }

    /// The frame references this mapping holds.
    pub const fn refs(&self) -> FrameRefs {
        FrameRefs {
            mfn: self.mfn,
            owner: self.granter,
            writable: !self.readonly(),
        }
    }
}

/// A successful `GNTTABOP_map_grant_ref`. The caller takes [`Mapping::refs`], writes the
/// PTE (at `host_addr`, or the PTE `host_addr` names with `contains_pte`) mapping `mfn`,
/// read-only if `readonly()`, user-accessible if `application()`, with the cache
/// attributes `cache_flags`; then answers with `handle` and `dev_bus_addr` (Linux reads
/// the frame back from `dev_bus_addr`). If either step fails it calls
/// [`Maptrack::cancel_map`] and answers `GNTST_general_error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub handle: GrantHandle,
    pub mapping: Mapping,
    /// `GTF_PWT | GTF_PCD | GTF_PAT` as the entry had them.
    pub cache_flags: u16,
}

impl Mapped {
    /// The machine address of the granted frame.
    pub const fn dev_bus_addr(&self) -> u64 {
        self.mapping.mfn.addr()
    }
}

/// A mapping just removed: the caller clears its PTE (if the domain is not dying, where
/// its page tables go anyway) and drops [`Mapping::refs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unmapped {
    pub handle: GrantHandle,
    pub mapping: Mapping,
}

/// `GNTMAP_*` bits a map may carry besides the guest's own.
const GNTMAP_KNOWN: u32 = GNTMAP_DEVICE_MAP
    | GNTMAP_HOST_MAP
    | GNTMAP_READONLY
    | GNTMAP_APPLICATION_MAP
    | GNTMAP_CONTAINS_PTE;

/// One mapping domain's handles (Xen's maptrack).
pub struct Maptrack {
    dom: DomId,
    max_handles: u32,
    /// Indexed by handle.
    slots: Vec<Option<Mapping>>,
    /// Free handles below `slots.len()`, the most recently freed last (reused first).
    free: Vec<GrantHandle>,
}

impl Maptrack {
    /// An empty maptrack for `dom`, allowing handles `0..max_handles`.
    pub fn new(dom: DomId, max_handles: u32) -> Self {
        Maptrack {
            dom,
            max_handles,
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    pub const fn domid(&self) -> DomId {
        self.dom
    }

    /// Mappings held.
    pub fn in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The mapping behind `handle`.
    pub fn get(&self, handle: GrantHandle) -> Option<Mapping> {
        *self.slots.get(handle as usize)?
    }

    /// Every mapping held, in handle order.
    pub fn mappings(&self) -> impl Iterator<Item = (GrantHandle, Mapping)> + '_ {
        (0..)
            .zip(self.slots.iter())
            .filter_map(|(h, m)| m.map(|m| (h, m)))
    }

    /// `GNTTABOP_map_grant_ref` for this domain. `GNTST_bad_gntref` without
    /// `GNTMAP_host_map` or `GNTMAP_device_map` (as Xen); `GNTST_general_error` for a
    /// device-only map (no guest-visible I/O MMU) or unknown flag bits below the guest's
    /// own; `GNTST_bad_domain` for an unknown or dying granter; `GNTST_no_space` when the
    /// handles run out; then the reference's own checks: `GNTST_bad_gntref` outside the
    /// table, `GNTST_general_error` unless the entry is a full-page `GTF_permit_access`
    /// to this domain (or the guest keeps changing it), `GNTST_permission_denied` for a
    /// writable map of a `GTF_readonly` grant, `GNTST_bad_page` if the frame is not the
    /// granter's. `host_addr` is checked by the caller when it writes the PTE.
    pub fn map<D: GrantDomains>(
        &mut self,
        domains: &mut D,
        op: &GnttabMapGrantRef,
    ) -> Result<Mapped, GrantStatus> {
        let flags = op.flags & !GNTMAP_GUEST_AVAIL_MASK;
        if flags & (GNTMAP_HOST_MAP | GNTMAP_DEVICE_MAP) == 0 {
            return Err(GrantStatus::BadGntref);
        }
        if flags & GNTMAP_HOST_MAP == 0 || flags & !GNTMAP_KNOWN != 0 {
            return Err(GrantStatus::GeneralError);
        }
        let granter = self.resolve(op.dom);
        let handle = self.free_handle()?;
        let readonly = flags & GNTMAP_READONLY != 0;
        let device = flags & GNTMAP_DEVICE_MAP != 0;
        let user = self.dom;
        let (mfn, cache_flags) = domains
            .with_granter(granter, |table, frames| {
                let first = table.pin(frames, user, op.r#ref, readonly, false)?;
                if device {
                    if let Err(e) = table.pin(frames, user, op.r#ref, readonly, true) {
                        table.unpin(frames, op.r#ref, readonly, false);
                        return Err(e);
                    }
                }
                Ok(first)
            })
            .ok_or(GrantStatus::BadDomain)??;
        let mapping = Mapping {
            granter,
            gref: op.r#ref,
            flags: flags & GNTMAP_KNOWN,
            mfn,
            host_addr: op.host_addr,
        };
        self.install(handle, mapping);
        Ok(Mapped {
            handle,
            mapping,
            cache_flags,
        })
    }

    /// Undoes a [`Self::map`] whose PTE or frame references the caller could not set up:
    /// drops the pins and frees the handle. Nothing else is left to undo.
    pub fn cancel_map<D: GrantDomains>(&mut self, domains: &mut D, handle: GrantHandle) {
        if let Some(mapping) = self.remove(handle) {
            release_pins(domains, &mapping);
        }
    }

    /// The checks of `GNTTABOP_unmap_grant_ref` without changing anything, for a caller
    /// that must clear the PTE before committing with [`Self::unmap`]:
    /// `GNTST_bad_handle` for a handle not in use, `GNTST_bad_virt_addr` unless
    /// `host_addr` is the one mapped, `GNTST_bad_dev_addr` for a non-zero `dev_bus_addr`
    /// of a device mapping that is not the frame's. A partial unmap (host or device only,
    /// with the other address 0) is not offered: the whole mapping goes.
    pub fn check_unmap(&self, op: &GnttabUnmapGrantRef) -> Result<Mapping, GrantStatus> {
        let mapping = self.get(op.handle).ok_or(GrantStatus::BadHandle)?;
        if op.host_addr != mapping.host_addr {
            return Err(GrantStatus::BadVirtAddr);
        }
        if mapping.device() && op.dev_bus_addr != 0 && op.dev_bus_addr != mapping.mfn.addr() {
            return Err(GrantStatus::BadDevAddr);
        }
        Ok(mapping)
    }

    /// `GNTTABOP_unmap_grant_ref`: [`Self::check_unmap`], then drops the pins (clearing
    /// `GTF_writing`/`GTF_reading` as they go) and frees the handle for reuse.
    pub fn unmap<D: GrantDomains>(
        &mut self,
        domains: &mut D,
        op: &GnttabUnmapGrantRef,
    ) -> Result<Unmapped, GrantStatus> {
        let mapping = self.check_unmap(op)?;
        self.remove(op.handle);
        release_pins(domains, &mapping);
        Ok(Unmapped {
            handle: op.handle,
            mapping,
        })
    }

    /// The mapping domain is being destroyed (Xen's `gnttab_release_mappings`): every
    /// mapping is removed and its pins released in the granting domains. The caller drops
    /// the frame references of each; the PTEs go with the domain's page tables.
    pub fn release_all<D: GrantDomains>(&mut self, domains: &mut D) -> Vec<Unmapped> {
        let mut released = Vec::new();
        for handle in 0..self.slots.len() as GrantHandle {
            if let Some(mapping) = self.remove(handle) {
                release_pins(domains, &mapping);
                released.push(Unmapped { handle, mapping });
            }
        }
        self.slots = Vec::new();
        self.free = Vec::new();
        released
    }

    fn resolve(&self, dom: u16) -> DomId {
        if dom == DOMID_SELF {
            self.dom
        } else {
            DomId(dom)
        }
    }

    /// A handle for the next mapping, with room made for it; it stays free until
    /// [`Self::install`].
    fn free_handle(&mut self) -> Result<GrantHandle, GrantStatus> {
        if let Some(&h) = self.free.last() {
            return Ok(h);
        }
        let next = self.slots.len();
        if next >= self.max_handles as usize {
            return Err(GrantStatus::NoSpace);
        }
        self.slots
            .try_reserve(1)
            .map_err(|_| GrantStatus::NoSpace)?;
        // `free` keeps room for every slot, so that `remove` never allocates.
        self.free
            .try_reserve(next + 1 - self.free.len())
            .map_err(|_| GrantStatus::NoSpace)?;
        self.slots.push(None);
        self.free.push(next as GrantHandle);
        Ok(next as GrantHandle)
    }

    fn install(&mut self, handle: GrantHandle, mapping: Mapping) {
        if self.free.last() == Some(&handle) {
            self.free.pop();
        }
        if let Some(slot) = self.slots.get_mut(handle as usize) {
            *slot = Some(mapping);
        }
    }

    fn remove(&mut self, handle: GrantHandle) -> Option<Mapping> {
        let mapping = self.slots.get_mut(handle as usize)?.take()?;
        // No allocation: `free` has room for every slot (see `free_handle`).
        self.free.push(handle);
        Some(mapping)
    }
}

/// Releases the pins `mapping` holds in its granting domain. A granter that is gone has
/// nothing left to clear.
fn release_pins<D: GrantDomains>(domains: &mut D, mapping: &Mapping) {
    domains.with_granter(mapping.granter, |table, frames| {
        table.unpin(frames, mapping.gref, mapping.readonly(), false);
        if mapping.device() {
            table.unpin(frames, mapping.gref, mapping.readonly(), true);
        }
    });
}

/// One side of a copy, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopySide {
    pub mfn: Mfn,
    pub offset: u16,
    /// The grant pinned for the copy, released by [`release_copy`].
    pub pinned: Option<(DomId, GrantRef)>,
}

/// A `GNTTABOP_copy` ready to run: copy `len` bytes from `source` to `dest` (each within
/// one frame), then call [`release_copy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyPlan {
    pub source: CopySide,
    pub dest: CopySide,
    pub len: u16,
}

/// Checks one `gnttab_copy` and pins its grants for the copy (read-only for the source,
/// writable for the destination). A side with its `GNTCOPY_*_gref` flag is grant `u.ref`
/// of `domid`, checked like a map; one without is frame `u.gmfn` of the caller, named as
/// `DOMID_SELF` (or the caller's own id), else `GNTST_permission_denied`, and owned by
/// it, else `GNTST_bad_page`. `GNTST_bad_copy_arg` when `offset + len` passes the end
/// of the page on either side, `GNTST_bad_domain` for an unknown granter.
pub fn acquire_copy<D: GrantDomains>(
    domains: &mut D,
    caller: DomId,
    op: &GnttabCopy,
) -> Result<CopyPlan, GrantStatus> {
    let fits = |offset: u16| u64::from(offset) + u64::from(op.len) <= PAGE_SIZE;
    if !fits(op.source.offset) || !fits(op.dest.offset) {
        return Err(GrantStatus::BadCopyArg);
    }
    let source = acquire_side(
        domains,
        caller,
        &op.source,
        op.flags & GNTCOPY_SOURCE_GREF != 0,
        true,
    )?;
    let dest = match acquire_side(
        domains,
        caller,
        &op.dest,
        op.flags & GNTCOPY_DEST_GREF != 0,
        false,
    ) {
        Ok(dest) => dest,
        Err(e) => {
            release_side(domains, &source, true);
            return Err(e);
        }
    };
    Ok(CopyPlan {
        source,
        dest,
        len: op.len,
    })
}

/// Releases the pins [`acquire_copy`] took, after the copy (or after it failed).
pub fn release_copy<D: GrantDomains>(domains: &mut D, plan: &CopyPlan) {
    release_side(domains, &plan.source, true);
    release_side(domains, &plan.dest, false);
}

fn acquire_side<D: GrantDomains>(
    domains: &mut D,
    caller: DomId,
    side: &GnttabCopyPtr,
    is_gref: bool,
    readonly: bool,
) -> Result<CopySide, GrantStatus> {
    let dom = if side.domid == DOMID_SELF {
        caller
    } else {
        DomId(side.domid)
    };
    if is_gref {
        let gref = side.gref();
        let (mfn, _) = domains
            .with_granter(dom, |table, frames| {
                table.pin(frames, caller, gref, readonly, false)
            })
            .ok_or(GrantStatus::BadDomain)??;
        return Ok(CopySide {
            mfn,
            offset: side.offset,
            pinned: Some((dom, gref)),
        });
    }
    if dom != caller {
        return Err(GrantStatus::PermissionDenied);
    }
    let mfn = Mfn(side.gmfn());
    let owned = domains
        .with_granter(caller, |_, frames| frames.owns_frame(mfn))
        .ok_or(GrantStatus::BadDomain)?;
    if !owned {
        return Err(GrantStatus::BadPage);
    }
    Ok(CopySide {
        mfn,
        offset: side.offset,
        pinned: None,
    })
}

fn release_side<D: GrantDomains>(domains: &mut D, side: &CopySide, readonly: bool) {
    if let Some((dom, gref)) = side.pinned {
        domains.with_granter(dom, |table, frames| {
            table.unpin(frames, gref, readonly, false);
        });
    }
}

/// A grant the hypervisor's own backends hold (user `DOMID_XEN`): for one copy, or for
/// as long as a ring stays connected. Not `Clone`: it is given back exactly once with
/// [`release_backend_pin`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a backend pin must be released"]
pub struct BackendPin {
    pub granter: DomId,
    pub gref: GrantRef,
    /// The frame the grant named when pinned (later edits of the entry do not move it).
    pub mfn: Mfn,
    pub readonly: bool,
}

/// Pins grant `gref` of `granter` for a hypervisor backend acting as `user` (the entry
/// must grant `user` full-page access; writable unless `readonly`). Checked like a map:
/// `GNTST_bad_domain` for no such domain (or one dying), `GNTST_bad_gntref` beyond the
/// table, `GNTST_general_error` for an entry not granted to `user`,
/// `GNTST_permission_denied` for a writable pin of a read-only grant, `GNTST_bad_page`
/// for a frame the granter does not own.
pub fn acquire_backend_pin<D: GrantDomains>(
    domains: &mut D,
    user: DomId,
    granter: DomId,
    gref: GrantRef,
    readonly: bool,
) -> Result<BackendPin, GrantStatus> {
    let (mfn, _) = domains
        .with_granter(granter, |table, frames| {
            table.pin(frames, user, gref, readonly, false)
        })
        .ok_or(GrantStatus::BadDomain)??;
    Ok(BackendPin {
        granter,
        gref,
        mfn,
        readonly,
    })
}

/// Gives back a pin [`acquire_backend_pin`] took. A granter that has gone entirely
/// (which cannot happen while pins are held: its table stays until they come back) is
/// ignored.
pub fn release_backend_pin<D: GrantDomains>(domains: &mut D, pin: BackendPin) {
    domains.with_granter(pin.granter, |table, frames| {
        table.unpin(frames, pin.gref, pin.readonly, false);
    });
}

#[cfg(test)]
mod tests {
    use core::cell::{Cell, RefCell};
    use std::collections::{BTreeMap, BTreeSet, VecDeque};

    use ferrovisor_abi::xen::grant_table::{
        header_word, GTF_ACCEPT_TRANSFER, GTF_INVALID, GTF_TRANSITIVE,
    };

    use super::*;

    const BACK: DomId = DomId(1);
    const FRONT: DomId = DomId(2);
    const OTHER: DomId = DomId(3);
    /// FRONT's frames are 0x100.., OTHER's 0x200.., BACK's 0x300...
    const FRONT_PAGE: u64 = 0x100;
    const OTHER_PAGE: u64 = 0x200;
    const BACK_PAGE: u64 = 0x300;
    const VA: u64 = 0xffff_c900_0000_0000;

    /// A domain's shared entries in plain cells, with scripted guest interference: each
    /// queued header is written just before the next compare-exchange looks.
    struct FakeFrames {
        entries: RefCell<Vec<GrantEntryV1>>,
        owned: BTreeSet<u64>,
        races: RefCell<VecDeque<u32>>,
        /// The guest rewrites the entry before every compare-exchange.
        always_race: Cell<bool>,
        cmpxchgs: Cell<usize>,
    }

    impl FakeFrames {
        fn new(first_page: u64) -> Self {
            FakeFrames {
                entries: RefCell::new(vec![GrantEntryV1::default(); 4096]),
                owned: (first_page..first_page + 16).collect(),
                races: RefCell::new(VecDeque::new()),
                always_race: Cell::new(false),
                cmpxchgs: Cell::new(0),
            }
        }

        fn grant(&self, gref: GrantRef, to: DomId, frame: u64, flags: u16) {
            self.entries.borrow_mut()[gref as usize] = GrantEntryV1 {
                flags,
                domid: to.0,
                frame: frame as u32,
            };
        }

        fn flags(&self, gref: GrantRef) -> u16 {
            self.entries.borrow()[gref as usize].flags
        }

        fn write_header(&self, gref: GrantRef, word: u32) {
            let e = &mut self.entries.borrow_mut()[gref as usize];
            e.flags = header_flags(word);
            e.domid = header_domid(word);
        }
    }

    impl GrantFrames for FakeFrames {
        fn read_entry(&self, gref: GrantRef) -> GrantEntryV1 {
            self.entries.borrow()[gref as usize]
        }

        fn cmpxchg_header(&self, gref: GrantRef, old: u32, new: u32) -> u32 {
            self.cmpxchgs.set(self.cmpxchgs.get() + 1);
            if let Some(word) = self.races.borrow_mut().pop_front() {
                self.write_header(gref, word);
            }
            if self.always_race.get() {
                let cur = self.read_entry(gref).header();
                self.write_header(gref, cur ^ u32::from(GTF_PWT));
            }
            let cur = self.read_entry(gref).header();
            if cur == old {
                self.write_header(gref, new);
            }
            cur
        }

        fn clear_flags(&self, gref: GrantRef, bits: u16) {
            self.entries.borrow_mut()[gref as usize].flags &= !bits;
        }

        fn owns_frame(&self, mfn: Mfn) -> bool {
            self.owned.contains(&mfn.0)
        }
    }

    struct Alloc {
        next: u64,
        budget: usize,
        freed: Vec<Mfn>,
    }

    impl Alloc {
        fn new(budget: usize) -> Self {
            Alloc {
                next: 0x9000,
                budget,
                freed: Vec::new(),
            }
        }
    }

    impl GrantFrameAlloc for Alloc {
        fn alloc_grant_frame(&mut self, _dom: DomId) -> Option<Mfn> {
            if self.budget == 0 {
                return None;
            }
            self.budget -= 1;
            self.next += 1;
            Some(Mfn(self.next))
        }

        fn free_grant_frame(&mut self, mfn: Mfn) {
            self.freed.push(mfn);
        }
    }

    struct World {
        doms: BTreeMap<DomId, (GrantTable, FakeFrames)>,
    }

    impl GrantDomains for World {
        type Frames<'a> = FakeFrames;

        fn with_granter<R>(
            &mut self,
            dom: DomId,
            f: impl FnOnce(&mut GrantTable, &FakeFrames) -> R,
        ) -> Option<R> {
            let (table, frames) = self.doms.get_mut(&dom)?;
            Some(f(table, frames))
        }
    }

    impl World {
        fn frames(&self, dom: DomId) -> &FakeFrames {
            &self.doms[&dom].1
        }

        fn table(&mut self, dom: DomId) -> &mut GrantTable {
            &mut self.doms.get_mut(&dom).unwrap().0
        }

        fn pins(&self, dom: DomId, gref: GrantRef) -> Option<Pins> {
            self.doms[&dom].0.active(gref).map(|a| a.pins)
        }
    }

    /// FRONT and OTHER grant, each with one grant frame (512 references); BACK maps.
    fn world() -> World {
        let mut doms = BTreeMap::new();
        for (dom, page) in [(FRONT, FRONT_PAGE), (OTHER, OTHER_PAGE), (BACK, BACK_PAGE)] {
            let mut t = GrantTable::new(dom, 4);
            t.setup_table(1, &mut Alloc::new(1)).unwrap();
            doms.insert(dom, (t, FakeFrames::new(page)));
        }
        World { doms }
    }

    fn map_op(dom: DomId, gref: GrantRef, flags: u32, host_addr: u64) -> GnttabMapGrantRef {
        GnttabMapGrantRef {
            host_addr,
            flags,
            r#ref: gref,
            dom: dom.0,
            ..Default::default()
        }
    }

    fn unmap_op(handle: GrantHandle, host_addr: u64) -> GnttabUnmapGrantRef {
        GnttabUnmapGrantRef {
            host_addr,
            handle,
            ..Default::default()
        }
    }

    const RO: u32 = GNTMAP_HOST_MAP | GNTMAP_READONLY;
    const RW: u32 = GNTMAP_HOST_MAP;
    const ACCESS: u16 = GTF_PERMIT_ACCESS;

    fn backend() -> Maptrack {
        Maptrack::new(BACK, 64)
    }

    // ------------------------------------------------------------------------------
    // Table size and version.

    #[test]
    fn setup_table_grows_and_never_shrinks() {
        let mut t = GrantTable::new(FRONT, 8);
        let mut a = Alloc::new(10);
        assert_eq!(t.nr_entries(), 0);
        assert_eq!(t.setup_table(1, &mut a), Ok(&[Mfn(0x9001)][..]));
        assert_eq!(t.nr_entries(), 512);
        let four = t.setup_table(4, &mut a).unwrap().to_vec();
        assert_eq!(four.len(), 4);
        assert_eq!(four[0], Mfn(0x9001));
        // Asking for fewer returns the first ones; the table keeps its size.
        assert_eq!(t.setup_table(2, &mut a), Ok(&four[..2]));
        assert_eq!(t.setup_table(0, &mut a), Ok(&[][..]));
        assert_eq!(t.query_size().nr_frames, 4);
        assert_eq!(t.nr_entries(), 2048);
        assert_eq!(a.budget, 6);
    }

    #[test]
    fn setup_table_limit() {
        let mut t = GrantTable::new(FRONT, 4);
        let mut a = Alloc::new(10);
        assert_eq!(t.setup_table(5, &mut a), Err(GrantStatus::GeneralError));
        assert_eq!(
            t.setup_table(u32::MAX, &mut a),
            Err(GrantStatus::GeneralError)
        );
        assert_eq!(t.query_size().nr_frames, 0);
        assert_eq!(a.budget, 10);
        assert_eq!(t.setup_table(4, &mut a).map(<[Mfn]>::len), Ok(4));
        assert_eq!(t.setup_table(5, &mut a), Err(GrantStatus::GeneralError));
    }

    #[test]
    fn setup_table_out_of_frames_keeps_nothing() {
        let mut t = GrantTable::new(FRONT, 8);
        let mut a = Alloc::new(3);
        t.setup_table(1, &mut a).unwrap();
        assert_eq!(t.setup_table(4, &mut a), Err(GrantStatus::GeneralError));
        assert_eq!(t.query_size().nr_frames, 1);
        assert_eq!(a.freed, vec![Mfn(0x9002), Mfn(0x9003)]);
    }

    #[test]
    fn query_size() {
        let mut t = GrantTable::new(FRONT, DEFAULT_MAX_FRAMES);
        assert_eq!(
            t.query_size(),
            TableSize {
                nr_frames: 0,
                max_nr_frames: 32
            }
        );
        t.setup_table(3, &mut Alloc::new(3)).unwrap();
        assert_eq!(t.query_size().nr_frames, 3);
    }

    #[test]
    fn versions() {
        let mut t = GrantTable::new(FRONT, 4);
        assert_eq!(t.version(), 1);
        assert_eq!(t.set_version(1), Ok(()));
        assert_eq!(t.set_version(2), Err(XenErrno::Enosys));
        assert_eq!(t.set_version(0), Err(XenErrno::Einval));
        assert_eq!(t.set_version(3), Err(XenErrno::Einval));
        assert_eq!(t.version(), 1);
        assert_eq!(t.get_status_frames(0), Ok(()));
        assert_eq!(t.get_status_frames(1), Err(GrantStatus::GeneralError));
    }

    // ------------------------------------------------------------------------------
    // Map and unmap.

    #[test]
    fn map_readonly_sets_reading_and_unmap_clears_it() {
        let mut w = world();
        let mut mt = backend();
        w.frames(FRONT)
            .grant(5, BACK, FRONT_PAGE + 1, ACCESS | GTF_READONLY);
        let m = mt.map(&mut w, &map_op(FRONT, 5, RO, VA)).unwrap();
        assert_eq!(m.handle, 0);
        assert_eq!(m.mapping.mfn, Mfn(FRONT_PAGE + 1));
        assert_eq!(m.dev_bus_addr(), (FRONT_PAGE + 1) << 12);
        assert_eq!(
            m.mapping.refs(),
            FrameRefs {
                mfn: Mfn(FRONT_PAGE + 1),
                owner: FRONT,
                writable: false
            }
        );
        assert_eq!(
            w.frames(FRONT).flags(5),
            ACCESS | GTF_READONLY | GTF_READING
        );
        assert_eq!(w.pins(FRONT, 5).map(|p| p.host_ro), Some(1));

        let u = mt.unmap(&mut w, &unmap_op(m.handle, VA)).unwrap();
        assert_eq!(u.mapping, m.mapping);
        assert_eq!(w.frames(FRONT).flags(5), ACCESS | GTF_READONLY);
        assert_eq!(w.pins(FRONT, 5), None);
        assert_eq!(mt.in_use(), 0);
    }

    #[test]
    fn map_writable_sets_reading_and_writing() {
        let mut w = world();
        let mut mt = backend();
        w.frames(FRONT).grant(7, BACK, FRONT_PAGE, ACCESS | GTF_PCD);
        let m = mt.map(&mut w, &map_op(FRONT, 7, RW, VA)).unwrap();
        assert!(m.mapping.refs().writable);
        assert_eq!(m.cache_flags, GTF_PCD);
        assert_eq!(
            w.frames(FRONT).flags(7),
            ACCESS | GTF_PCD | GTF_READING | GTF_WRITING
        );
        mt.unmap(&mut w, &unmap_op(m.handle, VA)).unwrap();
        assert_eq!(w.frames(FRONT).flags(7), ACCESS | GTF_PCD);
    }

    #[test]
    fn pins_counted_across_two_maps_of_one_ref() {
        let mut w = world();
        let mut mt = backend();
        w.frames(FRONT).grant(3, BACK, FRONT_PAGE, ACCESS);
        let a = mt.map(&mut w, &map_op(FRONT, 3, RO, VA)).unwrap();
        let b = mt.map(&mut w, &map_op(FRONT, 3, RW, VA + 0x1000)).unwrap();
        let c = mt.map(&mut w, &map_op(FRONT, 3, RW, VA + 0x2000)).unwrap();
        assert_eq!((a.handle, b.handle, c.handle), (0, 1, 2));
        let pins = w.pins(FRONT, 3).unwrap();
        assert_eq!((pins.host_ro, pins.host_rw), (1, 2));
        assert_eq!(w.frames(FRONT).flags(3), ACCESS | GTF_READING | GTF_WRITING);

        mt.unmap(&mut w, &unmap_op(b.handle, VA + 0x1000)).unwrap();
        assert_eq!(w.frames(FRONT).flags(3), ACCESS | GTF_READING | GTF_WRITING);
        // The last writable pin goes: reading stays for the read-only one.
        mt.unmap(&mut w, &unmap_op(c.handle, VA + 0x2000)).unwrap();
        assert_eq!(w.frames(FRONT).flags(3), ACCESS | GTF_READING);
        mt.unmap(&mut w, &unmap_op(a.handle, VA)).unwrap();
        assert_eq!(w.frames(FRONT).flags(3), ACCESS);
        assert!(w.table(FRONT).is_quiescent());
    }

    #[test]
    fn wrong_domid_is_refused_and_leaves_the_entry() {
        let mut w = world();
        let mut mt = backend();
        w.frames(FRONT).grant(1, OTHER, FRONT_PAGE, ACCESS);
        assert_eq!(
            mt.map(&mut w, &map_op(FRONT, 1, RO, VA)),
            Err(GrantStatus::GeneralError)
        );
        assert_eq!(w.frames(FRONT).flags(1), ACCESS);
        assert_eq!(mt.in_use(), 0);
        // The handle that was set aside is the one the next map gets.
        w.frames(FRONT).grant(2, BACK, FRONT_PAGE, ACCESS);
        assert_eq!(
            mt.map(&mut w, &map_op(FRONT, 2, RO, VA)).map(|m| m.handle),
            Ok(0)
        );
    }

    #[test]
    fn reference_outside_the_table() {
        let mut w = world();
        let mut mt = backend();
        w.frames(FRONT).grant(600, BACK, FRONT_PAGE, ACCESS);
        for gref in [512, 600, u32::MAX] {
            assert_eq!(
                mt.map(&mut w, &map_op(FRONT, gref, RO, VA)),
                Err(GrantStatus::BadGntref)
            );
        }
        assert_eq!(w.frames(FRONT).cmpxchgs.get(), 0);
        // Growing the table makes it valid.
        w.table(FRONT).setup_table(2, &mut Alloc::new(1)).unwrap();
        assert!(mt.map(&mut w, &map_op(FRONT, 600, RO, VA)).is_ok());
    }

    #[test]
    fn entries_that_permit_no_access() {
        let mut w = world();
        let mut mt = backend();
        let f = w.frames(FRONT);
        f.grant(1, BACK, FRONT_PAGE, GTF_INVALID);
        f.grant(2, BACK, FRONT_PAGE, GTF_ACCEPT_TRANSFER);
        f.grant(3, BACK, FRONT_PAGE, GTF_TRANSITIVE);
        f.grant(4, BACK, FRONT_PAGE, ACCESS | GTF_SUB_PAGE);
        for gref in 1..=4 {
            assert_eq!(
                mt.map(&mut w, &map_op(FRONT, gref, RO, VA)),
                Err(GrantStatus::GeneralError),
                "ref {gref}"
            );
        }
        assert_eq!(w.frames(FRONT).flags(2), GTF_ACCEPT_TRANSFER);
        assert!(w.table(FRONT).is_quiescent());
    }

    #[test]
    fn writable_map_of_a_readonly_grant() {
        let mut w = world();
        let mut mt = backend();
        w.frames(FRONT)
            .grant(9, BACK, FRONT_PAGE, ACCESS | GTF_READONLY);
        assert_eq!(
            mt.map(&mut w, &map_op(FRONT, 9, RW, VA)),
            Err(GrantStatus::PermissionDenied)
        );
        assert_eq!(w.frames(FRONT).flags(9), ACCESS | GTF_READONLY);
        // A read-only pin exists: upgrading it is refused too, and the pin stays.
        let m = mt.map(&mut w, &map_op(FRONT, 9, RO, VA)).unwrap();
        assert_eq!(
            mt.map(&mut w, &map_op(FRONT, 9, RW, VA + 0x1000)),
            Err(GrantStatus::PermissionDenied)
        );
        assert_eq!(
            w.pins(FRONT, 9).map(|p| (p.host_ro, p.host_rw)),
            Some((1, 0))
        );
        mt.unmap(&mut w, &unmap_op(m.handle, VA)).unwrap();
        assert_eq!(w.frames(FRONT).flags(9), ACCESS | GTF_READONLY);
    }

    #[test]
    fn pin_count_overflow_is_refused() {
        let mut w = world();
        let mut mt = backend();
        w.frames(FRONT).grant(1, BACK, FRONT_PAGE, ACCESS);
        mt.map(&mut w, &map_op(FRONT, 1, RO, VA)).unwrap();
        w.table(FRONT).active.get_mut(&1).unwrap().pins.host_ro = u32::MAX;
        assert_eq!(
            mt.map(&mut w, &map_op(FRONT, 1, RO, VA + 0x1000)),
            Err(GrantStatus::GeneralError)
        );
        assert_eq!(mt.in_use(), 1);
        assert_eq!(w.pins(FRONT, 1).map(|p| p.host_ro), Some(u32::MAX));
    }

    #[test]
    fn another_domain_cannot_share_an_active_grant() {
        let mut w = world();
        let mut back = backend();
        let mut other = Maptrack::new(OTHER, 8);
        w.frames(FRONT).grant(1, BACK, FRONT_PAGE, ACCESS);
        back.map(&mut w, &map_op(FRONT, 1, RO, VA)).unwrap();
        assert_eq!(
            other.map(&mut w, &map_op(FRONT, 1, RO, VA)),
            Err(GrantStatus::GeneralError)
        );
        assert_eq!(w.pins(FRONT, 1).map(|p| p.host_ro), Some(1));
    }

    #[test]
    fn unknown_domain_and_foreign_frame() {
        let mut w = world();
        let mut mt = backend();
        assert_eq!(
            mt.map(&mut w, &map_op(DomId(77), 1, RO, VA)),
            Err(GrantStatus::BadDomain)
        );
        // The entry names a frame FRONT does not own (OTHER's).
        w.frames(FRONT).grant(1, BACK, OTHER_PAGE, ACCESS);
        assert_eq!(
            mt.map(&mut w, &map_op(FRONT, 1, RW, VA)),
            Err(GrantStatus::BadPage)
        );
        assert_eq!(w.frames(FRONT).flags(1), ACCESS);
        assert!(w.table(FRONT).is_quiescent());
    }

    #[test]
    fn map_flags() {
        let mut w = world();
        let mut mt = backend();
        w.frames(FRONT).grant(1, BACK, FRONT_PAGE, ACCESS);
        let bad = |flags| map_op(FRONT, 1, flags, VA);
        assert_eq!(mt.map(&mut w, &bad(0)), Err(GrantStatus::BadGntref));
        assert_eq!(
            mt.map(&mut w, &bad(GNTMAP_READONLY)),
            Err(GrantStatus::BadGntref)
        );
        assert_eq!(
            mt.map(&mut w, &bad(GNTMAP_DEVICE_MAP)),
            Err(GrantStatus::GeneralError)
        );
        assert_eq!(
            mt.map(&mut w, &bad(RW | 1 << 5)),
            Err(GrantStatus::GeneralError)
        );
        assert!(w.table(FRONT).is_quiescent());
        // gntdev's user mappings: PTE address, user bit, a tag in the guest's bits.
        let pte = 0x1234_5678;
        let flags = RO | GNTMAP_CONTAINS_PTE | GNTMAP_APPLICATION_MAP | 1 << 16;
        let m = mt.map(&mut w, &map_op(FRONT, 1, flags, pte)).unwrap();
        assert!(m.mapping.contains_pte() && m.mapping.application() && m.mapping.readonly());
        assert_eq!(m.mapping.flags, flags & !GNTMAP_GUEST_AVAIL_MASK);
        assert_eq!(m.mapping.host_addr, pte);
    }

    #[test]
    fn device_and_host_map() {
        let mut w = world();
        let mut mt = backend();
        w.frames(FRONT).grant(1, BACK, FRONT_PAGE, ACCESS);
        let m = mt
            .map(&mut w, &map_op(FRONT, 1, RW | GNTMAP_DEVICE_MAP, VA))
            .unwrap();
        let pins = w.pins(FRONT, 1).unwrap();
        assert_eq!((pins.host_rw, pins.dev_rw), (1, 1));
        let mut op = unmap_op(m.handle, VA);
        op.dev_bus_addr = 0x5000;
        assert_eq!(mt.unmap(&mut w, &op), Err(GrantStatus::BadDevAddr));
        op.dev_bus_addr = m.dev_bus_addr();
        assert!(mt.unmap(&mut w, &op).is_ok());
        assert_eq!(w.frames(FRONT).flags(1), ACCESS);
        assert!(w.table(FRONT).is_quiescent());
    }

    #[test]
    fn handles_are_reused_and_capped() {
        let mut w = world();
        let mut mt = Maptrack::new(BACK, 3);
        for gref in 0..4 {
            w.frames(FRONT).grant(gref, BACK, FRONT_PAGE, ACCESS);
        }
        let h: Vec<_> = (0..3)
            .map(|g| {
                mt.map(&mut w, &map_op(FRONT, g, RO, VA + u64::from(g)))
                    .unwrap()
                    .handle
            })
            .collect();
        assert_eq!(h, [0, 1, 2]);
        assert_eq!(
            mt.map(&mut w, &map_op(FRONT, 3, RO, VA)),
            Err(GrantStatus::NoSpace)
        );
        assert_eq!(w.pins(FRONT, 3), None);
        mt.unmap(&mut w, &unmap_op(1, VA + 1)).unwrap();
        let again = mt.map(&mut w, &map_op(FRONT, 3, RO, VA + 3)).unwrap();
        assert_eq!(again.handle, 1);
        assert_eq!(mt.get(1).map(|m| m.gref), Some(3));
        assert_eq!(mt.in_use(), 3);
    }

    #[test]
    fn unmap_with_a_wrong_address_or_handle() {
        let mut w = world();
        let mut mt = backend();
        w.frames(FRONT).grant(1, BACK, FRONT_PAGE, ACCESS);
        let m = mt.map(&mut w, &map_op(FRONT, 1, RW, VA)).unwrap();
        assert_eq!(
            mt.unmap(&mut w, &unmap_op(m.handle, VA + 0x1000)),
            Err(GrantStatus::BadVirtAddr)
        );
        assert_eq!(
            mt.unmap(&mut w, &unmap_op(m.handle, 0)),
            Err(GrantStatus::BadVirtAddr)
        );
        assert_eq!(
            mt.unmap(&mut w, &unmap_op(5, VA)),
            Err(GrantStatus::BadHandle)
        );
        assert_eq!(
            mt.unmap(&mut w, &unmap_op(u32::MAX, VA)),
            Err(GrantStatus::BadHandle)
        );
        // Nothing changed.
        assert_eq!(w.frames(FRONT).flags(1), ACCESS | GTF_READING | GTF_WRITING);
        assert_eq!(mt.check_unmap(&unmap_op(m.handle, VA)), Ok(m.mapping));
        mt.unmap(&mut w, &unmap_op(m.handle, VA)).unwrap();
        assert_eq!(
            mt.unmap(&mut w, &unmap_op(m.handle, VA)),
            Err(GrantStatus::BadHandle)
        );
    }

    #[test]
    fn cancel_map_undoes_everything() {
        let mut w = world();
        let mut mt = backend();
        w.frames(FRONT).grant(1, BACK, FRONT_PAGE, ACCESS);
        let m = mt.map(&mut w, &map_op(FRONT, 1, RW, VA)).unwrap();
        mt.cancel_map(&mut w, m.handle);
        assert_eq!(w.frames(FRONT).flags(1), ACCESS);
        assert_eq!(mt.in_use(), 0);
        assert_eq!(mt.get(m.handle), None);
    }

    #[test]
    fn a_domain_maps_its_own_grant() {
        let mut w = world();
        let mut mt = Maptrack::new(FRONT, 8);
        w.frames(FRONT).grant(1, FRONT, FRONT_PAGE, ACCESS);
        let m = mt
            .map(&mut w, &map_op(DomId(DOMID_SELF), 1, RW, VA))
            .unwrap();
        assert_eq!(m.mapping.granter, FRONT);
        assert_eq!(w.frames(FRONT).flags(1), ACCESS | GTF_READING | GTF_WRITING);
    }

    // ------------------------------------------------------------------------------
    // The guest changing its entry concurrently.

    #[test]
    fn compare_exchange_retries_after_a_guest_change() {
        let mut w = world();
        let mut mt = backend();
        let f = w.frames(FRONT);
        f.grant(1, BACK, FRONT_PAGE, ACCESS);
        // The guest sets a cache bit between our read and our exchange.
        f.races
            .borrow_mut()
            .push_back(header_word(ACCESS | GTF_PWT, BACK.0));
        let m = mt.map(&mut w, &map_op(FRONT, 1, RO, VA)).unwrap();
        assert_eq!(w.frames(FRONT).cmpxchgs.get(), 2);
        assert_eq!(m.cache_flags, GTF_PWT);
        assert_eq!(w.frames(FRONT).flags(1), ACCESS | GTF_PWT | GTF_READING);
    }

    #[test]
    fn guest_revoking_during_the_map_wins() {
        let mut w = world();
        let mut mt = backend();
        let f = w.frames(FRONT);
        f.grant(1, BACK, FRONT_PAGE, ACCESS);
        f.races.borrow_mut().push_back(header_word(0, BACK.0));
        assert_eq!(
            mt.map(&mut w, &map_op(FRONT, 1, RO, VA)),
            Err(GrantStatus::GeneralError)
        );
        assert_eq!(w.frames(FRONT).flags(1), 0);
        assert!(w.table(FRONT).is_quiescent());
        // Making it read-only during a writable map.
        w.frames(FRONT).grant(2, BACK, FRONT_PAGE, ACCESS);
        w.frames(FRONT)
            .races
            .borrow_mut()
            .push_back(header_word(ACCESS | GTF_READONLY, BACK.0));
        assert_eq!(
            mt.map(&mut w, &map_op(FRONT, 2, RW, VA)),
            Err(GrantStatus::PermissionDenied)
        );
        assert_eq!(w.frames(FRONT).flags(2), ACCESS | GTF_READONLY);
    }

    #[test]
    fn an_unstable_entry_is_given_up_on() {
        let mut w = world();
        let mut mt = backend();
        w.frames(FRONT).grant(1, BACK, FRONT_PAGE, ACCESS);
        w.frames(FRONT).always_race.set(true);
        assert_eq!(
            mt.map(&mut w, &map_op(FRONT, 1, RO, VA)),
            Err(GrantStatus::GeneralError)
        );
        assert_eq!(w.frames(FRONT).cmpxchgs.get(), CMPXCHG_ATTEMPTS);
        assert_eq!(w.frames(FRONT).flags(1) & (GTF_READING | GTF_WRITING), 0);
        assert_eq!(mt.in_use(), 0);
    }

    #[test]
    fn pinned_entry_keeps_its_frame() {
        let mut w = world();
        let mut mt = backend();
        w.frames(FRONT).grant(1, BACK, FRONT_PAGE, ACCESS);
        mt.map(&mut w, &map_op(FRONT, 1, RO, VA)).unwrap();
        // The guest rewrites the frame while the grant is in use: later maps of the
        // same reference still get the frame first pinned.
        w.frames(FRONT).entries.borrow_mut()[1].frame = (FRONT_PAGE + 2) as u32;
        let m = mt.map(&mut w, &map_op(FRONT, 1, RO, VA + 0x1000)).unwrap();
        assert_eq!(m.mapping.mfn, Mfn(FRONT_PAGE));
    }

    // ------------------------------------------------------------------------------
    // Copy.

    fn copy_op(source: GnttabCopyPtr, dest: GnttabCopyPtr, len: u16, flags: u16) -> GnttabCopy {
        GnttabCopy {
            source,
            dest,
            len,
            flags,
            ..Default::default()
        }
    }

    #[test]
    fn backend_pins_check_the_entry_and_hold_it() {
        const XEN: DomId = DomId(0x7ff2);
        let mut w = world();
        w.frames(FRONT).grant(3, XEN, FRONT_PAGE + 2, ACCESS);
        w.frames(FRONT)
            .grant(4, XEN, FRONT_PAGE + 3, ACCESS | GTF_READONLY);
        w.frames(FRONT).grant(5, BACK, FRONT_PAGE + 4, ACCESS);
        let pin = acquire_backend_pin(&mut w, XEN, FRONT, 3, false).unwrap();
        assert_eq!(pin.mfn, Mfn(FRONT_PAGE + 2));
        assert_eq!(w.frames(FRONT).flags(3), ACCESS | GTF_READING | GTF_WRITING);
        // The guest cannot move the pinned frame by editing its entry.
        w.frames(FRONT).grant(3, XEN, FRONT_PAGE + 9, ACCESS);
        let again = acquire_backend_pin(&mut w, XEN, FRONT, 3, true).unwrap();
        assert_eq!(again.mfn, Mfn(FRONT_PAGE + 2));
        release_backend_pin(&mut w, again);
        // A read-only grant refuses a writable pin, and a grant to someone else any pin.
        assert_eq!(
            acquire_backend_pin(&mut w, XEN, FRONT, 4, false),
            Err(GrantStatus::PermissionDenied)
        );
        assert!(
            acquire_backend_pin(&mut w, XEN, FRONT, 4, true).is_ok_and(|p| {
                release_backend_pin(&mut w, p);
                true
            })
        );
        assert_eq!(
            acquire_backend_pin(&mut w, XEN, FRONT, 5, true),
            Err(GrantStatus::GeneralError)
        );
        assert_eq!(
            acquire_backend_pin(&mut w, XEN, FRONT, 100_000, true),
            Err(GrantStatus::BadGntref)
        );
        assert_eq!(
            acquire_backend_pin(&mut w, XEN, DomId(77), 3, true),
            Err(GrantStatus::BadDomain)
        );
        assert!(!w.table(FRONT).is_quiescent());
        release_backend_pin(&mut w, pin);
        assert!(w.table(FRONT).is_quiescent());
        assert_eq!(w.frames(FRONT).flags(3), ACCESS);
    }

    #[test]
    fn copy_from_a_grant_to_own_frame() {
        let mut w = world();
        w.frames(FRONT)
            .grant(4, BACK, FRONT_PAGE + 3, ACCESS | GTF_READONLY);
        let op = copy_op(
            GnttabCopyPtr::with_gref(4, FRONT.0, 100),
            GnttabCopyPtr::with_gmfn(BACK_PAGE + 1, DOMID_SELF, 200),
            1000,
            GNTCOPY_SOURCE_GREF,
        );
        let plan = acquire_copy(&mut w, BACK, &op).unwrap();
        assert_eq!(
            (
                plan.source.mfn,
                plan.source.offset,
                plan.dest.mfn,
                plan.dest.offset,
                plan.len
            ),
            (Mfn(FRONT_PAGE + 3), 100, Mfn(BACK_PAGE + 1), 200, 1000)
        );
        assert_eq!(
            w.frames(FRONT).flags(4),
            ACCESS | GTF_READONLY | GTF_READING
        );
        release_copy(&mut w, &plan);
        assert_eq!(w.frames(FRONT).flags(4), ACCESS | GTF_READONLY);
        assert!(w.table(FRONT).is_quiescent());
    }

    #[test]
    fn copy_from_own_frame_to_a_grant() {
        let mut w = world();
        w.frames(FRONT).grant(6, BACK, FRONT_PAGE, ACCESS);
        let op = copy_op(
            GnttabCopyPtr::with_gmfn(BACK_PAGE, BACK.0, 0),
            GnttabCopyPtr::with_gref(6, FRONT.0, 0),
            4096,
            GNTCOPY_DEST_GREF,
        );
        let plan = acquire_copy(&mut w, BACK, &op).unwrap();
        assert_eq!(plan.dest.pinned, Some((FRONT, 6)));
        assert_eq!(w.pins(FRONT, 6).map(|p| p.host_rw), Some(1));
        assert_eq!(w.frames(FRONT).flags(6), ACCESS | GTF_READING | GTF_WRITING);
        release_copy(&mut w, &plan);
        assert_eq!(w.frames(FRONT).flags(6), ACCESS);
    }

    #[test]
    fn copy_between_two_grants() {
        let mut w = world();
        w.frames(FRONT).grant(1, BACK, FRONT_PAGE, ACCESS);
        w.frames(OTHER).grant(2, BACK, OTHER_PAGE, ACCESS);
        let op = copy_op(
            GnttabCopyPtr::with_gref(1, FRONT.0, 0),
            GnttabCopyPtr::with_gref(2, OTHER.0, 0),
            64,
            GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF,
        );
        let plan = acquire_copy(&mut w, BACK, &op).unwrap();
        assert_eq!(
            (plan.source.mfn, plan.dest.mfn),
            (Mfn(FRONT_PAGE), Mfn(OTHER_PAGE))
        );
        release_copy(&mut w, &plan);
        assert!(w.table(FRONT).is_quiescent() && w.table(OTHER).is_quiescent());
    }

    #[test]
    fn copy_bad_arguments() {
        let mut w = world();
        w.frames(FRONT)
            .grant(1, BACK, FRONT_PAGE, ACCESS | GTF_READONLY);
        let own = GnttabCopyPtr::with_gmfn(BACK_PAGE, DOMID_SELF, 0);
        let gref = GnttabCopyPtr::with_gref(1, FRONT.0, 0);
        let check = |w: &mut World, op: GnttabCopy| acquire_copy(w, BACK, &op);

        // Crossing the end of a page, on either side.
        let mut far = gref;
        far.offset = 4000;
        assert_eq!(
            check(&mut w, copy_op(far, own, 97, GNTCOPY_SOURCE_GREF)),
            Err(GrantStatus::BadCopyArg)
        );
        let mut far_own = own;
        far_own.offset = u16::MAX;
        assert_eq!(
            check(&mut w, copy_op(gref, far_own, 1, GNTCOPY_SOURCE_GREF)),
            Err(GrantStatus::BadCopyArg)
        );
        assert!(check(&mut w, copy_op(far, own, 96, GNTCOPY_SOURCE_GREF)).is_ok());
        w.table(FRONT).active.clear();
        w.frames(FRONT)
            .grant(1, BACK, FRONT_PAGE, ACCESS | GTF_READONLY);

        // A frame of another domain without the gref flag.
        let foreign = GnttabCopyPtr::with_gmfn(FRONT_PAGE, FRONT.0, 0);
        assert_eq!(
            check(&mut w, copy_op(foreign, own, 8, 0)),
            Err(GrantStatus::PermissionDenied)
        );
        // Our "own" frame that is not ours.
        let not_ours = GnttabCopyPtr::with_gmfn(FRONT_PAGE, DOMID_SELF, 0);
        assert_eq!(
            check(&mut w, copy_op(gref, not_ours, 8, GNTCOPY_SOURCE_GREF)),
            Err(GrantStatus::BadPage)
        );
        // A read-only grant as destination: the source pin taken first is released.
        w.frames(OTHER).grant(3, BACK, OTHER_PAGE, ACCESS);
        let src = GnttabCopyPtr::with_gref(3, OTHER.0, 0);
        assert_eq!(
            check(
                &mut w,
                copy_op(src, gref, 8, GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF)
            ),
            Err(GrantStatus::PermissionDenied)
        );
        assert!(w.table(OTHER).is_quiescent());
        assert_eq!(w.frames(OTHER).flags(3), ACCESS);
        // Unknown domain, bad reference.
        let nobody = GnttabCopyPtr::with_gref(1, 77, 0);
        assert_eq!(
            check(&mut w, copy_op(nobody, own, 8, GNTCOPY_SOURCE_GREF)),
            Err(GrantStatus::BadDomain)
        );
        let big = GnttabCopyPtr::with_gref(9999, FRONT.0, 0);
        assert_eq!(
            check(&mut w, copy_op(big, own, 8, GNTCOPY_SOURCE_GREF)),
            Err(GrantStatus::BadGntref)
        );
        assert!(w.table(FRONT).is_quiescent());
    }

    #[test]
    fn copy_pins_add_to_map_pins() {
        let mut w = world();
        let mut mt = backend();
        w.frames(FRONT).grant(1, BACK, FRONT_PAGE, ACCESS);
        let m = mt.map(&mut w, &map_op(FRONT, 1, RO, VA)).unwrap();
        let op = copy_op(
            GnttabCopyPtr::with_gmfn(BACK_PAGE, DOMID_SELF, 0),
            GnttabCopyPtr::with_gref(1, FRONT.0, 0),
            8,
            GNTCOPY_DEST_GREF,
        );
        let plan = acquire_copy(&mut w, BACK, &op).unwrap();
        assert_eq!(w.frames(FRONT).flags(1), ACCESS | GTF_READING | GTF_WRITING);
        release_copy(&mut w, &plan);
        // The map's read pin remains.
        assert_eq!(w.frames(FRONT).flags(1), ACCESS | GTF_READING);
        mt.unmap(&mut w, &unmap_op(m.handle, VA)).unwrap();
        assert_eq!(w.frames(FRONT).flags(1), ACCESS);
    }

    // ------------------------------------------------------------------------------
    // Teardown.

    #[test]
    fn teardown_of_a_mapping_domain_releases_its_pins() {
        let mut w = world();
        let mut mt = backend();
        w.frames(FRONT).grant(1, BACK, FRONT_PAGE, ACCESS);
        w.frames(FRONT)
            .grant(2, BACK, FRONT_PAGE + 1, ACCESS | GTF_READONLY);
        w.frames(OTHER).grant(1, BACK, OTHER_PAGE, ACCESS);
        mt.map(&mut w, &map_op(FRONT, 1, RW, VA)).unwrap();
        mt.map(&mut w, &map_op(FRONT, 2, RO, VA + 0x1000)).unwrap();
        mt.map(
            &mut w,
            &map_op(OTHER, 1, RW | GNTMAP_DEVICE_MAP, VA + 0x2000),
        )
        .unwrap();
        let released = mt.release_all(&mut w);
        let refs: Vec<_> = released.iter().map(|u| u.mapping.refs()).collect();
        assert_eq!(
            refs,
            [
                FrameRefs {
                    mfn: Mfn(FRONT_PAGE),
                    owner: FRONT,
                    writable: true
                },
                FrameRefs {
                    mfn: Mfn(FRONT_PAGE + 1),
                    owner: FRONT,
                    writable: false
                },
                FrameRefs {
                    mfn: Mfn(OTHER_PAGE),
                    owner: OTHER,
                    writable: true
                },
            ]
        );
        assert_eq!(mt.in_use(), 0);
        assert!(w.table(FRONT).is_quiescent() && w.table(OTHER).is_quiescent());
        assert_eq!(w.frames(FRONT).flags(1), ACCESS);
        assert_eq!(w.frames(FRONT).flags(2), ACCESS | GTF_READONLY);
        assert_eq!(w.frames(OTHER).flags(1), ACCESS);
    }

    #[test]
    fn teardown_of_a_granting_domain_with_live_mappings() {
        let mut w = world();
        let mut mt = backend();
        w.frames(FRONT).grant(1, BACK, FRONT_PAGE, ACCESS);
        w.frames(FRONT).grant(2, BACK, FRONT_PAGE + 1, ACCESS);
        let m = mt.map(&mut w, &map_op(FRONT, 1, RW, VA)).unwrap();
        let live = w.table(FRONT).begin_teardown();
        assert_eq!(live.len(), 1);
        assert_eq!(
            (live[0].gref, live[0].user, live[0].mfn),
            (1, BACK, Mfn(FRONT_PAGE))
        );
        assert!(w.table(FRONT).is_dying());
        // No new pins: maps and copies are refused, existing ones are kept.
        assert_eq!(
            mt.map(&mut w, &map_op(FRONT, 2, RO, VA + 0x1000)),
            Err(GrantStatus::BadDomain)
        );
        assert_eq!(
            mt.map(&mut w, &map_op(FRONT, 1, RO, VA + 0x1000)),
            Err(GrantStatus::BadDomain)
        );
        assert_eq!(
            w.table(FRONT).setup_table(2, &mut Alloc::new(1)),
            Err(GrantStatus::GeneralError)
        );
        assert_eq!(w.table(FRONT).take_frames(), None);
        // The backend unmaps later: the table becomes quiescent and gives its frames back.
        mt.unmap(&mut w, &unmap_op(m.handle, VA)).unwrap();
        assert!(w.table(FRONT).is_quiescent());
        assert_eq!(w.table(FRONT).take_frames(), Some(vec![Mfn(0x9001)]));
        assert!(w.table(FRONT).frames().is_empty());
    }

    #[test]
    fn unmap_after_the_granter_is_gone() {
        let mut w = world();
        let mut mt = backend();
        w.frames(FRONT).grant(1, BACK, FRONT_PAGE, ACCESS);
        let m = mt.map(&mut w, &map_op(FRONT, 1, RO, VA)).unwrap();
        w.doms.remove(&FRONT);
        let u = mt.unmap(&mut w, &unmap_op(m.handle, VA)).unwrap();
        assert_eq!(u.mapping.refs().owner, FRONT);
        assert_eq!(mt.in_use(), 0);
    }
}
