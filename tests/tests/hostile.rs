//! A hostile frontend: the `hostile` test kernel boots as dom0 with a vbd (`dom0_disk=vda1`:
//! partition 1 of a disk made here) and a vif (`dom0_vif=on`, the switch's uplink a NIC on
//! QEMU's user network), plays blkfront and netfront by hand and breaks both protocols on
//! purpose (see `tests/kernels/src/bin/hostile.rs` for the list). Each attack has one
//! expected outcome, which the kernel checks; here the summary's counts, a clean poweroff
//! with nothing fatal in the hypervisor's log, and the disk afterwards: every byte outside
//! partition 1 as it was, and inside it only the pages the kernel wrote legitimately
//! changed, to what it wrote. (Partition 2, which the kernel attaches to itself
//! read-only and tries to write, is among the bytes that must not change.)

use std::{
    collections::hash_map::DefaultHasher,
    fs,
    hash::{Hash, Hasher},
};

use ferrovisor_tests::{boot_with_config, test_kernel, Modules, VirtioDisk, VirtioNic};

#[allow(
    dead_code,
    reason = "shared with the kernels; not every constant is checked here"
)]
#[path = "../kernels/src/contract.rs"]
mod contract;

use contract::{
    hostile_disk_word, hostile_write_word, HOSTILE_DISK_SECTORS, HOSTILE_FINAL_WRITE,
    HOSTILE_FIRST_WRITE, HOSTILE_P1_SECTORS, HOSTILE_P1_START, HOSTILE_P2_SECTORS,
    HOSTILE_P2_START, HOSTILE_RACE_WRITE,
};

const CMDLINE: &str = "dom0_mem=32M dom0_max_vcpus=2 console=com1 loglvl=info \
                       debug_exit=0xf4 dom0_disk=vda1 dom0_vif=on";
const MAC: &str = "52:54:00:12:34:57";
/// What the kernel's summary must count (its attack list is fixed).
const ATTACKS: u32 = 124;
const SERVED: u32 = 83;

fn image() -> Vec<u8> {
    let mut bytes = vec![0u8; (HOSTILE_DISK_SECTORS * 512) as usize];
    for (i, w) in bytes.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&hostile_disk_word(i as u64 * 8).to_le_bytes());
    }
    // The MBR: partitions 1 and 2 (Linux), the signature.
    for (i, (start, sectors)) in [
        (HOSTILE_P1_START, HOSTILE_P1_SECTORS),
        (HOSTILE_P2_START, HOSTILE_P2_SECTORS),
    ]
    .into_iter()
    .enumerate()
    {
        let e = 446 + 16 * i;
        bytes[e..e + 16].fill(0);
        bytes[e + 4] = 0x83;
        bytes[e + 8..e + 12].copy_from_slice(&(start as u32).to_le_bytes());
        bytes[e + 12..e + 16].copy_from_slice(&(sectors as u32).to_le_bytes());
    }
    bytes[440..446].fill(0);
    bytes[478..510].fill(0);
    bytes[510..512].copy_from_slice(&[0x55, 0xaa]);
    bytes
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The page of partition 1 at `sector`, as a byte range of the image.
fn page(sector: u64) -> std::ops::Range<usize> {
    let at = ((HOSTILE_P1_START + sector) * 512) as usize;
    at..at + 4096
}

fn written(tag: u64) -> Vec<u8> {
    (0..512u64)
        .flat_map(|i| hostile_write_word(tag, i * 8).to_le_bytes())
        .collect()
}

#[test]
fn hostile_frontend_leaves_the_hypervisor_and_the_disk_intact() {
    let dir = xtask::target_dir().join("qemu-tests");
    fs::create_dir_all(&dir).expect("create target/qemu-tests");
    let path = dir.join("hostile-disk.img");
    let before = image();
    fs::write(&path, &before).expect("write the disk image");

    let mut b = boot_with_config(
        "hostile",
        CMDLINE,
        Modules::Dom0Kernel {
            kernel: test_kernel("hostile"),
            cmdline: "",
        },
        |cfg| {
            cfg.nics = vec![VirtioNic { mac: MAC.into() }];
            cfg.disks = vec![VirtioDisk {
                image: path.clone(),
                read_only: false,
            }];
        },
    );
    let verdict = b.expect(r"\(d0\) pv-test hostile: (PASS|FAIL: .*)");
    if verdict.group(1) != "PASS" {
        b.fail(&format!("the hostile kernel failed: {}", verdict.text));
    }
    b.expect_dom0_poweroff();
    let summary = b.find(
        r"\(d0\) hostile: (\d+) attacks refused, (\d+) legitimate requests served, (\d+) unexpected",
    );
    let counts: Vec<u32> = (1..=3)
        .map(|i| summary.group(i).parse().unwrap_or(u32::MAX))
        .collect();
    b.check(
        counts == [ATTACKS, SERVED, 0],
        &format!("summary {counts:?}, expected [{ATTACKS}, {SERVED}, 0]"),
    );
    b.assert_absent("UNEXPECTED");
    b.assert_absent("FAIL");
    b.assert_absent("PANIC");
    b.assert_absent("FATAL");
    b.assert_dom0_not_crashed();
    // The devices were attached before dom0 ran, and the backends said why they closed.
    b.find(r"d0: vbd 51712 attached \(vda1 as xvda, w\)");
    b.find(r"d0: vif 0 attached");
    b.find(r"d0: vbd 51728 attached \(vda2 as xvdb, r\)");
    b.find(r"d0: vif 1 attached");
    b.find(r"d0: vbd 51728 removed");
    b.find(r"vbd 51712: the frontend broke its ring");
    b.find(r"vif 0: the frontend broke the protocol");
    b.find(r"\(d0\) hostile: refused: vbd requests rewritten while being read: \d+ requests");

    let after = fs::read(&path).expect("read the disk image back");
    b.check(after.len() == before.len(), "the image changed size");
    let p1 = ((HOSTILE_P1_START * 512) as usize)
        ..(((HOSTILE_P1_START + HOSTILE_P1_SECTORS) * 512) as usize);
    for (what, range) in [
        ("before partition 1 (the MBR and the gap)", 0..p1.start),
        (
            "from the end of partition 1 to the disk's end",
            p1.end..before.len(),
        ),
    ] {
        let (h0, h1) = (hash(&before[range.clone()]), hash(&after[range.clone()]));
        b.check(
            h0 == h1,
            &format!("the image {what} changed: hash {h0:#x} -> {h1:#x}"),
        );
    }
    // Inside partition 1: the two pages written and read back hold what was written;
    // the race's page what the valid variant wrote (or what was there); nothing else
    // changed.
    let race = page(HOSTILE_RACE_WRITE);
    let legit = [
        (page(HOSTILE_FIRST_WRITE), written(1)),
        (page(HOSTILE_FINAL_WRITE), written(3)),
    ];
    for (range, data) in &legit {
        b.check(
            after[range.clone()] == data[..],
            &format!("partition 1 bytes {range:?} do not hold the kernel's write"),
        );
    }
    b.check(
        after[race.clone()] == written(2)[..] || after[race.clone()] == before[race.clone()],
        "the race's page holds neither the valid write nor its old data",
    );
    let touched = |i: usize| race.contains(&i) || legit.iter().any(|(r, _)| r.contains(&i));
    let changed = p1.clone().find(|&i| !touched(i) && after[i] != before[i]);
    b.check(
        changed.is_none(),
        &format!("partition 1 changed at image byte {changed:?}, which nothing wrote legitimately"),
    );
}
