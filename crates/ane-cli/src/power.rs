//! `--power` for `ane bench` and the doctor's power probe: a matmul workload run for a window
//! after an idle baseline, its energy per call above idle on the ANE, CPU and GPU, and
//! GFLOP per joule (ane_runtime::power; macOS only).

use std::time::Duration;

use ane_runtime::matmul::probe::grid_values;
use ane_runtime::matmul::{
    engine_matmul, DenseRows, DenseSink, KernelCache, MatmulJob, MatmulShape, Scratch, Stats,
    WeightId,
};
use ane_runtime::power::{measure, open_meter, PowerReading};
use ane_runtime::{Engine, EngineKind};

/// Energy of `engine` running `job` (its weights kept like a model's) for `seconds` after
/// an idle baseline of as long. The job is run once first, outside the window, so a kernel
/// not yet compiled is compiled there. Err: no meter here, or the engine failed.
pub(crate) fn job_power(
    engine: &dyn Engine,
    cache: &KernelCache,
    job: &MatmulJob<'_>,
    scratch: &mut Scratch,
    seconds: f64,
) -> Result<PowerReading, String> {
    let mut meter = open_meter()?;
    let stats = Stats::default();
    engine_matmul(engine, cache, job, scratch, &stats).map_err(|e| e.to_string())?;
    let mut failed = None;
    let window = Duration::from_secs_f64(seconds.max(0.0));
    let expect_ane = matches!(engine.info().kind, EngineKind::Apple | EngineKind::CoreMl);
    let reading = measure(meter.as_mut(), window, window, expect_ane, || {
        if let Err(e) = engine_matmul(engine, cache, job, scratch, &stats) {
            failed.get_or_insert(e.to_string());
        }
    })?;
    match failed {
        Some(e) => Err(format!("the workload failed during the window: {e}")),
        None => Ok(reading),
    }
}

/// [`job_power`] on a MUL_MAT `m x k x n` of its own (the doctor's workload).
pub(crate) fn matmul_power(
    engine: &dyn Engine,
    cache: &KernelCache,
    (m, k, n): (usize, usize, usize),
    seconds: f64,
) -> Result<PowerReading, String> {
    let shape = MatmulShape::new(m, k, n);
    let w = DenseRows::new(m, k, grid_values(m * k, 7));
    let a = DenseRows::new(n, k, grid_values(n * k, 8));
    let dst = DenseSink::for_shape(shape);
    let job = MatmulJob {
        shape,
        weights: &w,
        acts: &a,
        dst: &dst,
        weight_id: Some(WeightId {
            key: u64::MAX - 1,
            fingerprint: 0,
        }),
    };
    job_power(engine, cache, &job, &mut Scratch::default(), seconds)
}

/// The reading as figures: joules per call above idle, idle watts, GFLOP/J, flags.
pub(crate) fn figures(r: &PowerReading, flops: f64) -> Vec<(String, String)> {
    let [ane, cpu, gpu] = r.joules_per_run;
    let [iane, icpu, igpu] = r.idle_watts;
    let mut out = vec![
        ("calls".into(), r.runs.to_string()),
        ("window_s".into(), format!("{:.2}", r.seconds)),
        ("ane_mj_per_call".into(), format!("{:.3}", ane * 1e3)),
        ("cpu_mj_per_call".into(), format!("{:.3}", cpu * 1e3)),
        ("gpu_mj_per_call".into(), format!("{:.3}", gpu * 1e3)),
        (
            "idle_w".into(),
            format!("ane {iane:.3}, cpu {icpu:.3}, gpu {igpu:.3}"),
        ),
        (
            "gflop_per_j".into(),
            r.gflop_per_joule(flops).map_or_else(
                || "n/a (no energy above idle)".into(),
                |g| format!("{g:.1}"),
            ),
        ),
    ];
    for f in &r.flags {
        out.push(("flag".into(), f.clone()));
    }
    out
}
