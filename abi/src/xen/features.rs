//! Feature bits a guest reads with `XENVER_get_features` (`features.h`). Each constant is a
//! bit number across the submaps: submap `n / 32`, bit `n % 32`.

pub const XENFEAT_WRITABLE_PAGE_TABLES: u32 = 0;
pub const XENFEAT_WRITABLE_DESCRIPTOR_TABLES: u32 = 1;
pub const XENFEAT_AUTO_TRANSLATED_PHYSMAP: u32 = 2;
pub const XENFEAT_SUPERVISOR_MODE_KERNEL: u32 = 3;
pub const XENFEAT_PAE_PGDIR_ABOVE_4GB: u32 = 4;
pub const XENFEAT_MMU_PT_UPDATE_PRESERVE_AD: u32 = 5;
pub const XENFEAT_HIGHMEM_ASSIST: u32 = 6;
pub const XENFEAT_GNTTAB_MAP_AVAIL_BITS: u32 = 7;
pub const XENFEAT_HVM_CALLBACK_VECTOR: u32 = 8;
pub const XENFEAT_HVM_SAFE_PVCLOCK: u32 = 9;
pub const XENFEAT_HVM_PIRQS: u32 = 10;
pub const XENFEAT_DOM0: u32 = 11;
pub const XENFEAT_MEMORY_OP_VNODE_SUPPORTED: u32 = 13;
pub const XENFEAT_ARM_SMCCC_SUPPORTED: u32 = 14;
pub const XENFEAT_LINUX_RSDP_UNRESTRICTED: u32 = 15;
pub const XENFEAT_NOT_DIRECT_MAPPED: u32 = 16;
pub const XENFEAT_DIRECT_MAPPED: u32 = 17;

/// Number of 32-bit submaps (`XENFEAT_NR_SUBMAPS`).
pub const XENFEAT_NR_SUBMAPS: u32 = 1;

/// The submap holding feature bit `feature` and its mask there.
pub const fn feature_submap(feature: u32) -> (u32, u32) {
    (feature / 32, 1 << (feature % 32))
}

/// The 32-bit submap `idx` of a feature set given as a list of feature bit numbers.
pub const fn submap_of(features: &[u32], idx: u32) -> u32 {
    let mut map = 0;
    let mut i = 0;
    while i < features.len() {
        let (sub, mask) = feature_submap(features[i]);
        if sub == idx {
            map |= mask;
        }
        i += 1;
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submaps() {
        assert_eq!(feature_submap(XENFEAT_DOM0), (0, 1 << 11));
        assert_eq!(feature_submap(40), (1, 1 << 8));
        let pv = [
            XENFEAT_WRITABLE_PAGE_TABLES,
            XENFEAT_MMU_PT_UPDATE_PRESERVE_AD,
            XENFEAT_GNTTAB_MAP_AVAIL_BITS,
            XENFEAT_DOM0,
        ];
        assert_eq!(submap_of(&pv, 0), 0b1000_1010_0001);
        assert_eq!(submap_of(&pv, 1), 0);
    }
}
