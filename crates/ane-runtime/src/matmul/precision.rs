//! Is the engine's fp16 result good enough? A cheap prediction of the error fp16 rounding puts
//! into one batch of a matmul, compared with the result's own size.
//!
//! Rounding x to fp16 adds an error of variance at most `C·x² + F` (`C = u²/3`, `u = 2^-11`;
//! `F` for values in the subnormal range, whose error is absolute). Errors of different
//! elements are independent, so the expected squared error summed over all M·N outputs is
//!
//! ```text
//!   Σ_k [ (C·W(k) + M·F)·A(k) + W(k)·(C·A(k) + N·F) ]  +  C·Σ (each tile's fp16 outputs)²
//! ```
//!
//! with `W(k)`, `A(k)` the sums of squares of column k of the weights and of the activations
//! (an operand already in fp16 adds no rounding term). We bound `Σ_k W(k)·A(k)` by
//! `max_k W(k) · Σ_k A(k)`: weight columns are summed once per weight (remembered with the
//! kernels for identified weights), the activations' total is summed while staging them, and
//! the outputs' while adding them up — no extra pass over the activations. The result is
//! accepted when the prediction stays below [`MAX_PREDICTED_NMSE`] of the result's sum_sq.
//! Random data predicts ~1e-7; results that cancel (outputs tiny next to their terms) or
//! operands in fp16's subnormal range predict far more, and go to the CPU.
//!
//! The engine's accumulator adds its own term ([`Accumulator`], from the engine's limits): none
//! for f32 (the reference engine's, and what every chip without a source is assumed to do);
//! for the M6's Q15.16, each of the K products of an output is rounded to a multiple of 2^-16
//! (variance 2^-32 / 12: absolute, so small results lose the most), and a sum that could pass
//! ±32768 — bounded by Cauchy–Schwarz, the largest weight row's norm times the activations' —
//! declines the job before the hardware could saturate it. If the ANE accumulates in fp16, a
//! K-dependent term belongs here too (docs/hardware-validation.md).

use std::sync::Arc;

use rayon::prelude::*;

use super::{FallbackReason, KernelCache, MatmulJob, MatrixSource, PARALLEL_MIN_VALUES};
use crate::engine::Accumulator;

/// Largest predicted error sum_sq, relative to the result's, that the engine may return
/// (ggml's test-backend-ops accepts a measured 5e-4 for MUL_MAT).
pub const MAX_PREDICTED_NMSE: f64 = 1e-4;

/// Variance of the relative rounding error to fp16, per unit x²: (2^-11)² / 3.
const C: f64 = 1.0 / (3.0 * 4_194_304.0);
/// Variance of the absolute rounding error of a subnormal fp16 (step 2^-24): 2^-48 / 12.
const F: f64 = 1.0 / (12.0 * 281_474_976_710_656.0);

/// Variance of rounding one product to Q15.16: (2^-16)² / 12.
const Q15_16_VAR: f64 = 1.0 / (12.0 * 4_294_967_296.0);

/// The largest magnitude a Q15.16 sum holds.
const Q15_16_MAX: f64 = 32768.0;

/// Sums of squares of the columns of one operand matrix.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ColumnSumSq {
    /// Σ over rows of x², per column.
    pub(crate) columns: Vec<f64>,
    /// The largest Σ over columns of x² of one row.
    pub(crate) max_row: f64,
    /// Rows summed.
    pub(crate) rows: usize,
    /// Whether staging rounds the values (they are not stored as fp16).
    pub(crate) rounded: bool,
}

impl ColumnSumSq {
    /// Columns `0..k` of rows `0..rows` of batch `(b2, b3)` of `src`.
    pub(crate) fn of(
        src: &dyn MatrixSource,
        (b2, b3): (usize, usize),
        rows: usize,
        k: usize,
    ) -> Self {
        let rounded = rows > 0 && src.row_f16(b2, b3, 0).is_none();
        // f32 sums: K independent sums of positive terms, each off by at most rows·2^-24
        // relative — nothing next to the factor-of-two modelling of the estimate
        // adds row r into the column sums; returns its own sum
        let add_row = |acc: &mut Vec<f32>, tmp: &mut Vec<f32>, r: usize| -> f64 {
            let values = src.row_as_f32(b2, b3, r, tmp);
            let mut row = 0f64;
            for (a, &v) in acc.iter_mut().zip(&values[..k]) {
                *a += v * v;
                row += f64::from(v * v);
            }
            row
        };
        let (columns, max_row) = if rows * k < PARALLEL_MIN_VALUES {
            let (mut acc, mut tmp) = (vec![0f32; k], vec![0f32; k]);
            let max_row = (0..rows)
                .map(|r| add_row(&mut acc, &mut tmp, r))
                .fold(0f64, f64::max);
            (acc, max_row)
        } else {
            (0..rows)
                .into_par_iter()
                .fold(
                    || (vec![0f32; k], vec![0f32; k], 0f64),
                    |(mut acc, mut tmp, most), r| {
                        let row = add_row(&mut acc, &mut tmp, r);
                        (acc, tmp, most.max(row))
                    },
                )
                .map(|(acc, _, most)| (acc, most))
                .reduce(
                    || (vec![0f32; k], 0f64),
                    |(mut a, x), (b, y)| {
                        a.iter_mut().zip(&b).for_each(|(p, q)| *p += q);
                        (a, x.max(y))
                    },
                )
        };
        ColumnSumSq {
            columns: columns.into_iter().map(f64::from).collect(),
            max_row,
            rows,
            rounded,
        }
    }
}

impl ColumnSumSq {
    /// The largest column sum.
    pub(crate) fn max_column(&self) -> f64 {
        self.columns.iter().copied().fold(0.0, f64::max)
    }
}

/// The activations of one batch, as the check sees them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ActsSumSq {
    /// Σ x² over all N·K values.
    pub(crate) total: f64,
    /// Rows (N).
    pub(crate) rows: usize,
    /// Whether staging rounds the values.
    pub(crate) rounded: bool,
}

/// An upper bound on the expected squared error that rounding the two operands to fp16 adds,
/// summed over every output of the batch.
pub(crate) fn input_error(weights: &ColumnSumSq, acts: &ActsSumSq) -> f64 {
    let (rw, ra) = (
        f64::from(u8::from(weights.rounded)),
        f64::from(u8::from(acts.rounded)),
    );
    let w_total: f64 = weights.columns.iter().sum();
    (rw + ra) * C * weights.max_column() * acts.total
        + rw * weights.rows as f64 * F * acts.total
        + ra * acts.rows as f64 * F * w_total
}

/// What accumulating `outputs` sums of `k` products each in `acc` adds to the expected squared
/// error, or why the accumulator cannot hold them: `weights`' largest row norm times the
/// norm of all the activations (`acts_total` = their Σ x²) bounds every partial sum.
pub(crate) fn accumulator_error(
    acc: Accumulator,
    weights: &ColumnSumSq,
    acts_total: f64,
    outputs: usize,
) -> Result<f64, FallbackReason> {
    match acc {
        Accumulator::F32 => Ok(0.0),
        Accumulator::Q15_16 => {
            let bound = (weights.max_row * acts_total).sqrt();
            if bound >= Q15_16_MAX {
                return Err(FallbackReason::Precision(format!(
                    "Q15.16 accumulator: partial sums up to {bound:.0} could pass ±{Q15_16_MAX}"
                )));
            }
            Ok(outputs as f64 * weights.columns.len() as f64 * Q15_16_VAR)
        }
    }
}

/// One projection of a fused block (`weights` over an input normed in the program, whose
/// squares sum to `acts_total` over `rows` tokens) against its result `out`: `Some(predicted
/// NMSE)` when the prediction is too large. `norm_ops` counts the fp16 roundings the input
/// went through before the projection read it (1 when the host normed it in f32 and staged
/// it; a handful when the program norms it: square, sum, rsqrt, two multiplies), each adding
/// `C·x²` to every input value's error variance.
pub(crate) fn projection_too_imprecise(
    weights: &ColumnSumSq,
    acts_total: f64,
    rows: usize,
    norm_ops: u32,
    out: &[f32],
    acc: Accumulator,
) -> Result<(), FallbackReason> {
    let acts = ActsSumSq {
        total: acts_total,
        rows,
        rounded: true,
    };
    let extra_rounding =
        f64::from(norm_ops.saturating_sub(1)) * C * weights.max_column() * acts_total;
    let sum_sq: f64 = out.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let predicted = input_error(weights, &acts)
        + extra_rounding
        + output_error(sum_sq, out.len())
        + accumulator_error(acc, weights, acts_total, out.len())?;
    match too_imprecise(predicted, sum_sq) {
        None => Ok(()),
        Some(nmse) => Err(FallbackReason::Precision(format!(
            "predicted NMSE {nmse:.1e} > {MAX_PREDICTED_NMSE:.0e}"
        ))),
    }
}

/// Expected squared error of rounding outputs whose squares sum to `sum_sq` (and `count` of
/// them) to fp16.
pub(crate) fn output_error(sum_sq: f64, count: usize) -> f64 {
    C * sum_sq + count as f64 * F
}

/// `Some(predicted NMSE)` when the prediction is too large for a result with squared sum
/// `result_sum_sq`; `None` when the result can be used.
pub(crate) fn too_imprecise(predicted_error: f64, result_sum_sq: f64) -> Option<f64> {
    // written so that 0/0 (all-zero operands: an exact zero result) passes
    (predicted_error > MAX_PREDICTED_NMSE * result_sum_sq).then(|| predicted_error / result_sum_sq)
}

/// The check for one job: weight columns summed once (or taken from the cache); the
/// activations' and outputs' sums come per batch from staging and accumulation.
pub(crate) struct Guard {
    /// Per weight batch, `[W3][W2]`.
    weights: Vec<Arc<ColumnSumSq>>,
    /// The engine's.
    accumulator: Accumulator,
}

impl Guard {
    /// Sums the weights' columns, or takes them from `cache` for identified weights.
    pub(crate) fn new(cache: &KernelCache, job: &MatmulJob<'_>, accumulator: Accumulator) -> Self {
        let s = job.shape;
        let of = |w2, w3| Arc::new(ColumnSumSq::of(job.weights, (w2, w3), s.m, s.k));
        let weights = match job.weight_id {
            Some(id) if s.weight_batch == [1, 1] => vec![cache.weight_sum_sq(&id, || of(0, 0))],
            _ => (0..s.weight_batch[0] * s.weight_batch[1])
                .map(|i| of(i % s.weight_batch[0], i / s.weight_batch[0]))
                .collect(),
        };
        Guard {
            weights,
            accumulator,
        }
    }

    /// Whether batch `(b2, b3)`'s engine result (f32-accumulated tiles whose own rounding adds
    /// `output_err`; its squares summing to `sum_sq`, gathered while writing it back) can be
    /// used; `acts_sum_sq` is the activations' sum of squares, summed while staging them.
    /// `k_pieces` is how many K pieces a kernel summed in fp16 inside its program (1: K whole):
    /// each piece's result and each partial sum is rounded, `2·(P − 1)` more roundings of
    /// values the size of the products' sum, `C · max W(k) · Σ A` each, as for the inputs.
    pub(crate) fn check(
        &self,
        job: &MatmulJob<'_>,
        (b2, b3): (usize, usize),
        sum_sq: f64,
        output_err: f64,
        acts_sum_sq: f64,
        k_pieces: usize,
    ) -> Result<(), FallbackReason> {
        let s = job.shape;
        let (w2, w3) = s.weight_index(b2, b3);
        let weights = &self.weights[w3 * s.weight_batch[0] + w2];
        let acts = ActsSumSq {
            total: acts_sum_sq,
            rows: s.n,
            rounded: s.n > 0 && job.acts.row_f16(b2, b3, 0).is_none(),
        };
        let accumulated = accumulator_error(self.accumulator, weights, acts_sum_sq, s.m * s.n)?;
        let partial_sums =
            2.0 * k_pieces.saturating_sub(1) as f64 * C * weights.max_column() * acts_sum_sq;
        let predicted = input_error(weights, &acts) + output_err + accumulated + partial_sums;
        match too_imprecise(predicted, sum_sq) {
            None => Ok(()),
            Some(nmse) => Err(FallbackReason::Precision(format!(
                "predicted NMSE {nmse:.1e} > {MAX_PREDICTED_NMSE:.0e} in batch ({b2}, {b3})"
            ))),
        }
    }
}
