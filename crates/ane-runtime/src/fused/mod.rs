//! Fused blocks: a whole transformer FFN, or the attention projections of one normed input,
//! as one engine program — one dispatch per token chunk instead of one per matmul, and the
//! intermediates (the normed input, gate, up, their product) never cross to the host.
//!
//! A block is `y = block(rms_norm(x) ⊙ w)` over `tokens` rows of `channels` features (or
//! `block(x ⊙ w)` when the norm ran elsewhere):
//! - [`Block::Ffn`]: `r + W2 · (silu(W1 · n) ⊙ (W3 · n))` (llama's FFN with its residual `r`);
//! - [`Block::GeluFfn`]: `r + W2 · gelu(W1 · n + b1) + b2` after a LayerNorm (whisper's and
//!   GPT-2's FFN);
//! - [`Block::Projections`]: `W_i · n` for each matrix (Q, K and V).
//!
//! The programs ([`program`]) bake every weight in (one compile per block and token bucket,
//! kept on disk like any kernel), so a block needs identified weights. Before any work the
//! host predicts fp16 overflow of the norm's sum of squares; after it, any non-finite value
//! rejects the whole block, and so does any matmul of it whose predicted fp16 error is too
//! large next to its result (an FFN's programs return its hidden values for that check).
//! Results come back in memory ([`FusedOutputs`]) and the caller writes each where and when it
//! belongs: ggml reuses memory, so an output may only be written once the nodes before it in
//! the graph are done with those bytes.

pub mod probe;
pub mod program;
pub mod streamed;

use std::sync::Arc;
use std::time::Instant;

use half::f16;

use crate::engine::{Engine, Port};
use crate::kernels::policy::{should_bake, LoadedRoom, WeightId};
use crate::kernels::KernelCache;
use crate::matmul::precision::{self, ColumnSumSq};
use crate::matmul::{min_bucket, token_chunks, FallbackReason, MatrixSink, MatrixSource, Stats};
use crate::staging::convert::{
    accumulate_columns, stage_columns, sum_sq_columns, zero_columns, HiddenSums,
};
use crate::staging::kept_weights::KeptWeightKey;
use crate::surface::Surface;
use crate::sys::fp16::f32_to_f16;

pub use program::{
    ffn_program, fused_weights, layer_norm_gelu_ffn_program, layer_norm_projections_program,
    projections_program, with_norm_bias, with_up_bias,
};

/// Baked weights per fused program at most: the ceiling of any baked program
/// ([`crate::matmul::MAX_BAKED_WEIGHT_BYTES`], the largest cited as running with a CPU check);
/// past that the block is streamed or runs node by node (docs/fused-forms.md).
pub const MAX_FUSED_WEIGHT_BYTES: usize = crate::matmul::MAX_BAKED_WEIGHT_BYTES;

/// What the block computes after the norm.
pub enum Block<'a> {
    /// Gate `[hidden, channels]`, up `[hidden, channels]`, down `[channels, hidden]`, rows
    /// as ggml stores a MUL_MAT's weights (row `r`: output feature `r`); the result is added
    /// to `residual` (`tokens` rows of `channels`).
    Ffn {
        /// Hidden features.
        hidden: usize,
        /// W1.
        gate: &'a dyn MatrixSource,
        /// W3.
        up: &'a dyn MatrixSource,
        /// W2.
        down: &'a dyn MatrixSource,
        /// Added to the result.
        residual: &'a dyn MatrixSource,
    },
    /// A LayerNorm'd input's GELU FFN: up `[hidden, channels]` and its bias (`hidden`
    /// values), GELU (tanh approximation, as ggml's), down `[channels, hidden]` and its bias
    /// (`channels` values), then the residual. Baked only: the cited streamed form has no
    /// bias, and one per layer would be no streamed form.
    GeluFfn {
        /// Hidden features.
        hidden: usize,
        /// W1.
        up: &'a dyn MatrixSource,
        /// b1, added in the program before the GELU.
        up_bias: &'a [f32],
        /// W2.
        down: &'a dyn MatrixSource,
        /// b2, added by the host.
        down_bias: &'a [f32],
        /// Added to the result.
        residual: &'a dyn MatrixSource,
    },
    /// Each matrix `[rows, channels]`, with its row count.
    Projections(Vec<(&'a dyn MatrixSource, usize)>),
}

/// One fused block over `tokens` rows.
pub struct FusedJob<'a> {
    /// Features per token.
    pub channels: usize,
    /// Rows of `x`.
    pub tokens: usize,
    /// The RMS norm's epsilon; `None` when `x` comes normalised already (only the norm
    /// weight is applied).
    pub eps: Option<f32>,
    /// The block input, `tokens` rows of `channels`.
    pub x: &'a dyn MatrixSource,
    /// The norm weight, `channels` values.
    pub norm_weight: &'a [f32],
    /// `Some`: the norm is a LayerNorm (the mean subtracted first; needs `eps`) and this is its
    /// bias, `channels` values added after the weight (whisper, GPT-2). `None`: an RMSNorm.
    /// A [`Block::GeluFfn`] needs one; a SwiGLU [`Block::Ffn`] takes none.
    pub ln_bias: Option<&'a [f32]>,
    /// After the norm.
    pub block: Block<'a>,
    /// All of the block's weights' identity; `None` means they may change between calls,
    /// and a block with baked weights cannot run.
    pub weight_id: Option<WeightId>,
}

/// A block's results: FFN, one output of `tokens` rows of `channels` (residual added);
/// projections, one per matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct FusedOutputs {
    rows: Vec<usize>,
    values: Vec<Vec<f32>>,
    form: FusedForm,
}

impl FusedOutputs {
    /// How many outputs.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// How the weights reached the engine.
    pub fn form(&self) -> FusedForm {
        self.form
    }

    /// Output `i`, token-major (`tokens × rows`).
    pub fn values(&self, i: usize) -> &[f32] {
        &self.values[i]
    }

    /// Writes output `i` into `sink`, row by row (one row per token).
    pub fn write(&self, i: usize, sink: &dyn MatrixSink) {
        for (n, row) in self.values[i].chunks(self.rows[i].max(1)).enumerate() {
            sink.write_row(0, 0, n, row);
        }
    }
}

impl FusedJob<'_> {
    /// The block's input row `row` normed as its matmuls read it, into `out`.
    fn norm_into(&self, row: &[f32], out: &mut [f32]) {
        match (self.ln_bias, self.eps) {
            (Some(b), Some(eps)) => layer_norm_row(row, self.norm_weight, b, eps, out),
            _ => norm_row(row, self.norm_weight, self.eps, out),
        }
    }

    /// Output rows of each program output.
    fn output_rows(&self) -> Vec<usize> {
        match &self.block {
            Block::Ffn { .. } | Block::GeluFfn { .. } => vec![self.channels],
            Block::Projections(m) => m.iter().map(|(_, r)| *r).collect(),
        }
    }

    /// An FFN's hidden features; `None` for projections.
    fn hidden(&self) -> Option<usize> {
        match &self.block {
            Block::Ffn { hidden, .. } | Block::GeluFfn { hidden, .. } => Some(*hidden),
            Block::Projections(_) => None,
        }
    }

    /// Multiply-adds of the block's matmuls, times two.
    pub fn flops(&self) -> f64 {
        let per_token: usize = match &self.block {
            Block::Ffn { hidden, .. } => 3 * hidden * self.channels,
            Block::GeluFfn { hidden, .. } => 2 * hidden * self.channels,
            Block::Projections(m) => m.iter().map(|(_, r)| r * self.channels).sum(),
        };
        2.0 * (per_token * self.tokens) as f64
    }

    /// The matmuls inside.
    pub fn matmuls(&self) -> usize {
        match &self.block {
            Block::Ffn { .. } => 3,
            Block::GeluFfn { .. } => 2,
            Block::Projections(m) => m.len(),
        }
    }

    fn weight_bytes(&self) -> usize {
        let values: usize = match &self.block {
            Block::Ffn { hidden, .. } => 3 * hidden * self.channels,
            Block::GeluFfn { hidden, .. } => (2 * self.channels + 1) * hidden,
            Block::Projections(m) => m.iter().map(|(_, r)| r * self.channels).sum(),
        };
        2 * (values + self.channels)
    }

    /// The program and weight files for `bucket` tokens.
    fn build(&self, bucket: usize) -> (ane_mil::Program, ane_mil::WeightFiles) {
        let c = self.channels;
        let norm: Vec<f16> = self.norm_weight.iter().map(|&v| f16::from_f32(v)).collect();
        let matrix = |src: &dyn MatrixSource, rows: usize, k: usize| -> Vec<f16> {
            let mut tmp = vec![0f32; k];
            let mut out = Vec::with_capacity(rows * k);
            for r in 0..rows {
                out.extend(
                    src.row_as_f32(0, 0, r, &mut tmp)
                        .iter()
                        .map(|&v| f16::from_f32(v)),
                );
            }
            out
        };
        match &self.block {
            Block::Ffn {
                hidden,
                gate,
                up,
                down,
                ..
            } => (
                ffn_program(c, *hidden, bucket, self.eps),
                fused_weights(
                    &norm,
                    &[
                        (1, c, matrix(*gate, *hidden, c)),
                        (3, c, matrix(*up, *hidden, c)),
                        (2, *hidden, matrix(*down, c, *hidden)),
                    ],
                ),
            ),
            Block::GeluFfn {
                hidden,
                up,
                up_bias,
                down,
                ..
            } => {
                let mut files = fused_weights(
                    &norm,
                    &[
                        (1, c, matrix(*up, *hidden, c)),
                        (2, *hidden, matrix(*down, c, *hidden)),
                    ],
                );
                let to_f16 =
                    |v: &[f32]| -> Vec<f16> { v.iter().map(|&v| f16::from_f32(v)).collect() };
                with_norm_bias(&mut files, &to_f16(self.ln_bias.unwrap_or(&[])));
                with_up_bias(&mut files, &to_f16(up_bias));
                let eps = self.eps.unwrap_or_default();
                (layer_norm_gelu_ffn_program(c, *hidden, bucket, eps), files)
            }
            Block::Projections(m) => {
                let rows: Vec<usize> = m.iter().map(|(_, r)| *r).collect();
                let mats: Vec<(usize, usize, Vec<f16>)> = m
                    .iter()
                    .enumerate()
                    .map(|(i, (src, r))| (i, c, matrix(*src, *r, c)))
                    .collect();
                match (self.ln_bias, self.eps) {
                    (Some(bias), Some(eps)) => {
                        let mut files = fused_weights(&norm, &mats);
                        let bias: Vec<f16> = bias.iter().map(|&v| f16::from_f32(v)).collect();
                        with_norm_bias(&mut files, &bias);
                        (layer_norm_projections_program(c, &rows, bucket, eps), files)
                    }
                    _ => (
                        projections_program(c, &rows, bucket, self.eps),
                        fused_weights(&norm, &mats),
                    ),
                }
            }
        }
    }
}

/// fp16's largest finite value, less a margin for the rounding of a sum's partial results.
const NORM_SUM_LIMIT: f64 = 32768.0;

/// How a block's weights reach the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedForm {
    /// Compiled into the program ([`program`]): one kernel per block and token bucket.
    Baked,
    /// Staged into the input next to the activations ([`streamed`]): one kernel per shape
    /// and token bucket, every layer.
    Streamed,
}

impl FusedForm {
    /// `baked` or `streamed`.
    pub fn as_str(self) -> &'static str {
        match self {
            FusedForm::Baked => "baked",
            FusedForm::Streamed => "streamed",
        }
    }
}

/// Computes `job` on the engine: every output, or the reason. Baked when the policy, the
/// weights' identity and size (at most [`MAX_FUSED_WEIGHT_BYTES`]) and `auto`'s room allow,
/// streamed otherwise.
///
/// # Errors
/// Why the engine could not: shapes past its limits, a predicted or seen fp16 overflow, a
/// compile or evaluation failure.
pub fn engine_fused(
    engine: &dyn Engine,
    cache: &KernelCache,
    job: &FusedJob<'_>,
    stats: &Stats,
) -> Result<FusedOutputs, FallbackReason> {
    let clock = Instant::now();
    let c = job.channels;
    let rows = job.output_rows();
    let widest = rows.iter().copied().chain([c]).max().unwrap_or(c);
    let hidden = job.hidden().unwrap_or(0);
    let max_dim = engine.limits().max_dim;
    if widest.max(hidden) > max_dim || job.tokens == 0 || c == 0 {
        return Err(FallbackReason::Unsupported(format!(
            "fused block with {c} channels, {hidden} hidden, outputs {rows:?}: past {max_dim}"
        )));
    }
    if job.norm_weight.len() != c || job.ln_bias.is_some_and(|b| b.len() != c) {
        return Err(FallbackReason::Internal("fused job misassembled".into()));
    }
    let gelu = matches!(job.block, Block::GeluFfn { .. });
    if job.ln_bias.is_some() && (job.eps.is_none() || matches!(job.block, Block::Ffn { .. })) {
        return Err(FallbackReason::Unsupported(
            "a LayerNorm block other than projections or a GELU FFN".into(),
        ));
    }
    if let Block::GeluFfn {
        up_bias, down_bias, ..
    } = job.block
    {
        if job.ln_bias.is_none() || up_bias.len() != hidden || down_bias.len() != c {
            return Err(FallbackReason::Internal("GELU FFN misassembled".into()));
        }
    }
    let chunks = token_chunks(job.tokens, max_dim, min_bucket(widest.max(hidden), c));
    // one kernel per program: the same weights under another form are another kernel
    let id = job.weight_id.map(|id| WeightId {
        key: {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (id.key, c, hidden, &rows, job.eps.map(f32::to_bits)).hash(&mut h);
            job.ln_bias.is_some().hash(&mut h);
            h.finish()
        },
        ..id
    });
    let baked = id.filter(|id| {
        // baked like a MUL_MAT's weights: under `auto` only while the budget and the
        // loaded-kernel cap keep room for the streamed kernels the rest of the model needs
        let buckets: Vec<usize> = chunks.iter().map(|&(_, _, b)| b).collect();
        let room = LoadedRoom {
            baked_loaded: cache.loaded().1 as u32,
            max_loaded: cache.max_loaded().map(|m| m as u32),
        };
        cache.policy().may_bake()
            && cache.fused_forms().0
            && job.weight_bytes() <= MAX_FUSED_WEIGHT_BYTES
            && should_bake(cache.policy(), &engine.limits(), room, || {
                cache.fused_missing(id, &buckets)
            })
    });
    if baked.is_none() && gelu {
        return Err(FallbackReason::Unsupported(
            "a GELU FFN that cannot be baked (the cited streamed form has no bias)".into(),
        ));
    }
    if baked.is_none() && !cache.fused_forms().1 {
        return Err(FallbackReason::Unsupported(
            "the streamed fused form is off (its self-probe failed) and baking is not possible"
                .into(),
        ));
    }
    let (evaluated, form) = match baked {
        Some(id) => (
            run_baked(engine, cache, job, &id, &chunks, clock, stats)?,
            FusedForm::Baked,
        ),
        None => (
            run_streamed(engine, cache, job, id, &chunks, clock, stats)?,
            FusedForm::Streamed,
        ),
    };
    check_precision(cache, job, form, &evaluated, engine.limits().accumulator)?;
    let mut results = evaluated.values;
    // the FFN adds its residual in f32, as ggml's ADD does (a GELU FFN its down
    // projection's bias first, as ggml's graph does)
    let (residual, down_bias) = match job.block {
        Block::Ffn { residual, .. } => (Some(residual), None),
        Block::GeluFfn {
            residual,
            down_bias,
            ..
        } => (Some(residual), Some(down_bias)),
        Block::Projections(_) => (None, None),
    };
    if let Some(residual) = residual {
        let mut tmp = vec![0f32; c];
        for (n, out) in results[0].chunks_mut(c).enumerate() {
            if let Some(b) = down_bias {
                out.iter_mut().zip(b).for_each(|(o, b)| *o += b);
            }
            for (o, r) in out.iter_mut().zip(residual.row_as_f32(0, 0, n, &mut tmp)) {
                *o += r;
            }
        }
    }
    for _ in 0..job.matmuls() {
        stats.record_offload(job.flops() / job.matmuls() as f64);
    }
    Ok(FusedOutputs {
        rows,
        values: results,
        form,
    })
}

/// Every matmul of a block under the same precision check as single MUL_MATs
/// (`matmul::precision`): its predicted fp16 error next to its result.
/// - Projections: the weights' and the normed input's rounding (more of it when the program
///   norms in fp16), the output's.
/// - FFN: the down projection, from the hidden values the program returns beside its result
///   (their sum of squares): W2's rounding and the hidden values' — each went
///   through the input's roundings and a weight's and a conv's on the gate and on the up path,
///   then the sigmoid and two multiplies. The gate and up projections count here as relative
///   error passed on to the hidden values; a gate or up whose sums cancel is not seen (its
///   values stay in the program: a Mac-side question, docs/hardware-validation.md).
fn check_precision(
    cache: &KernelCache,
    job: &FusedJob<'_>,
    form: FusedForm,
    evaluated: &Evaluated,
    acc: crate::engine::Accumulator,
) -> Result<(), FallbackReason> {
    let values = &evaluated.values;
    use std::hash::{Hash, Hasher};
    let c = job.channels;
    // roundings of the normed input before the matmuls read it: staging (streamed: the host
    // norms in f32); in a baked program also the RMSNorm's square, sum, rsqrt and two
    // multiplies, or the LayerNorm's subtraction, multiply by the rsqrt (itself from a mean,
    // an add and a pow), weight and bias; only the weight's multiply when normed elsewhere
    let norm_ops = match (form, job.eps, job.ln_bias) {
        (FusedForm::Streamed, _, _) => 1,
        (FusedForm::Baked, Some(_), Some(_)) => 7,
        (FusedForm::Baked, Some(_), None) => 5,
        (FusedForm::Baked, None, _) => 2,
    };
    // a baked program sums a K past `BAKED_K_PIECE` in pieces: each piece's result and each
    // partial sum is rounded, 2·(P − 1) more roundings (as the baked matmul's guard counts)
    let pieces = |k: usize| -> u32 {
        match form {
            FusedForm::Baked => 2 * (crate::matmul::k_pieces(k).len() as u32 - 1),
            FusedForm::Streamed => 0,
        }
    };
    // column sums of a matrix, remembered per block and slot for identified weights
    let column_sums = |slot: usize, m: &dyn MatrixSource, rows: usize, k: usize| {
        let sums = || Arc::new(ColumnSumSq::of(m, (0, 0), rows, k));
        match job.weight_id {
            Some(id) => {
                let mut key = std::collections::hash_map::DefaultHasher::new();
                ("fused matrix", id.key, slot).hash(&mut key);
                let id = WeightId {
                    key: key.finish(),
                    fingerprint: id.fingerprint,
                };
                cache.weight_sum_sq(&id, sums)
            }
            None => sums(),
        }
    };
    let refuse = |what: String, why: FallbackReason| match why {
        FallbackReason::Precision(text) => FallbackReason::Precision(format!("{what}: {text}")),
        other => other,
    };
    // an FFN's down projection, from the hidden values' sum of squares and the roundings
    // they went through
    let down_projection = |down: &dyn MatrixSource, hidden: usize, ops: u32, what: &str| {
        let weights = column_sums(0, down, c, hidden);
        precision::projection_too_imprecise(
            &weights,
            evaluated.hidden.sum_sq,
            job.tokens,
            ops,
            &values[0],
            acc,
        )
        .map_err(|why| refuse(format!("{what} down projection"), why))
    };
    match &job.block {
        Block::Ffn { hidden, down, .. } => {
            let ops = 2 * (norm_ops + 2 + pieces(c)) + 3 + pieces(*hidden);
            down_projection(*down, *hidden, ops, "fused FFN")
        }
        Block::GeluFfn { hidden, down, .. } => {
            gelu_in_range(evaluated.hidden)?;
            // the hidden values went through the norm, W1's conv and the bias add, then the
            // GELU chain's nine ops
            let ops = norm_ops + 2 + pieces(c) + 9 + pieces(*hidden);
            down_projection(*down, *hidden, ops, "fused GELU FFN")
        }
        Block::Projections(mats) => {
            // Σ over the block's input of its normed values squared, as the matmuls read it (the
            // streamed form normed it on the host already)
            let acts_total = evaluated.normed_sum_sq.unwrap_or_else(|| {
                let (mut row, mut normed) = (vec![0f32; c], vec![0f32; c]);
                (0..job.tokens)
                    .map(|n| {
                        job.norm_into(job.x.row_as_f32(0, 0, n, &mut row), &mut normed);
                        sum_sq(&normed)
                    })
                    .sum()
            });
            for (j, ((m, rows), out)) in mats.iter().zip(values).enumerate() {
                let weights = column_sums(j, *m, *rows, c);
                precision::projection_too_imprecise(
                    &weights,
                    acts_total,
                    job.tokens,
                    norm_ops + pieces(c),
                    out,
                    acc,
                )
                .map_err(|why| refuse(format!("fused projection {j}"), why))?;
            }
            Ok(())
        }
    }
}

/// fp16's x³ passes its largest finite value (65504) for |x| past 40.3: the GELU chain then
/// goes through ±inf, which IEEE arithmetic carries to the right limits (x, 0), but whether
/// the ANE's tanh of inf is ±1 no source shows. Until a Mac says so, such blocks decline.
const GELU_MAX_INPUT: f32 = 40.0;

/// The smallest value the tanh GELU takes is −0.170 (at x ≈ −0.75); anything below it did not
/// come from the chain as written.
const GELU_MIN_VALUE: f32 = -0.2;

/// A GELU FFN's hidden values against what its chain can return: a value past
/// [`GELU_MAX_INPUT`] (gelu(x) ≈ x there) came through an fp16 overflow; one below
/// [`GELU_MIN_VALUE`] from an engine whose ops differ from the chain's.
fn gelu_in_range(h: HiddenSums) -> Result<(), FallbackReason> {
    if h.max >= GELU_MAX_INPUT {
        return Err(FallbackReason::NonFinite);
    }
    if h.min < GELU_MIN_VALUE {
        return Err(FallbackReason::Eval(format!(
            "a GELU value of {} (its minimum is -0.17)",
            h.min
        )));
    }
    Ok(())
}

/// What a block's programs returned, with the sums the precision check reads.
struct Evaluated {
    /// The outputs, token-major.
    values: Vec<Vec<f32>>,
    /// An FFN's hidden values' sum of squares and extremes (empty for projections).
    hidden: HiddenSums,
    /// The normed input's sum of squares where the host normed it (streamed).
    normed_sum_sq: Option<f64>,
}

/// Σ v², in f64.
fn sum_sq(values: &[f32]) -> f64 {
    values.iter().map(|&v| f64::from(v) * f64::from(v)).sum()
}

/// The baked program of each chunk's bucket, evaluated.
fn run_baked(
    engine: &dyn Engine,
    cache: &KernelCache,
    job: &FusedJob<'_>,
    id: &WeightId,
    chunks: &[(usize, usize, usize)],
    clock: Instant,
    stats: &Stats,
) -> Result<Evaluated, FallbackReason> {
    let c = job.channels;
    let rows = job.output_rows();
    // the norm squares x (LayerNorm: x − mean) in fp16: predict overflow before spending
    // anything. An RMSNorm's sum of squares must fit; a LayerNorm's every square must (one
    // that overflows makes pow(inf, −0.5) = 0 and every output of that token β: finite, so no
    // check afterwards would see it)
    let mut tmp = vec![0f32; c];
    if job.eps.is_some() {
        for n in 0..job.tokens {
            let row = job.x.row_as_f32(0, 0, n, &mut tmp);
            let fp16 = |v: f32| f64::from(f16::from_f32(v).to_f32());
            let too_big = if job.ln_bias.is_some() {
                let mean = row.iter().map(|&v| fp16(v)).sum::<f64>() / c as f64;
                row.iter()
                    .any(|&v| (fp16(v) - mean).powi(2) > NORM_SUM_LIMIT)
            } else {
                row.iter().map(|&v| fp16(v).powi(2)).sum::<f64>() > NORM_SUM_LIMIT
            };
            if too_big {
                return Err(FallbackReason::NonFinite);
            }
        }
    }
    let mut kernels = Vec::with_capacity(chunks.len());
    for &(_, _, bucket) in chunks {
        kernels.push(cache.get_or_bake_fused(engine, id, bucket, || job.build(bucket), stats)?);
    }
    stats.add_planning(clock.elapsed());
    let mut results: Vec<Vec<f32>> = rows.iter().map(|&m| vec![0f32; job.tokens * m]).collect();
    let mut hidden = HiddenSums::EMPTY;
    for (&(n0, bn, bucket), kernel) in chunks.iter().zip(&kernels) {
        let clock = Instant::now();
        let mut input = cache.surfaces.take(kernel.as_ref(), Port::Input(0));
        stage_columns(&mut input, job.x, (0, 0), (n0, bn), (0, c), c, 0, None);
        zero_columns(&mut input, c, (bn, bucket));
        stats.add_act_bytes(2 * c * bn);
        stats.add_staging(clock.elapsed());
        let taps = job.hidden().map(|rows| HiddenTaps {
            rows,
            sums: &mut hidden,
        });
        let done = evaluate(
            (kernel.as_ref(), cache),
            &input,
            &mut results,
            &rows,
            (n0, bn),
            true,
            taps,
            stats,
        );
        cache.surfaces.give_back(input);
        done?;
    }
    Ok(Evaluated {
        values: results,
        hidden,
        normed_sum_sq: None,
    })
}

/// Where an FFN program's second output, its hidden values, goes: `rows` of them per token,
/// their squares summed and extremes kept in `sums` (the precision check's input for the
/// down projection, and a GELU's range check).
struct HiddenTaps<'a> {
    rows: usize,
    sums: &'a mut HiddenSums,
}

/// One evaluation: `input` in, each output added into (or, `first`, assigned to) `results`
/// at tokens `n0..n0 + bn`; an FFN's hidden values summed into `taps`. The outputs are
/// surfaces the kernel lent, from the cache's pool and back.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    (kernel, cache): (&dyn crate::engine::Kernel, &KernelCache),
    input: &Surface,
    results: &mut [Vec<f32>],
    rows: &[usize],
    (n0, bn): (usize, usize),
    first: bool,
    taps: Option<HiddenTaps<'_>>,
    stats: &Stats,
) -> Result<(), FallbackReason> {
    let outputs = kernel.procedures()[0].outputs.len();
    let mut outs: Vec<Surface> = (0..outputs)
        .map(|i| cache.surfaces.take(kernel, Port::Output(i)))
        .collect();
    let result = read_outputs(
        kernel,
        input,
        &mut outs,
        (results, rows),
        (n0, bn),
        first,
        taps,
        stats,
    );
    for s in outs {
        cache.surfaces.give_back(s);
    }
    result
}

/// [`evaluate`] into `outs`.
#[allow(clippy::too_many_arguments)]
fn read_outputs(
    kernel: &dyn crate::engine::Kernel,
    input: &Surface,
    outs: &mut [Surface],
    (results, rows): (&mut [Vec<f32>], &[usize]),
    (n0, bn): (usize, usize),
    first: bool,
    taps: Option<HiddenTaps<'_>>,
    stats: &Stats,
) -> Result<(), FallbackReason> {
    let clock = Instant::now();
    let mut out_refs: Vec<&mut Surface> = outs.iter_mut().collect();
    let evaluated = kernel.eval(0, &[input], &mut out_refs);
    stats.add_dispatch();
    stats.add_engine(clock.elapsed());
    let copied = evaluated.map_err(|e| FallbackReason::Eval(e.to_string()))?;
    stats.add_copied_bytes(copied);
    let clock = Instant::now();
    for ((s, res), &m) in outs.iter().zip(results.iter_mut()).zip(rows) {
        accumulate_columns(s, res, m, (n0, bn), (0, m), first).ok_or(FallbackReason::NonFinite)?;
    }
    if let Some(taps) = taps {
        let hidden = outs.get(results.len()).ok_or_else(|| {
            FallbackReason::Internal("an FFN kernel without its hidden output".into())
        })?;
        let sums = sum_sq_columns(hidden, taps.rows, bn).ok_or(FallbackReason::NonFinite)?;
        *taps.sums = taps.sums.join(sums);
    }
    stats.add_writeback(clock.elapsed());
    Ok(())
}

/// The block with its weights streamed: the host norms the input (f32, as ggml's RMS_NORM
/// and MUL compute it) and stages it beside the weights; an FFN runs hidden tile by hidden
/// tile, its partial results summed here.
fn run_streamed(
    engine: &dyn Engine,
    cache: &KernelCache,
    job: &FusedJob<'_>,
    id: Option<WeightId>,
    chunks: &[(usize, usize, usize)],
    clock: Instant,
    stats: &Stats,
) -> Result<Evaluated, FallbackReason> {
    use std::hash::{Hash, Hasher};
    let c = job.channels;
    let rows = job.output_rows();
    let max_dim = engine.limits().max_dim;
    let unsupported = |why: String| FallbackReason::Unsupported(why);
    if c > crate::matmul::STREAMED_FUSED_WIDTH {
        return Err(unsupported(format!(
            "a {c}-channel input past the {} a streamed block takes whole (node by node, K-tiled)",
            crate::matmul::STREAMED_FUSED_WIDTH
        )));
    }
    // an FFN runs in hidden tiles (their width by bucket); projections in one program
    let tile_of = |bucket: usize| -> Result<(usize, usize), FallbackReason> {
        match &job.block {
            Block::Ffn { hidden, .. } => {
                let ht =
                    streamed::ffn_hidden_tile(c, *hidden, bucket, max_dim).ok_or_else(|| {
                        unsupported(format!("{c} channels leave no width for weights"))
                    })?;
                Ok((ht, hidden.div_ceil(ht)))
            }
            Block::Projections(_) => Ok((0, 1)),
            Block::GeluFfn { .. } => Err(FallbackReason::Unsupported(
                "a GELU FFN has no streamed form".into(),
            )),
        }
    };
    if let Block::Projections(_) = job.block {
        if !streamed::projections_fit(c, &rows, max_dim) {
            return Err(unsupported(format!(
                "projections of {rows:?} rows past the input width {max_dim}"
            )));
        }
    }
    let acts = normed_input(job);
    let mut kernels = Vec::with_capacity(chunks.len());
    for &(_, _, bucket) in chunks {
        let mut key = std::collections::hash_map::DefaultHasher::new();
        let (ht, _) = tile_of(bucket)?;
        let kernel = match &job.block {
            Block::Ffn { .. } => {
                ("ffn", c, ht, bucket).hash(&mut key);
                cache.get_or_compile_fused(
                    engine,
                    key.finish(),
                    || streamed::streamed_ffn_program(c, ht, bucket),
                    stats,
                )?
            }
            Block::Projections(_) => {
                ("projections", c, &rows, bucket).hash(&mut key);
                cache.get_or_compile_fused(
                    engine,
                    key.finish(),
                    || streamed::streamed_projections_program(c, &rows, bucket),
                    stats,
                )?
            }
            Block::GeluFfn { .. } => {
                return Err(FallbackReason::Unsupported(
                    "a GELU FFN has no streamed form".into(),
                ))
            }
        };
        kernels.push(kernel);
    }
    stats.add_planning(clock.elapsed());
    let mut results: Vec<Vec<f32>> = rows.iter().map(|&m| vec![0f32; job.tokens * m]).collect();
    let mut hidden = HiddenSums::EMPTY;
    for (&(n0, bn, bucket), kernel) in chunks.iter().zip(&kernels) {
        let layout = kernel.procedures()[0].inputs[0].clone();
        let (ht, tiles) = tile_of(bucket)?;
        for tile in 0..tiles {
            let clock = Instant::now();
            let key = id.map(|id| KeptWeightKey::new(id, (0, 0), (tile, 0), bucket, &layout));
            // the tile's persistent input surface, in memory the kernel takes in place
            let kept = cache.take_kept(key.as_ref(), kernel.as_ref(), Port::Input(0));
            let mut input = match kept {
                Some(s) => s,
                None => {
                    let mut s = cache.surfaces.take(kernel.as_ref(), Port::Input(0));
                    stage_streamed_weights(&mut s, job, bucket, (tile * ht, ht), stats);
                    s
                }
            };
            stage_acts(&mut input, &acts, c, (n0, bn), bucket);
            stats.add_act_bytes(2 * c * bn);
            stats.add_staging(clock.elapsed());
            // the tile's hidden values (a last tile's padding: zero weights, zero values)
            let taps = job.hidden().map(|_| HiddenTaps {
                rows: ht,
                sums: &mut hidden,
            });
            let done = evaluate(
                (kernel.as_ref(), cache),
                &input,
                &mut results,
                &rows,
                (n0, bn),
                tile == 0,
                taps,
                stats,
            );
            cache.put_back(input, key);
            done?;
        }
    }
    Ok(Evaluated {
        values: results,
        hidden,
        normed_sum_sq: Some(sum_sq(&acts)),
    })
}

/// The input the block's matmuls read, `tokens × channels` f32: `rms_norm(x) ⊙ w` computed as
/// ggml does (the sum of squares in f64, the scale in f32), or `x ⊙ w` normed elsewhere.
fn normed_input(job: &FusedJob<'_>) -> Vec<f32> {
    let c = job.channels;
    let mut tmp = vec![0f32; c];
    let mut out = vec![0f32; job.tokens * c];
    for (n, dst) in out.chunks_mut(c).enumerate() {
        job.norm_into(job.x.row_as_f32(0, 0, n, &mut tmp), dst);
    }
    out
}

/// `layer_norm(row) ⊙ w + b` into `out`, as ggml's NORM, MUL and ADD compute it (the mean and
/// the variance in f64, the scale in f32).
pub fn layer_norm_row(row: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let n = row.len().max(1) as f64;
    let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = row
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let scale = 1.0 / (var as f32 + eps).sqrt();
    for (((o, &v), &g), &bias) in out.iter_mut().zip(row).zip(w).zip(b) {
        *o = (v - mean as f32) * scale * g + bias;
    }
}

/// `rms_norm(row) ⊙ w`, or `row ⊙ w` without `eps`, into `out`: as ggml's RMS_NORM and MUL
/// compute it (the sum of squares in f64, the scale in f32).
pub fn norm_row(row: &[f32], w: &[f32], eps: Option<f32>, out: &mut [f32]) {
    let scale = eps.map_or(1.0, |eps| {
        let mean = row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            / row.len().max(1) as f64;
        1.0 / (mean as f32 + eps).sqrt()
    });
    for ((o, &v), &g) in out.iter_mut().zip(row).zip(w) {
        *o = v * scale * g;
    }
}

/// Columns `0..bucket` of every row: tokens `n0..n0 + bn` of `acts`, zeros after.
fn stage_acts(s: &mut Surface, acts: &[f32], c: usize, (n0, bn): (usize, usize), bucket: usize) {
    for d in 0..c {
        let row = s.row_f16_mut(d).expect("an fp16 input");
        for (t, o) in row[..bucket].iter_mut().enumerate() {
            *o = if t < bn {
                f16::from_f32(acts[(n0 + t) * c + d])
            } else {
                f16::ZERO
            };
        }
    }
}

/// The weight columns after the `bucket` activation columns: an FFN's hidden tile
/// `h0..h0 + ht` of W1, W3 and W2 (zeros past the hidden size), or every projection matrix.
fn stage_streamed_weights(
    s: &mut Surface,
    job: &FusedJob<'_>,
    bucket: usize,
    (h0, ht): (usize, usize),
    stats: &Stats,
) {
    let c = job.channels;
    match &job.block {
        Block::Ffn {
            hidden,
            gate,
            up,
            down,
            ..
        } => {
            let real = ht.min(hidden - h0);
            stage_columns(s, *gate, (0, 0), (h0, real), (0, c), c, bucket, None);
            stage_columns(s, *up, (0, 0), (h0, real), (0, c), c, bucket + ht, None);
            let mut tmp = vec![0f32; *hidden];
            for d in 0..c {
                let src = &down.row_as_f32(0, 0, d, &mut tmp)[h0..h0 + real];
                let row = s.row_f16_mut(d).expect("an fp16 input");
                f32_to_f16(&mut row[bucket + 2 * ht..][..real], src);
            }
            // a last tile's padding: zero weights (the surface may be a reused one)
            for part in 0..3 {
                let at = bucket + part * ht;
                zero_columns(s, c, (at + real, at + ht));
            }
            stats.add_weight_bytes(2 * 3 * real * c);
        }
        // never staged: `run_streamed` refuses it before any staging
        Block::GeluFfn { .. } => {}
        Block::Projections(m) => {
            let mut at = bucket;
            for (src, r) in m {
                stage_columns(s, *src, (0, 0), (0, *r), (0, c), c, at, None);
                at += r;
                stats.add_weight_bytes(2 * r * c);
            }
        }
    }
}
