//! Emulated boards: the report goes to the host over semihosting, and the program ends QEMU
//! with an exit code that says what happened ([`EXIT_OK`] and the other `EXIT_*` codes). Also
//! the exiting fault, exception and panic handlers. Works on Cortex-M (QEMU `qemu-system-arm`)
//! and RISC-V (`qemu-system-riscv32`): the `semihosting` crate speaks both.
//!
//! Report lines (parsed by `tests/firmware.rs`; the values are separated by single spaces):
//!
//! ```text
//! demo-fw board=mps2-an386 isa=cortex-m-dsp ctx=256 kv=f32 tokens=16 model=1151168
//! sizes state=1074992 tokenizer=0 stack-space=3087344
//! prompt-ids 1 2 3
//! generated-ids 4 5 6
//! text "escaped text"
//! logits-fnv1a64 0x0123456789abcdef
//! cycles prompt=0 generated=0 (no cycle counter)
//! stack-high-water 12345
//! demo-fw ok
//! ```

use core::mem::MaybeUninit;
use core::panic::PanicInfo;

use semihosting::{print as hprint, println as hprintln};

use crate::{generate, stack, Demo, Stage};

/// Success.
pub const EXIT_OK: u32 = 0;
/// `Model::from_bytes` failed.
pub const EXIT_MODEL: u32 = 2;
/// The tokenizer could not be built.
pub const EXIT_TOKENIZER: u32 = 3;
/// The state could not be carved (too small, misaligned, bad context length).
pub const EXIT_STATE: u32 = 4;
/// The prompt could not be encoded.
pub const EXIT_PROMPT: u32 = 5;
/// A forward pass failed.
pub const EXIT_FORWARD: u32 = 6;
/// Picking a token failed (non-finite logits).
pub const EXIT_SAMPLE: u32 = 7;
/// The program panicked.
pub const EXIT_PANIC: u32 = 101;
/// A HardFault (for example an instruction the core does not have), or on RISC-V any exception.
pub const EXIT_HARDFAULT: u32 = 102;
/// An unexpected exception or interrupt.
pub const EXIT_EXCEPTION: u32 = 103;

fn exit_code(stage: Stage) -> u32 {
    match stage {
        Stage::Model => EXIT_MODEL,
        Stage::Tokenizer => EXIT_TOKENIZER,
        Stage::State => EXIT_STATE,
        Stage::Prompt => EXIT_PROMPT,
        Stage::Forward => EXIT_FORWARD,
        Stage::Sample => EXIT_SAMPLE,
    }
}

/// Runs the demo, prints the report and exits QEMU with [`EXIT_OK`] or the failed step's code.
///
/// With `isa=scalar` on the semihosting command line (QEMU:
/// `-semihosting-config enable=on,target=native,arg=fw,arg=isa=scalar`) the forward pass uses
/// the scalar kernels instead of the build's ISA kernels.
pub fn run(demo: &Demo<'_>, state_buf: &mut [u8], tok_workspace: &mut [u32]) -> ! {
    stack::paint();
    let mut buf = [MaybeUninit::uninit(); 128];
    if cmdline(&mut buf)
        .split(|&b| b == b' ')
        .any(|w| w == b"isa=scalar")
    {
        let _ = mhmoe::Isa::force(Some(mhmoe::Isa::Scalar));
    }
    hprintln!(
        "demo-fw board={} isa={} ctx={} kv={} tokens={} model={}",
        demo.board,
        mhmoe::Isa::active().name(),
        demo.ctx,
        demo.kv.name(),
        demo.tokens,
        demo.model.len()
    );
    // QEMU has no cycle counter (the DWT reads 0): speed is measured in instructions instead
    // (tools/firmware-insn-count.sh).
    let s = match generate(demo, state_buf, tok_workspace, &|| 0) {
        Ok(s) => s,
        Err(f) => {
            hprintln!("error: {} failed: {}", f.stage.name(), f.error);
            exit(exit_code(f.stage))
        }
    };
    hprintln!(
        "sizes state={} tokenizer={} stack-space={}",
        s.state_bytes,
        s.tokenizer_bytes,
        stack::size()
    );
    hprint!("prompt-ids");
    for t in &s.prompt {
        hprint!(" {}", t);
    }
    hprint!("\ngenerated-ids");
    for t in &s.generated {
        hprint!(" {}", t);
    }
    hprintln!();
    hprintln!(
        "text \"{}\"{}",
        s.text.escape_debug(),
        if s.text_truncated { " (cut)" } else { "" }
    );
    hprintln!("logits-fnv1a64 {:#018x}", s.logits_hash);
    hprintln!(
        "cycles prompt={} generated={} (no cycle counter)",
        s.prompt_cycles,
        s.gen_cycles
    );
    hprintln!("stack-high-water {}", stack::high_water());
    hprintln!("demo-fw ok");
    exit(EXIT_OK)
}

/// The semihosting command line (`SYS_GET_CMDLINE`), empty if there is none or it is too long.
fn cmdline(buf: &mut [MaybeUninit<u8>]) -> &[u8] {
    match semihosting::sys::arm_compat::sys_get_cmdline_uninit(buf) {
        Ok(line) => line,
        Err(_) => &[],
    }
}

/// Ends the program: semihosting `SYS_EXIT_EXTENDED` with `ADP_Stopped_ApplicationExit`, which
/// makes QEMU exit with `code`.
pub fn exit(code: u32) -> ! {
    semihosting::process::exit(code as i32)
}

#[cfg(target_arch = "arm")]
#[cortex_m_rt::exception]
unsafe fn HardFault(ef: &cortex_m_rt::ExceptionFrame) -> ! {
    hprintln!("HardFault: pc={:#010x} lr={:#010x}", ef.pc(), ef.lr());
    exit(EXIT_HARDFAULT)
}

#[cfg(target_arch = "arm")]
#[cortex_m_rt::exception]
unsafe fn DefaultHandler(irqn: i16) {
    hprintln!("unexpected exception {}", irqn);
    exit(EXIT_EXCEPTION)
}

/// Every RISC-V exception (riscv-rt calls `ExceptionHandler` for those without a handler).
#[cfg(target_arch = "riscv32")]
#[export_name = "ExceptionHandler"]
fn exception_handler(_frame: &riscv_rt::TrapFrame) -> ! {
    hprintln!(
        "exception: mcause={:#010x} mepc={:#010x} mtval={:#010x}",
        riscv::register::mcause::read().bits(),
        riscv::register::mepc::read(),
        riscv::register::mtval::read()
    );
    exit(EXIT_HARDFAULT)
}

/// Interrupts (none are enabled).
#[cfg(target_arch = "riscv32")]
#[export_name = "DefaultHandler"]
fn default_handler() {
    hprintln!("unexpected interrupt");
    exit(EXIT_EXCEPTION)
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    hprintln!("panic: {}", info);
    exit(EXIT_PANIC)
}
