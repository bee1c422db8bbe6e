//! Compiled tile kernels, shared by every backend instance in the process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::policy::{KernelPolicy, WeightId};
use super::precision::ColumnSumSq;
use super::program::{
    baked_matmul_program, baked_weights, matmul_program, two_input_matmul_program, BakedTile,
};
use super::residency::{Loaded, Residency};
use super::staged::StagedWeights;
use super::stats::{FallbackReason, Stats};
use crate::disk_cache::{compile_cached, DiskCache};
use crate::engine::{Engine, Kernel};
use crate::error::Error;

/// A compiled kernel, or why there is none.
type KernelOrWhy = Result<Arc<dyn Kernel>, FallbackReason>;

/// A compiled kernel that can say it gave up, or why there is none.
type CompiledForm = Result<Arc<GivingUpKernel>, FallbackReason>;

/// The streamed kernels of one tile shape: the single-input form, and under the two-input
/// opt-in the two-input form (until it fails to compile or gives up at evaluation).
#[derive(Default)]
struct StreamedForms {
    two_input: Option<CompiledForm>,
    single: Option<CompiledForm>,
}

fn entry(g: &CompiledForm) -> KernelOrWhy {
    g.clone().map(|k| k as Arc<dyn Kernel>)
}

/// Tile kernels by shape (streamed) and by weight tile (baked): compiled once per process,
/// failures remembered so they are not retried (and re-billed) on every call.
#[derive(Default)]
pub struct KernelCache {
    entries: Mutex<HashMap<(usize, usize, usize), StreamedForms>>,
    /// Baked kernels with the fingerprint of the weights they hold.
    baked: Mutex<HashMap<(u64, BakedTile), (u64, KernelOrWhy)>>,
    /// Fused-block kernels by (weights' key, token bucket), with the weights' fingerprint.
    fused: Mutex<HashMap<(u64, usize), (u64, KernelOrWhy)>>,
    /// Fused forms not to use (their self-probe failed): baked, streamed.
    fused_forms_off: (bool, bool),
    /// Fused-block kernels with streamed weights, by their shape's key.
    fused_streamed: Mutex<HashMap<u64, KernelOrWhy>>,
    /// Column sums of squares of identified weights, with their fingerprint.
    sums_of_squares: Mutex<HashMap<u64, (u64, Arc<ColumnSumSq>)>>,
    disk: Option<DiskCache>,
    policy: KernelPolicy,
    /// Streamed weight tiles kept staged across calls.
    pub(crate) staged: StagedWeights,
    /// Which kernels are loaded, within the cap.
    residency: Residency,
    /// Set (by the kernel) once a streamed two-input kernel gave up at evaluation: every
    /// shape then uses the single-input form.
    two_input_gave_up: Arc<AtomicBool>,
}

impl std::fmt::Debug for KernelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.lock().map(|e| e.len()).unwrap_or(0);
        f.debug_struct("KernelCache").field("entries", &n).finish()
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
    /// (default [`DEFAULT_STAGED_WEIGHTS_BYTES`](super::DEFAULT_STAGED_WEIGHTS_BYTES); 0 stages
    /// every call).
    pub fn with_staged_weights_cap(mut self, bytes: usize) -> Self {
        self.staged = StagedWeights::new(bytes);
        self
    }

    /// The same cache keeping at most `max` kernels loaded at once (default
    /// [`DEFAULT_MAX_LOADED`](super::DEFAULT_MAX_LOADED); `None`: no cap). Past it the least
    /// recently used kernel is dropped and compiled again when needed.
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

    /// Marks a kernel used; drops (unloads) what the cap no longer has room for.
    fn touch(&self, key: Loaded) {
        for victim in self.residency.touch(key) {
            match victim {
                Loaded::Streamed(shape, two_input) => {
                    let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(forms) = entries.get_mut(&shape) {
                        if two_input {
                            forms.two_input = None;
                        } else {
                            forms.single = None;
                        }
                    }
                }
                Loaded::Baked(weight, tile) => {
                    let mut baked = self.baked.lock().unwrap_or_else(|e| e.into_inner());
                    baked.remove(&(weight, tile));
                }
                Loaded::Fused(weight, bucket) => {
                    let mut fused = self.fused.lock().unwrap_or_else(|e| e.into_inner());
                    fused.remove(&(weight, bucket));
                }
                Loaded::FusedStreamed(shape) => {
                    let mut fused = self
                        .fused_streamed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    fused.remove(&shape);
                }
            }
        }
    }

    /// The kernel-kind policy.
    pub fn policy(&self) -> KernelPolicy {
        self.policy
    }

    /// How many of these baked kernels are not compiled yet (for current weights).
    pub fn baked_missing(&self, id: &WeightId, tiles: &[BakedTile]) -> u32 {
        let baked = self.baked.lock().unwrap_or_else(|e| e.into_inner());
        tiles
            .iter()
            .filter(|&&t| !matches!(baked.get(&(id.key, t)), Some((f, _)) if *f == id.fingerprint))
            .count() as u32
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
        let key = (id.key, tile);
        let loaded = Loaded::Baked(id.key, tile);
        let result = {
            let mut baked = self.baked.lock().unwrap_or_else(|e| e.into_inner());
            match baked.get(&key) {
                Some((f, e)) if *f == id.fingerprint => {
                    stats.add_cache_hit();
                    Some(e.clone())
                }
                // the weights at this address changed: the old kernel holds stale values
                Some(_) => {
                    baked.remove(&key);
                    self.residency.forget(&loaded);
                    None
                }
                None => None,
            }
        };
        let result = match result {
            Some(r) => r,
            None => {
                let mut baked = self.baked.lock().unwrap_or_else(|e| e.into_inner());
                let files = baked_weights(&weights());
                let reload = self.residency.was_evicted(&loaded);
                let result = entry(&self.compile(
                    engine,
                    &baked_matmul_program(tile.bm, tile.bk, tile.bucket),
                    &files,
                    None,
                    reload,
                    stats,
                )?);
                baked.insert(key, (id.fingerprint, result.clone()));
                result
            }
        };
        if result.is_ok() {
            self.touch(loaded);
        }
        result
    }

    /// How many of these fused-block kernels (weights `id`, token `buckets`) are not compiled
    /// yet for the current weights.
    pub fn fused_missing(&self, id: &WeightId, buckets: &[usize]) -> u32 {
        let fused = self.fused.lock().unwrap_or_else(|e| e.into_inner());
        let mut b = buckets.to_vec();
        b.dedup();
        b.iter()
            .filter(|&&k| !matches!(fused.get(&(id.key, k)), Some((f, _)) if *f == id.fingerprint))
            .count() as u32
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
        let key = (id.key, bucket);
        let loaded = Loaded::Fused(id.key, bucket);
        let mut fused = self.fused.lock().unwrap_or_else(|e| e.into_inner());
        let result = match fused.get(&key) {
            Some((f, e)) if *f == id.fingerprint => {
                stats.add_cache_hit();
                e.clone()
            }
            _ => {
                // new, or the weights at this address changed
                self.residency.forget(&loaded);
                let (program, files) = build();
                let reload = self.residency.was_evicted(&loaded);
                let result = entry(&self.compile(engine, &program, &files, None, reload, stats)?);
                fused.insert(key, (id.fingerprint, result.clone()));
                result
            }
        };
        drop(fused);
        if result.is_ok() {
            self.touch(loaded);
        }
        result
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
        let loaded = Loaded::FusedStreamed(shape);
        let mut fused = self
            .fused_streamed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let result = match fused.get(&shape) {
            Some(e) => {
                stats.add_cache_hit();
                e.clone()
            }
            None => {
                let reload = self.residency.was_evicted(&loaded);
                let none = ane_mil::WeightFiles::new();
                let result = entry(&self.compile(engine, &build(), &none, None, reload, stats)?);
                fused.insert(shape, result.clone());
                result
            }
        };
        drop(fused);
        if result.is_ok() {
            self.touch(loaded);
        }
        result
    }

    /// The weights' column sums_of_squares for the precision check: summed once per fingerprint.
    pub(crate) fn weight_sum_sq(
        &self,
        id: &WeightId,
        compute: impl FnOnce() -> Arc<ColumnSumSq>,
    ) -> Arc<ColumnSumSq> {
        if let Some((f, e)) = self
            .sums_of_squares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id.key)
        {
            if *f == id.fingerprint {
                return e.clone();
            }
        }
        // summed outside the lock: other jobs need not wait for this one
        let e = compute();
        self.sums_of_squares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.key, (id.fingerprint, e.clone()));
        e
    }

    /// Compiles (or loads from disk); `Err` only for a spent budget, which is not cached.
    /// `gave_up` is set if the kernel ever gives up at evaluation. A `reload` (a kernel dropped
    /// to make room) is compiled, not loaded from disk: it spends budget until hardware shows
    /// a reload does not.
    fn compile(
        &self,
        engine: &dyn Engine,
        program: &ane_mil::Program,
        weights: &ane_mil::WeightFiles,
        gave_up: Option<Arc<AtomicBool>>,
        reload: bool,
        stats: &Stats,
    ) -> Result<CompiledForm, FallbackReason> {
        if reload {
            stats.add_reload();
        }
        let disk = if reload { None } else { self.disk.as_ref() };
        Ok(match compile_cached(engine, disk, program, weights) {
            Ok((kernel, from_disk)) => {
                if from_disk {
                    stats.add_disk_hit();
                } else {
                    stats.add_compile();
                }
                Ok(Arc::new(GivingUpKernel {
                    inner: kernel,
                    failures: AtomicU32::new(0),
                    gave_up,
                }))
            }
            Err(Error::BudgetExhausted { .. }) => return Err(FallbackReason::Budget),
            Err(Error::Unsupported { reason, .. }) => Err(FallbackReason::Unsupported(reason)),
            Err(e @ Error::RuleBroken { .. }) => Err(FallbackReason::Rules(e.to_string())),
            Err(Error::Compile(why)) => Err(FallbackReason::Compile(why)),
            Err(e) => Err(FallbackReason::Compile(e.to_string())),
        })
    }

    /// The streamed kernel for tile `(m, k, n)`, compiling it on first use: the single-input
    /// form ([`matmul_program`]); under [`KernelPolicy::TwoInput`] the two-input form
    /// ([`two_input_matmul_program`]) until it fails to compile or gives up at evaluation
    /// (docs/ane-notes.md#multi-input-requests). Callers tell them apart by the input count.
    ///
    /// The lock is held while compiling, so two threads never compile (and pay for) the same
    /// kernel twice. A spent budget is not remembered: it is reported again, cheaply.
    pub fn get_or_compile(
        &self,
        engine: &dyn Engine,
        m: usize,
        k: usize,
        n: usize,
        stats: &Stats,
    ) -> Result<Arc<dyn Kernel>, FallbackReason> {
        let (kernel, loaded) = self.streamed_kernel(engine, (m, k, n), stats)?;
        if kernel.is_ok() {
            self.touch(loaded);
        }
        kernel
    }

    /// [`get_or_compile`](Self::get_or_compile) under the entries' lock: the kernel, and which
    /// loaded kernel it is.
    #[allow(
        clippy::type_complexity,
        reason = "a kernel or why not, beside its residency key"
    )]
    fn streamed_kernel(
        &self,
        engine: &dyn Engine,
        (m, k, n): (usize, usize, usize),
        stats: &Stats,
    ) -> Result<(KernelOrWhy, Loaded), FallbackReason> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let none = Default::default();
        let forms = entries.entry((m, k, n)).or_default();
        let single = Loaded::Streamed((m, k, n), false);
        let two = Loaded::Streamed((m, k, n), true);
        let mut compiled_now = false;
        if self.policy == KernelPolicy::TwoInput && !self.two_input_gave_up.load(Ordering::Relaxed)
        {
            if forms.two_input.is_none() {
                let p = two_input_matmul_program(m, k, n);
                let flag = Some(self.two_input_gave_up.clone());
                let reload = self.residency.was_evicted(&two);
                forms.two_input = Some(self.compile(engine, &p, &none, flag, reload, stats)?);
                compiled_now = true;
            }
            match forms.two_input.as_ref() {
                // a form the engine refuses: the single-input one instead
                Some(Err(
                    FallbackReason::Compile(_)
                    | FallbackReason::Unsupported(_)
                    | FallbackReason::Rules(_),
                ))
                | None => {}
                Some(form) => {
                    if !compiled_now {
                        stats.add_cache_hit();
                    }
                    return Ok((entry(form), two));
                }
            }
        }
        let kernel = match &forms.single {
            Some(form) => {
                if !compiled_now {
                    stats.add_cache_hit();
                }
                entry(form)
            }
            None => {
                let p = matmul_program(m, k, n);
                let reload = self.residency.was_evicted(&single);
                let form = self.compile(engine, &p, &none, None, reload, stats)?;
                let kernel = entry(&form);
                forms.single = Some(form);
                kernel
            }
        };
        Ok((kernel, single))
    }
}

/// Consecutive failed evaluations after which a kernel is not tried again in this process.
pub const EVAL_FAILURES_BEFORE_GIVING_UP: u32 = 3;

/// A kernel that stops calling the engine once it has failed
/// [`EVAL_FAILURES_BEFORE_GIVING_UP`] times in a row: a program the hardware rejects at run
/// time (status 0x1d, say) would otherwise cost an attempt on every call before the CPU
/// computes the node. A success in between resets the count (transient failures pass).
struct GivingUpKernel {
    inner: Box<dyn Kernel>,
    failures: AtomicU32,
    /// Raised when this kernel gives up.
    gave_up: Option<Arc<AtomicBool>>,
}

impl GivingUpKernel {
    fn given_up(&self) -> bool {
        self.failures.load(Ordering::Relaxed) >= EVAL_FAILURES_BEFORE_GIVING_UP
    }
}

impl Kernel for GivingUpKernel {
    fn procedures(&self) -> &[crate::engine::ProcedureInfo] {
        self.inner.procedures()
    }

    fn run(
        &self,
        index: usize,
        inputs: &[&crate::surface::Surface],
        outputs: &mut [&mut crate::surface::Surface],
    ) -> crate::error::Result<()> {
        if self.given_up() {
            return Err(Error::Eval(format!(
                "not retried: failed {EVAL_FAILURES_BEFORE_GIVING_UP} times in a row"
            )));
        }
        // the surfaces were checked by the `eval` that called us
        let r = self.inner.run(index, inputs, outputs);
        match &r {
            Ok(()) => self.failures.store(0, Ordering::Relaxed),
            Err(_) => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= EVAL_FAILURES_BEFORE_GIVING_UP {
                    if let Some(flag) = &self.gave_up {
                        flag.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        r
    }
}
