//! Storage through the hypervisor's vbd backend, in one boot: Debian's Linux as dom0 with
//! a 32 MiB virtio disk (an MBR, partition 1 empty, partition 2 ext4 made by
//! `mkfs.ext4 -d` with two known files), and two Linux domUs (`sa`, `sb`) that dom0's
//! `fv` gives the host's partitions to:
//! - dom0's own disk (`dom0_disk=vda,xvda,w!`): dom0 reads the MBR's signature;
//! - `sa` has `phy:vda1,xvda,w` and `phy:vda2,xvdb,w`: it writes a pattern to xvda, and
//!   mounts the ext4 on xvdb (the known files read back, a new file survives a remount
//!   and an umount/mount); after `fv reboot` it reads both back;
//! - sharing rules (xl's): `sb` gets vda1 `w` or `r` refused while `sa` has it `w`, naming
//!   `sa`; `w!` is allowed; once `sa` lets go, `sb` gets vda1 `r`: a read-only disk
//!   (writes fail with EPERM, `blockdev --getro` is 1), and `sa` is then refused vda1 `w`;
//! - hot-plug: `fv block-attach` makes `/dev/xvd*` appear in the running guest and
//!   `fv block-list` show it connected, `fv block-detach` makes it go; a detach the
//!   frontend does not answer (its domain paused) times out as xl's does, and `--force`
//!   removes it; a disk mounted in a running guest detaches (Linux 6.1's blkfront closes
//!   it under the mount);
//! - after QEMU exits, the host checks the image: the pattern in partition 1, and
//!   `e2fsck -n` and `debugfs` on partition 2 (the files the guests wrote are there).

use std::{
    fs,
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ferrovisor_tests::{boot_with_config, re, Modules, Term, VirtioDisk};
use xtask::disk_image::{self, DiskImage};

/// linux.rs's hypervisor line, plus dom0's own view of the disk. `w!`: dom0 shares the
/// whole disk writable, so that its partitions can still be given to domUs with `w`
/// and `r` (a whole disk overlaps its partitions, and `r` or `w` would conflict).
const HYPERVISOR_CMDLINE: &str =
    "dom0_mem=262144 maxcpus=2 console=com1 loglvl=info debug_exit=0xf4 dom0_disk=vda,xvda,w!";
const KERNEL_CMDLINE: &str = "root=/dev/xvda ro console=hvc0 nousb";
const DISK_MIB: u64 = 32;
/// What the guests write to partition 1 and read back: `seq`'s output from a per-run
/// start, cut to this many bytes (a multiple of the 64 KiB blocks `dd` uses).
const PATTERN_BYTES: usize = 1 << 20;
const KNOWN_TEXT: &str = "ferrovisor storage test: a file mkfs.ext4 -d put here\n";
const BLOB_BYTES: usize = 192 * 1024;
/// What `sa` writes on the ext4, and `sb` after it.
const NEW_TEXT: &str = "written-by-sa";
const SB_TEXT: &str = "written-by-sb";
/// A domU's example config (Debian's kernel, 128 MiB, on_poweroff = "destroy"); the
/// tests give it a name and disks as `fv create` overrides.
const DOMU_CFG: &str = "/etc/fv/examples/linux-domu.cfg";
/// Linux's vdev numbers (xen-blkfront: major 202, 16 minors a disk): xvda..xvdd.
const XVDA: u32 = 51712;
const XVDB: u32 = 51728;
const XVDC: u32 = 51744;
const XVDD: u32 = 51760;

/// `len` bytes of a fixed pseudo-random sequence (an LCG's high bytes).
fn blob(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect()
}

/// What `seq START 99999999 | head -c PATTERN_BYTES` prints.
fn pattern(start: u64) -> Vec<u8> {
    let mut s = String::with_capacity(PATTERN_BYTES + 16);
    let mut i = start;
    while s.len() < PATTERN_BYTES {
        s.push_str(&format!("{i}\n"));
        i += 1;
    }
    s.truncate(PATTERN_BYTES);
    s.into_bytes()
}

/// The SHA-256 of `bytes` in hex, by the host's `sha256sum` (coreutils).
fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum (coreutils)");
    child
        .stdin
        .take()
        .expect("sha256sum's stdin")
        .write_all(bytes)
        .expect("feed sha256sum");
    let out = child.wait_with_output().expect("sha256sum's output");
    assert!(out.status.success(), "sha256sum failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned()
}

/// A fresh disk image (a cached one would still hold the last run's writes).
fn make_image() -> DiskImage {
    let files = disk_image::cache_path("storage-files");
    let _ = fs::remove_dir_all(&files);
    fs::create_dir_all(files.join("sub")).expect("create the image's files");
    fs::write(files.join("known.txt"), KNOWN_TEXT).expect("write known.txt");
    fs::write(files.join("sub/blob.bin"), blob(BLOB_BYTES)).expect("write blob.bin");
    let path = disk_image::cache_path("storage.img");
    let _ = fs::remove_file(&path);
    disk_image::partitioned(&path, DISK_MIB, &files).unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn vbds_carry_data_enforce_sharing_and_hot_plug() {
    let linux = xtask::linux::dom0().unwrap_or_else(|e| panic!("{e:#}"));
    let image = make_image();
    let p1 = image.partition(1).expect("partition 1");
    let p2 = image.partition(2).expect("partition 2");
    let start = 1_000_000
        + SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            % 1_000_000;
    let pat = pattern(start);
    let pat_sha = sha256_hex(&pat);
    let blob_sha = sha256_hex(&blob(BLOB_BYTES));

    let b = boot_with_config(
        "storage",
        HYPERVISOR_CMDLINE,
        Modules::Dom0KernelAndModule {
            kernel: &linux.vmlinuz,
            cmdline: KERNEL_CMDLINE,
            module: &linux.initrd,
        },
        |cfg| {
            cfg.disks = vec![VirtioDisk {
                image: image.path.clone(),
                read_only: false,
            }];
        },
    );
    let mut t = Term::new(b);
    // dom0 and three domU boots of Linux under TCG, and a 10 s detach timeout: each wait
    // below has its own limit, this is the whole scenario's.
    t.b.allow(Duration::from_secs(1200));
    t.expect_within(r"dom0: Linux \S+ ready", 300);
    t.expect_within(r"Enter 'help' for a list of built-in commands", 60);

    // --- dom0's own disk (dom0_disk=): xvda with both partitions, the MBR's signature
    // bytes and the disk signature mkfs left alone (disk_image's 0x46564d42, "BMVF").
    let parts = t.run("awk '/xvda/ {print $4 \"=\" $3}' /proc/partitions", 30);
    t.check(
        parts.contains(&format!("xvda={}", DISK_MIB * 1024))
            && parts.contains("xvda1=")
            && parts.contains("xvda2="),
        &format!("dom0's /proc/partitions (KiB): xvda and its partitions: {parts}"),
    );
    let sig = t.run(
        "dd if=/dev/xvda bs=1 skip=510 count=2 2>/dev/null | od -An -tx1",
        30,
    );
    t.check(
        sig == "55 aa",
        &format!("dom0's xvda MBR signature: {sig:?}"),
    );
    let disk_sig = t.run("dd if=/dev/xvda bs=1 skip=440 count=4 2>/dev/null", 30);
    t.check(
        disk_sig == "BMVF",
        &format!("dom0's xvda disk signature: {disk_sig:?}"),
    );
    let list = t.run("fv block-list 0", 30);
    t.check(
        re(&format!(r"{XVDA} +32754 +0 +4 ")).is_match(&list),
        &format!("fv block-list 0: dom0's xvda connected (state 4): {list}"),
    );

    // --- sa: vda1 as xvda, vda2 as xvdb, both writable.
    t.b.send(&format!(
        "fv create {DOMU_CFG} 'name=\"sa\"' \"disk=['phy:vda1,xvda,w','phy:vda2,xvdb,w']\" -c\r"
    ));
    t.expect_within(r"^domU: Linux \S+ ready", 300);
    std::thread::sleep(Duration::from_secs(1));
    t.b.send("\r");
    let sizes = t.run(
        "cat /sys/block/xvda/size /sys/block/xvdb/size /sys/block/xvda/ro /sys/block/xvdb/ro",
        60,
    );
    t.check(
        sizes == format!("{} {} 0 0", p1.sectors, p2.sectors),
        &format!("sa's xvda/xvdb sizes and ro flags: {sizes}"),
    );
    t.run(
        &format!(
            "seq {start} 99999999 | head -c {PATTERN_BYTES} | dd of=/dev/xvda bs=64k iflag=fullblock oflag=direct"
        ),
        120,
    );
    let read_pattern = format!(
        "dd if=/dev/xvda bs=64k count={} iflag=direct 2>/dev/null | sha256sum",
        PATTERN_BYTES / 65536
    );
    let got = t.run(&read_pattern, 120);
    t.check(
        got.starts_with(&pat_sha),
        &format!("sa reads back {got}, the pattern is {pat_sha}"),
    );
    // The ext4 of the image: the files mkfs.ext4 -d put there, a new one.
    t.run("mount -t ext4 /dev/xvdb /mnt", 60);
    let known = t.run("cat /mnt/known.txt", 30);
    t.check(
        known == KNOWN_TEXT.trim(),
        &format!("known.txt in sa: {known:?}"),
    );
    let got = t.run("sha256sum /mnt/sub/blob.bin", 60);
    t.check(
        got.starts_with(&blob_sha),
        &format!("blob.bin in sa: {got}, the host's {blob_sha}"),
    );
    t.run(&format!("echo {NEW_TEXT} >/mnt/new.txt && sync"), 60);
    // Read-only remount: writes fail, the new file stays; then read-write again.
    t.run("mount -o remount,ro /mnt", 60);
    let ro = t.run("awk '$2 == \"/mnt\" {print $4}' /proc/mounts", 30);
    t.check(
        ro.starts_with("ro"),
        &format!("/mnt after remount,ro: {ro}"),
    );
    let err = t.run_fails("touch /mnt/nope", 30);
    t.check(
        err.contains("Read-only file system"),
        &format!("touch on a ro remount: {err}"),
    );
    t.run("mount -o remount,rw /mnt", 60);
    let again = t.run("cat /mnt/new.txt", 30);
    t.check(
        again == NEW_TEXT,
        &format!("new.txt after remount: {again:?}"),
    );
    t.run("umount /mnt && mount -t ext4 /dev/xvdb /mnt", 60);
    let again = t.run("cat /mnt/new.txt; umount /mnt", 30);
    t.check(
        again == NEW_TEXT,
        &format!("new.txt after umount and mount: {again:?}"),
    );
    t.leave_console();

    let list = t.run("fv block-list sa", 30);
    for vdev in [XVDA, XVDB] {
        t.check(
            re(&format!(r"{vdev} +32754 +\d+ +4 ")).is_match(&list),
            &format!("fv block-list sa: {vdev} connected: {list}"),
        );
    }
    // fv disk-list: who has which partition (dom0 the whole disk, shared).
    let used = t.run("fv disk-list | awk '/^vda/ {print $1 \"=\" $NF}'", 30);
    t.check(
        re(r"^vda=Domain-0\(0\):w! vda1=sa\(\d+\):w vda2=sa\(\d+\):w$").is_match(&used),
        &format!("fv disk-list's users: {used}"),
    );
    // A reboot (a new domain, built again from the config): the data is still there.
    let first_id = t.run("fv list | awk '/^sa / {print $2}'", 30);
    t.run("fv reboot sa", 30);
    t.wait_for(
        &format!(
            "[ \"$(fv list | awk '/^sa / {{print $2}}')\" != {first_id} ] && \
             fv console sa </dev/null 2>/dev/null | grep -q 'domU: Linux .* ready'"
        ),
        240,
        "sa rebooted",
    );
    t.console("sa");
    let got = t.run(&read_pattern, 120);
    t.check(
        got.starts_with(&pat_sha),
        &format!("sa after its reboot reads {got}, the pattern is {pat_sha}"),
    );
    let again = t.run(
        "mount -t ext4 /dev/xvdb /mnt && cat /mnt/new.txt /mnt/known.txt && umount /mnt",
        60,
    );
    t.check(
        again == format!("{NEW_TEXT} {}", KNOWN_TEXT.trim()),
        &format!("sa's ext4 after its reboot: {again:?}"),
    );
    t.leave_console();

    // --- sb, no disks; then the sharing rules against sa's vda1 (w).
    t.b.send(&format!("fv create {DOMU_CFG} 'name=\"sb\"' -c\r"));
    t.expect_within(r"^domU: Linux \S+ ready", 300);
    std::thread::sleep(Duration::from_secs(1));
    t.b.send("\r");
    let none = t.run("ls /sys/block | grep -c xvd || true", 30);
    t.check(none == "0", &format!("sb has disks: {none}"));
    t.leave_console();
    for mode in ["w", "r"] {
        let err = t.run_fails(&format!("fv block-attach sb phy:vda1,xvdc,{mode}"), 30);
        t.check(
            err.contains("vda1") && err.contains("'sa'"),
            &format!("block-attach sb vda1 {mode} while sa has it w: the refusal names sa: {err}"),
        );
    }
    let listed = t.run("fv block-list sb | tail -n +2 | wc -l", 30);
    t.check(
        listed == "0",
        &format!("refused attaches left devices: {listed}"),
    );
    // w! shares it on purpose: sb reads what sa wrote.
    t.run("fv block-attach sb phy:vda1,xvdc,w!", 30);
    t.console("sb");
    t.wait_for("[ -e /sys/block/xvdc ]", 60, "xvdc appears in sb");
    let got = t.run(&read_pattern.replace("xvda", "xvdc"), 120);
    t.check(
        got.starts_with(&pat_sha),
        &format!("sb reads {got} on the shared vda1, the pattern is {pat_sha}"),
    );
    t.leave_console();
    let list = t.run("fv block-list sb", 30);
    t.check(
        re(&format!(r"{XVDC} +32754 +\d+ +4 ")).is_match(&list),
        &format!("fv block-list sb: xvdc connected: {list}"),
    );
    let out = t.run("fv block-detach sb xvdc", 60);
    t.check(
        out.contains("detached"),
        &format!("block-detach sb xvdc: {out}"),
    );
    let listed = t.run("fv block-list sb | tail -n +2 | wc -l", 30);
    t.check(
        listed == "0",
        &format!("sb's disks after the detach: {listed}"),
    );
    // sa lets vda1 go (it has it closed): the detach completes.
    let out = t.run("fv block-detach sa xvda", 60);
    t.check(
        out.contains("detached"),
        &format!("block-detach sa xvda: {out}"),
    );
    // Read-only in sb now; then sa may not have it writable.
    t.run("fv block-attach sb phy:vda1,xvdc,r", 30);
    let err = t.run_fails("fv block-attach sa phy:vda1,xvda,w", 30);
    t.check(
        err.contains("vda1") && err.contains("'sb'"),
        &format!("block-attach sa vda1 w while sb has it r: the refusal names sb: {err}"),
    );
    t.console("sb");
    // (xvdc's previous disk left with the detach above.)
    t.wait_for(
        "[ -e /sys/block/xvdc ] && [ $(cat /sys/block/xvdc/size) -gt 0 ]",
        60,
        "the read-only xvdc appears in sb",
    );
    let ro = t.run("blockdev --getro /dev/xvdc; cat /sys/block/xvdc/ro", 30);
    t.check(ro == "1 1", &format!("xvdc read-only in sb: {ro}"));
    let err = t.run_fails(
        "dd if=/dev/zero of=/dev/xvdc bs=4k count=1 oflag=direct",
        30,
    );
    t.check(
        err.contains("Operation not permitted") || err.contains("Read-only"),
        &format!("a write to the read-only xvdc: {err}"),
    );
    let got = t.run(&read_pattern.replace("xvda", "xvdc"), 120);
    t.check(
        got.starts_with(&pat_sha),
        &format!("sb reads {got} on the read-only vda1, the pattern is {pat_sha}"),
    );
    t.leave_console();

    // --- Hot-plug: vda2 leaves sa (clean detach) and goes to sb as xvdd.
    let out = t.run("fv block-detach sa xvdb", 60);
    t.check(
        out.contains("detached"),
        &format!("block-detach sa xvdb: {out}"),
    );
    let listed = t.run("fv block-list sa | tail -n +2 | wc -l", 30);
    t.check(
        listed == "0",
        &format!("sa's disks after both detaches: {listed}"),
    );
    t.run("fv block-attach sb phy:vda2 xvdd w", 30);
    let list = t.run("fv block-list sb", 30);
    t.check(
        list.contains(&XVDD.to_string()),
        &format!("fv block-list sb: xvdd listed: {list}"),
    );
    t.console("sb");
    t.wait_for("[ -e /sys/block/xvdd ]", 60, "xvdd appears in sb");
    // sb sees what sa wrote, and adds its own file.
    let seen = t.run(
        &format!(
            "mount -t ext4 /dev/xvdd /mnt && cat /mnt/new.txt && echo {SB_TEXT} >/mnt/sb.txt && \
             umount /mnt"
        ),
        60,
    );
    t.check(
        seen == NEW_TEXT,
        &format!("sb reads sa's new.txt: {seen:?}"),
    );
    // Mounted (read-only, so that the filesystem stays clean for the host's check).
    t.run("mount -t ext4 -o ro /dev/xvdd /mnt && cat /mnt/sb.txt", 60);
    t.leave_console();
    let list = t.run("fv block-list sb", 30);
    t.check(
        re(&format!(r"{XVDD} +32754 +\d+ +4 ")).is_match(&list),
        &format!("fv block-list sb: xvdd connected: {list}"),
    );
    // A frontend that does not answer (sb paused): fv waits 10 s, as xl, and says how
    // to force it; --force removes the disk at once.
    t.run("fv pause sb", 30);
    let err = t.run_fails("fv block-detach sb xvdd", 60);
    t.check(
        err.contains("still there after 10 s") && err.contains("--force"),
        &format!("block-detach of a disk its paused domain holds: {err}"),
    );
    let out = t.run("fv block-detach --force sb xvdd", 30);
    t.check(
        out.contains("removed (forced)"),
        &format!("block-detach --force: {out}"),
    );
    let listed = t.run("fv block-list sb | awk 'NR > 1 {print $1}'", 30);
    t.check(
        listed == XVDC.to_string(),
        &format!("sb's disks after the forced detach: {listed}"),
    );
    t.run("fv unpause sb", 30);
    t.console("sb");
    t.wait_for("[ ! -e /sys/block/xvdd ]", 60, "xvdd leaves sb");
    t.run("umount /mnt", 30);
    t.leave_console();
    // A detach of a mounted disk whose domain runs: Linux 6.1's blkfront closes the
    // device even while it is open (blkfront_closing marks the disk dead and answers
    // Closed; older kernels refused, which is what made xl's wait time out), so the
    // detach completes and the disk leaves the guest under its mount.
    t.run("fv block-attach sb phy:vda2 xvdd w", 30);
    t.console("sb");
    t.wait_for("[ -e /sys/block/xvdd ]", 60, "xvdd appears in sb again");
    t.run("mount -t ext4 -o ro /dev/xvdd /mnt && cat /mnt/sb.txt", 60);
    t.leave_console();
    let out = t.run("fv block-detach sb xvdd", 60);
    t.check(
        out.contains("detached"),
        &format!("block-detach of a disk mounted in a running domain: {out}"),
    );
    t.console("sb");
    t.wait_for("[ ! -e /sys/block/xvdd ]", 60, "the mounted xvdd leaves sb");
    t.run("umount /mnt", 30);
    t.leave_console();

    // --- dom0 reads what sa wrote on partition 1 through its own xvda (its page cache
    // dropped first).
    t.run("fv destroy sb && fv destroy sa", 60);
    let got = t.run(
        &format!(
            "echo 3 >/proc/sys/vm/drop_caches; dd if=/dev/xvda1 bs=64k count={} iflag=direct 2>/dev/null | sha256sum",
            PATTERN_BYTES / 65536
        ),
        120,
    );
    t.check(
        got.starts_with(&pat_sha),
        &format!("dom0 reads {got} on xvda1, the pattern is {pat_sha}"),
    );

    t.b.send("sync; poweroff -f\r");
    t.b.expect_dom0_poweroff();
    t.b.assert_dom0_not_crashed();
    t.b.assert_absent("PANIC");

    // --- The host's view of the image.
    let part1 = image.partition_bytes(1).expect("read partition 1");
    t.check(
        part1[..PATTERN_BYTES] == pat[..],
        "partition 1 of the image does not start with the pattern",
    );
    t.check(
        part1[PATTERN_BYTES..].iter().all(|&b| b == 0),
        "partition 1 of the image has bytes past the pattern",
    );
    let fs_image = image.path.with_extension("p2");
    image
        .extract_partition(2, &fs_image)
        .expect("cut partition 2 out");
    let (status, text) = disk_image::e2fsck_readonly(&fs_image).expect("run e2fsck");
    t.check(
        status == 0,
        &format!("e2fsck -n on partition 2: status {status}\n{text}"),
    );
    for (file, want) in [
        ("/new.txt", format!("{NEW_TEXT}\n")),
        ("/sb.txt", format!("{SB_TEXT}\n")),
        ("/known.txt", KNOWN_TEXT.to_owned()),
    ] {
        let got = disk_image::debugfs(&fs_image, &format!("cat {file}")).expect("run debugfs");
        t.check(got == want, &format!("debugfs cat {file}: {got:?}"));
    }
    let _ = fs::remove_file(Path::new(&fs_image));
}
