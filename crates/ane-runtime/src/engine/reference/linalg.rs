//! conv and matmul: fp16 operands, f32 accumulation (or the M6's Q15.16, emulated), results
//! rounded to fp16.

use half::f16;
use rayon::prelude::*;

use ane_mil::ops::{broadcast, ConvGeometry};

use super::tensor::{strides, Data, Tensor};
use crate::engine::Accumulator;
use crate::sys::fp16::{f16_to_f32, f32_to_f16};
use crate::sys::gemm::{gemm_f32, MatRef};

fn to_f32(v: &[f16]) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    f16_to_f32(&mut out, v);
    out
}

fn to_f16(v: &[f32]) -> Vec<f16> {
    let mut out = vec![f16::ZERO; v.len()];
    f32_to_f16(&mut out, v);
    out
}

fn threads() -> usize {
    rayon::current_num_threads()
}

/// `dst = lhs · rhs` (fp16 operands held as f32), summed as `acc` says.
fn gemm(dst: &mut [f32], lhs: MatRef<'_>, rhs: MatRef<'_>, threads: usize, acc: Accumulator) {
    match acc {
        Accumulator::F32 => gemm_f32(dst, lhs, rhs, threads),
        Accumulator::Q15_16 => gemm_q15_16(dst, lhs, rhs),
    }
}

/// Q15.16 units per 1.0.
const Q16: f64 = 65536.0;

/// `dst = lhs · rhs` summed as the M6's ANE is reported to: each product (exact: fp16
/// operands) rounded to a multiple of 2^-16, the running sum in Q15.16, saturating at its
/// range (±32768). A value at a time: the emulation is for tests, not speed.
fn gemm_q15_16(dst: &mut [f32], lhs: MatRef<'_>, rhs: MatRef<'_>) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "inner dimensions differ");
    assert_eq!(dst.len(), m * n, "destination is not m x n");
    let at = |v: &MatRef<'_>, r: usize, c: usize| {
        f64::from(v.data[v.offset + r * v.row_stride + c * v.col_stride])
    };
    let (lo, hi) = (i64::from(i32::MIN), i64::from(i32::MAX));
    dst.par_chunks_mut(n.max(1))
        .enumerate()
        .for_each(|(i, row)| {
            for (j, o) in row.iter_mut().enumerate() {
                let mut sum = 0i64;
                for kk in 0..k {
                    let q = (at(&lhs, i, kk) * at(&rhs, kk, j) * Q16).round_ties_even() as i64;
                    sum = (sum + q).clamp(lo, hi);
                }
                *o = (sum as f64 / Q16) as f32;
            }
        });
}

/// `x · y` over the last two axes, batch axes broadcast; `out_shape` from the checker.
pub(crate) fn matmul(
    x: &Tensor,
    y: &Tensor,
    (tx, ty): (bool, bool),
    out_shape: &[usize],
    acc: Accumulator,
) -> Tensor {
    let (xf, yf) = (
        to_f32(x.floats().expect("float x")),
        to_f32(y.floats().expect("float y")),
    );
    let (xr, yr) = (x.shape.len(), y.shape.len());
    let (xrows, xcols) = (x.shape[xr - 2], x.shape[xr - 1]);
    let (yrows, ycols) = (y.shape[yr - 2], y.shape[yr - 1]);
    let view = |data, off, rows, cols, t: bool| {
        if t {
            MatRef {
                data,
                offset: off,
                rows: cols,
                cols: rows,
                row_stride: 1,
                col_stride: cols,
            }
        } else {
            MatRef {
                data,
                offset: off,
                rows,
                cols,
                row_stride: cols,
                col_stride: 1,
            }
        }
    };
    let batch_shape = &out_shape[..out_shape.len() - 2];
    debug_assert_eq!(
        broadcast(&x.shape[..xr - 2], &y.shape[..yr - 2]).as_deref(),
        Some(batch_shape)
    );
    let (m, n) = (
        out_shape[out_shape.len() - 2],
        out_shape[out_shape.len() - 1],
    );
    let nb: usize = batch_shape.iter().product();
    // element offset of each operand's matrix for flat batch index b (broadcast axes repeat)
    let batch_offset = |shape: &[usize], mat: usize, b: usize| -> usize {
        let lead = &shape[..shape.len() - 2];
        let st = strides(lead);
        let pad = batch_shape.len() - lead.len();
        let mut rem = b;
        let mut off = 0;
        for (a, &d) in batch_shape.iter().enumerate().rev() {
            let i = rem % d;
            rem /= d;
            if a >= pad && lead[a - pad] != 1 {
                off += i * st[a - pad];
            }
        }
        off * mat
    };
    let mut out = vec![0f32; nb * m * n];
    let one = |b: usize, dst: &mut [f32], threads: usize| {
        let xv = view(
            &xf[..],
            batch_offset(&x.shape, xrows * xcols, b),
            xrows,
            xcols,
            tx,
        );
        let yv = view(
            &yf[..],
            batch_offset(&y.shape, yrows * ycols, b),
            yrows,
            ycols,
            ty,
        );
        gemm(dst, xv, yv, threads, acc);
    };
    if m * n > 0 {
        if nb >= threads() {
            out.par_chunks_mut(m * n)
                .enumerate()
                .for_each(|(b, dst)| one(b, dst, 1));
        } else {
            out.chunks_mut(m * n)
                .enumerate()
                .for_each(|(b, dst)| one(b, dst, threads()));
        }
    }
    Tensor::new(out_shape.to_vec(), Data::F(to_f16(&out)))
}

/// N-d convolution (1-D or 2-D spatial) via im2col + GEMM per batch and group.
pub(crate) fn conv(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    g: &ConvGeometry,
    out_shape: &[usize],
    acc: Accumulator,
) -> Tensor {
    // view 1-D convs as 2-D with height 1
    let lift = |s: &[usize]| {
        if s.len() == 3 {
            vec![s[0], s[1], 1, s[2]]
        } else {
            s.to_vec()
        }
    };
    let (xs, ws, os) = (lift(&x.shape), lift(&w.shape), lift(out_shape));
    let (s, d, p) = if g.strides.len() == 1 {
        ([1, g.strides[0]], [1, g.dilations[0]], [(0, 0), g.pads[0]])
    } else {
        (
            [g.strides[0], g.strides[1]],
            [g.dilations[0], g.dilations[1]],
            [g.pads[0], g.pads[1]],
        )
    };
    let (nb, cin, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
    let (cout, cin_g, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
    let (ho, wo) = (os[2], os[3]);
    let groups = g.groups;
    let cout_g = cout / groups;
    let xf = to_f32(x.floats().expect("float x"));
    let wf = to_f32(w.floats().expect("float weight"));
    let pointwise = kh == 1 && kw == 1 && s == [1, 1] && p == [(0, 0), (0, 0)];
    let plane_in = h * wd;
    let plane_out = ho * wo;
    let mut out = vec![0f32; nb * cout * plane_out];
    let mut col = if pointwise {
        Vec::new()
    } else {
        vec![0f32; cin_g * kh * kw * plane_out]
    };
    for b in 0..nb {
        for gi in 0..groups {
            let x_off = (b * cin + gi * cin_g) * plane_in;
            let rhs = if pointwise {
                MatRef {
                    data: &xf,
                    offset: x_off,
                    rows: cin_g,
                    cols: plane_in,
                    row_stride: plane_in,
                    col_stride: 1,
                }
            } else {
                im2col(
                    &xf[x_off..x_off + cin_g * plane_in],
                    (h, wd),
                    (kh, kw),
                    s,
                    d,
                    p,
                    (ho, wo),
                    &mut col,
                );
                MatRef {
                    data: &col,
                    offset: 0,
                    rows: cin_g * kh * kw,
                    cols: plane_out,
                    row_stride: plane_out,
                    col_stride: 1,
                }
            };
            let k = cin_g * kh * kw;
            let lhs = MatRef {
                data: &wf,
                offset: gi * cout_g * k,
                rows: cout_g,
                cols: k,
                row_stride: k,
                col_stride: 1,
            };
            let o = (b * cout + gi * cout_g) * plane_out;
            gemm(
                &mut out[o..o + cout_g * plane_out],
                lhs,
                rhs,
                threads(),
                acc,
            );
        }
    }
    if let Some(bias) = bias {
        let bf = to_f32(bias.floats().expect("float bias"));
        out.par_chunks_mut(plane_out.max(1))
            .enumerate()
            .for_each(|(i, plane)| {
                let c = i % cout;
                plane.iter_mut().for_each(|v| *v += bf[c]);
            });
    }
    Tensor::new(out_shape.to_vec(), Data::F(to_f16(&out)))
}

/// Unfolds one group's input `[c, h, w]` (c = rows / (kh·kw)) into `[c·kh·kw, ho·wo]` patches (zeros where padded).
#[allow(
    clippy::too_many_arguments,
    reason = "the convolution geometry, spelled out as in the MIL op"
)]
fn im2col(
    x: &[f32],
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    s: [usize; 2],
    d: [usize; 2],
    p: [(usize, usize); 2],
    (ho, wo): (usize, usize),
    col: &mut [f32],
) {
    col.par_chunks_mut(ho * wo)
        .enumerate()
        .for_each(|(r, row)| {
            let (ci, ki, kj) = (r / (kh * kw), (r / kw) % kh, r % kw);
            for oy in 0..ho {
                let iy = (oy * s[0] + ki * d[0]) as isize - p[0].0 as isize;
                for ox in 0..wo {
                    let ix = (ox * s[1] + kj * d[1]) as isize - p[1].0 as isize;
                    row[oy * wo + ox] =
                        if iy >= 0 && (iy as usize) < h && ix >= 0 && (ix as usize) < w {
                            x[ci * h * w + iy as usize * w + ix as usize]
                        } else {
                            0.0
                        };
                }
            }
        });
}
