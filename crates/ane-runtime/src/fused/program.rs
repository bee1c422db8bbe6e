//! The MIL programs of fused blocks, each op sequence one that public code has run on ANE
//! hardware (docs/fused-forms.md):
//! - the channel-axis RMSNorm of maderix/ANE `training/ane_classifier.h` L82-102 (checked
//!   against a CPU result in `training/test_classifier.m`): `mul(x, x)`,
//!   `reduce_sum(axes = [1], keep_dims)`, `mul(1/C)`, `add(eps)`, `pow(-0.5)`, `mul(x)`,
//!   `mul(w [1, C, 1, 1])`;
//! - followed by convs, as in maderix/ANE `training/stories_mil.h` L21-43 and L79-97;
//! - the SwiGLU FFN of `gen_ffn_fwd_taps` (stories_mil.h L75-109): `conv(W1)`, `conv(W3)`,
//!   `sigmoid`, `mul` (silu), `mul` (gate), `conv(W2)`, returning the gated hidden values
//!   beside the result (there in a `concat`, here as a second output: see below);
//! - the LayerNorm → GELU FFN of Orion's GPT-2 prefill (`compiler/frontends/gpt2_prefill.c`
//!   L74-110 through `compiler/patterns.c` `orion_pattern_ffn`): `conv(W1)`, `add(b1
//!   [1, H, 1, 1])` (`orion_gb_linear`, `compiler/builder.c` L396-427), GELU as its tanh chain
//!   (`orion_gb_gelu`, builder.c L285-333), `conv(W2)`; the second bias and the residual are
//!   the host's (as the RMSNorm FFN's residual), the hidden values a second output;
//! - several projections of one normed input as several outputs, as Orion's
//!   `compiler/frontends/gpt2_decode.c` L8-52 (q, k, v after a LayerNorm, run in its decode
//!   loop; `gpt2_prefill.c` L32-69 returns K that way beside the attention's result, checked
//!   against the CPU in `tests/test_ane_prefill.m`), named so that their alphabetical order is
//!   their return order (Orion `docs/ane_constraints.md` L21-37: outputs arrive sorted by name).
//!
//! Every weight is a baked fp16 BLOBFILE in a file of its own (one per matrix, as maderix
//! does; ane-infer's single shared file is reported failing on M1). The residual add of an
//! FFN is done by the host in f32 while writing back, as ggml does it.

use ane_mil::builder::FunctionBuilder;
use ane_mil::ir::{Arg, BlobRef, Literal, Program};
use ane_mil::{BlobWriter, DType, ValueType, WeightFiles};
use half::f16;

use crate::matmul::{baked_conv, weight_pieces, ConvArgs};

const NORM_PATH: &str = "@model_path/weights/norm.bin";
const NORM_BIAS_PATH: &str = "@model_path/weights/norm_bias.bin";
const UP_BIAS_PATH: &str = "@model_path/weights/b1.bin";

/// Matrix `i`'s file, or — its K cut into pieces past `BAKED_K_PIECE` (the baked matmul
/// kernel's form) — piece `p`'s.
fn weight_path(i: usize, piece: Option<usize>) -> String {
    match piece {
        None => format!("@model_path/weights/w{i}.bin"),
        Some(p) => format!("@model_path/weights/w{i}_{p}.bin"),
    }
}

/// `out = conv(x, W<i>)` for the baked `[m, k]` matrix `i`, its K cut in pieces past
/// `BAKED_K_PIECE` (`matmul::baked_conv`).
fn matrix_conv(
    f: &mut FunctionBuilder,
    conv: &ConvArgs,
    out: &str,
    x: &str,
    i: usize,
    (m, k, s): (usize, usize, usize),
) -> String {
    let (prefix, whole) = (format!("w{i}_"), format!("W{i}"));
    baked_conv(f, conv, (out, &prefix, &whole), x, (m, k), s, |p| {
        weight_path(i, p)
    })
}

fn blob(path: &str, shape: Vec<usize>) -> Literal {
    Literal::Blob(BlobRef {
        dtype: DType::Fp16,
        shape,
        path: path.to_string(),
        offset: 64,
    })
}

/// Statement `name = kind(args)`, every argument a named value.
pub(super) fn op(f: &mut FunctionBuilder, name: &str, kind: &str, args: &[(&str, &str)]) -> String {
    let args: Vec<(&str, Arg)> = args
        .iter()
        .map(|(k, v)| (*k, Arg::Var((*v).to_string())))
        .collect();
    f.op(name, kind, &args)
        .expect("the fused program is well-typed")
}

/// `xn [1, C, 1, S]`: x normalised over its channels (with `eps`; `None`: x comes normalised
/// already), times the norm weight.
fn rms_norm(f: &mut FunctionBuilder, x: &str, c: usize, eps: Option<f32>) -> String {
    let Some(eps) = eps else {
        // the tail of the RMSNorm form alone: the norm ran elsewhere (llama.cpp pins it to
        // the layer's device under full offload)
        let w = f.constant("rw", blob(NORM_PATH, vec![1, c, 1, 1]));
        return op(f, "xn", "mul", &[("x", x), ("y", &w)]);
    };
    let ax = f.constant("rax", Literal::int32s(&[1]));
    let kd = f.constant("rkd", Literal::bool(true));
    let invd = f.constant("rinvd", Literal::fp16(1.0 / c as f32));
    let e = f.constant("reps", Literal::fp16(eps));
    let nhalf = f.constant("rnhalf", Literal::fp16(-0.5));
    let w = f.constant("rw", blob(NORM_PATH, vec![1, c, 1, 1]));
    let sq = op(f, "rsq", "mul", &[("x", x), ("y", x)]);
    let ss = op(
        f,
        "rss",
        "reduce_sum",
        &[("axes", &ax), ("keep_dims", &kd), ("x", &sq)],
    );
    let ms = op(f, "rms", "mul", &[("x", &ss), ("y", &invd)]);
    let me = op(f, "rme", "add", &[("x", &ms), ("y", &e)]);
    let r = op(f, "rr", "pow", &[("x", &me), ("y", &nhalf)]);
    let xr = op(f, "rxr", "mul", &[("x", x), ("y", &r)]);
    op(f, "xn", "mul", &[("x", &xr), ("y", &w)])
}

/// `xn [1, C, 1, S]`: x's LayerNorm over its channels, times the norm weight γ, plus its bias
/// β — mechramc/Orion `compiler/builder.c` L227-283 (`orion_gb_layernorm`) op for op:
/// `reduce_mean(axes = [1], keep_dims)`, `sub`, `mul(c, c)`, `reduce_mean`, `add(eps)`,
/// `pow(-0.5)`, `mul`, `mul(γ [1, C, 1, 1])`, `add(β [1, C, 1, 1])`.
fn layer_norm(f: &mut FunctionBuilder, x: &str, c: usize, eps: f32) -> String {
    let ax = f.constant("lax", Literal::int32s(&[1]));
    let kd = f.constant("lkd", Literal::bool(true));
    let e = f.constant("leps", Literal::fp16(eps));
    let nhalf = f.constant("lnhalf", Literal::fp16(-0.5));
    let g = f.constant("lw", blob(NORM_PATH, vec![1, c, 1, 1]));
    let b = f.constant("lb", blob(NORM_BIAS_PATH, vec![1, c, 1, 1]));
    let reduce = |f: &mut FunctionBuilder, name: &str, v: &str| {
        op(
            f,
            name,
            "reduce_mean",
            &[("axes", &ax), ("keep_dims", &kd), ("x", v)],
        )
    };
    let mean = reduce(f, "lmean", x);
    let cent = op(f, "lcent", "sub", &[("x", x), ("y", &mean)]);
    let sq = op(f, "lsq", "mul", &[("x", &cent), ("y", &cent)]);
    let var = reduce(f, "lvar", &sq);
    let ve = op(f, "lve", "add", &[("x", &var), ("y", &e)]);
    let r = op(f, "lr", "pow", &[("x", &ve), ("y", &nhalf)]);
    let xr = op(f, "lxr", "mul", &[("x", &cent), ("y", &r)]);
    let xg = op(f, "lxg", "mul", &[("x", &xr), ("y", &g)]);
    op(f, "xn", "add", &[("x", &xg), ("y", &b)])
}

/// `0.5·x·(1 + tanh(0.7979·(x + 0.044715·x³)))`: Orion's `orion_gb_gelu` (`compiler/builder.c`
/// L285-333) op for op, fp16 constants as there (the MIL `gelu` op fails to compile, Orion
/// `docs/ane_constraints.md` L120-132). The tanh approximation is also what ggml's GELU
/// computes. The last op is named `name`.
fn gelu(f: &mut FunctionBuilder, x: &str, name: &str) -> String {
    let c1 = f.constant("gc1", Literal::fp16(0.044715));
    let c2 = f.constant("gc2", Literal::fp16(0.7979));
    let one = f.constant("gone", Literal::fp16(1.0));
    let half = f.constant("ghalf", Literal::fp16(0.5));
    let x2 = op(f, "gx2", "mul", &[("x", x), ("y", x)]);
    let x3 = op(f, "gx3", "mul", &[("x", &x2), ("y", x)]);
    let cx3 = op(f, "gcx3", "mul", &[("x", &x3), ("y", &c1)]);
    let inner = op(f, "ginner", "add", &[("x", x), ("y", &cx3)]);
    let scaled = op(f, "gscaled", "mul", &[("x", &inner), ("y", &c2)]);
    let th = op(f, "gth", "tanh", &[("x", &scaled)]);
    let onep = op(f, "gonep", "add", &[("x", &th), ("y", &one)]);
    let hx = op(f, "ghx", "mul", &[("x", x), ("y", &half)]);
    op(f, name, "mul", &[("x", &hx), ("y", &onep)])
}

fn finish(f: FunctionBuilder) -> Program {
    let mut p = Program::new();
    p.functions.push(f.finish());
    p
}

/// The fused FFN for `c` channels, `h` hidden features and `s` tokens: input
/// `x [1, c, 1, s]`, outputs `y0 [1, c, 1, s] = W2 · hm` and the hidden values
/// `y1 = hm [1, h, 1, s] = silu(W1 · n) ⊙ (W3 · n)` with `n = rms_norm(x) ⊙ w`. Weights: norm `[1, c, 1, 1]`, W1 and W3 `[h, c, 1, 1]`, W2
/// `[c, h, 1, 1]` (see [`fused_weights`]). With `eps` `None` the input is taken as normalised
/// already and only scaled by the norm weight.
pub fn ffn_program(c: usize, h: usize, s: usize, eps: Option<f32>) -> Program {
    let mut f = FunctionBuilder::new("main", "ios18");
    let x = f.input("x", ValueType::tensor(DType::Fp16, [1, c, 1, s]));
    let xn = rms_norm(&mut f, &x, c, eps);
    let conv = ConvArgs::new(&mut f, "valid");
    let g = matrix_conv(&mut f, &conv, "g", &xn, 1, (h, c, s));
    let u = matrix_conv(&mut f, &conv, "u", &xn, 3, (h, c, s));
    let sg = op(&mut f, "sg", "sigmoid", &[("x", &g)]);
    let sl = op(&mut f, "sl", "mul", &[("x", &g), ("y", &sg)]);
    // the hidden values are a second output, as in `gen_ffn_fwd_taps` (there part of a
    // concat, here an output of its own): the host's precision check reads them
    let hm = op(&mut f, "y1", "mul", &[("x", &sl), ("y", &u)]);
    let y = matrix_conv(&mut f, &conv, "y0", &hm, 2, (c, h, s));
    f.output(&y).expect("y0 is defined");
    f.output(&hm).expect("y1 is defined");
    finish(f)
}

/// The LayerNorm → GELU FFN for `c` channels, `h` hidden features and `s` tokens (whisper's
/// and GPT-2's): input `x [1, c, 1, s]`, outputs `y0 [1, c, 1, s] = W2 · hm` and the hidden
/// values `y1 = hm [1, h, 1, s] = gelu(W1 · n + b1)`, `n = layer_norm(x) ⊙ γ + β`. Weights:
/// the norm's ([`with_norm_bias`]), W1 `[h, c, 1, 1]`, W2 `[c, h, 1, 1]` ([`fused_weights`]
/// numbering 1 and 2) and b1 ([`with_up_bias`]). The down projection's bias and the residual
/// are added by the host in f32.
pub fn layer_norm_gelu_ffn_program(c: usize, h: usize, s: usize, eps: f32) -> Program {
    let mut f = FunctionBuilder::new("main", "ios18");
    let x = f.input("x", ValueType::tensor(DType::Fp16, [1, c, 1, s]));
    let xn = layer_norm(&mut f, &x, c, eps);
    let conv = ConvArgs::new(&mut f, "valid");
    let b1 = f.constant("b1", blob(UP_BIAS_PATH, vec![1, h, 1, 1]));
    let u = matrix_conv(&mut f, &conv, "u", &xn, 1, (h, c, s));
    let ub = op(&mut f, "ub", "add", &[("x", &u), ("y", &b1)]);
    let hm = gelu(&mut f, &ub, "y1");
    let y = matrix_conv(&mut f, &conv, "y0", &hm, 2, (c, h, s));
    f.output(&y).expect("y0 is defined");
    f.output(&hm).expect("y1 is defined");
    finish(f)
}

/// The fused projections for `c` channels and `s` tokens: input `x [1, c, 1, s]`, one output
/// `y<i> [1, rows[i], 1, s] = W<i> · n` per matrix, `n = rms_norm(x) ⊙ w`.
pub fn projections_program(c: usize, rows: &[usize], s: usize, eps: Option<f32>) -> Program {
    let mut f = FunctionBuilder::new("main", "ios18");
    let x = f.input("x", ValueType::tensor(DType::Fp16, [1, c, 1, s]));
    let xn = rms_norm(&mut f, &x, c, eps);
    projections_of(f, &xn, c, rows, s)
}

/// The projections of a LayerNorm'd input (whisper's and GPT-2's attention): input
/// `x [1, c, 1, s]`, one output `y<i> [1, rows[i], 1, s] = W<i> · layer_norm(x)` per matrix —
/// the form of Orion's `compiler/frontends/gpt2_decode.c` L8-52 without its bias adds (the
/// host adds each projection's bias in f32, as ggml's ADD does). Weights: the norm weight and
/// bias ([`with_norm_bias`]) and each matrix.
pub fn layer_norm_projections_program(c: usize, rows: &[usize], s: usize, eps: f32) -> Program {
    let mut f = FunctionBuilder::new("main", "ios18");
    let x = f.input("x", ValueType::tensor(DType::Fp16, [1, c, 1, s]));
    let xn = layer_norm(&mut f, &x, c, eps);
    projections_of(f, &xn, c, rows, s)
}

/// One conv per matrix of the normed input `xn`, each an output `y<i>`; the program.
fn projections_of(mut f: FunctionBuilder, xn: &str, c: usize, rows: &[usize], s: usize) -> Program {
    let conv = ConvArgs::new(&mut f, "valid");
    let mut outputs = Vec::new();
    for (i, &m) in rows.iter().enumerate() {
        // y0, y1, ...: fewer than ten outputs keep name order and return order equal
        let y = format!("y{i}");
        outputs.push(matrix_conv(&mut f, &conv, &y, xn, i, (m, c, s)));
    }
    for y in &outputs {
        f.output(y).expect("outputs are defined");
    }
    finish(f)
}

/// Adds a LayerNorm's bias (`c` values) to a fused program's weight files.
pub fn with_norm_bias(files: &mut WeightFiles, bias: &[f16]) {
    files
        .insert(NORM_BIAS_PATH, file_of(bias))
        .expect("a file we just wrote parses");
}

/// Adds a GELU FFN's up-projection bias (`h` values) to its weight files.
pub fn with_up_bias(files: &mut WeightFiles, bias: &[f16]) {
    files
        .insert(UP_BIAS_PATH, file_of(bias))
        .expect("a file we just wrote parses");
}

fn file_of(values: &[f16]) -> Vec<u8> {
    let mut w = BlobWriter::new();
    let offset = w.add_fp16(values);
    debug_assert_eq!(offset, 64);
    w.finish()
}

/// The weight files of a fused program: the norm weight (`c` values) and each matrix
/// `(number, in, values)` row-major (`[rows, in]`), in the program's numbering (FFN: 1 =
/// gate, 3 = up, 2 = down; projections: 0, 1, ...), a matrix whose `in` the program cuts
/// into K pieces in a file per piece.
pub fn fused_weights(norm: &[f16], matrices: &[(usize, usize, Vec<f16>)]) -> WeightFiles {
    let mut files = WeightFiles::new();
    files
        .insert(NORM_PATH, file_of(norm))
        .expect("a file we just wrote parses");
    for (i, k, m) in matrices {
        for (path, values) in weight_pieces(*k, m, |p| weight_path(*i, p)) {
            files
                .insert(&path, file_of(&values))
                .expect("a file we just wrote parses");
        }
    }
    files
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use ane_mil::rules::{check_rules, RuleOptions, Severity};

    /// The rulebook's refusals of `p` (shared by the fused programs' tests).
    pub(in crate::fused) fn refusals(p: &Program) -> Vec<String> {
        check_rules(p, &RuleOptions::default())
            .into_iter()
            .filter(|v| v.rule.severity == Severity::Refuse)
            .map(|v| v.to_string())
            .collect()
    }

    #[test]
    fn the_fused_programs_check_and_pass_the_rulebook() {
        let ffn = ffn_program(64, 96, 32, Some(1e-5));
        let w = fused_weights(
            &[f16::ONE; 64],
            &[
                (1, 64, vec![f16::ONE; 96 * 64]),
                (3, 64, vec![f16::ONE; 96 * 64]),
                (2, 96, vec![f16::ONE; 64 * 96]),
            ],
        );
        let f = ane_mil::check_program(&ffn, Some(&w)).unwrap();
        assert_eq!(
            f[0].signature(),
            "main<ios18>(x: tensor<fp16, [1, 64, 1, 32]>) -> (y0: tensor<fp16, [1, 64, 1, 32]>, y1: tensor<fp16, [1, 96, 1, 32]>)"
        );
        assert_eq!(refusals(&ffn), Vec::<String>::new());
        let p = projections_program(64, &[64, 32, 32], 32, Some(1e-6));
        let w = fused_weights(
            &[f16::ONE; 64],
            &[
                (0, 64, vec![f16::ONE; 64 * 64]),
                (1, 64, vec![f16::ONE; 32 * 64]),
                (2, 64, vec![f16::ONE; 32 * 64]),
            ],
        );
        let f = ane_mil::check_program(&p, Some(&w)).unwrap();
        assert_eq!(
            f[0].signature(),
            "main<ios18>(x: tensor<fp16, [1, 64, 1, 32]>) -> (y0: tensor<fp16, [1, 64, 1, 32]>, y1: tensor<fp16, [1, 32, 1, 32]>, y2: tensor<fp16, [1, 32, 1, 32]>)"
        );
        assert_eq!(refusals(&p), Vec::<String>::new());
        // normalised elsewhere: the scale and the convs only
        let p = projections_program(64, &[64, 32, 32], 32, None);
        assert!(ane_mil::check_program(&p, Some(&w)).is_ok());
        assert_eq!(refusals(&p), Vec::<String>::new());
        assert!(!ane_mil::print_program(&p).contains("reduce_sum"));
        // a LayerNorm'd input: Orion's nine ops, then the convs; its bias in a file of its own
        let p = layer_norm_projections_program(64, &[64, 32, 32], 32, 1e-5);
        let mut w = w.clone();
        with_norm_bias(&mut w, &[f16::ZERO; 64]);
        let f = ane_mil::check_program(&p, Some(&w)).unwrap();
        assert!(f[0].signature().ends_with(
            "-> (y0: tensor<fp16, [1, 64, 1, 32]>, y1: tensor<fp16, [1, 32, 1, 32]>, y2: tensor<fp16, [1, 32, 1, 32]>)"
        ));
        assert_eq!(refusals(&p), Vec::<String>::new());
        let text = ane_mil::print_program(&p);
        assert_eq!(text.matches("reduce_mean(").count(), 2, "{text}");
        // the GELU FFN: LayerNorm, conv, bias add, Orion's nine GELU ops, conv
        let p = layer_norm_gelu_ffn_program(64, 96, 32, 1e-5);
        let mut w = fused_weights(
            &[f16::ONE; 64],
            &[
                (1, 64, vec![f16::ONE; 96 * 64]),
                (2, 96, vec![f16::ONE; 64 * 96]),
            ],
        );
        with_norm_bias(&mut w, &[f16::ZERO; 64]);
        with_up_bias(&mut w, &[f16::ZERO; 96]);
        let f = ane_mil::check_program(&p, Some(&w)).unwrap();
        assert_eq!(
            f[0].signature(),
            "main<ios18>(x: tensor<fp16, [1, 64, 1, 32]>) -> (y0: tensor<fp16, [1, 64, 1, 32]>, y1: tensor<fp16, [1, 96, 1, 32]>)"
        );
        assert_eq!(refusals(&p), Vec::<String>::new());
        let text = ane_mil::print_program(&p);
        assert_eq!(text.matches("tanh(").count(), 1, "{text}");
        assert!(!text.contains("gelu("), "{text}");
    }
}
