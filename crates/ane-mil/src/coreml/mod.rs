//! Core ML model packages (`.mlpackage`) from the same IR that prints MIL text.
//!
//! The public Core ML path takes an ML Program protobuf plus weight files; the private
//! `_ANEInMemoryModel` path takes the MIL text. Both are written from one [`Program`], so
//! a program checked here runs the same through either path.
//!
//! The conversion follows coremltools' own layout: every constant is a `const` op with
//! `name` and `val` attributes, compute ops bind operands by variable name and carry only a
//! `name` attribute, inline literals in the MIL text are hoisted into `const` ops.

pub mod proto;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::f16;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::blob::WeightFiles;
use crate::ir::{Arg, Function, Literal, Program, Statement, TensorData};
use crate::types::{DType, ValueType};

/// Where MIL programs refer to their weight files; the package stores them under
/// `Data/com.apple.CoreML/weights/`.
pub const WEIGHTS_PREFIX: &str = "@model_path/weights/";

/// Why a program cannot become a Core ML package.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The program does not type-check.
    #[error("the program does not check: {0}")]
    Check(#[from] crate::check::CheckError),
    /// No function of that name.
    #[error("no function `{0}` in the program")]
    NoFunction(String),
    /// Several functions and none chosen.
    #[error("the program has {0} functions; choose one (packages hold one function)")]
    AmbiguousFunction(usize),
    /// An opset tag with no known Core ML specification version.
    #[error("opset `{0}` has no known Core ML specification version (ios16, ios17, ios18)")]
    UnknownOpset(String),
    /// A model input or output of a type Core ML multi-arrays cannot carry.
    #[error(
        "`{name}` has type {ty}; Core ML inputs and outputs must be fp16, fp32 or int32 tensors"
    )]
    FeatureType {
        /// The parameter or output.
        name: String,
        /// Its type.
        ty: ValueType,
    },
    /// Something the proto form cannot say.
    #[error("statement `{statement}`: {why}")]
    Unsupported {
        /// The statement's result name.
        statement: String,
        /// What is wrong.
        why: String,
    },
    /// A BLOBFILE path outside `@model_path/weights/`, or a file the weights do not hold.
    #[error("weight file `{0}`: {1}")]
    Weights(String, String),
}

/// The Core ML specification version and the opset name for a MIL opset tag.
pub fn spec_version(opset: &str) -> Result<(i32, &'static str), PackageError> {
    match opset {
        "ios16" => Ok((7, "CoreML6")),
        "ios17" => Ok((8, "CoreML7")),
        "ios18" => Ok((9, "CoreML8")),
        other => Err(PackageError::UnknownOpset(other.to_string())),
    }
}

/// The ML Program protobuf for one function of `program` (the only one if `function` is None).
pub fn model_proto(
    program: &Program,
    function: Option<&str>,
) -> Result<proto::Model, PackageError> {
    crate::check::check_program(program, None)?;
    checked_model_proto(program, function)
}

/// [`model_proto`] for a program already checked.
fn checked_model_proto(
    program: &Program,
    function: Option<&str>,
) -> Result<proto::Model, PackageError> {
    let f = pick_function(program, function)?;
    let (spec, opset) = spec_version(&f.opset)?;

    let mut types: BTreeMap<&str, &ValueType> = BTreeMap::new();
    let mut inputs = Vec::new();
    let mut input_features = Vec::new();
    for p in &f.params {
        types.insert(&p.name, &p.ty);
        inputs.push(named(&p.name, &p.ty));
        input_features.push(feature(&p.name, &p.ty)?);
    }
    let mut operations = Vec::new();
    for s in &f.body {
        types.insert(&s.name, &s.ty);
        operations.extend(operations_for(s)?);
    }
    let output_features = f
        .outputs
        .iter()
        .map(|o| feature(o, types[o.as_str()]))
        .collect::<Result<Vec<_>, _>>()?;

    let block = proto::Block {
        inputs: Vec::new(),
        outputs: f.outputs.clone(),
        operations,
    };
    let function = proto::Function {
        inputs,
        opset: opset.to_string(),
        block_specializations: BTreeMap::from([(opset.to_string(), block)]),
    };
    let attributes = program
        .attributes
        .iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                value(v).map_err(|why| program_attr_error(k, why))?,
            ))
        })
        .collect::<Result<BTreeMap<_, _>, PackageError>>()?;
    Ok(proto::Model {
        specification_version: spec,
        description: Some(proto::ModelDescription {
            input: input_features,
            output: output_features,
            metadata: Some(proto::Metadata {
                short_description: format!("ggml-ane kernel `{}`", f.name),
                author: "ggml-ane".to_string(),
                user_defined: BTreeMap::from([(
                    "com.github.ggml-ane.mil-version".to_string(),
                    program.version.clone(),
                )]),
            }),
        }),
        ml_program: Some(proto::Program {
            version: 1,
            // a model that is not multifunction must call its function `main` (coremltools
            // `models/model.py` and `mlmodel/src/Utils.cpp` look it up by that name); the
            // original name stays in the description
            functions: BTreeMap::from([("main".to_string(), function)]),
            attributes,
        }),
    })
}

fn program_attr_error(key: &str, why: String) -> PackageError {
    PackageError::Unsupported {
        statement: format!("program attribute {key}"),
        why,
    }
}

fn pick_function<'p>(
    program: &'p Program,
    name: Option<&str>,
) -> Result<&'p Function, PackageError> {
    match name {
        Some(n) => program
            .function(n)
            .ok_or_else(|| PackageError::NoFunction(n.to_string())),
        None if program.functions.len() == 1 => Ok(&program.functions[0]),
        None => Err(PackageError::AmbiguousFunction(program.functions.len())),
    }
}

/// The proto operations for one statement: hoisted `const`s for inline literals, then the op.
fn operations_for(s: &Statement) -> Result<Vec<proto::Operation>, PackageError> {
    let unsupported = |why: String| PackageError::Unsupported {
        statement: s.name.clone(),
        why,
    };
    let is_const = s.op == "const" || s.op.starts_with("constexpr_");
    let mut ops = Vec::new();
    let mut inputs = BTreeMap::new();
    for (key, arg) in &s.args {
        let names = match arg {
            Arg::Var(v) => vec![v.clone()],
            Arg::Tuple(vs) => vs.clone(),
            Arg::Literal(l) => {
                let ty = l
                    .value_type()
                    .ok_or_else(|| unsupported(format!("argument `{key}` is not a value")))?;
                let hoisted = format!("{}_{key}", s.name);
                ops.push(const_op(&hoisted, &ty, l).map_err(unsupported)?);
                vec![hoisted]
            }
        };
        let arguments = names
            .into_iter()
            .map(|n| proto::Binding { name: Some(n) })
            .collect();
        inputs.insert(key.clone(), proto::Argument { arguments });
    }
    let mut attributes = BTreeMap::new();
    for (key, lit) in &s.attributes {
        if !is_const && key != "name" {
            return Err(unsupported(format!(
                "attribute `{key}` on `{}`: Core ML compute ops carry only `name`",
                s.op
            )));
        }
        attributes.insert(key.clone(), value(lit).map_err(unsupported)?);
    }
    attributes
        .entry("name".to_string())
        .or_insert_with(|| string_value(&s.name));
    ops.push(proto::Operation {
        r#type: s.op.clone(),
        inputs,
        outputs: vec![named(&s.name, &s.ty)],
        attributes,
    });
    Ok(ops)
}

fn const_op(name: &str, ty: &ValueType, val: &Literal) -> Result<proto::Operation, String> {
    Ok(proto::Operation {
        r#type: "const".to_string(),
        inputs: BTreeMap::new(),
        outputs: vec![named(name, ty)],
        attributes: BTreeMap::from([
            ("name".to_string(), string_value(name)),
            ("val".to_string(), value(val)?),
        ]),
    })
}

fn named(name: &str, ty: &ValueType) -> proto::NamedValueType {
    proto::NamedValueType {
        name: name.to_string(),
        r#type: Some(value_type(ty)),
    }
}

fn mil_dtype(d: DType) -> i32 {
    use proto::mil_dtype::*;
    match d {
        DType::Fp16 => FLOAT16,
        DType::Fp32 => FLOAT32,
        DType::Int8 => INT8,
        DType::UInt8 => UINT8,
        DType::Int32 => INT32,
        DType::Bool => BOOL,
        DType::UInt64 => UINT64,
        DType::String => STRING,
    }
}

fn value_type(ty: &ValueType) -> proto::ValueType {
    let shape = ty.shape();
    proto::ValueType {
        tensor_type: Some(proto::TensorType {
            data_type: mil_dtype(ty.dtype()),
            rank: shape.len() as i64,
            dimensions: shape
                .iter()
                .map(|&d| proto::Dimension {
                    constant: Some(proto::ConstantDimension { size: d as u64 }),
                })
                .collect(),
        }),
        dictionary_type: None,
    }
}

fn feature(name: &str, ty: &ValueType) -> Result<proto::FeatureDescription, PackageError> {
    let data_type = match (ty, ty.dtype()) {
        (ValueType::Tensor { .. }, DType::Fp16) => proto::array_dtype::FLOAT16,
        (ValueType::Tensor { .. }, DType::Fp32) => proto::array_dtype::FLOAT32,
        (ValueType::Tensor { .. }, DType::Int32) => proto::array_dtype::INT32,
        _ => {
            return Err(PackageError::FeatureType {
                name: name.to_string(),
                ty: ty.clone(),
            })
        }
    };
    Ok(proto::FeatureDescription {
        name: name.to_string(),
        r#type: Some(proto::FeatureType {
            multi_array_type: Some(proto::ArrayFeatureType {
                shape: ty.shape().iter().map(|&d| d as i64).collect(),
                data_type,
            }),
        }),
    })
}

fn string_value(s: &str) -> proto::Value {
    proto::Value {
        r#type: Some(value_type(&ValueType::Scalar(DType::String))),
        immediate_value: Some(proto::ImmediateValue {
            tensor: Some(proto::TensorValue {
                strings: Some(proto::RepeatedStrings {
                    values: vec![s.to_string()],
                }),
                ..Default::default()
            }),
            dictionary: None,
        }),
        blob_file_value: None,
    }
}

/// A literal as a proto value: immediate tensors the way coremltools stores them (fp16 and
/// 8-bit types as raw bytes), BLOBFILE as a file reference, string dicts as dictionaries.
fn value(lit: &Literal) -> Result<proto::Value, String> {
    match lit {
        Literal::String(s) => Ok(string_value(s)),
        Literal::Blob(b) => Ok(proto::Value {
            r#type: Some(value_type(&ValueType::tensor(b.dtype, b.shape.clone()))),
            immediate_value: None,
            blob_file_value: Some(proto::BlobFileValue {
                file_name: b.path.clone(),
                offset: b.offset,
            }),
        }),
        Literal::Tensor(t) => {
            let mut tv = proto::TensorValue::default();
            match &t.data {
                TensorData::Fp16(v) => {
                    let bytes = v.iter().flat_map(|x: &f16| x.to_le_bytes()).collect();
                    tv.bytes = Some(proto::RepeatedBytes { values: bytes });
                }
                TensorData::Fp32(v) => {
                    tv.floats = Some(proto::RepeatedFloats { values: v.clone() })
                }
                TensorData::Int8(v) => {
                    let bytes = v.iter().map(|&x| x as u8).collect();
                    tv.bytes = Some(proto::RepeatedBytes { values: bytes });
                }
                TensorData::UInt8(v) => tv.bytes = Some(proto::RepeatedBytes { values: v.clone() }),
                TensorData::Int32(v) => tv.ints = Some(proto::RepeatedInts { values: v.clone() }),
                TensorData::Bool(v) => tv.bools = Some(proto::RepeatedBools { values: v.clone() }),
                TensorData::UInt64(v) => {
                    let values = v
                        .iter()
                        .map(|&x| i64::try_from(x).map_err(|_| format!("uint64 {x} out of range")))
                        .collect::<Result<_, _>>()?;
                    tv.long_ints = Some(proto::RepeatedLongInts { values });
                }
            }
            Ok(proto::Value {
                r#type: Some(value_type(&t.value_type())),
                immediate_value: Some(proto::ImmediateValue {
                    tensor: Some(tv),
                    dictionary: None,
                }),
                blob_file_value: None,
            })
        }
        Literal::Dict(entries) => {
            let string_ty = value_type(&ValueType::Scalar(DType::String));
            Ok(proto::Value {
                r#type: Some(proto::ValueType {
                    tensor_type: None,
                    dictionary_type: Some(Box::new(proto::DictionaryType {
                        key_type: Some(string_ty.clone()),
                        value_type: Some(string_ty),
                    })),
                }),
                immediate_value: Some(proto::ImmediateValue {
                    tensor: None,
                    dictionary: Some(proto::DictionaryValue {
                        values: entries
                            .iter()
                            .map(|(k, v)| proto::KeyValuePair {
                                key: Some(string_value(k)),
                                value: Some(string_value(v)),
                            })
                            .collect(),
                    }),
                }),
                blob_file_value: None,
            })
        }
    }
}

/// A Core ML model package in memory: relative paths and their bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Package {
    /// Files under the `.mlpackage` folder, `Manifest.json` first.
    pub files: Vec<(PathBuf, Vec<u8>)>,
}

/// The package for one function of `program`, with the weight files its BLOBFILE constants
/// name. The bytes are a pure function of the inputs (the manifest's identifiers are derived
/// from the model's hash), so packages can be cached by content.
pub fn package(
    program: &Program,
    function: Option<&str>,
    weights: &WeightFiles,
) -> Result<Package, PackageError> {
    crate::check::check_program(program, Some(weights))?;
    let model = checked_model_proto(program, function)?.encode_to_vec();
    let mut files = Vec::new();
    let mut stored = std::collections::BTreeSet::new();
    for b in program.blob_refs() {
        let file = b
            .path
            .strip_prefix(WEIGHTS_PREFIX)
            .filter(|f| !f.is_empty() && !f.contains('/'));
        let file = file.ok_or_else(|| {
            PackageError::Weights(
                b.path.clone(),
                format!("must be a file directly under {WEIGHTS_PREFIX}"),
            )
        })?;
        if stored.insert(file) {
            // the check above resolved every BLOBFILE against `weights`
            let bytes = weights
                .file(&b.path)
                .expect("checked above")
                .bytes()
                .to_vec();
            files.push((Path::new(DATA_DIR).join("weights").join(file), bytes));
        }
    }
    let digest = Sha256::digest(&model);
    files.insert(
        0,
        (
            PathBuf::from("Manifest.json"),
            manifest(&digest).into_bytes(),
        ),
    );
    files.insert(1, (Path::new(DATA_DIR).join("model.mlmodel"), model));
    Ok(Package { files })
}

const DATA_DIR: &str = "Data/com.apple.CoreML";

impl Package {
    /// Writes the package into `dir` (created if missing; files there are replaced).
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir.join(DATA_DIR).join("weights"))?;
        for (path, bytes) in &self.files {
            std::fs::write(dir.join(path), bytes)?;
        }
        Ok(())
    }

    /// The encoded `model.mlmodel`.
    pub fn model_bytes(&self) -> &[u8] {
        &self.files[1].1
    }
}

/// `Manifest.json` with two items (model, weights); identifiers from the model's hash.
fn manifest(digest: &[u8]) -> String {
    let uuid = |salt: u8| {
        let h = Sha256::new()
            .chain_update([salt])
            .chain_update(digest)
            .finalize();
        let hex: String = h[..16].iter().map(|b| format!("{b:02X}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    };
    let (model_id, weights_id) = (uuid(0), uuid(1));
    format!(
        r#"{{
    "fileFormatVersion": "1.0.0",
    "itemInfoEntries": {{
        "{model_id}": {{
            "author": "com.apple.CoreML",
            "description": "CoreML Model Specification",
            "name": "model.mlmodel",
            "path": "com.apple.CoreML/model.mlmodel"
        }},
        "{weights_id}": {{
            "author": "com.apple.CoreML",
            "description": "CoreML Model Weights",
            "name": "weights",
            "path": "com.apple.CoreML/weights"
        }}
    }},
    "rootModelIdentifier": "{model_id}"
}}
"#
    )
}
