//! Every live domain, and which vCPU each physical CPU runs.
//!
//! One lock guards the whole set: a hypercall that touches two domains (an interdomain
//! event, a foreign mapping, domain control) holds both consistently, and the scheduler
//! sees every vCPU at once. Lock order: `DOMAINS`, then `FRAME_TABLE`.

use alloc::{
    boxed::Box,
    collections::{BTreeMap, BTreeSet},
    string::String,
};

use ferrovisor::mm::frame_table::DomId;

use super::Domain;
use crate::arch::x86_64::{irq::IrqMutex, percpu};

use crate::arch::x86_64::smp::MAX_CPUS;

/// The domains, by id.
pub struct Domains {
    map: BTreeMap<u16, Box<Domain>>,
    /// The vCPU each physical CPU runs (domain, vCPU id), if any.
    running: [Option<(DomId, u32)>; MAX_CPUS],
    /// Ticks each CPU's running vCPU has had since it was put there.
    pub slice_ticks: [u32; MAX_CPUS],
    /// Destroyed domains whose last frames something else still references (another
    /// domain's foreign or grant mapping): their ids stay taken, and `xl list`-style
    /// listings show them as dying, until the frames are reclaimed.
    dying: BTreeMap<u16, Dying>,
    /// Domains taken out of the set while `BuildPv` builds them (their ids stay taken).
    building: BTreeSet<u16>,
    /// Where the search for the next domain id starts: ids are handed out in rising
    /// order and wrap, as in Xen, so a destroyed domain's id is not reused at once (tools
    /// and watches that still name it see it gone, not replaced).
    next_id: u16,
}

/// What is left of a destroyed domain until its last frames come back.
#[derive(Clone, Debug)]
pub struct Dying {
    pub name: String,
    pub uuid: [u8; 16],
    /// Frames still owned by it.
    pub frames: u64,
}

static DOMAINS: IrqMutex<Domains> = IrqMutex::new(Domains {
    map: BTreeMap::new(),
    running: [None; MAX_CPUS],
    slice_ticks: [0; MAX_CPUS],
    dying: BTreeMap::new(),
    building: BTreeSet::new(),
    next_id: FIRST_DOMU,
});

/// Lowest and highest id a created domain gets (Xen's `DOMID_FIRST_RESERVED` is 0x7ff0).
const FIRST_DOMU: u16 = 1;
const LAST_DOMU: u16 = 0x7fef;

impl Domains {
    /// What this physical CPU runs: (domain, vCPU id).
    pub fn running_here(&self) -> Option<(DomId, u32)> {
        self.running.get(percpu::cpu() as usize).copied().flatten()
    }

    /// The domain of the vCPU this CPU runs, acting for that vCPU (`Domain::cur`).
    pub fn current(&mut self) -> Option<&mut Domain> {
        let (id, _) = self.running_here()?;
        self.get_mut(id)
    }

    pub fn get(&self, id: DomId) -> Option<&Domain> {
        self.map.get(&id.0).map(|d| &**d)
    }

    /// Domain `id`; if this CPU runs one of its vCPUs, acting for that one.
    pub fn get_mut(&mut self, id: DomId) -> Option<&mut Domain> {
        let here = self.running_here();
        let d = &mut **self.map.get_mut(&id.0)?;
        focus(d, here);
        Some(d)
    }

    /// Two different domains at once (`None` if either is missing or they are the same).
    pub fn pair_mut(&mut self, a: DomId, b: DomId) -> Option<(&mut Domain, &mut Domain)> {
        if a == b {
            return None;
        }
        let (mut first, mut second) = (None, None);
        let here = self.running_here();
        for (&id, d) in self.map.iter_mut() {
            focus(d, here);
            if id == a.0 {
                first = Some(&mut **d);
            } else if id == b.0 {
                second = Some(&mut **d);
            }
        }
        Some((first?, second?))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Domain> + '_ {
        self.map.values().map(|d| &**d)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Domain> + '_ {
        let here = self.running_here();
        self.map.values_mut().map(move |d| {
            focus(d, here);
            &mut **d
        })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The id for a new domain: the first free one from the last id handed out on,
    /// wrapping around.
    pub fn free_id(&mut self) -> Option<DomId> {
        let start = self.next_id.clamp(FIRST_DOMU, LAST_DOMU);
        let id = (start..=LAST_DOMU).chain(FIRST_DOMU..start).find(|id| {
            !self.map.contains_key(id)
                && !self.dying.contains_key(id)
                && !self.building.contains(id)
        })?;
        self.next_id = if id == LAST_DOMU { FIRST_DOMU } else { id + 1 };
        Some(DomId(id))
    }

    pub fn insert(&mut self, d: Box<Domain>) {
        self.building.remove(&d.id.0);
        self.map.insert(d.id.0, d);
    }

    /// Takes a domain out of the set to build it (see `remove`), keeping its id taken
    /// until `insert` puts it back.
    pub fn take_for_build(&mut self, id: DomId) -> Option<Box<Domain>> {
        let d = self.remove(id)?;
        self.building.insert(id.0);
        Some(d)
    }

    /// Takes a domain out of the set (never one with a vCPU on a CPU).
    pub fn remove(&mut self, id: DomId) -> Option<Box<Domain>> {
        if self.running.iter().flatten().any(|&(d, _)| d == id) {
            return None;
        }
        self.map.remove(&id.0)
    }

    /// Records a destroyed domain that still has frames referenced elsewhere.
    pub fn add_dying(&mut self, id: DomId, dying: Dying) {
        self.dying.insert(id.0, dying);
    }

    /// The dying domains, by id.
    pub fn dying(&self) -> impl Iterator<Item = (DomId, &Dying)> + '_ {
        self.dying.iter().map(|(&id, d)| (DomId(id), d))
    }

    /// Updates or forgets a dying domain after another reclaim attempt.
    pub fn set_dying_frames(&mut self, id: DomId, frames: u64) {
        if frames == 0 {
            self.dying.remove(&id.0);
        } else if let Some(d) = self.dying.get_mut(&id.0) {
            d.frames = frames;
        }
    }

    /// Records what this CPU runs (the scheduler's switch does the rest).
    pub(crate) fn set_running_here(&mut self, vcpu: Option<(DomId, u32)>) {
        if let Some(r) = self.running.get_mut(percpu::cpu() as usize) {
            *r = vcpu;
        }
    }
}

/// Points `d.cur` at the vCPU this CPU runs when it is one of `d`'s.
fn focus(d: &mut Domain, here: Option<(DomId, u32)>) {
    if let Some((id, v)) = here {
        if id == d.id && (v as usize) < d.vcpus.len() {
            d.cur = v as usize;
        }
    }
}

/// Runs `f` with the domain on the CPU.
pub fn with_current<R>(f: impl FnOnce(&mut Domain) -> R) -> Option<R> {
    DOMAINS.lock().current().map(f)
}

/// Runs `f` with domain `id`.
pub fn with_domain<R>(id: DomId, f: impl FnOnce(&mut Domain) -> R) -> Option<R> {
    DOMAINS.lock().get_mut(id).map(f)
}

/// Runs `f` with every domain.
pub fn with_domains<R>(f: impl FnOnce(&mut Domains) -> R) -> R {
    f(&mut DOMAINS.lock())
}
