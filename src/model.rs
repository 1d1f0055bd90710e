//! The model: configuration plus views of every weight, borrowed from the GGUF bytes.

use core::fmt::Write;

use crate::config::{Config, RouterKind};
use crate::error::{name, Error, Name, Result};
use crate::gguf::{Gguf, TensorInfo};
use crate::quant::{dequantize_row, GgmlType};

/// A weight matrix `rows x cols` (GGUF dims `[cols, rows]`), stored row-major in `ty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matrix<'a> {
    /// Element type.
    pub ty: GgmlType,
    /// Output width.
    pub rows: usize,
    /// Input width.
    pub cols: usize,
    /// `rows * ty.row_bytes(cols)` bytes.
    pub data: &'a [u8],
}

impl<'a> Matrix<'a> {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols)
    }

    /// The bytes of row `r` (empty if out of range).
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        r.checked_mul(rb)
            .and_then(|start| self.data.get(start..start.checked_add(rb)?))
            .unwrap_or(&[])
    }

    /// Rows `r0..r1` as a matrix of their own (clamped to the rows there are).
    pub fn rows_range(&self, r0: usize, r1: usize) -> Matrix<'a> {
        let r1 = r1.min(self.rows);
        let r0 = r0.min(r1);
        let rb = self.row_bytes();
        Matrix {
            rows: r1 - r0,
            data: self.data.get(r0 * rb..r1 * rb).unwrap_or(&[]),
            ..*self
        }
    }

    /// Dequantizes row `r` into `out[..cols]`. A shorter `out` gets the whole blocks that fit;
    /// an out-of-range row writes nothing.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let n = self.cols.min(out.len());
        dequantize_row(self.ty, self.row(r), &mut out[..n]);
    }
}

/// `n` matrices of equal shape stored one after the other (GGUF dims `[cols, rows, n]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stacked<'a> {
    /// Number of matrices.
    pub n: usize,
    /// Shape and type of each; `data` covers all of them.
    pub all: Matrix<'a>,
}

impl<'a> Stacked<'a> {
    /// Matrix `e` (with no data if out of range).
    pub fn get(&self, e: usize) -> Matrix<'a> {
        let data = self
            .all
            .rows
            .checked_mul(self.all.row_bytes())
            .and_then(|bytes| {
                let start = e.checked_mul(bytes)?;
                self.all.data.get(start..start.checked_add(bytes)?)
            })
            .unwrap_or(&[]);
        Matrix { data, ..self.all }
    }
}

/// A 1-D f32 tensor (norm weights, biases) as little-endian bytes.
pub type Vector<'a> = &'a [u8];

/// A SwiGLU feed-forward block `down(silu(gate x) * up x)`.
#[derive(Debug, Clone, Copy)]
pub struct SwiGlu<'a> {
    /// Gate projection.
    pub gate: Matrix<'a>,
    /// Up projection.
    pub up: Matrix<'a>,
    /// Down projection.
    pub down: Matrix<'a>,
}

/// The router of an MoE layer.
#[derive(Debug, Clone, Copy)]
pub enum Router<'a> {
    /// Linear router `E x m`.
    Softmax(Matrix<'a>),
    /// X-MoE router: reduction `r x m` and expert embeddings `E x r`.
    XMoe {
        /// Reduction.
        reduce: Matrix<'a>,
        /// Expert embeddings (rows L2-normalized at run time).
        experts: Matrix<'a>,
    },
}

/// An MH-MoE (or, with `h = 1`, SMoE) feed-forward layer.
#[derive(Debug, Clone, Copy)]
pub struct Moe<'a> {
    /// Head linear and its bias (absent when `h = 1`).
    pub head: Option<(Matrix<'a>, Vector<'a>)>,
    /// Merge linear and its bias (absent when `h = 1`).
    pub merge: Option<(Matrix<'a>, Vector<'a>)>,
    /// Router.
    pub router: Router<'a>,
    /// Expert gate projections, `E` of `F x m`.
    pub gate: Stacked<'a>,
    /// Expert up projections, `E` of `F x m`.
    pub up: Stacked<'a>,
    /// Expert down projections, `E` of `m x F`.
    pub down: Stacked<'a>,
    /// Optional shared expert on the full token.
    pub shared: Option<SwiGlu<'a>>,
}

/// The feed-forward half of a layer.
// Layers live in a fixed-capacity table without a heap, so the MoE variant is stored inline.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy)]
pub enum Ffn<'a> {
    /// Dense SwiGLU.
    Dense(SwiGlu<'a>),
    /// MH-MoE.
    Moe(Moe<'a>),
}

/// One transformer layer.
#[derive(Debug, Clone, Copy)]
pub struct Layer<'a> {
    /// RMSNorm before attention.
    pub attn_norm: Vector<'a>,
    /// Query projection.
    pub wq: Matrix<'a>,
    /// Key projection.
    pub wk: Matrix<'a>,
    /// Value projection.
    pub wv: Matrix<'a>,
    /// Output projection.
    pub wo: Matrix<'a>,
    /// RMSNorm before the feed-forward block.
    pub ffn_norm: Vector<'a>,
    /// Feed-forward block.
    pub ffn: Ffn<'a>,
}

/// A loaded model. `MAX_LAYERS` is the capacity of the layer table (the table lives inside the
/// struct, so firmware can put a `Model` in a static); loading a model with more layers fails.
#[derive(Debug, Clone)]
pub struct Model<'a, const MAX_LAYERS: usize = 64> {
    /// Hyper-parameters.
    pub config: Config,
    /// Token embedding, `V x d`.
    pub token_embd: Matrix<'a>,
    /// Final RMSNorm.
    pub output_norm: Vector<'a>,
    /// Output projection, `V x d` (the token embedding when tied).
    pub output: Matrix<'a>,
    /// True when the output projection is the token embedding.
    pub tied_output: bool,
    layers: heapless::Vec<Layer<'a>, MAX_LAYERS>,
    file: Gguf<'a>,
}

struct Loader<'f, 'a> {
    file: &'f Gguf<'a>,
}

impl<'a> Loader<'_, 'a> {
    /// Finds `tname`, failing if it is missing or appears twice.
    fn find(&self, tname: &str) -> Result<Option<TensorInfo<'a>>> {
        let mut found = None;
        for t in self.file.tensors() {
            if t.name == tname {
                if found.is_some() {
                    return Err(Error::DuplicateTensor {
                        tensor: name(tname),
                    });
                }
                found = Some(t);
            }
        }
        Ok(found)
    }

    fn require(&self, tname: &str) -> Result<TensorInfo<'a>> {
        self.find(tname)?.ok_or_else(|| Error::MissingTensor {
            tensor: name(tname),
        })
    }

    fn check_dims(t: &TensorInfo<'a>, expected: [usize; 3]) -> Result<()> {
        let want = [
            expected[0] as u64,
            expected[1] as u64,
            expected[2] as u64,
            1,
        ];
        if t.dims != want {
            return Err(Error::WrongShape {
                tensor: name(t.name),
                expected: [want[0], want[1], want[2]],
                found: [t.dims[0], t.dims[1], t.dims[2]],
            });
        }
        Ok(())
    }

    fn vector(&self, tname: &str, n: usize) -> Result<Vector<'a>> {
        let t = self.require(tname)?;
        Self::check_dims(&t, [n, 1, 1])?;
        if t.ty != GgmlType::F32 {
            return Err(Error::WrongTensorType {
                tensor: name(tname),
                expected: "F32 (1-D tensors)",
            });
        }
        Ok(t.data)
    }

    fn matrix_of(t: &TensorInfo<'a>, rows: usize, cols: usize) -> Result<Matrix<'a>> {
        Self::check_dims(t, [cols, rows, 1])?;
        Ok(Matrix {
            ty: t.ty,
            rows,
            cols,
            data: t.data,
        })
    }

    fn matrix(&self, tname: &str, rows: usize, cols: usize) -> Result<Matrix<'a>> {
        Self::matrix_of(&self.require(tname)?, rows, cols)
    }

    fn stacked(&self, tname: &str, n: usize, rows: usize, cols: usize) -> Result<Stacked<'a>> {
        let t = self.require(tname)?;
        Self::check_dims(&t, [cols, rows, n])?;
        Ok(Stacked {
            n,
            all: Matrix {
                ty: t.ty,
                rows,
                cols,
                data: t.data,
            },
        })
    }
}

/// `blk.{i}.{suffix}` as a fixed-capacity string.
fn blk(i: usize, suffix: &str) -> Name {
    let mut s = Name::new();
    // Layer numbers and the suffixes used here fit in 64 bytes.
    let _ = write!(s, "blk.{i}.{suffix}");
    s
}

impl<'a, const MAX_LAYERS: usize> Model<'a, MAX_LAYERS> {
    /// Parses `bytes` as GGUF and loads the model.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self> {
        Self::from_gguf(Gguf::parse(bytes)?)
    }

    /// Loads the model from a parsed GGUF file, checking every tensor's presence, uniqueness,
    /// shape and type against the configuration.
    pub fn from_gguf(file: Gguf<'a>) -> Result<Self> {
        let config = Config::from_gguf(&file)?;
        let c = &config;
        if c.n_layers > MAX_LAYERS {
            return Err(Error::InvalidConfig {
                reason: "more layers than the Model's MAX_LAYERS capacity",
            });
        }
        let ld = Loader { file: &file };
        let (d, v) = (c.dim, c.vocab_size);
        let token_embd = ld.matrix("token_embd.weight", v, d)?;
        let output_norm = ld.vector("output_norm.weight", d)?;
        let (output, tied_output) = match ld.find("output.weight")? {
            Some(t) => (Loader::matrix_of(&t, v, d)?, false),
            None => (token_embd, true),
        };
        let (qd, kvd, m) = (c.n_heads * c.head_dim, c.kv_dim(), c.sub_dim());
        let mut layers = heapless::Vec::new();
        for i in 0..c.n_layers {
            let ffn = if c.is_moe_layer(i) {
                let (e, f) = (c.n_experts, c.expert_ff_dim);
                let (head, merge) = if c.moe_heads > 1 {
                    (
                        Some((
                            ld.matrix(&blk(i, "ffn_head.weight"), d, d)?,
                            ld.vector(&blk(i, "ffn_head.bias"), d)?,
                        )),
                        Some((
                            ld.matrix(&blk(i, "ffn_merge.weight"), d, d)?,
                            ld.vector(&blk(i, "ffn_merge.bias"), d)?,
                        )),
                    )
                } else {
                    (None, None)
                };
                let router = match c.router {
                    RouterKind::Softmax => {
                        Router::Softmax(ld.matrix(&blk(i, "ffn_gate_inp.weight"), e, m)?)
                    }
                    RouterKind::XMoe => {
                        let red = ld.require(&blk(i, "ffn_gate_inp_red.weight"))?;
                        let r = usize::try_from(red.dims[1]).unwrap_or(usize::MAX);
                        if r > d {
                            return Err(Error::InvalidConfig {
                                reason: "x-moe reduction width must not exceed embedding_length",
                            });
                        }
                        Router::XMoe {
                            reduce: Loader::matrix_of(&red, r, m)?,
                            experts: ld.matrix(&blk(i, "ffn_gate_inp.weight"), e, r)?,
                        }
                    }
                };
                let shared = if c.shared_ff_dim > 0 {
                    let fs = c.shared_ff_dim;
                    Some(SwiGlu {
                        gate: ld.matrix(&blk(i, "ffn_gate_shexp.weight"), fs, d)?,
                        up: ld.matrix(&blk(i, "ffn_up_shexp.weight"), fs, d)?,
                        down: ld.matrix(&blk(i, "ffn_down_shexp.weight"), d, fs)?,
                    })
                } else {
                    None
                };
                Ffn::Moe(Moe {
                    head,
                    merge,
                    router,
                    gate: ld.stacked(&blk(i, "ffn_gate_exps.weight"), e, f, m)?,
                    up: ld.stacked(&blk(i, "ffn_up_exps.weight"), e, f, m)?,
                    down: ld.stacked(&blk(i, "ffn_down_exps.weight"), e, m, f)?,
                    shared,
                })
            } else {
                let ff = c.ff_dim;
                Ffn::Dense(SwiGlu {
                    gate: ld.matrix(&blk(i, "ffn_gate.weight"), ff, d)?,
                    up: ld.matrix(&blk(i, "ffn_up.weight"), ff, d)?,
                    down: ld.matrix(&blk(i, "ffn_down.weight"), d, ff)?,
                })
            };
            let layer = Layer {
                attn_norm: ld.vector(&blk(i, "attn_norm.weight"), d)?,
                wq: ld.matrix(&blk(i, "attn_q.weight"), qd, d)?,
                wk: ld.matrix(&blk(i, "attn_k.weight"), kvd, d)?,
                wv: ld.matrix(&blk(i, "attn_v.weight"), kvd, d)?,
                wo: ld.matrix(&blk(i, "attn_output.weight"), d, qd)?,
                ffn_norm: ld.vector(&blk(i, "ffn_norm.weight"), d)?,
                ffn,
            };
            // Capacity was checked against n_layers above.
            let _ = layers.push(layer);
        }
        Ok(Model {
            config,
            token_embd,
            output_norm,
            output,
            tied_output,
            layers,
            file,
        })
    }

    /// The layers.
    pub fn layers(&self) -> &[Layer<'a>] {
        &self.layers
    }

    /// The parsed file (for metadata such as the tokenizer).
    pub fn gguf(&self) -> &Gguf<'a> {
        &self.file
    }
}
