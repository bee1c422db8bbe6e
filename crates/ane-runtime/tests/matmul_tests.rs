//! The batched matmul path: tiling, broadcast, fallbacks — against f64.

mod support;

use ane_mil::rules::RuleOptions;
use ane_runtime::disk_cache::{compile_cached, DiskCache};
use ane_runtime::engine::reference::{Faults, ReferenceConfig, ReferenceEngine};
use ane_runtime::matmul::{
    cpu_matmul, engine_matmul, kernel_shapes, matmul_program, DenseRows, FallbackReason,
    KernelCache, KernelPolicy, MatmulJob, MatmulShape, Scratch, Stats,
    EVAL_FAILURES_BEFORE_GIVING_UP,
};
use ane_runtime::CompileCounter;
use ane_runtime::{Engine, Kernel};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use support::*;

fn engine_with(max_dim: usize, faults: Faults, budget: Option<u32>) -> ReferenceEngine {
    reference_engine(max_dim, faults, budget)
}

/// A reference engine whose rulebook lets two-input kernels through (the opt-in), and a
/// kernel cache that asks for them.
fn two_input_engine(max_dim: usize) -> (ReferenceEngine, KernelCache) {
    let mut rules = RuleOptions::default();
    rules.allow_two_inputs = true;
    let engine = ReferenceEngine::with_config(
        ReferenceConfig::default()
            .with_max_dim(max_dim)
            .with_counter(CompileCounter::new(None))
            .with_rules(Some(rules)),
    );
    (
        engine,
        KernelCache::new().with_policy(KernelPolicy::TwoInput),
    )
}

fn job(shape: MatmulShape, seed: u64) -> (DenseRows, DenseRows) {
    let mut rng = Rng::new(seed);
    let nw = shape.weight_batch[0] * shape.weight_batch[1];
    let na = shape.batch[0] * shape.batch[1];
    let w = DenseRows {
        rows: shape.m,
        k: shape.k,
        batch0: shape.weight_batch[0],
        data: rng.f16_values(nw * shape.m * shape.k),
    };
    let a = DenseRows {
        rows: shape.n,
        k: shape.k,
        batch0: shape.batch[0],
        data: rng.f16_values(na * shape.n * shape.k),
    };
    (w, a)
}

fn check(shape: MatmulShape, w: &DenseRows, a: &DenseRows, got: &[f32], k_tiles: usize) {
    let (m, k, n) = (shape.m, shape.k, shape.n);
    for b3 in 0..shape.batch[1] {
        for b2 in 0..shape.batch[0] {
            let b = b3 * shape.batch[0] + b2;
            let (w2, w3) = (
                b2 / (shape.batch[0] / shape.weight_batch[0]),
                b3 / (shape.batch[1] / shape.weight_batch[1]),
            );
            let wb = w3 * shape.weight_batch[0] + w2;
            let wt = transpose(&w.data[wb * m * k..][..m * k], m, k);
            let act = &a.data[b * n * k..][..n * k];
            let what = format!("batch ({b2},{b3}) of {shape:?}");
            assert_matmul_close_rounded(
                &got[b * n * m..][..n * m],
                act,
                &wt,
                n,
                k,
                m,
                k_tiles,
                &what,
            );
        }
    }
}

fn tiled_broadcast_jobs_match_f64_on_engine_and_cpu(make: &EngineMaker) {
    let cases = [
        MatmulShape::new(37, 70, 9),
        // tiles in every dimension with max_dim 64, K split accumulated in f32
        MatmulShape::new(70, 100, 33).batched([2, 3], [1, 3]),
        MatmulShape::new(5, 64, 1).batched([4, 2], [2, 1]),
    ];
    for (i, shape) in cases.into_iter().enumerate() {
        let (w, a) = job(shape, 40 + i as u64);
        let engine = make.make(64, None);
        let (cache, stats, mut scratch) =
            (KernelCache::new(), Stats::default(), Scratch::default());
        let out = out_for(shape);
        engine_matmul(
            engine.as_ref(),
            &cache,
            &MatmulJob {
                shape,
                weights: &w,
                acts: &a,
                dst: &out,
                weight_id: None,
            },
            &mut scratch,
            &stats,
        )
        .unwrap();
        check(
            shape,
            &w,
            &a,
            &out.data.lock().unwrap(),
            shape.k.div_ceil(32),
        );
        let snap = stats.snapshot();
        assert!(snap.compiles >= 1 && snap.compiles <= 8, "{snap:?}");

        let cpu = out_for(shape);
        cpu_matmul(
            &MatmulJob {
                shape,
                weights: &w,
                acts: &a,
                dst: &cpu,
                weight_id: None,
            },
            &mut scratch,
        );
        check(shape, &w, &a, &cpu.data.lock().unwrap(), 1);
    }
}

fn kernels_are_compiled_once_per_tile_shape(make: &EngineMaker) {
    let shape = single_matmul(16, 16, 16);
    let (w, a) = job(shape, 7);
    let engine = make.make(16384, Some(5));
    let (cache, stats, mut scratch) = (KernelCache::new(), Stats::default(), Scratch::default());
    for _ in 0..4 {
        engine_matmul(
            engine.as_ref(),
            &cache,
            &MatmulJob {
                shape,
                weights: &w,
                acts: &a,
                dst: &out_for(shape),
                weight_id: None,
            },
            &mut scratch,
            &stats,
        )
        .unwrap();
    }
    let s = stats.snapshot();
    assert_eq!((s.compiles, s.cache_hits), (1, 3));
    assert_eq!(engine.limits().compiles_used, 1);
}

#[test]
fn engine_failures_become_reasons() {
    let shape = single_matmul(8, 8, 8);
    let (w, a) = job(shape, 8);
    let cases = [
        (
            engine_with(16384, Faults::parse("compile").unwrap(), None),
            "compile failed",
        ),
        (
            engine_with(16384, Faults::parse("eval").unwrap(), None),
            "eval failed",
        ),
        (
            engine_with(16384, Faults::parse("inf").unwrap(), None),
            "fp16 overflow",
        ),
        (
            engine_with(16384, Faults::default(), Some(0)),
            "budget exhausted",
        ),
    ];
    for (engine, label) in cases {
        let (cache, stats, mut scratch) =
            (KernelCache::new(), Stats::default(), Scratch::default());
        let out = out_for(shape);
        let err = engine_matmul(
            &engine,
            &cache,
            &MatmulJob {
                shape,
                weights: &w,
                acts: &a,
                dst: &out,
                weight_id: None,
            },
            &mut scratch,
            &stats,
        )
        .unwrap_err();
        assert_eq!(err.as_str(), label, "{err}");
        // failing before any result: the output untouched; an overflow is seen while its
        // tile is written back, straight into the rows: the CPU's pass writes them all again
        let touched = !out.data.lock().unwrap().iter().all(|v| v.is_nan());
        assert_eq!(touched, label == "fp16 overflow", "{label}");
        if touched {
            let cpu = out_for(shape);
            let job = |dst| MatmulJob {
                shape,
                weights: &w,
                acts: &a,
                dst,
                weight_id: None,
            };
            cpu_matmul(&job(&out), &mut scratch);
            cpu_matmul(&job(&cpu), &mut Scratch::default());
            assert_eq!(
                out.values(),
                cpu.values(),
                "{label}: rows left from the engine"
            );
        }
        if label == "budget exhausted" {
            assert_eq!(err, FallbackReason::Budget);
        }
    }
}

/// A dot product that cancels: fp16 rounds 1 + 2^-12 to 1, so an engine would return 0 for
/// `(1 + 2^-12)·1 - 1·1`. A job with a single output is refused before any compile and the CPU
/// gives the exact answer; a job with MIN_ENGINE_OUTPUTS outputs still goes to the engine.
fn jobs_with_too_few_outputs_stay_on_the_cpu(make: &EngineMaker) {
    let engine = make.engine();
    let (cache, stats, mut scratch) = (KernelCache::new(), Stats::default(), Scratch::default());
    let one = single_matmul(1, 2, 1);
    let w = DenseRows::new(1, 2, vec![1.0 + 1.0 / 4096.0, -1.0]);
    let a = DenseRows::new(1, 2, vec![1.0, 1.0]);
    let out = out_for(one);
    let job = MatmulJob {
        shape: one,
        weights: &w,
        acts: &a,
        dst: &out,
        weight_id: None,
    };
    let err = engine_matmul(engine.as_ref(), &cache, &job, &mut scratch, &stats).unwrap_err();
    assert_eq!(err, FallbackReason::FewOutputs(1));
    assert!(out.data.lock().unwrap()[0].is_nan(), "output touched");
    assert_eq!(stats.snapshot().compiles, 0);
    cpu_matmul(&job, &mut scratch);
    assert_eq!(out.data.lock().unwrap()[0], 1.0 / 4096.0);

    // 16 outputs (4 × 4) are enough: the engine takes the job.
    let four = MatmulShape { m: 4, n: 4, ..one };
    assert_eq!(four.outputs(), ane_runtime::matmul::MIN_ENGINE_OUTPUTS);
    let mut rng = Rng::new(3);
    let (w, a, out) = (
        DenseRows::new(4, 2, rng.f16_values(8)),
        DenseRows::new(4, 2, rng.f16_values(8)),
        out_for(four),
    );
    let job = MatmulJob {
        shape: four,
        weights: &w,
        acts: &a,
        dst: &out,
        weight_id: None,
    };
    engine_matmul(engine.as_ref(), &cache, &job, &mut scratch, &stats).unwrap();
    check(four, &w, &a, &out.data.lock().unwrap(), 1);
}

/// Compiles (or loads from `disk`) every streamed kernel a small llama's prefill (dim 256,
/// ffn 688, vocab 1000) needs at these prompt lengths; returns (compiled, loaded).
fn compile_prefill(engine: &dyn Engine, disk: &DiskCache, lengths: &[usize]) -> (usize, usize) {
    let mut shapes = std::collections::BTreeSet::new();
    for (m, k) in [(256, 256), (688, 256), (256, 688), (1000, 256)] {
        for &n in lengths {
            shapes.extend(kernel_shapes(m, k, n, engine.limits().max_dim));
        }
    }
    let (mut compiled, mut loaded) = (0, 0);
    for (m, k, n) in shapes {
        let program = matmul_program(m, k, n);
        let (_, from_disk) =
            compile_cached(engine, Some(disk), &program, &ane_mil::WeightFiles::new()).unwrap();
        if from_disk {
            loaded += 1;
        } else {
            compiled += 1;
        }
    }
    (compiled, loaded)
}

/// Compiled kernels persist across processes: a second engine with its own budget (another
/// process) loads them from disk and compiles nothing; a cap evicts the least recently used.
#[test]
fn the_disk_cache_serves_a_second_process() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskCache::new(dir.path(), 1 << 30);
    let first = engine_with(16384, Faults::default(), Some(119));
    // 4 weight shapes × 2 token buckets
    assert_eq!(compile_prefill(&first, &disk, &[17, 300]), (8, 0));
    assert_eq!(disk.list().unwrap().len(), 8);

    let second = engine_with(16384, Faults::default(), Some(119));
    assert_eq!(compile_prefill(&second, &disk, &[17, 300]), (0, 8));
    assert_eq!(second.limits().compiles_used, 0);

    // kernels loaded from disk compute like compiled ones
    let shape = single_matmul(24, 40, 5);
    let (w, a) = job(shape, 77);
    for engine in [&first, &second] {
        let cache = KernelCache::with_disk(Some(disk.clone()));
        let (stats, mut scratch, out) = (Stats::default(), Scratch::default(), out_for(shape));
        engine_matmul(
            engine,
            &cache,
            &MatmulJob {
                shape,
                weights: &w,
                acts: &a,
                dst: &out,
                weight_id: None,
            },
            &mut scratch,
            &stats,
        )
        .unwrap();
        check(shape, &w, &a, &out.data.lock().unwrap(), 1);
    }
    assert_eq!(
        second.limits().compiles_used,
        0,
        "the second engine loaded the kernel the first compiled"
    );

    // a damaged entry is recompiled, not trusted
    for e in disk.list().unwrap() {
        std::fs::write(dir.path().join(format!("{}.kernel", e.key)), b"garbage").unwrap();
    }
    let third = engine_with(16384, Faults::default(), Some(119));
    assert_eq!(compile_prefill(&third, &disk, &[17]), (4, 0));

    // a 1-byte cap keeps nothing but the newest entry's worth of nothing
    let tiny = DiskCache::new(dir.path(), 1);
    tiny.store("k", b"0123").unwrap();
    assert!(tiny.list().unwrap().is_empty());
    assert_eq!(disk.clear().unwrap(), 0);
}

/// An engine whose kernels count their evaluations and fail while `fail` is set — all of
/// them, or (`two_input_only`) those with two inputs, like hardware that rejects multi-input
/// requests.
fn flaky(
    inner: ReferenceEngine,
    evals: Arc<AtomicU32>,
    fail: Arc<AtomicBool>,
    two_input_only: bool,
) -> WrappedEngine {
    WrappedEngine {
        inner,
        wrap: Box::new(move |inner| {
            Box::new(FlakyKernel {
                inner,
                evals: evals.clone(),
                fail: fail.clone(),
                two_input_only,
            })
        }),
    }
}

struct FlakyKernel {
    inner: Box<dyn Kernel>,
    evals: Arc<AtomicU32>,
    fail: Arc<AtomicBool>,
    two_input_only: bool,
}

impl Kernel for FlakyKernel {
    fn procedures(&self) -> &[ane_runtime::ProcedureInfo] {
        self.inner.procedures()
    }
    fn run(
        &self,
        index: usize,
        inputs: &[&ane_runtime::Surface],
        outputs: &mut [&mut ane_runtime::Surface],
    ) -> ane_runtime::Result<usize> {
        self.evals.fetch_add(1, Ordering::Relaxed);
        let affected = !self.two_input_only || inputs.len() == 2;
        if affected && self.fail.load(Ordering::Relaxed) {
            return Err(ane_runtime::Error::Eval("injected".into()));
        }
        self.inner.run(index, inputs, outputs)
    }
}

/// A kernel that keeps failing at evaluation is given up on after three failures in a row
/// (the node still computed on the CPU by the caller); a success in between resets the count.
#[test]
fn kernels_that_keep_failing_are_not_retried() {
    // 32 weight rows: the two-input form's weight input is 32 wide (rule narrow-input)
    let shape = single_matmul(32, 8, 8);
    let (w, a) = job(shape, 12);
    let (evals, fail) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicBool::new(true)));
    let (inner, cache) = two_input_engine(16384);
    let engine = flaky(inner, evals.clone(), fail.clone(), false);
    let (stats, mut scratch) = (Stats::default(), Scratch::default());
    let out = out_for(shape);
    let job = MatmulJob {
        shape,
        weights: &w,
        acts: &a,
        dst: &out,
        weight_id: None,
    };
    let mut run = || engine_matmul(&engine, &cache, &job, &mut scratch, &stats);
    let evals_now = || evals.load(Ordering::Relaxed);

    // two failures, a success: the count starts again
    for _ in 0..2 {
        assert_eq!(run().unwrap_err().as_str(), "eval failed");
    }
    fail.store(false, Ordering::Relaxed);
    run().unwrap();
    assert_eq!(evals_now(), 3);
    // now three in a row: tried each time, then no more
    fail.store(true, Ordering::Relaxed);
    for _ in 0..EVAL_FAILURES_BEFORE_GIVING_UP {
        assert_eq!(run().unwrap_err().as_str(), "eval failed");
    }
    assert_eq!(evals_now(), 3 + EVAL_FAILURES_BEFORE_GIVING_UP);
    // the single-input form is compiled in its place, and tried as often
    for _ in 0..EVAL_FAILURES_BEFORE_GIVING_UP {
        assert_eq!(run().unwrap_err().as_str(), "eval failed");
    }
    assert_eq!(evals_now(), 3 + 2 * EVAL_FAILURES_BEFORE_GIVING_UP);
    assert_eq!(stats.snapshot().compiles, 2);
    // both gave up: no more attempts, and nothing recompiled
    for _ in 0..4 {
        let err = run().unwrap_err();
        assert!(err.to_string().contains("not retried"), "{err}");
    }
    assert_eq!(evals_now(), 3 + 2 * EVAL_FAILURES_BEFORE_GIVING_UP);
    assert_eq!(stats.snapshot().compiles, 2);
}

/// Under the two-input opt-in, on hardware that rejects two-input requests: once the two-input
/// kernels give up, the single-input form (activations and weights side by side) computes the
/// job — tiled, batched with broadcast weights, tokens padded — with the same numbers.
#[test]
fn single_input_kernels_replace_two_input_ones_that_fail() {
    // (max_dim, shape, K tiles): one tile; then K in two tiles, three token chunks (the last
    // padded), batches with weights broadcast along the first axis
    let cases = [
        (
            16384,
            MatmulShape::new(40, 70, 37).batched([2, 1], [1, 1]),
            1,
        ),
        (
            200,
            MatmulShape::new(60, 300, 300).batched([2, 3], [1, 3]),
            2,
        ),
    ];
    for (i, (max_dim, shape, k_tiles)) in cases.into_iter().enumerate() {
        let (w, a) = job(shape, 21 + i as u64);
        let (inner, cache) = two_input_engine(max_dim);
        let engine = flaky(
            inner,
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicBool::new(true)),
            true,
        );
        let (stats, mut scratch) = (Stats::default(), Scratch::default());
        let out = out_for(shape);
        let job = MatmulJob {
            shape,
            weights: &w,
            acts: &a,
            dst: &out,
            weight_id: None,
        };
        for _ in 0..EVAL_FAILURES_BEFORE_GIVING_UP {
            let err = engine_matmul(&engine, &cache, &job, &mut scratch, &stats).unwrap_err();
            assert_eq!(err.as_str(), "eval failed");
        }
        let before = stats.snapshot().compiles;
        engine_matmul(&engine, &cache, &job, &mut scratch, &stats).unwrap();
        assert!(
            stats.snapshot().compiles > before,
            "single-input kernels compiled"
        );
        let single = out.data.lock().unwrap().clone();
        check(shape, &w, &a, &single, k_tiles);

        // the two-input form on a working engine gives the same bits
        let (plain, cache) = two_input_engine(max_dim);
        let (stats, out2) = (Stats::default(), out_for(shape));
        let job = MatmulJob { dst: &out2, ..job };
        engine_matmul(&plain, &cache, &job, &mut Scratch::default(), &stats).unwrap();
        let two_input = out2.data.lock().unwrap().clone();
        assert!(
            single
                .iter()
                .zip(&two_input)
                .all(|(p, t)| p.to_bits() == t.to_bits()),
            "case {i}: single- and two-input kernels disagree"
        );
    }
}

/// Streamed weights are staged once: a repeated job with the same weight identity stages only
/// its activations (same bits), in both streamed forms; new weights under the same identity
/// (another fingerprint) are staged again and give the new result; a job without an identity
/// stages its weights every time.
fn streamed_weights_are_staged_once_per_weight_version(make: &EngineMaker) {
    use ane_runtime::matmul::WeightId;
    let shape = single_matmul(70, 100, 37);
    let (w, a) = job(shape, 31);
    let weight_bytes = (2 * shape.m * shape.k) as u64;
    let act_bytes = (2 * shape.n * shape.k) as u64;
    // two-input kernels are an opt-in the rulebook refuses by default: reference engine only
    let forms: &[bool] = if make.kind() == ane_runtime::EngineKind::Reference {
        &[false, true]
    } else {
        &[false]
    };
    for &two_input in forms {
        let (engine, cache): (Box<dyn Engine>, _) = if two_input {
            let (e, cache) = two_input_engine(16384);
            (Box::new(e), cache)
        } else {
            let e = make.engine();
            (e, KernelCache::new().with_policy(KernelPolicy::Streamed))
        };
        let mut scratch = Scratch::default();
        let run = |w: &DenseRows, id: Option<WeightId>, scratch: &mut Scratch| {
            let (stats, out) = (Stats::default(), out_for(shape));
            let job = MatmulJob {
                shape,
                weights: w,
                acts: &a,
                dst: &out,
                weight_id: id,
            };
            engine_matmul(engine.as_ref(), &cache, &job, scratch, &stats).unwrap();
            let s = stats.snapshot();
            (out.values(), s.weight_bytes, s.act_bytes)
        };
        let id = WeightId {
            key: 9,
            fingerprint: 1,
        };
        let (first, wb, ab) = run(&w, Some(id), &mut scratch);
        check(shape, &w, &a, &first, 1);
        assert_eq!(
            (wb, ab),
            (weight_bytes, act_bytes),
            "two-input: {two_input}"
        );
        let (again, wb, ab) = run(&w, Some(id), &mut scratch);
        assert_eq!((wb, ab), (0, act_bytes), "activations only the second time");
        assert_eq!(bits(&first), bits(&again));
        // the same identity with other contents: staged again, the new numbers
        let mut w2 = w.clone();
        w2.data.iter_mut().for_each(|v| *v = -*v);
        let changed = WeightId {
            fingerprint: 2,
            ..id
        };
        let (negated, wb, _) = run(&w2, Some(changed), &mut scratch);
        assert_eq!(wb, weight_bytes);
        check(shape, &w2, &a, &negated, 1);
        // no identity: weights staged on every call
        for _ in 0..2 {
            let (_, wb, _) = run(&w, None, &mut scratch);
            assert_eq!(wb, weight_bytes);
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The self-probe runs each kernel form once against f64; a form made to fail (a fault per
/// form on the reference engine) is reported with its reason and left out of the policy.
#[test]
fn a_form_failing_its_self_probe_is_not_used() {
    use ane_runtime::matmul::probe::{forms_for, probe, usable_policy};
    use ane_runtime::matmul::KernelKind;
    let engine = |faults: &str, two_inputs: bool| {
        let mut rules = RuleOptions::default();
        rules.allow_two_inputs = two_inputs;
        ReferenceEngine::with_config(
            ReferenceConfig::default()
                .with_faults(Faults::parse(faults).unwrap())
                .with_counter(CompileCounter::new(None))
                .with_rules(Some(rules)),
        )
    };
    let clean = probe(&engine("", false), &forms_for(KernelPolicy::Auto));
    assert!(clean.iter().all(|r| r.passed()), "{clean:?}");
    assert!(clean.iter().all(|r| r.compiles >= 1), "{clean:?}");
    assert_eq!(
        usable_policy(KernelPolicy::Auto, &clean),
        Ok(KernelPolicy::Auto)
    );

    for (fault, failing, left) in [
        ("baked", KernelKind::Baked, KernelPolicy::Streamed),
        ("streamed", KernelKind::Streamed, KernelPolicy::Baked),
    ] {
        let found = probe(&engine(fault, false), &forms_for(KernelPolicy::Auto));
        let bad = found.iter().find(|r| r.form == failing).unwrap();
        let why = bad.outcome.clone().unwrap_err();
        assert!(why.contains("injected"), "{fault}: {why}");
        assert!(bad.to_string().starts_with(&format!("{failing} failed")));
        assert_eq!(
            usable_policy(KernelPolicy::Auto, &found),
            Ok(left),
            "{fault}"
        );
    }
    // the two-input opt-in falls back to the single-input form when its probe fails
    let found = probe(
        &engine("two-input", true),
        &forms_for(KernelPolicy::TwoInput),
    );
    assert!(!found[0].passed() && found[1].passed(), "{found:?}");
    assert_eq!(
        usable_policy(KernelPolicy::TwoInput, &found),
        Ok(KernelPolicy::Streamed)
    );
    // and without the rulebook's opt-in it cannot run at all: the probe says so
    let found = probe(&engine("", false), &[KernelKind::TwoInput]);
    assert!(
        found[0].outcome.clone().unwrap_err().contains("instead"),
        "{found:?}"
    );
    // nothing works: an error naming every finding
    let found = probe(&engine("eval", false), &forms_for(KernelPolicy::Auto));
    let err = usable_policy(KernelPolicy::Auto, &found).unwrap_err();
    assert!(
        err.contains("baked failed") && err.contains("streamed failed"),
        "{err}"
    );
}

// every engine: what tiling, compile reuse, small jobs and staged weights give on each
/// Rows that can only be read (as a quantised tensor's are), counting the reads.
struct ReadOnlyRows {
    inner: DenseRows,
    reads: AtomicU32,
}

impl ane_runtime::matmul::MatrixSource for ReadOnlyRows {
    fn read_row(&self, b2: usize, b3: usize, row: usize, out: &mut [f32]) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read_row(b2, b3, row, out);
    }
}

/// A streamed weight wider than 2048 input features runs in K tiles of at most 2048, a call
/// each, summed by the host in f32 (prefill-bench's `DOWN_K_TILE`): 4160 in three tiles of
/// 1408/1408/1344, against f64, on the full-size engine. A weight that is not in memory
/// (quantised) has each row converted once for all of its K tiles, not once per tile, and not
/// again once its tiles are kept staged.
fn streamed_k_past_2048_runs_in_k_tiles_summed_by_the_host(make: &EngineMaker) {
    let shape = single_matmul(64, 4160, 40);
    assert_eq!(
        kernel_shapes(64, 4160, 40, 16384),
        vec![(64, 1408, 64), (64, 1344, 64)]
    );
    let (w, a) = job(shape, 9);
    let w = ReadOnlyRows {
        inner: w,
        reads: AtomicU32::new(0),
    };
    let engine = make.engine();
    let cache = KernelCache::new().with_policy(KernelPolicy::Streamed);
    let stats = Stats::default();
    let id = ane_runtime::matmul::WeightId {
        key: 3,
        fingerprint: 0,
    };
    let run = |weights: &dyn ane_runtime::matmul::MatrixSource, weight_id| {
        let out = out_for(shape);
        let job = MatmulJob {
            shape,
            weights,
            acts: &a,
            dst: &out,
            weight_id,
        };
        engine_matmul(
            engine.as_ref(),
            &cache,
            &job,
            &mut Scratch::default(),
            &stats,
        )
        .unwrap();
        check(shape, &w.inner, &a, &out.data.lock().unwrap(), 3);
    };
    run(&w.inner, None);
    let s = stats.snapshot();
    assert_eq!((s.dispatches, s.compiles), (3, 2), "{s:?}");
    // the precision guard reads every row once for its column sums, staging once more
    run(&w, Some(id));
    assert_eq!(w.reads.load(Ordering::Relaxed), 2 * 64);
    // the tiles kept staged, the column sums remembered
    run(&w, Some(id));
    assert_eq!(w.reads.load(Ordering::Relaxed), 2 * 64);
    assert_eq!(stats.snapshot().dispatches, 9);
}

engine_test!(
    made: tiled_broadcast_jobs_match_f64_on_engine_and_cpu,
    streamed_k_past_2048_runs_in_k_tiles_summed_by_the_host,
    kernels_are_compiled_once_per_tile_shape,
    jobs_with_too_few_outputs_stay_on_the_cpu,
    streamed_weights_are_staged_once_per_weight_version,
);
