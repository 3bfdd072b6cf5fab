//! Xen's error numbers (`xen/errno.h`). Hypercalls return them negated.

/// A Xen errno. The hypervisor returns `-(errno as i64)` from a failing hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum XenErrno {
    Eperm = 1,
    Enoent = 2,
    Esrch = 3,
    Eintr = 4,
    Eio = 5,
    Enxio = 6,
    E2big = 7,
    Enoexec = 8,
    Ebadf = 9,
    Echild = 10,
    Eagain = 11,
    Enomem = 12,
    Eacces = 13,
    Efault = 14,
    Ebusy = 16,
    Eexist = 17,
    Exdev = 18,
    Enodev = 19,
    Einval = 22,
    Enfile = 23,
    Emfile = 24,
    Enospc = 28,
    Erofs = 30,
    Emlink = 31,
    Edom = 33,
    Erange = 34,
    Edeadlk = 35,
    Enametoolong = 36,
    Enolck = 37,
    Enosys = 38,
    Enotempty = 39,
    Enodata = 61,
    Etime = 62,
    Ebadmsg = 74,
    Eoverflow = 75,
    Eilseq = 84,
    Erestart = 85,
    Enotsock = 88,
    Eopnotsupp = 95,
    Eaddrinuse = 98,
    Eaddrnotavail = 99,
    Enobufs = 105,
    Eisconn = 106,
    Enotconn = 107,
    Etimedout = 110,
}

impl XenErrno {
    /// The value a hypercall returns in `rax` for this error.
    pub const fn to_hypercall_ret(self) -> i64 {
        -(self as i32 as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negated_return_values() {
        assert_eq!(XenErrno::Enosys.to_hypercall_ret(), -38);
        assert_eq!(XenErrno::Einval.to_hypercall_ret(), -22);
        assert_eq!(XenErrno::Eperm.to_hypercall_ret(), -1);
    }
}
