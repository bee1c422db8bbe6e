//! `ane bench`: MUL_MAT shapes through the engine path and the CPU path in the same process.

use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ane_runtime::engine::{self, EngineChoice};
use ane_runtime::matmul::{
    cpu_matmul, engine_matmul, KernelCache, MatmulJob, MatmulShape, MatrixSink, MatrixSource,
    Scratch, Stats,
};
use indicatif::{ProgressBar, ProgressStyle};

/// Shapes `(m, k, n)` of a 7B-class prefill and around it.
const SHAPES: &[(usize, usize, usize)] = &[
    (4096, 4096, 64),
    (4096, 4096, 512),
    (11008, 4096, 128),
    (4096, 11008, 128),
    (2048, 2048, 256),
    (768, 768, 1024),
    (32000, 4096, 16),
];

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// Shapes as M,K,N (repeatable); default: a 7B-class sweep.
    #[arg(long = "shape", value_name = "M,K,N")]
    shapes: Vec<String>,
    /// Timed repetitions per shape (after one warm-up that compiles).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Engine: auto, reference, apple or coreml (default: $GGML_ANE_ENGINE or auto).
    #[arg(long)]
    engine: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

struct Dense {
    k: usize,
    data: Vec<f32>,
}

impl MatrixSource for Dense {
    fn read_row(&self, _b2: usize, _b3: usize, row: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.data[row * self.k..][..self.k]);
    }
}

struct Sink {
    m: usize,
    data: Mutex<Vec<f32>>,
}

impl MatrixSink for Sink {
    fn write_row(&self, _b2: usize, _b3: usize, n: usize, values: &[f32]) {
        self.data.lock().unwrap_or_else(|e| e.into_inner())[n * self.m..][..self.m]
            .copy_from_slice(values);
    }
}

struct Row {
    shape: (usize, usize, usize),
    engine: Duration,
    cpu: Duration,
    compile: Duration,
    staging: Duration,
    eval: Duration,
    writeback: Duration,
}

fn parse_shape(s: &str) -> anyhow::Result<(usize, usize, usize)> {
    let v: Vec<usize> = s
        .split(',')
        .map(|x| x.trim().parse())
        .collect::<Result<_, _>>()?;
    match v[..] {
        [m, k, n] if m > 0 && k > 0 && n > 0 => Ok((m, k, n)),
        _ => anyhow::bail!("--shape `{s}` is not M,K,N"),
    }
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) as f32 / 65536.0 - 0.5
        })
        .collect()
}

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let shapes = if args.shapes.is_empty() {
        SHAPES.to_vec()
    } else {
        args.shapes
            .iter()
            .map(|s| parse_shape(s))
            .collect::<Result<_, _>>()?
    };
    let choice = match &args.engine {
        Some(e) => e.parse()?,
        None => EngineChoice::from_env()?,
    };
    let engine = engine::create(choice)?;
    let cache = KernelCache::new();
    let mut scratch = Scratch::default();
    let bar = ProgressBar::new(shapes.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let reps = args.reps.max(1);
    let mut rows = Vec::new();
    for &(m, k, n) in &shapes {
        bar.set_message(format!("{m}x{k}x{n}"));
        let shape = MatmulShape {
            m,
            k,
            n,
            batch: [1, 1],
            weight_batch: [1, 1],
        };
        let (w, a) = (
            Dense {
                k,
                data: values(m * k, 1),
            },
            Dense {
                k,
                data: values(n * k, 2),
            },
        );
        let dst = Sink {
            m,
            data: Mutex::new(vec![0.0; n * m]),
        };
        let job = MatmulJob {
            shape,
            weights: &w,
            acts: &a,
            dst: &dst,
        };
        // warm-up: compiles the kernels, fills scratch
        let warm = Stats::default();
        let t = Instant::now();
        engine_matmul(engine.as_ref(), &cache, &job, &mut scratch, &warm)
            .map_err(|e| anyhow::anyhow!("{m}x{k}x{n}: {e}"))?;
        let compile = t.elapsed().saturating_sub(
            warm.snapshot().staging + warm.snapshot().engine + warm.snapshot().writeback,
        );
        let stats = Stats::default();
        let t = Instant::now();
        for _ in 0..reps {
            engine_matmul(engine.as_ref(), &cache, &job, &mut scratch, &stats)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let engine_t = t.elapsed() / reps as u32;
        let t = Instant::now();
        for _ in 0..reps {
            cpu_matmul(&job, &mut scratch);
        }
        let cpu_t = t.elapsed() / reps as u32;
        let s = stats.snapshot();
        rows.push(Row {
            shape: (m, k, n),
            engine: engine_t,
            cpu: cpu_t,
            compile,
            staging: s.staging / reps as u32,
            eval: s.engine / reps as u32,
            writeback: s.writeback / reps as u32,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let kind = engine.info().kind;
    let gflops = |r: &Row, d: Duration| {
        2.0 * (r.shape.0 * r.shape.1 * r.shape.2) as f64 / d.as_secs_f64().max(1e-12) / 1e9
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // what is neither data movement (staging, write-back) nor the engine: kernel lookup,
    // surface pool, bookkeeping
    let host_us = |r: &Row| {
        r.engine
            .saturating_sub(r.staging + r.eval + r.writeback)
            .as_secs_f64()
            * 1e6
    };
    if args.json {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"m\": {}, \"k\": {}, \"n\": {}, \"engine_ms\": {:.3}, \"cpu_ms\": {:.3}, \"engine_gflops\": {:.2}, \"cpu_gflops\": {:.2}, \"compile_ms\": {:.3}, \"staging_ms\": {:.3}, \"eval_ms\": {:.3}, \"writeback_ms\": {:.3}, \"host_us\": {:.1}}}",
                    r.shape.0, r.shape.1, r.shape.2, ms(r.engine), ms(r.cpu), gflops(r, r.engine), gflops(r, r.cpu),
                    ms(r.compile), ms(r.staging), ms(r.eval), ms(r.writeback), host_us(r)
                )
            })
            .collect();
        println!(
            "{{\"engine\": \"{kind}\", \"reps\": {reps}, \"shapes\": [{}]}}",
            items.join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "engine: {kind} ({}); CPU baseline: f32 GEMM in the same process; {reps} reps",
        engine.info().description
    );
    println!(
        "{:>20} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9}",
        "M x K x N",
        "GFLOPS",
        "vs CPU",
        "stage ms",
        "eval ms",
        "back ms",
        "total ms",
        "compile ms",
        "CPU ms"
    );
    for r in &rows {
        let (m, k, n) = r.shape;
        println!(
            "{:>20} {:>10.1} {:>8.2}x {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10.2} {:>9.2} {:>9.1}",
            format!("{m}x{k}x{n}"),
            gflops(r, r.engine),
            r.cpu.as_secs_f64() / r.engine.as_secs_f64().max(1e-12),
            ms(r.staging),
            ms(r.eval),
            ms(r.writeback),
            ms(r.engine),
            ms(r.compile),
            ms(r.cpu),
            host_us(r)
        );
    }
    Ok(ExitCode::SUCCESS)
}
