//! The interrupt descriptor table, shared by all CPUs. Every vector enters through its
//! stub in `trap.rs`.

use super::trap::stub_address;

#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const _: () = assert!(core::mem::size_of::<Gate>() == 16);

#[repr(C, align(4096))]
struct Idt([Gate; 256]);

static IDT: spin::Mutex<Idt> = spin::Mutex::new(Idt([Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_high: 0,
    reserved: 0,
}; 256]));

/// Interrupt gate (IF cleared on entry), DPL 0, present.
const INTERRUPT_GATE: u8 = 0x8e;
/// The same, callable from ring 3 with `int n`: only `int3` (#BP) and `into` (#OF), which
/// a PV guest (its kernel included, in ring 3) executes directly, as under Xen.
const USER_INTERRUPT_GATE: u8 = 0xee;

/// Loads the IDT the boot CPU set up (`load`) on this CPU.
///
/// # Safety
/// The boot CPU's `load` ran, and this CPU's GDT and TSS match it (the same code selector,
/// the IST slots filled).
pub unsafe fn load_shared() {
    let idt = IDT.lock();
    let ptr = x86::dtables::DescriptorTablePointer::<Gate> {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: idt.0.as_ptr(),
    };
    // SAFETY: the IDT is a static with valid gates (the caller's contract).
    unsafe { x86::dtables::lidt(&ptr) };
}

/// (Re)writes every gate for code selector `cs`, with the IST slots given for particular
/// vectors, and loads the IDT on this CPU.
///
/// # Safety
/// `cs` must be a 64-bit ring-0 code selector of the loaded GDT, and every IST slot named
/// must hold a valid stack in this CPU's TSS.
pub unsafe fn load(cs: u16, ist: &[(u8, u8)]) {
    let mut idt = IDT.lock();
    for (vector, gate) in idt.0.iter_mut().enumerate() {
        let addr = stub_address(vector as u8);
        *gate = Gate {
            offset_low: addr as u16,
            selector: cs,
            ist: ist
                .iter()
                .find(|(v, _)| *v as usize == vector)
                .map_or(0, |(_, s)| *s),
            type_attr: if vector == 3 || vector == 4 {
                USER_INTERRUPT_GATE
            } else {
                INTERRUPT_GATE
            },
            offset_mid: (addr >> 16) as u16,
            offset_high: (addr >> 32) as u32,
            reserved: 0,
        };
    }
    let ptr = x86::dtables::DescriptorTablePointer::<Gate> {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: idt.0.as_ptr(),
    };
    // SAFETY: the IDT is a static, so it outlives its use by the CPU; every gate points at
    // a valid stub, with the selector and IST slots the caller vouched for.
    unsafe { x86::dtables::lidt(&ptr) };
}
