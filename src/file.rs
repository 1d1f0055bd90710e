//! Desktop conveniences (`std` feature): loading model files and heap-backed state buffers.

use std::path::Path;
use std::vec::Vec;

use crate::error::{Error, Result};
use crate::kernels::Isa;
use crate::model::Model;
use crate::quant::GgmlType;
use crate::state::{State, StateOptions};

/// The bytes of a model file: read into memory or memory-mapped.
#[derive(Debug)]
pub enum ModelBytes {
    /// A heap buffer (e.g. bytes made in memory).
    Owned(Vec<u8>),
    /// Memory-mapped.
    Mapped(memmap2::Mmap),
    /// Read into anonymous memory that asked the OS for huge pages ([`ModelBytes::read`]).
    Loaded(memmap2::Mmap),
}

impl ModelBytes {
    /// Reads the whole file into memory, with the layout [`Layout::Auto`] picks: see
    /// [`ModelBytes::read_with`].
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        Self::read_with(path, Layout::Auto)
    }

    /// Reads the whole file into memory and lays its matrices out as `layout` says
    /// ([`tile_in_place`]; the result is the same bits either way, only the speed differs).
    ///
    /// On Linux the memory asks for transparent huge pages (`madvise(MADV_HUGEPAGE)`):
    /// decoding streams every active weight once per token, and with 4 KiB pages the hardware
    /// prefetchers stop at every page boundary and the TLB misses on every page. Where huge
    /// pages are not available this is an ordinary read.
    pub fn read_with(path: impl AsRef<Path>, layout: Layout) -> Result<Self> {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let len = usize::try_from(file.metadata()?.len()).map_err(|_| Error::Overflow {
            what: "file size",
            offset: 0,
        })?;
        if len == 0 {
            return Ok(ModelBytes::Owned(Vec::new()));
        }
        let mut mem = huge_page_memory(len)?;
        file.read_exact(&mut mem)?;
        let mut rest = [0u8; 1];
        if file.read(&mut rest)? != 0 {
            return Err(Error::Io {
                message: crate::error::name("the file grew while it was read"),
            });
        }
        // A file that does not parse is left as it is: loading it reports why. Where no type
        // is to be tiled the file is not parsed here at all.
        let isa = Isa::detect();
        let tiles = |t: GgmlType| match layout {
            Layout::Auto => isa.prefers_tiled(t),
            Layout::File => false,
            Layout::Tiled => true,
        };
        if crate::tile::TILEABLE.into_iter().any(tiles) {
            let _ = tile_in_place(&mut mem, tiles);
        }
        Ok(ModelBytes::Loaded(mem.make_read_only()?))
    }

    /// Memory-maps the file.
    ///
    /// # Safety
    /// The file must not be modified or truncated while the map (and any model borrowing it)
    /// is alive: the engine reads the mapped bytes directly.
    pub unsafe fn map(path: impl AsRef<Path>) -> Result<Self> {
        let file = std::fs::File::open(path)?;
        // SAFETY: the caller promises the file is not changed while mapped.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(ModelBytes::Mapped(map))
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            ModelBytes::Owned(v) => v,
            ModelBytes::Mapped(m) | ModelBytes::Loaded(m) => m,
        }
    }

    /// Parses and loads the model borrowing these bytes.
    pub fn model(&self) -> Result<Model<'_>> {
        Model::from_bytes(self.bytes())
    }
}

/// How [`ModelBytes::read_with`] lays out the matrices of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Tiled for the types this CPU's best instruction set reads faster tiled
    /// ([`Isa::prefers_tiled`]: every tileable type on AVX-512), the rest as in the file.
    #[default]
    Auto,
    /// As in the file (row-major).
    File,
    /// Every F16, Q8_0 and Q4_0 matrix tiled ([`tile_in_place`]), on any CPU; instruction sets
    /// without tiled kernels compute on it with the portable ones, more slowly.
    Tiled,
}

/// Lays out the matrices of a model file in memory in the tiled layout ([`crate::tile`],
/// FORMAT.md "Tiled matrices"), in place: each F16, Q8_0 or Q4_0 tensor for whose type `which`
/// is true, of two or more dimensions and at least 16 rows, has its full bands of 16 rows
/// permuted, and the type id in
/// its tensor info marked ([`crate::tile::TILED_FLAG`]), so the bytes describe their layout
/// and any later parse reads them right. Tensors already tiled, and tensors whose data overlap
/// another's, are left as they are. Returns the number of tensors tiled.
///
/// The model computes the same bits on the tiled bytes as on the file's, on every instruction
/// set; the AVX-512 kernels read them faster. The bytes are no longer the file's (write them
/// back and other GGUF readers reject the marked type ids).
///
/// # Errors
/// Those of [`crate::gguf::Gguf::parse`] (nothing is changed then).
pub fn tile_in_place(bytes: &mut [u8], which: impl Fn(GgmlType) -> bool) -> Result<usize> {
    use crate::tile::{is_tileable, scratch_bytes, tile_matrix, TILED_FLAG, TILE_ROWS};
    /// One tensor to tile: where its type id and data are, and its shape.
    struct Job {
        ty_at: usize,
        start: usize,
        len: usize,
        ty: GgmlType,
        rows: usize,
        row_bytes: usize,
    }
    // Every tensor's bytes, and the tiling job of those to tile.
    let mut all: Vec<(usize, usize, Option<Job>)> = Vec::new();
    {
        let g = crate::gguf::Gguf::parse(bytes)?;
        let base = bytes.as_ptr().addr();
        for t in g.tensors() {
            let start = t.data.as_ptr().addr() - base;
            let job = t.ty.computed().and_then(|ty| {
                let rows = usize::try_from(t.dims[1]).ok()?;
                let row_bytes = ty.checked_row_bytes(usize::try_from(t.dims[0]).ok()?)?;
                let tile = !t.tiled && is_tileable(ty) && which(ty);
                (tile && t.n_dims >= 2 && rows >= TILE_ROWS).then(|| Job {
                    // The tensor info: name (u64 length, bytes), n_dims (u32), dims (u64
                    // each), then the type id.
                    ty_at: t.name.as_ptr().addr() - base + t.name.len() + 4 + 8 * t.n_dims,
                    start,
                    len: t.data.len(),
                    ty,
                    rows,
                    row_bytes,
                })
            });
            all.push((start, t.data.len(), job));
        }
    }
    // Tensors may share bytes in a hand-made file: tiling shared bytes would change what the
    // other tensor reads, so a tensor that overlaps any other is left as it is.
    all.sort_by_key(|&(start, len, _)| (start, len));
    let mut jobs = Vec::new();
    let mut max_end = 0;
    for i in 0..all.len() {
        let (start, len, _) = all[i];
        let end = start + len;
        let before = i > 0 && start < max_end;
        let after = all.get(i + 1).is_some_and(|&(next, _, _)| next < end);
        max_end = max_end.max(end);
        if let (false, false, Some(job)) = (before, after, all[i].2.take()) {
            jobs.push(job);
        }
    }
    let mut scratch = Vec::new();
    let mut tiled = 0;
    for j in &jobs {
        let id_bytes = bytes
            .get(j.ty_at..j.ty_at + 4)
            .and_then(|b| b.try_into().ok());
        let Some(id) = id_bytes.map(u32::from_le_bytes) else {
            continue;
        };
        if id != j.ty.tensor_type().id() {
            continue; // not where the type id should be: leave the tensor alone
        }
        let matrix = j.rows * j.row_bytes;
        scratch.resize(scratch_bytes(j.ty, j.row_bytes), 0);
        let data = &mut bytes[j.start..j.start + j.len];
        for m in data.chunks_exact_mut(matrix.max(1)) {
            tile_matrix(j.ty, j.rows, j.row_bytes, m, &mut scratch);
        }
        bytes[j.ty_at..j.ty_at + 4].copy_from_slice(&(id | TILED_FLAG).to_le_bytes());
        tiled += 1;
    }
    Ok(tiled)
}

/// `len` bytes of zeroed, page-aligned anonymous memory that asks the OS for transparent huge
/// pages (`madvise(MADV_HUGEPAGE)` on Linux; a hint: where huge pages are not available the
/// pages are small). Large buffers that are streamed (model weights, the KV cache, a benchmark's
/// read probe) are then read without a TLB miss and a hardware-prefetcher restart every 4 KiB.
/// [`ModelBytes::read`] and large [`StateBuffer`]s use it.
pub fn huge_page_memory(len: usize) -> Result<memmap2::MmapMut> {
    let mem = memmap2::MmapOptions::new().len(len.max(1)).map_anon()?;
    #[cfg(target_os = "linux")]
    let _ = mem.advise(memmap2::Advice::HugePage);
    Ok(mem)
}

/// A heap buffer aligned for [`State`], sized for a model and [`StateOptions`].
#[derive(Debug)]
pub struct StateBuffer {
    mem: StateMemory,
    len: usize,
    opts: StateOptions,
}

/// Buffers of at least this many bytes are anonymous memory that asks for huge pages (the KV
/// cache is read at a stride of one position per head); smaller ones are a plain heap buffer.
const HUGE_PAGE_MIN: usize = 4 << 20;

#[derive(Debug)]
enum StateMemory {
    Heap(Vec<u128>),
    Anon(memmap2::MmapMut),
}

impl StateBuffer {
    /// Allocates exactly [`State::bytes_needed`] bytes (16-byte aligned) for `model` and `opts`
    /// (a context length, or [`StateOptions`]).
    ///
    /// A model can ask for more memory than there is (a long `context_length`, say): if the
    /// allocation fails the result is [`Error::BufferTooSmall`] with `got: 0`, not an abort.
    pub fn for_model(model: &Model<'_>, opts: impl Into<StateOptions>) -> Result<Self> {
        let opts = opts.into();
        let len = State::bytes_needed(model, opts)?;
        let failed = Error::BufferTooSmall {
            what: "state (allocating it failed)",
            needed: len,
            got: 0,
        };
        let mem = if len >= HUGE_PAGE_MIN && !cfg!(miri) {
            // Page-aligned (more than State::ALIGN), zero-filled by the OS.
            StateMemory::Anon(huge_page_memory(len).map_err(|_| failed)?)
        } else {
            let n = len.div_ceil(16);
            let mut words = Vec::new();
            words.try_reserve_exact(n).map_err(|_| failed)?;
            words.resize(n, 0u128);
            StateMemory::Heap(words)
        };
        Ok(StateBuffer { mem, len, opts })
    }

    /// Carves a [`State`] for `model` out of this buffer, with the options it was allocated for.
    pub fn state<'b>(&'b mut self, model: &Model<'_>) -> Result<State<'b>> {
        let bytes: &mut [u8] = match &mut self.mem {
            StateMemory::Anon(m) => {
                let len = self.len.min(m.len());
                &mut m[..len]
            }
            StateMemory::Heap(words) => {
                let len = self.len.min(words.len() * 16);
                // SAFETY: the Vec owns `words.len() * 16` initialized bytes; u8 has no
                // alignment or validity requirements; the byte view borrows `self` mutably for
                // 'b, so nothing else can touch the words meanwhile.
                unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) }
            }
        };
        State::new(model, self.opts, bytes)
    }
}
