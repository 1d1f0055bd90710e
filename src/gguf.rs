//! A zero-copy GGUF reader (versions 2 and 3, little-endian) over a byte slice.
//!
//! [`Gguf::parse`] walks the whole header once and checks every length, count, dimension and
//! offset against the slice, with overflow checks, so a malformed file is rejected with an
//! [`Error`] naming the field and byte offset. After that, metadata values and tensor data are
//! views into the same slice: nothing is copied and nothing is allocated. The slice may have any
//! alignment (values are read with `from_le_bytes`).

use crate::error::{name, Error, Result};
use crate::quant::{TensorType, TensorTypes};

const MAGIC: u32 = 0x4655_4747; // "GGUF" read as little-endian u32
const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a GGUF tensor may have.
pub const MAX_DIMS: usize = 4;

/// Metadata value type ids, as GGUF defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ValueType {
    /// u8
    U8 = 0,
    /// i8
    I8 = 1,
    /// u16
    U16 = 2,
    /// i16
    I16 = 3,
    /// u32
    U32 = 4,
    /// i32
    I32 = 5,
    /// f32
    F32 = 6,
    /// bool (one byte, 0 or 1)
    Bool = 7,
    /// UTF-8 string with u64 length
    String = 8,
    /// typed array with u64 length
    Array = 9,
    /// u64
    U64 = 10,
    /// i64
    I64 = 11,
    /// f64
    F64 = 12,
}

impl ValueType {
    fn from_u32(v: u32) -> Option<Self> {
        use ValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Size of a fixed-size value, `None` for strings and arrays.
    fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }
}

/// A metadata value: scalars by value, strings and arrays as views into the file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// f32
    F32(f32),
    /// bool
    Bool(bool),
    /// string
    Str(&'a str),
    /// array
    Array(Array<'a>),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
}

impl<'a> Value<'a> {
    /// The value as a u64 if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as an f32 if it is an f32 (or an f64 that converts exactly).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) if (v as f32) as f64 == v => Some(v as f32),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<Array<'a>> {
        match *self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A typed metadata array, validated at parse time, read lazily.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Array<'a> {
    elem: ValueType,
    len: usize,
    /// The bytes of the elements (without the array header).
    bytes: &'a [u8],
    /// Absolute offset of `bytes` in the file, for error messages.
    offset: usize,
}

impl<'a> Array<'a> {
    /// Element type.
    pub fn elem_type(&self) -> ValueType {
        self.elem
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Absolute byte offset of the first element in the file.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Iterates over the elements in order.
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            cur: Cursor {
                data: self.bytes,
                pos: 0,
                base: self.offset,
            },
            elem: self.elem,
            remaining: self.len,
        }
    }

    /// Element `i` of an array of fixed-size elements in O(1); for strings and arrays this walks
    /// the array (O(i)).
    pub fn get(&self, i: usize) -> Option<Value<'a>> {
        if i >= self.len {
            return None;
        }
        match self.elem.fixed_size() {
            Some(sz) => {
                let mut cur = Cursor {
                    data: self.bytes,
                    pos: i * sz,
                    base: self.offset,
                };
                read_value(&mut cur, self.elem, 0).ok()
            }
            None => self.iter().nth(i),
        }
    }
}

/// Iterator over an [`Array`]'s elements.
#[derive(Debug, Clone)]
pub struct ArrayIter<'a> {
    cur: Cursor<'a>,
    elem: ValueType,
    remaining: usize,
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // The array was validated when the file was parsed, so this cannot fail; if it somehow
        // did, iteration ends rather than yielding garbage.
        match read_value(&mut self.cur, self.elem, 0) {
            Ok(v) => Some(v),
            Err(_) => {
                self.remaining = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}

/// A tensor: name, shape, type and its bytes inside the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorInfo<'a> {
    /// The tensor's name.
    pub name: &'a str,
    /// Number of dimensions (1..=4).
    pub n_dims: usize,
    /// Dimensions, innermost first; unused ones are 1.
    pub dims: [u64; MAX_DIMS],
    /// Element type: any ggml type (see [`TensorType::computed`] for the engine's).
    pub ty: TensorType,
    /// Whether the data are in the tiled layout (FORMAT.md, "Tiled matrices"; the type id has
    /// [`crate::tile::TILED_FLAG`] set). Only F16, Q8_0 and Q4_0 tensors can be.
    pub tiled: bool,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// The tensor's bytes.
    pub data: &'a [u8],
}

impl TensorInfo<'_> {
    /// Total number of elements (saturating at `u64::MAX`, which only a hand-made view can
    /// reach: a parsed tensor's element count fits).
    pub fn n_elements(&self) -> u64 {
        self.dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .unwrap_or(u64::MAX)
    }
}

/// A parsed GGUF file borrowing its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Gguf<'a> {
    data: &'a [u8],
    version: u32,
    n_kv: usize,
    n_tensors: usize,
    kv_start: usize,
    tensors_start: usize,
    data_start: usize,
    alignment: u64,
}

#[derive(Debug, Clone)]
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    /// Absolute offset of `data[0]` in the file.
    base: usize,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let offset = self.offset();
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| Error::Overflow { what, offset })?;
        let s = self
            .data
            .get(self.pos..end)
            .ok_or_else(|| Error::UnexpectedEof { what, offset })?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length or count that must fit in usize and, with at least `min_elem_size` bytes per
    /// element, in the rest of the data.
    fn count(&mut self, what: &'static str, min_elem_size: usize) -> Result<usize> {
        let offset = self.offset();
        let n = self.u64(what)?;
        let remaining = (self.data.len() - self.pos) as u64;
        let bytes = n
            .checked_mul(min_elem_size as u64)
            .ok_or_else(|| Error::Overflow { what, offset })?;
        if bytes > remaining {
            return Err(Error::Overflow { what, offset });
        }
        usize::try_from(n).map_err(|_| Error::Overflow { what, offset })
    }

    fn string(&mut self, what: &'static str) -> Result<&'a str> {
        let len = self.count(what, 1)?;
        let offset = self.offset();
        let bytes = self.take(len, what)?;
        core::str::from_utf8(bytes).map_err(|_| Error::InvalidUtf8 { what, offset })
    }
}

/// Arrays nested deeper than this are rejected (GGUF files in practice nest at most once).
const MAX_NESTING: u32 = 4;

fn read_value<'a>(cur: &mut Cursor<'a>, ty: ValueType, depth: u32) -> Result<Value<'a>> {
    const W: &str = "metadata value";
    Ok(match ty {
        ValueType::U8 => Value::U8(cur.array::<1>(W)?[0]),
        ValueType::I8 => Value::I8(i8::from_le_bytes(cur.array(W)?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(cur.array(W)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(cur.array(W)?)),
        ValueType::U32 => Value::U32(cur.u32(W)?),
        ValueType::I32 => Value::I32(i32::from_le_bytes(cur.array(W)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(cur.array(W)?)),
        ValueType::Bool => {
            let offset = cur.offset();
            match cur.array::<1>(W)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                v => {
                    return Err(Error::InvalidValueType {
                        value_type: v.into(),
                        offset,
                    })
                }
            }
        }
        ValueType::String => Value::Str(cur.string("metadata string")?),
        ValueType::U64 => Value::U64(cur.u64(W)?),
        ValueType::I64 => Value::I64(i64::from_le_bytes(cur.array(W)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(cur.array(W)?)),
        ValueType::Array => {
            let type_offset = cur.offset();
            let raw = cur.u32("array element type")?;
            let elem = ValueType::from_u32(raw).ok_or_else(|| Error::InvalidValueType {
                value_type: raw,
                offset: type_offset,
            })?;
            if elem == ValueType::Array && depth >= MAX_NESTING {
                return Err(Error::Overflow {
                    what: "array nesting depth",
                    offset: type_offset,
                });
            }
            // Strings take at least 8 bytes, nested arrays at least 12.
            let min = match elem {
                ValueType::String => 8,
                ValueType::Array => 12,
                t => t.fixed_size().unwrap_or(1),
            };
            let len = cur.count("array length", min)?;
            let start = cur.pos;
            let offset = cur.offset();
            match elem.fixed_size() {
                Some(sz) => {
                    // `count` checked len * min (= sz) fits in the remaining bytes.
                    let data = cur.take(len * sz, "array data")?;
                    // Bools are the one fixed-size type with invalid values: check them all
                    // now, so iterating never meets an element that does not read.
                    if elem == ValueType::Bool {
                        if let Some(i) = data.iter().position(|&b| b > 1) {
                            return Err(Error::InvalidValueType {
                                value_type: data[i].into(),
                                offset: offset + i,
                            });
                        }
                    }
                }
                None => {
                    for _ in 0..len {
                        read_value(cur, elem, depth + 1)?;
                    }
                }
            }
            Value::Array(Array {
                elem,
                len,
                bytes: &cur.data[start..cur.pos],
                offset,
            })
        }
    })
}

/// Moves `cur` past a value of type `ty` that [`read_value`] accepted before (when the file was
/// parsed), without validating it again: strings are not checked for UTF-8, fixed-size array
/// elements are not read.
fn skip_value(cur: &mut Cursor<'_>, ty: ValueType) -> Result<()> {
    const W: &str = "metadata value";
    match ty {
        ValueType::String => {
            let len = cur.count("metadata string", 1)?;
            cur.take(len, W)?;
        }
        ValueType::Array => {
            let type_offset = cur.offset();
            let raw = cur.u32("array element type")?;
            let elem = ValueType::from_u32(raw).ok_or(Error::InvalidValueType {
                value_type: raw,
                offset: type_offset,
            })?;
            match elem.fixed_size() {
                Some(sz) => {
                    let len = cur.count("array length", sz)?;
                    cur.take(len * sz, "array data")?;
                }
                None => {
                    for _ in 0..cur.count("array length", 8)? {
                        skip_value(cur, elem)?;
                    }
                }
            }
        }
        t => {
            cur.take(t.fixed_size().unwrap_or(0), W)?;
        }
    }
    Ok(())
}

/// The metadata keys in file order, their values skipped (for the duplicate check).
#[derive(Clone)]
struct Keys<'a> {
    cur: Cursor<'a>,
    remaining: usize,
}

impl<'a> Iterator for Keys<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let key = self.cur.string("metadata key").ok()?;
        let raw = self.cur.u32("metadata value type").ok()?;
        skip_value(&mut self.cur, ValueType::from_u32(raw)?).ok()?;
        Some(key)
    }
}

/// The tensor names in file order (for the duplicate check).
#[derive(Clone)]
struct TensorNames<'a> {
    cur: Cursor<'a>,
    remaining: usize,
}

impl<'a> Iterator for TensorNames<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // The index only goes into errors, and these infos were read without one before.
        read_tensor_info(&mut self.cur, 0, 0).ok().map(|t| t.0)
    }
}

/// Names the duplicate check compares at once: a chunk of (hash, name) pairs on the stack,
/// 1.5 KiB on 32-bit targets, 3 KiB on 64-bit ones.
const NAME_CHUNK: usize = 128;

/// 32-bit FNV-1a.
fn name_hash(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h: u32, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The first name of `names` found twice, if any, without allocating: the names are taken in
/// chunks of [`NAME_CHUNK`]; each chunk is sorted by (hash, name), which puts copies inside it
/// side by side, and every later name is looked up in it by hash (binary search). For `n`
/// names that is one sort for up to 128 names, and `n / 128` passes over the names in general
/// (`n^2 / 128` hash lookups), where comparing each name with every other would be `n^2 / 2`
/// string comparisons.
fn find_duplicate<'a, I: Iterator<Item = &'a str> + Clone>(names: I) -> Option<&'a str> {
    let mut chunk: [(u32, &'a str); NAME_CHUNK] = [(0, ""); NAME_CHUNK];
    let mut rest = names;
    loop {
        let mut n = 0;
        for (slot, name) in chunk.iter_mut().zip(rest.by_ref()) {
            *slot = (name_hash(name), name);
            n += 1;
        }
        if n == 0 {
            return None;
        }
        let c = &mut chunk[..n];
        c.sort_unstable();
        if let Some(w) = c.windows(2).find(|w| w[0].1 == w[1].1) {
            return Some(w[0].1);
        }
        for name in rest.clone() {
            let h = name_hash(name);
            let from = c.partition_point(|e| e.0 < h);
            let mut same_hash = c[from..].iter().take_while(|e| e.0 == h);
            if same_hash.any(|e| e.1 == name) {
                return Some(name);
            }
        }
    }
}

fn read_kv<'a>(cur: &mut Cursor<'a>) -> Result<(&'a str, Value<'a>)> {
    let key = cur.string("metadata key")?;
    let type_offset = cur.offset();
    let raw = cur.u32("metadata value type")?;
    let ty = ValueType::from_u32(raw).ok_or_else(|| Error::InvalidValueType {
        value_type: raw,
        offset: type_offset,
    })?;
    let v = read_value(cur, ty, 0)?;
    Ok((key, v))
}

/// Reads tensor info `index` of `count`; the data view is resolved against the data section
/// later.
fn read_tensor_info<'a>(
    cur: &mut Cursor<'a>,
    index: usize,
    count: usize,
) -> Result<(&'a str, usize, [u64; MAX_DIMS], u32, u64)> {
    let offset = cur.offset();
    let tname = cur.string("tensor name")?;
    let n_dims = cur.u32("tensor n_dims")?;
    let bad = || Error::BadTensorDims {
        tensor: name(tname),
        index,
        count,
        offset,
        n_dims,
    };
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        return Err(bad());
    }
    let mut dims = [1u64; MAX_DIMS];
    for d in dims.iter_mut().take(n_dims as usize) {
        *d = cur.u64("tensor dimension")?;
        if *d == 0 {
            return Err(bad());
        }
    }
    let ty = cur.u32("tensor type")?;
    let offset = cur.u64("tensor offset")?;
    Ok((tname, n_dims as usize, dims, ty, offset))
}

impl<'a> Gguf<'a> {
    /// Parses and validates a whole GGUF file.
    ///
    /// Checks the magic and version, every metadata entry (types, lengths, UTF-8), every tensor
    /// info (dimensions, type, block alignment of rows, size overflow, data alignment and
    /// bounds), `general.alignment`, and that no two metadata entries share a key and no two
    /// tensors a name ([`Error::DuplicateKey`], [`Error::DuplicateTensor`]). Runs in time
    /// linear in the file size, except the duplicate check for files of more than 128 keys or
    /// tensors: it takes `n / 128` passes over the `n` names (see `find_duplicate`), no memory
    /// beyond 3 KiB of stack.
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let mut cur = Cursor {
            data,
            pos: 0,
            base: 0,
        };
        let magic = cur.u32("magic")?;
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let version = cur.u32("version")?;
        if version != 2 && version != 3 {
            return Err(Error::UnsupportedVersion { version });
        }
        // A tensor info takes at least 8 (name) + 4 + 8 + 4 + 8 bytes; a KV at least 8 + 4 + 1.
        let n_tensors = cur.count("tensor count", 32)?;
        let n_kv = cur.count("metadata count", 13)?;
        let kv_start = cur.pos;

        let mut alignment = DEFAULT_ALIGNMENT;
        for _ in 0..n_kv {
            let (key, value) = read_kv(&mut cur)?;
            if key == "general.alignment" {
                alignment = match value {
                    Value::U32(a) if a != 0 && a.is_power_of_two() => a.into(),
                    Value::U32(a) => {
                        return Err(Error::BadAlignment {
                            alignment: a.into(),
                        })
                    }
                    _ => return Err(Error::BadAlignment { alignment: 0 }),
                };
            }
        }

        // Every key once: a second copy would be ambiguous (which one does a reader use?).
        let keys = Keys {
            cur: Cursor {
                data,
                pos: kv_start,
                base: 0,
            },
            remaining: n_kv,
        };
        if let Some(key) = find_duplicate(keys) {
            return Err(Error::DuplicateKey { key: name(key) });
        }

        let tensors_start = cur.pos;
        let mut infos_end = cur.clone();
        for i in 0..n_tensors {
            read_tensor_info(&mut infos_end, i, n_tensors)?;
        }
        let data_start = align_up(infos_end.pos as u64, alignment)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| Error::Overflow {
                what: "data section start",
                offset: infos_end.pos,
            })?;

        let file = Gguf {
            data,
            version,
            n_kv,
            n_tensors,
            kv_start,
            tensors_start,
            data_start,
            alignment,
        };

        // Resolve and check every tensor, then check that every name is used once.
        let mut c = cur.clone();
        for i in 0..n_tensors {
            file.resolve(&mut c, i)?;
        }
        let names = TensorNames {
            cur,
            remaining: n_tensors,
        };
        if let Some(tensor) = find_duplicate(names) {
            return Err(Error::DuplicateTensor {
                tensor: name(tensor),
            });
        }
        Ok(file)
    }

    /// Reads tensor info `index` and resolves its data.
    fn resolve(&self, cur: &mut Cursor<'a>, index: usize) -> Result<TensorInfo<'a>> {
        let (tname, n_dims, dims, ty_raw, offset) = read_tensor_info(cur, index, self.n_tensors)?;
        let tiled = ty_raw & crate::tile::TILED_FLAG != 0;
        let ty = TensorType::from_u32(ty_raw & !crate::tile::TILED_FLAG)
            .filter(|t| !tiled || t.computed().is_some_and(crate::tile::is_tileable))
            .ok_or_else(|| Error::UnknownTensorType {
                tensor: name(tname),
                type_id: ty_raw,
            })?;
        let block = ty.block_size() as u64;
        if dims[0] % block != 0 {
            return Err(Error::RowNotBlockAligned {
                tensor: name(tname),
                ne0: dims[0],
                block,
            });
        }
        let at = cur.offset();
        let overflow = || Error::Overflow {
            what: "tensor size",
            offset: at,
        };
        let n = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(overflow)?;
        let size = (n / block)
            .checked_mul(ty.type_size() as u64)
            .ok_or_else(overflow)?;
        if offset % self.alignment != 0 {
            return Err(Error::MisalignedTensor {
                tensor: name(tname),
                offset,
                alignment: self.alignment,
            });
        }
        let start = (self.data_start as u64)
            .checked_add(offset)
            .ok_or_else(overflow)?;
        let end = start.checked_add(size).ok_or_else(overflow)?;
        if end > self.data.len() as u64 {
            return Err(Error::TensorOutOfBounds {
                tensor: name(tname),
                end,
                file_size: self.data.len() as u64,
            });
        }
        // Both fit in usize: they are at most data.len().
        let bytes = &self.data[start as usize..end as usize];
        Ok(TensorInfo {
            name: tname,
            n_dims,
            dims,
            ty,
            tiled,
            offset,
            data: bytes,
        })
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Tensor data alignment.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Number of metadata entries.
    pub fn metadata_len(&self) -> usize {
        self.n_kv
    }

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.n_tensors
    }

    /// Absolute offset of the tensor data section.
    pub fn data_offset(&self) -> usize {
        self.data_start
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }

    /// Iterates over the metadata entries in file order.
    pub fn metadata(&self) -> MetadataIter<'a> {
        MetadataIter {
            cur: Cursor {
                data: self.data,
                pos: self.kv_start,
                base: 0,
            },
            remaining: self.n_kv,
        }
    }

    /// The value of metadata key `key`, if present.
    pub fn get(&self, key: &str) -> Option<Value<'a>> {
        self.metadata().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Iterates over the tensors in file order.
    pub fn tensors(&self) -> TensorIter<'a> {
        TensorIter {
            file: *self,
            cur: Cursor {
                data: self.data,
                pos: self.tensors_start,
                base: 0,
            },
            remaining: self.n_tensors,
        }
    }

    /// The tensor called `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<TensorInfo<'a>> {
        self.tensors().find(|t| t.name == name)
    }

    /// `general.architecture`, if it is a string.
    pub fn architecture(&self) -> Option<&'a str> {
        self.get("general.architecture").and_then(|v| v.as_str())
    }

    /// How many tensors of each type the file holds, and the first of each (one walk of the
    /// tensor table, no allocation).
    pub fn type_counts(&self) -> TypeCounts {
        let mut c = TypeCounts {
            count: [0; TensorType::ALL.len()],
            first: [usize::MAX; TensorType::ALL.len()],
            bytes: [0; TensorType::ALL.len()],
        };
        for (i, t) in self.tensors().enumerate() {
            let k = index_of(t.ty);
            c.count[k] += 1;
            // Tensors may overlap, so the sum is not bounded by the file size.
            c.bytes[k] = c.bytes[k].saturating_add(t.data.len() as u64);
            if c.first[k] == usize::MAX {
                c.first[k] = i;
            }
        }
        c
    }
}

/// Position of `t` in [`TensorType::ALL`].
fn index_of(t: TensorType) -> usize {
    TensorType::ALL.iter().position(|&u| u == t).unwrap_or(0)
}

/// The tensors of a file by type ([`Gguf::type_counts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeCounts {
    count: [usize; TensorType::ALL.len()],
    first: [usize; TensorType::ALL.len()],
    bytes: [u64; TensorType::ALL.len()],
}

impl TypeCounts {
    /// Tensors of type `t`.
    pub fn count(&self, t: TensorType) -> usize {
        self.count[index_of(t)]
    }

    /// Index in the tensor table of the first tensor of type `t`, if any.
    pub fn first(&self, t: TensorType) -> Option<usize> {
        Some(self.first[index_of(t)]).filter(|&i| i != usize::MAX)
    }

    /// Bytes of data of the tensors of type `t`.
    pub fn bytes(&self, t: TensorType) -> u64 {
        self.bytes[index_of(t)]
    }

    /// Every type the file holds.
    pub fn types(&self) -> TensorTypes {
        let mut s = TensorTypes::new();
        for t in TensorType::ALL {
            if self.count(t) > 0 {
                s.insert(t);
            }
        }
        s
    }

    /// The types the file holds that the engine does not compute with.
    pub fn unsupported(&self) -> TensorTypes {
        let mut s = TensorTypes::new();
        for t in self.types().iter().filter(|t| !t.is_computed()) {
            s.insert(t);
        }
        s
    }
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    Some(v.checked_add(a - 1)? / a * a)
}

/// Iterator over metadata entries.
#[derive(Debug, Clone)]
pub struct MetadataIter<'a> {
    cur: Cursor<'a>,
    remaining: usize,
}

impl<'a> Iterator for MetadataIter<'a> {
    type Item = (&'a str, Value<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // Validated by `Gguf::parse`; an error cannot happen, and would end iteration.
        match read_kv(&mut self.cur) {
            Ok(kv) => Some(kv),
            Err(_) => {
                self.remaining = 0;
                None
            }
        }
    }
}

/// Iterator over tensors.
#[derive(Debug, Clone)]
pub struct TensorIter<'a> {
    file: Gguf<'a>,
    cur: Cursor<'a>,
    remaining: usize,
}

impl<'a> Iterator for TensorIter<'a> {
    type Item = TensorInfo<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let index = self.file.n_tensors - self.remaining;
        self.remaining -= 1;
        // Validated by `Gguf::parse`.
        match self.file.resolve(&mut self.cur, index) {
            Ok(t) => Some(t),
            Err(_) => {
                self.remaining = 0;
                None
            }
        }
    }
}
