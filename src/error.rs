//! The crate's errors: [`Error`] for loading and setting up, [`TokenError`] for each token.
//!
//! Every failure is a value of [`Error`]: malformed model files say what was wrong and at which
//! byte offset, configuration errors say which key or tensor, and run-time errors (a full
//! context, an out-of-range token, a too-small buffer) say what limit was hit. Nothing in the
//! public API panics on bad input.
//!
//! The per-token path (the forward pass, its steps, sampling) returns [`TokenError`] instead:
//! the same run-time errors in a `Copy` value of at most 16 bytes (an [`Error`] carries names of
//! up to 64 bytes), so a firmware's token loop moves no large values around. It converts into
//! the [`Error`] variant with the same meaning (`?` works in a function returning [`Error`]), and
//! prints the same message.

use core::fmt;

use crate::quant::{TensorType, TensorTypes};

/// A short, fixed-capacity copy of a name (tensor name or metadata key) for error messages.
///
/// Names longer than the capacity are truncated (on a character boundary) and end in `~`.
pub type Name = heapless::String<64>;

/// A short name (an architecture) for error messages, truncated like a [`Name`].
pub type ShortName = heapless::String<24>;

/// Copies `s` into a [`Name`], truncating if needed.
pub(crate) fn name(s: &str) -> Name {
    truncated(s)
}

/// Copies `s` into a fixed-capacity string, truncating (on a character boundary) if needed
/// with a final `~`.
pub(crate) fn truncated<const N: usize>(s: &str) -> heapless::String<N> {
    let mut out = heapless::String::new();
    if s.len() <= N {
        let _ = out.push_str(s);
        return out;
    }
    for c in s.chars() {
        if out.len() + c.len_utf8() > N - 1 {
            let _ = out.push('~');
            break;
        }
        let _ = out.push(c);
    }
    out
}

/// Saturates `v` to a `u32` (for the compact fields of [`TokenError`]).
fn u32_sat(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Where a NaN or infinity was found ([`TokenError::NonFinite`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum NonFinite {
    /// The logits of a forward pass.
    Logits,
    /// An attention score (a softmax would turn -inf into a weight of 0).
    AttentionScores,
    /// An RMSNorm sum of squares (an overflow would scale the token to zeros).
    NormSumOfSquares,
    /// A router logit or an X-MoE expert norm.
    Router,
    /// Logits given to a sampler: a NaN or `+inf`.
    SampledNanOrInf,
    /// Logits given to a sampler: all `-inf`.
    SampledAllNegInf,
}

impl NonFinite {
    /// The place, as [`Error::NonFinite`] names it.
    pub const fn as_str(self) -> &'static str {
        match self {
            NonFinite::Logits => "logits",
            NonFinite::AttentionScores => "attention scores",
            NonFinite::NormSumOfSquares => "activations (RMSNorm sum of squares)",
            NonFinite::Router => "router",
            NonFinite::SampledNanOrInf => "logits (NaN or +inf)",
            NonFinite::SampledAllNegInf => "logits (all -inf)",
        }
    }
}

/// An error of the per-token path ([`crate::forward()`], [`crate::Exec`], the step API,
/// [`crate::sampler`]): small and `Copy`. Sizes are `u32`, saturated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum TokenError {
    /// A token id at or past the vocabulary size.
    TokenOutOfRange {
        /// The id.
        token: u32,
        /// The vocabulary size.
        vocab_size: u32,
    },
    /// The tokens do not fit in the state's remaining context ([`crate::State::reset`] starts
    /// over).
    ContextFull {
        /// The state's context length.
        context_length: u32,
    },
    /// A forward pass of no tokens.
    EmptyBatch,
    /// More tokens than the state's batch capacity.
    BatchTooLarge {
        /// Tokens given.
        len: u32,
        /// The state's batch capacity.
        capacity: u32,
    },
    /// The state was made for a different model.
    WrongState,
    /// A NaN or infinity where it would make the output garbage.
    NonFinite(NonFinite),
    /// No logits to sample from (or more than `u32::MAX`).
    NoLogits,
    /// A sampler's scratch buffer is shorter than [`crate::sampler::Sampler::scratch_len`].
    ScratchTooSmall {
        /// Words needed.
        needed: u32,
        /// Words given.
        got: u32,
    },
}

impl TokenError {
    pub(crate) fn token_out_of_range(token: u32, vocab_size: usize) -> Self {
        TokenError::TokenOutOfRange {
            token,
            vocab_size: u32_sat(vocab_size),
        }
    }

    pub(crate) fn context_full(context_length: usize) -> Self {
        TokenError::ContextFull {
            context_length: u32_sat(context_length),
        }
    }

    pub(crate) fn batch_too_large(len: usize, capacity: usize) -> Self {
        TokenError::BatchTooLarge {
            len: u32_sat(len),
            capacity: u32_sat(capacity),
        }
    }

    pub(crate) fn scratch_too_small(needed: usize, got: usize) -> Self {
        TokenError::ScratchTooSmall {
            needed: u32_sat(needed),
            got: u32_sat(got),
        }
    }
}

impl From<TokenError> for Error {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::TokenOutOfRange { token, vocab_size } => Error::TokenOutOfRange {
                token,
                vocab_size: vocab_size as usize,
            },
            TokenError::ContextFull { context_length } => Error::ContextFull {
                context_length: context_length as usize,
            },
            TokenError::EmptyBatch => Error::EmptyPrompt,
            TokenError::BatchTooLarge { len, capacity } => Error::BatchTooLarge {
                len: len as usize,
                capacity: capacity as usize,
            },
            TokenError::WrongState => Error::WrongState,
            TokenError::NonFinite(at) => Error::NonFinite { what: at.as_str() },
            TokenError::NoLogits => Error::BadSamplerParams {
                reason: "logits must hold between 1 and u32::MAX values",
            },
            TokenError::ScratchTooSmall { needed, got } => Error::BufferTooSmall {
                what: "sampler scratch (u32 words)",
                needed: needed as usize,
                got: got as usize,
            },
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Error::from(*self).fmt(f)
    }
}

impl core::error::Error for TokenError {}

/// What went wrong. Every variant carries enough context to find the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The file ended while reading `what`, which starts at byte `offset`.
    UnexpectedEof {
        /// The field being read.
        what: &'static str,
        /// Byte offset of the field.
        offset: usize,
    },
    /// The first four bytes are not `GGUF`.
    BadMagic {
        /// The four bytes found, as a little-endian u32.
        found: u32,
    },
    /// A GGUF version other than 2 or 3.
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// A metadata value type id that GGUF does not define.
    InvalidValueType {
        /// The type id found.
        value_type: u32,
        /// Byte offset of the type id.
        offset: usize,
    },
    /// A GGUF string that is not valid UTF-8.
    InvalidUtf8 {
        /// The field being read.
        what: &'static str,
        /// Byte offset of the string's bytes.
        offset: usize,
    },
    /// A count, length or size that cannot fit in the file (or overflows).
    Overflow {
        /// The field being read.
        what: &'static str,
        /// Byte offset of the field.
        offset: usize,
    },
    /// `general.alignment` is zero, not a power of two, or not a u32.
    BadAlignment {
        /// The alignment found (0 when the type was wrong).
        alignment: u64,
    },
    /// A tensor has no dimension, more than 4, or a zero dimension.
    BadTensorDims {
        /// The tensor.
        tensor: Name,
        /// Its index in the tensor table.
        index: usize,
        /// The header's tensor count.
        count: usize,
        /// Byte offset of its tensor info.
        offset: usize,
        /// Number of dimensions declared.
        n_dims: u32,
    },
    /// A tensor type id that is not a ggml type gguf-py knows (so its size is unknown).
    UnknownTensorType {
        /// The tensor.
        tensor: Name,
        /// The ggml type id.
        type_id: u32,
    },
    /// The file holds tensors of types the engine does not compute with: its tables read, but
    /// it cannot be loaded as a model. Names every such type and the architecture;
    /// [`crate::gguf::Gguf::type_counts`] gives the count and first tensor of each type.
    UnsupportedTensorTypes {
        /// `general.architecture` (truncated; empty when missing or not a string).
        architecture: ShortName,
        /// Every type found that the engine does not compute with.
        types: TensorTypes,
        /// How many tensors have one of them.
        tensors: usize,
        /// The first such tensor in the table.
        first: Name,
        /// Its type.
        first_type: TensorType,
    },
    /// A block-quantized tensor whose first dimension is not a multiple of the block size.
    RowNotBlockAligned {
        /// The tensor.
        tensor: Name,
        /// The first dimension.
        ne0: u64,
        /// The block size of its type.
        block: u64,
    },
    /// A tensor's data offset is not a multiple of the file's alignment.
    MisalignedTensor {
        /// The tensor.
        tensor: Name,
        /// The offset relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor's data extends past the end of the file.
    TensorOutOfBounds {
        /// The tensor.
        tensor: Name,
        /// Absolute end offset required.
        end: u64,
        /// File size.
        file_size: u64,
    },
    /// Two tensors share one name.
    DuplicateTensor {
        /// The tensor.
        tensor: Name,
    },
    /// Two metadata entries share one key.
    DuplicateKey {
        /// The key.
        key: Name,
    },
    /// A layer's tensor outside its layer's run: the tensors of a layer must be contiguous in
    /// the tensor table and the layers in increasing order (FORMAT.md, "Tensor order").
    TensorOutOfOrder {
        /// The tensor.
        tensor: Name,
    },
    /// A required metadata key is missing.
    MissingKey {
        /// The key.
        key: Name,
    },
    /// A metadata key has an unexpected type or value.
    BadKey {
        /// The key.
        key: Name,
        /// What was expected.
        expected: &'static str,
    },
    /// `general.architecture` is not `mhmoe`.
    WrongArchitecture {
        /// The architecture found (truncated).
        found: ShortName,
    },
    /// An instruction set this build has no kernels for, or the CPU does not support.
    IsaUnavailable {
        /// The instruction set.
        isa: crate::kernels::Isa,
    },
    /// A state used with a model other than the one it was made for.
    WrongState,
    /// The hyper-parameters contradict each other.
    InvalidConfig {
        /// Which rule was broken.
        reason: &'static str,
    },
    /// A required tensor is missing.
    MissingTensor {
        /// The tensor.
        tensor: Name,
    },
    /// A tensor has the wrong shape.
    WrongShape {
        /// The tensor.
        tensor: Name,
        /// Expected dims (ne0, ne1, ne2; unused trailing dims are 1).
        expected: [u64; 3],
        /// Found dims.
        found: [u64; 3],
    },
    /// A tensor has a type that is not allowed for its role.
    WrongTensorType {
        /// The tensor.
        tensor: Name,
        /// What is allowed.
        expected: &'static str,
    },
    /// A caller-provided buffer is too small.
    BufferTooSmall {
        /// What the buffer is for.
        what: &'static str,
        /// Bytes (or elements, for token buffers) needed.
        needed: usize,
        /// Bytes (or elements) given.
        got: usize,
    },
    /// A caller-provided byte buffer does not start at the required alignment.
    BufferMisaligned {
        /// Required alignment in bytes.
        align: usize,
    },
    /// The KV cache is full: the position equals the context length.
    ContextFull {
        /// The context length the state was made for.
        context_length: usize,
    },
    /// The context length is 0 or larger than the model's trained context.
    BadContextLength {
        /// Requested.
        requested: usize,
        /// The model's maximum.
        max: usize,
    },
    /// A token id is not in the vocabulary.
    TokenOutOfRange {
        /// The token id.
        token: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// The tokenizer's size (`tokenizer.ggml.tokens`) is not the number of rows of
    /// `token_embd.weight`.
    VocabMismatch {
        /// Tokens of the tokenizer.
        tokenizer: usize,
        /// Rows of the token embedding.
        embedding: usize,
    },
    /// The tokenizer metadata is malformed or of an unsupported kind.
    BadTokenizer {
        /// Which rule was broken.
        reason: &'static str,
    },
    /// Encoding produced no tokens, or a prompt (or a batch of tokens) was empty where one is
    /// required.
    EmptyPrompt,
    /// A batch has more tokens than the state was made for.
    BatchTooLarge {
        /// Tokens in the batch.
        len: usize,
        /// The state's batch capacity.
        capacity: usize,
    },
    /// A batch capacity of 0 was requested for a state.
    BadBatchCapacity,
    /// A thread count of 0 was requested.
    BadThreadCount,
    /// Sampler parameters out of range.
    BadSamplerParams {
        /// Which rule was broken.
        reason: &'static str,
    },
    /// A non-finite value appeared where it would make the output garbage.
    NonFinite {
        /// Where it was found.
        what: &'static str,
    },
    /// An I/O error while loading a file (std only); the message is truncated.
    #[cfg(feature = "std")]
    Io {
        /// The operating system's message.
        message: Name,
    },
}

/// The crate's result type.
pub type Result<T> = core::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error::*;
        match self {
            UnexpectedEof { what, offset } => {
                write!(f, "file ends inside {what} (starting at byte {offset})")
            }
            BadMagic { found } => write!(f, "not a GGUF file: magic is {found:#010x}"),
            UnsupportedVersion { version } => {
                write!(f, "unsupported GGUF version {version} (2 and 3 are supported)")
            }
            InvalidValueType { value_type, offset } => {
                write!(f, "invalid metadata value type {value_type} at byte {offset}")
            }
            InvalidUtf8 { what, offset } => write!(f, "{what} at byte {offset} is not UTF-8"),
            Overflow { what, offset } => {
                write!(f, "{what} at byte {offset} is too large for the file")
            }
            BadAlignment { alignment } => write!(
                f,
                "general.alignment must be a non-zero power of two u32, got {alignment}"
            ),
            BadTensorDims {
                tensor,
                index,
                count,
                offset,
                n_dims,
            } => {
                write!(
                    f,
                    "tensor {index} of {count} (\"{tensor}\", info at byte {offset}): {n_dims} \
                     dimensions, or a zero dimension (1..=4 allowed, none of them 0)"
                )?;
                if tensor.is_empty() {
                    write!(
                        f,
                        "; an empty name and no dimensions there suggest that the header's \
                         tensor count ({count}) is too high"
                    )?;
                }
                Ok(())
            }
            UnknownTensorType { tensor, type_id } => write!(
                f,
                "tensor {tensor}: ggml type id {type_id} is unknown (not a type gguf-py knows)"
            ),
            UnsupportedTensorTypes {
                architecture,
                types,
                tensors,
                first,
                first_type,
            } => {
                let s = if *tensors == 1 { "" } else { "s" };
                write!(
                    f,
                    "this engine cannot run the file: {tensors} tensor{s} of type{} it does not \
                     compute with ({types}; the first: {first}, {first_type}); it computes with \
                     F32, F16, BF16, Q8_0 and Q4_0. ",
                    if types.len() == 1 { "" } else { "s" }
                )?;
                match architecture.as_str() {
                    "mhmoe" => write!(f, "Architecture \"mhmoe\"."),
                    "" => write!(f, "The file names no architecture (general.architecture)."),
                    a => write!(f, "Architecture \"{a}\", not \"mhmoe\"."),
                }
            }
            RowNotBlockAligned { tensor, ne0, block } => write!(
                f,
                "tensor {tensor}: first dimension {ne0} is not a multiple of the block size {block}"
            ),
            MisalignedTensor {
                tensor,
                offset,
                alignment,
            } => write!(
                f,
                "tensor {tensor}: data offset {offset} is not a multiple of the alignment {alignment}"
            ),
            TensorOutOfBounds {
                tensor,
                end,
                file_size,
            } => write!(
                f,
                "tensor {tensor}: data ends at byte {end}, past the end of the file ({file_size} bytes)"
            ),
            DuplicateTensor { tensor } => write!(f, "tensor {tensor} appears twice"),
            DuplicateKey { key } => write!(f, "metadata key {key} appears twice"),
            TensorOutOfOrder { tensor } => write!(
                f,
                "tensor {tensor} is out of order: a layer's tensors must be contiguous in the \
                 tensor table, layers in increasing order"
            ),
            MissingKey { key } => write!(f, "metadata key {key} is missing"),
            BadKey { key, expected } => write!(f, "metadata key {key}: expected {expected}"),
            WrongArchitecture { found } => write!(
                f,
                "general.architecture is \"{found}\": this engine runs \"mhmoe\" models only"
            ),
            InvalidConfig { reason } => write!(f, "invalid model configuration: {reason}"),
            IsaUnavailable { isa } => {
                write!(
                    f,
                    "instruction set {} is not available on this CPU or in this build \
                     (available: ",
                    isa.name()
                )?;
                let available = crate::kernels::ALL_ISAS.into_iter();
                for (n, i) in available.filter(|i| i.is_available()).enumerate() {
                    write!(f, "{}{}", if n > 0 { ", " } else { "" }, i.name())?;
                }
                write!(f, ")")
            }
            WrongState => write!(f, "the state was made for a different model"),
            MissingTensor { tensor } => write!(f, "tensor {tensor} is missing"),
            WrongShape {
                tensor,
                expected,
                found,
            } => write!(
                f,
                "tensor {tensor}: shape {found:?}, expected {expected:?} (ne0, ne1, ne2)"
            ),
            WrongTensorType { tensor, expected } => {
                write!(f, "tensor {tensor}: type must be {expected}")
            }
            BufferTooSmall { what, needed, got } => {
                write!(f, "{what} buffer too small: need {needed}, got {got}")
            }
            BufferMisaligned { align } => {
                write!(f, "buffer must start at a multiple of {align} bytes")
            }
            ContextFull { context_length } => {
                write!(f, "context is full ({context_length} positions)")
            }
            BadContextLength { requested, max } => write!(
                f,
                "context length {requested} is out of range (1..={max} for this model)"
            ),
            TokenOutOfRange { token, vocab_size } => write!(
                f,
                "token id {token} is out of range (vocabulary has {vocab_size} tokens)"
            ),
            VocabMismatch {
                tokenizer,
                embedding,
            } => write!(
                f,
                "the tokenizer has {tokenizer} tokens but token_embd.weight has {embedding} rows \
                 (they must be equal)"
            ),
            BadTokenizer { reason } => write!(f, "tokenizer: {reason}"),
            EmptyPrompt => write!(f, "the prompt is empty"),
            BatchTooLarge { len, capacity } => write!(
                f,
                "a batch of {len} tokens is larger than the state's batch capacity {capacity}"
            ),
            BadBatchCapacity => write!(f, "a state's batch capacity must be at least 1"),
            BadThreadCount => write!(f, "the thread count must be at least 1"),
            BadSamplerParams { reason } => write!(f, "sampler: {reason}"),
            NonFinite { what } => write!(f, "non-finite value in {what}"),
            #[cfg(feature = "std")]
            Io { message } => write!(f, "I/O error: {message}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

#[cfg(feature = "std")]
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io {
            message: name(&std::format!("{e}")),
        }
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Error {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{}", defmt::Display2Format(self))
    }
}
