//! What ran where, for the whole process: every backend instance's counters (the ended ones
//! summed, the live ones referenced) and the `GGML_ANE_STATS` table.

pub(crate) mod placement;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use ane_runtime::matmul::Stats;

use crate::abi::{log, GGML_LOG_LEVEL_WARN};
use crate::compute::context::BackendContext;
use crate::runtime::Runtime;
use placement::Placements;

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

/// [`stats_now`] for the process's runtime ("" before it exists).
pub(crate) fn stats_now_text() -> String {
    crate::runtime::runtime().map_or_else(|_| String::new(), stats_now)
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
