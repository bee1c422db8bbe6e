//! A MUL_MAT alone: which ones the engine takes, and how one is computed (on the engine, or on
//! the CPU with the reason counted).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

use ane_runtime::matmul::{cpu_matmul, engine_matmul, FallbackReason, MatmulJob, MatmulShape};

use super::context::BackendContext;
use crate::abi::{self, ggml_type, NodeDesc, Split, TensorDesc};
use crate::runtime::Runtime;
use crate::stats::placement::Placement;

/// Reads rows of src0 as f32: F32/F16/BF16 at any element stride, other types through
/// ggml's `to_float` on contiguous whole-block rows.
fn src0_readable(t: &TensorDesc) -> bool {
    match t.ty {
        ggml_type::F32 | ggml_type::F16 | ggml_type::BF16 => true,
        _ => t.has_to_float && t.blck_size > 0 && t.contiguous_rows() && t.ne[0] % t.blck_size == 0,
    }
}

/// A mixture-of-experts router: the MUL_MAT whose result picks each token's experts (llama.cpp
/// names its weights `blk.N.ffn_gate_inp` and its result `ffn_moe_logits`). Its result goes
/// through a top-k: fp16 rounding of two close scores would send a token to other experts — a
/// different, not a less precise, answer — so it stays on the CPU, in f32.
pub(crate) fn is_router(n: &NodeDesc) -> bool {
    n.src0_name().contains("ffn_gate_inp") || n.name().starts_with("ffn_moe_logits")
}

/// What MUL_MAT and MUL_MAT_ID need of their result `d`, weights `w` and activations `a`: an
/// F32 result, activations F32/F16/BF16, weights of any type ggml converts to f32, all
/// readable, K equal.
pub(crate) fn operands_readable(d: &TensorDesc, w: &TensorDesc, a: &TensorDesc) -> bool {
    d.ty == ggml_type::F32
        && d.readable
        && w.readable
        && a.readable
        && matches!(a.ty, ggml_type::F32 | ggml_type::F16 | ggml_type::BF16)
        && src0_readable(w)
        && w.ne[0] == a.ne[0]
}

/// A MUL_MAT the engine path can read and write ([`operands_readable`]), batched and
/// broadcast; not a mixture-of-experts router.
pub(crate) fn supports_mul_mat(n: &NodeDesc) -> bool {
    let (Some(s0), Some(s1)) = (n.src[0], n.src[1]) else {
        return false;
    };
    if is_router(n) {
        return false;
    }
    let d = &n.node;
    operands_readable(d, &s0, &s1)
        && d.ne == [s0.ne[1], s1.ne[1], s1.ne[2], s1.ne[3]]
        && s0.ne[2] > 0
        && s0.ne[3] > 0
        && s1.ne[2] % s0.ne[2] == 0
        && s1.ne[3] % s0.ne[3] == 0
}

/// Whether `graph_compute` gives a MUL_MAT to the engine: one it can read, with at least
/// `GGML_ANE_MIN_TOKENS` tokens (the ANE device is handed no others; the ANE-FULL device is
/// handed every node, and computes small ones on ggml's CPU backend).
pub(crate) fn engine_mul_mat(rt: &Runtime, n: &NodeDesc) -> bool {
    supports_mul_mat(n) && n.node.ne[1] as usize >= rt.config.min_tokens
}

/// Whether a MUL_MAT's weights (`src0`) may be baked into kernels: the policy allows it, the
/// rows are contiguous, and they are model weights, which ggml promises not to change while
/// graphs run.
pub(crate) fn may_bake(rt: &Runtime, s0: &TensorDesc) -> bool {
    rt.cache.policy().may_bake() && s0.contiguous_rows() && s0.is_model_weight()
}

pub(crate) fn mul_mat_shape(n: &NodeDesc) -> Option<MatmulShape> {
    let (s0, s1) = (n.src[0]?, n.src[1]?);
    Some(MatmulShape {
        m: s0.ne[1] as usize,
        k: s0.ne[0] as usize,
        n: s1.ne[1] as usize,
        batch: [s1.ne[2] as usize, s1.ne[3] as usize],
        weight_batch: [s0.ne[2] as usize, s0.ne[3] as usize],
    })
}

/// Node `i` of `split`, a MUL_MAT: on the engine if it can, else on the CPU with the reason
/// counted; says where, when asked to (`GGML_ANE_STATS=2`, `GGML_ANE_LOG=debug`).
pub(crate) fn run(
    ctx: &BackendContext,
    rt: &Runtime,
    split: &Split<'_>,
    i: usize,
) -> Result<(), String> {
    let desc = split.descs[i].as_ref().ok_or("a node vanished")?;
    let (Some(w), Some(a), Some(d), Some(shape)) = (
        split.source(i, 0),
        split.source(i, 1),
        split.sink(i),
        mul_mat_shape(desc),
    ) else {
        return Err("a MUL_MAT without sources or an F32 result".into());
    };
    // the fingerprint is read on every call: only when baking is possible
    let weight_id = if may_bake(rt, w.desc()) {
        w.weight_id()
    } else {
        None
    };
    let job = MatmulJob {
        shape,
        weights: &w,
        acts: &a,
        dst: &d,
        weight_id,
    };
    let mut scratch = ctx.scratch.lock().unwrap_or_else(|e| e.into_inner());
    let s = job.shape;
    let result = if s.m == 0 || s.n == 0 || s.k == 0 {
        Err(FallbackReason::Unsupported("empty dimension".into()))
    } else {
        engine_matmul(
            rt.engine.as_ref(),
            &rt.cache,
            &job,
            &mut scratch,
            &ctx.stats,
        )
    };
    let debug = abi::log_enabled(abi::GGML_LOG_LEVEL_DEBUG);
    if rt.config.stats_level >= 2 || debug {
        let (name, weight_type) = (desc.name(), desc.src[0].map_or("?", |t| t.type_name));
        let weights_are_model = desc.src[0].is_some_and(|t| t.is_model_weight());
        let p = Placement::new(
            (&name, &desc.src0_name(), weights_are_model),
            &s,
            weight_type,
            &result,
        );
        if debug {
            abi::log(
                abi::GGML_LOG_LEVEL_DEBUG,
                &format!(
                    "ggml-ane: MUL_MAT {name} {} {} -> {}",
                    p.shape, p.weight_type, p.place
                ),
            );
        }
        if rt.config.stats_level >= 2 {
            ctx.placements.record(p);
        }
    }
    match result {
        Ok(_) => ctx.stats.record_offload(s.flops()),
        Err(reason) => {
            warn_once(&reason);
            let t = Instant::now();
            cpu_matmul(&job, &mut scratch);
            ctx.stats.record_fallback(&reason, t.elapsed());
        }
    }
    Ok(())
}

/// Logs the first fallback of each kind (the rest are counted in the stats).
fn warn_once(reason: &FallbackReason) {
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    if super::first_of_kind(&SEEN, reason.as_str()) {
        let level = if matches!(reason, FallbackReason::Internal(_)) {
            abi::GGML_LOG_LEVEL_ERROR
        } else {
            abi::GGML_LOG_LEVEL_WARN
        };
        abi::log(level, &format!("ggml-ane: MUL_MAT computed on the CPU ({reason}); further cases are counted, not logged"));
    }
}
