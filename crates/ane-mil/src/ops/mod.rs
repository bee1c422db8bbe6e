//! The op set: for each op, which inputs it takes, how its result type follows from them,
//! and the resolved form ([`Op`]) that engines execute.
//!
//! Adding an op is one entry in `OP_DEFS`, one function that checks its inputs and builds an
//! [`Op`] variant, and one arm in each engine that runs it.

mod elementwise;
mod layout;
mod linear;

pub use elementwise::{BinaryOp, UnaryOp};
pub use linear::broadcast;

use crate::ir::{Literal, TensorLiteral};
use crate::types::{DType, ValueType};

/// A resolved operand: where the value comes from, and its type.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// A parameter or an earlier statement's result.
    Var {
        /// The value's name.
        name: String,
        /// Its type.
        ty: ValueType,
    },
    /// A literal written inline (or a `const` it refers to, folded in by the checker).
    Const {
        /// The value.
        value: Literal,
        /// Its type.
        ty: ValueType,
    },
}

impl Operand {
    /// The operand's type.
    pub fn ty(&self) -> &ValueType {
        match self {
            Operand::Var { ty, .. } | Operand::Const { ty, .. } => ty,
        }
    }

    /// The constant value, if the operand is one.
    pub fn literal(&self) -> Option<&Literal> {
        match self {
            Operand::Const { value, .. } => Some(value),
            Operand::Var { .. } => None,
        }
    }
}

/// How a slice reads one axis: `count` elements from `start`, `step` apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AxisSlice {
    /// First index read.
    pub start: usize,
    /// Distance between reads (negative walks backwards).
    pub step: isize,
    /// Elements read.
    pub count: usize,
}

/// Convolution geometry, resolved to explicit numbers per spatial axis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Stride per spatial axis.
    pub strides: Vec<usize>,
    /// Dilation per spatial axis.
    pub dilations: Vec<usize>,
    /// Padding (before, after) per spatial axis.
    pub pads: Vec<(usize, usize)>,
    /// Channel groups.
    pub groups: usize,
}

/// A statement in resolved form: constants folded, defaults filled, axes normalised.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `const`: the value.
    Const(Literal),
    /// `conv`: `x [N, Cin, *spatial]`, `weight [Cout, Cin/groups, *kernel]`.
    Conv {
        /// Input.
        x: Operand,
        /// Weight.
        weight: Operand,
        /// Optional per-output-channel bias.
        bias: Option<Operand>,
        /// Geometry.
        geometry: ConvGeometry,
    },
    /// `matmul` with numpy-style batch broadcast.
    Matmul {
        /// Left operand.
        x: Operand,
        /// Right operand.
        y: Operand,
        /// Transpose the last two axes of `x` first.
        transpose_x: bool,
        /// Transpose the last two axes of `y` first.
        transpose_y: bool,
    },
    /// `transpose`.
    Transpose {
        /// Input.
        x: Operand,
        /// Output axis i is input axis `perm[i]`.
        perm: Vec<usize>,
    },
    /// `reshape` (the result type holds the new shape).
    Reshape {
        /// Input.
        x: Operand,
    },
    /// `cast` to the result type's dtype.
    Cast {
        /// Input.
        x: Operand,
        /// Target type.
        dtype: DType,
    },
    /// `slice_by_size` / `slice_by_index`: one [`AxisSlice`] per input axis; squeezed axes removed.
    Slice {
        /// Input.
        x: Operand,
        /// Per input axis.
        axes: Vec<AxisSlice>,
    },
    /// `concat`.
    Concat {
        /// Inputs, in order.
        values: Vec<Operand>,
        /// Normalised axis.
        axis: usize,
        /// Interleave instead of appending.
        interleave: bool,
    },
    /// `add`, `sub`, `mul`, `real_div`, `pow`: numpy broadcasting.
    Binary {
        /// Which.
        op: BinaryOp,
        /// Left operand.
        x: Operand,
        /// Right operand (a constant for `pow`).
        y: Operand,
    },
    /// `sigmoid`, `tanh`.
    Unary {
        /// Which.
        op: UnaryOp,
        /// Input.
        x: Operand,
    },
    /// `reduce_sum` (or `reduce_mean`) over `axes` (normalised, sorted).
    Reduce {
        /// Input.
        x: Operand,
        /// Axes summed.
        axes: Vec<usize>,
        /// Keep them as size 1.
        keep_dims: bool,
        /// The mean (`reduce_mean`) rather than the sum.
        mean: bool,
    },
    /// `constexpr_affine_dequantize`: `(data - zero_point) * scale` along `axis`.
    AffineDequantize {
        /// Quantized values (a constant).
        data: Operand,
        /// One scale, or one per index of `axis`.
        scale: Vec<f32>,
        /// One zero point, or one per index of `axis`.
        zero_point: Vec<i32>,
        /// Normalised axis.
        axis: usize,
    },
}

/// Why an op's inputs are not acceptable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OpError {
    Missing(&'static str),
    NotConst(&'static str),
    DType(String),
    Shape(String),
    Value(String),
}

pub(crate) type OpResult<T> = Result<T, OpError>;

/// One input as the checker saw it.
#[derive(Clone, Debug)]
pub(crate) enum InputValue {
    One(Operand),
    Tuple(Vec<Operand>),
}

/// The named inputs of one statement, resolved to operands.
pub(crate) struct OpArgs {
    pub(crate) inputs: Vec<(String, InputValue)>,
}

impl OpArgs {
    fn get(&self, key: &'static str) -> Option<&InputValue> {
        self.inputs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn operand(&self, key: &'static str) -> OpResult<Operand> {
        match self.get(key) {
            Some(InputValue::One(o)) => Ok(o.clone()),
            Some(InputValue::Tuple(_)) => Err(OpError::Value(format!(
                "`{key}` must be one value, not a tuple"
            ))),
            None => Err(OpError::Missing(key)),
        }
    }

    fn opt_operand(&self, key: &'static str) -> OpResult<Option<Operand>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.operand(key).map(Some),
        }
    }

    fn tuple(&self, key: &'static str) -> OpResult<Vec<Operand>> {
        match self.get(key) {
            Some(InputValue::Tuple(v)) => Ok(v.clone()),
            Some(InputValue::One(o)) => Ok(vec![o.clone()]),
            None => Err(OpError::Missing(key)),
        }
    }

    /// A tensor operand: its dtype and shape.
    fn tensor(&self, key: &'static str) -> OpResult<(Operand, DType, Vec<usize>)> {
        let o = self.operand(key)?;
        match o.ty().clone() {
            ValueType::Tensor { dtype, shape } => Ok((o, dtype, shape)),
            t => Err(OpError::DType(format!(
                "`{key}` must be a tensor, found {t}"
            ))),
        }
    }

    fn literal(&self, key: &'static str) -> OpResult<Option<&TensorLiteral>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v {
            InputValue::One(Operand::Const {
                value: Literal::Tensor(t),
                ..
            }) => Ok(Some(t)),
            _ => Err(OpError::NotConst(key)),
        }
    }

    /// Integer constants (a scalar gives one value).
    fn ints(&self, key: &'static str) -> OpResult<Option<Vec<i64>>> {
        match self.literal(key)? {
            None => Ok(None),
            Some(t) => t.as_i64s().map(Some).ok_or_else(|| {
                OpError::DType(format!(
                    "`{key}` must be an integer constant, found {}",
                    t.value_type()
                ))
            }),
        }
    }

    fn req_ints(&self, key: &'static str) -> OpResult<Vec<i64>> {
        self.ints(key)?.ok_or(OpError::Missing(key))
    }

    fn int(&self, key: &'static str) -> OpResult<Option<i64>> {
        match self.ints(key)? {
            None => Ok(None),
            Some(v) if v.len() == 1 => Ok(Some(v[0])),
            Some(v) => Err(OpError::Value(format!(
                "`{key}` must be a single integer, found {} values",
                v.len()
            ))),
        }
    }

    fn bools(&self, key: &'static str) -> OpResult<Option<Vec<bool>>> {
        match self.literal(key)? {
            None => Ok(None),
            Some(TensorLiteral {
                data: crate::ir::TensorData::Bool(v),
                ..
            }) => Ok(Some(v.clone())),
            Some(t) => Err(OpError::DType(format!(
                "`{key}` must be a bool constant, found {}",
                t.value_type()
            ))),
        }
    }

    fn bool_or(&self, key: &'static str, default: bool) -> OpResult<bool> {
        match self.bools(key)? {
            None => Ok(default),
            Some(v) if v.len() == 1 => Ok(v[0]),
            Some(_) => Err(OpError::Value(format!("`{key}` must be a single bool"))),
        }
    }

    fn string(&self, key: &'static str) -> OpResult<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(InputValue::One(Operand::Const {
                value: Literal::String(s),
                ..
            })) => Ok(Some(s.clone())),
            Some(InputValue::One(Operand::Const { ty, .. })) => Err(OpError::DType(format!(
                "`{key}` must be a string, found {ty}"
            ))),
            Some(_) => Err(OpError::NotConst(key)),
        }
    }
}

/// An op's signature and its resolver.
pub(crate) struct OpDef {
    pub(crate) name: &'static str,
    /// (input name, required)
    pub(crate) inputs: &'static [(&'static str, bool)],
    pub(crate) resolve: fn(&OpArgs) -> OpResult<(Op, ValueType)>,
}

/// Every op the checker and the reference engine know.
pub(crate) const OP_DEFS: &[OpDef] = &[
    OpDef {
        name: "const",
        inputs: &[("val", true)],
        resolve: layout::constant,
    },
    OpDef {
        name: "cast",
        inputs: &[("x", true), ("dtype", true)],
        resolve: layout::cast,
    },
    OpDef {
        name: "reshape",
        inputs: &[("x", true), ("shape", true)],
        resolve: layout::reshape,
    },
    OpDef {
        name: "transpose",
        inputs: &[("x", true), ("perm", true)],
        resolve: layout::transpose,
    },
    OpDef {
        name: "slice_by_size",
        inputs: &[("x", true), ("begin", true), ("size", true)],
        resolve: layout::slice_by_size,
    },
    OpDef {
        name: "slice_by_index",
        inputs: &[
            ("x", true),
            ("begin", true),
            ("end", true),
            ("stride", false),
            ("begin_mask", false),
            ("end_mask", false),
            ("squeeze_mask", false),
        ],
        resolve: layout::slice_by_index,
    },
    OpDef {
        name: "concat",
        inputs: &[("values", true), ("axis", true), ("interleave", false)],
        resolve: layout::concat,
    },
    OpDef {
        name: "conv",
        inputs: &[
            ("x", true),
            ("weight", true),
            ("bias", false),
            ("strides", false),
            ("pad_type", false),
            ("pad", false),
            ("dilations", false),
            ("groups", false),
        ],
        resolve: linear::conv,
    },
    OpDef {
        name: "matmul",
        inputs: &[
            ("x", true),
            ("y", true),
            ("transpose_x", false),
            ("transpose_y", false),
        ],
        resolve: linear::matmul,
    },
    OpDef {
        name: "add",
        inputs: &[("x", true), ("y", true)],
        resolve: elementwise::add,
    },
    OpDef {
        name: "sub",
        inputs: &[("x", true), ("y", true)],
        resolve: elementwise::sub,
    },
    OpDef {
        name: "mul",
        inputs: &[("x", true), ("y", true)],
        resolve: elementwise::mul,
    },
    OpDef {
        name: "real_div",
        inputs: &[("x", true), ("y", true)],
        resolve: elementwise::real_div,
    },
    OpDef {
        name: "pow",
        inputs: &[("x", true), ("y", true)],
        resolve: elementwise::pow,
    },
    OpDef {
        name: "sigmoid",
        inputs: &[("x", true)],
        resolve: elementwise::sigmoid,
    },
    OpDef {
        name: "tanh",
        inputs: &[("x", true)],
        resolve: elementwise::tanh,
    },
    OpDef {
        name: "reduce_sum",
        inputs: &[("x", true), ("axes", false), ("keep_dims", false)],
        resolve: elementwise::reduce_sum,
    },
    OpDef {
        name: "reduce_mean",
        inputs: &[("x", true), ("axes", false), ("keep_dims", false)],
        resolve: elementwise::reduce_mean,
    },
    OpDef {
        name: "constexpr_affine_dequantize",
        inputs: &[
            ("quantized_data", true),
            ("zero_point", true),
            ("scale", true),
            ("axis", true),
        ],
        resolve: linear::affine_dequantize,
    },
];

/// The definition of `op`.
pub(crate) fn op_def(op: &str) -> Option<&'static OpDef> {
    OP_DEFS.iter().find(|d| d.name == op)
}

/// Names of every supported op.
pub fn supported_ops() -> impl Iterator<Item = &'static str> {
    OP_DEFS.iter().map(|d| d.name)
}

/// Normalises a possibly negative axis against `rank`.
fn norm_axis(axis: i64, rank: usize, what: &str) -> OpResult<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(OpError::Value(format!(
            "{what} {axis} is out of range for rank {rank}"
        )));
    }
    Ok(if axis < 0 {
        (axis + r) as usize
    } else {
        axis as usize
    })
}

fn float_dtype(what: &str, d: DType) -> OpResult<()> {
    if d.is_float() {
        Ok(())
    } else {
        Err(OpError::DType(format!(
            "`{what}` must be fp16 or fp32, found {d}"
        )))
    }
}
