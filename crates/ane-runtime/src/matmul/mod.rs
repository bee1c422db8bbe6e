//! Batched matrix multiplication on an engine, with a CPU path that never fails.
//!
//! The job is ggml's MUL_MAT without ggml: `dst[b][n][m] = Σ_k w[b'][m][k] · a[b][n][k]`
//! for every batch `b = (b2, b3)`, where the weight batch `b'` broadcasts
//! (`b' = (b2 / (B2 / W2), b3 / (B3 / W3))`). Callers describe their tensors through
//! [`MatrixSource`] and [`MatrixSink`]; this module tiles the job to the engine's limits,
//! compiles (or reuses) one kernel per tile shape, stages f32 rows into fp16 surfaces, and
//! accumulates K tiles in f32. Any engine failure — compile, budget, eval, a non-finite
//! output — is returned as a [`FallbackReason`] so the caller can run [`cpu_matmul`] instead.

mod pipeline;
pub(crate) mod precision;
pub mod probe;
mod program;
mod stats;
pub mod tiling;

// The kernel cache, the kernel-kind policy and staging are shared with fused blocks and live
// at the crate's top; their old paths under `matmul` stay importable.
pub use crate::kernels::policy;
pub use crate::kernels::{KernelCache, DEFAULT_MAX_LOADED, EVAL_FAILURES_BEFORE_GIVING_UP};
pub use crate::staging::{stage_columns, stage_rows, DEFAULT_STAGED_WEIGHTS_BYTES};
pub use policy::{KernelKind, KernelPolicy, LoadedRoom, WeightId};
pub use precision::MAX_PREDICTED_NMSE;
pub(crate) use program::{baked_conv, weight_pieces, ConvArgs};
pub use program::{baked_matmul_program, baked_weights, matmul_program, two_input_matmul_program};
pub use stats::{FallbackReason, Stats, StatsSnapshot};
pub use tiling::{
    baked_tiles, input_width, k_pieces, kernel_shapes, min_bucket, streamed_tile_sizes, tile_sizes,
    token_bucket, token_chunk, token_chunks, BakedTile, BAKED_K_PIECE, CHANNEL_ALIGN,
    MAX_BAKED_WEIGHT_BYTES, MAX_TOKENS_PER_KERNEL, STREAMED_FUSED_WIDTH, STREAMED_K_TILE,
};

use std::time::Instant;

use rayon::prelude::*;

use crate::engine::Engine;
use crate::staging::convert::PARALLEL_MIN_VALUES;
use crate::sys::gemm::{gemm_f32, MatRef};

/// Shape of a batched matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulShape {
    /// Output features (weight rows).
    pub m: usize,
    /// Reduction length.
    pub k: usize,
    /// Tokens (activation rows).
    pub n: usize,
    /// Batches of the activations and of the output: `[B2, B3]`.
    pub batch: [usize; 2],
    /// Batches of the weights: `[W2, W3]`, each dividing the matching `batch`.
    pub weight_batch: [usize; 2],
}

impl MatmulShape {
    /// One `m × k` weight matrix times `n` tokens, no batches.
    pub fn new(m: usize, k: usize, n: usize) -> Self {
        MatmulShape {
            m,
            k,
            n,
            batch: [1, 1],
            weight_batch: [1, 1],
        }
    }

    /// The same shape over batches `[B2, B3]` of activations and `[W2, W3]` of weights (each
    /// dividing the matching `batch`: the weights broadcast).
    pub fn batched(self, batch: [usize; 2], weight_batch: [usize; 2]) -> Self {
        MatmulShape {
            batch,
            weight_batch,
            ..self
        }
    }

    /// Floating-point operations (2·M·K·N per batch).
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.k * self.n * self.batch[0] * self.batch[1]) as f64
    }

    /// Elements of the result, over all batches.
    pub fn outputs(&self) -> usize {
        self.m * self.n * self.batch[0] * self.batch[1]
    }

    fn weight_index(&self, b2: usize, b3: usize) -> (usize, usize) {
        (
            b2 / (self.batch[0] / self.weight_batch[0]),
            b3 / (self.batch[1] / self.weight_batch[1]),
        )
    }
}

/// One batched matmul: its shape, where its operands come from and where the result goes.
#[derive(Clone, Copy)]
pub struct MatmulJob<'a> {
    /// The shape.
    pub shape: MatmulShape,
    /// Weights `[W3][W2][M][K]`.
    pub weights: &'a dyn MatrixSource,
    /// Activations `[B3][B2][N][K]`.
    pub acts: &'a dyn MatrixSource,
    /// Result `[B3][B2][N][M]`.
    pub dst: &'a dyn MatrixSink,
    /// Set when the weights will not change in place: they may then be baked into kernels
    /// (see [`policy`]). `None` always streams them.
    pub weight_id: Option<WeightId>,
}

/// Reads rows of a matrix batch as f32.
pub trait MatrixSource: Sync {
    /// Writes row `row` of batch `(b2, b3)` (all K values) into `out`.
    fn read_row(&self, b2: usize, b3: usize, row: usize, out: &mut [f32]);

    /// The row itself, when it is stored as contiguous f32 (saves a copy while staging).
    fn row_f32(&self, _b2: usize, _b3: usize, _row: usize) -> Option<&[f32]> {
        None
    }

    /// The row itself, when it is stored as contiguous fp16: staged by a plain copy, no
    /// conversion at all.
    fn row_f16(&self, _b2: usize, _b3: usize, _row: usize) -> Option<&[half::f16]> {
        None
    }

    /// Row `row` as f32, however it is stored: borrowed when it is f32, else converted into
    /// `tmp` (K long). The one dispatch over the three ways a row can be read.
    fn row_as_f32<'a>(&'a self, b2: usize, b3: usize, row: usize, tmp: &'a mut [f32]) -> &'a [f32] {
        if let Some(h) = self.row_f16(b2, b3, row) {
            crate::sys::fp16::f16_to_f32(&mut tmp[..h.len()], h);
            return &tmp[..h.len()];
        }
        if self.row_f32(b2, b3, row).is_some() {
            // borrowck: a second call returns the same slice
            return self.row_f32(b2, b3, row).unwrap_or_default();
        }
        self.read_row(b2, b3, row, tmp);
        tmp
    }
}

/// Row-major fp16 matrices in memory, `[B3][B2][rows][k]` (an F16 model's weights).
#[derive(Clone, Debug, PartialEq)]
pub struct HalfRows {
    /// Rows per matrix.
    pub rows: usize,
    /// Values per row.
    pub k: usize,
    /// Matrices along the first batch axis (`B2`).
    pub batch0: usize,
    /// All values.
    pub data: Vec<half::f16>,
}

impl HalfRows {
    fn row(&self, b2: usize, b3: usize, row: usize) -> &[half::f16] {
        &self.data[((b3 * self.batch0 + b2) * self.rows + row) * self.k..][..self.k]
    }
}

impl MatrixSource for HalfRows {
    fn read_row(&self, b2: usize, b3: usize, row: usize, out: &mut [f32]) {
        crate::sys::fp16::f16_to_f32(&mut out[..self.k], self.row(b2, b3, row));
    }

    fn row_f16(&self, b2: usize, b3: usize, row: usize) -> Option<&[half::f16]> {
        Some(self.row(b2, b3, row))
    }
}

/// Row-major f32 matrices in memory, `[B3][B2][rows][k]`: the simplest [`MatrixSource`].
#[derive(Clone, Debug, PartialEq)]
pub struct DenseRows {
    /// Rows per matrix.
    pub rows: usize,
    /// Values per row.
    pub k: usize,
    /// Matrices along the first batch axis (`B2`).
    pub batch0: usize,
    /// All values.
    pub data: Vec<f32>,
}

impl DenseRows {
    /// One `rows × k` matrix.
    pub fn new(rows: usize, k: usize, data: Vec<f32>) -> Self {
        debug_assert_eq!(data.len(), rows * k);
        DenseRows {
            rows,
            k,
            batch0: 1,
            data,
        }
    }

    fn start(&self, b2: usize, b3: usize, row: usize) -> usize {
        ((b3 * self.batch0 + b2) * self.rows + row) * self.k
    }
}

impl MatrixSource for DenseRows {
    fn read_row(&self, b2: usize, b3: usize, row: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.data[self.start(b2, b3, row)..][..self.k]);
    }

    fn row_f32(&self, b2: usize, b3: usize, row: usize) -> Option<&[f32]> {
        Some(&self.data[self.start(b2, b3, row)..][..self.k])
    }
}

/// Receives rows of the result.
pub trait MatrixSink: Sync {
    /// Stores row `n` (all M values) of batch `(b2, b3)`.
    fn write_row(&self, b2: usize, b3: usize, n: usize, values: &[f32]);

    /// Hands `f` batch `(b2, b3)`'s rows as one f32 slice — row `n`'s M values at
    /// `n · stride` (`stride ≥ M`; the last row may end after its M values) — to write results
    /// straight into, and returns `true`; or returns `false`, calling nothing, where the rows
    /// are not plain f32 memory (then results come through [`MatrixSink::write_row`]). The
    /// engine writes in place this way, with no buffer and no second pass; the caller calls it
    /// for one batch at a time.
    fn with_rows_mut(&self, _b2: usize, _b3: usize, _f: &mut dyn FnMut(&mut [f32], usize)) -> bool {
        false
    }
}

/// A result collected in memory, `[B3][B2][N][M]` row-major: the simplest [`MatrixSink`].
#[derive(Debug)]
pub struct DenseSink {
    /// Values per row (M).
    pub m: usize,
    /// Rows per batch (N).
    pub n: usize,
    /// Batches along the first axis (`B2`).
    pub batch0: usize,
    /// All values (NaN until written, so rows never written show).
    pub data: std::sync::Mutex<Vec<f32>>,
}

impl DenseSink {
    /// Room for the result of a job of `shape`.
    pub fn for_shape(shape: MatmulShape) -> Self {
        DenseSink {
            m: shape.m,
            n: shape.n,
            batch0: shape.batch[0],
            data: std::sync::Mutex::new(vec![f32::NAN; shape.outputs()]),
        }
    }

    /// The values written so far.
    pub fn values(&self) -> Vec<f32> {
        self.data.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl MatrixSink for DenseSink {
    fn write_row(&self, b2: usize, b3: usize, n: usize, values: &[f32]) {
        let b = b3 * self.batch0 + b2;
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        data[(b * self.n + n) * self.m..][..self.m].copy_from_slice(values);
    }

    fn with_rows_mut(&self, b2: usize, b3: usize, f: &mut dyn FnMut(&mut [f32], usize)) -> bool {
        let b = b3 * self.batch0 + b2;
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut data[b * self.n * self.m..][..self.n * self.m], self.m);
        true
    }
}

/// Grow-only buffers reused across calls (one per backend instance).
#[derive(Default, Debug)]
pub struct Scratch {
    w: Vec<f32>,
    a: Vec<f32>,
    out: Vec<f32>,
}

fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// Runs `f` on each `len`-long row of `data`: on this thread for small data, on the thread
/// pool past [`PARALLEL_MIN_VALUES`].
fn for_rows<T: Send + Sync>(data: &mut [T], len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if len == 0 {
        return;
    }
    if data.len() < PARALLEL_MIN_VALUES {
        data.chunks_mut(len)
            .enumerate()
            .for_each(|(r, row)| f(r, row));
    } else {
        data.par_chunks_mut(len)
            .enumerate()
            .for_each(|(r, row)| f(r, row));
    }
}

fn load_matrix(src: &dyn MatrixSource, b2: usize, b3: usize, k: usize, dst: &mut [f32]) {
    for_rows(dst, k, |r, row| src.read_row(b2, b3, r, row));
}

/// Loads batch `b`'s weights and activations into the scratch as dense f32; returns `(b2, b3)`.
fn load_batch(job: &MatmulJob<'_>, b: usize, scratch: &mut Scratch) -> (usize, usize) {
    let MatmulShape { m, k, n, batch, .. } = job.shape;
    let (b2, b3) = (b % batch[0], b / batch[0]);
    let (w2, w3) = job.shape.weight_index(b2, b3);
    load_matrix(job.weights, w2, w3, k, grow(&mut scratch.w, m * k));
    load_matrix(job.acts, b2, b3, k, grow(&mut scratch.a, n * k));
    (b2, b3)
}

fn store(sink: &dyn MatrixSink, b2: usize, b3: usize, m: usize, out: &[f32]) {
    if m == 0 {
        return;
    }
    if out.len() < PARALLEL_MIN_VALUES {
        out.chunks(m)
            .enumerate()
            .for_each(|(n, row)| sink.write_row(b2, b3, n, row));
    } else {
        out.par_chunks(m)
            .enumerate()
            .for_each(|(n, row)| sink.write_row(b2, b3, n, row));
    }
}

/// Jobs with fewer result elements go to the CPU. fp16 inputs put an error of about
/// 2^-12·sqrt(K)·rms(a·b) on each dot product; a lone dot product that cancels to near zero is
/// then relatively far off (uniform ±1 data, K = 2048: NMSE > 5e-4 in 0.7 % of single-output
/// jobs, 0.02 % of two-output jobs, never in 50 000 four-output ones). With 16 outputs the
/// tensor's error is an average that cannot be dominated by one such element — and a job this
/// small never pays for an engine dispatch anyway.
pub const MIN_ENGINE_OUTPUTS: usize = 16;

/// Runs the job on `engine` and says which kernel kind did, or says why it could not. On
/// failure some rows may already have been written (results go straight into a sink that
/// lends its rows, and a tile's overflow or the precision check is seen only as it is written
/// back); the caller recomputes the whole output (as [`cpu_matmul`] does). Failures before any
/// evaluation (shape, compile, budget) leave it untouched.
///
/// Baked or streamed kernels as the cache's [`KernelPolicy`] decides; under `auto`, a baked
/// kernel that the budget refuses is replaced by the streamed path, not the CPU.
pub fn engine_matmul(
    engine: &dyn Engine,
    cache: &KernelCache,
    job: &MatmulJob<'_>,
    scratch: &mut Scratch,
    stats: &Stats,
) -> Result<KernelKind, FallbackReason> {
    let shape = &job.shape;
    if shape.outputs() < MIN_ENGINE_OUTPUTS {
        return Err(FallbackReason::FewOutputs(shape.outputs()));
    }
    let policy = cache.policy();
    let clock = Instant::now();
    let guard = precision::Guard::new(cache, job, engine.limits().accumulator);
    stats.add_staging(clock.elapsed());
    // planning: the tiles, and every kernel fetched (or compiled: compiles are counted, and
    // the bench reports their time apart)
    let clock = Instant::now();
    if let Some(id) = job.weight_id.filter(|_| shape.weight_batch == [1, 1]) {
        let limits = engine.limits();
        let tiles = baked_tiles(shape.m, shape.k, shape.n, limits.max_dim);
        let room = policy::LoadedRoom {
            baked_loaded: cache.loaded().1 as u32,
            max_loaded: cache.max_loaded().map(|c| c as u32),
        };
        if policy::should_bake(policy, &limits, room, || cache.baked_missing(&id, &tiles)) {
            let plan = pipeline::plan_baked(engine, cache, job, &id, &tiles, stats);
            stats.add_planning(clock.elapsed());
            match plan
                .and_then(|plan| pipeline::run_plan(&plan, cache, job, &guard, scratch, stats))
            {
                Ok(kind) => return Ok(kind),
                // auto: a baked kernel the budget refuses is served streamed, not by the CPU
                Err(FallbackReason::Budget) if policy == KernelPolicy::Auto => {}
                Err(e) => return Err(e),
            }
        }
    }
    let clock = Instant::now();
    let plan = pipeline::plan_streamed(engine, cache, job, stats);
    stats.add_planning(clock.elapsed());
    pipeline::run_plan(&plan?, cache, job, &guard, scratch, stats)
}

/// The job in f32 on the CPU (multi-threaded GEMM); the path of last resort.
pub fn cpu_matmul(job: &MatmulJob<'_>, scratch: &mut Scratch) {
    let (shape, sink) = (job.shape, job.dst);
    let MatmulShape { m, k, n, .. } = shape;
    for b in 0..shape.batch[0] * shape.batch[1] {
        let (b2, b3) = load_batch(job, b, scratch);
        let out = grow(&mut scratch.out, n * m);
        // out[n × m] = a[n × k] · wᵀ (w is m × k row-major)
        let a = MatRef {
            data: &scratch.a,
            offset: 0,
            rows: n,
            cols: k,
            row_stride: k,
            col_stride: 1,
        };
        let w = MatRef {
            data: &scratch.w,
            offset: 0,
            rows: k,
            cols: m,
            row_stride: 1,
            col_stride: k,
        };
        gemm_f32(out, a, w, rayon::current_num_threads());
        store(sink, b2, b3, m, &scratch.out[..n * m]);
    }
}
