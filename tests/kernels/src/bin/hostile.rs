//! `hostile`: dom0 as a hostile frontend of the vbd and the vif the hypervisor serves it
//! (`tests/tests/hostile.rs` boots it with `dom0_disk=vda1 dom0_vif=on dom0_max_vcpus=2`,
//! a disk made as `contract::HOSTILE_*` says and a NIC on QEMU's user network).
//!
//! The kernel plays blkfront and netfront by hand and breaks the protocols on purpose;
//! every attack has one expected outcome, checked here and printed as
//! `hostile: refused: <attack>: <what came back>` (or `served:` for the legitimate
//! requests around them, `UNEXPECTED:` for anything else, `note:` for behaviour that is
//! reported, not judged). The verdict counts them:
//! `hostile: N attacks refused, M legitimate requests served, 0 unexpected`.
//!
//! In order:
//! 1. vbd handshakes the backend must refuse (bad ring grants, ports, ring orders, the
//!    32-bit protocol): Closing, the port still unbound, InitWait again ([`Vbd::handshake_attacks`]).
//! 2. vbd requests on one connection: bad grants of every kind, sectors out of range,
//!    malformed segments and indirect requests, unknown operations, discards out of
//!    range — error responses, the memory they named unchanged; a full ring; vCPU 1
//!    rewriting every entry while it is read; a data grant flipped while reads complete;
//!    the port kicked in a loop; the ring page offered back; overflowing and wrapped
//!    `req_prod` (the device closes, the frontend reconnects: Closing, Closed,
//!    Initialising, a fresh ring); a four-page ring; a restart with reads in flight; its
//!    port closed; a read into the ring itself; its ring grant revoked; `req_prod`
//!    flipped by vCPU 1 ([`Vbd::attacks`]).
//! 3. A read-only partition dom0 attaches to itself, written ([`read_only_vbd`]).
//! 4. vif handshakes the backend must refuse ([`Vif::handshake_attacks`]), then tx chains
//!    and rx requests with bad grants, sizes and slot counts (error responses), the rx
//!    ring offered back, vCPU 1 rewriting tx slots, and the fatal ones (too many slots,
//!    slots past their page, bad extras, missing slots, wrapped indices; each closes the
//!    device, a reconnect follows), the rx ring pinned as a page table ([`Vif::attacks`]).
//! 5. Frames hostile to the switch, while a second vif listens ([`Vif::hostile_frames`]).
//! 6. Real I/O on fresh connections: a write read back and the first write still there,
//!    the frontend directory removed and written again, a broadcast ARP request
//!    answered by QEMU's gateway, xenbr0's counters.
#![cfg_attr(target_os = "none", no_std, no_main)]

use core::{
    fmt,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use ferrovisor_abi::domctl::{
    set_padded, DeviceAttach, DeviceDetach, DomctlCmd, ListSwitchPorts, SwitchPort, SysctlCmd,
    DETACH_FORCE, DEVICE_VBD, DEVICE_VIF, DEVID_AUTO, PORT_UPLINK, PORT_VIF, VBD_MODE_READ,
    VBD_TYPE_DISK,
};
use ferrovisor_abi::xen::{
    event_channel::EVTCHNSTAT_UNBOUND,
    grant_table::{
        GTF_ACCEPT_TRANSFER, GTF_PERMIT_ACCESS, GTF_READING, GTF_TRANSITIVE, GTF_WRITING,
    },
    io::{
        blkif::{
            BlkifOp, BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifRequestSegment,
            BlkifResponse, BLKIF_RING_ENTRY_BYTES, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR,
            BLKIF_RSP_OKAY, VDISK_READONLY,
        },
        netif::{
            NetifExtraGso, NetifExtraInfo, NetifGsoType, NetifRxRequest, NetifRxResponse,
            NetifTxRequest, NetifTxResponse, NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY,
            NETRXF_CSUM_BLANK, NETRXF_EXTRA_INFO, NETRXF_MORE_DATA, NETTXF_CSUM_BLANK,
            NETTXF_DATA_VALIDATED, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA,
        },
    },
    memory::{MemoryOp, XenMemoryReservation},
    xen::{MmuextCmd, MmuextOp, StartInfo, DOMID_SELF, DOMID_XEN, UVMF_INVLPG},
    DomId, GuestHandle,
};
use pvrt::{
    contract::{
        hostile_disk_word, hostile_write_word, HOSTILE_FINAL_WRITE, HOSTILE_FIRST_WRITE,
        HOSTILE_P1_SECTORS, HOSTILE_P1_START, HOSTILE_P2_SECTORS, HOSTILE_P2_START,
        HOSTILE_RACE_WRITE,
    },
    control, events,
    frontend::{self, check_page, fill_page, state, Path, Ring},
    grant::GrantTable,
    region::{self, ScratchPage},
    shared_info,
    smp::{self, Start},
    traps, xenstore,
    xenstore::Store,
};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

pvrt::test_kernel!(name: "hostile", main: test_main);

const VBD_FRONT: &str = "/local/domain/0/device/vbd/51712";
const VIF_FRONT: &str = "/local/domain/0/device/vif/0";
/// xvdb (202 << 8 | 1 << 4): partition 2, attached read-only by the kernel itself.
const XVDB: u32 = 51728;
const XVDB_FRONT: &str = "/local/domain/0/device/vbd/51728";

/// A domain that exists nowhere: grants to it are not grants to the backend.
const OTHER_DOM: DomId = 7;

// Grant references (the table has 512 entries).
const G_VBD_RING: u32 = 16;
const G_VBD2_RING: u32 = 29;
const G_DATA: u32 = 17;
const G_DATA_RO: u32 = 18;
const G_OTHER_DOM: u32 = 19;
const G_FOREIGN: u32 = 20;
const G_INDIRECT: u32 = 21;
/// A writable grant of the kernel's own L4 page table.
const G_PAGE_TABLE: u32 = 22;
/// Entries of the other grant types: transitive, accept-transfer (never access grants).
const G_TRANSITIVE: u32 = 23;
const G_TRANSFER: u32 = 28;
/// The race's grants differ in their low byte only, so that a torn read of one names
/// another of them, never a grant outside the race.
/// The four pages of a `ring-page-order` 2 ring.
const G_BIG_RING: u32 = 24;
const G_RACE: u32 = 0x40;
const G_RACE_FOREIGN: u32 = 0x41;
const G_RACE_UNUSED: u32 = 0x42;
const G_TX_RING: u32 = 32;
const G_RX_RING: u32 = 33;
const G_TX_DATA: u32 = 34;
const G_TX_DATA2: u32 = 35;
const G_RX_PAGE: u32 = 36;
const G_RX_RO: u32 = 48;
/// Never granted.
const G_UNUSED: u32 = 100;
/// Past the one-frame table.
const G_PAST_TABLE: u32 = 100_000;

/// `BLKIF_OP_READ` and `BLKIF_OP_WRITE` (`BlkifOp::Read`, `BlkifOp::Write`).
const OP_READ: u8 = 0;
const OP_WRITE: u8 = 1;

/// Rounds of the race, each a full ring of writes.
const RACE_ROUNDS: u64 = 24;
/// How long to wait for a response or a state.
const WAIT_MS: u64 = 10_000;

/// The sector of the partition's byte `offset` on the whole disk, as a disk offset.
fn disk_offset(sector: u64) -> u64 {
    (HOSTILE_P1_START + sector) * 512
}

// --- Counting outcomes. -----------------------------------------------------------------

#[derive(Default)]
struct Tally {
    refused: u32,
    served: u32,
    unexpected: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Attack,
    Legit,
}

impl Tally {
    fn check(&mut self, kind: Kind, what: &str, ok: bool, got: fmt::Arguments<'_>) {
        match (ok, kind) {
            (true, Kind::Attack) => {
                self.refused += 1;
                pvrt::println!("hostile: refused: {what}: {got}");
            }
            (true, Kind::Legit) => {
                self.served += 1;
                pvrt::println!("hostile: served: {what}: {got}");
            }
            (false, _) => {
                self.unexpected += 1;
                pvrt::println!("hostile: UNEXPECTED: {what}: {got}");
            }
        }
    }
}

struct Env<'a> {
    si: &'a StartInfo,
    gt: GrantTable,
    xs: Store,
    t: Tally,
}

impl Env<'_> {
    fn page(&self) -> Result<ScratchPage, &'static str> {
        region::alloc_scratch(self.si).ok_or("out of scratch pages")
    }

    fn write(&mut self, path: &Path, value: &[u8]) -> Result<(), &'static str> {
        self.xs
            .write(path.as_str(), value)
            .map_err(|_| "a frontend node cannot be written")
    }

    fn write_number(&mut self, path: &Path, n: u64) -> Result<(), &'static str> {
        self.xs
            .write_number(path.as_str(), n)
            .map_err(|_| "a frontend node cannot be written")
    }
}

fn test_main(si: &StartInfo) -> Result<(), &'static str> {
    shared_info::map(si).map_err(|_| "cannot map shared_info")?;
    traps::install().map_err(|_| "cannot install the trap table")?;
    let gt = GrantTable::setup(si)?;
    let xs = Store::open(si).ok_or("no xenstore ring")?;
    let mut env = Env {
        si,
        gt,
        xs,
        t: Tally::default(),
    };
    start_mutator(si)?;

    let mut vbd = Vbd::new(&mut env)?;
    vbd.handshake_attacks(&mut env)?;
    vbd.connect(&mut env)?;
    vbd.attacks(&mut env)?;
    let xvdb_ring = read_only_vbd(&mut env, &vbd)?;

    let mut vif = Vif::new(&mut env)?;
    vif.handshake_attacks(&mut env, vbd.port)?;
    vif.connect(&mut env)?;
    vif.attacks(&mut env)?;
    let mut listener = Listener::attach(&mut env)?;
    vif.hostile_frames(&mut env, &mut listener);

    // The device outlived its attacks, and so did the other one.
    vbd.final_io(&mut env)?;
    vif.final_io(&mut env)?;

    // Every grant the backends used is given back, but for the rings still connected.
    let in_use = [
        vbd.ring_gref,
        G_TX_RING,
        G_RX_RING,
        G_L_TX_RING,
        G_L_RX_RING,
    ];
    let held: u32 = (0..512u32)
        .filter(|g| !in_use.contains(g))
        .filter(|&g| {
            // SAFETY: entry `g` < 512 is in the kernel's mapped grant frame.
            let word = unsafe { (env.gt.entry_va(g) as *const u32).read_volatile() };
            (word as u16) & (GTF_READING | GTF_WRITING) != 0
        })
        .count() as u32;
    let rings: u32 = in_use
        .iter()
        .filter(|&&g| {
            // SAFETY: as above.
            let word = unsafe { (env.gt.entry_va(g) as *const u32).read_volatile() };
            (word as u16) & (GTF_READING | GTF_WRITING) == GTF_READING | GTF_WRITING
        })
        .count() as u32;
    env.t.check(
        Kind::Legit,
        "every grant given back but the connected rings'",
        held == 0 && rings == in_use.len() as u32,
        format_args!(
            "{held} other grants still in use, {rings} of {} rings in use",
            in_use.len()
        ),
    );

    // Every frame the backends held is free of them: with the devices closed and the
    // grants ended, each page the kernel ever offered (rings and data) can be given
    // back to the hypervisor.
    for (front, back) in [
        (vbd.front, vbd.back),
        (vif.front, vif.back),
        (listener.front, listener.back),
    ] {
        frontend::write_state(&mut env.xs, &front, state::CLOSING)?;
        frontend::write_state(&mut env.xs, &front, state::CLOSED)?;
        frontend::wait_state(&mut env.xs, &back, state::CLOSED, WAIT_MS)
            .map_err(|_| "a backend did not close at the end")?;
    }
    for g in 0..512 {
        env.gt.grant_raw(g, 0, 0, 0);
    }
    let big: [ScratchPage; 4] = core::array::from_fn(|i| {
        let va = vbd.big_ring.va + i as u64 * region::PAGE_SIZE;
        ScratchPage {
            va,
            mfn: region::mfn_of(si, va),
        }
    });
    let mut offered = 0;
    let mut taken = 0;
    let pages = [
        vbd.ring_page,
        vbd.data,
        vbd.data_ro,
        vbd.indirect,
        vbd.race,
        xvdb_ring,
        vif.tx_page,
        vif.rx_page,
        vif.tx_data,
        vif.rx_ro,
    ];
    for page in pages
        .iter()
        .chain(&big)
        .chain(&vif.rx_pages)
        .chain(&listener.pages)
    {
        offered += 1;
        // SAFETY: the page is one of the kernel's scratch pages, never touched again.
        let rc = unsafe { pvrt::update_va_mapping(page.va, 0, UVMF_INVLPG) };
        if rc == 0 && give_back(page.mfn) == 1 {
            taken += 1;
        }
    }
    env.t.check(
        Kind::Legit,
        "every page offered to the backends given back to the hypervisor at the end",
        taken == offered,
        format_args!("{taken} of {offered} taken back"),
    );

    let t = &env.t;
    pvrt::println!(
        "hostile: {} attacks refused, {} legitimate requests served, {} unexpected",
        t.refused,
        t.served,
        t.unexpected
    );
    pvrt::ensure!(t.unexpected == 0, "{} unexpected outcomes", t.unexpected);
    Ok(())
}

/// A node value a handshake attack writes.
#[derive(Clone, Copy)]
enum Value {
    Num(u64),
    Text(&'static [u8]),
    /// The domain's xenstore port.
    StorePort,
    /// A port of this domain left unbound for another domain.
    OtherDomPort,
}

/// The frontend wrote `nodes` (after its usual ones) and went to `front_state`: the
/// backend must refuse — Closing, the port it was given still unbound for the backend
/// (or never the backend's), the store still answering — then come back to InitWait
/// after the frontend's Closing, Closed, Initialising. Returns whether it was refused.
fn refused_handshake(
    env: &mut Env<'_>,
    what: &str,
    front: &Path,
    back: &Path,
    nodes: &[(&str, Value)],
    port: u32,
    front_state: u32,
) -> Result<(), &'static str> {
    for &(node, value) in nodes {
        let path = front.join(node);
        match value {
            Value::Num(n) => env.write_number(&path, n)?,
            Value::Text(t) => env.write(&path, t)?,
            Value::StorePort => env.write_number(&path, env.si.store_evtchn.into())?,
            Value::OtherDomPort => {
                let p = control::alloc_unbound(OTHER_DOM)?;
                env.write_number(&path, p.into())?
            }
        }
    }
    frontend::write_state(&mut env.xs, front, front_state)?;
    let closed = frontend::wait_state(&mut env.xs, back, state::CLOSING, WAIT_MS);
    let port_free = events::status(port)
        .is_ok_and(|s| s.status == EVTCHNSTAT_UNBOUND && s.u[0] == u32::from(DOMID_XEN));
    let store_ok = frontend::read_state(&mut env.xs, back).is_some();
    env.t.check(
        Kind::Attack,
        what,
        closed.is_ok() && port_free && store_ok,
        format_args!(
            "backend state {}, port {port} {}, store {}",
            match closed {
                Ok(()) => state::CLOSING,
                Err(s) => s,
            },
            if port_free {
                "still unbound for the backend"
            } else {
                "taken"
            },
            if store_ok { "answering" } else { "silent" }
        ),
    );
    frontend::write_state(&mut env.xs, front, state::CLOSING)?;
    frontend::write_state(&mut env.xs, front, state::CLOSED)?;
    frontend::wait_state(&mut env.xs, back, state::CLOSED, WAIT_MS)
        .map_err(|_| "the backend did not close after a refused handshake")?;
    events::close(port);
    for &(node, _) in nodes {
        let _ = env.xs.remove(front.join(node).as_str());
    }
    frontend::write_state(&mut env.xs, front, state::INITIALISING)?;
    frontend::wait_state(&mut env.xs, back, state::INIT_WAIT, WAIT_MS)
        .map_err(|_| "the backend did not come back to InitWait")
}

/// `XENMEM_decrease_reservation` of frame `mfn`: the frames taken (0 or 1).
fn give_back(mfn: u64) -> i64 {
    let mut frames = [mfn];
    let mut r = XenMemoryReservation {
        extent_start: GuestHandle(frames.as_mut_ptr() as u64),
        nr_extents: 1,
        extent_order: 0,
        mem_flags: 0,
        domid: DOMID_SELF,
        _cpad0: [0; 6],
    };
    // SAFETY: the hypervisor reads `r` and `frames`, both on this stack.
    unsafe { pvrt::memory_op(MemoryOp::DecreaseReservation, (&raw mut r).cast()) }
}

/// The frontend unmaps a ring page the backend holds and gives the frame back to the
/// hypervisor (`XENMEM_decrease_reservation`): it must not be taken while the backend
/// holds it. The page is mapped back either way (a frame that was taken cannot be, and
/// the test stops there).
fn balloon_held_page(
    env: &mut Env<'_>,
    what: &str,
    page: &ScratchPage,
) -> Result<(), &'static str> {
    // SAFETY: the page is one of the kernel's scratch pages; nothing touches it until it
    // is mapped back below.
    let rc = unsafe { pvrt::update_va_mapping(page.va, 0, UVMF_INVLPG) };
    pvrt::ensure!(rc == 0, "unmapping a ring page returned {rc}");
    let taken = give_back(page.mfn);
    // SAFETY: maps the page's own frame back where it was.
    let rc =
        unsafe { pvrt::update_va_mapping(page.va, page.maddr() | region::PTE_RW, UVMF_INVLPG) };
    env.t.check(
        Kind::Attack,
        what,
        taken == 0 && rc == 0,
        format_args!("{taken} frames taken back, mapped again: {rc}"),
    );
    pvrt::ensure!(
        rc == 0,
        "the ring page cannot be mapped back ({rc}): its frame was taken"
    );
    Ok(())
}

// --- The vbd. -----------------------------------------------------------------------------

fn blk_req(op: u8, sector: u64, segs: &[(u32, u8, u8)]) -> BlkifRequest {
    let mut r = BlkifRequest::new_zeroed();
    r.operation = op;
    r.nr_segments = segs.len() as u8;
    r.sector_number = sector;
    for (slot, &(gref, first_sect, last_sect)) in r.seg.iter_mut().zip(segs) {
        *slot = BlkifRequestSegment {
            gref,
            first_sect,
            last_sect,
            _cpad: [0; 2],
        };
    }
    r
}

fn page_req(op: u8, sector: u64, gref: u32) -> BlkifRequest {
    blk_req(op, sector, &[(gref, 0, 7)])
}

fn indirect(indirect_op: u8, sector: u64, nr_segments: u16, gref: u32) -> BlkifRequestIndirect {
    let mut r = BlkifRequestIndirect::new_zeroed();
    r.operation = BlkifOp::Indirect.raw();
    r.indirect_op = indirect_op;
    r.nr_segments = nr_segments;
    r.sector_number = sector;
    r.indirect_grefs[0] = gref;
    r
}

fn discard(sector: u64, nr_sectors: u64) -> BlkifRequestDiscard {
    let mut r = BlkifRequestDiscard::new_zeroed();
    r.operation = BlkifOp::Discard.raw();
    r.sector_number = sector;
    r.nr_sectors = nr_sectors;
    r
}

struct Vbd {
    front: Path,
    back: Path,
    ring_page: ScratchPage,
    ring_gref: u32,
    /// The size `sectors` must say.
    expect_sectors: u64,
    ring: Ring,
    /// A four-page ring's first page (the others follow it), used when `big`.
    big_ring: ScratchPage,
    big: bool,
    /// Connect with a two-page ring whose two grants are the same.
    alias: bool,
    port: u32,
    prod: u32,
    cons: u32,
    sectors: u64,
    discard: bool,
    next_id: u64,
    data: ScratchPage,
    data_ro: ScratchPage,
    indirect: ScratchPage,
    race: ScratchPage,
}

/// A frame that is not this domain's (for grants naming it).
fn foreign_mfn(si: &StartInfo) -> Result<u64, &'static str> {
    (1..4096)
        .find(|&m| xenstore::va_of_mfn(si, m).is_none())
        .ok_or("every low frame is dom0's")
}

impl Vbd {
    fn new(env: &mut Env<'_>) -> Result<Vbd, &'static str> {
        let front = Path::new(VBD_FRONT);
        let mut buf = [0u8; 128];
        let back = frontend::read_str(&mut env.xs, &front.join("backend"), &mut buf)
            .map(Path::new)
            .ok_or("dom0 has no vbd 51712 (dom0_disk=vda1)")?;
        pvrt::println!("hostile: vbd 51712, backend {}", back.as_str());
        let ring_page = env.page()?;
        let big_ring = env.page()?;
        for i in 1..4 {
            let p = env.page()?;
            pvrt::ensure!(
                p.va == big_ring.va + i * region::PAGE_SIZE,
                "the big ring's pages are not contiguous"
            );
            env.gt.grant(G_BIG_RING + i as u32, DOMID_XEN, &p, false);
        }
        env.gt.grant(G_BIG_RING, DOMID_XEN, &big_ring, false);
        let vbd = Vbd {
            front,
            back,
            ring: Ring::new(&ring_page, BLKIF_RING_ENTRY_BYTES),
            ring_page,
            ring_gref: G_VBD_RING,
            expect_sectors: HOSTILE_P1_SECTORS,
            big_ring,
            big: false,
            alias: false,
            port: 0,
            prod: 0,
            cons: 0,
            sectors: 0,
            discard: false,
            next_id: 1,
            data: env.page()?,
            data_ro: env.page()?,
            indirect: env.page()?,
            race: env.page()?,
        };
        let foreign = ScratchPage {
            va: 0,
            mfn: foreign_mfn(env.si)?,
        };
        env.gt.grant(G_DATA, DOMID_XEN, &vbd.data, false);
        env.gt.grant(G_DATA_RO, DOMID_XEN, &vbd.data_ro, true);
        env.gt.grant(G_OTHER_DOM, OTHER_DOM, &vbd.data, false);
        env.gt.grant(G_FOREIGN, DOMID_XEN, &foreign, false);
        env.gt.grant(G_INDIRECT, DOMID_XEN, &vbd.indirect, false);
        let l4 = ScratchPage {
            va: env.si.pt_base,
            mfn: region::mfn_of(env.si, env.si.pt_base),
        };
        env.gt.grant(G_PAGE_TABLE, DOMID_XEN, &l4, false);
        env.gt
            .grant_raw(G_TRANSITIVE, DOMID_XEN, vbd.data.mfn, GTF_TRANSITIVE);
        env.gt
            .grant_raw(G_TRANSFER, DOMID_XEN, vbd.data.mfn, GTF_ACCEPT_TRANSFER);
        env.gt.grant(G_RACE, DOMID_XEN, &vbd.race, true);
        env.gt.grant(G_RACE_FOREIGN, DOMID_XEN, &foreign, false);
        fill_page(&vbd.race, |off| hostile_write_word(2, off));
        Ok(vbd)
    }

    /// Another vbd of dom0 (`front`), sharing this one's data pages and grants, on its
    /// own ring page (grant `ring_gref`).
    fn another(
        &self,
        env: &mut Env<'_>,
        front: &str,
        ring_gref: u32,
        sectors: u64,
    ) -> Result<Vbd, &'static str> {
        let front = Path::new(front);
        let mut buf = [0u8; 128];
        let back = frontend::read_str(&mut env.xs, &front.join("backend"), &mut buf)
            .map(Path::new)
            .ok_or("the second vbd has no backend node")?;
        let ring_page = env.page()?;
        Ok(Vbd {
            front,
            back,
            ring: Ring::new(&ring_page, BLKIF_RING_ENTRY_BYTES),
            ring_page,
            ring_gref,
            expect_sectors: sectors,
            big_ring: self.big_ring,
            big: false,
            alias: false,
            port: 0,
            prod: 0,
            cons: 0,
            sectors: 0,
            discard: false,
            next_id: 1,
            data: self.data,
            data_ro: self.data_ro,
            indirect: self.indirect,
            race: self.race,
        })
    }

    /// blkfront's connect: the ring, the port, Initialised; the backend's Connected.
    fn connect(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        frontend::wait_state(&mut env.xs, &self.back, state::INIT_WAIT, WAIT_MS)
            .map_err(|_| "the vbd backend is not at InitWait")?;
        if self.alias {
            // Both pages of a two-page ring are the same grant: the backend sees a
            // 64-entry ring whose halves alias; the first 32 entries are where this
            // one-page view has them.
            self.ring = Ring::new(&self.ring_page, BLKIF_RING_ENTRY_BYTES);
            env.gt
                .grant(self.ring_gref, DOMID_XEN, &self.ring_page, false);
            env.write_number(&self.front.join("ring-page-order"), 1)?;
            env.write_number(&self.front.join("ring-ref0"), self.ring_gref.into())?;
            env.write_number(&self.front.join("ring-ref1"), self.ring_gref.into())?;
        } else if self.big {
            self.ring = Ring::over(self.big_ring.va, 4, BLKIF_RING_ENTRY_BYTES);
            env.write_number(&self.front.join("ring-page-order"), 2)?;
            for i in 0..4u32 {
                let mut name = *b"ring-ref0";
                name[8] += i as u8;
                let name = core::str::from_utf8(&name).unwrap_or("ring-ref0");
                env.write_number(&self.front.join(name), (G_BIG_RING + i).into())?;
            }
        } else {
            self.ring = Ring::new(&self.ring_page, BLKIF_RING_ENTRY_BYTES);
            env.gt
                .grant(self.ring_gref, DOMID_XEN, &self.ring_page, false);
            for node in [
                "ring-page-order",
                "ring-ref0",
                "ring-ref1",
                "ring-ref2",
                "ring-ref3",
            ] {
                let _ = env.xs.remove(self.front.join(node).as_str());
            }
            env.write_number(&self.front.join("ring-ref"), self.ring_gref.into())?;
        }
        self.port = control::alloc_unbound(DOMID_XEN)?;
        env.write_number(&self.front.join("event-channel"), self.port.into())?;
        env.write(&self.front.join("protocol"), b"x86_64-abi")?;
        frontend::write_state(&mut env.xs, &self.front, state::INITIALISED)?;
        frontend::wait_state(&mut env.xs, &self.back, state::CONNECTED, WAIT_MS)
            .map_err(|_| "the vbd backend did not connect")?;
        self.sectors = frontend::read_number(&mut env.xs, &self.back.join("sectors"))
            .ok_or("the vbd backend wrote no sectors")?;
        self.discard =
            frontend::read_number(&mut env.xs, &self.back.join("feature-discard")) == Some(1);
        pvrt::ensure!(
            self.sectors == self.expect_sectors,
            "the vbd has {} sectors, expected {}",
            self.sectors,
            self.expect_sectors
        );
        self.prod = 0;
        self.cons = 0;
        Ok(())
    }

    /// Handshakes the backend must refuse, from InitWait back to InitWait.
    fn handshake_attacks(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        use Value::{Num, OtherDomPort, StorePort, Text};
        let attacks: [(&str, &[(&str, Value)]); 13] = [
            (
                "vbd ring-ref an unused grant",
                &[("ring-ref", Num(G_UNUSED.into()))],
            ),
            (
                "vbd ring-ref past the table",
                &[("ring-ref", Num(G_PAST_TABLE.into()))],
            ),
            (
                "vbd ring-ref a read-only grant",
                &[("ring-ref", Num(G_DATA_RO.into()))],
            ),
            (
                "vbd ring-ref a grant to another domain",
                &[("ring-ref", Num(G_OTHER_DOM.into()))],
            ),
            (
                "vbd ring-ref a frame not the frontend's",
                &[("ring-ref", Num(G_FOREIGN.into()))],
            ),
            (
                "vbd ring-ref the frontend's L4 page table",
                &[("ring-ref", Num(G_PAGE_TABLE.into()))],
            ),
            ("vbd ring-ref not a number", &[("ring-ref", Text(b"16x"))]),
            (
                "vbd event-channel the xenstore port",
                &[("event-channel", StorePort)],
            ),
            ("vbd event-channel no port", &[("event-channel", Num(4000))]),
            (
                "vbd event-channel unbound for another domain",
                &[("event-channel", OtherDomPort)],
            ),
            (
                "vbd ring-page-order 5 (4 offered)",
                &[("ring-page-order", Num(5))],
            ),
            (
                "vbd ring-page-order 1 with an unused second page",
                &[
                    ("ring-page-order", Num(1)),
                    ("ring-ref0", Num(G_VBD_RING.into())),
                    ("ring-ref1", Num(G_UNUSED.into())),
                ],
            ),
            (
                "vbd protocol x86_32-abi",
                &[("protocol", Text(b"x86_32-abi"))],
            ),
        ];
        for (what, nodes) in attacks {
            frontend::wait_state(&mut env.xs, &self.back, state::INIT_WAIT, WAIT_MS)
                .map_err(|_| "the vbd backend is not at InitWait")?;
            self.ring.reset();
            env.gt.grant(G_VBD_RING, DOMID_XEN, &self.ring_page, false);
            let port = control::alloc_unbound(DOMID_XEN)?;
            env.write_number(&self.front.join("ring-ref"), G_VBD_RING.into())?;
            env.write_number(&self.front.join("event-channel"), port.into())?;
            env.write(&self.front.join("protocol"), b"x86_64-abi")?;
            refused_handshake(
                env,
                what,
                &self.front,
                &self.back,
                nodes,
                port,
                state::INITIALISED,
            )?;
        }
        Ok(())
    }

    /// The frontend starts over (Initialising straight from Connected) with a ring of
    /// reads in flight: the backend drops them, and nothing of them reaches the next
    /// ring or the pages they named.
    fn restart_in_flight(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let n = self.ring.size();
        for k in 0..n {
            let mut r = page_req(OP_READ, u64::from(k) * 8, G_DATA);
            r.id = self.next_id + u64::from(k);
            self.ring.write(self.prod.wrapping_add(k), r.as_bytes());
        }
        self.next_id += u64::from(n);
        self.prod = self.prod.wrapping_add(n);
        self.ring.publish(self.prod);
        events::send(self.port);
        frontend::write_state(&mut env.xs, &self.front, state::INITIALISING)?;
        let restarted = frontend::wait_state(&mut env.xs, &self.back, state::INIT_WAIT, WAIT_MS);
        fill_page(&self.data, |off| 0x1234_0000_0000_0000 | off);
        events::close(self.port);
        self.connect(env)?;
        // Time for any late completion to land.
        let until = pvrt::time::now() + 300 * pvrt::time::NS_PER_MS;
        while pvrt::time::now() < until {
            pvrt::sched_yield();
        }
        let fresh = self.ring.rsp_prod();
        let page = check_page(&self.data, |off| 0x1234_0000_0000_0000 | off);
        env.t.check(
            Kind::Attack,
            "vbd frontend restarted with a ring of reads in flight",
            restarted.is_ok() && fresh == 0 && page.is_none(),
            format_args!(
                "backend back at InitWait: {}, responses on the new ring {fresh}, the old \
                 requests' page changed at {page:?}",
                restarted.is_ok()
            ),
        );
        self.read_check(env, "vbd read after the restart", 0, |off| {
            hostile_disk_word(disk_offset(0) + off)
        });
        Ok(())
    }

    /// The frontend closes its end of the connected event channel: nothing can kick the
    /// backend, which stays connected; the frontend's next connection (whose port may
    /// well be the same number) works.
    fn close_connected_port(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let old = self.port;
        let rc = events::close(old);
        let still = frontend::read_state(&mut env.xs, &self.back) == Some(state::CONNECTED);
        env.t.check(
            Kind::Attack,
            "vbd event channel closed by the frontend while connected",
            rc == 0 && still,
            format_args!("close {rc}, backend still connected: {still}"),
        );
        self.reconnect(env)?;
        pvrt::println!(
            "hostile: vbd reconnected on port {} (the closed one was {old})",
            self.port
        );
        self.read_check(
            env,
            "vbd read after the port was closed and the device reconnected",
            0,
            |off| hostile_disk_word(disk_offset(0) + off),
        );
        Ok(())
    }

    /// The frontend removes its whole device directory while connected: the backend reads
    /// it as Closed and lets go; a frontend that writes the directory again (state,
    /// ring details) connects again.
    fn remove_directory(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let rc = env.xs.remove(self.front.as_str());
        let closed = frontend::wait_state(&mut env.xs, &self.back, state::CLOSED, WAIT_MS);
        env.t.check(
            Kind::Attack,
            "vbd frontend directory removed while connected",
            rc.is_ok() && closed.is_ok(),
            format_args!(
                "rm {}, backend state {}",
                if rc.is_ok() { "done" } else { "refused" },
                match closed {
                    Ok(()) => state::CLOSED,
                    Err(s) => s,
                }
            ),
        );
        events::close(self.port);
        frontend::write_state(&mut env.xs, &self.front, state::INITIALISING)?;
        self.connect(env)?;
        self.read_check(
            env,
            "vbd read after the frontend directory was written again",
            0,
            |off| hostile_disk_word(disk_offset(0) + off),
        );
        Ok(())
    }

    /// The frontend closes and starts over after the backend closed the device.
    fn reconnect(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        frontend::write_state(&mut env.xs, &self.front, state::CLOSING)?;
        frontend::write_state(&mut env.xs, &self.front, state::CLOSED)?;
        frontend::wait_state(&mut env.xs, &self.back, state::CLOSED, WAIT_MS)
            .map_err(|_| "the vbd backend did not close")?;
        events::close(self.port);
        frontend::write_state(&mut env.xs, &self.front, state::INITIALISING)?;
        self.connect(env)
    }

    /// Sends one request (its id set here) and waits for its response.
    fn request(&mut self, bytes: &mut [u8]) -> Option<BlkifResponse> {
        let id = self.next_id;
        self.next_id += 1;
        bytes[8..16].copy_from_slice(&id.to_le_bytes());
        self.ring.write(self.prod, bytes);
        self.prod = self.prod.wrapping_add(1);
        self.ring.publish(self.prod);
        events::send(self.port);
        if !self.ring.wait_responses(self.prod, WAIT_MS) {
            return None;
        }
        let mut raw = [0u8; 16];
        self.ring.read(self.cons, &mut raw);
        self.cons = self.cons.wrapping_add(1);
        BlkifResponse::read_from_bytes(&raw)
            .ok()
            .filter(|r| r.id == id)
    }

    /// One request whose response must be `want` with operation `op`.
    fn io(
        &mut self,
        env: &mut Env<'_>,
        kind: Kind,
        what: &str,
        bytes: &mut [u8],
        want: i16,
        op: u8,
    ) -> bool {
        match self.request(bytes) {
            Some(r) => {
                let ok = r.status == want && r.operation == op;
                env.t.check(
                    kind,
                    what,
                    ok,
                    format_args!(
                        "status {} op {} (expected {want}, op {op})",
                        r.status, r.operation
                    ),
                );
                ok
            }
            None => {
                env.t
                    .check(kind, what, false, format_args!("no response with its id"));
                false
            }
        }
    }

    fn refused(&mut self, env: &mut Env<'_>, what: &str, mut req: BlkifRequest) {
        let op = req.operation;
        self.io(
            env,
            Kind::Attack,
            what,
            req.as_mut_bytes(),
            BLKIF_RSP_ERROR,
            op,
        );
    }

    /// Reads partition sectors `sector..sector + 8` into the data page and checks them
    /// against `word`.
    fn read_check(
        &mut self,
        env: &mut Env<'_>,
        what: &str,
        sector: u64,
        word: impl Fn(u64) -> u64,
    ) {
        fill_page(&self.data, |_| 0xdead_beef_dead_beef);
        let mut r = page_req(OP_READ, sector, G_DATA);
        if !self.io(
            env,
            Kind::Legit,
            what,
            r.as_mut_bytes(),
            BLKIF_RSP_OKAY,
            OP_READ,
        ) {
            return;
        }
        let bad = check_page(&self.data, word);
        env.t.check(
            Kind::Legit,
            what,
            bad.is_none(),
            format_args!("data at byte {bad:?} differs"),
        );
    }

    fn write_page(&mut self, env: &mut Env<'_>, what: &str, sector: u64, tag: u64) {
        fill_page(&self.data, |off| hostile_write_word(tag, off));
        let mut r = page_req(OP_WRITE, sector, G_DATA);
        self.io(
            env,
            Kind::Legit,
            what,
            r.as_mut_bytes(),
            BLKIF_RSP_OKAY,
            OP_WRITE,
        );
    }

    fn attacks(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let end = self.sectors;
        // Legitimate I/O first: the device works before it is attacked.
        self.read_check(env, "vbd read of sectors 0-7", 0, |off| {
            hostile_disk_word(disk_offset(0) + off)
        });
        self.write_page(env, "vbd write of sectors 64-71", HOSTILE_FIRST_WRITE, 1);
        self.read_check(
            env,
            "vbd read back of sectors 64-71",
            HOSTILE_FIRST_WRITE,
            |off| hostile_write_word(1, off),
        );

        // Grants.
        self.refused(
            env,
            "vbd read into an unused grant",
            page_req(OP_READ, 0, G_UNUSED),
        );
        self.refused(
            env,
            "vbd read into a grant past the table",
            page_req(OP_READ, 0, G_PAST_TABLE),
        );
        self.refused(
            env,
            "vbd write from a grant to another domain",
            page_req(OP_WRITE, 256, G_OTHER_DOM),
        );
        self.refused(
            env,
            "vbd read into a grant to another domain",
            page_req(OP_READ, 0, G_OTHER_DOM),
        );
        fill_page(&self.data_ro, |off| 0xee00_0000_0000_0000 | off);
        self.refused(
            env,
            "vbd read into a read-only grant",
            page_req(OP_READ, 0, G_DATA_RO),
        );
        let bad = check_page(&self.data_ro, |off| 0xee00_0000_0000_0000 | off);
        env.t.check(
            Kind::Attack,
            "vbd read into a read-only grant left the page alone",
            bad.is_none(),
            format_args!("first changed byte {bad:?}"),
        );
        self.refused(
            env,
            "vbd read into a grant of a frame not the frontend's",
            page_req(OP_READ, 0, G_FOREIGN),
        );
        self.refused(
            env,
            "vbd read into a transitive grant entry",
            page_req(OP_READ, 0, G_TRANSITIVE),
        );
        self.refused(
            env,
            "vbd write from an accept-transfer grant entry",
            page_req(OP_WRITE, 256, G_TRANSFER),
        );
        // (Were it written, the kernel's L4 would hold disk data: it would not run on.)
        self.refused(
            env,
            "vbd read into a writable grant of the frontend's own L4 page table",
            page_req(OP_READ, 0, G_PAGE_TABLE),
        );
        self.refused(
            env,
            "vbd write from a grant of a frame not the frontend's",
            page_req(OP_WRITE, 256, G_FOREIGN),
        );

        // Sectors.
        self.refused(env, "vbd read past the end", page_req(OP_READ, end, G_DATA));
        self.refused(
            env,
            "vbd read starting inside, ending outside",
            page_req(OP_READ, end - 4, G_DATA),
        );
        self.refused(
            env,
            "vbd write starting inside, ending outside",
            page_req(OP_WRITE, end - 4, G_DATA),
        );
        self.refused(
            env,
            "vbd read with sector + length overflowing",
            page_req(OP_READ, u64::MAX - 3, G_DATA),
        );
        self.refused(
            env,
            "vbd write at sector 2^63",
            page_req(OP_WRITE, 1 << 63, G_DATA),
        );
        self.refused(
            env,
            "vbd write of 11 segments crossing the end",
            blk_req(OP_WRITE, end - 80, &[(G_DATA, 0, 7); 11]),
        );

        // Segments.
        self.refused(
            env,
            "vbd read with first_sect > last_sect",
            blk_req(OP_READ, 0, &[(G_DATA, 5, 2)]),
        );
        self.refused(
            env,
            "vbd read with last_sect 8",
            blk_req(OP_READ, 0, &[(G_DATA, 0, 8)]),
        );
        self.refused(
            env,
            "vbd write with last_sect 255",
            blk_req(OP_WRITE, 0, &[(G_DATA, 0, 255)]),
        );
        self.refused(env, "vbd read of 0 segments", blk_req(OP_READ, 0, &[]));
        self.refused(env, "vbd write of 0 segments", blk_req(OP_WRITE, 0, &[]));
        let mut twelve = blk_req(OP_READ, 0, &[(G_DATA, 0, 0); 11]);
        twelve.nr_segments = 12;
        self.refused(env, "vbd read of 12 segments", twelve);
        let mut huge = blk_req(OP_READ, 0, &[(G_DATA, 0, 0); 11]);
        huge.nr_segments = 255;
        self.refused(env, "vbd read of 255 segments", huge);

        // Operations.
        for (what, op) in [
            (
                "vbd write barrier (not offered)",
                BlkifOp::WriteBarrier.raw(),
            ),
            ("vbd operation 4 (reserved)", 4),
            ("vbd operation 7", 7),
            ("vbd operation 255", 255),
        ] {
            let mut r = page_req(op, 0, G_DATA);
            self.io(
                env,
                Kind::Attack,
                what,
                r.as_mut_bytes(),
                BLKIF_RSP_EOPNOTSUPP,
                op,
            );
        }
        let mut flush = blk_req(BlkifOp::FlushDiskcache.raw(), 0, &[]);
        self.io(
            env,
            Kind::Legit,
            "vbd flush",
            flush.as_mut_bytes(),
            BLKIF_RSP_OKAY,
            BlkifOp::FlushDiskcache.raw(),
        );

        // Discards: an error when the disk discards, "not supported" when it does not.
        let want = if self.discard {
            BLKIF_RSP_ERROR
        } else {
            BLKIF_RSP_EOPNOTSUPP
        };
        let op = BlkifOp::Discard.raw();
        for (what, sector, n) in [
            ("vbd discard past the end", end, 8),
            ("vbd discard starting inside, ending outside", end - 8, 16),
            ("vbd discard of 2^64-1 sectors", 0, u64::MAX),
            (
                "vbd discard with sector + length overflowing",
                8,
                u64::MAX - 4,
            ),
        ] {
            let mut r = discard(sector, n);
            self.io(env, Kind::Attack, what, r.as_mut_bytes(), want, op);
        }

        self.indirect_attacks(env);
        self.full_ring(env);
        let ring = self.ring_page;
        balloon_held_page(env, "vbd ring page given back while connected", &ring)?;
        self.read_check(
            env,
            "vbd read after the ring page was offered back",
            0,
            |off| hostile_disk_word(disk_offset(0) + off),
        );
        self.race(env)?;
        self.kick_and_grant_races(env)?;

        // Ring indices: one past the ring's capacity, then behind what was answered.
        let size = self.ring.size();
        self.overflow(
            env,
            "vbd req_prod one past the ring's capacity",
            self.prod.wrapping_add(size + 1),
        )?;
        self.overflow(
            env,
            "vbd req_prod wrapped behind rsp_prod",
            self.prod.wrapping_sub(1),
        )?;
        self.overflow(
            env,
            "vbd req_prod 2^31 ahead",
            self.prod.wrapping_add(1 << 31),
        )?;
        // A four-page ring (entries straddle its pages): a full ring's worth of reads in
        // flight, then one past its 128 entries. Back to one page after.
        self.big = true;
        self.reconnect(env)?;
        pvrt::ensure!(
            self.ring.size() == 128,
            "a four-page ring has {} entries",
            self.ring.size()
        );
        self.full_ring(env);
        self.big = false;
        self.overflow(
            env,
            "vbd req_prod one past a four-page ring's capacity",
            self.prod.wrapping_add(129),
        )?;
        self.restart_in_flight(env)?;
        self.close_connected_port(env)?;
        self.ring_as_data(env)?;
        self.revoked_ring_grant(env)?;
        self.flipping_req_prod(env)?;
        self.aliased_ring(env)
    }

    /// The ring grant's `GTF_reading | GTF_writing`, as the hypervisor keeps them in the
    /// shared entry while the grant is in use.
    fn ring_grant_in_use(&self, env: &Env<'_>) -> u16 {
        // SAFETY: the entry's first word is in the kernel's mapped grant frame.
        let word = unsafe { (env.gt.entry_va(self.ring_gref) as *const u32).read_volatile() };
        (word as u16) & (GTF_READING | GTF_WRITING)
    }

    /// A two-page ring whose pages are one grant (pinned twice): it connects and serves;
    /// the grant shows in use while connected and is given back whole (both pins) once
    /// the device lets go.
    fn aliased_ring(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let single = self.ring_grant_in_use(env);
        self.alias = true;
        self.ring.publish(self.prod.wrapping_add(1000));
        events::send(self.port);
        frontend::wait_state(&mut env.xs, &self.back, state::CLOSING, WAIT_MS)
            .map_err(|_| "the vbd did not close after an overflow")?;
        self.reconnect(env)?;
        self.read_check(
            env,
            "vbd read on a ring whose two pages are one grant",
            0,
            |off| hostile_disk_word(disk_offset(0) + off),
        );
        let connected = self.ring_grant_in_use(env);
        self.alias = false;
        frontend::write_state(&mut env.xs, &self.front, state::CLOSING)?;
        frontend::write_state(&mut env.xs, &self.front, state::CLOSED)?;
        frontend::wait_state(&mut env.xs, &self.back, state::CLOSED, WAIT_MS)
            .map_err(|_| "the vbd backend did not close")?;
        let released = self.ring_grant_in_use(env);
        let both = GTF_READING | GTF_WRITING;
        env.t.check(
            Kind::Attack,
            "vbd ring of two pages that are one grant",
            single == both && connected == both && released == 0,
            format_args!(
                "grant in use (reading|writing) with a one-page ring {single:#x}, with the \
                 aliased ring {connected:#x}, once closed {released:#x}"
            ),
        );
        events::close(self.port);
        frontend::write_state(&mut env.xs, &self.front, state::INITIALISING)?;
        self.connect(env)?;
        self.read_check(env, "vbd read after the aliased ring", 0, |off| {
            hostile_disk_word(disk_offset(0) + off)
        });
        Ok(())
    }

    /// vCPU 1 flips `req_prod` between a ring of valid reads and 2^31 past it while
    /// vCPU 0 kicks: the backend either sees the overflow and closes the device, or
    /// serves the reads — every response for one of them, once — and a reconnect works.
    fn flipping_req_prod(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let n = self.ring.size();
        let base = self.next_id;
        for k in 0..n {
            let mut r = page_req(OP_READ, u64::from(k) * 8, G_DATA);
            r.id = base + u64::from(k);
            self.ring.write(self.prod.wrapping_add(k), r.as_bytes());
        }
        self.next_id += u64::from(n);
        let good = self.prod.wrapping_add(n);
        RACE_VARIANTS[0].0.store(good.into(), Ordering::SeqCst);
        RACE_VARIANTS[1]
            .0
            .store(good.wrapping_add(1 << 31).into(), Ordering::SeqCst);
        RACE_RING.store(self.ring.entry_va(0) - 64, Ordering::SeqCst);
        RACE_MODE.store(RACE_INDEX, Ordering::SeqCst);
        let before = MUTATIONS.load(Ordering::SeqCst);
        RACE_ON.store(true, Ordering::SeqCst);
        let started = wait_for(|| MUTATIONS.load(Ordering::SeqCst) > before);
        for _ in 0..200 {
            events::send(self.port);
            pvrt::sched_yield();
        }
        RACE_ON.store(false, Ordering::SeqCst);
        let stopped = wait_for(|| MUTATOR_IDLE.load(Ordering::SeqCst));
        pvrt::ensure!(started && stopped, "vCPU 1 did not take part");
        let flips = MUTATIONS.load(Ordering::SeqCst) - before;
        self.prod = good;
        self.ring.publish(good);
        events::send(self.port);
        let closed = frontend::wait_state(&mut env.xs, &self.back, state::CLOSING, 500).is_ok();
        let (ok, errors, wrong) = if closed {
            (0, 0, 0)
        } else {
            self.collect(n, base)
        };
        env.t.check(
            Kind::Attack,
            "vbd req_prod flipped between valid and 2^31 ahead while kicked",
            closed || (ok == n && wrong == 0),
            format_args!(
                "{}; {ok} OK, {errors} errors, {wrong} wrong; {flips} flips",
                if closed {
                    "the device closed"
                } else {
                    "the reads were served"
                }
            ),
        );
        if !closed {
            self.ring.publish(self.prod.wrapping_add(1000));
            events::send(self.port);
            frontend::wait_state(&mut env.xs, &self.back, state::CLOSING, WAIT_MS)
                .map_err(|_| "the vbd did not close after an overflow")?;
        }
        self.reconnect(env)?;
        self.read_check(env, "vbd read after the flipped req_prod", 0, |off| {
            hostile_disk_word(disk_offset(0) + off)
        });
        Ok(())
    }

    /// A read into the ring's own page: disk data lands on the ring (its indices
    /// included). Whatever the backend makes of the ring after that — a response, or a
    /// closed device when the indices it reads back overflow — it must not fault, and a
    /// reconnect works.
    fn ring_as_data(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let mut r = page_req(OP_READ, 0, self.ring_gref);
        let id = self.next_id;
        self.next_id += 1;
        r.id = id;
        self.ring.write(self.prod, r.as_bytes());
        self.prod = self.prod.wrapping_add(1);
        self.ring.publish(self.prod);
        events::send(self.port);
        let closed = frontend::wait_state(&mut env.xs, &self.back, state::CLOSING, 2000).is_ok();
        // The disk's words now sit where the indices were: rsp_prod is whatever the
        // backend wrote last.
        env.t.check(
            Kind::Attack,
            "vbd read into the ring's own page",
            true,
            format_args!(
                "the device {}",
                if closed {
                    "closed (the indices read back overflowed)"
                } else {
                    "stayed connected"
                }
            ),
        );
        if !closed {
            // Break it for good, to start over from a known state.
            self.ring.publish(self.prod.wrapping_add(1000));
            events::send(self.port);
            frontend::wait_state(&mut env.xs, &self.back, state::CLOSING, WAIT_MS)
                .map_err(|_| "the vbd did not close after an overflow")?;
        }
        self.reconnect(env)?;
        self.read_check(env, "vbd read after the ring was read into", 0, |off| {
            hostile_disk_word(disk_offset(0) + off)
        });
        Ok(())
    }

    /// The frontend ends its ring's grant (entry zeroed) while connected. Xen's rule:
    /// a grant in use cannot be revoked; the backend keeps the frame it holds. Which the
    /// backend does here is reported, not judged (`note:`): either way it must not
    /// fault, and a reconnect with the grant restored works.
    fn revoked_ring_grant(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        env.gt.grant_raw(self.ring_gref, 0, 0, 0);
        fill_page(&self.data, |_| 0);
        let mut r = page_req(OP_READ, 0, G_DATA);
        let served = self.request(r.as_mut_bytes());
        pvrt::println!(
            "hostile: note: vbd ring grant revoked while connected: the ring is {}",
            match served {
                Some(r) if r.status == BLKIF_RSP_OKAY =>
                    "still served (the backend keeps the frame it holds)",
                Some(_) => "answered with an error",
                None => "no longer served",
            }
        );
        frontend::write_state(&mut env.xs, &self.front, state::CLOSING)?;
        frontend::wait_state(&mut env.xs, &self.back, state::CLOSING, WAIT_MS)
            .map_err(|_| "the vbd did not follow the frontend's Closing")?;
        self.reconnect(env)?;
        self.read_check(
            env,
            "vbd read after its ring grant was revoked and the device reconnected",
            0,
            |off| hostile_disk_word(disk_offset(0) + off),
        );
        Ok(())
    }

    /// Writes `segs` (gref, first, last) into the indirect page.
    fn indirect_segments(&self, segs: impl Iterator<Item = (u32, u8, u8)>) {
        for (i, (gref, first, last)) in segs.enumerate().take(512) {
            let word = u64::from(gref) | u64::from(first) << 32 | u64::from(last) << 40;
            // SAFETY: entry `i` < 512 of the indirect page, a scratch page mapped
            // writable.
            unsafe { self.indirect.words().add(i).write_volatile(word) };
        }
    }

    fn indirect_attacks(&mut self, env: &mut Env<'_>) {
        // A valid indirect read first: 12 one-sector segments from sector 0, segment
        // i into sector slot i % 8 of the data page (the later ones overwrite).
        self.indirect_segments((0..12).map(|i| (G_DATA, i % 8, i % 8)));
        fill_page(&self.data, |_| 0);
        let mut r = indirect(OP_READ, 0, 12, G_INDIRECT);
        if self.io(
            env,
            Kind::Legit,
            "vbd indirect read of 12 segments",
            r.as_mut_bytes(),
            BLKIF_RSP_OKAY,
            OP_READ,
        ) {
            let bad = check_page(&self.data, |off| {
                let slot = off / 512;
                let sector = if slot < 4 { 8 + slot } else { slot };
                hostile_disk_word(disk_offset(sector) + off % 512)
            });
            env.t.check(
                Kind::Legit,
                "vbd indirect read's data",
                bad.is_none(),
                format_args!("data at byte {bad:?} differs"),
            );
        }

        self.indirect_segments((0..40).map(|_| (G_DATA, 0, 7)));
        let end = self.sectors;
        for (what, mut req, op) in [
            (
                "vbd indirect read of 0 segments",
                indirect(OP_READ, 0, 0, G_INDIRECT),
                OP_READ,
            ),
            (
                "vbd indirect read of 33 segments (32 offered)",
                indirect(OP_READ, 0, 33, G_INDIRECT),
                OP_READ,
            ),
            (
                "vbd indirect write of 65535 segments",
                indirect(OP_WRITE, 0, u16::MAX, G_INDIRECT),
                OP_WRITE,
            ),
            (
                "vbd indirect with indirect_op discard",
                indirect(BlkifOp::Discard.raw(), 0, 12, G_INDIRECT),
                BlkifOp::Discard.raw(),
            ),
            (
                "vbd indirect with indirect_op indirect",
                indirect(BlkifOp::Indirect.raw(), 0, 12, G_INDIRECT),
                BlkifOp::Indirect.raw(),
            ),
            (
                "vbd indirect read through an unused indirect grant",
                indirect(OP_READ, 0, 12, G_UNUSED),
                OP_READ,
            ),
            (
                "vbd indirect read through an indirect grant of a foreign frame",
                indirect(OP_READ, 0, 12, G_FOREIGN),
                OP_READ,
            ),
            (
                "vbd indirect write crossing the end",
                indirect(OP_WRITE, end - 64, 12, G_INDIRECT),
                OP_WRITE,
            ),
        ] {
            self.io(
                env,
                Kind::Attack,
                what,
                req.as_mut_bytes(),
                BLKIF_RSP_ERROR,
                op,
            );
        }
        // A bad segment among good ones in the indirect page.
        self.indirect_segments((0..12).map(|i| (G_DATA, 0, if i == 9 { 9 } else { 7 })));
        let mut r = indirect(OP_READ, 0, 12, G_INDIRECT);
        self.io(
            env,
            Kind::Attack,
            "vbd indirect read with last_sect 9 in its 10th segment",
            r.as_mut_bytes(),
            BLKIF_RSP_ERROR,
            OP_READ,
        );
        self.indirect_segments((0..12).map(|i| (if i == 11 { G_UNUSED } else { G_DATA }, 0, 7)));
        let mut r = indirect(OP_WRITE, 512, 12, G_INDIRECT);
        self.io(
            env,
            Kind::Attack,
            "vbd indirect write with an unused grant in its last segment",
            r.as_mut_bytes(),
            BLKIF_RSP_ERROR,
            OP_WRITE,
        );
    }

    /// A whole ring of reads at once: every one answered OK, once.
    fn full_ring(&mut self, env: &mut Env<'_>) {
        let n = self.ring.size();
        let base = self.next_id;
        for k in 0..n {
            let mut r = page_req(OP_READ, u64::from(k) * 8, G_DATA);
            r.id = base + u64::from(k);
            self.ring.write(self.prod.wrapping_add(k), r.as_bytes());
        }
        self.next_id += u64::from(n);
        self.prod = self.prod.wrapping_add(n);
        self.ring.publish(self.prod);
        events::send(self.port);
        let (ok, errors, wrong) = self.collect(n, base);
        env.t.check(
            Kind::Legit,
            "vbd full ring of reads",
            ok == n,
            format_args!("{ok} OK of {n}, {errors} errors, {wrong} wrong"),
        );
    }

    /// Waits for `n` responses to requests `base..base + n`: (OK ones, error ones, wrong
    /// ones: a status neither OK nor error, an unknown or repeated id, a missing
    /// response).
    fn collect(&mut self, n: u32, base: u64) -> (u32, u32, u32) {
        let got_all = self.ring.wait_responses(self.prod, WAIT_MS);
        let mut seen = 0u128;
        let (mut ok, mut errors, mut bad) = (0, 0, 0);
        let have = if got_all {
            n
        } else {
            self.ring.rsp_prod().wrapping_sub(self.cons).min(n)
        };
        for _ in 0..have {
            let mut raw = [0u8; 16];
            self.ring.read(self.cons, &mut raw);
            self.cons = self.cons.wrapping_add(1);
            let r = BlkifResponse::read_from_bytes(&raw).unwrap_or(BlkifResponse::new(0, 0, 0));
            let k = r.id.wrapping_sub(base);
            if k >= u64::from(n) || seen & (1u128 << k) != 0 {
                bad += 1;
                continue;
            }
            seen |= 1u128 << k;
            match r.status {
                BLKIF_RSP_OKAY => ok += 1,
                BLKIF_RSP_ERROR => errors += 1,
                _ => bad += 1,
            }
        }
        (ok, errors, bad + (n - have))
    }

    /// The request-rewriting race (see the module's documentation).
    fn race(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let s_in = HOSTILE_RACE_WRITE;
        let s_out = self.sectors - 4;
        // A torn read of the sector must give one of the two.
        pvrt::ensure!(
            s_in ^ s_out < 256,
            "the race's sectors differ above the low byte"
        );
        let seg = |gref: u32, last: u8| u64::from(gref) | u64::from(last) << 40;
        let variants = [
            (s_in, seg(G_RACE, 7)),
            (s_out, seg(G_RACE, 7)),
            (s_in, seg(G_RACE_FOREIGN, 7)),
            (s_in, seg(G_RACE_UNUSED, 7)),
            (s_in, seg(G_RACE, 9)),
        ];
        for (i, (sector, seg)) in variants.into_iter().enumerate() {
            RACE_VARIANTS[i].0.store(sector, Ordering::SeqCst);
            RACE_VARIANTS[i].1.store(seg, Ordering::SeqCst);
        }
        RACE_RING.store(self.ring.entry_va(0), Ordering::SeqCst);
        RACE_MODE.store(RACE_VBD, Ordering::SeqCst);
        let before = MUTATIONS.load(Ordering::SeqCst);
        RACE_ON.store(true, Ordering::SeqCst);
        let started = wait_for(|| MUTATIONS.load(Ordering::SeqCst) > before);

        let n = self.ring.size();
        let (mut ok, mut errors, mut wrong) = (0u32, 0u32, 0u32);
        for _ in 0..RACE_ROUNDS {
            let base = self.next_id;
            for k in 0..n {
                let mut r = page_req(OP_WRITE, s_in, G_RACE);
                r.id = base + u64::from(k);
                self.ring.write(self.prod.wrapping_add(k), r.as_bytes());
            }
            self.next_id += u64::from(n);
            self.prod = self.prod.wrapping_add(n);
            self.ring.publish(self.prod);
            events::send(self.port);
            let (good, refused, bad) = self.collect(n, base);
            ok += good;
            errors += refused;
            wrong += bad;
        }
        RACE_ON.store(false, Ordering::SeqCst);
        let stopped = wait_for(|| MUTATOR_IDLE.load(Ordering::SeqCst));
        let mutations = MUTATIONS.load(Ordering::SeqCst) - before;
        let total = RACE_ROUNDS as u32 * n;
        pvrt::ensure!(started && stopped, "vCPU 1 did not take part in the race");
        // Every request got one response, OK or an error.
        env.t.check(
            Kind::Attack,
            "vbd requests rewritten while being read",
            ok + errors == total && wrong == 0 && mutations > 0,
            format_args!(
                "{total} requests, {ok} OK, {errors} errors, {wrong} wrong; vCPU 1 rewrote \
                 the ring {mutations} times"
            ),
        );
        // The page the valid variant names holds the valid data (or its old data if no
        // valid variant was ever read).
        let expect_race = ok > 0;
        self.read_check(env, "vbd read of the race's page", s_in, |off| {
            if expect_race {
                hostile_write_word(2, off)
            } else {
                hostile_disk_word(disk_offset(s_in) + off)
            }
        });
        Ok(())
    }

    /// Runs `rounds` rings of reads of sectors 0.. into `gref` while vCPU 1 does what
    /// `mode` says with `target` and the variants' first words `words`: (OK, errors,
    /// wrong, vCPU 1's iterations).
    fn reads_while(
        &mut self,
        rounds: u32,
        gref: u32,
        mode: u64,
        target: u64,
        words: [u64; 2],
    ) -> Result<(u32, u32, u32, u64), &'static str> {
        for (i, w) in words.into_iter().enumerate() {
            RACE_VARIANTS[i].0.store(w, Ordering::SeqCst);
        }
        RACE_RING.store(target, Ordering::SeqCst);
        RACE_MODE.store(mode, Ordering::SeqCst);
        let before = MUTATIONS.load(Ordering::SeqCst);
        RACE_ON.store(true, Ordering::SeqCst);
        let started = wait_for(|| MUTATIONS.load(Ordering::SeqCst) > before);
        let n = self.ring.size();
        let (mut ok, mut errors, mut wrong) = (0, 0, 0);
        for _ in 0..rounds {
            let base = self.next_id;
            for k in 0..n {
                let mut r = page_req(OP_READ, u64::from(k) * 8, gref);
                r.id = base + u64::from(k);
                self.ring.write(self.prod.wrapping_add(k), r.as_bytes());
            }
            self.next_id += u64::from(n);
            self.prod = self.prod.wrapping_add(n);
            self.ring.publish(self.prod);
            events::send(self.port);
            let (a, b, c) = self.collect(n, base);
            ok += a;
            errors += b;
            wrong += c;
        }
        RACE_ON.store(false, Ordering::SeqCst);
        let stopped = wait_for(|| MUTATOR_IDLE.load(Ordering::SeqCst));
        pvrt::ensure!(started && stopped, "vCPU 1 did not take part");
        Ok((ok, errors, wrong, MUTATIONS.load(Ordering::SeqCst) - before))
    }

    /// vCPU 1 kicks the vbd's port in a loop while vCPU 0 does I/O; then flips the data
    /// page's grant entry between granted and not while the reads complete.
    fn kick_and_grant_races(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let port = u64::from(self.port);
        let (ok, errors, wrong, kicks) = self.reads_while(4, G_DATA, RACE_KICK, port, [0; 2])?;
        let n = 4 * self.ring.size();
        env.t.check(
            Kind::Legit,
            "vbd reads while vCPU 1 kicks the port in a loop",
            ok == n && kicks > 0,
            format_args!("{ok} OK of {n}, {errors} errors, {wrong} wrong; {kicks} kicks"),
        );
        let granted = u64::from(DOMID_XEN) << 16 | u64::from(GTF_PERMIT_ACCESS);
        let entry = env.gt.entry_va(G_RACE);
        let (ok, errors, wrong, flips) =
            self.reads_while(8, G_RACE, RACE_GRANT, entry, [granted, 0])?;
        let n = 8 * self.ring.size();
        env.t.check(
            Kind::Attack,
            "vbd reads into a grant revoked and restored while they complete",
            ok + errors == n && wrong == 0 && flips > 0,
            format_args!("{n} reads, {ok} OK, {errors} errors, {wrong} wrong; {flips} flips"),
        );
        env.gt.grant(G_RACE, DOMID_XEN, &self.race, true);
        Ok(())
    }

    /// Publishes `new_prod` over garbage entries: the backend must close the device
    /// without a response, then a reconnect works.
    fn overflow(
        &mut self,
        env: &mut Env<'_>,
        what: &str,
        new_prod: u32,
    ) -> Result<(), &'static str> {
        let before = self.ring.rsp_prod();
        for k in 0..self.ring.size() {
            self.ring.write(k, &[0xa5; BLKIF_RING_ENTRY_BYTES]);
        }
        self.ring.publish(new_prod);
        events::send(self.port);
        let closed = frontend::wait_state(&mut env.xs, &self.back, state::CLOSING, WAIT_MS);
        let after = self.ring.rsp_prod();
        env.t.check(
            Kind::Attack,
            what,
            closed.is_ok() && after == before,
            format_args!(
                "backend state {}, rsp_prod {before} -> {after}",
                match closed {
                    Ok(()) => state::CLOSING,
                    Err(s) => s,
                }
            ),
        );
        self.reconnect(env)?;
        self.read_check(env, "vbd read after a reconnect", 0, |off| {
            hostile_disk_word(disk_offset(0) + off)
        });
        Ok(())
    }

    /// Real I/O on the device after everything.
    fn final_io(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        self.write_page(
            env,
            "vbd final write of sectors 128-135",
            HOSTILE_FINAL_WRITE,
            3,
        );
        self.read_check(env, "vbd final read back", HOSTILE_FINAL_WRITE, |off| {
            hostile_write_word(3, off)
        });
        self.read_check(
            env,
            "vbd first write still there",
            HOSTILE_FIRST_WRITE,
            |off| hostile_write_word(1, off),
        );
        self.remove_directory(env)?;
        Ok(())
    }
}

/// dom0 attaches partition 2 to itself read-only as xvdb (`DeviceAttach`, as `fv
/// block-attach 0 phy:vda2 xvdb r` would) and tries to change it.
/// Returns the ring page it used.
fn read_only_vbd(env: &mut Env<'_>, vbd: &Vbd) -> Result<ScratchPage, &'static str> {
    let mut req = DeviceAttach::new_zeroed();
    req.kind = DEVICE_VBD;
    req.devid = DEVID_AUTO;
    req.vdev = XVDB;
    req.mode = VBD_MODE_READ;
    req.device_type = VBD_TYPE_DISK;
    set_padded(&mut req.target, b"vda2").ok_or("target name")?;
    set_padded(&mut req.vdev_name, b"xvdb").ok_or("vdev name")?;
    control::domctl(DomctlCmd::DeviceAttach, 0, &req)
        .map_err(|_| "attaching vda2 read-only as xvdb failed")?;
    let mut ro = vbd.another(env, XVDB_FRONT, G_VBD2_RING, HOSTILE_P2_SECTORS)?;
    ro.connect(env)?;
    let info = frontend::read_number(&mut env.xs, &ro.back.join("info")).unwrap_or(0);
    env.t.check(
        Kind::Legit,
        "vbd xvdb (vda2, r) connected read-only",
        info & u64::from(VDISK_READONLY) != 0,
        format_args!("info {info}"),
    );
    let p2 = |sector: u64| (HOSTILE_P2_START + sector) * 512;
    ro.read_check(env, "vbd xvdb read of sectors 0-7", 0, |off| {
        hostile_disk_word(p2(0) + off)
    });
    ro.refused(env, "vbd xvdb write", page_req(OP_WRITE, 0, G_DATA));
    ro.refused(
        env,
        "vbd xvdb flush with data",
        blk_req(BlkifOp::FlushDiskcache.raw(), 8, &[(G_DATA, 0, 7)]),
    );
    ro.indirect_segments((0..12).map(|_| (G_DATA, 0, 7)));
    let mut r = indirect(OP_WRITE, 16, 12, G_INDIRECT);
    ro.io(
        env,
        Kind::Attack,
        "vbd xvdb indirect write",
        r.as_mut_bytes(),
        BLKIF_RSP_ERROR,
        OP_WRITE,
    );
    let want = if ro.discard {
        BLKIF_RSP_ERROR
    } else {
        BLKIF_RSP_EOPNOTSUPP
    };
    let mut r = discard(0, 8);
    ro.io(
        env,
        Kind::Attack,
        "vbd xvdb discard",
        r.as_mut_bytes(),
        want,
        BlkifOp::Discard.raw(),
    );
    let mut flush = blk_req(BlkifOp::FlushDiskcache.raw(), 0, &[]);
    ro.io(
        env,
        Kind::Legit,
        "vbd xvdb flush",
        flush.as_mut_bytes(),
        BLKIF_RSP_OKAY,
        BlkifOp::FlushDiskcache.raw(),
    );
    ro.read_check(env, "vbd xvdb read after the refused writes", 0, |off| {
        hostile_disk_word(p2(0) + off)
    });

    // A forced detach with a ring of reads in flight: the device goes at once (its
    // directories with it), the reads' late completions reach nothing.
    let n = ro.ring.size();
    for k in 0..n {
        let mut r = page_req(OP_READ, u64::from(k) * 8, G_DATA);
        r.id = ro.next_id + u64::from(k);
        ro.ring.write(ro.prod.wrapping_add(k), r.as_bytes());
    }
    ro.prod = ro.prod.wrapping_add(n);
    ro.ring.publish(ro.prod);
    events::send(ro.port);
    let detach = DeviceDetach {
        kind: DEVICE_VBD,
        devid: XVDB,
        flags: DETACH_FORCE,
    };
    let rc = control::domctl(DomctlCmd::DeviceDetach, 0, &detach).map(|_| 0);
    fill_page(&vbd.data, |off| 0x5678_0000_0000_0000 | off);
    let until = pvrt::time::now() + 300 * pvrt::time::NS_PER_MS;
    while pvrt::time::now() < until {
        pvrt::sched_yield();
    }
    let gone = frontend::read_state(&mut env.xs, &ro.back).is_none();
    let page = check_page(&vbd.data, |off| 0x5678_0000_0000_0000 | off);
    env.t.check(
        Kind::Attack,
        "vbd xvdb detached by force with a ring of reads in flight",
        rc == Ok(0) && gone && page.is_none(),
        format_args!(
            "detach {rc:?}, backend directory gone: {gone}, the reads' page changed at {page:?} after"
        ),
    );
    events::close(ro.port);
    Ok(ro.ring_page)
}

/// `ListSwitchPorts`: (frames the switch received from the vif with `mac`, frames it sent
/// to the uplink, frames it sent to the vif).
fn switch_counters(mac: [u8; 6]) -> Result<(u64, u64, u64), &'static str> {
    let mut ports = [SwitchPort::new_zeroed(); 8];
    let list = ListSwitchPorts {
        max_entries: ports.len() as u32,
        nr_entries: 0,
        buffer: GuestHandle(ports.as_mut_ptr() as u64),
    };
    let list = control::sysctl(SysctlCmd::ListSwitchPorts, &list)
        .map_err(|_| "sysctl ListSwitchPorts failed")?;
    let ports = &ports[..(list.nr_entries as usize).min(ports.len())];
    let vif = ports
        .iter()
        .find(|p| p.kind == PORT_VIF && p.mac == mac)
        .ok_or("xenbr0 has no port for vif 0")?;
    let uplink = ports
        .iter()
        .find(|p| p.kind == PORT_UPLINK)
        .ok_or("xenbr0 has no uplink")?;
    Ok((vif.rx_packets, uplink.tx_packets, vif.tx_packets))
}

/// One `mmuext_op` on frame `mfn` of this domain.
fn mmuext(cmd: MmuextCmd, mfn: u64) -> i64 {
    let op = [MmuextOp {
        cmd: cmd.raw(),
        _cpad0: 0,
        arg1: mfn,
        arg2: 0,
    }];
    // SAFETY: pins or unpins a frame of this domain that nothing maps.
    unsafe { pvrt::mmuext_op(&op, None, DOMID_SELF) }
}

// --- vCPU 1, the race's mutator. --------------------------------------------------------

/// The race runs while set; vCPU 1 is between passes while [`MUTATOR_IDLE`].
static RACE_ON: AtomicBool = AtomicBool::new(false);
static MUTATOR_IDLE: AtomicBool = AtomicBool::new(true);
/// Passes over the ring.
static MUTATIONS: AtomicU64 = AtomicU64::new(0);
/// The first ring entry's address.
static RACE_RING: AtomicU64 = AtomicU64::new(0);
/// Which ring the race rewrites: [`RACE_VBD`] or [`RACE_VIF_TX`].
static RACE_MODE: AtomicU64 = AtomicU64::new(RACE_VBD);
const RACE_VBD: u64 = 0;
const RACE_VIF_TX: u64 = 1;
/// Kicks the port in `RACE_RING` in a loop.
const RACE_KICK: u64 = 2;
/// Flips the grant entry word at `RACE_RING` between the variants' first words.
const RACE_GRANT: u64 = 3;
/// Flips the ring's `req_prod` (at `RACE_RING`) the same way.
const RACE_INDEX: u64 = 4;
/// (sector_number, first segment as a word) of each variant.
static RACE_VARIANTS: [(AtomicU64, AtomicU64); 5] =
    [const { (AtomicU64::new(0), AtomicU64::new(0)) }; 5];
/// vCPU 1's stack, in scratch pages.
const STACK_PAGES: u64 = 4;

fn wait_for(cond: impl Fn() -> bool) -> bool {
    let deadline = pvrt::time::now() + WAIT_MS * pvrt::time::NS_PER_MS;
    while !cond() {
        if pvrt::time::now() > deadline {
            return false;
        }
        pvrt::sched_yield();
    }
    true
}

fn start_mutator(si: &StartInfo) -> Result<(), &'static str> {
    let mut next = 0;
    for i in 0..STACK_PAGES {
        let page = region::alloc_scratch(si).ok_or("no scratch page for vCPU 1's stack")?;
        pvrt::ensure!(
            i == 0 || page.va == next,
            "vCPU 1's stack pages are not contiguous"
        );
        next = page.va + region::PAGE_SIZE;
    }
    let ctx = smp::kernel_context(&Start {
        rip: vcpu1_entry_address(),
        rsp: next,
        args: [1, 0],
        l4_mfn: region::mfn_of(si, si.pt_base),
        fs_base: 0,
        gs_base_kernel: 0,
    });
    // SAFETY: the entry is `hostile_vcpu1_entry`, which runs `hostile_vcpu1_main` on the
    // scratch pages just reserved for vCPU 1 alone; the L4 is the kernel's own, the trap
    // table and callbacks the runtime's.
    let ret = unsafe { smp::initialise(1, &ctx) };
    pvrt::ensure!(
        ret == 0,
        "VCPUOP_initialise(1) returned {ret} (dom0_max_vcpus=2?)"
    );
    let ret = smp::up(1);
    pvrt::ensure!(ret == 0, "VCPUOP_up(1) returned {ret}");
    Ok(())
}

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .pushsection .text.hostile_vcpu1_entry, "ax", @progbits
    .global hostile_vcpu1_entry
    .type hostile_vcpu1_entry, @function
hostile_vcpu1_entry:
    and rsp, -16
    xor ebp, ebp
    call hostile_vcpu1_main
    ud2
    .size hostile_vcpu1_entry, . - hostile_vcpu1_entry
    .popsection
    "#
);

fn vcpu1_entry_address() -> u64 {
    #[cfg(target_os = "none")]
    {
        extern "C" {
            fn hostile_vcpu1_entry();
        }
        hostile_vcpu1_entry as unsafe extern "C" fn() as usize as u64
    }
    #[cfg(not(target_os = "none"))]
    0
}

/// vCPU 1: while the race is on, rewrites every entry of the ring, cycling through the
/// variants: in the vbd's ring bytes 16..32 (the sector and the first segment), in the
/// vif's tx ring bytes 4..8 (offset and flags) and 10..12 (size) — never the bytes a
/// response takes.
#[no_mangle]
extern "C" fn hostile_vcpu1_main() -> ! {
    let mut variant = 0usize;
    loop {
        if !RACE_ON.load(Ordering::SeqCst) {
            MUTATOR_IDLE.store(true, Ordering::SeqCst);
            pvrt::sched_yield();
            continue;
        }
        MUTATOR_IDLE.store(false, Ordering::SeqCst);
        let ring = RACE_RING.load(Ordering::SeqCst);
        let (sector, seg) = (
            RACE_VARIANTS[variant].0.load(Ordering::Relaxed),
            RACE_VARIANTS[variant].1.load(Ordering::Relaxed),
        );
        match RACE_MODE.load(Ordering::SeqCst) {
            RACE_KICK => {
                events::send(ring as u32);
                MUTATIONS.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            RACE_GRANT | RACE_INDEX => {
                // SAFETY: `ring` is the address of a grant entry's first word in the
                // kernel's grant frame, mapped writable, 4-byte aligned; the frame is
                // shared with the hypervisor, which changes the word atomically too.
                let word = unsafe { core::sync::atomic::AtomicU32::from_ptr(ring as *mut u32) };
                word.store(sector as u32, Ordering::SeqCst);
                variant = (variant + 1) % 2;
                MUTATIONS.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            _ => {}
        }
        if RACE_MODE.load(Ordering::SeqCst) == RACE_VIF_TX {
            for slot in 0..256u64 {
                let entry = ring + slot * 12;
                // SAFETY: `ring` is the first entry of the vif's tx ring page (a scratch
                // page mapped writable, 256 entries of 12 bytes from offset 64); bytes
                // 4..8 and 10..12 of an entry are its offset and flags, and its size,
                // 4- and 2-byte aligned.
                unsafe {
                    ((entry + 4) as *mut u32).write_volatile(sector as u32);
                    ((entry + 10) as *mut u16).write_volatile(seg as u16);
                }
            }
            variant = (variant + 1) % RACE_VARIANTS.len();
            MUTATIONS.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        for slot in 0..32u64 {
            let entry = ring + slot * BLKIF_RING_ENTRY_BYTES as u64;
            // SAFETY: `ring` is the first entry of the vbd's ring page (a scratch page
            // mapped writable, 32 entries of 112 bytes from offset 64); bytes 16..32 of
            // an entry are its sector and first segment, 8-byte aligned.
            unsafe {
                ((entry + 16) as *mut u64).write_volatile(sector);
                ((entry + 24) as *mut u64).write_volatile(seg);
            }
        }
        variant = (variant + 1) % RACE_VARIANTS.len();
        MUTATIONS.fetch_add(1, Ordering::SeqCst);
    }
}

// --- A second vif, listening. ---------------------------------------------------------

const G_L_TX_RING: u32 = 80;
const G_L_RX_RING: u32 = 81;
const G_L_PAGE: u32 = 82;
const L_PAGES: usize = 8;

/// dom0's second vif (attached by the kernel itself, `DeviceAttach`), a well-behaved
/// frontend that takes neither GSO nor blank checksums: what vif 0 sends reaches it
/// through the switch, segmented and completed.
struct Listener {
    front: Path,
    back: Path,
    /// Its ring pages and rx pages.
    pages: [ScratchPage; 2 + L_PAGES],
    rx: Ring,
    port: u32,
    rx_prod: u32,
    rx_cons: u32,
    /// The sizes of the frames the last [`Listener::drain`] found.
    last_sizes: [u16; 16],
}

impl Listener {
    fn attach(env: &mut Env<'_>) -> Result<Listener, &'static str> {
        let mut req = DeviceAttach::new_zeroed();
        req.kind = DEVICE_VIF;
        req.devid = 1;
        control::domctl(DomctlCmd::DeviceAttach, 0, &req)
            .map_err(|_| "attaching a second vif to dom0 failed")?;
        let front = Path::new("/local/domain/0/device/vif/1");
        let mut buf = [0u8; 128];
        let back = frontend::read_str(&mut env.xs, &front.join("backend"), &mut buf)
            .map(Path::new)
            .ok_or("vif 1 has no backend node")?;
        let tx_page = env.page()?;
        let rx_page = env.page()?;
        // The tx ring stays empty: this vif only listens.
        Ring::new(&tx_page, 12);
        let rx = Ring::new(&rx_page, 8);
        env.gt.grant(G_L_TX_RING, DOMID_XEN, &tx_page, false);
        env.gt.grant(G_L_RX_RING, DOMID_XEN, &rx_page, false);
        let mut pages = [tx_page; 2 + L_PAGES];
        pages[1] = rx_page;
        for i in 0..L_PAGES {
            let p = env.page()?;
            env.gt.grant(G_L_PAGE + i as u32, DOMID_XEN, &p, false);
            pages[2 + i] = p;
        }
        frontend::wait_state(&mut env.xs, &back, state::INIT_WAIT, WAIT_MS)
            .map_err(|_| "vif 1's backend is not at InitWait")?;
        let port = control::alloc_unbound(DOMID_XEN)?;
        env.write_number(&front.join("tx-ring-ref"), G_L_TX_RING.into())?;
        env.write_number(&front.join("rx-ring-ref"), G_L_RX_RING.into())?;
        env.write_number(&front.join("event-channel"), port.into())?;
        env.write(&front.join("request-rx-copy"), b"1")?;
        env.write(&front.join("feature-rx-notify"), b"1")?;
        env.write(&front.join("feature-sg"), b"1")?;
        env.write(&front.join("feature-no-csum-offload"), b"1")?;
        frontend::write_state(&mut env.xs, &front, state::CONNECTED)?;
        frontend::wait_state(&mut env.xs, &back, state::CONNECTED, WAIT_MS)
            .map_err(|_| "vif 1's backend did not connect")?;
        let mut l = Listener {
            front,
            back,
            pages,
            rx,
            port,
            rx_prod: 0,
            rx_cons: 0,
            last_sizes: [0; 16],
        };
        l.post(128);
        Ok(l)
    }

    fn post(&mut self, n: u32) {
        for _ in 0..n {
            let req = NetifRxRequest {
                id: (self.rx_prod & 0xff) as u16,
                pad: 0,
                gref: G_L_PAGE + self.rx_prod % L_PAGES as u32,
            };
            self.rx.write(self.rx_prod, req.as_bytes());
            self.rx_prod = self.rx_prod.wrapping_add(1);
        }
        self.rx.publish(self.rx_prod);
        events::send(self.port);
    }

    /// Rewrites posted (not yet consumed) request `i` to name an unused grant.
    fn spoil(&mut self, i: u32) {
        let req = NetifRxRequest {
            id: (i & 0xff) as u16,
            pad: 0,
            gref: G_UNUSED,
        };
        self.rx.write(i, req.as_bytes());
    }

    /// The page request `i` names.
    fn rx_page_of(&self, i: u32) -> ScratchPage {
        self.pages[2 + (i % L_PAGES as u32) as usize]
    }

    /// Waits for and takes `n` responses from index `at` (the caller reposts).
    fn take(&mut self, at: u32, n: u32) -> [NetifRxResponse; 3] {
        let mut out = [NetifRxResponse::default(); 3];
        let _ = self.rx.wait_responses(at.wrapping_add(n), WAIT_MS);
        for (k, r) in out.iter_mut().enumerate().take(n as usize) {
            let mut raw = [0u8; 8];
            self.rx.read(at.wrapping_add(k as u32), &mut raw);
            *r = NetifRxResponse::read_from_bytes(&raw).unwrap_or_default();
        }
        self.rx_cons = at.wrapping_add(n);
        out
    }

    /// Takes every response there is: (frames, malformed ones: an error, a slot
    /// longer than a page, a frame shorter than an Ethernet header, a blank checksum
    /// this frontend never asked for), and stocks the ring again.
    fn drain(&mut self) -> (usize, usize) {
        let (mut frames, mut bad) = (0, 0);
        let mut len = 0usize;
        let mut first_flags = None;
        self.last_sizes = [0; 16];
        let mut taken = 0;
        while self.rx.rsp_prod() != self.rx_cons {
            let mut raw = [0u8; 8];
            self.rx.read(self.rx_cons, &mut raw);
            self.rx_cons = self.rx_cons.wrapping_add(1);
            taken += 1;
            let r = NetifRxResponse::read_from_bytes(&raw).unwrap_or_default();
            let flags = *first_flags.get_or_insert(r.flags);
            if r.status < 0 || r.status > 4096 {
                bad += 1;
            } else {
                len += r.status as usize;
            }
            if r.flags & NETRXF_MORE_DATA == 0 {
                if len < 14 || flags & NETRXF_CSUM_BLANK != 0 || flags & NETRXF_EXTRA_INFO != 0 {
                    bad += 1;
                }
                if let Some(s) = self.last_sizes.get_mut(frames) {
                    *s = len as u16;
                }
                frames += 1;
                len = 0;
                first_flags = None;
            }
        }
        if taken > 0 {
            self.post(taken);
        }
        (frames, bad)
    }
}

// --- The vif. -----------------------------------------------------------------------------

fn tx_slot(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> [u8; 12] {
    let mut out = [0u8; 12];
    out.copy_from_slice(
        NetifTxRequest {
            gref,
            offset,
            flags,
            id,
            size,
        }
        .as_bytes(),
    );
    out
}

fn extra_slot(extra_type: u8, flags: u8, body: [u16; 3]) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(
        NetifExtraInfo {
            extra_type,
            flags,
            u: body,
        }
        .as_bytes(),
    );
    out
}

/// The length of the ARP request in the tx data page.
const ARP_LEN: u16 = 42;
const GATEWAY_IP: [u8; 4] = [10, 0, 2, 2];
const OUR_IP: [u8; 4] = [10, 0, 2, 15];

struct Vif {
    front: Path,
    back: Path,
    tx_page: ScratchPage,
    rx_page: ScratchPage,
    tx: Ring,
    rx: Ring,
    port: u32,
    tx_prod: u32,
    tx_cons: u32,
    rx_prod: u32,
    rx_cons: u32,
    rx_pages: [ScratchPage; 4],
    rx_ro: ScratchPage,
    tx_data: ScratchPage,
    tx_data2: ScratchPage,
    mac: [u8; 6],
    next_id: u16,
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl Vif {
    fn new(env: &mut Env<'_>) -> Result<Vif, &'static str> {
        let front = Path::new(VIF_FRONT);
        let mut buf = [0u8; 128];
        let back = frontend::read_str(&mut env.xs, &front.join("backend"), &mut buf)
            .map(Path::new)
            .ok_or("dom0 has no vif 0 (dom0_vif=on)")?;
        let mut buf = [0u8; 32];
        let mac = frontend::read_str(&mut env.xs, &front.join("mac"), &mut buf)
            .and_then(parse_mac)
            .ok_or("vif 0 has no mac")?;
        pvrt::println!("hostile: vif 0, backend {}", back.as_str());
        let tx_page = env.page()?;
        let rx_page = env.page()?;
        let tx_data = env.page()?;
        let tx_data2 = env.page()?;
        let rx_pages = [env.page()?, env.page()?, env.page()?, env.page()?];
        let rx_ro = env.page()?;
        env.gt.grant(G_TX_DATA, DOMID_XEN, &tx_data, true);
        env.gt.grant(G_TX_DATA2, DOMID_XEN, &tx_data2, true);
        for (i, p) in rx_pages.iter().enumerate() {
            env.gt.grant(G_RX_PAGE + i as u32, DOMID_XEN, p, false);
        }
        env.gt.grant(G_RX_RO, DOMID_XEN, &rx_ro, true);
        // The ARP request: broadcast, from our MAC, who has 10.0.2.2, tell 10.0.2.15.
        let mut frame = [0u8; ARP_LEN as usize];
        frame[0..6].fill(0xff);
        frame[6..12].copy_from_slice(&mac);
        frame[12..14].copy_from_slice(&[0x08, 0x06]);
        frame[14..22].copy_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
        frame[22..28].copy_from_slice(&mac);
        frame[28..32].copy_from_slice(&OUR_IP);
        frame[38..42].copy_from_slice(&GATEWAY_IP);
        fill_page(&tx_data, |_| 0);
        fill_page(&tx_data2, |off| 0x0101_0101_0101_0101 * (off & 0xff));
        // SAFETY: the tx data page is a scratch page mapped writable.
        let bytes = unsafe { core::slice::from_raw_parts_mut(tx_data.va as *mut u8, 64) };
        bytes[..frame.len()].copy_from_slice(&frame);
        Ok(Vif {
            front,
            back,
            tx: Ring::new(&tx_page, 12),
            rx: Ring::new(&rx_page, 8),
            tx_page,
            rx_page,
            port: 0,
            tx_prod: 0,
            tx_cons: 0,
            rx_prod: 0,
            rx_cons: 0,
            rx_pages,
            rx_ro,
            tx_data,
            tx_data2,
            mac,
            next_id: 1,
        })
    }

    /// netfront's connect: both rings, the port, the features, Connected.
    fn connect(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        frontend::wait_state(&mut env.xs, &self.back, state::INIT_WAIT, WAIT_MS)
            .map_err(|_| "the vif backend is not at InitWait")?;
        self.port = self.offer(env)?;
        frontend::write_state(&mut env.xs, &self.front, state::CONNECTED)?;
        frontend::wait_state(&mut env.xs, &self.back, state::CONNECTED, WAIT_MS)
            .map_err(|_| "the vif backend did not connect")?;
        self.tx_prod = 0;
        self.tx_cons = 0;
        self.rx_prod = 0;
        self.rx_cons = 0;
        Ok(())
    }

    /// Handshakes the backend must refuse, from InitWait back to InitWait. `vbd_port` is
    /// the vbd's connected port.
    fn handshake_attacks(&mut self, env: &mut Env<'_>, vbd_port: u32) -> Result<(), &'static str> {
        use Value::{Num, StorePort, Text};
        let attacks: [(&str, &[(&str, Value)]); 9] = [
            (
                "vif tx-ring-ref an unused grant",
                &[("tx-ring-ref", Num(G_UNUSED.into()))],
            ),
            (
                "vif tx-ring-ref past the table",
                &[("tx-ring-ref", Num(G_PAST_TABLE.into()))],
            ),
            (
                "vif rx-ring-ref a frame not the frontend's",
                &[("rx-ring-ref", Num(G_FOREIGN.into()))],
            ),
            (
                "vif rx-ring-ref a read-only grant",
                &[("rx-ring-ref", Num(G_RX_RO.into()))],
            ),
            (
                "vif event-channel the xenstore port",
                &[("event-channel", StorePort)],
            ),
            (
                "vif event-channel the vbd's connected port",
                &[("event-channel", Num(vbd_port.into()))],
            ),
            ("vif request-rx-copy 0", &[("request-rx-copy", Text(b"0"))]),
            (
                "vif feature-rx-notify 0",
                &[("feature-rx-notify", Text(b"0"))],
            ),
            (
                "vif tx-ring-ref not a number",
                &[("tx-ring-ref", Text(b""))],
            ),
        ];
        for (what, nodes) in attacks {
            frontend::wait_state(&mut env.xs, &self.back, state::INIT_WAIT, WAIT_MS)
                .map_err(|_| "the vif backend is not at InitWait")?;
            let port = self.offer(env)?;
            refused_handshake(
                env,
                what,
                &self.front,
                &self.back,
                nodes,
                port,
                state::CONNECTED,
            )?;
        }
        Ok(())
    }

    /// netfront's nodes for fresh rings and a new port (the port).
    fn offer(&mut self, env: &mut Env<'_>) -> Result<u32, &'static str> {
        self.tx.reset();
        self.rx.reset();
        env.gt.grant(G_TX_RING, DOMID_XEN, &self.tx_page, false);
        env.gt.grant(G_RX_RING, DOMID_XEN, &self.rx_page, false);
        let port = control::alloc_unbound(DOMID_XEN)?;
        env.write_number(&self.front.join("tx-ring-ref"), G_TX_RING.into())?;
        env.write_number(&self.front.join("rx-ring-ref"), G_RX_RING.into())?;
        env.write_number(&self.front.join("event-channel"), port.into())?;
        env.write(&self.front.join("request-rx-copy"), b"1")?;
        env.write(&self.front.join("feature-rx-notify"), b"1")?;
        env.write(&self.front.join("feature-sg"), b"1")?;
        Ok(port)
    }

    fn reconnect(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        frontend::write_state(&mut env.xs, &self.front, state::CLOSING)?;
        frontend::write_state(&mut env.xs, &self.front, state::CLOSED)?;
        frontend::wait_state(&mut env.xs, &self.back, state::CLOSED, WAIT_MS)
            .map_err(|_| "the vif backend did not close")?;
        events::close(self.port);
        frontend::write_state(&mut env.xs, &self.front, state::INITIALISING)?;
        self.connect(env)
    }

    fn id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Publishes `slots` on the tx ring and kicks.
    fn push_tx(&mut self, slots: &[[u8; 12]]) {
        for s in slots {
            self.tx.write(self.tx_prod, s);
            self.tx_prod = self.tx_prod.wrapping_add(1);
        }
        self.tx.publish(self.tx_prod);
        events::send(self.port);
    }

    /// Sends `slots` and checks the statuses of their responses against `want`.
    fn tx_check(
        &mut self,
        env: &mut Env<'_>,
        kind: Kind,
        what: &str,
        slots: &[[u8; 12]],
        want: &[i16],
    ) {
        self.push_tx(slots);
        let ok = self.tx.wait_responses(self.tx_prod, WAIT_MS);
        let mut same = ok;
        let mut first_bad = None;
        for (k, &w) in want.iter().enumerate() {
            let mut raw = [0u8; 4];
            self.tx.read(self.tx_cons.wrapping_add(k as u32), &mut raw);
            let r = NetifTxResponse::read_from_bytes(&raw).unwrap_or_default();
            if r.status != w {
                same = false;
                first_bad.get_or_insert((k, r.status));
            }
        }
        self.tx_cons = self.tx_prod;
        env.t.check(
            kind,
            what,
            same,
            format_args!(
                "{} responses{}",
                want.len(),
                match (ok, first_bad) {
                    (false, _) => " missing",
                    (true, Some(_)) => ", a status differs",
                    (true, None) => " as expected",
                }
            ),
        );
        if let Some((k, s)) = first_bad {
            pvrt::println!("hostile: ... slot {k} status {s}, expected {}", want[k]);
        }
    }

    fn arp(&mut self) -> [u8; 12] {
        let id = self.id();
        tx_slot(G_TX_DATA, 0, 0, id, ARP_LEN)
    }

    fn send_arp(&mut self, env: &mut Env<'_>, what: &str) {
        let s = self.arp();
        self.tx_check(env, Kind::Legit, what, &[s], &[NETIF_RSP_OKAY]);
    }

    /// Posts rx requests for `grefs`.
    fn post_rx(&mut self, grefs: &[u32]) {
        for &gref in grefs {
            let req = NetifRxRequest {
                id: (self.rx_prod & 0xff) as u16,
                pad: 0,
                gref,
            };
            self.rx.write(self.rx_prod, req.as_bytes());
            self.rx_prod = self.rx_prod.wrapping_add(1);
        }
        self.rx.publish(self.rx_prod);
        events::send(self.port);
    }

    /// The next rx response, waiting for it.
    fn rx_response(&mut self) -> Option<NetifRxResponse> {
        if !self
            .rx
            .wait_responses(self.rx_cons.wrapping_add(1), WAIT_MS)
        {
            return None;
        }
        let mut raw = [0u8; 8];
        self.rx.read(self.rx_cons, &mut raw);
        let expected_id = (self.rx_cons & 0xff) as u16;
        self.rx_cons = self.rx_cons.wrapping_add(1);
        NetifRxResponse::read_from_bytes(&raw)
            .ok()
            .filter(|r| r.id == expected_id)
    }

    /// Posts a good rx page, sends an ARP request, and checks the gateway's reply
    /// arrives in it.
    /// (Frames the gateway sent for earlier ones — its answers to the TCP segments of
    /// the GSO tests — may come first: up to 16 frames are taken, one rx request at a
    /// time.)
    fn arp_exchange(&mut self, env: &mut Env<'_>, what: &str) {
        let page = self.rx_pages[0];
        self.send_arp(env, what);
        let mut last = None;
        let mut is_reply = false;
        for _ in 0..16 {
            fill_page(&page, |_| 0);
            self.post_rx(&[G_RX_PAGE]);
            let r = self.rx_response();
            last = r.map(|r| r.status);
            // SAFETY: the rx page is a scratch page mapped writable; the backend wrote
            // it (by grant copy) before publishing the response.
            let frame = unsafe { core::slice::from_raw_parts(page.va as *const u8, 42) };
            is_reply = r.is_some_and(|r| r.status >= 42)
                && frame[12..14] == [0x08, 0x06]
                && frame[20..22] == [0, 2]
                && frame[28..32] == GATEWAY_IP;
            if is_reply || r.is_none() {
                break;
            }
        }
        env.t.check(
            Kind::Legit,
            "vif rx of the gateway's ARP reply",
            is_reply,
            format_args!("last response {last:?}"),
        );
    }

    fn attacks(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        self.arp_exchange(env, "vif tx of an ARP request");

        // Tx grants and sizes: error responses, the device stays.
        let err = NETIF_RSP_ERROR;
        for (what, gref) in [
            ("vif tx from an unused grant", G_UNUSED),
            ("vif tx from a grant past the table", G_PAST_TABLE),
            ("vif tx from a grant to another domain", G_OTHER_DOM),
            (
                "vif tx from a grant of a frame not the frontend's",
                G_FOREIGN,
            ),
        ] {
            let id = self.id();
            let s = tx_slot(gref, 0, 0, id, ARP_LEN);
            self.tx_check(env, Kind::Attack, what, &[s], &[err]);
        }
        let id = self.id();
        let s = tx_slot(G_TX_DATA, 0, 0, id, 10);
        self.tx_check(env, Kind::Attack, "vif tx of a 10-byte frame", &[s], &[err]);
        // A 60-byte frame whose first slot would hold 8 bytes.
        let (a, b) = (self.id(), self.id());
        let slots = [
            tx_slot(G_TX_DATA, 0, NETTXF_MORE_DATA, a, 60),
            tx_slot(G_TX_DATA2, 0, 0, b, 52),
        ];
        self.tx_check(
            env,
            Kind::Attack,
            "vif tx whose first slot is shorter than an Ethernet header",
            &slots,
            &[err, err],
        );
        let mut chain = [[0u8; 12]; 19];
        for (i, s) in chain.iter_mut().enumerate() {
            let id = self.id();
            *s = if i == 0 {
                tx_slot(G_TX_DATA, 0, NETTXF_MORE_DATA, id, 19 * 16)
            } else {
                let more = if i < 18 { NETTXF_MORE_DATA } else { 0 };
                tx_slot(G_TX_DATA2, 0, more, id, 16)
            };
        }
        self.tx_check(
            env,
            Kind::Attack,
            "vif tx of 19 data slots",
            &chain,
            &[err; 19],
        );
        let (a, b) = (self.id(), self.id());
        let slots = [
            tx_slot(G_TX_DATA, 0, NETTXF_MORE_DATA, a, 60),
            tx_slot(G_TX_DATA2, 0, 0, b, 100),
        ];
        self.tx_check(
            env,
            Kind::Attack,
            "vif tx whose second slot is larger than the frame",
            &slots,
            &[err, err],
        );
        let (a, b) = (self.id(), self.id());
        let slots = [
            tx_slot(G_TX_DATA, 0, NETTXF_MORE_DATA, a, 60),
            tx_slot(G_UNUSED, 0, 0, b, 18),
        ];
        self.tx_check(
            env,
            Kind::Attack,
            "vif tx whose second slot names an unused grant",
            &slots,
            &[err, err],
        );

        // A multicast-add extra: answered, carries no frame.
        let id = self.id();
        let slots = [
            tx_slot(G_TX_DATA, 0, NETTXF_EXTRA_INFO, id, ARP_LEN),
            extra_slot(2, 0, [0x0001, 0x005e, 0x0100]),
        ];
        self.tx_check(
            env,
            Kind::Legit,
            "vif tx multicast-add extra",
            &slots,
            &[NETIF_RSP_OKAY, NETIF_RSP_NULL],
        );

        self.rx_attacks(env);
        let rx = self.rx_page;
        balloon_held_page(env, "vif rx ring page given back while connected", &rx)?;
        self.arp_exchange(
            env,
            "vif tx of an ARP request after the rx ring was offered back",
        );
        self.tx_race(env)?;

        // The fatal ones: each closes the device; a reconnect brings it back.
        let mut slots21 = [[0u8; 12]; 21];
        for (i, s) in slots21.iter_mut().enumerate() {
            let id = self.id();
            *s = if i == 0 {
                tx_slot(G_TX_DATA, 0, NETTXF_MORE_DATA, id, 21 * 16)
            } else {
                let more = if i < 20 { NETTXF_MORE_DATA } else { 0 };
                tx_slot(G_TX_DATA2, 0, more, id, 16)
            };
        }
        self.tx_fatal(env, "vif tx of 21 slots", &slots21, None)?;
        let id = self.id();
        self.tx_fatal(
            env,
            "vif tx slot with offset + size past its page",
            &[tx_slot(G_TX_DATA, 4000, 0, id, 200)],
            None,
        )?;
        let (a, b, c) = (self.id(), self.id(), self.id());
        self.tx_fatal(
            env,
            "vif tx later slot with offset + size past its page",
            &[
                tx_slot(G_TX_DATA, 0, NETTXF_MORE_DATA, a, 142),
                tx_slot(G_TX_DATA2, 4000, NETTXF_MORE_DATA, b, 100),
                tx_slot(G_TX_DATA2, 0, 0, c, 0),
            ],
            None,
        )?;
        for (what, ty) in [
            ("vif tx extra-info of type 0", 0u8),
            ("vif tx extra-info of type 5 (the first undefined)", 5),
            ("vif tx extra-info of type 255", 255),
        ] {
            let id = self.id();
            self.tx_fatal(
                env,
                what,
                &[
                    tx_slot(G_TX_DATA, 0, NETTXF_EXTRA_INFO, id, ARP_LEN),
                    extra_slot(ty, 0, [0; 3]),
                ],
                None,
            )?;
        }
        let mut gso = [0u16; 3];
        gso.as_mut_bytes().copy_from_slice(
            NetifExtraGso {
                size: 0,
                gso_type: NetifGsoType::TcpV4.raw(),
                pad: 0,
                features: 0,
            }
            .as_bytes(),
        );
        let id = self.id();
        self.tx_fatal(
            env,
            "vif tx GSO extra with MSS 0",
            &[
                tx_slot(G_TX_DATA, 0, NETTXF_EXTRA_INFO, id, ARP_LEN),
                extra_slot(1, 0, gso),
            ],
            None,
        )?;
        let mut extras = [extra_slot(4, 1, [0; 3]); 30];
        let id = self.id();
        extras[0] = tx_slot(G_TX_DATA, 0, NETTXF_EXTRA_INFO, id, ARP_LEN);
        self.tx_fatal(
            env,
            "vif tx frame with 29 chained extra-info slots",
            &extras,
            None,
        )?;
        let id = self.id();
        self.tx_fatal(
            env,
            "vif tx chain announcing a slot never published",
            &[tx_slot(G_TX_DATA, 0, NETTXF_MORE_DATA, id, 100)],
            None,
        )?;
        let prod = self.tx_prod.wrapping_sub(1);
        self.tx_fatal(
            env,
            "vif tx req_prod wrapped behind rsp_prod",
            &[],
            Some(prod),
        )?;
        self.rx_overflow(env)?;
        self.pin_held_ring(env)?;
        Ok(())
    }

    /// vCPU 1 rewrites the offset, flags and size of every tx slot (to values that each
    /// make a frame to send or one to refuse, never a fatal one, whichever bytes of them
    /// a torn read combines) while vCPU 0 publishes single-slot frames: every slot gets
    /// one response, in order, OK or an error, and the device stays connected.
    fn tx_race(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        const ROUNDS: u32 = 16;
        const PER_ROUND: u32 = 64;
        let variants: [(u16, u16, u16); 5] = [
            (0, 0, ARP_LEN),
            (0, 0, 10),
            (2048, 0, 96),
            (4000, NETTXF_DATA_VALIDATED, 96),
            (0, NETTXF_CSUM_BLANK, ARP_LEN),
        ];
        for (i, (offset, flags, size)) in variants.into_iter().enumerate() {
            let word = u64::from(offset) | u64::from(flags) << 16;
            RACE_VARIANTS[i].0.store(word, Ordering::SeqCst);
            RACE_VARIANTS[i].1.store(size.into(), Ordering::SeqCst);
        }
        RACE_RING.store(self.tx.entry_va(0), Ordering::SeqCst);
        RACE_MODE.store(RACE_VIF_TX, Ordering::SeqCst);
        let before = MUTATIONS.load(Ordering::SeqCst);
        RACE_ON.store(true, Ordering::SeqCst);
        let started = wait_for(|| MUTATIONS.load(Ordering::SeqCst) > before);
        let (mut ok, mut errors, mut wrong) = (0u32, 0u32, 0u32);
        for _ in 0..ROUNDS {
            let base = self.tx_prod;
            let ids: [u16; PER_ROUND as usize] = core::array::from_fn(|_| self.id());
            for &id in &ids {
                let s = tx_slot(G_TX_DATA, 0, 0, id, ARP_LEN);
                self.tx.write(self.tx_prod, &s);
                self.tx_prod = self.tx_prod.wrapping_add(1);
            }
            self.tx.publish(self.tx_prod);
            events::send(self.port);
            let all = self.tx.wait_responses(self.tx_prod, WAIT_MS);
            for (k, &id) in ids.iter().enumerate() {
                let mut raw = [0u8; 4];
                self.tx.read(base.wrapping_add(k as u32), &mut raw);
                let r = NetifTxResponse::read_from_bytes(&raw).unwrap_or_default();
                match (all && r.id == id, r.status) {
                    (true, NETIF_RSP_OKAY) => ok += 1,
                    (true, NETIF_RSP_ERROR) => errors += 1,
                    _ => wrong += 1,
                }
            }
            self.tx_cons = self.tx_prod;
        }
        RACE_ON.store(false, Ordering::SeqCst);
        let stopped = wait_for(|| MUTATOR_IDLE.load(Ordering::SeqCst));
        let mutations = MUTATIONS.load(Ordering::SeqCst) - before;
        pvrt::ensure!(
            started && stopped,
            "vCPU 1 did not take part in the tx race"
        );
        let connected = frontend::read_state(&mut env.xs, &self.back) == Some(state::CONNECTED);
        env.t.check(
            Kind::Attack,
            "vif tx slots rewritten while being read",
            ok + errors == ROUNDS * PER_ROUND && wrong == 0 && mutations > 0 && connected,
            format_args!(
                "{} frames, {ok} OK, {errors} errors, {wrong} wrong; vCPU 1 rewrote the \
                 ring {mutations} times; still connected: {connected}",
                ROUNDS * PER_ROUND
            ),
        );
        self.arp_exchange(env, "vif tx of an ARP request after the race");
        Ok(())
    }

    /// Well-formed slot chains carrying frames whose contents are hostile to what the
    /// switch does with them on the way to the NIC (checksum completion, software
    /// segmentation): a GSO TCPv4 frame with MSS 1 (more than 512 segments), GSO TCPv6
    /// over IPv4, an IPv4 header length of 60 in a 34-byte frame or of 16, a TCP header
    /// cut short, a UDP length of 65535 in 60 bytes, IPv6 extension headers running past
    /// the frame or chained 40 deep — all with blank checksums. The vif takes each
    /// (OK); the switch drops what it cannot handle; the device stays connected.
    fn hostile_frames(&mut self, env: &mut Env<'_>, listener: &mut Listener) {
        let _ = listener.drain();
        let mut bad_total = 0;
        const AT: usize = 1024;
        let mac = self.mac;
        let eth = |f: &mut [u8], ethertype: [u8; 2]| {
            f[0..6].fill(0xff);
            f[6..12].copy_from_slice(&mac);
            f[12..14].copy_from_slice(&ethertype);
        };
        let ipv4 = |f: &mut [u8], ihl: u8, total: u16, proto: u8| {
            f[14] = 0x40 | ihl;
            f[16..18].copy_from_slice(&total.to_be_bytes());
            f[22] = 64;
            f[23] = proto;
            f[26..30].copy_from_slice(&OUR_IP);
            f[30..34].copy_from_slice(&[10, 0, 2, 99]);
        };
        let gso = |mss: u16, ty: NetifGsoType| {
            let mut body = [0u16; 3];
            body.as_mut_bytes().copy_from_slice(
                NetifExtraGso {
                    size: mss,
                    gso_type: ty.raw(),
                    pad: 0,
                    features: 0,
                }
                .as_bytes(),
            );
            extra_slot(1, 0, body)
        };
        /// (what, the GSO extra's MSS and type, which frame).
        type Case = (&'static str, Option<(u16, NetifGsoType)>, usize);
        let cases: [Case; 9] = [
            (
                "vif tx GSO TCPv4 frame with MSS 1",
                Some((1, NetifGsoType::TcpV4)),
                0,
            ),
            (
                "vif tx GSO TCPv6 over an IPv4 frame",
                Some((100, NetifGsoType::TcpV6)),
                0,
            ),
            (
                "vif tx GSO TCPv4 over an IPv4 header length of 16",
                Some((100, NetifGsoType::TcpV4)),
                1,
            ),
            ("vif tx IPv4 header length 60 in a 34-byte frame", None, 2),
            ("vif tx TCP header cut short", None, 3),
            ("vif tx UDP length 65535 in a 60-byte frame", None, 4),
            (
                "vif tx IPv6 hop-by-hop header running past the frame",
                None,
                5,
            ),
            ("vif tx IPv6 with 40 chained routing headers", None, 6),
            ("vif tx IPv4 fragment with a blank checksum", None, 7),
        ];
        for (what, gso_extra, shape) in cases {
            let mut f = [0u8; 1024];
            let len = match shape {
                // TCP over IPv4, 900 bytes of payload.
                0 | 1 => {
                    eth(&mut f, [0x08, 0x00]);
                    ipv4(&mut f, if shape == 1 { 4 } else { 5 }, 20 + 20 + 900, 6);
                    f[46] = 0x50;
                    14 + 20 + 20 + 900
                }
                2 => {
                    eth(&mut f, [0x08, 0x00]);
                    ipv4(&mut f, 15, 60, 6);
                    34
                }
                3 => {
                    eth(&mut f, [0x08, 0x00]);
                    ipv4(&mut f, 5, 60, 6);
                    40
                }
                4 => {
                    eth(&mut f, [0x08, 0x00]);
                    ipv4(&mut f, 5, 46, 17);
                    f[38..40].copy_from_slice(&u16::MAX.to_be_bytes());
                    60
                }
                5 => {
                    eth(&mut f, [0x86, 0xdd]);
                    f[14] = 0x60;
                    f[18..20].copy_from_slice(&60u16.to_be_bytes());
                    f[20] = 0; // hop-by-hop
                    f[21] = 64;
                    f[54] = 6; // then TCP
                    f[55] = 255; // (255 + 1) * 8 bytes
                    100
                }
                6 => {
                    eth(&mut f, [0x86, 0xdd]);
                    f[14] = 0x60;
                    f[18..20].copy_from_slice(&(40u16 * 8 + 20).to_be_bytes());
                    f[20] = 43;
                    f[21] = 64;
                    for k in 0..40 {
                        let h = 54 + 8 * k;
                        f[h] = if k == 39 { 6 } else { 43 };
                    }
                    54 + 40 * 8 + 20
                }
                _ => {
                    eth(&mut f, [0x08, 0x00]);
                    ipv4(&mut f, 5, 20 + 8 + 32, 17);
                    f[20] = 0x20; // more fragments
                    f[38..40].copy_from_slice(&40u16.to_be_bytes());
                    14 + 20 + 8 + 32
                }
            };
            // SAFETY: the tx data page is a scratch page mapped writable; bytes
            // AT..AT + 1024 are this test's alone.
            let dst = unsafe {
                core::slice::from_raw_parts_mut((self.tx_data.va as usize + AT) as *mut u8, 1024)
            };
            dst.copy_from_slice(&f);
            let id = self.id();
            let flags = NETTXF_CSUM_BLANK
                | if gso_extra.is_some() {
                    NETTXF_EXTRA_INFO
                } else {
                    0
                };
            let first = tx_slot(G_TX_DATA, AT as u16, flags, id, len as u16);
            match gso_extra {
                Some((mss, ty)) => self.tx_check(
                    env,
                    Kind::Attack,
                    what,
                    &[first, gso(mss, ty)],
                    &[NETIF_RSP_OKAY, NETIF_RSP_NULL],
                ),
                None => self.tx_check(env, Kind::Attack, what, &[first], &[NETIF_RSP_OKAY]),
            }
            let (frames, bad) = listener.drain();
            bad_total += bad;
            pvrt::println!("hostile: ... vif 1 received {frames} frames of it ({bad} malformed)");
        }
        // A good GSO frame: 900 bytes of TCP payload with MSS 100 reach vif 1 (which
        // takes no GSO and no blank checksums) as 9 segments of 154 bytes.
        let mut f = [0u8; 1024];
        eth(&mut f, [0x08, 0x00]);
        ipv4(&mut f, 5, 20 + 20 + 900, 6);
        f[46] = 0x50;
        // SAFETY: as above.
        let dst = unsafe {
            core::slice::from_raw_parts_mut((self.tx_data.va as usize + AT) as *mut u8, 1024)
        };
        dst.copy_from_slice(&f);
        let id = self.id();
        let first = tx_slot(
            G_TX_DATA,
            AT as u16,
            NETTXF_CSUM_BLANK | NETTXF_EXTRA_INFO,
            id,
            14 + 20 + 20 + 900,
        );
        self.tx_check(
            env,
            Kind::Legit,
            "vif tx GSO TCPv4 frame with MSS 100",
            &[first, gso(100, NetifGsoType::TcpV4)],
            &[NETIF_RSP_OKAY, NETIF_RSP_NULL],
        );
        let (frames, bad) = listener.drain();
        let sizes_ok = listener.last_sizes.iter().take(9).all(|&s| s == 154);
        env.t.check(
            Kind::Legit,
            "vif 1 received the GSO frame cut into 9 segments",
            frames == 9 && bad == 0 && sizes_ok,
            format_args!(
                "{frames} frames, {bad} malformed, sizes {:?}",
                &listener.last_sizes[..frames.min(9)]
            ),
        );
        env.t.check(
            Kind::Attack,
            "vif 1 received only well-formed frames of vif 0's hostile ones",
            bad_total == 0,
            format_args!("{bad_total} malformed"),
        );
        self.big_frame_to_listener(env, listener);
        let connected = frontend::read_state(&mut env.xs, &self.back) == Some(state::CONNECTED);
        env.t.check(
            Kind::Attack,
            "vif still connected after the hostile frames",
            connected,
            format_args!("backend connected: {connected}"),
        );
        self.arp_exchange(env, "vif tx of an ARP request after the hostile frames");
    }

    /// A 9000-byte frame over three tx slots reaches vif 1 over three rx slots, one of
    /// which vif 1 spoiled (an unused grant, written over the request after posting it):
    /// each slot is answered in place — 4096 bytes, an error, the last 808 — with
    /// `more_data` on all but the last, and the good slots hold the frame's bytes.
    fn big_frame_to_listener(&mut self, env: &mut Env<'_>, listener: &mut Listener) {
        let _ = listener.drain();
        let at = listener.rx_cons;
        listener.spoil(at.wrapping_add(1));
        let (a, b, c) = (self.id(), self.id(), self.id());
        let slots = [
            tx_slot(G_TX_DATA, 0, NETTXF_MORE_DATA, a, 9000),
            tx_slot(G_TX_DATA2, 0, NETTXF_MORE_DATA, b, 4096),
            tx_slot(G_TX_DATA2, 0, 0, c, 808),
        ];
        self.tx_check(
            env,
            Kind::Legit,
            "vif tx of a 9000-byte frame over three slots",
            &slots,
            &[NETIF_RSP_OKAY; 3],
        );
        let got = listener.take(at, 3);
        let want = [
            (4096, NETRXF_MORE_DATA),
            (NETIF_RSP_ERROR, NETRXF_MORE_DATA),
            (808, 0),
        ];
        let shape = got
            .iter()
            .zip(want)
            .all(|(r, (status, more))| r.status == status && r.flags & NETRXF_MORE_DATA == more);
        let ids = got
            .iter()
            .enumerate()
            .all(|(k, r)| r.id == (at.wrapping_add(k as u32) & 0xff) as u16);
        // SAFETY: the pages are scratch pages mapped writable; the backend wrote them by
        // grant copy before publishing the responses.
        let (first, last, sent_first, sent_last) = unsafe {
            (
                core::slice::from_raw_parts(listener.rx_page_of(at).va as *const u8, 4096),
                core::slice::from_raw_parts(listener.rx_page_of(at + 2).va as *const u8, 808),
                core::slice::from_raw_parts(self.tx_data.va as *const u8, 4096),
                core::slice::from_raw_parts(self.tx_data2.va as *const u8, 808),
            )
        };
        let data = first == sent_first && last == sent_last;
        env.t.check(
            Kind::Attack,
            "vif 1 rx of a three-slot frame with its second request spoiled",
            shape && ids && data,
            format_args!(
                "statuses {:?}, ids in their slots: {ids}, data intact: {data}",
                [got[0].status, got[1].status, got[2].status]
            ),
        );
        listener.post(3);
    }

    /// Rx requests naming bad grants: each gets an error response in its own slot when a
    /// frame arrives for it, and the next good one gets its frame.
    fn rx_attacks(&mut self, env: &mut Env<'_>) {
        fill_page(&self.rx_ro, |off| 0xee00_0000_0000_0000 | off);
        let bad = [G_UNUSED, G_RX_RO, G_OTHER_DOM, G_FOREIGN, G_PAGE_TABLE];
        self.post_rx(&bad);
        // A frame for each: the gateway answers each ARP request.
        for _ in 0..bad.len() {
            let s = self.arp();
            self.push_tx(&[s]);
        }
        let _ = self.tx.wait_responses(self.tx_prod, WAIT_MS);
        self.tx_cons = self.tx_prod;
        for what in [
            "vif rx into an unused grant",
            "vif rx into a read-only grant",
            "vif rx into a grant to another domain",
            "vif rx into a grant of a frame not the frontend's",
            "vif rx into a writable grant of the frontend's L4 page table",
        ] {
            let r = self.rx_response();
            env.t.check(
                Kind::Attack,
                what,
                r.is_some_and(|r| r.status == NETIF_RSP_ERROR),
                format_args!("response {:?}", r.map(|r| r.status)),
            );
        }
        let changed = check_page(&self.rx_ro, |off| 0xee00_0000_0000_0000 | off);
        env.t.check(
            Kind::Attack,
            "vif rx into a read-only grant left the page alone",
            changed.is_none(),
            format_args!("first changed byte {changed:?}"),
        );
        self.arp_exchange(env, "vif tx of an ARP request after the bad rx requests");
    }

    /// Sends `slots` (or publishes `prod` over nothing): the backend must close without
    /// answering; then a reconnect, and a frame goes out.
    fn tx_fatal(
        &mut self,
        env: &mut Env<'_>,
        what: &str,
        slots: &[[u8; 12]],
        prod: Option<u32>,
    ) -> Result<(), &'static str> {
        let before = self.tx.rsp_prod();
        match prod {
            Some(p) => {
                self.tx.publish(p);
                events::send(self.port);
            }
            None => self.push_tx(slots),
        }
        let closed = frontend::wait_state(&mut env.xs, &self.back, state::CLOSING, WAIT_MS);
        let after = self.tx.rsp_prod();
        env.t.check(
            Kind::Attack,
            what,
            closed.is_ok() && after == before,
            format_args!(
                "backend state {}, tx rsp_prod {before} -> {after}",
                match closed {
                    Ok(()) => state::CLOSING,
                    Err(s) => s,
                }
            ),
        );
        self.reconnect(env)?;
        self.send_arp(env, "vif tx of an ARP request after a reconnect");
        Ok(())
    }

    /// The frontend unmaps its connected rx ring page (still all but empty: a valid
    /// L1 page table's contents) and asks for it to be pinned as an L1 page table:
    /// refused while the backend holds it writable (else the backend's responses would
    /// be page-table entries), accepted once the device has let go (the control).
    fn pin_held_ring(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let page = self.rx_page;
        // SAFETY: the rx ring page is a scratch page; nothing reads it through this
        // mapping until it is mapped back below.
        let rc = unsafe { pvrt::update_va_mapping(page.va, 0, UVMF_INVLPG) };
        pvrt::ensure!(rc == 0, "unmapping the rx ring page returned {rc}");
        let held = mmuext(MmuextCmd::PinL1Table, page.mfn);
        if held == 0 {
            // It is a page table now: give it back before anything else.
            let _ = mmuext(MmuextCmd::UnpinTable, page.mfn);
        }
        frontend::write_state(&mut env.xs, &self.front, state::CLOSING)?;
        frontend::write_state(&mut env.xs, &self.front, state::CLOSED)?;
        frontend::wait_state(&mut env.xs, &self.back, state::CLOSED, WAIT_MS)
            .map_err(|_| "the vif backend did not close")?;
        let free = mmuext(MmuextCmd::PinL1Table, page.mfn);
        let unpinned = if free == 0 {
            mmuext(MmuextCmd::UnpinTable, page.mfn)
        } else {
            0
        };
        env.t.check(
            Kind::Attack,
            "vif rx ring pinned as an L1 page table while connected",
            held != 0 && free == 0 && unpinned == 0,
            format_args!("pin while held {held}, pin once released {free} (unpin {unpinned})"),
        );
        // SAFETY: maps the page's own frame back where it was.
        let rc =
            unsafe { pvrt::update_va_mapping(page.va, page.maddr() | region::PTE_RW, UVMF_INVLPG) };
        pvrt::ensure!(rc == 0, "the rx ring page cannot be mapped back ({rc})");
        events::close(self.port);
        frontend::write_state(&mut env.xs, &self.front, state::INITIALISING)?;
        self.connect(env)?;
        self.arp_exchange(env, "vif tx of an ARP request after the pin attempt");
        Ok(())
    }

    /// An rx `req_prod` far past the ring, found when a frame arrives for it.
    fn rx_overflow(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        self.rx.publish(self.rx_prod.wrapping_add(1000));
        events::send(self.port);
        let s = self.arp();
        self.push_tx(&[s]);
        let closed = frontend::wait_state(&mut env.xs, &self.back, state::CLOSING, WAIT_MS);
        env.t.check(
            Kind::Attack,
            "vif rx req_prod 1000 ahead",
            closed.is_ok(),
            format_args!(
                "backend state {}",
                match closed {
                    Ok(()) => state::CLOSING,
                    Err(s) => s,
                }
            ),
        );
        self.reconnect(env)
    }

    fn final_io(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let before = switch_counters(self.mac)?;
        self.arp_exchange(env, "vif final tx of an ARP request");
        let after = switch_counters(self.mac)?;
        // The switch took the request from the vif and sent it out of the NIC, and sent
        // the gateway's answer to the vif.
        env.t.check(
            Kind::Legit,
            "xenbr0's counters for the final ARP exchange",
            after.0 > before.0 && after.1 > before.1 && after.2 > before.2,
            format_args!(
                "vif rx {} -> {}, uplink tx {} -> {}, vif tx {} -> {}",
                before.0, after.0, before.1, after.1, before.2, after.2
            ),
        );
        Ok(())
    }
}
