//! Shared helpers: deterministic data, program builders, an f64 reference, a runner.
#![allow(dead_code)]

use ane_mil::builder::FunctionBuilder;
use ane_mil::ir::{Arg, BlobRef, Literal, Program};
use ane_mil::{BlobWriter, DType, ValueType, WeightFiles};
use ane_runtime::engine::reference::{ReferenceConfig, ReferenceEngine};
use ane_runtime::engine::CompileCounter;
use ane_runtime::{Engine, Surface};
use half::f16;

pub const WEIGHT_PATH: &str = "@model_path/weights/weight.bin";

/// splitmix64: deterministic, dependency-free test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1), rounded to fp16 (so the f64 reference sees what the engine sees).
    pub fn f16_values(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                f16::from_f64(u * 2.0 - 1.0).to_f32()
            })
            .collect()
    }
}

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

/// f64 `a[M×K] · b[K×N]` for the listed rows of the result only.
pub fn ref_matmul_rows(
    a: &[f32],
    b: &[f32],
    k: usize,
    n: usize,
    rows: &[usize],
) -> Vec<(usize, Vec<f64>, Vec<f64>)> {
    rows.iter()
        .map(|&i| {
            let mut out = vec![0f64; n];
            let mut mag = vec![0f64; n];
            for p in 0..k {
                let av = a[i * k + p] as f64;
                for j in 0..n {
                    let prod = av * b[p * n + j] as f64;
                    out[j] += prod;
                    mag[j] += prod.abs();
                }
            }
            (i, out, mag)
        })
        .collect()
}

/// Tolerance for one fp16 result of an f32-accumulated dot product of fp16 operands:
/// the final rounding to fp16 (half an ulp: 2^-11 relative, or 2^-25 absolute in the
/// subnormal range) plus f32 accumulation error (at most K·2^-24 of Σ|aᵢbᵢ|), doubled for margin.
pub fn fp16_dot_tolerance(reference: f64, magnitude: f64, k: usize) -> f64 {
    2.0 * (reference.abs() * 2f64.powi(-11)
        + 2f64.powi(-25)
        + k as f64 * 2f64.powi(-24) * magnitude)
}

/// Asserts that `got` (row-major M×N) matches the f64 reference on the sampled rows.
pub fn assert_matmul_close(
    got: &[f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    what: &str,
) {
    assert_eq!(got.len(), m * n, "{what}: output size");
    let mut rows: Vec<usize> = if m <= 64 {
        (0..m).collect()
    } else {
        vec![0, 1, m / 3, m / 2, m - 2, m - 1]
    };
    rows.dedup();
    let (mut err_sum, mut ulp_sum) = (0f64, 0f64);
    for (i, want, mag) in ref_matmul_rows(a, b, k, n, &rows) {
        for j in 0..n {
            err_sum += (got[i * n + j] as f64 - want[j]).abs();
            ulp_sum += fp16_ulp(want[j]);
            let g = got[i * n + j] as f64;
            let tol = fp16_dot_tolerance(want[j], mag[j], k);
            assert!(
                (g - want[j]).abs() <= tol,
                "{what}: [{i},{j}] = {g}, f64 reference {} (tolerance {tol:e})",
                want[j]
            );
        }
    }
    // The bound above is the worst case of f32 accumulation and grows with K; on average a
    // correctly rounded fp16 result is within a quarter ulp. Half an ulp on average catches
    // systematic faults (fp16 accumulation, truncation) that the worst-case bound admits.
    assert!(
        err_sum <= 0.5 * ulp_sum,
        "{what}: mean error {:.3} ulp",
        err_sum / ulp_sum
    );
}

/// The spacing of fp16 values around `x`.
pub fn fp16_ulp(x: f64) -> f64 {
    let a = x.abs().max(2f64.powi(-14));
    2f64.powi(a.log2().floor() as i32 - 10)
}
