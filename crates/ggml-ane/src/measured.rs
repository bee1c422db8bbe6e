//! Routing by measurement (#21): where the chip table lets the ANE take work (`routing`) and
//! a GPU backend is in the process (Metal), each MUL_MAT shape class — the weight's M × K and
//! the token bucket — is measured once on our engine and on that GPU, and goes to whichever
//! costs less: time under `GGML_ANE_MODE=auto|speed`, joules under `energy` (all rails above
//! idle, from the OS's energy counters: `ane_runtime::power`, IOReport on macOS; without a
//! meter, or with a reading it flags, the table decides). The verdicts are kept on disk beside
//! the kernel cache, per chip, OS version, engine build, GPU and what was measured, so a later
//! process routes without measuring again. `GGML_ANE_MEASURE=0` routes by the table alone.

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
use ane_runtime::power::{self, EnergyMeter};

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

/// What a class is measured by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Measure {
    /// Time per call, microseconds.
    Speed,
    /// Energy per call above idle, millijoules.
    Energy,
}

impl Measure {
    fn unit(self) -> &'static str {
        match self {
            Measure::Speed => "ms",
            Measure::Energy => "mJ",
        }
    }

    /// A cost as printed: milliseconds (from µs) or millijoules.
    fn shown(self, cost: f64) -> f64 {
        match self {
            Measure::Speed => cost / 1e3,
            Measure::Energy => cost,
        }
    }
}

/// Our engine's and the GPU's cost for one shape class, in the unit of its [`Measure`]:
/// microseconds, or millijoules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Cost {
    pub(crate) engine: f64,
    pub(crate) gpu: f64,
}

impl Cost {
    fn engine_cheaper(self) -> bool {
        self.engine < self.gpu
    }
}

/// The process's verdicts, and what they are keyed by on disk.
struct Verdicts {
    /// Chip, OS version, engine build and GPU, as one line's first field.
    key: String,
    gpu: GpuDevice,
    gpu_name: String,
    measure: Measure,
    path: Option<PathBuf>,
    timings: Mutex<HashMap<ShapeClass, Option<Cost>>>,
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
                let measured = measure(rt, v, class);
                t.insert(class, measured);
                (measured, true)
            }
        }
    };
    // said and written after the lock is released: the host's log callback may call back in
    if fresh {
        say(v, class, timing);
    }
    timing.map(Cost::engine_cheaper)
}

/// Measures `class` on both sides; `None` when either cannot run it (or, for energy, when the
/// reading cannot be trusted: said in a warning).
fn measure(rt: &runtime::Runtime, v: &Verdicts, c: ShapeClass) -> Option<Cost> {
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
    let mut engine = || engine_matmul(rt.engine.as_ref(), &rt.cache, &job, &mut scratch, &stats);
    if v.measure == Measure::Energy {
        let windows = (power::MIN_WINDOW, power::MIN_WINDOW);
        let gpu = |runs: usize| v.gpu.time_matmul((c.m, c.k, c.bucket), runs).is_ok();
        let measured = power::open_meter().and_then(|mut meter| {
            measure_energy(meter.as_mut(), windows, || engine().is_ok(), gpu)
        });
        return measured
            .map_err(|why| {
                let shape = format!("{}x{}x{}", c.m, c.k, c.bucket);
                abi::log(
                    abi::GGML_LOG_LEVEL_WARN,
                    &format!("ggml-ane: energy of {shape} not measured: {why}"),
                );
            })
            .ok();
    }
    let mut times = Vec::with_capacity(REPS);
    for i in 0..=REPS {
        let t = Instant::now();
        engine().ok()?;
        if i > 0 {
            times.push(t.elapsed());
        }
    }
    times.sort_unstable();
    let engine = times[times.len() / 2];
    let gpu = v.gpu.time_matmul((c.m, c.k, c.bucket), REPS).ok()?;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Some(Cost {
        engine: us(engine),
        gpu: us(gpu),
    })
}

/// GPU runs per measured call when timing its energy: its setup (tensors, graph) is spread over
/// them as a prompt's many matmuls spread it.
const GPU_RUNS_PER_CALL: usize = 8;

/// Millijoules per call above idle (every rail: the ANE path's host work counts) of `engine`
/// and of the GPU (`gpu(runs)` makes that many runs), each over `windows` (idle, then work) of
/// `meter`, each side warmed up by one call first (a kernel's compile, the GPU's pipeline
/// setup); an error when a call fails or the reading is flagged (no ANE
/// channel, an ANE channel reading zero while it worked, a rail below idle).
fn measure_energy(
    meter: &mut dyn EnergyMeter,
    (idle, window): (Duration, Duration),
    mut engine: impl FnMut() -> bool,
    mut gpu: impl FnMut(usize) -> bool,
) -> Result<Cost, String> {
    if !engine() || !gpu(1) {
        return Err("a call failed while warming up".into());
    }
    let mut ok = true;
    let on_engine = power::measure(meter, idle, window, true, || ok &= engine())?;
    let mut gpu_ok = true;
    let on_gpu = power::measure(meter, idle, window, false, || {
        gpu_ok &= gpu(GPU_RUNS_PER_CALL)
    })?;
    if !ok || !gpu_ok {
        return Err("a call failed while measuring".into());
    }
    // the windows are ours to choose (MIN_WINDOW here; shorter only in tests): every other
    // flag makes the reading one not to route by
    let beyond_window = |r: &power::PowerReading| r.flags.get(usize::from(r.short_window)).cloned();
    if let Some(flag) = beyond_window(&on_engine).or_else(|| beyond_window(&on_gpu)) {
        return Err(flag);
    }
    Ok(Cost {
        engine: on_engine.total_joules_per_run() * 1e3,
        gpu: on_gpu.total_joules_per_run() * 1e3 / GPU_RUNS_PER_CALL as f64,
    })
}

/// Small values that fp16 holds well.
fn pattern(n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| ((i % 11) as f32 - 5.0) / scale).collect()
}

/// One log line for a fresh measurement, and its line on disk.
fn say(v: &Verdicts, c: ShapeClass, t: Option<Cost>) {
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
    let unit = v.measure.unit();
    abi::log(
        abi::GGML_LOG_LEVEL_INFO,
        &format!(
            "ggml-ane: measured {shape}: engine {:.2} {unit}, {} {:.2} {unit}: {}",
            v.measure.shown(t.engine),
            v.gpu_name,
            v.measure.shown(t.gpu),
            if t.engine_cheaper() {
                "the engine takes it".to_string()
            } else {
                format!("left to {}", v.gpu_name)
            }
        ),
    );
    if let Some(path) = &v.path {
        let line = format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            v.key, c.m, c.k, c.bucket, t.engine, t.gpu
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
    let measure = match config.mode {
        _ if !config.measure => return None,
        Mode::Auto | Mode::Speed => Measure::Speed,
        Mode::Energy => Measure::Energy,
        Mode::Always | Mode::Off => return None,
    };
    let chip = chips::identify(config.chip.as_deref()).ok()??;
    let gpu = gpu_device()?;
    let rt = runtime::runtime_if_made()?;
    let gpu_name = gpu.name();
    if measure == Measure::Energy {
        if let Err(why) = power::open_meter() {
            abi::log(
                abi::GGML_LOG_LEVEL_INFO,
                &format!(
                    "ggml-ane: energy routing against {gpu_name} needs the energy counters \
                     ({why}): the chip table decides"
                ),
            );
            return None;
        }
        abi::log(
            abi::GGML_LOG_LEVEL_INFO,
            &format!(
                "ggml-ane: measuring each new matmul shape's energy on the engine and \
                 {gpu_name} (about {:.0} s a shape, once per machine)",
                4.0 * power::MIN_WINDOW.as_secs_f64()
            ),
        );
    }
    // speed verdicts keep the key they always had; energy ones are marked
    let key = format!(
        "{}|{}|{}|{gpu_name}{}",
        chip.name,
        os_version(),
        rt.engine.build_id(),
        if measure == Measure::Energy {
            "|energy"
        } else {
            ""
        }
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
        measure,
        path,
        timings: Mutex::new(timings),
    })
}

/// The lines of `text` kept under `key`: `key, m, k, bucket, engine cost, GPU cost` (µs, or
/// mJ under an energy key), tab-separated
/// (a later line for the same class wins; malformed lines are skipped).
fn read_verdicts(text: &str, key: &str) -> HashMap<ShapeClass, Option<Cost>> {
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
            out.insert(class, Some(Cost { engine: e, gpu: g }));
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

    use ane_runtime::power::ChannelEnergy;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A meter whose channels (ANE, CPU, GPU; millijoules) count what the work adds.
    struct Counters {
        added: Rc<RefCell<[i64; 3]>>,
        seen: [i64; 3],
        ane_channel: bool,
    }

    impl EnergyMeter for Counters {
        fn since_last(&mut self) -> Result<Vec<ChannelEnergy>, String> {
            let now = *self.added.borrow();
            let d: Vec<i64> = (0..3).map(|i| now[i] - self.seen[i]).collect();
            self.seen = now;
            let channel = |name: &str, value| ChannelEnergy {
                name: name.into(),
                unit: "mJ".into(),
                value,
            };
            let mut out = vec![channel("CPU Energy", d[1]), channel("GPU Energy", d[2])];
            if self.ane_channel {
                out.push(channel("ANE", d[0]));
            }
            Ok(out)
        }
    }

    /// Energy per call above idle, every rail, from the counters: the side with fewer joules
    /// takes the class; the GPU's runs share its setup; a machine without an ANE channel, or a
    /// call that fails, gives no verdict.
    #[test]
    fn energy_is_measured_per_call_on_every_rail() {
        let windows = (Duration::from_millis(2), Duration::from_millis(5));
        let run = |engine_ane: i64, ane_channel: bool, engine_ok: bool| {
            let added = Rc::new(RefCell::new([0i64; 3]));
            let mut meter = Counters {
                added: added.clone(),
                seen: [0; 3],
                ane_channel,
            };
            let engine = || {
                let mut a = added.borrow_mut();
                // the ANE's share and the host's staging and write-back
                a[0] += engine_ane;
                a[1] += 1;
                engine_ok
            };
            let gpu = |runs: usize| {
                let mut a = added.borrow_mut();
                a[2] += 3 * runs as i64;
                // one setup on the CPU for all runs
                a[1] += 1;
                true
            };
            measure_energy(&mut meter, windows, engine, gpu)
        };
        let cheap = run(2, true, true).unwrap();
        assert!((cheap.engine - 3.0).abs() < 1e-9, "{cheap:?}");
        assert!((cheap.gpu - 3.125).abs() < 1e-9, "{cheap:?}");
        assert!(cheap.engine_cheaper());
        let dear = run(4, true, true).unwrap();
        assert!((dear.engine - 5.0).abs() < 1e-9 && !dear.engine_cheaper());
        let none = run(2, false, true).unwrap_err();
        assert!(none.contains("no ANE energy channel"), "{none}");
        let failed = run(2, true, false).unwrap_err();
        assert!(failed.contains("failed"), "{failed}");
    }

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
        assert_eq!((t.engine, t.gpu), (2000.0, 1500.0));
        assert!(!t.engine_cheaper());
    }
}
