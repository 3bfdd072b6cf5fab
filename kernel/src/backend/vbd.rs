//! The vbd backend (`io/blkif.h`) on the machine's virtio disks: the library's handshake
//! (`vbd::xenbus`) and engine (`vbd::engine`) over a frontend's mapped ring, grant copies
//! and the virtio-blk driver. Disk completions arrive by interrupt ([`init`] registers
//! the handler) and are answered there.

use alloc::{collections::BTreeMap, format, string::String, vec, vec::Vec};
use core::sync::atomic::{AtomicU64, Ordering};

use zerocopy::FromZeros;

use ferrovisor::{
    cmdline::Dom0Disk,
    domain_control::Life,
    mm::frame_table::DomId,
    storage::{
        attach::{check_attach, Attachment, Mode, Refusal},
        target::{self, Target},
        vdev,
    },
    vbd::{
        engine::{
            self, Config, DiskCaps, DiskIo, DiskOp, Fault, GrantCopy, IoFailed, Stats, VbdEngine,
        },
        xenbus::{Action, Advertisement, DiscardInfo, RingDetails, VbdXenbus},
    },
    virtio::blk::{Op, Status},
    xenbus::{self as layout, Dir, VbdNodes},
};
use ferrovisor_abi::{
    domctl::{
        padded_str, set_padded, DeviceAttach, DeviceInfo, DeviceRefusal, DEVID_AUTO, VBD_MODE_READ,
        VBD_MODE_WRITE, VBD_MODE_WRITE_SHARED, VBD_TYPE_CDROM, VBD_TYPE_DISK,
    },
    errno::XenErrno,
    xen::{
        grant_table::GrantRef,
        io::{
            blkif::{VDISK_CDROM, VDISK_READONLY},
            xenbus::XenbusState,
        },
    },
};

use super::{
    devices::{self, Backend, FrontNodes, Head},
    disks,
    grant_io::{self, RingPages},
};
use crate::{
    arch::x86_64::dma::DmaBuffer,
    domain::Domains,
    drivers::blk::{self, BlkCompletion, DiskId, SubmitError},
};

/// What a vbd is, decided at attach.
#[derive(Clone, Debug)]
pub struct Plan {
    pub devid: u32,
    pub disk: DiskId,
    pub target: Target,
    pub target_name: String,
    pub vdev: u32,
    pub vdev_name: String,
    pub mode: Mode,
    pub cdrom: bool,
    pub caps: DiskCaps,
}

impl Plan {
    /// The starting directories of both ends.
    pub fn dirs(&self, dom: DomId) -> [Dir; 2] {
        layout::vbd_dirs(
            dom.0,
            &VbdNodes {
                vdev: self.vdev,
                vdev_name: &self.vdev_name,
                target: &self.target_name,
                writable: self.mode.writable(),
                cdrom: self.cdrom,
            },
        )
    }
}

/// A disk I/O's bounce buffer.
pub struct Bounce(DmaBuffer);

impl AsRef<[u8]> for Bounce {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl AsMut<[u8]> for Bounce {
    fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_mut_slice()
    }
}

/// Numbers the driver's tokens: the device id above bit 40, a count below, so a late
/// completion of a ring that is gone never matches a request of the next one.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
const TOKEN_DEVICE_SHIFT: u32 = 40;

/// The engine's view of the virtio disk under one connected ring.
pub struct BlkDisk {
    disk: DiskId,
    device: u32,
    /// Driver token → the engine's token, for the I/Os the disk has.
    pending: BTreeMap<u64, u64>,
}

impl engine::Disk for BlkDisk {
    type Buffer = Bounce;

    fn alloc(&mut self, bytes: usize) -> Option<Bounce> {
        DmaBuffer::new(bytes).map(Bounce)
    }

    fn submit(&mut self, mut io: DiskIo<Bounce>) -> Result<(), engine::SubmitError<Bounce>> {
        let op = match io.op {
            DiskOp::Read => Op::Read,
            DiskOp::Write => Op::Write,
            DiskOp::Flush => Op::Flush,
            DiskOp::Discard => match u32::try_from(io.sectors) {
                Ok(sectors) => Op::Discard { sectors },
                Err(_) => return Err(engine::SubmitError::Failed(io)),
            },
        };
        let count = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed) & ((1 << TOKEN_DEVICE_SHIFT) - 1);
        let token = (u64::from(self.device) << TOKEN_DEVICE_SHIFT) | count;
        let buffers = io.buffer.take().map(|b| vec![b.0]).unwrap_or_default();
        match blk::submit(self.disk, op, io.sector, buffers, token) {
            Ok(()) => {
                self.pending.insert(token, io.token);
                Ok(())
            }
            Err((e, mut back)) => {
                io.buffer = back.pop().map(Bounce);
                if e == SubmitError::Busy {
                    Err(engine::SubmitError::Busy(io))
                } else {
                    Err(engine::SubmitError::Failed(io))
                }
            }
        }
    }
}

/// Grant copies to and from the frontend's pages.
struct FrontGrants<'a> {
    doms: &'a mut Domains,
    dom: DomId,
}

impl GrantCopy for FrontGrants<'_> {
    fn copy_in(&mut self, gref: GrantRef, offset: usize, buf: &mut [u8]) -> Result<(), XenErrno> {
        grant_io::copy_from_grant(self.doms, self.dom, gref, offset, buf)
            .map_err(|_| XenErrno::Efault)
    }
    fn copy_out(&mut self, gref: GrantRef, offset: usize, data: &[u8]) -> Result<(), XenErrno> {
        grant_io::copy_to_grant(self.doms, self.dom, gref, offset, data)
            .map_err(|_| XenErrno::Efault)
    }
}

/// A connected ring.
struct Conn {
    engine: VbdEngine<BlkDisk>,
    disk: BlkDisk,
    ring: RingPages,
    port: u32,
    ring_ref: GrantRef,
}

/// One vbd.
pub struct Vbd {
    plan: Plan,
    xenbus: VbdXenbus,
    conn: Option<Conn>,
    /// Counters of rings served before the current one.
    earlier: Stats,
}

fn refuse(reason: DeviceRefusal) -> Refusal {
    reason.into()
}

impl Vbd {
    /// Checks an attach request against the machine's disks and the attachments that
    /// exist (xl's sharing rules).
    pub fn plan(dom: DomId, req: &DeviceAttach, existing: &[Attachment]) -> Result<Plan, Refusal> {
        let target_name = core::str::from_utf8(padded_str(&req.target))
            .map_err(|_| refuse(DeviceRefusal::NoSuchTarget))?;
        let mode = Mode::from_raw(req.mode).ok_or(refuse(DeviceRefusal::BadSpec))?;
        let cdrom = match req.device_type {
            VBD_TYPE_DISK => false,
            VBD_TYPE_CDROM => true,
            _ => return Err(refuse(DeviceRefusal::BadSpec)),
        };
        let guest = vdev::decode_vdev(req.vdev).ok_or(refuse(DeviceRefusal::BadSpec))?;
        let vdev_name = match core::str::from_utf8(padded_str(&req.vdev_name)) {
            Ok("") => guest.name(),
            Ok(n) if n.is_ascii() => String::from(n),
            _ => return Err(refuse(DeviceRefusal::BadSpec)),
        };
        let devid = match req.devid {
            DEVID_AUTO => req.vdev,
            d if d == req.vdev => d,
            _ => return Err(refuse(DeviceRefusal::BadSpec)),
        };
        let targets = disks::targets();
        let target = target::resolve(target_name, &targets).map_err(refuse)?;
        check_attach(dom.0, &target, mode, existing)?;
        let disk = target.disk as DiskId;
        let info = blk::disks()
            .get(disk)
            .map(|d| d.info)
            .ok_or(refuse(DeviceRefusal::NoSuchTarget))?;
        Ok(Plan {
            devid,
            disk,
            target,
            target_name: String::from(target_name),
            vdev: req.vdev,
            vdev_name,
            mode,
            cdrom,
            caps: DiskCaps {
                flush: info.flush,
                discard: info.discard.is_some(),
                sector_size: info.blk_size,
                physical_sector_size: info.blk_size,
                read_only: info.read_only,
            },
        })
    }

    pub fn new(plan: Plan) -> Vbd {
        let caps = plan.caps;
        let discard = blk::disks()
            .get(plan.disk)
            .and_then(|d| d.info.discard)
            .filter(|_| caps.discard)
            .map(|limits| DiscardInfo {
                granularity: caps
                    .sector_size
                    .max(limits.sector_alignment.saturating_mul(512)),
                alignment: 0,
            });
        let mut info = 0;
        if !plan.mode.writable() {
            info |= VDISK_READONLY;
        }
        if plan.cdrom {
            info |= VDISK_CDROM;
        }
        let adv = Advertisement {
            max_ring_page_order: 4,
            max_indirect_segments: Config::default().max_indirect_segments,
            flush: caps.flush,
            discard,
            sectors: plan.target.sectors,
            info,
            sector_size: caps.sector_size,
            physical_sector_size: caps.physical_sector_size,
        };
        Vbd {
            plan,
            xenbus: VbdXenbus::new(adv),
            conn: None,
            earlier: Stats::default(),
        }
    }

    /// The attachment it is, for the sharing rules.
    pub fn attachment(&self, doms: &Domains, dom: DomId) -> Attachment {
        Attachment {
            domain: dom.0,
            target: self.plan.target,
            mode: self.plan.mode,
            running: doms.get(dom).is_some_and(|d| d.life == Life::Running),
        }
    }

    /// The disk it is on.
    pub fn disk(&self) -> DiskId {
        self.plan.disk
    }

    /// `vda2 as xvda, w`.
    pub fn describe(&self) -> String {
        format!(
            "{} as {}, {}",
            self.plan.target_name,
            self.plan.vdev_name,
            self.plan.mode.node_value()
        )
    }

    pub fn state(&self) -> XenbusState {
        self.xenbus.state()
    }

    /// Requests the disk has of the current ring.
    pub fn in_flight(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.engine.in_flight())
    }

    fn stats(&self) -> Stats {
        let now = self
            .conn
            .as_ref()
            .map(|c| c.engine.stats())
            .unwrap_or_default();
        Stats {
            requests: self.earlier.requests + now.requests,
            errors: self.earlier.errors + now.errors,
        }
    }

    pub fn fill_info(&self, info: &mut DeviceInfo) {
        info.mode = match self.plan.mode {
            Mode::ReadOnly => VBD_MODE_READ,
            Mode::Write => VBD_MODE_WRITE,
            Mode::WriteShared => VBD_MODE_WRITE_SHARED,
        };
        info.device_type = if self.plan.cdrom {
            VBD_TYPE_CDROM
        } else {
            VBD_TYPE_DISK
        };
        info.vdev = self.plan.vdev;
        let _ = set_padded(&mut info.target, self.plan.target_name.as_bytes());
        let _ = set_padded(&mut info.vdev_name, self.plan.vdev_name.as_bytes());
        if let Some(c) = &self.conn {
            info.evtchn = c.port;
            info.ring_ref = [c.ring_ref, 0];
        }
        let s = self.stats();
        info.requests = s.requests;
        info.errors = s.errors;
    }

    /// The device exists: features, InitWait, and whatever the frontend is at already.
    pub fn start(&mut self, doms: &mut Domains, head: &Head) {
        let acts = self.xenbus.start();
        self.run(doms, head, acts);
    }

    /// The frontend's state is `state` now.
    pub fn frontend_changed(&mut self, doms: &mut Domains, head: &Head, state: XenbusState) {
        let acts = self
            .xenbus
            .frontend_changed(state, &mut FrontNodes { doms, head });
        self.run(doms, head, acts);
    }

    /// A detach: Closing, served until the frontend closes.
    pub fn close(&mut self, doms: &mut Domains, head: &Head) {
        let acts = self.xenbus.close();
        self.run(doms, head, acts);
    }

    /// The device goes (destroy, forced detach): stop serving, give everything back.
    pub fn teardown(&mut self, doms: &mut Domains, head: &Head) {
        self.disconnect(doms, head);
    }

    /// The frontend kicked its port: serve the ring.
    pub fn kick(&mut self, doms: &mut Domains, head: &Head) {
        let Some(c) = self.conn.as_mut() else {
            return;
        };
        let mut mem = c.ring.memory();
        let result = c.engine.process(
            &mut mem,
            &mut FrontGrants {
                doms,
                dom: head.dom,
            },
            &mut c.disk,
        );
        let port = c.port;
        self.after(doms, head, port, result);
    }

    /// The disk completed I/O `token` of this device.
    fn complete(
        &mut self,
        doms: &mut Domains,
        head: &Head,
        token: u64,
        status: Status,
        buffer: Option<DmaBuffer>,
    ) {
        let Some(c) = self.conn.as_mut() else {
            return;
        };
        let Some(engine_token) = c.disk.pending.remove(&token) else {
            // A request of a ring that is gone.
            return;
        };
        let result = match status {
            Status::Ok => Ok(()),
            _ => Err(IoFailed),
        };
        let mut mem = c.ring.memory();
        let r = c.engine.complete(
            engine_token,
            result,
            buffer.map(Bounce),
            &mut mem,
            &mut FrontGrants {
                doms,
                dom: head.dom,
            },
            &mut c.disk,
        );
        let port = c.port;
        self.after(doms, head, port, r);
    }

    fn after(&mut self, doms: &mut Domains, head: &Head, port: u32, result: Result<bool, Fault>) {
        match result {
            Ok(true) => head.notify(doms, port),
            Ok(false) => {}
            Err(Fault::Ring(e)) => {
                head.warn(format_args!(
                    "the frontend broke its ring ({e:?}); device closed"
                ));
                let acts = self.xenbus.fault();
                self.run(doms, head, acts);
            }
        }
    }

    /// Carries out the handshake's actions, in order.
    fn run(&mut self, doms: &mut Domains, head: &Head, actions: Vec<Action>) {
        let mut queue: alloc::collections::VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            match a {
                Action::Write(node, value) => head.write(doms, node, &value),
                Action::SetState(s) => head.set_state(doms, s),
                Action::Connect(details) => {
                    let r = self.connect(doms, head, &details);
                    queue.extend(self.xenbus.connect_result(r));
                }
                Action::Disconnect => self.disconnect(doms, head),
                Action::Fatal(e) => head.warn(format_args!("cannot connect: {e:?}")),
            }
        }
    }

    fn connect(
        &mut self,
        doms: &mut Domains,
        head: &Head,
        details: &RingDetails,
    ) -> Result<(), &'static str> {
        let engine = VbdEngine::new(
            details.bytes(),
            self.plan.target,
            self.plan.mode.writable(),
            self.plan.caps,
            Config::default(),
        )
        .ok_or("the ring is too small")?;
        let ring = RingPages::map(doms, head.dom, &details.grefs)
            .map_err(|_| "a ring-ref is not a page granted to the backend")?;
        if let Err(e) = head.connect_port(doms, details.event_channel) {
            ring.release(doms);
            return Err(e);
        }
        self.conn = Some(Conn {
            engine,
            disk: BlkDisk {
                disk: self.plan.disk,
                device: head.id,
                pending: BTreeMap::new(),
            },
            ring,
            port: details.event_channel,
            ring_ref: details.grefs.first().copied().unwrap_or(0),
        });
        Ok(())
    }

    fn disconnect(&mut self, doms: &mut Domains, head: &Head) {
        if let Some(mut c) = self.conn.take() {
            let s = c.engine.stats();
            self.earlier.requests += s.requests;
            self.earlier.errors += s.errors;
            c.engine.disconnect();
            c.ring.release(doms);
            head.release_port(doms, c.port);
        }
    }
}

/// The disk driver's completion callback.
struct Completions;

impl BlkCompletion for Completions {
    fn complete(&self, disk: DiskId, token: u64, status: Status, mut buffers: Vec<DmaBuffer>) {
        crate::domain::with_domains(|doms| {
            devices::with_registry(|reg| {
                let id = (token >> TOKEN_DEVICE_SHIFT) as u32;
                if let Some(dev) = reg.get_mut(id) {
                    if let Backend::Vbd(v) = &mut dev.backend {
                        v.complete(doms, &dev.head, token, status, buffers.pop());
                    }
                }
                // Room on the disk: the other vbds on it may have I/O waiting.
                for dev in reg.iter_mut() {
                    let Backend::Vbd(v) = &mut dev.backend else {
                        continue;
                    };
                    if dev.head.id != id && v.disk() == disk && v.in_flight() > 0 {
                        v.kick(doms, &dev.head);
                    }
                }
            });
        });
    }
}

/// Registers the completion handler; call once the disks are probed.
pub fn init() {
    static HANDLER: Completions = Completions;
    blk::set_completion_handler(&HANDLER);
}

/// Attaches `dom0_disk=`'s target to dom0 (before dom0 runs, so that blkfront finds it
/// at boot, as it finds its root disk in Xen).
pub fn attach_dom0_disk(doms: &mut Domains, disk: &Dom0Disk<'_>) {
    let Some(vdev) = vdev::parse_vdev(disk.vdev) else {
        log::error!(
            "dom0_disk={}: '{}' is not a virtual disk name (xvda, sdb, …); not attached",
            disk.target,
            disk.vdev
        );
        return;
    };
    let mut req = DeviceAttach::new_zeroed();
    req.kind = ferrovisor_abi::domctl::DEVICE_VBD;
    req.devid = DEVID_AUTO;
    req.vdev = vdev;
    req.mode = match (disk.writable, disk.shared) {
        (false, _) => VBD_MODE_READ,
        (true, false) => VBD_MODE_WRITE,
        (true, true) => VBD_MODE_WRITE_SHARED,
    };
    req.device_type = VBD_TYPE_DISK;
    if set_padded(&mut req.target, disk.target.as_bytes()).is_none()
        || set_padded(&mut req.vdev_name, disk.vdev.as_bytes()).is_none()
    {
        log::error!("dom0_disk={}: name too long; not attached", disk.target);
        return;
    }
    if let Err(e) = devices::attach(doms, crate::domain::DOM0, &mut req) {
        log::error!(
            "dom0_disk={}: not attached: {:?} ({:?})",
            disk.target,
            e.refusal.reason,
            e.errno
        );
    }
}
