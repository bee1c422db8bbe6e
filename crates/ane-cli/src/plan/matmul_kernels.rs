//! Compile accounting for a whole model's prefill: how many kernels a set of prompt lengths
//! needs under our policy (token buckets, weights as inputs), under `auto` (baking weights
//! while the budget allows) and under the seed's (arozanov/ggml-ane: one baked kernel per
//! weight and exact prompt length), for node-by-node matmuls. Moved here from `ane-runtime`:
//! it is the `ane plan` report, not part of executing programs.

use std::collections::BTreeSet;

use ane_runtime::disk_cache::{compile_cached, DiskCache};
use ane_runtime::kernels::policy::{should_bake, KernelPolicy, LoadedRoom};
use ane_runtime::matmul::{baked_tiles, input_width, kernel_shapes, matmul_program, BakedTile};
use std::path::Path;

use ane_mil::print_program;
use ane_runtime::{Engine, Limits, SurfaceDType, TensorLayout};
use anyhow::Context;

/// The matmul shapes of a llama-architecture model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ModelDims {
    /// Name for reports.
    pub(crate) name: String,
    /// Hidden size.
    pub(crate) dim: usize,
    /// Feed-forward size.
    pub(crate) ffn: usize,
    /// Transformer layers.
    pub(crate) layers: usize,
    /// Vocabulary (the output head).
    pub(crate) vocab: usize,
}

impl ModelDims {
    /// Llama-2-7B: dim 4096, ffn 11008, 32 layers, vocab 32000.
    pub(crate) fn llama_7b() -> Self {
        ModelDims {
            name: "llama-7b".into(),
            dim: 4096,
            ffn: 11008,
            layers: 32,
            vocab: 32000,
        }
    }

    /// Every weight matrix as `(m, k)` = (output features, input features), in graph order:
    /// per layer q, k, v, o, gate, up, down; then the output head.
    pub(crate) fn weights(&self) -> Vec<(usize, usize)> {
        let (d, f) = (self.dim, self.ffn);
        let mut w = Vec::with_capacity(self.layers * 7 + 1);
        for _ in 0..self.layers {
            w.extend([(d, d), (d, d), (d, d), (d, d), (f, d), (f, d), (d, f)]);
        }
        w.push((self.vocab, d));
        w
    }
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
    /// Weights the seed cannot run at all (a dimension past 16384).
    pub(crate) seed_refused: usize,
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
    /// The most kernels loaded at once (every kernel used stays loaded: the policy leaves the
    /// cap room for the streamed ones).
    pub(crate) peak_loaded: u32,
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
    // (weight index, tile)
    let mut baked: BTreeSet<(usize, BakedTile)> = BTreeSet::new();
    let mut all_baked: BTreeSet<(usize, BakedTile)> = BTreeSet::new();
    let mut streamed: BTreeSet<(usize, usize, usize)> = BTreeSet::new();
    let (mut baked_matmuls, mut streamed_matmuls) = (0, 0);
    for &n in lengths {
        for (w, &(m, k)) in model.weights().iter().enumerate() {
            let tiles: Vec<(usize, BakedTile)> = baked_tiles(m, k, n, max_dim)
                .into_iter()
                .map(|t| (w, t))
                .collect();
            all_baked.extend(tiles.iter().copied());
            let limits = Limits {
                max_dim,
                row_alignment: ane_runtime::engine::limits::ROW_ALIGNMENT,
                compile_budget: budget,
                compiles_used: used,
            };
            let missing = || tiles.iter().filter(|t| !baked.contains(t)).count() as u32;
            let room = LoadedRoom {
                baked_loaded: baked.len() as u32,
                max_loaded,
            };
            if should_bake(KernelPolicy::Auto, &limits, room, missing) {
                used += missing();
                baked.extend(tiles);
                baked_matmuls += 1;
            } else {
                for shape in kernel_shapes(m, k, n, max_dim) {
                    if budget.is_none_or(|b| used < b) && streamed.insert(shape) {
                        used += 1;
                    }
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
        peak_loaded: (baked.len() + streamed.len()) as u32,
    }
}

impl AutoPlan {
    /// As a JSON object.
    pub(crate) fn to_json(self) -> String {
        format!(
            "{{\"budget\": {}, \"compiles\": {}, \"baked_kernels\": {}, \"streamed_kernels\": {}, \"baked_matmuls\": {}, \"streamed_matmuls\": {}, \"all_baked_kernels\": {}, \"max_loaded\": {}, \"peak_loaded\": {}}}",
            self.budget.map_or("null".to_string(), |b| b.to_string()),
            self.compiles,
            self.baked_kernels,
            self.streamed_kernels,
            self.baked_matmuls,
            self.streamed_matmuls,
            self.all_baked_kernels,
            self.max_loaded.map_or("null".to_string(), |m| m.to_string()),
            self.peak_loaded
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
    let mut compiled: BTreeSet<(usize, usize, usize)> = BTreeSet::new();
    let mut seed_seen: BTreeSet<usize> = BTreeSet::new();
    let mut surface_bytes = 0;
    let mut disk_hits = 0;
    let mut rows = Vec::new();
    for &n in lengths {
        let mut used = BTreeSet::new();
        let mut new = 0;
        for &(m, k) in &weights {
            for shape in kernel_shapes(m, k, n, limits.max_dim) {
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
        let seed_refused = weights
            .iter()
            .filter(|&&(m, k)| m.max(k).max(n) > 16384)
            .count();
        let seed_compiles = if seed_seen.insert(n) {
            weights.len() - seed_refused
        } else {
            0
        };
        rows.push(LengthPlan {
            tokens: n,
            matmuls: weights.len(),
            kernels: used.len(),
            new_compiles: new,
            seed_compiles,
            seed_refused,
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
                    "{{\"tokens\": {}, \"matmuls\": {}, \"kernels\": {}, \"new_compiles\": {}, \"seed_compiles\": {}, \"seed_refused\": {}}}",
                    r.tokens, r.matmuls, r.kernels, r.new_compiles, r.seed_compiles, r.seed_refused
                )
            })
            .collect();
        let m = &self.model;
        format!(
            "{{\"model\": {{\"name\": \"{}\", \"dim\": {}, \"ffn\": {}, \"layers\": {}, \"vocab\": {}}}, \"compiles\": {}, \"disk_hits\": {}, \"seed_compiles\": {}, \"surface_bytes\": {}, \"budget\": {}, \"lengths\": [{}]}}",
            m.name.replace('"', ""),
            m.dim,
            m.ffn,
            m.layers,
            m.vocab,
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
        assert_eq!(auto.streamed_kernels, 30);
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

    /// A 7B prefill at 8 prompt lengths: a handful of compiles, where the seed's policy needs a
    /// compile per weight per length and cannot run the 32000-wide head at all.
    #[test]
    fn a_7b_prefill_plan_stays_far_under_the_compile_wall() {
        let engine = ReferenceEngine::with_config(
            ReferenceConfig::default().with_counter(CompileCounter::new(Some(119))),
        );
        let lengths = [17, 64, 100, 128, 333, 512, 1000, 2048];
        let plan = plan_prefill(&engine, None, &ModelDims::llama_7b(), &lengths, None).unwrap();
        // 5 kernel shapes (dim², ffn×dim, dim×ffn, and the head in 3 tiles of 10688/10624
        // rows beside the 2048-token chunk, a streamed input's width being tokens + rows)
        // × 6 buckets; every one passes the ANE rulebook (the engine enforces it)
        assert_eq!(plan.compiles, 30);
        assert_eq!(
            engine.limits().compiles_used,
            30,
            "every planned kernel was really compiled"
        );
        assert_eq!(plan.seed_compiles, 8 * 224);
        assert!(plan
            .lengths
            .iter()
            .all(|r| r.kernels == 5 && r.matmuls == 225 && r.seed_refused == 1));
        let new: Vec<usize> = plan.lengths.iter().map(|r| r.new_compiles).collect();
        assert_eq!(new, [5, 5, 5, 0, 5, 0, 5, 5]);
        // prompts longer than 2048 tokens run in 2048-token chunks: 4096 needs one bucket,
        // 3000 adds only the 1024 bucket for its tail
        let long =
            plan_prefill(&engine, None, &ModelDims::llama_7b(), &[4096, 3000], None).unwrap();
        let rows: Vec<(usize, usize)> = long
            .lengths
            .iter()
            .map(|r| (r.kernels, r.new_compiles))
            .collect();
        assert_eq!(rows, [(5, 5), (10, 5)]);
        assert!(
            plan.to_json().starts_with("{\"model\"") && plan.to_json().contains("\"compiles\": 30")
        );
    }
}
