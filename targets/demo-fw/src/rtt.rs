//! Real boards: the report goes out with defmt over RTT (`probe-rs run` prints it), speed comes
//! from the DWT cycle counter, panics go through panic-probe, and the program ends with a
//! breakpoint (which `probe-rs run` takes as the end).

use cortex_m_rt::{exception, ExceptionFrame};
use defmt::{error, info, Display2Format};
use defmt_rtt as _;
use panic_probe as _;

use crate::{generate, stack, Demo};

/// Runs the demo and logs the report. `core_hz` is the core clock the board runs at (used to
/// turn cycles into tokens per second), `clock` says where it comes from (for the log); `cp`
/// gives the DWT cycle counter.
pub fn run(
    demo: &Demo<'_>,
    core_hz: u32,
    clock: &str,
    mut cp: cortex_m::Peripherals,
    state_buf: &mut [u8],
    tok_workspace: &mut [u32],
) -> ! {
    stack::paint();
    cp.DCB.enable_trace();
    cortex_m::peripheral::DWT::unlock();
    cp.DWT.set_cycle_count(0);
    cp.DWT.enable_cycle_counter();

    info!(
        "demo-fw board={=str} isa={=str} ctx={=usize} kv={=str} tokens={=usize} model={=usize} bytes, core {=u32} Hz ({=str})",
        demo.board,
        mhmoe::Isa::active().name(),
        demo.ctx,
        demo.kv.name(),
        demo.tokens,
        demo.model.len(),
        core_hz,
        clock
    );
    info!("prompt: {=str}", crate::PROMPT);
    let s = match generate(
        demo,
        state_buf,
        tok_workspace,
        &cortex_m::peripheral::DWT::cycle_count,
    ) {
        Ok(s) => s,
        Err(f) => {
            error!(
                "{=str} failed: {}",
                f.stage.name(),
                Display2Format(&f.error)
            );
            panic!("demo-fw failed");
        }
    };
    info!(
        "sizes: state {=usize} bytes, tokenizer {=usize} bytes, stack space {=usize} bytes",
        s.state_bytes,
        s.tokenizer_bytes,
        stack::size()
    );
    info!("prompt ids: {}", &s.prompt[..]);
    info!("generated ids: {}", &s.generated[..]);
    info!(
        "text: {=str}{=str}",
        &s.text,
        if s.text_truncated { " (cut)" } else { "" }
    );
    info!("logits-fnv1a64 {=u64:#018x}", s.logits_hash);
    let n = s.generated.len().max(1) as u64;
    let per_token = s.gen_cycles / n;
    let milli_tps = if s.gen_cycles == 0 {
        0
    } else {
        u64::from(core_hz) * n * 1000 / s.gen_cycles
    };
    info!(
        "prompt: {=usize} tokens in {=u64} cycles; generated: {=u64} cycles/token = {=u64}.{=u64:03} tokens/s at {=u32} Hz",
        s.prompt.len(),
        s.prompt_cycles,
        per_token,
        milli_tps / 1000,
        milli_tps % 1000,
        core_hz
    );
    info!("stack high-water {=usize} bytes", stack::high_water());
    info!("demo-fw ok");
    loop {
        cortex_m::asm::bkpt();
    }
}

#[exception]
unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
    error!(
        "HardFault: pc={=u32:#010x} lr={=u32:#010x}",
        ef.pc(),
        ef.lr()
    );
    // Signals the failure to probe-rs as panic-probe does.
    cortex_m::asm::udf()
}
