//! Each op of the reference engine against a direct computation in the test, with the ANE
//! rulebook off: these are op semantics, in forms the ANE is not shown to run.

mod support;

use ane_mil::builder::FunctionBuilder;
use ane_mil::ir::{Arg, Literal};
use ane_mil::{DType, ValueType, WeightFiles};
use ane_runtime::Engine;
use support::*;

fn fp16_tensor(shape: &[usize]) -> ValueType {
    ValueType::tensor(DType::Fp16, shape.to_vec())
}

/// Naive f64 2-D convolution over NCHW.
#[allow(
    clippy::too_many_arguments,
    reason = "one convolution case, spelled out"
)]
fn naive_conv(
    x: &[f32],
    xs: [usize; 4],
    w: &[f32],
    ws: [usize; 4],
    bias: &[f32],
    stride: [usize; 2],
    dil: [usize; 2],
    pad: [usize; 4],
    groups: usize,
) -> (Vec<f64>, [usize; 4]) {
    let [n, cin, h, wd] = xs;
    let [cout, cin_g, kh, kw] = ws;
    let ho = (h + pad[0] + pad[1] - dil[0] * (kh - 1) - 1) / stride[0] + 1;
    let wo = (wd + pad[2] + pad[3] - dil[1] * (kw - 1) - 1) / stride[1] + 1;
    let cout_g = cout / groups;
    let mut out = vec![0f64; n * cout * ho * wo];
    for b in 0..n {
        for co in 0..cout {
            let g = co / cout_g;
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = bias.get(co).copied().unwrap_or(0.0) as f64;
                    for ci in 0..cin_g {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * stride[0] + ky * dil[0]) as isize - pad[0] as isize;
                                let ix = (ox * stride[1] + kx * dil[1]) as isize - pad[2] as isize;
                                if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= wd {
                                    continue;
                                }
                                let xi = ((b * cin + g * cin_g + ci) * h + iy as usize) * wd
                                    + ix as usize;
                                let wi = ((co * cin_g + ci) * kh + ky) * kw + kx;
                                acc += x[xi] as f64 * w[wi] as f64;
                            }
                        }
                    }
                    out[((b * cout + co) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    (out, [n, cout, ho, wo])
}

fn strided_dilated_padded_grouped_conv_with_bias(engine: &dyn Engine) {
    let mut rng = Rng::new(10);
    let (xs, ws) = ([2, 6, 9, 11], [4, 3, 3, 2]);
    let x = rng.f16_values(xs.iter().product());
    let w = rng.f16_values(ws.iter().product());
    let bias = rng.f16_values(4);
    let mut f = FunctionBuilder::new("main", "ios18");
    let xi = f.input("x", fp16_tensor(&xs));
    let wi = f.input("w", fp16_tensor(&ws));
    let bi = f.input("b", fp16_tensor(&[4]));
    let c = |f: &mut FunctionBuilder, n: &str, l: Literal| Arg::Var(f.constant(n, l));
    let args = vec![
        ("x", var(&xi)),
        ("weight", var(&wi)),
        ("bias", var(&bi)),
        ("strides", c(&mut f, "st", Literal::int32s(&[2, 1]))),
        ("dilations", c(&mut f, "dl", Literal::int32s(&[1, 2]))),
        ("pad_type", c(&mut f, "pt", Literal::string("custom"))),
        ("pad", c(&mut f, "pd", Literal::int32s(&[1, 0, 2, 1]))),
        ("groups", c(&mut f, "gr", Literal::int32(2))),
    ];
    let y = f.op("y", "conv", &args).unwrap();
    f.output(&y).unwrap();
    let p = program_of(f);
    let out = run(engine, &p, &WeightFiles::new(), &[&x, &w, &bias]);
    let (want, shape) = naive_conv(&x, xs, &w, ws, &bias, [2, 1], [1, 2], [1, 0, 2, 1], 2);
    assert_eq!(p.functions[0].body.last().unwrap().ty.shape(), shape);
    for (i, (&g, &r)) in out[0].iter().zip(&want).enumerate() {
        assert!(
            (g as f64 - r).abs() <= 2e-3 * (1.0 + r.abs()),
            "[{i}] {g} vs {r}"
        );
    }
}

fn one_d_conv_with_same_padding(engine: &dyn Engine) {
    let mut rng = Rng::new(11);
    let x = rng.f16_values(4 * 10);
    let w = rng.f16_values(2 * 4 * 3);
    let mut f = FunctionBuilder::new("main", "ios18");
    let xi = f.input("x", fp16_tensor(&[1, 4, 10]));
    let wi = f.input("w", fp16_tensor(&[2, 4, 3]));
    let pt = f.constant("pt", Literal::string("same"));
    let y = f
        .op(
            "y",
            "conv",
            &[
                ("x", var(&xi)),
                ("weight", var(&wi)),
                ("pad_type", var(&pt)),
            ],
        )
        .unwrap();
    f.output(&y).unwrap();
    let p = program_of(f);
    assert_eq!(p.functions[0].body.last().unwrap().ty.shape(), [1, 2, 10]);
    let out = run(engine, &p, &WeightFiles::new(), &[&x, &w]);
    let (want, _) = naive_conv(
        &x,
        [1, 4, 1, 10],
        &w,
        [2, 4, 1, 3],
        &[],
        [1, 1],
        [1, 1],
        [0, 0, 1, 1],
        1,
    );
    for (&g, &r) in out[0].iter().zip(&want) {
        assert!((g as f64 - r).abs() <= 2e-3 * (1.0 + r.abs()), "{g} vs {r}");
    }
}

/// Values 0..n are exact in fp16, so data movement must reproduce them exactly.
fn transpose_slices_reshape_concat_and_cast_move_data_exactly(engine: &dyn Engine) {
    let shape = [2, 3, 4, 5];
    let n: usize = shape.iter().product();
    let x: Vec<f32> = (0..n).map(|v| v as f32).collect();
    let at = |b: usize, c: usize, h: usize, w: usize| (((b * 3 + c) * 4 + h) * 5 + w) as f32;

    let mut f = FunctionBuilder::new("main", "ios18");
    let xi = f.input("x", fp16_tensor(&shape));
    let perm = f.constant("perm", Literal::int32s(&[3, 1, 0, 2]));
    let t = f
        .op("t", "transpose", &[("perm", var(&perm)), ("x", var(&xi))])
        .unwrap(); // [5, 3, 2, 4]
    let b = f.constant("b", Literal::int32s(&[1, 0, 0, 1]));
    let s = f.constant("s", Literal::int32s(&[3, -1, 1, 2]));
    let sl = f
        .op(
            "sl",
            "slice_by_size",
            &[("begin", var(&b)), ("size", var(&s)), ("x", var(&t))],
        )
        .unwrap(); // [3, 3, 1, 2]
    let b2 = f.constant("b2", Literal::int32s(&[0, 2, 0, -1]));
    let e2 = f.constant("e2", Literal::int32s(&[0, 0, 4, 0]));
    let st2 = f.constant("st2", Literal::int32s(&[1, -1, 2, -2]));
    let bm = f.constant("bm", Literal::Tensor(bools(&[false, false, false, false])));
    let em = f.constant("em", Literal::Tensor(bools(&[true, false, false, true])));
    let sq = f.constant("sq", Literal::Tensor(bools(&[false, false, false, false])));
    let si = f
        .op(
            "si",
            "slice_by_index",
            &[
                ("begin", var(&b2)),
                ("begin_mask", var(&bm)),
                ("end", var(&e2)),
                ("end_mask", var(&em)),
                ("squeeze_mask", var(&sq)),
                ("stride", var(&st2)),
                ("x", var(&xi)),
            ],
        )
        .unwrap(); // [2, 2, 2, 3]
    let ax = f.constant("ax", Literal::int32(-1));
    let il = f.constant("il", Literal::bool(true));
    let cc = f
        .op(
            "cc",
            "concat",
            &[
                ("axis", var(&ax)),
                ("interleave", var(&il)),
                ("values", Arg::Tuple(vec![si.clone(), si.clone()])),
            ],
        )
        .unwrap();
    let shp = f.constant("shp", Literal::int32s(&[-1, 6]));
    let rs = f
        .op("rs", "reshape", &[("shape", var(&shp)), ("x", var(&cc))])
        .unwrap();
    let to32 = f.constant("to32", Literal::string("fp32"));
    let c32 = f
        .op("c32", "cast", &[("dtype", var(&to32)), ("x", var(&rs))])
        .unwrap();
    for o in [&t, &sl, &si, &c32] {
        f.output(o).unwrap();
    }
    let p = program_of(f);
    let out = run(engine, &p, &WeightFiles::new(), &[&x]);

    // transpose: t[w, c, b, h] = x[b, c, h, w]
    let mut want = Vec::new();
    for w in 0..5 {
        for c in 0..3 {
            for b in 0..2 {
                for h in 0..4 {
                    want.push(at(b, c, h, w));
                }
            }
        }
    }
    assert_eq!(out[0], want);
    // slice_by_size of t: begin [1,0,0,1], size [3, all, 1, 2]
    let mut want = Vec::new();
    for w in 1..4 {
        for c in 0..3 {
            for b in 0..1 {
                for h in 1..3 {
                    want.push(at(b, c, h, w));
                }
            }
        }
    }
    assert_eq!(out[1], want);
    // slice_by_index: b all (end mask), c 2 down to 1, h 0 and 2, w from 4 down by 2 (end mask)
    let mut want = Vec::new();
    for b in 0..2 {
        for c in [2, 1] {
            for h in [0, 2] {
                for w in [4, 2, 0] {
                    want.push(at(b, c, h, w));
                }
            }
        }
    }
    assert_eq!(out[2], want);
    // interleaved concat of si with itself on the last axis, reshaped to [-1, 6], cast to fp32
    let dup: Vec<f32> = want.iter().flat_map(|&v| [v, v]).collect();
    assert_eq!(out[3], dup);
    assert_eq!(
        p.functions[0].body.last().unwrap().ty,
        ValueType::tensor(DType::Fp32, [8, 6])
    );
}

fn bools(v: &[bool]) -> ane_mil::ir::TensorLiteral {
    ane_mil::ir::TensorLiteral {
        shape: Some(vec![v.len()]),
        data: ane_mil::ir::TensorData::Bool(v.to_vec()),
    }
}

/// fp16 storage: a product past 65504 becomes +inf, as on the ANE.
fn fp16_overflow_becomes_infinity(engine: &dyn Engine) {
    let out = run(
        engine,
        &matmul_program(&[1, 2], &[2, 1], false, false),
        &WeightFiles::new(),
        &[&[300.0, 300.0], &[200.0, 200.0]],
    );
    assert_eq!(out[0], [f32::INFINITY]);
    let out = run(
        engine,
        &matmul_program(&[1, 2], &[2, 1], false, false),
        &WeightFiles::new(),
        &[&[100.0, 100.0], &[200.0, 100.0]],
    );
    assert_eq!(out[0], [30000.0]);
}

semantics_test!(
    strided_dilated_padded_grouped_conv_with_bias,
    one_d_conv_with_same_padding,
    transpose_slices_reshape_concat_and_cast_move_data_exactly,
    fp16_overflow_becomes_infinity,
);
