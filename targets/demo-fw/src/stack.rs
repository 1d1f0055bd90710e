//! Stack high-water mark by painting: fill the free stack with a pattern at start, and find the
//! lowest word that no longer holds it at the end.
//!
//! cortex-m-rt's and riscv-rt's layout: the stack starts at `_stack_start` (the top of RAM) and
//! grows down towards `__sheap`, the end of the static data (no heap is used here).

use core::ptr::{addr_of, addr_of_mut};

const PAINT: u32 = 0x5AFE_C0DE;

extern "C" {
    static mut __sheap: u32;
    static _stack_start: u32;
}

/// Fills the unused stack, from the end of static data up to 256 bytes below the current stack
/// pointer, with the pattern. Call it first thing.
#[inline(never)]
pub fn paint() {
    // The address of a local: this frame's part of the stack, close enough to the stack pointer.
    let here = 0u32;
    let sp = core::hint::black_box(&here) as *const u32 as usize;
    // SAFETY: [__sheap, sp - 256) lies between the end of the statics and the live stack
    // (the runtime's layout, no heap), and `paint` calls nothing that could use the stack below
    // it, so no live object is overwritten.
    unsafe {
        let mut p = addr_of_mut!(__sheap);
        while (p as usize) < sp - 256 {
            p.write_volatile(PAINT);
            p = p.add(1);
        }
    }
}

/// Bytes of stack used since [`paint`]: from the top of the stack down to the lowest word no
/// longer holding the pattern.
pub fn high_water() -> usize {
    // SAFETY: reads words between the end of the statics and the top of the stack: plain RAM.
    unsafe {
        let top = addr_of!(_stack_start) as usize;
        let mut p = addr_of!(__sheap) as *const u32;
        while (p as usize) < top && p.read_volatile() == PAINT {
            p = p.add(1);
        }
        top - p as usize
    }
}

/// Bytes between the end of the statics and the top of the stack (the most the stack can use).
pub fn size() -> usize {
    addr_of!(_stack_start) as usize - addr_of!(__sheap) as usize
}
