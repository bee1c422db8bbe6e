//! Rows in and out of fp16 surfaces: source rows converted (or copied) into a surface's
//! aligned rows, result tiles added into the f32 output.

use rayon::prelude::*;

use super::{MatrixSource, PARALLEL_MIN_VALUES};
use crate::surface::Surface;
use crate::sys::fp16::{f16_to_f32, f32_to_f16, f32_to_f16_sum_sq, sum_of_squares};

/// Columns `k0..k0 + dst.len()` of one source row as fp16: copied from fp16 rows, converted
/// from f32 ones (`tmp`, K long, holds rows that must be read first). With `sum_sq`, adds the
/// sum of the source values' squares (before rounding) into it.
pub(super) fn row_to_f16(
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

/// Source rows per block when staging them as columns: each surface row then receives 32
/// contiguous bytes per block instead of one value.
const COLUMN_BLOCK: usize = 16;

/// Writes rows `r0..r0+rows` (columns `k0..k0+cols` of `k`) of a source batch as surface
/// *columns* `col0..col0+rows` of rows `0..cols`: the transposed layout of the packed
/// single-input kernel (one surface row per input feature). With `sum_sq`, adds the sum of
/// the values' squares into it. One thread: this is the fallback form.
#[allow(
    clippy::too_many_arguments,
    reason = "source, batch, row and column ranges, and the destination column: the transposed staging case"
)]
pub(super) fn stage_columns(
    s: &mut Surface,
    src: &dyn MatrixSource,
    batch: (usize, usize),
    (r0, rows): (usize, usize),
    (k0, cols): (usize, usize),
    k: usize,
    col0: usize,
    mut sum_sq: Option<&mut f64>,
) {
    let layout = s.layout().clone();
    debug_assert!(layout.rows() >= cols && layout.dims[3] >= col0 + rows);
    let bytes = s.as_bytes_mut();
    let mut tmp = vec![0f32; k];
    let mut block = vec![half::f16::ZERO; COLUMN_BLOCK * cols];
    for b0 in (0..rows).step_by(COLUMN_BLOCK) {
        let n = COLUMN_BLOCK.min(rows - b0);
        for (i, dst) in block.chunks_mut(cols.max(1)).take(n).enumerate() {
            row_to_f16(
                src,
                batch,
                r0 + b0 + i,
                k0,
                dst,
                &mut tmp,
                sum_sq.as_deref_mut(),
            );
        }
        for d in 0..cols {
            let off = layout.flat_row_offset(d) + 2 * (col0 + b0);
            let out: &mut [half::f16] = bytemuck::cast_slice_mut(&mut bytes[off..off + 2 * n]);
            for (i, o) in out.iter_mut().enumerate() {
                *o = block[i * cols + d];
            }
        }
    }
}

/// Zeroes columns `c0..c1` of the first `rows` rows (the token columns a bucket pads).
pub(super) fn zero_columns(s: &mut Surface, rows: usize, (c0, c1): (usize, usize)) {
    let layout = s.layout().clone();
    let bytes = s.as_bytes_mut();
    for r in 0..rows {
        let off = layout.flat_row_offset(r);
        bytes[off + 2 * c0..off + 2 * c1].fill(0);
    }
}

/// Zeroes the first `cols` values of rows `from..` (the token rows a bucket pads).
pub(super) fn zero_rows(s: &mut Surface, from: usize, cols: usize) {
    let layout = s.layout().clone();
    let bytes = s.as_bytes_mut();
    for r in from..layout.rows() {
        let off = layout.flat_row_offset(r);
        bytes[off..off + 2 * cols].fill(0);
    }
}

/// Adds a `[bn, bm]` result tile into `out` (`[n, m]`); returns the sum of the tile's
/// squares, or `None` if any value is not finite.
pub(super) fn accumulate_tile(
    s: &Surface,
    out: &mut [f32],
    m: usize,
    (n0, bn): (usize, usize),
    (m0, bm): (usize, usize),
) -> Option<f64> {
    let layout = s.layout();
    let bytes = s.as_bytes();
    let mut finite = true;
    let mut sum_sq = 0.0;
    for r in 0..bn {
        let off = layout.flat_row_offset(r);
        let row: &[half::f16] = bytemuck::cast_slice(&bytes[off..off + 2 * bm]);
        let mut row_sum_sq = 0f32;
        for (o, v) in out[(n0 + r) * m + m0..][..bm].iter_mut().zip(row) {
            let v = v.to_f32();
            finite &= v.is_finite();
            row_sum_sq += v * v;
            *o += v;
        }
        sum_sq += f64::from(row_sum_sq);
    }
    finite.then_some(sum_sq)
}
