//! MUL_MAT_ID, a mixture-of-experts layer's matmuls: `dst[:, e, t] = W[ids[e, t]] ·
//! b[:, e % b.ne1, t]`. The (token, slot) pairs each expert is routed are gathered into one
//! batch per expert and computed as one matmul job over that expert's weights — on the engine
//! when the batch is large enough to be worth a dispatch, on the CPU otherwise — and each
//! result row is written back to its place. One streamed kernel per shape serves every expert
//! (the weights are the kernel's input), and each expert's staged weights are kept across calls
//! within the surface cache, as a MUL_MAT's are.

use std::hash::{Hash, Hasher};
use std::time::Instant;

use ane_runtime::matmul::{
    cpu_matmul, engine_matmul, FallbackReason, MatmulJob, MatmulShape, MatrixSink, MatrixSource,
    WeightId, MIN_ENGINE_OUTPUTS,
};

use super::context::BackendContext;
use super::matmul::{may_bake, operands_readable};
use crate::abi::{ggml_type, NodeDesc, Split, TensorRows, TensorRowsMut};
use crate::runtime::Runtime;
use crate::stats::placement::Placement;

/// A MUL_MAT_ID the engine path can read and write (`matmul::operands_readable`), I32 ids
/// with packed rows, the shapes `ggml_mul_mat_id` makes.
pub(crate) fn supports_mul_mat_id(n: &NodeDesc) -> bool {
    let (Some(w), Some(b), Some(ids)) = (n.src[0], n.src[1], n.src[2]) else {
        return false;
    };
    let d = &n.node;
    operands_readable(d, &w, &b)
        && ids.readable
        && ids.ty == ggml_type::I32
        && ids.nb[0] == 4
        && w.ne[2] > 0
        && w.ne[3] == 1
        && b.ne[3] == 1
        && b.ne[1] > 0
        && ids.ne[1] == b.ne[2]
        && ids.ne[0] % b.ne[1] == 0
        && d.ne == [w.ne[1], ids.ne[0], b.ne[2], 1]
}

/// Tokens a MUL_MAT_ID carries (`ne[2]`, as Metal counts them: decode steps stay elsewhere).
pub(crate) fn tokens(n: &NodeDesc) -> i64 {
    n.node.ne[2]
}

/// Whether `graph_compute` gives a MUL_MAT_ID to the engine path.
pub(crate) fn engine_mul_mat_id(rt: &Runtime, n: &NodeDesc) -> bool {
    supports_mul_mat_id(n) && tokens(n) as usize >= rt.config.min_tokens
}

/// Tokens an expert's batch needs for the engine (fewer: the CPU): a quarter of the smallest
/// token bucket (32), so padding at most quadruples the work of a dispatch.
pub(super) const MIN_EXPERT_TOKENS: usize = 8;

/// One expert's weights: batch `expert` of the stacked matrices.
pub(super) struct Expert<'a> {
    pub(super) w: &'a TensorRows<'a>,
    pub(super) expert: usize,
}

impl MatrixSource for Expert<'_> {
    fn read_row(&self, _: usize, _: usize, row: usize, out: &mut [f32]) {
        self.w.read_row(self.expert, 0, row, out);
    }
    fn row_f32(&self, _: usize, _: usize, row: usize) -> Option<&[f32]> {
        self.w.row_f32(self.expert, 0, row)
    }
    fn row_f16(&self, _: usize, _: usize, row: usize) -> Option<&[half::f16]> {
        self.w.row_f16(self.expert, 0, row)
    }
}

/// The activation rows routed to one expert: pair `i` is (token, slot).
pub(super) struct Gathered<'a> {
    pub(super) b: &'a TensorRows<'a>,
    /// Activation rows per token (1 when every slot reads the same row).
    pub(super) rows: usize,
    pub(super) pairs: &'a [(usize, usize)],
}

impl Gathered<'_> {
    fn at(&self, i: usize) -> (usize, usize) {
        let (t, e) = self.pairs[i];
        (t, e % self.rows)
    }
}

impl MatrixSource for Gathered<'_> {
    fn read_row(&self, _: usize, _: usize, i: usize, out: &mut [f32]) {
        let (t, r) = self.at(i);
        self.b.read_row(t, 0, r, out);
    }
    fn row_f32(&self, _: usize, _: usize, i: usize) -> Option<&[f32]> {
        let (t, r) = self.at(i);
        self.b.row_f32(t, 0, r)
    }
    fn row_f16(&self, _: usize, _: usize, i: usize) -> Option<&[half::f16]> {
        let (t, r) = self.at(i);
        self.b.row_f16(t, 0, r)
    }
}

/// Where one expert's result rows go: pair `i`'s row is `dst[:, slot, token]`.
pub(super) struct Scattered<'a> {
    pub(super) dst: &'a TensorRowsMut<'a>,
    pub(super) pairs: &'a [(usize, usize)],
}

impl MatrixSink for Scattered<'_> {
    fn write_row(&self, _: usize, _: usize, i: usize, values: &[f32]) {
        let (t, e) = self.pairs[i];
        self.dst.write_row(t, 0, e, values);
    }
}

/// The (token, slot) pairs routed to each of `experts`, in token order, from ids `[slots,
/// tokens]` (token t's experts are row t).
pub(super) fn routed_pairs(
    ids: &TensorRows<'_>,
    experts: usize,
) -> Result<Vec<Vec<(usize, usize)>>, String> {
    let (used, tokens) = (ids.desc().ne[0] as usize, ids.desc().ne[1] as usize);
    let mut routed: Vec<Vec<(usize, usize)>> = vec![Vec::new(); experts];
    for t in 0..tokens {
        let row = ids
            .i32_row(0, 0, t)
            .ok_or("MUL_MAT_ID ids not readable as I32 rows")?;
        for (e, &x) in row.iter().take(used).enumerate() {
            let x = usize::try_from(x)
                .ok()
                .filter(|&x| x < experts)
                .ok_or_else(|| format!("expert id {x} outside 0..{experts}"))?;
            routed[x].push((t, e));
        }
    }
    Ok(routed)
}

/// Node `i` of `split`, a MUL_MAT_ID: expert by expert, on the engine where a batch is large
/// enough ([`MIN_EXPERT_TOKENS`] tokens, or `GGML_ANE_MIN_TOKENS` if lower, and
/// [`MIN_ENGINE_OUTPUTS`] results), else on the CPU
/// with the reason counted. `Ok(false)` when no expert's batch is (decode-like routing: one or
/// two tokens per expert) — then, as when the node cannot be read (`Err`), the caller hands it
/// to ggml's CPU backend whole, whose quantised dot products serve thin experts best.
pub(crate) fn run(
    ctx: &BackendContext,
    rt: &Runtime,
    split: &Split<'_>,
    i: usize,
) -> Result<bool, String> {
    let desc = split.descs[i].as_ref().ok_or("a node vanished")?;
    let (Some(w), Some(b), Some(ids), Some(dst)) = (
        split.source(i, 0),
        split.source(i, 1),
        split.source(i, 2),
        split.sink(i),
    ) else {
        return Err("a MUL_MAT_ID without its sources or an F32 result".into());
    };
    let (wd, bd, idd) = (*w.desc(), *b.desc(), *ids.desc());
    let (m, k, experts) = (wd.ne[1] as usize, wd.ne[0] as usize, wd.ne[2] as usize);
    let (used, tokens, rows) = (idd.ne[0] as usize, idd.ne[1] as usize, bd.ne[1] as usize);
    let routed = routed_pairs(&ids, experts)?;
    // an expert's batch is worth a dispatch from a quarter of the smallest bucket (the node
    // itself passed GGML_ANE_MIN_TOKENS: it is a prompt, not a decode step)
    let min_batch = rt.config.min_tokens.min(MIN_EXPERT_TOKENS);
    let worthy = |tokens: usize| tokens >= min_batch && tokens * m >= MIN_ENGINE_OUTPUTS;
    if !routed.iter().any(|p| worthy(p.len())) {
        return Ok(false);
    }
    let weight_id = if may_bake(rt, &wd) {
        w.weight_id()
    } else {
        None
    };
    let mut scratch = ctx.scratch.lock().unwrap_or_else(|e| e.into_inner());
    let (mut on_engine, mut groups, mut flops) = (0usize, 0usize, 0f64);
    let mut first_reason: Option<FallbackReason> = None;
    let clock = Instant::now();
    for (x, pairs) in routed.iter().enumerate().filter(|(_, p)| !p.is_empty()) {
        groups += 1;
        let shape = MatmulShape::new(m, k, pairs.len());
        let (weights, acts) = (Expert { w: &w, expert: x }, Gathered { b: &b, rows, pairs });
        let sink = Scattered { dst: &dst, pairs };
        // one identity per expert: its kernels and kept tiles are its own
        let id = weight_id.map(|id| {
            let mut key = std::collections::hash_map::DefaultHasher::new();
            (id.key, "expert", x).hash(&mut key);
            WeightId {
                key: key.finish(),
                ..id
            }
        });
        let job = MatmulJob {
            shape,
            weights: &weights,
            acts: &acts,
            dst: &sink,
            weight_id: id,
        };
        let result = if !worthy(pairs.len()) {
            Err(FallbackReason::Unsupported(format!(
                "{} tokens for expert {x}: fewer than {min_batch} or {MIN_ENGINE_OUTPUTS} outputs",
                pairs.len()
            )))
        } else {
            engine_matmul(
                rt.engine.as_ref(),
                &rt.cache,
                &job,
                &mut scratch,
                &ctx.stats,
            )
        };
        match result {
            Ok(_) => {
                on_engine += 1;
                flops += shape.flops();
            }
            Err(reason) => {
                cpu_matmul(&job, &mut scratch);
                first_reason.get_or_insert(reason);
            }
        }
    }
    // one node: on the engine when any expert's batch ran there (the by-node row says how
    // many), else on the CPU with the first reason
    match first_reason.filter(|_| on_engine == 0) {
        None => ctx.stats.record_offload(flops),
        Some(reason) => ctx.stats.record_fallback(&reason, clock.elapsed()),
    }
    if rt.config.stats_level >= 2 {
        let (name, weight_type) = (desc.name(), wd.type_name);
        let place = if on_engine > 0 {
            format!("engine ({on_engine} of {groups} experts)")
        } else {
            format!("CPU ({groups} experts)")
        };
        ctx.placements.record(Placement {
            op: crate::stats::placement::display_name(&name, &desc.src0_name(), true),
            shape: format!("{m}x{k}x{tokens}x{used}"),
            weight_type,
            place,
        });
    }
    Ok(true)
}
