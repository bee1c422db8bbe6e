//! Every compiled kernel of the crate — matmul tiles (streamed and baked) and fused blocks
//! (baked and streamed) — in one cache shared by every backend instance in the process, with
//! what decides and feeds them: the kernel-kind [`policy`], the loaded-kernel cap
//! (`residency`) and the streamed weight tiles kept staged across calls.
//!
//! Every kind is fetched through one lookup (`KernelCache::lookup`): keyed by a
//! `KernelKey`, checked against the weights' fingerprint where the kernel
//! holds weights, compiled outside any lock with at most one compile per key in flight (a
//! second caller for that key waits for the first's result; callers for other keys are not
//! held up by a compile, which takes seconds on an ANE), failures remembered so they are not
//! retried (and re-billed) on every call. A spent budget is not remembered: it is reported
//! again, cheaply.

mod compile;
mod key;
pub mod policy;
pub(crate) mod residency;
mod slots;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::disk_cache::DiskCache;
use crate::engine::{Engine, Kernel, Port};
use crate::matmul::precision::ColumnSumSq;
use crate::matmul::{
    baked_matmul_program, baked_weights, matmul_program, two_input_matmul_program, BakedTile,
    FallbackReason, Stats,
};
use crate::staging::kept_weights::{KeptWeightKey, KeptWeights};
use crate::staging::surface_pool::SurfacePool;
use crate::surface::Surface;
use compile::{compile, KernelOrWhy};
use key::KernelKey;
use policy::{KernelPolicy, WeightId};
use residency::Residency;
use slots::Slots;

pub use compile::EVAL_FAILURES_BEFORE_GIVING_UP;
pub use residency::DEFAULT_MAX_LOADED;

/// Streamed kernels hold no weights: one fingerprint for all of them.
const NO_WEIGHTS: u64 = 0;

/// Compiled kernels by their key (kind and shape or weights), compiled once per process; see the
/// module documentation.
#[derive(Default)]
pub struct KernelCache {
    kernels: Slots<KernelKey, KernelOrWhy>,
    /// Column sums of squares of identified weights, with their fingerprint.
    sums_of_squares: Mutex<std::collections::HashMap<u64, (u64, Arc<ColumnSumSq>)>>,
    /// Fused forms not to use (their self-probe failed): baked, streamed.
    fused_forms_off: (bool, bool),
    disk: Option<DiskCache>,
    policy: KernelPolicy,
    /// Streamed weight tiles kept staged across calls.
    pub(crate) kept_weights: KeptWeights,
    /// Idle surfaces the kernels lent, reused by every job.
    pub(crate) surfaces: SurfacePool,
    /// Which kernels are loaded, within the cap.
    residency: Residency,
    /// Set (by the kernel) once a streamed two-input kernel gave up at evaluation: every
    /// shape then uses the single-input form.
    two_input_gave_up: Arc<AtomicBool>,
}

impl std::fmt::Debug for KernelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCache")
            .field("entries", &self.kernels.len())
            .finish()
    }
}

impl KernelCache {
    /// An empty cache, in memory only.
    pub fn new() -> Self {
        KernelCache::default()
    }

    /// An empty cache backed by compiled kernels on disk (shared with other processes).
    pub fn with_disk(disk: Option<DiskCache>) -> Self {
        KernelCache {
            disk,
            ..KernelCache::default()
        }
    }

    /// The same cache choosing kernel kinds by `policy` (default: auto).
    pub fn with_policy(mut self, policy: KernelPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The same cache keeping at most `bytes` of streamed weights staged across calls
    /// (default [`DEFAULT_STAGED_WEIGHTS_BYTES`](crate::staging::DEFAULT_STAGED_WEIGHTS_BYTES);
    /// 0 stages every call).
    pub fn with_staged_weights_cap(mut self, bytes: usize) -> Self {
        self.kept_weights = KeptWeights::new(bytes);
        self
    }

    /// The weight surface kept staged under `key`, if `kernel` takes it in place for `port`
    /// (a persistent per-weight input surface); one lent for another size (a kernel of another
    /// bucket) goes back to the pool, and the caller stages anew.
    pub(crate) fn take_kept(
        &self,
        key: Option<&KeptWeightKey>,
        kernel: &dyn Kernel,
        port: Port,
    ) -> Option<Surface> {
        let s = self.kept_weights.take(key?)?;
        if kernel.takes_in_place(0, port, &s) {
            return Some(s);
        }
        self.surfaces.give_back(s);
        None
    }

    /// Keeps a weight-holding surface for the next call under `key`, or (no key, or past the
    /// cap) returns it to the pool.
    pub(crate) fn put_back(&self, s: Surface, key: Option<KeptWeightKey>) {
        let spare = match key {
            Some(k) => self.kept_weights.keep(k, s),
            None => Some(s),
        };
        if let Some(s) = spare {
            self.surfaces.give_back(s);
        }
    }

    /// The same cache keeping at most `max` kernels loaded at once (default
    /// [`DEFAULT_MAX_LOADED`]; `None`: no cap). Past it the least recently used kernel is
    /// dropped and compiled again when needed.
    pub fn with_max_loaded(mut self, max: Option<usize>) -> Self {
        self.residency = Residency::new(max);
        self
    }

    /// The same cache using fused programs in these forms only (what their self-probe left).
    pub fn with_fused_forms(mut self, baked: bool, streamed: bool) -> Self {
        self.fused_forms_off = (!baked, !streamed);
        self
    }

    /// Whether fused programs may be baked, and streamed.
    pub fn fused_forms(&self) -> (bool, bool) {
        (!self.fused_forms_off.0, !self.fused_forms_off.1)
    }

    /// The kernel-kind policy.
    pub fn policy(&self) -> KernelPolicy {
        self.policy
    }

    /// The cap on loaded kernels.
    pub fn max_loaded(&self) -> Option<usize> {
        self.residency.cap()
    }

    /// Kernels loaded now, and how many of them are baked.
    pub fn loaded(&self) -> (usize, usize) {
        (self.residency.loaded(), self.residency.baked_loaded())
    }

    /// The most kernels this cache ever had loaded at once.
    pub fn peak_loaded(&self) -> usize {
        self.residency.peak()
    }

    /// The one lookup-or-compile: the kernel of `key` made for weights `fingerprint`, and
    /// whether this call compiled it (or loaded it from disk). `build` makes the program and
    /// its weight files, only when a compile is needed. The outer `Err` is a spent budget.
    fn lookup(
        &self,
        engine: &dyn Engine,
        key: KernelKey,
        fingerprint: u64,
        build: impl FnOnce() -> (ane_mil::Program, ane_mil::WeightFiles),
        stats: &Stats,
    ) -> Result<(KernelOrWhy, bool), FallbackReason> {
        let on_stale = || self.residency.forget(&key);
        self.kernels.get_or_make(key, fingerprint, on_stale, || {
            let (program, weights) = build();
            // only the two-input form falls back for good once a kernel of it gives up
            let gave_up =
                matches!(key, KernelKey::Streamed(_, true)).then(|| self.two_input_gave_up.clone());
            let reload = self.residency.was_evicted(&key);
            let disk = self.disk.as_ref();
            compile(engine, disk, (&program, &weights), gave_up, reload, stats)
        })
    }

    /// Counts a kernel found (not compiled now) as a cache hit and marks a working one used.
    fn settle(
        &self,
        key: KernelKey,
        (kernel, compiled_now): (KernelOrWhy, bool),
        stats: &Stats,
    ) -> KernelOrWhy {
        if !compiled_now {
            stats.add_cache_hit();
        }
        if kernel.is_ok() {
            self.touch(key);
        }
        kernel
    }

    /// Marks a kernel used; drops (unloads) what the cap no longer has room for.
    fn touch(&self, key: KernelKey) {
        for victim in self.residency.touch(key) {
            self.kernels.remove_ready(&victim);
        }
    }

    /// The streamed kernel for tile `(m, k, n)`, compiling it on first use: the single-input
    /// form ([`matmul_program`]); under [`KernelPolicy::TwoInput`] the two-input form
    /// ([`two_input_matmul_program`]) until it fails to compile or gives up at evaluation
    /// (docs/ane-notes.md#multi-input-requests). Callers tell them apart by the input count.
    pub fn get_or_compile(
        &self,
        engine: &dyn Engine,
        m: usize,
        k: usize,
        n: usize,
        stats: &Stats,
    ) -> Result<Arc<dyn Kernel>, FallbackReason> {
        let no_weights = ane_mil::WeightFiles::new;
        let mut two_input_compiled = false;
        if self.policy == KernelPolicy::TwoInput && !self.two_input_gave_up.load(Ordering::Relaxed)
        {
            let key = KernelKey::Streamed((m, k, n), true);
            let build = || (two_input_matmul_program(m, k, n), no_weights());
            let (kernel, compiled_now) = self.lookup(engine, key, NO_WEIGHTS, build, stats)?;
            match kernel {
                // a form the engine refuses: the single-input one instead
                Err(
                    FallbackReason::Compile(_)
                    | FallbackReason::Unsupported(_)
                    | FallbackReason::Rules(_),
                ) => two_input_compiled = compiled_now,
                kernel => return self.settle(key, (kernel, compiled_now), stats),
            }
        }
        let key = KernelKey::Streamed((m, k, n), false);
        let build = || (matmul_program(m, k, n), no_weights());
        let (kernel, compiled_now) = self.lookup(engine, key, NO_WEIGHTS, build, stats)?;
        // a call that compiled the refused two-input form is no cache hit
        self.settle(key, (kernel, compiled_now || two_input_compiled), stats)
    }

    /// How many of these baked kernels are not compiled yet (for current weights).
    pub fn baked_missing(&self, id: &WeightId, tiles: &[BakedTile]) -> u32 {
        let missing = tiles.iter().filter(|&&t| {
            !self
                .kernels
                .has(&KernelKey::Baked(id.key, t), id.fingerprint)
        });
        missing.count() as u32
    }

    /// The baked kernel for one weight tile and token bucket, compiling it (with the fp16
    /// tile `weights()` makes, `[bm, bk]`) on first use or when the weights' fingerprint
    /// changed.
    pub fn get_or_bake(
        &self,
        engine: &dyn Engine,
        id: &WeightId,
        tile: BakedTile,
        weights: impl FnOnce() -> Vec<half::f16>,
        stats: &Stats,
    ) -> Result<Arc<dyn Kernel>, FallbackReason> {
        let key = KernelKey::Baked(id.key, tile);
        let build = || {
            let program = baked_matmul_program(tile.bm, tile.bk, tile.bucket);
            (program, baked_weights(tile.bm, tile.bk, &weights()))
        };
        let found = self.lookup(engine, key, id.fingerprint, build, stats)?;
        self.settle(key, found, stats)
    }

    /// How many of these fused-block kernels (weights `id`, token `buckets`) are not compiled
    /// yet for the current weights.
    pub fn fused_missing(&self, id: &WeightId, buckets: &[usize]) -> u32 {
        let mut buckets = buckets.to_vec();
        buckets.dedup();
        let missing = buckets.iter().filter(|&&b| {
            !self
                .kernels
                .has(&KernelKey::Fused(id.key, b), id.fingerprint)
        });
        missing.count() as u32
    }

    /// The kernel of a fused block (weights `id`, `bucket` tokens), compiling the program and
    /// weight files `build` makes on first use or when the weights' fingerprint changed. A
    /// failure to compile is remembered like a baked tile's.
    pub fn get_or_bake_fused(
        &self,
        engine: &dyn Engine,
        id: &WeightId,
        bucket: usize,
        build: impl FnOnce() -> (ane_mil::Program, ane_mil::WeightFiles),
        stats: &Stats,
    ) -> Result<Arc<dyn Kernel>, FallbackReason> {
        let key = KernelKey::Fused(id.key, bucket);
        let found = self.lookup(engine, key, id.fingerprint, build, stats)?;
        self.settle(key, found, stats)
    }

    /// The streamed kernel of a fused block's shape (`shape`: a key of everything that
    /// shapes the program), compiling the program `build` makes on first use.
    pub fn get_or_compile_fused(
        &self,
        engine: &dyn Engine,
        shape: u64,
        build: impl FnOnce() -> ane_mil::Program,
        stats: &Stats,
    ) -> Result<Arc<dyn Kernel>, FallbackReason> {
        let key = KernelKey::FusedStreamed(shape);
        let build = || (build(), ane_mil::WeightFiles::new());
        let found = self.lookup(engine, key, NO_WEIGHTS, build, stats)?;
        self.settle(key, found, stats)
    }

    /// The weights' column sums of squares for the precision check: summed once per
    /// fingerprint.
    pub(crate) fn weight_sum_sq(
        &self,
        id: &WeightId,
        compute: impl FnOnce() -> Arc<ColumnSumSq>,
    ) -> Arc<ColumnSumSq> {
        let sums = || {
            self.sums_of_squares
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        if let Some((f, e)) = sums().get(&id.key) {
            if *f == id.fingerprint {
                return e.clone();
            }
        }
        // summed outside the lock: other jobs need not wait for this one
        let e = compute();
        sums().insert(id.key, (id.fingerprint, e.clone()));
        e
    }
}
