//! Interrupt-flag control and a spinlock that is safe to take from interrupt handlers.

use core::{
    ops::{Deref, DerefMut},
    sync::atomic::{AtomicU32, Ordering},
};

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
    /// The CPU holding it ([`NOBODY`] when free), so that code that may run with the lock
    /// already held by its own CPU can tell that from another CPU holding it.
    holder: AtomicU32,
}

pub struct IrqGuard<'a, T> {
    guard: Option<spin::MutexGuard<'a, T>>,
    holder: &'a AtomicU32,
    reenable: bool,
}

const NOBODY: u32 = u32::MAX;
/// What a CPU that has no per-CPU area yet (one still starting) records as holder.
const STARTING_CPU: u32 = u32::MAX - 1;

fn this_cpu() -> u32 {
    super::percpu::try_cpu().unwrap_or(STARTING_CPU)
}

impl<T> IrqMutex<T> {
    pub const fn new(value: T) -> Self {
        IrqMutex {
            inner: spin::Mutex::new(value),
            holder: AtomicU32::new(NOBODY),
        }
    }

    /// Takes the lock (waiting for another CPU to release it), unless this CPU already
    /// holds it: then `None`, where a plain `lock` would wait for ever.
    pub fn lock_unless_held_here(&self) -> Option<IrqGuard<'_, T>> {
        if self.holder.load(Ordering::Acquire) == this_cpu() {
            return None;
        }
        Some(self.lock())
    }

    /// Takes the lock, spinning until it is free. While it spins the CPU serves TLB-flush
    /// requests from other CPUs (`smp::flush_tlbs`), which may be holding this lock.
    pub fn lock(&self) -> IrqGuard<'_, T> {
        let reenable = enabled();
        disable();
        let guard = loop {
            if let Some(g) = self.inner.try_lock() {
                break g;
            }
            super::smp::serve_flush();
            core::hint::spin_loop();
        };
        self.holder.store(this_cpu(), Ordering::Release);
        IrqGuard {
            guard: Some(guard),
            holder: &self.holder,
            reenable,
        }
    }

    /// Takes the lock if it is free; the panic path uses this so that a panic while the
    /// lock is held cannot deadlock.
    pub fn try_lock(&self) -> Option<IrqGuard<'_, T>> {
        let reenable = enabled();
        disable();
        match self.inner.try_lock() {
            Some(g) => {
                self.holder.store(this_cpu(), Ordering::Release);
                Some(IrqGuard {
                    guard: Some(g),
                    holder: &self.holder,
                    reenable,
                })
            }
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
        self.holder.store(NOBODY, Ordering::Release);
        drop(self.guard.take());
        if self.reenable {
            enable();
        }
    }
}
