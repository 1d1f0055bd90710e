//! Stack high-water mark by painting: fill the free stack with a pattern at start, and find the
//! lowest word that no longer holds it at the end.
//!
//! The stack starts at `_stack_start` and grows down to its end: cortex-m-rt's `_stack_end`
//! (the end of the static data by default; with flip-link, which puts the stack below the
//! statics, the start of RAM), riscv-rt's `__sheap` (the end of the static data; no heap is used
//! here). Only the symbols' addresses are used: the words between them belong to no Rust object.

use core::ptr::{addr_of, with_exposed_provenance, with_exposed_provenance_mut};

const PAINT: u32 = 0x5AFE_C0DE;

extern "C" {
    #[cfg_attr(target_arch = "arm", link_name = "_stack_end")]
    #[cfg_attr(not(target_arch = "arm"), link_name = "__sheap")]
    static STACK_END: u32;
    #[link_name = "_stack_start"]
    static STACK_START: u32;
}

/// The lowest address of the stack.
fn end() -> usize {
    addr_of!(STACK_END) as usize
}

/// The address just above the stack.
fn start() -> usize {
    addr_of!(STACK_START) as usize
}

/// Fills the unused stack, from its end up to 256 bytes below the current stack pointer, with
/// the pattern. Call it first thing.
#[inline(never)]
pub fn paint() {
    // The address of a local: this frame's part of the stack, close enough to the stack pointer.
    let here = 0u32;
    let sp = core::hint::black_box(&here) as *const u32 as usize;
    let mut a = end();
    while a + 4 <= sp - 256 {
        // SAFETY: [end, sp - 256) is the unused part of the stack (the runtime's layout), which
        // no Rust object occupies, and `paint` calls nothing that could use the stack below it.
        unsafe { with_exposed_provenance_mut::<u32>(a).write_volatile(PAINT) };
        a += 4;
    }
}

/// Bytes of stack used since [`paint`]: from the top of the stack down to the lowest word no
/// longer holding the pattern.
pub fn high_water() -> usize {
    let top = start();
    let mut a = end();
    // SAFETY: reads words of the stack region (plain RAM) below its top.
    while a < top && unsafe { with_exposed_provenance::<u32>(a).read_volatile() } == PAINT {
        a += 4;
    }
    top - a
}

/// Bytes of the stack region (the most the stack can use).
pub fn size() -> usize {
    start() - end()
}
