//! Time: the wall clock read from the CMOS RTC at boot, and the TSC-to-nanoseconds scaling
//! published to PV guests in `vcpu_time_info` (Xen's `public/xen.h`).

pub mod rtc;
pub mod scale;
