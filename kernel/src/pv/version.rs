//! Answers to `xen_version(cmd, arg)` (`version.h`).
//!
//! [`answer`] decides what a sub-op returns; the hypercall handler then copies
//! [`VersionAnswer::bytes`] to the guest's `arg` (at [`VersionAnswer::copy_offset`]) and
//! returns [`VersionAnswer::return_value`]. Two sub-ops read their argument first, which the
//! handler passes in as a [`VersionArg`]: `XENVER_get_features` (the submap index) and
//! `XENVER_build_id` (the buffer length, or a null handle to ask for the size).
//!
//! Who may ask what follows Xen's default policy: the version, platform parameters and
//! features are for everyone; extraversion, compile info, capabilities, changeset, page size
//! and guest handle too; the hypervisor command line and build id only for the privileged
//! domain (`-EPERM` otherwise).
//!
//! # Features offered to a PV guest (`XENVER_get_features`, submap 0)
//!
//! | feature | offered | why |
//! |---|---|---|
//! | `mmu_pt_update_preserve_ad` | yes | the PV MMU's `mmu_update` implements `MMU_PT_UPDATE_PRESERVE_AD`; Linux 6.1 panics without it |
//! | `gnttab_map_avail_bits` | yes | grant mappings keep the PTE's available bits; Linux 6.1 panics without it |
//! | `highmem_assist` | yes | `mmuext_op` implements `MMUEXT_CLEAR_PAGE`/`MMUEXT_COPY_PAGE` (Xen offers it to every PV guest) |
//! | `dom0` | privileged domain only | tells Linux it is the initial domain |
//! | `writable_page_tables`, `writable_descriptor_tables` | no | they mean "write page/descriptor tables with no hypercall at all", which only translated guests get; PV guests use `mmu_update` (and the `writable_pagetables` VM assist, which is not this feature) |
//! | `auto_translated_physmap` | no | PV guests manage their own P2M |
//! | `supervisor_mode_kernel` | no | the guest kernel runs in ring 3 |
//! | `pae_pgdir_above_4gb` | no | a 32-bit PAE guest feature |
//! | `hvm_*`, `memory_op_vnode_supported`, `linux_rsdp_unrestricted`, `(not_)direct_mapped`, `arm_*` | no | HVM, vNUMA, PVH or Arm only |

use ferrovisor_abi::{
    errno::XenErrno,
    version::XEN_VERSION,
    xen::{
        arch_x86::HYPERVISOR_VIRT_START,
        features::{
            submap_of, XENFEAT_DOM0, XENFEAT_GNTTAB_MAP_AVAIL_BITS, XENFEAT_HIGHMEM_ASSIST,
            XENFEAT_MMU_PT_UPDATE_PRESERVE_AD, XENFEAT_NR_SUBMAPS,
        },
        version::{
            XenCapabilitiesInfo, XenChangesetInfo, XenCommandline, XenCompileInfo, XenExtraversion,
            XenFeatureInfo, XenPlatformParameters, XenVersionOp, XEN_CAPABILITIES_INFO_LEN,
            XEN_CHANGESET_INFO_LEN, XEN_EXTRAVERSION_LEN,
        },
        XenDomainHandle,
    },
};
use zerocopy::IntoBytes;

use crate::mm::PAGE_SIZE;

/// Features every PV guest gets (see the module documentation).
pub const PV_FEATURES: [u32; 3] = [
    XENFEAT_MMU_PT_UPDATE_PRESERVE_AD,
    XENFEAT_GNTTAB_MAP_AVAIL_BITS,
    XENFEAT_HIGHMEM_ASSIST,
];

/// The interface name in `XENVER_capabilities`: 64-bit PV guests only (no 32-bit PV, no
/// HVM). Xen ends each entry with a space.
pub const CAPABILITIES: &str = "xen-3.0-x86_64 ";

/// Strings describing the running hypervisor build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildInfo<'a> {
    /// Appended to `major.minor` (Linux prints "Xen version: 4.17.0-ferrovisor").
    pub extraversion: &'a str,
    pub compiler: &'a str,
    pub compile_by: &'a str,
    pub compile_domain: &'a str,
    pub compile_date: &'a str,
    pub changeset: &'a str,
    /// The build id, when the image carries one.
    pub build_id: Option<&'a [u8]>,
}

/// This build. The compile date and domain stay empty so builds are reproducible.
pub const BUILD_INFO: BuildInfo<'static> = BuildInfo {
    extraversion: ".0-ferrovisor",
    compiler: "rustc",
    compile_by: "ferrovisor",
    compile_domain: "",
    compile_date: "",
    changeset: concat!("ferrovisor ", env!("CARGO_PKG_VERSION")),
    build_id: None,
};

/// What the answers depend on besides the sub-op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionContext<'a> {
    pub build: BuildInfo<'a>,
    /// The caller is the privileged (initial) domain: it gets `XENFEAT_dom0`, the command
    /// line and the build id.
    pub privileged: bool,
    /// The domain's handle (its UUID), set by the toolstack.
    pub guest_handle: XenDomainHandle,
    /// The hypervisor's command line.
    pub commandline: &'a str,
}

/// The part of `arg` a sub-op reads before answering, as the hypercall handler read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionArg {
    /// The sub-op reads nothing.
    None,
    /// `XENVER_get_features`: `xen_feature_info.submap_idx`.
    FeatureSubmap(u32),
    /// `XENVER_build_id`: `xen_build_id.len`, or `None` for a null handle (the guest asks
    /// for the size).
    BuildIdLen(Option<u32>),
}

/// A `xen_version` answer.
#[derive(Clone, Debug)]
pub enum VersionAnswer<'a> {
    /// Only a return value (`XENVER_version`, `XENVER_pagesize`, `XENVER_build_id` with a
    /// null handle); nothing is copied.
    Value(u64),
    Extraversion(XenExtraversion),
    CompileInfo(XenCompileInfo),
    Capabilities(XenCapabilitiesInfo),
    Changeset(XenChangesetInfo),
    PlatformParameters(XenPlatformParameters),
    /// The whole `xen_feature_info`, index included.
    Features(XenFeatureInfo),
    GuestHandle(XenDomainHandle),
    Commandline(XenCommandline),
    /// The id, copied after the `len` field; the return value is its length.
    BuildId(&'a [u8]),
}

/// Two answers are equal when they are the same sub-op's answer with the same bytes and
/// return value (the ABI structures carry no `PartialEq` of their own).
impl PartialEq for VersionAnswer<'_> {
    fn eq(&self, other: &Self) -> bool {
        core::mem::discriminant(self) == core::mem::discriminant(other)
            && self.return_value() == other.return_value()
            && self.bytes() == other.bytes()
    }
}

impl Eq for VersionAnswer<'_> {}

impl VersionAnswer<'_> {
    /// What the hypercall returns in `rax`.
    pub fn return_value(&self) -> u64 {
        match self {
            Self::Value(v) => *v,
            Self::BuildId(id) => id.len() as u64,
            _ => 0,
        }
    }

    /// The bytes to copy to the guest at `arg + copy_offset()`.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Value(_) => &[],
            Self::Extraversion(b) => b,
            Self::CompileInfo(info) => info.as_bytes(),
            Self::Capabilities(b) | Self::Commandline(b) => b,
            Self::Changeset(b) => b,
            Self::PlatformParameters(p) => p.as_bytes(),
            Self::Features(f) => f.as_bytes(),
            Self::GuestHandle(h) => h,
            Self::BuildId(id) => id,
        }
    }

    /// Where in `arg` the bytes go: after `xen_build_id.len` for the build id, at the
    /// start otherwise.
    pub fn copy_offset(&self) -> u64 {
        match self {
            Self::BuildId(_) => core::mem::size_of::<u32>() as u64,
            _ => 0,
        }
    }
}

/// `s` as a NUL-terminated C string in a field of `N` bytes, cut to `N - 1` bytes.
pub fn c_string<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let len = s.len().min(N.saturating_sub(1));
    out[..len].copy_from_slice(&s.as_bytes()[..len]);
    out
}

/// Submap `idx` of the features offered to a PV guest, `-EINVAL` past the last submap.
pub fn features(idx: u32, privileged: bool) -> Result<u32, XenErrno> {
    if idx >= XENFEAT_NR_SUBMAPS {
        return Err(XenErrno::Einval);
    }
    let dom0 = if privileged {
        submap_of(&[XENFEAT_DOM0], idx)
    } else {
        0
    };
    Ok(submap_of(&PV_FEATURES, idx) | dom0)
}

/// The answer to `xen_version(cmd, arg)`. Unknown sub-ops are `-ENOSYS`.
pub fn answer<'a>(
    cmd: u64,
    arg: VersionArg,
    ctx: &VersionContext<'a>,
) -> Result<VersionAnswer<'a>, XenErrno> {
    let op = XenVersionOp::try_from(cmd)?;
    Ok(match op {
        XenVersionOp::Version => VersionAnswer::Value(u64::from(XEN_VERSION)),
        XenVersionOp::Extraversion => {
            VersionAnswer::Extraversion(c_string::<XEN_EXTRAVERSION_LEN>(ctx.build.extraversion))
        }
        XenVersionOp::CompileInfo => VersionAnswer::CompileInfo(XenCompileInfo {
            compiler: c_string(ctx.build.compiler),
            compile_by: c_string(ctx.build.compile_by),
            compile_domain: c_string(ctx.build.compile_domain),
            compile_date: c_string(ctx.build.compile_date),
        }),
        XenVersionOp::Capabilities => {
            VersionAnswer::Capabilities(c_string::<XEN_CAPABILITIES_INFO_LEN>(CAPABILITIES))
        }
        XenVersionOp::Changeset => {
            VersionAnswer::Changeset(c_string::<XEN_CHANGESET_INFO_LEN>(ctx.build.changeset))
        }
        XenVersionOp::PlatformParameters => {
            VersionAnswer::PlatformParameters(XenPlatformParameters {
                virt_start: HYPERVISOR_VIRT_START,
            })
        }
        XenVersionOp::GetFeatures => {
            let VersionArg::FeatureSubmap(submap_idx) = arg else {
                return Err(XenErrno::Einval);
            };
            VersionAnswer::Features(XenFeatureInfo {
                submap_idx,
                submap: features(submap_idx, ctx.privileged)?,
            })
        }
        XenVersionOp::Pagesize => VersionAnswer::Value(PAGE_SIZE),
        XenVersionOp::GuestHandle => VersionAnswer::GuestHandle(ctx.guest_handle),
        XenVersionOp::Commandline => {
            if !ctx.privileged {
                return Err(XenErrno::Eperm);
            }
            VersionAnswer::Commandline(c_string(ctx.commandline))
        }
        XenVersionOp::BuildId => build_id(arg, ctx)?,
    })
}

fn build_id<'a>(arg: VersionArg, ctx: &VersionContext<'a>) -> Result<VersionAnswer<'a>, XenErrno> {
    if !ctx.privileged {
        return Err(XenErrno::Eperm);
    }
    let VersionArg::BuildIdLen(len) = arg else {
        return Err(XenErrno::Einval);
    };
    if len == Some(0) {
        return Err(XenErrno::Einval);
    }
    let id = ctx.build.build_id.ok_or(XenErrno::Enodata)?;
    match len {
        None => Ok(VersionAnswer::Value(id.len() as u64)),
        Some(len) if (len as usize) < id.len() => Err(XenErrno::Enobufs),
        Some(_) => Ok(VersionAnswer::BuildId(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HANDLE: XenDomainHandle = [0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

    fn ctx(privileged: bool) -> VersionContext<'static> {
        VersionContext {
            build: BUILD_INFO,
            privileged,
            guest_handle: HANDLE,
            commandline: "dom0_mem=262144 console=com1 loglvl=info",
        }
    }

    fn ask(
        cmd: u64,
        arg: VersionArg,
        privileged: bool,
    ) -> Result<VersionAnswer<'static>, XenErrno> {
        answer(cmd, arg, &ctx(privileged))
    }

    fn c_str(bytes: &[u8]) -> &str {
        let end = bytes.iter().position(|&b| b == 0).unwrap();
        core::str::from_utf8(&bytes[..end]).unwrap()
    }

    #[test]
    fn version_and_pagesize_are_return_values() {
        let v = ask(0, VersionArg::None, false).unwrap();
        assert_eq!(v, VersionAnswer::Value(0x0004_0011));
        assert_eq!(v.return_value(), 0x0004_0011);
        assert!(v.bytes().is_empty());
        let p = ask(7, VersionArg::None, false).unwrap();
        assert_eq!(p.return_value(), 4096);
    }

    #[test]
    fn strings_fit_their_fields() {
        let e = ask(1, VersionArg::None, false).unwrap();
        assert_eq!(e.bytes().len(), 16);
        assert_eq!(c_str(e.bytes()), ".0-ferrovisor");
        assert_eq!(e.return_value(), 0);

        let c = ask(3, VersionArg::None, false).unwrap();
        assert_eq!(c.bytes().len(), 1024);
        assert_eq!(c_str(c.bytes()), "xen-3.0-x86_64 ");

        let s = ask(4, VersionArg::None, false).unwrap();
        assert_eq!(s.bytes().len(), 64);
        assert!(c_str(s.bytes()).starts_with("ferrovisor "));

        let VersionAnswer::CompileInfo(info) = ask(2, VersionArg::None, false).unwrap() else {
            panic!("not compile info");
        };
        assert_eq!(info.as_bytes().len(), 144);
        assert_eq!(c_str(&info.compiler), "rustc");
        assert_eq!(c_str(&info.compile_by), "ferrovisor");
        assert_eq!(c_str(&info.compile_date), "");
    }

    #[test]
    fn long_strings_are_cut_and_stay_terminated() {
        let cut: [u8; 16] = c_string("0123456789abcdefghij");
        assert_eq!(&cut[..15], b"0123456789abcde");
        assert_eq!(cut[15], 0);
        let empty: [u8; 0] = c_string("anything");
        assert_eq!(empty.len(), 0);
    }

    #[test]
    fn platform_parameters() {
        let p = ask(5, VersionArg::None, false).unwrap();
        assert_eq!(p.bytes(), &0xffff_8000_0000_0000u64.to_le_bytes());
    }

    #[test]
    fn features_for_domu_and_dom0() {
        let f = ask(6, VersionArg::FeatureSubmap(0), false).unwrap();
        // preserve_ad (5), highmem_assist (6), gnttab_map_avail_bits (7).
        assert_eq!(
            f,
            VersionAnswer::Features(XenFeatureInfo {
                submap_idx: 0,
                submap: 0xe0
            })
        );
        assert_eq!(f.bytes(), &[0, 0, 0, 0, 0xe0, 0, 0, 0]);
        let d = ask(6, VersionArg::FeatureSubmap(0), true).unwrap();
        assert_eq!(
            d,
            VersionAnswer::Features(XenFeatureInfo {
                submap_idx: 0,
                submap: 0xe0 | (1 << 11)
            })
        );
        for never in [0, 1, 2, 3, 4, 8, 9, 10, 13, 15, 16, 17] {
            assert_eq!(
                features(0, true).unwrap() & (1 << never),
                0,
                "feature {never}"
            );
        }
        assert_eq!(
            ask(6, VersionArg::FeatureSubmap(1), true),
            Err(XenErrno::Einval)
        );
        assert_eq!(ask(6, VersionArg::None, true), Err(XenErrno::Einval));
    }

    #[test]
    fn guest_handle() {
        let h = ask(8, VersionArg::None, false).unwrap();
        assert_eq!(h.bytes(), &HANDLE);
    }

    #[test]
    fn commandline_only_for_the_privileged_domain() {
        assert_eq!(ask(9, VersionArg::None, false), Err(XenErrno::Eperm));
        let c = ask(9, VersionArg::None, true).unwrap();
        assert_eq!(c.bytes().len(), 1024);
        assert_eq!(c_str(c.bytes()), "dom0_mem=262144 console=com1 loglvl=info");
    }

    #[test]
    fn build_id() {
        assert_eq!(
            ask(10, VersionArg::BuildIdLen(None), false),
            Err(XenErrno::Eperm)
        );
        assert_eq!(
            ask(10, VersionArg::BuildIdLen(None), true),
            Err(XenErrno::Enodata)
        );
        assert_eq!(
            ask(10, VersionArg::BuildIdLen(Some(0)), true),
            Err(XenErrno::Einval)
        );

        let id = [0xab; 20];
        let mut with_id = ctx(true);
        with_id.build.build_id = Some(&id);
        assert_eq!(
            answer(10, VersionArg::BuildIdLen(None), &with_id),
            Ok(VersionAnswer::Value(20))
        );
        assert_eq!(
            answer(10, VersionArg::BuildIdLen(Some(19)), &with_id),
            Err(XenErrno::Enobufs)
        );
        let a = answer(10, VersionArg::BuildIdLen(Some(64)), &with_id).unwrap();
        assert_eq!(a.return_value(), 20);
        assert_eq!(a.copy_offset(), 4);
        assert_eq!(a.bytes(), &id);
    }

    #[test]
    fn unknown_sub_ops_are_enosys() {
        for cmd in [11, 12, 0xffff_ffff, 1 << 32, u64::MAX] {
            assert_eq!(
                ask(cmd, VersionArg::None, true),
                Err(XenErrno::Enosys),
                "{cmd}"
            );
        }
    }
}
