//! Rows in and out of fp16 surfaces, on every call: source rows (activations, and weights
//! that are not kept staged) converted or copied into a surface's rows or columns, and result
//! tiles added back into the f32 output.

use rayon::prelude::*;

use crate::matmul::MatrixSource;
use crate::surface::Surface;
use crate::sys::fp16::{
    f16_to_f32, f32_to_f16, f32_to_f16_streamed, f32_to_f16_sum_sq, sum_of_squares,
};
use crate::sys::transpose;

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

/// Source rows per block when staging them as columns: each surface row then receives 64
/// contiguous bytes (a whole cache line) per block instead of one value.
const COLUMN_BLOCK: usize = 32;
/// Features per block when staging as columns: a 32 × 64 fp16 block (4 KiB).
const STAGE_FEATURES: usize = 64;

/// From this many bytes staged, whole lines go past the caches (non-temporal stores): a
/// surface that large is read next by the engine, not from the CPU's caches, and the stores
/// then skip reading each line first. 4096² F16 weights staged the first time: 5.6–7.1 ms →
/// 3.3–3.5 ms (memcpy of the bytes: 2.4 ms); 11008 × 4096: 28 → 11 ms (memcpy 13 ms), on this
/// project's x86-64 machine (`cargo bench -p ane-runtime -- stage_weights`). Apple silicon's
/// scalar path does not stream yet (a NEON `stnp` form is for a Mac to measure).
const STREAM_MIN_BYTES: usize = 1 << 20;

/// Writes rows `r0..r0+rows` (columns `k0..k0+cols` of `k`) of a source batch as surface
/// *columns* `col0..col0+rows` of rows `0..cols`: the channel-first layout of every kernel
/// input (one surface row per input feature, tokens or weight rows along the width). With
/// `sum_sq`, adds the sum of the values' squares (before rounding) into it.
///
/// Multi-threaded over surface rows: each thread transposes its features of a block of
/// `COLUMN_BLOCK` source rows straight into its own surface rows (`sys::transpose`). A source
/// whose rows are not all f32 or all fp16 in memory (quantised, strided) is converted once
/// first, row by row in parallel, so no thread converts a whole row for its slice of it.
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
    // rows in memory are transposed straight from there, eight by eight; any other source
    // (quantised, strided, or rows of both kinds) is converted once first
    let kind = rows_in_memory(src, batch, (r0, rows));
    let half = kind == Some(RowKind::F16);
    if kind.is_none() {
        let summed = sum_sq.is_some();
        let (converted, total) = converted_rows(src, batch, (r0, rows), (k0, cols), (k, summed));
        stage_columns(
            s,
            &converted,
            (0, 0),
            (0, rows),
            (0, cols),
            cols,
            col0,
            None,
        );
        if let Some(e) = sum_sq {
            *e += total;
        }
        recycle(converted);
        return;
    }
    let summed = sum_sq.is_some();
    let stream = 2 * rows * cols >= STREAM_MIN_BYTES;
    let bytes = &mut s.as_bytes_mut()[..cols * stride];
    // surface rows d0.. (as many as `part` holds); returns their values' sum of squares
    let stage = |d0: usize, part: &mut [u8]| -> f64 {
        let nd = part.len() / stride;
        let mut tmp = vec![0f32; STAGE_FEATURES];
        // the block's source rows, looked up once per block (a call through the source each),
        // then sliced per feature block
        let (mut rows16, mut rows32): (Vec<&[half::f16]>, Vec<&[f32]>) = (
            Vec::with_capacity(COLUMN_BLOCK),
            Vec::with_capacity(COLUMN_BLOCK),
        );
        let (mut r16, mut r32) = (
            Vec::with_capacity(COLUMN_BLOCK),
            Vec::with_capacity(COLUMN_BLOCK),
        );
        let mut total = 0.0;
        for b0 in (0..rows).step_by(COLUMN_BLOCK) {
            let n = COLUMN_BLOCK.min(rows - b0);
            let row = |i: usize| r0 + b0 + i;
            if half {
                rows16.clear();
                rows16.extend((0..n).filter_map(|i| src.row_f16(batch.0, batch.1, row(i))));
            } else {
                rows32.clear();
                rows32.extend((0..n).filter_map(|i| src.row_f32(batch.0, batch.1, row(i))));
            }
            for f0 in (0..nd).step_by(STAGE_FEATURES) {
                let fb = STAGE_FEATURES.min(nd - f0);
                let from = k0 + d0 + f0;
                let (dst, col) = (&mut part[f0 * stride..], col0 + b0);
                if half {
                    r16.clear();
                    r16.extend(rows16.iter().map(|h| &h[from..from + fb]));
                    transpose::f16_columns(&r16, fb, dst, (stride, col), stream);
                    if summed {
                        for h in &r16 {
                            f16_to_f32(&mut tmp[..fb], h);
                            total += sum_of_squares(&tmp[..fb]);
                        }
                    }
                } else {
                    r32.clear();
                    r32.extend(rows32.iter().map(|v| &v[from..from + fb]));
                    let e = transpose::f32_columns(&r32, fb, dst, (stride, col), stream);
                    if summed {
                        total += e;
                    }
                }
            }
        }
        // this thread's streamed stores are ordered before the pool hands its part over
        if stream {
            transpose::fence();
        }
        total
    };
    let total = if rows * cols < PARALLEL_MIN_VALUES {
        stage(0, bytes)
    } else {
        // whole feature blocks per part, so only the last part has a ragged block
        let per = cols
            .div_ceil(4 * rayon::current_num_threads())
            .next_multiple_of(STAGE_FEATURES);
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

thread_local! {
    /// The fp16 rows a quantised or strided source was converted into, kept per thread: a
    /// model's first call stages weight after weight, and a fresh buffer each time would
    /// fault in every page again (4096² Q8_0 weights: most of 24 ms).
    static CONVERTED: std::cell::RefCell<Vec<half::f16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// From this many bytes converted, the fp16 rows go past the caches: they are read back once,
/// right away, so only a buffer well past the caches gains (4096² Q8_0: 10.1 → 8.1–8.5 ms);
/// smaller ones lost (4864 × 896: 1.7 → 2.9 ms).
const CONVERTED_STREAM_MIN_BYTES: usize = 16 << 20;

/// A conversion buffer larger than this is not kept: the rows of a 7B's widest weight tile
/// converted over all of K (11008 × 4096, or the head's 10688 × 4096) are 84–86 MiB.
const CONVERTED_MAX_BYTES: usize = 96 << 20;

/// How a source's rows lie in memory, where every one of them does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowKind {
    F16,
    F32,
}

/// Whether rows `r0..r0 + rows` of a source batch are all fp16 or all f32 in memory (staged
/// straight from there); `None` for any other source (quantised, strided, mixed), which is
/// converted first.
pub(crate) fn rows_in_memory(
    src: &dyn MatrixSource,
    (b2, b3): (usize, usize),
    (r0, rows): (usize, usize),
) -> Option<RowKind> {
    let all = |has: &dyn Fn(usize) -> bool| (r0..r0 + rows).all(has);
    if all(&|r| src.row_f16(b2, b3, r).is_some()) {
        Some(RowKind::F16)
    } else if all(&|r| src.row_f32(b2, b3, r).is_some()) {
        Some(RowKind::F32)
    } else {
        None
    }
}

/// Rows `r0..r0 + rows` (columns `k0..k0 + cols` of `k`) of a source read through
/// `read_row`, converted to fp16 once (in parallel past [`PARALLEL_MIN_VALUES`]) into this
/// thread's kept buffer (give it back with [`recycle`]); with `summed`, the sum of the
/// values' squares before rounding.
pub(crate) fn converted_rows(
    src: &dyn MatrixSource,
    (b2, b3): (usize, usize),
    (r0, rows): (usize, usize),
    (k0, cols): (usize, usize),
    (k, summed): (usize, bool),
) -> (crate::matmul::HalfRows, f64) {
    let mut data = CONVERTED.with(|b| std::mem::take(&mut *b.borrow_mut()));
    // grown to fit exactly, so the kept buffer is the largest tile's size, not twice it
    data.reserve_exact((rows * cols).saturating_sub(data.len()));
    data.resize(rows * cols, half::f16::ZERO);
    let stream = 2 * rows * cols >= CONVERTED_STREAM_MIN_BYTES;
    let convert = |tmp: &mut Vec<f32>, (r, dst): (usize, &mut [half::f16])| -> f64 {
        src.read_row(b2, b3, r0 + r, tmp);
        let values = &tmp[k0..k0 + cols];
        match (summed, stream) {
            (true, _) => f32_to_f16_sum_sq(dst, values),
            (false, true) => {
                f32_to_f16_streamed(dst, values);
                0.0
            }
            (false, false) => {
                f32_to_f16(dst, values);
                0.0
            }
        }
    };
    let total = if rows * k < PARALLEL_MIN_VALUES {
        let mut tmp = vec![0f32; k];
        data.chunks_mut(cols.max(1))
            .enumerate()
            .map(|row| convert(&mut tmp, row))
            .sum()
    } else {
        data.par_chunks_mut(cols.max(1))
            .enumerate()
            .map_init(|| vec![0f32; k], convert)
            .sum()
    };
    let rows = crate::matmul::HalfRows {
        rows,
        k: cols,
        batch0: 1,
        data,
    };
    (rows, total)
}

/// Rows `r0..r0 + rows` of a source batch converted to fp16 once over all `k` columns, as
/// the pipeline converts a quantised weight cut into several K tiles before staging each
/// tile from them; give them back with [`recycle`] when done.
pub fn convert_weight_rows(
    src: &dyn MatrixSource,
    batch: (usize, usize),
    rows: (usize, usize),
    k: usize,
) -> crate::matmul::HalfRows {
    converted_rows(src, batch, rows, (0, k), (k, false)).0
}

/// Keeps the buffer of rows [`convert_weight_rows`] made for the next conversion on this
/// thread (buffers up to 96 MiB are kept).
pub fn recycle(rows: crate::matmul::HalfRows) {
    // what the buffer holds on to, not what it used: growth may have doubled it
    if rows.data.capacity() * 2 <= CONVERTED_MAX_BYTES {
        CONVERTED.with(|b| *b.borrow_mut() = rows.data);
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

/// Sums of squares a write-back gathers on its way, for the precision check.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WrittenSums {
    /// Σ v² of the tile's own values (each rounded to fp16 by the engine).
    pub tile: f64,
    /// Σ v² of what the outputs hold afterwards (the tile added to earlier K tiles).
    pub result: f64,
}

/// Tokens per block of the transposing write-back: each output row then receives
/// [`BACK_FEATURES`] contiguous f32 (whole cache lines) per block instead of one value.
const BACK_TOKENS: usize = 128;
/// Output features per block: the surface rows one pass over a token block reads.
const BACK_FEATURES: usize = 64;

/// Adds a `[1, bm, 1, _]` result tile — surface row `r` holding output feature `m0 + r` of
/// tokens `n0..n0 + bn` in its first `bn` columns — into `out` (token rows of `m` values:
/// token `t`'s feature `f` at `t·m + f`), transposing (with `first`, assigns instead: the
/// first K tile, so `out` needs no clearing); returns the sums of squares, or `None` if any
/// value is not finite.
///
/// Cache-blocked: a block of tokens by 64 features at a time, transposed eight
/// by eight with the conversion (`sys::transpose`); threads take disjoint token blocks, past
/// 65536 values.
pub fn accumulate_columns(
    s: &Surface,
    out: &mut [f32],
    m: usize,
    (n0, bn): (usize, usize),
    (m0, bm): (usize, usize),
    first: bool,
) -> Option<WrittenSums> {
    if bn == 0 || bm == 0 {
        return Some(WrittenSums::default());
    }
    assert!(
        m0 + bm <= m && out.len() >= (n0 + bn - 1) * m + m0 + bm,
        "accumulate_columns: a tile past the output"
    );
    let layout = s.layout();
    // every kernel output is `[1, M, 1, S]`: row r at r · row_stride
    assert!(
        layout.is_row_contiguous(),
        "accumulate_columns: an output whose rows are not contiguous"
    );
    let bytes = s.as_bytes();
    let parallel = bn * bm >= PARALLEL_MIN_VALUES;
    // tokens per block: BACK_TOKENS, or fewer (multiples of 8) so that every thread gets one
    // when the tokens are few and the features many (4096 × 128 is one block otherwise); below
    // 4 × PARALLEL_MIN_VALUES waking a second thread costs more than it saves (measured:
    // 896 × 128 took 15 µs on one thread, 42 µs on two)
    let per = if bn * bm >= 4 * PARALLEL_MIN_VALUES {
        BACK_TOKENS
            .min(
                bn.div_ceil(rayon::current_num_threads())
                    .next_multiple_of(8),
            )
            .max(8)
    } else {
        BACK_TOKENS
    };
    // token block `t0..`, whose rows `rows` holds (row j at j·m; the last may be short)
    let block = |(b, rows): (usize, &mut [f32])| -> Option<WrittenSums> {
        let t0 = b * per;
        let tb = per.min(bn - t0);
        let mut sums = WrittenSums::default();
        // eight by eight: each output row gets 8 contiguous f32 per step
        for f0 in (0..bm).step_by(BACK_FEATURES) {
            let fb = BACK_FEATURES.min(bm - f0);
            let src = &bytes[layout.flat_row_offset(f0)..];
            let dst = &mut rows[m0 + f0..];
            let s = transpose::f16_rows_to_f32(src, layout.row_stride, t0, fb, tb, dst, m, first);
            sums.tile += s.tile;
            sums.result += s.result;
        }
        // a sum is finite exactly when every value is (fp16 values cannot overflow it)
        sums.tile.is_finite().then_some(sums)
    };
    let join = |a: Option<WrittenSums>, b: Option<WrittenSums>| {
        let (a, b) = (a?, b?);
        Some(WrittenSums {
            tile: a.tile + b.tile,
            result: a.result + b.result,
        })
    };
    let region = &mut out[n0 * m..];
    let blocks = bn.div_ceil(per);
    if !parallel {
        region
            .chunks_mut(per * m)
            .take(blocks)
            .enumerate()
            .map(block)
            .fold(Some(WrittenSums::default()), join)
    } else {
        region
            .par_chunks_mut(per * m)
            .take(blocks)
            .enumerate()
            .map(block)
            .reduce(|| Some(WrittenSums::default()), join)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{SurfaceDType, TensorLayout};

    /// A `[1, rows, 1, cols]` fp16 surface whose values are `f(row, col)` rounded.
    fn surface(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f32) -> Surface {
        let layout =
            TensorLayout::aligned("y", SurfaceDType::F16, &[1, rows, 1, cols], 64).unwrap();
        let mut s = Surface::new(layout);
        for r in 0..rows {
            let row = s.row_f16_mut(r).unwrap();
            for (c, o) in row[..cols].iter_mut().enumerate() {
                *o = half::f16::from_f32(f(r, c));
            }
        }
        s
    }

    /// A source readable only through `read_row` (as quantised weights are).
    struct ReadOnly(crate::matmul::DenseRows);

    impl MatrixSource for ReadOnly {
        fn read_row(&self, b2: usize, b3: usize, row: usize, out: &mut [f32]) {
            self.0.read_row(b2, b3, row, out);
        }
    }

    /// Staging as columns puts every source value where the definition does, whether the
    /// source lends its f32 rows or is converted once first, with the same sum of squares.
    #[test]
    fn staged_columns_match_the_definition_for_every_kind_of_source() {
        for (rows, k) in [(5, 7), (70, 33), (300, 260)] {
            let data: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 37) % 101) as f32 / 16.0 - 3.0)
                .collect();
            let dense = crate::matmul::DenseRows::new(rows, k, data.clone());
            let (r0, n, k0, cols, col0) = (1, rows - 1, 2, k - 3, 4);
            let width = col0 + n + 3;
            let layout =
                TensorLayout::aligned("x", SurfaceDType::F16, &[1, cols, 1, width], 64).unwrap();
            let halves = crate::matmul::HalfRows {
                rows,
                k,
                batch0: 1,
                data: data.iter().map(|&v| half::f16::from_f32(v)).collect(),
            };
            let mut staged = Vec::new();
            for src in [
                &dense as &dyn MatrixSource,
                &ReadOnly(dense.clone()),
                &halves,
            ] {
                let mut s = Surface::new(layout.clone());
                let mut sum = 0f64;
                stage_columns(
                    &mut s,
                    src,
                    (0, 0),
                    (r0, n),
                    (k0, cols),
                    k,
                    col0,
                    Some(&mut sum),
                );
                for d in 0..cols {
                    let row = s.row_f16_mut(d).unwrap();
                    for t in 0..n {
                        let want = half::f16::from_f32(data[(r0 + t) * k + k0 + d]);
                        assert_eq!(row[col0 + t], want, "{rows}x{k}: feature {d} token {t}");
                    }
                }
                // the sum of what the source holds: fp16 rows' values are rounded already
                let rounded = staged.len() == 2;
                let want: f64 = (r0..r0 + n)
                    .flat_map(|r| &data[r * k + k0..r * k + k0 + cols])
                    .map(|&v| {
                        let v = if rounded {
                            half::f16::from_f32(v).to_f32()
                        } else {
                            v
                        };
                        f64::from(v) * f64::from(v)
                    })
                    .sum();
                assert!((sum - want).abs() <= 1e-5 * want, "{sum} vs {want}");
                staged.push(s.as_bytes().to_vec());
            }
            assert_eq!(staged[0], staged[1]);
            assert_eq!(staged[0], staged[2]);
        }
    }

    /// The blocked, threaded write-back puts every value where the one-value-at-a-time
    /// definition does — odd tile sizes, offsets into the output, adding to earlier tiles —
    /// leaves everything else alone, and sums the tile's and the result's squares.
    #[test]
    fn blocked_write_back_matches_the_definition() {
        let value = |r: usize, c: usize| ((r * 31 + c * 17) % 97) as f32 / 8.0 - 6.0;
        // (tokens, features): below and past the parallel threshold, not multiples of blocks
        for (bn, bm) in [(1, 1), (33, 65), (100, 70), (301, 250)] {
            let (n0, m0, m) = (3, 5, bm + 9);
            let s = surface(bm, bn + 7, value);
            for first in [true, false] {
                let before: Vec<f32> = (0..(n0 + bn + 2) * m).map(|i| i as f32 / 4.0).collect();
                let mut want = before.clone();
                let (mut tile, mut result) = (0f64, 0f64);
                for r in 0..bm {
                    for c in 0..bn {
                        let v = f64::from(half::f16::from_f32(value(r, c)).to_f32());
                        let o = &mut want[(n0 + c) * m + m0 + r];
                        *o = if first { v as f32 } else { *o + v as f32 };
                        tile += v * v;
                        result += f64::from(*o) * f64::from(*o);
                    }
                }
                let mut got = before;
                let sums = accumulate_columns(&s, &mut got, m, (n0, bn), (m0, bm), first).unwrap();
                assert_eq!(got, want, "{bn}x{bm} first={first}");
                assert!(
                    (sums.tile - tile).abs() <= 1e-5 * tile,
                    "{sums:?} vs {tile}"
                );
                assert!(
                    (sums.result - result).abs() <= 1e-5 * result,
                    "{sums:?} vs {result}"
                );
            }
        }
        // a non-finite value anywhere says so
        let s = surface(70, 40, |r, c| if (r, c) == (69, 39) { 1e6 } else { 1.0 });
        let mut out = vec![0f32; 40 * 70];
        assert_eq!(
            accumulate_columns(&s, &mut out, 70, (0, 40), (0, 70), true),
            None
        );
    }
}
