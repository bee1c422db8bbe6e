//! Shared helpers: deterministic data, program builders, an f64 reference, a runner.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test crates, each using a part"
)]

use ane_mil::builder::FunctionBuilder;
use ane_mil::ir::{Arg, BlobRef, Literal, Program};
use ane_mil::{BlobWriter, DType, ValueType, WeightFiles};
use ane_runtime::engine::reference::{ReferenceConfig, ReferenceEngine};
use ane_runtime::engine::CompileCounter;
use ane_runtime::{Engine, Surface};
use half::f16;

pub use ane_testutil::*;

/// A matmul result `[B3][B2][N][M]` collected in memory.
pub struct Out {
    pub m: usize,
    pub n: usize,
    pub batch0: usize,
    pub data: std::sync::Mutex<Vec<f32>>,
}

impl ane_runtime::matmul::MatrixSink for Out {
    fn write_row(&self, b2: usize, b3: usize, n: usize, values: &[f32]) {
        let b = b3 * self.batch0 + b2;
        self.data.lock().unwrap()[(b * self.n + n) * self.m..][..self.m].copy_from_slice(values);
    }
}

/// An output for a matmul of `shape`, NaN-filled so unwritten rows show.
/// One `m × k` weight matrix times `n` tokens, no batches.
pub fn single_matmul(m: usize, k: usize, n: usize) -> ane_runtime::matmul::MatmulShape {
    ane_runtime::matmul::MatmulShape {
        m,
        k,
        n,
        batch: [1, 1],
        weight_batch: [1, 1],
    }
}

pub fn out_for(shape: ane_runtime::matmul::MatmulShape) -> Out {
    Out {
        m: shape.m,
        n: shape.n,
        batch0: shape.batch[0],
        data: std::sync::Mutex::new(vec![
            f32::NAN;
            shape.batch[0] * shape.batch[1] * shape.n * shape.m
        ]),
    }
}

pub const WEIGHT_PATH: &str = "@model_path/weights/weight.bin";

pub fn engine() -> ReferenceEngine {
    ReferenceEngine::with_config(ReferenceConfig {
        counter: CompileCounter::new(None),
        ..Default::default()
    })
}

pub fn var(s: &str) -> Arg {
    Arg::Var(s.to_string())
}

pub fn fp16_weights(values: &[f32]) -> (WeightFiles, u64) {
    let mut w = BlobWriter::new();
    let off = w.add_fp16(&values.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>());
    let mut files = WeightFiles::new();
    files.insert(WEIGHT_PATH, w.finish()).unwrap();
    (files, off)
}

pub fn program_of(f: FunctionBuilder) -> Program {
    let mut p = Program::new();
    p.functions.push(f.finish());
    p
}

/// y[1, M, 1, N] = conv1x1(x[1, K, 1, N], W[M, K, 1, 1]) — the baked-weight kernel shape.
pub fn conv_matmul_program(m: usize, k: usize, n: usize, offset: u64) -> Program {
    let mut f = FunctionBuilder::new("main", "ios18");
    let x = f.input("x", ValueType::tensor(DType::Fp16, [1, k, 1, n]));
    let w = f.constant(
        "W",
        Literal::Blob(BlobRef {
            dtype: DType::Fp16,
            shape: vec![m, k, 1, 1],
            path: WEIGHT_PATH.into(),
            offset,
        }),
    );
    let y = f
        .op("y", "conv", &[("weight", var(&w)), ("x", var(&x))])
        .unwrap();
    f.output(&y).unwrap();
    program_of(f)
}

/// z = matmul(a, b) with both operands as inputs.
pub fn matmul_program(a: &[usize], b: &[usize], tx: bool, ty: bool) -> Program {
    let mut f = FunctionBuilder::new("main", "ios18");
    let x = f.input("a", ValueType::tensor(DType::Fp16, a.to_vec()));
    let y = f.input("b", ValueType::tensor(DType::Fp16, b.to_vec()));
    let t1 = f.constant("tx", Literal::bool(tx));
    let t2 = f.constant("ty", Literal::bool(ty));
    let z = f
        .op(
            "z",
            "matmul",
            &[
                ("transpose_x", var(&t1)),
                ("transpose_y", var(&t2)),
                ("x", var(&x)),
                ("y", var(&y)),
            ],
        )
        .unwrap();
    f.output(&z).unwrap();
    program_of(f)
}

/// Compiles and runs procedure 0 on dense inputs; returns dense outputs.
pub fn run(engine: &dyn Engine, p: &Program, w: &WeightFiles, inputs: &[&[f32]]) -> Vec<Vec<f32>> {
    let k = engine.compile(p, w).unwrap();
    let proc_ = &k.procedures()[0];
    let ins: Vec<Surface> = proc_
        .inputs
        .iter()
        .zip(inputs)
        .map(|(l, v)| {
            let mut s = Surface::new(l.clone());
            s.write_f32(v).unwrap();
            s
        })
        .collect();
    let mut outs: Vec<Surface> = proc_
        .outputs
        .iter()
        .map(|l| Surface::new(l.clone()))
        .collect();
    let in_refs: Vec<&Surface> = ins.iter().collect();
    let mut out_refs: Vec<&mut Surface> = outs.iter_mut().collect();
    k.eval(0, &in_refs, &mut out_refs).unwrap();
    outs.iter().map(|s| s.read_f32()).collect()
}
