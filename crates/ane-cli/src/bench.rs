//! `ane bench`: MUL_MAT shapes through the engine path and the CPU path in the same process.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ane_runtime::matmul::{
    cpu_matmul, engine_matmul, DenseRows, DenseSink, KernelCache, KernelKind, KernelPolicy,
    MatmulJob, MatmulShape, Scratch, Stats, WeightId,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::settings::EngineArgs;

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
    #[command(flatten)]
    engine: EngineArgs,
    /// Kernel kind: auto, baked (weights compiled in), streamed (weights staged beside the
    /// activations per call) or two-input (weights as a second input: an opt-in). The
    /// bench's weights never change, like a model's.
    #[arg(long, env = "GGML_ANE_KERNELS", default_value = "auto")]
    kernels: KernelPolicy,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also measure energy per call on the ANE, CPU and GPU above an idle baseline, and
    /// GFLOP per joule (macOS: IOReport's Energy Model, no sudo; elsewhere a note that it is
    /// not available).
    #[arg(long)]
    power: bool,
    /// The idle baseline's and each shape's power window, in seconds (under 2.5 is flagged:
    /// the counters publish in batches about 2.2 s apart on recent macOS).
    #[arg(long, default_value_t = 3.0)]
    power_seconds: f64,
    /// Also draw GFLOPS per shape (engine and CPU) into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
    /// Time a whole block instead of shapes: `ffn` (RMSNorm, gate and up, SwiGLU, down,
    /// residual) as one fused program against the same work as single MUL_MATs.
    #[arg(long, value_parser = ["ffn"])]
    block: Option<String>,
    /// The block's dimensions: CHANNELS,HIDDEN.
    #[arg(long, value_name = "C,H", default_value = "4096,11008")]
    dims: String,
    /// The block's tokens.
    #[arg(long, default_value_t = 512)]
    tokens: usize,
}

struct Row {
    /// Tile planning and kernel lookup per call.
    planning: Duration,
    /// Weight and activation bytes staged per call (timed reps).
    weight_bytes: u64,
    act_bytes: u64,
    shape: (usize, usize, usize),
    engine: Duration,
    cpu: Duration,
    compile: Duration,
    staging: Duration,
    eval: Duration,
    writeback: Duration,
    /// A memcpy of the activations' f32 bytes (what staging reads), and of the result's
    /// (what write-back writes), timed in the same run: the floor for moving them.
    memcpy_acts: Duration,
    memcpy_out: Duration,
    kind: KernelKind,
    /// Energy figures (`--power`), or why there are none.
    power: Option<Result<Vec<(String, String)>, String>>,
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

/// Buffers for timing a plain copy of as many bytes as a step moves.
struct Memcpy {
    from: Vec<u8>,
    to: Vec<u8>,
}

impl Memcpy {
    fn new(bytes: usize) -> Self {
        // touched once, so no copy pays for first-touch page faults
        Memcpy {
            from: vec![1u8; bytes],
            to: vec![2u8; bytes],
        }
    }

    /// One copy of the first `bytes` bytes.
    fn time(&mut self, bytes: usize) -> Duration {
        let t = Instant::now();
        self.to[..bytes].copy_from_slice(std::hint::black_box(&self.from[..bytes]));
        std::hint::black_box(&mut self.to);
        t.elapsed()
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
    if args.block.is_some() {
        let dims = crate::bench_block::parse_dims(&args.dims)?;
        let engine = args.engine.create(args.kernels)?;
        return crate::bench_block::run(
            engine.as_ref(),
            args.kernels,
            dims,
            args.tokens,
            args.reps,
            args.json,
        );
    }
    let shapes = if args.shapes.is_empty() {
        SHAPES.to_vec()
    } else {
        args.shapes
            .iter()
            .map(|s| parse_shape(s))
            .collect::<Result<_, _>>()?
    };
    let engine = args.engine.create(args.kernels)?;
    let policy = args.kernels;
    let cache = KernelCache::new().with_policy(policy);
    let mut scratch = Scratch::default();
    let bar = ProgressBar::new(shapes.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let reps = args.reps.max(1);
    let mut rows = Vec::new();
    for (i, &(m, k, n)) in shapes.iter().enumerate() {
        bar.set_message(format!("{m}x{k}x{n}"));
        let shape = MatmulShape::new(m, k, n);
        let (w, a) = (
            DenseRows::new(m, k, values(m * k, 1)),
            DenseRows::new(n, k, values(n * k, 2)),
        );
        let dst = DenseSink::for_shape(shape);
        let job = MatmulJob {
            shape,
            weights: &w,
            acts: &a,
            dst: &dst,
            weight_id: Some(WeightId {
                key: i as u64,
                fingerprint: 0,
            }),
        };
        // warm-up: compiles the kernels, fills scratch
        let warm = Stats::default();
        let t = Instant::now();
        engine_matmul(engine.as_ref(), &cache, &job, &mut scratch, &warm)
            .map_err(|e| anyhow::anyhow!("{m}x{k}x{n}: {e}"))?;
        // the warm-up's planning is mostly compiling
        let compile = t.elapsed().saturating_sub(
            warm.snapshot().staging + warm.snapshot().engine + warm.snapshot().writeback,
        );
        let stats = Stats::default();
        let mut ran = KernelKind::Streamed;
        // the floors, timed after each call in the state the call leaves the machine in (a
        // copy timed in a tight loop of its own runs warmer than any call's steps)
        let mut copy = Memcpy::new(4 * n * k.max(m));
        let (mut memcpy_acts, mut memcpy_out, mut engine_t) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for _ in 0..reps {
            let t = Instant::now();
            ran = engine_matmul(engine.as_ref(), &cache, &job, &mut scratch, &stats)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            engine_t += t.elapsed();
            memcpy_out += copy.time(4 * n * m);
            memcpy_acts += copy.time(4 * n * k);
        }
        let engine_t = engine_t / reps as u32;
        let t = Instant::now();
        for _ in 0..reps {
            cpu_matmul(&job, &mut scratch);
        }
        let cpu_t = t.elapsed() / reps as u32;
        let s = stats.snapshot();
        let power = args.power.then(|| {
            let flops = 2.0 * (m * k * n) as f64;
            // the shape's own job: its kernel is warm, nothing is compiled again
            crate::power::job_power(
                engine.as_ref(),
                &cache,
                &job,
                &mut scratch,
                args.power_seconds,
            )
            .map(|r| crate::power::figures(&r, flops))
        });
        rows.push(Row {
            shape: (m, k, n),
            engine: engine_t,
            cpu: cpu_t,
            compile,
            planning: s.planning / reps as u32,
            staging: s.staging / reps as u32,
            eval: s.engine / reps as u32,
            writeback: s.writeback / reps as u32,
            memcpy_acts: memcpy_acts / reps as u32,
            memcpy_out: memcpy_out / reps as u32,
            weight_bytes: s.weight_bytes / reps as u64,
            act_bytes: s.act_bytes / reps as u64,
            kind: ran,
            power,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let kind = engine.info().kind;
    if let Some(path) = &args.plot {
        let bars: Vec<(String, f64, f64)> = rows
            .iter()
            .map(|r| {
                let f = 2.0 * (r.shape.0 * r.shape.1 * r.shape.2) as f64 / 1e9;
                (
                    format!("{}x{}x{}", r.shape.0, r.shape.1, r.shape.2),
                    f / r.engine.as_secs_f64().max(1e-12),
                    f / r.cpu.as_secs_f64().max(1e-12),
                )
            })
            .collect();
        plot(
            path,
            &format!("MUL_MAT GFLOPS: {kind} engine vs CPU f32 GEMM"),
            &bars,
        )?;
        eprintln!("plot: {}", path.display());
    }
    let gflops = |r: &Row, d: Duration| {
        2.0 * (r.shape.0 * r.shape.1 * r.shape.2) as f64 / d.as_secs_f64().max(1e-12) / 1e9
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // how many memcpys of the same f32 bytes a step takes
    let vs_memcpy = |d: Duration, copy: Duration| d.as_secs_f64() / copy.as_secs_f64().max(1e-12);
    // what is none of the timed phases (planning and kernel lookup, staging, the engine,
    // write-back): surface pool, bookkeeping
    let host_us = |r: &Row| {
        r.engine
            .saturating_sub(r.planning + r.staging + r.eval + r.writeback)
            .as_secs_f64()
            * 1e6
    };
    if args.json {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"m\": {}, \"k\": {}, \"n\": {}, \"kernel\": \"{}\", \"engine_ms\": {:.3}, \"cpu_ms\": {:.3}, \"engine_gflops\": {:.2}, \"cpu_gflops\": {:.2}, \"compile_ms\": {:.3}, \"staging_ms\": {:.3}, \"eval_ms\": {:.3}, \"writeback_ms\": {:.3}, \"stage_vs_memcpy\": {:.2}, \"back_vs_memcpy\": {:.2}, \"plan_us\": {:.1}, \"host_us\": {:.1}, \"weight_bytes\": {}, \"act_bytes\": {}{}}}",
                    r.shape.0, r.shape.1, r.shape.2, kind_of(r), ms(r.engine), ms(r.cpu), gflops(r, r.engine), gflops(r, r.cpu),
                    ms(r.compile), ms(r.staging), ms(r.eval), ms(r.writeback), vs_memcpy(r.staging, r.memcpy_acts), vs_memcpy(r.writeback, r.memcpy_out), r.planning.as_secs_f64() * 1e6, host_us(r), r.weight_bytes, r.act_bytes, power_json(r)
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
        "engine: {kind} ({}); CPU baseline: f32 GEMM in the same process; ×cp: a memcpy of the same f32 bytes (activations in, results out) timed here; {reps} reps",
        engine.info().description
    );
    println!(
        "{:>20} {:>9} {:>10} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "M x K x N",
        "kernel",
        "GFLOPS",
        "vs CPU",
        "stage ms",
        "×cp",
        "eval ms",
        "back ms",
        "×cp",
        "total ms",
        "compile ms",
        "CPU ms",
        "plan µs",
        "host µs",
        "w MiB",
        "a MiB"
    );
    for r in &rows {
        let (m, k, n) = r.shape;
        println!(
            "{:>20} {:>9} {:>10.1} {:>8.2}x {:>9.2} {:>7.2} {:>9.2} {:>9.2} {:>7.2} {:>9.2} {:>10.2} {:>9.2} {:>9.1} {:>9.1} {:>9.2} {:>9.2}",
            format!("{m}x{k}x{n}"),
            kind_of(r),
            gflops(r, r.engine),
            r.cpu.as_secs_f64() / r.engine.as_secs_f64().max(1e-12),
            ms(r.staging),
            vs_memcpy(r.staging, r.memcpy_acts),
            ms(r.eval),
            ms(r.writeback),
            vs_memcpy(r.writeback, r.memcpy_out),
            ms(r.engine),
            ms(r.compile),
            ms(r.cpu),
            r.planning.as_secs_f64() * 1e6,
            host_us(r),
            r.weight_bytes as f64 / (1 << 20) as f64,
            r.act_bytes as f64 / (1 << 20) as f64
        );
    }
    for r in rows.iter().filter(|r| r.power.is_some()) {
        let (m, k, n) = r.shape;
        match &r.power {
            Some(Ok(figures)) => {
                let line: Vec<String> = figures.iter().map(|(k, v)| format!("{k} {v}")).collect();
                println!("power {m}x{k}x{n}: {}", line.join("; "));
            }
            Some(Err(why)) => println!("power {m}x{k}x{n}: {why}"),
            None => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `, "power": {...}` for a row measured with `--power` (flags as a list), else nothing.
fn power_json(r: &Row) -> String {
    use crate::doctor::json_string as js;
    match &r.power {
        None => String::new(),
        Some(Err(why)) => format!(", \"power\": {{\"error\": {}}}", js(why)),
        Some(Ok(figures)) => {
            let mut items: Vec<String> = figures
                .iter()
                .filter(|(k, _)| k != "flag")
                .map(|(k, v)| format!("{}: {}", js(k), js(v)))
                .collect();
            let flags: Vec<String> = figures
                .iter()
                .filter(|(k, _)| k == "flag")
                .map(|(_, v)| js(v))
                .collect();
            items.push(format!("\"flags\": [{}]", flags.join(", ")));
            format!(", \"power\": {{{}}}", items.join(", "))
        }
    }
}

fn kind_of(r: &Row) -> &'static str {
    r.kind.as_str()
}

/// A grouped bar chart: per shape, engine GFLOPS and CPU GFLOPS.
fn plot(path: &std::path::Path, title: &str, bars: &[(String, f64, f64)]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let top = bars.iter().flat_map(|b| [b.1, b.2]).fold(1.0f64, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..bars.len() as f64 - 0.5, 0f64..top)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len().max(1))
        // group i is centred on x = i
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("GFLOPS")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let series = [(-0.4, 1usize, BLUE, "engine"), (0.0, 2usize, RED, "CPU")];
    for (offset, which, color, name) in series {
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let v = if which == 1 { b.1 } else { b.2 };
                let x0 = i as f64 + offset;
                Rectangle::new([(x0, 0.0), (x0 + 0.4, v)], color.filled())
            }))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
