//! The vif side: netfront by hand (and a second, well-behaved one that listens).

use super::*;

pub(crate) const G_L_TX_RING: u32 = 80;
pub(crate) const G_L_RX_RING: u32 = 81;
pub(crate) const G_L_PAGE: u32 = 82;
pub(crate) const L_PAGES: usize = 8;

/// dom0's second vif (attached by the kernel itself, `DeviceAttach`), a well-behaved
/// frontend that takes neither GSO nor blank checksums: what vif 0 sends reaches it
/// through the switch, segmented and completed.
pub(crate) struct Listener {
    pub(crate) front: Path,
    pub(crate) back: Path,
    /// Its ring pages and rx pages.
    pub(crate) pages: [ScratchPage; 2 + L_PAGES],
    pub(crate) rx: Ring,
    pub(crate) port: u32,
    pub(crate) rx_prod: u32,
    pub(crate) rx_cons: u32,
    /// The sizes of the frames the last [`Listener::drain`] found.
    pub(crate) last_sizes: [u16; 16],
}

impl Listener {
    pub(crate) fn attach(env: &mut Env<'_>) -> Result<Listener, &'static str> {
        let mut req = DeviceAttach::new_zeroed();
        req.kind = DEVICE_VIF;
        req.devid = 1;
        control::domctl(DomctlCmd::DeviceAttach, 0, &req)
            .map_err(|_| "attaching a second vif to dom0 failed")?;
        let front = Path::new("/local/domain/0/device/vif/1");
        let mut buf = [0u8; 128];
        let back = frontend::read_str(&mut env.xs, &front.join("backend"), &mut buf)
            .map(Path::new)
            .ok_or("vif 1 has no backend node")?;
        let tx_page = env.page()?;
        let rx_page = env.page()?;
        // The tx ring stays empty: this vif only listens.
        Ring::new(&tx_page, 12);
        let rx = Ring::new(&rx_page, 8);
        env.gt.grant(G_L_TX_RING, DOMID_XEN, &tx_page, false);
        env.gt.grant(G_L_RX_RING, DOMID_XEN, &rx_page, false);
        let mut pages = [tx_page; 2 + L_PAGES];
        pages[1] = rx_page;
        for i in 0..L_PAGES {
            let p = env.page()?;
            env.gt.grant(G_L_PAGE + i as u32, DOMID_XEN, &p, false);
            pages[2 + i] = p;
        }
        frontend::wait_state(&mut env.xs, &back, state::INIT_WAIT, WAIT_MS)
            .map_err(|_| "vif 1's backend is not at InitWait")?;
        let port = control::alloc_unbound(DOMID_XEN)?;
        env.write_number(&front.join("tx-ring-ref"), G_L_TX_RING.into())?;
        env.write_number(&front.join("rx-ring-ref"), G_L_RX_RING.into())?;
        env.write_number(&front.join("event-channel"), port.into())?;
        env.write(&front.join("request-rx-copy"), b"1")?;
        env.write(&front.join("feature-rx-notify"), b"1")?;
        env.write(&front.join("feature-sg"), b"1")?;
        env.write(&front.join("feature-no-csum-offload"), b"1")?;
        frontend::write_state(&mut env.xs, &front, state::CONNECTED)?;
        frontend::wait_state(&mut env.xs, &back, state::CONNECTED, WAIT_MS)
            .map_err(|_| "vif 1's backend did not connect")?;
        let mut l = Listener {
            front,
            back,
            pages,
            rx,
            port,
            rx_prod: 0,
            rx_cons: 0,
            last_sizes: [0; 16],
        };
        l.post(128);
        Ok(l)
    }

    pub(crate) fn post(&mut self, n: u32) {
        for _ in 0..n {
            let req = NetifRxRequest {
                id: (self.rx_prod & 0xff) as u16,
                pad: 0,
                gref: G_L_PAGE + self.rx_prod % L_PAGES as u32,
            };
            self.rx.write(self.rx_prod, req.as_bytes());
            self.rx_prod = self.rx_prod.wrapping_add(1);
        }
        self.rx.publish(self.rx_prod);
        events::send(self.port);
    }

    /// Rewrites posted (not yet consumed) request `i` to name an unused grant.
    pub(crate) fn spoil(&mut self, i: u32) {
        let req = NetifRxRequest {
            id: (i & 0xff) as u16,
            pad: 0,
            gref: G_UNUSED,
        };
        self.rx.write(i, req.as_bytes());
    }

    /// The page request `i` names.
    pub(crate) fn rx_page_of(&self, i: u32) -> ScratchPage {
        self.pages[2 + (i % L_PAGES as u32) as usize]
    }

    /// Waits for and takes `n` responses from index `at` (the caller reposts).
    pub(crate) fn take(&mut self, at: u32, n: u32) -> [NetifRxResponse; 3] {
        let mut out = [NetifRxResponse::default(); 3];
        let _ = self.rx.wait_responses(at.wrapping_add(n), WAIT_MS);
        for (k, r) in out.iter_mut().enumerate().take(n as usize) {
            let mut raw = [0u8; 8];
            self.rx.read(at.wrapping_add(k as u32), &mut raw);
            *r = NetifRxResponse::read_from_bytes(&raw).unwrap_or_default();
        }
        self.rx_cons = at.wrapping_add(n);
        out
    }

    /// Takes every response there is: (frames, malformed ones: an error, a slot
    /// longer than a page, a frame shorter than an Ethernet header, a blank checksum
    /// this frontend never asked for), and stocks the ring again.
    pub(crate) fn drain(&mut self) -> (usize, usize) {
        let (mut frames, mut bad) = (0, 0);
        let mut len = 0usize;
        let mut first_flags = None;
        self.last_sizes = [0; 16];
        let mut taken = 0;
        while self.rx.rsp_prod() != self.rx_cons {
            let mut raw = [0u8; 8];
            self.rx.read(self.rx_cons, &mut raw);
            self.rx_cons = self.rx_cons.wrapping_add(1);
            taken += 1;
            let r = NetifRxResponse::read_from_bytes(&raw).unwrap_or_default();
            let flags = *first_flags.get_or_insert(r.flags);
            if r.status < 0 || r.status > 4096 {
                bad += 1;
            } else {
                len += r.status as usize;
            }
            if r.flags & NETRXF_MORE_DATA == 0 {
                if len < 14 || flags & NETRXF_CSUM_BLANK != 0 || flags & NETRXF_EXTRA_INFO != 0 {
                    bad += 1;
                }
                if let Some(s) = self.last_sizes.get_mut(frames) {
                    *s = len as u16;
                }
                frames += 1;
                len = 0;
                first_flags = None;
            }
        }
        if taken > 0 {
            self.post(taken);
        }
        (frames, bad)
    }
}

// --- The vif. -----------------------------------------------------------------------------

pub(crate) fn tx_slot(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> [u8; 12] {
    let mut out = [0u8; 12];
    out.copy_from_slice(
        NetifTxRequest {
            gref,
            offset,
            flags,
            id,
            size,
        }
        .as_bytes(),
    );
    out
}

pub(crate) fn extra_slot(extra_type: u8, flags: u8, body: [u16; 3]) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(
        NetifExtraInfo {
            extra_type,
            flags,
            u: body,
        }
        .as_bytes(),
    );
    out
}

/// The length of the ARP request in the tx data page.
pub(crate) const ARP_LEN: u16 = 42;
pub(crate) const GATEWAY_IP: [u8; 4] = [10, 0, 2, 2];
pub(crate) const OUR_IP: [u8; 4] = [10, 0, 2, 15];

pub(crate) struct Vif {
    pub(crate) front: Path,
    pub(crate) back: Path,
    pub(crate) tx_page: ScratchPage,
    pub(crate) rx_page: ScratchPage,
    pub(crate) tx: Ring,
    pub(crate) rx: Ring,
    pub(crate) port: u32,
    pub(crate) tx_prod: u32,
    pub(crate) tx_cons: u32,
    pub(crate) rx_prod: u32,
    pub(crate) rx_cons: u32,
    pub(crate) rx_pages: [ScratchPage; 4],
    pub(crate) rx_ro: ScratchPage,
    pub(crate) tx_data: ScratchPage,
    pub(crate) tx_data2: ScratchPage,
    pub(crate) mac: [u8; 6],
    pub(crate) next_id: u16,
}

pub(crate) fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl Vif {
    pub(crate) fn new(env: &mut Env<'_>) -> Result<Vif, &'static str> {
        let front = Path::new(VIF_FRONT);
        let mut buf = [0u8; 128];
        let back = frontend::read_str(&mut env.xs, &front.join("backend"), &mut buf)
            .map(Path::new)
            .ok_or("dom0 has no vif 0 (dom0_vif=on)")?;
        let mut buf = [0u8; 32];
        let mac = frontend::read_str(&mut env.xs, &front.join("mac"), &mut buf)
            .and_then(parse_mac)
            .ok_or("vif 0 has no mac")?;
        pvrt::println!("hostile: vif 0, backend {}", back.as_str());
        let tx_page = env.page()?;
        let rx_page = env.page()?;
        let tx_data = env.page()?;
        let tx_data2 = env.page()?;
        let rx_pages = [env.page()?, env.page()?, env.page()?, env.page()?];
        let rx_ro = env.page()?;
        env.gt.grant(G_TX_DATA, DOMID_XEN, &tx_data, true);
        env.gt.grant(G_TX_DATA2, DOMID_XEN, &tx_data2, true);
        for (i, p) in rx_pages.iter().enumerate() {
            env.gt.grant(G_RX_PAGE + i as u32, DOMID_XEN, p, false);
        }
        env.gt.grant(G_RX_RO, DOMID_XEN, &rx_ro, true);
        // The ARP request: broadcast, from our MAC, who has 10.0.2.2, tell 10.0.2.15.
        let mut frame = [0u8; ARP_LEN as usize];
        frame[0..6].fill(0xff);
        frame[6..12].copy_from_slice(&mac);
        frame[12..14].copy_from_slice(&[0x08, 0x06]);
        frame[14..22].copy_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
        frame[22..28].copy_from_slice(&mac);
        frame[28..32].copy_from_slice(&OUR_IP);
        frame[38..42].copy_from_slice(&GATEWAY_IP);
        fill_page(&tx_data, |_| 0);
        fill_page(&tx_data2, |off| 0x0101_0101_0101_0101 * (off & 0xff));
        // SAFETY: the tx data page is a scratch page mapped writable.
        let bytes = unsafe { core::slice::from_raw_parts_mut(tx_data.va as *mut u8, 64) };
        bytes[..frame.len()].copy_from_slice(&frame);
        Ok(Vif {
            front,
            back,
            tx: Ring::new(&tx_page, 12),
            rx: Ring::new(&rx_page, 8),
            tx_page,
            rx_page,
            port: 0,
            tx_prod: 0,
            tx_cons: 0,
            rx_prod: 0,
            rx_cons: 0,
            rx_pages,
            rx_ro,
            tx_data,
            tx_data2,
            mac,
            next_id: 1,
        })
    }

    /// netfront's connect: both rings, the port, the features, Connected.
    pub(crate) fn connect(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        frontend::wait_state(&mut env.xs, &self.back, state::INIT_WAIT, WAIT_MS)
            .map_err(|_| "the vif backend is not at InitWait")?;
        self.port = self.offer(env)?;
        frontend::write_state(&mut env.xs, &self.front, state::CONNECTED)?;
        frontend::wait_state(&mut env.xs, &self.back, state::CONNECTED, WAIT_MS)
            .map_err(|_| "the vif backend did not connect")?;
        self.tx_prod = 0;
        self.tx_cons = 0;
        self.rx_prod = 0;
        self.rx_cons = 0;
        Ok(())
    }

    /// Handshakes the backend must refuse, from InitWait back to InitWait. `vbd_port` is
    /// the vbd's connected port.
    pub(crate) fn handshake_attacks(
        &mut self,
        env: &mut Env<'_>,
        vbd_port: u32,
    ) -> Result<(), &'static str> {
        use Value::{Num, StorePort, Text};
        let attacks: [(&str, &[(&str, Value)]); 9] = [
            (
                "vif tx-ring-ref an unused grant",
                &[("tx-ring-ref", Num(G_UNUSED.into()))],
            ),
            (
                "vif tx-ring-ref past the table",
                &[("tx-ring-ref", Num(G_PAST_TABLE.into()))],
            ),
            (
                "vif rx-ring-ref a frame not the frontend's",
                &[("rx-ring-ref", Num(G_FOREIGN.into()))],
            ),
            (
                "vif rx-ring-ref a read-only grant",
                &[("rx-ring-ref", Num(G_RX_RO.into()))],
            ),
            (
                "vif event-channel the xenstore port",
                &[("event-channel", StorePort)],
            ),
            (
                "vif event-channel the vbd's connected port",
                &[("event-channel", Num(vbd_port.into()))],
            ),
            ("vif request-rx-copy 0", &[("request-rx-copy", Text(b"0"))]),
            (
                "vif feature-rx-notify 0",
                &[("feature-rx-notify", Text(b"0"))],
            ),
            (
                "vif tx-ring-ref not a number",
                &[("tx-ring-ref", Text(b""))],
            ),
        ];
        for (what, nodes) in attacks {
            frontend::wait_state(&mut env.xs, &self.back, state::INIT_WAIT, WAIT_MS)
                .map_err(|_| "the vif backend is not at InitWait")?;
            let port = self.offer(env)?;
            refused_handshake(
                env,
                what,
                &self.front,
                &self.back,
                nodes,
                port,
                state::CONNECTED,
            )?;
        }
        Ok(())
    }

    /// netfront's nodes for fresh rings and a new port (the port).
    pub(crate) fn offer(&mut self, env: &mut Env<'_>) -> Result<u32, &'static str> {
        self.tx.reset();
        self.rx.reset();
        env.gt.grant(G_TX_RING, DOMID_XEN, &self.tx_page, false);
        env.gt.grant(G_RX_RING, DOMID_XEN, &self.rx_page, false);
        let port = control::alloc_unbound(DOMID_XEN)?;
        env.write_number(&self.front.join("tx-ring-ref"), G_TX_RING.into())?;
        env.write_number(&self.front.join("rx-ring-ref"), G_RX_RING.into())?;
        env.write_number(&self.front.join("event-channel"), port.into())?;
        env.write(&self.front.join("request-rx-copy"), b"1")?;
        env.write(&self.front.join("feature-rx-notify"), b"1")?;
        env.write(&self.front.join("feature-sg"), b"1")?;
        Ok(port)
    }

    pub(crate) fn reconnect(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        frontend::write_state(&mut env.xs, &self.front, state::CLOSING)?;
        frontend::write_state(&mut env.xs, &self.front, state::CLOSED)?;
        frontend::wait_state(&mut env.xs, &self.back, state::CLOSED, WAIT_MS)
            .map_err(|_| "the vif backend did not close")?;
        events::close(self.port);
        frontend::write_state(&mut env.xs, &self.front, state::INITIALISING)?;
        self.connect(env)
    }

    pub(crate) fn id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Publishes `slots` on the tx ring and kicks.
    pub(crate) fn push_tx(&mut self, slots: &[[u8; 12]]) {
        for s in slots {
            self.tx.write(self.tx_prod, s);
            self.tx_prod = self.tx_prod.wrapping_add(1);
        }
        self.tx.publish(self.tx_prod);
        events::send(self.port);
    }

    /// Sends `slots` and checks the statuses of their responses against `want`.
    pub(crate) fn tx_check(
        &mut self,
        env: &mut Env<'_>,
        kind: Kind,
        what: &str,
        slots: &[[u8; 12]],
        want: &[i16],
    ) {
        self.push_tx(slots);
        let ok = self.tx.wait_responses(self.tx_prod, WAIT_MS);
        let mut same = ok;
        let mut first_bad = None;
        for (k, &w) in want.iter().enumerate() {
            let mut raw = [0u8; 4];
            self.tx.read(self.tx_cons.wrapping_add(k as u32), &mut raw);
            let r = NetifTxResponse::read_from_bytes(&raw).unwrap_or_default();
            if r.status != w {
                same = false;
                first_bad.get_or_insert((k, r.status));
            }
        }
        self.tx_cons = self.tx_prod;
        env.t.check(
            kind,
            what,
            same,
            format_args!(
                "{} responses{}",
                want.len(),
                match (ok, first_bad) {
                    (false, _) => " missing",
                    (true, Some(_)) => ", a status differs",
                    (true, None) => " as expected",
                }
            ),
        );
        if let Some((k, s)) = first_bad {
            pvrt::println!("hostile: ... slot {k} status {s}, expected {}", want[k]);
        }
    }

    pub(crate) fn arp(&mut self) -> [u8; 12] {
        let id = self.id();
        tx_slot(G_TX_DATA, 0, 0, id, ARP_LEN)
    }

    pub(crate) fn send_arp(&mut self, env: &mut Env<'_>, what: &str) {
        let s = self.arp();
        self.tx_check(env, Kind::Legit, what, &[s], &[NETIF_RSP_OKAY]);
    }

    /// Posts rx requests for `grefs`.
    pub(crate) fn post_rx(&mut self, grefs: &[u32]) {
        for &gref in grefs {
            let req = NetifRxRequest {
                id: (self.rx_prod & 0xff) as u16,
                pad: 0,
                gref,
            };
            self.rx.write(self.rx_prod, req.as_bytes());
            self.rx_prod = self.rx_prod.wrapping_add(1);
        }
        self.rx.publish(self.rx_prod);
        events::send(self.port);
    }

    /// The next rx response, waiting for it.
    pub(crate) fn rx_response(&mut self) -> Option<NetifRxResponse> {
        if !self
            .rx
            .wait_responses(self.rx_cons.wrapping_add(1), WAIT_MS)
        {
            return None;
        }
        let mut raw = [0u8; 8];
        self.rx.read(self.rx_cons, &mut raw);
        let expected_id = (self.rx_cons & 0xff) as u16;
        self.rx_cons = self.rx_cons.wrapping_add(1);
        NetifRxResponse::read_from_bytes(&raw)
            .ok()
            .filter(|r| r.id == expected_id)
    }

    /// Posts a good rx page, sends an ARP request, and checks the gateway's reply
    /// arrives in it.
    /// (Frames the gateway sent for earlier ones — its answers to the TCP segments of
    /// the GSO tests — may come first: up to 16 frames are taken, one rx request at a
    /// time.)
    pub(crate) fn arp_exchange(&mut self, env: &mut Env<'_>, what: &str) {
        let page = self.rx_pages[0];
        self.send_arp(env, what);
        let mut last = None;
        let mut is_reply = false;
        for _ in 0..16 {
            fill_page(&page, |_| 0);
            self.post_rx(&[G_RX_PAGE]);
            let r = self.rx_response();
            last = r.map(|r| r.status);
            // SAFETY: the rx page is a scratch page mapped writable; the backend wrote
            // it (by grant copy) before publishing the response.
            let frame = unsafe { core::slice::from_raw_parts(page.va as *const u8, 42) };
            is_reply = r.is_some_and(|r| r.status >= 42)
                && frame[12..14] == [0x08, 0x06]
                && frame[20..22] == [0, 2]
                && frame[28..32] == GATEWAY_IP;
            if is_reply || r.is_none() {
                break;
            }
        }
        env.t.check(
            Kind::Legit,
            "vif rx of the gateway's ARP reply",
            is_reply,
            format_args!("last response {last:?}"),
        );
    }

    pub(crate) fn attacks(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        self.arp_exchange(env, "vif tx of an ARP request");

        // Tx grants and sizes: error responses, the device stays.
        let err = NETIF_RSP_ERROR;
        for (what, gref) in [
            ("vif tx from an unused grant", G_UNUSED),
            ("vif tx from a grant past the table", G_PAST_TABLE),
            ("vif tx from a grant to another domain", G_OTHER_DOM),
            (
                "vif tx from a grant of a frame not the frontend's",
                G_FOREIGN,
            ),
        ] {
            let id = self.id();
            let s = tx_slot(gref, 0, 0, id, ARP_LEN);
            self.tx_check(env, Kind::Attack, what, &[s], &[err]);
        }
        let id = self.id();
        let s = tx_slot(G_TX_DATA, 0, 0, id, 10);
        self.tx_check(env, Kind::Attack, "vif tx of a 10-byte frame", &[s], &[err]);
        // A 60-byte frame whose first slot would hold 8 bytes.
        let (a, b) = (self.id(), self.id());
        let slots = [
            tx_slot(G_TX_DATA, 0, NETTXF_MORE_DATA, a, 60),
            tx_slot(G_TX_DATA2, 0, 0, b, 52),
        ];
        self.tx_check(
            env,
            Kind::Attack,
            "vif tx whose first slot is shorter than an Ethernet header",
            &slots,
            &[err, err],
        );
        let mut chain = [[0u8; 12]; 19];
        for (i, s) in chain.iter_mut().enumerate() {
            let id = self.id();
            *s = if i == 0 {
                tx_slot(G_TX_DATA, 0, NETTXF_MORE_DATA, id, 19 * 16)
            } else {
                let more = if i < 18 { NETTXF_MORE_DATA } else { 0 };
                tx_slot(G_TX_DATA2, 0, more, id, 16)
            };
        }
        self.tx_check(
            env,
            Kind::Attack,
            "vif tx of 19 data slots",
            &chain,
            &[err; 19],
        );
        let (a, b) = (self.id(), self.id());
        let slots = [
            tx_slot(G_TX_DATA, 0, NETTXF_MORE_DATA, a, 60),
            tx_slot(G_TX_DATA2, 0, 0, b, 100),
        ];
        self.tx_check(
            env,
            Kind::Attack,
            "vif tx whose second slot is larger than the frame",
            &slots,
            &[err, err],
        );
        let (a, b) = (self.id(), self.id());
        let slots = [
            tx_slot(G_TX_DATA, 0, NETTXF_MORE_DATA, a, 60),
            tx_slot(G_UNUSED, 0, 0, b, 18),
        ];
        self.tx_check(
            env,
            Kind::Attack,
            "vif tx whose second slot names an unused grant",
            &slots,
            &[err, err],
        );

        // A multicast-add extra: answered, carries no frame.
        let id = self.id();
        let slots = [
            tx_slot(G_TX_DATA, 0, NETTXF_EXTRA_INFO, id, ARP_LEN),
            extra_slot(2, 0, [0x0001, 0x005e, 0x0100]),
        ];
        self.tx_check(
            env,
            Kind::Legit,
            "vif tx multicast-add extra",
            &slots,
            &[NETIF_RSP_OKAY, NETIF_RSP_NULL],
        );

        self.rx_attacks(env);
        let rx = self.rx_page;
        balloon_held_page(env, "vif rx ring page given back while connected", &rx)?;
        self.arp_exchange(
            env,
            "vif tx of an ARP request after the rx ring was offered back",
        );
        self.tx_race(env)?;

        // The fatal ones: each closes the device; a reconnect brings it back.
        let mut slots21 = [[0u8; 12]; 21];
        for (i, s) in slots21.iter_mut().enumerate() {
            let id = self.id();
            *s = if i == 0 {
                tx_slot(G_TX_DATA, 0, NETTXF_MORE_DATA, id, 21 * 16)
            } else {
                let more = if i < 20 { NETTXF_MORE_DATA } else { 0 };
                tx_slot(G_TX_DATA2, 0, more, id, 16)
            };
        }
        self.tx_fatal(env, "vif tx of 21 slots", &slots21, None)?;
        let id = self.id();
        self.tx_fatal(
            env,
            "vif tx slot with offset + size past its page",
            &[tx_slot(G_TX_DATA, 4000, 0, id, 200)],
            None,
        )?;
        let (a, b, c) = (self.id(), self.id(), self.id());
        self.tx_fatal(
            env,
            "vif tx later slot with offset + size past its page",
            &[
                tx_slot(G_TX_DATA, 0, NETTXF_MORE_DATA, a, 142),
                tx_slot(G_TX_DATA2, 4000, NETTXF_MORE_DATA, b, 100),
                tx_slot(G_TX_DATA2, 0, 0, c, 0),
            ],
            None,
        )?;
        for (what, ty) in [
            ("vif tx extra-info of type 0", 0u8),
            ("vif tx extra-info of type 5 (the first undefined)", 5),
            ("vif tx extra-info of type 255", 255),
        ] {
            let id = self.id();
            self.tx_fatal(
                env,
                what,
                &[
                    tx_slot(G_TX_DATA, 0, NETTXF_EXTRA_INFO, id, ARP_LEN),
                    extra_slot(ty, 0, [0; 3]),
                ],
                None,
            )?;
        }
        let mut gso = [0u16; 3];
        gso.as_mut_bytes().copy_from_slice(
            NetifExtraGso {
                size: 0,
                gso_type: NetifGsoType::TcpV4.raw(),
                pad: 0,
                features: 0,
            }
            .as_bytes(),
        );
        let id = self.id();
        self.tx_fatal(
            env,
            "vif tx GSO extra with MSS 0",
            &[
                tx_slot(G_TX_DATA, 0, NETTXF_EXTRA_INFO, id, ARP_LEN),
                extra_slot(1, 0, gso),
            ],
            None,
        )?;
        let mut extras = [extra_slot(4, 1, [0; 3]); 30];
        let id = self.id();
        extras[0] = tx_slot(G_TX_DATA, 0, NETTXF_EXTRA_INFO, id, ARP_LEN);
        self.tx_fatal(
            env,
            "vif tx frame with 29 chained extra-info slots",
            &extras,
            None,
        )?;
        let id = self.id();
        self.tx_fatal(
            env,
            "vif tx chain announcing a slot never published",
            &[tx_slot(G_TX_DATA, 0, NETTXF_MORE_DATA, id, 100)],
            None,
        )?;
        let prod = self.tx_prod.wrapping_sub(1);
        self.tx_fatal(
            env,
            "vif tx req_prod wrapped behind rsp_prod",
            &[],
            Some(prod),
        )?;
        self.rx_overflow(env)?;
        self.pin_held_ring(env)?;
        Ok(())
    }

    /// vCPU 1 rewrites the offset, flags and size of every tx slot (to values that each
    /// make a frame to send or one to refuse, never a fatal one, whichever bytes of them
    /// a torn read combines) while vCPU 0 publishes single-slot frames: every slot gets
    /// one response, in order, OK or an error, and the device stays connected.
    pub(crate) fn tx_race(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        const ROUNDS: u32 = 16;
        const PER_ROUND: u32 = 64;
        let variants: [(u16, u16, u16); 5] = [
            (0, 0, ARP_LEN),
            (0, 0, 10),
            (2048, 0, 96),
            (4000, NETTXF_DATA_VALIDATED, 96),
            (0, NETTXF_CSUM_BLANK, ARP_LEN),
        ];
        for (i, (offset, flags, size)) in variants.into_iter().enumerate() {
            let word = u64::from(offset) | u64::from(flags) << 16;
            RACE_VARIANTS[i].0.store(word, Ordering::SeqCst);
            RACE_VARIANTS[i].1.store(size.into(), Ordering::SeqCst);
        }
        RACE_RING.store(self.tx.entry_va(0), Ordering::SeqCst);
        RACE_MODE.store(RACE_VIF_TX, Ordering::SeqCst);
        let before = MUTATIONS.load(Ordering::SeqCst);
        RACE_ON.store(true, Ordering::SeqCst);
        let started = wait_for(|| MUTATIONS.load(Ordering::SeqCst) > before);
        let (mut ok, mut errors, mut wrong) = (0u32, 0u32, 0u32);
        for _ in 0..ROUNDS {
            let base = self.tx_prod;
            let ids: [u16; PER_ROUND as usize] = core::array::from_fn(|_| self.id());
            for &id in &ids {
                let s = tx_slot(G_TX_DATA, 0, 0, id, ARP_LEN);
                self.tx.write(self.tx_prod, &s);
                self.tx_prod = self.tx_prod.wrapping_add(1);
            }
            self.tx.publish(self.tx_prod);
            events::send(self.port);
            let all = self.tx.wait_responses(self.tx_prod, WAIT_MS);
            for (k, &id) in ids.iter().enumerate() {
                let mut raw = [0u8; 4];
                self.tx.read(base.wrapping_add(k as u32), &mut raw);
                let r = NetifTxResponse::read_from_bytes(&raw).unwrap_or_default();
                match (all && r.id == id, r.status) {
                    (true, NETIF_RSP_OKAY) => ok += 1,
                    (true, NETIF_RSP_ERROR) => errors += 1,
                    _ => wrong += 1,
                }
            }
            self.tx_cons = self.tx_prod;
        }
        RACE_ON.store(false, Ordering::SeqCst);
        let stopped = wait_for(|| MUTATOR_IDLE.load(Ordering::SeqCst));
        let mutations = MUTATIONS.load(Ordering::SeqCst) - before;
        pvrt::ensure!(
            started && stopped,
            "vCPU 1 did not take part in the tx race"
        );
        let connected = frontend::read_state(&mut env.xs, &self.back) == Some(state::CONNECTED);
        env.t.check(
            Kind::Attack,
            "vif tx slots rewritten while being read",
            ok + errors == ROUNDS * PER_ROUND && wrong == 0 && mutations > 0 && connected,
            format_args!(
                "{} frames, {ok} OK, {errors} errors, {wrong} wrong; vCPU 1 rewrote the \
                 ring {mutations} times; still connected: {connected}",
                ROUNDS * PER_ROUND
            ),
        );
        self.arp_exchange(env, "vif tx of an ARP request after the race");
        Ok(())
    }

    /// Well-formed slot chains carrying frames whose contents are hostile to what the
    /// switch does with them on the way to the NIC (checksum completion, software
    /// segmentation): a GSO TCPv4 frame with MSS 1 (more than 512 segments), GSO TCPv6
    /// over IPv4, an IPv4 header length of 60 in a 34-byte frame or of 16, a TCP header
    /// cut short, a UDP length of 65535 in 60 bytes, IPv6 extension headers running past
    /// the frame or chained 40 deep — all with blank checksums. The vif takes each
    /// (OK); the switch drops what it cannot handle; the device stays connected.
    pub(crate) fn hostile_frames(&mut self, env: &mut Env<'_>, listener: &mut Listener) {
        let _ = listener.drain();
        let mut bad_total = 0;
        const AT: usize = 1024;
        let mac = self.mac;
        let eth = |f: &mut [u8], ethertype: [u8; 2]| {
            f[0..6].fill(0xff);
            f[6..12].copy_from_slice(&mac);
            f[12..14].copy_from_slice(&ethertype);
        };
        let ipv4 = |f: &mut [u8], ihl: u8, total: u16, proto: u8| {
            f[14] = 0x40 | ihl;
            f[16..18].copy_from_slice(&total.to_be_bytes());
            f[22] = 64;
            f[23] = proto;
            f[26..30].copy_from_slice(&OUR_IP);
            f[30..34].copy_from_slice(&[10, 0, 2, 99]);
        };
        let gso = |mss: u16, ty: NetifGsoType| {
            let mut body = [0u16; 3];
            body.as_mut_bytes().copy_from_slice(
                NetifExtraGso {
                    size: mss,
                    gso_type: ty.raw(),
                    pad: 0,
                    features: 0,
                }
                .as_bytes(),
            );
            extra_slot(1, 0, body)
        };
        /// (what, the GSO extra's MSS and type, which frame).
        type Case = (&'static str, Option<(u16, NetifGsoType)>, usize);
        let cases: [Case; 9] = [
            (
                "vif tx GSO TCPv4 frame with MSS 1",
                Some((1, NetifGsoType::TcpV4)),
                0,
            ),
            (
                "vif tx GSO TCPv6 over an IPv4 frame",
                Some((100, NetifGsoType::TcpV6)),
                0,
            ),
            (
                "vif tx GSO TCPv4 over an IPv4 header length of 16",
                Some((100, NetifGsoType::TcpV4)),
                1,
            ),
            ("vif tx IPv4 header length 60 in a 34-byte frame", None, 2),
            ("vif tx TCP header cut short", None, 3),
            ("vif tx UDP length 65535 in a 60-byte frame", None, 4),
            (
                "vif tx IPv6 hop-by-hop header running past the frame",
                None,
                5,
            ),
            ("vif tx IPv6 with 40 chained routing headers", None, 6),
            ("vif tx IPv4 fragment with a blank checksum", None, 7),
        ];
        for (what, gso_extra, shape) in cases {
            let mut f = [0u8; 1024];
            let len = match shape {
                // TCP over IPv4, 900 bytes of payload.
                0 | 1 => {
                    eth(&mut f, [0x08, 0x00]);
                    ipv4(&mut f, if shape == 1 { 4 } else { 5 }, 20 + 20 + 900, 6);
                    f[46] = 0x50;
                    14 + 20 + 20 + 900
                }
                2 => {
                    eth(&mut f, [0x08, 0x00]);
                    ipv4(&mut f, 15, 60, 6);
                    34
                }
                3 => {
                    eth(&mut f, [0x08, 0x00]);
                    ipv4(&mut f, 5, 60, 6);
                    40
                }
                4 => {
                    eth(&mut f, [0x08, 0x00]);
                    ipv4(&mut f, 5, 46, 17);
                    f[38..40].copy_from_slice(&u16::MAX.to_be_bytes());
                    60
                }
                5 => {
                    eth(&mut f, [0x86, 0xdd]);
                    f[14] = 0x60;
                    f[18..20].copy_from_slice(&60u16.to_be_bytes());
                    f[20] = 0; // hop-by-hop
                    f[21] = 64;
                    f[54] = 6; // then TCP
                    f[55] = 255; // (255 + 1) * 8 bytes
                    100
                }
                6 => {
                    eth(&mut f, [0x86, 0xdd]);
                    f[14] = 0x60;
                    f[18..20].copy_from_slice(&(40u16 * 8 + 20).to_be_bytes());
                    f[20] = 43;
                    f[21] = 64;
                    for k in 0..40 {
                        let h = 54 + 8 * k;
                        f[h] = if k == 39 { 6 } else { 43 };
                    }
                    54 + 40 * 8 + 20
                }
                _ => {
                    eth(&mut f, [0x08, 0x00]);
                    ipv4(&mut f, 5, 20 + 8 + 32, 17);
                    f[20] = 0x20; // more fragments
                    f[38..40].copy_from_slice(&40u16.to_be_bytes());
                    14 + 20 + 8 + 32
                }
            };
            // SAFETY: the tx data page is a scratch page mapped writable; bytes
            // AT..AT + 1024 are this test's alone.
            let dst = unsafe {
                core::slice::from_raw_parts_mut((self.tx_data.va as usize + AT) as *mut u8, 1024)
            };
            dst.copy_from_slice(&f);
            let id = self.id();
            let flags = NETTXF_CSUM_BLANK
                | if gso_extra.is_some() {
                    NETTXF_EXTRA_INFO
                } else {
                    0
                };
            let first = tx_slot(G_TX_DATA, AT as u16, flags, id, len as u16);
            match gso_extra {
                Some((mss, ty)) => self.tx_check(
                    env,
                    Kind::Attack,
                    what,
                    &[first, gso(mss, ty)],
                    &[NETIF_RSP_OKAY, NETIF_RSP_NULL],
                ),
                None => self.tx_check(env, Kind::Attack, what, &[first], &[NETIF_RSP_OKAY]),
            }
            let (frames, bad) = listener.drain();
            bad_total += bad;
            pvrt::println!("hostile: ... vif 1 received {frames} frames of it ({bad} malformed)");
        }
        // A good GSO frame: 900 bytes of TCP payload with MSS 100 reach vif 1 (which
        // takes no GSO and no blank checksums) as 9 segments of 154 bytes.
        let mut f = [0u8; 1024];
        eth(&mut f, [0x08, 0x00]);
        ipv4(&mut f, 5, 20 + 20 + 900, 6);
        f[46] = 0x50;
        // SAFETY: as above.
        let dst = unsafe {
            core::slice::from_raw_parts_mut((self.tx_data.va as usize + AT) as *mut u8, 1024)
        };
        dst.copy_from_slice(&f);
        let id = self.id();
        let first = tx_slot(
            G_TX_DATA,
            AT as u16,
            NETTXF_CSUM_BLANK | NETTXF_EXTRA_INFO,
            id,
            14 + 20 + 20 + 900,
        );
        self.tx_check(
            env,
            Kind::Legit,
            "vif tx GSO TCPv4 frame with MSS 100",
            &[first, gso(100, NetifGsoType::TcpV4)],
            &[NETIF_RSP_OKAY, NETIF_RSP_NULL],
        );
        let (frames, bad) = listener.drain();
        let sizes_ok = listener.last_sizes.iter().take(9).all(|&s| s == 154);
        env.t.check(
            Kind::Legit,
            "vif 1 received the GSO frame cut into 9 segments",
            frames == 9 && bad == 0 && sizes_ok,
            format_args!(
                "{frames} frames, {bad} malformed, sizes {:?}",
                &listener.last_sizes[..frames.min(9)]
            ),
        );
        env.t.check(
            Kind::Attack,
            "vif 1 received only well-formed frames of vif 0's hostile ones",
            bad_total == 0,
            format_args!("{bad_total} malformed"),
        );
        self.big_frame_to_listener(env, listener);
        let connected = frontend::read_state(&mut env.xs, &self.back) == Some(state::CONNECTED);
        env.t.check(
            Kind::Attack,
            "vif still connected after the hostile frames",
            connected,
            format_args!("backend connected: {connected}"),
        );
        self.arp_exchange(env, "vif tx of an ARP request after the hostile frames");
    }

    /// A 9000-byte frame over three tx slots reaches vif 1 over three rx slots, one of
    /// which vif 1 spoiled (an unused grant, written over the request after posting it):
    /// each slot is answered in place — 4096 bytes, an error, the last 808 — with
    /// `more_data` on all but the last, and the good slots hold the frame's bytes.
    pub(crate) fn big_frame_to_listener(&mut self, env: &mut Env<'_>, listener: &mut Listener) {
        let _ = listener.drain();
        let at = listener.rx_cons;
        listener.spoil(at.wrapping_add(1));
        let (a, b, c) = (self.id(), self.id(), self.id());
        let slots = [
            tx_slot(G_TX_DATA, 0, NETTXF_MORE_DATA, a, 9000),
            tx_slot(G_TX_DATA2, 0, NETTXF_MORE_DATA, b, 4096),
            tx_slot(G_TX_DATA2, 0, 0, c, 808),
        ];
        self.tx_check(
            env,
            Kind::Legit,
            "vif tx of a 9000-byte frame over three slots",
            &slots,
            &[NETIF_RSP_OKAY; 3],
        );
        let got = listener.take(at, 3);
        let want = [
            (4096, NETRXF_MORE_DATA),
            (NETIF_RSP_ERROR, NETRXF_MORE_DATA),
            (808, 0),
        ];
        let shape = got
            .iter()
            .zip(want)
            .all(|(r, (status, more))| r.status == status && r.flags & NETRXF_MORE_DATA == more);
        let ids = got
            .iter()
            .enumerate()
            .all(|(k, r)| r.id == (at.wrapping_add(k as u32) & 0xff) as u16);
        // SAFETY: the pages are scratch pages mapped writable; the backend wrote them by
        // grant copy before publishing the responses.
        let (first, last, sent_first, sent_last) = unsafe {
            (
                core::slice::from_raw_parts(listener.rx_page_of(at).va as *const u8, 4096),
                core::slice::from_raw_parts(listener.rx_page_of(at + 2).va as *const u8, 808),
                core::slice::from_raw_parts(self.tx_data.va as *const u8, 4096),
                core::slice::from_raw_parts(self.tx_data2.va as *const u8, 808),
            )
        };
        let data = first == sent_first && last == sent_last;
        env.t.check(
            Kind::Attack,
            "vif 1 rx of a three-slot frame with its second request spoiled",
            shape && ids && data,
            format_args!(
                "statuses {:?}, ids in their slots: {ids}, data intact: {data}",
                [got[0].status, got[1].status, got[2].status]
            ),
        );
        listener.post(3);
    }

    /// Rx requests naming bad grants: each gets an error response in its own slot when a
    /// frame arrives for it, and the next good one gets its frame.
    pub(crate) fn rx_attacks(&mut self, env: &mut Env<'_>) {
        fill_page(&self.rx_ro, |off| 0xee00_0000_0000_0000 | off);
        let bad = [G_UNUSED, G_RX_RO, G_OTHER_DOM, G_FOREIGN, G_PAGE_TABLE];
        self.post_rx(&bad);
        // A frame for each: the gateway answers each ARP request.
        for _ in 0..bad.len() {
            let s = self.arp();
            self.push_tx(&[s]);
        }
        let _ = self.tx.wait_responses(self.tx_prod, WAIT_MS);
        self.tx_cons = self.tx_prod;
        for what in [
            "vif rx into an unused grant",
            "vif rx into a read-only grant",
            "vif rx into a grant to another domain",
            "vif rx into a grant of a frame not the frontend's",
            "vif rx into a writable grant of the frontend's L4 page table",
        ] {
            let r = self.rx_response();
            env.t.check(
                Kind::Attack,
                what,
                r.is_some_and(|r| r.status == NETIF_RSP_ERROR),
                format_args!("response {:?}", r.map(|r| r.status)),
            );
        }
        let changed = check_page(&self.rx_ro, |off| 0xee00_0000_0000_0000 | off);
        env.t.check(
            Kind::Attack,
            "vif rx into a read-only grant left the page alone",
            changed.is_none(),
            format_args!("first changed byte {changed:?}"),
        );
        self.arp_exchange(env, "vif tx of an ARP request after the bad rx requests");
    }

    /// Sends `slots` (or publishes `prod` over nothing): the backend must close without
    /// answering; then a reconnect, and a frame goes out.
    pub(crate) fn tx_fatal(
        &mut self,
        env: &mut Env<'_>,
        what: &str,
        slots: &[[u8; 12]],
        prod: Option<u32>,
    ) -> Result<(), &'static str> {
        let before = self.tx.rsp_prod();
        match prod {
            Some(p) => {
                self.tx.publish(p);
                events::send(self.port);
            }
            None => self.push_tx(slots),
        }
        let closed = frontend::wait_state(&mut env.xs, &self.back, state::CLOSING, WAIT_MS);
        let after = self.tx.rsp_prod();
        env.t.check(
            Kind::Attack,
            what,
            closed.is_ok() && after == before,
            format_args!(
                "backend state {}, tx rsp_prod {before} -> {after}",
                match closed {
                    Ok(()) => state::CLOSING,
                    Err(s) => s,
                }
            ),
        );
        self.reconnect(env)?;
        self.send_arp(env, "vif tx of an ARP request after a reconnect");
        Ok(())
    }

    /// The frontend unmaps its connected rx ring page (still all but empty: a valid
    /// L1 page table's contents) and asks for it to be pinned as an L1 page table:
    /// refused while the backend holds it writable (else the backend's responses would
    /// be page-table entries), accepted once the device has let go (the control).
    pub(crate) fn pin_held_ring(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let page = self.rx_page;
        // SAFETY: the rx ring page is a scratch page; nothing reads it through this
        // mapping until it is mapped back below.
        let rc = unsafe { pvrt::update_va_mapping(page.va, 0, UVMF_INVLPG) };
        pvrt::ensure!(rc == 0, "unmapping the rx ring page returned {rc}");
        let held = mmuext(MmuextCmd::PinL1Table, page.mfn);
        if held == 0 {
            // It is a page table now: give it back before anything else.
            let _ = mmuext(MmuextCmd::UnpinTable, page.mfn);
        }
        frontend::write_state(&mut env.xs, &self.front, state::CLOSING)?;
        frontend::write_state(&mut env.xs, &self.front, state::CLOSED)?;
        frontend::wait_state(&mut env.xs, &self.back, state::CLOSED, WAIT_MS)
            .map_err(|_| "the vif backend did not close")?;
        let free = mmuext(MmuextCmd::PinL1Table, page.mfn);
        let unpinned = if free == 0 {
            mmuext(MmuextCmd::UnpinTable, page.mfn)
        } else {
            0
        };
        env.t.check(
            Kind::Attack,
            "vif rx ring pinned as an L1 page table while connected",
            held != 0 && free == 0 && unpinned == 0,
            format_args!("pin while held {held}, pin once released {free} (unpin {unpinned})"),
        );
        // SAFETY: maps the page's own frame back where it was.
        let rc =
            unsafe { pvrt::update_va_mapping(page.va, page.maddr() | region::PTE_RW, UVMF_INVLPG) };
        pvrt::ensure!(rc == 0, "the rx ring page cannot be mapped back ({rc})");
        events::close(self.port);
        frontend::write_state(&mut env.xs, &self.front, state::INITIALISING)?;
        self.connect(env)?;
        self.arp_exchange(env, "vif tx of an ARP request after the pin attempt");
        Ok(())
    }

    /// An rx `req_prod` far past the ring, found when a frame arrives for it.
    pub(crate) fn rx_overflow(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        self.rx.publish(self.rx_prod.wrapping_add(1000));
        events::send(self.port);
        let s = self.arp();
        self.push_tx(&[s]);
        let closed = frontend::wait_state(&mut env.xs, &self.back, state::CLOSING, WAIT_MS);
        env.t.check(
            Kind::Attack,
            "vif rx req_prod 1000 ahead",
            closed.is_ok(),
            format_args!(
                "backend state {}",
                match closed {
                    Ok(()) => state::CLOSING,
                    Err(s) => s,
                }
            ),
        );
        self.reconnect(env)
    }

    pub(crate) fn final_io(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let before = switch_counters(self.mac)?;
        self.arp_exchange(env, "vif final tx of an ARP request");
        let after = switch_counters(self.mac)?;
        // The switch took the request from the vif and sent it out of the NIC, and sent
        // the gateway's answer to the vif.
        env.t.check(
            Kind::Legit,
            "xenbr0's counters for the final ARP exchange",
            after.0 > before.0 && after.1 > before.1 && after.2 > before.2,
            format_args!(
                "vif rx {} -> {}, uplink tx {} -> {}, vif tx {} -> {}",
                before.0, after.0, before.1, after.1, before.2, after.2
            ),
        );
        Ok(())
    }
}
