//! Rows in and out of fp16 surfaces, on every call: source rows (activations, and weights
//! that are not kept staged) converted or copied into a surface's rows or columns, and result
//! tiles added back into the f32 output.

use rayon::prelude::*;

use crate::matmul::MatrixSource;
use crate::surface::Surface;
use crate::sys::fp16::{f16_to_f32, f32_to_f16, f32_to_f16_sum_sq, sum_of_squares};

/// Columns `k0..k0 + dst.len()` of one source row as fp16: copied from fp16 rows, converted
/// from f32 ones (`tmp`, K long, holds rows that must be read first). With `sum_sq`, adds the
/// sum of the source values' squares (before rounding) into it.
pub(crate) fn row_to_f16(
    src: &dyn MatrixSource,
    (b2, b3): (usize, usize),
    row: usize,
    k0: usize,
    dst: &mut [half::f16],
    tmp: &mut [f32],
    sum_sq: Option<&mut f64>,
) {
    let cols = dst.len();
    if let Some(h) = src.row_f16(b2, b3, row) {
        dst.copy_from_slice(&h[k0..k0 + cols]);
        if let Some(e) = sum_sq {
            f16_to_f32(&mut tmp[..cols], dst);
            *e += sum_of_squares(&tmp[..cols]);
        }
        return;
    }
    let values = match src.row_f32(b2, b3, row) {
        Some(v) => v,
        None => {
            src.read_row(b2, b3, row, tmp);
            &tmp[..]
        }
    };
    let values = &values[k0..k0 + cols];
    match sum_sq {
        Some(e) => *e += f32_to_f16_sum_sq(dst, values),
        None => f32_to_f16(dst, values),
    }
}

/// Converts rows `r0..r0+rows` (columns `k0..k0+cols` of `k`) of a source batch straight into
/// a surface's fp16 rows: one multi-threaded pass, each thread with one f32 row buffer. With
/// `sum_sq`, also adds the sum of the staged values' squares into it, from the same pass (for
/// the precision check).
pub fn stage_rows(
    s: &mut Surface,
    src: &dyn MatrixSource,
    batch: (usize, usize),
    (r0, rows): (usize, usize),
    (k0, cols): (usize, usize),
    k: usize,
    sum_sq: Option<&mut f64>,
) {
    let layout = s.layout().clone();
    debug_assert!(layout.rows() >= rows && layout.dims[3] >= cols);
    let summed = sum_sq.is_some();
    let fill = |r: usize, row: &mut [u8], tmp: &mut Vec<f32>| {
        let dst: &mut [half::f16] = bytemuck::cast_slice_mut(&mut row[..2 * cols]);
        let mut e = 0.0;
        row_to_f16(src, batch, r0 + r, k0, dst, tmp, summed.then_some(&mut e));
        e
    };
    let bytes = s.as_bytes_mut();
    let total: f64 = if layout.is_row_contiguous() && rows * cols >= PARALLEL_MIN_VALUES {
        bytes[..rows * layout.row_stride]
            .par_chunks_mut(layout.row_stride)
            .enumerate()
            .map_init(|| vec![0f32; k], |tmp, (r, row)| fill(r, row, tmp))
            .sum()
    } else {
        let mut tmp = vec![0f32; k];
        (0..rows)
            .map(|r| {
                let off = layout.flat_row_offset(r);
                fill(r, &mut bytes[off..], &mut tmp)
            })
            .sum()
    };
    if let Some(e) = sum_sq {
        *e += total;
    }
}

/// Below this many values a copy or conversion stays on the calling thread: handing it to
/// the thread pool costs more than it saves.
pub(crate) const PARALLEL_MIN_VALUES: usize = 1 << 16;

/// Source rows per block when staging them as columns: each surface row then receives 32
/// contiguous bytes per block instead of one value.
const COLUMN_BLOCK: usize = 16;

/// Writes rows `r0..r0+rows` (columns `k0..k0+cols` of `k`) of a source batch as surface
/// *columns* `col0..col0+rows` of rows `0..cols`: the channel-first layout of every kernel
/// input (one surface row per input feature, tokens or weight rows along the width). With
/// `sum_sq`, adds the sum of the values' squares (before rounding) into it.
///
/// Multi-threaded over surface rows: each thread converts its features of a block of
/// `COLUMN_BLOCK` source rows, then scatters them into its own surface rows.
#[allow(
    clippy::too_many_arguments,
    reason = "source, batch, row and column ranges, and the destination column: the transposed staging case"
)]
pub fn stage_columns(
    s: &mut Surface,
    src: &dyn MatrixSource,
    batch: (usize, usize),
    (r0, rows): (usize, usize),
    (k0, cols): (usize, usize),
    k: usize,
    col0: usize,
    sum_sq: Option<&mut f64>,
) {
    let layout = s.layout();
    debug_assert!(layout.rows() >= cols && layout.dims[3] >= col0 + rows);
    debug_assert!(layout.is_row_contiguous());
    let stride = layout.row_stride;
    if cols == 0 || rows == 0 {
        return;
    }
    let summed = sum_sq.is_some();
    let bytes = &mut s.as_bytes_mut()[..cols * stride];
    // surface rows d0.. (as many as `part` holds); returns their values' sum of squares
    let stage = |d0: usize, part: &mut [u8]| -> f64 {
        let nd = part.len() / stride;
        let mut tmp = vec![0f32; k];
        let mut block = vec![half::f16::ZERO; COLUMN_BLOCK * nd];
        let mut total = 0.0;
        for b0 in (0..rows).step_by(COLUMN_BLOCK) {
            let n = COLUMN_BLOCK.min(rows - b0);
            for (i, dst) in block.chunks_mut(nd).take(n).enumerate() {
                let acc = if summed { Some(&mut total) } else { None };
                row_to_f16(src, batch, r0 + b0 + i, k0 + d0, dst, &mut tmp, acc);
            }
            for d in 0..nd {
                let off = d * stride + 2 * (col0 + b0);
                let out: &mut [half::f16] = bytemuck::cast_slice_mut(&mut part[off..off + 2 * n]);
                for (i, o) in out.iter_mut().enumerate() {
                    *o = block[i * nd + d];
                }
            }
        }
        total
    };
    let total = if rows * cols < PARALLEL_MIN_VALUES {
        stage(0, bytes)
    } else {
        let per = cols.div_ceil(4 * rayon::current_num_threads()).max(16);
        bytes
            .par_chunks_mut(per * stride)
            .enumerate()
            .map(|(i, part)| stage(i * per, part))
            .sum()
    };
    if let Some(e) = sum_sq {
        *e += total;
    }
}

/// Zeroes columns `c0..c1` of the first `rows` rows (the token columns a bucket pads).
pub(crate) fn zero_columns(s: &mut Surface, rows: usize, (c0, c1): (usize, usize)) {
    let layout = s.layout().clone();
    let bytes = s.as_bytes_mut();
    for r in 0..rows {
        let off = layout.flat_row_offset(r);
        bytes[off + 2 * c0..off + 2 * c1].fill(0);
    }
}

/// Adds a `[1, bm, 1, _]` result tile — surface row `r` holding output feature `m0 + r` of
/// tokens `n0..n0 + bn` in its first `bn` columns — into `out` (`[n, m]`), transposing (with
/// `first`, assigns instead: the first K tile, so `out` needs no clearing); returns the sum
/// of the tile's squares, or `None` if any value is not finite.
pub fn accumulate_columns(
    s: &Surface,
    out: &mut [f32],
    m: usize,
    (n0, bn): (usize, usize),
    (m0, bm): (usize, usize),
    first: bool,
) -> Option<f64> {
    let layout = s.layout();
    let bytes = s.as_bytes();
    let mut finite = true;
    let mut sum_sq = 0.0;
    let mut row32 = vec![0f32; bn];
    for r in 0..bm {
        let off = layout.flat_row_offset(r);
        let row: &[half::f16] = bytemuck::cast_slice(&bytes[off..off + 2 * bn]);
        f16_to_f32(&mut row32, row);
        let mut row_sum_sq = 0f32;
        for (c, &v) in row32.iter().enumerate() {
            finite &= v.is_finite();
            row_sum_sq += v * v;
            let o = &mut out[(n0 + c) * m + m0 + r];
            *o = if first { v } else { *o + v };
        }
        sum_sq += f64::from(row_sum_sq);
    }
    finite.then_some(sum_sq)
}

/// Σ v² and the extremes of a block of hidden values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct HiddenSums {
    /// Σ v², in f64.
    pub(crate) sum_sq: f64,
    /// The smallest value.
    pub(crate) min: f32,
    /// The largest value.
    pub(crate) max: f32,
}

impl HiddenSums {
    /// Nothing seen yet.
    pub(crate) const EMPTY: HiddenSums = HiddenSums {
        sum_sq: 0.0,
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
    };

    /// Both blocks together.
    pub(crate) fn join(self, o: HiddenSums) -> HiddenSums {
        HiddenSums {
            sum_sq: self.sum_sq + o.sum_sq,
            min: self.min.min(o.min),
            max: self.max.max(o.max),
        }
    }
}

/// Σ v² and the extremes over columns `0..bn` of rows `0..rows` of an fp16 surface (f32 per
/// row, f64 in all), or `None` when a value is not finite: a fused FFN's hidden values, read
/// for its precision and range checks and never written anywhere.
pub(crate) fn sum_sq_columns(s: &Surface, rows: usize, bn: usize) -> Option<HiddenSums> {
    let layout = s.layout();
    let bytes = s.as_bytes();
    // one f32 row buffer per thread
    let row_sums = |tmp: &mut Vec<f32>, r: usize| -> Option<HiddenSums> {
        let off = layout.flat_row_offset(r);
        let row: &[half::f16] = bytemuck::cast_slice(&bytes[off..off + 2 * bn]);
        f16_to_f32(tmp, row);
        let sum_sq = sum_of_squares(tmp);
        let (min, max) = tmp
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        sum_sq
            .is_finite()
            .then_some(HiddenSums { sum_sq, min, max })
    };
    let join = |a: Option<HiddenSums>, b: Option<HiddenSums>| Some(a?.join(b?));
    if rows * bn < PARALLEL_MIN_VALUES {
        let mut tmp = vec![0f32; bn];
        (0..rows)
            .map(|r| row_sums(&mut tmp, r))
            .fold(Some(HiddenSums::EMPTY), join)
    } else {
        (0..rows)
            .into_par_iter()
            .map_init(|| vec![0f32; bn], row_sums)
            .reduce(|| Some(HiddenSums::EMPTY), join)
    }
}
