//! The hypervisor's own devices: a QEMU machine with a virtio disk (a small raw image made
//! here, with a marker in sector 0) and a virtio NIC on QEMU's restricted user network;
//! `selftest=devices` reads and writes the disk and exchanges ARP with the user network's
//! gateway, all interrupt-driven (MSI-X).

use std::fs;

use ferrovisor_tests::{boot_with_config, ExitOutcome, Modules, VirtioDisk, VirtioNic};

const CMDLINE: &str = "dom0_mem=65536 console=com1 loglvl=info selftest=devices debug_exit=0xf4";
const MARKER: &[u8] = b"FERROVISOR-TEST-DISK sector 0";
const DISK_MIB: u64 = 8;
const MAC: &str = "52:54:00:12:34:56";

#[test]
fn devices_selftest_reads_writes_and_talks_arp() {
    let dir = xtask::target_dir().join("qemu-tests");
    fs::create_dir_all(&dir).expect("create target/qemu-tests");
    let image = dir.join("devices-disk.img");
    let mut bytes = vec![0u8; (DISK_MIB << 20) as usize];
    bytes[..MARKER.len()].copy_from_slice(MARKER);
    // An MBR (in the boot-code area's wake): partitions 1 and 2, Linux type, the
    // signature. Entries: boot flag, CHS (unused), type, CHS, first LBA, sectors.
    for (i, (start, sectors)) in [(2048u32, 4096u32), (6144, 8192)].into_iter().enumerate() {
        let e = 446 + 16 * i;
        bytes[e + 4] = 0x83;
        bytes[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        bytes[e + 12..e + 16].copy_from_slice(&sectors.to_le_bytes());
    }
    bytes[510..512].copy_from_slice(&[0x55, 0xaa]);
    let last = bytes.len() - 512;
    bytes[last..].fill(0x5a);
    fs::write(&image, &bytes).expect("write the disk image");

    let mut b = boot_with_config("devices", CMDLINE, Modules::Default, |cfg| {
        cfg.nics = vec![VirtioNic { mac: MAC.into() }];
        cfg.disks = vec![VirtioDisk {
            image: image.clone(),
            read_only: false,
        }];
    });
    b.expect(r"selftest: passed");
    b.expect_exit(ExitOutcome::HaltedCleanly);

    b.find(r"pci: ECAM at 0xb0000000, buses 0-255");
    b.find(&format!(r"pci: 00:0[0-9a-f]\.0 virtio-net {MAC}"));
    b.find(&format!(
        r"pci: 00:0[0-9a-f]\.0 virtio-blk vda {DISK_MIB} MiB, 2 partitions"
    ));
    b.find(r"virtio-blk vda: 16384 sectors, block size 512, read-write, flush");
    b.find(
        r#"selftest: vda sector 0: checksum [0-9a-f]{8}, marker "FERROVISOR-TEST-DISK sector 0""#,
    );
    b.find(r"selftest: vda sector 16383 \(the last\): checksum [0-9a-f]{8}");
    b.find(r"selftest: vda sector 16383: pattern written, flushed, read back intact");
    b.find(r"selftest: vda: \d+ asynchronous reads queued until busy, all completed by interrupt");
    b.find(r"selftest: arp reply from 52:55:0a:00:02:02 for 10\.0\.2\.2");
    b.assert_absent("PANIC");
    b.assert_absent("FATAL");

    // The write reached the image file (QEMU flushed it on the flush request).
    let after = fs::read(&image).expect("read the disk image back");
    b.check(
        after.len() == bytes.len() && after[..MARKER.len()] == *MARKER,
        "the disk image lost its size or sector 0",
    );
    b.check(
        after[last..] != bytes[last..],
        "the last sector of the image was not rewritten",
    );
}
