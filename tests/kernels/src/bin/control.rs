//! `control`: dom0 of the inter-domain test. Builds a second domain from its own initrd
//! module (the `guest` test kernel) through Ferrovisor's control interface, then works
//! with it the way a toolstack and a backend do: xenstore keys and watches, an event
//! channel, a grant it maps and copies into, its console; pauses, watches it shut down,
//! destroys it and checks that every frame came back.
#![cfg_attr(target_os = "none", no_std, no_main)]

use ferrovisor_abi::xen::xen::StartInfo;

pvrt::test_kernel!(name: "control", main: test_main);

fn test_main(si: &StartInfo) -> Result<(), &'static str> {
    checks::run(si)
}

mod checks {
    use ferrovisor_abi::{
        domctl::{
            name_bytes, BuildPv, ConsoleIo, DomainInfo, Domctl, DomctlCmd, ListDomains, ReadLog,
            ShutdownRequest, SysctlCmd, VcpuContext, DOMINFO_BUILT, DOMINFO_CRASHED, DOMINFO_DYING,
            DOMINFO_PAUSED, DOMINFO_SHUTDOWN,
        },
        errno::XenErrno,
        xen::{
            arch_x86::{VcpuGuestContext, VGCF_IN_KERNEL},
            grant_table::GrantStatus,
            xen::{MmuUpdate, StartInfo, Virq, DOMID_SELF},
            DomId, GuestHandle,
        },
    };
    use pvrt::{
        control, events, region,
        xenstore::{DomainPath, Store},
    };
    use zerocopy::FromZeros;

    /// The guest's size: 8 MiB, room for its bootstrap region.
    const GUEST_PAGES: u64 = 2048;
    const GREETING: &[u8] = b"hello from the guest";
    const REPLY: &[u8] = b"reply from dom0";
    const REPLY_OFFSET: u16 = 2048;
    const GREF: u32 = 8;
    const CONSOLE_LINE: &str = "guest console: hello through the ring";

    pub fn run(si: &StartInfo) -> Result<(), &'static str> {
        pvrt::shared_info::map(si).map_err(|_| "cannot map shared_info")?;
        let mut store = Store::open(si).ok_or("dom0 has no xenstore ring")?;
        serial_input("type a line")?;
        interface_checks()?;
        let free_before = control::phys_info()?.free_pages;

        // A domain that is created and populated but never built goes away cleanly too.
        let scratch = control::create("scratch", 512).map_err(|_| "CreateDomain failed")?;
        control::populate(scratch, 512, &mut [])?;
        destroy(scratch)?;
        pvrt::ensure!(
            control::phys_info()?.free_pages == free_before,
            "destroying an unbuilt domain leaked frames"
        );

        let guest =
            control::create("guest1", GUEST_PAGES * 2).map_err(|_| "CreateDomain failed")?;
        pvrt::ensure!(
            control::create("guest1", 512) == Err(XenErrno::Eexist.to_hypercall_ret()),
            "a second domain named guest1 was not -EEXIST"
        );
        let mut mfns = [0u64; 1024];
        control::populate(guest, GUEST_PAGES, &mut mfns)?;
        let built = control::build_from_module(si, guest, b"pv-test=guest")?;
        let info = control::domain_info(guest)?;
        pvrt::ensure!(
            info.flags & (DOMINFO_BUILT | DOMINFO_PAUSED) == DOMINFO_BUILT | DOMINFO_PAUSED
                && info.tot_pages == GUEST_PAGES
                && name_bytes(&info.name) == b"guest1",
            "after BuildPv: flags {:#x}, {} pages",
            info.flags,
            info.tot_pages
        );
        pvrt::println!(
            "pv-test control: built d{guest}: entry {:#x}, store port {}, console port {}",
            built.entry,
            built.store_port,
            built.console_port
        );

        vcpu_context(guest, &built)?;

        // What the guest needs before it starts: an unbound port for it, named in its
        // xenstore home.
        let port = control::alloc_unbound(guest)?;
        let mut path = DomainPath::new();
        store
            .write(
                path.of(guest, "data/dom0-port"),
                pvrt::decimal(port.into(), &mut [0; 20]).as_bytes(),
            )
            .map_err(|_| "cannot write the guest's data/dom0-port")?;
        store
            .watch(path.of(guest, "data/ready"), "ready")
            .map_err(|_| "cannot watch data/ready")?;
        store
            .watch(path.of(guest, "data/done"), "done")
            .map_err(|_| "cannot watch data/done")?;

        // Start it; pausing stops it.
        unpause(guest)?;
        pvrt::ensure!(
            control::domctl0(DomctlCmd::PauseDomain, guest) == 0
                && control::domain_info(guest)?.flags & DOMINFO_PAUSED != 0,
            "pausing the guest"
        );
        unpause(guest)?;
        pvrt::ensure!(
            control::domain_info(guest)?.flags & DOMINFO_PAUSED == 0,
            "the guest still paused after unpause"
        );

        wait_for_key(&mut store, guest, "data/ready")?;
        let gref = read_u32(&mut store, path.of(guest, "data/gref"))?;
        pvrt::ensure!(
            gref == GREF,
            "the guest granted ref {gref}, expected {GREF}"
        );
        use_grant(si, guest)?;
        events::send(port);
        let done = wait_for_key(&mut store, guest, "data/done")?;
        pvrt::ensure!(
            done == *b"ok",
            "the guest reported a failure (its log has the reason)"
        );
        check_console(guest, CONSOLE_LINE)?;
        console_input(guest)?;
        // With the guest alive, the harness moves serial input around and back.
        serial_input("switch the serial input around, then type a line")?;
        // As in Xen, a domain that stops is announced to dom0: VIRQ_DOM_EXC, and
        // xenstore's @releaseDomain watch fires (the domain is still there).
        let dom_exc =
            events::bind_virq(Virq::DomExc.raw(), 0).map_err(|_| "cannot bind VIRQ_DOM_EXC")?;
        events::set_masked(dom_exc, true);
        events::clear_pending(dom_exc);
        store
            .watch("@releaseDomain", "stopped")
            .map_err(|_| "cannot watch @releaseDomain")?;
        let r = control::domctl(
            DomctlCmd::RequestShutdown,
            guest,
            &ShutdownRequest { reason: 0 },
        );
        pvrt::ensure!(r.is_ok(), "RequestShutdown failed");
        wait_for_shutdown(guest)?;
        pvrt::ensure!(
            events::is_pending(dom_exc),
            "no VIRQ_DOM_EXC after the guest shut down"
        );
        events::clear_pending(dom_exc);
        let mut released = false;
        for _ in 0..16 {
            match store.next_event(2000) {
                Some(ev) if ev.token() == "stopped" && ev.path() == "@releaseDomain" => {
                    released = true;
                    break;
                }
                Some(_) => {}
                None => break,
            }
        }
        pvrt::ensure!(
            released,
            "no @releaseDomain event after the guest shut down"
        );
        pvrt::println!(
            "pv-test control: the guest's shutdown raised VIRQ_DOM_EXC and @releaseDomain"
        );
        check_lists(guest)?;
        check_dmesg()?;
        // A foreign mapping of the guest's start_info page, as a toolstack reads a guest.
        let si_pfn = (built.start_info - pvrt::contract::VIRT_BASE) / region::PAGE_SIZE;
        let si_mfn = *mfns
            .get(si_pfn as usize)
            .ok_or("start_info beyond the kept pfns")?;
        let mapped = map_foreign(si, guest, si_mfn)?;

        destroy(guest)?;
        // Its mapped frame keeps it dying until the mapping goes.
        let info = control::domain_info(guest)?;
        pvrt::ensure!(
            info.flags & DOMINFO_DYING != 0 && info.tot_pages == 1,
            "the destroyed guest with a frame still mapped: flags {:#x}, {} pages",
            info.flags,
            info.tot_pages
        );
        unmap_foreign(&mapped)?;
        pvrt::ensure!(
            control::domctl0(DomctlCmd::GetDomainInfo, guest) == XenErrno::Esrch.to_hypercall_ret(),
            "the destroyed guest is still there"
        );
        let r = store.read(path.of(guest, ""), &mut [0u8; 64]);
        pvrt::ensure!(
            matches!(r, Err(e) if e.name() == "ENOENT"),
            "the guest's xenstore home outlived it: {r:?}"
        );
        let free_after = control::phys_info()?.free_pages;
        pvrt::ensure!(
            free_after == free_before,
            "free frames {free_after} after destroy, {free_before} before"
        );
        pvrt::println!("pv-test control: guest destroyed, all {free_after} free frames back");
        pair(si, &mut store, free_before)?;
        flood(si)
    }

    /// A guest floods its console (booted with `guest_console_mirror=on`, so its lines go
    /// to the hypervisor's log): the log keeps at most the burst plus the steady rate
    /// over the flood, accounts for every other line in `... N lines suppressed`, and
    /// still holds the hypervisor's boot messages and those after the flood.
    fn flood(si: &StartInfo) -> Result<(), &'static str> {
        use pvrt::contract::{FLOOD_CMDLINE, FLOOD_LINES, GUEST_LOG_BURST, GUEST_LOG_PER_SEC};
        let id = control::create("flood", GUEST_PAGES * 2).map_err(|_| "CreateDomain failed")?;
        control::populate(id, GUEST_PAGES, &mut [])?;
        control::build_from_module(si, id, FLOOD_CMDLINE.as_bytes())?;
        let start = pvrt::time::now();
        unpause(id)?;
        wait_for_shutdown(id)?;
        let ms = (pvrt::time::now() - start) / 1_000_000;
        destroy(id)?;
        let log = scan_log(id)?;
        pvrt::ensure!(
            log.boot_banner,
            "the log ring lost the hypervisor's boot messages"
        );
        pvrt::ensure!(
            log.destroyed,
            "the log ring has no 'destroyed \"flood\"' after the flood"
        );
        pvrt::ensure!(log.reports > 0, "the log never says lines were suppressed");
        // Every line it wrote (and its PASS line) either is in the log or was counted.
        pvrt::ensure!(
            log.kept + log.suppressed == u64::from(FLOOD_LINES) + 1,
            "d{id}: {} lines kept and {} suppressed of {}",
            log.kept,
            log.suppressed,
            FLOOD_LINES + 1
        );
        // The burst, the rate over the time it ran, and one for rounding.
        let allowed = u64::from(GUEST_LOG_BURST) + u64::from(GUEST_LOG_PER_SEC) * ms / 1000 + 1;
        pvrt::ensure!(
            log.kept <= allowed,
            "d{id}: the log kept {} lines in {ms} ms, more than {allowed}",
            log.kept
        );
        pvrt::println!(
            "pv-test control: flood: d{id} wrote {} lines in {ms} ms; the log kept {}, said {} \
             were suppressed ({} reports), and kept the boot and later messages",
            FLOOD_LINES + 1,
            log.kept,
            log.suppressed,
            log.reports
        );
        Ok(())
    }

    /// What the log ring says about domain `dom` and the hypervisor.
    #[derive(Default)]
    struct LogScan {
        boot_banner: bool,
        destroyed: bool,
        kept: u64,
        suppressed: u64,
        reports: u64,
    }

    impl LogScan {
        fn line(&mut self, line: &[u8], prefix: &[u8]) {
            let text = core::str::from_utf8(line).unwrap_or("");
            self.boot_banner |= text.contains("] command line: ");
            self.destroyed |= text.contains("destroyed \"flood\"");
            let Ok(prefix) = core::str::from_utf8(prefix) else {
                return;
            };
            if text.starts_with(prefix) {
                self.kept += 1;
            } else if let Some(at) = text.find(prefix) {
                let rest = &text[at + prefix.len()..];
                if let Some(n) = rest
                    .strip_prefix("... ")
                    .and_then(|r| r.strip_suffix(" lines suppressed"))
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    self.suppressed += n;
                    self.reports += 1;
                }
            }
        }
    }

    /// Reads the whole log ring (`ReadLog` from offset 0, which must not have been
    /// overwritten) line by line.
    fn scan_log(dom: DomId) -> Result<LogScan, &'static str> {
        let mut prefix_buf = [0u8; 12];
        let mut num = [0u8; 20];
        let digits = pvrt::decimal(dom.into(), &mut num).as_bytes();
        let plen = 3 + digits.len();
        prefix_buf[..2].copy_from_slice(b"(d");
        prefix_buf[2..2 + digits.len()].copy_from_slice(digits);
        prefix_buf[plen - 1..plen + 1].copy_from_slice(b") ");
        let prefix = &prefix_buf[..plen + 1];
        let mut scan = LogScan::default();
        let mut buf = [0u8; 2048];
        let mut line = [0u8; 1200];
        let mut len = 0;
        let mut offset = 0;
        loop {
            let r = ReadLog {
                offset,
                buffer: GuestHandle(buf.as_mut_ptr() as u64),
                len: buf.len() as u32,
                done: 0,
                missed: 0,
            };
            let r = control::sysctl(SysctlCmd::ReadLog, &r).map_err(|_| "ReadLog failed")?;
            pvrt::ensure!(r.missed == 0, "the log ring overwrote {} bytes", r.missed);
            let chunk = &buf[..r.done as usize];
            for &b in chunk {
                if b == b'\n' {
                    scan.line(&line[..len], prefix);
                    len = 0;
                } else if len < line.len() {
                    line[len] = b;
                    len += 1;
                }
            }
            offset = r.offset;
            if chunk.is_empty() {
                return Ok(scan);
            }
        }
    }

    /// Two guests built from the same module cooperate by themselves (`pair=a` offers,
    /// `pair=b` takes): dom0 only introduces them to each other and cleans up.
    fn pair(si: &StartInfo, store: &mut Store, free_before: u64) -> Result<(), &'static str> {
        let mut ids = [0 as DomId; 2];
        for (i, (name, cmdline)) in [("pair-a", b"pair=a"), ("pair-b", b"pair=b")]
            .into_iter()
            .enumerate()
        {
            ids[i] = control::create(name, GUEST_PAGES * 2).map_err(|_| "CreateDomain failed")?;
            control::populate(ids[i], GUEST_PAGES, &mut [])?;
            control::build_from_module(si, ids[i], cmdline)?;
        }
        let mut path = DomainPath::new();
        for (me, peer) in [(ids[0], ids[1]), (ids[1], ids[0])] {
            // What a toolstack writes for every domain, and whom it should talk to.
            store
                .write_number(path.of(me, "domid"), me.into())
                .map_err(|_| "cannot write domid")?;
            store
                .write_number(path.of(me, "data/peer"), peer.into())
                .map_err(|_| "cannot write data/peer")?;
            store
                .watch(path.of(me, "data/result"), "result")
                .map_err(|_| "cannot watch data/result")?;
        }
        for &id in &ids {
            unpause(id)?;
        }
        for &id in &ids {
            let r = wait_for_key(store, id, "data/result")?;
            pvrt::ensure!(r == *b"ok", "a pair guest reported a failure");
        }
        for &id in &ids {
            wait_for_shutdown(id)?;
            destroy(id)?;
        }
        let free_after = control::phys_info()?.free_pages;
        pvrt::ensure!(
            free_after == free_before,
            "free frames {free_after} after the pair, {free_before} before"
        );
        pvrt::println!(
            "pv-test control: d{} and d{} cooperated through xenstore, an event channel and a \
             grant, and were destroyed with every frame back",
            ids[0],
            ids[1]
        );
        Ok(())
    }

    /// A line typed on the serial line reaches dom0's console (`console_io` read); the
    /// test harness types it once it sees the prompt.
    fn serial_input(prompt: &str) -> Result<(), &'static str> {
        pvrt::println!("pv-test control: {prompt}");
        let mut line = [0u8; 64];
        let mut len = 0;
        let deadline = pvrt::time::now() + 120 * pvrt::time::NS_PER_SEC;
        while pvrt::time::now() < deadline {
            let mut buf = [0u8; 16];
            let n = pvrt::console_read(&mut buf);
            pvrt::ensure!(n >= 0, "console_io read returned {n}");
            for &b in &buf[..n as usize] {
                if b == b'\r' || b == b'\n' {
                    let text = core::str::from_utf8(&line[..len]).unwrap_or("?");
                    pvrt::println!("pv-test control: console input '{text}'");
                    return Ok(());
                }
                if len < line.len() {
                    line[len] = b;
                    len += 1;
                }
            }
            // Input is polled on the hypervisor's tick: wait for the next one or two.
            pvrt::time::spin_until(pvrt::time::now() + 20 * pvrt::time::NS_PER_MS);
        }
        Err("no console input arrived")
    }

    /// The interface refuses a stale version and unknown commands.
    fn interface_checks() -> Result<(), &'static str> {
        let mut req = Domctl::new(DomctlCmd::GetDomainInfo, 0, &[0u8; 0]);
        req.interface_version = 0xdead;
        let r = control::raw_domctl(&mut req);
        pvrt::ensure!(
            r == XenErrno::Eacces.to_hypercall_ret(),
            "a stale interface version returned {r}"
        );
        let mut req = Domctl::new(DomctlCmd::GetDomainInfo, 0, &[0u8; 0]);
        req.cmd = 999;
        let r = control::raw_domctl(&mut req);
        pvrt::ensure!(
            r == XenErrno::Enosys.to_hypercall_ret(),
            "an unknown domctl returned {r}"
        );
        pvrt::ensure!(
            control::domctl0(DomctlCmd::DestroyDomain, 0) == XenErrno::Einval.to_hypercall_ret(),
            "dom0 destroying itself was not refused"
        );
        let info = control::domain_info(0)?;
        pvrt::ensure!(
            name_bytes(&info.name) == b"Domain-0",
            "dom0 is not named Domain-0"
        );
        Ok(())
    }

    fn destroy(dom: DomId) -> Result<(), &'static str> {
        match control::domctl0(DomctlCmd::DestroyDomain, dom) {
            0 => Ok(()),
            _ => Err("DestroyDomain failed"),
        }
    }

    fn unpause(dom: DomId) -> Result<(), &'static str> {
        match control::domctl0(DomctlCmd::UnpauseDomain, dom) {
            0 => Ok(()),
            _ => Err("UnpauseDomain failed"),
        }
    }

    /// Maps the guest's grant read-only, reads the greeting, copies the reply into it and
    /// unmaps it; a writable map of a reference it did not grant fails.
    fn use_grant(si: &StartInfo, dom: DomId) -> Result<(), &'static str> {
        let at = region::alloc_scratch(si).ok_or("no scratch page")?;
        // The grant goes where the scratch page was: unmap it first.
        // SAFETY: the scratch page is the kernel's and unused.
        let r = unsafe { pvrt::update_va_mapping(at.va, 0, 0) };
        pvrt::ensure!(r == 0, "unmapping a scratch page returned {r}");
        let (r, map) = pvrt::grant::map(at.va, GREF, dom, true);
        pvrt::ensure!(
            r == 0 && map.status == GrantStatus::Okay.raw(),
            "mapping the guest's grant: rc {r}, status {}",
            map.status
        );
        // SAFETY: the grant is mapped read-only at `at.va` until the unmap below.
        let seen = unsafe { core::slice::from_raw_parts(at.va as *const u8, GREETING.len()) };
        pvrt::ensure!(seen == GREETING, "the granted page holds {seen:?}");
        let (r, bad) = pvrt::grant::map(at.va + 4096 * 2, GREF + 1, dom, false);
        pvrt::ensure!(
            r == 0 && bad.status != GrantStatus::Okay.raw(),
            "an ungranted reference was mapped"
        );
        let (r, status) = pvrt::grant::unmap(at.va, map.handle);
        pvrt::ensure!(
            r == 0 && status == 0,
            "unmapping the grant: rc {r}, status {status}"
        );
        // A second unmap of the same handle is refused.
        let (r, status) = pvrt::grant::unmap(at.va, map.handle);
        pvrt::ensure!(
            r == 0 && status == GrantStatus::BadHandle.raw(),
            "a second unmap: status {status}"
        );

        // The reply goes in with a grant copy from one of dom0's own pages.
        let src = region::alloc_scratch(si).ok_or("no scratch page")?;
        // SAFETY: a scratch page of the kernel, mapped writable.
        unsafe { core::ptr::copy_nonoverlapping(REPLY.as_ptr(), src.va as *mut u8, REPLY.len()) };
        let (r, status) =
            pvrt::grant::copy_to(src.mfn, GREF, dom, REPLY_OFFSET, REPLY.len() as u16);
        pvrt::ensure!(r == 0 && status == 0, "grant copy: rc {r}, status {status}");
        pvrt::println!(
            "pv-test control: mapped the guest's grant (status {}), read its greeting, copied \
             the reply; a wrong reference got status {}",
            map.status,
            bad.status
        );
        Ok(())
    }

    /// The paused guest's vCPU 0 starts where `BuildPv` said; its context goes back
    /// unchanged; a running domain's context is not handed out.
    fn vcpu_context(dom: DomId, built: &BuildPv) -> Result<(), &'static str> {
        let mut ctx = VcpuGuestContext::new_zeroed();
        let req = VcpuContext {
            vcpu: 0,
            _pad: 0,
            ctx: GuestHandle(&raw mut ctx as u64),
        };
        control::domctl(DomctlCmd::GetVcpuContext, dom, &req)
            .map_err(|_| "GetVcpuContext failed")?;
        pvrt::ensure!(
            ctx.user_regs.rip == built.entry
                && ctx.user_regs.rsi == built.start_info
                && ctx.flags & VGCF_IN_KERNEL != 0
                && ctx.ctrlreg[3] != 0,
            "vCPU 0's context: rip {:#x}, rsi {:#x}, flags {:#x}, cr3 {:#x}",
            ctx.user_regs.rip,
            ctx.user_regs.rsi,
            ctx.flags,
            ctx.ctrlreg[3]
        );
        control::domctl(DomctlCmd::SetVcpuContext, dom, &req)
            .map_err(|_| "SetVcpuContext of its own context failed")?;
        pvrt::ensure!(
            control::domctl(DomctlCmd::GetVcpuContext, 0, &req).err()
                == Some(XenErrno::Ebusy.to_hypercall_ret()),
            "dom0's own running context was handed out"
        );
        pvrt::println!(
            "pv-test control: vCPU 0 of the paused guest starts at {:#x}, cr3 {:#x}",
            ctx.user_regs.rip,
            ctx.ctrlreg[3]
        );
        Ok(())
    }

    /// Maps machine frame `mfn` of `dom` read-only over a scratch page with `mmu_update`
    /// naming `dom` as the page owner, and checks it is the guest's `start_info`.
    fn map_foreign(si: &StartInfo, dom: DomId, mfn: u64) -> Result<(u64, u64), &'static str> {
        let at = region::alloc_scratch(si).ok_or("no scratch page")?;
        let tables = region::Tables::new(si);
        let l1e = tables
            .l1e_maddr(at.va)
            .ok_or("no L1 entry for a scratch page")?;
        let req = [MmuUpdate {
            ptr: l1e,
            val: (mfn * region::PAGE_SIZE) | region::PTE_RO,
        }];
        // SAFETY: changes only what the scratch page shows.
        let r = unsafe { pvrt::mmu_update(&req, None, dom) };
        pvrt::ensure!(
            r == 0,
            "a foreign mmu_update of d{dom}'s frame returned {r}"
        );
        // A domU may not do this: the same request naming dom0 as the owner of its own
        // frame is refused by the frame's owner check.
        // SAFETY: the scratch page now shows the guest's start_info, read-only.
        let magic = unsafe { core::slice::from_raw_parts(at.va as *const u8, 14) };
        pvrt::ensure!(
            magic == b"xen-3.0-x86_64",
            "the foreign mapping does not show the guest's start_info"
        );
        pvrt::println!("pv-test control: mapped the guest's start_info through mmu_update");
        Ok((l1e, at.va))
    }

    fn unmap_foreign(&(l1e, va): &(u64, u64)) -> Result<(), &'static str> {
        let req = [MmuUpdate { ptr: l1e, val: 0 }];
        // SAFETY: clears the scratch page's entry.
        let r = unsafe { pvrt::mmu_update(&req, None, DOMID_SELF) };
        pvrt::ensure!(r == 0, "clearing the foreign mapping returned {r}");
        // SAFETY: a TLB flush of one of the kernel's own addresses.
        let _ = unsafe { pvrt::update_va_mapping(va, 0, 0) };
        Ok(())
    }

    /// Waits for a watch event on `key` of `dom` and returns its (non-empty) value.
    fn wait_for_key(store: &mut Store, dom: DomId, key: &str) -> Result<[u8; 2], &'static str> {
        let mut path = DomainPath::new();
        for _ in 0..200 {
            if let Some(ev) = store.next_event(2000) {
                pvrt::println!(
                    "pv-test control: watch event {} ({})",
                    ev.path(),
                    ev.token()
                );
            }
            let mut buf = [0u8; 64];
            if let Ok(n) = store.read(path.of(dom, key), &mut buf) {
                if n > 0 {
                    let mut v = [0u8; 2];
                    let k = n.min(2);
                    v[..k].copy_from_slice(&buf[..k]);
                    return Ok(v);
                }
            }
            let info = control::domain_info(dom)?;
            pvrt::ensure!(
                info.flags & DOMINFO_CRASHED == 0,
                "the guest crashed (its log has the reason)"
            );
        }
        Err("the guest never wrote the key dom0 watches")
    }

    fn read_u32(store: &mut Store, path: &str) -> Result<u32, &'static str> {
        let mut buf = [0u8; 16];
        let n = store
            .read(path, &mut buf)
            .map_err(|_| "xenstore read failed")?;
        core::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("not a number")
    }

    fn wait_for_shutdown(dom: DomId) -> Result<(), &'static str> {
        for _ in 0..100_000 {
            let info = control::domain_info(dom)?;
            if info.flags & DOMINFO_SHUTDOWN != 0 {
                pvrt::ensure!(
                    info.flags & DOMINFO_CRASHED == 0 && info.shutdown_reason == 0,
                    "the guest stopped with flags {:#x}, reason {}",
                    info.flags,
                    info.shutdown_reason
                );
                pvrt::println!("pv-test control: the guest shut down (poweroff)");
                return Ok(());
            }
            pvrt::sched_yield();
        }
        Err("the guest never shut down")
    }

    /// Types a line on the guest's console; it echoes it back.
    fn console_input(dom: DomId) -> Result<(), &'static str> {
        let line = b"ping\n";
        let c = ConsoleIo {
            offset: 0,
            buffer: GuestHandle(line.as_ptr() as u64),
            len: line.len() as u32,
            done: 0,
            missed: 0,
        };
        let (c, _) =
            control::domctl(DomctlCmd::ConsoleWrite, dom, &c).map_err(|_| "ConsoleWrite failed")?;
        pvrt::ensure!(
            c.done == line.len() as u32,
            "ConsoleWrite took {} bytes",
            c.done
        );
        for _ in 0..2000 {
            if check_console(dom, "guest console: got ping").is_ok() {
                return Ok(());
            }
            pvrt::sched_yield();
        }
        Err("the guest never echoed the console input")
    }

    /// The guest's console ring output holds `expected`.
    fn check_console(dom: DomId, expected: &str) -> Result<(), &'static str> {
        let mut buf = [0u8; 4096];
        let c = ConsoleIo {
            offset: 0,
            buffer: GuestHandle(buf.as_mut_ptr() as u64),
            len: buf.len() as u32,
            done: 0,
            missed: 0,
        };
        let (c, _) =
            control::domctl(DomctlCmd::ConsoleRead, dom, &c).map_err(|_| "ConsoleRead failed")?;
        let text = core::str::from_utf8(&buf[..c.done as usize]).unwrap_or("");
        if !text.contains(expected) {
            return Err("the guest's console history lacks what it wrote to its ring");
        }
        pvrt::println!(
            "pv-test control: read {} bytes of the guest's console, with '{}'",
            c.done,
            expected
        );
        Ok(())
    }

    /// `ListDomains` shows dom0 and the guest.
    fn check_lists(guest: DomId) -> Result<(), &'static str> {
        let mut infos = [DomainInfo::new_zeroed(); 4];
        let l = ListDomains {
            first_domain: 0,
            _pad: 0,
            max_entries: infos.len() as u32,
            buffer: GuestHandle(infos.as_mut_ptr() as u64),
            nr_entries: 0,
            _pad2: 0,
        };
        let l = control::sysctl(SysctlCmd::ListDomains, &l).map_err(|_| "ListDomains failed")?;
        pvrt::ensure!(
            l.nr_entries == 2 && infos[0].domid == 0 && infos[1].domid == guest,
            "ListDomains returned {} entries",
            l.nr_entries
        );
        Ok(())
    }

    /// The hypervisor's log, read through `ReadLog`, has the guest's creation.
    fn check_dmesg() -> Result<(), &'static str> {
        const NEEDLE: &[u8] = b"created \"guest1\"";
        let mut buf = [0u8; 2048];
        let mut offset = 0;
        let mut found = false;
        for _ in 0..256 {
            let r = ReadLog {
                offset,
                buffer: GuestHandle(buf.as_mut_ptr() as u64),
                len: buf.len() as u32,
                done: 0,
                missed: 0,
            };
            let r = control::sysctl(SysctlCmd::ReadLog, &r).map_err(|_| "ReadLog failed")?;
            let chunk = &buf[..r.done as usize];
            found |= chunk.windows(NEEDLE.len()).any(|w| w == NEEDLE);
            if found || chunk.len() < buf.len() {
                break;
            }
            // Overlap the next read so that a match across chunks is not missed.
            offset = r.offset - (NEEDLE.len() as u64 - 1);
        }
        pvrt::ensure!(found, "the log does not mention the guest's creation");
        Ok(())
    }
}
