//! Service-level tests: whole messages in, whole messages out.

use alloc::{format, string::String, vec, vec::Vec};

use ferrovisor_abi::xen::xs_wire::{XsErrorCode, XsType, XsdSockmsg, XENSTORE_PAYLOAD_MAX};
use zerocopy::{FromBytes, IntoBytes};

use super::{ring::TestRing, *};

fn msg(ty: XsType, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    message(ty.raw(), req_id, tx_id, payload)
}

/// A decoded message: type, req_id, tx_id, payload.
#[derive(Debug, PartialEq, Eq)]
struct Msg {
    ty: u32,
    req_id: u32,
    tx_id: u32,
    payload: Vec<u8>,
}

fn decode(bytes: &[u8]) -> Msg {
    let (hdr, payload) = XsdSockmsg::read_from_prefix(bytes).unwrap();
    assert_eq!(hdr.len as usize, payload.len());
    Msg {
        ty: hdr.r#type,
        req_id: hdr.req_id,
        tx_id: hdr.tx_id,
        payload: payload.to_vec(),
    }
}

struct World {
    xs: Xenstore,
    req_id: u32,
}

impl World {
    fn new() -> Self {
        let mut xs = Xenstore::new();
        for d in [1, 2] {
            xs.introduce(d).unwrap();
        }
        World { xs, req_id: 100 }
    }

    fn with_quota(quota: Quota) -> Self {
        let mut xs = Xenstore::with_quota(quota);
        for d in [1, 2] {
            xs.introduce(d).unwrap();
        }
        World { xs, req_id: 100 }
    }

    /// Every message queued for `dom`.
    fn drain(&mut self, dom: DomId) -> Vec<Msg> {
        core::iter::from_fn(|| self.xs.pop_output(dom))
            .map(|m| decode(&m))
            .collect()
    }

    /// Sends a request and returns the reply's payload, or the error it names. Watch
    /// events queued for `dom` are left in place after the reply.
    fn tx_req(
        &mut self,
        dom: DomId,
        ty: XsType,
        tx: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, XsErrorCode> {
        self.req_id += 1;
        let id = self.req_id;
        let before = self.xs.queued(dom);
        self.xs.handle(dom, &msg(ty, id, tx, payload));
        // The reply is the message queued right after what was there before.
        let mut all = self.drain(dom);
        let reply = all.remove(before);
        for m in all {
            self.xs
                .conns
                .get_mut(&dom)
                .unwrap()
                .out
                .push_back(message(m.ty, m.req_id, m.tx_id, &m.payload));
        }
        assert_eq!(reply.req_id, id);
        assert_eq!(reply.tx_id, tx);
        if reply.ty == XsType::ErrorReply.raw() {
            let name = reply
                .payload
                .strip_suffix(b"\0")
                .expect("error names end in NUL");
            return Err(XsErrorCode::from_name(name).expect("known error name"));
        }
        assert_eq!(reply.ty, ty.raw());
        Ok(reply.payload)
    }

    fn req(&mut self, dom: DomId, ty: XsType, payload: &[u8]) -> Result<Vec<u8>, XsErrorCode> {
        self.tx_req(dom, ty, 0, payload)
    }

    fn write(&mut self, dom: DomId, path: &str, value: &[u8]) -> Result<(), XsErrorCode> {
        let mut p = Vec::from(path.as_bytes());
        p.push(0);
        p.extend_from_slice(value);
        self.req(dom, XsType::Write, &p)
            .map(|r| assert_eq!(r, b"OK\0"))
    }

    fn read(&mut self, dom: DomId, path: &str) -> Result<Vec<u8>, XsErrorCode> {
        self.req(dom, XsType::Read, &z(path))
    }

    fn events(&mut self, dom: DomId) -> Vec<(String, String)> {
        self.drain(dom)
            .into_iter()
            .map(|m| {
                assert_eq!(m.ty, XsType::WatchEvent.raw());
                assert_eq!((m.req_id, m.tx_id), (0, 0));
                let parts: Vec<&[u8]> = m.payload.split(|&b| b == 0).collect();
                assert_eq!(parts.len(), 3, "path NUL token NUL");
                (
                    String::from_utf8(parts[0].to_vec()).unwrap(),
                    String::from_utf8(parts[1].to_vec()).unwrap(),
                )
            })
            .collect()
    }

    fn watch(&mut self, dom: DomId, path: &str, token: &str) {
        let p = format!("{path}\0{token}\0");
        assert_eq!(
            self.req(dom, XsType::Watch, p.as_bytes()),
            Ok(b"OK\0".to_vec())
        );
        assert_eq!(
            self.events(dom),
            [(String::from(path), String::from(token))]
        );
    }

    fn set_perms(
        &mut self,
        dom: DomId,
        path: &str,
        perms: &[&str],
    ) -> Result<Vec<u8>, XsErrorCode> {
        let mut p = z(path);
        for x in perms {
            p.extend_from_slice(&z(x));
        }
        self.req(dom, XsType::SetPerms, &p)
    }
}

/// `s` followed by a NUL.
fn z(s: &str) -> Vec<u8> {
    let mut v = Vec::from(s.as_bytes());
    v.push(0);
    v
}

fn names(list: &[&str]) -> Vec<u8> {
    list.iter().flat_map(|s| z(s)).collect()
}

// ---- basic operations ----

#[test]
fn initial_tree_is_owned_by_dom0() {
    let mut w = World::new();
    assert_eq!(
        w.req(0, XsType::Directory, &z("/")),
        Ok(names(&["local", "tool"]))
    );
    assert_eq!(w.req(0, XsType::GetPerms, &z("/local")), Ok(z("n0")));
    assert_eq!(
        w.req(1, XsType::Read, &z("/tool")),
        Err(XsErrorCode::Eacces)
    );
}

#[test]
fn write_then_read() {
    let mut w = World::new();
    w.write(0, "/tool/x", b"hello").unwrap();
    assert_eq!(w.read(0, "/tool/x"), Ok(b"hello".to_vec()));
    w.write(0, "/tool/x", b"").unwrap();
    assert_eq!(w.read(0, "/tool/x"), Ok(Vec::new()));
}

#[test]
fn value_may_hold_nul_bytes() {
    let mut w = World::new();
    w.write(1, "bin", b"a\0b\0").unwrap();
    assert_eq!(w.read(1, "bin"), Ok(b"a\0b\0".to_vec()));
}

#[test]
fn read_missing_is_enoent() {
    let mut w = World::new();
    assert_eq!(w.read(0, "/nope"), Err(XsErrorCode::Enoent));
}

#[test]
fn write_creates_missing_parents_and_directory_reads_as_empty_value() {
    let mut w = World::new();
    w.write(0, "/a/b/c", b"v").unwrap();
    assert_eq!(w.read(0, "/a/b"), Ok(Vec::new()));
    assert_eq!(w.req(0, XsType::Directory, &z("/a")), Ok(names(&["b"])));
}

#[test]
fn mkdir_creates_and_keeps_existing_values() {
    let mut w = World::new();
    assert_eq!(w.req(1, XsType::Mkdir, &z("d/e")), Ok(z("OK")));
    assert_eq!(w.read(1, "d/e"), Ok(Vec::new()));
    w.write(1, "d", b"keep").unwrap();
    assert_eq!(w.req(1, XsType::Mkdir, &z("d")), Ok(z("OK")));
    assert_eq!(w.read(1, "d"), Ok(b"keep".to_vec()));
}

#[test]
fn rm_removes_subtree() {
    let mut w = World::new();
    w.write(1, "a/b/c", b"1").unwrap();
    w.write(1, "a/d", b"2").unwrap();
    assert_eq!(w.req(1, XsType::Rm, &z("a")), Ok(z("OK")));
    assert_eq!(w.read(1, "a/b/c"), Err(XsErrorCode::Enoent));
    assert_eq!(w.read(1, "a"), Err(XsErrorCode::Enoent));
    assert_eq!(
        w.req(1, XsType::Directory, &z("/local/domain/1")),
        Ok(Vec::new())
    );
}

#[test]
fn rm_missing_with_parent_is_ok_without_parent_enoent() {
    let mut w = World::new();
    assert_eq!(w.req(1, XsType::Rm, &z("missing")), Ok(z("OK")));
    assert_eq!(
        w.req(1, XsType::Rm, &z("missing/child")),
        Err(XsErrorCode::Enoent)
    );
}

#[test]
fn rm_root_is_einval() {
    let mut w = World::new();
    assert_eq!(w.req(0, XsType::Rm, &z("/")), Err(XsErrorCode::Einval));
}

#[test]
fn directory_lists_children_each_with_nul() {
    let mut w = World::new();
    for c in ["b", "a", "c"] {
        w.write(1, &format!("dir/{c}"), b"").unwrap();
    }
    assert_eq!(
        w.req(1, XsType::Directory, &z("dir")),
        Ok(names(&["a", "b", "c"]))
    );
    assert_eq!(w.req(1, XsType::Directory, &z("dir/a")), Ok(Vec::new()));
}

#[test]
fn directory_part_returns_generation_and_list() {
    let mut w = World::new();
    w.write(1, "dir/x", b"").unwrap();
    w.write(1, "dir/yy", b"").unwrap();
    let gen = w.xs.tree().get("/local/domain/1/dir").unwrap().generation;
    let reply = w.req(1, XsType::DirectoryPart, b"dir\x000\0").unwrap();
    assert_eq!(reply, format!("{gen}\0x\0yy\0\0").into_bytes());
    let reply = w.req(1, XsType::DirectoryPart, b"dir\x002\0").unwrap();
    assert_eq!(reply, format!("{gen}\0yy\0\0").into_bytes());
    assert_eq!(
        w.req(1, XsType::DirectoryPart, b"dir\0x\0"),
        Err(XsErrorCode::Einval)
    );
}

#[test]
fn huge_directory_is_e2big_but_pages_with_directory_part() {
    let mut w = World::new();
    for i in 0..400 {
        w.write(0, &format!("/big/some-long-child-name-{i:04}"), b"")
            .unwrap();
    }
    assert_eq!(
        w.req(0, XsType::Directory, &z("/big")),
        Err(XsErrorCode::E2big)
    );
    let part = w.req(0, XsType::DirectoryPart, b"/big\x000\0").unwrap();
    assert!(part.len() <= XENSTORE_PAYLOAD_MAX as usize);
    assert!(!part.ends_with(b"\0\0"), "first page is not the last");
}

#[test]
fn get_domain_path() {
    let mut w = World::new();
    assert_eq!(
        w.req(1, XsType::GetDomainPath, &z("7")),
        Ok(z("/local/domain/7"))
    );
    assert_eq!(
        w.req(1, XsType::GetDomainPath, &z("x7")),
        Err(XsErrorCode::Einval)
    );
}

#[test]
fn replies_echo_req_and_tx_ids() {
    let mut w = World::new();
    w.xs.handle(1, &msg(XsType::Read, 0xdead_beef, 0, &z("nothing")));
    let r = decode(&w.xs.pop_output(1).unwrap());
    assert_eq!(
        (r.ty, r.req_id, r.tx_id),
        (XsType::ErrorReply.raw(), 0xdead_beef, 0)
    );
    assert_eq!(r.payload, b"ENOENT\0");
}

// ---- malformed messages ----

#[test]
fn malformed_messages_get_errors() {
    let mut w = World::new();
    assert_eq!(
        w.req(1, XsType::Read, b"noterminator"),
        Err(XsErrorCode::Einval)
    );
    assert_eq!(w.req(1, XsType::Read, b"a\0b\0"), Err(XsErrorCode::Einval));
    assert_eq!(w.req(1, XsType::Read, b""), Err(XsErrorCode::Einval));
    assert_eq!(
        w.req(1, XsType::Read, &z("bad//path")),
        Err(XsErrorCode::Einval)
    );
    assert_eq!(
        w.req(1, XsType::Read, &z("@releaseDomain")),
        Err(XsErrorCode::Einval)
    );
    assert_eq!(
        w.req(1, XsType::Write, b"novalue"),
        Err(XsErrorCode::Einval)
    );
    assert_eq!(
        w.req(1, XsType::Watch, &z("onlypath")),
        Err(XsErrorCode::Einval)
    );
    assert_eq!(
        w.req(1, XsType::SetPerms, &z("x")),
        Err(XsErrorCode::Einval)
    );
    assert_eq!(w.req(1, XsType::WatchEvent, b""), Err(XsErrorCode::Enosys));
    assert_eq!(w.req(1, XsType::ErrorReply, b""), Err(XsErrorCode::Enosys));
}

#[test]
fn unknown_type_is_enosys() {
    let mut w = World::new();
    w.xs.handle(1, &message(20, 5, 0, b""));
    w.xs.handle(1, &message(9999, 6, 0, b""));
    let replies = w.drain(1);
    assert_eq!(replies.len(), 2);
    for r in replies {
        assert_eq!(r.ty, XsType::ErrorReply.raw());
        assert_eq!(r.payload, b"ENOSYS\0");
    }
}

#[test]
fn length_mismatch_and_short_header_are_einval() {
    let mut w = World::new();
    let mut m = msg(XsType::Read, 3, 0, &z("x"));
    m.push(b'!');
    w.xs.handle(1, &m);
    w.xs.handle(1, &[1, 2, 3]);
    let replies = w.drain(1);
    assert_eq!(replies.len(), 2);
    assert_eq!(
        (replies[0].req_id, replies[0].payload.as_slice()),
        (3, &b"EINVAL\0"[..])
    );
    assert_eq!(replies[1].payload, b"EINVAL\0");
}

#[test]
fn messages_from_unknown_domains_are_ignored() {
    let mut w = World::new();
    let out = w.xs.handle(9, &msg(XsType::Read, 1, 0, &z("/")));
    assert_eq!(out, Outcome::default());
    assert_eq!(w.xs.queued(9), 0);
}

// ---- permissions ----

#[test]
fn domain_home_is_owned_by_the_domain() {
    let mut w = World::new();
    assert_eq!(
        w.req(1, XsType::GetPerms, &z("/local/domain/1")),
        Ok(z("n1"))
    );
    w.write(1, "x", b"mine").unwrap();
    assert_eq!(w.req(1, XsType::GetPerms, &z("x")), Ok(z("n1")));
}

#[test]
fn unprivileged_domain_cannot_touch_others_nodes() {
    let mut w = World::new();
    w.write(1, "secret", b"s").unwrap();
    assert_eq!(
        w.read(2, "/local/domain/1/secret"),
        Err(XsErrorCode::Eacces)
    );
    assert_eq!(
        w.write(2, "/local/domain/1/secret", b"x"),
        Err(XsErrorCode::Eacces)
    );
    assert_eq!(
        w.write(2, "/local/domain/1/new", b"x"),
        Err(XsErrorCode::Eacces)
    );
    assert_eq!(
        w.req(2, XsType::Rm, &z("/local/domain/1/secret")),
        Err(XsErrorCode::Eacces)
    );
    assert_eq!(
        w.req(2, XsType::Directory, &z("/local/domain/1")),
        Err(XsErrorCode::Eacces)
    );
    assert_eq!(w.write(2, "/tool/x", b"x"), Err(XsErrorCode::Eacces));
    assert_eq!(w.read(0, "/local/domain/1/secret"), Ok(b"s".to_vec()));
}

#[test]
fn granted_access_works() {
    let mut w = World::new();
    w.write(1, "shared", b"s").unwrap();
    w.set_perms(1, "shared", &["n1", "r2"]).unwrap();
    assert_eq!(w.read(2, "/local/domain/1/shared"), Ok(b"s".to_vec()));
    assert_eq!(
        w.write(2, "/local/domain/1/shared", b"x"),
        Err(XsErrorCode::Eacces)
    );
    w.set_perms(1, "shared", &["n1", "b2"]).unwrap();
    w.write(2, "/local/domain/1/shared", b"x").unwrap();
    assert_eq!(w.read(1, "shared"), Ok(b"x".to_vec()));
}

#[test]
fn nodes_created_by_a_guest_in_a_writable_dir_are_owned_by_it() {
    let mut w = World::new();
    w.write(0, "/backend/vif", b"").unwrap();
    w.set_perms(0, "/backend/vif", &["n0", "b2"]).unwrap();
    w.write(2, "/backend/vif/2/0/state", b"1").unwrap();
    for p in ["/backend/vif/2", "/backend/vif/2/0/state"] {
        assert_eq!(
            w.req(0, XsType::GetPerms, &z(p)),
            Ok(names(&["n2", "b2"])),
            "{p}"
        );
    }
    // dom0 creating below keeps the parent's owner.
    w.write(0, "/backend/vif/2/0/mac", b"00").unwrap();
    assert_eq!(
        w.req(0, XsType::GetPerms, &z("/backend/vif/2/0/mac")),
        Ok(names(&["n2", "b2"]))
    );
}

#[test]
fn set_perms_by_non_owner_is_refused() {
    let mut w = World::new();
    w.write(1, "n", b"").unwrap();
    w.set_perms(1, "n", &["n1", "b2"]).unwrap();
    // Domain 2 may write but is not the owner.
    assert_eq!(
        w.set_perms(2, "/local/domain/1/n", &["b2"]),
        Err(XsErrorCode::Eacces)
    );
    // The owner may not give the node away.
    assert_eq!(w.set_perms(1, "n", &["b2"]), Err(XsErrorCode::Eperm));
    // dom0 may.
    w.set_perms(0, "/local/domain/1/n", &["b2"]).unwrap();
    assert_eq!(
        w.req(2, XsType::GetPerms, &z("/local/domain/1/n")),
        Ok(z("b2"))
    );
}

#[test]
fn set_perms_rejects_bad_lists() {
    let mut w = World::new();
    w.write(1, "n", b"").unwrap();
    assert_eq!(w.set_perms(1, "n", &["q1"]), Err(XsErrorCode::Einval));
    assert_eq!(w.set_perms(1, "n", &["r"]), Err(XsErrorCode::Einval));
    assert_eq!(w.set_perms(1, "missing", &["n1"]), Err(XsErrorCode::Enoent));
}

#[test]
fn privileged_ops_are_refused_to_guests() {
    let mut w = World::new();
    assert_eq!(
        w.req(1, XsType::Introduce, b"5\x00100\x003\0"),
        Err(XsErrorCode::Eacces)
    );
    assert_eq!(w.req(1, XsType::Release, &z("2")), Err(XsErrorCode::Eacces));
    assert_eq!(
        w.req(1, XsType::IsDomainIntroduced, &z("2")),
        Err(XsErrorCode::Eacces)
    );
    assert_eq!(
        w.req(1, XsType::Control, &z("check")),
        Err(XsErrorCode::Eacces)
    );
    assert!(!w.xs.is_introduced(5));
}

#[test]
fn introduce_and_release_over_the_wire() {
    let mut w = World::new();
    w.req(0, XsType::Introduce, b"5\x00-100\x003\0").unwrap();
    assert_eq!(w.req(0, XsType::IsDomainIntroduced, &z("5")), Ok(z("T")));
    assert_eq!(
        w.req(0, XsType::GetPerms, &z("/local/domain/5")),
        Ok(z("n5"))
    );
    assert_eq!(w.req(0, XsType::Release, &z("5")), Ok(z("OK")));
    assert_eq!(w.req(0, XsType::IsDomainIntroduced, &z("5")), Ok(z("F")));
    assert_eq!(w.req(0, XsType::Release, &z("5")), Err(XsErrorCode::Enoent));
    assert_eq!(
        w.req(0, XsType::Introduce, b"0\x001\x001\0"),
        Err(XsErrorCode::Einval)
    );
    assert_eq!(
        w.req(0, XsType::Introduce, b"32752\x001\x001\0"),
        Err(XsErrorCode::Einval)
    );
    assert_eq!(w.req(0, XsType::Control, &z("check")), Ok(z("OK")));
}

#[test]
fn introduce_outcome_names_the_page_and_port() {
    let mut xs = Xenstore::new();
    let out = xs.handle(0, &msg(XsType::Introduce, 1, 0, b"5\x00-100\x003\0"));
    assert_eq!(
        out.introduced,
        [Introduction {
            dom: 5,
            gfn: -100,
            port: 3
        }]
    );
    let out = xs.handle(0, &msg(XsType::Release, 2, 0, &z("5")));
    assert_eq!(out.released, [5]);
}

// ---- watches ----

fn ev(path: &str, token: &str) -> (String, String) {
    (String::from(path), String::from(token))
}

#[test]
fn watch_fires_on_node_and_ancestors_with_the_token() {
    let mut w = World::new();
    w.watch(0, "/local", "anc");
    w.watch(0, "/local/domain/1/x", "node");
    w.write(1, "x", b"1").unwrap();
    let got = w.events(0);
    assert_eq!(got.len(), 2);
    assert!(got.contains(&ev("/local/domain/1/x", "anc")));
    assert!(got.contains(&ev("/local/domain/1/x", "node")));
    // A sibling only reaches the ancestor watch.
    w.write(1, "y", b"1").unwrap();
    assert_eq!(w.events(0), [ev("/local/domain/1/y", "anc")]);
}

#[test]
fn watch_events_only_reach_domains_that_may_read() {
    let mut w = World::new();
    w.watch(2, "/local/domain/1", "peek");
    w.write(1, "private", b"1").unwrap();
    assert!(w.events(2).is_empty());
    w.write(1, "public", b"1").unwrap();
    w.set_perms(1, "public", &["r1"]).unwrap();
    assert_eq!(w.events(2), [ev("/local/domain/1/public", "peek")]);
}

#[test]
fn relative_watch_gets_relative_paths_and_other_domains_get_events_too() {
    let mut w = World::new();
    w.watch(1, "device", "rel");
    w.watch(0, "/local/domain/1/device", "abs");
    w.write(0, "/local/domain/1/device/vif/0", b"").unwrap();
    assert_eq!(w.events(1), [ev("device/vif/0", "rel")]);
    assert_eq!(w.events(0), [ev("/local/domain/1/device/vif/0", "abs")]);
}

#[test]
fn mkdir_rm_and_set_perms_fire() {
    let mut w = World::new();
    w.watch(1, "/local/domain/1", "t");
    w.req(1, XsType::Mkdir, &z("d")).unwrap();
    assert_eq!(w.events(1), [ev("/local/domain/1/d", "t")]);
    w.req(1, XsType::Mkdir, &z("d")).unwrap();
    assert!(
        w.events(1).is_empty(),
        "mkdir of an existing node changes nothing"
    );
    w.set_perms(1, "d", &["r1"]).unwrap();
    assert_eq!(w.events(1), [ev("/local/domain/1/d", "t")]);
    w.req(1, XsType::Rm, &z("d")).unwrap();
    assert_eq!(w.events(1), [ev("/local/domain/1/d", "t")]);
}

#[test]
fn rm_fires_watches_on_removed_descendants() {
    let mut w = World::new();
    w.write(1, "a/b/c", b"").unwrap();
    w.watch(1, "/local/domain/1/a/b/c", "deep");
    w.watch(1, "a/zzz", "notyet");
    w.req(1, XsType::Rm, &z("a")).unwrap();
    let got = w.events(1);
    assert_eq!(got.len(), 2);
    assert!(got.contains(&ev("/local/domain/1/a/b/c", "deep")));
    assert!(got.contains(&ev("a/zzz", "notyet")));
}

#[test]
fn unwatch_stops_events() {
    let mut w = World::new();
    w.watch(1, "x", "t");
    assert_eq!(w.req(1, XsType::Unwatch, b"x\0t\0"), Ok(z("OK")));
    w.write(1, "x", b"").unwrap();
    assert!(w.events(1).is_empty());
    assert_eq!(
        w.req(1, XsType::Unwatch, b"x\0t\0"),
        Err(XsErrorCode::Enoent)
    );
}

#[test]
fn duplicate_watch_is_eexist() {
    let mut w = World::new();
    w.watch(1, "x", "t");
    assert_eq!(w.req(1, XsType::Watch, b"x\0t\0"), Err(XsErrorCode::Eexist));
}

#[test]
fn reset_watches_drops_watches_and_transactions() {
    let mut w = World::new();
    w.watch(1, "x", "t");
    let id = w.req(1, XsType::TransactionStart, &z("")).unwrap();
    let id: u32 = core::str::from_utf8(&id[..id.len() - 1])
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(w.req(1, XsType::ResetWatches, &z("")), Ok(z("OK")));
    w.write(1, "x", b"").unwrap();
    assert!(w.events(1).is_empty());
    assert_eq!(
        w.tx_req(1, XsType::Read, id, &z("x")),
        Err(XsErrorCode::Enoent)
    );
}

#[test]
fn special_watches_fire_on_introduce_and_release() {
    let mut w = World::new();
    w.watch(0, "@introduceDomain", "i");
    w.watch(1, "@releaseDomain", "r");
    let out = w.xs.introduce(7).unwrap();
    assert!(out.wake.contains(&0));
    assert_eq!(w.events(0), [ev("@introduceDomain", "i")]);
    let out = w.xs.release(7).unwrap();
    assert_eq!(out.wake, [1]);
    assert_eq!(w.events(1), [ev("@releaseDomain", "r")]);
    assert_eq!(w.xs.introduce(1), Err(XsErrorCode::Eexist));
    assert_eq!(w.xs.release(7), Err(XsErrorCode::Enoent));
}

#[test]
fn release_drops_the_domains_watches_and_output() {
    let mut w = World::new();
    w.watch(2, "x", "t");
    w.write(0, "/local/domain/2/x", b"").unwrap();
    w.xs.release(2).unwrap();
    assert_eq!(w.xs.queued(2), 0);
    w.xs.introduce(2).unwrap();
    w.write(0, "/local/domain/2/x", b"again").unwrap();
    assert!(w.events(2).is_empty());
}

#[test]
fn remove_domain_tree_fires_and_removes() {
    let mut w = World::new();
    w.write(1, "a/b", b"").unwrap();
    w.watch(0, "/local/domain", "t");
    let out = w.xs.remove_domain_tree(1);
    assert_eq!(out.wake, [0]);
    assert_eq!(w.events(0), [ev("/local/domain/1", "t")]);
    assert!(w.xs.tree().get("/local/domain/1/a").is_none());
    assert_eq!(w.xs.tree().owned_by(1), 0);
}

// ---- transactions ----

fn start(w: &mut World, dom: DomId) -> u32 {
    let id = w.req(dom, XsType::TransactionStart, &z("")).unwrap();
    let text = core::str::from_utf8(id.strip_suffix(b"\0").unwrap()).unwrap();
    text.parse().unwrap()
}

fn end(w: &mut World, dom: DomId, tx: u32, commit: bool) -> Result<Vec<u8>, XsErrorCode> {
    w.tx_req(
        dom,
        XsType::TransactionEnd,
        tx,
        if commit { b"T\0" } else { b"F\0" },
    )
}

fn tx_write(
    w: &mut World,
    dom: DomId,
    tx: u32,
    path: &str,
    value: &[u8],
) -> Result<Vec<u8>, XsErrorCode> {
    let mut p = z(path);
    p.extend_from_slice(value);
    w.tx_req(dom, XsType::Write, tx, &p)
}

#[test]
fn transaction_writes_are_invisible_until_commit() {
    let mut w = World::new();
    w.watch(2, "/local/domain/1", "t");
    w.set_perms(1, "/local/domain/1", &["r1"]).unwrap();
    w.events(2);
    let tx = start(&mut w, 1);
    tx_write(&mut w, 1, tx, "k", b"v").unwrap();
    assert_eq!(w.tx_req(1, XsType::Read, tx, &z("k")), Ok(b"v".to_vec()));
    assert_eq!(w.read(1, "k"), Err(XsErrorCode::Enoent));
    assert!(w.events(2).is_empty(), "no events before commit");
    assert_eq!(end(&mut w, 1, tx, true), Ok(z("OK")));
    assert_eq!(w.read(1, "k"), Ok(b"v".to_vec()));
    assert_eq!(w.events(2), [ev("/local/domain/1/k", "t")]);
}

#[test]
fn conflicting_commit_is_eagain_and_applies_nothing() {
    let mut w = World::new();
    w.write(1, "k", b"0").unwrap();
    let tx = start(&mut w, 1);
    assert_eq!(w.tx_req(1, XsType::Read, tx, &z("k")), Ok(b"0".to_vec()));
    tx_write(&mut w, 1, tx, "other", b"tx").unwrap();
    w.write(1, "k", b"1").unwrap();
    assert_eq!(end(&mut w, 1, tx, true), Err(XsErrorCode::Eagain));
    assert_eq!(w.read(1, "other"), Err(XsErrorCode::Enoent));
    // The transaction is gone either way.
    assert_eq!(end(&mut w, 1, tx, true), Err(XsErrorCode::Enoent));
}

#[test]
fn abort_discards() {
    let mut w = World::new();
    let tx = start(&mut w, 1);
    tx_write(&mut w, 1, tx, "k", b"v").unwrap();
    assert_eq!(end(&mut w, 1, tx, false), Ok(z("OK")));
    assert_eq!(w.read(1, "k"), Err(XsErrorCode::Enoent));
}

#[test]
fn transaction_ids_are_private_and_checked() {
    let mut w = World::new();
    let tx = start(&mut w, 1);
    assert_ne!(tx, 0);
    assert_eq!(
        w.tx_req(2, XsType::Read, tx, &z("/")),
        Err(XsErrorCode::Enoent)
    );
    assert_eq!(end(&mut w, 2, tx, true), Err(XsErrorCode::Enoent));
    assert_eq!(
        w.tx_req(1, XsType::Read, 12345, &z("x")),
        Err(XsErrorCode::Enoent)
    );
    assert_eq!(
        w.tx_req(1, XsType::TransactionStart, tx, &z("")),
        Err(XsErrorCode::Ebusy)
    );
    assert_eq!(
        w.tx_req(1, XsType::TransactionEnd, tx, &z("X")),
        Err(XsErrorCode::Einval)
    );
    assert_eq!(end(&mut w, 1, tx, true), Ok(z("OK")));
}

#[test]
fn transaction_rm_and_directory() {
    let mut w = World::new();
    w.write(1, "d/a", b"").unwrap();
    w.write(1, "d/b", b"").unwrap();
    let tx = start(&mut w, 1);
    w.tx_req(1, XsType::Rm, tx, &z("d/a")).unwrap();
    assert_eq!(
        w.tx_req(1, XsType::Directory, tx, &z("d")),
        Ok(names(&["b"]))
    );
    assert_eq!(w.req(1, XsType::Directory, &z("d")), Ok(names(&["a", "b"])));
    end(&mut w, 1, tx, true).unwrap();
    assert_eq!(w.req(1, XsType::Directory, &z("d")), Ok(names(&["b"])));
}

#[test]
fn transaction_limit_for_a_domu_not_dom0() {
    let mut w = World::new();
    for _ in 0..10 {
        start(&mut w, 1);
    }
    assert_eq!(
        w.req(1, XsType::TransactionStart, &z("")),
        Err(XsErrorCode::Enospc)
    );
    for _ in 0..20 {
        start(&mut w, 0);
    }
}

// ---- quotas ----

#[test]
fn node_quota_for_a_domu_not_dom0() {
    let mut w = World::with_quota(Quota {
        nodes: 5,
        ..Quota::default()
    });
    // The home directory counts: 4 more fit.
    for i in 0..4 {
        w.write(1, &format!("n{i}"), b"").unwrap();
    }
    assert_eq!(w.write(1, "n4", b""), Err(XsErrorCode::Enospc));
    assert_eq!(w.write(1, "a/b/c", b""), Err(XsErrorCode::Enospc));
    w.req(1, XsType::Rm, &z("n0")).unwrap();
    w.write(1, "n4", b"").unwrap();
    for i in 0..10 {
        w.write(0, &format!("/tool/n{i}"), b"").unwrap();
    }
}

#[test]
fn value_size_quota_for_a_domu_not_dom0() {
    let mut w = World::new();
    let big = vec![b'x'; 3000];
    assert_eq!(w.write(1, "big", &big), Err(XsErrorCode::Enospc));
    w.write(1, "ok", &big[..2000]).unwrap();
    w.write(0, "/local/domain/1/big", &big).unwrap();
    assert_eq!(w.read(1, "big").map(|v| v.len()), Ok(3000));
}

#[test]
fn watch_quota_for_a_domu_not_dom0() {
    let mut w = World::with_quota(Quota {
        watches: 3,
        ..Quota::default()
    });
    for i in 0..3 {
        w.watch(1, "x", &format!("t{i}"));
    }
    assert_eq!(w.req(1, XsType::Watch, b"x\0t3\0"), Err(XsErrorCode::E2big));
    for i in 0..5 {
        w.watch(0, "x", &format!("t{i}"));
    }
}

#[test]
fn queued_events_are_capped_for_a_domu() {
    let mut w = World::with_quota(Quota {
        queued_messages: 4,
        ..Quota::default()
    });
    w.watch(1, "x", "t");
    for i in 0..10 {
        w.write(1, "x", format!("{i}").as_bytes()).unwrap();
        // Leave the event queued: drain only the replies.
    }
    // tx_req re-queues events, so only the cap's worth survive.
    assert!(w.xs.queued(1) <= 4);
    assert!(w.events(1).len() <= 4);
}

// ---- ring service ----

#[test]
fn service_ring_answers_requests_and_notifies() {
    let mut xs = Xenstore::new();
    xs.introduce(1).unwrap();
    let mut ring = TestRing::new(0);
    let mut m = msg(XsType::Write, 1, 0, b"k\0v");
    m.extend(msg(XsType::Read, 2, 0, &z("k")));
    ring.push_req(&m);
    let (notify, _) = xs.service_ring(1, &mut ring).unwrap();
    assert!(notify);
    let out = ring.pop_rsp();
    let first = decode(&out[..19]);
    assert_eq!((first.req_id, first.payload.as_slice()), (1, &b"OK\0"[..]));
    let second = decode(&out[19..]);
    assert_eq!((second.req_id, second.payload.as_slice()), (2, &b"v"[..]));
}

#[test]
fn service_ring_stops_reading_while_output_is_backed_up() {
    let mut xs = Xenstore::with_quota(Quota {
        queued_messages: 2,
        ..Quota::default()
    });
    xs.introduce(1).unwrap();
    let mut ring = TestRing::new(0);
    // Fill the response ring so nothing can be written.
    ring.rsp_prod = 1024;
    for i in 0..10 {
        ring.push_req(&msg(XsType::Read, i, 0, &z("/")));
    }
    xs.service_ring(1, &mut ring).unwrap();
    assert_eq!(xs.queued(1), 2);
    assert!(
        ring.req_cons != ring.req_prod,
        "unread requests stay in the ring"
    );
    ring.rsp_cons = 1024;
    for _ in 0..20 {
        xs.service_ring(1, &mut ring).unwrap();
        ring.pop_rsp();
    }
    assert_eq!(ring.req_cons, ring.req_prod);
    assert_eq!(xs.queued(1), 0);
}

#[test]
fn events_for_other_domains_are_reported_for_flushing() {
    let mut xs = Xenstore::new();
    xs.introduce(1).unwrap();
    xs.handle(0, &msg(XsType::Watch, 1, 0, b"/local/domain/1\0t\0"));
    while xs.pop_output(0).is_some() {}
    let mut ring = TestRing::new(0);
    ring.push_req(&msg(XsType::Write, 1, 0, b"k\0v"));
    let (_, out) = xs.service_ring(1, &mut ring).unwrap();
    assert_eq!(out.wake, [0]);
    let mut ring0 = TestRing::new(0);
    assert_eq!(xs.flush_ring(0, &mut ring0), Ok(true));
    let e = decode(&ring0.pop_rsp());
    assert_eq!(e.ty, XsType::WatchEvent.raw());
    assert_eq!(e.payload, b"/local/domain/1/k\0t\0");
}

#[test]
fn ring_fault_is_reported_not_a_panic() {
    let mut xs = Xenstore::new();
    xs.introduce(1).unwrap();
    let mut ring = TestRing::new(0);
    ring.req_prod = 0x8000_0000;
    assert_eq!(xs.service_ring(1, &mut ring), Err(RingFault::BadIndex));
}

// ---- hostile input ----

/// xorshift64: deterministic pseudo-random bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, from: &[&'a [u8]]) -> &'a [u8] {
        from[self.below(from.len() as u64) as usize]
    }
}

#[test]
fn random_messages_never_panic() {
    let fragments: &[&[u8]] = &[
        b"/",
        b"a",
        b"/local/domain/1",
        b"x",
        b"\0",
        b"@releaseDomain",
        b"//",
        b"T",
        b"F",
        b"r1",
        b"b0",
        b"n2",
        b"w",
        b"0",
        b"12",
        b"-5",
        b"\xff",
        b"/tool",
        b"..",
        b"4294967296",
    ];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut xs = Xenstore::with_quota(Quota {
        nodes: 50,
        ..Quota::default()
    });
    xs.introduce(1).unwrap();
    xs.introduce(2).unwrap();
    let mut txs = vec![0u32];
    for _ in 0..20_000 {
        let dom = [0, 1, 2, 3][rng.below(4) as usize];
        let ty = rng.below(25) as u32;
        let mut payload = Vec::new();
        for _ in 0..rng.below(6) {
            payload.extend_from_slice(rng.pick(fragments));
        }
        if rng.below(8) == 0 {
            for _ in 0..rng.below(64) {
                payload.push(rng.next() as u8);
            }
        }
        let tx = txs[rng.below(txs.len() as u64) as usize];
        let mut m = message(ty, rng.next() as u32, tx, &payload);
        if rng.below(16) == 0 {
            m.truncate(rng.below(m.len() as u64 + 1) as usize);
        }
        let out = xs.handle(dom, &m);
        for d in out.wake {
            while let Some(reply) = xs.pop_output(d) {
                let r = decode(&reply);
                if d == dom && r.ty == XsType::TransactionStart.raw() {
                    if let Ok(id) = core::str::from_utf8(&r.payload[..r.payload.len() - 1])
                        .unwrap_or("")
                        .parse()
                    {
                        txs.push(id);
                    }
                }
            }
        }
    }
    // The tree is still consistent: every child named exists and has this parent.
    let tree = xs.tree();
    for p in tree.paths_under("/") {
        for c in &tree.get(p).unwrap().children {
            assert!(tree.get(&path::join(p, c)).is_some(), "{p}/{c}");
        }
    }
}

#[test]
fn random_ring_bytes_never_panic() {
    let mut rng = Rng(0xfeed_f00d_dead_beef);
    for round in 0..300 {
        let mut xs = Xenstore::new();
        xs.introduce(1).unwrap();
        let mut ring = TestRing::new(rng.next() as u32);
        for _ in 0..20 {
            let mut bytes = Vec::new();
            if rng.below(2) == 0 {
                // A plausible header with a random type and length.
                let len = rng.below(64) as u32;
                let hdr = XsdSockmsg {
                    r#type: rng.below(24) as u32,
                    req_id: round,
                    tx_id: rng.below(3) as u32,
                    len,
                };
                bytes.extend_from_slice(hdr.as_bytes());
                for _ in 0..len {
                    bytes.push(b"/a\0x1"[rng.below(5) as usize]);
                }
            } else {
                for _ in 0..rng.below(40) {
                    bytes.push(rng.next() as u8);
                }
            }
            ring.push_req(&bytes);
            if rng.below(10) == 0 {
                ring.req_prod = ring.req_prod.wrapping_add(rng.next() as u32);
            }
            if rng.below(10) == 0 {
                ring.rsp_cons = rng.next() as u32;
            }
            if xs.service_ring(1, &mut ring).is_err() {
                break;
            }
            ring.pop_rsp();
        }
    }
}
