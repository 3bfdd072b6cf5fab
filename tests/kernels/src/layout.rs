//! Addresses `linker.ld` defines: the image's extent and the kernel's own stack.

/// Reads the address of a linker-script symbol.
#[cfg(target_os = "none")]
macro_rules! symbol_addr {
    ($sym:ident) => {{
        extern "C" {
            static $sym: u8;
        }
        // Only the symbol's address is taken, never its (meaningless) contents.
        (&raw const $sym) as u64
    }};
}

/// First byte of the image (`VIRT_BASE` + 2 MiB).
pub fn image_start() -> u64 {
    #[cfg(target_os = "none")]
    return symbol_addr!(__pvrt_image_start);
    #[cfg(not(target_os = "none"))]
    return 0;
}

/// End of the read-only part of the image (text, rodata, notes; page aligned): where the
/// writable data starts.
pub fn data_start() -> u64 {
    #[cfg(target_os = "none")]
    return symbol_addr!(__pvrt_data_start);
    #[cfg(not(target_os = "none"))]
    return 0;
}

/// End of the image (page aligned, past the bss and the stack): where the domain
/// builder's start-of-day data (initrd, p2m list, start_info, page tables) begins.
pub fn image_end() -> u64 {
    #[cfg(target_os = "none")]
    return symbol_addr!(__pvrt_image_end);
    #[cfg(not(target_os = "none"))]
    return 0;
}

/// The kernel's own stack, `[bottom, top)`, at the end of the bss.
pub fn stack() -> (u64, u64) {
    #[cfg(target_os = "none")]
    return (
        symbol_addr!(__pvrt_stack_bottom),
        symbol_addr!(__pvrt_stack_top),
    );
    #[cfg(not(target_os = "none"))]
    return (0, 0);
}
