//! Values inside the reference engine, and the data-movement ops over them.
//!
//! Every floating-point tensor is stored as fp16, whatever its declared dtype: the ANE
//! computes in fp16, so an fp32 value inside a program already carries fp16 precision.

use half::f16;

use ane_mil::ops::AxisSlice;

/// Element storage.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Data {
    /// fp16 and fp32 tensors.
    F(Vec<f16>),
    /// int32, int8 and uint8 tensors.
    I(Vec<i32>),
    /// bool tensors.
    B(Vec<bool>),
    /// A string scalar.
    S(String),
}

/// A dense row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Tensor {
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Data,
}

/// Applies `$body` to the vector inside any numeric `Data`, rebuilding the same variant.
macro_rules! map_data {
    ($data:expr, |$v:ident| $body:expr) => {
        match $data {
            Data::F($v) => Data::F($body),
            Data::I($v) => Data::I($body),
            Data::B($v) => Data::B($body),
            Data::S(s) => Data::S(s.clone()),
        }
    };
}

/// Row-major element strides of `shape`.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Copies an `shape`-shaped strided view of `src` into a strided view of `dst`.
/// Offsets and strides are in elements; strides may be negative for the source.
fn strided_copy<T: Copy>(
    src: &[T],
    src_off: isize,
    src_strides: &[isize],
    dst: &mut [T],
    dst_off: usize,
    dst_strides: &[usize],
    shape: &[usize],
) {
    if shape.contains(&0) {
        return;
    }
    let rank = shape.len();
    if rank == 0 {
        dst[dst_off] = src[src_off as usize];
        return;
    }
    let (inner, s_in, d_in) = (
        shape[rank - 1],
        src_strides[rank - 1],
        dst_strides[rank - 1],
    );
    let mut idx = vec![0usize; rank - 1];
    loop {
        let mut s = src_off;
        let mut d = dst_off;
        for (a, &i) in idx.iter().enumerate() {
            s += i as isize * src_strides[a];
            d += i * dst_strides[a];
        }
        if s_in == 1 && d_in == 1 {
            let s = s as usize;
            dst[d..d + inner].copy_from_slice(&src[s..s + inner]);
        } else {
            for j in 0..inner {
                dst[d + j * d_in] = src[(s + j as isize * s_in) as usize];
            }
        }
        // odometer over the outer axes
        let mut a = rank - 1;
        loop {
            if a == 0 {
                return;
            }
            a -= 1;
            idx[a] += 1;
            if idx[a] < shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
}

fn gather<T: Copy + Default>(
    src: &[T],
    off: isize,
    src_strides: &[isize],
    shape: &[usize],
) -> Vec<T> {
    let n = shape.iter().product();
    let mut out = vec![T::default(); n];
    strided_copy(src, off, src_strides, &mut out, 0, &strides(shape), shape);
    out
}

impl Tensor {
    pub(crate) fn new(shape: Vec<usize>, data: Data) -> Self {
        Tensor { shape, data }
    }

    pub(crate) fn floats(&self) -> Option<&[f16]> {
        match &self.data {
            Data::F(v) => Some(v),
            _ => None,
        }
    }

    pub(crate) fn transpose(&self, perm: &[usize]) -> Tensor {
        let st = strides(&self.shape);
        let src_strides: Vec<isize> = perm.iter().map(|&p| st[p] as isize).collect();
        let shape: Vec<usize> = perm.iter().map(|&p| self.shape[p]).collect();
        let data = map_data!(&self.data, |v| gather(v, 0, &src_strides, &shape));
        Tensor::new(shape, data)
    }

    pub(crate) fn slice(&self, axes: &[AxisSlice], out_shape: &[usize]) -> Tensor {
        let st = strides(&self.shape);
        let off: isize = axes
            .iter()
            .zip(&st)
            .map(|(a, &s)| (a.start * s) as isize)
            .sum();
        let src_strides: Vec<isize> = axes
            .iter()
            .zip(&st)
            .map(|(a, &s)| a.step * s as isize)
            .collect();
        let counts: Vec<usize> = axes.iter().map(|a| a.count).collect();
        let data = map_data!(&self.data, |v| gather(v, off, &src_strides, &counts));
        Tensor::new(out_shape.to_vec(), data)
    }

    pub(crate) fn reshape(&self, shape: &[usize]) -> Tensor {
        Tensor::new(shape.to_vec(), self.data.clone())
    }

    /// Concatenates (or interleaves) `values` along `axis`.
    pub(crate) fn concat(
        values: &[&Tensor],
        axis: usize,
        interleave: bool,
        out_shape: &[usize],
    ) -> Tensor {
        let out_strides = strides(out_shape);
        let n = out_shape.iter().product();
        let k = values.len();
        macro_rules! run {
            ($variant:ident, $zero:expr) => {{
                let mut out = vec![$zero; n];
                let mut at = 0;
                for (j, t) in values.iter().enumerate() {
                    let Data::$variant(src) = &t.data else {
                        unreachable!("checked dtypes")
                    };
                    let src_strides: Vec<isize> =
                        strides(&t.shape).iter().map(|&s| s as isize).collect();
                    let mut dst_strides = out_strides.clone();
                    let dst_off = if interleave {
                        dst_strides[axis] *= k;
                        j * out_strides[axis]
                    } else {
                        at * out_strides[axis]
                    };
                    strided_copy(
                        src,
                        0,
                        &src_strides,
                        &mut out,
                        dst_off,
                        &dst_strides,
                        &t.shape,
                    );
                    at += t.shape[axis];
                }
                Data::$variant(out)
            }};
        }
        let data = match &values[0].data {
            Data::F(_) => run!(F, f16::ZERO),
            Data::I(_) => run!(I, 0),
            Data::B(_) => run!(B, false),
            Data::S(s) => Data::S(s.clone()),
        };
        Tensor::new(out_shape.to_vec(), data)
    }
}
