//! Byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`) with the `"mhmoe-space"`
//! pre-tokenizer, working without allocation.
//!
//! # What it computes
//!
//! * **Pre-tokenizer** (`tokenizer.ggml.pre = "mhmoe-space"`): the input bytes are cut before
//!   every space byte `0x20` and nowhere else, so `b"a bc  d"` becomes
//!   `[b"a", b" bc", b" ", b" d"]`. There is no regex, no prefix space and no normalization.
//! * **BPE**: each piece starts as one symbol per byte (the single-byte tokens). The adjacent
//!   pair with the lowest merge rank is merged, the leftmost one on equal rank, until no adjacent
//!   pair is a merge. This is exactly what Hugging Face `tokenizers`' BPE model (without dropout)
//!   produces. Special tokens are never produced by encoding; `bos`/`eos` are left to the caller.
//! * **Token strings** are stored in the file in GPT-2's byte-to-unicode form (see
//!   [`byte_to_unicode`]); [`Tokenizer::token_bytes`] maps them back to raw bytes and
//!   [`Decoder`] turns a stream of tokens into UTF-8 text.
//!
//! # Memory
//!
//! The tokenizer reads the token and merge strings in place in the GGUF bytes, and four lookup
//! tables that depend only on the model, for `V` tokens and `M` merges:
//!
//! | table | u32 values | purpose | key in the file (FORMAT.md) |
//! |---|---|---|---|
//! | offsets | `V + 1` | where each token string starts (random access by id) | `tokenizer.mhmoe.token_offsets` |
//! | sorted ids | `V` | token ids sorted by string (string -> id by binary search) | `tokenizer.mhmoe.sorted_ids` |
//! | merges | `4 M` | `(left, right, rank, merged)` sorted by `(left, right)` | `tokenizer.mhmoe.merge_table` |
//! | byte tokens | 256 | the token of each single byte | `tokenizer.mhmoe.byte_tokens` |
//!
//! Where they live:
//!
//! * **In the file** (what `tools/` writes): the tables are metadata arrays, used in place like
//!   the strings (read as little-endian `u32`s, any alignment), so on a device they stay in
//!   flash with the model. [`Tokenizer::workspace_len`] is 0 and [`Tokenizer::new`] only checks
//!   them against the strings, with no memory of its own (see [`Tokenizer::new`]). RAM is the
//!   [`Tokenizer`] value (56 bytes on a 32-bit target, 96 on a 64-bit one), the
//!   output buffer of [`Tokenizer::encode`] (which it also uses as its work list) plus about
//!   200 bytes of stack, and about 100 bytes of stack to decode (a 64-byte chunk buffer).
//! * **Built in RAM** for a file without them: [`Tokenizer::new`] builds all four in a
//!   caller-provided `&mut [u32]` workspace of [`Tokenizer::workspace_len`] =
//!   `2 V + 4 M + 257` words (46,084 bytes for the 2048-token demo vocabulary with 1792
//!   merges). Encoding gives the same ids either way.
//!
//! A file has all four keys or none; anything else is an error.
//!
//! # Time
//!
//! With the tables in the file, building takes `O(V)` string comparisons to check the sorted
//! ids and `O(M log V)` for the merges (each merge string is looked up three times, plus one
//! `O(log M)` look-up in the merge table). Without them, building also sorts: `O(V log V)`
//! string comparisons and `O(M log M)`. All on tables whose size the GGUF parser has already
//! bounded by the file size.
//!
//! Encoding a piece (the bytes from one space to the next) of `m` bytes takes `P` passes over
//! it, `O(m)` each, where `P` is the number of distinct merges that fire in it (at most `m - 1`),
//! plus `O(log M)` per merge and `O(m log M)` per (rare) rescan of the piece; see
//! [`Tokenizer::encode`]. Ordinary text has short pieces (words), so encoding is linear in
//! practice: about 11 MB/s on one desktop core for English text with the 2048-token demo
//! vocabulary (whose ids match Hugging Face `tokenizers` on the whole 8.8 MB training corpus;
//! `cargo bench --bench tokenizer`). Long pieces without spaces cost `O(P m)`: with that
//! vocabulary, 1 MB of `a` takes about 25 ms and 1 MB of English text with its spaces removed
//! (800 passes) about 1.4 s.

use core::cmp::Ordering;
use core::fmt;

use crate::error::{name, Error, Result};
use crate::gguf::{Array, Gguf, Value, ValueType};

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
const KEY_OFFSETS: &str = "tokenizer.mhmoe.token_offsets";
const KEY_SORTED: &str = "tokenizer.mhmoe.sorted_ids";
const KEY_MERGE_TABLE: &str = "tokenizer.mhmoe.merge_table";
const KEY_BYTE_TOKENS: &str = "tokenizer.mhmoe.byte_tokens";
/// The keys of the precomputed tables: a file has all of them or none.
const TABLE_KEYS: [&str; 4] = [KEY_OFFSETS, KEY_SORTED, KEY_MERGE_TABLE, KEY_BYTE_TOKENS];

/// Bytes of the `u64` length that precedes every GGUF string.
const STR_LEN_BYTES: usize = 8;
/// Words per entry of the merge table: `[left, right, rank, merged]`.
const MERGE_WORDS: usize = 4;
/// Words of the byte-to-token table.
const BYTE_WORDS: usize = 256;

/// A `u32` as every table holds it, in the file or in the workspace: four little-endian bytes
/// (so a table in the file is used where it lies, whatever its alignment).
type Word = [u8; 4];
/// A merge-table entry as stored: `[left, right, rank, merged]` as four [`Word`]s.
type Packed = [u8; 4 * MERGE_WORDS];
/// A merge-table entry: `[left, right, rank, merged]`.
type Entry = [u32; MERGE_WORDS];
const LEFT: usize = 0;
const RIGHT: usize = 1;
const RANK: usize = 2;
const MERGED: usize = 3;

fn word(w: &Word) -> u32 {
    u32::from_le_bytes(*w)
}

/// Field `k` of a packed merge-table entry.
fn field(e: &Packed, k: usize) -> u32 {
    let i = 4 * k;
    u32::from_le_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]])
}

fn unpack(e: &Packed) -> Entry {
    [field(e, 0), field(e, 1), field(e, 2), field(e, 3)]
}

fn pack(e: Entry) -> Packed {
    let mut p = [0u8; 4 * MERGE_WORDS];
    for (chunk, v) in p.chunks_exact_mut(4).zip(e) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    p
}

/// The `(left, right)` key a merge table is sorted by.
fn pair_key(e: &Packed) -> u64 {
    (u64::from(field(e, LEFT)) << 32) | u64::from(field(e, RIGHT))
}

/// The character GPT-2's byte-to-unicode map assigns to byte `b`.
///
/// Bytes `33..=126`, `161..=172` and `174..=255` map to the code point of the same value; the
/// other 68 bytes map to `U+0100`, `U+0101`, ... in increasing byte order (so the space `0x20`
/// becomes `U+0120` `Ġ`).
pub const fn byte_to_unicode(b: u8) -> char {
    let c = match b {
        33..=126 | 161..=172 | 174..=255 => b as u32,
        0..=32 => 256 + b as u32,
        127..=160 => b as u32 + (289 - 127),
        173 => 323,
    };
    match char::from_u32(c) {
        Some(c) => c,
        None => char::REPLACEMENT_CHARACTER, // unreachable: every value above is a valid char
    }
}

/// The byte that GPT-2's byte-to-unicode map sends to `c`, or `None` if `c` is not in the map's
/// image. Inverse of [`byte_to_unicode`].
pub const fn unicode_to_byte(c: char) -> Option<u8> {
    let c = c as u32;
    match c {
        33..=126 | 161..=172 | 174..=255 => Some(c as u8),
        256..=288 => Some((c - 256) as u8),
        289..=322 => Some((c - (289 - 127)) as u8),
        323 => Some(173),
        _ => None,
    }
}

fn bad(reason: &'static str) -> Error {
    Error::BadTokenizer { reason }
}

/// Sizes of the tables built in a workspace, in u32 words.
#[derive(Debug, Clone, Copy)]
struct Layout {
    n_vocab: usize,
    n_merges: usize,
    /// `2 V + 1 + 4 M + 256`.
    words: usize,
}

impl Layout {
    fn new(n_vocab: usize, n_merges: usize) -> Result<Self> {
        // Checked here as well as by the table builder, so that no workspace (or allocation)
        // outgrows a file with fewer tokens than the byte table has entries.
        if n_vocab < BYTE_WORDS {
            return Err(bad(
                "a single-byte token is missing (all 256 byte tokens are required)",
            ));
        }
        if u32::try_from(n_vocab).is_err() {
            return Err(bad("the vocabulary has more than u32::MAX tokens"));
        }
        if u32::try_from(n_merges).is_err() {
            return Err(bad("there are more than u32::MAX merges"));
        }
        let words = n_vocab
            .checked_mul(2)
            .and_then(|v| v.checked_add(1 + BYTE_WORDS))
            .and_then(|v| v.checked_add(n_merges.checked_mul(MERGE_WORDS)?))
            .filter(|w| w.checked_mul(4).is_some())
            .ok_or(bad("the tokenizer tables do not fit in the address space"))?;
        Ok(Layout {
            n_vocab,
            n_merges,
            words,
        })
    }

    /// Splits the first `4 * words` bytes of `ws` into the merge table, offsets, sorted ids
    /// and byte table, in that order.
    #[allow(clippy::type_complexity)]
    fn split_mut<'w>(
        &self,
        ws: &'w mut [u8],
    ) -> Option<(
        &'w mut [Packed],
        &'w mut [Word],
        &'w mut [Word],
        &'w mut [Word; BYTE_WORDS],
    )> {
        let ws = ws.get_mut(..self.words.checked_mul(4)?)?;
        let (merges, rest) = ws.split_at_mut_checked(self.n_merges * 4 * MERGE_WORDS)?;
        let (words, _) = rest.as_chunks_mut::<4>();
        let (offsets, rest) = words.split_at_mut_checked(self.n_vocab + 1)?;
        let (sorted, bytes) = rest.split_at_mut_checked(self.n_vocab)?;
        Some((
            merges.as_chunks_mut().0,
            offsets,
            sorted,
            bytes.try_into().ok()?,
        ))
    }

    /// The tables [`Layout::split_mut`] laid out in `ws`.
    #[cfg(feature = "std")]
    fn view<'w>(&self, ws: &'w [u8]) -> Option<Tables<'w>> {
        let ws = ws.get(..self.words.checked_mul(4)?)?;
        let (merges, rest) = ws.split_at_checked(self.n_merges * 4 * MERGE_WORDS)?;
        let (words, _) = rest.as_chunks::<4>();
        let (offsets, rest) = words.split_at_checked(self.n_vocab + 1)?;
        let (sorted, bytes) = rest.split_at_checked(self.n_vocab)?;
        Some(Tables {
            offsets,
            sorted,
            merges: merges.as_chunks().0,
            byte_tokens: bytes.try_into().ok()?,
        })
    }
}

/// Views `words` as their bytes, so that the workspace holds the tables exactly as a file does.
fn words_as_bytes(words: &mut [u32]) -> &mut [u8] {
    let len = core::mem::size_of_val(words);
    // SAFETY: the pointer and length cover exactly the memory of `words`, which the returned
    // slice borrows mutably for as long as `words` was; `u8` has alignment 1 and every bit
    // pattern of a `u32`'s bytes is a valid `u8` (and vice versa).
    unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) }
}

/// The parts of a [`Tokenizer`] that always come from the file's strings.
#[derive(Clone, Copy)]
struct Head<'a> {
    /// The bytes of the `tokenizer.ggml.tokens` array elements (length prefixes included).
    tokens: &'a [u8],
    bos: Option<u32>,
    eos: Option<u32>,
    max_token_bytes: usize,
}

/// The lookup tables (see the [module documentation](self)), in the file or in a workspace.
#[derive(Clone, Copy)]
struct Tables<'t> {
    /// `V + 1` offsets into `Head::tokens`: token `i` is `tokens[offsets[i] + 8 .. offsets[i + 1]]`.
    offsets: &'t [Word],
    /// Token ids sorted by token string (byte order of the UTF-8 form).
    sorted: &'t [Word],
    /// `[left, right, rank, merged]` sorted by `(left, right)`; pairs are unique.
    merges: &'t [Packed],
    /// Token id of each single byte.
    byte_tokens: &'t [Word; BYTE_WORDS],
}

/// A byte-level BPE tokenizer that borrows the GGUF file (`'a`) and, for a file without
/// precomputed tables, the workspace they were built in (`'w`).
///
/// Build it with [`Tokenizer::new`]; it is `Copy` (a few slices and ids: 56 bytes on a 32-bit
/// target) and never allocates.
/// See the [module documentation](self) for the algorithm and costs.
#[derive(Clone, Copy)]
pub struct Tokenizer<'a, 'w> {
    head: Head<'a>,
    tables: Tables<'w>,
}

// The value stays small: 56 bytes on a 32-bit target, 96 on a 64-bit one.
const _: () = assert!(
    core::mem::size_of::<Tokenizer<'static, 'static>>() <= 16 * core::mem::size_of::<usize>()
);

/// Capacity of [`Candidates`]: 32 entries of 4 bytes, on the stack.
const CANDIDATES: usize = 32;

/// The lowest-ranked merges known to apply to some adjacent pair of a piece, so that a pass
/// rarely has to look up every pair again to find the next rank.
///
/// Invariant: every adjacent pair of the piece that has a merge has it in `items` (merge-table
/// entries sorted by rank, no repeats), or ranks above `bound`; `bound == None` means all are in
/// `items`. An item may be stale (its pair merged away since): the pass for it then merges
/// nothing, which is harmless.
#[derive(Debug, Clone, Copy)]
struct Candidates<'t> {
    table: &'t [Packed],
    items: [u32; CANDIDATES],
    len: usize,
    bound: Option<u32>,
}

impl<'t> Candidates<'t> {
    fn new(table: &'t [Packed]) -> Self {
        Candidates {
            table,
            items: [0; CANDIDATES],
            len: 0,
            bound: None,
        }
    }

    fn rank(&self, item: u32) -> u32 {
        self.table
            .get(item as usize)
            .map_or(u32::MAX, |e| field(e, RANK))
    }

    /// Records that merge-table entry `item` applies to a pair of the piece.
    fn insert(&mut self, item: u32) {
        let rank = self.rank(item);
        if self.bound.is_some_and(|b| rank > b) {
            return;
        }
        let pos = match self.items[..self.len].binary_search_by_key(&rank, |&x| self.rank(x)) {
            Ok(_) => return, // the same rank is the same entry
            Err(pos) => pos,
        };
        if self.len == CANDIDATES {
            // Full: drop the highest rank; everything not kept then ranks above the new bound.
            let dropped = match self.items.get(pos) {
                Some(_) => self.rank(self.items[CANDIDATES - 1]),
                None => rank,
            };
            let b = dropped.saturating_sub(1);
            self.bound = Some(self.bound.map_or(b, |old| old.min(b)));
            if pos == CANDIDATES {
                return;
            }
            self.len -= 1;
        }
        self.items.copy_within(pos..self.len, pos + 1);
        self.items[pos] = item;
        self.len += 1;
    }

    /// Removes and returns the lowest-ranked entry.
    fn pop_lowest(&mut self) -> Option<Entry> {
        if self.len == 0 {
            return None;
        }
        let first = self.items[0];
        self.items.copy_within(1..self.len, 0);
        self.len -= 1;
        self.table.get(first as usize).map(unpack)
    }
}

impl fmt::Debug for Tokenizer<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("merges", &self.merge_count())
            .field("bos", &self.head.bos)
            .field("eos", &self.head.eos)
            .finish_non_exhaustive()
    }
}

/// Every key the tokenizer reads.
const KEYS: [&str; 10] = [
    KEY_MODEL,
    KEY_PRE,
    KEY_TOKENS,
    KEY_MERGES,
    KEY_BOS,
    KEY_EOS,
    KEY_OFFSETS,
    KEY_SORTED,
    KEY_MERGE_TABLE,
    KEY_BYTE_TOKENS,
];

/// The values of [`KEYS`] in a file, found in one pass over its metadata (the first of a
/// repeated key wins, as with [`Gguf::get`]): each look-up of `Gguf::get` walks the metadata,
/// token strings included.
#[derive(Clone, Copy)]
struct Meta<'a> {
    bytes: &'a [u8],
    values: [Option<Value<'a>>; KEYS.len()],
}

impl<'a> Meta<'a> {
    fn read(gguf: &Gguf<'a>) -> Self {
        let mut values = [None; KEYS.len()];
        for (k, v) in gguf.metadata() {
            if let Some(i) = KEYS.iter().position(|key| *key == k) {
                values[i].get_or_insert(v);
            }
        }
        Meta {
            bytes: gguf.bytes(),
            values,
        }
    }

    fn get(&self, key: &str) -> Option<Value<'a>> {
        KEYS.iter()
            .position(|k| *k == key)
            .and_then(|i| self.values[i])
    }

    /// True if the file has any of the precomputed-table keys (then it must have all of them).
    fn has_tables(&self) -> bool {
        TABLE_KEYS.iter().any(|k| self.get(k).is_some())
    }
}

fn string_array<'a>(meta: &Meta<'a>, key: &str) -> Result<Array<'a>> {
    let v = meta
        .get(key)
        .ok_or_else(|| Error::MissingKey { key: name(key) })?;
    match v.as_array() {
        Some(a) if a.elem_type() == ValueType::String => Ok(a),
        _ => Err(Error::BadKey {
            key: name(key),
            expected: "an array of strings",
        }),
    }
}

/// The elements of the u32 array `key` as they lie in the file, after checking that there are
/// `len` of them.
fn u32_array<'a>(
    meta: &Meta<'a>,
    key: &str,
    len: usize,
    reason: &'static str,
) -> Result<&'a [Word]> {
    let v = meta
        .get(key)
        .ok_or_else(|| Error::MissingKey { key: name(key) })?;
    let a = match v.as_array() {
        Some(a) if a.elem_type() == ValueType::U32 => a,
        _ => {
            return Err(Error::BadKey {
                key: name(key),
                expected: "an array of u32",
            })
        }
    };
    if a.len() != len {
        return Err(bad(reason));
    }
    // The parser checked that the array's elements lie inside the file.
    let bytes = a
        .len()
        .checked_mul(4)
        .and_then(|n| meta.bytes.get(a.offset()..a.offset().checked_add(n)?))
        .ok_or(bad("a tokenizer table lies outside the file"))?;
    Ok(bytes.as_chunks::<4>().0)
}

fn require_str(meta: &Meta<'_>, key: &str, want: &str, reason: &'static str) -> Result<()> {
    let v = meta
        .get(key)
        .ok_or_else(|| Error::MissingKey { key: name(key) })?;
    let s = v.as_str().ok_or_else(|| Error::BadKey {
        key: name(key),
        expected: "a string",
    })?;
    if s == want {
        Ok(())
    } else {
        Err(bad(reason))
    }
}

fn optional_id(
    meta: &Meta<'_>,
    key: &str,
    n_vocab: usize,
    reason: &'static str,
) -> Result<Option<u32>> {
    let Some(v) = meta.get(key) else {
        return Ok(None);
    };
    let id = v.as_u64().ok_or_else(|| Error::BadKey {
        key: name(key),
        expected: "a non-negative integer token id",
    })?;
    match u32::try_from(id) {
        Ok(id) if (id as usize) < n_vocab => Ok(Some(id)),
        _ => Err(bad(reason)),
    }
}

/// Token `id`'s string (GPT-2 form, as UTF-8 bytes) given the offset table.
fn raw_token<'a>(tokens: &'a [u8], offsets: &[Word], id: u32) -> &'a [u8] {
    let i = id as usize;
    match (offsets.get(i), offsets.get(i.wrapping_add(1))) {
        (Some(s), Some(e)) => tokens
            .get((word(s) as usize).saturating_add(STR_LEN_BYTES)..word(e) as usize)
            .unwrap_or_default(),
        _ => &[],
    }
}

/// Orders `t` against the concatenation `a ++ b` without building it.
fn cmp_concat(t: &[u8], a: &[u8], b: &[u8]) -> Ordering {
    let n = t.len().min(a.len());
    match t[..n].cmp(&a[..n]) {
        Ordering::Equal if t.len() < a.len() => Ordering::Less,
        Ordering::Equal => t[a.len()..].cmp(b),
        o => o,
    }
}

/// Searches `sorted` for the token whose string compares `Equal` under `cmp`.
fn find_by(sorted: &[Word], mut cmp: impl FnMut(u32) -> Ordering) -> Option<u32> {
    sorted
        .binary_search_by(|id| cmp(word(id)))
        .ok()
        .and_then(|i| sorted.get(i).map(word))
}

/// Index of the entry for the pair `(left, right)` in a merge table sorted by pair: binary
/// search, `O(log M)`.
fn merge_index(merges: &[Packed], left: u32, right: u32) -> Option<u32> {
    // Branch-free lower bound on the (left, right) key: the loop always runs ceil(log2(M))
    // times and compiles to conditional moves.
    let want = (u64::from(left) << 32) | u64::from(right);
    let mut base = 0usize;
    let mut size = merges.len();
    while size > 1 {
        let half = size / 2;
        let mid = base + half;
        if merges.get(mid).is_some_and(|e| pair_key(e) <= want) {
            base = mid;
        }
        size -= half;
    }
    match merges.get(base) {
        Some(e) if pair_key(e) == want => Some(base as u32), // M <= u32::MAX
        _ => None,
    }
}

/// The token strings with offsets and sorted ids: string <-> id, while the tables are built or
/// checked.
#[derive(Clone, Copy)]
struct Vocab<'t> {
    tokens: &'t [u8],
    offsets: &'t [Word],
    sorted: &'t [Word],
}

impl Vocab<'_> {
    fn tok(&self, id: u32) -> &[u8] {
        raw_token(self.tokens, self.offsets, id)
    }

    fn find(&self, s: &[u8]) -> Option<u32> {
        find_by(self.sorted, |id| self.tok(id).cmp(s))
    }

    /// Checks that `sorted` lists every id once, in strictly increasing string order (which
    /// also shows that no two tokens are equal). `O(V)` comparisons.
    fn check_sorted(&self) -> Result<()> {
        let n = self.sorted.len();
        if self.sorted.iter().any(|id| word(id) as usize >= n) {
            return Err(bad(
                "tokenizer.mhmoe.sorted_ids has an id outside the vocabulary",
            ));
        }
        for w in self.sorted.windows(2) {
            let (a, b) = (word(&w[0]), word(&w[1]));
            match self.tok(a).cmp(self.tok(b)) {
                Ordering::Less => {}
                Ordering::Equal if a == b => {
                    return Err(bad("tokenizer.mhmoe.sorted_ids lists a token twice"))
                }
                Ordering::Equal => return Err(bad("two tokens have the same string")),
                Ordering::Greater => {
                    return Err(bad(
                        "tokenizer.mhmoe.sorted_ids is not in the order of the token strings",
                    ))
                }
            }
        }
        Ok(())
    }

    /// The token of single byte `b`.
    fn byte_token(&self, b: u8) -> Result<u32> {
        let mut buf = [0u8; 4];
        let s = byte_to_unicode(b).encode_utf8(&mut buf);
        self.find(s.as_bytes()).ok_or(bad(
            "a single-byte token is missing (all 256 byte tokens are required)",
        ))
    }

    /// Merge `s` of rank `rank` as a merge-table entry.
    fn merge(&self, s: &str, rank: usize) -> Result<Entry> {
        let (left, right) = s
            .split_once(' ')
            .ok_or(bad("a merge has no space between its two tokens"))?;
        if left.is_empty() || right.is_empty() || right.contains(' ') {
            return Err(bad(
                "a merge is not two non-empty tokens separated by one space",
            ));
        }
        let (l, r) = (left.as_bytes(), right.as_bytes());
        let l_id = self
            .find(l)
            .ok_or(bad("a merge's left token is not in the vocabulary"))?;
        let r_id = self
            .find(r)
            .ok_or(bad("a merge's right token is not in the vocabulary"))?;
        let merged = find_by(self.sorted, |id| cmp_concat(self.tok(id), l, r)).ok_or(bad(
            "a merge's result (left + right) is not in the vocabulary",
        ))?;
        // The number of merges fits in u32 (checked by the caller).
        Ok([l_id, r_id, rank as u32, merged])
    }
}

/// The token and merge arrays, checked to be arrays of strings of at most `u32::MAX` entries.
fn string_arrays<'a>(meta: &Meta<'a>) -> Result<(Array<'a>, Array<'a>, Layout)> {
    let tokens = string_array(meta, KEY_TOKENS)?;
    let merges = string_array(meta, KEY_MERGES)?;
    let layout = Layout::new(tokens.len(), merges.len())?;
    Ok((tokens, merges, layout))
}

/// Walks the token strings: checks that each is in GPT-2 byte-to-unicode form and lies where a
/// GGUF string array puts it, and calls `at(i, offset)` with the offset of token `i` from the
/// first element for `i` in `0..V`, then with `V` and the end of the last. Returns the bytes of
/// the elements and the longest token in raw bytes.
fn walk_tokens<'a>(
    meta: &Meta<'a>,
    tokens: Array<'a>,
    mut at: impl FnMut(usize, u32) -> Result<()>,
) -> Result<(&'a [u8], usize)> {
    let file = meta.bytes;
    let base = tokens.offset();
    let offset = |off: usize| u32::try_from(off).map_err(|_| bad("the token strings exceed 4 GiB"));
    let mut off = 0usize;
    let mut max_token_bytes = 0usize;
    let mut count = 0usize;
    for v in tokens.iter() {
        let s = v.as_str().ok_or(bad("a token is not a string"))?;
        at(count, offset(off)?)?;
        let start = base
            .checked_add(off)
            .and_then(|p| p.checked_add(STR_LEN_BYTES))
            .ok_or(bad("token string offset overflows"))?;
        let here = file.get(start..).map(<[u8]>::as_ptr);
        if here != Some(s.as_ptr()) {
            return Err(bad("token strings are not laid out as GGUF strings"));
        }
        let mut chars = 0usize;
        for c in s.chars() {
            if unicode_to_byte(c).is_none() {
                return Err(bad("a token string is not in GPT-2 byte-to-unicode form"));
            }
            chars += 1;
        }
        max_token_bytes = max_token_bytes.max(chars);
        off = off
            .checked_add(STR_LEN_BYTES + s.len())
            .ok_or(bad("token string offset overflows"))?;
        count += 1;
    }
    if count != tokens.len() {
        return Err(bad("the token array is shorter than its length"));
    }
    at(count, offset(off)?)?;
    let token_data = base
        .checked_add(off)
        .and_then(|end| file.get(base..end))
        .ok_or(bad("the token array lies outside the file"))?;
    Ok((token_data, max_token_bytes))
}

/// The optional special tokens.
fn specials(meta: &Meta<'_>, n_vocab: usize) -> Result<(Option<u32>, Option<u32>)> {
    let bos = optional_id(
        meta,
        KEY_BOS,
        n_vocab,
        "tokenizer.ggml.bos_token_id is not below the vocabulary size",
    )?;
    let eos = optional_id(
        meta,
        KEY_EOS,
        n_vocab,
        "tokenizer.ggml.eos_token_id is not below the vocabulary size",
    )?;
    Ok((bos, eos))
}

/// Checks the precomputed tables of `gguf` against its strings and returns them, in place.
/// Uses no memory beyond a few words of stack.
fn check_file_tables<'a>(
    meta: &Meta<'a>,
    tokens: Array<'a>,
    merge_strings: Array<'a>,
    layout: Layout,
) -> Result<(Head<'a>, Tables<'a>)> {
    let (n_vocab, n_merges) = (layout.n_vocab, layout.n_merges);
    let offsets = u32_array(
        meta,
        KEY_OFFSETS,
        n_vocab + 1,
        "tokenizer.mhmoe.token_offsets does not have V + 1 entries",
    )?;
    let sorted = u32_array(
        meta,
        KEY_SORTED,
        n_vocab,
        "tokenizer.mhmoe.sorted_ids does not have V entries",
    )?;
    let merge_words = u32_array(
        meta,
        KEY_MERGE_TABLE,
        n_merges * MERGE_WORDS, // fits: Layout::new checked 4 M
        "tokenizer.mhmoe.merge_table does not have 4 M entries",
    )?;
    let byte_words = u32_array(
        meta,
        KEY_BYTE_TOKENS,
        BYTE_WORDS,
        "tokenizer.mhmoe.byte_tokens does not have 256 entries",
    )?;
    let merges: &[Packed] = merge_words.as_flattened().as_chunks().0;
    let byte_tokens: &[Word; BYTE_WORDS] = byte_words
        .try_into()
        .map_err(|_| bad("tokenizer.mhmoe.byte_tokens does not have 256 entries"))?;

    // 1. Offsets: exactly where the parser found each string.
    let (token_data, max_token_bytes) = walk_tokens(meta, tokens, |i, off| match offsets.get(i) {
        Some(w) if word(w) == off => Ok(()),
        _ => Err(bad(
            "tokenizer.mhmoe.token_offsets does not match the token strings",
        )),
    })?;
    let vocab = Vocab {
        tokens: token_data,
        offsets,
        sorted,
    };

    // 2. Sorted ids: a strictly increasing list of ids below V is a permutation, and shows the
    // tokens are unique.
    vocab.check_sorted()?;

    // 3. Byte tokens: the (unique) token of each byte.
    for (b, w) in (0..=255u8).zip(byte_tokens) {
        if vocab.byte_token(b)? != word(w) {
            return Err(bad(
                "tokenizer.mhmoe.byte_tokens does not match the single-byte tokens",
            ));
        }
    }

    // 4. Merges: the table is sorted by pair without repeats, and merge r's entry (found by its
    // pair) has rank r and its result. M strings then account for M distinct entries (their
    // ranks differ), so the table is exactly the one the strings define.
    if merges
        .windows(2)
        .any(|w| pair_key(&w[0]) >= pair_key(&w[1]))
    {
        return Err(bad(
            "tokenizer.mhmoe.merge_table is not sorted by (left, right) without repeats",
        ));
    }
    let mismatch = bad("tokenizer.mhmoe.merge_table does not match tokenizer.ggml.merges");
    let mut count = 0usize;
    for (rank, v) in merge_strings.iter().enumerate() {
        let s = v.as_str().ok_or(bad("a merge is not a string"))?;
        let want = vocab.merge(s, rank)?;
        let got = merge_index(merges, want[LEFT], want[RIGHT])
            .and_then(|i| merges.get(i as usize))
            .map(unpack)
            .ok_or(mismatch.clone())?;
        if got == want {
            count += 1;
            continue;
        }
        // An earlier merge claimed this entry: if its string has the same pair, the merge list
        // repeats a pair (the error a file without tables gets); otherwise the table is wrong.
        let earlier = (got[RANK] as usize) < rank
            && merge_strings
                .get(got[RANK] as usize)
                .and_then(|v| v.as_str())
                .and_then(|s| vocab.merge(s, got[RANK] as usize).ok())
                .is_some_and(|e| (e[LEFT], e[RIGHT]) == (want[LEFT], want[RIGHT]));
        return Err(if earlier {
            bad("two merges join the same pair of tokens")
        } else {
            mismatch
        });
    }
    if count != n_merges {
        return Err(bad("the merge array is shorter than its length"));
    }

    let (bos, eos) = specials(meta, n_vocab)?;
    Ok((
        Head {
            tokens: token_data,
            bos,
            eos,
            max_token_bytes,
        },
        Tables {
            offsets,
            sorted,
            merges,
            byte_tokens,
        },
    ))
}

/// Builds the tables of a file without them in `ws` (at least `4 * layout.words` bytes).
fn build_tables<'a: 'w, 'w>(
    meta: &Meta<'a>,
    tokens: Array<'a>,
    merge_strings: Array<'a>,
    layout: Layout,
    ws: &'w mut [u8],
) -> Result<(Head<'a>, Tables<'w>)> {
    let (merge_table, offsets, sorted, byte_tokens) = layout
        .split_mut(ws)
        .ok_or(bad("the workspace does not fit the tables"))?;

    // 1. Offsets of the token strings, checked against the parser's view of each string.
    let (token_data, max_token_bytes) = walk_tokens(meta, tokens, |i, off| {
        let slot = offsets
            .get_mut(i)
            .ok_or(bad("the token array is longer than its length"))?;
        *slot = off.to_le_bytes();
        Ok(())
    })?;
    let offsets: &'w [Word] = offsets;

    // 2. Ids sorted by string; equal neighbours mean a duplicate token.
    for (i, s) in sorted.iter_mut().enumerate() {
        *s = (i as u32).to_le_bytes(); // n_vocab <= u32::MAX was checked by Layout::new
    }
    let tok = |id: &Word| raw_token(token_data, offsets, word(id));
    sorted.sort_unstable_by(|x, y| tok(x).cmp(tok(y)));
    let sorted: &'w [Word] = sorted;
    let vocab = Vocab {
        tokens: token_data,
        offsets,
        sorted,
    };
    vocab.check_sorted()?;

    // 3. The byte -> token table.
    for (b, slot) in (0..=255u8).zip(byte_tokens.iter_mut()) {
        *slot = vocab.byte_token(b)?.to_le_bytes();
    }
    let byte_tokens: &'w [Word; BYTE_WORDS] = byte_tokens;

    // 4. The merge table, sorted by pair; equal neighbours mean a duplicate merge.
    let mut count = 0usize;
    for (rank, (v, entry)) in merge_strings.iter().zip(merge_table.iter_mut()).enumerate() {
        let s = v.as_str().ok_or(bad("a merge is not a string"))?;
        *entry = pack(vocab.merge(s, rank)?);
        count += 1;
    }
    if count != layout.n_merges {
        return Err(bad("the merge array is shorter than its length"));
    }
    merge_table.sort_unstable_by_key(pair_key);
    if merge_table
        .windows(2)
        .any(|w| pair_key(&w[0]) == pair_key(&w[1]))
    {
        return Err(bad("two merges join the same pair of tokens"));
    }
    let merges: &'w [Packed] = merge_table;

    let (bos, eos) = specials(meta, layout.n_vocab)?;
    Ok((
        Head {
            tokens: token_data,
            bos,
            eos,
            max_token_bytes,
        },
        Tables {
            offsets,
            sorted,
            merges,
            byte_tokens,
        },
    ))
}

/// The checks every file gets first: the tokenizer kind and the string arrays.
fn check_kind<'a>(meta: &Meta<'a>) -> Result<(Array<'a>, Array<'a>, Layout)> {
    require_str(
        meta,
        KEY_MODEL,
        "gpt2",
        "tokenizer.ggml.model must be \"gpt2\" (byte-level BPE)",
    )?;
    require_str(
        meta,
        KEY_PRE,
        "mhmoe-space",
        "tokenizer.ggml.pre must be \"mhmoe-space\"",
    )?;
    string_arrays(meta)
}

impl<'a, 'w> Tokenizer<'a, 'w> {
    /// Workspace size, in `u32` words, that [`Tokenizer::new`] needs for this file: 0 if the
    /// file has the precomputed tables (`tokenizer.mhmoe.*`, see the
    /// [module documentation](self)), else `2 V + 4 M + 257` for `V` tokens and `M` merges.
    ///
    /// # Errors
    /// [`Error::MissingKey`] / [`Error::BadKey`] if `tokenizer.ggml.tokens` or
    /// `tokenizer.ggml.merges` is missing or not an array of strings; [`Error::BadTokenizer`] if
    /// the counts do not fit in `u32` or the size overflows `usize`.
    pub fn workspace_len(gguf: &Gguf<'_>) -> Result<usize> {
        let meta = Meta::read(gguf);
        let (_, _, layout) = string_arrays(&meta)?;
        Ok(if meta.has_tables() { 0 } else { layout.words })
    }

    /// Validates the tokenizer metadata of `gguf` and its precomputed tables, or builds the
    /// tables in `workspace` if the file has none.
    ///
    /// Only the first [`Tokenizer::workspace_len`] words of `workspace` are used (none when the
    /// file has the tables: pass `&mut []`). Checks: `tokenizer.ggml.model` is `"gpt2"`,
    /// `tokenizer.ggml.pre` is `"mhmoe-space"`; tokens and merges are arrays of strings with at
    /// most `u32::MAX` entries; every token string is in GPT-2 byte-to-unicode form (empty
    /// strings are allowed and decode to nothing) and no two tokens are equal; all 256
    /// single-byte tokens exist; each merge is `"left right"` with exactly one space, both
    /// halves known tokens and their concatenation a known token, and no pair appears twice;
    /// `bos`/`eos` ids, when present, are integers below the vocabulary size.
    ///
    /// A file with the tables must have all four keys, each an array of u32 of its exact
    /// length, and each table must be exactly what the strings define (the same one the
    /// workspace would hold): the offsets where the strings are, the sorted ids strictly
    /// increasing by string (so a permutation of the ids), the byte tokens those of the bytes,
    /// and the merge table sorted by pair without repeats with, for the merge of rank `r`, an
    /// entry of rank `r` for its pair and result. This takes no memory of its own: a wrong
    /// table is an error, never a wrong encoding.
    ///
    /// # Errors
    /// [`Error::BufferTooSmall`] if `workspace` is shorter than [`Tokenizer::workspace_len`];
    /// [`Error::MissingKey`] / [`Error::BadKey`] for a missing key (also one of the four table
    /// keys when another is present) or a value of the wrong type; [`Error::BadTokenizer`]
    /// naming the rule for everything else. Never panics.
    pub fn new(gguf: &Gguf<'a>, workspace: &'w mut [u32]) -> Result<Self>
    where
        'a: 'w,
    {
        let meta = Meta::read(gguf);
        let (tokens, merges, layout) = check_kind(&meta)?;
        let (head, tables) = if meta.has_tables() {
            check_file_tables(&meta, tokens, merges, layout)?
        } else {
            if workspace.len() < layout.words {
                return Err(Error::BufferTooSmall {
                    what: "tokenizer workspace (u32 words)",
                    needed: layout.words,
                    got: workspace.len(),
                });
            }
            build_tables(&meta, tokens, merges, layout, words_as_bytes(workspace))?
        };
        Ok(Tokenizer { head, tables })
    }

    /// Number of tokens `V`; valid ids are `0..V`.
    pub fn vocab_size(&self) -> usize {
        self.tables.sorted.len()
    }

    /// Number of merges `M`.
    pub fn merge_count(&self) -> usize {
        self.tables.merges.len()
    }

    /// The beginning-of-sequence token, if the file names one. [`Tokenizer::encode`] never adds
    /// it; prepend it yourself if the model expects it.
    pub fn bos(&self) -> Option<u32> {
        self.head.bos
    }

    /// The end-of-sequence token, if the file names one.
    pub fn eos(&self) -> Option<u32> {
        self.head.eos
    }

    /// The token of the single byte `b`.
    pub fn byte_token(&self, b: u8) -> u32 {
        word(&self.tables.byte_tokens[b as usize])
    }

    /// The longest token in raw bytes: a buffer this long always suits
    /// [`Tokenizer::token_bytes_into`].
    pub fn max_token_bytes(&self) -> usize {
        self.head.max_token_bytes
    }

    fn check_id(&self, id: u32) -> Result<()> {
        if (id as usize) < self.vocab_size() {
            Ok(())
        } else {
            Err(Error::TokenOutOfRange {
                token: id,
                vocab_size: self.vocab_size(),
            })
        }
    }

    /// Token `id`'s string as stored in the file (GPT-2 byte-to-unicode form, e.g. `"Ġthe"`).
    /// `O(length)`: the string is re-checked as UTF-8.
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] if `id >= vocab_size()`.
    pub fn token_str(&self, id: u32) -> Result<&'a str> {
        self.check_id(id)?;
        core::str::from_utf8(raw_token(self.head.tokens, self.tables.offsets, id))
            .map_err(|_| bad("a token string is not UTF-8"))
    }

    /// Calls `f` with the raw bytes of token `id`, in one or more consecutive chunks (of at most
    /// 64 bytes; none for an empty token). Uses 64 bytes of stack, `O(length)` time.
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] if `id >= vocab_size()`.
    pub fn token_bytes<F: FnMut(&[u8]) + ?Sized>(&self, id: u32, f: &mut F) -> Result<()> {
        let s = self.token_str(id)?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        for c in s.chars() {
            // Every character was checked to be in the map when the tokenizer was built.
            buf[n] = unicode_to_byte(c).unwrap_or(b'?');
            n += 1;
            if n == buf.len() {
                f(&buf);
                n = 0;
            }
        }
        if n > 0 {
            f(&buf[..n]);
        }
        Ok(())
    }

    /// Writes the raw bytes of token `id` to the start of `out` and returns how many there are.
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] for a bad id; [`Error::BufferTooSmall`] if `out` is shorter
    /// than the token (a buffer of [`Tokenizer::max_token_bytes`] always suffices).
    pub fn token_bytes_into(&self, id: u32, out: &mut [u8]) -> Result<usize> {
        let s = self.token_str(id)?;
        let needed = s.chars().count();
        if needed > out.len() {
            return Err(Error::BufferTooSmall {
                what: "token bytes",
                needed,
                got: out.len(),
            });
        }
        for (o, c) in out.iter_mut().zip(s.chars()) {
            *o = unicode_to_byte(c).unwrap_or(b'?');
        }
        Ok(needed)
    }

    /// The id of the token whose string (in GPT-2 byte-to-unicode form, as stored in the file)
    /// is `s`, by binary search: `O(|s| log V)`. Useful to find special tokens such as
    /// `"<|eos|>"`.
    pub fn find_token(&self, s: &str) -> Option<u32> {
        let (tokens, offsets) = (self.head.tokens, self.tables.offsets);
        find_by(self.tables.sorted, |id| {
            raw_token(tokens, offsets, id).cmp(s.as_bytes())
        })
    }

    /// The index of the merge-table entry for the pair `(left, right)`, if there is one:
    /// binary search, `O(log M)`.
    fn merge_of(&self, left: u32, right: u32) -> Option<u32> {
        merge_index(self.tables.merges, left, right)
    }

    /// Merge-table entry `i` (from [`Tokenizer::merge_of`]).
    fn entry(&self, i: u32) -> Option<Entry> {
        self.tables.merges.get(i as usize).map(unpack)
    }

    /// Encodes `text` into `out` and returns the number of tokens written.
    ///
    /// No `bos` is added. `out` doubles as the work list: a piece (the bytes from one space up
    /// to the next) is first written to `out` as one token per byte, then merged in place. So
    /// `out.len() >= text.len()` always suffices, and a shorter buffer works as long as the
    /// tokens so far plus the next piece's bytes fit.
    ///
    /// # Algorithm and complexity
    /// A piece of `m` bytes is merged in passes. A pass takes the lowest merge rank `r` among
    /// the piece's adjacent pairs and walks the piece once, left to right, merging every
    /// occurrence of that pair in order and, right where they arise, new pairs that rank at or
    /// below `r` (which merge lists from BPE training never have, but a hand-made one may).
    /// Each such merge is the one the "lowest rank, leftmost first" rule would pick next, so the
    /// result is exactly that rule's; after the pass every pair ranks above `r`, so ranks rise
    /// from pass to pass and the number of passes `P` is at most the number of distinct merges
    /// that fire (and at most `m - 1`, as each pass merges at least once).
    ///
    /// Runs of symbols the pass does not touch are skipped by a plain search for the lowest
    /// pair; only symbols made by a merge need their pairs looked up (`O(log M)` each). The next
    /// passes' ranks come from a set of the 32 lowest-ranked pairs known to be present (kept on
    /// the stack, 128 bytes), fed by those lookups; the piece is scanned again (one lookup per
    /// pair) only when that set runs dry while pairs that did not fit may remain.
    ///
    /// Time per piece is therefore `O(P m + (merges + scans m) log M)`: linear for words and
    /// runs of one character (1 MB of `a`: a handful of passes), `O(m^2)` at worst.
    ///
    /// # Errors
    /// [`Error::BufferTooSmall`] (with `needed = text.len()`, a size that always works) when
    /// `out` runs out of room; the contents of `out` are then unspecified.
    pub fn encode(&self, text: &[u8], out: &mut [u32]) -> Result<usize> {
        let mut n = 0;
        let mut start = 0;
        while start < text.len() {
            let end = text
                .get(start + 1..)
                .and_then(|rest| rest.iter().position(|&b| b == b' '))
                .map_or(text.len(), |p| start + 1 + p);
            let piece = &text[start..end];
            let got = out.len();
            let syms = out
                .get_mut(n..n + piece.len())
                .ok_or_else(|| Error::BufferTooSmall {
                    what: "token output",
                    needed: text.len(),
                    got,
                })?;
            for (s, &b) in syms.iter_mut().zip(piece) {
                *s = self.byte_token(b);
            }
            n += self.merge_piece(syms);
            start = end;
        }
        Ok(n)
    }

    /// Applies the BPE merges to the symbols of one piece in place; returns the new length.
    fn merge_piece(&self, syms: &mut [u32]) -> usize {
        let mut len = syms.len();
        let mut cands = Candidates::new(self.tables.merges);
        let mut scan = true;
        while len >= 2 {
            if scan {
                cands = Candidates::new(self.tables.merges);
                for w in syms[..len].windows(2) {
                    if let Some(m) = self.merge_of(w[0], w[1]) {
                        cands.insert(m);
                    }
                }
                scan = false;
            }
            match cands.pop_lowest() {
                Some(lowest) => len = self.merge_pass(&mut syms[..len], lowest, &mut cands),
                // Pairs that did not fit in the set may remain: look again.
                None if cands.bound.is_some() => scan = true,
                None => break,
            }
        }
        len
    }

    /// One left-to-right pass at threshold `r = lowest[RANK]`, where no pair ranks below `r`
    /// and only the pair `(lowest[LEFT], lowest[RIGHT])` can rank `r`. Performs, in the order
    /// of the "lowest rank, leftmost first" rule, every merge that rule makes while the lowest
    /// rank is at most `r`. Returns the new length; afterwards every pair ranks above `r`, and
    /// every pair with a merge that involves a symbol made in this pass was offered to `cands`.
    ///
    /// The symbols are split into a finished prefix `syms[..w]` (its pairs rank above `r`), a
    /// `pending` symbol, and the untouched rest `syms[i..]` (its pairs rank `r` or above, as at
    /// the start). Only the two pairs around `pending` can rank at or below `r`; the rule takes
    /// the lower of them (the left one on a tie: it is further left than every other pair
    /// ranking `r`). A pair of two untouched symbols ranks `r` only if it is the lowest pair, so
    /// lookups are needed only next to symbols made in this pass, and runs of untouched symbols
    /// are skipped with a plain search for the lowest pair.
    fn merge_pass(&self, syms: &mut [u32], lowest: Entry, cands: &mut Candidates<'_>) -> usize {
        let r = lowest[RANK];
        let (a, b) = (lowest[LEFT], lowest[RIGHT]);
        let mut w = 0;
        let mut i = 1;
        let mut pending = syms[0];
        let mut made = false; // `pending` was made in this pass
        loop {
            let next = syms.get(i).copied();
            if !made {
                if next == Some(b) && pending == a {
                    pending = lowest[MERGED];
                    i += 1;
                    made = true;
                    continue;
                }
                // `pending` is the untouched `syms[i - 1]`: the untouched symbols up to the next
                // occurrence of the lowest pair are finished as they are.
                let from = i - 1;
                let k = syms[from..]
                    .windows(2)
                    .position(|p| p[0] == a && p[1] == b)
                    .map_or(syms.len(), |p| from + p);
                syms.copy_within(from..k, w);
                w += k - from;
                let Some(&at) = syms.get(k) else {
                    return w;
                };
                pending = at;
                i = k + 1;
                continue;
            }
            // A made `pending`: look up both of its pairs.
            let prev = w.checked_sub(1).and_then(|j| syms.get(j).copied());
            let left = prev.and_then(|p| self.merge_of(p, pending));
            let right = next.and_then(|n| self.merge_of(pending, n));
            let le = left.and_then(|m| self.entry(m)).filter(|e| e[RANK] <= r);
            let re = right.and_then(|m| self.entry(m)).filter(|e| e[RANK] <= r);
            match (le, re) {
                (Some(le), re) if re.is_none_or(|re| le[RANK] <= re[RANK]) => {
                    w -= 1;
                    pending = le[MERGED];
                }
                (_, Some(re)) => {
                    i += 1;
                    pending = re[MERGED];
                }
                _ => {
                    // Both pairs rank above r: candidates for later passes.
                    for m in [left, right].into_iter().flatten() {
                        cands.insert(m);
                    }
                    syms[w] = pending;
                    w += 1;
                    let Some(next) = next else {
                        return w;
                    };
                    pending = next;
                    i += 1;
                    made = false;
                }
            }
        }
    }

    /// A streaming decoder (shorthand for [`Decoder::new`]).
    pub fn decoder(&self) -> Decoder {
        Decoder::new()
    }
}

/// Streaming token-to-text decoder.
///
/// A UTF-8 character may be split across tokens, so the decoder keeps up to 3 pending bytes of
/// an incomplete character and hands complete `&str` pieces to a callback. Ill-formed bytes are
/// replaced by U+FFFD exactly as [`String::from_utf8_lossy`] would replace them in the whole
/// byte stream (one replacement per maximal invalid subsequence), however the stream is split
/// into tokens. Call [`Decoder::flush`] at the end of the stream: an incomplete character then
/// becomes U+FFFD.
///
/// It holds 4 bytes of state and no reference to the tokenizer, so it can live anywhere.
///
/// [`String::from_utf8_lossy`]: https://doc.rust-lang.org/std/string/struct.String.html#method.from_utf8_lossy
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decoder {
    pending: [u8; 3],
    n_pending: u8,
}

const REPLACEMENT: &str = "\u{FFFD}";

impl Decoder {
    /// A decoder with nothing pending.
    pub const fn new() -> Self {
        Decoder {
            pending: [0; 3],
            n_pending: 0,
        }
    }

    /// The bytes of the incomplete character held back (0 to 3 bytes).
    pub fn pending(&self) -> &[u8] {
        &self.pending[..self.n_pending as usize]
    }

    /// Decodes token `id` with `tok` and passes the text that became complete to `emit` (zero or
    /// more calls).
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] for a bad id; nothing is emitted and the state is unchanged.
    pub fn push<F: FnMut(&str) + ?Sized>(
        &mut self,
        tok: &Tokenizer<'_, '_>,
        id: u32,
        emit: &mut F,
    ) -> Result<()> {
        tok.token_bytes(id, &mut |b: &[u8]| self.push_bytes(b, emit))
    }

    /// Feeds raw bytes and passes the text that became complete to `emit` (zero or more calls).
    pub fn push_bytes<F: FnMut(&str) + ?Sized>(&mut self, bytes: &[u8], emit: &mut F) {
        let mut rest = bytes;
        // First finish (or reject) the pending character, one byte at a time.
        while self.n_pending > 0 {
            let Some((&b, tail)) = rest.split_first() else {
                return;
            };
            let n = self.n_pending as usize;
            let mut buf = [0u8; 4];
            buf[..n].copy_from_slice(&self.pending[..n]);
            buf[n] = b;
            match core::str::from_utf8(&buf[..=n]) {
                Ok(s) => {
                    emit(s);
                    self.n_pending = 0;
                    rest = tail;
                }
                Err(e) if e.error_len().is_none() && n < self.pending.len() => {
                    // Still a valid prefix (at most 3 bytes: 4 would be a whole character).
                    self.pending[n] = b;
                    self.n_pending += 1;
                    rest = tail;
                }
                Err(_) => {
                    // `b` cannot continue the character: replace the pending bytes and read `b`
                    // afresh below.
                    emit(REPLACEMENT);
                    self.n_pending = 0;
                }
            }
        }
        loop {
            match core::str::from_utf8(rest) {
                Ok(s) => {
                    if !s.is_empty() {
                        emit(s);
                    }
                    return;
                }
                Err(e) => {
                    let (valid, bad) = rest.split_at(e.valid_up_to());
                    if let Ok(s) = core::str::from_utf8(valid) {
                        if !s.is_empty() {
                            emit(s);
                        }
                    }
                    match e.error_len() {
                        Some(len) => {
                            emit(REPLACEMENT);
                            rest = bad.get(len..).unwrap_or_default();
                        }
                        None => {
                            // An incomplete character at the end: at most 3 bytes.
                            let n = bad.len().min(3);
                            self.pending[..n].copy_from_slice(&bad[..n]);
                            self.n_pending = n as u8;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: an incomplete pending character is emitted as U+FFFD.
    pub fn flush<F: FnMut(&str) + ?Sized>(&mut self, emit: &mut F) {
        if self.n_pending > 0 {
            self.n_pending = 0;
            emit(REPLACEMENT);
        }
    }
}

#[cfg(feature = "std")]
mod with_std {
    use super::{
        build_tables, check_file_tables, check_kind, Decoder, Head, Layout, Meta, Tables,
        Tokenizer, BYTE_WORDS,
    };
    use crate::error::Result;
    use crate::gguf::Gguf;
    use std::string::String;
    use std::vec;
    use std::vec::Vec;

    impl Tokenizer<'_, '_> {
        /// Encodes `text` into a new vector (no `bos` added). Needs `text.len()` words while
        /// working; the result is shrunk to fit.
        pub fn encode_to_vec(&self, text: &[u8]) -> Result<Vec<u32>> {
            let mut out = vec![0u32; text.len()];
            let n = self.encode(text, &mut out)?;
            out.truncate(n);
            out.shrink_to_fit();
            Ok(out)
        }

        /// Decodes `ids` to a string, replacing ill-formed UTF-8 with U+FFFD.
        ///
        /// # Errors
        /// [`crate::Error::TokenOutOfRange`] for a bad id.
        pub fn decode_to_string(&self, ids: &[u32]) -> Result<String> {
            let mut s = String::new();
            let mut d = Decoder::new();
            let mut emit = |t: &str| s.push_str(t);
            for &id in ids {
                d.push(self, id, &mut emit)?;
            }
            d.flush(&mut emit);
            Ok(s)
        }

        /// Concatenated raw bytes of `ids` (no UTF-8 handling).
        ///
        /// # Errors
        /// [`crate::Error::TokenOutOfRange`] for a bad id.
        pub fn decode_to_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
            let mut v = Vec::new();
            for &id in ids {
                self.token_bytes(id, &mut |b: &[u8]| v.extend_from_slice(b))?;
            }
            Ok(v)
        }
    }

    /// A tokenizer that owns its workspace (std only): build it once with
    /// [`TokenizerBuf::new`], then get the borrowing [`Tokenizer`] view with
    /// [`TokenizerBuf::tokenizer`] at no cost.
    pub struct TokenizerBuf<'a> {
        head: Head<'a>,
        /// The file's own tables, or `None` when they were built in `workspace`.
        file_tables: Option<Tables<'a>>,
        layout: Layout,
        workspace: Vec<u8>,
    }

    impl<'a> TokenizerBuf<'a> {
        /// Builds the tokenizer with all the checks of [`Tokenizer::new`], in a workspace of
        /// [`Tokenizer::workspace_len`] words that it allocates (none when the file has the
        /// precomputed tables).
        pub fn new(gguf: &Gguf<'a>) -> Result<Self> {
            let meta = Meta::read(gguf);
            let (tokens, merges, layout) = check_kind(&meta)?;
            if meta.has_tables() {
                let (head, tables) = check_file_tables(&meta, tokens, merges, layout)?;
                return Ok(TokenizerBuf {
                    head,
                    file_tables: Some(tables),
                    layout,
                    workspace: Vec::new(),
                });
            }
            // Layout::new checked that the bytes fit in usize.
            let mut workspace = vec![0u8; layout.words * 4];
            let head = build_tables(&meta, tokens, merges, layout, &mut workspace)?.0;
            Ok(TokenizerBuf {
                head,
                file_tables: None,
                layout,
                workspace,
            })
        }

        /// The tokenizer view.
        pub fn tokenizer(&self) -> Tokenizer<'a, '_> {
            const NO_BYTES: [[u8; 4]; BYTE_WORDS] = [[0; 4]; BYTE_WORDS];
            let tables = self
                .file_tables
                .or_else(|| self.layout.view(&self.workspace))
                // Cannot happen: the workspace was made for this layout.
                .unwrap_or(Tables {
                    offsets: &[],
                    sorted: &[],
                    merges: &[],
                    byte_tokens: &NO_BYTES,
                });
            Tokenizer {
                head: self.head,
                tables,
            }
        }
    }

    impl core::fmt::Debug for TokenizerBuf<'_> {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            self.tokenizer().fmt(f)
        }
    }
}

#[cfg(feature = "std")]
pub use with_std::TokenizerBuf;

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::sampler::Pcg32;
    use std::collections::HashMap;
    use std::string::{String, ToString};
    use std::vec;
    use std::vec::Vec;

    // ---- A minimal GGUF v3 writer: header, metadata, no tensors. ----

    #[derive(Clone)]
    enum Kv {
        Str(&'static str),
        Strs(Vec<String>),
        U32(u32),
        I32(i32),
        U32s(Vec<u32>),
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn gguf_bytes(kvs: &[(&str, Kv)]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // tensors
        out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
        for (key, v) in kvs {
            put_str(&mut out, key);
            match v {
                Kv::Str(s) => {
                    out.extend_from_slice(&8u32.to_le_bytes());
                    put_str(&mut out, s);
                }
                Kv::Strs(a) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&8u32.to_le_bytes());
                    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                    for s in a {
                        put_str(&mut out, s);
                    }
                }
                Kv::U32(x) => {
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Kv::I32(x) => {
                    out.extend_from_slice(&5u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Kv::U32s(a) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                    for x in a {
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        out
    }

    /// GPT-2 form of raw bytes.
    fn u(bytes: &[u8]) -> String {
        bytes.iter().map(|&b| byte_to_unicode(b)).collect()
    }

    fn byte_vocab() -> Vec<String> {
        (0..=255u8).map(|b| u(&[b])).collect()
    }

    /// Merges given as raw-byte halves; returns (tokens, merges) with one new token per merge
    /// (unless the concatenation already exists), appended in rank order.
    fn vocab_from_merges(pairs: &[(&[u8], &[u8])]) -> (Vec<String>, Vec<String>) {
        let mut tokens = byte_vocab();
        let mut merges = Vec::new();
        for (l, r) in pairs {
            let (l, r) = (u(l), u(r));
            let m = std::format!("{l}{r}");
            if !tokens.contains(&m) {
                tokens.push(m);
            }
            merges.push(std::format!("{l} {r}"));
        }
        (tokens, merges)
    }

    /// The hand-made test vocabulary (ids 256.. in this order, then the two specials).
    const HAND_MERGES: [(&[u8], &[u8]); 10] = [
        (b" ", b"t"),       // 0 -> 256 " t"
        (b"h", b"e"),       // 1 -> 257 "he"
        (b" t", b"he"),     // 2 -> 258 " the"
        (b"a", b"a"),       // 3 -> 259 "aa"
        (b"aa", b"aa"),     // 4 -> 260 "aaaa"
        (b"l", b"l"),       // 5 -> 261 "ll"
        (b"e", b"ll"),      // 6 -> 262 "ell"
        (b"h", b"ell"),     // 7 -> 263 "hell"
        (b"hell", b"o"),    // 8 -> 264 "hello"
        (b"\xc3", b"\xa9"), // 9 -> 265 "é"
    ];
    const BOS: u32 = 266;
    const EOS: u32 = 267;

    fn hand_kvs() -> Vec<(&'static str, Kv)> {
        let (mut tokens, merges) = vocab_from_merges(&HAND_MERGES);
        tokens.push("<|bos|>".to_string());
        tokens.push("<|eos|>".to_string());
        vec![
            ("general.architecture", Kv::Str("mhmoe")),
            (KEY_MODEL, Kv::Str("gpt2")),
            (KEY_PRE, Kv::Str("mhmoe-space")),
            (KEY_TOKENS, Kv::Strs(tokens)),
            (KEY_MERGES, Kv::Strs(merges)),
            (KEY_BOS, Kv::U32(BOS)),
            (KEY_EOS, Kv::U32(EOS)),
        ]
    }

    fn basic_kvs(tokens: Vec<String>, merges: Vec<String>) -> Vec<(&'static str, Kv)> {
        vec![
            (KEY_MODEL, Kv::Str("gpt2")),
            (KEY_PRE, Kv::Str("mhmoe-space")),
            (KEY_TOKENS, Kv::Strs(tokens)),
            (KEY_MERGES, Kv::Strs(merges)),
        ]
    }

    fn strings<'k>(kvs: &'k [(&str, Kv)], key: &str) -> &'k [String] {
        match kvs.iter().find(|(k, _)| *k == key) {
            Some((_, Kv::Strs(v))) => v,
            _ => panic!("no string array {key}"),
        }
    }

    /// The four precomputed tables of a valid vocabulary, computed the plain way (hash maps and
    /// a library sort), as `(key, values)`.
    fn reference_tables(tokens: &[String], merges: &[String]) -> [(&'static str, Vec<u32>); 4] {
        let mut offsets = vec![0u32];
        for t in tokens {
            offsets.push(offsets.last().unwrap() + 8 + t.len() as u32);
        }
        let mut sorted: Vec<u32> = (0..tokens.len() as u32).collect();
        sorted.sort_by_key(|&i| tokens[i as usize].as_bytes());
        let id: HashMap<&str, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32))
            .collect();
        let mut table: Vec<[u32; 4]> = merges
            .iter()
            .enumerate()
            .map(|(rank, m)| {
                let (l, r) = m.split_once(' ').unwrap();
                let merged = id[std::format!("{l}{r}").as_str()];
                [id[l], id[r], rank as u32, merged]
            })
            .collect();
        table.sort();
        let bytes = (0..=255u8).map(|b| id[u(&[b]).as_str()]).collect();
        [
            (KEY_OFFSETS, offsets),
            (KEY_SORTED, sorted),
            (KEY_MERGE_TABLE, table.concat()),
            (KEY_BYTE_TOKENS, bytes),
        ]
    }

    /// `kvs` plus the precomputed tables of its vocabulary.
    fn with_tables<'k>(kvs: &[(&'k str, Kv)]) -> Vec<(&'k str, Kv)> {
        let tables = reference_tables(strings(kvs, KEY_TOKENS), strings(kvs, KEY_MERGES));
        let mut out = kvs.to_vec();
        out.extend(tables.into_iter().map(|(k, v)| (k, Kv::U32s(v))));
        out
    }

    /// Builds a tokenizer from `kvs` twice, with the tables built in a workspace and with them
    /// in the file (and no workspace), and runs `f` with each.
    fn with_tok(kvs: &[(&str, Kv)], mut f: impl FnMut(&Tokenizer<'_, '_>)) {
        let bytes = gguf_bytes(kvs);
        let g = Gguf::parse(&bytes).unwrap();
        let mut ws = vec![0u32; Tokenizer::workspace_len(&g).unwrap()];
        f(&Tokenizer::new(&g, &mut ws).unwrap());

        let bytes = gguf_bytes(&with_tables(kvs));
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(Tokenizer::workspace_len(&g), Ok(0));
        f(&Tokenizer::new(&g, &mut []).unwrap());
    }

    fn build_err(kvs: &[(&str, Kv)]) -> Error {
        let bytes = gguf_bytes(kvs);
        let g = Gguf::parse(&bytes).unwrap();
        let mut ws = vec![0u32; 1 << 16];
        Tokenizer::new(&g, &mut ws).unwrap_err()
    }

    fn reason(e: Error) -> &'static str {
        match e {
            Error::BadTokenizer { reason } => reason,
            e => panic!("expected BadTokenizer, got {e:?}"),
        }
    }

    fn encode(tok: &Tokenizer<'_, '_>, text: &[u8]) -> Vec<u32> {
        let mut out = vec![0u32; text.len()];
        let n = tok.encode(text, &mut out).unwrap();
        out.truncate(n);
        out
    }

    fn decode_string(tok: &Tokenizer<'_, '_>, ids: &[u32]) -> Result<String> {
        let mut s = String::new();
        let mut d = Decoder::new();
        for &id in ids {
            d.push(tok, id, &mut |t: &str| s.push_str(t))?;
        }
        d.flush(&mut |t: &str| s.push_str(t));
        Ok(s)
    }

    fn decode_bytes(tok: &Tokenizer<'_, '_>, ids: &[u32]) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        for &id in ids {
            tok.token_bytes(id, &mut |b: &[u8]| v.extend_from_slice(b))?;
        }
        Ok(v)
    }

    /// The specification: repeatedly merge the leftmost pair of lowest rank, one at a time.
    fn reference_encode(tokens: &[String], merges: &[String], text: &[u8]) -> Vec<u32> {
        let id: HashMap<&str, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32))
            .collect();
        let mut table = HashMap::new();
        for (rank, m) in merges.iter().enumerate() {
            let (l, r) = m.split_once(' ').unwrap();
            let merged = id[std::format!("{l}{r}").as_str()];
            table.insert((id[l], id[r]), (rank, merged));
        }
        let mut out = Vec::new();
        let mut start = 0;
        for i in 1..=text.len() {
            if i == text.len() || text[i] == b' ' {
                let mut syms: Vec<u32> = text[start..i]
                    .iter()
                    .map(|&b| id[u(&[b]).as_str()])
                    .collect();
                loop {
                    let mut best: Option<(usize, usize, u32)> = None;
                    for j in 0..syms.len().saturating_sub(1) {
                        if let Some(&(rank, merged)) = table.get(&(syms[j], syms[j + 1])) {
                            if best.is_none_or(|b| rank < b.0) {
                                best = Some((rank, j, merged));
                            }
                        }
                    }
                    let Some((_, j, merged)) = best else { break };
                    syms[j] = merged;
                    syms.remove(j + 1);
                }
                out.extend_from_slice(&syms);
                start = i;
            }
        }
        out
    }

    fn random_bytes(rng: &mut Pcg32, len: usize, alphabet: &[u8]) -> Vec<u8> {
        (0..len)
            .map(|_| alphabet[rng.next_u32() as usize % alphabet.len()])
            .collect()
    }

    // ---- byte <-> unicode map ----

    #[test]
    fn byte_unicode_map_is_gpt2s_bijection() {
        let mut seen = std::collections::HashSet::new();
        let mut next_extra = 256u32;
        for b in 0..=255u8 {
            let c = byte_to_unicode(b);
            assert!(seen.insert(c));
            assert_eq!(unicode_to_byte(c), Some(b));
            let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
            if printable {
                assert_eq!(c as u32, b as u32);
            } else {
                assert_eq!(c as u32, next_extra, "byte {b}");
                next_extra += 1;
            }
        }
        assert_eq!(next_extra, 256 + 68);
        assert_eq!(byte_to_unicode(b' '), 'Ġ');
        assert_eq!(byte_to_unicode(b'\n'), 'Ċ');
        assert_eq!(byte_to_unicode(0xAD), '\u{143}');
        for c in [' ', '\0', '\u{A0}', '\u{AD}', '\u{144}', '日', '\u{FFFD}'] {
            assert_eq!(unicode_to_byte(c), None, "{c:?}");
        }
    }

    // ---- encoding ----

    #[test]
    fn encode_hand_cases() {
        with_tok(&hand_kvs(), |tok| {
            assert_eq!(tok.vocab_size(), 268);
            assert_eq!(tok.merge_count(), 10);
            assert_eq!(tok.bos(), Some(BOS));
            assert_eq!(tok.eos(), Some(EOS));
            // "h e" (rank 1) fires before "l l" (rank 5), so "e ll" never gets its chance.
            assert_eq!(encode(tok, b"hello"), [257, 261, b'o' as u32]);
            assert_eq!(encode(tok, b" the"), [258]);
            assert_eq!(encode(tok, b"the the"), [b't' as u32, 257, 258]);
            assert_eq!(encode(tok, b"aaaaa"), [260, b'a' as u32]);
            assert_eq!(encode(tok, b"aaaaaaaa"), [260, 260]);
            assert_eq!(
                encode(tok, b"a bc  d"),
                [97, 32, 98, 99, 32, 32, 100],
                "split before every space, nothing else"
            );
            assert_eq!(encode(tok, "é".as_bytes()), [265]);
            assert_eq!(encode(tok, "éé".as_bytes()), [265, 265]);
            assert_eq!(encode(tok, "\u{e9} \u{e9}".as_bytes()), [265, 32, 265]);
            assert_eq!(encode(tok, b"\n\t\0\xff"), [10, 9, 0, 255]);
            assert_eq!(encode(tok, b""), []);
            assert_eq!(encode(tok, b" "), [32]);
            assert_eq!(encode(tok, b"  t"), [32, 256]);
            // Special-token text is not special: it is encoded byte by byte.
            assert_eq!(encode(tok, b"<|eos|>").len(), 7);
        });
    }

    #[test]
    fn encode_matches_reference_on_random_text() {
        let (mut tokens, merges) = vocab_from_merges(&HAND_MERGES);
        tokens.push("<|bos|>".to_string());
        let mut rng = Pcg32::new(7);
        with_tok(&basic_kvs(tokens.clone(), merges.clone()), |tok| {
            for _ in 0..500 {
                let len = rng.next_u32() as usize % 40;
                let text = random_bytes(&mut rng, len, b"aaaehllot  \xc3\xa9");
                assert_eq!(
                    encode(tok, &text),
                    reference_encode(&tokens, &merges, &text),
                    "{text:?}"
                );
            }
        });
    }

    /// Random merge lists over a 3-letter alphabet, half of them with shuffled ranks (so that a
    /// merge may rank before the merge making one of its halves, which BPE training never does
    /// but a file may), checked against the one-merge-at-a-time reference.
    #[test]
    fn encode_matches_reference_on_random_merge_lists() {
        let mut rng = Pcg32::new(11);
        for case in 0..60 {
            let mut made: Vec<Vec<u8>> = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()];
            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            while pairs.len() < 25 {
                let l = made[rng.next_u32() as usize % made.len()].clone();
                let r = made[rng.next_u32() as usize % made.len()].clone();
                if l.len() + r.len() > 8 || pairs.contains(&(l.clone(), r.clone())) {
                    continue;
                }
                let m = [l.as_slice(), r.as_slice()].concat();
                if !made.contains(&m) {
                    made.push(m);
                }
                pairs.push((l, r));
            }
            if case % 2 == 1 {
                for i in (1..pairs.len()).rev() {
                    pairs.swap(i, rng.next_u32() as usize % (i + 1));
                }
            }
            let refs: Vec<(&[u8], &[u8])> = pairs
                .iter()
                .map(|(l, r)| (l.as_slice(), r.as_slice()))
                .collect();
            let (tokens, merges) = vocab_from_merges(&refs);
            with_tok(&basic_kvs(tokens.clone(), merges.clone()), |tok| {
                for _ in 0..40 {
                    let len = rng.next_u32() as usize % 30;
                    let text = random_bytes(&mut rng, len, b"aaabbc ");
                    assert_eq!(
                        encode(tok, &text),
                        reference_encode(&tokens, &merges, &text),
                        "case {case}: {text:?} with {merges:?}"
                    );
                }
            });
        }
    }

    #[test]
    fn encode_out_of_order_ranks_cascade() {
        // "aa a" ranks before "a a", which makes "aa".
        let (tokens, merges) = vocab_from_merges(&[(b"aa", b"a"), (b"a", b"a")]);
        with_tok(&basic_kvs(tokens, merges), |tok| {
            let (aaa, aa) = (256, 257);
            assert_eq!(encode(tok, b"aaaaaaa"), [aaa, aaa, 97]);
            assert_eq!(encode(tok, b"aaaaa"), [aaa, aa]);
        });
    }

    #[test]
    fn encode_1mb_single_piece_is_fast() {
        with_tok(&hand_kvs(), |tok| {
            let text = vec![b'a'; 1 << 20];
            let t0 = std::time::Instant::now();
            let ids = encode(tok, &text);
            assert_eq!(ids.len(), 1 << 18);
            assert!(ids.iter().all(|&t| t == 260));
            assert!(t0.elapsed().as_secs() < 5, "took {:?}", t0.elapsed());
        });
        // Out-of-order ranks: still a single pass.
        let (tokens, merges) = vocab_from_merges(&[(b"aa", b"a"), (b"a", b"a")]);
        with_tok(&basic_kvs(tokens, merges), |tok| {
            let text = vec![b'a'; 1 << 20];
            let t0 = std::time::Instant::now();
            let ids = encode(tok, &text);
            assert_eq!(ids.len(), (1 << 20) / 3 + 1);
            assert_eq!(ids.last(), Some(&97));
            assert!(t0.elapsed().as_secs() < 5, "took {:?}", t0.elapsed());
        });
    }

    #[test]
    fn encode_out_buffer_too_small() {
        with_tok(&hand_kvs(), |tok| {
            let mut out = [0u32; 3];
            assert_eq!(
                tok.encode(b"the the", &mut out),
                Err(Error::BufferTooSmall {
                    what: "token output",
                    needed: 7,
                    got: 3
                })
            );
            // Shorter than the text but enough for the tokens plus the next piece's bytes.
            // ("the" -> 2 tokens, then " the" needs 4 more slots while merging).
            let mut out = [0u32; 6];
            assert_eq!(tok.encode(b"the the", &mut out), Ok(3));
            assert_eq!(out[..3], [b't' as u32, 257, 258]);
            assert!(tok.encode(b"x", &mut []).is_err());
            assert_eq!(tok.encode(b"", &mut []), Ok(0));
        });
    }

    // ---- decoding ----

    #[test]
    fn token_bytes_and_strings() {
        with_tok(&hand_kvs(), |tok| {
            assert_eq!(tok.token_str(258), Ok("Ġthe"));
            let mut got = Vec::new();
            tok.token_bytes(258, &mut |b: &[u8]| got.extend_from_slice(b))
                .unwrap();
            assert_eq!(got, b" the");
            let mut buf = [0u8; 8];
            assert_eq!(tok.token_bytes_into(265, &mut buf), Ok(2));
            assert_eq!(buf[..2], [0xC3, 0xA9]);
            assert_eq!(
                tok.token_bytes_into(264, &mut buf[..4]),
                Err(Error::BufferTooSmall {
                    what: "token bytes",
                    needed: 5,
                    got: 4
                })
            );
            assert_eq!(tok.max_token_bytes(), 7); // "<|bos|>"
            assert_eq!(tok.find_token("<|eos|>"), Some(EOS));
            assert_eq!(tok.find_token("Ġthe"), Some(258));
            assert_eq!(tok.find_token(" the"), None);
            for b in 0..=255u8 {
                assert_eq!(tok.byte_token(b), b as u32);
            }
            let oor = Error::TokenOutOfRange {
                token: 268,
                vocab_size: 268,
            };
            assert_eq!(tok.token_str(268), Err(oor.clone()));
            assert_eq!(tok.token_bytes(268, &mut |_: &[u8]| {}), Err(oor.clone()));
            assert_eq!(tok.token_bytes_into(268, &mut buf), Err(oor.clone()));
            let mut d = Decoder::new();
            assert!(d.push(tok, u32::MAX, &mut |_: &str| {}).is_err());
            assert_eq!(decode_string(tok, &[257, 268]), Err(oor));
        });
    }

    #[test]
    fn long_token_bytes_come_in_chunks() {
        let long = "x".repeat(200);
        let mut tokens = byte_vocab();
        tokens.push(long.clone());
        with_tok(&basic_kvs(tokens, vec![]), |tok| {
            let mut chunks = Vec::new();
            tok.token_bytes(256, &mut |b: &[u8]| chunks.push(b.len()))
                .unwrap();
            assert_eq!(chunks, [64, 64, 64, 8]);
            assert_eq!(decode_string(tok, &[256]).unwrap(), long);
            assert_eq!(tok.max_token_bytes(), 200);
        });
    }

    #[test]
    fn decoder_joins_multibyte_characters_across_tokens() {
        with_tok(&hand_kvs(), |tok| {
            let mut d = tok.decoder();
            let mut s = String::new();
            let mut emit = |t: &str| s.push_str(t);
            for &b in "😀".as_bytes() {
                d.push(tok, b as u32, &mut emit).unwrap();
            }
            d.push(tok, 0xC3, &mut emit).unwrap();
            assert_eq!(d.pending(), [0xC3]);
            d.push(tok, 0xA9, &mut emit).unwrap();
            d.push(tok, 258, &mut emit).unwrap();
            d.flush(&mut emit);
            assert_eq!(s, "😀é the");
        });
    }

    #[test]
    fn decoder_replaces_invalid_utf8() {
        let cases: [(&[u8], &str); 8] = [
            (b"\xff", "\u{FFFD}"),
            (b"\xc3a", "\u{FFFD}a"),
            (b"a\xc3", "a\u{FFFD}"),
            (b"\xe2\x82", "\u{FFFD}"),
            (b"\xe2\x82\xac", "€"),
            (b"\xf0\x9f\x98", "\u{FFFD}"),
            (b"\xed\xa0\x80", "\u{FFFD}\u{FFFD}\u{FFFD}"), // surrogate
            (b"\xc3\xc3\xa9", "\u{FFFD}é"),
        ];
        for (bytes, want) in cases {
            // Byte by byte and all at once.
            for split in [1, bytes.len()] {
                let mut d = Decoder::new();
                let mut s = String::new();
                for c in bytes.chunks(split) {
                    d.push_bytes(c, &mut |t: &str| s.push_str(t));
                }
                d.flush(&mut |t: &str| s.push_str(t));
                assert_eq!(s, want, "{bytes:?} in chunks of {split}");
                assert!(d.pending().is_empty());
            }
        }
    }

    #[test]
    fn decoder_matches_from_utf8_lossy_on_random_splits() {
        let mut rng = Pcg32::new(3);
        let alphabet: Vec<u8> = b"ab \x80\x9f\xa9\xbf\xc3\xe2\xed\xf0\xf4\xff".to_vec();
        for _ in 0..2000 {
            let len = rng.next_u32() as usize % 24;
            let bytes = random_bytes(&mut rng, len, &alphabet);
            let mut d = Decoder::new();
            let mut s = String::new();
            let mut rest = bytes.as_slice();
            while !rest.is_empty() {
                let n = 1 + rng.next_u32() as usize % rest.len();
                let (c, r) = rest.split_at(n);
                d.push_bytes(c, &mut |t: &str| s.push_str(t));
                assert!(d.pending().len() <= 3);
                rest = r;
            }
            d.flush(&mut |t: &str| s.push_str(t));
            assert_eq!(s, String::from_utf8_lossy(&bytes), "{bytes:?}");
        }
    }

    #[test]
    fn every_byte_string_round_trips() {
        let mut rng = Pcg32::new(5);
        let all: Vec<u8> = (0..=255u8).collect();
        with_tok(&hand_kvs(), |tok| {
            for i in 0..1000 {
                let len = rng.next_u32() as usize % 64;
                let text = if i % 2 == 0 {
                    random_bytes(&mut rng, len, &all)
                } else {
                    random_bytes(&mut rng, len, b"the hello aa \xc3\xa9\xff")
                };
                let ids = encode(tok, &text);
                assert_eq!(decode_bytes(tok, &ids).unwrap(), text);
                assert_eq!(
                    decode_string(tok, &ids).unwrap(),
                    String::from_utf8_lossy(&text)
                );
            }
        });
    }

    #[test]
    #[cfg(feature = "std")]
    fn std_conveniences() {
        for kvs in [hand_kvs(), with_tables(&hand_kvs())] {
            std_conveniences_on(&kvs);
        }
    }

    #[cfg(feature = "std")]
    fn std_conveniences_on(kvs: &[(&str, Kv)]) {
        let bytes = gguf_bytes(kvs);
        let g = Gguf::parse(&bytes).unwrap();
        let buf = TokenizerBuf::new(&g).unwrap();
        let tok = buf.tokenizer();
        let ids = tok.encode_to_vec(b"the hello").unwrap();
        assert_eq!(ids, [116, 257, 32, 257, 261, 111]);
        assert_eq!(tok.decode_to_bytes(&ids).unwrap(), b"the hello");
        assert_eq!(
            tok.decode_to_string(&[258, 265, 0xC3]).unwrap(),
            " theé\u{FFFD}"
        );
        assert_eq!(
            tok.decode_to_string(&[1, 268]),
            Err(Error::TokenOutOfRange {
                token: 268,
                vocab_size: 268
            })
        );
        assert!(std::format!("{buf:?}").contains("vocab_size: 268"));
    }

    // ---- validation ----

    #[test]
    fn workspace_len_and_too_small_workspace() {
        let bytes = gguf_bytes(&hand_kvs());
        let g = Gguf::parse(&bytes).unwrap();
        let need = Tokenizer::workspace_len(&g).unwrap();
        assert_eq!(need, 2 * 268 + 4 * 10 + 257);
        let mut ws = vec![0u32; need - 1];
        assert_eq!(
            Tokenizer::new(&g, &mut ws).unwrap_err(),
            Error::BufferTooSmall {
                what: "tokenizer workspace (u32 words)",
                needed: need,
                got: need - 1
            }
        );
        let mut ws = vec![7u32; need + 5];
        assert!(Tokenizer::new(&g, &mut ws).is_ok());
        assert_eq!(ws[need..], [7; 5], "only workspace_len words are used");

        // With the tables in the file: no workspace, and one that is given stays untouched.
        let bytes = gguf_bytes(&with_tables(&hand_kvs()));
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(Tokenizer::workspace_len(&g), Ok(0));
        let mut ws = vec![0xA5A5_A5A5u32; 16];
        let tok = Tokenizer::new(&g, &mut ws).unwrap();
        assert_eq!(encode(&tok, b"the hello"), [116, 257, 32, 257, 261, 111]);
        assert!(ws.iter().all(|&w| w == 0xA5A5_A5A5));
        assert!(Tokenizer::new(&g, &mut []).is_ok());
    }

    fn without(key: &str) -> Vec<(&'static str, Kv)> {
        hand_kvs().into_iter().filter(|(k, _)| *k != key).collect()
    }

    fn replaced(key: &'static str, v: Kv) -> Vec<(&'static str, Kv)> {
        let mut kvs = without(key);
        kvs.push((key, v));
        kvs
    }

    #[test]
    fn missing_keys() {
        for key in [KEY_MODEL, KEY_PRE, KEY_TOKENS, KEY_MERGES] {
            assert_eq!(
                build_err(&without(key)),
                Error::MissingKey { key: name(key) },
                "{key}"
            );
        }
        for key in [KEY_TOKENS, KEY_MERGES] {
            let bytes = gguf_bytes(&without(key));
            let g = Gguf::parse(&bytes).unwrap();
            assert!(matches!(
                Tokenizer::workspace_len(&g),
                Err(Error::MissingKey { .. })
            ));
        }
        // bos and eos are optional.
        with_tok(&without(KEY_BOS), |tok| {
            assert_eq!((tok.bos(), tok.eos()), (None, Some(EOS)))
        });
    }

    #[test]
    fn wrong_model_or_pre_tokenizer() {
        assert_eq!(
            reason(build_err(&replaced(KEY_MODEL, Kv::Str("llama")))),
            "tokenizer.ggml.model must be \"gpt2\" (byte-level BPE)"
        );
        assert_eq!(
            reason(build_err(&replaced(KEY_PRE, Kv::Str("gpt2")))),
            "tokenizer.ggml.pre must be \"mhmoe-space\""
        );
        assert!(matches!(
            build_err(&replaced(KEY_MODEL, Kv::U32(2))),
            Error::BadKey { .. }
        ));
    }

    #[test]
    fn wrong_array_types() {
        for key in [KEY_TOKENS, KEY_MERGES] {
            assert_eq!(
                build_err(&replaced(key, Kv::U32s(vec![1, 2]))),
                Error::BadKey {
                    key: name(key),
                    expected: "an array of strings"
                }
            );
            assert!(matches!(
                build_err(&replaced(key, Kv::Str("a"))),
                Error::BadKey { .. }
            ));
        }
    }

    fn merges_err(merges: &[&str]) -> &'static str {
        let (tokens, _) = vocab_from_merges(&HAND_MERGES);
        let merges = merges.iter().map(|s| s.to_string()).collect();
        reason(build_err(&basic_kvs(tokens, merges)))
    }

    #[test]
    fn bad_merges() {
        assert_eq!(
            merges_err(&["ab"]),
            "a merge has no space between its two tokens"
        );
        for m in ["a  b", " a", "a ", "a b c", " "] {
            assert_eq!(
                merges_err(&[m]),
                "a merge is not two non-empty tokens separated by one space",
                "{m:?}"
            );
        }
        assert_eq!(
            merges_err(&["q Ġxyz"]),
            "a merge's right token is not in the vocabulary"
        );
        assert_eq!(
            merges_err(&["日 a"]),
            "a merge's left token is not in the vocabulary"
        );
        assert_eq!(
            merges_err(&["x y"]),
            "a merge's result (left + right) is not in the vocabulary"
        );
        assert_eq!(
            merges_err(&["a a", "h e", "a a"]),
            "two merges join the same pair of tokens"
        );
    }

    #[test]
    fn bad_tokens() {
        let mut tokens = byte_vocab();
        tokens.push("Ġt".to_string());
        tokens.push("Ġt".to_string());
        assert_eq!(
            reason(build_err(&basic_kvs(tokens, vec![]))),
            "two tokens have the same string"
        );
        for odd in ["a b", "日本", "\u{FFFD}"] {
            let mut tokens = byte_vocab();
            tokens.push(odd.to_string());
            assert_eq!(
                reason(build_err(&basic_kvs(tokens, vec![]))),
                "a token string is not in GPT-2 byte-to-unicode form",
                "{odd:?}"
            );
        }
        // Every single-byte token is required.
        let mut tokens = byte_vocab();
        tokens.remove(200);
        assert_eq!(
            reason(build_err(&basic_kvs(tokens, vec![]))),
            "a single-byte token is missing (all 256 byte tokens are required)"
        );
        assert_eq!(
            reason(build_err(&basic_kvs(vec![], vec![]))),
            "a single-byte token is missing (all 256 byte tokens are required)"
        );
        // An empty token is allowed: it decodes to nothing and is never produced.
        let mut tokens = byte_vocab();
        tokens.push(String::new());
        with_tok(&basic_kvs(tokens, vec![]), |tok| {
            assert_eq!(decode_bytes(tok, &[256, 65]).unwrap(), b"A");
            assert_eq!(tok.find_token(""), Some(256));
        });
    }

    /// `hand_kvs` with its precomputed tables, `edit` applied to the table under `key`: the
    /// error building it gives (with any workspace: the tables are in the file).
    fn table_err(key: &str, edit: impl FnOnce(&mut Vec<u32>)) -> Error {
        let mut kvs = with_tables(&hand_kvs());
        match kvs.iter_mut().find(|(k, _)| *k == key) {
            Some((_, Kv::U32s(v))) => edit(v),
            _ => panic!("no table {key}"),
        }
        let bytes = gguf_bytes(&kvs);
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(Tokenizer::workspace_len(&g), Ok(0));
        let err = Tokenizer::new(&g, &mut []).unwrap_err();
        let mut ws = vec![0u32; 1 << 16];
        assert_eq!(Tokenizer::new(&g, &mut ws).unwrap_err(), err);
        #[cfg(feature = "std")]
        assert_eq!(TokenizerBuf::new(&g).unwrap_err(), err);
        err
    }

    #[test]
    fn file_tables_match_the_built_ones() {
        // The test's plain computation and the workspace build agree word for word.
        let kvs = hand_kvs();
        let bytes = gguf_bytes(&kvs);
        let g = Gguf::parse(&bytes).unwrap();
        let mut ws = vec![0u32; Tokenizer::workspace_len(&g).unwrap()];
        let built = Tokenizer::new(&g, &mut ws).unwrap().tables;
        let want = reference_tables(strings(&kvs, KEY_TOKENS), strings(&kvs, KEY_MERGES));
        let words = |w: &[Word]| w.iter().map(word).collect::<Vec<u32>>();
        assert_eq!(words(built.offsets), want[0].1);
        assert_eq!(words(built.sorted), want[1].1);
        assert_eq!(words(built.merges.as_flattened().as_chunks().0), want[2].1);
        assert_eq!(words(built.byte_tokens), want[3].1);
    }

    #[test]
    fn corrupted_tables_are_rejected() {
        let offsets = "tokenizer.mhmoe.token_offsets does not match the token strings";
        assert_eq!(reason(table_err(KEY_OFFSETS, |v| v[5] += 1)), offsets);
        assert_eq!(reason(table_err(KEY_OFFSETS, |v| v[0] = 1)), offsets);
        assert_eq!(reason(table_err(KEY_OFFSETS, |v| v[268] -= 1)), offsets);
        assert_eq!(reason(table_err(KEY_OFFSETS, |v| v.swap(3, 4))), offsets);
        assert_eq!(
            reason(table_err(KEY_OFFSETS, |v| {
                v.pop();
            })),
            "tokenizer.mhmoe.token_offsets does not have V + 1 entries"
        );

        let order = "tokenizer.mhmoe.sorted_ids is not in the order of the token strings";
        assert_eq!(reason(table_err(KEY_SORTED, |v| v.swap(10, 11))), order);
        assert_eq!(reason(table_err(KEY_SORTED, |v| v.reverse())), order);
        assert_eq!(
            reason(table_err(KEY_SORTED, |v| v[10] = v[11])),
            "tokenizer.mhmoe.sorted_ids lists a token twice"
        );
        assert_eq!(
            reason(table_err(KEY_SORTED, |v| v[0] = 268)),
            "tokenizer.mhmoe.sorted_ids has an id outside the vocabulary"
        );
        assert_eq!(
            reason(table_err(KEY_SORTED, |v| v.push(0))),
            "tokenizer.mhmoe.sorted_ids does not have V entries"
        );

        let bytes = "tokenizer.mhmoe.byte_tokens does not match the single-byte tokens";
        assert_eq!(reason(table_err(KEY_BYTE_TOKENS, |v| v.swap(1, 2))), bytes);
        assert_eq!(reason(table_err(KEY_BYTE_TOKENS, |v| v[65] = 258)), bytes);
        assert_eq!(reason(table_err(KEY_BYTE_TOKENS, |v| v[65] = 9999)), bytes);
        assert_eq!(
            reason(table_err(KEY_BYTE_TOKENS, |v| v.truncate(255))),
            "tokenizer.mhmoe.byte_tokens does not have 256 entries"
        );

        // hand_kvs' merge table: 10 entries of [left, right, rank, merged].
        let merges = "tokenizer.mhmoe.merge_table does not match tokenizer.ggml.merges";
        let order = "tokenizer.mhmoe.merge_table is not sorted by (left, right) without repeats";
        assert_eq!(reason(table_err(KEY_MERGE_TABLE, |v| v[3] = 257)), merges);
        assert_eq!(reason(table_err(KEY_MERGE_TABLE, |v| v[2] = 10)), merges);
        assert_eq!(reason(table_err(KEY_MERGE_TABLE, |v| v.swap(2, 6))), merges);
        assert_eq!(
            reason(table_err(KEY_MERGE_TABLE, |v| {
                // A pair that is no merge, still in order: the last entry becomes (267, 267).
                let n = v.len();
                v[n - 4] = 267;
                v[n - 3] = 267;
            })),
            merges
        );
        assert_eq!(
            reason(table_err(KEY_MERGE_TABLE, |v| {
                let (a, b) = v.split_at_mut(4);
                a.swap_with_slice(&mut b[..4]);
            })),
            order
        );
        assert_eq!(
            reason(table_err(KEY_MERGE_TABLE, |v| v.copy_within(4..8, 0))),
            order
        );
        assert_eq!(
            reason(table_err(KEY_MERGE_TABLE, |v| v.truncate(36))),
            "tokenizer.mhmoe.merge_table does not have 4 M entries"
        );
        assert_eq!(
            reason(table_err(KEY_MERGE_TABLE, |v| v.extend([300, 300, 10, 300]))),
            "tokenizer.mhmoe.merge_table does not have 4 M entries"
        );
    }

    #[test]
    fn tables_of_the_wrong_type_or_incomplete_are_rejected() {
        let tables = with_tables(&hand_kvs());
        for key in TABLE_KEYS {
            // Any one of the four missing.
            let kvs: Vec<_> = tables.iter().filter(|(k, _)| *k != key).cloned().collect();
            let bytes = gguf_bytes(&kvs);
            let g = Gguf::parse(&bytes).unwrap();
            assert_eq!(Tokenizer::workspace_len(&g), Ok(0), "{key}");
            assert_eq!(
                Tokenizer::new(&g, &mut []).unwrap_err(),
                Error::MissingKey { key: name(key) }
            );
            #[cfg(feature = "std")]
            assert_eq!(
                TokenizerBuf::new(&g).unwrap_err(),
                Error::MissingKey { key: name(key) }
            );
            // Of the wrong type.
            let wrong = Error::BadKey {
                key: name(key),
                expected: "an array of u32",
            };
            for v in [Kv::U32(0), Kv::Strs(vec!["0".to_string()])] {
                let mut kvs = kvs.clone();
                kvs.push((key, v));
                let bytes = gguf_bytes(&kvs);
                let g = Gguf::parse(&bytes).unwrap();
                assert_eq!(Tokenizer::new(&g, &mut []).unwrap_err(), wrong);
            }
        }
    }

    /// A merge list that repeats a pair cannot have a valid table: the error is the one the
    /// workspace build gives.
    #[test]
    fn repeated_merges_with_tables() {
        let (tokens, merges) = vocab_from_merges(&HAND_MERGES[..3]);
        let mut merges = merges;
        merges.push(merges[1].clone()); // "h e" again, rank 3
        let mut kvs = basic_kvs(tokens, merges);
        let (h, e) = (u32::from(b'h'), u32::from(b'e'));
        // Entries of ranks 0-2 (" t", "he", " the") and, for rank 3, a made-up one at the end.
        let mut table = [
            [32, 116, 0, 256],
            [h, e, 1, 257],
            [256, 257, 2, 258],
            [258, 258, 3, 258],
        ];
        table.sort();
        let offsets = reference_tables(strings(&kvs, KEY_TOKENS), &[]);
        kvs.push((KEY_OFFSETS, Kv::U32s(offsets[0].1.clone())));
        kvs.push((KEY_SORTED, Kv::U32s(offsets[1].1.clone())));
        kvs.push((KEY_BYTE_TOKENS, Kv::U32s(offsets[3].1.clone())));
        kvs.push((KEY_MERGE_TABLE, Kv::U32s(table.concat())));
        let bytes = gguf_bytes(&kvs);
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(
            reason(Tokenizer::new(&g, &mut []).unwrap_err()),
            "two merges join the same pair of tokens"
        );
    }

    /// Random corruptions of a file with tables, half of them inside the tables: any file
    /// accepted must encode and decode exactly as the same file's strings say (the tokenizer
    /// built in a workspace from the same bytes, the table keys renamed away).
    #[test]
    fn corrupted_tables_never_give_a_wrong_answer() {
        let good = gguf_bytes(&with_tables(&hand_kvs()));
        let prefix = b"tokenizer.mhmoe.";
        let at = |bytes: &[u8]| -> Vec<usize> {
            bytes
                .windows(prefix.len())
                .enumerate()
                .filter(|(_, w)| *w == prefix)
                .map(|(i, _)| i)
                .collect()
        };
        let tables_start = at(&good)[0];
        let mut rng = Pcg32::new(17);
        let (mut accepted, mut rejected) = (0, 0);
        for round in 0..3000 {
            let mut bytes = good.clone();
            for _ in 0..1 + rng.next_u32() % 3 {
                let i = if round % 2 == 0 {
                    tables_start + rng.next_u32() as usize % (bytes.len() - tables_start)
                } else {
                    rng.next_u32() as usize % bytes.len()
                };
                bytes[i] = rng.next_u32() as u8;
            }
            let Ok(g) = Gguf::parse(&bytes) else { continue };
            let Ok(tok) = Tokenizer::new(&g, &mut []) else {
                rejected += 1;
                continue;
            };
            accepted += 1;
            let mut renamed = bytes.clone();
            for i in at(&bytes) {
                renamed[i..i + prefix.len()].copy_from_slice(b"tokenizer.xxxxx.");
            }
            let g2 = Gguf::parse(&renamed).unwrap();
            let mut ws = vec![0u32; Tokenizer::workspace_len(&g2).unwrap()];
            let want = Tokenizer::new(&g2, &mut ws)
                .expect("the tables were accepted, so the strings are a valid tokenizer");
            assert_eq!(tok.vocab_size(), want.vocab_size());
            assert_eq!(tok.merge_count(), want.merge_count());
            for id in 0..tok.vocab_size() as u32 {
                assert_eq!(tok.token_str(id), want.token_str(id));
                if let Ok(s) = want.token_str(id) {
                    assert_eq!(tok.find_token(s), want.find_token(s));
                }
            }
            for _ in 0..20 {
                let len = rng.next_u32() as usize % 40;
                let text = random_bytes(&mut rng, len, b"the hello aa \xc3\xa9\xff");
                assert_eq!(encode(&tok, &text), encode(&want, &text), "{text:?}");
            }
        }
        assert!(
            rejected >= 1000,
            "only {rejected} corrupted tables were rejected"
        );
        assert!(
            accepted >= 10,
            "only {accepted} corrupted files were accepted"
        );
    }

    /// Random corruptions of a valid file: whatever the parser lets through must give a
    /// tokenizer or an error, never a panic, and a tokenizer must encode and decode.
    #[test]
    fn corrupted_files_never_panic() {
        for good in [
            gguf_bytes(&hand_kvs()),
            gguf_bytes(&with_tables(&hand_kvs())),
        ] {
            corrupted_file_never_panics(&good);
        }
    }

    fn corrupted_file_never_panics(good: &[u8]) {
        let mut rng = Pcg32::new(13);
        let mut built = 0;
        for _ in 0..5000 {
            let mut bytes = good.to_vec();
            for _ in 0..1 + rng.next_u32() % 4 {
                let i = rng.next_u32() as usize % bytes.len();
                bytes[i] = rng.next_u32() as u8;
            }
            let Ok(g) = Gguf::parse(&bytes) else { continue };
            let Ok(n) = Tokenizer::workspace_len(&g) else {
                continue;
            };
            let mut ws = vec![0u32; n];
            let Ok(tok) = Tokenizer::new(&g, &mut ws) else {
                continue;
            };
            built += 1;
            let text = random_bytes(&mut rng, 40, b"the hello aa \xc3\xa9\xff");
            let ids = encode(&tok, &text);
            assert_eq!(decode_bytes(&tok, &ids).unwrap(), text);
        }
        assert!(built >= 10, "only {built} corrupted files were accepted");
    }

    #[test]
    fn bad_special_ids() {
        assert_eq!(
            reason(build_err(&replaced(KEY_BOS, Kv::U32(268)))),
            "tokenizer.ggml.bos_token_id is not below the vocabulary size"
        );
        assert_eq!(
            reason(build_err(&replaced(KEY_EOS, Kv::U32(u32::MAX)))),
            "tokenizer.ggml.eos_token_id is not below the vocabulary size"
        );
        assert_eq!(
            build_err(&replaced(KEY_BOS, Kv::I32(-1))),
            Error::BadKey {
                key: name(KEY_BOS),
                expected: "a non-negative integer token id"
            }
        );
        assert!(matches!(
            build_err(&replaced(KEY_EOS, Kv::Str("2"))),
            Error::BadKey { .. }
        ));
        // Any non-negative integer type is accepted.
        with_tok(&replaced(KEY_BOS, Kv::I32(5)), |tok| {
            assert_eq!(tok.bos(), Some(5))
        });
    }
}
