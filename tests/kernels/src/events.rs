//! Event channels as a PV guest kernel uses them (`event_channel.h`, 2-level ABI): the
//! `event_channel_op` sub-ops, the pending and mask bitmaps in `shared_info`, and an
//! event-upcall handler that counts what it finds per port.
//!
//! The upcall (`CALLBACKTYPE_event`) arrives like an exception without an error code, with
//! events masked (`vcpu_info.evtchn_upcall_mask` = 1) and the mask from before in the
//! frame's saved IF. The handler does what Linux's 2-level handler does
//! (`events_2l.c`): clear `evtchn_upcall_pending` first (an event arriving during the scan
//! raises a new upcall), take the selector `evtchn_pending_sel` with an exchange, and for
//! each flagged word consume the pending and unmasked ports, clearing their pending bits.
//! Its `iret` restores the mask from the saved IF, and the hypervisor delivers whatever
//! became pending meanwhile.

use core::{
    ffi::c_void,
    sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering},
};

use ferrovisor_abi::xen::{
    event_channel::{
        EvtchnBindIpi, EvtchnBindVirq, EvtchnClose, EvtchnOp, EvtchnSend, EvtchnStatus,
        EvtchnUnmask,
    },
    hypercall::Hypercall,
    version::XenVersionOp,
    xen::{SharedInfo, VcpuInfo, DOMID_SELF},
};

use crate::{hypercall, shared_info, time, traps};

/// `VIRQ_TIMER` (`xen.h`).
pub const VIRQ_TIMER: u32 = 0;
/// Ports whose upcalls the handler counts one by one (the test kernels use a few).
pub const COUNTED_PORTS: usize = 64;

/// `event_channel_op(cmd, arg)`.
///
/// # Safety
/// `arg` must point to the structure `cmd` takes (`event_channel.h`).
pub unsafe fn event_channel_op(cmd: EvtchnOp, arg: *mut c_void) -> i64 {
    // SAFETY: the caller's contract.
    unsafe {
        hypercall::hypercall2(
            Hypercall::EventChannelOp.raw(),
            u64::from(cmd.raw()),
            arg as u64,
        )
    }
}

/// `EVTCHNOP_bind_virq`: the new port, or the error.
pub fn bind_virq(virq: u32, vcpu: u32) -> Result<u32, i64> {
    let mut b = EvtchnBindVirq {
        virq,
        vcpu,
        port: 0,
    };
    // SAFETY: the hypervisor reads and writes the 12-byte structure on this stack.
    match unsafe { event_channel_op(EvtchnOp::BindVirq, (&raw mut b).cast()) } {
        0 => Ok(b.port),
        err => Err(err),
    }
}

/// `EVTCHNOP_bind_ipi`: the new port, or the error.
pub fn bind_ipi(vcpu: u32) -> Result<u32, i64> {
    let mut b = EvtchnBindIpi { vcpu, port: 0 };
    // SAFETY: as in `bind_virq`, 8 bytes.
    match unsafe { event_channel_op(EvtchnOp::BindIpi, (&raw mut b).cast()) } {
        0 => Ok(b.port),
        err => Err(err),
    }
}

/// `EVTCHNOP_send`.
pub fn send(port: u32) -> i64 {
    let mut s = EvtchnSend { port };
    // SAFETY: the hypervisor reads the 4-byte structure.
    unsafe { event_channel_op(EvtchnOp::Send, (&raw mut s).cast()) }
}

/// `EVTCHNOP_close`.
pub fn close(port: u32) -> i64 {
    let mut c = EvtchnClose { port };
    // SAFETY: as in `send`.
    unsafe { event_channel_op(EvtchnOp::Close, (&raw mut c).cast()) }
}

/// `EVTCHNOP_unmask`: clears the mask bit and delivers an event that is pending.
pub fn unmask_op(port: u32) -> i64 {
    let mut u = EvtchnUnmask { port };
    // SAFETY: as in `send`.
    unsafe { event_channel_op(EvtchnOp::Unmask, (&raw mut u).cast()) }
}

/// `EVTCHNOP_status` of one of the kernel's own ports.
pub fn status(port: u32) -> Result<EvtchnStatus, i64> {
    let mut s = EvtchnStatus {
        dom: DOMID_SELF,
        _cpad0: 0,
        port,
        status: u32::MAX,
        vcpu: u32::MAX,
        u: [u32::MAX; 2],
    };
    // SAFETY: the hypervisor reads and writes the 24-byte structure on this stack.
    match unsafe { event_channel_op(EvtchnOp::Status, (&raw mut s).cast()) } {
        0 => Ok(s),
        err => Err(err),
    }
}

fn shared() -> *mut SharedInfo {
    match shared_info::get() {
        Some(si) => si.cast_mut(),
        None => crate::fail!("event channels: shared_info is not mapped"),
    }
}

fn vcpu_info() -> *mut VcpuInfo {
    match shared_info::vcpu_info() {
        Some(vi) => vi,
        None => crate::fail!("event channels: shared_info is not mapped"),
    }
}

/// The `evtchn_pending` word of `port` and its bit.
fn pending_word(port: u32) -> (&'static AtomicU64, u64) {
    let word = (port / 64) as usize % 64;
    // SAFETY: shared_info is mapped (`shared` checks) and stays mapped; the hypervisor
    // changes the word with atomic operations too, so it is only accessed atomically.
    let w = unsafe { AtomicU64::from_ptr(&raw mut (*shared()).evtchn_pending[word]) };
    (w, 1 << (port % 64))
}

/// The `evtchn_mask` word of `port` and its bit.
fn mask_word(port: u32) -> (&'static AtomicU64, u64) {
    let word = (port / 64) as usize % 64;
    // SAFETY: as in `pending_word`.
    let w = unsafe { AtomicU64::from_ptr(&raw mut (*shared()).evtchn_mask[word]) };
    (w, 1 << (port % 64))
}

/// Whether `port`'s bit in `evtchn_pending` is set.
pub fn is_pending(port: u32) -> bool {
    let (w, bit) = pending_word(port);
    w.load(Ordering::SeqCst) & bit != 0
}

/// Whether `port`'s bit in `evtchn_mask` is set.
pub fn is_masked(port: u32) -> bool {
    let (w, bit) = mask_word(port);
    w.load(Ordering::SeqCst) & bit != 0
}

/// Clears `port`'s pending bit (the guest's acknowledgement).
pub fn clear_pending(port: u32) {
    let (w, bit) = pending_word(port);
    w.fetch_and(!bit, Ordering::SeqCst);
}

/// Sets or clears `port`'s bit in `evtchn_mask` directly (the guest owns the mask; only
/// `EVTCHNOP_unmask` also delivers what became pending while masked).
pub fn set_masked(port: u32, masked: bool) {
    let (w, bit) = mask_word(port);
    if masked {
        w.fetch_or(bit, Ordering::SeqCst);
    } else {
        w.fetch_and(!bit, Ordering::SeqCst);
    }
}

fn upcall_pending_byte() -> &'static AtomicU8 {
    // SAFETY: the vcpu_info is mapped for the kernel's life; the hypervisor changes the
    // byte atomically too.
    unsafe { AtomicU8::from_ptr(&raw mut (*vcpu_info()).evtchn_upcall_pending) }
}

fn upcall_mask_byte() -> &'static AtomicU8 {
    // SAFETY: as in `upcall_pending_byte`.
    unsafe { AtomicU8::from_ptr(&raw mut (*vcpu_info()).evtchn_upcall_mask) }
}

fn pending_sel() -> &'static AtomicU64 {
    // SAFETY: as in `upcall_pending_byte`.
    unsafe { AtomicU64::from_ptr(&raw mut (*vcpu_info()).evtchn_pending_sel) }
}

/// `vcpu_info.evtchn_upcall_pending`.
pub fn upcall_pending() -> u8 {
    upcall_pending_byte().load(Ordering::SeqCst)
}

/// `vcpu_info.evtchn_upcall_mask`.
pub fn upcall_mask() -> u8 {
    upcall_mask_byte().load(Ordering::SeqCst)
}

/// `vcpu_info.evtchn_pending_sel`.
pub fn selector() -> u64 {
    pending_sel().load(Ordering::SeqCst)
}

/// Masks event delivery (`evtchn_upcall_mask` = 1; Linux's `xen_irq_disable`).
pub fn mask_events() {
    upcall_mask_byte().store(1, Ordering::SeqCst);
}

/// Unmasks event delivery; if an upcall is already pending, makes a hypercall so that the
/// hypervisor delivers it on the way back (Linux's `xen_irq_enable` and
/// `xen_force_evtchn_callback`).
pub fn unmask_events() {
    upcall_mask_byte().store(0, Ordering::SeqCst);
    if upcall_pending() != 0 {
        let _ = hypercall::xen_version(XenVersionOp::Version);
    }
}

/// Forgets a stale event on `port`: its pending bit, and the selector and upcall flag if
/// nothing else is pending. Only with events masked.
pub fn discard(port: u32) {
    // Clear the vCPU's flags first, then the port: an event that arrives in between is
    // either discarded with the port or raises the flags again itself. Checking first and
    // clearing after would race with delivery (an event landing between the two would be
    // left pending with its selector cleared, and the 2-level rules then never raise an
    // upcall for that port again).
    pending_sel().store(0, Ordering::SeqCst);
    upcall_pending_byte().store(0, Ordering::SeqCst);
    clear_pending(port);
    // Anything else still pending and unmasked gets its selector bit and the upcall flag
    // back, as the hypervisor would have set them.
    for w in 0..64 {
        // SAFETY: shared_info is mapped; atomic reads of the pending and mask words.
        let (pending, mask) = unsafe {
            (
                AtomicU64::from_ptr(&raw mut (*shared()).evtchn_pending[w]).load(Ordering::SeqCst),
                AtomicU64::from_ptr(&raw mut (*shared()).evtchn_mask[w]).load(Ordering::SeqCst),
            )
        };
        if pending & !mask != 0 {
            pending_sel().fetch_or(1 << w, Ordering::SeqCst);
            upcall_pending_byte().store(1, Ordering::SeqCst);
        }
    }
}

/// Upcalls taken.
static UPCALLS: AtomicU64 = AtomicU64::new(0);
/// Upcalls that found no pending, unmasked port.
static SPURIOUS: AtomicU64 = AtomicU64::new(0);
/// Per port: how many times the handler consumed it, and the system time of the last.
static HITS: [AtomicU64; COUNTED_PORTS] = [const { AtomicU64::new(0) }; COUNTED_PORTS];
static HIT_TIME: [AtomicU64; COUNTED_PORTS] = [const { AtomicU64::new(0) }; COUNTED_PORTS];
/// Ports at or above [`COUNTED_PORTS`] that were consumed.
static OTHER_PORTS: AtomicU64 = AtomicU64::new(0);
/// The `rip` of the last upcall frame.
static LAST_RIP: AtomicU64 = AtomicU64::new(0);

/// What was wrong with an upcall's entry state, as bits of [`ENTRY_ERRORS`].
const ERR_MASK_NOT_SET: u32 = 1 << 0;
const ERR_SAVED_MASK: u32 = 1 << 1;
const ERR_SAVED_IF: u32 = 1 << 2;
const ERR_CS: u32 = 1 << 3;
static ENTRY_ERRORS: AtomicU32 = AtomicU32::new(0);
/// The first bad entry: the mask in `vcpu_info`, the frame's `cs` and `rflags`.
static BAD_MASK: AtomicU64 = AtomicU64::new(0);
static BAD_CS: AtomicU64 = AtomicU64::new(0);
static BAD_RFLAGS: AtomicU64 = AtomicU64::new(0);

const RFLAGS_IF: u64 = 1 << 9;

/// Installs the counting upcall handler (the trap table and callbacks come from
/// [`traps::install`]).
pub fn install() {
    traps::set_event_handler(on_upcall);
}

fn on_upcall(frame: &mut traps::ExceptionFrame) {
    UPCALLS.fetch_add(1, Ordering::SeqCst);
    LAST_RIP.store(frame.rip, Ordering::SeqCst);
    // The entry state: events masked now; the frame says they were unmasked (an upcall
    // is only delivered then), both in the saved mask (cs bits 32-39) and the saved IF;
    // the kernel interrupted itself (RPL 0).
    let mask = upcall_mask();
    let mut errors = 0;
    if mask != 1 {
        errors |= ERR_MASK_NOT_SET;
    }
    if frame.saved_upcall_mask() != 0 {
        errors |= ERR_SAVED_MASK;
    }
    if frame.rflags & RFLAGS_IF == 0 {
        errors |= ERR_SAVED_IF;
    }
    if frame.from_user() {
        errors |= ERR_CS;
    }
    if errors != 0 && ENTRY_ERRORS.fetch_or(errors, Ordering::SeqCst) == 0 {
        BAD_MASK.store(u64::from(mask), Ordering::SeqCst);
        BAD_CS.store(frame.cs, Ordering::SeqCst);
        BAD_RFLAGS.store(frame.rflags, Ordering::SeqCst);
    }

    upcall_pending_byte().store(0, Ordering::SeqCst);
    let now = time::now();
    let mut found = false;
    loop {
        let sel = pending_sel().swap(0, Ordering::SeqCst);
        if sel == 0 {
            break;
        }
        for word in (0..64u32).filter(|w| sel & (1 << w) != 0) {
            let (pending, _) = pending_word(word * 64);
            let (masked, _) = mask_word(word * 64);
            let ready = pending.load(Ordering::SeqCst) & !masked.load(Ordering::SeqCst);
            for bit in (0..64u32).filter(|b| ready & (1 << b) != 0) {
                let port = word * 64 + bit;
                // Consume it: only a port whose bit this handler cleared counts.
                if pending.fetch_and(!(1 << bit), Ordering::SeqCst) & (1 << bit) == 0 {
                    continue;
                }
                found = true;
                match HITS.get(port as usize) {
                    Some(hits) => {
                        hits.fetch_add(1, Ordering::SeqCst);
                        HIT_TIME[port as usize].store(now, Ordering::SeqCst);
                    }
                    None => {
                        OTHER_PORTS.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
    }
    if !found {
        SPURIOUS.fetch_add(1, Ordering::SeqCst);
    }
}

/// Upcalls taken so far.
pub fn upcalls() -> u64 {
    UPCALLS.load(Ordering::SeqCst)
}

/// Upcalls that found nothing to consume.
pub fn spurious() -> u64 {
    SPURIOUS.load(Ordering::SeqCst)
}

/// How many times the handler consumed `port` (0 for ports it does not count).
pub fn hits(port: u32) -> u64 {
    HITS.get(port as usize)
        .map_or(0, |h| h.load(Ordering::SeqCst))
}

/// System time of the last upcall that consumed `port`.
pub fn hit_time(port: u32) -> u64 {
    HIT_TIME
        .get(port as usize)
        .map_or(0, |h| h.load(Ordering::SeqCst))
}

/// Ports above the counted ones that were consumed.
pub fn other_ports() -> u64 {
    OTHER_PORTS.load(Ordering::SeqCst)
}

/// The `rip` of the last upcall frame.
pub fn last_rip() -> u64 {
    LAST_RIP.load(Ordering::SeqCst)
}

/// The first upcall whose entry state was wrong, described.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadEntry {
    pub mask_not_set: bool,
    pub saved_mask_not_zero: bool,
    pub saved_if_clear: bool,
    pub from_user: bool,
    /// `vcpu_info.evtchn_upcall_mask` in the handler.
    pub mask: u8,
    pub cs: u64,
    pub rflags: u64,
}

impl core::fmt::Display for BadEntry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "upcall entry state: evtchn_upcall_mask {} (expected 1), frame cs {:#x} (saved \
             mask in bits 32-39 expected 0, RPL 0), rflags {:#x} (IF expected set)",
            self.mask, self.cs, self.rflags
        )
    }
}

/// Whether every upcall so far entered with events masked and a frame that says they were
/// unmasked, in kernel mode.
pub fn check_entries() -> Result<(), BadEntry> {
    let errors = ENTRY_ERRORS.load(Ordering::SeqCst);
    if errors == 0 {
        return Ok(());
    }
    Err(BadEntry {
        mask_not_set: errors & ERR_MASK_NOT_SET != 0,
        saved_mask_not_zero: errors & ERR_SAVED_MASK != 0,
        saved_if_clear: errors & ERR_SAVED_IF != 0,
        from_user: errors & ERR_CS != 0,
        mask: BAD_MASK.load(Ordering::SeqCst) as u8,
        cs: BAD_CS.load(Ordering::SeqCst),
        rflags: BAD_RFLAGS.load(Ordering::SeqCst),
    })
}
