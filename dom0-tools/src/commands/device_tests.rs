//! Devices against the fake hypervisor: attaching at create, refusals and their
//! messages, hot-plug, detach and the lists.

use ferrovisor_abi::domctl::{DOMINFO_BLOCKED, DOMINFO_BUILT, DOMINFO_RUNNING};

use super::*;
use crate::{
    commands::create::{execute, plan},
    config,
    hypervisor::fake::Fake,
    table,
};

const MAC1: [u8; 6] = [0x00, 0x16, 0x3e, 0x00, 0x00, 0x01];

fn name(s: &str) -> DomainRef {
    DomainRef::Name(s.into())
}

/// A host with `web1` (3) holding `vda2` writable and a vif.
fn host() -> Fake {
    let mut f = Fake::new();
    f.add_domain(3, "web1", 256, DOMINFO_BUILT | DOMINFO_BLOCKED);
    f.add_vbd(3, "vda2", "xvda", 51712, VBD_MODE_WRITE);
    f.add_vif(3, 0, [0x00, 0x16, 0x3e, 0x0a, 0x0b, 0x0c], "xenbr0");
    f
}

fn guest(devices: &[&str]) -> config::DomainConfig {
    let text = "name='g'\nmemory=4\nkernel='/k'\n";
    let overrides: Vec<String> = devices.iter().map(|s| s.to_string()).collect();
    config::parse(text, "guest.cfg", &overrides)
        .unwrap_or_else(|e| panic!("{e}"))
        .config
}

/// Creates `g` from `devices` overrides; the error message, if any.
fn create(f: &mut Fake, devices: &[&str]) -> Result<DomId, String> {
    let p = plan(&guest(devices), [5; 16], &[MAC1]);
    execute(f, &p, b"kernel", None).map_err(|e| e.to_string())
}

#[test]
fn random_macs_are_xen_local_unicast() {
    let m = random_mac([0xff; 16]);
    assert_eq!(m, [0x00, 0x16, 0x3e, 0x7f, 0xff, 0xff]);
    let m = random_mac([0x80, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(m, [0x00, 0x16, 0x3e, 0x00, 0x01, 0x02]);
}

#[test]
fn create_attaches_every_device_before_unpausing() {
    let mut f = host();
    let dom = create(
        &mut f,
        &[
            "vif=['', 'mac=00:16:3e:44:55:66,bridge=xenbr0']",
            "disk=['phy:vda1,xvdb,w', 'vdev=xvdc,access=ro,target=/dev/vdb', 'phy:vda2,xvdd,w!']",
        ],
    )
    .unwrap();
    let calls: Vec<&str> = f
        .calls
        .iter()
        .map(String::as_str)
        .filter(|c| c.starts_with("domctl") && !c.contains("GetDomainInfo"))
        .collect();
    assert_eq!(
        calls,
        [
            "domctl CreateDomain 0",
            "domctl BuildPv 4",
            "domctl DeviceAttach 4",
            "domctl DeviceAttach 4",
            "domctl DeviceAttach 4",
            "domctl DeviceAttach 4",
            "domctl DeviceAttach 4",
            "domctl UnpauseDomain 4",
        ]
    );
    // The toolstack's own keys come before the devices.
    let last_xs = f
        .calls
        .iter()
        .rposition(|c| c.starts_with("xs_write"))
        .unwrap();
    let first_attach = f
        .calls
        .iter()
        .position(|c| c.contains("DeviceAttach"))
        .unwrap();
    assert!(last_xs < first_attach);
    let devs = &f.domains[&dom].devices;
    assert_eq!(devs.len(), 5);
    // The first vif gets the MAC drawn for it, the second its own; ids 0 and 1.
    assert_eq!(
        (devs[0].kind, devs[0].devid, devs[0].mac),
        (DEVICE_VIF, 0, MAC1)
    );
    assert_eq!(padded_str(&devs[0].bridge), b"xenbr0");
    assert_eq!((devs[1].devid, devs[1].mac[3]), (1, 0x44));
    // Disks: devid = virtual device number, mode and target as written.
    let d = |i: usize| {
        let v = &devs[i];
        (
            v.kind,
            v.devid,
            v.vdev,
            v.mode,
            text(padded_str(&v.target)),
            text(padded_str(&v.vdev_name)),
        )
    };
    assert_eq!(
        d(2),
        (
            DEVICE_VBD,
            51728,
            51728,
            VBD_MODE_WRITE,
            "vda1".into(),
            "xvdb".into()
        )
    );
    assert_eq!(
        d(3),
        (
            DEVICE_VBD,
            51744,
            51744,
            VBD_MODE_READ,
            "vdb".into(),
            "xvdc".into()
        )
    );
    assert_eq!(d(4).3, VBD_MODE_WRITE_SHARED);
    assert_eq!(
        f.domains[&dom].info.flags & DOMINFO_RUNNING,
        DOMINFO_RUNNING
    );
}

#[test]
fn a_refused_device_names_itself_and_what_to_do() {
    let destroyed = "; the half-built domain 4 was destroyed";
    let cases: [(&[&str], String); 7] = [
        (
            &["vif=['bridge=xenbr1']"],
            format!(
                "guest.cfg: vif 0 (mac=00:16:3e:00:00:01, bridge=xenbr1): no switch named \
                 'xenbr1' on this host (the host has: xenbr0){destroyed}"
            ),
        ),
        (
            &["disk=['phy:vda2,xvda,w']"],
            format!(
                "guest.cfg: disk 'phy:vda2,xvda,w': vda2 is attached writable to domain \
                 'web1' (3); use 'w!' to share it writable, or 'r'{destroyed}"
            ),
        ),
        (
            &["disk=['phy:vda,xvda,w']"],
            format!(
                "guest.cfg: disk 'phy:vda,xvda,w': vda overlaps vda2, attached writable to \
                 domain 'web1' (3); use 'w!' to share it writable, or 'r'{destroyed}"
            ),
        ),
        (
            &["disk=['phy:vdc,xvda,w']"],
            format!(
                "guest.cfg: disk 'phy:vdc,xvda,w': no disk or partition named 'vdc' on this \
                 host (the host has: vda, vda1, vda2, vdb; 'fv disk-list' shows them){destroyed}"
            ),
        ),
        (
            &["disk=['phy:vdb,xvda,w']"],
            format!(
                "guest.cfg: disk 'phy:vdb,xvda,w': vdb is read-only on this host: attach it \
                 with 'r'{destroyed}"
            ),
        ),
        (
            &["disk=['phy:vda1,xvda,w', 'phy:vdb,xvda,r']"],
            format!(
                "guest.cfg: disk 'phy:vdb,xvda,r': the domain already has a disk at xvda \
                 (51712): pick another virtual device{destroyed}"
            ),
        ),
        (
            &["vif=['devid=2', 'devid=2']"],
            format!(
                "guest.cfg: vif 1 (mac=00:16:3e:1a:1a:1a, bridge=xenbr0): the domain already \
                 has a vif with devid 2: give another devid or none{destroyed}"
            ),
        ),
    ];
    for (devices, want) in cases {
        let mut f = host();
        // The second vif's MAC comes from the UUID when the caller drew only one.
        let p = plan(&guest(devices), [0x1a; 16], &[MAC1]);
        let e = execute(&mut f, &p, b"kernel", None)
            .unwrap_err()
            .to_string();
        let want = want.replace(
            "00:16:3e:1a:1a:1a",
            &mac_string(&{
                match &p.devices.get(1).map(|d| d.request.clone()) {
                    Some(Ok(r)) => r.mac,
                    _ => [0; 6],
                }
            }),
        );
        assert_eq!(e, want, "{devices:?}");
        assert!(
            !f.domains.contains_key(&4),
            "{devices:?}: the domain is gone"
        );
        assert_eq!(f.calls.last().unwrap(), "domctl DestroyDomain 4");
    }
    // A holder with the target read-only: 'w' is refused, and the text says read-only.
    let mut f = host();
    f.add_vbd(3, "vda1", "xvdb", 51728, VBD_MODE_READ);
    let e = create(&mut f, &["disk=['phy:vda1,xvda,w']"]).unwrap_err();
    assert_eq!(
        e,
        format!(
            "guest.cfg: disk 'phy:vda1,xvda,w': vda1 is attached read-only to domain 'web1' \
             (3), and 'w' needs it alone; use 'r' to share it read-only, or 'w!'{destroyed}"
        )
    );
    create(&mut f, &["disk=['phy:vda1,xvda,r']"]).unwrap();
    // 'w!' shares what 'w' and 'r' may not (web1 has vda2 'w').
    let mut f = host();
    let e = create(&mut f, &["disk=['phy:vda,xvdb,r']"]).unwrap_err();
    assert!(e.contains("attached writable to domain 'web1'"), "{e}");
    create(&mut f, &["disk=['phy:vda2,xvda,w!', 'phy:vda,xvdb,w!']"]).unwrap();
}

#[test]
fn unservable_specs_stop_the_create_before_anything_exists() {
    for (disk, why) in [
        (
            "file:/srv/g.img,xvda,w",
            "the qdisk backend is not available",
        ),
        (",,hdc,cdrom", "an empty CD-ROM drive cannot be attached"),
        ("vda1,qcow2,xvda,w", "only raw disks are served"),
    ] {
        let mut f = host();
        let e = create(&mut f, &[&format!("disk=['{disk}']")]).unwrap_err();
        assert!(e.starts_with("guest.cfg: disk '"), "{e}");
        assert!(e.contains(why), "{e}");
        assert!(
            !f.calls.iter().any(|c| c.contains("CreateDomain")),
            "{disk}"
        );
    }
}

#[test]
fn too_many_devices() {
    let mut f = host();
    let vifs = ["''"; crate::hypervisor::fake::FAKE_MAX_DEVICES + 1].join(",");
    let e = create(&mut f, &[&format!("vif=[{vifs}]")]).unwrap_err();
    assert!(
        e.contains("): the domain has as many vifs as it may have: detach one first;"),
        "{e}"
    );
}

#[test]
fn network_hot_plug() {
    let mut f = host();
    let (dom, devid, mac) = network_attach(
        &mut f,
        &name("web1"),
        &["bridge=xenbr0".into()],
        [0x81, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    )
    .unwrap();
    assert_eq!(
        (dom, devid, mac),
        (3, 1, [0x00, 0x16, 0x3e, 0x01, 0x02, 0x03])
    );
    f.connect_all(3);
    let rows = list_of_kind(&mut f, &[name("web1")], DEVICE_VIF).unwrap();
    assert_eq!(
        table::network_list_table(&rows),
        "Idx BE Mac Addr.         handle state evt-ch   tx-/rx-ring-ref BE-path                       \n\
         0   32754 00:16:3e:0a:0b:0c      0     4     11   770/771         /local/domain/32754/backend/vif/3/0\n\
         1   32754 00:16:3e:01:02:03      1     4     12   772/773         /local/domain/32754/backend/vif/3/1\n"
    );
    let e = network_attach(&mut f, &name("web1"), &["bridge=br9".into()], [0; 16])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "domain 'web1' (3): vif (mac=00:16:3e:00:00:00, bridge=br9): no switch named 'br9' \
         on this host (the host has: xenbr0)"
    );
    let e = network_attach(&mut f, &name("web1"), &["colour=red".into()], [0; 16])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("domain 'web1' (3): vif 'colour=red': unknown vif setting"),
        "{e}"
    );

    // Detach by MAC: the frontend closes, the vif goes.
    let poll = Duration::from_millis(1);
    let (label, how) = detach(
        &mut f,
        &name("web1"),
        DEVICE_VIF,
        "00:16:3E:01:02:03",
        false,
        Duration::from_secs(1),
        poll,
    )
    .unwrap();
    assert_eq!(
        (label.as_str(), how),
        ("vif 1 (00:16:3e:01:02:03)", Detached::Closed)
    );
    let e = detach(
        &mut f,
        &name("web1"),
        DEVICE_VIF,
        "7",
        false,
        DETACH_WAIT,
        poll,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "domain 'web1' (3) has no vif '7': 'fv network-list web1' shows them"
    );
    assert_eq!(
        f.domains[&3]
            .devices
            .iter()
            .filter(|d| d.kind == DEVICE_VIF)
            .count(),
        1
    );
}

#[test]
fn block_hot_plug_and_detach_as_xl() {
    let mut f = host();
    let (dom, devid) = block_attach(
        &mut f,
        &name("web1"),
        &["phy:vda1".into(), "xvdb".into(), "r".into()],
    )
    .unwrap();
    assert_eq!((dom, devid), (3, 51728));
    let e = block_attach(&mut f, &DomainRef::Id(3), &["phy:vda1,xvdb,r".into()])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "domain 'web1' (3): disk 'phy:vda1,xvdb,r': the domain already has a disk at xvdb \
         (51728): pick another virtual device"
    );
    f.connect_all(3);
    let rows = list_of_kind(&mut f, &[name("web1")], DEVICE_VBD).unwrap();
    assert_eq!(
        table::block_list_table(&rows),
        "Vdev  BE  handle state evt-ch ring-ref BE-path                       \n\
         51712 32754 3      4     10     768      /local/domain/32754/backend/vbd/3/51712\n\
         51728 32754 3      4     12     772      /local/domain/32754/backend/vbd/3/51728\n"
    );

    // A frontend that does not close: xl's 10 s wait (short here), then advice.
    f.frontends_close = false;
    let poll = Duration::from_millis(1);
    let e = detach(
        &mut f,
        &name("web1"),
        DEVICE_VBD,
        "xvdb",
        false,
        Duration::from_millis(20),
        poll,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "domain 'web1' (3): disk xvdb (51728) is still there after 0 s: its frontend did not \
         close it (the guest may still be using it); 'fv block-detach --force web1 51728' \
         removes it at once"
    );
    assert_eq!(
        f.domains[&3]
            .devices
            .iter()
            .filter(|d| d.kind == DEVICE_VBD)
            .count(),
        2
    );
    // --force removes it at once, by number too.
    let (label, how) = detach(
        &mut f,
        &name("web1"),
        DEVICE_VBD,
        "51728",
        true,
        DETACH_WAIT,
        poll,
    )
    .unwrap();
    assert_eq!(
        (label.as_str(), how),
        ("disk xvdb (51728)", Detached::Forced)
    );
    assert_eq!(
        f.domains[&3]
            .devices
            .iter()
            .filter(|d| d.kind == DEVICE_VBD)
            .count(),
        1
    );
    let e = detach(
        &mut f,
        &name("web1"),
        DEVICE_VBD,
        "xvdz",
        false,
        DETACH_WAIT,
        poll,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "domain 'web1' (3) has no disk 'xvdz': 'fv block-list web1' shows them"
    );
    assert!(list_of_kind(&mut f, &[name("nope")], DEVICE_VBD).is_err());
}

#[test]
fn disk_list_names_the_users() {
    let mut f = host();
    f.add_domain(5, "db", 256, DOMINFO_BUILT);
    f.add_vbd(5, "vdb", "xvda", 51712, VBD_MODE_READ);
    f.add_vbd(5, "vda2", "xvdb", 51728, VBD_MODE_WRITE_SHARED);
    let rows = disk_list(&mut f).unwrap();
    assert_eq!(
        table::disk_list_table(&rows),
        "Name             Size        Start      Sectors Flags                Used by\n\
         vda              8.0G            0     16777216 flush                -\n\
         vda1             1.0G         2048      2097152 partition,flush      -\n\
         vda2             7.0G      2099200     14678016 partition,flush      web1(3):w db(5):w!\n\
         vdb              1.0G            0      2097152 ro                   db(5):r\n"
    );
}

#[test]
fn switch_ports_with_counters() {
    let mut f = host();
    f.connect_all(3);
    let ports = switch_ports(&mut f).unwrap();
    assert_eq!(
        table::switch_table(&ports),
        "Switch   Port       Domain               MAC               Learned RX-packets     RX-bytes RX-drops TX-packets     TX-bytes TX-drops\n\
         xenbr0   eth0       (uplink)             52:54:00:12:34:56       3       1200       345678        0        800       123456        0\n\
         xenbr0   vif3.0     web1(3)              00:16:3e:0a:0b:0c       1        200        19600        0        100         9800        0\n"
    );
    let v: serde_json::Value = serde_json::from_str(&table::switch_json(&ports)).unwrap();
    assert_eq!(v[0]["kind"], "uplink");
    assert_eq!(v[0]["domid"], serde_json::Value::Null);
    assert_eq!(v[1]["port"], "vif3.0");
    assert_eq!(v[1]["domain"], "web1");
    assert_eq!(v[1]["domid"], 3);
    assert_eq!(v[1]["rx"]["packets"], 200);
    assert_eq!(v[1]["tx"]["bytes"], 9800);
}

#[test]
fn a_hypervisor_without_backends_is_named_as_the_reason() {
    let mut f = host();
    f.fail = Some(("DeviceAttach".into(), 38));
    let e = create(&mut f, &["vif=['bridge=xenbr0']"]).unwrap_err();
    assert!(e.contains("this hypervisor does not serve vifs yet"), "{e}");
    assert!(e.contains("guest.cfg"), "{e}");
}
