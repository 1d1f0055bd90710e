//! Desktop conveniences (`std` feature): loading model files and heap-backed state buffers.

use std::path::Path;
use std::vec::Vec;

use crate::error::{Error, Result};
use crate::model::Model;
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
    /// Reads the whole file into memory. On Linux the memory asks for transparent huge pages
    /// (`madvise(MADV_HUGEPAGE)`): decoding streams every active weight once per token, and
    /// with 4 KiB pages the hardware prefetchers stop at every page boundary and the TLB misses
    /// on every page. Where huge pages are not available this is an ordinary read.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
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
