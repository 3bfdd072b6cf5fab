//! The commands against the fake hypervisor.

use std::sync::mpsc;

use ferrovisor_abi::domctl::{
    DOMINFO_BLOCKED, DOMINFO_BUILT, DOMINFO_PAUSED, DOMINFO_RUNNING, DOMINFO_SHUTDOWN,
};

use super::{create::*, *};
use crate::{config, hypervisor::fake::Fake, table};

fn name(s: &str) -> DomainRef {
    DomainRef::Name(s.into())
}

fn with_guests() -> Fake {
    let mut f = Fake::new();
    f.add_domain(3, "web1", 65_536, DOMINFO_BUILT | DOMINFO_BLOCKED);
    f.add_domain(5, "db", 32_768, DOMINFO_BUILT | DOMINFO_PAUSED);
    f
}

#[test]
fn domain_refs() {
    assert_eq!("0".parse::<DomainRef>(), Ok(DomainRef::Id(0)));
    assert_eq!("web1".parse::<DomainRef>(), Ok(name("web1")));
    assert_eq!("1a".parse::<DomainRef>(), Ok(name("1a")));
    assert!("32752".parse::<DomainRef>().is_err());
    assert!("99999".parse::<DomainRef>().is_err());
    assert!("".parse::<DomainRef>().is_err());
}

#[test]
fn resolving_names_and_ids() {
    let mut f = with_guests();
    assert_eq!(resolve(&mut f, &name("db")).unwrap().domid, 5);
    assert_eq!(resolve(&mut f, &DomainRef::Id(3)).unwrap().domid, 3);
    assert_eq!(
        resolve(&mut f, &name("nope")).unwrap_err().to_string(),
        "no domain named 'nope': 'fv list' shows the domains"
    );
    assert_eq!(
        resolve(&mut f, &DomainRef::Id(9)).unwrap_err().to_string(),
        "no domain with id 9: 'fv list' shows the domains"
    );
}

#[test]
fn listing_pages_through_many_domains() {
    let mut f = Fake::new();
    for id in 1..150u16 {
        f.add_domain(id, &format!("g{id}"), 256, DOMINFO_BUILT);
    }
    let all = list(&mut f, &[]).unwrap();
    assert_eq!(all.len(), 150);
    assert!(all.windows(2).all(|w| w[0].domid < w[1].domid));
    assert_eq!(
        f.calls
            .iter()
            .filter(|c| *c == "sysctl ListDomains")
            .count(),
        3
    );
    let some = list(&mut f, &[name("g7"), DomainRef::Id(0)]).unwrap();
    assert_eq!(some.iter().map(|i| i.domid).collect::<Vec<_>>(), [7, 0]);
}

#[test]
fn list_output_from_the_fake() {
    let mut f = with_guests();
    let t = table::list_table(&list(&mut f, &[]).unwrap(), false);
    assert_eq!(
        t,
        "Name                                        ID   Mem VCPUs\tState\tTime(s)\n\
         Domain-0                                     0   256     1     r-----     110.9\n\
         web1                                         3   256     1     -b----       0.0\n\
         db                                           5   128     1     --p---       0.0\n"
    );
}

#[test]
fn host_info() {
    let mut f = with_guests();
    let p = phys_info(&mut f).unwrap();
    assert_eq!(p.nr_domains, 3);
    assert_eq!(p.free_pages, 262_144 - 65_536 * 2 - 32_768);
}

#[test]
fn dmesg_reads_to_the_end_and_resumes() {
    let mut f = Fake::new();
    f.log = (0..40_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut out = Vec::new();
    let end = dmesg(&mut f, 0, &mut out).unwrap();
    assert_eq!(out, f.log);
    assert_eq!(end, 40_000);
    // Three 16 KiB reads and the empty one that ends the loop.
    assert_eq!(f.calls.iter().filter(|c| *c == "sysctl ReadLog").count(), 4);
    f.log.extend_from_slice(b"new line\n");
    let mut out = Vec::new();
    assert_eq!(dmesg(&mut f, end, &mut out).unwrap(), 40_009);
    assert_eq!(out, b"new line\n");
}

#[test]
fn pause_unpause_destroy() {
    let mut f = with_guests();
    lifecycle(&mut f, &name("web1"), DomctlCmd::PauseDomain).unwrap();
    assert_ne!(f.domains[&3].info.flags & DOMINFO_PAUSED, 0);
    lifecycle(&mut f, &DomainRef::Id(3), DomctlCmd::UnpauseDomain).unwrap();
    assert_eq!(f.domains[&3].info.flags & DOMINFO_PAUSED, 0);
    assert_eq!(
        lifecycle(&mut f, &DomainRef::Id(3), DomctlCmd::UnpauseDomain)
            .unwrap_err()
            .to_string(),
        "domain web1 is not paused"
    );
    lifecycle(&mut f, &name("db"), DomctlCmd::DestroyDomain).unwrap();
    assert!(!f.domains.contains_key(&5));
    assert_eq!(
        lifecycle(&mut f, &DomainRef::Id(0), DomctlCmd::DestroyDomain)
            .unwrap_err()
            .to_string(),
        "domain 0 is the control domain and cannot be destroyed"
    );
    assert!(lifecycle(&mut f, &DomainRef::Id(0), DomctlCmd::PauseDomain).is_err());
    assert!(f.domains.contains_key(&0));
    // A refusal from the hypervisor comes back with its meaning.
    f.fail = Some(("PauseDomain".into(), 1));
    assert_eq!(
        lifecycle(&mut f, &name("web1"), DomctlCmd::PauseDomain)
            .unwrap_err()
            .to_string(),
        "domctl PauseDomain of domain 3: not permitted: only the control domain (dom0) may do this (errno 1)"
    );
}

#[test]
fn mem_set_within_the_maximum() {
    let mut f = with_guests();
    mem_set(&mut f, &name("web1"), "128m".parse().unwrap()).unwrap();
    assert_eq!(f.domains[&3].target_pages, 32_768);
    let e = mem_set(&mut f, &name("web1"), "1g".parse().unwrap()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "1 GiB is above the 256 MiB maximum of domain web1: ask for at most 256m"
    );
}

#[test]
fn shutdown_and_wait() {
    let mut f = with_guests();
    let poll = Duration::from_millis(1);
    shutdown(
        &mut f,
        &name("web1"),
        ShutdownKind::Poweroff,
        Some(Duration::from_secs(1)),
        poll,
    )
    .unwrap();
    assert_ne!(f.domains[&3].info.flags & DOMINFO_SHUTDOWN, 0);
    shutdown(&mut f, &name("db"), ShutdownKind::Reboot, None, poll).unwrap();
    assert_eq!(f.domains[&5].shutdown_requests, [1]);
    // A guest that ignores the request makes --wait time out with advice.
    f.obey_shutdown = false;
    f.add_domain(8, "stubborn", 256, DOMINFO_BUILT | DOMINFO_RUNNING);
    let e = shutdown(
        &mut f,
        &name("stubborn"),
        ShutdownKind::Poweroff,
        Some(Duration::from_millis(20)),
        poll,
    )
    .unwrap_err();
    assert!(e
        .to_string()
        .starts_with("domain stubborn did not shut down within 0 s"));
}

#[test]
fn console_copies_both_ways_until_the_escape() {
    let mut f = with_guests();
    f.domains.get_mut(&3).unwrap().console = b"login: ".to_vec();
    let (tx, rx) = mpsc::channel();
    tx.send(b"root\n".to_vec()).unwrap();
    tx.send(vec![b'x', CONSOLE_ESCAPE, b'y']).unwrap();
    let mut out = Vec::new();
    console(
        &mut f,
        &name("web1"),
        &rx,
        &mut out,
        Duration::from_millis(1),
    )
    .unwrap();
    assert_eq!(out, b"login: ");
    assert_eq!(f.domains[&3].console_input, b"root\nx");
}

fn guest_config(extra: &[&str]) -> config::DomainConfig {
    let text = "name='web1'\nmemory=4\nmaxmem=8\nvcpus=2\nkernel='/k'\n\
                root='/dev/xvda ro'\nextra='console=hvc0'\non_crash='preserve'\n\
                uuid='3f2504e0-4f89-11d3-9a0c-0305e82c3301'\n";
    let overrides: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    config::parse(text, "guest.cfg", &overrides).unwrap().config
}

#[test]
fn create_follows_the_control_sequence() {
    let mut f = Fake::new();
    let plan = plan(&guest_config(&[]), [0; 16], &[]);
    assert_eq!(plan.create.max_pages, 2048);
    assert_eq!(plan.create.max_vcpus, 2);
    assert_eq!(plan.populate_pages, 1024);
    let dom = execute(&mut f, &plan, b"\x7fELF kernel", Some(b"initrd")).unwrap();
    assert_eq!(dom, 1);
    let d = &f.domains[&dom];
    assert_eq!(d.populated, (0..1024).collect::<Vec<_>>());
    assert_eq!(d.cmdline, "root=/dev/xvda ro console=hvc0");
    assert_eq!((d.kernel_len, d.ramdisk_len), (11, 6));
    assert_eq!(
        d.info.flags & (DOMINFO_BUILT | DOMINFO_PAUSED | DOMINFO_RUNNING),
        DOMINFO_BUILT | DOMINFO_RUNNING
    );
    assert_eq!(
        d.info.uuid,
        config::parse_uuid("3f2504e0-4f89-11d3-9a0c-0305e82c3301").unwrap()
    );
    let order: Vec<&str> = f
        .calls
        .iter()
        .map(String::as_str)
        .filter(|c| !c.starts_with("xs_write"))
        .collect();
    assert_eq!(
        order,
        [
            "domctl CreateDomain 0",
            "populate 1 512",
            "populate 1 512",
            "domctl BuildPv 1",
            "domctl UnpauseDomain 1"
        ]
    );
    // The xenstore keys come between the build and the unpause.
    let build = f
        .calls
        .iter()
        .position(|c| c == "domctl BuildPv 1")
        .unwrap();
    let first_xs = f
        .calls
        .iter()
        .position(|c| c.starts_with("xs_write"))
        .unwrap();
    assert!(first_xs > build);
    assert_eq!(f.xenstore["/local/domain/1/name"], "web1");
    assert_eq!(f.xenstore["/local/domain/1/memory/target"], "4096");
    assert_eq!(f.xenstore["/local/domain/1/memory/static-max"], "8192");
    assert_eq!(
        f.xenstore["/local/domain/1/vm"],
        "/vm/3f2504e0-4f89-11d3-9a0c-0305e82c3301"
    );
    assert_eq!(
        f.xenstore["/vm/3f2504e0-4f89-11d3-9a0c-0305e82c3301/on_crash"],
        "preserve"
    );
}

#[test]
fn a_failed_create_leaves_nothing_behind() {
    for stage in ["populate", "BuildPv", "UnpauseDomain"] {
        let mut f = Fake::new();
        let before = f.domains.len();
        f.fail = Some((stage.into(), 12));
        let plan = plan(&guest_config(&[]), [0; 16], &[]);
        let e = execute(&mut f, &plan, b"kernel", None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("creating domain 'web1' failed while "), "{e}");
        assert!(
            e.ends_with("; the half-built domain 1 was destroyed"),
            "{e}"
        );
        assert_eq!(f.domains.len(), before, "{stage}");
        assert_eq!(f.calls.last().unwrap(), "domctl DestroyDomain 1");
    }
    // Refused at CreateDomain: nothing to clean.
    let mut f = Fake::new();
    f.add_domain(4, "web1", 256, DOMINFO_BUILT);
    let e = execute(&mut f, &plan(&guest_config(&[]), [0; 16], &[]), b"k", None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "creating domain 'web1' failed while creating it: domctl CreateDomain of domain 0: \
         a domain with that name already exists: pick another name or destroy it first (errno 17)"
    );
    // Not enough memory on the host: populate stops short.
    let mut f = Fake::new();
    f.total_pages = 65_536 + 100;
    let e = execute(&mut f, &plan(&guest_config(&[]), [0; 16], &[]), b"k", None).unwrap_err();
    assert!(e.to_string().contains("while populating its memory"), "{e}");
    assert_eq!(f.domains.len(), 1);
}

#[test]
fn dry_run_description() {
    let cfg = guest_config(&[
        "vif=['mac=00:16:3e:00:00:01,bridge=xenbr0']",
        "disk=['phy:vda2,xvda,w', 'vdev=xvdb,access=r,target=vdb', 'file:/srv/x.img,xvdc,w']",
    ]);
    let d = plan(&cfg, [0; 16], &[]).describe();
    assert!(d.contains("name            web1\n"), "{d}");
    assert!(d.contains("memory          4 MiB (1024 pages populated)\n"));
    assert!(d.contains("maxmem          8 MiB (max_pages 2048)\n"));
    assert!(d.contains("cmdline         root=/dev/xvda ro console=hvc0\n"));
    assert!(
        d.contains("attach          vif 0 (mac=00:16:3e:00:00:01, bridge=xenbr0)\n"),
        "{d}"
    );
    assert!(d.contains("attach          disk 'phy:vda2,xvda,w' as virtual device 51712\n"));
    assert!(d.contains("attach          disk 'vdb,xvdb,r' as virtual device 51728\n"));
    assert!(
        d.contains(
            "attach          disk '/srv/x.img,xvdc,w': cannot be attached: the qdisk backend \
             is not available: Ferrovisor attaches the host's disks and partitions only"
        ),
        "{d}"
    );
}

#[test]
fn generated_uuids_are_version_4() {
    let u = uuid_v4([0xff; 16]);
    assert_eq!(u[6] >> 4, 4);
    assert_eq!(u[8] >> 6, 2);
    let cfg = guest_config(&[]);
    let mut no_uuid = cfg.clone();
    no_uuid.uuid = None;
    assert_eq!(plan(&no_uuid, u, &[]).uuid, u);
    assert_eq!(plan(&cfg, u, &[]).uuid, cfg.uuid.unwrap());
}
