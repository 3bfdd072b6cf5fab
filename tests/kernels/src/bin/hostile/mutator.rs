//! vCPU 1: the races' mutator, rewriting ring entries, grant entries and indices, or
//! kicking, while vCPU 0 does I/O.

use super::*;

/// The race runs while set; vCPU 1 is between passes while [`MUTATOR_IDLE`].
pub(crate) static RACE_ON: AtomicBool = AtomicBool::new(false);
pub(crate) static MUTATOR_IDLE: AtomicBool = AtomicBool::new(true);
/// Passes over the ring.
pub(crate) static MUTATIONS: AtomicU64 = AtomicU64::new(0);
/// The first ring entry's address.
pub(crate) static RACE_RING: AtomicU64 = AtomicU64::new(0);
/// Which ring the race rewrites: [`RACE_VBD`] or [`RACE_VIF_TX`].
pub(crate) static RACE_MODE: AtomicU64 = AtomicU64::new(RACE_VBD);
pub(crate) const RACE_VBD: u64 = 0;
pub(crate) const RACE_VIF_TX: u64 = 1;
/// Kicks the port in `RACE_RING` in a loop.
pub(crate) const RACE_KICK: u64 = 2;
/// Flips the grant entry word at `RACE_RING` between the variants' first words.
pub(crate) const RACE_GRANT: u64 = 3;
/// Flips the ring's `req_prod` (at `RACE_RING`) the same way.
pub(crate) const RACE_INDEX: u64 = 4;
/// Rewrites the 8 segments of the indirect page at `RACE_RING`: segment `k` becomes the
/// variant's segment word with `first_sect = last_sect = k` or'ed in (bits 32..48).
pub(crate) const RACE_INDIRECT: u64 = 5;
/// (sector_number, first segment as a word) of each variant.
pub(crate) static RACE_VARIANTS: [(AtomicU64, AtomicU64); 5] =
    [const { (AtomicU64::new(0), AtomicU64::new(0)) }; 5];
/// vCPU 1's stack, in scratch pages.
pub(crate) const STACK_PAGES: u64 = 4;

pub(crate) fn wait_for(cond: impl Fn() -> bool) -> bool {
    let deadline = pvrt::time::now() + WAIT_MS * pvrt::time::NS_PER_MS;
    while !cond() {
        if pvrt::time::now() > deadline {
            return false;
        }
        pvrt::sched_yield();
    }
    true
}

pub(crate) fn start_mutator(si: &StartInfo) -> Result<(), &'static str> {
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

pub(crate) fn vcpu1_entry_address() -> u64 {
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
            RACE_INDIRECT => {
                for k in 0..8u64 {
                    // SAFETY: `ring` is the indirect page (a scratch page mapped
                    // writable); its first 8 segments are 8-byte aligned words.
                    unsafe {
                        ((ring + 8 * k) as *mut u64).write_volatile(
                            seg | k << 32 | if seg >> 40 == 0 { k << 40 } else { 0 },
                        )
                    };
                }
                variant = (variant + 1) % 3;
                MUTATIONS.fetch_add(1, Ordering::SeqCst);
                // Leave each variant in place a moment: a copy that overlaps a pass
                // mixes two variants, and every mix is invalid; some copies should
                // see one whole.
                // (Not `pause`: under TCG it gives the host CPU away.)
                for i in 0..2000u32 {
                    core::hint::black_box(i);
                }
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
