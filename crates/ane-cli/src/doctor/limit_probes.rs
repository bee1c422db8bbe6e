//! The doctor's limit probes: what the sources disagree on or only guess, measured by
//! compiling and evaluating baked conv kernels (the proven baked form) directly, against f64:
//! the largest baked weight one program takes, how many kernels stay loaded at once, and the
//! smallest width a wide-channel input evaluates with. Each spends compile budget; the doctor
//! runs them only where asked (`--limits`) or on an ANE, last, in its own process.

use ane_runtime::matmul::probe::grid_values as values;
use ane_runtime::matmul::{baked_matmul_program, baked_weights};
use ane_runtime::{Engine, Kernel, Surface};
use half::f16;

/// A compiled baked kernel `y [1, m, 1, s] = W [m, k] · x [1, k, 1, s]` with its weights.
pub(crate) struct BakedKernel {
    kernel: Box<dyn Kernel>,
    weights: Vec<f32>,
    m: usize,
    k: usize,
    s: usize,
}

/// Compiles the baked kernel for `(m, k, s)`; `seed` makes the weights (and so the program
/// hash) distinct.
pub(crate) fn compile_baked(
    engine: &dyn Engine,
    (m, k, s): (usize, usize, usize),
    seed: u64,
) -> Result<BakedKernel, String> {
    let weights = values(m * k, seed);
    let tile: Vec<f16> = weights.iter().map(|&v| f16::from_f32(v)).collect();
    let kernel = engine
        .compile(&baked_matmul_program(m, k, s), &baked_weights(m, k, &tile))
        .map_err(|e| e.to_string())?;
    Ok(BakedKernel {
        kernel,
        weights,
        m,
        k,
        s,
    })
}

impl BakedKernel {
    /// Evaluates on fresh activations and compares with f64 (NMSE ≤ 1e-3).
    pub(crate) fn check(&self) -> Result<f64, String> {
        let p = &self.kernel.procedures()[0];
        let (m, k, s) = (self.m, self.k, self.s);
        let x = values(k * s, 99);
        let mut input = Surface::new(p.inputs[0].clone());
        input.write_f32(&x).map_err(|e| e.to_string())?;
        let mut output = Surface::new(p.outputs[0].clone());
        self.kernel
            .eval(0, &[&input], &mut [&mut output])
            .map_err(|e| e.to_string())?;
        let y = output.read_f32();
        let (mut err, mut norm) = (0.0f64, 0.0f64);
        for o in 0..m {
            for t in 0..s {
                let want: f64 = (0..k)
                    .map(|i| f64::from(self.weights[o * k + i]) * f64::from(x[i * s + t]))
                    .sum();
                err += (f64::from(y[o * s + t]) - want).powi(2);
                norm += want * want;
            }
        }
        let nmse = err / norm.max(f64::MIN_POSITIVE);
        if nmse <= 1e-3 {
            Ok(nmse)
        } else {
            Err(format!("wrong result: NMSE {nmse:.1e} against f64"))
        }
    }
}

/// The largest `x` in `lo..=hi` for which `ok(x)` holds, assuming it holds up to some point
/// and not after; `None` when it fails already at `lo`. Calls `ok` about log2(hi - lo) times.
pub(crate) fn largest_passing(
    lo: usize,
    hi: usize,
    mut ok: impl FnMut(usize) -> bool,
) -> Option<usize> {
    if !ok(lo) {
        return None;
    }
    if ok(hi) {
        return Some(hi);
    }
    let (mut good, mut bad) = (lo, hi);
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if ok(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Some(good)
}

/// One limit probe's finding: a value, the text that says it, and the last refusal seen.
pub(crate) struct Limit {
    pub(crate) name: &'static str,
    pub(crate) detail: String,
    pub(crate) figures: Vec<(String, String)>,
}

/// The largest baked weight (in MiB of fp16) one program compiles and evaluates correctly,
/// by bisection on the rows of a `[rows, 2048]` weight between 16 rows and `max_rows`.
pub(crate) fn largest_baked_weight(engine: &dyn Engine, max_rows: usize) -> Limit {
    const K: usize = 2048;
    let mut last_error = String::new();
    let mut tries = 0;
    let found = largest_passing(16, max_rows, |rows| {
        tries += 1;
        match compile_baked(engine, (rows, K, 32), rows as u64).and_then(|b| b.check()) {
            Ok(_) => true,
            Err(e) => {
                last_error = format!("{rows} rows: {e}");
                false
            }
        }
    });
    let mib = |rows: usize| (rows * K * 2) as f64 / (1 << 20) as f64;
    let detail = match found {
        Some(r) if r == max_rows => format!(
            "every size tried works, up to {:.0} MiB ({r}x{K} fp16; the probe's ceiling)",
            mib(r)
        ),
        Some(r) => format!("{:.1} MiB ({r}x{K} fp16) is the largest that works", mib(r)),
        None => format!("even {:.2} MiB fails", mib(16)),
    };
    let mut figures = vec![("compiles".to_string(), tries.to_string())];
    if let Some(r) = found {
        figures.push(("largest_mib".into(), format!("{:.2}", mib(r))));
    }
    if !last_error.is_empty() {
        figures.push(("refused".into(), last_error));
    }
    Limit {
        name: "largest baked weight",
        detail,
        figures,
    }
}

/// How many distinct kernels can be loaded at once: compiles up to `max` small baked kernels,
/// keeping every one, until one fails; then checks the first still evaluates.
pub(crate) fn loaded_kernels(engine: &dyn Engine, max: usize) -> Limit {
    let mut held = Vec::new();
    let mut stopped = None;
    for i in 0..max {
        match compile_baked(engine, (64, 64, 32), 1000 + i as u64).and_then(|b| {
            b.check()?;
            Ok(b)
        }) {
            Ok(b) => held.push(b),
            Err(e) => {
                stopped = Some(format!("kernel {}: {e}", i + 1));
                break;
            }
        }
    }
    let first = held.first().map(BakedKernel::check);
    let mut figures = vec![("loaded".to_string(), held.len().to_string())];
    if let Some(why) = &stopped {
        figures.push(("refused".into(), why.clone()));
    }
    if let Some(Err(e)) = &first {
        figures.push(("first_kernel_after".into(), e.clone()));
    }
    let detail = match (&stopped, &first) {
        (None, Some(Ok(_))) => format!(
            "all {} held and the first still evaluates (the probe's ceiling)",
            held.len()
        ),
        (Some(_), _) => format!("{} kernels loaded before one failed", held.len()),
        (None, _) => format!(
            "{} held, but the first no longer evaluates correctly",
            held.len()
        ),
    };
    Limit {
        name: "loaded kernels",
        detail,
        figures,
    }
}

/// The smallest width `s` a `[1, 1024, 1, s]` input evaluates correctly with (ironmill: 32
/// beside more than 768 channels), found by bisection over 1..=64 on the width that fails.
pub(crate) fn smallest_wide_width(engine: &dyn Engine) -> Limit {
    const C: usize = 1024;
    let mut last_error = String::new();
    let mut tries = 0;
    // "width w fails" holds from 1 up to some point: the largest failing width, plus one
    let largest_failing = largest_passing(1, 64, |s| {
        tries += 1;
        match compile_baked(engine, (64, C, s), 5000 + s as u64).and_then(|b| b.check()) {
            Ok(_) => false,
            Err(e) => {
                last_error = format!("width {s}: {e}");
                true
            }
        }
    });
    let (detail, smallest) = match largest_failing {
        None => ("width 1 already works".to_string(), Some(1)),
        Some(64) => ("every width up to 64 fails".to_string(), None),
        Some(w) => (
            format!("width {} is the smallest that works", w + 1),
            Some(w + 1),
        ),
    };
    let mut figures = vec![("compiles".to_string(), tries.to_string())];
    if let Some(s) = smallest {
        figures.push(("smallest_width".into(), s.to_string()));
    }
    if !last_error.is_empty() {
        figures.push(("refused".into(), last_error));
    }
    Limit {
        name: "smallest wide width",
        detail,
        figures,
    }
}

/// Compiles one program twice and times both: a hit in the daemon's cache of compiled
/// programs makes the second far faster. Whether such a hit counts toward the ~119-compile
/// wall is not measured: that needs the wall itself.
pub(crate) fn daemon_cache(engine: &dyn Engine) -> Limit {
    let mut times = Vec::new();
    let mut figures = Vec::new();
    for round in ["first", "second"] {
        let t = std::time::Instant::now();
        match compile_baked(engine, (128, 128, 32), 7777) {
            Ok(_) => {
                let ms = t.elapsed().as_secs_f64() * 1e3;
                figures.push((format!("{round}_compile_ms"), format!("{ms:.2}")));
                times.push(ms);
            }
            Err(e) => figures.push((format!("{round}_compile"), e)),
        }
    }
    let detail = match times[..] {
        [first, second] => format!(
            "the same program compiled twice: the second took {:.0}% of the first's time; \
             whether a cache hit spends the compile wall is not measured",
            100.0 * second / first.max(1e-9)
        ),
        _ => "a compile failed (see below)".to_string(),
    };
    Limit {
        name: "daemon cache",
        detail,
        figures,
    }
}

#[cfg(test)]
mod tests {
    use super::largest_passing;

    #[test]
    fn bisection_finds_the_edge_in_few_calls() {
        for edge in [16, 17, 100, 4095, 4096] {
            let mut calls = 0;
            let got = largest_passing(16, 4096, |x| {
                calls += 1;
                x <= edge
            });
            assert_eq!(got, Some(edge));
            assert!(calls <= 14, "{edge}: {calls} calls");
        }
        assert_eq!(largest_passing(16, 4096, |_| false), None);
    }
}
