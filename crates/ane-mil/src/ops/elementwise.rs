//! Elementwise ops and reductions: what a fused RMSNorm → FFN program needs around its convs
//! (docs/fused-forms.md). Binary ops broadcast numpy-style; `pow` takes a constant exponent,
//! the only form shown on hardware.

use super::{float_dtype, linear::broadcast, norm_axis, Op, OpArgs, OpError, OpResult, Operand};
use crate::ir::Literal;
use crate::types::ValueType;

/// A binary elementwise op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `x + y`.
    Add,
    /// `x - y`.
    Sub,
    /// `x * y`.
    Mul,
    /// `x / y`.
    RealDiv,
    /// `x ^ y` (y a constant).
    Pow,
}

/// A unary elementwise op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `tanh(x)` (the GELU chain of mechramc/Orion `compiler/builder.c` L285-333).
    Tanh,
}

fn float_operand(a: &OpArgs, key: &'static str) -> OpResult<Operand> {
    let o = a.operand(key)?;
    float_dtype(key, o.ty().dtype())?;
    Ok(o)
}

fn binary(a: &OpArgs, op: BinaryOp) -> OpResult<(Op, ValueType)> {
    let x = float_operand(a, "x")?;
    let y = float_operand(a, "y")?;
    let (xd, yd) = (x.ty().dtype(), y.ty().dtype());
    if xd != yd {
        return Err(OpError::DType(format!("`y` is {yd} but `x` is {xd}")));
    }
    if op == BinaryOp::Pow && !matches!(y.literal(), Some(Literal::Tensor(_))) {
        return Err(OpError::NotConst("y"));
    }
    let shape = broadcast(x.ty().shape(), y.ty().shape()).ok_or_else(|| {
        OpError::Shape(format!(
            "`x` {:?} and `y` {:?} do not broadcast",
            x.ty().shape(),
            y.ty().shape()
        ))
    })?;
    let ty = if shape.is_empty() {
        ValueType::Scalar(xd)
    } else {
        ValueType::tensor(xd, shape)
    };
    Ok((Op::Binary { op, x, y }, ty))
}

pub(super) fn add(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    binary(a, BinaryOp::Add)
}

pub(super) fn sub(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    binary(a, BinaryOp::Sub)
}

pub(super) fn mul(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    binary(a, BinaryOp::Mul)
}

pub(super) fn real_div(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    binary(a, BinaryOp::RealDiv)
}

pub(super) fn pow(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    binary(a, BinaryOp::Pow)
}

fn unary(a: &OpArgs, op: UnaryOp) -> OpResult<(Op, ValueType)> {
    let x = float_operand(a, "x")?;
    let ty = x.ty().clone();
    Ok((Op::Unary { op, x }, ty))
}

pub(super) fn sigmoid(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    unary(a, UnaryOp::Sigmoid)
}

pub(super) fn tanh(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    unary(a, UnaryOp::Tanh)
}

pub(super) fn reduce_sum(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    reduce(a, false)
}

pub(super) fn reduce_mean(a: &OpArgs) -> OpResult<(Op, ValueType)> {
    reduce(a, true)
}

/// `reduce_sum`, or with `mean` `reduce_mean`, over `axes`.
fn reduce(a: &OpArgs, mean: bool) -> OpResult<(Op, ValueType)> {
    let (x, xd, xs) = a.tensor("x")?;
    float_dtype("x", xd)?;
    let keep_dims = a.bool_or("keep_dims", false)?;
    let mut axes = match a.ints("axes")? {
        Some(v) => v
            .into_iter()
            .map(|ax| norm_axis(ax, xs.len(), "axis"))
            .collect::<OpResult<Vec<_>>>()?,
        None => (0..xs.len()).collect(),
    };
    axes.sort_unstable();
    axes.dedup();
    let shape: Vec<usize> = xs
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| match (axes.contains(&i), keep_dims) {
            (false, _) => Some(d),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect();
    let ty = if shape.is_empty() {
        ValueType::Scalar(xd)
    } else {
        ValueType::tensor(xd, shape)
    };
    Ok((
        Op::Reduce {
            x,
            axes,
            keep_dims,
            mean,
        },
        ty,
    ))
}
