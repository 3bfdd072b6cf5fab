//! The SSE state a test kernel sets and checks: xmm0-xmm15 and MXCSR. The kernels are
//! soft-float, so no compiled code touches these registers: what a test loads stays
//! until it loads something else, or the hypervisor fails to keep it.

/// The sixteen xmm registers, 16 bytes each (little endian).
pub type Xmm = [[u8; 16]; 16];

/// MXCSR after reset or `fninit`-like initialisation: every exception masked.
pub const MXCSR_DEFAULT: u32 = 0x1f80;

/// Loads xmm0-xmm15 from `x`.
pub fn load_xmm(x: &Xmm) {
    // SAFETY: reads 256 bytes of `x`. The xmm registers are this test's alone: the
    // kernel is soft-float, so no compiled code uses them, and the asm declares none
    // (they are not an operand class the soft-float target has).
    #[cfg(target_os = "none")]
    unsafe {
        core::arch::asm!(
            "movdqu xmm0, [{p}]",
            "movdqu xmm1, [{p} + 16]",
            "movdqu xmm2, [{p} + 32]",
            "movdqu xmm3, [{p} + 48]",
            "movdqu xmm4, [{p} + 64]",
            "movdqu xmm5, [{p} + 80]",
            "movdqu xmm6, [{p} + 96]",
            "movdqu xmm7, [{p} + 112]",
            "movdqu xmm8, [{p} + 128]",
            "movdqu xmm9, [{p} + 144]",
            "movdqu xmm10, [{p} + 160]",
            "movdqu xmm11, [{p} + 176]",
            "movdqu xmm12, [{p} + 192]",
            "movdqu xmm13, [{p} + 208]",
            "movdqu xmm14, [{p} + 224]",
            "movdqu xmm15, [{p} + 240]",
            p = in(reg) x.as_ptr(),
            options(nostack, readonly),
        );
    }
    #[cfg(not(target_os = "none"))]
    let _ = x;
}

/// Stores xmm0-xmm15.
pub fn store_xmm() -> Xmm {
    #[cfg_attr(
        not(target_os = "none"),
        allow(unused_mut, reason = "only the bare-metal asm writes it")
    )]
    let mut x = [[0u8; 16]; 16];
    // SAFETY: writes 256 bytes of `x`; reading the xmm registers changes nothing.
    #[cfg(target_os = "none")]
    unsafe {
        core::arch::asm!(
            "movdqu [{p}], xmm0",
            "movdqu [{p} + 16], xmm1",
            "movdqu [{p} + 32], xmm2",
            "movdqu [{p} + 48], xmm3",
            "movdqu [{p} + 64], xmm4",
            "movdqu [{p} + 80], xmm5",
            "movdqu [{p} + 96], xmm6",
            "movdqu [{p} + 112], xmm7",
            "movdqu [{p} + 128], xmm8",
            "movdqu [{p} + 144], xmm9",
            "movdqu [{p} + 160], xmm10",
            "movdqu [{p} + 176], xmm11",
            "movdqu [{p} + 192], xmm12",
            "movdqu [{p} + 208], xmm13",
            "movdqu [{p} + 224], xmm14",
            "movdqu [{p} + 240], xmm15",
            p = in(reg) x.as_mut_ptr(),
            options(nostack),
        );
    }
    x
}

/// Loads MXCSR.
pub fn set_mxcsr(v: u32) {
    // SAFETY: `ldmxcsr` of a valid value (no reserved bits) only changes SSE rounding and
    // exception masks, which no compiled code depends on (soft-float).
    #[cfg(target_os = "none")]
    unsafe {
        core::arch::asm!("ldmxcsr [{p}]", p = in(reg) &v, options(nostack, readonly))
    };
    #[cfg(not(target_os = "none"))]
    let _ = v;
}

/// Reads MXCSR.
pub fn mxcsr() -> u32 {
    #[cfg_attr(
        not(target_os = "none"),
        allow(unused_mut, reason = "only the bare-metal asm writes it")
    )]
    let mut v = 0u32;
    // SAFETY: `stmxcsr` writes the 4 bytes of `v`.
    #[cfg(target_os = "none")]
    unsafe {
        core::arch::asm!("stmxcsr [{p}]", p = in(reg) &mut v, options(nostack))
    };
    v
}

/// The first register whose value differs, with both values.
pub fn first_difference(got: &Xmm, want: &Xmm) -> Option<(usize, u128, u128)> {
    (0..16)
        .find(|&r| got[r] != want[r])
        .map(|r| (r, u128::from_le_bytes(got[r]), u128::from_le_bytes(want[r])))
}
