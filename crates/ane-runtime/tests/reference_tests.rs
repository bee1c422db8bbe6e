//! The reference engine against independent f64 references.

mod support;

use ane_mil::parse;
use ane_runtime::engine::reference::{ReferenceConfig, ReferenceEngine};
use ane_runtime::{CompileCounter, Engine, Error, Surface};
use ane_testutil::fixtures::seed_matmul_text;
use support::*;

/// The seed's exact program, with garbage (NaN bytes) in the input rows' padding and a
/// marker in the output rows' padding: results match f64, padding is neither read nor written.
fn seed_program_matches_f64_for_unaligned_widths(engine: &dyn Engine) {
    let mut rng = Rng::new(1);
    for (m, k, n) in [
        (64, 96, 40),
        (33, 37, 5),
        (100, 130, 77),
        (1, 32, 1),
        (48, 64, 32),
        (250, 33, 129),
    ] {
        let p = parse(&seed_matmul_text(m, k, n)).unwrap();
        let w = rng.f16_values(m * k);
        let x = rng.f16_values(n * k);
        let (weights, off) = fp16_weights(&w);
        assert_eq!(off, 64);
        let kernel = engine.compile(&p, &weights).unwrap();
        let proc_ = &kernel.procedures()[0];
        let (li, lo) = (proc_.inputs[0].clone(), proc_.outputs[0].clone());
        assert_eq!(
            li.row_stride,
            (k * 2).div_ceil(64) * 64,
            "input rows padded to 64 bytes"
        );
        let mut xin = Surface::new(li.clone());
        xin.as_bytes_mut().fill(0xFF); // fp16 NaN everywhere, padding included
        xin.write_f32(&x).unwrap();
        let mut y = Surface::new(lo.clone());
        y.as_bytes_mut().fill(0xAB);
        kernel.eval(0, &[&xin], &mut [&mut y]).unwrap();
        let got = y.read_f32();
        assert!(
            got.iter().all(|v| v.is_finite()),
            "padding NaNs leaked into ({m},{k},{n})"
        );
        assert_matmul_close(
            &got,
            &x,
            &transpose(&w, m, k),
            n,
            k,
            m,
            &format!("seed ({m},{k},{n})"),
        );
        let bytes = y.as_bytes();
        for r in 0..lo.rows() {
            let row = &bytes[lo.flat_row_offset(r)..][..lo.row_stride];
            assert!(
                row[2 * m..].iter().all(|&b| b == 0xAB),
                "output padding written in row {r}"
            );
        }
    }
}

fn conv_as_matmul_sweep_matches_f64(engine: &dyn Engine) {
    let mut rng = Rng::new(2);
    let shapes = [
        (1, 1, 1),
        (3, 5, 7),
        (64, 64, 64),
        (31, 33, 65),
        (4096, 3, 2),
        (2, 4096, 3),
        (5, 7, 4096),
        (257, 511, 129),
        (1000, 1001, 33),
        (2048, 2048, 64),
    ];
    for (m, k, n) in shapes {
        let w = rng.f16_values(m * k);
        let x = rng.f16_values(k * n);
        let (weights, off) = fp16_weights(&w);
        let out = run(engine, &conv_matmul_program(m, k, n, off), &weights, &[&x]);
        assert_matmul_close(&out[0], &w, &x, m, k, n, &format!("conv ({m},{k},{n})"));
    }
}

fn matmul_sweep_with_transposes_and_broadcast_matches_f64(engine: &dyn Engine) {
    let mut rng = Rng::new(3);
    for (m, k, n) in [
        (1, 1, 1),
        (17, 300, 9),
        (128, 64, 200),
        (3, 4096, 5),
        (4096, 2, 3),
    ] {
        for (tx, ty) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = rng.f16_values(m * k);
            let b = rng.f16_values(k * n);
            let a_in = if tx { transpose(&a, m, k) } else { a.clone() };
            let b_in = if ty { transpose(&b, k, n) } else { b.clone() };
            let ash = if tx { [k, m] } else { [m, k] };
            let bsh = if ty { [n, k] } else { [k, n] };
            let out = run(
                engine,
                &matmul_program(&ash, &bsh, tx, ty),
                &Default::default(),
                &[&a_in, &b_in],
            );
            assert_matmul_close(
                &out[0],
                &a,
                &b,
                m,
                k,
                n,
                &format!("matmul ({m},{k},{n}) tx={tx} ty={ty}"),
            );
        }
    }
    // batch broadcast: a [2, 1, M, K] x b [3, K, N] -> [2, 3, M, N]
    let (m, k, n) = (5, 6, 7);
    let a = rng.f16_values(2 * m * k);
    let b = rng.f16_values(3 * k * n);
    let out = run(
        engine,
        &matmul_program(&[2, 1, m, k], &[3, k, n], false, false),
        &Default::default(),
        &[&a, &b],
    );
    for i in 0..2 {
        for j in 0..3 {
            let got = &out[0][(i * 3 + j) * m * n..][..m * n];
            assert_matmul_close(
                got,
                &a[i * m * k..][..m * k],
                &b[j * k * n..][..k * n],
                m,
                k,
                n,
                "broadcast",
            );
        }
    }
}

fn int8_affine_dequantized_weights_match_f64(engine: &dyn Engine) {
    use ane_mil::builder::FunctionBuilder;
    use ane_mil::ir::{BlobRef, Literal, TensorData, TensorLiteral};
    use ane_mil::{BlobWriter, DType, ValueType, WeightFiles};
    use half::f16;

    let mut rng = Rng::new(4);
    // widths of at least 32 (rule narrow-input)
    for (m, k, n) in [(8, 16, 32), (65, 129, 33), (300, 77, 40)] {
        let q: Vec<i8> = (0..m * k)
            .map(|_| (rng.next_u64() % 256) as u8 as i8)
            .collect();
        let scales: Vec<f16> = (0..m)
            .map(|i| f16::from_f32(0.001 + i as f32 * 0.0005))
            .collect();
        let zp: Vec<i8> = (0..m).map(|i| (i % 5) as i8 - 2).collect();
        let mut bw = BlobWriter::new();
        let off = bw.add_int8(&q);
        let mut weights = WeightFiles::new();
        weights.insert(WEIGHT_PATH, bw.finish()).unwrap();

        let mut f = FunctionBuilder::new("main", "ios18");
        let x = f.input("x", ValueType::tensor(DType::Fp16, [1, k, 1, n]));
        let w = f
            .affine_dequantize(
                "W",
                BlobRef {
                    dtype: DType::Int8,
                    shape: vec![m, k, 1, 1],
                    path: WEIGHT_PATH.into(),
                    offset: off,
                },
                Literal::Tensor(TensorLiteral {
                    shape: Some(vec![m]),
                    data: TensorData::Fp16(scales.clone()),
                }),
                Literal::Tensor(TensorLiteral {
                    shape: Some(vec![m]),
                    data: TensorData::Int8(zp.clone()),
                }),
                0,
            )
            .unwrap();
        let y = f
            .op("y", "conv", &[("weight", var(&w)), ("x", var(&x))])
            .unwrap();
        f.output(&y).unwrap();
        let p = program_of(f);
        let xv = rng.f16_values(k * n);
        let out = run(engine, &p, &weights, &[&xv]);
        // the dequantized weight, as the ANE stores it: (q - zp) * scale rounded to fp16
        let wd: Vec<f32> = (0..m * k)
            .map(|i| {
                let r = i / k;
                let exact = (q[i] as i32 - zp[r] as i32) as f64 * scales[r].to_f64();
                f16::from_f64(exact).to_f32()
            })
            .collect();
        assert_matmul_close(&out[0], &wd, &xv, m, k, n, &format!("int8 ({m},{k},{n})"));
    }
}

#[test]
fn budget_is_counted_and_enforced() {
    let counter = CompileCounter::new(Some(3));
    let engine =
        ReferenceEngine::with_config(ReferenceConfig::default().with_counter(counter.clone()));
    let (w, off) = fp16_weights(&[0.5; 16]);
    let p = conv_matmul_program(4, 4, 32, off);
    for i in 0..3 {
        assert_eq!(engine.limits().compiles_left(), Some(3 - i));
        engine.compile(&p, &w).unwrap();
    }
    match engine.compile(&p, &w) {
        Err(Error::BudgetExhausted { used: 3, budget: 3 }) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a fourth compile went through a budget of 3"),
    }
    assert_eq!(counter.used(), 3);
    // a second engine sharing the counter sees the same wall
    let other = ReferenceEngine::with_config(ReferenceConfig::default().with_counter(counter));
    assert!(matches!(
        other.compile(&p, &w),
        Err(Error::BudgetExhausted { .. })
    ));
}

#[test]
fn dimensions_past_the_limit_are_refused() {
    // the limit itself, not the rulebook's rank and input rules
    let engine = unruled_engine();
    let p = matmul_program(&[16385, 2], &[2, 3], false, false);
    match engine.compile(&p, &Default::default()) {
        Err(Error::Unsupported { reason, .. }) => assert!(reason.contains("16385"), "{reason}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("compiled a 16385-wide tensor"),
    }
    let small = ReferenceEngine::with_config(
        ReferenceConfig::default()
            .with_max_dim(64)
            .with_counter(CompileCounter::new(None))
            .with_rules(None),
    );
    assert!(small
        .compile(
            &matmul_program(&[65, 2], &[2, 3], false, false),
            &Default::default()
        )
        .is_err());
    assert!(small
        .compile(
            &matmul_program(&[64, 2], &[2, 3], false, false),
            &Default::default()
        )
        .is_ok());
}

fn wrong_surfaces_are_rejected(engine: &dyn Engine) {
    let k = engine
        .compile(
            &matmul_program(&[4, 8], &[8, 2], false, false),
            &Default::default(),
        )
        .unwrap();
    let proc_ = k.procedures()[0].clone();
    let a = Surface::new(proc_.inputs[0].clone());
    let mut out = Surface::new(proc_.outputs[0].clone());
    assert!(matches!(
        k.eval(0, &[&a], &mut [&mut out]),
        Err(Error::LayoutMismatch { .. })
    ));
    let wrong = Surface::new(proc_.inputs[0].clone());
    assert!(matches!(
        k.eval(0, &[&a, &wrong], &mut [&mut out]),
        Err(Error::LayoutMismatch { .. })
    ));
    assert!(matches!(
        k.eval(3, &[], &mut []),
        Err(Error::NoProcedure(_))
    ));
}

fn weights_that_do_not_resolve_fail_to_compile(engine: &dyn Engine) {
    let (w, _) = fp16_weights(&[1.0; 12]);
    let p = conv_matmul_program(4, 4, 32, 64);
    let e = engine
        .compile(&p, &w)
        .err()
        .expect("16 weights declared, 12 stored");
    assert!(
        e.to_string()
            .contains("has 24 bytes, the declared shape needs 32"),
        "{e}"
    );
}

/// Several functions compile as one program (one budget unit) into several procedures.
#[test]
fn multi_function_programs_compile_once_into_procedures() {
    let counter = CompileCounter::new(Some(10));
    let engine = ReferenceEngine::with_config(
        ReferenceConfig::default()
            .with_counter(counter.clone())
            .with_rules(None),
    );
    let mut p = matmul_program(&[3, 4], &[4, 5], false, false);
    let mut second = matmul_program(&[2, 4], &[2, 4], false, true)
        .functions
        .remove(0);
    second.name = "other".into();
    p.functions.push(second);
    let k = engine.compile(&p, &Default::default()).unwrap();
    assert_eq!(counter.used(), 1);
    let names: Vec<&str> = k.procedures().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["main", "other"]);
    let idx = k.procedure_index("other").unwrap();
    let proc_ = &k.procedures()[idx];
    let mut a = Surface::new(proc_.inputs[0].clone());
    let mut b = Surface::new(proc_.inputs[1].clone());
    a.write_f32(&[1., 2., 3., 4., 5., 6., 7., 8.]).unwrap();
    b.write_f32(&[1., 0., 0., 0., 0., 0., 0., 1.]).unwrap(); // [2, 4], used transposed
    let mut z = Surface::new(proc_.outputs[0].clone());
    k.eval(idx, &[&a, &b], &mut [&mut z]).unwrap();
    assert_eq!(z.read_f32(), [1., 4., 5., 8.]);
}

/// What the rulebook refuses, the reference engine refuses, naming the rule, before spending
/// budget: rank-2 inputs, two inputs, `rsqrt` without `epsilon`, a 14600-wide input, a
/// `[1, 1024, 1, 1]` output. The seed's program passes.
#[test]
fn the_rulebook_refuses_forms_the_hardware_rejects() {
    let counter = CompileCounter::new(Some(10));
    let engine =
        ReferenceEngine::with_config(ReferenceConfig::default().with_counter(counter.clone()));
    let program = |params: &str, body: &str, out: &str| {
        parse(&format!(
            "program(1.3)\n{{\n    func main<ios18>({params}) {{\n{body}    }} -> ({out});\n}}\n"
        ))
        .unwrap()
    };
    let slice = |from: &str, c: usize, w: usize| {
        format!(
            "        tensor<int32, [4]> b = const()[name = string(\"b\"), val = tensor<int32, [4]>([0, 0, 0, 0])];\n\
             \x20       tensor<int32, [4]> s = const()[name = string(\"s\"), val = tensor<int32, [4]>([1, {c}, 1, {w}])];\n\
             \x20       tensor<fp16, [1, {c}, 1, {w}]> y = slice_by_size(x = {from}, begin = b, size = s)[name = string(\"y\")];\n"
        )
    };
    let cases = [
        (
            "io-rank4",
            program(
                "tensor<fp16, [64, 32]> x",
                "        tensor<int32, [2]> b = const()[name = string(\"b\"), val = tensor<int32, [2]>([0, 0])];\n\
                 \x20       tensor<int32, [2]> s = const()[name = string(\"s\"), val = tensor<int32, [2]>([32, 32])];\n\
                 \x20       tensor<fp16, [32, 32]> y = slice_by_size(x = x, begin = b, size = s)[name = string(\"y\")];\n",
                "y",
            ),
        ),
        (
            "single-input",
            program(
                "tensor<fp16, [1, 32, 1, 64]> x, tensor<fp16, [1, 32, 1, 64]> z",
                &slice("x", 32, 32),
                "y",
            ),
        ),
        (
            "epsilon-required",
            program(
                "tensor<fp16, [1, 32, 1, 64]> x",
                "        tensor<fp16, [1, 32, 1, 64]> y = rsqrt(x = x)[name = string(\"y\")];\n",
                "y",
            ),
        ),
        (
            "bad-widths",
            program("tensor<fp16, [1, 32, 1, 14600]> x", &slice("x", 32, 64), "y"),
        ),
        (
            "wide-channels-narrow-spatial",
            program("tensor<fp16, [1, 1024, 1, 32]> x", &slice("x", 1024, 1), "y"),
        ),
    ];
    for (rule, p) in &cases {
        match engine.compile(p, &Default::default()) {
            Err(Error::RuleBroken {
                rule: broken,
                violation,
            }) => {
                assert_eq!(broken, *rule, "{violation}");
                assert!(violation.contains("source:"), "{violation}");
            }
            Err(e) => panic!("{rule}: wrong error: {e}"),
            Ok(_) => panic!("{rule}: compiled"),
        }
    }
    assert_eq!(counter.used(), 0, "a refused program spends no budget");
    // the seed's program and every kernel form the runtime builds pass
    let (w, off) = fp16_weights(&vec![0.5; 96 * 80]);
    assert_eq!(off, 64);
    engine
        .compile(&parse(&seed_matmul_text(96, 80, 50)).unwrap(), &w)
        .unwrap();
    assert_eq!(counter.used(), 1);
}

/// `ANE_REQUIRE_ENGINE=apple,coreml` (as a Mac run that is to prove something sets it): the
/// named engines exist here, so no engine test passed by skipping them.
#[test]
fn the_required_engines_exist() {
    for kind in required_engines() {
        if let Err(e) = ane_runtime::create(
            ane_runtime::EngineChoice::Only(kind),
            &ane_runtime::EngineConfig::default(),
        ) {
            panic!("ANE_REQUIRE_ENGINE names the {kind} engine, which is unavailable: {e}");
        }
    }
}

engine_test!(
    seed_program_matches_f64_for_unaligned_widths,
    int8_affine_dequantized_weights_match_f64,
    weights_that_do_not_resolve_fail_to_compile,
);

// op semantics and surface checks in forms the ANE is not shown to run (several inputs,
// rank-2 operands, tensors narrower than 32 beside more than 768 channels)
semantics_test!(
    conv_as_matmul_sweep_matches_f64,
    matmul_sweep_with_transposes_and_broadcast_matches_f64,
    wrong_surfaces_are_rejected,
);
