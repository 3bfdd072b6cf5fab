//! The virtio PCI transport, modern interface (virtio 1.1, 4.1): mapping the structures
//! the capabilities name, the initialisation sequence (3.1.1), queue set-up (4.1.5.1.3),
//! notifications, and MSI-X (4.1.5.1.2) to the boot CPU's local APIC.

use ferrovisor::{
    pci::{
        self,
        msix::{self, MsixCapability},
        Bar, Function, CAP_MSIX,
    },
    virtio::{
        self,
        pci::{common, find_caps, notify_offset, TransportError, VirtioCaps, NO_VECTOR},
        status, FeatureError,
    },
};

use crate::arch::x86_64::{memory::MemoryError, mmio::Mmio, pci::HwConfig};

/// MSI-X table entry for configuration changes, and the one every queue shares; both
/// send the device's one vector.
const MSIX_CONFIG_ENTRY: u16 = 0;
const MSIX_QUEUE_ENTRY: u16 = 1;

/// Why a device was not taken into use.
#[derive(Debug)]
pub enum ProbeError {
    Transport(TransportError),
    /// The function has no MSI-X capability (we do not route legacy INTx).
    NoMsix,
    /// The MSI-X table is not inside a memory BAR, or has fewer than two entries.
    BadMsix,
    Map(MemoryError),
    Features(FeatureError),
    /// The device cleared FEATURES_OK: it does not accept our subset.
    FeaturesRefused,
    /// The device did not come out of reset.
    ResetTimeout,
    /// A queue the driver needs is missing or unusable.
    Queue(&'static str),
    /// The device refused an MSI-X entry (NO_VECTOR read back).
    VectorRefused,
    /// No device vector is left in the IDT.
    NoVector,
    /// The boot CPU's APIC id does not fit an MSI address (> 255 needs interrupt
    /// remapping).
    ApicId(u32),
    OutOfMemory,
}

impl core::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProbeError::Transport(e) => write!(f, "{e}"),
            ProbeError::NoMsix => f.write_str(
                "no MSI-X capability; this hypervisor does not route legacy INTx interrupts, \
                 so the device is not used",
            ),
            ProbeError::BadMsix => f.write_str("the MSI-X table is unusable"),
            ProbeError::Map(e) => write!(f, "mapping its registers: {e}"),
            ProbeError::Features(e) => write!(f, "feature negotiation: {e}"),
            ProbeError::FeaturesRefused => f.write_str("the device refused our features"),
            ProbeError::ResetTimeout => f.write_str("the device did not finish its reset"),
            ProbeError::Queue(q) => write!(f, "queue {q} is missing or unusable"),
            ProbeError::VectorRefused => f.write_str("the device refused an MSI-X vector"),
            ProbeError::NoVector => f.write_str("no device interrupt vector left"),
            ProbeError::ApicId(id) => write!(f, "APIC id {id} does not fit an MSI message"),
            ProbeError::OutOfMemory => f.write_str("out of memory for its queues"),
        }
    }
}

impl From<MemoryError> for ProbeError {
    fn from(e: MemoryError) -> Self {
        ProbeError::Map(e)
    }
}

/// One modern virtio PCI function's registers.
#[derive(Debug)]
pub struct Transport {
    cfg: HwConfig,
    func: Function,
    caps: VirtioCaps,
    common: Mmio,
    /// The whole BAR of the notify structure (notification offsets are BAR offsets).
    notify_bar: Mmio,
    device: Option<Mmio>,
    msix: MsixCapability,
    msix_table: Mmio,
}

impl Transport {
    /// Maps the structures of `func`. Turns on memory decoding and bus mastering.
    pub fn new(cfg: HwConfig, func: &Function) -> Result<Transport, ProbeError> {
        let bdf = func.bdf;
        let bars = pci::read_bars(&cfg, bdf);
        let caps = pci::capabilities(&cfg, bdf);
        let vcaps = find_caps(&cfg, bdf, &caps, &bars).map_err(ProbeError::Transport)?;
        let msix_at = caps
            .iter()
            .find(|c| c.id == CAP_MSIX)
            .ok_or(ProbeError::NoMsix)?;
        let msix = MsixCapability::read(&cfg, bdf, msix_at.offset).ok_or(ProbeError::BadMsix)?;
        if msix.table_size < 2 {
            return Err(ProbeError::BadMsix);
        }
        // Each BAR used is mapped once; the structures are views into it.
        let mut mapped: [Option<Mmio>; 6] = [None; 6];
        let mut bar = |i: u8| -> Result<Mmio, ProbeError> {
            if let Some(m) = mapped[i as usize] {
                return Ok(m);
            }
            let (addr, size) = bars[i as usize]
                .as_ref()
                .and_then(Bar::memory)
                .ok_or(ProbeError::Transport(TransportError::OutsideBar("BAR")))?;
            let m = Mmio::map(addr, size)?;
            mapped[i as usize] = Some(m);
            Ok(m)
        };
        let view = |m: Mmio, r: virtio::pci::Region| {
            m.sub(r.offset as u64, r.length as u64)
                .ok_or(ProbeError::Transport(TransportError::OutsideBar(
                    "structure",
                )))
        };
        let common = view(bar(vcaps.common.bar)?, vcaps.common)?;
        let notify_bar = bar(vcaps.notify.bar)?;
        let device = match vcaps.device {
            Some(r) => Some(view(bar(r.bar)?, r)?),
            None => None,
        };
        let msix_table = bar(msix.table_bar)?
            .sub(msix.table_offset as u64, msix.table_len())
            .ok_or(ProbeError::BadMsix)?;
        pci::enable_memory_and_bus_master(&cfg, bdf);
        Ok(Transport {
            cfg,
            func: *func,
            caps: vcaps,
            common,
            notify_bar,
            device,
            msix,
            msix_table,
        })
    }

    fn set_status(&self, s: u8) {
        self.common.write8(common::DEVICE_STATUS, s);
    }

    pub fn status(&self) -> u8 {
        self.common.read8(common::DEVICE_STATUS)
    }

    /// Resets the device and waits (bounded) until it reads back 0 (4.1.4.3.2).
    pub fn reset(&self) -> Result<(), ProbeError> {
        self.set_status(0);
        for _ in 0..1_000_000 {
            if self.status() == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(ProbeError::ResetTimeout)
    }

    /// Marks the device failed (3.1.1 step 8): it stops using what we gave it.
    pub fn fail(&self) {
        self.set_status(self.status() | status::FAILED);
    }

    /// Reset, ACKNOWLEDGE, DRIVER, feature negotiation and FEATURES_OK (3.1.1 steps 1-6);
    /// returns the accepted features.
    pub fn negotiate(&self, wanted: u64) -> Result<u64, ProbeError> {
        self.reset()?;
        self.set_status(status::ACKNOWLEDGE);
        self.set_status(status::ACKNOWLEDGE | status::DRIVER);
        let mut offered = 0u64;
        for half in 0..2u32 {
            self.common.write32(common::DEVICE_FEATURE_SELECT, half);
            offered |= (self.common.read32(common::DEVICE_FEATURE) as u64) << (32 * half);
        }
        let accepted = virtio::negotiate(offered, wanted).map_err(|e| {
            self.fail();
            ProbeError::Features(e)
        })?;
        for half in 0..2u32 {
            self.common.write32(common::DRIVER_FEATURE_SELECT, half);
            self.common
                .write32(common::DRIVER_FEATURE, (accepted >> (32 * half)) as u32);
        }
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.set_status(s);
        if self.status() & status::FEATURES_OK == 0 {
            self.fail();
            return Err(ProbeError::FeaturesRefused);
        }
        Ok(accepted)
    }

    /// Programs MSI-X: both table entries send `vector` to the local APIC `apic_id`,
    /// configuration changes use entry 0. The function stays masked until
    /// [`Transport::driver_ok`].
    pub fn setup_msix(&self, vector: u8, apic_id: u32) -> Result<(), ProbeError> {
        let id = u8::try_from(apic_id).map_err(|_| ProbeError::ApicId(apic_id))?;
        self.msix.enable_masked(&self.cfg, self.func.bdf);
        let (addr, data) = msix::lapic_message(id, vector);
        for entry in [MSIX_CONFIG_ENTRY, MSIX_QUEUE_ENTRY] {
            let o = entry as u64 * msix::ENTRY_SIZE;
            self.msix_table.write32(o + 12, msix::ENTRY_MASKED);
            self.msix_table.write32(o, addr as u32);
            self.msix_table.write32(o + 4, (addr >> 32) as u32);
            self.msix_table.write32(o + 8, data);
            self.msix_table.write32(o + 12, 0);
        }
        self.common.write16(common::MSIX_CONFIG, MSIX_CONFIG_ENTRY);
        if self.common.read16(common::MSIX_CONFIG) == NO_VECTOR {
            return Err(ProbeError::VectorRefused);
        }
        Ok(())
    }

    /// The largest size queue `index` can have (0: no such queue).
    pub fn queue_max(&self, index: u16) -> u16 {
        if index >= self.common.read16(common::NUM_QUEUES) {
            return 0;
        }
        self.common.write16(common::QUEUE_SELECT, index);
        self.common.read16(common::QUEUE_SIZE)
    }

    /// Sets queue `index` up with `size` entries over rings at `desc`/`avail`/`used`
    /// (machine addresses), interrupting through the shared MSI-X entry, and enables it.
    /// Returns the BAR offset its notifications go to.
    pub fn enable_queue(
        &self,
        index: u16,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> Result<u64, ProbeError> {
        self.common.write16(common::QUEUE_SELECT, index);
        self.common.write16(common::QUEUE_SIZE, size);
        self.common
            .write16(common::QUEUE_MSIX_VECTOR, MSIX_QUEUE_ENTRY);
        if self.common.read16(common::QUEUE_MSIX_VECTOR) == NO_VECTOR {
            return Err(ProbeError::VectorRefused);
        }
        self.common.write64(common::QUEUE_DESC, desc);
        self.common.write64(common::QUEUE_DRIVER, avail);
        self.common.write64(common::QUEUE_DEVICE, used);
        let off = self.common.read16(common::QUEUE_NOTIFY_OFF);
        let at = notify_offset(&self.caps, off).ok_or(ProbeError::Queue("notify offset"))?;
        self.common.write16(common::QUEUE_ENABLE, 1);
        Ok(at)
    }

    /// DRIVER_OK (3.1.1 step 8), then the MSI-X function mask is lifted.
    pub fn driver_ok(&self) {
        self.set_status(
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        self.msix.unmask_function(&self.cfg, self.func.bdf);
    }

    /// Tells the device queue `index` has new buffers (4.1.5.2), at the BAR offset
    /// [`Transport::enable_queue`] returned.
    pub fn notify(&self, at: u64, index: u16) {
        self.notify_bar.write16(at, index);
    }

    /// Reads the device configuration through `f` until the configuration generation is
    /// the same before and after (4.1.4.3.1: a multi-field read must not straddle a
    /// change).
    pub fn read_device_config<T>(&self, f: impl Fn(&Mmio) -> T) -> T {
        let empty = Mmio::empty();
        let dev = self.device.as_ref().unwrap_or(&empty);
        loop {
            let before = self.common.read8(common::CONFIG_GENERATION);
            let v = f(dev);
            if self.common.read8(common::CONFIG_GENERATION) == before {
                return v;
            }
        }
    }
}
