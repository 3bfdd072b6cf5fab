//! `fuzzctl`: dom0 of the hypercall fuzzer (`tests/tests/fuzz.rs`). Builds two
//! unprivileged domains from its module (the `fuzz` kernel): a peer (`role=peer`, one
//! vCPU) and the fuzzer (`role=fuzz`, two vCPUs) with the `seed=` and `calls=` of dom0's own
//! command line. They exchange grants and event channels through xenstore; dom0 checks a
//! round trip with the peer, lets the fuzzer run, and then checks that the fuzzer finished
//! (or died: that is allowed) within `timeout=` seconds, that the peer still answers and
//! dom0 still works, and that destroying both gives back every frame.
#![cfg_attr(target_os = "none", no_std, no_main)]

use ferrovisor_abi::xen::xen::StartInfo;

pvrt::test_kernel!(name: "fuzzctl", main: test_main);

fn test_main(si: &StartInfo) -> Result<(), &'static str> {
    checks::run(si)
}

mod checks {
    use ferrovisor_abi::{
        domctl::{DomctlCmd, DOMINFO_CRASHED, DOMINFO_SHUTDOWN},
        errno::XenErrno,
        xen::{
            grant_table::GrantStatus,
            version::XenVersionOp,
            xen::{StartInfo, Virq},
            DomId,
        },
    };
    use pvrt::{
        control, events, region,
        time::{self, NS_PER_MS, NS_PER_SEC},
        xenstore::{DomainPath, Store},
    };

    /// What a wedged fuzzer looks like from outside: its flags and each vCPU's state (up,
    /// waiting for an event, on a CPU, its CPU time), for whoever reads the failing log.
    fn describe_wedged(fuzzer: DomId, info: &ferrovisor_abi::domctl::DomainInfo) {
        pvrt::println!(
            "pv-test fuzzctl: wedged fuzzer d{fuzzer}: flags {:#x}, {} of {} vCPUs online, {} ms \
             of CPU time",
            info.flags,
            info.online_vcpus,
            info.nr_vcpus,
            info.cpu_time_ns / NS_PER_MS
        );
        for vcpu in 0..info.nr_vcpus {
            let mut state =
                <ferrovisor_abi::domctl::VcpuState as zerocopy::FromZeros>::new_zeroed();
            state.vcpu = vcpu;
            match control::domctl(DomctlCmd::GetVcpuInfo, fuzzer, &state) {
                Ok((v, _)) => pvrt::println!(
                    "pv-test fuzzctl:   vCPU {vcpu}: online {}, blocked {}, running {}, cpu {}, \
                     {} ms",
                    v.online,
                    v.blocked,
                    v.running,
                    v.cpu,
                    v.cpu_time_ns / NS_PER_MS
                ),
                Err(e) => {
                    pvrt::println!("pv-test fuzzctl:   vCPU {vcpu}: GetVcpuInfo returned {e}")
                }
            }
        }
    }

    /// Each domain's size: 8 MiB; the fuzzer may grow to twice that.
    const GUEST_PAGES: u64 = 2048;
    /// What the peer grants dom0 and how it answers (`fuzz.rs`, `wire`).
    const PEER_GREF_DOM0: u32 = 8;
    const ANSWER_XOR: u64 = 0x5eed_5eed_5eed_5eed;

    fn arg(cmdline: &str, key: &str) -> Option<u64> {
        cmdline.split(' ').find_map(|w| {
            let v = w.strip_prefix(key)?.strip_prefix('=')?;
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            }
        })
    }

    pub fn run(si: &StartInfo) -> Result<(), &'static str> {
        let cmdline = pvrt::cmdline(si).unwrap_or("");
        let seed = arg(cmdline, "seed").unwrap_or(1);
        let calls = arg(cmdline, "calls").unwrap_or(10_000);
        let timeout = arg(cmdline, "timeout").unwrap_or(600);
        pvrt::shared_info::map(si).map_err(|_| "cannot map shared_info")?;
        let mut store = Store::open(si).ok_or("dom0 has no xenstore ring")?;
        let free_before = control::phys_info()?.free_pages;

        let peer = control::create("fuzz-peer", GUEST_PAGES).map_err(|_| "CreateDomain failed")?;
        let mut peer_mfns = [0u64; 1024];
        control::populate(peer, GUEST_PAGES, &mut peer_mfns)?;
        control::build_from_module(si, peer, b"role=peer")?;

        let fuzzer = control::create_with_vcpus("fuzzer", GUEST_PAGES * 2, 2)
            .map_err(|_| "CreateDomain of the fuzzer failed")?;
        control::populate(fuzzer, GUEST_PAGES, &mut [])?;
        let mut line = Line::new();
        line.push("role=fuzz seed=");
        line.hex(seed);
        line.push(" calls=");
        line.dec(calls);
        for key in ["trace", "only"] {
            if let Some(v) = arg(cmdline, key) {
                line.push(" ");
                line.push(key);
                line.push("=");
                line.dec(v);
            }
        }
        line.push(" peer_mfns=");
        for (i, &m) in [peer_mfns[0], peer_mfns[1], peer_mfns[512], peer_mfns[1023]]
            .iter()
            .enumerate()
        {
            if i > 0 {
                line.push(",");
            }
            line.hex(m);
        }
        control::build_from_module(si, fuzzer, line.bytes())?;
        pvrt::println!(
            "pv-test fuzzctl: built peer d{peer} and fuzzer d{fuzzer} (2 vCPUs): seed {seed:#x}, \
             {calls} calls"
        );

        let mut path = DomainPath::new();
        for (me, other) in [(peer, fuzzer), (fuzzer, peer)] {
            store
                .write_number(path.of(me, "domid"), me.into())
                .map_err(|_| "cannot write domid")?;
            store
                .write_number(path.of(me, "data/peer"), other.into())
                .map_err(|_| "cannot write data/peer")?;
            store
                .watch(path.of(me, "data/ready"), "ready")
                .map_err(|_| "cannot watch data/ready")?;
        }
        let to_peer = control::alloc_unbound(peer)?;
        store
            .write_number(path.of(peer, "data/dom0-port"), to_peer.into())
            .map_err(|_| "cannot write data/dom0-port")?;
        // Told when a domain stops.
        let dom_exc =
            events::bind_virq(Virq::DomExc.raw(), 0).map_err(|_| "cannot bind VIRQ_DOM_EXC")?;
        events::set_masked(dom_exc, true);

        // They meet through xenstore; the fuzzer starts once dom0 has seen the peer answer.
        for dom in [peer, fuzzer] {
            control::expect0(DomctlCmd::UnpauseDomain, dom, "UnpauseDomain failed")?;
        }
        for dom in [peer, fuzzer] {
            wait_ready(&mut store, dom)?;
        }
        let page = map_peer_page(si, peer)?;
        round_trip(page, to_peer, 1)?;
        pvrt::println!("pv-test fuzzctl: peer d{peer} answers");
        let start = time::now();
        store
            .write(path.of(fuzzer, "data/go"), b"1")
            .map_err(|_| "cannot write data/go")?;
        let deadline = start + timeout * NS_PER_SEC;
        let info = loop {
            let info = control::domain_info(fuzzer)?;
            if info.flags & DOMINFO_SHUTDOWN != 0 {
                break info;
            }
            let peer_info = control::domain_info(peer)?;
            pvrt::ensure!(
                peer_info.flags & DOMINFO_SHUTDOWN == 0,
                "the peer stopped while the fuzzer ran (flags {:#x}, reason {})",
                peer_info.flags,
                peer_info.shutdown_reason
            );
            if time::now() > deadline {
                describe_wedged(fuzzer, &info);
                pvrt::fail!(
                    "the fuzzer (seed {seed:#x}) neither finished nor died within {timeout} s: \
                     wedged"
                );
            }
            events::clear_pending(dom_exc);
            pvrt::sched_poll(dom_exc, time::now() + 500 * NS_PER_MS);
        };
        let secs = (time::now() - start) / NS_PER_MS;
        if info.flags & DOMINFO_CRASHED == 0 && info.shutdown_reason == 0 {
            pvrt::println!(
                "pv-test fuzzctl: fuzzer d{fuzzer} finished (poweroff) after {}.{:03} s",
                secs / 1000,
                secs % 1000
            );
        } else {
            pvrt::println!(
                "pv-test fuzzctl: fuzzer d{fuzzer} died (flags {:#x}, reason {}) after {}.{:03} s",
                info.flags,
                info.shutdown_reason,
                secs / 1000,
                secs % 1000
            );
        }

        // The peer and dom0 are fine.
        let peer_info = control::domain_info(peer)?;
        pvrt::ensure!(
            peer_info.flags & DOMINFO_SHUTDOWN == 0,
            "the peer stopped during the fuzz"
        );
        round_trip(page, to_peer, 0x600d_f00d)?;
        pvrt::println!("pv-test fuzzctl: peer d{peer} still answers after the fuzz");
        let version = pvrt::xen_version(XenVersionOp::Version);
        pvrt::ensure!(
            version >> 16 == 4,
            "dom0's xen_version returned {version:#x}"
        );
        let (r, status) = pvrt::grant::unmap(page.0, page.1);
        pvrt::ensure!(
            r == 0 && status == 0,
            "unmapping the peer's grant: rc {r}, status {status}"
        );

        // Tear down; the peer keeps one of the fuzzer's frames mapped, so the fuzzer may
        // stay dying until the peer is gone.
        control::expect0(
            DomctlCmd::DestroyDomain,
            fuzzer,
            "destroying the fuzzer failed",
        )?;
        control::expect0(DomctlCmd::DestroyDomain, peer, "destroying the peer failed")?;
        for dom in [fuzzer, peer] {
            gone(dom)?;
        }
        let free_after = control::phys_info()?.free_pages;
        pvrt::ensure!(
            free_after == free_before,
            "free frames {free_after} after destroying both, {free_before} before: {} leaked",
            free_before as i64 - free_after as i64
        );
        pvrt::println!("pv-test fuzzctl: both destroyed, all {free_after} free frames back");
        Ok(())
    }

    fn wait_ready(store: &mut Store, dom: DomId) -> Result<(), &'static str> {
        let mut path = DomainPath::new();
        let deadline = time::now() + 60 * NS_PER_SEC;
        while time::now() < deadline {
            let _ = store.next_event(200);
            if store.read_number(path.of(dom, "data/ready")).is_ok() {
                return Ok(());
            }
            let info = control::domain_info(dom)?;
            pvrt::ensure!(
                info.flags & DOMINFO_SHUTDOWN == 0,
                "d{dom} stopped before it was ready (its log has the reason)"
            );
        }
        Err("a domain never became ready")
    }

    /// Maps the peer's page for dom0 at a scratch address: (va, handle).
    fn map_peer_page(si: &StartInfo, peer: DomId) -> Result<(u64, u32), &'static str> {
        let at = region::alloc_scratch(si).ok_or("no scratch page")?;
        // SAFETY: the scratch page is the kernel's and unused; the grant goes there.
        let r = unsafe { pvrt::update_va_mapping(at.va, 0, 0) };
        pvrt::ensure!(r == 0, "unmapping a scratch page returned {r}");
        let (r, map) = pvrt::grant::map(at.va, PEER_GREF_DOM0, peer, false);
        pvrt::ensure!(
            r == 0 && map.status == GrantStatus::Okay.raw(),
            "mapping the peer's grant: rc {r}, status {}",
            map.status
        );
        Ok((at.va, map.handle))
    }

    /// Writes `nonce` into the peer's page, signals it, and waits for its answer.
    fn round_trip(page: (u64, u32), port: u32, nonce: u64) -> Result<(), &'static str> {
        let words = page.0 as *mut u64;
        // SAFETY: the peer's page is mapped writable at `page.0` until the final unmap.
        unsafe {
            words.write_volatile(nonce);
            words.add(1).write_volatile(0);
        }
        events::clear_pending(port);
        let r = events::send(port);
        pvrt::ensure!(r == 0, "signalling the peer returned {r}");
        let deadline = time::now() + 10 * NS_PER_SEC;
        while time::now() < deadline {
            pvrt::sched_poll(port, time::now() + 100 * NS_PER_MS);
            // SAFETY: as above.
            let answer = unsafe { words.add(1).read_volatile() };
            if answer == nonce ^ ANSWER_XOR {
                events::clear_pending(port);
                return Ok(());
            }
        }
        Err("the peer did not answer within 10 s")
    }

    /// A destroyed domain is gone (every frame freed) once nothing references it.
    fn gone(dom: DomId) -> Result<(), &'static str> {
        let esrch = XenErrno::Esrch.to_hypercall_ret();
        let deadline = time::now() + 10 * NS_PER_SEC;
        while time::now() < deadline {
            if control::domctl0(DomctlCmd::GetDomainInfo, dom) == esrch {
                return Ok(());
            }
            pvrt::sched_yield();
        }
        let info = control::domain_info(dom)?;
        pvrt::fail!(
            "d{dom} is still there 10 s after its destruction: flags {:#x}, {} pages",
            info.flags,
            info.tot_pages
        )
    }

    /// A command line being built.
    struct Line {
        buf: [u8; 256],
        len: usize,
    }

    impl Line {
        fn new() -> Self {
            Line {
                buf: [0; 256],
                len: 0,
            }
        }

        fn push(&mut self, s: &str) {
            let n = s.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
            self.len += n;
        }

        fn dec(&mut self, v: u64) {
            let mut b = [0u8; 20];
            self.push(pvrt::decimal(v, &mut b));
        }

        fn hex(&mut self, v: u64) {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            self.push("0x");
            let mut digits = [0u8; 16];
            let mut n = 0;
            let mut x = v;
            loop {
                digits[n] = DIGITS[(x & 15) as usize];
                n += 1;
                x >>= 4;
                if x == 0 {
                    break;
                }
            }
            digits[..n].reverse();
            self.push(core::str::from_utf8(&digits[..n]).unwrap_or("0"));
        }

        fn bytes(&self) -> &[u8] {
            &self.buf[..self.len]
        }
    }
}
