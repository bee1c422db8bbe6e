//! "Compiling" for the reference engine: checked functions become step lists over slots,
//! with every constant (BLOBFILE, inline, dequantized int8) materialised once.

use std::collections::HashMap;
use std::sync::Arc;

use half::f16;

use ane_mil::check::CheckedFunction;
use ane_mil::ir::{BlobRef, Literal, TensorData};
use ane_mil::ops::{AxisSlice, ConvGeometry, Op, Operand};
use ane_mil::{DType, WeightFiles};

use super::tensor::{Data, Tensor};
use crate::engine::{EngineKind, ProcedureInfo};
use crate::error::{Error, Result};
use crate::layout::{SurfaceDType, TensorLayout};

/// What one step computes.
#[derive(Clone, Debug)]
pub(crate) enum StepOp {
    Conv(ConvGeometry),
    Matmul {
        tx: bool,
        ty: bool,
    },
    Transpose(Vec<usize>),
    Reshape,
    Cast(DType),
    Slice(Vec<AxisSlice>),
    Concat {
        axis: usize,
        interleave: bool,
    },
    Binary(ane_mil::ops::BinaryOp),
    Unary(ane_mil::ops::UnaryOp),
    /// Over the axes; the mean rather than the sum when set.
    Reduce(Vec<usize>, bool),
}

/// One step: `slots[out] = op(slots[args...])`.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    pub(crate) op: StepOp,
    pub(crate) args: Vec<usize>,
    pub(crate) out: usize,
    pub(crate) out_shape: Vec<usize>,
    /// Slots whose last use is this step (freed after it).
    pub(crate) frees: Vec<usize>,
}

/// One procedure, ready to run.
#[derive(Debug)]
pub(crate) struct ProcPlan {
    pub(crate) info: ProcedureInfo,
    pub(crate) n_slots: usize,
    pub(crate) inputs: Vec<usize>,
    pub(crate) outputs: Vec<usize>,
    pub(crate) constants: Vec<(usize, Arc<Tensor>)>,
    pub(crate) steps: Vec<Step>,
}

struct Builder<'w> {
    weights: &'w WeightFiles,
    names: HashMap<String, usize>,
    blobs: HashMap<BlobRef, usize>,
    constants: Vec<(usize, Arc<Tensor>)>,
    n_slots: usize,
}

impl Builder<'_> {
    fn new_slot(&mut self) -> usize {
        self.n_slots += 1;
        self.n_slots - 1
    }

    fn constant(&mut self, lit: &Literal) -> Result<usize> {
        if let Literal::Blob(b) = lit {
            if let Some(&s) = self.blobs.get(b) {
                return Ok(s);
            }
        }
        let t = materialize(lit, self.weights)?;
        let slot = self.new_slot();
        self.constants.push((slot, Arc::new(t)));
        if let Literal::Blob(b) = lit {
            self.blobs.insert(b.clone(), slot);
        }
        Ok(slot)
    }

    fn operand(&mut self, o: &Operand) -> Result<usize> {
        match o {
            Operand::Var { name, .. } => self
                .names
                .get(name)
                .copied()
                .ok_or_else(|| Error::Internal(format!("`{name}` has no slot"))),
            Operand::Const { value, .. } => self.constant(value),
        }
    }
}

/// Builds the plan for one checked function.
pub(crate) fn plan_function(
    f: &CheckedFunction,
    weights: &WeightFiles,
    row_alignment: usize,
) -> Result<ProcPlan> {
    let mut b = Builder {
        weights,
        names: HashMap::new(),
        blobs: HashMap::new(),
        constants: Vec::new(),
        n_slots: 0,
    };
    let layout = |p: &ane_mil::ir::Param, what: &str| -> Result<TensorLayout> {
        let dtype = SurfaceDType::from_mil(p.ty.dtype()).ok_or_else(|| Error::Unsupported {
            engine: EngineKind::Reference,
            reason: format!(
                "{what} `{}` is {}; surfaces hold fp16 or fp32",
                p.name, p.ty
            ),
        })?;
        TensorLayout::aligned(&p.name, dtype, p.ty.shape(), row_alignment).map_err(|e| {
            Error::Unsupported {
                engine: EngineKind::Reference,
                reason: e.to_string(),
            }
        })
    };
    let mut info = ProcedureInfo {
        name: f.name.clone(),
        inputs: Vec::new(),
        outputs: Vec::new(),
    };
    let mut inputs = Vec::new();
    for p in &f.inputs {
        info.inputs.push(layout(p, "input")?);
        let slot = b.new_slot();
        b.names.insert(p.name.clone(), slot);
        inputs.push(slot);
    }
    let mut steps = Vec::new();
    for s in &f.statements {
        let out_shape = s.ty.shape().to_vec();
        let (op, args) = match &s.op {
            Op::Const(lit) => {
                let slot = b.constant(lit)?;
                b.names.insert(s.name.clone(), slot);
                continue;
            }
            Op::AffineDequantize {
                data,
                scale,
                zero_point,
                axis,
            } => {
                let Operand::Const { value, .. } = data else {
                    return Err(Error::Internal("dequantize of a non-constant".into()));
                };
                let q = materialize(value, weights)?;
                let t = dequantize(&q, scale, zero_point, *axis)?;
                let slot = b.new_slot();
                b.constants.push((slot, Arc::new(t)));
                b.names.insert(s.name.clone(), slot);
                continue;
            }
            Op::Conv {
                x,
                weight,
                bias,
                geometry,
            } => {
                let mut args = vec![b.operand(x)?, b.operand(weight)?];
                if let Some(bias) = bias {
                    args.push(b.operand(bias)?);
                }
                (StepOp::Conv(geometry.clone()), args)
            }
            Op::Matmul {
                x,
                y,
                transpose_x,
                transpose_y,
            } => (
                StepOp::Matmul {
                    tx: *transpose_x,
                    ty: *transpose_y,
                },
                vec![b.operand(x)?, b.operand(y)?],
            ),
            Op::Binary { op, x, y } => (StepOp::Binary(*op), vec![b.operand(x)?, b.operand(y)?]),
            Op::Unary { op, x } => (StepOp::Unary(*op), vec![b.operand(x)?]),
            Op::Reduce { x, axes, mean, .. } => {
                (StepOp::Reduce(axes.clone(), *mean), vec![b.operand(x)?])
            }
            Op::Transpose { x, perm } => (StepOp::Transpose(perm.clone()), vec![b.operand(x)?]),
            Op::Reshape { x } => (StepOp::Reshape, vec![b.operand(x)?]),
            Op::Cast { x, dtype } => (StepOp::Cast(*dtype), vec![b.operand(x)?]),
            Op::Slice { x, axes } => (StepOp::Slice(axes.clone()), vec![b.operand(x)?]),
            Op::Concat {
                values,
                axis,
                interleave,
            } => (
                StepOp::Concat {
                    axis: *axis,
                    interleave: *interleave,
                },
                values.iter().map(|v| b.operand(v)).collect::<Result<_>>()?,
            ),
        };
        let out = b.new_slot();
        b.names.insert(s.name.clone(), out);
        steps.push(Step {
            op,
            args,
            out,
            out_shape,
            frees: Vec::new(),
        });
    }
    let mut outputs = Vec::new();
    for p in &f.outputs {
        info.outputs.push(layout(p, "output")?);
        outputs.push(b.names[&p.name]);
    }
    // free each computed or input slot after its last reader, unless it is an output
    let mut last_use: HashMap<usize, usize> = HashMap::new();
    for (i, st) in steps.iter().enumerate() {
        for &a in &st.args {
            last_use.insert(a, i);
        }
    }
    let constant_slots: Vec<usize> = b.constants.iter().map(|(s, _)| *s).collect();
    for (slot, i) in last_use {
        if !outputs.contains(&slot) && !constant_slots.contains(&slot) {
            steps[i].frees.push(slot);
        }
    }
    Ok(ProcPlan {
        info,
        n_slots: b.n_slots,
        inputs,
        outputs,
        constants: b.constants,
        steps,
    })
}

fn unsupported(reason: String) -> Error {
    Error::Unsupported {
        engine: EngineKind::Reference,
        reason,
    }
}

/// The tensor a literal stands for.
pub(crate) fn materialize(lit: &Literal, weights: &WeightFiles) -> Result<Tensor> {
    match lit {
        Literal::String(s) => Ok(Tensor::new(Vec::new(), Data::S(s.clone()))),
        Literal::Dict(_) => Err(unsupported("a dict is not a tensor".into())),
        Literal::Tensor(t) => {
            let shape = t.shape.clone().unwrap_or_default();
            let data = match &t.data {
                TensorData::Fp16(v) => Data::F(v.clone()),
                TensorData::Fp32(v) => Data::F(v.iter().map(|&x| f16::from_f32(x)).collect()),
                TensorData::Int8(v) => Data::I(v.iter().map(|&x| x as i32).collect()),
                TensorData::UInt8(v) => Data::I(v.iter().map(|&x| x as i32).collect()),
                TensorData::Int32(v) => Data::I(v.clone()),
                TensorData::Bool(v) => Data::B(v.clone()),
                TensorData::UInt64(_) => return Err(unsupported("uint64 tensors".into())),
            };
            Ok(Tensor::new(shape, data))
        }
        Literal::Blob(blob) => {
            let d = weights.resolve(blob)?;
            let data = match blob.dtype {
                DType::Fp16 => Data::F(d.to_f16()),
                DType::Fp32 => Data::F(d.to_f32().into_iter().map(f16::from_f32).collect()),
                DType::Int8 => Data::I(d.bytes.iter().map(|&x| x as i8 as i32).collect()),
                DType::UInt8 => Data::I(d.bytes.iter().map(|&x| x as i32).collect()),
                DType::Int32 => Data::I(
                    d.bytes
                        .chunks_exact(4)
                        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ),
                other => return Err(unsupported(format!("{other} blobs"))),
            };
            Ok(Tensor::new(blob.shape.clone(), data))
        }
    }
}

/// `(q - zero_point) * scale` per index of `axis`, computed in f32 and stored as fp16.
fn dequantize(q: &Tensor, scale: &[f32], zp: &[i32], axis: usize) -> Result<Tensor> {
    let Data::I(v) = &q.data else {
        return Err(Error::Internal("quantized data is not integer".into()));
    };
    let inner: usize = q.shape[axis + 1..].iter().product();
    let dim = q.shape[axis];
    let pick = |vals: usize, i: usize| if vals == 1 { 0 } else { (i / inner) % dim };
    let out = v
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            f16::from_f32((x - zp[pick(zp.len(), i)]) as f32 * scale[pick(scale.len(), i)])
        })
        .collect();
    Ok(Tensor::new(q.shape.clone(), Data::F(out)))
}
