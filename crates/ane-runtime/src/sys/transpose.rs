//! Transposes between token rows and the channel-first fp16 surface rows, eight by eight in
//! registers where the CPU can (x86-64 with AVX and F16C: SSE2 unpacks transpose, F16C
//! converts), a value at a time elsewhere and for the edges. Staging reads 8 token rows and
//! writes 16 contiguous bytes into each of 8 surface rows; the write-back the reverse, with the
//! conversion to f32 and the sums of squares in the same pass.
//!
//! On Apple silicon this is the scalar path: a NEON transpose is for a Mac to write and
//! measure (`vtrn`/`vzip`), not something to ship untested.

use half::f16;

/// Writes `srcs[i][d]` into surface row `d` (bytes `d · stride ..`) at column `col + i`, for
/// every token `i < srcs.len()` and feature `d < cols`: fp16 rows into fp16 columns. With
/// `stream`, whole lines go past the caches (non-temporal stores: for surfaces larger than the
/// caches, which the engine, not the CPU, reads next); the caller fences ([`fence`]) before
/// anyone reads them.
///
/// # Panics
/// If a source row is shorter than `cols` or a write would fall outside `dst`.
pub(crate) fn f16_columns(
    srcs: &[&[f16]],
    cols: usize,
    dst: &mut [u8],
    (stride, col): (usize, usize),
    stream: bool,
) {
    check_columns(srcs, cols, dst.len(), stride, col);
    #[cfg(target_arch = "x86_64")]
    if super::fp16::x86_available() {
        // SAFETY: F16C and AVX were detected; every row holds `cols` values and every write
        // lies inside `dst` (checked above).
        unsafe { x86::f16_columns(srcs, cols, dst, (stride, col), stream) };
        return;
    }
    let _ = stream;
    scalar_edges(srcs.len(), (0, 0), cols, dst, stride, col, |i, d| {
        srcs[i][d]
    });
}

/// [`f16_columns`] from f32 rows, rounding each value to fp16; returns Σ v² of the values
/// before rounding.
///
/// # Panics
/// As [`f16_columns`].
pub(crate) fn f32_columns(
    srcs: &[&[f32]],
    cols: usize,
    dst: &mut [u8],
    (stride, col): (usize, usize),
    stream: bool,
) -> f64 {
    check_columns(srcs, cols, dst.len(), stride, col);
    #[cfg(target_arch = "x86_64")]
    if super::fp16::x86_available() {
        // SAFETY: as above.
        return unsafe { x86::f32_columns(srcs, cols, dst, (stride, col), stream) };
    }
    let _ = stream;
    let mut sum = 0f64;
    scalar_edges(srcs.len(), (0, 0), cols, dst, stride, col, |i, d| {
        let v = srcs[i][d];
        sum += f64::from(v) * f64::from(v);
        f16::from_f32(v)
    });
    sum
}

/// Orders streamed stores before what follows (a no-op where nothing streams).
pub(crate) fn fence() {
    #[cfg(target_arch = "x86_64")]
    if super::fp16::x86_available() {
        // SAFETY: SSE is part of x86-64; a store fence has no operands.
        unsafe { std::arch::x86_64::_mm_sfence() };
    }
}

fn check_columns<T>(srcs: &[&[T]], cols: usize, dst_len: usize, stride: usize, col: usize) {
    let n = srcs.len();
    for s in srcs {
        assert!(
            s.len() >= cols,
            "a source row shorter than the columns staged"
        );
    }
    if n > 0 && cols > 0 {
        assert!(
            2 * (col + n) <= stride && (cols - 1) * stride + 2 * (col + n) <= dst_len,
            "a staged block outside the surface"
        );
    }
}

/// Sums of squares of a write-back block: of the surface's values, and of what the outputs
/// hold afterwards.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct BlockSums {
    pub(crate) tile: f64,
    pub(crate) result: f64,
}

/// The reverse of [`f16_columns`] with the conversion to f32: token `j < tokens` gets feature
/// `d < feats` — surface row `d` (bytes `d · stride ..`), column `col + j` — at `out[j · m + d]`,
/// assigned when `first`, else added. Returns the block's sums of squares (non-finite when a
/// value is).
///
/// # Panics
/// If a read falls outside `src` or a write outside `out`.
#[allow(
    clippy::too_many_arguments,
    reason = "source block, destination rows and the first-tile flag: one transposing pass"
)]
pub(crate) fn f16_rows_to_f32(
    src: &[u8],
    stride: usize,
    col: usize,
    feats: usize,
    tokens: usize,
    out: &mut [f32],
    m: usize,
    first: bool,
) -> BlockSums {
    if feats == 0 || tokens == 0 {
        return BlockSums::default();
    }
    assert!(
        2 * (col + tokens) <= stride && (feats - 1) * stride + 2 * (col + tokens) <= src.len(),
        "a write-back block outside the surface"
    );
    assert!(
        feats <= m && (tokens - 1) * m + feats <= out.len(),
        "a write-back block outside the output"
    );
    #[cfg(target_arch = "x86_64")]
    if super::fp16::x86_available() {
        // SAFETY: F16C and AVX were detected; every read and write is inside (checked above).
        return unsafe { x86::f16_rows_to_f32(src, stride, col, feats, tokens, out, m, first) };
    }
    scalar_rows(src, stride, col, (0, feats), (0, tokens), out, m, first)
}

/// Features `f0..f1` of tokens `t0..t1`, a value at a time.
#[allow(
    clippy::too_many_arguments,
    reason = "the scalar edge of f16_rows_to_f32, with its arguments"
)]
fn scalar_rows(
    src: &[u8],
    stride: usize,
    col: usize,
    (f0, f1): (usize, usize),
    (t0, t1): (usize, usize),
    out: &mut [f32],
    m: usize,
    first: bool,
) -> BlockSums {
    let mut s = BlockSums::default();
    for j in t0..t1 {
        for d in f0..f1 {
            let off = d * stride + 2 * (col + j);
            let v = f16::from_bits(u16::from_le_bytes([src[off], src[off + 1]])).to_f32();
            s.tile += f64::from(v) * f64::from(v);
            let o = &mut out[j * m + d];
            *o = if first { v } else { *o + v };
            s.result += f64::from(*o) * f64::from(*o);
        }
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m256, _mm256_add_ps, _mm256_cvtph_ps, _mm256_cvtps_ph, _mm256_loadu_ps,
        _mm256_mul_ps, _mm256_setzero_ps, _mm256_storeu_ps, _mm_loadu_si128, _mm_setzero_si128,
        _mm_storeu_si128, _mm_stream_si128, _mm_unpackhi_epi16, _mm_unpackhi_epi32,
        _mm_unpackhi_epi64, _mm_unpacklo_epi16, _mm_unpacklo_epi32, _mm_unpacklo_epi64,
        _MM_FROUND_TO_NEAREST_INT,
    };

    use half::f16;

    use super::BlockSums;

    /// The sum of the 8 lanes, in f64.
    #[target_feature(enable = "avx,f16c")]
    fn lanes_sum(v: __m256) -> f64 {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 f32s; an unaligned store.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        lanes.iter().map(|&x| f64::from(x)).sum()
    }

    /// Rows `r[0..8]` (8 u16 each) as columns: `out[d]` holds `r[0][d], …, r[7][d]`.
    #[target_feature(enable = "avx,f16c")]
    fn transpose8(r: [__m128i; 8]) -> [__m128i; 8] {
        let t0 = _mm_unpacklo_epi16(r[0], r[1]);
        let t1 = _mm_unpackhi_epi16(r[0], r[1]);
        let t2 = _mm_unpacklo_epi16(r[2], r[3]);
        let t3 = _mm_unpackhi_epi16(r[2], r[3]);
        let t4 = _mm_unpacklo_epi16(r[4], r[5]);
        let t5 = _mm_unpackhi_epi16(r[4], r[5]);
        let t6 = _mm_unpacklo_epi16(r[6], r[7]);
        let t7 = _mm_unpackhi_epi16(r[6], r[7]);
        let u0 = _mm_unpacklo_epi32(t0, t2);
        let u1 = _mm_unpackhi_epi32(t0, t2);
        let u2 = _mm_unpacklo_epi32(t1, t3);
        let u3 = _mm_unpackhi_epi32(t1, t3);
        let u4 = _mm_unpacklo_epi32(t4, t6);
        let u5 = _mm_unpackhi_epi32(t4, t6);
        let u6 = _mm_unpacklo_epi32(t5, t7);
        let u7 = _mm_unpackhi_epi32(t5, t7);
        [
            _mm_unpacklo_epi64(u0, u4),
            _mm_unpackhi_epi64(u0, u4),
            _mm_unpacklo_epi64(u1, u5),
            _mm_unpackhi_epi64(u1, u5),
            _mm_unpacklo_epi64(u2, u6),
            _mm_unpackhi_epi64(u2, u6),
            _mm_unpacklo_epi64(u3, u7),
            _mm_unpackhi_epi64(u3, u7),
        ]
    }

    /// Stores `g` transposed 8 × 8 blocks of consecutive tokens (`t[b][q]`: feature `d0 + q` of
    /// tokens `8b..8b + 8`) into surface rows `d0..d0 + 8` from byte `c`: each row's `16 g`
    /// bytes in one run (a whole 64-byte line for 32 tokens), streamed past the caches when
    /// `stream` and aligned.
    ///
    /// # Safety
    /// `(d0 + 7) · stride + c + 16 g <= dst.len()`.
    #[target_feature(enable = "avx,f16c")]
    unsafe fn store_lines(
        t: &[[__m128i; 8]; 4],
        g: usize,
        dst: &mut [u8],
        (stride, d0, c): (usize, usize, usize),
        stream: bool,
    ) {
        for q in 0..8 {
            for (b, o) in t.iter().enumerate().take(g) {
                // SAFETY: inside `dst`, by the caller.
                let p = unsafe { dst.as_mut_ptr().add((d0 + q) * stride + c + 16 * b) };
                if stream && (p as usize).is_multiple_of(16) {
                    // SAFETY: 16 bytes at a 16-byte-aligned address inside `dst`.
                    unsafe { _mm_stream_si128(p.cast(), o[q]) };
                } else {
                    // SAFETY: inside `dst`; an unaligned store.
                    unsafe { _mm_storeu_si128(p.cast(), o[q]) };
                }
            }
        }
    }

    /// # Safety
    /// F16C and AVX present; the checks of `super::f16_columns` hold.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn f16_columns(
        srcs: &[&[f16]],
        cols: usize,
        dst: &mut [u8],
        (stride, col): (usize, usize),
        stream: bool,
    ) {
        let (n8, c8) = (srcs.len() / 8 * 8, cols / 8 * 8);
        // 32 tokens at a time: each surface row gets a whole line
        for g0 in (0..n8).step_by(32) {
            let g = 32.min(n8 - g0) / 8;
            for d0 in (0..c8).step_by(8) {
                let mut t = [[_mm_setzero_si128(); 8]; 4];
                for (b, o) in t.iter_mut().enumerate().take(g) {
                    let mut r = [_mm_setzero_si128(); 8];
                    for (q, v) in r.iter_mut().enumerate() {
                        let row = srcs[g0 + 8 * b + q];
                        // SAFETY: d0 + 8 <= cols <= every row's length; an unaligned load.
                        *v = unsafe { _mm_loadu_si128(row.as_ptr().add(d0).cast()) };
                    }
                    *o = transpose8(r);
                }
                // SAFETY: rows d0..d0+8 < cols, columns col+g0.. +8g <= col+n: inside `dst`.
                unsafe { store_lines(&t, g, dst, (stride, d0, 2 * (col + g0)), stream) };
            }
        }
        // the edges: features past the last 8 of every token, tokens past the last 8
        super::scalar_edges(srcs.len(), (n8, c8), cols, dst, stride, col, |i, d| {
            srcs[i][d]
        });
    }

    /// # Safety
    /// As [`f16_columns`].
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn f32_columns(
        srcs: &[&[f32]],
        cols: usize,
        dst: &mut [u8],
        (stride, col): (usize, usize),
        stream: bool,
    ) -> f64 {
        let (n8, c8) = (srcs.len() / 8 * 8, cols / 8 * 8);
        let mut acc: __m256 = _mm256_setzero_ps();
        for g0 in (0..n8).step_by(32) {
            let g = 32.min(n8 - g0) / 8;
            for d0 in (0..c8).step_by(8) {
                let mut t = [[_mm_setzero_si128(); 8]; 4];
                for (b, o) in t.iter_mut().enumerate().take(g) {
                    let mut r = [_mm_setzero_si128(); 8];
                    for (q, h) in r.iter_mut().enumerate() {
                        let row = srcs[g0 + 8 * b + q];
                        // SAFETY: d0 + 8 <= cols <= the row's length; an unaligned load.
                        let v = unsafe { _mm256_loadu_ps(row.as_ptr().add(d0)) };
                        acc = _mm256_add_ps(acc, _mm256_mul_ps(v, v));
                        *h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                    }
                    *o = transpose8(r);
                }
                // SAFETY: as in `f16_columns`.
                unsafe { store_lines(&t, g, dst, (stride, d0, 2 * (col + g0)), stream) };
            }
        }
        let mut sum = lanes_sum(acc);
        super::scalar_edges(srcs.len(), (n8, c8), cols, dst, stride, col, |i, d| {
            let v = srcs[i][d];
            sum += f64::from(v) * f64::from(v);
            f16::from_f32(v)
        });
        sum
    }

    /// # Safety
    /// F16C and AVX present; the checks of `super::f16_rows_to_f32` hold.
    #[allow(clippy::too_many_arguments, reason = "as super::f16_rows_to_f32")]
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn f16_rows_to_f32(
        src: &[u8],
        stride: usize,
        col: usize,
        feats: usize,
        tokens: usize,
        out: &mut [f32],
        m: usize,
        first: bool,
    ) -> BlockSums {
        let (f8, t8) = (feats / 8 * 8, tokens / 8 * 8);
        let (mut tile, mut result) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for j0 in (0..t8).step_by(8) {
            for d0 in (0..f8).step_by(8) {
                let mut r = [_mm_setzero_si128(); 8];
                for (q, v) in r.iter_mut().enumerate() {
                    let at = (d0 + q) * stride + 2 * (col + j0);
                    // SAFETY: rows d0..d0+8 < feats, columns col+j0..+8 <= col+tokens: inside.
                    *v = unsafe { _mm_loadu_si128(src.as_ptr().add(at).cast()) };
                }
                for (q, h) in transpose8(r).into_iter().enumerate() {
                    let v = _mm256_cvtph_ps(h);
                    tile = _mm256_add_ps(tile, _mm256_mul_ps(v, v));
                    // SAFETY: token j0+q < tokens, features d0..d0+8 <= feats <= m: inside.
                    let o = unsafe { out.as_mut_ptr().add((j0 + q) * m + d0) };
                    let w = if first {
                        v
                    } else {
                        // SAFETY: `o` points at 8 f32s of `out`; an unaligned load.
                        _mm256_add_ps(unsafe { _mm256_loadu_ps(o) }, v)
                    };
                    // SAFETY: as above.
                    unsafe { _mm256_storeu_ps(o, w) };
                    result = _mm256_add_ps(result, _mm256_mul_ps(w, w));
                }
            }
        }
        let mut s = BlockSums {
            tile: lanes_sum(tile),
            result: lanes_sum(result),
        };
        // the edges: features past the last 8 of the full token groups, then the last tokens
        for (f, t) in [((f8, feats), (0, t8)), ((0, feats), (t8, tokens))] {
            let e = super::scalar_rows(src, stride, col, f, t, out, m, first);
            s.tile += e.tile;
            s.result += e.result;
        }
        s
    }
}

/// The values [`f16_columns`]' blocked pass leaves, a value at a time: features `c8..cols` of
/// tokens `0..n8`, and every feature of tokens `n8..n` (with `(0, 0)`: all of them).
fn scalar_edges(
    n: usize,
    (n8, c8): (usize, usize),
    cols: usize,
    dst: &mut [u8],
    stride: usize,
    col: usize,
    mut value: impl FnMut(usize, usize) -> f16,
) {
    for d in 0..cols {
        let off = d * stride + 2 * col;
        let out: &mut [f16] = bytemuck::cast_slice_mut(&mut dst[off..off + 2 * n]);
        let from = if d < c8 { n8 } else { 0 };
        for (i, o) in out.iter_mut().enumerate().skip(from) {
            *o = value(i, d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(i: usize, d: usize) -> f32 {
        ((i * 131 + d * 17) % 199) as f32 / 8.0 - 12.0
    }

    /// Every size around the 8 × 8 blocks: staging puts each value where the definition does,
    /// from fp16 and from f32 rows (with the sum of squares), and the write-back returns it,
    /// assigned or added, with its sums.
    #[test]
    fn blocked_transposes_match_the_definition() {
        for (n, cols) in [(1, 1), (8, 8), (9, 17), (16, 7), (23, 64), (40, 33)] {
            let col = 3usize;
            let stride = (2 * (col + n + 5)).next_multiple_of(64);
            let f32_rows: Vec<Vec<f32>> = (0..n)
                .map(|i| (0..cols + 2).map(|d| value(i, d)).collect())
                .collect();
            let f16_rows: Vec<Vec<f16>> = f32_rows
                .iter()
                .map(|r| r.iter().map(|&v| f16::from_f32(v)).collect())
                .collect();
            let mut a = vec![0xAAu8; cols * stride];
            let mut b = a.clone();
            let refs16: Vec<&[f16]> = f16_rows.iter().map(|r| &r[..cols]).collect();
            let refs32: Vec<&[f32]> = f32_rows.iter().map(|r| &r[..cols]).collect();
            f16_columns(&refs16, cols, &mut a, (stride, col), false);
            let sum = f32_columns(&refs32, cols, &mut b, (stride, col), false);
            assert_eq!(a, b, "{n}x{cols}");
            // streamed past the caches: the same bytes
            let (mut sa, mut sb) = (vec![0xAAu8; cols * stride], vec![0xAAu8; cols * stride]);
            f16_columns(&refs16, cols, &mut sa, (stride, col), true);
            f32_columns(&refs32, cols, &mut sb, (stride, col), true);
            fence();
            assert_eq!((&sa, &sb), (&a, &a), "{n}x{cols} streamed");
            // the scalar path (Apple silicon's) agrees
            let mut c = vec![0xAAu8; cols * stride];
            scalar_edges(n, (0, 0), cols, &mut c, stride, col, |i, d| f16_rows[i][d]);
            assert_eq!(a, c, "{n}x{cols}");
            let want: f64 = refs32
                .iter()
                .flat_map(|r| r.iter())
                .map(|&v| f64::from(v) * f64::from(v))
                .sum();
            assert!((sum - want).abs() <= 1e-6 * want, "{sum} vs {want}");
            for d in 0..cols {
                for c in 0..stride / 2 {
                    let got =
                        u16::from_le_bytes([a[d * stride + 2 * c], a[d * stride + 2 * c + 1]]);
                    let want = match c.checked_sub(col).filter(|&i| i < n) {
                        Some(i) => f16_rows[i][d].to_bits(),
                        None => 0xAAAA,
                    };
                    assert_eq!(got, want, "{n}x{cols}: feature {d} column {c}");
                }
            }
            // back: features are the surface rows, tokens its columns
            let m = cols + 4;
            for first in [true, false] {
                let before: Vec<f32> = (0..n * m).map(|x| x as f32 / 3.0).collect();
                let mut out = before.clone();
                let s = f16_rows_to_f32(&a, stride, col, cols, n, &mut out, m, first);
                let mut scalar = before.clone();
                let e = scalar_rows(&a, stride, col, (0, cols), (0, n), &mut scalar, m, first);
                assert_eq!(out, scalar, "{n}x{cols} first={first}");
                assert!(
                    (e.tile - s.tile).abs() <= 1e-5 * e.tile.max(1.0),
                    "{e:?} {s:?}"
                );
                let (mut tile, mut result) = (0f64, 0f64);
                for j in 0..n {
                    for d in 0..m {
                        let (got, old) = (out[j * m + d], before[j * m + d]);
                        if d >= cols {
                            assert_eq!(got, old);
                            continue;
                        }
                        let v = f16_rows[j][d].to_f32();
                        let want = if first { v } else { old + v };
                        assert_eq!(got, want, "{n}x{cols} first={first}: token {j} feature {d}");
                        tile += f64::from(v) * f64::from(v);
                        result += f64::from(want) * f64::from(want);
                    }
                }
                assert!(
                    (s.tile - tile).abs() <= 1e-5 * tile.max(1.0),
                    "{s:?} {tile}"
                );
                assert!(
                    (s.result - result).abs() <= 1e-5 * result.max(1.0),
                    "{s:?} {result}"
                );
            }
        }
    }
}
