"""Cross-checks MIL blob storage v2 files against coremltools' own reader and writer.

usage: blob_roundtrip.py OURS.bin OURS.txt COREML_COPY.bin THEIRS.bin THEIRS.txt

Manifest lines are `dtype offset v0 v1 ...`.
1. Reads OURS.bin (written by the Rust writer) with coremltools' _BlobStorageReader and checks
   every blob listed in OURS.txt.
2. Writes the same values with coremltools' _BlobStorageWriter to COREML_COPY.bin (the Rust test
   compares it byte for byte with OURS.bin).
3. Writes its own blobs (odd sizes, every supported dtype) to THEIRS.bin and lists them in
   THEIRS.txt for the Rust reader to check.
"""
import sys

import numpy as np
from coremltools.libmilstoragepython import _BlobStorageReader, _BlobStorageWriter

NP = {"fp16": np.float16, "fp32": np.float32, "int8": np.int8, "uint8": np.uint8}
READ = {"fp16": "read_fp16_data", "fp32": "read_float_data", "int8": "read_int8_data", "uint8": "read_uint8_data"}
WRITE = {"fp16": "write_fp16_data", "fp32": "write_float_data", "int8": "write_int8_data", "uint8": "write_uint8_data"}


def raw(values):
    """coremltools' fp16 reader and writer work on the uint16 bit patterns."""
    return values.view(np.uint16) if values.dtype == np.float16 else values


def load_manifest(path):
    out = []
    for line in open(path):
        parts = line.split()
        if parts:
            out.append((parts[0], int(parts[1]), np.array([float(v) for v in parts[2:]], dtype=NP[parts[0]])))
    return out


def main(ours, ours_txt, copy, theirs, theirs_txt):
    entries = load_manifest(ours_txt)
    reader = _BlobStorageReader(ours)
    for dtype, offset, want in entries:
        got = np.asarray(getattr(reader, READ[dtype])(offset))
        if got.dtype != raw(want).dtype or not np.array_equal(got, raw(want)):
            sys.exit(f"coremltools read {dtype} @ {offset}: got {got[:8]}..., want {want[:8]}...")
    print(f"coremltools read {len(entries)} blobs from {ours}")

    writer = _BlobStorageWriter(copy, truncate_file=True)
    for dtype, offset, want in entries:
        at = getattr(writer, WRITE[dtype])(raw(want))
        if at != offset:
            sys.exit(f"coremltools wrote {dtype} at {at}, we wrote it at {offset}")
    del writer

    rng = np.random.default_rng(7)
    writer = _BlobStorageWriter(theirs, truncate_file=True)
    lines = []
    for dtype, n in [("fp16", 3), ("int8", 65), ("fp32", 17), ("uint8", 1), ("fp16", 1000), ("int8", 64)]:
        if dtype.startswith("fp"):
            vals = rng.standard_normal(n).astype(NP[dtype])
        else:
            info = np.iinfo(NP[dtype])
            vals = rng.integers(info.min, info.max, size=n, endpoint=True).astype(NP[dtype])
        at = getattr(writer, WRITE[dtype])(raw(vals))
        lines.append(f"{dtype} {at} " + " ".join(repr(float(v)) for v in vals))
    del writer
    with open(theirs_txt, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"coremltools wrote {len(lines)} blobs to {theirs}")


if __name__ == "__main__":
    main(*sys.argv[1:6])
