//! The boot sequence, from the long-mode trampoline to dom0 (or a selftest verdict).

use alloc::boxed::Box;

use ferrovisor::{
    cmdline::{self, Cmdline},
    mm::{layout::STACK_SIZE, HumanSize, Mfn, PhysRange},
    multiboot2::{self, BootInfo},
    time::rtc,
};

use crate::{
    arch::x86_64::memory::{self, CpuSpace, KernelSpace},
    arch::x86_64::{
        apic, boot,
        cpu::{self, Features},
        debug_exit::{self, Verdict},
        gdt::{self, Tss},
        idt, irq,
        percpu::{self, PerCpu},
        phys, pit, rtc as cmos, smp, syscall,
    },
    clock, console, dom0, domain, fatal, selftest,
};

/// The hypervisor's version, as the boot banner shows it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Tick period: 100 Hz.
pub const TICK_NS: u64 = 10_000_000;
/// The early GDT's code selector (`boot/entry.S`), used until the final GDT is loaded.
const EARLY_CS: u16 = 0x08;

/// What the first half of the boot hands to the second, across the stack switch.
struct Boot {
    info: BootInfo<'static>,
    /// Usable RAM, and the end of the highest RAM range.
    ram_bytes: u64,
    ram_end: u64,
    cmdline: Cmdline<'static>,
    features: Features,
    space: KernelSpace,
}

static BOOT: spin::Once<Boot> = spin::Once::new();

/// The hypervisor's command line (empty before boot got that far).
pub fn hypervisor_cmdline() -> &'static str {
    BOOT.get().map_or("", |b| b.cmdline.raw)
}

/// Called by `boot/entry.S` in long mode, on the boot stack, with the early page tables.
#[no_mangle]
pub extern "C" fn kernel_entry(magic: u32, mbi_phys: u32) -> ! {
    clock::mark_boot();
    // Exceptions are reported from here on (on the boot stack, with the boot GDT).
    // SAFETY: EARLY_CS is the boot GDT's 64-bit code selector (boot/entry.S); no IST slot
    // is named.
    unsafe { idt::load(EARLY_CS, &[]) };
    let features = Features::detect();
    // Calibrate first, so that every log line carries a real time stamp. The legacy PICs
    // are masked before anything could enable interrupts.
    pit::disable_legacy_pic();
    if let Some(hz) = pit::calibrate_tsc() {
        clock::set_tsc_hz(hz);
    }

    // The boot information: its size first, then all of it. GRUB puts it below 4 GiB,
    // which the early direct map covers.
    // SAFETY: the loader passed this address; the early direct map covers it and nothing
    // writes the boot information after the loader.
    let header = unsafe { phys::slice(mbi_phys as u64, 8) };
    let total = multiboot2::total_size(header).unwrap_or(0);
    // SAFETY: as above, for the size the header declares (the parser checks it again).
    let bytes = unsafe { phys::slice(mbi_phys as u64, total as usize) };
    let parsed = multiboot2::parse(bytes);

    let raw_cmdline = parsed.as_ref().ok().and_then(|i| i.cmdline).unwrap_or("");
    let cmdline = cmdline::parse(raw_cmdline);
    console::init(cmdline.console, cmdline.com1_baud.unwrap_or(115_200));
    console::init_log(cmdline.loglvl.to_filter());
    crate::guest_log::set_mirror(cmdline.guest_console_mirror);
    if let Some(port) = cmdline.debug_exit {
        // SAFETY: `debug_exit=` is the test harness's option naming QEMU's isa-debug-exit
        // device; the administrator asked for writes to that port.
        unsafe { debug_exit::configure(port) };
    }

    log::info!("Ferrovisor {VERSION}: x86-64 hypervisor for Xen-PV guests");
    if magic != multiboot2::BOOTLOADER_MAGIC {
        log::error!("not started by a multiboot2 loader (magic {magic:#x}); boot it from GRUB");
        fatal::halt(Verdict::Refused);
    }
    let info = match parsed {
        Ok(info) => info,
        Err(e) => {
            log::error!("the boot information from the loader is malformed: {e}");
            fatal::halt(Verdict::Refused);
        }
    };
    log::info!("command line: {}", cmdline.raw);
    for d in &cmdline.diagnostics {
        log::warn!("cmdline: {d}");
    }
    if cmdline.diagnostics_dropped > 0 {
        log::warn!(
            "cmdline: {} more problems not shown",
            cmdline.diagnostics_dropped
        );
    }
    log::info!("bootloader: {}", info.bootloader_name.unwrap_or("unknown"));
    log::info!(
        "cpu: {} {} (family {:#x} model {:#x} stepping {})",
        features.vendor(),
        features.brand(),
        features.family,
        features.model,
        features.stepping
    );
    log::info!("cpu features: {features}");

    log::info!("memory map:");
    for r in &info.memory_map {
        let end = r.base.saturating_add(r.len).saturating_sub(1);
        log::info!("  {:#018x}-{:#018x} {}", r.base, end, r.kind);
    }
    if info.regions_dropped > 0 {
        log::warn!("memory map: {} more regions ignored", info.regions_dropped);
    }

    let image = boot::image_layout();
    let mbi = PhysRange::new(mbi_phys as u64, mbi_phys as u64 + total as u64);
    let stats = match memory::init_frames(&info, &image, mbi) {
        Ok(s) => s,
        Err(e) => {
            log::error!("memory: {e}");
            fatal::halt(Verdict::Refused);
        }
    };
    log::info!(
        "memory: {} of RAM usable, {} free after the hypervisor ({:#x}-{:#x}), boot modules \
         and the frame bitmap",
        HumanSize(stats.usable_bytes),
        HumanSize(stats.free_bytes),
        image.phys_start,
        image.phys_end
    );

    let space = match memory::build_kernel_space(&info, &image, &features, apic::mmio_phys()) {
        Ok(s) => s,
        Err(e) => {
            log::error!("memory: {e}");
            fatal::halt(Verdict::Refused);
        }
    };
    log::info!(
        "paging: hypervisor tables at {}, {} direct-mapped, stacks guarded",
        space.tables_root,
        HumanSize(space.direct_mapped)
    );
    let stack_top = space.cpu0.main_stack_top;
    let ram_end = info
        .memory_map
        .iter()
        .filter(|r| r.kind.is_ram())
        .map(|r| r.base.saturating_add(r.len))
        .max()
        .unwrap_or(0)
        .min(ferrovisor::mm::layout::DIRECT_MAP_SIZE);
    let ram_bytes = stats.usable_bytes;
    BOOT.call_once(|| Boot {
        info,
        ram_bytes,
        ram_end,
        cmdline,
        features,
        space,
    });
    // SAFETY: the main stack was just mapped (with its guard below) and is used by nothing
    // else; nothing on the boot stack is needed after the switch (the state travels in
    // `BOOT`).
    unsafe { cpu::switch_stack(stack_top, boot_on_main_stack) }
}

extern "C" fn boot_on_main_stack() -> ! {
    let Some(boot) = BOOT.get() else {
        log::error!("boot state missing after the stack switch");
        fatal::halt(Verdict::Fatal);
    };
    let space = &boot.space;

    memory::init_m2p();
    let heap = memory::heap_size(boot.ram_bytes);
    match memory::init_heap(heap) {
        Ok(va) => log::info!("heap: {} at {va:#x}", HumanSize(heap)),
        Err(e) => {
            log::error!("memory: {e}");
            fatal::halt(Verdict::Refused);
        }
    }

    // Descriptor tables: the per-CPU GDT window and TSS, then the IDT with its IST stacks.
    init_this_cpu(0, &space.cpu0, &boot.features);
    let (smep, smap, umip) = (boot.features.smep, boot.features.smap, boot.features.umip);
    let on = |b: bool| if b { "on" } else { "absent" };
    log::info!(
        "cpu: GDT/TSS/IDT loaded, {} KiB guarded stack; SMEP {}, SMAP {}, UMIP {}",
        STACK_SIZE / 1024,
        on(smep),
        on(smap),
        on(umip)
    );

    start_time(boot);

    let mut can_start_dom0 = dom0::report_modules(&boot.info);
    if dom0::reserve_memory(boot.cmdline.dom0_mem.as_ref()).is_err() {
        can_start_dom0 = false;
    }
    start_other_cpus(boot);
    // The devices: after the local APIC (MSI-X targets the boot CPU's) and the other CPUs.
    crate::drivers::probe(boot.info.acpi_rsdp);
    crate::backend::disks::scan();
    crate::backend::switch::init();
    log::info!("memory: {} free", HumanSize(memory::free_bytes()));

    if !can_start_dom0 {
        log::error!("cannot start dom0; halting");
        fatal::halt(Verdict::Refused);
    }
    if let Some(test) = boot.cmdline.selftest {
        selftest::run(test);
    }
    domain::init_frame_table(boot.ram_end);
    crate::backend::xenstore::init();
    crate::backend::vbd::init();
    let kernel = &boot.info.modules[0]; // present: checked by `report_modules`
                                        // As in Xen: one vCPU per physical CPU unless `dom0_max_vcpus=` says otherwise.
    let vcpus = boot
        .cmdline
        .dom0_max_vcpus
        .unwrap_or(smp::online_mask().count_ones());
    match domain::build_dom0(
        kernel,
        boot.info.modules.get(1),
        &dom0::reserved_extents(),
        vcpus,
    ) {
        Ok(()) => {
            domain::with_domains(|doms| {
                crate::backend::xenstore::introduce(doms, domain::DOM0);
                if let Some(disk) = &boot.cmdline.dom0_disk {
                    crate::backend::vbd::attach_dom0_disk(doms, disk);
                }
                crate::backend::vif::attach_dom0_vif(doms, &boot.cmdline.dom0_vif);
            });
            crate::backend::console::attach(domain::DOM0);
            domain::run_dom0()
        }
        Err(e) => {
            log::error!("{e}");
            log::error!("cannot start dom0; halting");
            fatal::halt(Verdict::Refused)
        }
    }
}

/// Brings this CPU (index `cpu`) to the state every CPU runs guests in: its GDT window and
/// TSS (stacks from `space`), the IDT, the per-CPU area, SYSCALL, global pages, the FPU for
/// guests and the supervisor protections.
fn init_this_cpu(cpu: u32, space: &CpuSpace, features: &Features) {
    let mut tss = Tss::new();
    tss.rsp[0] = space.main_stack_top;
    tss.ist[gdt::IST_DOUBLE_FAULT as usize - 1] = space.ist_double_fault;
    tss.ist[gdt::IST_NMI as usize - 1] = space.ist_nmi;
    tss.ist[gdt::IST_MACHINE_CHECK as usize - 1] = space.ist_machine_check;
    let tss: &'static Tss = Box::leak(Box::new(tss));
    // SAFETY: the window's reserved pages were mapped by `map_cpu_space` for this CPU; the
    // TSS is leaked, so it lives (unmoved) forever.
    unsafe { gdt::load(cpu, space.gdt_window, space.gdt_reserved_page, tss) };
    let ist = [
        (8, gdt::IST_DOUBLE_FAULT),
        (2, gdt::IST_NMI),
        (18, gdt::IST_MACHINE_CHECK),
    ];
    if cpu == 0 {
        // SAFETY: `gdt::load` just loaded HYPERVISOR_CS, and the TSS holds the IST stacks.
        unsafe { idt::load(gdt::selector::HYPERVISOR_CS, &ist) };
    } else {
        // SAFETY: the boot CPU wrote the gates for HYPERVISOR_CS and these IST slots, which
        // this CPU's GDT and TSS now provide.
        unsafe { idt::load_shared() };
    }
    percpu::install(Box::leak(Box::new(PerCpu {
        self_ptr: 0,
        stack_top: space.main_stack_top,
        scratch_rsp: 0,
        cpu,
        _pad: 0,
    })));
    syscall::init();
    cpu::enable_global_pages();
    cpu::enable_guest_fpu();
    cpu::enable_protections(features);
}

/// Each application processor's stacks and GDT window, set up by the boot CPU before it
/// lets the processor go on.
static CPU_SPACES: spin::Mutex<[Option<CpuSpace>; smp::MAX_CPUS]> =
    spin::Mutex::new([None; smp::MAX_CPUS]);

/// Where the application processors start (a page below 1 MiB: the STARTUP IPI's vector
/// names it). 0x8000 is RAM on PCs and QEMU; it must be in an available range of the
/// memory map.
const TRAMPOLINE: PhysRange = PhysRange::new(0x8000, 0x9000);

/// Starts the other CPUs (up to `maxcpus=` in all).
fn start_other_cpus(boot: &Boot) {
    let max = boot
        .cmdline
        .maxcpus
        .unwrap_or(smp::MAX_CPUS as u32)
        .clamp(1, smp::MAX_CPUS as u32);
    if max == 1 {
        log::info!("smp: maxcpus=1, only the boot CPU runs");
        return;
    }
    let low_ram =
        boot.info.memory_map.iter().any(|r| {
            r.kind.is_ram() && r.base <= TRAMPOLINE.start && r.base + r.len >= TRAMPOLINE.end
        });
    if !low_ram {
        log::warn!(
            "smp: {:#x} is not RAM in the memory map; the other CPUs are not started",
            TRAMPOLINE.start
        );
        return;
    }
    let started = smp::start_aps(Mfn::containing(TRAMPOLINE.start), max, 100, |cpu| {
        match memory::new_cpu_space(cpu) {
            Ok(space) => {
                CPU_SPACES.lock()[cpu as usize] = Some(space);
                Some(space.main_stack_top)
            }
            Err(e) => {
                log::error!("smp: no memory for CPU {cpu}'s stacks: {e}");
                None
            }
        }
    });
    log::info!(
        "smp: {} CPU{} running ({} answered the start-up IPIs{})",
        started.started + 1,
        if started.started == 0 { "" } else { "s" },
        started.answered,
        match boot.cmdline.maxcpus {
            Some(n) => alloc::format!(", maxcpus={n}"),
            None => alloc::string::String::new(),
        }
    );
}

/// Called by `boot/ap_trampoline.S` on an application processor, on its own stack, with
/// the hypervisor's page tables: `ticket` + 1 is its CPU index.
#[no_mangle]
pub extern "C" fn ap_main(ticket: u32) -> ! {
    let cpu = ticket + 1;
    let (Some(boot), Some(space)) = (
        BOOT.get(),
        CPU_SPACES.lock().get(cpu as usize).copied().flatten(),
    ) else {
        irq::halt_forever()
    };
    init_this_cpu(cpu, &space, &boot.features);
    // SAFETY: as on the boot CPU (`start_time`): the APIC page is mapped uncached for
    // good; each CPU reaches its own APIC at the same address.
    unsafe { apic::init(boot.features.x2apic, boot.space.apic_mmio) };
    apic::start_timer(TICK_NS, clock::tsc_hz());
    smp::mark_online(cpu);
    log::info!("smp: CPU {cpu} up (APIC id {})", apic::id());
    crate::sched::run_idle()
}

/// TSC calibration, the wall clock from the RTC, and the APIC timer tick.
fn start_time(boot: &Boot) {
    let tsc_hz = match Some(clock::tsc_hz()).filter(|&hz| hz != 0) {
        Some(hz) => {
            log::info!(
                "tsc: {}.{:03} MHz, calibrated against the PIT{}",
                hz / 1_000_000,
                (hz / 1000) % 1000,
                if boot.features.invariant_tsc {
                    ", invariant"
                } else {
                    ""
                }
            );
            hz
        }
        None => {
            const GUESS: u64 = 1_000_000_000;
            log::error!("tsc: the PIT does not count; assuming 1 GHz, times will be wrong");
            clock::set_tsc_hz(GUESS);
            GUESS
        }
    };

    let mut regs = cmos::read_registers();
    // The century register is only a convention (the FADT names it); a value that is not
    // a plausible century means there is none.
    if let Some(c) = regs.century {
        let binary = regs.status_b & 0x04 != 0;
        let value = if binary { c } else { (c >> 4) * 10 + (c & 0xf) };
        if !(19..=21).contains(&value) {
            regs.century = None;
        }
    }
    match rtc::decode(&regs) {
        Ok(now) => {
            clock::set_wallclock(&now);
            log::info!("wallclock: {now} (CMOS RTC)");
        }
        Err(e) => log::error!("wallclock: the CMOS RTC reads nonsense ({e}); wall time unset"),
    }

    // SAFETY: `build_kernel_space` mapped the APIC page (from `apic::mmio_phys`) uncached
    // at `apic_mmio` for good; x2APIC only where CPUID reports it.
    let mode = unsafe { apic::init(boot.features.x2apic, boot.space.apic_mmio) };
    let timer = apic::start_timer(TICK_NS, tsc_hz);
    smp::mark_online(0);
    irq::enable();
    log::info!(
        "apic: {}, id {}, timer at {} Hz ({})",
        match mode {
            apic::Mode::XApic => "xAPIC",
            apic::Mode::X2Apic => "x2APIC",
        },
        apic::id(),
        1_000_000_000 / TICK_NS,
        match timer {
            apic::TimerMode::Periodic => "periodic",
            apic::TimerMode::TscDeadline => "TSC deadline",
        }
    );
}
