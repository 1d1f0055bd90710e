//! mhmoe demo on the nRF52840-DK (nRF52840, Cortex-M4F, DSP kernels): generates text from the
//! Q4_0 demo model in flash and logs with defmt over RTT (see README.md and ../demo-fw).
//!
//! The Q8_0 model (1.1 MB) does not fit the 1 MiB flash; Q4_0 (613 KB) does. 256 KiB of RAM
//! hold the tokenizer tables (45 KB), the stack and a context of 32 positions (KV cache
//! 128 KiB). The core runs at 64 MHz; [`clocks`] starts the external 32 MHz crystal oscillator
//! (HFXO) so that those 64 MHz are crystal-accurate (the internal RC oscillator it replaces is
//! good to a few per cent), and the flash instruction cache is turned on.
#![no_std]
#![no_main]

use core::ptr::addr_of_mut;

use demo_fw::{entry, Aligned, AlignedBuffer, Demo};

// MODEL_LEN, CTX, STATE_BYTES, TOKENIZER_WORDS: the exact sizes, computed by build.rs from the
// model (mhmoe::build::Sizing); TOKENS: the demo's.
use demo_fw::mhmoe;
include!(concat!(env!("OUT_DIR"), "/mhmoe_sizes.rs"));
include!(concat!(env!("OUT_DIR"), "/demo_config.rs"));

/// The nRF52840's core clock: 64 MHz from the HFXO (or HFINT), nothing else.
const CORE_HZ: u32 = 64_000_000;

/// A 32-bit register of the nRF52840 (addresses from the product specification v1.7, CLOCK and
/// NVMC chapters); only the constants below are made.
#[derive(Clone, Copy)]
struct Reg(usize);

impl Reg {
    fn read(self) -> u32 {
        // SAFETY: `self` is one of the registers below: device memory, read as an aligned word.
        unsafe { (self.0 as *const u32).read_volatile() }
    }

    fn write(self, value: u32) {
        // SAFETY: as in `read`; the writes below only start the crystal and enable the cache.
        unsafe { (self.0 as *mut u32).write_volatile(value) }
    }
}

/// NVMC.ICACHECNF: bit 0 enables the flash instruction cache.
const NVMC_ICACHECNF: Reg = Reg(0x4001_E540);
/// CLOCK.TASKS_HFCLKSTART: writing 1 starts the HFXO.
const CLOCK_TASKS_HFCLKSTART: Reg = Reg(0x4000_0000);
/// CLOCK.HFCLKSTAT: bit 0 SRC (1 = the crystal), bit 16 STATE (1 = running).
const CLOCK_HFCLKSTAT: Reg = Reg(0x4000_040C);
/// HFCLKSTAT with SRC = Xtal and STATE = Running.
const HFXO_RUNNING: u32 = 1 << 16 | 1;

/// Starts the HFXO and waits until it runs the 64 MHz clock (typically well under 1 ms);
/// panics (a defmt error over RTT) if it does not start. Returns the clock, for the log.
fn clocks() -> (u32, &'static str) {
    if CLOCK_HFCLKSTAT.read() & HFXO_RUNNING != HFXO_RUNNING {
        // Waits on HFCLKSTAT rather than EVENTS_HFCLKSTARTED: the event does not come again
        // when the crystal already runs (after a reset that kept it on).
        CLOCK_TASKS_HFCLKSTART.write(1);
        let mut polls = 0u32;
        while CLOCK_HFCLKSTAT.read() & HFXO_RUNNING != HFXO_RUNNING {
            polls += 1;
            assert!(
                polls < 10_000_000,
                "the 32 MHz crystal oscillator did not start"
            );
        }
    }
    (CORE_HZ, "HFXO, 32 MHz crystal")
}

#[link_section = ".model"]
static MODEL: Aligned<[u8; MODEL_LEN]> = Aligned(*include_bytes!(env!("MHMOE_MODEL_PATH")));
static mut STATE: AlignedBuffer<STATE_BYTES> = AlignedBuffer::new();
static mut TOKENIZER: [u32; TOKENIZER_WORDS] = [0; TOKENIZER_WORDS];

#[entry]
fn main() -> ! {
    NVMC_ICACHECNF.write(1);
    let (core_hz, clock) = clocks();
    let cp = demo_fw::cortex_m::Peripherals::take().unwrap();
    // SAFETY: `main` runs once and these are the only references to the two buffers.
    let (state, tokenizer) =
        unsafe { (&mut (*addr_of_mut!(STATE)).0, &mut *addr_of_mut!(TOKENIZER)) };
    let demo = Demo {
        board: "nrf52840-dk",
        model: &MODEL.0,
        ctx: CTX,
        tokens: TOKENS,
        kv: KV,
    };
    demo_fw::rtt::run(&demo, core_hz, clock, cp, state, tokenizer)
}
