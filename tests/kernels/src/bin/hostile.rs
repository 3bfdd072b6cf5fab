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

// The bin's root looks for modules beside it: these live in `hostile/`.
#[path = "hostile/mutator.rs"]
mod mutator;
#[path = "hostile/vbd.rs"]
mod vbd;
#[path = "hostile/vif.rs"]
mod vif;

use self::{mutator::*, vbd::*, vif::*};

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
