//! The multiboot2 header and the 32-bit entry / long-mode trampoline, assembled from
//! `boot/` at the top of the workspace. They end by calling `kernel_entry` in `main.rs`.

core::arch::global_asm!(
    include_str!("../../../../boot/multiboot2_header.S"),
    options(att_syntax)
);
core::arch::global_asm!(
    include_str!("../../../../boot/entry.S"),
    options(att_syntax)
);

extern "C" {
    static __image_phys_start: u8;
    static __image_phys_end: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
}

/// Addresses of the image's sections, from `linker.ld`.
#[derive(Clone, Copy, Debug)]
pub struct ImageLayout {
    pub phys_start: u64,
    pub phys_end: u64,
    pub text: (u64, u64),
    pub rodata: (u64, u64),
    pub data: (u64, u64),
}

pub fn image_layout() -> ImageLayout {
    // Only the addresses of the linker-script symbols are taken, never their contents.
    let a = |s: &u8| s as *const u8 as u64;
    // SAFETY: the symbols are defined by linker.ld; taking a reference to an extern static
    // is what makes them `unsafe`, and it is never read through.
    unsafe {
        ImageLayout {
            phys_start: a(&__image_phys_start),
            phys_end: a(&__image_phys_end),
            text: (a(&__text_start), a(&__text_end)),
            rodata: (a(&__rodata_start), a(&__rodata_end)),
            data: (a(&__data_start), a(&__data_end)),
        }
    }
}
