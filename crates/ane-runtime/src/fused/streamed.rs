//! Fused blocks with their weights streamed in the one input, so one kernel per shape and
//! token bucket serves every layer (baked blocks need one per layer: past the compile budget
//! and the loaded-kernel cap for any real model). The form of maderix/ANE
//! `training/training_dynamic/mil_dynamic.h` (run on hardware in its training loop):
//! - `gen_dyn_matmul` (L15-38): activations and weights sliced out of one `[1, C, 1, W]`
//!   input, `reshape`/`transpose` to `[1, 1, S, C]` and `[1, 1, C, M]`, `matmul`,
//!   `transpose`/`reshape` back to `[1, M, 1, S]`;
//! - `gen_ffn_fused_dynamic` (L221-290): normed activations then W1, W3 and W2 (stored
//!   `[DIM, HIDDEN]`, transposed inside) in one input; `sigmoid`, `mul`, `mul`; the down
//!   projection the same way. As there, the norm is computed by the host while staging.
//!
//! Width is the limit (16384 per dimension): an FFN is cut along its hidden features into
//! tiles of equal width (the last padded with zero weights), each one program evaluation whose
//! partial results the host sums in f32.

use ane_mil::builder::FunctionBuilder;
use ane_mil::ir::{Literal, Program};
use ane_mil::{DType, ValueType};

use crate::matmul::{
    input_width, token_chunk, CHANNEL_ALIGN, STREAMED_FUSED_WIDTH, STREAMED_K_TILE,
};

use super::program::op;

fn ints(f: &mut FunctionBuilder, name: &str, v: [usize; 4]) -> String {
    f.constant(name, Literal::int32s(&v.map(|x| x as i32)))
}

/// Columns `first..first + width` of the input: `[1, c, 1, width]`.
fn slice(
    f: &mut FunctionBuilder,
    x: &str,
    name: &str,
    c: usize,
    first: usize,
    width: usize,
) -> String {
    let b = ints(f, &format!("{name}_b"), [0, 0, 0, first]);
    let s = ints(f, &format!("{name}_s"), [1, c, 1, width]);
    op(
        f,
        name,
        "slice_by_size",
        &[("begin", &b), ("size", &s), ("x", x)],
    )
}

/// Shared constants: the axis swap and `transpose_x = transpose_y = false`.
struct Consts {
    pm: String,
    no: String,
}

fn consts(f: &mut FunctionBuilder) -> Consts {
    Consts {
        pm: f.constant("pm", Literal::int32s(&[0, 1, 3, 2])),
        no: f.constant("bF", Literal::bool(false)),
    }
}

/// `w [1, k, 1, m]` (column `j` of row `d`: output `j`'s weight for input `d`) as the
/// matmul operand `[1, 1, k, m]`.
fn weight(f: &mut FunctionBuilder, p: &str, w: &str, k: usize, m: usize) -> String {
    let rw = ints(f, &format!("{p}_rw"), [1, 1, k, m]);
    op(f, &format!("{p}_W"), "reshape", &[("shape", &rw), ("x", w)])
}

/// `y [1, m, 1, s]` from `a [1, k, 1, s]` and `w [1, 1, k, m]`: `gen_dyn_matmul` op for op.
fn dyn_matmul(
    f: &mut FunctionBuilder,
    k0: &Consts,
    p: &str,
    a: &str,
    w: &str,
    (k, m, s): (usize, usize, usize),
) -> String {
    let ra = ints(f, &format!("{p}_ra"), [1, 1, k, s]);
    let a2 = op(
        f,
        &format!("{p}_a2"),
        "reshape",
        &[("shape", &ra), ("x", a)],
    );
    let a3 = op(
        f,
        &format!("{p}_a3"),
        "transpose",
        &[("perm", &k0.pm), ("x", &a2)],
    );
    let yh = op(
        f,
        &format!("{p}_yh"),
        "matmul",
        &[
            ("transpose_x", &k0.no),
            ("transpose_y", &k0.no),
            ("x", &a3),
            ("y", w),
        ],
    );
    let yt = op(
        f,
        &format!("{p}_yt"),
        "transpose",
        &[("perm", &k0.pm), ("x", &yh)],
    );
    let ro = ints(f, &format!("{p}_ro"), [1, m, 1, s]);
    op(f, p, "reshape", &[("shape", &ro), ("x", &yt)])
}

/// One hidden tile of a streamed FFN: input `[1, c, 1, input_width(3·ht, s)]` holding the
/// normed activations (columns `0..s`), then W1, W3 and W2 (`ht` columns each; W2 as its
/// rows `[c, ht]`); outputs `y0 [1, c, 1, s]`, this tile's share of the down projection,
/// and `y1 [1, ht, 1, s]`, the tile's hidden values.
pub fn streamed_ffn_program(c: usize, ht: usize, s: usize) -> Program {
    let mut f = FunctionBuilder::new("main", "ios18");
    let x = f.input(
        "x",
        ValueType::tensor(DType::Fp16, [1, c, 1, input_width(3 * ht, s)]),
    );
    let k0 = consts(&mut f);
    let act = slice(&mut f, &x, "act", c, 0, s);
    let w1 = slice(&mut f, &x, "w1", c, s, ht);
    let w3 = slice(&mut f, &x, "w3", c, s + ht, ht);
    let w2r = slice(&mut f, &x, "w2r", c, s + 2 * ht, ht);
    let w1 = weight(&mut f, "h1", &w1, c, ht);
    let w3 = weight(&mut f, "h3", &w3, c, ht);
    let h1 = dyn_matmul(&mut f, &k0, "h1", &act, &w1, (c, ht, s));
    let h3 = dyn_matmul(&mut f, &k0, "h3", &act, &w3, (c, ht, s));
    let sg = op(&mut f, "sg", "sigmoid", &[("x", &h1)]);
    let si = op(&mut f, "si", "mul", &[("x", &h1), ("y", &sg)]);
    // the hidden values, also returned (as the `concat` of `gen_ffn_fused_dynamic` L285-288
    // returns `gate`): the host's precision check reads them
    let gt = op(&mut f, "y1", "mul", &[("x", &si), ("y", &h3)]);
    // W2 [c, ht] arrives with its rows as channels: transposed to [ht, c] inside, as there
    let w22 = weight(&mut f, "w2", &w2r, c, ht);
    let w2t = op(
        &mut f,
        "w2_t",
        "transpose",
        &[("perm", &k0.pm), ("x", &w22)],
    );
    let y = dyn_matmul(&mut f, &k0, "y0", &gt, &w2t, (ht, c, s));
    f.output(&y).expect("y0 is defined");
    f.output(&gt).expect("y1 is defined");
    let mut p = Program::new();
    p.functions.push(f.finish());
    p
}

/// Streamed projections of one normed input: input `[1, c, 1, input_width(Σ rows, s)]`
/// holding the activations then each matrix (`rows[i]` columns); outputs `y<i> [1, rows[i],
/// 1, s]`, named in return order.
pub fn streamed_projections_program(c: usize, rows: &[usize], s: usize) -> Program {
    let total: usize = rows.iter().sum();
    let mut f = FunctionBuilder::new("main", "ios18");
    let x = f.input(
        "x",
        ValueType::tensor(DType::Fp16, [1, c, 1, input_width(total, s)]),
    );
    let k0 = consts(&mut f);
    let act = slice(&mut f, &x, "act", c, 0, s);
    let mut at = s;
    let mut outputs = Vec::new();
    for (i, &m) in rows.iter().enumerate() {
        let w = slice(&mut f, &x, &format!("w{i}"), c, at, m);
        let w = weight(&mut f, &format!("y{i}"), &w, c, m);
        at += m;
        outputs.push(dyn_matmul(
            &mut f,
            &k0,
            &format!("y{i}"),
            &act,
            &w,
            (c, m, s),
        ));
    }
    for y in &outputs {
        f.output(y).expect("outputs are defined");
    }
    let mut p = Program::new();
    p.functions.push(f.finish());
    p
}

/// The hidden tile width for an FFN of `c` channels and `h` hidden features at `bucket`
/// tokens: the fewest tiles of equal width whose input (`input_width(3·ht, bucket)`) stays
/// within `max_dim` and whose down projection sums at most [`STREAMED_K_TILE`] hidden
/// features (the tiles' shares are summed by the host, as K tiles are), the width a multiple
/// of [`CHANNEL_ALIGN`] (so every weight slice starts aligned: the last tile's padding is
/// zero weights) unless `h` fits whole. `None` when even one hidden feature does not fit, or
/// when `c` is past [`STREAMED_FUSED_WIDTH`].
pub fn ffn_hidden_tile(c: usize, h: usize, bucket: usize, max_dim: usize) -> Option<usize> {
    let fits = |ht: usize| ht <= STREAMED_K_TILE && input_width(3 * ht, bucket) <= max_dim;
    if h == 0 || c > STREAMED_FUSED_WIDTH || !fits(1) {
        return None;
    }
    if fits(h) {
        return Some(h);
    }
    (2..=h)
        .map(|tiles| h.div_ceil(tiles).next_multiple_of(CHANNEL_ALIGN))
        .chain((1..=h).map(|tiles| h.div_ceil(tiles)))
        .find(|&ht| fits(ht))
}

/// Whether streamed projections of `c` channels into `rows` fit one input at the largest
/// token bucket, `c` within [`STREAMED_FUSED_WIDTH`].
pub fn projections_fit(c: usize, rows: &[usize], max_dim: usize) -> bool {
    c <= STREAMED_FUSED_WIDTH && input_width(rows.iter().sum(), token_chunk(max_dim)) <= max_dim
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::program::tests::refusals;

    #[test]
    fn streamed_programs_check_pass_the_rulebook_and_fit_a_7b() {
        let p = streamed_ffn_program(64, 96, 32);
        let f = ane_mil::check_program(&p, None).unwrap();
        assert_eq!(
            f[0].signature(),
            "main<ios18>(x: tensor<fp16, [1, 64, 1, 320]>) -> (y0: tensor<fp16, [1, 64, 1, 32]>, y1: tensor<fp16, [1, 96, 1, 32]>)"
        );
        assert_eq!(refusals(&p), Vec::<String>::new());
        let p = streamed_projections_program(64, &[64, 32, 32], 32);
        let f = ane_mil::check_program(&p, None).unwrap();
        assert!(f[0].signature().ends_with(
            "-> (y0: tensor<fp16, [1, 64, 1, 32]>, y1: tensor<fp16, [1, 32, 1, 32]>, y2: tensor<fp16, [1, 32, 1, 32]>)"
        ));
        assert_eq!(refusals(&p), Vec::<String>::new());
        // Llama-2-7B: the FFN in six hidden tiles of 1856 (the down projection's K within
        // 2048; slices at bucket + 0, 1856, 3712: aligned), Q/K/V in one input
        assert_eq!(ffn_hidden_tile(4096, 11008, 2048, 16384), Some(1856));
        assert_eq!(ffn_hidden_tile(4096, 11008, 32, 16384), Some(1856));
        // a 0.5B's FFN in three tiles of 1632 at any bucket
        assert_eq!(ffn_hidden_tile(896, 4864, 1024, 16384), Some(1632));
        assert_eq!(ffn_hidden_tile(896, 4864, 2048, 16384), Some(1632));
        let p = streamed_ffn_program(4096, 1856, 2048);
        assert_eq!(refusals(&p), Vec::<String>::new());
        assert!(projections_fit(4096, &[4096, 4096, 4096], 16384));
        assert!(!projections_fit(4096, &[8192, 8192], 16384));
        let p = streamed_projections_program(4096, &[4096, 4096, 4096], 2048);
        assert_eq!(refusals(&p), Vec::<String>::new());
        assert_eq!(ffn_hidden_tile(512, 1376, 2048, 16384), Some(1376));
        assert_eq!(ffn_hidden_tile(64, 5, 16384, 16384), None);
        // past prefill-bench's 5120-wide input (a 70B's 8192): node by node, K-tiled
        assert_eq!(ffn_hidden_tile(8192, 28672, 512, 16384), None);
        assert!(!projections_fit(8192, &[8192, 1024, 1024], 16384));
    }
}
