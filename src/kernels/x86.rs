//! x86-64 AVX2 kernels.

use super::{Isa, Kernels};

/// AVX2 kernels (selected at run time under `std`, at build time otherwise).
#[derive(Debug, Clone, Copy)]
pub struct Avx2;

impl Avx2 {
    /// Whether the CPU supports the instructions these kernels use.
    pub fn available() -> bool {
        false
    }
}

impl Kernels for Avx2 {
    const ISA: Isa = Isa::Avx2;
}
