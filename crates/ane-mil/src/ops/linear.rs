//! Ops that compute: conv, matmul, and the int8 weight dequantizer.

use super::{float_dtype, norm_axis, ConvGeometry, Op, OpArgs, OpError, OpResult, Operand};
use crate::ir::{Literal, TensorData};
use crate::types::{DType, ValueType};

fn spatial_param(a: &OpArgs, key: &'static str, n: usize) -> OpResult<Vec<usize>> {
    let Some(v) = a.ints(key)? else {
        return Ok(vec![1; n]);
    };
    if v.len() != n || v.iter().any(|&s| s < 1) {
        return Err(OpError::Value(format!(
            "`{key}` must hold {n} positive values (one per spatial axis), found {v:?}"
        )));
    }
    Ok(v.into_iter().map(|s| s as usize).collect())
}

pub(super) fn conv(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    let (x, xd, xs) = a.tensor("x")?;
    let (weight, wd, ws) = a.tensor("weight")?;
    float_dtype("x", xd)?;
    if wd != xd {
        return Err(OpError::DType(format!("`weight` is {wd} but `x` is {xd}")));
    }
    if !(3..=4).contains(&xs.len()) {
        return Err(OpError::Shape(format!(
            "`x` must be [N, C, W] or [N, C, H, W], found rank {} {xs:?}",
            xs.len()
        )));
    }
    if ws.len() != xs.len() {
        return Err(OpError::Shape(format!(
            "`weight` {ws:?} must have the rank of `x` {xs:?}"
        )));
    }
    let n_sp = xs.len() - 2;
    let groups = a.int("groups")?.unwrap_or(1);
    let (cin, cout) = (xs[1], ws[0]);
    if groups < 1 || cin % groups as usize != 0 || cout % groups as usize != 0 {
        return Err(OpError::Value(format!(
            "`groups` = {groups} must divide both input channels {cin} and output channels {cout}"
        )));
    }
    let groups = groups as usize;
    if ws[1] * groups != cin {
        return Err(OpError::Shape(format!(
            "`weight` {ws:?} expects {} input channels, `x` {xs:?} has {cin}",
            ws[1] * groups
        )));
    }
    let strides = spatial_param(a, "strides", n_sp)?;
    let dilations = spatial_param(a, "dilations", n_sp)?;
    let pad_type = a.string("pad_type")?.unwrap_or_else(|| "valid".to_string());
    let kernel = &ws[2..];
    let input = &xs[2..];
    let pads: Vec<(usize, usize)> = match pad_type.as_str() {
        "valid" => vec![(0, 0); n_sp],
        "custom" => {
            let p = a.ints("pad")?.ok_or(OpError::Missing("pad"))?;
            if p.len() != 2 * n_sp || p.iter().any(|&v| v < 0) {
                return Err(OpError::Value(format!(
                    "`pad` must hold {} non-negative values (before, after per spatial axis), found {p:?}",
                    2 * n_sp
                )));
            }
            (0..n_sp)
                .map(|i| (p[2 * i] as usize, p[2 * i + 1] as usize))
                .collect()
        }
        "same" | "same_lower" => (0..n_sp)
            .map(|i| {
                let out = input[i].div_ceil(strides[i]);
                let span = (kernel[i] - 1) * dilations[i] + 1;
                let total = ((out.max(1) - 1) * strides[i] + span).saturating_sub(input[i]);
                let small = total / 2;
                if pad_type == "same" {
                    (small, total - small)
                } else {
                    (total - small, small)
                }
            })
            .collect(),
        other => {
            return Err(OpError::Value(format!(
                "`pad_type` `{other}` is not one of valid, custom, same, same_lower"
            )))
        }
    };
    let mut out = vec![xs[0], cout];
    for i in 0..n_sp {
        let span = (kernel[i].max(1) - 1) * dilations[i] + 1;
        let padded = input[i] + pads[i].0 + pads[i].1;
        if kernel[i] == 0 || padded < span {
            return Err(OpError::Shape(format!(
                "kernel {kernel:?} (dilated span {span}) does not fit spatial axis {i} of size {} with padding {:?}",
                input[i], pads[i]
            )));
        }
        out.push((padded - span) / strides[i] + 1);
    }
    let bias = a.opt_operand("bias")?;
    if let Some(b) = &bias {
        if b.ty().shape() != [cout] || b.ty().dtype() != xd {
            return Err(OpError::Shape(format!(
                "`bias` must be tensor<{xd}, [{cout}]>, found {}",
                b.ty()
            )));
        }
    }
    let geometry = ConvGeometry {
        strides,
        dilations,
        pads,
        groups,
    };
    Ok((
        Op::Conv {
            x,
            weight,
            bias,
            geometry,
        },
        ValueType::tensor(xd, out),
    ))
}

pub(super) fn matmul(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    let (x, xd, xs) = a.tensor("x")?;
    let (y, yd, ys) = a.tensor("y")?;
    float_dtype("x", xd)?;
    if yd != xd {
        return Err(OpError::DType(format!("`y` is {yd} but `x` is {xd}")));
    }
    if xs.len() < 2 || ys.len() < 2 {
        return Err(OpError::Shape(format!(
            "operands must have rank >= 2 (reshape vectors first), found {xs:?} and {ys:?}"
        )));
    }
    let transpose_x = a.bool_or("transpose_x", false)?;
    let transpose_y = a.bool_or("transpose_y", false)?;
    let (xr, yr) = (xs.len(), ys.len());
    let (m, kx) = if transpose_x {
        (xs[xr - 1], xs[xr - 2])
    } else {
        (xs[xr - 2], xs[xr - 1])
    };
    let (ky, n) = if transpose_y {
        (ys[yr - 1], ys[yr - 2])
    } else {
        (ys[yr - 2], ys[yr - 1])
    };
    if kx != ky {
        return Err(OpError::Shape(format!(
            "inner dimensions differ: x {xs:?} (transpose_x = {transpose_x}) gives K = {kx}, \
             y {ys:?} (transpose_y = {transpose_y}) gives K = {ky}"
        )));
    }
    let batch = broadcast(&xs[..xr - 2], &ys[..yr - 2]).ok_or_else(|| {
        OpError::Shape(format!(
            "batch dimensions of x {xs:?} and y {ys:?} do not broadcast"
        ))
    })?;
    let mut out = batch;
    out.extend([m, n]);
    Ok((
        Op::Matmul {
            x,
            y,
            transpose_x,
            transpose_y,
        },
        ValueType::tensor(xd, out),
    ))
}

/// Numpy broadcast of two shapes, or `None`.
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let at = |s: &[usize], i: usize| {
        if i + s.len() >= n {
            s[i + s.len() - n]
        } else {
            1
        }
    };
    (0..n)
        .map(|i| match (at(a, i), at(b, i)) {
            (p, q) if p == q => Some(p),
            (1, q) => Some(q),
            (p, 1) => Some(p),
            _ => None,
        })
        .collect()
}

pub(super) fn affine_dequantize(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    let (data, dd, ds) = a.tensor("quantized_data")?;
    if !matches!(dd, DType::Int8 | DType::UInt8) {
        return Err(OpError::DType(format!(
            "`quantized_data` must be int8 or uint8, found {dd}"
        )));
    }
    if !matches!(data, Operand::Const { .. }) {
        return Err(OpError::NotConst("quantized_data"));
    }
    let axis = norm_axis(
        a.int("axis")?.ok_or(OpError::Missing("axis"))?,
        ds.len(),
        "`axis`",
    )?;
    let scale_lit = a.literal("scale")?.ok_or(OpError::Missing("scale"))?;
    let sd = scale_lit.data.dtype();
    if !sd.is_float() {
        return Err(OpError::DType(format!(
            "`scale` must be fp16 or fp32, found {sd}"
        )));
    }
    let scale = scale_lit.as_f32s().unwrap_or_default();
    let zp_lit = a
        .literal("zero_point")?
        .ok_or(OpError::Missing("zero_point"))?;
    if zp_lit.data.dtype() != dd {
        return Err(OpError::DType(format!(
            "`zero_point` is {} but `quantized_data` is {dd}",
            zp_lit.data.dtype()
        )));
    }
    let zero_point: Vec<i32> = match &zp_lit.data {
        TensorData::Int8(v) => v.iter().map(|&z| z as i32).collect(),
        TensorData::UInt8(v) => v.iter().map(|&z| z as i32).collect(),
        _ => unreachable!("checked above"),
    };
    for (name, len) in [("scale", scale.len()), ("zero_point", zero_point.len())] {
        if len != 1 && len != ds[axis] {
            return Err(OpError::Shape(format!(
                "`{name}` has {len} values; it needs 1 or {} (the size of axis {axis})",
                ds[axis]
            )));
        }
    }
    debug_assert!(matches!(
        data,
        Operand::Const {
            value: Literal::Blob(_) | Literal::Tensor(_),
            ..
        }
    ));
    Ok((
        Op::AffineDequantize {
            data,
            scale,
            zero_point,
            axis,
        },
        ValueType::tensor(sd, ds),
    ))
}
