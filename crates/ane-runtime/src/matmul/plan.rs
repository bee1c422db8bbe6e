//! Compile accounting for a whole model's prefill: how many kernels a set of prompt lengths
//! needs under our policy (token buckets, weights as inputs), under `auto` (baking weights
//! while the budget allows) and under the seed's (one baked kernel per weight and exact
//! prompt length).

use std::collections::BTreeSet;

use super::policy::{should_bake, KernelPolicy};
use super::program::{baked_tiles, kernel_shapes, matmul_program, BakedTile};
use crate::disk_cache::DiskCache;
use crate::engine::Limits;
use crate::engine::{compile_cached, Engine};
use crate::error::Result;
use crate::layout::{SurfaceDType, TensorLayout};

/// The matmul shapes of a llama-architecture model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelDims {
    /// Name for reports.
    pub name: String,
    /// Hidden size.
    pub dim: usize,
    /// Feed-forward size.
    pub ffn: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Vocabulary (the output head).
    pub vocab: usize,
}

impl ModelDims {
    /// Llama-2-7B: dim 4096, ffn 11008, 32 layers, vocab 32000.
    pub fn llama_7b() -> Self {
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
    pub fn weights(&self) -> Vec<(usize, usize)> {
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
pub struct LengthPlan {
    /// Tokens.
    pub tokens: usize,
    /// MUL_MATs in the prefill.
    pub matmuls: usize,
    /// Distinct kernels this length uses.
    pub kernels: usize,
    /// Kernels compiled for this length that earlier lengths had not needed.
    pub new_compiles: usize,
    /// The seed's compiles for this length (one per weight, for every new length).
    pub seed_compiles: usize,
    /// Weights the seed cannot run at all (a dimension past 16384).
    pub seed_refused: usize,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefillPlan {
    /// The model.
    pub model: ModelDims,
    /// Per prompt length, in the order given.
    pub lengths: Vec<LengthPlan>,
    /// Kernels compiled in total (counted by the engine that compiled them).
    pub compiles: u32,
    /// Kernels loaded from the on-disk cache instead.
    pub disk_hits: usize,
    /// The seed's total.
    pub seed_compiles: usize,
    /// Bytes of input and output surfaces, summed over the kernels.
    pub surface_bytes: usize,
    /// The engine's compile budget.
    pub budget: Option<u32>,
}

/// What `GGML_ANE_KERNELS=auto` would compile for the same prefill within a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoPlan {
    /// The budget planned against.
    pub budget: Option<u32>,
    /// Compiles in total (baked + streamed).
    pub compiles: u32,
    /// Baked kernels (weight tile × token bucket).
    pub baked_kernels: u32,
    /// Streamed kernels (tile shape × token bucket).
    pub streamed_kernels: u32,
    /// Matmuls (over all lengths) served by baked kernels.
    pub baked_matmuls: u32,
    /// Matmuls served by streamed kernels.
    pub streamed_matmuls: u32,
    /// Baked kernels if every weight were baked (`GGML_ANE_KERNELS=baked` without a budget).
    pub all_baked_kernels: u32,
}

/// Replays the `auto` decisions ([`should_bake`]) over the prefill in graph order, counting
/// compiles instead of making them (baking a 7B model's zero weights would need 13 GB).
pub fn plan_auto(
    model: &ModelDims,
    lengths: &[usize],
    budget: Option<u32>,
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
                row_alignment: 64,
                compile_budget: budget,
                compiles_used: used,
            };
            let missing = || tiles.iter().filter(|t| !baked.contains(t)).count() as u32;
            if should_bake(KernelPolicy::Auto, &limits, missing) {
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
    }
}

impl AutoPlan {
    /// As a JSON object.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"budget\": {}, \"compiles\": {}, \"baked_kernels\": {}, \"streamed_kernels\": {}, \"baked_matmuls\": {}, \"streamed_matmuls\": {}, \"all_baked_kernels\": {}}}",
            self.budget.map_or("null".to_string(), |b| b.to_string()),
            self.compiles,
            self.baked_kernels,
            self.streamed_kernels,
            self.baked_matmuls,
            self.streamed_matmuls,
            self.all_baked_kernels
        )
    }
}

/// Plans (and compiles, on `engine`) every kernel a prefill of each length needs.
pub fn plan_prefill(
    engine: &dyn Engine,
    disk: Option<&DiskCache>,
    model: &ModelDims,
    lengths: &[usize],
) -> Result<PrefillPlan> {
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
                    let (_, from_disk) = compile_cached(
                        engine,
                        disk,
                        &matmul_program(bm, bk, bn),
                        &Default::default(),
                    )?;
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

fn io_bytes(m: usize, k: usize, n: usize, align: usize) -> usize {
    let l = |name: &str, shape: &[usize]| {
        TensorLayout::packed(name, SurfaceDType::F16, shape, align).map_or(0, |l| l.byte_len())
    };
    l("a", &[n, k]) + l("b", &[m, k]) + l("y", &[n, m])
}

impl PrefillPlan {
    /// The report as JSON (top-level `"compiles"`), written by hand: a flat, fixed schema;
    /// `auto` adds the `"auto"` object.
    pub fn to_json_with(&self, auto: Option<&AutoPlan>) -> String {
        let mut j = self.to_json();
        if let Some(a) = auto {
            j.pop();
            j += &format!(", \"auto\": {}}}", a.to_json());
        }
        j
    }

    /// The report as JSON (top-level `"compiles"`), written by hand: a flat, fixed schema.
    pub fn to_json(&self) -> String {
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
