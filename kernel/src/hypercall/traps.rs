//! The hypercalls that shape how the guest kernel takes traps and returns from them:
//! `set_trap_table`, `set_callbacks`, `callback_op`, `stack_switch`, `iret`,
//! `set_segment_base` and `fpu_taskswitch`.

use ferrovisor::pv::bounce;
use ferrovisor_abi::{
    errno::XenErrno,
    xen::{
        arch_x86::{SegBase, TrapInfo},
        callback::{CallbackOp, CallbackRegister, CallbackType, CALLBACKF_MASK_EVENTS},
    },
};
use zerocopy::FromBytes;

use super::Result;
use crate::{
    arch::x86_64::{cpu, trap::TrapFrame},
    domain, guest,
};

/// Trap-table entries read per call; Linux sets its whole table (under 256) at once.
const MAX_TRAPS: u64 = 256;

/// `set_trap_table(traps)`: entries up to one with address 0; a null pointer clears.
pub fn set_trap_table([traps, ..]: [u64; 5]) -> Result {
    domain::with_current(|d| {
        if traps == 0 {
            d.cur_mut().pv.trap_table.clear();
            return Ok(0);
        }
        for i in 0..MAX_TRAPS {
            let mut raw = [0u8; 16];
            d.read_guest(traps.wrapping_add(i * 16), &mut raw)
                .map_err(|_| XenErrno::Efault)?;
            let t = TrapInfo::read_from_bytes(&raw).map_err(|_| XenErrno::Efault)?;
            let progress = d
                .cur_mut()
                .pv
                .trap_table
                .set(core::slice::from_ref(&t))
                .map_err(|_| XenErrno::Einval)?;
            if progress.terminated {
                return Ok(0);
            }
        }
        // Longer than any real table: the guest forgot the terminator.
        Err(XenErrno::Einval)
    })
    .ok_or(XenErrno::Esrch)?
}

fn guest_address(a: u64) -> core::result::Result<u64, XenErrno> {
    if a == 0 || cpu::is_guest_base(a) {
        Ok(a)
    } else {
        Err(XenErrno::Einval)
    }
}

/// `set_callbacks(event, failsafe, syscall)` (x86-64 form).
pub fn set_callbacks([event, failsafe, syscall, ..]: [u64; 5]) -> Result {
    let (event, failsafe, syscall) = (
        guest_address(event)?,
        guest_address(failsafe)?,
        guest_address(syscall)?,
    );
    domain::with_current(|d| {
        let cb = &mut d.cur_mut().pv.callbacks;
        cb.event = event;
        cb.failsafe = failsafe;
        cb.syscall = syscall;
        Ok(0)
    })
    .ok_or(XenErrno::Esrch)?
}

/// `callback_op(CALLBACKOP_register | unregister, struct callback_register *)`.
pub fn callback_op([cmd, arg, ..]: [u64; 5]) -> Result {
    let op = CallbackOp::try_from(cmd as u32).map_err(|_| XenErrno::Enosys)?;
    domain::with_current(|d| {
        let mut raw = [0u8; core::mem::size_of::<CallbackRegister>()];
        // `callback_unregister` is a prefix of `callback_register` (type, then padding).
        let len = if op == CallbackOp::Register {
            raw.len()
        } else {
            4
        };
        d.read_guest(arg, &mut raw[..len])
            .map_err(|_| XenErrno::Efault)?;
        let reg = CallbackRegister::read_from_bytes(&raw).map_err(|_| XenErrno::Efault)?;
        let kind = CallbackType::try_from(reg.r#type).map_err(|_| XenErrno::Einval)?;
        let (address, mask) = match op {
            CallbackOp::Register => (
                guest_address(reg.address)?,
                reg.flags & CALLBACKF_MASK_EVENTS != 0,
            ),
            CallbackOp::Unregister => (0, false),
        };
        let cb = &mut d.cur_mut().pv.callbacks;
        match kind {
            CallbackType::Event => cb.event = address,
            CallbackType::Failsafe => {
                cb.failsafe = address;
                cb.failsafe_masks_events = mask;
            }
            CallbackType::Syscall => {
                cb.syscall = address;
                cb.syscall_masks_events = mask;
            }
            // 32-bit entry points and the NMI callback are not offered.
            _ => return Err(XenErrno::Einval),
        }
        Ok(0)
    })
    .ok_or(XenErrno::Esrch)?
}

/// `stack_switch(ss, rsp)`: the kernel stack a trap from guest user mode lands on.
pub fn stack_switch([_ss, rsp, ..]: [u64; 5]) -> Result {
    let rsp = guest_address(rsp)?;
    domain::with_current(|d| {
        d.cur_mut().pv.kernel_sp = rsp;
        Ok(0)
    })
    .ok_or(XenErrno::Esrch)?
}

/// `iret`: restores the context the guest kernel pushed (see `pv::bounce::do_iret`). The
/// restored `rax` is the hypercall's result.
pub fn iret(frame: &mut TrapFrame) {
    let done = domain::with_current(|d| {
        let mut outcome = None;
        guest::deliver(d, frame, &"an iret", |regs, state, stack| {
            let o = bounce::do_iret(regs, state, stack)?;
            outcome = Some(o);
            Ok(bounce::Bounce {
                entered_kernel: false,
                cr2: None,
                upcall_mask: o.upcall_mask,
            })
        });
        if outcome.is_some_and(|o| o.to_user) {
            d.switch_mode(false);
        }
    });
    if done.is_none() {
        frame.rax = XenErrno::Esrch.to_hypercall_ret() as u64;
    }
}

/// `set_segment_base(which, base)`.
pub fn set_segment_base([which, base, ..]: [u64; 5]) -> Result {
    let which = SegBase::try_from(which as u32).map_err(|_| XenErrno::Einval)?;
    domain::with_current(|d| {
        if guest::set_segment_base(d, which, base) {
            Ok(0)
        } else {
            Err(XenErrno::Einval)
        }
    })
    .ok_or(XenErrno::Esrch)?
}

/// `fpu_taskswitch(set)`: the guest's CR0.TS, for lazy FPU switching.
pub fn fpu_taskswitch([set, ..]: [u64; 5]) -> Result {
    domain::with_current(|d| {
        d.cur_mut().fpu_ts = set != 0;
        cpu::set_task_switched(d.cur_mut().fpu_ts);
        Ok(0)
    })
    .ok_or(XenErrno::Esrch)?
}
