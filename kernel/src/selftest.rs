//! Test-only boot paths (`selftest=` on the command line), used by the QEMU integration
//! tests: check the running hypervisor and stop with a verdict, or fault on purpose to
//! show that the fatal paths report what happened.

use alloc::{boxed::Box, vec::Vec};

use core::sync::atomic::{AtomicU32, Ordering};

use ferrovisor::{
    cmdline::SelfTest,
    mm::{paging::Attrs, Mfn},
};
use ferrovisor_abi::layout::{FLAT_RING3_CS64, FLAT_RING3_SS64};

use crate::arch::x86_64::dma::DmaBuffer;
use crate::{
    arch::x86_64::memory,
    arch::x86_64::{
        debug_exit::Verdict,
        irq, percpu,
        trap::{self, TrapFrame},
    },
    clock, dom0, drivers, fatal,
};
use ferrovisor::virtio::net::MacAddr;

pub fn run(test: SelfTest) -> ! {
    match test {
        SelfTest::Halt => halt_after_checks(),
        SelfTest::PageFault => {
            log::info!(
                "selftest: writing to unmapped address {:#x}",
                trap::UNMAPPED_ADDRESS
            );
            trap::provoke_page_fault()
        }
        SelfTest::Panic => panic!("selftest: deliberate panic"),
        SelfTest::Ring3 => ring3_start(),
        SelfTest::Devices => devices(),
        SelfTest::StackOverflow => {
            log::info!("selftest: recursing until the main stack overflows");
            let depth = recurse(core::hint::black_box(0));
            log::error!("selftest: recursion returned at depth {depth}");
            fatal::halt(Verdict::Fatal)
        }
    }
}

/// Each level keeps 512 bytes live on the stack, so the recursion cannot be turned into a
/// loop and reaches the guard page quickly.
fn recurse(depth: u64) -> u64 {
    let mut buf = [0u8; 512];
    buf[depth as usize % 512] = depth as u8;
    core::hint::black_box(&mut buf);
    if depth == u64::MAX {
        return 0;
    }
    recurse(depth + 1) + buf[7] as u64
}

/// Takes every free frame from the allocator and checks that none of them lies in a range
/// that must never be handed out (firmware, the image, the boot information, the modules,
/// the allocator's bitmap, dom0's reservation), then gives them all back.
fn frame_allocator_respects_reservations() -> bool {
    let mut guard = memory::FRAMES.lock();
    let Some(frames) = guard.as_mut() else {
        log::error!("selftest: no frame allocator");
        return false;
    };
    let free_before = frames.free_frames();
    let reserved = memory::reserved_ranges();
    let dom0 = dom0::reserved_extents();
    // Frames come out mostly in ascending runs: keep runs, not frames, so that the record
    // stays small on machines with lots of RAM.
    let mut taken: Vec<(Mfn, u64)> = Vec::new();
    let mut bad = None;
    while let Some(mfn) = frames.alloc() {
        let hit = reserved
            .iter()
            .find(|(_, r)| r.contains(mfn.addr()))
            .map(|(name, _)| *name)
            .or_else(|| {
                dom0.iter()
                    .any(|r| r.contains(mfn.addr()))
                    .then_some("dom0's memory")
            });
        if let (None, Some(name)) = (bad, hit) {
            bad = Some((mfn, name));
        }
        match taken.last_mut() {
            Some((start, len)) if start.0 + *len == mfn.0 => *len += 1,
            _ => taken.push((mfn, 1)),
        }
    }
    let handed_out: u64 = taken.iter().map(|(_, len)| len).sum();
    let mut double_free = false;
    for (start, len) in taken {
        for n in 0..len {
            double_free |= frames.free(Mfn(start.0 + n)).is_err();
        }
    }
    let free_after = frames.free_frames();
    drop(guard);
    match bad {
        Some((mfn, name)) => {
            log::error!("selftest: frame allocator handed out {mfn}, which is in {name}");
            false
        }
        None if handed_out != free_before || free_after != free_before || double_free => {
            log::error!(
                "selftest: frame allocator accounting is off: {free_before} free, {handed_out} \
                 handed out, {free_after} free after giving them back"
            );
            false
        }
        None => {
            log::info!(
                "selftest: frame allocator: handed out all {handed_out} free frames, none in \
                 the {} reserved ranges or dom0's memory; all returned",
                reserved.len()
            );
            true
        }
    }
}

fn halt_after_checks() -> ! {
    let mut ok = true;

    // The tick: count timer interrupts against the TSC clock.
    const WANT_TICKS: u64 = 50;
    let (t0, n0) = (clock::ticks(), clock::now_ns());
    while clock::ticks() - t0 < WANT_TICKS && clock::now_ns() - n0 < 10_000_000_000 {
        irq::enable_and_wait();
    }
    let (ticks, ms) = (clock::ticks() - t0, (clock::now_ns() - n0) / 1_000_000);
    if ticks >= WANT_TICKS {
        log::info!("selftest: tick running: {ticks} ticks in {ms} ms");
    } else {
        log::error!("selftest: tick not running: {ticks} ticks in {ms} ms");
        ok = false;
    }

    // The heap.
    let v: Vec<u64> = (0..10_000).collect();
    let b = Box::new([7u8; 4096]);
    if v.iter().sum::<u64>() != 49_995_000 || b.iter().any(|&x| x != 7) {
        log::error!("selftest: heap allocations read back wrong");
        ok = false;
    }
    drop((v, b));

    if !frame_allocator_respects_reservations() {
        ok = false;
    }

    if ok {
        log::info!("selftest: passed");
        fatal::halt(Verdict::Halted)
    } else {
        log::error!("selftest: failed");
        fatal::halt(Verdict::Fatal)
    }
}

// The ring-3 selftest: a few instructions mapped user-accessible at RING3_CODE.
//   0x00  mov $0x1234, %eax
//   0x05  mov $0x5678, %edi
//   0x0a  syscall               -> the hypervisor checks rax/rdi, returns 0x42 in rax
//   0x0c  mov %rax, %rbx
//   0x0f  jmp .                 -> spins until the tick has interrupted it a few times
//   0x11  ud2                   -> #UD from ring 3: the hypervisor checks rbx == 0x42
const RING3_CODE: u64 = 0x40_0000;
const RING3_STACK_TOP: u64 = 0x40_3000;
const RING3_PROGRAM: [u8; 19] = [
    0xb8, 0x34, 0x12, 0x00, 0x00, 0xbf, 0x78, 0x56, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x89, 0xc3, 0xeb,
    0xfe, 0x0f, 0x0b,
];
const AFTER_SYSCALL: u64 = RING3_CODE + 0x0c;
const SPIN: u64 = RING3_CODE + 0x0f;
const UD2: u64 = RING3_CODE + 0x11;
const SYSCALL_RESULT: u64 = 0x42;
const WANT_RING3_TICKS: u32 = 5;

/// 0: not running; 1: waiting for the syscall; 2: spinning; 3: waiting for #UD.
static RING3_STAGE: AtomicU32 = AtomicU32::new(0);
static RING3_TICKS: AtomicU32 = AtomicU32::new(0);

fn ring3_start() -> ! {
    let (Some(mut code), Some(stack)) = (memory::alloc_frame(), memory::alloc_frame()) else {
        log::error!("selftest: ring 3: out of memory");
        fatal::halt(Verdict::Fatal);
    };
    code.bytes_mut()[..RING3_PROGRAM.len()].copy_from_slice(&RING3_PROGRAM);
    // The stack's page below (RING3_STACK_TOP - 0x2000) stays unmapped.
    let mapped = memory::map_user_page(RING3_CODE, code, Attrs::USER_TEXT)
        .and_then(|()| memory::map_user_page(RING3_STACK_TOP - 0x1000, stack, Attrs::USER_DATA));
    if let Err(e) = mapped {
        log::error!("selftest: ring 3: {e}");
        fatal::halt(Verdict::Fatal);
    }
    log::info!("selftest: ring 3: entering user code at {RING3_CODE:#x}");
    RING3_STAGE.store(1, Ordering::SeqCst);
    let frame = TrapFrame {
        rip: RING3_CODE,
        cs: FLAT_RING3_CS64 as u64,
        rflags: 0x202, // IF
        rsp: RING3_STACK_TOP,
        ss: FLAT_RING3_SS64 as u64,
        ..TrapFrame::default()
    };
    // Code and a stack just mapped user-accessible in the current address space.
    trap::return_to_ring3(&frame)
}

fn ring3_fail(what: core::fmt::Arguments) -> ! {
    log::error!("selftest: ring 3: {what}");
    fatal::halt(Verdict::Fatal)
}

/// Whether the ring-3 selftest owns ring 3.
pub fn ring3_running() -> bool {
    RING3_STAGE.load(Ordering::SeqCst) != 0
}

/// The selftest's SYSCALL; false if the selftest is not running.
pub fn ring3_syscall(frame: &mut TrapFrame) -> bool {
    if RING3_STAGE.load(Ordering::SeqCst) != 1 {
        return false;
    }
    if frame.rax != 0x1234 || frame.rdi != 0x5678 || frame.rip != AFTER_SYSCALL {
        ring3_fail(format_args!(
            "syscall arrived with rax={:#x} rdi={:#x} rip={:#x}",
            frame.rax, frame.rdi, frame.rip
        ));
    }
    log::info!(
        "selftest: ring 3: syscall from cs={:#x} rip={:#x} with rax={:#x} rdi={:#x} (cpu {})",
        frame.cs,
        frame.rip,
        frame.rax,
        frame.rdi,
        percpu::cpu()
    );
    frame.rax = SYSCALL_RESULT;
    RING3_STAGE.store(2, Ordering::SeqCst);
    true
}

/// The tick interrupted ring 3: after a few ticks in the spin loop, move on to the ud2.
pub fn ring3_interrupted(frame: &mut TrapFrame) {
    if RING3_STAGE.load(Ordering::SeqCst) != 2 || frame.rip != SPIN {
        return;
    }
    if RING3_TICKS.fetch_add(1, Ordering::SeqCst) + 1 >= WANT_RING3_TICKS {
        log::info!(
            "selftest: ring 3: {WANT_RING3_TICKS} timer interrupts taken from ring 3 at rip={:#x}",
            frame.rip
        );
        RING3_STAGE.store(3, Ordering::SeqCst);
        frame.rip = UD2;
    }
}

/// The selftest's #UD; false if the selftest is not running.
pub fn ring3_exception(frame: &mut TrapFrame) -> bool {
    if RING3_STAGE.load(Ordering::SeqCst) != 3 {
        return false;
    }
    if frame.vector != 6 || frame.rip != UD2 || frame.rbx != SYSCALL_RESULT {
        ring3_fail(format_args!(
            "expected #UD at {UD2:#x} with rbx={SYSCALL_RESULT:#x}, got vector {} at {:#x}, \
             rbx={:#x}",
            frame.vector, frame.rip, frame.rbx
        ));
    }
    log::info!(
        "selftest: ring 3: #UD at rip={:#x} cs={:#x}, syscall result {:#x} seen in ring 3",
        frame.rip,
        frame.cs,
        frame.rbx
    );
    log::info!("selftest: passed");
    fatal::halt(Verdict::Halted)
}

// The devices selftest: the first disk and NIC, through the drivers' public interface.

/// Waits (halting between interrupts) until `done` or `ns` have passed; whether `done`.
fn wait_until(ns: u64, done: impl Fn() -> bool) -> bool {
    let deadline = clock::now_ns() + ns;
    loop {
        irq::disable();
        if done() {
            irq::enable();
            return true;
        }
        if clock::now_ns() > deadline {
            irq::enable();
            return false;
        }
        irq::enable_and_wait();
    }
}

fn checksum(bytes: &[u8]) -> u32 {
    // FNV-1a: enough to tell sectors apart in the log.
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// The printable text at the start of a sector (up to 32 bytes), for the log.
fn marker(bytes: &[u8]) -> alloc::string::String {
    bytes
        .iter()
        .take(32)
        .take_while(|b| b.is_ascii_graphic() || **b == b' ')
        .map(|&b| b as char)
        .collect()
}

/// Completions of the asynchronous requests: how many, and how many failed.
static BLK_DONE: AtomicU32 = AtomicU32::new(0);
static BLK_FAILED: AtomicU32 = AtomicU32::new(0);
/// Sector 0 as the first asynchronous read returned it.
static BLK_FIRST: irq::IrqMutex<Option<Vec<u8>>> = irq::IrqMutex::new(None);

struct SelftestBlk;

impl drivers::blk::BlkCompletion for SelftestBlk {
    fn complete(
        &self,
        _disk: usize,
        token: u64,
        status: ferrovisor::virtio::blk::Status,
        buffers: Vec<crate::arch::x86_64::dma::DmaBuffer>,
    ) {
        if status != ferrovisor::virtio::blk::Status::Ok {
            BLK_FAILED.fetch_add(1, Ordering::SeqCst);
        }
        if token == 0 {
            *BLK_FIRST.lock() = buffers.first().map(|b| b.as_slice().to_vec());
        }
        BLK_DONE.fetch_add(1, Ordering::SeqCst);
    }
}

static ARP_REPLY: irq::IrqMutex<Option<MacAddr>> = irq::IrqMutex::new(None);
static FRAMES_SEEN: AtomicU32 = AtomicU32::new(0);

struct SelftestNet;

const SELF_IP: [u8; 4] = [10, 0, 2, 15];
const GATEWAY_IP: [u8; 4] = [10, 0, 2, 2];

impl drivers::net::NetReceiver for SelftestNet {
    fn receive(&self, nic: usize, frame: &[u8]) {
        FRAMES_SEEN.fetch_add(1, Ordering::SeqCst);
        let me = drivers::net::nics()
            .get(nic)
            .map(|n| n.mac())
            .unwrap_or_default();
        if let Some(mac) = ferrovisor::virtio::net::arp_reply_from(frame, GATEWAY_IP, me) {
            *ARP_REPLY.lock() = Some(mac);
        }
    }
}

fn disk_checks() -> bool {
    use drivers::blk::{self, SubmitError};
    use ferrovisor::virtio::blk::Op;

    let Some(disk) = blk::disks().first() else {
        log::error!("selftest: no virtio disk");
        return false;
    };
    let name = disk.name.as_str();
    let first = match blk::read_sectors(0, 0, 1) {
        Ok(b) => b,
        Err(e) => {
            log::error!("selftest: {name}: reading sector 0: {e}");
            return false;
        }
    };
    log::info!(
        "selftest: {name} sector 0: checksum {:08x}, marker \"{}\"",
        checksum(&first),
        marker(&first)
    );
    let last = disk.info.capacity.saturating_sub(1);
    match blk::read_sectors(0, last, 1) {
        Ok(b) => log::info!(
            "selftest: {name} sector {last} (the last): checksum {:08x}",
            checksum(&b)
        ),
        Err(e) => {
            log::error!("selftest: {name}: reading sector {last}: {e}");
            return false;
        }
    }
    if blk::read_sectors(0, disk.info.capacity, 1).is_ok() {
        log::error!("selftest: {name}: a read past the end was accepted");
        return false;
    }

    // Write a pattern to the last sector, flush, read it back.
    let Some(mut buf) = DmaBuffer::new(512) else {
        log::error!("selftest: out of memory");
        return false;
    };
    let stamp = clock::now_ns();
    for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
        *b = (i as u64 ^ stamp.rotate_left(i as u32 % 64)) as u8;
    }
    let pattern = buf.as_slice().to_vec();
    if let Err(e) = blk::submit_and_wait(0, Op::Write, last, alloc::vec![buf]) {
        log::error!("selftest: {name}: writing sector {last}: {e}");
        return false;
    }
    let flushed = if disk.info.flush {
        match blk::submit_and_wait(0, Op::Flush, 0, Vec::new()) {
            Ok(_) => "flushed",
            Err(e) => {
                log::error!("selftest: {name}: flush: {e}");
                return false;
            }
        }
    } else {
        "no flush offered"
    };
    match blk::read_sectors(0, last, 1) {
        Ok(b) if b == pattern => log::info!(
            "selftest: {name} sector {last}: pattern written, {flushed}, read back intact"
        ),
        Ok(_) => {
            log::error!("selftest: {name} sector {last}: read back differs from the pattern");
            return false;
        }
        Err(e) => {
            log::error!("selftest: {name}: reading sector {last} back: {e}");
            return false;
        }
    }

    if let Some(limits) = disk.info.discard {
        let n = limits.sector_alignment.clamp(1, 8);
        let start = (last + 1).saturating_sub(n as u64);
        match blk::submit_and_wait(0, Op::Discard { sectors: n }, start, Vec::new()) {
            Ok(_) => log::info!("selftest: {name}: discard of sectors {start}..={last} done"),
            Err(e) => {
                log::error!("selftest: {name}: discard: {e}");
                return false;
            }
        }
    }

    // Asynchronous reads of sector 0 until the queue is full: one "busy", then every
    // completion through the callback.
    drivers::blk::set_completion_handler(&SelftestBlk);
    let mut submitted = 0u32;
    let mut busy = false;
    // With interrupts off, no completion is taken while we submit: the queue fills.
    irq::disable();
    for token in 0..1000u64 {
        let Some(b) = DmaBuffer::new(512) else {
            break;
        };
        match blk::submit(0, Op::Read, 0, alloc::vec![b], token) {
            Ok(()) => submitted += 1,
            Err((SubmitError::Busy, _)) => {
                busy = true;
                break;
            }
            Err((e, _)) => {
                irq::enable();
                log::error!("selftest: {name}: asynchronous read: {e}");
                return false;
            }
        }
    }
    irq::enable();
    let all = wait_until(10_000_000_000, || {
        BLK_DONE.load(Ordering::SeqCst) >= submitted
    });
    let same = BLK_FIRST.lock().as_deref() == Some(&first[..]);
    if !busy || !all || BLK_FAILED.load(Ordering::SeqCst) != 0 || !same {
        log::error!(
            "selftest: {name}: asynchronous reads: {submitted} submitted, busy {busy}, {} \
             completed, {} failed, sector 0 {}",
            BLK_DONE.load(Ordering::SeqCst),
            BLK_FAILED.load(Ordering::SeqCst),
            if same { "matches" } else { "differs" }
        );
        return false;
    }
    log::info!(
        "selftest: {name}: {submitted} asynchronous reads queued until busy, all completed by \
         interrupt"
    );
    true
}

fn nic_checks() -> bool {
    use ferrovisor::virtio::net::arp_request;

    let Some(nic) = drivers::net::nics().first() else {
        log::error!("selftest: no virtio NIC");
        return false;
    };
    drivers::net::set_receiver(&SelftestNet);
    let mut frame = [0u8; 60];
    frame[..42].copy_from_slice(&arp_request(nic.mac(), SELF_IP, GATEWAY_IP));
    for attempt in 1..=5 {
        if let Err(e) = drivers::net::transmit(0, &frame) {
            log::error!("selftest: transmit: {e:?}");
            return false;
        }
        log::info!(
            "selftest: arp request for 10.0.2.2 sent from {} (attempt {attempt})",
            nic.mac()
        );
        if wait_until(1_000_000_000, || ARP_REPLY.lock().is_some()) {
            break;
        }
    }
    match *ARP_REPLY.lock() {
        Some(mac) => {
            log::info!(
                "selftest: arp reply from {mac} for 10.0.2.2 ({} frames received)",
                FRAMES_SEEN.load(Ordering::SeqCst)
            );
            true
        }
        None => {
            log::error!(
                "selftest: no arp reply from 10.0.2.2 ({} frames received)",
                FRAMES_SEEN.load(Ordering::SeqCst)
            );
            false
        }
    }
}

fn devices() -> ! {
    let disk = disk_checks();
    let nic = nic_checks();
    if disk && nic {
        log::info!("selftest: passed");
        fatal::halt(Verdict::Halted)
    } else {
        log::error!("selftest: failed");
        fatal::halt(Verdict::Fatal)
    }
}
