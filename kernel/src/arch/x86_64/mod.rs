//! x86-64: boot glue, CPU control, descriptor tables, traps, interrupt controller, timers,
//! legacy devices, the direct map of physical memory and the hypervisor's own memory
//! (`memory`: frame allocator, page tables, stacks, heap, M2P, GDT/LDT windows).

pub mod acpi;
pub mod apic;
pub mod boot;
pub mod cpu;
pub mod debug_exit;
pub mod dma;
pub mod gdt;
pub mod guest_memory;
pub mod idt;
pub mod irq;
pub mod memory;
pub mod mmio;
pub mod msr;
pub mod paging;
pub mod pci;
pub mod percpu;
pub mod phys;
pub mod pit;
pub mod port;
pub mod rtc;
pub mod segments;
pub mod serial;
pub mod smp;
pub mod syscall;
pub mod trap;
pub mod vga;
