//! `events`: timers and event upcalls through 2-level event channels, time and the wall
//! clock. The kernel maps shared_info, installs its trap table and event callback, stops
//! the periodic timer every vCPU starts with, binds VIRQ_TIMER, and then:
//!
//! * a single-shot timer 30 ms ahead (`VCPUOP_set_singleshot_timer`, absolute system time
//!   from the pvclock) and `SCHEDOP_block` (which unmasks events) → exactly one upcall for
//!   the timer port, not before the deadline; ≥ 30 ms and < 2 s elapsed; events unmasked
//!   afterwards (the handler's `iret` restores the mask from the saved IF);
//! * system time stays monotonic over many reads while the hypervisor republishes it, and
//!   `vcpu_time_info.version` is never odd when the kernel looks;
//! * the wall clock (`wc_sec`/`wc_nsec` + system time), printed as
//!   `pv-test events: wallclock YYYY-MM-DD HH:MM:SS` for the QEMU test to compare with the
//!   host's clock;
//! * a 10 ms periodic timer → at least 5 upcalls in 100 ms of running with events
//!   unmasked, at most one per period; then blocking with it armed until a single-shot
//!   timer 100 ms ahead: on Ferrovisor its ticks wake the vCPU (≥ 5 upcalls, at most one
//!   per period); Xen 4.17 stops the periodic timer while the vCPU is blocked, so there
//!   only the single-shot timer wakes it;
//! * `set_timer_op`: 0 cancels (no upcall), a deadline fires;
//! * `EVTCHNOP_status` of the VIRQ port: `EVTCHNSTAT_virq`, virq 0, vCPU 0;
//! * an IPI port bound to vCPU 0: `EVTCHNOP_send` → an upcall for it on the way back; while
//!   masked it stays pending with no upcall until `EVTCHNOP_unmask` delivers it; after
//!   `EVTCHNOP_close`, send is `-EINVAL`;
//! * binding VIRQ_TIMER again is `-EEXIST`; `EVTCHNOP_init_control` (the FIFO ABI) is
//!   `-ENOSYS` on Ferrovisor (Xen 4.17 offers it: there a frame the guest does not have is
//!   `-EINVAL`);
//! * `VCPUOP_register_runstate_memory_area`: the area holds state 0 (running) and a
//!   plausible `state_entry_time`;
//! * `VCPUOP_register_vcpu_info` moves vcpu_info to offset 64 of a page of its own (named by
//!   machine frame, from the p2m list): the event mask moves with it, and time and upcalls
//!   keep working through the new place.
//!
//! Every upcall must enter with events masked, from a frame whose saved mask and IF say
//! they were unmasked.
#![cfg_attr(target_os = "none", no_std, no_main)]

use ferrovisor_abi::{
    errno::XenErrno,
    xen::{
        event_channel::{EvtchnInitControl, EvtchnOp, EVTCHNSTAT_IPI, EVTCHNSTAT_VIRQ},
        vcpu::{VcpuRunstateInfo, XEN_RUNSTATE_UPDATE},
        xen::StartInfo,
    },
};
use pvrt::{
    events::{self, VIRQ_TIMER},
    region, shared_info,
    time::{self, Utc, NS_PER_MS, NS_PER_SEC},
    traps,
};

pvrt::test_kernel!(name: "events", main: test_main);

const EINVAL: i64 = XenErrno::Einval.to_hypercall_ret();
const EEXIST: i64 = XenErrno::Eexist.to_hypercall_ret();
const ENOSYS: i64 = XenErrno::Enosys.to_hypercall_ret();

fn test_main(si: &StartInfo) -> Result<(), &'static str> {
    match shared_info::map(si) {
        Ok(va) => pvrt::println!("pv-test events: shared_info mapped at {va:#x}"),
        Err(ret) => pvrt::fail!("update_va_mapping of shared_info returned {ret}"),
    }
    if let Err(e) = traps::install() {
        pvrt::fail!("installing the trap table and callbacks: {e}");
    }
    events::install();
    pvrt::ensure!(
        events::upcall_mask() == 1,
        "evtchn_upcall_mask is {} at the start of day, expected 1 (events masked)",
        events::upcall_mask()
    );

    let ret = time::stop_periodic_timer();
    pvrt::ensure!(ret == 0, "VCPUOP_stop_periodic_timer returned {ret}");
    let port = match events::bind_virq(VIRQ_TIMER, 0) {
        Ok(p) => p,
        Err(ret) => pvrt::fail!("EVTCHNOP_bind_virq(VIRQ_TIMER, vcpu 0) returned {ret}"),
    };
    pvrt::println!("pv-test events: VIRQ_TIMER bound to port {port}");
    pvrt::ensure!(
        port != 0,
        "EVTCHNOP_bind_virq gave port 0 (never a valid port)"
    );
    pvrt::ensure!(
        (port as usize) < events::COUNTED_PORTS,
        "VIRQ_TIMER port {port} is beyond the first {} ports",
        events::COUNTED_PORTS
    );
    events::set_masked(port, false);
    if events::is_pending(port) {
        pvrt::println!("pv-test events: port {port} was pending right after binding; discarded");
    }
    events::discard(port);

    single_shot(port)?;
    monotonic_time()?;
    wallclock()?;
    periodic(port)?;
    timer_op(port)?;
    virq_status(port)?;
    ipi()?;
    refusals()?;
    runstate(si, port)?;
    move_vcpu_info(si, port)?;

    if let Err(bad) = events::check_entries() {
        pvrt::fail!("{bad}");
    }
    pvrt::println!(
        "pv-test events: {} upcalls, {} spurious, all entered with events masked",
        events::upcalls(),
        events::spurious()
    );
    Ok(())
}

/// Blocks until an upcall consumed `port` more than `before` times (at most 100 blocks).
fn block_for(port: u32, before: u64) -> Result<u64, &'static str> {
    for _ in 0..100 {
        let ret = pvrt::sched_block();
        pvrt::ensure!(ret == 0, "SCHEDOP_block returned {ret}");
        if events::hits(port) > before {
            return Ok(events::hits(port));
        }
    }
    pvrt::fail!("100 SCHEDOP_blocks returned without an upcall for port {port}");
}

fn single_shot(port: u32) -> Result<(), &'static str> {
    let upcalls = events::upcalls();
    let t0 = time::now();
    let deadline = t0 + 30 * NS_PER_MS;
    let ret = time::set_singleshot_timer(deadline, 0);
    pvrt::ensure!(
        ret == 0,
        "VCPUOP_set_singleshot_timer({deadline}) returned {ret}"
    );
    let ret = pvrt::sched_block();
    let t1 = time::now();
    let hits = events::hits(port);
    let mask = events::upcall_mask();
    pvrt::println!(
        "pv-test events: single-shot: block returned {ret} after {} us, {hits} upcall(s) for \
         port {port} ({} in all) at +{} us, upcall mask now {mask}, last upcall rip {:#x}",
        (t1 - t0) / 1000,
        events::upcalls() - upcalls,
        events::hit_time(port).saturating_sub(t0) / 1000,
        events::last_rip()
    );
    pvrt::ensure!(ret == 0, "SCHEDOP_block returned {ret}");
    pvrt::ensure!(
        hits == 1,
        "the event callback consumed the timer port {hits} times after one single-shot \
         timer and SCHEDOP_block (expected exactly once)"
    );
    pvrt::ensure!(
        events::hit_time(port) >= deadline,
        "the timer upcall came {} ns before the deadline",
        deadline - events::hit_time(port)
    );
    pvrt::ensure!(
        t1 - t0 >= 30 * NS_PER_MS,
        "SCHEDOP_block returned after {} ns, before the 30 ms timer",
        t1 - t0
    );
    pvrt::ensure!(
        t1 - t0 < 2 * NS_PER_SEC,
        "SCHEDOP_block returned after {} ms for a 30 ms timer",
        (t1 - t0) / NS_PER_MS
    );
    pvrt::ensure!(
        mask == 0,
        "evtchn_upcall_mask is {mask} after SCHEDOP_block and the upcall's iret, expected 0 \
         (block unmasks; the iret restores the saved IF)"
    );
    events::mask_events();
    Ok(())
}

/// What [`Watch::until`] saw of the time: reads, republishes, retries, steps backwards and
/// odd versions.
struct Watch {
    first: time::Reading,
    last: time::Reading,
    reads: u64,
    versions: u64,
    retries: u64,
    backwards: u64,
    worst: u64,
    odd: u64,
    odd_value: u32,
}

impl Watch {
    fn start() -> Watch {
        let first = time::read();
        Watch {
            first,
            last: first,
            reads: 0,
            versions: 0,
            retries: 0,
            backwards: 0,
            worst: 0,
            odd: 0,
            odd_value: 0,
        }
    }

    /// Reads the time over and over until `done` says so.
    fn until(&mut self, done: impl Fn(&Watch) -> bool) -> Result<(), &'static str> {
        while !done(self) {
            let Some(vi) = shared_info::vcpu_info() else {
                pvrt::fail!("shared_info is not mapped");
            };
            // SAFETY: the mapped vcpu_info; a volatile read of the version the hypervisor
            // updates.
            let v = unsafe { core::ptr::read_volatile(&raw const (*vi).time.version) };
            if v & 1 != 0 {
                self.odd += 1;
                self.odd_value = v;
            }
            let r = time::read();
            self.reads += 1;
            self.retries += u64::from(r.retries);
            if r.version != self.last.version {
                self.versions += 1;
            }
            if r.now < self.last.now {
                self.backwards += 1;
                self.worst = self.worst.max(self.last.now - r.now);
            }
            self.last = r;
        }
        Ok(())
    }

    fn check(&self) -> Result<(), &'static str> {
        pvrt::ensure!(
            self.odd == 0,
            "vcpu_time_info.version was odd ({}) in {} of {} reads: the guest saw an update in \
             progress",
            self.odd_value,
            self.odd,
            self.reads
        );
        pvrt::ensure!(
            self.backwards == 0,
            "system time went backwards {} times in {} reads (by up to {} ns)",
            self.backwards,
            self.reads,
            self.worst
        );
        pvrt::ensure!(self.last.mul != 0, "vcpu_time_info.tsc_to_system_mul is 0");
        Ok(())
    }
}

/// Reads the time for 60 ms while a 10 ms periodic timer makes the hypervisor republish
/// it: never backwards, the version never odd.
fn monotonic_time() -> Result<(), &'static str> {
    let ret = time::set_periodic_timer(10 * NS_PER_MS);
    pvrt::ensure!(ret == 0, "VCPUOP_set_periodic_timer(10 ms) returned {ret}");
    events::unmask_events();
    let mut w = Watch::start();
    let end = w.first.now + 60 * NS_PER_MS;
    w.until(|w| w.last.now >= end)?;
    let ret = time::stop_periodic_timer();
    events::mask_events();
    pvrt::println!(
        "pv-test events: time: {} reads over 60 ms, {} updates seen, {} retries, {} backwards \
         (worst {} ns), version {} (even), mul {:#x} shift {}, system time {} ns",
        w.reads,
        w.versions,
        w.retries,
        w.backwards,
        w.worst,
        w.last.version,
        w.last.mul,
        w.last.shift,
        w.last.now
    );
    pvrt::ensure!(ret == 0, "VCPUOP_stop_periodic_timer returned {ret}");
    w.check()?;
    // Ferrovisor republishes the time record with every timer event; Xen 4.17 only when
    // its per-CPU time record changes, about once a second (the ABI asks nothing of the
    // rate: readers follow the version). There the kernel reads on until it sees one, for
    // at most 3 s, so that the checks span a republish.
    if !pvrt::on_ferrovisor() && w.versions == 0 {
        pvrt::println!(
            "pv-test events: Xen's rule: vcpu_time_info not republished within 60 ms (Xen updates it about once a second)"
        );
        let end = w.first.now + 3 * NS_PER_SEC;
        w.until(|w| w.versions > 0 || w.last.now >= end)?;
        pvrt::println!(
            "pv-test events: time: republished after {} ms: {} reads, {} updates seen, {} \
             retries, {} backwards (worst {} ns), version {} (even)",
            (w.last.now - w.first.now) / NS_PER_MS,
            w.reads,
            w.versions,
            w.retries,
            w.backwards,
            w.worst,
            w.last.version
        );
        w.check()?;
        pvrt::ensure!(w.versions >= 1, "vcpu_time_info was not republished in 3 s");
    } else {
        pvrt::ensure!(
            w.versions >= 1,
            "vcpu_time_info was not republished in 60 ms of a 10 ms periodic timer"
        );
    }
    Ok(())
}

fn wallclock() -> Result<(), &'static str> {
    let wc = time::wallclock();
    let now = time::now();
    let unix_ns = wc.unix_ns_at(now);
    let utc = Utc::from_unix(unix_ns / NS_PER_SEC);
    pvrt::println!(
        "pv-test events: wc_version {}, wc_sec {}, wc_nsec {}, system time {} ns",
        wc.version,
        wc.sec,
        wc.nsec,
        now
    );
    pvrt::println!("pv-test events: wallclock {utc}");
    pvrt::ensure!(
        wc.version != 0,
        "shared_info.wc_version is 0: the wall clock was never published"
    );
    pvrt::ensure!(
        u64::from(wc.nsec) < NS_PER_SEC,
        "shared_info.wc_nsec is {} (>= 1 s)",
        wc.nsec
    );
    Ok(())
}

/// The periodic timer while the vCPU runs, then while it blocks.
///
/// Xen 4.17 runs a vCPU's periodic timer only while the vCPU is scheduled: switching away
/// from it (a `SCHEDOP_block` that switches to the idle vCPU) stops the timer
/// (`sched_context_switch`: `stop_timer(&vprev->periodic_timer)`), and switching back to
/// it sends the overdue tick at once (`vcpu_periodic_timer_work`, which also sends one
/// when `VCPUOP_set_periodic_timer` finds a period gone since the last tick). So the
/// periodic timer does not wake a blocked vCPU there: a guest blocks with the single-shot
/// timer armed (Linux stops the periodic timer altogether), and so does this kernel.
fn periodic(port: u32) -> Result<(), &'static str> {
    periodic_running(port)?;
    periodic_blocked(port)
}

/// A 10 ms periodic timer while the kernel spins with events unmasked: at least 5 upcalls
/// in 100 ms, at most one per period.
fn periodic_running(port: u32) -> Result<(), &'static str> {
    events::mask_events();
    events::discard(port);
    let before = events::hits(port);
    let ret = time::set_periodic_timer(10 * NS_PER_MS);
    pvrt::ensure!(ret == 0, "VCPUOP_set_periodic_timer(10 ms) returned {ret}");
    let start = time::now();
    events::unmask_events();
    time::spin_until(start + 100 * NS_PER_MS);
    // An emulator the host starves delivers fewer ticks than the periods that passed:
    // then wait (bounded) for the five the check needs; the rate bound below still holds.
    while events::hits(port) - before < 5 && time::now() < start + 2 * time::NS_PER_SEC {
        core::hint::spin_loop();
    }
    events::mask_events();
    let ret = time::stop_periodic_timer();
    let elapsed = time::now() - start;
    let n = events::hits(port) - before;
    events::discard(port);
    pvrt::println!(
        "pv-test events: periodic 10 ms: {n} upcalls for port {port} in {} ms running",
        elapsed / NS_PER_MS
    );
    pvrt::ensure!(ret == 0, "VCPUOP_stop_periodic_timer returned {ret}");
    pvrt::ensure!(
        n >= 5,
        "a 10 ms periodic timer gave {n} upcalls in {} ms of running with events unmasked \
         (expected >= 5)",
        elapsed / NS_PER_MS
    );
    // One more than the periods: Xen ticks at once when the timer is set.
    let most = elapsed / (10 * NS_PER_MS) + 2;
    pvrt::ensure!(
        n <= most,
        "a 10 ms periodic timer gave {n} upcalls in {} ms (more than one per period)",
        elapsed / NS_PER_MS
    );
    Ok(())
}

/// A 10 ms periodic timer while the kernel blocks until a single-shot timer 100 ms ahead
/// (which bounds the wait on any hypervisor).
fn periodic_blocked(port: u32) -> Result<(), &'static str> {
    events::mask_events();
    let ret = time::set_periodic_timer(10 * NS_PER_MS);
    pvrt::ensure!(ret == 0, "VCPUOP_set_periodic_timer(10 ms) returned {ret}");
    // Xen's tick on setting the timer, if any, is not what this part looks at.
    events::discard(port);
    let before = events::hits(port);
    let start = time::now();
    let end = start + 100 * NS_PER_MS;
    let ret = time::set_singleshot_timer(end, 0);
    pvrt::ensure!(
        ret == 0,
        "VCPUOP_set_singleshot_timer(+100 ms) returned {ret}"
    );
    let (mut blocks, mut first) = (0u64, None);
    // On Ferrovisor the periodic ticks wake the blocked vCPU: if a starved emulator
    // delivered fewer than five by the single-shot deadline, go on blocking (bounded) for
    // them; the periodic timer keeps waking it.
    let more = |now: u64| {
        pvrt::on_ferrovisor()
            && events::hits(port) - before < 5
            && now < start + 2 * time::NS_PER_SEC
    };
    while (time::now() < end || more(time::now())) && blocks < 1000 {
        let ret = pvrt::sched_block();
        pvrt::ensure!(ret == 0, "SCHEDOP_block returned {ret}");
        blocks += 1;
        if first.is_none() && events::hits(port) > before {
            first = Some(events::hit_time(port));
        }
    }
    let elapsed = time::now() - start;
    events::mask_events();
    let ret = time::stop_periodic_timer();
    let ret2 = time::stop_singleshot_timer();
    let n = events::hits(port) - before;
    events::discard(port);
    let first_us = first.map_or(0, |t| t.saturating_sub(start) / 1000);
    pvrt::println!(
        "pv-test events: periodic 10 ms while blocked until a single-shot timer at +100 ms: \
         {n} upcalls for port {port} in {} ms ({blocks} blocks), the first at +{first_us} us",
        elapsed / NS_PER_MS
    );
    pvrt::ensure!(ret == 0, "VCPUOP_stop_periodic_timer returned {ret}");
    pvrt::ensure!(ret2 == 0, "VCPUOP_stop_singleshot_timer returned {ret2}");
    pvrt::ensure!(
        n >= 1,
        "no timer upcall in {} ms of blocking with a periodic and a single-shot timer ({blocks} \
         blocks)",
        elapsed / NS_PER_MS
    );
    if pvrt::on_ferrovisor() {
        // Ferrovisor keeps the periodic timer running while the vCPU is blocked, so its
        // ticks wake it (Xen 4.17 does not: see `periodic`).
        pvrt::ensure!(
            n >= 5,
            "a 10 ms periodic timer gave {n} upcalls in {} ms of blocking (expected >= 5)",
            elapsed / NS_PER_MS
        );
        let most = elapsed / (10 * NS_PER_MS) + 2;
        pvrt::ensure!(
            n <= most,
            "a 10 ms periodic timer gave {n} upcalls in {} ms of blocking (more than one per \
             period)",
            elapsed / NS_PER_MS
        );
    } else {
        // Xen stops the periodic timer while the vCPU is blocked: only the single-shot
        // timer wakes it, and the overdue tick Xen sends on switching back coincides.
        pvrt::println!(
            "pv-test events: Xen's rule: the periodic timer does not run while the vCPU is \
             blocked (Xen stops it when switching away); the single-shot timer woke it"
        );
        let first = first.unwrap_or(0);
        pvrt::ensure!(
            first >= end,
            "a timer upcall {} us before the single-shot deadline while blocked: Xen's periodic \
             timer does not wake a blocked vCPU",
            (end - first) / 1000
        );
        pvrt::ensure!(
            n <= 2,
            "{n} timer upcalls while blocked for one single-shot timer (Xen's periodic timer \
             is stopped while the vCPU is blocked)"
        );
    }
    Ok(())
}

fn timer_op(port: u32) -> Result<(), &'static str> {
    // A cancelled timer never fires.
    let before = events::hits(port);
    let ret = time::set_timer_op(time::now() + 10 * NS_PER_MS);
    pvrt::ensure!(ret == 0, "set_timer_op(now + 10 ms) returned {ret}");
    let ret = time::set_timer_op(0);
    pvrt::ensure!(ret == 0, "set_timer_op(0) returned {ret}");
    events::unmask_events();
    time::spin_until(time::now() + 40 * NS_PER_MS);
    events::mask_events();
    let after = events::hits(port);
    let pending = events::is_pending(port);
    pvrt::println!(
        "pv-test events: set_timer_op(0) cancelled: {} upcall(s), pending {pending} after 40 ms",
        after - before
    );
    pvrt::ensure!(
        after == before && !pending,
        "set_timer_op(0) did not cancel the timer: {} upcall(s), port pending {pending}",
        after - before
    );

    let t0 = time::now();
    let ret = time::set_timer_op(t0 + 20 * NS_PER_MS);
    pvrt::ensure!(ret == 0, "set_timer_op(now + 20 ms) returned {ret}");
    let hits = block_for(port, before)?;
    let elapsed = time::now() - t0;
    events::mask_events();
    pvrt::println!(
        "pv-test events: set_timer_op(now + 20 ms): upcall after {} us",
        elapsed / 1000
    );
    pvrt::ensure!(
        hits == before + 1,
        "set_timer_op: {} upcalls for one deadline",
        hits - before
    );
    pvrt::ensure!(
        elapsed >= 20 * NS_PER_MS,
        "the set_timer_op timer fired after {elapsed} ns, before 20 ms"
    );
    Ok(())
}

fn virq_status(port: u32) -> Result<(), &'static str> {
    let st = match events::status(port) {
        Ok(st) => st,
        Err(ret) => pvrt::fail!("EVTCHNOP_status of the VIRQ_TIMER port {port} returned {ret}"),
    };
    pvrt::println!(
        "pv-test events: EVTCHNOP_status port {port}: status {}, vcpu {}, virq {}",
        st.status,
        st.vcpu,
        st.u_irq()
    );
    pvrt::ensure!(
        st.status == EVTCHNSTAT_VIRQ && st.u_irq() == VIRQ_TIMER && st.vcpu == 0,
        "EVTCHNOP_status of port {port}: status {} vcpu {} virq {}, expected EVTCHNSTAT_virq \
         ({EVTCHNSTAT_VIRQ}), vcpu 0, virq 0",
        st.status,
        st.vcpu,
        st.u_irq()
    );
    Ok(())
}

/// An IPI port to vCPU 0 itself: send, masked send, unmask, close.
fn ipi() -> Result<(), &'static str> {
    let ipi = match events::bind_ipi(0) {
        Ok(p) => p,
        Err(ret) => pvrt::fail!("EVTCHNOP_bind_ipi(vcpu 0) returned {ret}"),
    };
    pvrt::ensure!(
        ipi != 0 && (ipi as usize) < events::COUNTED_PORTS,
        "EVTCHNOP_bind_ipi gave port {ipi}"
    );
    events::set_masked(ipi, false);
    match events::status(ipi) {
        Ok(st) => pvrt::ensure!(
            st.status == EVTCHNSTAT_IPI && st.vcpu == 0,
            "EVTCHNOP_status of IPI port {ipi}: status {} vcpu {}, expected EVTCHNSTAT_ipi \
             ({EVTCHNSTAT_IPI}), vcpu 0",
            st.status,
            st.vcpu
        ),
        Err(ret) => pvrt::fail!("EVTCHNOP_status of IPI port {ipi} returned {ret}"),
    }

    events::unmask_events();
    let before = events::hits(ipi);
    let ret = events::send(ipi);
    let hits = events::hits(ipi);
    pvrt::println!(
        "pv-test events: IPI port {ipi}: EVTCHNOP_send returned {ret}, {} upcall(s)",
        hits - before
    );
    pvrt::ensure!(ret == 0, "EVTCHNOP_send to IPI port {ipi} returned {ret}");
    pvrt::ensure!(
        hits == before + 1,
        "EVTCHNOP_send to IPI port {ipi} with events unmasked: {} upcalls on the way back \
         (expected 1)",
        hits - before
    );
    pvrt::ensure!(
        !events::is_pending(ipi),
        "IPI port {ipi} still pending after its upcall"
    );

    // Masked: the event waits in evtchn_pending, with no upcall, until EVTCHNOP_unmask.
    events::set_masked(ipi, true);
    let ret = events::send(ipi);
    let (hits, pending, upcall) = (
        events::hits(ipi),
        events::is_pending(ipi),
        events::upcall_pending(),
    );
    pvrt::println!(
        "pv-test events: masked IPI port {ipi}: send returned {ret}, {} upcall(s), pending \
         {pending}, evtchn_upcall_pending {upcall}",
        hits - before - 1
    );
    pvrt::ensure!(
        ret == 0,
        "EVTCHNOP_send to masked port {ipi} returned {ret}"
    );
    pvrt::ensure!(
        hits == before + 1 && pending && upcall == 0,
        "send to masked port {ipi}: {} upcall(s), pending {pending}, evtchn_upcall_pending \
         {upcall} (expected no upcall, the port pending, no upcall flagged)",
        hits - before - 1
    );
    let ret = events::unmask_op(ipi);
    let hits = events::hits(ipi);
    pvrt::println!(
        "pv-test events: EVTCHNOP_unmask port {ipi} returned {ret}: {} upcall(s), masked {}",
        hits - before - 1,
        events::is_masked(ipi)
    );
    pvrt::ensure!(ret == 0, "EVTCHNOP_unmask of port {ipi} returned {ret}");
    pvrt::ensure!(
        !events::is_masked(ipi),
        "port {ipi} still masked after EVTCHNOP_unmask"
    );
    pvrt::ensure!(
        hits == before + 2 && !events::is_pending(ipi),
        "EVTCHNOP_unmask of pending port {ipi}: {} upcall(s), pending {} (expected the \
         waiting event delivered)",
        hits - before - 1,
        events::is_pending(ipi)
    );

    let ret = events::close(ipi);
    pvrt::ensure!(ret == 0, "EVTCHNOP_close of port {ipi} returned {ret}");
    let ret = events::send(ipi);
    pvrt::println!("pv-test events: send to closed port {ipi}: {ret}");
    pvrt::ensure!(
        ret == EINVAL,
        "EVTCHNOP_send to closed port {ipi} returned {ret}, expected -EINVAL ({EINVAL})"
    );
    pvrt::ensure!(
        events::hits(ipi) == before + 2,
        "an upcall for closed port {ipi}"
    );
    events::mask_events();
    Ok(())
}

fn refusals() -> Result<(), &'static str> {
    let again = events::bind_virq(VIRQ_TIMER, 0);
    pvrt::println!("pv-test events: VIRQ_TIMER bound again: {again:?}");
    pvrt::ensure!(
        again == Err(EEXIST),
        "binding VIRQ_TIMER a second time gave {again:?}, expected Err(-EEXIST = {EEXIST})"
    );
    // A frame number no guest has: were the FIFO ABI offered (Xen 4.17 offers it), this
    // would fail harmlessly instead of switching the kernel's event ABI. Ferrovisor offers
    // only the 2-level ABI (Linux falls back to it on -ENOSYS).
    let mut init = EvtchnInitControl {
        control_gfn: u64::MAX,
        offset: 0,
        vcpu: 0,
        link_bits: 0,
        _pad: [0; 7],
    };
    // SAFETY: the hypervisor reads the structure on this stack and writes `link_bits`.
    let ret = unsafe { events::event_channel_op(EvtchnOp::InitControl, (&raw mut init).cast()) };
    pvrt::println!("pv-test events: EVTCHNOP_init_control: {ret}");
    if pvrt::on_ferrovisor() {
        pvrt::ensure!(
            ret == ENOSYS,
            "EVTCHNOP_init_control returned {ret}, expected -ENOSYS ({ENOSYS}): only the \
             2-level ABI is offered"
        );
    } else {
        // Xen 4.17 offers the FIFO ABI and refuses the control block's frame.
        pvrt::println!(
            "pv-test events: Xen's rule: the FIFO ABI is offered; init_control with a frame \
             the guest does not have is -EINVAL"
        );
        pvrt::ensure!(
            ret == EINVAL,
            "EVTCHNOP_init_control with control_gfn {:#x} returned {ret}, expected -EINVAL \
             ({EINVAL}) from Xen's FIFO ABI",
            u64::MAX
        );
    }
    Ok(())
}

fn read_runstate(va: u64) -> VcpuRunstateInfo {
    // SAFETY: `va` is the registered runstate area in a scratch page, mapped for the
    // kernel's life; the hypervisor writes it asynchronously, hence the volatile read.
    unsafe { core::ptr::read_volatile(va as *const VcpuRunstateInfo) }
}

fn runstate(si: &StartInfo, port: u32) -> Result<(), &'static str> {
    let Some(page) = region::alloc_scratch(si) else {
        pvrt::fail!("no scratch page for the runstate area");
    };
    // SAFETY: a scratch page of the bootstrap region, mapped writable, used by nothing
    // else; all ones so that what the hypervisor writes shows.
    unsafe { core::ptr::write_bytes(page.va as *mut u8, 0xff, 48) };
    // SAFETY: the 48 bytes at `page.va` stay the hypervisor's for the kernel's life.
    let ret = unsafe { time::register_runstate_area(page.va) };
    let now = time::now();
    let rs = read_runstate(page.va);
    let entry = rs.state_entry_time & !XEN_RUNSTATE_UPDATE;
    pvrt::println!(
        "pv-test events: runstate area at {:#x}: register returned {ret}, state {}, \
         state_entry_time {entry} (now {now}), time {:?}",
        page.va,
        rs.state,
        rs.time
    );
    pvrt::ensure!(
        ret == 0,
        "VCPUOP_register_runstate_memory_area returned {ret}"
    );
    pvrt::ensure!(
        rs.state == 0,
        "the runstate area holds state {} after registration, expected 0 (running)",
        rs.state
    );
    pvrt::ensure!(
        entry > 0 && entry <= now,
        "runstate state_entry_time {entry} is not a past system time (now {now})"
    );
    pvrt::ensure!(
        rs.time[0] <= now,
        "runstate time[running] {} is beyond system time {now}",
        rs.time[0]
    );

    // After blocking: what the area says now (Xen updates it at every switch).
    let before = events::hits(port);
    let t0 = time::now();
    let ret = time::set_singleshot_timer(t0 + 20 * NS_PER_MS, 0);
    pvrt::ensure!(ret == 0, "VCPUOP_set_singleshot_timer returned {ret}");
    block_for(port, before)?;
    events::mask_events();
    let rs = read_runstate(page.va);
    pvrt::println!(
        "pv-test events: runstate after blocking 20 ms (from {t0}): state {}, \
         state_entry_time {}, time {:?}",
        rs.state,
        rs.state_entry_time & !XEN_RUNSTATE_UPDATE,
        rs.time
    );
    pvrt::ensure!(
        rs.state == 0,
        "the runstate area holds state {} while the vCPU runs, expected 0 (running)",
        rs.state
    );
    Ok(())
}

fn time_version(vi: *const ferrovisor_abi::xen::xen::VcpuInfo) -> u32 {
    // SAFETY: `vi` is a mapped vcpu_info (shared_info's slot or the registered one).
    unsafe { core::ptr::read_volatile(&raw const (*vi).time.version) }
}

fn move_vcpu_info(si: &StartInfo, port: u32) -> Result<(), &'static str> {
    events::mask_events();
    let Some(old) = shared_info::vcpu_info() else {
        pvrt::fail!("shared_info is not mapped");
    };
    let Some(page) = region::alloc_scratch(si) else {
        pvrt::fail!("no scratch page for vcpu_info");
    };
    let before_move = time::now();
    // SAFETY: a scratch page used by nothing else, mapped writable for the kernel's life;
    // `page.mfn` is its machine frame from the p2m list.
    let ret = unsafe { shared_info::register_vcpu_info(page.va, page.mfn, 64) };
    pvrt::println!(
        "pv-test events: VCPUOP_register_vcpu_info(mfn {:#x}, offset 64) returned {ret}",
        page.mfn
    );
    pvrt::ensure!(ret == 0, "VCPUOP_register_vcpu_info returned {ret}");
    let Some(new) = shared_info::vcpu_info() else {
        pvrt::fail!("shared_info is not mapped");
    };
    pvrt::ensure!(
        new as u64 == page.va + 64,
        "the runtime did not follow vcpu_info to its new place"
    );
    let mask = events::upcall_mask();
    let moved = time::read();
    let old_version = time_version(old);
    pvrt::println!(
        "pv-test events: new vcpu_info at {:#x}: upcall mask {mask}, time version {}, system \
         time {} (before the move {before_move})",
        new as u64,
        moved.version,
        moved.now
    );
    pvrt::ensure!(
        mask == 1,
        "the moved vcpu_info has evtchn_upcall_mask {mask}; events were masked (1)"
    );
    pvrt::ensure!(
        moved.version != 0 && moved.mul != 0,
        "the moved vcpu_info has no time (version {}, mul {})",
        moved.version,
        moved.mul
    );
    pvrt::ensure!(
        moved.now >= before_move,
        "system time from the moved vcpu_info ({}) is before the time read just before the \
         move ({before_move})",
        moved.now
    );

    // A timer upcall through the new place, and time republished there.
    let before = events::hits(port);
    let t0 = time::now();
    let ret = time::set_singleshot_timer(t0 + 20 * NS_PER_MS, 0);
    pvrt::ensure!(ret == 0, "VCPUOP_set_singleshot_timer returned {ret}");
    let hits = block_for(port, before)?;
    let elapsed = time::now() - t0;
    events::mask_events();
    let after = time::read();
    pvrt::println!(
        "pv-test events: through the moved vcpu_info: timer upcall after {} us, time version \
         {} -> {}, old slot's version {old_version} -> {}",
        elapsed / 1000,
        moved.version,
        after.version,
        time_version(old)
    );
    pvrt::ensure!(
        hits == before + 1,
        "{} timer upcalls through the moved vcpu_info (expected 1)",
        hits - before
    );
    pvrt::ensure!(
        elapsed >= 20 * NS_PER_MS,
        "the 20 ms timer fired after {elapsed} ns"
    );
    if pvrt::on_ferrovisor() || after.version != moved.version {
        pvrt::ensure!(
            after.version != moved.version,
            "the hypervisor did not republish time in the moved vcpu_info when the timer fired"
        );
    } else {
        // Xen 4.17 republishes only when its per-CPU time record changes, about once a
        // second (see `monotonic_time`): read on until it does, for at most 3 s.
        pvrt::println!(
            "pv-test events: Xen's rule: time not republished with the timer event; waiting \
             for Xen's next update"
        );
        let mut w = Watch::start();
        let end = w.first.now + 3 * NS_PER_SEC;
        w.until(|w| w.versions > 0 || w.last.now >= end)?;
        pvrt::println!(
            "pv-test events: through the moved vcpu_info: time version {} -> {} after {} ms \
             more, old slot's version {old_version} -> {}",
            moved.version,
            w.last.version,
            (w.last.now - w.first.now) / NS_PER_MS,
            time_version(old)
        );
        w.check()?;
        pvrt::ensure!(
            w.versions >= 1,
            "the hypervisor did not republish time in the moved vcpu_info in 3 s"
        );
    }

    // An IPI through the new place.
    let ipi = match events::bind_ipi(0) {
        Ok(p) => p,
        Err(ret) => pvrt::fail!("EVTCHNOP_bind_ipi returned {ret}"),
    };
    events::set_masked(ipi, false);
    events::unmask_events();
    let before = events::hits(ipi);
    let ret = events::send(ipi);
    let hits = events::hits(ipi);
    events::mask_events();
    pvrt::ensure!(ret == 0, "EVTCHNOP_send returned {ret}");
    pvrt::ensure!(
        hits == before + 1,
        "EVTCHNOP_send with the moved vcpu_info: {} upcalls (expected 1)",
        hits - before
    );
    let _ = events::close(ipi);

    // vcpu.h: "This may be called only once per vcpu"; Xen refuses a second time.
    let Some(page2) = region::alloc_scratch(si) else {
        pvrt::fail!("no scratch page");
    };
    // SAFETY: as above; should it succeed, the runtime follows the move.
    let again = unsafe { shared_info::register_vcpu_info(page2.va, page2.mfn, 0) };
    pvrt::println!("pv-test events: a second VCPUOP_register_vcpu_info returned {again}");
    Ok(())
}
