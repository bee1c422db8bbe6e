"""Regenerates this example's data with tools independent of ggml-ane.

The program (model.mil) is the one arozanov/ggml-ane's gen_matmul_mil(M=96, K=80, N=50)
emits. The weight file is written by coremltools' own blob writer, the input and the
expected output by numpy (f64 matmul of the fp16-rounded operands).

    python3 examples/seed-matmul/make.py
"""
import os

import numpy as np
from coremltools.libmilstoragepython import _BlobStorageWriter

M, K, N = 96, 80, 50
here = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(2026)
w = rng.uniform(-1, 1, size=(M, K)).astype(np.float16)
x = rng.uniform(-1, 1, size=(1, N, 1, K)).astype(np.float16)

writer = _BlobStorageWriter(os.path.join(here, "weights", "weight.bin"), truncate_file=True)
assert writer.write_fp16_data(w.reshape(-1).view(np.uint16)) == 64
del writer

np.save(os.path.join(here, "x_raw.npy"), x)
y = x.reshape(N, K).astype(np.float64) @ w.astype(np.float64).T
np.save(os.path.join(here, "expected_y.npy"), y.reshape(1, N, 1, M))
