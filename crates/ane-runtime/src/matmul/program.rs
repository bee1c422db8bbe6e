//! The MIL program for one matmul tile, and how a job is cut into tiles.

use ane_mil::builder::FunctionBuilder;
use ane_mil::ir::{Arg, BlobRef, Literal, Program};
use ane_mil::{BlobWriter, DType, ValueType, WeightFiles};
use half::f16;

/// Tokens per kernel at most; longer prompts run in chunks of this many.
pub const MAX_TOKENS_PER_KERNEL: usize = 2048;

/// The smallest token bucket of tiles with `bm` output and `bk` input channels: a
/// `[1, C, 1, S]` input or output with more than 768 channels needs S ≥ 32
/// (`ane_mil::rules::WIDE_CHANNELS_NARROW_SPATIAL`), so decode-sized jobs pad to 32.
pub fn min_bucket(bm: usize, bk: usize) -> usize {
    if bm.max(bk) > ane_mil::rules::WIDE_CHANNELS {
        ane_mil::rules::MIN_SPATIAL_FOR_WIDE
    } else {
        1
    }
}

/// The token count a kernel is compiled for: the next power of two (so a job of any length
/// needs at most a dozen kernel sizes per weight shape, and pads at most 2×), at least `min`,
/// within [`MAX_TOKENS_PER_KERNEL`] and half of `max_dim`.
pub fn token_bucket(n: usize, max_dim: usize, min: usize) -> usize {
    n.max(min)
        .max(1)
        .next_power_of_two()
        .min(token_chunk(max_dim))
}

/// The largest token bucket: the chunk length for long prompts. At most half of `max_dim`, so a
/// streamed kernel's input (tokens and weight rows side by side) keeps half its width for
/// weight rows.
pub(crate) fn token_chunk(max_dim: usize) -> usize {
    let cap = MAX_TOKENS_PER_KERNEL.min((max_dim / 2).max(1));
    // the largest power of two within the cap
    1 << (usize::BITS - 1 - cap.leading_zeros())
}

/// The token chunks of a job: `(first token, tokens, bucket)`.
pub fn token_chunks(n: usize, max_dim: usize, min: usize) -> Vec<(usize, usize, usize)> {
    let chunk = token_chunk(max_dim);
    (0..n)
        .step_by(chunk)
        .map(|n0| {
            let len = chunk.min(n - n0);
            (n0, len, token_bucket(len, max_dim, min))
        })
        .collect()
}

/// Baked tile sizes `(tm, tk)`: M and K cut into the fewest equal parts within `max_dim`.
pub fn tile_sizes(m: usize, k: usize, max_dim: usize) -> (usize, usize) {
    (cut(m, max_dim), cut(k, max_dim))
}

/// Streamed tile sizes: M within what the input's width leaves beside the largest token
/// chunk (tokens and weight rows share the width), K within `max_dim`.
pub fn streamed_tile_sizes(m: usize, k: usize, max_dim: usize) -> (usize, usize) {
    (cut(m, max_dim - token_chunk(max_dim)), cut(k, max_dim))
}

/// `d` cut into the fewest equal parts of at most `limit`.
fn cut(d: usize, limit: usize) -> usize {
    let parts = d.div_ceil(limit.max(1)).max(1);
    d.div_ceil(parts).max(1)
}

/// The distinct sizes of a dimension `d` cut into tiles of `t` (at most two).
fn tile_lengths(d: usize, t: usize) -> Vec<usize> {
    let mut v = vec![t.min(d)];
    if !d.is_multiple_of(t) && d > t {
        v.push(d % t);
    }
    v
}

/// The distinct token buckets of a job of `n` tokens, ascending.
fn token_buckets(n: usize, max_dim: usize, min: usize) -> Vec<usize> {
    let mut buckets: Vec<usize> = token_chunks(n, max_dim, min).iter().map(|c| c.2).collect();
    buckets.sort_unstable();
    buckets.dedup();
    buckets
}

/// The distinct streamed kernel shapes `(bm, bk, bucket)` a job of `m × k × n` needs.
pub fn kernel_shapes(m: usize, k: usize, n: usize, max_dim: usize) -> Vec<(usize, usize, usize)> {
    let (tm, tk) = streamed_tile_sizes(m, k, max_dim);
    let buckets = token_buckets(n, max_dim, min_bucket(tm, tk));
    let mut out = Vec::new();
    for &bm in &tile_lengths(m, tm) {
        for &bk in &tile_lengths(k, tk) {
            for &b in &buckets {
                out.push((bm, bk, b));
            }
        }
    }
    out
}

/// One baked kernel: the weight tile at `(m0, k0)` of size `bm × bk`, for a token bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BakedTile {
    /// First weight row.
    pub m0: usize,
    /// First column.
    pub k0: usize,
    /// Rows.
    pub bm: usize,
    /// Columns.
    pub bk: usize,
    /// Token bucket.
    pub bucket: usize,
}

/// Every baked kernel a job of `m × k × n` needs, tile by tile, buckets ascending.
pub fn baked_tiles(m: usize, k: usize, n: usize, max_dim: usize) -> Vec<BakedTile> {
    let (tm, tk) = tile_sizes(m, k, max_dim);
    let buckets = token_buckets(n, max_dim, min_bucket(tm, tk));
    let mut tiles = Vec::new();
    for m0 in (0..m).step_by(tm) {
        for k0 in (0..k).step_by(tk) {
            tiles.extend(buckets.iter().map(|&bucket| BakedTile {
                m0,
                k0,
                bm: tm.min(m - m0),
                bk: tk.min(k - k0),
                bucket,
            }));
        }
    }
    tiles
}

// The kernels are in the forms public code has run on ANE hardware (docs/ane-notes.md,
// docs/hardware-validation.md): channel-first `[1, C, 1, S]` inputs and outputs, weights
// applied by a 1×1 `conv`, one input per function unless the two-input form is asked for.
// Tokens are the spatial width S, features the channels: the host transposes while staging
// (tokens become columns) and while writing back (the `[1, M, 1, S]` output's columns are
// tokens). Every program here passes the rulebook (`ane_mil::rules`).

/// The width of a streamed kernel's input for `m` weight rows and `n` tokens: `n + m` rounded
/// up to a multiple of 32, as every working dyn-conv program's is (ane-prefill-bench: 17664,
/// 5376) and as the rulebook asks beside many channels (`spatial-multiple-of-32`); that also
/// keeps it out of the 14593–14622 widths reported to fail. The columns past `n + m` are never
/// read.
pub fn input_width(m: usize, n: usize) -> usize {
    let w = (n + m).next_multiple_of(ane_mil::rules::MIN_SPATIAL_FOR_WIDE);
    // no multiple of 32 lies in 14593..=14622
    debug_assert!(!ane_mil::rules::BAD_INPUT_WIDTHS.contains(&w));
    w
}

/// `y [1, m, 1, n] = conv(x, W)` with `x [1, k, 1, n]` and a `[m, k, 1, 1]` weight: the conv
/// argument set the sources use (strides, pad, dilations 1, one group), as named constants.
fn conv_output(mut f: FunctionBuilder, x: &str, weight: &str, pad_type: &str) -> Program {
    let dl = f.constant("dl", Literal::int32s(&[1, 1]));
    let gr = f.constant("gr", Literal::int32(1));
    let pd = f.constant("pd", Literal::int32s(&[0, 0, 0, 0]));
    let pt = f.constant("pt", Literal::string(pad_type));
    let st = f.constant("st", Literal::int32s(&[1, 1]));
    let y = f
        .op(
            "y",
            "conv",
            &[
                ("dilations", Arg::Var(dl)),
                ("groups", Arg::Var(gr)),
                ("pad", Arg::Var(pd)),
                ("pad_type", Arg::Var(pt)),
                ("strides", Arg::Var(st)),
                ("weight", Arg::Var(weight.to_string())),
                ("x", Arg::Var(x.to_string())),
            ],
        )
        .expect("the tile program is well-typed");
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

/// Where a baked kernel's weight tile lives.
pub(crate) const BAKED_WEIGHT_PATH: &str = "@model_path/weights/weight.bin";

/// The baked kernel: `x [1, k, 1, n]`, the weight tile compiled in as a `[m, k, 1, 1]` fp16
/// BLOBFILE constant, `y [1, m, 1, n] = conv(x, W)` with `pad_type = valid` — the form of
/// maderix/ANE `gen_classifier_fwd` (training/ane_classifier.h), checked there against
/// `cblas_sgemm` on hardware. One compile per (weight tile, token bucket); only the
/// activations cross per call.
pub fn baked_matmul_program(m: usize, k: usize, n: usize) -> Program {
    let mut f = FunctionBuilder::new("main", "ios18");
    let x = f.input("x", ValueType::tensor(DType::Fp16, [1, k, 1, n]));
    let w = f.constant(
        "W",
        Literal::Blob(BlobRef {
            dtype: DType::Fp16,
            shape: vec![m, k, 1, 1],
            path: BAKED_WEIGHT_PATH.to_string(),
            // the first blob of a file: its metadata record follows the 64-byte header
            offset: 64,
        }),
    );
    conv_output(f, &x, &w, "valid")
}

/// The weight file of a baked kernel: the fp16 tile `[m, k]`, row-major (`[m, k, 1, 1]`).
pub fn baked_weights(tile: &[f16]) -> WeightFiles {
    let mut w = BlobWriter::new();
    let offset = w.add_fp16(tile);
    debug_assert_eq!(offset, 64);
    let mut files = WeightFiles::new();
    files
        .insert(BAKED_WEIGHT_PATH, w.finish())
        .expect("a file we just wrote parses");
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use ane_mil::rules::{check_rules, RuleOptions, Severity};

    #[test]
    fn tiles_stay_within_the_limit_and_cover_the_job() {
        assert_eq!(tile_sizes(32000, 4096, 16384), (16000, 4096));
        // streamed tiles leave the largest token chunk (2048) beside the weight rows
        assert_eq!(streamed_tile_sizes(32000, 4096, 16384), (10667, 4096));
        assert_eq!(
            kernel_shapes(32000, 4096, 512, 16384),
            vec![(10667, 4096, 512), (10666, 4096, 512)]
        );
        assert_eq!(streamed_tile_sizes(4096, 11008, 16384), (4096, 11008));
        assert_eq!(tile_sizes(32001, 4096, 16384), (16001, 4096));
        assert_eq!(tile_sizes(5, 20000, 16384), (5, 10000));
        for (d, max) in [(1, 16384), (16385, 16384), (100, 7), (49152, 16384)] {
            let (t, _) = tile_sizes(d, 1, max);
            assert!(t <= max && t * d.div_ceil(t) >= d);
            let (t, _) = streamed_tile_sizes(d, 1, max);
            assert!(t + token_chunk(max) <= max.max(2) && t * d.div_ceil(t) >= d);
        }
    }

    #[test]
    fn tokens_go_in_power_of_two_buckets_and_long_prompts_in_chunks() {
        assert_eq!(
            [1, 2, 3, 17, 64, 100, 2000].map(|n| token_bucket(n, 16384, 1)),
            [1, 2, 4, 32, 64, 128, 2048]
        );
        // more than 768 channels: at least 32 tokens (rule wide-channels-narrow-spatial)
        assert_eq!(min_bucket(4096, 64), 32);
        assert_eq!(min_bucket(768, 768), 1);
        assert_eq!(
            [1, 2, 17, 64].map(|n| token_bucket(n, 16384, min_bucket(4096, 4096))),
            [32, 32, 32, 64]
        );
        assert_eq!(
            token_chunks(5000, 16384, 1),
            vec![(0, 2048, 2048), (2048, 2048, 2048), (4096, 904, 1024)]
        );
        // chunks of at most half the width limit
        assert_eq!(
            token_chunks(50, 48, 1),
            vec![(0, 16, 16), (16, 16, 16), (32, 16, 16), (48, 2, 2)]
        );
        assert_eq!(
            kernel_shapes(4096, 4096, 5000, 16384),
            vec![(4096, 4096, 1024), (4096, 4096, 2048)]
        );
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
        let p = matmul_program(3, 5, 7);
        let f = ane_mil::check_program(&p, None).unwrap();
        assert_eq!(
            f[0].signature(),
            "main<ios18>(x: tensor<fp16, [1, 5, 1, 32]>) -> (y: tensor<fp16, [1, 3, 1, 7]>)"
        );
        assert_eq!(refusals(&p, RuleOptions::default()), Vec::<String>::new());
        let p = two_input_matmul_program(3, 5, 7);
        let f = ane_mil::check_program(&p, None).unwrap();
        assert_eq!(
            f[0].signature(),
            "main<ios18>(a: tensor<fp16, [1, 5, 1, 7]>, b: tensor<fp16, [1, 5, 1, 3]>) -> (y: tensor<fp16, [1, 3, 1, 7]>)"
        );
        assert_eq!(refusals(&p, RuleOptions::default()).len(), 1, "two inputs");
        let mut two = RuleOptions::default();
        two.allow_two_inputs = true;
        assert_eq!(refusals(&p, two), Vec::<String>::new());
        let w = baked_weights(&[f16::ONE; 15]);
        let p = baked_matmul_program(3, 5, 7);
        let f = ane_mil::check_program(&p, Some(&w)).unwrap();
        assert_eq!(
            f[0].signature(),
            "main<ios18>(x: tensor<fp16, [1, 5, 1, 7]>) -> (y: tensor<fp16, [1, 3, 1, 7]>)"
        );
        assert_eq!(refusals(&p, RuleOptions::default()), Vec::<String>::new());
        // a width the hardware rejects is moved past
        assert_eq!(input_width(14000, 600), 14624);
        assert_eq!(input_width(14000, 592), 14592);
        assert_eq!(input_width(10667, 32), 10720);
        let p = matmul_program(14000, 64, 600);
        assert_eq!(refusals(&p, RuleOptions::default()), Vec::<String>::new());
    }
}
