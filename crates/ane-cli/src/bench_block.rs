//! `ane bench --block ffn`: one transformer FFN (RMSNorm → gate, up → SwiGLU → down →
//! residual) as one fused program, against the same work as three single MUL_MAT jobs with
//! the glue on the host, on the same engine in the same run. Both results are compared.

use std::time::{Duration, Instant};

use ane_runtime::fused::{engine_fused, Block, FusedForm, FusedJob};
use ane_runtime::matmul::{
    engine_matmul, DenseRows, DenseSink, KernelCache, MatmulJob, MatmulShape, Scratch, Stats,
    WeightId,
};
use ane_runtime::Engine;

/// What one path cost per call.
pub(crate) struct BlockTiming {
    /// Wall time per call (warm).
    pub(crate) per_call: Duration,
    /// The first call (compiles).
    pub(crate) first: Duration,
    /// Engine evaluations per call.
    pub(crate) dispatches: u64,
    /// Bytes staged per call (weights + activations).
    pub(crate) staged: u64,
    /// The result, `tokens × channels`.
    pub(crate) out: Vec<f32>,
}

/// The block's inputs: `x [tokens, c]`, norm weight, gate/up `[h, c]`, down `[c, h]`.
pub(crate) struct FfnInputs {
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) tokens: usize,
    x: DenseRows,
    norm: Vec<f32>,
    gate: DenseRows,
    up: DenseRows,
    down: DenseRows,
}

fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let v = ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) as f32;
            (v / 65536.0 - 0.5) * scale
        })
        .collect()
}

impl FfnInputs {
    /// Deterministic values of a plausible size (weights ~ 1/sqrt(fan-in)).
    pub(crate) fn new(c: usize, h: usize, tokens: usize) -> Self {
        let (wc, wh) = (2.0 / (c as f32).sqrt(), 2.0 / (h as f32).sqrt());
        FfnInputs {
            c,
            h,
            tokens,
            x: DenseRows::new(tokens, c, values(tokens * c, 1, 2.0)),
            norm: values(c, 2, 0.5).iter().map(|v| 1.0 + v).collect(),
            gate: DenseRows::new(h, c, values(h * c, 3, wc)),
            up: DenseRows::new(h, c, values(h * c, 4, wc)),
            down: DenseRows::new(c, h, values(c * h, 5, wh)),
        }
    }

    /// 2 · tokens · 3 · c · h.
    pub(crate) fn flops(&self) -> f64 {
        6.0 * (self.tokens * self.c * self.h) as f64
    }

    fn job(&self) -> FusedJob<'_> {
        FusedJob {
            channels: self.c,
            tokens: self.tokens,
            eps: Some(1e-5),
            x: &self.x,
            norm_weight: &self.norm,
            block: Block::Ffn {
                hidden: self.h,
                gate: &self.gate,
                up: &self.up,
                down: &self.down,
                residual: &self.x,
            },
            weight_id: Some(WeightId {
                key: 0xFF_B10C,
                fingerprint: 0,
            }),
        }
    }
}

/// The fused path: `reps` warm calls after one that compiles.
pub(crate) fn fused(
    engine: &dyn Engine,
    cache: &KernelCache,
    inputs: &FfnInputs,
    reps: usize,
) -> anyhow::Result<(BlockTiming, FusedForm)> {
    let job = inputs.job();
    let t = Instant::now();
    let first_out = engine_fused(engine, cache, &job, &Stats::default())
        .map_err(|e| anyhow::anyhow!("fused FFN: {e}"))?;
    let first = t.elapsed();
    let stats = Stats::default();
    let t = Instant::now();
    let mut out = first_out;
    for _ in 0..reps {
        out = engine_fused(engine, cache, &job, &stats)
            .map_err(|e| anyhow::anyhow!("fused FFN: {e}"))?;
    }
    let s = stats.snapshot();
    let timing = BlockTiming {
        per_call: t.elapsed() / reps as u32,
        first,
        dispatches: s.dispatches / reps as u64,
        staged: (s.weight_bytes + s.act_bytes) / reps as u64,
        out: out.values(0).to_vec(),
    };
    Ok((timing, out.form()))
}

/// The same work as single MUL_MATs (gate, up, down) with the norm, SwiGLU and residual on
/// the host in f32, as ggml's CPU computes them between our matmuls.
pub(crate) fn singles(
    engine: &dyn Engine,
    cache: &KernelCache,
    inputs: &FfnInputs,
    reps: usize,
) -> anyhow::Result<BlockTiming> {
    let (c, h, n) = (inputs.c, inputs.h, inputs.tokens);
    let mut scratch = Scratch::default();
    let mut call = |stats: &Stats| -> anyhow::Result<Vec<f32>> {
        let normed = DenseRows::new(n, c, rms_norm(&inputs.x.data, &inputs.norm, c));
        let up_shape = MatmulShape::new(h, c, n);
        let (g, u) = (
            DenseSink::for_shape(up_shape),
            DenseSink::for_shape(up_shape),
        );
        for (w, dst, key) in [(&inputs.gate, &g, 1), (&inputs.up, &u, 2)] {
            let job = MatmulJob {
                shape: up_shape,
                weights: w,
                acts: &normed,
                dst,
                weight_id: Some(WeightId {
                    key,
                    fingerprint: 0,
                }),
            };
            engine_matmul(engine, cache, &job, &mut scratch, stats)
                .map_err(|e| anyhow::anyhow!("single MUL_MAT: {e}"))?;
        }
        let hm: Vec<f32> = g
            .values()
            .iter()
            .zip(u.values())
            .map(|(&a, b)| a / (1.0 + (-a).exp()) * b)
            .collect();
        let hm = DenseRows::new(n, h, hm);
        let down_shape = MatmulShape::new(c, h, n);
        let d = DenseSink::for_shape(down_shape);
        let job = MatmulJob {
            shape: down_shape,
            weights: &inputs.down,
            acts: &hm,
            dst: &d,
            weight_id: Some(WeightId {
                key: 3,
                fingerprint: 0,
            }),
        };
        engine_matmul(engine, cache, &job, &mut scratch, stats)
            .map_err(|e| anyhow::anyhow!("single MUL_MAT: {e}"))?;
        Ok(d.values()
            .iter()
            .zip(&inputs.x.data)
            .map(|(y, x)| y + x)
            .collect())
    };
    let t = Instant::now();
    let mut out = call(&Stats::default())?;
    let first = t.elapsed();
    let stats = Stats::default();
    let t = Instant::now();
    for _ in 0..reps {
        out = call(&stats)?;
    }
    let s = stats.snapshot();
    Ok(BlockTiming {
        per_call: t.elapsed() / reps as u32,
        first,
        dispatches: s.dispatches / reps as u64,
        staged: (s.weight_bytes + s.act_bytes) / reps as u64,
        out,
    })
}

/// ggml's RMS_NORM then MUL: the sum of squares in f64, the scale in f32.
fn rms_norm(x: &[f32], w: &[f32], c: usize) -> Vec<f32> {
    x.chunks(c)
        .flat_map(|row| {
            let mean = row
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                / c as f64;
            let scale = 1.0 / (mean as f32 + 1e-5).sqrt();
            row.iter().zip(w).map(move |(v, g)| v * scale * g)
        })
        .collect()
}

/// Normalised mean squared difference of `b` from `a`.
pub(crate) fn nmse(a: &[f32], b: &[f32]) -> f64 {
    let err: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    err / a
        .iter()
        .map(|&x| f64::from(x).powi(2))
        .sum::<f64>()
        .max(1e-30)
}
