//! The fused forms' self-probe: no public source checked a fused FFN or a normed projection
//! program against a CPU result on hardware (docs/fused-forms.md), so before an engine runs
//! one, a small FFN and a small Q/K/V block go through each form and are compared with f64.
//! A form that fails is not used (its blocks run node by node instead).

use std::fmt;

use super::{engine_fused, Block, FusedForm, FusedJob};
use crate::engine::Engine;
use crate::kernels::policy::{KernelPolicy, WeightId};
use crate::kernels::KernelCache;
use crate::matmul::probe::grid_values;
use crate::matmul::{DenseRows, MatrixSource, Stats};

/// Largest NMSE against f64 a form may show (fp16 intermediates give ~1e-6 on this data).
const MAX_FUSED_PROBE_NMSE: f64 = 1e-3;

/// What the probe found for one form.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FusedProbe {
    /// The form probed.
    pub form: FusedForm,
    /// The worse NMSE of the two blocks against f64, or why they did not run.
    pub outcome: Result<f64, String>,
    /// Compiles it spent.
    pub compiles: u64,
}

impl FusedProbe {
    /// Whether the form works.
    pub fn passed(&self) -> bool {
        self.outcome.is_ok()
    }
}

impl fmt::Display for FusedProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Ok(nmse) => write!(f, "fused {} ok (NMSE {nmse:.1e})", self.form.as_str()),
            Err(why) => write!(f, "fused {} failed: {why}", self.form.as_str()),
        }
    }
}

/// Runs the probe blocks once per form on `engine`.
pub fn probe_fused(engine: &dyn Engine, forms: &[FusedForm]) -> Vec<FusedProbe> {
    forms.iter().map(|&form| probe_form(engine, form)).collect()
}

fn dense(rows: usize, k: usize, seed: u64, scale: f32) -> DenseRows {
    let v = grid_values(rows * k, seed)
        .iter()
        .map(|x| x * scale)
        .collect();
    DenseRows::new(rows, k, v)
}

/// A power of two near `2 / sqrt(fan_in)`: weights that keep a layer's outputs near unit size
/// while grid values stay exact in fp16.
fn weight_scale(fan_in: usize) -> f32 {
    let ideal = (fan_in.max(1) as f32).sqrt() / 2.0;
    2f32.powi(-(ideal.log2().round() as i32).max(0))
}

/// A deterministic FFN block (fp16-exact values): what the probe, the tests and `ane bench
/// --block ffn` run, with its f64 answer.
#[derive(Clone, Debug)]
pub struct FfnCase {
    /// Channels.
    pub c: usize,
    /// Hidden features.
    pub h: usize,
    /// Tokens.
    pub n: usize,
    /// The block input (and residual), `n × c`.
    pub x: DenseRows,
    /// The norm weight, `c`.
    pub norm: Vec<f32>,
    /// W1, W3 `[h, c]`; W2 `[c, h]`.
    pub gate: DenseRows,
    /// W3.
    pub up: DenseRows,
    /// W2.
    pub down: DenseRows,
}

impl FfnCase {
    /// The case of `c` channels, `h` hidden features and `n` tokens.
    pub fn new(c: usize, h: usize, n: usize) -> Self {
        FfnCase {
            c,
            h,
            n,
            x: dense(n, c, 1, 1.0),
            norm: grid_values(c, 2).iter().map(|v| 1.0 + v / 4.0).collect(),
            gate: dense(h, c, 3, weight_scale(c)),
            up: dense(h, c, 4, weight_scale(c)),
            down: dense(c, h, 5, weight_scale(h)),
        }
    }

    /// The job: RMSNorm with eps 1e-5, the residual `x`, weights identified as `key`.
    pub fn job(&self, key: u64) -> FusedJob<'_> {
        FusedJob {
            channels: self.c,
            tokens: self.n,
            eps: Some(1e-5),
            x: &self.x,
            norm_weight: &self.norm,
            ln_bias: None,
            block: Block::Ffn {
                hidden: self.h,
                gate: &self.gate,
                up: &self.up,
                down: &self.down,
                residual: &self.x,
            },
            weight_id: Some(WeightId {
                key,
                fingerprint: 0,
            }),
        }
    }

    /// The normed input in f64.
    pub fn normed_f64(&self) -> Vec<f64> {
        rms_norm_f64(&f64s(&self.x.data), &f64s(&self.norm), self.c, 1e-5)
    }

    /// The block's answer in f64, `n × c`.
    pub fn want(&self) -> Vec<f64> {
        let (g, u, d) = (
            f64s(&self.gate.data),
            f64s(&self.up.data),
            f64s(&self.down.data),
        );
        ffn_f64(&self.normed_f64(), (&g, &u, &d), (self.n, self.c, self.h))
            .iter()
            .zip(&self.x.data)
            .map(|(y, &x)| y + f64::from(x))
            .collect()
    }
}

/// A deterministic LayerNorm → GELU FFN block (whisper's, GPT-2's), with its f64 answer.
#[derive(Clone, Debug)]
pub struct GeluFfnCase {
    /// The SwiGLU case's input, norm weight and sizes; its up and down matrices serve as W1
    /// and W2.
    pub base: FfnCase,
    /// The LayerNorm's bias, `c`.
    pub ln_bias: Vec<f32>,
    /// b1, `h`.
    pub up_bias: Vec<f32>,
    /// b2, `c`.
    pub down_bias: Vec<f32>,
}

impl GeluFfnCase {
    /// The case of `c` channels, `h` hidden features and `n` tokens.
    pub fn new(c: usize, h: usize, n: usize) -> Self {
        GeluFfnCase {
            base: FfnCase::new(c, h, n),
            ln_bias: grid_values(c, 9).iter().map(|v| v / 4.0).collect(),
            up_bias: grid_values(h, 10).iter().map(|v| v / 2.0).collect(),
            down_bias: grid_values(c, 11).iter().map(|v| v / 2.0).collect(),
        }
    }

    /// The job: LayerNorm with eps 1e-5, the residual `x`, weights identified as `key`.
    pub fn job(&self, key: u64) -> FusedJob<'_> {
        let b = &self.base;
        FusedJob {
            ln_bias: Some(&self.ln_bias),
            block: Block::GeluFfn {
                hidden: b.h,
                up: &b.up,
                up_bias: &self.up_bias,
                down: &b.down,
                down_bias: &self.down_bias,
                residual: &b.x,
            },
            ..b.job(key)
        }
    }

    /// The hidden values `gelu(W1 · n + b1)` in f64, `n × h`.
    pub fn hidden_f64(&self) -> Vec<f64> {
        let b = &self.base;
        let xn = layer_norm_f64(
            &f64s(&b.x.data),
            &f64s(&b.norm),
            &f64s(&self.ln_bias),
            b.c,
            1e-5,
        );
        let mut u = matmul_f64(&xn, &f64s(&b.up.data), b.n, b.c, b.h);
        for (i, v) in u.iter_mut().enumerate() {
            *v = gelu_f64(*v + f64::from(self.up_bias[i % b.h]));
        }
        u
    }

    /// The block's answer in f64, `n × c`.
    pub fn want(&self) -> Vec<f64> {
        let b = &self.base;
        matmul_f64(&self.hidden_f64(), &f64s(&b.down.data), b.n, b.h, b.c)
            .iter()
            .enumerate()
            .map(|(i, y)| y + f64::from(self.down_bias[i % b.c]) + f64::from(b.x.data[i]))
            .collect()
    }
}

/// ggml's GELU (the tanh approximation) in f64.
pub fn gelu_f64(x: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
}

/// `[n, m] = a [n, k] · w [m, k]ᵀ` in f64.
pub fn matmul_f64(a: &[f64], w: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * m];
    for t in 0..n {
        for o in 0..m {
            out[t * m + o] = (0..k).map(|i| a[t * k + i] * w[o * k + i]).sum();
        }
    }
    out
}

/// `rms_norm(x) ⊙ w` over rows of `c`, in f64.
pub fn rms_norm_f64(x: &[f64], w: &[f64], c: usize, eps: f64) -> Vec<f64> {
    x.chunks(c)
        .flat_map(|row| {
            let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / c as f64 + eps).sqrt();
            row.iter().zip(w).map(move |(v, g)| v * r * g)
        })
        .collect()
}

/// `layer_norm(x) ⊙ w + b` over rows of `c`, in f64.
pub fn layer_norm_f64(x: &[f64], w: &[f64], b: &[f64], c: usize, eps: f64) -> Vec<f64> {
    x.chunks(c)
        .flat_map(|row| {
            let mean = row.iter().sum::<f64>() / c as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
            let r = 1.0 / (var + eps).sqrt();
            row.iter()
                .zip(w)
                .zip(b)
                .map(move |((v, g), bias)| (v - mean) * r * g + bias)
        })
        .collect()
}

/// `W2 · (silu(W1 · xn) ⊙ (W3 · xn))` for `n` rows, in f64 (no residual).
pub fn ffn_f64(
    xn: &[f64],
    (gate, up, down): (&[f64], &[f64], &[f64]),
    (n, c, h): (usize, usize, usize),
) -> Vec<f64> {
    let (g, u) = (matmul_f64(xn, gate, n, c, h), matmul_f64(xn, up, n, c, h));
    let hm: Vec<f64> = g
        .iter()
        .zip(&u)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    matmul_f64(&hm, down, n, h, c)
}

/// Normalised squared error of `got` against `want`.
pub fn nmse(want: &[f64], got: &[f32]) -> f64 {
    let err: f64 = want
        .iter()
        .zip(got)
        .map(|(a, &b)| (a - f64::from(b)).powi(2))
        .sum();
    err / want
        .iter()
        .map(|a| a * a)
        .sum::<f64>()
        .max(f64::MIN_POSITIVE)
}

/// `v` in f64.
pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn probe_form(engine: &dyn Engine, form: FusedForm) -> FusedProbe {
    // 64 channels, 96 hidden features, 33 tokens (a bucket of 64, padded)
    let case = FfnCase::new(64, 96, 33);
    let (c, n) = (case.c, case.n);
    let projections = [
        dense(64, c, 6, 0.25),
        dense(32, c, 7, 0.25),
        dense(32, c, 8, 0.25),
    ];
    let policy = match form {
        FusedForm::Baked => KernelPolicy::Baked,
        FusedForm::Streamed => KernelPolicy::Streamed,
    };
    let cache = KernelCache::new().with_policy(policy);
    let stats = Stats::default();
    let ffn = case.job(u64::MAX - 1);
    let qkv = FusedJob {
        block: Block::Projections(
            projections
                .iter()
                .map(|p| (p as &dyn MatrixSource, p.rows))
                .collect(),
        ),
        ..case.job(u64::MAX - 2)
    };
    // the same projections of a LayerNorm'd input (whisper's, GPT-2's): its own form
    let ln_bias: Vec<f32> = grid_values(c, 9).iter().map(|v| v / 4.0).collect();
    let ln = FusedJob {
        ln_bias: Some(&ln_bias),
        ..FusedJob {
            block: Block::Projections(
                projections
                    .iter()
                    .map(|p| (p as &dyn MatrixSource, p.rows))
                    .collect(),
            ),
            ..case.job(u64::MAX - 3)
        }
    };
    let xn = case.normed_f64();
    let xln = layer_norm_f64(
        &f64s(&case.x.data),
        &f64s(&case.norm),
        &f64s(&ln_bias),
        c,
        1e-5,
    );
    let outcome = (|| -> Result<f64, String> {
        let mut worst = 0f64;
        let out = engine_fused(engine, &cache, &ffn, &stats).map_err(|e| e.to_string())?;
        if out.form() != form {
            return Err(format!("ran {} instead", out.form().as_str()));
        }
        worst = worst.max(nmse(&case.want(), out.values(0)));
        // the GELU FFN exists baked only (its up bias lives in the program)
        if form == FusedForm::Baked {
            let gelu = GeluFfnCase::new(c, case.h, n);
            let out = engine_fused(engine, &cache, &gelu.job(u64::MAX - 4), &stats)
                .map_err(|e| format!("GELU FFN: {e}"))?;
            worst = worst.max(nmse(&gelu.want(), out.values(0)));
        }
        for (job, input) in [(&qkv, &xn), (&ln, &xln)] {
            let out = engine_fused(engine, &cache, job, &stats).map_err(|e| e.to_string())?;
            for (i, p) in projections.iter().enumerate() {
                let want = matmul_f64(input, &f64s(&p.data), n, c, p.rows);
                worst = worst.max(nmse(&want, out.values(i)));
            }
        }
        if worst <= MAX_FUSED_PROBE_NMSE {
            Ok(worst)
        } else {
            Err(format!("wrong result: NMSE {worst:.1e} against f64"))
        }
    })();
    FusedProbe {
        form,
        outcome,
        compiles: stats.snapshot().compiles,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::reference::{Faults, ReferenceConfig};
    use crate::{create, EngineChoice, EngineConfig, EngineKind};

    #[test]
    fn both_forms_pass_on_the_reference_engine_and_a_failing_one_says_why() {
        let e = create(
            EngineChoice::Only(EngineKind::Reference),
            &EngineConfig::default(),
        )
        .unwrap();
        let found = probe_fused(e.as_ref(), &[FusedForm::Baked, FusedForm::Streamed]);
        assert!(found.iter().all(FusedProbe::passed), "{found:?}");
        // the FFN, the GELU FFN, the Q/K/V projections, and projections of a LayerNorm'd
        // input: baked, one kernel each; streamed (no GELU FFN), the host norms either input
        // and one kernel serves both
        let compiles: Vec<u64> = found.iter().map(|p| p.compiles).collect();
        assert_eq!(compiles, [4, 2], "{found:?}");
        assert!(found[0].to_string().starts_with("fused baked ok (NMSE"));
        // evaluation failing for streamed programs
        let config = EngineConfig {
            reference: ReferenceConfig::default().with_faults(Faults::parse("streamed").unwrap()),
            ..EngineConfig::default()
        };
        let e = create(EngineChoice::Only(EngineKind::Reference), &config).unwrap();
        let found = probe_fused(e.as_ref(), &[FusedForm::Baked, FusedForm::Streamed]);
        assert!(found[0].passed(), "{found:?}");
        assert!(!found[1].passed(), "{found:?}");
        assert!(found[1].to_string().contains("failed"), "{}", found[1]);
    }
}
