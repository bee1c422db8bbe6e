//! `ane bench --block ffn`: one transformer FFN (RMSNorm → gate, up → SwiGLU → down →
//! residual) as one fused program, against the same work as three single MUL_MAT jobs with
//! the glue on the host, on the same engine in the same run. Both results are compared.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ane_runtime::fused::probe::FfnCase;
use ane_runtime::fused::{engine_fused, norm_row, FusedForm};
use ane_runtime::matmul::{
    engine_matmul, DenseRows, DenseSink, KernelCache, KernelPolicy, MatmulJob, MatmulShape,
    Scratch, Stats, WeightId,
};
use ane_runtime::Engine;

/// What one path cost per call.
struct BlockTiming {
    /// Wall time per call (warm).
    per_call: Duration,
    /// The first call (compiles).
    first: Duration,
    /// Engine evaluations per call.
    dispatches: u64,
    /// Bytes staged per call (weights + activations).
    staged: u64,
    /// The result, `tokens × channels`.
    out: Vec<f32>,
}

/// `--dims C,H`.
pub(crate) fn parse_dims(dims: &str) -> anyhow::Result<(usize, usize)> {
    let v: Vec<usize> = dims
        .split(',')
        .map(|x| x.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--dims `{dims}`: {e}"))?;
    match v[..] {
        [c, h] if c > 0 && h > 0 => Ok((c, h)),
        _ => anyhow::bail!("--dims needs CHANNELS,HIDDEN (positive), not `{dims}`"),
    }
}

/// Runs a path `reps` warm times after one call that compiles.
fn timed(
    reps: usize,
    mut call: impl FnMut(&Stats) -> anyhow::Result<Vec<f32>>,
) -> anyhow::Result<BlockTiming> {
    let t = Instant::now();
    let mut out = call(&Stats::default())?;
    let first = t.elapsed();
    let stats = Stats::default();
    let t = Instant::now();
    for _ in 0..reps {
        out = call(&stats)?;
    }
    let s = stats.snapshot();
    Ok(BlockTiming {
        per_call: t.elapsed() / reps as u32,
        first,
        dispatches: s.dispatches / reps as u64,
        staged: (s.weight_bytes + s.act_bytes) / reps as u64,
        out,
    })
}

/// The fused path, and the form it ran in.
fn fused(
    engine: &dyn Engine,
    cache: &KernelCache,
    case: &FfnCase,
    reps: usize,
) -> anyhow::Result<(BlockTiming, FusedForm)> {
    let job = case.job(0xFF_B10C);
    let mut form = FusedForm::Baked;
    let timing = timed(reps, |stats| {
        let out = engine_fused(engine, cache, &job, stats)
            .map_err(|e| anyhow::anyhow!("fused FFN: {e}"))?;
        form = out.form();
        Ok(out.values(0).to_vec())
    })?;
    Ok((timing, form))
}

/// The same work as single MUL_MATs (gate, up, down) with the norm, SwiGLU and residual on
/// the host in f32, as ggml's CPU computes them between our matmuls.
fn singles(
    engine: &dyn Engine,
    cache: &KernelCache,
    case: &FfnCase,
    reps: usize,
) -> anyhow::Result<BlockTiming> {
    let (c, h, n) = (case.c, case.h, case.n);
    let mut scratch = Scratch::default();
    let mut matmul = |w: &DenseRows, a: &DenseRows, key: u64, stats: &Stats| {
        let shape = MatmulShape::new(w.rows, w.k, n);
        let dst = DenseSink::for_shape(shape);
        let job = MatmulJob {
            shape,
            weights: w,
            acts: a,
            dst: &dst,
            weight_id: Some(WeightId {
                key,
                fingerprint: 0,
            }),
        };
        engine_matmul(engine, cache, &job, &mut scratch, stats)
            .map_err(|e| anyhow::anyhow!("single MUL_MAT: {e}"))?;
        Ok::<_, anyhow::Error>(dst.values())
    };
    timed(reps, |stats| {
        let mut normed = vec![0f32; n * c];
        for (row, out) in case.x.data.chunks(c).zip(normed.chunks_mut(c)) {
            norm_row(row, &case.norm, Some(1e-5), out);
        }
        let normed = DenseRows::new(n, c, normed);
        let g = matmul(&case.gate, &normed, 1, stats)?;
        let u = matmul(&case.up, &normed, 2, stats)?;
        let hm = g
            .iter()
            .zip(u)
            .map(|(&a, b)| a / (1.0 + (-a).exp()) * b)
            .collect();
        let d = matmul(&case.down, &DenseRows::new(n, h, hm), 3, stats)?;
        Ok(d.iter().zip(&case.x.data).map(|(y, x)| y + x).collect())
    })
}

/// Normalised mean squared difference of `b` from `a`.
fn nmse(a: &[f32], b: &[f32]) -> f64 {
    let err: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    err / a
        .iter()
        .map(|&x| f64::from(x).powi(2))
        .sum::<f64>()
        .max(1e-30)
}

/// `ane bench --block ffn`: the fused FFN and the same work as single MUL_MATs, one engine,
/// one run; a table or JSON.
pub(crate) fn run(
    engine: &dyn Engine,
    kernels: KernelPolicy,
    (c, h): (usize, usize),
    tokens: usize,
    reps: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if tokens == 0 {
        anyhow::bail!("--tokens must be positive");
    }
    let cache = KernelCache::new().with_policy(kernels);
    let reps = reps.max(1);
    let case = FfnCase::new(c, h, tokens);
    let flops = 6.0 * (tokens * c * h) as f64;
    let (f, form) = fused(engine, &cache, &case, reps)?;
    let s = singles(engine, &cache, &case, reps)?;
    let diff = nmse(&s.out, &f.out);
    let gflops = |d: Duration| flops / d.as_secs_f64().max(1e-12) / 1e9;
    let ratio = s.per_call.as_secs_f64() / f.per_call.as_secs_f64().max(1e-12);
    let kind = engine.info().kind;
    if json {
        let one = |name: &str, t: &BlockTiming| {
            format!(
                "\"{name}\": {{\"ms\": {:.3}, \"first_ms\": {:.3}, \"gflops\": {:.2}, \"dispatches\": {}, \"staged_bytes\": {}}}",
                t.per_call.as_secs_f64() * 1e3,
                t.first.as_secs_f64() * 1e3,
                gflops(t.per_call),
                t.dispatches,
                t.staged
            )
        };
        println!(
            "{{\"engine\": \"{kind}\", \"block\": \"ffn\", \"channels\": {c}, \"hidden\": {h}, \"tokens\": {tokens}, \"reps\": {reps}, \"form\": \"{}\", {}, {}, \"speedup\": {ratio:.3}, \"nmse\": {diff:.3e}}}",
            form.as_str(),
            one("fused", &f),
            one("singles", &s)
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "FFN block {c}x{h}, {tokens} tokens, {kind} engine, {reps} reps ({:.1} GFLOP per call)",
        flops / 1e9
    );
    println!(
        "{:<26} {:>10} {:>10} {:>9} {:>11} {:>12}",
        "path", "ms/call", "first ms", "GFLOPS", "dispatches", "staged MiB"
    );
    for (name, t) in [
        (format!("fused ({})", form.as_str()), &f),
        ("3 single MUL_MATs".to_string(), &s),
    ] {
        println!(
            "{name:<26} {:>10.2} {:>10.1} {:>9.2} {:>11} {:>12.1}",
            t.per_call.as_secs_f64() * 1e3,
            t.first.as_secs_f64() * 1e3,
            gflops(t.per_call),
            t.dispatches,
            t.staged as f64 / (1 << 20) as f64
        );
    }
    println!("singles / fused time: {ratio:.2}x; results differ by NMSE {diff:.2e}");
    if kind == ane_runtime::EngineKind::Reference {
        println!("(reference engine: CPU arithmetic; only a Mac's ANE shows the dispatch savings)");
    }
    Ok(ExitCode::SUCCESS)
}
