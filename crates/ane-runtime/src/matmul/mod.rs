//! Batched matrix multiplication on an engine, with a CPU path that never fails.
//!
//! The job is ggml's MUL_MAT without ggml: `dst[b][n][m] = Σ_k w[b'][m][k] · a[b][n][k]`
//! for every batch `b = (b2, b3)`, where the weight batch `b'` broadcasts
//! (`b' = (b2 / (B2 / W2), b3 / (B3 / W3))`). Callers describe their tensors through
//! [`MatrixSource`] and [`MatrixSink`]; this module tiles the job to the engine's limits,
//! compiles (or reuses) one kernel per tile shape, stages f32 rows into fp16 surfaces, and
//! accumulates K tiles in f32. Any engine failure — compile, budget, eval, a non-finite
//! output — is returned as a [`FallbackReason`] so the caller can run [`cpu_matmul`] instead.

mod cache;
pub mod policy;
pub mod precision;
mod program;
mod staging;
mod stats;

pub use cache::{KernelCache, EVAL_FAILURES_BEFORE_GIVING_UP};
pub use policy::{KernelKind, KernelPolicy, WeightId};
pub use program::{
    baked_matmul_program, baked_tiles, baked_weights, kernel_shapes, matmul_program,
    packed_matmul_program, tile_sizes, token_bucket, token_chunks, BakedTile,
    MAX_TOKENS_PER_KERNEL,
};
pub use staging::stage_rows;
pub use stats::{FallbackReason, Stats, StatsSnapshot};

use staging::{accumulate_tile, row_to_f16, stage_columns, zero_columns, zero_rows};

use std::time::Instant;

use rayon::prelude::*;

use crate::engine::Engine;
use crate::surface::Surface;
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
}

/// Grow-only buffers reused across calls (one per backend instance).
#[derive(Default, Debug)]
pub struct Scratch {
    w: Vec<f32>,
    a: Vec<f32>,
    out: Vec<f32>,
    surfaces: Vec<(crate::layout::TensorLayout, Surface)>,
}

impl Scratch {
    fn surface(&mut self, layout: &crate::layout::TensorLayout) -> Surface {
        match self.surfaces.iter().position(|(l, _)| l == layout) {
            Some(i) => self.surfaces.swap_remove(i).1,
            None => Surface::new(layout.clone()),
        }
    }

    fn give_back(&mut self, s: Surface) {
        if self.surfaces.len() >= 8 {
            self.surfaces.remove(0);
        }
        self.surfaces.push((s.layout().clone(), s));
    }
}

/// Below this many values a copy or conversion stays on the calling thread: handing it to
/// the thread pool costs more than it saves.
const PARALLEL_MIN_VALUES: usize = 1 << 16;

fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

fn load_matrix(
    src: &dyn MatrixSource,
    b2: usize,
    b3: usize,
    rows: usize,
    k: usize,
    dst: &mut [f32],
) {
    if k == 0 {
        return;
    }
    if dst.len() < PARALLEL_MIN_VALUES {
        dst.chunks_mut(k)
            .enumerate()
            .for_each(|(r, row)| src.read_row(b2, b3, r, row));
    } else {
        dst.par_chunks_mut(k)
            .enumerate()
            .for_each(|(r, row)| src.read_row(b2, b3, r, row));
    }
    debug_assert_eq!(dst.len(), rows * k);
}

/// Loads batch `b`'s weights and activations into the scratch as dense f32; returns `(b2, b3)`.
fn load_batch(job: &MatmulJob<'_>, b: usize, scratch: &mut Scratch) -> (usize, usize) {
    let MatmulShape { m, k, n, batch, .. } = job.shape;
    let (b2, b3) = (b % batch[0], b / batch[0]);
    let (w2, w3) = job.shape.weight_index(b2, b3);
    load_matrix(job.weights, w2, w3, m, k, grow(&mut scratch.w, m * k));
    load_matrix(job.acts, b2, b3, n, k, grow(&mut scratch.a, n * k));
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
/// failure some batches may already have been written; the caller recomputes the whole
/// output (as [`cpu_matmul`] does).
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
    let guard = precision::Guard::new(cache, job);
    stats.add_staging(clock.elapsed());
    if let Some(id) = job.weight_id.filter(|_| shape.weight_batch == [1, 1]) {
        let limits = engine.limits();
        let tiles = baked_tiles(shape.m, shape.k, shape.n, limits.max_dim);
        if policy::should_bake(policy, &limits, || cache.baked_missing(&id, &tiles)) {
            match baked_matmul(engine, cache, job, &id, &tiles, &guard, scratch, stats) {
                Ok(()) => return Ok(KernelKind::Baked),
                Err(FallbackReason::Budget) if policy == KernelPolicy::Auto => {}
                Err(e) => return Err(e),
            }
        }
    }
    streamed_matmul(engine, cache, job, &guard, scratch, stats)
}

/// The fp16 tile `[bm, bk]` of a weight matrix at `(m0, k0)`.
fn weight_tile(src: &dyn MatrixSource, t: BakedTile, k: usize) -> Vec<half::f16> {
    let mut tmp = vec![0f32; k];
    let mut tile = vec![half::f16::ZERO; t.bm * t.bk];
    for (r, dst) in tile.chunks_mut(t.bk.max(1)).enumerate().take(t.bm) {
        row_to_f16(src, (0, 0), t.m0 + r, t.k0, dst, &mut tmp, None);
    }
    tile
}

/// The job with weights baked into the kernels (weights not broadcast: one weight matrix).
#[allow(clippy::too_many_arguments)]
fn baked_matmul(
    engine: &dyn Engine,
    cache: &KernelCache,
    job: &MatmulJob<'_>,
    id: &WeightId,
    tiles: &[BakedTile],
    guard: &precision::Guard,
    scratch: &mut Scratch,
    stats: &Stats,
) -> Result<(), FallbackReason> {
    let MatmulShape { m, k, n, batch, .. } = job.shape;
    let chunks = token_chunks(n, engine.limits().max_dim);
    // compile (or fetch) every kernel before touching any output
    let mut kernels = Vec::with_capacity(tiles.len());
    for &t in tiles {
        let kernel = cache.get_or_bake(engine, id, t, || weight_tile(job.weights, t, k), stats)?;
        kernels.push(((t.m0, t.k0, t.bucket), kernel));
    }
    for bi in 0..batch[0] * batch[1] {
        let (b2, b3) = (bi % batch[0], bi / batch[0]);
        let mut out = std::mem::take(&mut scratch.out);
        grow(&mut out, n * m).fill(0.0);
        let (mut output_err, mut acts_energy) = (0.0, 0.0);
        // each weight tile once (tiles list every bucket of it)
        for &BakedTile { m0, k0, bm, bk, .. } in
            tiles.iter().filter(|t| t.bucket == tiles[0].bucket)
        {
            for &(n0, bn, bucket) in &chunks {
                let kernel = kernels
                    .iter()
                    .find(|(key, _)| *key == (m0, k0, bucket))
                    .map(|(_, kernel)| kernel)
                    .ok_or_else(|| FallbackReason::Internal("missing baked kernel".into()))?;
                let tile = Tile {
                    n0,
                    bn,
                    k0,
                    bk,
                    m0,
                    bm,
                };
                output_err += run_tile(
                    kernel.as_ref(),
                    job,
                    (b2, b3),
                    tile,
                    TileWeights::Baked,
                    &mut out[..n * m],
                    (m0 == 0).then_some(&mut acts_energy),
                    scratch,
                    stats,
                )?;
            }
        }
        let t = Instant::now();
        guard.check(job, (b2, b3), &out[..n * m], output_err, acts_energy)?;
        store(job.dst, b2, b3, m, &out[..n * m]);
        stats.add_writeback(t.elapsed());
        scratch.out = out;
    }
    stats.add_baked_node();
    Ok(())
}

/// The job with weights staged as a kernel input (one kernel per tile shape).
fn streamed_matmul(
    engine: &dyn Engine,
    cache: &KernelCache,
    job: &MatmulJob<'_>,
    guard: &precision::Guard,
    scratch: &mut Scratch,
    stats: &Stats,
) -> Result<KernelKind, FallbackReason> {
    let (shape, sink) = (job.shape, job.dst);
    let mut kind = KernelKind::Streamed;
    let MatmulShape { m, k, n, .. } = shape;
    let limits = engine.limits();
    let (tm, tk) = tile_sizes(m, k, limits.max_dim);
    let chunks = token_chunks(n, limits.max_dim);
    let nb = shape.batch[0] * shape.batch[1];
    // compile (or fetch) every tile kernel before touching any output
    let mut kernels = Vec::new();
    for &(bm, bk, bn) in &kernel_shapes(m, k, n, limits.max_dim) {
        kernels.push((
            (bm, bk, bn),
            cache.get_or_compile(engine, bm, bk, bn, stats)?,
        ));
    }
    let kernel_for = |bm, bk, bn| {
        kernels
            .iter()
            .find(|(s, _)| *s == (bm, bk, bn))
            .map(|(_, k)| k.clone())
    };
    for b in 0..nb {
        let (b2, b3) = (b % shape.batch[0], b / shape.batch[0]);
        let (w2, w3) = shape.weight_index(b2, b3);
        let mut out = std::mem::take(&mut scratch.out);
        grow(&mut out, n * m).fill(0.0);
        let (mut output_err, mut acts_energy) = (0.0, 0.0);
        for m0 in (0..m).step_by(tm) {
            let bm = tm.min(m - m0);
            for k0 in (0..k).step_by(tk.max(1)) {
                let bk = tk.min(k - k0);
                // two-input kernels share one weight surface across token chunks (staged on
                // first use); packed ones stage the weights beside each chunk's activations
                let mut sw: Option<Surface> = None;
                for &(n0, bn, bucket) in &chunks {
                    let kernel = kernel_for(bm, bk, bucket)
                        .ok_or_else(|| FallbackReason::Internal("missing tile kernel".into()))?;
                    let inputs = &kernel.procedures()[0].inputs;
                    let weights = if inputs.len() == 1 {
                        kind = KernelKind::Packed;
                        TileWeights::Packed((w2, w3))
                    } else {
                        let sw = sw.get_or_insert_with(|| {
                            let t = Instant::now();
                            let mut sw = scratch.surface(&inputs[1]);
                            stage_rows(&mut sw, job.weights, (w2, w3), (m0, bm), (k0, bk), k, None);
                            stats.add_staging(t.elapsed());
                            sw
                        });
                        TileWeights::Staged(sw)
                    };
                    let tile = Tile {
                        n0,
                        bn,
                        k0,
                        bk,
                        m0,
                        bm,
                    };
                    let r = run_tile(
                        kernel.as_ref(),
                        job,
                        (b2, b3),
                        tile,
                        weights,
                        &mut out[..n * m],
                        (m0 == 0).then_some(&mut acts_energy),
                        scratch,
                        stats,
                    );
                    match r {
                        Ok(e) => output_err += e,
                        Err(e) => {
                            if let Some(sw) = sw {
                                scratch.give_back(sw);
                            }
                            return Err(e);
                        }
                    }
                }
                if let Some(sw) = sw {
                    scratch.give_back(sw);
                }
            }
        }
        let t = Instant::now();
        guard.check(job, (b2, b3), &out[..n * m], output_err, acts_energy)?;
        store(sink, b2, b3, m, &out[..n * m]);
        stats.add_writeback(t.elapsed());
        scratch.out = out;
    }
    Ok(kind)
}

/// Where one kernel evaluation reads and writes: activation rows `n0..n0+bn`, columns
/// `k0..k0+bk`, output columns `m0..m0+bm`.
#[derive(Clone, Copy)]
struct Tile {
    n0: usize,
    bn: usize,
    k0: usize,
    bk: usize,
    m0: usize,
    bm: usize,
}

/// Where a tile's weights come from.
#[derive(Clone, Copy)]
enum TileWeights<'a> {
    /// Compiled into the kernel.
    Baked,
    /// A staged surface, the kernel's second input.
    Staged(&'a Surface),
    /// Weight batch `(w2, w3)`, staged beside the activations in the one input surface.
    Packed((usize, usize)),
}

/// One evaluation: stages the activations (the padded tokens zeroed; their sum of squares
/// added into `acts_energy` when given) — as rows, or as columns beside the weights for a
/// packed kernel — evaluates, and adds the result into `out` (`[n, m]`).
/// Returns the expected squared error of rounding this tile's outputs to fp16.
#[allow(clippy::too_many_arguments)]
fn run_tile(
    kernel: &dyn crate::engine::Kernel,
    job: &MatmulJob<'_>,
    batch: (usize, usize),
    t: Tile,
    weights: TileWeights<'_>,
    out: &mut [f32],
    acts_energy: Option<&mut f64>,
    scratch: &mut Scratch,
    stats: &Stats,
) -> Result<f64, FallbackReason> {
    let proc_ = &kernel.procedures()[0];
    let clock = Instant::now();
    let mut sa = scratch.surface(&proc_.inputs[0]);
    let (k, rows, cols) = (job.shape.k, (t.n0, t.bn), (t.k0, t.bk));
    if let TileWeights::Packed(wb) = weights {
        // [1, bk, 1, bucket + bm]: tokens in columns 0..bucket, weight rows after them
        let w0 = proc_.inputs[0].dims[3] - t.bm;
        stage_columns(&mut sa, job.acts, batch, rows, cols, k, 0, acts_energy);
        zero_columns(&mut sa, t.bk, (t.bn, w0));
        stage_columns(&mut sa, job.weights, wb, (t.m0, t.bm), cols, k, w0, None);
    } else {
        stage_rows(&mut sa, job.acts, batch, rows, cols, k, acts_energy);
        zero_rows(&mut sa, t.bn, t.bk);
    }
    let mut sy = scratch.surface(&proc_.outputs[0]);
    stats.add_staging(clock.elapsed());
    let clock = Instant::now();
    let r = match weights {
        TileWeights::Staged(sw) => kernel.eval(0, &[&sa, sw], &mut [&mut sy]),
        TileWeights::Baked | TileWeights::Packed(_) => kernel.eval(0, &[&sa], &mut [&mut sy]),
    };
    stats.add_engine(clock.elapsed());
    let clock = Instant::now();
    let energy = match r {
        Ok(()) => accumulate_tile(&sy, out, job.shape.m, (t.n0, t.bn), (t.m0, t.bm)),
        Err(_) => Some(0.0),
    };
    stats.add_writeback(clock.elapsed());
    scratch.give_back(sa);
    scratch.give_back(sy);
    r.map_err(|e| FallbackReason::Eval(e.to_string()))?;
    let energy = energy.ok_or(FallbackReason::NonFinite)?;
    Ok(precision::output_error(energy, t.bn * t.bm))
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
