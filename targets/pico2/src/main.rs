//! mhmoe demo on the Raspberry Pi Pico 2 (RP2350, Cortex-M33, DSP kernels): generates text
//! from the demo model in flash and logs with defmt over RTT (see README.md and ../demo-fw).
//!
//! [`clocks`] runs the system clock at 150 MHz (the RP2350's rated maximum at its default core
//! voltage) from the Pico 2's 12 MHz crystal through PLL_SYS, and the log reports the frequency
//! read back from the registers, so tokens/s is crystal-accurate. Flash keeps the boot ROM's
//! XIP setup (its SCK divisor of 3 or more gives at most 50 MHz at 150 MHz).
#![no_std]
#![no_main]

use core::ptr::addr_of_mut;

use demo_fw::{entry, Aligned, AlignedBuffer, Demo};

// MODEL_LEN, CTX, STATE_BYTES, TOKENIZER_WORDS: the exact sizes, computed by build.rs from the
// model (mhmoe::build::Sizing); TOKENS: the demo's.
use demo_fw::mhmoe;
include!(concat!(env!("OUT_DIR"), "/mhmoe_sizes.rs"));
include!(concat!(env!("OUT_DIR"), "/demo_config.rs"));

/// The Pico 2's crystal.
const XOSC_HZ: u32 = 12_000_000;

/// A 32-bit register of the RP2350 (addresses from the RP2350 datasheet: XOSC 8.2, PLL 8.6,
/// CLOCKS 8.1, RESETS 7.5); only the constants below are made.
#[derive(Clone, Copy)]
struct Reg(usize);

impl Reg {
    fn read(self) -> u32 {
        // SAFETY: `self` is one of the registers below: device memory, read as an aligned word.
        unsafe { (self.0 as *const u32).read_volatile() }
    }

    fn write(self, value: u32) {
        // SAFETY: as in `read`; `clocks` writes them in the datasheet's order.
        unsafe { (self.0 as *mut u32).write_volatile(value) }
    }

    /// Clears the bits of `clear`, then sets those of `set`.
    fn modify(self, clear: u32, set: u32) {
        self.write(self.read() & !clear | set);
    }
}

const XOSC: usize = 0x4004_8000;
/// FREQ_RANGE [11:0] (0xaa0: 1-15 MHz), ENABLE [23:12] (0xfab: enable).
const XOSC_CTRL: Reg = Reg(XOSC);
/// Bit 31: STABLE.
const XOSC_STATUS: Reg = Reg(XOSC + 0x04);
/// DELAY [13:0], in units of 256 crystal periods.
const XOSC_STARTUP: Reg = Reg(XOSC + 0x0c);
const PLL_SYS: usize = 0x4005_0000;
/// REFDIV [5:0]; bit 31: LOCK.
const PLL_CS: Reg = Reg(PLL_SYS);
/// Power-downs: PD bit 0, DSMPD bit 2, POSTDIVPD bit 3, VCOPD bit 5.
const PLL_PWR: Reg = Reg(PLL_SYS + 0x04);
const PLL_FBDIV_INT: Reg = Reg(PLL_SYS + 0x08);
/// POSTDIV1 [18:16], POSTDIV2 [14:12].
const PLL_PRIM: Reg = Reg(PLL_SYS + 0x0c);
const CLOCKS: usize = 0x4001_0000;
/// SRC [1:0]: 0 ring oscillator, 2 XOSC.
const CLK_REF_CTRL: Reg = Reg(CLOCKS + 0x30);
/// INT [23:16].
const CLK_REF_DIV: Reg = Reg(CLOCKS + 0x34);
/// One bit per SRC value: the source in use.
const CLK_REF_SELECTED: Reg = Reg(CLOCKS + 0x38);
/// SRC bit 0: 0 clk_ref, 1 the aux mux; AUXSRC [7:5]: 0 PLL_SYS.
const CLK_SYS_CTRL: Reg = Reg(CLOCKS + 0x3c);
/// INT [31:16], FRAC [15:0].
const CLK_SYS_DIV: Reg = Reg(CLOCKS + 0x40);
/// One bit per SRC value: the source in use.
const CLK_SYS_SELECTED: Reg = Reg(CLOCKS + 0x44);
const RESETS: usize = 0x4002_0000;
const RESETS_RESET: Reg = Reg(RESETS);
const RESETS_RESET_DONE: Reg = Reg(RESETS + 0x08);
/// PLL_SYS's bit in RESETS.
const RESET_PLL_SYS: u32 = 1 << 14;

/// Polls `done` until it holds; panics (a defmt error over RTT) naming `what` if it does not
/// within 10 million polls (well over a second).
fn wait(what: &str, done: impl Fn() -> bool) {
    let mut polls = 0u32;
    while !done() {
        polls += 1;
        assert!(polls < 10_000_000, "clock setup: {} timed out", what);
    }
}

/// clk_sys = 12 MHz crystal / REFDIV 1 * FBDIV 125 (VCO 1500 MHz, at most 1600) / POSTDIV1 5
/// / POSTDIV2 2 = 150 MHz, the pico-sdk's default for the RP2350, following the datasheet's
/// sequences (PLL: 8.6.4; glitchless muxes: 8.1): clk_sys to clk_ref first, so nothing runs
/// from a clock being changed (also after a reset that kept them running), then the crystal,
/// clk_ref to it, PLL_SYS from reset, then clk_sys to it. Returns the frequency computed from
/// the registers as they are afterwards, and the source for the log.
fn clocks() -> (u32, &'static str) {
    CLK_SYS_CTRL.modify(1, 0);
    wait("clk_sys to clk_ref", || CLK_SYS_SELECTED.read() == 1 << 0);

    XOSC_CTRL.write(0xaa0);
    // About 1 ms (12 MHz / 1000 / 256 = 47), times 64 for slow-starting crystals.
    XOSC_STARTUP.write(47 * 64);
    XOSC_CTRL.write(0xfab << 12 | 0xaa0);
    wait("XOSC stable", || XOSC_STATUS.read() & 1 << 31 != 0);
    // clk_ref to the crystal, then its divider to 1 (lowering a divider after the switch).
    CLK_REF_CTRL.modify(0b11, 2);
    wait("clk_ref to XOSC", || CLK_REF_SELECTED.read() == 1 << 2);
    CLK_REF_DIV.write(1 << 16);

    RESETS_RESET.modify(0, RESET_PLL_SYS);
    RESETS_RESET.modify(RESET_PLL_SYS, 0);
    wait("PLL_SYS out of reset", || {
        RESETS_RESET_DONE.read() & RESET_PLL_SYS != 0
    });
    PLL_CS.write(1);
    PLL_FBDIV_INT.write(125);
    PLL_PWR.modify(1 << 0 | 1 << 5, 0); // power and VCO on
    wait("PLL_SYS lock", || PLL_CS.read() & 1 << 31 != 0);
    PLL_PRIM.write(5 << 16 | 2 << 12);
    PLL_PWR.modify(1 << 3, 0); // post dividers on

    // The aux mux (PLL_SYS) is changed while clk_sys runs from clk_ref, then selected.
    CLK_SYS_CTRL.modify(0b111 << 5, 0);
    CLK_SYS_DIV.write(1 << 16);
    CLK_SYS_CTRL.modify(0, 1);
    wait("clk_sys to PLL_SYS", || CLK_SYS_SELECTED.read() == 1 << 1);

    let refdiv = PLL_CS.read() & 0x3f;
    let fbdiv = PLL_FBDIV_INT.read() & 0xfff;
    let prim = PLL_PRIM.read();
    let (pd1, pd2) = ((prim >> 16) & 7, (prim >> 12) & 7);
    let div = CLK_SYS_DIV.read() >> 16;
    let hz = u64::from(XOSC_HZ) * u64::from(fbdiv) / u64::from(refdiv * pd1 * pd2 * div).max(1);
    (hz as u32, "PLL_SYS from the 12 MHz crystal")
}

/// The RP2350 boot ROM's minimal IMAGE_DEF block (the datasheet's "minimum viable image
/// metadata"): an Arm, Secure-mode executable for the RP2350, in the first 4 KiB of flash.
#[link_section = ".start_block"]
#[used]
static IMAGE_DEF: [u32; 5] = [
    0xffff_ded3, // PICOBIN_BLOCK_MARKER_START
    0x1021_0142, // IMAGE_TYPE item, 1 word: EXE | S-mode | ARM | RP2350
    0x0000_01ff, // LAST item, total size of the items: 1 word
    0x0000_0000, // offset to the next block: none (a loop to itself)
    0xab12_3579, // PICOBIN_BLOCK_MARKER_END
];

#[link_section = ".model"]
static MODEL: Aligned<[u8; MODEL_LEN]> = Aligned(*include_bytes!(env!("MHMOE_MODEL_PATH")));
static mut STATE: AlignedBuffer<STATE_BYTES> = AlignedBuffer::new();
static mut TOKENIZER: [u32; TOKENIZER_WORDS] = [0; TOKENIZER_WORDS];

#[entry]
fn main() -> ! {
    let (core_hz, clock) = clocks();
    let cp = demo_fw::cortex_m::Peripherals::take().unwrap();
    // SAFETY: `main` runs once and these are the only references to the two buffers.
    let (state, tokenizer) =
        unsafe { (&mut (*addr_of_mut!(STATE)).0, &mut *addr_of_mut!(TOKENIZER)) };
    let demo = Demo {
        board: "pico2",
        model: &MODEL.0,
        ctx: CTX,
        tokens: TOKENS,
        kv: KV,
    };
    demo_fw::rtt::run(&demo, core_hz, clock, cp, state, tokenizer)
}
