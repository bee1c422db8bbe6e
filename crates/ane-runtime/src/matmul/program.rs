//! The MIL program for one matmul tile, and how a job is cut into tiles.

use ane_mil::builder::FunctionBuilder;
use ane_mil::ir::{Arg, BlobRef, Literal, Program};
use ane_mil::{BlobWriter, DType, ValueType, WeightFiles};
use half::f16;

/// Tokens per kernel at most; longer prompts run in chunks of this many.
pub const MAX_TOKENS_PER_KERNEL: usize = 2048;

/// The token count a kernel is compiled for: the next power of two (so a job of any length
/// needs at most a dozen kernel sizes per weight shape, and pads at most 2×), within
/// [`MAX_TOKENS_PER_KERNEL`] and `max_dim`.
pub fn token_bucket(n: usize, max_dim: usize) -> usize {
    n.max(1).next_power_of_two().min(token_chunk(max_dim))
}

/// The largest token bucket: the chunk length for long prompts.
fn token_chunk(max_dim: usize) -> usize {
    let cap = MAX_TOKENS_PER_KERNEL.min(max_dim.max(1));
    // the largest power of two within the cap
    1 << (usize::BITS - 1 - cap.leading_zeros())
}

/// The token chunks of a job: `(first token, tokens, bucket)`.
pub fn token_chunks(n: usize, max_dim: usize) -> Vec<(usize, usize, usize)> {
    let chunk = token_chunk(max_dim);
    (0..n)
        .step_by(chunk)
        .map(|n0| {
            let len = chunk.min(n - n0);
            (n0, len, token_bucket(len, max_dim))
        })
        .collect()
}

/// Tile sizes `(tm, tk)`: M and K cut into the fewest equal parts within `max_dim`.
pub fn tile_sizes(m: usize, k: usize, max_dim: usize) -> (usize, usize) {
    let cut = |d: usize| {
        let parts = d.div_ceil(max_dim.max(1)).max(1);
        d.div_ceil(parts).max(1)
    };
    (cut(m), cut(k))
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
fn token_buckets(n: usize, max_dim: usize) -> Vec<usize> {
    let mut buckets: Vec<usize> = token_chunks(n, max_dim).iter().map(|c| c.2).collect();
    buckets.sort_unstable();
    buckets.dedup();
    buckets
}

/// The distinct kernel shapes `(bm, bk, bucket)` a job of `m × k × n` needs.
pub fn kernel_shapes(m: usize, k: usize, n: usize, max_dim: usize) -> Vec<(usize, usize, usize)> {
    let (tm, tk) = tile_sizes(m, k, max_dim);
    let buckets = token_buckets(n, max_dim);
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
    let buckets = token_buckets(n, max_dim);
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

/// `y[n, m] = a[n, k] · b[m, k]ᵀ` with fp16 inputs `a` (activations) and `b` (weights).
///
/// Input names sort in the order the kernel binds them (`a` then `b`), as the ANE binds
/// inputs alphabetically.
pub fn matmul_program(m: usize, k: usize, n: usize) -> Program {
    let mut f = FunctionBuilder::new("main", "ios18");
    let a = f.input("a", ValueType::tensor(DType::Fp16, [n, k]));
    let b = f.input("b", ValueType::tensor(DType::Fp16, [m, k]));
    finish_matmul(f, (a, false), (b, true))
}

/// The same product from one input surface (docs/ane-notes.md#packed-form), for engines that reject
/// two-input requests: `x` is `[1, k, 1, n + m]`, row `d` holding feature `d` of every token
/// and then column `d` of every weight row — `[a | b]ᵀ`. Sliced apart, reshaped, and
/// multiplied with `transpose_x`, the output is `y[n, m]` as from [`matmul_program`].
pub fn packed_matmul_program(m: usize, k: usize, n: usize) -> Program {
    let mut f = FunctionBuilder::new("main", "ios18");
    let x = f.input("x", ValueType::tensor(DType::Fp16, [1, k, 1, n + m]));
    let mut part = |name: &str, first: usize, width: usize| {
        let begin = f.constant(
            &format!("{name}_begin"),
            Literal::int32s(&[0, 0, 0, first as i32]),
        );
        let size = f.constant(
            &format!("{name}_size"),
            Literal::int32s(&[1, k as i32, 1, width as i32]),
        );
        let sliced = f
            .op(
                &format!("{name}_cols"),
                "slice_by_size",
                &[
                    ("begin", Arg::Var(begin)),
                    ("size", Arg::Var(size)),
                    ("x", Arg::Var(x.clone())),
                ],
            )
            .expect("the packed program is well-typed");
        let shape = f.constant(
            &format!("{name}_shape"),
            Literal::int32s(&[k as i32, width as i32]),
        );
        f.op(
            &format!("{name}_t"),
            "reshape",
            &[("shape", Arg::Var(shape)), ("x", Arg::Var(sliced))],
        )
        .expect("the packed program is well-typed")
    };
    let a_t = part("a", 0, n);
    let b_t = part("b", n, m);
    finish_matmul(f, (a_t, true), (b_t, false))
}

/// Adds `y = matmul(x, y)` (each operand with its transpose flag) as the output and wraps
/// the function.
fn finish_matmul(
    mut f: FunctionBuilder,
    (a, transpose_a): (String, bool),
    (w, transpose_w): (String, bool),
) -> Program {
    let tx = f.constant("tx", Literal::bool(transpose_a));
    let ty = f.constant("ty", Literal::bool(transpose_w));
    let y = f
        .op(
            "y",
            "matmul",
            &[
                ("transpose_x", Arg::Var(tx)),
                ("transpose_y", Arg::Var(ty)),
                ("x", Arg::Var(a)),
                ("y", Arg::Var(w)),
            ],
        )
        .expect("the tile program is well-typed");
    f.output(&y).expect("y is defined");
    let mut p = Program::new();
    p.functions.push(f.finish());
    p
}

/// Where a baked kernel's weight tile lives.
pub(crate) const BAKED_WEIGHT_PATH: &str = "@model_path/weights/weight.bin";

/// `y[n, m] = a[n, k] · W[m, k]ᵀ` with the weight tile baked in as a BLOBFILE constant: one
/// compile per (weight tile, token bucket), and only the activations cross per call.
pub fn baked_matmul_program(m: usize, k: usize, n: usize) -> Program {
    let mut f = FunctionBuilder::new("main", "ios18");
    let a = f.input("a", ValueType::tensor(DType::Fp16, [n, k]));
    let w = f.constant(
        "W",
        Literal::Blob(BlobRef {
            dtype: DType::Fp16,
            shape: vec![m, k],
            path: BAKED_WEIGHT_PATH.to_string(),
            // the first blob of a file: its metadata record follows the 64-byte header
            offset: 64,
        }),
    );
    finish_matmul(f, (a, false), (w, true))
}

/// The weight file of a baked kernel: the fp16 tile `[m, k]`, row-major.
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

    #[test]
    fn tiles_stay_within_the_limit_and_cover_the_job() {
        assert_eq!(tile_sizes(32000, 4096, 16384), (16000, 4096));
        assert_eq!(
            kernel_shapes(32000, 4096, 512, 16384),
            vec![(16000, 4096, 512)]
        );
        assert_eq!(tile_sizes(32001, 4096, 16384), (16001, 4096));
        assert_eq!(
            kernel_shapes(32001, 4096, 512, 16384),
            vec![(16001, 4096, 512), (16000, 4096, 512)]
        );
        assert_eq!(tile_sizes(5, 20000, 16384), (5, 10000));
        for (d, max) in [(1, 16384), (16385, 16384), (100, 7), (49152, 16384)] {
            let (t, _) = tile_sizes(d, 1, max);
            assert!(t <= max && t * d.div_ceil(t) >= d);
        }
    }

    #[test]
    fn tokens_go_in_power_of_two_buckets_and_long_prompts_in_chunks() {
        assert_eq!(
            [1, 2, 3, 17, 64, 100, 2000].map(|n| token_bucket(n, 16384)),
            [1, 2, 4, 32, 64, 128, 2048]
        );
        assert_eq!(
            token_chunks(5000, 16384),
            vec![(0, 2048, 2048), (2048, 2048, 2048), (4096, 904, 1024)]
        );
        assert_eq!(
            token_chunks(100, 48),
            vec![(0, 32, 32), (32, 32, 32), (64, 32, 32), (96, 4, 4)]
        );
        assert_eq!(
            kernel_shapes(32000, 4096, 5000, 16384),
            vec![(16000, 4096, 1024), (16000, 4096, 2048)]
        );
    }

    #[test]
    fn the_program_checks() {
        let p = matmul_program(3, 5, 7);
        let f = ane_mil::check_program(&p, None).unwrap();
        assert_eq!(f[0].signature(), "main<ios18>(a: tensor<fp16, [7, 5]>, b: tensor<fp16, [3, 5]>) -> (y: tensor<fp16, [7, 3]>)");
        let p = packed_matmul_program(3, 5, 7);
        let f = ane_mil::check_program(&p, None).unwrap();
        assert_eq!(
            f[0].signature(),
            "main<ios18>(x: tensor<fp16, [1, 5, 1, 10]>) -> (y: tensor<fp16, [7, 3]>)"
        );
        let w = baked_weights(&[f16::ONE; 15]);
        let p = baked_matmul_program(3, 5, 7);
        let f = ane_mil::check_program(&p, Some(&w)).unwrap();
        assert_eq!(
            f[0].signature(),
            "main<ios18>(a: tensor<fp16, [7, 5]>) -> (y: tensor<fp16, [7, 3]>)"
        );
    }
}
