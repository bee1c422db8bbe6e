//! How a matmul job is cut into kernels: weight tiles within the engine's largest dimension,
//! token chunks and the power-of-two buckets kernels are compiled for, and a streamed
//! kernel's input width. Arithmetic only; the programs are in `program.rs`.

/// Tokens per kernel at most; longer prompts run in chunks of this many.
pub const MAX_TOKENS_PER_KERNEL: usize = 2048;

/// Channel counts, slice starts and hidden tiles are multiples of this: ironmill lists channel
/// alignment 32 (`docs/ane-constraints.md` L45-46 @a750b7d), and every slice of the public
/// dynamic-weight programs begins at a multiple of 256 (docs/ane-rules.md, `alignment`).
pub const CHANNEL_ALIGN: usize = 32;

/// Baked weights per program at most: the largest baked program cited as running with a CPU
/// check, maderix/ANE's classifier (`training/test_classifier.m`: a 32000 × 768 fp16 conv,
/// 49 152 000 bytes). Larger weights are cut into more tiles until a Mac measures its own
/// ceiling (docs/ane-rules.md, `program-weights`).
pub const MAX_BAKED_WEIGHT_BYTES: usize = 32000 * 768 * 2;

/// Input channels one conv of a baked kernel sums at most: a wider tile's K is cut, inside the
/// one program, into pieces of at most this many channels (multiples of [`CHANNEL_ALIGN`]),
/// each a conv against its own slice of the weights, the partial results added. Throughput
/// follows the summed dimension (trisanths/ane-llm-prefill `results/reduction_law.md`,
/// `results/roofline_aneforge.md` L17-24 @45f9692: 1–2 K pieces took 6.9 → 12.2 TFLOPS on an
/// M2 Pro); the form is maderix/ANE's: `training/test_fused_bwd.m` L55-175 (two 2048-channel
/// slices of a 4096-channel input, a conv each against baked weights, `add`, checked against
/// the CPU) and `training/stories_mil.h` L149-171 (`gen_qkvb`: three 768-channel pieces).
pub const BAKED_K_PIECE: usize = 2048;

/// Input channels a streamed kernel's conv sums at most: a wider K is cut into K tiles of at
/// most this many channels (multiples of [`CHANNEL_ALIGN`]), a kernel call each, their
/// results summed by the host in f32 — the form maderix/ane-prefill-bench runs on an M4:
/// `ane_prefill_27b.m` @bfa6bb4 L2253-2262 (`DOWN_K_TILE 2048`), L2694-2698 (one
/// `compile_dyn_conv(DOWN_K_TILE, DIM, CHUNK)` kernel per K tile) and L2364-2384 (each tile
/// evaluated, its output added into `ffn_down_accum`). No public program cuts a runtime
/// weight's K inside one program (maderix's `gen_ffn_bwd_w13t_dynamic` adds two whole
/// matrices' products), so the sum stays on the host. 2048 is where the K law peaks
/// (trisanths `results/reduction_law.md`: 7.64 TFLOPS at K = 2048, 5.72 at 4096, 3.26 at 8192).
pub const STREAMED_K_TILE: usize = 2048;

/// The widest input a streamed fused block's first products take whole (their K is the
/// model's width, and the block's nonlinearity needs their full sums): prefill-bench's
/// gate/up kernel, `compile_dyn_conv(DIM, INTER, CHUNK)` with `DIM` 5120 (`ane_prefill_27b.m`
/// @bfa6bb4 L36, L2690-2691), run whole beside its K-tiled down projection. Wider models run
/// those blocks node by node, K-tiled.
pub const STREAMED_FUSED_WIDTH: usize = 5120;

/// The K pieces `(first channel, channels)` of a baked kernel over `k` input channels: `k`
/// whole up to [`BAKED_K_PIECE`], else cut as tiles are (equal, aligned, the last shorter).
pub fn k_pieces(k: usize) -> Vec<(usize, usize)> {
    let piece = cut(k, BAKED_K_PIECE);
    (0..k)
        .step_by(piece.max(1))
        .map(|k0| (k0, piece.min(k - k0)))
        .collect()
}

/// The smallest token bucket of tiles with `bm` output and `bk` input channels: every runtime
/// input at least 32 wide — narrower ones return garbage with no error
/// (skyfallsin/apple-neural-engine-field-guide `README.md`@4a1b518; rulebook `narrow-input`),
/// not only beside more than 768 channels (`wide-channels-narrow-spatial`). Decode-sized jobs
/// pad to 32.
pub fn min_bucket(_bm: usize, _bk: usize) -> usize {
    ane_mil::rules::MIN_SPATIAL_FOR_WIDE
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
pub fn token_chunk(max_dim: usize) -> usize {
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

/// Baked tile sizes `(tm, tk)`: M and K cut into the fewest equal parts within `max_dim`,
/// aligned to [`CHANNEL_ALIGN`]; then M (and if that is not enough, K) cut further until a
/// tile's fp16 weights fit [`MAX_BAKED_WEIGHT_BYTES`].
pub fn tile_sizes(m: usize, k: usize, max_dim: usize) -> (usize, usize) {
    let (mut tm, mut tk) = (cut(m, max_dim), cut(k, max_dim));
    let values = MAX_BAKED_WEIGHT_BYTES / 2;
    if tm * tk > values {
        let rows = (values / tk) / CHANNEL_ALIGN * CHANNEL_ALIGN;
        if rows >= CHANNEL_ALIGN {
            tm = cut(m, rows);
        } else {
            tm = cut(m, CHANNEL_ALIGN);
            tk = cut(k, (values / tm) / CHANNEL_ALIGN * CHANNEL_ALIGN);
        }
    }
    (tm, tk)
}

/// Streamed tile sizes: M within what the input's width leaves beside the largest token
/// chunk (tokens and weight rows share the width), K within [`STREAMED_K_TILE`] (and
/// `max_dim`).
pub fn streamed_tile_sizes(m: usize, k: usize, max_dim: usize) -> (usize, usize) {
    (
        cut(m, max_dim - token_chunk(max_dim)),
        cut(k, STREAMED_K_TILE.min(max_dim)),
    )
}

/// `d` cut into the fewest parts of at most `limit`, each a multiple of [`CHANNEL_ALIGN`] but
/// the last (equal but for that rounding); `d` whole when it fits.
fn cut(d: usize, limit: usize) -> usize {
    let limit = limit.max(1);
    if d <= limit {
        return d.max(1);
    }
    let parts = d.div_ceil(limit);
    let t = d.div_ceil(parts).next_multiple_of(CHANNEL_ALIGN);
    if t <= limit {
        t
    } else {
        (limit / CHANNEL_ALIGN * CHANNEL_ALIGN).max(limit.min(CHANNEL_ALIGN))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_stay_within_the_limit_and_cover_the_job() {
        // baked: within the width and the cited 47 MiB a program (the 7B head: 6 tiles of
        // 5344 rows, 42 MiB; gate and up 2 × 5504 rows; down 2 × 2048 rows, its K whole)
        assert_eq!(tile_sizes(32000, 4096, 16384), (5344, 4096));
        assert_eq!(tile_sizes(11008, 4096, 16384), (5504, 4096));
        assert_eq!(tile_sizes(4096, 11008, 16384), (2048, 11008));
        assert_eq!(tile_sizes(4096, 4096, 16384), (4096, 4096));
        // streamed tiles leave the largest token chunk (2048) beside the weight rows, aligned;
        // their K is cut at 2048 (prefill-bench's DOWN_K_TILE): 4096 in two, 11008 in six
        // tiles of 1856 (the last 1728)
        assert_eq!(streamed_tile_sizes(32000, 4096, 16384), (10688, 2048));
        assert_eq!(
            kernel_shapes(32000, 4096, 512, 16384),
            vec![(10688, 2048, 512), (10624, 2048, 512)]
        );
        assert_eq!(streamed_tile_sizes(4096, 11008, 16384), (4096, 1856));
        assert_eq!(
            kernel_shapes(4096, 11008, 100, 16384),
            vec![(4096, 1856, 128), (4096, 1728, 128)]
        );
        // a 0.5B's 896 whole, its down projection's 4864 in three
        assert_eq!(streamed_tile_sizes(896, 896, 16384), (896, 896));
        assert_eq!(streamed_tile_sizes(896, 4864, 16384), (896, 1632));
        for (m, k) in [
            (32000, 4096),
            (4096, 11008),
            (896, 4864),
            (151936, 896),
            (5, 7),
        ] {
            let (_, tk) = streamed_tile_sizes(m, k, 16384);
            assert!(
                tk <= STREAMED_K_TILE && tk * k.div_ceil(tk) >= k,
                "{m}x{k}: {tk}"
            );
            assert!(tk.is_multiple_of(CHANNEL_ALIGN) || tk == k, "{m}x{k}: {tk}");
        }
        assert_eq!(cut(32001, 16384), 16032);
        assert_eq!(tile_sizes(5, 20000, 16384), (5, 10016));
        for m in [32000, 11008, 4096, 151936, 4864] {
            for k in [4096, 11008, 896, 14336] {
                let (tm, tk) = tile_sizes(m, k, 16384);
                assert!(2 * tm * tk <= MAX_BAKED_WEIGHT_BYTES, "{m}x{k}: {tm}x{tk}");
                assert!(tm.is_multiple_of(CHANNEL_ALIGN) || tm == m, "{m}x{k}: {tm}");
                assert!(tk.is_multiple_of(CHANNEL_ALIGN) || tk == k, "{m}x{k}: {tk}");
            }
        }
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
        // every input at least 32 wide (rule narrow-input)
        assert_eq!(min_bucket(4096, 64), 32);
        assert_eq!(min_bucket(768, 768), 32);
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
            vec![(4096, 2048, 1024), (4096, 2048, 2048)]
        );
    }
}
