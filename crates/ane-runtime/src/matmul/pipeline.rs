//! One path through a job on the engine, in five steps: plan the weight tiles and token
//! chunks, get or compile every kernel (before any output is touched), then per batch stage
//! and evaluate each tile, check the result's precision, and write it back.
//!
//! Baked and streamed kernels differ only in the plan (which kernel serves a tile and where
//! its weights come from); the batch loop, staging, evaluation, check and write-back are one
//! code path, so a fused block can plug in a plan of its own.

use std::sync::Arc;
use std::time::Instant;

use super::policy::{KernelKind, WeightId};
use super::precision::{self, Guard};
use super::stats::{FallbackReason, Stats};
use super::tiling::{kernel_shapes, min_bucket, streamed_tile_sizes, token_chunks, BakedTile};
use super::{grow, store, MatmulJob, MatmulShape, MatrixSource, Scratch};
use crate::engine::{Engine, Kernel, Port};
use crate::kernels::KernelCache;
use crate::staging::convert::{
    accumulate_columns, convert_weight_rows, recycle, row_to_f16, rows_in_memory, stage_columns,
    zero_columns, WrittenSums,
};
use crate::staging::kept_weights::KeptWeightKey;
use crate::surface::Surface;

/// Every kernel a job runs, by weight tile and token chunk.
pub(super) struct TilePlan {
    /// Which kind of kernel serves the job.
    pub(super) kind: KernelKind,
    tiles: Vec<WeightTile>,
}

impl TilePlan {
    /// The most K pieces a kernel of the plan sums inside its program (baked kernels past
    /// `BAKED_K_PIECE` channels; 1 otherwise).
    fn k_pieces(&self) -> usize {
        match self.kind {
            KernelKind::Baked => self
                .tiles
                .iter()
                .map(|t| super::tiling::k_pieces(t.bk).len())
                .max()
                .unwrap_or(1),
            _ => 1,
        }
    }
}

/// A weight tile (rows `m0..m0+bm`, columns `k0..k0+bk`) and its kernel for each token chunk.
struct WeightTile {
    m0: usize,
    bm: usize,
    k0: usize,
    bk: usize,
    chunks: Vec<Chunk>,
}

/// Tokens `n0..n0+bn`, run by `kernel` (compiled for the chunk's token bucket).
struct Chunk {
    n0: usize,
    bn: usize,
    kernel: Arc<dyn Kernel>,
}

/// Where a kernel's weights come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WeightSource {
    /// Compiled into the kernel.
    Baked,
    /// A staged surface, the kernel's second input (the two-input opt-in).
    SecondInput,
    /// Staged beside the activations in the kernel's one input (the default streamed form).
    BesideActivations,
}

impl WeightSource {
    fn of(kind: KernelKind, kernel: &dyn Kernel) -> Self {
        match (kind, kernel.procedures()[0].inputs.len()) {
            (KernelKind::Baked, _) => WeightSource::Baked,
            (_, 1) => WeightSource::BesideActivations,
            _ => WeightSource::SecondInput,
        }
    }
}

/// The plan with weights baked into the kernels, one kernel per weight tile and bucket
/// (`tiles` from [`super::baked_tiles`]; one weight matrix, not broadcast).
pub(super) fn plan_baked(
    engine: &dyn Engine,
    cache: &KernelCache,
    job: &MatmulJob<'_>,
    id: &WeightId,
    tiles: &[BakedTile],
    stats: &Stats,
) -> Result<TilePlan, FallbackReason> {
    let MatmulShape { k, n, .. } = job.shape;
    let min = tiles.first().map_or(1, |t| min_bucket(t.bm, t.bk));
    let chunks = token_chunks(n, engine.limits().max_dim, min);
    let mut kernels = Vec::with_capacity(tiles.len());
    for &t in tiles {
        let kernel = cache.get_or_bake(engine, id, t, || weight_tile(job.weights, t, k), stats)?;
        kernels.push((t, kernel));
    }
    // each weight tile once (`tiles` lists every bucket of it)
    let weight_tiles = tiles
        .iter()
        .filter(|t| t.bucket == tiles[0].bucket)
        .map(|&t| {
            let chunks = chunks
                .iter()
                .map(|&(n0, bn, bucket)| {
                    let kernel = kernels
                        .iter()
                        .find(|(kt, _)| (kt.m0, kt.k0, kt.bucket) == (t.m0, t.k0, bucket))
                        .map(|(_, kernel)| kernel.clone())
                        .ok_or_else(|| FallbackReason::Internal("missing baked kernel".into()))?;
                    Ok(Chunk { n0, bn, kernel })
                })
                .collect::<Result<_, FallbackReason>>()?;
            Ok(WeightTile {
                m0: t.m0,
                bm: t.bm,
                k0: t.k0,
                bk: t.bk,
                chunks,
            })
        })
        .collect::<Result<_, FallbackReason>>()?;
    Ok(TilePlan {
        kind: KernelKind::Baked,
        tiles: weight_tiles,
    })
}

/// The plan with weights staged as a kernel input: one kernel per tile shape, shared by
/// every weight of that shape.
pub(super) fn plan_streamed(
    engine: &dyn Engine,
    cache: &KernelCache,
    job: &MatmulJob<'_>,
    stats: &Stats,
) -> Result<TilePlan, FallbackReason> {
    let MatmulShape { m, k, n, .. } = job.shape;
    let max_dim = engine.limits().max_dim;
    let (tm, tk) = streamed_tile_sizes(m, k, max_dim);
    let chunks = token_chunks(n, max_dim, min_bucket(tm, tk));
    // every distinct kernel once (a cache hit counted per kernel, not per use)
    let mut compiled = Vec::new();
    for &(bm, bk, bucket) in &kernel_shapes(m, k, n, max_dim) {
        let kernel = cache.get_or_compile(engine, bm, bk, bucket, stats)?;
        compiled.push(((bm, bk, bucket), kernel));
    }
    let mut kind = KernelKind::TwoInput;
    let mut tiles = Vec::new();
    for m0 in (0..m).step_by(tm) {
        let bm = tm.min(m - m0);
        for k0 in (0..k).step_by(tk.max(1)) {
            let bk = tk.min(k - k0);
            let mut tile_chunks = Vec::with_capacity(chunks.len());
            for &(n0, bn, bucket) in &chunks {
                let kernel = compiled
                    .iter()
                    .find(|(shape, _)| *shape == (bm, bk, bucket))
                    .map(|(_, kernel)| kernel.clone())
                    .ok_or_else(|| FallbackReason::Internal("missing tile kernel".into()))?;
                if WeightSource::of(KernelKind::Streamed, kernel.as_ref())
                    == WeightSource::BesideActivations
                {
                    kind = KernelKind::Streamed;
                }
                tile_chunks.push(Chunk { n0, bn, kernel });
            }
            tiles.push(WeightTile {
                m0,
                bm,
                k0,
                bk,
                chunks: tile_chunks,
            });
        }
    }
    Ok(TilePlan { kind, tiles })
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

/// Runs the plan: the one batch loop. Each batch accumulates its tiles into an f32 output,
/// passes the precision check, and is written back; the first failure stops the job (the
/// caller recomputes the whole output on the CPU).
pub(super) fn run_plan(
    plan: &TilePlan,
    cache: &KernelCache,
    job: &MatmulJob<'_>,
    guard: &Guard,
    scratch: &mut Scratch,
    stats: &Stats,
) -> Result<KernelKind, FallbackReason> {
    let MatmulShape { m, n, batch, .. } = job.shape;
    // identified weights that are not broadcast keep their staged tiles across calls
    let weight_id = job.weight_id.filter(|_| job.shape.weight_batch == [1, 1]);
    for b in 0..batch[0] * batch[1] {
        let (b2, b3) = (b % batch[0], b / batch[0]);
        let mut run = BatchRun {
            cache,
            weight_id,
            job,
            batch: (b2, b3),
            weight_batch: job.shape.weight_index(b2, b3),
            output_err: 0.0,
            acts_sum_sq: 0.0,
            result_sum_sq: 0.0,
            staged_acts: None,
            converted: None,
            scratch,
            stats,
        };
        // results straight into the sink's rows where it lends them (a failed check then
        // leaves them written: the caller computes them again), else into a buffer stored
        // once the check passes; either way the first K tile of every M tile assigns its
        // outputs, later ones add (no fill)
        let mut direct = None;
        job.dst.with_rows_mut(b2, b3, &mut |rows, stride| {
            direct = Some(run.tiles(plan, rows, stride));
        });
        let (ran, buffer) = match direct {
            Some(ran) => (ran, None),
            None => {
                let mut out = std::mem::take(&mut run.scratch.out);
                grow(&mut out, n * m);
                (run.tiles(plan, &mut out[..n * m], m), Some(out))
            }
        };
        if let Some((_, s)) = run.staged_acts.take() {
            cache.surfaces.give_back(s);
        }
        if let Some((_, rows)) = run.converted.take() {
            recycle(rows);
        }
        let checked = ran.and_then(|()| {
            guard.check(
                job,
                (b2, b3),
                run.result_sum_sq,
                run.output_err,
                run.acts_sum_sq,
                plan.k_pieces(),
            )
        });
        if let Some(out) = buffer {
            if checked.is_ok() {
                let clock = Instant::now();
                store(job.dst, b2, b3, m, &out[..n * m]);
                stats.add_writeback(clock.elapsed());
            }
            run.scratch.out = out;
        }
        checked?;
    }
    if plan.kind == KernelKind::Baked {
        stats.add_baked_node();
    }
    Ok(plan.kind)
}

/// Staged activations and what they hold: `(k0, bk, n0, bn, layout)`.
type ActsSurface = (
    (usize, usize, usize, usize, crate::layout::TensorLayout),
    Surface,
);

/// One batch in progress: where it reads and writes, and what the precision check needs.
struct BatchRun<'a, 'j> {
    cache: &'a KernelCache,
    /// Set when staged weight tiles may be kept across calls.
    weight_id: Option<WeightId>,
    job: &'a MatmulJob<'j>,
    batch: (usize, usize),
    weight_batch: (usize, usize),
    /// Expected squared error of rounding each tile's outputs to fp16.
    output_err: f64,
    /// The activations' sum of squares, gathered while staging them (first M tile only).
    acts_sum_sq: f64,
    /// The result's sum of squares, gathered while writing back each M tile's last K tile.
    result_sum_sq: f64,
    /// The last activations staged alone in an input, with what they hold (K tile, token
    /// chunk, layout): the next M tile's identical input reuses them.
    staged_acts: Option<ActsSurface>,
    /// A weight not in memory (quantised) cut into several K tiles: the current M tile's rows
    /// (its first row) converted to fp16 once over all of K, staged from for every K tile.
    converted: Option<(usize, crate::matmul::HalfRows)>,
    scratch: &'a mut Scratch,
    stats: &'a Stats,
}

impl BatchRun<'_, '_> {
    /// Every weight tile, its results written into `out` (token rows `stride` apart).
    fn tiles(
        &mut self,
        plan: &TilePlan,
        out: &mut [f32],
        stride: usize,
    ) -> Result<(), FallbackReason> {
        plan.tiles
            .iter()
            .try_for_each(|t| self.weight_tile(plan.kind, t, out, stride))
    }

    /// Every token chunk of one weight tile. Two-input kernels share one weight surface
    /// across the chunks (staged once); packed ones stage the weights beside each chunk's
    /// activations.
    fn weight_tile(
        &mut self,
        kind: KernelKind,
        t: &WeightTile,
        out: &mut [f32],
        stride: usize,
    ) -> Result<(), FallbackReason> {
        let mut staged: Option<(Surface, Option<KeptWeightKey>)> = None;
        let mut result = Ok(());
        for chunk in &t.chunks {
            let source = WeightSource::of(kind, chunk.kernel.as_ref());
            if source == WeightSource::SecondInput && staged.is_none() {
                let clock = Instant::now();
                let (s, key) = self.weight_surface(t, chunk.kernel.as_ref(), Port::Input(1), 0);
                self.stats.add_staging(clock.elapsed());
                staged = Some((s, key));
            }
            let weights = staged.as_ref().map(|(s, _)| s);
            result = self.chunk(t, chunk, source, weights, (&mut *out, stride));
            if result.is_err() {
                break;
            }
        }
        if let Some((s, key)) = staged {
            self.cache.put_back(s, key);
        }
        result
    }

    /// A surface holding weight tile `t` as columns `col0..col0 + bm`, for `kernel`'s input
    /// `port`: kept from an earlier call when the same weights were staged for the same
    /// layout in memory the kernel takes in place (a persistent per-weight input surface),
    /// else staged now (counted as weight bytes). The key says where to keep it afterwards.
    fn weight_surface(
        &mut self,
        t: &WeightTile,
        kernel: &dyn Kernel,
        port: Port,
        col0: usize,
    ) -> (Surface, Option<KeptWeightKey>) {
        let Port::Input(i) = port else {
            unreachable!("weights are staged into inputs")
        };
        let layout = &kernel.procedures()[0].inputs[i];
        let key = self
            .weight_id
            .map(|id| KeptWeightKey::new(id, self.weight_batch, (t.m0, t.k0), col0, layout));
        if let Some(s) = self.cache.take_kept(key.as_ref(), kernel, port) {
            return (s, key);
        }
        let mut s = self.cache.surfaces.take(kernel, port);
        let (rows, cols, k) = ((t.m0, t.bm), (t.k0, t.bk), self.job.shape.k);
        let once = t.bk < k && rows_in_memory(self.job.weights, self.weight_batch, rows).is_none();
        if once && self.converted.as_ref().map(|c| c.0) != Some(t.m0) {
            if let Some((_, old)) = self.converted.take() {
                recycle(old);
            }
            let rows = convert_weight_rows(self.job.weights, self.weight_batch, rows, k);
            self.converted = Some((t.m0, rows));
        }
        let (src, batch, rows): (&dyn MatrixSource, _, _) = match &self.converted {
            Some((_, converted)) if once => (converted, (0, 0), (0, t.bm)),
            _ => (self.job.weights, self.weight_batch, rows),
        };
        stage_columns(&mut s, src, batch, rows, cols, k, col0, None);
        self.stats.add_weight_bytes(2 * t.bm * t.bk);
        (s, key)
    }

    /// One evaluation: stages the activations as columns (the padded tokens zeroed; beside
    /// them the weights, for the single-input form), evaluates, and adds the `[1, bm, 1, S]`
    /// result, transposed, into the batch's output `out.0` (token rows `out.1` apart).
    fn chunk(
        &mut self,
        t: &WeightTile,
        c: &Chunk,
        source: WeightSource,
        staged_weights: Option<&Surface>,
        out: (&mut [f32], usize),
    ) -> Result<(), FallbackReason> {
        let procedure = &c.kernel.procedures()[0];
        let clock = Instant::now();
        let (k, rows, cols) = (self.job.shape.k, (c.n0, c.bn), (t.k0, t.bk));
        // [1, bk, 1, width]: token j in column j (the bucket's padding zeroed), then for the
        // single-input form weight row j in column bucket + j (kept from an earlier call when
        // possible); the bucket the kernel was compiled for is its output's width
        let bucket = procedure.outputs[0].dims[3];
        // activations alone in the input (baked, two-input): staged once per K tile and chunk,
        // then kept for the other M tiles, whose input is the same
        let acts_key = (source != WeightSource::BesideActivations)
            .then(|| (t.k0, t.bk, c.n0, c.bn, procedure.inputs[0].clone()));
        let kept = self
            .staged_acts
            .take_if(|(key, _)| Some(&*key) == acts_key.as_ref());
        let (acts, key) = if let Some((_, s)) = kept {
            (s, None)
        } else {
            let kernel = c.kernel.as_ref();
            let (mut acts, key) = if source == WeightSource::BesideActivations {
                self.weight_surface(t, kernel, Port::Input(0), bucket)
            } else {
                (self.cache.surfaces.take(kernel, Port::Input(0)), None)
            };
            // the activations' sum of squares once per batch: on the first M tile
            let sum_sq = (t.m0 == 0).then_some(&mut self.acts_sum_sq);
            stage_columns(
                &mut acts,
                self.job.acts,
                self.batch,
                rows,
                cols,
                k,
                0,
                sum_sq,
            );
            zero_columns(&mut acts, t.bk, (c.bn, bucket));
            self.stats.add_act_bytes(2 * c.bn * t.bk);
            (acts, key)
        };
        let mut y = self.cache.surfaces.take(c.kernel.as_ref(), Port::Output(0));
        self.stats.add_staging(clock.elapsed());

        let clock = Instant::now();
        let evaluated = match staged_weights {
            Some(w) => c.kernel.eval(0, &[&acts, w], &mut [&mut y]),
            None => c.kernel.eval(0, &[&acts], &mut [&mut y]),
        };
        self.stats.add_dispatch();
        self.stats.add_engine(clock.elapsed());

        let clock = Instant::now();
        let sums = match evaluated {
            Ok(copied) => {
                self.stats.add_copied_bytes(copied);
                let first = t.k0 == 0;
                accumulate_columns(&y, out.0, out.1, rows, (t.m0, t.bm), first)
            }
            Err(_) => Some(WrittenSums::default()),
        };
        self.stats.add_writeback(clock.elapsed());
        match acts_key {
            None => self.cache.put_back(acts, key),
            Some(k) => {
                if let Some((_, old)) = self.staged_acts.replace((k, acts)) {
                    self.cache.surfaces.give_back(old);
                }
            }
        }
        self.cache.surfaces.give_back(y);
        evaluated.map_err(|e| match e {
            crate::error::Error::Eval(why) => FallbackReason::Eval(why),
            other => FallbackReason::Eval(other.to_string()),
        })?;
        let sums = sums.ok_or(FallbackReason::NonFinite)?;
        self.output_err += precision::output_error(sums.tile, c.bn * t.bm);
        // the last K tile leaves these outputs final: their squares are the result's
        if t.k0 + t.bk == k {
            self.result_sum_sq += sums.result;
        }
        Ok(())
    }
}
