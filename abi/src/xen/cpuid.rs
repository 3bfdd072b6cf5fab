//! The hypervisor CPUID leaves (`arch-x86/cpuid.h`). A PV kernel finds them with the
//! forced-emulation CPUID (`XEN_EMULATE_PREFIX`) at the first 0x100-aligned base from
//! 0x40000000 whose leaf 0 carries the "XenVMMXenVMM" signature.

/// The first base searched (`XEN_CPUID_FIRST_LEAF`); Ferrovisor's leaves are here.
pub const XEN_CPUID_FIRST_LEAF: u32 = 0x4000_0000;

/// Leaf `i` at the first base (`XEN_CPUID_LEAF(i)`).
pub const fn xen_cpuid_leaf(i: u32) -> u32 {
    XEN_CPUID_FIRST_LEAF + i
}

/// Offsets from the base. Leaf 0: eax = the largest leaf offered, ebx:ecx:edx = signature.
pub const XEN_CPUID_LEAF_BASE: u32 = 0;
/// Leaf 1: eax = major << 16 | minor; ebx..edx reserved (zero).
pub const XEN_CPUID_LEAF_VERSION: u32 = 1;
/// Leaf 2: eax = hypercall pages (always 1), ebx = MSR that installs the hypercall page,
/// ecx = `XEN_CPUID_FEAT1_*`, edx = features 2.
pub const XEN_CPUID_LEAF_HYPERCALL: u32 = 2;
/// Leaf 3: TSC mode and scale (sub-leaves 0-2).
pub const XEN_CPUID_LEAF_TIME: u32 = 3;
/// Leaf 4: HVM features (`XEN_HVM_CPUID_*`).
pub const XEN_CPUID_LEAF_HVM: u32 = 4;
/// Leaf 5: PV parameters; sub-leaf 0 `ebx[7:0]` = maximum machine address width.
pub const XEN_CPUID_LEAF_PV: u32 = 5;
/// Highest leaf offset defined (`XEN_CPUID_MAX_NUM_LEAVES`).
pub const XEN_CPUID_MAX_NUM_LEAVES: u32 = 5;

/// "XenV" (`XEN_CPUID_SIGNATURE_EBX`).
pub const XEN_CPUID_SIGNATURE_EBX: u32 = 0x566e_6558;
/// "MMXe" (`XEN_CPUID_SIGNATURE_ECX`).
pub const XEN_CPUID_SIGNATURE_ECX: u32 = 0x6558_4d4d;
/// "nVMM" (`XEN_CPUID_SIGNATURE_EDX`).
pub const XEN_CPUID_SIGNATURE_EDX: u32 = 0x4d4d_566e;
/// The signature as the bytes of ebx, ecx, edx.
pub const XEN_CPUID_SIGNATURE: &[u8; 12] = b"XenVMMXenVMM";

/// Leaf 2 ecx: `MMU_PT_UPDATE_PRESERVE_AD` is available.
pub const XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD: u32 = 1 << 0;

// Leaf 4 eax (HVM guests).
pub const XEN_HVM_CPUID_APIC_ACCESS_VIRT: u32 = 1 << 0;
pub const XEN_HVM_CPUID_X2APIC_VIRT: u32 = 1 << 1;
pub const XEN_HVM_CPUID_IOMMU_MAPPINGS: u32 = 1 << 2;
pub const XEN_HVM_CPUID_VCPU_ID_PRESENT: u32 = 1 << 3;
pub const XEN_HVM_CPUID_DOMID_PRESENT: u32 = 1 << 4;
pub const XEN_HVM_CPUID_EXT_DEST_ID: u32 = 1 << 5;
pub const XEN_HVM_CPUID_UPCALL_VECTOR: u32 = 1 << 6;

/// Leaf 5 sub-leaf 0 ebx: maximum machine address width in bits.
pub const XEN_CPUID_MACHINE_ADDRESS_WIDTH_MASK: u32 = 0xff;

/// Sub-leaf value meaning "no sub-leaf" (`XEN_CPUID_NO_SUBLEAF`, `arch-x86/xen.h`).
pub const XEN_CPUID_NO_SUBLEAF: u32 = 0xffff_ffff;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_registers_spell_xenvmm() {
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&XEN_CPUID_SIGNATURE_EBX.to_le_bytes());
        sig[4..8].copy_from_slice(&XEN_CPUID_SIGNATURE_ECX.to_le_bytes());
        sig[8..].copy_from_slice(&XEN_CPUID_SIGNATURE_EDX.to_le_bytes());
        assert_eq!(&sig, XEN_CPUID_SIGNATURE);
    }

    #[test]
    fn leaves() {
        assert_eq!(xen_cpuid_leaf(XEN_CPUID_LEAF_VERSION), 0x4000_0001);
        assert_eq!(xen_cpuid_leaf(XEN_CPUID_MAX_NUM_LEAVES), 0x4000_0005);
    }
}
