//! mhmoe demo on the NUCLEO-H743ZI2 (STM32H743, Cortex-M7, DSP kernels): generates text from
//! the demo model in flash and logs with defmt over RTT (see README.md and ../demo-fw).
//!
//! [`clocks`] runs the core at 400 MHz (PLL1 from the 64 MHz HSI oscillator, voltage scale 1,
//! two flash wait states), the most both silicon revisions allow at VOS1, and the log reports
//! the frequency read back from the registers; the Cortex-M7 caches are turned on.
#![no_std]
#![no_main]

use core::ptr::addr_of_mut;

use demo_fw::{entry, Aligned, AlignedBuffer, Demo};

// MODEL_LEN, CTX, STATE_BYTES, TOKENIZER_WORDS: the exact sizes, computed by build.rs from the
// model (mhmoe::build::Sizing); TOKENS: the demo's.
use demo_fw::mhmoe;
include!(concat!(env!("OUT_DIR"), "/mhmoe_sizes.rs"));
include!(concat!(env!("OUT_DIR"), "/demo_config.rs"));

/// The HSI oscillator before its divider (HSIDIV).
const HSI_HZ: u32 = 64_000_000;

/// A 32-bit register of the STM32H743 (addresses from RM0433: RCC 8.7, PWR 6.8, FLASH 4.9);
/// only the constants below are made.
#[derive(Clone, Copy)]
struct Reg(usize);

impl Reg {
    fn read(self) -> u32 {
        // SAFETY: `self` is one of the registers below: device memory, read as an aligned word.
        unsafe { (self.0 as *const u32).read_volatile() }
    }

    fn write(self, value: u32) {
        // SAFETY: as in `read`; `clocks` writes them in the reference manual's order.
        unsafe { (self.0 as *mut u32).write_volatile(value) }
    }

    /// Clears the bits of `clear`, then sets those of `set`.
    fn modify(self, clear: u32, set: u32) {
        self.write(self.read() & !clear | set);
    }
}

const PWR: usize = 0x5802_4800;
/// Bit 13: ACTVOSRDY (the supply and voltage scale are ready).
const PWR_CSR1: Reg = Reg(PWR + 0x04);
/// BYPASS bit 0, LDOEN bit 1, SCUEN bit 2 (writable once after power-on).
const PWR_CR3: Reg = Reg(PWR + 0x0c);
/// VOS [15:14] (0b11: scale 1), VOSRDY bit 13.
const PWR_D3CR: Reg = Reg(PWR + 0x18);
const FLASH_ACR: Reg = Reg(0x5200_2000);
const RCC: usize = 0x5802_4400;
/// HSIDIV [4:3], PLL1ON bit 24, PLL1RDY bit 25.
const RCC_CR: Reg = Reg(RCC);
/// SW [2:0], SWS [5:3] (0b000 HSI, 0b011 PLL1).
const RCC_CFGR: Reg = Reg(RCC + 0x10);
/// D1CPRE [11:8], D1PPRE [6:4], HPRE [3:0].
const RCC_D1CFGR: Reg = Reg(RCC + 0x18);
/// D2PPRE2 [10:8], D2PPRE1 [6:4].
const RCC_D2CFGR: Reg = Reg(RCC + 0x1c);
/// D3PPRE [6:4].
const RCC_D3CFGR: Reg = Reg(RCC + 0x20);
/// PLLSRC [1:0] (0: HSI), DIVM1 [9:4].
const RCC_PLLCKSELR: Reg = Reg(RCC + 0x28);
/// PLL1FRACEN bit 0, PLL1VCOSEL bit 1, PLL1RGE [3:2], DIVP1EN/DIVQ1EN/DIVR1EN bits 16/17/18.
const RCC_PLLCFGR: Reg = Reg(RCC + 0x2c);
/// DIVN1 - 1 [8:0], DIVP1 - 1 [15:9], DIVQ1 - 1 [22:16], DIVR1 - 1 [30:24].
const RCC_PLL1DIVR: Reg = Reg(RCC + 0x30);

/// Polls `done` until it holds; panics (a defmt error over RTT) naming `what` if it does not
/// within 10 million polls (well over 100 ms).
fn wait(what: &str, done: impl Fn() -> bool) {
    let mut polls = 0u32;
    while !done() {
        polls += 1;
        assert!(polls < 10_000_000, "clock setup: {} timed out", what);
    }
}

/// sys_ck = HSI 64 MHz / DIVM1 32 (2 MHz, PLL1 input range 2-4 MHz) * DIVN1 400 (wide VCO at
/// 800 MHz) / DIVP1 2 = 400 MHz = the core clock (D1CPRE 1); AXI/AHB (HPRE 2) 200 MHz, APB1-4
/// 100 MHz: the limits of voltage scale 1 on revisions Y and V. The HSI is the source because it
/// is on every board (the ST-LINK's 8 MHz MCO on HSE depends on solder bridges); it is
/// factory-trimmed to about 0.5 %. Order (RM0433): supply (LDO) and scale 1 first, flash wait
/// states for 200 MHz at scale 1 (2, WRHIGHFREQ 2) before the clock rises, bus prescalers, PLL1,
/// then the switch. Returns the core clock computed from the registers as they are afterwards,
/// and the source for the log.
fn clocks() -> (u32, &'static str) {
    // LDO supply (the H743 has no SMPS); ignored if already written since power-on.
    PWR_CR3.modify(0b111, 1 << 1);
    wait("supply ready", || PWR_CSR1.read() & 1 << 13 != 0);
    PWR_D3CR.modify(0b11 << 14, 0b11 << 14);
    wait("voltage scale 1", || PWR_D3CR.read() & 1 << 13 != 0);

    FLASH_ACR.modify(0b11_1111, 0b10 << 4 | 2);
    wait("flash wait states", || {
        FLASH_ACR.read() & 0b11_1111 == 0b10 << 4 | 2
    });

    // Run from the HSI and stop PLL1 (as at reset) while it is set up.
    RCC_CFGR.modify(0b111, 0);
    wait("switch to the HSI", || RCC_CFGR.read() >> 3 & 0b111 == 0);
    RCC_CR.modify(1 << 24, 0);
    wait("PLL1 off", || RCC_CR.read() & 1 << 25 == 0);

    RCC_D1CFGR.write(0b100 << 4 | 0b1000); // D1CPRE 1, D1PPRE 2, HPRE 2
    RCC_D2CFGR.write(0b100 << 8 | 0b100 << 4); // D2PPRE2 2, D2PPRE1 2
    RCC_D3CFGR.write(0b100 << 4); // D3PPRE 2
    RCC_PLLCKSELR.modify(0b11 | 0x3f << 4, 32 << 4);
    RCC_PLLCFGR.modify(0b1111 | 0b111 << 16, 0b01 << 2 | 1 << 16);
    RCC_PLL1DIVR.write((400 - 1) | (2 - 1) << 9 | (2 - 1) << 16 | (2 - 1) << 24);
    RCC_CR.modify(0, 1 << 24);
    wait("PLL1 lock", || RCC_CR.read() & 1 << 25 != 0);
    RCC_CFGR.modify(0b111, 0b011);
    wait("switch to PLL1", || RCC_CFGR.read() >> 3 & 0b111 == 0b011);

    let hsi = u64::from(HSI_HZ >> (RCC_CR.read() >> 3 & 0b11));
    let m = u64::from(RCC_PLLCKSELR.read() >> 4 & 0x3f).max(1);
    let divr = RCC_PLL1DIVR.read();
    let (n, p) = (u64::from(divr & 0x1ff) + 1, u64::from(divr >> 9 & 0x7f) + 1);
    let d1cpre = RCC_D1CFGR.read() >> 8 & 0xf;
    let core_div = match d1cpre {
        0..=7 => 1,
        8..=11 => 2 << (d1cpre - 8),
        _ => 64 << (d1cpre - 12),
    };
    let hz = hsi / m * n / p / core_div;
    (hz as u32, "PLL1 from the 64 MHz HSI")
}

#[link_section = ".model"]
static MODEL: Aligned<[u8; MODEL_LEN]> = Aligned(*include_bytes!(env!("MHMOE_MODEL_PATH")));
static mut STATE: AlignedBuffer<STATE_BYTES> = AlignedBuffer::new();
static mut TOKENIZER: [u32; TOKENIZER_WORDS] = [0; TOKENIZER_WORDS];

#[entry]
fn main() -> ! {
    let (core_hz, clock) = clocks();
    let mut cp = demo_fw::cortex_m::Peripherals::take().unwrap();
    cp.SCB.enable_icache();
    cp.SCB.enable_dcache(&mut cp.CPUID);
    // SAFETY: `main` runs once and these are the only references to the two buffers.
    let (state, tokenizer) =
        unsafe { (&mut (*addr_of_mut!(STATE)).0, &mut *addr_of_mut!(TOKENIZER)) };
    let demo = Demo {
        board: "nucleo-h743zi2",
        model: &MODEL.0,
        ctx: CTX,
        tokens: TOKENS,
        kv: KV,
    };
    demo_fw::rtt::run(&demo, core_hz, clock, cp, state, tokenizer)
}
