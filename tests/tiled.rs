//! Models with tiled matrices (`mhmoe::tile`) give the bits of the file's row-major layout: on
//! every available instruction set, token by token and in batches, on one and two threads.
//! Tiling marks each tensor's type id, so tiled bytes are never read as row-major, and the
//! mark on a type without a tiled layout is a typed error.

mod common;

use mhmoe::file::{tile_in_place, Layout, ModelBytes, StateBuffer};
use mhmoe::kernels::ALL_ISAS;
use mhmoe::parallel::ThreadPool;
use mhmoe::quant::GgmlType;
use mhmoe::tile::TILED_FLAG;
use mhmoe::{Error, Exec, Isa, Model};

const TOKENS: [u32; 9] = [1, 7, 42, 3, 99, 5, 200, 17, 0];

/// Logits after each token of TOKENS (token by token), then after a batch of all of them.
fn run(model: &Model<'_>, exec: Exec<'_>) -> Vec<Vec<f32>> {
    let v = model.config().vocab_size() as u32;
    let tokens: Vec<u32> = TOKENS.iter().map(|&t| t % v).collect();
    let mut buf = StateBuffer::for_model(model, mhmoe::StateOptions::new(16)).unwrap();
    let mut st = buf.state(model).unwrap();
    let mut out: Vec<Vec<f32>> = tokens
        .iter()
        .map(|&t| exec.forward(model, &mut st, t).unwrap().to_vec())
        .collect();
    let opts = mhmoe::StateOptions::new(16).batch(tokens.len());
    let mut buf = StateBuffer::for_model(model, opts).unwrap();
    let mut st = buf.state(model).unwrap();
    out.push(
        exec.forward_batch(model, &mut st, &tokens)
            .unwrap()
            .to_vec(),
    );
    out
}

fn same(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.iter()
                .map(|v| v.to_bits())
                .eq(y.iter().map(|v| v.to_bits()))
        })
}

/// Tiles the model at `path` and checks it against its file layout on every available ISA,
/// serial and split over two threads at every matrix. Returns the number of tensors tiled.
fn check_tiled_matches_file(path: &std::path::Path, pool: &ThreadPool) -> usize {
    let file = ModelBytes::read_with(path, Layout::File).unwrap();
    let model = file.model().unwrap();
    let want = run(&model, Exec::serial().with_isa(Isa::Scalar).unwrap());
    let mut bytes = file.bytes().to_vec();
    let n = tile_in_place(&mut bytes, |_| true).unwrap();
    // Tiling again changes nothing: the marked tensors are left alone.
    let again = bytes.clone();
    assert_eq!(tile_in_place(&mut bytes, |_| true).unwrap(), 0);
    assert!(bytes == again, "{}: tiled twice", path.display());
    let tiled = Model::from_bytes(&bytes).unwrap();
    for isa in ALL_ISAS.into_iter().filter(|i| i.is_available()) {
        let serial = Exec::serial().with_isa(isa).unwrap();
        let threads = Exec::new(pool).with_isa(isa).unwrap().with_min_split(0);
        for exec in [serial, threads] {
            let got = run(&tiled, exec);
            assert!(
                same(&got, &want),
                "{}: {} tiled ({n} tensors) differs from the file layout",
                path.display(),
                isa.name()
            );
        }
    }
    n
}

#[test]
fn tiled_models_match_the_file_layout_on_every_isa() {
    let pool = ThreadPool::new(2).unwrap();
    let mut tiled_somewhere = 0;
    for path in common::test_models() {
        tiled_somewhere += check_tiled_matches_file(&path, &pool);
    }
    assert!(tiled_somewhere > 0, "no test model had a matrix to tile");
}

/// A Q4_0 model whose expert down-projection is wider than a piece (2080 columns, 65 blocks)
/// and taller than a panel (160 rows): bands in panels of pieces (`mhmoe::tile::unit_offset`),
/// split over two threads at the panel boundary, a partial last panel, token by token and in a
/// batch (the grouped GEMV repacks its tiles from the pieces). Made by `python3
/// tools/gen_model.py tests/models/wide/q4_0_panels.gguf --dim 160 --layers 1 --heads 4
/// --experts 1 --top-k 1 --expert-ff 2080 --vocab 260 --ctx 16 --type Q4_0 --seed 3`.
#[test]
fn panels_of_pieces_match_the_file_layout_on_every_isa() {
    let pool = ThreadPool::new(2).unwrap();
    let path = common::root().join("tests/models/wide/q4_0_panels.gguf");
    let file = ModelBytes::read_with(&path, Layout::File).unwrap();
    let model = file.model().unwrap();
    let mhmoe::model::Ffn::Moe(moe) = model.layer(0).unwrap().ffn else {
        panic!("the panels model has a MoE layer");
    };
    let down = moe.down.get(0);
    assert!(mhmoe::tile::has_pieces(down.ty(), down.cols() / 32) && down.rows() > 128);
    assert!(check_tiled_matches_file(&path, &pool) >= 7);
}

#[test]
fn read_with_tiled_marks_the_tensors_and_auto_follows_the_cpu() {
    let path = common::root().join("models/mhmoe-demo-q8_0.gguf");
    let marked = |f: &ModelBytes| {
        let g = mhmoe::gguf::Gguf::parse(f.bytes()).unwrap();
        g.tensors().filter(|t| t.tiled).count()
    };
    let tiled = ModelBytes::read_with(&path, Layout::Tiled).unwrap();
    assert!(marked(&tiled) > 0);
    let file = ModelBytes::read_with(&path, Layout::File).unwrap();
    assert_eq!(marked(&file), 0);
    let auto = ModelBytes::read_with(&path, Layout::Auto).unwrap();
    let g = mhmoe::gguf::Gguf::parse(auto.bytes()).unwrap();
    for t in g.tensors() {
        let ty = t.ty.computed();
        let want = ty.is_some_and(|ty| Isa::detect().prefers_tiled(ty))
            && t.n_dims >= 2
            && t.dims[1] >= 16;
        assert_eq!(t.tiled, want, "{}", t.name);
    }
}

#[test]
fn the_tiled_mark_on_a_type_without_a_tiled_layout_is_an_error() {
    let path = common::test_models().remove(0);
    let bytes = std::fs::read(&path).unwrap();
    let g = mhmoe::gguf::Gguf::parse(&bytes).unwrap();
    // The type id of the first F32 tensor.
    let t = g
        .tensors()
        .find(|t| t.ty.computed() == Some(GgmlType::F32))
        .expect("an F32 tensor");
    let name = t.name.to_string();
    let at = type_id_at(&bytes, &name);
    let mut bad = bytes.clone();
    let id = u32::from_le_bytes(bad[at..at + 4].try_into().unwrap());
    assert_eq!(id, 0);
    bad[at..at + 4].copy_from_slice(&(id | TILED_FLAG).to_le_bytes());
    match mhmoe::gguf::Gguf::parse(&bad) {
        Err(Error::UnknownTensorType { tensor, type_id }) => {
            assert_eq!(tensor.as_str(), name.as_str());
            assert_eq!(type_id, TILED_FLAG);
        }
        other => panic!("expected UnknownTensorType, got {other:?}"),
    }
}

/// Where tensor `name`'s type id lies in the file (the offset follows it).
fn type_id_at(bytes: &[u8], name: &str) -> usize {
    let g = mhmoe::gguf::Gguf::parse(bytes).unwrap();
    let t = g.tensors().find(|t| t.name == name).unwrap();
    t.name.as_ptr().addr() - bytes.as_ptr().addr() + t.name.len() + 4 + 8 * t.n_dims
}

/// What the model makes of four tokens on the active instruction set, written out: the bits of
/// each step's logits, or the error.
fn steps(bytes: &[u8]) -> String {
    let model = match Model::from_bytes(bytes) {
        Ok(m) => m,
        Err(e) => return format!("load: {e:?}"),
    };
    let mut buf = StateBuffer::for_model(&model, 8).unwrap();
    let mut st = buf.state(&model).unwrap();
    let v = model.config().vocab_size() as u32;
    let out: Vec<_> = TOKENS[..4]
        .iter()
        .map(|&t| match mhmoe::forward(&model, &mut st, t % v) {
            Ok(l) => format!("{:?}", l.iter().map(|x| x.to_bits()).collect::<Vec<_>>()),
            Err(e) => format!("{e:?}"),
        })
        .collect();
    out.join("\n")
}

/// Points tensor `v` (an F32 vector) one alignment step into the largest Q8_0 matrix, and with
/// `small`, the smallest Q8_0 matrix into it after the vector; then checks that tiling leaves
/// every tensor that shares bytes row-major and the model computes the same.
fn check_shared(small_too: bool) {
    let path = common::root().join("models/mhmoe-demo-q8_0.gguf");
    let mut bytes = std::fs::read(path).unwrap();
    let g = mhmoe::gguf::Gguf::parse(&bytes).unwrap();
    let align = g.alignment();
    let matrices: Vec<_> = g
        .tensors()
        .filter(|t| t.ty.computed() == Some(GgmlType::Q8_0) && t.n_dims >= 2 && t.dims[1] >= 16)
        .collect();
    let big = matrices.iter().max_by_key(|t| t.data.len()).unwrap();
    let small = matrices.iter().min_by_key(|t| t.data.len()).unwrap();
    let v = g
        .tensors()
        .find(|t| t.ty.computed() == Some(GgmlType::F32))
        .expect("an F32 vector");
    // The small matrix overlaps only the big one, which is not its neighbour in address order.
    let v_at = big.offset + align;
    let small_at = (v_at + v.data.len() as u64).next_multiple_of(align);
    assert!(small_at + small.data.len() as u64 <= big.offset + big.data.len() as u64);
    let names = [big.name, v.name, small.name].map(str::to_string);
    let before: Vec<u8> = big.data.to_vec();
    let mut moved = vec![(&names[1], v_at)];
    if small_too {
        moved.push((&names[2], small_at));
    }
    for (name, offset) in moved {
        let at = type_id_at(&bytes, name) + 4;
        bytes[at..at + 8].copy_from_slice(&offset.to_le_bytes());
    }
    let shared = bytes.clone();
    let n = tile_in_place(&mut bytes, |_| true).unwrap();
    assert!(n > 0, "the other matrices are tiled");
    let g = mhmoe::gguf::Gguf::parse(&bytes).unwrap();
    for name in if small_too { &names[..] } else { &names[..1] } {
        let t = g.tensors().find(|t| t.name == name.as_str()).unwrap();
        assert!(
            !t.tiled,
            "{name} shares bytes with another tensor and must stay row-major"
        );
    }
    let big = g.tensors().find(|t| t.name == names[0].as_str()).unwrap();
    assert!(big.data == before.as_slice(), "{} was changed", names[0]);
    // Whatever the shared bytes make of the model, both layouts make the same.
    assert_eq!(
        format!("{:?}", steps(&shared)),
        format!("{:?}", steps(&bytes))
    );
}

#[test]
fn tensors_sharing_bytes_are_not_tiled() {
    check_shared(false);
    check_shared(true);
}
