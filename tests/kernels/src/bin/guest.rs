//! `guest`: the unprivileged domain of the inter-domain test. The `control` kernel (dom0)
//! builds it from its own initrd module and talks to it through xenstore, an event
//! channel and a grant; this kernel does the guest's half and checks what an ordinary
//! domain must be refused. It reports to dom0 through `data/done` in its xenstore home
//! (`ok`, or the first failure) and prints its own verdict line like every test kernel.
#![cfg_attr(target_os = "none", no_std, no_main)]

use ferrovisor_abi::xen::xen::StartInfo;

pvrt::test_kernel!(name: "guest", main: test_main);

/// What the guest puts in the page it grants, and what dom0 copies back.
const GREETING: &[u8] = b"hello from the guest";
const REPLY: &[u8] = b"reply from dom0";
/// Where in the granted page dom0 writes its reply.
const REPLY_OFFSET: usize = 2048;
/// The grant reference the guest uses (0..8 are reserved by convention).
const GREF: u32 = 8;
/// A line for the console ring, which dom0 reads back with `ConsoleRead`.
const CONSOLE_LINE: &[u8] = b"guest console: hello through the ring\n";

fn test_main(si: &StartInfo) -> Result<(), &'static str> {
    match pvrt::cmdline(si) {
        Some(c) if c.contains("pair=a") => return pair::offer(si),
        Some(c) if c.contains("pair=b") => return pair::take(si),
        Some(c) if c == pvrt::contract::FLOOD_CMDLINE => return flood(),
        _ => {}
    }
    let mut store = pvrt::xenstore::Store::open(si).ok_or("no xenstore ring in start_info")?;
    let result = checks::run(si, &mut store);
    let done: &[u8] = match result {
        Ok(()) => b"ok",
        Err(e) => e.as_bytes(),
    };
    store
        .write("data/done", done)
        .map_err(|_| "cannot write data/done")?;
    result?;
    // The toolstack's half: a line typed on its console, then a shutdown request.
    checks::echo_console_input(si)?;
    checks::wait_for_shutdown_request(&mut store)
}

mod checks {
    use ferrovisor_abi::{
        domctl::{DomctlCmd, SysctlCmd},
        errno::XenErrno,
        xen::{
            event_channel::{EvtchnBindInterdomain, EvtchnOp},
            grant_table::GrantStatus,
            memory::{MemoryOp, XenMemoryReservation},
            xen::StartInfo,
            GuestHandle,
        },
    };
    use pvrt::{events, region, xenstore::Store};

    use super::*;

    pub fn run(si: &StartInfo, store: &mut Store) -> Result<(), &'static str> {
        pvrt::shared_info::map(si).map_err(|_| "cannot map shared_info")?;
        refused_control(si)?;
        refused_xenstore(store)?;
        let port = bind_dom0_port(store)?;
        let page = offer_grant(si)?;
        store
            .write("data/gref", b"8")
            .map_err(|_| "cannot write data/gref")?;
        store
            .write("data/ready", b"1")
            .map_err(|_| "cannot write data/ready")?;
        pvrt::println!("pv-test guest: granted ref {GREF}, waiting for dom0 on port {port}");
        wait_for(port)?;
        // SAFETY: the scratch page is mapped writable for the kernel's lifetime.
        let got = unsafe {
            core::slice::from_raw_parts((page.va as *const u8).add(REPLY_OFFSET), REPLY.len())
        };
        pvrt::ensure!(got == REPLY, "dom0's grant copy did not arrive: {got:?}");
        pvrt::println!("pv-test guest: dom0's reply arrived through the grant");
        console_ring(si)?;
        Ok(())
    }

    /// Domain control belongs to dom0.
    fn refused_control(si: &StartInfo) -> Result<(), &'static str> {
        let eperm = XenErrno::Eperm.to_hypercall_ret();
        let r = pvrt::control::domctl0(DomctlCmd::PauseDomain, 0);
        pvrt::ensure!(
            r == eperm,
            "domctl from a domU returned {r}, expected -EPERM"
        );
        let r = pvrt::control::sysctl(SysctlCmd::PhysInfo, &[0u8; 40]).err();
        pvrt::ensure!(r == Some(eperm), "sysctl from a domU returned {r:?}");
        // Populating another domain's memory.
        let mut pfn = 0u64;
        let mut res = XenMemoryReservation {
            extent_start: GuestHandle(&raw mut pfn as u64),
            nr_extents: 1,
            extent_order: 0,
            mem_flags: 0,
            domid: 0,
            _cpad0: [0; 6],
        };
        // SAFETY: the reservation and its one-entry list are on this stack.
        let r = unsafe { pvrt::memory_op(MemoryOp::PopulatePhysmap, (&raw mut res).cast()) };
        pvrt::ensure!(r == eperm, "populate_physmap of dom0 returned {r}");
        // Mapping a grant nobody gave it (dom0 grants nothing), at an address whose
        // entry is free, so that only the grant itself can be the reason.
        let at = region::alloc_scratch(si).ok_or("no scratch page")?;
        // SAFETY: the scratch page is the kernel's and unused.
        let r = unsafe { pvrt::update_va_mapping(at.va, 0, 0) };
        pvrt::ensure!(r == 0, "unmapping a scratch page returned {r}");
        let (r, map) = pvrt::grant::map(at.va, 3, 0, true);
        pvrt::ensure!(
            r == 0
                && map.status != GrantStatus::Okay.raw()
                && map.status != GrantStatus::BadVirtAddr.raw(),
            "mapping an ungranted reference: rc {r}, status {}",
            map.status
        );
        pvrt::println!(
            "pv-test guest: domctl, sysctl, foreign populate and an ungranted map refused \
             (map status {})",
            map.status
        );
        Ok(())
    }

    /// Xenstore's permissions and quotas hold for an unprivileged domain.
    fn refused_xenstore(store: &mut Store) -> Result<(), &'static str> {
        let mut buf = [0u8; 64];
        let r = store.read("/local/domain/0/name", &mut buf);
        pvrt::ensure!(
            matches!(r, Err(e) if e.name() == "EACCES" || e.name() == "ENOENT"),
            "reading dom0's home: {r:?}"
        );
        let r = store.write("/local/domain/0/intruder", b"x");
        pvrt::ensure!(
            matches!(r, Err(e) if e.name() == "EACCES"),
            "writing into dom0's home: {r:?}"
        );
        // A value over the node-size quota.
        let big = [b'x'; 3000];
        let r = store.write("data/big", &big);
        let big_err = match r {
            Err(e) => e,
            Ok(()) => pvrt::fail!("a 3000-byte value was accepted"),
        };
        // Watches until the quota refuses one.
        let mut n = 0;
        let watch_err = loop {
            let mut token = [0u8; 20];
            let t = pvrt::decimal(n, &mut token);
            match store.watch("data/w", t) {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
            if n > 1000 {
                pvrt::fail!("more than 1000 watches accepted");
            }
        };
        // Drop them all again (and the initial events they fired).
        store
            .reset_watches()
            .map_err(|_| "XS_RESET_WATCHES failed")?;
        while store.next_event(1).is_some() {}
        pvrt::println!(
            "pv-test guest: xenstore refused dom0's home, a 3000-byte value ({}) and watch \
             {} ({})",
            big_err.name(),
            n + 1,
            watch_err.name()
        );
        Ok(())
    }

    /// Binds the port dom0 left unbound for it (named in `data/dom0-port`); a second
    /// bind of the same port, and a bind of a port that does not wait for it, fail.
    fn bind_dom0_port(store: &mut Store) -> Result<u32, &'static str> {
        let mut buf = [0u8; 16];
        let n = store
            .read("data/dom0-port", &mut buf)
            .map_err(|_| "no data/dom0-port from dom0")?;
        let remote = pvrt::parse_decimal(&buf[..n])
            .and_then(|v| u32::try_from(v).ok())
            .ok_or("data/dom0-port is not a number")?;
        let bind = |remote_port: u32| {
            let mut b = EvtchnBindInterdomain {
                remote_dom: 0,
                _cpad0: 0,
                remote_port,
                local_port: 0,
            };
            // SAFETY: the hypervisor reads and writes the structure on this stack.
            let r =
                unsafe { events::event_channel_op(EvtchnOp::BindInterdomain, (&raw mut b).cast()) };
            if r == 0 {
                Ok(b.local_port)
            } else {
                Err(r)
            }
        };
        let local = bind(remote).map_err(|_| "binding dom0's unbound port failed")?;
        let einval = XenErrno::Einval.to_hypercall_ret();
        pvrt::ensure!(
            bind(remote) == Err(einval),
            "binding dom0's port twice was not -EINVAL"
        );
        // dom0's store port is bound to the hypervisor, not waiting for this domain.
        pvrt::ensure!(
            bind(1) == Err(einval),
            "binding another of dom0's ports was not -EINVAL"
        );
        events::set_masked(local, true);
        // As in Xen, a fresh interdomain port starts pending (the peer may have signalled
        // before the bind).
        pvrt::ensure!(
            events::is_pending(local),
            "the new interdomain port is not pending"
        );
        events::clear_pending(local);
        pvrt::println!("pv-test guest: bound dom0's port {remote} as local port {local}");
        Ok(local)
    }

    /// Sets up a one-frame grant table and grants dom0 read-write access to a scratch
    /// page holding the greeting.
    fn offer_grant(si: &StartInfo) -> Result<region::ScratchPage, &'static str> {
        let table = pvrt::grant::GrantTable::setup(si)?;
        let page = region::alloc_scratch(si).ok_or("no scratch page to grant")?;
        // SAFETY: the scratch page is mapped writable and used by nobody else.
        unsafe {
            core::ptr::copy_nonoverlapping(GREETING.as_ptr(), page.va as *mut u8, GREETING.len())
        };
        table.grant(GREF, 0, &page, false);
        Ok(page)
    }

    /// Waits (yielding) until `port` is pending.
    fn wait_for(port: u32) -> Result<(), &'static str> {
        for _ in 0..200_000 {
            if events::is_pending(port) {
                events::clear_pending(port);
                return Ok(());
            }
            pvrt::sched_yield();
        }
        Err("dom0 never signalled the interdomain port")
    }

    /// Writes a line into the console ring and signals the console port.
    fn console_ring(si: &StartInfo) -> Result<(), &'static str> {
        console_out(si, CONSOLE_LINE)
    }

    /// Waits for a line of console input (from dom0's `ConsoleWrite`) and echoes it.
    pub fn echo_console_input(si: &StartInfo) -> Result<(), &'static str> {
        use ferrovisor_abi::xen::console::{
            XENCONS_IN_CONS_OFFSET, XENCONS_IN_OFFSET, XENCONS_IN_PROD_OFFSET, XENCONS_IN_SIZE,
        };
        let va = console_page(si)?;
        let mut line = [0u8; 64];
        let mut len = 0;
        for _ in 0..200_000 {
            // SAFETY: the console page is mapped for the kernel's lifetime; the indexes
            // are aligned words the backend writes.
            let (cons, prod) = unsafe {
                (
                    ((va + XENCONS_IN_CONS_OFFSET as u64) as *const u32).read_volatile(),
                    ((va + XENCONS_IN_PROD_OFFSET as u64) as *const u32).read_volatile(),
                )
            };
            core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
            let mut c = cons;
            let mut ended = false;
            while c != prod && !ended {
                let at = va + (XENCONS_IN_OFFSET + c as usize % XENCONS_IN_SIZE) as u64;
                // SAFETY: inside the input ring of the mapped page.
                let b = unsafe { (at as *const u8).read_volatile() };
                c = c.wrapping_add(1);
                if b == b'\n' {
                    ended = true;
                } else if len < line.len() {
                    line[len] = b;
                    len += 1;
                }
            }
            if c != cons {
                // SAFETY: as above; the consumer index is the guest's to write.
                unsafe { ((va + XENCONS_IN_CONS_OFFSET as u64) as *mut u32).write_volatile(c) };
                events::send(si.console_domu_evtchn());
            }
            if ended {
                let mut out = [0u8; 96];
                let prefix = b"guest console: got ";
                out[..prefix.len()].copy_from_slice(prefix);
                out[prefix.len()..prefix.len() + len].copy_from_slice(&line[..len]);
                out[prefix.len() + len] = b'\n';
                return console_out(si, &out[..prefix.len() + len + 1]);
            }
            pvrt::sched_yield();
        }
        Err("no console input arrived")
    }

    /// Waits for the toolstack's `control/shutdown` request.
    pub fn wait_for_shutdown_request(store: &mut Store) -> Result<(), &'static str> {
        store
            .watch("control/shutdown", "shutdown")
            .map_err(|_| "cannot watch control/shutdown")?;
        // The toolstack may take its time (the test harness types on dom0's console first).
        let deadline = pvrt::time::now() + 120 * pvrt::time::NS_PER_SEC;
        while pvrt::time::now() < deadline {
            let _ = store.next_event(2000);
            let mut buf = [0u8; 16];
            if let Ok(n) = store.read("control/shutdown", &mut buf) {
                pvrt::ensure!(
                    &buf[..n] == b"poweroff",
                    "control/shutdown asked for {:?}",
                    &buf[..n]
                );
                pvrt::println!("pv-test guest: the toolstack asked for a poweroff");
                return Ok(());
            }
        }
        Err("no shutdown request came")
    }

    fn console_page(si: &StartInfo) -> Result<u64, &'static str> {
        pvrt::xenstore::va_of_mfn(si, si.console_domu_mfn())
            .ok_or("the console ring is not in the bootstrap region")
    }

    /// Puts `bytes` into the console's output ring and signals the console port.
    fn console_out(si: &StartInfo, bytes: &[u8]) -> Result<(), &'static str> {
        use ferrovisor_abi::xen::console::{
            XENCONS_OUT_OFFSET, XENCONS_OUT_PROD_OFFSET, XENCONS_OUT_SIZE,
        };
        let va = console_page(si)?;
        // SAFETY: the console page is mapped for the kernel's lifetime; out_prod is an
        // aligned word the backend reads.
        unsafe {
            let prod_ptr = (va + XENCONS_OUT_PROD_OFFSET as u64) as *mut u32;
            let mut prod = prod_ptr.read_volatile();
            for &b in bytes {
                let at = va + (XENCONS_OUT_OFFSET + prod as usize % XENCONS_OUT_SIZE) as u64;
                (at as *mut u8).write_volatile(b);
                prod = prod.wrapping_add(1);
            }
            core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
            prod_ptr.write_volatile(prod);
        }
        let r = events::send(si.console_domu_evtchn());
        pvrt::ensure!(r == 0, "signalling the console port returned {r}");
        Ok(())
    }
}

/// A guest in an oops loop: its console floods the hypervisor's log, which keeps only a
/// burst and a trickle of it (dom0 checks, reading the log).
fn flood() -> Result<(), &'static str> {
    for i in 0..pvrt::contract::FLOOD_LINES {
        pvrt::println!("guest flood: line {i} of an oops loop");
    }
    Ok(())
}

/// Two guests working together with dom0 only as their toolstack: `pair=a` offers a
/// page and an event channel to the other domain named in its `data/peer`, publishing
/// them in its xenstore home readable by that domain only; `pair=b` finds them through a
/// watch, binds the port, maps the page writable, answers in it and signals. Each
/// reports `data/result` = `ok` and powers off.
mod pair {
    use ferrovisor_abi::xen::{xen::StartInfo, DomId};
    use pvrt::{events, region, xenstore::Store};

    const GREF: u32 = 9;
    const OFFER: &[u8] = b"page offered by pair a";
    const ANSWER: &[u8] = b"answer written by pair b";
    const ANSWER_OFFSET: usize = 1024;

    fn setup(si: &StartInfo) -> Result<(Store, DomId, DomId), &'static str> {
        pvrt::shared_info::map(si).map_err(|_| "cannot map shared_info")?;
        let mut store = Store::open(si).ok_or("no xenstore ring")?;
        let me = store.read_number("domid")? as DomId;
        let peer = store.read_number("data/peer")? as DomId;
        Ok((store, me, peer))
    }

    fn wait_for(port: u32) -> Result<(), &'static str> {
        let deadline = pvrt::time::now() + 60 * pvrt::time::NS_PER_SEC;
        while pvrt::time::now() < deadline {
            if events::is_pending(port) {
                events::clear_pending(port);
                return Ok(());
            }
            pvrt::sched_poll(port, pvrt::time::now() + 10 * pvrt::time::NS_PER_MS);
        }
        Err("the other guest never signalled")
    }

    pub fn offer(si: &StartInfo) -> Result<(), &'static str> {
        let (mut store, me, peer) = setup(si)?;
        let port = pvrt::control::alloc_unbound(peer)?;
        let table = pvrt::grant::GrantTable::setup(si)?;
        let page = region::alloc_scratch(si).ok_or("no scratch page")?;
        // SAFETY: the scratch page is mapped writable and used by nobody else.
        unsafe { core::ptr::copy_nonoverlapping(OFFER.as_ptr(), page.va as *mut u8, OFFER.len()) };
        table.grant(GREF, peer, &page, false);
        store.offer(me, peer, port, GREF)?;
        pvrt::println!("pv-test guest: pair a offers port {port} and grant {GREF} to d{peer}");
        wait_for(port)?;
        // SAFETY: the granted page stays mapped writable here.
        let got = unsafe {
            core::slice::from_raw_parts((page.va as *const u8).add(ANSWER_OFFSET), ANSWER.len())
        };
        pvrt::ensure!(got == ANSWER, "pair b's answer is not in the granted page");
        pvrt::println!("pv-test guest: pair a found d{peer}'s answer in its page");
        store
            .write("data/result", b"ok")
            .map_err(|_| "cannot write data/result")
    }

    pub fn take(si: &StartInfo) -> Result<(), &'static str> {
        let (mut store, _me, peer) = setup(si)?;
        let (remote, gref) = store.take_offer(peer)?;
        let mut b = ferrovisor_abi::xen::event_channel::EvtchnBindInterdomain {
            remote_dom: peer,
            _cpad0: 0,
            remote_port: remote,
            local_port: 0,
        };
        // SAFETY: the hypervisor reads and writes the structure on this stack.
        let r = unsafe {
            events::event_channel_op(
                ferrovisor_abi::xen::event_channel::EvtchnOp::BindInterdomain,
                (&raw mut b).cast(),
            )
        };
        pvrt::ensure!(r == 0, "binding the peer's port returned {r}");
        let at = region::alloc_scratch(si).ok_or("no scratch page")?;
        // SAFETY: the scratch page is the kernel's and unused; the grant goes there.
        let r = unsafe { pvrt::update_va_mapping(at.va, 0, 0) };
        pvrt::ensure!(r == 0, "unmapping a scratch page returned {r}");
        let (r, map) = pvrt::grant::map(at.va, gref, peer, false);
        pvrt::ensure!(
            r == 0 && map.status == 0,
            "mapping the peer's grant writable: rc {r}, status {}",
            map.status
        );
        // SAFETY: the peer's page is mapped writable at `at.va` until the unmap below.
        unsafe {
            let seen = core::slice::from_raw_parts(at.va as *const u8, OFFER.len());
            pvrt::ensure!(seen == OFFER, "the peer's page does not hold its offer");
            core::ptr::copy_nonoverlapping(
                ANSWER.as_ptr(),
                (at.va as *mut u8).add(ANSWER_OFFSET),
                ANSWER.len(),
            );
        }
        let (r, status) = pvrt::grant::unmap(at.va, map.handle);
        pvrt::ensure!(r == 0 && status == 0, "unmapping: rc {r}, status {status}");
        events::send(b.local_port);
        pvrt::println!("pv-test guest: pair b answered in d{peer}'s page and signalled");
        store
            .write("data/result", b"ok")
            .map_err(|_| "cannot write data/result")
    }
}
