//! Element types and value types of MIL programs.

use std::fmt;

/// Element type of a tensor or scalar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE half precision.
    Fp16,
    /// IEEE single precision.
    Fp32,
    /// Signed 8-bit integer.
    Int8,
    /// Unsigned 8-bit integer.
    UInt8,
    /// Signed 32-bit integer.
    Int32,
    /// Boolean.
    Bool,
    /// Unsigned 64-bit integer (only seen as the BLOBFILE offset literal).
    UInt64,
    /// UTF-8 string (scalars only).
    String,
}

impl DType {
    /// Every element type, in the order the parser tries them.
    pub const ALL: [DType; 8] = [
        DType::Fp16,
        DType::Fp32,
        DType::Int8,
        DType::UInt8,
        DType::Int32,
        DType::Bool,
        DType::UInt64,
        DType::String,
    ];

    /// The spelling used in MIL text (`fp16`, `int32`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::Fp16 => "fp16",
            DType::Fp32 => "fp32",
            DType::Int8 => "int8",
            DType::UInt8 => "uint8",
            DType::Int32 => "int32",
            DType::Bool => "bool",
            DType::UInt64 => "uint64",
            DType::String => "string",
        }
    }

    /// Parses a MIL spelling.
    pub fn from_name(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// True for fp16 and fp32.
    pub fn is_float(self) -> bool {
        matches!(self, DType::Fp16 | DType::Fp32)
    }

    /// Size of one element in bytes, where the type has a fixed size.
    pub fn size_bytes(self) -> Option<usize> {
        match self {
            DType::Fp16 => Some(2),
            DType::Fp32 | DType::Int32 => Some(4),
            DType::Int8 | DType::UInt8 | DType::Bool => Some(1),
            DType::UInt64 => Some(8),
            DType::String => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Type of a value: a tensor of fixed shape, or a rank-0 scalar.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// `tensor<dtype, [d0, d1, ...]>`.
    Tensor {
        /// Element type.
        dtype: DType,
        /// Static shape; every dimension is known.
        shape: Vec<usize>,
    },
    /// A bare scalar type: `fp16`, `int32`, `bool`, `string`, ...
    Scalar(DType),
}

impl ValueType {
    /// A tensor type.
    pub fn tensor(dtype: DType, shape: impl Into<Vec<usize>>) -> Self {
        ValueType::Tensor {
            dtype,
            shape: shape.into(),
        }
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            ValueType::Tensor { dtype, .. } | ValueType::Scalar(dtype) => *dtype,
        }
    }

    /// Shape; empty for scalars.
    pub fn shape(&self) -> &[usize] {
        match self {
            ValueType::Tensor { shape, .. } => shape,
            ValueType::Scalar(_) => &[],
        }
    }

    /// Number of elements (1 for scalars), saturating at `usize::MAX`: the parser refuses
    /// types whose bytes could not fit in memory, so only a type built by hand saturates.
    pub fn num_elements(&self) -> usize {
        checked_elements(self.shape()).unwrap_or(usize::MAX)
    }

    /// The same shape with another element type.
    pub fn with_dtype(&self, dtype: DType) -> Self {
        match self {
            ValueType::Tensor { shape, .. } => ValueType::tensor(dtype, shape.clone()),
            ValueType::Scalar(_) => ValueType::Scalar(dtype),
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueType::Scalar(d) => write!(f, "{d}"),
            ValueType::Tensor { dtype, shape } => {
                write!(f, "tensor<{dtype}, [")?;
                for (i, d) in shape.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{d}")?;
                }
                f.write_str("]>")
            }
        }
    }
}

/// Elements in a tensor of `shape` (1 for `[]`), or `None` when the count overflows `usize`.
pub fn checked_elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// Bytes of a tensor of `dtype` and `shape` when they fit in memory (at most `isize::MAX`),
/// else `None`. Types without a fixed size count one byte per element.
pub fn checked_bytes(dtype: DType, shape: &[usize]) -> Option<usize> {
    checked_elements(shape)?
        .checked_mul(dtype.size_bytes().unwrap_or(1))
        .filter(|&b| b <= isize::MAX as usize)
}
