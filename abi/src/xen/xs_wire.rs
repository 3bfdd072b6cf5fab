//! The xenstore wire protocol (`io/xs_wire.h`): the message header and types, the error
//! names carried in `XS_ERROR` replies, the size limits, and the shared ring page a PV
//! guest and the xenstore service talk over.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

xen_enum! {
    /// Message types (`enum xsd_sockmsg_type`), the `type` field of [`XsdSockmsg`].
    pub enum XsType: u32 {
        /// Daemon control commands (`XS_DEBUG` is the old name of the same number).
        Control = 0,
        Directory = 1,
        Read = 2,
        GetPerms = 3,
        Watch = 4,
        Unwatch = 5,
        TransactionStart = 6,
        TransactionEnd = 7,
        Introduce = 8,
        Release = 9,
        GetDomainPath = 10,
        Write = 11,
        Mkdir = 12,
        Rm = 13,
        SetPerms = 14,
        /// Sent by the service only: a watch fired.
        WatchEvent = 15,
        /// Sent by the service only: the reply to a failed request (`XS_ERROR`; not
        /// called `Error`, which would clash with `TryFrom::Error`).
        ErrorReply = 16,
        IsDomainIntroduced = 17,
        Resume = 18,
        SetTarget = 19,
        // 20 was XS_RESTRICT, removed from the protocol.
        ResetWatches = 21,
        DirectoryPart = 22,
        /// Guaranteed never to name a message (`XS_INVALID`).
        Invalid = 0xffff,
    }
}

/// Number of message types the header defines, counting the removed `XS_RESTRICT`
/// (`XS_TYPE_COUNT`).
pub const XS_TYPE_COUNT: u32 = 23;

/// `XS_WRITE` flag strings from older protocol versions (`XS_WRITE_NONE` etc.).
pub const XS_WRITE_NONE: &str = "NONE";
pub const XS_WRITE_CREATE: &str = "CREATE";
pub const XS_WRITE_CREATE_EXCL: &str = "CREATE|EXCL";

/// The header of every message in either direction (`struct xsd_sockmsg`), followed by
/// `len` bytes of payload, usually NUL-terminated strings.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct XsdSockmsg {
    /// An [`XsType`].
    pub r#type: u32,
    /// Chosen by the client, echoed in the reply.
    pub req_id: u32,
    /// Transaction id, 0 outside a transaction.
    pub tx_id: u32,
    /// Payload bytes following the header.
    pub len: u32,
}

assert_layout!(
    XsdSockmsg,
    size = 16,
    align = 4,
    r#type = 0,
    req_id = 4,
    tx_id = 8,
    len = 12
);

/// Size of [`XsdSockmsg`] on the wire.
pub const XSD_SOCKMSG_SIZE: usize = 16;

/// Index of the path and of the token in an `XS_WATCH_EVENT` payload
/// (`enum xs_watch_type`).
pub const XS_WATCH_PATH: u32 = 0;
pub const XS_WATCH_TOKEN: u32 = 1;

/// The errors an `XS_ERROR` reply can name (`xsd_errors[]`), in the header's order, which
/// new errors only ever extend. On the wire an error is its name, NUL-terminated; the
/// number is the client's own errno for that name (Linux's values here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XsErrorCode {
    Einval,
    Eacces,
    Eexist,
    Eisdir,
    Enoent,
    Enomem,
    Enospc,
    Eio,
    Enotempty,
    Enosys,
    Erofs,
    Ebusy,
    Eagain,
    Eisconn,
    E2big,
    Eperm,
}

/// `xsd_errors[]`: every error with its Linux errno and its wire name, in header order.
pub const XSD_ERRORS: [(XsErrorCode, i32, &str); 16] = [
    (XsErrorCode::Einval, 22, "EINVAL"),
    (XsErrorCode::Eacces, 13, "EACCES"),
    (XsErrorCode::Eexist, 17, "EEXIST"),
    (XsErrorCode::Eisdir, 21, "EISDIR"),
    (XsErrorCode::Enoent, 2, "ENOENT"),
    (XsErrorCode::Enomem, 12, "ENOMEM"),
    (XsErrorCode::Enospc, 28, "ENOSPC"),
    (XsErrorCode::Eio, 5, "EIO"),
    (XsErrorCode::Enotempty, 39, "ENOTEMPTY"),
    (XsErrorCode::Enosys, 38, "ENOSYS"),
    (XsErrorCode::Erofs, 30, "EROFS"),
    (XsErrorCode::Ebusy, 16, "EBUSY"),
    (XsErrorCode::Eagain, 11, "EAGAIN"),
    (XsErrorCode::Eisconn, 106, "EISCONN"),
    (XsErrorCode::E2big, 7, "E2BIG"),
    (XsErrorCode::Eperm, 1, "EPERM"),
];

impl XsErrorCode {
    /// The name sent in an `XS_ERROR` payload (before its NUL).
    pub const fn name(self) -> &'static str {
        XSD_ERRORS[self as usize].2
    }

    /// The Linux errno a client maps the name to.
    pub const fn errno(self) -> i32 {
        XSD_ERRORS[self as usize].1
    }

    /// The error an `XS_ERROR` payload names (with or without its NUL), if known.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        let name = name.strip_suffix(b"\0").unwrap_or(name);
        XSD_ERRORS
            .iter()
            .find(|(_, _, n)| n.as_bytes() == name)
            .map(|(code, _, _)| *code)
    }
}

/// Bytes in each of the two rings of the shared page (`XENSTORE_RING_SIZE`).
pub const XENSTORE_RING_SIZE: u32 = 1024;

/// A free-running ring index (`XENSTORE_RING_IDX`): it counts bytes modulo 2^32 and is
/// masked with [`mask_xenstore_idx`] to address the ring.
pub type XenstoreRingIdx = u32;

/// The ring offset of a free-running index (`MASK_XENSTORE_IDX`).
pub const fn mask_xenstore_idx(idx: XenstoreRingIdx) -> u32 {
    idx & (XENSTORE_RING_SIZE - 1)
}

/// The xenstore shared page (`struct xenstore_domain_interface`): the guest produces
/// requests into `req` and consumes replies and watch events from `rsp`.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct XenstoreDomainInterface {
    /// Requests to the service.
    pub req: [u8; XENSTORE_RING_SIZE as usize],
    /// Replies and asynchronous watch events.
    pub rsp: [u8; XENSTORE_RING_SIZE as usize],
    pub req_cons: XenstoreRingIdx,
    pub req_prod: XenstoreRingIdx,
    pub rsp_cons: XenstoreRingIdx,
    pub rsp_prod: XenstoreRingIdx,
    /// `XENSTORE_SERVER_FEATURE_*` bits the service offers.
    pub server_features: u32,
    /// `XENSTORE_CONNECTED` or `XENSTORE_RECONNECT`.
    pub connection: u32,
    /// `XENSTORE_ERROR_*`, valid when the service offers `XENSTORE_SERVER_FEATURE_ERROR`.
    pub error: u32,
}

assert_layout!(
    XenstoreDomainInterface,
    size = 2076,
    align = 4,
    req = 0,
    rsp = 1024,
    req_cons = 2048,
    req_prod = 2052,
    rsp_cons = 2056,
    rsp_prod = 2060,
    server_features = 2064,
    connection = 2068,
    error = 2072,
);

/// Byte offsets of the index and status words in the shared page, for accessors that
/// read them individually (with the fences the ring protocol needs).
pub const XENSTORE_REQ_CONS_OFFSET: usize = 2048;
pub const XENSTORE_REQ_PROD_OFFSET: usize = 2052;
pub const XENSTORE_RSP_CONS_OFFSET: usize = 2056;
pub const XENSTORE_RSP_PROD_OFFSET: usize = 2060;
pub const XENSTORE_SERVER_FEATURES_OFFSET: usize = 2064;
pub const XENSTORE_CONNECTION_OFFSET: usize = 2068;
pub const XENSTORE_ERROR_OFFSET: usize = 2072;

const _: () =
    assert!(core::mem::offset_of!(XenstoreDomainInterface, req_cons) == XENSTORE_REQ_CONS_OFFSET);
const _: () =
    assert!(core::mem::offset_of!(XenstoreDomainInterface, req_prod) == XENSTORE_REQ_PROD_OFFSET);
const _: () =
    assert!(core::mem::offset_of!(XenstoreDomainInterface, rsp_cons) == XENSTORE_RSP_CONS_OFFSET);
const _: () =
    assert!(core::mem::offset_of!(XenstoreDomainInterface, rsp_prod) == XENSTORE_RSP_PROD_OFFSET);
const _: () = assert!(
    core::mem::offset_of!(XenstoreDomainInterface, server_features)
        == XENSTORE_SERVER_FEATURES_OFFSET
);
const _: () = assert!(
    core::mem::offset_of!(XenstoreDomainInterface, connection) == XENSTORE_CONNECTION_OFFSET
);
const _: () =
    assert!(core::mem::offset_of!(XenstoreDomainInterface, error) == XENSTORE_ERROR_OFFSET);

/// Largest payload of one message; a longer `len` is a protocol violation
/// (`XENSTORE_PAYLOAD_MAX`).
pub const XENSTORE_PAYLOAD_MAX: u32 = 4096;
/// Longest absolute path accepted; longer ones get an error reply
/// (`XENSTORE_ABS_PATH_MAX`).
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// Longest relative path accepted (`XENSTORE_REL_PATH_MAX`).
pub const XENSTORE_REL_PATH_MAX: usize = 2048;

/// `server_features` bit: the ring can be reconnected (`XENSTORE_SERVER_FEATURE_RECONNECTION`).
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// `server_features` bit: the `error` field is maintained (`XENSTORE_SERVER_FEATURE_ERROR`).
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;

/// `connection`: the steady state (`XENSTORE_CONNECTED`).
pub const XENSTORE_CONNECTED: u32 = 0;
/// `connection`: a reconnect is in progress (`XENSTORE_RECONNECT`).
pub const XENSTORE_RECONNECT: u32 = 1;

/// `error`: none (`XENSTORE_ERROR_NONE`).
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `error`: communication problem (`XENSTORE_ERROR_COMM`).
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `error`: an invalid ring index (`XENSTORE_ERROR_RINGIDX`).
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `error`: protocol violation, such as a payload over the limit (`XENSTORE_ERROR_PROTO`).
pub const XENSTORE_ERROR_PROTO: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_numbers() {
        assert_eq!(XsType::Control.raw(), 0);
        assert_eq!(XsType::SetTarget.raw(), 19);
        assert_eq!(XsType::ResetWatches.raw(), 21);
        assert_eq!(XsType::DirectoryPart.raw(), 22);
        assert_eq!(XsType::DirectoryPart.raw() + 1, XS_TYPE_COUNT);
        assert_eq!(XsType::try_from(20u32).ok(), None);
        assert_eq!(XsType::from_raw(0xffff), Some(XsType::Invalid));
    }

    #[test]
    fn error_table_order_and_names() {
        for (i, (code, _, name)) in XSD_ERRORS.iter().enumerate() {
            assert_eq!(*code as usize, i);
            assert_eq!(code.name(), *name);
            assert_eq!(XsErrorCode::from_name(name.as_bytes()), Some(*code));
        }
        assert_eq!(XsErrorCode::Einval.name(), "EINVAL");
        assert_eq!(XsErrorCode::Eperm.name(), "EPERM");
        assert_eq!(XsErrorCode::Eagain.errno(), 11);
        assert_eq!(XsErrorCode::from_name(b"E2BIG\0"), Some(XsErrorCode::E2big));
        assert_eq!(XsErrorCode::from_name(b"EWHAT"), None);
    }

    #[test]
    fn header_bytes_are_little_endian_fields() {
        let h = XsdSockmsg {
            r#type: 2,
            req_id: 7,
            tx_id: 0,
            len: 5,
        };
        assert_eq!(&h.as_bytes()[..8], &[2, 0, 0, 0, 7, 0, 0, 0]);
        assert_eq!(h.as_bytes().len(), XSD_SOCKMSG_SIZE);
    }

    #[test]
    fn ring_index_mask() {
        assert_eq!(mask_xenstore_idx(1024), 0);
        assert_eq!(mask_xenstore_idx(u32::MAX), 1023);
    }
}
