//! `bench`: the benchmark kernel `cargo xtask bench` boots as dom0 (never part of
//! `cargo xtask test`). It times, with the TSC, what a PV kernel pays the hypervisor for:
//!
//! * `null_hypercall`: `xen_version(XENVER_version, NULL)`, the cheapest real hypercall,
//!   `syscall` to return;
//! * `page_fault_bounce`: a read of an unmapped address, bounced through the trap table to
//!   the #PF handler, which skips the 3-byte load and returns with the `iret` hypercall:
//!   from the faulting instruction to the next one;
//! * `mmu_update_batch64`: one `mmu_update` of 64 L1-entry updates, alternately unmapping
//!   and remapping one scratch page of the bootstrap region (so every pair drops and takes
//!   the page's writable type), and `mmu_update_per_entry`, that median over 64;
//! * `context_switch`: only with a second vCPU, which this kernel looks for with
//!   `VCPUOP_is_up(1)`; with one vCPU it says `n/a` and why, never a number;
//! * `timer_overhead`: two back-to-back TSC reads, which every sample above includes (it is
//!   not subtracted).
//!
//! Each figure is the median of many individually timed samples (the batch: of many
//! batches), converted to nanoseconds with the TSC scale of `vcpu_time_info`
//! (`tsc_to_system_mul`, `tsc_shift`; `xen.h`). The lines are machine-readable:
//! `bench: <name> median <ns> ns (<n> samples)` or `bench: <name> n/a (<reason>)`. The
//! kernel's first action is to print `bench: first output`: xtask times QEMU's start to that
//! line (the kernel cannot know the host's clock).
#![cfg_attr(target_os = "none", no_std, no_main)]

use core::{
    cell::UnsafeCell,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use ferrovisor_abi::xen::{
    vcpu::VcpuOp,
    version::XenVersionOp,
    xen::{MmuUpdate, MmuUpdateCmd, StartInfo, DOMID_SELF},
};
use pvrt::{
    region::{self, ScratchPage},
    traps::{self, vector, Trap},
};

pvrt::test_kernel!(name: "bench", main: bench_main);

/// Samples per figure (batches for `mmu_update`), after [`WARMUP`] untimed rounds.
const SAMPLES: usize = 10_000;
const MMU_BATCHES: usize = 1_000;
const WARMUP: usize = 100;
/// L1-entry updates in one `mmu_update`.
const BATCH: usize = 64;
/// An address no bootstrap mapping covers (PML4 slot 0), for the page faults.
const UNMAPPED: u64 = 0x0000_1234_5000;
/// The #PF handler skips the load the fault probe makes: `mov rax, [rdi]` (48 8b 07).
const FAULTING_LOAD_LEN: u64 = 3;

fn bench_main(si: &StartInfo) -> Result<(), &'static str> {
    pvrt::println!("bench: first output");
    if let Err(ret) = pvrt::shared_info::map(si) {
        pvrt::fail!("update_va_mapping of shared_info returned {ret}");
    }
    traps::set_handler(skip_faulting_load);
    if let Err(e) = traps::install() {
        pvrt::fail!("installing the trap table: {e}");
    }
    let scale = TscScale::read()?;
    pvrt::println!("bench: tsc_khz {}", scale.khz());
    let samples = sample_buffer();

    let overhead = median(time_each(&mut samples[..], || {}));
    report(&scale, "timer_overhead", overhead, SAMPLES, 1);

    let ret = pvrt::xen_version(XenVersionOp::Version);
    pvrt::ensure!(ret > 0, "xen_version(XENVER_version) returned {ret}");
    let null = median(time_each(&mut samples[..], || {
        let _ = pvrt::xen_version(XenVersionOp::Version);
    }));
    report(&scale, "null_hypercall", null, SAMPLES, 1);

    let before = FAULTS.load(Ordering::SeqCst);
    let faults = median(time_faults(&mut samples[..]));
    let handled = FAULTS.load(Ordering::SeqCst) - before;
    pvrt::ensure!(
        handled == (SAMPLES + WARMUP) as u64,
        "{handled} page faults handled, expected {}",
        SAMPLES + WARMUP
    );
    report(&scale, "page_fault_bounce", faults, SAMPLES, 1);

    let batch = median(time_mmu_batches(si, &mut samples[..MMU_BATCHES])?);
    report(&scale, "mmu_update_batch64", batch, MMU_BATCHES, 1);
    report(
        &scale,
        "mmu_update_per_entry",
        batch,
        MMU_BATCHES,
        BATCH as u64,
    );

    context_switch();
    Ok(())
}

/// The TSC-to-nanoseconds scale of vCPU 0's `vcpu_time_info`.
struct TscScale {
    mul: u32,
    shift: i8,
}

impl TscScale {
    /// Reads the scale under the version protocol (`xen.h`: retry while `version` is odd
    /// or changes across the read).
    fn read() -> Result<Self, &'static str> {
        let Some(si) = pvrt::shared_info::get() else {
            return Err("shared_info is not mapped");
        };
        loop {
            // SAFETY: `shared_info::map` mapped the page at `si`, which stays mapped; the
            // hypervisor updates the record asynchronously, hence the volatile reads.
            let (v1, mul, shift, v2) = unsafe {
                let time = &raw const (*si).vcpu_info[0].time;
                let v1 = core::ptr::read_volatile(&raw const (*time).version);
                core::sync::atomic::fence(Ordering::Acquire);
                let mul = core::ptr::read_volatile(&raw const (*time).tsc_to_system_mul);
                let shift = core::ptr::read_volatile(&raw const (*time).tsc_shift);
                core::sync::atomic::fence(Ordering::Acquire);
                let v2 = core::ptr::read_volatile(&raw const (*time).version);
                (v1, mul, shift, v2)
            };
            if v1 % 2 == 0 && v1 == v2 {
                if mul == 0 {
                    return Err("vcpu_time_info.tsc_to_system_mul is 0: no TSC scale");
                }
                return Ok(TscScale { mul, shift });
            }
        }
    }

    /// `ticks * 10` in nanoseconds (tenths of a nanosecond for `ticks`):
    /// `((ticks << shift) * mul) >> 32`, in 128 bits so that nothing overflows.
    fn tenths_of_ns(&self, ticks: u64) -> u128 {
        let t = u128::from(ticks) * 10;
        let shifted = if self.shift >= 0 {
            t << self.shift
        } else {
            t >> self.shift.unsigned_abs()
        };
        (shifted * u128::from(self.mul)) >> 32
    }

    /// The TSC frequency in kHz: `((10^9 << 32) / mul) >> shift` (`xen.h`), in kHz.
    fn khz(&self) -> u64 {
        let khz = (1_000_000u64 << 32) / u64::from(self.mul);
        if self.shift >= 0 {
            khz >> self.shift
        } else {
            khz << self.shift.unsigned_abs()
        }
    }
}

/// Prints `bench: <name> median <ns> ns (<n> samples)` for a median of `ticks`, divided by
/// `per` (the batch size for a per-entry figure).
fn report(scale: &TscScale, name: &str, ticks: u64, samples: usize, per: u64) {
    let tenths = scale.tenths_of_ns(ticks) / u128::from(per);
    pvrt::println!(
        "bench: {name} median {}.{} ns ({samples} samples)",
        tenths / 10,
        tenths % 10
    );
}

/// The TSC, after the earlier instructions (`lfence; rdtsc`, Linux's `rdtsc_ordered`).
#[inline(always)]
fn rdtsc() -> u64 {
    #[cfg(target_os = "none")]
    {
        let (lo, hi): (u32, u32);
        // SAFETY: `lfence` and `rdtsc` only read the TSC into eax:edx (a PV guest may: the
        // hypervisor leaves CR4.TSD clear, as Xen does).
        unsafe {
            core::arch::asm!(
                "lfence",
                "rdtsc",
                out("eax") lo,
                out("edx") hi,
                options(nomem, nostack, preserves_flags),
            );
        }
        (u64::from(hi) << 32) | u64::from(lo)
    }
    #[cfg(not(target_os = "none"))]
    0
}

/// Times `f` once per slot of `samples` (after [`WARMUP`] untimed calls), in TSC ticks.
fn time_each(samples: &mut [u64], mut f: impl FnMut()) -> &mut [u64] {
    for _ in 0..WARMUP {
        f();
    }
    for s in samples.iter_mut() {
        let t0 = rdtsc();
        f();
        *s = rdtsc().wrapping_sub(t0);
    }
    samples
}

/// Page faults the handler skipped.
static FAULTS: AtomicU64 = AtomicU64::new(0);

/// The kernel's exception handler: a #PF at [`UNMAPPED`] resumes after the 3-byte load;
/// anything else fails the kernel.
fn skip_faulting_load(trap: &mut Trap<'_>) -> bool {
    let expected =
        trap.frame.vector == u64::from(vector::PF) && trap.cr2.is_none_or(|cr2| cr2 == UNMAPPED);
    if expected {
        trap.frame.rip += FAULTING_LOAD_LEN;
        FAULTS.fetch_add(1, Ordering::Relaxed);
    }
    expected
}

/// Times page faults: TSC, the faulting load, TSC, in one asm block so that the sample is
/// exactly fault → hypervisor → handler → `iret` → next instruction (plus one TSC read).
fn time_faults(samples: &mut [u64]) -> &mut [u64] {
    for _ in 0..WARMUP {
        let _ = fault_once();
    }
    for s in samples.iter_mut() {
        *s = fault_once();
    }
    samples
}

fn fault_once() -> u64 {
    #[cfg(target_os = "none")]
    {
        let (t0, t1): (u64, u64);
        // SAFETY: the load of the unmapped `UNMAPPED` raises #PF, which the trap table
        // installed by `bench_main` bounces to `skip_faulting_load`; it resumes after the
        // load with every register restored by the trap stub and the `iret` hypercall. The
        // load's destination, rax, and the TSC registers are declared clobbered.
        unsafe {
            core::arch::asm!(
                "lfence",
                "rdtsc",
                "shl rdx, 32",
                "or rax, rdx",
                "mov {t0}, rax",
                ".byte 0x48, 0x8b, 0x07",
                "lfence",
                "rdtsc",
                "shl rdx, 32",
                "or rax, rdx",
                t0 = out(reg) t0,
                in("rdi") UNMAPPED,
                out("rax") t1,
                out("rdx") _,
            );
        }
        t1.wrapping_sub(t0)
    }
    #[cfg(not(target_os = "none"))]
    0
}

/// Times `mmu_update` batches on one scratch page's L1 entry: unmap, map, … 64 updates,
/// the last restoring the original entry, so the page is mapped as before after each batch.
fn time_mmu_batches<'a>(
    si: &StartInfo,
    samples: &'a mut [u64],
) -> Result<&'a mut [u64], &'static str> {
    let page = region::alloc_scratch(si).ok_or("out of scratch pages")?;
    let Some((l1e, original)) = l1_entry(si, page.va) else {
        pvrt::fail!(
            "no bootstrap L1 entry found for scratch page {:#x}",
            page.va
        );
    };
    pvrt::ensure!(
        original & 1 == 1 && (original & 0x000f_ffff_ffff_f000) >> 12 == page.mfn,
        "the L1 entry of scratch page {:#x} is {original:#x}, not a mapping of mfn {:#x}",
        page.va,
        page.mfn
    );
    let ptr = l1e | u64::from(MmuUpdateCmd::NormalPtUpdate.raw());
    let mut batch = [MmuUpdate { ptr, val: 0 }; BATCH];
    for (i, req) in batch.iter_mut().enumerate() {
        req.val = if i % 2 == 0 { 0 } else { original };
    }

    let mut done = 0u32;
    // SAFETY: the scratch page is this benchmark's alone; the batch ends with the entry as
    // it was, so nothing that uses the page sees a change.
    let ret = unsafe { pvrt::mmu_update(&batch, Some(&mut done), DOMID_SELF) };
    pvrt::ensure!(
        ret == 0 && done as usize == BATCH,
        "mmu_update of {BATCH} L1 updates returned {ret}, {done} done"
    );
    time_each(samples, || {
        // SAFETY: as above.
        let _ = unsafe { pvrt::mmu_update(&batch, None, DOMID_SELF) };
    });
    still_mapped(&page)?;
    Ok(samples)
}

/// The scratch page is mapped and writable after the batches.
fn still_mapped(page: &ScratchPage) -> Result<(), &'static str> {
    let word = page.words();
    // SAFETY: the scratch page is mapped writable again (every batch ends by restoring its
    // entry) and used by nothing else.
    let back = unsafe {
        core::ptr::write_volatile(word, 0x5ca1_ab1e);
        core::ptr::read_volatile(word)
    };
    pvrt::ensure!(
        back == 0x5ca1_ab1e,
        "the scratch page reads back {back:#x} after the mmu_update batches"
    );
    Ok(())
}

/// The machine address of the bootstrap L1 entry mapping `va`, and its value: a walk of
/// the bootstrap page tables (`pt_base`, `nr_pt_frames`, mapped read-only in the region).
fn l1_entry(si: &StartInfo, va: u64) -> Option<(u64, u64)> {
    let frames = si.nr_pt_frames;
    let va_of = |mfn: u64| {
        (0..frames)
            .map(|i| si.pt_base + i * region::PAGE_SIZE)
            .find(|&table| region::mfn_of(si, table) == mfn)
    };
    let entry = |table: u64, index: u64| {
        // SAFETY: `table` is a bootstrap page-table frame, mapped read-only in the
        // bootstrap region for the kernel's life; `index` is below 512.
        unsafe { core::ptr::read_volatile((table as *const u64).add(index as usize)) }
    };
    let mut table = si.pt_base;
    for shift in [39u32, 30, 21] {
        let e = entry(table, (va >> shift) & 511);
        if e & 1 == 0 {
            return None;
        }
        table = va_of((e & 0x000f_ffff_ffff_f000) >> 12)?;
    }
    let index = (va >> 12) & 511;
    let maddr = region::mfn_of(si, table) * region::PAGE_SIZE + index * 8;
    Some((maddr, entry(table, index)))
}

/// A context switch between two vCPUs needs a second one: `VCPUOP_is_up(1)` says whether
/// the domain has it. Without one the figure is `n/a`; bringing a second vCPU up
/// (`VCPUOP_initialise` with a full `vcpu_guest_context`) is not something this kernel does
/// yet, so a domain whose vCPU 1 exists but is down gets `n/a` too, with that reason.
fn context_switch() {
    // SAFETY: `VCPUOP_is_up` takes no argument structure (NULL) and changes nothing.
    let ret = unsafe { pvrt::vcpu_op(VcpuOp::IsUp, 1, core::ptr::null_mut()) };
    match ret {
        r if r < 0 => {
            pvrt::println!("bench: context_switch n/a (one vCPU: VCPUOP_is_up(1) returned {r})")
        }
        0 => pvrt::println!(
            "bench: context_switch n/a (vCPU 1 exists but is down; the bench kernel does not \
             bring up secondary vCPUs yet)"
        ),
        _ => pvrt::println!(
            "bench: context_switch n/a (vCPU 1 is up but runs no code of this kernel; the \
             two-vCPU ping-pong is not written yet)"
        ),
    }
}

/// The median of `samples` (sorted in place).
fn median(samples: &mut [u64]) -> u64 {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or(0)
}

/// Room for [`SAMPLES`] samples: too large for the 64 KiB stack, so a static handed out
/// once.
struct SampleBuffer(UnsafeCell<[u64; SAMPLES]>);

// SAFETY: the kernel runs on one vCPU, and `sample_buffer` hands the buffer out at most
// once, so no two references to it exist.
unsafe impl Sync for SampleBuffer {}

static BUFFER: SampleBuffer = SampleBuffer(UnsafeCell::new([0; SAMPLES]));
static BUFFER_TAKEN: AtomicBool = AtomicBool::new(false);

fn sample_buffer() -> &'static mut [u64; SAMPLES] {
    if BUFFER_TAKEN.swap(true, Ordering::SeqCst) {
        pvrt::fail!("the sample buffer was taken twice");
    }
    // SAFETY: the flag above lets this run once, so this is the only reference.
    unsafe { &mut *BUFFER.0.get() }
}
