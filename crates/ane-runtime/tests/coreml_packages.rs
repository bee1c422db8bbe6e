//! Every kernel program the planner produces for a 7B-shaped prefill becomes a Core ML package
//! that coremltools 9.0 loads with type inference, agreeing with the types we declare.

use std::collections::BTreeSet;
use std::path::Path;

use ane_mil::coreml;
use ane_mil::rules::{first_refusal, RuleOptions};
use ane_mil::WeightFiles;
use ane_runtime::engine::reference::ReferenceEngine;
use ane_runtime::matmul::{
    baked_matmul_program, baked_weights, kernel_shapes, matmul_program, two_input_matmul_program,
};
use ane_runtime::Engine;
use ane_testutil::coremltools;

/// The distinct weight shapes `(m, k)` of a llama layer (q, k, v, o: dim×dim; gate, up:
/// ffn×dim; down: dim×ffn) and its output head (vocab×dim), as `ane plan` counts them.
fn llama_weights(dim: usize, ffn: usize, vocab: usize) -> [(usize, usize); 4] {
    [(dim, dim), (ffn, dim), (dim, ffn), (vocab, dim)]
}

#[test]
fn every_planned_kernel_packages_and_coremltools_agrees() {
    let Some(py) = coremltools::python() else {
        return;
    };
    let max_dim = ReferenceEngine::new().limits().max_dim;
    let mut shapes = BTreeSet::new();
    for (m, k) in llama_weights(4096, 11008, 32000) {
        for n in [17, 64, 100, 128, 333, 512, 1000, 2048, 3000] {
            shapes.extend(kernel_shapes(m, k, n, max_dim));
        }
    }
    assert!(shapes.len() >= 24, "{} shapes", shapes.len());

    let dir = tempfile::tempdir().unwrap();
    let mut programs = Vec::new();
    let mut two_inputs = RuleOptions::default();
    two_inputs.allow_two_inputs = true;
    for &(m, k, n) in &shapes {
        // the single-input form (the default) and the two-input opt-in, each passing the
        // ANE rulebook (the two-input one only with its opt-in)
        let forms = [
            ("single", matmul_program(m, k, n), RuleOptions::default()),
            ("two", two_input_matmul_program(m, k, n), two_inputs),
        ];
        for (kind, program, rules) in forms {
            if let Some(v) = first_refusal(&program, &rules) {
                panic!("{kind} {m}x{k}x{n}: {v}");
            }
            let path = dir.path().join(format!("{kind}_{m}x{k}x{n}.mlpackage"));
            coreml::package(&program, None, &WeightFiles::new())
                .unwrap()
                .write_to(&path)
                .unwrap();
            programs.push((path, program));
        }
    }
    assert_eq!(programs.len(), 2 * shapes.len());
    let paths: Vec<&Path> = programs.iter().map(|(p, _)| p.as_path()).collect();
    let inferred = coremltools::check_packages(&py, &paths).unwrap_or_else(|e| panic!("{e}"));
    for ((path, program), got) in programs.iter().zip(&inferred) {
        assert_eq!(got.spec_version, 9);
        let f = &program.functions[0];
        let ops = &got.functions[0].1;
        for s in &f.body {
            let op = ops
                .iter()
                .find(|o| o.name == s.name)
                .unwrap_or_else(|| panic!("{}: no `{}`", path.display(), s.name));
            assert_eq!(
                (op.op.as_str(), op.dtype.as_str(), op.shape.as_slice()),
                (s.op.as_str(), s.ty.dtype().as_str(), s.ty.shape()),
                "{}: {}",
                path.display(),
                s.name
            );
        }
    }
    eprintln!(
        "coremltools accepted {} planner kernel packages (single- and two-input forms)",
        programs.len()
    );
}

/// Baked kernels carry their weight tile in weight.bin: coremltools must read it back through
/// the package (a wrong offset or dtype fails there). A 7B's tiles would be gigabytes, so the
/// kernels of a small llama (dim 512, ffn 1376, vocab 2048) stand in, and one 64 × 4160 tile
/// whose K is cut into three pieces inside the program (`W0`..`W2`, a file each).
#[test]
fn baked_kernels_package_with_their_weights() {
    let Some(py) = coremltools::python() else {
        return;
    };
    let mut shapes = BTreeSet::new();
    for (m, k) in llama_weights(512, 1376, 2048) {
        for n in [1, 17, 100] {
            shapes.extend(kernel_shapes(m, k, n, 16384));
        }
    }
    shapes.insert((64, 4160, 32));
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for (i, &(m, k, n)) in shapes.iter().enumerate() {
        let tile: Vec<half::f16> = (0..m * k)
            .map(|j| half::f16::from_f32(((j * 31 + i) % 17) as f32 / 16.0 - 0.5))
            .collect();
        let sum: f64 = tile.iter().map(|v| v.to_f64()).sum();
        let path = dir.path().join(format!("baked_{m}x{k}x{n}.mlpackage"));
        let program = baked_matmul_program(m, k, n);
        if let Some(v) = first_refusal(&program, &RuleOptions::default()) {
            panic!("baked {m}x{k}x{n}: {v}");
        }
        coreml::package(&program, None, &baked_weights(m, k, &tile))
            .unwrap()
            .write_to(&path)
            .unwrap();
        cases.push((path, m * k, sum));
    }
    let paths: Vec<&Path> = cases.iter().map(|(p, _, _)| p.as_path()).collect();
    let inferred = coremltools::check_packages(&py, &paths).unwrap_or_else(|e| panic!("{e}"));
    for ((path, count, sum), got) in cases.iter().zip(&inferred) {
        // the whole tile `W`, or its K pieces `W0`, `W1`, ...
        let pieces: Vec<_> = got.functions[0]
            .1
            .iter()
            .filter(|o| {
                o.name
                    .strip_prefix('W')
                    .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit()))
            })
            .map(|o| o.checksum.expect("the weight's values"))
            .collect();
        assert!(!pieces.is_empty(), "{}: no W", path.display());
        let (theirs, n) = pieces
            .iter()
            .fold((0.0, 0), |(s, c), &(ps, pc)| (s + ps, c + pc));
        assert_eq!(n, *count, "{}", path.display());
        assert!(
            (theirs - sum).abs() <= 1e-6 * (1.0 + sum.abs()),
            "{}: {theirs} vs {sum}",
            path.display()
        );
    }
    eprintln!(
        "coremltools read the weights of {} baked kernel packages",
        cases.len()
    );
}

/// The fused FFN and Q/K/V programs (with the norm, and normed elsewhere) of the tiny llama's
/// shapes, at the token buckets the runtime builds: each passes the rulebook, and coremltools loads its package — reading every weight
/// file — with the types we declare.
#[test]
fn fused_programs_package_and_coremltools_agrees() {
    use ane_runtime::fused::{
        ffn_program, fused_weights, layer_norm_projections_program, projections_program, streamed,
        with_norm_bias,
    };
    let Some(py) = coremltools::python() else {
        return;
    };
    let (c, h) = (512, 1376);
    let fill = |n: usize, seed: usize| -> Vec<half::f16> {
        (0..n)
            .map(|j| half::f16::from_f32(((j * 31 + seed) % 17) as f32 / 16.0 - 0.5))
            .collect()
    };
    let norm = fill(c, 1);
    let ffn_w = fused_weights(
        &norm,
        &[
            (1, c, fill(h * c, 2)),
            (3, c, fill(h * c, 3)),
            (2, h, fill(c * h, 4)),
        ],
    );
    let rows = [512, 256, 256];
    let qkv_w = fused_weights(
        &norm,
        &rows
            .iter()
            .enumerate()
            .map(|(i, &r)| (i, c, fill(r * c, 5 + i)))
            .collect::<Vec<_>>(),
    );
    let mut ln_w = qkv_w.clone();
    with_norm_bias(&mut ln_w, &fill(c, 9));
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    // the runtime's buckets: at least 32 (every input at least 32 wide)
    for n in [32, 64, 128] {
        for eps in [Some(1e-5), None] {
            let tag = if eps.is_some() { "norm" } else { "normed" };
            for (kind, program, weights) in [
                ("ffn", ffn_program(c, h, n, eps), &ffn_w),
                ("qkv", projections_program(c, &rows, n, eps), &qkv_w),
            ] {
                if let Some(v) = first_refusal(&program, &RuleOptions::default()) {
                    panic!("{kind} {tag} {n}: {v}");
                }
                let path = dir.path().join(format!("{kind}_{tag}_{n}.mlpackage"));
                coreml::package(&program, None, weights)
                    .unwrap()
                    .write_to(&path)
                    .unwrap();
                cases.push((path, program));
            }
        }
    }
    // projections of a LayerNorm'd input (whisper's attention)
    for n in [32, 64] {
        let program = layer_norm_projections_program(c, &rows, n, 1e-5);
        if let Some(v) = first_refusal(&program, &RuleOptions::default()) {
            panic!("qkv layer-norm {n}: {v}");
        }
        let path = dir.path().join(format!("qkv_ln_{n}.mlpackage"));
        coreml::package(&program, None, &ln_w)
            .unwrap()
            .write_to(&path)
            .unwrap();
        cases.push((path, program));
    }
    // the streamed forms (no weight files): the tiny llama's, and a 7B's FFN tile and Q/K/V
    let none = WeightFiles::new();
    for (name, program) in [
        ("ffn_streamed_64", streamed::streamed_ffn_program(c, h, 64)),
        (
            "qkv_streamed_64",
            streamed::streamed_projections_program(c, &rows, 64),
        ),
        (
            "ffn_streamed_7b",
            streamed::streamed_ffn_program(4096, 1856, 2048),
        ),
        (
            "qkv_streamed_7b",
            streamed::streamed_projections_program(4096, &[4096, 4096, 4096], 2048),
        ),
    ] {
        if let Some(v) = first_refusal(&program, &RuleOptions::default()) {
            panic!("{name}: {v}");
        }
        let path = dir.path().join(format!("{name}.mlpackage"));
        coreml::package(&program, None, &none)
            .unwrap()
            .write_to(&path)
            .unwrap();
        cases.push((path, program));
    }
    let paths: Vec<&Path> = cases.iter().map(|(p, _)| p.as_path()).collect();
    let inferred = coremltools::check_packages(&py, &paths).unwrap_or_else(|e| panic!("{e}"));
    for ((path, program), got) in cases.iter().zip(&inferred) {
        let ops = &got.functions[0].1;
        for s in &program.functions[0].body {
            let op = ops
                .iter()
                .find(|o| o.name == s.name)
                .unwrap_or_else(|| panic!("{}: no `{}`", path.display(), s.name));
            assert_eq!(
                (op.dtype.as_str(), op.shape.as_slice()),
                (s.ty.dtype().as_str(), s.ty.shape()),
                "{}: {}",
                path.display(),
                s.name
            );
        }
        // baked weights came through their own files
        if program.blob_refs().next().is_some() {
            let w1 = ops.iter().find(|o| o.name == "W1" || o.name == "W0");
            assert!(
                w1.and_then(|o| o.checksum).is_some(),
                "{}: first weight not read",
                path.display()
            );
        }
    }
    eprintln!(
        "coremltools accepted {} fused program packages",
        cases.len()
    );
}
