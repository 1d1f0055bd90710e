//! Dequantization is bit-exact with the `gguf` Python package's numpy dequantizers: the file
//! tests/models/dequant_vectors.gguf (tools/mhmoe_tools/gen_test_models.py) holds, for each
//! type, a tensor with random and extreme blocks and `<name>.expected`, gguf's F32 output
//! (`f16_nan`: every f16 infinity and NaN, whose payloads and signalling bits numpy keeps).

mod common;

use mhmoe::gguf::Gguf;
use mhmoe::quant::{dequantize_row, GgmlType};

#[test]
fn dequantization_is_bit_exact_with_gguf_numpy() {
    let bytes = std::fs::read(common::root().join("tests/models/dequant_vectors.gguf")).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let mut seen = Vec::new();
    for t in g.tensors().filter(|t| !t.name.ends_with(".expected")) {
        let exp = g.tensor(&format!("{}.expected", t.name)).unwrap();
        assert_eq!(exp.ty, GgmlType::F32);
        assert_eq!(exp.dims, t.dims);
        let ty = t.ty.computed().expect("a type the engine computes with");
        let n = t.n_elements() as usize;
        let mut out = vec![0.0f32; n];
        let cols = t.dims[0] as usize;
        for (r, row) in out.chunks_mut(cols).enumerate() {
            let rb = ty.row_bytes(cols);
            dequantize_row(ty, &t.data[r * rb..(r + 1) * rb], row);
        }
        for (i, (got, want)) in out.iter().zip(exp.data.chunks_exact(4)).enumerate() {
            let want = f32::from_le_bytes(want.try_into().unwrap());
            // Equal bits, NaN payloads and signalling NaNs included (numpy widens an f16 by
            // moving its bits; the quiet bit is not set).
            assert!(
                got.to_bits() == want.to_bits(),
                "{} element {i}: {got:e} ({:#x}) != {want:e} ({:#x})",
                t.name,
                got.to_bits(),
                want.to_bits()
            );
        }
        seen.push(ty);
        if t.name == "f16_nan" {
            assert_eq!(t.n_elements(), 2048, "every f16 infinity and NaN");
        }
    }
    assert!(g.tensor("f16_nan").is_some());
    for ty in [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
    ] {
        assert!(seen.contains(&ty), "no test vector for {}", ty.name());
    }
}
