//! The test kernels as the hypervisor's loader sees them: each one built for the
//! bare-metal target is accepted by `ferrovisor::guest_image::inspect`, linked where its
//! notes say, entered at `_start`, and asks for a hypercall page only when it should.

use ferrovisor::guest_image::{self, ImageFormat};
use xtask::build::{test_kernels, Profile};

#[path = "../src/contract.rs"]
#[allow(
    dead_code,
    reason = "shared with the kernels; not every constant is checked here"
)]
mod contract;

/// The kernels whose notes ask for a hypercall page.
const WITH_HYPERCALL_PAGE: &[&str] = &["hypercall_page"];

#[test]
fn every_test_kernel_is_accepted_by_the_loader() {
    let kernels = test_kernels(Profile::Release).expect("the test kernels build");
    assert!(kernels.contains_key("hello"), "{kernels:?}");
    for (name, path) in &kernels {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let image = guest_image::inspect(&bytes, 64 << 20)
            .unwrap_or_else(|e| panic!("test kernel {name} refused by the loader: {e}"));
        let info = &image.info;
        assert_eq!(image.format, ImageFormat::Elf, "{name}");
        assert_eq!(info.virt_base, contract::VIRT_BASE, "{name}");
        assert_eq!(info.paddr_offset, 0, "{name}");
        assert_eq!(info.guest_os, "linux", "{name}");
        assert_eq!(info.loader, "generic", "{name}");
        assert_eq!(info.xen_version, "xen-3.0", "{name}");
        assert_eq!(
            info.guest_version.as_deref(),
            Some("ferrovisor-test"),
            "{name}"
        );
        assert_eq!(info.features.required, 0, "{name}: no feature is required");
        // `_start` is the first thing in the image.
        assert_eq!(image.entry, contract::IMAGE_START, "{name}");
        assert_eq!(image.virt_start, contract::IMAGE_START, "{name}");
        assert!(
            image.virt_end > image.virt_start && image.virt_end - image.virt_start < (4 << 20),
            "{name}: image {:#x}-{:#x}",
            image.virt_start,
            image.virt_end
        );
        // text RX, rodata R, data+bss RW, each placed where it is linked.
        assert_eq!(image.segments.len(), 3, "{name}: {:?}", image.segments);
        assert_eq!(image.segments[0].guest_virt, contract::IMAGE_START);
        let rw = &image.segments[2];
        assert!(
            rw.mem_size >= 64 << 10,
            "{name}: the bss holds the 64 KiB stack"
        );

        let wants_page = WITH_HYPERCALL_PAGE.contains(&name.as_str());
        match info.hypercall_page {
            Some(page) => {
                assert!(wants_page, "{name} asks for a hypercall page at {page:#x}");
                assert_eq!(page % 4096, 0, "{name}");
                let text = &image.segments[0];
                assert!(
                    page >= text.guest_virt && page + 4096 <= text.guest_end(),
                    "{name}: hypercall page {page:#x} outside .text"
                );
            }
            None => assert!(!wants_page, "{name} has no HYPERCALL_PAGE note"),
        }
    }
}
