//! aarch64 NEON kernels, with an SDOT path where the dot-product extension is present.

use super::{Isa, Kernels};

/// NEON kernels.
#[derive(Debug, Clone, Copy)]
pub struct Neon;

impl Neon {
    /// Whether the CPU supports the instructions these kernels use.
    pub fn available() -> bool {
        false
    }
}

impl Kernels for Neon {
    const ISA: Isa = Isa::Neon;
}

/// NEON kernels using SDOT for the int8 dot products.
#[derive(Debug, Clone, Copy)]
pub struct NeonDotprod;

impl NeonDotprod {
    /// Whether the CPU supports the instructions these kernels use.
    pub fn available() -> bool {
        false
    }
}

impl Kernels for NeonDotprod {
    const ISA: Isa = Isa::NeonDotprod;
}
