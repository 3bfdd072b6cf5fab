//! Hypercall dispatch: a SYSCALL from a PV guest kernel (directly, or through the
//! hypercall page) carries the hypercall number in `rax` and up to five arguments in
//! `rdi, rsi, rdx, r10, r8` (`arch-x86/xen-x86_64.h`); the result goes back in `rax`.
//! Every argument is validated; failures are Xen errnos, never a hypervisor fault.

use ferrovisor_abi::{
    errno::XenErrno,
    version::XEN_VERSION,
    xen::{
        hypercall::Hypercall,
        sched::{SchedOp, SchedShutdown},
        version::XenVersionOp,
        xen::ConsoleIoCmd,
    },
};
use zerocopy::FromBytes;

use crate::{arch::x86_64::trap::TrapFrame, domain};

mod mmu;

type Result = core::result::Result<u64, XenErrno>;

pub fn dispatch(frame: &mut TrapFrame) {
    let args = [frame.rdi, frame.rsi, frame.rdx, frame.r10, frame.r8];
    let result = match Hypercall::try_from(frame.rax) {
        Ok(Hypercall::ConsoleIo) => console_io(args),
        Ok(Hypercall::XenVersion) => xen_version(args),
        Ok(Hypercall::SchedOp) => sched_op(args),
        Ok(Hypercall::MmuUpdate) => mmu::mmu_update(args),
        Ok(Hypercall::MmuextOp) => mmu::mmuext_op(args),
        Ok(Hypercall::UpdateVaMapping) => mmu::update_va_mapping(args),
        Ok(_) | Err(_) => Err(XenErrno::Enosys),
    };
    frame.rax = match result {
        Ok(v) => v,
        Err(e) => e.to_hypercall_ret() as u64,
    };
}

/// The most console output one call copies (Xen loops in chunks too).
const CONSOLE_CHUNK: usize = 1024;

fn console_io([cmd, count, buffer, ..]: [u64; 5]) -> Result {
    match ConsoleIoCmd::try_from(cmd as u32) {
        Ok(ConsoleIoCmd::Write) => {
            let mut buf = [0u8; CONSOLE_CHUNK];
            let mut done = 0u64;
            while done < count {
                let n = (count - done).min(CONSOLE_CHUNK as u64) as usize;
                domain::with_current(|d| {
                    d.read_guest(buffer.wrapping_add(done), &mut buf[..n])?;
                    d.console_write(&buf[..n]);
                    Ok::<(), crate::arch::x86_64::guest_memory::GuestFault>(())
                })
                .ok_or(XenErrno::Esrch)?
                .map_err(|_| XenErrno::Efault)?;
                done += n as u64;
            }
            Ok(0)
        }
        // Reading the console comes with the console backend.
        Ok(_) | Err(_) => Err(XenErrno::Enosys),
    }
}

fn xen_version([cmd, ..]: [u64; 5]) -> Result {
    match XenVersionOp::try_from(cmd as u32) {
        Ok(XenVersionOp::Version) => Ok(XEN_VERSION as u64),
        Ok(_) | Err(_) => Err(XenErrno::Enosys),
    }
}

fn sched_op([cmd, arg, ..]: [u64; 5]) -> Result {
    match SchedOp::try_from(cmd as u32) {
        Ok(SchedOp::Yield) => Ok(0),
        Ok(SchedOp::Shutdown) => {
            let mut raw = [0u8; core::mem::size_of::<SchedShutdown>()];
            domain::with_current(|d| d.read_guest(arg, &mut raw))
                .ok_or(XenErrno::Esrch)?
                .map_err(|_| XenErrno::Efault)?;
            let reason = SchedShutdown::read_from_bytes(&raw)
                .map_err(|_| XenErrno::Efault)?
                .reason;
            domain::shutdown(reason)
        }
        Ok(_) | Err(_) => Err(XenErrno::Enosys),
    }
}
