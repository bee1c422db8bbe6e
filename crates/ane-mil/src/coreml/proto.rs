//! The subset of Core ML's protobuf messages (`Model.proto`, `FeatureTypes.proto`, `MIL.proto`)
//! that a one-function ML Program needs, written by hand with prost derives.
//!
//! Field numbers follow coremltools 9.0's generated descriptors. Messages in a proto `oneof`
//! are plain optional fields with the same tags (only one is ever set). Maps are `BTreeMap`
//! so the encoded bytes are the same on every run (kernel caches key on them).

use std::collections::BTreeMap;

/// `CoreML.Specification.Model`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Model {
    /// Core ML specification version (9 = iOS 18 / macOS 15).
    #[prost(int32, tag = "1")]
    pub specification_version: i32,
    /// Inputs, outputs and metadata.
    #[prost(message, optional, tag = "2")]
    pub description: Option<ModelDescription>,
    /// The ML Program (`oneof Type`).
    #[prost(message, optional, tag = "502")]
    pub ml_program: Option<Program>,
}

/// `CoreML.Specification.ModelDescription`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelDescription {
    /// Model inputs.
    #[prost(message, repeated, tag = "1")]
    pub input: Vec<FeatureDescription>,
    /// Model outputs.
    #[prost(message, repeated, tag = "10")]
    pub output: Vec<FeatureDescription>,
    /// Author, version, user-defined keys.
    #[prost(message, optional, tag = "100")]
    pub metadata: Option<Metadata>,
}

/// `CoreML.Specification.Metadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metadata {
    /// One-line description.
    #[prost(string, tag = "1")]
    pub short_description: String,
    /// Who made the model.
    #[prost(string, tag = "3")]
    pub author: String,
    /// Free-form keys.
    #[prost(btree_map = "string, string", tag = "100")]
    pub user_defined: BTreeMap<String, String>,
}

/// `CoreML.Specification.FeatureDescription`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureDescription {
    /// Feature name (the MIL parameter or output name).
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its type.
    #[prost(message, optional, tag = "3")]
    pub r#type: Option<FeatureType>,
}

/// `CoreML.Specification.FeatureType` (only the multi-array case).
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureType {
    /// `multiArrayType` in `oneof Type`.
    #[prost(message, optional, tag = "5")]
    pub multi_array_type: Option<ArrayFeatureType>,
}

/// `CoreML.Specification.ArrayFeatureType`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ArrayFeatureType {
    /// Fixed shape.
    #[prost(int64, repeated, tag = "1")]
    pub shape: Vec<i64>,
    /// `ArrayDataType`: see [`array_dtype`].
    #[prost(int32, tag = "2")]
    pub data_type: i32,
}

/// `ArrayFeatureType.ArrayDataType` values.
pub mod array_dtype {
    /// FLOAT32.
    pub const FLOAT32: i32 = 0x10020;
    /// FLOAT16.
    pub const FLOAT16: i32 = 0x10010;
    /// INT32.
    pub const INT32: i32 = 0x20020;
}

/// `MILSpec.Program`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Program {
    /// Always 1.
    #[prost(int64, tag = "1")]
    pub version: i64,
    /// Functions by name.
    #[prost(btree_map = "string, message", tag = "2")]
    pub functions: BTreeMap<String, Function>,
    /// Program attributes (`buildInfo`).
    #[prost(btree_map = "string, message", tag = "4")]
    pub attributes: BTreeMap<String, Value>,
}

/// `MILSpec.Function`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    /// Parameters.
    #[prost(message, repeated, tag = "1")]
    pub inputs: Vec<NamedValueType>,
    /// Opset name (`CoreML8`).
    #[prost(string, tag = "2")]
    pub opset: String,
    /// Body per opset; we write one, keyed by `opset`.
    #[prost(btree_map = "string, message", tag = "3")]
    pub block_specializations: BTreeMap<String, Block>,
}

/// `MILSpec.Block`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Block {
    /// Block parameters (none for a function body).
    #[prost(message, repeated, tag = "1")]
    pub inputs: Vec<NamedValueType>,
    /// Names of the returned values.
    #[prost(string, repeated, tag = "2")]
    pub outputs: Vec<String>,
    /// Operations in order.
    #[prost(message, repeated, tag = "3")]
    pub operations: Vec<Operation>,
}

/// `MILSpec.Operation`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Operation {
    /// Op name (`conv`, `const`, ...).
    #[prost(string, tag = "1")]
    pub r#type: String,
    /// Operands by parameter name.
    #[prost(btree_map = "string, message", tag = "2")]
    pub inputs: BTreeMap<String, Argument>,
    /// Results.
    #[prost(message, repeated, tag = "3")]
    pub outputs: Vec<NamedValueType>,
    /// `name`, and for const ops `val` (constexpr ops: their operands).
    #[prost(btree_map = "string, message", tag = "5")]
    pub attributes: BTreeMap<String, Value>,
}

/// `MILSpec.Argument`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Argument {
    /// One binding per value (several for tuple parameters such as `concat(values)`).
    #[prost(message, repeated, tag = "1")]
    pub arguments: Vec<Binding>,
}

/// `MILSpec.Argument.Binding`: a variable name (we never bind values inline).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Binding {
    /// `name` in `oneof binding`.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
}

/// `MILSpec.NamedValueType`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NamedValueType {
    /// Variable name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its type.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<ValueType>,
}

/// `MILSpec.ValueType`: a tensor (scalars are rank 0) or a dictionary.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    /// `tensorType` in `oneof type`.
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorType>,
    /// `dictionaryType` in `oneof type`.
    #[prost(message, optional, boxed, tag = "4")]
    pub dictionary_type: Option<Box<DictionaryType>>,
}

/// `MILSpec.TensorType`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorType {
    /// `MILSpec.DataType`: see [`mil_dtype`].
    #[prost(int32, tag = "1")]
    pub data_type: i32,
    /// Number of dimensions (0 for a scalar).
    #[prost(int64, tag = "2")]
    pub rank: i64,
    /// Fixed dimensions.
    #[prost(message, repeated, tag = "3")]
    pub dimensions: Vec<Dimension>,
}

/// `MILSpec.DataType` values.
pub mod mil_dtype {
    /// BOOL.
    pub const BOOL: i32 = 1;
    /// STRING.
    pub const STRING: i32 = 2;
    /// FLOAT16.
    pub const FLOAT16: i32 = 10;
    /// FLOAT32.
    pub const FLOAT32: i32 = 11;
    /// INT8.
    pub const INT8: i32 = 21;
    /// INT32.
    pub const INT32: i32 = 23;
    /// UINT8.
    pub const UINT8: i32 = 31;
    /// UINT64.
    pub const UINT64: i32 = 34;
}

/// `MILSpec.Dimension` (only constant sizes).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dimension {
    /// `constant` in `oneof dimension`.
    #[prost(message, optional, tag = "1")]
    pub constant: Option<ConstantDimension>,
}

/// `MILSpec.Dimension.ConstantDimension`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConstantDimension {
    /// The size.
    #[prost(uint64, tag = "1")]
    pub size: u64,
}

/// `MILSpec.DictionaryType`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DictionaryType {
    /// Key type.
    #[prost(message, optional, tag = "1")]
    pub key_type: Option<ValueType>,
    /// Value type.
    #[prost(message, optional, tag = "2")]
    pub value_type: Option<ValueType>,
}

/// `MILSpec.Value`: a typed immediate value or a reference into a weight file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    /// The value's type.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<ValueType>,
    /// `immediateValue` in `oneof value`.
    #[prost(message, optional, tag = "3")]
    pub immediate_value: Option<ImmediateValue>,
    /// `blobFileValue` in `oneof value`.
    #[prost(message, optional, tag = "5")]
    pub blob_file_value: Option<BlobFileValue>,
}

/// `MILSpec.Value.ImmediateValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImmediateValue {
    /// `tensor` in `oneof value`.
    #[prost(message, optional, tag = "1")]
    pub tensor: Option<TensorValue>,
    /// `dictionary` in `oneof value`.
    #[prost(message, optional, tag = "4")]
    pub dictionary: Option<DictionaryValue>,
}

/// `MILSpec.Value.BlobFileValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlobFileValue {
    /// `@model_path/weights/weight.bin`.
    #[prost(string, tag = "1")]
    pub file_name: String,
    /// Offset of the blob's metadata record.
    #[prost(uint64, tag = "2")]
    pub offset: u64,
}

/// `MILSpec.DictionaryValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DictionaryValue {
    /// Entries in order.
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<KeyValuePair>,
}

/// `MILSpec.DictionaryValue.KeyValuePair`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValuePair {
    /// Key.
    #[prost(message, optional, tag = "1")]
    pub key: Option<Value>,
    /// Value.
    #[prost(message, optional, tag = "2")]
    pub value: Option<Value>,
}

/// `MILSpec.TensorValue`: exactly one of the fields is set.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorValue {
    /// fp32 values.
    #[prost(message, optional, tag = "1")]
    pub floats: Option<RepeatedFloats>,
    /// int32 values.
    #[prost(message, optional, tag = "2")]
    pub ints: Option<RepeatedInts>,
    /// bool values.
    #[prost(message, optional, tag = "3")]
    pub bools: Option<RepeatedBools>,
    /// strings.
    #[prost(message, optional, tag = "4")]
    pub strings: Option<RepeatedStrings>,
    /// 64-bit integers.
    #[prost(message, optional, tag = "5")]
    pub long_ints: Option<RepeatedLongInts>,
    /// Raw little-endian bytes (fp16, int8, uint8).
    #[prost(message, optional, tag = "7")]
    pub bytes: Option<RepeatedBytes>,
}

/// `TensorValue.RepeatedFloats`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RepeatedFloats {
    /// Values.
    #[prost(float, repeated, tag = "1")]
    pub values: Vec<f32>,
}

/// `TensorValue.RepeatedInts`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RepeatedInts {
    /// Values.
    #[prost(int32, repeated, tag = "1")]
    pub values: Vec<i32>,
}

/// `TensorValue.RepeatedBools`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RepeatedBools {
    /// Values.
    #[prost(bool, repeated, tag = "1")]
    pub values: Vec<bool>,
}

/// `TensorValue.RepeatedStrings`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RepeatedStrings {
    /// Values.
    #[prost(string, repeated, tag = "1")]
    pub values: Vec<String>,
}

/// `TensorValue.RepeatedLongInts`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RepeatedLongInts {
    /// Values.
    #[prost(int64, repeated, tag = "1")]
    pub values: Vec<i64>,
}

/// `TensorValue.RepeatedBytes`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RepeatedBytes {
    /// All values as one byte string.
    #[prost(bytes = "vec", tag = "1")]
    pub values: Vec<u8>,
}
