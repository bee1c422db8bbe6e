//! Ops that move or reinterpret data: const, cast, reshape, transpose, slices, concat.

use super::{norm_axis, AxisSlice, Op, OpArgs, OpError, OpResult};
use crate::ir::Literal;
use crate::types::{DType, ValueType};

pub(super) fn constant(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    let o = a.operand("val")?;
    match o {
        super::Operand::Const { value, ty } => {
            if matches!(value, Literal::Dict(_)) {
                return Err(OpError::Value("a dict cannot be a const value".into()));
            }
            Ok((Op::Const(value), ty))
        }
        super::Operand::Var { .. } => Err(OpError::NotConst("val")),
    }
}

pub(super) fn cast(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    let x = a.operand("x")?;
    let name = a.string("dtype")?.ok_or(OpError::Missing("dtype"))?;
    let dtype = match DType::from_name(&name) {
        Some(d @ (DType::Fp16 | DType::Fp32 | DType::Int32)) => d,
        _ => {
            return Err(OpError::Value(format!(
                "cannot cast to `{name}` (supported: fp16, fp32, int32)"
            )))
        }
    };
    let from = x.ty().dtype();
    if !(from.is_float() || from == DType::Int32) {
        return Err(OpError::DType(format!("cannot cast from {from}")));
    }
    let ty = x.ty().with_dtype(dtype);
    Ok((Op::Cast { x, dtype }, ty))
}

pub(super) fn reshape(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    let (x, dtype, shape) = a.tensor("x")?;
    let spec = a.req_ints("shape")?;
    let too_large = || OpError::Shape(format!("{shape:?}: the element count overflows"));
    let total = crate::types::checked_elements(&shape).ok_or_else(too_large)?;
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            -1 => return Err(OpError::Value("`shape` may contain -1 only once".into())),
            0 => out.push(*shape.get(i).ok_or_else(|| {
                OpError::Value(format!(
                    "`shape`[{i}] = 0 copies an input axis that does not exist"
                ))
            })?),
            d if d > 0 => out.push(d as usize),
            d => return Err(OpError::Value(format!("`shape`[{i}] = {d} is negative"))),
        }
    }
    let known = crate::types::checked_elements(&out).ok_or_else(too_large)?;
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(OpError::Shape(format!(
                "cannot infer -1: {total} elements do not divide into {spec:?}"
            )));
        }
        out[i] = total / known;
    }
    if crate::types::checked_elements(&out) != Some(total) {
        return Err(OpError::Shape(format!(
            "cannot reshape {shape:?} ({total} elements) to {out:?}"
        )));
    }
    Ok((Op::Reshape { x }, ValueType::tensor(dtype, out)))
}

pub(super) fn transpose(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    let (x, dtype, shape) = a.tensor("x")?;
    let raw = a.req_ints("perm")?;
    if raw.len() != shape.len() {
        return Err(OpError::Shape(format!(
            "`perm` has {} entries, `x` has rank {}",
            raw.len(),
            shape.len()
        )));
    }
    let mut perm = Vec::with_capacity(raw.len());
    let mut seen = vec![false; raw.len()];
    for &p in &raw {
        let p = norm_axis(p, shape.len(), "`perm` entry")?;
        if std::mem::replace(&mut seen[p], true) {
            return Err(OpError::Value(format!(
                "`perm` {raw:?} is not a permutation"
            )));
        }
        perm.push(p);
    }
    let out = perm.iter().map(|&p| shape[p]).collect::<Vec<_>>();
    Ok((Op::Transpose { x, perm }, ValueType::tensor(dtype, out)))
}

fn per_axis(name: &str, v: Vec<i64>, rank: usize) -> OpResult<Vec<i64>> {
    if v.len() != rank {
        return Err(OpError::Shape(format!(
            "`{name}` has {} entries, `x` has rank {rank}",
            v.len()
        )));
    }
    Ok(v)
}

pub(super) fn slice_by_size(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    let (x, dtype, shape) = a.tensor("x")?;
    let begin = per_axis("begin", a.req_ints("begin")?, shape.len())?;
    let size = per_axis("size", a.req_ints("size")?, shape.len())?;
    let mut axes = Vec::with_capacity(shape.len());
    for (i, &d) in shape.iter().enumerate() {
        let b = if begin[i] < 0 {
            begin[i] + d as i64
        } else {
            begin[i]
        };
        if b < 0 || b > d as i64 {
            return Err(OpError::Value(format!(
                "`begin`[{i}] = {} is outside axis {i} of size {d}",
                begin[i]
            )));
        }
        let n = if size[i] == -1 { d as i64 - b } else { size[i] };
        if n < 0 || b + n > d as i64 {
            return Err(OpError::Shape(format!(
                "slice [{b}, {}) on axis {i} runs outside its size {d}",
                b + n
            )));
        }
        axes.push(AxisSlice {
            start: b as usize,
            step: 1,
            count: n as usize,
        });
    }
    let out = axes.iter().map(|s| s.count).collect::<Vec<_>>();
    Ok((Op::Slice { x, axes }, ValueType::tensor(dtype, out)))
}

pub(super) fn slice_by_index(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    let (x, dtype, shape) = a.tensor("x")?;
    let rank = shape.len();
    let begin = per_axis("begin", a.req_ints("begin")?, rank)?;
    let end = per_axis("end", a.req_ints("end")?, rank)?;
    let stride = per_axis("stride", a.ints("stride")?.unwrap_or(vec![1; rank]), rank)?;
    let mask = |k: &'static str| -> OpResult<Vec<bool>> {
        let v = a.bools(k)?.unwrap_or(vec![false; rank]);
        if v.len() != rank {
            return Err(OpError::Shape(format!(
                "`{k}` has {} entries, `x` has rank {rank}",
                v.len()
            )));
        }
        Ok(v)
    };
    let (begin_mask, end_mask, squeeze) = (
        mask("begin_mask")?,
        mask("end_mask")?,
        mask("squeeze_mask")?,
    );
    let mut axes = Vec::with_capacity(rank);
    let mut out = Vec::new();
    for i in 0..rank {
        let d = shape[i] as i64;
        let st = stride[i];
        if st == 0 {
            return Err(OpError::Value(format!("`stride`[{i}] is 0")));
        }
        let norm = |v: i64| if v < 0 { v + d } else { v };
        let (lo, hi) = if st > 0 { (0, d) } else { (-1, d - 1) };
        let b = if begin_mask[i] {
            if st > 0 {
                0
            } else {
                d - 1
            }
        } else {
            norm(begin[i]).clamp(lo, hi)
        };
        let e = if end_mask[i] {
            if st > 0 {
                d
            } else {
                -1
            }
        } else {
            norm(end[i]).clamp(lo, hi)
        };
        let (dist, step) = if st > 0 { (e - b, st) } else { (b - e, -st) };
        let count = (dist.max(0) as u64).div_ceil(step as u64) as i64;
        if squeeze[i] && count != 1 {
            return Err(OpError::Shape(format!(
                "`squeeze_mask` drops axis {i}, but the slice keeps {count} elements of it"
            )));
        }
        axes.push(AxisSlice {
            start: b.max(0) as usize,
            step: st as isize,
            count: count as usize,
        });
        if !squeeze[i] {
            out.push(count as usize);
        }
    }
    Ok((Op::Slice { x, axes }, ValueType::tensor(dtype, out)))
}

pub(super) fn concat(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    let values = a.tuple("values")?;
    let interleave = a.bool_or("interleave", false)?;
    let Some(first) = values.first() else {
        return Err(OpError::Value("`values` is empty".into()));
    };
    let ValueType::Tensor { dtype, shape } = first.ty().clone() else {
        return Err(OpError::DType(format!(
            "`values` must be tensors, found {}",
            first.ty()
        )));
    };
    let axis = norm_axis(
        a.int("axis")?.ok_or(OpError::Missing("axis"))?,
        shape.len(),
        "`axis`",
    )?;
    let mut out = shape.clone();
    out[axis] = 0;
    for (i, v) in values.iter().enumerate() {
        let (d, s) = (v.ty().dtype(), v.ty().shape());
        if d != dtype {
            return Err(OpError::DType(format!(
                "`values`[{i}] is {d}, `values`[0] is {dtype}"
            )));
        }
        let same_rest = s.len() == shape.len()
            && s.iter()
                .zip(&shape)
                .enumerate()
                .all(|(k, (p, q))| k == axis || p == q);
        if !same_rest || (interleave && s != shape.as_slice()) {
            return Err(OpError::Shape(format!(
                "`values`[{i}] has shape {s:?}, which does not concatenate with {shape:?} on axis {axis}{}",
                if interleave { " (interleave needs equal shapes)" } else { "" }
            )));
        }
        out[axis] += s[axis];
    }
    Ok((
        Op::Concat {
            values,
            axis,
            interleave,
        },
        ValueType::tensor(dtype, out),
    ))
}
