//! Core ML packages from our IR: deterministic bytes, clear errors, and coremltools 9.0
//! (package loader + milproto loader with type inference) agreeing with every type we declare.

mod support;

use std::path::{Path, PathBuf};

use ane_mil::builder::FunctionBuilder;
use ane_mil::coreml::{self, proto, PackageError};
use ane_mil::ir::{Arg, Literal, Program};
use ane_mil::{BlobWriter, DType, ValueType, WeightFiles};
use ane_testutil::coremltools::{self, InferredPackage};
use half::f16;
use prost::Message;
use support::var;

/// The weight file `support::conv_and_matmul_program` refers to (fp16 W at 64, int8 Wq at 6272).
fn conv_and_matmul_weights() -> WeightFiles {
    let mut w = BlobWriter::new();
    let conv: Vec<f16> = (0..48 * 64)
        .map(|i| f16::from_f32(((i * 29) % 97) as f32 / 64.0 - 0.75))
        .collect();
    assert_eq!(w.add_fp16(&conv), 64);
    let q: Vec<i8> = (0..64 * 40).map(|i| ((i * 37) % 255) as u8 as i8).collect();
    assert_eq!(w.add_int8(&q), 6272);
    let mut files = WeightFiles::new();
    files
        .insert("@model_path/weights/weight.bin", w.finish())
        .unwrap();
    files
}

/// Layout ops with inline literal arguments (hoisted into `const` ops in the package).
fn layout_program() -> Program {
    let mut f = FunctionBuilder::new("main", "ios18");
    let x = f.input("x", ValueType::tensor(DType::Fp16, [1, 64, 1, 32]));
    let lit = |l: Literal| Arg::Literal(l);
    let r = f
        .op(
            "r",
            "reshape",
            &[
                ("shape", lit(Literal::int32s(&[1, 64, 32]))),
                ("x", var(&x)),
            ],
        )
        .unwrap();
    let t = f
        .op(
            "t",
            "transpose",
            &[("perm", lit(Literal::int32s(&[0, 2, 1]))), ("x", var(&r))],
        )
        .unwrap();
    let a = f
        .op(
            "a",
            "slice_by_size",
            &[
                ("begin", lit(Literal::int32s(&[0, 0, 0]))),
                ("size", lit(Literal::int32s(&[1, 16, 64]))),
                ("x", var(&t)),
            ],
        )
        .unwrap();
    let b = f
        .op(
            "b",
            "slice_by_index",
            &[
                ("begin", lit(Literal::int32s(&[0, 16, 0]))),
                ("end", lit(Literal::int32s(&[1, 32, 64]))),
                ("x", var(&t)),
            ],
        )
        .unwrap();
    let c = f
        .op(
            "c",
            "concat",
            &[
                ("axis", lit(Literal::int32(2))),
                ("values", Arg::Tuple(vec![a.clone(), b.clone()])),
            ],
        )
        .unwrap();
    let y = f
        .op(
            "y",
            "cast",
            &[("dtype", lit(Literal::string("fp32"))), ("x", var(&c))],
        )
        .unwrap();
    f.output(&y).unwrap();
    let mut p = Program::new();
    p.functions.push(f.finish());
    p
}

fn seed_program() -> (Program, WeightFiles) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed-matmul");
    let text = std::fs::read_to_string(dir.join("model.mil")).unwrap();
    let program = ane_mil::parse(&text).unwrap();
    let mut w = WeightFiles::new();
    w.insert(
        "@model_path/weights/weight.bin",
        std::fs::read(dir.join("weights/weight.bin")).unwrap(),
    )
    .unwrap();
    (program, w)
}

#[test]
fn package_bytes_are_deterministic_and_decode_back() {
    let p = support::conv_and_matmul_program();
    let w = conv_and_matmul_weights();
    let a = coreml::package(&p, Some("main"), &w).unwrap();
    let b = coreml::package(&p, Some("main"), &w).unwrap();
    assert_eq!(a, b);
    let names: Vec<_> = a
        .files
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "Manifest.json",
            "Data/com.apple.CoreML/model.mlmodel",
            "Data/com.apple.CoreML/weights/weight.bin"
        ]
    );
    let model = proto::Model::decode(a.model_bytes()).unwrap();
    assert_eq!(model, coreml::model_proto(&p, Some("main")).unwrap());
    assert_eq!(model.specification_version, 9);
    let program = model.ml_program.unwrap();
    let main = &program.functions["main"];
    assert_eq!(main.opset, "CoreML8");
    let ops: Vec<&str> = main.block_specializations["CoreML8"]
        .operations
        .iter()
        .map(|o| o.r#type.as_str())
        .collect();
    assert_eq!(
        ops,
        ["const", "const", "const", "const", "const", "const", "conv"]
    );
    // a function of another name is stored as `main`, the only name Core ML looks up in a
    // model that is not multifunction; its own name stays in the description
    let mm = coreml::model_proto(&p, Some("mm")).unwrap();
    let functions: Vec<&String> = mm.ml_program.as_ref().unwrap().functions.keys().collect();
    assert_eq!(functions, ["main"]);
    assert!(mm
        .description
        .unwrap()
        .metadata
        .unwrap()
        .short_description
        .contains("`mm`"));
    // another program gives other identifiers in the manifest
    let other = coreml::package(&layout_program(), None, &WeightFiles::new()).unwrap();
    assert_ne!(a.files[0].1, other.files[0].1);
}

#[test]
fn unpackageable_programs_are_clear_errors() {
    let p = support::conv_and_matmul_program();
    let w = conv_and_matmul_weights();
    let err = |r: Result<coreml::Package, PackageError>| r.unwrap_err().to_string();
    assert!(err(coreml::package(&p, None, &w)).contains("2 functions"));
    assert!(err(coreml::package(&p, Some("nope"), &w)).contains("no function `nope`"));
    assert!(err(coreml::package(&p, Some("main"), &WeightFiles::new())).contains("weight"));

    let mut old = layout_program();
    old.functions[0].opset = "ios13".into();
    assert!(err(coreml::package(&old, None, &WeightFiles::new())).contains("ios13"));

    let mut f = FunctionBuilder::new("main", "ios18");
    let x = f.input("x", ValueType::tensor(DType::Int8, [4]));
    f.output(&x).unwrap();
    let mut int8_io = Program::new();
    int8_io.functions.push(f.finish());
    assert!(
        err(coreml::package(&int8_io, None, &WeightFiles::new())).contains("fp16, fp32 or int32")
    );
}

/// Packages each program, has coremltools load them all, and compares every type.
fn cross_check(cases: &[(&str, Program, Option<&str>, WeightFiles)]) {
    let Some(py) = coremltools::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut paths: Vec<PathBuf> = Vec::new();
    for (name, program, function, weights) in cases {
        let path = dir.path().join(format!("{name}.mlpackage"));
        coreml::package(program, *function, weights)
            .unwrap()
            .write_to(&path)
            .unwrap();
        paths.push(path);
    }
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let inferred = coremltools::check_packages(&py, &refs).unwrap_or_else(|e| panic!("{e}"));
    for ((name, program, function, weights), got) in cases.iter().zip(&inferred) {
        compare(name, program, *function, weights, got);
    }
}

fn compare(
    name: &str,
    p: &Program,
    function: Option<&str>,
    w: &WeightFiles,
    got: &InferredPackage,
) {
    let f = match function {
        Some(n) => p.function(n).unwrap(),
        None => &p.functions[0],
    };
    assert_eq!(got.functions.len(), 1, "{name}");
    let (fname, ops) = &got.functions[0];
    assert_eq!(
        fname, "main",
        "{name}: packages name their one function `main`"
    );
    for s in &f.body {
        let op = ops
            .iter()
            .find(|o| o.name == s.name)
            .unwrap_or_else(|| panic!("{name}: coremltools has no `{}`", s.name));
        assert_eq!(op.op, s.op, "{name}: {}", s.name);
        assert_eq!(op.dtype, s.ty.dtype().as_str(), "{name}: {}", s.name);
        assert_eq!(op.shape, s.ty.shape(), "{name}: {}", s.name);
        if let Some(ane_mil::ir::Literal::Blob(b)) = s
            .attributes
            .iter()
            .find(|(k, _)| k == "val")
            .map(|(_, v)| v)
        {
            let data = w.resolve(b).unwrap();
            let ours: Vec<f64> = match b.dtype {
                DType::Fp16 => data.to_f16().iter().map(|v| v.to_f64()).collect(),
                DType::Fp32 => data.to_f32().iter().map(|&v| v as f64).collect(),
                DType::Int8 => data.bytes.iter().map(|&v| v as i8 as f64).collect(),
                _ => data.bytes.iter().map(|&v| v as f64).collect(),
            };
            let sum: f64 = ours.iter().sum();
            let (theirs, count) = op.checksum.expect("a checksum for a weight constant");
            assert_eq!(count, ours.len(), "{name}: {}", s.name);
            assert!(
                (sum - theirs).abs() <= 1e-6 * (1.0 + sum.abs()),
                "{name}: {sum} vs {theirs}"
            );
        }
    }
}

#[test]
fn coremltools_accepts_our_packages_and_infers_our_types() {
    let (seed, seed_w) = seed_program();
    let cm = support::conv_and_matmul_program();
    let w = conv_and_matmul_weights();
    cross_check(&[
        ("seed", seed, None, seed_w),
        ("conv", cm.clone(), Some("main"), w.clone()),
        ("int8_matmul", cm, Some("mm"), w),
        ("layout", layout_program(), None, WeightFiles::new()),
    ]);
}

/// A wrong declared type must be caught by coremltools, or the cross-check proves nothing.
#[test]
fn coremltools_rejects_a_wrong_declared_shape() {
    let Some(py) = coremltools::python() else {
        return;
    };
    let mut p = layout_program();
    // declare the transpose's result with the input's (untransposed) shape
    let t = p.functions[0]
        .body
        .iter_mut()
        .find(|s| s.name == "t")
        .unwrap();
    t.ty = ValueType::tensor(DType::Fp16, [1, 64, 32]);
    let model = coreml::model_proto(&p, None);
    // our own checker refuses it first
    assert!(model.is_err());
    // and coremltools refuses the proto written without our check
    let dir = tempfile::tempdir().unwrap();
    let pkg_dir = dir.path().join("bad.mlpackage");
    let good = coreml::package(&layout_program(), None, &WeightFiles::new()).unwrap();
    good.write_to(&pkg_dir).unwrap();
    let mut bad = proto::Model::decode(good.model_bytes()).unwrap();
    let block = bad
        .ml_program
        .as_mut()
        .unwrap()
        .functions
        .get_mut("main")
        .unwrap()
        .block_specializations
        .get_mut("CoreML8")
        .unwrap();
    let t_op = block
        .operations
        .iter_mut()
        .find(|o| o.outputs[0].name == "t")
        .unwrap();
    let dims = &mut t_op.outputs[0]
        .r#type
        .as_mut()
        .unwrap()
        .tensor_type
        .as_mut()
        .unwrap()
        .dimensions;
    dims.swap(1, 2);
    std::fs::write(
        pkg_dir.join("Data/com.apple.CoreML/model.mlmodel"),
        bad.encode_to_vec(),
    )
    .unwrap();
    let err = coremltools::check_packages(&py, &[&pkg_dir]).unwrap_err();
    assert!(err.contains("Mismatch"), "{err}");
}
