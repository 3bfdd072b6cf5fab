//! Interrupt-flag control and a spinlock that is safe to take from interrupt handlers.

use core::ops::{Deref, DerefMut};

/// Whether interrupts are enabled on this CPU.
pub fn enabled() -> bool {
    x86::bits64::rflags::read().contains(x86::bits64::rflags::RFlags::FLAGS_IF)
}

pub fn enable() {
    // SAFETY: the IDT is loaded before anyone enables interrupts (main.rs boot order).
    unsafe { x86::irq::enable() }
}

pub fn disable() {
    // SAFETY: disabling interrupts cannot break memory safety.
    unsafe { x86::irq::disable() }
}

/// Enables interrupts and halts until one arrives, atomically (`sti; hlt`), so a wakeup
/// between the two cannot be lost.
pub fn enable_and_wait() {
    // SAFETY: as `enable`; `hlt` only waits.
    unsafe { core::arch::asm!("sti; hlt", options(nomem, nostack)) }
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        disable();
        // SAFETY: halting with interrupts off only stops this CPU (NMIs aside).
        unsafe { x86::halt() }
    }
}

/// A spinlock that disables interrupts while held, so an interrupt handler on the same
/// CPU can never spin on a lock its own CPU holds.
pub struct IrqMutex<T> {
    inner: spin::Mutex<T>,
}

pub struct IrqGuard<'a, T> {
    guard: Option<spin::MutexGuard<'a, T>>,
    reenable: bool,
}

impl<T> IrqMutex<T> {
    pub const fn new(value: T) -> Self {
        IrqMutex {
            inner: spin::Mutex::new(value),
        }
    }

    pub fn lock(&self) -> IrqGuard<'_, T> {
        let reenable = enabled();
        disable();
        IrqGuard {
            guard: Some(self.inner.lock()),
            reenable,
        }
    }

    /// Takes the lock if it is free; the panic path uses this so that a panic while the
    /// lock is held cannot deadlock.
    pub fn try_lock(&self) -> Option<IrqGuard<'_, T>> {
        let reenable = enabled();
        disable();
        match self.inner.try_lock() {
            Some(g) => Some(IrqGuard {
                guard: Some(g),
                reenable,
            }),
            None => {
                if reenable {
                    enable();
                }
                None
            }
        }
    }
}

impl<T> Deref for IrqGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_ref().expect("guard present until drop")
    }
}

impl<T> DerefMut for IrqGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("guard present until drop")
    }
}

impl<T> Drop for IrqGuard<'_, T> {
    fn drop(&mut self) {
        drop(self.guard.take());
        if self.reenable {
            enable();
        }
    }
}
