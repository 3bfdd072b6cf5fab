//! Xen's public x86-64 PV guest ABI (`/usr/include/xen`, Xen 4.17), one module per header.
//!
//! Conventions shared by every module:
//! - Structures are `#[repr(C)]` and derive zerocopy's `FromBytes`/`IntoBytes`, so the
//!   hypervisor copies them from and to guest memory as plain bytes. Each carries
//!   compile-time size, alignment and field-offset checks (`assert_layout!`) whose numbers
//!   come from the C headers compiled for x86-64.
//! - Padding the C compiler inserts silently is an explicit field named `_cpad*` (zero it
//!   when writing to a guest). Padding the header itself declares keeps the header's name.
//! - A C union becomes a byte array or an integer field of the union's size and alignment,
//!   with typed accessors.
//! - Hypercall and sub-op numbers decode through `TryFrom<u64>` (and `TryFrom` of the C
//!   argument type); an unknown number is [`UnknownNumber`], which the hypervisor answers
//!   with `-ENOSYS`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::errno::XenErrno;

/// Compile-time layout checks: total size, alignment and the offset of every field.
macro_rules! assert_layout {
    ($ty:ty, size = $size:expr, align = $align:expr $(, $field:ident = $off:expr)* $(,)?) => {
        const _: () = assert!(::core::mem::size_of::<$ty>() == $size);
        const _: () = assert!(::core::mem::align_of::<$ty>() == $align);
        $(const _: () = assert!(::core::mem::offset_of!($ty, $field) == $off);)*
    };
}

/// A Xen number space (hypercalls, sub-ops, reason codes) as a fieldless enum that decodes
/// with `TryFrom<u64>` (the register a guest passes) and `TryFrom<$repr>` (the C type).
macro_rules! xen_enum {
    (@common $(#[$meta:meta])* $vis:vis enum $name:ident: $repr:ident {
        $($(#[$vmeta:meta])* $variant:ident = $value:expr,)+
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr($repr)]
        $vis enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// Every defined value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The number as the C headers spell it.
            pub const fn raw(self) -> $repr {
                self as $repr
            }

            /// Decodes a number, `None` when it names nothing.
            pub const fn from_raw(value: u64) -> Option<Self> {
                $(if value == Self::$variant as $repr as u64 {
                    return Some(Self::$variant);
                })+
                None
            }
        }

        impl TryFrom<u64> for $name {
            type Error = $crate::xen::UnknownNumber;

            fn try_from(value: u64) -> Result<Self, Self::Error> {
                Self::from_raw(value).ok_or($crate::xen::UnknownNumber(value))
            }
        }

        impl From<$name> for $repr {
            fn from(value: $name) -> Self {
                value.raw()
            }
        }
    };
    ($(#[$meta:meta])* $vis:vis enum $name:ident: u64 { $($body:tt)+ }) => {
        xen_enum!(@common $(#[$meta])* $vis enum $name: u64 { $($body)+ });
    };
    ($(#[$meta:meta])* $vis:vis enum $name:ident: $repr:ident { $($body:tt)+ }) => {
        xen_enum!(@common $(#[$meta])* $vis enum $name: $repr { $($body)+ });

        impl TryFrom<$repr> for $name {
            type Error = $crate::xen::UnknownNumber;

            fn try_from(value: $repr) -> Result<Self, Self::Error> {
                // Sign-extending a negative C `int` yields a number no variant has.
                #[allow(clippy::cast_sign_loss, reason = "negative values must stay unknown")]
                let wide = value as u64;
                Self::try_from(wide)
            }
        }
    };
}

pub mod arch_x86;
pub mod callback;
pub mod console;
pub mod cpuid;
pub mod elfnote;
pub mod event_channel;
pub mod features;
pub mod grant_table;
pub mod hypercall;
pub mod io;
pub mod memory;
pub mod physdev;
pub mod platform;
pub mod sched;
pub mod vcpu;
pub mod version;
#[allow(
    clippy::module_inception,
    reason = "the module is named after xen.h, like its siblings"
)]
pub mod xen;
pub mod xs_wire;

/// A domain id (`domid_t`, `xen.h`).
pub type DomId = u16;
/// An event-channel port (`evtchn_port_t`, `event_channel.h`).
pub type EvtchnPort = u32;
/// A page frame number (`xen_pfn_t`, `arch-x86/xen.h`): machine or pseudo-physical,
/// depending on the field.
pub type XenPfn = u64;
/// The guest's native word (`xen_ulong_t`, `arch-x86/xen.h`).
pub type XenUlong = u64;
/// A domain handle (`xen_domain_handle_t`, `xen.h`): the domain's UUID.
pub type XenDomainHandle = [u8; 16];

/// A guest handle (`XEN_GUEST_HANDLE(...)`, `arch-x86/xen.h`): on x86-64 a guest virtual
/// address, never dereferenced directly; it goes through the hypervisor's guest-memory API.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(transparent)]
pub struct GuestHandle(pub u64);

impl GuestHandle {
    /// The null handle, which several operations accept as "no buffer".
    pub const NULL: Self = Self(0);

    /// The guest virtual address.
    pub const fn addr(self) -> u64 {
        self.0
    }

    /// Whether the handle is null.
    pub const fn is_null(self) -> bool {
        self.0 == 0
    }
}

assert_layout!(GuestHandle, size = 8, align = 8);

/// A hypercall, sub-op or code number that the ABI does not define.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownNumber(pub u64);

impl From<UnknownNumber> for XenErrno {
    /// Xen answers an unknown hypercall or sub-op with `-ENOSYS`.
    fn from(_: UnknownNumber) -> Self {
        XenErrno::Enosys
    }
}

/// Reads a `T` from the start of `bytes`, which the caller sized statically for it.
pub(crate) fn read_prefix<T: FromBytes>(bytes: &[u8]) -> T {
    match T::read_from_prefix(bytes) {
        Ok((value, _)) => value,
        // Unreachable: every caller passes a union at least as large as `T` (checked by the
        // layout assertions of the types involved).
        Err(_) => T::new_zeroed(),
    }
}

/// Writes `value` to the start of `bytes`, which the caller sized statically for it.
pub(crate) fn write_prefix<T: IntoBytes + Immutable>(bytes: &mut [u8], value: &T) {
    let src = value.as_bytes();
    if let Some(dst) = bytes.get_mut(..src.len()) {
        dst.copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_number_is_enosys() {
        assert_eq!(XenErrno::from(UnknownNumber(999)), XenErrno::Enosys);
        assert_eq!(XenErrno::from(UnknownNumber(999)).to_hypercall_ret(), -38);
    }

    #[test]
    fn guest_handle() {
        assert!(GuestHandle::NULL.is_null());
        assert_eq!(GuestHandle(0x1000).addr(), 0x1000);
        assert_eq!(GuestHandle(0x1000).as_bytes(), &0x1000u64.to_le_bytes());
    }
}
