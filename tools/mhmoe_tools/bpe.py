"""Byte-level BPE for mhmoe models (`tokenizer.ggml.model = "gpt2"`, `pre = "mhmoe-space"`).

Everything here is pure Python and deterministic:

* `bytes_to_unicode()` / `unicode_to_bytes()`: GPT-2's reversible map from the 256 byte values to
  printable unicode characters. Token strings in the GGUF (`tokenizer.ggml.tokens`) and both halves
  of every merge (`tokenizer.ggml.merges`, "left right") are written in this form, so a space byte
  0x20 appears as "Ġ" and no token string contains a real space.
* `pretokenize(data)`: the "mhmoe-space" pre-tokenizer: split the byte string before every space
  byte 0x20 and nowhere else: b"a bc  d" -> [b"a", b" bc", b" ", b" d"].
* `Tokenizer`: merge-rank encoder/decoder. Within a piece, start from single bytes and repeatedly
  merge the adjacent pair with the lowest merge rank (leftmost pair first on equal rank) until no
  adjacent pair is a merge.
* `train_merges(text, n)`: a tiny BPE trainer used to make the test models' vocabularies.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

__all__ = [
    "bytes_to_unicode", "unicode_to_bytes", "pretokenize", "Tokenizer", "train_merges",
    "byte_vocab", "build_vocab",
]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 byte -> unicode character map (the printable Latin-1 bytes map to themselves,
    the other 68 bytes to U+0100.. in byte order)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_B2U = bytes_to_unicode()
_U2B = {c: b for b, c in _B2U.items()}


def unicode_to_bytes() -> dict[str, int]:
    """Inverse of `bytes_to_unicode()`."""
    return dict(_U2B)


def bytes_to_token_string(data: bytes) -> str:
    """Bytes -> their GPT-2 unicode form (one character per byte)."""
    return "".join(_B2U[b] for b in data)


def token_string_to_bytes(s: str) -> bytes:
    """GPT-2 unicode form -> bytes. Characters outside the map (e.g. in a special token written
    in plain text) raise KeyError."""
    return bytes(_U2B[c] for c in s)


def pretokenize(data: bytes) -> list[bytes]:
    """The "mhmoe-space" pre-tokenizer: split before every space byte 0x20, nothing else."""
    pieces: list[bytes] = []
    start = 0
    for i in range(1, len(data)):
        if data[i] == 0x20:
            pieces.append(data[start:i])
            start = i
    if data:
        pieces.append(data[start:])
    return pieces


def byte_vocab() -> list[str]:
    """The 256 single-byte tokens, token id == byte value."""
    return [_B2U[b] for b in range(256)]


def build_vocab(merges: Sequence[str], specials: Sequence[str] = ()) -> list[str]:
    """Vocabulary used by the test models: ids 0..255 are the bytes (id == byte value), then one
    token per merge in rank order (the concatenation of its two halves), then `specials`."""
    tokens = byte_vocab()
    for m in merges:
        left, right = m.split(" ")
        tokens.append(left + right)
    tokens.extend(specials)
    if len(set(tokens)) != len(tokens):
        raise ValueError("duplicate token strings in vocabulary")
    return tokens


class Tokenizer:
    """Merge-rank byte-level BPE over a GGUF-style vocabulary.

    `tokens`: list of token strings in GPT-2 byte-to-unicode form (index = id).
    `merges`: list of "left right" strings in rank order (rank = index).
    Every single byte must be a token. A merge whose result is not in the vocabulary is ignored.
    """

    def __init__(self, tokens: Sequence[str], merges: Sequence[str]):
        self.tokens = list(tokens)
        self.token_to_id: dict[str, int] = {}
        for i, t in enumerate(self.tokens):
            self.token_to_id.setdefault(t, i)  # first id wins on duplicates
        self.ranks: dict[tuple[str, str], int] = {}
        for r, m in enumerate(merges):
            parts = m.split(" ")
            if len(parts) != 2:
                raise ValueError(f"bad merge {m!r}")
            if parts[0] + parts[1] not in self.token_to_id:
                continue
            self.ranks.setdefault((parts[0], parts[1]), r)
        for b in range(256):
            if _B2U[b] not in self.token_to_id:
                raise ValueError(f"byte {b:#04x} has no token")

    def encode_piece(self, piece: bytes) -> list[int]:
        syms = [_B2U[b] for b in piece]
        while len(syms) > 1:
            best_rank = None
            best_i = -1
            for i in range(len(syms) - 1):
                r = self.ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank = r
                    best_i = i
            if best_rank is None:
                break
            syms[best_i:best_i + 2] = [syms[best_i] + syms[best_i + 1]]
        return [self.token_to_id[s] for s in syms]

    def encode(self, data: bytes | str) -> list[int]:
        if isinstance(data, str):
            data = data.encode("utf-8")
        ids: list[int] = []
        for piece in pretokenize(data):
            ids.extend(self.encode_piece(piece))
        return ids

    def decode(self, ids: Iterable[int]) -> bytes:
        """ids -> bytes. A token string that is not in GPT-2 byte form (a special token such as
        "<|eos|>" is: its characters are printable ASCII) decodes through the same map."""
        out = bytearray()
        for i in ids:
            out += token_string_to_bytes(self.tokens[i])
        return bytes(out)


def train_merges(text: bytes | str, n_merges: int) -> list[str]:
    """Tiny deterministic BPE trainer on the "mhmoe-space" pieces of `text`.

    Each step merges the most frequent adjacent pair (counted over all pieces, weighted by how
    often the piece occurs); ties go to the pair whose (left, right) token strings sort first.
    A pair whose concatenation already exists as a token is skipped, so token strings stay
    unique. Returns the merges in rank order as "left right" strings.
    """
    if isinstance(text, str):
        text = text.encode("utf-8")
    pieces = Counter(pretokenize(text))
    words = [([_B2U[b] for b in p], c) for p, c in sorted(pieces.items())]
    vocab = set(byte_vocab())
    merges: list[str] = []
    while len(merges) < n_merges:
        counts: Counter[tuple[str, str]] = Counter()
        for syms, c in words:
            for i in range(len(syms) - 1):
                counts[(syms[i], syms[i + 1])] += c
        candidates = [(-c, pair) for pair, c in counts.items() if pair[0] + pair[1] not in vocab]
        if not candidates:
            break
        _, (left, right) = min(candidates)
        merges.append(f"{left} {right}")
        vocab.add(left + right)
        for syms, _c in words:
            i = 0
            while i < len(syms) - 1:
                if syms[i] == left and syms[i + 1] == right:
                    syms[i:i + 2] = [left + right]
                i += 1
    return merges
