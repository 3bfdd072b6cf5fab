//! Hypercall dispatch: a SYSCALL from a PV guest kernel (directly, or through the
//! hypercall page) carries the hypercall number in `rax` and up to five arguments in
//! `rdi, rsi, rdx, r10, r8` (`arch-x86/xen-x86_64.h`); the result goes back in `rax`.
//! Every argument is validated; failures are Xen errnos, never a hypervisor fault.

use ferrovisor::pv::version::{self, VersionArg, VersionContext};
use ferrovisor_abi::{
    errno::XenErrno,
    xen::{
        hypercall::Hypercall,
        sched::{SchedOp, SchedShutdown},
        vcpu::VcpuOp,
        version::XenVersionOp,
        xen::{ConsoleIoCmd, MulticallEntry, VmAssistCmd, VmAssistType},
    },
};
use zerocopy::FromBytes;

use crate::{arch::x86_64::trap::TrapFrame, domain, sched};

mod desc;
pub mod domctl;
mod evtchn;
pub mod grant_table;
mod memory;
pub mod mmu;
mod traps;
pub mod vcpu;

type Result = core::result::Result<u64, XenErrno>;

/// Copies a `T` in from `d`'s memory at `va` (`-EFAULT` where it cannot be read).
fn read_struct<T: FromBytes + zerocopy::IntoBytes>(
    d: &domain::Domain,
    va: u64,
) -> core::result::Result<T, XenErrno> {
    let mut v = T::new_zeroed();
    d.read_guest(va, v.as_mut_bytes())
        .map_err(|_| XenErrno::Efault)?;
    Ok(v)
}

/// Copies `v` out to `d`'s memory at `va` (`-EFAULT` where it cannot be written).
fn write_struct<T: zerocopy::IntoBytes + zerocopy::Immutable>(
    d: &domain::Domain,
    va: u64,
    v: &T,
) -> core::result::Result<(), XenErrno> {
    d.write_guest(va, v.as_bytes())
        .map_err(|_| XenErrno::Efault)
}

/// The domain a request names: the caller (`DOMID_SELF` or its own id), or another one if
/// the caller is the privileged domain (`-EPERM` otherwise). Whether that domain exists
/// is the caller's next check.
fn named_domain(
    caller: ferrovisor::mm::frame_table::DomId,
    dom: u16,
) -> core::result::Result<ferrovisor::mm::frame_table::DomId, XenErrno> {
    use ferrovisor_abi::xen::xen::DOMID_SELF;
    if dom == DOMID_SELF || dom == caller.0 {
        Ok(caller)
    } else if caller == domain::DOM0 {
        Ok(ferrovisor::mm::frame_table::DomId(dom))
    } else {
        Err(XenErrno::Eperm)
    }
}

pub fn dispatch(frame: &mut TrapFrame) {
    if frame.rax == Hypercall::Iret as u64 {
        // `iret` replaces the whole register state, `rax` included.
        return traps::iret(frame);
    }
    // The calls that may put another vCPU on the CPU replace the frame themselves.
    if frame.rax == Hypercall::SchedOp as u64 {
        match SchedOp::try_from(frame.rdi as u32) {
            Ok(SchedOp::Block) => return sched::block(frame),
            Ok(SchedOp::Yield) => return sched::yield_now(frame),
            Ok(SchedOp::Poll) => return sched::poll(frame),
            _ => {}
        }
    }
    if frame.rax == Hypercall::VcpuOp as u64
        && VcpuOp::try_from(frame.rdi as u32) == Ok(VcpuOp::Down)
        && domain::with_current(|d| u64::from(d.cur_mut().id)) == Some(frame.rsi)
    {
        return sched::down_self(frame);
    }
    let args = [frame.rdi, frame.rsi, frame.rdx, frame.r10, frame.r8];
    let result = match Hypercall::try_from(frame.rax) {
        Ok(Hypercall::Multicall) => multicall(args),
        _ => call(frame.rax, args),
    };
    frame.rax = match result {
        Ok(v) => v,
        Err(e) => e.to_hypercall_ret() as u64,
    };
}

/// One hypercall by number (from a SYSCALL or a multicall entry). `iret` and `multicall`
/// itself are not reachable from here.
fn call(nr: u64, args: [u64; 5]) -> Result {
    match Hypercall::try_from(nr) {
        Ok(Hypercall::ConsoleIo) => console_io(args),
        Ok(Hypercall::XenVersion) => xen_version(args),
        Ok(Hypercall::SchedOp) => sched_op(args),
        Ok(Hypercall::MmuUpdate) => mmu::mmu_update(args),
        Ok(Hypercall::MmuextOp) => mmu::mmuext_op(args),
        Ok(Hypercall::UpdateVaMapping) => mmu::update_va_mapping(args),
        Ok(Hypercall::SetTrapTable) => traps::set_trap_table(args),
        Ok(Hypercall::SetCallbacks) => traps::set_callbacks(args),
        Ok(Hypercall::CallbackOp) => traps::callback_op(args),
        Ok(Hypercall::StackSwitch) => traps::stack_switch(args),
        Ok(Hypercall::SetSegmentBase) => traps::set_segment_base(args),
        Ok(Hypercall::FpuTaskswitch) => traps::fpu_taskswitch(args),
        Ok(Hypercall::VmAssist) => vm_assist(args),
        Ok(Hypercall::VcpuOp) => vcpu::vcpu_op(args),
        Ok(Hypercall::EventChannelOp) => evtchn::event_channel_op(args),
        Ok(Hypercall::SetTimerOp) => vcpu::set_timer_op(args),
        Ok(Hypercall::PhysdevOp) => physdev_op(args),
        // dom0 gets no hardware: the hypervisor keeps the machine.
        Ok(Hypercall::PlatformOp) => Err(XenErrno::Eperm),
        Ok(Hypercall::MemoryOp) => memory::memory_op(args),
        Ok(Hypercall::GrantTableOp) => grant_table::grant_table_op(args),
        Ok(Hypercall::Domctl) => domctl::domctl(args),
        Ok(Hypercall::Sysctl) => domctl::sysctl(args),
        Ok(Hypercall::SetGdt) => desc::set_gdt(args),
        Ok(Hypercall::UpdateDescriptor) => desc::update_descriptor(args),
        Ok(_) | Err(_) => Err(XenErrno::Enosys),
    }
}

/// Most entries one `multicall` runs (Xen preempts long lists; the guest resubmits).
const MAX_MULTICALL: u64 = 128;

/// `multicall(call_list, nr_calls)`: runs each entry, writing its result back into it.
/// Entries cannot nest a multicall or make an `iret`.
fn multicall([list, nr, ..]: [u64; 5]) -> Result {
    const ENTRY: u64 = core::mem::size_of::<MulticallEntry>() as u64;
    for i in 0..nr.min(MAX_MULTICALL) {
        let at = list.wrapping_add(i * ENTRY);
        let mut raw = [0u8; ENTRY as usize];
        domain::with_current(|d| d.read_guest(at, &mut raw))
            .ok_or(XenErrno::Esrch)?
            .map_err(|_| XenErrno::Efault)?;
        let entry = MulticallEntry::read_from_bytes(&raw).map_err(|_| XenErrno::Efault)?;
        let a = entry.args;
        let result = match Hypercall::try_from(entry.op) {
            Ok(Hypercall::Multicall | Hypercall::Iret) => Err(XenErrno::Einval),
            _ => call(entry.op, [a[0], a[1], a[2], a[3], a[4]]),
        };
        let value = result.unwrap_or_else(|e| e.to_hypercall_ret() as u64);
        let result_at = at.wrapping_add(core::mem::offset_of!(MulticallEntry, result) as u64);
        domain::with_current(|d| d.write_guest(result_at, &value.to_le_bytes()))
            .ok_or(XenErrno::Esrch)?
            .map_err(|_| XenErrno::Efault)?;
    }
    Ok(0)
}

/// The most console output one call copies (Xen loops in chunks too).
const CONSOLE_CHUNK: usize = 1024;
/// The most one `console_io` write prints; the rest is dropped.
const MAX_CONSOLE_WRITE: u64 = 64 * 1024;

fn console_io([cmd, count, buffer, ..]: [u64; 5]) -> Result {
    match ConsoleIoCmd::try_from(cmd as u32) {
        Ok(ConsoleIoCmd::Write) => {
            let mut buf = [0u8; CONSOLE_CHUNK];
            let mut done = 0u64;
            // Hypercalls run with interrupts off: bound the work one call can ask for.
            let count = count.min(MAX_CONSOLE_WRITE);
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
        // Serial input routed to the domain (`backend::console::poll_serial`).
        Ok(ConsoleIoCmd::Read) => {
            let mut buf = [0u8; CONSOLE_CHUNK];
            let n = (count as usize).min(CONSOLE_CHUNK);
            domain::with_current(|d| {
                let got = d.console.take_input(&mut buf[..n]);
                d.write_guest(buffer, &buf[..got]).map(|()| got as u64)
            })
            .ok_or(XenErrno::Esrch)?
            .map_err(|_| XenErrno::Efault)
        }
        Err(_) => Err(XenErrno::Enosys),
    }
}

/// `physdev_op`: only the virtual I/O privilege level (`set_iopl`, which every PV Linux
/// sets at start); every operation on real devices is refused, since no domain gets
/// hardware.
fn physdev_op([cmd, arg, ..]: [u64; 5]) -> Result {
    use ferrovisor_abi::xen::physdev::{PhysdevOp, PhysdevSetIopl};
    match PhysdevOp::try_from(cmd as u32) {
        Ok(PhysdevOp::SetIopl) => {
            let mut raw = [0u8; 4];
            domain::with_current(|d| d.read_guest(arg, &mut raw))
                .ok_or(XenErrno::Esrch)?
                .map_err(|_| XenErrno::Efault)?;
            let iopl = PhysdevSetIopl::read_from_bytes(&raw)
                .map_err(|_| XenErrno::Efault)?
                .iopl;
            if iopl > 3 {
                return Err(XenErrno::Einval);
            }
            domain::with_current(|d| d.cur_mut().iopl = iopl as u8).ok_or(XenErrno::Esrch)?;
            Ok(0)
        }
        Ok(_) => Err(XenErrno::Eperm),
        Err(_) => Err(XenErrno::Enosys),
    }
}

fn xen_version([cmd, arg, ..]: [u64; 5]) -> Result {
    let read_u32 = |at: u64| -> core::result::Result<u32, XenErrno> {
        let mut b = [0u8; 4];
        domain::with_current(|d| d.read_guest(at, &mut b))
            .ok_or(XenErrno::Esrch)?
            .map_err(|_| XenErrno::Efault)?;
        Ok(u32::from_le_bytes(b))
    };
    let input = match XenVersionOp::try_from(cmd as u32) {
        Ok(XenVersionOp::GetFeatures) => VersionArg::FeatureSubmap(read_u32(arg)?),
        Ok(XenVersionOp::BuildId) if arg == 0 => VersionArg::BuildIdLen(None),
        Ok(XenVersionOp::BuildId) => VersionArg::BuildIdLen(Some(read_u32(arg)?)),
        _ => VersionArg::None,
    };
    let ctx = VersionContext {
        build: version::BUILD_INFO,
        privileged: true, // dom0 is the only domain so far
        guest_handle: [0; 16],
        commandline: crate::start::hypervisor_cmdline(),
    };
    let answer = version::answer(cmd, input, &ctx)?;
    let bytes = answer.bytes();
    if !bytes.is_empty() {
        domain::with_current(|d| d.write_guest(arg.wrapping_add(answer.copy_offset()), bytes))
            .ok_or(XenErrno::Esrch)?
            .map_err(|_| XenErrno::Efault)?;
    }
    Ok(answer.return_value())
}

/// `vm_assist(cmd, type)`. Only the assists the hypervisor implements can be enabled:
/// writable page tables (direct writes to page-table entries, trapped and emulated) and
/// the runstate update flag.
fn vm_assist([cmd, kind, ..]: [u64; 5]) -> Result {
    let cmd = VmAssistCmd::try_from(cmd as u32).map_err(|_| XenErrno::Einval)?;
    let kind = VmAssistType::try_from(kind as u32).map_err(|_| XenErrno::Einval)?;
    let supported = matches!(
        kind,
        VmAssistType::WritablePagetables | VmAssistType::RunstateUpdateFlag
    );
    domain::with_current(|d| match cmd {
        VmAssistCmd::Enable if supported => {
            d.vm_assist |= 1 << kind.raw();
            Ok(0)
        }
        VmAssistCmd::Enable => Err(XenErrno::Einval),
        VmAssistCmd::Disable => {
            d.vm_assist &= !(1 << kind.raw());
            Ok(0)
        }
    })
    .ok_or(XenErrno::Esrch)?
}

fn sched_op([cmd, arg, ..]: [u64; 5]) -> Result {
    match SchedOp::try_from(cmd as u32) {
        Ok(SchedOp::Yield | SchedOp::Block) => Ok(0), // handled in `dispatch`
        Ok(SchedOp::Shutdown) => {
            let mut raw = [0u8; core::mem::size_of::<SchedShutdown>()];
            domain::with_current(|d| d.read_guest(arg, &mut raw))
                .ok_or(XenErrno::Esrch)?
                .map_err(|_| XenErrno::Efault)?;
            let reason = SchedShutdown::read_from_bytes(&raw)
                .map_err(|_| XenErrno::Efault)?
                .reason;
            domain::with_current(|d| d.shutdown(reason)).ok_or(XenErrno::Esrch)?;
            domain::with_domains(crate::backend::announce_stops);
            Ok(0)
        }
        Ok(_) | Err(_) => Err(XenErrno::Enosys),
    }
}
