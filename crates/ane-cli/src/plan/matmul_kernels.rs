//! Compile accounting for a whole model's prefill: how many kernels a set of prompt lengths
//! needs under our policy (token buckets, weights as inputs), under `auto` (baking weights
//! while the budget allows) and under the seed's (arozanov/ggml-ane: one baked kernel per
//! weight and exact prompt length), for node-by-node matmuls. Moved here from `ane-runtime`:
//! it is the `ane plan` report, not part of executing programs.

use std::collections::BTreeSet;

use ane_runtime::disk_cache::{compile_cached, DiskCache};
use ane_runtime::kernels::policy::{should_bake, KernelPolicy, LoadedRoom};
use ane_runtime::matmul::{
    baked_tiles, input_width, kernel_shapes, matmul_program, streamed_tile_sizes, token_chunks,
    BakedTile,
};
use std::path::Path;

use ane_mil::print_program;
use ane_runtime::{Engine, Limits, SurfaceDType, TensorLayout};
use anyhow::Context;

/// The matmul shapes of a llama-architecture model, dense or mixture-of-experts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ModelDims {
    /// Name for reports.
    pub(crate) name: String,
    /// Hidden size.
    pub(crate) dim: usize,
    /// Feed-forward size (a dense FFN's; an MoE's shared expert's, 0 without one).
    pub(crate) ffn: usize,
    /// Transformer layers.
    pub(crate) layers: usize,
    /// Vocabulary (the output head).
    pub(crate) vocab: usize,
    /// Query projection outputs (heads × head size; `dim` without grouped heads).
    pub(crate) q_dim: usize,
    /// Key and value projection outputs each (KV heads × head size).
    pub(crate) kv_dim: usize,
    /// The routed experts of an MoE FFN.
    pub(crate) experts: Option<ExpertDims>,
}

/// An MoE layer's routed experts: `count` FFNs of `ffn` hidden features, `used` per token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ExpertDims {
    /// Experts per layer.
    pub(crate) count: usize,
    /// Experts each token is routed to.
    pub(crate) used: usize,
    /// Hidden features of one expert.
    pub(crate) ffn: usize,
}

/// Tokens an expert's batch needs to go to the engine, as ggml-ane's MUL_MAT_ID does
/// (`compute/experts.rs`: a quarter of the smallest bucket); thinner experts run on the CPU.
pub(crate) const MIN_EXPERT_TOKENS: usize = 8;

/// One weight matrix of a layer (or the head): `m` outputs by `k` inputs; `per_expert` when
/// the layer holds one such matrix per routed expert (a MUL_MAT_ID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Weight {
    /// Output features.
    pub(crate) m: usize,
    /// Input features.
    pub(crate) k: usize,
    /// One per routed expert.
    pub(crate) per_expert: bool,
}

impl ModelDims {
    /// A dense llama-architecture model without grouped heads.
    pub(crate) fn dense(name: &str, dim: usize, ffn: usize, layers: usize, vocab: usize) -> Self {
        ModelDims {
            name: name.into(),
            dim,
            ffn,
            layers,
            vocab,
            q_dim: dim,
            kv_dim: dim,
            experts: None,
        }
    }

    /// Llama-2-7B: dim 4096, ffn 11008, 32 layers, vocab 32000.
    pub(crate) fn llama_7b() -> Self {
        Self::dense("llama-7b", 4096, 11008, 32, 32000)
    }

    /// Qwen3-30B-A3B (its `config.json`): dim 2048, 48 layers, 32 query heads and 4 KV heads
    /// of 128, 128 experts of 768 hidden features with 8 used per token, no shared expert,
    /// vocab 151936.
    pub(crate) fn qwen3_30b_a3b() -> Self {
        ModelDims {
            name: "qwen3-30b-a3b".into(),
            dim: 2048,
            ffn: 0,
            layers: 48,
            vocab: 151_936,
            q_dim: 32 * 128,
            kv_dim: 4 * 128,
            experts: Some(ExpertDims {
                count: 128,
                used: 8,
                ffn: 768,
            }),
        }
    }

    /// One layer's weight matrices in graph order: q, k, v, o, then the FFN's gate, up and
    /// down (the shared expert's before the routed experts').
    pub(crate) fn layer_weights(&self) -> Vec<Weight> {
        let d = self.dim;
        let w = |m, k, per_expert| Weight { m, k, per_expert };
        let mut v = vec![
            w(self.q_dim, d, false),
            w(self.kv_dim, d, false),
            w(self.kv_dim, d, false),
            w(d, self.q_dim, false),
        ];
        if self.ffn > 0 {
            v.extend([
                w(self.ffn, d, false),
                w(self.ffn, d, false),
                w(d, self.ffn, false),
            ]);
        }
        if let Some(e) = self.experts {
            v.extend([w(e.ffn, d, true), w(e.ffn, d, true), w(d, e.ffn, true)]);
        }
        v
    }

    /// Every weight matrix in graph order: each layer's, then the output head.
    pub(crate) fn weights(&self) -> Vec<Weight> {
        let layer = self.layer_weights();
        let mut w = Vec::with_capacity(self.layers * layer.len() + 1);
        for _ in 0..self.layers {
            w.extend(&layer);
        }
        w.push(Weight {
            m: self.vocab,
            k: self.dim,
            per_expert: false,
        });
        w
    }

    /// The tokens each routed expert gets from a prompt of `n` when routing spreads them
    /// evenly (`n · used / count`, rounded up), and how many experts that puts on the engine
    /// (all, or none when the batches are thinner than [`MIN_EXPERT_TOKENS`]).
    pub(crate) fn even_expert_batch(&self, n: usize) -> Option<(usize, usize)> {
        let e = self.experts?;
        let tokens = (n * e.used).div_ceil(e.count).min(n);
        let on_engine = if tokens >= MIN_EXPERT_TOKENS {
            e.count
        } else {
            0
        };
        Some((tokens, on_engine))
    }

    /// How often weight `w` of a layer runs in a prompt of `n` tokens, and on how many tokens
    /// each time: a dense weight once on `n`; an expert's once per expert that gets a batch
    /// under even routing, on that batch (never, when the batches are too thin).
    pub(crate) fn runs(&self, w: &Weight, n: usize) -> (usize, usize) {
        match (w.per_expert, self.even_expert_batch(n)) {
            (false, _) => (1, n),
            (true, Some((tokens, on_engine))) => (on_engine, tokens),
            (true, None) => (0, 0),
        }
    }
}

/// The expert batch sizes a prompt of `n` can produce whatever the routing (8, 16, … up to
/// `n`, and `n`): an expert gets between [`MIN_EXPERT_TOKENS`] and `n` tokens, so its kernels
/// may be any bucket up to `n`'s.
pub(crate) fn any_expert_batches(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = std::iter::successors(Some(MIN_EXPERT_TOKENS), |g| Some(g * 2))
        .take_while(|&g| g < n)
        .collect();
    if n >= MIN_EXPERT_TOKENS {
        v.push(n);
    }
    v
}

/// One prompt length's row of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LengthPlan {
    /// Tokens.
    pub(crate) tokens: usize,
    /// MUL_MATs in the prefill.
    pub(crate) matmuls: usize,
    /// Distinct kernels this length uses.
    pub(crate) kernels: usize,
    /// Kernels compiled for this length that earlier lengths had not needed.
    pub(crate) new_compiles: usize,
    /// The seed's compiles for this length (one per weight, for every new length).
    pub(crate) seed_compiles: usize,
    /// Weights the seed cannot run at all (a dimension past 16384, or an expert's: it takes
    /// 2-D MUL_MAT only).
    pub(crate) seed_refused: usize,
    /// Engine dispatches per layer (node by node; routed experts spread evenly).
    pub(crate) dispatches_per_layer: usize,
    /// Tokens per routed expert when spread evenly, and the experts of a layer that get
    /// enough to go to the engine (an MoE only).
    pub(crate) expert_batch: Option<(usize, usize)>,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PrefillPlan {
    /// The model.
    pub(crate) model: ModelDims,
    /// Per prompt length, in the order given.
    pub(crate) lengths: Vec<LengthPlan>,
    /// Kernels compiled in total (counted by the engine that compiled them).
    pub(crate) compiles: u32,
    /// Kernels loaded from the on-disk cache instead.
    pub(crate) disk_hits: usize,
    /// The seed's total.
    pub(crate) seed_compiles: usize,
    /// Bytes of input and output surfaces, summed over the kernels.
    pub(crate) surface_bytes: usize,
    /// The engine's compile budget.
    pub(crate) budget: Option<u32>,
}

/// What `GGML_ANE_KERNELS=auto` would compile for the same prefill within a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AutoPlan {
    /// The budget planned against.
    pub(crate) budget: Option<u32>,
    /// Compiles in total (baked + streamed).
    pub(crate) compiles: u32,
    /// Baked kernels (weight tile × token bucket).
    pub(crate) baked_kernels: u32,
    /// Streamed kernels (tile shape × token bucket).
    pub(crate) streamed_kernels: u32,
    /// Matmuls (over all lengths) served by baked kernels.
    pub(crate) baked_matmuls: u32,
    /// Matmuls served by streamed kernels.
    pub(crate) streamed_matmuls: u32,
    /// Baked kernels if every weight were baked (`GGML_ANE_KERNELS=baked` without a budget).
    pub(crate) all_baked_kernels: u32,
    /// The cap on loaded kernels the replay kept to.
    pub(crate) max_loaded: Option<u32>,
    /// The most kernels loaded at once (within the cap: past it the least recently used is
    /// dropped).
    pub(crate) peak_loaded: u32,
    /// Distinct kernels the prefill uses (baked + streamed).
    pub(crate) used_kernels: u32,
    /// Kernels dropped to keep within the cap and loaded again later in the replay (each a
    /// compile until a Mac shows a reload is cheaper: `kernels::residency`).
    pub(crate) reloads: u32,
}

/// A kernel of the replay: a baked tile of one weight (and expert), or a streamed shape.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum PlannedKernel {
    Baked((usize, usize), BakedTile),
    Streamed((usize, usize, usize)),
}

/// The loaded kernels of a replay, least recently used first, as `kernels::residency` keeps
/// them: past the cap the least recently used is dropped; using a dropped one again reloads it.
struct LoadedKernels {
    cap: Option<usize>,
    order: Vec<PlannedKernel>,
    dropped: std::collections::HashSet<PlannedKernel>,
    reloads: u32,
    peak: usize,
}

impl LoadedKernels {
    fn touch(&mut self, k: PlannedKernel) {
        if let Some(i) = self.order.iter().position(|&o| o == k) {
            self.order.remove(i);
        } else if self.dropped.remove(&k) {
            self.reloads += 1;
        }
        self.order.push(k);
        self.peak = self
            .peak
            .max(self.order.len().min(self.cap.unwrap_or(usize::MAX)));
        if self.cap.is_some_and(|cap| self.order.len() > cap) {
            self.dropped.insert(self.order.remove(0));
        }
    }
}

/// Replays the `auto` decisions ([`should_bake`]) over the prefill in graph order, counting
/// compiles instead of making them (baking a 7B model's zero weights would need 13 GB).
pub(crate) fn plan_auto(
    model: &ModelDims,
    lengths: &[usize],
    budget: Option<u32>,
    max_loaded: Option<u32>,
    max_dim: usize,
) -> AutoPlan {
    let mut used = 0u32;
    // ((weight index, expert), tile)
    let mut baked: BTreeSet<((usize, usize), BakedTile)> = BTreeSet::new();
    let mut all_baked: BTreeSet<((usize, usize), BakedTile)> = BTreeSet::new();
    let mut streamed: BTreeSet<(usize, usize, usize)> = BTreeSet::new();
    let (mut baked_matmuls, mut streamed_matmuls) = (0, 0);
    let mut loaded = LoadedKernels {
        cap: max_loaded.map(|c| c as usize),
        order: Vec::new(),
        dropped: Default::default(),
        reloads: 0,
        peak: 0,
    };
    let weights = model.weights();
    for &n in lengths {
        // every matmul job of this prefill: (weight, expert, m, k, tokens), in graph order
        let jobs = weights.iter().enumerate().flat_map(|(w, wt)| {
            let (experts, tokens) = model.runs(wt, n);
            (0..experts).map(move |e| (w, e, wt.m, wt.k, tokens))
        });
        for (w, e, m, k, n) in jobs {
            let tiles: Vec<((usize, usize), BakedTile)> = baked_tiles(m, k, n, max_dim)
                .into_iter()
                .map(|t| ((w, e), t))
                .collect();
            all_baked.extend(tiles.iter().copied());
            let limits = Limits {
                max_dim,
                row_alignment: ane_runtime::engine::limits::ROW_ALIGNMENT,
                compile_budget: budget,
                compiles_used: used,
                accumulator: Default::default(),
            };
            let missing = || tiles.iter().filter(|t| !baked.contains(t)).count() as u32;
            let room = LoadedRoom {
                baked_loaded: baked.len() as u32,
                max_loaded,
            };
            if should_bake(KernelPolicy::Auto, &limits, room, missing) {
                used += missing();
                for &(key, t) in &tiles {
                    loaded.touch(PlannedKernel::Baked(key, t));
                }
                baked.extend(tiles);
                baked_matmuls += 1;
            } else {
                for shape in kernel_shapes(m, k, n, max_dim) {
                    if budget.is_none_or(|b| used < b) && streamed.insert(shape) {
                        used += 1;
                    }
                    loaded.touch(PlannedKernel::Streamed(shape));
                }
                streamed_matmuls += 1;
            }
        }
    }
    AutoPlan {
        budget,
        compiles: used,
        baked_kernels: baked.len() as u32,
        streamed_kernels: streamed.len() as u32,
        baked_matmuls,
        streamed_matmuls,
        all_baked_kernels: all_baked.len() as u32,
        max_loaded,
        peak_loaded: loaded.peak as u32,
        used_kernels: (baked.len() + streamed.len()) as u32,
        reloads: loaded.reloads,
    }
}

impl AutoPlan {
    /// As a JSON object.
    pub(crate) fn to_json(self) -> String {
        format!(
            "{{\"budget\": {}, \"compiles\": {}, \"baked_kernels\": {}, \"streamed_kernels\": {}, \"baked_matmuls\": {}, \"streamed_matmuls\": {}, \"all_baked_kernels\": {}, \"max_loaded\": {}, \"peak_loaded\": {}, \"used_kernels\": {}, \"reloads\": {}}}",
            self.budget.map_or("null".to_string(), |b| b.to_string()),
            self.compiles,
            self.baked_kernels,
            self.streamed_kernels,
            self.baked_matmuls,
            self.streamed_matmuls,
            self.all_baked_kernels,
            self.max_loaded.map_or("null".to_string(), |m| m.to_string()),
            self.peak_loaded,
            self.used_kernels,
            self.reloads
        )
    }
}

/// Plans (and compiles, on `engine`) every kernel a prefill of each length needs; with
/// `emit`, also writes each as `<emit>/<kernel>/model.mil` (what the engine compiles, byte for
/// byte: the streamed kernels have no weight files).
pub(crate) fn plan_prefill(
    engine: &dyn Engine,
    disk: Option<&DiskCache>,
    model: &ModelDims,
    lengths: &[usize],
    emit: Option<&Path>,
) -> anyhow::Result<PrefillPlan> {
    let limits = engine.limits();
    let before = limits.compiles_used;
    let weights = model.weights();
    let dense = weights.iter().filter(|w| !w.per_expert).count();
    let expert_weights = (weights.len() - dense) * model.experts.map_or(0, |e| e.count);
    let mut compiled: BTreeSet<(usize, usize, usize)> = BTreeSet::new();
    let mut seed_seen: BTreeSet<usize> = BTreeSet::new();
    let mut surface_bytes = 0;
    let mut disk_hits = 0;
    let mut rows = Vec::new();
    for &n in lengths {
        let mut used = BTreeSet::new();
        let mut new = 0;
        for w in &weights {
            let shapes: BTreeSet<(usize, usize, usize)> = if w.per_expert {
                any_expert_batches(n)
                    .into_iter()
                    .flat_map(|g| kernel_shapes(w.m, w.k, g, limits.max_dim))
                    .collect()
            } else {
                kernel_shapes(w.m, w.k, n, limits.max_dim)
                    .into_iter()
                    .collect()
            };
            for shape in shapes {
                used.insert(shape);
                if compiled.insert(shape) {
                    let (bm, bk, bn) = shape;
                    let program = matmul_program(bm, bk, bn);
                    if let Some(dir) = emit {
                        let kernel = dir.join(format!("streamed_{bm}x{bk}x{bn}"));
                        std::fs::create_dir_all(&kernel)
                            .with_context(|| format!("creating {}", kernel.display()))?;
                        let path = kernel.join("model.mil");
                        std::fs::write(&path, print_program(&program))
                            .with_context(|| format!("writing {}", path.display()))?;
                    }
                    let (_, from_disk) =
                        compile_cached(engine, disk, &program, &Default::default())?;
                    disk_hits += usize::from(from_disk);
                    surface_bytes += io_bytes(bm, bk, bn, limits.row_alignment);
                    new += 1;
                }
            }
        }
        let too_wide = weights
            .iter()
            .filter(|w| !w.per_expert && w.m.max(w.k).max(n) > 16384)
            .count();
        let seed_compiles = if seed_seen.insert(n) {
            dense - too_wide
        } else {
            0
        };
        let expert_batch = model.even_expert_batch(n);
        let expert_jobs = expert_batch.map_or(0, |(_, on)| on) * (weights.len() - dense);
        rows.push(LengthPlan {
            tokens: n,
            matmuls: dense + expert_jobs,
            kernels: used.len(),
            new_compiles: new,
            seed_compiles,
            seed_refused: too_wide + expert_weights,
            dispatches_per_layer: dispatches_per_layer(model, n, limits.max_dim),
            expert_batch,
        });
    }
    let after = engine.limits().compiles_used;
    Ok(PrefillPlan {
        model: model.clone(),
        seed_compiles: rows.iter().map(|r| r.seed_compiles).sum(),
        lengths: rows,
        compiles: after - before,
        disk_hits,
        surface_bytes,
        budget: limits.compile_budget,
    })
}

/// Engine dispatches of one layer's matmuls run node by node on a prompt of `n` tokens: each
/// weight's streamed tiles times its token chunks; a routed expert's as often as experts get a
/// batch when routing spreads the tokens evenly.
pub(crate) fn dispatches_per_layer(model: &ModelDims, n: usize, max_dim: usize) -> usize {
    let calls = |m: usize, k: usize, tokens: usize| {
        let (tm, tk) = streamed_tile_sizes(m, k, max_dim);
        m.div_ceil(tm) * k.div_ceil(tk) * token_chunks(tokens, max_dim, 1).len()
    };
    model
        .layer_weights()
        .iter()
        .map(|w| {
            let (count, tokens) = model.runs(w, n);
            count * calls(w.m, w.k, tokens)
        })
        .sum()
}

/// Bytes of a streamed kernel's surfaces: `x [1, k, 1, n + m]` in, `y [1, m, 1, n]` out.
fn io_bytes(m: usize, k: usize, n: usize, align: usize) -> usize {
    let l = |name: &str, shape: &[usize]| {
        TensorLayout::aligned(name, SurfaceDType::F16, shape, align).map_or(0, |l| l.byte_len())
    };
    l("x", &[1, k, 1, input_width(m, n)]) + l("y", &[1, m, 1, n])
}

impl PrefillPlan {
    /// The report as JSON (top-level `"compiles"`), written by hand: a flat, fixed schema;
    /// `auto` adds the `"auto"` object.
    pub(crate) fn to_json_with(&self, auto: Option<&AutoPlan>) -> String {
        let mut j = self.to_json();
        if let Some(a) = auto {
            j.pop();
            j += &format!(", \"auto\": {}}}", a.to_json());
        }
        j
    }

    /// The report as JSON (top-level `"compiles"`), written by hand: a flat, fixed schema.
    pub(crate) fn to_json(&self) -> String {
        let rows: Vec<String> = self
            .lengths
            .iter()
            .map(|r| {
                format!(
                    "{{\"tokens\": {}, \"matmuls\": {}, \"kernels\": {}, \"new_compiles\": {}, \"seed_compiles\": {}, \"seed_refused\": {}, \"dispatches_per_layer\": {}, \"tokens_per_expert\": {}, \"experts_on_engine\": {}}}",
                    r.tokens, r.matmuls, r.kernels, r.new_compiles, r.seed_compiles, r.seed_refused,
                    r.dispatches_per_layer,
                    r.expert_batch.map_or("null".into(), |b| b.0.to_string()),
                    r.expert_batch.map_or("null".into(), |b| b.1.to_string())
                )
            })
            .collect();
        let m = &self.model;
        format!(
            "{{\"model\": {{\"name\": \"{}\", \"dim\": {}, \"ffn\": {}, \"layers\": {}, \"vocab\": {}, \"q_dim\": {}, \"kv_dim\": {}, \"experts\": {}}}, \"compiles\": {}, \"disk_hits\": {}, \"seed_compiles\": {}, \"surface_bytes\": {}, \"budget\": {}, \"lengths\": [{}]}}",
            m.name.replace('"', ""),
            m.dim,
            m.ffn,
            m.layers,
            m.vocab,
            m.q_dim,
            m.kv_dim,
            m.experts.map_or("null".into(), |e| format!(
                "{{\"count\": {}, \"used\": {}, \"ffn\": {}}}",
                e.count, e.used, e.ffn
            )),
            self.compiles,
            self.disk_hits,
            self.seed_compiles,
            self.surface_bytes,
            self.budget.map_or("null".to_string(), |b| b.to_string()),
            rows.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{plan_auto, plan_prefill, ModelDims};
    use ane_runtime::engine::reference::{ReferenceConfig, ReferenceEngine};
    use ane_runtime::{CompileCounter, Engine};

    #[test]
    fn auto_planning_for_a_7b_prefill_stays_within_the_apple_budget() {
        let lengths = [17, 64, 100, 128, 333, 512, 1000, 2048];
        let model = ModelDims::llama_7b();
        let auto = plan_auto(&model, &lengths, Some(100), Some(48), 16384);
        assert!(auto.compiles <= 100, "{auto:?}");
        assert_eq!(auto.compiles, auto.baked_kernels + auto.streamed_kernels);
        // baking leaves the loaded-kernel cap room for the streamed kernels
        assert!(
            auto.baked_kernels > 0 && auto.baked_kernels <= 48 - 32,
            "{auto:?}"
        );
        assert!(auto.peak_loaded <= 48, "{auto:?}");
        // without the cap, the budget alone would keep 98 kernels loaded: past the ~55 the
        // hardware holds
        let uncapped = plan_auto(&model, &lengths, Some(100), None, 16384);
        assert!(uncapped.peak_loaded > 55, "{uncapped:?}");
        // the streamed kernels `ane plan` counts for these lengths: every matmul still has one
        assert_eq!(auto.streamed_kernels, 36);
        assert_eq!(auto.baked_matmuls + auto.streamed_matmuls, 225 * 8);
        // baked tiles within the cited 47 MiB a program: per layer Q, K, V, O whole (32 MiB),
        // gate, up and down in two tiles each (43 MiB); the vocab head in six; 6 buckets
        let tiles = 32 * (4 + 3 * 2) + 6;
        assert_eq!(auto.all_baked_kernels, tiles * 6);
        // no budget: everything baked
        let unlimited = plan_auto(&model, &lengths, None, None, 16384);
        assert_eq!(unlimited.compiles, tiles * 6);
        assert_eq!(unlimited.streamed_kernels, 0);
    }

    /// Qwen3-30B-A3B's prefill: every routed expert's matmuls compiled for any batch its
    /// routing can give (8 tokens up to the prompt), within the budget; under `auto` within the
    /// cap with nothing loaded twice; the calls per layer grow with the experts that get a batch.
    #[test]
    fn an_moe_prefill_plan_stays_within_the_budget_and_the_cap() {
        let engine = ReferenceEngine::with_config(
            ReferenceConfig::default().with_counter(CompileCounter::new(Some(119))),
        );
        let lengths = [17, 64, 100, 128, 333, 512, 1000, 2048];
        let model = ModelDims::qwen3_30b_a3b();
        let plan = plan_prefill(&engine, None, &model, &lengths, None).unwrap();
        assert!(plan.compiles <= 100, "{plan:?}");
        assert_eq!(engine.limits().compiles_used, plan.compiles);
        // at 2048 tokens: q, k/v, o and the head's two tile heights at the 2048 bucket, and the
        // experts' two shapes (768×2048, 2048×768) at every bucket from 32 to 2048
        let last = plan.lengths.last().unwrap();
        assert_eq!(last.kernels, 5 + 2 * 7, "{last:?}");
        // even routing: 8 of 128 experts per token; below 8 tokens an expert stays on the CPU
        let rows: Vec<(usize, (usize, usize), usize)> = plan
            .lengths
            .iter()
            .map(|r| (r.tokens, r.expert_batch.unwrap(), r.dispatches_per_layer))
            .collect();
        // q, k, v and o (o's K = 4096 in two tiles of 2048): 5 calls
        assert_eq!(rows[0], (17, (2, 0), 5));
        assert_eq!(rows[2], (100, (7, 0), 5));
        assert_eq!(rows[3], (128, (8, 128), 5 + 3 * 128));
        assert_eq!(rows[7], (2048, (128, 128), 5 + 3 * 128));
        assert_eq!(plan.lengths[3].matmuls, 48 * (4 + 3 * 128) + 1);
        // the seed takes 2-D MUL_MAT only: every expert's weights, and the 151936-row head
        assert!(plan
            .lengths
            .iter()
            .all(|r| r.seed_refused == 1 + 48 * 3 * 128));
        let auto = plan_auto(&model, &lengths, Some(100), Some(48), 16384);
        assert!(auto.compiles <= 100, "{auto:?}");
        assert!(auto.peak_loaded <= 48 && auto.reloads == 0, "{auto:?}");
        // a dense model's rows carry no expert batch
        let dense = plan_prefill(&engine, None, &ModelDims::llama_7b(), &[512], None).unwrap();
        assert_eq!(dense.lengths[0].expert_batch, None);
        // Q, K, V, O, gate and up in two K tiles of 2048, down in six of 1856/1728
        assert_eq!(dense.lengths[0].dispatches_per_layer, 18);
    }

    /// A 7B prefill at 8 prompt lengths: a handful of compiles, where the seed's policy needs a
    /// compile per weight per length and cannot run the 32000-wide head at all.
    #[test]
    fn a_7b_prefill_plan_stays_far_under_the_compile_wall() {
        let engine = ReferenceEngine::with_config(
            ReferenceConfig::default().with_counter(CompileCounter::new(Some(119))),
        );
        let lengths = [17, 64, 100, 128, 333, 512, 1000, 2048];
        let plan = plan_prefill(&engine, None, &ModelDims::llama_7b(), &lengths, None).unwrap();
        // 6 kernel shapes, K within 2048 (dim × 2048, ffn × 2048, dim × 1856 and × 1728 for
        // the down projection's K tiles, and the head in 3 tiles of 10688/10624 rows beside
        // the 2048-token chunk, a streamed input's width being tokens + rows) × 6 buckets;
        // every one passes the ANE rulebook (the engine enforces it)
        assert_eq!(plan.compiles, 36);
        assert_eq!(
            engine.limits().compiles_used,
            36,
            "every planned kernel was really compiled"
        );
        assert_eq!(plan.seed_compiles, 8 * 224);
        assert!(plan
            .lengths
            .iter()
            .all(|r| r.kernels == 6 && r.matmuls == 225 && r.seed_refused == 1));
        let new: Vec<usize> = plan.lengths.iter().map(|r| r.new_compiles).collect();
        assert_eq!(new, [6, 6, 6, 0, 6, 0, 6, 6]);
        // prompts longer than 2048 tokens run in 2048-token chunks: 4096 needs one bucket,
        // 3000 adds only the 1024 bucket for its tail
        let long =
            plan_prefill(&engine, None, &ModelDims::llama_7b(), &[4096, 3000], None).unwrap();
        let rows: Vec<(usize, usize)> = long
            .lengths
            .iter()
            .map(|r| (r.kernels, r.new_compiles))
            .collect();
        assert_eq!(rows, [(6, 6), (12, 6)]);
        assert!(
            plan.to_json().starts_with("{\"model\"") && plan.to_json().contains("\"compiles\": 36")
        );
    }
}
