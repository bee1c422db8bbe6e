//! What the backend does, in safe Rust: which ops it takes, and how a MUL_MAT is computed
//! (on the engine, or on the CPU with the reason counted). The C ABI glue is in `sys`.

use std::collections::HashSet;
use std::ffi::CString;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use ane_runtime::disk_cache::DiskCache;
use ane_runtime::engine::{self, EngineChoice};
use ane_runtime::matmul::{
    cpu_matmul, engine_matmul, FallbackReason, KernelCache, KernelPolicy, MatmulJob, MatmulShape,
    Scratch, Stats,
};
use ane_runtime::Engine;

use crate::placement::{Placement, Placements};
use crate::sys::tensor::{NodeDesc, TensorDesc};
use crate::sys::{
    ggml_op, ggml_type, log, log_enabled, GGML_LOG_LEVEL_DEBUG, GGML_LOG_LEVEL_ERROR,
    GGML_LOG_LEVEL_INFO, GGML_LOG_LEVEL_WARN, GGML_TENSOR_FLAG_COMPUTE,
};

/// Offload MUL_MAT only from this many tokens (N) up, unless `GGML_ANE_MIN_BATCH` says
/// otherwise. With ~0.1–0.3 ms per ANE dispatch and ~5 TFLOPS per kernel, a matmul needs
/// ≳1 GFLOP to be worth it: 4096×4096 at N = 64 is 2.1 GFLOP (ane-tech.md §5.4).
pub(crate) const DEFAULT_MIN_BATCH: usize = 64;

/// Process-wide state: the engine, its compiled kernels, and settings from the environment.
pub(crate) struct Runtime {
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) cache: KernelCache,
    pub(crate) description: CString,
    pub(crate) min_batch: usize,
    /// MUL_MATs with fewer tokens are refused (`supports_op`), so they stay on the CPU.
    pub(crate) min_tokens: usize,
    /// `GGML_ANE_STATS`: 0 off, 1 the table at backend free, 2 also node by node.
    pub(crate) stats_level: u8,
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// `GGML_ANE_STATS`: unset, empty or 0 → 0; 2 (or more) → 2; anything else → 1.
fn stats_level(v: Option<&str>) -> u8 {
    match v.map(str::trim) {
        None | Some("" | "0") => 0,
        Some(v) => match v.parse::<u8>() {
            Ok(n) if n >= 2 => 2,
            _ => 1,
        },
    }
}

/// The runtime, created on first use from `GGML_ANE_ENGINE` (auto by default).
pub(crate) fn runtime() -> Result<&'static Runtime, String> {
    static RT: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        let choice = EngineChoice::from_env().map_err(|e| e.to_string())?;
        let (engine, passed_over) = engine::create_explained(choice).map_err(|e| e.to_string())?;
        let policy = KernelPolicy::from_env().map_err(|e| e.to_string())?;
        let info = engine.info();
        // one line: which engine, and why auto passed over the ones before it
        let why = if passed_over.is_empty() {
            String::new()
        } else {
            format!(" ({})", passed_over.join("; "))
        };
        log(
            GGML_LOG_LEVEL_INFO,
            &format!("ggml-ane: using the {} engine{why}", info.kind),
        );
        let min_batch = env_usize("GGML_ANE_MIN_BATCH").unwrap_or(DEFAULT_MIN_BATCH);
        // 1: every MUL_MAT, decode included, until Mac numbers say where the ANE stops paying
        let min_tokens = env_usize("GGML_ANE_MIN_TOKENS").unwrap_or(1).max(1);
        Ok(Runtime {
            engine,
            cache: KernelCache::with_disk(DiskCache::from_env()).with_policy(policy),
            description: CString::new(info.description).unwrap_or_default(),
            min_batch,
            min_tokens,
            stats_level: stats_level(std::env::var("GGML_ANE_STATS").ok().as_deref()),
        })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Per backend instance: scratch buffers and counters.
#[derive(Default)]
pub(crate) struct BackendContext {
    pub(crate) scratch: Mutex<Scratch>,
    pub(crate) stats: Stats,
    /// What ran where, kept with `GGML_ANE_STATS=2`.
    pub(crate) placements: Placements,
}

/// What graph_compute does with a node.
pub(crate) enum NodeAction {
    /// Views and no-ops, or nodes without the COMPUTE flag.
    Skip,
    /// A MUL_MAT we compute.
    MulMat,
    /// Anything else (supports_op said no; the scheduler should never send it).
    Unknown,
}

fn is_view_op(op: ggml_op) -> bool {
    matches!(
        op,
        ggml_op::NONE | ggml_op::RESHAPE | ggml_op::VIEW | ggml_op::PERMUTE | ggml_op::TRANSPOSE
    )
}

pub(crate) fn classify(n: &NodeDesc) -> NodeAction {
    if n.node.flags & GGML_TENSOR_FLAG_COMPUTE == 0 || is_view_op(n.node.op) {
        NodeAction::Skip
    } else if n.node.op == ggml_op::MUL_MAT && supports_mul_mat(n) {
        NodeAction::MulMat
    } else {
        NodeAction::Unknown
    }
}

pub(crate) fn supports_op(n: &NodeDesc) -> bool {
    let min_tokens = runtime().map_or(1, |rt| rt.min_tokens);
    is_view_op(n.node.op)
        || (n.node.op == ggml_op::MUL_MAT
            && supports_mul_mat(n)
            && n.node.ne[1] as usize >= min_tokens)
}

pub(crate) fn offload_op(n: &NodeDesc, rt: &Runtime) -> bool {
    n.node.op == ggml_op::MUL_MAT && supports_mul_mat(n) && n.node.ne[1] as usize >= rt.min_batch
}

/// Reads rows of src0 as f32: F32/F16/BF16 at any element stride, other types through
/// ggml's `to_float` on contiguous whole-block rows.
fn src0_readable(t: &TensorDesc) -> bool {
    match t.ty {
        ggml_type::F32 | ggml_type::F16 | ggml_type::BF16 => true,
        _ => {
            t.to_float.is_some()
                && t.blck_size > 0
                && t.nb[0] == t.type_size
                && t.ne[0] % t.blck_size == 0
        }
    }
}

fn supports_mul_mat(n: &NodeDesc) -> bool {
    let (Some(s0), Some(s1)) = (n.src[0], n.src[1]) else {
        return false;
    };
    let d = &n.node;
    d.ty == ggml_type::F32
        && matches!(s1.ty, ggml_type::F32 | ggml_type::F16 | ggml_type::BF16)
        && src0_readable(&s0)
        && s0.ne[0] == s1.ne[0]
        && d.ne == [s0.ne[1], s1.ne[1], s1.ne[2], s1.ne[3]]
        && s0.ne[2] > 0
        && s0.ne[3] > 0
        && s1.ne[2] % s0.ne[2] == 0
        && s1.ne[3] % s0.ne[3] == 0
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

/// Computes one MUL_MAT (`node`): on the engine if it can, else on the CPU with the reason
/// counted; says where, when asked to (`GGML_ANE_STATS=2`, `GGML_ANE_LOG=debug`).
pub(crate) fn mul_mat(ctx: &BackendContext, rt: &Runtime, node: &NodeDesc, job: &MatmulJob<'_>) {
    let mut scratch = ctx.scratch.lock().unwrap_or_else(|e| e.into_inner());
    let s = job.shape;
    let result = if s.m == 0 || s.n == 0 || s.k == 0 {
        Err(FallbackReason::Unsupported("empty dimension".into()))
    } else {
        engine_matmul(rt.engine.as_ref(), &rt.cache, job, &mut scratch, &ctx.stats)
    };
    let debug = log_enabled(GGML_LOG_LEVEL_DEBUG);
    if rt.stats_level >= 2 || debug {
        let (name, weight_type) = (node.name(), node.src[0].map_or("?", |t| t.type_name));
        let p = Placement::new(&name, &s, weight_type, &result);
        if debug {
            log(
                GGML_LOG_LEVEL_DEBUG,
                &format!(
                    "ggml-ane: MUL_MAT {name} {} {} -> {}",
                    p.shape, p.weight_type, p.place
                ),
            );
        }
        if rt.stats_level >= 2 {
            ctx.placements.record(p);
        }
    }
    match result {
        Ok(_) => ctx.stats.record_offload(s.flops()),
        Err(reason) => {
            warn_once(&reason);
            let t = Instant::now();
            cpu_matmul(job, &mut scratch);
            ctx.stats.record_fallback(&reason, t.elapsed());
        }
    }
}

/// Logs the first fallback of each kind (the rest are counted in the stats).
fn warn_once(reason: &FallbackReason) {
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.get_or_insert_with(HashSet::new).insert(reason.label()) {
        let level = if matches!(reason, FallbackReason::Internal(_)) {
            GGML_LOG_LEVEL_ERROR
        } else {
            GGML_LOG_LEVEL_WARN
        };
        log(level, &format!("ggml-ane: MUL_MAT computed on the CPU ({reason}); further cases are counted, not logged"));
    }
}

/// The GGML_ANE_STATS table.
pub(crate) fn stats_report(ctx: &BackendContext, rt: &Runtime) -> String {
    let mut text = format!(
        "ggml-ane stats ({} engine):\n{}\n",
        rt.engine.info().kind,
        ctx.stats.snapshot()
    );
    if rt.stats_level >= 2 {
        text.push_str(&ctx.placements.report());
    }
    text
}

/// `ggml_backend_get_features`: the engine and its limits.
pub(crate) fn features() -> Vec<(String, String)> {
    match runtime() {
        Ok(rt) => {
            let limits = rt.engine.limits();
            let mut f = vec![
                ("ENGINE".to_string(), rt.engine.info().kind.to_string()),
                ("MAX_DIM".to_string(), limits.max_dim.to_string()),
                ("MIN_BATCH".to_string(), rt.min_batch.to_string()),
                ("MIN_TOKENS".to_string(), rt.min_tokens.to_string()),
                (
                    "KERNELS".to_string(),
                    rt.cache.policy().as_str().to_string(),
                ),
            ];
            if let Some(b) = limits.compile_budget {
                f.push(("COMPILE_BUDGET".to_string(), b.to_string()));
            }
            f
        }
        Err(e) => vec![("ENGINE".to_string(), format!("unavailable: {e}"))],
    }
}

#[cfg(test)]
mod tests {
    use super::stats_level;

    #[test]
    fn stats_levels_from_the_environment_value() {
        for (v, want) in [
            (None, 0),
            (Some(""), 0),
            (Some("0"), 0),
            (Some("1"), 1),
            (Some("yes"), 1),
            (Some(" 2 "), 2),
            (Some("9"), 2),
        ] {
            assert_eq!(stats_level(v), want, "{v:?}");
        }
    }
}
