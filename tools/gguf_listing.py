#!/usr/bin/env python3
"""Print a GGUF file's header, metadata and tensor table as the gguf Python package reads them,
in the tab-separated form of `cargo run --example inspect -- --tsv FILE`:

    gguf    NAME    VALUE                              (version, counts, alignment, data offset)
    kv      KEY     TYPE    VALUE                      (floats as bit patterns, strings escaped)
    kv      KEY     ARRAY[ELEMENT TYPE] len=N crc32=C  (CRC-32 of each element's length + bytes)
    tensor  NAME    TYPE    DIMS    BYTES   OFFSET     (DIMS innermost first; OFFSET absolute)

    python3 tools/gguf_listing.py FILE

tests/real_gguf.rs compares the two listings line for line on real files.
"""
import sys
import zlib

import numpy as np
from gguf import GGUFReader, GGUFValueType

def escape(s: str) -> str:
    out = []
    for c in s:
        if c == "\\":
            out.append("\\\\")
        elif c == "\t":
            out.append("\\t")
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append("\\x%02x" % ord(c))
        else:
            out.append(c)
    return "".join(out)


def scalar(part: np.ndarray, vtype: GGUFValueType) -> str:
    if vtype == GGUFValueType.STRING:
        return escape(bytes(part).decode("utf-8"))
    if vtype == GGUFValueType.FLOAT32:
        return "0x%08x" % int(part.view(np.uint32)[0])
    if vtype == GGUFValueType.FLOAT64:
        return "0x%016x" % int(part.view(np.uint64)[0])
    if vtype == GGUFValueType.BOOL:
        return "true" if int(part[0]) else "false"
    return str(int(part[0]))


def digest(parts) -> int:
    raw = b"".join(len(p.tobytes()).to_bytes(8, "little") + p.tobytes() for p in parts)
    return zlib.crc32(raw)


def listing(path: str):
    r = GGUFReader(path)
    header = {name: int(f.parts[f.data[0]][0]) for name, f in r.fields.items()
              if name.startswith("GGUF.")}
    yield "gguf\tversion\t%d" % header["GGUF.version"]
    yield "gguf\ttensor_count\t%d" % header["GGUF.tensor_count"]
    yield "gguf\tkv_count\t%d" % header["GGUF.kv_count"]
    yield "gguf\talignment\t%d" % r.alignment
    yield "gguf\tdata_offset\t%d" % r.data_offset
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        vtype = f.types[0]
        if vtype == GGUFValueType.ARRAY:
            elem = f.types[1] if len(f.types) > 1 else None
            if elem == GGUFValueType.ARRAY:
                yield "kv\t%s\tARRAY[ARRAY]\tlen=%d\tnested" % (escape(name), len(f.data))
                continue
            # An empty array's element type is read from the array header.
            if elem is None:
                elem = GGUFValueType(int(f.parts[3][0]))
            yield "kv\t%s\tARRAY[%s]\tlen=%d\tcrc32=%08x" % (
                escape(name), elem.name, len(f.data), digest(f.parts[i] for i in f.data))
        else:
            yield "kv\t%s\t%s\t%s" % (escape(name), vtype.name, scalar(f.parts[f.data[0]], vtype))
    for t in r.tensors:
        yield "tensor\t%s\t%s\t%s\t%d\t%d" % (
            escape(t.name), t.tensor_type.name, ",".join(str(int(d)) for d in t.shape),
            int(t.n_bytes), int(t.data_offset))


def main(argv) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    for line in listing(argv[0]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
