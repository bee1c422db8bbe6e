//! The MIL programs of one matmul tile: streamed (weights in the input), two-input, and baked
//! (weights compiled in). How a job is cut into tiles is in [`tiling`](super::tiling).

use ane_mil::builder::FunctionBuilder;
use ane_mil::ir::{Arg, BlobRef, Literal, Program};
use ane_mil::{BlobWriter, DType, ValueType, WeightFiles};
use half::f16;

use super::tiling::{input_width, k_pieces};

// The kernels are in the forms public code has run on ANE hardware (docs/ane-notes.md,
// docs/hardware-validation.md): channel-first `[1, C, 1, S]` inputs and outputs, weights
// applied by a 1×1 `conv`, one input per function unless the two-input form is asked for.
// Tokens are the spatial width S, features the channels: the host transposes while staging
// (tokens become columns) and while writing back (the `[1, M, 1, S]` output's columns are
// tokens). Every program here passes the rulebook (`ane_mil::rules`).

/// `y [1, m, 1, n] = conv(x, W)` with `x [1, k, 1, n]` and a `[m, k, 1, 1]` weight: the conv
/// argument set the sources use (strides, pad, dilations 1, one group), as named constants.
fn conv_output(mut f: FunctionBuilder, x: &str, weight: &str, pad_type: &str) -> Program {
    let y = ConvArgs::new(&mut f, pad_type).conv(&mut f, "y", x, weight);
    f.output(&y).expect("y is defined");
    let mut p = Program::new();
    p.functions.push(f.finish());
    p
}

/// Columns `first..first + width` of `x [1, k, 1, _]`: `[1, k, 1, width]`.
fn columns(
    f: &mut FunctionBuilder,
    x: &str,
    name: &str,
    k: usize,
    first: usize,
    width: usize,
) -> String {
    let begin = f.constant(
        &format!("{name}_begin"),
        Literal::int32s(&[0, 0, 0, first as i32]),
    );
    let size = f.constant(
        &format!("{name}_size"),
        Literal::int32s(&[1, k as i32, 1, width as i32]),
    );
    f.op(
        name,
        "slice_by_size",
        &[
            ("begin", Arg::Var(begin)),
            ("size", Arg::Var(size)),
            ("x", Arg::Var(x.to_string())),
        ],
    )
    .expect("the tile program is well-typed")
}

/// `w [1, k, 1, m]` (column `j` of row `d`: weight row `j`, feature `d`) as the conv weight
/// `[m, k, 1, 1]`: reshape to `[1, 1, k, m]`, swap the last two axes, reshape — the sequence
/// of maderix/ane-prefill-bench `compile_dyn_conv`.
fn conv_weight(f: &mut FunctionBuilder, w: &str, m: usize, k: usize) -> String {
    let (m, k) = (m as i32, k as i32);
    let r1 = f.constant("r1", Literal::int32s(&[1, 1, k, m]));
    let w2 = f
        .op(
            "w2",
            "reshape",
            &[("shape", Arg::Var(r1)), ("x", Arg::Var(w.to_string()))],
        )
        .expect("the tile program is well-typed");
    let pm = f.constant("pm", Literal::int32s(&[0, 1, 3, 2]));
    let w3 = f
        .op(
            "w3",
            "transpose",
            &[("perm", Arg::Var(pm)), ("x", Arg::Var(w2))],
        )
        .expect("the tile program is well-typed");
    let r2 = f.constant("r2", Literal::int32s(&[m, k, 1, 1]));
    f.op(
        "W",
        "reshape",
        &[("shape", Arg::Var(r2)), ("x", Arg::Var(w3))],
    )
    .expect("the tile program is well-typed")
}

/// The streamed kernel (the default): one input `x [1, k, 1, input_width(m, n)]`, row `d`
/// holding feature `d` of every token (columns `0..n`) and then feature `d` of every weight
/// row (columns `n..n + m`); sliced apart, the weight part turned into a `[m, k, 1, 1]` conv
/// weight, one conv: `y [1, m, 1, n]`. The single-input dynamic-weight conv of
/// maderix/ane-prefill-bench `compile_dyn_conv` (ane_prefill_27b.m), op for op: one kernel per
/// tile shape serves every weight of that shape.
pub fn matmul_program(m: usize, k: usize, n: usize) -> Program {
    let mut f = FunctionBuilder::new("main", "ios18");
    let x = f.input(
        "x",
        ValueType::tensor(DType::Fp16, [1, k, 1, input_width(m, n)]),
    );
    let act = columns(&mut f, &x, "act", k, 0, n);
    let wt = columns(&mut f, &x, "wt", k, n, m);
    let w = conv_weight(&mut f, &wt, m, k);
    conv_output(f, &act, &w, "custom")
}

/// The two-input streamed kernel, an explicit opt-in (`KernelPolicy::TwoInput`): activations
/// `a [1, k, 1, n]` and weights `b [1, k, 1, m]` in separate surfaces, then the same weight
/// reshaping and conv as [`matmul_program`]. Two-input requests are reported to fail with
/// status 0x1d (maderix/ANE README) and to work with equal-size surfaces
/// (jafreck/ironmill's eval tests): the rulebook refuses it unless asked.
pub fn two_input_matmul_program(m: usize, k: usize, n: usize) -> Program {
    let mut f = FunctionBuilder::new("main", "ios18");
    let a = f.input("a", ValueType::tensor(DType::Fp16, [1, k, 1, n]));
    let b = f.input("b", ValueType::tensor(DType::Fp16, [1, k, 1, m]));
    let w = conv_weight(&mut f, &b, m, k);
    conv_output(f, &a, &w, "custom")
}

/// Where a baked kernel's weight tile lives (a tile whose K is cut: one file per piece,
/// `weight_<i>.bin`, as maderix's `test_fused_bwd.m` keeps `w1t.bin` and `w3t.bin`).
pub(crate) const BAKED_WEIGHT_PATH: &str = "@model_path/weights/weight.bin";

/// A baked kernel's weight file: the whole tile's, or K piece `i`'s.
fn baked_path(piece: Option<usize>) -> String {
    match piece {
        None => BAKED_WEIGHT_PATH.to_string(),
        Some(i) => format!("@model_path/weights/weight_{i}.bin"),
    }
}

/// The baked kernel: `x [1, k, 1, n]`, the weight tile compiled in as a `[m, k, 1, 1]` fp16
/// BLOBFILE constant, `y [1, m, 1, n] = conv(x, W)` with `pad_type = valid` — the form of
/// maderix/ANE `gen_classifier_fwd` (training/ane_classifier.h), checked there against
/// `cblas_sgemm` on hardware. One compile per (weight tile, token bucket); only the
/// activations cross per call.
///
/// Past [`BAKED_K_PIECE`](super::tiling::BAKED_K_PIECE) input channels, K is cut inside the
/// program ([`k_pieces`]): each piece `slice_by_size` of `x` along the channels, a conv against
/// its own baked weights, and the partial results added in order (maderix `test_fused_bwd.m`
/// L55-94, `stories_mil.h` L149-171).
pub fn baked_matmul_program(m: usize, k: usize, n: usize) -> Program {
    let mut f = FunctionBuilder::new("main", "ios18");
    let x = f.input("x", ValueType::tensor(DType::Fp16, [1, k, 1, n]));
    let args = ConvArgs::new(&mut f, "valid");
    let y = baked_conv(&mut f, &args, ("y", "", "W"), &x, (m, k), n, baked_path);
    f.output(&y).expect("y is defined");
    let mut p = Program::new();
    p.functions.push(f.finish());
    p
}

/// A conv's argument constants (strides, pad, dilations 1, one group), named once per
/// program as the sources write them.
pub(crate) struct ConvArgs {
    dl: String,
    gr: String,
    pd: String,
    pt: String,
    st: String,
}

impl ConvArgs {
    pub(crate) fn new(f: &mut FunctionBuilder, pad_type: &str) -> Self {
        ConvArgs {
            dl: f.constant("dl", Literal::int32s(&[1, 1])),
            gr: f.constant("gr", Literal::int32(1)),
            pd: f.constant("pd", Literal::int32s(&[0, 0, 0, 0])),
            pt: f.constant("pt", Literal::string(pad_type)),
            st: f.constant("st", Literal::int32s(&[1, 1])),
        }
    }

    /// `name = conv(x, weight)`.
    pub(crate) fn conv(
        &self,
        f: &mut FunctionBuilder,
        name: &str,
        x: &str,
        weight: &str,
    ) -> String {
        let var = |v: &str| Arg::Var(v.to_string());
        f.op(
            name,
            "conv",
            &[
                ("dilations", var(&self.dl)),
                ("groups", var(&self.gr)),
                ("pad", var(&self.pd)),
                ("pad_type", var(&self.pt)),
                ("strides", var(&self.st)),
                ("weight", var(weight)),
                ("x", var(x)),
            ],
        )
        .expect("the program is well-typed")
    }
}

/// `out = conv(x, W)` for a baked fp16 `[m, k]` weight and `s` tokens, in the file
/// `path(None)`, or — past [`BAKED_K_PIECE`](super::tiling::BAKED_K_PIECE) input channels —
/// cut along K ([`k_pieces`]): each piece `p` a `slice_by_size` of `x`'s channels, a conv
/// against its own weights in `path(Some(p))`, the partial results added in order (maderix
/// `test_fused_bwd.m` L55-175, `stories_mil.h` L149-171). `names` are the result, the prefix
/// of the pieces' values, and the whole weight's constant.
pub(crate) fn baked_conv(
    f: &mut FunctionBuilder,
    args: &ConvArgs,
    (out, prefix, whole): (&str, &str, &str),
    x: &str,
    (m, k): (usize, usize),
    s: usize,
    path: impl Fn(Option<usize>) -> String,
) -> String {
    let blob = |shape: Vec<usize>, path: String| {
        Literal::Blob(BlobRef {
            dtype: DType::Fp16,
            shape,
            path,
            // the first blob of a file: its metadata record follows the 64-byte header
            offset: 64,
        })
    };
    let pieces = k_pieces(k);
    if pieces.len() == 1 {
        let w = f.constant(whole, blob(vec![m, k, 1, 1], path(None)));
        return args.conv(f, out, x, &w);
    }
    let mut sum: Option<String> = None;
    for (i, &(k0, kt)) in pieces.iter().enumerate() {
        let begin = f.constant(
            &format!("{prefix}b{i}"),
            Literal::int32s(&[0, k0 as i32, 0, 0]),
        );
        let size = f.constant(
            &format!("{prefix}z{i}"),
            Literal::int32s(&[1, kt as i32, 1, s as i32]),
        );
        let xi = f
            .op(
                &format!("{prefix}x{i}"),
                "slice_by_size",
                &[
                    ("begin", Arg::Var(begin)),
                    ("size", Arg::Var(size)),
                    ("x", Arg::Var(x.to_string())),
                ],
            )
            .expect("the program is well-typed");
        let wi = f.constant(
            &format!("{prefix}W{i}"),
            blob(vec![m, kt, 1, 1], path(Some(i))),
        );
        let ci = args.conv(f, &format!("{prefix}c{i}"), &xi, &wi);
        // two pieces at least: the last one's sum is the result
        sum = Some(match sum {
            None => ci,
            Some(acc) => {
                let name = if i + 1 == pieces.len() {
                    out.to_string()
                } else {
                    format!("{prefix}s{i}")
                };
                f.op(&name, "add", &[("x", Arg::Var(acc)), ("y", Arg::Var(ci))])
                    .expect("the program is well-typed")
            }
        });
    }
    sum.expect("at least two pieces")
}

/// The files of an fp16 `[m, k]` weight, row-major: one file at `path(None)`, or — K cut
/// into pieces ([`k_pieces`]) — each piece's columns in a file at `path(Some(p))`.
pub(crate) fn weight_pieces(
    k: usize,
    values: &[f16],
    path: impl Fn(Option<usize>) -> String,
) -> Vec<(String, Vec<f16>)> {
    let pieces = k_pieces(k);
    if pieces.len() == 1 {
        return vec![(path(None), values.to_vec())];
    }
    pieces
        .iter()
        .enumerate()
        .map(|(i, &(k0, kt))| {
            let columns = values
                .chunks(k)
                .flat_map(|row| &row[k0..k0 + kt])
                .copied()
                .collect();
            (path(Some(i)), columns)
        })
        .collect()
}

/// The weight files of a baked kernel: the fp16 tile `[m, k]`, row-major (`[m, k, 1, 1]`), in
/// one file, or — K cut into pieces ([`k_pieces`]) — its columns of each piece in a file each.
///
/// # Panics
/// If `tile` does not hold `m · k` values.
pub fn baked_weights(m: usize, k: usize, tile: &[f16]) -> WeightFiles {
    assert_eq!(tile.len(), m * k, "a baked tile of {m} x {k}");
    let mut files = WeightFiles::new();
    for (path, values) in weight_pieces(k, tile, baked_path) {
        let mut w = BlobWriter::new();
        let offset = w.add_fp16(&values);
        debug_assert_eq!(offset, 64);
        files
            .insert(&path, w.finish())
            .expect("a file we just wrote parses");
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use ane_mil::rules::{check_rules, RuleOptions, Severity};

    /// What each product of the kernels sums, read back from the programs: a streamed or
    /// two-input conv its tile's K, a baked one cut past 2048 each piece, the streamed FFN's
    /// matmuls the model's width (gate, up) and the hidden tile (down).
    #[test]
    fn each_product_sums_its_tile() {
        let sums = |p: &Program| -> Vec<usize> {
            let f = ane_mil::check_program(p, None).unwrap();
            f[0].product_sums().iter().map(|&(_, k)| k).collect()
        };
        assert_eq!(sums(&matmul_program(64, 1856, 32)), [1856]);
        assert_eq!(sums(&two_input_matmul_program(64, 2048, 32)), [2048]);
        let weights = |k: usize| baked_weights(8, k, &vec![f16::ZERO; 8 * k]);
        let baked = |k: usize| {
            let f = ane_mil::check_program(&baked_matmul_program(8, k, 32), Some(&weights(k)));
            f.unwrap()[0]
                .product_sums()
                .iter()
                .map(|&(_, k)| k)
                .collect::<Vec<_>>()
        };
        assert_eq!(baked(4096), [2048, 2048]);
        assert_eq!(baked(4864), [1632, 1632, 1600]);
        let ffn = crate::fused::streamed::streamed_ffn_program(4096, 1856, 64);
        assert_eq!(sums(&ffn), [4096, 4096, 1856]);
    }

    #[test]
    fn the_programs_check_and_pass_the_ane_rulebook() {
        let refusals = |p: &Program, rules: RuleOptions| {
            check_rules(p, &rules)
                .into_iter()
                .filter(|v| v.rule.severity == Severity::Refuse)
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
        };
        let p = matmul_program(3, 5, 32);
        let f = ane_mil::check_program(&p, None).unwrap();
        assert_eq!(
            f[0].signature(),
            "main<ios18>(x: tensor<fp16, [1, 5, 1, 64]>) -> (y: tensor<fp16, [1, 3, 1, 32]>)"
        );
        assert_eq!(refusals(&p, RuleOptions::default()), Vec::<String>::new());
        let p = two_input_matmul_program(32, 5, 32);
        let f = ane_mil::check_program(&p, None).unwrap();
        assert_eq!(
            f[0].signature(),
            "main<ios18>(a: tensor<fp16, [1, 5, 1, 32]>, b: tensor<fp16, [1, 5, 1, 32]>) -> (y: tensor<fp16, [1, 32, 1, 32]>)"
        );
        assert_eq!(refusals(&p, RuleOptions::default()).len(), 1, "two inputs");
        let mut two = RuleOptions::default();
        two.allow_two_inputs = true;
        assert_eq!(refusals(&p, two), Vec::<String>::new());
        let w = baked_weights(3, 5, &[f16::ONE; 15]);
        let p = baked_matmul_program(3, 5, 32);
        let f = ane_mil::check_program(&p, Some(&w)).unwrap();
        assert_eq!(
            f[0].signature(),
            "main<ios18>(x: tensor<fp16, [1, 5, 1, 32]>) -> (y: tensor<fp16, [1, 3, 1, 32]>)"
        );
        assert_eq!(refusals(&p, RuleOptions::default()), Vec::<String>::new());
        // an input narrower than 32 returns garbage on hardware: refused
        let p = baked_matmul_program(3, 5, 7);
        let r = refusals(&p, RuleOptions::default());
        assert!(r.iter().any(|v| v.contains("narrow-input")), "{r:?}");
        // a width the hardware rejects is moved past
        assert_eq!(input_width(14000, 600), 14624);
        assert_eq!(input_width(14000, 592), 14592);
        assert_eq!(input_width(10667, 32), 10720);
        let p = matmul_program(14000, 64, 600);
        assert_eq!(refusals(&p, RuleOptions::default()), Vec::<String>::new());
    }

    /// Past 2048 input channels a baked kernel cuts K inside the program: aligned pieces, a
    /// slice, a conv and a weight file each, added in order; it checks, passes the rulebook,
    /// and computes what one conv over the whole K computes, within fp16's rounding of the
    /// partial results.
    #[test]
    fn a_baked_tile_past_one_k_piece_sums_its_pieces_in_the_program() {
        assert_eq!(k_pieces(2048), [(0, 2048)]);
        assert_eq!(k_pieces(4096), [(0, 2048), (2048, 2048)]);
        assert_eq!(k_pieces(4100), [(0, 1376), (1376, 1376), (2752, 1348)]);
        assert_eq!(
            k_pieces(11008),
            (0..6)
                .map(|i| (i * 1856, 1856.min(11008 - i * 1856)))
                .collect::<Vec<_>>()
        );
        let (m, k, n) = (40, 4100, 32);
        let tile: Vec<f16> = (0..m * k)
            .map(|i| f16::from_f32(((i * 7) % 23) as f32 / 64.0 - 0.17))
            .collect();
        let w = baked_weights(m, k, &tile);
        let p = baked_matmul_program(m, k, n);
        let f = ane_mil::check_program(&p, Some(&w)).unwrap();
        assert_eq!(
            f[0].signature(),
            "main<ios18>(x: tensor<fp16, [1, 4100, 1, 32]>) -> (y: tensor<fp16, [1, 40, 1, 32]>)"
        );
        let refused: Vec<String> = check_rules(&p, &RuleOptions::default())
            .into_iter()
            .filter(|v| v.rule.severity == Severity::Refuse)
            .map(|v| v.to_string())
            .collect();
        assert_eq!(refused, Vec::<String>::new());
        let text = ane_mil::print_program(&p);
        assert_eq!(text.matches("conv(").count(), 3, "{text}");
        assert_eq!(text.matches("weight_").count(), 3, "{text}");
        // on the reference engine, against f64 over the fp16 operands
        use crate::engine::reference::{ReferenceConfig, ReferenceEngine};
        use crate::{CompileCounter, Engine, Surface};
        let engine = ReferenceEngine::with_config(
            ReferenceConfig::default().with_counter(CompileCounter::new(None)),
        );
        let kernel = engine.compile(&p, &w).unwrap();
        let procedure = &kernel.procedures()[0];
        let mut x = Surface::new(procedure.inputs[0].clone());
        let xs: Vec<f32> = (0..k * n)
            .map(|i| f16::from_f32(((i * 5) % 17) as f32 / 16.0 - 0.5).to_f32())
            .collect();
        x.write_f32(&xs).unwrap();
        let mut y = Surface::new(procedure.outputs[0].clone());
        kernel.eval(0, &[&x], &mut [&mut y]).unwrap();
        let got = y.read_f32();
        let (mut err, mut sum) = (0f64, 0f64);
        for r in 0..m {
            for t in 0..n {
                let want: f64 = (0..k)
                    .map(|c| f64::from(tile[r * k + c].to_f32()) * f64::from(xs[c * n + t]))
                    .sum();
                err += (f64::from(got[r * n + t]) - want).powi(2);
                sum += want * want;
            }
        }
        assert!(err / sum < 1e-6, "NMSE {}", err / sum);
    }
}
