//! The other physical CPUs: starting them (INIT and STARTUP IPIs into `boot/ap_trampoline.S`),
//! and the inter-processor interrupts the hypervisor sends between CPUs: a *kick* (the
//! destination re-checks what it runs on its way back to a guest) and a synchronous TLB
//! *flush* (the sender waits until every destination has flushed).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ferrovisor::mm::Mfn;

use super::{apic, cpu, paging, phys};

core::arch::global_asm!(
    include_str!("../../../../boot/ap_trampoline.S"),
    options(att_syntax)
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// Physical CPUs the hypervisor uses at most.
pub const MAX_CPUS: usize = 16;

/// Tickets taken by application processors that reached long mode (`ap_entry64`).
#[no_mangle]
static AP_ARRIVED: AtomicU32 = AtomicU32::new(0);
/// Tickets below this one may go on (with the stack in `AP_STACKS`, or halt without).
#[no_mangle]
static AP_RELEASED: AtomicU32 = AtomicU32::new(0);
/// Each ticket's stack top (0: not wanted, halt). The trampoline indexes it by ticket;
/// tickets past its end are released with no stack and halt.
#[no_mangle]
static AP_STACKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// The hypervisor's page-table root, loaded by each application processor.
#[no_mangle]
static AP_CR3: AtomicU64 = AtomicU64::new(0);

/// Each CPU's local APIC id, by CPU index (u32::MAX: no such CPU).
static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];
/// CPUs up and scheduling (bit per CPU index).
static ONLINE: AtomicU64 = AtomicU64::new(0);
/// CPUs idling with nothing to run (bit per CPU index).
static IDLE: AtomicU64 = AtomicU64::new(0);
/// TLB-flush requests made to each CPU (by CPU index), counted.
static FLUSH_REQUESTED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// The last request each CPU has served: it flushed after that request was made.
static FLUSH_SERVED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

pub const KICK_VECTOR: u8 = 0xf1;
pub const FLUSH_VECTOR: u8 = 0xf2;

/// Records that this CPU (index `cpu`) is up, with its APIC id.
pub fn mark_online(cpu: u32) {
    if let Some(slot) = APIC_IDS.get(cpu as usize) {
        slot.store(apic::id(), Ordering::Relaxed);
        ONLINE.fetch_or(1 << cpu, Ordering::SeqCst);
    }
}

/// The CPUs up and scheduling, as a bit mask.
pub fn online_mask() -> u64 {
    ONLINE.load(Ordering::SeqCst)
}

/// How the start-up went: CPUs that answered, and those started.
#[derive(Clone, Copy, Debug)]
pub struct Started {
    pub answered: u32,
    pub started: u32,
}

/// Starts the application processors. `prepare(cpu)` gives CPU index `cpu` (1, 2, …) its
/// stack top, or `None` to leave it halted; at most `max_cpus` CPUs run in all. Waits
/// `settle_ms` after the STARTUP IPIs for processors to answer.
pub fn start_aps(
    trampoline: Mfn,
    max_cpus: u32,
    settle_ms: u64,
    mut prepare: impl FnMut(u32) -> Option<u64>,
) -> Started {
    // SAFETY: only the addresses of the assembly labels are taken.
    let (start, end) = unsafe {
        (
            &ap_trampoline_start as *const u8 as usize,
            &ap_trampoline_end as *const u8 as usize,
        )
    };
    // SAFETY: the trampoline's bytes in the image's read-only data.
    let code = unsafe { core::slice::from_raw_parts(start as *const u8, end - start) };
    // SAFETY: the caller's frame below 1 MiB, allocated for the trampoline alone.
    unsafe { phys::write_bytes(trampoline.addr(), code) };
    AP_CR3.store(cpu::read_cr3(), Ordering::SeqCst);
    let page = trampoline.0 as u8;

    // INIT, then STARTUP twice (the second is ignored by a processor already started).
    apic::send_ipi(apic::Ipi::Init, apic::Dest::AllButSelf);
    spin_ms(10);
    apic::send_ipi(apic::Ipi::Startup(page), apic::Dest::AllButSelf);
    spin_ms(1);
    apic::send_ipi(apic::Ipi::Startup(page), apic::Dest::AllButSelf);

    let mut released = 0u32;
    let mut started = 0u32;
    let mut deadline = cpu::rdtsc() + ms_to_tsc(settle_ms);
    while cpu::rdtsc() < deadline {
        let arrived = AP_ARRIVED.load(Ordering::SeqCst);
        while released < arrived {
            let cpu_index = released + 1;
            let stack = if cpu_index < max_cpus && (cpu_index as usize) < MAX_CPUS {
                prepare(cpu_index)
            } else {
                None
            };
            if let Some(slot) = AP_STACKS.get(released as usize) {
                slot.store(stack.unwrap_or(0), Ordering::SeqCst);
            }
            released += 1;
            AP_RELEASED.store(released, Ordering::SeqCst);
            if stack.is_some() {
                started += 1;
                // Wait for it to come up before counting on it.
                let bit = 1u64 << cpu_index;
                let up_by = cpu::rdtsc() + ms_to_tsc(2000);
                while online_mask() & bit == 0 && cpu::rdtsc() < up_by {
                    core::hint::spin_loop();
                }
            }
            deadline = cpu::rdtsc() + ms_to_tsc(settle_ms);
        }
        core::hint::spin_loop();
    }
    Started {
        answered: released,
        started,
    }
}

fn ms_to_tsc(ms: u64) -> u64 {
    crate::clock::tsc_hz() / 1000 * ms
}

fn spin_ms(ms: u64) {
    let until = cpu::rdtsc() + ms_to_tsc(ms);
    while cpu::rdtsc() < until {
        core::hint::spin_loop();
    }
}

/// Set once the machine stops: the other CPUs halt on the NMI that follows.
static STOPPING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Halts every other CPU (through an NMI, which even a CPU with interrupts off takes), so
/// that nothing runs on after the hypervisor stops.
pub fn stop_others() {
    STOPPING.store(true, Ordering::SeqCst);
    if online_mask() & !(1u64 << super::percpu::try_cpu().unwrap_or(0)) != 0 {
        apic::send_ipi(apic::Ipi::Nmi, apic::Dest::AllButSelf);
    }
}

/// Whether the machine is stopping (what an NMI checks first).
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Sends `vector` to CPU index `cpu`, if it is online.
fn send_to(cpu: u32, vector: u8) {
    if online_mask() & (1 << cpu) == 0 {
        return;
    }
    if let Some(id) = APIC_IDS.get(cpu as usize) {
        apic::send_ipi(
            apic::Ipi::Fixed(vector),
            apic::Dest::Id(id.load(Ordering::Relaxed)),
        );
    }
}

/// Makes CPU `cpu` leave what it runs for the hypervisor soon (it re-checks its vCPU and
/// pending events on the way back).
pub fn kick(cpu: u32) {
    if cpu != super::percpu::cpu() {
        send_to(cpu, KICK_VECTOR);
    }
}

/// Records whether this CPU idles (halted until an interrupt, nothing to run).
pub fn set_idle(idle: bool) {
    let bit = 1u64 << super::percpu::cpu();
    if idle {
        IDLE.fetch_or(bit, Ordering::SeqCst);
    } else {
        IDLE.fetch_and(!bit, Ordering::SeqCst);
    }
}

/// Wakes one idle CPU (not this one), if any, to look for a runnable vCPU.
pub fn kick_idle() {
    let me = super::percpu::cpu();
    let idle = IDLE.load(Ordering::SeqCst) & !(1u64 << me);
    if idle != 0 {
        send_to(idle.trailing_zeros(), KICK_VECTOR);
    }
}

/// Flushes the TLBs of the CPUs in `mask` (this one's locally) and returns once every one
/// has. Safe to call with interrupts off and locks held: a CPU waiting for a lock (see
/// `irq::IrqMutex`) serves flush requests while it spins.
pub fn flush_tlbs(mask: u64) {
    let me = super::percpu::cpu();
    let others = mask & online_mask() & !(1 << me);
    if mask & (1 << me) != 0 {
        paging::flush_tlb_local();
    }
    if others == 0 {
        return;
    }
    // Each destination's request number: it is served by a flush that starts after the
    // destination has seen it. (A single pending bit per CPU is not enough: a request
    // made while the destination is already flushing for an earlier one would be cleared
    // with it, unserved, and its sender would go on with the old translation cached.)
    let mut tickets = [0u64; MAX_CPUS];
    for (cpu, ticket) in tickets.iter_mut().enumerate() {
        if others & (1 << cpu) != 0 {
            *ticket = FLUSH_REQUESTED[cpu].fetch_add(1, Ordering::SeqCst) + 1;
            send_to(cpu as u32, FLUSH_VECTOR);
        }
    }
    for (cpu, &ticket) in tickets.iter().enumerate() {
        while ticket != 0 && FLUSH_SERVED[cpu].load(Ordering::SeqCst) < ticket {
            serve_flush();
            core::hint::spin_loop();
        }
    }
}

/// Does this CPU's part of a pending flush request, if any (from the flush interrupt, and
/// from lock spins and other waits).
pub fn serve_flush() {
    let Some(cpu) = super::percpu::try_cpu() else {
        return; // a CPU still starting: it flushes when it loads its page tables
    };
    let (Some(requested), Some(served)) = (
        FLUSH_REQUESTED.get(cpu as usize),
        FLUSH_SERVED.get(cpu as usize),
    ) else {
        return;
    };
    // Every request up to `upto` was made before this flush starts.
    let upto = requested.load(Ordering::SeqCst);
    if served.load(Ordering::SeqCst) < upto {
        paging::flush_tlb_local();
        served.fetch_max(upto, Ordering::SeqCst);
    }
}
