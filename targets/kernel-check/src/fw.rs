//! Board scaffolding shared by the programs of this crate (and copyable into other firmware):
//! semihosting exit codes that QEMU passes through, an exiting HardFault / default handler and
//! panic handler, and stack painting for a high-water mark.

use core::panic::PanicInfo;
use core::ptr::{addr_of, addr_of_mut};

use cortex_m_rt::{exception, ExceptionFrame};
use cortex_m_semihosting::hprintln;

/// Every check passed.
pub const EXIT_PASS: u32 = 0;
/// A kernel disagreed with the scalar specification.
pub const EXIT_MISMATCH: u32 = 1;
/// The program panicked.
pub const EXIT_PANIC: u32 = 101;
/// A HardFault (for example an instruction the core does not have).
pub const EXIT_HARDFAULT: u32 = 102;
/// An unexpected exception or interrupt.
pub const EXIT_EXCEPTION: u32 = 103;

/// Ends the program: semihosting `SYS_EXIT_EXTENDED` with `ADP_Stopped_ApplicationExit`, which
/// makes QEMU exit with `code`.
pub fn exit(code: u32) -> ! {
    let block = [0x2_0026usize, code as usize];
    // SAFETY: 0x20 is SYS_EXIT_EXTENDED; its argument is a pointer to the two-word block.
    unsafe {
        cortex_m_semihosting::syscall(0x20, &block);
    }
    loop {
        cortex_m::asm::bkpt();
    }
}

#[exception]
unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
    hprintln!("HardFault: pc={:#010x} lr={:#010x}", ef.pc(), ef.lr());
    exit(EXIT_HARDFAULT)
}

#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    hprintln!("unexpected exception {}", irqn);
    exit(EXIT_EXCEPTION)
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    hprintln!("panic: {}", info);
    exit(EXIT_PANIC)
}

const PAINT: u32 = 0x5AFE_C0DE;

extern "C" {
    static mut __sheap: u32;
    static _stack_start: u32;
}

/// Fills the unused stack (from the end of static data up to a little below the current stack
/// pointer) with a pattern; call first thing in `main`.
#[inline(never)]
pub fn paint_stack() {
    let sp = cortex_m::register::msp::read() as usize;
    // SAFETY: [__sheap, sp - 256) lies between the end of .bss and the live stack (cortex-m-rt's
    // layout; the heap is unused), so no live object is overwritten.
    unsafe {
        let mut p = addr_of_mut!(__sheap);
        while (p as usize) < sp - 256 {
            p.write_volatile(PAINT);
            p = p.add(1);
        }
    }
}

/// Bytes of stack used since [`paint_stack`]: from the top of the stack down to the lowest word
/// no longer holding the pattern.
pub fn stack_high_water() -> usize {
    // SAFETY: reads words of the painted region, which are plain RAM.
    unsafe {
        let top = addr_of!(_stack_start) as usize;
        let mut p = addr_of!(__sheap);
        while (p as usize) < top && p.read_volatile() == PAINT {
            p = p.add(1);
        }
        top - p as usize
    }
}
