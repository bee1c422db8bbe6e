//! What the backend does, in safe Rust: which ops it takes, and how a MUL_MAT is computed
//! (on the engine, or on the CPU with the reason counted). The C ABI glue is in `sys`.

use std::collections::HashSet;
use std::ffi::CString;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use ane_runtime::fused::probe::{probe_fused, FusedProbe};
use ane_runtime::fused::FusedForm;
use ane_runtime::matmul::probe::{forms_for, probe, usable_policy, ProbeResult};
use ane_runtime::matmul::KernelPolicy;
use ane_runtime::matmul::{
    cpu_matmul, engine_matmul, FallbackReason, KernelCache, MatmulJob, MatmulShape, Scratch, Stats,
};
use ane_runtime::{Engine, EngineChoice, EngineKind};

use crate::config::{self, Config};
use crate::placement::{Placement, Placements};
use crate::sys::cpu::CpuBackend;
use crate::sys::tensor::{NodeDesc, TensorDesc};
use crate::sys::{
    ggml_op, ggml_type, log, log_enabled, GGML_LOG_LEVEL_DEBUG, GGML_LOG_LEVEL_ERROR,
    GGML_LOG_LEVEL_INFO, GGML_LOG_LEVEL_WARN,
};
use crate::walker::{Chain, OpKind};

/// Process-wide state: the engine, its compiled kernels, and the settings.
pub(crate) struct Runtime {
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) cache: KernelCache,
    pub(crate) description: CString,
    /// What the self-probe found (empty when the engine was not probed).
    pub(crate) probe: Vec<ProbeResult>,
    /// What the fused forms' self-probe found (empty when not probed).
    pub(crate) fused_probe: Vec<FusedProbe>,
    pub(crate) config: &'static Config,
}

/// The runtime, created on first use from the configuration (`GGML_ANE_ENGINE`: auto by
/// default): the first engine that can be created and passes its self-probe.
pub(crate) fn runtime() -> Result<&'static Runtime, String> {
    static RT: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        let config = config::get().as_ref().map_err(Clone::clone)?;
        let chosen = choose_engine(config)?;
        let info = chosen.engine.info();
        // one line: which engine, and why auto passed over the ones before it
        let why = if chosen.passed_over.is_empty() {
            String::new()
        } else {
            format!(" ({})", chosen.passed_over.join("; "))
        };
        log(
            GGML_LOG_LEVEL_INFO,
            &format!("ggml-ane: using the {} engine{why}", info.kind),
        );
        // the fused forms, probed on the same engines as the matmul forms
        let fused_probe = if config.fuse && !chosen.probe.is_empty() {
            let mut forms = vec![FusedForm::Streamed];
            if chosen.policy.may_bake() {
                forms.insert(0, FusedForm::Baked);
            }
            let found = probe_fused(chosen.engine.as_ref(), &forms);
            for r in &found {
                let level = if r.passed() {
                    GGML_LOG_LEVEL_INFO
                } else {
                    GGML_LOG_LEVEL_WARN
                };
                log(
                    level,
                    &format!("ggml-ane: {} engine self-probe: {r}", info.kind),
                );
            }
            found
        } else {
            Vec::new()
        };
        let passed = |form: FusedForm| {
            fused_probe
                .iter()
                .find(|r| r.form == form)
                .is_none_or(FusedProbe::passed)
        };
        Ok(Runtime {
            engine: chosen.engine,
            cache: KernelCache::with_disk(config.disk_cache.clone())
                .with_policy(chosen.policy)
                .with_staged_weights_cap(config.staged_weights_bytes)
                .with_max_loaded(config.max_loaded)
                .with_fused_forms(passed(FusedForm::Baked), passed(FusedForm::Streamed)),
            description: CString::new(info.description).unwrap_or_default(),
            probe: chosen.probe,
            fused_probe,
            config,
        })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// An engine, the kernel policy it can serve, and what its probe found.
struct Chosen {
    engine: Arc<dyn Engine>,
    passed_over: Vec<String>,
    policy: KernelPolicy,
    probe: Vec<ProbeResult>,
}

/// The engine `GGML_ANE_ENGINE` names, or under `auto` the first of apple, coreml, reference
/// that can be created and whose self-probe leaves a kernel form to use. The apple and coreml
/// engines are always probed; the reference engine with `GGML_ANE_PROBE=1`.
fn choose_engine(config: &Config) -> Result<Chosen, String> {
    let kinds = match config.engine {
        EngineChoice::Only(kind) => vec![kind],
        EngineChoice::Auto => vec![EngineKind::Apple, EngineKind::CoreMl, EngineKind::Reference],
    };
    let mut passed_over = Vec::new();
    for kind in kinds {
        let engine = match ane_runtime::create(EngineChoice::Only(kind), &config.engines) {
            Ok(engine) => engine,
            Err(e) => {
                passed_over.push(e.to_string());
                continue;
            }
        };
        if kind == EngineKind::Reference && !config.probe {
            return Ok(Chosen {
                engine,
                passed_over,
                policy: config.kernels,
                probe: Vec::new(),
            });
        }
        let found = probe(engine.as_ref(), &forms_for(config.kernels));
        let compiles: u64 = found.iter().map(|r| r.compiles).sum();
        for r in &found {
            let level = if r.passed() {
                GGML_LOG_LEVEL_INFO
            } else {
                GGML_LOG_LEVEL_WARN
            };
            log(level, &format!("ggml-ane: {kind} engine self-probe: {r}"));
        }
        match usable_policy(config.kernels, &found) {
            Ok(policy) => {
                if policy != config.kernels {
                    log(
                        GGML_LOG_LEVEL_WARN,
                        &format!(
                            "ggml-ane: kernels {} instead of {} (self-probe; {compiles} compiles)",
                            policy, config.kernels
                        ),
                    );
                }
                return Ok(Chosen {
                    engine,
                    passed_over,
                    policy,
                    probe: found,
                });
            }
            Err(why) => passed_over.push(format!("the {kind} engine: {why}")),
        }
    }
    Err(passed_over.join("; "))
}

/// Per backend instance: scratch buffers, counters, and ggml's CPU backend for the nodes
/// the engine does not compute.
#[derive(Default)]
pub(crate) struct BackendContext {
    pub(crate) scratch: Mutex<Scratch>,
    pub(crate) stats: Arc<Stats>,
    /// What ran where, kept with `GGML_ANE_STATS=2`.
    pub(crate) placements: Arc<Placements>,
    /// Created on first use.
    pub(crate) cpu: Mutex<Option<CpuBackend>>,
    /// The thread count ggml set (0: never set, the CPU backend's default).
    pub(crate) n_threads: AtomicI32,
    /// The abort callback ggml set, and its data (an address), for the CPU backend.
    pub(crate) abort: Mutex<Option<(crate::sys::ggml_abort_callback, usize)>>,
}

impl BackendContext {
    /// Computes `nodes` (in order, as one graph) on ggml's CPU backend through `compute`
    /// (the unsafe call, made by `sys`), creating the backend on first use; counts them.
    pub(crate) fn run_on_cpu(
        &self,
        nodes: &[*mut crate::sys::ggml_tensor],
        compute: impl FnOnce(&CpuBackend, &[*mut crate::sys::ggml_tensor]) -> Result<(), i32>,
    ) -> Result<(), String> {
        if nodes.is_empty() {
            return Ok(());
        }
        let mut cpu = self.cpu.lock().unwrap_or_else(|e| e.into_inner());
        if cpu.is_none() {
            // the thread count ggml set, else one per core (ggml's own default of 4 oversubscribes
            // smaller machines; the meta device of `-sm tensor` never sets one)
            let n = match self.n_threads.load(Ordering::Relaxed) {
                0 => std::thread::available_parallelism().map_or(4, |n| n.get() as i32),
                n => n,
            };
            let backend = CpuBackend::new(n)?;
            if let Some((cb, data)) = *self.abort.lock().unwrap_or_else(|e| e.into_inner()) {
                backend.set_abort_callback(cb, data as *mut std::ffi::c_void);
            }
            *cpu = Some(backend);
            log(
                GGML_LOG_LEVEL_INFO,
                &format!(
                    "ggml-ane: other nodes go to ggml's CPU backend (registry found in {})",
                    crate::sys::cpu::registry_source().unwrap_or_default()
                ),
            );
        }
        let backend = cpu.as_ref().expect("created above");
        let t = Instant::now();
        compute(backend, nodes)
            .map_err(|status| format!("ggml's CPU backend returned status {status}"))?;
        self.stats.record_glue(nodes.len(), t.elapsed());
        Ok(())
    }

    /// Sets the thread count of the CPU backend (now, or when it is created).
    pub(crate) fn set_n_threads(&self, n: i32) {
        self.n_threads.store(n, Ordering::Relaxed);
        if let Some(cpu) = self.cpu.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            cpu.set_n_threads(n);
        }
    }

    /// Sets the abort callback of the CPU backend (now, or when it is created); the engine's
    /// work is not interrupted by it.
    pub(crate) fn set_abort_callback(&self, cb: crate::sys::ggml_abort_callback, data: usize) {
        *self.abort.lock().unwrap_or_else(|e| e.into_inner()) = Some((cb, data));
        if let Some(cpu) = self.cpu.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            cpu.set_abort_callback(cb, data as *mut std::ffi::c_void);
        }
    }
}

/// The ops besides MUL_MAT the device takes: computed inside a fused program when they are
/// part of a chain, else by ggml's own CPU backend.
pub(crate) fn is_glue(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::RmsNorm
            | OpKind::Mul
            | OpKind::Add
            | OpKind::Scale
            | OpKind::Silu
            | OpKind::SwiGlu
            | OpKind::GeGlu
            | OpKind::Rope
    )
}

/// `supports_op`: views; MUL_MATs we can read (with `GGML_ANE_MATMULS=blocks` only those a
/// fused block holds: `block_input`); and the ops around them a layer needs ([`is_glue`])
/// when ggml's CPU backend can compute them — each with at least `GGML_ANE_MIN_TOKENS`
/// tokens, so a decode step stays whole on the other backend. Reads the configuration only:
/// asking does not create the engine.
pub(crate) fn supports_op(
    n: &NodeDesc,
    kind: OpKind,
    tokens: i64,
    readable: bool,
    block_input: impl FnOnce() -> bool,
    cpu_can: impl FnOnce() -> bool,
) -> bool {
    let (min_tokens, blocks_only) = config::get()
        .as_ref()
        .map_or((1, false), |c| (c.min_tokens, c.blocks_only));
    let enough = tokens >= min_tokens as i64;
    match kind {
        OpKind::View => true,
        OpKind::MulMat => {
            supports_mul_mat(n)
                && n.node.ne[1] as usize >= min_tokens
                && (!blocks_only || block_input())
        }
        k if is_glue(k) => enough && readable && cpu_can(),
        _ => false,
    }
}

/// Whether `graph_compute` gives a MUL_MAT to the engine: one it can read, with at least
/// `GGML_ANE_MIN_TOKENS` tokens (the ANE device is handed no others; the ANE-FULL device is
/// handed every node, and computes small ones on ggml's CPU backend).
pub(crate) fn engine_mul_mat(rt: &Runtime, n: &NodeDesc) -> bool {
    supports_mul_mat(n) && n.node.ne[1] as usize >= rt.config.min_tokens
}

pub(crate) fn offload_op(n: &NodeDesc, rt: &Runtime) -> bool {
    n.node.op == ggml_op::MUL_MAT
        && supports_mul_mat(n)
        && n.node.ne[1] as usize >= rt.config.min_batch
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

pub(crate) fn supports_mul_mat(n: &NodeDesc) -> bool {
    let (Some(s0), Some(s1)) = (n.src[0], n.src[1]) else {
        return false;
    };
    let d = &n.node;
    d.ty == ggml_type::F32
        && s0.readable()
        && s1.readable()
        && d.readable()
        && matches!(s1.ty, ggml_type::F32 | ggml_type::F16 | ggml_type::BF16)
        && src0_readable(&s0)
        && s0.ne[0] == s1.ne[0]
        && d.ne == [s0.ne[1], s1.ne[1], s1.ne[2], s1.ne[3]]
        && s0.ne[2] > 0
        && s0.ne[3] > 0
        && s1.ne[2] % s0.ne[2] == 0
        && s1.ne[3] % s0.ne[3] == 0
}

/// Whether a MUL_MAT's weights (`src0`) may be baked into kernels: the policy allows it, the
/// rows are contiguous, and ggml marks the buffer as holding model weights, which it promises
/// not to change while graphs run.
pub(crate) fn may_bake(rt: &Runtime, s0: &TensorDesc) -> bool {
    rt.cache.policy().may_bake() && s0.nb[0] == s0.type_size && s0.is_model_weight()
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
    if rt.config.stats_level >= 2 || debug {
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
        if rt.config.stats_level >= 2 {
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

/// Counts a fused chain, and with `GGML_ANE_STATS=2` (or debug logging) says where it ran:
/// one table row named after its MUL_MATs (`ffn_gate+ffn_up+ffn_out`).
pub(crate) fn record_fused_placement(
    ctx: &BackendContext,
    rt: &Runtime,
    chain: &Chain,
    descs: &[Option<NodeDesc>],
    form: ane_runtime::fused::FusedForm,
) {
    let debug = log_enabled(GGML_LOG_LEVEL_DEBUG);
    if rt.config.stats_level < 2 && !debug {
        return;
    }
    let mut matmuls: Vec<usize> = chain.matmuls.clone();
    matmuls.extend(chain.down);
    let names: Vec<String> = matmuls
        .iter()
        .filter_map(|&i| descs[i].as_ref())
        .map(|d| crate::placement::op_name(&d.name()).to_string())
        .collect();
    let first = descs[matmuls[0]].as_ref();
    let (rows, k, tokens, weight_type) = first
        .and_then(|d| Some((d.src[0]?, d.node.ne[1])))
        .map_or((0, 0, 0, "?"), |(w, t)| {
            let rows: i64 = chain
                .matmuls
                .iter()
                .filter_map(|&i| descs[i].as_ref()?.src[0])
                .map(|w| w.ne[1])
                .sum();
            (rows, w.ne[0], t, w.type_name)
        });
    let p = Placement {
        op: names.join("+"),
        shape: format!("{rows}x{k}x{tokens}"),
        weight_type,
        place: match form {
            ane_runtime::fused::FusedForm::Baked => {
                format!("engine (fused {})", chain.kind.as_str())
            }
            ane_runtime::fused::FusedForm::Streamed => {
                format!("engine (fused {}, streamed)", chain.kind.as_str())
            }
        },
    };
    if debug {
        log(
            GGML_LOG_LEVEL_DEBUG,
            &format!(
                "ggml-ane: FUSED {} {} {} -> {}",
                p.op, p.shape, p.weight_type, p.place
            ),
        );
    }
    if rt.config.stats_level >= 2 {
        ctx.placements.record(p);
    }
}

/// A chain that runs node by node: counted, and the first of each reason logged.
pub(crate) fn fused_declined(ctx: &BackendContext, chain: &Chain, reason: &FallbackReason) {
    ctx.stats.record_fused_declined(reason);
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen
        .get_or_insert_with(HashSet::new)
        .insert(reason.as_str())
    {
        log(
            GGML_LOG_LEVEL_INFO,
            &format!(
                "ggml-ane: a fused {} block ran node by node ({reason}); further cases are counted, not logged",
                chain.kind.as_str()
            ),
        );
    }
}

/// Logs the first fallback of each kind (the rest are counted in the stats).
fn warn_once(reason: &FallbackReason) {
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen
        .get_or_insert_with(HashSet::new)
        .insert(reason.as_str())
    {
        let level = if matches!(reason, FallbackReason::Internal(_)) {
            GGML_LOG_LEVEL_ERROR
        } else {
            GGML_LOG_LEVEL_WARN
        };
        log(level, &format!("ggml-ane: MUL_MAT computed on the CPU ({reason}); further cases are counted, not logged"));
    }
}

/// What every backend instance of the process did: the ended ones summed, the live ones
/// referenced. llama.cpp creates one per listed device and again for every ACCEL device, all
/// sharing one engine, kernel cache and budget.
#[derive(Default)]
struct ProcessTotals {
    live: Vec<(Arc<Stats>, Arc<Placements>)>,
    stats: ane_runtime::matmul::StatsSnapshot,
    placements: Placements,
}

fn totals() -> std::sync::MutexGuard<'static, ProcessTotals> {
    static TOTALS: OnceLock<Mutex<ProcessTotals>> = OnceLock::new();
    TOTALS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// A backend instance starts: its counters join the process's.
pub(crate) fn instance_started(ctx: &BackendContext) {
    totals()
        .live
        .push((ctx.stats.clone(), ctx.placements.clone()));
}

/// The `GGML_ANE_STATS` table over `stats` and `placements`.
fn stats_table(
    rt: &Runtime,
    stats: &ane_runtime::matmul::StatsSnapshot,
    placements: &Placements,
) -> String {
    let mut text = format!("ggml-ane stats ({} engine):\n", rt.engine.info().kind);
    for r in &rt.probe {
        text.push_str(&format!("  self-probe             {r}\n"));
    }
    for r in &rt.fused_probe {
        text.push_str(&format!("  self-probe             {r}\n"));
    }
    text.push_str(&format!("{stats}\n"));
    if rt.config.stats_level >= 2 {
        text.push_str(&placements.report());
    }
    text
}

/// The table now, ended and live instances together (`GGML_ANE_STATS_INTERVAL`, and a
/// process stopped by a signal: an rpc-server never frees its backends).
pub(crate) fn stats_now(rt: &Runtime) -> String {
    let t = totals();
    let mut stats = t.stats.clone();
    let placements = Placements::default();
    placements.merge_from(&t.placements);
    for (s, p) in &t.live {
        stats.accumulate(&s.snapshot());
        placements.merge_from(p);
    }
    stats_table(rt, &stats, &placements)
}

/// A backend instance ends: its counts join the process totals; when it was the last, the
/// `GGML_ANE_STATS` table is printed for all of them (and a hint when no MUL_MAT reached us).
pub(crate) fn instance_ended(ctx: &BackendContext, rt: &Runtime) {
    let mut t = totals();
    t.stats.accumulate(&ctx.stats.snapshot());
    t.placements.merge_from(&ctx.placements);
    t.live.retain(|(s, _)| !Arc::ptr_eq(s, &ctx.stats));
    if !t.live.is_empty() {
        return;
    }
    if t.stats.offloaded + t.stats.cpu_nodes() == 0 {
        log(
            GGML_LOG_LEVEL_WARN,
            &format!(
                "ggml-ane: no MUL_MAT reached the ANE in this process. Beside Metal (-ngl 99), \
                 list the ANE first and keep mmap on: -dev ANE,MTL0 -ts 0,1; MUL_MATs with fewer \
                 than {} tokens (GGML_ANE_MIN_TOKENS) stay where they are; GGML_ANE_STATS=2 and \
                 GGML_SCHED_DEBUG=2 show where ops ran (README: Beside Metal)",
                rt.config.min_tokens
            ),
        );
    }
    if rt.config.stats_level > 0 {
        eprint!("{}", stats_table(rt, &t.stats, &t.placements));
    }
    // a later instance starts a new account
    *t = ProcessTotals::default();
}

/// Counts a computed graph; with `GGML_ANE_STATS_INTERVAL=N`, prints the table after every
/// N graphs.
pub(crate) fn graph_done(rt: &Runtime) {
    static GRAPHS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = GRAPHS.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some(every) = rt.config.stats_interval {
        if n.is_multiple_of(every) {
            eprint!("ggml-ane: after {n} graphs\n{}", stats_now(rt));
        }
    }
}

/// `ggml_backend_get_features`: the engine and its limits.
pub(crate) fn features() -> Vec<(String, String)> {
    match runtime() {
        Ok(rt) => {
            let limits = rt.engine.limits();
            let mut f = vec![
                ("ENGINE".to_string(), rt.engine.info().kind.to_string()),
                ("MAX_DIM".to_string(), limits.max_dim.to_string()),
                ("MIN_BATCH".to_string(), rt.config.min_batch.to_string()),
                ("MIN_TOKENS".to_string(), rt.config.min_tokens.to_string()),
                (
                    "KERNELS".to_string(),
                    rt.cache.policy().as_str().to_string(),
                ),
            ];
            if let Some(b) = limits.compile_budget {
                f.push(("COMPILE_BUDGET".to_string(), b.to_string()));
            }
            if !rt.probe.is_empty() {
                let found: Vec<String> = rt
                    .probe
                    .iter()
                    .map(ToString::to_string)
                    .chain(rt.fused_probe.iter().map(ToString::to_string))
                    .collect();
                f.push(("SELF_PROBE".to_string(), found.join("; ")));
            }
            f
        }
        Err(e) => vec![("ENGINE".to_string(), format!("unavailable: {e}"))],
    }
}
