//! Routing by measurement (#21): where the chip table says the ANE wins (`routing`), a GPU
//! backend is in the process (Metal) and `GGML_ANE_MODE` asks for speed (`auto`, `speed`),
//! each MUL_MAT shape class — the weight's M × K and the token bucket — is timed once on our
//! engine and on that GPU, and goes to whichever was faster. The verdicts are kept on disk
//! beside the kernel cache, per chip, OS version, engine build and GPU, so a later process
//! routes without timing again. `GGML_ANE_MEASURE=0` routes by the table alone.
//!
//! Energy (`GGML_ANE_MODE=energy`) still routes by the table: timing joules needs the IOReport
//! reader on a Mac, which is not wired in here yet.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ane_runtime::chips::{self, Mode};
use ane_runtime::matmul::{
    engine_matmul, min_bucket, token_bucket, DenseRows, DenseSink, MatmulJob, MatmulShape, Scratch,
    Stats,
};

use crate::abi::gpu::{gpu_device, GpuDevice};
use crate::{abi, runtime, settings};

/// A MUL_MAT's shape class.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) struct ShapeClass {
    pub(crate) m: usize,
    pub(crate) k: usize,
    /// The token bucket its kernels are compiled for.
    pub(crate) bucket: usize,
}

/// Our engine's and the GPU's time for one shape class, microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Timing {
    pub(crate) engine_us: f64,
    pub(crate) gpu_us: f64,
}

impl Timing {
    fn engine_faster(self) -> bool {
        self.engine_us < self.gpu_us
    }
}

/// The process's verdicts, and what they are keyed by on disk.
struct Verdicts {
    /// Chip, OS version, engine build and GPU, as one line's first field.
    key: String,
    gpu: GpuDevice,
    gpu_name: String,
    path: Option<PathBuf>,
    timings: Mutex<HashMap<ShapeClass, Option<Timing>>>,
}

/// File name of the verdicts in the kernel cache's folder.
const FILE: &str = "routing-verdicts.tsv";

/// Runs per side when timing a class (after one warm-up each; the median is kept).
const REPS: usize = 3;

/// Whether `m × k` weights times `n` tokens should run on the engine: `Some` by a measurement
/// (made now, the first time the class is asked about, or read from disk), `None` where
/// measured routing does not apply (the table's decision stands).
pub(crate) fn engine_takes(m: usize, k: usize, n: usize) -> Option<bool> {
    let v = verdicts()?;
    let rt = runtime::runtime_if_made()?;
    let max_dim = rt.engine.limits().max_dim;
    let class = ShapeClass {
        m,
        k,
        bucket: token_bucket(n, max_dim, min_bucket(m, k)),
    };
    let (timing, fresh) = {
        let mut t = v.timings.lock().unwrap_or_else(|e| e.into_inner());
        match t.get(&class) {
            Some(known) => (*known, false),
            None => {
                let measured = measure(rt, v.gpu, class);
                t.insert(class, measured);
                (measured, true)
            }
        }
    };
    // said and written after the lock is released: the host's log callback may call back in
    if fresh {
        say(v, class, timing);
    }
    timing.map(Timing::engine_faster)
}

/// Times `class` on both sides; `None` when either cannot run it.
fn measure(rt: &runtime::Runtime, gpu: GpuDevice, c: ShapeClass) -> Option<Timing> {
    let shape = MatmulShape::new(c.m, c.k, c.bucket);
    let (w, a) = (
        DenseRows::new(c.m, c.k, pattern(c.m * c.k, 64.0)),
        DenseRows::new(c.bucket, c.k, pattern(c.bucket * c.k, 8.0)),
    );
    let dst = DenseSink::for_shape(shape);
    let job = MatmulJob {
        shape,
        weights: &w,
        acts: &a,
        dst: &dst,
        weight_id: None,
    };
    let (mut scratch, stats) = (Scratch::default(), Stats::default());
    let mut times = Vec::with_capacity(REPS);
    for i in 0..=REPS {
        let t = Instant::now();
        engine_matmul(rt.engine.as_ref(), &rt.cache, &job, &mut scratch, &stats).ok()?;
        if i > 0 {
            times.push(t.elapsed());
        }
    }
    times.sort_unstable();
    let engine = times[times.len() / 2];
    let gpu = gpu.time_matmul((c.m, c.k, c.bucket), REPS).ok()?;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Some(Timing {
        engine_us: us(engine),
        gpu_us: us(gpu),
    })
}

/// Small values that fp16 holds well.
fn pattern(n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| ((i % 11) as f32 - 5.0) / scale).collect()
}

/// One log line for a fresh measurement, and its line on disk.
fn say(v: &Verdicts, c: ShapeClass, t: Option<Timing>) {
    let shape = format!("{}x{}x{}", c.m, c.k, c.bucket);
    let Some(t) = t else {
        abi::log(
            abi::GGML_LOG_LEVEL_WARN,
            &format!(
                "ggml-ane: could not time {shape} on the engine and {}: the chip table decides",
                v.gpu_name
            ),
        );
        return;
    };
    abi::log(
        abi::GGML_LOG_LEVEL_INFO,
        &format!(
            "ggml-ane: measured {shape}: engine {:.2} ms, {} {:.2} ms: {}",
            t.engine_us / 1e3,
            v.gpu_name,
            t.gpu_us / 1e3,
            if t.engine_faster() {
                "the engine takes it".to_string()
            } else {
                format!("left to {}", v.gpu_name)
            }
        ),
    );
    if let Some(path) = &v.path {
        let line = format!(
            "{}\t{}\t{}\t{}\t{:.1}\t{:.1}\n",
            v.key, c.m, c.k, c.bucket, t.engine_us, t.gpu_us
        );
        let written = std::fs::create_dir_all(path.parent().unwrap_or(path))
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
            })
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            abi::log(
                abi::GGML_LOG_LEVEL_WARN,
                &format!(
                    "ggml-ane: could not keep a routing verdict in {}: {e}",
                    path.display()
                ),
            );
        }
    }
}

/// The verdicts of this process, made on first use where measured routing applies.
fn verdicts() -> Option<&'static Verdicts> {
    static V: OnceLock<Option<Verdicts>> = OnceLock::new();
    static SAID: OnceLock<()> = OnceLock::new();
    // made only once the engine is: before that, the table decides
    runtime::runtime_if_made()?;
    let v = V.get_or_init(make).as_ref()?;
    if SAID.set(()).is_ok() {
        let known = v.timings.lock().map_or(0, |t| t.len());
        abi::log(
            abi::GGML_LOG_LEVEL_INFO,
            &format!(
                "ggml-ane: routing each matmul shape by measurement against {} ({known} verdicts \
                 kept from earlier runs{})",
                v.gpu_name,
                v.path
                    .as_ref()
                    .map_or(String::new(), |p| format!(" in {}", p.display()))
            ),
        );
    }
    Some(v)
}

fn make() -> Option<Verdicts> {
    let config = settings::get().as_ref().ok()?;
    if !config.measure || !matches!(config.mode, Mode::Auto | Mode::Speed) {
        return None;
    }
    let chip = chips::identify(config.chip.as_deref()).ok()??;
    let gpu = gpu_device()?;
    let rt = runtime::runtime_if_made()?;
    let gpu_name = gpu.name();
    let key = format!(
        "{}|{}|{}|{gpu_name}",
        chip.name,
        os_version(),
        rt.engine.build_id()
    );
    let path = config.runtime.disk_cache().map(|d| d.dir().join(FILE));
    let timings = path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|text| read_verdicts(&text, &key))
        .unwrap_or_default();
    Some(Verdicts {
        key,
        gpu,
        gpu_name,
        path,
        timings: Mutex::new(timings),
    })
}

/// The lines of `text` kept under `key`: `key, m, k, bucket, engine µs, GPU µs`, tab-separated
/// (a later line for the same class wins; malformed lines are skipped).
fn read_verdicts(text: &str, key: &str) -> HashMap<ShapeClass, Option<Timing>> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let [k, m, kk, b, e, g] = f[..] else {
            continue;
        };
        if k != key {
            continue;
        }
        let (Ok(m), Ok(kk), Ok(b), Ok(e), Ok(g)) = (
            m.parse(),
            kk.parse(),
            b.parse(),
            e.parse::<f64>(),
            g.parse::<f64>(),
        ) else {
            continue;
        };
        if e.is_finite() && g.is_finite() {
            let class = ShapeClass {
                m,
                k: kk,
                bucket: b,
            };
            out.insert(
                class,
                Some(Timing {
                    engine_us: e,
                    gpu_us: g,
                }),
            );
        }
    }
    out
}

/// The OS version verdicts are kept per (`sw_vers -productVersion` on macOS; the kernel
/// release elsewhere).
fn os_version() -> String {
    let read = if cfg!(target_os = "macos") {
        std::process::Command::new("/usr/bin/sw_vers")
            .arg("-productVersion")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
    } else {
        std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()
    };
    read.map_or_else(|| "unknown".into(), |s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of another chip, OS or GPU are not ours; malformed lines are skipped; a later
    /// line for the same class wins.
    #[test]
    fn verdicts_are_read_back_under_their_key_only() {
        let text = "M4|15.1|b|MTL0\t512\t512\t128\t900.0\t1500.5\n\
                    M6|15.1|b|MTL0\t512\t512\t128\t100.0\t50.0\n\
                    M4|15.1|b|MTL0\t512\t512\t256\tx\t1.0\n\
                    M4|15.1|b|MTL0\t512\t1024\t128\t10.0\n\
                    M4|15.1|b|MTL0\t512\t512\t128\t2000.0\t1500.0\n";
        let v = read_verdicts(text, "M4|15.1|b|MTL0");
        assert_eq!(v.len(), 1);
        let t = v[&ShapeClass {
            m: 512,
            k: 512,
            bucket: 128,
        }]
            .unwrap();
        assert_eq!((t.engine_us, t.gpu_us), (2000.0, 1500.0));
        assert!(!t.engine_faster());
    }
}
