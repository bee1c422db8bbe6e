//! The program IR: what a MIL text file means, without its spelling.
//!
//! Every value is named; statements refer to earlier values by name. Source positions are
//! not stored here (the parser keeps them in a side table), so two programs compare equal
//! when they mean the same thing, and `parse(print(p)) == p` is a plain `assert_eq!`.

use half::f16;

use crate::types::{DType, ValueType};

/// The program header version that the private compiler accepts (`program(1.3)`).
pub const DEFAULT_PROGRAM_VERSION: &str = "1.3";

/// The buildInfo fingerprint every known-good private-path program carries.
pub const DEFAULT_BUILD_INFO: [(&str, &str); 4] = [
    ("coremlc-component-MIL", "3510.2.1"),
    ("coremlc-version", "3505.4.1"),
    ("coremltools-component-milinternal", ""),
    ("coremltools-version", "9.0"),
];

/// A whole MIL program: header, program attributes and one or more functions.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    /// The version in `program(X)`, e.g. `"1.3"`.
    pub version: String,
    /// Program attributes, in order (normally one: `buildInfo`).
    pub attributes: Vec<(String, Literal)>,
    /// Functions ("procedures" once compiled), in order.
    pub functions: Vec<Function>,
}

impl Program {
    /// An empty program with the known-good header and buildInfo.
    pub fn new() -> Self {
        let build_info = DEFAULT_BUILD_INFO
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Program {
            version: DEFAULT_PROGRAM_VERSION.to_string(),
            attributes: vec![("buildInfo".to_string(), Literal::Dict(build_info))],
            functions: Vec::new(),
        }
    }

    /// The function called `name`.
    pub fn function(&self, name: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.name == name)
    }

    /// Every BLOBFILE reference in the program, in statement order.
    pub fn blob_refs(&self) -> impl Iterator<Item = &BlobRef> {
        self.functions
            .iter()
            .flat_map(|f| f.body.iter())
            .flat_map(|s| s.attributes.iter().map(|(_, v)| v).chain(s.literal_args()))
            .filter_map(|l| match l {
                Literal::Blob(b) => Some(b),
                _ => None,
            })
    }
}

impl Default for Program {
    fn default() -> Self {
        Program::new()
    }
}

/// One function: `func NAME<OPSET>(params) { body } -> (outputs);`.
#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    /// Function name (`main`).
    pub name: String,
    /// Opset tag between angle brackets (`ios17`, `ios18`).
    pub opset: String,
    /// Typed parameters, in order.
    pub params: Vec<Param>,
    /// Statements, in order.
    pub body: Vec<Statement>,
    /// Names of the returned values, in order.
    pub outputs: Vec<String>,
}

/// A typed function parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// Parameter name.
    pub name: String,
    /// Its type.
    pub ty: ValueType,
}

/// One statement: `TYPE NAME = OP(ARGS)[ATTRIBUTES];`.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    /// Declared type of the result.
    pub ty: ValueType,
    /// Name of the result.
    pub name: String,
    /// Operator name (`conv`, `const`, ...).
    pub op: String,
    /// Named arguments inside the parentheses, in written order.
    pub args: Vec<(String, Arg)>,
    /// Attributes inside the brackets, in written order (`name`, `val`, ...).
    pub attributes: Vec<(String, Literal)>,
}

impl Statement {
    /// The argument or attribute called `key` (constexpr ops put operands in attributes).
    pub fn input(&self, key: &str) -> Option<Input<'_>> {
        if let Some((_, a)) = self.args.iter().find(|(k, _)| k == key) {
            return Some(Input::Arg(a));
        }
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, l)| Input::Attr(l))
    }

    /// The `name = string("...")` attribute, if present.
    pub fn op_name(&self) -> Option<&str> {
        self.attributes
            .iter()
            .find_map(|(k, v)| match (k.as_str(), v) {
                ("name", Literal::String(s)) => Some(s.as_str()),
                _ => None,
            })
    }

    /// Literals written inline among the arguments.
    pub fn literal_args(&self) -> impl Iterator<Item = &Literal> {
        self.args.iter().filter_map(|(_, a)| match a {
            Arg::Literal(l) => Some(l),
            _ => None,
        })
    }
}

/// Where an operand came from: the argument list or the attribute block.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// From `op(key = ...)`.
    Arg(&'a Arg),
    /// From `[key = ...]`.
    Attr(&'a Literal),
}

/// An argument value.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    /// A reference to a parameter or an earlier statement.
    Var(String),
    /// An inline literal (`fp16(-1)`, `int32(3)`).
    Literal(Literal),
    /// A tuple of variables, e.g. `concat(values = (a, b, c))`.
    Tuple(Vec<String>),
}

/// A literal value.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// A scalar (`int32(1)`, `fp16(0.5)`) or tensor (`tensor<int32, [4]>([0, 1, 3, 2])`) literal.
    Tensor(TensorLiteral),
    /// `string("...")`.
    String(String),
    /// `tensor<...>(BLOBFILE(path = string("..."), offset = uint64(N)))`.
    Blob(BlobRef),
    /// `dict<string, string>({{"k", "v"}, ...})`.
    Dict(Vec<(String, String)>),
}

impl Literal {
    /// Type of the literal, where it has a value type.
    pub fn value_type(&self) -> Option<ValueType> {
        match self {
            Literal::Tensor(t) => Some(t.value_type()),
            Literal::String(_) => Some(ValueType::Scalar(DType::String)),
            Literal::Blob(b) => Some(ValueType::tensor(b.dtype, b.shape.clone())),
            Literal::Dict(_) => None,
        }
    }

    /// An `int32` scalar.
    pub fn int32(v: i32) -> Self {
        Literal::Tensor(TensorLiteral::scalar(TensorData::Int32(vec![v])))
    }

    /// A 1-D `int32` tensor.
    pub fn int32s(v: &[i32]) -> Self {
        Literal::Tensor(TensorLiteral {
            shape: Some(vec![v.len()]),
            data: TensorData::Int32(v.to_vec()),
        })
    }

    /// A `bool` scalar.
    pub fn bool(v: bool) -> Self {
        Literal::Tensor(TensorLiteral::scalar(TensorData::Bool(vec![v])))
    }

    /// An `fp16` scalar.
    pub fn fp16(v: f32) -> Self {
        Literal::Tensor(TensorLiteral::scalar(TensorData::Fp16(vec![
            f16::from_f32(v),
        ])))
    }

    /// A `string` scalar.
    pub fn string(s: impl Into<String>) -> Self {
        Literal::String(s.into())
    }
}

/// An inline scalar or tensor literal.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorLiteral {
    /// `None` for a scalar, `Some(shape)` for a tensor (an empty shape is a rank-0 tensor).
    pub shape: Option<Vec<usize>>,
    /// Values in row-major order.
    pub data: TensorData,
}

impl TensorLiteral {
    /// A scalar literal holding the single value in `data`.
    pub fn scalar(data: TensorData) -> Self {
        TensorLiteral { shape: None, data }
    }

    /// The literal's type.
    pub fn value_type(&self) -> ValueType {
        match &self.shape {
            None => ValueType::Scalar(self.data.dtype()),
            Some(s) => ValueType::tensor(self.data.dtype(), s.clone()),
        }
    }

    /// The values as i64, for integer and bool literals.
    pub fn as_i64s(&self) -> Option<Vec<i64>> {
        match &self.data {
            TensorData::Int32(v) => Some(v.iter().map(|&x| x as i64).collect()),
            TensorData::Int8(v) => Some(v.iter().map(|&x| x as i64).collect()),
            TensorData::UInt8(v) => Some(v.iter().map(|&x| x as i64).collect()),
            TensorData::UInt64(v) => Some(v.iter().map(|&x| x as i64).collect()),
            TensorData::Bool(v) => Some(v.iter().map(|&x| x as i64).collect()),
            _ => None,
        }
    }

    /// The values as f32, for float and integer literals.
    pub fn as_f32s(&self) -> Option<Vec<f32>> {
        match &self.data {
            TensorData::Fp16(v) => Some(v.iter().map(|x| x.to_f32()).collect()),
            TensorData::Fp32(v) => Some(v.clone()),
            _ => self
                .as_i64s()
                .map(|v| v.into_iter().map(|x| x as f32).collect()),
        }
    }
}

/// Literal values, one vector per element type.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// fp16 values.
    Fp16(Vec<f16>),
    /// fp32 values.
    Fp32(Vec<f32>),
    /// int8 values.
    Int8(Vec<i8>),
    /// uint8 values.
    UInt8(Vec<u8>),
    /// int32 values.
    Int32(Vec<i32>),
    /// uint64 values.
    UInt64(Vec<u64>),
    /// bool values.
    Bool(Vec<bool>),
}

impl TensorData {
    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::Fp16(_) => DType::Fp16,
            TensorData::Fp32(_) => DType::Fp32,
            TensorData::Int8(_) => DType::Int8,
            TensorData::UInt8(_) => DType::UInt8,
            TensorData::Int32(_) => DType::Int32,
            TensorData::UInt64(_) => DType::UInt64,
            TensorData::Bool(_) => DType::Bool,
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            TensorData::Fp16(v) => v.len(),
            TensorData::Fp32(v) => v.len(),
            TensorData::Int8(v) => v.len(),
            TensorData::UInt8(v) => v.len(),
            TensorData::Int32(v) => v.len(),
            TensorData::UInt64(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A constant stored in a weight file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlobRef {
    /// Element type of the stored data.
    pub dtype: DType,
    /// Shape of the constant.
    pub shape: Vec<usize>,
    /// Path as written in MIL, e.g. `@model_path/weights/weight.bin`.
    pub path: String,
    /// Byte offset of the blob's 64-byte metadata record in that file.
    pub offset: u64,
}
