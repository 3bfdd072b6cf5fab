//! Callback registration (`callback.h`) and the NMI interface next to it (`nmi.h`).
//!
//! 64-bit PV kernels register their event, failsafe, syscall and NMI entry points with
//! `callback_op(CALLBACKOP_register, &callback_register)` (or the older
//! `set_callbacks(event, failsafe, syscall)`).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::arch_x86::XenCallback;

xen_enum! {
    /// `callback_op(cmd, arg)` commands (`CALLBACKOP_*`).
    pub enum CallbackOp: u32 {
        Register = 0,
        Unregister = 1,
    }
}

xen_enum! {
    /// `callback_register.type` (`CALLBACKTYPE_*`).
    pub enum CallbackType: u16 {
        /// Event-channel upcall.
        Event = 0,
        /// Return to the guest failed (bad segment on `iret`/context switch).
        Failsafe = 1,
        /// 64-bit SYSCALL from guest user mode.
        Syscall = 2,
        /// The pre-3.0.7 number of `Sysenter`.
        SysenterDeprecated = 3,
        Nmi = 4,
        /// SYSENTER from 32-bit guest user mode.
        Sysenter = 5,
        /// SYSCALL from 32-bit guest user mode.
        Syscall32 = 7,
    }
}

/// Entering the callback masks events (ignored for event and NMI callbacks, which always
/// do).
pub const CALLBACKF_MASK_EVENTS: u16 = 1 << 0;

/// `CALLBACKOP_register` argument (`struct callback_register`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct CallbackRegister {
    /// A [`CallbackType`].
    pub r#type: u16,
    /// `CALLBACKF_*`.
    pub flags: u16,
    pub _cpad0: u32,
    pub address: XenCallback,
}

assert_layout!(
    CallbackRegister,
    size = 16,
    align = 8,
    r#type = 0,
    flags = 2,
    address = 8
);

/// `CALLBACKOP_unregister` argument (`struct callback_unregister`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct CallbackUnregister {
    pub r#type: u16,
    pub _unused: u16,
}

assert_layout!(
    CallbackUnregister,
    size = 4,
    align = 2,
    r#type = 0,
    _unused = 2
);

xen_enum! {
    /// `nmi_op(cmd, arg)` commands (`XENNMI_*`, `nmi.h`).
    pub enum NmiOp: u32 {
        RegisterCallback = 0,
        UnregisterCallback = 1,
    }
}

/// `XENNMI_register_callback` argument (`struct xennmi_callback`, `nmi.h`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XennmiCallback {
    pub handler_address: u64,
    pub pad: u64,
}

assert_layout!(
    XennmiCallback,
    size = 16,
    align = 8,
    handler_address = 0,
    pad = 8
);

/// `arch_shared_info.nmi_reason` bits (`XEN_NMIREASON_*`, `nmi.h`): I/O check error.
pub const XEN_NMIREASON_IO_ERROR: u64 = 1 << 0;
/// PCI SERR.
pub const XEN_NMIREASON_PCI_SERR: u64 = 1 << 1;
/// Unknown hardware NMI.
pub const XEN_NMIREASON_UNKNOWN: u64 = 1 << 2;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::UnknownNumber;

    #[test]
    fn round_trips() {
        for &t in CallbackType::ALL {
            assert_eq!(CallbackType::try_from(t.raw()), Ok(t));
            assert_eq!(CallbackType::try_from(u64::from(t.raw())), Ok(t));
        }
        for &op in CallbackOp::ALL {
            assert_eq!(CallbackOp::try_from(op.raw()), Ok(op));
        }
        assert_eq!(CallbackType::try_from(6u16), Err(UnknownNumber(6)));
        assert_eq!(CallbackOp::try_from(2u32), Err(UnknownNumber(2)));
        assert_eq!(NmiOp::try_from(1u32), Ok(NmiOp::UnregisterCallback));
    }

    #[test]
    fn register_bytes() {
        let bytes = [
            2u8, 0, 1, 0, 0, 0, 0, 0, 0x40, 0x30, 0x20, 0x81, 0xff, 0xff, 0xff, 0xff,
        ];
        let reg = CallbackRegister::read_from_bytes(&bytes).unwrap();
        assert_eq!(
            CallbackType::try_from(reg.r#type),
            Ok(CallbackType::Syscall)
        );
        assert_eq!(reg.flags & CALLBACKF_MASK_EVENTS, CALLBACKF_MASK_EVENTS);
        assert_eq!(reg.address, 0xffff_ffff_8120_3040);
        assert_eq!(reg.as_bytes(), &bytes);
    }
}
