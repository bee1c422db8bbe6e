"""Validates Core ML packages with coremltools 9.0 and prints what it understood.

usage: check_package.py PKG.mlpackage...

For each package: `ct.models.MLModel(path, skip_model_load=True)` (package and manifest),
then the milproto loader, which rebuilds every op through coremltools' MIL builder (input
validation, type inference, and a check that the declared output types match the inferred
ones). Prints, per package, a line `package PATH SPEC_VERSION`, then per function
`function NAME`, then per op output `op NAME OP_TYPE DTYPE SHAPE [SUM COUNT]` (SHAPE as
`1x64x1x32`, `-` for scalars; SUM and COUNT for numeric constants), as coremltools inferred
them. On the first package coremltools rejects: `error PATH MESSAGE`, exit 1.
"""
import os
import sys

import numpy as np

import coremltools as ct
from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
from coremltools.converters.mil.mil import types


def describe(path: str) -> list:
    model = ct.models.MLModel(path, skip_model_load=True)
    spec = model.get_spec()
    weights = os.path.join(path, "Data", "com.apple.CoreML", "weights")
    prog = milproto_load(spec, spec.specificationVersion, file_weights_dir=weights)
    lines = [f"package {path} {spec.specificationVersion}"]
    for name, func in prog.functions.items():
        lines.append(f"function {name}")
        for op in func.operations:
            for v in op.outputs:
                t = v.sym_type
                dtype = types.builtin_to_string(t.get_primitive() if types.is_tensor(t) else t)
                shape = "x".join(str(int(d)) for d in v.shape) if types.is_tensor(t) and v.shape else "-"
                line = f"op {v.name} {op.op_type} {dtype} {shape}"
                if op.op_type.startswith("const") and v.val is not None and not isinstance(v.val, str):
                    vals = np.asarray(v.val, dtype=np.float64)
                    line += f" {float(vals.sum())!r} {int(vals.size)}"
                lines.append(line)
    return lines


def main() -> int:
    for path in sys.argv[1:]:
        try:
            lines = describe(path)
        except Exception as e:  # coremltools raises many types; any of them is a rejection
            msg = f"{type(e).__name__}: {e}".replace("\n", " ")
            print(f"error {path} {msg}")
            return 1
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
