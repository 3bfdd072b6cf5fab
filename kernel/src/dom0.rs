//! What the boot needs for dom0: its kernel and initrd from the boot modules (the first
//! `module2` line is the kernel, the second its initrd, as with Xen) and its memory,
//! reserved from the frame allocator by `dom0_mem=`. Building and running dom0 comes with
//! the PV core.

use ferrovisor::{
    cmdline::{Dom0Mem, Dom0MemError},
    mm::{HumanSize, PhysRange, PAGE_SIZE},
    multiboot2::{BootInfo, Module},
};

use crate::arch::x86_64::memory::FRAMES;

/// Frames set aside for dom0, as contiguous extents.
pub const MAX_DOM0_EXTENTS: usize = 64;

pub struct Dom0Memory {
    pub extents: heapless::Vec<PhysRange, MAX_DOM0_EXTENTS>,
}

static RESERVATION: spin::Mutex<Option<Dom0Memory>> = spin::Mutex::new(None);

/// The extents reserved for dom0 (empty before `reserve_memory`).
pub fn reserved_extents() -> heapless::Vec<PhysRange, MAX_DOM0_EXTENTS> {
    RESERVATION
        .lock()
        .as_ref()
        .map(|r| r.extents.clone())
        .unwrap_or_default()
}

/// Logs the dom0 kernel and initrd modules; `false` when there is no kernel.
pub fn report_modules(boot: &BootInfo) -> bool {
    let describe = |m: &Module| (m.end.saturating_sub(m.start)).div_ceil(1024);
    match boot.modules.first() {
        Some(k) => log::info!(
            "dom0 kernel: module 0 at {:#x}-{:#x} ({} KiB), command line '{}'",
            k.start,
            k.end,
            describe(k),
            k.cmdline
        ),
        None => {
            log::error!("no dom0 kernel: the boot entry has no module2 line");
            log::error!(
                "  add 'module2 /boot/vmlinuz-<version> root=... console=hvc0' after the \
                 multiboot2 line of the GRUB entry"
            );
            return false;
        }
    }
    match boot.modules.get(1) {
        Some(i) => log::info!(
            "dom0 initrd: module 1 at {:#x}-{:#x} ({} KiB)",
            i.start,
            i.end,
            describe(i)
        ),
        None => log::info!("dom0 initrd: none (no second module2 line)"),
    }
    for (n, m) in boot.modules.iter().enumerate().skip(2) {
        log::warn!(
            "module {n} at {:#x}-{:#x} is not used (only a kernel and an initrd are)",
            m.start,
            m.end
        );
    }
    if boot.modules_dropped > 0 {
        log::warn!("{} further boot modules were ignored", boot.modules_dropped);
    }
    true
}

/// Resolves `dom0_mem=` against free RAM and reserves that much for dom0.
pub fn reserve_memory(dom0_mem: Option<&Dom0Mem>) -> Result<u64, ()> {
    let default = Dom0Mem::default();
    let spec = dom0_mem.unwrap_or(&default);
    let mut frames = FRAMES.lock();
    let Some(frames) = frames.as_mut() else {
        log::error!("dom0_mem: the frame allocator is not ready");
        return Err(());
    };
    let available = frames.free_frames() * PAGE_SIZE;
    let bytes = match spec.resolve(available) {
        Ok(b) => b,
        Err(Dom0MemError::NotEnoughMemory {
            requested,
            available,
        }) => {
            log::error!(
                "dom0_mem: cannot reserve {} for dom0: only {} free",
                HumanSize(requested),
                HumanSize(available)
            );
            log::error!("  lower dom0_mem= on the multiboot2 line, or give the machine more RAM");
            return Err(());
        }
        Err(e) => {
            log::error!("dom0_mem: {e}");
            return Err(());
        }
    };
    log::info!("dom0_mem: {} ({} KiB)", HumanSize(bytes), bytes / 1024);
    let mut extents = heapless::Vec::new();
    if let Err(e) = frames.alloc_extents(bytes / PAGE_SIZE, &mut extents) {
        log::error!(
            "dom0_mem: cannot reserve {} for dom0: {e}",
            HumanSize(bytes)
        );
        return Err(());
    }
    log::info!(
        "dom0: reserved {} ({} frames in {} extent{})",
        HumanSize(bytes),
        bytes / PAGE_SIZE,
        extents.len(),
        if extents.len() == 1 { "" } else { "s" }
    );
    *RESERVATION.lock() = Some(Dom0Memory { extents });
    Ok(bytes)
}
