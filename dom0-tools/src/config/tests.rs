//! The config parser against whole files: the brief's example, every key, every error.

use super::*;

const BRIEF_EXAMPLE: &str = r#"# A Debian guest, as in the brief.
name    = "web1"
memory  = 256
vcpus   = 2
kernel  = "/boot/vmlinuz-6.1.0-amd64"
ramdisk = "/boot/initrd.img-6.1.0-amd64"
root    = "/dev/xvda ro"
extra   = "console=hvc0"
vif     = [ 'mac=00:16:3e:01:02:03, bridge=xenbr0' ]
disk    = [ 'phy:/dev/vg0/web1,xvda,w' ]
on_crash  = "preserve"
on_reboot = 'restart'
uuid    = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
"#;

fn ok(text: &str) -> Loaded {
    parse(text, "guest.cfg", &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> String {
    parse(text, "guest.cfg", &[]).unwrap_err().to_string()
}

#[test]
fn the_brief_example() {
    let l = ok(BRIEF_EXAMPLE);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let c = l.config;
    assert_eq!(c.name, "web1");
    assert_eq!((c.memory_mib, c.maxmem_mib, c.vcpus), (256, 256, 2));
    assert_eq!(c.kernel, PathBuf::from("/boot/vmlinuz-6.1.0-amd64"));
    assert_eq!(
        c.ramdisk.as_deref(),
        Some(std::path::Path::new("/boot/initrd.img-6.1.0-amd64"))
    );
    assert_eq!(c.cmdline, "root=/dev/xvda ro console=hvc0");
    assert_eq!(c.vifs.len(), 1);
    assert_eq!(c.vifs[0].bridge.as_deref(), Some("xenbr0"));
    assert_eq!(c.disks[0].vdev, "xvda");
    assert_eq!(c.disks[0].target.as_deref(), Some("/dev/vg0/web1"));
    assert_eq!(
        (c.on_poweroff, c.on_reboot, c.on_crash),
        (Action::Destroy, Action::Restart, Action::Preserve)
    );
    assert_eq!(
        uuid_string(&c.uuid.unwrap()),
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
    );
}

#[test]
fn defaults_and_multiline_lists() {
    let l = ok("name='a'\nkernel='/k'\nvif = [\n  'bridge=xenbr0',\n  'bridge=xenbr1',\n]\n");
    let c = l.config;
    assert_eq!(
        (c.memory_mib, c.maxmem_mib, c.vcpus),
        (DEFAULT_MEMORY_MIB, DEFAULT_MEMORY_MIB, 1)
    );
    assert_eq!(c.vifs.len(), 2);
    assert_eq!(c.cmdline, "");
    assert_eq!(c.uuid, None);
    // A single string is a list of one.
    let c = ok("name='a'\nkernel='/k'\ndisk='/srv/a.img,,xvda'\n").config;
    assert_eq!(c.disks.len(), 1);
}

#[test]
fn nfs_boot() {
    let c = ok(
        "name='n'\nkernel='/k'\nip='10.0.0.2'\nnetmask='255.255.255.0'\n\
                gateway='10.0.0.1'\nhostname='n1'\nnfs_server='10.0.0.9'\n\
                nfs_root='/export/n1'\nextra='console=hvc0'\n",
    )
    .config;
    assert_eq!(
        c.cmdline,
        "ip=10.0.0.2:10.0.0.9:10.0.0.1:255.255.255.0:n1:eth0:off root=/dev/nfs \
         nfsroot=10.0.0.9:/export/n1 console=hvc0"
    );
}

#[test]
fn warnings_are_returned() {
    let l = ok(
        "name='a'\nkernel='/k'\nbootloader='pygrub'\nmemory=64\nmemory=96\n\
                cmdline='quiet'\nroot='/dev/xvda'\n",
    );
    let w: Vec<String> = l.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        w,
        [
            "guest.cfg:3:1: warning: unknown setting 'bootloader' ignored",
            "guest.cfg:5:1: warning: 'memory' set again (first at line 4); this value wins",
            "guest.cfg:6:1: warning: 'cmdline' is set, so 'root', 'extra' and the ip/nfs settings are ignored",
        ]
    );
    assert_eq!(l.config.memory_mib, 96);
    assert_eq!(l.config.cmdline, "quiet");
}

#[test]
fn overrides_apply_after_the_file() {
    let text = "name='a'\nkernel='/k'\nmemory=128\nextra='x'\n";
    let l = parse(
        text,
        "guest.cfg",
        &[
            "memory=256".into(),
            "extra=\"console=hvc0\"".into(),
            "name=b".into(),
        ],
    )
    .unwrap();
    assert!(l.warnings.is_empty());
    assert_eq!(l.config.memory_mib, 256);
    assert_eq!(l.config.cmdline, "console=hvc0");
    assert_eq!(l.config.name, "b");
    let e = parse(text, "guest.cfg", &["memory=lots".into()]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "override 1 'memory=lots':1:8: 'memory' must be a number of MiB, found a string"
    );
    let e = parse(text, "guest.cfg", &["memory".into()]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "override 1 'memory':1:7: expected '=' after 'memory', found the end of the file"
    );
}

#[test]
fn every_semantic_error_names_file_line_column() {
    let base = "name='a'\nkernel='/k'\n";
    let cases: &[(&str, &str)] = &[
        ("memory=\n", "guest.cfg:3:8: expected a string, a number or a list after '=', found the end of the line"),
        ("memory='256'\n", "guest.cfg:3:8: 'memory' must be a number of MiB, found a string"),
        ("memory=0\n", "guest.cfg:3:8: 'memory' must be at least 1 (MiB), found 0"),
        ("maxmem=[1]\n", "guest.cfg:3:8: 'maxmem' must be a number of MiB, found a list"),
        ("memory=256\nmaxmem=128\n", "guest.cfg:4:8: 'maxmem' (128 MiB) is below 'memory' (256 MiB): raise maxmem or drop it"),
        ("vcpus=0\n", "guest.cfg:3:7: 'vcpus' must be from 1 to 4096, found 0"),
        ("vcpus='2'\n", "guest.cfg:3:7: 'vcpus' must be a number, found a string"),
        ("extra=3\n", "guest.cfg:3:7: 'extra' must be a string in quotes, found a number"),
        ("ramdisk=''\n", "guest.cfg:3:9: 'ramdisk' must not be empty"),
        ("uuid='1234'\n", "guest.cfg:3:6: bad uuid '1234': expected 32 hex digits as 8-4-4-4-12, like 3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
        ("on_crash='reboot'\n", "guest.cfg:3:10: 'reboot' is not an action for on_crash: expected destroy, restart, preserve, rename-restart, coredump-destroy or coredump-restart"),
        ("on_poweroff='x'\n", "guest.cfg:3:13: 'x' is not an action for on_poweroff"),
        ("on_reboot=1\n", "guest.cfg:3:11: 'on_reboot' must be a string in quotes, found a number"),
        ("vif=['bridge=xenbr0',\n 'mac=zz']\n", "guest.cfg:4:2: 'vif' entry 2: bad MAC address 'zz'"),
        ("vif=[1]\n", "guest.cfg:3:6: 'vif' must be a list of strings in quotes, found a number in the list"),
        ("disk=['/srv/a.img']\n", "guest.cfg:3:7: 'disk' entry 1: the disk spec has no virtual device"),
        ("ip='10.0.0'\n", "guest.cfg:3:4: 'ip' must be an IPv4 address like 10.0.0.2, found '10.0.0'"),
        ("netmask='x'\n", "guest.cfg:3:9: 'netmask' must be an IPv4 address"),
        ("gateway='x'\n", "guest.cfg:3:9: 'gateway' must be an IPv4 address"),
        ("nfs_server='x'\n", "guest.cfg:3:12: 'nfs_server' must be an IPv4 address"),
        ("hostname='a b'\n", "guest.cfg:3:10: bad hostname 'a b'"),
        ("dhcp='yes'\n", "guest.cfg:3:6: 'dhcp' must be \"dhcp\" or \"off\", found 'yes'"),
        ("nfs_root='/export'\n", "guest.cfg:3:10: 'nfs_root' needs 'nfs_server' too"),
        ("type='hvm'\n", "guest.cfg:3:6: only PV guests run on Ferrovisor: 'type' must be \"pv\", found 'hvm'"),
        ("name='bad name'\n", "guest.cfg:3:6: bad domain name 'bad name'"),
    ];
    for (extra, want) in cases {
        let got = err(&format!("{base}{extra}"));
        assert!(
            got.starts_with(want),
            "{extra:?}:\n got  {got}\n want {want}"
        );
    }
    let long = format!("name='{}'\nkernel='/k'\n", "a".repeat(65));
    assert!(err(&long).starts_with("guest.cfg:1:6: bad domain name"));
}

#[test]
fn missing_keys_say_what_to_add() {
    assert_eq!(
        err("kernel='/k'\n"),
        "guest.cfg: no 'name' setting: add name = \"guest1\""
    );
    assert_eq!(
        err("name='a'\n"),
        "guest.cfg: no 'kernel' setting: add kernel = \"/boot/vmlinuz\""
    );
}

#[test]
fn syntax_errors_carry_the_file() {
    assert_eq!(
        err("name = \"a\"\nkernel = '/k'\nmemory = \n"),
        "guest.cfg:3:10: expected a string, a number or a list after '=', found the end of the line"
    );
}

#[test]
fn reading_a_missing_file() {
    let e = load(std::path::Path::new("/nonexistent/guest.cfg"), &[]).unwrap_err();
    assert!(e
        .to_string()
        .starts_with("cannot read the domain config /nonexistent/guest.cfg: "));
}

#[test]
fn uuids() {
    let u = parse_uuid("3F2504E04F8911D39A0C0305E82C3301").unwrap();
    assert_eq!(uuid_string(&u), "3f2504e0-4f89-11d3-9a0c-0305e82c3301");
    assert!(parse_uuid("3f2504e0-4f89-11d3-9a0c-0305e82c330").is_none());
    assert!(parse_uuid("3f2504e04f8911d39a0c0305e82c330g").is_none());
}
