//! Elementwise ops and reductions with the ANE's fp16 semantics: operands are fp16, each
//! result is computed in f32 and rounded to fp16 once (so an overflow becomes ±inf, as on
//! the hardware). Sums accumulate in f32 before that rounding; how the ANE accumulates a
//! reduction internally no public source says, so a Mac run of the fused self-probe is what
//! confirms this choice.

use half::f16;

use ane_mil::ops::{BinaryOp, UnaryOp};

use super::tensor::{strides, Data, Tensor};

fn floats(t: &Tensor) -> &[f16] {
    t.floats().expect("the checker admits float operands only")
}

/// Element offset into `shape` (broadcast against `out`) for flat output index `i`.
fn broadcast_index(out: &[usize], out_strides: &[usize], shape: &[usize], i: usize) -> usize {
    let pad = out.len() - shape.len();
    let st = strides(shape);
    let mut off = 0;
    for (a, (&d, &os)) in out.iter().zip(out_strides).enumerate() {
        let idx = (i / os) % d;
        if a >= pad && shape[a - pad] != 1 {
            off += idx * st[a - pad];
        }
    }
    off
}

/// `x op y`, numpy broadcasting to `out_shape`.
pub(crate) fn binary(op: BinaryOp, x: &Tensor, y: &Tensor, out_shape: &[usize]) -> Tensor {
    let (xv, yv) = (floats(x), floats(y));
    let n: usize = out_shape.iter().product();
    let os = strides(out_shape);
    let same = x.shape == out_shape && y.shape == out_shape;
    let f = |a: f32, b: f32| match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::RealDiv => a / b,
        BinaryOp::Pow => a.powf(b),
    };
    let out = (0..n)
        .map(|i| {
            let (xi, yi) = if same {
                (i, i)
            } else {
                (
                    broadcast_index(out_shape, &os, &x.shape, i),
                    broadcast_index(out_shape, &os, &y.shape, i),
                )
            };
            f16::from_f32(f(xv[xi].to_f32(), yv[yi].to_f32()))
        })
        .collect();
    Tensor::new(out_shape.to_vec(), Data::F(out))
}

/// `op(x)`.
pub(crate) fn unary(op: UnaryOp, x: &Tensor) -> Tensor {
    let out = floats(x)
        .iter()
        .map(|v| {
            let v = v.to_f32();
            f16::from_f32(match op {
                UnaryOp::Sigmoid => 1.0 / (1.0 + (-v).exp()),
                UnaryOp::Tanh => v.tanh(),
            })
        })
        .collect();
    Tensor::new(x.shape.clone(), Data::F(out))
}

/// The sum (with `mean`, the mean) over `axes`, shaped `out_shape` (kept or dropped axes
/// alike). A mean divides the f32 sum before its one rounding to fp16: whether the ANE sums
/// in fp16 first (and so overflows past 65504 before dividing) no source says.
pub(crate) fn reduce(x: &Tensor, axes: &[usize], mean: bool, out_shape: &[usize]) -> Tensor {
    let xv = floats(x);
    // the kept-dims shape indexes the sums; out_shape may drop those axes (same order)
    let kept: Vec<usize> = x
        .shape
        .iter()
        .enumerate()
        .map(|(a, &d)| if axes.contains(&a) { 1 } else { d })
        .collect();
    let ks = strides(&kept);
    let xs = strides(&x.shape);
    let mut sums = vec![0f32; kept.iter().product()];
    for (i, v) in xv.iter().enumerate() {
        let mut o = 0;
        for a in 0..x.shape.len() {
            if !axes.contains(&a) {
                o += (i / xs[a]) % x.shape[a] * ks[a];
            }
        }
        sums[o] += v.to_f32();
    }
    let count: usize = axes.iter().map(|&a| x.shape[a]).product();
    let scale = if mean { 1.0 / count.max(1) as f32 } else { 1.0 };
    let out = sums.into_iter().map(|v| f16::from_f32(v * scale)).collect();
    Tensor::new(out_shape.to_vec(), Data::F(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::new(
            shape.to_vec(),
            Data::F(v.iter().map(|&x| f16::from_f32(x)).collect()),
        )
    }

    fn values(t: &Tensor) -> Vec<f32> {
        floats(t).iter().map(|v| v.to_f32()).collect()
    }

    #[test]
    fn binary_ops_broadcast_like_numpy() {
        // [1, 2, 1, 3] * [1, 2, 1, 1] (a per-channel weight)
        let x = t(&[1, 2, 1, 3], &[1., 2., 3., 4., 5., 6.]);
        let w = t(&[1, 2, 1, 1], &[10., -1.]);
        let y = binary(BinaryOp::Mul, &x, &w, &[1, 2, 1, 3]);
        assert_eq!(values(&y), [10., 20., 30., -4., -5., -6.]);
        // a scalar on the right
        let s = t(&[], &[0.5]);
        let y = binary(
            BinaryOp::Pow,
            &t(&[1, 1, 1, 2], &[4., 16.]),
            &s,
            &[1, 1, 1, 2],
        );
        assert_eq!(values(&y), [2., 4.]);
        // [1, 1, 1, 3] + [1, 2, 1, 1]
        let y = binary(
            BinaryOp::Add,
            &t(&[1, 1, 1, 3], &[1., 2., 3.]),
            &w,
            &[1, 2, 1, 3],
        );
        assert_eq!(values(&y), [11., 12., 13., 0., 1., 2.]);
    }

    #[test]
    fn results_round_to_fp16_and_overflow_to_infinity() {
        let x = t(&[1, 1, 1, 2], &[300., 1. / 3.]);
        let y = binary(BinaryOp::Mul, &x, &x, &[1, 1, 1, 2]);
        let v = values(&y);
        assert!(v[0].is_infinite(), "300² = 90000 is past fp16's 65504");
        assert_eq!(v[1], f16::from_f32(1. / 9.).to_f32());
        let s = unary(UnaryOp::Sigmoid, &t(&[1, 1, 1, 2], &[0., 20.]));
        assert_eq!(values(&s), [0.5, 1.0]);
        let th = unary(UnaryOp::Tanh, &t(&[1, 1, 1, 3], &[0., 0.5, -20.]));
        assert_eq!(
            values(&th),
            [0.0, f16::from_f32(0.5f32.tanh()).to_f32(), -1.0]
        );
    }

    #[test]
    fn reductions_over_channels_keep_or_drop_the_axis() {
        // [1, 3, 1, 2]: channels 1..3, two positions
        let x = t(&[1, 3, 1, 2], &[1., 2., 3., 4., 5., 6.]);
        let kept = reduce(&x, &[1], false, &[1, 1, 1, 2]);
        assert_eq!(values(&kept), [9., 12.]);
        let dropped = reduce(&x, &[1], false, &[1, 1, 2]);
        assert_eq!(dropped.shape, [1, 1, 2]);
        assert_eq!(values(&reduce(&x, &[1, 3], false, &[1, 1, 1, 1])), [21.]);
        // the mean divides the sum: 21 / 6
        assert_eq!(
            values(&reduce(&x, &[1, 3], true, &[1, 1, 1, 1])),
            [f16::from_f32(3.5).to_f32()]
        );
    }
}
