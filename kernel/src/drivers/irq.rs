//! Device interrupt vectors: a range of the IDT handed out to drivers at probe time, each
//! bound to a handler function and an argument (the device's index). `interrupts.rs`
//! sends every vector of the range here, then acknowledges it at the local APIC.

use crate::arch::x86_64::irq::IrqMutex;

/// The first device vector. Below the tick (0xf0) and the IPIs, above the exceptions;
/// priority class 4 (vector >> 4), lower than the tick's.
pub const DEVICE_VECTOR_BASE: u8 = 0x40;
/// How many device vectors there are.
pub const DEVICE_VECTORS: usize = 32;

/// What a device vector calls, with its argument.
pub type Handler = fn(usize);

/// Vector `DEVICE_VECTOR_BASE + i` calls `TABLE[i]`. The lock is held only to copy an
/// entry, never while a handler runs.
static TABLE: IrqMutex<[Option<(Handler, usize)>; DEVICE_VECTORS]> =
    IrqMutex::new([None; DEVICE_VECTORS]);

/// Binds a fresh vector to `handler(arg)`; `None` when all are taken.
pub fn alloc_vector(handler: Handler, arg: usize) -> Option<u8> {
    let mut t = TABLE.lock();
    let i = t.iter().position(Option::is_none)?;
    t[i] = Some((handler, arg));
    Some(DEVICE_VECTOR_BASE + i as u8)
}

/// Whether `vector` is a device vector.
pub fn is_device_vector(vector: u64) -> bool {
    (DEVICE_VECTOR_BASE as u64..DEVICE_VECTOR_BASE as u64 + DEVICE_VECTORS as u64).contains(&vector)
}

/// Runs the handler bound to `vector` (nothing if none is).
pub fn dispatch(vector: u64) {
    let i = vector.wrapping_sub(DEVICE_VECTOR_BASE as u64) as usize;
    let entry = TABLE.lock().get(i).copied().flatten();
    if let Some((handler, arg)) = entry {
        handler(arg);
    }
}
