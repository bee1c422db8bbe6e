//! Name resolution and type/shape inference: turns a [`Program`] into [`CheckedFunction`]s
//! whose statements are resolved [`Op`]s with verified result types.

use std::collections::HashMap;

use crate::blob::{BlobError, WeightFiles};
use crate::ir::{Arg, Function, Input, Literal, Param, Program, Statement};
use crate::ops::{op_def, InputValue, Op, OpArgs, OpError, Operand};
use crate::types::ValueType;

/// Where in a function an error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// The function as a whole (its name).
    Function,
    /// Parameter `i`.
    Param(usize),
    /// Statement `i` of the body.
    Statement(usize),
    /// The `-> (...)` list.
    Outputs,
}

/// What is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckErrorKind {
    /// The program has no function.
    #[error("the program has no function")]
    NoFunctions,
    /// Two functions share a name.
    #[error("a second function is called `{0}`")]
    DuplicateFunction(String),
    /// The op is not in the op set.
    #[error("unknown op `{op}` (known: {known})")]
    UnknownOp {
        /// The op.
        op: String,
        /// Known ops, comma separated.
        known: String,
    },
    /// A required input is absent.
    #[error("`{op}` needs input `{input}`")]
    MissingInput {
        /// The op.
        op: String,
        /// The input.
        input: String,
    },
    /// An input the op does not take.
    #[error("`{op}` takes no input `{input}` (it takes {expected})")]
    UnexpectedInput {
        /// The op.
        op: String,
        /// The input.
        input: String,
        /// Inputs it does take.
        expected: String,
    },
    /// An input given twice.
    #[error("input `{input}` is given twice")]
    DuplicateInput {
        /// The input.
        input: String,
    },
    /// An input that must be a constant refers to a computed value.
    #[error("`{op}`: input `{input}` must be a constant (a literal or a `const`)")]
    NotConstant {
        /// The op.
        op: String,
        /// The input.
        input: String,
    },
    /// A name used before it is defined.
    #[error("`{0}` is not defined before this point")]
    Undefined(String),
    /// A name defined twice.
    #[error("`{0}` is already defined")]
    Redefined(String),
    /// Wrong element type.
    #[error("`{op}`: dtype mismatch: {message}")]
    DTypeMismatch {
        /// The op.
        op: String,
        /// Details.
        message: String,
    },
    /// Wrong shape.
    #[error("`{op}`: shape mismatch: {message}")]
    ShapeMismatch {
        /// The op.
        op: String,
        /// Details.
        message: String,
    },
    /// A bad constant value (axis out of range, unknown pad type, ...).
    #[error("`{op}`: {message}")]
    InvalidValue {
        /// The op.
        op: String,
        /// Details.
        message: String,
    },
    /// The declared result type differs from the inferred one.
    #[error("`{name}` is declared {declared} but `{op}` produces {inferred}")]
    TypeMismatch {
        /// The result's name.
        name: String,
        /// The op.
        op: String,
        /// Declared type.
        declared: ValueType,
        /// Inferred type.
        inferred: ValueType,
    },
    /// A BLOBFILE constant that does not resolve in the weight files.
    #[error("{0}")]
    Blob(#[from] BlobError),
}

/// A check error with its position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("in function `{function}`: {kind}")]
pub struct CheckError {
    /// Function name.
    pub function: String,
    /// Index of the function in the program.
    pub function_index: usize,
    /// Where in it.
    pub at: Location,
    /// What.
    pub kind: Box<CheckErrorKind>,
}

impl CheckError {
    /// Where the error is in the source the program was parsed from.
    pub fn span(&self, map: &crate::text::parse::SourceMap) -> Option<crate::text::error::Span> {
        self.at.span(map, self.function_index)
    }
}

impl Location {
    /// Where this position of function `function_index` is in the parsed source.
    pub fn span(
        self,
        map: &crate::text::parse::SourceMap,
        function_index: usize,
    ) -> Option<crate::text::error::Span> {
        let f = map.functions.get(function_index)?;
        match self {
            Location::Function => Some(f.name),
            Location::Param(i) => f.params.get(i).copied(),
            Location::Statement(i) => f.statements.get(i).copied(),
            Location::Outputs => Some(f.outputs),
        }
    }
}

/// A statement after checking.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedStatement {
    /// Result name.
    pub name: String,
    /// Result type.
    pub ty: ValueType,
    /// Resolved op.
    pub op: Op,
}

/// A function after checking: its signature and resolved statements.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedFunction {
    /// Function name.
    pub name: String,
    /// Opset tag.
    pub opset: String,
    /// Inputs.
    pub inputs: Vec<Param>,
    /// Outputs with their types.
    pub outputs: Vec<Param>,
    /// Statements in order.
    pub statements: Vec<CheckedStatement>,
}

impl CheckedFunction {
    /// `main(x: tensor<...>) -> (y: tensor<...>)`.
    pub fn signature(&self) -> String {
        let list = |ps: &[Param]| {
            ps.iter()
                .map(|p| format!("{}: {}", p.name, p.ty))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{}<{}>({}) -> ({})",
            self.name,
            self.opset,
            list(&self.inputs),
            list(&self.outputs)
        )
    }

    /// How many products each output of every `conv` and `matmul` sums (its K), by result
    /// name, in order: a conv's input channels per group times its kernel's size, a matmul's
    /// contracted axis. The ANE's throughput follows this number (trisanths/ane-llm-prefill
    /// `results/reduction_law.md`).
    pub fn product_sums(&self) -> Vec<(&str, usize)> {
        self.statements
            .iter()
            .filter_map(|s| {
                let k = match &s.op {
                    Op::Conv { weight, .. } => weight.ty().shape().iter().skip(1).product(),
                    Op::Matmul { x, transpose_x, .. } => {
                        let shape = x.ty().shape();
                        let axis = shape.len().checked_sub(if *transpose_x { 2 } else { 1 })?;
                        shape[axis]
                    }
                    _ => return None,
                };
                Some((s.name.as_str(), k))
            })
            .collect()
    }
}

/// Checks every function. With `weights`, every BLOBFILE constant is resolved against them.
pub fn check_program(
    program: &Program,
    weights: Option<&WeightFiles>,
) -> Result<Vec<CheckedFunction>, CheckError> {
    if program.functions.is_empty() {
        return Err(CheckError {
            function: String::new(),
            function_index: 0,
            at: Location::Function,
            kind: Box::new(CheckErrorKind::NoFunctions),
        });
    }
    let mut out = Vec::with_capacity(program.functions.len());
    for (fi, f) in program.functions.iter().enumerate() {
        let err = |at, kind| CheckError {
            function: f.name.clone(),
            function_index: fi,
            at,
            kind: Box::new(kind),
        };
        if program.functions[..fi].iter().any(|g| g.name == f.name) {
            return Err(err(
                Location::Function,
                CheckErrorKind::DuplicateFunction(f.name.clone()),
            ));
        }
        out.push(check_function(f, weights).map_err(|e| err(e.0, e.1))?);
    }
    Ok(out)
}

type Located = Box<(Location, CheckErrorKind)>;

/// Names in scope: type, and the value when it is a constant.
pub(crate) type Env<'a> = HashMap<&'a str, (ValueType, Option<Literal>)>;

fn check_function(f: &Function, weights: Option<&WeightFiles>) -> Result<CheckedFunction, Located> {
    // name -> (type, constant value if known)
    let mut env: Env<'_> = HashMap::new();
    for (i, p) in f.params.iter().enumerate() {
        if env.insert(&p.name, (p.ty.clone(), None)).is_some() {
            return Err(Box::new((
                Location::Param(i),
                CheckErrorKind::Redefined(p.name.clone()),
            )));
        }
    }
    let mut statements = Vec::with_capacity(f.body.len());
    for (i, s) in f.body.iter().enumerate() {
        let at = Location::Statement(i);
        let checked = check_statement(s, &env, weights).map_err(|k| Box::new((at, k)))?;
        if env.contains_key(s.name.as_str()) {
            return Err(Box::new((at, CheckErrorKind::Redefined(s.name.clone()))));
        }
        let konst = match &checked.op {
            Op::Const(l) => Some(l.clone()),
            _ => None,
        };
        env.insert(&s.name, (checked.ty.clone(), konst));
        statements.push(checked);
    }
    let mut outputs = Vec::with_capacity(f.outputs.len());
    for o in &f.outputs {
        let (ty, _) = env
            .get(o.as_str())
            .ok_or_else(|| Box::new((Location::Outputs, CheckErrorKind::Undefined(o.clone()))))?;
        outputs.push(Param {
            name: o.clone(),
            ty: ty.clone(),
        });
    }
    Ok(CheckedFunction {
        name: f.name.clone(),
        opset: f.opset.clone(),
        inputs: f.params.clone(),
        outputs,
        statements,
    })
}

pub(crate) fn check_statement(
    s: &Statement,
    env: &Env<'_>,
    weights: Option<&WeightFiles>,
) -> Result<CheckedStatement, CheckErrorKind> {
    let known = || crate::ops::supported_ops().collect::<Vec<_>>().join(", ");
    let def = op_def(&s.op).ok_or_else(|| CheckErrorKind::UnknownOp {
        op: s.op.clone(),
        known: known(),
    })?;
    let keys = s
        .args
        .iter()
        .map(|(k, _)| k)
        .chain(s.attributes.iter().map(|(k, _)| k).filter(|k| *k != "name"));
    let mut inputs: Vec<(String, InputValue)> = Vec::new();
    for key in keys {
        if !def.inputs.iter().any(|(n, _)| n == key) {
            let expected = def
                .inputs
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(CheckErrorKind::UnexpectedInput {
                op: s.op.clone(),
                input: key.clone(),
                expected,
            });
        }
        if inputs.iter().any(|(k, _)| k == key) {
            return Err(CheckErrorKind::DuplicateInput { input: key.clone() });
        }
        let value = match s.input(key).expect("key comes from the statement") {
            Input::Attr(l) => InputValue::One(operand_from_literal(l, weights)?),
            Input::Arg(Arg::Literal(l)) => InputValue::One(operand_from_literal(l, weights)?),
            Input::Arg(Arg::Var(v)) => InputValue::One(lookup(v, env)?),
            Input::Arg(Arg::Tuple(vs)) => InputValue::Tuple(
                vs.iter()
                    .map(|v| lookup(v, env))
                    .collect::<Result<_, _>>()?,
            ),
        };
        inputs.push((key.clone(), value));
    }
    for (name, required) in def.inputs {
        if *required && !inputs.iter().any(|(k, _)| k == name) {
            return Err(CheckErrorKind::MissingInput {
                op: s.op.clone(),
                input: name.to_string(),
            });
        }
    }
    let (op, ty) = (def.resolve)(&OpArgs { inputs }).map_err(|e| op_error(&s.op, e))?;
    if ty != s.ty {
        return Err(CheckErrorKind::TypeMismatch {
            name: s.name.clone(),
            op: s.op.clone(),
            declared: s.ty.clone(),
            inferred: ty,
        });
    }
    Ok(CheckedStatement {
        name: s.name.clone(),
        ty,
        op,
    })
}

fn op_error(op: &str, e: OpError) -> CheckErrorKind {
    let op = op.to_string();
    match e {
        OpError::Missing(input) => CheckErrorKind::MissingInput {
            op,
            input: input.to_string(),
        },
        OpError::NotConst(input) => CheckErrorKind::NotConstant {
            op,
            input: input.to_string(),
        },
        OpError::DType(message) => CheckErrorKind::DTypeMismatch { op, message },
        OpError::Shape(message) => CheckErrorKind::ShapeMismatch { op, message },
        OpError::Value(message) => CheckErrorKind::InvalidValue { op, message },
    }
}

fn lookup(name: &str, env: &Env<'_>) -> Result<Operand, CheckErrorKind> {
    let (ty, konst) = env
        .get(name)
        .ok_or_else(|| CheckErrorKind::Undefined(name.to_string()))?;
    Ok(match konst {
        Some(value) => Operand::Const {
            value: value.clone(),
            ty: ty.clone(),
        },
        None => Operand::Var {
            name: name.to_string(),
            ty: ty.clone(),
        },
    })
}

fn operand_from_literal(
    l: &Literal,
    weights: Option<&WeightFiles>,
) -> Result<Operand, CheckErrorKind> {
    if let (Literal::Blob(b), Some(w)) = (l, weights) {
        w.resolve(b)?;
    }
    if let Literal::Tensor(t) = l {
        let n = t
            .shape
            .as_ref()
            .map_or(Some(1), |s| crate::types::checked_elements(s));
        let Some(n) = n else {
            return Err(CheckErrorKind::InvalidValue {
                op: "literal".into(),
                message: "its shape's element count overflows".into(),
            });
        };
        if n != t.data.len() {
            return Err(CheckErrorKind::InvalidValue {
                op: "literal".into(),
                message: format!(
                    "holds {} values, its type {} needs {n}",
                    t.data.len(),
                    t.value_type()
                ),
            });
        }
    }
    let ty = l.value_type().ok_or_else(|| CheckErrorKind::InvalidValue {
        op: "const".into(),
        message: "a dict is not a value".into(),
    })?;
    Ok(Operand::Const {
        value: l.clone(),
        ty,
    })
}
