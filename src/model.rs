//! The model: configuration plus views of every weight, borrowed from the GGUF bytes.
//!
//! A [`Model`] is small (a few hundred bytes, whatever the number of layers): it keeps the
//! configuration, the parsed file and the three tensors outside the layers. A layer's tensors
//! are looked up in the file's tensor table when they are needed: [`Model::layers`] walks the
//! table once, in file order, and yields each [`Layer`] as a set of views. For that walk to
//! be one pass, the tensors of a layer are contiguous in the table and the layers come in
//! increasing order (FORMAT.md, "Tensor order"); [`Model::from_bytes`] checks this along with
//! every tensor's presence, uniqueness, shape and type, so the walk at run time cannot fail.

use core::fmt::Write;

use crate::config::{Config, RouterKind};
use crate::error::{name, truncated, Error, Name, Result};
use crate::gguf::{Gguf, TensorInfo, TensorIter, ValueType, MAX_DIMS};
use crate::quant::{dequantize_row, GgmlType, TensorType};

/// A weight matrix `rows x cols` (GGUF dims `[cols, rows]`), stored row-major in `ty`, or in
/// the tiled layout ([`crate::tile`]: every full band of 16 rows tiled, the rows after the last
/// one row-major).
///
/// The fields are private: a `Matrix` always holds exactly `rows * ty.row_bytes(cols)` bytes,
/// with `cols` a whole number of blocks, so the kernels never see a short or ragged matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matrix<'a> {
    pub(crate) ty: GgmlType,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) data: &'a [u8],
    pub(crate) tiled: bool,
}

impl<'a> Matrix<'a> {
    /// A `rows x cols` matrix of type `ty` over `data`.
    ///
    /// # Errors
    /// [`Error::RowNotBlockAligned`] if `cols` is not a multiple of the type's block size,
    /// [`Error::Overflow`] if the size overflows, [`Error::BufferTooSmall`] if `data` is not
    /// exactly `rows * ty.row_bytes(cols)` bytes long (a longer slice is refused too, as a sign
    /// of a wrong shape).
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self> {
        if !cols.is_multiple_of(ty.block_size()) {
            return Err(Error::RowNotBlockAligned {
                tensor: name("matrix"),
                ne0: cols as u64,
                block: ty.block_size() as u64,
            });
        }
        let bytes = (cols / ty.block_size())
            .checked_mul(ty.type_size())
            .and_then(|rb| rb.checked_mul(rows))
            .ok_or(Error::Overflow {
                what: "matrix size",
                offset: 0,
            })?;
        if data.len() != bytes {
            return Err(Error::BufferTooSmall {
                what: "matrix data (must be exactly rows x row bytes)",
                needed: bytes,
                got: data.len(),
            });
        }
        Ok(Matrix {
            ty,
            rows,
            cols,
            data,
            tiled: false,
        })
    }

    /// A `rows x cols` matrix of type `ty` over `data` in the tiled layout ([`crate::tile`]).
    ///
    /// # Errors
    /// Those of [`Matrix::new`], and [`Error::WrongTensorType`] for a type that has no tiled
    /// layout (only F16, Q8_0 and Q4_0 have).
    pub fn new_tiled(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self> {
        if !crate::tile::is_tileable(ty) {
            return Err(Error::WrongTensorType {
                tensor: name("matrix"),
                expected: "F16, Q8_0 or Q4_0 (the types with a tiled layout)",
            });
        }
        Ok(Matrix {
            tiled: true,
            ..Matrix::new(ty, rows, cols, data)?
        })
    }

    /// Whether the matrix is in the tiled layout.
    pub fn is_tiled(&self) -> bool {
        self.tiled
    }

    /// Rows in tiled bands (0 for a row-major matrix): the first `tiled_rows()` rows are in
    /// bands of [`crate::tile::TILE_ROWS`], the rest row-major.
    pub fn tiled_rows(&self) -> usize {
        if self.tiled {
            self.rows - self.rows % crate::tile::TILE_ROWS
        } else {
            0
        }
    }

    /// Units `u0..u1` of band `b` of a tiled matrix: the 16 rows' units, `16 * unit` bytes each
    /// ([`crate::tile::unit_offset`]). Empty if out of range or if the units are not stored
    /// together (they cross a piece: see [`crate::tile::pieces`]).
    pub fn band_units(&self, b: usize, u0: usize, u1: usize) -> &'a [u8] {
        let (units, bands) = (
            self.row_bytes() / self.ty.type_size().max(1),
            self.tiled_rows() / crate::tile::TILE_ROWS,
        );
        let piece = crate::tile::piece_units(self.ty, units);
        if b >= bands || u0 >= u1 || u1 > units || u0 / piece != (u1 - 1) / piece {
            return &[];
        }
        let ub = self.ty.type_size() * crate::tile::TILE_ROWS;
        let at = crate::tile::unit_offset(self.ty, units, bands, b, u0);
        self.data.get(at..at + (u1 - u0) * ub).unwrap_or(&[])
    }

    /// The row ranges a product may be split at: multiples of this (16 for a tiled matrix, or a
    /// panel of 128 rows when its bands are in pieces; 1 for a row-major one).
    pub fn row_align(&self) -> usize {
        let units = self.row_bytes() / self.ty.type_size().max(1);
        match (self.tiled, crate::tile::has_pieces(self.ty, units)) {
            (false, _) => 1,
            (true, false) => crate::tile::TILE_ROWS,
            (true, true) => crate::tile::TILE_ROWS * crate::tile::PANEL_BANDS,
        }
    }

    /// Element type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Output width (number of rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input width (elements per row).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The bytes, `rows * row_bytes()` of them.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols)
    }
    /// The bytes of row `r` (empty if out of range, or in a tiled band: see
    /// [`Matrix::dequantize_row`] and [`crate::tile::unit_of`]).
    pub fn row(&self, r: usize) -> &'a [u8] {
        if r < self.tiled_rows() {
            return &[];
        }
        let rb = self.row_bytes();
        r.checked_mul(rb)
            .and_then(|start| self.data.get(start..start.checked_add(rb)?))
            .unwrap_or(&[])
    }

    /// Rows `r0..r1` as a matrix of their own (clamped to the rows there are). For a tiled
    /// matrix the range must not cut a band or panel (`r0` a multiple of [`Matrix::row_align`],
    /// and `r1` too unless it is past the last band; the forward pass splits so): otherwise the
    /// result has no data, and its rows read as empty.
    pub fn rows_range(&self, r0: usize, r1: usize) -> Matrix<'a> {
        let r1 = r1.min(self.rows);
        let r0 = r0.min(r1);
        let rb = self.row_bytes();
        let cuts = |r: usize| !r.is_multiple_of(self.row_align()) && r < self.tiled_rows();
        let misaligned = self.tiled && (cuts(r0) || cuts(r1));
        Matrix {
            rows: r1 - r0,
            data: match misaligned {
                false => self.data.get(r0 * rb..r1 * rb).unwrap_or(&[]),
                true => &[],
            },
            ..*self
        }
    }

    /// Dequantizes row `r` into `out[..cols]`, in either layout. A shorter `out` gets the whole
    /// blocks that fit; an out-of-range row writes nothing.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let n = self.cols.min(out.len());
        if r >= self.tiled_rows() {
            return dequantize_row(self.ty, self.row(r), &mut out[..n]);
        }
        let (b, rb) = (r / crate::tile::TILE_ROWS, r % crate::tile::TILE_ROWS);
        let (bs, ts) = (self.ty.block_size(), self.ty.type_size());
        for (u, o) in out[..n].chunks_exact_mut(bs).enumerate() {
            let unit = crate::tile::unit_of(self.ty, self.band_units(b, u, u + 1), rb, 0);
            dequantize_row(self.ty, &unit[..ts], o);
        }
    }
}

/// `n` matrices of equal shape stored one after the other (GGUF dims `[cols, rows, n]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stacked<'a> {
    /// Number of matrices.
    pub(crate) n: usize,
    /// Shape and type of each; `data` covers all of them.
    pub(crate) all: Matrix<'a>,
}

impl<'a> Stacked<'a> {
    /// Number of matrices.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when there are no matrices.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Element type of every matrix.
    pub fn ty(&self) -> GgmlType {
        self.all.ty
    }

    /// Bytes of all matrices together.
    pub fn data(&self) -> &'a [u8] {
        self.all.data
    }

    /// Matrix `e` (with no rows if out of range).
    pub fn get(&self, e: usize) -> Matrix<'a> {
        let bytes = self.all.rows.saturating_mul(self.all.row_bytes());
        let data = e
            .checked_mul(bytes)
            .and_then(|start| self.all.data.get(start..start.checked_add(bytes)?));
        match data {
            Some(data) if e < self.n => Matrix { data, ..self.all },
            _ => Matrix {
                rows: 0,
                data: &[],
                ..self.all
            },
        }
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

// At most 1 KiB on microcontrollers, whatever the model (a test checks 64-bit targets).
#[cfg(target_pointer_width = "32")]
const _: () = assert!(core::mem::size_of::<Model<'static>>() <= 1024);

/// A loaded model: its configuration and views of its weights in the GGUF bytes.
///
/// Small and of one type whatever the model (no capacity parameter): the layers are read from
/// the file's tensor table on demand ([`Model::layers`]). See the module docs.
#[derive(Debug, Clone)]
pub struct Model<'a> {
    config: Config,
    token_embd: Matrix<'a>,
    output_norm: Vector<'a>,
    output: Matrix<'a>,
    tied_output: bool,
    /// The tensor table from the first layer's first tensor on.
    first_layer: TensorIter<'a>,
    /// Widest X-MoE reduction over the layers (0 for softmax routers).
    router_red: usize,
    file: Gguf<'a>,
}

impl<'a> Model<'a> {
    /// Parses `bytes` as GGUF and loads the model.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self> {
        Self::from_gguf(Gguf::parse(bytes)?)
    }

    /// Loads the model from a parsed GGUF file, checking every tensor's presence, uniqueness,
    /// shape and type against the configuration, and the order of the tensor table (module
    /// docs). Nothing is copied: the model borrows the file's bytes.
    pub fn from_gguf(file: Gguf<'a>) -> Result<Self> {
        // Every tensor must be of a type the engine computes with; the error names them all.
        let counts = file.type_counts();
        let types = counts.unsupported();
        if !types.is_empty() {
            let (mut tensors, mut first) = (0, usize::MAX);
            for t in types.iter() {
                tensors += counts.count(t);
                first = first.min(counts.first(t).unwrap_or(usize::MAX));
            }
            let t = file.tensors().nth(first);
            return Err(Error::UnsupportedTensorTypes {
                architecture: truncated(file.architecture().unwrap_or("")),
                types,
                tensors,
                first: name(t.map_or("", |t| t.name)),
                first_type: t.map_or(TensorType::F32, |t| t.ty),
            });
        }
        let config = Config::from_gguf(&file)?;
        let c = &config;
        // The tokenizer, if the file has one, has a row of the embedding for every token
        // (FORMAT.md, "Tokenizer rules"): a token without one would fail mid-generation.
        if let Some(tokens) = file.get("tokenizer.ggml.tokens") {
            let n = tokens
                .as_array()
                .filter(|a| a.elem_type() == ValueType::String)
                .ok_or_else(|| Error::BadKey {
                    key: name("tokenizer.ggml.tokens"),
                    expected: "an array of strings",
                })?
                .len();
            if n != c.vocab_size {
                return Err(Error::VocabMismatch {
                    tokenizer: n,
                    embedding: c.vocab_size,
                });
            }
        }
        let (d, v) = (c.dim, c.vocab_size);
        let named =
            |tname| -> Result<_> { Ok((Entry::of(&require(&file, tname)?)?, Label::Str(tname))) };
        let (e, label) = named("token_embd.weight")?;
        let token_embd = matrix_of(&e, label, v, d)?;
        let (e, label) = named("output_norm.weight")?;
        let output_norm = vector_of(&e, label, d)?;
        let (output, tied_output) = match file.tensor("output.weight") {
            Some(t) => (matrix_of(&Entry::of(&t)?, Label::Str(t.name), v, d)?, false),
            None => (token_embd, true),
        };
        // Walk every layer once, with all the checks; the walk at run time repeats it.
        let mut walk = LayerWalk {
            tensors: file.tensors(),
            pending: None,
            next: 0,
        };
        let mut router_red = 0;
        while walk.next < c.n_layers {
            let layer = walk.layer(c).map_err(|e| match e {
                // Present, but not in its layer's run.
                Error::MissingTensor { tensor } if file.tensor(&tensor).is_some() => {
                    Error::TensorOutOfOrder { tensor }
                }
                e => e,
            })?;
            if let Ffn::Moe(Moe {
                router: Router::XMoe { reduce, .. },
                ..
            }) = &layer.ffn
            {
                router_red = router_red.max(reduce.rows);
            }
        }
        // No tensor of a layer may come after the last layer's run (copies were refused by
        // `Gguf::parse`); tensors of layers the configuration does not have are ignored.
        for t in walk.pending.into_iter().chain(walk.tensors) {
            if let Some((j, _)) = parse_blk(t.name) {
                if j < c.n_layers {
                    return Err(Error::TensorOutOfOrder {
                        tensor: name(t.name),
                    });
                }
            }
        }
        Ok(Model {
            config,
            token_embd,
            output_norm,
            output,
            tied_output,
            first_layer: first_layer(&file),
            router_red,
            file,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Token embedding, `V x d`.
    pub fn token_embd(&self) -> &Matrix<'a> {
        &self.token_embd
    }

    /// Final RMSNorm weights (`d` little-endian f32).
    pub fn output_norm(&self) -> Vector<'a> {
        self.output_norm
    }

    /// Output projection, `V x d` (the token embedding when tied).
    pub fn output(&self) -> &Matrix<'a> {
        &self.output
    }

    /// True when the output projection is the token embedding.
    pub fn tied_output(&self) -> bool {
        self.tied_output
    }

    /// The layers in order, each looked up in the tensor table as the walk reaches it (one
    /// pass over the table for all of them).
    pub fn layers(&self) -> Layers<'_, 'a> {
        Layers {
            config: &self.config,
            walk: LayerWalk {
                tensors: self.first_layer.clone(),
                pending: None,
                next: 0,
            },
        }
    }

    /// Layer `i` (a walk of the table up to it), or `None` past the last layer.
    pub fn layer(&self, i: usize) -> Option<Layer<'a>> {
        self.layers().nth(i)
    }

    /// The widest X-MoE router reduction of any layer (0 when the routers are softmax).
    pub(crate) fn router_red_width(&self) -> usize {
        self.router_red
    }

    /// The hyper-parameters that size a state, for [`crate::State::bytes_for`].
    pub fn shape(&self) -> crate::state::Shape {
        crate::state::Shape::of(&self.config, self.router_red)
    }

    /// The parsed file (for metadata such as the tokenizer).
    pub fn gguf(&self) -> &Gguf<'a> {
        &self.file
    }
}

/// The layers of a [`Model`], in order: see [`Model::layers`].
#[derive(Debug, Clone)]
pub struct Layers<'m, 'a> {
    config: &'m Config,
    walk: LayerWalk<'a>,
}

impl<'a> Iterator for Layers<'_, 'a> {
    type Item = Layer<'a>;

    fn next(&mut self) -> Option<Layer<'a>> {
        if self.walk.next >= self.config.n_layers {
            return None;
        }
        // The loader made this same walk with the same checks on the same bytes, so it cannot
        // fail here; if it somehow did, the iteration ends (and the forward pass, which counts
        // the layers, reports it).
        match self.walk.layer(self.config) {
            Ok(layer) => Some(layer),
            Err(_) => {
                self.walk.next = usize::MAX;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.config.n_layers.saturating_sub(self.walk.next);
        (0, Some(left))
    }
}

/// A position in the tensor table and the next layer to read from it.
#[derive(Debug, Clone)]
struct LayerWalk<'a> {
    tensors: TensorIter<'a>,
    /// The tensor read last that did not belong to the layer read last.
    pending: Option<TensorInfo<'a>>,
    next: usize,
}

/// The tensor a layer can have, by name suffix (`blk.{i}.{suffix}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    AttnNorm,
    Q,
    K,
    V,
    O,
    FfnNorm,
    Gate,
    Up,
    Down,
    Head,
    HeadBias,
    Merge,
    MergeBias,
    RouterW,
    RouterRed,
    GateExps,
    UpExps,
    DownExps,
    GateShared,
    UpShared,
    DownShared,
}

impl Slot {
    /// The slot of a name suffix.
    fn of(suffix: &str) -> Option<Slot> {
        use Slot::*;
        Some(match suffix {
            "attn_norm.weight" => AttnNorm,
            "attn_q.weight" => Q,
            "attn_k.weight" => K,
            "attn_v.weight" => V,
            "attn_output.weight" => O,
            "ffn_norm.weight" => FfnNorm,
            "ffn_gate.weight" => Gate,
            "ffn_up.weight" => Up,
            "ffn_down.weight" => Down,
            "ffn_head.weight" => Head,
            "ffn_head.bias" => HeadBias,
            "ffn_merge.weight" => Merge,
            "ffn_merge.bias" => MergeBias,
            "ffn_gate_inp.weight" => RouterW,
            "ffn_gate_inp_red.weight" => RouterRed,
            "ffn_gate_exps.weight" => GateExps,
            "ffn_up_exps.weight" => UpExps,
            "ffn_down_exps.weight" => DownExps,
            "ffn_gate_shexp.weight" => GateShared,
            "ffn_up_shexp.weight" => UpShared,
            "ffn_down_shexp.weight" => DownShared,
            _ => return None,
        })
    }

    /// The name suffix of the slot.
    fn suffix(self) -> &'static str {
        use Slot::*;
        match self {
            AttnNorm => "attn_norm.weight",
            Q => "attn_q.weight",
            K => "attn_k.weight",
            V => "attn_v.weight",
            O => "attn_output.weight",
            FfnNorm => "ffn_norm.weight",
            Gate => "ffn_gate.weight",
            Up => "ffn_up.weight",
            Down => "ffn_down.weight",
            Head => "ffn_head.weight",
            HeadBias => "ffn_head.bias",
            Merge => "ffn_merge.weight",
            MergeBias => "ffn_merge.bias",
            RouterW => "ffn_gate_inp.weight",
            RouterRed => "ffn_gate_inp_red.weight",
            GateExps => "ffn_gate_exps.weight",
            UpExps => "ffn_up_exps.weight",
            DownExps => "ffn_down_exps.weight",
            GateShared => "ffn_gate_shexp.weight",
            UpShared => "ffn_up_shexp.weight",
            DownShared => "ffn_down_shexp.weight",
        }
    }
}

/// Number of [`Slot`]s.
const SLOTS: usize = 21;

/// `(i, suffix)` for a name `blk.{i}.{suffix}` with `i` in canonical decimal (no leading zero).
fn parse_blk(tname: &str) -> Option<(usize, &str)> {
    let rest = tname.strip_prefix("blk.")?.as_bytes();
    let mut i: usize = 0;
    for (at, &b) in rest.iter().enumerate() {
        match b {
            b'.' if at > 0 => return Some((i, tname.get(4 + at + 1..)?)),
            // No leading zero, so that each layer has one spelling.
            b'0'..=b'9' if !(at == 1 && rest[0] == b'0') => {
                i = i.checked_mul(10)?.checked_add((b - b'0') as usize)?;
            }
            _ => return None,
        }
    }
    None
}

/// What a layer needs of one tensor: its type, dimensions and bytes.
#[derive(Clone, Copy)]
struct Entry<'a> {
    ty: GgmlType,
    tiled: bool,
    dims: [u64; MAX_DIMS],
    data: &'a [u8],
}

/// The tensors found for one layer, by [`Slot`].
struct Found<'a>([Option<Entry<'a>>; SLOTS]);

impl<'a> Found<'a> {
    /// The tensor of `slot` in layer `i`.
    fn get(&self, i: usize, slot: Slot) -> Result<Entry<'a>> {
        self.0[slot as usize].ok_or_else(|| Error::MissingTensor {
            tensor: blk(i, slot.suffix()),
        })
    }

    fn matrix(&self, i: usize, slot: Slot, rows: usize, cols: usize) -> Result<Matrix<'a>> {
        matrix_of(&self.get(i, slot)?, Label::Blk(i, slot), rows, cols)
    }

    fn vector(&self, i: usize, slot: Slot, n: usize) -> Result<Vector<'a>> {
        vector_of(&self.get(i, slot)?, Label::Blk(i, slot), n)
    }

    fn swiglu(&self, i: usize, s: [Slot; 3], hidden: usize, d: usize) -> Result<SwiGlu<'a>> {
        Ok(SwiGlu {
            gate: self.matrix(i, s[0], hidden, d)?,
            up: self.matrix(i, s[1], hidden, d)?,
            down: self.matrix(i, s[2], d, hidden)?,
        })
    }

    fn stacked(
        &self,
        i: usize,
        slot: Slot,
        n: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Stacked<'a>> {
        let t = self.get(i, slot)?;
        check_dims(&t, Label::Blk(i, slot), [cols, rows, n])?;
        Ok(Stacked {
            n,
            all: Matrix {
                ty: t.ty,
                rows,
                cols,
                data: t.data,
                tiled: t.tiled,
            },
        })
    }

    /// The layer these tensors make, checked against the configuration.
    fn layer(&self, c: &Config, i: usize) -> Result<Layer<'a>> {
        let d = c.dim;
        let (qd, kvd, m) = (c.n_heads * c.head_dim, c.kv_dim(), c.sub_dim());
        let ffn = if c.is_moe_layer(i) {
            let (e, f) = (c.n_experts, c.expert_ff_dim);
            let linear = |w: Slot, b: Slot| -> Result<_> {
                Ok((self.matrix(i, w, d, d)?, self.vector(i, b, d)?))
            };
            let (head, merge) = if c.moe_heads > 1 {
                (
                    Some(linear(Slot::Head, Slot::HeadBias)?),
                    Some(linear(Slot::Merge, Slot::MergeBias)?),
                )
            } else {
                (None, None)
            };
            let router = match c.router {
                RouterKind::Softmax => Router::Softmax(self.matrix(i, Slot::RouterW, e, m)?),
                RouterKind::XMoe => {
                    let red = self.get(i, Slot::RouterRed)?;
                    let r = usize::try_from(red.dims[1]).unwrap_or(usize::MAX);
                    if r > d {
                        return Err(Error::InvalidConfig {
                            reason: "x-moe reduction width must not exceed embedding_length",
                        });
                    }
                    Router::XMoe {
                        reduce: matrix_of(&red, Label::Blk(i, Slot::RouterRed), r, m)?,
                        experts: self.matrix(i, Slot::RouterW, e, r)?,
                    }
                }
            };
            let shared = if c.shared_ff_dim > 0 {
                let s = [Slot::GateShared, Slot::UpShared, Slot::DownShared];
                Some(self.swiglu(i, s, c.shared_ff_dim, d)?)
            } else {
                None
            };
            Ffn::Moe(Moe {
                head,
                merge,
                router,
                gate: self.stacked(i, Slot::GateExps, e, f, m)?,
                up: self.stacked(i, Slot::UpExps, e, f, m)?,
                down: self.stacked(i, Slot::DownExps, e, m, f)?,
                shared,
            })
        } else {
            Ffn::Dense(self.swiglu(i, [Slot::Gate, Slot::Up, Slot::Down], c.ff_dim, d)?)
        };
        Ok(Layer {
            attn_norm: self.vector(i, Slot::AttnNorm, d)?,
            wq: self.matrix(i, Slot::Q, qd, d)?,
            wk: self.matrix(i, Slot::K, kvd, d)?,
            wv: self.matrix(i, Slot::V, kvd, d)?,
            wo: self.matrix(i, Slot::O, d, qd)?,
            ffn_norm: self.vector(i, Slot::FfnNorm, d)?,
            ffn,
        })
    }
}

impl<'a> LayerWalk<'a> {
    /// Reads layer `self.next`: skips tensors outside the layers, then takes the run of
    /// `blk.{i}.*` tensors, and keeps the first tensor after the run for the next layer.
    fn layer(&mut self, c: &Config) -> Result<Layer<'a>> {
        let i = self.next;
        let mut found = Found([None; SLOTS]);
        let mut started = false;
        while let Some(t) = self.pending.take().or_else(|| self.tensors.next()) {
            match parse_blk(t.name) {
                Some((j, suffix)) if j == i => {
                    started = true;
                    // Unknown suffixes (tensors this engine does not use) are skipped.
                    // (`Gguf::parse` rejected files with two tensors of one name.)
                    if let Some(slot) = Slot::of(suffix) {
                        found.0[slot as usize] = Some(Entry::of(&t)?);
                    }
                }
                // A tensor of an earlier layer: that layer's run is over, so it is out of order.
                Some((j, _)) if j < i => {
                    return Err(Error::TensorOutOfOrder {
                        tensor: name(t.name),
                    });
                }
                // A later layer ends this run (or shows that layer i has no tensors at all).
                Some((j, _)) if j < c.n_layers => {
                    self.pending = Some(t);
                    break;
                }
                // Tensors outside the configured layers end the run, or are skipped before it.
                _ => {
                    if started {
                        self.pending = Some(t);
                        break;
                    }
                }
            }
        }
        self.next = i + 1;
        found.layer(c, i)
    }
}

/// The tensor table from its first layer tensor on (where the walks start).
fn first_layer<'a>(file: &Gguf<'a>) -> TensorIter<'a> {
    let mut at = file.tensors();
    loop {
        let before = at.clone();
        match at.next() {
            Some(t) if parse_blk(t.name).is_none() => {}
            _ => return before,
        }
    }
}

/// `blk.{i}.{suffix}` as a fixed-capacity string.
fn blk(i: usize, suffix: &str) -> Name {
    let mut s = Name::new();
    // Layer numbers and the suffixes used here fit in 64 bytes.
    let _ = write!(s, "blk.{i}.{suffix}");
    s
}

/// The tensor called `tname` (`Gguf::parse` rejected files with two of one name).
fn require<'a>(file: &Gguf<'a>, tname: &str) -> Result<TensorInfo<'a>> {
    file.tensor(tname).ok_or_else(|| Error::MissingTensor {
        tensor: name(tname),
    })
}

/// How a tensor is named in an error message (built only when there is an error).
#[derive(Clone, Copy)]
enum Label<'n> {
    Str(&'n str),
    Blk(usize, Slot),
}

impl Label<'_> {
    fn name(self) -> Name {
        match self {
            Label::Str(s) => name(s),
            Label::Blk(i, slot) => blk(i, slot.suffix()),
        }
    }
}

impl<'a> Entry<'a> {
    /// The entry of `t`, whose type the engine must compute with (`Model::from_gguf` checked
    /// every tensor's type first).
    fn of(t: &TensorInfo<'a>) -> Result<Self> {
        let ty = t.ty.computed().ok_or_else(|| Error::WrongTensorType {
            tensor: name(t.name),
            expected: "a type the engine computes with (F32, F16, BF16, Q8_0, Q4_0)",
        })?;
        Ok(Entry {
            ty,
            tiled: t.tiled,
            dims: t.dims,
            data: t.data,
        })
    }
}

fn check_dims(e: &Entry<'_>, label: Label<'_>, expected: [usize; 3]) -> Result<()> {
    let want = [
        expected[0] as u64,
        expected[1] as u64,
        expected[2] as u64,
        1,
    ];
    if e.dims != want {
        return Err(Error::WrongShape {
            tensor: label.name(),
            expected: [want[0], want[1], want[2]],
            found: [e.dims[0], e.dims[1], e.dims[2]],
        });
    }
    Ok(())
}

fn vector_of<'a>(e: &Entry<'a>, label: Label<'_>, n: usize) -> Result<Vector<'a>> {
    check_dims(e, label, [n, 1, 1])?;
    if e.ty != GgmlType::F32 {
        return Err(Error::WrongTensorType {
            tensor: label.name(),
            expected: "F32 (1-D tensors)",
        });
    }
    Ok(e.data)
}

fn matrix_of<'a>(e: &Entry<'a>, label: Label<'_>, rows: usize, cols: usize) -> Result<Matrix<'a>> {
    check_dims(e, label, [cols, rows, 1])?;
    Ok(Matrix {
        ty: e.ty,
        rows,
        cols,
        data: e.data,
        tiled: e.tiled,
    })
}
