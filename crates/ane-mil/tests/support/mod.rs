//! Programs shared by the ane-mil tests.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test crates, each using a part"
)]

use ane_mil::builder::FunctionBuilder;
use ane_mil::ir::{Arg, BlobRef, Literal, Program};
use ane_mil::types::{DType, ValueType};

pub fn var(s: &str) -> Arg {
    Arg::Var(s.to_string())
}

/// Two functions: a 1x1 conv with a BLOBFILE weight, and a matmul with an int8 weight.
pub fn conv_and_matmul_program() -> Program {
    let mut p = Program::new();

    let mut f = FunctionBuilder::new("main", "ios18");
    let x = f.input("x", ValueType::tensor(DType::Fp16, [1, 64, 1, 32]));
    let w = f.constant(
        "W",
        Literal::Blob(BlobRef {
            dtype: DType::Fp16,
            shape: vec![48, 64, 1, 1],
            path: "@model_path/weights/weight.bin".into(),
            offset: 64,
        }),
    );
    let pt = f.constant("pt", Literal::string("valid"));
    let st = f.constant("st", Literal::int32s(&[1, 1]));
    let pd = f.constant("pd", Literal::int32s(&[0, 0, 0, 0]));
    let dl = f.constant("dl", Literal::int32s(&[1, 1]));
    let gr = f.constant("gr", Literal::int32(1));
    let y = f
        .op(
            "y",
            "conv",
            &[
                ("dilations", var(&dl)),
                ("groups", var(&gr)),
                ("pad", var(&pd)),
                ("pad_type", var(&pt)),
                ("strides", var(&st)),
                ("weight", var(&w)),
                ("x", var(&x)),
            ],
        )
        .unwrap();
    f.output(&y).unwrap();
    p.functions.push(f.finish());

    let mut g = FunctionBuilder::new("mm", "ios18");
    let a = g.input("a", ValueType::tensor(DType::Fp16, [1, 2, 16, 64]));
    let q = g
        .affine_dequantize(
            "Wq",
            BlobRef {
                dtype: DType::Int8,
                shape: vec![64, 40],
                path: "@model_path/weights/weight.bin".into(),
                offset: 6272,
            },
            Literal::fp16(0.0625),
            Literal::Tensor(ane_mil::ir::TensorLiteral::scalar(
                ane_mil::ir::TensorData::Int8(vec![0]),
            )),
            0,
        )
        .unwrap();
    let tf = g.constant("tf", Literal::bool(false));
    let z = g
        .op(
            "z",
            "matmul",
            &[
                ("transpose_x", var(&tf)),
                ("transpose_y", var(&tf)),
                ("x", var(&a)),
                ("y", var(&q)),
            ],
        )
        .unwrap();
    g.output(&z).unwrap();
    p.functions.push(g.finish());
    p
}
