//! x86-64 AVX-512 kernels (F, BW, VL, VNNI; F16C for the scales).
//!
//! Every kernel gives the bit pattern of its [`super::scalar`] twin (FORMAT.md, "Accumulation
//! order"). Methods without an override here use the scalar default.

use super::{Isa, Kernels};

/// AVX-512 kernels (selected at run time under `std`, at build time otherwise).
#[derive(Debug, Clone, Copy)]
pub struct Avx512;

impl Avx512 {
    /// Whether the CPU supports the instructions these kernels use.
    #[inline(always)]
    pub fn available() -> bool {
        #[cfg(feature = "std")]
        {
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512vnni")
                && std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("f16c")
        }
        #[cfg(not(feature = "std"))]
        {
            cfg!(all(
                target_feature = "avx512f",
                target_feature = "avx512bw",
                target_feature = "avx512vl",
                target_feature = "avx512vnni",
                target_feature = "avx2",
                target_feature = "f16c"
            ))
        }
    }
}

impl Kernels for Avx512 {
    const ISA: Isa = Isa::Avx512;
}
