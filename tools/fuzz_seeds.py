#!/usr/bin/env python3
"""Write a small fuzzing seed from a real GGUF file: the same metadata (arrays cut to their first
256 elements) and the same tensor table (names, types, number of dimensions) with every tensor cut
to its first row, so the file is a few hundred KB instead of hundreds of MB and still parses.

    python3 tools/fuzz_seeds.py REAL.gguf OUT.gguf

tools/fuzz.sh seeds the GGUF fuzz targets with these (and with the first 64 KiB of the real files).
"""
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES

MAX_ELEMENTS = 256


def value(field, index):
    part = field.parts[index]
    vtype = field.types[-1]
    if vtype == GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    return part.tolist()[0]


def main(argv) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = argv
    r = GGUFReader(src)
    arch = value(r.fields["general.architecture"], r.fields["general.architecture"].data[0])
    w = GGUFWriter(dst, arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = f.types[0]
        if vtype == GGUFValueType.ARRAY:
            if len(f.types) < 2 or f.types[1] == GGUFValueType.ARRAY:
                continue
            items = [value(f, i) for i in f.data[:MAX_ELEMENTS]]
            if items:
                w.add_array(name, items)
        else:
            w.add_key_value(name, value(f, f.data[0]), vtype)
    for t in r.tensors:
        block, size = GGML_QUANT_SIZES[t.tensor_type]
        ne0 = int(t.shape[0])
        row = bytes(t.data.view(np.uint8).reshape(-1)[: ne0 // block * size])
        shape = [ne0] + [1] * (len(t.shape) - 1)
        raw = np.frombuffer(row, dtype=np.uint8).reshape([1] * (len(shape) - 1) + [len(row)])
        w.add_tensor(t.name, raw, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
