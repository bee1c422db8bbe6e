//! The host's share of a matmul call, as `matmul/pipeline.rs` makes it — one streamed weight
//! tile (K tiles of at most 2048) — at a 7B layer's shapes and a 0.5B's; each step beside a
//! plain memcpy of the bytes it reads or writes (f32 activations and results, the fp16 weight
//! tile), in the same run (the floor for moving them; #23 asks for at most 2× at 4 MiB and
//! more):
//! - `stage_acts`: the activations (f32 rows) into a kernel input's columns, summing their
//!   squares for the precision check as the first weight tile does (`stage_columns`: every
//!   streamed and baked call);
//! - `stage_weights`: an F16 model's weight tile copied into the columns beside them
//!   (`stage_columns`: a streamed weight staged the first time; kept staged afterwards);
//! - `stage_weights q8_0`: a whole M tile from Q8_0 blocks (ggml's: 32 int8 values and an fp16
//!   scale): its rows dequantised once over all of K (here by the bench, by ggml's
//!   `to_float` in production), then every K tile staged from them;
//! - `write_back`: the kernel's fp16 output `[1, m, 1, bucket]` into f32 rows `[n, m]`
//!   (`accumulate_columns`: straight into the sink's rows, as a call into ggml's tensor does).
//!
//! `cargo bench -p ane-runtime` runs 32 and 512 tokens; `ANE_BENCH_ALL_TOKENS=1` adds 128 and
//! 2048. Add `-- --quick` for a fast pass. Benchmarks report; the tests assert.
#![allow(
    missing_docs,
    reason = "criterion's macros generate undocumented functions"
)]

use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode,
    Throughput,
};

use ane_runtime::matmul::{
    input_width, min_bucket, streamed_tile_sizes, token_bucket, DenseRows, HalfRows, MatrixSource,
};
use ane_runtime::staging::{accumulate_columns, convert_weight_rows, recycle, stage_columns};
use ane_runtime::{Surface, SurfaceDType, TensorLayout};

/// A 7B layer's weights `(m, k)` (attention projections, gate and up, down), then a 0.5B's
/// (Qwen2.5-0.5B: 896 wide, FFN 4864).
const LAYERS: &[(usize, usize)] = &[
    (4096, 4096),
    (11008, 4096),
    (4096, 11008),
    (896, 896),
    (4864, 896),
    (896, 4864),
];
/// Prompt lengths run by default, and those `ANE_BENCH_ALL_TOKENS=1` adds.
const TOKENS: &[usize] = &[32, 512];
const MORE_TOKENS: &[usize] = &[128, 2048];
/// The ANE's largest dimension: the token buckets and input widths kernels have there.
const MAX_DIM: usize = 16384;

fn tokens() -> Vec<usize> {
    let mut t = TOKENS.to_vec();
    if std::env::var_os("ANE_BENCH_ALL_TOKENS").is_some_and(|v| v != "0") {
        t.extend_from_slice(MORE_TOKENS);
        t.sort_unstable();
    }
    t
}

/// Rows of Q8_0 blocks: per 32 values an fp16 scale and 32 int8s.
struct Q8Rows {
    k: usize,
    scales: Vec<half::f16>,
    quants: Vec<i8>,
}

impl Q8Rows {
    fn of(values: &[f32], k: usize) -> Self {
        let (mut scales, mut quants) = (Vec::new(), Vec::new());
        for block in values.chunks(32) {
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            scales.push(half::f16::from_f32(d));
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            quants.extend(block.iter().map(|v| (v * inv).round() as i8));
        }
        Q8Rows { k, scales, quants }
    }
}

impl MatrixSource for Q8Rows {
    fn read_row(&self, _b2: usize, _b3: usize, row: usize, out: &mut [f32]) {
        let first = row * self.k / 32;
        let quants = &self.quants[row * self.k..][..self.k];
        for (i, (o, q)) in out[..self.k]
            .chunks_mut(32)
            .zip(quants.chunks(32))
            .enumerate()
        {
            let d = self.scales[first + i].to_f32();
            for (o, &q) in o.iter_mut().zip(q) {
                *o = f32::from(q) * d;
            }
        }
    }
}

fn values(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i % 1000) as f32 * 1e-3 - 0.5).collect()
}

fn surface(dims: &[usize]) -> Surface {
    Surface::new(TensorLayout::aligned("x", SurfaceDType::F16, dims, 64).expect("a valid layout"))
}

/// A plain copy of `bytes` bytes, named after the step it is the floor of.
fn memcpy(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, step: &str, bytes: usize) {
    let (from, mut to) = (vec![7u8; bytes], vec![0u8; bytes]);
    g.bench_function(BenchmarkId::new("memcpy", step), |b| {
        b.iter(|| to.copy_from_slice(std::hint::black_box(&from)))
    });
}

/// One streamed weight tile's calls, as the pipeline makes them: the tile is `tm × tk` of the
/// `m × k` weight (K tiles of at most 2048), its activations the tokens' `tk` features, its
/// result `tm` features of every token written into rows `m` wide.
fn layer(c: &mut Criterion, (m, k): (usize, usize)) {
    let mut g = c.benchmark_group(format!("{m}x{k}"));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sampling_mode(SamplingMode::Flat);
    let (tm, tk) = streamed_tile_sizes(m, k, MAX_DIM);
    let largest = tokens().into_iter().max().unwrap_or(1);
    let acts_all = DenseRows::new(largest, k, values(largest * k));
    let weights = HalfRows {
        rows: m,
        k,
        batch0: 1,
        data: values(m * k).into_iter().map(half::f16::from_f32).collect(),
    };
    for n in tokens() {
        let bucket = token_bucket(n, MAX_DIM, min_bucket(tm, tk));
        let mut input = surface(&[1, tk, 1, input_width(tm, bucket)]);
        let step = format!("stage_acts {n}");
        g.throughput(Throughput::Bytes((2 * n * tk) as u64));
        g.bench_function(BenchmarkId::new("staging", &step), |b| {
            b.iter(|| {
                let mut sum_sq = 0f64;
                stage_columns(
                    &mut input,
                    &acts_all,
                    (0, 0),
                    (0, n),
                    (0, tk),
                    k,
                    0,
                    Some(&mut sum_sq),
                );
                sum_sq
            })
        });
        // the f32 activations staging reads
        memcpy(&mut g, &step, 4 * n * tk);

        let mut y = surface(&[1, tm, 1, bucket]);
        y.write_f32(&values(tm * bucket))
            .expect("the output's size");
        let mut out = vec![0f32; n * m];
        let step = format!("write_back {n}");
        g.throughput(Throughput::Bytes((4 * n * tm) as u64));
        g.bench_function(BenchmarkId::new("staging", &step), |b| {
            b.iter(|| accumulate_columns(&y, &mut out, m, (0, n), (0, tm), true))
        });
        memcpy(&mut g, &step, 4 * n * tm);
    }
    // the weights do not depend on the token count: the largest bucket's column offset
    let bucket = token_bucket(largest, MAX_DIM, min_bucket(tm, tk));
    let mut input = surface(&[1, tk, 1, input_width(tm, bucket)]);
    g.throughput(Throughput::Bytes((2 * tm * tk) as u64));
    g.bench_function(BenchmarkId::new("staging", "stage_weights"), |b| {
        b.iter(|| {
            stage_columns(
                &mut input,
                &weights,
                (0, 0),
                (0, tm),
                (0, tk),
                k,
                bucket,
                None,
            )
        })
    });
    // the fp16 tile staging writes
    memcpy(&mut g, "stage_weights", 2 * tm * tk);
    // a quantised weight: its M tile's rows converted once over all of K, every K tile
    // staged from them (as the pipeline does the first time)
    let quantised = Q8Rows::of(&values(m * k), k);
    g.throughput(Throughput::Bytes((2 * tm * k) as u64));
    g.bench_function(BenchmarkId::new("staging", "stage_weights q8_0"), |b| {
        b.iter(|| {
            let rows = convert_weight_rows(&quantised, (0, 0), (0, tm), k);
            for k0 in (0..k).step_by(tk) {
                let cols = (k0, tk.min(k - k0));
                stage_columns(&mut input, &rows, (0, 0), (0, tm), cols, k, bucket, None);
            }
            recycle(rows);
        })
    });
    memcpy(&mut g, "stage_weights q8_0", 2 * tm * k);
    g.finish();
}

fn seven_b_layer(c: &mut Criterion) {
    for &shape in LAYERS {
        layer(c, shape);
    }
}

criterion_group!(benches, seven_b_layer);
criterion_main!(benches);
