//! `ane plan --fused`: what the fused FFN and Q/K/V programs (issue #13) would compile and
//! dispatch for a model's prefill, replaying the backend's decisions in graph order without
//! compiling: a block is baked when its weights fit one program ([`MAX_FUSED_WEIGHT_BYTES`])
//! and `auto` leaves the budget and the loaded-kernel cap room for streamed kernels
//! ([`should_bake`]); else it streams its weights (one kernel per shape and bucket, an FFN in
//! hidden tiles); the attention output and the head go the single-kernel way.

use std::collections::BTreeSet;

use ane_runtime::fused::{streamed, MAX_FUSED_WEIGHT_BYTES};
use ane_runtime::kernels::policy::{should_bake, KernelPolicy, LoadedRoom};
use ane_runtime::matmul::{
    baked_tiles, kernel_shapes, min_bucket, streamed_tile_sizes, token_chunks, BakedTile,
};
use ane_runtime::Limits;

use super::matmul_kernels::ModelDims;

/// The plan's totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FusedPlan {
    /// Compiles in total (fused, baked and streamed kernels).
    pub(crate) compiles: u32,
    /// Baked fused kernels (layer block × token bucket).
    pub(crate) fused_kernels: u32,
    /// Streamed fused kernels (block shape × token bucket).
    pub(crate) streamed_fused_kernels: u32,
    /// Blocks (over all lengths) run as one baked program.
    pub(crate) fused_blocks: u32,
    /// Blocks run as streamed programs.
    pub(crate) streamed_blocks: u32,
    /// Of those, blocks whose weights are too large to bake into one program.
    pub(crate) too_large: u32,
    /// Of those, blocks not baked to keep budget or loaded-kernel room for streamed kernels.
    pub(crate) no_room: u32,
    /// Blocks left unfused (no streamed form fits, or no budget).
    pub(crate) unfused_blocks: u32,
    /// Kernels loaded at the end (every kernel used stays loaded).
    pub(crate) loaded: u32,
    /// Per prompt length: engine dispatches per layer (the most any layer needs).
    pub(crate) dispatches_per_layer: Vec<(usize, usize)>,
    /// The same without fusion.
    pub(crate) unfused_dispatches_per_layer: Vec<(usize, usize)>,
    /// The streamed fused programs, in the order first needed.
    pub(crate) streamed_programs: Vec<StreamedProgram>,
}

/// One streamed fused program of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StreamedProgram {
    /// An FFN hidden tile: channels, tile width, tokens.
    Ffn(usize, usize, usize),
    /// Projections: channels, rows of each matrix, tokens.
    Projections(usize, Vec<usize>, usize),
}

impl StreamedProgram {
    /// A folder name.
    pub(crate) fn name(&self) -> String {
        match self {
            StreamedProgram::Ffn(c, ht, s) => format!("fused_ffn_{c}x{ht}x{s}"),
            StreamedProgram::Projections(c, rows, s) => {
                let r: Vec<String> = rows.iter().map(ToString::to_string).collect();
                format!("fused_proj_{c}x{}x{s}", r.join("+"))
            }
        }
    }

    /// The program.
    pub(crate) fn program(&self) -> ane_mil::Program {
        match self {
            StreamedProgram::Ffn(c, ht, s) => streamed::streamed_ffn_program(*c, *ht, *s),
            StreamedProgram::Projections(c, rows, s) => {
                streamed::streamed_projections_program(*c, rows, *s)
            }
        }
    }
}

/// Kernels planned so far, and what they cost.
struct Replay {
    budget: Option<u32>,
    max_loaded: Option<u32>,
    max_dim: usize,
    used: u32,
    baked: BTreeSet<(usize, BakedTile)>,
    streamed: BTreeSet<(usize, usize, usize)>,
    fused: BTreeSet<(usize, usize)>,
    streamed_fused: BTreeSet<(usize, usize, usize)>,
    programs: Vec<StreamedProgram>,
}

impl Replay {
    fn limits(&self) -> Limits {
        Limits {
            max_dim: self.max_dim,
            row_alignment: ane_runtime::engine::limits::ROW_ALIGNMENT,
            compile_budget: self.budget,
            compiles_used: self.used,
            accumulator: Default::default(),
        }
    }

    fn room(&self) -> LoadedRoom {
        LoadedRoom {
            baked_loaded: (self.baked.len() + self.fused.len()) as u32,
            max_loaded: self.max_loaded,
        }
    }

    /// One MUL_MAT (weight `key`, `m × k`, `n` tokens) the single-kernel way; its dispatches.
    fn matmul(&mut self, key: usize, m: usize, k: usize, n: usize) -> usize {
        let tiles: Vec<(usize, BakedTile)> = baked_tiles(m, k, n, self.max_dim)
            .into_iter()
            .map(|t| (key, t))
            .collect();
        let missing = || tiles.iter().filter(|t| !self.baked.contains(t)).count() as u32;
        if should_bake(KernelPolicy::Auto, &self.limits(), self.room(), missing) {
            self.used += missing();
            let evaluations = tiles.len();
            self.baked.extend(tiles);
            return evaluations;
        }
        for shape in kernel_shapes(m, k, n, self.max_dim) {
            if self.budget.is_none_or(|b| self.used < b) && self.streamed.insert(shape) {
                self.used += 1;
            }
        }
        let (tm, tk) = streamed_tile_sizes(m, k, self.max_dim);
        m.div_ceil(tm) * k.div_ceil(tk) * token_chunks(n, self.max_dim, 1).len()
    }

    /// A block (`key`) of `mats` matrices `(m, k)` over a `dim`-wide input, baked when it
    /// can be: `Ok(dispatches)`, or `Err(true)` too large, `Err(false)` no room.
    fn baked_block(
        &mut self,
        key: usize,
        dim: usize,
        mats: &[(usize, usize)],
        n: usize,
    ) -> Result<usize, bool> {
        let values: usize = mats.iter().map(|(m, k)| m * k).sum::<usize>() + dim;
        if 2 * values > MAX_FUSED_WEIGHT_BYTES {
            return Err(true);
        }
        let chunks = self.chunks(dim, mats, n);
        let buckets: BTreeSet<usize> = chunks.iter().map(|&(_, _, b)| b).collect();
        let missing = || {
            buckets
                .iter()
                .filter(|&&b| !self.fused.contains(&(key, b)))
                .count() as u32
        };
        if !should_bake(KernelPolicy::Auto, &self.limits(), self.room(), missing) {
            return Err(false);
        }
        self.used += missing();
        self.fused.extend(buckets.iter().map(|&b| (key, b)));
        Ok(chunks.len())
    }

    fn chunks(&self, dim: usize, mats: &[(usize, usize)], n: usize) -> Vec<(usize, usize, usize)> {
        let widest = mats.iter().map(|&(m, k)| m.max(k)).max().unwrap_or(dim);
        token_chunks(n, self.max_dim, min_bucket(widest, dim))
    }

    /// The block streamed (`ffn`: hidden tiles of its gate's rows; else one program of all
    /// matrices): its dispatches, or `None` when it does not fit or the budget is spent.
    fn streamed_block(
        &mut self,
        ffn: bool,
        dim: usize,
        mats: &[(usize, usize)],
        n: usize,
    ) -> Option<usize> {
        let chunks = self.chunks(dim, mats, n);
        let rows: Vec<usize> = mats.iter().map(|&(m, _)| m).collect();
        if !ffn && !streamed::projections_fit(dim, &rows, self.max_dim) {
            return None;
        }
        let mut dispatches = 0;
        for &(_, _, b) in &chunks {
            let (shape, tiles) = if ffn {
                let ht = streamed::ffn_hidden_tile(dim, mats[0].0, b, self.max_dim)?;
                (ht, mats[0].0.div_ceil(ht))
            } else {
                (rows.iter().sum(), 1)
            };
            dispatches += tiles;
            let key = (usize::from(ffn), shape, b);
            if !self.streamed_fused.contains(&key) {
                if self.budget.is_some_and(|budget| self.used >= budget) {
                    return None;
                }
                self.streamed_fused.insert(key);
                self.used += 1;
                self.programs.push(if ffn {
                    StreamedProgram::Ffn(dim, shape, b)
                } else {
                    StreamedProgram::Projections(dim, rows.clone(), b)
                });
            }
        }
        Some(dispatches)
    }
}

/// A block of a layer: its key, whether it is an FFN, its matrices `(m, k)`, the key of its
/// first matrix as a single MUL_MAT, and its tokens.
type Block<'a> = (usize, bool, &'a [(usize, usize)], usize, usize);

/// Replays a prefill of each length with fused blocks. An MoE layer's routed experts are
/// expert FFN blocks, one per expert whose token group (even routing) is worth a dispatch,
/// each identified apart (ggml-ane's `expert_ffn`); thinner groups stay on the CPU.
pub(crate) fn plan_fused(
    model: &ModelDims,
    lengths: &[usize],
    budget: Option<u32>,
    max_loaded: Option<u32>,
    max_dim: usize,
) -> FusedPlan {
    let d = model.dim;
    let mut r = Replay {
        budget,
        max_loaded,
        max_dim,
        used: 0,
        baked: BTreeSet::new(),
        streamed: BTreeSet::new(),
        fused: BTreeSet::new(),
        streamed_fused: BTreeSet::new(),
        programs: Vec::new(),
    };
    let mut plan = FusedPlan::default();
    let qkv = [(model.q_dim, d), (model.kv_dim, d), (model.kv_dim, d)];
    let ffn = (model.ffn > 0).then_some([(model.ffn, d), (model.ffn, d), (d, model.ffn)]);
    let expert = model.experts.map(|e| [(e.ffn, d), (e.ffn, d), (d, e.ffn)]);
    let per_layer = model.layer_weights().len();
    // block keys: 0.. for the layers' Q/K/V and dense FFN blocks, then one per expert
    let expert_key = |layer: usize, e: usize| {
        2 * model.layers + layer * model.experts.map_or(0, |x| x.count) + e
    };
    for &n in lengths {
        let batch = model.even_expert_batch(n);
        let mut most = 0;
        for layer in 0..model.layers {
            let w = layer * per_layer; // weight keys as ModelDims::weights numbers them
            let mut blocks: Vec<Block<'_>> = vec![(2 * layer, false, &qkv[..], w, n)];
            if let Some(ffn) = &ffn {
                blocks.push((2 * layer + 1, true, &ffn[..], w + 4, n));
            }
            if let (Some(expert), Some((tokens, on_engine))) = (&expert, batch) {
                let first = w + 4 + if ffn.is_some() { 3 } else { 0 };
                for e in 0..on_engine {
                    blocks.push((expert_key(layer, e), true, &expert[..], first, tokens));
                }
            }
            let mut dispatches = 0;
            for (key, is_ffn, mats, first, tokens) in blocks {
                match r.baked_block(key, d, mats, tokens) {
                    Ok(k) => {
                        plan.fused_blocks += 1;
                        dispatches += k;
                        continue;
                    }
                    Err(true) => plan.too_large += 1,
                    Err(false) => plan.no_room += 1,
                }
                match r.streamed_block(is_ffn, d, mats, tokens) {
                    Some(k) => {
                        plan.streamed_blocks += 1;
                        dispatches += k;
                    }
                    None => {
                        plan.unfused_blocks += 1;
                        for (i, &(m, k)) in mats.iter().enumerate() {
                            dispatches += r.matmul(first + i, m, k, tokens);
                        }
                    }
                }
            }
            dispatches += r.matmul(w + 3, d, model.q_dim, n);
            most = most.max(dispatches);
        }
        r.matmul(model.layers * per_layer, model.vocab, d, n);
        plan.dispatches_per_layer.push((n, most));
        plan.unfused_dispatches_per_layer.push((
            n,
            super::matmul_kernels::dispatches_per_layer(model, n, max_dim),
        ));
    }
    plan.compiles = r.used;
    plan.fused_kernels = r.fused.len() as u32;
    plan.streamed_fused_kernels = r.streamed_fused.len() as u32;
    plan.streamed_programs = r.programs;
    plan.loaded =
        (r.fused.len() + r.streamed_fused.len() + r.baked.len() + r.streamed.len()) as u32;
    plan
}

impl FusedPlan {
    /// As a JSON object.
    pub(crate) fn to_json(&self) -> String {
        let pairs = |v: &[(usize, usize)]| {
            v.iter()
                .map(|(n, d)| format!("[{n}, {d}]"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{{\"compiles\": {}, \"fused_kernels\": {}, \"streamed_fused_kernels\": {}, \"fused_blocks\": {}, \"streamed_blocks\": {}, \"too_large\": {}, \"no_room\": {}, \"unfused_blocks\": {}, \"loaded\": {}, \"dispatches_per_layer\": [{}], \"unfused_dispatches_per_layer\": [{}]}}",
            self.compiles,
            self.fused_kernels,
            self.streamed_fused_kernels,
            self.fused_blocks,
            self.streamed_blocks,
            self.too_large,
            self.no_room,
            self.unfused_blocks,
            self.loaded,
            pairs(&self.dispatches_per_layer),
            pairs(&self.unfused_dispatches_per_layer)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LENGTHS: [usize; 8] = [17, 64, 100, 128, 333, 512, 1000, 2048];

    #[test]
    fn a_7b_streams_every_block_within_the_budget_in_five_dispatches_a_layer() {
        let p = plan_fused(&ModelDims::llama_7b(), &LENGTHS, Some(100), Some(48), 16384);
        // Q/K/V: 3 × 4096² fp16 = 96 MiB; FFN: 3 × 4096 × 11008 = 258 MiB; both past 64 MiB
        assert_eq!((p.fused_blocks, p.too_large), (0, 2 * 32 * 8));
        assert_eq!((p.streamed_blocks, p.unfused_blocks), (2 * 32 * 8, 0));
        // six token buckets × (one Q/K/V and one FFN-tile shape)
        assert_eq!(p.streamed_fused_kernels, 12);
        assert!(p.compiles <= 100 && p.loaded <= 48, "{p:?}");
        // Q/K/V 1 + output 2 (its K in two tiles of 2048) + FFN in 6 hidden tiles of 1856
        // (the down projection's K within 2048), against 18 single matmul calls (Q, K, V, O and
        // gate, up in two K tiles each, down in six)
        assert_eq!(p.dispatches_per_layer[0], (17, 9));
        assert_eq!(p.unfused_dispatches_per_layer[0], (17, 18));
    }

    /// Qwen3-30B-A3B fused: Q/K/V one program, the attention output one, and one expert FFN
    /// program per expert with a token group (128 under even routing from 128 tokens, none
    /// below 8 tokens an expert): 131 dispatches a layer (the output's K = 4096 in two tiles)
    /// against 389 node by node, within the budget and the cap.
    #[test]
    fn an_moe_fuses_one_program_per_expert_within_the_budget() {
        let model = ModelDims::qwen3_30b_a3b();
        let p = plan_fused(&model, &LENGTHS, Some(100), Some(48), 16384);
        assert!(p.compiles <= 100 && p.loaded <= 48, "{p:?}");
        assert_eq!(p.unfused_blocks, 0, "{p:?}");
        let per_layer: Vec<(usize, usize)> = p
            .dispatches_per_layer
            .iter()
            .zip(&p.unfused_dispatches_per_layer)
            .map(|(&(_, f), &(_, u))| (f, u))
            .collect();
        assert_eq!(
            per_layer[0],
            (3, 5),
            "17 tokens: the experts stay on the CPU"
        );
        assert!(
            per_layer[3..].iter().all(|&d| d == (131, 389)),
            "{per_layer:?}"
        );
        // every expert FFN program is one hidden tile (3 x 768 + tokens fit one input)
        assert!(p
            .streamed_programs
            .iter()
            .all(|s| !matches!(s, StreamedProgram::Ffn(2048, ht, _) if *ht != 768)));
    }

    #[test]
    fn a_small_model_bakes_while_auto_leaves_room_and_streams_the_rest() {
        // qwen2-0.5B-shaped: dim 896, ffn 4864, 24 layers
        let model = ModelDims::dense("small", 896, 4864, 24, 151_936);
        let p = plan_fused(&model, &LENGTHS, Some(100), Some(48), 16384);
        assert!(p.fused_blocks > 0 && p.no_room > 0, "{p:?}");
        assert_eq!(p.too_large, 0);
        assert_eq!(p.fused_blocks + p.streamed_blocks, 2 * 24 * 8);
        assert!(p.compiles <= 100 && p.loaded <= 48, "{p:?}");
        // every layer: Q/K/V, output, FFN streamed in 3 hidden tiles of 1632 (the down
        // projection's K within 2048)
        let per_layer: Vec<usize> = p.dispatches_per_layer.iter().map(|&(_, d)| d).collect();
        assert_eq!(per_layer, [5, 5, 5, 5, 5, 5, 5, 5], "{p:?}");
        // without budget or cap every block bakes
        let all = plan_fused(&model, &LENGTHS, None, None, 16384);
        assert_eq!(all.fused_blocks, 2 * 24 * 8);
    }
}
