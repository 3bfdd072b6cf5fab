//! The vbd side: blkfront by hand, and what it does wrong.

use super::*;

pub(crate) fn blk_req(op: u8, sector: u64, segs: &[(u32, u8, u8)]) -> BlkifRequest {
    let mut r = BlkifRequest::new_zeroed();
    r.operation = op;
    r.nr_segments = segs.len() as u8;
    r.sector_number = sector;
    for (slot, &(gref, first_sect, last_sect)) in r.seg.iter_mut().zip(segs) {
        *slot = BlkifRequestSegment {
            gref,
            first_sect,
            last_sect,
            _cpad: [0; 2],
        };
    }
    r
}

pub(crate) fn page_req(op: u8, sector: u64, gref: u32) -> BlkifRequest {
    blk_req(op, sector, &[(gref, 0, 7)])
}

pub(crate) fn indirect(
    indirect_op: u8,
    sector: u64,
    nr_segments: u16,
    gref: u32,
) -> BlkifRequestIndirect {
    let mut r = BlkifRequestIndirect::new_zeroed();
    r.operation = BlkifOp::Indirect.raw();
    r.indirect_op = indirect_op;
    r.nr_segments = nr_segments;
    r.sector_number = sector;
    r.indirect_grefs[0] = gref;
    r
}

pub(crate) fn discard(sector: u64, nr_sectors: u64) -> BlkifRequestDiscard {
    let mut r = BlkifRequestDiscard::new_zeroed();
    r.operation = BlkifOp::Discard.raw();
    r.sector_number = sector;
    r.nr_sectors = nr_sectors;
    r
}

pub(crate) struct Vbd {
    pub(crate) front: Path,
    pub(crate) back: Path,
    pub(crate) ring_page: ScratchPage,
    pub(crate) ring_gref: u32,
    /// The size `sectors` must say.
    pub(crate) expect_sectors: u64,
    pub(crate) ring: Ring,
    /// A four-page ring's first page (the others follow it), used when `big`.
    pub(crate) big_ring: ScratchPage,
    pub(crate) big: bool,
    /// Connect with a two-page ring whose two grants are the same.
    pub(crate) alias: bool,
    /// A race wrote the race's page to the disk.
    pub(crate) race_written: bool,
    pub(crate) port: u32,
    pub(crate) prod: u32,
    pub(crate) cons: u32,
    pub(crate) sectors: u64,
    pub(crate) discard: bool,
    pub(crate) next_id: u64,
    pub(crate) data: ScratchPage,
    pub(crate) data_ro: ScratchPage,
    pub(crate) indirect: ScratchPage,
    pub(crate) race: ScratchPage,
}

/// A frame that is not this domain's (for grants naming it).
pub(crate) fn foreign_mfn(si: &StartInfo) -> Result<u64, &'static str> {
    (1..4096)
        .find(|&m| xenstore::va_of_mfn(si, m).is_none())
        .ok_or("every low frame is dom0's")
}

impl Vbd {
    pub(crate) fn new(env: &mut Env<'_>) -> Result<Vbd, &'static str> {
        let front = Path::new(VBD_FRONT);
        let mut buf = [0u8; 128];
        let back = frontend::read_str(&mut env.xs, &front.join("backend"), &mut buf)
            .map(Path::new)
            .ok_or("dom0 has no vbd 51712 (dom0_disk=vda1)")?;
        pvrt::println!("hostile: vbd 51712, backend {}", back.as_str());
        let ring_page = env.page()?;
        let big_ring = env.page()?;
        for i in 1..4 {
            let p = env.page()?;
            pvrt::ensure!(
                p.va == big_ring.va + i * region::PAGE_SIZE,
                "the big ring's pages are not contiguous"
            );
            env.gt.grant(G_BIG_RING + i as u32, DOMID_XEN, &p, false);
        }
        env.gt.grant(G_BIG_RING, DOMID_XEN, &big_ring, false);
        let vbd = Vbd {
            front,
            back,
            ring: Ring::new(&ring_page, BLKIF_RING_ENTRY_BYTES),
            ring_page,
            ring_gref: G_VBD_RING,
            expect_sectors: HOSTILE_P1_SECTORS,
            big_ring,
            big: false,
            alias: false,
            race_written: false,
            port: 0,
            prod: 0,
            cons: 0,
            sectors: 0,
            discard: false,
            next_id: 1,
            data: env.page()?,
            data_ro: env.page()?,
            indirect: env.page()?,
            race: env.page()?,
        };
        let foreign = ScratchPage {
            va: 0,
            mfn: foreign_mfn(env.si)?,
        };
        env.gt.grant(G_DATA, DOMID_XEN, &vbd.data, false);
        env.gt.grant(G_DATA_RO, DOMID_XEN, &vbd.data_ro, true);
        env.gt.grant(G_OTHER_DOM, OTHER_DOM, &vbd.data, false);
        env.gt.grant(G_FOREIGN, DOMID_XEN, &foreign, false);
        env.gt.grant(G_INDIRECT, DOMID_XEN, &vbd.indirect, false);
        let l4 = ScratchPage {
            va: env.si.pt_base,
            mfn: region::mfn_of(env.si, env.si.pt_base),
        };
        env.gt.grant(G_PAGE_TABLE, DOMID_XEN, &l4, false);
        env.gt
            .grant_raw(G_TRANSITIVE, DOMID_XEN, vbd.data.mfn, GTF_TRANSITIVE);
        env.gt
            .grant_raw(G_TRANSFER, DOMID_XEN, vbd.data.mfn, GTF_ACCEPT_TRANSFER);
        env.gt.grant(G_RACE, DOMID_XEN, &vbd.race, true);
        env.gt.grant(G_RACE_FOREIGN, DOMID_XEN, &foreign, false);
        fill_page(&vbd.race, |off| hostile_write_word(2, off));
        Ok(vbd)
    }

    /// Another vbd of dom0 (`front`), sharing this one's data pages and grants, on its
    /// own ring page (grant `ring_gref`).
    pub(crate) fn another(
        &self,
        env: &mut Env<'_>,
        front: &str,
        ring_gref: u32,
        sectors: u64,
    ) -> Result<Vbd, &'static str> {
        let front = Path::new(front);
        let mut buf = [0u8; 128];
        let back = frontend::read_str(&mut env.xs, &front.join("backend"), &mut buf)
            .map(Path::new)
            .ok_or("the second vbd has no backend node")?;
        let ring_page = env.page()?;
        Ok(Vbd {
            front,
            back,
            ring: Ring::new(&ring_page, BLKIF_RING_ENTRY_BYTES),
            ring_page,
            ring_gref,
            expect_sectors: sectors,
            big_ring: self.big_ring,
            big: false,
            alias: false,
            race_written: false,
            port: 0,
            prod: 0,
            cons: 0,
            sectors: 0,
            discard: false,
            next_id: 1,
            data: self.data,
            data_ro: self.data_ro,
            indirect: self.indirect,
            race: self.race,
        })
    }

    /// blkfront's connect: the ring, the port, Initialised; the backend's Connected.
    pub(crate) fn connect(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        frontend::wait_state(&mut env.xs, &self.back, state::INIT_WAIT, WAIT_MS)
            .map_err(|_| "the vbd backend is not at InitWait")?;
        if self.alias {
            // Both pages of a two-page ring are the same grant: the backend sees a
            // 64-entry ring whose halves alias; the first 32 entries are where this
            // one-page view has them.
            self.ring = Ring::new(&self.ring_page, BLKIF_RING_ENTRY_BYTES);
            env.gt
                .grant(self.ring_gref, DOMID_XEN, &self.ring_page, false);
            env.write_number(&self.front.join("ring-page-order"), 1)?;
            env.write_number(&self.front.join("ring-ref0"), self.ring_gref.into())?;
            env.write_number(&self.front.join("ring-ref1"), self.ring_gref.into())?;
        } else if self.big {
            self.ring = Ring::over(self.big_ring.va, 4, BLKIF_RING_ENTRY_BYTES);
            env.write_number(&self.front.join("ring-page-order"), 2)?;
            for i in 0..4u32 {
                let mut name = *b"ring-ref0";
                name[8] += i as u8;
                let name = core::str::from_utf8(&name).unwrap_or("ring-ref0");
                env.write_number(&self.front.join(name), (G_BIG_RING + i).into())?;
            }
        } else {
            self.ring = Ring::new(&self.ring_page, BLKIF_RING_ENTRY_BYTES);
            env.gt
                .grant(self.ring_gref, DOMID_XEN, &self.ring_page, false);
            for node in [
                "ring-page-order",
                "ring-ref0",
                "ring-ref1",
                "ring-ref2",
                "ring-ref3",
            ] {
                let _ = env.xs.remove(self.front.join(node).as_str());
            }
            env.write_number(&self.front.join("ring-ref"), self.ring_gref.into())?;
        }
        self.port = control::alloc_unbound(DOMID_XEN)?;
        env.write_number(&self.front.join("event-channel"), self.port.into())?;
        env.write(&self.front.join("protocol"), b"x86_64-abi")?;
        frontend::write_state(&mut env.xs, &self.front, state::INITIALISED)?;
        frontend::wait_state(&mut env.xs, &self.back, state::CONNECTED, WAIT_MS)
            .map_err(|_| "the vbd backend did not connect")?;
        self.sectors = frontend::read_number(&mut env.xs, &self.back.join("sectors"))
            .ok_or("the vbd backend wrote no sectors")?;
        self.discard =
            frontend::read_number(&mut env.xs, &self.back.join("feature-discard")) == Some(1);
        pvrt::ensure!(
            self.sectors == self.expect_sectors,
            "the vbd has {} sectors, expected {}",
            self.sectors,
            self.expect_sectors
        );
        self.prod = 0;
        self.cons = 0;
        Ok(())
    }

    /// Handshakes the backend must refuse, from InitWait back to InitWait.
    pub(crate) fn handshake_attacks(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        use Value::{Num, OtherDomPort, StorePort, Text};
        let attacks: [(&str, &[(&str, Value)]); 13] = [
            (
                "vbd ring-ref an unused grant",
                &[("ring-ref", Num(G_UNUSED.into()))],
            ),
            (
                "vbd ring-ref past the table",
                &[("ring-ref", Num(G_PAST_TABLE.into()))],
            ),
            (
                "vbd ring-ref a read-only grant",
                &[("ring-ref", Num(G_DATA_RO.into()))],
            ),
            (
                "vbd ring-ref a grant to another domain",
                &[("ring-ref", Num(G_OTHER_DOM.into()))],
            ),
            (
                "vbd ring-ref a frame not the frontend's",
                &[("ring-ref", Num(G_FOREIGN.into()))],
            ),
            (
                "vbd ring-ref the frontend's L4 page table",
                &[("ring-ref", Num(G_PAGE_TABLE.into()))],
            ),
            ("vbd ring-ref not a number", &[("ring-ref", Text(b"16x"))]),
            (
                "vbd event-channel the xenstore port",
                &[("event-channel", StorePort)],
            ),
            ("vbd event-channel no port", &[("event-channel", Num(4000))]),
            (
                "vbd event-channel unbound for another domain",
                &[("event-channel", OtherDomPort)],
            ),
            (
                "vbd ring-page-order 5 (4 offered)",
                &[("ring-page-order", Num(5))],
            ),
            (
                "vbd ring-page-order 1 with an unused second page",
                &[
                    ("ring-page-order", Num(1)),
                    ("ring-ref0", Num(G_VBD_RING.into())),
                    ("ring-ref1", Num(G_UNUSED.into())),
                ],
            ),
            (
                "vbd protocol x86_32-abi",
                &[("protocol", Text(b"x86_32-abi"))],
            ),
        ];
        for (what, nodes) in attacks {
            frontend::wait_state(&mut env.xs, &self.back, state::INIT_WAIT, WAIT_MS)
                .map_err(|_| "the vbd backend is not at InitWait")?;
            self.ring.reset();
            env.gt.grant(G_VBD_RING, DOMID_XEN, &self.ring_page, false);
            let port = control::alloc_unbound(DOMID_XEN)?;
            env.write_number(&self.front.join("ring-ref"), G_VBD_RING.into())?;
            env.write_number(&self.front.join("event-channel"), port.into())?;
            env.write(&self.front.join("protocol"), b"x86_64-abi")?;
            refused_handshake(
                env,
                what,
                &self.front,
                &self.back,
                nodes,
                port,
                state::INITIALISED,
            )?;
        }
        Ok(())
    }

    /// The frontend starts over (Initialising straight from Connected) with a ring of
    /// reads in flight: the backend drops them, and nothing of them reaches the next
    /// ring or the pages they named.
    pub(crate) fn restart_in_flight(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let n = self.ring.size();
        for k in 0..n {
            let mut r = page_req(OP_READ, u64::from(k) * 8, G_DATA);
            r.id = self.next_id + u64::from(k);
            self.ring.write(self.prod.wrapping_add(k), r.as_bytes());
        }
        self.next_id += u64::from(n);
        self.prod = self.prod.wrapping_add(n);
        self.ring.publish(self.prod);
        events::send(self.port);
        frontend::write_state(&mut env.xs, &self.front, state::INITIALISING)?;
        let restarted = frontend::wait_state(&mut env.xs, &self.back, state::INIT_WAIT, WAIT_MS);
        fill_page(&self.data, |off| 0x1234_0000_0000_0000 | off);
        events::close(self.port);
        self.connect(env)?;
        // Time for any late completion to land.
        let until = pvrt::time::now() + 300 * pvrt::time::NS_PER_MS;
        while pvrt::time::now() < until {
            pvrt::sched_yield();
        }
        let fresh = self.ring.rsp_prod();
        let page = check_page(&self.data, |off| 0x1234_0000_0000_0000 | off);
        env.t.check(
            Kind::Attack,
            "vbd frontend restarted with a ring of reads in flight",
            restarted.is_ok() && fresh == 0 && page.is_none(),
            format_args!(
                "backend back at InitWait: {}, responses on the new ring {fresh}, the old \
                 requests' page changed at {page:?}",
                restarted.is_ok()
            ),
        );
        self.read_check(env, "vbd read after the restart", 0, |off| {
            hostile_disk_word(disk_offset(0) + off)
        });
        Ok(())
    }

    /// The frontend closes its end of the connected event channel: nothing can kick the
    /// backend, which stays connected; the frontend's next connection (whose port may
    /// well be the same number) works.
    pub(crate) fn close_connected_port(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let old = self.port;
        let rc = events::close(old);
        let still = frontend::read_state(&mut env.xs, &self.back) == Some(state::CONNECTED);
        env.t.check(
            Kind::Attack,
            "vbd event channel closed by the frontend while connected",
            rc == 0 && still,
            format_args!("close {rc}, backend still connected: {still}"),
        );
        self.reconnect(env)?;
        pvrt::println!(
            "hostile: vbd reconnected on port {} (the closed one was {old})",
            self.port
        );
        self.read_check(
            env,
            "vbd read after the port was closed and the device reconnected",
            0,
            |off| hostile_disk_word(disk_offset(0) + off),
        );
        Ok(())
    }

    /// The frontend removes its whole device directory while connected: the backend reads
    /// it as Closed and lets go; a frontend that writes the directory again (state,
    /// ring details) connects again.
    pub(crate) fn remove_directory(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let rc = env.xs.remove(self.front.as_str());
        let closed = frontend::wait_state(&mut env.xs, &self.back, state::CLOSED, WAIT_MS);
        env.t.check(
            Kind::Attack,
            "vbd frontend directory removed while connected",
            rc.is_ok() && closed.is_ok(),
            format_args!(
                "rm {}, backend state {}",
                if rc.is_ok() { "done" } else { "refused" },
                match closed {
                    Ok(()) => state::CLOSED,
                    Err(s) => s,
                }
            ),
        );
        events::close(self.port);
        frontend::write_state(&mut env.xs, &self.front, state::INITIALISING)?;
        self.connect(env)?;
        self.read_check(
            env,
            "vbd read after the frontend directory was written again",
            0,
            |off| hostile_disk_word(disk_offset(0) + off),
        );
        Ok(())
    }

    /// The frontend closes and starts over after the backend closed the device.
    pub(crate) fn reconnect(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        frontend::write_state(&mut env.xs, &self.front, state::CLOSING)?;
        frontend::write_state(&mut env.xs, &self.front, state::CLOSED)?;
        frontend::wait_state(&mut env.xs, &self.back, state::CLOSED, WAIT_MS)
            .map_err(|_| "the vbd backend did not close")?;
        events::close(self.port);
        frontend::write_state(&mut env.xs, &self.front, state::INITIALISING)?;
        self.connect(env)
    }

    /// Sends one request (its id set here) and waits for its response.
    pub(crate) fn request(&mut self, bytes: &mut [u8]) -> Option<BlkifResponse> {
        let id = self.next_id;
        self.next_id += 1;
        bytes[8..16].copy_from_slice(&id.to_le_bytes());
        self.ring.write(self.prod, bytes);
        self.prod = self.prod.wrapping_add(1);
        self.ring.publish(self.prod);
        events::send(self.port);
        if !self.ring.wait_responses(self.prod, WAIT_MS) {
            return None;
        }
        let mut raw = [0u8; 16];
        self.ring.read(self.cons, &mut raw);
        self.cons = self.cons.wrapping_add(1);
        BlkifResponse::read_from_bytes(&raw)
            .ok()
            .filter(|r| r.id == id)
    }

    /// One request whose response must be `want` with operation `op`.
    pub(crate) fn io(
        &mut self,
        env: &mut Env<'_>,
        kind: Kind,
        what: &str,
        bytes: &mut [u8],
        want: i16,
        op: u8,
    ) -> bool {
        match self.request(bytes) {
            Some(r) => {
                let ok = r.status == want && r.operation == op;
                env.t.check(
                    kind,
                    what,
                    ok,
                    format_args!(
                        "status {} op {} (expected {want}, op {op})",
                        r.status, r.operation
                    ),
                );
                ok
            }
            None => {
                env.t
                    .check(kind, what, false, format_args!("no response with its id"));
                false
            }
        }
    }

    pub(crate) fn refused(&mut self, env: &mut Env<'_>, what: &str, mut req: BlkifRequest) {
        let op = req.operation;
        self.io(
            env,
            Kind::Attack,
            what,
            req.as_mut_bytes(),
            BLKIF_RSP_ERROR,
            op,
        );
    }

    /// Reads partition sectors `sector..sector + 8` into the data page and checks them
    /// against `word`.
    pub(crate) fn read_check(
        &mut self,
        env: &mut Env<'_>,
        what: &str,
        sector: u64,
        word: impl Fn(u64) -> u64,
    ) {
        fill_page(&self.data, |_| 0xdead_beef_dead_beef);
        let mut r = page_req(OP_READ, sector, G_DATA);
        if !self.io(
            env,
            Kind::Legit,
            what,
            r.as_mut_bytes(),
            BLKIF_RSP_OKAY,
            OP_READ,
        ) {
            return;
        }
        let bad = check_page(&self.data, word);
        env.t.check(
            Kind::Legit,
            what,
            bad.is_none(),
            format_args!("data at byte {bad:?} differs"),
        );
    }

    pub(crate) fn write_page(&mut self, env: &mut Env<'_>, what: &str, sector: u64, tag: u64) {
        fill_page(&self.data, |off| hostile_write_word(tag, off));
        let mut r = page_req(OP_WRITE, sector, G_DATA);
        self.io(
            env,
            Kind::Legit,
            what,
            r.as_mut_bytes(),
            BLKIF_RSP_OKAY,
            OP_WRITE,
        );
    }

    pub(crate) fn attacks(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let end = self.sectors;
        // Legitimate I/O first: the device works before it is attacked.
        self.read_check(env, "vbd read of sectors 0-7", 0, |off| {
            hostile_disk_word(disk_offset(0) + off)
        });
        self.write_page(env, "vbd write of sectors 64-71", HOSTILE_FIRST_WRITE, 1);
        self.read_check(
            env,
            "vbd read back of sectors 64-71",
            HOSTILE_FIRST_WRITE,
            |off| hostile_write_word(1, off),
        );

        // Grants.
        self.refused(
            env,
            "vbd read into an unused grant",
            page_req(OP_READ, 0, G_UNUSED),
        );
        self.refused(
            env,
            "vbd read into a grant past the table",
            page_req(OP_READ, 0, G_PAST_TABLE),
        );
        self.refused(
            env,
            "vbd write from a grant to another domain",
            page_req(OP_WRITE, 256, G_OTHER_DOM),
        );
        self.refused(
            env,
            "vbd read into a grant to another domain",
            page_req(OP_READ, 0, G_OTHER_DOM),
        );
        fill_page(&self.data_ro, |off| 0xee00_0000_0000_0000 | off);
        self.refused(
            env,
            "vbd read into a read-only grant",
            page_req(OP_READ, 0, G_DATA_RO),
        );
        let bad = check_page(&self.data_ro, |off| 0xee00_0000_0000_0000 | off);
        env.t.check(
            Kind::Attack,
            "vbd read into a read-only grant left the page alone",
            bad.is_none(),
            format_args!("first changed byte {bad:?}"),
        );
        self.refused(
            env,
            "vbd read into a grant of a frame not the frontend's",
            page_req(OP_READ, 0, G_FOREIGN),
        );
        self.refused(
            env,
            "vbd read into a transitive grant entry",
            page_req(OP_READ, 0, G_TRANSITIVE),
        );
        self.refused(
            env,
            "vbd write from an accept-transfer grant entry",
            page_req(OP_WRITE, 256, G_TRANSFER),
        );
        // (Were it written, the kernel's L4 would hold disk data: it would not run on.)
        self.refused(
            env,
            "vbd read into a writable grant of the frontend's own L4 page table",
            page_req(OP_READ, 0, G_PAGE_TABLE),
        );
        self.refused(
            env,
            "vbd write from a grant of a frame not the frontend's",
            page_req(OP_WRITE, 256, G_FOREIGN),
        );

        // Sectors.
        self.refused(env, "vbd read past the end", page_req(OP_READ, end, G_DATA));
        self.refused(
            env,
            "vbd read starting inside, ending outside",
            page_req(OP_READ, end - 4, G_DATA),
        );
        self.refused(
            env,
            "vbd write starting inside, ending outside",
            page_req(OP_WRITE, end - 4, G_DATA),
        );
        self.refused(
            env,
            "vbd read with sector + length overflowing",
            page_req(OP_READ, u64::MAX - 3, G_DATA),
        );
        self.refused(
            env,
            "vbd write at sector 2^63",
            page_req(OP_WRITE, 1 << 63, G_DATA),
        );
        self.refused(
            env,
            "vbd write of 11 segments crossing the end",
            blk_req(OP_WRITE, end - 80, &[(G_DATA, 0, 7); 11]),
        );

        // Segments.
        self.refused(
            env,
            "vbd read with first_sect > last_sect",
            blk_req(OP_READ, 0, &[(G_DATA, 5, 2)]),
        );
        self.refused(
            env,
            "vbd read with last_sect 8",
            blk_req(OP_READ, 0, &[(G_DATA, 0, 8)]),
        );
        self.refused(
            env,
            "vbd write with last_sect 255",
            blk_req(OP_WRITE, 0, &[(G_DATA, 0, 255)]),
        );
        self.refused(env, "vbd read of 0 segments", blk_req(OP_READ, 0, &[]));
        self.refused(env, "vbd write of 0 segments", blk_req(OP_WRITE, 0, &[]));
        let mut twelve = blk_req(OP_READ, 0, &[(G_DATA, 0, 0); 11]);
        twelve.nr_segments = 12;
        self.refused(env, "vbd read of 12 segments", twelve);
        let mut huge = blk_req(OP_READ, 0, &[(G_DATA, 0, 0); 11]);
        huge.nr_segments = 255;
        self.refused(env, "vbd read of 255 segments", huge);

        // Operations.
        for (what, op) in [
            (
                "vbd write barrier (not offered)",
                BlkifOp::WriteBarrier.raw(),
            ),
            ("vbd operation 4 (reserved)", 4),
            ("vbd operation 7", 7),
            ("vbd operation 255", 255),
        ] {
            let mut r = page_req(op, 0, G_DATA);
            self.io(
                env,
                Kind::Attack,
                what,
                r.as_mut_bytes(),
                BLKIF_RSP_EOPNOTSUPP,
                op,
            );
        }
        let mut flush = blk_req(BlkifOp::FlushDiskcache.raw(), 0, &[]);
        self.io(
            env,
            Kind::Legit,
            "vbd flush",
            flush.as_mut_bytes(),
            BLKIF_RSP_OKAY,
            BlkifOp::FlushDiskcache.raw(),
        );

        // Discards: an error when the disk discards, "not supported" when it does not.
        let want = if self.discard {
            BLKIF_RSP_ERROR
        } else {
            BLKIF_RSP_EOPNOTSUPP
        };
        let op = BlkifOp::Discard.raw();
        for (what, sector, n) in [
            ("vbd discard past the end", end, 8),
            ("vbd discard starting inside, ending outside", end - 8, 16),
            ("vbd discard of 2^64-1 sectors", 0, u64::MAX),
            (
                "vbd discard with sector + length overflowing",
                8,
                u64::MAX - 4,
            ),
        ] {
            let mut r = discard(sector, n);
            self.io(env, Kind::Attack, what, r.as_mut_bytes(), want, op);
        }

        self.indirect_attacks(env);
        self.full_ring(env);
        let ring = self.ring_page;
        balloon_held_page(env, "vbd ring page given back while connected", &ring)?;
        self.read_check(
            env,
            "vbd read after the ring page was offered back",
            0,
            |off| hostile_disk_word(disk_offset(0) + off),
        );
        self.race(env)?;
        self.kick_and_grant_races(env)?;
        self.indirect_race(env)?;

        // Ring indices: one past the ring's capacity, then behind what was answered.
        let size = self.ring.size();
        self.overflow(
            env,
            "vbd req_prod one past the ring's capacity",
            self.prod.wrapping_add(size + 1),
        )?;
        self.overflow(
            env,
            "vbd req_prod wrapped behind rsp_prod",
            self.prod.wrapping_sub(1),
        )?;
        self.overflow(
            env,
            "vbd req_prod 2^31 ahead",
            self.prod.wrapping_add(1 << 31),
        )?;
        // A four-page ring (entries straddle its pages): a full ring's worth of reads in
        // flight, then one past its 128 entries. Back to one page after.
        self.big = true;
        self.reconnect(env)?;
        pvrt::ensure!(
            self.ring.size() == 128,
            "a four-page ring has {} entries",
            self.ring.size()
        );
        self.full_ring(env);
        self.big = false;
        self.overflow(
            env,
            "vbd req_prod one past a four-page ring's capacity",
            self.prod.wrapping_add(129),
        )?;
        self.restart_in_flight(env)?;
        self.close_connected_port(env)?;
        self.ring_as_data(env)?;
        self.revoked_ring_grant(env)?;
        self.flipping_req_prod(env)?;
        self.aliased_ring(env)
    }

    /// The ring grant's `GTF_reading | GTF_writing`, as the hypervisor keeps them in the
    /// shared entry while the grant is in use.
    pub(crate) fn ring_grant_in_use(&self, env: &Env<'_>) -> u16 {
        // SAFETY: the entry's first word is in the kernel's mapped grant frame.
        let word = unsafe { (env.gt.entry_va(self.ring_gref) as *const u32).read_volatile() };
        (word as u16) & (GTF_READING | GTF_WRITING)
    }

    /// A two-page ring whose pages are one grant (pinned twice): it connects and serves;
    /// the grant shows in use while connected and is given back whole (both pins) once
    /// the device lets go.
    pub(crate) fn aliased_ring(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let single = self.ring_grant_in_use(env);
        self.alias = true;
        self.ring.publish(self.prod.wrapping_add(1000));
        events::send(self.port);
        frontend::wait_state(&mut env.xs, &self.back, state::CLOSING, WAIT_MS)
            .map_err(|_| "the vbd did not close after an overflow")?;
        self.reconnect(env)?;
        self.read_check(
            env,
            "vbd read on a ring whose two pages are one grant",
            0,
            |off| hostile_disk_word(disk_offset(0) + off),
        );
        let connected = self.ring_grant_in_use(env);
        self.alias = false;
        frontend::write_state(&mut env.xs, &self.front, state::CLOSING)?;
        frontend::write_state(&mut env.xs, &self.front, state::CLOSED)?;
        frontend::wait_state(&mut env.xs, &self.back, state::CLOSED, WAIT_MS)
            .map_err(|_| "the vbd backend did not close")?;
        let released = self.ring_grant_in_use(env);
        let both = GTF_READING | GTF_WRITING;
        env.t.check(
            Kind::Attack,
            "vbd ring of two pages that are one grant",
            single == both && connected == both && released == 0,
            format_args!(
                "grant in use (reading|writing) with a one-page ring {single:#x}, with the \
                 aliased ring {connected:#x}, once closed {released:#x}"
            ),
        );
        events::close(self.port);
        frontend::write_state(&mut env.xs, &self.front, state::INITIALISING)?;
        self.connect(env)?;
        self.read_check(env, "vbd read after the aliased ring", 0, |off| {
            hostile_disk_word(disk_offset(0) + off)
        });
        Ok(())
    }

    /// vCPU 1 flips `req_prod` between a ring of valid reads and 2^31 past it while
    /// vCPU 0 kicks: the backend either sees the overflow and closes the device, or
    /// serves the reads — every response for one of them, once — and a reconnect works.
    pub(crate) fn flipping_req_prod(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let n = self.ring.size();
        let base = self.next_id;
        for k in 0..n {
            let mut r = page_req(OP_READ, u64::from(k) * 8, G_DATA);
            r.id = base + u64::from(k);
            self.ring.write(self.prod.wrapping_add(k), r.as_bytes());
        }
        self.next_id += u64::from(n);
        let good = self.prod.wrapping_add(n);
        RACE_VARIANTS[0].0.store(good.into(), Ordering::SeqCst);
        RACE_VARIANTS[1]
            .0
            .store(good.wrapping_add(1 << 31).into(), Ordering::SeqCst);
        RACE_RING.store(self.ring.entry_va(0) - 64, Ordering::SeqCst);
        RACE_MODE.store(RACE_INDEX, Ordering::SeqCst);
        let before = MUTATIONS.load(Ordering::SeqCst);
        RACE_ON.store(true, Ordering::SeqCst);
        let started = wait_for(|| MUTATIONS.load(Ordering::SeqCst) > before);
        for _ in 0..200 {
            events::send(self.port);
            pvrt::sched_yield();
        }
        RACE_ON.store(false, Ordering::SeqCst);
        let stopped = wait_for(|| MUTATOR_IDLE.load(Ordering::SeqCst));
        pvrt::ensure!(started && stopped, "vCPU 1 did not take part");
        let flips = MUTATIONS.load(Ordering::SeqCst) - before;
        self.prod = good;
        self.ring.publish(good);
        events::send(self.port);
        let closed = frontend::wait_state(&mut env.xs, &self.back, state::CLOSING, 500).is_ok();
        let (ok, errors, wrong) = if closed {
            (0, 0, 0)
        } else {
            self.collect(n, base)
        };
        env.t.check(
            Kind::Attack,
            "vbd req_prod flipped between valid and 2^31 ahead while kicked",
            closed || (ok == n && wrong == 0),
            format_args!(
                "{}; {ok} OK, {errors} errors, {wrong} wrong; {flips} flips",
                if closed {
                    "the device closed"
                } else {
                    "the reads were served"
                }
            ),
        );
        if !closed {
            self.ring.publish(self.prod.wrapping_add(1000));
            events::send(self.port);
            frontend::wait_state(&mut env.xs, &self.back, state::CLOSING, WAIT_MS)
                .map_err(|_| "the vbd did not close after an overflow")?;
        }
        self.reconnect(env)?;
        self.read_check(env, "vbd read after the flipped req_prod", 0, |off| {
            hostile_disk_word(disk_offset(0) + off)
        });
        Ok(())
    }

    /// A read into the ring's own page: disk data lands on the ring (its indices
    /// included). Whatever the backend makes of the ring after that — a response, or a
    /// closed device when the indices it reads back overflow — it must not fault, and a
    /// reconnect works.
    pub(crate) fn ring_as_data(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let mut r = page_req(OP_READ, 0, self.ring_gref);
        let id = self.next_id;
        self.next_id += 1;
        r.id = id;
        self.ring.write(self.prod, r.as_bytes());
        self.prod = self.prod.wrapping_add(1);
        self.ring.publish(self.prod);
        events::send(self.port);
        let closed = frontend::wait_state(&mut env.xs, &self.back, state::CLOSING, 2000).is_ok();
        // The disk's words now sit where the indices were: rsp_prod is whatever the
        // backend wrote last.
        env.t.check(
            Kind::Attack,
            "vbd read into the ring's own page",
            true,
            format_args!(
                "the device {}",
                if closed {
                    "closed (the indices read back overflowed)"
                } else {
                    "stayed connected"
                }
            ),
        );
        if !closed {
            // Break it for good, to start over from a known state.
            self.ring.publish(self.prod.wrapping_add(1000));
            events::send(self.port);
            frontend::wait_state(&mut env.xs, &self.back, state::CLOSING, WAIT_MS)
                .map_err(|_| "the vbd did not close after an overflow")?;
        }
        self.reconnect(env)?;
        self.read_check(env, "vbd read after the ring was read into", 0, |off| {
            hostile_disk_word(disk_offset(0) + off)
        });
        Ok(())
    }

    /// The frontend ends its ring's grant (entry zeroed) while connected. Xen's rule:
    /// a grant in use cannot be revoked; the backend keeps the frame it holds. Which the
    /// backend does here is reported, not judged (`note:`): either way it must not
    /// fault, and a reconnect with the grant restored works.
    pub(crate) fn revoked_ring_grant(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        env.gt.grant_raw(self.ring_gref, 0, 0, 0);
        fill_page(&self.data, |_| 0);
        let mut r = page_req(OP_READ, 0, G_DATA);
        let served = self.request(r.as_mut_bytes());
        pvrt::println!(
            "hostile: note: vbd ring grant revoked while connected: the ring is {}",
            match served {
                Some(r) if r.status == BLKIF_RSP_OKAY =>
                    "still served (the backend keeps the frame it holds)",
                Some(_) => "answered with an error",
                None => "no longer served",
            }
        );
        frontend::write_state(&mut env.xs, &self.front, state::CLOSING)?;
        frontend::wait_state(&mut env.xs, &self.back, state::CLOSING, WAIT_MS)
            .map_err(|_| "the vbd did not follow the frontend's Closing")?;
        self.reconnect(env)?;
        self.read_check(
            env,
            "vbd read after its ring grant was revoked and the device reconnected",
            0,
            |off| hostile_disk_word(disk_offset(0) + off),
        );
        Ok(())
    }

    /// Writes `segs` (gref, first, last) into the indirect page.
    pub(crate) fn indirect_segments(&self, segs: impl Iterator<Item = (u32, u8, u8)>) {
        for (i, (gref, first, last)) in segs.enumerate().take(512) {
            let word = u64::from(gref) | u64::from(first) << 32 | u64::from(last) << 40;
            // SAFETY: entry `i` < 512 of the indirect page, a scratch page mapped
            // writable.
            unsafe { self.indirect.words().add(i).write_volatile(word) };
        }
    }

    pub(crate) fn indirect_attacks(&mut self, env: &mut Env<'_>) {
        // A valid indirect read first: 12 one-sector segments from sector 0, segment
        // i into sector slot i % 8 of the data page (the later ones overwrite).
        self.indirect_segments((0..12).map(|i| (G_DATA, i % 8, i % 8)));
        fill_page(&self.data, |_| 0);
        let mut r = indirect(OP_READ, 0, 12, G_INDIRECT);
        if self.io(
            env,
            Kind::Legit,
            "vbd indirect read of 12 segments",
            r.as_mut_bytes(),
            BLKIF_RSP_OKAY,
            OP_READ,
        ) {
            let bad = check_page(&self.data, |off| {
                let slot = off / 512;
                let sector = if slot < 4 { 8 + slot } else { slot };
                hostile_disk_word(disk_offset(sector) + off % 512)
            });
            env.t.check(
                Kind::Legit,
                "vbd indirect read's data",
                bad.is_none(),
                format_args!("data at byte {bad:?} differs"),
            );
        }

        self.indirect_segments((0..40).map(|_| (G_DATA, 0, 7)));
        let end = self.sectors;
        for (what, mut req, op) in [
            (
                "vbd indirect read of 0 segments",
                indirect(OP_READ, 0, 0, G_INDIRECT),
                OP_READ,
            ),
            (
                "vbd indirect read of 33 segments (32 offered)",
                indirect(OP_READ, 0, 33, G_INDIRECT),
                OP_READ,
            ),
            (
                "vbd indirect write of 65535 segments",
                indirect(OP_WRITE, 0, u16::MAX, G_INDIRECT),
                OP_WRITE,
            ),
            (
                "vbd indirect with indirect_op discard",
                indirect(BlkifOp::Discard.raw(), 0, 12, G_INDIRECT),
                BlkifOp::Discard.raw(),
            ),
            (
                "vbd indirect with indirect_op indirect",
                indirect(BlkifOp::Indirect.raw(), 0, 12, G_INDIRECT),
                BlkifOp::Indirect.raw(),
            ),
            (
                "vbd indirect read through an unused indirect grant",
                indirect(OP_READ, 0, 12, G_UNUSED),
                OP_READ,
            ),
            (
                "vbd indirect read through an indirect grant of a foreign frame",
                indirect(OP_READ, 0, 12, G_FOREIGN),
                OP_READ,
            ),
            (
                "vbd indirect write crossing the end",
                indirect(OP_WRITE, end - 64, 12, G_INDIRECT),
                OP_WRITE,
            ),
        ] {
            self.io(
                env,
                Kind::Attack,
                what,
                req.as_mut_bytes(),
                BLKIF_RSP_ERROR,
                op,
            );
        }
        // A bad segment among good ones in the indirect page.
        self.indirect_segments((0..12).map(|i| (G_DATA, 0, if i == 9 { 9 } else { 7 })));
        let mut r = indirect(OP_READ, 0, 12, G_INDIRECT);
        self.io(
            env,
            Kind::Attack,
            "vbd indirect read with last_sect 9 in its 10th segment",
            r.as_mut_bytes(),
            BLKIF_RSP_ERROR,
            OP_READ,
        );
        self.indirect_segments((0..12).map(|i| (if i == 11 { G_UNUSED } else { G_DATA }, 0, 7)));
        let mut r = indirect(OP_WRITE, 512, 12, G_INDIRECT);
        self.io(
            env,
            Kind::Attack,
            "vbd indirect write with an unused grant in its last segment",
            r.as_mut_bytes(),
            BLKIF_RSP_ERROR,
            OP_WRITE,
        );
    }

    /// A whole ring of reads at once: every one answered OK, once.
    pub(crate) fn full_ring(&mut self, env: &mut Env<'_>) {
        let n = self.ring.size();
        let base = self.next_id;
        for k in 0..n {
            let mut r = page_req(OP_READ, u64::from(k) * 8, G_DATA);
            r.id = base + u64::from(k);
            self.ring.write(self.prod.wrapping_add(k), r.as_bytes());
        }
        self.next_id += u64::from(n);
        self.prod = self.prod.wrapping_add(n);
        self.ring.publish(self.prod);
        events::send(self.port);
        let (ok, errors, wrong) = self.collect(n, base);
        env.t.check(
            Kind::Legit,
            "vbd full ring of reads",
            ok == n,
            format_args!("{ok} OK of {n}, {errors} errors, {wrong} wrong"),
        );
    }

    /// Waits for `n` responses to requests `base..base + n`: (OK ones, error ones, wrong
    /// ones: a status neither OK nor error, an unknown or repeated id, a missing
    /// response).
    pub(crate) fn collect(&mut self, n: u32, base: u64) -> (u32, u32, u32) {
        let got_all = self.ring.wait_responses(self.prod, WAIT_MS);
        let mut seen = 0u128;
        let (mut ok, mut errors, mut bad) = (0, 0, 0);
        let have = if got_all {
            n
        } else {
            self.ring.rsp_prod().wrapping_sub(self.cons).min(n)
        };
        for _ in 0..have {
            let mut raw = [0u8; 16];
            self.ring.read(self.cons, &mut raw);
            self.cons = self.cons.wrapping_add(1);
            let r = BlkifResponse::read_from_bytes(&raw).unwrap_or(BlkifResponse::new(0, 0, 0));
            let k = r.id.wrapping_sub(base);
            if k >= u64::from(n) || seen & (1u128 << k) != 0 {
                bad += 1;
                continue;
            }
            seen |= 1u128 << k;
            match r.status {
                BLKIF_RSP_OKAY => ok += 1,
                BLKIF_RSP_ERROR => errors += 1,
                _ => bad += 1,
            }
        }
        (ok, errors, bad + (n - have))
    }

    /// The request-rewriting race (see the module's documentation).
    pub(crate) fn race(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let s_in = HOSTILE_RACE_WRITE;
        let s_out = self.sectors - 4;
        // A torn read of the sector must give one of the two.
        pvrt::ensure!(
            s_in ^ s_out < 256,
            "the race's sectors differ above the low byte"
        );
        let seg = |gref: u32, last: u8| u64::from(gref) | u64::from(last) << 40;
        let variants = [
            (s_in, seg(G_RACE, 7)),
            (s_out, seg(G_RACE, 7)),
            (s_in, seg(G_RACE_FOREIGN, 7)),
            (s_in, seg(G_RACE_UNUSED, 7)),
            (s_in, seg(G_RACE, 9)),
        ];
        for (i, (sector, seg)) in variants.into_iter().enumerate() {
            RACE_VARIANTS[i].0.store(sector, Ordering::SeqCst);
            RACE_VARIANTS[i].1.store(seg, Ordering::SeqCst);
        }
        RACE_RING.store(self.ring.entry_va(0), Ordering::SeqCst);
        RACE_MODE.store(RACE_VBD, Ordering::SeqCst);
        let before = MUTATIONS.load(Ordering::SeqCst);
        RACE_ON.store(true, Ordering::SeqCst);
        let started = wait_for(|| MUTATIONS.load(Ordering::SeqCst) > before);

        let n = self.ring.size();
        let (mut ok, mut errors, mut wrong) = (0u32, 0u32, 0u32);
        for _ in 0..RACE_ROUNDS {
            let base = self.next_id;
            for k in 0..n {
                let mut r = page_req(OP_WRITE, s_in, G_RACE);
                r.id = base + u64::from(k);
                self.ring.write(self.prod.wrapping_add(k), r.as_bytes());
            }
            self.next_id += u64::from(n);
            self.prod = self.prod.wrapping_add(n);
            self.ring.publish(self.prod);
            events::send(self.port);
            let (good, refused, bad) = self.collect(n, base);
            ok += good;
            errors += refused;
            wrong += bad;
        }
        RACE_ON.store(false, Ordering::SeqCst);
        let stopped = wait_for(|| MUTATOR_IDLE.load(Ordering::SeqCst));
        let mutations = MUTATIONS.load(Ordering::SeqCst) - before;
        let total = RACE_ROUNDS as u32 * n;
        pvrt::ensure!(started && stopped, "vCPU 1 did not take part in the race");
        // Every request got one response, OK or an error.
        env.t.check(
            Kind::Attack,
            "vbd requests rewritten while being read",
            ok + errors == total && wrong == 0 && mutations > 0,
            format_args!(
                "{total} requests, {ok} OK, {errors} errors, {wrong} wrong; vCPU 1 rewrote \
                 the ring {mutations} times"
            ),
        );
        // The page the valid variant names holds the valid data (or its old data if no
        // valid variant was ever read).
        let expect_race = ok > 0;
        self.race_written = expect_race;
        self.read_check(env, "vbd read of the race's page", s_in, |off| {
            if expect_race {
                hostile_write_word(2, off)
            } else {
                hostile_disk_word(disk_offset(s_in) + off)
            }
        });
        Ok(())
    }

    /// Runs `rounds` rings of reads of sectors 0.. into `gref` while vCPU 1 does what
    /// `mode` says with `target` and the variants' first words `words`: (OK, errors,
    /// wrong, vCPU 1's iterations).
    pub(crate) fn reads_while(
        &mut self,
        rounds: u32,
        gref: u32,
        mode: u64,
        target: u64,
        words: [u64; 2],
    ) -> Result<(u32, u32, u32, u64), &'static str> {
        for (i, w) in words.into_iter().enumerate() {
            RACE_VARIANTS[i].0.store(w, Ordering::SeqCst);
        }
        RACE_RING.store(target, Ordering::SeqCst);
        RACE_MODE.store(mode, Ordering::SeqCst);
        let before = MUTATIONS.load(Ordering::SeqCst);
        RACE_ON.store(true, Ordering::SeqCst);
        let started = wait_for(|| MUTATIONS.load(Ordering::SeqCst) > before);
        let n = self.ring.size();
        let (mut ok, mut errors, mut wrong) = (0, 0, 0);
        for _ in 0..rounds {
            let base = self.next_id;
            for k in 0..n {
                let mut r = page_req(OP_READ, u64::from(k) * 8, gref);
                r.id = base + u64::from(k);
                self.ring.write(self.prod.wrapping_add(k), r.as_bytes());
            }
            self.next_id += u64::from(n);
            self.prod = self.prod.wrapping_add(n);
            self.ring.publish(self.prod);
            events::send(self.port);
            let (a, b, c) = self.collect(n, base);
            ok += a;
            errors += b;
            wrong += c;
        }
        RACE_ON.store(false, Ordering::SeqCst);
        let stopped = wait_for(|| MUTATOR_IDLE.load(Ordering::SeqCst));
        pvrt::ensure!(started && stopped, "vCPU 1 did not take part");
        Ok((ok, errors, wrong, MUTATIONS.load(Ordering::SeqCst) - before))
    }

    /// vCPU 1 rewrites the indirect page's 8 segments (one sector each of the race's
    /// page: valid, from a foreign frame, or `last_sect` 9) while vCPU 0 sends indirect
    /// writes of the race's page through it: each OK or an error, once, and the page on
    /// disk the valid data (checked by the host).
    fn indirect_race(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let seg = |gref: u32, last: u64| u64::from(gref) | last << 40;
        // Variant words: the mutator or's in first_sect = k, and last_sect = k where the
        // word has none.
        let words = [seg(G_RACE, 0), seg(G_RACE_FOREIGN, 0), seg(G_RACE, 9)];
        // All five slots: the mutator may start from any of them.
        for (i, v) in RACE_VARIANTS.iter().enumerate() {
            v.1.store(words[i % words.len()], Ordering::SeqCst);
        }
        self.indirect_segments((0..8).map(|k| (G_RACE, k, k)));
        // The grant race read disk data into the race's page: its data again.
        fill_page(&self.race, |off| hostile_write_word(2, off));
        RACE_RING.store(self.indirect.va, Ordering::SeqCst);
        RACE_MODE.store(RACE_INDIRECT, Ordering::SeqCst);
        let before = MUTATIONS.load(Ordering::SeqCst);
        RACE_ON.store(true, Ordering::SeqCst);
        let started = wait_for(|| MUTATIONS.load(Ordering::SeqCst) > before);
        let n = self.ring.size();
        let (mut ok, mut errors, mut wrong) = (0, 0, 0);
        for _ in 0..8 {
            let base = self.next_id;
            for k in 0..n {
                let mut r = indirect(OP_WRITE, HOSTILE_RACE_WRITE, 8, G_INDIRECT);
                r.id = base + u64::from(k);
                self.ring.write(self.prod.wrapping_add(k), r.as_bytes());
            }
            self.next_id += u64::from(n);
            self.prod = self.prod.wrapping_add(n);
            self.ring.publish(self.prod);
            events::send(self.port);
            let (a, b, c) = self.collect(n, base);
            ok += a;
            errors += b;
            wrong += c;
        }
        RACE_ON.store(false, Ordering::SeqCst);
        let stopped = wait_for(|| MUTATOR_IDLE.load(Ordering::SeqCst));
        pvrt::ensure!(started && stopped, "vCPU 1 did not take part");
        let flips = MUTATIONS.load(Ordering::SeqCst) - before;
        let total = 8 * n;
        env.t.check(
            Kind::Attack,
            "vbd indirect segments rewritten while being read",
            ok + errors == total && wrong == 0 && flips > 0,
            format_args!(
                "{total} indirect writes, {ok} OK, {errors} errors, {wrong} wrong; vCPU 1 \
                 rewrote the page {flips} times"
            ),
        );
        // Whatever was written is the race's page (or, if nothing valid was ever read,
        // what was there).
        self.race_written |= ok > 0;
        let written = self.race_written;
        self.read_check(
            env,
            "vbd read of the race's page after the indirect race",
            HOSTILE_RACE_WRITE,
            |off| {
                if written {
                    hostile_write_word(2, off)
                } else {
                    hostile_disk_word(disk_offset(HOSTILE_RACE_WRITE) + off)
                }
            },
        );
        Ok(())
    }

    /// vCPU 1 kicks the vbd's port in a loop while vCPU 0 does I/O; then flips the data
    /// page's grant entry between granted and not while the reads complete.
    pub(crate) fn kick_and_grant_races(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        let port = u64::from(self.port);
        let (ok, errors, wrong, kicks) = self.reads_while(4, G_DATA, RACE_KICK, port, [0; 2])?;
        let n = 4 * self.ring.size();
        env.t.check(
            Kind::Legit,
            "vbd reads while vCPU 1 kicks the port in a loop",
            ok == n && kicks > 0,
            format_args!("{ok} OK of {n}, {errors} errors, {wrong} wrong; {kicks} kicks"),
        );
        let granted = u64::from(DOMID_XEN) << 16 | u64::from(GTF_PERMIT_ACCESS);
        let entry = env.gt.entry_va(G_RACE);
        let (ok, errors, wrong, flips) =
            self.reads_while(8, G_RACE, RACE_GRANT, entry, [granted, 0])?;
        let n = 8 * self.ring.size();
        env.t.check(
            Kind::Attack,
            "vbd reads into a grant revoked and restored while they complete",
            ok + errors == n && wrong == 0 && flips > 0,
            format_args!("{n} reads, {ok} OK, {errors} errors, {wrong} wrong; {flips} flips"),
        );
        env.gt.grant(G_RACE, DOMID_XEN, &self.race, true);
        Ok(())
    }

    /// Publishes `new_prod` over garbage entries: the backend must close the device
    /// without a response, then a reconnect works.
    pub(crate) fn overflow(
        &mut self,
        env: &mut Env<'_>,
        what: &str,
        new_prod: u32,
    ) -> Result<(), &'static str> {
        let before = self.ring.rsp_prod();
        for k in 0..self.ring.size() {
            self.ring.write(k, &[0xa5; BLKIF_RING_ENTRY_BYTES]);
        }
        self.ring.publish(new_prod);
        events::send(self.port);
        let closed = frontend::wait_state(&mut env.xs, &self.back, state::CLOSING, WAIT_MS);
        let after = self.ring.rsp_prod();
        env.t.check(
            Kind::Attack,
            what,
            closed.is_ok() && after == before,
            format_args!(
                "backend state {}, rsp_prod {before} -> {after}",
                match closed {
                    Ok(()) => state::CLOSING,
                    Err(s) => s,
                }
            ),
        );
        self.reconnect(env)?;
        self.read_check(env, "vbd read after a reconnect", 0, |off| {
            hostile_disk_word(disk_offset(0) + off)
        });
        Ok(())
    }

    /// Real I/O on the device after everything.
    pub(crate) fn final_io(&mut self, env: &mut Env<'_>) -> Result<(), &'static str> {
        self.write_page(
            env,
            "vbd final write of sectors 128-135",
            HOSTILE_FINAL_WRITE,
            3,
        );
        self.read_check(env, "vbd final read back", HOSTILE_FINAL_WRITE, |off| {
            hostile_write_word(3, off)
        });
        self.read_check(
            env,
            "vbd first write still there",
            HOSTILE_FIRST_WRITE,
            |off| hostile_write_word(1, off),
        );
        self.remove_directory(env)?;
        Ok(())
    }
}

/// dom0 attaches partition 2 to itself read-only as xvdb (`DeviceAttach`, as `fv
/// block-attach 0 phy:vda2 xvdb r` would) and tries to change it.
/// Returns the ring page it used.
pub(crate) fn read_only_vbd(env: &mut Env<'_>, vbd: &Vbd) -> Result<ScratchPage, &'static str> {
    let mut req = DeviceAttach::new_zeroed();
    req.kind = DEVICE_VBD;
    req.devid = DEVID_AUTO;
    req.vdev = XVDB;
    req.mode = VBD_MODE_READ;
    req.device_type = VBD_TYPE_DISK;
    set_padded(&mut req.target, b"vda2").ok_or("target name")?;
    set_padded(&mut req.vdev_name, b"xvdb").ok_or("vdev name")?;
    control::domctl(DomctlCmd::DeviceAttach, 0, &req)
        .map_err(|_| "attaching vda2 read-only as xvdb failed")?;
    let mut ro = vbd.another(env, XVDB_FRONT, G_VBD2_RING, HOSTILE_P2_SECTORS)?;
    ro.connect(env)?;
    let info = frontend::read_number(&mut env.xs, &ro.back.join("info")).unwrap_or(0);
    env.t.check(
        Kind::Legit,
        "vbd xvdb (vda2, r) connected read-only",
        info & u64::from(VDISK_READONLY) != 0,
        format_args!("info {info}"),
    );
    let p2 = |sector: u64| (HOSTILE_P2_START + sector) * 512;
    ro.read_check(env, "vbd xvdb read of sectors 0-7", 0, |off| {
        hostile_disk_word(p2(0) + off)
    });
    ro.refused(env, "vbd xvdb write", page_req(OP_WRITE, 0, G_DATA));
    ro.refused(
        env,
        "vbd xvdb flush with data",
        blk_req(BlkifOp::FlushDiskcache.raw(), 8, &[(G_DATA, 0, 7)]),
    );
    ro.indirect_segments((0..12).map(|_| (G_DATA, 0, 7)));
    let mut r = indirect(OP_WRITE, 16, 12, G_INDIRECT);
    ro.io(
        env,
        Kind::Attack,
        "vbd xvdb indirect write",
        r.as_mut_bytes(),
        BLKIF_RSP_ERROR,
        OP_WRITE,
    );
    let want = if ro.discard {
        BLKIF_RSP_ERROR
    } else {
        BLKIF_RSP_EOPNOTSUPP
    };
    let mut r = discard(0, 8);
    ro.io(
        env,
        Kind::Attack,
        "vbd xvdb discard",
        r.as_mut_bytes(),
        want,
        BlkifOp::Discard.raw(),
    );
    let mut flush = blk_req(BlkifOp::FlushDiskcache.raw(), 0, &[]);
    ro.io(
        env,
        Kind::Legit,
        "vbd xvdb flush",
        flush.as_mut_bytes(),
        BLKIF_RSP_OKAY,
        BlkifOp::FlushDiskcache.raw(),
    );
    ro.read_check(env, "vbd xvdb read after the refused writes", 0, |off| {
        hostile_disk_word(p2(0) + off)
    });

    // A forced detach with a ring of reads in flight: the device goes at once (its
    // directories with it), the reads' late completions reach nothing.
    let n = ro.ring.size();
    for k in 0..n {
        let mut r = page_req(OP_READ, u64::from(k) * 8, G_DATA);
        r.id = ro.next_id + u64::from(k);
        ro.ring.write(ro.prod.wrapping_add(k), r.as_bytes());
    }
    ro.prod = ro.prod.wrapping_add(n);
    ro.ring.publish(ro.prod);
    events::send(ro.port);
    let detach = DeviceDetach {
        kind: DEVICE_VBD,
        devid: XVDB,
        flags: DETACH_FORCE,
    };
    let rc = control::domctl(DomctlCmd::DeviceDetach, 0, &detach).map(|_| 0);
    fill_page(&vbd.data, |off| 0x5678_0000_0000_0000 | off);
    let until = pvrt::time::now() + 300 * pvrt::time::NS_PER_MS;
    while pvrt::time::now() < until {
        pvrt::sched_yield();
    }
    let gone = frontend::read_state(&mut env.xs, &ro.back).is_none();
    let page = check_page(&vbd.data, |off| 0x5678_0000_0000_0000 | off);
    env.t.check(
        Kind::Attack,
        "vbd xvdb detached by force with a ring of reads in flight",
        rc == Ok(0) && gone && page.is_none(),
        format_args!(
            "detach {rc:?}, backend directory gone: {gone}, the reads' page changed at {page:?} after"
        ),
    );
    events::close(ro.port);
    Ok(ro.ring_page)
}
